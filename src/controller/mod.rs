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
//! - [`task`]: the long-running tasks, and a panic in one as an error.

pub mod api_error;
pub mod context;
pub mod decide;
pub mod fencing;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod rbac;
pub mod runner;
pub mod task;
pub mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use fencing::FencingSettings;

use crate::admin::Readiness;
use crate::election::{Retries, counting_client};

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

    #[error(
        "--controller-sync-timeout (ZEN_LEAD_CONTROLLER_SYNC_TIMEOUT) must be at least 1s, got \
         {value:?}; it bounds how long a new leader waits for its watches to list"
    )]
    SyncTimeoutTooShort { value: Duration },

    #[error("the controller election stopped: {0}")]
    Election(#[from] crate::election::RunError),

    #[error("{0}")]
    Task(#[from] task::TaskError),

    #[error(
        "the controller election or the controllers ended before shutdown ({reason}); this \
         replica exits so it is restarted (the other replicas keep serving the webhook and one \
         of them leads)"
    )]
    ControllersEnded { reason: String },

    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),

    #[error(
        "namespace {namespace:?} (--namespace, ZEN_LEAD_NAMESPACE) holds the controller's Lease but \
         does not exist, and creating it failed: {reason}; create it (kubectl create namespace \
         {namespace}) or choose an existing one with --namespace"
    )]
    MissingNamespace { namespace: String, reason: String },
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
    // Not a readiness condition: /readyz is the webhook's, which every
    // replica serves whether or not its controllers run or have synced (a
    // leader that cannot sync gives up its Lease instead; see `runner`).
    let caches_synced = prometheus_client::metrics::gauge::Gauge::default();
    registry.sub_registry_with_prefix("controller").register(
        "caches_synced",
        "1 while this replica runs the controllers and every watch they need has listed",
        caches_synced.clone(),
    );
    let readiness = Readiness::default();
    let webhook_ready = readiness.condition("webhook serving certificate");
    let admin = crate::admin::serve(config.admin_addr, registry, readiness).await?;
    let client = counting_client(metrics.api_requests.clone(), Retries::Kube).await?;
    ensure_namespace(&client, &config.namespace).await?;
    let shutdown = shutdown_signal()?;

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let election_client = counting_client(metrics.api_requests.clone(), Retries::Kube).await?;
    let (ended, ended_rx) = tokio::sync::oneshot::channel();
    let settings = config.controllers.clone();
    let controllers_client = client.clone();
    let controllers = tokio::spawn(async move {
        let result = runner::lead_and_run(
            controllers_client,
            election_client,
            settings,
            metrics,
            caches_synced,
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
    // A panic of the task is an error, never a clean exit.
    let elected = task::joined("controller election", controllers.await);
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
    elected.map_err(|err| match err {
        runner::RunnerError::Election(e) => ControllerError::Election(e),
        runner::RunnerError::Task(e) => ControllerError::Task(e),
        // Failed while shutting down: still a failure to report.
        e @ runner::RunnerError::NotSynced { .. } => ControllerError::ControllersEnded {
            reason: e.to_string(),
        },
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// The controller's own namespace holds its Lease (and, self-managed, its
/// certificate Secret). A controller run from a workstation (`make run`)
/// against a fresh cluster finds none: it is created, or the error says
/// what to do. Inside a cluster the pod runs in it, and the chart grants no
/// read of namespaces, so a 403 means there is nothing to check.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<(), ControllerError> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    match api.get_opt(name).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(()),
        Err(err) => {
            // Transient (the API server is slow): the election retries and
            // reports on its own.
            tracing::warn!(namespace = name, error = %err, "could not check the controller's namespace");
            return Ok(());
        }
    }
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api
        .create(&kube::api::PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {
            tracing::info!(
                namespace = name,
                "created the controller's namespace (--namespace)"
            );
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(err) => Err(ControllerError::MissingNamespace {
            namespace: name.to_owned(),
            reason: err.to_string(),
        }),
    }
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
            tracing::error!(
                "the controller election or the controllers stopped; stopping this replica so it restarts"
            );
        }
    }
}

/// The controller's clients count every request (the API load metric the
/// scale benchmark reads) and keep kube's retries.
impl From<crate::election::driver::ClientError> for ControllerError {
    fn from(err: crate::election::driver::ClientError) -> Self {
        use crate::election::driver::ClientError;
        match err {
            ClientError::Config(e) => Self::Kube(kube::Error::InferConfig(e)),
            ClientError::Build(e) => Self::Kube(e),
        }
    }
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

    /// A mock API server answering `script` in order; returns what it saw
    /// as (method, path).
    /// (method, path) of each request the mock saw.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

    fn mock(script: Vec<(u16, serde_json::Value)>) -> (kube::Client, Seen) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut script = script.into_iter();
            while let Some((request, respond)) = handle.next_request().await {
                log.lock().unwrap_or_else(|e| e.into_inner()).push((
                    request.method().to_string(),
                    request.uri().path().to_owned(),
                ));
                let (status, body) = script.next().unwrap_or((500, serde_json::json!({})));
                let mut response = Response::new(Body::from(body.to_string().into_bytes()));
                *response.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                respond.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), seen)
    }

    fn status(code: u16) -> serde_json::Value {
        let reason = if code == 404 { "NotFound" } else { "Forbidden" };
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": "m", "reason": reason, "code": code})
    }

    #[tokio::test]
    async fn a_missing_namespace_is_created_or_named_in_the_error() {
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": "zen-lead"}});
        // Exists: one read.
        let (client, seen) = mock(vec![(200, ns.clone())]);
        ensure_namespace(&client, "zen-lead").await.expect("exists");
        assert_eq!(seen.lock().map(|s| s.len()).unwrap_or(0), 1);
        // Missing: created.
        let (client, seen) = mock(vec![(404, status(404)), (201, ns)]);
        ensure_namespace(&client, "zen-lead")
            .await
            .expect("created");
        let calls = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            calls[1],
            ("POST".to_owned(), "/api/v1/namespaces".to_owned())
        );
        // In a cluster without the right to read namespaces: nothing to check.
        let (client, _) = mock(vec![(403, status(403))]);
        ensure_namespace(&client, "zen-lead")
            .await
            .expect("403 on read");
        // Missing and not creatable: the error names the flag and the fix.
        let (client, _) = mock(vec![(404, status(404)), (403, status(403))]);
        let err = ensure_namespace(&client, "zen-lead")
            .await
            .expect_err("cannot create");
        let text = err.to_string();
        assert!(
            text.contains("--namespace") && text.contains("kubectl create namespace zen-lead"),
            "{text}"
        );
    }
}
