//! The controller against the local cluster: each test runs `zen-lead
//! controller` (the built binary) scoped to its own namespace
//! (`--watch-namespace`, its own controller Lease there), and `zen-lead
//! agent` host processes with the identities of KWOK pods where a running
//! agent is needed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::net::{free_port, http_get};
use common::workloads::LeaderLabelWatch;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::json;
use zen_lead::api::keys::{
    CANDIDATE_READINESS_GATE, HOLDER_INSTANCE_ANNOTATION, LEASE_POLICY_LABEL,
    ORIGINAL_REPLICAS_ANNOTATION, PAUSED_ANNOTATION, PRIORITY_ANNOTATION, ROLE_LABEL,
    SCALED_BY_ANNOTATION, ZONE_LABEL, pod_identity,
};
use zen_lead::api::{LeaderPolicy, LeaderPolicySpec};

use common::{apply_crd, client, kubeconfig_path, wait_for, with_namespace};

const BIN: &str = env!("CARGO_BIN_EXE_zen-lead");
const LIMIT: Duration = Duration::from_secs(30);

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, sig);
    }
}

/// A `zen-lead controller` process.
struct Controller {
    child: Child,
    admin: u16,
    log: PathBuf,
}

/// `zen-lead controller` for `ns` as the tests run it (its own certificate,
/// admin port and log file, a 3 s controller Lease), not yet started:
/// (the command, the admin port, the log file).
fn controller_command(dir: &Path, ns: &str, name: &str, extra: &[&str]) -> (Command, u16, PathBuf) {
    let certs = dir.join("certs");
    if !certs.join("tls.crt").exists() {
        let out = Command::new(BIN)
            .args(["certs", "--dns", "localhost", "--ip", "127.0.0.1", "--out"])
            .arg(&certs)
            .output()
            .unwrap_or_else(|e| panic!("zen-lead certs: {e}"));
        assert!(out.status.success(), "zen-lead certs failed: {out:?}");
    }
    let admin = free_port();
    let log = dir.join(format!("{name}.log"));
    let mut command = Command::new(BIN);
    command
        .env("KUBECONFIG", kubeconfig_path())
        .env("ZEN_LEAD_LOG_LEVEL", "info,zen_lead=debug")
        .args(["controller", "--webhook-addr", "127.0.0.1:0"])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--tls-cert-file")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(certs.join("tls.key"))
        .args(["--namespace", ns, "--watch-namespace", ns])
        .args(["--controller-identity", name])
        .args(["--controller-lease-duration", "3s"])
        // The fixtures' uninjected pool pods stand in for injected ones
        // (KWOK pods with a fake agent status): only the test of the
        // safety net asks for evictions.
        .args(
            (!extra.iter().any(|a| a.starts_with("--evict-uninjected")))
                .then_some("--evict-uninjected=false"),
        )
        .args(extra)
        .stdout(Stdio::null());
    (command, admin, log)
}

impl Controller {
    fn start(dir: &Path, ns: &str, name: &str, extra: &[&str]) -> Controller {
        let (mut command, admin, log) = controller_command(dir, ns, name, extra);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("controller log: {e}"));
        let child = command
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        Controller { child, admin, log }
    }

    fn kill(&mut self) {
        signal(self.child.id(), Signal::KILL);
        let _ = self.child.wait();
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of a metric without labels (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `zen-lead agent` host process with a pod's identity.
struct HostAgent {
    child: Child,
    identity: String,
}

impl HostAgent {
    fn start(dir: &Path, pod: &Pod, pool: &str) -> HostAgent {
        Self::start_with(dir, pod, pool, &[])
    }

    /// An agent with `identityStrategy: custom` and this identity, as the
    /// webhook starts one for a pod with `zen-lead/identity`.
    fn start_custom(dir: &Path, pod: &Pod, pool: &str, identity: &str) -> HostAgent {
        let mut agent = Self::start_with(
            dir,
            pod,
            pool,
            &["--identity-strategy", "custom", "--identity", identity],
        );
        agent.identity = identity.to_owned();
        agent
    }

    fn start_with(dir: &Path, pod: &Pod, pool: &str, extra: &[&str]) -> HostAgent {
        let name = pod.name_any();
        let ns = pod.namespace().unwrap_or_default();
        let uid = pod.uid().unwrap_or_default();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("agent-{name}.log")))
            .unwrap_or_else(|e| panic!("agent log: {e}"));
        let child = Command::new(BIN)
            .env("KUBECONFIG", kubeconfig_path())
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", &ns)
            .env("POD_UID", &uid)
            .args(["agent", "--pool", pool, "--pod-name", &name])
            .args(["--pod-namespace", &ns, "--pod-uid", &uid])
            .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--probe-addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} agent: {e}"));
        HostAgent {
            child,
            identity: pod_identity(&name, &uid),
        }
    }

    /// A crash: no release.
    fn kill(&mut self) {
        signal(self.child.id(), Signal::KILL);
        let _ = self.child.wait();
    }

    /// A clean stop: releases the Lease.
    async fn stop(&mut self) {
        signal(self.child.id(), Signal::TERM);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn setup() -> Client {
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    client
}

async fn create_policy(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let api: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let lp: LeaderPolicy = serde_json::from_value(json!({
        "apiVersion": "coordination.kube-zen.io/v1alpha1",
        "kind": "LeaderPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("policy json: {e}"));
    api.create(&PostParams::default(), &lp)
        .await
        .unwrap_or_else(|e| panic!("create LeaderPolicy {name}: {e}"));
}

/// Fast timings for policies in tests.
fn fast() -> serde_json::Value {
    json!({"leaseDurationSeconds": 5, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1})
}

/// A bare pool pod as the webhook leaves it: label, agent init container
/// (native sidecar), readiness gate; on a KWOK node, which marks it running
/// with `started: true` for the agent.
fn pool_pod(name: &str, pool: Option<&str>, node: &str, agent: bool) -> Pod {
    let mut labels = BTreeMap::new();
    if let Some(pool) = pool {
        labels.insert("zen-lead/pool".to_owned(), pool.to_owned());
    }
    let init = if agent {
        json!([{"name": "zen-lead-agent", "image": "zen-lead", "restartPolicy": "Always"}])
    } else {
        json!([])
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "readinessGates": [{"conditionType": CANDIDATE_READINESS_GATE}],
            "initContainers": init,
            "containers": [{"name": "app", "image": "app"}],
            "terminationGracePeriodSeconds": 0,
        }
    }))
    .unwrap_or_else(|e| panic!("pod json: {e}"))
}

async fn create_pod(client: &Client, ns: &str, pod: &Pod) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {}: {e}", pod.name_any()))
}

/// Waits until the pod's agent container reports started (KWOK).
async fn running_pod(client: &Client, ns: &str, name: &str) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    common::eventually(&format!("pod {name} running"), LIMIT, || {
        let api = api.clone();
        async move {
            let pod = api.get(name).await.map_err(|e| e.to_string())?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            if phase.as_deref() == Some("Running") {
                Ok(pod)
            } else {
                Err(format!("phase {phase:?}"))
            }
        }
    })
    .await
}

/// Waits until the policy satisfies `check`, which says what it is missing.
async fn policy_until(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    limit: Duration,
    check: impl Fn(&LeaderPolicy) -> Result<(), String>,
) -> LeaderPolicy {
    let api: Api<LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let check = &check;
    common::eventually(&format!("LeaderPolicy {name}: {what}"), limit, || {
        let api = api.clone();
        async move {
            let p = api.get(name).await.map_err(|e| e.to_string())?;
            check(&p).map(|()| p)
        }
    })
    .await
}

fn condition<'a>(
    p: &'a LeaderPolicy,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// Pool `db` of two running pods on kwok-1 with the controller and host
/// agents: db-0's agent leads, then db-1's joins.
struct DbPool {
    pods: Vec<Pod>,
    labels: LeaderLabelWatch,
    _ctl: Controller,
    first: HostAgent,
    _second: HostAgent,
}

async fn db_pool_first_leads(client: &Client, ns: &str, dir: &std::path::Path) -> DbPool {
    let mut pods = Vec::new();
    for i in 0..2 {
        let name = format!("db-{i}");
        create_pod(client, ns, &pool_pod(&name, Some("db"), "kwok-1", true)).await;
        pods.push(running_pod(client, ns, &name).await);
    }
    let labels = LeaderLabelWatch::start(client, ns);
    let _ctl = Controller::start(dir, ns, "ctl-a", &[]);
    let first = HostAgent::start(dir, &pods[0], "db");
    policy_until(client, ns, "db", "db-0 leads", LIMIT, |p| {
        (holder_name(p).as_deref() == Some("db-0"))
            .then_some(())
            .ok_or(format!("{:?}", p.status))
    })
    .await;
    let _second = HostAgent::start(dir, &pods[1], "db");
    DbPool {
        pods,
        labels,
        _ctl,
        first,
        _second,
    }
}

fn holder_name(p: &LeaderPolicy) -> Option<String> {
    p.status
        .as_ref()
        .and_then(|s| s.current_holder.as_ref())
        .and_then(|h| h.name.clone())
}

fn phase(p: &LeaderPolicy) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|ph| format!("{ph:?}"))
        .unwrap_or_default()
}

fn candidates(p: &LeaderPolicy) -> i32 {
    p.status.as_ref().and_then(|s| s.candidates).unwrap_or(-1)
}

async fn lease(client: &Client, ns: &str, name: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get Lease {name}: {e}"))
}

fn lease_holder(l: &Lease) -> Option<String> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

/// A single-replica StatefulSet `name` on the KWOK nodes in `pool`, whose pod
/// template takes the annotations and the agent container of `like`.
async fn create_kwok_statefulset(client: &Client, ns: &str, name: &str, like: &Pod, pool: &str) {
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1, "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name, "zen-lead/pool": pool},
                    "annotations": like.metadata.annotations.clone().unwrap_or_default()
                },
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"operator": "Exists"}],
                    "terminationGracePeriodSeconds": 0,
                    "initContainers": like.spec.as_ref().and_then(|s| s.init_containers.clone()),
                    "containers": [{"name": "app", "image": "app"}]
                }
            }
        }
    }))
    .expect("sts json");
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .expect("create sts");
}

/// Waits until the StatefulSet pod `name` runs again under a new UID.
async fn recreated(client: &Client, ns: &str, name: &str, old: &Pod) -> Pod {
    common::eventually(
        &format!("{name} re-created with a new UID"),
        LIMIT,
        || async {
            let p = Api::<Pod>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| e.to_string())?;
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            (p.uid() != old.uid() && running && p.metadata.deletion_timestamp.is_none())
                .then_some(p.clone())
                .ok_or("old incarnation still there".to_owned())
        },
    )
    .await
}

/// The holder's instance (pod UID) from `<holderIdentity>/<instance>`.
fn holder_instance(l: &Lease) -> Option<String> {
    l.annotations()
        .get(HOLDER_INSTANCE_ANNOTATION)
        .and_then(|v| v.rsplit_once('/'))
        .map(|(_, instance)| instance.to_owned())
}

/// A pool pod whose agent was started with `identityStrategy: custom` and
/// the given `zen-lead/identity`, as the webhook leaves it.
fn custom_pool_pod(name: &str, pool: &str, identity: &str) -> Pod {
    let mut pod = pool_pod(name, Some(pool), "kwok-1", true);
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("zen-lead/identity".to_owned(), identity.to_owned());
    if let Some(agent) = pod
        .spec
        .as_mut()
        .and_then(|s| s.init_containers.as_mut())
        .and_then(|c| c.first_mut())
    {
        agent.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
            name: "ZEN_LEAD_IDENTITY_STRATEGY".to_owned(),
            value: Some("custom".to_owned()),
            ..Default::default()
        }]);
    }
    pod
}

/// Events whose subject is the pod `name`: (reason, note).
async fn pod_events(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    events_on(client, ns, "Pod", name)
        .await
        .into_iter()
        .map(|(reason, note, _)| (reason, note))
        .collect()
}

/// Events whose subject is the `kind` object `name`: (reason, note, the
/// subject's uid as the event names it; `kubectl describe` matches on it).
async fn events_on(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Vec<(String, String, Option<String>)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let r = e.regarding.as_ref()?;
            (r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)).then(|| {
                (
                    e.reason.clone().unwrap_or_default(),
                    e.note.clone().unwrap_or_default(),
                    r.uid.clone(),
                )
            })
        })
        .collect()
}

fn pod_role(p: &Pod) -> Option<String> {
    p.labels().get(ROLE_LABEL).cloned()
}

fn candidate_condition(p: &Pod) -> Option<(String, String)> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == CANDIDATE_READINESS_GATE))
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// Events on the policy.
async fn policy_events(client: &Client, ns: &str, policy: &str) -> Vec<(String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    if let Ok(list) = api.list(&ListParams::default()).await {
        for e in list.items {
            if e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(policy) {
                out.push((
                    e.type_.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.note.clone().unwrap_or_default(),
                ));
            }
        }
    }
    // Older-style events, in case.
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = core.list(&ListParams::default()).await {
        for e in list.items {
            if e.involved_object.name.as_deref() == Some(policy) {
                out.push((
                    e.type_.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default(),
                ));
            }
        }
    }
    out
}

async fn event_until(
    client: &Client,
    ns: &str,
    policy: &str,
    reason: &str,
    contains: &str,
) -> String {
    common::eventually(
        &format!("event {reason} on {policy} containing {contains:?}"),
        LIMIT,
        || async {
            let events = policy_events(client, ns, policy).await;
            events
                .iter()
                .find(|(_, r, n)| r == reason && n.contains(contains))
                .map(|(_, _, n)| n.clone())
                .ok_or_else(|| format!("{events:?}"))
        },
    )
    .await
}

async fn pods_by_role(client: &Client, ns: &str) -> BTreeMap<String, Option<String>> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list pods: {e}"))
        .items
        .iter()
        .map(|p| (p.name_any(), pod_role(p)))
        .collect()
}

/// Lease, status, roles, readiness gate, RBAC, events and timings of one
/// pool through an election and a policy change.
#[tokio::test]
async fn pool_lease_status_roles_rbac_and_timing_changes() {
    let client = setup().await;
    with_namespace(&client, "ctl-pool", |client, ns| async move {
        let dir = common::scratch_dir("controller-pool");
        create_policy(&client, &ns, "web", fast()).await;
        let mut pods = Vec::new();
        for (i, node) in ["kwok-0", "kwok-1", "kwok-0"].iter().enumerate() {
            let name = format!("web-{i}");
            create_pod(&client, &ns, &pool_pod(&name, Some("web"), node, true)).await;
            pods.push(running_pod(&client, &ns, &name).await);
        }
        let labels = LeaderLabelWatch::start(&client, &ns);
        let ctl = Controller::start(&dir, &ns, "ctl-a", &[]);

        let p = policy_until(&client, &ns, "web", "Electing with 3 candidates", LIMIT, |p| {
            if phase(p) == "Electing" && candidates(p) == 3 {
                Ok(())
            } else {
                Err(format!("{:?}", p.status))
            }
        })
        .await;
        assert_eq!(condition(&p, "PolicyReady").map(|c| c.status.as_str()), Some("True"));
        assert_eq!(condition(&p, "LeaderElected").map(|c| c.reason.as_str()), Some("Electing"));
        assert_eq!(p.status.as_ref().and_then(|s| s.observed_generation), p.metadata.generation);

        // The Lease: owned by the policy, labelled, with the policy's timings.
        let l = lease(&client, &ns, "web").await.expect("Lease web exists");
        let owner = l.owner_references().first().cloned().expect("owner reference");
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("LeaderPolicy", "web"));
        assert_eq!(owner.uid, p.uid().unwrap_or_default());
        assert_eq!(l.labels().get(LEASE_POLICY_LABEL).map(String::as_str), Some("web"));
        assert_eq!(l.spec.as_ref().and_then(|s| s.lease_duration_seconds), Some(5));
        assert_eq!(l.annotations().get("zen-lead.io/renew-deadline-seconds").map(String::as_str), Some("3"));
        assert_eq!(l.annotations().get("zen-lead.io/retry-period-seconds").map(String::as_str), Some("1"));

        // RBAC: one Role per ServiceAccount, granting exactly this Lease.
        let role = Api::<Role>::namespaced(client.clone(), &ns).get("zen-lead-candidate-default").await.expect("Role");
        let rules = role.rules.clone().unwrap_or_default();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].resource_names.clone().unwrap_or_default(), vec!["web".to_owned()]);
        assert_eq!(rules[0].resources.clone().unwrap_or_default(), vec!["leases".to_owned()]);
        let verbs: BTreeSet<String> = rules[0].verbs.iter().cloned().collect();
        assert!(!verbs.contains("create") && !verbs.contains("delete") && !verbs.contains("*"), "{verbs:?}");
        for v in ["get", "watch", "update", "patch"] {
            assert!(verbs.contains(v), "{verbs:?}");
        }
        assert_eq!(role.labels().get("app.kubernetes.io/managed-by").map(String::as_str), Some("zen-lead"));
        let binding = Api::<RoleBinding>::namespaced(client.clone(), &ns).get("zen-lead-candidate-default").await.expect("RoleBinding");
        let subjects: Vec<String> = binding.subjects.unwrap_or_default().iter().map(|s| format!("{}:{}", s.kind, s.name)).collect();
        assert_eq!(subjects, vec!["ServiceAccount:default".to_owned()]);

        // Readiness gate True for all three; roles all follower.
        for pod in &pods {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let name = pod.name_any();
            common::eventually(&format!("{name} candidate + follower"), LIMIT, || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let p = api.get(&name).await.map_err(|e| e.to_string())?;
                    match (candidate_condition(&p), pod_role(&p)) {
                        (Some((s, _)), Some(r)) if s == "True" && r == "follower" => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            })
            .await;
        }

        // An agent for web-1 wins: Stable, its pod alone labelled leader.
        let _agent = HostAgent::start(&dir, &pods[1], "web");
        let p = policy_until(&client, &ns, "web", "Stable with web-1", LIMIT, |p| {
            if phase(p) == "Stable" && holder_name(p).as_deref() == Some("web-1") {
                Ok(())
            } else {
                Err(format!("{:?}", p.status))
            }
        })
        .await;
        let holder = p.status.as_ref().and_then(|s| s.current_holder.clone()).expect("holder");
        assert_eq!(holder.uid, pods[1].uid());
        assert_eq!(holder.identity, pod_identity("web-1", &pods[1].uid().unwrap_or_default()));
        assert!(holder.since.is_some());
        assert!(p.status.as_ref().and_then(|s| s.last_transition_time.clone()).is_some());
        assert_eq!(condition(&p, "LeaderElected").map(|c| c.status.as_str()), Some("True"));
        common::eventually("web-1 alone labelled leader", LIMIT, || async {
            let roles = pods_by_role(&client, &ns).await;
            let leaders: Vec<_> = roles.iter().filter(|(_, r)| r.as_deref() == Some("leader")).collect();
            if leaders.len() == 1 && leaders[0].0 == "web-1" {
                Ok(())
            } else {
                Err(format!("{roles:?}"))
            }
        })
        .await;
        let note = event_until(&client, &ns, "web", "LeaderElected", "web-1").await;
        assert!(note.contains("<none>"), "{note}");

        // Changing the policy's timings changes the Lease's.
        Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
            .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"leaseDurationSeconds": 9, "renewDeadlineSeconds": 6, "retryPeriodSeconds": 2}})))
            .await
            .expect("patch policy");
        common::eventually("Lease with the new timings", LIMIT, || async {
            let l = lease(&client, &ns, "web").await.ok_or("no lease")?;
            let secs = l.spec.as_ref().and_then(|s| s.lease_duration_seconds);
            let renew = l.annotations().get("zen-lead.io/renew-deadline-seconds").cloned();
            if secs == Some(9) && renew.as_deref() == Some("6") {
                Ok(())
            } else {
                Err(format!("{secs:?} {renew:?}"))
            }
        })
        .await;
        policy_until(&client, &ns, "web", "observedGeneration 2", LIMIT, |p| {
            if p.status.as_ref().and_then(|s| s.observed_generation) == Some(2) {
                Ok(())
            } else {
                Err(format!("{:?}", p.status))
            }
        })
        .await;

        // Unset, the deadline and the retry period follow the lease duration
        // (15:10:2): status shows the values in effect, the Lease carries them.
        Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
            .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"leaseDurationSeconds": 30, "renewDeadlineSeconds": null, "retryPeriodSeconds": null}})))
            .await
            .expect("patch policy");
        policy_until(&client, &ns, "web", "effective timings 30/20/4 in status", LIMIT, |p| {
            let t = p.status.as_ref().and_then(|s| s.timings);
            match t {
                Some(t) if (t.lease_duration_seconds, t.renew_deadline_seconds, t.retry_period_seconds) == (30, 20, 4) => Ok(()),
                _ => Err(format!("{:?}", p.status)),
            }
        })
        .await;
        common::eventually("Lease with the derived timings", LIMIT, || async {
            let l = lease(&client, &ns, "web").await.ok_or("no lease")?;
            let a = l.annotations();
            let got = (
                l.spec.as_ref().and_then(|s| s.lease_duration_seconds),
                a.get("zen-lead.io/renew-deadline-seconds").cloned(),
                a.get("zen-lead.io/retry-period-seconds").cloned(),
            );
            if got == (Some(30), Some("20".to_owned()), Some("4".to_owned())) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await;

        // Admin endpoints.
        assert_eq!(ctl.get("/readyz").await.0, 200);
        let (_, metrics) = ctl.get("/metrics").await;
        for name in [
            "zen_lead_controller_leader_changes_total",
            "zen_lead_controller_failover_duration_seconds_bucket",
            "zen_lead_controller_reconciles_total",
            "zen_lead_controller_api_requests_total",
        ] {
            assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
        }
        assert_eq!(ctl.metric("zen_lead_controller_active").await, 1.0);
        assert!(ctl.log_text().contains("leader changed"), "{}", ctl.log_text());
        labels.assert_never_two();
    })
    .await;
}

/// Deleting the holder's pod (its agent crashed with it) hands leadership to
/// a follower long before the Lease (30 s) would expire.
#[tokio::test]
async fn holder_pod_deleted_fails_over_without_waiting_for_expiry() {
    let client = setup().await;
    with_namespace(&client, "ctl-failover", |client, ns| async move {
        let dir = common::scratch_dir("controller-failover");
        create_policy(&client, &ns, "db", json!({"leaseDurationSeconds": 30})).await;
        let DbPool {
            pods,
            labels,
            _ctl,
            mut first,
            _second,
        } = db_pool_first_leads(&client, &ns, &dir).await;

        // The pod and its agent die together; nobody releases the Lease.
        first.kill();
        let started = tokio::time::Instant::now();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete("db-0", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete db-0");
        policy_until(
            &client,
            &ns,
            "db",
            "db-1 leads",
            Duration::from_secs(20),
            |p| {
                (holder_name(p).as_deref() == Some("db-1") && phase(p) == "Stable")
                    .then_some(())
                    .ok_or(format!("{:?}", p.status))
            },
        )
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(15),
            "failover took {took:?}; the Lease lasts 30s"
        );
        let note = event_until(&client, &ns, "db", "LeaderElected", "to db-1").await;
        assert!(note.contains("leaderless for"), "{note}");
        assert!(
            policy_events(&client, &ns, "db")
                .await
                .iter()
                .any(|(_, r, _)| r == "LeaseExpired")
        );
        common::eventually("db-1 labelled leader", LIMIT, || async {
            let roles = pods_by_role(&client, &ns).await;
            (roles.get("db-1").cloned().flatten().as_deref() == Some("leader"))
                .then_some(())
                .ok_or(format!("{roles:?}"))
        })
        .await;
        labels.assert_never_two();

        // A Lease deleted while held comes back naming its holder (agents
        // cannot create it), so nobody takes it as free.
        let l = lease(&client, &ns, "db").await.expect("Lease db");
        let uid = l.uid();
        Api::<Lease>::namespaced(client.clone(), &ns)
            .delete("db", &DeleteParams::default())
            .await
            .expect("delete Lease");
        common::eventually("Lease re-created naming db-1", LIMIT, || async {
            let l = lease(&client, &ns, "db").await.ok_or("missing")?;
            (l.uid() != uid && lease_holder(&l).as_deref() == Some(_second.identity.as_str()))
                .then_some(())
                .ok_or(format!("{:?}", l.spec))
        })
        .await;
        // With the holder's instance, so db-1 keeps its term instead of
        // seeing its name claimed by someone else.
        let l = lease(&client, &ns, "db").await.expect("Lease db");
        assert_eq!(
            holder_instance(&l).as_deref(),
            Some(pods[1].uid().unwrap_or_default().as_str())
        );
    })
    .await;
}

/// Pods before their policy: not candidates (PolicyMissing). The policy
/// makes them candidates; deleting it takes that back, removes the role
/// labels, and garbage-collects the Lease.
#[tokio::test]
async fn policy_created_after_pods_and_deleted() {
    let client = setup().await;
    with_namespace(&client, "ctl-orphan", |client, ns| async move {
        let dir = common::scratch_dir("controller-orphan");
        for i in 0..2 {
            create_pod(
                &client,
                &ns,
                &pool_pod(&format!("late-{i}"), Some("late"), "kwok-0", true),
            )
            .await;
            running_pod(&client, &ns, &format!("late-{i}")).await;
        }
        // Policies explicit: nothing creates "late" behind the test's back.
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &["--create-missing-policies=false"]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let gate = |want: &'static str, reason: Option<&'static str>| {
            let pods = pods.clone();
            async move {
                common::eventually(&format!("readiness gate {want} {reason:?}"), LIMIT, || {
                    let pods = pods.clone();
                    async move {
                        let list = pods
                            .list(&ListParams::default())
                            .await
                            .map_err(|e| e.to_string())?;
                        let conds: Vec<_> = list.items.iter().map(candidate_condition).collect();
                        let ok = conds.iter().all(|c| {
                            c.as_ref()
                                .is_some_and(|(s, r)| s == want && reason.is_none_or(|x| x == r))
                        });
                        ok.then_some(()).ok_or(format!("{conds:?}"))
                    }
                })
                .await
            }
        };
        gate("False", Some("PolicyMissing")).await;
        assert!(
            lease(&client, &ns, "late").await.is_none(),
            "no policy, no Lease"
        );
        assert!(
            Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
                .get_opt("late")
                .await
                .expect("get policy")
                .is_none(),
            "--create-missing-policies=false creates nothing"
        );
        // Bare pods are their own workload: the news is on them.
        common::eventually("LeaderPolicyMissing on the pod", LIMIT, || async {
            let events = pod_events(&client, &ns, "late-0").await;
            events
                .iter()
                .find(|(reason, note)| reason == "LeaderPolicyMissing" && note.contains("\"late\""))
                .map(|_| ())
                .ok_or(format!("{events:?}"))
        })
        .await;

        create_policy(&client, &ns, "late", fast()).await;
        gate("True", None).await;
        policy_until(&client, &ns, "late", "2 candidates", LIMIT, |p| {
            (candidates(p) == 2)
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        assert!(lease(&client, &ns, "late").await.is_some());

        Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
            .delete("late", &DeleteParams::default())
            .await
            .expect("delete policy");
        gate("False", Some("PolicyMissing")).await;
        common::eventually("role labels removed", LIMIT, || async {
            let roles = pods_by_role(&client, &ns).await;
            roles
                .values()
                .all(Option::is_none)
                .then_some(())
                .ok_or(format!("{roles:?}"))
        })
        .await;
        common::eventually(
            "Lease garbage-collected",
            Duration::from_secs(60),
            || async {
                match lease(&client, &ns, "late").await {
                    None => Ok(()),
                    Some(l) => Err(format!("still there: {:?}", l.metadata.owner_references)),
                }
            },
        )
        .await;
    })
    .await;
}

/// The seed's promise: the annotation alone makes a pool. Pods of a
/// Deployment name a pool that has no policy; the controller creates one
/// with the defaults, marked as its own, says so on the Deployment, never
/// rewrites the user's edits, and re-creates it if deleted while pods remain.
#[tokio::test]
async fn annotation_only_pool_gets_a_default_policy() {
    let client = setup().await;
    with_namespace(&client, "ctl-auto", |client, ns| async move {
        let dir = common::scratch_dir("controller-auto");
        let deploy: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "flow"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "flow"}},
                "template": {"metadata": {"labels": {"app": "flow", "zen-lead/pool": "flow-controller"}, "annotations": {"zen-lead/pool": "flow-controller"}},
                    "spec": {"nodeSelector": {"type": "kwok"}, "tolerations": [{"operator": "Exists"}], "terminationGracePeriodSeconds": 0,
                        "readinessGates": [{"conditionType": CANDIDATE_READINESS_GATE}],
                        "initContainers": [{"name": "zen-lead-agent", "image": "zen-lead", "restartPolicy": "Always"}],
                        "containers": [{"name": "app", "image": "app"}]}}}
        }))
        .expect("deployment json");
        let created = Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &deploy)
            .await
            .expect("deployment");
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &[]);

        let p = policy_until(&client, &ns, "flow-controller", "created, 2 candidates, derived timings", LIMIT, |p| {
            let t = p.status.as_ref().and_then(|s| s.timings);
            match t {
                Some(t) if candidates(p) == 2 && (t.lease_duration_seconds, t.renew_deadline_seconds, t.retry_period_seconds) == (15, 10, 2) => Ok(()),
                _ => Err(format!("{:?}", p.status)),
            }
        })
        .await;
        assert_eq!(p.annotations().get("zen-lead.io/created-by").map(String::as_str), Some("zen-lead-controller"));
        assert_eq!(p.spec, LeaderPolicySpec::default(), "the defaults");
        assert!(lease(&client, &ns, "flow-controller").await.is_some(), "a pool Lease");

        // The news is on the Deployment (matched by uid, as kubectl describe does).
        common::eventually("LeaderPolicyCreated on the Deployment", LIMIT, || async {
            let events = events_on(&client, &ns, "Deployment", "flow").await;
            events
                .iter()
                .find(|(reason, note, uid)| {
                    reason == "LeaderPolicyCreated" && note.contains("flow-controller") && *uid == created.metadata.uid
                })
                .map(|_| ())
                .ok_or(format!("{events:?}"))
        })
        .await;

        // The user's edit stays: the controller never writes the spec.
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        policies
            .patch("flow-controller", &PatchParams::default(), &Patch::Merge(json!({"spec": {"leaseDurationSeconds": 5}})))
            .await
            .expect("edit policy");
        policy_until(&client, &ns, "flow-controller", "edit observed: 5/3/1", LIMIT, |p| {
            let t = p.status.as_ref().and_then(|s| s.timings);
            match t {
                Some(t) if p.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
                    && (t.lease_duration_seconds, t.renew_deadline_seconds, t.retry_period_seconds) == (5, 3, 1) => Ok(()),
                _ => Err(format!("{:?}", p.status)),
            }
        })
        .await;
        let p = policies.get("flow-controller").await.expect("policy");
        assert_eq!(p.spec.lease_duration_seconds, 5, "the user's value stays");
        assert_eq!(p.metadata.generation, Some(2), "nobody else wrote the spec");

        // Deleted while pods still name it: back with the defaults.
        let old_uid = p.metadata.uid.clone();
        policies.delete("flow-controller", &DeleteParams::default()).await.expect("delete policy");
        policy_until(&client, &ns, "flow-controller", "re-created", LIMIT, |p| {
            (p.metadata.uid != old_uid && p.spec == LeaderPolicySpec::default())
                .then_some(())
                .ok_or(format!("{:?} {:?}", p.metadata.uid, p.spec))
        })
        .await;
    })
    .await;
}

/// Relabelling a pod moves it from one pool's status to the other's.
#[tokio::test]
async fn pod_moves_between_pools() {
    let client = setup().await;
    with_namespace(&client, "ctl-move", |client, ns| async move {
        let dir = common::scratch_dir("controller-move");
        create_policy(&client, &ns, "a", fast()).await;
        create_policy(&client, &ns, "b", fast()).await;
        for (name, pool) in [("m-0", "a"), ("m-1", "a"), ("m-2", "b")] {
            create_pod(&client, &ns, &pool_pod(name, Some(pool), "kwok-0", true)).await;
            running_pod(&client, &ns, name).await;
        }
        // Explicit policies: policy b is deleted below while its pods remain,
        // and must stay deleted.
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &["--create-missing-policies=false"]);
        let count = |pool: &'static str, n: i32| {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                policy_until(&client, &ns, pool, &format!("{n} candidates"), LIMIT, |p| {
                    (candidates(p) == n)
                        .then_some(())
                        .ok_or(format!("{:?}", p.status))
                })
                .await;
            }
        };
        count("a", 2).await;
        count("b", 1).await;
        Api::<Pod>::namespaced(client.clone(), &ns)
            .patch(
                "m-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"zen-lead/pool": "b"}}})),
            )
            .await
            .expect("relabel");
        count("a", 1).await;
        count("b", 2).await;
        let rb = Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .get("zen-lead-candidate-default")
            .await
            .expect("binding for default");
        assert_eq!(rb.subjects.unwrap_or_default().len(), 1);
        // Both pools' Leases for the one account; a deleted policy's Lease
        // leaves the grant.
        let roles = Api::<Role>::namespaced(client.clone(), &ns);
        let granted = |want: Vec<&'static str>| {
            let roles = roles.clone();
            async move {
                common::eventually(&format!("Role grants {want:?}"), LIMIT, || {
                    let roles = roles.clone();
                    let want = want.clone();
                    async move {
                        let r = roles
                            .get("zen-lead-candidate-default")
                            .await
                            .map_err(|e| e.to_string())?;
                        let names = r
                            .rules
                            .unwrap_or_default()
                            .first()
                            .and_then(|r| r.resource_names.clone())
                            .unwrap_or_default();
                        (names == want).then_some(()).ok_or(format!("{names:?}"))
                    }
                })
                .await;
            }
        };
        granted(vec!["a", "b"]).await;
        Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
            .delete("b", &Default::default())
            .await
            .expect("delete policy b");
        granted(vec!["a"]).await;
    })
    .await;
}

/// A StatefulSet pod re-created with the same name is a new candidate: the
/// old incarnation's Lease is expired at once, and the new pod can lead.
#[tokio::test]
async fn statefulset_pod_recreated_with_the_same_name() {
    let client = setup().await;
    with_namespace(&client, "ctl-sts", |client, ns| async move {
        let dir = common::scratch_dir("controller-sts");
        create_policy(&client, &ns, "sts", json!({"leaseDurationSeconds": 30})).await;
        // The agent as the webhook injects it (pool_pod's), a single replica.
        create_kwok_statefulset(
            &client,
            &ns,
            "kv",
            &pool_pod("unused", Some("sts"), "kwok-1", true),
            "sts",
        )
        .await;
        let old = running_pod(&client, &ns, "kv-0").await;
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &[]);
        let mut agent = HostAgent::start(&dir, &old, "sts");
        let old_identity = agent.identity.clone();
        policy_until(&client, &ns, "sts", "kv-0 leads", LIMIT, |p| {
            (holder_name(p).as_deref() == Some("kv-0"))
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        agent.kill();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete("kv-0", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete kv-0");
        let new = recreated(&client, &ns, "kv-0", &old).await;
        // Without the controller the old identity would hold for 30 s.
        common::eventually("old identity expired", Duration::from_secs(15), || async {
            let l = lease(&client, &ns, "sts").await.ok_or("no lease")?;
            (lease_holder(&l).as_deref() != Some(old_identity.as_str()))
                .then_some(())
                .ok_or(format!("{:?}", lease_holder(&l)))
        })
        .await;
        let p = policy_until(
            &client,
            &ns,
            "sts",
            "not led by the old incarnation",
            LIMIT,
            |p| {
                (phase(p) == "Electing")
                    .then_some(())
                    .ok_or(format!("{:?}", p.status))
            },
        )
        .await;
        assert!(holder_name(&p).is_none());
        let agent2 = HostAgent::start(&dir, &new, "sts");
        let p = policy_until(&client, &ns, "sts", "new kv-0 leads", LIMIT, |p| {
            (holder_name(p).as_deref() == Some("kv-0") && phase(p) == "Stable")
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        let holder = p.status.and_then(|s| s.current_holder).expect("holder");
        assert_eq!(holder.identity, agent2.identity);
        assert_eq!(holder.uid, new.uid());
    })
    .await;
}

/// A holder on a node that turns NotReady, and a holder whose pod fails,
/// lose the Lease at once.
#[tokio::test]
async fn holder_on_not_ready_node_or_failed_pod_is_expired() {
    let client = setup().await;
    with_namespace(&client, "ctl-node", |client, ns| async move {
        let dir = common::scratch_dir("controller-node");
        // A node of our own (no kubelet): its status is what we write.
        let node_name = format!("{ns}-n");
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name, "labels": {"zen-lead.io/test": "true"}},
        }))
        .expect("node json");
        nodes.create(&PostParams::default(), &node).await.expect("create node");
        let set_ready = |ready: bool| {
            let nodes = nodes.clone();
            let node_name = node_name.clone();
            async move {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                nodes
                    .patch_status(&node_name, &PatchParams::default(), &Patch::Strategic(json!({"status": {"conditions": [{
                        "type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "Test",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}})))
                    .await
                    .expect("node status");
            }
        };
        set_ready(true).await;
        // A long Lease and a short renew deadline: the controller may clear
        // a holder on a NotReady node only once its renew deadline passed.
        create_policy(
            &client,
            &ns,
            "n",
            json!({"leaseDurationSeconds": 30, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1}),
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut made = Vec::new();
        for name in ["n-0", "n-1"] {
            let pod = create_pod(&client, &ns, &pool_pod(name, Some("n"), &node_name, true)).await;
            // Play kubelet: running, agent started.
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let p = pods
                .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {
                    "phase": "Running",
                    "initContainerStatuses": [{"name": "zen-lead-agent", "image": "zen-lead", "imageID": "", "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}}],
                    "containerStatuses": [{"name": "app", "image": "app", "imageID": "", "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}}]
                }})))
                .await
                .expect("pod status");
            let _ = pod;
            made.push(p);
        }
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &[]);
        let mut a0 = HostAgent::start(&dir, &made[0], "n");
        policy_until(&client, &ns, "n", "n-0 leads", LIMIT, |p| {
            (holder_name(p).as_deref() == Some("n-0")).then_some(()).ok_or(format!("{:?}", p.status))
        })
        .await;
        // The node dies with the agent on it.
        a0.kill();
        set_ready(false).await;
        common::eventually("Lease cleared after NotReady", Duration::from_secs(10), || async {
            let l = lease(&client, &ns, "n").await.ok_or("no lease")?;
            lease_holder(&l).is_none().then_some(()).ok_or(format!("{:?}", lease_holder(&l)))
        })
        .await;
        let p = policy_until(&client, &ns, "n", "Electing", LIMIT, |p| {
            (phase(p) == "Electing").then_some(()).ok_or(format!("{:?}", p.status))
        })
        .await;
        assert_eq!(candidates(&p), 0, "pods on a NotReady node are not candidates");
        assert!(policy_events(&client, &ns, "n").await.iter().any(|(_, r, n)| r == "LeaseExpired" && n.contains("HolderNodeNotReady")));

        // Node back; n-1 leads; then its pod fails.
        set_ready(true).await;
        let mut a1 = HostAgent::start(&dir, &made[1], "n");
        policy_until(&client, &ns, "n", "n-1 leads", LIMIT, |p| {
            (holder_name(p).as_deref() == Some("n-1")).then_some(()).ok_or(format!("{:?}", p.status))
        })
        .await;
        a1.kill();
        pods.patch_status("n-1", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Failed"}})))
            .await
            .expect("fail n-1");
        common::eventually("Lease cleared after Failed", Duration::from_secs(10), || async {
            let l = lease(&client, &ns, "n").await.ok_or("no lease")?;
            lease_holder(&l).is_none().then_some(()).ok_or(format!("{:?}", lease_holder(&l)))
        })
        .await;
        assert!(policy_events(&client, &ns, "n").await.iter().any(|(_, r, n)| r == "LeaseExpired" && n.contains("HolderPodFinished")));
        let _ = nodes.delete(&node_name, &DeleteParams::default()).await;
    })
    .await;
}

/// A LeaderPolicy named like a Lease zen-lead did not create (another
/// controller's leader election, here held by "operator-abc"): the Lease is
/// left untouched (holder, duration, owner, resourceVersion), the candidates
/// get no rights on it, and the policy's PolicyReady condition and an Event
/// name the Lease and its holder. spec.adoptExistingLease opts in.
#[tokio::test]
async fn a_lease_zen_lead_did_not_create_is_reported_not_adopted() {
    let client = setup().await;
    with_namespace(&client, "ctl-foreign", |client, ns| async move {
        let dir = common::scratch_dir("controller-foreign");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let now = zen_lead::election::record::now_micro();
        let theirs: Lease = serde_json::from_value(json!({
            "metadata": {"name": "my-operator"},
            "spec": {"holderIdentity": "operator-abc", "leaseDurationSeconds": 137,
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 4}
        }))
        .expect("lease json");
        let before = leases
            .create(&PostParams::default(), &theirs)
            .await
            .expect("their Lease");
        create_pod(
            &client,
            &ns,
            &pool_pod("op-0", Some("my-operator"), "kwok-0", true),
        )
        .await;
        running_pod(&client, &ns, "op-0").await;
        create_policy(&client, &ns, "my-operator", fast()).await;
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &[]);

        let p = policy_until(
            &client,
            &ns,
            "my-operator",
            "PolicyReady False/LeaseNotManaged",
            LIMIT,
            |p| {
                let c = condition(p, "PolicyReady");
                (c.map(|c| (c.status.as_str(), c.reason.as_str()))
                    == Some(("False", "LeaseNotManaged")))
                .then_some(())
                .ok_or(format!("{c:?}"))
            },
        )
        .await;
        let message = condition(&p, "PolicyReady")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            message.contains(&format!("Lease {ns}/my-operator"))
                && message.contains("operator-abc"),
            "{message}"
        );
        assert!(message.contains("adoptExistingLease"), "{message}");
        common::eventually("the LeaseNotManaged event", LIMIT, || async {
            let events = policy_events(&client, &ns, "my-operator").await;
            events
                .iter()
                .any(|(t, r, n)| {
                    t == "Warning" && r == "LeaseNotManaged" && n.contains("operator-abc")
                })
                .then_some(())
                .ok_or(format!("{events:?}"))
        })
        .await;
        // Several passes later the Lease is exactly as its owner left it,
        // and the pool's candidates got no rights on it.
        let candidates_of = |p: &LeaderPolicy| p.status.as_ref().and_then(|s| s.candidates);
        policy_until(&client, &ns, "my-operator", "the pod counted", LIMIT, |p| {
            candidates_of(p)
                .is_some()
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        let after = leases.get("my-operator").await.expect("their Lease");
        assert_eq!(
            after.resource_version(),
            before.resource_version(),
            "zen-lead wrote their Lease: {after:?}"
        );
        assert!(after.owner_references().is_empty(), "{after:?}");
        assert_eq!(lease_holder(&after).as_deref(), Some("operator-abc"));
        assert!(
            Api::<Role>::namespaced(client.clone(), &ns)
                .get_opt("zen-lead-candidate-default")
                .await
                .expect("read Role")
                .is_none(),
            "the candidates were granted rights on someone else's Lease"
        );

        // The opt-in: adopted, the holder kept.
        Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
            .patch(
                "my-operator",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"adoptExistingLease": true}})),
            )
            .await
            .expect("opt in");
        policy_until(
            &client,
            &ns,
            "my-operator",
            "PolicyReady True",
            LIMIT,
            |p| {
                let c = condition(p, "PolicyReady");
                (c.map(|c| c.status.as_str()) == Some("True"))
                    .then_some(())
                    .ok_or(format!("{c:?}"))
            },
        )
        .await;
        let adopted = leases.get("my-operator").await.expect("Lease");
        assert_eq!(
            adopted.labels().get(LEASE_POLICY_LABEL).map(String::as_str),
            Some("my-operator")
        );
        assert_eq!(
            adopted.spec.as_ref().and_then(|s| s.lease_duration_seconds),
            Some(5)
        );
    })
    .await;
}

/// Pool pods without the agent: AgentMissing condition, a Warning event,
/// and with --evict-uninjected the controller-owned ones are evicted.
#[tokio::test]
async fn pods_without_agent_are_reported_and_evicted() {
    let client = setup().await;
    with_namespace(&client, "ctl-noagent", |client, ns| async move {
        let dir = common::scratch_dir("controller-noagent");
        create_policy(&client, &ns, "bare", fast()).await;
        // Labelled but not injected (a bare pod: reported, never evicted).
        create_pod(&client, &ns, &pool_pod("lonely", Some("bare"), "kwok-0", false)).await;
        // Annotated in the template, admitted without the webhook.
        let deploy: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "plain"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "plain"}},
                "template": {"metadata": {"labels": {"app": "plain"}, "annotations": {"zen-lead/pool": "bare"}},
                    "spec": {"nodeSelector": {"type": "kwok"}, "tolerations": [{"operator": "Exists"}], "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "app", "image": "app"}]}}}
        }))
        .expect("deployment json");
        Api::<Deployment>::namespaced(client.clone(), &ns).create(&PostParams::default(), &deploy).await.expect("deployment");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let first = common::eventually("the Deployment's pod", LIMIT, || async {
            let list = pods.list(&ListParams::default().labels("app=plain")).await.map_err(|e| e.to_string())?;
            list.items.first().map(|p| p.name_any()).ok_or("none yet".to_owned())
        })
        .await;
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &["--evict-uninjected"]);
        let p = policy_until(&client, &ns, "bare", "AgentMissing True", LIMIT, |p| {
            let c = condition(p, "AgentMissing");
            (c.map(|c| c.status.as_str()) == Some("True")).then_some(()).ok_or(format!("{c:?}"))
        })
        .await;
        let msg = condition(&p, "AgentMissing").map(|c| c.message.clone()).unwrap_or_default();
        assert!(msg.contains("lonely"), "{msg}");
        event_until(&client, &ns, "bare", "AgentMissing", "lonely").await;
        // The Deployment's pod is evicted (and comes back, still uninjected here).
        common::eventually("the uninjected Deployment pod evicted", LIMIT, || async {
            match pods.get_opt(&first).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(p) if p.metadata.deletion_timestamp.is_some() => Ok(()),
                Some(_) => Err("still running".to_owned()),
            }
        })
        .await;
        // The bare pod is never evicted.
        assert!(pods.get_opt("lonely").await.expect("get").is_some_and(|p| p.metadata.deletion_timestamp.is_none()));
        let lonely = pods.get("lonely").await.expect("lonely");
        assert_eq!(candidate_condition(&lonely).map(|c| c.1), Some("AgentMissing".to_owned()));
    })
    .await;
}

async fn deployment_state(
    client: &Client,
    ns: &str,
    name: &str,
) -> (i32, Option<String>, Option<String>) {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get {name}: {e}"));
    (
        d.spec.and_then(|s| s.replicas).unwrap_or(1),
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ORIGINAL_REPLICAS_ANNOTATION).cloned()),
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCALED_BY_ANNOTATION).cloned()),
    )
}

async fn replicas_until(client: &Client, ns: &str, name: &str, want: (i32, Option<&str>)) {
    common::eventually(&format!("Deployment {name} at {want:?}"), LIMIT, || async {
        let (r, orig, _) = deployment_state(client, ns, name).await;
        (r == want.0 && orig.as_deref() == want.1)
            .then_some(())
            .ok_or(format!("replicas {r}, original {orig:?}"))
    })
    .await;
}

fn annotated_deployment(name: &str, pool: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": {"zen-lead/pool": pool}},
                "spec": {"nodeSelector": {"type": "kwok"}, "tolerations": [{"operator": "Exists"}], "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "app", "image": "app"}]}}}
    }))
    .unwrap_or_else(|e| panic!("deployment json: {e}"))
}

/// scaleDown: one replica in total, original count remembered across a
/// controller restart, restored on standby and on policy deletion; an HPA
/// makes it refuse.
#[tokio::test]
async fn scale_down_round_trips_with_a_controller_restart() {
    let client = setup().await;
    with_namespace(&client, "ctl-scale", |client, ns| async move {
        let dir = common::scratch_dir("controller-scale");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &annotated_deployment("worker", "jobs", 3)).await.expect("deployment");
        create_policy(&client, &ns, "jobs", json!({"followerMode": "scaleDown"})).await;
        let mut ctl = Controller::start(&dir, &ns, "ctl-a", &[]);
        replicas_until(&client, &ns, "worker", (1, Some("3"))).await;
        let p = policy_until(&client, &ns, "jobs", "ScaledDown True", LIMIT, |p| {
            let c = condition(p, "ScaledDown");
            (c.map(|c| c.status.as_str()) == Some("True")).then_some(()).ok_or(format!("{c:?}"))
        })
        .await;
        assert!(p.finalizers().iter().any(|f| f == "zen-lead.io/restore-replicas"));

        // Restart: the remembered count stays 3 and nothing is scaled twice.
        ctl.kill();
        let ctl2 = Controller::start(&dir, &ns, "ctl-b", &[]);
        common::eventually("the new controller is active", LIMIT, || async {
            (ctl2.metric("zen_lead_controller_active").await == 1.0).then_some(()).ok_or("standby".to_owned())
        })
        .await;
        // Let it reconcile the pool at least once.
        common::eventually("reconciled after restart", LIMIT, || async {
            (ctl2.metric("zen_lead_controller_reconciles_total").await >= 1.0).then_some(()).ok_or("not yet".to_owned())
        })
        .await;
        assert_eq!(deployment_state(&client, &ns, "worker").await.0, 1);
        assert_eq!(deployment_state(&client, &ns, "worker").await.1.as_deref(), Some("3"));

        // Back to standby: restored, bookkeeping removed.
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        policies.patch("jobs", &PatchParams::default(), &Patch::Merge(json!({"spec": {"followerMode": "standby"}}))).await.expect("standby");
        replicas_until(&client, &ns, "worker", (3, None)).await;
        assert_eq!(deployment_state(&client, &ns, "worker").await.2, None);

        // scaleDown again, then delete the policy: the finalizer restores.
        policies.patch("jobs", &PatchParams::default(), &Patch::Merge(json!({"spec": {"followerMode": "scaleDown"}}))).await.expect("scaleDown");
        replicas_until(&client, &ns, "worker", (1, Some("3"))).await;
        policies.delete("jobs", &DeleteParams::default()).await.expect("delete");
        replicas_until(&client, &ns, "worker", (3, None)).await;
        common::eventually("policy gone", LIMIT, || async {
            policies.get_opt("jobs").await.map_err(|e| e.to_string())?.map_or(Ok(()), |_| Err("still there".to_owned()))
        })
        .await;

        // A workload leaving the pool is restored too.
        create_policy(&client, &ns, "jobs", json!({"followerMode": "scaleDown"})).await;
        replicas_until(&client, &ns, "worker", (1, Some("3"))).await;
        deployments
            .patch("worker", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"zen-lead/pool": null}}}}})))
            .await
            .expect("leave pool");
        replicas_until(&client, &ns, "worker", (3, None)).await;

        // An HPA: refuse, with a condition and an event.
        deployments.create(&PostParams::default(), &annotated_deployment("auto", "hpa", 2)).await.expect("deployment auto");
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "auto"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "auto"}, "minReplicas": 2, "maxReplicas": 4,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}
        }))
        .expect("hpa json");
        Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns).create(&PostParams::default(), &hpa).await.expect("hpa");
        create_policy(&client, &ns, "hpa", json!({"followerMode": "scaleDown"})).await;
        let p = policy_until(&client, &ns, "hpa", "ScaledDown refused", LIMIT, |p| {
            let c = condition(p, "ScaledDown");
            (c.map(|c| c.reason.as_str()) == Some("HorizontalPodAutoscalerConflict")).then_some(()).ok_or(format!("{c:?}"))
        })
        .await;
        assert_eq!(condition(&p, "ScaledDown").map(|c| c.status.as_str()), Some("False"));
        event_until(&client, &ns, "hpa", "HorizontalPodAutoscalerConflict", "auto").await;
        assert_eq!(deployment_state(&client, &ns, "auto").await, (2, None, None));
    })
    .await;
}

/// Two controller replicas: one runs the controllers; when it dies without
/// releasing, the other takes over within the controller Lease duration,
/// without a restart. Both serve /readyz.
#[tokio::test]
async fn standby_controller_takes_over() {
    let client = setup().await;
    with_namespace(&client, "ctl-ha", |client, ns| async move {
        let dir = common::scratch_dir("controller-ha");
        let mut a = Controller::start(&dir, &ns, "ctl-a", &[]);
        common::eventually("ctl-a active", LIMIT, || async {
            (a.metric("zen_lead_controller_active").await == 1.0)
                .then_some(())
                .ok_or("standby".to_owned())
        })
        .await;
        let b = Controller::start(&dir, &ns, "ctl-b", &[]);
        common::eventually("ctl-b ready (standby)", LIMIT, || async {
            let (code, body) = b.get("/readyz").await;
            (code == 200).then_some(()).ok_or(format!("{code} {body}"))
        })
        .await;
        assert_eq!(b.metric("zen_lead_controller_active").await, 0.0);
        create_policy(&client, &ns, "one", fast()).await;
        common::eventually("Lease one made by ctl-a", LIMIT, || async {
            lease(&client, &ns, "one")
                .await
                .map(|_| ())
                .ok_or("none".to_owned())
        })
        .await;

        a.kill();
        let killed = tokio::time::Instant::now();
        create_policy(&client, &ns, "two", fast()).await;
        common::eventually("ctl-b active", Duration::from_secs(15), || async {
            (b.metric("zen_lead_controller_active").await == 1.0)
                .then_some(())
                .ok_or("standby".to_owned())
        })
        .await;
        let took = killed.elapsed();
        // Lease duration 3 s; allow for the watch and process start.
        assert!(took < Duration::from_secs(8), "took over after {took:?}");
        common::eventually("Lease two made by ctl-b", LIMIT, || async {
            lease(&client, &ns, "two")
                .await
                .map(|_| ())
                .ok_or("none".to_owned())
        })
        .await;
        let ctl_lease = lease(
            &client,
            &ns,
            &zen_lead::api::keys::controller_lease_name(Some(&ns)),
        )
        .await
        .expect("controller Lease");
        assert_eq!(lease_holder(&ctl_lease).as_deref(), Some("ctl-b"));
    })
    .await;
}

/// A rolling update of a 3-replica pool Deployment completes, at most one
/// pod is labelled leader at any instant, and the leaderless gap is
/// reported. Agents run as host processes for each pod, stopped with
/// SIGTERM (release) when the pod terminates, as the kubelet would.
#[tokio::test]
async fn rolling_update_keeps_a_single_leader() {
    let client = setup().await;
    with_namespace(&client, "ctl-roll", |client, ns| async move {
        let dir = common::scratch_dir("controller-roll");
        create_policy(&client, &ns, "roll", fast()).await;
        let deploy: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "roll"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "roll"}},
                "template": {"metadata": {"labels": {"app": "roll", "zen-lead/pool": "roll"}, "annotations": {"zen-lead/pool": "roll", "v": "1"}},
                    "spec": {"nodeSelector": {"type": "kwok"}, "tolerations": [{"operator": "Exists"}], "terminationGracePeriodSeconds": 1,
                        "readinessGates": [{"conditionType": CANDIDATE_READINESS_GATE}],
                        "initContainers": [{"name": "zen-lead-agent", "image": "zen-lead", "restartPolicy": "Always"}],
                        "containers": [{"name": "app", "image": "app"}]}}}
        }))
        .expect("deployment json");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &deploy).await.expect("deployment");
        let labels = LeaderLabelWatch::start(&client, &ns);
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &[]);

        // Play kubelet for the agents: one per running pod, SIGTERM on
        // deletion.
        let agents_dir = dir.clone();
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let kubelet = tokio::spawn(async move {
            let mut agents: BTreeMap<String, HostAgent> = BTreeMap::new();
            let stream = watcher::watcher(pods_api, watcher::Config::default().labels("app=roll"));
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                let (p, gone) = match ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        let gone = p.metadata.deletion_timestamp.is_some();
                        (p, gone)
                    }
                    watcher::Event::Delete(p) => (p, true),
                    _ => continue,
                };
                let uid = p.uid().unwrap_or_default();
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if gone {
                    if let Some(mut a) = agents.remove(&uid) {
                        a.stop().await;
                    }
                } else if running && !agents.contains_key(&uid) {
                    agents.insert(uid, HostAgent::start(&agents_dir, &p, "roll"));
                }
            }
        });

        policy_until(&client, &ns, "roll", "Stable with 3 candidates", Duration::from_secs(45), |p| {
            (phase(p) == "Stable" && candidates(p) == 3).then_some(()).ok_or(format!("{:?}", p.status))
        })
        .await;
        let before = holder_name(&policy_until(&client, &ns, "roll", "a holder", LIMIT, |_| Ok(())).await);

        deployments
            .patch("roll", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}})))
            .await
            .expect("roll");
        let out = wait_for("kubectl rollout status", Duration::from_secs(120), tokio::task::spawn_blocking({
            let ns = ns.clone();
            let cache = dir.join("kubectl-cache");
            move || common::kubectl(&["-n", &ns, "rollout", "status", "deployment/roll", "--timeout=110s"], &cache)
        }))
        .await
        .expect("kubectl");
        assert!(out.status.success(), "rollout status: {}", String::from_utf8_lossy(&out.stderr));

        let p = policy_until(&client, &ns, "roll", "Stable on a new pod with 3 candidates", Duration::from_secs(45), |p| {
            (phase(p) == "Stable" && candidates(p) == 3 && holder_name(p) != before)
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        assert!(holder_name(&p).is_some());
        let note = event_until(&client, &ns, "roll", "LeaderElected", "leaderless for").await;
        assert!(note.contains("leader changed from"), "{note}");
        labels.assert_never_two();
        kubelet.abort();
    })
    .await;
}

/// Two live pods of a `custom` pool with the same identity (a hand-made
/// configuration the webhook cannot see coming, like a multi-replica
/// StatefulSet with the identity on its template). Only one leads; the other
/// is told, on its condition and in an Event, which pod has its identity; the
/// policy lists the pair. Deleting the duplicate clears the report.
#[tokio::test]
async fn pods_sharing_a_custom_identity_are_reported_and_one_leads() {
    let client = setup().await;
    with_namespace(&client, "ctl-dup", |client, ns| async move {
        let dir = common::scratch_dir("controller-dup");
        let mut spec = fast();
        spec["identityStrategy"] = json!("custom");
        create_policy(&client, &ns, "dup", spec).await;
        let mut pods = Vec::new();
        for name in ["dup-a", "dup-b"] {
            create_pod(&client, &ns, &custom_pool_pod(name, "dup", "worker")).await;
            pods.push(running_pod(&client, &ns, name).await);
        }
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &[]);
        let _a = HostAgent::start_custom(&dir, &pods[0], "dup", "worker");
        policy_until(&client, &ns, "dup", "dup-a leads", LIMIT, |p| {
            (holder_name(p).as_deref() == Some("dup-a"))
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        let _b = HostAgent::start_custom(&dir, &pods[1], "dup", "worker");
        let p = policy_until(&client, &ns, "dup", "the conflict reported", LIMIT, |p| {
            condition(p, "IdentityConflict")
                .filter(|c| c.status == "True")
                .map(|_| ())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        let message = condition(&p, "IdentityConflict")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            message.contains("dup-a") && message.contains("dup-b") && message.contains("worker"),
            "{message}"
        );
        let b = common::eventually("dup-b is told", LIMIT, || async {
            let pod = Api::<Pod>::namespaced(client.clone(), &ns)
                .get("dup-b")
                .await
                .map_err(|e| e.to_string())?;
            (candidate_condition(&pod) == Some(("False".into(), "DuplicateIdentity".into())))
                .then_some(pod.clone())
                .ok_or(format!("{:?}", candidate_condition(&pod)))
        })
        .await;
        let note = b
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == CANDIDATE_READINESS_GATE))
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            note.contains("pod dup-a") && note.contains("pod dup-b"),
            "{note}"
        );
        common::eventually("a Warning event on dup-b", LIMIT, || async {
            let events = pod_events(&client, &ns, "dup-b").await;
            events
                .iter()
                .any(|(r, n)| r == "DuplicateIdentity" && n.contains("dup-a"))
                .then_some(())
                .ok_or(format!("{events:?}"))
        })
        .await;
        // dup-a keeps the Lease: the Lease names its UID, and dup-b, which
        // shares its identity, never takes the term as its own.
        for _ in 0..3 {
            let l = lease(&client, &ns, "dup").await.expect("Lease");
            assert_eq!(lease_holder(&l).as_deref(), Some("worker"));
            assert_eq!(
                holder_instance(&l).as_deref(),
                Some(pods[0].uid().unwrap_or_default().as_str())
            );
            assert_eq!(
                holder_name(
                    &Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
                        .get("dup")
                        .await
                        .expect("policy")
                )
                .as_deref(),
                Some("dup-a")
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete("dup-b", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete dup-b");
        policy_until(&client, &ns, "dup", "the conflict cleared", LIMIT, |p| {
            condition(p, "IdentityConflict")
                .filter(|c| c.status == "False")
                .map(|_| ())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
    })
    .await;
}

/// What `custom` identities exist for: a single-replica StatefulSet's pod,
/// re-created with the same identity (and a new UID), takes over cleanly.
/// The old incarnation's Lease is cleared by the controller (its instance is
/// no pod's any more), so the new pod does not wait out the 30 s lease, and
/// its term is a new one (fencing token + 1).
#[tokio::test]
async fn custom_identity_statefulset_pod_recreated_takes_over() {
    let client = setup().await;
    with_namespace(&client, "ctl-csts", |client, ns| async move {
        let dir = common::scratch_dir("controller-csts");
        create_policy(
            &client,
            &ns,
            "primary",
            json!({"leaseDurationSeconds": 30, "identityStrategy": "custom"}),
        )
        .await;
        let template = custom_pool_pod("unused", "primary", "db-primary");
        create_kwok_statefulset(&client, &ns, "pg", &template, "primary").await;
        let old = running_pod(&client, &ns, "pg-0").await;
        let _ctl = Controller::start(&dir, &ns, "ctl-a", &[]);
        let mut agent = HostAgent::start_custom(&dir, &old, "primary", "db-primary");
        policy_until(&client, &ns, "primary", "pg-0 leads", LIMIT, |p| {
            (holder_name(p).as_deref() == Some("pg-0"))
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        let before = lease(&client, &ns, "primary").await.expect("Lease");
        let token = before
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        agent.kill();
        let started = tokio::time::Instant::now();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete("pg-0", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete pg-0");
        let new = recreated(&client, &ns, "pg-0", &old).await;
        let _agent2 = HostAgent::start_custom(&dir, &new, "primary", "db-primary");
        let p = policy_until(
            &client,
            &ns,
            "primary",
            "the new pg-0 leads",
            Duration::from_secs(20),
            |p| {
                let uid = p
                    .status
                    .as_ref()
                    .and_then(|s| s.current_holder.as_ref())
                    .and_then(|h| h.uid.clone());
                (uid == new.uid() && phase(p) == "Stable")
                    .then_some(())
                    .ok_or(format!("{:?}", p.status))
            },
        )
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "take-over took {took:?}; the lease is 30 s"
        );
        let holder = p.status.and_then(|s| s.current_holder).expect("holder");
        assert_eq!(holder.identity, "db-primary");
        let after = lease(&client, &ns, "primary").await.expect("Lease");
        assert_eq!(holder_instance(&after), new.uid());
        assert!(
            after
                .spec
                .as_ref()
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0)
                > token,
            "a new pod's term is a new term"
        );
    })
    .await;
}

/// `zen-lead controller` with only the rights of `user` (impersonated
/// through the test's kubeconfig: kube-rs's KUBE_RS_DEBUG_IMPERSONATE_USER);
/// killed when dropped if it is still running.
fn start_impersonating(
    dir: &Path,
    ns: &str,
    name: &str,
    user: &str,
    extra: &[&str],
) -> (tokio::process::Child, u16, PathBuf) {
    let (mut command, admin, log) = controller_command(dir, ns, name, extra);
    let stderr = std::fs::File::create(&log).unwrap_or_else(|e| panic!("controller log: {e}"));
    command
        .env("KUBE_RS_DEBUG_IMPERSONATE_USER", user)
        .stderr(stderr);
    let child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    (child, admin, log)
}

/// What a controller needs in `ns`, for `user`, except any right on
/// StatefulSets: its StatefulSet watch can never list.
async fn grant_all_but_statefulsets(client: &Client, ns: &str, user: &str) {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "zen-lead-no-statefulsets"},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
            {"apiGroups": ["coordination.kube-zen.io"],
             "resources": ["leaderpolicies", "leaderpolicies/status"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["*"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["*"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"],
             "verbs": ["get", "list", "watch"]},
        ],
    }))
    .expect("Role");
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap_or_else(|e| panic!("create Role: {e}"));
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "zen-lead-no-statefulsets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "zen-lead-no-statefulsets"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .expect("RoleBinding");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding: {e}"));
}

/// Issue 29, finding 9: a controller leader whose caches never sync (it may
/// not list StatefulSets) releases the controller Lease and exits non-zero
/// within --controller-sync-timeout, naming the watch; its /readyz (the
/// webhook's) stays 200 all along; a healthy standby then leads.
#[tokio::test]
async fn a_leader_whose_caches_never_sync_releases_the_lease_and_exits() {
    let client = setup().await;
    with_namespace(&client, "ctl-nosync", |client, ns| async move {
        let dir = common::scratch_dir("controller-nosync");
        let user = format!("{ns}-limited");
        grant_all_but_statefulsets(&client, &ns, &user).await;
        let lease_name = zen_lead::api::keys::controller_lease_name(Some(&ns));
        let bound = Duration::from_secs(5);
        let (mut a, admin, log) = start_impersonating(
            &dir,
            &ns,
            "ctl-nosync",
            &user,
            &["--controller-sync-timeout", "5s"],
        );
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        // The webhook serves: ready.
        common::eventually("ctl-nosync's /readyz", LIMIT, || async {
            match http_get(admin, "/readyz").await {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code} {body}")),
            }
        })
        .await;
        common::eventually("ctl-nosync to take the controller Lease", LIMIT, || async {
            let held = lease(&client, &ns, &lease_name).await;
            let holder = held.as_ref().and_then(lease_holder);
            (holder.as_deref() == Some("ctl-nosync"))
                .then_some(())
                .ok_or(format!("holder {holder:?}"))
        })
        .await;
        let acquired = tokio::time::Instant::now();
        // A healthy standby, waiting for the Lease meanwhile.
        let b = Controller::start(&dir, &ns, "ctl-standby", &[]);

        // Still ready while it leads without synced caches, until it exits:
        // /readyz is the webhook's, not the controllers'.
        let mut ready_while_leading = 0;
        let status = loop {
            let (code, body) = http_get(admin, "/readyz").await;
            let exited = tokio::select! {
                status = a.wait() => Some(status.expect("wait")),
                () = tokio::time::sleep(Duration::from_millis(100)) => None,
            };
            if let Some(status) = exited {
                break status;
            }
            let waited = acquired.elapsed();
            // 0: the admin server closed on the way out.
            assert!(
                code == 200 || code == 0,
                "/readyz {code} {body} after {waited:?} as leader"
            );
            if code == 200 {
                ready_while_leading += 1;
            }
            assert!(
                waited < bound + Duration::from_secs(15),
                "still running {waited:?} after taking the Lease (bound {bound:?}):\n{}",
                log_text()
            );
        };
        assert!(
            ready_while_leading >= 10,
            "/readyz answered 200 only {ready_while_leading} times while it led"
        );
        let took = acquired.elapsed();
        assert!(!status.success(), "exited with {status}");
        assert!(
            took + Duration::from_secs(1) >= bound,
            "gave up after {took:?}, before the {bound:?} bound"
        );
        let text = log_text();
        assert!(
            text.contains("the StatefulSets watch never")
                && text.contains("--controller-sync-timeout"),
            "the exit names the watch and the flag:\n{text}"
        );
        // Released on the way out, not left to expire.
        let held = lease(&client, &ns, &lease_name).await;
        let holder = held.as_ref().and_then(lease_holder);
        assert_ne!(holder.as_deref(), Some("ctl-nosync"), "Lease not released");

        common::eventually("the standby to lead and sync", LIMIT, || async {
            let active = b.metric("zen_lead_controller_active").await;
            let synced = b.metric("zen_lead_controller_caches_synced").await;
            (active == 1.0 && synced == 1.0)
                .then_some(())
                .ok_or(format!("active {active}, synced {synced}"))
        })
        .await;
    })
    .await;
}

#[path = "common/election.rs"]
mod election_util;

/// How long the `api` pool of the app-failure test lets its leader's app
/// fail (`spec.appFailureGraceSeconds`).
const APP_GRACE: Duration = Duration::from_secs(4);

/// What the test plays kubelet with: the app container of a pool pod.
#[derive(Clone, Copy)]
enum App {
    /// Running since this Unix second, and Ready.
    Ready(i64),
    /// Running since this Unix second, its readiness probe failing.
    NotReady(i64),
    /// Waiting to be restarted after crashes.
    CrashLoop,
}

fn unix_now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// The status a kubelet would report for an `api` pool pod on a node without
/// one: the agent running and started, the app container as `app` says,
/// the pod's Ready condition with it. A strategic merge, so the controller's
/// readiness-gate condition stays.
async fn set_app(pods: &Api<Pod>, name: &str, app: App) {
    let at = |secs: i64| {
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .expect("timestamp")
            .to_string()
    };
    let (ready, state) = match app {
        App::Ready(since) => (true, json!({"running": {"startedAt": at(since)}})),
        App::NotReady(since) => (false, json!({"running": {"startedAt": at(since)}})),
        App::CrashLoop => (
            false,
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}),
        ),
    };
    let now = at(unix_now());
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now}],
        "initContainerStatuses": [{"name": "zen-lead-agent", "image": "zen-lead", "imageID": "", "ready": true,
            "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}}],
        "containerStatuses": [{"name": "app", "image": "app", "imageID": "", "ready": ready,
            "started": !matches!(app, App::CrashLoop), "restartCount": 0, "state": state}]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .unwrap_or_else(|e| panic!("status of {name}: {e}"));
}

/// A node of the test's own (no kubelet: its pods' status is what the test
/// writes), kept Ready by a heartbeat until the returned task is aborted.
async fn node_without_kubelet(client: &Client, name: &str) -> tokio::task::JoinHandle<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"zen-lead.io/test": "true"}},
    }))
    .expect("node json");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    let name = name.to_owned();
    let beat = move || {
        let nodes = nodes.clone();
        let name = name.clone();
        async move {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "reason": "Test", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(ready))
                .await
                .map(|_| ())
        }
    };
    beat().await.expect("node status");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _ = beat().await;
        }
    })
}

/// Polls the Lease until `limit` and returns the first holder other than
/// `holder` it shows, with when (`None`: it kept `holder` all along).
async fn holder_change_within(
    client: &Client,
    ns: &str,
    holder: &str,
    limit: Duration,
) -> Option<(String, Duration)> {
    let started = tokio::time::Instant::now();
    while started.elapsed() < limit {
        let now = lease(client, ns, "app")
            .await
            .as_ref()
            .and_then(lease_holder);
        if now.as_deref() != Some(holder) {
            return Some((now.unwrap_or_default(), started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Starts the agent of an `api` pool pod on the host and waits until it
/// watches the Lease (`/readyz`), so a hand-off to it finds it there.
async fn ready_agent(dir: &Path, ns: &str, pod: &Pod) -> election_util::Agent {
    let uid = pod.uid().unwrap_or_default();
    let name = pod.name_any();
    let agent = election_util::Agent::start_as(
        &common::kubeconfig_path(),
        dir,
        ns,
        "app",
        &name,
        &uid,
        &name,
        &[],
    );
    common::eventually(&format!("agent of {name} ready"), LIMIT, || async {
        let (code, body) = agent.get("/readyz").await;
        (code == 200).then_some(()).ok_or(format!("{code} {body}"))
    })
    .await;
    agent
}

/// Waits until the Lease of pool `app` names `identity`.
async fn app_lease_held_by(client: &Client, ns: &str, identity: &str) {
    common::eventually(&format!("{identity} holds the Lease"), LIMIT, || async {
        let l = lease(client, ns, "app").await.ok_or("no Lease")?;
        (lease_holder(&l).as_deref() == Some(identity))
            .then_some(())
            .ok_or(format!("{:?}", lease_holder(&l)))
    })
    .await;
}

/// The hand-off was the holder agent's own release (its leadership log),
/// never an expiry by the controller.
async fn released_not_expired(
    client: &Client,
    ns: &str,
    ctl: &Controller,
    agent: &election_util::Agent,
) {
    let released = agent
        .entries()
        .iter()
        .any(|e| e.event == "stopped" && e.reason.as_deref() == Some("released"));
    assert!(
        released,
        "{}'s agent did not release: {:?}",
        agent.name,
        agent.entries()
    );
    let (_, metrics) = ctl.get("/metrics").await;
    assert!(
        metrics.contains("zen_lead_controller_lease_expiries_total 0"),
        "the controller cleared the Lease: {metrics}"
    );
    let events = policy_events(client, ns, "app").await;
    assert!(
        !events.iter().any(|(_, r, _)| r == "LeaseExpired"),
        "{events:?}"
    );
}

/// Finding 7 of issue 29: an `api` pool's leader whose app crash-loops
/// keeps a healthy agent, so it kept the Lease while Ready replicas waited.
/// Now an app that is not Ready for less than `appFailureGraceSeconds`
/// keeps the lead; past it, the controller names a Ready follower as the
/// preferred holder and the holder's own agent releases (its leadership log
/// says `released`; the controller never clears the Lease). Without a Ready
/// follower the leader stays and an Event says so; once one is Ready, it
/// hands over. An app that keeps restarting while Ready at every look hands
/// over too.
#[tokio::test]
async fn api_leader_whose_app_fails_hands_over_to_a_ready_follower_after_the_grace() {
    let client = setup().await;
    with_namespace(&client, "ctl-app", |client, ns| async move {
        let dir = election_util::scratch_dir("controller-app-failure");
        let node_name = format!("{ns}-n");
        let heartbeat = node_without_kubelet(&client, &node_name).await;
        let mut spec = fast();
        spec["activation"] = json!("api");
        spec["appFailureGraceSeconds"] = json!(APP_GRACE.as_secs());
        create_policy(&client, &ns, "app", spec).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut made = Vec::new();
        let start = unix_now();
        for name in ["app-0", "app-1"] {
            let mut pod = pool_pod(name, Some("app"), &node_name, true);
            pod.metadata.annotations = Some(BTreeMap::from([(
                "zen-lead.io/activation".to_owned(),
                "api".to_owned(),
            )]));
            made.push(create_pod(&client, &ns, &pod).await);
            set_app(&pods, name, App::Ready(start)).await;
        }
        let ctl = Controller::start(&dir, &ns, "ctl-a", &[]);
        let a0 = ready_agent(&dir, &ns, &made[0]).await;
        app_lease_held_by(&client, &ns, &a0.identity).await;
        let a1 = ready_agent(&dir, &ns, &made[1]).await;

        // A readiness blip shorter than the grace: the leader keeps it.
        set_app(&pods, "app-0", App::NotReady(start)).await;
        tokio::time::sleep(APP_GRACE / 3).await;
        set_app(&pods, "app-0", App::Ready(start)).await;
        let window = APP_GRACE + Duration::from_secs(2);
        let change = holder_change_within(&client, &ns, &a0.identity, window).await;
        assert_eq!(
            change,
            None,
            "a NotReady blip of {:?} moved the Lease",
            APP_GRACE / 3
        );

        // Crash-looping: not before the grace, soon after it.
        set_app(&pods, "app-0", App::CrashLoop).await;
        let window = APP_GRACE + Duration::from_secs(5);
        let (to, after) = holder_change_within(&client, &ns, &a0.identity, window)
            .await
            .unwrap_or_else(|| {
                panic!("the Lease stayed with app-0 for {window:?} after its app failed")
            });
        assert!(
            after >= APP_GRACE - Duration::from_millis(300),
            "handed over after {after:?}, before the grace of {APP_GRACE:?}"
        );
        assert!(
            to.is_empty() || to == a1.identity,
            "the Lease went to {to:?}"
        );
        app_lease_held_by(&client, &ns, &a1.identity).await;
        released_not_expired(&client, &ns, &ctl, &a0).await;
        let note = event_until(&client, &ns, "app", "AppNotReady", "handing over to app-1").await;
        assert!(
            note.contains("app-0") && note.contains("CrashLoopBackOff"),
            "{note}"
        );

        // The new leader fails too, and no follower's app is Ready: it
        // keeps the Lease and says so; app-0 Ready again takes it back.
        set_app(&pods, "app-1", App::CrashLoop).await;
        event_until(
            &client,
            &ns,
            "app",
            "AppNotReady",
            "no follower's app is Ready",
        )
        .await;
        app_lease_held_by(&client, &ns, &a1.identity).await;
        set_app(&pods, "app-0", App::Ready(unix_now())).await;
        app_lease_held_by(&client, &ns, &a0.identity).await;
        released_not_expired(&client, &ns, &ctl, &a1).await;
        event_until(&client, &ns, "app", "AppNotReady", "handing over to app-0").await;

        // Restarting fast, Ready at every look: a restart is a failure too.
        set_app(&pods, "app-1", App::Ready(unix_now())).await;
        let restarts = tokio::time::Instant::now();
        let first = unix_now() + 1;
        let mut moved = None;
        for k in 0..12 {
            set_app(&pods, "app-0", App::Ready(first + k)).await;
            moved = holder_change_within(&client, &ns, &a0.identity, Duration::from_secs(1)).await;
            if moved.is_some() {
                break;
            }
        }
        let after = restarts.elapsed();
        assert!(
            moved.is_some(),
            "app-0 restarted every second for {after:?} and kept the Lease"
        );
        assert!(
            after >= APP_GRACE,
            "handed over after {after:?}, before the grace"
        );
        app_lease_held_by(&client, &ns, &a1.identity).await;
        // The Event joins the first hand-off's series (same reason and
        // successor); the controller's log names the cause.
        let log = ctl.log_text();
        assert!(
            log.contains("(an app container restarted); handing over to app-1"),
            "{log}"
        );
        heartbeat.abort();
        let _ = Api::<Node>::all(client.clone())
            .delete(&node_name, &DeleteParams::default())
            .await;
    })
    .await;
}

/// The value of a `zen_lead_pool_*` series of one pool (and, for the
/// changes counter, one reason); `None` when the series is absent.
fn pool_series(body: &str, name: &str, ns: &str, pool: &str, reason: Option<&str>) -> Option<f64> {
    let mut labels = format!("namespace=\"{ns}\",pool=\"{pool}\"");
    if let Some(reason) = reason {
        labels.push_str(&format!(",reason=\"{reason}\""));
    }
    let prefix = format!("{name}{{{labels}}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The pool's recent transitions as (from, to, reason).
fn recent(p: &LeaderPolicy) -> Vec<(String, String, String)> {
    p.status
        .iter()
        .flat_map(|s| s.recent_transitions.iter())
        .map(|t| (t.from.clone(), t.to.clone(), t.reason.as_str().to_owned()))
        .collect()
}

/// Issue 32: a manual hand-off and a pod deletion each add an entry to
/// status.recentTransitions with its reason and take-over time, and count
/// in the pool's zen_lead_pool_leader_changes_total by reason; the pool's
/// has_leader and leader_since series follow, and go with the pool.
#[tokio::test]
async fn recent_transitions_and_pool_metrics_follow_a_handoff_and_a_pod_deletion() {
    let client = setup().await;
    with_namespace(&client, "ctl-history", |client, ns| async move {
        let dir = common::scratch_dir("controller-history");
        create_policy(&client, &ns, "db", json!({"leaseDurationSeconds": 30})).await;
        let mut pods = Vec::new();
        for i in 0..3 {
            let name = format!("db-{i}");
            create_pod(&client, &ns, &pool_pod(&name, Some("db"), "kwok-1", true)).await;
            pods.push(running_pod(&client, &ns, &name).await);
        }
        let labels = LeaderLabelWatch::start(&client, &ns);
        // Deleting the policy at the end must end the pool, not re-create it.
        let ctl = Controller::start(&dir, &ns, "ctl-a", &["--create-missing-policies=false"]);
        let mut agents: Vec<HostAgent> = vec![HostAgent::start(&dir, &pods[0], "db")];
        policy_until(&client, &ns, "db", "db-0 leads", LIMIT, |p| {
            (holder_name(p).as_deref() == Some("db-0"))
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        agents.push(HostAgent::start(&dir, &pods[1], "db"));
        agents.push(HostAgent::start(&dir, &pods[2], "db"));
        let scrape = || async { ctl.get("/metrics").await.1 };
        let series = |body: &str, name: &str, reason: Option<&str>| {
            pool_series(body, name, &ns, "db", reason)
        };
        common::eventually("has_leader 1 and leader_since set", LIMIT, || async {
            let body = scrape().await;
            let has = series(&body, "zen_lead_pool_has_leader", None);
            let since = series(&body, "zen_lead_pool_leader_since_seconds", None);
            (has == Some(1.0) && since.is_some_and(|s| s > 1.0e9))
                .then_some(())
                .ok_or(format!("has_leader {has:?}, since {since:?}"))
        })
        .await;
        let body = scrape().await;
        let manual = "zen_lead_pool_leader_changes_total";
        assert_eq!(
            series(&body, manual, Some("manual")),
            Some(0.0),
            "every reason's counter starts at zero"
        );
        let first = lease(&client, &ns, "db").await.expect("Lease db");
        assert!(
            policy_until(&client, &ns, "db", "a status", LIMIT, |_| Ok(()))
                .await
                .status
                .is_some_and(|s| s.recent_transitions.is_empty()),
            "the first election is not a change"
        );

        // A manual hand-off, as `zen-lead handoff --to db-1` asks for it.
        let patch = json!({"metadata": {
            "annotations": {zen_lead::api::keys::PREFERRED_HOLDER_ANNOTATION: agents[1].identity},
            "resourceVersion": first.resource_version(),
        }});
        Api::<Lease>::namespaced(client.clone(), &ns)
            .patch("db", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("name db-1 preferred");
        let p = policy_until(&client, &ns, "db", "a manual change to db-1", LIMIT, |p| {
            let r = recent(p);
            (r == [("db-0".to_owned(), "db-1".to_owned(), "manual".to_owned())])
                .then_some(())
                .ok_or(format!("{r:?}"))
        })
        .await;
        let entry = &p.status.clone().unwrap_or_default().recent_transitions[0];
        let handoff_ms = entry
            .takeover_millis
            .expect("a hand-off's take-over is known");
        assert!(entry.term.is_some(), "{entry:?}");
        common::eventually("the manual change counted", LIMIT, || async {
            let body = scrape().await;
            let n = series(&body, manual, Some("manual"));
            (n == Some(1.0)).then_some(()).ok_or(format!("{n:?}"))
        })
        .await;

        // The leader's pod and agent die together: the controller clears the
        // Lease (the pod is gone) and a follower takes over.
        agents[1].kill();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete("db-1", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete db-1");
        let p = policy_until(
            &client,
            &ns,
            "db",
            "a podDeleted change from db-1",
            LIMIT,
            |p| {
                let r = recent(p);
                (r.len() == 2 && r[1].0 == "db-1" && r[1].2 == "podDeleted")
                    .then_some(())
                    .ok_or(format!("{r:?}"))
            },
        )
        .await;
        let entry = &p.status.clone().unwrap_or_default().recent_transitions[1];
        eprintln!(
            "take-over: manual hand-off {handoff_ms} ms, pod deleted {:?} ms",
            entry.takeover_millis
        );
        let successor = entry.to.clone();
        policy_until(&client, &ns, "db", "the successor reported", LIMIT, |p| {
            (holder_name(p).as_deref() == Some(successor.as_str()))
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        common::eventually(
            "the pod deletion counted, a leader again",
            LIMIT,
            || async {
                let body = scrape().await;
                let n = series(&body, manual, Some("podDeleted"));
                let has = series(&body, "zen_lead_pool_has_leader", None);
                (n == Some(1.0) && has == Some(1.0))
                    .then_some(())
                    .ok_or(format!("podDeleted {n:?}, has_leader {has:?}"))
            },
        )
        .await;
        labels.assert_never_two();

        // `zen-lead status` shows the durable history.
        let out = Command::new(BIN)
            .env("KUBECONFIG", kubeconfig_path())
            .args(["status", "db", "-n", &ns])
            .output()
            .expect("zen-lead status");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("status.recentTransitions"), "{stdout}");
        assert!(
            stdout.contains("leader changed from db-0 to db-1 (manual, take-over"),
            "{stdout}"
        );
        assert!(stdout.contains("from db-1 to"), "{stdout}");

        // The pool goes: so do its series.
        Api::<LeaderPolicy>::namespaced(client.clone(), &ns)
            .delete("db", &DeleteParams::default())
            .await
            .expect("delete the policy");
        common::eventually("the pool's series gone", LIMIT, || async {
            let body = scrape().await;
            let left: Vec<&str> = body
                .lines()
                .filter(|l| {
                    l.starts_with("zen_lead_pool_") && l.contains(&format!("namespace=\"{ns}\""))
                })
                .collect();
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        })
        .await;
    })
    .await;
}

/// `zen-lead pause|resume` as a user runs them (the built binary).
fn pause_cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env("KUBECONFIG", kubeconfig_path())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("zen-lead {args:?}: {e}"))
}

/// The cell of `column` in `kubectl get lp NAME`'s row, as the API server
/// renders the CRD's printer columns (a Table).
async fn printed_column(client: &Client, ns: &str, name: &str, column: &str) -> String {
    let request = http::Request::get(format!(
        "/apis/coordination.kube-zen.io/v1alpha1/namespaces/{ns}/leaderpolicies/{name}"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap_or_else(|e| panic!("table request: {e}"));
    let table: serde_json::Value = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("get lp {name} as a table: {e}"));
    let index = table["columnDefinitions"]
        .as_array()
        .and_then(|cols| cols.iter().position(|c| c["name"] == column))
        .unwrap_or_else(|| panic!("no column {column}: {table}"));
    table["rows"][0]["cells"][index]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn condition_reason(p: &LeaderPolicy, type_: &str) -> Option<(String, String)> {
    condition(p, type_).map(|c| (c.reason.clone(), c.message.clone()))
}

/// Maintenance pause: `zen-lead pause` puts it in force (the Paused
/// condition, the PAUSED column, the Lease annotation), `zen-lead handoff`
/// refuses, and when the holder dies the pool waits, leaderless, and says
/// so (condition and Event) for twice the lease duration, which an unpaused
/// pool never does (the controller clears a deleted holder's Lease at once,
/// see holder_pod_deleted_fails_over_without_waiting_for_expiry, and expiry
/// comes after one lease duration). `zen-lead resume` elects the follower.
#[tokio::test]
async fn paused_pool_whose_holder_dies_waits_says_so_and_resume_elects() {
    let client = setup().await;
    with_namespace(&client, "ctl-pause", |client, ns| async move {
        let dir = common::scratch_dir("controller-pause");
        create_policy(&client, &ns, "db", fast()).await;
        let DbPool {
            pods: _,
            labels,
            _ctl,
            mut first,
            _second,
        } = db_pool_first_leads(&client, &ns, &dir).await;

        let out = pause_cli(&["pause", "db", "-n", &ns]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "zen-lead pause: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("keeps leading"), "{stdout}");
        let l = lease(&client, &ns, "db").await.expect("Lease db");
        assert_eq!(
            l.annotations().get(PAUSED_ANNOTATION).map(String::as_str),
            Some("true"),
            "pause returned before the Lease was marked"
        );
        policy_until(&client, &ns, "db", "Paused while db-0 leads", LIMIT, |p| {
            match condition_reason(p, "Paused") {
                Some((reason, message)) if reason == "Paused" && message.contains("db-0") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(printed_column(&client, &ns, "db", "Paused").await, "True");
        event_until(&client, &ns, "db", "Paused", "keeps leading").await;

        let out = pause_cli(&["handoff", "db", "-n", &ns, "--timeout", "5s"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a hand-off of a paused pool ran");
        assert!(
            stderr.contains("pool db is paused") && stderr.contains("zen-lead resume db"),
            "{stderr}"
        );

        // The holder dies with its pod; nobody releases the Lease.
        first.kill();
        let died = tokio::time::Instant::now();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete("db-0", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete db-0");
        let waiting = "the pool has no leader and will not elect one until resumed";
        policy_until(&client, &ns, "db", "paused without a leader", LIMIT, |p| {
            let paused = condition_reason(p, "Paused");
            let elected = condition_reason(p, "LeaderElected");
            match (&paused, &elected) {
                (Some((r1, m1)), Some((r2, _)))
                    if r1 == "PausedWithoutLeader"
                        && r2 == "PausedWithoutLeader"
                        && m1.contains(waiting)
                        && phase(p) == "Paused" =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "phase {}, Paused {paused:?}, LeaderElected {elected:?}",
                    phase(p)
                )),
            }
        })
        .await;
        event_until(&client, &ns, "db", "PausedWithoutLeader", waiting).await;
        let lease_duration = Duration::from_secs(5);
        while died.elapsed() < lease_duration * 2 {
            let l = lease(&client, &ns, "db").await.expect("Lease db");
            assert_eq!(
                lease_holder(&l).as_deref(),
                Some(first.identity.as_str()),
                "the paused pool's Lease changed hands {:?} after its holder died",
                died.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let out = pause_cli(&["resume", "db", "-n", &ns]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "zen-lead resume: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("resumed"), "{stdout}");
        policy_until(&client, &ns, "db", "db-1 leads, not paused", LIMIT, |p| {
            let paused = condition_reason(p, "Paused").map(|(r, _)| r);
            (holder_name(p).as_deref() == Some("db-1") && paused.as_deref() == Some("NotPaused"))
                .then_some(())
                .ok_or(format!("{:?}", p.status))
        })
        .await;
        assert_eq!(printed_column(&client, &ns, "db", "Paused").await, "False");
        event_until(&client, &ns, "db", "Resumed", "resumed").await;
        labels.assert_never_two();
    })
    .await;
}

/// Issue 32, preference: the standing cooldown of the preference tests'
/// policies (`spec.preferenceCooldownSeconds`), which is also how long a
/// better candidate must have been Ready.
const COOLDOWN: Duration = Duration::from_secs(5);

/// An `api` pool `app` for the preference tests: one pod per entry of
/// `nodes` (`app-0`, `app-1`...), each Ready with `priority` when given,
/// and the controller. `app-0`'s agent leads, then the others' join.
struct PreferencePool {
    ctl: Controller,
    agents: Vec<election_util::Agent>,
}

async fn preference_pool(
    client: &Client,
    ns: &str,
    dir: &Path,
    spec: serde_json::Value,
    pods_on: &[(&str, Option<&str>)],
) -> PreferencePool {
    let mut full = fast();
    full["activation"] = json!("api");
    full["preferenceCooldownSeconds"] = json!(COOLDOWN.as_secs());
    for (k, v) in spec.as_object().into_iter().flatten() {
        full[k] = v.clone();
    }
    create_policy(client, ns, "app", full).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut made = Vec::new();
    for (i, (node, priority)) in pods_on.iter().enumerate() {
        let name = format!("app-{i}");
        let mut pod = pool_pod(&name, Some("app"), node, true);
        let mut annotations =
            BTreeMap::from([("zen-lead.io/activation".to_owned(), "api".to_owned())]);
        if let Some(p) = priority {
            annotations.insert(PRIORITY_ANNOTATION.to_owned(), (*p).to_owned());
        }
        pod.metadata.annotations = Some(annotations);
        made.push(create_pod(client, ns, &pod).await);
        set_app(&api, &name, App::Ready(unix_now())).await;
    }
    let ctl = Controller::start(dir, ns, "ctl-a", &[]);
    let mut agents = vec![ready_agent(dir, ns, &made[0]).await];
    app_lease_held_by(client, ns, &agents[0].identity).await;
    for pod in &made[1..] {
        agents.push(ready_agent(dir, ns, pod).await);
    }
    PreferencePool { ctl, agents }
}

/// Sets (or, with `None`, removes) a pod's `zen-lead/priority`.
async fn set_priority(client: &Client, ns: &str, pod: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"annotations": {PRIORITY_ANNOTATION: value}}});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch(pod, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("priority of {pod}: {e}"));
}

/// A node without kubelet (see [`node_without_kubelet`]) in `zone`.
async fn zoned_node(client: &Client, name: &str, zone: &str) -> tokio::task::JoinHandle<()> {
    let beat = node_without_kubelet(client, name).await;
    let patch = json!({"metadata": {"labels": {ZONE_LABEL: zone}}});
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("zone of node {name}: {e}"));
    beat
}

async fn delete_nodes(client: &Client, beats: Vec<(String, tokio::task::JoinHandle<()>)>) {
    for (name, beat) in beats {
        beat.abort();
        let _ = Api::<Node>::all(client.clone())
            .delete(&name, &DeleteParams::default())
            .await;
    }
}

/// Waits until `status.recentTransitions` holds `count` entries, the last
/// one to `to`; returns them as (from, to, reason).
async fn transitions_until(
    client: &Client,
    ns: &str,
    count: usize,
    to: &str,
) -> Vec<(String, String, String)> {
    let limit = LIMIT + COOLDOWN * 2;
    let p = policy_until(
        client,
        ns,
        "app",
        &format!("{count} transitions, to {to}"),
        limit,
        |p| {
            let r = recent(p);
            (r.len() == count && r.last().is_some_and(|t| t.1 == to))
                .then_some(())
                .ok_or(format!("{r:?}"))
        },
    )
    .await;
    recent(&p)
}

/// Issue 32: the standing preference moves leadership once, through the
/// holder's own release (never an expiry), to the better-ranked Ready
/// candidate: first by zone (`preferredZones`, read from the node's
/// `topology.kubernetes.io/zone`), then by `zen-lead/priority`, which
/// ranks before the zone. Each move is one holder change recorded with
/// reason `preference`, and no move follows while the ranks stay (two
/// cooldowns watched). A priority that is not an integer counts as 0 and
/// a Warning Event on the pod names the annotation and the value.
#[tokio::test]
async fn preference_moves_leadership_once_by_zone_then_by_priority() {
    let client = setup().await;
    with_namespace(&client, "ctl-pref", |client, ns| async move {
        let dir = common::scratch_dir("controller-preference");
        let (node_a, node_b) = (format!("{ns}-a"), format!("{ns}-b"));
        let beats = vec![
            (
                node_a.clone(),
                zoned_node(&client, &node_a, &format!("{ns}-za")).await,
            ),
            (
                node_b.clone(),
                zoned_node(&client, &node_b, &format!("{ns}-zb")).await,
            ),
        ];
        let spec = json!({"preferredZones": [format!("{ns}-zb"), format!("{ns}-za")]});
        let pool = preference_pool(
            &client,
            &ns,
            &dir,
            spec,
            &[(&node_a, None), (&node_b, None)],
        )
        .await;
        let (a0, a1) = (&pool.agents[0], &pool.agents[1]);

        // app-1's node is in the first preferred zone: it takes the lead
        // once it has been Ready for a cooldown.
        app_lease_held_by(&client, &ns, &a1.identity).await;
        let moves = transitions_until(&client, &ns, 1, "app-1").await;
        assert_eq!(
            moves,
            [("app-0".into(), "app-1".into(), "preference".into())]
        );
        released_not_expired(&client, &ns, &pool.ctl, a0).await;
        event_until(
            &client,
            &ns,
            "app",
            "PreferenceHandOff",
            "app-1 ranks above leader app-0",
        )
        .await;

        // A priority ranks before the zone.
        set_priority(&client, &ns, "app-0", Some("10")).await;
        app_lease_held_by(&client, &ns, &a0.identity).await;
        let moves = transitions_until(&client, &ns, 2, "app-0").await;
        assert_eq!(
            moves[1],
            ("app-1".into(), "app-0".into(), "preference".into())
        );
        released_not_expired(&client, &ns, &pool.ctl, a1).await;

        // An invalid priority is told on the pod, and counts as 0.
        set_priority(&client, &ns, "app-1", Some("high")).await;
        let told = common::eventually("InvalidPriority on app-1", LIMIT, || async {
            let events = pod_events(&client, &ns, "app-1").await;
            events
                .into_iter()
                .find(|(reason, _)| reason == "InvalidPriority")
                .map(|(_, note)| note)
                .ok_or("no InvalidPriority event".to_owned())
        })
        .await;
        assert!(
            told.contains(PRIORITY_ANNOTATION) && told.contains("\"high\""),
            "{told}"
        );

        // Ranks stay: leadership stays, for two cooldowns.
        let change = holder_change_within(&client, &ns, &a0.identity, COOLDOWN * 2).await;
        assert_eq!(change, None, "leadership moved without a better candidate");
        let p = policy_until(&client, &ns, "app", "two transitions", LIMIT, |_| Ok(())).await;
        assert_eq!(recent(&p).len(), 2, "{:?}", recent(&p));
        delete_nodes(&client, beats).await;
    })
    .await;
}

/// Issue 32, the flapping case: a pod whose priority flips between above
/// and below the leader's every second, for three cooldowns, moves
/// leadership at least once and never twice within one cooldown; every
/// move is a hand-off recorded with reason `preference`. Two pods of equal
/// priority then never swap.
#[tokio::test]
async fn a_flapping_priority_moves_leadership_at_most_once_per_cooldown() {
    let client = setup().await;
    with_namespace(&client, "ctl-flap", |client, ns| async move {
        let dir = common::scratch_dir("controller-flapping");
        let node = format!("{ns}-n");
        let beat = node_without_kubelet(&client, &node).await;
        let pool = preference_pool(
            &client,
            &ns,
            &dir,
            json!({}),
            &[(&node, Some("5")), (&node, Some("0"))],
        )
        .await;
        let ids: Vec<String> = pool.agents.iter().map(|a| a.identity.clone()).collect();

        // Flip app-1 between 10 and 0 every second; note each change of
        // holder the Lease shows, polled every 50 ms.
        let flipping = {
            let (client, ns) = (client.clone(), ns.clone());
            tokio::spawn(async move {
                for k in 0.. {
                    let value = if k % 2 == 0 { "10" } else { "0" };
                    set_priority(&client, &ns, "app-1", Some(value)).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let started = tokio::time::Instant::now();
        let mut holder = ids[0].clone();
        let mut changes = Vec::new();
        while started.elapsed() < COOLDOWN * 3 + Duration::from_secs(2) {
            let now = lease(&client, &ns, "app")
                .await
                .as_ref()
                .and_then(lease_holder);
            if let Some(now) = now.filter(|h| *h != holder) {
                changes.push((started.elapsed(), now.clone()));
                holder = now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        flipping.abort();
        eprintln!("holder changes while flapping: {changes:?}");
        assert!(
            !changes.is_empty(),
            "a better-ranked pod never got the lead"
        );
        for pair in changes.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= COOLDOWN - Duration::from_millis(500),
                "two moves within a cooldown of {COOLDOWN:?}: {changes:?}"
            );
        }
        let p = policy_until(&client, &ns, "app", "the moves recorded", LIMIT, |p| {
            let r = recent(p);
            (r.len() == changes.len())
                .then_some(())
                .ok_or(format!("{r:?} vs {changes:?}"))
        })
        .await;
        assert!(
            recent(&p).iter().all(|t| t.2 == "preference"),
            "{:?}",
            recent(&p)
        );
        for agent in &pool.agents {
            assert!(
                !agent
                    .entries()
                    .iter()
                    .any(|e| e.event == "stopped" && e.reason.as_deref() != Some("released")),
                "{} stopped other than by a release: {:?}",
                agent.name,
                agent.entries()
            );
        }

        // Equal priorities: whoever leads keeps it.
        set_priority(&client, &ns, "app-0", Some("10")).await;
        set_priority(&client, &ns, "app-1", Some("10")).await;
        let leader = lease(&client, &ns, "app")
            .await
            .as_ref()
            .and_then(lease_holder);
        let leader = leader.expect("a holder");
        let change = holder_change_within(&client, &ns, &leader, COOLDOWN * 2).await;
        assert_eq!(change, None, "two pods of equal priority swapped");
        beat.abort();
        let _ = Api::<Node>::all(client.clone())
            .delete(&node, &DeleteParams::default())
            .await;
    })
    .await;
}
