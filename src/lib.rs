//! zen-lead: high availability for Kubernetes workloads by annotation.
//!
//! A workload annotated `zen-lead/pool: NAME` joins the pool of the
//! `LeaderPolicy` NAME; exactly one of its replicas is active at a time. See
//! `docs/ARCHITECTURE.md` for how the roles below fit together.
//!
//! Modules by role:
//! - [`api`]: the `LeaderPolicy` CRD and the annotation/label keys.
//! - [`webhook`]: the mutating admission webhook (runs in `controller`).
//! - [`controller`]: Leases, status, roles, scaleDown.
//! - [`agent`]: a pod's candidacy, injected as a sidecar.
//! - [`election`]: the Lease election shared by `agent` and `lock`.
//! - [`lock`]: `zen-lead lock NAME -- CMD`.
//! - [`contract`]: what the webhook writes into `process` pods for the agent
//!   and `zen-lead run`.
//! - [`run`]: `zen-lead run -- CMD` and `zen-lead probe` (`process` pools).
//! - [`signals`]: the signals `lock`, its guard, `run` and `probe` pass on,
//!   and the statuses they exit with.
//! - [`cli`]: the flags; its `config` module turns them into each command's
//!   plain configuration, so no other module takes a clap type.
//! - [`handoff`]: `zen-lead handoff` and `zen-lead status` (operators).
//! - [`tls`], [`telemetry`]: certificates, logging, metrics.
//! - [`panic_guard`]: one request's panic is a 500, any other aborts.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod api;
pub mod cli;
pub mod contract;
pub mod controller;
pub mod election;
pub mod handoff;
pub mod lock;
pub mod panic_guard;
pub mod run;
pub mod signals;
pub mod telemetry;
pub mod tls;
pub mod webhook;

use std::io::Write;
use std::time::Duration;

use cli::{CertsArgs, Cli, Command, PodCli, PodCommand};

/// Crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short git commit the binary was built from, or `unknown`.
pub const GIT_COMMIT: &str = env!("ZEN_LEAD_GIT_COMMIT");

/// Top-level error of a `zen-lead` run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] api::ApiError),

    #[error(transparent)]
    Agent(#[from] agent::AgentError),

    #[error(transparent)]
    Controller(#[from] controller::ControllerError),

    #[error(transparent)]
    Lock(#[from] lock::LockError),

    #[error(transparent)]
    Run(#[from] run::RunError),

    #[error(transparent)]
    Handoff(#[from] handoff::HandoffError),

    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),

    #[error(transparent)]
    Tls(#[from] tls::TlsError),

    #[error("could not write to standard output: {0}")]
    Stdout(#[source] std::io::Error),

    #[error("a rustls crypto provider was already installed in this process")]
    CryptoProvider,

    #[error("could not start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs one `zen-lead` invocation.
pub async fn run(cli: Cli) -> Result<(), Error> {
    telemetry::init_logging(cli.global.log_format, &cli.global.log_level)?;
    match cli.command {
        Command::Controller(args) => {
            let config = args.config()?;
            tracing::debug!(?config, "controller configuration");
            Ok(controller::run(&config).await?)
        }
        Command::Agent(args) => run_agent(&args).await,
        Command::Lock(args) => {
            let request = args.request()?;
            tracing::debug!(?request, "lock request");
            Ok(lock::run(request).await?)
        }
        Command::LockGuard(args) => Ok(lock::guard::run(&args.config()).await?),
        Command::Run(args) => Ok(run::run(&args.config()).await?),
        Command::Probe(args) => Ok(run::probe::probe(&args.config()).await?),
        Command::Handoff(args) => {
            let config = handoff::HandoffConfig::from(&args);
            Ok(handoff::handoff(&config, &mut std::io::stdout().lock()).await?)
        }
        Command::Status(args) => {
            let config = handoff::StatusConfig::from(&args);
            Ok(handoff::status(&config, &mut std::io::stdout().lock()).await?)
        }
        Command::Pause(args) => {
            let config = args.config(true);
            Ok(handoff::pause::pause(&config, &mut std::io::stdout().lock()).await?)
        }
        Command::Resume(args) => {
            let config = args.config(false);
            Ok(handoff::pause::pause(&config, &mut std::io::stdout().lock()).await?)
        }
        Command::Crd => print(&api::crd_yaml()?),
        Command::Certs(args) => certs(&args),
        Command::Completion(args) => print_bytes(&cli::completion_script(args.shell)),
        Command::Version => print_version(),
    }
}

/// Runs one `zen-lead-pod` invocation: only what a pool pod runs, so the
/// binary links none of the controller's code (see [`cli::PodCli`]).
pub async fn run_pod(cli: PodCli) -> Result<(), Error> {
    telemetry::init_logging(cli.global.log_format, &cli.global.log_level)?;
    match cli.command {
        PodCommand::Agent(args) => run_agent(&args).await,
        PodCommand::Run(args) => Ok(run::run(&args.config()).await?),
        PodCommand::Probe(args) => Ok(run::probe::probe(&args.config()).await?),
        PodCommand::Version => print_version(),
    }
}

/// The edge both binaries share: one process-wide TLS provider (ring),
/// chosen before any TLS is set up so kube's client, the webhook and the
/// agent agree, then `command` on a runtime. The per-pod processes run on
/// one thread: their work is I/O for one pod, with no cross-thread wake-ups
/// (for the API gate, a futex and a context switch per proxied watch event
/// otherwise); the controller's reconcilers and webhook use every core.
pub fn execute(
    single_threaded: bool,
    command: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| Error::CryptoProvider)?;
    panic_guard::install();
    let runtime = if single_threaded {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .map_err(Error::Runtime)?;
    runtime.block_on(command)
}

/// The exit status of a binary, printing the error's whole cause chain on
/// one line first.
pub fn exit_code(result: Result<(), Error>) -> std::process::ExitCode {
    let Err(err) = result else {
        return std::process::ExitCode::SUCCESS;
    };
    let mut line = format!("zen-lead: error: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        // Most messages already quote their cause.
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    eprintln!("{line}");
    std::process::ExitCode::FAILURE
}

async fn run_agent(args: &cli::AgentArgs) -> Result<(), Error> {
    let config = args.config()?;
    tracing::debug!(?config, "agent configuration");
    Ok(agent::run(&config).await?)
}

fn print_version() -> Result<(), Error> {
    print(&format!("zen-lead {}\n", cli::LONG_VERSION))
}

fn print(text: &str) -> Result<(), Error> {
    print_bytes(text.as_bytes())
}

fn print_bytes(bytes: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Error::Stdout)
}

fn certs(args: &CertsArgs) -> Result<(), Error> {
    let request = tls::CertRequest {
        dns_names: args.dns.iter().filter(|d| !d.is_empty()).cloned().collect(),
        ip_addresses: args.ip.clone(),
        validity: Duration::from_secs(u64::from(args.days) * 24 * 60 * 60),
    };
    let generated = tls::generate(&request)?;
    let written = generated.write_to(&args.out, args.force)?;
    tracing::info!(dir = %args.out.display(), dns = ?request.dns_names, ip = ?request.ip_addresses, "certificates written");
    let mut text = String::new();
    for path in written {
        text.push_str(&format!("{}\n", path.display()));
    }
    print(&text)
}
