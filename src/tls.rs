//! Certificates and rustls server configuration.
//!
//! `zen-lead certs` uses [`generate`] for development certificates; the
//! webhook's self-managed mode and the agent's per-pod API certificate use the
//! same code, so there is one way to mint a CA and a serving certificate.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File names inside the output directory. `tls.crt`/`tls.key` match the keys
/// of a Kubernetes TLS Secret (and cert-manager's), so the webhook reads dev
/// certificates and mounted Secrets the same way.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Errors of the TLS module.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "a serving certificate needs at least one name: pass --dns NAME or --ip ADDRESS \
         (zen-lead certs), or configure the webhook's service name"
    )]
    NoSubjectNames,

    #[error("invalid DNS name {name:?} for the certificate (--dns): {reason}")]
    InvalidDnsName { name: String, reason: String },

    #[error("validity must be at least one day (zen-lead certs --days)")]
    ZeroValidity,

    #[error("could not generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),

    #[error("{} already exists; pass --force to overwrite it, or choose another --out directory", path.display())]
    AlreadyExists { path: PathBuf },

    #[error("could not write {}: {source}; check that --out names a writable directory", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not read {} ({what}): {source}", path.display())]
    Read {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    #[error("{} holds no PEM CERTIFICATE block; it must be the serving certificate (tls.crt)", path.display())]
    NoCertificate { path: PathBuf },

    #[error("the certificate and private key do not form a usable TLS identity: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What to put in a development CA and serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// DNS subject alternative names of the serving certificate.
    pub dns_names: Vec<String>,
    /// IP subject alternative names of the serving certificate.
    pub ip_addresses: Vec<IpAddr>,
    /// Validity of both certificates, starting now.
    pub validity: Duration,
}

/// A freshly generated CA and a serving certificate it signed, PEM-encoded.
pub struct GeneratedCerts {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for GeneratedCerts {
    // Keep private keys out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCerts")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Generates a CA (ECDSA P-256) and a serving certificate signed by it.
pub fn generate(request: &CertRequest) -> Result<GeneratedCerts, TlsError> {
    issue(request, KeyPair::generate()?, "zen-lead development CA")
}

/// A self-signed CA named `ca_name` on `ca_key` (new, or kept by the caller
/// so the CA survives restarts) and a fresh serving certificate it signed.
pub fn issue(
    request: &CertRequest,
    ca_key: KeyPair,
    ca_name: &str,
) -> Result<GeneratedCerts, TlsError> {
    if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
        return Err(TlsError::NoSubjectNames);
    }
    if request.validity < Duration::from_secs(24 * 60 * 60) {
        return Err(TlsError::ZeroValidity);
    }
    let now = time::OffsetDateTime::now_utc();
    // Back-date a little: a node whose clock is behind must not see the
    // certificate as not yet valid.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::seconds(duration_secs_i64(request.validity));

    let mut ca_params = CertificateParams::default();
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let common_name = request
        .dns_names
        .first()
        .cloned()
        .or_else(|| request.ip_addresses.first().map(ToString::to_string))
        .unwrap_or_else(|| "zen-lead".to_owned());
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for name in &request.dns_names {
        // rcgen accepts any ASCII here; a typo would end up in the certificate.
        check_dns_name(name).map_err(|reason| TlsError::InvalidDnsName {
            name: name.clone(),
            reason: reason.to_owned(),
        })?;
        let dns =
            name.clone()
                .try_into()
                .map_err(|source: rcgen::Error| TlsError::InvalidDnsName {
                    name: name.clone(),
                    reason: source.to_string(),
                })?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params
        .subject_alt_names
        .extend(request.ip_addresses.iter().copied().map(SanType::IpAddress));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    Ok(GeneratedCerts {
        ca_cert_pem: ca.pem(),
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A DNS name as certificates use it: dot-separated labels of letters, digits
/// and '-', at most 253 characters; a leading `*.` wildcard is allowed.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() || name.len() > 253 {
        return Err("it must be 1 to 253 characters long");
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(
                "use dot-separated labels of letters, digits and '-' (a leading `*.` is allowed)",
            );
        }
    }
    Ok(())
}

fn duration_secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl GeneratedCerts {
    /// Writes `ca.crt`, `ca.key`, `tls.crt` and `tls.key` into `dir`
    /// (created if missing). Keys are written owner-only. Existing files are
    /// kept unless `overwrite` is set, so a CA that clusters already trust is
    /// never replaced by accident.
    pub fn write_to(&self, dir: &Path, overwrite: bool) -> Result<Vec<PathBuf>, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let files = [
            (CA_CERT_FILE, &self.ca_cert_pem, false),
            (CA_KEY_FILE, &self.ca_key_pem, true),
            (CERT_FILE, &self.cert_pem, false),
            (KEY_FILE, &self.key_pem, true),
        ];
        if !overwrite {
            // Check all first: never leave a half-replaced set behind.
            for (name, _, _) in &files {
                let path = dir.join(name);
                if path.exists() {
                    return Err(TlsError::AlreadyExists { path });
                }
            }
        }
        let mut written = Vec::with_capacity(files.len());
        for (name, contents, secret) in files {
            let path = dir.join(name);
            write_file(&path, contents.as_bytes(), secret).map_err(|source| TlsError::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1) from a PEM certificate chain and private key.
pub fn server_config_from_pem(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(cert_chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config_from_pem`] from a certificate file and a key file (for
/// example a mounted `kubernetes.io/tls` Secret).
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: cert.to_owned(),
            what: "certificate",
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        what: "private key",
        source,
    })?;
    server_config_from_pem(chain, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn request() -> CertRequest {
        CertRequest {
            dns_names: vec!["localhost".into(), "zen-lead.zen-lead.svc".into()],
            ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
            validity: Duration::from_secs(2 * 24 * 3600),
        }
    }

    fn parse_certs(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("pem")
    }

    #[test]
    fn refuses_a_certificate_without_names() {
        let mut req = request();
        req.dns_names.clear();
        req.ip_addresses.clear();
        let err = generate(&req).unwrap_err();
        assert!(err.to_string().contains("--dns"), "{err}");
    }

    #[test]
    fn refuses_an_invalid_dns_name() {
        let mut req = request();
        for bad in ["bad name", "-x.example", "a..b", "under_score.example"] {
            req.dns_names = vec![bad.into()];
            let err = generate(&req).unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidDnsName { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("--dns"), "{err}");
        }
        assert!(check_dns_name("*.zen-lead.svc").is_ok());
    }

    #[test]
    fn debug_output_hides_private_keys() {
        let certs = generate(&request()).expect("generate");
        let debug = format!("{certs:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    /// The real proof: a TLS client that trusts only the CA completes a
    /// handshake with a server using the serving certificate, by DNS name and
    /// by IP, and refuses a name the certificate does not cover.
    #[tokio::test]
    async fn serving_certificate_is_trusted_through_the_ca() {
        let certs = generate(&request()).expect("generate");
        let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes()).expect("key");
        let server =
            server_config_from_pem(parse_certs(&certs.cert_pem), key).expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server_task = tokio::spawn(async move {
            // Serve until the test's attempts are over; a failed handshake
            // (the wrong-name case) must not stop the server.
            for _ in 0..3 {
                let (tcp, _) = listener.accept().await.expect("accept");
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4];
                    tls.read_exact(&mut buf).await.expect("read");
                    tls.write_all(&buf).await.expect("write");
                    tls.shutdown().await.ok();
                }
            }
        });

        let mut roots = rustls::RootCertStore::empty();
        for ca in parse_certs(&certs.ca_cert_pem) {
            roots.add(ca).expect("add CA");
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

        for name in ["localhost", "127.0.0.1"] {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let server_name =
                rustls::pki_types::ServerName::try_from(name.to_owned()).expect("server name");
            let mut tls = connector
                .connect(server_name, tcp)
                .await
                .unwrap_or_else(|e| panic!("handshake as {name} failed: {e}"));
            tls.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"ping");
        }

        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let wrong = rustls::pki_types::ServerName::try_from("example.com").expect("server name");
        assert!(
            connector.connect(wrong, tcp).await.is_err(),
            "a name outside the certificate must be refused"
        );
        server_task.await.expect("server task");
    }
}
