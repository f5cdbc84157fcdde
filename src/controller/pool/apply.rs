//! Performs what [`super::plan`] decided, one function per kind of write.
//! Each names the object it failed on; a pod or policy already gone is not
//! an error (nothing is left to write).

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::plan::{PodWrite, PodWrites};
use crate::api::keys::{CANDIDATE_READINESS_GATE, RESTORE_FINALIZER, ROLE_ANNOTATION, ROLE_LABEL};
use crate::api::{LeaderPolicy, LeaderPolicyStatus};
use crate::controller::context::{Context, ReconcileError, api_err, is_status, now_time};
use crate::controller::decide::RoleWrite;
use crate::controller::queue::PoolKey;

/// Runs the pool's pod writes: `in_order` one by one (remembering each
/// leader label as written, since the cache may lag), then the rest
/// concurrently.
pub async fn pod_writes(
    ctx: &Context,
    key: &PoolKey,
    writes: &PodWrites,
) -> Result<(), ReconcileError> {
    for write in &writes.in_order {
        pod(ctx, key, write).await?;
        ctx.with_memory(key, |m| match write.role {
            Some(RoleWrite::Leader) => {
                m.leaders.insert(write.pod.clone());
            }
            Some(_) => {
                m.leaders.remove(&write.pod);
            }
            None => {}
        });
    }
    futures::future::try_join_all(writes.parallel.iter().map(|w| pod(ctx, key, w))).await?;
    Ok(())
}

/// The JSON body of one pod write.
pub fn pod_patch(write: &PodWrite) -> serde_json::Value {
    let mut patch = serde_json::Map::new();
    if let Some(role) = write.role {
        let value = role.value();
        patch.insert(
            "metadata".to_owned(),
            json!({
                "labels": { ROLE_LABEL: value },
                "annotations": { ROLE_ANNOTATION: value },
            }),
        );
    }
    if let Some(want) = &write.condition {
        // Conditions merge by type; the kubelet's conditions stay.
        patch.insert(
            "status".to_owned(),
            json!({
                "conditions": [{
                    "type": CANDIDATE_READINESS_GATE,
                    "status": if want.status { "True" } else { "False" },
                    "reason": want.reason,
                    "message": want.message,
                    "lastTransitionTime": now_time(),
                }]
            }),
        );
    }
    serde_json::Value::Object(patch)
}

/// One PATCH of `pods/status` carrying the role label and annotation and/or
/// the readiness-gate condition. The status subresource resets only spec,
/// ownerReferences and deletionTimestamp, so labels and annotations written
/// through it stick (tests/controller.rs checks both).
pub async fn pod(ctx: &Context, key: &PoolKey, write: &PodWrite) -> Result<(), ReconcileError> {
    let api: Api<Pod> = ctx.api(key);
    let what = match (write.role.is_some(), write.condition.is_some()) {
        (true, true) => "set the role and readiness gate of",
        (true, false) => "set the role of",
        _ => "set the readiness gate of",
    };
    let body = pod_patch(write);
    // Only a condition needs the strategic merge (conditions merge by type);
    // a role change alone is a plain merge patch, cheaper for the API server.
    let patch = if write.condition.is_some() {
        Patch::Strategic(&body)
    } else {
        Patch::Merge(&body)
    };
    match api
        .patch_status(&write.pod, &PatchParams::default(), &patch)
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_status(&err, 404) => Ok(()),
        Err(err) => Err(api_err(what, "Pod", &key.namespace, &write.pod)(err)),
    }
}

/// Sets the policy's whole status (the controller owns it, so a JSON patch
/// is enough, and far cheaper for the API server than a server-side apply).
pub async fn status(
    ctx: &Context,
    key: &PoolKey,
    status: &LeaderPolicyStatus,
) -> Result<(), ReconcileError> {
    let api: Api<LeaderPolicy> = ctx.api(key);
    let patch = json_patch::Patch(vec![json_patch::PatchOperation::Add(
        json_patch::AddOperation {
            path: json_patch::jsonptr::PointerBuf::from_tokens(["status"]),
            value: serde_json::to_value(status).unwrap_or_default(),
        },
    )]);
    match api
        .patch_status(
            &key.name,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_status(&err, 404) => Ok(()),
        Err(err) => Err(api_err(
            "write the status of",
            "LeaderPolicy",
            &key.namespace,
            &key.name,
        )(err)),
    }
}

/// Whether the policy carries the restore finalizer.
pub fn has_finalizer(policy: &LeaderPolicy) -> bool {
    policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER)
}

/// Adds or removes the restore finalizer. The resourceVersion makes the
/// patch a compare-and-swap: finalizers of other controllers are never
/// overwritten by a stale list.
pub async fn finalizer(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    keep: bool,
) -> Result<(), ReconcileError> {
    let api: Api<LeaderPolicy> = ctx.api(key);
    let mut finalizers: Vec<String> = policy
        .finalizers()
        .iter()
        .filter(|f| *f != RESTORE_FINALIZER)
        .cloned()
        .collect();
    if keep {
        finalizers.push(RESTORE_FINALIZER.to_owned());
    }
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": policy.resource_version(),
    }});
    match api
        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if !keep && is_status(&err, 404) => Ok(()),
        Err(err) => Err(api_err(
            if keep {
                "add the finalizer to"
            } else {
                "remove the finalizer from"
            },
            "LeaderPolicy",
            &key.namespace,
            &key.name,
        )(err)),
    }
}
