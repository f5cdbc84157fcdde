//! One AdmissionReview in, one out: parsing, the lookups, and the response.
//!
//! Every body that parses as an AdmissionReview gets an AdmissionReview back
//! (a malformed pod is refused with `allowed: false` and a message); anything
//! else is an HTTP 400 with a message. Nothing here panics on input.

use axum::http::StatusCode;
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::Instrument;

use super::inject::{
    self, Decision, InjectConfig, MAX_OWNER_DEPTH, Membership, Outcome, Triage, is_supported_owner,
};
use super::inject::{OwnerMeta, ScheduledRun};
use super::lookup::Lookup;
use crate::api::Activation;

const REVIEW_KIND: &str = "AdmissionReview";
const V1: &str = "admission.k8s.io/v1";
const V1BETA1: &str = "admission.k8s.io/v1beta1";

/// What the HTTP layer sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    /// JSON AdmissionReview, or a plain-text message for a 400.
    pub body: Vec<u8>,
    /// Metric label: an [`Outcome`], `denied`, `malformed` or `bad_request`.
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

/// Answers one request body.
pub async fn admit<L: Lookup>(body: &[u8], lookup: &L, config: &InjectConfig) -> Reply {
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
    answer(&pod, namespace, lookup, config, api_version, uid)
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

/// Decides for the pod and answers with the patch, or with the denial.
async fn answer<L: Lookup>(
    pod: &Pod,
    namespace: &str,
    lookup: &L,
    config: &InjectConfig,
    api_version: &str,
    uid: &str,
) -> Reply {
    let result = decide(pod, namespace, lookup, config).await;
    match result {
        Ok(decision) => {
            if decision.outcome != Outcome::NotInPool {
                tracing::debug!(outcome = decision.outcome.as_str(), warnings = ?decision.warnings, "admitted");
            }
            allow(api_version, uid, decision)
        }
        Err(denial) => {
            tracing::info!(reason = %denial, "denied");
            refuse(
                api_version,
                uid,
                403,
                format!("zen-lead: {denial}"),
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

/// The decision for a pod: triage, owner chain, policy, patch.
pub async fn decide<L: Lookup>(
    pod: &Pod,
    namespace: &str,
    lookup: &L,
    config: &InjectConfig,
) -> Result<Decision, inject::Denial> {
    let chain = match inject::triage(pod) {
        Triage::AlreadyInjected => return Ok(inject::reinvocation(pod)),
        Triage::Decided(_) => Vec::new(),
        Triage::AskOwner(first) => {
            let mut chain = Vec::with_capacity(MAX_OWNER_DEPTH);
            let mut next = Some(first);
            while let Some(owner) = next.take() {
                if chain.len() >= MAX_OWNER_DEPTH || !is_supported_owner(&owner) {
                    break;
                }
                match lookup.owner(namespace, &owner).await {
                    Ok(Some(meta)) => {
                        next = meta.controller.clone();
                        chain.push(meta);
                    }
                    Ok(None) => break,
                    Err(err) => {
                        // Cannot tell whether the pod is in a pool. Admit it
                        // unchanged: the controller's AgentMissing check
                        // reports (and can evict) a pool pod without agent.
                        tracing::warn!(error = %err, "owner lookup failed; pod admitted unchanged");
                        let mut d = plain(Outcome::NotInPool);
                        d.warnings.push(format!(
                            "zen-lead: could not read the pod's owner ({err}); admitted without \
                             checking for a zen-lead/pool annotation on it"
                        ));
                        return Ok(d);
                    }
                }
            }
            chain
        }
    };
    let membership = inject::membership(pod, &chain)?;
    let policy = match &membership {
        Membership::Member { pool, .. } => lookup.policy(namespace, pool).await,
        _ => inject::PolicyState::Missing,
    };
    inject::check_identity(pod, &chain, &membership, &policy)?;
    let scheduled = match &membership {
        Membership::Member { .. }
            if inject::activation_of(pod, &policy, config) == Activation::Process =>
        {
            scheduled_run(pod, namespace, &chain, lookup).await
        }
        _ => None,
    };
    inject::decide_run(pod, &membership, &policy, config, scheduled.as_ref())
}

/// The scheduled run of a CronJob-created Job's pod. The Job is in `chain`
/// when the pool was named on an owner; otherwise it is read now (only for
/// `process` pods, the only ones that use it).
async fn scheduled_run<L: Lookup>(
    pod: &Pod,
    namespace: &str,
    chain: &[OwnerMeta],
    lookup: &L,
) -> Option<ScheduledRun> {
    if let Some(job) = chain.first() {
        return ScheduledRun::of(job);
    }
    let owner = inject::controller_of(pod.metadata.owner_references.as_ref())?;
    if owner.kind != "Job" || !owner.api_version.starts_with("batch/") {
        return None;
    }
    match lookup.owner(namespace, owner).await {
        Ok(Some(job)) => ScheduledRun::of(&job),
        Ok(None) => None,
        Err(err) => {
            // The run is then not known to be a scheduled one: it runs (one at
            // a time), as a manual Job would.
            tracing::warn!(error = %err, "could not read the pod's Job for its scheduled time");
            None
        }
    }
}
