//! The model's state and transitions.
//!
//! Time is global and advances in ticks of `quantum_ms`. Each candidate reads
//! its own monotonic clock, `t * rate / 1000`, with a rate fixed per run
//! inside the stated bound. A running candidate's timers (a decision that is
//! due, a term's deadline, a request's timeout) fire at the first tick at or
//! after them, before time passes again (scheduling latency under one
//! tick); a frozen candidate's do not. Network steps (a write reaching the
//! API server, its answer, the watch events in transit) take no time but may
//! be put off up to [`Config::net_delay_ms`]: a late watch, a slow answer.
//! Longer silences are the faults: a dropped watch, a failed request (applied
//! or not), a frozen pod.

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use stateright::{Model, Property};
use tokio::time::Instant;
use zen_lead::election::machine::{
    Action, EndReason, Failure, LeadEvent, Machine, MachineConfig, Observation, WriteKind,
};
use zen_lead::election::record::{Record, SpecWrite};
use zen_lead::election::{TimingNames, Timings};

use super::drift::{self, Seen};

/// Lease 3 s, renew deadline 2 s, retry 1 s: client-go's 15:10:2 shape at a
/// scale where a few ticks cover a whole term.
pub fn timings() -> Timings {
    Timings::new(
        Duration::from_millis(3000),
        Duration::from_millis(2000),
        Duration::from_millis(1000),
        TimingNames::POLICY,
    )
    .expect("model timings")
}

const PREFERRED_DEFER_MS: u64 = 300;
/// How long a slow request takes to reach the API server.
pub const SLOW_MS: u64 = 2500;
/// `--release-timeout`.
const RELEASE_TIMEOUT_MS: u64 = 2000;

/// The zero of every candidate's monotonic clock.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn instant(ms: u64) -> Instant {
    base() + Duration::from_millis(ms)
}

/// A fault seeded into the model (not the product) to show that the checker
/// can fail; each must be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// The API server applies a renewal whatever its resourceVersion (a PUT
    /// without one, or a merge patch).
    RenewWithoutVersion,
    /// Followers count a claim from the record's `renewTime` read on their
    /// own wall clock (nodes' wall clocks differ by 1 s here), not from when
    /// they observed it.
    CountFromTimestamp,
    /// A leader counts its term from the answer to its renewal, not from
    /// when it sent it.
    TermFromAnswer,
    /// A release is sent without ending the term first.
    ReleaseWithoutStepDown,
    /// Two candidates with one identity also share the instance (the
    /// identity rule without `holder-instance`).
    SharedInstance,
    /// The controller's own writes restart the followers' countdown (what
    /// the machine did before the holder's part of the record was compared).
    ControllerRestartsCountdown,
    /// Clock rates differ by more than the stated bound (±25 %).
    ClockRatesBeyondBound,
    /// Candidates never see the pause mark (an agent that predates it).
    IgnorePause,
}

/// How many of each fault or event a run may have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Budget {
    pub freezes: u8,
    pub drops: u8,
    pub fails: u8,
    /// Requests the API server takes [`SLOW_MS`] over (a slow etcd).
    pub slows: u8,
    pub touches: u8,
    pub prefers: u8,
    pub shutdowns: u8,
    /// The controller marks the Lease paused (`spec.paused`), and later
    /// unmarks it.
    pub pauses: u8,
}

/// What is explored.
#[derive(Clone, Debug)]
pub struct Config {
    /// `(identity, instance)` per candidate; a repeated identity is the
    /// identity rule's case.
    pub candidates: Vec<(&'static str, &'static str)>,
    /// Clock rates are `1000 ± rate_bound` per mille.
    pub rate_bound: u64,
    /// Global time explored, in ms.
    pub horizon_ms: u64,
    /// One tick of time.
    pub quantum_ms: u64,
    /// The longest a watch event, a request or its answer is in transit.
    pub net_delay_ms: u64,
    /// Each fault and event at most this many times in a run: frozen pods,
    /// dropped watches, failed requests, the controller's metadata writes,
    /// preferred holders named, graceful shutdowns (release on SIGTERM).
    pub budget: Budget,
    /// Only a candidate that leads may be frozen (the case that matters for
    /// safety; a frozen follower only delays itself).
    pub freeze_leaders_only: bool,
    /// How long after faults stop a live candidate must lead.
    pub liveness_ms: u64,
    /// The controller's period of metadata writes while faults are off.
    pub controller_period_ms: u64,
    pub bug: Option<Bug>,
}

impl Config {
    /// The bound `make test` runs.
    pub fn small() -> Self {
        Self {
            candidates: vec![("a", "pod-a"), ("b", "pod-b")],
            rate_bound: 100,
            horizon_ms: 4000,
            quantum_ms: 500,
            net_delay_ms: 500,
            budget: Budget::default(),
            freeze_leaders_only: true,
            liveness_ms: 8000,
            controller_period_ms: 1000,
            bug: None,
        }
    }

    pub fn with_bug(mut self, bug: Bug) -> Self {
        self.bug = Some(bug);
        if bug == Bug::ClockRatesBeyondBound {
            self.rate_bound = 250;
        }
        if bug == Bug::SharedInstance {
            self.candidates = vec![("a", "pod-a"), ("a", "pod-a")];
        }
        self
    }
}

/// The API server's copy of the Lease (linearizable: every request is
/// applied atomically, in one order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stored {
    pub rv: u64,
    pub holder: Option<String>,
    pub instance: Option<String>,
    pub transitions: i32,
    pub preferred: Option<String>,
    /// `zen-lead.io/paused`.
    pub paused: bool,
    /// `renewTime` in wall-clock ms.
    pub renewed_ms: u64,
    /// The version of the holder's write that set `renewTime`: its
    /// nanoseconds, so two writes in one millisecond differ, as the
    /// microseconds of a real Lease do.
    pub renewed_rv: u64,
}

impl Stored {
    pub fn record(&self) -> Record {
        Record {
            uid: "lease-uid".into(),
            resource_version: self.rv.to_string(),
            holder: self.holder.clone(),
            holder_instance: self.instance.clone(),
            transitions: self.transitions,
            preferred: self.preferred.clone(),
            paused: self.paused,
            timings: timings(),
            acquired: None,
            renewed: Some(
                UNIX_EPOCH
                    + Duration::from_millis(self.renewed_ms)
                    + Duration::from_nanos(self.renewed_rv),
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write {
        kind: WriteKind,
        base: String,
        write: SpecWrite,
    },
}

// Held only while a request is in flight: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    Lease(Record),
    Conflict,
}

/// A request in flight: sent at `sent` (the sender's clock), given up at
/// `sent + limit`; `reply` once the API server has applied it; applied and
/// answered by global time `due` unless a fault intervenes. An orphan (given
/// up by its sender) may still be applied until `due`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub op: Op,
    pub due: u64,
    pub sent: u64,
    pub limit: u64,
    pub sent_wall: u64,
    pub reply: Option<Reply>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Life {
    Running,
    /// Shutting down: its release is in flight.
    Stopping,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    pub machine: Machine,
    /// Per mille.
    pub rate: u64,
    /// Wall clock minus global time, ms (used by [`Bug::CountFromTimestamp`]).
    pub wall_skew: i64,
    pub life: Life,
    pub frozen: bool,
    /// Thawed and not yet run: its app may still act on its old term.
    pub thawed: bool,
    /// The app runs (from a `Started` to an `Ended` event).
    pub acting: bool,
    pub connected: bool,
    /// Watch events in transit, each with the global time it arrives by.
    pub events: Vec<(Record, u64)>,
    pub request: Option<Request>,
    /// A write given up by the candidate that the API server may still apply.
    pub orphan: Option<Request>,
    /// Its last write met a conflict and nothing was observed since.
    pub needs_read: bool,
    /// Its own clock's reading at its last transient failure (its back-off).
    pub failed_at: Option<u64>,
}

impl Candidate {
    pub fn live(&self) -> bool {
        self.life == Life::Running && !self.frozen
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    pub t: u64,
    pub candidates: Vec<Candidate>,
    pub lease: Stored,
    pub budget: Budget,
    /// The last step was the API server applying a release.
    pub just_released: Option<usize>,
    /// The lowest candidate whose network steps may still run at this
    /// instant (see [`ElectionModel::network_acts`]).
    pub cursor: usize,
    /// Nothing but due steps has happened at this instant yet: faults and
    /// the controller's writes happen only here, at the start of an instant
    /// (so not again between every two network steps of it).
    pub fresh: bool,
    /// Set while the Lease is marked paused.
    pub pause: Option<PauseWatch>,
}

/// What a pause has seen of the Lease's holder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PauseWatch {
    /// The holder now (`None` once released or cleared: nobody may take it).
    pub holder: Option<String>,
    /// Someone took the Lease while it was marked paused.
    pub broken: bool,
}

impl World {
    pub fn local(&self, i: usize) -> u64 {
        self.t * self.candidates[i].rate / 1000
    }

    pub fn now(&self, i: usize) -> Instant {
        instant(self.local(i))
    }

    fn wall(&self, i: usize) -> u64 {
        self.t.saturating_add_signed(self.candidates[i].wall_skew)
    }

    /// Candidate `i` believes it leads within its own unexpired term.
    pub fn leads(&self, i: usize) -> bool {
        self.candidates[i].machine.leading(self.now(i))
    }
}

/// The model's actions. Faults are marked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// Time passes, to this global instant.
    Tick(u64),
    /// A candidate's election loop runs once (its deadline, then `decide`).
    Step(usize),
    /// The API server applies the candidate's request.
    Apply(usize),
    /// The API server applies a write its sender gave up on.
    ApplyOrphan(usize),
    /// The answer reaches the candidate.
    Answer(usize),
    /// The request's timeout fires before an answer.
    Timeout(usize),
    /// The watch events in transit reach the candidate.
    Deliver(usize),
    /// A dropped watch lists again (and watches from there).
    Relist(usize),
    /// Fault: the candidate's whole pod is frozen.
    Freeze(usize),
    Thaw(usize),
    /// Fault: the watch connection drops; its undelivered events are lost.
    DropWatch(usize),
    /// Fault: the request fails (5xx, reset) whether or not it was applied.
    Fail(usize),
    /// Fault: the request reaches the API server only [`SLOW_MS`] later.
    Slow(usize),
    /// SIGTERM: end the term, release the Lease, exit.
    Shutdown(usize),
    /// The controller writes the Lease's metadata only (fenced pods, labels).
    ControllerTouch,
    /// The controller names a preferred holder (hand-off).
    Prefer(usize),
    /// The controller marks the Lease paused (`true`) or lifts the mark.
    Pause(bool),
}

pub struct ElectionModel {
    pub cfg: Config,
}

fn emit(c: &mut Candidate, ev: Option<LeadEvent>, seen: &mut Seen) {
    if let Some(ev) = ev {
        seen.lead_event(&ev);
        c.acting = matches!(ev, LeadEvent::Started { .. });
    }
}

impl ElectionModel {
    pub fn new(cfg: Config) -> Self {
        Self { cfg }
    }

    fn rates(&self) -> Vec<Vec<u64>> {
        let n = self.cfg.candidates.len();
        let (lo, hi) = (1000 - self.cfg.rate_bound, 1000 + self.cfg.rate_bound);
        // The extremes of the bound are the worst cases: a leader whose
        // clock runs slow (its term lasts longest) against followers whose
        // clocks run fast (they wait least). One start per slow candidate.
        (0..n)
            .map(|slow| (0..n).map(|i| if i == slow { lo } else { hi }).collect())
            .collect()
    }

    fn machine(&self, i: usize) -> Machine {
        let (identity, instance) = self.cfg.candidates[i];
        Machine::new(MachineConfig {
            identity: identity.into(),
            instance: instance.into(),
            can_create: false,
            fixed: None,
            create_timings: timings(),
            preferred_defer: Duration::from_millis(PREFERRED_DEFER_MS),
        })
    }

    pub fn initial(&self, rates: &[u64]) -> World {
        let lease = Stored {
            rv: 1,
            holder: None,
            instance: None,
            transitions: 0,
            preferred: None,
            paused: false,
            renewed_ms: 0,
            renewed_rv: 0,
        };
        let skews = [1000, -1000, 0];
        let candidates = rates
            .iter()
            .enumerate()
            .map(|(i, rate)| Candidate {
                machine: self.machine(i),
                rate: *rate,
                wall_skew: if self.cfg.bug == Some(Bug::CountFromTimestamp) {
                    skews[i % 3]
                } else {
                    0
                },
                life: Life::Running,
                frozen: false,
                thawed: false,
                acting: false,
                connected: true,
                // The watch starts with a list: the Lease as created.
                events: vec![(lease.record(), self.cfg.net_delay_ms)],
                request: None,
                orphan: None,
                needs_read: false,
                failed_at: None,
            })
            .collect();
        World {
            t: 0,
            candidates,
            lease,
            budget: self.cfg.budget,
            just_released: None,
            cursor: 0,
            fresh: true,
            pause: None,
        }
    }

    /// Whether candidate `i`'s loop must run now (time may not pass first).
    pub fn step_due(&self, w: &World, i: usize) -> bool {
        let c = &w.candidates[i];
        if !c.live() {
            return false;
        }
        let now = w.now(i);
        if c.machine.lead_deadline().is_some_and(|d| d <= now) {
            return true;
        }
        c.request.is_none() && !matches!(c.machine.decide(now), Action::Wait(_))
    }

    pub fn timeout_due(&self, w: &World, i: usize) -> bool {
        let c = &w.candidates[i];
        !c.frozen
            && c.life != Life::Stopped
            && c.request
                .as_ref()
                .is_some_and(|r| w.local(i) >= r.sent + r.limit)
    }

    /// What candidate `i`'s next observation of `rec` is stamped with.
    fn observed_at(&self, w: &World, i: usize, rec: &Record) -> Instant {
        let now = w.now(i);
        if self.cfg.bug != Some(Bug::CountFromTimestamp) {
            return now;
        }
        // As old as its renewTime says, by this node's wall clock.
        let renewed = rec
            .renewed
            .and_then(|r| r.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let age = w.wall(i).saturating_sub(renewed);
        let ahead = renewed.saturating_sub(w.wall(i));
        instant((w.local(i) + ahead).saturating_sub(age))
    }

    fn observe(&self, w: &mut World, i: usize, rec: Record, seen: &mut Seen) {
        let at = self.observed_at(w, i, &rec);
        let obs = Observation::Present(rec);
        seen.observation(&obs);
        let c = &mut w.candidates[i];
        c.needs_read = false;
        let ev = c.machine.observe(obs, at);
        emit(c, ev, seen);
    }

    /// The API server's side of a change: every open watch gets the event.
    /// The Lease as a candidate reads it.
    fn shown(&self, lease: &Stored) -> Record {
        let mut rec = lease.record();
        if self.cfg.bug == Some(Bug::IgnorePause) {
            rec.paused = false;
        }
        rec
    }

    fn store(&self, w: &mut World, next: Stored) {
        // While paused, the Lease may keep its holder or lose it, but never
        // gain one (the holder at the pause re-taking it counts too).
        if let Some(p) = w.pause.as_mut() {
            if next.holder.is_some() && next.holder != p.holder {
                p.broken = true;
            }
            p.holder = next.holder.clone();
        }
        w.lease = next;
        let rec = self.shown(&w.lease);
        let due = w.t + self.cfg.net_delay_ms;
        for c in &mut w.candidates {
            if c.connected && c.life == Life::Running {
                c.events.push((rec.clone(), due));
            }
        }
    }

    /// Applies a request at the API server: a compare-and-swap on the
    /// resourceVersion for writes.
    fn apply(&self, w: &mut World, i: usize, req: &Request) -> Reply {
        let Op::Write { kind, base, write } = &req.op else {
            return Reply::Lease(self.shown(&w.lease));
        };
        let unchecked = self.cfg.bug == Some(Bug::RenewWithoutVersion) && *kind == WriteKind::Renew;
        if *base != w.lease.rv.to_string() && !unchecked {
            return Reply::Conflict;
        }
        let next = Stored {
            rv: w.lease.rv + 1,
            holder: write.holder.clone(),
            instance: write.holder.as_ref().and(write.instance.clone()),
            transitions: write.transitions,
            preferred: w.lease.preferred.clone(),
            paused: w.lease.paused,
            renewed_ms: req.sent_wall,
            renewed_rv: w.lease.rv + 1,
        };
        self.store(w, next);
        if *kind == WriteKind::Release {
            w.just_released = Some(i);
        }
        Reply::Lease(self.shown(&w.lease))
    }

    fn send(&self, w: &mut World, i: usize, op: Op, limit: Duration) {
        let sent = w.local(i);
        let sent_wall = w.wall(i);
        let due = w.t + self.cfg.net_delay_ms;
        w.candidates[i].request = Some(Request {
            op,
            due,
            sent,
            limit: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            sent_wall,
            reply: None,
        });
    }

    /// One turn of the driver's loop: the term's deadline, then `decide`;
    /// with a request in flight only the deadline (`during_term`).
    fn step(&self, w: &mut World, i: usize, seen: &mut Seen) {
        let now = w.now(i);
        let c = &mut w.candidates[i];
        c.thawed = false;
        let ev = c.machine.expire(now);
        emit(c, ev, seen);
        if c.request.is_some() {
            return;
        }
        let action = c.machine.decide(now);
        seen.action(&action);
        match action {
            Action::Wait(_) | Action::Create(_) => {}
            Action::Read => {
                let limit = c.machine.request_timeout();
                self.send(w, i, Op::Read, limit);
            }
            Action::Replace {
                kind,
                base_resource_version,
                write,
            } => {
                let replace = Action::Replace {
                    kind,
                    base_resource_version: base_resource_version.clone(),
                    write: write.clone(),
                };
                if !(self.cfg.bug == Some(Bug::ReleaseWithoutStepDown)
                    && kind == WriteKind::Release)
                {
                    let ev = c.machine.begin(&replace, now);
                    emit(c, ev, seen);
                }
                let limit = c.machine.write_timeout(kind, now);
                let op = Op::Write {
                    kind,
                    base: base_resource_version,
                    write,
                };
                self.send(w, i, op, limit);
            }
        }
    }

    fn answer(&self, w: &mut World, i: usize, seen: &mut Seen) {
        let Some(req) = w.candidates[i].request.take() else {
            return;
        };
        let now = w.now(i);
        let stopping = w.candidates[i].life == Life::Stopping;
        match (req.op, req.reply) {
            (_, None) => {}
            (Op::Read, Some(Reply::Lease(rec))) => self.observe(w, i, rec, seen),
            (Op::Write { .. }, Some(Reply::Lease(rec))) if stopping => {
                self.observe(w, i, rec, seen);
            }
            (Op::Write { kind, .. }, Some(Reply::Lease(rec))) => {
                let sent = if self.cfg.bug == Some(Bug::TermFromAnswer) {
                    now
                } else {
                    instant(req.sent)
                };
                let c = &mut w.candidates[i];
                c.needs_read = false;
                let ev = c.machine.write_ok(kind, sent, rec, now);
                emit(c, ev, seen);
            }
            (_, Some(Reply::Conflict)) => {
                seen.failure(Failure::Stale);
                let c = &mut w.candidates[i];
                c.machine.write_failed(Failure::Stale, now);
                c.needs_read = true;
            }
        }
        if stopping {
            w.candidates[i].life = Life::Stopped;
        }
    }

    /// The request ends without an answer (its timeout, or a fault): a
    /// write not yet applied may still be.
    fn give_up(&self, w: &mut World, i: usize, seen: &mut Seen) {
        let now = w.now(i);
        let local = w.local(i);
        let c = &mut w.candidates[i];
        let Some(req) = c.request.take() else {
            return;
        };
        if req.reply.is_none() && matches!(req.op, Op::Write { .. }) {
            c.orphan = Some(req);
        }
        if c.life == Life::Stopping {
            c.life = Life::Stopped;
            return;
        }
        seen.failure(Failure::Transient);
        c.machine.write_failed(Failure::Transient, now);
        c.failed_at = Some(local);
    }

    fn shutdown(&self, w: &mut World, i: usize, seen: &mut Seen) {
        w.budget.shutdowns -= 1;
        let now = w.now(i);
        let c = &mut w.candidates[i];
        let ev = c.machine.step_down(now, EndReason::Shutdown);
        emit(c, ev, seen);
        c.connected = false;
        c.events.clear();
        match c.machine.release_action() {
            Some(Action::Replace {
                kind,
                base_resource_version,
                write,
            }) => {
                c.life = Life::Stopping;
                let op = Op::Write {
                    kind,
                    base: base_resource_version,
                    write,
                };
                self.send(w, i, op, Duration::from_millis(RELEASE_TIMEOUT_MS));
            }
            _ => c.life = Life::Stopped,
        }
    }

    fn controller_write(&self, w: &mut World, preferred: Option<String>) {
        let mut next = w.lease.clone();
        next.rv += 1;
        if let Some(p) = preferred {
            next.preferred = Some(p);
        }
        if self.cfg.bug == Some(Bug::ControllerRestartsCountdown) {
            next.renewed_rv = next.rv;
        }
        self.store(w, next);
    }

    /// Applies `act` to `w`, noting which machine variants it drove.
    pub fn apply_act(&self, w: &mut World, act: &Act, seen: &mut Seen) {
        w.just_released = None;
        w.fresh = match act {
            Act::Tick(_) => true,
            Act::Step(_) | Act::Timeout(_) => w.fresh,
            _ => false,
        };
        match *act {
            Act::Apply(i)
            | Act::ApplyOrphan(i)
            | Act::Answer(i)
            | Act::Deliver(i)
            | Act::Relist(i) => w.cursor = i,
            _ => {}
        }
        match *act {
            Act::Tick(to) => {
                w.t = to;
                w.cursor = 0;
                // The API server never got it (a write lost in transit).
                for c in &mut w.candidates {
                    if c.orphan.as_ref().is_some_and(|o| o.due < to) {
                        c.orphan = None;
                    }
                }
            }
            Act::Step(i) => self.step(w, i, seen),
            Act::Apply(i) => {
                if let Some(req) = w.candidates[i].request.clone() {
                    let reply = self.apply(w, i, &req);
                    if let Some(r) = &mut w.candidates[i].request {
                        r.reply = Some(reply);
                    }
                }
            }
            Act::ApplyOrphan(i) => {
                if let Some(req) = w.candidates[i].orphan.take() {
                    self.apply(w, i, &req);
                }
            }
            Act::Answer(i) => self.answer(w, i, seen),
            Act::Timeout(i) => self.give_up(w, i, seen),
            Act::Fail(i) => {
                w.budget.fails -= 1;
                self.give_up(w, i, seen);
            }
            Act::Deliver(i) => {
                // The driver takes in every event that has arrived before it
                // decides again.
                let events = std::mem::take(&mut w.candidates[i].events);
                for (rec, _) in events {
                    self.observe(w, i, rec, seen);
                }
            }
            Act::Relist(i) => {
                let rec = self.shown(&w.lease);
                let c = &mut w.candidates[i];
                c.connected = true;
                c.events.clear();
                self.observe(w, i, rec, seen);
            }
            Act::Slow(i) => {
                w.budget.slows -= 1;
                let due = w.t + SLOW_MS;
                if let Some(r) = &mut w.candidates[i].request {
                    r.due = due;
                }
            }
            Act::Freeze(i) => {
                w.budget.freezes -= 1;
                w.candidates[i].frozen = true;
            }
            Act::Thaw(i) => {
                let c = &mut w.candidates[i];
                c.frozen = false;
                c.thawed = true;
            }
            Act::DropWatch(i) => {
                w.budget.drops -= 1;
                let c = &mut w.candidates[i];
                c.connected = false;
                c.events.clear();
            }
            Act::Shutdown(i) => self.shutdown(w, i, seen),
            Act::ControllerTouch => {
                w.budget.touches = w.budget.touches.saturating_sub(1);
                self.controller_write(w, None);
            }
            Act::Prefer(j) => {
                w.budget.prefers -= 1;
                let identity = self.cfg.candidates[j].0.to_owned();
                self.controller_write(w, Some(identity));
            }
            Act::Pause(on) => {
                w.budget.pauses -= 1;
                let mut next = w.lease.clone();
                next.rv += 1;
                next.paused = on;
                w.pause = on.then(|| PauseWatch {
                    holder: next.holder.clone(),
                    broken: false,
                });
                self.store(w, next);
            }
        }
    }

    /// Network and server steps (no time, no faults) possible in `w`.
    ///
    /// Within one instant the candidates' network steps go in index order
    /// (from `w.cursor` on); a step of a lower index waits for the next tick,
    /// or, if it may not wait (overdue), runs after the others in a second
    /// round, again in index order. The orders this leaves out differ only
    /// in the order of same-instant steps of different candidates, which
    /// touch different candidates; what the API server applies first is
    /// still explored both ways, one of them a tick apart.
    pub fn network_acts(&self, w: &World, out: &mut Vec<Act>) {
        for i in w.cursor..w.candidates.len() {
            self.candidate_network_acts(w, i, false, out);
        }
        if out.is_empty() {
            for i in 0..w.cursor {
                self.candidate_network_acts(w, i, true, out);
                if !out.is_empty() {
                    return;
                }
            }
        }
    }

    /// Candidate `i`'s network steps (`overdue_only`: those that may not
    /// wait for the next tick).
    fn candidate_network_acts(&self, w: &World, i: usize, overdue_only: bool, out: &mut Vec<Act>) {
        let c = &w.candidates[i];
        if let Some(r) = &c.request {
            let ok = !overdue_only || r.due <= w.t;
            if r.reply.is_none() && ok {
                out.push(Act::Apply(i));
            } else if r.reply.is_some() && !c.frozen && w.local(i) <= r.sent + r.limit && ok {
                out.push(Act::Answer(i));
            }
        }
        if overdue_only {
            if c.live() && c.events.first().is_some_and(|e| e.1 <= w.t) {
                out.push(Act::Deliver(i));
            }
            return;
        }
        if c.orphan.as_ref().is_some_and(|o| w.t <= o.due) {
            out.push(Act::ApplyOrphan(i));
        }
        if c.live() && !c.events.is_empty() {
            out.push(Act::Deliver(i));
        }
        if c.live() && !c.connected {
            out.push(Act::Relist(i));
        }
    }

    /// The candidates' own steps that are due now.
    pub fn due_acts(&self, w: &World, out: &mut Vec<Act>) {
        for i in 0..w.candidates.len() {
            if self.step_due(w, i) {
                out.push(Act::Step(i));
            }
            if self.timeout_due(w, i) {
                out.push(Act::Timeout(i));
            }
        }
    }

    /// Where a tick goes, if time may pass at all.
    pub fn tick(&self, w: &World, until: u64) -> Option<u64> {
        if w.t >= until {
            return None;
        }
        let mut due = Vec::new();
        self.due_acts(w, &mut due);
        if !due.is_empty() {
            return None;
        }
        // Network steps overdue: they happen before time passes. The API
        // server applies a frozen pod's request too; only the answer and
        // the watch wait for the thaw.
        let overdue = w.candidates.iter().any(|c| {
            let request = c
                .request
                .as_ref()
                .is_some_and(|r| r.due <= w.t && (r.reply.is_none() || !c.frozen));
            let watch = !c.frozen
                && c.connected
                && c.life == Life::Running
                && c.events.first().is_some_and(|e| e.1 <= w.t);
            request || watch
        });
        (!overdue).then_some((w.t + self.cfg.quantum_ms).min(until))
    }

    fn fault_acts(&self, w: &World, out: &mut Vec<Act>) {
        let b = w.budget;
        for (i, c) in w.candidates.iter().enumerate() {
            if c.frozen {
                out.push(Act::Thaw(i));
            }
            if c.life == Life::Stopped {
                continue;
            }
            let may_freeze = !self.cfg.freeze_leaders_only || w.leads(i);
            if b.freezes > 0 && !c.frozen && may_freeze {
                out.push(Act::Freeze(i));
            }
            if b.drops > 0 && c.connected && c.life == Life::Running {
                out.push(Act::DropWatch(i));
            }
            if b.fails > 0 && c.request.is_some() && !c.frozen {
                out.push(Act::Fail(i));
            }
            if b.slows > 0 && c.request.as_ref().is_some_and(|r| r.reply.is_none()) {
                out.push(Act::Slow(i));
            }
            if b.shutdowns > 0 && c.live() && c.request.is_none() {
                out.push(Act::Shutdown(i));
            }
        }
        if b.touches > 0 {
            out.push(Act::ControllerTouch);
        }
        if b.pauses > 0 {
            out.push(Act::Pause(!w.lease.paused));
        }
        for j in 0..w.candidates.len() {
            let identity = self.cfg.candidates[j].0;
            let named = w.lease.preferred.as_deref() == Some(identity);
            let first_of_identity = self.cfg.candidates[..j].iter().all(|c| c.0 != identity);
            if b.prefers > 0 && !named && first_of_identity {
                out.push(Act::Prefer(j));
            }
        }
    }
}

impl Model for ElectionModel {
    type State = World;
    type Action = Act;

    fn init_states(&self) -> Vec<World> {
        self.rates().iter().map(|r| self.initial(r)).collect()
    }

    fn actions(&self, w: &World, out: &mut Vec<Act>) {
        // A candidate's due step touches only that candidate, so it commutes
        // with everything the others and the API server do: running the due
        // steps first, one candidate at a time in a fixed order, explores the
        // same outcomes without every order of them.
        self.due_acts(w, out);
        if let Some(first) = out.first().cloned() {
            out.retain(|a| *a == first);
            return;
        }
        self.network_acts(w, out);
        if w.fresh {
            self.fault_acts(w, out);
        }
        if let Some(to) = self.tick(w, self.cfg.horizon_ms) {
            out.push(Act::Tick(to));
        }
    }

    fn next_state(&self, w: &World, act: Act) -> Option<World> {
        let mut next = w.clone();
        self.apply_act(&mut next, &act, &mut drift::Seen::default());
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        super::props::properties()
    }
}
