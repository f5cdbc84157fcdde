//! Reinvocation against the local cluster (issue 29): another mutating
//! webhook, called after zen-lead's, adds a container to an `api` pool pod.
//! The API server then calls zen-lead's webhook again
//! (`reinvocationPolicy: IfNeeded`), and the added container must be wired
//! through the agent's gate like the app's own: otherwise it talks to the API
//! server around the gate, and a follower's writes from it are not held.

mod common;
#[path = "common/late_webhook.rs"]
mod late_webhook;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use zen_lead::webhook::api_wiring::{
    GATE_HOST, GATE_PORT, GATE_SA_VOLUME, HOST_ENV, PORT_ENV, PORT_HTTPS_ENV, SA_MOUNT_PATH,
};

use common::webhook::{has_agent, start_webhook};
use late_webhook::LATE_CONTAINER;

/// The API server address variables (name, value) of a container.
type Env = Vec<(String, Option<String>)>;
/// What a container mounts at the service-account path (volume, readOnly).
type Mount = Option<(String, Option<bool>)>;

/// What wires a container to the gate: its API server address variables and
/// what it mounts at the service-account path.
fn wiring(c: &Container) -> (Env, Mount) {
    let env = [HOST_ENV, PORT_ENV, PORT_HTTPS_ENV]
        .iter()
        .map(|name| {
            let value = c
                .env
                .iter()
                .flatten()
                .find(|e| e.name == *name)
                .and_then(|e| e.value.clone());
            ((*name).to_owned(), value)
        })
        .collect();
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == SA_MOUNT_PATH)
        .map(|m| (m.name.clone(), m.read_only));
    (env, mount)
}

#[tokio::test]
async fn a_container_added_by_a_later_webhook_is_wired_through_the_gate() {
    let client = common::client().await;
    common::with_namespace(&client, "wh-reinv", |client, ns| async move {
        let webhook = start_webhook(&client, &ns).await;
        let late = late_webhook::start(&client, &ns, &webhook.config_name).await;
        common::apply_crd(&client, &zen_lead::api::crd()).await;
        let policy: zen_lead::api::LeaderPolicy = common::from_json(json!({
            "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
            "metadata": {"name": "ctl"}, "spec": {"activation": "api"}
        }));
        Api::<zen_lead::api::LeaderPolicy>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &policy)
            .await
            .expect("create LeaderPolicy");
        let pod: Pod = common::from_json(json!({
            "metadata": {"name": "ctl-0", "annotations": {"zen-lead/pool": "ctl"}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
        }));
        let created = Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
            .expect("the pool pod is admitted");
        // The stored pod, as both webhooks (and the API server's
        // reinvocation) left it.
        late.stop().await;
        webhook.stop().await;

        assert!(has_agent(&created), "the pod was not injected");
        let annotations = created.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations
                .get("zen-lead.io/activation")
                .map(String::as_str),
            Some("api"),
            "{annotations:?}"
        );
        let containers = created
            .spec
            .clone()
            .map(|s| s.containers)
            .unwrap_or_default();
        let find = |name: &str| {
            containers
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no container {name:?} in {containers:?}"))
        };
        let app = wiring(find("app"));
        // Not vacuous: the app's own container is wired to the gate.
        let gate_port = GATE_PORT.to_string();
        assert_eq!(
            app.0,
            vec![
                (HOST_ENV.to_owned(), Some(GATE_HOST.to_owned())),
                (PORT_ENV.to_owned(), Some(gate_port.clone())),
                (PORT_HTTPS_ENV.to_owned(), Some(gate_port)),
            ],
            "the app container is not pointed at the gate"
        );
        assert_eq!(
            app.1,
            Some((GATE_SA_VOLUME.to_owned(), Some(true))),
            "the app container does not mount the gate's service-account directory"
        );
        let late_wiring = wiring(find(LATE_CONTAINER));
        assert_eq!(
            late_wiring, app,
            "the container another webhook added after zen-lead's is not wired like the app \
             (env, service-account mount): it talks to the API server around the gate"
        );
    })
    .await;
}
