//! Self-managed TLS (`--tls-mode self-managed`): zen-lead mints its own CA
//! and serving certificate (rcgen, via [`crate::tls`]), keeps them in one
//! Secret shared by all replicas, and keeps the MutatingWebhookConfiguration's
//! `caBundle` equal to that CA.
//!
//! Every replica polls the Secret (one GET per [`POLL_INTERVAL`]); whichever
//! replica finds the certificate close to expiry replaces it with a
//! compare-and-swap on `resourceVersion`, so replicas never overwrite each
//! other, and all of them pick the new one up at their next poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::certs::CertStore;
use super::server::Metrics;
use crate::tls::{self, CA_CERT_FILE, CERT_FILE, CertRequest, KEY_FILE};

/// How often the Secret and the caBundle are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Validity of a generated CA and serving certificate.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate is replaced when it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Annotation on the Secret: expiry (Unix seconds) of the certificate in it,
/// so replicas can decide about renewal without parsing X.509.
pub const NOT_AFTER_ANNOTATION: &str = "zen-lead.io/not-after";

/// Settings of self-managed TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub webhook_config: String,
    pub service: String,
    pub secret: String,
}

/// Errors of self-managed TLS.
#[derive(Debug, thiserror::Error)]
pub enum SelfManagedError {
    #[error("{flag} {value:?} is not a valid name: {reason}")]
    InvalidName {
        flag: &'static str,
        value: String,
        reason: String,
    },

    #[error(
        "could not {action} Secret {namespace}/{name}: {source}; zen-lead needs get, create and \
         update on it in --tls-mode self-managed"
    )]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error(
        "could not update the caBundle of MutatingWebhookConfiguration {name}: {source}; apply \
         webhook-config/ first and grant zen-lead get and update on it"
    )]
    WebhookConfig {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("Secret {namespace}/{name} holds an unusable certificate: {reason}")]
    BadSecret {
        namespace: String,
        name: String,
        reason: String,
    },

    #[error(transparent)]
    Generate(#[from] tls::TlsError),
}

/// The PEM material kept in the Secret.
#[derive(Clone, PartialEq, Eq)]
struct Material {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    not_after: u64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keeps the Secret, the served certificate and the caBundle in step.
pub struct Manager {
    client: Client,
    namespace: String,
    settings: Settings,
}

impl Manager {
    pub fn new(client: Client, namespace: &str, settings: Settings) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            settings,
        }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secret_error(&self, action: &'static str, source: kube::Error) -> SelfManagedError {
        SelfManagedError::Secret {
            action,
            namespace: self.namespace.clone(),
            name: self.settings.secret.clone(),
            source: Box::new(source),
        }
    }

    fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.settings.service, &self.namespace);
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
    }

    fn material_of(&self, secret: &Secret) -> Option<Material> {
        let data = secret.data.as_ref()?;
        // An empty key (e.g. the chart's placeholder Secret) means "generate".
        let get = |k: &str| data.get(k).filter(|b| !b.0.is_empty()).map(|b| b.0.clone());
        let not_after = secret
            .metadata
            .annotations
            .as_ref()?
            .get(NOT_AFTER_ANNOTATION)?
            .parse()
            .ok()?;
        Some(Material {
            ca: get(CA_CERT_FILE)?,
            cert: get(CERT_FILE)?,
            key: get(KEY_FILE)?,
            not_after,
        })
    }

    fn generate(&self) -> Result<(Material, Secret), SelfManagedError> {
        let generated = tls::generate(&CertRequest {
            dns_names: self.dns_names(),
            ip_addresses: Vec::new(),
            validity: VALIDITY,
        })?;
        let material = Material {
            ca: generated.ca_cert_pem.into_bytes(),
            cert: generated.cert_pem.into_bytes(),
            key: generated.key_pem.into_bytes(),
            not_after: now_unix() + VALIDITY.as_secs(),
        };
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.settings.secret.clone()),
                namespace: Some(self.namespace.clone()),
                annotations: Some(BTreeMap::from([(
                    NOT_AFTER_ANNOTATION.to_owned(),
                    material.not_after.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(BTreeMap::from([
                (CA_CERT_FILE.to_owned(), ByteString(material.ca.clone())),
                (CERT_FILE.to_owned(), ByteString(material.cert.clone())),
                (KEY_FILE.to_owned(), ByteString(material.key.clone())),
            ])),
            ..Secret::default()
        };
        Ok((material, secret))
    }

    /// The current material, creating or renewing the Secret when needed.
    /// Conflicts (another replica wrote first) are resolved by re-reading.
    async fn current(&self) -> Result<Material, SelfManagedError> {
        let api = self.secrets();
        for _ in 0..5 {
            let existing = api
                .get_opt(&self.settings.secret)
                .await
                .map_err(|e| self.secret_error("read", e))?;
            match existing {
                Some(secret) => {
                    if let Some(m) = self.material_of(&secret)
                        && m.not_after > now_unix() + RENEW_BEFORE.as_secs()
                    {
                        return Ok(m);
                    }
                    // Missing keys or close to expiry: replace, as a CAS.
                    let (material, mut fresh) = self.generate()?;
                    fresh.metadata.resource_version = secret.metadata.resource_version.clone();
                    match api
                        .replace(&self.settings.secret, &PostParams::default(), &fresh)
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(secret = %self.settings.secret, "renewed the self-managed webhook certificate");
                            return Ok(material);
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(self.secret_error("update", e)),
                    }
                }
                None => {
                    let (material, fresh) = self.generate()?;
                    match api.create(&PostParams::default(), &fresh).await {
                        Ok(_) => {
                            tracing::info!(secret = %self.settings.secret, "created the self-managed webhook certificate");
                            return Ok(material);
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(self.secret_error("create", e)),
                    }
                }
            }
        }
        Err(self.secret_error(
            "settle",
            kube::Error::Service("five conflicting writes in a row".into()),
        ))
    }

    /// Sets every webhook's `caBundle` to `ca`, if it differs.
    async fn sync_ca_bundle(&self, ca: &[u8]) -> Result<bool, SelfManagedError> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let name = &self.settings.webhook_config;
        let err = |source| SelfManagedError::WebhookConfig {
            name: name.clone(),
            source: Box::new(source),
        };
        for _ in 0..5 {
            let mut config = api.get(name).await.map_err(err)?;
            let mut changed = false;
            for hook in config.webhooks.iter_mut().flatten() {
                if hook
                    .client_config
                    .ca_bundle
                    .as_ref()
                    .map(|b| b.0.as_slice())
                    != Some(ca)
                {
                    hook.client_config.ca_bundle = Some(ByteString(ca.to_vec()));
                    changed = true;
                }
            }
            if !changed {
                return Ok(false);
            }
            // Replace carries resourceVersion: a concurrent edit is retried.
            match api.replace(name, &PostParams::default(), &config).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(err(e)),
            }
        }
        Ok(false)
    }

    /// First certificate: read or create the Secret, patch the caBundle.
    pub async fn initialise(&self) -> Result<Arc<CertStore>, super::WebhookError> {
        let m = self.current().await?;
        let origin = format!("Secret {}/{}", self.namespace, self.settings.secret);
        let store = CertStore::from_pem(&m.cert, &m.key, &origin)?;
        if self.sync_ca_bundle(&m.ca).await? {
            tracing::info!(config = %self.settings.webhook_config, "caBundle updated");
        }
        Ok(store)
    }

    /// Keeps the served certificate and caBundle current until aborted.
    pub fn spawn(self, store: Arc<CertStore>, metrics: Metrics) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let origin = format!("Secret {}/{}", self.namespace, self.settings.secret);
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let result = async {
                    let m = self.current().await?;
                    // Publish the CA before serving a certificate it signed.
                    self.sync_ca_bundle(&m.ca).await?;
                    let swapped = store.replace_pem(&m.cert, &m.key, &origin)?;
                    Ok::<bool, super::WebhookError>(swapped)
                }
                .await;
                match result {
                    Ok(true) => {
                        tracing::info!("serving the renewed self-managed certificate");
                        metrics.reloaded(true);
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(error = %err, "keeping the self-managed certificate current failed; retrying");
                        metrics.reloaded(false);
                    }
                }
            }
        })
    }
}
