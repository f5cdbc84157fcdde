//! The LeaderPolicy status: one small function per condition, each saying
//! its status, reason and message; [`status`] assembles them and keeps the
//! transition times of what did not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::fencing::FencingState;
use super::{IdentityConflict, LeaseView, PodView, ScaleOutcome};
use crate::api::keys::IDENTITY_ANNOTATION;
use crate::api::keys::conditions::{self, reasons};
use crate::api::{
    EffectiveTimings, FollowerMode, Holder, LeaderPolicyStatus, LeaderTransition, Phase,
};
use crate::contract::AGENT_CONTAINER;

/// Why a policy is not ready (the `PolicyReady` condition's reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyProblem {
    /// The timings contradict each other; the message names the fields.
    InvalidTimings(String),
    /// The Lease could not be created or updated.
    LeaseError(String),
    /// A Lease of the pool's name exists that zen-lead did not create; the
    /// message names it and its holder.
    LeaseNotManaged(String),
}

impl PolicyProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyProblem::InvalidTimings(_) => reasons::INVALID_TIMINGS,
            PolicyProblem::LeaseError(_) => reasons::LEASE_ERROR,
            PolicyProblem::LeaseNotManaged(_) => reasons::LEASE_NOT_MANAGED,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            PolicyProblem::InvalidTimings(m)
            | PolicyProblem::LeaseError(m)
            | PolicyProblem::LeaseNotManaged(m) => m,
        }
    }
}

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub pool: &'a str,
    pub previous: Option<&'a LeaderPolicyStatus>,
    /// The policy is unusable (timings) or the Lease could not be ensured.
    pub policy_ready: Result<(), PolicyProblem>,
    pub lease: Option<&'a LeaseView>,
    pub leader: Option<&'a PodView>,
    pub pods: &'a [PodView],
    /// Live pool pods with a started agent.
    pub candidates: usize,
    /// Pods (labelled or only annotated) that run without the agent.
    pub agent_missing: &'a [String],
    /// Live pods whose identity another live pod already uses.
    pub identity_conflicts: &'a [IdentityConflict],
    pub follower_mode: FollowerMode,
    /// The timings in effect (`None` while the policy's timings are invalid).
    pub timings: Option<EffectiveTimings>,
    /// scaleDown outcome (`None` in standby mode).
    pub scaled: Option<ScaleOutcome>,
    /// Server-side fencing of the pool.
    pub fencing: FencingState,
    /// Leader changes recorded since the last stored status.
    pub transitions: &'a [LeaderTransition],
    /// `spec.paused`.
    pub paused: bool,
    /// The LeaderService condition (status, reason, message); `None`
    /// without `spec.leaderService`.
    pub leader_service: Option<(bool, &'static str, String)>,
    pub now: Time,
}

/// A condition as decided, before its transition time is settled.
struct Want {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

fn want(type_: &'static str, status: bool, reason: &'static str, message: String) -> Want {
    Want {
        type_,
        status,
        reason,
        message,
    }
}

/// The condition, keeping the previous transition time when its status
/// did not change.
fn settle(input: &StatusInput<'_>, w: Want) -> Condition {
    let status = if w.status { "True" } else { "False" };
    let since = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == w.type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| input.now.clone());
    Condition {
        type_: w.type_.to_owned(),
        status: status.to_owned(),
        reason: w.reason.to_owned(),
        message: w.message,
        observed_generation: input.generation,
        last_transition_time: since,
    }
}

/// At most five names, then how many more.
fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

fn policy_ready(input: &StatusInput<'_>) -> Want {
    let t = conditions::POLICY_READY;
    match &input.policy_ready {
        Ok(()) => want(
            t,
            true,
            reasons::LEASE_READY,
            format!("Lease {} carries the policy's timings", input.pool),
        ),
        Err(problem) => want(t, false, problem.reason(), problem.message().to_owned()),
    }
}

fn leader_elected(input: &StatusInput<'_>) -> Want {
    let t = conditions::LEADER_ELECTED;
    let holder = input.lease.and_then(|l| l.holder.clone());
    match (input.leader, input.lease, holder) {
        (Some(pod), _, _) => want(
            t,
            true,
            reasons::LEADER_ELECTED,
            format!("pod {} holds the Lease", pod.name),
        ),
        _ if input.paused => want(
            t,
            false,
            reasons::PAUSED_WITHOUT_LEADER,
            super::pause::leaderless(input.pool),
        ),
        (None, Some(lease), Some(holder)) if lease.expired => want(
            t,
            false,
            reasons::LEASE_EXPIRED,
            format!(
                "the Lease names {holder:?} but was not renewed within its duration; a \
                 candidate takes it over"
            ),
        ),
        (None, Some(_), Some(holder)) => want(
            t,
            false,
            reasons::HOLDER_NOT_LIVE,
            format!(
                "the Lease names {holder:?}, which is not a live pool pod; it is being taken over"
            ),
        ),
        _ if input.candidates == 0 => want(
            t,
            false,
            reasons::NO_CANDIDATES,
            "nobody holds the Lease and no pool pod runs a started agent".to_owned(),
        ),
        _ => want(
            t,
            false,
            reasons::ELECTING,
            "nobody holds the Lease yet; the candidates are electing a leader".to_owned(),
        ),
    }
}

fn candidates_available(input: &StatusInput<'_>) -> Want {
    let t = conditions::CANDIDATES_AVAILABLE;
    let live = input
        .pods
        .iter()
        .filter(|p| !p.terminating && !p.finished)
        .count();
    if input.candidates > 0 {
        want(
            t,
            true,
            reasons::CANDIDATES_RUNNING,
            format!("{} pool pod(s) run a started agent", input.candidates),
        )
    } else if live == 0 {
        want(
            t,
            false,
            reasons::NO_POOL_PODS,
            format!(
                "no running pod carries zen-lead/pool={}; annotate a workload's pod template \
                 with it",
                input.pool
            ),
        )
    } else {
        want(
            t,
            false,
            reasons::AGENTS_NOT_STARTED,
            format!(
                "{live} pool pod(s) exist but none runs a started zen-lead agent; check the \
                 {AGENT_CONTAINER} container's logs"
            ),
        )
    }
}

fn scaled_down(input: &StatusInput<'_>) -> Want {
    let t = conditions::SCALED_DOWN;
    match &input.scaled {
        Some(ScaleOutcome::Scaled(message)) => want(t, true, reasons::SCALED_DOWN, message.clone()),
        Some(ScaleOutcome::Refused { reason, message }) => {
            want(t, false, reason.reason(), message.clone())
        }
        None => want(
            t,
            false,
            reasons::FOLLOWER_MODE_STANDBY,
            "followerMode is standby: followers keep running".to_owned(),
        ),
    }
}

fn agent_missing(input: &StatusInput<'_>) -> Want {
    let t = conditions::AGENT_MISSING;
    if input.agent_missing.is_empty() {
        return want(
            t,
            false,
            reasons::ALL_PODS_INJECTED,
            "every pool pod runs the zen-lead agent".to_owned(),
        );
    }
    want(
        t,
        true,
        reasons::PODS_WITHOUT_AGENT,
        format!(
            "pod(s) {} carry zen-lead/pool but run without the agent (admitted while the \
             webhook was unavailable); delete them, or run the controller with \
             --evict-uninjected",
            list(input.agent_missing)
        ),
    )
}

fn identity_conflict(input: &StatusInput<'_>) -> Want {
    let t = conditions::IDENTITY_CONFLICT;
    if input.identity_conflicts.is_empty() {
        return want(
            t,
            false,
            reasons::IDENTITIES_UNIQUE,
            "every live pool pod has its own candidate identity".to_owned(),
        );
    }
    let pairs: Vec<String> = input
        .identity_conflicts
        .iter()
        .map(|c| format!("{} and {} ({:?})", c.keeps, c.pod, c.identity))
        .collect();
    want(
        t,
        true,
        reasons::DUPLICATE_IDENTITY,
        format!(
            "pods share a candidate identity: {}; only one pod of each pair is a \
             candidate. Give each pod its own {IDENTITY_ANNOTATION}, or use \
             identityStrategy: pod",
            list(&pairs)
        ),
    )
}

fn server_side_fencing(input: &StatusInput<'_>) -> Want {
    let t = conditions::SERVER_SIDE_FENCING;
    match input.fencing {
        FencingState::Fenced => want(
            t,
            true,
            reasons::FENCED,
            "the API server refuses writes made with the token of a pool pod that does not \
             hold the Lease (zen-lead fencing policy)"
                .to_owned(),
        ),
        FencingState::Disabled { by_policy: true } => want(
            t,
            false,
            reasons::FENCING_DISABLED,
            "spec.serverSideFencing is false: only the agents' gates fence this pool's writes"
                .to_owned(),
        ),
        FencingState::Disabled { by_policy: false } => want(
            t,
            false,
            reasons::FENCING_DISABLED,
            "the controller runs with --server-side-fencing=false (chart value \
             fencing.serverSide) and spec.serverSideFencing is unset; set it to true to fence \
             this pool"
                .to_owned(),
        ),
        FencingState::NotInstalled => want(
            t,
            false,
            reasons::FENCING_NOT_INSTALLED,
            "the fencing ValidatingAdmissionPolicy or its binding is not installed (chart value \
             fencing.serverSide=true, or deploy/zen-lead.yaml); only the agents' gates fence \
             this pool's writes"
                .to_owned(),
        ),
        FencingState::NotCovered => want(
            t,
            false,
            reasons::NAMESPACE_NOT_COVERED,
            "the fencing binding's namespaceSelector could not be made to cover this namespace \
             (see the controller's log and zen_lead_controller_fencing_scope_errors_total); the \
             Lease stays marked and the controller retries; until then only the agents' gates \
             fence this pool's writes"
                .to_owned(),
        ),
        FencingState::StartActivation => want(
            t,
            false,
            reasons::START_ACTIVATION,
            "activation: start runs the app in the leader only; a deposed leader's pod is \
             deleted rather than fenced"
                .to_owned(),
        ),
    }
}

fn paused(input: &StatusInput<'_>) -> Want {
    let (status, reason, message) =
        super::pause::Pause::of(input.paused, input.leader.map(|p| p.name.as_str()))
            .condition(input.pool);
    want(conditions::PAUSED, status, reason, message)
}

/// The leader as the status names it; `since` is the Lease's acquire time,
/// or the previous status's while the same identity holds.
fn holder(input: &StatusInput<'_>) -> Option<Holder> {
    let pod = input.leader?;
    let identity = pod.identity.clone().unwrap_or_default();
    let since = input.lease.and_then(|l| l.acquired.clone()).or_else(|| {
        input
            .previous
            .and_then(|p| p.current_holder.as_ref())
            .filter(|h| h.identity == identity)
            .and_then(|h| h.since.clone())
    });
    Some(Holder {
        name: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()),
        identity,
        since,
    })
}

/// The LeaderPolicy status for `input`. Condition transition times and the
/// holder's `since` are kept from `previous` when nothing changed, so an
/// unchanged pool yields an identical status (and no write).
pub fn status(input: &StatusInput<'_>) -> LeaderPolicyStatus {
    let conds = [
        policy_ready(input),
        leader_elected(input),
        candidates_available(input),
        scaled_down(input),
        agent_missing(input),
        identity_conflict(input),
        server_side_fencing(input),
        paused(input),
    ]
    .into_iter()
    .chain(
        input
            .leader_service
            .clone()
            .map(|(ok, reason, message)| want(conditions::LEADER_SERVICE, ok, reason, message)),
    )
    .map(|w| settle(input, w))
    .collect();
    let holder = holder(input);
    let prev = input.previous;
    let prev_identity = prev
        .and_then(|p| p.current_holder.as_ref())
        .map(|h| h.identity.as_str());
    let identity = holder.as_ref().map(|h| h.identity.as_str());
    let last_transition_time = if prev.is_some() && prev_identity == identity {
        prev.and_then(|p| p.last_transition_time.clone())
    } else if prev.is_none() && identity.is_none() {
        None
    } else {
        Some(input.now.clone())
    };
    LeaderPolicyStatus {
        phase: Some(if input.leader.is_some() {
            Phase::Stable
        } else if input.paused {
            Phase::Paused
        } else {
            Phase::Electing
        }),
        current_holder: holder,
        candidates: Some(i32::try_from(input.candidates).unwrap_or(i32::MAX)),
        lease_transitions: input.lease.map(|l| l.transitions),
        last_transition_time,
        timings: input.timings,
        observed_generation: input.generation,
        conditions: conds,
        recent_transitions: super::history::merge(
            prev.map(|p| p.recent_transitions.as_slice())
                .unwrap_or_default(),
            input.transitions,
        ),
    }
}
