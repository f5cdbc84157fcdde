//! What the controller watches, and how a change turns into queued pools.
//!
//! Every watch is scoped so its cost follows zen-lead's own objects, not
//! the cluster: pods by the `zen-lead/pool` label, Leases by
//! `zen-lead.io/policy`, leader Services and their EndpointSlices by
//! `zen-lead.io/leader-service-of`, LeaderPolicies by type. Three watches are wider by
//! nature and say so: Nodes (to notice a NotReady node under a leader);
//! Deployments and StatefulSets, every one read (a pool names itself in a
//! pod template, which no selector reaches) but only pool workloads kept;
//! and, with `--detect-uninjected`, the *metadata* of unlabelled pods (to
//! find pool pods admitted while the webhook was down).

pub mod map;
pub mod slim;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use tracing::warn;

use crate::api::LeaderPolicy;
use crate::api::keys::{FENCED_LABEL, LEADER_SERVICE_LABEL, LEASE_POLICY_LABEL, POOL_LABEL};
use crate::controller::decide::history::{Cause, LeaseTrack, Observed};
use crate::controller::queue::{PoolKey, Queue};
pub use map::pool_of;
pub use slim::Slim;

/// A pod that names a pool only by annotation (no label: the webhook never
/// saw it), with its controlling owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlabelled {
    pub owner: Option<(String, String)>,
    /// Listed on a fenced pool's Lease, so its writes are refused.
    pub uid: String,
}

/// The caches the reconciler reads.
#[derive(Clone)]
pub struct Cache {
    pub policies: Store<LeaderPolicy>,
    pub pods: Store<Pod>,
    pub leases: Store<Lease>,
    /// Pool Deployments and StatefulSets (for scaleDown: found even at 0
    /// replicas); other workloads are not kept.
    pub deployments: Store<Slim<Deployment>>,
    pub statefulsets: Store<Slim<StatefulSet>>,
    /// Leader Services (`spec.leaderService`) and their EndpointSlices.
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    /// Node name -> Ready. Unknown nodes count as ready.
    nodes: Arc<RwLock<HashMap<String, bool>>>,
    /// Node name -> `topology.kubernetes.io/zone` (nodes with the label).
    zones: Arc<RwLock<HashMap<String, String>>>,
    /// Pool -> names of its labelled pods.
    pool_pods: Arc<Mutex<HashMap<PoolKey, BTreeSet<String>>>>,
    /// Pool -> unlabelled pods that carry its annotation.
    unlabelled: Arc<Mutex<map::UnlabelledMap>>,
    /// Pool -> its Lease's changes of holder, fed by the Lease watch.
    history: Arc<Mutex<HashMap<PoolKey, LeaseTrack>>>,
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
            deployments: reflector::store::<Slim<Deployment>>().0,
            statefulsets: reflector::store::<Slim<StatefulSet>>().0,
            services: reflector::store::<Service>().0,
            slices: reflector::store::<EndpointSlice>().0,
            nodes: Arc::default(),
            zones: Arc::default(),
            pool_pods: Arc::default(),
            unlabelled: Arc::default(),
            history: Arc::default(),
            synced: Arc::default(),
        }
    }

    pub fn node_ready(&self, node: &str) -> bool {
        self.nodes
            .read()
            .map(|n| n.get(node).copied().unwrap_or(true))
            .unwrap_or(true)
    }

    /// The node's zone; `None` when the node or its label is unknown (which
    /// only ranks its pods last for `preferredZones`).
    pub fn node_zone(&self, node: &str) -> Option<String> {
        self.zones.read().ok().and_then(|z| z.get(node).cloned())
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

    /// The pool's leader Service of that name, as cached.
    pub fn service(&self, key: &PoolKey, name: &str) -> Option<Arc<Service>> {
        self.services
            .get(&ObjectRef::new(name).within(&key.namespace))
    }

    /// The pool's leader EndpointSlice of that name, as cached.
    pub fn slice(&self, key: &PoolKey, name: &str) -> Option<Arc<EndpointSlice>> {
        self.slices
            .get(&ObjectRef::new(name).within(&key.namespace))
    }

    /// Every cached routing object labelled for the pool.
    pub fn routing_of(&self, key: &PoolKey) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
        fn mine<K: Resource>(o: &K, key: &PoolKey) -> bool {
            o.namespace().as_deref() == Some(key.namespace.as_str())
                && o.labels().get(LEADER_SERVICE_LABEL) == Some(&key.name)
        }
        (
            self.services
                .state()
                .into_iter()
                .filter(|s| mine(s.as_ref(), key))
                .collect(),
            self.slices
                .state()
                .into_iter()
                .filter(|s| mine(s.as_ref(), key))
                .collect(),
        )
    }

    /// Namespaces that have a Lease marked for server-side fencing.
    pub fn fenced_namespaces(&self) -> BTreeSet<String> {
        self.leases
            .state()
            .iter()
            .filter(|l| l.labels().get(FENCED_LABEL).is_some_and(|v| v == "true"))
            .filter_map(|l| l.namespace())
            .collect()
    }

    /// The changes of holder the Lease watch saw in the pool since the last
    /// call.
    pub fn take_changes(&self, key: &PoolKey) -> Vec<Observed> {
        lock(&self.history)
            .get_mut(key)
            .map(LeaseTrack::take)
            .unwrap_or_default()
    }

    /// Notes what the controller is about to do to `holder`, so the change
    /// it causes carries the reason.
    pub fn note_cause(&self, key: &PoolKey, holder: &str, cause: Cause) {
        lock(&self.history)
            .entry(key.clone())
            .or_default()
            .note(holder, cause);
    }

    /// Drops the pool's Lease history (the pool is gone).
    pub fn forget_history(&self, key: &PoolKey) {
        lock(&self.history).remove(key);
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

type Tasks = Vec<tokio::task::JoinHandle<()>>;

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
/// change queues the pools it concerns (see [`map`]).
pub fn start(
    client: &Client,
    namespace: Option<&str>,
    detect_uninjected: bool,
    queue: &Queue,
) -> (Cache, Tasks) {
    let (policies, policy_writer) = reflector::store::<LeaderPolicy>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (leases, lease_writer) = reflector::store::<Lease>();
    let (deployments, deployment_writer) = reflector::store::<Slim<Deployment>>();
    let (statefulsets, statefulset_writer) = reflector::store::<Slim<StatefulSet>>();
    let (services, service_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let cache = Cache {
        policies,
        pods,
        leases,
        deployments,
        statefulsets,
        services,
        slices,
        nodes: Arc::default(),
        zones: Arc::default(),
        pool_pods: Arc::default(),
        unlabelled: Arc::default(),
        history: Arc::default(),
        synced: Arc::default(),
    };
    let mut tasks = vec![
        watch_policies(client, namespace, policy_writer, queue.clone()),
        watch_leases(client, namespace, lease_writer, &cache, queue.clone()),
        watch_pods(client, namespace, pod_writer, &cache, queue.clone()),
        watch_workloads(client, namespace, deployment_writer, queue.clone(), |d| {
            d.spec.as_ref().and_then(|s| s.template.metadata.as_ref())
        }),
        watch_workloads(client, namespace, statefulset_writer, queue.clone(), |s| {
            s.spec.as_ref().and_then(|s| s.template.metadata.as_ref())
        }),
        watch_nodes(client, &cache, queue.clone()),
        watch_routing(
            client,
            namespace,
            service_writer,
            "leader Services",
            queue.clone(),
        ),
        watch_routing(
            client,
            namespace,
            slice_writer,
            "leader EndpointSlices",
            queue.clone(),
        ),
    ];
    if detect_uninjected {
        tasks.push(watch_unlabelled(client, namespace, &cache, queue.clone()));
    }
    tasks.push(tokio::spawn(mark_synced(cache.clone())));
    (cache, tasks)
}

/// LeaderPolicies, all of them in scope: each names its pool. Managed
/// fields are a large share of every object and never read.
fn watch_policies(
    client: &Client,
    namespace: Option<&str>,
    writer: reflector::store::Writer<LeaderPolicy>,
    q: Queue,
) -> tokio::task::JoinHandle<()> {
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api(client, namespace), watcher::Config::default())
            .default_backoff()
            .modify(|p: &mut LeaderPolicy| p.managed_fields_mut().clear()),
    );
    tokio::spawn(drive(stream, "LeaderPolicies", move |ev| {
        q.extend(map::policy_pool(&ev))
    }))
}

/// Pool Leases, by the label the controller puts on them.
fn watch_leases(
    client: &Client,
    namespace: Option<&str>,
    writer: reflector::store::Writer<Lease>,
    cache: &Cache,
    q: Queue,
) -> tokio::task::JoinHandle<()> {
    let stream = reflector::reflector(
        writer,
        watcher::watcher(
            api(client, namespace),
            watcher::Config::default().labels(LEASE_POLICY_LABEL),
        )
        .default_backoff()
        .modify(|l: &mut Lease| l.managed_fields_mut().clear()),
    );
    let history = cache.history.clone();
    tokio::spawn(drive(stream, "Leases", move |ev| {
        let pool = map::lease_pool(&ev);
        // Every version, before its pool is queued: a hand-off is a release
        // and an acquisition a few milliseconds apart, which one pass would
        // see as one.
        if let (Some(key), Event::Apply(lease) | Event::InitApply(lease)) = (&pool, &ev) {
            lock(&history)
                .entry(key.clone())
                .or_default()
                .observe(&map::lease_obs(lease), std::time::SystemTime::now());
        }
        q.extend(pool)
    }))
}

/// Leader Services or their EndpointSlices, by the label the controller
/// puts on them: a change (a user's edit or deletion) queues the pool, which
/// puts them back.
fn watch_routing<K>(
    client: &Client,
    namespace: Option<&str>,
    writer: reflector::store::Writer<K>,
    what: &'static str,
    q: Queue,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(
        writer,
        watcher::watcher(
            api::<K>(client, namespace),
            watcher::Config::default().labels(LEADER_SERVICE_LABEL),
        )
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None),
    );
    tokio::spawn(drive(stream, what, move |ev| {
        q.extend(map::routing_pool(&ev))
    }))
}

/// Pool pods, by the label the webhook puts on them, slimmed to what the
/// decisions read.
fn watch_pods(
    client: &Client,
    namespace: Option<&str>,
    writer: reflector::store::Writer<Pod>,
    cache: &Cache,
    q: Queue,
) -> tokio::task::JoinHandle<()> {
    let stream = reflector::reflector(
        writer,
        watcher::watcher(
            api(client, namespace),
            watcher::Config::default().labels(POOL_LABEL),
        )
        .default_backoff()
        .modify(slim_pod),
    );
    let by_pool = cache.pool_pods.clone();
    let store = cache.pods.clone();
    let mut index = map::PodIndex::default();
    tokio::spawn(drive(stream, "pool pods", move |ev| {
        let pools = index.event(&mut lock(&by_pool), &ev, || store.state());
        q.extend(pools);
    }))
}

/// Deployments or StatefulSets: a change of their pool annotation (or of
/// what zen-lead recorded on them) queues the pools concerned, old and
/// new. Read slim (see [`slim`]): their pod spec and status are never read.
fn watch_workloads<K>(
    client: &Client,
    namespace: Option<&str>,
    writer: reflector::store::Writer<Slim<K>>,
    q: Queue,
    template: fn(&K) -> Option<&kube::api::ObjectMeta>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + slim::FromShadow
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    // Every Deployment and StatefulSet in scope is read, pool member or
    // not: read slim (see [`slim`]), listed in small pages so a relist
    // never holds many large responses at once, and only pool workloads
    // are kept ([`map::pool_workload_event`]).
    let config = watcher::Config::default().page_size(WORKLOAD_PAGE_SIZE);
    let events = watcher::watcher(api::<Slim<K>>(client, namespace), config)
        .default_backoff()
        .filter_map(move |item| {
            futures::future::ready(match item {
                Ok(ev) => map::pool_workload_event(ev, |w: &Slim<K>| template(&w.0)).map(Ok),
                Err(e) => Some(Err(e)),
            })
        });
    let stream = reflector::reflector(writer, events);
    let mut index = map::WorkloadIndex::default();
    tokio::spawn(drive(
        stream,
        <K as k8s_openapi::Resource>::KIND,
        move |ev| q.extend(index.event(&ev, |w: &Slim<K>| template(&w.0))),
    ))
}

/// Workloads per page of a (re)list: the client holds a page's response
/// whole, twice (its chunks, then one copy), while it is read, so 10
/// objects of the largest size etcd stores (1.5 MiB) are at most 30 MiB in
/// flight per watch (`make bench-memory` measures the peak).
const WORKLOAD_PAGE_SIZE: u32 = 10;

/// Nodes (cluster-wide by nature): only the Ready condition and the zone
/// label are kept; a change of either queues the pools with pods on the node.
fn watch_nodes(client: &Client, cache: &Cache, q: Queue) -> tokio::task::JoinHandle<()> {
    let stream = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff();
    let nodes = cache.nodes.clone();
    let zones = cache.zones.clone();
    let pods = cache.pods.clone();
    tokio::spawn(drive(stream, "Nodes", move |ev| {
        let ready = {
            let mut map = nodes.write().unwrap_or_else(|e| e.into_inner());
            map::node_change(&mut map, &ev)
        };
        let zone = {
            let mut map = zones.write().unwrap_or_else(|e| e.into_inner());
            map::zone_change(&mut map, &ev)
        };
        let changed = ready.or(zone);
        if let Some(node) = changed {
            q.extend(map::pools_on_node(&pods.state(), &node));
        }
    }))
}

/// With `--detect-uninjected`: the metadata of unlabelled pods, to find
/// pool pods admitted while the webhook was down.
fn watch_unlabelled(
    client: &Client,
    namespace: Option<&str>,
    cache: &Cache,
    q: Queue,
) -> tokio::task::JoinHandle<()> {
    let stream = watcher::watcher(
        api::<PartialObjectMeta<Pod>>(client, namespace),
        watcher::Config::default().labels(&format!("!{POOL_LABEL}")),
    )
    .default_backoff();
    let map = cache.unlabelled.clone();
    let mut index = map::UnlabelledIndex::default();
    tokio::spawn(drive(stream, "unlabelled pod metadata", move |ev| {
        let pools = index.event(&mut lock(&map), &ev);
        q.extend(pools);
    }))
}

/// Synced once every reflector has listed.
async fn mark_synced(c: Cache) {
    let ok = c.policies.wait_until_ready().await.is_ok()
        && c.pods.wait_until_ready().await.is_ok()
        && c.leases.wait_until_ready().await.is_ok()
        && c.deployments.wait_until_ready().await.is_ok()
        && c.statefulsets.wait_until_ready().await.is_ok();
    if ok {
        c.synced.store(true, Ordering::Relaxed);
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
    // Names, and declared ports by name (a leader Service's named
    // targetPort).
    let name_only = |c: &Container| Container {
        name: c.name.clone(),
        ports: c.ports.as_ref().map(|ps| {
            ps.iter()
                .filter(|p| p.name.is_some())
                .map(|p| k8s_openapi::api::core::v1::ContainerPort {
                    name: p.name.clone(),
                    container_port: p.container_port,
                    ..Default::default()
                })
                .collect()
        }),
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
        pod_ip: s.pod_ip,
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
