//! The pool's recent leader changes: what the Lease watch saw since the
//! last pass, each given its reason ([`history::reason`]), counted in
//! `zen_lead_pool_leader_changes_total` and kept until the cache shows a
//! status that carries it.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::report::holder_pod_name;
use crate::api::{LeaderPolicyStatus, LeaderTransition, RECENT_TRANSITIONS};
use crate::controller::context::Context;
use crate::controller::decide::PodView;
use crate::controller::decide::history::{self, Observed};
use crate::controller::queue::PoolKey;

/// The pod an identity names: a pool pod with it, else the pod name in a
/// `pod`-strategy identity (a pod already gone), else the identity.
fn name_of(identity: &str, views: &[PodView]) -> String {
    views
        .iter()
        .find(|p| p.identity.as_deref() == Some(identity))
        .map(|p| p.name.clone())
        .or_else(|| holder_pod_name(identity).map(str::to_owned))
        .unwrap_or_else(|| identity.to_owned())
}

/// Whether the pod of `identity` is terminating or gone.
fn leaving(identity: &str, views: &[PodView]) -> bool {
    views
        .iter()
        .find(|p| p.identity.as_deref() == Some(identity))
        .is_none_or(|p| p.terminating)
}

fn time_of(t: SystemTime) -> Time {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or_else(|_| Timestamp::now()))
}

/// The status entry of one change.
pub fn entry(change: &Observed, views: &[PodView]) -> LeaderTransition {
    LeaderTransition {
        time: time_of(change.acquired_at),
        from: name_of(&change.from, views),
        to: name_of(&change.to, views),
        reason: history::reason(change, leaving(&change.from, views)),
        takeover_millis: history::takeover_millis(change),
        term: Some(change.term),
    }
}

/// Takes the changes the Lease watch saw, counts them, and returns every
/// entry that `stored` (the status as the cache shows it) does not hold
/// yet: these, and earlier ones whose write failed or is not back yet.
pub fn record(
    ctx: &Context,
    key: &PoolKey,
    views: &[PodView],
    stored: Option<&LeaderPolicyStatus>,
) -> Vec<LeaderTransition> {
    let new: Vec<LeaderTransition> = ctx
        .cache
        .take_changes(key)
        .iter()
        .map(|c| entry(c, views))
        .collect();
    for e in &new {
        ctx.metrics
            .pools
            .changed(&key.namespace, &key.name, e.reason);
        tracing::info!(pool = %key, from = %e.from, to = %e.to, reason = e.reason.as_str(),
            takeover_ms = e.takeover_millis, "recorded a leader change");
    }
    ctx.with_memory(key, |m| {
        let pending = &mut m.unwritten_transitions;
        history::unstored(
            pending,
            stored.map_or(&[][..], |s| s.recent_transitions.as_slice()),
        );
        pending.extend(new);
        let drop = pending.len().saturating_sub(RECENT_TRANSITIONS);
        pending.drain(..drop);
        pending.clone()
    })
}
