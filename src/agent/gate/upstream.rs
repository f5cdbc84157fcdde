//! The real API server: where it is, how it is trusted, and the connections
//! to it (one pooled client, HTTP/2 when the server offers it, for ordinary
//! requests; a fresh HTTP/1.1 connection per connection upgrade, since
//! exec/attach/port-forward need the HTTP/1.1 `Upgrade` mechanism).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Connecting to the API server (TCP + TLS) must not take longer than this;
/// a failure becomes a 502 the client library retries.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors finding or trusting the API server.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "--gate-upstream (ZEN_LEAD_GATE_UPSTREAM) {value:?} is not a usable URL: {reason}; use \
         https://HOST[:PORT]"
    )]
    BadUrl { value: String, reason: String },

    #[error(
        "no API server to forward to: KUBERNETES_SERVICE_HOST is not set and no kubeconfig was \
         found ({0}); set --gate-upstream (ZEN_LEAD_GATE_UPSTREAM)"
    )]
    NoConfig(#[source] kube::config::InferConfigError),

    #[error(
        "could not read the API server's CA {} ({what}): {source}", path.display()
    )]
    Ca {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{what} holds no usable CA certificate")]
    NoCa { what: String },

    #[error(
        "the kubeconfig skips TLS verification of the API server; the gate always verifies it, \
         so set --gate-upstream-ca (ZEN_LEAD_GATE_UPSTREAM_CA)"
    )]
    Insecure,

    #[error("the TLS client configuration for the API server is unusable: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the API server is and which CAs verify it.
#[derive(Clone)]
pub struct Target {
    /// `https://host:port` plus an optional path prefix.
    pub base: Uri,
    pub roots: Arc<RootCertStore>,
    /// The name checked against the server's certificate.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("base", &self.base)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// How the gate chooses its upstream, in order:
/// 1. `--gate-upstream URL` (with `--gate-upstream-ca`, else the CA of the
///    source service-account directory, else the kubeconfig's CA);
/// 2. in a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`
///    (the agent's own environment) with the source directory's `ca.crt`;
/// 3. outside a pod: the cluster of the current kubeconfig (host tests).
pub async fn resolve(
    url: Option<&str>,
    ca_file: Option<&Path>,
    source_sa_dir: &Path,
) -> Result<Target, UpstreamError> {
    let source_ca = source_sa_dir.join("ca.crt");
    if let Some(url) = url.filter(|u| !u.trim().is_empty()) {
        let base = parse_url(url)?;
        let (roots, tls_name) = if let Some(file) = ca_file {
            (roots_from_file(file, "--gate-upstream-ca")?, None)
        } else if source_ca.exists() {
            (roots_from_file(&source_ca, "the source ca.crt")?, None)
        } else {
            kubeconfig_roots().await?
        };
        return target(base, roots, tls_name, url);
    }
    let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
    if !host.is_empty() {
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let url = format!("https://{host}:{port}");
        let base = parse_url(&url)?;
        let roots = match ca_file {
            Some(file) => roots_from_file(file, "--gate-upstream-ca")?,
            None => roots_from_file(&source_ca, "the source ca.crt")?,
        };
        return target(base, roots, None, &url);
    }
    let config = kube::Config::infer()
        .await
        .map_err(UpstreamError::NoConfig)?;
    let url = config.cluster_url.to_string();
    let base = parse_url(&url)?;
    let (roots, tls_name) = match ca_file {
        Some(file) => (roots_from_file(file, "--gate-upstream-ca")?, None),
        None => roots_of(&config)?,
    };
    let tls_name = tls_name.or(config.tls_server_name.clone());
    target(base, roots, tls_name, &url)
}

fn target(
    base: Uri,
    roots: RootCertStore,
    tls_name: Option<String>,
    url: &str,
) -> Result<Target, UpstreamError> {
    let host = tls_name.unwrap_or_else(|| {
        base.host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    let server_name = ServerName::try_from(host).map_err(|e| UpstreamError::BadUrl {
        value: url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Target {
        base,
        roots: Arc::new(roots),
        server_name,
    })
}

fn parse_url(url: &str) -> Result<Uri, UpstreamError> {
    let bad = |reason: &str| UpstreamError::BadUrl {
        value: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(
            "the scheme must be https (the gate always verifies the API server)",
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if uri.query().is_some() {
        return Err(bad("it must not have a query"));
    }
    Ok(uri)
}

fn roots_from_file(path: &Path, what: &'static str) -> Result<RootCertStore, UpstreamError> {
    let pem = std::fs::read(path).map_err(|source| UpstreamError::Ca {
        path: path.to_owned(),
        what,
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    store(certs, || format!("{} ({what})", path.display()))
}

fn store(
    certs: Vec<CertificateDer<'static>>,
    what: impl Fn() -> String,
) -> Result<RootCertStore, UpstreamError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(UpstreamError::NoCa { what: what() });
    }
    Ok(roots)
}

async fn kubeconfig_roots() -> Result<(RootCertStore, Option<String>), UpstreamError> {
    let config = kube::Config::infer()
        .await
        .map_err(UpstreamError::NoConfig)?;
    let (roots, name) = roots_of(&config)?;
    Ok((roots, name.or(config.tls_server_name.clone())))
}

fn roots_of(config: &kube::Config) -> Result<(RootCertStore, Option<String>), UpstreamError> {
    if config.accept_invalid_certs {
        return Err(UpstreamError::Insecure);
    }
    let certs: Vec<CertificateDer<'static>> = config
        .root_cert
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    Ok((
        store(certs, || {
            "the kubeconfig's certificate-authority-data".to_owned()
        })?,
        None,
    ))
}

/// TLS to the API server: verified with `target.roots`, no client
/// certificate (the app's own bearer token is the only credential sent).
pub fn client_tls(
    target: &Target,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(target.roots.clone())
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// One TLS connection to the API server.
pub struct UpstreamStream(TlsStream<TcpStream>);

impl UpstreamStream {
    fn is_h2(&self) -> bool {
        self.0.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.is_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Opens TLS connections to the API server for the pooled client.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    server_name: ServerName<'static>,
    opened: prometheus_client::metrics::counter::Counter,
}

impl Connector {
    /// `opened` counts every connection made.
    pub fn new(
        target: &Target,
        alpn: &[&[u8]],
        opened: prometheus_client::metrics::counter::Counter,
    ) -> Result<Self, UpstreamError> {
        Ok(Self {
            tls: TlsConnector::from(client_tls(target, alpn)?),
            server_name: target.server_name.clone(),
            opened,
        })
    }

    /// TCP + TLS to `host:port`, bounded by [`CONNECT_TIMEOUT`].
    pub async fn connect(&self, uri: &Uri) -> io::Result<UpstreamStream> {
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tls = self.tls.clone();
        let name = self.server_name.clone();
        let attempt = async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            tls.connect(name, tcp).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(result) => {
                let stream = result.map(UpstreamStream)?;
                self.opened.inc();
                tracing::debug!(h2 = stream.is_h2(), "connected to the API server");
                Ok(stream)
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to the API server timed out after {CONNECT_TIMEOUT:?}"),
            )),
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&uri).await.map(TokioIo::new) })
    }
}

/// The pooled clients for everything but connection upgrades, one per
/// protocol the app speaks, so the gate keeps the connection shape the app
/// would have had with the API server: an HTTP/2 app (client-go) shares one
/// multiplexed connection, as it would direct; an HTTP/1.1 app (kube-rs) gets
/// one upstream connection per concurrent request (its watches are not
/// funnelled through one connection and one writer on either side).
pub struct Pooled {
    pub h2: Client<Connector, UpBody>,
    pub h1: Client<Connector, UpBody>,
}

/// Responses: the API server's streamed body, or one the gate wrote.
pub type GateBody = http_body_util::Either<Incoming, http_body_util::Full<hyper::body::Bytes>>;

/// What goes upstream: the app's streamed body, or a gated write's body
/// read whole (so it can be sent again, see `fence_retry`).
pub type UpBody = http_body_util::Either<Incoming, http_body_util::Full<hyper::body::Bytes>>;

impl Pooled {
    /// The client for a request: HTTP/2 (`h2`) or HTTP/1.1.
    pub fn pick(&self, h2: bool) -> &Client<Connector, UpBody> {
        if h2 { &self.h2 } else { &self.h1 }
    }
}

/// hyper's default per-stream receive window.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// Builds [`Pooled`]. HTTP/2 pings detect a dead connection under a silent
/// long watch; receive windows of 2 MiB per stream and 16 MiB per connection
/// let watches and large lists stream without waiting for window updates.
/// An API server without h2 gets HTTP/1.1 on both.
pub fn pooled_clients(
    target: &Target,
    opened: prometheus_client::metrics::counter::Counter,
) -> Result<Pooled, UpstreamError> {
    let h2 = Connector::new(target, &[b"h2", b"http/1.1"], opened.clone())?;
    let h1 = Connector::new(target, &[b"http/1.1"], opened)?;
    let build = |connector: Connector| {
        Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(15))
            .http2_keep_alive_while_idle(false)
            // Watches of HTTP/1.1 apps share these connections: a window of
            // eight streams' worth keeps a few slow readers from stalling the
            // rest (the data is held only while an app reads slowly).
            .http2_initial_stream_window_size(STREAM_WINDOW)
            .http2_initial_connection_window_size(8 * STREAM_WINDOW)
            .build(connector)
    };
    Ok(Pooled {
        h2: build(h2),
        h1: build(h1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_url_rules() {
        assert!(parse_url("https://10.0.0.1:443").is_ok());
        assert!(parse_url("https://[fd00::1]:6443/prefix").is_ok());
        for bad in [
            "http://10.0.0.1",
            "10.0.0.1:443",
            "https://",
            "https://h?x=1",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(err.to_string().contains("--gate-upstream"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("zl-gate-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("ca.crt");
        std::fs::write(&file, "not a certificate").expect("write");
        let err = roots_from_file(&file, "--gate-upstream-ca").unwrap_err();
        assert!(err.to_string().contains("no usable CA"), "{err}");
        let missing = roots_from_file(&dir.join("nope"), "--gate-upstream-ca").unwrap_err();
        assert!(
            missing.to_string().contains("--gate-upstream-ca"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
