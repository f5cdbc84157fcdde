//! `zen-lead controller` as a host process for real-node tests: it serves the
//! webhook on loopback and manages one test namespace, and a
//! MutatingWebhookConfiguration sends that namespace's pods to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

pub use super::net::free_port;

/// `zen-lead controller` on the host, serving the webhook on loopback and
/// managing only the test's namespace; killed when dropped.
pub struct Controller {
    pub child: tokio::process::Child,
    pub webhook_port: u16,
    /// livez, readyz and /metrics.
    pub admin_port: u16,
    pub ca_pem: String,
    /// How it reaches the API server.
    kubeconfig: PathBuf,
    /// The `zen-lead` binary that runs (the test build unless told).
    bin: PathBuf,
}

pub async fn start_controller(ns: &str, dir: &Path) -> Controller {
    start_controller_with(ns, dir, super::kubeconfig_path()).await
}

/// [`start_controller`] reaching the API server by `kubeconfig` (e.g. through
/// a [`super::delay_proxy::DelayProxy`]).
pub async fn start_controller_with(ns: &str, dir: &Path, kubeconfig: PathBuf) -> Controller {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_zen-lead"));
    start(bin, ns, dir, kubeconfig).await
}

/// [`start_controller`] running `bin` (e.g. the shipped static release
/// build, whose allocator and optimisation differ from the test build's).
pub async fn start_controller_from(bin: &Path, ns: &str, dir: &Path) -> Controller {
    start(bin.to_owned(), ns, dir, super::kubeconfig_path()).await
}

async fn start(bin: PathBuf, ns: &str, dir: &Path, kubeconfig: PathBuf) -> Controller {
    let certs = zen_lead::tls::generate(&zen_lead::tls::CertRequest {
        dns_names: vec!["localhost".to_owned()],
        ip_addresses: vec![std::net::IpAddr::from([127, 0, 0, 1])],
        validity: Duration::from_secs(24 * 3600),
    })
    .unwrap_or_else(|e| panic!("certificates: {e}"));
    std::fs::write(dir.join("tls.crt"), &certs.cert_pem)
        .unwrap_or_else(|e| panic!("write cert: {e}"));
    std::fs::write(dir.join("tls.key"), &certs.key_pem)
        .unwrap_or_else(|e| panic!("write key: {e}"));
    let webhook_port = free_port();
    let admin_port = free_port();
    // The controller's own Lease exists, free, as the chart creates it
    // (templates/owned.yaml): a missing one makes the election wait a whole
    // lease duration for a holder it cannot rule out.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(super::client().await, ns);
    let lease = k8s_openapi::api::coordination::v1::Lease {
        metadata: ObjectMeta {
            name: Some(zen_lead::api::keys::controller_lease_name(Some(ns))),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("create the controller Lease: {e}"),
    }
    Controller {
        child: spawn(&bin, ns, dir, webhook_port, admin_port, &kubeconfig).await,
        webhook_port,
        admin_port,
        ca_pem: certs.ca_cert_pem,
        kubeconfig,
        bin,
    }
}

impl Controller {
    /// Stops the controller (its webhook with it) until [`Self::resume`].
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts it again on the same ports and certificate, and waits until
    /// it is ready.
    pub async fn resume(&mut self, ns: &str, dir: &Path) {
        self.child = spawn(
            &self.bin,
            ns,
            dir,
            self.webhook_port,
            self.admin_port,
            &self.kubeconfig,
        )
        .await;
    }
}

/// `zen-lead controller` for `ns`, appending to `dir`/controller.log; returns
/// once it is ready.
async fn spawn(
    bin: &Path,
    ns: &str,
    dir: &Path,
    webhook_port: u16,
    admin_port: u16,
    kubeconfig: &Path,
) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("controller.log"))
        .unwrap_or_else(|e| panic!("log file: {e}"));
    let child = tokio::process::Command::new(bin)
        .arg("controller")
        .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .arg("--tls-cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("tls.key"))
        .args(["--namespace", ns, "--watch-namespace", ns])
        // The release image from the local registry, pulled as on any
        // cluster (cluster-up pushes the image of this build).
        .args(["--agent-image", &super::local_registry_image()])
        .args(["--agent-image-pull-policy", "IfNotPresent"])
        // The fencing binding's scope follows pools within seconds, not the
        // production 30 s / 2 min (each host controller adds and drops only
        // its own namespace, so they never undo each other).
        .args([
            "--fencing-scope-interval",
            "1s",
            "--fencing-scope-grace",
            "5s",
        ])
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start zen-lead controller: {e}"));
    // Ready = the webhook serves (TLS loaded).
    super::eventually(
        "the controller's /readyz",
        Duration::from_secs(60),
        || async move {
            super::http_ok("127.0.0.1", admin_port, "GET", "/readyz")
                .await
                .map(|_| ())
        },
    )
    .await;
    child
}

/// The webhook configuration of webhook-config/local.yaml, scoped to one namespace.
pub async fn register_webhook(client: &Client, ns: &str, c: &Controller) -> String {
    let name = format!("{ns}-zen-lead");
    let selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            ns.to_owned(),
        )])),
        ..LabelSelector::default()
    };
    let cfg = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "pods.zen-lead.io".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            side_effects: "None".to_owned(),
            failure_policy: Some("Fail".to_owned()),
            reinvocation_policy: Some("IfNeeded".to_owned()),
            timeout_seconds: Some(5),
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{}/mutate", c.webhook_port)),
                ca_bundle: Some(ByteString(c.ca_pem.clone().into_bytes())),
                ..WebhookClientConfig::default()
            },
            namespace_selector: Some(selector),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_owned()]),
                operations: Some(vec!["CREATE".to_owned()]),
                resources: Some(vec!["pods".to_owned()]),
                scope: Some("Namespaced".to_owned()),
            }]),
            ..MutatingWebhook::default()
        }]),
    };
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.create(&PostParams::default(), &cfg)
        .await
        .unwrap_or_else(|e| panic!("create webhook configuration: {e}"));
    name
}
