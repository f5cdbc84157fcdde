//! Every annotation, label and condition key zen-lead reads or writes.
//!
//! They are part of the public contract with users (annotations on their
//! workloads, labels their Services select on), so they live in one place and
//! change only with a new API version.

/// Annotation on a workload, its pod template or a pod: the name of the
/// `LeaderPolicy` (same namespace) whose pool the pods join.
pub const POOL_ANNOTATION: &str = "zen-lead/pool";

/// Label the webhook copies from [`POOL_ANNOTATION`] onto injected pods, so the
/// controller can watch pool pods only (label selectors are server-side;
/// annotation selectors do not exist).
pub const POOL_LABEL: &str = "zen-lead/pool";

/// Annotation: `"false"` keeps a pod out of the election although its workload
/// names a pool. Absent or `"true"` means join.
pub const JOIN_ANNOTATION: &str = "zen-lead/join";

/// Annotation the controller keeps on pool pods: [`ROLE_LEADER`] or
/// [`ROLE_FOLLOWER`]. Informational; select on [`ROLE_LABEL`] instead.
pub const ROLE_ANNOTATION: &str = "zen-lead/role";

/// Annotation holding the candidate identity when a policy uses
/// `identityStrategy: custom`.
pub const IDENTITY_ANNOTATION: &str = "zen-lead/identity";

/// Label the controller keeps on pool pods so a Service can select only the
/// leader (`zen-lead.io/role: leader`).
pub const ROLE_LABEL: &str = "zen-lead.io/role";

/// Value of [`ROLE_LABEL`] / [`ROLE_ANNOTATION`] on the pod that holds the Lease.
pub const ROLE_LEADER: &str = "leader";

/// Value of [`ROLE_LABEL`] / [`ROLE_ANNOTATION`] on every other pool pod.
pub const ROLE_FOLLOWER: &str = "follower";

/// Pod readiness gate (a pod condition type) injected by the webhook and set by
/// the controller. True means "recognised, working candidate of an existing
/// policy", never "is leader": tying readiness to leadership deadlocks rolling
/// updates.
pub const CANDIDATE_READINESS_GATE: &str = "zen-lead.io/candidate";

/// Annotation the webhook puts on pods it injected: `<zen-lead version>/sha256:<hash>`
/// of what it added. Its presence (with the agent container) makes a second
/// admission pass a no-op.
pub const INJECTED_ANNOTATION: &str = "zen-lead.io/injected";

/// Annotation on injected pods: the activation mode that was wired (`start`).
pub const ACTIVATION_ANNOTATION: &str = "zen-lead.io/activation";

/// Annotation on injected pods: where `zen-lead/pool` was found, `pod` or
/// `<Kind>/<name>` of the owning workload (e.g. `CronJob/nightly-report`).
pub const POOL_FROM_ANNOTATION: &str = "zen-lead.io/pool-from";

/// Annotation on a pool's Lease (written by the controller): seconds, decimal
/// allowed (`"10"`, `"0.5"`), that the leader keeps retrying to renew before it
/// steps down. Absent: two thirds of `spec.leaseDurationSeconds`.
pub const RENEW_DEADLINE_ANNOTATION: &str = "zen-lead.io/renew-deadline-seconds";

/// Annotation on a pool's Lease: seconds between the leader's renewals (and
/// between retries). Absent: 2/15 of `spec.leaseDurationSeconds`.
pub const RETRY_PERIOD_ANNOTATION: &str = "zen-lead.io/retry-period-seconds";

/// Annotation on a pool's Lease: the candidate identity the controller wants
/// to lead next. The holder, if it is someone else, releases the Lease; other
/// candidates briefly defer to the named one.
pub const PREFERRED_HOLDER_ANNOTATION: &str = "zen-lead.io/preferred-holder";

/// Field manager zen-lead uses for server-side apply.
pub const FIELD_MANAGER: &str = "zen-lead";

/// `LeaderPolicy.status.conditions[].type` values.
pub mod conditions {
    /// The policy is valid and its Lease exists.
    pub const POLICY_READY: &str = "PolicyReady";
    /// A live candidate holds the pool's Lease.
    pub const LEADER_ELECTED: &str = "LeaderElected";
    /// At least one pool pod runs a started agent.
    pub const CANDIDATES_AVAILABLE: &str = "CandidatesAvailable";
    /// `followerMode: scaleDown` has scaled the pool's workloads.
    pub const SCALED_DOWN: &str = "ScaledDown";
    /// A pool pod runs without the agent (admitted while the webhook was down).
    pub const AGENT_MISSING: &str = "AgentMissing";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label keys must be valid Kubernetes qualified names, or every write that
    /// uses them is rejected by the API server.
    #[test]
    fn label_keys_are_qualified_names() {
        for key in [POOL_LABEL, ROLE_LABEL, CANDIDATE_READINESS_GATE] {
            let (prefix, name) = key.split_once('/').expect("prefixed key");
            assert!(!prefix.is_empty() && prefix.len() <= 253, "{key}");
            assert!(!name.is_empty() && name.len() <= 63, "{key}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "{key}"
            );
        }
        for value in [ROLE_LEADER, ROLE_FOLLOWER] {
            assert!(value.len() <= 63 && value.chars().all(|c| c.is_ascii_lowercase()));
        }
    }
}
