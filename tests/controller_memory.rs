//! `make bench-memory`: the controller's memory with many large workloads
//! of another tenant in its scope, against the same controller before they
//! exist. Every Deployment and StatefulSet in scope is cached (scaleDown
//! finds them even at 0 replicas), so the cache must keep only what the
//! decisions read (`controller::watch::slim`), not their pod templates.

mod common;

use std::path::Path;
use std::time::Duration;

use common::zen_lead_host::start_controller;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// The process's resident memory, in KiB: (current, peak).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts a controller for `ns`, waits until its caches are synced and its
/// memory has settled (three reads a second apart within 2 %), and returns
/// (resident, peak) in KiB.
async fn settled_controller_memory(dir: &Path, ns: &str) -> (u64, u64) {
    let _ = std::fs::remove_file(dir.join("controller.log"));
    let mut ctl = start_controller(ns, dir).await;
    let log = dir.join("controller.log");
    common::eventually(
        "the controller's caches to sync",
        Duration::from_secs(300),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("caches synced")
                .then_some(())
                .ok_or("not yet".to_owned())
        },
    )
    .await;
    let pid = ctl.child.id().expect("the controller runs");
    let mut seen: Vec<u64> = Vec::new();
    common::eventually(
        "the controller's memory to settle",
        Duration::from_secs(120),
        || {
            let (rss, _) = rss_kib(pid);
            seen.push(rss);
            let tail = &seen[seen.len().saturating_sub(3)..];
            let settled = tail.len() == 3
                && tail
                    .iter()
                    .min()
                    .zip(tail.iter().max())
                    .is_some_and(|(lo, hi)| (hi - lo) * 50 <= *hi);
            async move {
                if settled {
                    Ok(())
                } else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Err(format!("resident {rss} KiB, still moving"))
                }
            }
        },
    )
    .await;
    let measured = rss_kib(pid);
    let _ = ctl.child.kill().await;
    measured
}

/// ZEN_LEAD_BENCH_WORKLOADS Deployments (default 1000; `make bench-memory`
/// passes 300 unless told otherwise, see the Makefile), each with a pod
/// template of ZEN_LEAD_BENCH_TEMPLATE_BYTES (default 1 MiB), paused with no
/// replicas so no ReplicaSet or pod is made. Goal: within 10 % of the
/// controller without them.
#[tokio::test]
#[ignore = "benchmark: make bench-memory"]
async fn bench_controller_memory_with_large_workloads_of_another_tenant() {
    let count: usize = std::env::var("ZEN_LEAD_BENCH_WORKLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let size: usize = std::env::var("ZEN_LEAD_BENCH_TEMPLATE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024 * 1024);
    let client = common::client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    common::with_namespace(&client, "ctl-memory", |client, ns| async move {
        let dir = common::scratch_dir("controller-memory");
        let (before, before_peak) = settled_controller_memory(&dir, &ns).await;

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let filler = "x".repeat(size.saturating_sub(1024));
        let started = std::time::Instant::now();
        futures::stream::iter(0..count)
            .for_each_concurrent(4, |i| {
                let deployments = deployments.clone();
                let filler = filler.clone();
                async move {
                    let name = format!("tenant-{i}");
                    let d: Deployment = common::from_json(json!({
                        "metadata": {"name": name},
                        "spec": {"replicas": 0, "paused": true,
                            "selector": {"matchLabels": {"app": name}},
                            "template": {"metadata": {"labels": {"app": name}},
                                "spec": {"containers": [{"name": "app", "image": "app",
                                    "env": [{"name": "FILLER", "value": filler}]}]}}}
                    }));
                    deployments
                        .create(&PostParams::default(), &d)
                        .await
                        .unwrap_or_else(|e| panic!("create {name}: {e}"));
                }
            })
            .await;
        println!(
            "bench-memory: created {count} Deployments with {} KiB pod templates in {:.1} s",
            size / 1024,
            started.elapsed().as_secs_f64()
        );
        let (after, after_peak) = settled_controller_memory(&dir, &ns).await;
        println!(
            "bench-memory: controller resident memory without them {:.1} MiB (peak {:.1}), with \
             them {:.1} MiB (peak {:.1}): ratio {:.2}; their templates total {:.0} MiB",
            before as f64 / 1024.0,
            before_peak as f64 / 1024.0,
            after as f64 / 1024.0,
            after_peak as f64 / 1024.0,
            after as f64 / before as f64,
            (count * size) as f64 / (1024.0 * 1024.0)
        );
    })
    .await;
}
