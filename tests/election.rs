//! The election against the local cluster, with agents and locks as real
//! processes: one leader among three, hand-off on SIGTERM, takeover after a
//! crash, the HTTP API agreeing with the Lease, and `zen-lead lock`.

mod common;
#[path = "common/election.rs"]
mod election_util;

use std::process::{Command, Stdio};
use std::time::Duration;

use election_util::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use rustix::process::Signal;
use zen_lead::api::keys::HOLDER_INSTANCE_ANNOTATION;
use zen_lead::election::clock::now_mono_ns;

const POOL: &str = "pool";

#[tokio::test]
async fn three_agents_elect_one_and_their_apis_agree() {
    let client = common::client().await;
    common::with_namespace(&client, "elect3", |client, ns| async move {
        let dir = scratch_dir("elect3");
        create_lease(&client, &ns, POOL, TestTimings::FAST).await;
        let agents: Vec<Agent> = (0..3)
            .map(|i| Agent::start(&dir, &ns, POOL, &format!("a{i}"), &[]))
            .collect();
        until("exactly one leader", Duration::from_secs(20), || {
            single_leader(&agents).is_some()
        })
        .await;
        let leader = single_leader(&agents).expect("leader");
        // Followers may still be starting: wait for every /readyz first.
        for (i, agent) in agents.iter().enumerate() {
            let mut last = (0, String::new());
            for _ in 0..200 {
                last = agent.get("/readyz").await;
                if last.0 == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(last.0, 200, "agent {i} never became ready: {}", last.1);
        }
        let holder = lease_holder(&client, &ns, POOL).await;
        assert_eq!(
            holder, agents[leader].identity,
            "Lease and the leader's log disagree"
        );

        for (i, agent) in agents.iter().enumerate() {
            let is_leader = i == leader;
            let (code, body) = agent.get("/v1/leader").await;
            assert_eq!(code, 200, "{body}");
            let view: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(view["holder"], holder.as_str(), "{body}");
            assert_eq!(view["leading"], is_leader, "{body}");
            assert_eq!(view["lease"], POOL);
            assert_eq!(view["namespace"], ns.as_str());
            assert!(view["fencingToken"].as_i64().is_some(), "{body}");
            let (startz, _) = agent.get("/startz").await;
            assert_eq!(
                startz,
                if is_leader { 200 } else { 503 },
                "agent {i} /startz"
            );
            let (ready, body) = agent.get("/readyz").await;
            assert_eq!(ready, 200, "agent {i} /readyz: {body}");
            let (_, metrics) = agent.get("/metrics").await;
            let expected = format!("zen_lead_is_leader {}", u8::from(is_leader));
            assert!(metrics.contains(&expected), "{metrics}");
            assert!(metrics.contains("zen_lead_api_requests_total"), "{metrics}");
        }
        // The change stream starts with the current state.
        let event = first_sse_event(agents[leader].port, "/v1/leader/watch", "*/*").await;
        assert!(event.contains("text/event-stream"), "{event}");
        assert!(event.contains("event: leader"), "{event}");
        assert!(event.contains("\"leading\":true"), "{event}");
        let event = first_sse_event(
            agents[(leader + 1) % 3].port,
            "/v1/leader",
            "text/event-stream",
        )
        .await;
        assert!(event.contains("\"leading\":false"), "{event}");
        assert!(
            event.contains(&format!("\"holder\":\"{holder}\"")),
            "{event}"
        );
        // Nobody else ever claimed leadership.
        for agent in &agents {
            let leading = agent
                .entries()
                .iter()
                .filter(|e| e.event == "leading")
                .count();
            assert_eq!(
                leading,
                usize::from(agent.identity == holder),
                "{}",
                agent.identity
            );
        }
    })
    .await;
}

#[tokio::test]
async fn sigterm_hands_off_at_once_and_sigkill_after_expiry() {
    let client = common::client().await;
    common::with_namespace(&client, "handoff", |client, ns| async move {
        let dir = scratch_dir("handoff");
        let t = TestTimings::FAST;
        create_lease(&client, &ns, POOL, t).await;
        let mut agents: Vec<Agent> = three_agents_one_leading(&dir, &ns, POOL, "h", &[]).await;
        // Let the followers settle on the record (they are idle now).
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Graceful: the next leader acts within a watch round-trip.
        let first = single_leader(&agents).expect("leader");
        let sent = now_mono_ns();
        agents[first].signal(Signal::TERM);
        let status = agents[first].wait_exit(Duration::from_secs(5)).await;
        assert!(
            status.success(),
            "SIGTERM must end the agent with 0, got {status}"
        );
        until("a new leader after SIGTERM", Duration::from_secs(5), || {
            single_leader(&agents).is_some()
        })
        .await;
        let second = single_leader(&agents).expect("leader");
        assert_ne!(second, first);
        let started = agents[second]
            .entries()
            .last()
            .map(|e| e.mono_ns)
            .expect("entry");
        let handoff = Duration::from_nanos((started.saturating_sub(sent)) as u64);
        assert!(
            handoff < Duration::from_millis(1000),
            "graceful hand-off took {handoff:?}"
        );
        let old_end = agents[first]
            .entries()
            .last()
            .map(|e| (e.event.clone(), e.mono_ns))
            .expect("entry");
        assert_eq!(old_end.0, "stopped");
        assert!(
            old_end.1 <= started,
            "the old leader stopped after the new one started"
        );

        // Crash: the others wait for the lease to expire, then take over.
        tokio::time::sleep(Duration::from_millis(300)).await;
        agents[second].kill();
        agents[second].wait_exit(Duration::from_secs(5)).await;
        let killed = agents[second].exited.map(|(_, at)| at).expect("exited");
        until(
            "a leader after SIGKILL",
            t.lease() + Duration::from_secs(3),
            || single_leader(&agents).is_some(),
        )
        .await;
        let third = single_leader(&agents).expect("leader");
        let took = agents[third]
            .entries()
            .last()
            .map(|e| e.mono_ns)
            .expect("entry");
        let takeover = Duration::from_nanos(took.saturating_sub(killed) as u64);
        // Not before the last renewal could have expired, not much after.
        assert!(
            takeover + t.retry + Duration::from_millis(100) >= t.lease(),
            "takeover after {takeover:?} is earlier than the lease allows"
        );
        assert!(
            takeover < t.lease() + Duration::from_millis(1500),
            "takeover took {takeover:?}"
        );
        let all: Vec<_> = agents
            .iter()
            .flat_map(|a| {
                let end = a.exited.map_or(now_mono_ns(), |(_, at)| at);
                intervals(&a.entries(), end)
            })
            .collect();
        assert!(
            overlaps(all.clone()).is_empty(),
            "overlapping terms: {all:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn preferred_holder_annotation_hands_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Api;
    use kube::api::{Patch, PatchParams};
    let client = common::client().await;
    common::with_namespace(&client, "prefer", |client, ns| async move {
        let dir = scratch_dir("prefer");
        create_lease(&client, &ns, POOL, TestTimings::FAST).await;
        let agents: Vec<Agent> = three_agents_one_leading(&dir, &ns, POOL, "p", &[]).await;
        let first = single_leader(&agents).expect("leader");
        let wanted = (first + 2) % 3;
        // What the controller does (a merge patch of metadata only; the
        // election's own writes are compare-and-swap).
        let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let patch = serde_json::json!({"metadata": {"annotations": {
            "zen-lead.io/preferred-holder": agents[wanted].identity}}});
        api.patch(POOL, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
        until(
            "the preferred candidate to lead",
            Duration::from_secs(5),
            || single_leader(&agents) == Some(wanted),
        )
        .await;
        // The agents' own terms (their leadership logs, CLOCK_MONOTONIC):
        // the old leader's ended before the preferred one's began.
        let all = agent_intervals(&agents);
        assert!(all.len() >= 2, "expected two terms: {all:?}");
        assert!(
            overlaps(all.clone()).is_empty(),
            "two agents led at once across the hand-over: {all:?}"
        );
    })
    .await;
}

fn lock_cmd(ns: &str, name: &str, t: TestTimings, extra: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env("KUBECONFIG", common::kubeconfig_path())
        .args(["lock", name, "--namespace", ns])
        .args(t.lock_flags())
        .args(["--grace-period", "500ms"])
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null());
    c
}

#[tokio::test]
async fn lock_runs_the_command_and_exits_with_its_status() {
    let client = common::client().await;
    common::with_namespace(&client, "lock", |_client, ns| async move {
        let t = TestTimings::FAST;
        let out = tokio::task::spawn_blocking({
            let ns = ns.clone();
            move || {
                lock_cmd(
                    &ns,
                    "job",
                    t,
                    &[],
                    &[
                        "sh",
                        "-c",
                        "echo ran-$((6*7)); echo token=$ZEN_LEAD_FENCING_TOKEN; exit 7",
                    ],
                )
                .output()
                .expect("lock")
            }
        })
        .await
        .expect("join");
        assert_eq!(
            out.status.code(),
            Some(7),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(stdout.starts_with("ran-42\n"), "{stdout}");
        let token = |text: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix("token="))
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no fencing token in {text:?}"))
        };
        let first = token(&stdout);
        // The lock is free again and a second run is quick.
        let started = std::time::Instant::now();
        let out = tokio::task::spawn_blocking({
            let ns = ns.clone();
            move || {
                lock_cmd(
                    &ns,
                    "job",
                    t,
                    &[],
                    &[
                        "sh",
                        "-c",
                        "echo token=$ZEN_LEAD_FENCING_TOKEN; kill -TERM $$",
                    ],
                )
                .output()
                .expect("lock")
            }
        })
        .await
        .expect("join");
        assert_eq!(
            out.status.code(),
            Some(128 + 15),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // ZEN_LEAD_FENCING_TOKEN: every new term has a higher one.
        let second = token(&String::from_utf8_lossy(&out.stdout));
        assert!(second > first, "tokens {first} then {second}");
    })
    .await;
}

#[tokio::test]
async fn lock_timeout_gives_up_without_running_the_command() {
    let client = common::client().await;
    common::with_namespace(&client, "locktimeout", |_client, ns| async move {
        let t = TestTimings::FAST;
        let dir = scratch_dir("locktimeout");
        let marker = dir.join("second-ran");
        let first_ran = dir.join("first-ran");
        let first = format!("touch {}; sleep 30", first_ran.display());
        let mut holder = lock_cmd(&ns, "busy", t, &[], &["sh", "-c", &first])
            .stderr(Stdio::null())
            .spawn()
            .expect("holder");
        until("the first lock to be held", Duration::from_secs(15), || {
            first_ran.exists()
        })
        .await;
        let started = std::time::Instant::now();
        let script = format!("touch {}", marker.display());
        let out = tokio::task::spawn_blocking({
            let ns = ns.clone();
            move || {
                lock_cmd(&ns, "busy", t, &["--timeout", "1s"], &["sh", "-c", &script])
                    .output()
                    .expect("lock")
            }
        })
        .await
        .expect("join");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(124), "{stderr}");
        assert!(stderr.contains("--timeout"), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!marker.exists(), "the command ran without the lock");
        let _ = holder.kill();
        let _ = holder.wait();
    })
    .await;
}

#[tokio::test]
async fn lock_stops_the_command_when_the_lease_is_taken_away() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Api;
    use kube::api::PostParams;
    let client = common::client().await;
    common::with_namespace(&client, "locklost", |client, ns| async move {
        let t = TestTimings::FAST;
        let dir = scratch_dir("locklost");
        let marker = dir.join("term");
        let armed = dir.join("armed");
        // `armed` once the trap is in place: a SIGTERM before that would end
        // the shell without a trace, and the test could not tell.
        let script = format!(
            "trap 'touch {}; exit 0' TERM; touch {}; while :; do sleep 0.05; done",
            marker.display(),
            armed.display()
        );
        let mut holder = lock_cmd(&ns, "stolen", t, &[], &["sh", "-c", &script])
            .stderr(Stdio::null())
            .spawn()
            .expect("lock");
        let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
        // Wait until the lock holds the Lease.
        let mut lease = None;
        for _ in 0..200 {
            if let Ok(Some(l)) = api.get_opt("stolen").await
                && l.spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    .is_some_and(|h| !h.is_empty())
            {
                lease = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut lease = lease.expect("the lock never took the Lease");
        // The command runs, its trap armed.
        common::eventually(
            "CMD to start under the lock",
            Duration::from_secs(10),
            || async {
                armed
                    .exists()
                    .then_some(())
                    .ok_or_else(|| "not armed yet".to_owned())
            },
        )
        .await;
        // Someone else overwrites the holder (as if it had expired).
        for _ in 0..20 {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = Some("thief".into());
            }
            match api.replace("stolen", &PostParams::default(), &lease).await {
                Ok(_) => break,
                Err(_) => lease = api.get("stolen").await.expect("get"),
            }
        }
        let status = tokio::task::spawn_blocking(move || holder.wait())
            .await
            .expect("join")
            .expect("wait");
        assert_eq!(
            status.code(),
            Some(75),
            "lock must exit 75 after losing the Lease"
        );
        assert!(marker.exists(), "CMD did not get SIGTERM");
    })
    .await;
}

#[tokio::test]
async fn lock_never_runs_two_commands_at_once() {
    let client = common::client().await;
    common::with_namespace(&client, "lockmutex", |_client, ns| async move {
        let t = TestTimings::FAST;
        let dir = scratch_dir("lockmutex");
        let held = dir.join("held");
        let runs = dir.join("runs");
        let violations = dir.join("violations");
        // mkdir is atomic: it fails if another CMD is inside.
        let script = format!(
            "mkdir {held} 2>/dev/null || echo overlap >> {v}; echo $$ >> {runs}; sleep 0.2; rmdir {held}",
            held = held.display(),
            v = violations.display(),
            runs = runs.display()
        );
        let mut handles = Vec::new();
        for _ in 0..4 {
            let ns = ns.clone();
            let script = script.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                let mut codes = Vec::new();
                for _ in 0..3 {
                    let out = lock_cmd(&ns, "mutex", t, &[], &["sh", "-c", &script])
                        .output()
                        .expect("lock");
                    codes.push(out.status.code());
                }
                codes
            }));
        }
        for h in handles {
            let codes = h.await.expect("join");
            assert!(codes.iter().all(|c| *c == Some(0)), "{codes:?}");
        }
        assert!(!violations.exists(), "two commands ran at once");
        let count = std::fs::read_to_string(&runs).unwrap_or_default().lines().count();
        assert_eq!(count, 12);
    })
    .await;
}

/// Three agents of three different pods that share one custom identity (the
/// same `zen-lead/identity` on every replica, the configuration that once ran
/// three leaders at once). One leads at a time, through a crash, a freeze past
/// the lease and a graceful stop; a restarted agent of the *same* pod takes
/// its own term back without waiting for the lease to expire.
#[tokio::test]
async fn agents_sharing_a_custom_identity_never_lead_together() {
    let client = common::client().await;
    common::with_namespace(&client, "twins", |client, ns| async move {
        let dir = scratch_dir("twins");
        // A 6 s lease: the restarted agent must re-claim before the others
        // may take over, with room for a slow start on a busy machine.
        let t = TestTimings {
            lease_secs: 6,
            renew: Duration::from_secs(4),
            retry: Duration::from_millis(500),
        };
        create_lease(&client, &ns, POOL, t).await;
        let custom = ["--identity-strategy", "custom", "--identity", "worker"];
        let mut agents: Vec<Agent> = three_agents_one_leading(&dir, &ns, POOL, "w", &custom).await;
        // For two lease durations nobody else claims the term: the others
        // see a Lease naming "worker" with another pod's UID.
        let watch_until = tokio::time::Instant::now() + 2 * t.lease();
        while tokio::time::Instant::now() < watch_until {
            let leading = agents.iter().filter(|a| a.leads_by_log()).count();
            assert_eq!(leading, 1, "{leading} agents sharing an identity lead");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first = single_leader(&agents).expect("leader");
        let lease = Api::<Lease>::namespaced(client.clone(), &ns)
            .get(POOL)
            .await
            .expect("lease");
        assert_eq!(
            lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(HOLDER_INSTANCE_ANNOTATION))
                .map(String::as_str),
            Some(format!("worker/{}", agents[first].uid).as_str()),
            "the Lease records the holder's pod UID"
        );

        // The leader's agent container restarts (same pod, same UID): it
        // takes its own term back before the others could (they wait a
        // whole lease after the last renewal they saw).
        agents[first].kill();
        agents[first].wait_exit(Duration::from_secs(5)).await;
        let killed = agents[first].exited.map(|(_, at)| at).expect("exited");
        let pod_name = format!("w{first}");
        let uid = agents[first].uid.clone();
        agents.push(Agent::start_as(
            &common::kubeconfig_path(),
            &dir,
            &ns,
            POOL,
            &pod_name,
            &uid,
            &format!("{pod_name}-restarted"),
            &custom,
        ));
        let restarted = agents.len() - 1;
        until("the restarted agent leads", t.lease(), || {
            agents[restarted].leads_by_log()
        })
        .await;
        let back = agents[restarted]
            .entries()
            .last()
            .map(|e| e.mono_ns)
            .expect("entry");
        assert!(
            Duration::from_nanos(back.saturating_sub(killed) as u64) < t.lease(),
            "the same pod's agent waited for the lease to expire"
        );

        // A freeze past the lease: another pod takes over with a new term;
        // the thawed agent sees another instance of its name and stops.
        let frozen = restarted;
        agents[frozen].signal(Signal::STOP);
        until(
            "another pod leads during the freeze",
            t.lease() + Duration::from_secs(3),
            || {
                agents
                    .iter()
                    .enumerate()
                    .any(|(i, a)| i != frozen && a.leads_by_log())
            },
        )
        .await;
        agents[frozen].signal(Signal::CONT);
        until(
            "the thawed agent ends its term",
            Duration::from_secs(5),
            || !agents[frozen].leads_by_log(),
        )
        .await;
        // Its term ended at its own deadline (noticed on thaw, by the timer
        // or by the new record), never by a release it could not send.
        let ended = agents[frozen].entries();
        assert!(
            matches!(
                ended.last().and_then(|e| e.reason.as_deref()),
                Some("superseded" | "deadline_passed")
            ),
            "{ended:?}"
        );

        // Graceful stop of the current leader: the next one takes over.
        let current = single_leader(&agents).expect("a leader after the freeze");
        agents[current].signal(Signal::TERM);
        agents[current].wait_exit(Duration::from_secs(5)).await;
        until("a leader after SIGTERM", Duration::from_secs(5), || {
            single_leader(&agents).is_some()
        })
        .await;

        let all = agent_intervals(&agents);
        assert!(all.len() >= 4, "expected several terms: {all:?}");
        assert!(
            overlaps(all.clone()).is_empty(),
            "agents sharing an identity led at the same time: {all:?}"
        );
    })
    .await;
}

/// Maintenance pause as the agents keep it: with `zen-lead.io/paused` on the
/// Lease (what the controller writes for `spec.paused`), a holder that stops
/// renewing is not replaced, however long after its expiry; once the pause
/// is lifted, a follower takes over. The wait is a ratio of the same run's
/// unpaused take-over after a crash, so a slow machine cannot make it pass
/// early.
#[tokio::test]
async fn a_paused_lease_is_not_taken_over_after_expiry_until_resumed() {
    let client = common::client().await;
    common::with_namespace(&client, "pause", |client, ns| async move {
        let dir = scratch_dir("pause");
        let t = TestTimings::FAST;
        create_lease(&client, &ns, POOL, t).await;
        let mut agents: Vec<Agent> = three_agents_one_leading(&dir, &ns, POOL, "p", &[]).await;

        // The peer: unpaused, a crashed holder is replaced after expiry.
        let first = single_leader(&agents).expect("leader");
        agents[first].kill();
        agents[first].wait_exit(Duration::from_secs(5)).await;
        let control = until(
            "a leader after SIGKILL (unpaused)",
            Duration::from_secs(20),
            || single_leader(&agents).is_some(),
        )
        .await;
        let second = single_leader(&agents).expect("leader");

        // Paused, the holder freezes (SIGSTOP: no renewal, no release).
        set_lease_paused(&client, &ns, POOL, true).await;
        let holder = agents[second].identity.clone();
        agents[second].signal(Signal::STOP);
        let window = (control * 3).max(t.lease() * 3);
        let since = tokio::time::Instant::now();
        while since.elapsed() < window {
            let others: Vec<&str> = agents
                .iter()
                .enumerate()
                .filter(|(i, a)| *i != second && a.leads_by_log())
                .map(|(_, a)| a.name.as_str())
                .collect();
            assert!(
                others.is_empty(),
                "{others:?} took a paused Lease {:?} after its holder froze (unpaused take-over: \
                 {control:?})",
                since.elapsed()
            );
            let now = lease_holder(&client, &ns, POOL).await;
            assert_eq!(now, holder, "the paused Lease changed holder");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Resumed: the remaining follower takes the long-expired Lease.
        let resumed = tokio::time::Instant::now();
        set_lease_paused(&client, &ns, POOL, false).await;
        until("a leader after the resume", Duration::from_secs(20), || {
            agents
                .iter()
                .enumerate()
                .any(|(i, a)| i != second && i != first && a.leads_by_log())
        })
        .await;
        let took = resumed.elapsed();
        assert!(
            took < control + Duration::from_secs(2),
            "the take-over after the resume took {took:?}; the Lease had long expired \
             (unpaused take-over: {control:?})"
        );

        // The frozen holder, woken, ends its term at its deadline: never two
        // leaders at once.
        agents[second].signal(Signal::CONT);
        until(
            "the woken holder to log the end of its term",
            Duration::from_secs(10),
            || !agents[second].leads_by_log(),
        )
        .await;
        let all = agent_intervals(&agents);
        assert!(
            overlaps(all.clone()).is_empty(),
            "overlapping terms: {all:?}"
        );
    })
    .await;
}
