//! docs/INTEGRATION.md's programs (docs/integration/: shell, Python, Go) run
//! against real agents on the local cluster, one leading and one following,
//! and must say what the Lease says.

mod common;
#[path = "common/election.rs"]
mod election_util;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use election_util::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const POOL: &str = "docs";

fn program(name: &str) -> PathBuf {
    common::repo_root().join("docs/integration").join(name)
}

/// Runs `cmd args` with the agent port in the environment, as a container
/// of the pod would (there the default, 9466, applies).
fn run(cmd: &str, args: &[&str], port: u16, dir: &std::path::Path) -> Output {
    Command::new(cmd)
        .args(args)
        .env("ZEN_LEAD_AGENT_PORT", port.to_string())
        // `go run` needs a writable build cache; keep it in the scratch dir.
        .env("GOCACHE", dir.join("gocache"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (is it installed?): {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn shell_python_and_go_examples_agree_with_the_lease() {
    let client = common::client().await;
    common::with_namespace(&client, "docs", |client, ns| async move {
        let dir = scratch_dir("integration-doc");
        create_lease(&client, &ns, POOL, TestTimings::FAST).await;
        let leader = Agent::start(&dir, &ns, POOL, "first", &[]);
        until("the first agent leads", Duration::from_secs(20), || {
            leader.leads_by_log()
        })
        .await;
        let follower = Agent::start(&dir, &ns, POOL, "second", &[]);
        common::eventually(
            "the second agent to know the Lease",
            Duration::from_secs(20),
            || async {
                let (code, body) = follower.get("/readyz").await;
                (code == 200).then_some(()).ok_or(format!("{code} {body}"))
            },
        )
        .await;
        let token = Api::<Lease>::namespaced(client.clone(), &ns)
            .get(POOL)
            .await
            .expect("the Lease")
            .spec
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        let holder = lease_holder(&client, &ns, POOL).await;
        assert_eq!(holder, leader.identity);

        // The shell check: 0 leading, 1 following, 2 no agent.
        let sh = program("is-leader.sh");
        let sh = sh.to_string_lossy();
        let code = |port| run("sh", &[&sh], port, &dir).status.code();
        assert_eq!(code(leader.port), Some(0), "is-leader.sh on the leader");
        assert_eq!(code(follower.port), Some(1), "is-leader.sh on the follower");
        assert_eq!(code(free_port()), Some(2), "is-leader.sh without an agent");

        // Python, the event stream: the first event states the current view.
        let py = program("watch_leader.py");
        let py = py.to_string_lossy();
        let first_event = |port| stdout(&run("python3", &[&py, "--events", "1"], port, &dir));
        assert_eq!(first_event(leader.port), format!("leading token={token}"));
        assert_eq!(
            first_event(follower.port),
            format!("following holder={holder}")
        );

        // Go, one question.
        let go = program("leader.go");
        let go = go.to_string_lossy();
        let ask = |port| {
            let out = run("go", &["run", &go], port, &dir);
            assert!(out.status.success(), "go run leader.go: {out:?}");
            stdout(&out)
        };
        assert_eq!(ask(leader.port), format!("leading {token}"));
        assert_eq!(ask(follower.port), format!("following {holder}"));
    })
    .await;
}
