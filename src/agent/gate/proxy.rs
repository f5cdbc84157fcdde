//! One request through the gate: classify, check the role, forward with the
//! app's own credentials, stream the answer back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, debug, debug_span, warn};

use super::ExemptSet;
use super::classify::{Verdict, classify, is_watch, survives_a_stale_read};
use super::fence_retry;
use super::metrics::{GateMetrics, HeldOutcome, Outcome, RequestClass};
use super::upstream::{Connector, Pooled, Target};
use crate::election::LeaderStatus;

pub use super::upstream::GateBody;

/// What every request needs.
pub struct Shared {
    pub status: watch::Receiver<LeaderStatus>,
    pub exempt: ExemptSet,
    pub hold: Hold,
    pub pool: String,
    pub identity: String,
    pub target: Target,
    pub clients: Pooled,
    /// HTTP/1.1-only connections for connection upgrades.
    pub upgrade_connector: Connector,
    pub metrics: GateMetrics,
    /// One permit per byte of write body the gate may hold at once
    /// ([`fence_retry::BODY_BUDGET`]).
    pub bodies: Arc<Semaphore>,
    /// Gated writes sent and not yet answered ([`InFlight`]).
    pub in_flight: InFlight,
}

/// Counts gated writes sent to the API server and not yet answered. The
/// election releases the Lease only once none is left (bounded by the
/// Lease's expiry): a write the API server admitted before a voluntary
/// release is then stored before the successor's first write, where cutting
/// it at the release left it to land after (the client's answer was cut,
/// the API server's work was not).
#[derive(Clone)]
pub struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    /// A counter at zero and the receiver the election waits on.
    pub fn new() -> (Self, watch::Receiver<usize>) {
        let (tx, rx) = watch::channel(0);
        (Self(Arc::new(tx)), rx)
    }

    /// Counts one write from now on; enter before the last look at the
    /// role, so a release that saw zero is seen by the write as not leading.
    fn enter(&self, lease_duration: Duration) -> InFlightWrite {
        self.0.send_modify(|n| *n += 1);
        InFlightWrite {
            counter: self.0.clone(),
            sent: false,
            mattered_for: lease_duration,
        }
    }
}

/// One counted write. Dropped before it was sent, or once answered, it
/// stops counting at once. Dropped while sent and unanswered (the app went
/// away mid-request), the API server may still be at work on it: it counts
/// on until a Lease duration has passed, the longest any write of this term
/// can matter.
struct InFlightWrite {
    counter: Arc<watch::Sender<usize>>,
    sent: bool,
    mattered_for: Duration,
}

impl InFlightWrite {
    fn answered(mut self) {
        self.sent = false;
    }
}

impl Drop for InFlightWrite {
    fn drop(&mut self) {
        let counter = self.counter.clone();
        let leave = move || counter.send_modify(|n| *n = n.saturating_sub(1));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if self.sent => {
                let until = Instant::now() + self.mattered_for;
                runtime.spawn(async move {
                    sleep_until(until).await;
                    leave();
                });
            }
            _ => leave(),
        }
    }
}

/// Writes that may wait for leadership at once. Each holds a request (for
/// HTTP/1.1 a connection) and a task; beyond this a busy standby refuses at
/// once rather than pile them up.
pub const MAX_HELD_WRITES: usize = 64;

/// How a standby's write waits for this pod to lead (`--gate-hold`).
pub struct Hold {
    /// The longest wait; zero refuses at once.
    pub max: Duration,
    /// One permit per write that may wait.
    pub slots: Arc<Semaphore>,
    /// Writes waiting now (a metric).
    pub waiting: Gauge,
}

/// Counts one waiting write for as long as it lives.
struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Hold {
    pub fn new(max: Duration) -> Self {
        Self::with_slots(max, MAX_HELD_WRITES)
    }

    pub fn with_slots(max: Duration, slots: usize) -> Self {
        Self {
            max,
            slots: Arc::new(Semaphore::new(slots)),
            waiting: Gauge::default(),
        }
    }
}

/// Whether a write may start: `Ok` with the status of the term it starts
/// in, `Err` with the status the refusal names. A standby's write waits up
/// to `hold.max` and is let through the moment the pod leads, so it starts
/// inside the term like any leader's write; the request body is not touched
/// meanwhile. The second value says how a hold ended (`None`: not held).
async fn wait_to_lead(
    hold: &Hold,
    mut status: watch::Receiver<LeaderStatus>,
) -> (Result<LeaderStatus, LeaderStatus>, Option<HeldOutcome>) {
    let now = status.borrow_and_update().clone();
    if now.leading_at(Instant::now()) {
        return (Ok(now), None);
    }
    if hold.max.is_zero() {
        return (Err(now), None);
    }
    let Ok(_slot) = hold.slots.clone().try_acquire_owned() else {
        return (Err(now), Some(HeldOutcome::Full));
    };
    let _waiting = Waiting::new(&hold.waiting);
    let until = Instant::now() + hold.max;
    loop {
        tokio::select! {
            changed = status.changed() => {
                // The election ended (the agent is stopping): no term to wait for.
                if changed.is_err() {
                    break;
                }
                let current = status.borrow_and_update().clone();
                if current.leading_at(Instant::now()) {
                    return (Ok(current), Some(HeldOutcome::Passed));
                }
            }
            () = sleep_until(until) => break,
        }
    }
    let last = status.borrow().clone();
    (Err(last), Some(HeldOutcome::Refused))
}

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1), plus
/// `Host`, which the client derives from the upstream address.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Serves one request; never fails (errors become Status responses).
pub async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<GateBody>, Infallible> {
    let method = req.method().clone();
    let upgrade = is_upgrade(&req);
    let span = debug_span!("gate", verb = %method, path = %req.uri().path());
    let verdict = match classify(&method, req.uri().path(), req.uri().query(), &shared.exempt) {
        Ok(verdict) => verdict,
        Err(bad) => return Ok(refuse_unparseable(&shared, &method, upgrade, &bad, &span)),
    };
    let class = if upgrade {
        RequestClass::Upgrade
    } else if verdict == Verdict::Read {
        RequestClass::Read
    } else {
        RequestClass::Write
    };

    // The role is decided once, before anything is forwarded: a write that
    // starts in the term may finish (bounded by `Term`), none starts after
    // it. A standby's write may first wait for the term (`--gate-hold`).
    let method = req.method().clone();
    let (term, held) = if verdict == Verdict::Write {
        match gate_write(&shared, class, &method, &span).await {
            Ok((term, held)) => (Some(term), held),
            Err(refused) => return Ok(refused),
        }
    } else {
        (None, false)
    };

    if upgrade {
        if held {
            shared.metrics.held(HeldOutcome::Passed);
        }
        return Ok(tunnel(shared, req, term, class).instrument(span).await);
    }
    let forwarded = match upstream_request(&shared.target, &mut req, false) {
        Ok(forwarded) => forwarded,
        Err(err) => {
            let why = format!("the request cannot be forwarded: {err}");
            return Ok(invalid(
                &shared,
                class,
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &why,
            ));
        }
    };
    // Watches go over the multiplexed HTTP/2 connection whatever the app
    // speaks: on one connection a read from the API server carries events of
    // many watches, where one HTTP/1.1 connection per watch costs a read, a
    // wake-up and a write per event. Other HTTP/1.1 requests stay on pooled
    // HTTP/1.1 connections, where a short request costs less.
    let h2 = req.version() == Version::HTTP_2
        || is_watch(req.method(), req.uri().path(), req.uri().query());
    let Some(term) = term else {
        let request = forwarded.map(|()| Either::Left(req.into_body()));
        let client = shared.clients.pick(h2);
        let sent = async { Ok(client.request(request).await?.map(Either::Left)) };
        return Ok(forward(&shared, sent, None, class).instrument(span).await);
    };
    let write = GatedWrite {
        term,
        held,
        h2,
        class,
    };
    Ok(forward_write(&shared, write, forwarded, req.into_body())
        .instrument(span)
        .await)
}

/// A write the gate lets go, and how it got there.
struct GatedWrite {
    term: Term,
    /// It waited for this pod to lead (`--gate-hold`).
    held: bool,
    h2: bool,
    class: RequestClass,
}

/// A gated write. One of at most [`fence_retry::MAX_RETRIED_BODY`] bytes is
/// read whole first, within the gate's body budget, so a refusal by the
/// server-side fencing policy while this pod leads can be sent again
/// (`fence_retry`); a larger one is streamed and sent once.
async fn forward_write(
    shared: &Shared,
    write: GatedWrite,
    head: Request<()>,
    body: Incoming,
) -> Response<GateBody> {
    let declared = head
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > fence_retry::MAX_RETRIED_BODY) {
        return stream_write(shared, write, head, body).await;
    }
    let GatedWrite {
        term,
        held,
        h2,
        class,
    } = write;
    // Without Content-Length the body may be as large as the gate reads.
    let want = declared.unwrap_or(fence_retry::MAX_RETRIED_BODY);
    let Ok(budget) = shared
        .bodies
        .clone()
        .try_acquire_many_owned(u32::try_from(want).unwrap_or(u32::MAX))
    else {
        fence_retry::drain(body, fence_retry::MAX_RETRIED_BODY).await;
        return refuse_busy(shared, class);
    };
    let body = match fence_retry::read_body(body, fence_retry::MAX_RETRIED_BODY).await {
        Ok(body) => body,
        Err(err) => {
            return invalid(
                shared,
                class,
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &err,
            );
        }
    };
    // The body may have taken a while: the write leaves only in a term.
    let Ok(counted) = leave_in_term(shared) else {
        let now = shared.status.borrow().clone();
        return refuse_counted(shared, class, head.method(), &now);
    };
    if held {
        // Made while this pod was a standby, from what the app read then.
        if !survives_a_stale_read(head.method(), &body) {
            shared.metrics.held(HeldOutcome::Blind);
            shared.metrics.count(class, Outcome::Refused);
            debug!("refused a held write with no resourceVersion precondition");
            return refuse_blind_held(shared);
        }
        shared.metrics.held(HeldOutcome::Passed);
    }
    let head = fence_retry::Head::new(head);
    let sent = async {
        // The body is held until the API server's answer (retries included).
        let _budget = budget;
        let client = shared.clients.pick(h2);
        fence_retry::send(client, &head, body, &shared.status, &shared.metrics).await
    };
    forward(shared, sent, Some((term, counted)), class).await
}

/// A write about to leave, counted in flight, or `Err` when this pod no
/// longer leads (the count is entered before the look, see [`InFlight`]).
fn leave_in_term(shared: &Shared) -> Result<InFlightWrite, ()> {
    let lease_duration = shared.status.borrow().timings.lease_duration();
    let counted = shared.in_flight.enter(lease_duration);
    if shared.status.borrow().leading_at(Instant::now()) {
        Ok(counted)
    } else {
        Err(())
    }
}

/// A gated write over [`fence_retry::MAX_RETRIED_BODY`]: streamed as it
/// comes, without buffering, and sent once (a fencing refusal in the first
/// moments of a term reaches the app). A held one is refused unless it is a
/// create: whether it carries a precondition cannot be told without reading
/// it whole.
async fn stream_write(
    shared: &Shared,
    write: GatedWrite,
    head: Request<()>,
    body: Incoming,
) -> Response<GateBody> {
    if write.held {
        if head.method() != Method::POST {
            shared.metrics.held(HeldOutcome::Blind);
            shared.metrics.count(write.class, Outcome::Refused);
            return status_response(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "zen-lead gate (pool {:?}): this write waited while this replica ({}) was a \
                     standby, and over {} KiB the gate does not read it whole to check for a \
                     resourceVersion precondition; this replica leads now: read again and retry",
                    shared.pool,
                    shared.identity,
                    fence_retry::MAX_RETRIED_BODY >> 10
                ),
                None,
            );
        }
        shared.metrics.held(HeldOutcome::Passed);
    }
    let Ok(counted) = leave_in_term(shared) else {
        let now = shared.status.borrow().clone();
        return refuse_counted(shared, write.class, head.method(), &now);
    };
    let request = head.map(|()| Either::Left(body));
    let client = shared.clients.pick(write.h2);
    let sent = async { Ok(client.request(request).await?.map(Either::Left)) };
    forward(shared, sent, Some((write.term, counted)), write.class).await
}

/// A write refused at once: the budget for buffered write bodies is spent.
/// Nothing was sent, so the client may send it again.
fn refuse_busy(shared: &Shared, class: RequestClass) -> Response<GateBody> {
    shared.metrics.count(class, Outcome::Busy);
    debug!("refused a write: the gate's budget for buffered write bodies is spent");
    status_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        &format!(
            "zen-lead gate (pool {:?}): {} MiB of write bodies are buffered already (a write of \
             up to {} KiB is read whole, so it can be sent again while the API server catches up \
             with this replica's term); nothing was sent, try again",
            shared.pool,
            fence_retry::BODY_BUDGET >> 20,
            fence_retry::MAX_RETRIED_BODY >> 10
        ),
        Some(1),
    )
}

/// A request the gate cannot forward as it is, answered and counted
/// `invalid`.
fn invalid(
    shared: &Shared,
    class: RequestClass,
    code: StatusCode,
    reason: &str,
    why: &str,
) -> Response<GateBody> {
    shared.metrics.count(class, Outcome::Invalid);
    status_response(code, reason, &format!("zen-lead gate: {why}"), None)
}

/// A write refused because this replica does not lead, counted.
fn refuse_counted(
    shared: &Shared,
    class: RequestClass,
    method: &Method,
    status: &LeaderStatus,
) -> Response<GateBody> {
    shared.metrics.count(class, Outcome::Refused);
    shared.metrics.refused_writes.inc();
    refuse_standby(shared, method, status)
}

/// Answers a request whose path cannot be classified (400), counted by
/// what its method and headers suggest.
fn refuse_unparseable(
    shared: &Shared,
    method: &Method,
    upgrade: bool,
    bad: &super::classify::BadPath,
    span: &tracing::Span,
) -> Response<GateBody> {
    let class = if upgrade {
        RequestClass::Upgrade
    } else if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        RequestClass::Read
    } else {
        RequestClass::Write
    };
    span.in_scope(|| debug!(reason = %bad, "refused an unparseable request"));
    invalid(
        shared,
        class,
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &bad.to_string(),
    )
}

/// Lets a write start only inside a term (a standby's may first wait for
/// one): `Ok` with the term that bounds it, `Err` with the refusal.
async fn gate_write(
    shared: &Arc<Shared>,
    class: RequestClass,
    method: &Method,
    span: &tracing::Span,
) -> Result<(Term, bool), Response<GateBody>> {
    let waited = Instant::now();
    let (decision, held) = wait_to_lead(&shared.hold, shared.status.clone())
        .instrument(span.clone())
        .await;
    // A held write that passes is counted once its body is seen (it may
    // still be refused as blind).
    if let Some(held) = held.filter(|h| *h != HeldOutcome::Passed) {
        shared.metrics.held(held);
    }
    match decision {
        Ok(status) => {
            if held.is_some() {
                span.in_scope(|| {
                    debug!(
                        held_ms = waited.elapsed().as_secs_f64() * 1e3,
                        "a held write passes: this pod leads now"
                    );
                });
            }
            Ok((
                Term::new(&status, shared.status.clone()),
                held == Some(HeldOutcome::Passed),
            ))
        }
        Err(status) => {
            span.in_scope(|| debug!(?held, "refused a write: this replica is a standby"));
            Err(refuse_counted(shared, class, method, &status))
        }
    }
}

async fn forward(
    shared: &Shared,
    sent: impl std::future::Future<
        Output = Result<Response<GateBody>, hyper_util::client::legacy::Error>,
    >,
    term: Option<(Term, InFlightWrite)>,
    class: RequestClass,
) -> Response<GateBody> {
    let start = Instant::now();
    let result = match term {
        None => sent.await,
        Some((term, mut counted)) => {
            counted.sent = true;
            let result = tokio::select! {
                result = sent => Ok(result),
                why = term.ended() => Err(why),
            };
            // Answered, or past the term's bound (the rule: nobody else
            // writes before it), or the Lease moved on: it counts no more.
            counted.answered();
            match result {
                Ok(result) => result,
                Err(why) => {
                    shared.metrics.count(class, Outcome::Cut);
                    warn!(
                        why,
                        "cut a write still in flight at the end of this replica's term"
                    );
                    return status_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "Timeout",
                        &format!(
                            "zen-lead gate (pool {}): this replica's term ended ({why}) while the \
                             write was in flight; its outcome is unknown",
                            shared.pool
                        ),
                        None,
                    );
                }
            }
        }
    };
    match result {
        Ok(response) => {
            shared.metrics.count(class, Outcome::Passed);
            debug!(
                status = response.status().as_u16(),
                elapsed_ms = start.elapsed().as_secs_f64() * 1e3,
                "forwarded"
            );
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            Response::from_parts(parts, body)
        }
        Err(err) => {
            shared.metrics.count(class, Outcome::UpstreamError);
            let chain = error_chain(&err);
            warn!(error = %chain, upstream = %shared.target.base, "the API server could not be reached");
            // Nothing was sent when connecting failed: safe to retry.
            let retry = err.is_connect().then_some(1);
            status_response(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                &format!(
                    "zen-lead gate: the API server {} could not be reached: {chain}",
                    shared.target.base
                ),
                retry,
            )
        }
    }
}

/// exec, attach, port-forward (SPDY or WebSocket) and any other HTTP/1.1
/// upgrade: a fresh HTTP/1.1 connection to the API server, the handshake
/// relayed, then bytes copied both ways until either side closes (or, for a
/// gated upgrade, the term ends).
async fn tunnel(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    term: Option<Term>,
    class: RequestClass,
) -> Response<GateBody> {
    let client_side = hyper::upgrade::on(&mut req);
    let forwarded = match upstream_request(&shared.target, &mut req, true) {
        Ok(forwarded) => origin_form(forwarded).map(|()| req.into_body()),
        Err(err) => {
            let why = format!("the request cannot be forwarded: {err}");
            return invalid(&shared, class, StatusCode::BAD_REQUEST, "BadRequest", &why);
        }
    };
    let mut response = match send_upgrade(&shared, class, forwarded).await {
        Ok(response) => response,
        Err(failed) => return failed,
    };
    shared.metrics.count(class, Outcome::Passed);
    debug!(status = response.status().as_u16(), "upgrade answered");
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused by the API server (401, 403, 400...): its answer as is.
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        return Response::from_parts(parts, Either::Left(body));
    }
    let upstream_side = hyper::upgrade::on(&mut response);
    let mut reply = Response::new(Either::Right(Full::new(Bytes::new())));
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *reply.headers_mut() = response.headers().clone();
    let pool = shared.pool.clone();
    tokio::spawn(splice(client_side, upstream_side, term, pool).in_current_span());
    reply
}

/// Sends the upgrade request on a fresh HTTP/1.1 connection to the API
/// server; `Err` is the 502 to answer when that fails.
async fn send_upgrade(
    shared: &Shared,
    class: RequestClass,
    forwarded: Request<Incoming>,
) -> Result<Response<Incoming>, Response<GateBody>> {
    let stream = match shared.upgrade_connector.connect(&shared.target.base).await {
        Ok(stream) => stream,
        Err(err) => return Err(upgrade_failed(shared, class, err.to_string(), Some(1))),
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(err) => return Err(upgrade_failed(shared, class, error_chain(&err), Some(1))),
        };
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            debug!(error = %err, "upstream upgrade connection ended");
        }
    });
    match sender.send_request(forwarded).await {
        Ok(response) => Ok(response),
        Err(err) => Err(upgrade_failed(shared, class, error_chain(&err), None)),
    }
}

/// The 502 for an upgrade the API server could not take (`retry`: nothing
/// was sent, so the client may retry).
fn upgrade_failed(
    shared: &Shared,
    class: RequestClass,
    what: String,
    retry: Option<u64>,
) -> Response<GateBody> {
    shared.metrics.count(class, Outcome::UpstreamError);
    warn!(error = %what, upstream = %shared.target.base, "connection upgrade to the API server failed");
    status_response(
        StatusCode::BAD_GATEWAY,
        "InternalError",
        &format!(
            "zen-lead gate: the API server {} could not be reached: {what}",
            shared.target.base
        ),
        retry,
    )
}

/// Copies bytes both ways between the upgraded client and API server
/// connections until either side closes or, for a gated upgrade, the term
/// ends.
async fn splice(
    client_side: hyper::upgrade::OnUpgrade,
    upstream_side: hyper::upgrade::OnUpgrade,
    term: Option<Term>,
    pool: String,
) {
    let (client_io, upstream_io) = match tokio::join!(client_side, upstream_side) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(err), _) | (_, Err(err)) => {
            debug!(error = %err, "an upgraded connection could not be taken over");
            return;
        }
    };
    let mut client_io = TokioIo::new(client_io);
    let mut upstream_io = TokioIo::new(upstream_io);
    let copy = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io);
    match term {
        None => {
            let _ = copy.await;
        }
        Some(term) => {
            tokio::select! {
                _ = copy => {}
                why = term.ended() => {
                    warn!(why, pool = %pool, "closed an exec/attach/port-forward stream at the end of this replica's term");
                }
            }
        }
    }
    debug!("upgraded connection closed");
}

/// The bound on a write that started while this pod led. Nobody else can
/// take the Lease before `leaseDuration - renewDeadline` after our term's
/// end (the election's rule), so a write may still be in flight until then;
/// after that the gate stops waiting for it. A voluntary release (SIGTERM,
/// hand-off, stand-down) ends the term early, but the election clears the
/// Lease only once the writes in flight are answered ([`InFlight`]): they
/// run on while the Lease still names us, and are cut once it names
/// someone else or no one (released, or taken from us).
struct Term {
    token: Option<i32>,
    holder: Option<String>,
    until: Instant,
    margin: Duration,
    status: watch::Receiver<LeaderStatus>,
}

impl Term {
    fn new(status: &LeaderStatus, rx: watch::Receiver<LeaderStatus>) -> Self {
        Self {
            token: status.token,
            holder: status.holder.clone(),
            until: status.lead_until.unwrap_or_else(Instant::now),
            margin: margin(status),
            status: rx,
        }
    }

    /// Resolves when the write must stop, with the reason.
    async fn ended(mut self) -> &'static str {
        let mut watching = true;
        loop {
            tokio::select! {
                () = sleep_until(self.until + self.margin) => return "renew deadline passed",
                changed = self.status.changed(), if watching => {
                    if changed.is_err() {
                        // The election stopped (the agent is exiting); the
                        // deadline still applies.
                        watching = false;
                        continue;
                    }
                    let status = self.status.borrow_and_update().clone();
                    if status.leading && status.token == self.token {
                        // A renewal moves the end later; a shorter renew
                        // deadline applied to the running term moves it
                        // earlier. Either way the latest word counts.
                        if let Some(until) = status.lead_until {
                            self.until = until;
                        }
                        self.margin = margin(&status);
                    } else if (status.holder != self.holder || status.token != self.token)
                        && Instant::now() < self.until
                    {
                        return "the Lease moved on";
                    }
                }
            }
        }
    }
}

/// How long after the end of our term nobody else can hold the Lease yet.
fn margin(status: &LeaderStatus) -> Duration {
    status
        .timings
        .lease_duration()
        .saturating_sub(status.timings.renew_deadline())
}

/// A standby's write, refused (503). Only a create carries `Retry-After`:
/// clients resend the same body after it (client-go, kube-rs), and a
/// create is the one write whose body the gate does not read here that the
/// API server checks against a stale read ([`survives_a_stale_read`]). A
/// blind update resent once this pod leads could undo the previous
/// leader's last writes; without the header the app's own error handling
/// (a controller's requeue) reads again first.
fn refuse_standby(shared: &Shared, method: &Method, status: &LeaderStatus) -> Response<GateBody> {
    let leader = status.holder.as_deref().unwrap_or("none");
    status_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        &format!(
            "zen-lead pool {:?}: this replica ({}) is a standby; writes pass only while it leads \
             (leader: {leader})",
            shared.pool, shared.identity
        ),
        (*method == Method::POST).then_some(1),
    )
}

/// What the 409 for a held blind write says about it (the overlap checker
/// tells these refusals from the API server's own conflicts by it).
pub const HELD_BLIND_MARKER: &str = "carries no resourceVersion precondition";

/// A write held while this pod was a standby, refused once it leads because
/// the API server could not tell it rests on a stale read (409, as a failed
/// resourceVersion precondition is: controllers read again and retry).
fn refuse_blind_held(shared: &Shared) -> Response<GateBody> {
    status_response(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "zen-lead pool {:?}: this write waited while this replica ({}) was a standby and \
             {HELD_BLIND_MARKER}; this replica leads now, but what the write was based on may \
             have changed since: read again and retry",
            shared.pool, shared.identity
        ),
        None,
    )
}

/// A `metav1.Status` answer, as the API server itself would write one, so
/// client libraries parse and (with `Retry-After`) retry it.
pub fn status_response(
    code: StatusCode,
    reason: &str,
    message: &str,
    retry_after: Option<u64>,
) -> Response<GateBody> {
    let mut body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(seconds) = retry_after {
        body["details"] = serde_json::json!({ "retryAfterSeconds": seconds });
    }
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// An HTTP/1.1 request asking to switch protocols (HTTP/2 has no such
/// mechanism; Kubernetes does not support extended CONNECT).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Rewrites `req`'s head for the API server (same method, path, query and
/// headers, minus hop-by-hop ones) and returns it with a unit body; the
/// caller moves the streaming body across.
fn upstream_request(
    target: &Target,
    req: &mut Request<Incoming>,
    keep_upgrade: bool,
) -> Result<Request<()>, hyper::http::Error> {
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let prefix = target.base.path().trim_end_matches('/');
    let mut builder = Uri::builder().scheme("https");
    if let Some(authority) = target.base.authority() {
        builder = builder.authority(authority.clone());
    }
    let uri = if prefix.is_empty() {
        builder.path_and_query(path_and_query)
    } else {
        builder.path_and_query(format!("{prefix}{path_and_query}"))
    }
    .build()?;
    let mut headers = std::mem::take(req.headers_mut());
    strip_hop_by_hop(&mut headers, keep_upgrade);
    headers.remove(header::HOST);
    let mut out = Request::new(());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    Ok(out)
}

/// A bare HTTP/1.1 connection (no pooled client) sends the target as
/// given and adds no `Host`: use origin form with an explicit `Host`.
fn origin_form(mut req: Request<()>) -> Request<()> {
    if let Some(authority) = req.uri().authority().cloned()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    *req.uri_mut() = path;
    req
}

/// Removes hop-by-hop headers and those named in `Connection`; keeps
/// `Connection: Upgrade` and `Upgrade` when relaying an upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && *name == header::CONNECTION {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped_and_credentials_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer app"),
        );
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let mut plain = headers.clone();
        strip_hop_by_hop(&mut plain, false);
        let names: Vec<&str> = plain.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["authorization", "accept"]);
        assert_eq!(plain[header::AUTHORIZATION], "Bearer app");

        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::UPGRADE], "SPDY/3.1");
        assert_eq!(headers[header::CONNECTION], "Upgrade");
        assert!(!headers.contains_key("x-hop"));
    }

    fn leading(until: Instant, token: i32) -> LeaderStatus {
        LeaderStatus {
            holder: Some("me".to_owned()),
            leading: true,
            lead_until: Some(until),
            token: Some(token),
            // margin = lease - renew deadline = 300 ms
            timings: crate::election::Timings::new(
                Duration::from_millis(900),
                Duration::from_millis(600),
                Duration::from_millis(100),
                crate::election::TimingNames::LOCK_FLAGS,
            )
            .expect("timings"),
            ..LeaderStatus::default()
        }
    }

    /// A write in flight may outlive its term by leaseDuration -
    /// renewDeadline, never more, and renewals extend it.
    #[tokio::test]
    async fn in_flight_writes_end_after_the_term_plus_margin() {
        let start = Instant::now();
        let status = leading(start + Duration::from_millis(100), 1);
        let (tx, rx) = watch::channel(status.clone());
        let term = Term::new(&status, rx);
        let renew = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(leading(start + Duration::from_millis(400), 1));
        };
        let (why, ()) = tokio::join!(term.ended(), renew);
        let elapsed = start.elapsed();
        assert_eq!(why, "renew deadline passed");
        // Extended to 400 ms by the renewal, plus the 300 ms margin.
        assert!(
            elapsed >= Duration::from_millis(700),
            "ended after {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(10), "ended after {elapsed:?}");
    }

    /// A voluntary release ends the term early, but a write in flight runs
    /// on while the Lease still names us (the election clears it only once
    /// the write is answered), and is cut once the Lease names no one.
    #[tokio::test]
    async fn a_release_cuts_in_flight_writes_only_once_the_lease_moves_on() {
        let start = Instant::now();
        let status = leading(start + Duration::from_secs(30), 4);
        let (tx, rx) = watch::channel(status.clone());
        let mut ended = Box::pin(Term::new(&status, rx).ended());
        let _ = tx.send(LeaderStatus {
            leading: false,
            lead_until: None,
            ..status.clone()
        });
        let stepping_down = tokio::time::timeout(Duration::from_millis(200), ended.as_mut()).await;
        assert!(stepping_down.is_err(), "cut while the Lease named us");
        let _ = tx.send(LeaderStatus {
            holder: None,
            leading: false,
            lead_until: None,
            ..status.clone()
        });
        let why = tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .expect("cut once the Lease was released");
        assert_eq!(why, "the Lease moved on");
    }

    /// A write counts in flight from before the last look at the role
    /// until answered; one dropped unanswered after it was sent counts on
    /// (the API server may still store it) for a Lease duration.
    #[tokio::test]
    async fn in_flight_writes_count_until_answered() {
        let (counter, mut seen) = InFlight::new();
        let lease = leading(Instant::now(), 1).timings.lease_duration();
        let answered = counter.enter(lease);
        let unsent = counter.enter(lease);
        assert_eq!(*seen.borrow(), 2);
        drop(unsent);
        assert_eq!(*seen.borrow(), 1);
        answered.answered();
        assert_eq!(*seen.borrow(), 0);

        let mut dropped = counter.enter(lease);
        dropped.sent = true;
        let start = Instant::now();
        drop(dropped);
        assert_eq!(
            *seen.borrow_and_update(),
            1,
            "counts on once dropped mid-flight"
        );
        tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|n| *n == 0))
            .await
            .expect("stops counting after a Lease duration")
            .expect("counter alive");
        // The Lease duration of `leading`'s timings.
        assert!(start.elapsed() >= Duration::from_millis(900));
    }

    fn standby(holder: &str) -> LeaderStatus {
        LeaderStatus {
            holder: Some(holder.to_owned()),
            ..LeaderStatus::default()
        }
    }

    /// A standby's write that is waiting when the pod starts to lead is let
    /// through at once, with the new term's status (what `Term` bounds).
    #[tokio::test]
    async fn a_held_write_passes_the_moment_the_pod_leads() {
        let hold = Hold::new(Duration::from_secs(30));
        let (tx, rx) = watch::channel(standby("other"));
        let start = Instant::now();
        let lead = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // A change that is still not leadership keeps it waiting.
            let _ = tx.send(standby("nobody"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(leading(Instant::now() + Duration::from_secs(5), 7));
        };
        let ((decision, held), ()) = tokio::join!(wait_to_lead(&hold, rx), lead);
        let elapsed = start.elapsed();
        let status = decision.expect("passes once the pod leads");
        assert_eq!(status.token, Some(7));
        assert_eq!(held, Some(HeldOutcome::Passed));
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        // Woken by the change, not by the 30 s hold running out.
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        // The slot is given back.
        assert_eq!(hold.slots.available_permits(), MAX_HELD_WRITES);
    }

    #[tokio::test]
    async fn a_hold_that_ends_without_leadership_refuses() {
        let hold = Hold::new(Duration::from_millis(200));
        let (tx, rx) = watch::channel(standby("other"));
        let start = Instant::now();
        let (decision, held) = wait_to_lead(&hold, rx).await;
        let elapsed = start.elapsed();
        let status = decision.expect_err("refused");
        assert_eq!(status.holder.as_deref(), Some("other"));
        assert_eq!(held, Some(HeldOutcome::Refused));
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        drop(tx);
    }

    /// A term whose deadline has passed (a paused leader) is no leadership:
    /// such a status does not release a held write.
    #[tokio::test]
    async fn an_expired_term_does_not_release_a_held_write() {
        let hold = Hold::new(Duration::from_millis(200));
        let past = Instant::now();
        let (tx, rx) = watch::channel(standby("other"));
        let send = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(leading(past, 3));
        };
        let ((decision, held), ()) = tokio::join!(wait_to_lead(&hold, rx), send);
        assert!(decision.is_err());
        assert_eq!(held, Some(HeldOutcome::Refused));
    }

    #[tokio::test]
    async fn hold_zero_refuses_at_once_and_a_leader_is_not_held() {
        let hold = Hold::new(Duration::ZERO);
        let (tx, rx) = watch::channel(standby("other"));
        let start = Instant::now();
        let (decision, held) = wait_to_lead(&hold, rx.clone()).await;
        assert!(decision.is_err());
        assert_eq!(held, None, "not held: refused at once");
        assert!(start.elapsed() < Duration::from_secs(1));

        let _ = tx.send(leading(Instant::now() + Duration::from_secs(5), 2));
        let (decision, held) = wait_to_lead(&Hold::new(Duration::from_secs(30)), rx).await;
        assert_eq!(decision.expect("a leader's write").token, Some(2));
        assert_eq!(held, None);
    }

    /// Beyond the cap a write is refused at once; when a held one ends its
    /// slot is free again.
    #[tokio::test]
    async fn held_writes_are_capped() {
        let hold = Hold::with_slots(Duration::from_secs(30), 2);
        let (tx, rx) = watch::channel(standby("other"));
        let first = wait_to_lead(&hold, rx.clone());
        let second = wait_to_lead(&hold, rx.clone());
        let third = async {
            assert_eq!(hold.waiting.get(), 2);
            // The first two hold their slots by now (they ran until their
            // first wait before this one is polled: join! polls in order).
            let start = Instant::now();
            let (decision, held) = wait_to_lead(&hold, rx.clone()).await;
            assert!(decision.is_err());
            assert_eq!(held, Some(HeldOutcome::Full));
            assert!(start.elapsed() < Duration::from_secs(1));
            let _ = tx.send(leading(Instant::now() + Duration::from_secs(5), 9));
        };
        let ((a, held_a), (b, held_b), ()) = tokio::join!(first, second, third);
        assert_eq!(a.expect("first").token, Some(9));
        assert_eq!(b.expect("second").token, Some(9));
        assert_eq!(
            (held_a, held_b),
            (Some(HeldOutcome::Passed), Some(HeldOutcome::Passed))
        );
        assert_eq!(hold.slots.available_permits(), 2);
        assert_eq!(hold.waiting.get(), 0);
    }

    #[test]
    fn status_body_is_a_kubernetes_status() {
        let response = status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "standby",
            Some(1),
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let Either::Right(body) = response.into_body() else {
            panic!("own body expected");
        };
        let bytes = futures::executor::block_on(http_body_util::BodyExt::collect(body))
            .expect("body")
            .to_bytes();
        let status: k8s_openapi::apimachinery::pkg::apis::meta::v1::Status =
            serde_json::from_slice(&bytes).expect("a metav1.Status");
        assert_eq!(status.code, Some(503));
        assert_eq!(status.reason.as_deref(), Some("ServiceUnavailable"));
        assert_eq!(status.status.as_deref(), Some("Failure"));
        assert_eq!(status.details.and_then(|d| d.retry_after_seconds), Some(1));
    }
}
