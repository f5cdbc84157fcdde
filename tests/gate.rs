//! The agent's API gate (`zen-lead agent --activation api`) against the real
//! local cluster: the `zen-lead` binary runs on the host with
//! `--gate-upstream` = the cluster's API server; the "app" is this test,
//! talking to the gate with a real ServiceAccount token (TokenRequest) and
//! the gate's own CA, as an in-cluster client would. Nothing is mocked.
//!
//! Run: `cargo test --test gate` (cluster from `make cluster-up`).

mod common;
#[path = "common/gate.rs"]
mod fixture;
#[path = "common/slow_webhook.rs"]
mod slow_webhook;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use hyper::{Method, StatusCode, Version};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use common::{client, eventually, from_json, kubeconfig_path, with_namespace};
use fixture::{AgentOpts, GateAgent, RawConn, RawResponse, Tokens};

const START_LIMIT: Duration = Duration::from_secs(60);
/// Timings of the Lease once the agent leads: 6 s / 4 s / 1 s.
const LEASE: i32 = 6;
const RENEW_DEADLINE: Duration = Duration::from_secs(4);

fn scratch(test: &str) -> std::path::PathBuf {
    common::scratch_dir(&format!("gate-{test}"))
}

fn cm(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

/// POSTs ConfigMap `name` to `path` on `conn` with `token`.
async fn post_cm(
    conn: &mut RawConn,
    path: &str,
    token: &str,
    name: &str,
) -> Result<RawResponse, String> {
    conn.send(
        Method::POST,
        path,
        Some(token),
        Some(("application/json", cm(name))),
    )
    .await
}

/// Namespace fixture: accounts, a Lease held by someone else (long lease,
/// so the agent stays a follower until the test frees it), the agent.
async fn follower(client: &Client, ns: &str, test: &str, extra: &[&str]) -> (GateAgent, Tokens) {
    let tokens = fixture::accounts(client, ns).await;
    fixture::create_lease(client, ns, "pool", Some("someone-else"), (3600, 4.0, 1.0)).await;
    let cluster = fixture::cluster(&kubeconfig_path());
    let mut agent = GateAgent::start(AgentOpts {
        ns,
        pool: "pool",
        dir: scratch(test),
        cluster: &cluster,
        tokens: &tokens,
        upstream: None,
        extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        pod: None,
    });
    agent.wait_serving(START_LIMIT).await;
    (agent, tokens)
}

/// Frees the Lease (with 6 s / 4 s / 1 s timings) and waits for the agent to lead.
async fn make_leader(client: &Client, ns: &str, agent: &GateAgent) {
    fixture::free_lease(client, ns, "pool", LEASE).await;
    agent.wait_leading(true, Duration::from_secs(30)).await;
}

/// A standby's refusal (503). Only a create says `Retry-After`: clients
/// resend the same body after it, and only a create's the API server checks
/// against a stale read.
fn assert_standby_refusal(resp: &fixture::RawResponse, what: &str) {
    assert_refusal(resp, what, Some("1"));
}

fn assert_refusal(resp: &fixture::RawResponse, what: &str, retry_after: Option<&str>) {
    assert_eq!(
        resp.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {resp:?}"
    );
    assert_eq!(
        resp.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        retry_after,
        "{what}: Retry-After"
    );
    let status = resp.json();
    assert_eq!(status["kind"], "Status", "{what}: {status}");
    assert_eq!(status["apiVersion"], "v1", "{what}: {status}");
    assert_eq!(status["status"], "Failure", "{what}: {status}");
    assert_eq!(status["reason"], "ServiceUnavailable", "{what}: {status}");
    assert_eq!(status["code"], 503, "{what}: {status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"pool\"") && message.contains("standby"),
        "{what}: {message}"
    );
}

/// Asks the leading agent to hand the Lease to `someone-else` (a name no
/// agent has) and waits until it has released it; returns the released Lease.
async fn hand_off(client: &Client, ns: &str) -> Lease {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    leases
        .patch(
            "pool",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"zen-lead.io/preferred-holder": "someone-else"}}})),
        )
        .await
        .expect("ask for a hand-off");
    eventually(
        "the agent to release the Lease",
        Duration::from_secs(60),
        || async {
            let lease = leases.get("pool").await.map_err(|e| e.to_string())?;
            match lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty())
            {
                None => Ok(lease),
                Some(h) => Err(format!("held by {h}")),
            }
        },
    )
    .await
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn follower_reads_pass_and_writes_are_refused() {
    let client = client().await;
    with_namespace(&client, "gate-f", |client, ns| async move {
        let (agent, tokens) = follower(&client, &ns, "follower", &[]).await;
        assert!(!agent.leading().await.expect("leader view"), "the agent must follow");

        // The app's service-account directory: the same token, the
        // namespace, and a CA that is not the cluster's (the gate's own).
        assert_eq!(std::fs::read_to_string(agent.sa_dir.join("token")).expect("token"), tokens.app);
        assert_eq!(std::fs::read_to_string(agent.sa_dir.join("namespace")).expect("ns"), ns);
        assert_ne!(agent.gate_ca(), agent.cluster_ca);
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["token", "namespace", "ca.crt"] {
                let mode = std::fs::metadata(agent.sa_dir.join(f)).expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o644, "{f}");
            }
        }

        // A rotated source token reaches the copy (the gate polls every 2 s).
        // (The kubelet swaps the file the same way: write, then rename.)
        let rotated = fixture::issue_token(&client, &ns, "app").await;
        assert_ne!(rotated, tokens.app);
        std::fs::write(agent.source_dir.join("token.new"), &rotated).expect("token");
        std::fs::rename(agent.source_dir.join("token.new"), agent.source_dir.join("token")).expect("rotate");
        eventually("the rotated token to be copied", Duration::from_secs(20), || async {
            let copy = std::fs::read_to_string(agent.sa_dir.join("token")).map_err(|e| e.to_string())?;
            if copy == rotated { Ok(()) } else { Err("old copy".to_owned()) }
        })
        .await;

        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        admin_cms
            .create(&PostParams::default(), &from_json(cm("existing")))
            .await
            .expect("seed ConfigMap");

        // Reads through the gate, with kube-rs (HTTP/1.1, the app's token).
        let app = agent.app_client(false).await;
        let cms: Api<ConfigMap> = Api::namespaced(app.clone(), &ns);
        let got = cms.get("existing").await.expect("GET through the gate");
        assert_eq!(got.data.and_then(|d| d.get("k").cloned()).as_deref(), Some("v"));
        let list = cms.list(&Default::default()).await.expect("LIST through the gate");
        assert!(
            list.items.iter().any(|c| c.metadata.name.as_deref() == Some("existing")),
            "LIST through the gate misses the ConfigMap"
        );

        // The app's own token is forwarded: the API server sees the app.
        let review: serde_json::Value = app
            .request(
                hyper::http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})).expect("json"))
                    .expect("request"),
            )
            .await
            .expect("SelfSubjectReview through the gate (a never-persisted POST passes in a follower)");
        assert_eq!(
            review["status"]["userInfo"]["username"],
            format!("system:serviceaccount:{ns}:app"),
            "{review}"
        );

        // Writes over HTTP/2 and HTTP/1.1: refused, and really not done.
        let cm_path = format!("/api/v1/namespaces/{ns}/configmaps");
        let mut h2 = RawConn::open(agent.gate, &agent.gate_ca(), true).await;
        let mut h1 = RawConn::open(agent.gate, &agent.gate_ca(), false).await;
        let read = h2.send(Method::GET, &format!("{cm_path}/existing"), Some(&tokens.app), None).await.expect("h2 GET");
        assert_eq!((read.status, read.version), (StatusCode::OK, Version::HTTP_2), "{read:?}");
        let read = h1.send(Method::GET, &format!("{cm_path}/existing"), Some(&tokens.app), None).await.expect("h1 GET");
        assert_eq!((read.status, read.version), (StatusCode::OK, Version::HTTP_11), "{read:?}");

        let created = post_cm(&mut h2, &cm_path, &tokens.app, "new")
            .await
            .expect("h2 POST");
        assert_eq!(created.version, Version::HTTP_2);
        assert_standby_refusal(&created, "create over HTTP/2");
        let patched = h1
            .send(
                Method::PATCH,
                &format!("{cm_path}/existing"),
                Some(&tokens.app),
                Some(("application/merge-patch+json", json!({"data": {"k": "changed"}}))),
            )
            .await
            .expect("h1 PATCH");
        assert_refusal(&patched, "patch over HTTP/1.1", None);
        let deleted = h1.send(Method::DELETE, &format!("{cm_path}/existing"), Some(&tokens.app), None).await.expect("DELETE");
        assert_refusal(&deleted, "delete", None);
        // kube-rs surfaces the Status as an API error (retries off here).
        match cms.create(&PostParams::default(), &from_json(cm("new"))).await {
            Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (503, "ServiceUnavailable")),
            other => panic!("kube-rs create through a follower: {other:?}"),
        }
        assert!(admin_cms.get_opt("new").await.expect("get").is_none(), "a refused create was performed");
        let existing = admin_cms.get("existing").await.expect("get");
        assert_eq!(existing.data.and_then(|d| d.get("k").cloned()).as_deref(), Some("v"), "a refused patch was performed");

        // Events pass in every role by default; Leases are not exempt by default.
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "gate-test.1"},
            "involvedObject": {"kind": "ConfigMap", "name": "existing", "namespace": ns},
            "reason": "Test", "message": "through the gate", "type": "Normal",
        });
        let sent = h1
            .send(Method::POST, &format!("/api/v1/namespaces/{ns}/events"), Some(&tokens.app), Some(("application/json", event)))
            .await
            .expect("event POST");
        assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "apps-own"}});
        let sent = h1
            .send(Method::POST, &format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"), Some(&tokens.app), Some(("application/json", lease)))
            .await
            .expect("lease POST");
        assert_standby_refusal(&sent, "lease create (not exempt by default)");

        // A dry run stores nothing: it passes.
        let dry = post_cm(&mut h1, &format!("{cm_path}?dryRun=All"), &tokens.app, "dry")
            .await
            .expect("dry run");
        assert_eq!(dry.status, StatusCode::CREATED, "{dry:?}");
        assert!(admin_cms.get_opt("dry").await.expect("get").is_none());
        // `dryrun` is not `dryRun` to the API server: it ignores the unknown
        // key and stores the write, so the gate holds it like any other
        // (issue 30, finding 2: it was taken for a dry run and landed).
        let not_dry = post_cm(&mut h1, &format!("{cm_path}?dryrun=All"), &tokens.app, "not-dry")
            .await
            .expect("?dryrun=All");
        assert_standby_refusal(&not_dry, "a follower's create with ?dryrun=All (stored by the API server)");
        assert!(
            admin_cms.get_opt("not-dry").await.expect("get").is_none(),
            "a follower's create with ?dryrun=All passed the gate and was stored"
        );

        // Bad input. An invalid token: the API server's 401, unchanged.
        let bad = h1.send(Method::GET, &cm_path, Some("not-a-token"), None).await.expect("GET");
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(bad.json()["reason"], "Unauthorized");
        // No token: forwarded without one (anonymous), never with the agent's.
        let anonymous = h1.send(Method::GET, &cm_path, None, None).await.expect("GET");
        assert!(
            matches!(anonymous.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
            "a request without credentials must not get the agent's: {anonymous:?}"
        );
        // A path the gate will not judge.
        let odd = post_cm(&mut h1, &format!("/api/v1/namespaces/{ns}/events/../configmaps"), &tokens.app, "odd")
            .await
            .expect("odd path");
        assert_eq!(odd.status, StatusCode::BAD_REQUEST, "{odd:?}");
        assert_eq!(odd.json()["reason"], "BadRequest");
        // Bytes that are not HTTP: hyper answers 400 and closes.
        {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut tls = fixture::tls_connect(agent.gate, &agent.gate_ca(), "localhost", &[b"http/1.1"]).await.expect("tls");
            tls.write_all(b"\x01\x02 not http\r\n\r\n").await.expect("write");
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut reply)).await;
            let reply = String::from_utf8_lossy(&reply);
            assert!(reply.starts_with("HTTP/1.1 400"), "garbage got {reply:?}");
        }

        let metrics = agent.metrics().await;
        assert!(metric(&metrics, "zen_lead_gate_refused_writes_total") >= 5.0, "{metrics}");
        // Each was held for the default --gate-hold (2 s) first.
        assert!(metric(&metrics, "zen_lead_gate_held_writes_total{outcome=\"refused\"}") >= 5.0, "{metrics}");
        assert!(metric(&metrics, "zen_lead_gate_requests_total{class=\"read\",outcome=\"passed\"}") >= 4.0, "{metrics}");
        assert!(metric(&metrics, "zen_lead_gate_requests_total{class=\"write\",outcome=\"invalid\"}") >= 1.0, "{metrics}");
        // Tokens never reach the log.
        let log = agent.log_text();
        assert!(!log.contains(&tokens.app) && !log.contains(&tokens.agent), "a token was logged");
    })
    .await;
}

#[tokio::test]
async fn leader_writes_pass_and_stop_at_the_renew_deadline_when_it_cannot_renew() {
    let client = client().await;
    with_namespace(&client, "gate-l", |client, ns| async move {
        let (agent, tokens) = follower(&client, &ns, "leader", &[]).await;
        make_leader(&client, &ns, &agent).await;

        let app = agent.app_client(false).await;
        let cms: Api<ConfigMap> = Api::namespaced(app.clone(), &ns);
        cms.create(&PostParams::default(), &from_json(cm("a"))).await.expect("create through the leader's gate");
        cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "patched"}})))
            .await
            .expect("patch through the leader's gate");
        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let seen = admin_cms.get("a").await.expect("get");
        assert_eq!(seen.data.and_then(|d| d.get("k").cloned()).as_deref(), Some("patched"));
        // Written with the app's identity (the API server records the user
        // agent as the manager; the audit user would be the app's SA).
        cms.delete("a", &DeleteParams::default()).await.expect("delete through the leader's gate");
        eventually("the ConfigMap to be gone", Duration::from_secs(10), || async {
            match admin_cms.get_opt("a").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;

        // The leader can no longer renew: its Lease permission is revoked.
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        bindings.delete("agent", &DeleteParams::default()).await.expect("revoke");
        let revoked = tokio::time::Instant::now();
        // Writes keep passing until the term's deadline, then stop for good.
        let mut h1 = RawConn::open(agent.gate, &agent.gate_ca(), false).await;
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let mut n = 0;
        let refused_after = loop {
            n += 1;
            let resp = post_cm(&mut h1, &path, &tokens.app, &format!("w{n}"))
                .await
                .expect("POST");
            if resp.status == StatusCode::SERVICE_UNAVAILABLE {
                assert_standby_refusal(&resp, "write after the renew deadline");
                break revoked.elapsed();
            }
            assert_eq!(resp.status, StatusCode::CREATED, "{resp:?}");
            assert!(
                revoked.elapsed() < RENEW_DEADLINE + Duration::from_secs(10),
                "writes still pass {:?} after renewals stopped:\n{}",
                revoked.elapsed(),
                agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("writes stopped {refused_after:?} after the Lease permission was revoked (renew deadline {RENEW_DEADLINE:?})");
        // The last successful renewal was sent before the revocation, so the
        // term ends at most renewDeadline later (plus scheduling slack).
        assert!(
            refused_after <= RENEW_DEADLINE + Duration::from_secs(3),
            "writes stopped only {refused_after:?} after the last possible renewal"
        );
        // And none passes afterwards.
        for i in 0..10 {
            let resp = post_cm(&mut h1, &path, &tokens.app, &format!("late{i}"))
                .await
                .expect("POST");
            assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{resp:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(admin_cms.get_opt("late0").await.expect("get").is_none());
        // Reads still pass.
        assert!(cms.list(&Default::default()).await.is_ok());
        assert!(!agent.leading().await.expect("leader view"));
    })
    .await;
}

#[tokio::test]
async fn a_hand_off_stops_writes_before_the_lease_is_released() {
    let client = client().await;
    with_namespace(&client, "gate-h", |client, ns| async move {
        // A long preferred-holder deferral keeps this agent from taking the
        // Lease back while the test looks.
        let (agent, tokens) =
            follower(&client, &ns, "handoff", &["--preferred-defer", "120s"]).await;
        make_leader(&client, &ns, &agent).await;
        let mut h1 = RawConn::open(agent.gate, &agent.gate_ca(), false).await;
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let ok = post_cm(&mut h1, &path, &tokens.app, "before")
            .await
            .expect("POST");
        assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");

        // As soon as the Lease shows the release, the gate refuses writes:
        // the agent stops leading before it sends the release.
        hand_off(&client, &ns).await;
        let after = post_cm(&mut h1, &path, &tokens.app, "after")
            .await
            .expect("POST");
        assert_standby_refusal(&after, "write after the hand-off");
        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        assert!(admin_cms.get_opt("after").await.expect("get").is_none());
    })
    .await;
}

/// A write the API server has admitted but not yet stored when the leader
/// hands off (here a slow validating webhook holds it; a loaded etcd does
/// the same) is stored before the Lease is released, so no successor's
/// first write can land before it. Cutting it at the release, as the gate
/// once did, answered the app with a 504 while the API server stored the
/// write after the release: after a successor's writes.
#[tokio::test]
async fn a_write_in_flight_at_a_hand_off_is_stored_before_the_release() {
    let client = client().await;
    with_namespace(&client, "gate-drain", |client, ns| async move {
        let delay = Duration::from_secs(3);
        let mut hook = slow_webhook::start(&client, &ns, delay).await;
        let (agent, tokens) = follower(&client, &ns, "drain", &["--preferred-defer", "120s"]).await;
        make_leader(&client, &ns, &agent).await;

        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let mut conn = RawConn::open(agent.gate, &agent.gate_ca(), false).await;
        let app_token = tokens.app.clone();
        let slow_cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "in-flight", "labels": {slow_webhook::SLOW_LABEL: "true"}}});
        let write = tokio::spawn(async move {
            conn.send(
                Method::POST,
                &path,
                Some(&app_token),
                Some(("application/json", slow_cm)),
            )
            .await
            .expect("POST")
        });
        // The write is admitted and waits on the slow hook: hand off now.
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(name) = hook.calls.recv().await {
                if name == "in-flight" {
                    return;
                }
            }
        })
        .await;
        assert!(arrived.is_ok(), "the write never reached the slow webhook");
        let released = hand_off(&client, &ns).await;

        let answer = write.await.expect("writer task");
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "the in-flight write: {answer:?}"
        );
        let stored = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("in-flight")
            .await
            .expect("the in-flight write was stored");
        // Both are etcd revisions of one store: ordered.
        let revision = |rv: Option<String>| -> u64 {
            rv.and_then(|v| v.parse().ok())
                .expect("a numeric resourceVersion")
        };
        let stored_at = revision(stored.metadata.resource_version);
        let released_at = revision(released.metadata.resource_version);
        assert!(
            stored_at < released_at,
            "the write was stored at revision {stored_at}, after the release at {released_at}:\n{}",
            agent.log_text()
        );
        hook.stop().await;
    })
    .await;
}

/// With `--gate-state-dir` a restarted agent container keeps its CA, so an
/// app that loaded `ca.crt` before the restart still trusts the gate.
#[tokio::test]
async fn a_restarted_agent_is_trusted_with_the_ca_loaded_before() {
    let client = client().await;
    with_namespace(&client, "gate-s", |client, ns| async move {
        let state = scratch("state-keep");
        let _ = std::fs::remove_dir_all(&state);
        let state_arg = state.to_string_lossy().into_owned();
        let (mut agent, tokens) =
            follower(&client, &ns, "restart", &["--gate-state-dir", &state_arg]).await;
        let loaded_before = agent.gate_ca();
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let mut h1 = RawConn::open(agent.gate, &loaded_before, false).await;
        let ok = h1
            .send(Method::GET, &path, Some(&tokens.app), None)
            .await
            .expect("GET");
        assert_eq!(ok.status, StatusCode::OK);

        agent.restart();
        agent.wait_serving(START_LIMIT).await;
        // A new connection verified with the CA read before the restart.
        let tls = fixture::tls_connect(
            agent.gate,
            &loaded_before,
            "kubernetes.default.svc",
            &[b"h2"],
        )
        .await;
        assert!(
            tls.is_ok(),
            "the restarted gate is not trusted through the old ca.crt: {:?}",
            tls.err()
        );
        let mut h2 = RawConn::open(agent.gate, &loaded_before, true).await;
        let ok = h2
            .send(Method::GET, &path, Some(&tokens.app), None)
            .await
            .expect("GET");
        assert_eq!(ok.status, StatusCode::OK);
        assert!(
            agent.log_text().contains("reusing the CA key"),
            "{}",
            agent.log_text()
        );
        let _ = std::fs::remove_dir_all(&state);
    })
    .await;
}

/// SIGSTOP stands in for a partition or a stalled node: a write the app
/// sends while its agent is paused is refused when the agent resumes after
/// its term's deadline (another candidate holds the Lease by then), whether
/// or not the election task has run since: the gate compares the term's
/// deadline with the clock on every request.
#[tokio::test]
async fn a_paused_leader_refuses_writes_when_it_resumes() {
    let client = client().await;
    with_namespace(&client, "gate-p", |client, ns| async move {
        let (agent, tokens) = follower(&client, &ns, "pause", &[]).await;
        make_leader(&client, &ns, &agent).await;
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let mut h1 = RawConn::open(agent.gate, &agent.gate_ca(), false).await;
        let ok = post_cm(&mut h1, &path, &tokens.app, "before")
            .await
            .expect("POST");
        assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");

        agent.signal("-STOP");
        // The app keeps running and writes; the paused gate cannot answer yet.
        let pending = {
            let token = tokens.app.clone();
            let path = path.clone();
            tokio::spawn(async move { post_cm(&mut h1, &path, &token, "during").await })
        };
        // Past leaseDuration: another candidate may take the Lease (by CAS).
        tokio::time::sleep(Duration::from_secs(LEASE as u64 + 1)).await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let mut lease = leases.get("pool").await.expect("get Lease");
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("successor".into());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.lease_duration_seconds = Some(3600);
        leases
            .replace("pool", &PostParams::default(), &lease)
            .await
            .expect("successor takes the Lease");
        agent.signal("-CONT");

        let during = common::wait_for(
            "the paused write's answer",
            Duration::from_secs(30),
            pending,
        )
        .await
        .expect("task")
        .expect("answer");
        assert_standby_refusal(&during, "a write sent while the agent was paused");
        let mut h1 = RawConn::open(agent.gate, &agent.gate_ca(), false).await;
        let after = post_cm(&mut h1, &path, &tokens.app, "after")
            .await
            .expect("POST");
        assert_standby_refusal(&after, "a write after the pause");
        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        for name in ["during", "after"] {
            assert!(
                admin_cms.get_opt(name).await.expect("get").is_none(),
                "{name} was written"
            );
        }
        agent.wait_leading(false, Duration::from_secs(10)).await;
    })
    .await;
}

/// kube-rs 5 retries 503 with `Retry-After` by default (its
/// `RetryPolicy::server_retry`: up to 15 attempts, honouring the header): a
/// write started in a follower completes once the pod leads.
#[tokio::test]
async fn kube_rs_retries_a_refused_write_until_the_pod_leads() {
    let client = client().await;
    with_namespace(&client, "gate-r", |client, ns| async move {
        let (agent, _tokens) = follower(&client, &ns, "retry", &[]).await;
        let app = agent.app_client(true).await;
        let cms: Api<ConfigMap> = Api::namespaced(app, &ns);
        let started = tokio::time::Instant::now();
        let create = tokio::spawn(async move {
            cms.create(&PostParams::default(), &from_json(cm("patient")))
                .await
        });
        eventually(
            "the gate to refuse the retried write twice",
            Duration::from_secs(30),
            || async {
                let refused = metric(&agent.metrics().await, "zen_lead_gate_refused_writes_total");
                if refused >= 2.0 {
                    Ok(())
                } else {
                    Err(format!("{refused} refusals"))
                }
            },
        )
        .await;
        make_leader(&client, &ns, &agent).await;
        let result = common::wait_for(
            "the retried create to finish",
            Duration::from_secs(60),
            create,
        )
        .await
        .expect("task");
        let created = result.expect("kube-rs's retry carried the write through once the pod led");
        assert_eq!(created.metadata.name.as_deref(), Some("patient"));
        let refused = metric(&agent.metrics().await, "zen_lead_gate_refused_writes_total");
        eprintln!(
            "kube-rs retried {refused} refused attempts; the write completed {:?} after it started",
            started.elapsed()
        );
    })
    .await;
}

/// Found by the overlap checker: a blind patch a standby made from what it
/// read then, held until the pod led, landed after the previous leader's
/// last increments and undid them (a lost update). A held write now goes
/// out once the pod leads only if the API server can refuse it as stale: a
/// patch carrying the resourceVersion it was based on passes, a blind one
/// gets 409 Conflict, so the app reads again.
#[tokio::test]
async fn a_held_blind_patch_is_refused_when_the_pod_leads_and_a_checked_one_passes() {
    let client = client().await;
    with_namespace(&client, "gate-b", |client, ns| async move {
        let (agent, tokens) = follower(&client, &ns, "blind", &["--gate-hold", "60s"]).await;
        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let counter = admin_cms
            .create(&PostParams::default(), &from_json(cm("counter")))
            .await
            .expect("create the counter");
        let rv = counter.metadata.resource_version.clone().expect("a resourceVersion");
        let path = format!("/api/v1/namespaces/{ns}/configmaps/counter");
        let patch = |body: serde_json::Value| {
            let (token, path, gate, ca) = (tokens.app.clone(), path.clone(), agent.gate, agent.gate_ca());
            tokio::spawn(async move {
                let mut conn = RawConn::open(gate, &ca, false).await;
                conn.send(Method::PATCH, &path, Some(&token), Some(("application/merge-patch+json", body)))
                    .await
            })
        };
        let blind = patch(json!({"data": {"k": "blind"}}));
        let checked = patch(json!({"metadata": {"resourceVersion": rv}, "data": {"checked": "yes"}}));
        eventually("both writes held", Duration::from_secs(30), || async {
            let waiting = metric(&agent.metrics().await, "zen_lead_gate_writes_waiting");
            (waiting >= 2.0).then_some(()).ok_or(format!("{waiting} waiting"))
        })
        .await;
        make_leader(&client, &ns, &agent).await;
        let answer = |task: tokio::task::JoinHandle<Result<fixture::RawResponse, String>>| async move {
            common::wait_for("a held write's answer", Duration::from_secs(60), task)
                .await
                .expect("task")
                .expect("answer")
        };
        let blind = answer(blind).await;
        assert_eq!(blind.status, StatusCode::CONFLICT, "{blind:?}");
        let status = blind.json();
        let message = status["message"].as_str().unwrap_or_default();
        for part in ["standby", "resourceVersion precondition", "read again"] {
            assert!(message.contains(part), "the refusal should say {part:?}: {message}");
        }
        assert!(blind.headers.get("retry-after").is_none(), "{blind:?}");
        let checked = answer(checked).await;
        assert_eq!(checked.status, StatusCode::OK, "{checked:?}");
        let now = admin_cms.get("counter").await.expect("get the counter");
        let data = now.data.unwrap_or_default();
        assert_eq!(data.get("k").map(String::as_str), Some("v"), "the blind patch landed");
        assert_eq!(data.get("checked").map(String::as_str), Some("yes"));
        let metrics = agent.metrics().await;
        for (outcome, want) in [("blind", 1.0), ("passed", 1.0)] {
            assert_eq!(
                metric(&metrics, &format!("zen_lead_gate_held_writes_total{{outcome=\"{outcome}\"}}")),
                want,
                "{metrics}"
            );
        }
    })
    .await;
}

/// A standby's write held by the gate (`--gate-hold`) when the pod starts to
/// lead is forwarded at once, inside the new term: the client, a raw
/// connection with no retries at all, gets one answer, 201. With
/// `--gate-hold 0s` the same write is refused at once.
#[tokio::test]
async fn a_held_write_passes_when_the_pod_leads_without_a_client_retry() {
    let client = client().await;
    with_namespace(&client, "gate-h", |client, ns| async move {
        let (agent, tokens) = follower(&client, &ns, "hold", &["--gate-hold", "60s"]).await;
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let mut h2 = RawConn::open(agent.gate, &agent.gate_ca(), true).await;
        let pending = {
            let token = tokens.app.clone();
            let path = path.clone();
            tokio::spawn(async move { post_cm(&mut h2, &path, &token, "held").await })
        };
        eventually("the write to be held", Duration::from_secs(30), || async {
            let waiting = metric(&agent.metrics().await, "zen_lead_gate_writes_waiting");
            if waiting >= 1.0 {
                Ok(())
            } else {
                Err(format!("{waiting} waiting"))
            }
        })
        .await;
        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        assert!(
            admin_cms.get_opt("held").await.expect("get").is_none(),
            "written while a standby"
        );
        let freed = tokio::time::Instant::now();
        make_leader(&client, &ns, &agent).await;
        let answer = common::wait_for("the held write's answer", Duration::from_secs(60), pending)
            .await
            .expect("task")
            .expect("answer");
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        eprintln!(
            "held write answered {:?} after the Lease was freed",
            freed.elapsed()
        );
        assert!(
            admin_cms.get_opt("held").await.expect("get").is_some(),
            "the held create is missing"
        );
        let metrics = agent.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "zen_lead_gate_held_writes_total{outcome=\"passed\"}"
            ),
            1.0,
            "{metrics}"
        );
        assert_eq!(
            metric(&metrics, "zen_lead_gate_refused_writes_total"),
            0.0,
            "{metrics}"
        );
        assert_eq!(
            metric(&metrics, "zen_lead_gate_writes_waiting"),
            0.0,
            "{metrics}"
        );
    })
    .await;

    with_namespace(&client, "gate-h0", |client, ns| async move {
        let (agent, tokens) = follower(&client, &ns, "hold0", &["--gate-hold", "0s"]).await;
        let mut h1 = RawConn::open(agent.gate, &agent.gate_ca(), false).await;
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let refused = post_cm(&mut h1, &path, &tokens.app, "now")
            .await
            .expect("POST");
        assert_standby_refusal(&refused, "a write with --gate-hold 0s");
        let metrics = agent.metrics().await;
        assert_eq!(
            metric(&metrics, "zen_lead_gate_refused_writes_total"),
            1.0,
            "{metrics}"
        );
        // The held-write counters exist from the start, at zero.
        let held = common::metric_sum(&metrics, "zen_lead_gate_held_writes_total{");
        assert_eq!(held, 0.0, "held with 0s: {metrics}");
        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        assert!(admin_cms.get_opt("now").await.expect("get").is_none());
    })
    .await;
}

#[tokio::test]
async fn a_long_watch_streams_through_the_gate() {
    let client = client().await;
    with_namespace(&client, "gate-w", |client, ns| async move {
        let (agent, _tokens) = follower(&client, &ns, "watch", &[]).await;
        let app = agent.app_client(false).await;
        let cms: Api<ConfigMap> = Api::namespaced(app, &ns);
        // One watch for the whole test, with a server timeout well past it.
        let mut stream = cms
            .watch(&WatchParams::default().timeout(120), "0")
            .await
            .expect("watch through the gate")
            .boxed();
        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let began = tokio::time::Instant::now();
        for i in 0..8 {
            let name = format!("w{i}");
            admin_cms
                .create(&PostParams::default(), &from_json(cm(&name)))
                .await
                .expect("create");
            let seen = common::wait_for(
                &format!("the watch event for {name}"),
                Duration::from_secs(20),
                async {
                    loop {
                        match stream.try_next().await {
                            Ok(Some(WatchEvent::Added(o)))
                                if o.metadata.name.as_deref() == Some(&name) =>
                            {
                                return o;
                            }
                            Ok(Some(_)) => continue,
                            other => panic!("the watch ended: {other:?}"),
                        }
                    }
                },
            )
            .await;
            assert_eq!(seen.metadata.name.as_deref(), Some(name.as_str()));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(
            began.elapsed() >= Duration::from_secs(8),
            "the watch lived {:?}",
            began.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_502_with_a_status() {
    let client = client().await;
    with_namespace(&client, "gate-u", |client, ns| async move {
        let tokens = fixture::accounts(&client, &ns).await;
        fixture::create_lease(&client, &ns, "pool", Some("someone-else"), (3600, 4.0, 1.0)).await;
        let cluster = fixture::cluster(&kubeconfig_path());
        // A loopback port nothing listens on.
        let dead = format!("https://127.0.0.1:{}", common::net::free_port());
        let mut agent = GateAgent::start(AgentOpts {
            ns: &ns,
            pool: "pool",
            dir: scratch("unreachable"),
            cluster: &cluster,
            tokens: &tokens,
            upstream: Some(dead.clone()),
            extra: vec![],
            pod: None,
        });
        agent.wait_serving(START_LIMIT).await;
        let mut h1 = RawConn::open(agent.gate, &agent.gate_ca(), false).await;
        let resp = h1
            .send(
                Method::GET,
                &format!("/api/v1/namespaces/{ns}/configmaps"),
                Some(&tokens.app),
                None,
            )
            .await
            .expect("GET");
        assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{resp:?}");
        assert_eq!(
            resp.headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let status = resp.json();
        assert_eq!(
            (status["kind"].as_str(), status["code"].as_i64()),
            (Some("Status"), Some(502)),
            "{status}"
        );
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&dead) && message.contains("could not be reached"),
            "{message}"
        );
        let log = agent.log_text();
        assert!(log.contains("the API server could not be reached"), "{log}");
        let metrics = agent.metrics().await;
        assert!(
            metric(
                &metrics,
                "zen_lead_gate_requests_total{class=\"read\",outcome=\"upstream_error\"}"
            ) >= 1.0,
            "{metrics}"
        );
    })
    .await;
}

/// A flood of big writes from a leader's app (issue 30, finding 6): the gate
/// holds at most 8 MiB of write bodies at once, so with the API server slowed
/// to 1 s per request, of 40 creates of ~400 KiB sent together 20 are
/// buffered and forwarded and the rest are refused at once with a 503 that
/// names the gate (before: all 40 were buffered, up to 16 MiB each, with no
/// overall cap). A write over 512 KiB is streamed, not buffered, and passes;
/// the gate serves on.
#[tokio::test]
async fn a_flood_of_big_writes_is_held_to_the_gates_body_budget() {
    let client = client().await;
    with_namespace(&client, "gate-b", |client, ns| async move {
        let tokens = fixture::accounts(&client, &ns).await;
        fixture::create_lease(&client, &ns, "pool", Some("someone-else"), (3600, 4.0, 1.0)).await;
        let cluster = fixture::cluster(&kubeconfig_path());
        let api = common::delay_proxy::api_server_addr(&kubeconfig_path());
        let proxy = common::delay_proxy::DelayProxy::start(api).await;
        let mut agent = GateAgent::start(AgentOpts {
            ns: &ns,
            pool: "pool",
            dir: scratch("budget"),
            cluster: &cluster,
            tokens: &tokens,
            upstream: Some(format!("https://{}", proxy.addr)),
            extra: vec![],
            pod: None,
        });
        agent.wait_serving(START_LIMIT).await;
        make_leader(&client, &ns, &agent).await;
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let big_cm = |name: String, kib: usize| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                   "data": {"k": "x".repeat(kib * 1024)}})
        };
        let peak_before = agent.peak_rss_kib();

        proxy.set_latency(Duration::from_secs(1));
        let ca = agent.gate_ca();
        let sends = (0..40).map(|i| {
            let (ca, path, token) = (ca.clone(), path.clone(), tokens.app.clone());
            let body = big_cm(format!("flood-{i}"), 400);
            async move {
                let mut conn = RawConn::open(agent.gate, &ca, false).await;
                conn.send(
                    Method::POST,
                    &path,
                    Some(&token),
                    Some(("application/json", body)),
                )
                .await
            }
        });
        let answers = futures::future::join_all(sends).await;
        let created = answers
            .iter()
            .filter(|a| matches!(a, Ok(r) if r.status == StatusCode::CREATED))
            .count();
        let busy: Vec<String> = answers
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
            .map(|r| r.json()["message"].as_str().unwrap_or_default().to_owned())
            .collect();
        let peak_after = agent.peak_rss_kib();
        eprintln!(
            "40 x 400 KiB creates: {created} created, {} refused busy; agent peak RSS {} -> {} KiB",
            busy.len(),
            peak_before,
            peak_after
        );
        assert_eq!(created + busy.len(), 40, "{answers:?}");
        assert!(created <= 20, "{created} buffered at once: more than 8 MiB");
        assert!(!busy.is_empty(), "the budget was never reached");
        for message in &busy {
            assert!(
                message.contains("zen-lead gate") && message.contains("buffered already"),
                "{message}"
            );
        }
        let busy_metric = metric(
            &agent.metrics().await,
            "zen_lead_gate_requests_total{class=\"write\",outcome=\"busy\"}",
        );
        assert_eq!(busy_metric as usize, busy.len());

        // Over 512 KiB: streamed, sent once; the gate serves on.
        proxy.set_latency(Duration::ZERO);
        let mut conn = RawConn::open(agent.gate, &ca, true).await;
        let big = conn
            .send(
                Method::POST,
                &path,
                Some(&tokens.app),
                Some(("application/json", big_cm("big".into(), 900))),
            )
            .await
            .expect("big create");
        assert_eq!(big.status, StatusCode::CREATED, "{big:?}");
        let small = post_cm(&mut conn, &path, &tokens.app, "after")
            .await
            .expect("create");
        assert_eq!(small.status, StatusCode::CREATED, "{small:?}");
    })
    .await;
}

/// exec and port-forward through the gate: kubectl (WebSocket, and SPDY
/// forced) with a kubeconfig that points at the gate, against a container
/// on `real-0`. A leader's exec runs; a follower's is refused (exec is a
/// write unless `--gate-exempt exec`).
#[tokio::test]
async fn exec_through_the_gate_on_the_real_node() {
    let client = client().await;
    with_namespace(&client, "gate-x", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = from_json(json!({
            "metadata": {"name": "web"},
            "spec": {
                "nodeSelector": {"zen-lead.io/node": "real"},
                "tolerations": [{"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "web", "image": "localhost/zl-testapp:dev", "imagePullPolicy": "Never", "args": ["--name=web", "--listen=:8080"]}],
            }
        }));
        pods.create(&PostParams::default(), &pod).await.expect("create pod");
        let (agent, tokens) = follower(&client, &ns, "exec", &[]).await;
        eventually("the pod to run", Duration::from_secs(90), || async {
            let p = pods.get("web").await.map_err(|e| e.to_string())?;
            let running = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .iter()
                .any(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
            if running { Ok(()) } else { Err("not running yet".to_owned()) }
        })
        .await;
        let kubeconfig = agent.gate_kubeconfig(&tokens.app);
        let cache = agent.dir.join("kubectl-cache");
        // kubectl 1.34 speaks WebSocket (GET + Upgrade) and falls back to
        // SPDY/3.1 (POST + Upgrade); `spdy` forces the latter.
        let exec = |spdy: bool| {
            std::process::Command::new(common::kubectl_path())
                .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", if spdy { "false" } else { "true" })
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("--cache-dir")
                .arg(&cache)
                .args(["exec", "-n", &ns, "web", "--", "/usr/local/bin/testapp", "--name=exec", "--listen=:0", "--run-for=1ms"])
                .output()
                .unwrap_or_else(|e| panic!("kubectl: {e}"))
        };
        let refused = exec(false);
        let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(!refused.status.success(), "a follower's exec ran");
        assert!(stderr.contains("standby") || stderr.contains("503") || stderr.contains("Service Unavailable"), "{stderr}");

        make_leader(&client, &ns, &agent).await;
        for spdy in [false, true] {
            let out = exec(spdy);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("\"name\":\"exec\""),
                "exec (spdy {spdy}) through the leader's gate failed: {stdout} {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                agent.log_text()
            );
        }
        let log = agent.log_text();
        for verb in ["GET", "POST"] {
            assert!(
                log.lines().any(|l| l.contains(&format!("verb={verb} path=/api/v1/namespaces/{ns}/pods/web/exec")) && l.contains("status=101")),
                "no {verb} exec upgrade (101) in the gate's log:\n{log}"
            );
        }
        // port-forward through the leader's gate, then HTTP to the app.
        let mut forward = tokio::process::Command::new(common::kubectl_path())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["port-forward", "-n", &ns, "pod/web", "--address", "127.0.0.1", ":8080"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl port-forward");
        let stdout = forward.stdout.take().expect("stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let line = common::wait_for("kubectl port-forward to listen", Duration::from_secs(30), lines.next_line())
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("kubectl port-forward exited:\n{}", agent.log_text()));
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected port-forward output {line:?}"));
        let body = eventually("the app to answer through the port-forward", Duration::from_secs(30), || common::http_ok("127.0.0.1", port, "GET", "/"))
            .await;
        assert!(body.contains("\"name\":\"web\""), "{body}");
        let _ = forward.kill().await;
        let log = agent.log_text();
        assert!(
            log.lines().any(|l| l.contains(&format!("path=/api/v1/namespaces/{ns}/pods/web/portforward")) && l.contains("status=101")),
            "no port-forward upgrade (101) in the gate's log:\n{log}"
        );

        let metrics = agent.metrics().await;
        assert!(metric(&metrics, "zen_lead_gate_requests_total{class=\"upgrade\",outcome=\"passed\"}") >= 3.0, "{metrics}");
        pods.delete("web", &DeleteParams::default()).await.ok();
    })
    .await;
}
