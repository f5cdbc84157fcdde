//! What every controller pass shares: the client, the caches, the event
//! recorder and metrics, each pool's memory between passes, and the errors
//! and API helpers of the writes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::{Client, Resource};
use tokio::time::Instant;

pub use super::api_error::{ReconcileError, api_err, is_status};
use super::decide::ScaleOutcome;
use super::decide::app_failure::AppWatch;
use super::fencing::Fencing;
use super::metrics::Metrics;
use super::queue::PoolKey;
use super::rbac;
use super::watch::Cache;

/// The Lease's resourceVersion last seen, and when (monotonic): the expiry
/// clock, as client-go judges it.
#[derive(Debug, Clone)]
pub struct LeaseSeen {
    pub version: String,
    pub at: Instant,
}

/// The holder last seen in the Lease: a Lease deleted while held is
/// re-created naming it (see the Lease contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderSeen {
    pub identity: String,
    pub instance: Option<String>,
    pub transitions: i32,
}

/// An HPA and the workload it scales.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpaTarget {
    pub kind: String,
    pub name: String,
    pub hpa: String,
}

/// The leader last reported in an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Reported {
    /// Nothing reported since this controller's term began.
    #[default]
    Unknown,
    Leaderless,
    Leader(String),
}

/// What the controller remembers about a pool between reconciliations.
/// Lost on restart by design: everything here can be re-derived.
#[derive(Debug, Default)]
pub struct PoolMemory {
    pub lease_seen: Option<LeaseSeen>,
    pub holder_seen: Option<HolderSeen>,
    /// Pods this controller labelled leader (the cache may lag behind).
    pub leaders: BTreeSet<String>,
    /// Fingerprint of the last scaleDown check, and when.
    pub scale_checked: Option<(u64, Instant)>,
    pub scale_outcome: Option<ScaleOutcome>,
    /// HPA targets last listed.
    pub hpas: Vec<HpaTarget>,
    pub reported: Reported,
    /// Since when the pool is leaderless, as reported.
    pub leaderless_since: Option<SystemTime>,
    /// Pods already reported as running without the agent.
    pub warned: BTreeSet<String>,
    /// Owners whose pods were evicted recently (no eviction storms).
    pub evicted: HashMap<String, Instant>,
    /// Pods (by UID) seen as deposed `start` leaders, and since when.
    pub deposed_since: HashMap<String, Instant>,
    /// Pods (by UID) whose skipped scheduled run was reported on their Job.
    pub skipped_reported: BTreeSet<String>,
    /// The holder's app, followed for an `api` leader whose app fails.
    pub app_watch: Option<AppWatch>,
    /// When this controller last asked for a move for preference (Unix
    /// ms), and the (pod UID, value) of invalid priorities already told.
    pub preference_asked: Option<i64>,
    pub priority_warned: BTreeSet<(String, String)>,
    /// The Lease's preferred holder while another holds it, and since when
    /// (Unix ms) this controller has seen it: a hand-off in progress.
    pub preferred_seen: Option<(String, i64)>,
    /// Leader changes recorded but not yet in the cached status.
    pub unwritten_transitions: Vec<crate::api::LeaderTransition>,
    /// The LeaderService condition the routing lane last decided.
    pub routing: Option<(bool, &'static str, String)>,
    /// When the slices claiming the leader Service (of that name) were last
    /// listed, and those that were not zen-lead's.
    pub foreign_slices: Option<(Instant, String, Vec<String>)>,
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub cache: Cache,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub evict_uninjected: bool,
    /// Create a LeaderPolicy with the defaults for a pool whose pods name
    /// one that does not exist (`--create-missing-policies`).
    pub create_missing_policies: bool,
    /// Server-side fencing: the settings and whether the cluster has the
    /// policy.
    pub fencing: Fencing,
    memory: Mutex<HashMap<PoolKey, PoolMemory>>,
    /// (pool, workload) pairs already told that the pool's policy is missing:
    /// once per controller term, not on every pod change.
    pub(super) missing_reported: Mutex<BTreeSet<(PoolKey, String)>>,
    /// Candidate RBAC per ServiceAccount (see [`rbac`]).
    pub(super) rbac: rbac::Writer,
}

impl Context {
    pub fn new(
        client: Client,
        cache: Cache,
        recorder: Recorder,
        metrics: Metrics,
        evict_uninjected: bool,
        create_missing_policies: bool,
        fencing: Fencing,
    ) -> Self {
        Self {
            client,
            cache,
            recorder,
            metrics,
            evict_uninjected,
            create_missing_policies,
            fencing,
            memory: Mutex::new(HashMap::new()),
            missing_reported: Mutex::new(BTreeSet::new()),
            rbac: rbac::Writer::default(),
        }
    }

    pub(super) fn with_memory<T>(&self, key: &PoolKey, f: impl FnOnce(&mut PoolMemory) -> T) -> T {
        let mut map = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(key.clone()).or_default())
    }

    /// The pool is gone: what was kept about it goes, its metrics too.
    pub(super) fn forget(&self, key: &PoolKey) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        self.cache.forget_history(key);
        self.metrics.pools.forget(&key.namespace, &key.name);
    }

    /// The API of `K` in the pool's namespace.
    pub(super) fn api<K>(&self, key: &PoolKey) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &key.namespace)
    }
}

pub(super) fn now_time() -> Time {
    // Whole seconds: what the API server keeps, so a status computed now
    // compares equal to the same status read back.
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

pub(super) fn truncate(t: &Time) -> Time {
    Time(Timestamp::from_second(t.0.as_second()).unwrap_or(t.0))
}
