//! HTTPS serving of `POST /mutate` (axum on hyper over rustls). The admin
//! server (`/livez`, `/readyz`, `/metrics`) is the process's: see
//! [`crate::admin`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_rustls::TlsAcceptor;

use super::WebhookError;
use super::agent::InjectConfig;
use super::certs::{CertStore, server_config};
use super::lookup::Lookup;
use super::review::admit;
use crate::admin::ReadyFlag;

/// Default largest request body. The API server sends whole pods; a pod is
/// bounded by etcd's 1.5 MiB object limit, so 3 MiB leaves room for the
/// AdmissionReview envelope and JSON escaping.
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Default bound on one admission (the API server waits at most 5 s with
/// our manifests; answering later is pointless).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Admissions being answered at once at most. More wait for a slot until
/// their deadline ([`DEFAULT_REQUEST_TIMEOUT`]), then get a 503: the
/// webhook serves in the controller's process, whose memory the
/// reconcilers need too.
pub const MAX_IN_FLIGHT: usize = 64;

/// Bytes of request bodies held at once at most, all admissions together
/// (a request counts its `Content-Length`, or the body limit without one).
pub const MAX_IN_FLIGHT_BYTES: usize = 16 << 20;

/// Connections at once at most; one more is accepted and closed at once.
/// The API server keeps a few open and multiplexes over HTTP/2.
pub const MAX_CONNECTIONS: usize = 32;

/// HTTP/2 flow-control window of one stream. A stream waiting for an
/// admission slot has not read its body, and unread data holds the
/// connection's window too: the connection's window is the sum of its
/// streams' ([`MAX_IN_FLIGHT`] of them), so waiting streams can never
/// starve the ones being answered. Per connection at most 2 MiB is buffered
/// this way (64 MiB over [`MAX_CONNECTIONS`]); a 3 MiB body still arrives
/// in a few milliseconds on a cluster network.
const H2_STREAM_WINDOW: u32 = 32 << 10;

/// How long a request head may take, and an idle HTTP/1.1 connection stay.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// HTTPS address of `/mutate` (port 0: any free port).
    pub addr: SocketAddr,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub inject: InjectConfig,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// The webhook's metrics.
#[derive(Clone)]
pub struct Metrics {
    latency: Family<OutcomeLabels, Histogram>,
    reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let latency = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let reloads = Family::<ReloadLabels, Counter>::default();
        // Both results exist from the start at zero, so an alert on
        // `increase(...{result="error"})` sees the series before a failure.
        for result in ["ok", "error"] {
            reloads.get_or_create(&ReloadLabels { result }).inc_by(0);
        }
        registry.register(
            "webhook_admission_duration_seconds",
            "Time to answer one admission request, by outcome (injected, not_in_pool, ...)",
            latency.clone(),
        );
        registry.register(
            "webhook_certificate_reloads",
            "Serving certificate reloads, by result (ok, error)",
            reloads.clone(),
        );
        Self { latency, reloads }
    }

    fn observe(&self, outcome: &'static str, elapsed: Duration) {
        self.latency
            .get_or_create(&OutcomeLabels { outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a certificate reload.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }
}

struct AppState<L> {
    lookup: Arc<L>,
    inject: InjectConfig,
    max_body_bytes: usize,
    request_timeout: Duration,
    metrics: Metrics,
    /// [`MAX_IN_FLIGHT`] permits.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// [`MAX_IN_FLIGHT_BYTES`] permits, one per byte.
    in_flight_bytes: Arc<tokio::sync::Semaphore>,
}

/// A running webhook. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    ready: ReadyFlag,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting connections; connections in progress finish on their own.
    pub async fn shutdown(self) {
        self.ready.set(false);
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Whether the webhook serves (its readiness condition).
    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// Waits, until `deadline`, for an admission slot and for `bytes` of the
/// body budget; `Err` is the 503 to answer.
async fn admission_slot<L>(
    state: &AppState<L>,
    bytes: usize,
    deadline: tokio::time::Instant,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Response> {
    let bytes = u32::try_from(bytes.min(MAX_IN_FLIGHT_BYTES)).unwrap_or(u32::MAX);
    let acquire = async {
        let slot = state.in_flight.clone().acquire_owned().await.ok()?;
        let budget = state
            .in_flight_bytes
            .clone()
            .acquire_many_owned(bytes)
            .await
            .ok()?;
        Some((slot, budget))
    };
    match tokio::time::timeout_at(deadline, acquire).await {
        Ok(Some(permits)) => Ok(permits),
        _ => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "zen-lead webhook busy: {MAX_IN_FLIGHT} admissions or {} MiB of request bodies \
                 were in flight for as long as this request may wait",
                MAX_IN_FLIGHT_BYTES >> 20
            ),
        )),
    }
}

async fn mutate<L: Lookup>(State(state): State<Arc<AppState<L>>>, request: Request) -> Response {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    let limit = state.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        state.metrics.observe("too_large", started.elapsed());
        return too_large(limit);
    }
    let bytes = declared
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(limit);
    let _permits = match admission_slot(&state, bytes, deadline).await {
        Ok(permits) => permits,
        Err(busy) => {
            state.metrics.observe("busy", started.elapsed());
            return busy;
        }
    };
    // A panic answering one admission is a 500 for it alone (panic_guard).
    let work = crate::panic_guard::contain(answer(&state, request.into_body()));
    let (outcome, response) = match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(done)) => done,
        Ok(Err(panicked)) => {
            tracing::error!(error = %panicked, "answering an admission panicked");
            (
                "panic",
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("zen-lead webhook: {panicked}"),
                ),
            )
        }
        Err(_) => (
            "timeout",
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "zen-lead could not answer within {:?}",
                    state.request_timeout
                ),
            ),
        ),
    };
    state.metrics.observe(outcome, started.elapsed());
    response
}

fn too_large(limit: usize) -> Response {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes (--max-body-bytes)"),
    )
}

/// Reads the body and answers the AdmissionReview in it: the outcome (a
/// metric label) and the response.
async fn answer<L: Lookup>(state: &AppState<L>, body: Body) -> (&'static str, Response) {
    let limit = state.max_body_bytes;
    // Limited also while reading: Content-Length may be absent (chunked).
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return ("too_large", too_large(limit));
            }
            return (
                "bad_request",
                text(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {err}"),
                ),
            );
        }
    };
    let reply = admit(&bytes, state.lookup.as_ref(), &state.inject).await;
    let content_type = if reply.status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = reply.status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (reply.outcome, response)
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "zen-lead webhook: POST /mutate")
}

/// The HTTPS router (also used by tests without TLS).
fn router<L: Lookup>(state: Arc<AppState<L>>) -> Router {
    Router::new()
        .route("/mutate", post(mutate::<L>))
        .fallback(not_found)
        .with_state(state)
}

/// Serves one accepted connection: TLS handshake (bounded), then HTTP/1 or HTTP/2.
async fn serve_connection(
    acceptor: TlsAcceptor,
    app: Router,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let service = TowerToHyperService::new(app);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 << 10);
    let streams = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
    builder
        .http2()
        .max_concurrent_streams(streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_STREAM_WINDOW.saturating_mul(streams));
    if let Err(err) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%peer, error = %err, "webhook connection ended with an error");
    }
}

/// Binds the listener and starts serving. Returns once it accepts
/// connections, and sets `ready` then (the certificate is loaded before
/// this is called); [`Running::shutdown`] clears it.
pub async fn start<L: Lookup>(
    options: ServeOptions,
    certs: Arc<CertStore>,
    lookup: Arc<L>,
    metrics: Metrics,
    ready: ReadyFlag,
) -> Result<Running, WebhookError> {
    let tls = server_config(certs)?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(options.addr)
        .await
        .map_err(|source| WebhookError::Bind {
            what: "webhook (--webhook-addr)",
            addr: options.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| WebhookError::Bind {
        what: "webhook (--webhook-addr)",
        addr: options.addr,
        source,
    })?;

    let state = Arc::new(AppState {
        lookup,
        inject: options.inject,
        max_body_bytes: options.max_body_bytes,
        request_timeout: options.request_timeout,
        metrics: metrics.clone(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        in_flight_bytes: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_BYTES)),
    });
    let app = router(state);
    let (stop, stop_rx) = watch::channel(false);

    let mut stop_https = stop_rx.clone();
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let https = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop_https.changed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accepting a webhook connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = connections.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "webhook connection cap reached: closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let _slot = slot;
                serve_connection(acceptor, app, tcp, peer).await;
            });
        }
    });

    ready.set(true);
    tracing::info!(%addr, "webhook serving");
    Ok(Running {
        addr,
        metrics,
        ready,
        stop,
        tasks: vec![https],
    })
}
