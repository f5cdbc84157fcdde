//! What the webhook writes into a `process` pool pod and the agent and
//! `zen-lead run` read back: one definition for both sides.
//!
//! The webhook gives the pod a shared volume the agent fills with its own
//! static binary, rewrites each app container's `command` to run under
//! `zen-lead run`, and moves the app's `httpGet`/`tcpSocket`/`grpc` probes
//! behind the agent (`/app-health/<container>/<kind>`), passing the original
//! probes to the agent in [`APP_PROBES_ENV`]. `exec` probes are wrapped by
//! `zen-lead probe` instead.

use serde::{Deserialize, Serialize};

/// Name of the injected agent container; also how a second webhook pass,
/// the controller and `zen-lead status` recognise it.
pub const AGENT_CONTAINER: &str = "zen-lead-agent";

/// The agent container's command: the image's per-pod binary
/// (`zen-lead-pod`, src/bin/zen-lead-pod.rs), which has the agent, `run`
/// and `probe` and none of the controller. The agent shares this binary
/// with the app containers, so a `process` pod keeps only it resident.
/// The published image and the local cluster's image both carry it
/// (tests/image_layout.rs).
pub const AGENT_COMMAND: &str = "/usr/local/bin/zen-lead-pod";

/// The agent's local HTTP API (`/v1/*`, also every probe path), on the
/// pod's loopback only: the pod's own containers (`zen-lead run`, `probe`,
/// apps reading `/v1/leader`) reach it, other pods do not. Must equal the
/// default of `zen-lead agent --http-addr` (src/cli): the webhook passes no
/// address flag, so both sides agree through this one number.
pub const AGENT_PORT: i32 = 9466;

/// The agent's port on the pod IP, serving only what callers from outside
/// the pod need: the kubelet's probes (`/livez`, `/readyz`, `/startz`,
/// `/app-health/...`), Prometheus (`/metrics`) and `zen-lead handoff`
/// through the API server's pod proxy ([`LEADZ_PATH`]). Must equal the
/// default of `zen-lead agent --probe-addr`; the injected container port
/// `zl-agent` and every injected probe name it.
pub const AGENT_PROBE_PORT: i32 = 9468;

/// On [`AGENT_PROBE_PORT`]: this pod's leadership, one JSON snapshot (the
/// body of `/v1/leader`; no stream), for `zen-lead handoff`.
pub const LEADZ_PATH: &str = "/leadz";

/// Volume the agent copies its binary into (an `emptyDir`).
pub const BIN_VOLUME: &str = "zen-lead-bin";

/// Where [`BIN_VOLUME`] is mounted: read-write in the agent, read-only in the
/// app containers. A top-level path: no image has it, and no symlink (such
/// as `/var/run` → `/run`) lies on the way.
pub const BIN_DIR: &str = "/zen-lead";

/// The shared binary, as app containers run it.
pub const BIN_PATH: &str = "/zen-lead/zen-lead";

/// Agent env: the directory to copy the binary into (set only in `process`
/// activation).
pub const BIN_DIR_ENV: &str = "ZEN_LEAD_BIN_DIR";

/// Agent env: JSON array of [`AppProbe`], the app probes it answers for.
pub const APP_PROBES_ENV: &str = "ZEN_LEAD_APP_PROBES";

/// Prefix of the agent paths that stand in for app probes.
pub const APP_HEALTH_PREFIX: &str = "/app-health";

/// Agent env (`process` activation, a CronJob-created Job's pod): the Job's
/// scheduled time, from its `batch.kubernetes.io/cronjob-scheduled-timestamp`.
pub const SCHEDULED_TIME_ENV: &str = "ZEN_LEAD_SCHEDULED_TIME";

/// Agent env beside [`SCHEDULED_TIME_ENV`]: the Job's name.
pub const JOB_NAME_ENV: &str = "ZEN_LEAD_JOB_NAME";

/// How `zen-lead run`'s termination message begins when it completed without
/// running the command, its scheduled time having run in the pool already
/// (`scheduledRuns: once`); the controller reports it on the Job.
pub const SKIPPED_RUN_MARKER: &str = "zen-lead: scheduled run skipped";

/// Where `run` writes that message: the kubelet's default
/// `terminationMessagePath`.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Environment `zen-lead run` gives the app: the term's fencing token
/// (`leaseTransitions`; it only grows), the pool and the candidate identity.
pub const FENCING_TOKEN_ENV: &str = "ZEN_LEAD_FENCING_TOKEN";
pub const POOL_ENV: &str = "ZEN_LEAD_POOL";
pub const IDENTITY_ENV: &str = "ZEN_LEAD_IDENTITY";

/// How the fencing ValidatingAdmissionPolicy's refusal message begins (the
/// chart's `templates/fencing.yaml` writes it; the agent's gate looks for it
/// to tell a refusal from the API server's cache lag, right after this pod
/// began to lead, from any other 403).
pub const FENCING_DENIAL_MARKER: &str = "zen-lead fencing:";

/// `POST` on the agent (loopback only): release the Lease if this pod holds
/// it and stand down for a while, so another replica takes over.
pub const RELEASE_PATH: &str = "/v1/release";

/// Why `run` asks for a release: the `reason` query parameter of
/// [`RELEASE_PATH`] (for the agent's log; both stand down alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The app exited with a failure status while leading.
    AppFailed,
    /// The app was stopped by a signal to its container (the pod is being
    /// deleted, or the kubelet restarts the container): hand over now rather
    /// than when the kubelet gets round to stopping the agent.
    AppStopped,
}

impl ReleaseReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AppFailed => "app-failed",
            Self::AppStopped => "app-stopped",
        }
    }

    /// The reason named in a request's query (`reason=…`); a request without
    /// one (an older `run`) counts as [`ReleaseReason::AppFailed`].
    pub fn from_query(query: Option<&str>) -> Self {
        let mut named = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|kv| kv.strip_prefix("reason="));
        match named.next_back() {
            Some(v) if v == Self::AppStopped.as_str() => Self::AppStopped,
            _ => Self::AppFailed,
        }
    }

    /// The path and query `run` posts ([`RELEASE_PATH`] with the reason).
    pub const fn path_and_query(self) -> &'static str {
        match self {
            Self::AppFailed => "/v1/release?reason=app-failed",
            Self::AppStopped => "/v1/release?reason=app-stopped",
        }
    }
}

/// `POST` on the agent (loopback only), held open while an app process
/// runs under `zen-lead run`: the request body never ends, and closing the
/// connection (the app stopped, or `run` died with it) tells the agent at
/// once. A voluntary release waits for every such connection to close.
pub const APP_HOLD_PATH: &str = "/v1/app/hold";

/// Which of a container's probes: in the agent's probe list and paths, and
/// `zen-lead probe --kind`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub const ALL: [Self; 3] = [Self::Startup, Self::Readiness, Self::Liveness];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Readiness => "readiness",
            Self::Liveness => "liveness",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

/// The agent path that answers `kind` for `container`.
pub fn app_health_path(container: &str, kind: ProbeKind) -> String {
    format!("{APP_HEALTH_PREFIX}/{container}/{}", kind.as_str())
}

/// One app probe the agent performs on the kubelet's behalf while the app
/// runs. Ports are numbers: the webhook resolves named ports, since the
/// agent cannot see the app container's port names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    pub container: String,
    pub kind: ProbeKind,
    pub action: ProbeAction,
    /// The probe's own `timeoutSeconds` (default 1).
    pub timeout_seconds: u32,
    /// Liveness only: how long after the pod starts leading the app is given
    /// to start before its liveness counts (its `startupProbe`'s budget, or
    /// the liveness probe's `initialDelaySeconds`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_budget_seconds: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// What to do, as in the Kubernetes probe it came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    HttpGet {
        /// `HTTP` or `HTTPS`.
        scheme: String,
        /// Empty: the pod itself (loopback).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        host: String,
        port: u16,
        path: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
    TcpSocket {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        host: String,
        port: u16,
    },
    Grpc {
        port: u16,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        service: String,
    },
}

/// The budget a taking-over app gets before its liveness counts: what its
/// `startupProbe` allows (initial delay + failures × period), else the
/// liveness probe's initial delay.
pub fn start_budget_seconds(
    startup: Option<&k8s_openapi::api::core::v1::Probe>,
    liveness: &k8s_openapi::api::core::v1::Probe,
) -> u32 {
    let non_neg = |v: Option<i32>, default: i32| u32::try_from(v.unwrap_or(default)).unwrap_or(0);
    match startup {
        Some(s) => non_neg(s.initial_delay_seconds, 0).saturating_add(
            non_neg(s.failure_threshold, 3).saturating_mul(non_neg(s.period_seconds, 10)),
        ),
        None => non_neg(liveness.initial_delay_seconds, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Probe;

    #[test]
    fn budget_comes_from_the_startup_probe_else_the_initial_delay() {
        let liveness = Probe {
            initial_delay_seconds: Some(7),
            ..Probe::default()
        };
        assert_eq!(start_budget_seconds(None, &liveness), 7);
        let startup = Probe {
            initial_delay_seconds: Some(2),
            failure_threshold: Some(30),
            period_seconds: Some(1),
            ..Probe::default()
        };
        assert_eq!(start_budget_seconds(Some(&startup), &liveness), 32);
        // Kubernetes' defaults: 3 failures, every 10 s.
        assert_eq!(start_budget_seconds(Some(&Probe::default()), &liveness), 30);
        assert_eq!(start_budget_seconds(None, &Probe::default()), 0);
    }

    #[test]
    fn probes_round_trip_as_json() {
        let probe = AppProbe {
            container: "app".into(),
            kind: ProbeKind::Liveness,
            action: ProbeAction::HttpGet {
                scheme: "HTTP".into(),
                host: String::new(),
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-Probe".into(), "1".into())],
            },
            timeout_seconds: 1,
            start_budget_seconds: 30,
        };
        let text = serde_json::to_string(&[&probe]).expect("json");
        let back: Vec<AppProbe> = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, vec![probe]);
        for kind in ProbeKind::ALL {
            assert_eq!(ProbeKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(
            app_health_path("app", ProbeKind::Readiness),
            "/app-health/app/readiness"
        );
    }

    #[test]
    fn release_reasons_round_trip_through_the_query() {
        for reason in [ReleaseReason::AppFailed, ReleaseReason::AppStopped] {
            let (path, query) = reason.path_and_query().split_once('?').expect("a query");
            assert_eq!(path, RELEASE_PATH);
            assert_eq!(ReleaseReason::from_query(Some(query)), reason);
        }
        // An older `run` names no reason: it only ever released on failure.
        assert_eq!(ReleaseReason::from_query(None), ReleaseReason::AppFailed);
        assert_eq!(
            ReleaseReason::from_query(Some("x=1&reason=nonsense")),
            ReleaseReason::AppFailed
        );
    }
}

/// The agent's environment: `zen-lead agent` reads each flag from these
/// (src/cli.rs `AgentArgs`). Values come from the pool name or the downward API.
pub mod agent_env {
    pub const POOL: &str = "ZEN_LEAD_POOL";
    pub const POD_NAME: &str = "ZEN_LEAD_POD_NAME";
    pub const POD_NAMESPACE: &str = "ZEN_LEAD_POD_NAMESPACE";
    pub const POD_UID: &str = "ZEN_LEAD_POD_UID";
    pub const IDENTITY: &str = "ZEN_LEAD_IDENTITY";
    /// The policy's `identityStrategy` at admission (`pod` or `custom`), so
    /// the agent never guesses it from whether the annotation is present.
    pub const IDENTITY_STRATEGY: &str = "ZEN_LEAD_IDENTITY_STRATEGY";
    /// `api` turns the agent's API gate on; absent means `start`.
    pub const ACTIVATION: &str = "ZEN_LEAD_ACTIVATION";
    /// Where the gate keeps its CA key (`--gate-state-dir`), so a restarted
    /// agent container is still trusted by apps that loaded `ca.crt` before.
    pub const GATE_STATE_DIR: &str = "ZEN_LEAD_GATE_STATE_DIR";
}
