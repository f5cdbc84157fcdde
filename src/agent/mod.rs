//! `zen-lead agent` (issue 4): one pod's candidacy in its pool's Lease
//! election, injected into pool pods as a native sidecar. Serves probes, the
//! local leadership API and metrics; later (issue 8) it also gates the app's
//! Kubernetes API writes.
//!
//! What exists now is its configuration, validated at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use crate::api::validate_pool_name;
use crate::cli::AgentArgs;

/// The pod the agent runs in, from the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Validated agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub pool: String,
    pub pod: PodRef,
    /// `Some` for `identityStrategy: custom`.
    pub custom_identity: Option<String>,
    pub http_addr: SocketAddr,
    pub release_timeout: Duration,
}

/// Errors of the agent module.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--pool (ZEN_LEAD_POOL) {value:?} cannot name a LeaderPolicy: {reason}")]
    InvalidPool { value: String, reason: String },

    #[error(
        "{flag} ({env}) is empty; the webhook fills it from the downward API, so check the \
         injected agent container's env"
    )]
    MissingPodField {
        flag: &'static str,
        env: &'static str,
    },

    #[error(
        "--identity (ZEN_LEAD_IDENTITY) is {len} bytes long; keep it under 256 so it fits the \
         Lease's holderIdentity and the pod's zen-lead/identity annotation stays readable"
    )]
    IdentityTooLong { len: usize },
}

impl Config {
    /// Builds the agent's settings from its flags.
    pub fn from_args(args: &AgentArgs) -> Result<Self, AgentError> {
        validate_pool_name(&args.pool).map_err(|reason| AgentError::InvalidPool {
            value: args.pool.clone(),
            reason,
        })?;
        for (flag, env, value) in [
            ("--pod-name", "ZEN_LEAD_POD_NAME", &args.pod_name),
            (
                "--pod-namespace",
                "ZEN_LEAD_POD_NAMESPACE",
                &args.pod_namespace,
            ),
            ("--pod-uid", "ZEN_LEAD_POD_UID", &args.pod_uid),
        ] {
            if value.trim().is_empty() {
                return Err(AgentError::MissingPodField { flag, env });
            }
        }
        let identity = args.identity.trim();
        if identity.len() > 255 {
            return Err(AgentError::IdentityTooLong {
                len: identity.len(),
            });
        }
        Ok(Self {
            pool: args.pool.clone(),
            pod: PodRef {
                name: args.pod_name.clone(),
                namespace: args.pod_namespace.clone(),
                uid: args.pod_uid.clone(),
            },
            custom_identity: (!identity.is_empty()).then(|| identity.to_owned()),
            http_addr: args.http_addr,
            release_timeout: args.release_timeout,
        })
    }
}
