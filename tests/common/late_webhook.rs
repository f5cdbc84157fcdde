//! A second, real mutating webhook that the API server calls after
//! zen-lead's, as a service mesh's, a log shipper's or a debugger's would
//! be: it adds a container named [`LATE_CONTAINER`] to every pod of one
//! namespace. An HTTPS server on loopback with its own certificate,
//! registered under a name that sorts after `zen-lead-test-<ns>` (the API
//! server calls configurations in name order), with `reinvocationPolicy:
//! Never`, and removed by [`LateWebhook::stop`].

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::common::webhook::{WAIT, create_probe, namespace_only, serve_admission};

/// The container the late webhook adds.
pub const LATE_CONTAINER: &str = "late";

pub struct LateWebhook {
    config_name: String,
    client: Client,
    server: tokio::task::JoinHandle<()>,
}

impl LateWebhook {
    pub async fn stop(self) {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let _ = api
            .delete(&self.config_name, &DeleteParams::default())
            .await;
        self.server.abort();
    }
}

/// The patch adding the late container, unless the pod has one already.
fn late_patch(pod: &Value) -> Value {
    let containers = &pod["spec"]["containers"];
    let present = containers
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == LATE_CONTAINER));
    if present {
        return json!([]);
    }
    json!([{"op": "add", "path": "/spec/containers/-", "value": {
        "name": LATE_CONTAINER, "image": "registry.example/late:1"}}])
}

/// The AdmissionReview answering `body`: allowed, with [`late_patch`].
fn answer(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body).unwrap_or_default();
    let patch = late_patch(&review["request"]["object"]);
    let patch = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": true,
                     "patchType": "JSONPatch", "patch": patch}
    })
}

/// Starts the late webhook for namespace `ns`, registered as
/// `<after>-late`; returns once the API server demonstrably calls it.
pub async fn start(client: &Client, ns: &str, after: &str) -> LateWebhook {
    let (port, ca, server) = serve_admission(|body| async move { answer(&body) }).await;
    let config_name = format!("{after}-late");
    assert!(config_name.as_str() > after, "must sort after {after}");
    let ca = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
    let mut config: MutatingWebhookConfiguration = crate::common::from_json(json!({
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "late.webhook.test.zen-lead.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate"), "caBundle": ca},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
        }]
    }));
    for hook in config.webhooks.iter_mut().flatten() {
        hook.namespace_selector = Some(namespace_only(ns));
    }
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("register the late webhook");
    let late = LateWebhook {
        config_name,
        client: client.clone(),
        server,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    crate::common::eventually("the API server to call the late webhook", WAIT, || {
        let pods = pods.clone();
        async move {
            let created = create_probe(&pods).await?;
            let containers = created.spec.map(|s| s.containers).unwrap_or_default();
            if containers.iter().any(|c| c.name == LATE_CONTAINER) {
                Ok(())
            } else {
                Err("the probe pod has no late container yet".to_owned())
            }
        }
    })
    .await;
    late
}
