//! Leader preference's I/O: zones from the node cache, the Warning on a pod
//! whose `zen-lead/priority` is not an integer, and the standing move
//! ([`decide::preference::standing`]) through the controller's hand-off.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::EventType;
use tracing::info;

use super::report::{self, pod_ref};
use super::{clear_preferred, lease};
use crate::api::LeaderPolicy;
use crate::api::keys::PRIORITY_ANNOTATION;
use crate::controller::context::{Context, ReconcileError};
use crate::controller::decide::history::Cause;
use crate::controller::decide::preference::{self, Standing, StandingInput};
use crate::controller::decide::{self, LeaseView, PodView};
use crate::controller::queue::PoolKey;

/// Event reason on a pod whose `zen-lead/priority` is not an integer.
pub const INVALID_PRIORITY: &str = "InvalidPriority";

/// The pods with their zone's rank in the policy's `preferredZones`.
pub fn placed(ctx: &Context, policy: &LeaderPolicy, mut views: Vec<PodView>) -> Vec<PodView> {
    let zone_of = |node: &str| ctx.cache.node_zone(node);
    preference::place(&mut views, &policy.spec.preferred_zones, &zone_of);
    views
}

/// One pass of the standing preference, once nothing else moves the
/// holder: tells of invalid priorities, then hands over to a better-ranked
/// candidate when one is due. Returns when to look again.
pub async fn run(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    views: &[PodView],
    lv: &mut LeaseView,
    lease: &Lease,
) -> Result<Option<Duration>, ReconcileError> {
    warn_invalid(ctx, key, views).await;
    let holder = decide::holder_pod(lv, views);
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let last_asked = ctx.with_memory(key, |m| m.preference_asked);
    let pending_since = pending_since(ctx, key, lv, now);
    let node_ready = |n: &str| ctx.cache.node_ready(n);
    let decision = preference::standing(&StandingInput {
        lease: lv,
        holder,
        pods: views,
        node_ready: &node_ready,
        paused: policy.spec.paused,
        cooldown: u64::try_from(policy.spec.preference_cooldown_seconds)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        last_change: last_change(ctx, key, policy, lv),
        last_asked,
        pending_since,
        now,
    });
    match decision {
        Standing::Wait(wake) => Ok(wake.map(wake_after)),
        Standing::ClearPreferred => {
            if clear_preferred(ctx, key, lease).await? {
                lv.preferred = None;
            }
            Ok(None)
        }
        Standing::Move { to } => {
            let from = holder.map(|p| p.name.clone()).unwrap_or_default();
            let holder_id = lv.holder.clone().unwrap_or_default();
            ctx.cache.note_cause(key, &holder_id, Cause::Preference);
            if lease::hand_off(ctx, key, lease, &to).await? {
                ctx.with_memory(key, |m| m.preference_asked = Some(now));
                let successor = views
                    .iter()
                    .find(|p| p.identity.as_deref() == Some(to.as_str()))
                    .map_or_else(|| to.clone(), |p| p.name.clone());
                let note = format!(
                    "{successor} ranks above leader {from} (zen-lead/priority, then \
                     spec.preferredZones) and has been Ready for spec.preferenceCooldownSeconds; \
                     handing over to it"
                );
                info!(pool = %key, holder = %holder_id, successor = %to, "{note}");
                let related = Some(pod_ref(&key.namespace, &successor, None));
                report::on_policy(
                    ctx,
                    policy,
                    EventType::Normal,
                    "PreferenceHandOff",
                    "HandOff",
                    note,
                    related,
                )
                .await;
                lv.preferred = Some(to);
            }
            Ok(None)
        }
    }
}

/// The longest a pass waits to look at the standing preference again.
/// Every pass schedules its own wake-up (a sleeping task), and a pool's
/// Lease renewals queue a pass every few seconds: waiting out a whole
/// cooldown (up to a day) from each would keep thousands of them alive.
pub const WAKE_CAP: Duration = Duration::from_secs(30);

/// When to look again for a move due after `wait`: at most [`WAKE_CAP`]
/// (the pass then decides again, with the same clock).
pub fn wake_after(wait: Duration) -> Duration {
    (wait + super::plan::WAKE_MARGIN).min(WAKE_CAP)
}

/// Since when the Lease names its current preferred holder while someone
/// else holds it, as this controller saw it (first seen now after a
/// restart, which only waits one cooldown more).
fn pending_since(ctx: &Context, key: &PoolKey, lv: &LeaseView, now: i64) -> Option<i64> {
    let pending = lv
        .preferred
        .clone()
        .filter(|p| Some(p) != lv.holder.as_ref());
    ctx.with_memory(key, |m| match (pending, &m.preferred_seen) {
        (None, _) => {
            m.preferred_seen = None;
            None
        }
        (Some(p), Some((seen, at))) if p == *seen => Some(*at),
        (Some(p), _) => {
            m.preferred_seen = Some((p, now));
            Some(now)
        }
    })
}

/// The newest leader change known: the current term's `acquireTime`, and
/// the recorded transitions (stored, and those not yet written).
fn last_change(ctx: &Context, key: &PoolKey, policy: &LeaderPolicy, lv: &LeaseView) -> Option<i64> {
    let unwritten = ctx.with_memory(key, |m| {
        m.unwritten_transitions
            .iter()
            .map(|t| t.time.0.as_millisecond())
            .max()
    });
    let stored = policy
        .status
        .iter()
        .flat_map(|s| s.recent_transitions.iter())
        .map(|t| t.time.0.as_millisecond())
        .max();
    let acquired = lv.acquired.as_ref().map(|t| t.0.as_millisecond());
    [unwritten, stored, acquired].into_iter().flatten().max()
}

/// A Warning on each pod whose priority is not an integer, once per value.
async fn warn_invalid(ctx: &Context, key: &PoolKey, views: &[PodView]) {
    ctx.with_memory(key, |m| {
        m.priority_warned
            .retain(|(uid, _)| views.iter().any(|p| p.uid == *uid));
    });
    for pod in views {
        let Some(value) = pod.preference.invalid_priority.as_ref() else {
            continue;
        };
        let told = (pod.uid.clone(), value.clone());
        if !ctx.with_memory(key, |m| m.priority_warned.insert(told)) {
            continue;
        }
        let note = format!(
            "annotation {PRIORITY_ANNOTATION}: {value:?} is not an integer; the pod counts as \
             priority 0. Set a whole number (higher is preferred as leader)"
        );
        tracing::warn!(pool = %key, pod = %pod.name, "{note}");
        let reference = pod_ref(&key.namespace, &pod.name, Some(pod.uid.clone()));
        report::on_pod(ctx, &reference, INVALID_PRIORITY, "ReadPriority", note).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standing_wait_wakes_at_most_every_thirty_seconds() {
        let s = Duration::from_secs;
        let margin = crate::controller::pool::plan::WAKE_MARGIN;
        assert_eq!(wake_after(s(0)), margin);
        assert_eq!(wake_after(s(5)), s(5) + margin);
        assert_eq!(wake_after(s(300)), WAKE_CAP, "the default cooldown");
        assert_eq!(wake_after(s(86_400)), WAKE_CAP, "the longest cooldown");
        assert_eq!(wake_after(Duration::MAX - margin), WAKE_CAP);
    }
}
