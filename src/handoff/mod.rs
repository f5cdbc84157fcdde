//! `zen-lead handoff POOL [--to POD]` and `zen-lead status [POOL]`: what an
//! operator runs by hand, like Patroni's `switchover` or Redis Sentinel's
//! `FAILOVER`. Also a kubectl plugin: the same binary named
//! `kubectl-zen_lead` answers `kubectl zen-lead handoff ...`.
//!
//! A hand-off uses the election's own mechanism (the Lease annotation
//! `zen-lead.io/preferred-holder`): the holder releases, the others defer to
//! the named pod for a moment, and the named pod acquires. Nothing here
//! bypasses the election, so it cannot make two leaders.
//! - [`plan`]: which pod takes over, or why none may (pure).
//! - [`pause`]: `zen-lead pause` and `zen-lead resume`.

pub mod pause;
pub mod plan;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use crate::api::keys::{POOL_LABEL, PREFERRED_HOLDER_ANNOTATION};
use crate::api::{LeaderPolicy, LeaderTransition};
use crate::contract::{AGENT_PORT, AGENT_PROBE_PORT, LEADZ_PATH};
use crate::controller::decide::PodView;
use crate::election::record::Record;

/// What `zen-lead handoff` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffConfig {
    /// `None`: the kubeconfig context's namespace.
    pub namespace: Option<String>,
    pub pool: String,
    /// The pod to hand over to; `None`: the controller's choice of successor.
    pub to: Option<String>,
    /// How long to wait for the new leader to be active.
    pub timeout: Duration,
}

/// What `zen-lead status` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    pub namespace: Option<String>,
    /// `None`: every pool of the namespace, a line each.
    pub pool: Option<String>,
}

/// Errors of `handoff` and `status`, each naming what to check.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(
        "no Kubernetes configuration: {0}; set KUBECONFIG (or run inside a cluster with a \
         service account)"
    )]
    Kube(#[source] kube::Error),

    #[error(
        "no LeaderPolicy {pool} in namespace {namespace} (kubectl get leaderpolicies -n \
         {namespace}); pass -n NAMESPACE if the pool lives elsewhere"
    )]
    NoPolicy { pool: String, namespace: String },

    #[error(
        "LeaderPolicy {pool} in namespace {namespace} has no Lease yet: the zen-lead controller \
         creates it; is the controller running (kubectl get lp {pool} -n {namespace} -o yaml \
         shows its conditions)?"
    )]
    NoLease { pool: String, namespace: String },

    #[error(transparent)]
    Refused(#[from] plan::Refusal),

    #[error("{action} failed: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error(
        "pod {pod} did not become the active leader of pool {pool} within {timeout:?} (the \
         Lease names {holder}); check its zen-lead-agent logs (kubectl logs {pod} -c \
         zen-lead-agent)"
    )]
    Timeout {
        pod: String,
        pool: String,
        timeout: Duration,
        holder: String,
    },

    #[error(
        "the Lease {lease} changed under each of 5 attempts to name the new holder (its holder \
         renews it); try again"
    )]
    Contended { lease: String },

    #[error(
        "LeaderPolicy {pool} in namespace {namespace} says spec.paused: {paused}, but the \
         controller did not carry it to the Lease {pool} (annotation zen-lead.io/paused) within \
         {timeout:?}, and the agents obey the Lease: is the zen-lead controller running (kubectl \
         get lp {pool} -n {namespace} -o yaml shows its Paused condition)?"
    )]
    NotMarked {
        pool: String,
        namespace: String,
        timeout: Duration,
        paused: bool,
    },

    #[error("could not write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
}

fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> HandoffError {
    let action = action.into();
    move |source| HandoffError::Api { action, source }
}

async fn client_and_namespace(
    namespace: &Option<String>,
) -> Result<(Client, String), HandoffError> {
    let client = Client::try_default().await.map_err(HandoffError::Kube)?;
    let namespace = namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    Ok((client, namespace))
}

/// One pool as the API server has it now.
struct Pool {
    policy: LeaderPolicy,
    lease: Lease,
    pods: Vec<PodView>,
}

/// The pool's LeaderPolicy; a missing one is [`HandoffError::NoPolicy`].
async fn read_policy(
    policies: &Api<LeaderPolicy>,
    namespace: &str,
    pool: &str,
) -> Result<LeaderPolicy, HandoffError> {
    policies
        .get_opt(pool)
        .await
        .map_err(api(format!("reading LeaderPolicy {namespace}/{pool}")))?
        .ok_or_else(|| HandoffError::NoPolicy {
            pool: pool.to_owned(),
            namespace: namespace.to_owned(),
        })
}

async fn read_pool(client: &Client, namespace: &str, pool: &str) -> Result<Pool, HandoffError> {
    let policies = Api::<LeaderPolicy>::namespaced(client.clone(), namespace);
    let policy = read_policy(&policies, namespace, pool).await?;
    let lease = Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(pool)
        .await
        .map_err(api(format!("reading Lease {namespace}/{pool}")))?
        .ok_or_else(|| HandoffError::NoLease {
            pool: pool.to_owned(),
            namespace: namespace.to_owned(),
        })?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={pool}")))
        .await
        .map_err(api(format!("listing the pods of pool {namespace}/{pool}")))?
        .items
        .iter()
        .map(|p| PodView::from_pod(p, policy.spec.identity_strategy))
        .collect();
    Ok(Pool {
        policy,
        lease,
        pods,
    })
}

fn holder_of(lease: &Lease) -> Option<String> {
    Record::from_lease(lease).and_then(|r| r.holder)
}

fn token_of(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

/// The pod name for an identity, or the identity itself.
fn pod_name(pods: &[PodView], identity: &str) -> String {
    pods.iter()
        .find(|p| p.identity.as_deref() == Some(identity))
        .map_or_else(|| identity.to_owned(), |p| p.name.clone())
}

/// Moves the pool's leadership and waits until the new leader is active.
pub async fn handoff(cfg: &HandoffConfig, out: &mut dyn Write) -> Result<(), HandoffError> {
    let (client, namespace) = client_and_namespace(&cfg.namespace).await?;
    let pool = read_pool(&client, &namespace, &cfg.pool).await?;
    plan::not_paused(
        pool.policy.spec.paused,
        Record::from_lease(&pool.lease).is_some_and(|r| r.paused),
        &cfg.pool,
        &namespace,
    )?;
    let holder = holder_of(&pool.lease);
    // Node readiness needs a cluster-wide read most users lack; the
    // controller refuses a NotReady node's pod anyway (it never leads there).
    let target = plan::target(
        &pool.pods,
        &cfg.pool,
        &namespace,
        holder.as_deref(),
        cfg.to.as_deref(),
        &|_| true,
    )?;
    let identity = target.identity.clone().unwrap_or_default();
    let from = holder
        .as_deref()
        .map_or_else(|| "<nobody>".to_owned(), |h| pod_name(&pool.pods, h));
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let started = Instant::now();
    prefer(&leases, &namespace, &cfg.pool, pool.lease, &identity).await?;

    let deadline = started + cfg.timeout;
    let (how, lease) = loop {
        let lease = leases
            .get(&cfg.pool)
            .await
            .map_err(api(format!("reading Lease {namespace}/{}", cfg.pool)))?;
        if holder_of(&lease).as_deref() == Some(identity.as_str())
            && let Some(how) = active(&client, &namespace, target).await?
        {
            break (how, lease);
        }
        if Instant::now() >= deadline {
            return Err(HandoffError::Timeout {
                pod: target.name.clone(),
                pool: cfg.pool.clone(),
                timeout: cfg.timeout,
                holder: holder_of(&lease).unwrap_or_else(|| "nobody".to_owned()),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    writeln!(
        out,
        "pool {}/{}: leadership moved from {from} to {} in {} ms (fencing token {}; {how})",
        namespace,
        cfg.pool,
        target.name,
        took.as_millis(),
        token_of(&lease),
    )
    .map_err(HandoffError::Stdout)?;
    Ok(())
}

/// Names `identity` as the preferred holder, by compare-and-swap. If the
/// annotation already names it (an earlier hand-off), it is removed first:
/// a holder acts on a *change* of the annotation, so that a stale one never
/// makes a later holder release. A pool paused meanwhile (seen on the Lease
/// read again after a conflict) is refused, as before the first attempt.
async fn prefer(
    leases: &Api<Lease>,
    namespace: &str,
    name: &str,
    mut lease: Lease,
    identity: &str,
) -> Result<(), HandoffError> {
    for _attempt in 0..5 {
        plan::not_paused(
            false,
            Record::from_lease(&lease).is_some_and(|r| r.paused),
            name,
            namespace,
        )?;
        let current = lease
            .annotations()
            .get(PREFERRED_HOLDER_ANNOTATION)
            .cloned();
        let mut next = lease.clone();
        let annotations = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
        if current.as_deref() == Some(identity) {
            annotations.remove(PREFERRED_HOLDER_ANNOTATION);
        } else {
            annotations.insert(PREFERRED_HOLDER_ANNOTATION.to_owned(), identity.to_owned());
        }
        match leases.replace(name, &PostParams::default(), &next).await {
            Ok(written) if current.as_deref() == Some(identity) => lease = written,
            Ok(_) => return Ok(()),
            // The holder renewed meanwhile: read it again and retry.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                lease = leases
                    .get(name)
                    .await
                    .map_err(api(format!("reading Lease {name}")))?;
            }
            Err(e) => return Err(api(format!("writing Lease {name}"))(e)),
        }
    }
    Err(HandoffError::Contended {
        lease: name.to_owned(),
    })
}

/// `Some(how)` once `target` is active: for a `start` pod, its app container
/// runs; otherwise (`api`, `process`) its agent answers that it leads (asked
/// through the API server's pod proxy: its gate then passes the leader's
/// writes, and `zen-lead run` starts the app on the same event). Without
/// access to the pod proxy, the Lease naming it is taken as the answer.
async fn active(
    client: &Client,
    namespace: &str,
    target: &PodView,
) -> Result<Option<&'static str>, HandoffError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if target.start_activation() {
        let pod = pods
            .get(&target.name)
            .await
            .map_err(api(format!("reading pod {namespace}/{}", target.name)))?;
        let view = PodView::from_pod(&pod, Default::default());
        return Ok(view.app_running.then_some("its app runs"));
    }
    let pod = format!("/api/v1/namespaces/{namespace}/pods/{}", target.name);
    // The agent's probe port; an agent injected before it existed serves
    // /v1/leader on the pod IP instead.
    let mut answer = ask_agent(
        client,
        &format!("{pod}:{AGENT_PROBE_PORT}/proxy{LEADZ_PATH}"),
    )
    .await;
    if matches!(&answer, Err(kube::Error::Api(e)) if e.code != 403) {
        answer = ask_agent(client, &format!("{pod}:{AGENT_PORT}/proxy/v1/leader")).await;
    }
    match answer {
        Ok(body) => {
            let leading = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["leading"].as_bool())
                .unwrap_or(false);
            Ok(leading.then_some("its agent says it leads"))
        }
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(Some(
            "the Lease names it; no pods/proxy access to ask its agent",
        )),
        Err(_) => Ok(None),
    }
}

/// GET through the API server's pod proxy.
async fn ask_agent(client: &Client, path: &str) -> Result<String, kube::Error> {
    let request = axum::http::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    client.request_text(request).await
}

/// Prints the pools of a namespace, or one pool in detail.
pub async fn status(cfg: &StatusConfig, out: &mut dyn Write) -> Result<(), HandoffError> {
    let (client, namespace) = client_and_namespace(&cfg.namespace).await?;
    let mut text = String::new();
    match &cfg.pool {
        None => {
            let policies = Api::<LeaderPolicy>::namespaced(client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .map_err(api(format!("listing LeaderPolicies in {namespace}")))?;
            text.push_str(&format!(
                "{:<24} {:<9} {:<40} {:>10} {:>6}\n",
                "POOL", "PHASE", "LEADER", "CANDIDATES", "TOKEN"
            ));
            for p in &policies.items {
                let s = p.status.clone().unwrap_or_default();
                text.push_str(&format!(
                    "{:<24} {:<9} {:<40} {:>10} {:>6}\n",
                    p.name_any(),
                    s.phase.map_or("-".to_owned(), |ph| format!("{ph:?}")),
                    s.current_holder
                        .and_then(|h| h.name.or(Some(h.identity)))
                        .unwrap_or_else(|| "-".to_owned()),
                    s.candidates.unwrap_or(0),
                    s.lease_transitions.unwrap_or(0),
                ));
            }
            if policies.items.is_empty() {
                text = format!("no pools (LeaderPolicies) in namespace {namespace}\n");
            }
        }
        Some(name) => {
            let pool = read_pool(&client, &namespace, name).await?;
            let holder = holder_of(&pool.lease);
            let status = pool.policy.status.clone().unwrap_or_default();
            text.push_str(&format!("pool:        {namespace}/{name}\n"));
            text.push_str(&format!(
                "phase:       {}\n",
                status.phase.map_or("-".to_owned(), |p| format!("{p:?}"))
            ));
            text.push_str(&format!(
                "leader:      {}\n",
                holder
                    .as_deref()
                    .map_or_else(|| "<nobody>".to_owned(), |h| pod_name(&pool.pods, h))
            ));
            text.push_str(&format!(
                "token:       {} (the Lease's leaseTransitions)\n",
                token_of(&pool.lease)
            ));
            if pool.policy.spec.paused {
                text.push_str(&format!(
                    "paused:      yes: no fail-over or hand-off until `zen-lead resume {name} -n \
                     {namespace}`\n"
                ));
            }
            text.push_str("candidates:\n");
            for p in &pool.pods {
                let leads = holder.is_some() && p.identity == holder;
                let state = match plan::unfit(p, &|_| true) {
                    None if leads => "leader".to_owned(),
                    None => "follower".to_owned(),
                    Some(why) => format!("not a candidate: {why}"),
                };
                text.push_str(&format!("  {:<40} {state}\n", p.name));
            }
            let recent = &status.recent_transitions;
            let lines = if recent.is_empty() {
                text.push_str("last transitions (Events):\n");
                transitions(&client, &namespace, name).await?
            } else {
                text.push_str("last transitions (status.recentTransitions, newest last):\n");
                recent.iter().map(transition_line).collect()
            };
            for line in lines {
                text.push_str(&format!("  {line}\n"));
            }
        }
    }
    out.write_all(text.as_bytes()).map_err(HandoffError::Stdout)
}

/// One `status.recentTransitions` entry as `zen-lead status` prints it.
pub fn transition_line(t: &LeaderTransition) -> String {
    let took = t
        .takeover_millis
        .map_or_else(String::new, |ms| format!(", take-over {ms} ms"));
    let term = t
        .term
        .map_or_else(String::new, |term| format!(", token {term}"));
    format!(
        "{}  leader changed from {} to {} ({}{took}{term})",
        t.time.0,
        t.from,
        t.to,
        t.reason.as_str()
    )
}

/// The pool's last leader changes, oldest first, from the controller's
/// `LeaderElected` / `LeaderLost` Events (kept by the API server for an hour
/// by default).
async fn transitions(
    client: &Client,
    namespace: &str,
    pool: &str,
) -> Result<Vec<String>, HandoffError> {
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=LeaderPolicy,involvedObject.name={pool}"
        )))
        .await
        .map_err(api(format!(
            "listing the Events of LeaderPolicy {namespace}/{pool}"
        )))?;
    let mut changes: Vec<(String, String)> = events
        .items
        .into_iter()
        .filter(|e| matches!(e.reason.as_deref(), Some("LeaderElected" | "LeaderLost")))
        .map(|e| {
            let at = e
                .event_time
                .map(|t| t.0.to_string())
                .or_else(|| e.last_timestamp.map(|t| t.0.to_string()))
                .unwrap_or_default();
            (at, e.message.unwrap_or_default())
        })
        .collect();
    changes.sort();
    let keep = changes.len().saturating_sub(5);
    Ok(changes
        .into_iter()
        .skip(keep)
        .map(|(at, message)| format!("{at}  {message}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TransitionReason;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A Lease named `pool`, at `version`, paused or not.
    fn lease(version: &str, paused: bool) -> Lease {
        let mut annotations = BTreeMap::new();
        if paused {
            annotations.insert(
                crate::api::keys::PAUSED_ANNOTATION.to_owned(),
                "true".to_owned(),
            );
        }
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some("pool".to_owned()),
                namespace: Some("ns".to_owned()),
                resource_version: Some(version.to_owned()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some("a_1".to_owned()),
                ..Default::default()
            }),
        }
    }

    /// The controller paused the pool between the command's read and its
    /// write: the write conflicts, the Lease read again is paused, and the
    /// hand-off is refused instead of retried.
    #[tokio::test]
    async fn a_pause_that_lands_during_a_conflicting_write_refuses_the_hand_off() {
        use http::{Request, Response, StatusCode};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut writes = 0;
            while let Some((request, respond)) = handle.next_request().await {
                let (status, body) = match *request.method() {
                    http::Method::PUT => {
                        writes += 1;
                        let conflict = serde_json::json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "Conflict", "code": 409, "message": "changed"
                        });
                        (StatusCode::CONFLICT, conflict)
                    }
                    _ => (
                        StatusCode::OK,
                        serde_json::to_value(lease("2", true)).expect("lease"),
                    ),
                };
                let response = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response");
                respond.send_response(response);
            }
            writes
        });
        let leases: Api<Lease> = Api::namespaced(kube::Client::new(service, "ns"), "ns");
        let err = prefer(&leases, "ns", "pool", lease("1", false), "b_2")
            .await
            .expect_err("paused meanwhile");
        assert!(
            matches!(err, HandoffError::Refused(plan::Refusal::Paused { .. })),
            "{err}"
        );
        assert!(
            err.to_string().contains("zen-lead resume pool -n ns"),
            "{err}"
        );
        drop(leases);
        assert_eq!(server.await.expect("server"), 1, "one write, no retry");
    }

    #[test]
    fn a_recent_transition_prints_its_reason_take_over_and_token() {
        let mut t = LeaderTransition {
            time: Time(
                k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap_or_default(),
            ),
            from: "web-0".to_owned(),
            to: "web-1".to_owned(),
            reason: TransitionReason::PodDeleted,
            takeover_millis: Some(42),
            term: Some(7),
        };
        assert_eq!(
            transition_line(&t),
            "2027-01-15T08:00:00Z  leader changed from web-0 to web-1 (podDeleted, take-over 42 ms, token 7)"
        );
        t.takeover_millis = None;
        t.term = None;
        assert!(transition_line(&t).ends_with("(podDeleted)"));
    }
}
