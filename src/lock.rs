//! `zen-lead lock NAME -- CMD` (issue 4): a distributed lock on a Lease for
//! scripts, CI jobs and Kubernetes Jobs. CMD runs only while this process
//! holds the Lease; losing it stops CMD.
//!
//! What exists now is the request, validated at start-up.

use std::time::Duration;

use crate::api::{validate_dns_label, validate_dns_subdomain};
use crate::cli::LockArgs;
use crate::election::{ElectionError, TimingNames, Timings};

/// A validated lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Lease name.
    pub name: String,
    /// `None`: the client's default namespace.
    pub namespace: Option<String>,
    /// `None`: `<hostname>-<pid>`.
    pub identity: Option<String>,
    /// `None`: wait forever.
    pub timeout: Option<Duration>,
    pub timings: Timings,
    pub grace_period: Duration,
    /// Program and arguments.
    pub command: Vec<String>,
}

/// Errors of the lock module.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock NAME {value:?} (ZEN_LEAD_LOCK_NAME) is not a valid Lease name: {reason}")]
    InvalidName { value: String, reason: String },

    #[error(
        "--namespace (ZEN_LEAD_LOCK_NAMESPACE) {value:?} is not a valid namespace name: {reason}"
    )]
    InvalidNamespace { value: String, reason: String },

    #[error(transparent)]
    Timings(#[from] ElectionError),

    #[error("nothing to run: give the command after `--`, e.g. `zen-lead lock NAME -- ./job.sh`")]
    NoCommand,
}

impl Request {
    /// Builds the request from `zen-lead lock`'s flags.
    pub fn from_args(args: &LockArgs) -> Result<Self, LockError> {
        validate_dns_subdomain(&args.name).map_err(|reason| LockError::InvalidName {
            value: args.name.clone(),
            reason,
        })?;
        if let Some(ns) = &args.namespace {
            validate_dns_label(ns).map_err(|reason| LockError::InvalidNamespace {
                value: ns.clone(),
                reason,
            })?;
        }
        let timings = Timings::new(
            args.lease_duration,
            args.renew_deadline,
            args.retry_period,
            TimingNames::LOCK_FLAGS,
        )?;
        if args
            .command
            .first()
            .is_none_or(|program| program.is_empty())
        {
            return Err(LockError::NoCommand);
        }
        let identity = args.identity.trim();
        Ok(Self {
            name: args.name.clone(),
            namespace: args.namespace.clone(),
            identity: (!identity.is_empty()).then(|| identity.to_owned()),
            timeout: (!args.timeout.is_zero()).then_some(args.timeout),
            timings,
            grace_period: args.grace_period,
            command: args.command.clone(),
        })
    }
}
