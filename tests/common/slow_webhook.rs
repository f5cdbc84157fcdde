//! A real validating webhook that takes its time: the API server has
//! admitted a write (mutation and validating admission policies done) and
//! waits on this hook before it stores it, as it would on any slow
//! validating webhook or a loaded etcd. Each call is announced on a channel
//! when it arrives, then answered "allowed" after the delay. It sees only
//! ConfigMaps labelled [`SLOW_LABEL`] in one namespace.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc;

use crate::common::webhook::{namespace_only, serve_admission};

/// The label (value `"true"`) of the objects the hook delays.
pub const SLOW_LABEL: &str = "zen-lead-test/slow";

pub struct SlowWebhook {
    config_name: String,
    client: Client,
    server: tokio::task::JoinHandle<()>,
    /// One message (the object's name) per call, when it arrives.
    pub calls: mpsc::UnboundedReceiver<String>,
}

impl SlowWebhook {
    pub async fn stop(self) {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        let _ = api
            .delete(&self.config_name, &DeleteParams::default())
            .await;
        self.server.abort();
    }
}

/// Registers the hook for namespace `ns`, delaying each call by `delay`.
pub async fn start(client: &Client, ns: &str, delay: Duration) -> SlowWebhook {
    let (tx, calls) = mpsc::unbounded_channel();
    let (port, ca, server) = serve_admission(move |body| {
        let tx = tx.clone();
        async move {
            let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let name = review["request"]["name"].as_str().unwrap_or_default();
            let _ = tx.send(name.to_owned());
            tokio::time::sleep(delay).await;
            json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": true}
            })
        }
    })
    .await;
    let config_name = format!("zen-lead-test-slow-{ns}");
    let ca = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
    let mut config: ValidatingWebhookConfiguration = crate::common::from_json(json!({
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "slow.webhook.test.zen-lead.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 30,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate"), "caBundle": ca},
            "objectSelector": {"matchLabels": {SLOW_LABEL: "true"}},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["configmaps"], "scope": "Namespaced"}],
        }]
    }));
    for hook in config.webhooks.iter_mut().flatten() {
        hook.namespace_selector = Some(namespace_only(ns));
    }
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("register the slow webhook");
    let mut hook = SlowWebhook {
        config_name,
        client: client.clone(),
        server,
        calls,
    };
    // The API server calls a new configuration a moment after it is stored.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + crate::common::webhook::WAIT;
    for attempt in 0.. {
        let name = format!("slow-probe-{attempt}");
        let probe: ConfigMap = crate::common::from_json(json!({
            "metadata": {"name": name, "labels": {SLOW_LABEL: "true"}}
        }));
        cms.create(&PostParams::default(), &probe)
            .await
            .expect("create a probe ConfigMap");
        let mut called = false;
        while let Ok(seen) = hook.calls.try_recv() {
            called |= seen == name;
        }
        if called {
            return hook;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API server never called the slow webhook"
        );
    }
    unreachable!("the probe loop returns or fails")
}
