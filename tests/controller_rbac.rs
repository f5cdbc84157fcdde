//! The controller's RBAC blast radius (issue 30, finding 7) on the local
//! cluster: the chart's controller RBAC guard (templates/controller-rbac-guard.yaml,
//! as deploy/zen-lead.yaml ships it) lets the controller's ServiceAccount
//! write only the zen-lead-candidate-* Roles and RoleBindings it makes, of
//! exactly their shape, whatever its ClusterRole allows. The writes are sent
//! as that ServiceAccount (impersonated), holding in the test's namespace the
//! rights the chart's ClusterRole gives it everywhere, so any refusal seen is
//! the guard's, not RBAC's.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use zen_lead::controller::rbac::objects;

use common::fencing::install_shipped;
use common::{client, eventually, kubeconfig_path, outcome, shipped, with_namespace};

const GUARD: &str = "zen-lead-controller-rbac";
const REFUSAL: &str = "zen-lead controller RBAC guard";

/// The controller's user name, as the shipped guard names it (the chart's
/// ServiceAccount in the release's namespace).
fn controller_user() -> String {
    let policy: ValidatingAdmissionPolicy = shipped("ValidatingAdmissionPolicy", GUARD);
    let conditions = policy
        .spec
        .and_then(|s| s.match_conditions)
        .unwrap_or_default();
    let expression = &conditions
        .first()
        .expect("the guard's match condition")
        .expression;
    let user = expression
        .split('\'')
        .nth(1)
        .unwrap_or_else(|| panic!("no quoted user name in {expression:?}"));
    assert!(
        user.starts_with("system:serviceaccount:"),
        "the guard should match a ServiceAccount: {user}"
    );
    user.to_owned()
}

/// A client that acts as `user`, a ServiceAccount.
async fn impersonating(user: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".to_owned(),
        "system:authenticated".to_owned(),
    ]);
    Client::try_from(config).expect("client")
}

/// What the chart's ClusterRole lets the controller do with RBAC, here:
/// every verb on Roles and RoleBindings, and the Lease rights it passes on.
async fn grant_controller_rights(client: &Client, ns: &str, user: &str) {
    let role: Role = common::from_json(json!({
        "metadata": {"name": "as-the-chart-grants"},
        "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        ],
    }));
    let binding: RoleBinding = common::from_json(json!({
        "metadata": {"name": "as-the-chart-grants"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "as-the-chart-grants"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }));
    let pp = PostParams::default();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&pp, &role)
        .await
        .unwrap_or_else(|e| panic!("create Role: {e}"));
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&pp, &binding)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding: {e}"));
}

fn assert_guarded(result: Result<(), (u16, String)>, what: &str) {
    match result {
        Ok(()) => panic!("{what}: admitted"),
        Err((code, message)) => {
            assert_eq!(code, 403, "{what}: {message}");
            assert!(
                message.contains(REFUSAL),
                "{what}: the refusal should name the guard: {message}"
            );
        }
    }
}

async fn admin_roles_delete(admin: &Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    Api::<Role>::namespaced(admin.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_controllers_account_writes_only_candidate_rbac_of_its_shape() {
    let admin = client().await;
    let _guard = install_shipped(&admin, GUARD).await;
    with_namespace(&admin, "rbac-guard", |admin, ns| async move {
        let user = controller_user();
        grant_controller_rights(&admin, &ns, &user).await;
        let controller = impersonating(&user).await;
        let roles: Api<Role> = Api::namespaced(controller.clone(), &ns);
        let bindings: Api<RoleBinding> = Api::namespaced(controller.clone(), &ns);
        let pp = PostParams::default();
        // What the controller writes passes (RBAC may take a moment to
        // show the grant).
        let (role, binding) = objects(&ns, "app", &BTreeSet::from(["web".to_owned()]));
        eventually(
            "the controller's own Role admitted",
            Duration::from_secs(30),
            || async { outcome(roles.create(&pp, &role).await).map_err(|e| format!("{e:?}")) },
        )
        .await;
        outcome(bindings.create(&pp, &binding).await).expect("its RoleBinding");
        let name = role.name_any();
        let rules = json!({"rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": ["web", "api"], "verbs": ["get", "list", "watch", "update", "patch"]}]});
        outcome(
            roles
                .patch(&name, &PatchParams::default(), &Patch::Merge(&rules))
                .await,
        )
        .expect("its rule, another pool added");

        let role_of = |name: &str, rules: serde_json::Value| -> Role {
            common::from_json(json!({"metadata": {"name": name}, "rules": rules}))
        };
        // The API server acts on a new binding a moment after storing it.
        let probe = role_of("guard-probe", json!([]));
        eventually("the guard in effect", Duration::from_secs(30), || async {
            match outcome(roles.create(&pp, &probe).await) {
                Err((403, m)) if m.contains(REFUSAL) => Ok(()),
                Ok(()) => {
                    let _ = admin_roles_delete(&admin, &ns, "guard-probe").await;
                    Err("admitted".to_owned())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let lease_rule = json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": ["web"], "verbs": ["get", "list", "watch", "update", "patch"]});
        let secrets = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]});
        for (role, what) in [
            (role_of("escalate", json!([secrets])), "a Role of another name"),
            (
                role_of("zen-lead-candidate-x", json!([lease_rule, secrets])),
                "a candidate Role with a second rule",
            ),
            (
                role_of(
                    "zen-lead-candidate-y",
                    json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                            "verbs": ["get", "list", "watch", "update", "patch"]}]),
                ),
                "a candidate Role on every Lease",
            ),
        ] {
            assert_guarded(outcome(roles.create(&pp, &role).await), what);
        }
        assert_guarded(
            outcome(
                roles
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"rules": [lease_rule, secrets]})),
                    )
                    .await,
            ),
            "widening the controller's own Role",
        );
        let binding_of = |name: &str, role_ref: serde_json::Value, subject: serde_json::Value| {
            common::from_json::<RoleBinding>(json!({
                "metadata": {"name": name}, "roleRef": role_ref, "subjects": [subject]}))
        };
        // RBAC's own escalation check refuses bindings to rights the
        // controller does not hold; these bind only what it holds, so what
        // refuses them is the guard.
        let held = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                          "name": "as-the-chart-grants"});
        let sa = json!({"kind": "ServiceAccount", "name": "app", "namespace": ns});
        for (binding, what) in [
            (
                binding_of("zen-lead-candidate-z", held.clone(), sa.clone()),
                "a candidate RoleBinding to a Role of another name",
            ),
            (
                binding_of("mine-now", held, sa),
                "a RoleBinding of another name",
            ),
        ] {
            assert_guarded(outcome(bindings.create(&pp, &binding).await), what);
        }
        for (subject, what) in [
            (
                json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}),
                "the controller's RoleBinding given to a user",
            ),
            (
                json!({"kind": "ServiceAccount", "name": "app", "namespace": "kube-system"}),
                "the controller's RoleBinding given to another namespace's account",
            ),
        ] {
            let patch = json!({"subjects": [subject]});
            assert_guarded(
                outcome(
                    bindings
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await,
                ),
                what,
            );
        }
        assert_guarded(
            outcome(
                roles
                    .delete("as-the-chart-grants", &DeleteParams::default())
                    .await,
            ),
            "deleting a Role that is not the controller's",
        );
        // Its own objects it may delete; anyone else is not held.
        outcome(bindings.delete(&name, &DeleteParams::default()).await).expect("delete its own");
        outcome(roles.delete(&name, &DeleteParams::default()).await).expect("delete its own");
        let admin_roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
        outcome(
            admin_roles
                .create(&pp, &role_of("escalate", json!([secrets])))
                .await,
        )
        .expect("an administrator's Role is not the guard's business");
    })
    .await;
}
