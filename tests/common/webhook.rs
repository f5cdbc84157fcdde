//! The webhook served as `zen-lead controller` serves it: the HTTPS server,
//! plus the process's admin server with the webhook's readiness condition;
//! and, for tests against the cluster, registered with the API server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use zen_lead::admin::{self, Admin, Readiness};
use zen_lead::contract::AGENT_CONTAINER;
use zen_lead::tls::{CertRequest, generate};
use zen_lead::webhook::InjectConfig;
use zen_lead::webhook::certs::CertStore;
use zen_lead::webhook::lookup::{ClusterLookup, Lookup};
use zen_lead::webhook::server::{self, Metrics, Running, ServeOptions};

pub struct Served {
    pub running: Running,
    pub admin: Admin,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl Served {
    pub async fn shutdown(self) {
        self.running.shutdown().await;
        self.admin.shutdown().await;
    }
}

pub async fn serve<L: Lookup>(
    options: ServeOptions,
    store: Arc<CertStore>,
    lookup: Arc<L>,
) -> Served {
    let mut registry = zen_lead::telemetry::new_registry();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let ready = readiness.condition("webhook serving certificate");
    let admin = admin::serve("127.0.0.1:0".parse().expect("addr"), registry, readiness)
        .await
        .expect("admin server starts");
    let running = server::start(options, store, lookup, metrics, ready)
        .await
        .expect("webhook starts");
    Served {
        addr: running.addr,
        admin_addr: admin.addr,
        running,
        admin,
    }
}

/// How long the API server may take to pick a registration up, or the
/// controllers to make a test's pods.
pub const WAIT: Duration = Duration::from_secs(60);

/// The webhook serving on loopback and registered with the API server for
/// one namespace ([`start_webhook`]).
pub struct Webhook {
    pub running: Served,
    pub config_name: String,
    pub client: Client,
    pub lookup: Arc<ClusterLookup>,
}

impl Webhook {
    pub async fn stop(self) {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let _ = api
            .delete(&self.config_name, &DeleteParams::default())
            .await;
        self.running.shutdown().await;
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = super::net::http_get(self.running.admin_addr.port(), "/metrics").await;
        assert_eq!(status, 200, "GET /metrics on the admin server: {body}");
        body
    }
}

/// Starts the webhook on a free loopback port and registers it, as
/// `webhook-config/local.yaml` ships it, for `ns` only (so parallel tests do
/// not see each other's webhooks) under the name `zen-lead-test-<ns>`;
/// returns once the API server demonstrably calls it.
pub async fn start_webhook(client: &Client, ns: &str) -> Webhook {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = generate(&CertRequest {
        dns_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
        validity: Duration::from_secs(2 * 86400),
    })
    .expect("certs");
    let store = CertStore::from_pem(certs.cert_pem.as_bytes(), certs.key_pem.as_bytes(), "test")
        .expect("store");
    let lookup = ClusterLookup::start(client.clone());
    let running = serve(
        ServeOptions {
            addr: "127.0.0.1:0".parse().expect("addr"),
            max_body_bytes: server::DEFAULT_MAX_BODY_BYTES,
            request_timeout: server::DEFAULT_REQUEST_TIMEOUT,
            inject: InjectConfig::with_image("ghcr.io/kube-zen/zen-lead:test"),
        },
        store,
        lookup.clone(),
    )
    .await;

    // The shipped local manifest, pointed at this server and this namespace.
    let template = std::fs::read_to_string(super::repo_root().join("webhook-config/local.yaml"))
        .expect("webhook-config/local.yaml");
    let ca = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(certs.ca_cert_pem.as_bytes())
    };
    let text = template
        .replace("${WEBHOOK_PORT}", &running.addr.port().to_string())
        .replace("${CA_BUNDLE}", &ca);
    let mut config: MutatingWebhookConfiguration =
        serde_saphyr::from_str(&text).expect("local.yaml is a MutatingWebhookConfiguration");
    let config_name = format!("zen-lead-test-{ns}");
    config.metadata.name = Some(config_name.clone());
    for hook in config.webhooks.iter_mut().flatten() {
        hook.namespace_selector = Some(namespace_only(ns));
    }
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.create(&PostParams::default(), &config)
        .await
        .expect("register the webhook");
    let webhook = Webhook {
        running,
        config_name,
        client: client.clone(),
        lookup,
    };

    // The API server picks registrations up asynchronously: wait until a
    // probe pod is injected, so the test's own pods certainly are.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    super::eventually("the API server to call the new webhook", WAIT, || {
        let pods = pods.clone();
        async move {
            let created = create_probe(&pods).await?;
            let name = created.metadata.name.clone().unwrap_or_default();
            if has_agent(&created) {
                Ok(())
            } else {
                Err(format!("probe pod {name} was not injected"))
            }
        }
    })
    .await;
    webhook
}

/// A selector matching namespace `ns` only.
pub fn namespace_only(ns: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([("kubernetes.io/metadata.name".to_owned(), ns.to_owned())].into()),
        ..LabelSelector::default()
    }
}

/// Creates (and deletes again) a pod of pool `probe`, returning it as the
/// API server stored it: what the registered webhooks made of it.
pub async fn create_probe(pods: &Api<Pod>) -> Result<Pod, String> {
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "probe-", "annotations": {"zen-lead/pool": "probe"}},
        // Compliant with Pod Security `restricted`, so it probes any namespace.
        "spec": {"containers": [{"name": "c", "image": "probe", "securityContext": {
            "runAsNonRoot": true, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}
    }))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &probe)
        .await
        .map_err(|e| e.to_string())?;
    let name = created.metadata.name.clone().unwrap_or_default();
    let _ = pods.delete(&name, &DeleteParams::background()).await;
    Ok(created)
}

/// The agent is the pod's first init container.
pub fn has_agent(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.first())
        .is_some_and(|c| c.name == AGENT_CONTAINER)
}

/// Serves an admission webhook on a free loopback port, HTTPS with its own
/// certificate: each request's body goes to `answer`, whose AdmissionReview
/// is the reply. Returns (port, CA bundle PEM, the accept loop).
pub async fn serve_admission<F, Fut>(answer: F) -> (u16, String, tokio::task::JoinHandle<()>)
where
    F: Fn(bytes::Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = serde_json::Value> + Send + 'static,
{
    use http_body_util::BodyExt;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = generate(&CertRequest {
        dns_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
        validity: Duration::from_secs(86400),
    })
    .expect("certs");
    let chain = vec![CertificateDer::from_pem_slice(certs.cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes()).expect("key");
    let config = zen_lead::tls::server_config_from_pem(chain, key).expect("tls config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let reply = answer(body).await.to_string();
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(reply)))
                                    .expect("response"),
                            )
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (port, certs.ca_cert_pem, server)
}
