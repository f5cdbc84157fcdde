//! Server-side fencing on the local cluster (the chart's
//! ValidatingAdmissionPolicy, rendered from `charts/zen-lead`): the real API
//! server refuses a write made with a pool pod's own token unless that pod
//! holds its pool's Lease.
//!
//! The pool: three Pod objects (kept Pending, so nothing runs in them) with
//! the labels and the agent container the webhook leaves, a LeaderPolicy, and
//! `zen-lead controller` on the host, which lists the pods on the Lease. For
//! each pod a `zen-lead agent --activation api` runs on the host as that pod:
//! its pod name and UID, and tokens bound to the pod (TokenRequest with a
//! Pod `boundObjectRef`, as the kubelet mounts them), so the API server sees
//! exactly the user info it would see from the pod.
//!
//! The policy (`common/fencing.rs`) is cluster-wide, so the tests of this
//! file take turns ([`POLICY`]) and remove it when they end.

mod common;
#[path = "common/gate.rs"]
mod fixture;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use zen_lead::api::LeaderPolicy;
use zen_lead::api::keys::{FENCED_LABEL, FENCED_PODS_ANNOTATION};
use zen_lead::controller::decide::fencing_scope::{
    NAMESPACE_NAME_LABEL, NO_NAMESPACE, Scope, scope_of,
};

use common::fencing::{POLICY_NAME, install, rendered};
use common::{
    apply_crd, client, eventually, kubeconfig_path, outcome, with_namespace, zen_lead_host,
};
use fixture::{AgentOpts, GateAgent, Tokens};

const POOL: &str = "web";
const LIMIT: Duration = Duration::from_secs(60);
/// One test at a time installs and removes the cluster-wide policy.
static POLICY: Mutex<()> = Mutex::const_new(());

fn scratch(test: &str) -> PathBuf {
    common::scratch_dir(&format!("fencing-{test}"))
}

/// A pool pod as the webhook leaves it (label, annotations, the agent
/// container), kept Pending by a node selector nothing matches.
fn pool_pod(name: &str, pool: Option<&str>) -> Pod {
    let mut labels = json!({});
    let mut annotations = json!({});
    if let Some(pool) = pool {
        labels = json!({"zen-lead/pool": pool});
        annotations = json!({"zen-lead.io/injected": "test", "zen-lead.io/activation": "api"});
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "serviceAccountName": "app",
            "nodeSelector": {"zen-lead.io/test-nowhere": "true"},
            "initContainers": [{"name": zen_lead::contract::AGENT_CONTAINER,
                "image": "localhost/none:0", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "localhost/none:0"}],
        },
    }))
    .expect("pod")
}

async fn create_pod(client: &Client, ns: &str, name: &str, pool: Option<&str>) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = pods
        .create(&PostParams::default(), &pool_pod(name, pool))
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    pod.uid().unwrap_or_default()
}

async fn create_policy(client: &Client, ns: &str, fencing: Option<bool>) {
    let mut spec = json!({"activation": "api", "leaseDurationSeconds": 6});
    if let Some(on) = fencing {
        spec["serverSideFencing"] = json!(on);
    }
    let lp: LeaderPolicy = serde_json::from_value(json!({
        "apiVersion": "coordination.kube-zen.io/v1alpha1",
        "kind": "LeaderPolicy",
        "metadata": {"name": POOL},
        "spec": spec,
    }))
    .expect("policy");
    Api::<LeaderPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &lp)
        .await
        .unwrap_or_else(|e| panic!("create LeaderPolicy: {e}"));
}

/// One member of the pool: its Pod object and the host agent standing for it.
struct Member {
    name: String,
    uid: String,
    /// The pod's own token (ServiceAccount `app`, bound to the pod).
    token: String,
    agent: GateAgent,
}

/// The pool: `n` pods, the controller, and an agent per pod.
struct Pool {
    members: Vec<Member>,
    /// The test's scratch directory (kubeconfigs of direct clients go here).
    dir: PathBuf,
    _controller: zen_lead_host::Controller,
}

async fn pool(client: &Client, ns: &str, test: &str, n: usize, fencing: Option<bool>) -> Pool {
    // ServiceAccounts and RBAC (the `app` account may write ConfigMaps,
    // Events and Leases).
    let _ = fixture::accounts(client, ns).await;
    create_policy(client, ns, fencing).await;
    let dir = scratch(test);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let controller = zen_lead_host::start_controller(ns, &dir).await;
    let cluster = fixture::cluster(&kubeconfig_path());
    let mut members = Vec::new();
    for i in 0..n {
        let name = format!("{POOL}-{i}");
        let uid = create_pod(client, ns, &name, Some(POOL)).await;
        let token = fixture::issue_pod_token(client, ns, "app", &name, &uid).await;
        let tokens = Tokens {
            app: token.clone(),
            agent: token.clone(),
        };
        let mut agent = GateAgent::start(AgentOpts {
            ns,
            pool: POOL,
            dir: dir.join(&name),
            cluster: &cluster,
            tokens: &tokens,
            upstream: None,
            extra: vec![],
            pod: Some((&name, &uid)),
        });
        agent.wait_serving(LIMIT).await;
        members.push(Member {
            name,
            uid,
            token,
            agent,
        });
    }
    Pool {
        members,
        dir,
        _controller: controller,
    }
}

impl Pool {
    /// Waits until a member other than `old` says it leads; its index.
    async fn successor(&self, old: usize, what: &str) -> usize {
        eventually(what, LIMIT, || async {
            for (i, m) in self.members.iter().enumerate() {
                if i != old && m.agent.leading().await == Ok(true) {
                    return Ok(i);
                }
            }
            Err("nobody else leads yet".to_owned())
        })
        .await
    }

    /// Waits until the Lease names one of the members and its agent says it
    /// leads; returns its index.
    async fn leader(&self, client: &Client, ns: &str) -> usize {
        let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
        eventually("a leader among the pool's agents", LIMIT, || async {
            let lease = leases.get(POOL).await.map_err(|e| e.to_string())?;
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            let i = self
                .members
                .iter()
                .position(|m| m.agent.identity == holder)
                .ok_or_else(|| format!("holder {holder:?}"))?;
            match self.members[i].agent.leading().await {
                Ok(true) => Ok(i),
                other => Err(format!("{holder} holds; its agent says {other:?}")),
            }
        })
        .await
    }
}

/// A client that talks to the API server directly with `token` (what an
/// app that bypasses the gate, or a thawed process, would send).
async fn direct(token: &str, dir: &std::path::Path) -> Client {
    let cluster = fixture::cluster(&kubeconfig_path());
    std::fs::create_dir_all(dir).expect("dir");
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("direct-{n}.kubeconfig"));
    fixture::write_kubeconfig(&path, &cluster.server, &cluster.ca_pem, token, None);
    fixture::client_from(&path, false).await
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).expect("cm")
}

/// Creates a ConfigMap; `Err(message)` when the API server refused it.
async fn write(client: &Client, ns: &str, name: &str) -> Result<(), (u16, String)> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    outcome(cms.create(&PostParams::default(), &cm(name)).await)
}

fn assert_fenced(result: Result<(), (u16, String)>, pod: &str, holder: &str, what: &str) {
    let (code, message) = match result {
        Ok(()) => panic!("{what}: the API server admitted the write"),
        Err(refusal) => refusal,
    };
    assert_eq!(code, 403, "{what}: {message}");
    for part in ["zen-lead fencing", pod, POOL, holder] {
        assert!(
            message.contains(part),
            "{what}: the refusal should name {part:?}: {message}"
        );
    }
}

/// Waits until the controller lists every member on the Lease and the
/// policy says the pool is fenced.
async fn wait_fenced(client: &Client, ns: &str, pool: &Pool) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let mut uids: Vec<&str> = pool.members.iter().map(|m| m.uid.as_str()).collect();
    uids.sort_unstable();
    let want = uids.join(",");
    eventually("the Lease listing the pool's pods", LIMIT, || async {
        let lease = leases.get(POOL).await.map_err(|e| e.to_string())?;
        let label = lease.labels().get(FENCED_LABEL).cloned();
        let pods = lease.annotations().get(FENCED_PODS_ANNOTATION).cloned();
        (label.as_deref() == Some("true") && pods.as_deref() == Some(want.as_str()))
            .then_some(())
            .ok_or_else(|| format!("label {label:?}, pods {pods:?}"))
    })
    .await;
    condition(client, ns, "True", "Fenced").await;
}

async fn condition(client: &Client, ns: &str, status: &str, reason: &str) {
    common::fencing::wait_condition(client, ns, POOL, status, Some(reason)).await;
}

#[tokio::test]
async fn the_api_server_refuses_a_followers_own_writes_and_admits_the_leaders() {
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "refuses", 3, None).await;
        wait_fenced(&client, &ns, &pool).await;
        let l = pool.leader(&client, &ns).await;
        let leader = &pool.members[l];
        let f = (l + 1) % pool.members.len();
        let follower = &pool.members[f];
        let dir = pool.dir.clone();

        // The leader writes, through its gate and with its token directly.
        let through_gate = leader.agent.app_client(false).await;
        write(&through_gate, &ns, "by-leader-gate")
            .await
            .unwrap_or_else(|e| panic!("the leader's write through its gate: {e:?}"));
        write(&direct(&leader.token, &dir).await, &ns, "by-leader-direct")
            .await
            .unwrap_or_else(|e| panic!("the leader's direct write: {e:?}"));

        // A follower that bypasses its gate: refused by the API server, once
        // its cache of the Lease shows the membership the controller wrote
        // (how long that took is printed: it is the fence's blind window for
        // a new pod).
        let follower_direct = direct(&follower.token, &dir).await;
        let listed = Instant::now();
        let mut attempt = 0;
        let refusal = eventually("the follower's direct write refused", LIMIT, || {
            attempt += 1;
            let (c, ns) = (&follower_direct, &ns);
            async move {
                match write(c, ns, &format!("by-follower-{attempt}")).await {
                    Ok(()) => Err("admitted: the API server's cache lags".to_owned()),
                    Err(refusal) => Ok(refusal),
                }
            }
        })
        .await;
        eprintln!(
            "membership seen by the fence {:.0} ms after the Lease listed the pods ({attempt} \
             attempts)",
            listed.elapsed().as_secs_f64() * 1e3
        );
        assert_fenced(
            Err(refusal),
            &follower.name,
            &leader.agent.identity,
            "a follower's direct write",
        );
        // Its Events pass, as through the gate.
        let events: Api<Event> = Api::namespaced(follower_direct.clone(), &ns);
        let event: Event = serde_json::from_value(json!({
            "metadata": {"generateName": "follower-"},
            "involvedObject": {"kind": "Pod", "name": follower.name, "namespace": ns},
            "reason": "Test", "message": "an event from a follower", "type": "Normal",
        }))
        .expect("event");
        events
            .create(&PostParams::default(), &event)
            .await
            .unwrap_or_else(|e| panic!("a follower's Event is exempt: {e}"));

        // The follower's identity by impersonation: refused too.
        let impersonated = impersonate(&client, &ns, &follower.name, &follower.uid).await;
        assert_fenced(
            impersonated,
            &follower.name,
            &leader.agent.identity,
            "a write impersonating the follower",
        );

        // A pod outside any pool, same ServiceAccount: not fenced.
        let other_uid = create_pod(&client, &ns, "outside", None).await;
        let other = fixture::issue_pod_token(&client, &ns, "app", "outside", &other_uid).await;
        write(&direct(&other, &dir).await, &ns, "by-outsider")
            .await
            .unwrap_or_else(|e| panic!("a pod outside the pool: {e:?}"));

        // The follower's election writes (its Lease) were admitted all along:
        // it still follows, and the leader still renews.
        assert_eq!(follower.agent.leading().await, Ok(false));
        assert_eq!(leader.agent.leading().await, Ok(true));
    })
    .await;
}

/// POST a ConfigMap as the pool's ServiceAccount with the follower pod's
/// extra user info (`Impersonate-Extra-…`), as the cluster admin.
async fn impersonate(client: &Client, ns: &str, pod: &str, uid: &str) -> Result<(), (u16, String)> {
    let body = serde_json::to_vec(&cm("by-impersonation")).expect("body");
    let request = http::Request::post(format!("/api/v1/namespaces/{ns}/configmaps"))
        .header("Content-Type", "application/json")
        .header(
            "Impersonate-User",
            format!("system:serviceaccount:{ns}:app"),
        )
        .header("Impersonate-Group", "system:serviceaccounts")
        .header(
            "Impersonate-Extra-authentication.kubernetes.io%2fpod-name",
            pod,
        )
        .header(
            "Impersonate-Extra-authentication.kubernetes.io%2fpod-uid",
            uid,
        )
        .body(body)
        .expect("request");
    outcome(client.request::<Value>(request).await)
}

/// Hand-overs (the leader's agent stops with SIGTERM, releasing the Lease,
/// and comes back): the new leader's first write through its gate is never
/// refused, whatever the API server's cache shows at that moment, and the
/// old leader's token is refused once the successor has written.
#[tokio::test]
async fn over_twenty_hand_overs_no_leader_write_is_refused_and_no_stale_write_lands() {
    const HAND_OVERS: usize = 20;
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let mut pool = pool(&client, &ns, "handovers", 3, None).await;
        wait_fenced(&client, &ns, &pool).await;
        let dir = pool.dir.clone();
        let mut stale_admitted = 0;
        let mut first_write_ms = Vec::new();
        // SIGTERM to the new leader's held write admitted.
        let mut held_ms = Vec::new();
        for round in 0..HAND_OVERS {
            let old = pool.leader(&client, &ns).await;
            // Each follower's app has a write waiting in its gate (held,
            // `--gate-hold`): the successor's goes upstream the moment it
            // leads, before the API server's cache may show it as holder;
            // that is the refusal the gate retries.
            let mut held = Vec::new();
            for (i, m) in pool.members.iter().enumerate().filter(|(i, _)| *i != old) {
                let app = m.agent.app_client(false).await;
                let (ns, name) = (ns.clone(), format!("held-{round}-{i}"));
                held.push((
                    i,
                    tokio::spawn(async move { (write(&app, &ns, &name).await, Instant::now()) }),
                ));
            }
            for (i, _) in &held {
                let agent = &pool.members[*i].agent;
                eventually("the follower's write held in its gate", LIMIT, || async {
                    agent
                        .metrics()
                        .await
                        .lines()
                        .any(|l| l == "zen_lead_gate_writes_waiting 1")
                        .then_some(())
                        .ok_or_else(|| "not held yet".to_owned())
                })
                .await;
            }
            pool.members[old].agent.signal("-TERM");
            let started = Instant::now();
            let new = pool.successor(old, "a successor").await;
            for (i, task) in held {
                let (result, done) = task.await.expect("held write task");
                if i == new {
                    result.unwrap_or_else(|e| {
                        panic!("round {round}: the new leader's held write was refused: {e:?}")
                    });
                    held_ms.push(done.duration_since(started).as_secs_f64() * 1e3);
                }
            }
            // The successor's next write, through its gate, at once.
            let app = pool.members[new].agent.app_client(false).await;
            write(&app, &ns, &format!("round-{round}"))
                .await
                .unwrap_or_else(|e| panic!("round {round}: the new leader's write: {e:?}"));
            first_write_ms.push(started.elapsed().as_secs_f64() * 1e3);
            // The old leader's token, after the successor wrote: refused.
            let stale = write(
                &direct(&pool.members[old].token, &dir).await,
                &ns,
                &format!("stale-{round}"),
            )
            .await;
            if stale.is_ok() {
                stale_admitted += 1;
            }
            // Back as a candidate for later rounds.
            pool.members[old].agent.restart();
            pool.members[old].agent.wait_serving(LIMIT).await;
        }
        let mut retried = 0.0;
        let mut refusals = String::new();
        for m in &pool.members {
            let metrics = m.agent.metrics().await;
            retried += common::metric_sum(
                &metrics,
                "zen_lead_gate_fence_refusals_total{outcome=\"retried\"}",
            );
            for line in metrics.lines() {
                if line.starts_with("zen_lead_gate_fence_refusals_total") {
                    refusals.push_str(&format!("{} {line}\n", m.name));
                }
            }
        }
        first_write_ms.sort_by(f64::total_cmp);
        held_ms.sort_by(f64::total_cmp);
        eprintln!(
            "{HAND_OVERS} hand-overs: every new leader's held write admitted, SIGTERM to admitted \
             p50 {:.0} ms, max {:.0} ms (its next write: p50 {:.0} ms); stale writes admitted: \
             {stale_admitted}; fencing refusals the gates retried (counters since each agent's last \
             start): {retried}\n{refusals}",
            held_ms[held_ms.len() / 2],
            held_ms[held_ms.len() - 1],
            first_write_ms[first_write_ms.len() / 2],
        );
        assert_eq!(
            stale_admitted, 0,
            "writes with a deposed leader's token landed"
        );
    })
    .await;
}

/// Fencing refusals this agent's gate sent again since it started.
async fn retried(agent: &GateAgent) -> f64 {
    common::metric_sum(
        &agent.metrics().await,
        "zen_lead_gate_fence_refusals_total{outcome=\"retried\"}",
    )
}

/// The refusal the gate retries, forced: a second fenced Lease (a decoy the
/// test writes) lists the leader's pod and names another holder, which is
/// what the policy sees when its cache still shows the previous holder. The
/// leader's write through its gate is refused while the decoy stands; the
/// gate, whose own pod leads, sends it again until the decoy is gone, and
/// the app sees one successful write.
#[tokio::test]
async fn a_refusal_while_the_pod_leads_is_retried_and_the_app_never_sees_it() {
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "retry", 2, None).await;
        wait_fenced(&client, &ns, &pool).await;
        let leader = &pool.members[pool.leader(&client, &ns).await];
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let decoy: Lease = serde_json::from_value(json!({
            "metadata": {"name": "decoy", "labels": {FENCED_LABEL: "true"},
                         "annotations": {FENCED_PODS_ANNOTATION: leader.uid,
                                         zen_lead::api::keys::HOLDER_INSTANCE_ANNOTATION: "someone-else/0"}},
            "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 60},
        }))
        .expect("lease");
        leases
            .create(&PostParams::default(), &decoy)
            .await
            .unwrap_or_else(|e| panic!("create the decoy Lease: {e}"));
        // The decoy is in the policy's cache once the leader's own direct
        // writes are refused.
        let direct_client = direct(&leader.token, &pool.dir).await;
        let mut n = 0;
        eventually("the leader's direct write refused by the decoy", LIMIT, || {
            n += 1;
            let (c, ns) = (&direct_client, &ns);
            async move {
                match write(c, ns, &format!("direct-{n}")).await {
                    Ok(()) => Err("admitted: the decoy is not in the cache yet".to_owned()),
                    Err((403, m)) if m.contains("someone-else") => Ok(()),
                    Err(other) => Err(format!("refused otherwise: {other:?}")),
                }
            }
        })
        .await;
        let before = retried(&leader.agent).await;
        let app = leader.agent.app_client(false).await;
        let app_ns = ns.clone();
        let write_task =
            tokio::spawn(async move { write(&app, &app_ns, "through-the-gate").await });
        eventually("the gate retrying the refused write", LIMIT, || async {
            let now = retried(&leader.agent).await;
            (now > before).then_some(()).ok_or(format!("retried {now}"))
        })
        .await;
        leases
            .delete("decoy", &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete the decoy Lease: {e}"));
        write_task
            .await
            .expect("write task")
            .unwrap_or_else(|e| panic!("the app saw the refusal the gate should retry: {e:?}"));
        let metrics = leader.agent.metrics().await;
        let passed = common::metric_sum(
            &metrics,
            "zen_lead_gate_fence_refusals_total{outcome=\"passed\"}",
        );
        let returned = common::metric_sum(
            &metrics,
            "zen_lead_gate_fence_refusals_total{outcome=\"returned\"}",
        );
        eprintln!(
            "forced refusal: retried {} time(s), then admitted (passed {passed}, returned {returned})",
            retried(&leader.agent).await - before
        );
        assert!(passed >= 1.0, "no retry was admitted:\n{metrics}");
        assert_eq!(returned, 0.0, "a refusal reached the app:\n{metrics}");
    })
    .await;
}

/// A whole leader frozen past its lease (SIGSTOP), a successor takes over,
/// then the old one thaws: what it sends afterwards is refused.
#[tokio::test]
async fn a_leader_frozen_past_its_lease_cannot_write_after_the_thaw() {
    const ROUNDS: usize = 3;
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "freeze", 3, None).await;
        wait_fenced(&client, &ns, &pool).await;
        let dir = pool.dir.clone();
        let mut admitted = 0;
        for round in 0..ROUNDS {
            let old = pool.leader(&client, &ns).await;
            let frozen = &pool.members[old];
            // The app's connection and credentials are ready before the
            // freeze, as in a paused process.
            let stale_direct = direct(&frozen.token, &dir).await;
            let stale_gate = frozen.agent.app_client(false).await;
            frozen.agent.signal("-STOP");
            let new = pool
                .successor(old, "a successor while the leader is frozen")
                .await;
            let successor = pool.members[new].agent.app_client(false).await;
            write(&successor, &ns, &format!("successor-{round}"))
                .await
                .unwrap_or_else(|e| panic!("round {round}: the successor's write: {e:?}"));
            frozen.agent.signal("-CONT");
            for (how, c) in [("direct", &stale_direct), ("gate", &stale_gate)] {
                if write(c, &ns, &format!("thawed-{how}-{round}"))
                    .await
                    .is_ok()
                {
                    admitted += 1;
                }
            }
            assert_fenced(
                write(&stale_direct, &ns, &format!("thawed-check-{round}")).await,
                &frozen.name,
                &pool.members[new].agent.identity,
                "the thawed leader's direct write",
            );
            frozen.agent.wait_leading(false, LIMIT).await;
        }
        assert_eq!(admitted, 0, "writes of a thawed, deposed leader landed");
    })
    .await;
}

/// Gives the pool's ServiceAccount (`app`) `delete` and `deletecollection`
/// on Leases too, as an app's own leader election might have: RBAC then
/// lets its pods delete the pool's Lease, and only the policy stands in the
/// way.
async fn grant_lease_deletes(client: &Client, ns: &str) {
    let pp = PostParams::default();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "app-lease-deletes"},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "verbs": ["delete", "deletecollection"]}],
    }))
    .expect("role");
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&pp, &role)
        .await
        .unwrap_or_else(|e| panic!("create Role app-lease-deletes: {e}"));
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "app-lease-deletes"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "app-lease-deletes"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}],
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&pp, &binding)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding app-lease-deletes: {e}"));
}

/// Merge-patches the pool's Lease with `client`.
async fn patch_lease(client: &Client, ns: &str, patch: Value) -> Result<(), (u16, String)> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    outcome(
        leases
            .patch(POOL, &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    )
}

/// What is wrong with `result` for a write to the pool's Lease that zen-lead
/// fencing must refuse: `None` when it was refused with 403 and a message
/// naming zen-lead fencing, the pod, the pool and `part`.
fn not_refused(
    what: &str,
    result: Result<(), (u16, String)>,
    pod: &str,
    part: &str,
) -> Option<String> {
    let (code, message) = match result {
        Ok(()) => return Some(format!("{what}: admitted")),
        Err(refusal) => refusal,
    };
    if code != 403 {
        return Some(format!("{what}: {code} {message}"));
    }
    ["zen-lead fencing", pod, POOL, part]
        .into_iter()
        .find(|p| !message.contains(p))
        .map(|p| format!("{what}: the refusal does not name {p:?}: {message}"))
}

/// Issue 30, finding 1: a pool pod's own writes to its pool's Lease pass
/// only as its agent makes them. Each write below, made with a real pod
/// token (TokenRequest bound to the Pod), is refused by the API server with
/// a message naming zen-lead fencing and what was refused; before, every
/// one was admitted (the create got 409 from storage instead), and the
/// first two unfenced the follower. The agents' own election writes (the
/// leader's renewals throughout) still pass.
#[tokio::test]
async fn a_member_may_change_only_the_holder_of_its_pools_lease() {
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "lease-rules", 3, None).await;
        grant_lease_deletes(&client, &ns).await;
        wait_fenced(&client, &ns, &pool).await;
        let l = pool.leader(&client, &ns).await;
        let leader = &pool.members[l];
        let follower = &pool.members[(l + 1) % 3];
        let third = &pool.members[(l + 2) % 3];
        let as_follower = direct(&follower.token, &pool.dir).await;
        let as_leader = direct(&leader.token, &pool.dir).await;
        // The policy's cache lists the follower once its own writes are
        // refused.
        let mut n = 0;
        eventually("the follower's direct write refused", LIMIT, || {
            n += 1;
            let (c, ns) = (&as_follower, &ns);
            async move {
                match write(c, ns, &format!("probe-{n}")).await {
                    Ok(()) => Err("admitted: the API server's cache lags".to_owned()),
                    Err(_) => Ok(()),
                }
            }
        })
        .await;
        let admin: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let before = admin.get(POOL).await.expect("the pool's Lease");
        let members = before
            .annotations()
            .get(FENCED_PODS_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let without = |uid: &str| {
            members
                .split(',')
                .filter(|u| *u != uid)
                .collect::<Vec<_>>()
                .join(",")
        };
        let transitions = before
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        let me = &follower.agent.identity;
        let instance = zen_lead::api::keys::HOLDER_INSTANCE_ANNOTATION;
        let f = follower.name.as_str();
        let mut problems = Vec::new();
        for (what, patch, part) in [
            (
                "a follower removes its UID from fenced-pods",
                json!({"metadata": {"annotations": {FENCED_PODS_ANNOTATION: without(&follower.uid)}}}),
                "annotation zen-lead.io/fenced-pods",
            ),
            (
                "a follower removes the fenced label",
                json!({"metadata": {"labels": {FENCED_LABEL: null}}}),
                "labels",
            ),
            (
                "a follower drops the Lease's owner",
                json!({"metadata": {"ownerReferences": null}}),
                "ownerReferences",
            ),
            (
                "a follower changes the renew deadline",
                json!({"metadata": {"annotations": {zen_lead::api::keys::RENEW_DEADLINE_ANNOTATION: "3600"}}}),
                "annotation zen-lead.io/renew-deadline-seconds",
            ),
            (
                "a follower names a preferred holder",
                json!({"metadata": {"annotations": {zen_lead::api::keys::PREFERRED_HOLDER_ANNOTATION: me}}}),
                "annotation zen-lead.io/preferred-holder",
            ),
            (
                "a follower lengthens the lease",
                json!({"spec": {"leaseDurationSeconds": 3600}}),
                "spec.leaseDurationSeconds",
            ),
            (
                "a follower names its own UID under another identity than the holder's",
                json!({"metadata": {"annotations": {instance: format!("intruder/{}", follower.uid)}}}),
                "zen-lead.io/holder-instance",
            ),
            (
                "a follower names another pod's UID",
                json!({"spec": {"holderIdentity": me},
                       "metadata": {"annotations": {instance: format!("{me}/{}", third.uid)}}}),
                "zen-lead.io/holder-instance",
            ),
            (
                "a follower takes the Lease keeping the leader's fencing token",
                json!({"spec": {"holderIdentity": me},
                       "metadata": {"annotations": {instance: format!("{me}/{}", follower.uid)}}}),
                "leaseTransitions",
            ),
        ] {
            problems.extend(not_refused(what, patch_lease(&as_follower, &ns, patch).await, f, part));
        }
        problems.extend(not_refused(
            "the leader removes a follower's UID from fenced-pods",
            patch_lease(
                &as_leader,
                &ns,
                json!({"metadata": {"annotations": {FENCED_PODS_ANNOTATION: without(&follower.uid)}}}),
            )
            .await,
            &leader.name,
            "annotation zen-lead.io/fenced-pods",
        ));
        let follower_leases: Api<Lease> = Api::namespaced(as_follower.clone(), &ns);
        let fresh: Lease = serde_json::from_value(json!({
            "metadata": {"name": POOL},
            "spec": {"holderIdentity": me, "leaseDurationSeconds": 6},
        }))
        .expect("lease");
        problems.extend(not_refused(
            "a follower creates the pool's Lease",
            outcome(follower_leases.create(&PostParams::default(), &fresh).await),
            f,
            "may not create",
        ));
        problems.extend(not_refused(
            "a follower deletes the pool's Lease",
            outcome(follower_leases.delete(POOL, &DeleteParams::default()).await),
            f,
            "may not delete",
        ));
        let leader_leases: Api<Lease> = Api::namespaced(as_leader.clone(), &ns);
        problems.extend(not_refused(
            "the leader deletes the pool's Lease in a collection",
            outcome(
                leader_leases
                    .delete_collection(
                        &DeleteParams::default(),
                        &kube::api::ListParams::default().fields(&format!("metadata.name={POOL}")),
                    )
                    .await,
            ),
            &leader.name,
            "may not delete",
        ));
        assert!(
            problems.is_empty(),
            "zen-lead fencing admitted writes to the pool's Lease that its agents never make:\n{}",
            problems.join("\n")
        );
        // The leader's own app's Leases are its to delete, in a collection
        // too (which names no object in the request).
        let own: Lease = serde_json::from_value(json!({
            "metadata": {"name": "apps-own", "labels": {"app": "own"}},
            "spec": {"holderIdentity": "the-app"},
        }))
        .expect("lease");
        admin
            .create(&PostParams::default(), &own)
            .await
            .unwrap_or_else(|e| panic!("create the app's Lease: {e}"));
        leader_leases
            .delete_collection(
                &DeleteParams::default(),
                &kube::api::ListParams::default().labels("app=own"),
            )
            .await
            .unwrap_or_else(|e| {
                panic!("zen-lead fencing refused the leader deleting its app's Leases: {e}")
            });
        // Nothing of it landed, and the election went on: the leader
        // renewed throughout and still leads, with the same fencing token.
        let after = admin.get(POOL).await.expect("the pool's Lease");
        assert_eq!(after.uid(), before.uid(), "the Lease was re-created");
        assert_eq!(after.labels(), before.labels());
        assert_eq!(after.annotations().get(FENCED_PODS_ANNOTATION), Some(&members));
        assert_eq!(after.metadata.owner_references, before.metadata.owner_references);
        assert_eq!(
            after.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0),
            transitions
        );
        assert_eq!(leader.agent.leading().await, Ok(true));
        assert_eq!(follower.agent.leading().await, Ok(false));
    })
    .await;
}

/// What the policy cannot judge is when a Lease has expired, so it lets a
/// member take its pool's Lease naming itself, the way an agent takes an
/// expired one: `holderIdentity`, its own pod UID in holder-instance and
/// the fencing token up by one. With every agent frozen past the lease, a
/// follower's own token takes the Lease; then its writes are admitted and
/// the old leader's refused, and its agent, thawed, carries on the term.
#[tokio::test]
async fn a_follower_may_take_an_expired_lease_naming_itself() {
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "take-expired", 2, None).await;
        wait_fenced(&client, &ns, &pool).await;
        let l = pool.leader(&client, &ns).await;
        let (leader, follower) = (&pool.members[l], &pool.members[(l + 1) % 2]);
        let as_follower = direct(&follower.token, &pool.dir).await;
        let as_leader = direct(&leader.token, &pool.dir).await;
        for m in &pool.members {
            m.agent.signal("-STOP");
        }
        let admin: Api<Lease> = Api::namespaced(client.clone(), &ns);
        eventually("the frozen leader's Lease to expire", LIMIT, || async {
            let lease = admin.get(POOL).await.map_err(|e| e.to_string())?;
            let spec = lease.spec.unwrap_or_default();
            let renewed = spec.renew_time.ok_or("no renewTime")?.0;
            let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let expires = renewed + k8s_openapi::jiff::SignedDuration::from_secs(secs);
            let now = k8s_openapi::jiff::Timestamp::now();
            (now > expires)
                .then_some(())
                .ok_or_else(|| format!("renewed {renewed}, expires {expires}, now {now}"))
        })
        .await;
        let leases: Api<Lease> = Api::namespaced(as_follower.clone(), &ns);
        let mut lease = leases
            .get(POOL)
            .await
            .expect("the follower reads its Lease");
        let spec = lease.spec.get_or_insert_with(Default::default);
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        );
        spec.holder_identity = Some(follower.agent.identity.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                zen_lead::api::keys::HOLDER_INSTANCE_ANNOTATION.to_owned(),
                format!("{}/{}", follower.agent.identity, follower.uid),
            );
        lease.metadata.managed_fields = None;
        leases
            .replace(POOL, &PostParams::default(), &lease)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "zen-lead fencing refused a follower taking an expired Lease naming itself: {e}"
                )
            });
        let mut n = 0;
        eventually("the new holder's direct write admitted", LIMIT, || {
            n += 1;
            let (c, ns) = (&as_follower, &ns);
            async move {
                write(c, ns, &format!("taker-{n}"))
                    .await
                    .map_err(|e| format!("refused (the API server's cache lags): {e:?}"))
            }
        })
        .await;
        assert_fenced(
            write(&as_leader, &ns, "old-leader").await,
            &leader.name,
            &follower.agent.identity,
            "the old leader's write after the take-over",
        );
        for m in &pool.members {
            m.agent.signal("-CONT");
        }
        follower.agent.wait_leading(true, LIMIT).await;
        leader.agent.wait_leading(false, LIMIT).await;
    })
    .await;
}

/// `serverSideFencing: false` on the policy: the Lease is not a parameter,
/// the condition says why, and a follower's direct write is admitted (only
/// the gate fences it).
#[tokio::test]
async fn a_policy_can_turn_server_side_fencing_off() {
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "off", 2, Some(false)).await;
        condition(&client, &ns, "False", "Disabled").await;
        let l = pool.leader(&client, &ns).await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let lease = leases.get(POOL).await.expect("lease");
        assert!(!lease.labels().contains_key(FENCED_LABEL));
        let follower = &pool.members[(l + 1) % 2];
        write(&direct(&follower.token, &pool.dir).await, &ns, "unfenced")
            .await
            .unwrap_or_else(|e| panic!("an unfenced pool's follower writes directly: {e:?}"));
        // On again: the controller lists the pods and the fence holds.
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        policies
            .patch(
                POOL,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"serverSideFencing": true}})),
            )
            .await
            .expect("turn fencing on");
        wait_fenced(&client, &ns, &pool).await;
        assert_fenced(
            write(&direct(&follower.token, &pool.dir).await, &ns, "fenced-now").await,
            &follower.name,
            &pool.members[l].agent.identity,
            "a follower's direct write once fencing is on",
        );
    })
    .await;
}

/// Lets the pool's `app` account exec into pods, mint its own tokens and
/// ask access reviews (the rights a careless chart might give it), so that
/// what refuses a follower is the fence, not RBAC.
async fn grant_exec_and_tokens(client: &Client, ns: &str) {
    let role: Role = common::from_json(json!({
        "metadata": {"name": "app-extra"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"],
             "verbs": ["create"]},
        ],
    }));
    let binding: RoleBinding = common::from_json(json!({
        "metadata": {"name": "app-extra"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app-extra"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}],
    }));
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("Role");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("RoleBinding");
}

/// One POST as `client`; its status code and message.
async fn post(client: &Client, path: &str, body: Value) -> (u16, String) {
    let request = http::Request::post(path)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).expect("body"))
        .expect("request");
    match client.request::<Value>(request).await {
        Ok(_) => (201, String::new()),
        Err(kube::Error::Api(s)) => (s.code, s.message),
        Err(e) => (0, e.to_string()),
    }
}

/// Issue 30, finding 3: a follower cannot exec into the leader's pod (and
/// write with its token), nor mint an unbound token of its ServiceAccount
/// (a token with no pod claims is not fenced); the leader can. An access
/// review stores nothing and passes for both, as the gate passes it.
#[tokio::test]
async fn a_follower_may_not_exec_into_the_leader_or_mint_tokens() {
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "connect", 2, None).await;
        grant_exec_and_tokens(&client, &ns).await;
        wait_fenced(&client, &ns, &pool).await;
        let l = pool.leader(&client, &ns).await;
        let (leader, follower) = (&pool.members[l], &pool.members[(l + 1) % 2]);
        let holder = &leader.agent.identity;
        let as_follower = direct(&follower.token, &pool.dir).await;
        let as_leader = direct(&leader.token, &pool.dir).await;
        let exec = format!(
            "/api/v1/namespaces/{ns}/pods/{}/exec?command=true&stdout=true&container=app",
            leader.name
        );
        let token = format!("/api/v1/namespaces/{ns}/serviceaccounts/app/token");
        let token_request = json!({"apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest", "spec": {"audiences": [], "expirationSeconds": 600}});
        let review =
            format!("/apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews");
        let review_body = json!({"apiVersion": "authorization.k8s.io/v1",
            "kind": "LocalSubjectAccessReview", "spec": {"user": "someone",
            "resourceAttributes": {"namespace": ns, "verb": "get", "resource": "pods"}}});
        // The API server acts on RBAC and the Lease a moment after they change.
        let refused_exec = eventually("a follower's exec refused", LIMIT, || async {
            match post(&as_follower, &exec, json!({})).await {
                (403, m) if m.contains("zen-lead fencing") => Ok((403, m)),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_fenced(
            Err(refused_exec),
            &follower.name,
            holder,
            "a follower's exec into the leader",
        );
        let (code, message) = post(&as_leader, &exec, json!({})).await;
        assert!(
            !message.contains("zen-lead fencing"),
            "the leader's exec is not the fence's to refuse ({code}: {message})"
        );
        assert_fenced(
            Err(post(&as_follower, &token, token_request.clone()).await),
            &follower.name,
            holder,
            "a follower minting a token of its account",
        );
        assert_eq!(
            post(&as_leader, &token, token_request).await,
            (201, String::new()),
            "the leader mints a token"
        );
        for (who, c) in [("follower", &as_follower), ("leader", &as_leader)] {
            assert_eq!(
                post(c, &review, review_body.clone()).await,
                (201, String::new()),
                "the {who}'s access review"
            );
        }
    })
    .await;
}

/// Sets the binding's namespaceSelector to `names` by hand (what an operator,
/// or a controller of another namespace, might leave).
async fn set_scope(bindings: &Api<ValidatingAdmissionPolicyBinding>, names: &[&str]) {
    let patch = json!({"spec": {"matchResources": {"namespaceSelector": {"matchExpressions": [
        {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": names}]}}}});
    bindings
        .patch(POLICY_NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("set the binding's scope to {names:?}: {e}"));
}

/// Waits until the binding's scope satisfies `ok`.
async fn until_scope(
    bindings: &Api<ValidatingAdmissionPolicyBinding>,
    what: &str,
    ok: impl Fn(&Scope) -> bool,
) {
    eventually(what, LIMIT, || async {
        let b = bindings.get(POLICY_NAME).await.map_err(|e| e.to_string())?;
        let selector = b
            .spec
            .and_then(|s| s.match_resources)
            .and_then(|r| r.namespace_selector);
        let scope = scope_of(selector.as_ref());
        ok(&scope).then_some(()).ok_or_else(|| format!("{scope:?}"))
    })
    .await;
}

/// The binding covers a namespace only while it has a fenced pool (issue
/// 30, finding 4): the pool's namespace is added before its Lease is marked,
/// put back when someone removes it while the pool is fenced (and the fence
/// holds again), and dropped once the pool is gone; another namespace in
/// the scope is left alone by this namespace's controller.
#[tokio::test]
async fn the_binding_covers_a_namespace_only_while_it_has_a_fenced_pool() {
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    // As a cluster-wide controller leaves it while no pool anywhere is fenced.
    set_scope(&bindings, &[NO_NAMESPACE]).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "scope", 2, None).await;
        let has = |ns: &str, want: bool| {
            let ns = ns.to_owned();
            move |s: &Scope| matches!(s, Scope::Only(names) if names.contains(&ns) == want)
        };
        until_scope(&bindings, "the pool's namespace added", has(&ns, true)).await;
        wait_fenced(&client, &ns, &pool).await;
        let l = pool.leader(&client, &ns).await;
        let follower = &pool.members[(l + 1) % 2];
        let holder = &pool.members[l].agent.identity;
        let follower_client = direct(&follower.token, &pool.dir).await;
        // The API server acts on a binding change a moment after it is
        // stored (its informer), hence the wait.
        let refused = |name: &'static str| {
            let (client, follower_client, ns) = (&client, &follower_client, &ns);
            async move {
                eventually("a follower's direct write refused", LIMIT, || async {
                    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
                    let _ = cms.delete(name, &DeleteParams::default()).await;
                    match write(follower_client, ns, name).await {
                        Err(refusal) => Ok(refusal),
                        Ok(()) => Err("admitted".to_owned()),
                    }
                })
                .await
            }
        };
        assert_fenced(
            Err(refused("scoped").await),
            &follower.name,
            holder,
            "a follower's direct write in a covered namespace",
        );
        // Someone drops the namespace while the pool is fenced.
        set_scope(&bindings, &["other-team"]).await;
        until_scope(&bindings, "the namespace put back", |s| {
            has(&ns, true)(s) && has("other-team", true)(s)
        })
        .await;
        assert_fenced(
            Err(refused("again").await),
            &follower.name,
            holder,
            "a follower's direct write once the namespace is back",
        );
        // The pool goes (its pods first: the controller would create a
        // missing policy for them): its namespace leaves the scope, the
        // other stays.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        for m in &pool.members {
            pods.delete(&m.name, &DeleteParams::default().grace_period(0))
                .await
                .unwrap_or_else(|e| panic!("delete pod {}: {e}", m.name));
        }
        let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        policies
            .delete(POOL, &DeleteParams::default())
            .await
            .expect("delete the LeaderPolicy");
        until_scope(&bindings, "the namespace dropped with its pool", |s| {
            has(&ns, false)(s) && has("other-team", true)(s)
        })
        .await;
    })
    .await;
}

/// Without the policy installed the controller says so, and lists nothing.
#[tokio::test]
async fn without_the_policy_installed_the_pool_is_not_called_fenced() {
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let _pool = pool(&client, &ns, "absent", 1, None).await;
        condition(&client, &ns, "False", "PolicyNotInstalled").await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let lease = leases.get(POOL).await.expect("lease");
        assert!(!lease.labels().contains_key(FENCED_LABEL));
    })
    .await;
}

/// `make bench-fencing`: the admission latency the policy adds. A fenced
/// pool's leader and a pod outside any pool (same namespace, same
/// ServiceAccount) each merge-PATCH a ConfigMap directly; rounds alternate
/// the policy's binding present and absent (absent = fencing off), so both
/// columns are measured in the same run on the same cluster.
#[tokio::test]
#[ignore = "benchmark: make bench-fencing"]
async fn bench_fencing_admission_latency() {
    let rounds: usize = std::env::var("ZEN_LEAD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    const WRITES: usize = 200;
    let _turn = POLICY.lock().await;
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    let _policy = install(&client).await;
    with_namespace(&client, "fencing", |client, ns| async move {
        let pool = pool(&client, &ns, "bench", 2, None).await;
        wait_fenced(&client, &ns, &pool).await;
        let l = pool.leader(&client, &ns).await;
        let dir = pool.dir.clone();
        let leader = direct(&pool.members[l].token, &dir).await;
        let outside_uid = create_pod(&client, &ns, "outside", None).await;
        let outside_token =
            fixture::issue_pod_token(&client, &ns, "app", "outside", &outside_uid).await;
        let outside = direct(&outside_token, &dir).await;
        for (c, name) in [(&leader, "leader-cm"), (&outside, "outside-cm")] {
            write(c, &ns, name).await.expect("first write");
        }
        // A pod in a namespace without any fenced pool.
        let elsewhere_ns = common::create_namespace(&client, "fencing-other").await;
        let _ = fixture::accounts(&client, &elsewhere_ns).await;
        let elsewhere_uid = create_pod(&client, &elsewhere_ns, "elsewhere", None).await;
        let elsewhere_token =
            fixture::issue_pod_token(&client, &elsewhere_ns, "app", "elsewhere", &elsewhere_uid)
                .await;
        let elsewhere = direct(&elsewhere_token, &dir).await;
        write(&elsewhere, &elsewhere_ns, "elsewhere-cm")
            .await
            .expect("first write elsewhere");
        let (_, binding) = rendered();
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        // (who, fencing on) -> latencies in ms
        let mut samples: std::collections::BTreeMap<(&str, bool), Vec<f64>> = Default::default();
        for round in 0..rounds * 2 {
            let on = round % 2 == 0;
            if on {
                bindings
                    .patch(
                        POLICY_NAME,
                        &PatchParams::apply("zen-lead-tests").force(),
                        &Patch::Apply(&binding),
                    )
                    .await
                    .expect("binding");
                // As the controller keeps it: only the namespace with a
                // fenced pool.
                set_scope(&bindings, &[&ns]).await;
            } else {
                let _ = bindings.delete(POLICY_NAME, &DeleteParams::default()).await;
            }
            // Wait until the API server acts on the change: a follower's
            // direct write is refused exactly while the binding is there.
            let follower = direct(&pool.members[(l + 1) % 2].token, &dir).await;
            eventually("the binding change to take effect", LIMIT, || async {
                let refused = write(&follower, &ns, "probe").await.is_err();
                let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
                let _ = cms.delete("probe", &DeleteParams::default()).await;
                (refused == on)
                    .then_some(())
                    .ok_or_else(|| format!("refused {refused}, binding {on}"))
            })
            .await;
            for i in 0..WRITES {
                for (who, c, name, in_ns) in [
                    ("leader", &leader, "leader-cm", &ns),
                    ("outside", &outside, "outside-cm", &ns),
                    ("elsewhere", &elsewhere, "elsewhere-cm", &elsewhere_ns),
                ] {
                    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), in_ns);
                    let started = Instant::now();
                    cms.patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"data": {"i": i.to_string()}})),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{who} PATCH with fencing {on}: {e}"));
                    samples
                        .entry((who, on))
                        .or_default()
                        .push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let pct = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() as f64 - 1.0) * p).round() as usize]
        };
        eprintln!(
            "\nfencing admission latency: merge PATCH of a ConfigMap, direct to the API server, \
             {rounds} rounds x {WRITES} writes per column, binding present/absent alternating"
        );
        eprintln!("| writer | fencing | p50 ms | p99 ms |");
        eprintln!("|---|---|---|---|");
        let mut p = std::collections::BTreeMap::new();
        for ((who, on), v) in samples.iter_mut() {
            let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
            p.insert((*who, *on), (p50, p99));
            eprintln!(
                "| {who} | {} | {p50:.2} | {p99:.2} |",
                if *on { "on" } else { "off" }
            );
        }
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let _ = namespaces
            .delete(&elsewhere_ns, &DeleteParams::background())
            .await;
        eprintln!(
            "leader: the pool's leader; outside: a pod of no pool in the pool's namespace; \
             elsewhere: a pod in a namespace without fenced pools"
        );
        for who in ["leader", "outside", "elsewhere"] {
            let (on50, on99) = p[&(who, true)];
            let (off50, off99) = p[&(who, false)];
            eprintln!(
                "{who}: on/off p50 {:.2} (+{:.2} ms), p99 {:.2} (+{:.2} ms)",
                on50 / off50,
                on50 - off50,
                on99 / off99,
                on99 - off99
            );
        }
    })
    .await;
}
