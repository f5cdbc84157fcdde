//! The agent's HTTP API, plain HTTP on two listeners (see [`super::listen`]
//! for their bounds): every path below on loopback (`--http-addr`, the pod's
//! own containers), and on the pod IP (`--probe-addr`) only what callers
//! from outside the pod need: `/livez`, `/readyz`, `/startz`,
//! `/app-health/...`, `/metrics` and `/leadz` ([`probe_router`]). `/v1/*`
//! never leaves the pod.
//!
//! | path | answers |
//! |---|---|
//! | `/livez` | 200 while the process runs |
//! | `/readyz` | 200 once the Lease watch is established and the Lease's state is known |
//! | `/startz` | `start` activation: 200 only while this pod leads (a follower's request is held up to 800 ms, answered the moment it leads); `api` activation: 200 once the API gate serves; `process` activation: 200 once the binary is shared (the startup probe that holds back the app containers) |
//! | `/app-health/<container>/<kind>` | `process` activation: the app container's probe (`startup`, `readiness`, `liveness`): 200 while the app is held, else the app's own probe (see [`super::app_probe`]) |
//! | `POST /v1/app/hold` | `process` activation, from loopback only: `zen-lead run` keeps this request open while its app runs; a voluntary release waits until none is open; 409 when this pod does not lead |
//! | `POST /v1/release` | `process` activation, from loopback only: release the Lease if this pod leads and stand down for a lease duration (`zen-lead run` asks when the app fails or a signal stopped it; `?reason=app-failed` or `app-stopped`) |
//! | `GET /v1/leader` | JSON: holder, leading, fencing token, since, Lease namespace/name |
//! | `GET /v1/leader/watch` | the same as server-sent events, one per change (also `/v1/leader` with `Accept: text/event-stream`); at most [`MAX_WATCHES`] at a time |
//! | `/leadz` | the `GET /v1/leader` JSON, one snapshot (`zen-lead handoff` asks it through the API server's pod proxy) |
//! | `/metrics` | Prometheus/OpenMetrics |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{ConnectInfo, Path, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::agent::app_probe::{self, Verdict};
use crate::contract::{
    APP_HEALTH_PREFIX, APP_HOLD_PATH, AppProbe, LEADZ_PATH, ProbeKind, RELEASE_PATH, ReleaseReason,
};
use crate::election::{LeaderStatus, clock};
use crate::telemetry::{METRICS_CONTENT_TYPE, render};

/// What the handlers read.
#[derive(Clone)]
pub struct State {
    pub status: watch::Receiver<LeaderStatus>,
    pub registry: Arc<Registry>,
    pub namespace: String,
    pub lease: String,
    pub identity: String,
    /// `api` activation: the gate's readiness, which `/startz` reports
    /// instead of leadership.
    pub gate_ready: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// `process` activation.
    pub process: Option<Arc<ProcessState>>,
    /// Requests that stay open, capped.
    pub budgets: Budgets,
}

/// Open `/v1/leader/watch` streams at most; one more is answered 503.
pub const MAX_WATCHES: usize = 64;

/// `/startz` requests held at once at most; beyond, one is answered at once
/// with the current role (the kubelet sends one per second).
pub const MAX_STARTZ_HOLDS: usize = 8;

/// The caps on requests that stay open: each holds a connection, a task
/// and a status receiver for as long as it lasts.
#[derive(Clone, Debug)]
pub struct Budgets {
    pub watches: Arc<Semaphore>,
    pub startz_holds: Arc<Semaphore>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            watches: Arc::new(Semaphore::new(MAX_WATCHES)),
            startz_holds: Arc::new(Semaphore::new(MAX_STARTZ_HOLDS)),
        }
    }
}

/// What the `process` handlers need.
#[derive(Debug)]
pub struct ProcessState {
    pub probes: Vec<AppProbe>,
    /// Tells the election to stand down until then.
    pub stand_down: watch::Sender<Option<Instant>>,
    /// App processes running under `zen-lead run` (open holds).
    pub running: watch::Sender<usize>,
}

/// One open hold: counted while it lives.
struct Hold(Arc<ProcessState>);

impl Hold {
    fn new(process: Arc<ProcessState>) -> Self {
        process.running.send_modify(|n| *n += 1);
        Self(process)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Body of `GET /v1/leader` and of each server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderView {
    pub namespace: String,
    pub lease: String,
    /// This candidate's identity.
    pub identity: String,
    /// Identity named in the Lease; `null` when free or unknown.
    pub holder: Option<String>,
    /// This pod leads right now.
    pub leading: bool,
    /// `leaseTransitions` of the current term: increases with every new
    /// term, so writes stamped with it can be fenced.
    pub fencing_token: Option<i32>,
    /// Start of the current term (RFC 3339, from the Lease's acquireTime).
    pub since: Option<String>,
    pub lease_exists: bool,
    /// The Lease watch is established.
    pub connected: bool,
    /// While leading: CLOCK_MONOTONIC nanoseconds (shared by every container
    /// of the pod) at which this term ends unless a renewal extends it. A
    /// guard such as `zen-lead run` stops its app by then on its own clock,
    /// even if the agent is paused and sends nothing more.
    pub lead_until_monotonic_ns: Option<u64>,
    /// How long after `leadUntilMonotonicNs` an app may take to exit before
    /// it must be killed: half of `leaseDuration - renewDeadline`, so it is
    /// gone before any other candidate may take the Lease.
    pub stop_grace_ms: u64,
    /// `scheduledRuns: once`: this pod's Job duplicates the run of this Job
    /// (same scheduled time); `zen-lead run` completes without the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
}

impl State {
    fn view(&self) -> LeaderView {
        let status = self.status.borrow().clone();
        LeaderView {
            namespace: self.namespace.clone(),
            lease: self.lease.clone(),
            identity: self.identity.clone(),
            holder: status.holder.clone(),
            leading: status.leading_at(Instant::now()),
            fencing_token: status.token,
            since: status.since.map(rfc3339),
            lease_exists: status.lease_exists,
            connected: status.connected,
            lead_until_monotonic_ns: status
                .lead_until
                .filter(|_| status.leading_at(Instant::now()))
                .and_then(|until| u64::try_from(clock::mono_ns(until)).ok()),
            stop_grace_ms: u64::try_from(status.timings.stop_grace().as_millis())
                .unwrap_or(u64::MAX),
            duplicate_of: status.duplicate_of.clone(),
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(time)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The loopback router: every path.
pub fn router(state: State) -> Router {
    probe_routes()
        .route("/v1/leader", get(leader))
        .route("/v1/leader/watch", get(leader_watch))
        .route(RELEASE_PATH, post(release))
        .route(APP_HOLD_PATH, post(app_hold))
        .with_state(state)
}

/// The pod IP's router: the kubelet's probes, `/metrics` and `/leadz`.
pub fn probe_router(state: State) -> Router {
    probe_routes().with_state(state)
}

fn probe_routes() -> Router<State> {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/startz", get(startz))
        .route(LEADZ_PATH, get(leadz))
        .route("/metrics", get(metrics))
        .route(
            &format!("{APP_HEALTH_PREFIX}/{{container}}/{{kind}}"),
            get(app_health),
        )
}

/// Serves the loopback API (`local`) and the probe port (`probe`) until
/// `stop` becomes true; ends with the first listener that fails.
pub async fn serve(
    local: TcpListener,
    probe: TcpListener,
    state: State,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use super::listen::{LOCAL_LIMITS, PROBE_LIMITS};
    let local = super::listen::serve(local, router(state.clone()), LOCAL_LIMITS, stop.clone());
    let probe = super::listen::serve(probe, probe_router(state), PROBE_LIMITS, stop);
    tokio::try_join!(local, probe).map(|_| ())
}

async fn readyz(Extract(state): Extract<State>) -> Response {
    let status = state.status.borrow().clone();
    if status.connected && status.observed {
        (StatusCode::OK, "ok\n").into_response()
    } else if !status.connected {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not watching the Lease yet (API server unreachable?)\n",
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Lease state not known yet\n",
        )
            .into_response()
    }
}

async fn startz(Extract(state): Extract<State>) -> Response {
    if state.process.is_some() {
        // The binary is shared before the server starts.
        return (
            StatusCode::OK,
            "binary shared; the app containers may start\n",
        )
            .into_response();
    }
    if let Some(ready) = &state.gate_ready {
        return if crate::agent::gate::is_ready(ready) {
            (StatusCode::OK, "API gate serving\n").into_response()
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "API gate not serving yet\n",
            )
                .into_response()
        };
    }
    // Long poll: the kubelet probes at most once a second, so a follower's
    // probe waits up to STARTZ_HOLD for leadership instead of failing at
    // once. Taking over then starts the app within one watch event, not at
    // the next probe tick (up to a second later). Holds are capped: beyond
    // the cap the current role is the answer.
    let mut status = state.status.clone();
    let until = Instant::now() + STARTZ_HOLD;
    let slot = state.budgets.startz_holds.clone().try_acquire_owned();
    loop {
        if status.borrow_and_update().leading_at(Instant::now()) {
            return (StatusCode::OK, "leading\n").into_response();
        }
        if slot.is_err() {
            return (StatusCode::SERVICE_UNAVAILABLE, "not leading\n").into_response();
        }
        match tokio::time::timeout_at(until, status.changed()).await {
            Ok(Ok(())) => {}
            // Held long enough, or the election is gone.
            _ => return (StatusCode::SERVICE_UNAVAILABLE, "not leading\n").into_response(),
        }
    }
}

/// How long `/startz` holds a follower's probe, waiting to lead: below the
/// injected probe's 1 s timeout, so the answer is a plain 503, not a timeout.
pub const STARTZ_HOLD: Duration = Duration::from_millis(800);

async fn leader(Extract(state): Extract<State>, headers: HeaderMap) -> Response {
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_stream {
        return leader_watch(Extract(state)).await;
    }
    axum::Json(state.view()).into_response()
}

/// `/leadz`: the `/v1/leader` JSON, never a stream.
async fn leadz(Extract(state): Extract<State>) -> Response {
    axum::Json(state.view()).into_response()
}

async fn leader_watch(Extract(state): Extract<State>) -> Response {
    let Ok(slot) = state.budgets.watches.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "zen-lead agent: {MAX_WATCHES} leader watches are open already; close one, or \
                 poll GET /v1/leader\n"
            ),
        )
            .into_response();
    };
    Sse::new(changes(state, slot))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// One event now, then one per change of the view. A term can also end by
/// time alone (its deadline), so the stream wakes at the deadline too. The
/// stream holds its watch slot until it is dropped.
fn changes(
    state: State,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (state, None::<LeaderView>, slot),
        |(mut state, last, slot)| async move {
            loop {
                let view = state.view();
                if last.as_ref() != Some(&view) {
                    let event = Event::default()
                        .event("leader")
                        .json_data(&view)
                        .unwrap_or_else(|_| Event::default().event("leader"));
                    return Some((Ok(event), (state, Some(view), slot)));
                }
                let deadline = {
                    let status = state.status.borrow();
                    status.lead_until.filter(|_| status.leading)
                };
                tokio::select! {
                    changed = state.status.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                }
            }
        },
    )
}

/// `process` activation: an app probe the webhook pointed at the agent.
async fn app_health(
    Extract(state): Extract<State>,
    Path((container, kind)): Path<(String, String)>,
) -> Response {
    let probe = state.process.as_ref().and_then(|p| {
        let kind = ProbeKind::parse(&kind)?;
        p.probes
            .iter()
            .find(|probe| probe.container == container && probe.kind == kind)
    });
    let Some(probe) = probe else {
        return (
            StatusCode::NOT_FOUND,
            format!("no {kind} probe of container {container:?} was handed to this agent\n"),
        )
            .into_response();
    };
    let status = state.status.borrow().clone();
    match app_probe::verdict(probe, &status, Instant::now()) {
        Verdict::Held => (
            StatusCode::OK,
            "held: this pod does not lead, so the app does not run\n",
        )
            .into_response(),
        Verdict::Starting { left } => (
            StatusCode::OK,
            format!(
                "starting: the app's liveness counts in {}s (its start-up budget)\n",
                left.as_secs()
            ),
        )
            .into_response(),
        Verdict::Probe => match app_probe::perform(probe).await {
            Ok(()) => (StatusCode::OK, "ok\n").into_response(),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
        },
    }
}

/// `process` activation: `zen-lead run`'s app failed (or was stopped by a
/// signal) while leading; let another replica take over instead of a
/// crash-looping or departing leader keeping the pool. Only the pod's own
/// containers (loopback) may ask.
async fn release(
    Extract(state): Extract<State>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "only containers of this pod may ask the agent to release\n",
        )
            .into_response();
    }
    let Some(process) = &state.process else {
        return (
            StatusCode::CONFLICT,
            "this agent does not run in process activation\n",
        )
            .into_response();
    };
    let status = state.status.borrow().clone();
    let now = Instant::now();
    if !status.leading_at(now) {
        return (StatusCode::OK, "not leading; nothing to release\n").into_response();
    }
    let until = now + status.timings.lease_duration();
    process.stand_down.send_replace(Some(until));
    let stand_down_ms = status.timings.lease_duration().as_millis();
    match ReleaseReason::from_query(uri.query()) {
        ReleaseReason::AppFailed => tracing::warn!(
            stand_down_ms,
            "the app failed while leading: releasing the Lease and standing down"
        ),
        ReleaseReason::AppStopped => tracing::info!(
            stand_down_ms,
            "the app was stopped by a signal while leading: releasing the Lease and standing down"
        ),
    }
    (
        StatusCode::OK,
        "releasing the Lease; standing down for one lease duration\n",
    )
        .into_response()
}

/// `zen-lead run` holds this request open while its app runs. The body is
/// read until the connection closes, which the kernel reports at once, also
/// when `run` dies.
async fn app_hold(
    Extract(state): Extract<State>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Body,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "only containers of this pod may hold\n",
        )
            .into_response();
    }
    let Some(process) = state.process.clone() else {
        return (
            StatusCode::CONFLICT,
            "this agent does not run in process activation\n",
        )
            .into_response();
    };
    let hold = Hold::new(process);
    // Counted first, then checked: a release steps down before it reads the
    // count, so either it sees this hold and waits for it, or this check
    // sees the step-down and CMD never starts beside the successor's.
    if !state.status.borrow().leading_at(Instant::now()) {
        drop(hold);
        return (
            StatusCode::CONFLICT,
            "this pod does not lead (any more): CMD must not start\n",
        )
            .into_response();
    }
    let _hold = hold;
    let mut data = body.into_data_stream();
    while let Some(Ok(_)) = futures::StreamExt::next(&mut data).await {}
    (StatusCode::OK, "released\n").into_response()
}

async fn metrics(Extract(state): Extract<State>) -> Response {
    match render(&state.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: LeaderStatus) -> (watch::Sender<LeaderStatus>, State) {
        let status = LeaderStatus {
            timings: crate::election::Timings::default(),
            ..status
        };
        let (tx, rx) = watch::channel(status);
        (
            tx,
            State {
                status: rx,
                registry: Arc::new(crate::telemetry::new_registry()),
                namespace: "ns".into(),
                lease: "pool".into(),
                identity: "me".into(),
                gate_ready: None,
                process: None,
                budgets: Budgets::default(),
            },
        )
    }

    #[test]
    fn view_reports_leadership_only_before_the_deadline() {
        let now = Instant::now();
        let (_tx, s) = state(LeaderStatus {
            holder: Some("me".into()),
            leading: true,
            lead_until: Some(now + Duration::from_secs(5)),
            token: Some(3),
            ..LeaderStatus::default()
        });
        let view = s.view();
        assert!(view.leading);
        assert_eq!(view.fencing_token, Some(3));
        let (_tx, s) = state(LeaderStatus {
            holder: Some("me".into()),
            leading: true,
            lead_until: Some(now),
            ..LeaderStatus::default()
        });
        assert!(!s.view().leading);
    }

    #[tokio::test]
    async fn startz_answers_as_soon_as_the_pod_leads_and_gives_up_after_the_hold() {
        let (tx, s) = state(LeaderStatus::default());
        let started = Instant::now();
        let probe = tokio::spawn(startz(Extract(s.clone())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(LeaderStatus {
            leading: true,
            lead_until: Some(Instant::now() + Duration::from_secs(5)),
            ..LeaderStatus::default()
        });
        let reply = probe.await.expect("probe task");
        assert_eq!(reply.status(), StatusCode::OK);
        assert!(
            started.elapsed() < STARTZ_HOLD,
            "answered on the change, not at the end of the hold"
        );

        let (_tx, s) = state(LeaderStatus::default());
        let started = Instant::now();
        assert_eq!(
            startz(Extract(s)).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(started.elapsed() >= STARTZ_HOLD);
    }

    /// A leading `process` agent's HTTP server on loopback: its address, the
    /// status sender, the stand-down and running-holds receivers, and the
    /// sender that keeps it serving.
    async fn process_agent() -> (
        std::net::SocketAddr,
        watch::Sender<LeaderStatus>,
        watch::Receiver<Option<Instant>>,
        watch::Receiver<usize>,
        watch::Sender<bool>,
    ) {
        let (tx, mut s) = state(LeaderStatus {
            leading: true,
            lead_until: Some(Instant::now() + Duration::from_secs(30)),
            ..LeaderStatus::default()
        });
        let (stand_down, stand_down_rx) = watch::channel(None);
        let (running, running_rx) = watch::channel(0usize);
        s.process = Some(Arc::new(ProcessState {
            probes: Vec::new(),
            stand_down,
            running,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(listener, probe, s, stop));
        (addr, tx, stand_down_rx, running_rx, stop_tx)
    }

    #[tokio::test]
    async fn app_holds_are_counted_until_the_connection_closes_and_release_stands_down() {
        use tokio::io::AsyncWriteExt;
        let (addr, tx, mut stand_down_rx, mut running_rx, _stop_tx) = process_agent().await;
        const WITHIN: Duration = Duration::from_secs(5);

        // As `zen-lead run` holds: counted before the agent confirms (100).
        let hold = crate::run::client::hold(addr)
            .await
            .expect("hold confirmed");
        assert_eq!(*running_rx.borrow(), 1);
        tokio::time::timeout(WITHIN, running_rx.wait_for(|n| *n == 1))
            .await
            .expect("counted")
            .expect("open");
        drop(hold);
        tokio::time::timeout(WITHIN, running_rx.wait_for(|n| *n == 0))
            .await
            .expect("uncounted on close")
            .expect("open");

        let mut release = tokio::net::TcpStream::connect(addr).await.expect("connect");
        release
            .write_all(
                format!("POST {RELEASE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
        tokio::time::timeout(WITHIN, stand_down_rx.wait_for(Option::is_some))
            .await
            .expect("stood down")
            .expect("open");
        drop(tx);
    }

    #[tokio::test]
    async fn a_hold_asked_after_the_step_down_is_refused_and_not_counted() {
        // A release steps down, then waits for the holds it counts: a hold
        // that arrives after the step-down must not start CMD beside the
        // successor's app.
        let (addr, tx, _stand_down_rx, mut running_rx, _stop_tx) = process_agent().await;
        tx.send_modify(|st| st.leading = false);
        let refused = crate::run::client::hold(addr).await;
        assert!(
            matches!(
                refused,
                Err(crate::run::RunError::AgentStatus { status, .. }) if status == StatusCode::CONFLICT
            ),
            "{refused:?}"
        );
        tokio::time::timeout(Duration::from_secs(5), running_rx.wait_for(|n| *n == 0))
            .await
            .expect("not counted")
            .expect("open");
        // A term that ran out (leading, but past its deadline) is refused too.
        tx.send_modify(|st| {
            st.leading = true;
            st.lead_until = Some(Instant::now());
        });
        assert!(crate::run::client::hold(addr).await.is_err());
        drop(tx);
    }

    /// Sends one request and reads the status line and what follows within
    /// `limit` ("" when the connection is closed without an answer).
    async fn request(addr: std::net::SocketAddr, path: &str, limit: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
            return String::new();
        };
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        if tcp.write_all(head.as_bytes()).await.is_err() {
            return String::new();
        }
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => String::new(),
        }
    }

    /// A flood from other pods: the probe port serves no `/v1/*`, holds at
    /// most its cap of connections (the rest are closed at once) while the
    /// loopback API serves on, and is back once the silent ones time out;
    /// leader watches and `/startz` holds are capped too.
    #[tokio::test]
    async fn a_flood_is_held_to_the_caps_and_the_agent_serves_on() {
        use super::super::listen::PROBE_LIMITS;
        let (_tx, s) = state(LeaderStatus {
            connected: true,
            observed: true,
            ..LeaderStatus::default()
        });
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (local, probe) = (bind().await.expect("bind"), bind().await.expect("bind"));
        let (local_addr, probe_addr) = (
            local.local_addr().expect("a"),
            probe.local_addr().expect("a"),
        );
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(local, probe, s, stop));
        const SHORT: Duration = Duration::from_secs(2);

        let on_probe = request(probe_addr, "/v1/leader", SHORT).await;
        assert!(on_probe.starts_with("HTTP/1.1 404"), "{on_probe}");
        assert!(
            request(probe_addr, "/leadz", SHORT)
                .await
                .contains("\"leading\":false")
        );

        // 300 silent connections: the cap's worth stay open, the rest are
        // closed at once.
        let mut flood = Vec::new();
        for _ in 0..300 {
            flood.push(
                tokio::net::TcpStream::connect(probe_addr)
                    .await
                    .expect("connect"),
            );
        }
        let mut closed = 0;
        for tcp in &mut flood {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(20), async {
                tokio::io::AsyncReadExt::read(tcp, &mut byte).await
            });
            if matches!(read.await, Ok(Ok(0) | Err(_))) {
                closed += 1;
            }
        }
        assert_eq!(closed, 300 - PROBE_LIMITS.max_connections, "closed at once");
        assert_eq!(
            request(probe_addr, "/livez", SHORT).await,
            "",
            "the cap is full"
        );
        let local = request(local_addr, "/v1/leader", SHORT).await;
        assert!(
            local.starts_with("HTTP/1.1 200"),
            "loopback serves on: {local}"
        );
        // The silent ones are cut at the head timeout; the probe port serves.
        tokio::time::sleep(PROBE_LIMITS.header_timeout + Duration::from_millis(500)).await;
        let livez = request(probe_addr, "/livez", SHORT).await;
        assert!(livez.starts_with("HTTP/1.1 200"), "{livez}");
        drop(flood);

        // Watches: the cap's worth stream, one more is refused.
        let mut watches = Vec::new();
        for _ in 0..MAX_WATCHES {
            let mut tcp = tokio::net::TcpStream::connect(local_addr)
                .await
                .expect("connect");
            let head = "GET /v1/leader/watch HTTP/1.1\r\nHost: x\r\n\r\n";
            tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes())
                .await
                .expect("w");
            let mut buf = [0u8; 64];
            let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf)
                .await
                .expect("read");
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            watches.push(tcp);
        }
        let refused = request(local_addr, "/v1/leader/watch", SHORT).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(
            refused.contains("leader watches are open already"),
            "{refused}"
        );
        drop(watches);

        // /startz: the cap's worth are held, one more is answered at once.
        let held: Vec<_> = (0..MAX_STARTZ_HOLDS)
            .map(|_| tokio::spawn(request(probe_addr, "/startz", SHORT)))
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let quick = request(probe_addr, "/startz", SHORT).await;
        assert!(quick.starts_with("HTTP/1.1 503"), "{quick}");
        assert!(started.elapsed() < STARTZ_HOLD, "answered without a hold");
        for h in held {
            assert!(h.await.expect("task").starts_with("HTTP/1.1 503"));
        }
    }

    #[test]
    fn since_is_rfc3339() {
        use std::time::UNIX_EPOCH;
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(86_400)),
            "1970-01-02T00:00:00Z"
        );
    }
}
