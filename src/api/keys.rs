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

/// Annotation on a pool pod: its priority as a leader, an integer (higher is
/// preferred; absent: 0). A value that is not an integer counts as 0, and
/// the controller says so in a Warning Event on the pod.
pub const PRIORITY_ANNOTATION: &str = "zen-lead/priority";

/// Node label naming the node's zone, which `spec.preferredZones` ranks.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

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

/// Annotation on injected pods: why the pod got the activation in
/// `zen-lead.io/activation` (`auto: every app container has a command, so
/// process`).
pub const ACTIVATION_REASON_ANNOTATION: &str = "zen-lead.io/activation-reason";

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

/// Annotation on a pool's Lease (written by the controller): `"true"` while
/// the policy has `spec.paused: true`. A candidate that does not hold the
/// Lease never acquires it then, free or expired; the holder renews as usual.
/// Absent (or any other value): not paused.
pub const PAUSED_ANNOTATION: &str = "zen-lead.io/paused";

/// Annotation on a pool's Lease, written by the holder with every acquire and
/// renewal and removed on release: which *instance* of the holder identity
/// holds it (the agent's pod UID; a per-process value for `zen-lead lock`).
/// A candidate re-claims a Lease that names its own identity only when this
/// names its own instance too, so two live pods that share an identity can
/// never both lead (see "Identity safety" in docs/ARCHITECTURE.md).
pub const HOLDER_INSTANCE_ANNOTATION: &str = "zen-lead.io/holder-instance";

/// Annotation on a pool's Lease (written by the controller): `"once"` when the
/// policy has `scheduledRuns: once`; absent otherwise.
pub const SCHEDULED_RUNS_ANNOTATION: &str = "zen-lead.io/scheduled-runs";

/// Annotation on a pool's Lease, written by an agent of a CronJob-created Job
/// when it begins a term: `<scheduled time> <Job name>` of the run it leads.
/// With `scheduledRuns: once`, a later candidate for the same scheduled time
/// from another Job skips its run.
pub const SCHEDULED_RUN_ANNOTATION: &str = "zen-lead.io/scheduled-run";

/// Annotation the CronJob controller puts on the Jobs it creates: the
/// scheduled time (RFC 3339) the Job runs for.
pub const CRONJOB_SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Pod annotation: comma-separated app containers that run in every replica
/// (a log shipper, a metrics exporter), left alone by `process` activation.
pub const EXCLUDE_CONTAINERS_ANNOTATION: &str = "zen-lead/exclude-containers";

/// Label on the Leases the controller manages: the name of the LeaderPolicy
/// (same namespace). The controller watches Leases with this label only, so
/// node heartbeats and other Leases cost it nothing.
pub const LEASE_POLICY_LABEL: &str = "zen-lead.io/policy";

/// On a LeaderPolicy the controller created because pods named a pool that
/// had none (value: [`CREATED_BY_CONTROLLER`]). Only a marker: the controller
/// never writes such a policy's spec, so the user's edits stay.
pub const CREATED_BY_ANNOTATION: &str = "zen-lead.io/created-by";

/// Value of [`CREATED_BY_ANNOTATION`].
pub const CREATED_BY_CONTROLLER: &str = "zen-lead-controller";

/// Annotation the controller puts on a Deployment or StatefulSet before
/// `followerMode: scaleDown` scales it: the replica count to restore.
pub const ORIGINAL_REPLICAS_ANNOTATION: &str = "zen-lead.io/original-replicas";

/// Annotation next to [`ORIGINAL_REPLICAS_ANNOTATION`]: the pool whose
/// scaleDown changed the workload, so a restore finds it even at 0 replicas.
pub const SCALED_BY_ANNOTATION: &str = "zen-lead.io/scaled-by";

/// Finalizer on a LeaderPolicy while workloads of its pool are scaled down,
/// so deleting the policy restores their replica counts first.
pub const RESTORE_FINALIZER: &str = "zen-lead.io/restore-replicas";

/// Default name of the controller's own Lease (in its `--namespace`).
pub const CONTROLLER_LEASE_NAME: &str = "zen-lead-controller";

/// The controller Lease's default name for a scope: [`CONTROLLER_LEASE_NAME`]
/// cluster-wide, suffixed with the namespace when the controller watches
/// one namespace only, so controllers of different scopes never wait for
/// each other.
pub fn controller_lease_name(watch_namespace: Option<&str>) -> String {
    match watch_namespace.map(str::trim).filter(|ns| !ns.is_empty()) {
        None => CONTROLLER_LEASE_NAME.to_owned(),
        Some(ns) => format!("{CONTROLLER_LEASE_NAME}-{ns}"),
    }
}

/// Characters of the pod UID in a `pod`-strategy identity.
pub const POD_IDENTITY_UID_CHARS: usize = 8;

/// Candidate identity under `identityStrategy: pod`:
/// `<pod-name>_<first 8 characters of the pod UID>`, so a StatefulSet pod
/// re-created with the same name is a different candidate.
pub fn pod_identity(pod_name: &str, pod_uid: &str) -> String {
    // Same rule as the agent's `agent::pod_identity` (dashes skipped).
    let uid: String = pod_uid
        .chars()
        .filter(|c| *c != '-')
        .take(POD_IDENTITY_UID_CHARS)
        .collect();
    format!("{pod_name}_{uid}")
}

/// Label on a pool's Lease (written by the controller): `"true"` while the
/// pool is fenced on the server, which makes the Lease a parameter of the
/// fencing ValidatingAdmissionPolicy (its binding selects on this label).
pub const FENCED_LABEL: &str = "zen-lead.io/fenced";

/// Annotation on a fenced pool's Lease (written by the controller): the UIDs
/// of the pool's `api` and `process` pods, comma separated and sorted. The
/// fencing policy refuses a write made with the token of a pod listed here
/// unless the Lease names that pod as its holder.
pub const FENCED_PODS_ANNOTATION: &str = "zen-lead.io/fenced-pods";

/// Field manager zen-lead uses for server-side apply.
pub const FIELD_MANAGER: &str = "zen-lead";

/// Label on the Service and EndpointSlice of a pool's `spec.leaderService`
/// (written by the controller): the pool's name. The controller watches
/// both by this label, and never writes a Service without it.
pub const LEADER_SERVICE_LABEL: &str = "zen-lead.io/leader-service-of";

/// `endpointslice.kubernetes.io/managed-by` on a leader Service's
/// EndpointSlice: the EndpointSlice controller leaves slices of other
/// managers alone.
pub const ENDPOINT_SLICE_MANAGER: &str = "zen-lead.io";

/// The EndpointSlice of leader Service `name` is `<name>` + this suffix.
pub const LEADER_SLICE_SUFFIX: &str = "-zen-lead";

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
    /// Two live pool pods use the same candidate identity (custom strategy).
    pub const IDENTITY_CONFLICT: &str = "IdentityConflict";
    /// The API server refuses writes of the pool's pods that do not lead.
    pub const SERVER_SIDE_FENCING: &str = "ServerSideFencing";
    /// `spec.paused` is in force: no fail-over, hand-off, scaleDown change
    /// or deposed-pod deletion.
    pub const PAUSED: &str = "Paused";
    /// `spec.leaderService`: its Service and EndpointSlice are in place.
    pub const LEADER_SERVICE: &str = "LeaderService";

    /// The reasons each condition gives, by condition.
    pub mod reasons {
        // PolicyReady
        pub const LEASE_READY: &str = "LeaseReady";
        pub const INVALID_TIMINGS: &str = "InvalidTimings";
        pub const LEASE_ERROR: &str = "LeaseError";
        /// A Lease of the pool's name exists that zen-lead did not create.
        pub const LEASE_NOT_MANAGED: &str = "LeaseNotManaged";
        // LeaderElected
        pub const LEADER_ELECTED: &str = "LeaderElected";
        pub const LEASE_EXPIRED: &str = "LeaseExpired";
        pub const HOLDER_NOT_LIVE: &str = "HolderNotLive";
        pub const NO_CANDIDATES: &str = "NoCandidates";
        pub const ELECTING: &str = "Electing";
        /// LeaderElected False and Paused True: paused, and nobody leads.
        pub const PAUSED_WITHOUT_LEADER: &str = "PausedWithoutLeader";
        // Paused
        pub const PAUSED: &str = "Paused";
        pub const NOT_PAUSED: &str = "NotPaused";
        // CandidatesAvailable
        pub const CANDIDATES_RUNNING: &str = "CandidatesRunning";
        pub const NO_POOL_PODS: &str = "NoPoolPods";
        pub const AGENTS_NOT_STARTED: &str = "AgentsNotStarted";
        // ScaledDown
        pub const SCALED_DOWN: &str = "ScaledDown";
        pub const HPA_CONFLICT: &str = "HorizontalPodAutoscalerConflict";
        pub const NO_WORKLOADS: &str = "NoWorkloads";
        pub const FOLLOWER_MODE_STANDBY: &str = "FollowerModeStandby";
        // AgentMissing
        pub const ALL_PODS_INJECTED: &str = "AllPodsInjected";
        pub const PODS_WITHOUT_AGENT: &str = "PodsWithoutAgent";
        // IdentityConflict
        pub const IDENTITIES_UNIQUE: &str = "IdentitiesUnique";
        pub const DUPLICATE_IDENTITY: &str = "DuplicateIdentity";
        // ServerSideFencing
        pub const FENCED: &str = "Fenced";
        pub const FENCING_DISABLED: &str = "Disabled";
        pub const FENCING_NOT_INSTALLED: &str = "PolicyNotInstalled";
        pub const START_ACTIVATION: &str = "StartActivation";
        pub const NAMESPACE_NOT_COVERED: &str = "NamespaceNotCovered";
        // LeaderService
        pub const ROUTING_TO_LEADER: &str = "RoutingToLeader";
        pub const NO_LEADER_TO_ROUTE: &str = "NoLeader";
        pub const SERVICE_NOT_MANAGED: &str = "ServiceNotManaged";
        pub const TARGET_PORT_NOT_FOUND: &str = "TargetPortNotFound";
        pub const SERVICE_ERROR: &str = "ServiceError";
        pub const FOREIGN_ENDPOINT_SLICE: &str = "ForeignEndpointSlice";
    }
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
