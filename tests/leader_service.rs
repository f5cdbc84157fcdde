//! Leader-only routing (`spec.leaderService`) on the real node, through
//! kube-proxy: a client pod inside the cluster (`zl-testapp --poll`) sends a
//! request every 5 ms, each on a new connection, to two ClusterIPs:
//! - the pool's leader Service (zen-lead's EndpointSlice), and
//! - a Service selecting the `zen-lead.io/role: leader` label (the
//!   EndpointSlice controller's),
//!
//! and records which pod answered. The pool is `api` activation, so every
//! replica's app runs and answers: a follower that received leader traffic
//! would show up.
//!
//! `make bench-routing` runs [`bench_routing_switch`]: rounds of deleting the
//! leader pod, with the switch time, the window in which two pods answered
//! and the window in which none did, per system, p50/p99.

mod common;
#[path = "common/gate.rs"]
mod fixture;
#[path = "common/upstream.rs"]
mod upstream;

use std::path::Path;
use std::time::Duration;

use common::records::monotonic_ns;
use common::workloads::stable_holder;
use common::zen_lead_host::{Controller, register_webhook, start_controller};
use common::{
    client, eventually, from_json, kubeconfig_path, outcome, records_dir, with_namespace,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use zen_lead::api::LeaderPolicy;

const TESTAPP: &str = "localhost/zl-testapp:dev";
const POOL: &str = "web";
const LEADER_SVC: &str = "web-leader";
const ROLE_SVC: &str = "web-role";
/// How long a system must answer from one pod only to count as switched.
const SETTLED: Duration = Duration::from_secs(2);

fn on_real_node(spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["nodeSelector"] = json!({"zen-lead.io/node": "real"});
    spec["tolerations"] =
        json!([{"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]);
    spec
}

/// zen-lead's controller for `ns` as a host process, with its webhook
/// registered for the namespace; the records directory.
async fn zen_lead(client: &Client, ns: &str) -> (std::path::PathBuf, Controller) {
    let dir = records_dir(ns);
    let controller = start_controller(ns, &dir).await;
    register_webhook(client, ns, &controller).await;
    (dir, controller)
}

/// The pool: a LeaderPolicy (with the leader Service when `leader_service`),
/// a 3-replica `api` Deployment whose apps all answer HTTP (each keeps
/// answering for 2 s after its SIGTERM, as a graceful server does).
async fn create_pool(client: &Client, ns: &str, leader_service: bool) {
    let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let mut spec = json!({"activation": "api"});
    if leader_service {
        spec["leaderService"] = json!({
            "name": LEADER_SVC,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]
        });
    }
    policies
        .create(
            &PostParams::default(),
            &from_json(json!({
                "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
                "metadata": {"name": POOL},
                "spec": spec
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("create LeaderPolicy: {e}"));
    create_app(client, ns, POOL, json!({"zen-lead/pool": POOL})).await;
}

/// A 3-replica Deployment `name` of the test app on the real node, pods
/// labelled `app: <name>` and annotated `annotations`: every replica answers
/// HTTP on 8080 with its pod name, is Ready once it does, and keeps
/// answering for 2 s after its SIGTERM, as a graceful server does.
async fn create_app(client: &Client, ns: &str, name: &str, annotations: serde_json::Value) {
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pod_spec = on_real_node(json!({
        "terminationGracePeriodSeconds": 10,
        "containers": [{
            "name": "app", "image": TESTAPP, "imagePullPolicy": "Never",
            "args": ["--name=$(POD_NAME)", "--listen=:8080", "--stop-delay=2s"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
        }]
    }));
    deploys
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": name},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
                         "template": {
                             "metadata": {"labels": {"app": name}, "annotations": annotations},
                             "spec": pod_spec}}
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("create Deployment {name}: {e}"));
}

/// A Service selecting the pool's pod that carries the leader role label.
async fn create_role_service(client: &Client, ns: &str) {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": ROLE_SVC},
                "spec": {"selector": {"app": POOL, "zen-lead.io/role": "leader"},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("create Service {ROLE_SVC}: {e}"));
}

async fn cluster_ip(client: &Client, ns: &str, name: &str) -> String {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("Service {name} with a ClusterIP"),
        Duration::from_secs(60),
        || {
            let services = services.clone();
            async move {
                let s = services.get(name).await.map_err(|e| e.to_string())?;
                s.spec
                    .and_then(|s| s.cluster_ip)
                    .filter(|ip| !ip.is_empty() && ip != "None")
                    .ok_or_else(|| "no ClusterIP yet".to_owned())
            }
        },
    )
    .await
}

/// A client pod `name`: polls `urls` every 5 ms, recording into
/// `dir/<name>`.
async fn start_prober(client: &Client, ns: &str, dir: &Path, name: &str, urls: &[String]) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let spec = on_real_node(json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "prober", "image": TESTAPP, "imagePullPolicy": "Never",
            "args": [format!("--poll={}", urls.join(",")), "--poll-every=5ms", format!("--record=/records/{name}")],
            "volumeMounts": [{"name": "records", "mountPath": "/records"}]
        }],
        "volumes": [{"name": "records", "hostPath": {"path": dir.to_string_lossy(), "type": "Directory"}}]
    }));
    pods.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": name}, "spec": spec})),
    )
    .await
    .unwrap_or_else(|e| panic!("create the prober pod {name}: {e}"));
}

/// One recorded request.
#[derive(Debug, Clone)]
struct Answer {
    url: String,
    sent: i64,
    /// The pod that answered; empty when none did.
    from: String,
}

/// Every answer the probers recorded in `dir`.
fn answers(dir: &Path) -> Vec<Answer> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("prober"))
        .flat_map(|e| answers_in(&e.path()))
        .collect()
}

fn answers_in(file: &Path) -> Vec<Answer> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "answer")
        .map(|v| Answer {
            url: v["url"].as_str().unwrap_or_default().to_owned(),
            sent: v["sent"].as_i64().unwrap_or_default(),
            from: v["from"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// What one system did after the leader pod was deleted at `t0`.
#[derive(Debug, Clone, Default)]
struct Switch {
    /// From the delete until every answer came from the new pod.
    switch_ms: f64,
    /// From the new pod's first answer to the old pod's last after it (two
    /// pods answering); 0 when the old one never answered after.
    two_ms: f64,
    /// The longest run of requests nobody answered.
    none_ms: f64,
    /// Answers from a pod that was neither the old nor the new leader.
    strangers: Vec<String>,
}

/// Judges `url`'s answers sent from `t0` on: `old` answered before the
/// switch; the pod answering at the end is the new one. `None` until the
/// last [`SETTLED`] all came from one pod other than `old`.
fn judge(all: &[Answer], url: &str, t0: i64, old: &str) -> Option<(String, Switch)> {
    let mut a: Vec<&Answer> = all
        .iter()
        .filter(|a| a.url == url && a.sent >= t0)
        .collect();
    a.sort_by_key(|a| a.sent);
    let last = a.last()?;
    let new = last.from.clone();
    if new.is_empty() || new == old {
        return None;
    }
    let tail_from = a.iter().rposition(|x| x.from != new).map_or(0, |i| i + 1);
    let first_of_tail = a.get(tail_from)?;
    let settled_ns = i64::try_from(SETTLED.as_nanos()).unwrap_or(i64::MAX);
    if last.sent - first_of_tail.sent < settled_ns {
        return None;
    }
    let first_new = a.iter().find(|x| x.from == new).map(|x| x.sent);
    let last_old = a.iter().rev().find(|x| x.from == old).map(|x| x.sent);
    let two_ms = match (first_new, last_old) {
        (Some(n), Some(o)) if o > n => (o - n) as f64 / 1e6,
        _ => 0.0,
    };
    let mut none_ms: f64 = 0.0;
    let mut run_start: Option<i64> = None;
    for x in &a {
        match (x.from.is_empty(), run_start) {
            (true, None) => run_start = Some(x.sent),
            (false, Some(s)) => {
                none_ms = none_ms.max((x.sent - s) as f64 / 1e6);
                run_start = None;
            }
            _ => {}
        }
    }
    let mut strangers: Vec<String> = a
        .iter()
        .filter(|x| !x.from.is_empty() && x.from != old && x.from != new)
        .map(|x| x.from.clone())
        .collect();
    strangers.dedup();
    Some((
        new,
        Switch {
            switch_ms: (first_of_tail.sent - t0) as f64 / 1e6,
            two_ms,
            none_ms,
            strangers,
        },
    ))
}

/// Waits until every answer of the last [`SETTLED`] on each URL came from
/// `leader`.
async fn wait_answering(dir: &Path, urls: &[String], leader: &str) {
    eventually(
        &format!("every Service to answer from {leader} only"),
        Duration::from_secs(90),
        || async move {
            let all = answers(dir);
            let now = monotonic_ns();
            let window = i64::try_from(SETTLED.as_nanos()).unwrap_or(i64::MAX);
            for url in urls {
                let recent: Vec<&Answer> = all
                    .iter()
                    .filter(|a| &a.url == url && a.sent > now - window)
                    .collect();
                if recent.len() < 50 || recent.iter().any(|a| a.from != leader) {
                    let from: std::collections::BTreeSet<&str> =
                        recent.iter().map(|a| a.from.as_str()).collect();
                    return Err(format!(
                        "{url}: {} answers in the last {SETTLED:?}, from {from:?}",
                        recent.len()
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
}

/// Waits until the leader Service and its EndpointSlice are gone.
async fn wait_routing_gone(client: &Client, ns: &str, limit: Duration) {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    eventually("the leader Service and its slice deleted", limit, || {
        let (services, slices) = (services.clone(), slices.clone());
        async move {
            let svc = services
                .get_opt(LEADER_SVC)
                .await
                .map_err(|e| e.to_string())?;
            let slice = slices
                .get_opt(&format!("{LEADER_SVC}-zen-lead"))
                .await
                .map_err(|e| e.to_string())?;
            (svc.is_none() && slice.is_none())
                .then_some(())
                .ok_or_else(|| "still there".to_owned())
        }
    })
    .await;
}

/// The leader Service's EndpointSlice as the API server has it.
async fn slice_endpoints(client: &Client, ns: &str) -> Vec<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    slices
        .get(&format!("{LEADER_SVC}-zen-lead"))
        .await
        .map(|s| {
            s.endpoints
                .iter()
                .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// When each thing the switch waits for was seen (monotonic ns), for the
/// bench's breakdown: the Lease's new holder, each Service's EndpointSlice
/// naming the new pod.
#[derive(Default)]
struct Seen {
    events: Vec<(i64, String, String)>,
}

type SeenLog = std::sync::Arc<std::sync::Mutex<Seen>>;

/// Watches the pool's Lease and the namespace's EndpointSlices, noting
/// (time, what, pod or holder) for every version.
fn watch_switch(client: &Client, ns: &str) -> (SeenLog, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt, watcher};
    let log: SeenLog = SeenLog::default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let (l1, l2) = (log.clone(), log.clone());
    let note = |log: &SeenLog, what: String, who: String| {
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .push((monotonic_ns(), what, who));
    };
    let task = tokio::spawn(async move {
        let lease_stream = watcher(leases, watcher::Config::default())
            .applied_objects()
            .for_each(|l| {
                if let Ok(l) = l {
                    let holder = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                    note(&l1, "lease".to_owned(), holder);
                }
                futures::future::ready(())
            });
        let slice_stream = watcher(slices, watcher::Config::default())
            .applied_objects()
            .for_each(|s| {
                if let Ok(s) = s {
                    let svc = s
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name").cloned())
                        .unwrap_or_default();
                    let ready: Vec<String> = s
                        .endpoints
                        .iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                        .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.clone()))
                        .collect();
                    note(&l2, svc, ready.join(","));
                }
                futures::future::ready(())
            });
        futures::join!(lease_stream, slice_stream);
    });
    (log, task)
}

/// Polls kube-proxy's NAT rules (`iptables-save -t nat`, every 10 ms,
/// while `running`) and notes, per Service of `ns`, the endpoint addresses
/// its rules send to, whenever they change: when kube-proxy had programmed
/// a switch. Silent where `iptables-save` cannot run.
fn watch_rules(
    ns: &str,
    log: SeenLog,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let mut last: std::collections::BTreeMap<String, String> = Default::default();
        while running.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(out) = std::process::Command::new("iptables-save")
                .args(["-t", "nat"])
                .output()
            else {
                return;
            };
            let mut now: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let (Some(c), Some(d)) = (
                    line.split("--comment \"")
                        .nth(1)
                        .and_then(|r| r.split('"').next()),
                    line.split("--to-destination ").nth(1),
                ) else {
                    continue;
                };
                let Some(svc) = c.strip_prefix(&format!("{ns}/")) else {
                    continue;
                };
                let svc = svc.split(':').next().unwrap_or(svc).to_owned();
                let ip = d.split(':').next().unwrap_or(d).to_owned();
                now.entry(svc).or_default().push(ip);
            }
            for (svc, mut ips) in now {
                ips.sort();
                let ips = ips.join(",");
                if last.get(&svc) != Some(&ips) {
                    log.lock().unwrap_or_else(|e| e.into_inner()).events.push((
                        monotonic_ns(),
                        format!("rules {svc}"),
                        ips.clone(),
                    ));
                    last.insert(svc, ips);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Milliseconds from `t0` until `what` first named `who` (a prefix, for a
/// Lease identity).
fn seen_ms(log: &SeenLog, t0: i64, what: &str, who: &str) -> Option<f64> {
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .events
        .iter()
        .find(|(t, w, x)| *t >= t0 && w == what && x.starts_with(who) && !who.is_empty())
        .map(|(t, _, _)| (t - t0) as f64 / 1e6)
}

/// A prober `name` on `services`' ClusterIPs, answered by `leader` alone;
/// returns the URLs.
async fn probe(
    client: &Client,
    ns: &str,
    dir: &Path,
    name: &str,
    services: &[&str],
    leader: &str,
) -> Vec<String> {
    let mut urls = Vec::new();
    for svc in services {
        urls.push(format!("http://{}:80/", cluster_ip(client, ns, svc).await));
    }
    start_prober(client, ns, dir, name, &urls).await;
    wait_answering(dir, &urls, leader).await;
    urls
}

/// Deletes `leader` and waits until every URL answers from one new pod;
/// returns it, with each URL's switch.
async fn delete_and_judge(
    client: &Client,
    ns: &str,
    dir: &Path,
    urls: &[String],
    leader: &str,
) -> (String, Vec<Switch>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t0 = monotonic_ns();
    pods.delete(leader, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete the leader {leader}: {e}"));
    eventually(
        "every Service to settle on a new pod",
        Duration::from_secs(90),
        || async move {
            let all = answers(dir);
            let judged: Vec<_> = urls
                .iter()
                .map(|u| judge(&all, u, t0, leader))
                .collect::<Option<Vec<_>>>()
                .ok_or("not settled yet")?;
            let new = judged[0].0.clone();
            if judged.iter().any(|(n, _)| *n != new) {
                return Err(format!(
                    "the Services answer from different pods: {:?}",
                    judged.iter().map(|(n, _)| n).collect::<Vec<_>>()
                ));
            }
            Ok((new, judged.into_iter().map(|(_, s)| s).collect()))
        },
    )
    .await
}

#[tokio::test]
async fn the_leader_service_routes_to_the_leader_only_and_follows_a_hand_off() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "leader-svc", |client, ns| async move {
        let (dir, _controller) = zen_lead(&client, &ns).await;
        create_pool(&client, &ns, true).await;
        create_role_service(&client, &ns).await;
        let leader = stable_holder(&client, &ns, POOL).await;
        let urls = probe(
            &client,
            &ns,
            &dir,
            "prober",
            &[LEADER_SVC, ROLE_SVC],
            &leader,
        )
        .await;
        assert_eq!(slice_endpoints(&client, &ns).await, vec![leader.clone()]);

        // Three replicas, all Ready and answering: over a while, only the
        // leader answers through the leader Service.
        let since = monotonic_ns();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let seen: std::collections::BTreeSet<String> = answers(&dir)
            .into_iter()
            .filter(|a| a.url == urls[0] && a.sent >= since)
            .map(|a| a.from)
            .collect();
        assert_eq!(
            seen,
            [leader.clone()].into(),
            "answers through the leader Service"
        );

        // A graceful hand-off: the leader pod deleted. The leader Service
        // never has two pods answer, and nobody but the old and new leader.
        let (next, switch) = delete_and_judge(&client, &ns, &dir, &urls, &leader).await;
        println!(
            "leader Service: {:?}\nrole-label Service: {:?}",
            switch[0], switch[1]
        );
        assert_eq!(switch[0].two_ms, 0.0, "two pods answered: {:?}", switch[0]);
        assert!(switch[0].strangers.is_empty(), "{:?}", switch[0]);
        assert_eq!(stable_holder(&client, &ns, POOL).await, next);
        assert_eq!(slice_endpoints(&client, &ns).await, vec![next.clone()]);

        // The field removed: the Service and its slice go.
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        policies
            .patch(
                POOL,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"leaderService": null}})),
            )
            .await
            .unwrap_or_else(|e| panic!("remove spec.leaderService: {e}"));
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        wait_routing_gone(&client, &ns, Duration::from_secs(60)).await;
        // The role-label Service was never touched.
        assert!(services.get_opt(ROLE_SVC).await.ok().flatten().is_some());
    })
    .await;
}

#[tokio::test]
async fn a_service_zen_lead_did_not_create_is_left_alone_and_reported() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "leader-svc-taken", |client, ns| async move {
        let dir = records_dir(&ns);
        let _controller = start_controller(&ns, &dir).await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let theirs: Service = from_json(json!({
            "metadata": {"name": "taken"},
            "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}
        }));
        services
            .create(&PostParams::default(), &theirs)
            .await
            .unwrap_or_else(|e| panic!("create Service taken: {e}"));
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        policies
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
                    "metadata": {"name": "pool"},
                    "spec": {"leaderService": {"name": "taken", "ports": [{"port": 80}]}}
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("create LeaderPolicy: {e}"));
        let message = eventually(
            "the LeaderService condition to say the Service is not zen-lead's",
            Duration::from_secs(60),
            || {
                let policies = policies.clone();
                async move {
                    let p = policies.get("pool").await.map_err(|e| e.to_string())?;
                    let c = p
                        .status
                        .into_iter()
                        .flat_map(|s| s.conditions)
                        .find(|c| c.type_ == "LeaderService")
                        .ok_or("no LeaderService condition")?;
                    (c.status == "False" && c.reason == "ServiceNotManaged")
                        .then_some(c.message.clone())
                        .ok_or(format!("{} {}: {}", c.status, c.reason, c.message))
                }
            },
        )
        .await;
        assert!(
            message.contains(&format!("Service {ns}/taken")),
            "{message}"
        );
        let after = services
            .get("taken")
            .await
            .unwrap_or_else(|e| panic!("get Service taken: {e}"));
        assert!(after.metadata.owner_references.is_none(), "{after:?}");
        assert_eq!(
            after.spec.and_then(|s| s.selector),
            Some([("app".to_owned(), "theirs".to_owned())].into())
        );
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        assert!(
            slices
                .list(
                    &ListParams::default()
                        .labels("endpointslice.kubernetes.io/managed-by=zen-lead.io")
                )
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(false),
            "no slice is written for a Service zen-lead does not own"
        );
    })
    .await;
}

/// A client that talks to the API server with `token`, as a process in
/// the pod would.
async fn as_token(token: &str, dir: &Path, name: &str) -> Client {
    let cluster = fixture::cluster(&kubeconfig_path());
    let path = dir.join(format!("{name}.kubeconfig"));
    fixture::write_kubeconfig(&path, &cluster.server, &cluster.ca_pem, token, None);
    fixture::client_from(&path, false).await
}

/// An EndpointSlice named `name` that claims Service `service` and sends
/// to `ip`.
fn claiming_slice(name: &str, service: &str, ip: &str) -> EndpointSlice {
    from_json(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
}

/// Every write a pod could try on the leader Service and its slice, or to
/// claim the Service with a slice of its own: `(what, outcome)`.
async fn attempts(
    client: &Client,
    ns: &str,
    who: &str,
    ip: &str,
) -> Vec<(String, Result<(), (u16, String)>)> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let ours = format!("{LEADER_SVC}-zen-lead");
    let pp = PostParams::default();
    let mp = PatchParams::default();
    let dp = DeleteParams::default();
    let svc: Service = from_json(json!({
        "metadata": {"name": LEADER_SVC}, "spec": {"ports": [{"port": 80}]}
    }));
    let selector = json!({"spec": {"selector": {"app": POOL}}});
    let endpoints = json!({"endpoints": [{"addresses": [ip]}]});
    vec![
        (
            "create the leader Service".to_owned(),
            outcome(services.create(&pp, &svc).await),
        ),
        (
            "put a selector on the leader Service".to_owned(),
            outcome(
                services
                    .patch(LEADER_SVC, &mp, &Patch::Merge(&selector))
                    .await,
            ),
        ),
        (
            "delete the leader Service".to_owned(),
            outcome(services.delete(LEADER_SVC, &dp).await),
        ),
        (
            "create the leader slice".to_owned(),
            outcome(
                slices
                    .create(&pp, &claiming_slice(&ours, LEADER_SVC, ip))
                    .await,
            ),
        ),
        (
            "put its own address in the leader slice".to_owned(),
            outcome(slices.patch(&ours, &mp, &Patch::Merge(&endpoints)).await),
        ),
        (
            "delete the leader slice".to_owned(),
            outcome(slices.delete(&ours, &dp).await),
        ),
        (
            // The EndpointSlice mirroring controller would copy it into a
            // slice that claims the (selector-less) leader Service.
            "create an Endpoints object for the leader Service".to_owned(),
            outcome(
                Api::<Endpoints>::namespaced(client.clone(), ns)
                    .create(
                        &pp,
                        &from_json(json!({
                            "metadata": {"name": LEADER_SVC},
                            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"port": 8080}]}]
                        })),
                    )
                    .await,
            ),
        ),
        (
            "create a slice of its own that claims the leader Service".to_owned(),
            outcome(
                slices
                    .create(
                        &pp,
                        &claiming_slice(&format!("{LEADER_SVC}-{who}"), LEADER_SVC, ip),
                    )
                    .await,
            ),
        ),
    ]
}

/// The fence around leader-only routing: a pool pod's own token (bound to
/// the pod, the ServiceAccount's rights as zen-lead's install leaves them),
/// leader or follower, can neither change the leader Service or its slice
/// nor add a slice that kube-proxy would merge into the Service.
#[tokio::test]
async fn a_pool_pods_own_token_can_neither_change_the_leader_service_nor_claim_it() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "leader-svc-fence", |client, ns| async move {
        let (dir, _controller) = zen_lead(&client, &ns).await;
        create_pool(&client, &ns, true).await;
        let leader = stable_holder(&client, &ns, POOL).await;
        eventually(
            "the slice naming the leader",
            Duration::from_secs(60),
            || {
                let (client, ns, leader) = (&client, &ns, &leader);
                async move {
                    let names = slice_endpoints(client, ns).await;
                    (names == [leader.clone()])
                        .then_some(())
                        .ok_or(format!("{names:?}"))
                }
            },
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let listed = pods
            .list(&ListParams::default().labels(&format!("zen-lead/pool={POOL}")))
            .await
            .unwrap_or_else(|e| panic!("list the pool's pods: {e}"));
        let follower = listed
            .items
            .iter()
            .find(|p| p.metadata.name.as_deref() != Some(leader.as_str()))
            .and_then(|p| p.metadata.name.clone())
            .unwrap_or_else(|| panic!("no follower among {:?}", listed.items.len()));
        let mut admitted = Vec::new();
        for (role, name) in [("leader", &leader), ("follower", &follower)] {
            let pod = pods
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("get {name}: {e}"));
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned());
            let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
            let token = fixture::issue_pod_token(&client, &ns, &sa, name, &uid).await;
            let own = as_token(&token, &dir, role).await;
            for (what, result) in attempts(&own, &ns, role, &ip).await {
                match result {
                    Err((403, _)) => {}
                    other => admitted.push(format!("the {role} {name} ({sa}): {what}: {other:?}")),
                }
            }
        }
        assert!(
            admitted.is_empty(),
            "a pool pod's own token was not refused (403):\n{}",
            admitted.join("\n")
        );
        // Nothing changed: the slice names the leader alone, the Service
        // has no selector, and no other slice claims it.
        assert_eq!(slice_endpoints(&client, &ns).await, vec![leader.clone()]);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let svc = services
            .get(LEADER_SVC)
            .await
            .unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(svc.spec.and_then(|s| s.selector), None);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let claims: Vec<String> = slices
            .list(
                &ListParams::default().labels(&format!("kubernetes.io/service-name={LEADER_SVC}")),
            )
            .await
            .unwrap_or_else(|e| panic!("list slices: {e}"))
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        assert_eq!(claims, vec![format!("{LEADER_SVC}-zen-lead")]);
    })
    .await;
}

/// Lets policy `POOL` in namespace `.0` go when dropped (pass or fail), so
/// the namespace can be deleted.
struct Release(String);

impl Drop for Release {
    fn drop(&mut self) {
        let ns = self.0.clone();
        common::cleanup_on_drop(move |client| async move {
            let policies: Api<LeaderPolicy> = Api::namespaced(client, &ns);
            let none = json!({"metadata": {"finalizers": null}});
            let _ = policies
                .patch(POOL, &PatchParams::default(), &Patch::Merge(&none))
                .await;
        });
    }
}

/// The LeaderService condition of policy `POOL`: (status, reason, message).
async fn leader_service_condition(
    client: &Client,
    ns: &str,
) -> Result<(String, String, String), String> {
    let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let p = policies.get(POOL).await.map_err(|e| e.to_string())?;
    p.status
        .into_iter()
        .flat_map(|s| s.conditions)
        .find(|c| c.type_ == "LeaderService")
        .map(|c| (c.status, c.reason, c.message))
        .ok_or_else(|| "no LeaderService condition".to_owned())
}

/// Someone with the rights (not a pool pod: see the test above) puts a
/// selector on the leader Service: zen-lead removes it (a server-side apply
/// would leave it, and the EndpointSlice controller would add every pod it
/// selects). A slice zen-lead did not write that claims the Service (which
/// kube-proxy merges into it) is reported by name until it goes.
#[tokio::test]
async fn a_selector_on_the_leader_service_is_removed_and_a_foreign_slice_is_reported() {
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "leader-svc-foreign", |client, ns| async move {
        let dir = records_dir(&ns);
        let _controller = start_controller(&ns, &dir).await;
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        policies
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
                    "metadata": {"name": POOL},
                    "spec": {"leaderService": {"name": LEADER_SVC, "ports": [{"port": 80}]}}
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("create LeaderPolicy: {e}"));
        let limit = Duration::from_secs(60);
        eventually("the LeaderService condition NoLeader", limit, || async {
            let c = leader_service_condition(&client, &ns).await?;
            (c.0 == "True" && c.1 == "NoLeader")
                .then_some(())
                .ok_or(format!("{c:?}"))
        })
        .await;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        services
            .patch(
                LEADER_SVC,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"selector": {"app": POOL}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("put a selector on {LEADER_SVC}: {e}"));
        eventually("the selector removed", limit, || async {
            let s = services.get(LEADER_SVC).await.map_err(|e| e.to_string())?;
            match s.spec.and_then(|s| s.selector) {
                None => Ok(()),
                Some(sel) => Err(format!("selector {sel:?}")),
            }
        })
        .await;

        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        slices
            .create(
                &PostParams::default(),
                &claiming_slice("intruder", LEADER_SVC, "192.0.2.10"),
            )
            .await
            .unwrap_or_else(|e| panic!("create slice intruder: {e}"));
        // Nothing zen-lead watches tells of such a slice: the pool's next
        // pass finds it (any change in the pool, or the resync). Queue one.
        policies
            .patch(
                POOL,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("annotate the policy: {e}"));
        let message = eventually("the foreign slice reported", limit, || async {
            let c = leader_service_condition(&client, &ns).await?;
            (c.0 == "False" && c.1 == "ForeignEndpointSlice" && c.2.contains("intruder"))
                .then_some(c.2.clone())
                .ok_or(format!("{c:?}"))
        })
        .await;
        assert!(
            message.contains(&format!("Service {ns}/{LEADER_SVC}")),
            "{message}"
        );
        // Gone (with whatever the EndpointSlice controller made while the
        // selector was there, which it leaves behind): reported no more.
        let claims =
            ListParams::default().labels(&format!("kubernetes.io/service-name={LEADER_SVC}"));
        for s in slices
            .list(&claims)
            .await
            .unwrap_or_else(|e| panic!("list: {e}"))
            .items
        {
            let name = s.metadata.name.unwrap_or_default();
            if name != format!("{LEADER_SVC}-zen-lead") {
                println!("deleting foreign slice {name}");
                let _ = slices.delete(&name, &DeleteParams::default()).await;
            }
        }
        eventually("the condition back to NoLeader", limit, || async {
            let c = leader_service_condition(&client, &ns).await?;
            (c.0 == "True" && c.1 == "NoLeader")
                .then_some(())
                .ok_or(format!("{c:?}"))
        })
        .await;

        // The policy deleted while a finalizer holds it: its pods lead no
        // more, so the Service and slice go now, not when the policy does.
        let hold = json!({"metadata": {"finalizers": ["test.zen-lead.io/hold"]}});
        policies
            .patch(POOL, &PatchParams::default(), &Patch::Merge(&hold))
            .await
            .unwrap_or_else(|e| panic!("hold the policy: {e}"));
        let _release = Release(ns.clone());
        policies
            .delete(POOL, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete the policy: {e}"));
        wait_routing_gone(&client, &ns, limit).await;
        assert!(
            policies.get_opt(POOL).await.ok().flatten().is_some(),
            "the policy was gone already: the test proves nothing"
        );
    })
    .await;
}

/// One system's rounds: a steady pool (three Ready pods of `app`, `url`
/// answered by `leader` alone), the leader pod deleted, the switch judged.
/// With `ZEN_LEAD_BENCH_TIMELINE` set, it prints where the time went.
#[allow(clippy::too_many_arguments)]
async fn rounds(
    client: &Client,
    ns: &str,
    dir: &Path,
    system: &str,
    app: &str,
    url: &str,
    mut leader: String,
    n: usize,
    seen: &SeenLog,
) -> Vec<Switch> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let urls = [url.to_owned()];
    let mut out = Vec::new();
    for round in 0..n {
        common::workloads::pods_where(client, ns, &format!("app={app}"), 3, "Ready", |p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await;
        wait_answering(dir, &urls, &leader).await;
        let t0 = monotonic_ns();
        let (next, mut switch) = delete_and_judge(client, ns, dir, &urls, &leader).await;
        let s = switch.remove(0);
        let ip = pods
            .get(&next)
            .await
            .ok()
            .and_then(|p| p.status.and_then(|s| s.pod_ip))
            .unwrap_or_default();
        let svc = url_service(seen, url);
        let slice = seen_ms(seen, t0, &svc, &next).map_or("-".to_owned(), |ms| format!("{ms:.0}"));
        let lease =
            seen_ms(seen, t0, "lease", &next).map_or("-".to_owned(), |ms| format!("{ms:.0}"));
        let rules = seen_ms(seen, t0, &format!("rules {svc}"), &ip)
            .map_or("-".to_owned(), |ms| format!("{ms:.0}"));
        println!(
            "routing: {system}: round {round}: switch {:.0} ms (new holder in the Lease {lease} ms, in the slice {slice} ms, in kube-proxy's rules {rules} ms), two pods {:.0} ms, none {:.0} ms{}",
            s.switch_ms,
            s.two_ms,
            s.none_ms,
            if s.strangers.is_empty() {
                String::new()
            } else {
                format!(", followers answered: {:?}", s.strangers)
            }
        );
        if std::env::var_os("ZEN_LEAD_BENCH_TIMELINE").is_some() {
            for (t, what, who) in &seen.lock().unwrap_or_else(|e| e.into_inner()).events {
                if *t >= t0 && *t < t0 + 3_000_000_000 {
                    println!(
                        "routing: {system}: round {round}: {:>6.0} ms {what}: {who}",
                        (t - t0) as f64 / 1e6
                    );
                }
            }
        }
        out.push(s);
        leader = next;
    }
    out
}

/// The Service a URL's ClusterIP belongs to, as the slice watch names it
/// (set by [`note_url`]).
fn url_service(seen: &SeenLog, url: &str) -> String {
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .events
        .iter()
        .find(|(_, what, u)| what == "url" && u.starts_with(url))
        .and_then(|(_, _, u)| u.split_once(' ').map(|(_, svc)| svc.to_owned()))
        .unwrap_or_default()
}

fn note_url(seen: &SeenLog, url: &str, svc: &str) {
    seen.lock().unwrap_or_else(|e| e.into_inner()).events.push((
        0,
        "url".to_owned(),
        format!("{url} {svc}"),
    ));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50/p99 of a system's rounds; returns its switch p99.
fn summary(name: &str, r: &[Switch]) -> f64 {
    let sorted = |f: fn(&Switch) -> f64| {
        let mut v: Vec<f64> = r.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let sw = sorted(|s| s.switch_ms);
    let two = sorted(|s| s.two_ms);
    let none = sorted(|s| s.none_ms);
    let rounds_two = r.iter().filter(|s| s.two_ms > 0.0).count();
    let strangers: usize = r.iter().map(|s| s.strangers.len()).sum();
    println!(
        "routing: {name:<22} switch p50 {:>6.0} ms p99 {:>6.0} ms | two pods answering: {rounds_two}/{} rounds, p99 {:.0} ms | none answering p50 {:.0} ms p99 {:.0} ms | follower answers {strangers}",
        percentile(&sw, 0.5),
        percentile(&sw, 0.99),
        r.len(),
        percentile(&two, 0.99),
        percentile(&none, 0.5),
        percentile(&none, 0.99),
    );
    percentile(&sw, 0.99)
}

/// `make bench-routing`: per system, ZEN_LEAD_BENCH_ROUNDS (default 10)
/// graceful hand-offs (the leader pod deleted), one system at a time (they
/// share kube-proxy, whose syncs are rate-limited: a system's changes would
/// delay another's); the switch time, the two-pod and no-pod windows,
/// p50/p99 and ratios. The upstream Go zen-lead runs when its image is in
/// the local registry (docs/BENCHMARKS.md says how it is built).
#[tokio::test]
#[ignore = "benchmark: make bench-routing"]
async fn bench_routing_switch() {
    let n: usize = std::env::var("ZEN_LEAD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let client = client().await;
    common::apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "bench-routing", |client, ns| async move {
        let (dir, _controller) = zen_lead(&client, &ns).await;
        let (seen, watching) = watch_switch(&client, &ns);
        let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let rules = watch_rules(&ns, seen.clone(), polling.clone());
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut p99 = Vec::new();

        // 1. spec.leaderService alone.
        create_pool(&client, &ns, true).await;
        let leader = stable_holder(&client, &ns, POOL).await;
        let url = probe(&client, &ns, &dir, "prober-leader", &[LEADER_SVC], &leader).await.remove(0);
        note_url(&seen, &url, LEADER_SVC);
        let ours = rounds(&client, &ns, &dir, "spec.leaderService", POOL, &url, leader, n, &seen).await;
        let _ = pods.delete("prober-leader", &DeleteParams::default()).await;

        // 2. A Service selecting the role label, on the same pool, alone.
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        policies
            .patch(POOL, &PatchParams::default(), &Patch::Merge(json!({"spec": {"leaderService": null}})))
            .await
            .unwrap_or_else(|e| panic!("remove spec.leaderService: {e}"));
        create_role_service(&client, &ns).await;
        let leader = stable_holder(&client, &ns, POOL).await;
        let url = probe(&client, &ns, &dir, "prober-role", &[ROLE_SVC], &leader).await.remove(0);
        note_url(&seen, &url, ROLE_SVC);
        let role = rounds(&client, &ns, &dir, "role-label Service", POOL, &url, leader, n, &seen).await;
        let _ = pods.delete("prober-role", &DeleteParams::default()).await;

        println!("routing: {n} graceful hand-offs per system (leader pod deleted), a client pod polling every 5 ms on new connections");
        p99.push(summary("spec.leaderService", &ours));
        p99.push(summary("role-label Service", &role));

        // 3. The upstream Go zen-lead, on its own Deployment.
        match upstream::image_in_registry().await {
            Ok(()) => {
                let install = upstream::install_upstream(&client, &ns).await;
                let up = upstream_pool(&client, &ns).await;
                let leader = upstream::wait_routed_to_one(&client, &ns, &up, None, Duration::from_secs(120)).await;
                let url = probe(&client, &ns, &dir, "prober-upstream", &[up.as_str()], &leader).await.remove(0);
                note_url(&seen, &url, &up);
                let theirs = rounds(&client, &ns, &dir, "upstream zen-lead", UPSTREAM_APP, &url, leader, n, &seen).await;
                p99.push(summary("upstream zen-lead", &theirs));
                println!(
                    "routing: switch p99 ratios: role-label / leaderService = {:.2}, upstream / leaderService = {:.2}",
                    p99[1] / p99[0],
                    p99[2] / p99[0]
                );
                install.uninstall(&client).await;
            }
            Err(why) => {
                println!(
                    "routing: switch p99 ratio role-label / leaderService = {:.2}",
                    p99[1] / p99[0]
                );
                println!("routing: upstream zen-lead not run: {why}; its published fail-over average is 1.21 s (0.90-1.99 s)");
            }
        }
        watching.abort();
        polling.store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = rules.join();
    })
    .await;
}

const UPSTREAM_APP: &str = "up";

/// The upstream peer's pool: the same app as ours, without zen-lead, and a
/// Service opted in to upstream's routing; returns its leader Service.
async fn upstream_pool(client: &Client, ns: &str) -> String {
    create_app(client, ns, UPSTREAM_APP, json!({})).await;
    let selector = [("app".to_owned(), UPSTREAM_APP.to_owned())].into();
    upstream::make_leader_routed(client, ns, UPSTREAM_APP, &selector, 80, 8080).await
}
