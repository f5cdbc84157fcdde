//! Helpers for tests that apply workloads to the real node and check what
//! became of them: kubectl with a private cache, pods by selector, a pool's
//! Stable holder (with the pool's objects printed when the wait gives up),
//! Job runs, a watch that catches two pods labelled leader at once, and
//! manifests applied with the real node's placement added.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use zen_lead::api::keys::{ROLE_LABEL, ROLE_LEADER};
use zen_lead::api::{LeaderPolicy, Phase};

use super::{eventually, kubectl, kubectl_path, repo_root, run_ok};

/// How long a workload on the real node gets to reach a state.
pub const WAIT: Duration = Duration::from_secs(180);

pub fn cache(ns: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zl-examples-{ns}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    dir
}

/// `kubectl ARGS` in `ns`, failing the test with kubectl's output.
pub fn kubectl_ok(ns: &str, args: &[&str]) -> String {
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

/// `kubectl apply` in `ns` of manifest files (paths from the repository's
/// root) as the local cluster needs them: every pod template placed on its
/// real node by tests/cluster/place.sh. The files carry no placement, so
/// that they run on any cluster as written (examples/).
pub fn apply_on_real_node(ns: &str, files: &[&str]) -> String {
    let mut place = std::process::Command::new("bash");
    place
        .arg(repo_root().join("tests/cluster/place.sh"))
        .args(files.iter().map(|f| repo_root().join(f)))
        .env("KUBECTL", kubectl_path());
    let out = run_ok(&mut place, "tests/cluster/place.sh");
    let placed = cache(ns).join("placed.yaml");
    std::fs::write(&placed, &out.stdout)
        .unwrap_or_else(|e| panic!("writing {}: {e}", placed.display()));
    kubectl_ok(ns, &["apply", "-f", &placed.to_string_lossy()])
}

pub fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Waits until the policy is Stable with a holder; returns the holder pod name.
pub async fn stable_holder(client: &Client, ns: &str, policy: &str) -> String {
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
pub async fn pods_where(
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

/// Waits until Job `job` succeeded; a failed Job fails the test at once.
pub async fn job_succeeded(client: &Client, ns: &str, job: &str) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    eventually(&format!("Job {job} to succeed"), WAIT, || {
        let jobs = jobs.clone();
        async move {
            let status = jobs
                .get(job)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            assert_eq!(
                status.failed.unwrap_or(0),
                0,
                "Job {job} failed: {status:?}"
            );
            (status.succeeded == Some(1))
                .then_some(())
                .ok_or(format!("{status:?}"))
        }
    })
    .await;
}

/// The pods of Job `job`.
pub async fn job_pods(client: &Client, ns: &str, job: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .unwrap_or_else(|e| panic!("pods of {job}: {e}"))
        .items
}

/// When `container` of `pod` ran: the (startedAt, finishedAt) of its
/// terminated state.
pub fn container_run(pod: &Pod, container: &str) -> (Timestamp, Timestamp) {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let ended = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .unwrap_or_else(|| panic!("{name}: {container} container not terminated"));
    let started = ended.started_at.as_ref().expect("startedAt").0;
    let finished = ended.finished_at.as_ref().expect("finishedAt").0;
    (started, finished)
}

/// When a program in `pod`'s `container` logged its `first` and `last`
/// lines, as the kubelet timestamped them (`kubectl logs --timestamps`): the
/// program's run where the container's own start and end say nothing, as
/// under `zen-lead run`, which holds the program while the container runs.
pub fn logged_run(
    ns: &str,
    pod: &str,
    container: &str,
    first: &str,
    last: &str,
) -> (Timestamp, Timestamp) {
    let logs = kubectl_ok(ns, &["logs", pod, "-c", container, "--timestamps"]);
    let at = |text: &str| -> Timestamp {
        let line = logs
            .lines()
            .find(|l| l.ends_with(text))
            .unwrap_or_else(|| panic!("{pod}/{container}: no line {text:?} in:\n{logs}"));
        let stamp = line.split(' ').next().unwrap_or_default();
        stamp
            .parse()
            .unwrap_or_else(|e| panic!("{pod}/{container}: timestamp {stamp:?}: {e}"))
    };
    (at(first), at(last))
}

/// Two runs, with the API server's second-granularity times, did not
/// overlap (touching ends are not an overlap).
pub fn assert_apart(a: (&str, Timestamp, Timestamp), b: (&str, Timestamp, Timestamp)) {
    assert!(
        b.1 >= a.2 || a.1 >= b.2,
        "the two runs overlapped: {a:?} and {b:?}"
    );
}

/// Watches the namespace's pods and records every instant at which more
/// than one pod carried `zen-lead.io/role: leader`.
pub struct LeaderLabelWatch {
    violations: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderLabelWatch {
    pub fn start(client: &Client, ns: &str) -> Self {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let violations = Arc::new(Mutex::new(Vec::new()));
        let v = violations.clone();
        let task = tokio::spawn(async move {
            let mut leaders: BTreeSet<String> = BTreeSet::new();
            let stream = watcher::watcher(api, watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(ev)) = stream.try_next().await {
                match ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        if label(&p, ROLE_LABEL) == Some(ROLE_LEADER) {
                            leaders.insert(p.name_any());
                        } else {
                            leaders.remove(&p.name_any());
                        }
                    }
                    watcher::Event::Delete(p) => {
                        leaders.remove(&p.name_any());
                    }
                    _ => {}
                }
                if leaders.len() > 1 {
                    v.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{leaders:?}"));
                }
            }
        });
        LeaderLabelWatch { violations, task }
    }

    pub fn assert_never_two(&self) {
        let v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
        assert!(v.is_empty(), "two pods were labelled leader at once: {v:?}");
    }
}

impl Drop for LeaderLabelWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Restarts the Deployment's pods as `kubectl rollout restart` does.
pub async fn rollout_restart(deploys: &Api<Deployment>, name: &str, stamp: &str) {
    deploys
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": stamp}}}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("restart {name}: {e}"));
}

/// Waits until the Deployment's rollout is complete: every replica updated,
/// Ready, and no old one left.
pub async fn rollout_complete(
    deploys: &Api<Deployment>,
    name: &str,
    replicas: i32,
    limit: Duration,
) {
    eventually(&format!("the rollout of {name} to complete"), limit, || {
        let deploys = deploys.clone();
        async move {
            let d = deploys.get(name).await.map_err(|e| e.to_string())?;
            let s = d.status.unwrap_or_default();
            let gen_seen = s.observed_generation >= d.metadata.generation;
            if gen_seen
                && s.updated_replicas == Some(replicas)
                && s.ready_replicas == Some(replicas)
                && s.replicas == Some(replicas)
            {
                Ok(())
            } else {
                Err(format!("status {s:?}"))
            }
        }
    })
    .await;
}
