//! The request sequences of `apply`, `lease` and `deposed` against kube-rs's
//! mock API server (tower-test): which requests, in which order, with which
//! bodies, and what a refusal does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

use super::*;
use crate::controller::decide::{CandidateCondition, RoleWrite, ScaleAction, WorkloadKind};
use crate::controller::fencing::{Fencing, FencingSettings};
use crate::controller::metrics::Metrics;
use crate::controller::watch::Cache;
use plan::{PodWrite, PodWrites};

/// One request the mock API server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    content_type: String,
    body: Value,
}

/// A scripted answer: status and JSON body.
type Answer = (u16, Value);

/// A context whose client talks to a mock API server answering `script`
/// in order (any request past the script gets a 500). Returns what the
/// server saw.
fn mock(script: Vec<Answer>) -> (Context, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            log.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            });
            let (status, body) = script.next().unwrap_or((500, json!({})));
            let mut response = Response::new(Body::from(body.to_string().into_bytes()));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            respond.send_response(response);
        }
    });
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "zen-lead-test".to_owned(),
            instance: None,
        },
    );
    let ctx = Context::new(
        client,
        Cache::empty(),
        recorder,
        Metrics::default(),
        false,
        false,
        Fencing::new(
            FencingSettings {
                default_on: false,
                policy_name: "zen-lead-fencing".to_owned(),
                scope_interval: Duration::from_secs(30),
                scope_grace: Duration::from_secs(120),
                watch_namespace: None,
            },
            Default::default(),
            Default::default(),
        ),
    );
    (ctx, seen)
}

fn requests(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn calls(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .map(|s| (s.method.to_string(), s.path.clone()))
        .collect()
}

fn key() -> PoolKey {
    PoolKey::new("ns".to_owned(), "web".to_owned())
}

fn pod_json(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns"}})
}

fn status_json(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": reason,
           "reason": reason, "code": code})
}

fn write(pod: &str, role: Option<RoleWrite>, condition: bool) -> PodWrite {
    PodWrite {
        pod: pod.to_owned(),
        role,
        condition: condition.then(|| CandidateCondition {
            status: true,
            reason: "AgentStarted",
            message: "ok".to_owned(),
        }),
    }
}

#[tokio::test]
async fn pod_writes_go_out_demotion_first_and_remember_the_leader() {
    let (ctx, seen) = mock(vec![
        (200, pod_json("old")),
        (200, pod_json("new")),
        (200, pod_json("other")),
    ]);
    let writes = PodWrites {
        in_order: vec![
            write("old", Some(RoleWrite::Follower), false),
            write("new", Some(RoleWrite::Leader), true),
        ],
        parallel: vec![write("other", None, true)],
    };
    apply::pod_writes(&ctx, &key(), &writes)
        .await
        .expect("writes");
    let seen = requests(&seen);
    assert_eq!(
        calls(&seen),
        vec![
            (
                "PATCH".into(),
                "/api/v1/namespaces/ns/pods/old/status".into()
            ),
            (
                "PATCH".into(),
                "/api/v1/namespaces/ns/pods/new/status".into()
            ),
            (
                "PATCH".into(),
                "/api/v1/namespaces/ns/pods/other/status".into()
            ),
        ]
    );
    // A role alone is a merge patch; a condition needs the strategic merge.
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    assert_eq!(
        seen[1].content_type,
        "application/strategic-merge-patch+json"
    );
    assert_eq!(
        seen[0].body["metadata"]["labels"]["zen-lead.io/role"],
        "follower"
    );
    assert_eq!(
        seen[1].body["metadata"]["labels"]["zen-lead.io/role"],
        "leader"
    );
    assert_eq!(
        seen[1].body["status"]["conditions"][0]["type"],
        crate::api::keys::CANDIDATE_READINESS_GATE
    );
    assert!(seen[2].body.get("metadata").is_none(), "{:?}", seen[2].body);
    assert_eq!(
        ctx.with_memory(&key(), |m| m.leaders.clone()),
        BTreeSet::from(["new".to_owned()])
    );
}

#[tokio::test]
async fn a_failed_demotion_stops_the_promotion() {
    let (ctx, seen) = mock(vec![(500, status_json(500, "InternalError"))]);
    let writes = PodWrites {
        in_order: vec![
            write("old", Some(RoleWrite::Follower), false),
            write("new", Some(RoleWrite::Leader), false),
        ],
        parallel: vec![write("other", Some(RoleWrite::Follower), false)],
    };
    let err = apply::pod_writes(&ctx, &key(), &writes)
        .await
        .expect_err("the demotion failed");
    assert!(
        err.to_string()
            .starts_with("set the role of Pod ns/old failed"),
        "{err}"
    );
    assert_eq!(
        requests(&seen).len(),
        1,
        "nothing after the failed demotion"
    );
    assert!(ctx.with_memory(&key(), |m| m.leaders.is_empty()));
}

#[tokio::test]
async fn a_role_removal_deletes_the_label_and_a_gone_pod_is_no_error() {
    let (ctx, seen) = mock(vec![(404, status_json(404, "NotFound"))]);
    ctx.with_memory(&key(), |m| m.leaders.insert("gone".to_owned()));
    let writes = PodWrites {
        in_order: vec![write("gone", Some(RoleWrite::Remove), false)],
        parallel: vec![],
    };
    apply::pod_writes(&ctx, &key(), &writes)
        .await
        .expect("404 is fine");
    let seen = requests(&seen);
    assert_eq!(
        seen[0].body["metadata"]["labels"]["zen-lead.io/role"],
        Value::Null
    );
    assert!(
        seen[0].body["metadata"]["labels"]
            .as_object()
            .is_some_and(|l| l.contains_key("zen-lead.io/role")),
        "null deletes the key: {:?}",
        seen[0].body
    );
    assert!(ctx.with_memory(&key(), |m| m.leaders.is_empty()));
}

fn policy() -> LeaderPolicy {
    let mut p = LeaderPolicy::new("web", Default::default());
    p.metadata.namespace = Some("ns".to_owned());
    p.metadata.uid = Some("policy-uid".to_owned());
    p.metadata.resource_version = Some("7".to_owned());
    p
}

fn desired() -> lease::Desired {
    let p = policy();
    let timings = p.spec.timings().expect("default timings");
    lease::Desired::new(&key(), &p, timings)
}

#[tokio::test]
async fn a_missing_lease_is_created_and_an_existing_one_adopted_only_when_zen_lead_made_it() {
    // Not in the cache: created.
    let created = lease::fresh(&key(), None, &desired());
    let mut stored = serde_json::to_value(&created).unwrap_or_default();
    stored["metadata"]["resourceVersion"] = json!("1");
    let (ctx, seen) = mock(vec![(201, stored)]);
    let ensured = lease::ensure(&ctx, &key(), &desired(), false)
        .await
        .expect("created");
    assert!(matches!(ensured, lease::Ensured::Managed(_)), "{ensured:?}");
    let seen = requests(&seen);
    assert_eq!(
        calls(&seen),
        vec![(
            "POST".into(),
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases".into()
        )]
    );
    assert_eq!(
        seen[0].body["metadata"]["labels"][crate::api::keys::LEASE_POLICY_LABEL],
        "web"
    );

    let post_get = vec![
        (
            "POST".to_owned(),
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases".to_owned(),
        ),
        (
            "GET".to_owned(),
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/web".to_owned(),
        ),
    ];
    // Another controller's Lease of that name (client-go's leader election
    // writes no zen-lead marks): read, and left untouched.
    let foreign = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "42"},
        "spec": {"holderIdentity": "someone", "leaseDurationSeconds": 137}});
    let (ctx, seen) = mock(vec![
        (409, status_json(409, "AlreadyExists")),
        (200, foreign.clone()),
    ]);
    let ensured = lease::ensure(&ctx, &key(), &desired(), false)
        .await
        .expect("read");
    match ensured {
        lease::Ensured::NotManaged { holder } => assert_eq!(holder.as_deref(), Some("someone")),
        other => panic!("a foreign Lease was adopted: {other:?}"),
    }
    assert_eq!(
        calls(&requests(&seen)),
        post_get,
        "no write to a foreign Lease"
    );

    // With the policy's opt-in, or made by a zen-lead agent (the timings it
    // writes into a Lease it creates): replaced with the resourceVersion
    // read (compare-and-swap), the holder kept.
    let mut by_agent = foreign.clone();
    by_agent["metadata"]["annotations"] =
        json!({crate::api::keys::RENEW_DEADLINE_ANNOTATION: "10"});
    for (lease_json, adopt) in [(foreign, true), (by_agent, false)] {
        let (ctx, seen) = mock(vec![
            (409, status_json(409, "AlreadyExists")),
            (200, lease_json.clone()),
            (200, lease_json),
        ]);
        let ensured = lease::ensure(&ctx, &key(), &desired(), adopt)
            .await
            .expect("adopted");
        assert!(matches!(ensured, lease::Ensured::Managed(_)), "{ensured:?}");
        let seen = requests(&seen);
        let mut want = post_get.clone();
        want.push((
            "PUT".into(),
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/web".into(),
        ));
        assert_eq!(calls(&seen), want);
        assert_eq!(seen[2].body["metadata"]["resourceVersion"], "42");
        assert_eq!(
            seen[2].body["spec"]["holderIdentity"], "someone",
            "the holder is kept"
        );
        assert_eq!(
            seen[2].body["metadata"]["ownerReferences"][0]["uid"],
            "policy-uid"
        );
    }
}

#[test]
fn a_lease_is_zen_leads_by_its_policy_label_policy_owner_or_agent_timings() {
    use crate::api::keys::{LEASE_POLICY_LABEL, RENEW_DEADLINE_ANNOTATION};
    let lease = |meta: Value| -> k8s_openapi::api::coordination::v1::Lease {
        serde_json::from_value(json!({"metadata": meta})).unwrap_or_default()
    };
    let cases = [
        (json!({"name": "web"}), false),
        (json!({"labels": {"app": "operator"}}), false),
        (json!({"labels": {LEASE_POLICY_LABEL: "web"}}), true),
        (
            json!({"annotations": {RENEW_DEADLINE_ANNOTATION: "10"}}),
            true,
        ),
        (
            json!({"annotations": {"control-plane.alpha.kubernetes.io/leader": "{}"}}),
            false,
        ),
        (
            json!({"ownerReferences": [{"apiVersion": "coordination.kube-zen.io/v1alpha1",
                "kind": "LeaderPolicy", "name": "web", "uid": "old"}]}),
            true,
        ),
        (
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                "name": "web", "uid": "d"}]}),
            false,
        ),
        (
            json!({"ownerReferences": [{"apiVersion": "example.com/v1", "kind": "LeaderPolicy",
                "name": "web", "uid": "x"}]}),
            false,
        ),
    ];
    for (meta, want) in cases {
        assert_eq!(
            lease::made_by_zen_lead(&lease(meta.clone())),
            want,
            "{meta}"
        );
    }
}

#[tokio::test]
async fn a_lost_swap_is_not_an_error_when_expiring_or_handing_off() {
    let l: Lease = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "5",
                     "annotations": {crate::api::keys::HOLDER_INSTANCE_ANNOTATION: "x"}},
        "spec": {"holderIdentity": "a_1"}}))
    .expect("lease");
    let (ctx, seen) = mock(vec![
        (409, status_json(409, "Conflict")),
        (200, serde_json::to_value(&l).unwrap_or_default()),
    ]);
    assert!(
        !lease::expire(&ctx, &key(), &l)
            .await
            .expect("conflict is fine")
    );
    assert!(lease::hand_off(&ctx, &key(), &l, "b_2").await.expect("ok"));
    let seen = requests(&seen);
    assert_eq!(seen[0].body["spec"].get("holderIdentity"), None);
    assert!(
        seen[0].body["metadata"]["annotations"]
            .get(crate::api::keys::HOLDER_INSTANCE_ANNOTATION)
            .is_none()
    );
    assert_eq!(
        seen[1].body["metadata"]["annotations"][crate::api::keys::PREFERRED_HOLDER_ANNOTATION],
        "b_2"
    );
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "5");
}

#[tokio::test]
async fn finalizers_are_swapped_with_the_policys_resource_version() {
    let mut p = policy();
    p.metadata.finalizers = Some(vec!["other.io/keep".to_owned()]);
    let (ctx, seen) = mock(vec![
        (200, serde_json::to_value(&p).unwrap_or_default()),
        (404, status_json(404, "NotFound")),
    ]);
    apply::finalizer(&ctx, &key(), &p, true)
        .await
        .expect("added");
    apply::finalizer(&ctx, &key(), &p, false)
        .await
        .expect("a policy already gone needs no removal");
    let seen = requests(&seen);
    assert_eq!(
        seen[0].body["metadata"]["finalizers"],
        json!(["other.io/keep", crate::api::keys::RESTORE_FINALIZER])
    );
    assert_eq!(seen[0].body["metadata"]["resourceVersion"], "7");
    assert_eq!(
        seen[1].body["metadata"]["finalizers"],
        json!(["other.io/keep"])
    );
}

#[tokio::test]
async fn scale_actions_reach_the_right_kind_and_subresource() {
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "ns"}});
    let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": "db", "namespace": "ns"}, "spec": {"replicas": 1}});
    let (ctx, seen) = mock(vec![(200, sts.clone()), (200, scale), (200, sts)]);
    let actions = [
        ScaleAction::Remember {
            kind: WorkloadKind::StatefulSet,
            name: "db".into(),
            original: 3,
        },
        ScaleAction::Scale {
            kind: WorkloadKind::StatefulSet,
            name: "db".into(),
            replicas: 1,
        },
        ScaleAction::Forget {
            kind: WorkloadKind::StatefulSet,
            name: "db".into(),
        },
    ];
    for action in &actions {
        scale::perform(&ctx, &key(), action).await.expect("action");
    }
    let seen = requests(&seen);
    assert_eq!(
        calls(&seen),
        vec![
            (
                "PATCH".into(),
                "/apis/apps/v1/namespaces/ns/statefulsets/db".into()
            ),
            (
                "PATCH".into(),
                "/apis/apps/v1/namespaces/ns/statefulsets/db/scale".into()
            ),
            (
                "PATCH".into(),
                "/apis/apps/v1/namespaces/ns/statefulsets/db".into()
            ),
        ]
    );
    let annotations = |s: &Seen| s.body["metadata"]["annotations"].clone();
    assert_eq!(
        annotations(&seen[0])[crate::api::keys::ORIGINAL_REPLICAS_ANNOTATION],
        "3"
    );
    assert_eq!(
        annotations(&seen[0])[crate::api::keys::SCALED_BY_ANNOTATION],
        "web"
    );
    assert_eq!(seen[1].body, json!({"spec": {"replicas": 1}}));
    assert_eq!(
        annotations(&seen[2])[crate::api::keys::ORIGINAL_REPLICAS_ANNOTATION],
        Value::Null
    );
}

fn running_pod(name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": uid,
                     "labels": {crate::api::keys::POOL_LABEL: "web"}},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
            "image": "i", "imageID": "", "state": {"running": {}}}]}})
}

#[tokio::test]
async fn a_deposed_leader_is_deleted_only_after_fresh_reads_and_by_uid() {
    let held_by_b = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "9"},
        "spec": {"holderIdentity": "b_2222"}});
    let mut a = crate::controller::decide::fixtures::pod("a");
    a.identity = Some("a_1111".to_owned());
    a.uid = "uid-a".to_owned();
    a.activation = Some(crate::api::Activation::Start);
    // The API server still shows a running its app: deleted, by UID.
    let (ctx, seen) = mock(vec![
        (200, held_by_b.clone()),
        (200, running_pod("a", "uid-a")),
        (200, running_pod("a", "uid-a")),
    ]);
    deposed::remove(&ctx, &key(), &policy(), &[&a])
        .await
        .expect("removed");
    let got = requests(&seen);
    let got: Vec<_> = calls(&got)
        .into_iter()
        .filter(|(_, p)| !p.contains("/events"))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "GET".into(),
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/web".into()
            ),
            ("GET".into(), "/api/v1/namespaces/ns/pods/a".into()),
            ("DELETE".into(), "/api/v1/namespaces/ns/pods/a".into()),
        ]
    );
    let delete = requests(&seen)
        .into_iter()
        .find(|s| s.method == Method::DELETE)
        .expect("delete");
    assert_eq!(delete.body["preconditions"]["uid"], "uid-a");

    // Re-created under the same name (other UID): not deleted.
    let (ctx, seen) = mock(vec![(200, held_by_b), (200, running_pod("a", "uid-new"))]);
    deposed::remove(&ctx, &key(), &policy(), &[&a])
        .await
        .expect("nothing to do");
    assert!(
        requests(&seen).iter().all(|s| s.method != Method::DELETE),
        "a re-created pod is never deleted"
    );

    // The fresh Lease is free: the pod may take it back itself; nothing.
    let free = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "10"}, "spec": {}});
    let (ctx, seen) = mock(vec![(200, free)]);
    deposed::remove(&ctx, &key(), &policy(), &[&a])
        .await
        .expect("nothing to do");
    assert_eq!(requests(&seen).len(), 1);
}

#[test]
fn conforming_a_lease_is_idempotent_and_keeps_the_holder() {
    let want = desired();
    let mut l = lease::fresh(&key(), None, &want);
    assert!(!lease::conform(&mut l, &want), "a fresh Lease conforms");
    // An edit of scheduledRuns and a foreign controller owner are fixed.
    let mut once = want.clone();
    once.scheduled_once = true;
    l.metadata.owner_references = Some(vec![OwnerReference {
        uid: "old-policy".to_owned(),
        controller: Some(true),
        ..OwnerReference::default()
    }]);
    l.spec.get_or_insert_with(Default::default).holder_identity = Some("a_1".to_owned());
    assert!(lease::conform(&mut l, &once));
    assert!(
        !lease::conform(&mut l, &once),
        "second pass changes nothing"
    );
    let annotations = l.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get(crate::api::keys::SCHEDULED_RUNS_ANNOTATION)
            .map(String::as_str),
        Some("once")
    );
    let owners = l.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].uid, "policy-uid");
    assert_eq!(
        l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()),
        Some("a_1")
    );
    // Back to every run: the annotation goes.
    assert!(lease::conform(&mut l, &want));
    assert!(
        !l.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key(crate::api::keys::SCHEDULED_RUNS_ANNOTATION)
    );
}

#[test]
fn a_fenced_pool_lease_carries_the_label_and_its_pods_exactly_while_fenced() {
    use crate::api::keys::{FENCED_LABEL, FENCED_PODS_ANNOTATION};
    let plain = desired();
    let mut l = lease::fresh(&key(), None, &plain);
    let mut fenced = plain.clone();
    fenced.fenced_pods = Some("uid-a,uid-b".to_owned());
    assert!(
        lease::conform(&mut l, &fenced),
        "turning fencing on is a change"
    );
    assert!(
        !lease::conform(&mut l, &fenced),
        "second pass changes nothing"
    );
    let label = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.metadata
            .labels
            .clone()
            .unwrap_or_default()
            .get(FENCED_LABEL)
            .cloned()
    };
    let pods = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get(FENCED_PODS_ANNOTATION)
            .cloned()
    };
    assert_eq!(label(&l).as_deref(), Some("true"));
    assert_eq!(pods(&l).as_deref(), Some("uid-a,uid-b"));
    // A pod joins: the list follows.
    fenced.fenced_pods = Some("uid-a,uid-b,uid-c".to_owned());
    assert!(lease::conform(&mut l, &fenced));
    assert_eq!(pods(&l).as_deref(), Some("uid-a,uid-b,uid-c"));
    // Fencing off: both go, so the policy's binding no longer selects it.
    assert!(lease::conform(&mut l, &plain));
    assert_eq!((label(&l), pods(&l)), (None, None));
    assert!(!lease::conform(&mut l, &plain));
}

#[test]
fn a_paused_pool_lease_carries_the_pause_exactly_while_paused() {
    use crate::api::keys::PAUSED_ANNOTATION;
    use crate::election::record::Record;
    let plain = desired();
    let mut l = lease::fresh(&key(), None, &plain);
    l.metadata.resource_version = Some("1".to_owned());
    l.spec.get_or_insert_with(Default::default).holder_identity = Some("a_1".to_owned());
    let mut paused = plain.clone();
    paused.paused = true;
    assert!(lease::conform(&mut l, &paused), "pausing is a change");
    assert!(
        !lease::conform(&mut l, &paused),
        "second pass changes nothing"
    );
    let annotation = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get(PAUSED_ANNOTATION)
            .cloned()
    };
    assert_eq!(annotation(&l).as_deref(), Some("true"));
    // What the agents read, and the holder untouched.
    let record = Record::from_lease(&l).expect("record");
    assert!(record.paused);
    assert_eq!(record.holder.as_deref(), Some("a_1"));
    // Resumed: the annotation goes.
    assert!(lease::conform(&mut l, &plain));
    assert_eq!(annotation(&l), None);
    assert!(!Record::from_lease(&l).expect("record").paused);
    assert!(!lease::conform(&mut l, &plain));
    // A Lease created for a paused pool is paused from its first version.
    let fresh = lease::fresh(&key(), None, &paused);
    assert_eq!(annotation(&fresh).as_deref(), Some("true"));
    // A hand-written value the agents would read as a pause (they trim it)
    // goes when the pool is not paused, and is made exact when it is.
    for (value, want_paused) in [(" true ", false), (" true ", true), ("yes", true)] {
        l.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(PAUSED_ANNOTATION.to_owned(), value.to_owned());
        let want = if want_paused { &paused } else { &plain };
        assert!(lease::conform(&mut l, want), "{value:?}");
        assert_eq!(
            annotation(&l).as_deref(),
            want_paused.then_some("true"),
            "{value:?}"
        );
        assert_eq!(Record::from_lease(&l).expect("record").paused, want_paused);
    }
}

#[test]
fn a_lease_deleted_while_held_comes_back_naming_its_holder() {
    let last = crate::controller::context::HolderSeen {
        identity: "a_1".to_owned(),
        instance: Some("uid-a".to_owned()),
        transitions: 4,
    };
    let l = lease::fresh(&key(), Some(last), &desired());
    let spec = l.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("a_1"));
    assert_eq!(spec.lease_transitions, Some(4));
    assert!(spec.renew_time.is_some() && spec.acquire_time.is_some());
    let annotations: BTreeMap<String, String> = l.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get(crate::api::keys::HOLDER_INSTANCE_ANNOTATION)
            .cloned(),
        Some(crate::election::record::instance_value("a_1", "uid-a"))
    );
}

#[test]
fn the_leader_change_is_reported_once_with_its_leaderless_gap() {
    use crate::api::{Holder, LeaderPolicyStatus};
    use std::time::{Duration, SystemTime};
    let with = |name: Option<&str>| LeaderPolicyStatus {
        current_holder: name.map(|n| Holder {
            name: Some(n.to_owned()),
            identity: format!("{n}_id"),
            ..Holder::default()
        }),
        ..LeaderPolicyStatus::default()
    };
    let mut m = crate::controller::context::PoolMemory::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    // First sight: the status stood for what was reported; same leader.
    assert_eq!(
        report::leader_change(&mut m, Some(&with(Some("a"))), &with(Some("a")), t0),
        None
    );
    // a goes: reported as leaderless, the gap starts now.
    let lost = report::leader_change(&mut m, None, &with(None), t0).expect("change");
    assert_eq!(
        (lost.old.as_deref(), lost.new.as_deref()),
        (Some("a"), None)
    );
    // Still leaderless: nothing new, and the gap keeps its start.
    let later = t0 + Duration::from_secs(1);
    assert_eq!(
        report::leader_change(&mut m, None, &with(None), later),
        None
    );
    // b leads: one change, with the gap since t0.
    let won = report::leader_change(&mut m, None, &with(Some("b")), later).expect("change");
    assert_eq!((won.old, won.new.as_deref()), (None, Some("b")));
    assert_eq!(won.leaderless_since, Some(t0));
    assert_eq!(m.leaderless_since, None);
}
