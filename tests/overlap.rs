//! The overlap checker, in the spirit of Jepsen's lock tests, on the real
//! node: faults hit the current leader of a pool, and a checker proves from
//! CLOCK_MONOTONIC records (one clock for every process of the host) whether
//! two replicas were ever active at once.
//!
//! Three pools of three replicas run side by side in one namespace, with the
//! same timings (lease 5 s, renew 3 s, retry 1 s unless ZEN_LEAD_OVERLAP_LEASE
//! says otherwise):
//! - `zl`: `zl-testapp` in a zen-lead pool with `start` activation; active
//!   while its process runs (it records its start and its SIGTERM);
//! - `zlp`: the same app in a zen-lead pool with `process` activation (under
//!   `zen-lead run`; every pod Ready);
//! - `peer`: client-go's `leaderelection` in each pod (`lepeer`,
//!   ReleaseOnCancel, exiting when it loses the lease as controllers do);
//!   active while it leads. client-go documents that it does not fence.
//!
//! Faults, at random (the seed is printed; ZEN_LEAD_OVERLAP_SEED repeats a
//! run), each aimed at the leader of one pool: delete its pod; SIGKILL its
//! elector (zen-lead's agent container; the peer's process); freeze the whole
//! pod past the lease, then thaw; cut the pod off from the API server past the
//! lease, then heal; restart the API server or the kubelet (both pools at
//! once). A process
//! that was killed writes nothing more: it counts as active until the checker
//! sees it gone. ZEN_LEAD_OVERLAP_FAULTS (default 6; `make chaos` sets more)
//! is the number of faults; the table goes to target/overlap-report.md.
//!
//! What it asserts for zen-lead: no overlap after a pod deletion or a kubelet
//! restart. `start` activation cannot stop an app in place, so whenever the
//! leader loses its term while its pod lives on (frozen, cut off, its agent
//! down longer than the lease, the API server away longer than the renew
//! deadline) an overlap is allowed while the fault lasts plus 10 s for the
//! controller to delete the deposed pod, and is reported. `process`
//! activation stops the app by its term's own deadline: no overlap under
//! any fault, except that a frozen pod's app (which does nothing while
//! frozen) may still be seen running for up to 1 s after the thaw, the time
//! `zen-lead run` takes to wake up past its deadline and stop it. The peer is
//! measured, never judged.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::faults::{
    CutOff, Frozen, agent_exe, kill_all, pids_with_env, restart_apiserver, restart_component,
};
use common::zen_lead_host::{register_webhook, start_controller};
use common::{client, from_json, records_dir, with_namespace};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::time::{Instant, sleep};

fn mono() -> i64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum System {
    ZenLead,
    ZenLeadProcess,
    Peer,
}

impl System {
    const ALL: [System; 3] = [System::ZenLead, System::ZenLeadProcess, System::Peer];

    fn label(self) -> &'static str {
        match self {
            System::ZenLead => "zl",
            System::ZenLeadProcess => "zlp",
            System::Peer => "peer",
        }
    }
    fn record(self) -> &'static str {
        match self {
            System::ZenLead => "zl.log",
            System::ZenLeadProcess => "zlp.log",
            System::Peer => "peer.log",
        }
    }
    /// The executable of its active process, and the env var naming the pod.
    fn process(self) -> &'static str {
        match self {
            System::ZenLead | System::ZenLeadProcess => "testapp",
            System::Peer => "lepeer",
        }
    }
    /// The row of the report.
    fn name(self) -> &'static str {
        match self {
            System::ZenLead => "zen-lead `start`",
            System::ZenLeadProcess => "zen-lead `process`",
            System::Peer => "client-go leaderelection",
        }
    }
    /// How long an overlap that began under `fault` may last (`None`: none
    /// allowed); the peer is never judged (see [`Fault::start_overlap_limit`]).
    fn overlap_limit(self, fault: Fault, from: i64, healed: i64) -> Option<i64> {
        match self {
            System::ZenLead => fault.start_overlap_limit(from, healed),
            System::ZenLeadProcess => fault.process_overlap_limit(healed),
            System::Peer => Some(i64::MAX),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    DeletePod,
    KillElector,
    Freeze,
    Cut,
    RestartApiServer,
    RestartKubelet,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::DeletePod,
        Fault::KillElector,
        Fault::Freeze,
        Fault::Cut,
        Fault::RestartApiServer,
        Fault::RestartKubelet,
    ];
    /// A restart of a cluster component hits every pool, whichever was aimed at.
    fn hits_both(self) -> bool {
        matches!(self, Fault::RestartApiServer | Fault::RestartKubelet)
    }

    /// How long an overlap that began under this fault may last for
    /// `start` activation (`None`: none allowed). `start` overlaps whenever
    /// the leader loses its term while its pod lives on: frozen (its app
    /// stops only once thawed), cut off, its agent down longer than the lease
    /// (the kubelet backs off restarting a sidecar that died again), or the
    /// API server away longer than the renew deadline. The controller deletes
    /// such a deposed pod once the successor leads. A deleted pod or a
    /// restarted kubelet must never overlap.
    fn start_overlap_limit(self, from: i64, healed: i64) -> Option<i64> {
        const GRACE: i64 = 10_000_000_000;
        // After an API server restart the deposed pod's app ends only when the
        // kubelet, reconnecting with its own informer back-off (tens of
        // seconds after several restarts; the controller deletes the pod about
        // 3 s after the successor leads), sends it SIGTERM: bounded, but by the
        // kubelet, not by zen-lead (CI seeds 28452842102767, 29529734750275).
        const API_RESTART_GRACE: i64 = 60_000_000_000;
        match self {
            Fault::Freeze => Some(healed.max(from) + GRACE),
            Fault::RestartApiServer => Some(healed.max(from) + API_RESTART_GRACE),
            Fault::Cut | Fault::KillElector => Some(from + GRACE),
            Fault::DeletePod | Fault::RestartKubelet => None,
        }
    }

    /// The same for `process` activation: `zen-lead run` stops the app by
    /// the term's deadline on its own clock, so no overlap under any fault,
    /// but a frozen pod's app is frozen too, and is seen running after the
    /// thaw until `run`, woken past its deadline, has stopped it.
    fn process_overlap_limit(self, healed: i64) -> Option<i64> {
        const AFTER_THAW: i64 = 1_000_000_000;
        match self {
            Fault::Freeze => Some(healed + AFTER_THAW),
            _ => None,
        }
    }
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// One active period of one pod: [start, end) in CLOCK_MONOTONIC ns.
#[derive(Debug, Clone)]
struct Term {
    pod: String,
    start: i64,
    /// Its stop record, or when it was seen gone; `None`: still active.
    end: Option<i64>,
}

/// The records of one system, and when killed processes were seen gone.
struct Tracker {
    system: System,
    file: PathBuf,
    gone: BTreeMap<(String, i64), i64>,
}

impl Tracker {
    fn terms(&self) -> Vec<Term> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut terms: Vec<Term> = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (Some(pod), Some(at)) = (v["name"].as_str(), v["mono"].as_i64()) else {
                continue;
            };
            match v["event"].as_str() {
                Some("start") => terms.push(Term {
                    pod: pod.to_owned(),
                    start: at,
                    end: None,
                }),
                Some("stop") => {
                    if let Some(t) = terms
                        .iter_mut()
                        .rev()
                        .find(|t| t.pod == pod && t.end.is_none())
                    {
                        t.end = Some(at);
                    }
                }
                _ => {}
            }
        }
        for t in &mut terms {
            if t.end.is_none() {
                t.end = self.gone.get(&(t.pod.clone(), t.start)).copied();
            }
        }
        // A pod whose process was restarted (a killed peer) starts a new term:
        // the older open one ended by then at the latest.
        let mut by_pod: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, t) in terms.iter().enumerate() {
            by_pod.entry(t.pod.clone()).or_default().push(i);
        }
        for idx in by_pod.values() {
            for w in idx.windows(2) {
                let next_start = terms[w[1]].start;
                if terms[w[0]].end.is_none_or(|e| e > next_start) {
                    terms[w[0]].end = Some(next_start);
                }
            }
        }
        terms
    }

    /// Marks open terms whose process no longer exists as ended now.
    fn sweep(&mut self) {
        let now = mono();
        for t in self.terms() {
            if t.end.is_none()
                && pids_with_env(self.system.process(), "POD_NAME", &t.pod).is_empty()
            {
                self.gone.entry((t.pod.clone(), t.start)).or_insert(now);
            }
        }
    }

    /// The pod of the one open term, if exactly one is open.
    fn leader(&self) -> Option<(String, i64)> {
        let open: Vec<Term> = self
            .terms()
            .into_iter()
            .filter(|t| t.end.is_none())
            .collect();
        (open.len() == 1).then(|| (open[0].pod.clone(), open[0].start))
    }
}

/// Pairs of terms of different pods that overlap: (pod, pod, from, to).
fn overlaps(terms: &[Term], now: i64) -> Vec<(String, String, i64, i64)> {
    let mut out = Vec::new();
    for (i, a) in terms.iter().enumerate() {
        for b in &terms[i + 1..] {
            if a.pod == b.pod {
                continue;
            }
            let from = a.start.max(b.start);
            let to = a.end.unwrap_or(now).min(b.end.unwrap_or(now));
            if to > from {
                out.push((a.pod.clone(), b.pod.clone(), from, to));
            }
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Timing {
    lease: u64,
    renew: u64,
    retry: u64,
}

fn timing() -> Timing {
    let lease: u64 = std::env::var("ZEN_LEAD_OVERLAP_LEASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(3);
    // client-go's 15:10:2, rounded to whole seconds as the policy needs.
    Timing {
        lease,
        renew: (lease * 2 / 3).max(2),
        retry: (lease * 2 / 15).max(1),
    }
}

async fn create_pools(client: &Client, ns: &str, dir: &Path, t: &Timing) {
    for (pool, activation) in [("zl", "start"), ("zlp", "process")] {
        Api::<zen_lead::api::LeaderPolicy>::namespaced(client.clone(), ns)
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
                    "metadata": {"name": pool},
                    "spec": {"activation": activation, "leaseDurationSeconds": t.lease,
                             "renewDeadlineSeconds": t.renew, "retryPeriodSeconds": t.retry}
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("create LeaderPolicy {pool}: {e}"));
    }
    // The peer's ServiceAccount may campaign for its Lease.
    let rbac = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "peer"},
               "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                          "verbs": ["get", "create", "update"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "peer"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "peer"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}),
    ];
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &from_json(rbac[0].clone()))
        .await
        .unwrap_or_else(|e| panic!("create Role: {e}"));
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &from_json(rbac[1].clone()))
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding: {e}"));
    let pod_spec = |image: &str, command: Option<&str>, args: Vec<String>| {
        json!({
            "nodeSelector": {"zen-lead.io/node": "real"},
            "tolerations": [{"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "app", "image": image, "imagePullPolicy": "Never",
                "command": command.map(|c| vec![c]), "args": args,
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
                ],
                "volumeMounts": [{"name": "records", "mountPath": "/records"}]
            }],
            "volumes": [{"name": "records", "hostPath": {"path": dir.to_string_lossy(), "type": "Directory"}}]
        })
    };
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), ns);
    let app_args = |record: &str| {
        vec![
            "--name=$(POD_NAME)".to_owned(),
            "--listen=:8080".to_owned(),
            format!("--record=/records/{record}"),
        ]
    };
    let peer_args = vec![
        "--namespace=$(POD_NAMESPACE)".to_owned(),
        "--lease=peer".to_owned(),
        "--record=/records/peer.log".to_owned(),
        "--exit-on-loss".to_owned(),
        format!("--lease-duration={}s", t.lease),
        format!("--renew-deadline={}s", t.renew),
        format!("--retry-period={}s", t.retry),
    ];
    // `process` runs the container's `command` under `zen-lead run`, so it
    // must be set.
    const TESTAPP: &str = "/usr/local/bin/testapp";
    for (name, image, command, args, annotations) in [
        (
            "zl",
            "localhost/zl-testapp:dev",
            None,
            app_args(System::ZenLead.record()),
            json!({"zen-lead/pool": "zl"}),
        ),
        (
            "zlp",
            "localhost/zl-testapp:dev",
            Some(TESTAPP),
            app_args(System::ZenLeadProcess.record()),
            json!({"zen-lead/pool": "zlp"}),
        ),
        (
            "peer",
            "localhost/zl-lepeer:dev",
            None,
            peer_args,
            json!({}),
        ),
    ] {
        deployments
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "metadata": {"name": name},
                    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
                             "template": {
                                 "metadata": {"labels": {"app": name}, "annotations": annotations},
                                 "spec": pod_spec(image, command, args)
                             }}
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("create Deployment {name}: {e}"));
    }
}

/// Waits until the system has exactly one active pod (for at least 2 s) and
/// three live pods; returns the leader pod with its UID and IP.
async fn steady(pods: &Api<Pod>, tracker: &mut Tracker) -> (String, String, String) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        tracker.sweep();
        let list = pods
            .list(&ListParams::default().labels(&format!("app={}", tracker.system.label())))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        // Live: not deleted, and some container runs (a `start` follower's
        // pod stays Pending while its agent, a native sidecar, holds the app).
        let live: Vec<&Pod> = list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    s.init_container_statuses
                        .iter()
                        .flatten()
                        .chain(s.container_statuses.iter().flatten())
                        .any(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
                })
            })
            .collect();
        if let Some((leader, since)) = tracker.leader()
            && live.len() == 3
            && mono() - since > 2_000_000_000
            && let Some(pod) = live
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&leader))
        {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default();
            return (leader, uid, ip);
        }
        assert!(
            Instant::now() < deadline,
            "{}: no steady single leader within 180 s: {:?}",
            tracker.system.label(),
            tracker.terms()
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// One injected fault and what followed.
#[derive(Debug)]
struct Outcome {
    system: System,
    fault: Fault,
    at: i64,
    healed: i64,
    takeover_ms: Option<f64>,
}

#[tokio::test]
async fn no_two_replicas_active_under_faults() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "overlap", |client, ns| async move {
        let t = timing();
        let faults: usize = std::env::var("ZEN_LEAD_OVERLAP_FAULTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6);
        let seed: u64 = std::env::var("ZEN_LEAD_OVERLAP_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| (mono() as u64) | 1);
        println!("overlap: seed {seed}, {faults} faults, lease {}s / {}s / {}s", t.lease, t.renew, t.retry);
        let mut rng = Rng(seed);
        let dir = records_dir(&ns);
        let controller = start_controller(&ns, &dir).await;
        let hook = register_webhook(&client, &ns, &controller).await;
        create_pools(&client, &ns, &dir, &t).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let api = common::delay_proxy::api_server_addr(&common::kubeconfig_path());
        let mut trackers: BTreeMap<System, Tracker> = System::ALL
            .into_iter()
            .map(|s| {
                (
                    s,
                    Tracker {
                        system: s,
                        file: dir.join(s.record()),
                        gone: BTreeMap::new(),
                    },
                )
            })
            .collect();
        let lease_ns = i64::try_from(t.lease).unwrap_or(5) * 1_000_000_000;
        let mut outcomes: Vec<Outcome> = Vec::new();
        for n in 0..faults {
            // Every kind comes round; which pool it hits is random.
            let fault = Fault::ALL[(n + rng.below(Fault::ALL.len() as u64) as usize) % Fault::ALL.len()];
            let system = System::ALL[rng.below(System::ALL.len() as u64) as usize];
            let mut tracker = trackers.remove(&system).expect("tracker");
            let (leader, uid, ip) = steady(&pods, &mut tracker).await;
            for other in trackers.values_mut() {
                steady(&pods, other).await;
            }
            let at = mono();
            let mut healed = at;
            println!("overlap: fault {n}: {fault:?} on {} leader {leader}", system.label());
            match fault {
                Fault::DeletePod => {
                    pods.delete(&leader, &DeleteParams::default())
                        .await
                        .unwrap_or_else(|e| panic!("delete {leader}: {e}"));
                }
                Fault::KillElector => {
                    let pids = match system {
                        System::ZenLead | System::ZenLeadProcess => {
                            pids_with_env(agent_exe(), "ZEN_LEAD_POD_NAME", &leader)
                        }
                        System::Peer => pids_with_env("lepeer", "POD_NAME", &leader),
                    };
                    assert!(!pids.is_empty(), "no elector process for {leader}");
                    kill_all(&pids);
                }
                Fault::Freeze | Fault::Cut => {
                    let guard: Box<dyn std::any::Any> = if fault == Fault::Freeze {
                        Box::new(Frozen::pod(&uid))
                    } else {
                        Box::new(CutOff::pod(&ip, api))
                    };
                    let until = Instant::now() + Duration::from_secs(t.lease + 2);
                    while Instant::now() < until {
                        tracker.sweep();
                        sleep(Duration::from_millis(200)).await;
                    }
                    drop(guard);
                    healed = mono();
                }
                Fault::RestartApiServer => {
                    restart_apiserver();
                    healed = mono();
                }
                Fault::RestartKubelet => {
                    restart_component("kubelet");
                    healed = mono();
                }
            }
            // A take-over, or the same leader still active a while later.
            // After a take-over, keep sweeping until the old leader's app is
            // seen gone (up to 3 s after the fault healed): one killed by
            // SIGKILL (`process` after a thaw) writes no stop record, and its
            // end is when a sweep first misses it.
            let patience = Instant::now() + Duration::from_secs(t.lease * 3 + 20);
            let mut takeover_ms = None;
            while Instant::now() < patience {
                tracker.sweep();
                if takeover_ms.is_none()
                    && let Some(next) = tracker
                        .terms()
                        .iter()
                        .filter(|x| x.pod != leader && x.start > at)
                        .map(|x| x.start)
                        .min()
                {
                    takeover_ms = Some((next - at) as f64 / 1e6);
                }
                if takeover_ms.is_some() {
                    let old_open = tracker
                        .terms()
                        .iter()
                        .any(|x| x.pod == leader && x.end.is_none());
                    if !old_open || mono() - healed > 3_000_000_000 {
                        break;
                    }
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let kept = tracker.leader().is_some_and(|(p, _)| p == leader);
                if kept && mono() - healed > lease_ns + 2_000_000_000 {
                    break;
                }
                sleep(Duration::from_millis(100)).await;
            }
            println!("overlap: fault {n}: take-over {takeover_ms:?} ms");
            outcomes.push(Outcome { system, fault, at, healed, takeover_ms });
            trackers.insert(system, tracker);
        }
        for tracker in trackers.values_mut() {
            steady(&pods, tracker).await;
        }

        // The checker.
        let now = mono();
        let mut report = String::from(
            "| system | faults | terms | overlaps | longest overlap | take-over p50 / p99 by fault |\n|---|---|---|---|---|---|\n",
        );
        let mut failures = Vec::new();
        for (system, tracker) in &trackers {
            let terms = tracker.terms();
            let found = overlaps(&terms, now);
            let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.system == *system).collect();
            let mut by_kind: BTreeMap<Fault, Vec<f64>> = BTreeMap::new();
            for o in &mine {
                by_kind.entry(o.fault).or_default().extend(o.takeover_ms);
            }
            let takeovers: Vec<String> = by_kind
                .iter_mut()
                .map(|(k, v)| {
                    v.sort_by(f64::total_cmp);
                    format!(
                        "{k:?} {:.0} / {:.0} ms ({} of {})",
                        percentile(v, 0.5),
                        percentile(v, 0.99),
                        v.len(),
                        mine.iter().filter(|o| o.fault == *k).count()
                    )
                })
                .collect();
            let longest = found.iter().map(|o| o.3 - o.2).max().unwrap_or(0);
            report.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} ms | {} |\n",
                system.name(),
                mine.len(),
                terms.len(),
                found.len(),
                longest as f64 / 1e6,
                takeovers.join("; ")
            ));
            if *system != System::Peer {
                for (a, b, from, to) in &found {
                    // The fault it began under: the last one injected before
                    // that hit this pool (a restart hits both pools).
                    let hits = |o: &&Outcome| o.system == *system || o.fault.hits_both();
                    let cause = outcomes.iter().rev().filter(hits).find(|o| o.at <= *from);
                    // The cause bounds the overlap; so does a later fault that
                    // hit this pool while it lasted (a second API server
                    // restart also holds up the controller's deletion of the
                    // deposed pod), counted from when it began.
                    let allowed = cause.is_some_and(|c| {
                        outcomes
                            .iter()
                            .filter(hits)
                            .filter(|o| o.at >= c.at && o.at <= *to)
                            .any(|o| {
                                system
                                    .overlap_limit(o.fault, (*from).max(o.at), o.healed)
                                    .is_some_and(|limit| *to <= limit)
                            })
                    });
                    println!(
                        "overlap: {}: {a} and {b} together {:.0} ms, ended {:.0} ms after {:?} healed",
                        system.name(),
                        (*to - *from) as f64 / 1e6,
                        cause.map_or(f64::NAN, |c| (*to - c.healed) as f64 / 1e6),
                        cause.map(|c| c.fault)
                    );
                    if !allowed {
                        failures.push(format!(
                            "{}: {a} and {b} were active together for {:.0} ms (after {cause:?})",
                            system.name(),
                            (*to - *from) as f64 / 1e6
                        ));
                    }
                }
            }
        }
        println!("overlap: seed {seed}\n{report}");
        let out = common::repo_root().join("target/overlap-report.md");
        let _ = std::fs::write(&out, format!("seed {seed}, lease {}s\n\n{report}", t.lease));
        assert!(failures.is_empty(), "zen-lead overlaps: {failures:#?}\n{report}");
        let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(&hook, &DeleteParams::default())
            .await;
        drop(controller.child);
    })
    .await;
    // Its API server restarts leave the controller manager's informers
    // backing off; the next suite's Deployments must get their pods.
    common::faults::wait_workload_controllers(&client).await;
}
