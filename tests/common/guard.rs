//! The chart's fail-closed admission for one test namespace: its
//! MutatingWebhookConfiguration (both entries, with their failure policies,
//! object selectors and timeouts) pointed at a host-run controller, and its
//! `require-agent` ValidatingAdmissionPolicy with a binding scoped to the
//! namespace, as `deploy/zen-lead.yaml` ships them. Removed when dropped.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};

use super::zen_lead_host::Controller;

/// The shipped names (release `zen-lead`).
pub const WEBHOOK_NAME: &str = "zen-lead";
pub const GUARD_NAME: &str = "zen-lead-require-agent";

/// What a test installed; deleted on drop.
pub struct Installed {
    webhook: String,
    guard: String,
}

fn only(ns: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            ns.to_owned(),
        )])),
        ..LabelSelector::default()
    }
}

/// Installs both for `ns`, the webhook calling `c` on loopback, and waits
/// for the guard's type check.
pub async fn install(client: &Client, ns: &str, c: &Controller) -> Installed {
    let mut webhook: MutatingWebhookConfiguration =
        super::shipped("MutatingWebhookConfiguration", WEBHOOK_NAME);
    webhook.metadata = kube::api::ObjectMeta {
        name: Some(format!("{ns}-zen-lead")),
        ..Default::default()
    };
    for entry in webhook.webhooks.iter_mut().flatten() {
        entry.client_config = WebhookClientConfig {
            url: Some(format!("https://127.0.0.1:{}/mutate", c.webhook_port)),
            ca_bundle: Some(ByteString(c.ca_pem.clone().into_bytes())),
            ..WebhookClientConfig::default()
        };
        entry.namespace_selector = Some(only(ns));
    }
    let mut policy: ValidatingAdmissionPolicy =
        super::shipped("ValidatingAdmissionPolicy", GUARD_NAME);
    let mut binding: ValidatingAdmissionPolicyBinding =
        super::shipped("ValidatingAdmissionPolicyBinding", GUARD_NAME);
    let guard = format!("{ns}-require-agent");
    policy.metadata = kube::api::ObjectMeta {
        name: Some(guard.clone()),
        ..Default::default()
    };
    binding.metadata = kube::api::ObjectMeta {
        name: Some(guard.clone()),
        ..Default::default()
    };
    let spec = binding.spec.get_or_insert_with(Default::default);
    spec.policy_name = Some(guard.clone());
    spec.match_resources
        .get_or_insert_with(Default::default)
        .namespace_selector = Some(only(ns));

    let pp = PostParams::default();
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    policies
        .create(&pp, &policy)
        .await
        .unwrap_or_else(|e| panic!("create the guard policy: {e}"));
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&pp, &binding)
        .await
        .unwrap_or_else(|e| panic!("create the guard binding: {e}"));
    let webhook_name = webhook.name_any();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&pp, &webhook)
        .await
        .unwrap_or_else(|e| panic!("create the webhook configuration: {e}"));
    super::fencing::assert_type_checked(&policies, &guard).await;
    Installed {
        webhook: webhook_name,
        guard,
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let (webhook, guard) = (self.webhook.clone(), self.guard.clone());
        super::cleanup_on_drop(|client| async move {
            let dp = DeleteParams::default();
            let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
                .delete(&webhook, &dp)
                .await;
            let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                .delete(&guard, &dp)
                .await;
            let _ = Api::<ValidatingAdmissionPolicy>::all(client)
                .delete(&guard, &dp)
                .await;
        });
    }
}

/// Waits (up to 90 s) for the guard's refusal among the namespace's
/// `FailedCreate` events and returns its message; `sample` runs at every
/// look, so a test can check its invariant throughout the outage.
pub async fn wait_refusal(client: &Client, ns: &str, sample: impl Fn()) -> String {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    super::eventually(
        "the guard's refusal among the ReplicaSet's events",
        std::time::Duration::from_secs(90),
        || {
            sample();
            let events = events.clone();
            async move {
                let list = events
                    .list(&kube::api::ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                list.items
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
                    .filter_map(|e| e.message)
                    .find(|m| m.contains("did not inject the election agent"))
                    .ok_or_else(|| "no FailedCreate event from the guard yet".to_owned())
            }
        },
    )
    .await
}

/// Every pod in `pods` runs zen-lead's agent.
pub fn assert_all_injected(pods: &[k8s_openapi::api::core::v1::Pod]) {
    for pod in pods {
        let injected = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .any(|c| c.name == zen_lead::contract::AGENT_CONTAINER);
        assert!(
            injected,
            "pod {} runs without the agent",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
    }
}
