//! The errors of controller writes and the helpers every writer shares
//! (the pool pass and the candidates' RBAC alike).

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::api::keys::FIELD_MANAGER;

/// Errors of one reconciliation; the pool is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{action} {kind} {namespace}/{name} failed: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// The step, for the reconcile_errors metric.
    pub fn step(&self) -> &'static str {
        match self {
            ReconcileError::Api { kind, .. } => kind,
        }
    }

    /// A 409: someone wrote first; retry soon without alarm.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ReconcileError::Api { source: kube::Error::Api(e), .. } if e.code == 409)
    }
}

/// Maps a failed request to a [`ReconcileError`] naming the object.
pub fn api_err(
    action: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let namespace = namespace.to_owned();
    let name = name.to_owned();
    move |source| ReconcileError::Api {
        action,
        kind,
        namespace,
        name,
        source,
    }
}

pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(e) if e.code == code)
}

/// Creates `obj`, or (when it exists, or `try_create` is false) applies it
/// server-side with zen-lead's field manager.
pub async fn create_or_apply<K>(
    api: &Api<K>,
    try_create: bool,
    obj: &K,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<(), ReconcileError>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if try_create {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return Ok(()),
            Err(err) if is_status(&err, 409) => {}
            Err(err) => return Err(api_err("create", kind, namespace, name)(err)),
        }
    }
    let mut body = serde_json::to_value(obj).unwrap_or_default();
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(api_err("apply", kind, namespace, name))
}
