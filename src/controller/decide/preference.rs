//! Leader preference, free of I/O: how candidates rank (the pod's
//! `zen-lead/priority`, then its zone's place in `spec.preferredZones`),
//! and the standing preference, which moves leadership to a better-ranked
//! Ready candidate through the controller's hand-off.
//!
//! Ranking: a higher priority first; then a zone earlier in
//! `preferredZones` (an unlisted or unknown zone comes after every listed
//! one); among equals the holder keeps the lead, and a successor is the
//! lowest identity, so repeated passes name the same pod.
//!
//! The standing move is safe the way the controller's other hand-offs
//! are: it names `zen-lead.io/preferred-holder`, and the holder's own agent
//! releases once its app's writes (`api`) or its app (`process`) stopped.
//! `start` holders are never moved (nothing in the pod can stop their app
//! before the kubelet does, as for a terminating `start` holder). It never
//! flaps: only a strictly better rank moves, the target must have been
//! Ready for one cooldown, and no move comes sooner than one cooldown after
//! the last leader change or the last move asked.

use std::cmp::Reverse;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::{LeaseView, PodView};
use crate::api::keys::PRIORITY_ANNOTATION;

/// What ranks a pod, read from the pod and its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preference {
    /// `zen-lead/priority` (0 when absent or not an integer).
    pub priority: i64,
    /// The annotation's value when it is not an integer.
    pub invalid_priority: Option<String>,
    /// The position of the pod's zone in `spec.preferredZones`; `None`:
    /// not listed, or the zone is unknown (node not read, no label).
    pub zone_rank: Option<usize>,
    /// When the pod's Ready condition last turned True (Unix ms); `None`
    /// while it is not Ready.
    pub ready_since: Option<i64>,
}

impl Preference {
    /// Priority and readiness from the pod; the zone comes later
    /// ([`place`]), from the node cache.
    pub fn of(pod: &Pod) -> Self {
        let raw = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PRIORITY_ANNOTATION));
        let (priority, invalid_priority) = match raw {
            None => (0, None),
            Some(v) => parse_priority(v).map_or_else(|| (0, Some(v.clone())), |p| (p, None)),
        };
        let ready_since = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == "True")
            // A Ready condition without a time has been Ready as far as
            // anyone knows: the cooldown since the last leader change
            // still holds moves back.
            .map(|c| {
                c.last_transition_time
                    .as_ref()
                    .map_or(0, |t| t.0.as_millisecond())
            });
        Preference {
            priority,
            invalid_priority,
            zone_rank: None,
            ready_since,
        }
    }
}

/// A priority: a decimal integer, surrounding blanks allowed.
pub fn parse_priority(value: &str) -> Option<i64> {
    value.trim().parse::<i64>().ok()
}

/// Fills each pod's zone rank: its node's zone (`zone_of`, `None` when the
/// node is unknown) in `zones`. An unreadable node ranks last, and never
/// keeps a pod from being chosen.
pub fn place(pods: &mut [PodView], zones: &[String], zone_of: &dyn Fn(&str) -> Option<String>) {
    for pod in pods {
        pod.preference.zone_rank = pod
            .node
            .as_deref()
            .and_then(zone_of)
            .and_then(|z| zones.iter().position(|p| *p == z));
    }
}

/// A pod's rank: greater is preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    priority: i64,
    zone: Reverse<usize>,
}

pub fn rank(pod: &PodView) -> Rank {
    Rank {
        priority: pod.preference.priority,
        zone: Reverse(pod.preference.zone_rank.unwrap_or(usize::MAX)),
    }
}

/// The preferred pod's identity: the highest rank, then the lowest identity.
pub fn best<'a>(pods: impl IntoIterator<Item = &'a PodView>) -> Option<String> {
    best_pod(pods.into_iter().filter(|p| p.identity.is_some())).and_then(|p| p.identity.clone())
}

/// The preferred pod: the highest rank, then the lowest identity.
pub fn best_pod<'a>(pods: impl IntoIterator<Item = &'a PodView>) -> Option<&'a PodView> {
    pods.into_iter()
        .max_by(|a, b| rank(a).cmp(&rank(b)).then(b.identity.cmp(&a.identity)))
}

/// What [`standing`] looks at.
pub struct StandingInput<'a> {
    pub lease: &'a LeaseView,
    /// The pool pod holding the Lease.
    pub holder: Option<&'a PodView>,
    pub pods: &'a [PodView],
    pub node_ready: &'a dyn Fn(&str) -> bool,
    pub paused: bool,
    /// `spec.preferenceCooldownSeconds`; `None` (0): no standing moves.
    pub cooldown: Option<Duration>,
    /// The newest leader change known (Unix ms), of any reason.
    pub last_change: Option<i64>,
    /// When this controller last asked for a move for preference (Unix ms).
    pub last_asked: Option<i64>,
    /// Since when (Unix ms) this controller has seen the Lease name its
    /// current preferred holder while someone else holds it: a hand-off
    /// asked (by the controller or `zen-lead handoff`) and not yet done.
    /// One that has stood for a cooldown is stale (the holder acts only on
    /// a change during its term, and a hand-off takes milliseconds).
    pub pending_since: Option<i64>,
    /// Now (Unix ms).
    pub now: i64,
}

/// What one pass does about preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Nothing now; look again after the duration (the cooldown ends, or
    /// the better candidate will have been Ready long enough).
    Wait(Option<Duration>),
    /// Name `to` as the preferred holder: the holder hands over to it.
    Move { to: String },
    /// The Lease already names `to` from an earlier request the holder did
    /// not act on (it acts on a change only): remove the annotation, so
    /// naming `to` next is a change.
    ClearPreferred,
}

/// The standing preference at `input.now`.
pub fn standing(input: &StandingInput<'_>) -> Standing {
    let Some(cooldown) = input.cooldown.filter(|_| !input.paused) else {
        return Standing::Wait(None);
    };
    let ready = input.node_ready;
    let lease = input.lease;
    let Some(holder) = input.holder.filter(|h| {
        h.alive(ready) && h.stops_before_release() && !lease.expired && !lease.past_renew_deadline
    }) else {
        return Standing::Wait(None);
    };
    let better = input.pods.iter().filter(|p| {
        p.candidate(ready)
            && p.ready
            && p.preference.ready_since.is_some()
            && p.uid != holder.uid
            && p.identity.is_some()
            && p.identity != holder.identity
            && rank(p) > rank(holder)
    });
    let Some(to) = best(better) else {
        return Standing::Wait(None);
    };
    let pending = lease
        .preferred
        .as_ref()
        .is_some_and(|p| Some(p) != holder.identity.as_ref());
    let asked_at = input.pending_since.filter(|_| pending);
    let target = input
        .pods
        .iter()
        .find(|p| p.identity.as_deref() == Some(to.as_str()));
    let stable_at = target
        .and_then(|p| p.preference.ready_since)
        .map_or(input.now, |t| t.saturating_add(ms(cooldown)));
    let calm_at = input
        .last_change
        .max(input.last_asked)
        .max(asked_at)
        .map_or(input.now, |t| t.saturating_add(ms(cooldown)));
    let due = stable_at.max(calm_at);
    if input.now < due {
        let wait = u64::try_from(due - input.now).unwrap_or(0);
        return Standing::Wait(Some(Duration::from_millis(wait)));
    }
    if lease.preferred.as_deref() == Some(to.as_str()) {
        return Standing::ClearPreferred;
    }
    Standing::Move { to }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
