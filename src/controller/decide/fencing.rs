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
}

impl FencingState {
    pub fn fenced(self) -> bool {
        self == Self::Fenced
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
/// by UID, sorted and comma separated, as the policy reads them.
pub fn members(views: &[PodView]) -> String {
    let mut uids: Vec<&str> = views
        .iter()
        .filter(|p| p.injected && !p.start_activation && !p.finished && !p.uid.is_empty())
        .map(|p| p.uid.as_str())
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids.join(",")
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
            start_activation: activation == "start",
            fenced: activation == "api",
            finished,
            ..PodView::default()
        }
    }

    #[test]
    fn members_are_the_live_api_and_process_pods_sorted() {
        let views = [
            view("c", "api", false),
            view("a", "process", false),
            view("b", "start", false),
            view("d", "none", false),
            view("e", "api", true),
            view("a", "process", false),
        ];
        assert_eq!(members(&views), "a,c");
        assert_eq!(members(&[]), "");
    }
}
