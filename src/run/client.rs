//! The few calls `run` and `probe` make to their pod's agent, over plain
//! HTTP/1.1 on loopback (no connection pool, no TLS: one request per
//! connection keeps this small).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::RunError;
use super::machine::View;
use crate::contract::{APP_HOLD_PATH, ReleaseReason};
use crate::election::clock;

/// Largest `/v1/leader` answer read (the agent sends a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// The agent's `LeaderView`, the fields `run` and `probe` use; unknown
/// fields are ignored so older `run`s work with newer agents.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    #[serde(default)]
    pub lease: String,
    #[serde(default)]
    pub identity: String,
    pub leading: bool,
    #[serde(default)]
    pub fencing_token: Option<i64>,
    /// Start of the term, RFC 3339.
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub lead_until_monotonic_ns: Option<u64>,
    /// Missing (an agent without `process` support): no grace at all.
    #[serde(default)]
    pub stop_grace_ms: u64,
    #[serde(default)]
    pub duplicate_of: Option<String>,
}

impl AgentView {
    /// Parses one event's or answer's JSON.
    pub fn parse(addr: SocketAddr, json: &[u8]) -> Result<Self, RunError> {
        serde_json::from_slice(json).map_err(|source| RunError::AgentJson { addr, source })
    }

    /// The machine's view: the deadline on this process's clock. The agent's
    /// CLOCK_MONOTONIC is ours (same kernel, same pod).
    pub fn to_view(&self) -> View {
        View {
            pool: self.lease.clone(),
            identity: self.identity.clone(),
            leading: self.leading,
            token: self.fencing_token,
            deadline: self
                .lead_until_monotonic_ns
                .map(|ns| clock::instant_from_mono_ns(u128::from(ns))),
            grace: Duration::from_millis(self.stop_grace_ms),
            duplicate_of: self.duplicate_of.clone(),
        }
    }
}

async fn request(
    addr: SocketAddr,
    method: Method,
    path: &'static str,
    accept: &'static str,
) -> Result<Response<Incoming>, RunError> {
    let http = |source| RunError::AgentHttp { addr, source };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| RunError::AgentConnect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // Ends with the response body (or when the agent goes away).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(ACCEPT, accept)
        .body(Empty::new())
        .map_err(|_| RunError::AgentRequest { addr, path })?;
    let response = sender.send_request(req).await.map_err(http)?;
    if !response.status().is_success() {
        return Err(RunError::AgentStatus {
            addr,
            path,
            status: response.status(),
        });
    }
    Ok(response)
}

/// Opens `/v1/leader/watch`; the body is the event stream.
pub async fn watch(addr: SocketAddr) -> Result<Incoming, RunError> {
    Ok(
        request(addr, Method::GET, "/v1/leader/watch", "text/event-stream")
            .await?
            .into_body(),
    )
}

/// `GET /v1/leader`.
pub async fn leader(addr: SocketAddr) -> Result<AgentView, RunError> {
    let body = request(addr, Method::GET, "/v1/leader", "application/json")
        .await?
        .into_body();
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| RunError::AgentBody { addr })?
        .to_bytes();
    AgentView::parse(addr, &bytes)
}

/// How long `run` waits for the agent to count a hold before it gives up
/// this attempt (and CMD keeps waiting; see `machine`). An agent without
/// holds never answers, but `run` is copied into the pod from the agent's
/// own image, so the two are one version.
const HOLD_TIMEOUT: Duration = Duration::from_millis(500);

/// `POST /v1/app/hold`, kept open while CMD runs: a voluntary release by the
/// agent waits until it closes (dropping the stream closes it; so does this
/// process dying). `Expect: 100-continue` makes the agent confirm it counted
/// the hold before CMD starts.
pub async fn hold(addr: SocketAddr) -> Result<TcpStream, RunError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let connect = |source| RunError::AgentConnect { addr, source };
    let mut stream = TcpStream::connect(addr).await.map_err(connect)?;
    let head = format!(
        "POST {APP_HOLD_PATH} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.map_err(connect)?;
    let mut line = String::new();
    let mut reader = BufReader::new(&mut stream);
    match tokio::time::timeout(HOLD_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) if line.contains(" 100 ") => {
            // The blank line after the interim answer.
            let mut blank = String::new();
            let _ = tokio::time::timeout(HOLD_TIMEOUT, reader.read_line(&mut blank)).await;
            Ok(stream)
        }
        Ok(Ok(_)) => Err(RunError::AgentStatus {
            addr,
            path: APP_HOLD_PATH,
            status: hyper::StatusCode::from_bytes(
                line.split_whitespace().nth(1).unwrap_or("0").as_bytes(),
            )
            .unwrap_or(hyper::StatusCode::BAD_GATEWAY),
        }),
        Ok(Err(source)) => Err(connect(source)),
        Err(_) => Err(RunError::AgentTimeout {
            addr,
            timeout: HOLD_TIMEOUT,
        }),
    }
}

/// `POST /v1/release`: asks the agent to hand the Lease to another replica.
pub async fn release(addr: SocketAddr, reason: ReleaseReason) -> Result<(), RunError> {
    request(addr, Method::POST, reason.path_and_query(), "*/*").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9466))
    }

    #[test]
    fn reads_the_agents_view_and_ignores_unknown_fields() {
        clock::init();
        let now = clock::now_mono_ns();
        let json = format!(
            r#"{{"namespace":"ns","lease":"pool","identity":"me","holder":"me","leading":true,
            "fencingToken":4,"since":"2024-01-01T00:00:00Z","leaseExists":true,"connected":true,
            "leadUntilMonotonicNs":{},"stopGraceMs":2500,"fromTheFuture":[1,2]}}"#,
            now + 5_000_000_000
        );
        let view = AgentView::parse(addr(), json.as_bytes()).expect("parse");
        assert_eq!(view.fencing_token, Some(4));
        let machine_view = view.to_view();
        assert_eq!(machine_view.pool, "pool");
        assert_eq!(machine_view.grace, Duration::from_millis(2500));
        let left = machine_view
            .deadline
            .expect("deadline")
            .saturating_duration_since(tokio::time::Instant::now());
        assert!(
            left > Duration::from_secs(4) && left <= Duration::from_secs(5),
            "{left:?}"
        );
    }

    #[test]
    fn a_follower_has_no_deadline_and_missing_new_fields_are_tolerated() {
        let json = br#"{"namespace":"ns","lease":"pool","identity":"me","holder":null,
            "leading":false,"fencingToken":null,"since":null,"leaseExists":false,"connected":false}"#;
        let view = AgentView::parse(addr(), json).expect("parse").to_view();
        assert!(!view.leading);
        assert_eq!(view.deadline, None);
        assert_eq!(view.grace, Duration::ZERO);
        assert!(matches!(
            AgentView::parse(addr(), b"{\"leading\":\"yes\"}"),
            Err(RunError::AgentJson { .. })
        ));
    }
}
