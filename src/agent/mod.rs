//! `zen-lead agent`: one pod's candidacy in its pool's Lease election,
//! injected into pool pods as a native sidecar. Serves probes, the local
//! leadership API and metrics (see [`http`]); in `api` activation it is also
//! the app's Kubernetes API server, passing writes only while it leads (see
//! [`gate`]).
//!
//! Losing leadership never ends the agent: it becomes a follower again. Only
//! SIGTERM/SIGINT end it, after releasing the Lease if it holds it.

pub mod app_probe;
pub mod gate;
pub mod http;
pub mod listen;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::contract::{AppProbe, BIN_PATH};
use crate::election::{
    Elector, ElectorConfig, Metrics, Retries, RunError, Timings, counting_client,
    driver::ClientError,
};

/// The pod the agent runs in, from the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Validated agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub pool: String,
    pub pod: PodRef,
    /// The holder identity this candidate writes into the Lease.
    pub identity: String,
    /// The loopback API.
    pub http_addr: SocketAddr,
    /// The probe port on the pod IP.
    pub probe_addr: SocketAddr,
    pub release_timeout: Duration,
    pub create_lease: bool,
    pub preferred_defer: Duration,
    pub leadership_log: Option<PathBuf>,
    /// `Some` in `api` activation.
    pub gate: Option<gate::GateConfig>,
    /// `Some` in `process` activation.
    pub process: Option<ProcessConfig>,
}

/// `process` activation's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Where the binary is shared with the app containers.
    pub bin_dir: PathBuf,
    /// The app probes answered on `/app-health/...`.
    pub probes: Vec<AppProbe>,
    /// A CronJob-created Job's pod: (scheduled time, Job name).
    pub scheduled_run: Option<(String, String)>,
}

/// Errors of the agent module.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--pool (ZEN_LEAD_POOL) {value:?} cannot name a LeaderPolicy: {reason}")]
    InvalidPool { value: String, reason: String },

    #[error(
        "{flag} ({env}) is empty; the webhook fills it from the downward API, so check the \
         injected agent container's env"
    )]
    MissingPodField {
        flag: &'static str,
        env: &'static str,
    },

    #[error(
        "--identity (ZEN_LEAD_IDENTITY) is {len} bytes long; keep it under 256 so it fits the \
         Lease's holderIdentity and the pod's zen-lead/identity annotation stays readable"
    )]
    IdentityTooLong { len: usize },

    #[error(
        "--identity-strategy custom needs --identity (ZEN_LEAD_IDENTITY), filled from the pod's \
         zen-lead/identity annotation; the annotation is missing or empty"
    )]
    MissingCustomIdentity,

    #[error("could not listen on {flag} {addr}: {source}; choose a free port")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("could not install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Client(#[from] ClientError),

    #[error(transparent)]
    Election(#[from] RunError),

    #[error(transparent)]
    Gate(#[from] gate::GateError),

    #[error("the agent's HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),

    #[error(
        "--activation process needs --bin-dir (ZEN_LEAD_BIN_DIR), the shared volume for \
         `zen-lead run`; the webhook sets it, so check the injected agent container's env"
    )]
    MissingBinDir,

    #[error(
        "--app-probes (ZEN_LEAD_APP_PROBES) is not the JSON list of app probes the webhook \
         writes: {0}"
    )]
    InvalidAppProbes(#[source] serde_json::Error),

    #[error(
        "could not share the zen-lead binary with the app containers at {path}: {source}; the \
         app containers cannot start without it (is the zen-lead-bin volume mounted writable?)"
    )]
    ShareBinary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `<pod-name>_<first 8 characters of the UID>`. Pod names cannot contain
/// `_`, so the controller can split an identity back into the pod name; the
/// UID part makes a re-created pod with the same name (StatefulSets) a
/// different candidate, so it never inherits the previous pod's term.
pub fn pod_identity(pod: &PodRef) -> String {
    let uid: String = pod.uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{}_{uid}", pod.name)
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: &Config) -> Result<(), AgentError> {
    let metrics = Metrics::default();
    let mut registry = crate::telemetry::new_registry();
    metrics.register(&mut registry);
    let client = counting_client(metrics.api_requests.clone(), Retries::Caller).await?;
    let (elector, status) = Elector::new(client, elector_config(config), metrics)?;

    let (stand_down_tx, stand_down_rx) = watch::channel(None);
    let (running_tx, running_rx) = watch::channel(0);
    let elector = with_process_activation(elector, config, stand_down_rx, running_rx)?;
    let local = bind("--http-addr (ZEN_LEAD_AGENT_HTTP_ADDR)", config.http_addr).await?;
    let probe = bind(
        "--probe-addr (ZEN_LEAD_AGENT_PROBE_ADDR)",
        config.probe_addr,
    )
    .await?;
    let (mut sigterm, mut sigint) = termination_signals()?;
    info!(
        pool = %config.pool,
        namespace = %config.pod.namespace,
        identity = %config.identity,
        addr = %config.http_addr,
        probe_addr = %config.probe_addr,
        "agent started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    // The gate is up (and the app's service-account directory written)
    // before the HTTP server answers /startz, so the kubelet starts the app
    // containers only once the gate serves them.
    let (elector, gate_ready) = match &config.gate {
        Some(gate_config) => {
            let gate =
                gate::start(gate_config, status.clone(), &mut registry, stop_rx.clone()).await?;
            (
                elector.with_in_flight_writes(gate.in_flight),
                Some(gate.ready),
            )
        }
        None => (elector, None),
    };
    let state = http::State {
        status,
        registry: Arc::new(registry),
        namespace: config.pod.namespace.clone(),
        lease: config.pool.clone(),
        identity: config.identity.clone(),
        gate_ready,
        process: config.process.as_ref().map(|p| {
            Arc::new(http::ProcessState {
                probes: p.probes.clone(),
                stand_down: stand_down_tx,
                running: running_tx,
            })
        }),
        budgets: http::Budgets::default(),
    };
    let mut server = tokio::spawn(http::serve(local, probe, state, stop_rx.clone()));
    let mut election = tokio::spawn(elector.run(stop_rx, config.release_timeout));

    let outcome = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM: stepping down"); Ok(()) }
        _ = sigint.recv() => { info!("SIGINT: stepping down"); Ok(()) }
        result = &mut election => {
            // The election only ends by itself on a fatal error.
            return election_ended(result, config);
        }
        result = &mut server => match result {
            Ok(Err(err)) => Err(AgentError::Serve(err)),
            Err(join) => Err(AgentError::Serve(std::io::Error::other(join.to_string()))),
            Ok(Ok(())) => Ok(()),
        },
    };
    let _ = stop_tx.send(true);
    await_release(election, config.release_timeout).await;
    server.abort();
    outcome
}

/// Binds one of the agent's listeners; the error names its flag.
async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Listen { flag, addr, source })
}

/// The pool Lease's election settings for this pod's candidacy.
fn elector_config(config: &Config) -> ElectorConfig {
    ElectorConfig {
        namespace: config.pod.namespace.clone(),
        name: config.pool.clone(),
        identity: config.identity.clone(),
        // The pod UID: a restarted agent container of this pod takes its
        // own term back; another pod with the same identity does not.
        instance: config.pod.uid.clone(),
        can_create: config.create_lease,
        fixed: None,
        create_timings: Timings::default(),
        preferred_defer: config.preferred_defer,
        fail_on_denied: false,
        leadership_log: config.leadership_log.clone(),
    }
}

/// In `process` activation, shares the binary and wires the elector to the app processes.
fn with_process_activation(
    elector: Elector,
    config: &Config,
    stand_down_rx: watch::Receiver<Option<tokio::time::Instant>>,
    running_rx: watch::Receiver<usize>,
) -> Result<Elector, AgentError> {
    Ok(match &config.process {
        Some(process) => {
            share_binary(&process.bin_dir)?;
            let elector = elector
                .with_stand_down(stand_down_rx)
                .with_running_apps(running_rx);
            match process.scheduled_run.clone() {
                Some((time, job)) => elector.with_scheduled_run(time, job),
                None => elector,
            }
        }
        None => elector,
    })
}

/// Installs the SIGTERM and SIGINT handlers that end the agent.
fn termination_signals() -> Result<(Signal, Signal), AgentError> {
    let sigterm = signal(SignalKind::terminate()).map_err(|source| AgentError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let sigint = signal(SignalKind::interrupt()).map_err(|source| AgentError::Signal {
        signal: "SIGINT",
        source,
    })?;
    Ok((sigterm, sigint))
}

/// The agent's result when the election task ended by itself (only on a fatal error).
fn election_ended(
    result: Result<Result<(), RunError>, tokio::task::JoinError>,
    config: &Config,
) -> Result<(), AgentError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.into()),
        Err(join) => Err(AgentError::Election(RunError::WatchStopped {
            namespace: format!("{} ({join})", config.pod.namespace),
            name: config.pool.clone(),
        })),
    }
}

/// Waits for the election to release the Lease (a backstop: the release is bounded inside it).
async fn await_release(
    election: tokio::task::JoinHandle<Result<(), RunError>>,
    release_timeout: Duration,
) {
    match tokio::time::timeout(release_timeout + Duration::from_secs(1), election).await {
        Ok(Ok(Err(err))) => warn!("{err}"),
        Ok(_) => {}
        Err(_) => warn!("the election did not stop in time"),
    }
}

/// Copies this (static) binary into the shared volume for `zen-lead run`:
/// written under a temporary name and renamed, so an app container never
/// sees half a file, even after an agent restart rewrote it.
fn share_binary(dir: &std::path::Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let name = std::path::Path::new(BIN_PATH)
        .file_name()
        .unwrap_or_else(|| std::ffi::OsStr::new("zen-lead"));
    let target = dir.join(name);
    let partial = dir.join(".zen-lead.partial");
    let fail = |source| AgentError::ShareBinary {
        path: target.clone(),
        source,
    };
    let own = std::env::current_exe().map_err(fail)?;
    std::fs::copy(&own, &partial).map_err(fail)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
    std::fs::rename(&partial, &target).map_err(fail)?;
    info!(path = %target.display(), "binary shared with the app containers");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<Config, AgentError> {
        let mut argv = vec![
            "zen-lead",
            "agent",
            "--pool",
            "web",
            "--pod-name",
            "web-0",
            "--pod-namespace",
            "shop",
            "--pod-uid",
            "1f0c9a7e-2b3d-4c5e-8f90-123456789abc",
        ];
        argv.extend_from_slice(extra);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("parse");
        let crate::cli::Command::Agent(args) = cli.command else {
            panic!("agent expected");
        };
        args.config()
    }

    #[test]
    fn pod_identity_is_name_and_uid_prefix() {
        let config = parse(&[]).expect("config");
        assert_eq!(config.identity, "web-0_1f0c9a7e");
        assert!(!config.create_lease);
        assert_eq!(config.preferred_defer, Duration::from_millis(300));
    }

    #[test]
    fn the_api_is_on_loopback_and_the_probe_port_is_the_contracts() {
        use crate::contract::{AGENT_PORT, AGENT_PROBE_PORT};
        let config = parse(&[]).expect("config");
        assert!(config.http_addr.ip().is_loopback(), "{}", config.http_addr);
        assert_eq!(i32::from(config.http_addr.port()), AGENT_PORT);
        assert_eq!(i32::from(config.probe_addr.port()), AGENT_PROBE_PORT);
    }

    #[test]
    fn api_activation_builds_the_gate_settings() {
        assert_eq!(parse(&[]).expect("start").gate, None);
        let gate = parse(&["--activation", "api"])
            .expect("api")
            .gate
            .expect("gate settings");
        assert_eq!(gate.addr, "127.0.0.1:9467".parse().expect("addr"));
        assert!(gate.exempt.contains(gate::Exemption::Events));
        assert!(!gate.exempt.contains(gate::Exemption::Leases));
        assert_eq!(gate.identity, "web-0_1f0c9a7e");
        assert_eq!(gate.namespace, "shop");
        let none = parse(&["--activation", "api", "--gate-exempt", ""])
            .expect("empty list")
            .gate
            .expect("gate settings");
        assert_eq!(none.exempt, gate::ExemptSet::default());
        let err = parse(&["--activation", "api", "--gate-exempt", "events,pods"]).unwrap_err();
        assert!(err.to_string().contains("--gate-exempt"), "{err}");
    }

    #[test]
    fn custom_identity_rules() {
        assert_eq!(
            parse(&["--identity", "db-primary"]).expect("auto").identity,
            "db-primary"
        );
        assert_eq!(
            parse(&["--identity", "x", "--identity-strategy", "pod"])
                .expect("pod")
                .identity,
            "web-0_1f0c9a7e"
        );
        let err = parse(&["--identity-strategy", "custom"]).unwrap_err();
        assert!(err.to_string().contains("zen-lead/identity"), "{err}");
    }
}
