//! Server-side fencing: which pools the API server fences, and whether the
//! cluster has what it takes. The fence itself is the chart's
//! ValidatingAdmissionPolicy (`templates/fencing.yaml`); the controller's part
//! is to mark a fenced pool's Lease as a parameter of that policy and list
//! the pool's pods on it (see [`crate::controller::pool::lease::conform`]).

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::{Api, Client};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

pub use super::decide::fencing::{FencingState, members, state};
use crate::api::LeaderPolicy;

/// The controller's fencing settings (`--server-side-fencing`,
/// `--fencing-policy-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencingSettings {
    /// Fence pools whose policy leaves `serverSideFencing` unset.
    pub default_on: bool,
    /// Name of the ValidatingAdmissionPolicy and of its binding.
    pub policy_name: String,
}

/// How long an answer about the installed policy is trusted: installing or
/// removing the chart's policy shows in pool statuses within this.
const RECHECK: Duration = Duration::from_secs(30);

/// The settings plus a cached answer to "is the fencing policy installed?".
pub struct Fencing {
    pub settings: FencingSettings,
    /// Held across the read, so workers that find the answer stale together
    /// wait for one read instead of each sending their own.
    checked: Mutex<Option<(Instant, bool)>>,
}

impl Fencing {
    pub fn new(settings: FencingSettings) -> Self {
        Self {
            settings,
            checked: Mutex::const_new(None),
        }
    }

    /// The pool's state; reads the API server at most every [`RECHECK`],
    /// and only when some pool wants fencing.
    pub async fn state(&self, client: &Client, policy: &LeaderPolicy) -> FencingState {
        let wanted = state(policy, self.settings.default_on, true);
        if !wanted.fenced() {
            return wanted;
        }
        state(
            policy,
            self.settings.default_on,
            self.installed(client).await,
        )
    }

    async fn installed(&self, client: &Client) -> bool {
        let mut slot = self.checked.lock().await;
        if let Some((at, installed)) = *slot
            && at.elapsed() < RECHECK
        {
            return installed;
        }
        let installed = self.read(client).await;
        if slot.map(|(_, was)| was) != Some(installed) {
            if installed {
                info!(policy = %self.settings.policy_name, "the fencing ValidatingAdmissionPolicy and its binding are installed: api and process pools are fenced on the server");
            } else {
                warn!(policy = %self.settings.policy_name, "the fencing ValidatingAdmissionPolicy or its binding is missing (install the chart with fencing.serverSide=true, or apply deploy/): pools are not fenced on the server");
            }
        }
        *slot = Some((Instant::now(), installed));
        installed
    }

    /// Both objects exist. An error other than "not found" (no RBAC, an
    /// API server without the API) counts as missing: a pool is called
    /// fenced only when it is.
    async fn read(&self, client: &Client) -> bool {
        let name = &self.settings.policy_name;
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        let (policy, binding) = tokio::join!(policies.get_opt(name), bindings.get_opt(name));
        match (policy, binding) {
            (Ok(Some(_)), Ok(Some(_))) => true,
            (Err(err), _) | (_, Err(err)) => {
                warn!(policy = %name, error = %err, "could not read the fencing policy");
                false
            }
            _ => false,
        }
    }
}
