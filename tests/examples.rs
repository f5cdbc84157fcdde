//! Every example in examples/ applied to the local cluster as its README says,
//! and checked for what the README promises. zen-lead runs from the Helm
//! chart (selfManaged TLS, one replica to spare the shared node), installed
//! per test and scoped to that test's namespace.

#[path = "support/chart.rs"]
mod chart;
mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chart::{Release, has_agent, scoped_values, wait_webhook_reachable};
use common::{client, eventually, kubectl, pod_ready as is_ready, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use zen_lead::api::{LeaderPolicy, Phase};

const WAIT: Duration = Duration::from_secs(180);

fn cache(ns: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zl-examples-{ns}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    dir
}

/// `kubectl ARGS` in `ns`, failing the test with kubectl's output.
fn kubectl_ok(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    let out = kubectl(&all, &cache(ns));
    assert!(
        out.status.success(),
        "kubectl {}: {}{}",
        all.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply_example(ns: &str, file: &str) {
    let path = common::repo_root().join("examples").join(file);
    kubectl_ok(ns, &["apply", "-f", &path.to_string_lossy()]);
}

/// Runs `body` against a workload namespace that a fresh chart install serves.
/// One chart install at a time: four releases (each two controller pods plus
/// the example's workload) starting at once on the one real node of a 2-core
/// machine made a healthy install miss its deadlines.
static ONE_INSTALL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn with_zen_lead<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let _turn = ONE_INSTALL_AT_A_TIME.lock().await;
    let client = client().await;
    with_namespace(
        &client,
        &format!("{prefix}-rel"),
        |client, rel_ns| async move {
            with_namespace(&client, prefix, |client, app_ns| async move {
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

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Waits until the policy is Stable with a holder; returns the holder pod name.
async fn stable_holder(client: &Client, ns: &str, policy: &str) -> String {
    let api: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + WAIT;
    let dumped = std::sync::atomic::AtomicBool::new(false);
    eventually(
        &format!("LeaderPolicy {policy} Stable with a holder"),
        WAIT,
        || {
            // A failure should say why: the pool's objects as the API server
            // has them, once, just before the wait gives up.
            if tokio::time::Instant::now() + Duration::from_secs(2) >= deadline
                && !dumped.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let out = kubectl(
                    &[
                        "-n",
                        ns,
                        "get",
                        "pods,leases,leaderpolicies,events",
                        "-o",
                        "wide",
                    ],
                    &cache(ns),
                );
                eprintln!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let out = kubectl(
                    &["-n", ns, "get", "leases,leaderpolicies", "-o", "yaml"],
                    &cache(ns),
                );
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            }
            let api = api.clone();
            async move {
                let p = api.get(policy).await.map_err(|e| e.to_string())?;
                let status = p.status.ok_or("no status")?;
                let holder = status
                    .current_holder
                    .and_then(|h| h.name)
                    .unwrap_or_default();
                if status.phase == Some(Phase::Stable) && !holder.is_empty() {
                    Ok(holder)
                } else {
                    Err(format!("phase {:?}, holder {holder:?}", status.phase))
                }
            }
        },
    )
    .await
}

/// Waits until `count` pods match `selector` and `ok` holds for each.
async fn pods_where(
    client: &Client,
    ns: &str,
    selector: &str,
    count: usize,
    what: &str,
    ok: fn(&Pod) -> bool,
) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(&format!("{count} pods {selector} {what}"), WAIT, || {
        let api = api.clone();
        async move {
            let pods = api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| e.to_string())?
                .items;
            let good = pods.iter().filter(|p| ok(p)).count();
            if pods.len() == count && good == count {
                Ok(pods)
            } else {
                Err(format!("{} pods, {good} {what}", pods.len()))
            }
        }
    })
    .await
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
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        for job in ["run-a", "run-b"] {
            eventually(&format!("Job {job} to succeed"), WAIT, || {
                let jobs = jobs.clone();
                async move {
                    let j = jobs.get(job).await.map_err(|e| e.to_string())?;
                    let status = j.status.unwrap_or_default();
                    if status.failed.unwrap_or(0) > 0 {
                        panic!("Job {job} failed: {status:?}");
                    }
                    if status.succeeded == Some(1) {
                        Ok(())
                    } else {
                        Err(format!("{status:?}"))
                    }
                }
            })
            .await;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut runs = Vec::new();
        for job in ["run-a", "run-b"] {
            let list = pods
                .list(&ListParams::default().labels(&format!("job-name={job}")))
                .await
                .unwrap_or_else(|e| panic!("pods of {job}: {e}"));
            assert_eq!(list.items.len(), 1, "{job}: one pod");
            let pod = &list.items[0];
            assert!(has_agent(pod), "{job}: no agent");
            assert_eq!(
                annotation(pod, "zen-lead.io/pool-from"),
                Some("CronJob/nightly-report")
            );
            let report = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.iter().find(|c| c.name == "report"))
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .unwrap_or_else(|| panic!("{job}: report container not terminated"));
            let started = report.started_at.as_ref().expect("startedAt").0;
            let finished = report.finished_at.as_ref().expect("finishedAt").0;
            runs.push((job, started, finished));
        }
        let (a, b) = (&runs[0], &runs[1]);
        // Second-granularity timestamps: touching ends are not an overlap.
        assert!(
            b.1 >= a.2 || a.1 >= b.2,
            "the two runs overlapped: {a:?} and {b:?}"
        );
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
