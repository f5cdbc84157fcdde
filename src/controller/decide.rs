//! The controller's decisions, free of I/O: what a pool pod is, who leads,
//! whether to hand off or expire the Lease, which labels and readiness-gate
//! conditions pods should carry, what the status says, and how scaleDown
//! sizes the pool's workloads. [`super::pool`] observes and writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::keys::{
    self, ACTIVATION_ANNOTATION, CANDIDATE_READINESS_GATE, IDENTITY_ANNOTATION, ROLE_ANNOTATION,
    ROLE_FOLLOWER, ROLE_LABEL, ROLE_LEADER, conditions,
};
use crate::api::{Activation, IdentityStrategy};
use crate::contract::{AGENT_CONTAINER, agent_env};

pub mod app_failure;
pub mod fencing;
pub mod fencing_scope;
pub mod history;
pub mod pause;
pub mod preference;
pub mod routing;
mod status;
pub use app_failure::AppHealth;
pub use status::{PolicyProblem, StatusInput, status};

/// What the controller needs to know about one pool pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// `status.phase` is Failed or Succeeded.
    pub finished: bool,
    /// The pod spec has the agent container (the webhook injected it).
    pub injected: bool,
    /// The agent container runs (a live candidate).
    pub agent_started: bool,
    /// The agent passed its startup probe (`started: true`), so the kubelet
    /// starts the app containers: in `start` activation, once the pod leads.
    pub app_released: bool,
    /// Identity the pod's agent uses in the Lease.
    pub identity: Option<String>,
    /// The identity strategy the webhook gave the pod's agent (`None`: no
    /// agent, or one injected before the strategy was passed explicitly).
    pub agent_strategy: Option<IdentityStrategy>,
    pub role_label: Option<String>,
    pub role_annotation: Option<String>,
    /// Current `zen-lead.io/candidate` condition: (status, reason).
    pub candidate: Option<(String, String)>,
    pub service_account: String,
    /// `Kind/name` of the controlling owner (ReplicaSet, StatefulSet, Job...).
    pub owner: Option<(String, String)>,
    /// `pod-template-hash` label (Deployment pods): the ReplicaSet's suffix.
    pub template_hash: Option<String>,
    /// The activation the webhook wired (`zen-lead.io/activation`); `None`
    /// on a pod it did not mark.
    pub activation: Option<Activation>,
    /// An app container (any container but the agent) is running.
    pub app_running: bool,
    /// The pod's `Ready` condition is True (it serves, and its workload
    /// counts it available).
    pub ready: bool,
    /// The pod template revision it runs: `pod-template-hash` (Deployment)
    /// or `controller-revision-hash` (StatefulSet, DaemonSet).
    pub revision: Option<String>,
    /// `metadata.creationTimestamp`, in seconds.
    pub created: Option<i64>,
    /// Whether the app containers (every container but the agent) are
    /// Ready, and when the latest of them started.
    pub app: AppHealth,
    /// `status.podIP`: the address a leader-only Service routes to.
    pub ip: Option<String>,
    /// The containers' declared ports, for a leader Service's named
    /// `targetPort`.
    pub ports: Vec<PodPort>,
    /// What ranks it as a leader (priority, zone, Ready since).
    pub preference: preference::Preference,
}

/// A container port a pod declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPort {
    pub name: Option<String>,
    pub port: i32,
}

impl PodPort {
    fn declared(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> Vec<PodPort> {
        spec.into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| PodPort {
                name: p.name.clone(),
                port: p.container_port,
            })
            .collect()
    }
}

/// The activation named by the webhook's `zen-lead.io/activation`
/// annotation (`auto` is resolved before it writes one).
pub(crate) fn wired_activation(value: &str) -> Option<Activation> {
    match value {
        "api" => Some(Activation::Api),
        "process" => Some(Activation::Process),
        "start" => Some(Activation::Start),
        _ => None,
    }
}

impl PodView {
    /// The agent fences the app (`api` activation): once it stops leading,
    /// the app's writes stop with it. In `start` activation the app runs on
    /// until the kubelet stops it, whatever the Lease says.
    pub fn fenced(&self) -> bool {
        self.activation == Some(Activation::Api)
    }

    /// The app stops (`process`: `zen-lead run` ends it) or its writes stop
    /// (`api`) before the agent's voluntary release completes, so a
    /// terminating holder can hand off at once instead of waiting for the
    /// kubelet's SIGTERM. Not `start`: its app runs until the kubelet stops it.
    pub fn stops_before_release(&self) -> bool {
        matches!(self.activation, Some(Activation::Api | Activation::Process))
    }

    /// The webhook wired `start` activation (`zen-lead.io/activation: start`).
    pub fn start_activation(&self) -> bool {
        self.activation == Some(Activation::Start)
    }

    /// Reads a pod. Its identity follows the strategy its agent was given at
    /// admission (what the agent really writes into the Lease); `strategy`,
    /// the policy's, applies only to pods without that information.
    pub fn from_pod(pod: &Pod, strategy: IdentityStrategy) -> Self {
        let meta = &pod.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let injected = spec.is_some_and(|s| {
            s.containers.iter().any(|c| c.name == AGENT_CONTAINER)
                || s.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == AGENT_CONTAINER)
        });
        let agent = status.and_then(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
                .find(|c| c.name == AGENT_CONTAINER)
        });
        // Running is enough: in `start` activation a follower's agent never
        // passes its startup probe (that is what holds its app back), so
        // `started` stays false while it is a live candidate.
        let agent_started =
            agent.is_some_and(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()));
        let app_released = agent.is_some_and(|c| c.started == Some(true));
        let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
        let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
        let agent_strategy = agent_identity_strategy(pod);
        let identity = pod_identity_of(pod, injected, agent_strategy, strategy);
        PodView {
            node: spec.and_then(|s| s.node_name.clone()),
            terminating: meta.deletion_timestamp.is_some(),
            finished: status
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Failed" || p == "Succeeded"),
            injected,
            agent_started,
            app_released,
            identity,
            agent_strategy,
            role_label: label(ROLE_LABEL),
            role_annotation: annotation(ROLE_ANNOTATION),
            candidate: status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == CANDIDATE_READINESS_GATE))
                .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default())),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| (o.kind.clone(), o.name.clone())),
            template_hash: label("pod-template-hash"),
            activation: annotation(ACTIVATION_ANNOTATION)
                .as_deref()
                .and_then(wired_activation),
            app_running: app_running(pod),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True"),
            revision: label("pod-template-hash").or_else(|| label("controller-revision-hash")),
            created: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            app: AppHealth::of(pod),
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            ports: PodPort::declared(spec),
            preference: preference::Preference::of(pod),
            name,
            uid,
        }
    }

    /// Whether this pod's agent is the holder the Lease names: the identity,
    /// and the instance (pod UID) when the Lease records one, so that of two
    /// pods sharing an identity only the one that really holds it counts.
    pub fn holds(&self, lease: &LeaseView) -> bool {
        lease.holder.is_some()
            && self.identity == lease.holder
            && lease
                .holder_instance
                .as_deref()
                .is_none_or(|i| i == self.uid)
    }

    /// Alive as far as the pool is concerned: not terminating, not finished,
    /// and not on a node that is NotReady.
    pub fn alive(&self, node_ready: &dyn Fn(&str) -> bool) -> bool {
        !self.terminating && !self.finished && self.node.as_deref().is_none_or(node_ready)
    }

    /// A candidate: alive with a started agent.
    pub fn candidate(&self, node_ready: &dyn Fn(&str) -> bool) -> bool {
        self.alive(node_ready) && self.agent_started
    }
}

/// The identity the pod's agent writes into the Lease: its own strategy
/// when the webhook passed one, else what an agent injected before that ran
/// with (`auto`: custom whenever the annotation is set), else the policy's.
fn pod_identity_of(
    pod: &Pod,
    injected: bool,
    agent_strategy: Option<IdentityStrategy>,
    policy_strategy: IdentityStrategy,
) -> Option<String> {
    let meta = &pod.metadata;
    let custom = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(IDENTITY_ANNOTATION))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let strategy = match agent_strategy {
        Some(s) => s,
        None if injected && custom.is_some() => IdentityStrategy::Custom,
        None if injected => IdentityStrategy::Pod,
        None => policy_strategy,
    };
    match strategy {
        IdentityStrategy::Pod => {
            let name = meta.name.as_deref().unwrap_or_default();
            let uid = meta.uid.as_deref().unwrap_or_default();
            (!name.is_empty() && !uid.is_empty()).then(|| keys::pod_identity(name, uid))
        }
        IdentityStrategy::Custom => custom,
    }
}

/// Whether an app container (not the agent) runs.
fn app_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.name != AGENT_CONTAINER && c.state.as_ref().is_some_and(|st| st.running.is_some())
            })
        })
}

/// The `ZEN_LEAD_IDENTITY_STRATEGY` the webhook put on the agent container.
fn agent_identity_strategy(pod: &Pod) -> Option<IdentityStrategy> {
    let spec = pod.spec.as_ref()?;
    let agent = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == AGENT_CONTAINER)?;
    let value = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == agent_env::IDENTITY_STRATEGY)?
        .value
        .as_deref()?;
    match value {
        "pod" => Some(IdentityStrategy::Pod),
        "custom" => Some(IdentityStrategy::Custom),
        _ => None,
    }
}

/// Two live pool pods that use the same identity: `pod` is not a working
/// candidate while `keeps` has the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConflict {
    pub pod: String,
    pub keeps: String,
    pub identity: String,
}

/// Live pods whose identity another live pod of the pool already uses. The
/// election never lets two of them lead at once (the Lease records the pod
/// UID), but only one of them can be told apart in the Lease, so the others
/// are reported. Of each group the pod keeps the identity that holds the
/// Lease, else the one already accepted as a candidate, else the first by name.
pub fn identity_conflicts(
    pods: &[PodView],
    lease: Option<&LeaseView>,
    node_ready: &dyn Fn(&str) -> bool,
) -> Vec<IdentityConflict> {
    let mut groups: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.alive(node_ready) && p.injected) {
        if let Some(identity) = pod.identity.as_deref() {
            groups.entry(identity).or_default().push(pod);
        }
    }
    let mut out = Vec::new();
    for (identity, mut group) in groups.into_iter().filter(|(_, g)| g.len() > 1) {
        group.sort_by_key(|p| {
            (
                !lease.is_some_and(|l| p.holds(l)),
                p.candidate
                    .as_ref()
                    .is_none_or(|(status, _)| status != "True"),
                p.name.clone(),
            )
        });
        let keeps = group[0].name.clone();
        out.extend(group[1..].iter().map(|p| IdentityConflict {
            pod: p.name.clone(),
            keeps: keeps.clone(),
            identity: identity.to_owned(),
        }));
    }
    out
}

/// The pool's Lease as the controller sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// `zen-lead.io/holder-instance`: the holder's pod UID (agents).
    pub holder_instance: Option<String>,
    pub transitions: i32,
    pub acquired: Option<Time>,
    pub preferred: Option<String>,
    /// No renewal was observed for a whole lease duration.
    pub expired: bool,
    /// No change of the record was observed for the holder's renew deadline:
    /// by its own rules the holder no longer leads, even if it still runs.
    pub past_renew_deadline: bool,
}

/// Why the holder is no longer fit to lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderGone {
    /// No pool pod has the identity (deleted, or re-created with a new UID).
    PodGone,
    Failed,
    NodeNotReady,
}

impl HolderGone {
    pub fn reason(self) -> &'static str {
        match self {
            HolderGone::PodGone => "HolderPodGone",
            HolderGone::Failed => "HolderPodFinished",
            HolderGone::NodeNotReady => "HolderNodeNotReady",
        }
    }
}

/// What to do about the Lease's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failover {
    Nothing,
    /// The holder is shutting down but its agent may still renew: name a
    /// successor (`zen-lead.io/preferred-holder`) so the holder releases.
    HandOff {
        to: String,
    },
    /// The holder cannot renew any more: clear `holderIdentity` by
    /// compare-and-swap so a follower acquires at once.
    Expire {
        why: HolderGone,
    },
}

/// Decides on the holder. `holder_pod` is the pool pod whose identity is the
/// Lease's holder (if any pod has it). Holders that no pool pod explains are
/// expired only when `confirmed_gone` (the caller re-read the API server:
/// a cache may lag behind a Lease acquired by a brand-new pod).
pub fn failover(
    lease: &LeaseView,
    holder_pod: Option<&PodView>,
    pods: &[PodView],
    node_ready: &dyn Fn(&str) -> bool,
    confirmed_gone: bool,
) -> Failover {
    let Some(holder) = lease.holder.as_deref() else {
        return Failover::Nothing;
    };
    match holder_pod {
        None if confirmed_gone => Failover::Expire {
            why: HolderGone::PodGone,
        },
        None => Failover::Nothing,
        Some(pod) if pod.finished => Failover::Expire {
            why: HolderGone::Failed,
        },
        // A NotReady node may still run the agent (the kubelet lost the API
        // server, the agent did not): clearing the Lease then could make two
        // leaders. So ask for a hand-off, and clear only once the holder's
        // renew deadline passed without a renewal, when it has stepped down
        // by its own rules.
        Some(pod) if pod.node.as_deref().is_some_and(|n| !node_ready(n)) => {
            if lease.past_renew_deadline {
                Failover::Expire {
                    why: HolderGone::NodeNotReady,
                }
            } else {
                match successor(pods, holder, node_ready) {
                    Some(to) if lease.preferred.as_deref() != Some(to.as_str()) => {
                        Failover::HandOff { to }
                    }
                    _ => Failover::Nothing,
                }
            }
        }
        // A terminating `start` holder keeps running its app until the
        // kubelet stops it; its agent, a native sidecar, releases only after
        // that. Asking it to hand off earlier would let the successor's app
        // start beside the old one. `api` and `process` holders hand off at
        // once: their release waits until the app's writes or the app itself
        // stopped, and the kubelet's SIGTERM can come a second late.
        Some(pod) if pod.terminating && !pod.stops_before_release() => Failover::Nothing,
        Some(pod) if pod.terminating => match successor(pods, holder, node_ready) {
            Some(to) if lease.preferred.as_deref() != Some(to.as_str()) => Failover::HandOff { to },
            _ => Failover::Nothing,
        },
        Some(_) => Failover::Nothing,
    }
}

/// The candidate to hand off to. First choice: a Ready candidate running the
/// holder's workload's newest revision (the revision of its most recently
/// created live pod), so a rolling update moves leadership once, onto the new
/// template, instead of to an old pod that the rollout deletes next. Else any
/// live candidate. The best-ranked among them ([`preference::best`]: priority,
/// zone, then the lowest identity, so that repeated reconciles name the same one).
fn successor(pods: &[PodView], holder: &str, node_ready: &dyn Fn(&str) -> bool) -> Option<String> {
    let candidates: Vec<&PodView> = pods
        .iter()
        .filter(|p| p.candidate(node_ready) && p.identity.as_deref() != Some(holder))
        .collect();
    let workload = pods
        .iter()
        .find(|p| p.identity.as_deref() == Some(holder))
        .and_then(pod_workload);
    let newest = workload.as_ref().and_then(|w| {
        pods.iter()
            .filter(|p| p.alive(node_ready) && pod_workload(p).as_ref() == Some(w))
            .max_by_key(|p| p.created)
            .and_then(|p| p.revision.clone())
    });
    let on_newest = newest.as_ref().and_then(|rev| {
        let ready = candidates
            .iter()
            .filter(|p| p.ready && p.revision.as_ref() == Some(rev) && pod_workload(p) == workload);
        preference::best(ready.copied())
    });
    on_newest.or_else(|| preference::best(candidates.iter().copied()))
}

/// Whether the holder identity names a pod that the cache cannot explain,
/// so the caller should confirm with the API server before expiring.
pub fn needs_confirmation(lease: &LeaseView, holder_pod: Option<&PodView>) -> bool {
    lease.holder.is_some() && holder_pod.is_none()
}

/// The pool pod that holds the Lease.
pub fn holder_pod<'a>(lease: &LeaseView, pods: &'a [PodView]) -> Option<&'a PodView> {
    pods.iter().find(|p| p.holds(lease))
}

/// The pod that leads: holds an unexpired Lease and is a live candidate.
pub fn leader<'a>(
    lease: &LeaseView,
    pods: &'a [PodView],
    node_ready: &dyn Fn(&str) -> bool,
) -> Option<&'a PodView> {
    if lease.expired {
        return None;
    }
    holder_pod(lease, pods).filter(|p| p.alive(node_ready))
}

/// Pods whose app runs although they do not hold the Lease: deposed leaders
/// of `start` activation. The kubelet cannot take back an app it started, so
/// a leader that lost its term while its app ran (its pod frozen or cut off
/// from the API server past the lease, its agent down longer than the lease)
/// keeps running beside its successor's app. The election did its part (the
/// successor's term began only after the old one ended); such a pod must go.
/// The caller confirms with a fresh read of the Lease before deleting.
pub fn deposed_start_leaders<'a>(pods: &'a [PodView], lease: &LeaseView) -> Vec<&'a PodView> {
    pods.iter()
        .filter(|p| {
            p.start_activation()
                && p.injected
                && p.app_running
                && !p.terminating
                && !p.finished
                && !p.holds(lease)
        })
        .collect()
}

/// What a pod's role label and annotation become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoleWrite {
    Leader,
    Follower,
    /// Both removed: the pod left the pool, or the policy is gone.
    Remove,
}

impl RoleWrite {
    /// The value written; `None` deletes the key.
    pub fn value(self) -> Option<&'static str> {
        match self {
            RoleWrite::Leader => Some(ROLE_LEADER),
            RoleWrite::Follower => Some(ROLE_FOLLOWER),
            RoleWrite::Remove => None,
        }
    }
}

/// A change of a pod's role label and annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    pub pod: String,
    pub role: RoleWrite,
}

/// Role changes in the order they must be written: every demotion of a pod
/// labelled leader comes before the promotion of the new leader, so two pods
/// never carry `zen-lead.io/role: leader` at once. `also_leader` names pods
/// this controller labelled leader that the cache may not show yet.
pub fn role_changes(
    pods: &[PodView],
    leader: Option<&str>,
    also_leader: &BTreeSet<String>,
) -> Vec<RoleChange> {
    let mut demote = Vec::new();
    let mut promote = Vec::new();
    let mut follow = Vec::new();
    for pod in pods {
        let role = if Some(pod.name.as_str()) == leader {
            RoleWrite::Leader
        } else {
            RoleWrite::Follower
        };
        let want = role.value().unwrap_or(ROLE_FOLLOWER);
        let labelled_leader =
            pod.role_label.as_deref() == Some(ROLE_LEADER) || also_leader.contains(&pod.name);
        let current_ok = pod.role_label.as_deref() == Some(want)
            && pod.role_annotation.as_deref() == Some(want)
            && (want == ROLE_LEADER || !also_leader.contains(&pod.name));
        if current_ok {
            continue;
        }
        let change = RoleChange {
            pod: pod.name.clone(),
            role,
        };
        if role == RoleWrite::Leader {
            // A `start` pod is labelled leader once the kubelet has let its
            // app start (the pod's status says so), not the moment its agent
            // takes the Lease: the label patch would otherwise reach the
            // kubelet first, and its sync would make the sync that starts the
            // app wait for the next 1 s PLEG relist. Its app does not run
            // before then anyway, so a Service has nothing to send it.
            if !pod.fenced() && !pod.app_released && !labelled_leader {
                continue;
            }
            promote.push(change);
        } else if labelled_leader {
            demote.push(change);
        } else {
            follow.push(change);
        }
    }
    demote.extend(promote);
    demote.extend(follow);
    demote
}

/// Removal of role labels from every pod that has one (pool without policy).
pub fn role_removals(pods: &[PodView]) -> Vec<RoleChange> {
    pods.iter()
        .filter(|p| p.role_label.is_some() || p.role_annotation.is_some())
        .map(|p| RoleChange {
            pod: p.name.clone(),
            role: RoleWrite::Remove,
        })
        .collect()
}

/// What to do about a pool whose pods name a LeaderPolicy that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingPolicy {
    /// Create it with the defaults (`--create-missing-policies`).
    Create,
    /// Tell the pods' workloads which policy to create.
    Report,
    /// No live pod needs a policy (all finished or terminating).
    Nothing,
}

/// Only live pods ask for a policy: a finished Job pod or a terminating pod
/// must not bring back a policy the user just deleted along with its workload.
pub fn missing_policy(pods: &[PodView], create: bool) -> MissingPolicy {
    if !pods.iter().any(|p| !p.terminating && !p.finished) {
        MissingPolicy::Nothing
    } else if create {
        MissingPolicy::Create
    } else {
        MissingPolicy::Report
    }
}

/// The `zen-lead.io/candidate` condition a pod should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateCondition {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Candidate condition for a pool pod; `policy_exists` is false when no
/// LeaderPolicy (or one being deleted) names the pool.
pub fn candidate_condition(policy_exists: bool, pool: &str, pod: &PodView) -> CandidateCondition {
    if !policy_exists {
        return CandidateCondition {
            status: false,
            reason: "PolicyMissing",
            message: format!(
                "no LeaderPolicy {pool:?} exists in this namespace; create it, or remove the \
                 zen-lead/pool annotation"
            ),
        };
    }
    if !pod.injected {
        return CandidateCondition {
            status: false,
            reason: "AgentMissing",
            message: format!(
                "the pod has no {AGENT_CONTAINER} container (admitted while the zen-lead webhook \
                 was unavailable); delete it so it is re-created through the webhook"
            ),
        };
    }
    if !pod.agent_started {
        return CandidateCondition {
            status: false,
            reason: "AgentNotStarted",
            message: format!("the {AGENT_CONTAINER} container has not started yet"),
        };
    }
    CandidateCondition {
        status: true,
        reason: "AgentStarted",
        message: format!("candidate in pool {pool:?}"),
    }
}

/// Candidate condition for a pod of a pool whose policy exists: the checks
/// of [`candidate_condition`], then the identity rules. A pod whose agent got
/// another identity strategy than the policy now has (the policy was created
/// or changed after the pod) or whose identity another live pod uses is not
/// a working candidate, and the message says which pods and what to do.
pub fn pool_candidate_condition(
    pool: &str,
    pod: &PodView,
    policy_strategy: IdentityStrategy,
    conflict: Option<&IdentityConflict>,
) -> CandidateCondition {
    let base = candidate_condition(true, pool, pod);
    if !base.status {
        return base;
    }
    if let Some(agent) = pod.agent_strategy
        && agent != policy_strategy
    {
        return CandidateCondition {
            status: false,
            reason: IDENTITY_STRATEGY_MISMATCH,
            message: format!(
                "the pod's agent was started with identityStrategy {:?}, but LeaderPolicy {pool:?} \
                 now has spec.identityStrategy {:?}; delete the pod (or restart its workload) so \
                 it is re-created with the policy's strategy",
                agent.as_str(),
                policy_strategy.as_str()
            ),
        };
    }
    if let Some(c) = conflict {
        return CandidateCondition {
            status: false,
            reason: DUPLICATE_IDENTITY,
            message: format!(
                "pod {} already uses identity {:?} in pool {pool:?}; give pod {} its own \
                 {IDENTITY_ANNOTATION} annotation, or use identityStrategy: pod",
                c.keeps, c.identity, c.pod
            ),
        };
    }
    base
}

/// Candidate-condition reason: another live pod of the pool has the identity.
pub const DUPLICATE_IDENTITY: &str = "DuplicateIdentity";
/// Candidate-condition reason: the agent's identity strategy is not the policy's.
pub const IDENTITY_STRATEGY_MISMATCH: &str = "IdentityStrategyMismatch";

/// Whether the pod's current condition already says what `want` says. A
/// True condition is accepted whatever its reason (the kubelet of a test
/// node may have set it), a False one must have our reason.
pub fn candidate_condition_current(pod: &PodView, want: &CandidateCondition) -> bool {
    match &pod.candidate {
        Some((status, reason)) => {
            if want.status {
                status == "True"
            } else {
                status == "False" && reason == want.reason
            }
        }
        None => false,
    }
}

/// The workload kinds scaleDown sizes (the ones with a scale subresource
/// whose pods zen-lead can attribute to them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload that belongs to the pool (or did, and was scaled by it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadView {
    pub kind: WorkloadKind,
    pub name: String,
    /// `spec.replicas` (defaults to 1 like the API server does).
    pub replicas: i32,
    /// The workload (or its pod template) names this pool and joins it.
    pub in_pool: bool,
    /// [`keys::ORIGINAL_REPLICAS_ANNOTATION`] when [`keys::SCALED_BY_ANNOTATION`]
    /// names this pool.
    pub original: Option<i32>,
    /// An HPA targets it.
    pub hpa: Option<String>,
}

/// One step of scaleDown bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleAction {
    /// Write the original count before the first scale (never overwritten
    /// afterwards, so a restart cannot record an already reduced count).
    Remember {
        kind: WorkloadKind,
        name: String,
        original: i32,
    },
    Scale {
        kind: WorkloadKind,
        name: String,
        replicas: i32,
    },
    /// Drop the bookkeeping annotations once the count is restored.
    Forget { kind: WorkloadKind, name: String },
}

/// Why scaleDown refuses to size a pool (the `ScaledDown` condition's
/// reason, and the Warning event's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleRefusal {
    HorizontalPodAutoscalerConflict,
    NoWorkloads,
}

impl ScaleRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            ScaleRefusal::HorizontalPodAutoscalerConflict => conditions::reasons::HPA_CONFLICT,
            ScaleRefusal::NoWorkloads => conditions::reasons::NO_WORKLOADS,
        }
    }
}

/// What scaleDown achieved, for the status and events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScaleOutcome {
    /// The pool runs one replica in total; the message lists the counts.
    Scaled(String),
    Refused {
        reason: ScaleRefusal,
        message: String,
    },
}

/// The scaleDown plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePlan {
    pub actions: Vec<ScaleAction>,
    /// `None`: not in scaleDown (restores only).
    pub outcome: Option<ScaleOutcome>,
}

/// Plans scaleDown (`scale_down` = the policy exists, is not being deleted,
/// and says `followerMode: scaleDown`) or the restore of every workload the
/// pool scaled. `keep` is the workload that runs the current leader, which
/// keeps its one replica.
pub fn scale_plan(
    workloads: &[WorkloadView],
    scale_down: bool,
    keep: Option<(WorkloadKind, &str)>,
) -> ScalePlan {
    let mut actions = restores(workloads, scale_down);
    if !scale_down {
        return ScalePlan {
            actions,
            outcome: None,
        };
    }
    let members: Vec<&WorkloadView> = workloads.iter().filter(|w| w.in_pool).collect();
    if let Some(refused) = refusal(&members) {
        return ScalePlan {
            actions,
            outcome: Some(refused),
        };
    }
    // Who keeps the single replica: the leader's workload, else the first
    // by kind and name that has (or had) replicas.
    let keeper = keep
        .and_then(|(kind, name)| members.iter().find(|w| w.kind == kind && w.name == name))
        .or_else(|| {
            members
                .iter()
                .filter(|w| w.original.unwrap_or(w.replicas) > 0)
                .min_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)))
        })
        .map(|w| (w.kind, w.name.clone()));
    let mut summary = Vec::new();
    for w in &members {
        let target = i32::from(
            keeper
                .as_ref()
                .is_some_and(|(k, n)| *k == w.kind && *n == w.name),
        );
        summary.push(format!("{} {}: {target}", w.kind, w.name));
        if w.original.is_none() {
            if w.replicas == target {
                continue;
            }
            actions.push(ScaleAction::Remember {
                kind: w.kind,
                name: w.name.clone(),
                original: w.replicas,
            });
        }
        if w.replicas != target {
            actions.push(ScaleAction::Scale {
                kind: w.kind,
                name: w.name.clone(),
                replicas: target,
            });
        }
    }
    ScalePlan {
        actions,
        outcome: Some(ScaleOutcome::Scaled(format!(
            "the pool runs one replica in total ({})",
            summary.join(", ")
        ))),
    }
}

/// Restores of everything that should no longer be scaled: the original
/// count, then the bookkeeping dropped.
fn restores(workloads: &[WorkloadView], scale_down: bool) -> Vec<ScaleAction> {
    let mut actions = Vec::new();
    for w in workloads {
        if let Some(original) = w.original
            && (!scale_down || !w.in_pool)
        {
            if w.replicas != original {
                actions.push(ScaleAction::Scale {
                    kind: w.kind,
                    name: w.name.clone(),
                    replicas: original,
                });
            }
            actions.push(ScaleAction::Forget {
                kind: w.kind,
                name: w.name.clone(),
            });
        }
    }
    actions
}

/// Why the members cannot be scaled, if they cannot: an HPA sizes one, or
/// there is no Deployment or StatefulSet at all.
fn refusal(members: &[&WorkloadView]) -> Option<ScaleOutcome> {
    if let Some(w) = members.iter().find(|w| w.hpa.is_some()) {
        return Some(ScaleOutcome::Refused {
            reason: ScaleRefusal::HorizontalPodAutoscalerConflict,
            message: format!(
                "{} {} is scaled by HorizontalPodAutoscaler {}; zen-lead does not fight it. \
                 Remove the HPA or use followerMode: standby",
                w.kind,
                w.name,
                w.hpa.clone().unwrap_or_default()
            ),
        });
    }
    members.is_empty().then(|| ScaleOutcome::Refused {
        reason: ScaleRefusal::NoWorkloads,
        message: "no Deployment or StatefulSet of this namespace names the pool; bare pods and \
                  Jobs are not scaled"
            .to_owned(),
    })
}

/// The workload that owns a pod: a StatefulSet directly, a Deployment
/// through its ReplicaSet (`<deployment>-<pod-template-hash>`).
pub fn pod_workload(pod: &PodView) -> Option<(WorkloadKind, String)> {
    let (kind, name) = pod.owner.as_ref()?;
    match kind.as_str() {
        "StatefulSet" => Some((WorkloadKind::StatefulSet, name.clone())),
        "ReplicaSet" => {
            let hash = pod.template_hash.as_deref()?;
            let deployment = name.strip_suffix(&format!("-{hash}"))?;
            Some((WorkloadKind::Deployment, deployment.to_owned()))
        }
        _ => None,
    }
}

/// Sorted, de-duplicated ServiceAccounts of the pool's pods: the subjects of
/// the RoleBinding that lets their agents use the Lease.
pub fn service_accounts(pods: &[PodView]) -> Vec<String> {
    pods.iter()
        .filter(|p| !p.finished)
        .map(|p| p.service_account.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Whether a workload's metadata or pod template joins `pool`.
pub fn joins_pool(
    meta_annotations: Option<&BTreeMap<String, String>>,
    template_annotations: Option<&BTreeMap<String, String>>,
    template_labels: Option<&BTreeMap<String, String>>,
    pool: &str,
) -> bool {
    let get = |m: Option<&BTreeMap<String, String>>, k: &str| m.and_then(|m| m.get(k)).cloned();
    let named = get(template_annotations, keys::POOL_ANNOTATION)
        .or_else(|| get(template_labels, keys::POOL_LABEL))
        .or_else(|| get(meta_annotations, keys::POOL_ANNOTATION));
    let join = get(template_annotations, keys::JOIN_ANNOTATION)
        .or_else(|| get(meta_annotations, keys::JOIN_ANNOTATION));
    named.as_deref().map(str::trim) == Some(pool) && join.as_deref() != Some("false")
}

#[cfg(test)]
mod tests;

/// Test fixtures shared with the other pure cores that read [`PodView`]s.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A live, injected pool pod whose agent runs: a working candidate.
    pub(crate) fn pod(name: &str) -> PodView {
        PodView {
            name: name.to_owned(),
            uid: format!("{name}-uid"),
            node: Some("n1".to_owned()),
            terminating: false,
            finished: false,
            injected: true,
            agent_started: true,
            app_released: true,
            identity: Some(format!("{name}_id")),
            agent_strategy: Some(IdentityStrategy::Pod),
            role_label: None,
            role_annotation: None,
            candidate: None,
            service_account: "default".to_owned(),
            owner: None,
            template_hash: None,
            activation: Some(Activation::Api),
            app_running: true,
            ready: true,
            revision: None,
            created: None,
            app: AppHealth {
                ready: true,
                started: Some(0),
                problem: None,
            },
            ip: Some("198.18.0.10".to_owned()),
            ports: vec![],
            preference: Default::default(),
        }
    }
}
