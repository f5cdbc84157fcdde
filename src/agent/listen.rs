//! The agent's two HTTP listeners, each bounded: at most
//! [`Limits::max_connections`] connections at a time (one more is accepted
//! and closed at once, so the kernel's backlog does not fill either), a
//! request head must arrive within [`Limits::header_timeout`] (also the
//! longest an idle keep-alive connection stays open), and a head may not
//! exceed [`Limits::max_buf`] bytes. HTTP/1.1 only: the kubelet, Prometheus
//! and every local client speak it.
//!
//! The kubelet probes with a fresh connection each time, so when a flood
//! holds every slot its probes fail until the flood stops: the caps bound
//! the agent's memory, the chart's NetworkPolicy bounds who may connect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::panic_guard;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// hyper's read buffer: the largest request head (at least 8 KiB).
    pub max_buf: usize,
}

/// The probe port on the pod IP: the kubelet opens a connection or two per
/// probe period; Prometheus and `zen-lead handoff` one each.
pub const PROBE_LIMITS: Limits = Limits {
    max_connections: 64,
    header_timeout: Duration::from_secs(5),
    max_buf: 16 << 10,
};

/// The loopback API: the pod's own containers (`zen-lead run` keeps one
/// connection per app process; apps may watch `/v1/leader`).
pub const LOCAL_LIMITS: Limits = Limits {
    max_connections: 256,
    header_timeout: Duration::from_secs(10),
    max_buf: 16 << 10,
};

/// Serves `app` on `listener` within `limits` until `stop` becomes true.
/// Handlers see the peer as axum's [`ConnectInfo<SocketAddr>`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %err, "accepting an agent connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "connection cap reached: closed");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            connection(tcp, peer, app, limits).await;
        });
    }
}

/// One connection: HTTP/1.1 with the head timeout and buffer bound; each
/// request's panic is contained to a 500.
async fn connection(tcp: tokio::net::TcpStream, peer: SocketAddr, app: Router, limits: Limits) {
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let response = match panic_guard::contain(app.oneshot(req)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(panicked) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("zen-lead agent: {panicked}\n"),
                )
                    .into_response(),
            };
            Ok::<Response, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_buf.max(8 << 10));
    if let Err(err) = builder.serve_connection(TokioIo::new(tcp), service).await {
        tracing::debug!(%peer, error = %err, "agent connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (SocketAddr, watch::Sender<bool>) {
        let app = Router::new()
            .route("/ok", get(|| async { "ok\n" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/panic",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("a handler's bug");
                    }
                    "unreachable"
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(listener, app, limits, stop));
        (addr, stop_tx)
    }

    async fn get_once(addr: SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn a_panicking_request_is_a_500_and_the_server_goes_on() {
        let (addr, _stop) = start(PROBE_LIMITS).await;
        let reply = get_once(addr, "/panic").await;
        assert!(reply.starts_with("HTTP/1.1 500"), "{reply}");
        assert!(reply.contains("a handler's bug"), "{reply}");
        assert!(get_once(addr, "/ok").await.starts_with("HTTP/1.1 200"));
        assert!(get_once(addr, "/peer").await.contains("127.0.0.1:"));
    }

    /// Silent connections are closed after the head timeout, and beyond the
    /// cap a connection is closed at once; freed slots serve again.
    #[tokio::test]
    async fn connections_are_capped_and_silent_ones_time_out() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            max_buf: 8 << 10,
        };
        let (addr, _stop) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The fifth is closed without an answer while the four hold the slots.
        assert_eq!(get_once(addr, "/ok").await, "");
        // The silent four are closed by the head timeout...
        for mut tcp in idle {
            let mut rest = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "not closed within 5 s");
        }
        // ...and their slots serve again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(get_once(addr, "/ok").await.starts_with("HTTP/1.1 200"));
    }
}
