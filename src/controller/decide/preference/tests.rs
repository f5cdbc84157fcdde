use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::api::Activation;
use crate::controller::decide::app_failure::ready_follower;
use crate::controller::decide::fixtures::pod;
use crate::controller::decide::{Failover, failover};

const COOLDOWN: Duration = Duration::from_secs(5);
const T0: i64 = 1_000_000;

/// A Ready candidate with `priority`, Ready since `T0`.
fn ranked(name: &str, priority: i64) -> PodView {
    let mut p = pod(name);
    p.preference.priority = priority;
    p.preference.ready_since = Some(T0);
    p
}

fn held_by(p: &PodView) -> LeaseView {
    LeaseView {
        holder: p.identity.clone(),
        holder_instance: Some(p.uid.clone()),
        ..LeaseView::default()
    }
}

fn all_ready(_: &str) -> bool {
    true
}

/// The standing decision for `pods` (the first holds the Lease) at `now`.
fn decide_at(
    pods: &[PodView],
    lease: &LeaseView,
    last_change: Option<i64>,
    last_asked: Option<i64>,
    now: i64,
) -> Standing {
    standing(&StandingInput {
        lease,
        holder: pods.iter().find(|p| p.holds(lease)),
        pods,
        node_ready: &all_ready,
        paused: false,
        cooldown: Some(COOLDOWN),
        last_change,
        last_asked,
        pending_since: None,
        now,
    })
}

fn later() -> i64 {
    T0 + 10_000
}

#[test]
fn priorities_parse_as_integers_and_anything_else_is_invalid() {
    for (value, want) in [
        ("10", Some(10)),
        (" -3 ", Some(-3)),
        ("0", Some(0)),
        ("high", None),
        ("1.5", None),
        ("", None),
        ("99999999999999999999", None),
    ] {
        assert_eq!(parse_priority(value), want, "{value:?}");
    }
}

fn pod_with(annotations: &[(&str, &str)], ready: Option<&str>) -> Pod {
    let a: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let conditions = ready.map_or(json!([]), |status| {
        json!([{"type": "Ready", "status": status, "lastTransitionTime": "2026-01-01T00:00:10Z"}])
    });
    serde_json::from_value(json!({
        "metadata": {"name": "p", "annotations": a},
        "status": {"conditions": conditions},
    }))
    .expect("pod json")
}

#[test]
fn preference_reads_priority_and_ready_since_from_the_pod() {
    let p = Preference::of(&pod_with(&[(PRIORITY_ANNOTATION, "7")], Some("True")));
    assert_eq!(p.priority, 7);
    assert_eq!(p.invalid_priority, None);
    assert_eq!(p.ready_since, Some(1_767_225_610_000));
    let p = Preference::of(&pod_with(&[(PRIORITY_ANNOTATION, "urgent")], Some("False")));
    assert_eq!(
        (p.priority, p.invalid_priority.as_deref()),
        (0, Some("urgent"))
    );
    assert_eq!(p.ready_since, None);
    let p = Preference::of(&pod_with(&[], None));
    assert_eq!(p, Preference::default());
}

#[test]
fn zones_rank_by_their_place_and_an_unknown_node_ranks_last() {
    let mut pods = vec![pod("a"), pod("b"), pod("c"), pod("d")];
    pods[0].node = Some("node-a".into());
    pods[1].node = Some("node-b".into());
    pods[2].node = Some("node-x".into());
    pods[3].node = Some("unreadable".into());
    let zone_of = |n: &str| match n {
        "node-a" => Some("zone-a".to_owned()),
        "node-b" => Some("zone-b".to_owned()),
        "node-x" => Some("zone-x".to_owned()),
        _ => None,
    };
    let zones = vec!["zone-b".to_owned(), "zone-a".to_owned()];
    place(&mut pods, &zones, &zone_of);
    let got: Vec<Option<usize>> = pods.iter().map(|p| p.preference.zone_rank).collect();
    assert_eq!(got, [Some(1), Some(0), None, None]);
    assert_eq!(best(&pods).as_deref(), Some("b_id"));
    // An unreadable node never keeps its pod from being chosen.
    assert_eq!(best(&pods[2..]).as_deref(), Some("c_id"));
}

#[test]
fn ranking_is_priority_then_zone_then_lowest_identity() {
    let zoned = |name: &str, priority: i64, zone: Option<usize>| {
        let mut p = ranked(name, priority);
        p.preference.zone_rank = zone;
        p
    };
    let cases: &[(&str, Vec<PodView>, &str)] = &[
        (
            "priority beats zone",
            vec![zoned("a", 0, Some(0)), zoned("b", 1, None)],
            "b_id",
        ),
        (
            "zone breaks a priority tie",
            vec![zoned("a", 5, Some(1)), zoned("b", 5, Some(0))],
            "b_id",
        ),
        (
            "a listed zone beats an unlisted one",
            vec![zoned("a", 0, None), zoned("b", 0, Some(3))],
            "b_id",
        ),
        (
            "equal: the lowest identity",
            vec![zoned("b", 2, Some(0)), zoned("a", 2, Some(0))],
            "a_id",
        ),
        (
            "negative priorities rank below the default",
            vec![zoned("a", -1, None), zoned("b", 0, None)],
            "b_id",
        ),
    ];
    for (what, pods, want) in cases {
        assert_eq!(best(pods).as_deref(), Some(*want), "{what}");
    }
}

#[test]
fn a_successor_is_chosen_by_preference() {
    let mut holder = ranked("a", 0);
    holder.terminating = true;
    let pods = vec![holder, ranked("b", 1), ranked("c", 9), ranked("d", 3)];
    let lease = held_by(&pods[0]);
    assert_eq!(
        failover(&lease, Some(&pods[0]), &pods, &all_ready, false),
        Failover::HandOff { to: "c_id".into() }
    );
    // An app-failure hand-off names the best-ranked Ready follower too.
    assert_eq!(
        ready_follower(&pods, &pods[0], &all_ready).as_deref(),
        Some("c_id")
    );
}

#[test]
fn standing_preference_table() {
    let lease_of = |pods: &[PodView]| held_by(&pods[0]);
    let mut cases: Vec<(&str, Vec<PodView>, Option<i64>, Standing)> = Vec::new();
    let base = || vec![ranked("a", 0), ranked("b", 10)];
    let b = || Standing::Move { to: "b_id".into() };
    cases.push(("a Ready, stable, better candidate", base(), None, b()));
    cases.push((
        "equal preference: the holder keeps it",
        vec![ranked("a", 3), ranked("b", 3)],
        None,
        Standing::Wait(None),
    ));
    cases.push((
        "lower preference: nothing",
        vec![ranked("a", 3), ranked("b", 1)],
        None,
        Standing::Wait(None),
    ));
    let mut not_ready = base();
    not_ready[1].ready = false;
    not_ready[1].preference.ready_since = None;
    cases.push(("not Ready", not_ready, None, Standing::Wait(None)));
    let mut terminating = base();
    terminating[1].terminating = true;
    cases.push(("terminating", terminating, None, Standing::Wait(None)));
    let mut no_agent = base();
    no_agent[1].agent_started = false;
    cases.push(("not a candidate", no_agent, None, Standing::Wait(None)));
    let mut fresh = base();
    fresh[1].preference.ready_since = Some(later() - 1_000);
    cases.push((
        "Ready for less than a cooldown",
        fresh,
        None,
        Standing::Wait(Some(COOLDOWN - Duration::from_secs(1))),
    ));
    cases.push((
        "a leader change 2 s ago",
        base(),
        Some(later() - 2_000),
        Standing::Wait(Some(COOLDOWN - Duration::from_secs(2))),
    ));
    cases.push((
        "a leader change a cooldown ago",
        base(),
        Some(later() - 5_000),
        b(),
    ));
    let mut start = base();
    start[0].activation = Some(Activation::Start);
    cases.push(("a start holder", start, None, Standing::Wait(None)));
    let mut process = base();
    process[0].activation = Some(Activation::Process);
    cases.push(("a process holder", process, None, b()));
    let mut leaving = base();
    leaving[0].terminating = true;
    cases.push(("a terminating holder", leaving, None, Standing::Wait(None)));
    for (what, pods, last_change, want) in cases {
        let lease = lease_of(&pods);
        let got = decide_at(&pods, &lease, last_change, None, later());
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn paused_disabled_expired_or_already_asked() {
    let pods = vec![ranked("a", 0), ranked("b", 10)];
    let lease = held_by(&pods[0]);
    let mut input = StandingInput {
        lease: &lease,
        holder: Some(&pods[0]),
        pods: &pods,
        node_ready: &all_ready,
        paused: true,
        cooldown: Some(COOLDOWN),
        last_change: None,
        last_asked: None,
        pending_since: None,
        now: later(),
    };
    assert_eq!(standing(&input), Standing::Wait(None), "paused");
    input.paused = false;
    input.cooldown = None;
    assert_eq!(standing(&input), Standing::Wait(None), "cooldown 0");
    input.cooldown = Some(COOLDOWN);
    input.last_asked = Some(later() - 1_000);
    assert_eq!(
        standing(&input),
        Standing::Wait(Some(Duration::from_secs(4))),
        "asked a second ago"
    );
    input.last_asked = None;
    let expired = LeaseView {
        expired: true,
        ..lease.clone()
    };
    input.lease = &expired;
    assert_eq!(standing(&input), Standing::Wait(None), "expired");
    let named = LeaseView {
        preferred: Some("b_id".into()),
        ..lease.clone()
    };
    input.lease = &named;
    assert_eq!(standing(&input), Standing::ClearPreferred, "stale request");
    // A hand-off to someone else, asked 1 s ago: in progress, wait.
    let other = LeaseView {
        preferred: Some("c_id".into()),
        ..lease.clone()
    };
    input.lease = &other;
    input.pending_since = Some(later() - 1_000);
    assert_eq!(
        standing(&input),
        Standing::Wait(Some(Duration::from_secs(4))),
        "hand-off in progress"
    );
    // Standing for a cooldown, not acted on: stale, so move.
    input.pending_since = Some(later() - 5_000);
    assert_eq!(
        standing(&input),
        Standing::Move { to: "b_id".into() },
        "stale hand-off"
    );
    // The annotation naming the holder itself is a finished hand-off.
    let done = LeaseView {
        preferred: Some("a_id".into()),
        ..lease.clone()
    };
    input.lease = &done;
    input.pending_since = Some(later());
    assert_eq!(
        standing(&input),
        Standing::Move { to: "b_id".into() },
        "finished hand-off"
    );
}

/// A candidate whose priority flips every 700 ms for a minute, against a
/// holder of priority 5: leadership moves at most once per cooldown, and
/// two pods of equal priority never swap.
#[test]
fn a_flapping_priority_moves_leadership_at_most_once_per_cooldown() {
    let mut pods = vec![ranked("a", 5), ranked("b", 0)];
    let mut lease = held_by(&pods[0]);
    let mut last_change = Some(T0);
    let mut last_asked = None;
    let mut moves = Vec::new();
    let step = 100;
    for tick in 0..600 {
        let now = later() + tick * step;
        pods[1].preference.priority = if (tick * step / 700) % 2 == 0 { 10 } else { 0 };
        match decide_at(&pods, &lease, last_change, last_asked, now) {
            Standing::Move { to } => {
                moves.push(now);
                last_asked = Some(now);
                // The hand-off completes at once.
                let next = pods.iter().position(|p| p.identity.as_deref() == Some(&to));
                lease = held_by(&pods[next.expect("target is a pool pod")]);
                last_change = Some(now + 10);
            }
            Standing::ClearPreferred => panic!("nothing names a preferred holder here"),
            Standing::Wait(_) => {}
        }
    }
    assert!(moves.len() >= 2, "it never moved: {moves:?}");
    let cooldown = i64::try_from(COOLDOWN.as_millis()).expect("ms");
    for pair in moves.windows(2) {
        assert!(pair[1] - pair[0] >= cooldown, "moves at {moves:?}");
    }

    // Equal priorities: whoever leads keeps it, whatever time passes.
    let pods = vec![ranked("a", 4), ranked("b", 4)];
    for holder in 0..2 {
        let lease = held_by(&pods[holder]);
        for tick in 0..50 {
            let now = later() + tick * 1_000;
            assert_eq!(
                decide_at(&pods, &lease, None, None, now),
                Standing::Wait(None)
            );
        }
    }
}
