//! Safety and liveness of the election under faults, against the local
//! cluster with agents and locks as real processes.
//!
//! - `chaos`: 5 agents on one pool and 3 `zen-lead lock` loops on one lock
//!   go through ZEN_LEAD_CHAOS_FAULTS (default 200) random faults: SIGKILL,
//!   SIGTERM and SIGSTOP/SIGCONT of the leader, SIGKILL of followers, API
//!   server pauses and restarts, the Leases deleted by hand, SIGKILL and
//!   SIGSTOP of lock holders. Every agent logs its own view of "I lead" with
//!   CLOCK_MONOTONIC timestamps; the checker finds no two overlapping terms,
//!   and no two lock commands ever ran at once. After every fault a single
//!   leader exists again within leaseDuration + a bound.
//! - `short_api_outage_keeps_the_leader`: an outage shorter than
//!   renewDeadline changes nothing.
//!
//! Both disturb the shared API server, so they run one at a time.

mod common;
#[path = "common/election.rs"]
mod election_util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use election_util::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::DeleteParams;
use rustix::process::Signal;
use zen_lead::election::clock::now_mono_ns;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POOL: &str = "chaos";
const LOCK: &str = "chaos-lock";

/// xorshift64*: reproducible faults from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    TermLeader,
    StopLeader,
    KillFollower,
    PauseApiServer,
    RestartApiServer,
    DeleteLease,
    KillLockHolder,
    StopLockHolder,
}

impl Fault {
    fn pick(rng: &mut Rng) -> Fault {
        match rng.below(100) {
            0..20 => Fault::KillLeader,
            20..35 => Fault::TermLeader,
            35..55 => Fault::StopLeader,
            55..63 => Fault::KillFollower,
            63..73 => Fault::PauseApiServer,
            73..77 => Fault::RestartApiServer,
            77..87 => Fault::DeleteLease,
            87..94 => Fault::KillLockHolder,
            _ => Fault::StopLockHolder,
        }
    }
}

/// Three loops running `zen-lead lock` over and over; each command checks,
/// with an atomic mkdir, that no other command is inside.
struct LockLoops {
    stop: Arc<AtomicBool>,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    threads: Vec<std::thread::JoinHandle<Vec<Option<i32>>>>,
}

impl LockLoops {
    fn start(dir: &Path, ns: &str, t: TestTimings) -> LockLoops {
        let stop = Arc::new(AtomicBool::new(false));
        let pids = Arc::new(Mutex::new(vec![None; 3]));
        let held = dir.join("lock-held");
        let script = format!(
            "trap 'rmdir {held}; exit 143' TERM INT; \
             mkdir {held} 2>/dev/null || echo \"overlap $(date +%s%N)\" >> {v}; \
             echo run >> {runs}; sleep 0.3; rmdir {held}",
            held = held.display(),
            v = dir.join("lock-violations").display(),
            runs = dir.join("lock-runs").display(),
        );
        let threads = (0..3)
            .map(|slot| {
                let stop = stop.clone();
                let pids = pids.clone();
                let script = script.clone();
                let ns = ns.to_owned();
                let log = dir.join(format!("lock{slot}.log"));
                std::thread::spawn(move || {
                    let mut codes = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let stderr = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&log)
                            .map(Stdio::from)
                            .unwrap_or_else(|_| Stdio::null());
                        let child = Command::new(BIN)
                            .env("KUBECONFIG", common::kubeconfig_path())
                            .args(["lock", LOCK, "--namespace", &ns])
                            .args(t.lock_flags())
                            .args(["--grace-period", "500ms", "--timeout", "20s"])
                            .args(["--", "sh", "-c", &script])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(stderr)
                            .spawn();
                        let Ok(mut child) = child else {
                            break;
                        };
                        if let Ok(mut p) = pids.lock() {
                            p[slot] = Some(child.id());
                        }
                        let code = child.wait().ok().and_then(|s| s.code());
                        if let Ok(mut p) = pids.lock() {
                            p[slot] = None;
                        }
                        codes.push(code);
                    }
                    codes
                })
            })
            .collect();
        LockLoops {
            stop,
            pids,
            threads,
        }
    }

    fn running(&self) -> Vec<u32> {
        self.pids
            .lock()
            .map(|p| p.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    fn finish(self) -> Vec<Option<i32>> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

struct Pool {
    dir: std::path::PathBuf,
    ns: String,
    agents: Vec<Agent>,
    retired: Vec<Agent>,
    generation: usize,
}

impl Pool {
    fn start_agent(&mut self, slot: usize) -> Agent {
        self.generation += 1;
        Agent::start(
            &self.dir,
            &self.ns,
            POOL,
            &format!("c{slot}g{}", self.generation),
            &["--create-lease"],
        )
    }

    /// Replaces agents that exited (keeps their logs for the checker).
    fn restart_dead(&mut self) {
        for slot in 0..self.agents.len() {
            if self.agents[slot].exited.is_some() {
                let fresh = self.start_agent(slot);
                let old = std::mem::replace(&mut self.agents[slot], fresh);
                self.retired.push(old);
            }
        }
    }

    fn leader(&self) -> Option<usize> {
        single_leader(&self.agents)
    }
}

fn faults_from_env() -> usize {
    std::env::var("ZEN_LEAD_CHAOS_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[tokio::test]
async fn chaos() {
    let _serial = SERIAL.lock().await;
    let client = common::client().await;
    common::with_namespace(&client, "chaos", |client, ns| async move {
        let t = TestTimings::FAST;
        let dir = scratch_dir("chaos");
        let faults = faults_from_env();
        let seed = std::env::var("ZEN_LEAD_CHAOS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| (now_mono_ns() as u64) | 1);
        eprintln!(
            "chaos: {faults} faults, seed {seed} (ZEN_LEAD_CHAOS_SEED), logs in {}",
            dir.display()
        );
        let mut rng = Rng(seed);

        create_lease(&client, &ns, POOL, t).await;
        let mut pool = Pool {
            dir: dir.clone(),
            ns: ns.clone(),
            agents: Vec::new(),
            retired: Vec::new(),
            generation: 0,
        };
        for slot in 0..5 {
            let agent = pool.start_agent(slot);
            pool.agents.push(agent);
        }
        let locks = LockLoops::start(&dir, &ns, t);
        until("the first leader", Duration::from_secs(30), || {
            pool.leader().is_some()
        })
        .await;

        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let liveness_bound = t.lease() + Duration::from_secs(5);
        let mut worst: std::collections::BTreeMap<Fault, Duration> = Default::default();
        // What each fault hit and when (CLOCK_MONOTONIC), so an overlap can
        // be told with the faults around it.
        let mut journal: Vec<(u128, String)> = Vec::new();
        for n in 0..faults {
            let fault = Fault::pick(&mut rng);
            let leader = pool.leader();
            let target = leader.map_or("no single leader".to_owned(), |i| {
                format!("leader {} pid {}", pool.agents[i].identity, pool.agents[i].pid())
            });
            journal.push((now_mono_ns(), format!("fault {n} {fault:?} ({target}; lock pids {:?})", locks.running())));
            match fault {
                Fault::KillLeader | Fault::TermLeader | Fault::StopLeader => {
                    let Some(i) = leader else { continue };
                    match fault {
                        Fault::KillLeader => {
                            pool.agents[i].kill();
                            pool.agents[i].wait_exit(Duration::from_secs(5)).await;
                        }
                        Fault::TermLeader => {
                            pool.agents[i].signal(Signal::TERM);
                            let status = pool.agents[i].wait_exit(Duration::from_secs(5)).await;
                            assert!(status.success(), "fault {n}: SIGTERM exit {status}");
                        }
                        _ => {
                            let pause = rng.millis(200, 4500);
                            pool.agents[i].signal(Signal::STOP);
                            tokio::time::sleep(pause).await;
                            pool.agents[i].signal(Signal::CONT);
                        }
                    }
                }
                Fault::KillFollower => {
                    let followers: Vec<usize> = (0..pool.agents.len())
                        .filter(|i| Some(*i) != leader)
                        .collect();
                    let i = followers[rng.below(followers.len() as u64) as usize];
                    pool.agents[i].kill();
                    pool.agents[i].wait_exit(Duration::from_secs(5)).await;
                }
                Fault::PauseApiServer => {
                    let pid = apiserver_pid();
                    signal(pid, Signal::STOP);
                    tokio::time::sleep(rng.millis(300, 1500)).await;
                    signal(pid, Signal::CONT);
                }
                Fault::RestartApiServer => {
                    tokio::task::spawn_blocking(restart_apiserver)
                        .await
                        .expect("restart");
                }
                Fault::DeleteLease => {
                    let name = if rng.below(3) == 0 { LOCK } else { POOL };
                    let _ = leases.delete(name, &DeleteParams::default()).await;
                }
                Fault::KillLockHolder | Fault::StopLockHolder => {
                    let running = locks.running();
                    if running.is_empty() {
                        continue;
                    }
                    let pid = running[rng.below(running.len() as u64) as usize];
                    if fault == Fault::KillLockHolder {
                        signal(pid, Signal::KILL);
                    } else {
                        signal(pid, Signal::STOP);
                        tokio::time::sleep(rng.millis(200, 4000)).await;
                        signal(pid, Signal::CONT);
                    }
                }
            }
            // Liveness: one leader again, within the bound. The machine and
            // the cluster are shared: if the API server was restarted by
            // someone else meanwhile, the bound counts from that restart.
            let mut api_pid = apiserver_pid();
            let mut since = tokio::time::Instant::now();
            let took = loop {
                if pool.leader().is_some() {
                    break since.elapsed();
                }
                let pid = apiserver_pid();
                if pid != api_pid {
                    eprintln!(
                        "chaos: the API server restarted during fault {n}; liveness counts from now"
                    );
                    api_pid = pid;
                    since = tokio::time::Instant::now();
                }
                assert!(
                    since.elapsed() <= liveness_bound,
                    "no single leader {liveness_bound:?} after fault {n} ({fault:?}), seed {seed}; \
                     logs in {}",
                    dir.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let entry = worst.entry(fault).or_default();
            *entry = (*entry).max(took);
            pool.restart_dead();
        }
        eprintln!("chaos: slowest recovery per fault kind: {worst:?}");

        // Stop everything and check the logs.
        for agent in pool.agents.iter() {
            agent.signal(Signal::CONT);
            agent.signal(Signal::TERM);
        }
        for agent in pool.agents.iter_mut() {
            agent.wait_exit(Duration::from_secs(10)).await;
        }
        let codes = tokio::task::spawn_blocking(move || locks.finish())
            .await
            .expect("locks");
        let mut all = Vec::new();
        for agent in pool.agents.iter().chain(pool.retired.iter()) {
            let end = agent.exited.map(|(_, at)| at).unwrap_or_else(now_mono_ns);
            all.extend(intervals(&agent.entries(), end));
        }
        let terms = all.len();
        let found = overlaps(all);
        let around = found.first().map_or(String::new(), |(a, b)| {
            let (from, to) = (a.start.saturating_sub(5_000_000_000), b.start + 1_000_000_000);
            journal
                .iter()
                .filter(|(t, _)| (from..=to).contains(t))
                .map(|(t, what)| format!("\n  {t}: {what}"))
                .collect()
        });
        assert!(
            found.is_empty(),
            "{} overlapping leadership terms (seed {seed}), first: {:?}; faults from 5 s before it:{around}",
            found.len(),
            found.first()
        );
        assert!(terms > faults / 4, "only {terms} terms in {faults} faults");
        let violations = std::fs::read_to_string(dir.join("lock-violations")).unwrap_or_default();
        assert!(
            violations.is_empty(),
            "two lock commands ran at once:\n{violations}"
        );
        let runs = std::fs::read_to_string(dir.join("lock-runs"))
            .unwrap_or_default()
            .lines()
            .count();
        assert!(runs > 10, "lock commands ran only {runs} times");
        eprintln!(
            "chaos: {faults} faults, {terms} leadership terms, no overlap; {runs} lock commands, \
             none concurrent; lock exit codes seen: {:?}",
            codes.iter().collect::<std::collections::BTreeSet<_>>()
        );
    })
    .await;

    // Hand the cluster back working: after the restarts above, the controller
    // manager's informers may still be backing off, and the next suite's
    // first namespace would wait for its ServiceAccount. with_namespace waits
    // for that ServiceAccount, which proves the controllers are back.
    // The same holds for the workload controllers the next suites rely on
    // (Deployment, ReplicaSet, StatefulSet): a Deployment and a StatefulSet
    // must each get their pod.
    let settle = std::time::Instant::now();
    common::faults::wait_workload_controllers(&client).await;
    eprintln!(
        "chaos: controllers acting again {:.1} s after the checks",
        settle.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn short_api_outage_keeps_the_leader() {
    let _serial = SERIAL.lock().await;
    let client = common::client().await;
    common::with_namespace(&client, "outage", |client, ns| async move {
        let t = TestTimings {
            lease_secs: 6,
            renew: Duration::from_secs(4),
            retry: Duration::from_secs(1),
        };
        let dir = scratch_dir("outage");
        create_lease(&client, &ns, POOL, t).await;
        let agents: Vec<Agent> = (0..3)
            .map(|i| Agent::start(&dir, &ns, POOL, &format!("o{i}"), &[]))
            .collect();
        until("a leader", Duration::from_secs(20), || {
            single_leader(&agents).is_some()
        })
        .await;
        let leader = single_leader(&agents).expect("leader");
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // Two pauses of 2 s (half the renew deadline), 3 s apart.
        for _ in 0..2 {
            let pid = apiserver_pid();
            signal(pid, Signal::STOP);
            tokio::time::sleep(Duration::from_secs(2)).await;
            signal(pid, Signal::CONT);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        for (i, agent) in agents.iter().enumerate() {
            let entries = agent.entries();
            let expected = if i == leader { 1 } else { 0 };
            assert_eq!(entries.len(), expected, "agent {i}: {entries:?}");
        }
        let holder = lease_holder(&client, &ns, POOL).await;
        assert_eq!(holder, agents[leader].identity);
    })
    .await;
}

/// A slow API server (every request of the agents delayed by a proxy on
/// their path) must not cost the leader its Lease while answers still come
/// inside the renew deadline: client-go users see leadership lost tens of
/// times a week from stalled renewals. A latency past the renew deadline
/// may cost one clean change, never two leaders at once.
#[tokio::test]
async fn slow_api_server_keeps_the_leader_below_the_renew_deadline() {
    let _serial = SERIAL.lock().await;
    let client = common::client().await;
    common::with_namespace(&client, "slowapi", |client, ns| async move {
        let t = TestTimings {
            lease_secs: 6,
            renew: Duration::from_secs(4),
            retry: Duration::from_millis(500),
        };
        let dir = scratch_dir("slowapi");
        create_lease(&client, &ns, POOL, t).await;
        let kubeconfig = common::kubeconfig_path();
        let proxy =
            common::delay_proxy::DelayProxy::start(common::delay_proxy::api_server_addr(&kubeconfig))
                .await;
        let via_proxy = proxy.kubeconfig(&kubeconfig, &dir);
        let agents: Vec<Agent> = (0..3)
            .map(|i| Agent::start_via(&via_proxy, &dir, &ns, POOL, &format!("s{i}"), &[]))
            .collect();
        until("a leader", Duration::from_secs(20), || {
            single_leader(&agents).is_some()
        })
        .await;
        let leader = single_leader(&agents).expect("leader");
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // Sustained latency of 1.5 s: every renewal takes three retry
        // periods, each still lands well inside the previous one's deadline.
        proxy.set_latency(Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_secs(8)).await;
        proxy.set_latency(Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // One spike of 2.5 s (below renewDeadline - retryPeriod).
        proxy.set_latency(Duration::from_millis(2500));
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.set_latency(Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(4)).await;
        for (i, agent) in agents.iter().enumerate() {
            let entries = agent.entries();
            let expected = usize::from(i == leader);
            assert_eq!(
                entries.len(),
                expected,
                "agent {i}: leadership changed under a latency below the renew deadline: {entries:?}"
            );
        }
        assert_eq!(
            lease_holder(&client, &ns, POOL).await,
            agents[leader].identity
        );

        // Past the renew deadline (6 s > 4 s) for 8 s: the leader steps down
        // on time; afterwards one leader again, and no overlap ever.
        proxy.set_latency(Duration::from_secs(6));
        tokio::time::sleep(Duration::from_secs(8)).await;
        proxy.set_latency(Duration::ZERO);
        until(
            "a leader after the slow period",
            t.lease() + Duration::from_secs(15),
            || single_leader(&agents).is_some(),
        )
        .await;
        let all = agent_intervals(&agents);
        assert!(overlaps(all.clone()).is_empty(), "overlapping terms: {all:?}");
        // Changes of leader, in term order: a term of another agent than the
        // previous term's (A -> B -> A counts twice).
        let mut terms = all.clone();
        terms.sort_by_key(|i| i.start);
        let changes = terms.windows(2).filter(|w| w[0].id != w[1].id).count();
        assert!(
            changes <= 1,
            "{changes} changes of leader for one slow period: {terms:?}"
        );
    })
    .await;
}
