//! Watch events → the pools they concern. Pure: each mapper takes an event
//! and the bookkeeping it needs, and returns the pools to queue; the table
//! tests below are the rules (a pod moving between pools queues both, a
//! relist rebuilds the index, annotation-only pods are found by namespace).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use super::Unlabelled;
use crate::api::keys::{
    LEASE_POLICY_LABEL, POOL_ANNOTATION, POOL_LABEL, PREFERRED_HOLDER_ANNOTATION,
    SCALED_BY_ANNOTATION, ZONE_LABEL,
};
use crate::controller::decide::history::LeaseObs;
use crate::controller::queue::PoolKey;

/// The object an event is about (`None` for the list markers).
pub fn touched<K>(ev: &Event<K>) -> Option<&K> {
    match ev {
        Event::Apply(o) | Event::InitApply(o) | Event::Delete(o) => Some(o),
        Event::Init | Event::InitDone => None,
    }
}

/// A LeaderPolicy names its pool.
pub fn policy_pool<K: Resource>(ev: &Event<K>) -> Option<PoolKey> {
    touched(ev).map(|p| PoolKey::new(p.namespace().unwrap_or_default(), p.name_any()))
}

/// A Lease belongs to the pool its label names.
pub fn lease_pool<K: Resource>(ev: &Event<K>) -> Option<PoolKey> {
    let l = touched(ev)?;
    let pool = l.labels().get(LEASE_POLICY_LABEL)?;
    Some(PoolKey::new(
        l.namespace().unwrap_or_default(),
        pool.clone(),
    ))
}

/// A leader Service or its EndpointSlice belongs to the pool its label
/// names.
pub fn routing_pool<K: Resource>(ev: &Event<K>) -> Option<PoolKey> {
    let o = touched(ev)?;
    let pool = o.labels().get(crate::api::keys::LEADER_SERVICE_LABEL)?;
    Some(PoolKey::new(
        o.namespace().unwrap_or_default(),
        pool.clone(),
    ))
}

/// What the history of a pool reads from a version of its Lease.
pub fn lease_obs(lease: &Lease) -> LeaseObs {
    let spec = lease.spec.as_ref();
    LeaseObs {
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        preferred: lease
            .annotations()
            .get(PREFERRED_HOLDER_ANNOTATION)
            .filter(|p| !p.trim().is_empty())
            .cloned(),
        transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
    }
}

/// The pool a labelled pod belongs to.
pub fn pool_of(pod: &Pod) -> Option<String> {
    pod.labels()
        .get(POOL_LABEL)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn pod_key(pod: &Pod) -> Option<PoolKey> {
    pool_of(pod).map(|pool| PoolKey::new(pod.namespace().unwrap_or_default(), pool))
}

/// Which pool each labelled pod is in: by name (what the reconciler reads)
/// and by UID (so a pod that moves to another pool also queues the pool it
/// left).
#[derive(Debug, Default)]
pub struct PodIndex {
    last_pool: HashMap<String, PoolKey>,
}

impl PodIndex {
    /// Updates `by_pool` for one pod event; returns the pools to queue.
    /// `store` is the pod cache after the event (read on a relist).
    pub fn event(
        &mut self,
        by_pool: &mut HashMap<PoolKey, BTreeSet<String>>,
        ev: &Event<Pod>,
        store: impl FnOnce() -> Vec<std::sync::Arc<Pod>>,
    ) -> Vec<PoolKey> {
        match ev {
            Event::Apply(p) | Event::InitApply(p) => self.applied(by_pool, p),
            Event::Delete(p) => {
                let Some(old) = self.last_pool.remove(&p.uid().unwrap_or_default()) else {
                    return Vec::new();
                };
                if let Some(set) = by_pool.get_mut(&old) {
                    set.remove(&p.name_any());
                }
                vec![old]
            }
            Event::Init => Vec::new(),
            Event::InitDone => self.relisted(by_pool, store()),
        }
    }

    fn applied(
        &mut self,
        by_pool: &mut HashMap<PoolKey, BTreeSet<String>>,
        p: &Pod,
    ) -> Vec<PoolKey> {
        let uid = p.uid().unwrap_or_default();
        let name = p.name_any();
        let key = pod_key(p);
        let mut queue = Vec::new();
        if let Some(old) = self.last_pool.get(&uid).cloned()
            && Some(&old) != key.as_ref()
        {
            if let Some(set) = by_pool.get_mut(&old) {
                set.remove(&name);
            }
            self.last_pool.remove(&uid);
            queue.push(old);
        }
        if let Some(key) = key {
            by_pool.entry(key.clone()).or_default().insert(name);
            self.last_pool.insert(uid, key.clone());
            queue.push(key);
        }
        queue
    }

    /// A relist may have dropped pods deleted while disconnected: rebuild
    /// the index from the store, and queue every pool before and after.
    fn relisted(
        &mut self,
        by_pool: &mut HashMap<PoolKey, BTreeSet<String>>,
        pods: Vec<std::sync::Arc<Pod>>,
    ) -> Vec<PoolKey> {
        let mut fresh: HashMap<PoolKey, BTreeSet<String>> = HashMap::new();
        self.last_pool.clear();
        for p in pods {
            if let Some(key) = pod_key(&p) {
                fresh.entry(key.clone()).or_default().insert(p.name_any());
                self.last_pool.insert(p.uid().unwrap_or_default(), key);
            }
        }
        let old = std::mem::replace(by_pool, fresh);
        let all: BTreeSet<PoolKey> = old.into_keys().chain(by_pool.keys().cloned()).collect();
        all.into_iter().collect()
    }
}

/// Pools a workload names (template annotation or label, its own
/// annotation) or was scaled by.
pub fn workload_pools(meta: &ObjectMeta, template: Option<&ObjectMeta>) -> BTreeSet<PoolKey> {
    let ns = meta.namespace.clone().unwrap_or_default();
    let t_ann = template.and_then(|t| t.annotations.as_ref());
    let t_lab = template.and_then(|t| t.labels.as_ref());
    let m_ann = meta.annotations.as_ref();
    [
        t_ann.and_then(|a| a.get(POOL_ANNOTATION)),
        t_lab.and_then(|l| l.get(POOL_LABEL)),
        m_ann.and_then(|a| a.get(POOL_ANNOTATION)),
        m_ann.and_then(|a| a.get(SCALED_BY_ANNOTATION)),
    ]
    .into_iter()
    .flatten()
    .map(|v| v.trim())
    .filter(|v| !v.is_empty())
    .map(|v| PoolKey::new(ns.clone(), v))
    .collect()
}

/// What the workload caches keep of an event: only workloads that name a
/// pool or were scaled by one ([`workload_pools`]), the only ones a
/// decision reads (`pool::observe::workload_view`). Every Deployment and
/// StatefulSet in scope is read, so another tenant's workload is listed and
/// dropped, never stored; an update that leaves every pool is a deletion
/// for the cache.
pub fn pool_workload_event<K: Resource>(
    ev: Event<K>,
    template: impl Fn(&K) -> Option<&ObjectMeta>,
) -> Option<Event<K>> {
    let member = |o: &K| !workload_pools(o.meta(), template(o)).is_empty();
    match ev {
        Event::InitApply(o) if !member(&o) => None,
        Event::Apply(o) if !member(&o) => Some(Event::Delete(o)),
        ev => Some(ev),
    }
}

/// The pools each Deployment or StatefulSet (by UID) was last seen in.
#[derive(Debug, Default)]
pub struct WorkloadIndex {
    last: HashMap<String, BTreeSet<PoolKey>>,
    relist: Option<Relist>,
}

/// A relist in progress: the members not listed again yet (gone, or no
/// longer members, while the watch was down), and the pools to queue once
/// the store holds the new list.
#[derive(Debug, Default)]
struct Relist {
    unseen: BTreeSet<String>,
    queue: BTreeSet<PoolKey>,
}

impl WorkloadIndex {
    /// Every event of a pool workload (its replicas may have changed), and
    /// the pools it left; a relist queues its pools when it is done, with
    /// the pools of members it no longer lists.
    pub fn event<K: Resource>(
        &mut self,
        ev: &Event<K>,
        template: impl Fn(&K) -> Option<&ObjectMeta>,
    ) -> Vec<PoolKey> {
        match ev {
            Event::Init => {
                self.relist = Some(Relist {
                    unseen: self.last.keys().cloned().collect(),
                    queue: BTreeSet::new(),
                });
                Vec::new()
            }
            Event::InitApply(o) => {
                let queue = self.changed(o, workload_pools(o.meta(), template(o)));
                match self.relist.as_mut() {
                    Some(r) => {
                        r.unseen.remove(o.meta().uid.as_deref().unwrap_or_default());
                        r.queue.extend(queue);
                        Vec::new()
                    }
                    None => queue,
                }
            }
            Event::InitDone => {
                let Some(Relist { unseen, mut queue }) = self.relist.take() else {
                    return Vec::new();
                };
                for uid in unseen {
                    queue.extend(self.last.remove(&uid).unwrap_or_default());
                }
                queue.into_iter().collect()
            }
            Event::Apply(o) => self.changed(o, workload_pools(o.meta(), template(o))),
            Event::Delete(o) => self.changed(o, BTreeSet::new()),
        }
    }

    /// Records that `obj` is now in `now`; returns the pools to queue.
    fn changed<K: Resource>(&mut self, obj: &K, now: BTreeSet<PoolKey>) -> Vec<PoolKey> {
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let before = self.last.remove(&uid).unwrap_or_default();
        let queue = if !now.is_empty() || before != now {
            before.union(&now).cloned().collect()
        } else {
            Vec::new()
        };
        if !now.is_empty() {
            self.last.insert(uid, now);
        }
        queue
    }
}

/// Node name → Ready; only a change of readiness matters.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True")
}

/// Records a node event in `nodes`; returns the node whose readiness
/// changed (not on the initial list, which changes nothing anyone saw).
pub fn node_change(nodes: &mut HashMap<String, bool>, ev: &Event<Node>) -> Option<String> {
    let (name, ready) = match ev {
        Event::Apply(n) | Event::InitApply(n) => (n.name_any(), node_is_ready(n)),
        Event::Delete(n) => (n.name_any(), false),
        Event::Init | Event::InitDone => return None,
    };
    let changed = nodes.insert(name.clone(), ready) != Some(ready);
    (changed && !matches!(ev, Event::InitApply(_))).then_some(name)
}

/// Records a node's zone label in `zones`; returns the node whose zone
/// changed (not on the initial list).
pub fn zone_change(zones: &mut HashMap<String, String>, ev: &Event<Node>) -> Option<String> {
    let (name, zone) = match ev {
        Event::Apply(n) | Event::InitApply(n) => {
            (n.name_any(), n.labels().get(ZONE_LABEL).cloned())
        }
        Event::Delete(n) => (n.name_any(), None),
        Event::Init | Event::InitDone => return None,
    };
    let old = match &zone {
        Some(z) => zones.insert(name.clone(), z.clone()),
        None => zones.remove(&name),
    };
    let changed = old != zone;
    (changed && !matches!(ev, Event::InitApply(_))).then_some(name)
}

/// The pools with a pod on `node`.
pub fn pools_on_node(pods: &[std::sync::Arc<Pod>], node: &str) -> BTreeSet<PoolKey> {
    pods.iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter_map(|p| pod_key(p))
        .collect()
}

/// An unlabelled pod that names a pool by annotation: its pool, name and
/// controlling owner.
pub fn unlabelled_entry(m: &PartialObjectMeta<Pod>) -> Option<(PoolKey, String, Unlabelled)> {
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
        Unlabelled {
            owner,
            uid: m.uid().unwrap_or_default(),
        },
    ))
}

/// Pool → annotation-only pods, kept from the metadata watch.
pub type UnlabelledMap = HashMap<PoolKey, BTreeMap<String, Unlabelled>>;

/// The unlabelled-pod index: a relist builds a fresh map and swaps it in
/// whole; a change drops the pod wherever it was (its annotation may have
/// changed) before adding it where it now is.
#[derive(Debug, Default)]
pub struct UnlabelledIndex {
    fresh: Option<UnlabelledMap>,
}

impl UnlabelledIndex {
    pub fn event(
        &mut self,
        map: &mut UnlabelledMap,
        ev: &Event<PartialObjectMeta<Pod>>,
    ) -> Vec<PoolKey> {
        match ev {
            Event::Init => {
                self.fresh = Some(HashMap::new());
                Vec::new()
            }
            Event::InitApply(m) => {
                if let (Some(f), Some((key, name, u))) = (self.fresh.as_mut(), unlabelled_entry(m))
                {
                    f.entry(key).or_default().insert(name, u);
                }
                Vec::new()
            }
            Event::InitDone => {
                let old = std::mem::replace(map, self.fresh.take().unwrap_or_default());
                let all: BTreeSet<PoolKey> = old.into_keys().chain(map.keys().cloned()).collect();
                all.into_iter().collect()
            }
            Event::Apply(m) => {
                let mut queue = drop_pod(map, m);
                if let Some((key, name, u)) = unlabelled_entry(m) {
                    map.entry(key.clone()).or_default().insert(name, u);
                    queue.push(key);
                }
                queue
            }
            Event::Delete(m) => drop_pod(map, m),
        }
    }
}

fn drop_pod(map: &mut UnlabelledMap, m: &PartialObjectMeta<Pod>) -> Vec<PoolKey> {
    let name = m.name_any();
    let ns = m.namespace().unwrap_or_default();
    map.iter_mut()
        .filter(|(key, pods)| key.namespace == ns && pods.contains_key(&name))
        .map(|(key, pods)| {
            pods.remove(&name);
            key.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests;
