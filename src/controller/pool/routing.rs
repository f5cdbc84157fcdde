//! Leader-only routing: performs [`decide::routing::plan`]'s writes for a
//! pool's `spec.leaderService` and deletes what a renamed or removed one
//! left behind. Reads come from the caches; a create that finds the name
//! taken reads that object once to say whose it is.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::LeaderPolicy;
use crate::api::keys::conditions::reasons;
use crate::controller::api_error::create_or_apply;
use crate::controller::context::{Context, ReconcileError, api_err, is_status};
use crate::controller::decide::PodView;
use crate::controller::decide::routing::{self, Owner, Problem, Write};
use crate::controller::queue::PoolKey;

use super::{lease, observe};

/// The LeaderService condition: (status, reason, message).
pub type RoutingCondition = (bool, &'static str, String);

/// How soon a pass looks again while foreign EndpointSlices claim the
/// leader Service (nothing zen-lead watches tells when they go).
pub const FOREIGN_RECHECK: Duration = Duration::from_secs(10);

/// What a routing-lane pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// The LeaderService condition changed: the pool's status must say so.
    pub changed: bool,
    /// A write failed: try again after a back-off.
    pub failed: bool,
}

/// The routing lane's pass (see `runner`): the pool's leader Service from
/// the caches alone, so a switch of traffic never waits behind a pool
/// pass's other writes. Passes of one pool never run at once (the lane's
/// queue), so an older decision cannot land after a newer one.
pub async fn pass(ctx: &Context, key: &PoolKey) -> Routed {
    let Some(policy) = ctx.cache.policy(key) else {
        return Routed::default();
    };
    if policy.meta().deletion_timestamp.is_some() {
        // Going (a finalizer may hold the policy for long): its pods no
        // longer lead, so the Service goes now instead of naming the last
        // leader until the garbage collector removes it with the policy.
        let gone = remove_stale(ctx, key, &owner(key, &policy), None).await;
        if let Err(err) = &gone {
            warn!(pool = %key, error = %err, "could not delete the leader Service of a policy being deleted; retrying");
        }
        return Routed {
            changed: false,
            failed: gone.is_err(),
        };
    }
    let pods = ctx.cache.pods_of(key);
    let views = observe::views(&pods, policy.spec.identity_strategy);
    let node_ready = |n: &str| ctx.cache.node_ready(n);
    let view = ctx.cache.lease(key).map(|l| lease::view(ctx, key, &l));
    let now = routed_now(ctx, key, &policy);
    let target = view
        .as_ref()
        .and_then(|lv| routing::target(lv, &views, &node_ready, now.as_deref()));
    let (condition, stale_failed) = sync(ctx, key, &policy, target).await;
    let failed = stale_failed
        || condition
            .as_ref()
            .is_some_and(|c| c.1 == reasons::SERVICE_ERROR);
    let changed = ctx.with_memory(key, |m| {
        let changed = m.routing != condition;
        m.routing = condition;
        changed
    });
    Routed { changed, failed }
}

/// The pod the pool's leader EndpointSlice names now, as cached.
pub fn routed_now(ctx: &Context, key: &PoolKey, policy: &LeaderPolicy) -> Option<String> {
    let spec = policy.spec.leader_service.as_ref()?;
    let slice = ctx.cache.slice(key, &routing::slice_name(&spec.name))?;
    routing::routed_pod(&slice).map(str::to_owned)
}

/// Brings the pool's leader Service and EndpointSlice to `target` (the pod
/// that should receive the traffic, or none): the condition (`None` when
/// the policy has no `spec.leaderService`), and whether deleting what a
/// renamed or removed one left failed (retried). A failed write is said in
/// the condition, and the pass goes on: routing never holds back the
/// election's own work.
pub async fn sync(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    target: Option<&PodView>,
) -> (Option<RoutingCondition>, bool) {
    let owner = owner(key, policy);
    let spec = policy.spec.leader_service.as_ref();
    let stale = remove_stale(ctx, key, &owner, spec).await;
    if let Err(err) = &stale {
        warn!(pool = %key, error = %err, "could not delete a leader Service left behind; retrying");
    }
    let Some(spec) = spec else {
        return (None, stale.is_err());
    };
    let service = ctx.cache.service(key, &spec.name);
    let slice = ctx.cache.slice(key, &routing::slice_name(&spec.name));
    let plan = routing::plan(&owner, spec, target, service.as_deref(), slice.as_deref());
    let (problem, error) = match perform(ctx, key, &owner, &spec.name, plan).await {
        Ok(problem) => (problem, None),
        Err(err) => (None, Some(err.to_string())),
    };
    if let Some(err) = &error {
        tracing::warn!(pool = %key, error = %err, "could not write the leader Service");
    }
    let condition = routing::condition(
        &key.namespace,
        spec,
        target.map(|p| p.name.as_str()),
        problem.as_ref(),
        error.as_deref(),
    );
    (Some(condition), stale.is_err())
}

/// The slice first when the Service is in place, so a switch is one write;
/// a Service zen-lead cannot own stops the slice's write.
async fn perform(
    ctx: &Context,
    key: &PoolKey,
    owner: &Owner,
    name: &str,
    plan: routing::Plan,
) -> Result<Option<Problem>, ReconcileError> {
    if plan
        .problem
        .as_ref()
        .is_some_and(|p| matches!(p, Problem::NotManaged { .. }))
    {
        return Ok(plan.problem);
    }
    if plan.drop_selector {
        // A merge patch's null removes the field whoever set it.
        let body = json!({"spec": {"selector": null}});
        ctx.api::<Service>(key)
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(api_err(
                "remove the selector of",
                "Service",
                &key.namespace,
                name,
            ))?;
        warn!(pool = %key, service = %name, "removed a selector someone put on the leader Service");
    }
    if let Some(p) = write(ctx, key, owner, "Service", plan.service).await? {
        return Ok(Some(p));
    }
    if let Some(p) = write(ctx, key, owner, "EndpointSlice", plan.slice).await? {
        return Ok(Some(p));
    }
    Ok(plan.problem)
}

/// One object's write. A create that meets an existing object reads it: not
/// ours is a [`Problem::NotManaged`]; ours (the cache was behind) is applied.
async fn write<K>(
    ctx: &Context,
    key: &PoolKey,
    owner: &Owner,
    kind: &'static str,
    w: Write<K>,
) -> Result<Option<Problem>, ReconcileError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = ctx.api(key);
    match w {
        Write::Keep => Ok(None),
        Write::Create(obj) => {
            let name = obj.name_any();
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {
                    info!(pool = %key, %kind, %name, "created the leader Service's {kind}");
                    Ok(None)
                }
                Err(err) if is_status(&err, 409) => {
                    let existing = api.get(&name).await.map_err(api_err(
                        "read",
                        kind,
                        &key.namespace,
                        &name,
                    ))?;
                    if owner.owns(existing.meta()) {
                        apply(&api, key, kind, &obj).await.map(|()| None)
                    } else {
                        Ok(Some(Problem::NotManaged { kind, name }))
                    }
                }
                Err(err) => Err(api_err("create", kind, &key.namespace, &name)(err)),
            }
        }
        Write::Apply(obj) => apply(&api, key, kind, &obj).await.map(|()| None),
        Write::Recreate(obj) => {
            delete(&api, key, kind, &obj.name_any()).await?;
            Box::pin(write(ctx, key, owner, kind, Write::Create(obj))).await
        }
    }
}

/// Server-side apply of what zen-lead sets (the endpoints list is atomic:
/// the new one replaces the old whole).
async fn apply<K>(
    api: &Api<K>,
    key: &PoolKey,
    kind: &'static str,
    obj: &K,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    create_or_apply(api, false, obj, kind, &key.namespace, &obj.name_any()).await
}

/// Deletes `name`: `true` if it was there (one already gone is fine).
async fn delete<K>(
    api: &Api<K>,
    key: &PoolKey,
    kind: &'static str,
    name: &str,
) -> Result<bool, ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(err) if is_status(&err, 404) => Ok(false),
        Err(err) => Err(api_err("delete", kind, &key.namespace, name)(err)),
    }
}

/// Deletes routing objects of the pool that are not the wanted ones (only
/// ours: labelled for the pool and owned by its policy).
async fn remove_stale(
    ctx: &Context,
    key: &PoolKey,
    owner: &Owner,
    spec: Option<&crate::api::LeaderService>,
) -> Result<(), ReconcileError> {
    let (services, slices) = ctx.cache.routing_of(key);
    let stale = routing::stale(
        owner,
        spec,
        services.iter().map(|s| &s.metadata),
        slices.iter().map(|s| &s.metadata),
    );
    for (kind, name) in stale {
        let deleted = match kind {
            "Service" => delete(&ctx.api::<Service>(key), key, kind, &name).await?,
            _ => delete(&ctx.api::<EndpointSlice>(key), key, kind, &name).await?,
        };
        if deleted {
            info!(pool = %key, %kind, %name, "deleted a leader Service's {kind} no longer in spec.leaderService");
        }
    }
    Ok(())
}

/// The policy that owns the pool's routing objects.
fn owner(key: &PoolKey, policy: &LeaderPolicy) -> Owner {
    Owner {
        namespace: key.namespace.clone(),
        pool: key.name.clone(),
        uid: policy.uid().unwrap_or_default(),
    }
}

/// When the slices that claim a leader Service were last listed less than
/// [`FOREIGN_RECHECK`] ago (`last`), how long until they may be listed
/// again; `None`: list now. Pool passes follow every Lease renewal, so one
/// List each would cost the API server a request every few seconds per pool.
pub fn foreign_recheck_in(last: Option<Instant>, now: Instant) -> Option<Duration> {
    let since = now.saturating_duration_since(last?);
    (since < FOREIGN_RECHECK).then(|| FOREIGN_RECHECK - since)
}

/// The LeaderService condition for the pool's status, and when to look
/// again: the routing lane's condition, unless EndpointSlices zen-lead did
/// not write claim the Service (kube-proxy would merge their endpoints into
/// it). Checked by the pool's pass, off the switch's path: a List of slice
/// metadata, served from the API server's cache, at most once per
/// [`FOREIGN_RECHECK`].
pub async fn status_condition(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
) -> (Option<RoutingCondition>, Option<Duration>) {
    let Some(spec) = policy.spec.leader_service.as_ref() else {
        return (None, None);
    };
    let lane = ctx.with_memory(key, |m| m.routing.clone());
    // A Service that is not zen-lead's: its slices are its owner's business.
    let not_ours = |c: &RoutingCondition| c.1 == reasons::SERVICE_NOT_MANAGED;
    if lane.as_ref().is_some_and(not_ours) {
        return (lane, None);
    }
    let now = Instant::now();
    let last = ctx.with_memory(key, |m| m.foreign_slices.clone());
    let last = last.filter(|(_, svc, _)| *svc == spec.name);
    let (names, wake) = match foreign_recheck_in(last.as_ref().map(|l| l.0), now) {
        Some(wait) => (last.map(|l| l.2).unwrap_or_default(), Some(wait)),
        None => match list_foreign(ctx, key, policy, spec).await {
            Some(names) => {
                let kept = (now, spec.name.clone(), names.clone());
                ctx.with_memory(key, |m| m.foreign_slices = Some(kept));
                let wake = (!names.is_empty()).then_some(FOREIGN_RECHECK);
                (names, wake)
            }
            None => return (lane, Some(FOREIGN_RECHECK)),
        },
    };
    if names.is_empty() {
        return (lane, wake);
    }
    let problem = Problem::ForeignSlices { names };
    let condition = routing::condition(&key.namespace, spec, None, Some(&problem), None);
    (Some(condition), wake)
}

/// The slices that claim the leader Service and are not zen-lead's; `None`
/// when they could not be listed.
async fn list_foreign(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    spec: &crate::api::LeaderService,
) -> Option<Vec<String>> {
    let claims = ListParams::default()
        .labels(&format!("{}={}", routing::SERVICE_NAME_LABEL, spec.name))
        .match_any();
    match ctx.api::<EndpointSlice>(key).list_metadata(&claims).await {
        Ok(list) => {
            let metas = list.items.iter().map(|s| &s.metadata);
            let names = routing::foreign_slices(&owner(key, policy), spec, metas);
            if !names.is_empty() {
                warn!(pool = %key, slices = ?names, "EndpointSlices zen-lead did not write claim the leader Service");
            }
            Some(names)
        }
        Err(err) => {
            warn!(pool = %key, error = %err, "could not list the EndpointSlices that claim the leader Service; retrying");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_slices_are_listed_at_most_once_per_recheck() {
        let now = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(foreign_recheck_in(None, now), None, "never listed");
        assert_eq!(foreign_recheck_in(Some(now), now), Some(FOREIGN_RECHECK));
        assert_eq!(foreign_recheck_in(Some(now - s(4)), now), Some(s(6)));
        assert_eq!(foreign_recheck_in(Some(now - FOREIGN_RECHECK), now), None);
        assert_eq!(foreign_recheck_in(Some(now - s(60)), now), None);
    }
}
