//! The server-side fencing policy and binding as shipped (`deploy/zen-lead.yaml`,
//! rendered from the chart and checked against it by tests/manifests.rs),
//! installed for a test and removed when the guard drops. Cluster-wide: a
//! test binary that installs it must take turns (a mutex) between its tests.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

/// The chart's default policy (and binding) name, which `zen-lead
/// controller` checks by default.
pub const POLICY_NAME: &str = "zen-lead-fencing";

/// The policy and binding of `deploy/zen-lead.yaml`.
pub fn rendered() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    (
        super::shipped("ValidatingAdmissionPolicy", POLICY_NAME),
        super::shipped("ValidatingAdmissionPolicyBinding", POLICY_NAME),
    )
}

/// Waits until LeaderPolicy `pool`'s `ServerSideFencing` condition has
/// `status` (and `reason`, when given).
pub async fn wait_condition(
    client: &Client,
    ns: &str,
    pool: &str,
    status: &str,
    reason: Option<&str>,
) {
    let policies: Api<zen_lead::api::LeaderPolicy> = Api::namespaced(client.clone(), ns);
    let what = format!(
        "ServerSideFencing {status}/{}",
        reason.unwrap_or("any reason")
    );
    super::eventually(&what, Duration::from_secs(60), || async {
        let p = policies.get(pool).await.map_err(|e| e.to_string())?;
        let c = p
            .status
            .and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == zen_lead::api::keys::conditions::SERVER_SIDE_FENCING)
            })
            .ok_or_else(|| "no ServerSideFencing condition".to_owned())?;
        (c.status == status && reason.is_none_or(|r| c.reason == r))
            .then_some(())
            .ok_or_else(|| format!("{}/{}: {}", c.status, c.reason, c.message))
    })
    .await;
}

/// Waits for the API server's type check of ValidatingAdmissionPolicy
/// `name` and fails on any warning (a warning there means a typo in a rule).
pub async fn assert_type_checked(policies: &Api<ValidatingAdmissionPolicy>, name: &str) {
    let checked = super::eventually(
        &format!("the type check of ValidatingAdmissionPolicy {name}"),
        Duration::from_secs(60),
        || async {
            let p = policies.get(name).await.map_err(|e| e.to_string())?;
            p.status
                .and_then(|s| s.type_checking)
                .ok_or_else(|| "not type-checked yet".to_owned())
        },
    )
    .await;
    let warnings = checked.expression_warnings.unwrap_or_default();
    assert!(
        warnings.is_empty(),
        "ValidatingAdmissionPolicy {name}'s CEL has type warnings: {warnings:?}"
    );
}

/// An installed policy and its binding (of one name); removed when dropped.
pub struct Installed(pub &'static str);

/// Applies the fencing policy and binding and waits for the API server's
/// type check (a warning there means a typo in the rule).
pub async fn install(client: &Client) -> Installed {
    install_shipped(client, POLICY_NAME).await
}

/// Applies the ValidatingAdmissionPolicy `name` and its binding as
/// `deploy/zen-lead.yaml` ships them, and waits for the type check.
pub async fn install_shipped(client: &Client, name: &'static str) -> Installed {
    let policy: ValidatingAdmissionPolicy = super::shipped("ValidatingAdmissionPolicy", name);
    let binding: ValidatingAdmissionPolicyBinding =
        super::shipped("ValidatingAdmissionPolicyBinding", name);
    let pp = PatchParams::apply("zen-lead-tests").force();
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    policies
        .patch(name, &pp, &Patch::Apply(&policy))
        .await
        .unwrap_or_else(|e| panic!("apply ValidatingAdmissionPolicy {name}: {e}"));
    bindings
        .patch(name, &pp, &Patch::Apply(&binding))
        .await
        .unwrap_or_else(|e| panic!("apply ValidatingAdmissionPolicyBinding {name}: {e}"));
    assert_type_checked(&policies, name).await;
    Installed(name)
}

impl Drop for Installed {
    fn drop(&mut self) {
        let name = self.0;
        super::cleanup_on_drop(move |client| async move {
            let dp = DeleteParams::default();
            let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
            let policies: Api<ValidatingAdmissionPolicy> = Api::all(client);
            let _ = bindings.delete(name, &dp).await;
            let _ = policies.delete(name, &dp).await;
        });
    }
}
