//! Pure decisions of `zen-lead handoff`: which pod takes over, or why none
//! may. No I/O; table-tested.

use crate::controller::decide::{PodView, preference};

/// Why a hand-off is refused. Each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "pod {pod} is not in pool {pool}: no pod labelled zen-lead/pool={pool} in namespace \
         {namespace} has that name (kubectl get pods -n {namespace} -l zen-lead/pool={pool})"
    )]
    NotInPool {
        pod: String,
        pool: String,
        namespace: String,
    },

    #[error("pod {pod} already leads pool {pool}; nothing to do")]
    AlreadyLeads { pod: String, pool: String },

    #[error("pod {pod} is not a working candidate of pool {pool}: {why}")]
    NotCandidate {
        pod: String,
        pool: String,
        why: String,
    },

    #[error(
        "pool {pool} has no other working candidate to hand off to (pods whose zen-lead-agent \
         runs and whose zen-lead.io/candidate condition is True)"
    )]
    NoCandidate { pool: String },

    #[error(
        "pool {pool}'s leader {pod} runs in start activation: nothing in its pod can stop its \
         app, so handing over now would run two apps at once. Delete the leader pod instead \
         (kubectl delete pod {pod} -n {namespace}): its app stops first, then its agent \
         releases and a follower takes over. Pools in process activation hand over in place"
    )]
    StartActivation {
        pod: String,
        pool: String,
        namespace: String,
    },

    #[error(
        "pool {pool} is paused (spec.paused: true): no hand-off while paused, the leader keeps \
         leading. Resume it first with `zen-lead resume {pool} -n {namespace}`"
    )]
    Paused { pool: String, namespace: String },
}

/// Refuses a hand-off while the pool is paused: by its policy, or still by
/// its Lease (the controller has not yet lifted a pause there, and the
/// holder ignores hand-offs until it does).
pub fn not_paused(
    policy_paused: bool,
    lease_paused: bool,
    pool: &str,
    namespace: &str,
) -> Result<(), Refusal> {
    if policy_paused || lease_paused {
        return Err(Refusal::Paused {
            pool: pool.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    Ok(())
}

/// Why `pod` cannot take over, or `None` when it can. `node_ready` says
/// whether a node is Ready.
pub fn unfit(pod: &PodView, node_ready: &dyn Fn(&str) -> bool) -> Option<String> {
    if pod.terminating {
        return Some("it is terminating".to_owned());
    }
    if pod.finished {
        return Some("it has finished".to_owned());
    }
    if pod.node.as_deref().is_some_and(|n| !node_ready(n)) {
        return Some(format!(
            "its node {} is NotReady",
            pod.node.as_deref().unwrap_or_default()
        ));
    }
    if !pod.injected {
        return Some(
            "it runs without the zen-lead-agent container (admitted while the webhook was down)"
                .to_owned(),
        );
    }
    if !pod.agent_started {
        return Some("its zen-lead-agent container is not running yet".to_owned());
    }
    if pod.identity.is_none() {
        return Some(
            "its candidate identity is unknown (no zen-lead/identity annotation)".to_owned(),
        );
    }
    match &pod.candidate {
        Some((status, reason)) if status != "True" => Some(format!(
            "its zen-lead.io/candidate condition is False ({reason})"
        )),
        _ => None,
    }
}

/// The pod to hand leadership to. `to`: the one the user named; else the
/// best-ranked Ready candidate by `zen-lead/priority` (then the lowest
/// identity), else the best-ranked of all candidates: the controller's
/// order, so the answer is predictable. Zones are not ranked here (reading Nodes would
/// need cluster-wide rights the command does not ask for).
pub fn target<'a>(
    pods: &'a [PodView],
    pool: &str,
    namespace: &str,
    holder: Option<&str>,
    to: Option<&str>,
    node_ready: &dyn Fn(&str) -> bool,
) -> Result<&'a PodView, Refusal> {
    let leads = |p: &PodView| holder.is_some() && p.identity.as_deref() == holder;
    // A start leader's agent would release at once while its app runs on
    // until the pod is deleted: the successor's app would start beside it.
    if let Some(leader) = pods.iter().find(|p| leads(p) && p.start_activation()) {
        return Err(Refusal::StartActivation {
            pod: leader.name.clone(),
            pool: pool.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    if let Some(name) = to {
        let pod = pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Refusal::NotInPool {
                pod: name.to_owned(),
                pool: pool.to_owned(),
                namespace: namespace.to_owned(),
            })?;
        if leads(pod) {
            return Err(Refusal::AlreadyLeads {
                pod: name.to_owned(),
                pool: pool.to_owned(),
            });
        }
        return match unfit(pod, node_ready) {
            Some(why) => Err(Refusal::NotCandidate {
                pod: name.to_owned(),
                pool: pool.to_owned(),
                why,
            }),
            None => Ok(pod),
        };
    }
    let fit: Vec<&PodView> = pods
        .iter()
        .filter(|p| !leads(p) && unfit(p, node_ready).is_none())
        .collect();
    let best = |ready_only: bool| {
        preference::best_pod(fit.iter().copied().filter(|p| !ready_only || p.ready))
    };
    best(true)
        .or_else(|| best(false))
        .ok_or_else(|| Refusal::NoCandidate {
            pool: pool.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::decide::fixtures;

    /// A working candidate whose readiness gate the controller set True.
    fn pod(name: &str) -> PodView {
        let mut p = fixtures::pod(name);
        p.candidate = Some(("True".to_owned(), "AgentStarted".to_owned()));
        p
    }

    fn ready(_: &str) -> bool {
        true
    }

    fn pick<'a>(pods: &'a [PodView], to: Option<&str>) -> Result<&'a str, Refusal> {
        target(pods, "p", "ns", Some("a_id"), to, &ready).map(|p| p.name.as_str())
    }

    #[test]
    fn a_paused_pool_refuses_and_says_how_to_resume() {
        // (policy paused, Lease still paused, refused)
        for (policy, lease, refused) in [
            (false, false, false),
            (true, false, true),
            (true, true, true),
            (false, true, true),
        ] {
            let got = not_paused(policy, lease, "db", "team");
            assert_eq!(got.is_err(), refused, "{policy} {lease}");
            if let Err(e) = got {
                let text = e.to_string();
                assert!(text.contains("pool db is paused"), "{text}");
                assert!(text.contains("zen-lead resume db -n team"), "{text}");
            }
        }
    }

    #[test]
    fn named_pods_are_checked_and_refusals_say_why() {
        let mut gone = pod("gone");
        gone.terminating = true;
        let mut bare = pod("bare");
        bare.injected = false;
        let mut waiting = pod("waiting");
        waiting.agent_started = false;
        let mut twin = pod("twin");
        twin.candidate = Some(("False".to_owned(), "DuplicateIdentity".to_owned()));
        let pods = [pod("a"), pod("b"), gone, bare, waiting, twin];
        assert_eq!(pick(&pods, Some("b")), Ok("b"));
        let cases = [
            ("nope", "is not in pool p"),
            ("a", "already leads"),
            ("gone", "terminating"),
            ("bare", "without the zen-lead-agent"),
            ("waiting", "not running yet"),
            ("twin", "False (DuplicateIdentity)"),
        ];
        for (name, says) in cases {
            let err = pick(&pods, Some(name)).expect_err(name).to_string();
            assert!(err.contains(says), "{name}: {err}");
            assert!(
                err.contains(name),
                "{name}: the message names the pod: {err}"
            );
        }
    }

    #[test]
    fn without_a_name_the_lowest_ready_candidate_other_than_the_holder() {
        let mut c = pod("c");
        c.ready = false;
        let pods = [pod("a"), c.clone(), pod("d"), pod("b")];
        assert_eq!(pick(&pods, None), Ok("b"));
        // Nobody Ready: any candidate.
        let mut d = pod("d");
        d.ready = false;
        assert_eq!(pick(&[pod("a"), d, c], None), Ok("c"));
        // Only the holder: refused.
        let err = pick(&[pod("a")], None).expect_err("no one else");
        assert_eq!(err, Refusal::NoCandidate { pool: "p".into() });
    }

    #[test]
    fn without_a_name_the_highest_priority_ready_candidate() {
        let mut c = pod("c");
        c.preference.priority = 5;
        let mut d = pod("d");
        d.preference.priority = 9;
        d.ready = false;
        assert_eq!(pick(&[pod("a"), pod("b"), c, d], None), Ok("c"));
    }

    #[test]
    fn a_start_leader_is_never_handed_off_from_since_its_app_would_run_on() {
        let mut a = pod("a");
        a.activation = Some(crate::api::Activation::Start);
        let mut b = pod("b");
        b.activation = Some(crate::api::Activation::Start);
        let pods = [a, b.clone()];
        for to in [None, Some("b")] {
            let err = pick(&pods, to).expect_err("a start leader");
            assert_eq!(
                err,
                Refusal::StartActivation {
                    pod: "a".into(),
                    pool: "p".into(),
                    namespace: "ns".into()
                }
            );
            let text = err.to_string();
            assert!(text.contains("kubectl delete pod a -n ns"), "{text}");
        }
        // No holder yet: nothing runs that could overlap.
        let none = target(&pods, "p", "ns", None, Some("b"), &ready).map(|p| p.name.as_str());
        assert_eq!(none, Ok("b"));
    }
}
