//! Maintenance pause (`spec.paused`), free of I/O: what a paused pool is
//! (led, or waiting without a leader), which of the controller's own
//! actions it holds back, what its `Paused` condition says, and which Event
//! marks a change.
//!
//! The agents keep the pause themselves (the Lease's `zen-lead.io/paused`,
//! see [`crate::election::machine`]); the controller's part is not to move
//! leadership or pods behind their back: no clearing of a dead holder, no
//! hand-off, no scaleDown change, no deletion of a deposed pod.

use super::app_failure::AppVerdict;
use super::{Failover, ScalePlan};
use crate::api::LeaderPolicyStatus;
use crate::api::keys::conditions::{self, reasons};

/// A pool's pause as the status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pause {
    Running,
    /// Paused while `leader` (a pod name) leads: it keeps leading as long
    /// as it renews.
    Led {
        leader: String,
    },
    /// Paused without a leader (the holder died or released): nobody takes
    /// over until the pool is resumed.
    Leaderless,
}

impl Pause {
    /// The state for `paused` and the pod that leads now.
    pub fn of(paused: bool, leader: Option<&str>) -> Pause {
        match (paused, leader) {
            (false, _) => Pause::Running,
            (true, Some(leader)) => Pause::Led {
                leader: leader.to_owned(),
            },
            (true, None) => Pause::Leaderless,
        }
    }

    pub fn paused(&self) -> bool {
        !matches!(self, Pause::Running)
    }

    /// The `Paused` condition: (status, reason, message).
    pub fn condition(&self, pool: &str) -> (bool, &'static str, String) {
        match self {
            Pause::Running => (
                false,
                reasons::NOT_PAUSED,
                "not paused: fail-over, hand-offs and scaleDown run".to_owned(),
            ),
            Pause::Led { leader } => (
                true,
                reasons::PAUSED,
                format!(
                    "paused: {leader} keeps leading while it renews; no fail-over, hand-off, \
                     scaleDown change or deposed-pod deletion until resumed (zen-lead resume \
                     {pool})"
                ),
            ),
            Pause::Leaderless => (true, reasons::PAUSED_WITHOUT_LEADER, leaderless(pool)),
        }
    }
}

/// The message of a paused pool without a leader (the `Paused` and
/// `LeaderElected` conditions and the Event say the same).
pub fn leaderless(pool: &str) -> String {
    format!(
        "paused: the pool has no leader and will not elect one until resumed (zen-lead resume \
         {pool})"
    )
}

/// The fail-over decision as a paused pool takes it: none. A dead holder
/// stays named in the Lease (nobody may take it anyway), a terminating one
/// is not asked to hand over.
pub fn failover(paused: bool, decided: Failover) -> Failover {
    if paused { Failover::Nothing } else { decided }
}

/// The app-failure verdict as a paused pool takes it: no hand-off, and no
/// Lease write on its behalf. A leader whose app still fails after the
/// resume hands over then.
pub fn app_verdict(paused: bool, verdict: AppVerdict) -> AppVerdict {
    if paused {
        AppVerdict::Wait(None)
    } else {
        verdict
    }
}

/// The scaleDown plan as a paused pool takes it: its outcome (what the
/// ScaledDown condition reports), none of its writes. Replica counts stay
/// as they are until the resume; deleting the policy still restores them
/// (that path does not go through here).
pub fn scale(paused: bool, plan: ScalePlan) -> ScalePlan {
    if paused {
        ScalePlan {
            actions: Vec::new(),
            ..plan
        }
    } else {
        plan
    }
}

/// An Event to publish about the pause: (warning, reason, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The Event for a change of the `Paused` condition's reason since the
/// last stored status: paused, leaderless while paused, resumed. A pool
/// never paused says nothing.
pub fn event(
    previous: Option<&LeaderPolicyStatus>,
    next: &Pause,
    pool: &str,
) -> Option<PauseEvent> {
    let before = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::PAUSED))
        .map(|c| c.reason.as_str())
        .unwrap_or(reasons::NOT_PAUSED);
    let (_, reason, message) = next.condition(pool);
    if before == reason {
        return None;
    }
    let (warning, reason) = match next {
        Pause::Running => (false, "Resumed"),
        Pause::Led { .. } => (false, "Paused"),
        Pause::Leaderless => (true, "PausedWithoutLeader"),
    };
    let message = match next {
        Pause::Running => "resumed: fail-over, hand-offs and scaleDown run again".to_owned(),
        _ => message,
    };
    Some(PauseEvent {
        warning,
        reason,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::decide::HolderGone;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn stored(reason: Option<&str>) -> LeaderPolicyStatus {
        LeaderPolicyStatus {
            conditions: reason
                .map(|r| Condition {
                    type_: conditions::PAUSED.to_owned(),
                    status: if r == reasons::NOT_PAUSED {
                        "False"
                    } else {
                        "True"
                    }
                    .to_owned(),
                    reason: r.to_owned(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                })
                .into_iter()
                .collect(),
            ..LeaderPolicyStatus::default()
        }
    }

    #[test]
    fn state_and_condition() {
        let cases = [
            (false, Some("a"), Pause::Running, false, reasons::NOT_PAUSED),
            (false, None, Pause::Running, false, reasons::NOT_PAUSED),
            (
                true,
                Some("a"),
                Pause::Led {
                    leader: "a".to_owned(),
                },
                true,
                reasons::PAUSED,
            ),
            (
                true,
                None,
                Pause::Leaderless,
                true,
                reasons::PAUSED_WITHOUT_LEADER,
            ),
        ];
        for (paused, leader, want, status, reason) in cases {
            let got = Pause::of(paused, leader);
            assert_eq!(got, want, "{paused} {leader:?}");
            assert_eq!(got.paused(), paused);
            let (s, r, message) = got.condition("db");
            assert_eq!((s, r), (status, reason), "{got:?}");
            assert!(message.starts_with(if paused { "paused" } else { "not" }));
        }
        let (_, _, message) = Pause::Leaderless.condition("db");
        assert_eq!(
            message,
            "paused: the pool has no leader and will not elect one until resumed (zen-lead \
             resume db)"
        );
    }

    #[test]
    fn a_paused_pool_holds_back_fail_over_and_hand_offs() {
        let decisions = [
            Failover::Nothing,
            Failover::HandOff { to: "b".to_owned() },
            Failover::Expire {
                why: HolderGone::PodGone,
            },
            Failover::Expire {
                why: HolderGone::NodeNotReady,
            },
        ];
        for decided in decisions {
            assert_eq!(failover(true, decided.clone()), Failover::Nothing);
            assert_eq!(failover(false, decided.clone()), decided);
        }
        let verdicts = [
            AppVerdict::HandOff {
                to: "b".to_owned(),
                failing_for: std::time::Duration::from_secs(20),
                problem: "app not Ready".to_owned(),
            },
            AppVerdict::ClearPreferred,
            AppVerdict::Wait(Some(std::time::Duration::from_secs(3))),
        ];
        for verdict in verdicts {
            assert_eq!(app_verdict(true, verdict.clone()), AppVerdict::Wait(None));
            assert_eq!(app_verdict(false, verdict.clone()), verdict);
        }
    }

    #[test]
    fn a_paused_pool_changes_no_replica_count() {
        use crate::controller::decide::{ScaleAction, ScaleOutcome, WorkloadKind};
        let plan = ScalePlan {
            actions: vec![
                ScaleAction::Remember {
                    kind: WorkloadKind::Deployment,
                    name: "web".to_owned(),
                    original: 3,
                },
                ScaleAction::Scale {
                    kind: WorkloadKind::Deployment,
                    name: "web".to_owned(),
                    replicas: 1,
                },
            ],
            outcome: Some(ScaleOutcome::Scaled("one replica".to_owned())),
        };
        let held = scale(true, plan.clone());
        assert!(held.actions.is_empty());
        assert_eq!(held.outcome, plan.outcome);
        assert_eq!(scale(false, plan.clone()), plan);
    }

    #[test]
    fn events_mark_each_change_once() {
        let led = Pause::Led {
            leader: "a".to_owned(),
        };
        // (stored Paused reason, next state, expected event reason)
        let cases: [(Option<&str>, &Pause, Option<&str>); 9] = [
            (None, &Pause::Running, None),
            (Some(reasons::NOT_PAUSED), &Pause::Running, None),
            (None, &led, Some("Paused")),
            (Some(reasons::NOT_PAUSED), &led, Some("Paused")),
            (Some(reasons::PAUSED), &led, None),
            (
                Some(reasons::PAUSED),
                &Pause::Leaderless,
                Some("PausedWithoutLeader"),
            ),
            (
                Some(reasons::PAUSED_WITHOUT_LEADER),
                &Pause::Leaderless,
                None,
            ),
            (
                Some(reasons::PAUSED_WITHOUT_LEADER),
                &Pause::Running,
                Some("Resumed"),
            ),
            (Some(reasons::PAUSED), &Pause::Running, Some("Resumed")),
        ];
        for (before, next, want) in cases {
            let status = stored(before);
            let got = event(Some(&status), next, "db");
            assert_eq!(
                got.as_ref().map(|e| e.reason),
                want,
                "{before:?} -> {next:?}"
            );
            if let Some(e) = got {
                assert_eq!(e.warning, e.reason == "PausedWithoutLeader");
                assert!(!e.message.is_empty());
            }
        }
        let leaderless = event(None, &Pause::Leaderless, "db").expect("event");
        assert!(leaderless.message.contains("no leader"), "{leaderless:?}");
    }
}
