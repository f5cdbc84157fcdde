//! `zen-lead run`'s decisions, free of I/O: given what happened (an agent
//! event, a timer, CMD's exit, a signal, the agent's stream breaking), what
//! to do. [`super`] performs the actions and feeds the outcomes back.
//!
//! The rule that keeps two CMDs of a pool from overlapping: CMD runs only
//! inside a term this pod was told about, and is sent SIGTERM as soon as that
//! term may be over (its deadline passed without a renewal, the agent says
//! so, a term we did not see begin, or the agent is gone) and SIGKILL no later
//! than the term's deadline plus the agent's stop grace.
//!
//! And CMD starts only once the agent counts it as running (a hold, see
//! `super::client::hold`), so a voluntary release by the agent waits for it;
//! while the agent does not confirm, CMD waits and the hold is retried with
//! a back-off for as long as the term lasts.

use std::time::Duration;

use rustix::process::Signal;
use tokio::time::Instant;

pub use crate::contract::ReleaseReason;

/// One event of the agent, as the machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Pool (the Lease's name).
    pub pool: String,
    pub identity: String,
    pub leading: bool,
    pub token: Option<i64>,
    /// End of this pod's term unless renewed (only while leading).
    pub deadline: Option<Instant>,
    /// How long CMD may take to exit after the deadline.
    pub grace: Duration,
    /// `scheduledRuns: once`: the Job that already ran this pod's scheduled
    /// time in the pool.
    pub duplicate_of: Option<String>,
}

impl View {
    /// A term CMD may run in at `now`.
    fn startable(&self, now: Instant) -> bool {
        self.leading && self.deadline.is_some_and(|d| now < d)
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Event(View),
    /// The time given to [`Machine::handle`] reached [`Machine::next_wake`].
    Timer,
    /// CMD (our direct child) exited with this code (128+N for signal N;
    /// 127/126 when it could not be started).
    Exited(i32),
    /// The agent confirmed the hold asked for by [`Action::Hold`].
    Held,
    /// The hold asked for by [`Action::Hold`] failed.
    HoldFailed,
    Signal(Signal),
    /// The agent's event stream ended or failed.
    StreamBroken,
}

/// Why CMD is being stopped (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    DeadlinePassed,
    NotLeading,
    NewTerm,
    AgentGone,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DeadlinePassed => "the term's deadline passed without a renewal",
            Self::NotLeading => "the agent says this pod no longer leads",
            Self::NewTerm => "the agent shows a term CMD was not started in",
            Self::AgentGone => "the agent's event stream broke (agent gone?)",
        })
    }
}

/// What CMD is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub token: Option<i64>,
    pub pool: String,
    pub identity: String,
}

/// First pause before asking the agent for a hold again.
const HOLD_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between hold attempts.
const HOLD_RETRY_MAX: Duration = Duration::from_secs(2);

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Ask the agent to count CMD as running; answer [`Input::Held`] or
    /// [`Input::HoldFailed`].
    Hold,
    /// The hold failed: CMD waits; [`Action::Hold`] again at `retry_at`
    /// unless the term ends first. `first`: the term's first failure.
    HoldLater {
        retry_at: Instant,
        first: bool,
    },
    /// Start CMD (in its own process group) with these values in its env;
    /// the hold is in place.
    Start(Launch),
    /// SIGTERM to CMD's group and every other descendant of `run` now;
    /// SIGKILL at `kill_at` unless CMD exited (what it leaves is SIGKILLed
    /// when it exits).
    Stop {
        reason: StopReason,
        kill_at: Instant,
    },
    /// SIGKILL to CMD's group and every other descendant of `run`.
    Kill,
    /// Pass a signal `run` received on to CMD's group.
    Forward(Signal),
    /// Exit `run` with this status.
    Exit(i32),
    /// Ask the agent to release the Lease, then exit with this status.
    ReleaseAndExit(i32, ReleaseReason),
    /// The scheduled time already ran in the pool (by this Job): complete
    /// without running CMD.
    Skip(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Waiting,
    /// A term to run CMD in; waiting for the agent to confirm the hold.
    Holding {
        launch: Launch,
        deadline: Instant,
        grace: Duration,
        /// `None`: a hold was asked for and its answer is due.
        retry_at: Option<Instant>,
        backoff: Duration,
    },
    Running {
        token: Option<i64>,
        deadline: Instant,
        grace: Duration,
    },
    Stopping {
        kill_at: Instant,
        killed: bool,
    },
}

/// The state of one `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    phase: Phase,
    /// The agent's latest event while its stream is up.
    latest: Option<View>,
    /// A signal asked `run` to exit: never start CMD again.
    exiting: bool,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    pub fn new() -> Self {
        Self {
            phase: Phase::Waiting,
            latest: None,
            exiting: false,
        }
    }

    /// When to call [`Machine::handle`] with [`Input::Timer`] at the latest.
    pub fn next_wake(&self) -> Option<Instant> {
        match self.phase {
            Phase::Running { deadline, .. } => Some(deadline),
            Phase::Holding {
                deadline, retry_at, ..
            } => Some(retry_at.map_or(deadline, |r| r.min(deadline))),
            Phase::Stopping {
                kill_at,
                killed: false,
            } => Some(kill_at),
            _ => None,
        }
    }

    /// CMD is running (or stopping) under this `run`.
    pub fn cmd_alive(&self) -> bool {
        matches!(self.phase, Phase::Running { .. } | Phase::Stopping { .. })
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) -> Action {
        match input {
            Input::Event(view) => self.event(view, now),
            Input::Timer => self.timer(now),
            Input::Exited(code) => self.exited(code, now),
            Input::Held => self.held(now),
            Input::HoldFailed => self.hold_failed(now),
            Input::Signal(sig) => {
                self.exiting = true;
                if self.cmd_alive() {
                    Action::Forward(sig)
                } else {
                    // Nothing to wait for: never hold up the pod's termination.
                    Action::Exit(0)
                }
            }
            Input::StreamBroken => {
                // A stale view must not start CMD once the stream is back.
                self.latest = None;
                if matches!(self.phase, Phase::Holding { .. }) {
                    self.phase = Phase::Waiting;
                }
                self.stop(StopReason::AgentGone, now)
            }
        }
    }

    fn held(&mut self, now: Instant) -> Action {
        match std::mem::replace(&mut self.phase, Phase::Waiting) {
            // The term ran out while the agent confirmed: nothing starts
            // (the caller closes the hold), and the next view decides.
            Phase::Holding {
                deadline,
                retry_at: None,
                ..
            } if now >= deadline => Action::Nothing,
            Phase::Holding {
                launch,
                deadline,
                grace,
                retry_at: None,
                ..
            } => {
                self.phase = Phase::Running {
                    token: launch.token,
                    deadline,
                    grace,
                };
                Action::Start(launch)
            }
            // Not asked for (cannot happen: `run` answers at once): the
            // caller closes the hold.
            other => {
                self.phase = other;
                Action::Nothing
            }
        }
    }

    fn hold_failed(&mut self, now: Instant) -> Action {
        match &mut self.phase {
            Phase::Holding {
                retry_at: retry @ None,
                backoff,
                ..
            } => {
                let at = now + *backoff;
                let first = *backoff == HOLD_RETRY_MIN;
                *retry = Some(at);
                *backoff = (*backoff * 2).min(HOLD_RETRY_MAX);
                Action::HoldLater {
                    retry_at: at,
                    first,
                }
            }
            _ => Action::Nothing,
        }
    }

    fn event(&mut self, view: View, now: Instant) -> Action {
        let action = match &mut self.phase {
            Phase::Waiting
                if !self.exiting && view.startable(now) && view.duplicate_of.is_some() =>
            {
                self.exiting = true;
                Action::Skip(view.duplicate_of.clone().unwrap_or_default())
            }
            Phase::Waiting if !self.exiting && view.startable(now) => {
                self.phase = Phase::Holding {
                    launch: Launch {
                        token: view.token,
                        pool: view.pool.clone(),
                        identity: view.identity.clone(),
                    },
                    deadline: view.deadline.unwrap_or(now),
                    grace: view.grace,
                    retry_at: None,
                    backoff: HOLD_RETRY_MIN,
                };
                Action::Hold
            }
            Phase::Holding {
                launch,
                deadline,
                grace,
                ..
            } => {
                if view.startable(now) && view.token == launch.token {
                    // A renewal of the term CMD waits to start in.
                    *deadline = view.deadline.unwrap_or(now);
                    *grace = view.grace;
                    Action::Nothing
                } else {
                    // That term is over before CMD started: nothing to
                    // stop; a newer term starts over.
                    self.phase = Phase::Waiting;
                    return self.event(view, now);
                }
            }
            Phase::Running {
                token,
                deadline,
                grace,
            } => {
                if !view.leading {
                    Some(StopReason::NotLeading)
                } else if view.token != *token {
                    Some(StopReason::NewTerm)
                } else {
                    match view.deadline {
                        Some(until) => {
                            // The agent's word is final, even an earlier deadline.
                            *deadline = until;
                            *grace = view.grace;
                            (now >= until).then_some(StopReason::DeadlinePassed)
                        }
                        // Leading without a deadline breaks the contract: no
                        // term we can bound.
                        None => Some(StopReason::NotLeading),
                    }
                }
                .map_or(Action::Nothing, |reason| self.stop(reason, now))
            }
            _ => Action::Nothing,
        };
        self.latest = Some(view);
        action
    }

    fn timer(&mut self, now: Instant) -> Action {
        match &mut self.phase {
            Phase::Holding { deadline, .. } if now >= *deadline => {
                self.phase = Phase::Waiting;
                Action::Nothing
            }
            Phase::Holding {
                retry_at: retry @ Some(_),
                ..
            } if retry.is_some_and(|at| now >= at) => {
                *retry = None;
                Action::Hold
            }
            Phase::Running { deadline, .. } if now >= *deadline => {
                self.stop(StopReason::DeadlinePassed, now)
            }
            Phase::Stopping { kill_at, killed } if !*killed && now >= *kill_at => {
                *killed = true;
                Action::Kill
            }
            _ => Action::Nothing,
        }
    }

    /// Starts stopping CMD if it runs and is not being stopped already.
    fn stop(&mut self, reason: StopReason, now: Instant) -> Action {
        let Phase::Running {
            deadline, grace, ..
        } = self.phase
        else {
            return Action::Nothing;
        };
        // SIGKILL by the deadline plus grace at the latest, however late
        // this runs (a paused `run` wakes up to an immediate SIGKILL).
        let kill_at = now.min(deadline) + grace;
        self.phase = Phase::Stopping {
            kill_at,
            killed: false,
        };
        Action::Stop { reason, kill_at }
    }

    fn exited(&mut self, code: i32, now: Instant) -> Action {
        let phase = std::mem::replace(&mut self.phase, Phase::Waiting);
        match phase {
            // A signal to the container ended CMD in its term: the pod is
            // going away (or the kubelet restarts the container), so hand
            // over now instead of when the kubelet stops the agent.
            Phase::Running { .. } if self.exiting => {
                Action::ReleaseAndExit(code, ReleaseReason::AppStopped)
            }
            _ if self.exiting => Action::Exit(code),
            Phase::Running { .. } if code == 0 => Action::Exit(0),
            // CMD failed while leading: let another replica take over.
            Phase::Running { .. } => Action::ReleaseAndExit(code, ReleaseReason::AppFailed),
            // We stopped it (or it was not running): wait for the next term,
            // which may already be here.
            // Not CMD's (none runs): another child of `run`.
            phase @ Phase::Holding { .. } => {
                self.phase = phase;
                Action::Nothing
            }
            Phase::Stopping { .. } | Phase::Waiting => match self.latest.take() {
                Some(view) => self.event(view, now),
                None => Action::Nothing,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(3);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn leading(token: i64, deadline: Instant) -> View {
        View {
            pool: "pool".into(),
            identity: "me".into(),
            leading: true,
            token: Some(token),
            deadline: Some(deadline),
            grace: GRACE,
            duplicate_of: None,
        }
    }

    fn following() -> View {
        View {
            leading: false,
            token: Some(1),
            deadline: None,
            ..leading(1, Instant::now())
        }
    }

    fn launch(token: i64) -> Action {
        Action::Start(Launch {
            token: Some(token),
            pool: "pool".into(),
            identity: "me".into(),
        })
    }

    /// [`running`], then SIGTERM forwarded to CMD at `t0 + 1s`.
    fn signalled(t0: Instant) -> Machine {
        let mut m = running(t0);
        m.handle(Input::Signal(Signal::TERM), t0 + secs(1));
        m
    }

    /// A machine whose CMD runs in term 7 until `t0 + 10s`.
    fn running(t0: Instant) -> Machine {
        let mut m = Machine::new();
        assert_eq!(
            started(&mut m, Input::Event(leading(7, t0 + secs(10))), t0),
            launch(7)
        );
        m
    }

    /// Feeds `input`, which must ask for a hold, then confirms the hold;
    /// returns the action after the confirmation.
    fn started(m: &mut Machine, input: Input, at: Instant) -> Action {
        assert_eq!(
            m.handle(input, at),
            Action::Hold,
            "a hold before CMD starts"
        );
        m.handle(Input::Held, at)
    }

    /// A machine waiting for the agent to confirm a hold for term 7 (until
    /// `t0 + 10s`), asked at `t0`.
    fn holding(t0: Instant) -> Machine {
        let mut m = Machine::new();
        assert_eq!(
            m.handle(Input::Event(leading(7, t0 + secs(10))), t0),
            Action::Hold
        );
        m
    }

    /// [`holding`] whose first hold failed at `t0`.
    fn refused(t0: Instant) -> Machine {
        let mut m = holding(t0);
        m.handle(Input::HoldFailed, t0);
        m
    }

    #[test]
    fn table() {
        let t0 = Instant::now();
        // (name, machine, input, at, expected action, next wake after)
        type Case = (
            &'static str,
            Machine,
            Input,
            Instant,
            Action,
            Option<Instant>,
        );
        let stopping = |reason, kill_at| Action::Stop { reason, kill_at };
        let cases: Vec<Case> = vec![
            (
                "a follower's event does not start CMD",
                Machine::new(),
                Input::Event(following()),
                t0,
                Action::Nothing,
                None,
            ),
            (
                "leading with a deadline already past does not start CMD",
                Machine::new(),
                Input::Event(leading(7, t0)),
                t0,
                Action::Nothing,
                None,
            ),
            (
                "leading without a deadline does not start CMD",
                Machine::new(),
                Input::Event(View {
                    deadline: None,
                    ..leading(7, t0)
                }),
                t0,
                Action::Nothing,
                None,
            ),
            (
                "leading with a future deadline asks the agent for a hold first",
                Machine::new(),
                Input::Event(leading(7, t0 + secs(10))),
                t0,
                Action::Hold,
                Some(t0 + secs(10)),
            ),
            (
                "the hold confirmed starts CMD with the term's token",
                holding(t0),
                Input::Held,
                t0,
                launch(7),
                Some(t0 + secs(10)),
            ),
            (
                "a hold confirmed after the term's deadline starts nothing",
                holding(t0),
                Input::Held,
                t0 + secs(10),
                Action::Nothing,
                None,
            ),
            (
                "a failed hold does not start CMD; retried after a back-off",
                holding(t0),
                Input::HoldFailed,
                t0,
                Action::HoldLater {
                    retry_at: t0 + HOLD_RETRY_MIN,
                    first: true,
                },
                Some(t0 + HOLD_RETRY_MIN),
            ),
            (
                "the hold is asked for again at the retry time",
                refused(t0),
                Input::Timer,
                t0 + HOLD_RETRY_MIN,
                Action::Hold,
                Some(t0 + secs(10)),
            ),
            (
                "an early timer while waiting to retry does nothing",
                refused(t0),
                Input::Timer,
                t0,
                Action::Nothing,
                Some(t0 + HOLD_RETRY_MIN),
            ),
            (
                "the term ending before the hold is confirmed: nothing runs, nothing to stop",
                refused(t0),
                Input::Event(following()),
                t0 + secs(1),
                Action::Nothing,
                None,
            ),
            (
                "the deadline passing while waiting for a hold ends the wait",
                holding(t0),
                Input::Timer,
                t0 + secs(10),
                Action::Nothing,
                None,
            ),
            (
                "a renewal while waiting for a hold moves the deadline",
                refused(t0),
                Input::Event(leading(7, t0 + secs(20))),
                t0 + secs(1),
                Action::Nothing,
                Some(t0 + HOLD_RETRY_MIN),
            ),
            (
                "a newer term while waiting for a hold asks for one in that term",
                refused(t0),
                Input::Event(leading(8, t0 + secs(20))),
                t0 + secs(1),
                Action::Hold,
                Some(t0 + secs(20)),
            ),
            (
                "the stream breaking while waiting for a hold ends the wait",
                refused(t0),
                Input::StreamBroken,
                t0,
                Action::Nothing,
                None,
            ),
            (
                "a signal while waiting for a hold exits 0 at once",
                refused(t0),
                Input::Signal(Signal::TERM),
                t0,
                Action::Exit(0),
                Some(t0 + HOLD_RETRY_MIN),
            ),
            (
                "another child exiting while waiting for a hold changes nothing",
                refused(t0),
                Input::Exited(0),
                t0,
                Action::Nothing,
                Some(t0 + HOLD_RETRY_MIN),
            ),
            (
                "a renewal moves the deadline",
                running(t0),
                Input::Event(leading(7, t0 + secs(20))),
                t0 + secs(5),
                Action::Nothing,
                Some(t0 + secs(20)),
            ),
            (
                "the deadline passing stops CMD; SIGKILL at deadline + grace",
                running(t0),
                Input::Timer,
                t0 + secs(10),
                stopping(StopReason::DeadlinePassed, t0 + secs(10) + GRACE),
                Some(t0 + secs(10) + GRACE),
            ),
            (
                "a late timer (paused run) still kills by deadline + grace",
                running(t0),
                Input::Timer,
                t0 + secs(60),
                stopping(StopReason::DeadlinePassed, t0 + secs(10) + GRACE),
                Some(t0 + secs(10) + GRACE),
            ),
            (
                "an early timer does nothing",
                running(t0),
                Input::Timer,
                t0 + secs(9),
                Action::Nothing,
                Some(t0 + secs(10)),
            ),
            (
                "not leading stops CMD at once",
                running(t0),
                Input::Event(following()),
                t0 + secs(2),
                stopping(StopReason::NotLeading, t0 + secs(2) + GRACE),
                Some(t0 + secs(2) + GRACE),
            ),
            (
                "a different fencing token stops CMD",
                running(t0),
                Input::Event(leading(8, t0 + secs(20))),
                t0 + secs(2),
                stopping(StopReason::NewTerm, t0 + secs(2) + GRACE),
                Some(t0 + secs(2) + GRACE),
            ),
            (
                "a renewal with a deadline already past stops CMD",
                running(t0),
                Input::Event(leading(7, t0 + secs(1))),
                t0 + secs(2),
                stopping(StopReason::DeadlinePassed, t0 + secs(1) + GRACE),
                Some(t0 + secs(1) + GRACE),
            ),
            (
                "the stream breaking stops CMD at once",
                running(t0),
                Input::StreamBroken,
                t0 + secs(2),
                stopping(StopReason::AgentGone, t0 + secs(2) + GRACE),
                Some(t0 + secs(2) + GRACE),
            ),
            (
                "the stream breaking while waiting does nothing",
                Machine::new(),
                Input::StreamBroken,
                t0,
                Action::Nothing,
                None,
            ),
            (
                "CMD exiting 0 while leading exits 0",
                running(t0),
                Input::Exited(0),
                t0 + secs(1),
                Action::Exit(0),
                None,
            ),
            (
                "CMD failing while leading releases, then exits with its status",
                running(t0),
                Input::Exited(3),
                t0 + secs(1),
                Action::ReleaseAndExit(3, ReleaseReason::AppFailed),
                None,
            ),
            (
                "CMD that could not start releases and exits 127",
                running(t0),
                Input::Exited(127),
                t0,
                Action::ReleaseAndExit(127, ReleaseReason::AppFailed),
                None,
            ),
            (
                "a signal while CMD runs is forwarded",
                running(t0),
                Input::Signal(Signal::TERM),
                t0 + secs(1),
                Action::Forward(Signal::TERM),
                Some(t0 + secs(10)),
            ),
            (
                "CMD ended by a forwarded signal in its term releases, then exits with its status",
                signalled(t0),
                Input::Exited(143),
                t0 + secs(2),
                Action::ReleaseAndExit(143, ReleaseReason::AppStopped),
                None,
            ),
            (
                "CMD exiting 0 after a forwarded signal also releases",
                signalled(t0),
                Input::Exited(0),
                t0 + secs(2),
                Action::ReleaseAndExit(0, ReleaseReason::AppStopped),
                None,
            ),
            (
                "a signal while CMD is being stopped (its term is over) does not release",
                {
                    let mut m = running(t0);
                    m.handle(Input::Event(following()), t0 + secs(1));
                    m.handle(Input::Signal(Signal::TERM), t0 + secs(1));
                    m
                },
                Input::Exited(143),
                t0 + secs(2),
                Action::Exit(143),
                None,
            ),
            (
                "a signal while waiting exits 0 at once",
                Machine::new(),
                Input::Signal(Signal::INT),
                t0,
                Action::Exit(0),
                None,
            ),
        ];
        for (name, mut machine, input, at, expected, wake) in cases {
            assert_eq!(machine.handle(input, at), expected, "{name}");
            assert_eq!(machine.next_wake(), wake, "{name}: next wake");
        }
    }

    #[test]
    fn hold_retries_back_off_to_a_cap_and_warn_once() {
        let t0 = Instant::now();
        let mut m = Machine::new();
        assert_eq!(
            m.handle(Input::Event(leading(7, t0 + secs(60))), t0),
            Action::Hold
        );
        let mut now = t0;
        let mut pauses = Vec::new();
        for attempt in 0..7 {
            let Action::HoldLater { retry_at, first } = m.handle(Input::HoldFailed, now) else {
                panic!("attempt {attempt}: a failed hold waits");
            };
            assert_eq!(first, attempt == 0, "attempt {attempt}");
            pauses.push(retry_at - now);
            now = retry_at;
            assert_eq!(m.handle(Input::Timer, now), Action::Hold);
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            pauses,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000),
                ms(2000)
            ]
        );
        // Confirmed at last: CMD starts in the same term.
        assert_eq!(m.handle(Input::Held, now), launch(7));
    }

    #[test]
    fn sigkill_follows_at_kill_time_once() {
        let t0 = Instant::now();
        let mut m = running(t0);
        m.handle(Input::Event(following()), t0 + secs(1));
        assert_eq!(m.handle(Input::Timer, t0 + secs(2)), Action::Nothing);
        assert_eq!(m.handle(Input::Timer, t0 + secs(1) + GRACE), Action::Kill);
        assert_eq!(m.next_wake(), None);
        assert_eq!(m.handle(Input::Timer, t0 + secs(9)), Action::Nothing);
    }

    #[test]
    fn after_a_stop_cmd_waits_and_starts_again_in_the_next_term() {
        let t0 = Instant::now();
        let mut m = running(t0);
        m.handle(Input::Event(following()), t0 + secs(1));
        // Events while stopping never start a second CMD.
        assert_eq!(
            m.handle(Input::Event(leading(8, t0 + secs(30))), t0 + secs(2)),
            Action::Nothing
        );
        // CMD stopped for loss of leadership: no exit; the newer term starts it.
        assert_eq!(started(&mut m, Input::Exited(143), t0 + secs(3)), launch(8));
        assert_eq!(m.next_wake(), Some(t0 + secs(30)));
    }

    #[test]
    fn after_a_stop_cmd_waits_when_the_pod_does_not_lead() {
        let t0 = Instant::now();
        let mut m = running(t0);
        m.handle(Input::Event(following()), t0 + secs(1));
        assert_eq!(m.handle(Input::Exited(143), t0 + secs(2)), Action::Nothing);
        assert!(!m.cmd_alive());
        assert_eq!(
            started(
                &mut m,
                Input::Event(leading(9, t0 + secs(30))),
                t0 + secs(3)
            ),
            launch(9)
        );
    }

    #[test]
    fn a_stale_view_does_not_restart_cmd_after_the_stream_broke() {
        let t0 = Instant::now();
        let mut m = running(t0);
        m.handle(Input::StreamBroken, t0 + secs(1));
        assert_eq!(m.handle(Input::Exited(143), t0 + secs(2)), Action::Nothing);
        assert_eq!(
            started(
                &mut m,
                Input::Event(leading(7, t0 + secs(30))),
                t0 + secs(3)
            ),
            launch(7)
        );
    }

    #[test]
    fn after_a_signal_cmd_exits_with_its_status_and_never_restarts() {
        let t0 = Instant::now();
        let mut m = running(t0);
        assert_eq!(
            m.handle(Input::Signal(Signal::TERM), t0 + secs(1)),
            Action::Forward(Signal::TERM)
        );
        // The stop rule still holds while CMD shuts down.
        assert_eq!(
            m.handle(Input::Event(following()), t0 + secs(2)),
            Action::Stop {
                reason: StopReason::NotLeading,
                kill_at: t0 + secs(2) + GRACE
            }
        );
        assert_eq!(
            m.handle(Input::Signal(Signal::TERM), t0 + secs(3)),
            Action::Forward(Signal::TERM)
        );
        // No release on the way out of a pod that is being deleted.
        assert_eq!(
            m.handle(Input::Exited(143), t0 + secs(4)),
            Action::Exit(143)
        );

        let mut m = Machine::new();
        m.exiting = true;
        assert_eq!(
            m.handle(Input::Event(leading(7, t0 + secs(30))), t0),
            Action::Nothing
        );
    }

    #[test]
    fn a_duplicate_scheduled_run_completes_without_starting_cmd() {
        let now = Instant::now();
        let mut m = Machine::new();
        let mut view = leading(3, now + secs(5));
        view.duplicate_of = Some("report-a".into());
        assert_eq!(
            m.handle(Input::Event(view), now),
            Action::Skip("report-a".into())
        );
        // Never started afterwards, whatever comes.
        assert_eq!(
            m.handle(Input::Event(leading(3, now + secs(5))), now),
            Action::Nothing
        );
        // A follower that later leads as a duplicate is skipped too; one that
        // is not a duplicate starts.
        let mut m = Machine::new();
        assert_eq!(m.handle(Input::Event(following()), now), Action::Nothing);
        assert!(matches!(
            started(&mut m, Input::Event(leading(4, now + secs(5))), now),
            Action::Start(_)
        ));
    }
}
