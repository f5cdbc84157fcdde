//! A minimal HTTPS client for the webhook tests and benchmark: one HTTP/1.1
//! connection over rustls to 127.0.0.1, trusting only the given CA.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// DER of the certificate the server presented at the handshake.
    pub server_cert: Vec<u8>,
}

/// A client configuration trusting `ca_pem` only.
pub fn client_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA accepted");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Full handshakes only: a resumed session skips the certificate, and the
    // rotation test must see (and verify) the certificate served now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Connects and completes the TLS handshake as `localhost`.
pub async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Conn> {
    assert!(addr.ip().is_loopback(), "tests talk to loopback only");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn {
        sender,
        server_cert,
    })
}

impl Conn {
    /// POSTs `body` to `path`; returns status and body.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let request = hyper::Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self.sender.send_request(request).await;
        status_and_body(response).await
    }
}

/// One HTTP/2 connection (ALPN `h2`), as the API server calls webhooks:
/// requests on it are concurrent streams.
#[derive(Clone)]
pub struct H2Conn {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

/// Connects with ALPN `h2` and completes the HTTP/2 handshake.
pub async fn connect_h2(addr: SocketAddr, ca_pem: &[u8]) -> std::io::Result<H2Conn> {
    assert!(addr.ip().is_loopback(), "tests talk to loopback only");
    let mut config = (*client_config(ca_pem)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await?;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(H2Conn { sender })
}

impl H2Conn {
    /// POSTs `body` to `path` on a new stream; returns status and body.
    pub async fn post(&self, path: &str, body: Bytes) -> Result<(u16, Bytes), String> {
        let mut sender = self.sender.clone();
        sender.ready().await.map_err(|e| e.to_string())?;
        let request = hyper::Request::post(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        status_and_body(sender.send_request(request).await).await
    }
}

/// A response's status and whole body, for either connection.
async fn status_and_body(
    response: Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<(u16, Bytes), String> {
    let response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}
