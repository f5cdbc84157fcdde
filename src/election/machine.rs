//! The election's decisions, free of I/O: given what was last observed of the
//! Lease, when (on the local monotonic clock) it last changed, and who we
//! are, what to do next. The driver ([`super::driver`]) performs the actions
//! and feeds the outcomes back.
//!
//! Safety rests on two rules:
//! - every write is a compare-and-swap on the observed `resourceVersion`, so
//!   a write succeeds only if nobody else wrote since we looked;
//! - a leader whose last successful renewal was *sent* at `s` leads until at
//!   most `s + renewDeadline`, while anyone else may take over no earlier than
//!   `leaseDuration` after *observing* that renewal (which happens after `s`).
//!   `renewDeadline < leaseDuration` leaves the difference as margin.
//!
//! And identity safety rests on a third: a Lease counts as ours only when it
//! names both our identity and our instance (the agent's pod UID). Another
//! live candidate that shares our identity (the same `zen-lead/identity` on
//! two pods) is treated like any other holder: its claim is waited out, never
//! "re-claimed". Only a restart of the same instance (the agent container of
//! the same pod) takes its own Lease back without waiting.
//!
//! A maintenance pause (the controller's `zen-lead.io/paused` on the Lease)
//! only takes acquisitions away: while the last record seen is paused, a
//! candidate that is not its holder neither acquires nor creates the Lease,
//! and the holder ignores hand-off requests but renews as usual.

use std::time::Duration;

use tokio::time::Instant;

use super::Timings;
use super::record::{Record, SpecWrite, lease_duration_seconds};

/// Fixed settings of one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MachineConfig {
    /// Holder identity written into the Lease.
    pub identity: String,
    /// Which instance of `identity` we are (the pod UID for the agent),
    /// written as `zen-lead.io/holder-instance` beside the holder.
    pub instance: String,
    /// May this candidate create the Lease when it is missing?
    pub can_create: bool,
    /// `Some` (lock): our own timings, written as `leaseDurationSeconds` on
    /// every acquire/renew. `None` (agent): the Lease's timings rule.
    pub fixed: Option<Timings>,
    /// Timings for a Lease we create without having seen one.
    pub create_timings: Timings,
    /// How long non-preferred candidates wait on a free Lease that names a
    /// preferred holder, so that one can take it first.
    pub preferred_defer: Duration,
}

/// One observation of the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Present(Record),
    /// The Lease does not exist. `continuous`: seen as a watch DELETED event
    /// that directly follows what we observed before (nothing was missed).
    /// `resource_version`: of the deletion or of the list that found nothing.
    Missing {
        continuous: bool,
        resource_version: Option<String>,
    },
}

/// What kind of write an action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteKind {
    Create,
    Acquire,
    Renew,
    Release,
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GET the Lease (after a conflict, or before anything is known).
    Read,
    /// POST a new Lease.
    Create(SpecWrite),
    /// PUT with `metadata.resourceVersion = base_resource_version`.
    Replace {
        kind: WriteKind,
        base_resource_version: String,
        write: SpecWrite,
    },
    /// Nothing to do until this instant (`None`: until the next watch event).
    Wait(Option<Instant>),
}

/// Why a write failed, as far as the decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 409 (changed since observed, or already exists) or 404 on a PUT:
    /// our view is stale; re-read, never overwrite.
    Stale,
    /// Timeout, connection error, 5xx, 429...: retry after a short pause.
    Transient,
}

/// Why a term ended, for logs and the leadership log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// We cleared the holder ourselves (hand-off to a preferred candidate).
    Released,
    /// No renewal succeeded within renewDeadline.
    DeadlinePassed,
    /// The Lease names someone else (written by hand or by the controller).
    Superseded,
    /// The process is shutting down.
    Shutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::DeadlinePassed => "deadline_passed",
            EndReason::Superseded => "superseded",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// A change of our own leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadEvent {
    Started { token: i32, at: Instant },
    Ended { at: Instant, reason: EndReason },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Prior {
    /// The Lease was free when it went away.
    Free,
    /// It was ours, and nobody can have taken it since.
    Mine,
    /// Someone (known or not) may hold a claim until this instant.
    Claimed { until: Instant },
}

// One per process and never moved in a hot path: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum View {
    Unknown,
    Present {
        rec: Record,
        /// When the holder's part of the record or the preferred holder last
        /// changed (a free Lease's preferred-holder deferral counts from it).
        changed_at: Instant,
        /// When the holder's part last changed (holder, instance, renewTime,
        /// leaseTransitions): the countdown of its claim starts here.
        counted_from: Instant,
        /// The holder's claim ends here (local monotonic clock).
        claim_until: Instant,
        /// Longest lease duration seen for the current holder: a shortened
        /// leaseDurationSeconds applies from the next holder on.
        claim_ld: Duration,
        /// A free Lease may not be taken before this (a claim carried over a
        /// deletion).
        free_not_before: Instant,
    },
    Missing {
        prior: Prior,
    },
}

/// What [`Machine::count_claim`] makes of a new observation.
struct Count {
    claim_ld: Duration,
    free_not_before: Instant,
    /// Start of the countdown of the holder's claim.
    from: Instant,
    changed_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Lead {
    token: i32,
    valid_until: Instant,
    next_renew: Instant,
    last_sent: Instant,
    timings: Timings,
    preferred_seen: Option<String>,
}

/// The election state of one candidate (`Hash` and `Eq`: the model checker
/// in tests/model.rs tells states apart by them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Machine {
    cfg: MachineConfig,
    view: View,
    lead: Option<Lead>,
    stale: bool,
    backoff_until: Option<Instant>,
    /// Highest resourceVersion seen (when numeric): older observations that
    /// arrive late (a slow watch event after our own write) are ignored.
    high_water: Option<u64>,
    /// Last `leaseTransitions` seen, so a re-created Lease continues the count.
    last_transitions: Option<i32>,
    /// Last lease duration seen, for claims of unknown holders.
    known_ld: Duration,
    /// Until then we do not lead: a term we hold is released, and a free
    /// Lease is left to the others (`zen-lead run`'s app failed here).
    stand_down_until: Option<Instant>,
    /// The last record seen was paused. Kept while the Lease is missing, so
    /// a deleted paused Lease is not re-created as a way around the pause.
    paused_seen: bool,
}

fn later(a: Instant, b: Instant) -> Instant {
    if a > b { a } else { b }
}

fn earlier(a: Instant, b: Instant) -> Instant {
    if a < b { a } else { b }
}

/// The CAS write that clears the holder of `rec` (a voluntary release).
fn release_of(rec: &Record) -> Action {
    Action::Replace {
        kind: WriteKind::Release,
        base_resource_version: rec.resource_version.clone(),
        write: SpecWrite {
            holder: None,
            instance: None,
            transitions: rec.transitions,
            new_term: false,
            lease_duration_seconds: None,
        },
    }
}

impl Machine {
    pub fn new(cfg: MachineConfig) -> Self {
        let known_ld = cfg.fixed.unwrap_or(cfg.create_timings).lease_duration();
        Self {
            cfg,
            view: View::Unknown,
            lead: None,
            stale: false,
            backoff_until: None,
            high_water: None,
            last_transitions: None,
            known_ld,
            stand_down_until: None,
            paused_seen: false,
        }
    }

    /// Stand down until `until` (`None`: campaign again): release our term
    /// at the next step and acquire nothing before then, so another
    /// candidate takes over. If none does, we may lead again afterwards.
    pub fn stand_down(&mut self, until: Option<Instant>) {
        self.stand_down_until = until;
    }

    fn standing_down(&self, now: Instant) -> Option<Instant> {
        self.stand_down_until.filter(|until| now < *until)
    }

    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    /// Whether `rec` names us: our identity *and* our instance. A record
    /// without an instance (written by client-go or an older zen-lead) is
    /// never ours, so it is waited out like any other holder's.
    fn holds(&self, rec: &Record) -> bool {
        rec.holder.as_deref() == Some(self.cfg.identity.as_str())
            && rec.holder_instance.as_deref() == Some(self.cfg.instance.as_str())
    }

    /// True while we lead (`now` before the end of our term).
    pub fn leading(&self, now: Instant) -> bool {
        self.lead.as_ref().is_some_and(|l| now < l.valid_until)
    }

    /// End of our current term unless a renewal extends it.
    pub fn lead_deadline(&self) -> Option<Instant> {
        self.lead.as_ref().map(|l| l.valid_until)
    }

    /// Fencing token of our term.
    pub fn token(&self) -> Option<i32> {
        self.lead.as_ref().map(|l| l.token)
    }

    /// The last observed record (`None`: missing or not yet known).
    pub fn record(&self) -> Option<&Record> {
        match &self.view {
            View::Present { rec, .. } => Some(rec),
            _ => None,
        }
    }

    /// Whether anything about the Lease is known yet.
    pub fn observed(&self) -> bool {
        !matches!(self.view, View::Unknown)
    }

    /// The timings in force for us.
    pub fn timings(&self) -> Timings {
        if let Some(fixed) = self.cfg.fixed {
            return fixed;
        }
        match &self.view {
            View::Present { rec, .. } => rec.timings,
            _ => self
                .lead
                .as_ref()
                .map_or(self.cfg.create_timings, |l| l.timings),
        }
    }

    /// Per-request timeout: far below renewDeadline, so the leader gets
    /// several attempts before its deadline.
    pub fn request_timeout(&self) -> Duration {
        let t = self.timings();
        t.retry_period()
            .min(t.renew_deadline() / 3)
            .max(Duration::from_millis(100))
    }

    /// How long a write may take. A renewal may use the rest of our term:
    /// cutting it off earlier would only throw away an answer that still
    /// extends the term, so a slow API server (answers slower than the retry
    /// period but inside the renew deadline) never costs the leadership. Any
    /// other write gets [`Machine::request_timeout`].
    pub fn write_timeout(&self, kind: WriteKind, now: Instant) -> Duration {
        let short = self.request_timeout();
        match (kind, self.lead_deadline()) {
            (WriteKind::Renew, Some(deadline)) => {
                short.max(deadline.saturating_duration_since(now))
            }
            _ => short,
        }
    }

    fn failure_backoff(&self) -> Duration {
        (self.timings().retry_period() / 2)
            .min(Duration::from_millis(500))
            .max(Duration::from_millis(50))
    }

    /// Is this observation older than one already seen?
    fn outdated(&self, resource_version: Option<&str>) -> bool {
        match (
            self.high_water,
            resource_version.and_then(|v| v.parse::<u64>().ok()),
        ) {
            (Some(high), Some(rv)) => rv < high,
            _ => false,
        }
    }

    fn raise_high_water(&mut self, resource_version: Option<&str>) {
        if let Some(rv) = resource_version.and_then(|v| v.parse::<u64>().ok()) {
            self.high_water = Some(self.high_water.map_or(rv, |h| h.max(rv)));
        }
    }

    /// Takes in one observation (watch event, list or read).
    pub fn observe(&mut self, obs: Observation, now: Instant) -> Option<LeadEvent> {
        match obs {
            Observation::Present(rec) => self.observe_record(rec, now),
            Observation::Missing {
                continuous,
                resource_version,
            } => {
                if self.outdated(resource_version.as_deref()) {
                    return None;
                }
                self.raise_high_water(resource_version.as_deref());
                self.stale = false;
                let prior = if self.leading(now) {
                    Prior::Mine
                } else {
                    match (&self.view, continuous) {
                        (View::Missing { prior }, _) => prior.clone(),
                        (
                            View::Present {
                                rec, claim_until, ..
                            },
                            true,
                        ) => match rec.holder.as_deref() {
                            None => Prior::Free,
                            Some(_) if self.holds(rec) => Prior::Mine,
                            Some(_) => Prior::Claimed {
                                until: *claim_until,
                            },
                        },
                        // Something may have happened that we did not see:
                        // assume a fresh claim of the longest known duration.
                        _ => Prior::Claimed {
                            until: now + self.known_ld,
                        },
                    }
                };
                self.view = View::Missing { prior };
                None
            }
        }
    }

    fn observe_record(&mut self, rec: Record, now: Instant) -> Option<LeadEvent> {
        if self.outdated(Some(&rec.resource_version)) {
            return None;
        }
        self.raise_high_water(Some(&rec.resource_version));
        self.stale = false;
        self.last_transitions = Some(rec.transitions);
        self.known_ld = rec.timings.lease_duration();
        self.paused_seen = rec.paused;
        // None: the same record; nothing changed, the clock keeps running.
        let count = self.count_claim(&rec, now)?;
        let claim_until = later(count.from + count.claim_ld, count.free_not_before);
        let mine = self.holds(&rec);
        let mut event = None;
        if let Some(lead) = &mut self.lead {
            if mine {
                if self.cfg.fixed.is_none() && lead.timings != rec.timings {
                    // Changed timings count from our last renewal; a shorter
                    // deadline can only shorten the term.
                    lead.timings = rec.timings;
                    lead.valid_until = earlier(
                        lead.valid_until,
                        lead.last_sent + rec.timings.renew_deadline(),
                    );
                    lead.next_renew =
                        earlier(lead.next_renew, lead.last_sent + rec.timings.retry_period());
                }
                // A hand-off named while paused is dropped, not deferred:
                // it would otherwise run the moment the pool is resumed.
                if rec.preferred.is_none()
                    || rec.paused
                    || rec.preferred.as_deref() == Some(self.cfg.identity.as_str())
                {
                    lead.preferred_seen = rec.preferred.clone();
                }
            } else {
                // Noticed late (a paused process), the term still ended at
                // its deadline: that is what the API reported meanwhile.
                event = Some(LeadEvent::Ended {
                    at: earlier(now, lead.valid_until),
                    reason: EndReason::Superseded,
                });
                self.lead = None;
            }
        }
        self.view = View::Present {
            rec,
            changed_at: count.changed_at,
            counted_from: count.from,
            claim_until,
            claim_ld: count.claim_ld,
            free_not_before: count.free_not_before,
        };
        event
    }

    /// How a newly observed `rec` counts (`None`: the record already seen).
    /// Only the holder's own writes restart the countdown: the controller
    /// writes the Lease on its own (the fencing label, the fenced-pods list),
    /// and a controller writing more often than the lease duration must not
    /// keep an expired Lease from ever being taken.
    fn count_claim(&self, rec: &Record, now: Instant) -> Option<Count> {
        let fresh = |free_not_before| Count {
            claim_ld: rec.timings.lease_duration(),
            free_not_before,
            from: now,
            changed_at: now,
        };
        let View::Present {
            rec: old,
            changed_at,
            counted_from,
            claim_ld,
            free_not_before,
            ..
        } = &self.view
        else {
            return Some(match &self.view {
                View::Missing {
                    prior: Prior::Claimed { until },
                } => fresh(*until),
                _ => fresh(now),
            });
        };
        if old.resource_version == rec.resource_version && old.uid == rec.uid {
            return None;
        }
        let same_holder = old.holder.is_some()
            && old.holder == rec.holder
            && old.holder_instance == rec.holder_instance;
        let ld = if same_holder {
            (*claim_ld).max(rec.timings.lease_duration())
        } else {
            rec.timings.lease_duration()
        };
        if old.uid != rec.uid {
            return Some(Count {
                claim_ld: ld,
                ..fresh(now)
            });
        }
        // Without a renewTime a renewal cannot be told from another write:
        // every change counts, as before.
        let same_claim = old.holder == rec.holder
            && old.holder_instance == rec.holder_instance
            && old.transitions == rec.transitions
            && old.renewed.is_some()
            && old.renewed == rec.renewed;
        Some(Count {
            claim_ld: ld,
            free_not_before: *free_not_before,
            from: if same_claim { *counted_from } else { now },
            changed_at: if same_claim && old.preferred == rec.preferred {
                *changed_at
            } else {
                now
            },
        })
    }

    /// Ends our term if its deadline has passed. The end is reported at the
    /// deadline itself, even when noticed later (a paused process).
    pub fn expire(&mut self, now: Instant) -> Option<LeadEvent> {
        let lead = self.lead.as_ref()?;
        if now < lead.valid_until {
            return None;
        }
        let at = lead.valid_until;
        self.lead = None;
        Some(LeadEvent::Ended {
            at,
            reason: EndReason::DeadlinePassed,
        })
    }

    /// Ends our term now (shutdown), before the release is sent.
    pub fn step_down(&mut self, now: Instant, reason: EndReason) -> Option<LeadEvent> {
        self.lead.take().map(|lead| LeadEvent::Ended {
            at: earlier(now, lead.valid_until),
            reason,
        })
    }

    /// Call just before performing `action`: a release ends our term first,
    /// so we stop acting before anyone else can start.
    pub fn begin(&mut self, action: &Action, now: Instant) -> Option<LeadEvent> {
        match action {
            Action::Replace {
                kind: WriteKind::Release,
                ..
            } => self.step_down(now, EndReason::Released),
            _ => None,
        }
    }

    /// The write that clears our name from the Lease, if it names us.
    pub fn release_action(&self) -> Option<Action> {
        let View::Present { rec, .. } = &self.view else {
            return None;
        };
        self.holds(rec).then(|| release_of(rec))
    }

    fn fixed_lease_seconds(&self) -> Option<i32> {
        self.cfg
            .fixed
            .map(|t| lease_duration_seconds(t.lease_duration()))
    }

    /// The next step at `now`. Call [`Machine::expire`] first.
    pub fn decide(&self, now: Instant) -> Action {
        if let Some(until) = self.backoff_until
            && now < until
        {
            let until = self.lead_deadline().map_or(until, |d| earlier(d, until));
            return Action::Wait(Some(until));
        }
        if self.stale || matches!(self.view, View::Unknown) {
            return Action::Read;
        }
        if let Some(lead) = &self.lead {
            return self.decide_leading(lead, now);
        }
        if let Some(until) = self.standing_down(now) {
            return Action::Wait(Some(until));
        }
        match &self.view {
            View::Unknown => Action::Read,
            View::Missing { prior } => self.decide_missing(prior, now),
            View::Present {
                rec,
                changed_at,
                claim_until,
                free_not_before,
                ..
            } => self.decide_present(rec, *changed_at, *claim_until, *free_not_before, now),
        }
    }

    /// [`Machine::decide`] while we hold a term: release, renew or wait.
    fn decide_leading(&self, lead: &Lead, now: Instant) -> Action {
        let me = self.cfg.identity.as_str();
        match &self.view {
            View::Present { rec, .. } => {
                let preferred_other = rec
                    .preferred
                    .as_deref()
                    .is_some_and(|p| p != me && rec.preferred != lead.preferred_seen);
                // A stand-down (`process`: the app failed) does not release a
                // paused Lease: nobody could take it until the resume, and the
                // restarted app runs again in this term.
                let standing_down = self.standing_down(now).is_some() && !rec.paused;
                if preferred_other || standing_down {
                    release_of(rec)
                } else if now >= lead.next_renew {
                    Action::Replace {
                        kind: WriteKind::Renew,
                        base_resource_version: rec.resource_version.clone(),
                        write: SpecWrite {
                            holder: Some(me.to_owned()),
                            instance: Some(self.cfg.instance.clone()),
                            transitions: rec.transitions,
                            new_term: false,
                            lease_duration_seconds: self.fixed_lease_seconds(),
                        },
                    }
                } else {
                    Action::Wait(Some(earlier(lead.next_renew, lead.valid_until)))
                }
            }
            View::Missing { .. } if self.cfg.can_create => Action::Create(SpecWrite {
                holder: Some(me.to_owned()),
                instance: Some(self.cfg.instance.clone()),
                transitions: lead.token,
                new_term: false,
                lease_duration_seconds: self.fixed_lease_seconds(),
            }),
            _ => Action::Wait(Some(lead.valid_until)),
        }
    }

    /// [`Machine::decide`] without a term while the Lease is missing: create
    /// it once any claim carried over the deletion has run out.
    fn decide_missing(&self, prior: &Prior, now: Instant) -> Action {
        if !self.cfg.can_create || self.paused_seen {
            return Action::Wait(None);
        }
        let create = Action::Create(SpecWrite {
            holder: Some(self.cfg.identity.clone()),
            instance: Some(self.cfg.instance.clone()),
            transitions: self.last_transitions.map_or(0, |t| t.saturating_add(1)),
            new_term: true,
            // Agents keep the duration of the Lease they knew (the
            // driver uses create_timings for a Lease never seen).
            lease_duration_seconds: self.fixed_lease_seconds(),
        });
        match prior {
            Prior::Free | Prior::Mine => create,
            Prior::Claimed { until } if now >= *until => create,
            Prior::Claimed { until } => Action::Wait(Some(*until)),
        }
    }

    /// [`Machine::decide`] without a term while the Lease exists: acquire it
    /// when free (after any preferred deferral), ours, or its claim ran out.
    fn decide_present(
        &self,
        rec: &Record,
        changed_at: Instant,
        claim_until: Instant,
        free_not_before: Instant,
        now: Instant,
    ) -> Action {
        let me = self.cfg.identity.as_str();
        if rec.paused && !self.holds(rec) {
            // Paused: only a change of the Lease (the resume) can let us in.
            return Action::Wait(None);
        }
        match rec.holder.as_deref() {
            None => {
                let mut at = free_not_before;
                if rec.preferred.as_deref().is_some_and(|p| p != me) {
                    at = later(at, changed_at + self.cfg.preferred_defer);
                }
                if now >= at {
                    self.acquire_of(rec, false)
                } else {
                    Action::Wait(Some(at))
                }
            }
            // Our own term, left by an earlier run of this same
            // instance: take it back. A Lease naming our identity
            // with another instance is someone else's claim.
            Some(_) if self.holds(rec) => self.acquire_of(rec, true),
            Some(_) if now >= claim_until => self.acquire_of(rec, false),
            Some(_) => Action::Wait(Some(claim_until)),
        }
    }

    /// The CAS write that names us in `rec`; `reclaim`: it already names
    /// this instance (a restart), so the term and its count carry on.
    fn acquire_of(&self, rec: &Record, reclaim: bool) -> Action {
        Action::Replace {
            kind: WriteKind::Acquire,
            base_resource_version: rec.resource_version.clone(),
            write: SpecWrite {
                holder: Some(self.cfg.identity.clone()),
                instance: Some(self.cfg.instance.clone()),
                // client-go's rule: the count goes up whenever the
                // holder changes to us (also from an empty holder).
                transitions: if reclaim {
                    rec.transitions
                } else {
                    rec.transitions.saturating_add(1)
                },
                new_term: !reclaim,
                lease_duration_seconds: self.fixed_lease_seconds(),
            },
        }
    }

    /// A write succeeded; `sent_at` is when it was sent, `rec` what the API
    /// server returned.
    pub fn write_ok(
        &mut self,
        kind: WriteKind,
        sent_at: Instant,
        rec: Record,
        now: Instant,
    ) -> Option<LeadEvent> {
        self.backoff_until = None;
        let mine = self.holds(&rec);
        let token = rec.transitions;
        let preferred = rec.preferred.clone();
        let rec_timings = rec.timings;
        let ended = self.observe_record(rec, now);
        if !mine || kind == WriteKind::Release {
            return ended;
        }
        let timings = self.cfg.fixed.unwrap_or(rec_timings);
        let valid_until = sent_at + timings.renew_deadline();
        let next_renew = sent_at + timings.retry_period();
        if now >= valid_until {
            // The answer came too late (a paused process): this term is
            // already over, and unless the timer said so first, this does,
            // at the deadline the term had. The next decision renews again.
            let late = self.lead.take().map(|lead| LeadEvent::Ended {
                at: earlier(now, lead.valid_until),
                reason: EndReason::DeadlinePassed,
            });
            return ended.or(late);
        }
        match &mut self.lead {
            Some(lead) => {
                lead.valid_until = valid_until;
                lead.next_renew = next_renew;
                lead.last_sent = sent_at;
                lead.timings = timings;
                lead.token = token;
                None
            }
            None => {
                self.lead = Some(Lead {
                    token,
                    valid_until,
                    next_renew,
                    last_sent: sent_at,
                    timings,
                    preferred_seen: preferred,
                });
                Some(LeadEvent::Started { token, at: now })
            }
        }
    }

    /// A write (or read) failed.
    pub fn write_failed(&mut self, failure: Failure, now: Instant) {
        match failure {
            Failure::Stale => self.stale = true,
            Failure::Transient => self.backoff_until = Some(now + self.failure_backoff()),
        }
    }
}

#[cfg(test)]
mod tests;
