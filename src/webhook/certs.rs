//! The webhook's serving certificate, swappable while serving.
//!
//! rustls asks [`CertResolver`] for the certificate at every handshake, so a
//! new certificate applies to the next connection while established ones
//! finish with the old one: rotation fails no request. Files are polled (a
//! content hash every few seconds) rather than watched with inotify, because
//! the kubelet updates a mounted Secret by swapping a `..data` symlink, which
//! file watches on the old target miss.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::WebhookError;

/// How often certificate files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(3);

/// Parses a PEM certificate chain and key into what rustls serves.
/// `origin` names where they came from, for the error message.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: &str,
) -> Result<CertifiedKey, WebhookError> {
    let bad = |reason: String| WebhookError::BadCertificate {
        origin: origin.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("the certificate is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            "the certificate file has no PEM CERTIFICATE block".to_owned()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| bad(format!("the private key is not a PEM private key: {e}")))?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    // Checks that the key belongs to the certificate.
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        bad(format!(
            "the certificate and key do not form a TLS identity: {e}"
        ))
    })
}

/// The certificate currently served, and where it is reloaded from.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<(PathBuf, PathBuf)>,
    /// Hash of the file contents last looked at (good or bad), so an
    /// unchanged bad pair is reported once, not at every poll.
    last_seen: Mutex<[u8; 32]>,
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(cert);
    ctx.update(&[0]);
    ctx.update(key);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn read_file(path: &Path, flag: &'static str) -> Result<Vec<u8>, WebhookError> {
    std::fs::read(path).map_err(|source| WebhookError::ReadCertificate {
        flag,
        path: path.to_owned(),
        source,
    })
}

impl CertStore {
    /// Loads `cert` and `key` (`--tls-cert-file`, `--tls-key-file`); any
    /// problem is an error naming the flag and file.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<Self>, WebhookError> {
        let cert_pem = read_file(cert, "--tls-cert-file")?;
        let key_pem = read_file(key, "--tls-key-file")?;
        let origin = format!(
            "--tls-cert-file {} / --tls-key-file {}",
            cert.display(),
            key.display()
        );
        let certified = certified_key(&cert_pem, &key_pem, &origin)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified)),
            files: Some((cert.to_owned(), key.to_owned())),
            last_seen: Mutex::new(fingerprint(&cert_pem, &key_pem)),
        }))
    }

    /// A store for a certificate held in memory (self-managed mode, tests).
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        origin: &str,
    ) -> Result<Arc<Self>, WebhookError> {
        let certified = certified_key(cert_pem, key_pem, origin)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified)),
            files: None,
            last_seen: Mutex::new(fingerprint(cert_pem, key_pem)),
        }))
    }

    /// Serves `cert_pem`/`key_pem` from the next handshake on, if valid.
    /// Returns whether they differ from what was served.
    pub fn replace_pem(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        origin: &str,
    ) -> Result<bool, WebhookError> {
        let print = fingerprint(cert_pem, key_pem);
        if *self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            == print
        {
            return Ok(false);
        }
        let result = certified_key(cert_pem, key_pem, origin);
        *self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = print;
        let certified = result?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
        Ok(true)
    }

    /// Re-reads the files; swaps the certificate when they changed and are
    /// valid. `Ok(false)`: unchanged. An error leaves the old one in service.
    pub fn reload_files(&self) -> Result<bool, WebhookError> {
        let Some((cert, key)) = &self.files else {
            return Ok(false);
        };
        let cert_pem = read_file(cert, "--tls-cert-file")?;
        let key_pem = read_file(key, "--tls-key-file")?;
        let origin = format!("rotated {} / {}", cert.display(), key.display());
        self.replace_pem(&cert_pem, &key_pem, &origin)
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Polls the files every `interval` until the task is dropped; `on_reload`
    /// is told each outcome (for metrics).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        on_reload: impl Fn(bool) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match store.reload_files() {
                    Ok(true) => {
                        tracing::info!("serving the rotated webhook certificate");
                        on_reload(true);
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(error = %err, "the rotated webhook certificate is unusable; still serving the previous one");
                        on_reload(false);
                    }
                }
            }
        })
    }
}

/// rustls' view of a [`CertStore`].
#[derive(Debug)]
pub struct CertResolver(pub Arc<CertStore>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// TLS 1.2 and 1.3 (ring), ALPN h2 and http/1.1, certificate from `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| WebhookError::TlsConfig(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertResolver(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertRequest, generate};

    fn pair() -> (String, String) {
        let g = generate(&CertRequest {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec![],
            validity: Duration::from_secs(2 * 86400),
        })
        .expect("generate");
        (g.cert_pem, g.key_pem)
    }

    #[test]
    fn bad_files_name_the_flag_and_a_bad_rotation_keeps_the_old_cert() {
        let dir = std::env::temp_dir().join(format!("zl-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let err = CertStore::from_files(&cert, &key).unwrap_err();
        assert!(err.to_string().contains("--tls-cert-file"), "{err}");

        let (c1, k1) = pair();
        std::fs::write(&cert, &c1).expect("write");
        std::fs::write(&key, "not a key").expect("write");
        let err = CertStore::from_files(&cert, &key).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");

        std::fs::write(&key, &k1).expect("write");
        let store = CertStore::from_files(&cert, &key).expect("load");
        let first = store.current();
        assert!(!store.reload_files().expect("unchanged"));

        // A key that does not match the certificate: refused, old one kept.
        let (c2, k2) = pair();
        std::fs::write(&cert, &c2).expect("write");
        assert!(store.reload_files().is_err());
        assert_eq!(store.current().cert, first.cert);

        std::fs::write(&key, &k2).expect("write");
        assert!(store.reload_files().expect("valid pair"));
        assert_ne!(store.current().cert, first.cert);
        std::fs::remove_dir_all(&dir).ok();
    }
}
