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
//! - [`handoff`]: `zen-lead handoff` and `zen-lead status` (operators).
//! - [`tls`], [`telemetry`]: certificates, logging, metrics.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod contract;
pub mod controller;
pub mod election;
pub mod handoff;
pub mod lock;
pub mod run;
pub mod telemetry;
pub mod tls;
pub mod webhook;

use std::io::Write;
use std::time::Duration;

use cli::{CertsArgs, Cli, Command};

/// Crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short git commit the binary was built from, or `unknown`.
pub const GIT_COMMIT: &str = env!("ZEN_LEAD_GIT_COMMIT");

/// Top-level error of a `zen-lead` run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`zen-lead {command}` is not implemented yet ({issue}); the flags were checked, \
         nothing was started"
    )]
    NotImplemented {
        command: &'static str,
        issue: &'static str,
    },

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
}

/// Runs one `zen-lead` invocation.
pub async fn run(cli: Cli) -> Result<(), Error> {
    telemetry::init_logging(cli.log_format, &cli.log_level)?;
    match cli.command {
        Command::Controller(args) => {
            let config = controller::Config::from_args(&args)?;
            tracing::debug!(?config, "controller configuration");
            Ok(controller::run(&config).await?)
        }
        Command::Agent(args) => {
            let config = agent::Config::from_args(&args)?;
            tracing::debug!(?config, "agent configuration");
            Ok(agent::run(&config).await?)
        }
        Command::Lock(args) => {
            let request = lock::Request::from_args(&args)?;
            tracing::debug!(?request, "lock request");
            Ok(lock::run(request).await?)
        }
        Command::LockGuard(args) => Ok(lock::guard::run(&args).await?),
        Command::Run(args) => Ok(run::run(&args).await?),
        Command::Probe(args) => Ok(run::probe::probe(&args).await?),
        Command::Handoff(args) => {
            let config = handoff::HandoffConfig::from(&args);
            Ok(handoff::handoff(&config, &mut std::io::stdout().lock()).await?)
        }
        Command::Status(args) => {
            let config = handoff::StatusConfig::from(&args);
            Ok(handoff::status(&config, &mut std::io::stdout().lock()).await?)
        }
        Command::Crd => print(&api::crd_yaml()?),
        Command::Certs(args) => certs(&args),
        Command::Version => print(&format!("zen-lead {}\n", cli::LONG_VERSION)),
    }
}

fn print(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
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
