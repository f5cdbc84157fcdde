//! One pool's pass: observe (the caches), plan (pure), apply (the writes).
//!
//! Some inputs of the plan need the API server first (the Lease must exist
//! before anyone can be promoted; a holder missing from the cache is
//! confirmed gone by a read), so a pass runs in phases:
//! 1. the finalizer (before any scale a deletion could not undo), the Lease
//!    and the candidates' RBAC, fast failover, deposed `start` leaders;
//! 2. roles and readiness conditions: [`plan::pod_writes`] orders them
//!    (demote before promote), [`apply::pod_writes`] performs them;
//! 3. the safety net, scaleDown, the status and its events, and when to
//!    look again.
//!
//! - [`observe`]: pods and workloads from the caches.
//! - [`plan`]: the pure decisions of a pass and their ordering rules.
//! - [`apply`]: pod, status and finalizer writes.
//! - [`lease`]: the pool's Lease.
//! - [`deposed`], [`missing`], [`routing`], [`safety`], [`scale`]: one
//!   concern each.
//! - [`report`]: events and the leader-change metrics.

pub mod apply;
pub mod deposed;
pub mod history;
pub mod lease;
pub mod missing;
pub mod observe;
pub mod plan;
pub mod preference;
pub mod report;
pub mod routing;
pub mod safety;
pub mod scale;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tokio::time::Instant;
use tracing::info;

use super::context::{Context, ReconcileError, api_err, is_status, now_time};
use super::decide::app_failure::{self, AppInput, AppVerdict};
use super::decide::history::Cause;
use super::decide::{self, Failover, LeaseView, PodView, PolicyProblem, StatusInput};
use super::fencing::{self, FencingState};
use super::queue::PoolKey;
use super::rbac;
use crate::api::keys::PREFERRED_HOLDER_ANNOTATION;
use crate::api::{FollowerMode, LeaderPolicy};
use report::{holder_pod_name, pod_ref};

/// Reconciles one pool. `Ok(Some(d))`: look again after `d` (a Lease may
/// expire then).
pub async fn reconcile(ctx: &Context, key: &PoolKey) -> Result<Option<Duration>, ReconcileError> {
    ctx.metrics.reconciles.inc();
    let policy = ctx.cache.policy(key);
    let pods = ctx.cache.pods_of(key);
    match policy {
        None => {
            let views = observe::views(&pods, Default::default());
            if missing::handle(ctx, key, &pods, &views).await? {
                // Created: the policy's watch event brings the pool back.
                return Ok(None);
            }
            orphan(ctx, key, &views).await?;
            rbac::sync_pool(&ctx.client, &ctx.rbac, key, &[]).await?;
            ctx.forget(key);
            Ok(None)
        }
        Some(p) if p.meta().deletion_timestamp.is_some() => {
            scale::finalize(ctx, key, &p).await?;
            let views = observe::views(&pods, Default::default());
            orphan(ctx, key, &views).await?;
            rbac::sync_pool(&ctx.client, &ctx.rbac, key, &[]).await?;
            ctx.metrics.pools.forget(&key.namespace, &key.name);
            Ok(None)
        }
        Some(p) => {
            ctx.missing_reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(k, _)| k != key);
            active(ctx, key, &p, &pods).await
        }
    }
}

/// A pool whose policy is missing: its pods are not candidates and nobody
/// leads.
async fn orphan(ctx: &Context, key: &PoolKey, views: &[PodView]) -> Result<(), ReconcileError> {
    for write in plan::orphan_writes(&key.name, views) {
        apply::pod(ctx, key, &write).await?;
    }
    Ok(())
}

async fn active(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    pods: &[Arc<Pod>],
) -> Result<Option<Duration>, ReconcileError> {
    let strategy = policy.spec.identity_strategy;
    let views = preference::placed(ctx, policy, observe::views(pods, strategy));
    report::skipped_runs(ctx, key, pods).await;
    let node_ready = |n: &str| ctx.cache.node_ready(n);

    let scale_down = policy.spec.follower_mode == FollowerMode::ScaleDown;
    let LeasePhase {
        policy_ready,
        lease,
        view: lease_view,
        wake: deposed_wake,
        fencing,
    } = lease_phase(ctx, key, policy, &views).await?;
    // Decided by the routing lane (`routing::pass`); the status says it.
    let (routing, routing_wake) = routing::status_condition(ctx, key, policy).await;

    // Phase 2: roles and readiness conditions.
    let leader = lease_view
        .as_ref()
        .and_then(|lv| decide::leader(lv, &views, &node_ready));
    let conflicts = decide::identity_conflicts(&views, lease_view.as_ref(), &node_ready);
    let conditions = plan::candidate_conditions(&key.name, &views, strategy, &conflicts);
    roles(ctx, key, &views, leader, conditions).await?;

    // Phase 3: the safety net, scaleDown, status.
    let unlabelled = ctx.cache.unlabelled_of(key);
    let missing = safety::run(ctx, key, policy, &views, &unlabelled).await;
    let scaled = scale::run(ctx, key, policy, leader.and_then(decide::pod_workload)).await?;
    release_finalizer(ctx, key, policy).await?;
    let candidates = views.iter().filter(|p| p.candidate(&node_ready)).count();
    let transitions = history::record(ctx, key, &views, policy.status.as_ref());
    let next = decide::status(&StatusInput {
        generation: policy.meta().generation,
        pool: &key.name,
        previous: policy.status.as_ref(),
        policy_ready,
        lease: lease_view.as_ref(),
        leader,
        pods: &views,
        candidates,
        agent_missing: &missing,
        identity_conflicts: &conflicts,
        follower_mode: policy.spec.follower_mode,
        timings: policy
            .spec
            .timings()
            .is_ok()
            .then(|| policy.spec.effective_seconds()),
        scaled: if scale_down { scaled } else { None },
        fencing,
        transitions: &transitions,
        paused: policy.spec.paused,
        leader_service: routing,
        now: now_time(),
    });
    report::leader(ctx, key, policy, &next).await;
    report::pause(ctx, key, policy, leader.map(|p| p.name.as_str())).await;
    if policy.status.as_ref() != Some(&next) {
        apply::status(ctx, key, &next).await?;
    }
    report::pool_metrics(ctx, key, &next);

    let lease_wake = lease_view.as_ref().zip(lease.as_ref()).and_then(|(lv, l)| {
        let clock = lease::seen(ctx, key).map(|seen| lease::clock_of(l, seen));
        plan::lease_wake(lv, clock, Instant::now())
    });
    let wake = plan::earliest(deposed_wake, lease_wake);
    Ok(plan::earliest(wake, routing_wake))
}

/// The finalizer goes once nothing scaled by this pool is left (the cache
/// shows the restores of this pass on the next one).
async fn release_finalizer(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
) -> Result<(), ReconcileError> {
    let scale_down = policy.spec.follower_mode == FollowerMode::ScaleDown;
    if !scale_down
        && apply::has_finalizer(policy)
        && observe::workloads(ctx, key)
            .iter()
            .all(|w| w.original.is_none())
    {
        apply::finalizer(ctx, key, policy, false).await?;
    }
    Ok(())
}

/// Phase 2: the identity problems told on their pods, then the role and
/// condition writes in the order [`plan::pod_writes`] gives.
async fn roles(
    ctx: &Context,
    key: &PoolKey,
    views: &[PodView],
    leader: Option<&PodView>,
    conditions: std::collections::BTreeMap<String, decide::CandidateCondition>,
) -> Result<(), ReconcileError> {
    // The user looks at the pod that cannot be a candidate: say why there,
    // once, when its condition turns to the identity problem.
    for (pod, reason, message) in plan::identity_warnings(&conditions) {
        let uid = views.iter().find(|p| p.name == pod).map(|p| p.uid.clone());
        let reference = pod_ref(&key.namespace, pod, uid);
        report::on_pod(
            ctx,
            &reference,
            reason,
            "CheckCandidate",
            message.to_owned(),
        )
        .await;
    }
    let remembered = ctx.with_memory(key, |m| m.leaders.clone());
    let writes = plan::pod_writes(
        views,
        leader.map(|p| p.name.as_str()),
        &remembered,
        conditions,
    );
    apply::pod_writes(ctx, key, &writes).await
}

/// What phase 1 leaves for the rest of the pass.
struct LeasePhase {
    policy_ready: Result<(), PolicyProblem>,
    lease: Option<Lease>,
    view: Option<LeaseView>,
    /// When a deposed `start` leader falls due, or a failing leader app's
    /// grace runs out.
    wake: Option<Duration>,
    fencing: FencingState,
}

/// Phase 1. The finalizer first, so no scale happens that a deletion could
/// not undo; then the Lease and RBAC, fast failover and deposed leaders.
async fn lease_phase(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    views: &[PodView],
) -> Result<LeasePhase, ReconcileError> {
    let scale_down = policy.spec.follower_mode == FollowerMode::ScaleDown;
    if scale_down && !apply::has_finalizer(policy) {
        apply::finalizer(ctx, key, policy, true).await?;
    }
    let mut fencing = ctx.fencing.state(&ctx.client, policy).await;
    // The binding covers the namespace before the Lease is marked.
    if fencing.fenced() && !ctx.fencing.cover(&ctx.client, &key.namespace).await {
        fencing = FencingState::NotCovered;
    }
    let (policy_ready, lease) = lease_and_rbac(ctx, key, policy, views, fencing).await?;
    let mut view = lease.as_ref().map(|l| lease::view(ctx, key, l));
    let mut wake = None;
    if let (Some(lv), Some(l)) = (view.as_mut(), lease.as_ref()) {
        let app_wake = failover(ctx, key, policy, views, lv, l).await?;
        // Paused: a deposed pod is left running (nothing is deleted).
        if !policy.spec.paused {
            wake = deposed(ctx, key, policy, views, lv).await?;
        }
        wake = plan::earliest(app_wake, wake);
    }
    Ok(LeasePhase {
        policy_ready,
        lease,
        view,
        wake,
        fencing,
    })
}

/// The Lease, carrying the policy's timings (and, when the pool is fenced on
/// the server, its pods), and RBAC for the candidates' ServiceAccounts. A
/// Lease that cannot be written makes the policy not ready (said in its
/// status); a conflict is retried. A Lease of the pool's name that zen-lead
/// did not create is left alone, and so the candidates get no rights on it
/// (so they cannot take part in someone else's election): the RBAC waits
/// for the Lease while it is not in the cache, and is written beside it
/// once it is.
async fn lease_and_rbac(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    views: &[PodView],
    fencing: FencingState,
) -> Result<(Result<(), PolicyProblem>, Option<Lease>), ReconcileError> {
    let timings = match policy.spec.timings() {
        Ok(timings) => timings,
        Err(err) => return Ok((Err(PolicyProblem::InvalidTimings(err.to_string())), None)),
    };
    let mut want = lease::Desired::new(key, policy, timings);
    want.fenced_pods = fencing.marks_lease().then(|| {
        let unlabelled = ctx.cache.unlabelled_of(key);
        fencing::members(views, unlabelled.values().map(|u| u.uid.as_str()))
    });
    let accounts = decide::service_accounts(views);
    let adopt = policy.spec.adopt_existing_lease;
    let (lease, rbac) = if ctx.cache.lease(key).is_some() {
        tokio::join!(
            lease::ensure(ctx, key, &want, adopt),
            rbac::sync_pool(&ctx.client, &ctx.rbac, key, &accounts)
        )
    } else {
        let lease = lease::ensure(ctx, key, &want, adopt).await;
        let granted = match &lease {
            Ok(lease::Ensured::NotManaged { .. }) => &[][..],
            _ => &accounts[..],
        };
        (
            lease,
            rbac::sync_pool(&ctx.client, &ctx.rbac, key, granted).await,
        )
    };
    rbac?;
    match lease {
        Ok(lease::Ensured::Managed(lease)) => Ok((Ok(()), Some(*lease))),
        Ok(lease::Ensured::NotManaged { holder }) => {
            let problem = not_managed(key, holder.as_deref());
            report_not_managed(ctx, policy, &problem).await;
            Ok((Err(problem), None))
        }
        Err(err) if err.is_conflict() => Err(err),
        Err(err) => Ok((Err(PolicyProblem::LeaseError(err.to_string())), None)),
    }
}

/// The PolicyReady message for a Lease zen-lead did not create.
fn not_managed(key: &PoolKey, holder: Option<&str>) -> PolicyProblem {
    PolicyProblem::LeaseNotManaged(format!(
        "Lease {}/{} exists and zen-lead did not create it (holder: {}); it may be another \
         controller's leader election, so zen-lead leaves it untouched and this pool does not \
         run. Rename the LeaderPolicy (and the pods' zen-lead/pool), or set \
         spec.adoptExistingLease: true once nothing else uses that Lease",
        key.namespace,
        key.name,
        holder.unwrap_or("none"),
    ))
}

/// An Event on the policy, once: when its PolicyReady condition turns to
/// [`reasons::LEASE_NOT_MANAGED`](crate::api::keys::conditions::reasons::LEASE_NOT_MANAGED).
async fn report_not_managed(ctx: &Context, policy: &LeaderPolicy, problem: &PolicyProblem) {
    let already = policy.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == crate::api::keys::conditions::POLICY_READY && c.reason == problem.reason()
        })
    });
    if already {
        return;
    }
    tracing::warn!(policy = %policy.name_any(), "{}", problem.message());
    report::on_policy(
        ctx,
        policy,
        EventType::Warning,
        problem.reason(),
        "EnsureLease",
        problem.message().to_owned(),
        None,
    )
    .await;
}

/// Fast failover: a holder that cannot renew (its pod gone, its node
/// NotReady) is cleared; a terminating holder, or an `api` holder whose app
/// has been failing for the policy's grace, is asked to hand over. Returns
/// when to look again for that grace.
async fn failover(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    views: &[PodView],
    lv: &mut LeaseView,
    lease: &Lease,
) -> Result<Option<Duration>, ReconcileError> {
    let node_ready = |n: &str| ctx.cache.node_ready(n);
    let holder_pod = decide::holder_pod(lv, views);
    let strategy = policy.spec.identity_strategy;
    let paused = policy.spec.paused;
    // Paused, a gone holder is not cleared: no need to confirm it.
    let confirmed_gone = !paused
        && decide::needs_confirmation(lv, holder_pod)
        && lease::holder_confirmed_gone(ctx, key, strategy, lv).await?;
    let holder = lv.holder.clone().unwrap_or_default();
    let decided = decide::failover(lv, holder_pod, views, &node_ready, confirmed_gone);
    match decide::pause::failover(paused, decided) {
        Failover::Nothing => {
            let verdict = {
                let input = AppInput {
                    lease: lv,
                    holder: holder_pod,
                    pods: views,
                    node_ready: &node_ready,
                    grace: app_failure::grace(&policy.spec),
                };
                let verdict = ctx.with_memory(key, |m| {
                    app_failure::judge(&mut m.app_watch, &input, Instant::now())
                });
                decide::pause::app_verdict(paused, verdict)
            };
            if let AppVerdict::Wait(wake) = verdict {
                let wake = wake.map(|w| w + plan::WAKE_MARGIN);
                let standing = preference::run(ctx, key, policy, views, lv, lease).await?;
                return Ok(plan::earliest(wake, standing));
            }
            return app_failing(ctx, key, policy, views, lv, lease, verdict).await;
        }
        Failover::Expire { why } => {
            let cause = match why {
                decide::HolderGone::PodGone => Cause::PodDeleted,
                decide::HolderGone::Failed | decide::HolderGone::NodeNotReady => Cause::Expiry,
            };
            ctx.cache.note_cause(key, &holder, cause);
            if lease::expire(ctx, key, lease).await? {
                ctx.metrics.lease_expiries.inc();
                info!(pool = %key, holder = %holder, reason = why.reason(), "expired the Lease of a holder that cannot renew; a follower takes over now");
                report::on_policy(
                    ctx,
                    policy,
                    EventType::Normal,
                    "LeaseExpired",
                    "ExpireLease",
                    format!(
                        "holder {holder} cannot renew ({}); cleared the Lease so a \
                         follower takes over without waiting for expiry",
                        why.reason()
                    ),
                    holder_pod_name(&holder).map(|n| pod_ref(&key.namespace, n, None)),
                )
                .await;
                lv.holder = None;
                lv.expired = false;
            }
        }
        Failover::HandOff { to } => {
            ctx.cache.note_cause(key, &holder, Cause::PodDeleted);
            if lease::hand_off(ctx, key, lease, &to).await? {
                info!(pool = %key, holder = %holder, successor = %to, "holder pod is terminating; asked it to hand over");
                lv.preferred = Some(to);
            }
        }
    }
    ctx.with_memory(key, |m| m.app_watch = None);
    Ok(None)
}

/// Acts on [`app_failure::judge`]'s verdict about the holder's app: a
/// hand-off to a Ready follower (performed by the holder's own agent; the
/// Lease is never cleared for this), or an Event that none is Ready.
async fn app_failing(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    views: &[PodView],
    lv: &mut LeaseView,
    lease: &Lease,
    verdict: AppVerdict,
) -> Result<Option<Duration>, ReconcileError> {
    let holder = lv.holder.clone().unwrap_or_default();
    let pod_of = |identity: &str| {
        views
            .iter()
            .find(|p| p.identity.as_deref() == Some(identity))
            .map_or_else(|| identity.to_owned(), |p| p.name.clone())
    };
    let holder_name =
        decide::holder_pod(lv, views).map_or_else(|| pod_of(&holder), |p| p.name.clone());
    match verdict {
        AppVerdict::Wait(wake) => return Ok(wake.map(|w| w + plan::WAKE_MARGIN)),
        AppVerdict::HandOff {
            to,
            failing_for,
            problem,
        } => {
            ctx.cache.note_cause(key, &holder, Cause::AppFailed);
            if lease::hand_off(ctx, key, lease, &to).await? {
                let successor = pod_of(&to);
                let note = format!(
                    "leader {holder_name}'s app not Ready or restarting for {}s ({problem}); \
                     handing over to {successor}, whose app is Ready",
                    failing_for.as_secs()
                );
                info!(pool = %key, holder = %holder, successor = %to, "{note}");
                app_event(ctx, key, policy, "HandOff", note, &successor).await;
                lv.preferred = Some(to);
            }
        }
        AppVerdict::ClearPreferred => {
            if clear_preferred(ctx, key, lease).await? {
                info!(pool = %key, holder = %holder, "removed a preferred holder the leader does not act on, to name it again");
                lv.preferred = None;
            }
        }
        AppVerdict::NoReadyFollower {
            failing_for,
            problem,
            report,
        } => {
            if report {
                let note = format!(
                    "leader {holder_name}'s app not Ready or restarting for {}s ({problem}); no \
                     follower's app is Ready, so it keeps the Lease; it hands over once one is",
                    failing_for.as_secs()
                );
                tracing::warn!(pool = %key, holder = %holder, "{note}");
                app_event(ctx, key, policy, "KeepLeader", note, &holder_name).await;
            }
        }
    }
    Ok(None)
}

/// An `AppNotReady` Warning on the policy. Its related pod is part of the
/// recorder's de-duplication key: the successor for a hand-off (a hand-off
/// to another pod is another Event), the holder when it keeps the Lease.
async fn app_event(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    action: &str,
    note: String,
    pod: &str,
) {
    let related = Some(pod_ref(&key.namespace, pod, None));
    report::on_policy(
        ctx,
        policy,
        EventType::Warning,
        app_failure::APP_NOT_READY,
        action,
        note,
        related,
    )
    .await;
}

/// Removes `zen-lead.io/preferred-holder` by compare-and-swap on the version
/// read; `false` on a conflict (the next pass sees the newer Lease).
async fn clear_preferred(
    ctx: &Context,
    key: &PoolKey,
    lease: &Lease,
) -> Result<bool, ReconcileError> {
    let mut next = lease.clone();
    if let Some(annotations) = next.metadata.annotations.as_mut() {
        annotations.remove(PREFERRED_HOLDER_ANNOTATION);
    }
    let api: Api<Lease> = ctx.api(key);
    match api.replace(&key.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(err) if is_status(&err, 409) => Ok(false),
        Err(err) => Err(api_err(
            "clear the preferred holder of",
            "Lease",
            &key.namespace,
            &key.name,
        )(err)),
    }
}

/// Deposed `start` leaders, whose app runs beside the successor's: deleted
/// once they have looked deposed for [`plan::DEPOSED_GRACE`]. Returns when
/// the next one falls due.
async fn deposed(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    views: &[PodView],
    lv: &LeaseView,
) -> Result<Option<Duration>, ReconcileError> {
    let deposed = decide::deposed_start_leaders(views, lv);
    let (due, wake) = ctx.with_memory(key, |m| {
        plan::deposed_due(&mut m.deposed_since, &deposed, Instant::now())
    });
    let due: Vec<&PodView> = deposed
        .into_iter()
        .filter(|p| due.contains(&p.uid))
        .collect();
    if !due.is_empty() {
        deposed::remove(ctx, key, policy, &due).await?;
    }
    Ok(wake)
}

#[cfg(test)]
mod tests;
