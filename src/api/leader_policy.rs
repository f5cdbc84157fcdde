//! `LeaderPolicy` (`coordination.kube-zen.io/v1alpha1`): one per pool.
//!
//! Field doc comments become the CRD's schema descriptions, which is what
//! `kubectl explain leaderpolicy.spec` shows: they are written for users.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::election::{TimingNames, Timings};

/// Bounds of `spec.leaseDurationSeconds`, also enforced by the CRD schema.
pub const LEASE_DURATION_RANGE: std::ops::RangeInclusive<i32> = 5..=300;
/// Bounds of `spec.renewDeadlineSeconds` on its own; its relation to the
/// lease duration is checked by the CEL rules. At least 2: with a 1 s deadline
/// no whole-second retry period leaves room for a retry.
pub const RENEW_RANGE: std::ops::RangeInclusive<i32> = 2..=300;
/// Bounds of `spec.retryPeriodSeconds` on its own.
pub const RETRY_RANGE: std::ops::RangeInclusive<i32> = 1..=300;

/// Desired behaviour of a pool: election timings, how candidates are
/// identified, and what followers do.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "coordination.kube-zen.io",
    version = "v1alpha1",
    kind = "LeaderPolicy",
    plural = "leaderpolicies",
    singular = "leaderpolicy",
    namespaced,
    shortname = "lp",
    category = "zen-lead",
    status = "LeaderPolicyStatus",
    derive = "PartialEq",
    doc = "A pool of replicas of which exactly one is active at a time. Workloads join the pool \
           named NAME with the annotation `zen-lead/pool: NAME` in the policy's namespace.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Stable while a live candidate holds the pool's Lease; Electing while none does; Paused while none does and spec.paused keeps it so"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.currentHolder.name",
        description = "Pod that currently holds the pool's Lease"
    ),
    printcolumn(
        name = "Candidates",
        type_ = "integer",
        json_path = ".status.candidates",
        description = "Pool pods with a running election agent"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.followerMode",
        description = "What followers do: standby or scaleDown"
    ),
    printcolumn(
        name = "Paused",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Paused\")].status",
        description = "True while spec.paused is in force: no fail-over, hand-off or scaleDown change"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Pods carry the policy name in the `zen-lead/pool` label, and label
    // values stop at 63 characters.
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name of a LeaderPolicy must be at most 63 characters: pods carry it in the zen-lead/pool label")
        .reason(Reason::FieldValueInvalid)
)]
// leaseDurationSeconds is defaulted (the API server applies schema defaults
// before it evaluates CEL); the other two may be unset, and then follow the
// lease duration (see `LeaderPolicySpec::effective_seconds`, whose integer
// arithmetic the rules repeat: CEL's int division truncates the same way).
#[x_kube(
    validation = Rule::new("!has(self.renewDeadlineSeconds) || self.renewDeadlineSeconds < self.leaseDurationSeconds")
        .message("renewDeadlineSeconds must be less than leaseDurationSeconds: a leader has to give up before another candidate may take over")
        .field_path(".renewDeadlineSeconds")
        .reason(Reason::FieldValueInvalid),
    // retry * 1.2 < renew, kept in integers (retry * 6 < renew * 5) so the
    // boundary is exact, the same as `election::Timings`.
    validation = Rule::new("!has(self.retryPeriodSeconds) || self.retryPeriodSeconds * 6 < (has(self.renewDeadlineSeconds) ? self.renewDeadlineSeconds : self.leaseDurationSeconds * 2 / 3) * 5")
        .message("retryPeriodSeconds times 1.2 must be less than renewDeadlineSeconds (when unset, two thirds of leaseDurationSeconds): a leader needs room for at least one retry before its renew deadline")
        .field_path(".retryPeriodSeconds")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct LeaderPolicySpec {
    /// Seconds a leader's claim stays valid after its last renewal. A crashed
    /// leader is replaced at most this long after it stopped renewing.
    #[serde(default = "default_lease_duration_seconds")]
    #[schemars(range(min = 5, max = 300))]
    pub lease_duration_seconds: i32,

    /// Seconds the leader keeps trying to renew before it steps down. Must be
    /// less than leaseDurationSeconds. Unset: two thirds of
    /// leaseDurationSeconds, rounded down (client-go's 15:10 proportion);
    /// status.timings shows the value in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 300))]
    pub renew_deadline_seconds: Option<i32>,

    /// Seconds between election attempts. retryPeriodSeconds times 1.2 must be
    /// less than renewDeadlineSeconds. Unset: a fifth of the renew deadline,
    /// rounded down, at least 1 (client-go's 10:2 proportion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub retry_period_seconds: Option<i32>,

    /// How a candidate is named in the Lease. `pod`: the pod's name plus part
    /// of its UID, so a re-created pod with the same name starts a new term.
    /// `custom`: the value of the pod's `zen-lead/identity` annotation.
    #[serde(default)]
    pub identity_strategy: IdentityStrategy,

    /// What followers do. `standby`: their pods keep running, kept inactive
    /// by the activation mode. `scaleDown`: the pool's Deployments and
    /// StatefulSets are scaled so the pool runs one replica in total
    /// (original counts are restored when the mode or policy goes away).
    #[serde(default)]
    pub follower_mode: FollowerMode,

    /// How a follower is kept inactive. `api`: every replica runs and the
    /// agent lets only the leader's Kubernetes API writes through (hot
    /// standby). `start`: the app containers of a follower do not start
    /// until it leads (cold standby). `process`: every pod's containers start
    /// and the pod is Ready, but the app's process runs only in the leader
    /// (under `zen-lead run`; cold standby with Ready followers). `auto`:
    /// `api` for Deployments, StatefulSets and DaemonSets; for Jobs, CronJobs
    /// and bare pods `process` when every app container has a `command` and
    /// the pod has no init containers, else `start` (the pod's
    /// zen-lead.io/activation-reason annotation says which and why).
    #[serde(default)]
    pub activation: Activation,

    /// Jobs of the pool created by CronJobs for the same scheduled time.
    /// `each`: every such Job runs its command, one at a time. `once`
    /// (`process` activation): the first runs it; the others complete
    /// successfully without running it, and an Event on each says which Job
    /// it duplicated. Jobs without a scheduled time always run.
    #[serde(default)]
    pub scheduled_runs: ScheduledRuns,

    /// Whether the API server itself refuses a write made with the token of
    /// one of this pool's `api` or `process` pods unless that pod holds the
    /// pool's Lease (a ValidatingAdmissionPolicy; Kubernetes 1.30+). It
    /// covers what the agent's gate cannot: an app that bypasses the gate, a
    /// leader paused past its lease. Unset: the cluster's default (the
    /// chart's fencing.serverSide). The ServerSideFencing condition says
    /// whether the pool is fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_fencing: Option<bool>,

    /// Take over a Lease of the pool's name that zen-lead did not create
    /// (another controller's leader election, say). false: such a Lease is
    /// left untouched, the pool does not run, and the PolicyReady condition
    /// and an Event name the Lease and its holder: rename the policy, or set
    /// this once the Lease's old users are gone. zen-lead then rewrites its
    /// timings and owner, and deleting the policy deletes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_existing_lease: bool,

    /// `api` pools: seconds the leader's app containers may be failing (not
    /// Ready, or restarting) before the controller asks the leader to hand
    /// over to a follower whose app is Ready. The leader's agent releases
    /// the Lease and that follower takes over at once. Without a Ready
    /// follower the leader keeps the Lease (an Event says so). Unset: the
    /// lease duration. 0: never hand over for it. `start` and `process`
    /// pools are not affected (`process` releases when the app exits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub app_failure_grace_seconds: Option<i32>,

    /// Maintenance pause. true: no fail-over, no hand-off (the controller's
    /// and `zen-lead handoff`), no scaleDown change and no deletion of a
    /// deposed pod. The leader keeps leading while it renews; if it stops
    /// (its pod dies, it releases), the pool has no leader until resumed,
    /// and the Paused condition says so. `zen-lead pause` / `zen-lead
    /// resume` set and clear it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// A Service that sends traffic to the pool's leader only. zen-lead keeps
    /// a Service of this name without a selector, and beside it one
    /// EndpointSlice holding the leader pod's address, or none while the pool
    /// has no leader. Followers, Ready or not, never receive its traffic.
    /// The name must not belong to a Service zen-lead did not create (the
    /// LeaderService condition says so). Removing the field deletes both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_service: Option<LeaderService>,

    /// Zones in order of preference (a pod's zone is its node's
    /// `topology.kubernetes.io/zone` label). The controller ranks
    /// candidates by their `zen-lead/priority` annotation first, then by
    /// the position of their zone here (an unlisted or unknown zone comes
    /// last), both when it names a successor and for the standing
    /// preference (see `preferenceCooldownSeconds`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub preferred_zones: Vec<String>,

    /// Standing preference: once a Ready candidate that ranks strictly
    /// higher than the leader (priority, then zone) has been Ready for this
    /// long, the controller hands leadership over to it, and it moves
    /// leadership for preference at most once per this many seconds, and
    /// never sooner than this after any leader change. 0: no standing
    /// moves (successors are still chosen by preference).
    #[serde(default = "default_preference_cooldown_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub preference_cooldown_seconds: i32,
}

/// The leader-only Service of a pool (`spec.leaderService`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.ports.size() == 1 || self.ports.all(p, has(p.name))")
        .message("every port of spec.leaderService needs a name when there are several")
        .field_path(".ports")
        .reason(Reason::FieldValueInvalid),
)]
pub struct LeaderService {
    /// Name of the Service (a DNS label). Its EndpointSlice is named
    /// `<name>-zen-lead`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// The Service's ports, as in a Service's `spec.ports`.
    #[schemars(length(min = 1, max = 100))]
    pub ports: Vec<LeaderServicePort>,
}

/// One port of the leader-only Service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaderServicePort {
    /// Port name (required when there are several ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,

    /// The port the Service listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// The leader pod's port: a number, or the name of a container port of
    /// the leader pod. Unset: the same as `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,

    /// TCP (default), UDP or SCTP.
    #[serde(default)]
    pub protocol: ServiceProtocol,
}

/// The protocol of a leader-only Service port.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl ServiceProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceProtocol::Tcp => "TCP",
            ServiceProtocol::Udp => "UDP",
            ServiceProtocol::Sctp => "SCTP",
        }
    }
}

/// Whether a scheduled time runs once per pool.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum ScheduledRuns {
    /// Every Job runs, one at a time.
    #[default]
    Each,
    /// One run per scheduled time in the pool.
    Once,
}

fn default_lease_duration_seconds() -> i32 {
    15
}

/// Five minutes: long against a hand-off (milliseconds) and against a
/// readiness blip, so a pod whose annotation or readiness flaps moves
/// leadership at most a few times an hour; short against how long people
/// wait for a preference they set to take effect.
fn default_preference_cooldown_seconds() -> i32 {
    300
}

impl Default for LeaderPolicySpec {
    fn default() -> Self {
        Self {
            lease_duration_seconds: default_lease_duration_seconds(),
            renew_deadline_seconds: None,
            retry_period_seconds: None,
            identity_strategy: IdentityStrategy::default(),
            follower_mode: FollowerMode::default(),
            activation: Activation::default(),
            scheduled_runs: ScheduledRuns::default(),
            server_side_fencing: None,
            adopt_existing_lease: false,
            app_failure_grace_seconds: None,
            paused: false,
            leader_service: None,
            preferred_zones: Vec::new(),
            preference_cooldown_seconds: default_preference_cooldown_seconds(),
        }
    }
}

impl LeaderPolicySpec {
    /// The timings in effect, in whole seconds: explicit values as written,
    /// unset ones derived from the lease duration with client-go's 15:10:2
    /// proportions. The CRD's CEL rules repeat this arithmetic.
    pub fn effective_seconds(&self) -> EffectiveTimings {
        let lease = self.lease_duration_seconds;
        let renew = self.renew_deadline_seconds.unwrap_or(lease * 2 / 3);
        let retry = self.retry_period_seconds.unwrap_or((renew / 5).max(1));
        EffectiveTimings {
            lease_duration_seconds: lease,
            renew_deadline_seconds: renew,
            retry_period_seconds: retry,
        }
    }

    /// Client-side mirror of the CRD's schema bounds and CEL rules, for
    /// values that did not come through the API server (tests, dry runs,
    /// older servers): errors name the `spec.*` field to fix.
    pub fn timings(&self) -> Result<Timings, ApiError> {
        let names = TimingNames::POLICY;
        let explicit = [
            (
                Some(self.lease_duration_seconds),
                names.lease_duration,
                &LEASE_DURATION_RANGE,
            ),
            (
                self.renew_deadline_seconds,
                names.renew_deadline,
                &RENEW_RANGE,
            ),
            (self.retry_period_seconds, names.retry_period, &RETRY_RANGE),
        ];
        for (value, field, range) in explicit {
            match value {
                Some(value) if !range.contains(&value) => {
                    return Err(ApiError::OutOfRange {
                        field,
                        value: i64::from(value),
                        min: i64::from(*range.start()),
                        max: i64::from(*range.end()),
                    });
                }
                _ => {}
            }
        }
        let e = self.effective_seconds();
        let secs = |s: i32| Duration::from_secs(u64::from(s.unsigned_abs()));
        Ok(Timings::new(
            secs(e.lease_duration_seconds),
            secs(e.renew_deadline_seconds),
            secs(e.retry_period_seconds),
            names,
        )?)
    }
}

/// The election timings a pool runs with, explicit or derived.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveTimings {
    /// As spec.leaseDurationSeconds.
    pub lease_duration_seconds: i32,
    /// spec.renewDeadlineSeconds, or the value derived from the lease duration.
    pub renew_deadline_seconds: i32,
    /// spec.retryPeriodSeconds, or the value derived from the renew deadline.
    pub retry_period_seconds: i32,
}

/// How a candidate is named in the pool's Lease.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum IdentityStrategy {
    /// Pod name plus a UID fragment.
    #[default]
    Pod,
    /// The pod's `zen-lead/identity` annotation.
    Custom,
}

impl IdentityStrategy {
    /// The value as written in the CRD (and in the agent's environment).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Custom => "custom",
        }
    }
}

/// What the followers of a pool do.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum FollowerMode {
    /// Followers keep running, inactive.
    #[default]
    Standby,
    /// The pool is scaled to one replica in total.
    ScaleDown,
}

/// How a follower is kept inactive.
#[derive(
    Serialize,
    Deserialize,
    JsonSchema,
    clap::ValueEnum,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
)]
#[serde(rename_all = "camelCase")]
pub enum Activation {
    /// `api` for pods of Deployments, StatefulSets and DaemonSets; `process`
    /// for Jobs, CronJobs and bare pods whose app containers all have a
    /// `command` (and no init containers), else `start` (or what the
    /// controller's `--default-activation` says).
    #[default]
    Auto,
    /// Hot standby: only the leader's API writes pass the agent.
    Api,
    /// Cold standby: a follower's app containers wait until it leads.
    Start,
    /// Cold standby with Ready followers: every pod's app containers start,
    /// but each one's process runs (under `zen-lead run`) only while the pod
    /// leads; probes are answered for the held app.
    Process,
}

/// Observed state of a pool, written by the zen-lead controller.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaderPolicyStatus {
    /// `Electing` while no live candidate holds the pool's Lease, `Stable`
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The candidate holding the pool's Lease, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_holder: Option<Holder>,

    /// Number of pool pods whose election agent has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub candidates: Option<i32>,

    /// How many times leadership changed hands (the Lease's
    /// leaseTransitions). The current term's value is its fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub lease_transitions: Option<i32>,

    /// When leadership last changed hands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,

    /// The election timings in effect: spec values, with unset ones derived
    /// from leaseDurationSeconds. These are what the pool's Lease carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<EffectiveTimings>,

    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: PolicyReady, LeaderElected, CandidatesAvailable,
    /// ScaledDown, AgentMissing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The last leader changes the controller saw, oldest first (at most
    /// 10): when, from and to which pod, why, and how long the take-over
    /// took. Kept in the policy, so it outlives Events and controller
    /// restarts; changes made while no controller ran are not in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub recent_transitions: Vec<LeaderTransition>,
}

/// Entries kept in `status.recentTransitions`.
pub const RECENT_TRANSITIONS: usize = 10;

/// One change of a pool's leader.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaderTransition {
    /// When the new leader's acquisition was seen.
    pub time: Time,
    /// The previous leader (pod name, or the Lease identity when no pool pod
    /// has it).
    pub from: String,
    /// The new leader (pod name, or the Lease identity).
    pub to: String,
    /// Why leadership moved.
    pub reason: TransitionReason,
    /// Milliseconds from the old holder's last sign of life in the Lease
    /// (its release, the controller clearing it, or its last renewal) to the
    /// new holder's acquisition, as the controller's Lease watch saw them.
    /// Absent when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub takeover_millis: Option<i64>,
    /// The new term's fencing token (the Lease's leaseTransitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub term: Option<i32>,
}

/// Why a pool's leader changed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum TransitionReason {
    /// The leader released the Lease on its own (its agent stopped cleanly,
    /// or a `process` app exited) and a follower took it.
    GracefulHandOff,
    /// The leader stopped renewing (frozen, cut off, or gone without a
    /// trace) and a follower took the Lease once it expired, or the
    /// controller cleared it because the leader's node is NotReady or its
    /// pod finished.
    Expiry,
    /// The leader's pod was deleted (terminating or gone).
    PodDeleted,
    /// An `api` leader's app failed for longer than
    /// spec.appFailureGraceSeconds and the controller handed over to a
    /// follower whose app is Ready.
    AppFailed,
    /// The controller moved leadership to a candidate that ranks higher
    /// (zen-lead/priority, then spec.preferredZones; see
    /// spec.preferenceCooldownSeconds).
    Preference,
    /// Someone asked for it (`zen-lead handoff`, or an edit of the Lease's
    /// zen-lead.io/preferred-holder).
    Manual,
}

impl TransitionReason {
    pub const ALL: [TransitionReason; 6] = [
        TransitionReason::GracefulHandOff,
        TransitionReason::Expiry,
        TransitionReason::PodDeleted,
        TransitionReason::AppFailed,
        TransitionReason::Preference,
        TransitionReason::Manual,
    ];

    /// The value as written in the status and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::GracefulHandOff => "gracefulHandOff",
            TransitionReason::Expiry => "expiry",
            TransitionReason::PodDeleted => "podDeleted",
            TransitionReason::AppFailed => "appFailed",
            TransitionReason::Preference => "preference",
            TransitionReason::Manual => "manual",
        }
    }
}

/// Phase of a pool.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No live candidate holds the Lease.
    Electing,
    /// A live candidate holds the Lease.
    Stable,
    /// Paused (`spec.paused`) and no live candidate holds the Lease: nobody
    /// is elected until the pool is resumed.
    Paused,
}

/// The candidate holding a pool's Lease.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    /// Name of the leader pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// UID of the leader pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,

    /// The holderIdentity written in the Lease.
    pub identity: String,

    /// When this holder acquired the Lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}
