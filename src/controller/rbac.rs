//! RBAC for candidates: one Role and RoleBinding per ServiceAccount that pool
//! pods run as, granting exactly the Leases of the pools that account's pods
//! are candidates in (`resourceNames`), nothing else.
//!
//! Why per account and not per pool: a namespace with many pools sharing one
//! account (the common `default`) would otherwise cost two objects, and two
//! writes, per pool. Writes for one account are coalesced: while one is in
//! flight, other pools' reconciles only record what they need, and the
//! writer, seeing the grant's version moved, goes round again (after a short
//! pause, so a burst of new pools costs a few writes) with everything
//! recorded by then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use serde_json::json;

use super::api_error::{ReconcileError, api_err, create_or_apply, is_status};
use super::queue::PoolKey;

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

#[derive(Debug, Default)]
struct AccountState {
    /// The [`Wanted::version`] of the last successful write (`None`: not
    /// written since this process started), and whether it granted any pool.
    written: Option<(u64, bool)>,
    /// A write is in flight (its writer goes round again if the version
    /// moves meanwhile).
    busy: bool,
}

/// The pools an account's candidates need, and a version that changes with
/// them. Every pass of every pool asks whether its accounts are up to date;
/// comparing versions keeps that O(1) where comparing (or cloning) the set
/// cost O(pools sharing the account), quadratic over a namespace of pools
/// that share one account.
#[derive(Debug, Default)]
struct Wanted {
    pools: BTreeSet<String>,
    version: u64,
}

#[derive(Debug, Default)]
struct State {
    /// (namespace, account) -> pools whose live candidates run as it.
    wanted: HashMap<(String, String), Wanted>,
    /// Pool -> accounts it was last recorded with.
    pools: HashMap<PoolKey, BTreeSet<String>>,
    accounts: HashMap<(String, String), AccountState>,
}

impl State {
    fn version(&self, key: &(String, String)) -> u64 {
        self.wanted.get(key).map_or(0, |w| w.version)
    }
}

/// Who needs which Leases, and what was written: shared by the workers.
#[derive(Debug, Default)]
pub struct Writer {
    state: Mutex<State>,
}

/// Pause between two writes of one account's Role, so that the reconciles
/// of a burst of new pools share writes.
const COALESCE: Duration = Duration::from_millis(100);

impl Writer {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records that `key`'s live candidates run as `accounts` (empty: the
    /// pool is gone); returns every account whose grant that may change.
    fn record(&self, key: &PoolKey, accounts: &[String]) -> BTreeSet<String> {
        self.with(|st| {
            let now: BTreeSet<String> = accounts.iter().cloned().collect();
            let before = st
                .pools
                .insert(key.clone(), now.clone())
                .unwrap_or_default();
            for gone in before.difference(&now) {
                if let Some(w) = st.wanted.get_mut(&(key.namespace.clone(), gone.clone()))
                    && w.pools.remove(&key.name)
                {
                    w.version += 1;
                }
            }
            for account in &now {
                let w = st
                    .wanted
                    .entry((key.namespace.clone(), account.clone()))
                    .or_default();
                if w.pools.insert(key.name.clone()) {
                    w.version += 1;
                }
            }
            before.union(&now).cloned().collect()
        })
    }

    /// Claims `account` for a write: its grant moved since the last write
    /// and no write is in flight.
    fn claim(&self, ns: &str, account: &str) -> bool {
        let key = (ns.to_owned(), account.to_owned());
        self.with(|st| {
            let version = st.version(&key);
            let acct = st.accounts.entry(key).or_default();
            if acct.busy || acct.written.map(|(v, _)| v) == Some(version) {
                return false;
            }
            acct.busy = true;
            true
        })
    }

    /// What the claimed writer writes: the grant's version and pools, and
    /// whether the last write granted any pool (`None`: none yet).
    fn to_write(&self, ns: &str, account: &str) -> (u64, BTreeSet<String>, Option<bool>) {
        let key = (ns.to_owned(), account.to_owned());
        self.with(|st| {
            let granted_before = st
                .accounts
                .get(&key)
                .and_then(|a| a.written.map(|(_, any)| any));
            let (version, pools) = st
                .wanted
                .get(&key)
                .map_or((0, BTreeSet::new()), |w| (w.version, w.pools.clone()));
            (version, pools, granted_before)
        })
    }

    /// Records a successful write of `version`. Releases the claim, unless
    /// the grant moved meanwhile: then `true`, write again.
    fn written(&self, ns: &str, account: &str, version: u64, any: bool) -> bool {
        let key = (ns.to_owned(), account.to_owned());
        self.with(|st| {
            let again = st.version(&key) != version;
            let acct = st.accounts.entry(key).or_default();
            acct.written = Some((version, any));
            acct.busy = again;
            again
        })
    }

    /// Releases the claim after a failed write (the next pass claims again).
    fn release(&self, ns: &str, account: &str) {
        self.with(|st| {
            if let Some(acct) = st.accounts.get_mut(&(ns.to_owned(), account.to_owned())) {
                acct.busy = false;
            }
        });
    }
}

/// Brings the RBAC of every account that `pool`'s live candidates use (none
/// when the pool's policy is gone), or used before, up to date.
pub async fn sync_pool(
    client: &Client,
    rbac: &Writer,
    key: &PoolKey,
    accounts: &[String],
) -> Result<(), ReconcileError> {
    for account in rbac.record(key, accounts) {
        sync_account(client, rbac, &key.namespace, &account).await?;
    }
    Ok(())
}

async fn sync_account(
    client: &Client,
    rbac: &Writer,
    ns: &str,
    account: &str,
) -> Result<(), ReconcileError> {
    if !rbac.claim(ns, account) {
        return Ok(());
    }
    loop {
        let (version, pools, granted_before) = rbac.to_write(ns, account);
        if let Err(err) = write(client, ns, account, &pools, granted_before).await {
            rbac.release(ns, account);
            return Err(err);
        }
        // Pools recorded while writing are ours to write: go round again.
        if !rbac.written(ns, account, version, !pools.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// Writes `pools` as `account`'s grant. `granted_before`: whether the last
/// grant this process wrote named any pool (`None`: nothing written yet, so
/// the objects may or may not exist).
async fn write(
    client: &Client,
    ns: &str,
    account: &str,
    pools: &BTreeSet<String>,
    granted_before: Option<bool>,
) -> Result<(), ReconcileError> {
    let name = rbac_name(account);
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    if pools.is_empty() {
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
    let (role, binding) = objects(ns, account, pools);
    match granted_before {
        // Both exist as this process wrote them: only the Role's rule
        // changes, and a merge patch of it is the cheapest write there is.
        Some(true) => {
            let patch = json!({ "rules": role.rules });
            match roles
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                // Deleted behind our back: create both again.
                Err(err) if is_status(&err, 404) => {
                    create_or_apply(&roles, true, &role, "Role", ns, &name).await?;
                    create_or_apply(&bindings, true, &binding, "RoleBinding", ns, &name).await
                }
                Err(err) => Err(api_err("update", "Role", ns, &name)(err)),
            }
        }
        _ => {
            create_or_apply(&roles, true, &role, "Role", ns, &name).await?;
            create_or_apply(&bindings, true, &binding, "RoleBinding", ns, &name).await
        }
    }
}

/// Pure: the Role and RoleBinding granting `account` the Leases `pools`.
/// No owner references: they would change with every pool; the controller
/// deletes both when no pool needs them.
pub fn objects(ns: &str, account: &str, pools: &BTreeSet<String>) -> (Role, RoleBinding) {
    let name = rbac_name(account);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns.to_owned()),
        labels: Some(BTreeMap::from([(
            MANAGED_LABEL.to_owned(),
            "zen-lead".to_owned(),
        )])),
        ..ObjectMeta::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".to_owned()]),
            resources: Some(vec!["leases".to_owned()]),
            resource_names: Some(pools.iter().cloned().collect()),
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
        let pools = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let (role, binding) = objects("ns", "default", &pools);
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
    }

    #[test]
    fn a_write_is_claimed_only_when_the_grant_moved_and_goes_round_for_pools_recorded_meanwhile() {
        let w = Writer::default();
        let key = |n: &str| PoolKey::new("ns", n);
        let accounts = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let set = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(
            w.record(&key("a"), &accounts(&["default"])),
            set(&["default"])
        );
        assert!(w.claim("ns", "default"));
        // Another pass while the write is in flight leaves it to the writer.
        assert!(!w.claim("ns", "default"));
        let (v1, pools, before) = w.to_write("ns", "default");
        assert_eq!((pools, before), (set(&["a"]), None));
        // Pool b recorded while writing: the writer goes round again...
        w.record(&key("b"), &accounts(&["default"]));
        assert!(w.written("ns", "default", v1, true));
        let (v2, pools, before) = w.to_write("ns", "default");
        assert_eq!((pools, before), (set(&["a", "b"]), Some(true)));
        // ...and then lets go.
        assert!(!w.written("ns", "default", v2, true));
        // The same pool again with the same account: nothing to write.
        w.record(&key("a"), &accounts(&["default"]));
        assert!(!w.claim("ns", "default"));
        // Pool a moves to another account: both grants move.
        assert_eq!(
            w.record(&key("a"), &accounts(&["worker"])),
            set(&["default", "worker"])
        );
        assert!(w.claim("ns", "default") && w.claim("ns", "worker"));
        assert_eq!(w.to_write("ns", "default").1, set(&["b"]));
        assert_eq!(w.to_write("ns", "worker").1, set(&["a"]));
        // A failed write lets go; the next pass claims again.
        w.release("ns", "default");
        assert!(w.claim("ns", "default"));
        // A pool that is gone leaves its accounts.
        w.record(&key("b"), &[]);
        assert!(w.to_write("ns", "default").1.is_empty());
        // Another namespace's account of the same name is another grant.
        assert_eq!(w.to_write("other", "default").0, 0);
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
