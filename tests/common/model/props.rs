//! What the checker asserts of every reachable state.
//!
//! Liveness and hand-off are judged by running the state on without faults
//! ([`settle`]): every network step happens at once, every due step runs,
//! frozen candidates stay frozen (a crash is a freeze that never thaws), and
//! the controller keeps writing the Lease's metadata every
//! `controller_period_ms`, as a controller with fenced pods does.

use stateright::Property;
use zen_lead::election::machine::{Action, WriteKind};

use super::drift::Seen;
use super::world::{Act, ElectionModel, Life, World};

pub const ONE_LEADER: &str = "at most one candidate leads within its own unexpired term";
pub const STALE_APP_ONLY_AFTER_THAW: &str =
    "an app acts beside the leader only while its pod thaws";
pub const THAW_WINDOW: &str = "a frozen pod thawing acts beside the new leader (the window)";
pub const LIVENESS: &str = "once faults stop, a live candidate leads within liveness_ms";
pub const HAND_OFF: &str = "a graceful release hands over within one watch event and one write";
pub const SOMEONE_LEADS: &str = "some candidate leads";
pub const PAUSE_KEPT: &str =
    "while the Lease is marked paused nobody takes it: its holder keeps it or loses it for good";

pub fn properties() -> Vec<Property<ElectionModel>> {
    vec![
        Property::always(ONE_LEADER, |_, w| one_leader(w)),
        Property::always(STALE_APP_ONLY_AFTER_THAW, |_, w| {
            stale_app_only_after_thaw(w)
        }),
        Property::sometimes(THAW_WINDOW, |_, w| thaw_window(w)),
        Property::always(LIVENESS, live),
        Property::always(HAND_OFF, hand_off),
        Property::sometimes(SOMEONE_LEADS, |_, w| someone_leads(w)),
        Property::always(PAUSE_KEPT, |_, w: &World| {
            w.pause.as_ref().is_none_or(|p| !p.broken)
        }),
    ]
}

fn someone_leads(w: &World) -> bool {
    (0..w.candidates.len()).any(|i| w.leads(i))
}

fn one_leader(w: &World) -> bool {
    (0..w.candidates.len()).filter(|i| w.leads(*i)).count() <= 1
}

/// An app still acting while another candidate leads.
fn stale_apps(w: &World) -> impl Iterator<Item = usize> + '_ {
    (0..w.candidates.len()).filter(move |i| {
        let c = &w.candidates[*i];
        c.acting
            && !c.frozen
            && !w.leads(*i)
            && (0..w.candidates.len()).any(|j| j != *i && w.leads(j))
    })
}

fn stale_app_only_after_thaw(w: &World) -> bool {
    stale_apps(w).all(|i| w.candidates[i].thawed)
}

fn thaw_window(w: &World) -> bool {
    stale_apps(w).any(|i| w.candidates[i].thawed)
}

/// Runs `w` on without faults until `goal` holds (true) or `for_ms` of
/// global time have passed (false).
pub fn settle(m: &ElectionModel, w: &World, for_ms: u64, goal: impl Fn(&World) -> bool) -> bool {
    let mut w = w.clone();
    let end = w.t + for_ms;
    let period = m.cfg.controller_period_ms;
    let mut next_touch = w.t + period;
    let mut seen = Seen::default();
    let mut acts = Vec::new();
    loop {
        if goal(&w) {
            return true;
        }
        acts.clear();
        m.network_acts(&w, &mut acts);
        m.due_acts(&w, &mut acts);
        if let Some(act) = acts.first() {
            m.apply_act(&mut w, act, &mut seen);
            continue;
        }
        if w.t >= next_touch {
            next_touch += period;
            m.apply_act(&mut w, &Act::ControllerTouch, &mut seen);
            continue;
        }
        match m.tick(&w, end.min(next_touch)) {
            Some(to) => w.t = to,
            None if w.t >= end => return false,
            None => w.t = end.min(next_touch),
        }
    }
}

/// Liveness: a live candidate leads once faults stop, within the bound.
/// A paused pool is exempt: it elects nobody until resumed, by design.
fn live(m: &ElectionModel, w: &World) -> bool {
    if !w.candidates.iter().any(|c| c.live()) || w.lease.paused {
        return true;
    }
    settle(m, w, m.cfg.liveness_ms, |w| {
        (0..w.candidates.len()).any(|i| w.candidates[i].live() && w.leads(i))
    })
}

/// A candidate that can take a free Lease at once: running, its watch up,
/// nothing in flight, no back-off or conflict pending, and not deferring to
/// another preferred holder.
fn ready(m: &ElectionModel, w: &World, j: usize) -> bool {
    let c = &w.candidates[j];
    // The machine's back-off after a transient failure: 500 ms here.
    let backoff_over = c.failed_at.is_none_or(|f| w.local(j) >= f + 500);
    let preferred_ok = w
        .lease
        .preferred
        .as_deref()
        .is_none_or(|p| p == m.cfg.candidates[j].0);
    c.live() && c.connected && c.request.is_none() && !c.needs_read && backoff_over && preferred_ok
}

/// Hand-off: right after the API server applied a release, every ready
/// candidate leads after one watch delivery (the pending events, drained as
/// the driver does) and one write, with no time passing.
fn hand_off(m: &ElectionModel, w: &World) -> bool {
    let Some(releaser) = w.just_released else {
        return true;
    };
    // Paused, a release hands over to nobody (PAUSE_KEPT).
    if w.lease.paused {
        return true;
    }
    (0..w.candidates.len())
        .filter(|j| *j != releaser && ready(m, w, *j))
        .all(|j| {
            let mut v = w.clone();
            let mut seen = Seen::default();
            while !v.candidates[j].events.is_empty() {
                m.apply_act(&mut v, &Act::Deliver(j), &mut seen);
            }
            let now = v.now(j);
            if !matches!(
                v.candidates[j].machine.decide(now),
                Action::Replace {
                    kind: WriteKind::Acquire,
                    ..
                }
            ) {
                return false;
            }
            for act in [Act::Step(j), Act::Apply(j), Act::Answer(j)] {
                m.apply_act(&mut v, &act, &mut seen);
            }
            v.leads(j) && v.candidates[j].life == Life::Running
        })
}
