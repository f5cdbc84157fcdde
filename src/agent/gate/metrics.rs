//! The gate's metrics, on the agent's `/metrics` (prefix `zen_lead_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `class` label: what kind of request it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// GET, HEAD, OPTIONS, watches included.
    Read,
    /// Everything else (exempt and never-persisted writes too).
    Write,
    /// An HTTP/1.1 connection upgrade (exec, attach, port-forward).
    Upgrade,
}

impl RequestClass {
    const ALL: [RequestClass; 3] = [Self::Read, Self::Write, Self::Upgrade];

    fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Upgrade => "upgrade",
        }
    }
}

/// `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; the API server answered (whatever its status code).
    Passed,
    /// A write refused because this replica is a standby.
    Refused,
    /// The API server could not be reached.
    UpstreamError,
    /// A request the gate cannot judge (non-canonical path).
    Invalid,
    /// A write in flight when the term ended, abandoned.
    Cut,
    /// A write refused at once because the gate's budget for buffered write
    /// bodies was spent (503, `Retry-After: 1`).
    Busy,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Self::Passed,
        Self::Refused,
        Self::UpstreamError,
        Self::Invalid,
        Self::Cut,
        Self::Busy,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Refused => "refused",
            Self::UpstreamError => "upstream_error",
            Self::Invalid => "invalid",
            Self::Cut => "cut",
            Self::Busy => "busy",
        }
    }
}

/// How a standby's write that waited for leadership ended (`outcome` of
/// `zen_lead_gate_held_writes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldOutcome {
    /// The pod led before the hold ended: forwarded.
    Passed,
    /// The hold ended without leadership: refused (503).
    Refused,
    /// Too many writes were already waiting: refused at once, not held.
    Full,
    /// The pod led before the hold ended, but the write carried nothing the
    /// API server could check against a stale read (a blind update or
    /// patch): refused with 409 Conflict, so the app reads again.
    Blind,
}

impl HeldOutcome {
    const ALL: [HeldOutcome; 4] = [Self::Passed, Self::Refused, Self::Full, Self::Blind];

    fn label(self) -> &'static str {
        match self {
            HeldOutcome::Passed => "passed",
            HeldOutcome::Refused => "refused",
            HeldOutcome::Full => "full",
            HeldOutcome::Blind => "blind",
        }
    }
}

/// What followed a server-side fencing refusal of a leader's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Refused while this pod leads: sent again after a short wait.
    Retried,
    /// A retry was admitted.
    Passed,
    /// Given to the app: this pod no longer leads, or the retries ran out.
    Returned,
}

impl FenceOutcome {
    const ALL: [FenceOutcome; 3] = [Self::Retried, Self::Passed, Self::Returned];

    fn label(self) -> &'static str {
        match self {
            FenceOutcome::Retried => "retried",
            FenceOutcome::Passed => "passed",
            FenceOutcome::Returned => "returned",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    class: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct GateMetrics {
    requests: Family<Labels, Counter>,
    pub refused_writes: Counter,
    held_writes: Family<HeldLabels, Counter>,
    /// Standby writes waiting for leadership right now.
    pub writes_waiting: Gauge,
    /// TLS connections accepted from the app.
    pub connections: Counter,
    /// Connections opened to the API server (pooled and upgrades).
    pub upstream_connections: Counter,
    /// Writes of this pod, while it led, that the server-side fencing policy
    /// refused (the API server's cache still showed the previous holder),
    /// by what the gate did: `retried` (sent again), `passed` (a retry was
    /// admitted), `returned` (the refusal went to the app).
    fence_refusals: Family<HeldLabels, Counter>,
}

impl GateMetrics {
    /// Registers the metrics. Every label value of the closed label sets
    /// exists from the start at zero, so rates and alerts see the series
    /// before the first event.
    pub fn register(&self, registry: &mut Registry) {
        for class in RequestClass::ALL {
            for outcome in Outcome::ALL {
                self.requests
                    .get_or_create(&labels(class, outcome))
                    .inc_by(0);
            }
        }
        for outcome in HeldOutcome::ALL.map(HeldOutcome::label) {
            self.held_writes
                .get_or_create(&HeldLabels { outcome })
                .inc_by(0);
        }
        for outcome in FenceOutcome::ALL.map(FenceOutcome::label) {
            self.fence_refusals
                .get_or_create(&HeldLabels { outcome })
                .inc_by(0);
        }
        registry.register(
            "gate_requests",
            "Requests through the API gate by class (read, write, upgrade) and outcome (passed, \
             refused, upstream_error, invalid, cut)",
            self.requests.clone(),
        );
        registry.register(
            "gate_refused_writes",
            "Writes the API gate refused because this replica is a standby",
            self.refused_writes.clone(),
        );
        registry.register(
            "gate_held_writes",
            "Standby writes the API gate held waiting for leadership, by how the hold ended \
             (passed: the pod led and the write was forwarded; refused: the hold expired; full: too \
             many writes waiting, refused at once; blind: the pod led but the write had no \
             resourceVersion precondition, refused with 409 so the app reads again)",
            self.held_writes.clone(),
        );
        registry.register(
            "gate_writes_waiting",
            "Standby writes the API gate holds right now, waiting for this pod to lead",
            self.writes_waiting.clone(),
        );
        registry.register(
            "gate_fence_refusals",
            "Writes this pod sent while it led that the server-side fencing policy refused (the \
             API server's cache still showed the previous holder), by what followed (retried: sent \
             again; passed: a retry was admitted; returned: the refusal went to the app)",
            self.fence_refusals.clone(),
        );
        registry.register(
            "gate_connections",
            "TLS connections the API gate accepted from the app",
            self.connections.clone(),
        );
        registry.register(
            "gate_upstream_connections",
            "Connections the API gate opened to the API server",
            self.upstream_connections.clone(),
        );
    }

    /// Counts one server-side fencing refusal of a leader's write (or a
    /// retry that then passed): see [`FenceOutcome`].
    pub fn fence(&self, outcome: FenceOutcome) {
        self.fence_refusals
            .get_or_create(&HeldLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn held(&self, outcome: HeldOutcome) {
        self.held_writes
            .get_or_create(&HeldLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    pub fn count(&self, class: RequestClass, outcome: Outcome) {
        self.requests.get_or_create(&labels(class, outcome)).inc();
    }
}

fn labels(class: RequestClass, outcome: Outcome) -> Labels {
    Labels {
        class: class.label(),
        outcome: outcome.label(),
    }
}
