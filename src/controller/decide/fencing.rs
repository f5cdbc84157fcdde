//! Server-side fencing decisions, free of I/O: whether a pool is fenced on
//! the server and which of its pods the fence lists.

use super::PodView;
use crate::api::{Activation, LeaderPolicy};

/// Whether one pool is fenced on the server, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencingState {
    Fenced,
    /// Off by the policy's `serverSideFencing: false`, or by the cluster's
    /// default.
    Disabled {
        by_policy: bool,
    },
    /// On, but the fencing policy or its binding is not installed.
    NotInstalled,
    /// `activation: start`: followers never run the app, and a deposed
    /// leader is deleted (not fenced) by the controller.
    StartActivation,
    /// On and installed, but the binding's namespaceSelector could not be
    /// made to cover the pool's namespace (see
    /// [`super::fencing_scope`]). The Lease is still marked, so the fence
    /// holds as soon as the binding covers the namespace.
    NotCovered,
}

impl FencingState {
    pub fn fenced(self) -> bool {
        self == Self::Fenced
    }

    /// The Lease carries the fencing label and member list: whenever the
    /// pool should be fenced, even while the binding's scope is unconfirmed
    /// (an error never takes a pool out of the fence).
    pub fn marks_lease(self) -> bool {
        matches!(self, Self::Fenced | Self::NotCovered)
    }
}

/// What applies to `policy`'s pool (pure).
pub fn state(policy: &LeaderPolicy, default_on: bool, installed: bool) -> FencingState {
    let on = policy.spec.server_side_fencing.unwrap_or(default_on);
    if !on {
        FencingState::Disabled {
            by_policy: policy.spec.server_side_fencing.is_some(),
        }
    } else if policy.spec.activation == Activation::Start {
        FencingState::StartActivation
    } else if !installed {
        FencingState::NotInstalled
    } else {
        FencingState::Fenced
    }
}

/// The pods the fence applies to: the pool's `api` and `process` pods that
/// may still act (terminating ones included: they run until they are gone),
/// and every pool pod known to run without the agent (`uninjected`: admitted
/// while the webhook was down; no agent, so it can never hold the Lease and
/// every write of its is refused), by UID, sorted and comma separated, as
/// the policy reads them.
pub fn members<'a>(views: &'a [PodView], uninjected: impl IntoIterator<Item = &'a str>) -> String {
    let mut uids: Vec<&str> = views
        .iter()
        .filter(|p| !p.start_activation() && !p.finished && !p.uid.is_empty())
        .map(|p| p.uid.as_str())
        .chain(uninjected.into_iter().filter(|u| !u.is_empty()))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids.join(",")
}

/// One read of the fencing policy and its binding, as [`PolicyPresence`]
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRead {
    /// Both exist.
    Present,
    /// The API server answered that the policy or the binding does not
    /// exist (404).
    Absent,
    /// No answer to go by: a transport error, a timeout, a 5xx, a 429, a
    /// 403. Says nothing about the cluster, only about reaching it.
    Failed,
}

/// How many [`PolicyRead::Absent`] answers in a row (reads that failed
/// between them neither count nor break the run) confirm that the fencing
/// policy is gone.
pub const ABSENT_TO_CONFIRM: u8 = 3;

/// What the controller believes about the fencing policy across reads.
///
/// Fails closed: fencing turns off only once the API server has answered
/// "not found" [`ABSENT_TO_CONFIRM`] times in a row. A failed read keeps the
/// last belief, and before any confirmed answer the policy counts as
/// installed, because turning fencing off strips every fenced pool's Lease
/// (two writes per pool, during the brownout that made the read fail)
/// while keeping it on for a policy that is missing only labels Leases that
/// nothing selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyPresence {
    /// The last confirmed answer; `None` before the first.
    confirmed: Option<bool>,
    /// `Absent` answers since the last `Present`.
    absent: u8,
    /// The last read failed.
    failed: bool,
}

impl PolicyPresence {
    /// The belief after `read`.
    pub fn observe(self, read: PolicyRead) -> Self {
        match read {
            PolicyRead::Present => Self {
                confirmed: Some(true),
                absent: 0,
                failed: false,
            },
            PolicyRead::Absent => {
                let absent = self.absent.saturating_add(1);
                Self {
                    confirmed: if absent >= ABSENT_TO_CONFIRM {
                        Some(false)
                    } else {
                        self.confirmed
                    },
                    absent,
                    failed: false,
                }
            }
            PolicyRead::Failed => Self {
                failed: true,
                ..self
            },
        }
    }

    /// Whether pools that want fencing are fenced.
    pub fn installed(self) -> bool {
        self.confirmed.unwrap_or(true)
    }

    /// The last confirmed answer; `None` before the first.
    pub fn known(self) -> Option<bool> {
        self.confirmed
    }

    /// Nothing to confirm: the next read can wait the long interval. Not
    /// settled while an absence is being confirmed, after a failed read, or
    /// before the first answer.
    pub fn settled(self) -> bool {
        !self.failed
            && match self.confirmed {
                Some(true) => self.absent == 0,
                Some(false) => true,
                None => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LeaderPolicySpec;

    fn policy(activation: Activation, setting: Option<bool>) -> LeaderPolicy {
        LeaderPolicy::new(
            "p",
            LeaderPolicySpec {
                activation,
                server_side_fencing: setting,
                ..LeaderPolicySpec::default()
            },
        )
    }

    #[test]
    fn the_policy_setting_wins_over_the_default_and_start_pools_are_not_fenced() {
        use FencingState::*;
        let cases = [
            // (activation, setting, default, installed) -> state
            (Activation::Api, None, true, true, Fenced),
            (Activation::Process, None, true, true, Fenced),
            (Activation::Auto, None, true, true, Fenced),
            (
                Activation::Api,
                None,
                false,
                true,
                Disabled { by_policy: false },
            ),
            (Activation::Api, Some(true), false, true, Fenced),
            (
                Activation::Api,
                Some(false),
                true,
                true,
                Disabled { by_policy: true },
            ),
            (Activation::Api, None, true, false, NotInstalled),
            (Activation::Start, None, true, true, StartActivation),
            (
                Activation::Start,
                Some(false),
                true,
                true,
                Disabled { by_policy: true },
            ),
        ];
        for (activation, setting, default_on, installed, want) in cases {
            assert_eq!(
                state(&policy(activation, setting), default_on, installed),
                want,
                "{activation:?} {setting:?} default {default_on} installed {installed}"
            );
        }
    }

    fn view(uid: &str, activation: &str, finished: bool) -> PodView {
        PodView {
            name: format!("pod-{uid}"),
            uid: uid.to_owned(),
            injected: activation != "none",
            activation: super::super::wired_activation(activation),
            finished,
            ..PodView::default()
        }
    }

    #[test]
    fn members_are_the_live_api_and_process_pods_and_the_uninjected_sorted() {
        let views = [
            view("c", "api", false),
            view("a", "process", false),
            view("b", "start", false),
            view("d", "none", false),
            view("e", "api", true),
            view("a", "process", false),
        ];
        assert_eq!(members(&views, []), "a,c,d");
        assert_eq!(members(&[], []), "");
        // Annotation-only pods the webhook never saw are listed too.
        assert_eq!(members(&views, ["f", "", "a"]), "a,c,d,f");
    }

    #[test]
    fn fencing_turns_off_only_after_three_not_founds_in_a_row() {
        use PolicyRead::{Absent as A, Failed as F, Present as P};
        let cases: &[(&[PolicyRead], bool, &str)] = &[
            (&[], true, "no answer yet: fail closed"),
            (&[F], true, "only failures at start: fail closed"),
            (&[F, F, F, F], true, "failures never confirm an absence"),
            (&[A], true, "one 404 at start is not a confirmation"),
            (&[A, A], true, "two 404s are not"),
            (&[A, A, A], false, "three 404s in a row confirm"),
            (&[P], true, "installed"),
            (&[P, F], true, "a failure keeps installed"),
            (&[P, F, F, F, F, F], true, "a brownout keeps installed"),
            (&[P, A, A], true, "two 404s after installed do not flip it"),
            (&[P, A, A, A], false, "three 404s after installed do"),
            (
                &[P, A, F, A, F, A],
                false,
                "failures between 404s neither count nor break the run",
            ),
            (
                &[P, A, A, P, A, A],
                true,
                "a found answer restarts the count",
            ),
            (&[A, A, A, F], false, "a failure keeps not installed"),
            (&[A, A, A, A, A], false, "more 404s stay not installed"),
            (
                &[A, A, A, P],
                true,
                "installing shows at the first found answer",
            ),
        ];
        for (reads, want, why) in cases {
            let belief = reads
                .iter()
                .fold(PolicyPresence::default(), |b, r| b.observe(*r));
            assert_eq!(belief.installed(), *want, "{why}: {reads:?}");
        }
    }

    #[test]
    fn the_belief_is_rechecked_soon_until_it_is_settled() {
        use PolicyRead::{Absent as A, Failed as F, Present as P};
        let cases: &[(&[PolicyRead], bool)] = &[
            (&[], false),
            (&[P], true),
            (&[P, F], false),
            (&[P, F, P], true),
            (&[P, A], false),
            (&[P, A, A, A], true),
            (&[A, A, A, F], false),
        ];
        for (reads, want) in cases {
            let belief = reads
                .iter()
                .fold(PolicyPresence::default(), |b, r| b.observe(*r));
            assert_eq!(belief.settled(), *want, "{reads:?}");
        }
    }
}
