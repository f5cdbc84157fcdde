//! What the webhook does to a pod, free of I/O: decide whether a pod belongs
//! to a pool, and build the JSON patch that makes it a candidate.
//!
//! The handler gathers the facts (the pod, its owners' annotations, whether
//! the LeaderPolicy exists) and this module turns them into a [`Decision`].
//! Golden tests (`tests/golden/webhook/`) pin its output.

use std::collections::BTreeMap;

use json_patch::{MoveOperation, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

pub use super::denial::{Denial, PoolOrigin};
use super::patch::{add, pointer, replace};
use super::process;
use crate::api::keys::{
    ACTIVATION_ANNOTATION, ACTIVATION_REASON_ANNOTATION, CANDIDATE_READINESS_GATE,
    IDENTITY_ANNOTATION, INJECTED_ANNOTATION, JOIN_ANNOTATION, POOL_ANNOTATION,
    POOL_FROM_ANNOTATION, POOL_LABEL,
};
use crate::api::validate_pool_name;
use crate::api::{Activation, IdentityStrategy};
use crate::contract::{
    APP_PROBES_ENV, AppProbe, BIN_DIR, BIN_DIR_ENV, BIN_VOLUME, EXCLUDE_CONTAINERS_ANNOTATION,
    JOB_NAME_ENV, SCHEDULED_TIME_ENV,
};

pub use crate::contract::{AGENT_COMMAND, AGENT_CONTAINER, AGENT_PORT, AGENT_PROBE_PORT};

/// Name of the agent's container port, its probe port on the pod IP (at
/// most 15 characters). The loopback API (`AGENT_PORT`) is not declared:
/// nothing outside the pod may use it.
pub const AGENT_PORT_NAME: &str = "zl-agent";

/// Arguments of the agent container's [`AGENT_COMMAND`].
pub const AGENT_ARGS: &[&str] = &["agent"];

pub use crate::contract::agent_env;

/// Where the app's in-cluster client finds the API server and its
/// credentials, and where `api` activation points it instead.
pub mod api_wiring {
    /// The gate's port on the pod's loopback. Must equal the default of
    /// `zen-lead agent --gate-addr` (`127.0.0.1:9467`), like [`super::AGENT_PORT`].
    pub const GATE_PORT: u16 = 9467;
    /// The gate listens on loopback only: nothing outside the pod reaches it.
    pub const GATE_HOST: &str = "127.0.0.1";
    /// The directory every in-cluster client reads `token`, `ca.crt` and
    /// `namespace` from (client-go, kube-rs, the Python and Java clients).
    pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    /// Prefix of the projected token volume the ServiceAccount admission
    /// plugin adds (`kube-api-access-<random>`); the plugin finds its own
    /// volume by the same prefix.
    pub const SA_VOLUME_PREFIX: &str = "kube-api-access-";
    /// Where the agent writes the app's service-account directory (the
    /// default of `zen-lead agent --gate-sa-dir`).
    pub const GATE_SA_DIR: &str = "/var/run/zen-lead/serviceaccount";
    /// The in-memory volume holding that directory, shared with the app.
    pub const GATE_SA_VOLUME: &str = "zen-lead-serviceaccount";
    /// Where the agent keeps the gate's CA private key across restarts of
    /// its container (`zen-lead agent --gate-state-dir`).
    pub const GATE_STATE_DIR: &str = "/var/run/zen-lead/gate-state";
    /// The in-memory volume holding that directory. Mounted into the agent
    /// only: an app that could read the key could impersonate the gate.
    pub const GATE_STATE_VOLUME: &str = "zen-lead-gate-state";
    /// The agent's own token volume, added only when the pod has none
    /// (`automountServiceAccountToken: false` on the pod or its ServiceAccount).
    pub const AGENT_TOKEN_VOLUME: &str = "zen-lead-api-access";
    /// Lifetime requested for the agent's own projected token; the kubelet
    /// rotates it at 80 %. The same value the ServiceAccount plugin uses.
    pub const AGENT_TOKEN_SECONDS: i64 = 3607;
    /// Names in-cluster clients use for the API server; they resolve to the
    /// gate through the pod's host aliases. The agent's certificate covers
    /// them and 127.0.0.1.
    pub const API_SERVER_NAMES: &[&str] = &[
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    /// Environment variables in-cluster clients build the API server's
    /// address from; app containers get them pointing at the gate.
    pub const HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
    pub const PORT_ENV: &str = "KUBERNETES_SERVICE_PORT";
    pub const PORT_HTTPS_ENV: &str = "KUBERNETES_SERVICE_PORT_HTTPS";
}

/// The agent's probe endpoints.
pub mod agent_paths {
    /// Succeeds once the pod leads (`start` activation gates the app on it).
    pub const STARTZ: &str = "/startz";
    pub const READYZ: &str = "/readyz";
    pub const LIVEZ: &str = "/livez";
}

/// Largest `failureThreshold` the API accepts (int32). With `periodSeconds:
/// 1` a follower can wait about 68 years for leadership: effectively forever,
/// without the kubelet ever restarting a healthy follower's agent.
pub const STARTUP_FAILURE_THRESHOLD: i32 = i32::MAX;

/// UID and GID of the image's non-root user (distroless `nonroot`).
pub const AGENT_UID: i64 = 65532;

/// How the agent container is built. Comes from `zen-lead controller` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    pub image: String,
    /// `None`: the cluster's default (Always for `:latest`, else IfNotPresent).
    pub image_pull_policy: Option<String>,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// What a policy's `activation: auto` (the CRD default) means in this
    /// cluster: `Auto` keeps the per-kind rule of [`effective_activation`].
    pub default_activation: Activation,
    /// Recorded in the injected annotation.
    pub version: String,
}

impl InjectConfig {
    /// Defaults for an image: requests small enough for any node.
    pub fn with_image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: None,
            cpu_request: "10m".to_owned(),
            memory_request: "16Mi".to_owned(),
            memory_limit: "64Mi".to_owned(),
            default_activation: Activation::Auto,
            version: crate::VERSION.to_owned(),
        }
    }
}

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

/// The activation a pod of pool `pool` (in `namespace`) gets, as
/// [`decide_run`] applies it; refused when the policy could not be read.
pub fn activation_of(
    pod: &Pod,
    namespace: &str,
    pool: &str,
    policy: &PolicyState,
    config: &InjectConfig,
) -> Result<Activation, Refusal> {
    let (requested, _) = policy.settings(namespace, pool)?;
    Ok(effective_activation(with_default(requested, config), pod))
}

/// The cluster's default (`--default-activation`) stands in for `auto`; an
/// explicit `api`, `start` or `process` always wins.
fn with_default(requested: Activation, config: &InjectConfig) -> Activation {
    match requested {
        Activation::Auto => config.default_activation,
        chosen => chosen,
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

/// What is known about the pool's LeaderPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyState {
    Found {
        activation: Activation,
        identity: IdentityStrategy,
    },
    /// The API server says it does not exist: the pod joins with the
    /// defaults (and a warning), and no leader is elected until it exists.
    Missing,
    /// The lookup failed: a pool member is refused ([`Refusal::PolicyUnreadable`]),
    /// never given defaults that may not be the policy's.
    Unknown { reason: String },
}

impl PolicyState {
    /// The activation the policy asks for and its identity strategy: its
    /// own, the CRD's defaults (`auto`, `pod`) when it does not exist, or the
    /// refusal when it could not be read.
    pub fn settings(
        &self,
        namespace: &str,
        pool: &str,
    ) -> Result<(Activation, IdentityStrategy), Refusal> {
        match self {
            Self::Found {
                activation,
                identity,
            } => Ok((*activation, *identity)),
            Self::Missing => Ok((Activation::Auto, IdentityStrategy::Pod)),
            Self::Unknown { reason } => Err(Refusal::PolicyUnreadable {
                namespace: namespace.to_owned(),
                pool: pool.to_owned(),
                reason: reason.clone(),
            }),
        }
    }
}

/// What a refusal for an unreadable fact tells the user about retries.
const RETRIED: &str = "The pod is refused so that it cannot run as an unprotected pool replica; \
    its controller (a ReplicaSet, Job, StatefulSet or DaemonSet) retries the create with \
    back-off, a pod created directly must be created again. If this persists, check the \
    zen-lead controller's log and that its ServiceAccount may get";

/// Why the webhook refuses a pod: an annotation that is present but wrong
/// ([`Denial`]), or a fact zen-lead needs and could not read. The latter
/// fail closed: a pod that may belong to a pool must not start without its
/// election, or with an activation its policy may not ask for. They are
/// transient; the pod's controller retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Denied(#[from] Denial),

    #[error(
        "could not read {kind} {namespace}/{name}, {} ({reason}), so zen-lead cannot tell \
         whether the pod belongs to a pool (a {POOL_ANNOTATION} annotation there would make it \
         one). {RETRIED} {kind}s in namespace {namespace}",
        owner_role(.of)
    )]
    OwnerUnreadable {
        namespace: String,
        kind: String,
        name: String,
        /// The owner (`<Kind> <name>`) whose owner this is, when not the pod's own.
        of: Option<String>,
        reason: String,
    },

    #[error(
        "could not read LeaderPolicy {namespace}/{pool}, the policy of the pod's pool \
         ({reason}), so the pod's activation and identity strategy are unknown. {RETRIED} \
         LeaderPolicies in namespace {namespace}"
    )]
    PolicyUnreadable {
        namespace: String,
        pool: String,
        reason: String,
    },

    #[error(
        "could not read Job {namespace}/{job}, the pod's Job ({reason}), for the scheduled \
         time of the CronJob run it belongs to. Pool {pool:?} uses activation process, where \
         scheduledRuns: once lets only the first Job of a scheduled time run; started as a \
         manual run, this one could repeat a run another Job already made. {RETRIED} Jobs in \
         namespace {namespace}"
    )]
    JobUnreadable {
        namespace: String,
        job: String,
        pool: String,
        reason: String,
    },
}

/// "the pod's owner", or "the owner of the pod's ReplicaSet web-5d8f".
fn owner_role(of: &Option<String>) -> String {
    of.as_deref().map_or_else(
        || "the pod's owner".to_owned(),
        |o| format!("the owner of the pod's {o}"),
    )
}

impl Refusal {
    /// Whether zen-lead refused because it could not read something (a
    /// transient failure of its own), not because of the pod's annotations.
    pub fn is_unreadable(&self) -> bool {
        !matches!(self, Self::Denied(_))
    }
}

/// What happened to a pod, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    NotInPool,
    OptedOut,
    AlreadyInjected,
    /// Already injected, but another webhook put an init container in front
    /// of the agent; the agent is moved back to the front.
    Reordered,
    /// Already injected in `api` activation, but another webhook added a
    /// container since; it is wired to the gate like the app's own.
    Rewired,
    Injected,
}

impl Outcome {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotInPool => "not_in_pool",
            Self::OptedOut => "opted_out",
            Self::AlreadyInjected => "already_injected",
            Self::Reordered => "reordered",
            Self::Rewired => "rewired",
            Self::Injected => "injected",
        }
    }
}

/// The webhook's answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    pub patch: Vec<PatchOperation>,
    pub warnings: Vec<String>,
}

impl Decision {
    fn plain(outcome: Outcome) -> Self {
        Self {
            outcome,
            patch: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn agent_index(pod: &Pod) -> Option<usize> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .position(|c| c.name == AGENT_CONTAINER)
}

fn has_agent(pod: &Pod) -> bool {
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

/// An activation (never `auto`) and why the pod gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub activation: Activation,
    pub reason: String,
}

/// The activation a pod gets. `auto` means `api` for pods of long-running
/// controllers, whose rollouts and drains need every replica Ready: ReplicaSets
/// (Deployments), StatefulSets and DaemonSets. Everything else (Jobs, CronJobs,
/// bare pods, other owners) runs to completion and must not overlap: `process`
/// where it can hold every app container (each has a `command`, and the pod
/// has no init containers, which `process` would not hold), since `run` stops
/// a deposed leader's program by its term's deadline, where `start` leaves it
/// running until the kubelet kills it; `start` otherwise.
pub fn effective_activation(requested: Activation, pod: &Pod) -> Activation {
    match requested {
        Activation::Auto => auto_activation(pod).activation,
        chosen => chosen,
    }
}

/// The activation the policy's `requested` one (`auto` for a missing policy)
/// gives `pod`, with the cluster's default standing in for `auto`, and why.
pub fn resolve_activation(requested: Activation, pod: &Pod, config: &InjectConfig) -> Resolved {
    match (requested, config.default_activation) {
        (Activation::Auto, Activation::Auto) => auto_activation(pod),
        (Activation::Auto, default) => Resolved {
            activation: default,
            reason: format!(
                "auto: the controller's --default-activation is {}",
                activation_name(default)
            ),
        },
        (chosen, _) => Resolved {
            activation: chosen,
            reason: format!("LeaderPolicy activation: {}", activation_name(chosen)),
        },
    }
}

/// What `auto` means for `pod`, and why.
fn auto_activation(pod: &Pod) -> Resolved {
    if let Some(kind) = long_running_owner(pod) {
        return Resolved {
            activation: Activation::Api,
            reason: format!(
                "auto: a {kind}'s pods run continuously, and api keeps every replica Ready"
            ),
        };
    }
    match process_blocker(pod) {
        None => Resolved {
            activation: Activation::Process,
            reason: "auto: every app container has a command, so process".to_owned(),
        },
        Some(why) => Resolved {
            activation: Activation::Start,
            reason: format!("auto: {why}, so start"),
        },
    }
}

/// The kind of the pod's controller when its pods run continuously.
fn long_running_owner(pod: &Pod) -> Option<&str> {
    controller_of(pod.metadata.owner_references.as_ref())
        .filter(|o| {
            o.api_version.starts_with("apps/")
                && matches!(o.kind.as_str(), "ReplicaSet" | "StatefulSet" | "DaemonSet")
        })
        .map(|o| o.kind.as_str())
}

/// Why `process` cannot hold this run-to-completion pod the way `start`
/// would, if anything: a container it cannot wire (no `command`), init
/// containers (`process` holds only app containers; with `start` the kubelet
/// starts no init container of a follower), or no app container left to hold.
fn process_blocker(pod: &Pod) -> Option<String> {
    // The pool only names itself in a Denial's text, which is not used here.
    let wiring = match process::wiring(pod, "") {
        Ok(wiring) => wiring,
        Err(Denial::NoCommand { container, .. }) => {
            return Some(format!(
                "container {container:?} has no command (process needs one)"
            ));
        }
        Err(Denial::UnknownExcludedContainers { names, .. }) => {
            return Some(format!(
                "{EXCLUDE_CONTAINERS_ANNOTATION} names {names:?}, which the pod does not have"
            ));
        }
        Err(Denial::ProbePort {
            container,
            kind,
            port,
            ..
        }) => {
            return Some(format!(
                "container {container:?}'s {kind} probe port {port:?} is neither a number nor \
                 one of its named ports (process needs one)"
            ));
        }
        Err(other) => return Some(format!("process cannot wire the pod ({other})")),
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Some("the pod has no spec".to_owned());
    };
    if let Some(init) = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name != AGENT_CONTAINER)
    {
        return Some(format!(
            "init container {:?} would run in every pod under process, which holds only app \
             containers",
            init.name
        ));
    }
    if wiring.ops.is_empty() {
        return Some(if spec.containers.is_empty() {
            "the pod has no app container for process to hold".to_owned()
        } else {
            format!("{EXCLUDE_CONTAINERS_ANNOTATION} excludes every app container from process")
        });
    }
    None
}

/// Identity rules a pod must meet before it joins a `custom` pool: it names
/// its own identity, and that identity is not stamped on every pod of a
/// workload that runs several pods at once (ReplicaSets roll old and new pods
/// together; DaemonSets run one per node). Other shared identities (a
/// StatefulSet or Job with several pods) are only known from the pods that
/// exist, so the controller reports them; the election keeps them safe.
/// A policy that could not be read is refused here too: its strategy is
/// unknown, and `pod` is no safe guess for a `custom` pool.
pub fn check_identity(
    pod: &Pod,
    namespace: &str,
    chain: &[OwnerMeta],
    membership: &Membership,
    policy: &PolicyState,
) -> Result<(), Refusal> {
    let Membership::Member { pool, .. } = membership else {
        return Ok(());
    };
    let (_, identity) = policy.settings(namespace, pool)?;
    if identity != IdentityStrategy::Custom || has_agent(pod) {
        return Ok(());
    }
    let Some(value) = annotation(pod, IDENTITY_ANNOTATION)
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Err(Denial::MissingCustomIdentity { pool: pool.clone() }.into());
    };
    match controller_of(pod.metadata.owner_references.as_ref()) {
        Some(owner)
            if owner.api_version.starts_with("apps/")
                && matches!(owner.kind.as_str(), "ReplicaSet" | "DaemonSet") =>
        {
            // Name what the user edits: the Deployment behind a ReplicaSet
            // (from the owner chain, or from the ReplicaSet's name, which is
            // `<deployment>-<pod-template-hash>`).
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            let workload = chain
                .iter()
                .find(|o| o.kind == "Deployment")
                .map(|d| d.name.clone())
                .or_else(|| {
                    hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}")))
                        .map(str::to_owned)
                })
                .filter(|_| owner.kind == "ReplicaSet")
                .map_or_else(
                    || format!("{}/{}", owner.kind, owner.name),
                    |d| format!("Deployment/{d}"),
                );
            Err(Denial::SharedCustomIdentity {
                pool: pool.clone(),
                identity: value.to_owned(),
                owner: workload,
                owner_kind: if owner.kind == "ReplicaSet" {
                    "Deployment".to_owned()
                } else {
                    owner.kind.clone()
                },
            }
            .into())
        }
        _ => Ok(()),
    }
}

/// The patch for a pod already triaged as injected: empty, unless another
/// webhook has changed it since. In `api` activation a container it added
/// would talk to the API server around the gate, so it is wired like the
/// app's own. In `start` activation anything before the agent would run in
/// followers too, so the agent goes back to the front.
pub fn reinvocation(pod: &Pod) -> Decision {
    let mut warnings = Vec::new();
    let mut patch = rewiring(pod, &mut warnings);
    let rewired = !patch.is_empty();
    let reordered = match agent_index(pod) {
        Some(i) if i > 0 => {
            // After the wiring, whose paths use the indexes before the move.
            patch.push(PatchOperation::Move(MoveOperation {
                from: pointer(&["spec", "initContainers", &i.to_string()]),
                path: pointer(&["spec", "initContainers", "0"]),
            }));
            true
        }
        _ => false,
    };
    let outcome = if rewired {
        Outcome::Rewired
    } else if reordered {
        Outcome::Reordered
    } else {
        Outcome::AlreadyInjected
    };
    Decision {
        outcome,
        patch,
        warnings,
    }
}

/// The first injection's `api` wiring again, on the pod as it is now: it
/// changes only what is not wired yet (containers added since), so a pod
/// with nothing new gets no operations. Other activations wire nothing here.
fn rewiring(pod: &Pod, warnings: &mut Vec<String>) -> Vec<PatchOperation> {
    if !runs_gate(pod) {
        return Vec::new();
    }
    match TokenVolume::of(pod) {
        TokenVolume::Present(volume) => app_wiring(pod, &volume, warnings),
        // Nothing was wired at injection either, and it said so then.
        TokenVolume::Absent { .. } => Vec::new(),
    }
}

/// Whether the pod's agent runs the gate (`api` activation). Asks the agent
/// container, not the activation annotation: wiring a container to a gate
/// that is not there would cut it off the API server.
fn runs_gate(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == AGENT_CONTAINER)
        .flat_map(|c| c.env.iter().flatten())
        .any(|e| e.name == agent_env::ACTIVATION && e.value.as_deref() == Some("api"))
}

/// The decision for a pod whose membership is known (its namespace from its
/// own metadata, for messages).
pub fn decide(
    pod: &Pod,
    membership: &Membership,
    policy: &PolicyState,
    config: &InjectConfig,
) -> Result<Decision, Refusal> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    decide_run(pod, namespace, membership, policy, config, None)
}

/// [`decide`] for a pod of a CronJob-created Job: `process` activation tells
/// the agent the scheduled run, for `scheduledRuns: once`.
pub fn decide_run(
    pod: &Pod,
    namespace: &str,
    membership: &Membership,
    policy: &PolicyState,
    config: &InjectConfig,
    scheduled: Option<&ScheduledRun>,
) -> Result<Decision, Refusal> {
    if has_agent(pod) {
        return Ok(reinvocation(pod));
    }
    let (pool, origin) = match membership {
        Membership::None => return Ok(Decision::plain(Outcome::NotInPool)),
        Membership::OptedOut { .. } => return Ok(Decision::plain(Outcome::OptedOut)),
        Membership::Member { pool, origin } => (pool, origin),
    };
    let (requested, identity) = policy.settings(namespace, pool)?;
    let mut warnings = Vec::new();
    if *policy == PolicyState::Missing {
        warnings.push(format!(
            "zen-lead: LeaderPolicy {pool:?} does not exist in this namespace; the pod joins \
             with default settings and no leader is elected until the policy is created"
        ));
    }
    let resolved = resolve_activation(requested, pod, config);
    let activation = resolved.activation;
    let token = TokenVolume::of(pod);
    let mut patch = Vec::new();
    let mut app_probes = Vec::new();
    if activation == Activation::Process {
        let wiring = process::wiring(pod, pool)?;
        patch.extend(wiring.ops);
        app_probes = wiring.probes;
    }
    if activation == Activation::Api {
        patch.extend(api_patch(pod, pool, &token, &mut warnings));
    }
    // For a missing policy the CRD's default, `pod`; a `custom` policy
    // created later is reported by the controller on this pod, which then
    // needs re-creating.
    let agent = agent_container(
        pool,
        config,
        activation,
        identity,
        &token,
        &app_probes,
        scheduled,
    );
    patch.extend(injection_patch(
        pod, pool, origin, &agent, &resolved, &token, config,
    ));
    Ok(Decision {
        outcome: Outcome::Injected,
        patch,
        warnings,
    })
}

/// `api` activation's wiring of the app containers, or (without a token to
/// fence) nothing but a warning.
fn api_patch(
    pod: &Pod,
    pool: &str,
    token: &TokenVolume,
    warnings: &mut Vec<String>,
) -> Vec<PatchOperation> {
    match token {
        TokenVolume::Present(volume) => app_wiring(pod, volume, warnings),
        TokenVolume::Absent { pod_opted_out } => {
            warnings.push(format!(
                "zen-lead: activation \"api\" for pool {pool:?}, but the app has no \
                 service-account token ({}), so there are no Kubernetes API writes to fence: \
                 every replica runs unrestricted. Route traffic with the zen-lead.io/role=leader \
                 label, or use activation \"start\" if only one replica may run",
                if *pod_opted_out {
                    "the pod sets automountServiceAccountToken: false"
                } else {
                    "its ServiceAccount does not automount one"
                }
            ));
            Vec::new()
        }
    }
}

/// The pod's service-account token volume, as the ServiceAccount admission
/// plugin left it (it runs before mutating webhooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVolume {
    /// The plugin's projected volume, by name.
    Present(String),
    /// No token is mounted: the pod or its ServiceAccount turned automounting
    /// off. The agent then gets a token volume of its own.
    Absent { pod_opted_out: bool },
}

impl TokenVolume {
    pub fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let volume = spec
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .find(|v| v.name.starts_with(api_wiring::SA_VOLUME_PREFIX) && v.projected.is_some());
        match volume {
            Some(v) => Self::Present(v.name.clone()),
            None => Self::Absent {
                pod_opted_out: spec.and_then(|s| s.automount_service_account_token) == Some(false),
            },
        }
    }
}

/// Points every app container at the gate: `KUBERNETES_SERVICE_HOST/PORT`,
/// the service-account directory the agent keeps instead of the real token
/// mount, and host aliases for the API server's in-cluster names. Uses the
/// pod's indexes before the agent is inserted, so it must come first in the
/// patch. All init containers count: the agent is inserted in front of them,
/// so its gate is up before any of them starts. What is wired already gets
/// no operation, so on reinvocation only containers added since change.
fn app_wiring(pod: &Pod, token_volume: &str, warnings: &mut Vec<String>) -> Vec<PatchOperation> {
    use api_wiring::*;
    let mut ops = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return ops;
    };
    let gate_env = [
        (HOST_ENV, GATE_HOST.to_owned()),
        (PORT_ENV, GATE_PORT.to_string()),
        (PORT_HTTPS_ENV, GATE_PORT.to_string()),
    ];
    let mount = serde_json::to_value(VolumeMount {
        name: GATE_SA_VOLUME.to_owned(),
        mount_path: SA_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    })
    .unwrap_or(Value::Null);
    let lists = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (list, containers) in lists {
        for (i, container) in containers.iter().enumerate() {
            // Present on reinvocation; it keeps the real token.
            if container.name == AGENT_CONTAINER {
                continue;
            }
            let index = i.to_string();
            let at = |rest: &[&'static str]| -> Vec<String> {
                ["spec", list, index.as_str()]
                    .iter()
                    .chain(rest)
                    .map(|s| (*s).to_owned())
                    .collect()
            };
            match token_mount_op(container, token_volume, &mount, &at) {
                Ok(op) => ops.extend(op),
                Err(warning) => {
                    warnings.push(warning);
                    continue;
                }
            }
            gate_env_ops(container, &gate_env, &at, &mut ops);
        }
    }
    ops.extend(host_aliases(pod, warnings));
    ops
}

/// The token mount: the plugin's volume is swapped for the agent's
/// directory. A container mounting something else there brings its own
/// credentials, which the gate could not forward: it is left alone entirely
/// (pointed at the gate, the CA it brings would not trust the agent's
/// certificate), and `Err` carries the warning saying so. `None`: the
/// directory is mounted already.
fn token_mount_op(
    container: &Container,
    token_volume: &str,
    mount: &Value,
    at: &impl Fn(&[&'static str]) -> Vec<String>,
) -> Result<Option<PatchOperation>, String> {
    use api_wiring::{GATE_SA_VOLUME, SA_MOUNT_PATH};
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    match mounts
        .iter()
        .position(|m| m.mount_path.trim_end_matches('/') == SA_MOUNT_PATH)
    {
        Some(k) if mounts[k].name == GATE_SA_VOLUME => Ok(None),
        Some(k) if mounts[k].name == token_volume => {
            let mut path = at(&["volumeMounts"]);
            path.push(k.to_string());
            Ok(Some(replace(&path, mount.clone())))
        }
        Some(k) => Err(format!(
            "zen-lead: container {:?} mounts volume {:?} at {SA_MOUNT_PATH}, not the \
             pod's service-account token; it keeps its own credentials and talks to \
             the API server directly, so its writes are not fenced",
            container.name, mounts[k].name
        )),
        // Also keeps the ServiceAccount plugin, which runs again
        // after this webhook changed the pod, from adding the real
        // token to this container.
        None if container.volume_mounts.is_none() => Ok(Some(add(
            &at(&["volumeMounts"]),
            Value::Array(vec![mount.clone()]),
        ))),
        None => Ok(Some(add(&at(&["volumeMounts", "-"]), mount.clone()))),
    }
}

/// Environment: explicit env wins over the kubelet's service variables and
/// over envFrom, so these override both. Entries already equal are left.
fn gate_env_ops(
    container: &Container,
    gate_env: &[(&str, String)],
    at: &impl Fn(&[&'static str]) -> Vec<String>,
    ops: &mut Vec<PatchOperation>,
) {
    match container.env.as_ref() {
        None => ops.push(add(
            &at(&["env"]),
            Value::Array(
                gate_env
                    .iter()
                    .map(|(n, v)| json!({"name": n, "value": v}))
                    .collect(),
            ),
        )),
        Some(env) => {
            for (name, value) in gate_env {
                let entry = json!({"name": name, "value": value});
                match env.iter().position(|e| e.name == *name) {
                    Some(k)
                        if env[k].value.as_ref() == Some(value) && env[k].value_from.is_none() => {}
                    Some(k) => {
                        let mut path = at(&["env"]);
                        path.push(k.to_string());
                        ops.push(replace(&path, entry));
                    }
                    None => ops.push(add(&at(&["env", "-"]), entry)),
                }
            }
        }
    }
}

/// Host aliases sending the API server's in-cluster names to the gate,
/// merged into an existing 127.0.0.1 entry so no name is listed twice.
fn host_aliases(pod: &Pod, warnings: &mut Vec<String>) -> Vec<PatchOperation> {
    use api_wiring::{API_SERVER_NAMES, GATE_HOST};
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    for alias in aliases.iter().filter(|a| a.ip != GATE_HOST) {
        for name in alias.hostnames.iter().flatten() {
            if API_SERVER_NAMES.contains(&name.as_str()) {
                warnings.push(format!(
                    "zen-lead: hostAliases send {name:?} to {}; the API gate needs it on \
                     {GATE_HOST}, and /etc/hosts answers with the first match",
                    alias.ip
                ));
            }
        }
    }
    let Some(i) = aliases.iter().position(|a| a.ip == GATE_HOST) else {
        let entry = json!({"ip": GATE_HOST, "hostnames": API_SERVER_NAMES});
        return vec![if aliases.is_empty() {
            add(&["spec", "hostAliases"], Value::Array(vec![entry]))
        } else {
            add(&["spec", "hostAliases", "-"], entry)
        }];
    };
    let index = i.to_string();
    let present = aliases[i].hostnames.as_deref().unwrap_or_default();
    let missing: Vec<&str> = API_SERVER_NAMES
        .iter()
        .copied()
        .filter(|n| !present.iter().any(|p| p == n))
        .collect();
    if aliases[i].hostnames.is_none() {
        return vec![add(
            &["spec", "hostAliases", &index, "hostnames"],
            json!(missing),
        )];
    }
    missing
        .into_iter()
        .map(|n| add(&["spec", "hostAliases", &index, "hostnames", "-"], json!(n)))
        .collect()
}

/// The agent container for `pool`. It always mounts a real service-account
/// token for its own API access (the Lease): the pod's, or with
/// [`TokenVolume::Absent`] one of its own. In `api` activation it also gets
/// the directory it writes the app's credentials into.
pub fn agent_container(
    pool: &str,
    config: &InjectConfig,
    activation: Activation,
    identity: IdentityStrategy,
    token: &TokenVolume,
    app_probes: &[AppProbe],
    scheduled: Option<&ScheduledRun>,
) -> Container {
    let mounts = agent_mounts(activation, token);
    let extra_env = agent_extra_env(activation, app_probes, scheduled);
    Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec![AGENT_COMMAND.to_owned()]),
        args: Some(AGENT_ARGS.iter().map(|a| (*a).to_owned()).collect()),
        // A native sidecar: started before the app, stopped after it.
        restart_policy: Some("Always".to_owned()),
        env: Some(agent_env_vars(pool, identity, extra_env)),
        ports: Some(vec![ContainerPort {
            name: Some(AGENT_PORT_NAME.to_owned()),
            container_port: AGENT_PROBE_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(agent_resources(config)),
        volume_mounts: Some(mounts),
        // The kubelet starts the app containers only after this succeeds:
        // once the pod leads (`start`), once the gate serves (`api`), once
        // the binary is shared (`process`).
        startup_probe: Some(agent_probe(
            agent_paths::STARTZ,
            1,
            STARTUP_FAILURE_THRESHOLD,
        )),
        readiness_probe: Some(agent_probe(agent_paths::READYZ, 5, 3)),
        liveness_probe: Some(agent_probe(agent_paths::LIVEZ, 10, 3)),
        security_context: Some(restricted_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// The agent's volume mounts: a real service-account token for its own API
/// access, plus what its activation shares with the app.
fn agent_mounts(activation: Activation, token: &TokenVolume) -> Vec<VolumeMount> {
    use api_wiring::*;
    let mut mounts = vec![VolumeMount {
        name: match token {
            TokenVolume::Present(name) => name.clone(),
            TokenVolume::Absent { .. } => AGENT_TOKEN_VOLUME.to_owned(),
        },
        mount_path: SA_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if activation == Activation::Api {
        mounts.push(VolumeMount {
            name: GATE_SA_VOLUME.to_owned(),
            mount_path: GATE_SA_DIR.to_owned(),
            ..VolumeMount::default()
        });
        mounts.push(VolumeMount {
            name: GATE_STATE_VOLUME.to_owned(),
            mount_path: GATE_STATE_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    if activation == Activation::Process {
        mounts.push(VolumeMount {
            name: BIN_VOLUME.to_owned(),
            mount_path: BIN_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    mounts
}

/// The agent's activation-specific environment (after the common part).
fn agent_extra_env(
    activation: Activation,
    app_probes: &[AppProbe],
    scheduled: Option<&ScheduledRun>,
) -> Vec<EnvVar> {
    use api_wiring::GATE_STATE_DIR;
    let mut extra_env = Vec::new();
    if activation == Activation::Api {
        extra_env.push(EnvVar {
            name: agent_env::ACTIVATION.to_owned(),
            value: Some("api".to_owned()),
            ..EnvVar::default()
        });
        extra_env.push(EnvVar {
            name: agent_env::GATE_STATE_DIR.to_owned(),
            value: Some(GATE_STATE_DIR.to_owned()),
            ..EnvVar::default()
        });
    }
    if activation == Activation::Process {
        let plain = |name: &str, value: String| EnvVar {
            name: name.to_owned(),
            value: Some(value),
            ..EnvVar::default()
        };
        extra_env.push(plain(agent_env::ACTIVATION, "process".to_owned()));
        extra_env.push(plain(BIN_DIR_ENV, BIN_DIR.to_owned()));
        if !app_probes.is_empty() {
            // Serialising plain structs cannot fail.
            let probes = serde_json::to_string(app_probes).unwrap_or_default();
            extra_env.push(plain(APP_PROBES_ENV, probes));
        }
        if let Some(run) = scheduled {
            extra_env.push(plain(SCHEDULED_TIME_ENV, run.time.clone()));
            extra_env.push(plain(JOB_NAME_ENV, run.job.clone()));
        }
    }
    extra_env
}

/// The agent's whole environment: pool, pod facts and identity, then
/// `extra_env`.
fn agent_env_vars(pool: &str, identity: IdentityStrategy, extra_env: Vec<EnvVar>) -> Vec<EnvVar> {
    vec![
        EnvVar {
            name: agent_env::POOL.to_owned(),
            value: Some(pool.to_owned()),
            ..EnvVar::default()
        },
        field_env(agent_env::POD_NAME, "metadata.name"),
        field_env(agent_env::POD_NAMESPACE, "metadata.namespace"),
        field_env(agent_env::POD_UID, "metadata.uid"),
        EnvVar {
            name: agent_env::IDENTITY_STRATEGY.to_owned(),
            value: Some(identity.as_str().to_owned()),
            ..EnvVar::default()
        },
        // Empty when the annotation is absent, which the agent reads as
        // "derive the identity from the pod".
        field_env(
            agent_env::IDENTITY,
            &format!("metadata.annotations['{IDENTITY_ANNOTATION}']"),
        ),
    ]
    .into_iter()
    .chain(extra_env)
    .collect()
}

/// An env var read from the pod's own fields (downward API).
fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An HTTP probe of the agent's probe port.
fn agent_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(AGENT_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// The agent's requests and limits, from the webhook's configuration.
fn agent_resources(config: &InjectConfig) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(config.cpu_request.clone())),
            ("memory".to_owned(), Quantity(config.memory_request.clone())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(config.memory_limit.clone()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Everything Pod Security "restricted" asks of a container.
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(AGENT_UID),
        run_as_group: Some(AGENT_UID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// `<version>/sha256:<16 hex>`: the hash covers everything injected, so two
/// pods with equal values got exactly the same agent.
pub fn injected_value(agent: &Value, pool: &str, config: &InjectConfig) -> String {
    let material = json!({"agent": agent, "pool": pool, "gate": CANDIDATE_READINESS_GATE});
    let bytes = material.to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}/sha256:{hex}", config.version)
}

fn activation_name(activation: Activation) -> &'static str {
    match activation {
        Activation::Api => "api",
        Activation::Process => "process",
        Activation::Start | Activation::Auto => "start",
    }
}

fn injection_patch(
    pod: &Pod,
    pool: &str,
    origin: &PoolOrigin,
    agent: &Container,
    resolved: &Resolved,
    token: &TokenVolume,
    config: &InjectConfig,
) -> Vec<PatchOperation> {
    let activation = resolved.activation;
    // Serialising a k8s-openapi Container cannot fail (no maps with
    // non-string keys); Null would only produce a patch the API server
    // rejects with a clear message.
    let agent = serde_json::to_value(agent).unwrap_or(Value::Null);
    let spec = pod.spec.as_ref();
    let mut ops = Vec::with_capacity(8);

    let volumes = agent_volumes(activation, token);
    match spec.and_then(|s| s.volumes.as_ref()) {
        Some(list) if !list.is_empty() => {
            ops.extend(
                volumes
                    .into_iter()
                    .map(|v| add(&["spec", "volumes", "-"], v)),
            );
        }
        _ if volumes.is_empty() => {}
        _ => ops.push(add(&["spec", "volumes"], Value::Array(volumes))),
    }

    // Agent first among init containers.
    match spec.and_then(|s| s.init_containers.as_ref()) {
        Some(list) if !list.is_empty() => {
            ops.push(add(&["spec", "initContainers", "0"], agent.clone()));
        }
        _ => ops.push(add(
            &["spec", "initContainers"],
            Value::Array(vec![agent.clone()]),
        )),
    }

    // Readiness gate, unless the user already declared it.
    let gate = json!({ "conditionType": CANDIDATE_READINESS_GATE });
    match spec.and_then(|s| s.readiness_gates.as_ref()) {
        Some(gates)
            if gates
                .iter()
                .any(|g| g.condition_type == CANDIDATE_READINESS_GATE) => {}
        Some(gates) if !gates.is_empty() => ops.push(add(&["spec", "readinessGates", "-"], gate)),
        _ => ops.push(add(&["spec", "readinessGates"], Value::Array(vec![gate]))),
    }

    // Label (lets the controller watch pool pods only).
    match pod.metadata.labels.as_ref() {
        Some(labels) if labels.get(POOL_LABEL).map(String::as_str) == Some(pool) => {}
        Some(_) => ops.push(add(&["metadata", "labels", POOL_LABEL], json!(pool))),
        None => ops.push(add(&["metadata", "labels"], json!({ POOL_LABEL: pool }))),
    }

    ops.extend(record_annotations(
        pod, &agent, pool, origin, resolved, config,
    ));
    ops
}

/// Volumes the agent mounts: the directory it keeps for the app (`api`),
/// and a token of its own when the pod has none. The latter has the
/// sources of the ServiceAccount plugin's volume.
fn agent_volumes(activation: Activation, token: &TokenVolume) -> Vec<Value> {
    use api_wiring::*;
    let mut volumes = Vec::new();
    if activation == Activation::Api {
        volumes.push(
            json!({"name": GATE_SA_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        );
        // An emptyDir lives as long as the pod, so the CA key outlives
        // restarts of the agent container, which is all it is for.
        volumes.push(
            json!({"name": GATE_STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        );
    }
    if activation == Activation::Process {
        volumes.push(process::bin_volume());
    }
    if matches!(token, TokenVolume::Absent { .. }) {
        volumes.push(json!({"name": AGENT_TOKEN_VOLUME, "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": AGENT_TOKEN_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        }}));
    }
    volumes
}

/// Annotations recording what was injected, from where.
fn record_annotations(
    pod: &Pod,
    agent: &Value,
    pool: &str,
    origin: &PoolOrigin,
    resolved: &Resolved,
    config: &InjectConfig,
) -> Vec<PatchOperation> {
    let records = [
        (INJECTED_ANNOTATION, injected_value(agent, pool, config)),
        (
            ACTIVATION_ANNOTATION,
            activation_name(resolved.activation).to_owned(),
        ),
        (ACTIVATION_REASON_ANNOTATION, resolved.reason.clone()),
        (POOL_FROM_ANNOTATION, origin.to_string()),
    ];
    if pod.metadata.annotations.is_some() {
        records
            .into_iter()
            .map(|(key, value)| add(&["metadata", "annotations", key], Value::String(value)))
            .collect()
    } else {
        let map: serde_json::Map<String, Value> = records
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        vec![add(&["metadata", "annotations"], Value::Object(map))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    fn config() -> InjectConfig {
        let mut c = InjectConfig::with_image("zen-lead:test");
        c.version = "test".to_owned();
        c
    }

    fn apply(pod: &Pod, ops: &[PatchOperation]) -> Pod {
        let mut doc = serde_json::to_value(pod).expect("json");
        json_patch::patch(&mut doc, ops).expect("patch applies");
        serde_json::from_value(doc).expect("still a pod")
    }

    fn annotated(extra: Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "p", "annotations": {POOL_ANNOTATION: "pool-a"}},
            "spec": {"containers": [{"name": "app", "image": "app"}]}
        });
        json_patch::merge(&mut base, &extra);
        pod(base)
    }

    #[test]
    fn injects_and_second_pass_is_empty() {
        let p = annotated(json!({}));
        let m = membership(&p, &[]).expect("member");
        let found = PolicyState::Found {
            activation: Activation::Auto,
            identity: IdentityStrategy::Pod,
        };
        let d = decide(&p, &m, &found, &config()).expect("admitted");
        assert_eq!(d.outcome, Outcome::Injected);
        let injected = apply(&p, &d.patch);
        assert_eq!(triage(&injected), Triage::AlreadyInjected);
        let again = decide(&injected, &m, &found, &config()).expect("admitted");
        assert_eq!(again.outcome, Outcome::AlreadyInjected);
        assert!(again.patch.is_empty());
        let spec = injected.spec.expect("spec");
        let inits = spec.init_containers.expect("init");
        assert_eq!(inits[0].name, AGENT_CONTAINER);
        assert_eq!(inits[0].restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            spec.readiness_gates.expect("gates")[0].condition_type,
            CANDIDATE_READINESS_GATE
        );
    }

    #[test]
    fn agent_goes_first_and_is_moved_back_when_displaced() {
        let p = annotated(json!({"spec": {"initContainers": [{"name": "migrate", "image": "m"}]}}));
        let m = membership(&p, &[]).expect("member");
        let d = decide(&p, &m, &PolicyState::Missing, &config()).expect("admitted");
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        let injected = apply(&p, &d.patch);
        let names = |p: &Pod| -> Vec<String> {
            p.spec
                .as_ref()
                .expect("spec")
                .init_containers
                .as_ref()
                .expect("init")
                .iter()
                .map(|c| c.name.clone())
                .collect()
        };
        assert_eq!(names(&injected), [AGENT_CONTAINER, "migrate"]);
        // Another webhook prepends an init container; reinvocation fixes the order.
        let mut displaced = injected.clone();
        let spec = displaced.spec.as_mut().expect("spec");
        let inits = spec.init_containers.as_mut().expect("init");
        let agent = inits.remove(0);
        inits.push(agent);
        let fix = reinvocation(&displaced);
        assert_eq!(fix.outcome, Outcome::Reordered);
        assert_eq!(
            names(&apply(&displaced, &fix.patch)),
            [AGENT_CONTAINER, "migrate"]
        );
    }

    #[test]
    fn owner_annotation_and_opt_out() {
        let p = pod(json!({
            "metadata": {"generateName": "r-", "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": "r-1", "uid": "u1", "controller": true}]},
            "spec": {"containers": [{"name": "app"}]}
        }));
        let Triage::AskOwner(owner) = triage(&p) else {
            panic!("must ask the Job")
        };
        assert_eq!(owner.name, "r-1");
        let job = OwnerMeta {
            kind: "Job".into(),
            name: "r-1".into(),
            uid: "u1".into(),
            pool: None,
            join: None,
            controller: None,
            scheduled_time: None,
        };
        let cron = OwnerMeta {
            kind: "CronJob".into(),
            name: "r".into(),
            uid: "u0".into(),
            pool: Some("reports".into()),
            join: None,
            controller: None,
            scheduled_time: None,
        };
        assert_eq!(
            membership(&p, &[job.clone(), cron.clone()]).expect("ok"),
            Membership::Member {
                pool: "reports".into(),
                origin: PoolOrigin::Owner {
                    kind: "CronJob".into(),
                    name: "r".into()
                }
            }
        );
        let opted = OwnerMeta {
            join: Some("false".into()),
            ..job
        };
        assert_eq!(
            membership(&p, &[opted, cron]).expect("ok"),
            Membership::OptedOut {
                pool: Some("reports".into())
            }
        );
    }

    #[test]
    fn wrong_annotations_are_denied_with_the_reason() {
        let p = annotated(json!({"metadata": {"annotations": {POOL_ANNOTATION: "Not A Name"}}}));
        let err = membership(&p, &[]).unwrap_err();
        assert!(err.to_string().contains("zen-lead/pool"), "{err}");
        let p = annotated(json!({"metadata": {"annotations": {JOIN_ANNOTATION: "yes"}}}));
        let err = membership(&p, &[]).unwrap_err();
        assert!(err.to_string().contains("\"true\" or \"false\""), "{err}");
    }

    /// A pod as it reaches the webhook: the ServiceAccount plugin has
    /// already mounted its token volume into every container.
    fn with_token(extra: Value) -> Pod {
        let sa = json!({"name": "kube-api-access-abcde",
            "mountPath": api_wiring::SA_MOUNT_PATH, "readOnly": true});
        let mut base = json!({
            "metadata": {"name": "p", "annotations": {POOL_ANNOTATION: "pool-a"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "rs", "uid": "u", "controller": true}]},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "m", "volumeMounts": [sa]}],
                "containers": [
                    {"name": "app", "image": "app", "volumeMounts": [sa],
                     "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "10.0.0.1"}]},
                    {"name": "side", "image": "s", "volumeMounts": [sa]}],
                "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": []}}]
            }
        });
        json_patch::merge(&mut base, &extra);
        pod(base)
    }

    fn env_of<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        c.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .as_deref()
    }

    fn sa_mount(c: &Container) -> Option<&str> {
        c.volume_mounts
            .as_ref()?
            .iter()
            .find(|m| m.mount_path == api_wiring::SA_MOUNT_PATH)
            .map(|m| m.name.as_str())
    }

    #[test]
    fn api_activation_points_every_app_container_at_the_gate() {
        let p = with_token(json!({}));
        let m = membership(&p, &[]).expect("member");
        // `auto` on a ReplicaSet's pod is `api`.
        let found = PolicyState::Found {
            activation: Activation::Auto,
            identity: IdentityStrategy::Pod,
        };
        let d = decide(&p, &m, &found, &config()).expect("admitted");
        assert_eq!(d.outcome, Outcome::Injected);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let injected = apply(&p, &d.patch);
        let spec = injected.spec.as_ref().expect("spec");
        let inits = spec.init_containers.as_ref().expect("init");
        let agent = &inits[0];
        assert_eq!(agent.name, AGENT_CONTAINER);
        assert_eq!(env_of(agent, agent_env::ACTIVATION), Some("api"));
        // The agent keeps the real token; it never sees the gate's variables.
        assert_eq!(sa_mount(agent), Some("kube-api-access-abcde"));
        assert_eq!(env_of(agent, api_wiring::HOST_ENV), None);
        let apps = inits[1..].iter().chain(&spec.containers);
        for c in apps {
            assert_eq!(
                env_of(c, api_wiring::HOST_ENV),
                Some("127.0.0.1"),
                "{}",
                c.name
            );
            assert_eq!(env_of(c, api_wiring::PORT_ENV), Some("9467"), "{}", c.name);
            assert_eq!(sa_mount(c), Some(api_wiring::GATE_SA_VOLUME), "{}", c.name);
            let host_vars = c
                .env
                .iter()
                .flatten()
                .filter(|e| e.name == api_wiring::HOST_ENV);
            assert_eq!(
                host_vars.count(),
                1,
                "{}: one KUBERNETES_SERVICE_HOST",
                c.name
            );
        }
        let aliases = spec.host_aliases.as_ref().expect("host aliases");
        assert_eq!(aliases.len(), 1);
        assert_eq!(aliases[0].ip, "127.0.0.1");
        let gate_volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == api_wiring::GATE_SA_VOLUME)
            .expect("gate volume");
        assert_eq!(
            gate_volume
                .empty_dir
                .as_ref()
                .and_then(|e| e.medium.as_deref()),
            Some("Memory")
        );
        // The gate's CA key: a volume of its own, in memory, seen by the
        // agent only (an app reading it could impersonate the gate).
        let state_volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == api_wiring::GATE_STATE_VOLUME)
            .expect("gate state volume");
        assert_eq!(
            state_volume
                .empty_dir
                .as_ref()
                .and_then(|e| e.medium.as_deref()),
            Some("Memory")
        );
        assert_eq!(
            env_of(agent, agent_env::GATE_STATE_DIR),
            Some(api_wiring::GATE_STATE_DIR)
        );
        let mounts_state = |c: &Container| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == api_wiring::GATE_STATE_VOLUME)
        };
        assert!(
            agent
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == api_wiring::GATE_STATE_VOLUME
                    && m.mount_path == api_wiring::GATE_STATE_DIR
                    && m.read_only != Some(true)),
            "agent mounts its state dir read-write"
        );
        for c in inits[1..].iter().chain(&spec.containers) {
            assert!(!mounts_state(c), "{} must not see the CA key", c.name);
            assert_eq!(env_of(c, agent_env::GATE_STATE_DIR), None, "{}", c.name);
        }
        assert_eq!(
            injected
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ACTIVATION_ANNOTATION))
                .map(String::as_str),
            Some("api")
        );
        let again = decide(&injected, &m, &found, &config()).expect("admitted");
        assert_eq!(again.outcome, Outcome::AlreadyInjected);
        assert!(again.patch.is_empty());
    }

    /// Issue 29: another webhook, called after this one, changes an injected
    /// pod and the API server reinvokes this one. In `api` activation what it
    /// added is wired like the app's containers, and nothing else changes; a
    /// second reinvocation is empty.
    #[test]
    fn reinvocation_wires_containers_added_after_injection() {
        let sa = json!({"name": "kube-api-access-abcde",
            "mountPath": api_wiring::SA_MOUNT_PATH, "readOnly": true});
        let injected_with = |p: Pod, activation: Activation| {
            let m = membership(&p, &[]).expect("member");
            let found = PolicyState::Found {
                activation,
                identity: IdentityStrategy::Pod,
            };
            apply(
                &p,
                &decide(&p, &m, &found, &config()).expect("admitted").patch,
            )
        };
        let api_pod = || injected_with(with_token(json!({})), Activation::Api);
        let add_container = |mut p: Pod, c: Value| {
            let c: Container = serde_json::from_value(c).expect("container");
            p.spec.as_mut().expect("spec").containers.push(c);
            p
        };
        let prepend_init = |mut p: Pod, c: Value| {
            let c: Container = serde_json::from_value(c).expect("container");
            let spec = p.spec.as_mut().expect("spec");
            spec.init_containers.get_or_insert_default().insert(0, c);
            p
        };
        let own = json!({"name": "own", "volumeMounts": [{"name": "secret-token",
            "mountPath": api_wiring::SA_MOUNT_PATH}]});
        // (what, pod after the other webhook, outcome, containers wired by the
        // patch, warnings)
        let cases: Vec<(&str, Pod, Outcome, &[&str], usize)> = vec![
            ("unchanged", api_pod(), Outcome::AlreadyInjected, &[], 0),
            (
                "a sidecar the ServiceAccount plugin mounted the token into",
                add_container(api_pod(), json!({"name": "late", "volumeMounts": [sa]})),
                Outcome::Rewired,
                &["late"],
                0,
            ),
            (
                "a sidecar without mounts, pointing at the API server itself",
                add_container(
                    api_pod(),
                    json!({"name": "late", "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": "443"}]}),
                ),
                Outcome::Rewired,
                &["late"],
                0,
            ),
            (
                "a sidecar half wired (the gate's directory, the real address)",
                add_container(
                    api_pod(),
                    json!({"name": "late", "volumeMounts": [{"name": api_wiring::GATE_SA_VOLUME,
                        "mountPath": api_wiring::SA_MOUNT_PATH, "readOnly": true}]}),
                ),
                Outcome::Rewired,
                &["late"],
                0,
            ),
            (
                "an init container put in front of the agent",
                prepend_init(
                    api_pod(),
                    json!({"name": "mesh-init", "volumeMounts": [sa]}),
                ),
                Outcome::Rewired,
                &["mesh-init"],
                0,
            ),
            (
                "a sidecar with credentials of its own: left alone, as at injection",
                add_container(api_pod(), own),
                Outcome::AlreadyInjected,
                &[],
                1,
            ),
            (
                "start activation: no gate, nothing to wire",
                add_container(
                    injected_with(
                        with_token(json!({"metadata": {"ownerReferences": null}})),
                        Activation::Start,
                    ),
                    json!({"name": "late", "volumeMounts": [sa]}),
                ),
                Outcome::AlreadyInjected,
                &[],
                0,
            ),
            (
                "an api pod without a token: nothing was wired, nothing is",
                add_container(
                    injected_with(annotated(json!({})), Activation::Api),
                    json!({"name": "late"}),
                ),
                Outcome::AlreadyInjected,
                &[],
                0,
            ),
        ];
        for (what, changed, outcome, wired, warnings) in cases {
            let d = reinvocation(&changed);
            assert_eq!(d.outcome, outcome, "{what}: {:?}", d.patch);
            assert_eq!(d.warnings.len(), warnings, "{what}: {:?}", d.warnings);
            assert_eq!(
                d.patch.is_empty(),
                wired.is_empty(),
                "{what}: {:?}",
                d.patch
            );
            let after = apply(&changed, &d.patch);
            let spec = after.spec.as_ref().expect("spec");
            let inits = spec.init_containers.as_deref().unwrap_or_default();
            assert!(
                inits.first().is_some_and(|c| c.name == AGENT_CONTAINER),
                "{what}: the agent leads the init containers"
            );
            // The agent keeps its own mounts and environment.
            let agent_before = changed
                .spec
                .as_ref()
                .expect("spec")
                .init_containers
                .iter()
                .flatten()
                .find(|c| c.name == AGENT_CONTAINER);
            assert_eq!(agent_before, inits.first(), "{what}: the agent changed");
            let gate = |c: &Container| {
                (
                    env_of(c, api_wiring::HOST_ENV) == Some(api_wiring::GATE_HOST)
                        && env_of(c, api_wiring::PORT_ENV) == Some("9467")
                        && env_of(c, api_wiring::PORT_HTTPS_ENV) == Some("9467"),
                    sa_mount(c) == Some(api_wiring::GATE_SA_VOLUME),
                )
            };
            for name in wired {
                let c = inits[1..]
                    .iter()
                    .chain(&spec.containers)
                    .find(|c| c.name == *name)
                    .expect("the added container");
                assert_eq!(gate(c), (true, true), "{what}: {name} is not wired: {c:?}");
                // Only the gate's variables are added, once each.
                let hosts = c
                    .env
                    .iter()
                    .flatten()
                    .filter(|e| e.name == api_wiring::HOST_ENV);
                assert_eq!(hosts.count(), 1, "{what}: {name}");
            }
            // Containers present before are exactly as they were.
            let before = changed.spec.as_ref().expect("spec");
            for c in before
                .init_containers
                .iter()
                .flatten()
                .chain(&before.containers)
            {
                if !wired.contains(&c.name.as_str()) {
                    let now = inits
                        .iter()
                        .chain(&spec.containers)
                        .find(|n| n.name == c.name);
                    assert_eq!(now, Some(c), "{what}: {} changed", c.name);
                }
            }
            assert_eq!(
                after.spec.as_ref().and_then(|s| s.host_aliases.clone()),
                before.host_aliases,
                "{what}: host aliases"
            );
            let again = reinvocation(&after);
            assert!(
                again.patch.is_empty(),
                "{what}: not idempotent: {:?}",
                again.patch
            );
        }
    }

    #[test]
    fn auto_is_api_for_long_running_controllers_else_process_where_every_command_is_set() {
        let owned = |api: &str, kind: &str, extra: Value| {
            let mut base = json!({"metadata": {"name": "x", "ownerReferences": [{
                "apiVersion": api, "kind": kind, "name": "o", "uid": "u", "controller": true}]},
                "spec": {"containers": [{"name": "a", "command": ["/a"]}]}});
            json_patch::merge(&mut base, &extra);
            pod(base)
        };
        let job = |extra: Value| owned("batch/v1", "Job", extra);
        let two = |b: Value| json!({"spec": {"containers": [{"name": "a", "command": ["/a"]}, b]}});
        let cases = [
            // Long-running controllers: api, whatever the commands.
            (
                owned("apps/v1", "ReplicaSet", json!({})),
                Activation::Api,
                "auto: a ReplicaSet's pods run continuously",
            ),
            (
                owned("apps/v1", "StatefulSet", two(json!({"name": "b"}))),
                Activation::Api,
                "StatefulSet",
            ),
            (
                owned("apps/v1", "DaemonSet", json!({})),
                Activation::Api,
                "DaemonSet",
            ),
            // Run to completion: process where every app container has a command.
            (
                job(json!({})),
                Activation::Process,
                "auto: every app container has a command, so process",
            ),
            (
                owned("example.com/v1", "ReplicaSet", json!({})),
                Activation::Process,
                "every app container has a command",
            ),
            (
                job(two(json!({"name": "b"}))),
                Activation::Start,
                "auto: container \"b\" has no command (process needs one), so start",
            ),
            (
                job(two(json!({"name": "b", "command": [""]}))),
                Activation::Start,
                "container \"b\" has no command",
            ),
            // The container without a command is excluded: it runs in every pod.
            (
                job(
                    json!({"metadata": {"annotations": {EXCLUDE_CONTAINERS_ANNOTATION: "b"}},
                    "spec": {"containers": [{"name": "a", "command": ["/a"]}, {"name": "b"}]}}),
                ),
                Activation::Process,
                "every app container has a command",
            ),
            (
                job(json!({"metadata": {"annotations": {EXCLUDE_CONTAINERS_ANNOTATION: "a"}}})),
                Activation::Start,
                "excludes every app container",
            ),
            (
                job(json!({"metadata": {"annotations": {EXCLUDE_CONTAINERS_ANNOTATION: "nope"}}})),
                Activation::Start,
                "names [\"nope\"], which the pod does not have",
            ),
            // process holds app containers only; start holds init containers too.
            (
                job(json!({"spec": {"initContainers": [{"name": "fetch", "command": ["/f"]}]}})),
                Activation::Start,
                "auto: init container \"fetch\" would run in every pod under process",
            ),
            (
                job(
                    json!({"spec": {"containers": [{"name": "a", "command": ["/a"],
                    "readinessProbe": {"httpGet": {"port": "web"}}}]}}),
                ),
                Activation::Start,
                "readiness probe port \"web\" is neither a number nor one of its named ports",
            ),
        ];
        for (p, want, reason) in cases {
            let resolved = resolve_activation(Activation::Auto, &p, &config());
            assert_eq!(resolved.activation, want, "{p:?}");
            assert!(resolved.reason.contains(reason), "{}", resolved.reason);
            assert_eq!(effective_activation(Activation::Auto, &p), want);
            // An explicit activation is never changed, and says where it came from.
            for chosen in [Activation::Api, Activation::Start, Activation::Process] {
                assert_eq!(effective_activation(chosen, &p), chosen);
                let resolved = resolve_activation(chosen, &p, &config());
                assert_eq!(resolved.activation, chosen);
                assert!(resolved.reason.starts_with("LeaderPolicy activation: "));
            }
        }
        let bare = |extra: Value| {
            let mut base =
                json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}});
            json_patch::merge(&mut base, &extra);
            pod(base)
        };
        assert_eq!(
            effective_activation(Activation::Auto, &bare(json!({}))),
            Activation::Start
        );
        assert_eq!(
            effective_activation(
                Activation::Auto,
                &bare(json!({"spec": {"containers": [{"name": "a", "command": ["/a"]}]}}))
            ),
            Activation::Process
        );
    }

    #[test]
    fn the_reason_for_the_activation_is_recorded_on_the_pod() {
        let annotations = |p: &Pod, requested: Activation, default: Activation| {
            let m = membership(p, &[]).expect("member");
            let mut c = config();
            c.default_activation = default;
            let found = PolicyState::Found {
                activation: requested,
                identity: IdentityStrategy::Pod,
            };
            let d = decide(p, &m, &found, &c).expect("admitted");
            let a = apply(p, &d.patch).metadata.annotations.unwrap_or_default();
            (
                a.get(ACTIVATION_ANNOTATION).cloned().unwrap_or_default(),
                a.get(ACTIVATION_REASON_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        let with_command =
            annotated(json!({"spec": {"containers": [{"name": "app", "command": ["/app"]}]}}));
        let without = annotated(json!({}));
        let cases = [
            (
                &with_command,
                Activation::Auto,
                Activation::Auto,
                "process",
                "auto: every app container has a command, so process",
            ),
            (
                &without,
                Activation::Auto,
                Activation::Auto,
                "start",
                "auto: container \"app\" has no command (process needs one), so start",
            ),
            (
                &with_command,
                Activation::Auto,
                Activation::Start,
                "start",
                "auto: the controller's --default-activation is start",
            ),
            (
                &with_command,
                Activation::Api,
                Activation::Auto,
                "api",
                "LeaderPolicy activation: api",
            ),
        ];
        for (p, requested, default, activation, reason) in cases {
            assert_eq!(
                annotations(p, requested, default),
                (activation.to_owned(), reason.to_owned()),
                "policy {requested:?}, default {default:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_policy_refuses_a_member_and_a_missing_one_gives_defaults() {
        let p = annotated(json!({"metadata": {"namespace": "shop"},
            "spec": {"containers": [{"name": "app", "command": ["/app"]}]}}));
        let m = membership(&p, &[]).expect("member");
        let unknown = PolicyState::Unknown {
            reason: "the API server answered 503: etcd is down".to_owned(),
        };
        let err = decide(&p, &m, &unknown, &config()).unwrap_err();
        assert_eq!(
            err,
            Refusal::PolicyUnreadable {
                namespace: "shop".into(),
                pool: "pool-a".into(),
                reason: "the API server answered 503: etcd is down".into(),
            }
        );
        assert!(err.is_unreadable());
        let text = err.to_string();
        for part in [
            "could not read LeaderPolicy shop/pool-a",
            "etcd is down",
            "activation and identity strategy are unknown",
            "refused so that it cannot run as an unprotected pool replica",
            "retries the create with back-off",
            "may get LeaderPolicies in namespace shop",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        // Every pure entry point refuses it; none falls back to `auto`.
        assert_eq!(
            activation_of(&p, "shop", "pool-a", &unknown, &config()),
            Err(err.clone())
        );
        assert_eq!(check_identity(&p, "shop", &[], &m, &unknown), Err(err));
        // Not a member: the policy does not matter.
        let none = decide(&p, &Membership::None, &unknown, &config()).expect("admitted");
        assert_eq!(none.outcome, Outcome::NotInPool);
        // Confirmed missing: the defaults (`auto`), with a warning.
        let d = decide(&p, &m, &PolicyState::Missing, &config()).expect("admitted");
        assert_eq!(d.outcome, Outcome::Injected);
        assert!(d.warnings[0].contains("does not exist"), "{:?}", d.warnings);
        assert_eq!(
            activation_of(&p, "shop", "pool-a", &PolicyState::Missing, &config()),
            Ok(Activation::Process)
        );
    }

    #[test]
    fn denials_stay_denials() {
        let p = annotated(json!({}));
        let m = membership(&p, &[]).expect("member");
        let custom = PolicyState::Found {
            activation: Activation::Start,
            identity: IdentityStrategy::Custom,
        };
        let err = check_identity(&p, "ns", &[], &m, &custom).unwrap_err();
        assert!(!err.is_unreadable());
        assert!(matches!(
            err,
            Refusal::Denied(Denial::MissingCustomIdentity { .. })
        ));
    }

    #[test]
    fn the_cluster_default_stands_in_for_auto_only() {
        // A bare pod: `auto` alone would mean `start`.
        let p = annotated(json!({}));
        let m = membership(&p, &[]).expect("member");
        let activation_of = |default: Activation, requested: Activation| {
            let mut c = config();
            c.default_activation = default;
            let d = decide(
                &p,
                &m,
                &PolicyState::Found {
                    activation: requested,
                    identity: IdentityStrategy::Pod,
                },
                &c,
            )
            .expect("admitted");
            apply(&p, &d.patch)
                .metadata
                .annotations
                .unwrap_or_default()
                .get(ACTIVATION_ANNOTATION)
                .cloned()
        };
        for (default, requested, want) in [
            (Activation::Auto, Activation::Auto, "start"),
            (Activation::Api, Activation::Auto, "api"),
            (Activation::Start, Activation::Auto, "start"),
            (Activation::Api, Activation::Start, "start"),
            (Activation::Start, Activation::Api, "api"),
        ] {
            assert_eq!(
                activation_of(default, requested).as_deref(),
                Some(want),
                "default {default:?}, policy {requested:?}"
            );
        }
    }

    #[test]
    fn no_token_means_nothing_to_gate_but_the_agent_gets_its_own() {
        let p = annotated(json!({"spec": {"automountServiceAccountToken": false}}));
        let m = membership(&p, &[]).expect("member");
        for activation in [Activation::Api, Activation::Start] {
            let d = decide(
                &p,
                &m,
                &PolicyState::Found {
                    activation,
                    identity: IdentityStrategy::Pod,
                },
                &config(),
            )
            .expect("admitted");
            let injected = apply(&p, &d.patch);
            let spec = injected.spec.as_ref().expect("spec");
            let agent = &spec.init_containers.as_ref().expect("init")[0];
            assert_eq!(sa_mount(agent), Some(api_wiring::AGENT_TOKEN_VOLUME));
            assert!(
                spec.volumes
                    .iter()
                    .flatten()
                    .any(|v| v.name == api_wiring::AGENT_TOKEN_VOLUME && v.projected.is_some())
            );
            // The app is left as it was: no token, no gate.
            let app = &spec.containers[0];
            assert_eq!(sa_mount(app), None);
            assert_eq!(env_of(app, api_wiring::HOST_ENV), None);
            assert!(spec.host_aliases.is_none());
            if activation == Activation::Api {
                assert!(
                    d.warnings[0].contains("automountServiceAccountToken: false"),
                    "{:?}",
                    d.warnings
                );
            } else {
                assert!(d.warnings.is_empty(), "{:?}", d.warnings);
            }
        }
    }

    #[test]
    fn host_aliases_merge_without_duplicates() {
        let p = with_token(json!({"spec": {"hostAliases": [
            {"ip": "10.1.1.1", "hostnames": ["db"]},
            {"ip": "127.0.0.1", "hostnames": ["kubernetes", "local-tool"]}]}}));
        let m = membership(&p, &[]).expect("member");
        let found = PolicyState::Found {
            activation: Activation::Api,
            identity: IdentityStrategy::Pod,
        };
        let d = decide(&p, &m, &found, &config()).expect("admitted");
        let injected = apply(&p, &d.patch);
        let aliases = injected.spec.expect("spec").host_aliases.expect("aliases");
        assert_eq!(aliases.len(), 2);
        let names = aliases[1].hostnames.as_ref().expect("names");
        for name in api_wiring::API_SERVER_NAMES {
            assert_eq!(names.iter().filter(|n| n == name).count(), 1, "{name}");
        }
        assert!(names.iter().any(|n| n == "local-tool"));
    }

    #[test]
    fn ownerless_pod_without_annotation_needs_no_lookup() {
        let p = pod(json!({"metadata": {"name": "x"}, "spec": {"containers": []}}));
        assert_eq!(triage(&p), Triage::Decided(Membership::None));
        let p = pod(json!({"metadata": {"name": "x", "ownerReferences": [{
            "apiVersion": "example.com/v1", "kind": "Thing", "name": "t", "uid": "u", "controller": true}]}}));
        assert_eq!(triage(&p), Triage::Decided(Membership::None));
    }
}
