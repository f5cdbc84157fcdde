//! scaleDown: the pool's Deployments and StatefulSets sized to one replica
//! in total, their original counts remembered on them and restored when the
//! pool goes back to standby or its policy is deleted.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::info;

use super::{apply, observe, report};
use crate::api::keys::{ORIGINAL_REPLICAS_ANNOTATION, SCALED_BY_ANNOTATION};
use crate::api::{FollowerMode, LeaderPolicy};
use crate::controller::context::{Context, HpaTarget, ReconcileError, api_err};
use crate::controller::decide::{self, ScaleAction, ScaleOutcome, WorkloadKind};
use crate::controller::queue::PoolKey;

/// Re-check scaleDown at least this often even without changes.
const SCALE_RECHECK: Duration = Duration::from_secs(60);

/// Plans from the namespace's Deployments, StatefulSets and HPAs, then
/// remembers, scales and forgets (nothing while the pool is paused). HPAs are listed (no watch: they matter
/// only to scaleDown pools) when something relevant changed, or a minute
/// passed.
pub async fn run(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    keep: Option<(WorkloadKind, String)>,
) -> Result<Option<ScaleOutcome>, ReconcileError> {
    let scale_down = policy.spec.follower_mode == FollowerMode::ScaleDown
        && policy.meta().deletion_timestamp.is_none();
    let mut workloads = observe::workloads(ctx, key);
    if workloads.is_empty() && !scale_down {
        ctx.with_memory(key, |m| m.scale_outcome = None);
        return Ok(None);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (policy.meta().generation, scale_down, &keep, &workloads).hash(&mut hasher);
    let fingerprint = hasher.finish();
    let (fresh, hpas) = ctx.with_memory(key, |m| {
        let fresh = m
            .scale_checked
            .as_ref()
            .is_some_and(|(f, at)| *f == fingerprint && at.elapsed() < SCALE_RECHECK);
        (fresh, m.hpas.clone())
    });
    let hpas = if fresh || !scale_down {
        hpas
    } else {
        list_hpas(ctx, key).await?
    };
    for w in &mut workloads {
        w.hpa = hpas
            .iter()
            .find(|t| t.kind == w.kind.as_str() && t.name == w.name)
            .map(|t| t.hpa.clone());
    }
    let plan = decide::pause::scale(
        policy.spec.paused,
        decide::scale_plan(
            &workloads,
            scale_down,
            keep.as_ref().map(|(k, n)| (*k, n.as_str())),
        ),
    );
    for action in &plan.actions {
        perform(ctx, key, action).await?;
    }
    if let Some(ScaleOutcome::Refused { reason, message }) = &plan.outcome {
        let before = ctx.with_memory(key, |m| m.scale_outcome.clone());
        if before.as_ref() != plan.outcome.as_ref() {
            report::on_policy(
                ctx,
                policy,
                EventType::Warning,
                reason.reason(),
                "ScaleDown",
                message.clone(),
                None,
            )
            .await;
        }
    }
    ctx.with_memory(key, |m| {
        m.scale_checked = Some((fingerprint, Instant::now()));
        m.scale_outcome = plan.outcome.clone();
        m.hpas = hpas;
    });
    Ok(plan.outcome)
}

/// Every HPA target in the pool's namespace.
async fn list_hpas(ctx: &Context, key: &PoolKey) -> Result<Vec<HpaTarget>, ReconcileError> {
    let hpas: Api<HorizontalPodAutoscaler> = ctx.api(key);
    let list = hpas.list(&ListParams::default()).await.map_err(api_err(
        "list",
        "HorizontalPodAutoscaler",
        &key.namespace,
        "*",
    ))?;
    Ok(list
        .items
        .iter()
        .filter_map(|h| {
            let target = &h.spec.as_ref()?.scale_target_ref;
            Some(HpaTarget {
                kind: target.kind.clone(),
                name: target.name.clone(),
                hpa: h.name_any(),
            })
        })
        .collect())
}

/// The JSON merge patch of a bookkeeping action (`None` for a scale, which
/// goes to the scale subresource).
pub fn annotation_patch(pool: &str, action: &ScaleAction) -> Option<serde_json::Value> {
    match action {
        ScaleAction::Remember { original, .. } => Some(json!({"metadata": {"annotations": {
            ORIGINAL_REPLICAS_ANNOTATION: original.to_string(),
            SCALED_BY_ANNOTATION: pool,
        }}})),
        ScaleAction::Forget { .. } => Some(json!({"metadata": {"annotations": {
            ORIGINAL_REPLICAS_ANNOTATION: null,
            SCALED_BY_ANNOTATION: null,
        }}})),
        ScaleAction::Scale { .. } => None,
    }
}

pub(super) async fn perform(
    ctx: &Context,
    key: &PoolKey,
    action: &ScaleAction,
) -> Result<(), ReconcileError> {
    let (kind, name) = match action {
        ScaleAction::Remember { kind, name, .. }
        | ScaleAction::Scale { kind, name, .. }
        | ScaleAction::Forget { kind, name } => (*kind, name.as_str()),
    };
    let pp = PatchParams::default();
    let ns = &key.namespace;
    let (verb, result) = match (action, annotation_patch(&key.name, action)) {
        (ScaleAction::Scale { replicas, .. }, _) => {
            let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
            let result = match kind {
                WorkloadKind::StatefulSet => ctx
                    .api::<StatefulSet>(key)
                    .patch_scale(name, &pp, &patch)
                    .await
                    .map(|_| ()),
                WorkloadKind::Deployment => ctx
                    .api::<Deployment>(key)
                    .patch_scale(name, &pp, &patch)
                    .await
                    .map(|_| ()),
            };
            ("scale", result)
        }
        (_, Some(body)) => {
            let patch = Patch::Merge(&body);
            let result = match kind {
                WorkloadKind::StatefulSet => ctx
                    .api::<StatefulSet>(key)
                    .patch(name, &pp, &patch)
                    .await
                    .map(|_| ()),
                WorkloadKind::Deployment => ctx
                    .api::<Deployment>(key)
                    .patch(name, &pp, &patch)
                    .await
                    .map(|_| ()),
            };
            ("annotate", result)
        }
        (_, None) => return Ok(()),
    };
    result.map_err(api_err(verb, kind.as_str(), ns, name))?;
    let workload = format!("{kind}/{name}");
    match action {
        ScaleAction::Remember { original, .. } => {
            info!(pool = %key, %workload, original, "remembered the original replica count")
        }
        ScaleAction::Scale { replicas, .. } => info!(pool = %key, %workload, replicas, "scaled"),
        ScaleAction::Forget { .. } => {
            info!(pool = %key, %workload, "restored the original replica count")
        }
    }
    Ok(())
}

/// A policy being deleted: restore every workload it scaled, then let it go.
pub async fn finalize(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
) -> Result<(), ReconcileError> {
    if !apply::has_finalizer(policy) {
        return Ok(());
    }
    let plan = decide::scale_plan(&observe::workloads(ctx, key), false, None);
    for action in &plan.actions {
        perform(ctx, key, action).await?;
    }
    apply::finalizer(ctx, key, policy, false).await?;
    info!(pool = %key, "policy deleted: replica counts restored, finalizer removed");
    Ok(())
}
