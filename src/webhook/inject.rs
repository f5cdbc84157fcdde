//! What the webhook does to a pod, free of I/O: decide whether a pod belongs
//! to a pool, and build the JSON patch that makes it a candidate.
//!
//! The handler gathers the facts (the pod, its owners' annotations, whether
//! the LeaderPolicy exists) and this module turns them into a [`Decision`].
//! Golden tests (`tests/golden/webhook/`) pin its output.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, MoveOperation, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::api::Activation;
use crate::api::keys::{
    ACTIVATION_ANNOTATION, CANDIDATE_READINESS_GATE, IDENTITY_ANNOTATION, INJECTED_ANNOTATION,
    JOIN_ANNOTATION, POOL_ANNOTATION, POOL_FROM_ANNOTATION, POOL_LABEL,
};
use crate::api::validate_pool_name;

/// Name of the injected agent container; also how a second pass recognises
/// a pod it already injected.
pub const AGENT_CONTAINER: &str = "zen-lead-agent";

/// The agent's HTTP port. Must equal the default of `zen-lead agent
/// --http-addr` (src/cli.rs): the webhook passes no address flag, so the
/// probes below and the agent agree through this one number.
pub const AGENT_PORT: i32 = 9466;

/// Name of the agent's container port (at most 15 characters).
pub const AGENT_PORT_NAME: &str = "zl-agent";

/// Arguments of the agent container; the image's entrypoint is `zen-lead`.
pub const AGENT_ARGS: &[&str] = &["agent"];

/// The agent's environment: `zen-lead agent` reads each flag from these
/// (src/cli.rs `AgentArgs`). Values come from the pool name or the downward API.
pub mod agent_env {
    pub const POOL: &str = "ZEN_LEAD_POOL";
    pub const POD_NAME: &str = "ZEN_LEAD_POD_NAME";
    pub const POD_NAMESPACE: &str = "ZEN_LEAD_POD_NAMESPACE";
    pub const POD_UID: &str = "ZEN_LEAD_POD_UID";
    pub const IDENTITY: &str = "ZEN_LEAD_IDENTITY";
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
}

/// What is known about the pool's LeaderPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyState {
    Found {
        activation: Activation,
    },
    Missing,
    /// The lookup failed; the pod still gets the defaults.
    Unknown {
        reason: String,
    },
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
    Injected,
    /// The policy asks for `api` activation, which is not available yet:
    /// admitted unchanged, never half-wired.
    ApiUnavailable,
}

impl Outcome {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotInPool => "not_in_pool",
            Self::OptedOut => "opted_out",
            Self::AlreadyInjected => "already_injected",
            Self::Reordered => "reordered",
            Self::Injected => "injected",
            Self::ApiUnavailable => "api_unavailable",
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

/// The activation a pod gets. `api` wiring is a separate piece of work; until
/// it exists `auto` resolves to `start` for every kind, and an explicit `api`
/// is reported by [`decide`] rather than half-wired.
pub fn effective_activation(requested: Activation) -> Activation {
    match requested {
        Activation::Auto | Activation::Start => Activation::Start,
        Activation::Api => Activation::Api,
    }
}

/// The patch for a pod already triaged as injected: empty, unless another
/// webhook has since put an init container in front of the agent. In `start`
/// activation anything before the agent would run in followers too, so the
/// agent goes back to the front.
pub fn reinvocation(pod: &Pod) -> Decision {
    match agent_index(pod) {
        Some(i) if i > 0 => Decision {
            outcome: Outcome::Reordered,
            patch: vec![PatchOperation::Move(MoveOperation {
                from: pointer(&["spec", "initContainers", &i.to_string()]),
                path: pointer(&["spec", "initContainers", "0"]),
            })],
            warnings: Vec::new(),
        },
        _ => Decision::plain(Outcome::AlreadyInjected),
    }
}

/// The decision for a pod whose membership is known.
pub fn decide(
    pod: &Pod,
    membership: &Membership,
    policy: &PolicyState,
    config: &InjectConfig,
) -> Decision {
    if has_agent(pod) {
        return reinvocation(pod);
    }
    let (pool, origin) = match membership {
        Membership::None => return Decision::plain(Outcome::NotInPool),
        Membership::OptedOut { .. } => return Decision::plain(Outcome::OptedOut),
        Membership::Member { pool, origin } => (pool, origin),
    };
    let mut warnings = Vec::new();
    let requested = match policy {
        PolicyState::Found { activation } => *activation,
        PolicyState::Missing => {
            warnings.push(format!(
                "zen-lead: LeaderPolicy {pool:?} does not exist in this namespace; the pod joins \
                 with default settings and no leader is elected until the policy is created"
            ));
            Activation::Auto
        }
        PolicyState::Unknown { reason } => {
            warnings.push(format!(
                "zen-lead: could not read LeaderPolicy {pool:?} ({reason}); the pod joins with \
                 default settings"
            ));
            Activation::Auto
        }
    };
    if effective_activation(requested) == Activation::Api {
        return Decision {
            outcome: Outcome::ApiUnavailable,
            patch: Vec::new(),
            warnings: vec![format!(
                "zen-lead: LeaderPolicy {pool:?} asks for activation \"api\", which this \
                 zen-lead version does not provide yet; the pod was admitted WITHOUT the agent \
                 (use activation \"start\" or \"auto\")"
            )],
        };
    }
    let agent = agent_container(pool, config);
    let patch = injection_patch(pod, pool, origin, &agent, config);
    Decision {
        outcome: Outcome::Injected,
        patch,
        warnings,
    }
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(path),
        value,
    })
}

/// The agent container for `pool`, in `start` activation.
pub fn agent_container(pool: &str, config: &InjectConfig) -> Container {
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(AGENT_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    };
    Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(AGENT_ARGS.iter().map(|a| (*a).to_owned()).collect()),
        // A native sidecar: started before the app, stopped after it.
        restart_policy: Some("Always".to_owned()),
        env: Some(vec![
            EnvVar {
                name: agent_env::POOL.to_owned(),
                value: Some(pool.to_owned()),
                ..EnvVar::default()
            },
            field_env(agent_env::POD_NAME, "metadata.name"),
            field_env(agent_env::POD_NAMESPACE, "metadata.namespace"),
            field_env(agent_env::POD_UID, "metadata.uid"),
            // Empty when the annotation is absent, which the agent reads as
            // "derive the identity from the pod".
            field_env(
                agent_env::IDENTITY,
                &format!("metadata.annotations['{IDENTITY_ANNOTATION}']"),
            ),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(AGENT_PORT_NAME.to_owned()),
            container_port: AGENT_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity(config.cpu_request.clone())),
                ("memory".to_owned(), Quantity(config.memory_request.clone())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity(config.memory_limit.clone()),
            )])),
            ..ResourceRequirements::default()
        }),
        // The kubelet starts the app containers only after this succeeds,
        // i.e. once the pod leads.
        startup_probe: Some(probe(agent_paths::STARTZ, 1, STARTUP_FAILURE_THRESHOLD)),
        readiness_probe: Some(probe(agent_paths::READYZ, 5, 3)),
        liveness_probe: Some(probe(agent_paths::LIVEZ, 10, 3)),
        // Everything Pod Security "restricted" asks of a container.
        security_context: Some(SecurityContext {
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
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
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

fn injection_patch(
    pod: &Pod,
    pool: &str,
    origin: &PoolOrigin,
    agent: &Container,
    config: &InjectConfig,
) -> Vec<PatchOperation> {
    // Serialising a k8s-openapi Container cannot fail (no maps with
    // non-string keys); Null would only produce a patch the API server
    // rejects with a clear message.
    let agent = serde_json::to_value(agent).unwrap_or(Value::Null);
    let spec = pod.spec.as_ref();
    let mut ops = Vec::with_capacity(6);

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

    // Annotations recording what was injected, from where.
    let records = [
        (INJECTED_ANNOTATION, injected_value(&agent, pool, config)),
        (ACTIVATION_ANNOTATION, "start".to_owned()),
        (POOL_FROM_ANNOTATION, origin.to_string()),
    ];
    if pod.metadata.annotations.is_some() {
        for (key, value) in records {
            ops.push(add(&["metadata", "annotations", key], Value::String(value)));
        }
    } else {
        let map: serde_json::Map<String, Value> = records
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        ops.push(add(&["metadata", "annotations"], Value::Object(map)));
    }
    ops
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
        };
        let d = decide(&p, &m, &found, &config());
        assert_eq!(d.outcome, Outcome::Injected);
        let injected = apply(&p, &d.patch);
        assert_eq!(triage(&injected), Triage::AlreadyInjected);
        let again = decide(&injected, &m, &found, &config());
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
        let d = decide(&p, &m, &PolicyState::Missing, &config());
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
        };
        let cron = OwnerMeta {
            kind: "CronJob".into(),
            name: "r".into(),
            uid: "u0".into(),
            pool: Some("reports".into()),
            join: None,
            controller: None,
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

    #[test]
    fn api_activation_is_not_half_wired() {
        let p = annotated(json!({}));
        let m = membership(&p, &[]).expect("member");
        let d = decide(
            &p,
            &m,
            &PolicyState::Found {
                activation: Activation::Api,
            },
            &config(),
        );
        assert_eq!(d.outcome, Outcome::ApiUnavailable);
        assert!(d.patch.is_empty());
        assert!(
            d.warnings[0].contains("not provide yet"),
            "{:?}",
            d.warnings
        );
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
