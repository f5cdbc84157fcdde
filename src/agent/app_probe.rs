//! `process` activation: the agent answers the app containers' probes
//! (`/app-health/<container>/<kind>`), which the webhook pointed at it.
//!
//! While the pod does not lead, the app is held (not running), so every probe
//! succeeds: followers are Ready standbys, and rollouts, PDBs and drains
//! work. While it leads, the app's own probe decides, performed here the way
//! the kubelet would (HTTP status 200-399, a TCP connect, gRPC health
//! `SERVING`). A liveness probe also succeeds during the start-up budget
//! after the pod began to lead: the app was started then, mid-life of the
//! container, when the kubelet's own startup probe is long past.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::contract::{AppProbe, ProbeAction, ProbeKind};
use crate::election::LeaderStatus;

/// What the agent answers for an app probe, and why (the body the kubelet
/// shows in a failed probe's Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod does not lead: the app is held by `zen-lead run`.
    Held,
    /// Liveness within the start-up budget of a new term.
    Starting { left: Duration },
    /// The app's own probe must decide.
    Probe,
}

/// The decision before any I/O: held, starting, or ask the app.
pub fn verdict(probe: &AppProbe, status: &LeaderStatus, now: tokio::time::Instant) -> Verdict {
    if !status.leading_at(now) {
        return Verdict::Held;
    }
    if probe.kind == ProbeKind::Liveness && probe.start_budget_seconds > 0 {
        let budget = Duration::from_secs(u64::from(probe.start_budget_seconds));
        // A term whose start is unknown counts as just begun.
        let age = status
            .since
            .and_then(|since| SystemTime::now().duration_since(since).ok())
            .unwrap_or_default();
        if age < budget {
            return Verdict::Starting { left: budget - age };
        }
    }
    Verdict::Probe
}

/// Performs the app's own probe; `Err` says why it failed.
pub async fn perform(probe: &AppProbe) -> Result<(), String> {
    let limit = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    match timeout(limit, perform_inner(&probe.action)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}s", limit.as_secs())),
    }
}

fn target(host: &str) -> &str {
    // The kubelet probes the pod IP; loopback reaches the same network
    // namespace, and apps listening on all addresses answer on it.
    if host.is_empty() { "127.0.0.1" } else { host }
}

async fn perform_inner(action: &ProbeAction) -> Result<(), String> {
    match action {
        ProbeAction::TcpSocket { host, port } => TcpStream::connect((target(host), *port))
            .await
            .map(drop)
            .map_err(|e| format!("tcp {}:{port}: {e}", target(host))),
        ProbeAction::HttpGet {
            scheme,
            host,
            port,
            path,
            headers,
        } => {
            let stream = TcpStream::connect((target(host), *port))
                .await
                .map_err(|e| format!("{scheme} {}:{port}: {e}", target(host)))?;
            let code = if scheme.eq_ignore_ascii_case("HTTPS") {
                let tls = tokio_rustls::TlsConnector::from(insecure_client_config());
                let name = ServerName::try_from(target(host).to_owned())
                    .map_err(|e| format!("server name {host:?}: {e}"))?;
                let stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                http_get(stream, target(host), *port, path, headers).await?
            } else {
                http_get(stream, target(host), *port, path, headers).await?
            };
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP GET {path} on port {port} answered {code}"))
            }
        }
        ProbeAction::Grpc { port, service } => grpc_health(*port, service).await,
    }
}

/// A minimal HTTP/1.1 GET, as the kubelet's prober sends it; returns the
/// status code.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/zen-lead\r\n\
         Accept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    // The status line is all that matters.
    while head.len() < 512 && !head.ends_with(b"\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.trim()))
}

/// gRPC health checking protocol (`grpc.health.v1.Health/Check`) over
/// plaintext HTTP/2, as the kubelet's gRPC probe.
async fn grpc_health(port: u16, service: &str) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("grpc 127.0.0.1:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    // HealthCheckRequest { service = 1 }: protobuf, length-prefixed.
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        message.push(u8::try_from(service.len()).map_err(|_| "service name too long")?);
        message.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&message);
    let request = hyper::Request::post(format!(
        "http://127.0.0.1:{port}/grpc.health.v1.Health/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(Bytes::from(body)))
    .map_err(|e| format!("building the request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("Health/Check: {e}"))?;
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        if status != "0" {
            return Err(format!("Health/Check failed with grpc-status {status}"));
        }
        serving(&collected.to_bytes())
    }
    .await;
    driver.abort();
    result
}

/// Reads `HealthCheckResponse.status` (field 1, varint) from one
/// length-prefixed message; `SERVING` is 1.
fn serving(frame: &[u8]) -> Result<(), String> {
    let message = frame.get(5..).unwrap_or_default();
    let status = match message {
        [0x08, value, ..] => *value,
        // An empty message is the default status, UNKNOWN.
        _ => 0,
    };
    if status == 1 {
        Ok(())
    } else {
        Err(format!("Health/Check status {status}, not SERVING (1)"))
    }
}

/// HTTPS probes do not verify the app's certificate, as the kubelet's do not.
fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    fn probe(kind: ProbeKind, action: ProbeAction, budget: u32) -> AppProbe {
        AppProbe {
            container: "app".into(),
            kind,
            action,
            timeout_seconds: 1,
            start_budget_seconds: budget,
        }
    }

    fn tcp(port: u16) -> ProbeAction {
        ProbeAction::TcpSocket {
            host: String::new(),
            port,
        }
    }

    fn leading(since_ago: Duration) -> LeaderStatus {
        LeaderStatus {
            leading: true,
            lead_until: Some(Instant::now() + Duration::from_secs(10)),
            since: Some(SystemTime::now() - since_ago),
            ..LeaderStatus::default()
        }
    }

    #[test]
    fn verdicts() {
        let now = Instant::now();
        let follower = LeaderStatus::default();
        let live = probe(ProbeKind::Liveness, tcp(1), 30);
        let ready = probe(ProbeKind::Readiness, tcp(1), 0);
        assert_eq!(verdict(&live, &follower, now), Verdict::Held);
        assert_eq!(verdict(&ready, &follower, now), Verdict::Held);
        // A term past its deadline holds the app too.
        let expired = LeaderStatus {
            leading: true,
            lead_until: Some(now),
            ..LeaderStatus::default()
        };
        assert_eq!(verdict(&ready, &expired, now), Verdict::Held);
        // Fresh term: liveness waits out the budget, readiness asks the app.
        let fresh = leading(Duration::from_secs(5));
        assert!(matches!(
            verdict(&live, &fresh, now),
            Verdict::Starting { left } if left <= Duration::from_secs(25)
        ));
        assert_eq!(verdict(&ready, &fresh, now), Verdict::Probe);
        let old = leading(Duration::from_secs(31));
        assert_eq!(verdict(&live, &old, now), Verdict::Probe);
        let no_budget = probe(ProbeKind::Liveness, tcp(1), 0);
        assert_eq!(verdict(&no_budget, &fresh, now), Verdict::Probe);
    }

    #[test]
    fn grpc_status_parsing() {
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 1]).is_ok());
        assert!(serving(&[0, 0, 0, 0, 2, 0x08, 2]).is_err());
        assert!(serving(&[0, 0, 0, 0, 0]).is_err());
        assert!(serving(&[]).is_err());
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_real_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            for code in [200u16, 503] {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.expect("read");
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(
                    request.starts_with("GET /healthz HTTP/1.1\r\n"),
                    "{request}"
                );
                assert!(request.contains("X-Probe: yes\r\n"), "{request}");
                let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                conn.write_all(reply.as_bytes()).await.expect("write");
            }
        });
        let http = probe(
            ProbeKind::Readiness,
            ProbeAction::HttpGet {
                scheme: "HTTP".into(),
                host: String::new(),
                port,
                path: "/healthz".into(),
                headers: vec![("X-Probe".into(), "yes".into())],
            },
            0,
        );
        assert_eq!(perform(&http).await, Ok(()));
        let err = perform(&http).await.expect_err("503 fails");
        assert!(err.contains("503"), "{err}");
        server.await.expect("server");
        // Nothing listens any more: refused.
        assert!(
            perform(&probe(ProbeKind::Liveness, tcp(port), 0))
                .await
                .is_err()
        );
        let open = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let open_port = open.local_addr().expect("addr").port();
        assert_eq!(
            perform(&probe(ProbeKind::Liveness, tcp(open_port), 0)).await,
            Ok(())
        );
    }
}
