//! Leader election over one `coordination.k8s.io/v1` Lease per pool, shared
//! by `zen-lead agent` and `zen-lead lock`.
//!
//! - [`record`]: what is read from and written to the Lease (client-go's
//!   fields plus zen-lead's annotations; the "Lease contract" in
//!   docs/ARCHITECTURE.md).
//! - [`machine`]: the decisions, pure and table-tested.
//! - [`driver`]: the watch, the compare-and-swap writes, the status channel.
//! - [`clock`]: monotonic timestamps comparable across processes.
//!
//! The timing rules below are client-go's, so a Lease shared with client-go
//! tooling behaves the same, and the CRD's CEL rules (see the `api` module)
//! enforce the same thing server-side.

pub mod clock;
pub mod driver;
pub mod machine;
pub mod record;

pub use driver::{
    Elector, ElectorConfig, LeaderStatus, Metrics, Retries, RunError, counting_client,
    process_identity,
};

use std::time::Duration;

/// An instance value for a candidate that is a plain process (`lock`, the
/// controller): unique per process start, so a second process given the same
/// identity never takes the first one's Lease as its own.
pub fn process_instance() -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("pid-{}-{started:x}", std::process::id())
}

/// client-go's `JitterFactor`: a retry may be delayed by up to 20%, and the
/// leader still needs at least one retry before its renew deadline.
pub const RETRY_JITTER_FACTOR: f64 = 1.2;

/// The three durations that drive an election.
///
/// Invariants (checked by [`Timings::new`]): all non-zero,
/// `renew_deadline < lease_duration`, and
/// `retry_period * 1.2 < renew_deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timings {
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

/// How the caller names each timing to its user, so an error points at the
/// exact flag or field to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingNames {
    pub lease_duration: &'static str,
    pub renew_deadline: &'static str,
    pub retry_period: &'static str,
}

impl TimingNames {
    /// Field names in a `LeaderPolicy`.
    pub const POLICY: TimingNames = TimingNames {
        lease_duration: "spec.leaseDurationSeconds",
        renew_deadline: "spec.renewDeadlineSeconds",
        retry_period: "spec.retryPeriodSeconds",
    };

    /// Flags of `zen-lead lock`.
    pub const LOCK_FLAGS: TimingNames = TimingNames {
        lease_duration: "--lease-duration",
        renew_deadline: "--renew-deadline",
        retry_period: "--retry-period",
    };
}

/// Errors of the election module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    #[error("{name} must be greater than zero")]
    ZeroDuration { name: &'static str },

    #[error(
        "{renew_name} ({renew:?}) must be shorter than {lease_name} ({lease:?}): \
         a leader has to give up before another candidate may take over"
    )]
    RenewDeadlineNotBeforeLease {
        renew_name: &'static str,
        renew: Duration,
        lease_name: &'static str,
        lease: Duration,
    },

    #[error(
        "{retry_name} ({retry:?}) times 1.2 must be shorter than {renew_name} ({renew:?}): \
         a leader needs room for at least one jittered retry before its renew deadline"
    )]
    RetryPeriodTooLong {
        retry_name: &'static str,
        retry: Duration,
        renew_name: &'static str,
        renew: Duration,
    },
}

impl Timings {
    /// Checks the rules and builds the timings; errors name the offending
    /// settings as `names` spells them.
    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
        names: TimingNames,
    ) -> Result<Self, ElectionError> {
        for (value, name) in [
            (lease_duration, names.lease_duration),
            (renew_deadline, names.renew_deadline),
            (retry_period, names.retry_period),
        ] {
            if value.is_zero() {
                return Err(ElectionError::ZeroDuration { name });
            }
        }
        if renew_deadline >= lease_duration {
            return Err(ElectionError::RenewDeadlineNotBeforeLease {
                renew_name: names.renew_deadline,
                renew: renew_deadline,
                lease_name: names.lease_duration,
                lease: lease_duration,
            });
        }
        // retry * 1.2 < renew, in exact integer nanoseconds (retry * 6 < renew * 5)
        // so a boundary value is judged the same here as by the CRD's CEL rule.
        if retry_period.as_nanos() * 6 >= renew_deadline.as_nanos() * 5 {
            return Err(ElectionError::RetryPeriodTooLong {
                retry_name: names.retry_period,
                retry: retry_period,
                renew_name: names.renew_deadline,
                renew: renew_deadline,
            });
        }
        Ok(Self {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    /// How long a holder's claim lasts after the last observed renewal.
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    /// How long a leader keeps trying to renew before it steps down.
    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    /// How long an app guarded by a term (`zen-lead run`) may take to exit
    /// after the term's deadline before it is killed: half of what the rules
    /// leave between that deadline and anyone else's earliest take-over.
    pub fn stop_grace(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_deadline) / 2
    }

    /// Pause between attempts.
    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }
}

impl Default for Timings {
    /// 15 s / 10 s / 2 s: client-go's and the `LeaderPolicy` defaults.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn defaults_satisfy_the_rules() {
        let d = Timings::default();
        let checked = Timings::new(
            d.lease_duration(),
            d.renew_deadline(),
            d.retry_period(),
            TimingNames::POLICY,
        );
        assert_eq!(checked, Ok(d));
    }

    #[test]
    fn renew_deadline_must_be_shorter_than_lease() {
        let err = Timings::new(secs(15), secs(15), secs(2), TimingNames::POLICY).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("spec.renewDeadlineSeconds"), "{msg}");
        assert!(msg.contains("spec.leaseDurationSeconds"), "{msg}");
    }

    #[test]
    fn retry_boundary_is_exact() {
        // 5 * 1.2 == 6 exactly: rejected, like client-go and the CEL rule.
        let err = Timings::new(secs(15), secs(6), secs(5), TimingNames::LOCK_FLAGS).unwrap_err();
        assert!(matches!(err, ElectionError::RetryPeriodTooLong { .. }));
        assert!(err.to_string().contains("--retry-period"));
        assert!(err.to_string().contains("--renew-deadline"));
        // Just under the boundary is fine.
        let ok = Timings::new(
            secs(15),
            Duration::from_millis(6001),
            secs(5),
            TimingNames::LOCK_FLAGS,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn zero_is_rejected_by_name() {
        let err = Timings::new(secs(15), secs(10), secs(0), TimingNames::LOCK_FLAGS).unwrap_err();
        assert_eq!(
            err,
            ElectionError::ZeroDuration {
                name: "--retry-period"
            }
        );
    }
}
