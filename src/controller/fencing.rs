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
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

use super::decide::fencing::{ABSENT_TO_CONFIRM, PolicyPresence, PolicyRead};
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
}

#[derive(Default)]
struct Checked {
    /// When the API server was last asked; `None` before the first read.
    at: Option<Instant>,
    presence: PolicyPresence,
}

impl Fencing {
    pub fn new(settings: FencingSettings, read_errors: Counter) -> Self {
        Self {
            settings,
            read_errors,
            read_timeout: READ_TIMEOUT,
            checked: Mutex::const_new(Checked::default()),
        }
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
            },
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
