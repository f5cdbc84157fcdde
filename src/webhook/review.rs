//! One AdmissionReview in, one out: parsing, the lookups, and the response.
//!
//! Every body that parses as an AdmissionReview gets an AdmissionReview back
//! (a malformed pod is refused with `allowed: false` and a message); anything
//! else is an HTTP 400 with a message. Nothing here panics on input.

use std::task::Poll;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::Instrument;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio::time::{Instant, timeout_at};

use super::agent::InjectConfig;
use super::inject::{self, Decision, Facts, Outcome, PolicyState, Read, Refusal};
use super::lookup::{FALLBACK_TIMEOUT, Lookup, LookupError};
use super::membership::OwnerMeta;

/// The time all lookups of one admission share, from the moment its body
/// has been read: owners (up to two), the LeaderPolicy, a `process` pod's
/// Job. They are served from watch-fed indexes at once; only a miss waits
/// for a GET (each also bounded by [`FALLBACK_TIMEOUT`]). When time runs out
/// the pod is refused (fail closed) while the API server still listens: it
/// waits `timeoutSeconds`, 3 s for pods not yet in a pool, and treats no
/// answer as its `failurePolicy` says, `Ignore` for those, which would admit
/// the pod unchanged. 2.2 s leaves 0.8 s of the 3 for the request's way
/// there and back and the rest of the admission.
pub const LOOKUP_BUDGET: Duration = Duration::from_millis(2200);

const REVIEW_KIND: &str = "AdmissionReview";
const V1: &str = "admission.k8s.io/v1";
const V1BETA1: &str = "admission.k8s.io/v1beta1";

/// What the HTTP layer sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    /// JSON AdmissionReview, or a plain-text message for a 400.
    pub body: Vec<u8>,
    /// Metric label: an [`Outcome`], `denied`, `lookup_failed` (refused
    /// because a read failed), `malformed` or `bad_request`.
    pub outcome: &'static str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    #[serde(default)]
    uid: String,
    kind: Option<Gvk>,
    namespace: Option<String>,
    name: Option<String>,
    operation: Option<String>,
    #[serde(borrow)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct StatusOut {
    code: u16,
    message: String,
}

fn bad_request(message: String) -> Reply {
    Reply {
        status: StatusCode::BAD_REQUEST,
        body: message.into_bytes(),
        outcome: "bad_request",
    }
}

fn review_reply(api_version: &str, response: ResponseOut<'_>, outcome: &'static str) -> Reply {
    let review = ReviewOut {
        api_version,
        kind: REVIEW_KIND,
        response,
    };
    match serde_json::to_vec(&review) {
        Ok(body) => Reply {
            status: StatusCode::OK,
            body,
            outcome,
        },
        // Only strings and numbers are serialised; cannot happen, but a 500
        // with a message beats a panic.
        Err(err) => Reply {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: format!("could not encode the AdmissionReview response: {err}").into_bytes(),
            outcome: "bad_request",
        },
    }
}

fn refuse(
    api_version: &str,
    uid: &str,
    code: u16,
    message: String,
    outcome: &'static str,
) -> Reply {
    review_reply(
        api_version,
        ResponseOut {
            uid,
            allowed: false,
            status: Some(StatusOut { code, message }),
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        },
        outcome,
    )
}

fn allow(api_version: &str, uid: &str, decision: Decision) -> Reply {
    let patch = if decision.patch.is_empty() {
        None
    } else {
        match serde_json::to_vec(&decision.patch) {
            Ok(bytes) => Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            Err(err) => {
                return refuse(
                    api_version,
                    uid,
                    500,
                    format!("zen-lead: could not encode the patch: {err}"),
                    "malformed",
                );
            }
        }
    };
    review_reply(
        api_version,
        ResponseOut {
            uid,
            allowed: true,
            status: None,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: decision.warnings,
        },
        decision.outcome.as_str(),
    )
}

/// Answers one request body; its lookups share [`LOOKUP_BUDGET`] from now.
pub async fn admit<L: Lookup>(body: &[u8], lookup: &L, config: &InjectConfig) -> Reply {
    let deadline = Instant::now() + LOOKUP_BUDGET;
    let review: ReviewIn<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(err) => {
            return bad_request(format!(
                "the request body is not a JSON AdmissionReview: {err}"
            ));
        }
    };
    let api_version = match envelope_version(review.api_version.as_deref(), review.kind.as_deref())
    {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let Some(request) = review.request else {
        return bad_request("the AdmissionReview has no request".to_owned());
    };
    let uid = request.uid.as_str();
    if uid.is_empty() {
        return refuse(
            api_version,
            uid,
            400,
            "zen-lead: request.uid is empty".to_owned(),
            "malformed",
        );
    }
    // Only pod CREATEs are registered; anything else passes untouched.
    let is_pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
    if !is_pod || request.operation.as_deref() != Some("CREATE") {
        return allow(api_version, uid, plain(Outcome::NotInPool));
    }
    let pod = match pod_of(request.object, api_version, uid) {
        Ok(pod) => pod,
        Err(reply) => return reply,
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("");
    let name = pod_name(request.name.as_deref(), &pod);
    let span = tracing::debug_span!("admit", namespace, pod = %name, uid);
    answer(&pod, namespace, lookup, config, api_version, uid, deadline)
        .instrument(span)
        .await
}

/// The review's apiVersion when the envelope is one we answer (v1 or
/// v1beta1 AdmissionReview), else the 400 saying what is wrong.
fn envelope_version<'a>(
    api_version: Option<&'a str>,
    kind: Option<&str>,
) -> Result<&'a str, Reply> {
    let api_version = match api_version {
        Some(v @ (V1 | V1BETA1)) => v,
        other => {
            return Err(bad_request(format!(
                "apiVersion {other:?} is not {V1:?} (register the webhook with \
                 admissionReviewVersions: [\"v1\"])"
            )));
        }
    };
    if kind != Some(REVIEW_KIND) {
        return Err(bad_request(format!(
            "kind {:?} is not {REVIEW_KIND:?}",
            kind.unwrap_or("")
        )));
    }
    Ok(api_version)
}

/// The pod of a pod CREATE, or the refusal saying why it cannot be used.
fn pod_of(raw: Option<&RawValue>, api_version: &str, uid: &str) -> Result<Pod, Reply> {
    let Some(raw) = raw else {
        return Err(refuse(
            api_version,
            uid,
            400,
            "zen-lead: request.object is missing from a pod CREATE".to_owned(),
            "malformed",
        ));
    };
    let pod: Pod = match serde_json::from_str(raw.get()) {
        Ok(p) => p,
        Err(err) => {
            return Err(refuse(
                api_version,
                uid,
                400,
                format!("zen-lead: request.object is not a valid Pod: {err}"),
                "malformed",
            ));
        }
    };
    // Found by fuzzing: without a spec there is nothing to inject into, and a
    // patch adding under /spec would not apply. The API server requires it too.
    if pod.spec.is_none() {
        return Err(refuse(
            api_version,
            uid,
            400,
            "zen-lead: request.object is not a valid Pod: it has no spec".to_owned(),
            "malformed",
        ));
    }
    Ok(pod)
}

/// The pod's name for logs; at CREATE most pods only have generateName.
fn pod_name(request_name: Option<&str>, pod: &Pod) -> String {
    match (request_name, pod.metadata.name.as_deref()) {
        (Some(n), _) | (None, Some(n)) if !n.is_empty() => n.to_owned(),
        _ => format!(
            "{}*",
            pod.metadata.generate_name.as_deref().unwrap_or_default()
        ),
    }
}

/// Decides for the pod and answers with the patch, or with the refusal.
async fn answer<L: Lookup>(
    pod: &Pod,
    namespace: &str,
    lookup: &L,
    config: &InjectConfig,
    api_version: &str,
    uid: &str,
    deadline: Instant,
) -> Reply {
    let result = decide_by(pod, namespace, lookup, config, deadline).await;
    match result {
        Ok(decision) => {
            if decision.outcome != Outcome::NotInPool {
                tracing::debug!(outcome = decision.outcome.as_str(), warnings = ?decision.warnings, "admitted");
            }
            allow(api_version, uid, decision)
        }
        Err(refusal) if refusal.is_unreadable() => {
            tracing::warn!(reason = %refusal, "refused: a lookup failed");
            // 503: zen-lead's own part failed, not the request; the pod's
            // controller retries the create.
            refuse(
                api_version,
                uid,
                503,
                format!("zen-lead: {refusal}"),
                "lookup_failed",
            )
        }
        Err(refusal) => {
            tracing::info!(reason = %refusal, "denied");
            refuse(
                api_version,
                uid,
                403,
                format!("zen-lead: {refusal}"),
                "denied",
            )
        }
    }
}

fn plain(outcome: Outcome) -> Decision {
    Decision {
        outcome,
        patch: Vec::new(),
        warnings: Vec::new(),
    }
}

/// The decision for a pod: the reads it needs, then the decision on them.
/// The reads share [`LOOKUP_BUDGET`] from now.
pub async fn decide<L: Lookup>(
    pod: &Pod,
    namespace: &str,
    lookup: &L,
    config: &InjectConfig,
) -> Result<Decision, Refusal> {
    decide_by(
        pod,
        namespace,
        lookup,
        config,
        Instant::now() + LOOKUP_BUDGET,
    )
    .await
}

/// [`decide`] with the lookups' deadline: every read [`inject::next_read`]
/// asks for, then [`inject::decide`] on what was read. A read that fails or
/// does not finish by `deadline` is recorded as such; the decision refuses the
/// pod when its answer could make the pod a pool member, or change how it is
/// wired: it fails closed.
pub async fn decide_by<L: Lookup>(
    pod: &Pod,
    namespace: &str,
    lookup: &L,
    config: &InjectConfig,
    deadline: Instant,
) -> Result<Decision, Refusal> {
    let mut facts = Facts::new(namespace);
    while let Some(read) = inject::next_read(pod, &facts, config) {
        match read {
            Read::Owner(owner) => {
                let answer = read_owner(namespace, &owner, lookup, deadline).await;
                facts.owner_read(&owner, answer);
            }
            Read::Policy { pool } => {
                let policy = within(deadline, lookup.policy(namespace, &pool)).await;
                facts.policy = Some(policy.unwrap_or_else(|()| PolicyState::Unknown {
                    reason: out_of_time(),
                }));
            }
            Read::Job(job) => {
                facts.job = Some(read_owner(namespace, &job, lookup, deadline).await);
            }
        }
    }
    inject::decide(pod, &facts, config)
}

/// One owner read, bounded by the admission's deadline; `Err` is the reason
/// it could not be read.
async fn read_owner<L: Lookup>(
    namespace: &str,
    owner: &OwnerReference,
    lookup: &L,
    deadline: Instant,
) -> Result<Option<OwnerMeta>, String> {
    match within(deadline, lookup.owner(namespace, owner)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(err)) => Err(reason_of(&err)),
        Err(_) => Err(out_of_time()),
    }
}

/// `lookup`'s answer, or `Err` when it has none by `deadline`. An answer
/// ready at once (an index hit, the usual case) needs no timer, nor a Tokio
/// runtime (the fuzz target polls `admit` with a plain executor).
async fn within<F: std::future::Future>(deadline: Instant, lookup: F) -> Result<F::Output, ()> {
    let mut lookup = std::pin::pin!(lookup);
    if let Poll::Ready(answer) = futures::poll!(lookup.as_mut()) {
        return Ok(answer);
    }
    timeout_at(deadline, lookup).await.map_err(|_| ())
}

/// Why a read failed, without repeating the object the refusal names.
fn reason_of(err: &LookupError) -> String {
    match err {
        LookupError::Get {
            source: kube::Error::Api(status),
            ..
        } => format!(
            "the API server answered {}: {}",
            status.code, status.message
        ),
        LookupError::Get { source, .. } => source.to_string(),
        LookupError::Timeout { .. } => format!("no answer within {FALLBACK_TIMEOUT:?}"),
    }
}

fn out_of_time() -> String {
    format!(
        "no answer within {LOOKUP_BUDGET:?}, the time zen-lead gives all reads of one \
         admission so that it answers before the API server stops waiting"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Activation;
    use crate::api::keys::POOL_ANNOTATION;
    use crate::webhook::lookup::StaticLookup;
    use serde_json::{Value, json};

    fn config() -> InjectConfig {
        let mut c = InjectConfig::with_image("zen-lead:test");
        c.version = "test".to_owned();
        c
    }

    fn pod(json: Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    fn owner_ref(api: &str, kind: &str, name: &str, uid: &str) -> Value {
        json!({"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": true})
    }

    /// A Deployment's pod, as the ReplicaSet controller creates it, without a
    /// pool annotation of its own.
    fn deployment_pod() -> Pod {
        pod(json!({
            "metadata": {"generateName": "web-5d8f-", "namespace": "shop",
                "ownerReferences": [owner_ref("apps/v1", "ReplicaSet", "web-5d8f", "rs")]},
            "spec": {"containers": [{"name": "app", "command": ["/app"]}]}
        }))
    }

    fn meta(kind: &str, name: &str, uid: &str, controller: Option<Value>) -> OwnerMeta {
        OwnerMeta {
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            pool: None,
            join: None,
            controller: controller.map(|c| serde_json::from_value(c).expect("ref")),
            scheduled_time: None,
        }
    }

    fn replica_set() -> OwnerMeta {
        meta(
            "ReplicaSet",
            "web-5d8f",
            "rs",
            Some(owner_ref("apps/v1", "Deployment", "web", "dep")),
        )
    }

    fn deployment(pool: Option<&str>) -> OwnerMeta {
        OwnerMeta {
            pool: pool.map(str::to_owned),
            ..meta("Deployment", "web", "dep", None)
        }
    }

    fn review(pod: &Pod) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": V1, "kind": REVIEW_KIND,
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "shop", "operation": "CREATE", "object": pod}
        }))
        .expect("json")
    }

    fn response(reply: &Reply) -> Value {
        assert_eq!(reply.status, StatusCode::OK);
        serde_json::from_slice::<Value>(&reply.body).expect("review")["response"].clone()
    }

    /// The fuzz target drives `admit` with `futures::executor::block_on`:
    /// lookups that answer at once must not need Tokio's timer.
    #[test]
    fn lookups_that_answer_at_once_need_no_runtime() {
        let lookup = StaticLookup::default()
            .with_owner("shop", replica_set())
            .with_owner("shop", deployment(Some("web")))
            .with_policy("shop", "web", Activation::Auto);
        let reply =
            futures::executor::block_on(admit(&review(&deployment_pod()), &lookup, &config()));
        assert_eq!(reply.outcome, "injected");
    }

    #[tokio::test]
    async fn an_unreadable_owner_refuses_the_pod() {
        let lookup = StaticLookup::default().with_owner_error(
            "shop",
            "rs",
            403,
            "replicasets.apps \"web-5d8f\" is forbidden",
        );
        let err = decide(&deployment_pod(), "shop", &lookup, &config())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Refusal::OwnerUnreadable {
                namespace: "shop".into(),
                kind: "ReplicaSet".into(),
                name: "web-5d8f".into(),
                of: None,
                reason: "the API server answered 403: replicasets.apps \"web-5d8f\" is forbidden"
                    .into(),
            }
        );
        let reply = admit(&review(&deployment_pod()), &lookup, &config()).await;
        assert_eq!(reply.outcome, "lookup_failed");
        let response = response(&reply);
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 503);
        let message = response["status"]["message"].as_str().expect("message");
        for part in [
            "zen-lead: could not read ReplicaSet shop/web-5d8f, the pod's owner",
            "is forbidden",
            "cannot tell whether the pod belongs to a pool",
            "refused so that it cannot run as an unprotected pool replica",
            "retries the create with back-off",
            "may get ReplicaSets in namespace shop",
        ] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    }

    #[tokio::test]
    async fn an_unreadable_owner_of_the_owner_refuses_the_pod_naming_both() {
        let lookup = StaticLookup::default()
            .with_owner("shop", replica_set())
            .with_owner_error("shop", "dep", 500, "etcdserver: request timed out");
        let err = decide(&deployment_pod(), "shop", &lookup, &config())
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "could not read Deployment shop/web, the owner of the pod's ReplicaSet web-5d8f \
                 (the API server answered 500: etcdserver: request timed out)"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unreadable_policy_refuses_a_member_only() {
        let lookup = StaticLookup::default()
            .with_owner("shop", replica_set())
            .with_owner("shop", deployment(Some("web")))
            .with_policy_error("shop", "web", "no answer within 2s");
        let err = decide(&deployment_pod(), "shop", &lookup, &config())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Refusal::PolicyUnreadable {
                namespace: "shop".into(),
                pool: "web".into(),
                reason: "no answer within 2s".into(),
            }
        );
        // Outside any pool the policy is never read.
        let lookup = StaticLookup::default()
            .with_owner("shop", replica_set())
            .with_owner("shop", deployment(None))
            .with_policy_error("shop", "web", "no answer within 2s");
        let d = decide(&deployment_pod(), "shop", &lookup, &config())
            .await
            .expect("admitted");
        assert_eq!(d.outcome, Outcome::NotInPool);
    }

    /// A `process` pod of a CronJob's Job that names its pool itself: its
    /// Job is read for the scheduled time.
    fn job_pod() -> Pod {
        pod(json!({
            "metadata": {"generateName": "nightly-1-", "namespace": "batch",
                "annotations": {POOL_ANNOTATION: "nightly"},
                "ownerReferences": [owner_ref("batch/v1", "Job", "nightly-1", "job")]},
            "spec": {"containers": [{"name": "report", "command": ["/report"]}]}
        }))
    }

    #[tokio::test]
    async fn an_unreadable_job_refuses_a_process_pod_that_needs_its_scheduled_time() {
        let failing =
            || StaticLookup::default().with_owner_error("batch", "job", 503, "the server is busy");
        // `auto` on a Job pod with commands is `process`, as is `process`.
        for activation in [Activation::Auto, Activation::Process] {
            let lookup = failing().with_policy("batch", "nightly", activation);
            let err = decide(&job_pod(), "batch", &lookup, &config())
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Refusal::JobUnreadable { job, pool, .. } if job == "nightly-1" && pool == "nightly"),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains("scheduledRuns: once"), "{text}");
            assert!(text.contains("the server is busy"), "{text}");
        }
        // `start` does not use the scheduled time: the Job is not read.
        let lookup = failing().with_policy("batch", "nightly", Activation::Start);
        let d = decide(&job_pod(), "batch", &lookup, &config())
            .await
            .expect("admitted");
        assert_eq!(d.outcome, Outcome::Injected);
    }

    #[tokio::test]
    async fn lookups_that_do_not_finish_by_the_deadline_refuse_the_pod() {
        let lookup = StaticLookup::default()
            .with_owner("shop", replica_set())
            .with_owner("shop", deployment(Some("web")))
            .with_delay(Duration::from_secs(10));
        let started = Instant::now();
        let deadline = started + Duration::from_millis(50);
        let err = decide_by(&deployment_pod(), "shop", &lookup, &config(), deadline)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(&err, Refusal::OwnerUnreadable { reason, .. } if reason.contains("no answer within 2.2s")),
            "{err:?}"
        );
    }

    /// Three serial reads (ReplicaSet, Deployment, LeaderPolicy) of 1.5 s
    /// each, every one within the 2 s a fallback GET may take: the
    /// admission still answers, refusing, within [`LOOKUP_BUDGET`], before
    /// the API server's 3 s for such pods run out (and `Ignore` would
    /// admit the pod unchanged).
    #[tokio::test]
    async fn slow_lookups_share_one_budget_and_the_answer_comes_before_the_api_server_gives_up() {
        let lookup = StaticLookup::default()
            .with_owner("shop", replica_set())
            .with_owner("shop", deployment(Some("web")))
            .with_policy("shop", "web", Activation::Api)
            .with_delay(Duration::from_millis(1500));
        let started = Instant::now();
        let reply = admit(&review(&deployment_pod()), &lookup, &config()).await;
        let took = started.elapsed();
        assert!(took >= LOOKUP_BUDGET, "{took:?}");
        assert!(took < Duration::from_millis(2500), "{took:?}");
        assert_eq!(reply.outcome, "lookup_failed");
        let response = response(&reply);
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().expect("message");
        assert!(
            message.contains("could not read Deployment shop/web"),
            "{message}"
        );
    }
}
