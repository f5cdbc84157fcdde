//! `zen-lead controller`: the webhook (every replica) and the controllers
//! (the replica holding the controller's own Lease), which keep each
//! LeaderPolicy's Lease, status, pod roles, readiness gates, RBAC and
//! scaleDown replica counts current.
//!
//! - [`decide`]: every decision, pure and table-tested.
//! - [`watch`]: the scoped watches, their caches, and what a change queues.
//! - [`queue`]: the de-duplicating pool queue.
//! - [`pool`]: one pool's pass, observe → plan → apply.
//! - [`context`]: what passes share (client, caches, memory, errors).
//! - [`rbac`]: the candidates' Lease RBAC, one Role per ServiceAccount.
//! - [`runner`]: the controller Lease and the workers.

pub mod context;
pub mod decide;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod rbac;
pub mod runner;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::api::validate_dns_label;
use crate::cli::ControllerArgs;
use crate::webhook::{self, WebhookError};

/// Validated controller settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub webhook: webhook::Config,
    pub admin_addr: SocketAddr,
    pub namespace: String,
    pub controllers: runner::Settings,
}

/// Errors of the controller module.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Webhook(#[from] WebhookError),

    #[error("--namespace (ZEN_LEAD_NAMESPACE) {value:?} is not a valid namespace name: {reason}")]
    InvalidNamespace { value: String, reason: String },

    #[error(
        "--agent-image (ZEN_LEAD_AGENT_IMAGE) {value:?} is not an image reference: it must be \
         non-empty and contain no whitespace"
    )]
    InvalidAgentImage { value: String },

    #[error(
        "no Kubernetes configuration: {0}; inside a cluster the pod needs a service account, \
         outside one set KUBECONFIG"
    )]
    Kube(#[source] kube::Error),

    #[error("could not install the signal handler: {0}")]
    Signal(#[source] std::io::Error),

    #[error(
        "--watch-namespace (ZEN_LEAD_WATCH_NAMESPACE) {value:?} is not a valid namespace name: {reason}"
    )]
    InvalidWatchNamespace { value: String, reason: String },

    #[error(
        "--controller-lease-name (ZEN_LEAD_CONTROLLER_LEASE_NAME) {value:?} cannot name a Lease: {reason}"
    )]
    InvalidLeaseName { value: String, reason: String },

    #[error(
        "--controller-lease-duration (ZEN_LEAD_CONTROLLER_LEASE_DURATION) must be at least 2s, got {value:?}"
    )]
    LeaseTooShort { value: Duration },

    #[error("the controller election stopped: {0}")]
    Election(#[from] crate::election::RunError),
}

/// Runs `zen-lead controller` until SIGTERM or Ctrl-C: the webhook and admin
/// server on this replica, and the controllers while it holds the
/// controller Lease (released on shutdown, so a standby takes over at once).
pub async fn run(config: &Config) -> Result<(), ControllerError> {
    let metrics = metrics::Metrics::default();
    let election_metrics = crate::election::Metrics::default();
    let mut registry = crate::telemetry::new_registry();
    metrics.register(&mut registry);
    election_metrics.register(registry.sub_registry_with_prefix("controller_lease"));
    let client = counting_client(metrics.api_requests.clone()).await?;
    let shutdown = shutdown_signal()?;

    let ready = Arc::new(AtomicBool::new(false));
    crate::telemetry::register_readiness("controller caches", ready.clone());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let election_client = counting_client(metrics.api_requests.clone()).await?;
    let controllers = tokio::spawn(runner::lead_and_run(
        client.clone(),
        election_client,
        config.controllers.clone(),
        metrics,
        ready,
        election_metrics,
        stop_rx,
    ));
    let served = webhook::serve(
        &config.webhook,
        config.admin_addr,
        &config.namespace,
        client,
        registry,
        shutdown,
    )
    .await;
    let _ = stop.send(true);
    let elected = controllers.await.unwrap_or(Ok(()));
    served?;
    elected?;
    tracing::info!("stopped");
    Ok(())
}

/// The client every controller request goes through; each request
/// increments `requests` (the API load metric the scale benchmark reads).
async fn counting_client(
    requests: prometheus_client::metrics::counter::Counter,
) -> Result<kube::Client, ControllerError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| ControllerError::Kube(kube::Error::InferConfig(e)))?;
    let layer = tower::util::MapRequestLayer::new(move |req| {
        requests.inc();
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(ControllerError::Kube)?
        .with_layer(&layer)
        .build())
}

fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ControllerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ControllerError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
        }
    })
}

impl Config {
    /// Builds the controller's settings from its flags.
    pub fn from_args(args: &ControllerArgs) -> Result<Self, ControllerError> {
        let webhook = webhook::Config::from_args(args)?;
        validate_dns_label(&args.namespace).map_err(|reason| {
            ControllerError::InvalidNamespace {
                value: args.namespace.clone(),
                reason,
            }
        })?;
        let image = args.agent_image.trim();
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(ControllerError::InvalidAgentImage {
                value: args.agent_image.clone(),
            });
        }
        let watch = args.watch_namespace.trim();
        if !watch.is_empty() {
            validate_dns_label(watch).map_err(|reason| ControllerError::InvalidWatchNamespace {
                value: args.watch_namespace.clone(),
                reason,
            })?;
        }
        crate::api::validate_dns_subdomain(&args.controller_lease_name).map_err(|reason| {
            ControllerError::InvalidLeaseName {
                value: args.controller_lease_name.clone(),
                reason,
            }
        })?;
        if args.controller_lease_duration < Duration::from_secs(2) {
            return Err(ControllerError::LeaseTooShort {
                value: args.controller_lease_duration,
            });
        }
        let identity = match args.controller_identity.trim() {
            "" => default_identity(),
            given => given.to_owned(),
        };
        let controllers = runner::Settings {
            watch_namespace: (!watch.is_empty()).then(|| watch.to_owned()),
            namespace: args.namespace.clone(),
            lease_name: args.controller_lease_name.clone(),
            lease_timings: crate::election::record::proportional(args.controller_lease_duration),
            identity,
            workers: args.workers,
            evict_uninjected: args.evict_uninjected,
            create_missing_policies: args.create_missing_policies,
            detect_uninjected: args.detect_uninjected,
            resync: Duration::from_secs(300),
        };
        Ok(Self {
            webhook,
            admin_addr: args.admin_addr,
            namespace: args.namespace.clone(),
            controllers,
        })
    }
}

/// `$POD_NAME` (downward API) or the host name, plus the process id, so two
/// processes on one host never share an identity.
fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "zen-lead".to_owned());
    format!("{base}_{}", std::process::id())
}
