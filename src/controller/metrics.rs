//! The controller's metrics: its own (prefix `zen_lead_controller_`) and
//! one series set per pool (prefix `zen_lead_pool_`), which goes with its
//! pool and with this replica's term, so no replica reports a stale pool.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::TransitionReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Which step failed: lease, status, pods, rbac, scale, ...
    pub step: &'static str,
}

/// A pool's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

/// A pool's labels and why its leader changed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub namespace: String,
    pub pool: String,
    pub reason: &'static str,
}

/// The per-pool series.
#[derive(Clone, Default)]
pub struct PoolMetrics {
    pub has_leader: Family<PoolLabels, Gauge>,
    pub leader_changes: Family<ChangeLabels, Counter>,
    pub leader_since: Family<PoolLabels, Gauge>,
}

impl PoolMetrics {
    fn labels(namespace: &str, pool: &str) -> PoolLabels {
        PoolLabels {
            namespace: namespace.to_owned(),
            pool: pool.to_owned(),
        }
    }

    fn change_labels(namespace: &str, pool: &str, reason: TransitionReason) -> ChangeLabels {
        ChangeLabels {
            namespace: namespace.to_owned(),
            pool: pool.to_owned(),
            reason: reason.as_str(),
        }
    }

    /// A pass's view of the pool: whether it has a leader, and since when
    /// (Unix seconds; 0 without a leader, or when the Lease does not say). Every reason's
    /// counter exists from the pool's first pass, at zero, so `increase()`
    /// sees the first change.
    pub fn observe(&self, namespace: &str, pool: &str, leader_since: Option<i64>) {
        let labels = Self::labels(namespace, pool);
        self.has_leader
            .get_or_create(&labels)
            .set(i64::from(leader_since.is_some()));
        self.leader_since
            .get_or_create(&labels)
            .set(leader_since.unwrap_or(0));
        for reason in TransitionReason::ALL {
            self.leader_changes
                .get_or_create(&Self::change_labels(namespace, pool, reason))
                .inc_by(0);
        }
    }

    /// One change of the pool's leader.
    pub fn changed(&self, namespace: &str, pool: &str, reason: TransitionReason) {
        self.leader_changes
            .get_or_create(&Self::change_labels(namespace, pool, reason))
            .inc();
    }

    /// The pool is gone: its series go with it.
    pub fn forget(&self, namespace: &str, pool: &str) {
        let labels = Self::labels(namespace, pool);
        self.has_leader.remove(&labels);
        self.leader_since.remove(&labels);
        for reason in TransitionReason::ALL {
            self.leader_changes
                .remove(&Self::change_labels(namespace, pool, reason));
        }
    }

    /// This replica stopped running the controllers: the replica that runs
    /// them now reports the pools.
    pub fn clear(&self) {
        self.has_leader.clear();
        self.leader_since.clear();
        self.leader_changes.clear();
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pool");
        r.register(
            "has_leader",
            "1 while a live pod of the pool holds its Lease, 0 while the pool has no leader",
            self.has_leader.clone(),
        );
        r.register(
            "leader_changes",
            "Changes of the pool's leader, by reason (gracefulHandOff, expiry, podDeleted, \
             appFailed, preference, manual)",
            self.leader_changes.clone(),
        );
        r.register(
            "leader_since_seconds",
            "Unix time at which the pool's current leader acquired the Lease (0 while the pool \
             has no leader)",
            self.leader_since.clone(),
        );
    }
}

/// Controller metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub leader_changes: Counter,
    pub failover_seconds: Histogram,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub api_requests: Counter,
    pub is_active: Gauge,
    pub policies: Gauge,
    pub pool_pods: Gauge,
    pub lease_expiries: Counter,
    pub evictions: Counter,
    pub deposed_deletions: Counter,
    pub policies_created: Counter,
    pub fencing_read_errors: Counter,
    /// Failed reads or writes of the fencing binding's namespace scope.
    pub fencing_scope_errors: Counter,
    pub pools: PoolMetrics,
}

/// The steps whose error counters exist from the start at zero, so a rate
/// or an alert over `reconcile_errors_total` sees them before the first
/// failure (others appear when they first fail).
const KNOWN_STEPS: &[&str] = &[
    "Lease",
    "Pod",
    "LeaderPolicy",
    "Role",
    "RoleBinding",
    "event",
    "eviction",
    "delete-deposed",
];

impl Default for Metrics {
    fn default() -> Self {
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        for step in KNOWN_STEPS {
            reconcile_errors
                .get_or_create(&ErrorLabels { step })
                .inc_by(0);
        }
        Self {
            leader_changes: Counter::default(),
            // 10 ms .. ~5.5 min
            failover_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            reconciles: Counter::default(),
            reconcile_errors,
            api_requests: Counter::default(),
            is_active: Gauge::default(),
            policies: Gauge::default(),
            pool_pods: Gauge::default(),
            lease_expiries: Counter::default(),
            evictions: Counter::default(),
            deposed_deletions: Counter::default(),
            policies_created: Counter::default(),
            fencing_read_errors: Counter::default(),
            fencing_scope_errors: Counter::default(),
            pools: PoolMetrics::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        self.pools.register(registry);
        let r = registry.sub_registry_with_prefix("controller");
        r.register(
            "leader_changes",
            "Leadership changes observed in all pools",
            self.leader_changes.clone(),
        );
        r.register(
            "failover_duration_seconds",
            "How long a pool was without a live leader before the next one took over",
            self.failover_seconds.clone(),
        );
        r.register(
            "reconciles",
            "Pool reconciliations",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed pool reconciliations, by step",
            self.reconcile_errors.clone(),
        );
        r.register(
            "api_requests",
            "HTTP requests this process sent to the Kubernetes API server (watches included)",
            self.api_requests.clone(),
        );
        r.register(
            "active",
            "1 while this replica holds the controller Lease and runs the controllers",
            self.is_active.clone(),
        );
        r.register(
            "policies",
            "LeaderPolicies in the watched namespaces",
            self.policies.clone(),
        );
        r.register(
            "pool_pods",
            "Pods with the zen-lead/pool label in the watched namespaces",
            self.pool_pods.clone(),
        );
        r.register(
            "lease_expiries",
            "Leases expired early by compare-and-swap because the holder pod was gone",
            self.lease_expiries.clone(),
        );
        r.register(
            "evictions",
            "Pool pods evicted because they ran without the agent (--evict-uninjected)",
            self.evictions.clone(),
        );
        r.register(
            "deposed_leaders_deleted",
            "start-activation pods deleted because their app ran after they lost the Lease",
            self.deposed_deletions.clone(),
        );
        r.register(
            "policies_created",
            "LeaderPolicies created with the defaults because pool pods named one that did not exist",
            self.policies_created.clone(),
        );
        r.register(
            "fencing_policy_read_errors",
            "Reads of the fencing ValidatingAdmissionPolicy or its binding that failed or timed out \
             (the last answer is kept: fencing stays on)",
            self.fencing_read_errors.clone(),
        );
        r.register(
            "fencing_scope_errors",
            "Reads or writes of the fencing binding's namespaceSelector that failed (the binding \
             is left as it was: a namespace is never dropped on an error)",
            self.fencing_scope_errors.clone(),
        );
    }

    pub fn error(&self, step: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { step })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &PoolMetrics) -> String {
        let mut registry = Registry::with_prefix("zen_lead");
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap_or_default();
        out
    }

    /// The sample lines of the pool families, without comments.
    fn samples(m: &PoolMetrics) -> Vec<String> {
        text(m)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_pool_has_its_series_until_it_goes() {
        let m = PoolMetrics::default();
        m.observe("ns", "web", Some(1_700_000_000));
        let s = samples(&m);
        assert!(
            s.contains(&r#"zen_lead_pool_has_leader{namespace="ns",pool="web"} 1"#.to_owned()),
            "{s:?}"
        );
        assert!(
            s.contains(
                &r#"zen_lead_pool_leader_since_seconds{namespace="ns",pool="web"} 1700000000"#
                    .to_owned()
            ),
            "{s:?}"
        );
        assert!(
            s.contains(&r#"zen_lead_pool_leader_changes_total{namespace="ns",pool="web",reason="manual"} 0"#.to_owned()),
            "every reason at zero: {s:?}"
        );
        m.changed("ns", "web", TransitionReason::Manual);
        m.changed("ns", "web", TransitionReason::Manual);
        m.observe("ns", "db", None);
        let s = samples(&m);
        assert!(s.contains(&r#"zen_lead_pool_leader_changes_total{namespace="ns",pool="web",reason="manual"} 2"#.to_owned()), "{s:?}");
        assert!(
            s.contains(&r#"zen_lead_pool_has_leader{namespace="ns",pool="db"} 0"#.to_owned()),
            "{s:?}"
        );
        assert!(
            s.contains(
                &r#"zen_lead_pool_leader_since_seconds{namespace="ns",pool="db"} 0"#.to_owned()
            ),
            "since is 0 without a leader: {s:?}"
        );
        // web loses its leader: has_leader and since say 0.
        m.observe("ns", "web", None);
        let s = samples(&m);
        assert!(
            s.contains(&r#"zen_lead_pool_has_leader{namespace="ns",pool="web"} 0"#.to_owned()),
            "{s:?}"
        );
        assert!(
            s.contains(
                &r#"zen_lead_pool_leader_since_seconds{namespace="ns",pool="web"} 0"#.to_owned()
            ),
            "{s:?}"
        );
        // web is deleted: none of its series is left; db's stay.
        m.forget("ns", "web");
        let s = samples(&m);
        assert!(!s.iter().any(|l| l.contains(r#"pool="web""#)), "{s:?}");
        assert!(s.iter().any(|l| l.contains(r#"pool="db""#)), "{s:?}");
        // The term ends: nothing is left.
        m.clear();
        assert!(!text(&m).contains("zen_lead_pool"), "{}", text(&m));
    }
}
