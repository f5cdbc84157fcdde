//! Scale benchmark of `zen-lead controller` on the local cluster
//! (`make bench-controller`): N LeaderPolicies (pools) with 3 pods each (bare
//! pods on the KWOK nodes, labelled and "injected" as the webhook leaves them,
//! created directly to skip the scheduler). Measures, for the controller
//! process (the release binary):
//!
//! - time from process start until every status, role label and readiness
//!   gate is correct (and, separately, from the moment it held its Lease);
//! - API requests until then (in total and per pool), from the controller's
//!   own `zen_lead_controller_api_requests_total` counter;
//! - resident memory (VmRSS, and the peak VmHWM) once converged;
//! - API requests per second at steady state;
//! - CPU of the controller and of the kube-apiserver until converged.
//!
//! Every measurement gets a fresh namespace (setup included) and deletes it
//! afterwards, waiting until it is gone, so the next one starts on a quiet
//! API server.
//!
//! Environment:
//!
//! - `ZL_BENCH_SIZES`: pool counts, comma-separated (default `1000`).
//!   `300,1000,3000` draws the scale curve: for consecutive sizes, the growth
//!   of convergence time, requests and memory divided by the growth of pools
//!   (≤ 1: linear or better), and the memory goal at 3,000 pools.
//! - `ZL_BENCH_POLICIES`: a single size, used when `ZL_BENCH_SIZES` is unset
//!   (the older name).
//! - `ZL_BENCH_RUNS` (default 1): runs per size and binary; the tables show
//!   medians and, with more than one run, the min–max.
//! - `ZL_BENCH_BASELINE_BIN`: another zen-lead binary (for example the commit
//!   before a redesign; `make bench-controller-baseline` builds one), measured
//!   with the same cluster and sizes, alternating with this build: current
//!   then baseline in the 1st, 3rd, ... run, baseline then current in the
//!   2nd, 4th, ..., so drift of the machine cancels out (use an even
//!   `ZL_BENCH_RUNS`). Adds a current/baseline ratio row per size.
//! - `ZL_BENCH_STEADY_SECS` (default 20): the steady-state window.
//!
//! Each binary's controller log for each size (the last run's) is kept in
//! `target/bench-controller/`.
#![forbid(unsafe_code)]

#[path = "../tests/common/net.rs"]
mod net;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
/// Creates in flight during setup, whatever N: the API server and etcd share
/// the machine's 2 cores, and more in flight only queues (and times out) there.
const POLICY_CREATES_IN_FLIGHT: usize = 32;
const POD_CREATES_IN_FLIGHT: usize = 64;
/// A current/baseline ratio above this is reported as a regression: single
/// runs on the shared development cluster vary by several per cent.
const REGRESSION_TOLERANCE: f64 = 1.10;
/// The memory goal of the scale curve, at `MEMORY_GOAL_POOLS` pools.
const MEMORY_GOAL_MIB: f64 = 200.0;
const MEMORY_GOAL_POOLS: usize = 3000;
const CURRENT: &str = "current";
const BASELINE: &str = "baseline";

fn kubeconfig() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cluster/kubeconfig"))
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A count from the environment; a value that is not one stops the run (a
/// silently ignored typo would measure something else than asked).
fn env_usize(name: &str, default: usize) -> usize {
    match env_var(name) {
        None => default,
        Some(v) => v
            .parse()
            .unwrap_or_else(|e| fail(format!("{name}={v}: {e}"))),
    }
}

/// Pool counts to measure, ascending (the scale curve compares neighbours).
fn sizes() -> Vec<usize> {
    let (name, raw) = match (env_var("ZL_BENCH_SIZES"), env_var("ZL_BENCH_POLICIES")) {
        (Some(sizes), policies) => {
            if policies.is_some() {
                eprintln!("controller_scale: ZL_BENCH_SIZES set, ignoring ZL_BENCH_POLICIES");
            }
            ("ZL_BENCH_SIZES", sizes)
        }
        (None, Some(policies)) => ("ZL_BENCH_POLICIES", policies),
        (None, None) => ("ZL_BENCH_SIZES", "1000".to_owned()),
    };
    let mut sizes: Vec<usize> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => fail(format!("{name}={raw}: {s:?} is not a positive number")),
        })
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        fail(format!("{name}={raw}: no size"));
    }
    sizes
}

fn steady_window() -> Duration {
    Duration::from_secs(env_usize("ZL_BENCH_STEADY_SECS", 20) as u64)
}

/// `at_1000` up to 1,000 pools, proportionally more above: creating,
/// starting, converging and deleting all grow with the number of objects.
fn deadline(at_1000: Duration, n: usize) -> Duration {
    at_1000.mul_f64(n.max(1000) as f64 / 1000.0)
}

/// How often convergence is checked. Every 200 ms up to 1,000 pools (what the
/// documented figures were measured with); every second above, since a check
/// can end in a full list of the namespace's pods (9,000 at 3,000 pools) and
/// that competes for the API server's CPU with the controller being measured.
/// Convergence times above 1,000 pools are thus up to 1 s late.
fn poll_interval(n: usize) -> Duration {
    if n <= 1000 {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    }
}

fn fail(msg: String) -> ! {
    eprintln!("controller_scale: {msg}");
    std::process::exit(1);
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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

fn pod(name: &str, pool: &str, node: &str) -> Result<Pod, String> {
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
    .map_err(|e| format!("pod json: {e}"))
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
}

fn proc_status_mib(pid: u32, field: &str) -> f64 {
    proc_status_kib(pid, field).unwrap_or(0) as f64 / 1024.0
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
/// Every condition a converged status carries (by type, not by count: a
/// count went stale once when IdentityConflict was added).
const EXPECTED_CONDITIONS: [&str; 6] = [
    zen_lead::api::keys::conditions::POLICY_READY,
    zen_lead::api::keys::conditions::LEADER_ELECTED,
    zen_lead::api::keys::conditions::CANDIDATES_AVAILABLE,
    zen_lead::api::keys::conditions::SCALED_DOWN,
    zen_lead::api::keys::conditions::AGENT_MISSING,
    zen_lead::api::keys::conditions::IDENTITY_CONFLICT,
];

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
                && EXPECTED_CONDITIONS
                    .iter()
                    .all(|t| s.conditions.iter().any(|c| c.type_ == *t)))
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

/// One measurement of one binary at one size.
#[derive(Debug, Clone)]
struct Sample {
    n: usize,
    /// Seconds from process start until converged.
    converged: f64,
    /// Seconds from process start until it held the controller Lease.
    lease_wait: f64,
    /// Seconds from holding the Lease until converged.
    held_to_converged: f64,
    rss_converged_mib: f64,
    rss_steady_mib: f64,
    peak_mib: f64,
    requests_converged: f64,
    steady_rate: f64,
    controller_cpu: f64,
    apiserver_cpu: f64,
    /// /proc/loadavg (1, 5, 15 min) at convergence.
    load: String,
}

impl Sample {
    fn requests_per_pool(&self) -> f64 {
        self.requests_converged / self.n as f64
    }
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-controller")
}

/// Serving certificates for the controller's webhook listener, made once and
/// shared by every run and binary.
fn ensure_certs() -> PathBuf {
    let dir = bench_dir();
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
    certs
}

/// `zen-lead version` of a binary, to tell in the report what was measured;
/// a binary that cannot be started stops the run here.
fn version(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("version")
        .output()
        .unwrap_or_else(|e| fail(format!("run {}: {e}", bin.display())));
    Some(out)
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".to_owned())
}

async fn create_namespace(namespaces: &Api<Namespace>) -> String {
    namespaces
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
        .name_any()
}

/// Deletes the namespace and waits until it is gone (all its pods and
/// policies too), so the next measurement does not share the API server
/// with the deletion of this one's objects.
async fn delete_namespace(namespaces: &Api<Namespace>, ns: &str, n: usize) {
    match namespaces.delete(ns, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return,
        Err(e) => fail(format!("delete namespace {ns}: {e}")),
    }
    let started = Instant::now();
    let limit = deadline(Duration::from_secs(300), n);
    loop {
        if let Ok(None) = namespaces.get_opt(ns).await {
            break;
        }
        if started.elapsed() > limit {
            fail(format!(
                "namespace {ns} still there {:.0} s after its deletion (a finalizer left?); \
                 the next measurement would share the API server with it",
                limit.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "  namespace {ns} gone after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Before a failed measurement stops the run: the controller stops and the
/// namespace goes (not waited for), so no thousands of objects stay behind.
async fn discard(namespaces: &Api<Namespace>, ns: &str, child: Option<&mut Child>) {
    if let Some(child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = namespaces.delete(ns, &DeleteParams::background()).await;
}

/// N policies, 3N pods, running on the KWOK nodes, and the controller's own
/// (free) Lease.
async fn set_up(client: &Client, ns: &str, n: usize) -> Result<(), String> {
    let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
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
        .buffer_unordered(POLICY_CREATES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), String>>()?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let results: Vec<Result<(), String>> = stream::iter(0..n * PODS_PER_POLICY)
        .map(|j| {
            let pods = pods.clone();
            async move {
                let p = pod(
                    &format!("p{}-{}", j / PODS_PER_POLICY, j % PODS_PER_POLICY),
                    &format!("p{}", j / PODS_PER_POLICY),
                    if j % 2 == 0 { "kwok-0" } else { "kwok-1" },
                )?;
                pods.create(&PostParams::default(), &p)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("pod {}: {e}", p.name_any()))
            }
        })
        .buffer_unordered(POD_CREATES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), String>>()?;

    // KWOK marks them running (agent started) before the controller starts,
    // so the measurement is the controller's alone. Not measured itself, so
    // the full list is spaced out with N: it only slows KWOK down.
    let wait = Instant::now();
    let limit = deadline(Duration::from_secs(600), n);
    let interval = Duration::from_secs((n as u64 / 1000).max(1));
    loop {
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list pods: {e}"))?;
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
        if wait.elapsed() > limit {
            return Err(format!(
                "only {running} of {} pods running after {:.0} s",
                n * PODS_PER_POLICY,
                limit.as_secs_f64()
            ));
        }
        tokio::time::sleep(interval).await;
    }

    // The controller's own Lease exists (free) as in any cluster where
    // zen-lead ran before; a missing one makes the election wait one lease
    // duration for an unknown claim (see the Lease contract).
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns);
    let lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": zen_lead::api::keys::CONTROLLER_LEASE_NAME},
        "spec": {"leaseDurationSeconds": 15}
    }))
    .map_err(|e| format!("lease json: {e}"))?;
    leases
        .create(&PostParams::default(), &lease)
        .await
        .map_err(|e| format!("controller Lease: {e}"))?;
    Ok(())
}

/// One measurement: fresh namespace with `n` pools, the controller `bin`
/// scoped to it until converged and through the steady window, then the
/// namespace deleted (and gone). `label` names the binary in logs.
async fn measure(client: &Client, n: usize, bin: &Path, label: &str) -> Sample {
    let steady = steady_window();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = create_namespace(&namespaces).await;
    eprintln!(
        "  namespace {ns}: creating {n} policies and {} pods",
        n * PODS_PER_POLICY
    );
    let setup = Instant::now();
    if let Err(e) = set_up(client, &ns, n).await {
        discard(&namespaces, &ns, None).await;
        fail(format!("setup in {ns}: {e}"));
    }
    eprintln!("  setup took {:.1} s", setup.elapsed().as_secs_f64());

    let certs = ensure_certs();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(format!("port: {e}")));
    let log_path = bench_dir().join(format!("controller-{label}-{n}.log"));
    let log = std::fs::File::create(&log_path)
        .unwrap_or_else(|e| fail(format!("log {}: {e}", log_path.display())));
    let apiserver = apiserver_pid();
    let apiserver_cpu0 = apiserver.map(cpu_seconds).unwrap_or(0.0);
    let started = Instant::now();
    let spawned = Command::new(bin)
        .env("KUBECONFIG", kubeconfig())
        .args(["controller", "--webhook-addr", "127.0.0.1:0"])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--tls-cert-file")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(certs.join("tls.key"))
        .args(["--namespace", &ns, "--watch-namespace", &ns])
        // Named explicitly: the Lease created above, and the same name for a
        // baseline built before scoped controllers got scoped Lease names.
        .args([
            "--controller-lease-name",
            zen_lead::api::keys::CONTROLLER_LEASE_NAME,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            discard(&namespaces, &ns, None).await;
            fail(format!("start {}: {e}", bin.display()));
        }
    };
    let pid = child.id();

    let limit = deadline(Duration::from_secs(300), n);
    let interval = poll_interval(n);
    let mut active_at = None;
    let converged = loop {
        if active_at.is_none() && metric(admin, "zen_lead_controller_active").await == Some(1.0) {
            active_at = Some(started.elapsed());
        }
        let (bad_policies, bad_pods) = convergence(client, &ns).await;
        if bad_policies == 0 && bad_pods == 0 {
            break started.elapsed();
        }
        // A binary that exits (a flag it does not know, a crash) fails now,
        // not at the deadline.
        if let Ok(Some(status)) = child.try_wait() {
            discard(&namespaces, &ns, None).await;
            fail(format!(
                "{label} controller exited ({status}); log: {}",
                log_path.display()
            ));
        }
        if started.elapsed() > limit {
            let shown = |n: usize| {
                if n == usize::MAX {
                    "?".to_owned()
                } else {
                    n.to_string()
                }
            };
            discard(&namespaces, &ns, Some(&mut child)).await;
            fail(format!(
                "{label} not converged after {:.0} s: {} policies, {} pods wrong; log: {}",
                limit.as_secs_f64(),
                shown(bad_policies),
                shown(bad_pods),
                log_path.display()
            ));
        }
        tokio::time::sleep(interval).await;
    };
    let active_at = active_at.unwrap_or(converged);
    let controller_cpu = cpu_seconds(pid);
    let apiserver_cpu = apiserver.map(cpu_seconds).unwrap_or(0.0) - apiserver_cpu0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rss_converged_mib = proc_status_mib(pid, "VmRSS:");
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
    let steady_rate = (r1 - r0) / t0.elapsed().as_secs_f64();
    let rss_steady_mib = proc_status_mib(pid, "VmRSS:");
    // The peak so far, read last: it covers the steady window too.
    let peak_mib = proc_status_mib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();

    delete_namespace(&namespaces, &ns, n).await;

    Sample {
        n,
        converged: converged.as_secs_f64(),
        lease_wait: active_at.as_secs_f64(),
        held_to_converged: converged.saturating_sub(active_at).as_secs_f64(),
        rss_converged_mib,
        rss_steady_mib,
        peak_mib,
        requests_converged,
        steady_rate,
        controller_cpu,
        apiserver_cpu,
        load: load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
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
    let sizes = sizes();
    let runs = env_usize("ZL_BENCH_RUNS", 1);
    if runs == 0 {
        fail("ZL_BENCH_RUNS=0: nothing to measure".into());
    }
    // Absolute, since the controller is started from this process's directory
    // whatever the caller's was.
    let baseline = env_var("ZL_BENCH_BASELINE_BIN").map(|p| {
        std::fs::canonicalize(&p)
            .ok()
            .filter(|p| p.is_file())
            .unwrap_or_else(|| fail(format!("ZL_BENCH_BASELINE_BIN={p}: no such file")))
    });
    let mut binaries = vec![(CURRENT, PathBuf::from(BIN))];
    binaries.extend(baseline.map(|b| (BASELINE, b)));
    // Asked first: a baseline that does not run fails before the long setup.
    let versions: Vec<(&str, String)> = binaries
        .iter()
        .map(|(label, bin)| (*label, format!("{} ({})", version(bin), bin.display())))
        .collect();
    for (label, version) in &versions {
        eprintln!("controller_scale: {label}: {version}");
    }
    let client = client().await;

    // CRD (this build's, for both binaries: the baseline must accept it).
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch(
        zen_lead::api::CRD_NAME,
        &PatchParams::apply("zen-lead-bench").force(),
        &Patch::Apply(&zen_lead::api::crd()),
    )
    .await
    .unwrap_or_else(|e| fail(format!("apply CRD: {e}")));
    // A CRD applied for the first time is served a moment later: creating
    // policies before then fails with 404.
    let established = kube::runtime::wait::await_condition(
        crds,
        zen_lead::api::CRD_NAME,
        kube::runtime::wait::conditions::is_crd_established(),
    );
    match tokio::time::timeout(Duration::from_secs(30), established).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => fail(format!("watch CRD: {e}")),
        Err(_) => fail("the CRD was not Established within 30 s".into()),
    }
    ensure_certs();

    let total = runs * sizes.len() * binaries.len();
    let mut samples: Vec<(&str, Sample)> = Vec::with_capacity(total);
    for run in 0..runs {
        // Current first in the 1st, 3rd, ... run, baseline first in the
        // others: a machine that slows down (or warms up) over the session
        // then weighs on both alike.
        let mut order = binaries.clone();
        if run % 2 == 1 {
            order.reverse();
        }
        for &n in &sizes {
            for (label, bin) in &order {
                eprintln!(
                    "controller_scale [{}/{total}]: run {}/{runs}, {} pools, {label} ({})",
                    samples.len() + 1,
                    run + 1,
                    thousands(n),
                    bin.display()
                );
                let s = measure(&client, n, bin, label).await;
                // Printed as it comes, so a later failure loses nothing.
                eprintln!(
                    "  {label} {n}: converged {:.2} s (Lease held -> converged {:.2} s), \
                     {:.0} requests, RSS {:.1} MiB, peak {:.1} MiB, steady {:.3} req/s, \
                     CPU {:.1} s / apiserver {:.1} s, load {}",
                    s.converged,
                    s.held_to_converged,
                    s.requests_converged,
                    s.rss_converged_mib,
                    s.peak_mib,
                    s.steady_rate,
                    s.controller_cpu,
                    s.apiserver_cpu,
                    s.load
                );
                samples.push((label, s));
            }
        }
    }

    report(&sizes, runs, &versions, &samples);
}

/// Median and range of one metric over runs.
#[derive(Debug, Clone, Copy)]
struct Spread {
    count: usize,
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            len if len % 2 == 1 => v[len / 2],
            len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
        };
        Spread {
            count: v.len(),
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `median` alone for one run, `median (min–max)` for more.
    fn show(&self, decimals: usize) -> String {
        if self.count < 2 {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }
}

/// The samples of one binary at one size.
struct Group<'a> {
    samples: Vec<&'a Sample>,
}

impl Group<'_> {
    fn spread(&self, metric: impl Fn(&Sample) -> f64) -> Spread {
        Spread::of(&self.samples.iter().map(|s| metric(s)).collect::<Vec<_>>())
    }
}

fn group<'a>(samples: &'a [(&str, Sample)], label: &str, n: usize) -> Option<Group<'a>> {
    let samples: Vec<&Sample> = samples
        .iter()
        .filter(|(l, s)| *l == label && s.n == n)
        .map(|(_, s)| s)
        .collect();
    (!samples.is_empty()).then_some(Group { samples })
}

fn report(sizes: &[usize], runs: usize, versions: &[(&str, String)], samples: &[(&str, Sample)]) {
    let pass = |ok: bool| if ok { "ok" } else { "MISSED" };
    let labels: Vec<&str> = versions.iter().map(|(l, _)| *l).collect();
    let has_baseline = labels.contains(&BASELINE);

    println!();
    println!(
        "controller_scale: {} pools x {PODS_PER_POLICY} pods on KWOK nodes, {runs} run(s) per size and binary{}",
        sizes
            .iter()
            .map(|&n| thousands(n))
            .collect::<Vec<_>>()
            .join(" / "),
        if runs > 1 { "; median (min–max)" } else { "" }
    );
    for (label, version) in versions {
        println!("- {label}: {version}");
    }
    println!(
        "- CPUs: {}; steady-state window {} s",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        steady_window().as_secs()
    );
    println!();
    println!(
        "| pools / pods | binary | converged s | Lease held -> converged s | requests until converged | requests per pool | steady req/s | RSS converged MiB | peak MiB | controller CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        for &label in &labels {
            let Some(g) = group(samples, label, n) else {
                continue;
            };
            println!(
                "| {} / {} | {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(n),
                thousands(n * PODS_PER_POLICY),
                g.spread(|s| s.converged).show(2),
                g.spread(|s| s.held_to_converged).show(2),
                g.spread(|s| s.requests_converged).show(0),
                g.spread(Sample::requests_per_pool).show(2),
                g.spread(|s| s.steady_rate).show(3),
                g.spread(|s| s.rss_converged_mib).show(1),
                g.spread(|s| s.peak_mib).show(1),
                g.spread(|s| s.controller_cpu).show(1),
            );
        }
    }
    println!();
    println!(
        "| pools / pods | binary | waiting for the controller Lease s | RSS steady MiB | kube-apiserver CPU until converged s |"
    );
    println!("|---|---|---|---|---|");
    for &n in sizes {
        for &label in &labels {
            let Some(g) = group(samples, label, n) else {
                continue;
            };
            println!(
                "| {} / {} | {label} | {} | {} | {} |",
                thousands(n),
                thousands(n * PODS_PER_POLICY),
                g.spread(|s| s.lease_wait).show(2),
                g.spread(|s| s.rss_steady_mib).show(1),
                g.spread(|s| s.apiserver_cpu).show(1),
            );
        }
    }

    if has_baseline {
        println!();
        println!(
            "current / baseline (medians; above {REGRESSION_TOLERANCE:.2} counts as a regression):"
        );
        println!();
        println!("| pools | converged | requests until converged | RSS converged | |");
        println!("|---|---|---|---|---|");
        for &n in sizes {
            let (Some(c), Some(b)) = (group(samples, CURRENT, n), group(samples, BASELINE, n))
            else {
                continue;
            };
            let ratio =
                |metric: fn(&Sample) -> f64| c.spread(metric).median / b.spread(metric).median;
            let ratios = [
                ratio(|s| s.converged),
                ratio(|s| s.requests_converged),
                ratio(|s| s.rss_converged_mib),
            ];
            let ok = ratios.iter().all(|r| *r <= REGRESSION_TOLERANCE);
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {} |",
                thousands(n),
                ratios[0],
                ratios[1],
                ratios[2],
                if ok { "no regression" } else { "REGRESSION" }
            );
        }
    }

    if sizes.len() > 1 {
        println!();
        println!(
            "scale curve: growth of each metric / growth of pools between consecutive sizes (medians; <= 1: linear or better)"
        );
        println!();
        println!(
            "| binary | pools | pools x | converged time | requests until converged | RSS converged | |"
        );
        println!("|---|---|---|---|---|---|---|");
        for &label in &labels {
            for pair in sizes.windows(2) {
                let [small, big] = [pair[0], pair[1]];
                let (Some(a), Some(b)) = (group(samples, label, small), group(samples, label, big))
                else {
                    continue;
                };
                let pools = big as f64 / small as f64;
                let relative = |metric: fn(&Sample) -> f64| {
                    b.spread(metric).median / a.spread(metric).median / pools
                };
                let factors = [
                    relative(|s| s.converged),
                    relative(|s| s.requests_converged),
                    relative(|s| s.rss_converged_mib),
                ];
                let worse: Vec<&str> = ["time", "requests", "memory"]
                    .iter()
                    .zip(factors)
                    .filter(|(_, f)| *f > 1.0)
                    .map(|(name, _)| *name)
                    .collect();
                println!(
                    "| {label} | {} -> {} | {pools:.2} | {:.2} | {:.2} | {:.2} | {} |",
                    thousands(small),
                    thousands(big),
                    factors[0],
                    factors[1],
                    factors[2],
                    if worse.is_empty() {
                        "linear or better".to_owned()
                    } else {
                        format!("superlinear: {}", worse.join(", "))
                    }
                );
            }
        }
    }

    if let Some(g) = group(samples, CURRENT, MEMORY_GOAL_POOLS) {
        // The worst run's peak: a memory limit has to hold for that.
        let peak = g.spread(|s| s.peak_mib).max;
        println!();
        println!(
            "memory < {MEMORY_GOAL_MIB:.0} MiB at {} pools: RSS converged {} MiB, peak {peak:.1} MiB (worst run): {}",
            thousands(MEMORY_GOAL_POOLS),
            g.spread(|s| s.rss_converged_mib).show(1),
            pass(peak < MEMORY_GOAL_MIB)
        );
    }

    // The goals set for 1,000 pools, for this build.
    if let Some(g) = group(samples, CURRENT, 1000) {
        let converged = g.spread(|s| s.converged);
        let rss = g.spread(|s| s.rss_converged_mib);
        let rate = g.spread(|s| s.steady_rate);
        let steady = steady_window().as_secs_f64();
        println!();
        println!(
            "goals at 1,000 policies x {PODS_PER_POLICY} pods ({} pods), {CURRENT}:",
            thousands(1000 * PODS_PER_POLICY)
        );
        println!();
        println!("| metric | value | goal | |");
        println!("|---|---|---|---|");
        println!(
            "| start -> every status, role label and readiness gate correct | {} s | < 10 s | {} |",
            converged.show(2),
            pass(converged.median < 10.0)
        );
        println!(
            "| of which waiting for the controller Lease | {} s | | |",
            g.spread(|s| s.lease_wait).show(2)
        );
        println!(
            "| Lease held -> converged | {} s | | |",
            g.spread(|s| s.held_to_converged).show(2)
        );
        println!(
            "| resident memory when converged (VmRSS) | {} MiB | < 100 MiB | {} |",
            rss.show(1),
            pass(rss.median < 100.0)
        );
        println!(
            "| resident memory at steady state / peak (VmHWM) | {} / {} MiB | | |",
            g.spread(|s| s.rss_steady_mib).show(1),
            g.spread(|s| s.peak_mib).show(1)
        );
        println!(
            "| API requests until converged | {} | | |",
            g.spread(|s| s.requests_converged).show(0)
        );
        println!(
            "| CPU until converged: controller / kube-apiserver | {} s / {} s | | |",
            g.spread(|s| s.controller_cpu).show(1),
            g.spread(|s| s.apiserver_cpu).show(1)
        );
        println!(
            "| machine load average (1, 5, 15 min) at convergence | {} | | |",
            g.samples
                .iter()
                .map(|s| s.load.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        println!(
            "| API requests/s at steady state ({steady:.0} s window) | {} | flat in pods | {} |",
            rate.show(3),
            pass(rate.median < 1.0)
        );
    }
    println!();
}
