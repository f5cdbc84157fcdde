//! Scale benchmark of `zen-lead controller` on the local cluster
//! (`make bench-controller`): N LeaderPolicies with 3 pods each (bare pods
//! on the KWOK nodes, labelled and "injected" as the webhook leaves them,
//! created directly to skip the scheduler). Measures, for the controller
//! process (the release binary):
//!
//! - time from process start until every status, role label and readiness
//!   gate is correct (and, separately, from the moment it held its Lease);
//! - resident memory (VmRSS, and the peak VmHWM) once converged;
//! - API requests per second at steady state, from the controller's own
//!   `zen_lead_controller_api_requests_total` counter.
//!
//! `ZL_BENCH_POLICIES` (default 1000) sets N; `ZL_BENCH_STEADY_SECS`
//! (default 20) the steady-state window.
#![forbid(unsafe_code)]

#[path = "../tests/common/net.rs"]
mod net;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;
use zen_lead::api::LeaderPolicy;

const BIN: &str = env!("CARGO_BIN_EXE_zen-lead");
const PODS_PER_POLICY: usize = 3;

fn kubeconfig() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cluster/kubeconfig"))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fail(msg: String) -> ! {
    eprintln!("controller_scale: {msg}");
    std::process::exit(1);
}

async fn client() -> Client {
    let path = kubeconfig();
    let kc = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        fail(format!(
            "no kubeconfig at {} ({e}); run `make cluster-up`",
            path.display()
        ))
    });
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| fail(format!("kubeconfig {}: {e}", path.display())));
    // Creating thousands of objects: generous timeouts.
    config.read_timeout = Some(Duration::from_secs(60));
    Client::try_from(config).unwrap_or_else(|e| fail(format!("client: {e}")))
}

fn pod(name: &str, pool: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"zen-lead/pool": pool}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "readinessGates": [{"conditionType": "zen-lead.io/candidate"}],
            "initContainers": [{"name": "zen-lead-agent", "image": "zen-lead", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "app"}],
            "terminationGracePeriodSeconds": 0,
        }
    }))
    .unwrap_or_else(|e| fail(format!("pod json: {e}")))
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat
/// (clock ticks are 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" that ends the command name; utime, stime are 14, 15.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The local cluster's kube-apiserver process, to split CPU time.
fn apiserver_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("zl-cluster") && cmd.contains("kube-apiserver")).then_some(pid)
    })
}

async fn metric(port: u16, name: &str) -> Option<f64> {
    let (status, text) = net::http_get(port, "/metrics").await;
    (status == 200).then_some(())?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// What is still wrong: (policies not converged, pods not converged);
/// `usize::MAX`: not looked at yet.
///
/// The API server is the bottleneck of this benchmark, so looking must cost
/// it little: listing 1,000 policies and 3,000 pods five times a second took
/// a good part of the CPU the controller needs from it. So the pods still
/// without their role are listed through a label selector (the API server
/// encodes only those); only when none is left are the policies listed,
/// and once they are right, one full list of the pods checks every pod.
async fn convergence(client: &Client, ns: &str) -> (usize, usize) {
    let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(unlabelled) = pods
        .list(&ListParams::default().labels("zen-lead.io/role!=follower"))
        .await
    else {
        return (usize::MAX, usize::MAX);
    };
    if !unlabelled.items.is_empty() {
        return (usize::MAX, unlabelled.items.len());
    }
    let Ok(list) = policies.list(&ListParams::default()).await else {
        return (usize::MAX, usize::MAX);
    };
    let bad_policies = list
        .items
        .iter()
        .filter(|p| {
            let Some(s) = p.status.as_ref() else {
                return true;
            };
            !(s.candidates == Some(PODS_PER_POLICY as i32)
                && s.observed_generation == p.metadata.generation
                && s.phase == Some(zen_lead::api::Phase::Electing)
                && s.conditions.len() == 5)
        })
        .count();
    if bad_policies > 0 {
        return (bad_policies, usize::MAX);
    }
    let Ok(list) = pods.list(&ListParams::default()).await else {
        return (bad_policies, usize::MAX);
    };
    let bad_pods = list
        .items
        .iter()
        .filter(|p| {
            let role = p.labels().get("zen-lead.io/role").map(String::as_str);
            let gate = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "zen-lead.io/candidate"))
                .map(|c| c.status.as_str());
            !(role == Some("follower") && gate == Some("True"))
        })
        .count();
    (bad_policies, bad_pods)
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("runtime: {e}")));
    runtime.block_on(run());
}

async fn run() {
    let n = env_usize("ZL_BENCH_POLICIES", 1000);
    let steady = Duration::from_secs(env_usize("ZL_BENCH_STEADY_SECS", 20) as u64);
    let client = client().await;

    // CRD.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch(
        zen_lead::api::CRD_NAME,
        &PatchParams::apply("zen-lead-bench").force(),
        &Patch::Apply(&zen_lead::api::crd()),
    )
    .await
    .unwrap_or_else(|e| fail(format!("apply CRD: {e}")));

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    generate_name: Some("zl-bench-ctl-".into()),
                    labels: Some(BTreeMap::from([(
                        "zen-lead.io/test".to_owned(),
                        "true".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .unwrap_or_else(|e| fail(format!("namespace: {e}")))
        .name_any();
    eprintln!(
        "namespace {ns}: creating {n} policies and {} pods",
        n * PODS_PER_POLICY
    );

    let setup = Instant::now();
    let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
    let results: Vec<Result<(), String>> = stream::iter(0..n)
        .map(|i| {
            let policies = policies.clone();
            async move {
                let lp: LeaderPolicy = serde_json::from_value(json!({
                    "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
                    "metadata": {"name": format!("p{i}")}, "spec": {}
                }))
                .map_err(|e| e.to_string())?;
                policies
                    .create(&PostParams::default(), &lp)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("policy p{i}: {e}"))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        fail(e);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let results: Vec<Result<(), String>> = stream::iter(0..n * PODS_PER_POLICY)
        .map(|j| {
            let pods = pods.clone();
            async move {
                let p = pod(
                    &format!("p{}-{}", j / PODS_PER_POLICY, j % PODS_PER_POLICY),
                    &format!("p{}", j / PODS_PER_POLICY),
                    if j % 2 == 0 { "kwok-0" } else { "kwok-1" },
                );
                pods.create(&PostParams::default(), &p)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("pod {}: {e}", p.name_any()))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        fail(e);
    }
    // KWOK marks them running (agent started) before the controller starts,
    // so the measurement is the controller's alone.
    let wait = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| fail(format!("list pods: {e}")));
        let running = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.init_container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.started == Some(true)))
            })
            .count();
        if running == n * PODS_PER_POLICY {
            break;
        }
        if wait.elapsed() > Duration::from_secs(600) {
            fail(format!("only {running} pods running after 10 minutes"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("setup took {:.1}s", setup.elapsed().as_secs_f64());

    // The controller's own Lease exists (free) as in any cluster where
    // zen-lead ran before; a missing one makes the election wait one lease
    // duration for an unknown claim (see the Lease contract).
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": zen_lead::api::keys::CONTROLLER_LEASE_NAME},
                "spec": {"leaseDurationSeconds": 15}
            }))
            .unwrap_or_else(|e| fail(format!("lease json: {e}"))),
        )
        .await
        .unwrap_or_else(|e| fail(format!("controller Lease: {e}")));

    // The controller.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-controller");
    let _ = std::fs::create_dir_all(&dir);
    let certs = dir.join("certs");
    if !certs.join("tls.crt").exists() {
        let ok = Command::new(BIN)
            .args(["certs", "--dns", "localhost", "--out"])
            .arg(&certs)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            fail("zen-lead certs failed".into());
        }
    }
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(format!("port: {e}")));
    let log = std::fs::File::create(dir.join("controller.log"))
        .unwrap_or_else(|e| fail(format!("log: {e}")));
    let apiserver = apiserver_pid();
    let apiserver_cpu0 = apiserver.map(cpu_seconds).unwrap_or(0.0);
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .env("KUBECONFIG", kubeconfig())
        .args(["controller", "--webhook-addr", "127.0.0.1:0"])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--tls-cert-file")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(certs.join("tls.key"))
        .args(["--namespace", &ns, "--watch-namespace", &ns])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail(format!("start {BIN}: {e}")));
    let pid = child.id();

    let mut active_at = None;
    let converged = loop {
        if active_at.is_none() && metric(admin, "zen_lead_controller_active").await == Some(1.0) {
            active_at = Some(started.elapsed());
        }
        let (bad_policies, bad_pods) = convergence(&client, &ns).await;
        if bad_policies == 0 && bad_pods == 0 {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let shown = |n: usize| {
                if n == usize::MAX {
                    "?".to_owned()
                } else {
                    n.to_string()
                }
            };
            fail(format!(
                "not converged after 5 minutes: {} policies, {} pods wrong",
                shown(bad_policies),
                shown(bad_pods)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let active_at = active_at.unwrap_or(converged);
    let controller_cpu = cpu_seconds(pid);
    let apiserver_cpu = apiserver.map(cpu_seconds).unwrap_or(0.0) - apiserver_cpu0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rss = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let requests_converged = metric(admin, "zen_lead_controller_api_requests_total")
        .await
        .unwrap_or(0.0);

    // Steady state: skip a few seconds of tail work, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r0 = metric(admin, "zen_lead_controller_api_requests_total")
        .await
        .unwrap_or(0.0);
    let t0 = Instant::now();
    tokio::time::sleep(steady).await;
    let r1 = metric(admin, "zen_lead_controller_api_requests_total")
        .await
        .unwrap_or(0.0);
    let rate = (r1 - r0) / t0.elapsed().as_secs_f64();
    let rss_steady = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();

    let mib = |kib: u64| kib as f64 / 1024.0;
    let pass = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "controller_scale: {n} policies x {PODS_PER_POLICY} pods ({} pods) on KWOK nodes",
        n * PODS_PER_POLICY
    );
    println!("| metric | value | goal | |");
    println!("|---|---|---|---|");
    println!(
        "| start -> every status, role label and readiness gate correct | {:.2} s | < 10 s | {} |",
        converged.as_secs_f64(),
        pass(converged < Duration::from_secs(10))
    );
    println!(
        "| of which waiting for the controller Lease | {:.2} s | | |",
        active_at.as_secs_f64()
    );
    println!(
        "| Lease held -> converged | {:.2} s | | |",
        (converged.saturating_sub(active_at)).as_secs_f64()
    );
    println!(
        "| resident memory when converged (VmRSS) | {:.1} MiB | < 100 MiB | {} |",
        mib(rss),
        pass(mib(rss) < 100.0)
    );
    println!(
        "| resident memory at steady state / peak (VmHWM) | {:.1} / {:.1} MiB | | |",
        mib(rss_steady),
        mib(hwm)
    );
    println!("| API requests until converged | {requests_converged:.0} | | |");
    println!(
        "| CPU until converged: controller / kube-apiserver | {controller_cpu:.1} s / {apiserver_cpu:.1} s | | |"
    );
    println!(
        "| machine load average (1, 5, 15 min) at convergence | {} | | |",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| CPUs | {} | | |",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "| API requests/s at steady state ({:.0} s window) | {rate:.3} | flat in pods | {} |",
        steady.as_secs_f64(),
        pass(rate < 1.0)
    );
    println!();

    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
}
