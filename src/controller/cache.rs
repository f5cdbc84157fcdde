//! What the controller watches, and how a change turns into queued pools.
//!
//! Every watch is scoped so its cost follows zen-lead's own objects, not
//! the cluster: pods by the `zen-lead/pool` label, Leases by
//! `zen-lead.io/policy`, LeaderPolicies by type. Two watches are wider by
//! nature and say so: Nodes (to notice a NotReady node under a leader) and,
//! with `--detect-uninjected`, the *metadata* of unlabelled pods (to find
//! pool pods admitted while the webhook was down).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use tracing::warn;

use super::queue::{PoolKey, Queue};
use crate::api::LeaderPolicy;
use crate::api::keys::{LEASE_POLICY_LABEL, POOL_ANNOTATION, POOL_LABEL, SCALED_BY_ANNOTATION};

/// A pod that names a pool only by annotation (no label: the webhook never
/// saw it), with its controlling owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlabelled {
    pub owner: Option<(String, String)>,
}

/// The caches the reconciler reads.
#[derive(Clone)]
pub struct Cache {
    pub policies: Store<LeaderPolicy>,
    pub pods: Store<Pod>,
    pub leases: Store<Lease>,
    /// Deployments and StatefulSets (for scaleDown: found even at 0 replicas).
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    /// Node name -> Ready. Unknown nodes count as ready.
    nodes: Arc<RwLock<HashMap<String, bool>>>,
    /// Pool -> names of its labelled pods.
    pool_pods: Arc<Mutex<HashMap<PoolKey, BTreeSet<String>>>>,
    /// Pool -> unlabelled pods that carry its annotation.
    unlabelled: Arc<Mutex<HashMap<PoolKey, BTreeMap<String, Unlabelled>>>>,
    synced: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic mid-update of a plain map; the map is
    // still usable and the next relist rebuilds it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    /// Empty caches that no watch fills (unit tests fill the stores).
    #[cfg(test)]
    pub(crate) fn empty() -> Self {
        Cache {
            policies: reflector::store::<LeaderPolicy>().0,
            pods: reflector::store::<Pod>().0,
            leases: reflector::store::<Lease>().0,
            deployments: reflector::store::<Deployment>().0,
            statefulsets: reflector::store::<StatefulSet>().0,
            nodes: Arc::default(),
            pool_pods: Arc::default(),
            unlabelled: Arc::default(),
            synced: Arc::default(),
        }
    }

    pub fn node_ready(&self, node: &str) -> bool {
        self.nodes
            .read()
            .map(|n| n.get(node).copied().unwrap_or(true))
            .unwrap_or(true)
    }

    /// The pool's labelled pods.
    pub fn pods_of(&self, key: &PoolKey) -> Vec<Arc<Pod>> {
        let names = lock(&self.pool_pods).get(key).cloned().unwrap_or_default();
        names
            .iter()
            .filter_map(|n| {
                self.pods
                    .get(&ObjectRef::new(n).within(&key.namespace))
                    .filter(|p| pool_of(p).as_deref() == Some(key.name.as_str()))
            })
            .collect()
    }

    /// The pool's annotation-only pods.
    pub fn unlabelled_of(&self, key: &PoolKey) -> BTreeMap<String, Unlabelled> {
        lock(&self.unlabelled).get(key).cloned().unwrap_or_default()
    }

    pub fn policy(&self, key: &PoolKey) -> Option<Arc<LeaderPolicy>> {
        self.policies
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
    }

    pub fn lease(&self, key: &PoolKey) -> Option<Arc<Lease>> {
        self.leases
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
    }

    /// Every watch has delivered its initial list.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Every pool the caches know of (policies and pods).
    pub fn all_pools(&self) -> Vec<PoolKey> {
        let mut keys: BTreeSet<PoolKey> = self
            .policies
            .state()
            .iter()
            .map(|p| PoolKey::new(p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        keys.extend(lock(&self.pool_pods).keys().cloned());
        keys.into_iter().collect()
    }
}

/// The pool a labelled pod belongs to.
pub fn pool_of(pod: &Pod) -> Option<String> {
    pod.labels()
        .get(POOL_LABEL)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts every watch; returns the caches and the tasks driving them. Each
/// change queues the pools it concerns.
pub fn start(
    client: &Client,
    namespace: Option<&str>,
    detect_uninjected: bool,
    queue: &Queue,
) -> (Cache, Vec<tokio::task::JoinHandle<()>>) {
    let (policies, policy_writer) = reflector::store::<LeaderPolicy>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let (deployments, deployment_writer) = reflector::store::<Deployment>();
    let (statefulsets, statefulset_writer) = reflector::store::<StatefulSet>();
    let cache = Cache {
        policies,
        pods,
        leases,
        deployments,
        statefulsets,
        nodes: Arc::default(),
        pool_pods: Arc::default(),
        unlabelled: Arc::default(),
        synced: Arc::default(),
    };
    let mut tasks = Vec::new();

    // Managed fields are a large share of every object and never read.
    let policy_stream = reflector::reflector(
        policy_writer,
        watcher::watcher(
            api::<LeaderPolicy>(client, namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|p| p.managed_fields_mut().clear()),
    );
    let q = queue.clone();
    tasks.push(tokio::spawn(drive(
        policy_stream,
        "LeaderPolicies",
        move |ev| {
            for p in touched(&ev) {
                q.push(PoolKey::new(
                    p.namespace().unwrap_or_default(),
                    p.name_any(),
                ));
            }
        },
    )));

    let lease_stream = reflector::reflector(
        lease_writer,
        watcher::watcher(
            api::<Lease>(client, namespace),
            watcher::Config::default().labels(LEASE_POLICY_LABEL),
        )
        .default_backoff()
        .modify(|l| l.managed_fields_mut().clear()),
    );
    let q = queue.clone();
    tasks.push(tokio::spawn(drive(lease_stream, "Leases", move |ev| {
        for l in touched(&ev) {
            if let Some(pool) = l.labels().get(LEASE_POLICY_LABEL) {
                q.push(PoolKey::new(
                    l.namespace().unwrap_or_default(),
                    pool.clone(),
                ));
            }
        }
    })));

    let pod_stream = reflector::reflector(
        pod_writer,
        watcher::watcher(
            api::<Pod>(client, namespace),
            watcher::Config::default().labels(POOL_LABEL),
        )
        .default_backoff()
        .modify(slim_pod),
    );
    let q = queue.clone();
    let index = cache.pool_pods.clone();
    let pod_store = cache.pods.clone();
    // pod uid -> pool, so a pod that moves to another pool also queues the
    // pool it left.
    let mut last_pool: HashMap<String, PoolKey> = HashMap::new();
    tasks.push(tokio::spawn(drive(pod_stream, "pool pods", move |ev| {
        match &ev {
            Event::Apply(p) | Event::InitApply(p) => {
                let uid = p.uid().unwrap_or_default();
                let name = p.name_any();
                let key =
                    pool_of(p).map(|pool| PoolKey::new(p.namespace().unwrap_or_default(), pool));
                if let Some(old) = last_pool.get(&uid).cloned()
                    && Some(&old) != key.as_ref()
                {
                    if let Some(set) = lock(&index).get_mut(&old) {
                        set.remove(&name);
                    }
                    q.push(old);
                }
                if let Some(key) = key {
                    lock(&index).entry(key.clone()).or_default().insert(name);
                    last_pool.insert(uid, key.clone());
                    q.push(key);
                }
            }
            Event::Delete(p) => {
                let uid = p.uid().unwrap_or_default();
                if let Some(old) = last_pool.remove(&uid) {
                    if let Some(set) = lock(&index).get_mut(&old) {
                        set.remove(&p.name_any());
                    }
                    q.push(old);
                }
            }
            Event::Init => {}
            Event::InitDone => {
                // A relist may have dropped pods deleted while disconnected:
                // rebuild the index from the store, and queue every pool.
                let mut fresh: HashMap<PoolKey, BTreeSet<String>> = HashMap::new();
                last_pool.clear();
                for p in pod_store.state() {
                    if let Some(pool) = pool_of(&p) {
                        let key = PoolKey::new(p.namespace().unwrap_or_default(), pool);
                        fresh.entry(key.clone()).or_default().insert(p.name_any());
                        last_pool.insert(p.uid().unwrap_or_default(), key);
                    }
                }
                let old = std::mem::replace(&mut *lock(&index), fresh);
                for key in old.keys().chain(lock(&index).keys()) {
                    q.push(key.clone());
                }
            }
        }
    })));

    // Workloads: a change of their pool annotation (or of what zen-lead
    // recorded on them) queues the pools concerned, old and new.
    let stream = reflector::reflector(
        deployment_writer,
        watcher::watcher(
            api::<Deployment>(client, namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|d| {
            d.managed_fields_mut().clear();
            // The status is never read; it changes with every pod.
            d.status = None;
        }),
    );
    let q = queue.clone();
    let mut last: HashMap<String, BTreeSet<PoolKey>> = HashMap::new();
    tasks.push(tokio::spawn(drive(stream, "Deployments", move |ev| {
        workload_event(&ev, &mut last, &q, |d: &Deployment| {
            d.spec.as_ref().and_then(|s| s.template.metadata.clone())
        })
    })));
    let stream = reflector::reflector(
        statefulset_writer,
        watcher::watcher(
            api::<StatefulSet>(client, namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|s| {
            s.managed_fields_mut().clear();
            s.status = None;
        }),
    );
    let q = queue.clone();
    let mut last: HashMap<String, BTreeSet<PoolKey>> = HashMap::new();
    tasks.push(tokio::spawn(drive(stream, "StatefulSets", move |ev| {
        workload_event(&ev, &mut last, &q, |s: &StatefulSet| {
            s.spec.as_ref().and_then(|s| s.template.metadata.clone())
        })
    })));

    // Nodes: only the Ready condition is kept; a change queues the pools
    // with pods on the node.
    let node_stream =
        watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff();
    let nodes = cache.nodes.clone();
    let pod_store = cache.pods.clone();
    let q = queue.clone();
    tasks.push(tokio::spawn(drive(node_stream, "Nodes", move |ev| {
        let (name, ready) = match &ev {
            Event::Apply(n) | Event::InitApply(n) => (n.name_any(), node_is_ready(n)),
            Event::Delete(n) => (n.name_any(), false),
            _ => return,
        };
        let changed = {
            let mut map = nodes.write().unwrap_or_else(|e| e.into_inner());
            map.insert(name.clone(), ready) != Some(ready)
        };
        if changed && !matches!(ev, Event::InitApply(_)) {
            for p in pod_store.state() {
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                    && let Some(pool) = pool_of(&p)
                {
                    q.push(PoolKey::new(p.namespace().unwrap_or_default(), pool));
                }
            }
        }
    })));

    if detect_uninjected {
        let stream = watcher::watcher(
            api::<PartialObjectMeta<Pod>>(client, namespace),
            watcher::Config::default().labels(&format!("!{POOL_LABEL}")),
        )
        .default_backoff();
        let map = cache.unlabelled.clone();
        let q = queue.clone();
        let mut fresh: Option<HashMap<PoolKey, BTreeMap<String, Unlabelled>>> = None;
        tasks.push(tokio::spawn(drive(
            stream,
            "unlabelled pod metadata",
            move |ev| {
                let entry = |m: &PartialObjectMeta<Pod>| {
                    let pool = m
                        .annotations()
                        .get(POOL_ANNOTATION)
                        .map(|v| v.trim().to_owned())
                        .filter(|v| !v.is_empty())?;
                    let owner = m
                        .owner_references()
                        .iter()
                        .find(|o| o.controller == Some(true))
                        .map(|o| (o.kind.clone(), o.name.clone()));
                    Some((
                        PoolKey::new(m.namespace().unwrap_or_default(), pool),
                        m.name_any(),
                        Unlabelled { owner },
                    ))
                };
                match &ev {
                    Event::Init => fresh = Some(HashMap::new()),
                    Event::InitApply(m) => {
                        if let (Some(f), Some((key, name, u))) = (fresh.as_mut(), entry(m)) {
                            f.entry(key).or_default().insert(name, u);
                        }
                    }
                    Event::InitDone => {
                        let f = fresh.take().unwrap_or_default();
                        let old = std::mem::replace(&mut *lock(&map), f);
                        for key in old.keys().chain(lock(&map).keys()) {
                            q.push(key.clone());
                        }
                    }
                    Event::Apply(m) => {
                        let name = m.name_any();
                        let ns = m.namespace().unwrap_or_default();
                        let mut guard = lock(&map);
                        // Drop it wherever it was (its annotation may have changed).
                        for (key, pods) in guard.iter_mut() {
                            if key.namespace == ns && pods.remove(&name).is_some() {
                                q.push(key.clone());
                            }
                        }
                        if let Some((key, name, u)) = entry(m) {
                            guard.entry(key.clone()).or_default().insert(name, u);
                            q.push(key);
                        }
                    }
                    Event::Delete(m) => {
                        let name = m.name_any();
                        let ns = m.namespace().unwrap_or_default();
                        for (key, pods) in lock(&map).iter_mut() {
                            if key.namespace == ns && pods.remove(&name).is_some() {
                                q.push(key.clone());
                            }
                        }
                    }
                }
            },
        )));
    }

    // Synced once every reflector has listed.
    let c = cache.clone();
    tasks.push(tokio::spawn(async move {
        let ok = c.policies.wait_until_ready().await.is_ok()
            && c.pods.wait_until_ready().await.is_ok()
            && c.leases.wait_until_ready().await.is_ok()
            && c.deployments.wait_until_ready().await.is_ok()
            && c.statefulsets.wait_until_ready().await.is_ok();
        if ok {
            c.synced.store(true, Ordering::Relaxed);
        }
    }));
    (cache, tasks)
}

/// Pools a workload names (template, labels, metadata) or was scaled by.
fn workload_pools<K: Resource>(
    obj: &K,
    template: Option<kube::api::ObjectMeta>,
) -> BTreeSet<PoolKey> {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let mut out = BTreeSet::new();
    let t_ann = template.as_ref().and_then(|t| t.annotations.as_ref());
    let t_lab = template.as_ref().and_then(|t| t.labels.as_ref());
    let m_ann = obj.meta().annotations.as_ref();
    for value in [
        t_ann.and_then(|a| a.get(POOL_ANNOTATION)),
        t_lab.and_then(|l| l.get(POOL_LABEL)),
        m_ann.and_then(|a| a.get(POOL_ANNOTATION)),
        m_ann.and_then(|a| a.get(SCALED_BY_ANNOTATION)),
    ]
    .into_iter()
    .flatten()
    {
        let v = value.trim();
        if !v.is_empty() {
            out.insert(PoolKey::new(ns.clone(), v));
        }
    }
    out
}

fn workload_event<K: Resource + Clone>(
    ev: &Event<K>,
    last: &mut HashMap<String, BTreeSet<PoolKey>>,
    q: &Queue,
    template: impl Fn(&K) -> Option<kube::api::ObjectMeta>,
) {
    let (obj, deleted) = match ev {
        Event::Apply(o) | Event::InitApply(o) => (o, false),
        Event::Delete(o) => (o, true),
        Event::Init | Event::InitDone => return,
    };
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let now = if deleted {
        BTreeSet::new()
    } else {
        workload_pools(obj, template(obj))
    };
    let before = last.remove(&uid).unwrap_or_default();
    // Every event of a pool workload (replicas may have changed), and the
    // pools it left.
    if !now.is_empty() || before != now {
        for key in before.union(&now) {
            q.push(key.clone());
        }
    }
    if !now.is_empty() {
        last.insert(uid, now);
    }
}

/// Keeps only what [`super::decide::PodView`] reads, so the pod cache costs
/// a few hundred bytes per pod whatever the pod spec holds.
fn slim_pod(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec, PodStatus};
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with("zen-lead") || k == crate::api::keys::IDENTITY_ANNOTATION);
    }
    let name_only = |c: &Container| Container {
        name: c.name.clone(),
        ..Container::default()
    };
    pod.spec = pod.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        service_account_name: s.service_account_name,
        containers: s.containers.iter().map(name_only).collect(),
        init_containers: s
            .init_containers
            .map(|cs| cs.iter().map(name_only).collect()),
        ..PodSpec::default()
    });
    let slim_status = |c: &ContainerStatus| ContainerStatus {
        name: c.name.clone(),
        ready: c.ready,
        started: c.started,
        state: c.state.clone(),
        ..ContainerStatus::default()
    };
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| {
                    c.type_ == crate::api::keys::CANDIDATE_READINESS_GATE || c.type_ == "Ready"
                })
                .collect()
        }),
        container_statuses: s
            .container_statuses
            .map(|cs| cs.iter().map(slim_status).collect()),
        init_container_statuses: s
            .init_container_statuses
            .map(|cs| cs.iter().map(slim_status).collect()),
        ..PodStatus::default()
    });
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True")
}

fn touched<K: Clone>(ev: &Event<K>) -> Vec<K> {
    match ev {
        Event::Apply(o) | Event::InitApply(o) | Event::Delete(o) => vec![o.clone()],
        Event::Init | Event::InitDone => Vec::new(),
    }
}

/// Drives a watch stream, handing each event to `handle`. Watch errors are
/// retried with backoff by the stream itself; they are logged here.
async fn drive<K, S>(stream: S, what: &'static str, mut handle: impl FnMut(Event<K>))
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => handle(ev),
            Err(err) => warn!(watch = what, error = %err, "watch failed; retrying"),
        }
    }
}
