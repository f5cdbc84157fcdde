//! The gate's per-pod CA and serving certificate.
//!
//! App containers read `ca.crt` once when their client starts (client-go and
//! kube-rs do). If the agent container restarts, a gate with a brand-new CA
//! would be distrusted by every running app until it restarts too. With
//! `--gate-state-dir` (a directory only the agent mounts), the CA's private
//! key survives agent restarts: the CA is re-made from the same key and the
//! same subject, so certificates it signs verify against the `ca.crt` the apps
//! already loaded (same issuer name, same key, same key identifier).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use tracing::info;

use super::CERT_DNS_NAMES;
use crate::tls::{CertRequest, TlsError};

const CA_KEY: &str = "ca.key";
/// Subject of every gate CA: fixed, so a CA re-made from a kept key is the
/// same issuer.
const CA_NAME: &str = "zen-lead API gate CA";

/// Errors making the certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("could not generate the gate's certificate: {0}")]
    Generate(#[from] rcgen::Error),

    #[error("could not issue the gate's certificate: {0}")]
    Issue(#[from] TlsError),

    #[error(
        "{} under --gate-state-dir (ZEN_LEAD_GATE_STATE_DIR) is not a usable private key ({reason}); \
         delete it to start with a new CA (the app containers must then restart)",
        path.display()
    )]
    BadKey { path: PathBuf, reason: String },

    #[error(
        "could not keep the gate's CA key in {}: {source}; --gate-state-dir \
         (ZEN_LEAD_GATE_STATE_DIR) must be a writable directory only the agent mounts",
        path.display()
    )]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM of the CA certificate, the serving certificate and its key.
pub struct GateCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for GateCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateCerts")
            .field("ca_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

/// Makes the CA (from the key kept in `state_dir` when there is one) and a
/// fresh serving certificate for the names in-cluster clients dial.
pub fn make(
    state_dir: Option<&Path>,
    validity: std::time::Duration,
) -> Result<GateCerts, CertError> {
    let ca_key = match state_dir {
        Some(dir) => kept_key(dir)?,
        None => KeyPair::generate()?,
    };
    let request = CertRequest {
        dns_names: CERT_DNS_NAMES.iter().map(|n| (*n).to_owned()).collect(),
        ip_addresses: vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        validity,
    };
    let issued = crate::tls::issue(&request, ca_key, CA_NAME)?;
    Ok(GateCerts {
        ca_pem: issued.ca_cert_pem,
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

/// The CA key kept in `dir`, made and stored (mode 0600) the first time.
fn kept_key(dir: &Path) -> Result<KeyPair, CertError> {
    let path = dir.join(CA_KEY);
    match std::fs::read_to_string(&path) {
        Ok(pem) => {
            let key = KeyPair::from_pem(&pem).map_err(|e| CertError::BadKey {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            info!(path = %path.display(), "API gate: reusing the CA key kept across agent restarts");
            Ok(key)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate()?;
            store(&path, key.serialize_pem().as_bytes()).map_err(|source| CertError::State {
                path: path.clone(),
                source,
            })?;
            Ok(key)
        }
        Err(source) => Err(CertError::State { path, source }),
    }
}

fn store(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{CA_KEY}.tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use std::time::Duration;

    const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

    fn verifies(ca_pem: &str, leaf_pem: &str, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(ca.expect("ca")).expect("add");
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).expect("leaf");
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .is_ok()
    }

    /// A restarted agent's new serving certificate is trusted through the
    /// ca.crt the apps loaded from the previous run; without a kept key it
    /// is not.
    #[test]
    fn a_kept_key_keeps_old_ca_files_valid() {
        let dir = std::env::temp_dir().join(format!("zl-gate-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = make(Some(&dir), VALIDITY).expect("first");
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(CA_KEY))
                .expect("key")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode, 0o600);
        let second = make(Some(&dir), VALIDITY).expect("second");
        for name in [
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "127.0.0.1",
            "localhost",
        ] {
            assert!(verifies(&first.ca_pem, &first.cert_pem, name), "{name}");
            assert!(
                verifies(&first.ca_pem, &second.cert_pem, name),
                "restart: {name}"
            );
        }
        assert!(!verifies(&first.ca_pem, &second.cert_pem, "example.com"));
        let fresh = make(None, VALIDITY).expect("fresh");
        assert!(!verifies(
            &first.ca_pem,
            &fresh.cert_pem,
            "kubernetes.default.svc"
        ));
        std::fs::write(dir.join(CA_KEY), "garbage").expect("write");
        let err = make(Some(&dir), VALIDITY).unwrap_err();
        assert!(err.to_string().contains("--gate-state-dir"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
