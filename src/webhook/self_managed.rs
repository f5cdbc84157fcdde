//! Self-managed TLS (`--tls-mode self-managed`): zen-lead mints its own CA
//! and serving certificate (rcgen, via [`crate::tls`]), keeps them in one
//! Secret shared by all replicas, and keeps the MutatingWebhookConfiguration's
//! `caBundle` equal to that CA.
//!
//! Every replica polls the Secret (one GET per [`POLL_INTERVAL`]); whichever
//! replica finds the certificate close to expiry replaces it with a
//! compare-and-swap on `resourceVersion`, so replicas never overwrite each
//! other, and all of them pick the new one up at their next poll.
//!
//! At start the API server may be down (a cluster restart): the first
//! certificate is then retried with back-off ([`Retry`]) instead of exiting,
//! since every exit lengthens the kubelet's restart back-off, which would
//! keep the webhook down long after the API server is back. A failed poll
//! keeps serving the certificate already loaded.

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

/// Longest one attempt (read or create the Secret, update the caBundle) may
/// take. The client has no read timeout (watches need none), so an API
/// server that accepts connections but never answers would otherwise stall
/// the start, or the poll, for good.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

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
        "the API server forbids zen-lead to {action} Secret {namespace}/{name}: {source}; grant \
         zen-lead's ServiceAccount get and update on secrets named {name} and create on secrets \
         in namespace {namespace} (the chart's and config/rbac/'s Role \"zen-lead-tls\" and its \
         RoleBinding); zen-lead exits rather than retry this, delete the pod after fixing RBAC to \
         skip the kubelet's restart back-off"
    )]
    Forbidden {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error(
        "could not {action} Secret {namespace}/{name} (--tls-secret, --tls-mode self-managed): \
         {source}"
    )]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error(
        "could not update the caBundle of MutatingWebhookConfiguration {name}: {source}; if it \
         is missing or forbidden, apply webhook-config/ first and grant zen-lead get and update \
         on it"
    )]
    WebhookConfig {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error(
        "no answer from the API server within {after:?} while reading Secret {namespace}/{name} \
         or updating the caBundle of MutatingWebhookConfiguration {config}"
    )]
    Timeout {
        namespace: String,
        name: String,
        config: String,
        after: Duration,
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

impl SelfManagedError {
    /// Whether trying again later can succeed: the API server unreachable,
    /// overloaded or restarting. Refusals (403 RBAC, 404 no webhook
    /// configuration, 422 invalid object) stay until someone fixes them.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Secret { source, .. } | Self::WebhookConfig { source, .. } => {
                transient_kube(source)
            }
            Self::Timeout { .. } => true,
            Self::Forbidden { .. }
            | Self::InvalidName { .. }
            | Self::BadSecret { .. }
            | Self::Generate(_) => false,
        }
    }
}

/// [`SelfManagedError::is_transient`] for what start-up can return; an
/// unusable certificate in the Secret is not.
fn is_transient(err: &super::WebhookError) -> bool {
    matches!(err, super::WebhookError::SelfManaged(e) if e.is_transient())
}

/// Transport failures (connection refused or reset, TLS or connect
/// timeouts) and answers of an API server that is starting, overloaded or
/// behind a proxy whose backend is down.
fn transient_kube(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => matches!(status.code, 408 | 429 | 500..=599),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Back-off of the start-up retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Wait before the second attempt; doubles per attempt.
    pub first: Duration,
    /// Longest wait between attempts.
    pub max: Duration,
    /// Longest one attempt may take ([`ATTEMPT_TIMEOUT`]).
    pub attempt_timeout: Duration,
}

impl Retry {
    /// 0.5 s doubling to 10 s: quick while the API server restarts, at most
    /// a few requests a minute per replica while it stays down.
    pub const START: Self = Self {
        first: Duration::from_millis(500),
        max: Duration::from_secs(10),
        attempt_timeout: ATTEMPT_TIMEOUT,
    };

    /// The wait after failed attempt `attempt` (1-based), `jitter` in
    /// [0, 1]: a point in the upper half of the doubled delay, so replicas
    /// restarted together do not retry in lock-step.
    fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        doubled.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A uniform number in [0, 1] from the system's random source (ring's, so
/// no new dependency); 0.5 if it fails, which only loses the spread.
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
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
        let (namespace, name) = (self.namespace.clone(), self.settings.secret.clone());
        let source = Box::new(source);
        match &*source {
            kube::Error::Api(s) if s.code == 403 => SelfManagedError::Forbidden {
                action,
                namespace,
                name,
                source,
            },
            _ => SelfManagedError::Secret {
                action,
                namespace,
                name,
                source,
            },
        }
    }

    fn timeout_error(&self, after: Duration) -> SelfManagedError {
        SelfManagedError::Timeout {
            namespace: self.namespace.clone(),
            name: self.settings.secret.clone(),
            config: self.settings.webhook_config.clone(),
            after,
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

    /// One attempt of [`Self::initialise_retrying`], bounded by `timeout`.
    async fn initialise_once(
        &self,
        timeout: Duration,
    ) -> Result<Arc<CertStore>, super::WebhookError> {
        let attempt = async {
            let m = self.current().await?;
            let origin = format!("Secret {}/{}", self.namespace, self.settings.secret);
            let store = CertStore::from_pem(&m.cert, &m.key, &origin)?;
            if self.sync_ca_bundle(&m.ca).await? {
                tracing::info!(config = %self.settings.webhook_config, "caBundle updated");
            }
            Ok(store)
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(self.timeout_error(timeout).into()))
    }

    /// First certificate: read or create the Secret, patch the caBundle;
    /// retried with `retry`'s back-off for as long as
    /// the API server is unreachable or failing (a warning per attempt);
    /// errors retrying cannot fix (RBAC, a missing webhook configuration, an
    /// unusable certificate in the Secret) are returned at once. The caller
    /// is not ready meanwhile and races this against shutdown.
    pub async fn initialise_retrying(
        &self,
        retry: Retry,
    ) -> Result<Arc<CertStore>, super::WebhookError> {
        let secret = format!("{}/{}", self.namespace, self.settings.secret);
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            match self.initialise_once(retry.attempt_timeout).await {
                Ok(store) => {
                    if attempt > 1 {
                        tracing::info!(%secret, attempt, "got the self-managed webhook certificate after retrying");
                    }
                    return Ok(store);
                }
                Err(err) if is_transient(&err) => {
                    let wait = retry.delay(attempt, jitter());
                    tracing::warn!(
                        %secret,
                        attempt,
                        retry_in = ?wait,
                        error = %err,
                        "could not get the webhook's self-managed certificate; not serving the webhook (not ready) until it can"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Keeps the served certificate and caBundle current until aborted.
    pub fn spawn(self, store: Arc<CertStore>, metrics: Metrics) -> tokio::task::JoinHandle<()> {
        self.spawn_polling(store, metrics, POLL_INTERVAL, ATTEMPT_TIMEOUT)
    }

    /// [`Self::spawn`] with its timings (shorter in tests).
    fn spawn_polling(
        self,
        store: Arc<CertStore>,
        metrics: Metrics,
        interval: Duration,
        attempt_timeout: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let origin = format!("Secret {}/{}", self.namespace, self.settings.secret);
            let mut tick = tokio::time::interval(interval);
            // After a slow poll, wait a full interval rather than burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Any error leaves `store` as it was: the last good
                // certificate stays in service while the API server is down.
                let attempt = async {
                    let m = self.current().await?;
                    // Publish the CA before serving a certificate it signed.
                    self.sync_ca_bundle(&m.ca).await?;
                    let swapped = store.replace_pem(&m.cert, &m.key, &origin)?;
                    Ok::<bool, super::WebhookError>(swapped)
                };
                let result = tokio::time::timeout(attempt_timeout, attempt)
                    .await
                    .unwrap_or_else(|_| Err(self.timeout_error(attempt_timeout).into()));
                match result {
                    Ok(true) => {
                        tracing::info!("serving the renewed self-managed certificate");
                        metrics.reloaded(true);
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(error = %err, "keeping the self-managed certificate current failed; still serving the last good one, retrying at the next poll");
                        metrics.reloaded(false);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use base64::Engine as _;
    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::sync::Notify;

    use super::*;

    const NS: &str = "zen-lead-system";
    const SECRET: &str = "zen-lead-webhook-tls";
    const SECRET_PATH: &str = "/api/v1/namespaces/zen-lead-system/secrets/zen-lead-webhook-tls";
    const CONFIG_PATH: &str =
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/zen-lead";

    /// What the mock API server does with one request.
    enum Answer {
        Json(u16, Value),
        /// A non-Status body, as a proxy in front of a down API server sends.
        Text(u16, &'static str),
        /// The request's own body back (create, replace).
        Echo(u16),
        /// No HTTP answer: the connection fails.
        Refused,
        /// Never answered (an API server that accepts but does not respond).
        Hang,
        /// Holds the request until notified, then answers with the next item.
        Gate(Arc<Notify>),
    }

    /// (method, path, JSON body) of each request the mock saw.
    type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

    fn seen_count(seen: &Seen) -> usize {
        seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn response(code: u16, body: Vec<u8>) -> Response<Body> {
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        response
    }

    /// A client whose API server answers `script` in order (500 after it).
    fn mock(script: Vec<Answer>) -> (Client, Seen) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let mut script = script.into_iter();
            let mut hung = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                log.lock().unwrap_or_else(|e| e.into_inner()).push((
                    parts.method.to_string(),
                    parts.uri.path().to_owned(),
                    body.clone(),
                ));
                let mut answer = script.next().unwrap_or(Answer::Json(500, json!({})));
                if let Answer::Gate(gate) = answer {
                    gate.notified().await;
                    answer = script.next().unwrap_or(Answer::Json(500, json!({})));
                }
                match answer {
                    Answer::Json(code, value) => {
                        respond.send_response(response(code, value.to_string().into_bytes()));
                    }
                    Answer::Text(code, text) => {
                        respond.send_response(response(code, text.as_bytes().to_vec()));
                    }
                    Answer::Echo(code) => {
                        respond.send_response(response(code, body.to_string().into_bytes()));
                    }
                    Answer::Refused => respond.send_error(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    )),
                    Answer::Hang | Answer::Gate(_) => hung.push(respond),
                }
            }
        });
        (Client::new(service, "default"), seen)
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": format!("{reason} (mock)"), "reason": reason, "code": code})
    }

    fn webhook_config() -> Value {
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "zen-lead", "resourceVersion": "1"},
            "webhooks": [{
                "name": "pods.zen-lead.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {"service": {"name": "zen-lead-webhook", "namespace": NS}}
            }]
        })
    }

    fn manager(client: Client) -> Manager {
        Manager::new(
            client,
            NS,
            Settings {
                webhook_config: "zen-lead".to_owned(),
                service: "zen-lead-webhook".to_owned(),
                secret: SECRET.to_owned(),
            },
        )
    }

    /// Short waits so the tests take milliseconds.
    const FAST: Retry = Retry {
        first: Duration::from_millis(1),
        max: Duration::from_millis(4),
        attempt_timeout: Duration::from_millis(200),
    };

    /// A key of a Secret body as sent (base64) and decoded.
    fn secret_key(body: &Value, key: &str) -> (String, Vec<u8>) {
        let encoded = body["data"][key].as_str().unwrap_or_default().to_owned();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&encoded)
            .unwrap_or_default();
        (encoded, decoded)
    }

    /// Polls `condition` until it holds or `within` passes.
    async fn eventually(within: Duration, condition: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        condition()
    }

    #[tokio::test]
    async fn start_retries_while_the_api_server_is_down_then_serves_the_created_secret() {
        let (client, seen) = mock(vec![
            Answer::Json(503, status(503, "ServiceUnavailable")),
            Answer::Refused,
            Answer::Text(
                502,
                "upstream connect error or disconnect/reset before headers",
            ),
            Answer::Json(429, status(429, "TooManyRequests")),
            Answer::Hang,
            // Back: no Secret yet, so this replica creates it.
            Answer::Json(404, status(404, "NotFound")),
            Answer::Echo(201),
            Answer::Json(200, webhook_config()),
            Answer::Echo(200),
        ]);
        let started = tokio::time::timeout(
            Duration::from_secs(10),
            manager(client).initialise_retrying(FAST),
        )
        .await
        .expect("start-up gave up waiting within 10 s");
        let store = started.expect("start-up returns the certificate once the API server answers");

        let calls = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let paths: Vec<(&str, &str)> = calls
            .iter()
            .map(|(m, p, _)| (m.as_str(), p.as_str()))
            .collect();
        let mut expected = vec![("GET", SECRET_PATH); 6];
        expected.extend([
            ("POST", "/api/v1/namespaces/zen-lead-system/secrets"),
            ("GET", CONFIG_PATH),
            ("PUT", CONFIG_PATH),
        ]);
        assert_eq!(paths, expected);
        // Serves the certificate it stored, and published the CA that signed it.
        let created = &calls[6].2;
        let (_, cert) = secret_key(created, CERT_FILE);
        let (_, key) = secret_key(created, KEY_FILE);
        let want = super::super::certs::certified_key(&cert, &key, "created Secret")
            .expect("the created Secret holds a usable certificate");
        assert_eq!(store.current().cert, want.cert);
        let (ca, _) = secret_key(created, CA_CERT_FILE);
        assert_eq!(
            calls[8].2["webhooks"][0]["clientConfig"]["caBundle"].as_str(),
            Some(ca.as_str())
        );
    }

    #[tokio::test]
    async fn a_forbidden_secret_fails_start_up_at_once_naming_the_rbac_to_grant() {
        let (client, seen) = mock(vec![Answer::Json(403, status(403, "Forbidden"))]);
        let started = tokio::time::timeout(
            Duration::from_secs(10),
            manager(client).initialise_retrying(FAST),
        )
        .await
        .expect("a 403 must not be retried until the deadline");
        let text = started.expect_err("403 is an error").to_string();
        for part in [
            "forbids zen-lead to read Secret zen-lead-system/zen-lead-webhook-tls",
            "get and update on secrets named zen-lead-webhook-tls",
            "create on secrets in namespace zen-lead-system",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert_eq!(seen_count(&seen), 1, "retried a 403");
    }

    #[tokio::test]
    async fn a_failed_or_hung_poll_keeps_serving_the_last_good_certificate() {
        let gate = Arc::new(Notify::new());
        let renewed = {
            let (material, mut secret) = manager(mock(vec![]).0).generate().expect("generate");
            secret.metadata.resource_version = Some("2".to_owned());
            (
                material,
                serde_json::to_value(&secret).expect("Secret as JSON"),
            )
        };
        let (client, seen) = mock(vec![
            Answer::Refused,
            Answer::Hang,
            Answer::Gate(gate.clone()),
            Answer::Json(200, renewed.1.clone()),
            Answer::Json(200, webhook_config()),
            Answer::Echo(200),
        ]);
        let manager = manager(client);
        let (first, _) = manager.generate().expect("generate");
        let store = CertStore::from_pem(&first.cert, &first.key, "first").expect("store");
        let served = store.current().cert.clone();
        let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
        let task = manager.spawn_polling(
            store.clone(),
            metrics,
            Duration::from_millis(10),
            Duration::from_millis(100),
        );

        // Third poll's request held: the refused and the hung poll are over.
        assert!(
            eventually(Duration::from_secs(10), || seen_count(&seen) >= 3).await,
            "a hung poll stalled polling"
        );
        assert_eq!(
            store.current().cert,
            served,
            "a failed poll dropped the certificate"
        );

        gate.notify_one();
        let want = super::super::certs::certified_key(&renewed.0.cert, &renewed.0.key, "renewed")
            .expect("renewed");
        assert!(
            eventually(Duration::from_secs(10), || store.current().cert
                == want.cert)
            .await,
            "the renewed certificate was not picked up"
        );
        task.abort();
    }

    #[test]
    fn start_back_off_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let ms = |d: Duration| d.as_millis();
        let top: Vec<u128> = (1..=7).map(|a| ms(Retry::START.delay(a, 1.0))).collect();
        assert_eq!(top, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        let bottom: Vec<u128> = (1..=7).map(|a| ms(Retry::START.delay(a, 0.0))).collect();
        assert_eq!(bottom, vec![250, 500, 1000, 2000, 4000, 5000, 5000]);
        // No overflow however long the API server stays down.
        assert_eq!(ms(Retry::START.delay(u32::MAX, 1.0)), 10_000);
        let j = jitter();
        assert!((0.0..=1.0).contains(&j), "{j}");
    }

    #[test]
    fn only_unanswered_overloaded_or_failing_requests_are_retried() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status::failure("m", "r")
                    .with_code(code)
                    .boxed(),
            )
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(transient_kube(&api(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!transient_kube(&api(code)), "{code}");
        }
        assert!(transient_kube(&kube::Error::Service(
            "connection refused".into()
        )));
    }
}
