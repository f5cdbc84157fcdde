//! The controller's metrics (prefix `zen_lead_controller_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Which step failed: lease, status, pods, rbac, scale, ...
    pub step: &'static str,
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
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
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
