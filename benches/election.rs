//! `cargo bench --bench election` (`make bench-election`): zen-lead's
//! election against client-go's (the `lepeer` process built with the local
//! cluster: 15s/10s/2s, ReleaseOnCancel), side by side, same cluster, same
//! run, same timings (lease 15 s, renew deadline 10 s, retry 2 s).
//!
//! - graceful hand-off: SIGTERM to the leader until another candidate
//!   reports that it leads (zen-lead: its leadership log; lepeer: its
//!   `leading` event);
//! - crash takeover: the same after SIGKILL;
//! - API requests per second of an idle follower (zen-lead: its request
//!   counter over a quiet window; lepeer: its request count over its life);
//! - resident memory (VmRSS) of leaders and followers.
//!
//! Pools run concurrently to bound the wall time. ZEN_LEAD_BENCH_POOLS
//! (default 10) pools per implementation, ZEN_LEAD_BENCH_ROUNDS (default 5)
//! trials per pool and kind of fault: 50 trials each by default.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/election.rs"]
mod election_util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use election_util::{Agent, TestTimings, create_lease, scratch_dir, signal};
use rustix::process::Signal;
use tokio::time::Instant;
use zen_lead::election::clock::{now_mono_ns, unix_ns};

const TIMINGS: TestTimings = TestTimings {
    lease_secs: 15,
    renew: Duration::from_secs(10),
    retry: Duration::from_secs(2),
};
/// Time for followers to see a new leader before the next fault: client-go
/// followers only look every retry period (2 s, jittered up to 2.4 s).
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    ZenLead,
    ClientGo,
}

/// A lepeer process and the events it printed.
struct Peer {
    id: String,
    child: Child,
    events: Arc<Mutex<Vec<(String, u128, u64)>>>,
    started: u128,
}

impl Peer {
    fn start(ns: &str, lease: &str, id: &str) -> Peer {
        let bin = common::repo_root().join("tests/cluster/bin/lepeer");
        let mut child = Command::new(&bin)
            .args(["--kubeconfig"])
            .arg(common::kubeconfig_path())
            .args(["--namespace", ns, "--lease", lease, "--id", id])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run `make cluster-up`",
                    bin.display()
                )
            });
        let events = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let events = events.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let event = v["event"].as_str().unwrap_or_default().to_owned();
                    let at = v["unixNano"].as_u64().map_or(0, u128::from);
                    let requests = v["requests"].as_u64().unwrap_or(0);
                    if let Ok(mut e) = events.lock() {
                        e.push((event, at, requests));
                    }
                }
            });
        }
        Peer {
            id: id.to_owned(),
            child,
            events,
            started: unix_ns(),
        }
    }

    fn leads(&self) -> Option<u128> {
        let events = self.events.lock().ok()?;
        let last = events
            .iter()
            .rev()
            .find(|(e, _, _)| matches!(e.as_str(), "leading" | "stopped_leading" | "exit"))?;
        (last.0 == "leading").then_some(last.1)
    }

    fn exit_requests(&self) -> Option<(u64, u128)> {
        let events = self.events.lock().ok()?;
        events
            .iter()
            .find(|(e, _, _)| e == "exit")
            .map(|(_, at, r)| (*r, *at))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One candidate of either implementation.
enum Cand {
    Zen(Agent),
    Go(Peer),
}

impl Cand {
    fn pid(&self) -> u32 {
        match self {
            Cand::Zen(a) => a.pid(),
            Cand::Go(p) => p.child.id(),
        }
    }

    /// When it started leading, on its implementation's clock, if it leads.
    fn leads(&self) -> Option<u128> {
        match self {
            Cand::Zen(a) => a
                .entries()
                .last()
                .filter(|e| e.event == "leading" && a.exited.is_none())
                .map(|e| e.mono_ns),
            Cand::Go(p) => p.leads(),
        }
    }

    async fn stop_and_wait(&mut self) {
        match self {
            Cand::Zen(a) => {
                a.wait_exit(Duration::from_secs(30)).await;
            }
            Cand::Go(p) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = p.child.try_wait() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

struct BenchPool {
    kind: Kind,
    ns: String,
    lease: String,
    dir: std::path::PathBuf,
    cands: Vec<Cand>,
    generation: usize,
}

impl BenchPool {
    fn start_cand(&mut self) -> Cand {
        self.generation += 1;
        let name = format!("{}-c{}", self.lease, self.generation);
        match self.kind {
            Kind::ZenLead => Cand::Zen(Agent::start(&self.dir, &self.ns, &self.lease, &name, &[])),
            Kind::ClientGo => Cand::Go(Peer::start(&self.ns, &self.lease, &name)),
        }
    }

    fn now(&self) -> u128 {
        match self.kind {
            Kind::ZenLead => now_mono_ns(),
            Kind::ClientGo => unix_ns(),
        }
    }

    fn leader(&self) -> Option<usize> {
        let leading: Vec<usize> = (0..self.cands.len())
            .filter(|i| self.cands[*i].leads().is_some())
            .collect();
        (leading.len() == 1).then(|| leading[0])
    }

    async fn wait_leader(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} pool {} has no single leader after {limit:?}",
                self.kind,
                self.lease
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// One trial: `sig` to the leader, time until another candidate leads.
    async fn trial(&mut self, sig: Signal) -> Duration {
        self.wait_leader(Duration::from_secs(60)).await;
        tokio::time::sleep(SETTLE).await;
        let old = self.wait_leader(Duration::from_secs(60)).await;
        let sent = self.now();
        signal(self.cands[old].pid(), sig);
        let deadline = Instant::now() + Duration::from_secs(60);
        let took = loop {
            if let Some(at) = (0..self.cands.len())
                .filter(|i| *i != old)
                .find_map(|i| self.cands[i].leads().filter(|at| *at >= sent))
            {
                break Duration::from_nanos(u64::try_from(at - sent).unwrap_or(u64::MAX));
            }
            assert!(Instant::now() < deadline, "{:?}: no takeover", self.kind);
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        self.cands[old].stop_and_wait().await;
        let fresh = self.start_cand();
        let _ = std::mem::replace(&mut self.cands[old], fresh);
        took
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Private (anonymous) resident memory: what each extra candidate costs;
/// the rest of VmRSS is the executable's pages, shared through the page cache.
fn rss_anon_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "RssAnon:")
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

async fn run_trials(
    pools: Vec<BenchPool>,
    rounds: usize,
    sig: Signal,
) -> (Vec<BenchPool>, Vec<Duration>, Vec<Duration>) {
    let tasks: Vec<_> = pools
        .into_iter()
        .map(|mut pool| {
            tokio::spawn(async move {
                let mut samples = Vec::new();
                for _ in 0..rounds {
                    samples.push(pool.trial(sig).await);
                }
                (pool, samples)
            })
        })
        .collect();
    let mut pools = Vec::new();
    let (mut zen, mut go) = (Vec::new(), Vec::new());
    for t in tasks {
        let (pool, samples) = t.await.expect("trial task");
        match pool.kind {
            Kind::ZenLead => zen.extend(samples),
            Kind::ClientGo => go.extend(samples),
        }
        pools.push(pool);
    }
    (pools, zen, go)
}

async fn bench(client: kube::Client, ns: String) {
    let n_pools = env_usize("ZEN_LEAD_BENCH_POOLS", 10);
    let rounds = env_usize("ZEN_LEAD_BENCH_ROUNDS", 5);
    let dir = scratch_dir("bench-election");
    eprintln!(
        "election bench: {n_pools} pools x {rounds} rounds per implementation, 3 candidates per pool, namespace {ns}"
    );
    let mut pools = Vec::new();
    for i in 0..n_pools {
        for kind in [Kind::ZenLead, Kind::ClientGo] {
            let lease = match kind {
                Kind::ZenLead => format!("zl{i}"),
                Kind::ClientGo => format!("go{i}"),
            };
            if kind == Kind::ZenLead {
                // The controller's job in a cluster: create the pool's Lease.
                create_lease(&client, &ns, &lease, TIMINGS).await;
            }
            let mut pool = BenchPool {
                kind,
                ns: ns.clone(),
                lease,
                dir: dir.clone(),
                cands: Vec::new(),
                generation: 0,
            };
            for _ in 0..3 {
                let c = pool.start_cand();
                pool.cands.push(c);
            }
            pools.push(pool);
        }
    }

    eprintln!("graceful hand-off trials...");
    let (pools, zen_graceful, go_graceful) = run_trials(pools, rounds, Signal::TERM).await;
    eprintln!(
        "crash takeover trials (about {}s each)...",
        TIMINGS.lease_secs + 3
    );
    let (pools, zen_crash, go_crash) = run_trials(pools, rounds, Signal::KILL).await;

    // Steady state: leaders elected, nothing happening.
    eprintln!("steady state...");
    for pool in &pools {
        pool.wait_leader(Duration::from_secs(60)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let window = Duration::from_secs(env_usize("ZEN_LEAD_BENCH_IDLE_SECS", 30) as u64);
    let mut zen_before = Vec::new();
    for pool in pools.iter().filter(|p| p.kind == Kind::ZenLead) {
        let leader = pool.leader();
        for (i, c) in pool.cands.iter().enumerate() {
            if let (Cand::Zen(a), false) = (c, Some(i) == leader) {
                zen_before.push((a.port, api_requests(a).await));
            }
        }
    }
    tokio::time::sleep(window).await;
    let mut zen_rates = Vec::new();
    for pool in pools.iter().filter(|p| p.kind == Kind::ZenLead) {
        for c in &pool.cands {
            if let Cand::Zen(a) = c
                && let Some((_, before)) = zen_before.iter().find(|(p, _)| *p == a.port)
            {
                let after = api_requests(a).await;
                zen_rates.push((after.saturating_sub(*before)) as f64 / window.as_secs_f64());
            }
        }
    }
    let (mut zen_leader_rss, mut zen_follower_rss, mut go_leader_rss, mut go_follower_rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut zen_anon, mut go_anon) = (Vec::new(), Vec::new());
    for pool in &pools {
        let leader = pool.leader();
        for (i, c) in pool.cands.iter().enumerate() {
            let rss = vm_rss_kib(c.pid());
            match pool.kind {
                Kind::ZenLead => zen_anon.push(rss_anon_kib(c.pid())),
                Kind::ClientGo => go_anon.push(rss_anon_kib(c.pid())),
            }
            match (pool.kind, Some(i) == leader) {
                (Kind::ZenLead, true) => zen_leader_rss.push(rss),
                (Kind::ZenLead, false) => zen_follower_rss.push(rss),
                (Kind::ClientGo, true) => go_leader_rss.push(rss),
                (Kind::ClientGo, false) => go_follower_rss.push(rss),
            }
        }
    }
    // client-go followers: requests over their whole life, read on exit.
    let mut go_rates = Vec::new();
    let mut pools = pools;
    for pool in pools.iter_mut().filter(|p| p.kind == Kind::ClientGo) {
        let leader = pool.leader();
        for (i, c) in pool.cands.iter_mut().enumerate() {
            if Some(i) == leader {
                continue;
            }
            if let Cand::Go(p) = c {
                signal(p.child.id(), Signal::TERM);
                let deadline = Instant::now() + Duration::from_secs(10);
                while p.exit_requests().is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if let Some((requests, at)) = p.exit_requests() {
                    let life = Duration::from_nanos(u64::try_from(at - p.started).unwrap_or(1));
                    go_rates.push(requests as f64 / life.as_secs_f64());
                }
                let _ = &p.id;
            }
        }
    }
    drop(pools);

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let ratio = |go: Duration, zen: Duration| {
        if zen.is_zero() {
            "-".to_owned()
        } else {
            format!("{:.1}x", go.as_secs_f64() / zen.as_secs_f64())
        }
    };
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let max = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);

    println!();
    println!(
        "zen-lead vs client-go leaderelection (lepeer), lease 15s / renew 10s / retry 2s, release on cancel"
    );
    println!(
        "{} graceful and {} crash trials per implementation ({} pools x {} rounds, 3 candidates each, run concurrently)",
        zen_graceful.len(),
        zen_crash.len(),
        n_pools,
        rounds
    );
    println!();
    println!(
        "| {:<34} | {:>12} | {:>12} | {:>13} | {:>13} | {:>22} |",
        "metric",
        "zen-lead p50",
        "zen-lead p99",
        "client-go p50",
        "client-go p99",
        "client-go/zen p50, p99"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(36),
        "-".repeat(14),
        "-".repeat(14),
        "-".repeat(15),
        "-".repeat(15),
        "-".repeat(24)
    );
    for (name, zen, go) in [
        ("graceful hand-off (SIGTERM)", &zen_graceful, &go_graceful),
        ("crash takeover (SIGKILL)", &zen_crash, &go_crash),
    ] {
        let (z50, z99, g50, g99) = (
            percentile(zen, 50.0),
            percentile(zen, 99.0),
            percentile(go, 50.0),
            percentile(go, 99.0),
        );
        println!(
            "| {:<34} | {:>12} | {:>12} | {:>13} | {:>13} | {:>22} |",
            name,
            ms(z50),
            ms(z99),
            ms(g50),
            ms(g99),
            format!("{}, {}", ratio(g50, z50), ratio(g99, z99))
        );
    }
    println!(
        "| {:<34} | {:>12} | {:>12} | {:>13} | {:>13} | {:>22} |",
        "idle follower API requests/s",
        format!("{:.3} mean", mean(&zen_rates)),
        format!("{:.3} max", max(&zen_rates)),
        format!("{:.3} mean", mean(&go_rates)),
        format!("{:.3} max", max(&go_rates)),
        format!("{} / {} followers", zen_rates.len(), go_rates.len())
    );
    println!(
        "| {:<34} | {:>12} | {:>12} | {:>13} | {:>13} | {:>22} |",
        "resident memory, median",
        format!("L {}", mib(median_u64(zen_leader_rss))),
        format!("F {}", mib(median_u64(zen_follower_rss.clone()))),
        format!("L {}", mib(median_u64(go_leader_rss))),
        format!("F {}", mib(median_u64(go_follower_rss.clone()))),
        format!(
            "{:.1}x (followers)",
            median_u64(go_follower_rss) as f64 / median_u64(zen_follower_rss).max(1) as f64
        )
    );
    println!(
        "| {:<34} | {:>12} | {:>12} | {:>13} | {:>13} | {:>22} |",
        "private memory (RssAnon), median",
        mib(median_u64(zen_anon.clone())),
        "",
        mib(median_u64(go_anon.clone())),
        "",
        format!(
            "{:.1}x",
            median_u64(go_anon) as f64 / median_u64(zen_anon).max(1) as f64
        )
    );
    println!();
    println!(
        "zen-lead follower rate: its own request counter over a {}s idle window; client-go: requests/lifetime on exit.",
        window.as_secs()
    );
}

async fn api_requests(agent: &Agent) -> u64 {
    let (_, body) = agent.get("/metrics").await;
    body.lines()
        .find(|l| l.starts_with("zen_lead_api_requests_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn main() {
    // `cargo bench` passes --bench; we take no arguments.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        let client = common::client().await;
        common::with_namespace(&client, "bench-election", bench).await;
    });
}
