//! Helpers for the election tests: agents and locks as real processes (the
//! built `zen-lead` binary), their leadership logs, the Lease, faults.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rustix::process::{Pid, Signal, kill_process};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use zen_lead::api::keys::{PAUSED_ANNOTATION, RENEW_DEADLINE_ANNOTATION, RETRY_PERIOD_ANNOTATION};
use zen_lead::election::clock::now_mono_ns;

pub use crate::common::net::{free_port, http_get};
pub use crate::common::scratch_dir;
use crate::common::{kubeconfig_path, repo_root};

pub const BIN: &str = env!("CARGO_BIN_EXE_zen-lead");

/// The binary agents run: `$ZEN_LEAD_AGENT_BIN` (the bench points it at the
/// shipped static `zen-lead-pod`, what the webhook injects, whose memory is
/// the figure that matters), else the `zen-lead` cargo built for this target.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("ZEN_LEAD_AGENT_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BIN))
}

/// Lease timings for tests: short, so expiries take seconds.
#[derive(Debug, Clone, Copy)]
pub struct TestTimings {
    pub lease_secs: i32,
    pub renew: Duration,
    pub retry: Duration,
}

impl TestTimings {
    pub const FAST: TestTimings = TestTimings {
        lease_secs: 3,
        renew: Duration::from_secs(2),
        retry: Duration::from_millis(500),
    };

    pub fn lease(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.lease_secs).unwrap_or(1))
    }

    pub fn lock_flags(&self) -> Vec<String> {
        vec![
            "--lease-duration".into(),
            format!("{}s", self.lease_secs),
            "--renew-deadline".into(),
            format!("{}ms", self.renew.as_millis()),
            "--retry-period".into(),
            format!("{}ms", self.retry.as_millis()),
        ]
    }
}

/// Creates the pool's Lease the way the controller does: free, with timings.
pub async fn create_lease(client: &Client, ns: &str, name: &str, t: TestTimings) -> Lease {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let annotations: BTreeMap<String, String> = [
        (
            RENEW_DEADLINE_ANNOTATION.to_owned(),
            format!("{:.3}", t.renew.as_secs_f64()),
        ),
        (
            RETRY_PERIOD_ANNOTATION.to_owned(),
            format!("{:.3}", t.retry.as_secs_f64()),
        ),
    ]
    .into();
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            lease_duration_seconds: Some(t.lease_secs),
            ..LeaseSpec::default()
        }),
    };
    api.create(&PostParams::default(), &lease)
        .await
        .unwrap_or_else(|e| panic!("creating Lease {ns}/{name}: {e}"))
}

/// Sets or removes `zen-lead.io/paused` on the Lease, as the controller does
/// for a paused policy: a compare-and-swap, retried when a renewal came first.
pub async fn set_lease_paused(client: &Client, ns: &str, name: &str, paused: bool) {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    for _ in 0..20 {
        let mut lease = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading Lease {ns}/{name}: {e}"));
        let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
        if paused {
            annotations.insert(PAUSED_ANNOTATION.to_owned(), "true".to_owned());
        } else {
            annotations.remove(PAUSED_ANNOTATION);
        }
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => panic!("writing Lease {ns}/{name}: {e}"),
        }
    }
    panic!("Lease {ns}/{name} changed under 20 attempts to set paused={paused}");
}

/// The Lease's current holder (empty string: none).
pub async fn lease_holder(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .unwrap_or_default()
}

pub fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, sig);
    }
}

/// One `zen-lead agent` process.
pub struct Agent {
    /// The pod name it was started with, and its pod UID (its instance).
    pub name: String,
    pub uid: String,
    pub identity: String,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
    pub exited: Option<(ExitStatus, u128)>,
}

impl Agent {
    pub fn start(dir: &Path, ns: &str, pool: &str, name: &str, extra: &[&str]) -> Agent {
        Self::start_via(&kubeconfig_path(), dir, ns, pool, name, extra)
    }

    /// An agent that reaches the API server through `kubeconfig`.
    pub fn start_via(
        kubeconfig: &Path,
        dir: &Path,
        ns: &str,
        pool: &str,
        name: &str,
        extra: &[&str],
    ) -> Agent {
        let uid = format!("{:08x}-0000", (now_mono_ns() as u64) & 0xffff_ffff);
        Self::start_as(kubeconfig, dir, ns, pool, name, &uid, name, extra)
    }

    /// An agent of pod `name` with UID `uid` (the same pod again, when
    /// restarting one), logging under `log_name`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_as(
        kubeconfig: &Path,
        dir: &Path,
        ns: &str,
        pool: &str,
        name: &str,
        uid: &str,
        log_name: &str,
        extra: &[&str],
    ) -> Agent {
        let port = free_port();
        let log = dir.join(format!("{log_name}.leadership.jsonl"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{log_name}.log")))
            .unwrap_or_else(|e| panic!("agent log: {e}"));
        let child = Command::new(agent_bin())
            .env("KUBECONFIG", kubeconfig)
            .env("ZEN_LEAD_LOG_LEVEL", "info,zen_lead=debug")
            .args(["agent", "--pool", pool, "--pod-name", name])
            .args(["--pod-namespace", ns, "--pod-uid", uid])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            // Several agents share the host: any free probe port.
            .args(["--probe-addr", "127.0.0.1:0"])
            .arg("--leadership-log")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        Agent {
            name: log_name.to_owned(),
            uid: uid.to_owned(),
            identity: format!("{name}_{}", &uid[..8]),
            port,
            log,
            child,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        if self.exited.is_none() {
            signal(self.pid(), sig);
        }
    }

    /// Waits for the process to end; records when (CLOCK_MONOTONIC).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some((status, _)) = self.exited {
            return status;
        }
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some((status, now_mono_ns()));
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!(
                    "agent {} did not exit within {limit:?} ({other:?})",
                    self.identity
                ),
            }
        }
    }

    pub fn kill(&mut self) {
        self.signal(Signal::CONT);
        self.signal(Signal::KILL);
    }

    pub fn entries(&self) -> Vec<Entry> {
        read_entries(&self.log)
    }

    /// Leading according to its own log (last entry is "leading").
    pub fn leads_by_log(&self) -> bool {
        self.exited.is_none() && self.entries().last().is_some_and(|e| e.event == "leading")
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// One line of a leadership log.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub event: String,
    pub id: String,
    pub mono_ns: u128,
    #[serde(default)]
    pub token: Option<i32>,
    #[serde(default)]
    pub reason: Option<String>,
}

pub fn read_entries(path: &Path) -> Vec<Entry> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

/// Opens the server-sent event stream at `path` and returns the first event
/// (up to the blank line that ends it).
pub async fn first_sse_event(port: u16, path: &str, accept: &str) -> String {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            // The first event ends with a blank line after its data.
            if text
                .find("data:")
                .is_some_and(|i| text[i..].contains("\n\n"))
            {
                break;
            }
        }
        Ok::<_, std::io::Error>(text)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// A leadership interval of one process, in CLOCK_MONOTONIC nanoseconds.
#[derive(Debug, Clone)]
pub struct Interval {
    pub id: String,
    pub start: u128,
    pub end: u128,
}

/// Turns leadership logs into intervals. A term without an end closes at
/// `ended_by` (the moment the process was seen dead, or the check time).
pub fn intervals(entries: &[Entry], ended_by: u128) -> Vec<Interval> {
    let mut out = Vec::new();
    let mut open: Option<(String, u128)> = None;
    for e in entries {
        match e.event.as_str() {
            "leading" => {
                if let Some((id, start)) = open.take() {
                    out.push(Interval {
                        id,
                        start,
                        end: e.mono_ns,
                    });
                }
                open = Some((e.id.clone(), e.mono_ns));
            }
            _ => {
                if let Some((id, start)) = open.take() {
                    out.push(Interval {
                        id,
                        start,
                        end: e.mono_ns,
                    });
                }
            }
        }
    }
    if let Some((id, start)) = open {
        out.push(Interval {
            id,
            start,
            end: ended_by,
        });
    }
    out
}

/// Every agent's terms, named by the agent (not by its identity, which
/// several agents may share).
pub fn agent_intervals(agents: &[Agent]) -> Vec<Interval> {
    agents
        .iter()
        .flat_map(|a| {
            let end = a.exited.map_or(now_mono_ns(), |(_, at)| at);
            intervals(&a.entries(), end)
                .into_iter()
                .map(|i| Interval {
                    id: a.name.clone(),
                    ..i
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Pairs of intervals of different processes that overlap in time.
pub fn overlaps(mut all: Vec<Interval>) -> Vec<(Interval, Interval)> {
    all.sort_by_key(|i| i.start);
    let mut found = Vec::new();
    for (n, a) in all.iter().enumerate() {
        for b in &all[n + 1..] {
            if b.start >= a.end {
                break;
            }
            if a.id != b.id {
                found.push((a.clone(), b.clone()));
            }
        }
    }
    found
}

/// The cluster's state file (PIDs change when a component restarts).
pub fn apiserver_pid() -> u32 {
    let path = repo_root().join(".cluster/cluster.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (is the local cluster up?)", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    json["pids"]["kube-apiserver"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no kube-apiserver pid in {}", path.display()))
}

/// Restarts the API server and waits until it is ready again.
pub fn restart_apiserver() {
    crate::common::faults::restart_apiserver();
}

/// Waits until `probe` holds, checking every 20 ms; panics with `what`.
pub async fn until<F: FnMut() -> bool>(what: &str, limit: Duration, mut probe: F) -> Duration {
    let start = Instant::now();
    loop {
        if probe() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three agents `{prefix}0..2` for `lease` with `extra` flags, once one of
/// them leads.
pub async fn three_agents_one_leading(
    dir: &Path,
    ns: &str,
    lease: &str,
    prefix: &str,
    extra: &[&str],
) -> Vec<Agent> {
    let agents: Vec<Agent> = (0..3)
        .map(|i| Agent::start(dir, ns, lease, &format!("{prefix}{i}"), extra))
        .collect();
    until("a leader", Duration::from_secs(20), || {
        single_leader(&agents).is_some()
    })
    .await;
    agents
}

/// Exactly one live agent leads by its own log; returns its index.
pub fn single_leader(agents: &[Agent]) -> Option<usize> {
    let leaders: Vec<usize> = agents
        .iter()
        .enumerate()
        .filter(|(_, a)| a.leads_by_log())
        .map(|(i, _)| i)
        .collect();
    (leaders.len() == 1).then(|| leaders[0])
}
