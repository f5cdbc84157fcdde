//! Pods that name a pool whose LeaderPolicy does not exist: the policy is
//! created with the defaults (`--create-missing-policies`), or their
//! workloads are told what to create.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::report::{self, controller_of, owning_workload, reference_name};
use crate::api::keys::{
    CANDIDATE_READINESS_GATE, CREATED_BY_ANNOTATION, CREATED_BY_CONTROLLER, FIELD_MANAGER,
};
use crate::api::{LeaderPolicy, LeaderPolicySpec};
use crate::controller::context::{Context, ReconcileError};
use crate::controller::decide::{self, MissingPolicy, PodView};
use crate::controller::queue::PoolKey;

/// `Ok(true)`: the policy was created (or appeared meanwhile); its watch
/// event brings the pool back.
pub async fn handle(
    ctx: &Context,
    key: &PoolKey,
    pods: &[Arc<Pod>],
    views: &[PodView],
) -> Result<bool, ReconcileError> {
    let plan = decide::missing_policy(views, ctx.create_missing_policies);
    if plan == MissingPolicy::Nothing {
        return Ok(false);
    }
    let workloads = workloads_of(ctx, pods, views).await;
    if plan == MissingPolicy::Report {
        report_missing(ctx, key, workloads).await;
        return Ok(false);
    }
    create(ctx, key, &workloads).await
}

/// The workloads of the live pods, by `Kind/name`: one lookup per
/// controlling owner, not per pod (a Deployment's pods share their
/// ReplicaSet).
async fn workloads_of(
    ctx: &Context,
    pods: &[Arc<Pod>],
    views: &[PodView],
) -> BTreeMap<String, ObjectReference> {
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
    let mut workloads = BTreeMap::new();
    for pod in owners.into_values() {
        let w = owning_workload(ctx, pod).await;
        workloads.insert(reference_name(&w), w);
    }
    workloads
}

/// Tells each workload, once per controller term, which policy to create.
async fn report_missing(
    ctx: &Context,
    key: &PoolKey,
    workloads: BTreeMap<String, ObjectReference>,
) {
    for (name, workload) in workloads {
        let first = ctx
            .missing_reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((key.clone(), name));
        if !first {
            continue;
        }
        report::on(
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

/// Creates the policy with the defaults and says so on the workloads and
/// the new policy.
async fn create(
    ctx: &Context,
    key: &PoolKey,
    workloads: &BTreeMap<String, ObjectReference>,
) -> Result<bool, ReconcileError> {
    let mut policy = LeaderPolicy::new(&key.name, LeaderPolicySpec::default());
    policy.metadata.namespace = Some(key.namespace.clone());
    policy.metadata.annotations = Some(BTreeMap::from([(
        CREATED_BY_ANNOTATION.to_owned(),
        CREATED_BY_CONTROLLER.to_owned(),
    )]));
    let api: Api<LeaderPolicy> = ctx.api(key);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let created = match api.create(&params, &policy).await {
        Ok(created) => created,
        // Someone (the user, another replica's term) was first: that one counts.
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(true),
        Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
            not_created(ctx, key, workloads, &e.message).await;
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
        report::on(
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
    report::on_policy(
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

/// Not transient (an invalid name, no RBAC): say so where the user looks.
async fn not_created(
    ctx: &Context,
    key: &PoolKey,
    workloads: &BTreeMap<String, ObjectReference>,
    message: &str,
) {
    warn!(pool = %key, error = %message, "could not create the pool's LeaderPolicy");
    for workload in workloads.values() {
        report::on(
            ctx,
            workload,
            EventType::Warning,
            "LeaderPolicyNotCreated",
            "CreatePolicy",
            format!(
                "zen-lead/pool names LeaderPolicy {:?}, which does not exist, and \
                 zen-lead could not create it: {message}; create it yourself",
                key.name
            ),
        )
        .await;
    }
}
