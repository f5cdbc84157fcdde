//! `make bench-memory`: the controller's memory with many large workloads
//! of another tenant in its scope, against the same controller before they
//! exist. Every Deployment and StatefulSet in scope is read (scaleDown
//! finds a pool's workloads even at 0 replicas), so the cache must keep
//! only pool workloads, slim (`controller::watch::slim`), and a relist must
//! not hold many large pages at once.
//!
//! The binary measured is `ZEN_LEAD_CONTROLLER_BIN` (several, separated by
//! `:`, are measured side by side); `make bench-memory` passes the shipped
//! static (musl) release build. Without it, the test build runs: glibc's
//! malloc and debug code, not what users run.

mod common;

use std::path::Path;
use std::time::Duration;

use common::zen_lead_host::start_controller_from;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// What one controller held, in KiB.
#[derive(Clone, Copy, Debug)]
struct Memory {
    resident: u64,
    /// VmHWM: the most it was ever resident (what a memory limit meets).
    peak: u64,
    /// The resident part that is heap and stacks, not the binary's pages.
    anonymous: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

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

/// The anonymous part of the process's resident memory, in KiB.
fn anonymous_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/smaps_rollup: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Anonymous in /proc/{pid}/smaps_rollup"))
}

/// Starts `bin` as the controller for `ns`, waits until its caches are
/// synced and its memory has settled (three reads a second apart within
/// 2 %), and returns what it holds.
async fn settled_controller_memory(bin: &Path, dir: &Path, ns: &str) -> Memory {
    let _ = std::fs::remove_file(dir.join("controller.log"));
    let mut ctl = start_controller_from(bin, ns, dir).await;
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
    let (resident, peak) = rss_kib(pid);
    let anonymous = anonymous_kib(pid);
    let _ = ctl.child.kill().await;
    Memory {
        resident,
        peak,
        anonymous,
    }
}

/// The binaries to measure (see the module's documentation).
fn controller_bins() -> Vec<std::path::PathBuf> {
    match std::env::var_os("ZEN_LEAD_CONTROLLER_BIN") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => vec![env!("CARGO_BIN_EXE_zen-lead").into()],
    }
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
    let bins = controller_bins();
    let client = common::client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    let used_ns = std::sync::Mutex::new(String::new());
    let (used, bins) = (&used_ns, &bins);
    common::with_namespace(&client, "ctl-memory", |client, ns| async move {
        *used.lock().expect("namespace name") = ns.clone();
        let dir = common::scratch_dir("controller-memory");
        let mut before = Vec::new();
        for bin in bins {
            before.push(settled_controller_memory(bin, &dir, &ns).await);
        }
        create_tenant_deployments(client, &ns, count, size).await;
        for (bin, before) in bins.iter().zip(before) {
            let after = settled_controller_memory(bin, &dir, &ns).await;
            report(bin, before, after, count, size);
        }
    })
    .await;
    let ns = used_ns.into_inner().expect("namespace name");
    wait_namespace_gone(&client, &ns).await;
}

/// `count` paused Deployments with no replicas (no ReplicaSet or pod is
/// made), each with a pod template of about `size` bytes.
async fn create_tenant_deployments(client: kube::Client, ns: &str, count: usize, size: usize) {
    let deployments: Api<Deployment> = Api::namespaced(client, ns);
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
}

fn report(bin: &Path, before: Memory, after: Memory, count: usize, size: usize) {
    println!(
        "bench-memory: {}: controller resident memory without them {:.1} MiB (anonymous {:.1}, \
         peak {:.1}), with them {:.1} MiB (anonymous {:.1}, peak {:.1}): ratio {:.2} (goal \
         <= 1.10), peak ratio {:.2}; their templates total {:.0} MiB",
        bin.display(),
        mib(before.resident),
        mib(before.anonymous),
        mib(before.peak),
        mib(after.resident),
        mib(after.anonymous),
        mib(after.peak),
        after.resident as f64 / before.resident as f64,
        after.peak as f64 / before.peak as f64,
        (count * size) as f64 / (1024.0 * 1024.0)
    );
}

/// The benchmark's gigabyte of Deployments is gone before the cluster is
/// left to the next test (its deletion loads the API server and etcd).
async fn wait_namespace_gone(client: &kube::Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let started = std::time::Instant::now();
    common::eventually(
        "the benchmark's namespace to be deleted",
        Duration::from_secs(600),
        || {
            let namespaces = namespaces.clone();
            async move {
                match namespaces.get_opt(ns).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Err("still terminating".to_owned())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    println!(
        "bench-memory: namespace {ns} deleted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
