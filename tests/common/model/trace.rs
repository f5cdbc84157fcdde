//! A path of the model as a readable sequence of events.

use std::fmt::Write;

use stateright::Model;
use stateright::Path;

use super::world::{Act, ElectionModel, Op, World};

fn who(m: &ElectionModel, i: usize) -> String {
    let (identity, instance) = m.cfg.candidates[i];
    format!("{identity}/{instance}")
}

fn describe(m: &ElectionModel, before: &World, after: &World, act: &Act) -> String {
    let sent = |i: usize| match after.candidates[i].request.as_ref().map(|r| &r.op) {
        Some(Op::Read) => " and sends a read".to_owned(),
        Some(Op::Write { kind, base, .. }) if before.candidates[i].request.is_none() => {
            format!(" and sends {kind:?} on rv {base}")
        }
        _ => String::new(),
    };
    match *act {
        Act::Tick(to) => format!("time passes to {to} ms"),
        Act::Step(i) => format!("{} runs its loop{}", who(m, i), sent(i)),
        Act::Apply(i) => format!("API server applies {}'s request", who(m, i)),
        Act::ApplyOrphan(i) => format!(
            "API server applies {}'s write it had given up on",
            who(m, i)
        ),
        Act::Answer(i) => format!("{} gets the answer", who(m, i)),
        Act::Timeout(i) => format!("{}'s request times out", who(m, i)),
        Act::Deliver(i) => format!("{}'s watch delivers an event", who(m, i)),
        Act::Relist(i) => format!("{} lists again", who(m, i)),
        Act::Freeze(i) => format!("FAULT: {}'s pod freezes", who(m, i)),
        Act::Thaw(i) => format!("{}'s pod thaws", who(m, i)),
        Act::DropWatch(i) => format!("FAULT: {}'s watch drops", who(m, i)),
        Act::Fail(i) => format!("FAULT: {}'s request fails", who(m, i)),
        Act::Slow(i) => format!("FAULT: {}'s request is slow to arrive", who(m, i)),
        Act::Shutdown(i) => format!("{} shuts down{}", who(m, i), sent(i)),
        Act::ControllerTouch => "controller writes the Lease's metadata".to_owned(),
        Act::Prefer(j) => format!("controller names {} preferred holder", who(m, j)),
        Act::Pause(true) => "controller marks the Lease paused".to_owned(),
        Act::Pause(false) => "controller lifts the pause".to_owned(),
    }
}

fn summary(m: &ElectionModel, w: &World) -> String {
    let l = &w.lease;
    let leading: Vec<String> = (0..w.candidates.len())
        .filter(|i| w.leads(*i))
        .map(|i| who(m, i))
        .collect();
    let stale: Vec<String> = (0..w.candidates.len())
        .filter(|i| w.candidates[*i].acting && !w.leads(*i))
        .map(|i| who(m, i))
        .collect();
    format!(
        "lease rv {} holder {}{} | leading [{}]{}",
        l.rv,
        l.holder.as_deref().unwrap_or("-"),
        l.preferred
            .as_deref()
            .map_or(String::new(), |p| format!(" preferred {p}"))
            + if l.paused { " paused" } else { "" },
        leading.join(", "),
        if stale.is_empty() {
            String::new()
        } else {
            format!(" | app still acting [{}]", stale.join(", "))
        }
    )
}

/// One line per step: global time, the event, then the Lease and who leads.
pub fn trace(m: &ElectionModel, path: Path<World, Act>) -> String {
    let steps = path.into_vec();
    let mut out = String::new();
    if let Some((first, _)) = steps.first() {
        let rates: Vec<String> = first
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} clock x{:.2}", who(m, i), c.rate as f64 / 1000.0))
            .collect();
        let _ = writeln!(out, "  start: {}", rates.join(", "));
    }
    for pair in steps.windows(2) {
        let (before, Some(act)) = (&pair[0].0, &pair[0].1) else {
            continue;
        };
        let after = &pair[1].0;
        let _ = writeln!(
            out,
            "  {:>5} ms  {:<60} {}",
            after.t,
            describe(m, before, after, act),
            summary(m, after)
        );
    }
    out
}

/// The number of initial states (one per assignment of clock rates).
pub fn initial_states(m: &ElectionModel) -> usize {
    m.init_states().len()
}
