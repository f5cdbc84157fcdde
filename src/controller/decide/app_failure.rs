//! An `api` leader whose app is broken hands over to a follower whose app
//! works. In `api` activation every replica runs its app, and the agent of a
//! leader whose app crash-loops or is NotReady keeps renewing: the pool has a
//! leader that does nothing while Ready followers wait. So once the holder's
//! app containers have been failing (not Ready, or restarting) for the
//! policy's grace (`spec.appFailureGraceSeconds`), the controller asks for a
//! hand-off (`zen-lead.io/preferred-holder`) to a Ready follower, which the
//! holder's own agent performs. It never clears the Lease for this: the
//! holder's agent is alive and would be a second writer.
//!
//! Not for `start` pools (a follower's app does not run, and an unfenced app
//! must not overlap its successor's) nor `process` pools (`zen-lead run`
//! releases when the app exits, and a held follower's readiness is the
//! agent's answer, not the app's).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use tokio::time::Instant;

use super::{LeaseView, PodView};
use crate::api::LeaderPolicySpec;
use crate::contract::AGENT_CONTAINER;

/// Event reason on the policy: the leader's app is failing.
pub const APP_NOT_READY: &str = "AppNotReady";

/// The app containers of a pod: every container but the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppHealth {
    /// Every app container reports `ready: true` (false while the pod
    /// reports none).
    pub ready: bool,
    /// When the app container that started last started (its running
    /// state's `startedAt`, Unix seconds). A later value is a restart: the
    /// controller's pod cache keeps container states, not `restartCount`,
    /// and a restart starts a container later than any earlier start.
    pub started: Option<i64>,
    /// What is wrong, for people: the first app container not Ready.
    pub problem: Option<String>,
}

impl AppHealth {
    /// Reads the pod's container statuses.
    pub fn of(pod: &Pod) -> Self {
        let apps: Vec<&ContainerStatus> = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.name != AGENT_CONTAINER)
            .collect();
        let problem = if apps.is_empty() {
            Some("no app container status yet".to_owned())
        } else {
            apps.iter().find(|c| !c.ready).map(|c| not_ready(c))
        };
        AppHealth {
            ready: problem.is_none(),
            started: apps
                .iter()
                .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
                .map(|t| t.0.as_second())
                .max(),
            problem,
        }
    }
}

/// Why one container is not Ready: its waiting or terminated reason.
fn not_ready(c: &ContainerStatus) -> String {
    let state = c.state.as_ref();
    let detail = if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        format!(
            "waiting: {}",
            w.reason.as_deref().unwrap_or("unknown reason")
        )
    } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        format!(
            "terminated: {} (exit code {})",
            t.reason.as_deref().unwrap_or("unknown reason"),
            t.exit_code
        )
    } else {
        "running, not Ready".to_owned()
    };
    format!("container {:?} {detail}", c.name)
}

/// The grace a policy gives a failing leader app: `appFailureGraceSeconds`,
/// unset = the lease duration (a leader whose app is broken is given as
/// long as one whose agent died), `0` = never hand over for it.
pub fn grace(spec: &LeaderPolicySpec) -> Option<Duration> {
    let secs = spec
        .app_failure_grace_seconds
        .unwrap_or(spec.lease_duration_seconds);
    u64::try_from(secs)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// What the controller remembers of the holder's app between passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppWatch {
    /// The holder pod followed (UID): another holder starts afresh.
    pub holder: String,
    /// The latest app container start seen: a later one is a restart.
    pub started: Option<i64>,
    /// Since when the app is failing. A failure episode ends only once the
    /// app has looked healthy for a whole grace, so a crash loop whose
    /// container comes back Ready between crashes still adds up.
    pub failing_since: Option<Instant>,
    /// Since when it looks healthy again, inside an episode.
    pub healthy_since: Option<Instant>,
    /// The successor this controller named during this episode, and when.
    pub asked: Option<(String, Instant)>,
    /// "No follower's app is Ready" was told for this episode.
    pub reported: bool,
}

impl AppWatch {
    fn new(holder: &PodView) -> Self {
        AppWatch {
            holder: holder.uid.clone(),
            started: holder.app.started,
            failing_since: None,
            healthy_since: None,
            asked: None,
            reported: false,
        }
    }

    /// Takes in one look at the app; returns whether it fails now (not
    /// Ready, or started again since the last look). An episode whose app has
    /// looked healthy for a whole grace is over: the passes in between
    /// (every change of the pod brings one) saw no failure.
    fn observe(&mut self, app: &AppHealth, grace: Duration, now: Instant) -> bool {
        if self.healthy_since.is_some_and(|h| now >= h + grace) {
            self.failing_since = None;
            self.healthy_since = None;
            self.asked = None;
            self.reported = false;
        }
        let restarted = self
            .started
            .zip(app.started)
            .is_some_and(|(seen, now)| now > seen);
        self.started = self.started.max(app.started);
        let failing = !app.ready || restarted;
        if failing {
            self.failing_since.get_or_insert(now);
            self.healthy_since = None;
        } else if self.failing_since.is_some() {
            self.healthy_since.get_or_insert(now);
        }
        failing
    }
}

/// What one pass does about the holder's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppVerdict {
    /// Nothing now; look again after the duration (the grace runs out then,
    /// or an unanswered request is due to be renewed).
    Wait(Option<Duration>),
    /// Failing for longer than the grace: name `to` as the preferred holder,
    /// so the holder's agent releases and `to` takes over.
    HandOff {
        to: String,
        failing_for: Duration,
        problem: String,
    },
    /// The Lease already names `to`, but not because of this episode's
    /// request (left from an earlier hand-off that another candidate won,
    /// which the holder saw when its term began), or that request went
    /// unanswered for a grace: remove the annotation, so naming `to` again
    /// is a change the holder acts on.
    ClearPreferred,
    /// Failing for longer than the grace, and no follower's app is Ready:
    /// the holder keeps the Lease (its app may recover; a follower that is
    /// not Ready either would not serve better). `report`: first time in
    /// this episode.
    NoReadyFollower {
        failing_for: Duration,
        problem: String,
        report: bool,
    },
}

/// What [`judge`] looks at.
pub struct AppInput<'a> {
    pub lease: &'a LeaseView,
    /// The pool pod holding the Lease.
    pub holder: Option<&'a PodView>,
    pub pods: &'a [PodView],
    pub node_ready: &'a dyn Fn(&str) -> bool,
    /// `None`: disabled by the policy.
    pub grace: Option<Duration>,
}

/// Judges the holder's app at `now`, keeping `watch` across passes. Only
/// for a live `api` holder of an unexpired Lease; anything else forgets the
/// watch (the other failover rules handle holders that are gone).
pub fn judge(watch: &mut Option<AppWatch>, input: &AppInput<'_>, now: Instant) -> AppVerdict {
    let holder = input
        .holder
        .filter(|p| p.fenced() && p.alive(input.node_ready) && !input.lease.expired);
    let (Some(grace), Some(holder)) = (input.grace, holder) else {
        *watch = None;
        return AppVerdict::Wait(None);
    };
    let w = match watch {
        Some(w) if w.holder == holder.uid => w,
        _ => watch.insert(AppWatch::new(holder)),
    };
    if !w.observe(&holder.app, grace, now) {
        return AppVerdict::Wait(None);
    }
    let since = w.failing_since.unwrap_or(now);
    if now < since + grace {
        return AppVerdict::Wait(Some(since + grace - now));
    }
    let failing_for = now - since;
    let problem = holder
        .app
        .problem
        .clone()
        .unwrap_or_else(|| "an app container restarted".to_owned());
    let Some(to) = ready_follower(input.pods, holder, input.node_ready) else {
        let report = !w.reported;
        w.reported = true;
        return AppVerdict::NoReadyFollower {
            failing_for,
            problem,
            report,
        };
    };
    if input.lease.preferred.as_deref() != Some(to.as_str()) {
        w.asked = Some((to.clone(), now));
        return AppVerdict::HandOff {
            to,
            failing_for,
            problem,
        };
    }
    match &w.asked {
        Some((asked, at)) if *asked == to && now < *at + grace => {
            AppVerdict::Wait(Some(*at + grace - now))
        }
        _ => {
            w.asked = None;
            AppVerdict::ClearPreferred
        }
    }
}

/// The follower to hand over to: a live candidate other than the holder
/// whose pod is Ready and whose app containers are all Ready; the
/// best-ranked ([`super::preference::best`]), so repeated passes name the
/// same pod.
pub fn ready_follower(
    pods: &[PodView],
    holder: &PodView,
    node_ready: &dyn Fn(&str) -> bool,
) -> Option<String> {
    super::preference::best(pods.iter().filter(|p| {
        p.candidate(node_ready)
            && p.ready
            && p.app.ready
            && p.uid != holder.uid
            && p.identity != holder.identity
    }))
}

#[cfg(test)]
mod tests;
