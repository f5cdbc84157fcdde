//! The pool's Lease: created and kept carrying the policy's timings, read
//! into a [`LeaseView`] with this controller's expiry clock, and cleared or
//! handed off for fast failover. Every write is a compare-and-swap (PUT
//! with the resourceVersion read).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};
use tokio::time::Instant;
use tracing::info;

use super::plan::LeaseClock;
use crate::api::keys::{
    FENCED_LABEL, FENCED_PODS_ANNOTATION, HOLDER_INSTANCE_ANNOTATION, LEASE_POLICY_LABEL,
    PAUSED_ANNOTATION, POOL_LABEL, PREFERRED_HOLDER_ANNOTATION, RENEW_DEADLINE_ANNOTATION,
    RETRY_PERIOD_ANNOTATION, SCHEDULED_RUNS_ANNOTATION,
};
use crate::api::{IdentityStrategy, LeaderPolicy, ScheduledRuns};
use crate::controller::context::{
    Context, HolderSeen, LeaseSeen, ReconcileError, api_err, is_status, truncate,
};
use crate::controller::decide::{LeaseView, PodView};
use crate::controller::queue::PoolKey;
use crate::election::Timings;
use crate::election::record::{Record, format_seconds, instance_value, now_micro};

/// What the controller keeps on a pool's Lease (the agents read the
/// timings and `scheduledRuns` from it, so an edit applies without
/// re-creating pods).
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub pool: String,
    pub lease_seconds: i32,
    pub renew_deadline: String,
    pub retry_period: String,
    pub scheduled_once: bool,
    /// `spec.paused`: the Lease carries `zen-lead.io/paused: "true"`, which
    /// keeps every candidate but the holder from acquiring it.
    pub paused: bool,
    pub owner: OwnerReference,
    /// Server-side fencing: the pool's fenced pods (see
    /// [`crate::controller::fencing::members`]), or `None` when the pool is
    /// not fenced on the server.
    pub fenced_pods: Option<String>,
}

impl Desired {
    pub fn new(key: &PoolKey, policy: &LeaderPolicy, timings: Timings) -> Self {
        Self {
            pool: key.name.clone(),
            lease_seconds: policy.spec.lease_duration_seconds,
            renew_deadline: format_seconds(timings.renew_deadline()),
            retry_period: format_seconds(timings.retry_period()),
            scheduled_once: policy.spec.scheduled_runs == ScheduledRuns::Once,
            paused: policy.spec.paused,
            owner: owner_ref(policy),
            fenced_pods: None,
        }
    }
}

fn owner_ref(policy: &LeaderPolicy) -> OwnerReference {
    OwnerReference {
        api_version: LeaderPolicy::api_version(&()).into_owned(),
        kind: LeaderPolicy::kind(&()).into_owned(),
        name: policy.name_any(),
        uid: policy.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// Brings `lease` in line with `want`; `true` when anything changed. Never
/// touches the holder: that belongs to the candidates.
pub fn conform(lease: &mut Lease, want: &Desired) -> bool {
    let mut changed = false;
    let meta = &mut lease.metadata;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    if labels.get(LEASE_POLICY_LABEL) != Some(&want.pool) {
        labels.insert(LEASE_POLICY_LABEL.to_owned(), want.pool.clone());
        changed = true;
    }
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in [
        (RENEW_DEADLINE_ANNOTATION, &want.renew_deadline),
        (RETRY_PERIOD_ANNOTATION, &want.retry_period),
    ] {
        if annotations.get(k) != Some(v) {
            annotations.insert(k.to_owned(), v.clone());
            changed = true;
        }
    }
    let once_now = annotations
        .get(SCHEDULED_RUNS_ANNOTATION)
        .map(String::as_str)
        == Some("once");
    if want.scheduled_once != once_now {
        if want.scheduled_once {
            annotations.insert(SCHEDULED_RUNS_ANNOTATION.to_owned(), "once".to_owned());
        } else {
            annotations.remove(SCHEDULED_RUNS_ANNOTATION);
        }
        changed = true;
    }
    changed |= conform_paused(annotations, want.paused);
    changed |= conform_fencing(meta, want.fenced_pods.as_deref());
    let owners = meta.owner_references.get_or_insert_with(Vec::new);
    if !owners.iter().any(|o| o.uid == want.owner.uid) {
        // Another controller owner (e.g. a previous policy with the same
        // name) would block garbage collection: replace it.
        owners.retain(|o| o.controller != Some(true));
        owners.push(want.owner.clone());
        changed = true;
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.lease_duration_seconds != Some(want.lease_seconds) {
        spec.lease_duration_seconds = Some(want.lease_seconds);
        changed = true;
    }
    changed
}

/// `zen-lead.io/paused: "true"` exactly while the policy is paused, and no
/// such annotation otherwise, whatever its value: the agents read a trimmed
/// value, so a hand-written `" true "` left in place would pause them while
/// the controller thinks the pool runs.
fn conform_paused(annotations: &mut BTreeMap<String, String>, paused: bool) -> bool {
    let now = annotations.get(PAUSED_ANNOTATION).map(String::as_str);
    match (paused, now) {
        (true, Some("true")) | (false, None) => false,
        (true, _) => {
            annotations.insert(PAUSED_ANNOTATION.to_owned(), "true".to_owned());
            true
        }
        (false, Some(_)) => {
            annotations.remove(PAUSED_ANNOTATION);
            true
        }
    }
}

/// The fencing label and pod list: present exactly while the pool is fenced,
/// so the fencing policy's binding selects only fenced pools' Leases.
fn conform_fencing(meta: &mut ObjectMeta, fenced_pods: Option<&str>) -> bool {
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    match fenced_pods {
        Some(pods) => {
            let label = labels.insert(FENCED_LABEL.to_owned(), "true".to_owned());
            let list = annotations.insert(FENCED_PODS_ANNOTATION.to_owned(), pods.to_owned());
            label.as_deref() != Some("true") || list.as_deref() != Some(pods)
        }
        None => {
            let label = labels.remove(FENCED_LABEL);
            let list = annotations.remove(FENCED_PODS_ANNOTATION);
            label.is_some() || list.is_some()
        }
    }
}

/// The Lease to create for a pool. One deleted while held is re-created
/// naming its last holder, with its instance, so candidates treat it as a
/// live claim (not as free) and the holder keeps its term.
pub fn fresh(key: &PoolKey, last: Option<HolderSeen>, want: &Desired) -> Lease {
    let mut spec = LeaseSpec::default();
    let mut annotations = BTreeMap::new();
    if let Some(last) = last {
        if let Some(instance) = last.instance {
            annotations.insert(
                HOLDER_INSTANCE_ANNOTATION.to_owned(),
                instance_value(&last.identity, &instance),
            );
        }
        let now = now_micro();
        spec.holder_identity = Some(last.identity);
        spec.lease_transitions = Some(last.transitions);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
    }
    let mut lease = Lease {
        metadata: ObjectMeta {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    };
    conform(&mut lease, want);
    lease
}

/// Whether zen-lead made `lease`: the controller (its policy label, or a
/// LeaderPolicy owner, from this policy or an earlier one of the same name),
/// or an agent or `zen-lead lock` (the timings annotations they write into a
/// Lease they create). Anything else belongs to someone else: another
/// controller's leader election with the same name, most likely.
pub fn made_by_zen_lead(lease: &Lease) -> bool {
    let meta = &lease.metadata;
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LEASE_POLICY_LABEL))
        || meta.owner_references.as_ref().is_some_and(|owners| {
            owners.iter().any(|o| {
                o.kind == LeaderPolicy::kind(&())
                    && o.api_version.split('/').next() == Some(&LeaderPolicy::group(&()))
            })
        })
        || meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(RENEW_DEADLINE_ANNOTATION))
}

/// The pool's Lease as [`ensure`] left it.
#[derive(Debug)]
pub enum Ensured {
    /// Created, or brought in line; as stored.
    Managed(Box<Lease>),
    /// A Lease of that name that zen-lead did not create, left untouched
    /// (the policy does not opt in to adopting it).
    NotManaged { holder: Option<String> },
}

/// Creates the Lease or brings its timings, label and owner in line. A
/// Lease zen-lead did not create is adopted only with `adopt`.
pub async fn ensure(
    ctx: &Context,
    key: &PoolKey,
    want: &Desired,
    adopt: bool,
) -> Result<Ensured, ReconcileError> {
    let api: Api<Lease> = ctx.api(key);
    let mut lease = match ctx.cache.lease(key).map(|l| (*l).clone()) {
        Some(l) => l,
        None => {
            let last = ctx.with_memory(key, |m| m.holder_seen.clone());
            match api
                .create(&PostParams::default(), &fresh(key, last, want))
                .await
            {
                Ok(created) => {
                    info!(pool = %key, "created the pool's Lease");
                    return Ok(Ensured::Managed(Box::new(created)));
                }
                // Exists without our label: adopted below if zen-lead made
                // it (an agent, `zen-lead lock`, an earlier policy).
                Err(err) if is_status(&err, 409) => api.get(&key.name).await.map_err(api_err(
                    "read",
                    "Lease",
                    &key.namespace,
                    &key.name,
                ))?,
                Err(err) => return Err(api_err("create", "Lease", &key.namespace, &key.name)(err)),
            }
        }
    };
    if !adopt && !made_by_zen_lead(&lease) {
        return Ok(Ensured::NotManaged {
            holder: lease
                .spec
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty()),
        });
    }
    if !conform(&mut lease, want) {
        return Ok(Ensured::Managed(Box::new(lease)));
    }
    api.replace(&key.name, &PostParams::default(), &lease)
        .await
        .map(|stored| Ensured::Managed(Box::new(stored)))
        .map_err(api_err("update", "Lease", &key.namespace, &key.name))
}

/// The Lease as decisions need it, judged by this controller's clock: a
/// holder is expired when its record has not changed for a lease duration
/// since this controller first saw it (as client-go judges it).
pub fn view(ctx: &Context, key: &PoolKey, lease: &Lease) -> LeaseView {
    let version = lease.resource_version().unwrap_or_default();
    let now = Instant::now();
    let record = Record::from_lease(lease);
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    let instance = record.as_ref().and_then(|r| r.holder_instance.clone());
    let seen = ctx.with_memory(key, |m| {
        m.holder_seen = holder.clone().map(|identity| HolderSeen {
            identity,
            instance: instance.clone(),
            transitions,
        });
        match &m.lease_seen {
            Some(seen) if seen.version == version => seen.at,
            _ => {
                m.lease_seen = Some(LeaseSeen { version, at: now });
                now
            }
        }
    });
    let clock = clock_of(lease, seen);
    let silent = now.saturating_duration_since(seen);
    LeaseView {
        expired: holder.is_some() && silent >= clock.lease_duration,
        past_renew_deadline: holder.is_some() && silent >= clock.renew_deadline,
        holder,
        transitions,
        acquired: spec
            .and_then(|s| s.acquire_time.as_ref())
            .map(|t| truncate(&Time(t.0))),
        holder_instance: instance,
        preferred: record.and_then(|r| r.preferred),
    }
}

/// The holder's timings as the Lease states them (client-go's defaults
/// when it states none).
pub fn clock_of(lease: &Lease, seen: Instant) -> LeaseClock {
    let record = Record::from_lease(lease);
    LeaseClock {
        seen,
        lease_duration: record
            .as_ref()
            .map(|r| r.timings.lease_duration())
            .unwrap_or(Duration::from_secs(15)),
        renew_deadline: record
            .as_ref()
            .map(|r| r.timings.renew_deadline())
            .unwrap_or(Duration::from_secs(10)),
    }
}

/// When this controller first saw the Lease's current version.
pub fn seen(ctx: &Context, key: &PoolKey) -> Option<Instant> {
    ctx.with_memory(key, |m| m.lease_seen.as_ref().map(|s| s.at))
}

/// Whether the holder named in the Lease is confirmed gone by the API
/// server (not just missing from a cache that may lag).
pub async fn holder_confirmed_gone(
    ctx: &Context,
    key: &PoolKey,
    strategy: IdentityStrategy,
    lease: &LeaseView,
) -> Result<bool, ReconcileError> {
    let Some(holder) = lease.holder.as_deref() else {
        return Ok(false);
    };
    let api: Api<Pod> = ctx.api(key);
    match strategy {
        IdentityStrategy::Pod => {
            // `<pod>_<uid prefix>`; pod names cannot contain '_'.
            let Some((name, _)) = holder.rsplit_once('_') else {
                // Not a pod identity (a `zen-lead lock` holder, say): not ours to expire.
                return Ok(false);
            };
            match api.get_opt(name).await {
                Ok(None) => Ok(true),
                // Same name, other UID: a re-created pod (StatefulSet).
                Ok(Some(pod)) => Ok(!PodView::from_pod(&pod, strategy).holds(lease)),
                Err(err) => Err(api_err("read", "Pod", &key.namespace, name)(err)),
            }
        }
        IdentityStrategy::Custom => {
            let selector = format!("{POOL_LABEL}={}", key.name);
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(api_err("list", "Pod", &key.namespace, &key.name))?;
            // The holder's instance (pod UID) settles which pod holds when
            // several share the identity.
            Ok(!list
                .items
                .iter()
                .any(|p| PodView::from_pod(p, strategy).holds(lease)))
        }
    }
}

/// Clears the holder. `false`: the Lease changed meanwhile (the next
/// reconcile decides again).
pub async fn expire(ctx: &Context, key: &PoolKey, lease: &Lease) -> Result<bool, ReconcileError> {
    let mut next = lease.clone();
    if let Some(spec) = next.spec.as_mut() {
        spec.holder_identity = None;
    }
    if let Some(a) = next.metadata.annotations.as_mut() {
        a.remove(PREFERRED_HOLDER_ANNOTATION);
        a.remove(HOLDER_INSTANCE_ANNOTATION);
    }
    swap(ctx, key, &next, "expire").await
}

/// Names `to` as preferred holder. `false`: the Lease changed meanwhile.
pub async fn hand_off(
    ctx: &Context,
    key: &PoolKey,
    lease: &Lease,
    to: &str,
) -> Result<bool, ReconcileError> {
    let mut next = lease.clone();
    next.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(PREFERRED_HOLDER_ANNOTATION.to_owned(), to.to_owned());
    swap(ctx, key, &next, "hand off").await
}

async fn swap(
    ctx: &Context,
    key: &PoolKey,
    next: &Lease,
    action: &'static str,
) -> Result<bool, ReconcileError> {
    let api: Api<Lease> = ctx.api(key);
    match api.replace(&key.name, &PostParams::default(), next).await {
        Ok(_) => Ok(true),
        Err(err) if is_status(&err, 409) => Ok(false),
        Err(err) => Err(api_err(action, "Lease", &key.namespace, &key.name)(err)),
    }
}
