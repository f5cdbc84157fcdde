//! Helm helpers shared by tests/chart.rs and tests/examples.rs: render the
//! chart, install it scoped to one test namespace, uninstall it.
//!
//! Scoping matters on the shared cluster: the controller watches only the
//! workload namespace (`controller.watchNamespace`) and the webhook is called
//! only for pods there (`webhook.namespaceSelector`), so an install never
//! touches other tests' pods or pools. Every cluster-scoped object is named
//! after the release, which is named after its (unique) namespace.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use zen_lead::api::LeaderPolicy;
use zen_lead::contract::AGENT_CONTAINER;

use crate::common;

/// The chart, relative to the repository root.
pub const CHART: &str = "charts/zen-lead";
/// Values for the local cluster: the imported image, the real node.
pub const LOCAL_VALUES: &str = "charts/zen-lead/ci/local-cluster-values.yaml";
/// Kubernetes version `helm template` renders for (the chart needs >= 1.33).
pub const KUBE_VERSION: &str = "1.34.0";

/// `helm` built with the local cluster, `$ZEN_LEAD_HELM` overriding it.
pub fn helm_path() -> PathBuf {
    std::env::var_os("ZEN_LEAD_HELM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join("tests/cluster/bin/helm"))
}

/// Runs helm from the repository root against the tests' kubeconfig.
pub fn helm(args: &[&str]) -> Output {
    let path = helm_path();
    std::process::Command::new(&path)
        .current_dir(common::repo_root())
        .env("KUBECONFIG", common::kubeconfig_path())
        // Private cache/config: parallel tests must not share helm's state.
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("zl-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("zl-helm-config"),
        )
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); it is built by `make cluster-up`, or set ZEN_LEAD_HELM",
                path.display()
            )
        })
}

/// Runs helm and panics with its output unless it succeeds.
pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` output (templates only, not crds/).
pub fn render_text(release: &str, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

/// The rendered objects, parsed.
pub fn render(release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
    let text = render_text(release, namespace, extra);
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text)
        .unwrap_or_else(|e| panic!("rendered chart is not YAML: {e}\n{text}"));
    docs.into_iter().filter(|d| d.is_object()).collect()
}

/// The rendered object of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} in the rendered chart; it has {have:?}")
        })
}

/// Values that scope an install to one workload namespace.
pub fn scoped_values(workload_ns: &str, tls_mode: &str) -> String {
    format!(
        "tls:\n  mode: {tls_mode}\n\
         controller:\n  watchNamespace: {workload_ns}\n\
         webhook:\n  namespaceSelector:\n    matchExpressions:\n\
         \x20     - key: kubernetes.io/metadata.name\n        operator: In\n        values: [{workload_ns}]\n"
    )
}

/// A chart install; uninstalled on drop if the test did not (a panic midway
/// must not leave a cluster-scoped webhook configuration behind).
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub fullname: String,
    uninstalled: bool,
}

impl Release {
    /// `helm install` of the chart into `namespace` (release named after it),
    /// with the local-cluster values, `values` (YAML) and `extra` flags.
    pub fn install(namespace: &str, values: &str, extra: &[&str]) -> Release {
        let name = namespace.to_owned();
        let file = std::env::temp_dir().join(format!("{namespace}-values.yaml"));
        std::fs::write(&file, values).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let file = file.to_string_lossy().into_owned();
        let mut args = vec![
            "install",
            &name,
            CHART,
            "--namespace",
            namespace,
            "-f",
            LOCAL_VALUES,
            "-f",
            &file,
        ];
        args.extend_from_slice(extra);
        helm_ok(&args);
        Release {
            fullname: format!("{name}-zen-lead"),
            name,
            namespace: namespace.to_owned(),
            uninstalled: false,
        }
    }

    /// `helm upgrade --reuse-values --wait` with `extra` flags.
    pub fn upgrade(&self, extra: &[&str]) {
        let mut args = vec![
            "upgrade",
            &self.name,
            CHART,
            "--namespace",
            &self.namespace,
            "--reuse-values",
            "--wait",
            "--timeout",
            "180s",
        ];
        args.extend_from_slice(extra);
        helm_ok(&args);
    }

    /// `helm uninstall --wait`.
    pub fn uninstall(&mut self) {
        helm_ok(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "180s",
        ]);
        self.uninstalled = true;
    }

    /// Waits until the controller Deployment has `replicas` Ready pods.
    pub async fn wait_ready(&self, client: &Client, replicas: i32) {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &self.namespace);
        let name = self.fullname.clone();
        common::eventually(
            &format!(
                "Deployment {}/{name} to have {replicas} Ready pods",
                self.namespace
            ),
            Duration::from_secs(180),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let d = api.get(&name).await.map_err(|e| e.to_string())?;
                    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                    if ready == replicas {
                        Ok(())
                    } else {
                        Err(format!("{ready} Ready"))
                    }
                }
            },
        )
        .await;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let out = helm(&["uninstall", &self.name, "--namespace", &self.namespace]);
            if !out.status.success() {
                eprintln!(
                    "warning: helm uninstall {} failed: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Whether the API server added the agent to `pod`.
pub fn has_agent(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == AGENT_CONTAINER))
}

/// An annotated pod for the real node, in pool `pool`.
pub fn real_node_pod(name: &str, pool: &str) -> Pod {
    common::from_json(json!({
        "metadata": {"name": name, "annotations": {"zen-lead/pool": pool}},
        "spec": {
            "nodeSelector": {"zen-lead.io/node": "real"},
            "tolerations": [{"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "app", "image": "localhost/zl-testapp:dev", "imagePullPolicy": "Never"}]
        }
    }))
}

/// Waits until the API server reaches a fresh install's webhook through its
/// Service: dry-run creates of an annotated pod (the webhook has no side
/// effects) until one comes back with the agent. Right after an install the
/// Service may not be programmed by kube-proxy yet, and the `Ignore` entry
/// then admits pods unchanged, so workloads must wait for this.
pub async fn wait_webhook_reachable(client: &Client, ns: &str) {
    let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let probe_policy: LeaderPolicy = common::from_json(json!({
        "apiVersion": "coordination.kube-zen.io/v1alpha1",
        "kind": "LeaderPolicy",
        "metadata": {"name": "zl-webhook-probe"},
        "spec": {"activation": "start"}
    }));
    policies
        .create(&PostParams::default(), &probe_policy)
        .await
        .unwrap_or_else(|e| panic!("creating the probe LeaderPolicy: {e}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let probe = real_node_pod("zl-webhook-probe", "zl-webhook-probe");
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    common::eventually(
        "the API server to reach the webhook through its Service",
        Duration::from_secs(120),
        || {
            let (pods, probe, dry_run) = (pods.clone(), probe.clone(), dry_run.clone());
            async move {
                let created = pods
                    .create(&dry_run, &probe)
                    .await
                    .map_err(|e| e.to_string())?;
                if has_agent(&created) {
                    Ok(())
                } else {
                    Err("pod admitted without the agent".to_owned())
                }
            }
        },
    )
    .await;
    policies
        .delete("zl-webhook-probe", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting the probe LeaderPolicy: {e}"));
}

/// Runs `body` against a workload namespace that a fresh chart install serves.
/// One chart install at a time: four releases (each two controller pods plus
/// the example's workload) starting at once on the one real node of a 2-core
/// machine made a healthy install miss its deadlines.
static ONE_INSTALL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn with_zen_lead<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let _turn = ONE_INSTALL_AT_A_TIME.lock().await;
    let client = common::client().await;
    common::with_namespace(
        &client,
        &format!("{prefix}-rel"),
        |client, rel_ns| async move {
            common::with_namespace(&client, prefix, |client, app_ns| async move {
                let values = format!("{}replicaCount: 1\n", scoped_values(&app_ns, "selfManaged"));
                let mut release =
                    Release::install(&rel_ns, &values, &["--wait", "--timeout", "180s"]);
                release.wait_ready(&client, 1).await;
                // A Ready controller is not yet a webhook the API server
                // reaches (kube-proxy may not have programmed the Service);
                // the examples' pods must not be admitted before it is.
                wait_webhook_reachable(&client, &app_ns).await;
                body(client, app_ns).await;
                release.uninstall();
            })
            .await;
        },
    )
    .await;
}
