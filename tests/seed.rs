//! The seed README's own YAML, applied as written (tests/seed/*.yaml add only
//! what Kubernetes requires and the seed left out) to the local cluster with
//! the chart installed, and checked for what the seed promises: one leader of
//! three, `zen-lead/role` on every pod, the status the Status API section
//! names, and the annotation-only use cases working with no LeaderPolicy.

#[path = "common/chart.rs"]
mod chart;
mod common;

use chart::{has_agent, with_zen_lead};
use common::pod_ready;
use common::workloads::{
    annotation, assert_apart, cache, container_run, job_pods, job_succeeded, kubectl_ok, label,
    pods_where, stable_holder,
};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use zen_lead::api::{FollowerMode, IdentityStrategy, LeaderPolicy};

/// Applies tests/seed/`file` in `ns`, every pod template placed on the local
/// cluster's real node (the only placement this test adds; the YAML itself
/// stays as the seed wrote it).
fn apply_seed(ns: &str, file: &str) {
    let path = common::repo_root().join("tests/seed").join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    for doc in &mut docs {
        let template = match doc["kind"].as_str() {
            Some("Deployment") => &mut doc["spec"]["template"]["spec"],
            Some("CronJob") => &mut doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        template["nodeSelector"] = json!({"zen-lead.io/node": "real"});
        template["tolerations"] = json!([
            {"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}
        ]);
        template["terminationGracePeriodSeconds"] = json!(5);
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let placed = cache(ns).join(file.replace(".yaml", ".json"));
    std::fs::write(&placed, list.to_string())
        .unwrap_or_else(|e| panic!("write {}: {e}", placed.display()));
    kubectl_ok(ns, &["apply", "-f", &placed.to_string_lossy()]);
}

/// The pool's pods are all Ready with the agent; exactly `holder` is the
/// leader, by the role label and by the seed's `zen-lead/role` annotation,
/// and every other pod reads `follower`.
async fn one_leader(client: &Client, ns: &str, selector: &str, count: usize, holder: &str) {
    let pods = pods_where(
        client,
        ns,
        selector,
        count,
        "Ready with the agent, roles set",
        |p| {
            pod_ready(p)
                && has_agent(p)
                && annotation(p, "zen-lead/role").is_some()
                && label(p, "zen-lead.io/role").is_some()
        },
    )
    .await;
    for pod in &pods {
        let name = pod.name_any();
        let want = if name == holder { "leader" } else { "follower" };
        assert_eq!(annotation(pod, "zen-lead/role"), Some(want), "{name}");
        assert_eq!(label(pod, "zen-lead.io/role"), Some(want), "{name}");
    }
    assert!(
        pods.iter().any(|p| p.name_any() == holder),
        "holder {holder} is not one of {selector}"
    );
}

#[tokio::test]
async fn seed_controller_ha_and_status_api() {
    with_zen_lead("seed-ha", |client, ns| async move {
        apply_seed(&ns, "controller-ha.yaml");
        apply_seed(&ns, "configuration.yaml");

        // Step 1: accepted with its values, and not one zen-lead made.
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        for name in ["my-controller-pool", "my-pool"] {
            let p = policies
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("LeaderPolicy {name}: {e}"));
            assert_eq!(p.spec.lease_duration_seconds, 15, "{name}");
            assert_eq!(p.spec.identity_strategy, IdentityStrategy::Pod, "{name}");
            assert_eq!(p.spec.follower_mode, FollowerMode::Standby, "{name}");
            assert!(
                !p.annotations().contains_key("zen-lead.io/created-by"),
                "{name} is the user's"
            );
        }

        // Step 2's result: only 1 of 3 replicas is active.
        let holder = stable_holder(&client, &ns, "my-controller-pool").await;
        one_leader(&client, &ns, "app=my-controller", 3, &holder).await;

        // Status API: `kubectl get leaderpolicy my-pool -o yaml` shows phase,
        // currentHolder and candidates.
        let holder = stable_holder(&client, &ns, "my-pool").await;
        one_leader(&client, &ns, "app=my-pool-app", 2, &holder).await;
        let text = kubectl_ok(&ns, &["get", "leaderpolicy", "my-pool", "-o", "yaml"]);
        let shown: Value = serde_saphyr::from_str(&text).expect("kubectl printed YAML");
        let status = &shown["status"];
        assert_eq!(status["phase"], "Stable", "{text}");
        assert_eq!(status["currentHolder"]["name"], holder.as_str(), "{text}");
        assert!(status["currentHolder"]["uid"].is_string(), "{text}");
        assert_eq!(status["candidates"], 2, "{text}");
    })
    .await;
}

#[tokio::test]
async fn seed_annotation_only_use_cases_work_without_a_policy() {
    with_zen_lead("seed-uc", |client, ns| async move {
        apply_seed(&ns, "use-cases.yaml");
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);

        // Use Case 1 and the zen-suite blocks: one replica active each.
        for (app, pool) in [
            ("zen-flow", "flow-controller"),
            ("zen-watcher", "watcher-primary"),
            ("zen-lock", "lock-webhook"),
        ] {
            let holder = stable_holder(&client, &ns, pool).await;
            one_leader(&client, &ns, &format!("app={app}"), 2, &holder).await;
            let p = policies.get(pool).await.expect("the created policy");
            assert_eq!(
                p.annotations()
                    .get("zen-lead.io/created-by")
                    .map(String::as_str),
                Some("zen-lead-controller"),
                "{pool}"
            );
        }

        // Use Case 2: the CronJob's runs take turns, with no policy written.
        for job in ["report-a", "report-b"] {
            kubectl_ok(&ns, &["create", "job", job, "--from=cronjob/daily-report"]);
        }
        for job in ["report-a", "report-b"] {
            job_succeeded(&client, &ns, job).await;
        }
        let mut runs = Vec::new();
        for job in ["report-a", "report-b"] {
            let pods = job_pods(&client, &ns, job).await;
            let pod = pods.first().unwrap_or_else(|| panic!("{job}: no pod"));
            assert!(has_agent(pod), "{job}: no agent");
            let (started, finished) = container_run(pod, "report");
            runs.push((job, started, finished));
        }
        assert_apart(runs[0], runs[1]);
        let p = policies
            .get("report-generator")
            .await
            .expect("report-generator created");
        assert_eq!(
            p.annotations()
                .get("zen-lead.io/created-by")
                .map(String::as_str),
            Some("zen-lead-controller")
        );
    })
    .await;
}
