//! `zen-lead lock-guard` (internal): runs CMD for `zen-lead lock` and stops
//! it when the lock may no longer be held.
//!
//! The lock process connects over a private Unix socket and sends lines:
//! `until <CLOCK_MONOTONIC ns>` after every renewal, `stop` when the lock is
//! lost. The guard stops CMD (SIGTERM to its process group, SIGKILL after the
//! grace period) when the time passes without a newer `until`, on `stop`, or
//! when the socket closes (the lock process died). It exits with CMD's
//! status, or [`EXIT_LOST`] when it had to stop CMD.
//!
//! CMD runs in its own process group so that everything it started is
//! stopped with it.

use std::time::Duration;

use std::path::PathBuf;

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::{Instant, sleep_until, timeout};

use super::LockError;
use crate::election::clock;
use crate::signals::{EXIT_INTERNAL, EXIT_LOST, Signals, exit_code, signal_group, spawn_failure};

/// What `zen-lead lock-guard` runs, from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The lock process's private socket.
    pub socket: PathBuf,
    /// Between SIGTERM and SIGKILL when CMD must stop.
    pub grace_period: Duration,
    /// Program and arguments.
    pub command: Vec<String>,
}

fn parse_until(line: &str) -> Option<Instant> {
    let ns: u128 = line.strip_prefix("until ")?.trim().parse().ok()?;
    Some(clock::instant_from_mono_ns(ns))
}

/// Runs the guard; exits the process with CMD's status.
pub async fn run(args: &Config) -> Result<(), LockError> {
    clock::init();
    let guard_err = |what| move |source| LockError::Guard { what, source };
    let stream = UnixStream::connect(&args.socket)
        .await
        .map_err(guard_err("connect to the lock process"))?;
    let mut lines = BufReader::new(stream).lines();
    let deadline = first_deadline(&mut lines).await;
    let child = spawn_cmd(&args.command);
    let group = child
        .id()
        .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?));
    let signals = Signals::install()?;
    supervise(child, lines, deadline, group, signals, args.grace_period).await
}

/// The lock process's messages, one per line.
type Lines = tokio::io::Lines<BufReader<UnixStream>>;

/// Waits for the lock process's first `until`; CMD starts only inside a
/// term that has not ended yet, otherwise the guard exits here.
async fn first_deadline(lines: &mut Lines) -> Instant {
    let first = timeout(Duration::from_secs(10), lines.next_line()).await;
    let Some(deadline) = first
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|l| parse_until(&l))
    else {
        eprintln!("zen-lead lock-guard: no lease deadline from the lock process; CMD not run");
        std::process::exit(EXIT_INTERNAL);
    };
    if Instant::now() >= deadline {
        eprintln!("zen-lead lock-guard: the lock expired before CMD could start; CMD not run");
        std::process::exit(EXIT_LOST);
    }
    deadline
}

/// Starts CMD in its own process group; exits as a shell would when it
/// cannot.
fn spawn_cmd(command: &[String]) -> tokio::process::Child {
    let Some((program, rest)) = command.split_first() else {
        std::process::exit(EXIT_INTERNAL);
    };
    match tokio::process::Command::new(program)
        .args(rest)
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            eprintln!("zen-lead lock: cannot run {program:?}: {err}");
            std::process::exit(spawn_failure(&err));
        }
    }
}

/// Runs CMD until it exits, stopping it (SIGTERM, SIGKILL after `grace`)
/// once the lock may no longer be held; exits with its status.
async fn supervise(
    mut child: tokio::process::Child,
    mut lines: Lines,
    mut deadline: Instant,
    group: Option<Pid>,
    mut signals: Signals,
    grace: Duration,
) -> ! {
    let mut kill_at: Option<Instant> = None;
    let mut kill_sent = false;
    let mut socket_open = true;
    loop {
        let stop_now = tokio::select! {
            exit = child.wait() => {
                // Leftovers of CMD's group must not outlive the lock.
                signal_group(group, Signal::KILL);
                let code = match exit {
                    Ok(status) => exit_code(&status),
                    Err(_) => EXIT_INTERNAL,
                };
                std::process::exit(if kill_at.is_some() { EXIT_LOST } else { code });
            }
            line = lines.next_line(), if socket_open => match line {
                Ok(Some(line)) if line.trim() == "stop" => true,
                Ok(Some(line)) => {
                    if let Some(until) = parse_until(&line) {
                        deadline = until;
                    }
                    false
                }
                // The lock process is gone: nobody renews any more.
                Ok(None) | Err(_) => {
                    socket_open = false;
                    true
                }
            },
            () = sleep_until(deadline), if kill_at.is_none() => true,
            () = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() && !kill_sent => {
                signal_group(group, Signal::KILL);
                kill_sent = true;
                false
            }
            _ = signals.term.recv() => { signal_group(group, Signal::TERM); false }
            _ = signals.int.recv() => { signal_group(group, Signal::INT); false }
            _ = signals.hup.recv() => { signal_group(group, Signal::HUP); false }
        };
        if stop_now && kill_at.is_none() {
            signal_group(group, Signal::TERM);
            kill_at = Some(Instant::now() + grace);
        }
    }
}
