//! The mutating admission webhook (issue 5): injects the election agent,
//! readiness gate and activation wiring into pool pods. Served over rustls by
//! every `zen-lead controller` replica.
//!
//! What exists now is its configuration, checked at start-up so a wrong flag
//! fails fast with a message naming it.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::ControllerArgs;

/// Where the webhook's serving certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// PEM files, typically a mounted `kubernetes.io/tls` Secret written by
    /// cert-manager; reloaded when they change.
    Files,
    /// zen-lead generates its own CA and serving certificate, stores them in
    /// a Secret and keeps the webhook configuration's caBundle current.
    SelfManaged,
}

/// Certificate source with everything it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfManaged,
}

/// Validated webhook settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub addr: SocketAddr,
    pub tls: TlsSource,
}

/// Errors of the webhook module.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "--tls-cert-file and --tls-key-file both point to {}; they must name the certificate \
         and the private key, two different files",
        path.display()
    )]
    SameCertAndKeyFile { path: PathBuf },

    #[error(
        "--tls-mode files needs --tls-cert-file and --tls-key-file (ZEN_LEAD_TLS_CERT_FILE, \
         ZEN_LEAD_TLS_KEY_FILE); {flag} is empty"
    )]
    MissingFile { flag: &'static str },

    #[error("the webhook (--webhook-addr) and admin server (--admin-addr) cannot share {addr}")]
    AddrClash { addr: SocketAddr },
}

impl Config {
    /// Builds the webhook's settings from the controller's flags.
    pub fn from_args(args: &ControllerArgs) -> Result<Self, WebhookError> {
        if args.webhook_addr == args.admin_addr {
            return Err(WebhookError::AddrClash {
                addr: args.webhook_addr,
            });
        }
        let tls = match args.tls_mode {
            TlsMode::SelfManaged => TlsSource::SelfManaged,
            TlsMode::Files => {
                for (flag, path) in [
                    ("--tls-cert-file", &args.tls_cert_file),
                    ("--tls-key-file", &args.tls_key_file),
                ] {
                    if path.as_os_str().is_empty() {
                        return Err(WebhookError::MissingFile { flag });
                    }
                }
                if args.tls_cert_file == args.tls_key_file {
                    return Err(WebhookError::SameCertAndKeyFile {
                        path: args.tls_cert_file.clone(),
                    });
                }
                TlsSource::Files {
                    cert: args.tls_cert_file.clone(),
                    key: args.tls_key_file.clone(),
                }
            }
        };
        Ok(Self {
            addr: args.webhook_addr,
            tls,
        })
    }
}
