//! `zen-lead run -- CMD` (the PID 1 of an app container in a `process` pool)
//! and `zen-lead probe` (its exec probes).
//!
//! `run` follows the pod's agent (`/v1/leader/watch`) and runs CMD only
//! within the terms it is told about; [`machine`] holds every decision,
//! this module the processes, timers, signals and the agent's stream.
//!
//! Reaping: as PID 1 (or a child subreaper otherwise), `run` reaps every
//! child that exits, orphaned grandchildren included (SIGCHLD, then `wait(WNOHANG)` until none is
//! left). CMD's own exit is recognised there by its pid, so CMD is spawned
//! with `std::process` and never awaited through tokio (whose wait would
//! race the reaper for the status).
//!
//! Stopping: signals go to CMD's process group and to every other
//! descendant of `run` ([`tree`]), so a process that left the group
//! (setsid, setpgid) is stopped with it; once CMD has exited, whatever it
//! left is SIGKILLed before the hold is dropped or `run` exits.

pub mod client;
pub mod machine;
pub mod probe;
pub mod sse;
pub mod tree;

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Incoming;
use rustix::process::{Pid, Signal, WaitOptions};
use tokio::net::TcpStream;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{error, info, warn};

use crate::contract::{
    FENCING_TOKEN_ENV, IDENTITY_ENV, POOL_ENV, SKIPPED_RUN_MARKER, TERMINATION_LOG,
};
use crate::election::clock;
use crate::signals::{
    self, EXIT_INTERNAL, EXIT_NOT_FOUND, SignalError, exit_code, signal_group, spawn_failure,
};
use machine::{Action, Input, Launch, Machine, ReleaseReason, View};

/// What `zen-lead run` runs, from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The agent's loopback API.
    pub agent_addr: SocketAddr,
    /// Longest pause between attempts to reach the agent.
    pub reconnect_max: Duration,
    /// How long to wait for the agent to accept a release before exiting.
    pub release_timeout: Duration,
    /// Program and arguments.
    pub command: Vec<String>,
}

/// Errors of `run` and `probe`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("nothing to run: give the command after `--`, e.g. `zen-lead run -- /app/server`")]
    NoCommand,

    #[error(transparent)]
    Signal(#[from] SignalError),

    #[error(
        "cannot connect to the zen-lead agent at {addr} (--agent-addr, ZEN_LEAD_AGENT_ADDR): \
         {source}; is the agent sidecar running in this pod?"
    )]
    AgentConnect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("HTTP exchange with the zen-lead agent at {addr} failed: {source}")]
    AgentHttp {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },

    #[error(
        "the zen-lead agent at {addr} answered {status} to {path}; is it an older agent \
         without `process` activation?"
    )]
    AgentStatus {
        addr: SocketAddr,
        path: &'static str,
        status: StatusCode,
    },

    #[error("could not build the request for {path} to the zen-lead agent at {addr}")]
    AgentRequest {
        addr: SocketAddr,
        path: &'static str,
    },

    #[error("the zen-lead agent at {addr} sent an unreadable or oversized body")]
    AgentBody { addr: SocketAddr },

    #[error(
        "the zen-lead agent at {addr} sent JSON this zen-lead cannot read ({source}); do the \
         agent and app containers run the same zen-lead version?"
    )]
    AgentJson {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },

    #[error("no answer from the zen-lead agent at {addr} within {timeout:?}")]
    AgentTimeout { addr: SocketAddr, timeout: Duration },
}

/// What the agent's stream tells the main loop.
enum Feed {
    Event(View),
    Broken,
}

/// First pause between attempts to reach the agent.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Bound on connecting and getting the response head of the watch.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Follows the agent's event stream for as long as the main loop listens,
/// reconnecting with a capped backoff; one log line per outage.
async fn follow(addr: SocketAddr, reconnect_max: Duration, feed: mpsc::Sender<Feed>) {
    let mut backoff = RECONNECT_MIN;
    let mut in_outage = false;
    loop {
        let opened = timeout(CONNECT_TIMEOUT, client::watch(addr))
            .await
            .unwrap_or(Err(RunError::AgentTimeout {
                addr,
                timeout: CONNECT_TIMEOUT,
            }));
        match opened {
            Ok(body) => {
                if in_outage {
                    info!(agent = %addr, "connected to the agent");
                }
                backoff = RECONNECT_MIN;
                let why = read_events(addr, body, &feed).await;
                if feed.send(Feed::Broken).await.is_err() {
                    return;
                }
                // Set in both arms: one line per outage, however many retries.
                warn!(agent = %addr, "the agent's event stream ended ({why}); reconnecting");
                in_outage = true;
            }
            Err(err) => {
                if !in_outage {
                    warn!("{err}; retrying until it answers");
                    in_outage = true;
                }
            }
        }
        if feed.is_closed() {
            return;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(reconnect_max.max(RECONNECT_MIN));
    }
}

/// Passes the stream's `leader` events on until it ends; returns why.
async fn read_events(addr: SocketAddr, mut body: Incoming, feed: &mpsc::Sender<Feed>) -> String {
    let mut parser = sse::Parser::default();
    loop {
        let frame = match body.frame().await {
            None => return "closed by the agent".to_owned(),
            Some(Err(err)) => return err.to_string(),
            Some(Ok(frame)) => frame,
        };
        let Some(chunk) = frame.data_ref() else {
            continue;
        };
        parser.push(chunk);
        loop {
            match parser.next_event() {
                Ok(None) => break,
                Ok(Some(event)) if event.name == "leader" => {
                    match client::AgentView::parse(addr, event.data.as_bytes()) {
                        Ok(view) => {
                            if feed.send(Feed::Event(view.to_view())).await.is_err() {
                                return "run is exiting".to_owned();
                            }
                        }
                        // Skipped: the deadline timer stops CMD if no
                        // readable renewal follows.
                        Err(err) => warn!("{err}"),
                    }
                }
                Ok(Some(_)) => {}
                Err(sse::TooLarge) => {
                    return format!("an event exceeded {} bytes", sse::MAX_EVENT_BYTES);
                }
            }
        }
    }
}

/// What woke the main loop from the signal side.
enum Woken {
    Child,
    Signal(Signal),
}

/// The signals `run` passes on to CMD, and SIGCHLD.
struct Signals {
    passed: signals::Signals,
    child: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, RunError> {
        Ok(Self {
            passed: signals::Signals::install()?,
            child: signals::install(SignalKind::child(), "SIGCHLD")?,
        })
    }

    async fn recv(&mut self) -> Woken {
        tokio::select! {
            _ = self.child.recv() => Woken::Child,
            sig = self.passed.recv() => Woken::Signal(sig),
        }
    }
}

/// Reaps every exited child; returns CMD's exit code if CMD was among them.
fn reap(cmd: Option<Pid>) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd_code = None;
    // Ends with Ok(None) (children left, none exited) or ECHILD (none left).
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        if Some(pid) == cmd {
            let status = std::process::ExitStatus::from_raw(status.as_raw());
            cmd_code = Some(exit_code(&status));
        }
    }
    cmd_code
}

/// Starts CMD in its own process group; `Err(code)` as a shell would exit.
fn start(command: &[String], launch: &Launch) -> Result<Pid, i32> {
    use std::os::unix::process::CommandExt;
    let Some((program, rest)) = command.split_first() else {
        return Err(EXIT_NOT_FOUND);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest)
        .process_group(0)
        .env(POOL_ENV, &launch.pool)
        .env(IDENTITY_ENV, &launch.identity);
    match launch.token {
        Some(token) => cmd.env(FENCING_TOKEN_ENV, token.to_string()),
        None => cmd.env_remove(FENCING_TOKEN_ENV),
    };
    // The Child handle is dropped unwaited: `reap` collects its status.
    match cmd.spawn() {
        Ok(child) => match i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
            Some(pid) => Ok(pid),
            None => Err(EXIT_INTERNAL),
        },
        Err(err) => {
            error!("cannot run {program:?}: {err}");
            Err(spawn_failure(&err))
        }
    }
}

/// Runs `zen-lead run`; exits the process with the status described in
/// `zen-lead run --help`.
pub async fn run(args: &Config) -> Result<(), RunError> {
    clock::init();
    if args.command.first().is_none_or(|p| p.is_empty()) {
        return Err(RunError::NoCommand);
    }
    // Before anything is spawned, so no child's exit goes unnoticed.
    let mut signals = Signals::new()?;
    // Orphans of CMD come to us even when we are not PID 1 (a pod with
    // shareProcessNamespace), so the reaper below sees them either way.
    let me = rustix::process::getpid();
    if let Err(err) = rustix::process::set_child_subreaper(Some(me)) {
        // As PID 1 orphans come to us anyway.
        if me.as_raw_nonzero().get() != 1 {
            warn!(
                "could not become a child subreaper ({err}): a process whose parent exits escapes \
                 run, so it is not stopped when the term ends"
            );
        }
    }
    let (tx, mut feed) = mpsc::channel(16);
    tokio::spawn(follow(args.agent_addr, args.reconnect_max, tx));
    info!(agent = %args.agent_addr, "waiting for this pod to lead before starting CMD");

    let mut machine = Machine::new();
    // CMD's pid, which is also its process group's id.
    let mut cmd: Option<Pid> = None;
    // Open while CMD runs (see `client::hold`).
    let mut hold: Option<tokio::net::TcpStream> = None;
    let mut next: Option<Input> = None;
    // Why the last hold failed, for the log line.
    let mut refused: Option<RunError> = None;
    loop {
        let input = match next.take() {
            Some(input) => input,
            None => {
                let waited =
                    wait_input(&machine, &mut feed, &mut signals, &mut cmd, &mut hold).await;
                match waited {
                    Some(input) => input,
                    None => continue,
                }
            }
        };
        let held = input == Input::Held;
        let action = machine.handle(input, Instant::now());
        if held && !matches!(action, Action::Start(_)) {
            // Confirmed for a term that ended before CMD could start.
            drop(hold.take());
        }
        match action {
            Action::Nothing => {}
            Action::Hold => next = Some(ask_hold(args.agent_addr, &mut hold, &mut refused).await),
            Action::HoldLater { retry_at, first } => hold_waits(refused.take(), retry_at, first),
            Action::Start(launch) => {
                next = start_cmd(args, &launch, &mut cmd, &mut hold);
            }
            Action::Stop { reason, kill_at } => {
                warn!(
                    "stopping CMD: {reason} (SIGTERM now, SIGKILL in {:?} if it is still running)",
                    kill_at.saturating_duration_since(Instant::now())
                );
                tree::signal_all(cmd, Signal::TERM);
            }
            Action::Kill => {
                warn!(
                    "CMD did not exit within the stop grace; SIGKILL to it and every process it started"
                );
                tree::signal_all(cmd, Signal::KILL);
            }
            Action::Forward(sig) => signal_group(cmd, sig),
            Action::Exit(code) => {
                info!(code, "exiting");
                exit(cmd, code).await;
            }
            Action::Skip(job) => skip_run(&job).await,
            Action::ReleaseAndExit(code, reason) => release_and_exit(args, code, reason).await,
        }
    }
}

/// Exits `run` with `code`, leaving no process behind even where `run` is
/// not PID 1 (whose exit would have the kernel kill the rest).
async fn exit(cmd: Option<Pid>, code: i32) -> ! {
    tree::kill_all(cmd).await;
    std::process::exit(code);
}

/// Asks the agent to count CMD as running; the machine's answer (`refused`:
/// why not).
async fn ask_hold(
    addr: SocketAddr,
    hold: &mut Option<TcpStream>,
    refused: &mut Option<RunError>,
) -> Input {
    match client::hold(addr).await {
        Ok(stream) => {
            drop(hold.replace(stream));
            Input::Held
        }
        Err(err) => {
            *refused = Some(err);
            Input::HoldFailed
        }
    }
}

/// Says why CMD does not start yet: warns once per term, then debug.
fn hold_waits(refused: Option<RunError>, retry_at: Instant, first: bool) {
    let why = refused.map_or_else(|| "no answer".to_owned(), |e| e.to_string());
    let retry = retry_at.saturating_duration_since(Instant::now());
    if first {
        warn!(
            "this pod leads, but CMD waits: the agent did not confirm that it counts CMD as \
             running ({why}), and without that a voluntary release of the Lease would not wait \
             for CMD to stop, so the next leader's app could overlap it; asking again in \
             {retry:?} and on, for as long as the term lasts"
        );
    } else {
        tracing::debug!(?retry, "the agent still does not confirm the hold ({why})");
    }
}

/// Waits for the next input of the machine: an agent event, its timer, a
/// signal, or CMD's exit. `None`: only other children exited (reaped).
async fn wait_input(
    machine: &Machine,
    feed: &mut mpsc::Receiver<Feed>,
    signals: &mut Signals,
    cmd: &mut Option<Pid>,
    hold: &mut Option<tokio::net::TcpStream>,
) -> Option<Input> {
    let wake = machine.next_wake();
    let input = tokio::select! {
        got = feed.recv() => match got {
            Some(Feed::Event(view)) => Input::Event(view),
            Some(Feed::Broken) | None => Input::StreamBroken,
        },
        () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => Input::Timer,
        woken = signals.recv() => match woken {
            Woken::Signal(sig) => Input::Signal(sig),
            Woken::Child => match reap(*cmd) {
                Some(code) => {
                    // What CMD left (in its group or not) must not outlive
                    // it: it may still act for a term that is over.
                    tree::kill_all(cmd.take()).await;
                    // Only now may the agent release.
                    drop(hold.take());
                    Input::Exited(code)
                }
                None => return None,
            },
        },
    };
    Some(input)
}

/// Starts CMD for a term (the agent's hold is in place); returns the exit
/// to feed back when it could not start.
fn start_cmd(
    args: &Config,
    launch: &Launch,
    cmd: &mut Option<Pid>,
    hold: &mut Option<tokio::net::TcpStream>,
) -> Option<Input> {
    let started = start(&args.command, launch);
    match started {
        Ok(pid) => {
            info!(fencing_token = ?launch.token, pool = %launch.pool, pid = pid.as_raw_nonzero().get(), "this pod leads; CMD started");
            *cmd = Some(pid);
            None
        }
        Err(code) => {
            drop(hold.take());
            Some(Input::Exited(code))
        }
    }
}

/// Completes without running CMD: this scheduled time already ran.
async fn skip_run(job: &str) -> ! {
    let message = format!(
        "{SKIPPED_RUN_MARKER}: Job {job} already ran this scheduled time in the pool \
         (scheduledRuns: once); the command was not run"
    );
    info!("{message}");
    // The controller reads it from the container's status.
    if let Err(err) = std::fs::write(TERMINATION_LOG, &message) {
        warn!("could not write {TERMINATION_LOG}: {err}");
    }
    exit(None, 0).await
}

/// CMD ended while this pod leads: asks the agent to hand leadership on
/// (bounded by --release-timeout), then exits with `code`.
async fn release_and_exit(args: &Config, code: i32, reason: ReleaseReason) -> ! {
    match reason {
        ReleaseReason::AppFailed => warn!(
            code,
            "CMD failed while this pod leads; asking the agent to hand leadership to another replica"
        ),
        ReleaseReason::AppStopped => info!(
            code,
            "CMD was stopped by a signal while this pod leads; asking the agent to hand leadership to another replica now"
        ),
    }
    match timeout(
        args.release_timeout,
        client::release(args.agent_addr, reason),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!("release not confirmed: {err}"),
        Err(_) => warn!(
            "release not confirmed within {:?}; the term ends by itself",
            args.release_timeout
        ),
    }
    exit(None, code).await
}
