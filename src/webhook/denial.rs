//! Why the webhook refuses a pod, and where its pool annotation came from. A
//! leaf: `inject` and `process` both build these refusals.

use crate::api::keys::{
    EXCLUDE_CONTAINERS_ANNOTATION, IDENTITY_ANNOTATION, JOIN_ANNOTATION, POOL_ANNOTATION,
};

/// Where a pod's pool annotation was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolOrigin {
    Pod,
    Owner { kind: String, name: String },
}

impl std::fmt::Display for PoolOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pod => f.write_str("pod"),
            Self::Owner { kind, name } => write!(f, "{kind}/{name}"),
        }
    }
}

/// Why a pod is refused. Only for annotations that are present but wrong: a
/// pod that asked for a pool must not start without its election.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("{POOL_ANNOTATION} {value:?} (on {origin}) cannot name a LeaderPolicy: {reason}")]
    InvalidPool {
        value: String,
        origin: PoolOrigin,
        reason: String,
    },

    #[error("{JOIN_ANNOTATION} {value:?} (on {origin}) must be \"true\" or \"false\"")]
    InvalidJoin { value: String, origin: PoolOrigin },

    #[error(
        "LeaderPolicy {pool:?} has identityStrategy: custom, so every pod of the pool needs its \
         own {IDENTITY_ANNOTATION} annotation, and this pod has none; set a unique \
         {IDENTITY_ANNOTATION} on the pod, or use identityStrategy: pod"
    )]
    MissingCustomIdentity { pool: String },

    #[error(
        "LeaderPolicy {pool:?} has identityStrategy: custom, but this pod's {IDENTITY_ANNOTATION} \
         {identity:?} comes from the pod template of {owner}, which gives every pod it creates \
         the same identity (a rollout runs old and new pods together); use identityStrategy: pod \
         for a {owner_kind}, or run it as a single-replica StatefulSet or a bare pod"
    )]
    SharedCustomIdentity {
        pool: String,
        identity: String,
        owner: String,
        owner_kind: String,
    },

    #[error(
        "LeaderPolicy {pool:?} uses activation: process, which runs each app container's program \
         under `zen-lead run`, but container {container:?} has no `command` (it relies on the \
         image's ENTRYPOINT, which admission cannot see); set `command` to the image's \
         entrypoint (`args` stay as they are), or name the container in \
         {EXCLUDE_CONTAINERS_ANNOTATION} to run it in every replica"
    )]
    NoCommand { pool: String, container: String },

    #[error(
        "{EXCLUDE_CONTAINERS_ANNOTATION} names {names:?}, but the pod has no such container (its \
         containers: {containers:?}; pool {pool:?})"
    )]
    UnknownExcludedContainers {
        pool: String,
        names: Vec<String>,
        containers: Vec<String>,
    },

    #[error(
        "LeaderPolicy {pool:?} uses activation: process, so container {container:?}'s {kind} \
         probe is answered through the agent, which needs its port as a number; port {port:?} \
         is not a valid port or one of the container's named ports"
    )]
    ProbePort {
        pool: String,
        container: String,
        kind: &'static str,
        port: String,
    },
}
