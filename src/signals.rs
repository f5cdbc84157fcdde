//! Signals and exit statuses of the commands that run a CMD (`lock`, its
//! guard, `run` and `probe`): which signals they pass on, and the status they
//! exit with, as a shell would where one applies.

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::signal::unix::{SignalKind, signal};

/// Exit status when the lock was lost while CMD ran (EX_TEMPFAIL: retry later).
pub const EXIT_LOST: i32 = 75;
/// Exit status when `--timeout` passed before the lock was acquired (as
/// coreutils' `timeout`).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status of internal failures around CMD (EX_SOFTWARE).
pub const EXIT_INTERNAL: i32 = 70;
/// Exit status when CMD exists but cannot be run (as a shell).
pub const EXIT_CANNOT_RUN: i32 = 126;
/// Exit status when CMD is not found (as a shell).
pub const EXIT_NOT_FOUND: i32 = 127;

/// A signal handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("could not install the {signal} handler: {source}")]
pub struct SignalError {
    pub signal: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// CMD's exit code, or 128+signal.
pub fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(EXIT_INTERNAL)
}

/// The status of a process ended by `sig`, as a shell reports it.
pub fn signal_exit(sig: Signal) -> i32 {
    128 + sig.as_raw()
}

/// The status when CMD could not be started, as a shell would exit.
pub fn spawn_failure(err: &std::io::Error) -> i32 {
    if err.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_RUN
    }
}

/// Signals CMD's whole process group, if it has one.
pub fn signal_group(group: Option<Pid>, sig: Signal) {
    if let Some(pgid) = group {
        // ESRCH (the group is gone already) is fine.
        let _ = kill_process_group(pgid, sig);
    }
}

/// A handler for `kind` (`name` in the error).
pub fn install(
    kind: SignalKind,
    name: &'static str,
) -> Result<tokio::signal::unix::Signal, SignalError> {
    signal(kind).map_err(|source| SignalError {
        signal: name,
        source,
    })
}

/// The three signals these commands pass on to CMD (installed in the order
/// SIGTERM, SIGINT, SIGHUP).
pub struct Signals {
    pub term: tokio::signal::unix::Signal,
    pub int: tokio::signal::unix::Signal,
    pub hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Self, SignalError> {
        Ok(Self {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next of them to arrive.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::TERM,
            _ = self.int.recv() => Signal::INT,
            _ = self.hup.recv() => Signal::HUP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn statuses_are_a_shells() {
        let exited = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        assert_eq!(exit_code(&exited(3)), 3);
        // Killed by SIGKILL (raw wait status 9).
        assert_eq!(exit_code(&std::process::ExitStatus::from_raw(9)), 137);
        assert_eq!(signal_exit(Signal::TERM), 143);
        let err = |kind| std::io::Error::new(kind, "x");
        assert_eq!(spawn_failure(&err(std::io::ErrorKind::NotFound)), 127);
        assert_eq!(
            spawn_failure(&err(std::io::ErrorKind::PermissionDenied)),
            126
        );
    }
}
