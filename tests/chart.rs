//! The Helm chart (`charts/zen-lead`).
//!
//! Without a cluster: `helm lint --strict`, the values schema refusing typos,
//! and the rendered objects keeping the chart's promises (pod security,
//! RBAC without wildcards, the two webhook entries, TLS wiring per mode).
//!
//! On the local cluster: the rendered manifests pass a server-side dry run;
//! `helm install` in selfManaged mode serves the webhook through its Service,
//! runs the seed README's pool and uninstalls cleanly; certManager mode is
//! checked against cert-manager's real CRDs, with `cert_manager_stand_in`
//! playing cert-manager's controller and cainjector (see docs/TESTING.md).

#[path = "common/chart.rs"]
mod chart;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chart::{
    Release, find, has_agent, helm, real_node_pod, render, render_text, scoped_values,
    wait_webhook_reachable,
};
use common::net::free_port;
use common::{apply_crd, client, eventually, from_json, kubectl, with_namespace};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde_json::{Value, json};
use zen_lead::api::{LeaderPolicy, Phase};

const NS: &str = "zl-render";
const MODES: [&str; 3] = ["certManager", "selfManaged", "existingSecret"];

/// Flags that make each TLS mode renderable on its own.
fn mode_flags(mode: &str) -> Vec<String> {
    let mut flags = vec!["--set".to_owned(), format!("tls.mode={mode}")];
    if mode == "existingSecret" {
        flags.extend([
            "--set".to_owned(),
            "tls.secretName=my-webhook-tls".to_owned(),
        ]);
    }
    flags
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn helm_lint_strict_is_clean_in_every_tls_mode() {
    for mode in MODES {
        let mut args = vec![
            "lint",
            "--strict",
            chart::CHART,
            "--kube-version",
            chart::KUBE_VERSION,
        ];
        let flags = mode_flags(mode);
        args.extend(strs(&flags));
        args.extend(["--set", "metrics.serviceMonitor.enabled=true"]);
        args.extend(["--set", "metrics.podMonitor.enabled=true"]);
        let out = helm(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "helm lint --strict ({mode}):\n{text}");
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "helm lint ({mode}) reports problems:\n{text}"
        );
    }
}

#[test]
fn values_schema_refuses_typos_and_bad_values() {
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "tls.mod=selfManaged"], "'mod' not allowed"),
        (
            &["--set", "agent.defaultActivation=hot"],
            "/agent/defaultActivation",
        ),
        (&["--set", "replicaCont=3"], "'replicaCont' not allowed"),
        (&["--set", "tls.mode=letsEncrypt"], "/tls/mode"),
        (
            &["--set", "webhook.poolPods.failurePolicy=Never"],
            "/webhook/poolPods/failurePolicy",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec![
            "template",
            "t",
            chart::CHART,
            "--kube-version",
            chart::KUBE_VERSION,
        ];
        args.extend_from_slice(flags);
        let out = helm(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(
            err.contains(expected),
            "{flags:?}: error does not mention {expected:?}: {err}"
        );
    }
    // existingSecret without the Secret's name: the chart says which value is missing.
    let out = helm(&[
        "template",
        "t",
        chart::CHART,
        "--kube-version",
        chart::KUBE_VERSION,
        "--set",
        "tls.mode=existingSecret",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.secretName"));
}

/// Every key in values.yaml is explained by a comment directly above it or
/// above one of its parents (a block such as `resources.requests` is
/// documented once): values.yaml is the chart's field reference.
#[test]
fn values_yaml_documents_every_field() {
    let path = common::repo_root().join(chart::CHART).join("values.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("values.yaml: {e}"));
    // (indent, documented) of the keys enclosing the current line.
    let mut parents: Vec<(usize, bool)> = Vec::new();
    let mut comment_above = false;
    let mut undocumented = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() {
            comment_above = false;
            continue;
        }
        if trimmed.starts_with('#') {
            comment_above = true;
            continue;
        }
        let is_key = !trimmed.starts_with('-') && trimmed.contains(':');
        if is_key {
            while parents.last().is_some_and(|(ind, _)| *ind >= indent) {
                parents.pop();
            }
            let documented = comment_above || parents.last().is_some_and(|(_, d)| *d);
            if !documented {
                undocumented.push(format!("line {}: {line}", i + 1));
            }
            parents.push((indent, documented));
        }
        comment_above = false;
    }
    assert!(
        undocumented.is_empty(),
        "values.yaml keys without a comment:\n{}",
        undocumented.join("\n")
    );
}

/// The agent's default activation reaches the controller's flag.
#[test]
fn default_activation_is_a_value() {
    for (set, want) in [
        (None, "auto"),
        (Some("api"), "api"),
        (Some("start"), "start"),
    ] {
        let mut flags = vec!["--set".to_owned(), "tls.mode=selfManaged".to_owned()];
        if let Some(v) = set {
            flags.extend(["--set".to_owned(), format!("agent.defaultActivation={v}")]);
        }
        let docs = render("t", NS, &strs(&flags));
        let d = find(&docs, "Deployment", "t-zen-lead");
        let args = d["spec"]["template"]["spec"]["containers"][0]["args"].clone();
        let flag = format!("--default-activation={want}");
        assert!(
            args.as_array()
                .is_some_and(|a| a.iter().any(|x| x == flag.as_str())),
            "{flag} not in {args}"
        );
    }
}

#[test]
fn controller_pods_are_hardened_and_spread() {
    let docs = render("t", NS, &["--set", "tls.mode=selfManaged"]);
    let d = find(&docs, "Deployment", "t-zen-lead");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    // The controller always runs in the release namespace, whatever the
    // binary's own default.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&format!("--namespace={NS}").as_str()),
        "{args:?}"
    );
    let pdb = find(&docs, "PodDisruptionBudget", "t-zen-lead");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    // Hard spread is a value away.
    let docs = render(
        "t",
        NS,
        &["--set", "topologySpread.whenUnsatisfiable=DoNotSchedule"],
    );
    let d = find(&docs, "Deployment", "t-zen-lead");
    assert_eq!(
        d["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["whenUnsatisfiable"],
        "DoNotSchedule"
    );
}

#[test]
fn rbac_has_no_wildcards_and_every_rule_says_why() {
    for mode in MODES {
        let flags = mode_flags(mode);
        let docs = render("t", NS, &strs(&flags));
        for doc in docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        {
            for rule in doc["rules"].as_array().expect("rules") {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    for v in rule[field].as_array().into_iter().flatten() {
                        assert_ne!(
                            v, "*",
                            "{mode}: wildcard in {}: {rule}",
                            doc["metadata"]["name"]
                        );
                    }
                }
            }
        }
    }
    // Each rule in the template is preceded by a comment line.
    let text = std::fs::read_to_string(
        common::repo_root()
            .join(chart::CHART)
            .join("templates/rbac.yaml"),
    )
    .unwrap_or_else(|e| panic!("rbac.yaml: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            let above = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim_start().starts_with("{{"))
                .copied()
                .unwrap_or("");
            assert!(
                above.trim_start().starts_with('#'),
                "rbac.yaml line {}: rule without a comment saying why",
                i + 1
            );
        }
    }
    // selfManaged may touch only its own webhook configuration and Secret.
    let docs = render("t", NS, &["--set", "tls.mode=selfManaged"]);
    let role = find(&docs, "ClusterRole", "t-zen-lead");
    let mwc_rule = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["resources"] == json!(["mutatingwebhookconfigurations"]))
        .expect("selfManaged needs the webhook configuration");
    assert_eq!(mwc_rule["resourceNames"], json!(["t-zen-lead"]));
    let certs = render("t", NS, &["--set", "tls.mode=certManager"]);
    assert!(
        !certs.iter().any(|d| d["kind"] == "ClusterRole"
            && d["rules"]
                .to_string()
                .contains("mutatingwebhookconfigurations")),
        "certManager mode needs no access to webhook configurations"
    );
}

#[test]
fn webhook_configuration_has_both_entries_and_tls_wiring_per_mode() {
    for mode in MODES {
        let flags = mode_flags(mode);
        let docs = render("t", NS, &strs(&flags));
        let mwc = find(&docs, "MutatingWebhookConfiguration", "t-zen-lead");
        let hooks = mwc["webhooks"].as_array().expect("webhooks");
        assert_eq!(hooks.len(), 2, "{mode}");
        let by_name: BTreeMap<&str, &Value> = hooks
            .iter()
            .map(|h| (h["name"].as_str().expect("name"), h))
            .collect();
        let pool = by_name["pool-pods.webhook.zen-lead.io"];
        let other = by_name["other-pods.webhook.zen-lead.io"];
        assert_eq!(pool["failurePolicy"], "Fail");
        assert_eq!(other["failurePolicy"], "Ignore");
        assert_eq!(
            pool["objectSelector"]["matchExpressions"][0]["operator"],
            "Exists"
        );
        // Every pod, labelled ones too: the webhook labels a first-time
        // pool pod, and an entry that stopped matching would not be
        // reinvoked after a later webhook's change.
        assert!(
            other["objectSelector"]["matchExpressions"]
                .as_array()
                .is_none_or(|e| e.is_empty()),
            "{mode}: {}",
            other["objectSelector"]
        );
        for h in hooks {
            assert_eq!(h["clientConfig"]["service"]["name"], "t-zen-lead-webhook");
            assert_eq!(h["clientConfig"]["service"]["namespace"], NS);
            let excluded = &h["namespaceSelector"]["matchExpressions"][0]["values"];
            assert!(
                excluded.as_array().expect("values").contains(&json!(NS)),
                "{excluded}"
            );
        }
        let d = find(&docs, "Deployment", "t-zen-lead");
        let args = d["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        match mode {
            "certManager" => {
                assert_eq!(
                    mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                    format!("{NS}/t-zen-lead-webhook")
                );
                let cert = find(&docs, "Certificate", "t-zen-lead-webhook");
                assert_eq!(cert["spec"]["secretName"], "t-zen-lead-webhook-tls");
                assert_eq!(
                    cert["spec"]["dnsNames"][0],
                    format!("t-zen-lead-webhook.{NS}.svc")
                );
                assert_eq!(cert["spec"]["issuerRef"]["name"], "t-zen-lead-ca");
                find(&docs, "Issuer", "t-zen-lead-selfsigned");
                find(&docs, "Issuer", "t-zen-lead-ca");
                assert!(args.contains("--tls-mode=files"), "{args}");
            }
            "selfManaged" => {
                assert!(args.contains("--tls-mode=self-managed"), "{args}");
                assert!(args.contains("--webhook-config-name=t-zen-lead"), "{args}");
                assert!(d["spec"]["template"]["spec"]["volumes"].is_null());
            }
            _ => {
                assert!(args.contains("--tls-mode=files"), "{args}");
                assert_eq!(
                    d["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
                    "my-webhook-tls"
                );
            }
        }
    }
    // A user-named issuer replaces the chart's own CA chain.
    let docs = render(
        "t",
        NS,
        &[
            "--set",
            "tls.certManager.issuerRef.name=corp-ca",
            "--set",
            "tls.certManager.issuerRef.kind=ClusterIssuer",
        ],
    );
    assert!(!docs.iter().any(|d| d["kind"] == "Issuer"));
    let cert = find(&docs, "Certificate", "t-zen-lead-webhook");
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
}

#[test]
fn service_monitor_renders_only_when_enabled() {
    let off = render("t", NS, &[]);
    assert!(!off.iter().any(|d| d["kind"] == "ServiceMonitor"));
    let on = render("t", NS, &["--set", "metrics.serviceMonitor.enabled=true"]);
    let sm = find(&on, "ServiceMonitor", "t-zen-lead");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let svc = find(&on, "Service", "t-zen-lead-metrics");
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        svc["metadata"]["labels"]["app.kubernetes.io/component"]
    );
    // zen_lead_pool_* carry their pool's namespace: kept, not renamed.
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true);
}

/// The agents' PodMonitor scrapes what the webhook injects: the agent's
/// named port and /metrics, on every pod labelled zen-lead/pool, with the
/// pool label copied; its namespaces follow the watch scope.
#[test]
fn pod_monitor_scrapes_the_injected_agent_port() {
    let off = render("t", NS, &[]);
    assert!(!off.iter().any(|d| d["kind"] == "PodMonitor"));
    let on = render("t", NS, &["--set", "metrics.podMonitor.enabled=true"]);
    let pm = find(&on, "PodMonitor", "t-zen-lead-agents");
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        endpoint["port"],
        zen_lead::webhook::agent::AGENT_PORT_NAME,
        "the container port the webhook names"
    );
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "30s");
    assert_eq!(
        endpoint["relabelings"][0],
        json!({"sourceLabels": ["__meta_kubernetes_pod_label_zen_lead_pool"], "targetLabel": "pool"})
    );
    assert_eq!(
        pm["spec"]["selector"]["matchExpressions"][0],
        json!({"key": zen_lead::api::keys::POOL_LABEL, "operator": "Exists"})
    );
    assert_eq!(pm["spec"]["namespaceSelector"], json!({"any": true}));
    let scoped = render(
        "t",
        NS,
        &[
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "controller.watchNamespace=apps",
        ],
    );
    let pm = find(&scoped, "PodMonitor", "t-zen-lead-agents");
    assert_eq!(
        pm["spec"]["namespaceSelector"],
        json!({"matchNames": ["apps"]})
    );
    let listed = render(
        "t",
        NS,
        &[
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "controller.watchNamespace=apps",
            "--set",
            "metrics.podMonitor.namespaces={a,b}",
        ],
    );
    let pm = find(&listed, "PodMonitor", "t-zen-lead-agents");
    assert_eq!(
        pm["spec"]["namespaceSelector"],
        json!({"matchNames": ["a", "b"]})
    );
}

/// The NetworkPolicies are off by default; on, the controller's lets the
/// webhook in from every source and /metrics from `metricsFrom`, and each
/// listed pool namespace gets one that keeps the agent's probe port to
/// `probeFrom` (the node is always let in) and, unless told otherwise,
/// every other port open as before.
#[test]
fn network_policies_render_only_when_enabled() {
    use zen_lead::api::keys::POOL_LABEL;
    use zen_lead::contract::AGENT_PROBE_PORT;
    let off = render("t", NS, &[]);
    assert!(!off.iter().any(|d| d["kind"] == "NetworkPolicy"));
    let monitoring =
        r#"[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#;
    let on = render(
        "t",
        NS,
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "networkPolicy.agents.namespaces={shop,web}",
            "--set-json",
            &format!("networkPolicy.agents.probeFrom={monitoring}"),
            "--set-json",
            &format!("networkPolicy.metricsFrom={monitoring}"),
        ],
    );
    let controller = find(&on, "NetworkPolicy", "t-zen-lead");
    let rules = &controller["spec"]["ingress"];
    assert_eq!(rules[0]["ports"][0]["port"], "webhook");
    assert!(
        rules[0].get("from").is_none(),
        "the API server calls from anywhere"
    );
    assert_eq!(rules[1]["ports"][0]["port"], "admin");
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let agents: Vec<&Value> = on
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["name"] == "t-zen-lead-agents")
        .collect();
    let namespaces: Vec<&str> = agents
        .iter()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(namespaces, ["shop", "web"]);
    let spec = &agents[0]["spec"];
    assert_eq!(
        spec["podSelector"]["matchExpressions"][0]["key"],
        POOL_LABEL
    );
    assert_eq!(spec["ingress"][0]["ports"][0]["port"], AGENT_PROBE_PORT);
    assert_eq!(spec["ingress"][0]["from"].as_array().map(Vec::len), Some(1));
    let other = &spec["ingress"][1]["ports"];
    assert_eq!(other[0]["endPort"], AGENT_PROBE_PORT - 1);
    assert_eq!(other[1]["port"], AGENT_PROBE_PORT + 1);

    // Only the probe rule, or nothing at all but the node.
    let closed = render(
        "t",
        NS,
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "networkPolicy.agents.namespaces={shop}",
            "--set",
            "networkPolicy.agents.allowOtherPorts=false",
        ],
    );
    let agents = find(&closed, "NetworkPolicy", "t-zen-lead-agents");
    assert_eq!(agents["spec"]["ingress"], json!([]));
}

/// `kubectl apply --dry-run=server --validate=strict`: the API server checks
/// the objects against its own OpenAPI schemas (unknown fields are errors).
fn server_dry_run(manifests: &str, cache: &Path) {
    let file = cache.join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap_or_else(|e| panic!("write: {e}"));
    let out = kubectl(
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            &file.to_string_lossy(),
        ],
        cache,
    );
    assert!(
        out.status.success(),
        "server-side dry run refused the chart:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cache_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zl-chart-{name}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    dir
}

#[tokio::test]
async fn rendered_manifests_pass_server_side_dry_run() {
    let client = client().await;
    with_namespace(&client, "chart-dry", |_client, ns| async move {
        for mode in ["selfManaged", "existingSecret"] {
            let flags = mode_flags(mode);
            let mut args = strs(&flags);
            args.extend([
                "--include-crds",
                "--set",
                "webhook.configName=zl-dry-run-only",
            ]);
            let text = render_text(&ns, &ns, &args);
            server_dry_run(&text, &cache_dir(&format!("{ns}-{mode}")));
        }
    })
    .await;
}

// --- installs on the local cluster -----------------------------------------

/// One real create of an annotated pod (after [`chart::wait_webhook_reachable`]):
/// the API server calls the webhook — reachable only through the release's
/// Service — and the pod comes back with the agent.
async fn assert_webhook_injects(client: &Client, ns: &str, pool: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = pods
        .create(
            &PostParams::default(),
            &real_node_pod("webhook-probe", pool),
        )
        .await
        .unwrap_or_else(|e| panic!("creating an annotated pod: {e}"));
    assert!(
        has_agent(&created),
        "the webhook did not inject the agent: {:?}",
        created.spec
    );
    pods.delete("webhook-probe", &DeleteParams::default().grace_period(0))
        .await
        .unwrap_or_else(|e| panic!("deleting the probe pod: {e}"));
}

/// The seed README's example pool: a LeaderPolicy and a 3-replica annotated
/// Deployment (on the real node); waits until it is Stable with a holder.
async fn seed_pool_elects_a_leader(client: &Client, ns: &str) {
    let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let policy: LeaderPolicy = from_json(json!({
        "apiVersion": "coordination.kube-zen.io/v1alpha1",
        "kind": "LeaderPolicy",
        "metadata": {"name": "my-controller-pool"},
        "spec": {"leaseDurationSeconds": 15, "identityStrategy": "pod", "followerMode": "standby"}
    }));
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap_or_else(|e| panic!("creating the LeaderPolicy: {e}"));
    let deployment: Deployment = from_json(json!({
        "metadata": {"name": "my-controller"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "my-controller"}},
            "template": {
                "metadata": {
                    "labels": {"app": "my-controller"},
                    "annotations": {"zen-lead/pool": "my-controller-pool", "zen-lead/join": "true"}
                },
                "spec": {
                    "nodeSelector": {"zen-lead.io/node": "real"},
                    "tolerations": [{"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "app", "image": "localhost/zl-testapp:dev", "imagePullPolicy": "Never",
                                    "args": ["--listen=:8080"]}]
                }
            }
        }
    }));
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap_or_else(|e| panic!("creating the Deployment: {e}"));
    let holder = eventually(
        "LeaderPolicy my-controller-pool to be Stable with a holder",
        Duration::from_secs(180),
        || {
            let policies = policies.clone();
            async move {
                let p = policies
                    .get("my-controller-pool")
                    .await
                    .map_err(|e| e.to_string())?;
                let status = p.status.ok_or("no status yet")?;
                let holder = status
                    .current_holder
                    .as_ref()
                    .and_then(|h| h.name.clone())
                    .unwrap_or_default();
                if status.phase == Some(Phase::Stable) && !holder.is_empty() {
                    Ok(holder)
                } else {
                    Err(format!("phase {:?}, holder {holder:?}", status.phase))
                }
            }
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let leader = pods
        .get(&holder)
        .await
        .unwrap_or_else(|e| panic!("holder pod {holder}: {e}"));
    assert!(
        has_agent(&leader),
        "the holder {holder} runs without the agent"
    );
    assert_eq!(
        leader
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("zen-lead.io/role"))
            .map(String::as_str),
        Some("leader")
    );
}

/// After `helm uninstall`: nothing of the release is left in its namespace
/// or cluster-wide; the CRD stays (Helm never deletes crds/).
async fn assert_nothing_left(client: &Client, release: &Release, cache: &Path) {
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    eventually(
        "the controller pods to be gone",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            let selector = selector.clone();
            async move {
                let left = pods
                    .list(&kube::api::ListParams::default().labels(&selector))
                    .await
                    .map_err(|e| e.to_string())?;
                if left.items.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} pods", left.items.len()))
                }
            }
        },
    )
    .await;
    let out = kubectl(
        &[
            "get",
            "deployments,replicasets,services,serviceaccounts,secrets,configmaps,leases,roles,rolebindings,poddisruptionbudgets",
            "-n",
            &release.namespace,
            "-o",
            "name",
        ],
        cache,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let left: Vec<&str> = stdout
        .lines()
        .filter(|l| !matches!(*l, "serviceaccount/default" | "configmap/kube-root-ca.crt"))
        .collect();
    assert!(
        left.is_empty(),
        "helm uninstall left these behind: {left:?}"
    );
    for kind in [
        "clusterrole",
        "clusterrolebinding",
        "mutatingwebhookconfiguration",
    ] {
        let out = kubectl(
            &[
                "get",
                kind,
                &release.fullname,
                "--ignore-not-found",
                "-o",
                "name",
            ],
            cache,
        );
        assert!(out.status.success());
        assert!(
            out.stdout.is_empty(),
            "{kind} {} is still there",
            release.fullname
        );
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("leaderpolicies.coordination.kube-zen.io")
            .await
            .ok()
            .flatten()
            .is_some(),
        "the LeaderPolicy CRD must survive uninstall"
    );
}

#[tokio::test]
async fn self_managed_install_serves_the_webhook_runs_the_seed_pool_and_uninstalls_cleanly() {
    let client = client().await;
    with_namespace(&client, "chart-sm", |client, rel_ns| async move {
        with_namespace(&client, "chart-sm-app", |client, app_ns| async move {
            let cache = cache_dir(&rel_ns);
            let mut release = Release::install(
                &rel_ns,
                &scoped_values(&app_ns, "selfManaged"),
                &["--wait", "--timeout", "180s"],
            );
            release.wait_ready(&client, 2).await;

            // The controller put its CA into this release's webhook configuration.
            let secret: Secret = Api::namespaced(client.clone(), &rel_ns)
                .get(&format!("{}-webhook-tls", release.fullname))
                .await
                .unwrap_or_else(|e| panic!("the self-managed Secret: {e}"));
            let ca = secret
                .data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .cloned()
                .expect("ca.crt");
            assert!(!ca.0.is_empty(), "the Secret's ca.crt is empty");
            let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
            let mwc = mwcs
                .get(&release.fullname)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            for hook in mwc.webhooks.iter().flatten() {
                assert_eq!(
                    hook.client_config.ca_bundle.as_ref(),
                    Some(&ca),
                    "{}: caBundle",
                    hook.name
                );
            }

            // Workloads only once the API server reaches the webhook.
            wait_webhook_reachable(&client, &app_ns).await;
            assert_webhook_injects(&client, &app_ns, "zl-any-pool").await;
            seed_pool_elects_a_leader(&client, &app_ns).await;

            // An upgrade rolls the pods but keeps the controller's certificate
            // and the caBundle (the chart renders the Secret's live data).
            release.upgrade(&["--set", "podAnnotations.upgraded=yes"]);
            release.wait_ready(&client, 2).await;
            let after: Secret = Api::namespaced(client.clone(), &rel_ns)
                .get(&format!("{}-webhook-tls", release.fullname))
                .await
                .unwrap_or_else(|e| panic!("the self-managed Secret: {e}"));
            assert_eq!(
                after.data, secret.data,
                "helm upgrade changed the certificate"
            );
            let mwc = mwcs
                .get(&release.fullname)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            for hook in mwc.webhooks.iter().flatten() {
                assert_eq!(
                    hook.client_config.ca_bundle.as_ref(),
                    Some(&ca),
                    "{}: caBundle after upgrade",
                    hook.name
                );
            }
            wait_webhook_reachable(&client, &app_ns).await;

            release.uninstall();
            assert_nothing_left(&client, &release, &cache).await;
        })
        .await;
    })
    .await;
}

// --- certManager mode with cert-manager's real CRDs --------------------------

/// cert-manager release whose CRDs the test applies (from its Go module).
const CERT_MANAGER_VERSION: &str = "v1.17.2";

/// Downloads the `github.com/cert-manager/cert-manager` module through the Go
/// module proxy into target/ (cached) and returns its directory.
fn cert_manager_module() -> PathBuf {
    let base = common::repo_root().join("target/cert-manager-crds");
    let out = std::process::Command::new("go")
        .args(["mod", "download", "-json"])
        .arg(format!(
            "github.com/cert-manager/cert-manager@{CERT_MANAGER_VERSION}"
        ))
        .env("GOMODCACHE", base.join("modcache"))
        .env("GOPATH", base.join("gopath"))
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run go ({e}); the cluster build needs it too"));
    assert!(
        out.status.success(),
        "go mod download cert-manager failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("go mod download -json: {e}"));
    PathBuf::from(info["Dir"].as_str().expect("module Dir"))
}

/// cert-manager's CRD files are its Helm chart's templates: valid YAML whose
/// only templating is in comments and in label values. Drops those labels.
fn cert_manager_crd(module: &Path, file: &str) -> CustomResourceDefinition {
    let path = module.join("deploy/crds").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut doc: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Some(labels) = doc["metadata"]["labels"].as_object_mut() {
        labels.retain(|_, v| !v.as_str().is_some_and(|s| s.contains("{{")));
    }
    if let Some(annotations) = doc["metadata"]["annotations"].as_object_mut() {
        annotations.retain(|_, v| !v.as_str().is_some_and(|s| s.contains("{{")));
    }
    assert!(
        !doc.to_string().contains("{{"),
        "{file}: templating left outside labels"
    );
    from_json(doc)
}

fn cert_manager_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", kind),
        plural,
    )
}

/// TEST STAND-IN for cert-manager (whose controller cannot be built here).
/// Does what cert-manager would do for the chart's serving Certificate:
/// issues a CA-signed certificate for its dnsNames into its secretName (with
/// `ca.crt`, like a CA Issuer), then, as cainjector does for
/// `cert-manager.io/inject-ca-from`, copies that CA into every webhook's
/// caBundle of the annotated configuration.
async fn cert_manager_stand_in(client: &Client, ns: &str, certificate: &str, webhook_config: &str) {
    let certs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &cert_manager_resource("Certificate", "certificates"),
    );
    let cert = certs
        .get(certificate)
        .await
        .unwrap_or_else(|e| panic!("Certificate {certificate}: {e}"));
    let spec = &cert.data["spec"];
    let secret_name = spec["secretName"]
        .as_str()
        .expect("spec.secretName")
        .to_owned();
    let dns_names: Vec<String> = spec["dnsNames"]
        .as_array()
        .expect("spec.dnsNames")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let issued = zen_lead::tls::generate(&zen_lead::tls::CertRequest {
        dns_names,
        ip_addresses: Vec::new(),
        validity: Duration::from_secs(24 * 3600),
    })
    .unwrap_or_else(|e| panic!("stand-in issuing: {e}"));
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            annotations: Some(BTreeMap::from([(
                "cert-manager.io/certificate-name".to_owned(),
                certificate.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(issued.cert_pem.into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(issued.key_pem.into_bytes()),
            ),
            (
                "ca.crt".to_owned(),
                ByteString(issued.ca_cert_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("stand-in writing Secret {secret_name}: {e}"));

    // cainjector's part: only for a configuration that asks for this Certificate.
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut mwc = mwcs
        .get(webhook_config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let wanted = mwc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("cert-manager.io/inject-ca-from"))
        .cloned();
    assert_eq!(
        wanted,
        Some(format!("{ns}/{certificate}")),
        "inject-ca-from annotation"
    );
    for hook in mwc.webhooks.iter_mut().flatten() {
        hook.client_config.ca_bundle = Some(ByteString(issued.ca_cert_pem.clone().into_bytes()));
    }
    mwcs.replace(webhook_config, &PostParams::default(), &mwc)
        .await
        .unwrap_or_else(|e| panic!("stand-in injecting the CA: {e}"));
}

#[tokio::test]
async fn cert_manager_mode_with_real_crds_and_a_stand_in_issuer() {
    let client = client().await;
    let module = cert_manager_module();
    for file in [
        "crd-certificates.yaml",
        "crd-certificaterequests.yaml",
        "crd-issuers.yaml",
        "crd-clusterissuers.yaml",
    ] {
        apply_crd(&client, &cert_manager_crd(&module, file)).await;
    }
    with_namespace(&client, "chart-cm", |client, rel_ns| async move {
        with_namespace(&client, "chart-cm-app", |client, app_ns| async move {
            let cache = cache_dir(&rel_ns);
            let values = scoped_values(&app_ns, "certManager");
            // The real CRDs' schemas accept the chart's Issuers and Certificates
            // (strict: an unknown field would be an error, not pruned).
            let values_file = cache.join("values.yaml");
            std::fs::write(&values_file, &values).unwrap_or_else(|e| panic!("{e}"));
            let text = render_text(
                &rel_ns,
                &rel_ns,
                &[
                    "-f",
                    chart::LOCAL_VALUES,
                    "-f",
                    &values_file.to_string_lossy(),
                ],
            );
            server_dry_run(&text, &cache);

            let mut release = Release::install(&rel_ns, &values, &[]);
            let certs: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                &rel_ns,
                &cert_manager_resource("Certificate", "certificates"),
            );
            let issuers: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                &rel_ns,
                &cert_manager_resource("Issuer", "issuers"),
            );
            let serving = format!("{}-webhook", release.fullname);
            let stored = certs
                .get(&serving)
                .await
                .unwrap_or_else(|e| panic!("Certificate {serving}: {e}"));
            assert_eq!(
                stored.data["spec"]["privateKey"]["rotationPolicy"], "Always",
                "field kept by the CRD"
            );
            certs
                .get(&format!("{}-ca", release.fullname))
                .await
                .unwrap_or_else(|e| panic!("CA Certificate: {e}"));
            for issuer in ["selfsigned", "ca"] {
                issuers
                    .get(&format!("{}-{issuer}", release.fullname))
                    .await
                    .unwrap_or_else(|e| panic!("Issuer {issuer}: {e}"));
            }

            // Until the Secret exists the controller pods cannot start.
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &rel_ns);
            let d = deployments
                .get(&release.fullname)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(d.status.and_then(|s| s.ready_replicas).unwrap_or(0), 0);

            cert_manager_stand_in(&client, &rel_ns, &serving, &release.fullname).await;
            release.wait_ready(&client, 2).await;
            wait_webhook_reachable(&client, &app_ns).await;
            Api::<LeaderPolicy>::namespaced(client.clone(), &app_ns)
                .create(
                    &PostParams::default(),
                    &from_json(json!({
                        "apiVersion": "coordination.kube-zen.io/v1alpha1",
                        "kind": "LeaderPolicy",
                        "metadata": {"name": "cm-pool"},
                        "spec": {"activation": "start"}
                    })),
                )
                .await
                .unwrap_or_else(|e| panic!("LeaderPolicy: {e}"));
            assert_webhook_injects(&client, &app_ns, "cm-pool").await;
            release.uninstall();
        })
        .await;
    })
    .await;
}

// --- the controller and the chart's placeholder Secret ------------------------

/// Deletes a cluster-scoped webhook configuration when dropped, so a failed
/// test leaves none behind.
struct DeleteWebhookConfig(String);

impl Drop for DeleteWebhookConfig {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.0,
                "--ignore-not-found",
            ],
            &cache_dir(&self.0),
        );
    }
}

/// selfManaged: the chart creates the Secret with empty keys so the release
/// owns it. A Secret whose keys are empty — also one that still carries the
/// controller's expiry annotation, as after an older chart's upgrade blanked
/// it — must make the controller generate a certificate, not fail on it.
#[tokio::test]
async fn self_managed_controller_fills_an_emptied_secret() {
    let client = client().await;
    with_namespace(&client, "chart-ph", |client, ns| async move {
        let far = (std::time::SystemTime::now() + Duration::from_secs(300 * 24 * 3600))
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let placeholder = Secret {
            metadata: ObjectMeta {
                name: Some("placeholder-tls".to_owned()),
                annotations: Some(BTreeMap::from([(
                    zen_lead::webhook::self_managed::NOT_AFTER_ANNOTATION.to_owned(),
                    far.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_owned(), ByteString(Vec::new())),
                ("tls.key".to_owned(), ByteString(Vec::new())),
                // What a blanking upgrade leaves: the keys it renders emptied,
                // the CA the controller added still there.
                ("ca.crt".to_owned(), ByteString(b"stale".to_vec())),
            ])),
            ..Secret::default()
        };
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .create(&PostParams::default(), &placeholder)
            .await
            .unwrap_or_else(|e| panic!("placeholder Secret: {e}"));
        // A webhook configuration without entries: nothing calls it.
        let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let mwc: MutatingWebhookConfiguration =
            from_json(json!({"metadata": {"name": ns.clone()}}));
        mwcs.create(&PostParams::default(), &mwc)
            .await
            .unwrap_or_else(|e| panic!("webhook configuration: {e}"));
        let _cleanup = DeleteWebhookConfig(ns.clone());
        let admin = free_port();
        let log = std::fs::File::create(cache_dir(&ns).join("controller.log"))
            .unwrap_or_else(|e| panic!("log: {e}"));
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zen-lead"))
            .arg("controller")
            .args([
                "--tls-mode",
                "self-managed",
                "--namespace",
                &ns,
                "--watch-namespace",
                &ns,
            ])
            .args([
                "--webhook-config-name",
                &ns,
                "--tls-secret",
                "placeholder-tls",
            ])
            .args(["--webhook-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .env("KUBECONFIG", common::kubeconfig_path())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start zen-lead controller: {e}"));
        eventually(
            "the controller's /readyz",
            Duration::from_secs(60),
            || async move {
                common::http_ok("127.0.0.1", admin, "GET", "/readyz")
                    .await
                    .map(|_| ())
            },
        )
        .await;
        let filled = secrets
            .get("placeholder-tls")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let data = filled.data.unwrap_or_default();
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            assert!(
                data.get(key)
                    .is_some_and(|v| v.0.starts_with(b"-----BEGIN")),
                "{key} was not generated"
            );
        }
        let _ = child.kill().await;
    })
    .await;
}
