//! Server-side fencing: which pools the API server fences, and whether the
//! cluster has what it takes. The fence itself is the chart's
//! ValidatingAdmissionPolicy (`templates/fencing.yaml`); the controller's part
//! is to mark a fenced pool's Lease as a parameter of that policy and list
//! the pool's pods on it (see [`crate::controller::pool::lease::conform`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::PostParams;
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use super::decide::fencing::{ABSENT_TO_CONFIRM, PolicyPresence, PolicyRead};
pub use super::decide::fencing::{FencingState, members, state};
use super::decide::fencing_scope::{self, Scope};
use crate::api::LeaderPolicy;

/// The controller's fencing settings (`--server-side-fencing`,
/// `--fencing-policy-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencingSettings {
    /// Fence pools whose policy leaves `serverSideFencing` unset.
    pub default_on: bool,
    /// Name of the ValidatingAdmissionPolicy and of its binding.
    pub policy_name: String,
    /// How often the binding's namespace scope is set to the namespaces
    /// with fenced pools (`--fencing-scope-interval`).
    pub scope_interval: Duration,
    /// How long a namespace a pool pass asked for stays covered without a
    /// fenced Lease in the cache (`--fencing-scope-grace`).
    pub scope_grace: Duration,
    /// The one namespace the controller watches (`--watch-namespace`), whose
    /// scope alone it may drop; `None`: every namespace.
    pub watch_namespace: Option<String>,
}

/// How long a settled answer about the installed policy is trusted:
/// installing the chart's policy shows in pool statuses within this.
const RECHECK: Duration = Duration::from_secs(30);

/// How soon an unsettled answer is read again (confirming an absence, or
/// after a failed read): removing the policy shows within
/// RECHECK + (ABSENT_TO_CONFIRM - 1) x CONFIRM.
const CONFIRM: Duration = Duration::from_secs(5);

/// A read that takes longer counts as failed. Every pool pass waits for
/// the read that refreshes the answer, so it must not hang for the client's
/// own timeout during a brownout.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings plus the belief about "is the fencing policy installed?".
pub struct Fencing {
    pub settings: FencingSettings,
    /// Failed reads of the policy or its binding
    /// (`zen_lead_controller_fencing_policy_read_errors_total`).
    read_errors: Counter,
    read_timeout: Duration,
    /// Held across the read, so workers that find the answer stale together
    /// wait for one read instead of each sending their own.
    checked: Mutex<Checked>,
    /// Failed reads or writes of the binding's scope
    /// (`zen_lead_controller_fencing_scope_errors_total`).
    scope_errors: Counter,
    /// Held across a scope change, so a widening and a sweep never race.
    scope: Mutex<ScopeState>,
}

#[derive(Default)]
struct ScopeState {
    /// What the binding covered after the last read or write; `None` when
    /// unknown (then the next pass reads it).
    known: Option<Scope>,
    /// Namespaces pool passes asked to cover, and when last.
    asked: HashMap<String, Instant>,
}

#[derive(Default)]
struct Checked {
    /// When the API server was last asked; `None` before the first read.
    at: Option<Instant>,
    presence: PolicyPresence,
}

impl Fencing {
    pub fn new(settings: FencingSettings, read_errors: Counter, scope_errors: Counter) -> Self {
        Self {
            settings,
            read_errors,
            read_timeout: READ_TIMEOUT,
            checked: Mutex::const_new(Checked::default()),
            scope_errors,
            scope: Mutex::const_new(ScopeState::default()),
        }
    }

    /// Makes the binding cover `namespace` before a pool there is marked
    /// fenced. False when that could not be confirmed (the pass says so in
    /// the pool's status, and marks the Lease anyway: the next sweep or pass
    /// widens the binding). A missing binding counts as covered: whether it
    /// is installed is [`Self::state`]'s question.
    pub async fn cover(&self, client: &Client, namespace: &str) -> bool {
        let mut slot = self.scope.lock().await;
        slot.asked.insert(namespace.to_owned(), Instant::now());
        if slot.known.as_ref().is_some_and(|k| k.covers(namespace)) {
            return true;
        }
        let result = self
            .set_scope(client, |scope| fencing_scope::widened(scope, namespace))
            .await;
        match result {
            Ok(scope) => {
                let covered = scope.as_ref().is_none_or(|s| s.covers(namespace));
                slot.known = scope;
                covered
            }
            Err(err) => {
                self.scope_errors.inc();
                warn!(binding = %self.settings.policy_name, %namespace, error = %err, "could not add the namespace to the fencing binding's namespaceSelector; retrying on the next pass");
                false
            }
        }
    }

    /// Sets the binding's scope to the namespaces with a fenced Lease
    /// (`fenced`, from the synced cache) plus those asked for within the
    /// grace. A failure leaves the binding as it was.
    pub async fn sweep(&self, client: &Client, fenced: &BTreeSet<String>) {
        let mut slot = self.scope.lock().await;
        let now = Instant::now();
        let grace = self.settings.scope_grace;
        slot.asked
            .retain(|_, at| now.saturating_duration_since(*at) < grace);
        let want =
            fencing_scope::wanted(fenced.iter().map(String::as_str), &slot.asked, now, grace);
        match self
            .set_scope(client, |scope| {
                fencing_scope::swept(scope, &want, self.settings.watch_namespace.as_deref())
            })
            .await
        {
            Ok(scope) => slot.known = scope,
            Err(err) => {
                self.scope_errors.inc();
                slot.known = None;
                warn!(binding = %self.settings.policy_name, error = %err, "could not set the fencing binding's namespaceSelector; it stays as it was");
            }
        }
    }

    /// Reads the binding and writes the selector `change` asks for, if any,
    /// retrying conflicts; the scope it then has (`None`: no binding).
    async fn set_scope(
        &self,
        client: &Client,
        change: impl Fn(&Scope) -> Option<LabelSelector>,
    ) -> Result<Option<Scope>, ScopeError> {
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        let name = &self.settings.policy_name;
        for _ in 0..3 {
            let read = tokio::time::timeout(self.read_timeout, bindings.get_opt(name)).await;
            let Some(mut binding) = read.map_err(|_| ScopeError::Timeout)?? else {
                return Ok(None);
            };
            let spec = binding.spec.get_or_insert_with(Default::default);
            let resources = spec.match_resources.get_or_insert_with(Default::default);
            let scope = fencing_scope::scope_of(resources.namespace_selector.as_ref());
            let Some(selector) = change(&scope) else {
                return Ok(Some(scope));
            };
            resources.namespace_selector = Some(selector);
            let pp = PostParams::default();
            let write = bindings.replace(name, &pp, &binding);
            match tokio::time::timeout(self.read_timeout, write).await {
                Err(_) => return Err(ScopeError::Timeout),
                Ok(Ok(written)) => {
                    let resources = written.spec.and_then(|s| s.match_resources);
                    let selector = resources.and_then(|r| r.namespace_selector);
                    let scope = fencing_scope::scope_of(selector.as_ref());
                    info!(binding = %name, ?scope, "fencing binding's namespaceSelector set");
                    return Ok(Some(scope));
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => continue,
                Ok(Err(err)) => return Err(err.into()),
            }
        }
        Err(ScopeError::Conflicts)
    }

    /// The pool's state; reads the API server at most every [`RECHECK`]
    /// ([`CONFIRM`] while the answer is unsettled), and only when some pool
    /// wants fencing.
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
        let every = if slot.presence.settled() {
            RECHECK
        } else {
            CONFIRM
        };
        if slot.at.is_some_and(|at| at.elapsed() < every) {
            return slot.presence.installed();
        }
        self.check(&mut slot, client).await
    }

    /// Reads the API server once and updates the belief.
    async fn check(&self, slot: &mut Checked, client: &Client) -> bool {
        let was = slot.presence;
        let read = self.read(client).await;
        slot.presence = was.observe(read);
        slot.at = Some(Instant::now());
        let name = &self.settings.policy_name;
        let installed = slot.presence.installed();
        if slot.presence.known() != was.known() {
            if installed {
                info!(policy = %name, "the fencing ValidatingAdmissionPolicy and its binding are installed: api and process pools are fenced on the server");
            } else {
                warn!(policy = %name, "the fencing ValidatingAdmissionPolicy or its binding is missing ({ABSENT_TO_CONFIRM} reads in a row answered not found; install the chart with fencing.serverSide=true, or apply deploy/): pools are not fenced on the server");
            }
        } else if read == PolicyRead::Absent && installed {
            info!(policy = %name, "the fencing ValidatingAdmissionPolicy or its binding was not found; pools stay fenced until {ABSENT_TO_CONFIRM} reads in a row say so");
        }
        installed
    }

    /// One read of both objects. Only a "not found" answer says either is
    /// missing; any other error (no RBAC, an overloaded or unreachable API
    /// server, a timeout) says nothing about them.
    async fn read(&self, client: &Client) -> PolicyRead {
        let name = &self.settings.policy_name;
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        let both = async { tokio::join!(policies.get_opt(name), bindings.get_opt(name)) };
        let (policy, binding) = match tokio::time::timeout(self.read_timeout, both).await {
            Ok(answers) => answers,
            Err(_) => {
                self.read_errors.inc();
                warn!(policy = %name, timeout = ?self.read_timeout, "reading the fencing ValidatingAdmissionPolicy and its binding timed out; keeping the last answer");
                return PolicyRead::Failed;
            }
        };
        match (policy, binding) {
            (Ok(Some(_)), Ok(Some(_))) => PolicyRead::Present,
            // One confirmed missing is enough, whatever the other read says.
            (Ok(None), _) | (_, Ok(None)) => PolicyRead::Absent,
            (Err(err), _) | (_, Err(err)) => {
                self.read_errors.inc();
                if matches!(&err, kube::Error::Api(s) if s.code == 403) {
                    warn!(policy = %name, error = %err, "may not read the fencing policy: grant the controller's ServiceAccount get on validatingadmissionpolicies and validatingadmissionpolicybindings (admissionregistration.k8s.io) named {name}, as the chart does; keeping the last answer");
                } else {
                    warn!(policy = %name, error = %err, "could not read the fencing ValidatingAdmissionPolicy or its binding; keeping the last answer");
                }
                PolicyRead::Failed
            }
        }
    }
}

/// Why the binding's scope could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("the API server did not answer within the read timeout")]
    Timeout,
    #[error("three conflicting writes in a row (someone else keeps changing the binding)")]
    Conflicts,
    #[error(
        "{0} (the controller needs get and update on this one validatingadmissionpolicybinding, as the chart grants)"
    )]
    Api(#[from] kube::Error),
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex as StdMutex};

    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::json;

    use super::*;
    use crate::api::{Activation, LeaderPolicySpec};

    const NAME: &str = "zen-lead-fencing";

    /// What the mock API server does with one read.
    #[derive(Clone, Copy)]
    enum Reply {
        Code(u16),
        /// Never answers (a hung connection).
        Hang,
    }
    use Reply::{Code, Hang};

    /// A mock API server answering reads of the policy and of the binding,
    /// each from its own script (the two reads of a check run concurrently).
    fn mock(rounds: &[(Reply, Reply)]) -> Client {
        let policy: VecDeque<Reply> = rounds.iter().map(|r| r.0).collect();
        let binding: VecDeque<Reply> = rounds.iter().map(|r| r.1).collect();
        let scripts = Arc::new(StdMutex::new((policy, binding)));
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            let mut hung = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                let path = request.uri().path().to_owned();
                let (kind, reply) = {
                    let mut s = scripts.lock().unwrap_or_else(|e| e.into_inner());
                    if path.ends_with(&format!("validatingadmissionpolicies/{NAME}")) {
                        ("ValidatingAdmissionPolicy", s.0.pop_front())
                    } else {
                        ("ValidatingAdmissionPolicyBinding", s.1.pop_front())
                    }
                };
                let code = match reply {
                    Some(Code(code)) => code,
                    Some(Hang) => {
                        hung.push(respond);
                        continue;
                    }
                    None => 599,
                };
                let body = if code == 200 {
                    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
                           "metadata": {"name": NAME}})
                } else {
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": "m", "reason": if code == 404 { "NotFound" } else { "" },
                           "code": code})
                };
                let mut response = Response::new(Body::from(body.to_string().into_bytes()));
                *response.status_mut() =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                respond.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    fn fencing() -> Fencing {
        let mut f = Fencing::new(
            FencingSettings {
                default_on: true,
                policy_name: NAME.to_owned(),
                scope_interval: Duration::from_secs(30),
                scope_grace: Duration::from_secs(120),
                watch_namespace: None,
            },
            Counter::default(),
            Counter::default(),
        );
        f.read_timeout = Duration::from_millis(200);
        f
    }

    /// One read now, whatever the recheck interval.
    async fn check(f: &Fencing, client: &Client) -> bool {
        let mut slot = f.checked.lock().await;
        f.check(&mut slot, client).await
    }

    #[tokio::test]
    async fn failed_reads_keep_fencing_on_and_three_not_founds_turn_it_off() {
        let steps = [
            ((Code(200), Code(200)), true, "both found"),
            ((Code(500), Code(200)), true, "a 500 keeps the answer"),
            ((Hang, Hang), true, "a timeout keeps the answer"),
            (
                (Code(429), Code(503)),
                true,
                "a 429 and a 503 keep the answer",
            ),
            ((Code(403), Code(200)), true, "a 403 keeps the answer"),
            ((Code(404), Code(200)), true, "one 404"),
            ((Code(200), Code(404)), true, "a second (the binding)"),
            (
                (Code(500), Code(500)),
                true,
                "a failure between does not count",
            ),
            (
                (Code(404), Code(500)),
                false,
                "a third 404: confirmed missing",
            ),
            (
                (Code(500), Code(500)),
                false,
                "a failure keeps the confirmed absence",
            ),
            ((Code(200), Code(200)), true, "installed again"),
        ];
        let client = mock(&steps.iter().map(|s| s.0).collect::<Vec<_>>());
        let f = fencing();
        for (i, (_, want, why)) in steps.iter().enumerate() {
            assert_eq!(check(&f, &client).await, *want, "step {i}: {why}");
        }
        assert_eq!(f.read_errors.get(), 6, "failed reads are counted");
    }

    #[tokio::test]
    async fn a_failed_first_read_keeps_a_wanted_fence() {
        let client = mock(&[(Code(500), Code(500)), (Hang, Code(200))]);
        let f = fencing();
        let pool = LeaderPolicy::new(
            "p",
            LeaderPolicySpec {
                activation: Activation::Api,
                ..LeaderPolicySpec::default()
            },
        );
        assert_eq!(f.state(&client, &pool).await, FencingState::Fenced);
        assert!(check(&f, &client).await, "a timeout before any answer");
    }
}
