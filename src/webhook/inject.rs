//! The webhook's decision for one pod, free of I/O. The handler
//! ([`super::review`]) asks [`next_read`] what to read, records every answer
//! (a failed read too) in [`Facts`], and when nothing is left to read hands
//! them to [`decide`]: refuse, leave alone, or the patch that makes the pod a
//! candidate. Golden tests (`tests/golden/webhook/`) pin its output.
//!
//! Built from pure parts: [`super::membership`] (is the pod in a pool),
//! [`super::activation`] (which activation, and why), [`super::agent`] (the
//! agent container), [`super::api_wiring`] (`api` activation's rewiring),
//! [`super::process`] (`process` activation's rewrite) and
//! [`super::pod_patch`] (the patch around the agent).

use json_patch::{MoveOperation, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::activation::{effective_activation, resolve_activation};
use super::agent::{InjectConfig, agent_container};
use super::api_wiring::{TokenVolume, api_patch, rewiring};
use super::denial::Denial;
use super::membership::{
    MAX_OWNER_DEPTH, Membership, OwnerMeta, ScheduledRun, Triage, agent_index, annotation,
    controller_of, has_agent, is_supported_owner, membership, triage,
};
use super::patch::pointer;
use super::pod_patch::injection_patch;
use super::process;
use crate::api::keys::{IDENTITY_ANNOTATION, POOL_ANNOTATION};
use crate::api::{Activation, IdentityStrategy};

/// A read the decision needs before it can be made.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// The next owner up the pod's controller chain.
    Owner(OwnerReference),
    /// The LeaderPolicy of the pod's pool.
    Policy { pool: String },
    /// The pod's Job, for the scheduled time of the CronJob run a `process`
    /// pod belongs to.
    Job(OwnerReference),
}

/// What the handler read for one pod. A read that failed is a fact too: the
/// decision refuses the pod when the answer could have changed it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Facts {
    /// The request's namespace, where everything is read.
    pub namespace: String,
    /// The owners read, nearest first.
    pub owners: Vec<OwnerMeta>,
    /// Why the chain of owners stopped before its last supported kind.
    pub owners_end: Option<ChainEnd>,
    /// The pool's LeaderPolicy; read for pool members only.
    pub policy: Option<PolicyState>,
    /// The pod's Job (`Ok(None)`: gone), or why it could not be read; read
    /// only when [`Read::Job`] asks for it.
    pub job: Option<Result<Option<OwnerMeta>, String>>,
}

/// Why the chain of owners ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEnd {
    /// The owner is gone, or another incarnation: it names no pool for the pod.
    Gone,
    /// The owner could not be read.
    Unreadable {
        kind: String,
        name: String,
        reason: String,
    },
}

impl Facts {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            ..Self::default()
        }
    }

    /// Records the answer to [`Read::Owner`]; `Err` is why it failed.
    pub fn owner_read(
        &mut self,
        owner: &OwnerReference,
        answer: Result<Option<OwnerMeta>, String>,
    ) {
        match answer {
            Ok(Some(meta)) => self.owners.push(meta),
            Ok(None) => self.owners_end = Some(ChainEnd::Gone),
            Err(reason) => {
                self.owners_end = Some(ChainEnd::Unreadable {
                    kind: owner.kind.clone(),
                    name: owner.name.clone(),
                    reason,
                });
            }
        }
    }
}

/// The next read [`decide`] needs, given `facts`; `None` when it can decide.
/// Only what could change the answer is read: owners while the pod itself
/// does not settle membership, the policy of a pool member, and the Job of a
/// `process` pod that named its pool itself (the chain, when read, holds it).
/// Once a read fails or an annotation is wrong, nothing more is read.
pub fn next_read(pod: &Pod, facts: &Facts, config: &InjectConfig) -> Option<Read> {
    if has_agent(pod) {
        return None;
    }
    if let Some(owner) = next_owner(pod, facts) {
        return Some(Read::Owner(owner));
    }
    if matches!(facts.owners_end, Some(ChainEnd::Unreadable { .. })) {
        return None;
    }
    let membership = membership(pod, &facts.owners).ok()?;
    let Membership::Member { pool, .. } = &membership else {
        return None;
    };
    let Some(policy) = &facts.policy else {
        return Some(Read::Policy { pool: pool.clone() });
    };
    let namespace = facts.namespace.as_str();
    check_identity(pod, namespace, &facts.owners, &membership, policy).ok()?;
    let activation = activation_of(pod, namespace, pool, policy, config).ok()?;
    if activation != Activation::Process || !facts.owners.is_empty() || facts.job.is_some() {
        return None;
    }
    job_of(pod).cloned().map(Read::Job)
}

/// The next owner to read, while the chain goes on through supported kinds.
fn next_owner(pod: &Pod, facts: &Facts) -> Option<OwnerReference> {
    if facts.owners_end.is_some() || facts.owners.len() >= MAX_OWNER_DEPTH {
        return None;
    }
    let next = match facts.owners.last() {
        None => match triage(pod) {
            Triage::AskOwner(first) => first,
            Triage::AlreadyInjected | Triage::Decided(_) => return None,
        },
        Some(owner) => owner.controller.clone()?,
    };
    is_supported_owner(&next).then_some(next)
}

/// The pod's controller when it is a Job.
fn job_of(pod: &Pod) -> Option<&OwnerReference> {
    controller_of(pod.metadata.owner_references.as_ref())
        .filter(|o| o.kind == "Job" && o.api_version.starts_with("batch/"))
}

/// The whole decision for a pod from what was read. A fact that could make
/// the pod a pool member, or change how it is wired, and could not be read
/// refuses it: it fails closed.
pub fn decide(pod: &Pod, facts: &Facts, config: &InjectConfig) -> Result<Decision, Refusal> {
    if has_agent(pod) {
        return Ok(reinvocation(pod));
    }
    let namespace = facts.namespace.as_str();
    if let Some(ChainEnd::Unreadable { kind, name, reason }) = &facts.owners_end {
        return Err(Refusal::OwnerUnreadable {
            namespace: namespace.to_owned(),
            kind: kind.clone(),
            name: name.clone(),
            of: facts
                .owners
                .last()
                .map(|o| format!("{} {}", o.kind, o.name)),
            reason: reason.clone(),
        });
    }
    let membership = membership(pod, &facts.owners)?;
    let Membership::Member { pool, .. } = &membership else {
        return decide_run(
            pod,
            namespace,
            &membership,
            &PolicyState::Missing,
            config,
            None,
        );
    };
    // [`next_read`] always asks for a member's policy; never guess one.
    let policy = facts
        .policy
        .clone()
        .unwrap_or_else(|| PolicyState::Unknown {
            reason: NOT_READ.to_owned(),
        });
    check_identity(pod, namespace, &facts.owners, &membership, &policy)?;
    let scheduled = if activation_of(pod, namespace, pool, &policy, config)? == Activation::Process
    {
        scheduled_run(pod, namespace, pool, facts)?
    } else {
        None
    };
    decide_run(
        pod,
        namespace,
        &membership,
        &policy,
        config,
        scheduled.as_ref(),
    )
}

/// The reason given for a fact the handler did not read.
const NOT_READ: &str = "it was not read";

/// The scheduled run of a CronJob-created Job's pod: from the chain when the
/// pool was named on an owner, else from the Job read for it. A Job that
/// could not be read refuses the pod: without its scheduled time a scheduled
/// run would start as a manual one, which `scheduledRuns: once` lets run again.
fn scheduled_run(
    pod: &Pod,
    namespace: &str,
    pool: &str,
    facts: &Facts,
) -> Result<Option<ScheduledRun>, Refusal> {
    if let Some(job) = facts.owners.first() {
        return Ok(ScheduledRun::of(job));
    }
    let Some(owner) = job_of(pod) else {
        return Ok(None);
    };
    let reason = match &facts.job {
        Some(Ok(job)) => return Ok(job.as_ref().and_then(ScheduledRun::of)),
        Some(Err(reason)) => reason.clone(),
        None => NOT_READ.to_owned(),
    };
    Err(Refusal::JobUnreadable {
        namespace: namespace.to_owned(),
        job: owner.name.clone(),
        pool: pool.to_owned(),
        reason,
    })
}

/// The activation a pod of pool `pool` (in `namespace`) gets, as
/// [`decide`] applies it; refused when the policy could not be read.
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

/// The decision for a pod whose membership and policy are known; for a pod
/// of a CronJob-created Job, `process` activation tells the agent the
/// scheduled run (for `scheduledRuns: once`).
fn decide_run(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::keys::EXCLUDE_CONTAINERS_ANNOTATION;
    use crate::api::keys::{
        ACTIVATION_ANNOTATION, ACTIVATION_REASON_ANNOTATION, CANDIDATE_READINESS_GATE,
        JOIN_ANNOTATION,
    };
    use crate::contract::AGENT_CONTAINER;
    use crate::contract::agent_env;
    use crate::webhook::api_wiring;
    use crate::webhook::denial::PoolOrigin;
    use k8s_openapi::api::core::v1::Container;
    use serde_json::{Value, json};

    fn pod(json: Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    /// The decision for a pod whose membership and policy are known (its
    /// namespace from its metadata).
    fn decide_known(
        pod: &Pod,
        membership: &Membership,
        policy: &PolicyState,
        config: &InjectConfig,
    ) -> Result<Decision, Refusal> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        decide_run(pod, namespace, membership, policy, config, None)
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
        let d = decide_known(&p, &m, &found, &config()).expect("admitted");
        assert_eq!(d.outcome, Outcome::Injected);
        let injected = apply(&p, &d.patch);
        assert_eq!(triage(&injected), Triage::AlreadyInjected);
        let again = decide_known(&injected, &m, &found, &config()).expect("admitted");
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
        let d = decide_known(&p, &m, &PolicyState::Missing, &config()).expect("admitted");
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
        let d = decide_known(&p, &m, &found, &config()).expect("admitted");
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
        let again = decide_known(&injected, &m, &found, &config()).expect("admitted");
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
                &decide_known(&p, &m, &found, &config())
                    .expect("admitted")
                    .patch,
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
            let d = decide_known(p, &m, &found, &c).expect("admitted");
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
        let err = decide_known(&p, &m, &unknown, &config()).unwrap_err();
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
        let none = decide_known(&p, &Membership::None, &unknown, &config()).expect("admitted");
        assert_eq!(none.outcome, Outcome::NotInPool);
        // Confirmed missing: the defaults (`auto`), with a warning.
        let d = decide_known(&p, &m, &PolicyState::Missing, &config()).expect("admitted");
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
            let d = decide_known(
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
            let d = decide_known(
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
        let d = decide_known(&p, &m, &found, &config()).expect("admitted");
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

    /// What the cluster answers in the read-then-decide tests: owners by
    /// uid (`Err`: the read fails), the pool's policy (`None`: it fails).
    struct World {
        owners: Vec<(&'static str, Result<OwnerMeta, &'static str>)>,
        policy: Option<PolicyState>,
    }

    fn owner_ref(api: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: api.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }

    fn owner(kind: &str, name: &str, controller: Option<OwnerReference>) -> OwnerMeta {
        OwnerMeta {
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: name.to_owned(),
            pool: None,
            join: None,
            controller,
            scheduled_time: None,
        }
    }

    /// Drives [`next_read`] against `world` as the handler does, then
    /// [`decide`]: the reads made, in order, and the decision.
    fn read_and_decide(pod: &Pod, world: &World) -> (Vec<Read>, Result<Decision, Refusal>) {
        let mut facts = Facts::new("shop");
        let mut reads = Vec::new();
        while let Some(read) = next_read(pod, &facts, &config()) {
            assert!(reads.len() < 4, "reads do not end: {reads:?}");
            reads.push(read.clone());
            let answer = |o: &OwnerReference| match world.owners.iter().find(|(u, _)| *u == o.uid) {
                Some((_, Ok(meta))) => Ok(Some(meta.clone())),
                Some((_, Err(reason))) => Err((*reason).to_owned()),
                None => Ok(None),
            };
            match read {
                Read::Owner(o) => facts.owner_read(&o, answer(&o)),
                Read::Policy { .. } => {
                    facts.policy = Some(world.policy.clone().unwrap_or(PolicyState::Unknown {
                        reason: "timed out".to_owned(),
                    }));
                }
                Read::Job(o) => facts.job = Some(answer(&o)),
            }
        }
        (reads, decide(pod, &facts, &config()))
    }

    fn policy(activation: Activation, identity: IdentityStrategy) -> Option<PolicyState> {
        Some(PolicyState::Found {
            activation,
            identity,
        })
    }

    /// Which reads each pod needs, and what the decision makes of them: the
    /// pod alone settles what it can; owners are read nearest first and at
    /// most two deep; the policy only for a member; the Job only for a
    /// `process` pod that names its pool itself; a failed read or a wrong
    /// annotation ends the reads and refuses.
    #[test]
    fn reads_then_one_decision() {
        let rs = owner_ref("apps/v1", "ReplicaSet", "web-5d8f", "web-5d8f");
        let dep = owner_ref("apps/v1", "Deployment", "web", "web");
        let job = owner_ref("batch/v1", "Job", "nightly-1", "nightly-1");
        let cron = owner_ref("batch/v1", "CronJob", "nightly", "nightly");
        let deployment_pod = pod(json!({
            "metadata": {"name": "web-5d8f-x", "ownerReferences": [rs]},
            "spec": {"containers": [{"name": "app", "command": ["/app"]}]}
        }));
        let job_pod = |annotations: Value| {
            pod(json!({
                "metadata": {"name": "nightly-1-x", "annotations": annotations,
                    "ownerReferences": [job]},
                "spec": {"containers": [{"name": "report", "command": ["/report"]}]}
            }))
        };
        let named = job_pod(json!({POOL_ANNOTATION: "nightly"}));
        let rs_meta = owner("ReplicaSet", "web-5d8f", Some(dep.clone()));
        let dep_meta = |pool: Option<&str>| OwnerMeta {
            pool: pool.map(str::to_owned),
            controller: Some(owner_ref("example.com/v1", "Rollout", "r", "r")),
            ..owner("Deployment", "web", None)
        };
        let scheduled_job = OwnerMeta {
            scheduled_time: Some("2026-01-01T00:00:00Z".to_owned()),
            controller: Some(cron.clone()),
            ..owner("Job", "nightly-1", None)
        };
        let member = || {
            vec![
                ("web-5d8f", Ok(rs_meta.clone())),
                ("web", Ok(dep_meta(Some("web")))),
            ]
        };
        let injected = annotated(json!({"spec": {"initContainers": [{"name": AGENT_CONTAINER}]}}));
        let custom = annotated(json!({}));
        type Want = Result<Outcome, &'static str>;
        let cases: Vec<(&str, Pod, World, Vec<Read>, Want)> = vec![
            (
                "an injected pod needs no read",
                injected.clone(),
                World {
                    owners: vec![],
                    policy: None,
                },
                vec![],
                Ok(Outcome::AlreadyInjected),
            ),
            (
                "a pool named on the pod: only the policy",
                named.clone(),
                World {
                    owners: vec![],
                    policy: policy(Activation::Start, IdentityStrategy::Pod),
                },
                vec![Read::Policy {
                    pool: "nightly".into(),
                }],
                Ok(Outcome::Injected),
            ),
            (
                "a Deployment's pool: ReplicaSet, Deployment, policy",
                deployment_pod.clone(),
                World {
                    owners: member(),
                    policy: policy(Activation::Auto, IdentityStrategy::Pod),
                },
                vec![
                    Read::Owner(rs.clone()),
                    Read::Owner(dep.clone()),
                    Read::Policy { pool: "web".into() },
                ],
                Ok(Outcome::Injected),
            ),
            (
                "no pool on the owners: no policy read",
                deployment_pod.clone(),
                World {
                    owners: vec![
                        ("web-5d8f", Ok(rs_meta.clone())),
                        ("web", Ok(dep_meta(None))),
                    ],
                    policy: None,
                },
                vec![Read::Owner(rs.clone()), Read::Owner(dep.clone())],
                Ok(Outcome::NotInPool),
            ),
            (
                "a gone owner ends the chain",
                deployment_pod.clone(),
                World {
                    owners: vec![],
                    policy: None,
                },
                vec![Read::Owner(rs.clone())],
                Ok(Outcome::NotInPool),
            ),
            (
                "an unreadable owner refuses, naming the owner it belongs to",
                deployment_pod.clone(),
                World {
                    owners: vec![("web-5d8f", Ok(rs_meta.clone())), ("web", Err("forbidden"))],
                    policy: None,
                },
                vec![Read::Owner(rs.clone()), Read::Owner(dep.clone())],
                Err(
                    "could not read Deployment shop/web, the owner of the pod's ReplicaSet web-5d8f (forbidden)",
                ),
            ),
            (
                "an unreadable policy refuses a member",
                deployment_pod.clone(),
                World {
                    owners: member(),
                    policy: None,
                },
                vec![
                    Read::Owner(rs.clone()),
                    Read::Owner(dep.clone()),
                    Read::Policy { pool: "web".into() },
                ],
                Err(
                    "could not read LeaderPolicy shop/web, the policy of the pod's pool (timed out)",
                ),
            ),
            (
                "a process pod that names its pool: the Job too",
                named.clone(),
                World {
                    owners: vec![("nightly-1", Ok(scheduled_job.clone()))],
                    policy: policy(Activation::Auto, IdentityStrategy::Pod),
                },
                vec![
                    Read::Policy {
                        pool: "nightly".into(),
                    },
                    Read::Job(job.clone()),
                ],
                Ok(Outcome::Injected),
            ),
            (
                "an unreadable Job refuses a process pod",
                named.clone(),
                World {
                    owners: vec![("nightly-1", Err("busy"))],
                    policy: policy(Activation::Process, IdentityStrategy::Pod),
                },
                vec![
                    Read::Policy {
                        pool: "nightly".into(),
                    },
                    Read::Job(job.clone()),
                ],
                Err("could not read Job shop/nightly-1, the pod's Job (busy)"),
            ),
            (
                "a start pod does not need its Job",
                named.clone(),
                World {
                    owners: vec![("nightly-1", Err("busy"))],
                    policy: policy(Activation::Start, IdentityStrategy::Pod),
                },
                vec![Read::Policy {
                    pool: "nightly".into(),
                }],
                Ok(Outcome::Injected),
            ),
            (
                "a pool named on the Job: the chain holds the Job, two deep at most",
                job_pod(json!({})),
                World {
                    owners: vec![
                        (
                            "nightly-1",
                            Ok(OwnerMeta {
                                pool: Some("nightly".into()),
                                ..scheduled_job.clone()
                            }),
                        ),
                        (
                            "nightly",
                            Ok(OwnerMeta {
                                controller: Some(job.clone()),
                                ..owner("CronJob", "nightly", None)
                            }),
                        ),
                    ],
                    policy: policy(Activation::Process, IdentityStrategy::Pod),
                },
                vec![
                    Read::Owner(job.clone()),
                    Read::Owner(cron.clone()),
                    Read::Policy {
                        pool: "nightly".into(),
                    },
                ],
                Ok(Outcome::Injected),
            ),
            (
                "a wrong annotation refuses before anything is read",
                job_pod(json!({POOL_ANNOTATION: "Not A Name"})),
                World {
                    owners: vec![],
                    policy: None,
                },
                vec![],
                Err("Not A Name"),
            ),
            (
                "an opted-out pod reads nothing",
                job_pod(json!({JOIN_ANNOTATION: "false"})),
                World {
                    owners: vec![],
                    policy: None,
                },
                vec![],
                Ok(Outcome::OptedOut),
            ),
            (
                "a custom pool without the pod's identity is refused after the policy",
                custom.clone(),
                World {
                    owners: vec![],
                    policy: policy(Activation::Process, IdentityStrategy::Custom),
                },
                vec![Read::Policy {
                    pool: "pool-a".into(),
                }],
                Err(IDENTITY_ANNOTATION),
            ),
        ];
        for (name, pod, world, want_reads, want) in cases {
            let (reads, decision) = read_and_decide(&pod, &world);
            assert_eq!(reads, want_reads, "{name}");
            match (decision, want) {
                (Ok(d), Ok(outcome)) => assert_eq!(d.outcome, outcome, "{name}"),
                (Err(refusal), Err(part)) => {
                    let text = refusal.to_string();
                    assert!(text.contains(part), "{name}: {part:?} not in {text}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// The scheduled run reaches the agent from the Job read for a pod that
    /// names its pool itself; facts the handler did not read refuse a member
    /// instead of being guessed.
    #[test]
    fn the_decision_uses_what_was_read_and_refuses_what_was_not() {
        let p = pod(json!({
            "metadata": {"name": "n", "annotations": {POOL_ANNOTATION: "nightly"},
                "ownerReferences": [owner_ref("batch/v1", "Job", "nightly-1", "j")]},
            "spec": {"containers": [{"name": "report", "command": ["/report"]}]}
        }));
        let mut facts = Facts::new("batch");
        facts.policy = policy(Activation::Process, IdentityStrategy::Pod);
        let err = decide(&p, &facts, &config()).unwrap_err();
        assert!(
            matches!(&err, Refusal::JobUnreadable { reason, .. } if reason == NOT_READ),
            "{err:?}"
        );
        facts.job = Some(Ok(Some(OwnerMeta {
            scheduled_time: Some("2026-01-01T00:00:00Z".to_owned()),
            ..owner("Job", "nightly-1", None)
        })));
        let d = decide(&p, &facts, &config()).expect("admitted");
        let injected = apply(&p, &d.patch);
        let agent = &injected.spec.expect("spec").init_containers.expect("init")[0];
        assert_eq!(
            env_of(agent, crate::contract::SCHEDULED_TIME_ENV),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            env_of(agent, crate::contract::JOB_NAME_ENV),
            Some("nightly-1")
        );
        facts.policy = None;
        let err = decide(&p, &facts, &config()).unwrap_err();
        assert!(
            matches!(&err, Refusal::PolicyUnreadable { reason, .. } if reason == NOT_READ),
            "{err:?}"
        );
    }
}
