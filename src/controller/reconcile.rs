//! One pool's reconciliation: observe (caches), decide ([`super::decide`]),
//! write. Writes to the Lease are compare-and-swap (PUT with the observed
//! resourceVersion); everything else is a patch of fields zen-lead owns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, EvictParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use super::cache::{Cache, Unlabelled};
use super::decide::{
    self, CandidateCondition, Failover, LeaseView, MissingPolicy, PodView, ScaleAction,
    StatusInput, WorkloadView,
};
use super::metrics::Metrics;
use super::queue::PoolKey;
use super::rbac;
use crate::api::keys::{
    CANDIDATE_READINESS_GATE, CREATED_BY_ANNOTATION, CREATED_BY_CONTROLLER, FIELD_MANAGER,
    HOLDER_INSTANCE_ANNOTATION, LEASE_POLICY_LABEL, ORIGINAL_REPLICAS_ANNOTATION,
    PREFERRED_HOLDER_ANNOTATION, RENEW_DEADLINE_ANNOTATION, RESTORE_FINALIZER,
    RETRY_PERIOD_ANNOTATION, ROLE_ANNOTATION, ROLE_LABEL, ROLE_LEADER, SCALED_BY_ANNOTATION,
    SCHEDULED_RUNS_ANNOTATION,
};
use crate::api::{FollowerMode, LeaderPolicy, LeaderPolicySpec, LeaderPolicyStatus, ScheduledRuns};
use crate::contract::{AGENT_CONTAINER, SKIPPED_RUN_MARKER};
use crate::election::record::{Record, format_seconds};

/// Errors of one reconciliation; the pool is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{action} {kind} {namespace}/{name} failed: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error(
        "Lease {namespace}/{name} exists but is not managed by zen-lead and could not be adopted: \
         {reason}"
    )]
    Adopt {
        namespace: String,
        name: String,
        reason: String,
    },
}

impl ReconcileError {
    /// The step, for the reconcile_errors metric.
    pub fn step(&self) -> &'static str {
        match self {
            ReconcileError::Api { kind, .. } => kind,
            ReconcileError::Adopt { .. } => "Lease",
        }
    }

    /// A 409: someone wrote first; retry soon without alarm.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ReconcileError::Api { source: kube::Error::Api(e), .. } if e.code == 409)
    }
}

pub(super) fn api_err(
    action: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let namespace = namespace.to_owned();
    let name = name.to_owned();
    move |source| ReconcileError::Api {
        action,
        kind,
        namespace,
        name,
        source,
    }
}

pub(super) fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(e) if e.code == code)
}

/// What the controller remembers about a pool between reconciliations.
/// Lost on restart by design: everything here can be re-derived.
#[derive(Debug, Default)]
struct PoolMemory {
    /// resourceVersion of the Lease last seen, and when (monotonic): the
    /// expiry clock, as client-go judges it.
    lease_seen: Option<(String, Instant)>,
    /// (holder, its instance, leaseTransitions) last seen in the Lease: a
    /// Lease deleted while held is re-created naming them (see the Lease
    /// contract).
    last_holder_seen: Option<(String, Option<String>, i32)>,
    /// Pods this controller labelled leader (the cache may lag behind).
    leaders: BTreeSet<String>,
    /// Fingerprint of the last scaleDown check, and when.
    scale_checked: Option<(u64, Instant)>,
    scale_outcome: Option<Result<String, (&'static str, String)>>,
    /// HPA targets last listed: (kind, name, hpa).
    hpas: Vec<(String, String, String)>,
    /// Holder name last reported, and since when the pool is leaderless.
    last_holder: Option<Option<String>>,
    leaderless_since: Option<SystemTime>,
    /// Pods already reported as running without the agent.
    warned: BTreeSet<String>,
    /// Owners whose pods were evicted recently (no eviction storms).
    evicted: HashMap<String, Instant>,
    /// Pods (by UID) seen as deposed `start` leaders, and since when.
    deposed_since: HashMap<String, Instant>,
    /// Pods (by UID) whose skipped scheduled run was reported on their Job.
    skipped_reported: BTreeSet<String>,
}

/// How long a pod must look deposed before it is deleted: the kubelet's
/// report that an app exited can reach the API server after the agent's
/// release on shutdown (a Job pod that completed), and such a pod must not be
/// mistaken for a deposed leader whose app still runs.
const DEPOSED_GRACE: Duration = Duration::from_secs(3);

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub cache: Cache,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub evict_uninjected: bool,
    /// Create a LeaderPolicy with the defaults for a pool whose pods name
    /// one that does not exist (`--create-missing-policies`).
    pub create_missing_policies: bool,
    memory: Mutex<HashMap<PoolKey, PoolMemory>>,
    /// (pool, workload) pairs already told that the pool's policy is missing:
    /// once per controller term, not on every pod change.
    missing_reported: Mutex<BTreeSet<(PoolKey, String)>>,
    /// Candidate RBAC per ServiceAccount (see [`rbac`]).
    pub(super) rbac: rbac::Writer,
}

/// Re-check scaleDown at least this often even without changes.
const SCALE_RECHECK: Duration = Duration::from_secs(60);

/// At most one eviction per owner in this window.
const EVICTION_PAUSE: Duration = Duration::from_secs(30);

/// How long after a failed reconcile it is retried.
pub const ERROR_BACKOFF: Duration = Duration::from_secs(2);

impl Context {
    pub fn new(
        client: Client,
        cache: Cache,
        recorder: Recorder,
        metrics: Metrics,
        evict_uninjected: bool,
        create_missing_policies: bool,
    ) -> Self {
        Self {
            client,
            cache,
            recorder,
            metrics,
            evict_uninjected,
            create_missing_policies,
            memory: Mutex::new(HashMap::new()),
            missing_reported: Mutex::new(BTreeSet::new()),
            rbac: rbac::Writer::default(),
        }
    }

    fn with_memory<T>(&self, key: &PoolKey, f: impl FnOnce(&mut PoolMemory) -> T) -> T {
        let mut map = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(key.clone()).or_default())
    }

    fn forget(&self, key: &PoolKey) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

fn now_time() -> Time {
    // Whole seconds: what the API server keeps, so a status computed now
    // compares equal to the same status read back.
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

fn truncate(t: &Time) -> Time {
    Time(Timestamp::from_second(t.0.as_second()).unwrap_or(t.0))
}

/// Reconciles one pool. `Ok(Some(d))`: look again after `d` (a Lease may
/// expire then).
pub async fn reconcile(ctx: &Context, key: &PoolKey) -> Result<Option<Duration>, ReconcileError> {
    ctx.metrics.reconciles.inc();
    let policy = ctx.cache.policy(key);
    let pods = ctx.cache.pods_of(key);
    match policy {
        None => {
            let views = policyless_views(&pods);
            if missing(ctx, key, &pods, &views).await? {
                // Created: the policy's watch event brings the pool back.
                return Ok(None);
            }
            orphan(ctx, key, &views).await?;
            rbac::sync_pool(ctx, key, &[]).await?;
            ctx.forget(key);
            Ok(None)
        }
        Some(p) if p.meta().deletion_timestamp.is_some() => {
            finalize(ctx, key, &p).await?;
            let views = policyless_views(&pods);
            orphan(ctx, key, &views).await?;
            rbac::sync_pool(ctx, key, &[]).await?;
            Ok(None)
        }
        Some(p) => {
            ctx.missing_reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(k, _)| k != key);
            active(ctx, key, &p, &pods).await
        }
    }
}

/// Pods name a pool whose LeaderPolicy does not exist: create it with the
/// defaults, or (creation switched off) tell their workloads what to create.
/// `Ok(true)`: the policy was created (or appeared meanwhile).
async fn missing(
    ctx: &Context,
    key: &PoolKey,
    pods: &[Arc<Pod>],
    views: &[PodView],
) -> Result<bool, ReconcileError> {
    let plan = decide::missing_policy(views, ctx.create_missing_policies);
    if plan == MissingPolicy::Nothing {
        return Ok(false);
    }
    // One lookup per controlling owner, not per pod: a Deployment's pods
    // share their ReplicaSet.
    let mut owners: BTreeMap<String, &Pod> = BTreeMap::new();
    for (pod, _) in pods
        .iter()
        .zip(views)
        .filter(|(_, v)| !v.terminating && !v.finished)
    {
        let owner =
            controller_of(pod.owner_references()).map_or_else(|| pod.name_any(), |o| o.uid.clone());
        owners.entry(owner).or_insert(pod);
    }
    let mut workloads: BTreeMap<String, ObjectReference> = BTreeMap::new();
    for pod in owners.into_values() {
        let w = owning_workload(ctx, pod).await;
        workloads.insert(reference_name(&w), w);
    }
    if plan == MissingPolicy::Report {
        for (name, workload) in workloads {
            let first = ctx
                .missing_reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((key.clone(), name));
            if first {
                publish_on(
                    ctx,
                    &workload,
                    EventType::Warning,
                    "LeaderPolicyMissing",
                    "WaitForPolicy",
                    format!(
                        "no LeaderPolicy {:?} exists in namespace {}: the pods stay NotReady \
                         (readiness gate {CANDIDATE_READINESS_GATE}) and nobody leads until \
                         you create it (an empty spec gives the defaults); this zen-lead does \
                         not create policies (--create-missing-policies=false)",
                        key.name, key.namespace
                    ),
                )
                .await;
            }
        }
        return Ok(false);
    }

    let mut policy = LeaderPolicy::new(&key.name, LeaderPolicySpec::default());
    policy.metadata.namespace = Some(key.namespace.clone());
    policy.metadata.annotations = Some(BTreeMap::from([(
        CREATED_BY_ANNOTATION.to_owned(),
        CREATED_BY_CONTROLLER.to_owned(),
    )]));
    let api: Api<LeaderPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let created = match api.create(&params, &policy).await {
        Ok(created) => created,
        // Someone (the user, another replica's term) was first: that one counts.
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(true),
        Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
            // Not transient (an invalid name, no RBAC): say so where the user looks.
            warn!(pool = %key, error = %e.message, "could not create the pool's LeaderPolicy");
            for workload in workloads.values() {
                publish_on(
                    ctx,
                    workload,
                    EventType::Warning,
                    "LeaderPolicyNotCreated",
                    "CreatePolicy",
                    format!(
                        "zen-lead/pool names LeaderPolicy {:?}, which does not exist, and \
                         zen-lead could not create it: {}; create it yourself",
                        key.name, e.message
                    ),
                )
                .await;
            }
            return Ok(false);
        }
        Err(source) => {
            return Err(ReconcileError::Api {
                action: "create",
                kind: "LeaderPolicy",
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                source,
            });
        }
    };
    ctx.metrics.policies_created.inc();
    let names: Vec<&str> = workloads.keys().map(String::as_str).collect();
    info!(pool = %key, workloads = ?names, "created a LeaderPolicy with the defaults for a pool that had none");
    for workload in workloads.values() {
        publish_on(
            ctx,
            workload,
            EventType::Normal,
            "LeaderPolicyCreated",
            "CreatePolicy",
            format!(
                "zen-lead/pool names LeaderPolicy {:?}, which did not exist: created it with \
                 the defaults (kubectl get leaderpolicy {} -o yaml); edit it freely, zen-lead \
                 never rewrites its spec",
                key.name, key.name
            ),
        )
        .await;
    }
    publish(
        ctx,
        &created,
        EventType::Normal,
        "CreatedForPool",
        "CreatePolicy",
        format!(
            "created with the defaults because {} named pool {:?} and no policy existed",
            names.join(", "),
            key.name
        ),
        None,
    )
    .await;
    Ok(true)
}

/// `Kind/name` of a reference, for logs, notes and de-duplication.
fn reference_name(r: &ObjectReference) -> String {
    format!(
        "{}/{}",
        r.kind.as_deref().unwrap_or("Pod"),
        r.name.as_deref().unwrap_or_default()
    )
}

/// The object a user manages for this pod, where `kubectl describe` should
/// show them news: the pod's controller, one level further for a
/// ReplicaSet (its Deployment) or a Job (its CronJob), else the pod itself.
async fn owning_workload(ctx: &Context, pod: &Pod) -> ObjectReference {
    let namespace = pod.namespace();
    let to_ref = |o: &OwnerReference| ObjectReference {
        api_version: Some(o.api_version.clone()),
        kind: Some(o.kind.clone()),
        name: Some(o.name.clone()),
        namespace: namespace.clone(),
        uid: Some(o.uid.clone()),
        ..ObjectReference::default()
    };
    let Some(owner) = controller_of(pod.owner_references()) else {
        return pod.object_ref(&());
    };
    let ns = namespace.clone().unwrap_or_default();
    let parent = match (owner.api_version.as_str(), owner.kind.as_str()) {
        ("apps/v1", "ReplicaSet") => {
            let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
            api.get_metadata_opt(&owner.name)
                .await
                .ok()
                .flatten()
                .and_then(|rs| controller_of(rs.owner_references()).cloned())
        }
        ("batch/v1", "Job") => {
            let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
            api.get_metadata_opt(&owner.name)
                .await
                .ok()
                .flatten()
                .and_then(|job| controller_of(job.owner_references()).cloned())
        }
        _ => None,
    };
    to_ref(parent.as_ref().unwrap_or(owner))
}

fn controller_of(owners: &[OwnerReference]) -> Option<&OwnerReference> {
    owners.iter().find(|o| o.controller == Some(true))
}

/// `scheduledRuns: once`: tells each Job whose pod skipped its command
/// (`zen-lead run` ends such a container with [`SKIPPED_RUN_MARKER`] in its
/// termination message) which Job already ran that scheduled time.
async fn report_skipped_runs(ctx: &Context, key: &PoolKey, pods: &[Arc<Pod>]) {
    let live: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
    for pod in pods {
        let Some(message) = skipped_run(pod) else {
            continue;
        };
        let uid = pod.uid().unwrap_or_default();
        let first = ctx.with_memory(key, |m| m.skipped_reported.insert(uid));
        if !first {
            continue;
        }
        let job = owning_workload(ctx, pod).await;
        info!(pool = %key, pod = %pod.name_any(), "{message}");
        publish_on(
            ctx,
            &job,
            EventType::Normal,
            "ScheduledRunSkipped",
            "SkipDuplicate",
            format!("pod {}: {message}", pod.name_any()),
        )
        .await;
    }
    ctx.with_memory(key, |m| m.skipped_reported.retain(|u| live.contains(u)));
}

/// The message of an app container that `zen-lead run` ended without running
/// its command, because the scheduled time already ran in the pool.
fn skipped_run(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter(|c| c.name != AGENT_CONTAINER)
        .find_map(|c| {
            let message = c.state.as_ref()?.terminated.as_ref()?.message.as_deref()?;
            message
                .trim()
                .starts_with(SKIPPED_RUN_MARKER)
                .then(|| message.trim().to_owned())
        })
}

/// Publishes an event on any object (a workload, a pod).
async fn publish_on(
    ctx: &Context,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, regarding).await {
        ctx.metrics.error("event");
        warn!(object = %reference_name(regarding), error = %err, "could not publish an event");
    }
}

/// Pod views for a pool without a (live) policy: no strategy to follow.
fn policyless_views(pods: &[Arc<Pod>]) -> Vec<PodView> {
    pods.iter()
        .map(|p| PodView::from_pod(p, Default::default()))
        .collect()
}

/// A pool whose policy is missing: its pods are not candidates and nobody
/// leads.
async fn orphan(ctx: &Context, key: &PoolKey, views: &[PodView]) -> Result<(), ReconcileError> {
    // One write per pod: the role removal and the condition together.
    let removals = decide::role_removals(views);
    for pod in views {
        let want = decide::candidate_condition(false, &key.name, pod);
        let condition = (!decide::candidate_condition_current(pod, &want)).then_some(&want);
        let role = removals.iter().find(|c| c.pod == pod.name).map(|c| c.role);
        if role.is_some() || condition.is_some() {
            write_pod(ctx, key, &pod.name, role, condition).await?;
        }
    }
    Ok(())
}

async fn active(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    pods: &[Arc<Pod>],
) -> Result<Option<Duration>, ReconcileError> {
    let strategy = policy.spec.identity_strategy;
    let views: Vec<PodView> = pods
        .iter()
        .map(|p| PodView::from_pod(p, strategy))
        .collect();
    report_skipped_runs(ctx, key, pods).await;
    let node_ready = |n: &str| ctx.cache.node_ready(n);
    let mut requeue = None;

    // Finalizer first, so no scale happens that a deletion could not undo.
    let scale_down = policy.spec.follower_mode == FollowerMode::ScaleDown;
    if scale_down && !policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER) {
        add_finalizer(ctx, key, policy).await?;
    }

    // 1. The Lease, carrying the policy's timings, and 2. RBAC for the
    // candidates' ServiceAccounts: independent, so written concurrently.
    let (policy_ready, lease) = match policy.spec.timings() {
        Err(err) => (Err(("InvalidTimings", err.to_string())), None),
        Ok(timings) => {
            let accounts = decide::service_accounts(&views);
            let (lease, rbac) = tokio::join!(
                ensure_lease(ctx, key, policy, timings),
                rbac::sync_pool(ctx, key, &accounts)
            );
            rbac?;
            match lease {
                Ok(lease) => (Ok(()), Some(lease)),
                Err(err) if err.is_conflict() => return Err(err),
                Err(err) => (Err(("LeaseError", err.to_string())), None),
            }
        }
    };
    let mut lease_view = lease.as_ref().map(|l| lease_view(ctx, key, l));

    // 3. Fast failover.
    if let (Some(lv), Some(l)) = (lease_view.as_mut(), lease.as_ref()) {
        let holder_pod = decide::holder_pod(lv, &views);
        let confirmed_gone = decide::needs_confirmation(lv, holder_pod)
            && holder_confirmed_gone(ctx, key, policy, lv).await?;
        match decide::failover(lv, holder_pod, &views, &node_ready, confirmed_gone) {
            Failover::Nothing => {}
            Failover::Expire { why } => {
                let holder = lv.holder.clone().unwrap_or_default();
                if expire_lease(ctx, key, l).await? {
                    ctx.metrics.lease_expiries.inc();
                    info!(pool = %key, holder = %holder, reason = why.reason(), "expired the Lease of a holder that cannot renew; a follower takes over now");
                    publish(
                        ctx,
                        policy,
                        EventType::Normal,
                        "LeaseExpired",
                        "ExpireLease",
                        format!(
                            "holder {holder} cannot renew ({}); cleared the Lease so a \
                             follower takes over without waiting for expiry",
                            why.reason()
                        ),
                        holder_pod_name(&holder).map(|n| pod_ref(&key.namespace, n, None)),
                    )
                    .await;
                    lv.holder = None;
                    lv.expired = false;
                }
            }
            Failover::HandOff { to } => {
                let holder = lv.holder.clone().unwrap_or_default();
                if hand_off(ctx, key, l, &to).await? {
                    info!(pool = %key, holder = %holder, successor = %to, "holder pod is terminating; asked it to hand over");
                    lv.preferred = Some(to);
                }
            }
        }
    }

    // 3b. Deposed `start` leaders, whose app runs beside the successor's:
    // deleted once they have looked deposed for DEPOSED_GRACE.
    if let Some(lv) = lease_view.as_ref() {
        let deposed = decide::deposed_start_leaders(&views, lv);
        let now = Instant::now();
        let since: HashMap<String, Instant> = ctx.with_memory(key, |m| {
            m.deposed_since
                .retain(|uid, _| deposed.iter().any(|p| &p.uid == uid));
            for pod in &deposed {
                m.deposed_since.entry(pod.uid.clone()).or_insert(now);
            }
            m.deposed_since.clone()
        });
        let due: Vec<&PodView> = deposed
            .iter()
            .copied()
            .filter(|p| since.get(&p.uid).is_some_and(|t| now >= *t + DEPOSED_GRACE))
            .collect();
        if !due.is_empty() {
            remove_deposed(ctx, key, policy, &due).await?;
        }
        if let Some(next) = since
            .values()
            .map(|t| *t + DEPOSED_GRACE)
            .filter(|t| *t > now)
            .min()
        {
            requeue = Some(next.saturating_duration_since(now) + Duration::from_millis(100));
        }
    }

    // 4. Roles: every demotion (including pods that left the pool) is
    // written, and must succeed, before the promotion; plain follower
    // labels after it go out in parallel.
    let leader = lease_view
        .as_ref()
        .and_then(|lv| decide::leader(lv, &views, &node_ready));
    let also = ctx.with_memory(key, |m| m.leaders.clone());
    let names: BTreeSet<&str> = views.iter().map(|p| p.name.as_str()).collect();
    for pod in also.iter().filter(|n| !names.contains(n.as_str())) {
        write_pod(ctx, key, pod, Some(None), None).await?;
        ctx.with_memory(key, |m| m.leaders.remove(pod));
    }
    let changes = decide::role_changes(&views, leader.map(|p| p.name.as_str()), &also);
    let labelled_leader = |name: &str| {
        also.contains(name)
            || views
                .iter()
                .any(|p| p.name == name && p.role_label.as_deref() == Some(ROLE_LEADER))
    };
    let ordered = changes
        .iter()
        .position(|c| c.role == Some(ROLE_LEADER))
        .map(|i| i + 1)
        .unwrap_or_else(|| changes.iter().filter(|c| labelled_leader(&c.pod)).count());

    // 5. Readiness gate, in the same write as the pod's role change: the
    // pods/status subresource keeps metadata changes, so one PATCH per pod
    // carries both (half the writes of a pool coming up).
    let conflicts = decide::identity_conflicts(&views, lease_view.as_ref(), &node_ready);
    let mut conditions: BTreeMap<String, CandidateCondition> = views
        .iter()
        .filter(|pod| !pod.finished)
        .filter_map(|pod| {
            let conflict = conflicts.iter().find(|c| c.pod == pod.name);
            let want = decide::pool_candidate_condition(&key.name, pod, strategy, conflict);
            (!decide::candidate_condition_current(pod, &want)).then(|| (pod.name.clone(), want))
        })
        .collect();
    // The user looks at the pod that cannot be a candidate: say why there,
    // once, when its condition turns to the identity problem.
    for (pod, want) in &conditions {
        if matches!(
            want.reason,
            decide::DUPLICATE_IDENTITY | decide::IDENTITY_STRATEGY_MISMATCH
        ) {
            let uid = views.iter().find(|p| &p.name == pod).map(|p| p.uid.clone());
            publish_on_pod(
                ctx,
                &pod_ref(&key.namespace, pod, uid),
                want.reason,
                "CheckCandidate",
                want.message.clone(),
            )
            .await;
        }
    }
    for change in &changes[..ordered] {
        let condition = conditions.remove(&change.pod);
        write_pod(ctx, key, &change.pod, Some(change.role), condition.as_ref()).await?;
        ctx.with_memory(key, |m| {
            if change.role == Some(ROLE_LEADER) {
                m.leaders.insert(change.pod.clone());
            } else {
                m.leaders.remove(&change.pod);
            }
        });
    }
    let mut rest: BTreeMap<&str, PodWrite<'_>> = BTreeMap::new();
    for change in &changes[ordered..] {
        rest.entry(change.pod.as_str()).or_default().role = Some(change.role);
    }
    for (pod, want) in &conditions {
        rest.entry(pod.as_str()).or_default().condition = Some(want);
    }
    futures::future::try_join_all(
        rest.iter()
            .map(|(pod, w)| write_pod(ctx, key, pod, w.role, w.condition)),
    )
    .await?;

    // 6. Safety net.
    let unlabelled = ctx.cache.unlabelled_of(key);
    let missing = safety_net(ctx, key, policy, &views, &unlabelled).await;

    // 7. scaleDown.
    let keep = leader.and_then(decide::pod_workload);
    let scaled = scale(ctx, key, policy, keep).await?;
    // The finalizer goes once nothing scaled by this pool is left (the
    // cache shows the restores of this pass on the next one).
    if !scale_down
        && policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER)
        && workloads(ctx, key).iter().all(|w| w.original.is_none())
    {
        remove_finalizer(ctx, key, policy).await?;
    }

    // 8. Status, events, metrics.
    let candidates = views.iter().filter(|p| p.candidate(&node_ready)).count();
    let previous = policy.status.as_ref();
    let next = decide::status(&StatusInput {
        generation: policy.meta().generation,
        pool: &key.name,
        previous,
        policy_ready,
        lease: lease_view.as_ref(),
        leader,
        pods: &views,
        candidates,
        agent_missing: &missing,
        identity_conflicts: &conflicts,
        follower_mode: policy.spec.follower_mode,
        timings: policy
            .spec
            .timings()
            .is_ok()
            .then(|| policy.spec.effective_seconds()),
        scaled: if scale_down { scaled } else { None },
        now: now_time(),
    });
    report_leader_change(ctx, key, policy, &next).await;
    if previous != Some(&next) {
        write_status(ctx, key, &next).await?;
    }

    // Look again when the holder's Lease would expire without renewals.
    if let (Some(lv), Some(l)) = (lease_view.as_ref(), lease.as_ref())
        && lv.holder.is_some()
        && !lv.expired
    {
        let duration = Record::from_lease(l)
            .map(|r| r.timings.lease_duration())
            .unwrap_or(Duration::from_secs(15));
        let renew = Record::from_lease(l)
            .map(|r| r.timings.renew_deadline())
            .unwrap_or(Duration::from_secs(10));
        let seen = ctx.with_memory(key, |m| m.lease_seen.as_ref().map(|(_, at)| *at));
        if let Some(seen) = seen {
            // Wake at the renew deadline too (a holder on a NotReady node
            // may be cleared then), and at expiry.
            let now = Instant::now();
            let at = if lv.past_renew_deadline {
                seen + duration
            } else {
                seen + renew
            };
            let wake = at.saturating_duration_since(now) + Duration::from_millis(100);
            requeue = Some(requeue.map_or(wake, |r: Duration| r.min(wake)));
        }
    }
    Ok(requeue)
}

fn lease_view(ctx: &Context, key: &PoolKey, lease: &Lease) -> LeaseView {
    let rv = lease.resource_version().unwrap_or_default();
    let now = Instant::now();
    let seen = ctx.with_memory(key, |m| match &m.lease_seen {
        Some((old, at)) if *old == rv => *at,
        _ => {
            m.lease_seen = Some((rv.clone(), now));
            now
        }
    });
    let record = Record::from_lease(lease);
    let duration = record
        .as_ref()
        .map(|r| r.timings.lease_duration())
        .unwrap_or(Duration::from_secs(15));
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    let renew_deadline = record
        .as_ref()
        .map(|r| r.timings.renew_deadline())
        .unwrap_or(Duration::from_secs(10));
    let silent = now.saturating_duration_since(seen);
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    ctx.with_memory(key, |m| {
        m.last_holder_seen = holder.clone().map(|h| {
            let instance = record.as_ref().and_then(|r| r.holder_instance.clone());
            (h, instance, transitions)
        });
    });
    LeaseView {
        expired: holder.is_some() && silent >= duration,
        past_renew_deadline: holder.is_some() && silent >= renew_deadline,
        holder,
        transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        acquired: spec
            .and_then(|s| s.acquire_time.as_ref())
            .map(|t| truncate(&Time(t.0))),
        holder_instance: record.as_ref().and_then(|r| r.holder_instance.clone()),
        preferred: record.and_then(|r| r.preferred),
    }
}

/// The pod name in a `pod`-strategy identity (`<name>_<uid prefix>`).
fn holder_pod_name(identity: &str) -> Option<&str> {
    identity.rsplit_once('_').map(|(name, _)| name)
}

fn pod_ref(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        uid,
        ..ObjectReference::default()
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

/// Creates the Lease or brings its timings, label and owner in line, by
/// compare-and-swap. Returns the Lease as stored.
async fn ensure_lease(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    timings: crate::election::Timings,
) -> Result<Lease, ReconcileError> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let lease_secs = policy.spec.lease_duration_seconds;
    let renew = format_seconds(timings.renew_deadline());
    let retry = format_seconds(timings.retry_period());
    let owner = owner_ref(policy);
    let fix = |lease: &mut Lease| -> bool {
        let mut changed = false;
        let meta = &mut lease.metadata;
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        if labels.get(LEASE_POLICY_LABEL) != Some(&key.name) {
            labels.insert(LEASE_POLICY_LABEL.to_owned(), key.name.clone());
            changed = true;
        }
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in [
            (RENEW_DEADLINE_ANNOTATION, &renew),
            (RETRY_PERIOD_ANNOTATION, &retry),
        ] {
            if annotations.get(k) != Some(v) {
                annotations.insert(k.to_owned(), v.clone());
                changed = true;
            }
        }
        // The agents read the policy's scheduledRuns from the Lease, so an
        // edit applies without re-creating pods.
        let once = policy.spec.scheduled_runs == ScheduledRuns::Once;
        if once
            != (annotations
                .get(SCHEDULED_RUNS_ANNOTATION)
                .map(String::as_str)
                == Some("once"))
        {
            if once {
                annotations.insert(SCHEDULED_RUNS_ANNOTATION.to_owned(), "once".to_owned());
            } else {
                annotations.remove(SCHEDULED_RUNS_ANNOTATION);
            }
            changed = true;
        }
        let owners = meta.owner_references.get_or_insert_with(Vec::new);
        if !owners.iter().any(|o| o.uid == owner.uid) {
            // Another controller owner (e.g. a previous policy with the
            // same name) would block garbage collection: replace it.
            owners.retain(|o| o.controller != Some(true));
            owners.push(owner.clone());
            changed = true;
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.lease_duration_seconds != Some(lease_secs) {
            spec.lease_duration_seconds = Some(lease_secs);
            changed = true;
        }
        changed
    };
    let current = ctx.cache.lease(key).map(|l| (*l).clone());
    let mut lease = match current {
        Some(l) => l,
        None => {
            // Deleted while held: re-create it naming the last holder, so
            // candidates treat it as a live claim (not as free).
            let last = ctx.with_memory(key, |m| m.last_holder_seen.clone());
            let mut spec = k8s_openapi::api::coordination::v1::LeaseSpec::default();
            let mut annotations = BTreeMap::new();
            if let Some((holder, instance, transitions)) = last {
                // With its instance, so the holder keeps its term (without,
                // it would see a claim by someone else of its name).
                if let Some(instance) = instance {
                    annotations.insert(
                        HOLDER_INSTANCE_ANNOTATION.to_owned(),
                        crate::election::record::instance_value(&holder, &instance),
                    );
                }
                let now = crate::election::record::now_micro();
                spec.holder_identity = Some(holder);
                spec.lease_transitions = Some(transitions);
                spec.acquire_time = Some(now.clone());
                spec.renew_time = Some(now);
            }
            let mut fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(key.name.clone()),
                    namespace: Some(key.namespace.clone()),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            fix(&mut fresh);
            match api.create(&PostParams::default(), &fresh).await {
                Ok(created) => {
                    info!(pool = %key, "created the pool's Lease");
                    return Ok(created);
                }
                Err(err) if is_status(&err, 409) => {
                    // Exists without our label (made by an agent or a
                    // person): adopt it below.
                    api.get(&key.name).await.map_err(api_err(
                        "read",
                        "Lease",
                        &key.namespace,
                        &key.name,
                    ))?
                }
                Err(err) => return Err(api_err("create", "Lease", &key.namespace, &key.name)(err)),
            }
        }
    };
    if !fix(&mut lease) {
        return Ok(lease);
    }
    // CAS: the PUT carries the resourceVersion we read.
    api.replace(&key.name, &PostParams::default(), &lease)
        .await
        .map_err(api_err("update", "Lease", &key.namespace, &key.name))
}

/// Whether the holder named in the Lease is confirmed gone by the API
/// server (not just missing from a cache that may lag).
async fn holder_confirmed_gone(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    lease: &LeaseView,
) -> Result<bool, ReconcileError> {
    let Some(holder) = lease.holder.as_deref() else {
        return Ok(false);
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
    match policy.spec.identity_strategy {
        crate::api::IdentityStrategy::Pod => {
            // `<pod>_<uid prefix>`; pod names cannot contain '_'.
            let Some((name, _)) = holder.rsplit_once('_') else {
                // Not a pod identity (a `zen-lead lock` holder, say): not ours to expire.
                return Ok(false);
            };
            match api.get_opt(name).await {
                Ok(None) => Ok(true),
                Ok(Some(pod)) => {
                    let view = PodView::from_pod(&pod, policy.spec.identity_strategy);
                    // Same name, other UID: a re-created pod (StatefulSet).
                    Ok(!view.holds(lease))
                }
                Err(err) => Err(api_err("read", "Pod", &key.namespace, name)(err)),
            }
        }
        crate::api::IdentityStrategy::Custom => {
            let list = api
                .list(&ListParams::default().labels(&format!(
                    "{}={}",
                    crate::api::keys::POOL_LABEL,
                    key.name
                )))
                .await
                .map_err(api_err("list", "Pod", &key.namespace, &key.name))?;
            // The holder's instance (pod UID) settles which pod holds when
            // several share the identity.
            Ok(!list
                .items
                .iter()
                .any(|p| PodView::from_pod(p, policy.spec.identity_strategy).holds(lease)))
        }
    }
}

/// Deletes pods whose app runs although another candidate (or nobody) holds
/// the Lease, after reading the Lease from the API server: the cache may not
/// show yet the term a brand-new leader took before its app started.
async fn remove_deposed(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    deposed: &[&PodView],
) -> Result<(), ReconcileError> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let fresh = leases.get_opt(&key.name).await.map_err(api_err(
        "read",
        "Lease",
        &key.namespace,
        &key.name,
    ))?;
    let Some(record) = fresh.as_ref().and_then(Record::from_lease) else {
        return Ok(());
    };
    let now = LeaseView {
        holder: record.holder.clone(),
        holder_instance: record.holder_instance.clone(),
        ..LeaseView::default()
    };
    // A free Lease may be taken straight back by the pod itself (its agent
    // restarted and released): only a Lease naming someone else deposes.
    let Some(holder) = record.holder.clone() else {
        return Ok(());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
    for pod in deposed.iter().filter(|p| !p.holds(&now)) {
        // The pod as the API server has it now, not as the cache had it.
        let fresh = pods.get_opt(&pod.name).await.map_err(api_err(
            "read",
            "Pod",
            &key.namespace,
            &pod.name,
        ))?;
        let still = fresh
            .as_ref()
            .map(|p| PodView::from_pod(p, policy.spec.identity_strategy))
            .is_some_and(|v| v.uid == pod.uid && v.app_running && !v.terminating && !v.finished);
        if !still {
            continue;
        }
        // Preconditioned on the UID: never a re-created pod of the same name.
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..kube::api::DeleteParams::default()
        };
        match pods.delete(&pod.name, &params).await {
            Ok(_) => {}
            Err(err) if is_status(&err, 404) || is_status(&err, 409) => continue,
            // Not allowed (RBAC of an older chart): say so, keep reconciling.
            Err(err) if is_status(&err, 403) => {
                ctx.metrics.error("delete-deposed");
                warn!(pool = %key, pod = %pod.name, error = %err, "may not delete a deposed start-activation leader; grant the controller delete on pods");
                publish_on_pod(
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
                continue;
            }
            Err(err) => return Err(api_err("delete", "Pod", &key.namespace, &pod.name)(err)),
        }
        ctx.metrics.deposed_deletions.inc();
        warn!(pool = %key, pod = %pod.name, holder = %holder, "deleted a deposed start-activation leader whose app still ran");
        let note = format!(
            "pod {} runs its app but no longer holds the Lease of pool {} (held by {holder}): it \
             lost its term while its app ran (frozen, cut off from the API server, or its agent \
             down longer than the lease), and start activation cannot stop an app it started, so \
             the pod was deleted",
            pod.name, key.name
        );
        publish_on_pod(
            ctx,
            &pod_ref(&key.namespace, &pod.name, Some(pod.uid.clone())),
            "DeposedLeaderDeleted",
            "DeletePod",
            note.clone(),
        )
        .await;
        publish(
            ctx,
            policy,
            EventType::Warning,
            "DeposedLeaderDeleted",
            "DeletePod",
            note,
            Some(pod_ref(&key.namespace, &pod.name, Some(pod.uid.clone()))),
        )
        .await;
    }
    Ok(())
}

/// Clears the holder by compare-and-swap. `false`: the Lease changed
/// meanwhile (the next reconcile decides again).
async fn expire_lease(ctx: &Context, key: &PoolKey, lease: &Lease) -> Result<bool, ReconcileError> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let mut next = lease.clone();
    if let Some(spec) = next.spec.as_mut() {
        spec.holder_identity = None;
    }
    if let Some(a) = next.metadata.annotations.as_mut() {
        a.remove(PREFERRED_HOLDER_ANNOTATION);
        a.remove(HOLDER_INSTANCE_ANNOTATION);
    }
    match api.replace(&key.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(err) if is_status(&err, 409) => Ok(false),
        Err(err) => Err(api_err("expire", "Lease", &key.namespace, &key.name)(err)),
    }
}

/// Names `to` as preferred holder by compare-and-swap.
async fn hand_off(
    ctx: &Context,
    key: &PoolKey,
    lease: &Lease,
    to: &str,
) -> Result<bool, ReconcileError> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let mut next = lease.clone();
    next.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(PREFERRED_HOLDER_ANNOTATION.to_owned(), to.to_owned());
    match api.replace(&key.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(err) if is_status(&err, 409) => Ok(false),
        Err(err) => Err(api_err("hand off", "Lease", &key.namespace, &key.name)(err)),
    }
}

/// What one pod write changes: its role (`Some(None)` removes it) and/or
/// its candidate condition.
#[derive(Default)]
struct PodWrite<'a> {
    role: Option<Option<&'static str>>,
    condition: Option<&'a CandidateCondition>,
}

/// One strategic-merge PATCH of `pods/status` carrying the role label and
/// annotation and/or the readiness-gate condition. The status subresource
/// resets only spec, ownerReferences and deletionTimestamp, so labels and
/// annotations written through it stick (tests/controller.rs checks both).
async fn write_pod(
    ctx: &Context,
    key: &PoolKey,
    pod: &str,
    role: Option<Option<&'static str>>,
    condition: Option<&CandidateCondition>,
) -> Result<(), ReconcileError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let mut patch = serde_json::Map::new();
    if let Some(role) = role {
        patch.insert(
            "metadata".to_owned(),
            json!({
                "labels": { ROLE_LABEL: role },
                "annotations": { ROLE_ANNOTATION: role },
            }),
        );
    }
    if let Some(want) = condition {
        // Conditions merge by type; the kubelet's conditions stay.
        patch.insert(
            "status".to_owned(),
            json!({
                "conditions": [{
                    "type": CANDIDATE_READINESS_GATE,
                    "status": if want.status { "True" } else { "False" },
                    "reason": want.reason,
                    "message": want.message,
                    "lastTransitionTime": now_time(),
                }]
            }),
        );
    }
    let what = match (role.is_some(), condition.is_some()) {
        (true, true) => "set the role and readiness gate of",
        (true, false) => "set the role of",
        _ => "set the readiness gate of",
    };
    let patch = serde_json::Value::Object(patch);
    // Only a condition needs the strategic merge (conditions merge by type);
    // a role change alone is a plain merge patch, cheaper for the API server.
    let patch = if condition.is_some() {
        Patch::Strategic(&patch)
    } else {
        Patch::Merge(&patch)
    };
    match api.patch_status(pod, &PatchParams::default(), &patch).await {
        Ok(_) => Ok(()),
        // Gone already: nothing to write.
        Err(err) if is_status(&err, 404) => Ok(()),
        Err(err) => Err(api_err(what, "Pod", &key.namespace, pod)(err)),
    }
}

async fn write_status(
    ctx: &Context,
    key: &PoolKey,
    status: &LeaderPolicyStatus,
) -> Result<(), ReconcileError> {
    let api: Api<LeaderPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    // The controller owns the whole status, so a JSON patch that sets it
    // is enough, and far cheaper for the API server than a server-side apply
    // (no managed-fields merge of the typed object).
    let patch = json_patch::Patch(vec![json_patch::PatchOperation::Add(
        json_patch::AddOperation {
            path: json_patch::jsonptr::PointerBuf::from_tokens(["status"]),
            value: serde_json::to_value(status).unwrap_or_default(),
        },
    )]);
    match api
        .patch_status(
            &key.name,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_status(&err, 404) => Ok(()),
        Err(err) => Err(api_err(
            "write the status of",
            "LeaderPolicy",
            &key.namespace,
            &key.name,
        )(err)),
    }
}

/// Creates `obj`, or (when it exists, or `try_create` is false) applies it
/// server-side with zen-lead's field manager.
pub(super) async fn create_or_apply<K>(
    api: &Api<K>,
    try_create: bool,
    obj: &K,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<(), ReconcileError>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if try_create {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return Ok(()),
            Err(err) if is_status(&err, 409) => {}
            Err(err) => return Err(api_err("create", kind, namespace, name)(err)),
        }
    }
    let mut body = serde_json::to_value(obj).unwrap_or_default();
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(api_err("apply", kind, namespace, name))
}

/// Pods of the pool that run without the agent: reported once each (Warning
/// event), and evicted with `--evict-uninjected` when a controller will
/// re-create them. Returns their names for the status.
async fn safety_net(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    pods: &[PodView],
    unlabelled: &BTreeMap<String, Unlabelled>,
) -> Vec<String> {
    let mut missing: Vec<(String, Option<(String, String)>)> = pods
        .iter()
        .filter(|p| !p.injected && !p.terminating && !p.finished)
        .map(|p| (p.name.clone(), p.owner.clone()))
        .collect();
    missing.extend(
        unlabelled
            .iter()
            .map(|(name, u)| (name.clone(), u.owner.clone())),
    );
    missing.sort();
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
        publish(
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
                    "delete it, or run the controller with --evict-uninjected"
                }
            ),
            Some(pod_ref(&key.namespace, name, None)),
        )
        .await;
    }
    if ctx.evict_uninjected {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
        for (name, owner) in &missing {
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
    names
}

/// scaleDown: plan from the namespace's Deployments, StatefulSets and HPAs,
/// then Remember / Scale / Forget. Skipped when nothing relevant changed
/// since the last check (and it is less than a minute old).
async fn scale(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    keep: Option<(&'static str, String)>,
) -> Result<Option<Result<String, (&'static str, String)>>, ReconcileError> {
    let scale_down = policy.spec.follower_mode == FollowerMode::ScaleDown
        && policy.meta().deletion_timestamp.is_none();
    let mut workloads = workloads(ctx, key);
    if workloads.is_empty() && !scale_down {
        ctx.with_memory(key, |m| m.scale_outcome = None);
        return Ok(None);
    }
    // HPAs are listed (no watch: they matter only to scaleDown pools) when
    // something relevant changed, or a minute passed.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (policy.meta().generation, scale_down, &keep, &workloads).hash(&mut hasher);
    let fingerprint = hasher.finish();
    let (fresh, hpas) = ctx.with_memory(key, |m| {
        let fresh = m
            .scale_checked
            .as_ref()
            .is_some_and(|(f, at)| *f == fingerprint && at.elapsed() < SCALE_RECHECK);
        (fresh, m.hpas.clone())
    });
    let hpas = if fresh || !scale_down {
        hpas
    } else {
        list_hpas(ctx, key).await?
    };
    for w in &mut workloads {
        w.hpa = hpas
            .iter()
            .find(|(kind, name, _)| kind == w.kind && *name == w.name)
            .map(|(_, _, hpa)| hpa.clone());
    }
    let plan = decide::scale_plan(
        &workloads,
        scale_down,
        keep.as_ref().map(|(k, n)| (*k, n.as_str())),
    );
    for action in &plan.actions {
        apply_scale_action(ctx, key, action).await?;
    }
    if let Some(Err((reason, message))) = &plan.outcome {
        let before = ctx.with_memory(key, |m| m.scale_outcome.clone());
        if before.as_ref() != Some(&Err((reason, message.clone()))) {
            publish(
                ctx,
                policy,
                EventType::Warning,
                reason,
                "ScaleDown",
                message.clone(),
                None,
            )
            .await;
        }
    }
    ctx.with_memory(key, |m| {
        m.scale_checked = Some((fingerprint, Instant::now()));
        m.scale_outcome = plan.outcome.clone();
        m.hpas = hpas;
    });
    Ok(plan.outcome)
}

/// (kind, name, hpa) of every HPA target in the pool's namespace.
async fn list_hpas(
    ctx: &Context,
    key: &PoolKey,
) -> Result<Vec<(String, String, String)>, ReconcileError> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let list = hpas.list(&ListParams::default()).await.map_err(api_err(
        "list",
        "HorizontalPodAutoscaler",
        &key.namespace,
        "*",
    ))?;
    Ok(list
        .items
        .iter()
        .filter_map(|h| {
            let target = &h.spec.as_ref()?.scale_target_ref;
            Some((target.kind.clone(), target.name.clone(), h.name_any()))
        })
        .collect())
}

/// The pool's Deployments and StatefulSets (members, or scaled by it), from
/// the caches.
fn workloads(ctx: &Context, key: &PoolKey) -> Vec<WorkloadView> {
    let original = |meta: &ObjectMeta| {
        let a = meta.annotations.as_ref()?;
        if a.get(SCALED_BY_ANNOTATION) != Some(&key.name) {
            return None;
        }
        a.get(ORIGINAL_REPLICAS_ANNOTATION)?
            .trim()
            .parse::<i32>()
            .ok()
    };
    let view = |kind: &'static str,
                meta: &ObjectMeta,
                template: Option<&ObjectMeta>,
                replicas: Option<i32>| {
        if meta.namespace.as_deref() != Some(key.namespace.as_str()) {
            return None;
        }
        let in_pool = decide::joins_pool(
            meta.annotations.as_ref(),
            template.and_then(|t| t.annotations.as_ref()),
            template.and_then(|t| t.labels.as_ref()),
            &key.name,
        );
        let original = original(meta);
        (in_pool || original.is_some()).then(|| WorkloadView {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            replicas: replicas.unwrap_or(1),
            in_pool,
            original,
            hpa: None,
        })
    };
    let mut out: Vec<WorkloadView> = ctx
        .cache
        .deployments
        .state()
        .iter()
        .filter_map(|d| {
            let spec = d.spec.as_ref();
            view(
                "Deployment",
                &d.metadata,
                spec.and_then(|s| s.template.metadata.as_ref()),
                spec.and_then(|s| s.replicas),
            )
        })
        .collect();
    out.extend(ctx.cache.statefulsets.state().iter().filter_map(|s| {
        let spec = s.spec.as_ref();
        view(
            "StatefulSet",
            &s.metadata,
            spec.and_then(|s| s.template.metadata.as_ref()),
            spec.and_then(|s| s.replicas),
        )
    }));
    out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    out
}

async fn apply_scale_action(
    ctx: &Context,
    key: &PoolKey,
    action: &ScaleAction,
) -> Result<(), ReconcileError> {
    let ns = &key.namespace;
    let pp = PatchParams::default();
    match action {
        ScaleAction::Remember {
            kind,
            name,
            original,
        } => {
            let patch = json!({"metadata": {"annotations": {
                ORIGINAL_REPLICAS_ANNOTATION: original.to_string(),
                SCALED_BY_ANNOTATION: key.name,
            }}});
            patch_workload(ctx, ns, kind, name, &patch).await?;
            info!(pool = %key, workload = %format!("{kind}/{name}"), original, "remembered the original replica count");
        }
        ScaleAction::Scale {
            kind,
            name,
            replicas,
        } => {
            let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
            let result = match *kind {
                "StatefulSet" => Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
                    .patch_scale(name, &pp, &patch)
                    .await
                    .map(|_| ()),
                _ => Api::<Deployment>::namespaced(ctx.client.clone(), ns)
                    .patch_scale(name, &pp, &patch)
                    .await
                    .map(|_| ()),
            };
            result.map_err(api_err("scale", kind, ns, name))?;
            info!(pool = %key, workload = %format!("{kind}/{name}"), replicas, "scaled");
        }
        ScaleAction::Forget { kind, name } => {
            let patch = json!({"metadata": {"annotations": {
                ORIGINAL_REPLICAS_ANNOTATION: null,
                SCALED_BY_ANNOTATION: null,
            }}});
            patch_workload(ctx, ns, kind, name, &patch).await?;
            info!(pool = %key, workload = %format!("{kind}/{name}"), "restored the original replica count");
        }
    }
    Ok(())
}

async fn patch_workload(
    ctx: &Context,
    ns: &str,
    kind: &'static str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), ReconcileError> {
    let pp = PatchParams::default();
    let result = match kind {
        "StatefulSet" => Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
            .patch(name, &pp, &Patch::Merge(patch))
            .await
            .map(|_| ()),
        _ => Api::<Deployment>::namespaced(ctx.client.clone(), ns)
            .patch(name, &pp, &Patch::Merge(patch))
            .await
            .map(|_| ()),
    };
    result.map_err(api_err("annotate", kind, ns, name))
}

async fn add_finalizer(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
) -> Result<(), ReconcileError> {
    let api: Api<LeaderPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let mut finalizers = policy.finalizers().to_vec();
    finalizers.push(RESTORE_FINALIZER.to_owned());
    // The resourceVersion makes this a compare-and-swap: finalizers of
    // other controllers are never overwritten by a stale list.
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": policy.resource_version(),
    }});
    api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(
            "add the finalizer to",
            "LeaderPolicy",
            &key.namespace,
            &key.name,
        ))?;
    Ok(())
}

async fn remove_finalizer(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
) -> Result<(), ReconcileError> {
    let api: Api<LeaderPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let finalizers: Vec<String> = policy
        .finalizers()
        .iter()
        .filter(|f| *f != RESTORE_FINALIZER)
        .cloned()
        .collect();
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": policy.resource_version(),
    }});
    match api
        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_status(&err, 404) => Ok(()),
        Err(err) => Err(api_err(
            "remove the finalizer from",
            "LeaderPolicy",
            &key.namespace,
            &key.name,
        )(err)),
    }
}

/// A policy being deleted: restore every workload it scaled, then let it go.
async fn finalize(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
) -> Result<(), ReconcileError> {
    if !policy.finalizers().iter().any(|f| f == RESTORE_FINALIZER) {
        return Ok(());
    }
    let plan = decide::scale_plan(&workloads(ctx, key), false, None);
    for action in &plan.actions {
        apply_scale_action(ctx, key, action).await?;
    }
    remove_finalizer(ctx, key, policy).await?;
    info!(pool = %key, "policy deleted: replica counts restored, finalizer removed");
    Ok(())
}

/// Publishes an event on the policy. `related` (a pod) is part of the
/// recorder's de-duplication key, so "leader changed to X" for a new X is
/// a new event rather than a repeat of the previous one.
async fn publish(
    ctx: &Context,
    policy: &LeaderPolicy,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: related,
    };
    if let Err(err) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        ctx.metrics.error("event");
        warn!(policy = %policy.name_any(), error = %err, "could not publish an event");
    }
}

/// Publishes a Warning event on a pool pod, where `kubectl describe pod`
/// shows it.
async fn publish_on_pod(
    ctx: &Context,
    pod: &ObjectReference,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, pod).await {
        ctx.metrics.error("event");
        warn!(pod = ?pod.name, error = %err, "could not publish an event");
    }
}

/// Event, log line and metrics for a change of leader.
async fn report_leader_change(
    ctx: &Context,
    key: &PoolKey,
    policy: &LeaderPolicy,
    next: &LeaderPolicyStatus,
) {
    let new = next
        .current_holder
        .as_ref()
        .map(|h| h.name.clone().unwrap_or_else(|| h.identity.clone()));
    let (old, gap) = ctx.with_memory(key, |m| {
        let old = match m.last_holder.take() {
            Some(old) => old,
            // First sight since start: what the status said.
            None => policy
                .status
                .as_ref()
                .and_then(|s| s.current_holder.as_ref())
                .map(|h| h.name.clone().unwrap_or_else(|| h.identity.clone())),
        };
        if m.leaderless_since.is_none() && new.is_none() {
            // Leaderless since the LeaderElected condition turned False.
            m.leaderless_since = policy
                .status
                .as_ref()
                .and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == crate::api::keys::conditions::LEADER_ELECTED)
                })
                .filter(|c| c.status == "False")
                .map(|c| SystemTime::from(c.last_transition_time.0))
                .or(Some(SystemTime::now()));
        }
        let gap = if new.is_some() {
            m.leaderless_since.take()
        } else {
            None
        };
        m.last_holder = Some(new.clone());
        (old, gap)
    });
    if old == new {
        return;
    }
    let gap = gap.and_then(|since| SystemTime::now().duration_since(since).ok());
    ctx.metrics.leader_changes.inc();
    if let (Some(gap), Some(_)) = (gap, &new) {
        ctx.metrics.failover_seconds.observe(gap.as_secs_f64());
    }
    let gap_text = match (&new, gap) {
        (None, _) => "the pool has no leader now".to_owned(),
        (Some(_), Some(g)) => format!("the pool was leaderless for {:.3}s", g.as_secs_f64()),
        (Some(_), None) => "no leaderless gap was observed".to_owned(),
    };
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "<none>".to_owned());
    info!(
        pool = %key,
        old_leader = %show(&old),
        new_leader = %show(&new),
        leaderless_seconds = gap.map(|g| g.as_secs_f64()),
        transitions = next.lease_transitions,
        "leader changed"
    );
    publish(
        ctx,
        policy,
        EventType::Normal,
        if new.is_some() {
            "LeaderElected"
        } else {
            "LeaderLost"
        },
        "Elect",
        format!(
            "leader changed from {} to {}; {gap_text}",
            show(&old),
            show(&new)
        ),
        new.as_ref()
            .or(old.as_ref())
            .map(|n| pod_ref(&key.namespace, n, None)),
    )
    .await;
}
