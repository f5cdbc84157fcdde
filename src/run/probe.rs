//! `zen-lead probe --kind K [--budget D] -- CMD`: an app container's exec
//! probe in a `process` pool. While the pod does not lead, `run` keeps the
//! app stopped, so there is nothing to probe and the probe passes ("held");
//! a liveness probe also passes during the first `--budget` of a term
//! ("starting"). Otherwise this process becomes CMD, whose status decides.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;

use super::RunError;
use super::client::{self, AgentView};
use crate::contract::ProbeKind;
use crate::signals::spawn_failure;

/// What `zen-lead probe` checks, from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub kind: ProbeKind,
    /// How long a liveness probe passes at the start of a term.
    pub budget: Duration,
    /// The agent's loopback API.
    pub agent_addr: SocketAddr,
    /// How long to wait for the agent's answer.
    pub agent_timeout: Duration,
    /// The app's own probe command.
    pub command: Vec<String>,
}

/// The probe's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass without running CMD: the app is held stopped (the reason).
    Held(&'static str),
    /// Pass without running CMD: a liveness probe early in the term.
    Starting,
    /// Run CMD; its status is the probe's.
    Check,
}

/// Decides from the agent's answer (`None`: no answer) at wall time `now`.
pub fn decide(
    kind: ProbeKind,
    budget: Duration,
    view: Option<&AgentView>,
    now: SystemTime,
) -> Verdict {
    let Some(view) = view else {
        return Verdict::Held("the zen-lead agent does not answer, so the app is held stopped");
    };
    if !view.leading {
        return Verdict::Held("this pod does not lead, so the app is held stopped");
    }
    if kind != ProbeKind::Liveness || budget.is_zero() {
        return Verdict::Check;
    }
    let since = view
        .since
        .as_deref()
        .and_then(|s| s.parse::<Timestamp>().ok())
        .map(SystemTime::from);
    match since {
        // A start in the future (clock skew) has not used any budget yet.
        Some(since) if now.duration_since(since).is_ok_and(|age| age >= budget) => Verdict::Check,
        // No (readable) start: the budget counts as not passed.
        _ => Verdict::Starting,
    }
}

/// Runs `zen-lead probe`: exits 0 or becomes CMD.
pub async fn probe(args: &Config) -> Result<(), RunError> {
    let Some((program, rest)) = args.command.split_first().filter(|(p, _)| !p.is_empty()) else {
        return Err(RunError::NoCommand);
    };
    let answer = tokio::time::timeout(args.agent_timeout, client::leader(args.agent_addr)).await;
    let view = match answer {
        Ok(Ok(view)) => Some(view),
        Ok(Err(err)) => {
            tracing::debug!("{err}");
            None
        }
        Err(_) => None,
    };
    match decide(args.kind, args.budget, view.as_ref(), SystemTime::now()) {
        Verdict::Held(why) => {
            println!("zen-lead probe: passed without probing: {why}");
            std::process::exit(0);
        }
        Verdict::Starting => {
            println!(
                "zen-lead probe: passed without probing: the term began less than {:?} ago, the app is starting",
                args.budget
            );
            std::process::exit(0);
        }
        Verdict::Check => {
            use std::os::unix::process::CommandExt;
            // Only returns on failure.
            let err = std::process::Command::new(program).args(rest).exec();
            eprintln!("zen-lead probe: cannot run {program:?}: {err}");
            std::process::exit(spawn_failure(&err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(leading: bool, since: Option<&str>) -> AgentView {
        AgentView {
            lease: "pool".into(),
            identity: "me".into(),
            leading,
            fencing_token: Some(4),
            since: since.map(str::to_owned),
            lead_until_monotonic_ns: None,
            stop_grace_ms: 0,
            duplicate_of: None,
        }
    }

    #[test]
    fn table() {
        use ProbeKind::{Liveness, Readiness, Startup};
        // 2024-01-01T00:01:00Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_260);
        let budget = Duration::from_secs(30);
        let held_agent =
            Verdict::Held("the zen-lead agent does not answer, so the app is held stopped");
        let held_follower = Verdict::Held("this pod does not lead, so the app is held stopped");
        let cases: &[(&str, ProbeKind, Duration, Option<AgentView>, Verdict)] = &[
            ("agent unreachable", Readiness, budget, None, held_agent),
            (
                "agent unreachable, liveness",
                Liveness,
                budget,
                None,
                held_agent,
            ),
            (
                "follower",
                Readiness,
                budget,
                Some(view(false, None)),
                held_follower,
            ),
            (
                "follower, startup",
                Startup,
                budget,
                Some(view(false, None)),
                held_follower,
            ),
            (
                "leader, readiness",
                Readiness,
                budget,
                Some(view(true, Some("2024-01-01T00:00:59Z"))),
                Verdict::Check,
            ),
            (
                "leader, startup ignores the budget",
                Startup,
                budget,
                Some(view(true, Some("2024-01-01T00:00:59Z"))),
                Verdict::Check,
            ),
            (
                "leader, liveness within the budget",
                Liveness,
                budget,
                Some(view(true, Some("2024-01-01T00:00:31Z"))),
                Verdict::Starting,
            ),
            (
                "leader, liveness at the budget",
                Liveness,
                budget,
                Some(view(true, Some("2024-01-01T00:00:30Z"))),
                Verdict::Check,
            ),
            (
                "leader, liveness past the budget",
                Liveness,
                budget,
                Some(view(true, Some("2024-01-01T00:00:00Z"))),
                Verdict::Check,
            ),
            (
                "leader, liveness, since missing",
                Liveness,
                budget,
                Some(view(true, None)),
                Verdict::Starting,
            ),
            (
                "leader, liveness, since unreadable",
                Liveness,
                budget,
                Some(view(true, Some("yesterday"))),
                Verdict::Starting,
            ),
            (
                "leader, liveness, since in the future",
                Liveness,
                budget,
                Some(view(true, Some("2024-01-01T00:05:00Z"))),
                Verdict::Starting,
            ),
            (
                "leader, liveness, no budget",
                Liveness,
                Duration::ZERO,
                Some(view(true, None)),
                Verdict::Check,
            ),
        ];
        for (name, kind, budget, view, expected) in cases {
            assert_eq!(
                decide(*kind, *budget, view.as_ref(), now),
                *expected,
                "{name}"
            );
        }
    }
}
