//! `api` activation: the agent as the app's Kubernetes API server.
//!
//! The webhook points the app containers' in-cluster configuration at the
//! gate (`KUBERNETES_SERVICE_HOST/PORT`, host aliases, and a
//! service-account directory the gate keeps: [`sa_dir`]). The gate serves
//! HTTPS on the pod's loopback with a per-pod certificate and forwards every
//! request to the real API server with the app's own `Authorization` header,
//! unchanged. Reads pass in every role, so followers keep warm caches;
//! writes pass only while this pod leads ([`classify`] decides which is
//! which, [`proxy`] enforces it).
//!
//! The agent's own API access (its election) does not go through the gate:
//! it uses the real service-account mount.

pub mod certs;
pub mod classify;
pub mod fence_retry;
pub mod metrics;
pub mod proxy;
pub mod sa_dir;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub use classify::{ExemptSet, Exemption, UnknownExemption, Verdict};

use crate::election::LeaderStatus;

/// Names the gate's certificate covers: what in-cluster clients dial once
/// the webhook has pointed them at the gate.
pub const CERT_DNS_NAMES: [&str; 5] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
];

/// The per-pod CA lives only in memory and only as long as the pod.
const CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Exempt(#[from] UnknownExemption),

    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),

    #[error(transparent)]
    SaDir(#[from] sa_dir::SaDirError),

    #[error(transparent)]
    Certificate(#[from] certs::CertError),

    #[error("the gate's TLS configuration is unusable: {0}")]
    Tls(#[from] crate::tls::TlsError),

    #[error("could not parse the gate's own certificate: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),

    #[error(
        "could not listen on --gate-addr (ZEN_LEAD_GATE_ADDR) {addr}: {source}; choose a free \
         loopback port"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Validated gate settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateConfig {
    pub addr: SocketAddr,
    pub sa_dir: PathBuf,
    pub source_sa_dir: PathBuf,
    pub upstream: Option<String>,
    pub upstream_ca: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub exempt: ExemptSet,
    /// How long a standby's write waits for this pod to lead.
    pub hold: Duration,
    pub pool: String,
    pub identity: String,
    /// Written to `namespace` when the source directory has none.
    pub namespace: String,
}

/// A serving gate.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// PEM of the per-pod CA (also in `ca.crt` of the SA directory).
    pub ca_pem: String,
    /// True once the gate listens and the SA directory is written.
    pub ready: Arc<AtomicBool>,
    /// Writes sent and not yet answered: the election releases the Lease
    /// once this is zero ([`proxy::InFlight`]).
    pub in_flight: watch::Receiver<usize>,
}

/// Starts the gate: resolves the upstream, makes the per-pod certificate,
/// listens, writes the SA directory, then serves until `stop` turns true.
pub async fn start(
    config: &GateConfig,
    status: watch::Receiver<LeaderStatus>,
    registry: &mut Registry,
    stop: watch::Receiver<bool>,
) -> Result<Running, GateError> {
    let target = upstream::resolve(
        config.upstream.as_deref(),
        config.upstream_ca.as_deref(),
        &config.source_sa_dir,
    )
    .await?;
    let metrics = metrics::GateMetrics::default();
    metrics.register(registry);
    let clients = upstream::pooled_clients(&target, metrics.upstream_connections.clone())?;
    let upgrade_connector = upstream::Connector::new(
        &target,
        &[b"http/1.1"],
        metrics.upstream_connections.clone(),
    )?;

    let certs = certs::make(config.state_dir.as_deref(), CERT_VALIDITY)?;
    let chain =
        CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())?;
    let acceptor = TlsAcceptor::from(crate::tls::server_config_from_pem(chain, key)?);

    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| GateError::Listen {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| GateError::Listen {
        addr: config.addr,
        source,
    })?;

    let dir = sa_dir::SaDir {
        target: config.sa_dir.clone(),
        source: config.source_sa_dir.clone(),
        namespace: config.namespace.clone(),
        ca_pem: certs.ca_pem.clone(),
    };
    let token = dir.write_all()?;
    tokio::spawn(dir.keep_token_fresh(token, stop.clone()));

    let (in_flight, in_flight_rx) = proxy::InFlight::new();
    let shared = Arc::new(proxy::Shared {
        status: status.clone(),
        exempt: config.exempt,
        hold: proxy::Hold {
            waiting: metrics.writes_waiting.clone(),
            ..proxy::Hold::new(config.hold)
        },
        pool: config.pool.clone(),
        identity: config.identity.clone(),
        target: target.clone(),
        clients,
        upgrade_connector,
        metrics,
        bodies: Arc::new(tokio::sync::Semaphore::new(fence_retry::BODY_BUDGET)),
        in_flight,
    });
    tokio::spawn(accept_loop(listener, acceptor, shared, stop.clone()));
    tokio::spawn(log_role_changes(status, stop));

    log_serving(config, addr, &target);
    Ok(Running {
        addr,
        ca_pem: certs.ca_pem,
        ready: Arc::new(AtomicBool::new(true)),
        in_flight: in_flight_rx,
    })
}

fn log_serving(config: &GateConfig, addr: SocketAddr, target: &upstream::Target) {
    info!(
        %addr,
        upstream = %target.base,
        sa_dir = %config.sa_dir.display(),
        exempt = %config.exempt.names(),
        hold_ms = config.hold.as_millis(),
        "API gate serving"
    );
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<proxy::Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // client-go multiplexes every request of a process, watches included,
    // over one HTTP/2 connection: allow as many streams as the API server.
    builder.http2().max_concurrent_streams(1000);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                warn!(error = %err, "accepting a gate connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        shared.metrics.connections.inc();
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    debug!(%peer, error = %err, "gate TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "gate TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req| contained(shared.clone(), req));
            if let Err(err) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, error = %err, "gate connection ended with an error");
            }
        });
    }
}

/// One request through the gate; a panic in it is a 500 for that request only.
async fn contained(
    shared: Arc<proxy::Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<proxy::GateBody>, std::convert::Infallible> {
    match crate::panic_guard::contain(proxy::handle(shared, req)).await {
        Ok(response) => response,
        Err(panicked) => Ok(proxy::status_response(
            hyper::StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("zen-lead gate: {panicked}"),
            None,
        )),
    }
}

/// One log line whenever writes start or stop passing, including when a
/// term ends by its deadline alone.
async fn log_role_changes(
    mut status: watch::Receiver<LeaderStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut passing = false;
    loop {
        let (now_passing, deadline) = {
            let s = status.borrow_and_update();
            let now = tokio::time::Instant::now();
            (
                s.leading_at(now),
                s.lead_until.filter(|_| s.leading_at(now)),
            )
        };
        if now_passing != passing {
            passing = now_passing;
            if passing {
                info!("API gate: this pod leads; writes pass");
            } else {
                info!("API gate: this pod is a standby; writes are refused (503)");
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Whether `/startz` should succeed in `api` activation.
pub fn is_ready(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}
