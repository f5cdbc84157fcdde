//! `zen-lead lock NAME -- CMD`: a distributed lock on a Lease for scripts,
//! CI jobs and Kubernetes Jobs. CMD runs only while this process holds the
//! Lease; losing it stops CMD.
//!
//! CMD does not run under this process directly but under a small guard
//! process (`zen-lead lock-guard`, [`guard`]) that is told, after every
//! renewal, until when the lock is held. The guard stops CMD when that time
//! passes without news, or when this process goes away, so CMD is stopped
//! on time even if this process is paused (SIGSTOP, a frozen VM) or killed.
//!
//! Exit status: CMD's (128+signal if a signal ended it); [`EXIT_LOST`] when
//! the lock was lost while CMD ran; [`EXIT_TIMEOUT`] when `--timeout` passed
//! before the lock was acquired; 1 for configuration or API errors.
//!
//! It takes a validated [`Request`], built at the CLI edge from
//! `zen-lead lock`'s flags.

pub mod guard;

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{error, info, warn};

use crate::contract::FENCING_TOKEN_ENV;
use crate::election::driver::ClientError;
use crate::election::{
    ElectionError, Elector, ElectorConfig, LeaderStatus, Metrics, Retries, RunError, Timings,
    clock, counting_client,
};
use crate::signals::{
    EXIT_INTERNAL, EXIT_LOST, EXIT_TIMEOUT, SignalError, Signals, exit_code, signal_exit,
};

/// A validated lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Lease name.
    pub name: String,
    /// `None`: the client's default namespace.
    pub namespace: Option<String>,
    /// Holder identity; by default `<hostname>-<pid>`.
    pub identity: String,
    /// `None`: wait forever.
    pub timeout: Option<Duration>,
    pub timings: Timings,
    pub grace_period: Duration,
    /// Program and arguments.
    pub command: Vec<String>,
}

/// Errors of the lock module.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock NAME {value:?} (ZEN_LEAD_LOCK_NAME) is not a valid Lease name: {reason}")]
    InvalidName { value: String, reason: String },

    #[error(
        "--namespace (ZEN_LEAD_LOCK_NAMESPACE) {value:?} is not a valid namespace name: {reason}"
    )]
    InvalidNamespace { value: String, reason: String },

    #[error(transparent)]
    Timings(#[from] ElectionError),

    #[error("nothing to run: give the command after `--`, e.g. `zen-lead lock NAME -- ./job.sh`")]
    NoCommand,

    #[error(
        "--grace-period ({grace:?}) plus --renew-deadline ({renew:?}) must be shorter than \
         --lease-duration ({lease:?}): CMD has to be gone before anyone else may take the lock"
    )]
    GraceTooLong {
        grace: Duration,
        renew: Duration,
        lease: Duration,
    },

    #[error(transparent)]
    Client(#[from] ClientError),

    #[error(transparent)]
    Election(#[from] RunError),

    #[error(transparent)]
    Signal(#[from] SignalError),

    #[error("could not start the guard for CMD ({what}): {source}")]
    Guard {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a lock run needs once it is set up.
struct Session {
    stop: watch::Sender<bool>,
    election: tokio::task::JoinHandle<Result<(), RunError>>,
    release_timeout: Duration,
}

impl Session {
    /// Stops the election (releasing the Lease if it names us) and exits.
    async fn exit(self, code: i32) -> ! {
        let _ = self.stop.send(true);
        match timeout(self.release_timeout + Duration::from_secs(1), self.election).await {
            Ok(Ok(Err(err))) => warn!("{err}"),
            Ok(_) => {}
            Err(_) => warn!("the Lease was not released in time; it expires on its own"),
        }
        // The exit status is CMD's; returning through main would flatten it.
        std::process::exit(code)
    }
}

/// Acquires the lock, runs CMD under it, and exits the process with the
/// status described in the module docs.
pub async fn run(request: Request) -> Result<(), LockError> {
    clock::init();
    let metrics = Metrics::default();
    let client = counting_client(metrics.api_requests.clone(), Retries::Caller).await?;
    let namespace = request
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let identity = request.identity.clone();
    let lease = format!("{namespace}/{}", request.name);
    let (elector, mut status) = Elector::new(
        client,
        ElectorConfig {
            namespace: namespace.clone(),
            name: request.name.clone(),
            identity: identity.clone(),
            instance: crate::election::process_instance(),
            can_create: true,
            fixed: Some(request.timings),
            create_timings: request.timings,
            preferred_defer: Duration::from_millis(300),
            fail_on_denied: true,
            leadership_log: None,
        },
        metrics,
    )?;
    let mut signals = Signals::install()?;
    let (stop, stop_rx) = watch::channel(false);
    let release_timeout = request.timings.renew_deadline().min(Duration::from_secs(2));
    let mut election = tokio::spawn(elector.run(stop_rx, release_timeout));
    info!(lease = %lease, identity = %identity, "waiting for the lock");

    // 1. Wait until we hold the Lease.
    let give_up = request.timeout.map(|t| Instant::now() + t);
    loop {
        if status.borrow().leading_at(Instant::now()) {
            break;
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    // The election ended on its own: a fatal error.
                    return match (&mut election).await {
                        Ok(Err(err)) => Err(err.into()),
                        _ => Err(RunError::WatchStopped { namespace, name: request.name }.into()),
                    };
                }
            }
            () = sleep_until(give_up.unwrap_or_else(Instant::now)), if give_up.is_some() => {
                eprintln!(
                    "zen-lead lock: gave up after --timeout {:?}: Lease {lease} is held by {}; CMD was not run",
                    request.timeout.unwrap_or_default(),
                    status.borrow().holder.clone().unwrap_or_else(|| "nobody (it may not exist yet)".to_owned()),
                );
                Session { stop, election, release_timeout }.exit(EXIT_TIMEOUT).await;
            }
            sig = signals.recv() => {
                Session { stop, election, release_timeout }.exit(signal_exit(sig)).await;
            }
        }
    }
    let token = status.borrow().token;
    info!(lease = %lease, fencing_token = ?token, "lock acquired; running CMD");

    // 2. Start CMD under the guard and keep it informed.
    let session = Session {
        stop,
        election,
        release_timeout,
    };
    let code = match supervise(&request, &lease, &mut status, &mut signals).await {
        Ok(code) => code,
        Err(err) => {
            error!("{err}");
            EXIT_INTERNAL
        }
    };
    session.exit(code).await
}

fn private_socket_path() -> Result<(PathBuf, PathBuf), LockError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "zen-lead-lock-{}-{}",
        std::process::id(),
        clock::unix_ns()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| LockError::Guard {
            what: "temporary directory",
            source,
        })?;
    let socket = dir.join("guard.sock");
    Ok((dir, socket))
}

async fn supervise(
    request: &Request,
    lease: &str,
    status: &mut watch::Receiver<LeaderStatus>,
    signals: &mut Signals,
) -> Result<i32, LockError> {
    let (dir, socket) = private_socket_path()?;
    let result = supervise_in(request, lease, status, signals, &socket).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn supervise_in(
    request: &Request,
    lease: &str,
    status: &mut watch::Receiver<LeaderStatus>,
    signals: &mut Signals,
    socket: &std::path::Path,
) -> Result<i32, LockError> {
    let guard_err = |what| move |source| LockError::Guard { what, source };
    let listener = UnixListener::bind(socket).map_err(guard_err("socket"))?;
    let mut child = spawn_guard(request, status, socket)?;
    let guard_pid = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?));
    let (stream, _) = tokio::select! {
        accepted = timeout(Duration::from_secs(10), listener.accept()) => match accepted {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(LockError::Guard { what: "accept", source }),
            Err(_) => return Err(LockError::Guard {
                what: "connect",
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "the guard did not connect within 10s"),
            }),
        },
        exit = child.wait() => {
            return Ok(exit.map(|e| exit_code(&e)).unwrap_or(EXIT_INTERNAL));
        }
    };
    Ok(inform_guard(request, lease, status, signals, child, guard_pid, stream).await)
}

/// Starts `zen-lead lock-guard` (which runs CMD) on `socket`, passing the
/// fencing token on to CMD.
fn spawn_guard(
    request: &Request,
    status: &watch::Receiver<LeaderStatus>,
    socket: &std::path::Path,
) -> Result<tokio::process::Child, LockError> {
    let guard_err = |what| move |source| LockError::Guard { what, source };
    let exe = std::env::current_exe().map_err(guard_err("own executable"))?;
    let mut guard = tokio::process::Command::new(exe);
    // CMD inherits it through the guard, like etcdctl lock's ETCD_LOCK_REV:
    // a protected resource can refuse writes stamped with an older token.
    if let Some(token) = status.borrow().token {
        guard.env(FENCING_TOKEN_ENV, token.to_string());
    }
    guard
        .arg("lock-guard")
        .arg("--socket")
        .arg(socket)
        .arg("--grace-period")
        .arg(format!("{}ms", request.grace_period.as_millis()))
        .arg("--")
        .args(&request.command)
        .spawn()
        .map_err(guard_err("spawn"))
}

/// Tells the connected guard every new term end (`until`), or `stop` once
/// the lock is lost, and passes signals on, until the guard exits; returns
/// the exit status.
async fn inform_guard(
    request: &Request,
    lease: &str,
    status: &mut watch::Receiver<LeaderStatus>,
    signals: &mut Signals,
    mut child: tokio::process::Child,
    guard_pid: Option<rustix::process::Pid>,
    mut stream: tokio::net::UnixStream,
) -> i32 {
    let mut told: Option<Instant> = None;
    let mut lost = false;
    loop {
        let current = status.borrow().clone();
        let now = Instant::now();
        if !lost {
            if current.leading_at(now) {
                if current.lead_until != told
                    && let Some(until) = current.lead_until
                {
                    // A failed write means the guard is gone; its exit is
                    // picked up below.
                    let line = format!("until {}\n", clock::mono_ns(until));
                    let _ = stream.write_all(line.as_bytes()).await;
                    told = Some(until);
                }
            } else {
                lost = true;
                error!(
                    "lost Lease {lease} while CMD was running; stopping CMD (SIGTERM, SIGKILL after {:?})",
                    request.grace_period
                );
                let _ = stream.write_all(b"stop\n").await;
            }
        }
        let deadline = current.lead_until.filter(|_| !lost);
        tokio::select! {
            exit = child.wait() => {
                let code = exit.map(|e| exit_code(&e)).unwrap_or(EXIT_INTERNAL);
                if lost {
                    eprintln!("zen-lead lock: lost Lease {lease} while CMD was running; CMD was stopped");
                    return EXIT_LOST;
                }
                return code;
            }
            changed = status.changed(), if !lost => {
                if changed.is_err() {
                    lost = true;
                    let _ = stream.write_all(b"stop\n").await;
                }
            }
            () = sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => {}
            sig = signals.recv() => {
                if let Some(pid) = guard_pid {
                    let _ = rustix::process::kill_process(pid, sig);
                }
            }
        }
    }
}
