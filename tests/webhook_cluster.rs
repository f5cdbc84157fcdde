//! The webhook against the local cluster: the real API server calls a
//! webhook started by the test on loopback, registered with
//! `webhook-config/local.yaml` scoped to the test's namespace (so parallel
//! tests do not see each other's webhooks) and removed afterwards
//! (`common::webhook::start_webhook`).

mod common;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use zen_lead::api::keys::{CANDIDATE_READINESS_GATE, POOL_FROM_ANNOTATION, POOL_LABEL};
use zen_lead::contract::AGENT_CONTAINER;

use common::webhook::{WAIT, has_agent, start_webhook};

/// Asserts everything the webhook promises on an injected pod.
fn assert_injected(pod: &Pod, pool: &str, from: &str) {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    assert!(
        has_agent(pod),
        "pod {name}: agent is not the first init container"
    );
    let spec = pod.spec.as_ref().expect("spec");
    let agent = &spec.init_containers.as_ref().expect("init")[0];
    assert_eq!(
        agent.restart_policy.as_deref(),
        Some("Always"),
        "pod {name}"
    );
    assert!(
        spec.readiness_gates
            .iter()
            .flatten()
            .any(|g| g.condition_type == CANDIDATE_READINESS_GATE),
        "pod {name}: no readiness gate"
    );
    assert_eq!(
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POOL_LABEL))
            .map(String::as_str),
        Some(pool),
        "pod {name}: pool label"
    );
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POOL_FROM_ANNOTATION))
            .map(String::as_str),
        Some(from),
        "pod {name}: pool-from annotation"
    );
}

async fn pods_with(client: &Client, ns: &str, selector: &str, count: usize) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = selector.to_owned();
    common::eventually(&format!("{count} pods with {selector}"), WAIT, || {
        let pods = pods.clone();
        let selector = selector.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            if list.items.len() >= count {
                Ok(list.items)
            } else {
                Err(format!("{} pods so far", list.items.len()))
            }
        }
    })
    .await
}

async fn create_policy(client: &Client, ns: &str, name: &str) {
    common::apply_crd(client, &zen_lead::api::crd()).await;
    let api: Api<zen_lead::api::LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let policy: zen_lead::api::LeaderPolicy = serde_json::from_value(json!({
        "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
        "metadata": {"name": name}, "spec": {}
    }))
    .expect("policy");
    api.create(&PostParams::default(), &policy)
        .await
        .expect("create LeaderPolicy");
}

fn deployment(
    name: &str,
    replicas: i32,
    metadata_annotations: serde_json::Value,
    template_annotations: serde_json::Value,
) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": metadata_annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": template_annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }
        }
    }))
    .expect("deployment")
}

#[tokio::test]
async fn annotated_deployment_pods_carry_the_agent_and_gate() {
    let client = common::client().await;
    common::with_namespace(&client, "wh-deploy", |client, ns| async move {
        let webhook = start_webhook(&client, &ns).await;
        create_policy(&client, &ns, "orders").await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        // Annotation on the pod template (the seed's style) ...
        deployments
            .create(
                &PostParams::default(),
                &deployment("tmpl", 2, json!({}), json!({"zen-lead/pool": "orders"})),
            )
            .await
            .expect("deployment");
        // ... and on the Deployment's own metadata only.
        deployments
            .create(
                &PostParams::default(),
                &deployment("meta", 1, json!({"zen-lead/pool": "orders"}), json!({})),
            )
            .await
            .expect("deployment");
        for pod in pods_with(&client, &ns, "app=tmpl", 2).await {
            assert_injected(&pod, "orders", "pod");
        }
        for pod in pods_with(&client, &ns, "app=meta", 1).await {
            // The ReplicaSet carries the Deployment's annotations (the
            // Deployment controller copies them), so it is the nearest owner
            // that names the pool.
            let from = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(POOL_FROM_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            assert!(
                from.starts_with("ReplicaSet/meta-") || from == "Deployment/meta",
                "{from}"
            );
            assert_injected(&pod, "orders", &from);
        }
        webhook.stop().await;
    })
    .await;
}

#[tokio::test]
async fn annotated_cronjob_job_pods_carry_the_agent() {
    let client = common::client().await;
    common::with_namespace(&client, "wh-cron", |client, ns| async move {
        let webhook = start_webhook(&client, &ns).await;
        create_policy(&client, &ns, "report-generator").await;
        let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
        // Suspended, so the test, not the clock, decides when a Job exists.
        let cron: CronJob = serde_json::from_value(json!({
            "metadata": {"name": "daily-report", "annotations": {"zen-lead/pool": "report-generator"}},
            "spec": {
                "schedule": "* * * * *", "suspend": true,
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "report", "image": "registry.example/report:1"}]}}}}
            }
        }))
        .expect("cronjob");
        let cron = cronjobs.create(&PostParams::default(), &cron).await.expect("cronjob");
        // A Job as the CronJob controller makes it: its template, owned by the CronJob.
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "daily-report-manual", "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": "daily-report",
                "uid": cron.metadata.uid.clone().expect("uid"), "controller": true, "blockOwnerDeletion": true}]},
            "spec": serde_json::to_value(&cron.spec.as_ref().expect("spec").job_template.spec).expect("spec"),
        }))
        .expect("job");
        Api::<Job>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &job)
            .await
            .expect("job");
        let pods = pods_with(&client, &ns, "batch.kubernetes.io/job-name=daily-report-manual", 1).await;
        assert_injected(&pods[0], "report-generator", "CronJob/daily-report");
        webhook.stop().await;
    })
    .await;
}

/// Issue 30, finding 8: an owner reference names an object of the pod's own
/// namespace. A pod that names the UID (and name) of another namespace's
/// annotated ReplicaSet borrows nothing: before, the webhook's owner index,
/// keyed by UID alone, answered with the other namespace's object and made
/// the pod a member of that pool.
#[tokio::test]
async fn an_owner_reference_into_another_namespace_borrows_nothing() {
    let client = common::client().await;
    let other = common::create_namespace(&client, "wh-lender").await;
    let rs: k8s_openapi::api::apps::v1::ReplicaSet = common::from_json(json!({
        "metadata": {"name": "lender", "annotations": {"zen-lead/pool": "borrowed"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "lender"}},
                 "template": {"metadata": {"labels": {"app": "lender"}},
                              "spec": {"containers": [{"name": "c", "image": "probe"}]}}}
    }));
    let lender = Api::namespaced(client.clone(), &other)
        .create(&PostParams::default(), &rs)
        .await
        .expect("the other namespace's ReplicaSet");
    common::with_namespace(&client, "wh-borrow", |client, ns| async move {
        let webhook = start_webhook(&client, &ns).await;
        // The lender is in the webhook's owner index before the pod comes.
        common::wait_until("the webhook's indexes listed", WAIT, || {
            webhook.lookup.synced()
        })
        .await;
        let pod: Pod = common::from_json(json!({
            "metadata": {"name": "borrower", "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "lender",
                "uid": lender.metadata.uid, "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "probe"}]}
        }));
        let created = Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
            .expect("the borrowing pod");
        assert!(
            !has_agent(&created),
            "a pod owned (it says) by another namespace's ReplicaSet joined its pool"
        );
        webhook.stop().await;
    })
    .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&other, &DeleteParams::background())
        .await;
}

#[tokio::test]
async fn unannotated_pods_are_untouched() {
    let client = common::client().await;
    common::with_namespace(&client, "wh-plain", |client, ns| async move {
        let webhook = start_webhook(&client, &ns).await;
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &deployment("plain", 2, json!({}), json!({})),
            )
            .await
            .expect("deployment");
        let pods = pods_with(&client, &ns, "app=plain", 2).await;
        for pod in &pods {
            assert!(!has_agent(pod), "unannotated pod was injected");
            assert!(
                pod.spec
                    .as_ref()
                    .and_then(|s| s.readiness_gates.as_ref())
                    .is_none()
            );
            assert!(
                pod.metadata
                    .labels
                    .as_ref()
                    .is_none_or(|l| !l.contains_key(POOL_LABEL))
            );
        }
        // Not vacuous: the webhook did see them, and said "not in a pool".
        let metrics = webhook.metrics().await;
        assert!(metrics.contains("outcome=\"not_in_pool\""), "{metrics}");
        webhook.stop().await;
    })
    .await;
}

#[tokio::test]
async fn restricted_namespace_admits_injected_pods() {
    let client = common::client().await;
    common::with_namespace(&client, "wh-restricted", |client, ns| async move {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest"}}})),
            )
            .await
            .expect("label namespace");
        let webhook = start_webhook(&client, &ns).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // The control: a non-compliant pod is refused here, so the namespace
        // really enforces `restricted`.
        let plain: Pod = serde_json::from_value(json!({
            "metadata": {"name": "not-compliant"},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
        }))
        .expect("pod");
        let err = pods.create(&PostParams::default(), &plain).await.expect_err("must be refused");
        assert!(err.to_string().contains("restricted"), "{err}");
        // A compliant app in a pool: admitted with the agent.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "compliant", "annotations": {"zen-lead/pool": "secure"}},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "app", "image": "registry.example/app:1",
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]
            }
        }))
        .expect("pod");
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("an injected compliant pod must pass `restricted`: {e}"));
        assert_injected(&created, "secure", "pod");
        webhook.stop().await;
    })
    .await;
}

/// `identityStrategy: custom` needs a pod's own identity. A Deployment whose
/// template carries one would give all its replicas (and, in a rollout, old
/// and new pods) the same identity: its pods are refused, and the refusal
/// shows on the ReplicaSet where `kubectl describe` finds it. A pod without
/// the annotation is refused with the fix; a pod with its own is injected and
/// its agent is told the strategy.
#[tokio::test]
async fn custom_identity_pods_are_checked_at_admission() {
    let client = common::client().await;
    common::with_namespace(&client, "wh-custom", |client, ns| async move {
        let webhook = start_webhook(&client, &ns).await;
        common::apply_crd(&client, &zen_lead::api::crd()).await;
        let policies: Api<zen_lead::api::LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        let policy: zen_lead::api::LeaderPolicy = serde_json::from_value(json!({
            "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
            "metadata": {"name": "workers"},
            "spec": {"identityStrategy": "custom", "activation": "start"}
        }))
        .expect("policy");
        policies
            .create(&PostParams::default(), &policy)
            .await
            .expect("create LeaderPolicy");
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &deployment(
                    "worker",
                    3,
                    json!({}),
                    json!({"zen-lead/pool": "workers", "zen-lead/identity": "worker"}),
                ),
            )
            .await
            .expect("deployment");
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
        let refusal = common::eventually("the ReplicaSet's FailedCreate event", WAIT, || {
            let events = events.clone();
            async move {
                let list = events
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                list.items
                    .into_iter()
                    .find(|e| {
                        e.involved_object.kind.as_deref() == Some("ReplicaSet")
                            && e.reason.as_deref() == Some("FailedCreate")
                    })
                    .and_then(|e| e.message)
                    .ok_or_else(|| "no FailedCreate event yet".to_owned())
            }
        })
        .await;
        for part in [
            "identityStrategy: custom",
            "\"worker\"",
            "Deployment/worker",
            "use identityStrategy: pod",
        ] {
            assert!(refusal.contains(part), "{part:?} missing from: {refusal}");
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let running = pods
            .list(&ListParams::default().labels("app=worker"))
            .await
            .expect("list pods");
        assert!(running.items.is_empty(), "pods were admitted: {running:?}");

        let bare = |name: &str, identity: Option<&str>| -> Pod {
            let mut annotations = json!({"zen-lead/pool": "workers"});
            if let Some(identity) = identity {
                annotations["zen-lead/identity"] = json!(identity);
            }
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }))
            .expect("pod")
        };
        let err = pods
            .create(&PostParams::default(), &bare("nameless", None))
            .await
            .expect_err("a custom pool pod without an identity is refused");
        let text = err.to_string();
        assert!(
            text.contains("zen-lead/identity") && text.contains("\"workers\""),
            "{text}"
        );
        let admitted = pods
            .create(&PostParams::default(), &bare("primary", Some("primary")))
            .await
            .expect("a pod with its own identity is admitted");
        let spec = admitted.spec.expect("spec");
        let agent = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == AGENT_CONTAINER)
            .expect("agent injected");
        let strategy = agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "ZEN_LEAD_IDENTITY_STRATEGY")
            .and_then(|e| e.value.clone());
        assert_eq!(strategy.as_deref(), Some("custom"));
        webhook.stop().await;
    })
    .await;
}
