//! A pool as the caches show it: its pods as [`PodView`]s and its
//! workloads as [`WorkloadView`]s. Reads only; no request leaves here.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;

use crate::api::IdentityStrategy;
use crate::api::keys::{ORIGINAL_REPLICAS_ANNOTATION, SCALED_BY_ANNOTATION};
use crate::controller::context::Context;
use crate::controller::decide::{self, PodView, WorkloadKind, WorkloadView};
use crate::controller::queue::PoolKey;

/// The pool's pods as decisions see them, under the policy's identity
/// strategy (the default when there is no live policy).
pub fn views(pods: &[Arc<Pod>], strategy: IdentityStrategy) -> Vec<PodView> {
    pods.iter()
        .map(|p| PodView::from_pod(p, strategy))
        .collect()
}

/// The original replica count a workload's annotations record, when they
/// say this pool scaled it.
pub fn original_replicas(pool: &str, meta: &ObjectMeta) -> Option<i32> {
    let a = meta.annotations.as_ref()?;
    if a.get(SCALED_BY_ANNOTATION).map(String::as_str) != Some(pool) {
        return None;
    }
    a.get(ORIGINAL_REPLICAS_ANNOTATION)?
        .trim()
        .parse::<i32>()
        .ok()
}

/// One workload of the pool's namespace as scaleDown sees it; `None` when
/// it neither joins the pool nor was scaled by it.
pub fn workload_view(
    key: &PoolKey,
    kind: WorkloadKind,
    meta: &ObjectMeta,
    template: Option<&ObjectMeta>,
    replicas: Option<i32>,
) -> Option<WorkloadView> {
    if meta.namespace.as_deref() != Some(key.namespace.as_str()) {
        return None;
    }
    let in_pool = decide::joins_pool(
        meta.annotations.as_ref(),
        template.and_then(|t| t.annotations.as_ref()),
        template.and_then(|t| t.labels.as_ref()),
        &key.name,
    );
    let original = original_replicas(&key.name, meta);
    (in_pool || original.is_some()).then(|| WorkloadView {
        kind,
        name: meta.name.clone().unwrap_or_default(),
        replicas: replicas.unwrap_or(1),
        in_pool,
        original,
        hpa: None,
    })
}

/// The pool's Deployments and StatefulSets (members, or scaled by it).
pub fn workloads(ctx: &Context, key: &PoolKey) -> Vec<WorkloadView> {
    let mut out: Vec<WorkloadView> = ctx
        .cache
        .deployments
        .state()
        .iter()
        .filter_map(|d| {
            let spec = d.0.spec.as_ref();
            workload_view(
                key,
                WorkloadKind::Deployment,
                &d.0.metadata,
                spec.and_then(|s| s.template.metadata.as_ref()),
                spec.and_then(|s| s.replicas),
            )
        })
        .collect();
    out.extend(ctx.cache.statefulsets.state().iter().filter_map(|s| {
        let spec = s.0.spec.as_ref();
        workload_view(
            key,
            WorkloadKind::StatefulSet,
            &s.0.metadata,
            spec.and_then(|s| s.template.metadata.as_ref()),
            spec.and_then(|s| s.replicas),
        )
    }));
    out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    out
}
