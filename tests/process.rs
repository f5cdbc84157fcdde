//! `process` activation on the real node: `zen-lead controller` (a host
//! process) injects the agent from the release image (the local registry); each app
//! container runs `zl-testapp` under `zen-lead run`, which starts it only while
//! the pod leads. The app appends start/stop lines with CLOCK_MONOTONIC
//! timestamps to a hostPath file, so the tests see exactly when each pod's app
//! ran and check that no two ran at once, whatever happens to the leader.

mod common;

use std::path::Path;
use std::time::Duration;

use common::guard;
use common::records::{Run, STEADY, assert_no_overlap, monotonic_ns, runs, wait_steady};
use common::workloads::{rollout_complete, rollout_restart};
use common::zen_lead_host::{Controller, register_webhook, start_controller};
use common::{client, eventually, from_json, pod_ready, records_dir, with_namespace};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const TESTAPP: &str = "localhost/zl-testapp:dev";
const TESTAPP_BIN: &str = "/usr/local/bin/testapp";

/// Lease 6 s / renew 4 s / retry 1 s: faults that outlast the renew deadline
/// stay short.
const LEASE_SECONDS: i64 = 6;
const RENEW_SECONDS: i64 = 4;

/// A namespace with the controller and its webhook.
struct Setup {
    client: Client,
    ns: String,
    dir: std::path::PathBuf,
    controller: Controller,
    hook: String,
    /// The chart's webhook entries and fail-closed guard, when asked for.
    chart_admission: Option<guard::Installed>,
}

impl Setup {
    async fn new(client: &Client, ns: &str) -> Self {
        let dir = records_dir(ns);
        let controller = start_controller(ns, &dir).await;
        let hook = register_webhook(client, ns, &controller).await;
        Self {
            client: client.clone(),
            ns: ns.to_owned(),
            dir,
            controller,
            hook,
            chart_admission: None,
        }
    }

    /// Admission as the chart installs it: both webhook entries (first-time
    /// pool pods with failurePolicy Ignore) and the require-agent guard.
    async fn like_chart(client: &Client, ns: &str) -> Self {
        let dir = records_dir(ns);
        let controller = start_controller(ns, &dir).await;
        let installed = guard::install(client, ns, &controller).await;
        Self {
            client: client.clone(),
            ns: ns.to_owned(),
            dir,
            controller,
            hook: String::new(),
            chart_admission: Some(installed),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn policy(&self, name: &str, extra: Value) {
        let mut spec = json!({"activation": "process", "leaseDurationSeconds": LEASE_SECONDS,
                              "renewDeadlineSeconds": RENEW_SECONDS, "retryPeriodSeconds": 1});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        Api::<zen_lead::api::LeaderPolicy>::namespaced(self.client.clone(), &self.ns)
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
                    "metadata": {"name": name}, "spec": spec,
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("create LeaderPolicy {name}: {e}"));
    }

    async fn deployment(&self, name: &str, replicas: i32, template: Value) {
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns)
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "metadata": {"name": name},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                             "template": template}
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("create Deployment {name}: {e}"));
    }

    async fn done(self) {
        if !self.hook.is_empty() {
            let _ = Api::<MutatingWebhookConfiguration>::all(self.client.clone())
                .delete(&self.hook, &DeleteParams::default())
                .await;
        }
        drop(self.chart_admission);
        drop(self.controller.child);
    }
}

/// A pool pod on the real node: `app` runs zl-testapp (with `command`, as
/// `process` activation requires), recording its runs into `dir`.
fn template(pool: &str, dir: &Path, extra_args: &[&str], probes: Value) -> Value {
    let mut args = vec![
        "--name=$(POD_NAME)".to_owned(),
        "--listen=:8080".to_owned(),
        "--record=/records/log".to_owned(),
    ];
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    let mut app = json!({
        "name": "app", "image": TESTAPP, "imagePullPolicy": "Never",
        "command": [TESTAPP_BIN], "args": args,
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "volumeMounts": [{"name": "records", "mountPath": "/records"}]
    });
    if let (Some(app), Some(probes)) = (app.as_object_mut(), probes.as_object()) {
        app.extend(probes.clone());
    }
    json!({
        "metadata": {"labels": {"app": pool}, "annotations": {"zen-lead/pool": pool}},
        "spec": {
            "nodeSelector": {"zen-lead.io/node": "real"},
            "tolerations": [{"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 10,
            "containers": [app],
            "volumes": [{"name": "records", "hostPath": {"path": dir.to_string_lossy(), "type": "Directory"}}]
        }
    })
}

/// Every probe kind: a TCP startup probe, an HTTP readiness probe (through
/// the agent) and an exec liveness probe (wrapped by `zen-lead probe`).
fn all_probe_kinds() -> Value {
    json!({
        "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": [TESTAPP_BIN, "--check", "http://127.0.0.1:8080/"]},
                          "periodSeconds": 2, "failureThreshold": 2}
    })
}

/// The runs still open (started, no stop recorded).
fn open_runs(dir: &Path) -> Vec<Run> {
    runs(dir).into_iter().filter(|r| r.stop.is_none()).collect()
}

/// Waits until `replicas` pods of `app` are listed and Ready, not
/// terminating, and exactly one app runs, in one of them; returns its pod.
async fn steady_pool(setup: &Setup, app: &str, replicas: usize) -> String {
    let pods = setup.pods();
    let dir = setup.dir.clone();
    eventually(
        "all pods Ready, exactly one app running",
        Duration::from_secs(180),
        || {
            let pods = pods.clone();
            let dir = dir.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(&format!("app={app}")))
                    .await
                    .map_err(|e| e.to_string())?;
                let live: Vec<&Pod> = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                let ready = live.iter().filter(|p| pod_ready(p)).count();
                let open = open_runs(&dir);
                let names: Vec<String> = live
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                if list.items.len() == replicas
                    && ready == replicas
                    && open.len() == 1
                    && names.contains(&open[0].name)
                {
                    Ok(open[0].name.clone())
                } else {
                    Err(format!(
                        "{} pods listed ({} live, {ready} Ready), apps running: {:?}",
                        list.items.len(),
                        live.len(),
                        open.iter().map(|r| &r.name).collect::<Vec<_>>()
                    ))
                }
            }
        },
    )
    .await
}

/// Deletes `leader` and waits for another pod's app to start; returns the
/// time from the delete call to that start, in ms.
async fn delete_leader(setup: &Setup, leader: &str) -> f64 {
    let t0 = monotonic_ns();
    setup
        .pods()
        .delete(leader, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete leader: {e}"));
    let dir = setup.dir.clone();
    let next = eventually(
        "another pod's app to start",
        Duration::from_secs(60),
        || {
            let dir = dir.clone();
            async move {
                runs(&dir)
                    .into_iter()
                    .find(|r| r.name != leader && r.start > t0)
                    .ok_or_else(|| "no new app yet".to_owned())
            }
        },
    )
    .await;
    (next.start - t0) as f64 / 1e6
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Memory (kB) of the host process whose argv[0] ends with `exe` and whose
/// environment has `key=value`: (resident, of which file-backed, proportional
/// share), from /proc.
fn memory_kb(exe: &str, key: &str, value: &str) -> (u64, u64, u64) {
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    common::faults::pids_with_env(exe, key, value)
        .into_iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rollup =
                std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            (
                field(&status, "VmRSS:"),
                field(&status, "RssFile:"),
                field(&rollup, "Pss:"),
            )
        })
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

/// Prints the agent's and `run`'s memory in `pod`.
fn print_memory(pod: &str) {
    let agent = memory_kb(common::faults::agent_exe(), "ZEN_LEAD_POD_NAME", pod);
    let run = memory_kb(zen_lead::contract::BIN_PATH, "POD_NAME", pod);
    println!(
        "process: memory in the leading pod (kB): agent RSS {} (file-backed {}, PSS {}), run RSS {} \
         (file-backed {}, PSS {}); together RSS {} (goal < 12288)",
        agent.0,
        agent.1,
        agent.2,
        run.0,
        run.1,
        run.2,
        agent.0 + run.0
    );
}

/// Three Ready replicas, one running app; the app's own probes of every kind
/// pass through the agent; deleting the leader moves the app; a rolling
/// update completes and leaves the app running in a new pod. Never two apps.
#[tokio::test]
async fn process_pool_keeps_followers_ready_and_one_app_running() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "process", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        setup.policy("workers", json!({})).await;
        setup
            .deployment(
                "workers",
                3,
                template("workers", &setup.dir, &[], all_probe_kinds()),
            )
            .await;
        let mut leader = steady_pool(&setup, "workers", 3).await;
        assert_eq!(runs(&setup.dir).len(), 1, "{:?}", runs(&setup.dir));

        // What the pod got: the app under `zen-lead run`, every probe
        // rewritten, and the binary volume.
        let pod = setup.pods().get(&leader).await.expect("leader pod");
        let spec = pod.spec.as_ref().expect("spec");
        let app = spec
            .containers
            .iter()
            .find(|c| c.name == "app")
            .expect("app");
        assert_eq!(
            app.command.as_deref().unwrap_or_default()[..3],
            ["/zen-lead/zen-lead", "run", "--"]
        );
        assert!(
            app.liveness_probe
                .as_ref()
                .and_then(|p| p.exec.as_ref())
                .and_then(|e| e.command.as_ref())
                .is_some_and(|c| c[1] == "probe"),
            "{app:?}"
        );

        // Memory of the agent and `run` together, in the leader.
        print_memory(&leader);

        // Delete the leader, a few rounds (ZEN_LEAD_E2E_ROUNDS).
        let rounds: usize = std::env::var("ZEN_LEAD_E2E_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        for round in 1..=rounds {
            wait_steady(&setup.pods(), "app=workers", &leader, STEADY).await;
            let ms = delete_leader(&setup, &leader).await;
            println!("process: round {round}: leader deleted -> next app started in {ms:.0} ms");
            assert_no_overlap(&runs(&setup.dir));
            leader = steady_pool(&setup, "workers", 3).await;
        }

        // A rolling update completes (followers are Ready, so it is never
        // stuck) and the app ends up in a new pod.
        let old: Vec<String> = setup
            .pods()
            .list(&ListParams::default().labels("app=workers"))
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        rollout_restart(&deploys, "workers", "process-test").await;
        rollout_complete(&deploys, "workers", 3, Duration::from_secs(240)).await;
        let leader = steady_pool(&setup, "workers", 3).await;
        assert!(
            !old.contains(&leader),
            "the app still runs in an old pod {leader}"
        );
        assert_no_overlap(&runs(&setup.dir));
        setup.done().await;
    })
    .await;
}

/// zen-lead's webhook down across a rollout (the controller stopped), with
/// admission as the chart installs it: the first-time pool pods' webhook
/// entry has failurePolicy Ignore, so the API server admits the rollout's
/// new pods without the agent, and only the require-agent guard stands
/// between them and a second running app. It refuses them (the ReplicaSet's
/// events say why), the rollout waits, one app runs throughout, and the
/// rollout completes once the controller is back.
#[tokio::test]
async fn a_rollout_while_the_webhook_is_down_waits_and_never_runs_two_apps() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "process-outage", |client, ns| async move {
        let mut setup = Setup::like_chart(&client, &ns).await;
        setup.policy("outage", json!({})).await;
        setup
            .deployment("outage", 3, template("outage", &setup.dir, &[], json!({})))
            .await;
        let leader = steady_pool(&setup, "outage", 3).await;

        setup.controller.stop().await;
        let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        rollout_restart(&deploys, "outage", "webhook-outage").await;
        let dir = setup.dir.clone();
        let refusal = guard::wait_refusal(&client, &ns, || {
            // Sampled throughout: without the guard, the new pods start
            // their apps unprotected here.
            let open: Vec<String> = open_runs(&dir).into_iter().map(|r| r.name).collect();
            assert!(
                open.len() <= 1,
                "apps running at once while the webhook is down: {open:?}"
            );
        })
        .await;
        assert!(
            refusal.contains("pool outage") && refusal.contains("second active replica"),
            "{refusal}"
        );
        // Refused, so no pod runs without the agent, and the app still runs
        // once, in the old leader.
        let pods = setup
            .pods()
            .list(&ListParams::default())
            .await
            .expect("pods");
        guard::assert_all_injected(&pods.items);
        let open: Vec<String> = open_runs(&setup.dir).into_iter().map(|r| r.name).collect();
        assert_eq!(
            open,
            vec![leader.clone()],
            "apps running while the webhook is down"
        );

        let back = std::time::Instant::now();
        setup.controller.resume(&ns, &setup.dir).await;
        rollout_complete(&deploys, "outage", 3, Duration::from_secs(180)).await;
        println!(
            "process: rollout complete {:.1} s after the controller came back",
            back.elapsed().as_secs_f64()
        );
        let now = steady_pool(&setup, "outage", 3).await;
        assert_ne!(now, leader, "the app still runs in an old pod");
        assert_no_overlap(&runs(&setup.dir));
        setup.done().await;
    })
    .await;
}

/// The leader's agent paused past its renew deadline: `run` stops the app
/// on its own clock before another replica's app starts. The agent killed:
/// the app stops at once and runs again when the pool has a leader again.
#[tokio::test]
async fn process_app_stops_when_its_agent_is_paused_or_killed() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "process-faults", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        setup.policy("faulty", json!({})).await;
        setup
            .deployment("faulty", 2, template("faulty", &setup.dir, &[], json!({})))
            .await;
        let leader = steady_pool(&setup, "faulty", 2).await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        // SIGSTOP the leader's agent (not the app) past the lease.
        let agent = common::faults::pids_with_env(common::faults::agent_exe(), "ZEN_LEAD_POD_NAME", &leader);
        assert_eq!(agent.len(), 1, "the leader's agent process: {agent:?}");
        let pid = rustix::process::Pid::from_raw(agent[0]).expect("pid");
        let paused_at = monotonic_ns();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        let dir = setup.dir.clone();
        let successor = eventually(
            "another pod's app to start while the agent is paused",
            Duration::from_secs(60),
            || {
                let dir = dir.clone();
                let leader = leader.clone();
                async move {
                    runs(&dir)
                        .into_iter()
                        .find(|r| r.name != leader && r.start > paused_at)
                        .ok_or_else(|| "no successor yet".to_owned())
                }
            },
        )
        .await;
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
        let all = runs(&setup.dir);
        let old = all
            .iter()
            .find(|r| r.name == leader)
            .expect("the paused leader's run");
        let stopped = old.stop.expect("the paused leader's app was stopped");
        println!(
            "process: agent paused: its app stopped {:.0} ms into the pause, the successor's started \
             {:.0} ms into it ({:.0} ms apart)",
            (stopped - paused_at) as f64 / 1e6,
            (successor.start - paused_at) as f64 / 1e6,
            (successor.start - stopped) as f64 / 1e6
        );
        assert!(
            stopped <= successor.start,
            "the old app ran on: {all:?}"
        );
        assert_no_overlap(&all);

        // SIGKILL the new leader's agent: its app stops at once (the agent's
        // stream breaks); the kubelet restarts the agent and an app runs again.
        let leader = steady_pool(&setup, "faulty", 2).await;
        let agent = common::faults::pids_with_env(common::faults::agent_exe(), "ZEN_LEAD_POD_NAME", &leader);
        assert_eq!(agent.len(), 1, "the leader's agent process: {agent:?}");
        let killed_at = monotonic_ns();
        common::faults::kill_all(&agent);
        let dir = setup.dir.clone();
        let stopped = eventually("the app to stop", Duration::from_secs(30), || {
            let dir = dir.clone();
            let leader = leader.clone();
            async move {
                runs(&dir)
                    .into_iter()
                    .filter(|r| r.name == leader && r.start < killed_at)
                    .find_map(|r| r.stop.filter(|s| *s > killed_at))
                    .ok_or_else(|| "still running".to_owned())
            }
        })
        .await;
        let stop_ms = (stopped - killed_at) as f64 / 1e6;
        println!("process: agent killed: its app stopped {stop_ms:.0} ms later");
        // On time: before the term's deadline could have passed.
        assert!(
            stop_ms < (RENEW_SECONDS * 1000) as f64,
            "the app stopped {stop_ms:.0} ms after its agent died"
        );
        let again = steady_pool(&setup, "faulty", 2).await;
        println!("process: after the agent's restart the app runs in {again}");
        assert_no_overlap(&runs(&setup.dir));
        setup.done().await;
    })
    .await;
}

/// `zen-lead handoff --to` a follower (it names the Lease's preferred
/// holder, as the controller does) while the leader's app takes 0.7 s to
/// stop: the old agent ends its term at once but clears the Lease only once
/// its app has exited, so the successor's app never starts beside it.
#[tokio::test]
async fn process_hand_off_waits_for_the_old_app_to_exit() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "process-handoff", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        setup.policy("handing", json!({})).await;
        setup
            .deployment(
                "handing",
                2,
                template("handing", &setup.dir, &["--stop-delay=700ms"], json!({})),
            )
            .await;
        let leader = steady_pool(&setup, "handing", 2).await;
        let follower = setup
            .pods()
            .list(&ListParams::default().labels("app=handing"))
            .await
            .expect("list")
            .items
            .into_iter()
            .find(|p| p.metadata.name.as_deref() != Some(leader.as_str()))
            .expect("a follower");
        let identity = zen_lead::api::keys::pod_identity(
            follower.metadata.name.as_deref().unwrap_or_default(),
            follower.metadata.uid.as_deref().unwrap_or_default(),
        );
        let name = follower.metadata.name.clone().unwrap_or_default();
        let asked = monotonic_ns();
        // The operator's command: it returns once the successor's agent
        // says it leads.
        let (ok, said) = zen_lead_handoff(&ns, "handing", &["--to", &name]).await;
        assert!(ok, "zen-lead handoff failed: {said}");
        assert!(said.contains(&identity) || said.contains(&name), "{said}");
        // Asked on the agent's probe port (/leadz) through the pod proxy:
        // its API on 9466 is the pod's loopback only (issue 30, finding 5).
        assert!(said.contains("its agent says it leads"), "{said}");
        let dir = setup.dir.clone();
        let next = eventually(
            "the follower's app to start",
            Duration::from_secs(60),
            || {
                let dir = dir.clone();
                let name = name.clone();
                async move {
                    runs(&dir)
                        .into_iter()
                        .find(|r| r.name == name && r.start > asked)
                        .ok_or_else(|| "not yet".to_owned())
                }
            },
        )
        .await;
        let all = runs(&setup.dir);
        let old = all.iter().find(|r| r.name == leader).expect("the old run");
        let stopped = old.stop.expect("the old app stopped");
        println!(
            "process: hand-off: old app stopped {:.0} ms after the request (0.7 s stop delay, within the 1 s stop grace), the \
             successor's started {:.0} ms after that",
            (stopped - asked) as f64 / 1e6,
            (next.start - stopped) as f64 / 1e6
        );
        assert!(stopped <= next.start, "{all:?}");
        assert_no_overlap(&all);
        setup.done().await;
    })
    .await;
}

/// `zen-lead handoff NAME -n NS [EXTRA]`: whether it succeeded, and what it
/// printed (stdout and stderr).
async fn zen_lead_handoff(ns: &str, pool: &str, extra: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_zen-lead"))
        .env("KUBECONFIG", common::kubeconfig_path())
        .args(["handoff", pool, "-n", ns, "--timeout", "60s"])
        .args(extra)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run zen-lead handoff: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// `zen-lead handoff` on a `start` pool: nothing in the leader's pod can
/// stop its app, so a hand-off would start the successor's app beside it.
/// The command refuses, says to delete the leader pod instead, and writes
/// nothing: the Lease keeps its holder and one app runs.
#[tokio::test]
async fn handoff_of_a_start_pool_is_refused_and_runs_no_second_app() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "start-handoff", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        setup.policy("cold", json!({"activation": "start"})).await;
        setup
            .deployment("cold", 2, template("cold", &setup.dir, &[], json!({})))
            .await;
        // One app runs and both agents are candidates (a start follower is
        // not Ready: its app containers wait).
        let policies: Api<zen_lead::api::LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        let dir = setup.dir.clone();
        let leader = eventually(
            "one app running, two candidates",
            Duration::from_secs(180),
            || {
                let policies = policies.clone();
                let dir = dir.clone();
                async move {
                    let p = policies.get("cold").await.map_err(|e| e.to_string())?;
                    let candidates = p.status.as_ref().and_then(|s| s.candidates).unwrap_or(0);
                    let open = open_runs(&dir);
                    if candidates == 2 && open.len() == 1 {
                        Ok(open[0].name.clone())
                    } else {
                        Err(format!("{candidates} candidates, apps running: {open:?}"))
                    }
                }
            },
        )
        .await;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client.clone(), &ns);
        let before = leases.get("cold").await.expect("Lease");

        let (ok, said) = zen_lead_handoff(&ns, "cold", &[]).await;
        assert!(!ok, "a start pool was handed off: {said}");
        assert!(
            said.contains("start activation")
                && said.contains(&format!("kubectl delete pod {leader}")),
            "{said}"
        );
        let after = leases.get("cold").await.expect("Lease");
        assert!(
            !after
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key(zen_lead::api::keys::PREFERRED_HOLDER_ANNOTATION),
            "the refused hand-off named a preferred holder"
        );
        assert_eq!(
            after.spec.and_then(|s| s.holder_identity),
            before.spec.and_then(|s| s.holder_identity)
        );
        let open: Vec<String> = open_runs(&setup.dir).into_iter().map(|r| r.name).collect();
        assert_eq!(open, vec![leader]);
        assert_no_overlap(&runs(&setup.dir));
        setup.done().await;
    })
    .await;
}

/// An app that fails while leading (exit status 3) makes its pod release
/// the Lease: another replica's app starts without waiting for the lease to
/// expire. While running, the app's own probes decide (the leader's failing
/// readiness probe makes only it NotReady); while held, followers are Ready.
#[tokio::test]
async fn process_failing_app_hands_over_and_app_probes_decide_while_running() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "process-fail", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        setup.policy("failing", json!({})).await;
        // Readiness on a port nothing listens on: the running app is never
        // Ready, the held ones are.
        let probes =
            json!({"readinessProbe": {"httpGet": {"path": "/", "port": 8081}, "periodSeconds": 1}});
        setup
            .deployment(
                "failing",
                3,
                template(
                    "failing",
                    &setup.dir,
                    &["--run-for=8s", "--exit-code=3"],
                    probes,
                ),
            )
            .await;
        let pods = setup.pods();
        let dir = setup.dir.clone();
        let first = eventually(
            "two pods Ready and the third, whose app runs, not Ready",
            Duration::from_secs(180),
            || {
                let pods = pods.clone();
                let dir = dir.clone();
                async move {
                    let list = pods
                        .list(&ListParams::default().labels("app=failing"))
                        .await
                        .map_err(|e| e.to_string())?;
                    let open = open_runs(&dir);
                    let [run] = open.as_slice() else {
                        return Err(format!("apps running: {open:?}"));
                    };
                    let ready: Vec<String> = list
                        .items
                        .iter()
                        .filter(|p| pod_ready(p))
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    if list.items.len() == 3 && ready.len() == 2 && !ready.contains(&run.name) {
                        Ok(run.clone())
                    } else {
                        Err(format!("Ready: {ready:?}, app runs in {}", run.name))
                    }
                }
            },
        )
        .await;
        // The app exits 3 after 8 s; another pod's app must follow without
        // the Lease expiring (6 s after the last renewal).
        let dir = setup.dir.clone();
        let ended = eventually("the failing app to exit", Duration::from_secs(60), || {
            let dir = dir.clone();
            let name = first.name.clone();
            async move {
                runs(&dir)
                    .into_iter()
                    .find(|r| r.name == name && r.start == first.start)
                    .and_then(|r| r.stop)
                    .ok_or_else(|| "still running".to_owned())
            }
        })
        .await;
        let next = eventually(
            "another pod's app to start",
            Duration::from_secs(60),
            || {
                let dir = dir.clone();
                let name = first.name.clone();
                async move {
                    runs(&dir)
                        .into_iter()
                        .find(|r| r.name != name && r.start > ended)
                        .ok_or_else(|| "none yet".to_owned())
                }
            },
        )
        .await;
        let gap_ms = (next.start - ended) as f64 / 1e6;
        println!("process: a failed app's exit -> another pod's app started in {gap_ms:.0} ms");
        assert!(
            gap_ms < ((LEASE_SECONDS - 2) * 1000) as f64,
            "the hand-over after a failure took {gap_ms:.0} ms: it waited for the Lease to expire"
        );
        assert_no_overlap(&runs(&setup.dir));
        setup.done().await;
    })
    .await;
}

/// The app's own probes count only while its process runs. Two app
/// containers, each with a probe that fails once its app runs: `app`'s HTTP
/// readiness and `side`'s exec readiness make only the leader's containers
/// unready, and `side`'s TCP liveness (no start-up budget) restarts only a
/// leader's `side`; the held follower stays Ready. The kubelet's restart of
/// a leader's container hands leadership over (`run` releases when a signal
/// ends its app in its term) instead of a crash-looping leader keeping the
/// pool, so the app runs in both pods in turn, never in two at once.
#[tokio::test]
async fn process_app_probes_count_only_while_the_app_runs() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "process-probes", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        setup.policy("probed", json!({})).await;
        let mut tpl = template(
            "probed",
            &setup.dir,
            &[],
            json!({
                "readinessProbe": {"httpGet": {"path": "/", "port": 8081}, "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": [TESTAPP_BIN, "--check", "http://127.0.0.1:8080/"]},
                                  "periodSeconds": 2}
            }),
        );
        let side = json!({
            "name": "side", "image": TESTAPP, "imagePullPolicy": "Never",
            "command": [TESTAPP_BIN], "args": ["--name=side", "--listen=:8090"],
            "readinessProbe": {"exec": {"command": [TESTAPP_BIN, "--check", "http://127.0.0.1:8091/"]},
                               "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 8092}, "periodSeconds": 1, "failureThreshold": 2}
        });
        if let Some(list) = tpl["spec"]["containers"].as_array_mut() {
            list.push(side);
        }
        setup.deployment("probed", 2, tpl).await;
        let pods = setup.pods();
        let dir = setup.dir.clone();
        let status = |pod: &Pod, name: &str| {
            pod.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.name == name))
                .map(|c| (c.ready, c.restart_count))
        };
        let report = eventually(
            "the leader's containers unready, the follower Ready, a liveness restart handed over",
            Duration::from_secs(180),
            || {
                let pods = pods.clone();
                let dir = dir.clone();
                async move {
                    let list = pods
                        .list(&ListParams::default().labels("app=probed"))
                        .await
                        .map_err(|e| e.to_string())?;
                    let open = open_runs(&dir);
                    let [run] = open.as_slice() else {
                        return Err(format!("apps running: {open:?}"));
                    };
                    let led: std::collections::BTreeSet<String> =
                        runs(&dir).into_iter().map(|r| r.name).collect();
                    let mut seen = Vec::new();
                    let mut restarted_leader = false;
                    let mut ok = list.items.len() == 2 && led.len() >= 2;
                    for pod in &list.items {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        let app = status(pod, "app");
                        let side = status(pod, "side");
                        let restarts = side.map_or(0, |(_, r)| r);
                        // Only a running app's liveness counts: a pod that
                        // never led is never restarted.
                        assert!(
                            restarts == 0 || led.contains(&name),
                            "{name}'s side was restarted but never ran its app: {side:?}"
                        );
                        restarted_leader |= restarts >= 1;
                        ok &= if name == run.name {
                            app.is_some_and(|(ready, _)| !ready)
                                && side.is_some_and(|(ready, _)| !ready)
                        } else {
                            pod_ready(pod)
                                && app.is_some_and(|(ready, _)| ready)
                                && side.is_some_and(|(ready, _)| ready)
                        };
                        seen.push(format!("{name}: app {app:?}, side {side:?}"));
                    }
                    if ok && restarted_leader {
                        Ok(seen)
                    } else {
                        Err(format!("leader {}; led {led:?}; {seen:?}", run.name))
                    }
                }
            },
        )
        .await;
        assert_no_overlap(&runs(&dir));
        println!("process: probes (ready, restarts): {report:?}");
        setup.done().await;
    })
    .await;
}

/// A container without `command` cannot run under `zen-lead run`: the pod is
/// refused, and the ReplicaSet's event names the container and the fix.
#[tokio::test]
async fn process_pod_without_command_is_refused_by_name() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "process-nocmd", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        setup.policy("nocmd", json!({})).await;
        let mut tpl = template("nocmd", &setup.dir, &[], json!({}));
        if let Some(app) = tpl["spec"]["containers"][0].as_object_mut() {
            app.remove("command");
        }
        setup.deployment("nocmd", 1, tpl).await;
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let message = eventually(
            "the ReplicaSet's FailedCreate event",
            Duration::from_secs(60),
            || {
                let events = events.clone();
                async move {
                    events
                        .list(&ListParams::default())
                        .await
                        .map_err(|e| e.to_string())?
                        .items
                        .into_iter()
                        .filter(|e| e.involved_object.kind.as_deref() == Some("ReplicaSet"))
                        .filter_map(|e| e.message)
                        .find(|m| m.contains("zen-lead"))
                        .ok_or_else(|| "no event yet".to_owned())
                }
            },
        )
        .await;
        assert!(
            message.contains("container \"app\" has no `command`")
                && message.contains("zen-lead/exclude-containers"),
            "{message}"
        );
        let pods = setup
            .pods()
            .list(&ListParams::default())
            .await
            .expect("list");
        assert!(pods.items.is_empty(), "no pod may be created");
        setup.done().await;
    })
    .await;
}

/// `scheduledRuns: once`: three Jobs for the same scheduled time (as CronJobs
/// of one pool create them) run the command once; the other two complete
/// without running it and say which Job ran. A Job created by hand runs.
#[tokio::test]
async fn scheduled_time_runs_once_per_pool() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "process-once", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        setup
            .policy("nightly", json!({"scheduledRuns": "once"}))
            .await;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let job = |name: &str, scheduled: Option<&str>| {
            let mut tpl = template("nightly", &setup.dir, &["--run-for=2s"], json!({}));
            tpl["spec"]["restartPolicy"] = json!("Never");
            let mut meta = json!({"name": name});
            if let Some(at) = scheduled {
                meta["annotations"] =
                    json!({"batch.kubernetes.io/cronjob-scheduled-timestamp": at});
            }
            from_json::<Job>(json!({
                "metadata": meta,
                "spec": {"backoffLimit": 0, "template": tpl}
            }))
        };
        for name in ["report-a", "report-b", "report-c"] {
            jobs.create(
                &PostParams::default(),
                &job(name, Some("2026-12-01T02:00:00Z")),
            )
            .await
            .unwrap_or_else(|e| panic!("create Job {name}: {e}"));
        }
        for name in ["report-a", "report-b", "report-c"] {
            common::workloads::job_succeeded(&client, &ns, name).await;
        }
        let ran = runs(&setup.dir);
        assert_eq!(ran.len(), 1, "one run for the scheduled time: {ran:?}");
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let skipped = eventually(
            "ScheduledRunSkipped on the two other Jobs",
            Duration::from_secs(60),
            || {
                let events = events.clone();
                async move {
                    let list = events
                        .list(&ListParams::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    let on: Vec<(String, String)> = list
                        .items
                        .into_iter()
                        .filter(|e| e.reason.as_deref() == Some("ScheduledRunSkipped"))
                        .map(|e| {
                            (
                                e.involved_object.name.unwrap_or_default(),
                                e.message.unwrap_or_default(),
                            )
                        })
                        .collect();
                    if on.len() >= 2 {
                        Ok(on)
                    } else {
                        Err(format!("events so far: {on:?}"))
                    }
                }
            },
        )
        .await;
        let runner = ["report-a", "report-b", "report-c"]
            .into_iter()
            .find(|j| ran[0].name.starts_with(&format!("{j}-")))
            .expect("the run's Job");
        for (job, message) in &skipped {
            assert_ne!(job, runner, "{skipped:?}");
            assert!(message.contains(runner), "{message}");
        }
        // A Job created by hand (no scheduled time) runs.
        jobs.create(&PostParams::default(), &job("by-hand", None))
            .await
            .expect("create Job by-hand");
        common::workloads::job_succeeded(&client, &ns, "by-hand").await;
        let ran = runs(&setup.dir);
        assert_eq!(ran.len(), 2, "{ran:?}");
        assert!(ran[1].name.starts_with("by-hand-"), "{ran:?}");
        setup.done().await;
    })
    .await;
}

/// A `process` take-over slower than this (ZEN_LEAD_BENCH_SLOW_MS, default
/// 400) prints the successor's logs (its agent's and `run`'s), to show where
/// the time went.
fn slow_takeover_ms() -> f64 {
    std::env::var("ZEN_LEAD_BENCH_SLOW_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400.0)
}

/// Prints every container's log of `pod`, with the kubelet's timestamps.
async fn print_logs(pods: &Api<Pod>, pod: &str) {
    for container in [zen_lead::contract::AGENT_CONTAINER, "app"] {
        let params = kube::api::LogParams {
            container: Some(container.to_owned()),
            timestamps: true,
            ..Default::default()
        };
        match pods.logs(pod, &params).await {
            Ok(text) => {
                for line in text.lines() {
                    println!("bench-takeover:   {pod}/{container}: {line}");
                }
            }
            Err(e) => println!("bench-takeover:   {pod}/{container}: no log ({e})"),
        }
    }
}

/// `make bench-takeover`: a `process` and a `start` pool side by side on the
/// real node; each round deletes the leader of each and times the delete
/// until the successor's app process started (ZEN_LEAD_BENCH_ROUNDS, 20 by
/// default). Prints p50/p99 for both and their ratio.
#[tokio::test]
#[ignore = "benchmark: make bench-takeover"]
async fn bench_takeover_process_vs_start() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "bench-takeover", |client, ns| async move {
        let setup = Setup::new(&client, &ns).await;
        let rounds: usize = std::env::var("ZEN_LEAD_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        // Default timings for both (a clean hand-over does not depend on them).
        for (pool, activation) in [("proc", "process"), ("strt", "start")] {
            Api::<zen_lead::api::LeaderPolicy>::namespaced(client.clone(), &ns)
                .create(
                    &PostParams::default(),
                    &from_json(json!({
                        "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
                        "metadata": {"name": pool}, "spec": {"activation": activation}
                    })),
                )
                .await
                .expect("policy");
        }
        // Separate record directories: the two pools' runs overlap by design.
        let proc_dir = setup.dir.join("proc");
        let start_dir = setup.dir.join("strt");
        for d in [&proc_dir, &start_dir] {
            std::fs::create_dir_all(d).expect("dir");
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                .expect("chmod");
        }
        setup
            .deployment("proc", 3, template("proc", &proc_dir, &[], json!({})))
            .await;
        setup
            .deployment("strt", 3, template("strt", &start_dir, &[], json!({})))
            .await;
        let mut results: Vec<(&str, Vec<f64>)> =
            vec![("process", Vec::new()), ("start", Vec::new())];
        for round in 1..=rounds {
            for (i, (pool, dir)) in [("proc", &proc_dir), ("strt", &start_dir)]
                .into_iter()
                .enumerate()
            {
                let leader = eventually("one app", Duration::from_secs(180), || {
                    let pods = setup.pods();
                    let dir = dir.clone();
                    async move {
                        let list = pods
                            .list(&ListParams::default().labels(&format!("app={pool}")))
                            .await
                            .map_err(|e| e.to_string())?;
                        let open = open_runs(&dir);
                        let live = list
                            .items
                            .iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .count();
                        let leader_ready = list.items.iter().any(|p| {
                            open.len() == 1
                                && p.metadata.name.as_deref() == Some(open[0].name.as_str())
                                && pod_ready(p)
                        });
                        if live == 3 && leader_ready {
                            Ok(open[0].name.clone())
                        } else {
                            Err(format!("{live} live, apps {open:?}"))
                        }
                    }
                })
                .await;
                // A steady pool, as for e2e_real_node.rs's rounds: right after a
                // container starts the kubelet syncs the pod for a few seconds,
                // which delays a deletion's SIGTERM (the kubelet's time, not ours).
                wait_steady(&setup.pods(), &format!("app={pool}"), &leader, STEADY).await;
                let t0 = monotonic_ns();
                setup
                    .pods()
                    .delete(&leader, &DeleteParams::default())
                    .await
                    .expect("delete");
                let next = eventually("the successor's app", Duration::from_secs(60), || {
                    let dir = dir.clone();
                    let leader = leader.clone();
                    async move {
                        runs(&dir)
                            .into_iter()
                            .find(|r| r.name != leader && r.start > t0)
                            .ok_or_else(|| "none yet".to_owned())
                    }
                })
                .await;
                let ms = (next.start - t0) as f64 / 1e6;
                // Where the time went: the kubelet's SIGTERM and the old
                // app's exit, then the hand-over to the successor's start.
                let stopped = runs(dir)
                    .into_iter()
                    .find(|r| r.name == leader && r.start < t0)
                    .and_then(|r| r.stop);
                let split = stopped.map_or_else(
                    || "old app's stop not recorded".to_owned(),
                    |stop| {
                        format!(
                            "old app stopped at {:.0} ms, successor started {:.0} ms later",
                            (stop - t0) as f64 / 1e6,
                            (next.start - stop) as f64 / 1e6
                        )
                    },
                );
                println!("bench-takeover: round {round}: {pool}: {ms:.0} ms ({split})");
                if pool == "proc" && ms > slow_takeover_ms() {
                    print_logs(&setup.pods(), &next.name).await;
                }
                if pool == "proc" && round == rounds {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    print_memory(&next.name);
                }
                results[i].1.push(ms);
            }
        }
        assert_no_overlap(&runs(&proc_dir));
        for (_, v) in results.iter_mut() {
            v.sort_by(f64::total_cmp);
        }
        for (name, v) in &results {
            println!(
                "bench-takeover: {name}: {} rounds, p50 {:.0} ms, p99 {:.0} ms",
                v.len(),
                percentile(v, 0.5),
                percentile(v, 0.99)
            );
        }
        println!(
            "bench-takeover: process/start ratio: p50 {:.2}, p99 {:.2}",
            percentile(&results[0].1, 0.5) / percentile(&results[1].1, 0.5),
            percentile(&results[0].1, 0.99) / percentile(&results[1].1, 0.99)
        );
        setup.done().await;
    })
    .await;
}
