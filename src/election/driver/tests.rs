//! The election's request sequences against kube-rs's mock API server
//! (tower-test), as `controller::pool::tests` does for a pool's pass: which
//! requests, in which order, with which bodies, and what a refusal does.
//! The Lease watch is left unanswered (an idle watch), so every change the
//! election sees comes from its own reads and writes.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;

/// One request the mock API server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    watch: bool,
    body: Value,
}

/// The answer to one request: status and JSON body, or `None` to leave it
/// unanswered.
type Answer = Option<(u16, Value)>;

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/pool";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

/// A client of a mock API server: watches stay open and silent; every other
/// request gets `answer(request, how many requests of its method came before)`.
fn mock(
    mut answer: impl FnMut(&Seen, usize) -> Answer + Send + 'static,
) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "ns");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut answered: BTreeMap<String, usize> = BTreeMap::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let request = Seen {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
                watch: parts.uri.query().is_some_and(|q| q.contains("watch=true")),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(request.clone());
            let reply = if request.watch {
                None
            } else {
                let n = answered.entry(request.method.to_string()).or_default();
                *n += 1;
                answer(&request, *n - 1)
            };
            match reply {
                Some((status, body)) => {
                    let mut response = Response::new(Body::from(body.to_string().into_bytes()));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                    respond.send_response(response);
                }
                None => held.push(respond),
            }
        }
    });
    (client, seen)
}

fn requests(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Method and path of every request but the watches.
fn calls(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter(|s| !s.watch)
        .map(|s| (s.method.to_string(), s.path.clone()))
        .collect()
}

/// Method and path of every write.
fn writes(seen: &[Seen]) -> Vec<(String, String)> {
    calls(seen)
        .into_iter()
        .filter(|(method, _)| method != "GET")
        .collect()
}

fn call(method: &str, path: &str) -> (String, String) {
    (method.to_owned(), path.to_owned())
}

/// Short timings: a Lease seen missing, with no history, is created one
/// lease duration later (someone may hold it unseen).
fn short() -> Timings {
    Timings::new(
        Duration::from_secs(2),
        Duration::from_secs(1),
        Duration::from_millis(500),
        crate::election::TimingNames::LOCK_FLAGS,
    )
    .expect("valid timings")
}

fn config(can_create: bool, fail_on_denied: bool) -> ElectorConfig {
    ElectorConfig {
        namespace: "ns".to_owned(),
        name: "pool".to_owned(),
        identity: "me".to_owned(),
        instance: "uid-1".to_owned(),
        can_create,
        fixed: Some(Timings::default()),
        create_timings: Timings::default(),
        preferred_defer: Duration::ZERO,
        fail_on_denied,
        leadership_log: None,
    }
}

/// A Lease at `resource_version` held by `holder` (none: free), renewed now.
fn lease(resource_version: &str, holder: Option<&str>, transitions: i32) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "pool", "namespace": "ns", "uid": "lease-uid",
                     "resourceVersion": resource_version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "leaseTransitions": transitions, "acquireTime": now, "renewTime": now}
    })
}

/// The body a write sent, as the server stores it at `resource_version`.
fn stored(body: &Value, resource_version: &str) -> Value {
    let mut lease = body.clone();
    lease["metadata"]["resourceVersion"] = json!(resource_version);
    lease
}

fn not_found() -> (u16, Value) {
    status(404, "NotFound")
}

fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
               "message": format!("{reason} (mock)"), "reason": reason, "code": code}),
    )
}

/// Runs an election on `client` until `done` holds for its status (within
/// 5 s), then shuts it down; returns how `run` ended.
async fn elect_until(
    (client, seen): (Client, &Arc<Mutex<Vec<Seen>>>),
    cfg: ElectorConfig,
    done: impl Fn(&LeaderStatus) -> bool,
) -> Result<(), RunError> {
    let (elector, mut status) = Elector::new(client, cfg, Metrics::default()).expect("elector");
    let (stop, shutdown) = watch::channel(false);
    let run = tokio::spawn(elector.run(shutdown, Duration::from_secs(2)));
    // The status's read guard is dropped at once: the election publishes
    // through the same lock.
    let reached = timeout(Duration::from_secs(5), status.wait_for(|s| done(s)))
        .await
        .is_ok_and(|r| r.is_ok());
    if !reached {
        // Ended on its own (an error), or never got there: report which.
        let ended = timeout(Duration::from_secs(5), run).await;
        return match ended {
            Ok(Ok(result)) => result,
            _ => panic!(
                "the election neither reached the state nor ended ({:?}); requests: {:#?}",
                *status.borrow(),
                calls(&requests(seen))
            ),
        };
    }
    let _ = stop.send(true);
    timeout(Duration::from_secs(5), run)
        .await
        .expect("the election ends on shutdown")
        .expect("the election task")
}

#[tokio::test]
async fn a_free_lease_is_taken_by_one_compare_and_swap_and_cleared_on_shutdown() {
    let (client, seen) = mock(|request, n| match (&request.method, n) {
        (&Method::GET, _) => Some((200, lease("1", None, 4))),
        (&Method::PUT, 0) => Some((200, stored(&request.body, "2"))),
        (&Method::PUT, 1) => Some((200, stored(&request.body, "3"))),
        _ => Some(status(500, "InternalError")),
    });
    elect_until((client, &seen), config(false, false), |s| s.leading)
        .await
        .expect("the election ends cleanly");
    let seen = requests(&seen);
    assert_eq!(
        writes(&seen),
        [call("PUT", LEASE_PATH), call("PUT", LEASE_PATH)],
        "{seen:#?}"
    );
    assert_eq!(calls(&seen)[0], call("GET", LEASE_PATH), "{seen:#?}");
    assert!(
        seen.iter().any(|s| s.watch && s.path == LEASES_PATH),
        "no watch of the Lease: {seen:#?}"
    );
    let writes: Vec<&Value> = seen
        .iter()
        .filter(|s| s.method == Method::PUT)
        .map(|s| &s.body)
        .collect();
    // The take-over: compare-and-swap on the version read, a new term.
    let take = writes[0];
    assert_eq!(take["metadata"]["resourceVersion"], "1", "{take:#}");
    assert_eq!(take["spec"]["holderIdentity"], "me", "{take:#}");
    assert_eq!(take["spec"]["leaseTransitions"], 5, "{take:#}");
    assert_eq!(
        take["metadata"]["annotations"][crate::api::keys::HOLDER_INSTANCE_ANNOTATION],
        "me/uid-1",
        "{take:#}"
    );
    // The release: on the version our write returned, no holder, same term.
    let release = writes[1];
    assert_eq!(release["metadata"]["resourceVersion"], "2", "{release:#}");
    assert!(
        release["spec"]["holderIdentity"]
            .as_str()
            .is_none_or(str::is_empty),
        "{release:#}"
    );
    assert_eq!(release["spec"]["leaseTransitions"], 5, "{release:#}");
}

/// Another candidate takes the Lease just before our compare-and-swap: ours
/// is refused (409), and the election reads the Lease again instead of
/// writing over the new holder. The server compares versions as a real one
/// does, so a write on the old version keeps being refused.
#[tokio::test]
async fn a_lost_compare_and_swap_reads_again_and_leaves_a_live_holder_alone() {
    let mut current = lease("1", None, 0);
    let (client, seen) = mock(move |request, _| match request.method {
        Method::GET => Some((200, current.clone())),
        Method::PUT => {
            if current["spec"]["holderIdentity"].is_null() {
                // Someone else took it meanwhile, and renews.
                current = lease("7", Some("other"), 1);
            }
            Some(status(409, "Conflict"))
        }
        _ => Some(status(500, "InternalError")),
    });
    elect_until((client, &seen), config(false, false), |s| {
        s.holder.as_deref() == Some("other")
    })
    .await
    .expect("the election ends cleanly");
    let seen = requests(&seen);
    let calls = calls(&seen);
    let put = calls
        .iter()
        .position(|c| c == &call("PUT", LEASE_PATH))
        .expect("a compare-and-swap");
    assert!(
        calls[put + 1..].contains(&call("GET", LEASE_PATH)),
        "no read after the conflict: {calls:?}"
    );
    for write in seen.iter().filter(|s| s.method == Method::PUT) {
        assert_eq!(
            write.body["metadata"]["resourceVersion"], "1",
            "wrote over the live holder's version: {:#}",
            write.body
        );
    }
}

#[tokio::test]
async fn a_missing_lease_is_created_with_its_timings_when_allowed() {
    let (client, seen) = mock(|request, n| match (&request.method, n) {
        (&Method::GET, _) => Some(not_found()),
        (&Method::POST, 0) => Some((201, stored(&request.body, "1"))),
        (&Method::PUT, _) => Some((200, stored(&request.body, "2"))),
        _ => Some(status(500, "InternalError")),
    });
    let cfg = ElectorConfig {
        fixed: Some(short()),
        ..config(true, false)
    };
    elect_until((client, &seen), cfg, |s| s.leading)
        .await
        .expect("the election ends cleanly");
    let seen = requests(&seen);
    assert_eq!(
        writes(&seen),
        [call("POST", LEASES_PATH), call("PUT", LEASE_PATH)],
        "a create, then the release on shutdown: {seen:#?}"
    );
    let create = &seen
        .iter()
        .find(|s| s.method == Method::POST)
        .expect("a create")
        .body;
    assert_eq!(create["metadata"]["name"], "pool", "{create:#}");
    assert!(
        create["metadata"].get("resourceVersion").is_none(),
        "{create:#}"
    );
    assert_eq!(create["spec"]["holderIdentity"], "me", "{create:#}");
    assert_eq!(create["spec"]["leaseDurationSeconds"], 2, "{create:#}");
    let annotations = &create["metadata"]["annotations"];
    assert_eq!(
        annotations[crate::api::keys::RENEW_DEADLINE_ANNOTATION],
        format_seconds(short().renew_deadline()),
        "{create:#}"
    );
    assert_eq!(
        annotations[crate::api::keys::RETRY_PERIOD_ANNOTATION],
        format_seconds(short().retry_period()),
        "{create:#}"
    );
}

#[tokio::test]
async fn a_missing_lease_is_only_watched_when_creating_is_not_allowed() {
    let (client, seen) = mock(|request, _| match request.method {
        Method::GET => Some(not_found()),
        _ => Some(status(500, "InternalError")),
    });
    let cfg = ElectorConfig {
        fixed: Some(short()),
        ..config(false, false)
    };
    let (elector, _status) = Elector::new(client, cfg, Metrics::default()).expect("elector");
    let (stop, shutdown) = watch::channel(false);
    let run = tokio::spawn(elector.run(shutdown, Duration::from_secs(2)));
    // Past the lease duration, when a candidate allowed to would create it.
    sleep(short().lease_duration() + Duration::from_secs(1)).await;
    let _ = stop.send(true);
    timeout(Duration::from_secs(5), run)
        .await
        .expect("the election ends on shutdown")
        .expect("the election task")
        .expect("the election ends cleanly");
    assert_eq!(
        writes(&requests(&seen)),
        [],
        "wrote a Lease it may not create"
    );
}

#[tokio::test]
async fn a_refused_write_ends_the_election_with_what_rbac_must_allow() {
    let (client, seen) = mock(|request, _| match request.method {
        Method::GET => Some((200, lease("1", None, 0))),
        _ => Some(status(403, "Forbidden")),
    });
    let err = elect_until((client, &seen), config(false, true), |s| s.leading)
        .await
        .expect_err("a refused write is an error when fail_on_denied");
    let text = err.to_string();
    assert!(
        matches!(err, RunError::Denied { .. }) && text.contains("get, watch and update on leases"),
        "{text}"
    );
    assert_eq!(writes(&requests(&seen)), [call("PUT", LEASE_PATH)]);
}
