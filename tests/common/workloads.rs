//! Helpers for tests that apply workloads to the real node and check what
//! became of them: kubectl with a private cache, pods by selector, a pool's
//! Stable holder (with the pool's objects printed when the wait gives up).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use zen_lead::api::{LeaderPolicy, Phase};

use super::{eventually, kubectl};

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
