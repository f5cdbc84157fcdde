//! `cargo bench --bench gate` (`make bench-gate`): the agent's API gate
//! against going straight to the API server, same run, same client, same
//! token.
//!
//! A `zen-lead agent --activation api` (built with the bench profile) runs
//! on the host as leader of its pool; the "app" is this process using
//! kube-rs (HTTP/1.1 keep-alive, the app ServiceAccount's real token):
//!
//! - GET of one ConfigMap, sequential: p50/p99, direct vs gated, interleaved
//!   so both see the same machine load;
//! - PATCH (merge) of one ConfigMap, sequential: p50/p99;
//! - WATCH throughput: ZEN_LEAD_BENCH_WATCHERS (default 16) watches from
//!   resourceVersion 0 over ZEN_LEAD_BENCH_OBJECTS (default 1000) ConfigMaps
//!   of ~1 KiB: the API server streams every object from its watch cache,
//!   so the figure is the streaming rate, not the rate of writes. After one
//!   unmeasured round per path, ZEN_LEAD_BENCH_ROUNDS (default 6) rounds
//!   alternate which path goes first; best and median are reported.
//!
//! ZEN_LEAD_BENCH_N (default 1000) requests per path for GET and for
//! PATCH. Goals (issue 8): < 1 ms added p99, < 10% less watch throughput.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/gate.rs"]
mod fixture;

use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{
    Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use tokio::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(v) => std::env::split_paths(&v).next().unwrap_or_default(),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cluster/kubeconfig"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

struct Row {
    what: &'static str,
    direct: Vec<Duration>,
    gated: Vec<Duration>,
}

impl Row {
    fn print(&mut self) {
        self.direct.sort();
        self.gated.sort();
        let (d50, d99) = (
            percentile(&self.direct, 0.5),
            percentile(&self.direct, 0.99),
        );
        let (g50, g99) = (percentile(&self.gated, 0.5), percentile(&self.gated, 0.99));
        println!(
            "{:<8} n={:<5} direct p50 {:>7.3} ms p99 {:>7.3} ms | gated p50 {:>7.3} ms p99 {:>7.3} ms | added p50 {:>+7.3} ms p99 {:>+7.3} ms | ratio p50 {:.2}x p99 {:.2}x",
            self.what,
            self.direct.len(),
            ms(d50),
            ms(d99),
            ms(g50),
            ms(g99),
            ms(g50) - ms(d50),
            ms(g99) - ms(d99),
            ms(g50) / ms(d50).max(1e-9),
            ms(g99) / ms(d99).max(1e-9),
        );
    }
}

/// Events per second of `watchers` watches from rv 0 over `objects` objects.
async fn watch_round(client: &Client, ns: &str, watchers: usize, objects: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        tasks.push(tokio::spawn(async move {
            let mut stream = api
                .watch(
                    &WatchParams::default().labels("bench=gate").timeout(290),
                    "0",
                )
                .await
                .unwrap_or_else(|e| panic!("watch: {e}"))
                .boxed();
            let mut seen = 0usize;
            while seen < objects {
                match stream.try_next().await {
                    Ok(Some(WatchEvent::Added(_))) => seen += 1,
                    Ok(Some(_)) => {}
                    other => panic!("the watch ended after {seen} events: {other:?}"),
                }
            }
            seen
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or_else(|e| panic!("watcher: {e}"));
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = env_usize("ZEN_LEAD_BENCH_N", 1000);
    let watchers = env_usize("ZEN_LEAD_BENCH_WATCHERS", 16);
    let objects = env_usize("ZEN_LEAD_BENCH_OBJECTS", 1000);
    let rounds = env_usize("ZEN_LEAD_BENCH_ROUNDS", 6);

    let admin_kubeconfig = kubeconfig_path();
    let admin = fixture::client_from(&admin_kubeconfig, true).await;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let ns = namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    generate_name: Some("zl-bench-gate-".into()),
                    labels: Some([("zen-lead.io/test".to_owned(), "true".to_owned())].into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!("cannot create the bench namespace ({e}); run `make cluster-up`")
        })
        .metadata
        .name
        .unwrap_or_default();
    // The namespace's ServiceAccount admission needs its `default` account
    // before TokenRequests in it work reliably.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), &ns);
    for _ in 0..300 {
        if matches!(accounts.get_opt("default").await, Ok(Some(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let tokens = fixture::accounts(&admin, &ns).await;
    // Long timings: the leader must not lose its term to a slow moment of
    // the machine while the figures are taken.
    fixture::create_lease(&admin, &ns, "bench", None, (60, 40.0, 5.0)).await;
    let cluster = fixture::cluster(&admin_kubeconfig);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/test-scratch/bench-gate-{}",
        std::process::id()
    ));
    let mut agent = fixture::GateAgent::start(fixture::AgentOpts {
        ns: &ns,
        pool: "bench",
        dir: dir.clone(),
        cluster: &cluster,
        tokens: &tokens,
        upstream: None,
        extra: vec!["--log-level".into(), "warn".into()],
        pod: None,
    });
    agent.wait_serving(Duration::from_secs(60)).await;
    agent.wait_leading(true, Duration::from_secs(60)).await;

    let direct_kubeconfig = dir.join("direct.kubeconfig");
    fixture::write_kubeconfig(
        &direct_kubeconfig,
        &cluster.server,
        &cluster.ca_pem,
        &tokens.app,
        None,
    );
    let direct = fixture::client_from(&direct_kubeconfig, false).await;
    let gated = agent.app_client(false).await;
    let direct_cms: Api<ConfigMap> = Api::namespaced(direct.clone(), &ns);
    let gated_cms: Api<ConfigMap> = Api::namespaced(gated.clone(), &ns);

    let payload = "x".repeat(1024);
    direct_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "target"}, "data": {"k": "0"}}))
                .expect("cm"),
        )
        .await
        .unwrap_or_else(|e| panic!("create target: {e}"));

    // Warm both paths (connections, TLS, the agent's pool).
    for _ in 0..50 {
        direct_cms.get("target").await.expect("warm direct");
        gated_cms.get("target").await.expect("warm gated");
    }

    let cpu_before = cpu_seconds(agent.pid());
    let mut get = Row {
        what: "GET",
        direct: Vec::with_capacity(n),
        gated: Vec::with_capacity(n),
    };
    for i in 0..n * 2 {
        let (api, into) = if i % 2 == 0 {
            (&direct_cms, &mut get.direct)
        } else {
            (&gated_cms, &mut get.gated)
        };
        let t = Instant::now();
        api.get("target")
            .await
            .unwrap_or_else(|e| panic!("GET: {e}"));
        into.push(t.elapsed());
    }
    // As many writes as reads: a p99 of fewer samples is mostly etcd noise.
    let patches = n.max(1);
    let mut patch = Row {
        what: "PATCH",
        direct: Vec::with_capacity(patches),
        gated: Vec::with_capacity(patches),
    };
    for i in 0..patches * 2 {
        let (api, into) = if i % 2 == 0 {
            (&direct_cms, &mut patch.direct)
        } else {
            (&gated_cms, &mut patch.gated)
        };
        let body = Patch::Merge(json!({"data": {"k": i.to_string()}}));
        let t = Instant::now();
        api.patch("target", &PatchParams::default(), &body)
            .await
            .unwrap_or_else(|e| panic!("PATCH: {e}"));
        into.push(t.elapsed());
    }
    let gated_requests = (n + patches) as f64;
    let cpu_requests = cpu_seconds(agent.pid()) - cpu_before;

    // Objects for the watch rounds.
    let admin_cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let create_started = Instant::now();
    let mut batch = futures::stream::iter(0..objects)
        .map(|i| {
            let api = admin_cms.clone();
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": format!("obj-{i:05}"), "labels": {"bench": "gate"}},
                "data": {"payload": payload},
            }))
            .expect("cm");
            async move { api.create(&PostParams::default(), &cm).await.map(|_| ()) }
        })
        .buffer_unordered(16);
    while let Some(result) = batch.next().await {
        result.unwrap_or_else(|e| panic!("create object: {e}"));
    }
    eprintln!(
        "created {objects} objects in {:.1} s",
        create_started.elapsed().as_secs_f64()
    );

    let mut direct_rates = Vec::new();
    let mut gated_rates = Vec::new();
    let mut gated_watch_events = 0.0;
    // One unmeasured round each: the API server's first answers for fresh
    // objects are slower (serialization caches), whichever path asks first.
    watch_round(&direct, &ns, watchers, objects).await;
    watch_round(&gated, &ns, watchers, objects).await;
    let cpu_before_watch = cpu_seconds(agent.pid());
    for round in 0..rounds {
        // Let the API server finish tearing down the previous round's
        // watches, then alternate which path goes first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if round % 2 == 0 {
            direct_rates.push(watch_round(&direct, &ns, watchers, objects).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
            gated_rates.push(watch_round(&gated, &ns, watchers, objects).await);
        } else {
            gated_rates.push(watch_round(&gated, &ns, watchers, objects).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
            direct_rates.push(watch_round(&direct, &ns, watchers, objects).await);
        }
        gated_watch_events += (watchers * objects) as f64;
    }
    let cpu_watch = cpu_seconds(agent.pid()) - cpu_before_watch;
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    };

    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "API gate vs direct (same run; kube-rs HTTP/1.1 client, app ServiceAccount token; gate = leader, bench profile)"
    );
    println!("load average at the end: {}", uptime.trim());
    get.print();
    patch.print();
    println!(
        "WATCH    {watchers} watchers x {objects} objects (~1 KiB), {rounds} rounds: direct best {:.0} ev/s (median {:.0}) | gated best {:.0} ev/s (median {:.0}) | gated/direct best {:.2} median {:.2} ({:+.1}%)",
        best(&direct_rates),
        median(&direct_rates),
        best(&gated_rates),
        median(&gated_rates),
        best(&gated_rates) / best(&direct_rates).max(1e-9),
        median(&gated_rates) / median(&direct_rates).max(1e-9),
        (median(&gated_rates) / median(&direct_rates).max(1e-9) - 1.0) * 100.0,
    );
    println!(
        "agent CPU: {:.1} µs per gated GET/PATCH, {:.2} µs per gated watch event",
        cpu_requests / gated_requests * 1e6,
        cpu_watch / gated_watch_events.max(1.0) * 1e6
    );
    println!("rounds (ev/s): direct {direct_rates:.0?} gated {gated_rates:.0?}");
    let metrics = agent.metrics().await;
    let count = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("?")
            .to_owned()
    };
    println!(
        "connections: {} accepted from the app, {} opened to the API server",
        count("zen_lead_gate_connections_total"),
        count("zen_lead_gate_upstream_connections_total")
    );

    // Still the leader throughout? (a lost term would have refused PATCHes)
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    if let Ok(lease) = leases.get("bench").await {
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        println!(
            "lease holder at the end: {holder} (agent {})",
            agent.identity
        );
    }
    drop(agent);
    if let Err(e) = namespaces.delete(&ns, &DeleteParams::background()).await {
        eprintln!("warning: could not delete {ns}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
