//! `zen-lead pause POOL` and `zen-lead resume POOL`: set or clear the
//! policy's `spec.paused`, then wait until the controller has carried it to
//! the pool's Lease (`zen-lead.io/paused`), which is what the agents obey.
//! Only then is the pause in force (or lifted), so only then does the
//! command say so.

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

use super::{HandoffError, api, client_and_namespace, holder_of};
use crate::api::LeaderPolicy;
use crate::election::record::Record;

/// What `zen-lead pause` or `zen-lead resume` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseConfig {
    pub namespace: Option<String>,
    pub pool: String,
    /// `true`: pause; `false`: resume.
    pub paused: bool,
    /// How long to wait for the controller to mark the Lease.
    pub timeout: Duration,
}

/// Sets `spec.paused` and waits until the Lease carries it.
pub async fn pause(cfg: &PauseConfig, out: &mut dyn Write) -> Result<(), HandoffError> {
    let (client, namespace) = client_and_namespace(&cfg.namespace).await?;
    pause_in(client, &namespace, cfg, out).await
}

async fn pause_in(
    client: kube::Client,
    namespace: &str,
    cfg: &PauseConfig,
    out: &mut dyn Write,
) -> Result<(), HandoffError> {
    let namespace = namespace.to_owned();
    let policies: Api<LeaderPolicy> = Api::namespaced(client.clone(), &namespace);
    let pool = cfg.pool.as_str();
    let policy = super::read_policy(&policies, &namespace, pool).await?;
    if policy.spec.paused != cfg.paused {
        let patch = json!({"spec": {"paused": cfg.paused}});
        policies
            .patch(pool, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api(format!("updating LeaderPolicy {namespace}/{pool}")))?;
    }
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let deadline = Instant::now() + cfg.timeout;
    let lease = loop {
        let lease = leases
            .get_opt(pool)
            .await
            .map_err(api(format!("reading Lease {namespace}/{pool}")))?;
        let marked = lease
            .as_ref()
            .and_then(Record::from_lease)
            .is_some_and(|r| r.paused == cfg.paused);
        match lease {
            Some(lease) if marked => break lease,
            // No Lease at all: the controller has not made the pool's
            // Lease (is it running?), which is another problem than a
            // mark that did not come.
            None if Instant::now() >= deadline => {
                return Err(HandoffError::NoLease {
                    pool: pool.to_owned(),
                    namespace: namespace.to_owned(),
                });
            }
            _ if Instant::now() >= deadline => {
                return Err(HandoffError::NotMarked {
                    pool: pool.to_owned(),
                    namespace: namespace.to_owned(),
                    timeout: cfg.timeout,
                    paused: cfg.paused,
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let leader = holder_of(&lease);
    writeln!(
        out,
        "{}",
        summary(&namespace, pool, cfg.paused, leader.as_deref())
    )
    .map_err(HandoffError::Stdout)
}

/// What the command prints once the Lease carries the change.
pub fn summary(namespace: &str, pool: &str, paused: bool, holder: Option<&str>) -> String {
    match (paused, holder) {
        (true, Some(holder)) => format!(
            "pool {namespace}/{pool} paused: {holder} keeps leading while it renews; no \
             fail-over, hand-off, scale-down or deposed-pod deletion until `zen-lead resume \
             {pool} -n {namespace}`"
        ),
        (true, None) => format!(
            "pool {namespace}/{pool} paused: it has no leader and will not elect one until \
             `zen-lead resume {pool} -n {namespace}`"
        ),
        (false, Some(holder)) => format!(
            "pool {namespace}/{pool} resumed: {holder} leads; fail-over and hand-offs run again"
        ),
        (false, None) => {
            format!("pool {namespace}/{pool} resumed: no leader yet; the candidates elect one now")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_holds_and_how_to_undo_it() {
        let cases = [
            (
                true,
                Some("web-0_1a2b"),
                [
                    "paused",
                    "web-0_1a2b keeps leading",
                    "zen-lead resume db -n team",
                ],
            ),
            (
                true,
                None,
                ["paused", "no leader", "zen-lead resume db -n team"],
            ),
            (
                false,
                Some("web-0_1a2b"),
                ["resumed", "web-0_1a2b leads", "fail-over"],
            ),
            (false, None, ["resumed", "no leader yet", "elect one now"]),
        ];
        for (paused, holder, parts) in cases {
            let text = summary("team", "db", paused, holder);
            for part in parts {
                assert!(text.contains(part), "{text:?} lacks {part:?}");
            }
        }
    }

    /// A pool whose Lease does not exist: the command says the controller
    /// has made no Lease, not that it did not mark one.
    #[tokio::test]
    async fn a_pool_without_a_lease_says_so() {
        use http::{Request, Response, StatusCode};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let path = request.uri().path().to_owned();
                let (status, body) = if path.contains("/leaderpolicies/") {
                    let policy = json!({
                        "apiVersion": "coordination.kube-zen.io/v1alpha1", "kind": "LeaderPolicy",
                        "metadata": {"name": "pool", "namespace": "ns"},
                        "spec": {"paused": true}
                    });
                    (StatusCode::OK, policy)
                } else {
                    let missing = json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"
                    });
                    (StatusCode::NOT_FOUND, missing)
                };
                let response = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response");
                respond.send_response(response);
            }
        });
        let cfg = PauseConfig {
            namespace: Some("ns".to_owned()),
            pool: "pool".to_owned(),
            paused: true,
            timeout: Duration::from_millis(300),
        };
        let mut out = Vec::new();
        let err = pause_in(kube::Client::new(service, "ns"), "ns", &cfg, &mut out)
            .await
            .expect_err("no Lease");
        assert!(matches!(err, HandoffError::NoLease { .. }), "{err}");
        assert!(err.to_string().contains("has no Lease yet"), "{err}");
    }
}
