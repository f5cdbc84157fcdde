//! `make run`'s engine, `webhook-config/run-local.sh`, against the local
//! cluster: it starts `zen-lead controller` on loopback with the development
//! certificates, registers `webhook-config/local.yaml`, the real API server
//! then injects an annotated pod through it, and stopping the script removes
//! the registration. Scoped with ZEN_LEAD_WATCH_NAMESPACE (and a unique
//! configuration name) so tests running beside it are not intercepted.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::zen_lead_host::free_port;
use common::{client, eventually, kubeconfig_path, kubectl_path, repo_root, with_namespace};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use zen_lead::webhook::inject::AGENT_CONTAINER;

const LIMIT: Duration = Duration::from_secs(120);

/// The script, in its own process group; SIGTERM to the group on drop (the
/// script's trap then deletes the registration and stops the controller).
struct RunLocal(Child);

impl Drop for RunLocal {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn make_run_registers_the_webhook_and_injects_then_cleans_up() {
    let client = client().await;
    with_namespace(&client, "make-run", |client, ns| async move {
        let config_name = format!("{ns}-make-run");
        let (webhook_port, admin_port) = (free_port(), free_port());
        let log = std::fs::File::create(repo_root().join(format!("target/{ns}-run-local.log")))
            .unwrap_or_else(|e| panic!("log file: {e}"));
        let mut cmd = Command::new("setsid");
        cmd.arg("bash")
            .arg("webhook-config/run-local.sh")
            .current_dir(repo_root())
            .env("BIN", env!("CARGO_BIN_EXE_zen-lead"))
            .env("KUBECTL", kubectl_path())
            .env("KUBECONFIG", kubeconfig_path())
            .env("WEBHOOK_PORT", webhook_port.to_string())
            .env("ADMIN_PORT", admin_port.to_string())
            .env("WEBHOOK_CONFIG_NAME", &config_name)
            .env("ZEN_LEAD_WATCH_NAMESPACE", &ns)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("log: {e}")))
            .stderr(log);
        let run = RunLocal(cmd.spawn().unwrap_or_else(|e| panic!("run-local.sh: {e}")));

        // Registered, pointing at our port, scoped to our namespace.
        let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let config = eventually("webhook registered by run-local.sh", LIMIT, || async {
            configs
                .get_opt(&config_name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_owned())
        })
        .await;
        let hooks = config.webhooks.unwrap_or_default();
        assert_eq!(hooks.len(), 2, "both entries of local.yaml");
        for hook in &hooks {
            let url = hook.client_config.url.clone().unwrap_or_default();
            assert_eq!(url, format!("https://127.0.0.1:{webhook_port}/mutate"));
            assert!(hook.client_config.ca_bundle.is_some(), "caBundle set");
            let selector = serde_json::to_value(&hook.namespace_selector).unwrap_or_default();
            assert_eq!(
                selector["matchExpressions"][0]["values"],
                json!([ns.clone()]),
                "scoped to the test namespace: {selector}"
            );
        }

        // The real API server calls it: an annotated pod gets the agent
        // (the pool has no LeaderPolicy: admitted, with a warning).
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app", "annotations": {"zen-lead/pool": "dev"}},
            "spec": {
                "nodeName": "kwok-0",
                "containers": [{"name": "app", "image": "app"}],
            }
        }))
        .unwrap_or_else(|e| panic!("pod json: {e}"));
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod: {e}"));
        let init: Vec<String> = created
            .spec
            .and_then(|s| s.init_containers)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(init, vec![AGENT_CONTAINER.to_owned()], "agent injected");

        // Stopping `make run` removes the registration.
        drop(run);
        eventually("registration removed on stop", LIMIT, || async {
            match configs.get_opt(&config_name).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still registered".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    })
    .await;
}
