//! What a pool pass tells people: Events on the policy, the pods and their
//! workloads, log lines, and the leader-change metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::keys::conditions::LEADER_ELECTED;
use crate::api::{LeaderPolicy, LeaderPolicyStatus};
use crate::contract::{AGENT_CONTAINER, SKIPPED_RUN_MARKER};
use crate::controller::context::{Context, PoolMemory, Reported};
use crate::controller::decide;
use crate::controller::queue::PoolKey;

/// `Kind/name` of a reference, for logs, notes and de-duplication.
pub fn reference_name(r: &ObjectReference) -> String {
    format!(
        "{}/{}",
        r.kind.as_deref().unwrap_or("Pod"),
        r.name.as_deref().unwrap_or_default()
    )
}

pub fn pod_ref(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        uid,
        ..ObjectReference::default()
    }
}

/// The pod name in a `pod`-strategy identity (`<name>_<uid prefix>`).
pub fn holder_pod_name(identity: &str) -> Option<&str> {
    identity.rsplit_once('_').map(|(name, _)| name)
}

/// Publishes an event on any object (a workload, a pod).
pub async fn on(
    ctx: &Context,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, regarding).await {
        ctx.metrics.error("event");
        warn!(object = %reference_name(regarding), error = %err, "could not publish an event");
    }
}

/// Publishes a Warning event on a pool pod, where `kubectl describe pod`
/// shows it.
pub async fn on_pod(
    ctx: &Context,
    pod: &ObjectReference,
    reason: &str,
    action: &str,
    note: String,
) {
    on(ctx, pod, EventType::Warning, reason, action, note).await;
}

/// Publishes an event on the policy. `related` (a pod) is part of the
/// recorder's de-duplication key, so "leader changed to X" for a new X is
/// a new event rather than a repeat of the previous one.
pub async fn on_policy(
    ctx: &Context,
    policy: &LeaderPolicy,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: related,
    };
    if let Err(err) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        ctx.metrics.error("event");
        warn!(policy = %policy.name_any(), error = %err, "could not publish an event");
    }
}

/// An Event when the pool is paused, loses its leader while paused, or is
/// resumed (once per change of the stored `Paused` condition).
pub async fn pause(ctx: &Context, key: &PoolKey, policy: &LeaderPolicy, leader: Option<&str>) {
    let state = decide::pause::Pause::of(policy.spec.paused, leader);
    let Some(event) = decide::pause::event(policy.status.as_ref(), &state, &key.name) else {
        return;
    };
    info!(pool = %key, reason = event.reason, "{}", event.message);
    let type_ = if event.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    let related = leader.map(|n| pod_ref(&key.namespace, n, None));
    on_policy(
        ctx,
        policy,
        type_,
        event.reason,
        "Pause",
        event.message,
        related,
    )
    .await;
}

/// A change of the reported leader: who was reported before (`None`: no
/// leader) and, when a leader follows a leaderless time, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderChange {
    pub old: Option<String>,
    pub new: Option<String>,
    pub leaderless_since: Option<SystemTime>,
}

/// The holder a status names (pod name, else identity).
fn holder_name(status: Option<&LeaderPolicyStatus>) -> Option<String> {
    status
        .and_then(|s| s.current_holder.as_ref())
        .map(|h| h.name.clone().unwrap_or_else(|| h.identity.clone()))
}

/// Records `next`'s leader in the pool's memory and says whether it changed.
/// On first sight since this controller's term began, the previous status
/// stands for what was reported, and a leaderless time started when its
/// LeaderElected condition turned False.
pub fn leader_change(
    memory: &mut PoolMemory,
    previous: Option<&LeaderPolicyStatus>,
    next: &LeaderPolicyStatus,
    now: SystemTime,
) -> Option<LeaderChange> {
    let new = holder_name(Some(next));
    let old = match std::mem::take(&mut memory.reported) {
        Reported::Unknown => holder_name(previous),
        Reported::Leaderless => None,
        Reported::Leader(name) => Some(name),
    };
    if memory.leaderless_since.is_none() && new.is_none() {
        memory.leaderless_since = previous
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == LEADER_ELECTED))
            .filter(|c| c.status == "False")
            .map(|c| SystemTime::from(c.last_transition_time.0))
            .or(Some(now));
    }
    let leaderless_since = if new.is_some() {
        memory.leaderless_since.take()
    } else {
        None
    };
    memory.reported = match &new {
        Some(name) => Reported::Leader(name.clone()),
        None => Reported::Leaderless,
    };
    (old != new).then_some(LeaderChange {
        old,
        new,
        leaderless_since,
    })
}

/// Event, log line and metrics for a change of leader.
pub async fn leader(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    next: &LeaderPolicyStatus,
) {
    let now = SystemTime::now();
    let Some(change) =
        ctx.with_memory(key, |m| leader_change(m, policy.status.as_ref(), next, now))
    else {
        return;
    };
    let gap = change
        .leaderless_since
        .and_then(|since| now.duration_since(since).ok());
    ctx.metrics.leader_changes.inc();
    if let (Some(gap), Some(_)) = (gap, &change.new) {
        ctx.metrics.failover_seconds.observe(gap.as_secs_f64());
    }
    let gap_text = match (&change.new, gap) {
        (None, _) => "the pool has no leader now".to_owned(),
        (Some(_), Some(g)) => format!("the pool was leaderless for {:.3}s", g.as_secs_f64()),
        (Some(_), None) => "no leaderless gap was observed".to_owned(),
    };
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "<none>".to_owned());
    info!(
        pool = %key,
        old_leader = %show(&change.old),
        new_leader = %show(&change.new),
        leaderless_seconds = gap.map(|g| g.as_secs_f64()),
        transitions = next.lease_transitions,
        "leader changed"
    );
    on_policy(
        ctx,
        policy,
        EventType::Normal,
        if change.new.is_some() {
            "LeaderElected"
        } else {
            "LeaderLost"
        },
        "Elect",
        format!(
            "leader changed from {} to {}; {gap_text}",
            show(&change.old),
            show(&change.new)
        ),
        change
            .new
            .as_ref()
            .or(change.old.as_ref())
            .map(|n| pod_ref(&key.namespace, n, None)),
    )
    .await;
}

/// The pool's series: whether it has a leader, and since when.
pub fn pool_metrics(ctx: &Context, key: &PoolKey, next: &LeaderPolicyStatus) {
    let since = next
        .current_holder
        .as_ref()
        .map(|h| h.since.as_ref().map_or(0, |t| t.0.as_second()));
    ctx.metrics.pools.observe(&key.namespace, &key.name, since);
}

/// `scheduledRuns: once`: tells each Job whose pod skipped its command
/// (`zen-lead run` ends such a container with [`SKIPPED_RUN_MARKER`] in its
/// termination message) which Job already ran that scheduled time.
pub async fn skipped_runs(ctx: &Context, key: &PoolKey, pods: &[Arc<Pod>]) {
    let live: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
    for pod in pods {
        let Some(message) = skipped_run(pod) else {
            continue;
        };
        let uid = pod.uid().unwrap_or_default();
        if !ctx.with_memory(key, |m| m.skipped_reported.insert(uid)) {
            continue;
        }
        let job = owning_workload(ctx, pod).await;
        info!(pool = %key, pod = %pod.name_any(), "{message}");
        on(
            ctx,
            &job,
            EventType::Normal,
            "ScheduledRunSkipped",
            "SkipDuplicate",
            format!("pod {}: {message}", pod.name_any()),
        )
        .await;
    }
    ctx.with_memory(key, |m| m.skipped_reported.retain(|u| live.contains(u)));
}

/// The message of an app container that `zen-lead run` ended without running
/// its command, because the scheduled time already ran in the pool.
pub fn skipped_run(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter(|c| c.name != AGENT_CONTAINER)
        .find_map(|c| {
            let message = c.state.as_ref()?.terminated.as_ref()?.message.as_deref()?;
            message
                .trim()
                .starts_with(SKIPPED_RUN_MARKER)
                .then(|| message.trim().to_owned())
        })
}

/// The object a user manages for this pod, where `kubectl describe` should
/// show them news: the pod's controller, one level further for a
/// ReplicaSet (its Deployment) or a Job (its CronJob), else the pod itself.
pub async fn owning_workload(ctx: &Context, pod: &Pod) -> ObjectReference {
    let namespace = pod.namespace();
    let Some(owner) = controller_of(pod.owner_references()) else {
        return pod.object_ref(&());
    };
    let ns = namespace.clone().unwrap_or_default();
    let parent = match (owner.api_version.as_str(), owner.kind.as_str()) {
        ("apps/v1", "ReplicaSet") => Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns)
            .get_metadata_opt(&owner.name)
            .await
            .ok()
            .flatten()
            .and_then(|rs| controller_of(rs.owner_references()).cloned()),
        ("batch/v1", "Job") => Api::<Job>::namespaced(ctx.client.clone(), &ns)
            .get_metadata_opt(&owner.name)
            .await
            .ok()
            .flatten()
            .and_then(|job| controller_of(job.owner_references()).cloned()),
        _ => None,
    };
    let o = parent.as_ref().unwrap_or(owner);
    ObjectReference {
        api_version: Some(o.api_version.clone()),
        kind: Some(o.kind.clone()),
        name: Some(o.name.clone()),
        namespace,
        uid: Some(o.uid.clone()),
        ..ObjectReference::default()
    }
}

pub fn controller_of(owners: &[OwnerReference]) -> Option<&OwnerReference> {
    owners.iter().find(|o| o.controller == Some(true))
}
