//! The model and the machine must not drift apart. Every variant of the
//! machine's enums is named here by an exhaustive `match` (a new variant
//! does not compile until it is placed), and placed either in [`DRIVEN`],
//! with the model action that drives it, or in [`NOT_MODELLED`], with the
//! reason. `tests/model.rs` walks the model and checks that every driven
//! variant does occur.

use std::collections::BTreeSet;

use zen_lead::election::machine::{Action, EndReason, Failure, LeadEvent, Observation, WriteKind};

/// Machine variant, and the model action(s) that drive it.
pub const DRIVEN: &[(&str, &str)] = &[
    ("Action::Read", "Step after a conflict (then Apply, Answer)"),
    (
        "Action::Replace(Acquire)",
        "Step on a free or expired Lease",
    ),
    ("Action::Replace(Renew)", "Step while leading"),
    (
        "Action::Replace(Release)",
        "Step after Prefer (hand-off); Shutdown sends release_action's",
    ),
    ("Action::Wait", "Step, then Tick"),
    ("Observation::Present", "Deliver, Relist, Answer to a read"),
    ("Failure::Stale", "Answer with a conflict"),
    ("Failure::Transient", "Timeout, Fail (Slow, then Timeout)"),
    ("LeadEvent::Started", "Answer to an acquire"),
    (
        "EndReason::DeadlinePassed",
        "Step at the deadline, late Answer",
    ),
    ("EndReason::Released", "Step that sends a release"),
    ("EndReason::Shutdown", "Shutdown"),
];

/// Machine variants the model never produces, and why.
pub const NOT_MODELLED: &[(&str, &str)] = &[
    (
        "Action::Create",
        "the Lease exists from the start and is never deleted; the deletion rules are the \
         machine's table tests (missing_lease_rules)",
    ),
    ("Action::Replace(Create)", "the machine never asks for it"),
    ("Observation::Missing", "as Action::Create"),
    (
        "EndReason::Superseded",
        "only a write by someone else during an unexpired term ends it so: by hand, or the \
         controller clearing a dead holder (not modelled); no candidate's write can, which is \
         the safety property (the driver ends an expired term before it looks at the watch)",
    ),
];

/// The variants a run of the model drove.
#[derive(Debug, Default, Clone)]
pub struct Seen(pub BTreeSet<&'static str>);

impl Seen {
    pub fn action(&mut self, action: &Action) {
        self.0.insert(match action {
            Action::Read => "Action::Read",
            Action::Create(_) => "Action::Create",
            Action::Replace { kind, .. } => match kind {
                WriteKind::Acquire => "Action::Replace(Acquire)",
                WriteKind::Renew => "Action::Replace(Renew)",
                WriteKind::Release => "Action::Replace(Release)",
                WriteKind::Create => "Action::Replace(Create)",
            },
            Action::Wait(_) => "Action::Wait",
        });
    }

    pub fn observation(&mut self, obs: &Observation) {
        self.0.insert(match obs {
            Observation::Present(_) => "Observation::Present",
            Observation::Missing { .. } => "Observation::Missing",
        });
    }

    pub fn failure(&mut self, failure: Failure) {
        self.0.insert(match failure {
            Failure::Stale => "Failure::Stale",
            Failure::Transient => "Failure::Transient",
        });
    }

    pub fn lead_event(&mut self, ev: &LeadEvent) {
        self.0.insert(match ev {
            LeadEvent::Started { .. } => "LeadEvent::Started",
            LeadEvent::Ended { reason, .. } => match reason {
                EndReason::Released => "EndReason::Released",
                EndReason::DeadlinePassed => "EndReason::DeadlinePassed",
                EndReason::Superseded => "EndReason::Superseded",
                EndReason::Shutdown => "EndReason::Shutdown",
            },
        });
    }
}
