//! `make run`'s engine, `webhook-config/run-local.sh`, against the local
//! cluster: it starts `zen-lead controller` on loopback with the development
//! certificates, registers `webhook-config/local.yaml`, the real API server
//! then injects an annotated pod through it, and stopping the script removes
//! the registration; it also installs the server-side fencing policy
//! (config/fencing/), which the controller finds. Scoped with ZEN_LEAD_WATCH_NAMESPACE (and a unique
//! configuration name) so tests running beside it are not intercepted.
//! Also: started several times in a row, into a controller namespace that
//! does not exist yet, and beside a controller of another scope (as `make
//! demo` leaves one running), a new policy gets its Lease every time.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::zen_lead_host::free_port;
use common::{client, eventually, kubeconfig_path, kubectl_path, repo_root, with_namespace};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use zen_lead::api::{Activation, LeaderPolicy, LeaderPolicySpec};
use zen_lead::contract::AGENT_CONTAINER;

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

        // The server-side fencing policy is installed (config/fencing/,
        // applied before the controller starts), and the controller finds
        // it: an `api` pool is fenced on the server.
        let (want_policy, want_binding) = common::fencing::rendered();
        let _uninstall = common::fencing::Installed(common::fencing::POLICY_NAME);
        let vaps: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
        let vap = vaps
            .get(common::fencing::POLICY_NAME)
            .await
            .unwrap_or_else(|e| panic!("the fencing policy make run applies: {e}"));
        // What the file sets (the API server adds its defaults around it).
        let (have, want) = (
            vap.spec.unwrap_or_default(),
            want_policy.spec.unwrap_or_default(),
        );
        assert_eq!(have.validations, want.validations, "config/fencing/'s rule");
        assert_eq!(
            have.variables, want.variables,
            "config/fencing/'s variables"
        );
        assert_eq!(have.match_conditions, want.match_conditions);
        assert_eq!(have.param_kind, want.param_kind);
        assert_eq!(
            have.match_constraints.and_then(|m| m.resource_rules),
            want.match_constraints.and_then(|m| m.resource_rules)
        );
        let binding = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .get(common::fencing::POLICY_NAME)
            .await
            .unwrap_or_else(|e| panic!("the fencing binding make run applies: {e}"));
        let (have, want) = (
            binding.spec.unwrap_or_default(),
            want_binding.spec.unwrap_or_default(),
        );
        assert_eq!(
            have.policy_name, want.policy_name,
            "config/fencing/'s binding"
        );
        assert_eq!(
            have.param_ref, want.param_ref,
            "config/fencing/'s parameters"
        );
        assert_eq!(have.validation_actions, want.validation_actions);
        let mut fenced = LeaderPolicy::new(
            "fenced",
            LeaderPolicySpec {
                activation: Activation::Api,
                ..LeaderPolicySpec::default()
            },
        );
        fenced.metadata.namespace = Some(ns.clone());
        Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &fenced)
            .await
            .unwrap_or_else(|e| panic!("create LeaderPolicy {ns}/fenced: {e}"));
        common::fencing::wait_condition(
            &client,
            &ns,
            "fenced",
            "True",
            Some(zen_lead::api::keys::conditions::reasons::FENCED),
        )
        .await;

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

/// `make run` scoped to `watch` (its webhook too), keeping its own Lease in
/// `home`, registered as `config`.
fn start_scoped(watch: &str, home: &str, config: &str) -> RunLocal {
    let log = std::fs::File::create(repo_root().join(format!("target/{config}-run-local.log")))
        .unwrap_or_else(|e| panic!("log file: {e}"));
    let mut cmd = Command::new("setsid");
    cmd.arg("bash")
        .arg("webhook-config/run-local.sh")
        .current_dir(repo_root())
        .env("BIN", env!("CARGO_BIN_EXE_zen-lead"))
        .env("KUBECTL", kubectl_path())
        .env("KUBECONFIG", kubeconfig_path())
        .env("WEBHOOK_PORT", free_port().to_string())
        .env("ADMIN_PORT", free_port().to_string())
        .env("WEBHOOK_CONFIG_NAME", config)
        .env("ZEN_LEAD_WATCH_NAMESPACE", watch)
        .env("ZEN_LEAD_NAMESPACE", home)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("log: {e}")))
        .stderr(log);
    RunLocal(cmd.spawn().unwrap_or_else(|e| panic!("run-local.sh: {e}")))
}

/// A new pool's Lease waits for the controller to lead: up to one
/// controller lease duration (15 s) when its own Lease is new, plus a pass.
const LEASE_LIMIT: Duration = Duration::from_secs(90);

/// Registered, then a new policy `name` in `ns` gets its Lease (written only
/// by the controller that leads the scope), with the script still running
/// (it exited with `Error 22` in 5 of 7 starts when it re-checked /readyz).
async fn policy_gets_its_lease(
    client: &Client,
    run: &mut RunLocal,
    config: &str,
    ns: &str,
    name: &str,
) {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    eventually(
        &format!("webhook configuration {config}"),
        LEASE_LIMIT,
        || async {
            configs
                .get_opt(config)
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .ok_or_else(|| "not registered yet".to_owned())
        },
    )
    .await;
    let mut policy = LeaderPolicy::new(name, LeaderPolicySpec::default());
    policy.metadata.namespace = Some(ns.to_owned());
    Api::<LeaderPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap_or_else(|e| panic!("create LeaderPolicy {ns}/{name}: {e}"));
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("the Lease of policy {ns}/{name}"),
        LEASE_LIMIT,
        || async {
            leases
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .ok_or_else(|| "no Lease yet".to_owned())
        },
    )
    .await;
    if let Ok(Some(status)) = run.0.try_wait() {
        panic!("make run ({config}) exited: {status}");
    }
}

#[tokio::test]
async fn make_run_starts_every_time_and_leads_its_own_scope() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "make-run-again", |client, ns| async move {
        with_namespace(&client, "make-run-demo", |client, demo| async move {
            // The controller's namespace does not exist yet: created.
            let home = format!("{ns}-home");
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let config = format!("{ns}-make-run");
            for round in 0..3 {
                let mut run = start_scoped(&ns, &home, &config);
                policy_gets_its_lease(&client, &mut run, &config, &ns, &format!("round-{round}"))
                    .await;
                assert!(
                    namespaces.get_opt(&home).await.ok().flatten().is_some(),
                    "the controller's namespace {home} exists"
                );
                drop(run);
            }
            // Beside a controller of another scope (a demo): both lead.
            let demo_config = format!("{demo}-make-run");
            let mut demo_run = start_scoped(&demo, &home, &demo_config);
            policy_gets_its_lease(&client, &mut demo_run, &demo_config, &demo, "demo").await;
            let mut run = start_scoped(&ns, &home, &config);
            policy_gets_its_lease(&client, &mut run, &config, &ns, "beside-demo").await;
            if let Ok(Some(status)) = demo_run.0.try_wait() {
                panic!("the demo's make run exited: {status}");
            }
            drop(run);
            drop(demo_run);
            let _ = namespaces.delete(&home, &DeleteParams::background()).await;
        })
        .await;
    })
    .await;
}
