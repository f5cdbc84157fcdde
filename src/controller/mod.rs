//! `zen-lead controller` (issue 6): keeps each LeaderPolicy's Lease, status,
//! pod roles and scaleDown replica counts current, and serves the webhook
//! (issue 5) on every replica.
//!
//! What runs now is the webhook and the admin server; the controllers
//! themselves come with issue 6.

use std::net::SocketAddr;

use crate::api::validate_dns_label;
use crate::cli::ControllerArgs;
use crate::webhook::{self, WebhookError};

/// Validated controller settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub webhook: webhook::Config,
    pub admin_addr: SocketAddr,
    pub namespace: String,
    pub agent_image: String,
    pub evict_uninjected: bool,
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
}

/// Runs `zen-lead controller` until SIGTERM or Ctrl-C: for now the webhook
/// (HTTPS) and the admin server.
pub async fn run(config: &Config) -> Result<(), ControllerError> {
    let client = kube::Client::try_default()
        .await
        .map_err(ControllerError::Kube)?;
    let shutdown = shutdown_signal()?;
    let registry = crate::telemetry::new_registry();
    webhook::serve(
        &config.webhook,
        config.admin_addr,
        &config.namespace,
        client,
        registry,
        shutdown,
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
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
        Ok(Self {
            webhook,
            admin_addr: args.admin_addr,
            namespace: args.namespace.clone(),
            agent_image: image.to_owned(),
            evict_uninjected: args.evict_uninjected,
        })
    }
}
