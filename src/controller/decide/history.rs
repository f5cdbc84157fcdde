//! A pool's recent leader changes (`status.recentTransitions`), free of I/O.
//!
//! The Lease watch feeds every version of a pool's Lease to a
//! [`LeaseTrack`], which notices each change of holder: directly from one
//! holder to the next (the old one stopped renewing and its Lease expired),
//! or through a free Lease (the holder released it, or the controller
//! cleared it). The controller notes on the track what it did itself and
//! why ([`Cause`]), before its write, keyed by the holder it acted on. A
//! pool pass takes the changes, names their reason with [`reason`] and
//! merges them into the status with [`merge`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::api::{LeaderTransition, RECENT_TRANSITIONS, TransitionReason};

/// What one version of the Lease says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseObs {
    pub holder: Option<String>,
    /// `zen-lead.io/preferred-holder`.
    pub preferred: Option<String>,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
}

/// What the controller did to a holder, noted before its write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Cleared or handed off because the holder's pod is gone or terminating.
    PodDeleted,
    /// Cleared because the holder cannot renew (node NotReady, pod finished).
    Expiry,
    /// Handed off because the holder's app failed past the grace.
    AppFailed,
    /// Handed off to a candidate the controller prefers.
    Preference,
}

impl Cause {
    fn reason(self) -> TransitionReason {
        match self {
            Cause::PodDeleted => TransitionReason::PodDeleted,
            Cause::Expiry => TransitionReason::Expiry,
            Cause::AppFailed => TransitionReason::AppFailed,
            Cause::Preference => TransitionReason::Preference,
        }
    }
}

/// A change of holder as the Lease watch saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub from: String,
    pub to: String,
    /// The Lease was seen free in between (released or cleared).
    pub released: bool,
    /// A preferred holder was named during the old term.
    pub preferred: bool,
    /// The old holder's last sign of life: its release or clearing, else
    /// its last renewal seen.
    pub lost_at: Option<SystemTime>,
    pub acquired_at: SystemTime,
    /// The new term's leaseTransitions.
    pub term: i32,
    /// What the controller noted about the old holder.
    pub cause: Option<Cause>,
}

/// The Lease history of one pool, as the watch saw it.
#[derive(Debug, Clone, Default)]
pub struct LeaseTrack {
    /// The last holder seen (kept while the Lease is free).
    holder: Option<String>,
    /// When the holder's record last changed, or when it was seen free.
    alive_at: Option<SystemTime>,
    released: bool,
    preferred: bool,
    /// Controller actions by the holder identity they concern.
    causes: BTreeMap<String, Cause>,
    pending: Vec<Observed>,
}

/// Changes kept for a pass that has not taken them (a pool whose passes
/// fail for long): the status keeps only the last ten anyway.
const PENDING_MAX: usize = RECENT_TRANSITIONS;

impl LeaseTrack {
    /// One version of the Lease, seen at `now`. The first version seen is
    /// the baseline: no change is made of it.
    pub fn observe(&mut self, obs: &LeaseObs, now: SystemTime) {
        match (&self.holder, &obs.holder) {
            (_, None) => {
                if self.holder.is_some() && !self.released {
                    self.released = true;
                    self.alive_at = Some(now);
                }
            }
            (Some(old), Some(new)) if old == new => {
                if self.released {
                    // Re-acquired by the same holder: not a change.
                    self.released = false;
                    self.preferred = false;
                }
                self.alive_at = Some(now);
            }
            (old, Some(new)) => {
                if let Some(old) = old {
                    self.pending.push(Observed {
                        from: old.clone(),
                        to: new.clone(),
                        released: self.released,
                        preferred: self.preferred,
                        lost_at: self.alive_at,
                        acquired_at: now,
                        term: obs.transitions,
                        cause: self.causes.remove(old),
                    });
                    let drop = self.pending.len().saturating_sub(PENDING_MAX);
                    self.pending.drain(..drop);
                }
                self.holder = Some(new.clone());
                self.released = false;
                self.preferred = false;
                self.alive_at = Some(now);
            }
        }
        if obs.holder.is_some() && obs.preferred.is_some() {
            self.preferred = true;
        }
        // A cause outlives no term of its holder but the current one.
        let current = self.holder.clone();
        self.causes.retain(|h, _| Some(h) == current.as_ref());
    }

    /// The controller is about to act on `holder` for `cause`.
    pub fn note(&mut self, holder: &str, cause: Cause) {
        self.causes.insert(holder.to_owned(), cause);
    }

    /// The changes seen since the last call.
    pub fn take(&mut self) -> Vec<Observed> {
        std::mem::take(&mut self.pending)
    }
}

/// Why leadership moved. What the controller did comes first; then the old
/// holder's pod (`old_pod_leaving`: terminating or gone); then what the
/// Lease showed: a release after someone named a preferred holder is a
/// manual hand-off (the controller notes its own), a release without one
/// is graceful, and a take-over without a release is an expiry.
pub fn reason(change: &Observed, old_pod_leaving: bool) -> TransitionReason {
    if let Some(cause) = change.cause {
        return cause.reason();
    }
    if old_pod_leaving {
        return TransitionReason::PodDeleted;
    }
    match (change.released, change.preferred) {
        (true, true) => TransitionReason::Manual,
        (true, false) => TransitionReason::GracefulHandOff,
        (false, _) => TransitionReason::Expiry,
    }
}

/// Milliseconds from the old holder's loss to the new holder's acquisition.
pub fn takeover_millis(change: &Observed) -> Option<i64> {
    let lost = change.lost_at?;
    let took = change.acquired_at.duration_since(lost).ok()?;
    i64::try_from(took.as_millis()).ok()
}

/// `previous` followed by the `new` entries it does not hold yet (the same
/// term, from and to: a status written but not yet back in the cache), the
/// last [`RECENT_TRANSITIONS`] kept.
pub fn merge(previous: &[LeaderTransition], new: &[LeaderTransition]) -> Vec<LeaderTransition> {
    let mut out = previous.to_vec();
    for entry in new {
        if !out.iter().any(|e| same(e, entry)) {
            out.push(entry.clone());
        }
    }
    // In time order (an entry re-added late falls where it belongs, and
    // off the end first when it is the oldest).
    out.sort_by_key(|e| (e.time.0, e.term));
    let drop = out.len().saturating_sub(RECENT_TRANSITIONS);
    out.drain(..drop);
    out
}

fn same(a: &LeaderTransition, b: &LeaderTransition) -> bool {
    a.term == b.term && a.from == b.from && a.to == b.to
}

/// Forgets the pending entries that the stored status (as the cache shows
/// it) holds: until then every status computed carries them, so a pass
/// working from a status read before the write cannot drop them.
pub fn unstored(pending: &mut Vec<LeaderTransition>, stored: &[LeaderTransition]) {
    pending.retain(|p| !stored.iter().any(|s| same(s, p)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    fn obs(holder: Option<&str>, preferred: Option<&str>, term: i32) -> LeaseObs {
        LeaseObs {
            holder: holder.map(str::to_owned),
            preferred: preferred.map(str::to_owned),
            transitions: term,
        }
    }

    /// (released, preferred, lost at ms, term) of an observed change.
    type Seen = (bool, bool, Option<u64>, i32);
    /// Lease versions, each at a millisecond offset.
    type Versions = Vec<(u64, LeaseObs)>;

    /// Feeds `(ms, lease)` versions; returns what the track saw.
    fn run(track: &mut LeaseTrack, versions: &[(u64, LeaseObs)]) -> Vec<Observed> {
        for (ms, o) in versions {
            track.observe(o, at(*ms));
        }
        track.take()
    }

    #[test]
    fn the_track_sees_each_change_of_holder_and_how_it_happened() {
        let a = || obs(Some("a"), None, 1);
        let cases: Vec<(&str, Versions, Vec<Seen>)> = vec![
            ("first sight is a baseline", vec![(0, a())], vec![]),
            (
                "renewals change nothing",
                vec![(0, a()), (2000, a()), (4000, a())],
                vec![],
            ),
            (
                "a release, then b: released, lost at the release",
                vec![
                    (0, a()),
                    (2000, a()),
                    (2100, obs(None, None, 1)),
                    (2109, obs(Some("b"), None, 2)),
                ],
                vec![(true, false, Some(2100), 2)],
            ),
            (
                "a hand-off to a named b: preferred, released",
                vec![
                    (0, a()),
                    (500, obs(Some("a"), Some("b"), 1)),
                    (510, obs(None, Some("b"), 1)),
                    (520, obs(Some("b"), None, 2)),
                ],
                vec![(true, true, Some(510), 2)],
            ),
            (
                "b takes an expired Lease: lost at a's last renewal",
                vec![(0, a()), (2000, a()), (17000, obs(Some("b"), None, 2))],
                vec![(false, false, Some(2000), 2)],
            ),
            (
                "a re-takes its own Lease after a release: no change",
                vec![
                    (0, a()),
                    (100, obs(None, None, 1)),
                    (200, obs(Some("a"), None, 2)),
                ],
                vec![],
            ),
            (
                "two changes between passes: both, in order",
                vec![
                    (0, a()),
                    (100, obs(None, None, 1)),
                    (110, obs(Some("b"), None, 2)),
                    (900, obs(Some("c"), None, 3)),
                ],
                vec![(true, false, Some(100), 2), (false, false, Some(110), 3)],
            ),
        ];
        for (name, versions, want) in cases {
            let mut track = LeaseTrack::default();
            let got: Vec<_> = run(&mut track, &versions)
                .into_iter()
                .map(|c| {
                    let lost = c
                        .lost_at
                        .and_then(|t| t.duration_since(at(0)).ok())
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0));
                    (c.released, c.preferred, lost, c.term)
                })
                .collect();
            assert_eq!(got, want, "{name}");
            assert!(track.take().is_empty(), "{name}: taken once");
        }
    }

    #[test]
    fn a_cause_is_kept_for_its_holder_only() {
        let mut track = LeaseTrack::default();
        track.observe(&obs(Some("a"), None, 1), at(0));
        track.note("a", Cause::PodDeleted);
        // A stale note about someone else is dropped by the next version.
        track.note("x", Cause::AppFailed);
        track.observe(&obs(None, None, 1), at(10));
        track.observe(&obs(Some("b"), None, 2), at(20));
        let got = track.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].cause, Some(Cause::PodDeleted));
        assert_eq!((got[0].from.as_str(), got[0].to.as_str()), ("a", "b"));
        assert_eq!(takeover_millis(&got[0]), Some(10));
        // b's change carries no cause of a's, nor of x's.
        track.observe(&obs(Some("c"), None, 3), at(5000));
        assert_eq!(track.take()[0].cause, None);
    }

    #[test]
    fn pending_changes_are_bounded() {
        let mut track = LeaseTrack::default();
        track.observe(&obs(Some("h0"), None, 0), at(0));
        for i in 1..=25 {
            track.observe(
                &obs(Some(&format!("h{i}")), None, i),
                at(u64::from(i.unsigned_abs())),
            );
        }
        let got = track.take();
        assert_eq!(got.len(), PENDING_MAX);
        assert_eq!(got.last().map(|c| c.term), Some(25));
    }

    #[test]
    fn the_reason_comes_from_the_controller_then_the_pod_then_the_lease() {
        let change = |released, preferred, cause| Observed {
            from: "a".into(),
            to: "b".into(),
            released,
            preferred,
            lost_at: None,
            acquired_at: at(0),
            term: 2,
            cause,
        };
        use TransitionReason as R;
        let cases = [
            (
                change(true, true, Some(Cause::AppFailed)),
                false,
                R::AppFailed,
            ),
            (
                change(true, false, Some(Cause::PodDeleted)),
                false,
                R::PodDeleted,
            ),
            (change(true, false, Some(Cause::Expiry)), true, R::Expiry),
            (
                change(true, true, Some(Cause::Preference)),
                false,
                R::Preference,
            ),
            (change(true, false, None), true, R::PodDeleted),
            (change(false, false, None), true, R::PodDeleted),
            (change(true, true, None), false, R::Manual),
            (change(true, false, None), false, R::GracefulHandOff),
            (change(false, false, None), false, R::Expiry),
            (change(false, true, None), false, R::Expiry),
        ];
        for (c, leaving, want) in cases {
            assert_eq!(reason(&c, leaving), want, "{c:?} leaving={leaving}");
        }
        assert_eq!(takeover_millis(&change(true, false, None)), None);
    }

    fn entry(term: i32, from: &str, to: &str) -> LeaderTransition {
        LeaderTransition {
            time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_000_000 + i64::from(term))
                    .unwrap_or_default(),
            ),
            from: from.into(),
            to: to.into(),
            reason: TransitionReason::Expiry,
            takeover_millis: Some(5),
            term: Some(term),
        }
    }

    #[test]
    fn pending_entries_go_once_the_stored_status_holds_them() {
        let mut pending = vec![entry(3, "a", "b"), entry(4, "b", "c")];
        // The cache still shows the status before the write: both stay.
        unstored(&mut pending, &[entry(1, "x", "a")]);
        assert_eq!(pending.len(), 2);
        unstored(&mut pending, &[entry(1, "x", "a"), entry(3, "a", "b")]);
        assert_eq!(pending, vec![entry(4, "b", "c")]);
        // A late entry merges into its place in time.
        let merged = merge(&[entry(5, "c", "d")], &pending);
        let terms: Vec<i32> = merged.iter().filter_map(|e| e.term).collect();
        assert_eq!(terms, vec![4, 5]);
    }

    #[test]
    fn merging_appends_new_entries_once_and_keeps_the_last_ten() {
        let prev = vec![entry(1, "a", "b"), entry(2, "b", "a")];
        let cases = [
            ("nothing new", vec![], vec![1, 2]),
            ("one new", vec![entry(3, "a", "b")], vec![1, 2, 3]),
            (
                "already written (the cache lags): not twice",
                vec![entry(2, "b", "a"), entry(3, "a", "b")],
                vec![1, 2, 3],
            ),
            (
                "eleven: the oldest goes",
                (3..=11).map(|t| entry(t, "x", "y")).collect(),
                (2..=11).collect(),
            ),
        ];
        for (name, new, want) in cases {
            let got: Vec<i32> = merge(&prev, &new).iter().filter_map(|e| e.term).collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
