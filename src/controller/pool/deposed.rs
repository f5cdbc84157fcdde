//! Deposed `start` leaders: pods whose app runs although another candidate
//! holds the Lease (frozen, cut off, or their agent down past the lease).
//! `start` cannot stop an app it started, so such a pod is deleted, after
//! the Lease and the pod are read again from the API server: the cache may
//! not show yet the term a brand-new leader took before its app started.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::events::EventType;
use tracing::warn;

use super::report::{self, pod_ref};
use crate::api::{IdentityStrategy, LeaderPolicy};
use crate::controller::context::{Context, ReconcileError, api_err, is_status};
use crate::controller::decide::{LeaseView, PodView};
use crate::controller::queue::PoolKey;
use crate::election::record::Record;

/// What happened to one deposed pod.
enum Removal {
    Deleted,
    /// Gone, re-created, stopped or already being deleted.
    Skipped,
    /// RBAC forbids it (an older chart): reported, not an error.
    Forbidden,
}

pub async fn remove(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    deposed: &[&PodView],
) -> Result<(), ReconcileError> {
    let leases: Api<Lease> = ctx.api(key);
    let fresh = leases.get_opt(&key.name).await.map_err(api_err(
        "read",
        "Lease",
        &key.namespace,
        &key.name,
    ))?;
    let Some(record) = fresh.as_ref().and_then(Record::from_lease) else {
        return Ok(());
    };
    // A free Lease may be taken straight back by the pod itself (its agent
    // restarted and released): only a Lease naming someone else deposes.
    let Some(holder) = record.holder.clone() else {
        return Ok(());
    };
    let now = LeaseView {
        holder: record.holder.clone(),
        holder_instance: record.holder_instance.clone(),
        ..LeaseView::default()
    };
    let strategy = policy.spec.identity_strategy;
    for pod in deposed.iter().filter(|p| !p.holds(&now)) {
        match delete(ctx, key, strategy, pod, &holder).await? {
            Removal::Deleted => deleted(ctx, key, policy, pod, &holder).await,
            Removal::Skipped | Removal::Forbidden => {}
        }
    }
    Ok(())
}

/// Deletes the pod if the API server still shows it running its app,
/// preconditioned on its UID (never a re-created pod of the same name).
async fn delete(
    ctx: &Context,
    key: &PoolKey,
    strategy: IdentityStrategy,
    pod: &PodView,
    holder: &str,
) -> Result<Removal, ReconcileError> {
    let pods: Api<Pod> = ctx.api(key);
    let fresh =
        pods.get_opt(&pod.name)
            .await
            .map_err(api_err("read", "Pod", &key.namespace, &pod.name))?;
    let still = fresh
        .as_ref()
        .map(|p| PodView::from_pod(p, strategy))
        .is_some_and(|v| v.uid == pod.uid && v.app_running && !v.terminating && !v.finished);
    if !still {
        return Ok(Removal::Skipped);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(pod.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&pod.name, &params).await {
        Ok(_) => Ok(Removal::Deleted),
        Err(err) if is_status(&err, 404) || is_status(&err, 409) => Ok(Removal::Skipped),
        Err(err) if is_status(&err, 403) => {
            ctx.metrics.error("delete-deposed");
            warn!(pool = %key, pod = %pod.name, error = %err, "may not delete a deposed start-activation leader; grant the controller delete on pods");
            report::on_pod(
                ctx,
                &pod_ref(&key.namespace, &pod.name, Some(pod.uid.clone())),
                "DeposedLeaderRunning",
                "DeletePod",
                format!(
                    "pod {} runs its app but no longer holds the Lease of pool {} (held by \
                     {holder}), and the zen-lead controller may not delete it: grant it \
                     delete on pods (the chart's ClusterRole does), or delete the pod",
                    pod.name, key.name
                ),
            )
            .await;
            Ok(Removal::Forbidden)
        }
        Err(err) => Err(api_err("delete", "Pod", &key.namespace, &pod.name)(err)),
    }
}

async fn deleted(ctx: &Context, key: &PoolKey, policy: &LeaderPolicy, pod: &PodView, holder: &str) {
    ctx.metrics.deposed_deletions.inc();
    warn!(pool = %key, pod = %pod.name, holder = %holder, "deleted a deposed start-activation leader whose app still ran");
    let note = format!(
        "pod {} runs its app but no longer holds the Lease of pool {} (held by {holder}): it \
         lost its term while its app ran (frozen, cut off from the API server, or its agent \
         down longer than the lease), and start activation cannot stop an app it started, so \
         the pod was deleted",
        pod.name, key.name
    );
    let reference = pod_ref(&key.namespace, &pod.name, Some(pod.uid.clone()));
    report::on_pod(
        ctx,
        &reference,
        "DeposedLeaderDeleted",
        "DeletePod",
        note.clone(),
    )
    .await;
    report::on_policy(
        ctx,
        policy,
        EventType::Warning,
        "DeposedLeaderDeleted",
        "DeletePod",
        note,
        Some(reference),
    )
    .await;
}
