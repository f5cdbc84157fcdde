use super::*;
use crate::api::Activation;
use crate::controller::decide::fixtures::pod;

const GRACE: Duration = Duration::from_secs(10);

fn ready(_: &str) -> bool {
    true
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Ready, its container started at `started` (Unix seconds).
fn ok(started: i64) -> AppHealth {
    AppHealth {
        ready: true,
        started: Some(started),
        problem: None,
    }
}

/// Crash-looping: waiting, so no start time.
fn down() -> AppHealth {
    AppHealth {
        ready: false,
        started: None,
        problem: Some(CRASH.to_owned()),
    }
}

fn with_app(mut p: PodView, app: AppHealth) -> PodView {
    p.app = app;
    p
}

fn held_by(id: &str) -> LeaseView {
    LeaseView {
        holder: Some(id.to_owned()),
        ..LeaseView::default()
    }
}

/// Runs `judge` over the holder's app as each step shows it (seconds after
/// the start) and returns the last verdict.
fn run(
    grace: Option<Duration>,
    lease: &LeaseView,
    holder: &PodView,
    others: &[PodView],
    steps: &[(u64, AppHealth)],
) -> AppVerdict {
    let t0 = Instant::now();
    let mut watch = None;
    let mut last = AppVerdict::Wait(None);
    for (at, app) in steps {
        let holder = with_app(holder.clone(), app.clone());
        let mut pods = vec![holder.clone()];
        pods.extend_from_slice(others);
        let input = AppInput {
            lease,
            holder: Some(&holder),
            pods: &pods,
            node_ready: &ready,
            grace,
        };
        last = judge(&mut watch, &input, t0 + secs(*at));
    }
    last
}

fn hand_off(failing_for: u64, problem: &str) -> AppVerdict {
    AppVerdict::HandOff {
        to: "b_id".to_owned(),
        failing_for: secs(failing_for),
        problem: problem.to_owned(),
    }
}

const CRASH: &str = "container \"app\" waiting: CrashLoopBackOff";

#[test]
fn a_failing_api_leader_hands_over_after_the_grace_to_a_ready_follower() {
    let a = pod("a");
    let b = pod("b");
    let b_app_down = with_app(pod("b"), down());
    let b_not_ready = PodView {
        ready: false,
        ..pod("b")
    };
    let b_terminating = PodView {
        terminating: true,
        ..pod("b")
    };
    let start = PodView {
        activation: Some(Activation::Start),
        ..pod("a")
    };
    let process = PodView {
        activation: Some(Activation::Process),
        ..pod("a")
    };
    let terminating = PodView {
        terminating: true,
        ..pod("a")
    };
    let lease = held_by("a_id");
    let expired = LeaseView {
        expired: true,
        ..held_by("a_id")
    };
    let g = Some(GRACE);
    // (what, grace, lease, holder, other pods, steps, verdict at the last step)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        Option<Duration>,
        &LeaseView,
        &PodView,
        Vec<PodView>,
        Vec<(u64, AppHealth)>,
        AppVerdict,
    )> = vec![
        (
            "app Ready: nothing",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, ok(0)), (30, ok(0))],
            AppVerdict::Wait(None),
        ),
        (
            "back from CrashLoopBackOff: the new start is the recovery, not another failure",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, down()), (3, ok(3)), (30, ok(3))],
            AppVerdict::Wait(None),
        ),
        (
            "not Ready inside the grace: wake when it runs out",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, down()), (4, down())],
            AppVerdict::Wait(Some(secs(6))),
        ),
        (
            "not Ready for the grace, a follower Ready: hand off to it",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, down()), (10, down())],
            hand_off(10, CRASH),
        ),
        (
            "not Ready for the grace, the follower's app not Ready: keep it, tell once",
            g,
            &lease,
            &a,
            vec![b_app_down.clone()],
            vec![(0, down()), (10, down())],
            AppVerdict::NoReadyFollower {
                failing_for: secs(10),
                problem: CRASH.to_owned(),
                report: true,
            },
        ),
        (
            "... and told only once per episode",
            g,
            &lease,
            &a,
            vec![b_app_down.clone()],
            vec![(0, down()), (10, down()), (12, down())],
            AppVerdict::NoReadyFollower {
                failing_for: secs(12),
                problem: CRASH.to_owned(),
                report: false,
            },
        ),
        (
            "the follower pod not Ready (its readiness gate): none to hand to",
            g,
            &lease,
            &a,
            vec![b_not_ready],
            vec![(0, down()), (10, down())],
            AppVerdict::NoReadyFollower {
                failing_for: secs(10),
                problem: CRASH.to_owned(),
                report: true,
            },
        ),
        (
            "the follower terminating: none to hand to",
            g,
            &lease,
            &a,
            vec![b_terminating],
            vec![(0, down()), (10, down())],
            AppVerdict::NoReadyFollower {
                failing_for: secs(10),
                problem: CRASH.to_owned(),
                report: true,
            },
        ),
        (
            "no follower at all",
            g,
            &lease,
            &a,
            vec![],
            vec![(0, down()), (10, down())],
            AppVerdict::NoReadyFollower {
                failing_for: secs(10),
                problem: CRASH.to_owned(),
                report: true,
            },
        ),
        (
            "flapping: Ready again before the grace, still Ready at its end",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, down()), (3, ok(3)), (10, ok(3))],
            AppVerdict::Wait(None),
        ),
        (
            "a failure soon after a recovery counts from the first",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, down()), (3, ok(3)), (8, down()), (10, down())],
            hand_off(10, CRASH),
        ),
        (
            "restarting while Ready at every look (a fast crash loop)",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, ok(0)), (2, ok(2)), (6, ok(2)), (13, ok(13))],
            hand_off(11, "an app container restarted"),
        ),
        (
            "one restart, then healthy: nothing",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, ok(0)), (2, ok(2)), (6, ok(2)), (30, ok(2))],
            AppVerdict::Wait(None),
        ),
        (
            "healthy for a whole grace ends the episode: a new failure starts afresh",
            g,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, down()), (2, ok(2)), (12, ok(2)), (14, down())],
            AppVerdict::Wait(Some(GRACE)),
        ),
        (
            "start pool: ignored (an unfenced app must not overlap)",
            g,
            &lease,
            &start,
            vec![b.clone()],
            vec![(0, down()), (30, down())],
            AppVerdict::Wait(None),
        ),
        (
            "process pool: ignored (zen-lead run releases on app failure)",
            g,
            &lease,
            &process,
            vec![b.clone()],
            vec![(0, down()), (30, down())],
            AppVerdict::Wait(None),
        ),
        (
            "disabled by the policy (0)",
            None,
            &lease,
            &a,
            vec![b.clone()],
            vec![(0, down()), (30, down())],
            AppVerdict::Wait(None),
        ),
        (
            "holder terminating: the terminating rules decide",
            g,
            &lease,
            &terminating,
            vec![b.clone()],
            vec![(0, down()), (30, down())],
            AppVerdict::Wait(None),
        ),
        (
            "Lease expired: a follower takes it anyway",
            g,
            &expired,
            &a,
            vec![b.clone()],
            vec![(0, down()), (30, down())],
            AppVerdict::Wait(None),
        ),
    ];
    for (what, grace, lease, holder, others, steps, want) in cases {
        assert_eq!(run(grace, lease, holder, &others, &steps), want, "{what}");
    }
}

/// One pass at `at` seconds with the holder's app as given.
fn pass(
    watch: &mut Option<AppWatch>,
    lease: &LeaseView,
    holder: &PodView,
    pods: &[PodView],
    t0: Instant,
    at: u64,
) -> AppVerdict {
    let input = AppInput {
        lease,
        holder: Some(holder),
        pods,
        node_ready: &ready,
        grace: Some(GRACE),
    };
    judge(watch, &input, t0 + secs(at))
}

#[test]
fn a_request_is_waited_for_then_renewed_and_a_stale_one_is_cleared_first() {
    let t0 = Instant::now();
    let a = with_app(pod("a"), down());
    let pods = [a.clone(), pod("b")];
    let mut watch = None;
    let mut lease = held_by("a_id");
    assert_eq!(
        pass(&mut watch, &lease, &a, &pods, t0, 0),
        AppVerdict::Wait(Some(GRACE))
    );
    assert!(matches!(
        pass(&mut watch, &lease, &a, &pods, t0, 10),
        AppVerdict::HandOff { .. }
    ));
    // Asked: the holder's agent is releasing; not asked twice.
    lease.preferred = Some("b_id".to_owned());
    assert_eq!(
        pass(&mut watch, &lease, &a, &pods, t0, 11),
        AppVerdict::Wait(Some(secs(9)))
    );
    // Unanswered for a grace: take the name back, to set it again.
    assert_eq!(
        pass(&mut watch, &lease, &a, &pods, t0, 20),
        AppVerdict::ClearPreferred
    );
    lease.preferred = None;
    assert!(matches!(
        pass(&mut watch, &lease, &a, &pods, t0, 21),
        AppVerdict::HandOff { .. }
    ));

    // The Lease names b from before this holder's term (the holder saw it
    // when it acquired and does not act on it): cleared, then named again.
    let mut watch = None;
    let stale = LeaseView {
        preferred: Some("b_id".to_owned()),
        ..held_by("a_id")
    };
    pass(&mut watch, &stale, &a, &pods, t0, 0);
    assert_eq!(
        pass(&mut watch, &stale, &a, &pods, t0, 10),
        AppVerdict::ClearPreferred
    );
}

#[test]
fn another_holder_is_followed_afresh() {
    let t0 = Instant::now();
    let a = with_app(pod("a"), down());
    let b = with_app(pod("b"), down());
    let pods = [a.clone(), b.clone(), pod("c")];
    let mut watch = None;
    pass(&mut watch, &held_by("a_id"), &a, &pods, t0, 0);
    // b took over at 9 with its app failing: its own grace, from 9.
    assert_eq!(
        pass(&mut watch, &held_by("b_id"), &b, &pods, t0, 9),
        AppVerdict::Wait(Some(GRACE))
    );
    assert_eq!(watch.as_ref().map(|w| w.holder.as_str()), Some("b-uid"));
    // A pass without a holder pod forgets the watch.
    let input = AppInput {
        lease: &held_by("x_id"),
        holder: None,
        pods: &pods,
        node_ready: &ready,
        grace: Some(GRACE),
    };
    assert_eq!(
        judge(&mut watch, &input, t0 + secs(10)),
        AppVerdict::Wait(None)
    );
    assert_eq!(watch, None);
}

/// Reads only what the controller's pod cache keeps of a container status
/// (name, ready, state; not restartCount, which it drops).
#[test]
fn app_health_reads_every_container_but_the_agent() {
    use serde_json::json;
    let pod = |statuses: serde_json::Value| -> AppHealth {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a"},
            "status": {
                "initContainerStatuses": [{"name": "zen-lead-agent", "image": "z", "imageID": "",
                    "ready": false, "restartCount": 0}],
                "containerStatuses": statuses,
            }
        }))
        .expect("pod json");
        AppHealth::of(&p)
    };
    let status = |name: &str, ready: bool, state: serde_json::Value| json!({"name": name, "image": "i", "imageID": "", "ready": ready, "restartCount": 0, "state": state});
    let running = |at: &str| json!({"running": {"startedAt": at}});
    let both = pod(json!([
        status("app", true, running("1970-01-01T00:00:10Z")),
        status("side", true, running("1970-01-01T00:00:20Z"))
    ]));
    assert_eq!(both, ok(20), "the latest start");
    let crash = pod(json!([
        status("app", true, running("1970-01-01T00:00:10Z")),
        status(
            "side",
            false,
            json!({"waiting": {"reason": "CrashLoopBackOff"}})
        )
    ]));
    assert_eq!(
        (crash.ready, crash.started, crash.problem.as_deref()),
        (
            false,
            Some(10),
            Some("container \"side\" waiting: CrashLoopBackOff")
        )
    );
    let exited = pod(json!([status(
        "app",
        false,
        json!({"terminated": {"exitCode": 2, "reason": "Error"}})
    )]));
    assert_eq!(
        exited.problem.as_deref(),
        Some("container \"app\" terminated: Error (exit code 2)")
    );
    let unready = pod(json!([status(
        "app",
        false,
        running("1970-01-01T00:00:10Z")
    )]));
    assert_eq!(
        unready.problem.as_deref(),
        Some("container \"app\" running, not Ready")
    );
    // The agent alone (its own readiness is not the app's): no app status.
    let none = pod(json!([]));
    assert!(!none.ready, "{none:?}");
}

#[test]
fn the_grace_defaults_to_the_lease_duration_and_zero_disables_it() {
    let spec = |lease: i32, grace: Option<i32>| LeaderPolicySpec {
        lease_duration_seconds: lease,
        app_failure_grace_seconds: grace,
        ..LeaderPolicySpec::default()
    };
    assert_eq!(grace(&spec(15, None)), Some(secs(15)));
    assert_eq!(grace(&spec(30, None)), Some(secs(30)));
    assert_eq!(grace(&spec(15, Some(4))), Some(secs(4)));
    assert_eq!(grace(&spec(15, Some(0))), None);
    assert_eq!(grace(&spec(15, Some(-1))), None);
}
