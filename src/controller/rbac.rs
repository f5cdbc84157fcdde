//! RBAC for candidates: one Role and RoleBinding per ServiceAccount that pool
//! pods run as, granting exactly the Leases of the pools that account's pods
//! are candidates in (`resourceNames`), nothing else.
//!
//! Why per account and not per pool: a namespace with many pools sharing one
//! account (the common `default`) would otherwise cost two objects, and two
//! writes, per pool. Writes for one account are coalesced: while one is in
//! flight, other pools' reconciles only mark the account dirty, and the
//! writer goes round again with everything the cache shows by then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta};
use kube::{Resource, ResourceExt};

use super::cache::Cache;
use super::decide::{self, PodView};
use super::queue::PoolKey;
use super::reconcile::{Context, ReconcileError, api_err, create_or_apply, is_status};
use crate::api::LeaderPolicy;

/// Verbs candidates get on their Leases. `list` is needed because the agent
/// lists with `metadata.name=<lease>` before watching, which RBAC matches
/// against resourceNames.
pub const CANDIDATE_VERBS: &[&str] = &["get", "list", "watch", "update", "patch"];

/// Label on the Roles and RoleBindings zen-lead manages for candidates.
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";

/// Name of the Role and RoleBinding for `account`'s candidates. Names longer
/// than Kubernetes allows are cut and made unique by a hash of the account.
pub fn rbac_name(account: &str) -> String {
    const PREFIX: &str = "zen-lead-candidate-";
    let name = format!("{PREFIX}{account}");
    if name.len() <= 253 {
        return name;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, account.as_bytes());
    let hash: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{PREFIX}{}-{hash}", &account[..253 - PREFIX.len() - 13])
}

/// What is granted to one account, as last written (or to be written).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// Pools (= Lease names) the account's candidates may use.
    pub pools: BTreeSet<String>,
    /// The policies of those pools, as owners: the objects go with the last.
    pub owners: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct AccountState {
    written: Option<Grant>,
    busy: bool,
    dirty: bool,
}

/// Per-(namespace, account) write state, shared by the workers.
#[derive(Debug, Default)]
pub struct Writer {
    accounts: Mutex<HashMap<(String, String), AccountState>>,
}

impl Writer {
    fn with<T>(&self, ns: &str, account: &str, f: impl FnOnce(&mut AccountState) -> T) -> T {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry((ns.to_owned(), account.to_owned())).or_default())
    }

    /// Accounts in `ns` whose last written grant includes `pool`.
    fn accounts_granting(&self, ns: &str, pool: &str) -> Vec<String> {
        let map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|((n, _), st)| {
                n == ns && st.written.as_ref().is_some_and(|g| g.pools.contains(pool))
            })
            .map(|((_, a), _)| a.clone())
            .collect()
    }
}

/// The grant `account` in `ns` needs now, from the caches: every pool with a
/// live (not deleting) policy that has a running candidate using it.
fn desired(cache: &Cache, ns: &str, account: &str) -> Grant {
    let mut grant = Grant::default();
    for key in cache.all_pools().into_iter().filter(|k| k.namespace == ns) {
        let Some(policy) = cache
            .policy(&key)
            .filter(|p| p.meta().deletion_timestamp.is_none())
        else {
            continue;
        };
        let views: Vec<PodView> = cache
            .pods_of(&key)
            .iter()
            .map(|p| PodView::from_pod(p, policy.spec.identity_strategy))
            .collect();
        if decide::service_accounts(&views)
            .iter()
            .any(|a| a == account)
        {
            grant.pools.insert(key.name.clone());
            grant
                .owners
                .push((policy.name_any(), policy.uid().unwrap_or_default()));
        }
    }
    grant.owners.sort();
    grant
}

/// Brings the RBAC of every account that `pool`'s candidates use, or that
/// was granted `pool` before, up to date.
pub async fn sync_pool(
    ctx: &Context,
    key: &PoolKey,
    accounts: &[String],
) -> Result<(), ReconcileError> {
    let mut all: BTreeSet<String> = accounts.iter().cloned().collect();
    all.extend(ctx.rbac.accounts_granting(&key.namespace, &key.name));
    for account in all {
        sync_account(ctx, &key.namespace, &account).await?;
    }
    Ok(())
}

async fn sync_account(ctx: &Context, ns: &str, account: &str) -> Result<(), ReconcileError> {
    let want = desired(&ctx.cache, ns, account);
    let claimed = ctx.rbac.with(ns, account, |st| {
        if st.busy {
            // The writer in flight goes round again and sees this change.
            st.dirty = true;
            return false;
        }
        if st.written.as_ref() == Some(&want) {
            return false;
        }
        st.busy = true;
        true
    });
    if !claimed {
        return Ok(());
    }
    let mut want = want;
    let result = 'write: loop {
        let first = ctx.rbac.with(ns, account, |st| st.written.is_none());
        if let Err(err) = write(ctx, ns, account, &want, first).await {
            break Err(err);
        }
        ctx.rbac
            .with(ns, account, |st| st.written = Some(want.clone()));
        // Look again before letting go: changes that arrived while writing
        // (their reconciles only marked the account dirty) are ours to write.
        loop {
            let next = desired(&ctx.cache, ns, account);
            let step = ctx.rbac.with(ns, account, |st| {
                if next != want {
                    Step::Write
                } else if st.dirty {
                    st.dirty = false;
                    Step::Recheck
                } else {
                    st.busy = false;
                    Step::Done
                }
            });
            match step {
                Step::Write => {
                    want = next;
                    continue 'write;
                }
                Step::Recheck => continue,
                Step::Done => break 'write Ok(()),
            }
        }
    };
    if result.is_err() {
        ctx.rbac.with(ns, account, |st| st.busy = false);
    }
    result
}

enum Step {
    Write,
    Recheck,
    Done,
}

async fn write(
    ctx: &Context,
    ns: &str,
    account: &str,
    grant: &Grant,
    first: bool,
) -> Result<(), ReconcileError> {
    let name = rbac_name(account);
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), ns);
    if grant.pools.is_empty() {
        // Nobody left to grant: remove both (404: already gone).
        for result in [
            bindings
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ()),
            roles
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ()),
        ] {
            match result {
                Ok(()) => {}
                Err(err) if is_status(&err, 404) => {}
                Err(err) => return Err(api_err("delete", "Role", ns, &name)(err)),
            }
        }
        return Ok(());
    }
    let (role, binding) = objects(ns, account, grant);
    create_or_apply(&roles, first, &role, "Role", ns, &name).await?;
    create_or_apply(&bindings, first, &binding, "RoleBinding", ns, &name).await
}

/// Pure: the Role and RoleBinding for `account`'s grant.
pub fn objects(ns: &str, account: &str, grant: &Grant) -> (Role, RoleBinding) {
    let name = rbac_name(account);
    let owners = grant
        .owners
        .iter()
        .map(|(policy, uid)| OwnerReference {
            api_version: LeaderPolicy::api_version(&()).into_owned(),
            kind: LeaderPolicy::kind(&()).into_owned(),
            name: policy.clone(),
            uid: uid.clone(),
            controller: None,
            block_owner_deletion: None,
        })
        .collect();
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns.to_owned()),
        labels: Some(BTreeMap::from([(
            MANAGED_LABEL.to_owned(),
            "zen-lead".to_owned(),
        )])),
        owner_references: Some(owners),
        ..ObjectMeta::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".to_owned()]),
            resources: Some(vec!["leases".to_owned()]),
            resource_names: Some(grant.pools.iter().cloned().collect()),
            verbs: CANDIDATE_VERBS.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: account.to_owned(),
            namespace: Some(ns.to_owned()),
            ..Subject::default()
        }]),
    };
    (role, binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_grant_only_the_named_leases_to_only_the_account() {
        let grant = Grant {
            pools: BTreeSet::from(["a".to_owned(), "b".to_owned()]),
            owners: vec![
                ("a".to_owned(), "u1".to_owned()),
                ("b".to_owned(), "u2".to_owned()),
            ],
        };
        let (role, binding) = objects("ns", "default", &grant);
        let rules = role.rules.unwrap_or_default();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resource_names.clone().unwrap_or_default(),
            vec!["a", "b"]
        );
        assert_eq!(
            rules[0].resources.clone().unwrap_or_default(),
            vec!["leases"]
        );
        assert!(
            !rules[0]
                .verbs
                .iter()
                .any(|v| v == "*" || v == "create" || v == "delete")
        );
        let subjects = binding.subjects.unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (subjects[0].kind.as_str(), subjects[0].name.as_str()),
            ("ServiceAccount", "default")
        );
        assert_eq!(binding.role_ref.name, "zen-lead-candidate-default");
        assert_eq!(role.metadata.owner_references.map(|o| o.len()), Some(2));
    }

    #[test]
    fn long_account_names_make_valid_unique_names() {
        let a = "a".repeat(250);
        let mut b = a.clone();
        b.push('b');
        let (na, nb) = (rbac_name(&a), rbac_name(&b));
        assert!(na.len() <= 253 && nb.len() <= 253);
        assert_ne!(na, nb);
        assert_eq!(rbac_name("x"), "zen-lead-candidate-x");
    }
}
