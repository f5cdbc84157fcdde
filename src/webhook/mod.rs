//! The mutating admission webhook: injects the election agent, readiness
//! gate and activation wiring into pool pods. Served over rustls by every
//! `zen-lead controller` replica.
//!
//! - [`inject`]: what to read about a pod, then the one decision on what was
//!   read (pure, no I/O; golden-tested), built from [`membership`],
//!   [`activation`], [`agent`], [`api_wiring`], [`process`] and [`pod_patch`].
//! - [`review`]: AdmissionReview in, the reads, AdmissionReview out.
//! - [`lookup`]: owners' annotations and LeaderPolicies, from watch-fed indexes.
//! - [`certs`]: the serving certificate, reloaded on rotation.
//! - [`self_managed`]: zen-lead's own CA, Secret and caBundle.
//! - [`server`]: HTTPS `/mutate` and the admin server.

pub mod activation;
pub mod agent;
pub mod api_wiring;
pub mod certs;
pub mod denial;
pub mod inject;
pub mod lookup;
pub mod membership;
mod patch;
pub mod pod_patch;
pub mod process;
pub mod review;
pub mod self_managed;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use agent::InjectConfig;
pub use server::{Running, ServeOptions};

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
    Files {
        cert: PathBuf,
        key: PathBuf,
        reload_interval: Duration,
    },
    SelfManaged(self_managed::Settings),
}

/// Validated webhook settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub addr: SocketAddr,
    pub tls: TlsSource,
    pub max_body_bytes: usize,
    /// Agent image, pull policy and resources are filled in by the
    /// controller's configuration (`--agent-*` flags).
    pub inject: InjectConfig,
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

    #[error("{flag} {value:?} is not a Kubernetes quantity (examples: 10m, 0.1, 16Mi, 1Gi)")]
    InvalidQuantity { flag: &'static str, value: String },

    #[error(
        "could not read {flag} {}: {source}; mount the webhook's TLS Secret there or pass \
         the right path",
        path.display()
    )]
    ReadCertificate {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unusable webhook certificate ({origin}): {reason}")]
    BadCertificate { origin: String, reason: String },

    #[error("could not build the TLS configuration: {0}")]
    TlsConfig(String),

    #[error("could not listen on {addr} for the {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    // Boxed: kube::Error inside is large, and this enum travels in every Result.
    #[error(transparent)]
    SelfManaged(Box<self_managed::SelfManagedError>),
}

impl From<self_managed::SelfManagedError> for WebhookError {
    fn from(err: self_managed::SelfManagedError) -> Self {
        Self::SelfManaged(Box::new(err))
    }
}

/// A Kubernetes quantity as resource requests take it: a decimal number with
/// an optional suffix (`m`, `k`, `M`, `G`, `Ki`, `Mi`, `Gi`, ...). Checked
/// here so a typo fails at start, not as a rejected pod.
pub fn is_quantity(value: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && SUFFIXES.contains(&suffix)
}

/// Runs the webhook until `shutdown` resolves: certificates per
/// [`TlsSource`], owner/policy indexes from `client`, both servers.
/// `registry` gets the webhook's metrics and is served on `/metrics`.
pub async fn serve(
    config: &Config,
    namespace: &str,
    client: kube::Client,
    metrics: server::Metrics,
    ready: crate::admin::ReadyFlag,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WebhookError> {
    // Pinned so start-up can race it and the serving phase still await it.
    let mut shutdown = std::pin::pin!(shutdown);
    let lookup = lookup::ClusterLookup::start(client.clone());
    let options = ServeOptions {
        addr: config.addr,
        max_body_bytes: config.max_body_bytes,
        request_timeout: server::DEFAULT_REQUEST_TIMEOUT,
        inject: config.inject.clone(),
    };
    let (store, background) = match &config.tls {
        TlsSource::Files { cert, key, .. } => {
            // A bad certificate at start is fatal: better no webhook than
            // one the API server cannot talk to.
            let store = certs::CertStore::from_files(cert, key)?;
            (store, None)
        }
        TlsSource::SelfManaged(settings) => {
            let manager = self_managed::Manager::new(client.clone(), namespace, settings.clone());
            // The API server may be down while this replica starts: wait for
            // it (not ready; the admin server's /livez keeps answering)
            // instead of exiting into the kubelet's growing restart back-off.
            let store = tokio::select! {
                store = manager.initialise_retrying(self_managed::Retry::START) => store?,
                () = &mut shutdown => return Ok(()),
            };
            (store, Some(manager))
        }
    };
    let running = server::start(options, store.clone(), lookup, metrics, ready).await?;
    let metrics = running.metrics.clone();
    let task = match (&config.tls, background) {
        (
            TlsSource::Files {
                reload_interval, ..
            },
            _,
        ) => store.spawn_reloader(*reload_interval, move |ok| metrics.reloaded(ok)),
        (_, Some(manager)) => manager.spawn(store, metrics),
        _ => tokio::spawn(async {}),
    };
    shutdown.await;
    task.abort();
    running.shutdown().await;
    Ok(())
}
