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
}
