//! Every example in examples/ applied to the local cluster as its README says
//! (with the real node's placement added: tests/cluster/place.sh), and
//! checked for what the README promises. zen-lead runs from the Helm
//! chart (selfManaged TLS, one replica to spare the shared node), installed
//! per test and scoped to that test's namespace.

#[path = "common/chart.rs"]
mod chart;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chart::{has_agent, with_zen_lead};
use common::workloads::{
    LeaderLabelWatch, WAIT, annotation, apply_on_real_node, assert_apart, job_pods, job_succeeded,
    kubectl_ok, label, logged_run, pods_where, stable_holder,
};
use common::{client, eventually, pod_ready as is_ready, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use zen_lead::api::LeaderPolicy;

/// An example applied as its README says, plus the local cluster's
/// placement (the example carries none).
fn apply_example(ns: &str, file: &str) {
    apply_on_real_node(ns, &[&format!("examples/{file}")]);
}

#[tokio::test]
async fn controller_ha() {
    with_zen_lead("ex-ha", |client, ns| async move {
        apply_example(&ns, "controller-ha/controller-ha.yaml");
        let holder = stable_holder(&client, &ns, "my-operator").await;
        // Hot standby: all three replicas Ready, leader or not.
        let pods = pods_where(&client, &ns, "app=my-operator", 3, "Ready", is_ready).await;
        for pod in &pods {
            let name = pod.metadata.name.as_deref().unwrap_or("?");
            assert!(has_agent(pod), "{name}: no agent");
            assert_eq!(
                annotation(pod, "zen-lead.io/activation"),
                Some("api"),
                "{name}"
            );
        }
        let leaders: Vec<&str> = pods
            .iter()
            .filter(|p| label(p, "zen-lead.io/role") == Some("leader"))
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(
            leaders,
            vec![holder.as_str()],
            "exactly the holder is labelled leader"
        );

        // A rolling restart moves leadership once: the terminating holder
        // hands off to a Ready pod of the new revision, never to an old pod
        // the rollout deletes next. Counted by the Lease's transitions.
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let transitions = |l: Lease| l.spec.and_then(|s| s.lease_transitions).unwrap_or(0);
        let before = transitions(leases.get("my-operator").await.expect("the pool's Lease"));
        let old: BTreeSet<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let labels = LeaderLabelWatch::start(&client, &ns);
        kubectl_ok(&ns, &["rollout", "restart", "deployment/my-operator"]);
        kubectl_ok(
            &ns,
            &[
                "rollout",
                "status",
                "deployment/my-operator",
                "--timeout=180s",
            ],
        );
        let pods = pods_where(&client, &ns, "app=my-operator", 3, "new and Ready", |p| {
            is_ready(p) && p.metadata.deletion_timestamp.is_none()
        })
        .await;
        assert!(
            pods.iter().all(|p| !old.contains(&p.name_any())),
            "the rollout replaced every pod"
        );
        let holder = stable_holder(&client, &ns, "my-operator").await;
        assert!(!old.contains(&holder), "{holder} is an old pod");
        let after = transitions(leases.get("my-operator").await.expect("the pool's Lease"));
        eprintln!(
            "leader changes during `kubectl rollout restart` of 3 replicas: {}",
            after - before
        );
        assert_eq!(
            after - before,
            1,
            "leadership moved once during the rollout"
        );
        labels.assert_never_two();
    })
    .await;
}

/// Whether `zen-lead run` in `pod`'s `app` container has started its CMD.
fn app_started(ns: &str, pod: &str) -> bool {
    kubectl_ok(ns, &["logs", pod, "-c", "app"]).contains("CMD started")
}

async fn wait_app_started(ns: &str, pod: &str) {
    eventually(&format!("{pod}'s app to start"), WAIT, || async move {
        app_started(ns, pod)
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
}

/// `make demo`'s pool (examples/demo/pool.yaml, `activation: process`):
/// every pod Ready, the app runs only in the leader's pod, and `kubectl
/// rollout restart` completes with the app running in a new pod.
#[tokio::test]
async fn demo_process_pool() {
    with_zen_lead("ex-demo", |client, ns| async move {
        apply_example(&ns, "demo/pool.yaml");
        let pods = pods_where(&client, &ns, "app=demo-workers", 3, "Ready", is_ready).await;
        let old: BTreeSet<String> = pods.iter().map(ResourceExt::name_any).collect();
        for pod in &pods {
            assert_eq!(
                annotation(pod, "zen-lead.io/activation"),
                Some("process"),
                "{}",
                pod.name_any()
            );
        }
        let holder = stable_holder(&client, &ns, "demo-workers").await;
        wait_app_started(&ns, &holder).await;
        for name in old.iter().filter(|p| **p != holder) {
            assert!(
                !app_started(&ns, name),
                "{name}'s app runs, but {holder} leads"
            );
        }

        kubectl_ok(&ns, &["rollout", "restart", "deployment/demo-workers"]);
        kubectl_ok(
            &ns,
            &[
                "rollout",
                "status",
                "deployment/demo-workers",
                "--timeout=180s",
            ],
        );
        // The rollout is complete once the new pods are Ready; the old
        // holder hands over when its own SIGTERM has stopped its app.
        let new = eventually("a new pod to hold the pool", WAIT, || {
            let (client, ns, old) = (client.clone(), ns.clone(), old.clone());
            async move {
                let holder = stable_holder(&client, &ns, "demo-workers").await;
                (!old.contains(&holder))
                    .then_some(holder.clone())
                    .ok_or_else(|| format!("{holder} is an old pod"))
            }
        })
        .await;
        wait_app_started(&ns, &new).await;
    })
    .await;
}

#[tokio::test]
async fn exclusive_cronjob() {
    with_zen_lead("ex-cron", |client, ns| async move {
        apply_example(&ns, "exclusive-cronjob/cronjob.yaml");
        // The README's two overlapping manual runs.
        kubectl_ok(
            &ns,
            &["create", "job", "run-a", "--from=cronjob/nightly-report"],
        );
        kubectl_ok(
            &ns,
            &["create", "job", "run-b", "--from=cronjob/nightly-report"],
        );
        for job in ["run-a", "run-b"] {
            job_succeeded(&client, &ns, job).await;
        }
        let mut runs = Vec::new();
        for job in ["run-a", "run-b"] {
            let pods = job_pods(&client, &ns, job).await;
            assert_eq!(pods.len(), 1, "{job}: one pod");
            let pod = &pods[0];
            assert!(has_agent(pod), "{job}: no agent");
            assert_eq!(
                annotation(pod, "zen-lead.io/pool-from"),
                Some("CronJob/nightly-report")
            );
            // Job pods whose app has a command get `process` activation
            // (`auto`): the container starts at once and `zen-lead run`
            // holds the report program, so the program's own lines tell
            // when it ran.
            assert_eq!(annotation(pod, "zen-lead.io/activation"), Some("process"));
            let (started, finished) = logged_run(
                &ns,
                &pod.name_any(),
                "report",
                "report started",
                "report done",
            );
            runs.push((job, started, finished));
        }
        assert_apart(runs[0], runs[1]);
    })
    .await;
}

#[tokio::test]
async fn scale_down_webhook() {
    with_zen_lead("ex-scale", |client, ns| async move {
        apply_example(&ns, "scale-down-webhook/scale-down.yaml");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        eventually("hook-receiver scaled to 1 with 3 recorded", WAIT, || {
            let deployments = deployments.clone();
            async move {
                let d = deployments
                    .get("hook-receiver")
                    .await
                    .map_err(|e| e.to_string())?;
                let replicas = d.spec.as_ref().and_then(|s| s.replicas);
                let original = d
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("zen-lead.io/original-replicas"))
                    .cloned();
                if replicas == Some(1) && original.as_deref() == Some("3") {
                    Ok(())
                } else {
                    Err(format!("replicas {replicas:?}, original {original:?}"))
                }
            }
        })
        .await;
        let holder = stable_holder(&client, &ns, "hook-receiver").await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // The Service's only endpoint is the leader.
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        eventually(
            "the Service's endpoints to be the leader only",
            WAIT,
            || {
                let (slices, pods, holder) = (slices.clone(), pods.clone(), holder.clone());
                async move {
                    let leader = pods.get(&holder).await.map_err(|e| e.to_string())?;
                    let ip = leader
                        .status
                        .and_then(|s| s.pod_ip)
                        .ok_or("leader has no IP yet")?;
                    let list = slices
                        .list(
                            &ListParams::default()
                                .labels("kubernetes.io/service-name=hook-receiver"),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let ready: Vec<String> = list
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.iter())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                        .flat_map(|e| e.addresses.iter().cloned())
                        .collect();
                    if ready == vec![ip.clone()] {
                        Ok(())
                    } else {
                        Err(format!("ready endpoints {ready:?}, leader {ip}"))
                    }
                }
            },
        )
        .await;
        // Deleting the policy gives the Deployment its replicas back.
        Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
            .delete("hook-receiver", &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting the policy: {e}"));
        eventually("hook-receiver restored to 3", WAIT, || {
            let deployments = deployments.clone();
            async move {
                let d = deployments
                    .get("hook-receiver")
                    .await
                    .map_err(|e| e.to_string())?;
                match d.spec.and_then(|s| s.replicas) {
                    Some(3) => Ok(()),
                    other => Err(format!("replicas {other:?}")),
                }
            }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn statefulset() {
    with_zen_lead("ex-sts", |client, ns| async move {
        apply_example(&ns, "statefulset/statefulset.yaml");
        let holder = stable_holder(&client, &ns, "db-primary").await;
        assert!(
            ["db-0", "db-1", "db-2"].contains(&holder.as_str()),
            "holder {holder}"
        );
        let pods = pods_where(&client, &ns, "app=db", 3, "Ready with the agent", |p| {
            is_ready(p) && has_agent(p)
        })
        .await;
        let leaders = pods
            .iter()
            .filter(|p| label(p, "zen-lead.io/role") == Some("leader"))
            .count();
        assert_eq!(leaders, 1, "one leader among the StatefulSet's pods");
        // spec.leaderService: the Service's one endpoint is the leader.
        let routed = eventually(
            "db-primary's EndpointSlice to name the leader",
            Duration::from_secs(60),
            || {
                let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
                async move {
                    let s = slices
                        .get("db-primary-zen-lead")
                        .await
                        .map_err(|e| e.to_string())?;
                    let names: Vec<String> = s
                        .endpoints
                        .iter()
                        .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.clone()))
                        .collect();
                    match names.as_slice() {
                        [one] => Ok(one.clone()),
                        other => Err(format!("endpoints {other:?}")),
                    }
                }
            },
        )
        .await;
        assert_eq!(routed, holder);
    })
    .await;
}

/// The lock example needs no webhook or controller: only the Lease and RBAC.
#[tokio::test]
async fn lock_job() {
    let client = client().await;
    with_namespace(&client, "ex-lock", |client, ns| async move {
        apply_example(&ns, "lock-job/lock-job.yaml");
        kubectl_ok(
            &ns,
            &[
                "wait",
                "job/schema-migration",
                "--for=condition=Complete",
                "--timeout=180s",
            ],
        );
        let logs = kubectl_ok(
            &ns,
            &[
                "logs",
                "-l",
                "job-name=schema-migration",
                "--prefix",
                "--tail=-1",
            ],
        );
        let tokens: BTreeSet<&str> = logs
            .lines()
            .filter(|l| l.contains("lock acquired"))
            .filter_map(|l| l.split("fencing_token=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert_eq!(
            tokens.len(),
            3,
            "three holders, each with its own fencing token:\n{logs}"
        );
        let lease = Api::<Lease>::namespaced(client.clone(), &ns)
            .get("schema-migration")
            .await
            .unwrap_or_else(|e| panic!("the lock's Lease: {e}"));
        let transitions = lease.spec.and_then(|s| s.lease_transitions).unwrap_or(0);
        assert!(
            transitions >= 2,
            "the Lease changed hands {transitions} times"
        );
    })
    .await;
}
