use super::fixtures::pod;
use super::*;
use crate::api::keys::conditions::{self, reasons};
use crate::api::{FollowerMode, LeaderPolicyStatus, Phase};
use k8s_openapi::jiff::Timestamp;

fn ready(_: &str) -> bool {
    true
}

fn not_ready(n: &str) -> bool {
    n != "n1"
}

fn held_by(id: &str) -> LeaseView {
    LeaseView {
        holder: Some(id.to_owned()),
        ..LeaseView::default()
    }
}

#[test]
fn which_activations_stop_their_app_before_a_release() {
    // The webhook's `zen-lead.io/activation` annotation decides whether a
    // terminating holder may hand off at once (see `failover`).
    for (activation, fenced, stops) in [
        (Some("api"), true, true),
        (Some("process"), false, true),
        (Some("start"), false, false),
        (None, false, false),
    ] {
        let mut meta = serde_json::json!({"name": "a", "uid": "u"});
        if let Some(a) = activation {
            meta["annotations"] = serde_json::json!({ ACTIVATION_ANNOTATION: a });
        }
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": meta, "spec": {"containers": [{"name": "app"}]}
        }))
        .expect("pod");
        let v = PodView::from_pod(&p, IdentityStrategy::Pod);
        assert_eq!(
            (v.fenced(), v.stops_before_release()),
            (fenced, stops),
            "{activation:?}"
        );
    }
}

#[test]
fn pod_view_reads_agent_and_identity() {
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "a", "uid": "1234abcd-ef00-1111", "labels": {"zen-lead.io/role": "leader", "pod-template-hash": "5f6"},
            "annotations": {"zen-lead/identity": "custom-a"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5f6", "uid": "x", "controller": true}]},
        "spec": {"nodeName": "n1", "initContainers": [{"name": "zen-lead-agent", "restartPolicy": "Always",
            "env": [{"name": "ZEN_LEAD_IDENTITY_STRATEGY", "value": "pod"}]}], "containers": [{"name": "app"}]},
        "status": {"phase": "Running",
            "initContainerStatuses": [{"name": "zen-lead-agent", "image": "", "imageID": "", "ready": false, "restartCount": 0, "started": true, "state": {"running": {}}}],
            "conditions": [{"type": "zen-lead.io/candidate", "status": "True", "reason": "AgentStarted"}]}
    }))
    .expect("pod");
    let v = PodView::from_pod(&p, IdentityStrategy::Pod);
    assert!(v.injected && v.agent_started && !v.finished && !v.terminating);
    assert_eq!(v.identity.as_deref(), Some("a_1234abcd"));
    assert_eq!(v.role_label.as_deref(), Some("leader"));
    assert_eq!(
        v.candidate,
        Some(("True".to_owned(), "AgentStarted".to_owned()))
    );
    assert_eq!(
        pod_workload(&v),
        Some((WorkloadKind::Deployment, "web".to_owned()))
    );
    // The agent's own strategy wins over the policy's: it is what the agent
    // writes into the Lease.
    let c = PodView::from_pod(&p, IdentityStrategy::Custom);
    assert_eq!(c.identity.as_deref(), Some("a_1234abcd"));
    assert_eq!(c.agent_strategy, Some(IdentityStrategy::Pod));
    // An agent injected without the variable ran with `auto`: custom
    // whenever the annotation is set.
    let mut legacy = p.clone();
    if let Some(agent) = legacy
        .spec
        .as_mut()
        .and_then(|s| s.init_containers.as_mut())
        .and_then(|c| c.first_mut())
    {
        agent.env = None;
    }
    let l = PodView::from_pod(&legacy, IdentityStrategy::Pod);
    assert_eq!(l.identity.as_deref(), Some("custom-a"));
    assert_eq!(l.agent_strategy, None);
    // No agent at all: the policy's strategy.
    let mut bare = legacy.clone();
    if let Some(spec) = bare.spec.as_mut() {
        spec.init_containers = None;
    }
    assert_eq!(
        PodView::from_pod(&bare, IdentityStrategy::Pod)
            .identity
            .as_deref(),
        Some("a_1234abcd")
    );
}

#[test]
fn the_lease_holder_is_the_pod_with_identity_and_instance() {
    let mut a = pod("a");
    let mut b = pod("b");
    a.identity = Some("worker".into());
    b.identity = Some("worker".into());
    let pods = vec![a, b];
    let mut lease = held_by("worker");
    lease.holder_instance = Some("b-uid".into());
    assert_eq!(
        holder_pod(&lease, &pods).map(|p| p.name.as_str()),
        Some("b")
    );
    // Written by something that records no instance: by identity alone.
    lease.holder_instance = None;
    assert_eq!(
        holder_pod(&lease, &pods).map(|p| p.name.as_str()),
        Some("a")
    );
    // An instance no pool pod has: the holder pod is gone.
    lease.holder_instance = Some("gone-uid".into());
    assert_eq!(holder_pod(&lease, &pods), None);
}

#[test]
fn identity_conflicts_keep_the_holder_and_report_the_rest() {
    let named = |name: &str, identity: &str| PodView {
        identity: Some(identity.to_owned()),
        ..pod(name)
    };
    let mut dead = named("d", "worker");
    dead.terminating = true;
    let pods = vec![
        named("a", "worker"),
        named("b", "worker"),
        named("c", "other"),
        dead,
        named("e", "worker"),
    ];
    // Nobody holds: the first by name keeps the identity.
    let pairs = |got: Vec<IdentityConflict>| -> Vec<(String, String)> {
        got.into_iter().map(|c| (c.pod, c.keeps)).collect()
    };
    let want = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    assert_eq!(
        pairs(identity_conflicts(&pods, None, &ready)),
        want(&[("b", "a"), ("e", "a")])
    );
    // The holder keeps it, whatever its name.
    let mut lease = held_by("worker");
    lease.holder_instance = Some("e-uid".into());
    assert_eq!(
        pairs(identity_conflicts(&pods, Some(&lease), &ready)),
        want(&[("a", "e"), ("b", "e")])
    );
    // Unique identities among the live pods: nothing to report.
    assert!(identity_conflicts(&pods[2..4], None, &ready).is_empty());
}

#[test]
fn identity_problems_make_a_pod_no_candidate_and_say_why() {
    let p = pod("b");
    let conflict = IdentityConflict {
        pod: "b".into(),
        keeps: "a".into(),
        identity: "worker".into(),
    };
    let c = pool_candidate_condition("pool", &p, IdentityStrategy::Pod, Some(&conflict));
    assert!(!c.status);
    assert_eq!(c.reason, DUPLICATE_IDENTITY);
    assert!(
        c.message.contains("pod a") && c.message.contains("pod b"),
        "{}",
        c.message
    );
    // The policy says custom, the agent was started with pod.
    let c = pool_candidate_condition("pool", &p, IdentityStrategy::Custom, None);
    assert!(!c.status);
    assert_eq!(c.reason, IDENTITY_STRATEGY_MISMATCH);
    assert!(c.message.contains("re-created"), "{}", c.message);
    // Nothing wrong: the plain candidate condition.
    let c = pool_candidate_condition("pool", &p, IdentityStrategy::Pod, None);
    assert_eq!(c, candidate_condition(true, "pool", &p));
    // A pod whose agent has not started says that first.
    let mut waiting = pod("w");
    waiting.agent_started = false;
    let c = pool_candidate_condition("pool", &waiting, IdentityStrategy::Custom, Some(&conflict));
    assert_eq!(c.reason, "AgentNotStarted");
}

/// (what, holder pod, pool pods, node readiness, confirmed gone, expected)
type FailoverCase = (
    &'static str,
    Option<PodView>,
    Vec<PodView>,
    fn(&str) -> bool,
    bool,
    Failover,
);

#[test]
fn failover_table() {
    let mut terminating = pod("a");
    terminating.terminating = true;
    let mut finished = pod("a");
    finished.finished = true;
    let b = pod("b");
    let c = pod("c");
    let mut b_elsewhere = pod("b");
    b_elsewhere.node = Some("n2".to_owned());
    let lease = held_by("a_id");
    let cases: Vec<FailoverCase> = vec![
        (
            "healthy holder",
            Some(pod("a")),
            vec![pod("a"), b.clone()],
            ready,
            false,
            Failover::Nothing,
        ),
        (
            "holder unexplained, not confirmed: wait",
            None,
            vec![b.clone()],
            ready,
            false,
            Failover::Nothing,
        ),
        (
            "holder confirmed gone",
            None,
            vec![b.clone()],
            ready,
            true,
            Failover::Expire {
                why: HolderGone::PodGone,
            },
        ),
        (
            "holder finished",
            Some(finished.clone()),
            vec![finished.clone(), b.clone()],
            ready,
            false,
            Failover::Expire {
                why: HolderGone::Failed,
            },
        ),
        (
            "holder's node NotReady, still renewing: hand off (to a pod on a Ready node)",
            Some(pod("a")),
            vec![pod("a"), b_elsewhere.clone()],
            not_ready,
            false,
            Failover::HandOff {
                to: "b_id".to_owned(),
            },
        ),
        (
            "holder terminating: hand off to the first live candidate",
            Some(terminating.clone()),
            vec![terminating.clone(), c.clone(), b.clone()],
            ready,
            false,
            Failover::HandOff {
                to: "b_id".to_owned(),
            },
        ),
        (
            "holder terminating, `start` activation: wait for its own release",
            Some(PodView {
                activation: Some(Activation::Start),
                ..terminating.clone()
            }),
            vec![terminating.clone(), c.clone(), b.clone()],
            ready,
            false,
            Failover::Nothing,
        ),
        (
            "holder terminating, `process` activation (run stops the app before the release): hand off",
            Some(PodView {
                activation: Some(Activation::Process),
                ..terminating.clone()
            }),
            vec![terminating.clone(), c.clone(), b.clone()],
            ready,
            false,
            Failover::HandOff {
                to: "b_id".to_owned(),
            },
        ),
        (
            "holder terminating, nobody to hand to",
            Some(terminating.clone()),
            vec![terminating.clone()],
            ready,
            false,
            Failover::Nothing,
        ),
    ];
    for (what, holder, pods, nr, confirmed, want) in cases {
        let got = failover(&lease, holder.as_ref(), &pods, &nr, confirmed);
        assert_eq!(got, want, "{what}");
    }
    // NotReady and silent past the renew deadline: the holder stepped down.
    let mut silent = held_by("a_id");
    silent.past_renew_deadline = true;
    assert_eq!(
        failover(
            &silent,
            Some(&pod("a")),
            &[pod("a"), pod("b")],
            &not_ready,
            false
        ),
        Failover::Expire {
            why: HolderGone::NodeNotReady
        }
    );
    // Already asked: not asked again.
    let mut asked = held_by("a_id");
    asked.preferred = Some("b_id".to_owned());
    assert_eq!(
        failover(
            &asked,
            Some(&terminating),
            &[terminating.clone(), b.clone()],
            &ready,
            false
        ),
        Failover::Nothing
    );
    // Free Lease: nothing to do.
    assert_eq!(
        failover(&LeaseView::default(), None, &[b], &ready, true),
        Failover::Nothing
    );
}

#[test]
fn demotion_always_precedes_promotion() {
    let mut old = pod("old");
    old.role_label = Some("leader".to_owned());
    old.role_annotation = Some("leader".to_owned());
    let new = pod("new");
    let other = pod("other");
    let changes = role_changes(
        &[new.clone(), other.clone(), old.clone()],
        Some("new"),
        &BTreeSet::new(),
    );
    let order: Vec<(&str, RoleWrite)> = changes.iter().map(|c| (c.pod.as_str(), c.role)).collect();
    assert_eq!(
        order,
        vec![
            ("old", RoleWrite::Follower),
            ("new", RoleWrite::Leader),
            ("other", RoleWrite::Follower)
        ]
    );
    // A pod we labelled leader that the cache still shows unlabelled is
    // demoted first too.
    let remembered = BTreeSet::from(["other".to_owned()]);
    let changes = role_changes(&[new.clone(), other.clone()], Some("new"), &remembered);
    assert_eq!(changes[0].pod, "other");
    assert_eq!(changes[1].pod, "new");
    // Everything current: nothing to write.
    let mut l = pod("l");
    l.role_label = Some("leader".to_owned());
    l.role_annotation = Some("leader".to_owned());
    let mut f = pod("f");
    f.role_label = Some("follower".to_owned());
    f.role_annotation = Some("follower".to_owned());
    assert!(role_changes(&[l, f], Some("l"), &BTreeSet::new()).is_empty());
}

#[test]
fn a_start_leader_is_labelled_once_its_app_may_start() {
    let mut new = pod("new");
    new.activation = Some(Activation::Start);
    new.app_released = false;
    let mut other = pod("other");
    other.activation = Some(Activation::Start);
    other.app_released = false;
    // Took the Lease, startup probe not passed yet: only the follower label.
    let changes = role_changes(&[new.clone(), other.clone()], Some("new"), &BTreeSet::new());
    let order: Vec<(&str, RoleWrite)> = changes.iter().map(|c| (c.pod.as_str(), c.role)).collect();
    assert_eq!(order, vec![("other", RoleWrite::Follower)]);
    // The kubelet released the app: promoted.
    new.app_released = true;
    let changes = role_changes(&[new.clone(), other.clone()], Some("new"), &BTreeSet::new());
    assert_eq!(changes[0].pod, "new");
    assert_eq!(changes[0].role, RoleWrite::Leader);
    // `api` pods are promoted at once (their startup does not wait to lead).
    let mut api = pod("api");
    api.app_released = false;
    let changes = role_changes(&[api], Some("api"), &BTreeSet::new());
    assert_eq!(changes[0].role, RoleWrite::Leader);
    // An old leader is still demoted while its successor waits.
    let mut old = pod("old");
    old.role_label = Some("leader".to_owned());
    old.role_annotation = Some("leader".to_owned());
    new.app_released = false;
    let changes = role_changes(&[old, new], Some("new"), &BTreeSet::new());
    let order: Vec<(&str, RoleWrite)> = changes.iter().map(|c| (c.pod.as_str(), c.role)).collect();
    assert_eq!(order, vec![("old", RoleWrite::Follower)]);
}

/// A pod of Deployment `web` at template revision `rev`, created at `at`.
fn revision_pod(name: &str, rev: &str, at: i64, ready: bool) -> PodView {
    let mut p = pod(name);
    p.owner = Some(("ReplicaSet".to_owned(), format!("web-{rev}")));
    p.template_hash = Some(rev.to_owned());
    p.revision = Some(rev.to_owned());
    p.created = Some(at);
    p.ready = ready;
    p
}

/// A terminating holder hands off to a Ready pod of the newest revision
/// (one leader change per rolling update), else to the lowest identity.
#[test]
fn hand_off_prefers_a_ready_pod_of_the_newest_revision() {
    let mut holder = revision_pod("old-b", "aaa", 1, true);
    holder.terminating = true;
    let lease = held_by("old-b_id");
    let case = |pods: Vec<PodView>| {
        let holder_pod = holder_pod(&lease, &pods).cloned();
        failover(&lease, holder_pod.as_ref(), &pods, &ready, false)
    };
    let hand_off = |to: &str| Failover::HandOff { to: to.to_owned() };
    // Mid-rollout: an old pod sorts first, but the new Ready one is chosen.
    assert_eq!(
        case(vec![
            holder.clone(),
            revision_pod("old-a", "aaa", 1, true),
            revision_pod("new-z", "bbb", 5, true),
            revision_pod("new-y", "bbb", 6, false),
        ]),
        hand_off("new-z_id")
    );
    // Two Ready new pods: the lowest identity of them.
    assert_eq!(
        case(vec![
            holder.clone(),
            revision_pod("old-a", "aaa", 1, true),
            revision_pod("new-z", "bbb", 5, true),
            revision_pod("new-y", "bbb", 6, true),
        ]),
        hand_off("new-y_id")
    );
    // No new pod Ready yet: any live candidate, lowest identity.
    assert_eq!(
        case(vec![
            holder.clone(),
            revision_pod("old-c", "aaa", 1, true),
            revision_pod("new-a", "bbb", 5, false),
        ]),
        hand_off("new-a_id")
    );
    // No rollout: the holder's own revision is the newest; lowest identity.
    assert_eq!(
        case(vec![
            holder.clone(),
            revision_pod("old-c", "aaa", 1, true),
            revision_pod("old-a", "aaa", 1, true),
        ]),
        hand_off("old-a_id")
    );
    // Bare pods (no workload, no revision): lowest identity, as before.
    let mut bare = pod("bare-h");
    bare.terminating = true;
    let lease = held_by("bare-h_id");
    let pods = vec![bare.clone(), pod("bare-z"), pod("bare-a")];
    assert_eq!(
        failover(&lease, Some(&bare), &pods, &ready, false),
        hand_off("bare-a_id")
    );
}

#[test]
fn missing_policy_is_created_only_for_live_pods() {
    let mut done = pod("done");
    done.finished = true;
    let mut going = pod("going");
    going.terminating = true;
    let cases: [(&[PodView], bool, MissingPolicy); 6] = [
        (&[], true, MissingPolicy::Nothing),
        (&[], false, MissingPolicy::Nothing),
        (std::slice::from_ref(&done), true, MissingPolicy::Nothing),
        (std::slice::from_ref(&going), true, MissingPolicy::Nothing),
        (&[done.clone(), pod("live")], true, MissingPolicy::Create),
        (&[going.clone(), pod("live")], false, MissingPolicy::Report),
    ];
    for (pods, create, want) in cases {
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            missing_policy(pods, create),
            want,
            "{names:?} create={create}"
        );
    }
}

#[test]
fn candidate_condition_table() {
    let mut uninjected = pod("u");
    uninjected.injected = false;
    let mut not_started = pod("n");
    not_started.agent_started = false;
    let cases = [
        (false, pod("a"), false, "PolicyMissing"),
        (true, uninjected, false, "AgentMissing"),
        (true, not_started, false, "AgentNotStarted"),
        (true, pod("a"), true, "AgentStarted"),
    ];
    for (exists, p, status, reason) in cases {
        let c = candidate_condition(exists, "pool", &p);
        assert_eq!((c.status, c.reason), (status, reason), "{p:?}");
        assert!(!c.message.is_empty());
    }
    // True set by someone else counts as current; False needs our reason.
    let mut p = pod("a");
    p.candidate = Some(("True".to_owned(), String::new()));
    assert!(candidate_condition_current(
        &p,
        &candidate_condition(true, "pool", &p)
    ));
    p.candidate = Some(("False".to_owned(), "Other".to_owned()));
    assert!(!candidate_condition_current(
        &p,
        &candidate_condition(false, "pool", &p)
    ));
}

fn input<'a>(
    pods: &'a [PodView],
    lease: Option<&'a LeaseView>,
    leader: Option<&'a PodView>,
    previous: Option<&'a LeaderPolicyStatus>,
    now: Time,
) -> StatusInput<'a> {
    StatusInput {
        generation: Some(3),
        pool: "web",
        previous,
        policy_ready: Ok(()),
        lease,
        leader,
        pods,
        candidates: pods.iter().filter(|p| p.candidate(&ready)).count(),
        agent_missing: &[],
        identity_conflicts: &[],
        follower_mode: FollowerMode::Standby,
        timings: Some(crate::api::LeaderPolicySpec::default().effective_seconds()),
        scaled: None,
        fencing: super::fencing::FencingState::Fenced,
        transitions: &[],
        paused: false,
        leader_service: None,
        now,
    }
}

#[test]
fn the_status_keeps_its_recent_transitions_and_adds_the_new_ones() {
    use crate::api::{LeaderTransition, TransitionReason};
    let pods = vec![pod("a"), pod("b")];
    let lease = held_by("a_id");
    let change = |term: i32, to: &str| LeaderTransition {
        time: t(1000 + i64::from(term)),
        from: "x".to_owned(),
        to: to.to_owned(),
        reason: TransitionReason::GracefulHandOff,
        takeover_millis: Some(9),
        term: Some(term),
    };
    let mut prev = status(&input(&pods, Some(&lease), Some(&pods[0]), None, t(10)));
    prev.recent_transitions = vec![change(1, "a")];
    // Nothing new: the same list, so an unchanged pool writes nothing.
    let same = status(&input(
        &pods,
        Some(&lease),
        Some(&pods[0]),
        Some(&prev),
        t(20),
    ));
    assert_eq!(same, prev);
    // A change recorded: appended after the stored ones.
    let new = [change(2, "b")];
    let mut with_new = input(&pods, Some(&lease), Some(&pods[0]), Some(&prev), t(20));
    with_new.transitions = &new;
    let next = status(&with_new);
    let terms: Vec<_> = next
        .recent_transitions
        .iter()
        .filter_map(|e| e.term)
        .collect();
    assert_eq!(terms, vec![1, 2]);
}

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("time"))
}

#[test]
fn status_phases_and_conditions() {
    let pods = vec![pod("a"), pod("b")];
    let lease = held_by("a_id");
    let free = LeaseView::default();
    // Electing: nobody holds.
    let s = status(&input(&pods, Some(&free), None, None, t(100)));
    assert_eq!(s.phase, Some(Phase::Electing));
    assert_eq!(s.candidates, Some(2));
    assert_eq!(s.observed_generation, Some(3));
    assert!(s.current_holder.is_none());
    let reason = |s: &LeaderPolicyStatus, ty: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(
        reason(&s, "LeaderElected"),
        Some(("False".into(), "Electing".into()))
    );
    assert_eq!(
        reason(&s, "CandidatesAvailable"),
        Some(("True".into(), "CandidatesRunning".into()))
    );
    assert_eq!(
        reason(&s, "AgentMissing"),
        Some(("False".into(), "AllPodsInjected".into()))
    );
    // Stable with a holder; transition time set.
    let s2 = status(&input(
        &pods,
        Some(&lease),
        Some(&pods[0]),
        Some(&s),
        t(200),
    ));
    assert_eq!(s2.phase, Some(Phase::Stable));
    assert_eq!(
        s2.current_holder.as_ref().and_then(|h| h.name.as_deref()),
        Some("a")
    );
    assert_eq!(s2.last_transition_time, Some(t(200)));
    let elected = s2
        .conditions
        .iter()
        .find(|c| c.type_ == "LeaderElected")
        .expect("cond");
    assert_eq!(elected.last_transition_time, t(200));
    // Same input later: identical status (no write, times kept).
    let s3 = status(&input(
        &pods,
        Some(&lease),
        Some(&pods[0]),
        Some(&s2),
        t(300),
    ));
    assert_eq!(s3, s2);
    // Expired Lease: Electing with LeaseExpired.
    let mut expired = held_by("a_id");
    expired.expired = true;
    let s4 = status(&input(&pods, Some(&expired), None, Some(&s2), t(400)));
    assert_eq!(s4.phase, Some(Phase::Electing));
    assert_eq!(
        reason(&s4, "LeaderElected"),
        Some(("False".into(), "LeaseExpired".into()))
    );
    // No pods at all.
    let s5 = status(&input(&[], Some(&free), None, None, t(1)));
    assert_eq!(
        reason(&s5, "CandidatesAvailable"),
        Some(("False".into(), "NoPoolPods".into()))
    );
    assert_eq!(
        reason(&s5, "LeaderElected"),
        Some(("False".into(), "NoCandidates".into()))
    );
    // Invalid policy and missing agents are reported with what to do.
    let missing = vec!["x".to_owned()];
    let mut bad = input(&pods, None, None, None, t(1));
    bad.policy_ready = Err(PolicyProblem::InvalidTimings(
        "spec.renewDeadlineSeconds ...".into(),
    ));
    bad.agent_missing = &missing;
    let s6 = status(&bad);
    assert_eq!(
        reason(&s6, "PolicyReady"),
        Some(("False".into(), "InvalidTimings".into()))
    );
    let am = s6
        .conditions
        .iter()
        .find(|c| c.type_ == "AgentMissing")
        .expect("cond");
    assert_eq!(am.status, "True");
    assert!(
        am.message.contains("x") && am.message.contains("--evict-uninjected"),
        "{}",
        am.message
    );
}

fn w(kind: WorkloadKind, name: &str, replicas: i32, original: Option<i32>) -> WorkloadView {
    WorkloadView {
        kind,
        name: name.to_owned(),
        replicas,
        in_pool: true,
        original,
        hpa: None,
    }
}

#[test]
fn scale_plan_table() {
    // First scaleDown: remember before scaling; the leader's workload keeps 1.
    let plan = scale_plan(
        &[
            w(WorkloadKind::Deployment, "a", 3, None),
            w(WorkloadKind::StatefulSet, "b", 2, None),
        ],
        true,
        Some((WorkloadKind::StatefulSet, "b")),
    );
    assert_eq!(
        plan.actions,
        vec![
            ScaleAction::Remember {
                kind: WorkloadKind::Deployment,
                name: "a".into(),
                original: 3
            },
            ScaleAction::Scale {
                kind: WorkloadKind::Deployment,
                name: "a".into(),
                replicas: 0
            },
            ScaleAction::Remember {
                kind: WorkloadKind::StatefulSet,
                name: "b".into(),
                original: 2
            },
            ScaleAction::Scale {
                kind: WorkloadKind::StatefulSet,
                name: "b".into(),
                replicas: 1
            },
        ]
    );
    assert!(matches!(plan.outcome, Some(ScaleOutcome::Scaled(_))));
    // After a restart: already remembered and scaled -> nothing at all
    // (never scales twice, never overwrites the original).
    let plan = scale_plan(&[w(WorkloadKind::Deployment, "a", 1, Some(3))], true, None);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    // Remembered but the scale was interrupted: scale only.
    let plan = scale_plan(&[w(WorkloadKind::Deployment, "a", 3, Some(3))], true, None);
    assert_eq!(
        plan.actions,
        vec![ScaleAction::Scale {
            kind: WorkloadKind::Deployment,
            name: "a".into(),
            replicas: 1
        }]
    );
    // Back to standby: restore, then forget.
    let plan = scale_plan(&[w(WorkloadKind::Deployment, "a", 1, Some(3))], false, None);
    assert_eq!(
        plan.actions,
        vec![
            ScaleAction::Scale {
                kind: WorkloadKind::Deployment,
                name: "a".into(),
                replicas: 3
            },
            ScaleAction::Forget {
                kind: WorkloadKind::Deployment,
                name: "a".into()
            },
        ]
    );
    assert_eq!(plan.outcome, None);
    // Left the pool while in scaleDown: restored.
    let mut left = w(WorkloadKind::Deployment, "gone", 0, Some(2));
    left.in_pool = false;
    let plan = scale_plan(
        &[left, w(WorkloadKind::Deployment, "a", 1, Some(3))],
        true,
        None,
    );
    assert_eq!(
        plan.actions[0],
        ScaleAction::Scale {
            kind: WorkloadKind::Deployment,
            name: "gone".into(),
            replicas: 2
        }
    );
    assert_eq!(
        plan.actions[1],
        ScaleAction::Forget {
            kind: WorkloadKind::Deployment,
            name: "gone".into()
        }
    );
    // An HPA: refuse, touch nothing.
    let mut auto = w(WorkloadKind::Deployment, "auto", 2, None);
    auto.hpa = Some("auto-hpa".into());
    let plan = scale_plan(&[auto], true, None);
    assert!(plan.actions.is_empty());
    assert!(matches!(
        plan.outcome,
        Some(ScaleOutcome::Refused {
            reason: ScaleRefusal::HorizontalPodAutoscalerConflict,
            ..
        })
    ));
    // Standby, nothing scaled: nothing.
    let plan = scale_plan(&[w(WorkloadKind::Deployment, "a", 3, None)], false, None);
    assert!(plan.actions.is_empty());
}

#[test]
fn joins_pool_reads_template_then_workload() {
    let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert!(joins_pool(
        None,
        Some(&m(&[("zen-lead/pool", "web")])),
        None,
        "web"
    ));
    assert!(joins_pool(
        Some(&m(&[("zen-lead/pool", "web")])),
        None,
        None,
        "web"
    ));
    assert!(joins_pool(
        None,
        None,
        Some(&m(&[("zen-lead/pool", "web")])),
        "web"
    ));
    assert!(!joins_pool(
        None,
        Some(&m(&[("zen-lead/pool", "other")])),
        None,
        "web"
    ));
    assert!(!joins_pool(
        None,
        Some(&m(&[("zen-lead/pool", "web"), ("zen-lead/join", "false")])),
        None,
        "web"
    ));
}

#[test]
fn service_accounts_are_sorted_and_unique() {
    let mut a = pod("a");
    a.service_account = "zeta".into();
    let mut b = pod("b");
    b.service_account = "alpha".into();
    let c = pod("c");
    let mut d = pod("d");
    d.service_account = "zeta".into();
    assert_eq!(
        service_accounts(&[a, b, c, d]),
        vec!["alpha", "default", "zeta"]
    );
}

#[test]
fn a_running_agent_whose_startup_probe_holds_the_app_back_is_a_candidate() {
    // `start` activation: followers' agents run but are not `started`.
    let pod = |state: serde_json::Value| -> PodView {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "f", "uid": "00000000-1"},
            "spec": {"nodeName": "n1", "initContainers": [{"name": "zen-lead-agent", "restartPolicy": "Always"}], "containers": [{"name": "app"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "zen-lead-agent", "image": "", "imageID": "", "ready": false, "restartCount": 0, "started": false, "state": state}]}
        }))
        .expect("pod");
        PodView::from_pod(&p, IdentityStrategy::Pod)
    };
    assert!(pod(serde_json::json!({"running": {}})).agent_started);
    assert!(!pod(serde_json::json!({"waiting": {"reason": "ContainerCreating"}})).agent_started);
}

#[test]
fn deposed_start_leaders_are_pods_running_their_app_without_the_lease() {
    let start = |name: &str| PodView {
        activation: Some(Activation::Start),
        app_running: false,
        ..pod(name)
    };
    let mut leader = start("a");
    leader.app_running = true;
    let mut deposed = start("b");
    deposed.app_running = true;
    let follower = start("c");
    let mut leaving = start("d");
    leaving.app_running = true;
    leaving.terminating = true;
    let mut done = start("e");
    done.app_running = true;
    done.finished = true;
    let mut api = pod("f");
    api.app_running = true;
    // Not marked by the webhook (a hand-made pod): never touched.
    let mut unmarked = start("g");
    unmarked.activation = None;
    unmarked.app_running = true;
    let pods = vec![leader, deposed, follower, leaving, done, api, unmarked];
    let mut lease = held_by("a_id");
    lease.holder_instance = Some("a-uid".into());
    let names: Vec<&str> = deposed_start_leaders(&pods, &lease)
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["b"]);
    // A free Lease: candidates for the check (the caller deletes only when
    // a fresh read names another holder).
    let names: Vec<&str> = deposed_start_leaders(&pods, &LeaseView::default())
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn server_side_fencing_condition_follows_the_fencing_state() {
    use super::fencing::FencingState::*;
    let pods = vec![pod("a")];
    let cases = [
        (Fenced, "True", reasons::FENCED),
        (
            Disabled { by_policy: true },
            "False",
            reasons::FENCING_DISABLED,
        ),
        (
            Disabled { by_policy: false },
            "False",
            reasons::FENCING_DISABLED,
        ),
        (NotInstalled, "False", reasons::FENCING_NOT_INSTALLED),
        (StartActivation, "False", reasons::START_ACTIVATION),
    ];
    for (state, want_status, want_reason) in cases {
        let mut i = input(&pods, None, None, None, t(100));
        i.fencing = state;
        let s = status(&i);
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::SERVER_SIDE_FENCING)
            .expect("ServerSideFencing condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            (want_status, want_reason),
            "{state:?}"
        );
        assert!(!c.message.is_empty());
    }
}

/// Table: the Paused and LeaderElected conditions of a paused pool, led or
/// not, and of one that is not paused.
#[test]
fn a_paused_pool_says_whether_it_is_led_or_waits() {
    let pods = vec![pod("a"), pod("b")];
    let held = held_by("a_id");
    let dead = held_by("gone_id");
    let cond = |s: &LeaderPolicyStatus, type_: &str| {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };
    struct Case<'a> {
        name: &'static str,
        paused: bool,
        lease: &'a LeaseView,
        leader: Option<&'a PodView>,
        paused_cond: (&'static str, &'static str, &'static str),
        elected: (&'static str, &'static str),
        phase: Phase,
    }
    let cases = [
        Case {
            name: "running",
            paused: false,
            lease: &held,
            leader: Some(&pods[0]),
            paused_cond: ("False", reasons::NOT_PAUSED, "not paused"),
            elected: ("True", reasons::LEADER_ELECTED),
            phase: Phase::Stable,
        },
        Case {
            name: "paused and led",
            paused: true,
            lease: &held,
            leader: Some(&pods[0]),
            paused_cond: (
                "True",
                reasons::PAUSED,
                "paused: a keeps leading while it renews",
            ),
            elected: ("True", reasons::LEADER_ELECTED),
            phase: Phase::Stable,
        },
        Case {
            name: "paused, the holder's pod gone",
            paused: true,
            lease: &dead,
            leader: None,
            paused_cond: (
                "True",
                reasons::PAUSED_WITHOUT_LEADER,
                "paused: the pool has no leader and will not elect one until resumed",
            ),
            elected: ("False", reasons::PAUSED_WITHOUT_LEADER),
            phase: Phase::Paused,
        },
        Case {
            name: "not paused, the holder's pod gone: taken over",
            paused: false,
            lease: &dead,
            leader: None,
            paused_cond: ("False", reasons::NOT_PAUSED, "not paused"),
            elected: ("False", reasons::HOLDER_NOT_LIVE),
            phase: Phase::Electing,
        },
    ];
    for case in cases {
        let mut i = input(&pods, Some(case.lease), case.leader, None, t(10));
        i.paused = case.paused;
        let s = status(&i);
        let (status, reason, message) = cond(&s, conditions::PAUSED);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            (case.paused_cond.0, case.paused_cond.1),
            "{}",
            case.name
        );
        assert!(
            message.starts_with(case.paused_cond.2),
            "{}: {message}",
            case.name
        );
        let (status, reason, message) = cond(&s, conditions::LEADER_ELECTED);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            case.elected,
            "{}: {message}",
            case.name
        );
        assert_eq!(s.phase, Some(case.phase), "{}", case.name);
    }
}
