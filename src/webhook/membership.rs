//! Whether a pod belongs to a pool: its own annotations, then its owners'
//! (nearest first), and what the handler must read to know.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::denial::{Denial, PoolOrigin};
use crate::api::keys::{JOIN_ANNOTATION, POOL_ANNOTATION};
use crate::api::validate_pool_name;
use crate::contract::AGENT_CONTAINER;

/// The annotations of one owner in a pod's ownership chain (a ReplicaSet,
/// Job, StatefulSet, or their own owner: Deployment, CronJob).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerMeta {
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub pool: Option<String>,
    pub join: Option<String>,
    /// This owner's own controller, if any.
    pub controller: Option<OwnerReference>,
    /// A Job's `batch.kubernetes.io/cronjob-scheduled-timestamp` (set by the
    /// CronJob controller).
    pub scheduled_time: Option<String>,
}

/// The scheduled run a CronJob-created Job's pod belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRun {
    /// The Job's scheduled time, as the CronJob controller wrote it.
    pub time: String,
    pub job: String,
}

impl ScheduledRun {
    /// From a Job's owner facts, when it has a scheduled time.
    pub fn of(job: &OwnerMeta) -> Option<Self> {
        (job.kind == "Job").then_some(())?;
        let time = job.scheduled_time.as_deref()?.trim();
        (!time.is_empty()).then(|| Self {
            time: time.to_owned(),
            job: job.name.clone(),
        })
    }
}

/// Kinds whose annotations the webhook consults (group, kind): the pod's
/// controller, and that controller's controller.
pub const OWNER_KINDS: &[(&str, &str)] = &[
    ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("apps", "Deployment"),
    ("batch", "Job"),
    ("batch", "CronJob"),
];

/// How deep the webhook follows controllers: pod -> ReplicaSet -> Deployment,
/// pod -> Job -> CronJob.
pub const MAX_OWNER_DEPTH: usize = 2;

/// Whether an owner reference points to a kind listed in [`OWNER_KINDS`].
pub fn is_supported_owner(owner: &OwnerReference) -> bool {
    let group = owner.api_version.split_once('/').map_or("", |(g, _)| g);
    OWNER_KINDS
        .iter()
        .any(|(g, k)| *g == group && *k == owner.kind)
}

/// The controller owner reference of an object, if any.
pub fn controller_of(owners: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    owners?.iter().find(|o| o.controller == Some(true))
}

/// Whether a pod is in a pool, after looking at it and its owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// No `zen-lead/pool` annotation on the pod or its owners.
    None,
    /// `zen-lead/join: "false"` (`pool`: the pool it would have joined, if
    /// one is named).
    OptedOut {
        pool: Option<String>,
    },
    Member {
        pool: String,
        origin: PoolOrigin,
    },
}

/// The first thing the handler asks: can the pod alone settle membership, or
/// must its owners be read?
#[derive(Debug, Clone, PartialEq)]
pub enum Triage {
    /// The agent is already there (a reinvocation or a copied pod).
    AlreadyInjected,
    /// Settled by the pod's own annotations (or by having no owner to ask).
    Decided(Membership),
    /// No pool annotation on the pod: ask this controller owner.
    AskOwner(OwnerReference),
}

pub(super) fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

pub(super) fn agent_index(pod: &Pod) -> Option<usize> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .position(|c| c.name == AGENT_CONTAINER)
}

pub(super) fn has_agent(pod: &Pod) -> bool {
    agent_index(pod).is_some()
        || pod
            .spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().any(|c| c.name == AGENT_CONTAINER))
}

/// First look at a pod, without I/O.
pub fn triage(pod: &Pod) -> Triage {
    if has_agent(pod) {
        return Triage::AlreadyInjected;
    }
    let pool = annotation(pod, POOL_ANNOTATION);
    let join = annotation(pod, JOIN_ANNOTATION);
    // The pod's own annotations settle it when they name a pool or opt out;
    // otherwise (and only then) the owners are worth asking.
    if pool.is_some() || join.is_some_and(|j| j.eq_ignore_ascii_case("false")) {
        return Triage::Decided(Membership::None);
    }
    match controller_of(pod.metadata.owner_references.as_ref()) {
        Some(owner) if is_supported_owner(owner) => Triage::AskOwner(owner.clone()),
        _ => Triage::Decided(Membership::None),
    }
}

/// Membership from the pod's annotations and its owner chain (nearest first).
/// The nearest object that names a pool decides the pool, and the nearest that
/// sets `zen-lead/join` decides whether to join, so a pod template can opt out
/// of a pool named on its CronJob.
pub fn membership(pod: &Pod, chain: &[OwnerMeta]) -> Result<Membership, Denial> {
    let levels = std::iter::once((
        PoolOrigin::Pod,
        annotation(pod, POOL_ANNOTATION),
        annotation(pod, JOIN_ANNOTATION),
    ))
    .chain(chain.iter().map(|o| {
        (
            PoolOrigin::Owner {
                kind: o.kind.clone(),
                name: o.name.clone(),
            },
            o.pool.as_deref(),
            o.join.as_deref(),
        )
    }));
    let mut pool: Option<(String, PoolOrigin)> = None;
    let mut join: Option<bool> = None;
    for (origin, p, j) in levels {
        if join.is_none()
            && let Some(value) = j
        {
            join = Some(parse_join(value).ok_or_else(|| Denial::InvalidJoin {
                value: value.to_owned(),
                origin: origin.clone(),
            })?);
        }
        if pool.is_none()
            && let Some(value) = p
        {
            let value = value.trim();
            validate_pool_name(value).map_err(|reason| Denial::InvalidPool {
                value: value.to_owned(),
                origin: origin.clone(),
                reason,
            })?;
            pool = Some((value.to_owned(), origin));
        }
    }
    Ok(match (pool, join) {
        (pool, Some(false)) => Membership::OptedOut {
            pool: pool.map(|(p, _)| p),
        },
        (None, _) => Membership::None,
        (Some((pool, origin)), _) => Membership::Member { pool, origin },
    })
}

fn parse_join(value: &str) -> Option<bool> {
    match value.trim() {
        v if v.eq_ignore_ascii_case("true") => Some(true),
        v if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}
