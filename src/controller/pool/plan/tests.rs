use super::*;
use crate::controller::decide::fixtures::pod;

fn leader_labelled(name: &str) -> PodView {
    let mut p = pod(name);
    p.role_label = Some("leader".to_owned());
    p.role_annotation = Some("leader".to_owned());
    p
}

fn follower_labelled(name: &str) -> PodView {
    let mut p = pod(name);
    p.role_label = Some("follower".to_owned());
    p.role_annotation = Some("follower".to_owned());
    p
}

fn cond(status: bool) -> CandidateCondition {
    CandidateCondition {
        status,
        reason: "Test",
        message: "test".to_owned(),
    }
}

/// (pod, role, carries a condition) of each write.
fn shape(writes: &[PodWrite]) -> Vec<(&str, Option<RoleWrite>, bool)> {
    writes
        .iter()
        .map(|w| (w.pod.as_str(), w.role, w.condition.is_some()))
        .collect()
}

/// (name, pods, leader, remembered leaders, expected writes).
type Case<'a> = (
    &'a str,
    Vec<PodView>,
    Option<&'a str>,
    &'a BTreeSet<String>,
    PodWrites,
);

#[test]
fn pod_writes_order_removals_then_demotions_then_the_promotion() {
    use RoleWrite::*;
    let none = BTreeSet::new();
    let gone = BTreeSet::from(["gone".to_owned()]);
    let cases: Vec<Case<'_>> = vec![
        (
            "new leader: old demoted first, then promoted, followers after in parallel",
            vec![pod("new"), pod("other"), leader_labelled("old")],
            Some("new"),
            &none,
            PodWrites {
                in_order: vec![w("old", Some(Follower)), w("new", Some(Leader))],
                parallel: vec![w("other", Some(Follower))],
            },
        ),
        (
            "a remembered leader that left the pool loses its role before anything else",
            vec![pod("new")],
            Some("new"),
            &gone,
            PodWrites {
                in_order: vec![w("gone", Some(Remove)), w("new", Some(Leader))],
                parallel: vec![],
            },
        ),
        (
            "no leader: demotions still ordered, nobody promoted",
            vec![leader_labelled("old"), pod("f")],
            None,
            &none,
            PodWrites {
                in_order: vec![w("old", Some(Follower))],
                parallel: vec![w("f", Some(Follower))],
            },
        ),
        (
            "all current: nothing",
            vec![leader_labelled("l"), follower_labelled("f")],
            Some("l"),
            &none,
            PodWrites::default(),
        ),
    ];
    for (name, views, leader, remembered, want) in cases {
        let got = pod_writes(&views, leader, remembered, BTreeMap::new());
        assert_eq!(got, want, "{name}");
    }
}

fn w(pod: &str, role: Option<RoleWrite>) -> PodWrite {
    PodWrite {
        pod: pod.to_owned(),
        role,
        condition: None,
    }
}

#[test]
fn a_condition_rides_on_the_pods_role_write() {
    let views = vec![
        leader_labelled("old"),
        pod("new"),
        pod("other"),
        pod("quiet"),
    ];
    let conditions = BTreeMap::from([
        ("new".to_owned(), cond(true)),
        ("other".to_owned(), cond(true)),
        ("old".to_owned(), cond(true)),
    ]);
    let mut quiet = views.clone();
    quiet[3] = follower_labelled("quiet");
    let got = pod_writes(&quiet, Some("new"), &BTreeSet::new(), conditions);
    assert_eq!(
        shape(&got.in_order),
        vec![
            ("old", Some(RoleWrite::Follower), true),
            ("new", Some(RoleWrite::Leader), true),
        ]
    );
    assert_eq!(
        shape(&got.parallel),
        vec![("other", Some(RoleWrite::Follower), true)]
    );
    // A condition alone (role current) is a write of its own, in parallel.
    let conditions = BTreeMap::from([("quiet".to_owned(), cond(false))]);
    let got = pod_writes(&quiet, Some("new"), &BTreeSet::new(), conditions);
    assert!(
        shape(&got.parallel).contains(&("quiet", None, true)),
        "{got:?}"
    );
}

#[test]
fn a_start_leader_waiting_for_its_app_is_not_promoted_but_the_old_one_is_demoted() {
    let mut new = pod("new");
    new.activation = Some(crate::api::Activation::Start);
    new.app_released = false;
    let views = vec![leader_labelled("old"), new];
    let got = pod_writes(&views, Some("new"), &BTreeSet::new(), BTreeMap::new());
    assert_eq!(
        shape(&got.in_order),
        vec![("old", Some(RoleWrite::Follower), false)]
    );
    assert!(got.parallel.is_empty(), "{got:?}");
    // A remembered (not yet cached) leader label is demoted in order too.
    let views = vec![pod("a"), pod("b")];
    let remembered = BTreeSet::from(["a".to_owned()]);
    let got = pod_writes(&views, Some("b"), &remembered, BTreeMap::new());
    assert_eq!(
        shape(&got.in_order),
        vec![
            ("a", Some(RoleWrite::Follower), false),
            ("b", Some(RoleWrite::Leader), false)
        ]
    );
}

#[test]
fn orphans_lose_their_role_and_candidacy_in_one_write() {
    let mut current = pod("done");
    current.candidate = Some(("False".to_owned(), "NoLeaderPolicy".to_owned()));
    let views = vec![leader_labelled("l"), pod("plain"), current.clone()];
    let got = orphan_writes("web", &views);
    let want_condition = |p: &PodView| {
        let want = decide::candidate_condition(false, "web", p);
        (!decide::candidate_condition_current(p, &want)).then_some(want)
    };
    let expected: Vec<PodWrite> = views
        .iter()
        .filter_map(|p| {
            let role = p.role_label.is_some().then_some(RoleWrite::Remove);
            let condition = want_condition(p);
            (role.is_some() || condition.is_some()).then(|| PodWrite {
                pod: p.name.clone(),
                role,
                condition,
            })
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got[0].role, Some(RoleWrite::Remove));
    assert!(got[0].condition.as_ref().is_some_and(|c| !c.status));
}

#[test]
fn identity_problems_are_told_on_the_pod() {
    let mut dup = cond(false);
    dup.reason = decide::DUPLICATE_IDENTITY;
    let mut mismatch = cond(false);
    mismatch.reason = decide::IDENTITY_STRATEGY_MISMATCH;
    let conditions = BTreeMap::from([
        ("a".to_owned(), dup),
        ("b".to_owned(), cond(true)),
        ("c".to_owned(), mismatch),
    ]);
    let told: Vec<(&str, &str)> = identity_warnings(&conditions)
        .into_iter()
        .map(|(pod, reason, _)| (pod, reason))
        .collect();
    assert_eq!(
        told,
        vec![
            ("a", decide::DUPLICATE_IDENTITY),
            ("c", decide::IDENTITY_STRATEGY_MISMATCH)
        ]
    );
}

#[test]
fn a_deposed_pod_is_due_after_the_grace_and_wakes_the_pass_then() {
    let t0 = Instant::now();
    let a = pod("a");
    let b = pod("b");
    let mut since = HashMap::new();
    let (due, wake) = deposed_due(&mut since, &[&a], t0);
    assert!(due.is_empty());
    assert_eq!(wake, Some(DEPOSED_GRACE + WAKE_MARGIN));
    // b joins a second later; a falls due at the grace.
    let t1 = t0 + Duration::from_secs(1);
    let (due, wake) = deposed_due(&mut since, &[&a, &b], t1);
    assert!(due.is_empty());
    assert_eq!(
        wake,
        Some(DEPOSED_GRACE - Duration::from_secs(1) + WAKE_MARGIN)
    );
    let t3 = t0 + DEPOSED_GRACE;
    let (due, wake) = deposed_due(&mut since, &[&a, &b], t3);
    assert_eq!(due, BTreeSet::from(["a-uid".to_owned()]));
    assert_eq!(wake, Some(Duration::from_secs(1) + WAKE_MARGIN));
    // A pod no longer deposed is forgotten: its clock starts over.
    let (due, _) = deposed_due(&mut since, &[&b], t3);
    assert!(due.is_empty());
    assert!(!since.contains_key("a-uid"));
}

#[test]
fn a_held_lease_wakes_the_pass_at_the_renew_deadline_then_at_expiry() {
    let now = Instant::now();
    let clock = LeaseClock {
        seen: now,
        renew_deadline: Duration::from_secs(10),
        lease_duration: Duration::from_secs(15),
    };
    let held = LeaseView {
        holder: Some("a_id".to_owned()),
        ..LeaseView::default()
    };
    assert_eq!(
        lease_wake(&held, Some(clock), now),
        Some(Duration::from_secs(10) + WAKE_MARGIN)
    );
    let late = LeaseView {
        past_renew_deadline: true,
        ..held.clone()
    };
    assert_eq!(
        lease_wake(&late, Some(clock), now + Duration::from_secs(11)),
        Some(Duration::from_secs(4) + WAKE_MARGIN)
    );
    let expired = LeaseView {
        expired: true,
        ..held.clone()
    };
    assert_eq!(lease_wake(&expired, Some(clock), now), None);
    assert_eq!(lease_wake(&LeaseView::default(), Some(clock), now), None);
    assert_eq!(lease_wake(&held, None, now), None);
    let one = Some(Duration::from_secs(1));
    let two = Some(Duration::from_secs(2));
    assert_eq!(earliest(one, two), one);
    assert_eq!(earliest(None, two), two);
    assert_eq!(earliest(one, None), one);
    assert_eq!(earliest(None, None), None);
}
