//! `zen-lead controller`: the webhook (every replica) and the controllers
//! (the replica holding the controller's own Lease), which keep each
//! LeaderPolicy's Lease, status, pod roles, readiness gates, RBAC and
//! scaleDown replica counts current.
//!
//! - [`decide`]: every decision, pure and table-tested.
//! - [`watch`]: the scoped watches, their caches, and what a change queues.
//! - [`queue`]: the de-duplicating pool queue.
//! - [`pool`]: one pool's pass, observe → plan → apply.
//! - [`context`]: what passes share (client, caches, memory).
//! - [`api_error`]: the errors of writes and the helpers writers share.
//! - [`rbac`]: the candidates' Lease RBAC, one Role per ServiceAccount.
//! - [`runner`]: the controller Lease and the workers.

pub mod api_error;
pub mod context;
pub mod decide;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod rbac;
pub mod runner;
pub mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::admin::Readiness;

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

    #[error(
        "the controller election ended before shutdown ({reason}); this replica exits so it is \
         restarted (the other replicas keep serving the webhook and one of them leads)"
    )]
    ControllersEnded { reason: String },

    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
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
    let webhook_metrics = webhook::server::Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let webhook_ready = readiness.condition("webhook serving certificate");
    let caches_ready = readiness.condition("controller caches");
    let admin = crate::admin::serve(config.admin_addr, registry, readiness).await?;
    let client = counting_client(metrics.api_requests.clone()).await?;
    let shutdown = shutdown_signal()?;

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let election_client = counting_client(metrics.api_requests.clone()).await?;
    let (ended, ended_rx) = tokio::sync::oneshot::channel();
    let settings = config.controllers.clone();
    let controllers_client = client.clone();
    let controllers = tokio::spawn(async move {
        let result = runner::lead_and_run(
            controllers_client,
            election_client,
            settings,
            metrics,
            caches_ready,
            election_metrics,
            stop_rx,
        )
        .await;
        let _ = ended.send(());
        result
    });
    let early = AtomicBool::new(false);
    let served = webhook::serve(
        &config.webhook,
        &config.namespace,
        client,
        webhook_metrics,
        webhook_ready,
        stop_on(shutdown, ended_rx, &early),
    )
    .await;
    let _ = stop.send(true);
    let elected = controllers.await.unwrap_or(Ok(()));
    admin.shutdown().await;
    served?;
    if early.load(Ordering::Relaxed) {
        return Err(ControllerError::ControllersEnded {
            reason: match elected {
                Err(err) => err.to_string(),
                Ok(()) => "it returned without an error".to_owned(),
            },
        });
    }
    elected?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C, or as soon as the controllers' task
/// (the controller Lease's election and the controllers) ends by itself;
/// then `early` is set. A replica whose election stopped would stay Ready
/// as a webhook that never campaigns again, so the process exits with an
/// error instead and the kubelet restarts it; the webhook keeps being
/// served by the other replicas meanwhile.
pub async fn stop_on(
    shutdown: impl std::future::Future<Output = ()>,
    ended: tokio::sync::oneshot::Receiver<()>,
    early: &AtomicBool,
) {
    tokio::select! {
        _ = shutdown => {}
        _ = ended => {
            early.store(true, Ordering::Relaxed);
            tracing::error!("the controller election stopped; stopping this replica so it restarts");
        }
    }
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

/// `$POD_NAME` (downward API) or the host name, plus the process id, so two
/// processes on one host never share an identity.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "zen-lead".to_owned());
    format!("{base}_{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_process_stops_when_the_controllers_task_ends_by_itself() {
        // Ended without a signal: stop, marked early.
        let (ended, ended_rx) = tokio::sync::oneshot::channel();
        let early = AtomicBool::new(false);
        let task = tokio::spawn(async move {
            let _ = ended.send(());
        });
        let never = std::future::pending::<()>();
        tokio::time::timeout(Duration::from_secs(5), stop_on(never, ended_rx, &early))
            .await
            .expect("stops when the controllers end");
        assert!(early.load(Ordering::Relaxed));
        let _ = task.await;

        // A task that dies without saying so (its sender dropped) counts too.
        let (ended, ended_rx) = tokio::sync::oneshot::channel::<()>();
        drop(ended);
        let early = AtomicBool::new(false);
        tokio::time::timeout(
            Duration::from_secs(5),
            stop_on(std::future::pending::<()>(), ended_rx, &early),
        )
        .await
        .expect("stops");
        assert!(early.load(Ordering::Relaxed));

        // A signal: stop, not early (the controllers are still running).
        let (_ended, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let early = AtomicBool::new(false);
        stop_on(std::future::ready(()), ended_rx, &early).await;
        assert!(!early.load(Ordering::Relaxed));
    }
}
