//! `zen-lead run` and `zen-lead probe` as built, against a fake agent served
//! from the test (just enough HTTP/1.1 and server-sent events), with real
//! processes as CMD. No cluster.
//!
//! Deadlines in the fake agent's events are real CLOCK_MONOTONIC readings,
//! as the agent sends them. Every assertion waits on a condition with a
//! generous deadline; timing bounds only check what the stop rule promises.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};
use zen_lead::election::clock;

const BIN: &str = env!("CARGO_BIN_EXE_zen-lead");
/// Bound on anything that should happen "at once".
const PROMPT: Duration = Duration::from_secs(5);

/// What the fake agent says and whether it answers at all.
#[derive(Clone)]
struct AgentState {
    view: String,
    /// Answer 503 to everything (the agent is restarting).
    down: bool,
    /// Answer 409 to `/v1/app/hold` (as an agent that cannot count the app).
    refuse_holds: bool,
    /// Bumped to close every open event stream.
    generation: u64,
}

struct FakeAgent {
    addr: SocketAddr,
    state: watch::Sender<AgentState>,
    watches: Arc<AtomicUsize>,
    /// The path and query of each release request.
    releases: Arc<Mutex<Vec<String>>>,
    holds: Holds,
}

/// `/v1/app/hold` requests: asked for, and open now.
#[derive(Clone, Default)]
struct Holds {
    asked: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

const FAILED: &str = "/v1/release?reason=app-failed";
const STOPPED: &str = "/v1/release?reason=app-stopped";

impl FakeAgent {
    fn releases(&self) -> Vec<String> {
        self.releases.lock().expect("releases").clone()
    }

    async fn start(view: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (state, _) = watch::channel(AgentState {
            view,
            down: false,
            refuse_holds: false,
            generation: 0,
        });
        let watches = Arc::new(AtomicUsize::new(0));
        let releases = Arc::new(Mutex::new(Vec::new()));
        let holds = Holds::default();
        let (tx, w, r, h) = (
            state.clone(),
            watches.clone(),
            releases.clone(),
            holds.clone(),
        );
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let seen = Seen {
                    watches: w.clone(),
                    releases: r.clone(),
                    holds: h.clone(),
                };
                tokio::spawn(serve(conn, tx.subscribe(), seen));
            }
        });
        Self {
            addr,
            state,
            watches,
            releases,
            holds,
        }
    }

    fn say(&self, view: String) {
        self.state.send_modify(|s| s.view = view);
    }

    /// Closes the open streams; `down`: answer 503 from now on.
    fn break_streams(&self, down: bool) {
        self.state.send_modify(|s| {
            s.down = down;
            s.generation += 1;
        });
    }

    /// Waits until `run` has opened its event stream (and so got the view).
    async fn wait_watching(&self) {
        common::wait_until("run to open the event stream", PROMPT, || {
            self.watches.load(Ordering::SeqCst) > 0
        })
        .await;
        // The first event is written right after the response head.
        sleep(Duration::from_millis(300)).await;
    }
}

/// What the fake agent records of the requests it serves.
struct Seen {
    watches: Arc<AtomicUsize>,
    releases: Arc<Mutex<Vec<String>>>,
    holds: Holds,
}

/// `POST /v1/app/hold` as the agent answers it: `100 Continue` once the
/// hold is counted, then open until `run` closes the connection.
async fn serve_hold(mut conn: TcpStream, refuse: bool, holds: &Holds) {
    holds.asked.fetch_add(1, Ordering::SeqCst);
    if refuse {
        let _ = conn
            .write_all(b"HTTP/1.1 409 Conflict\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    if conn
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    holds.open.fetch_add(1, Ordering::SeqCst);
    let mut buf = [0u8; 256];
    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    holds.open.fetch_sub(1, Ordering::SeqCst);
}

async fn serve(mut conn: TcpStream, mut state: watch::Receiver<AgentState>, seen: Seen) {
    let Seen {
        watches,
        releases,
        holds,
    } = seen;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let current = state.borrow_and_update().clone();
    if current.down {
        let _ = conn
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    let plain = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if request_line.starts_with("GET /v1/leader/watch ") {
        watches.fetch_add(1, Ordering::SeqCst);
        let generation = current.generation;
        let mut sent = None;
        if conn
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
            )
            .await
            .is_err()
        {
            return;
        }
        loop {
            let now = state.borrow_and_update().clone();
            if now.generation != generation {
                return;
            }
            if sent.as_ref() != Some(&now.view) {
                let event = format!("event: leader\ndata: {}\n\n", now.view);
                if conn.write_all(event.as_bytes()).await.is_err() {
                    return;
                }
                sent = Some(now.view);
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    } else if request_line.starts_with("POST /v1/app/hold ") {
        serve_hold(conn, current.refuse_holds, &holds).await;
    } else if request_line.starts_with("GET /v1/leader ") {
        let _ = conn.write_all(plain(&current.view).as_bytes()).await;
    } else if let Some(rest) = request_line.strip_prefix("POST /v1/release") {
        let path = format!("/v1/release{}", rest.split(' ').next().unwrap_or_default());
        releases.lock().expect("releases").push(path);
        let _ = conn.write_all(plain("{}").as_bytes()).await;
    } else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    }
}

fn view_json(leading: bool, token: i64, lead_for: Option<Duration>, grace: Duration) -> String {
    let until = lead_for.map(|d| clock::now_mono_ns() + d.as_nanos());
    serde_json::json!({
        "namespace": "ns",
        "lease": "pool-a",
        "identity": "pod-1_abcd",
        "holder": if leading { Some("pod-1_abcd") } else { Some("pod-2_ef01") },
        "leading": leading,
        "fencingToken": token,
        "since": "2024-01-01T00:00:00Z",
        "leaseExists": true,
        "connected": true,
        "leadUntilMonotonicNs": until.map(|u| u64::try_from(u).expect("u64")),
        "stopGraceMs": u64::try_from(grace.as_millis()).expect("ms"),
        "someFutureField": 1,
    })
    .to_string()
}

fn leading(token: i64, lead_for: Duration, grace: Duration) -> String {
    view_json(true, token, Some(lead_for), grace)
}

fn following() -> String {
    view_json(false, 1, None, Duration::from_secs(1))
}

/// A fresh scratch directory.
fn scratch(name: &str) -> PathBuf {
    common::scratch_dir(&format!("run-cmd-{name}"))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

async fn exit_within(child: &mut Child, within: Duration) -> ExitStatus {
    timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("run did not exit within {within:?}"))
        .expect("wait")
}

/// A CMD that records its start (token, pool, identity) and, on SIGTERM,
/// "term", then exits `term_code`.
fn recording_cmd(dir: &Path, term_code: i32) -> String {
    format!(
        "echo \"$ZEN_LEAD_FENCING_TOKEN $ZEN_LEAD_POOL $ZEN_LEAD_IDENTITY\" >> {d}/started; \
         trap 'echo term >> {d}/stopped; exit {term_code}' TERM; \
         while :; do sleep 0.05; done",
        d = dir.display()
    )
}

/// A `zen-lead run` that is stopped like a pod's container when the test
/// ends (SIGTERM, which it forwards to CMD; SIGKILL if still there after a
/// few seconds), so no CMD outlives a test, passed or failed.
struct Run(Child);

impl std::ops::Deref for Run {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Run {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !still_running(&mut self.0) {
            return;
        }
        send_signal(&self.0, rustix::process::Signal::TERM);
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while still_running(&mut self.0) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        // kill_on_drop sends SIGKILL if it is still running.
    }
}

fn spawn_run(agent: &FakeAgent, script: &str) -> Run {
    spawn_run_at(agent.addr, &["sh", "-c", script])
}

fn spawn_run_at(addr: SocketAddr, cmd: &[&str]) -> Run {
    Run(Command::new(BIN)
        .args(["run", "--agent-addr", &addr.to_string(), "--"])
        .args(cmd)
        .env("ZEN_LEAD_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn zen-lead run"))
}

fn send_signal(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?))
    {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

fn still_running(child: &mut Child) -> bool {
    child.try_wait().expect("try_wait").is_none()
}

#[tokio::test]
async fn cmd_starts_only_while_leading_with_the_term_in_its_env() {
    let dir = scratch("start");
    let agent = FakeAgent::start(following()).await;
    let mut run = spawn_run(&agent, &recording_cmd(&dir, 0));
    agent.wait_watching().await;
    assert!(
        lines(&dir.join("started")).is_empty(),
        "CMD started while following"
    );
    assert!(still_running(&mut run));

    agent.say(leading(5, Duration::from_secs(30), Duration::from_secs(1)));
    common::wait_until("CMD to start", PROMPT, || {
        !lines(&dir.join("started")).is_empty()
    })
    .await;
    assert_eq!(lines(&dir.join("started")), ["5 pool-a pod-1_abcd"]);
    // A renewal of the same term does not restart it.
    agent.say(leading(5, Duration::from_secs(40), Duration::from_secs(1)));
    sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&dir.join("started")).len(), 1);
    assert!(lines(&dir.join("stopped")).is_empty());
}

#[tokio::test]
async fn cmd_stops_when_the_deadline_passes_and_starts_again_in_the_next_term() {
    let dir = scratch("deadline");
    let lead_for = Duration::from_millis(1500);
    let agent = FakeAgent::start(following()).await;
    let mut run = spawn_run(&agent, &recording_cmd(&dir, 143));
    agent.wait_watching().await;
    let deadline = Instant::now() + lead_for;
    agent.say(leading(5, lead_for, Duration::from_secs(5)));
    common::wait_until("CMD to start", PROMPT, || {
        !lines(&dir.join("started")).is_empty()
    })
    .await;
    // No renewal, no other event: only run's own timer can stop CMD.
    common::wait_until(
        "CMD to get SIGTERM at the deadline",
        lead_for + PROMPT,
        || !lines(&dir.join("stopped")).is_empty(),
    )
    .await;
    let stopped_at = Instant::now();
    assert!(
        stopped_at + Duration::from_millis(50) >= deadline,
        "stopped {:?} before the deadline",
        deadline - stopped_at
    );
    assert!(
        stopped_at <= deadline + Duration::from_secs(2),
        "stopped {:?} after the deadline",
        stopped_at - deadline
    );
    // Leadership ended, not run: it waits for the next term.
    sleep(Duration::from_millis(300)).await;
    assert!(still_running(&mut run), "run exited after CMD was stopped");

    agent.say(leading(6, Duration::from_secs(30), Duration::from_secs(1)));
    common::wait_until("CMD to start again", PROMPT, || {
        lines(&dir.join("started")).len() == 2
    })
    .await;
    assert_eq!(lines(&dir.join("started"))[1], "6 pool-a pod-1_abcd");
}

#[tokio::test]
async fn cmd_stops_when_the_agent_says_not_leading_or_the_term_changes() {
    let dir = scratch("not-leading");
    let agent = FakeAgent::start(leading(5, Duration::from_secs(30), Duration::from_secs(5))).await;
    let mut run = spawn_run(&agent, &recording_cmd(&dir, 143));
    common::wait_until("CMD to start", PROMPT, || {
        !lines(&dir.join("started")).is_empty()
    })
    .await;
    agent.say(following());
    common::wait_until("CMD to stop", PROMPT, || {
        lines(&dir.join("stopped")).len() == 1
    })
    .await;

    agent.say(leading(6, Duration::from_secs(30), Duration::from_secs(5)));
    common::wait_until("CMD to start again", PROMPT, || {
        lines(&dir.join("started")).len() == 2
    })
    .await;
    // A term CMD did not start in (we missed its beginning): stop, restart.
    agent.say(leading(8, Duration::from_secs(30), Duration::from_secs(5)));
    common::wait_until("CMD to stop for the new term", PROMPT, || {
        lines(&dir.join("stopped")).len() == 2
    })
    .await;
    common::wait_until("CMD to start in the new term", PROMPT, || {
        lines(&dir.join("started")).len() == 3
    })
    .await;
    assert_eq!(lines(&dir.join("started"))[2], "8 pool-a pod-1_abcd");
    assert!(still_running(&mut run));
}

#[tokio::test]
async fn cmd_stops_at_once_when_the_stream_breaks() {
    let dir = scratch("broken");
    let agent = FakeAgent::start(leading(5, Duration::from_secs(60), Duration::from_secs(5))).await;
    let mut run = spawn_run(&agent, &recording_cmd(&dir, 143));
    common::wait_until("CMD to start", PROMPT, || {
        !lines(&dir.join("started")).is_empty()
    })
    .await;
    agent.break_streams(true);
    // Long before the 60 s deadline.
    common::wait_until("CMD to stop after the stream broke", PROMPT, || {
        !lines(&dir.join("stopped")).is_empty()
    })
    .await;
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lines(&dir.join("started")).len(),
        1,
        "restarted while the agent is down"
    );
    assert!(still_running(&mut run));

    // The agent is back and the pod still leads: CMD runs again.
    agent.state.send_modify(|s| s.down = false);
    common::wait_until("CMD to start after the agent is back", PROMPT, || {
        lines(&dir.join("started")).len() == 2
    })
    .await;
}

#[tokio::test]
async fn cmd_failing_releases_the_pool_and_run_exits_with_its_status() {
    let dir = scratch("fail");
    let agent = FakeAgent::start(leading(5, Duration::from_secs(30), Duration::from_secs(1))).await;
    let script = format!("touch {}/ran; exit 3", dir.display());
    let mut run = spawn_run(&agent, &script);
    let status = exit_within(&mut run, PROMPT).await;
    assert_eq!(status.code(), Some(3));
    assert!(dir.join("ran").exists());
    assert_eq!(agent.releases(), [FAILED]);
}

#[tokio::test]
async fn cmd_killed_by_a_signal_exits_128_plus_the_signal() {
    let agent = FakeAgent::start(leading(5, Duration::from_secs(30), Duration::from_secs(1))).await;
    let mut run = spawn_run(&agent, "kill -USR1 $$");
    let status = exit_within(&mut run, PROMPT).await;
    assert_eq!(status.code(), Some(128 + 10));
    assert_eq!(agent.releases(), [FAILED]);
}

#[tokio::test]
async fn cmd_exiting_0_exits_0_without_release() {
    let agent = FakeAgent::start(leading(5, Duration::from_secs(30), Duration::from_secs(1))).await;
    let mut run = spawn_run(&agent, "exit 0");
    let status = exit_within(&mut run, PROMPT).await;
    assert_eq!(status.code(), Some(0));
    assert!(agent.releases().is_empty());
}

#[tokio::test]
async fn sigterm_to_run_reaches_cmd_then_run_hands_over_and_exits_with_its_status() {
    let dir = scratch("sigterm");
    let agent = FakeAgent::start(leading(5, Duration::from_secs(30), Duration::from_secs(5))).await;
    let mut run = spawn_run(&agent, &recording_cmd(&dir, 42));
    common::wait_until("CMD to start", PROMPT, || {
        !lines(&dir.join("started")).is_empty()
    })
    .await;
    send_signal(&run, rustix::process::Signal::TERM);
    let status = exit_within(&mut run, PROMPT).await;
    assert_eq!(status.code(), Some(42));
    assert_eq!(lines(&dir.join("stopped")), ["term"]);
    // The pod is going away: hand over without waiting for the kubelet to
    // stop the agent.
    assert_eq!(agent.releases(), [STOPPED]);
}

#[tokio::test]
async fn sigterm_while_waiting_exits_0_at_once() {
    let agent = FakeAgent::start(following()).await;
    let mut run = spawn_run(&agent, "exit 9");
    agent.wait_watching().await;
    send_signal(&run, rustix::process::Signal::TERM);
    let status = exit_within(&mut run, Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_before_the_agent_answers_exits_0_at_once() {
    // Nothing listens there: run keeps retrying.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut run = spawn_run_at(addr, &["true"]);
    sleep(Duration::from_millis(500)).await;
    assert!(still_running(&mut run));
    send_signal(&run, rustix::process::Signal::TERM);
    assert_eq!(
        exit_within(&mut run, Duration::from_secs(2)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn cmd_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = scratch("ignore");
    let lead_for = Duration::from_millis(1000);
    let grace = Duration::from_millis(1500);
    let agent = FakeAgent::start(following()).await;
    // SIG_IGN is inherited across exec, so `sleep` ignores SIGTERM too.
    let script = format!(
        "trap '' TERM; echo $$ > {d}/pid; while :; do sleep 0.05; done",
        d = dir.display()
    );
    let mut run = spawn_run(&agent, &script);
    agent.wait_watching().await;
    let deadline = Instant::now() + lead_for;
    agent.say(leading(5, lead_for, grace));
    common::wait_until("CMD to start", PROMPT, || {
        !lines(&dir.join("pid")).is_empty()
    })
    .await;
    let pid: i32 = lines(&dir.join("pid"))[0].parse().expect("pid");
    let pid = rustix::process::Pid::from_raw(pid).expect("pid");
    // run reaps CMD as soon as it dies, so "no such process" means gone.
    common::wait_until("CMD to be killed", lead_for + grace + PROMPT, || {
        rustix::process::test_kill_process(pid).is_err()
    })
    .await;
    let gone_at = Instant::now();
    assert!(
        gone_at + Duration::from_millis(100) >= deadline + grace,
        "killed {:?} before deadline + grace",
        (deadline + grace) - gone_at
    );
    assert!(still_running(&mut run));
}

#[tokio::test]
async fn orphans_of_cmd_are_reaped() {
    let dir = scratch("orphans");
    let agent = FakeAgent::start(leading(5, Duration::from_secs(30), Duration::from_secs(1))).await;
    // The subshell exits at once, orphaning its background `sleep`.
    let script = format!(
        "( sleep 1 & echo $! > {d}/orphan ); while :; do sleep 0.05; done",
        d = dir.display()
    );
    let mut run = spawn_run(&agent, &script);
    common::wait_until("the orphan's pid", PROMPT, || {
        !lines(&dir.join("orphan")).is_empty()
    })
    .await;
    let pid: i32 = lines(&dir.join("orphan"))[0].parse().expect("pid");
    // Adopted by run (a child subreaper when not PID 1), not the host's init.
    let run_pid = run.id().expect("run pid").to_string();
    let parent = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest.to_owned());
        after_name.and_then(|rest| rest.split_whitespace().nth(1).map(str::to_owned))
    };
    common::wait_until("the orphan to be adopted by run", PROMPT, || {
        parent().as_deref() == Some(run_pid.as_str())
    })
    .await;
    let pid = rustix::process::Pid::from_raw(pid).expect("pid");
    // An unreaped orphan would stay a zombie, which still "exists".
    common::wait_until("the orphan to be reaped", PROMPT, || {
        rustix::process::test_kill_process(pid).is_err()
    })
    .await;
    assert!(still_running(&mut run));
}

async fn probe(agent_addr: SocketAddr, kind: &str, budget: &str, cmd: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .args(["probe", "--kind", kind, "--budget", budget, "--agent-addr"])
        .arg(agent_addr.to_string())
        .arg("--")
        .args(cmd)
        .output()
        .await
        .expect("probe");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn probe_passes_without_running_cmd_while_not_leading() {
    let dir = scratch("probe-follow");
    let agent = FakeAgent::start(following()).await;
    let marker = format!("touch {}/ran; exit 1", dir.display());
    let (code, out) = probe(agent.addr, "readiness", "0s", &["sh", "-c", &marker]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("does not lead"), "{out}");
    assert!(!dir.join("ran").exists());

    agent.break_streams(true);
    let (code, out) = probe(agent.addr, "liveness", "0s", &["sh", "-c", &marker]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("agent does not answer"), "{out}");
    assert!(!dir.join("ran").exists());
}

#[tokio::test]
async fn probe_runs_cmd_while_leading() {
    let agent = FakeAgent::start(leading(5, Duration::from_secs(30), Duration::from_secs(1))).await;
    let (code, _) = probe(agent.addr, "readiness", "0s", &["sh", "-c", "exit 3"]).await;
    assert_eq!(code, 3);
    // The term began in 2024: far beyond the liveness budget.
    let (code, _) = probe(agent.addr, "liveness", "30s", &["sh", "-c", "exit 4"]).await;
    assert_eq!(code, 4);
    let (code, _) = probe(
        agent.addr,
        "startup",
        "30s",
        &["/nonexistent/zen-lead-probe"],
    )
    .await;
    assert_eq!(code, 127);
}

#[tokio::test]
async fn probe_liveness_passes_early_in_the_term() {
    let agent = FakeAgent::start(leading(5, Duration::from_secs(30), Duration::from_secs(1))).await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    agent.state.send_modify(|s| {
        s.view = s.view.replace("2024-01-01T00:00:00Z", &now);
    });
    let (code, out) = probe(agent.addr, "liveness", "1h", &["sh", "-c", "exit 4"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("starting"), "{out}");
    // Readiness has no budget.
    let (code, _) = probe(agent.addr, "readiness", "1h", &["sh", "-c", "exit 4"]).await;
    assert_eq!(code, 4);
}

#[tokio::test]
async fn cmd_waits_until_the_agent_confirms_the_hold() {
    let dir = scratch("hold-refused");
    let agent = FakeAgent::start(leading(5, Duration::from_secs(60), Duration::from_secs(1))).await;
    agent.state.send_modify(|s| s.refuse_holds = true);
    let mut run = spawn_run(&agent, &recording_cmd(&dir, 143));
    // Retried with a back-off (100, 200, 400 ms ...), never started.
    common::wait_until("run to ask for a hold three times", PROMPT, || {
        agent.holds.asked.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(
        lines(&dir.join("started")).is_empty(),
        "CMD started although the agent did not count it as running"
    );
    assert!(still_running(&mut run));

    agent.state.send_modify(|s| s.refuse_holds = false);
    common::wait_until("CMD to start once the hold is confirmed", PROMPT, || {
        !lines(&dir.join("started")).is_empty()
    })
    .await;
    assert_eq!(lines(&dir.join("started")), ["5 pool-a pod-1_abcd"]);
    assert_eq!(agent.holds.open.load(Ordering::SeqCst), 1);
}

/// A process as `/proc` shows it; `None` when gone.
fn stat(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Running (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    stat(pid)
        .as_deref()
        .and_then(zen_lead::run::tree::parse_stat)
        .is_some_and(|e| !e.dead)
}

/// The live descendants of `pid` now.
fn descendants_of(pid: u32) -> Vec<i32> {
    let table: Vec<_> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|d| stat(d.ok()?.file_name().to_str()?.parse().ok()?))
        .filter_map(|s| zen_lead::run::tree::parse_stat(&s))
        .collect();
    zen_lead::run::tree::descendants(i32::try_from(pid).expect("pid"), &table)
}

/// The process group of `pid`.
fn pgrp(pid: i32) -> Option<i32> {
    let stat = stat(pid)?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Kills the `sleep`s whose pids the named files hold when the test ends,
/// so a failing test leaves nothing behind.
struct Strays(Vec<PathBuf>);

impl Drop for Strays {
    fn drop(&mut self) {
        for file in &self.0 {
            for pid in lines(file).iter().filter_map(|l| l.parse::<i32>().ok()) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("sleep")
                    && let Some(pid) = rustix::process::Pid::from_raw(pid)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

/// Shell that starts `sleep 300` in a session of its own (so outside CMD's
/// process group), writing its pid to `file`; `orphan`: from a subshell that
/// exits at once, so the sleep's parent is gone too.
fn setsid_sleep(file: &Path, orphan: bool) -> String {
    let start = format!(
        "setsid sh -c 'echo $$ > {f}.tmp; mv {f}.tmp {f}; exec sleep 300' &",
        f = file.display()
    );
    if orphan {
        format!("( {start} ); ")
    } else {
        format!("{start} ")
    }
}

#[tokio::test]
async fn processes_that_left_cmds_group_are_stopped_when_the_term_ends() {
    let dir = scratch("setsid");
    let (child, orphan) = (dir.join("child"), dir.join("orphan"));
    let _strays = Strays(vec![child.clone(), orphan.clone()]);
    let agent = FakeAgent::start(following()).await;
    let script = format!(
        "{}{}{}",
        setsid_sleep(&child, false),
        setsid_sleep(&orphan, true),
        recording_cmd(&dir, 143)
    );
    let mut run = spawn_run(&agent, &script);
    agent.wait_watching().await;
    agent.say(leading(5, Duration::from_secs(60), Duration::from_secs(5)));
    common::wait_until("CMD and both sleeps to start", PROMPT, || {
        !lines(&dir.join("started")).is_empty()
            && !lines(&child).is_empty()
            && !lines(&orphan).is_empty()
    })
    .await;
    let pids: Vec<i32> = [&child, &orphan]
        .iter()
        .map(|f| lines(f)[0].parse().expect("pid"))
        .collect();
    let run_pid = run.id().expect("run pid");
    let cmd_group = descendants_of(run_pid)
        .into_iter()
        .find_map(|p| pgrp(p).filter(|g| *g == p && !pids.contains(&p)))
        .expect("CMD's process group");
    for pid in &pids {
        assert!(alive(*pid), "sleep {pid} is running");
        assert_ne!(pgrp(*pid), Some(cmd_group), "sleep {pid} left CMD's group");
        assert!(descendants_of(run_pid).contains(pid), "{pid} under run");
    }

    agent.say(following());
    common::wait_until("CMD to stop", PROMPT, || {
        !lines(&dir.join("stopped")).is_empty()
    })
    .await;
    common::wait_until(
        "every process CMD started, in its group or not, to be gone",
        PROMPT,
        || pids.iter().all(|p| !alive(*p)) && descendants_of(run_pid).is_empty(),
    )
    .await;
    // Leadership ended, not run: it waits for the next term.
    assert!(still_running(&mut run));
}

#[tokio::test]
async fn run_exiting_leaves_no_process_behind() {
    let dir = scratch("setsid-exit");
    let daemon = dir.join("daemon");
    let _strays = Strays(vec![daemon.clone()]);
    let agent = FakeAgent::start(leading(5, Duration::from_secs(60), Duration::from_secs(5))).await;
    // CMD starts a process in a session of its own, then completes.
    let script = format!(
        "{}while [ ! -s {f} ]; do sleep 0.01; done; exit 0",
        setsid_sleep(&daemon, false),
        f = daemon.display()
    );
    let mut run = spawn_run(&agent, &script);
    let status = exit_within(&mut run, PROMPT).await;
    assert_eq!(status.code(), Some(0));
    let pid: i32 = lines(&daemon)[0].parse().expect("pid");
    // Gone by the time run has exited: no waiting here.
    assert!(!alive(pid), "the process CMD left ({pid}) outlived run");
}
