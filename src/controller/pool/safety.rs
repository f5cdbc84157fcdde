//! The safety net: pool pods that run without the agent (admitted while
//! the webhook was unavailable) are reported once each, and evicted with
//! `--evict-uninjected` when a controller will re-create them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams};
use kube::runtime::events::EventType;
use tokio::time::Instant;
use tracing::{info, warn};

use super::report::{self, pod_ref};
use crate::api::LeaderPolicy;
use crate::controller::context::{Context, is_status};
use crate::controller::decide::PodView;
use crate::controller::queue::PoolKey;
use crate::controller::watch::Unlabelled;

/// At most one eviction per owner in this window.
const EVICTION_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);

/// A pod without the agent, and its controlling owner (kind, name).
type Uninjected = (String, Option<(String, String)>);

/// Pods without the agent: labelled ones from the views, annotation-only
/// ones from the metadata watch. Sorted by name.
pub fn uninjected(pods: &[PodView], unlabelled: &BTreeMap<String, Unlabelled>) -> Vec<Uninjected> {
    let mut missing: Vec<Uninjected> = pods
        .iter()
        .filter(|p| !p.injected && !p.terminating && !p.finished)
        .map(|p| (p.name.clone(), p.owner.clone()))
        .chain(unlabelled.iter().map(|(n, u)| (n.clone(), u.owner.clone())))
        .collect();
    missing.sort();
    missing
}

/// Reports and (optionally) evicts; returns the pods' names for the status.
pub async fn run(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    pods: &[PodView],
    unlabelled: &BTreeMap<String, Unlabelled>,
) -> Vec<String> {
    let missing = uninjected(pods, unlabelled);
    let names: Vec<String> = missing.iter().map(|(n, _)| n.clone()).collect();
    let new: Vec<String> = ctx.with_memory(key, |m| {
        m.warned.retain(|n| names.contains(n));
        names
            .iter()
            .filter(|n| m.warned.insert((*n).clone()))
            .cloned()
            .collect()
    });
    for name in &new {
        warn!(pool = %key, pod = %name, "pool pod runs without the zen-lead agent (admitted while the webhook was unavailable)");
        report::on_policy(
            ctx,
            policy,
            EventType::Warning,
            "AgentMissing",
            "CheckPod",
            format!(
                "pod {name} carries zen-lead/pool={} but runs without the zen-lead agent \
                 (admitted while the webhook was unavailable); {}",
                key.name,
                if ctx.evict_uninjected {
                    "evicting it so it is re-created through the webhook"
                } else {
                    "delete it so its workload re-creates it through the webhook \
                     (the controller runs with --evict-uninjected=false)"
                }
            ),
            Some(pod_ref(&key.namespace, name, None)),
        )
        .await;
    }
    if ctx.evict_uninjected {
        evict(ctx, key, &missing).await;
    }
    names
}

async fn evict(ctx: &Context, key: &PoolKey, missing: &[Uninjected]) {
    let api: Api<Pod> = ctx.api(key);
    for (name, owner) in missing {
        // A bare pod would not come back: never evict it.
        let Some((kind, owner_name)) = owner else {
            continue;
        };
        let owner_key = format!("{kind}/{owner_name}");
        let recent = ctx.with_memory(key, |m| {
            m.evicted.retain(|_, at| at.elapsed() < EVICTION_PAUSE);
            m.evicted.contains_key(&owner_key)
        });
        if recent {
            continue;
        }
        match api.evict(name, &EvictParams::default()).await {
            Ok(_) => {
                ctx.metrics.evictions.inc();
                info!(pool = %key, pod = %name, "evicted a pool pod that ran without the agent");
                ctx.with_memory(key, |m| m.evicted.insert(owner_key, Instant::now()));
            }
            Err(err) if is_status(&err, 404) => {}
            Err(err) => {
                ctx.metrics.error("eviction");
                warn!(pool = %key, pod = %name, error = %err, "could not evict a pool pod without the agent (a PodDisruptionBudget may forbid it now; retried later)");
            }
        }
    }
}
