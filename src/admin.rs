//! The process's admin server: `/livez`, `/readyz` and `/metrics` over
//! plain HTTP. It belongs to the process, not to any one role: each part
//! that must be up before the replica takes traffic holds a [`ReadyFlag`]
//! of the process's [`Readiness`], and `/readyz` is 200 only while every
//! flag is set. Only what serves traffic belongs here: in `zen-lead
//! controller` that is the webhook (its certificate loaded, its listener
//! bound). The controllers' caches are not a condition: a leader that
//! cannot sync them gives its Lease up instead (see
//! `controller::runner`), and `zen_lead_controller_caches_synced` shows
//! them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::telemetry;

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("could not listen on --admin-addr {addr}: {source}; choose a free port")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The readiness conditions of one process.
#[derive(Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<Vec<(&'static str, ReadyFlag)>>>,
}

/// One readiness condition, false until set.
#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Readiness {
    /// Adds a condition named for `/readyz`'s answer (say what is not
    /// ready yet, e.g. "webhook serving certificate").
    pub fn condition(&self, name: &'static str) -> ReadyFlag {
        let flag = ReadyFlag::default();
        self.conditions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, flag.clone()));
        flag
    }

    /// The conditions not met now, in the order they were added.
    pub fn pending(&self) -> Vec<&'static str> {
        self.conditions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, flag)| !flag.get())
            .map(|(name, _)| *name)
            .collect()
    }
}

/// A serving admin server.
pub struct Admin {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Listens on `addr` (port 0: any free port) and serves until shut down.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
) -> Result<Admin, AdminError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let app = router(Arc::new(registry), readiness);
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop_rx.changed().await;
        };
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %err, "admin server failed");
        }
    });
    Ok(Admin { addr, stop, task })
}

fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(|| async { text(StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let pending = readiness.pending();
                async move {
                    if pending.is_empty() {
                        text(StatusCode::OK, "ok\n")
                    } else {
                        text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", pending.join(", ")),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    match telemetry::render(&registry) {
                        Ok(body) => (
                            [(header::CONTENT_TYPE, telemetry::METRICS_CONTENT_TYPE)],
                            body,
                        )
                            .into_response(),
                        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
                    }
                }
            }),
        )
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_waits_for_every_condition_and_names_the_missing_ones() {
        let readiness = Readiness::default();
        assert!(readiness.pending().is_empty(), "no condition: ready");
        let cert = readiness.condition("webhook serving certificate");
        let caches = readiness.condition("controller caches");
        assert_eq!(
            readiness.pending(),
            vec!["webhook serving certificate", "controller caches"]
        );
        cert.set(true);
        assert_eq!(readiness.pending(), vec!["controller caches"]);
        caches.clone().set(true);
        assert!(readiness.pending().is_empty());
        cert.set(false);
        assert!(!cert.get());
        assert_eq!(readiness.pending(), vec!["webhook serving certificate"]);
    }
}
