//! The pure half of a pool pass: from what was observed to the writes, in
//! the order they must happen. No I/O here; `apply` performs the plan and
//! the tables below are the ordering rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::IdentityStrategy;
use crate::controller::decide::{
    self, CandidateCondition, IdentityConflict, LeaseView, PodView, RoleWrite,
};

/// One PATCH of a pod's `status` subresource: its role, its candidate
/// condition, or both (half the writes of a pool coming up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWrite {
    pub pod: String,
    pub role: Option<RoleWrite>,
    pub condition: Option<CandidateCondition>,
}

/// The pod writes of a pass. `in_order` runs one by one and each must
/// succeed before the next: removals from pods that left the pool, then
/// every demotion, then the promotion, so two pods never carry the leader
/// label at once. `parallel` (follower labels and conditions) goes after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodWrites {
    pub in_order: Vec<PodWrite>,
    pub parallel: Vec<PodWrite>,
}

impl PodWrites {
    pub fn is_empty(&self) -> bool {
        self.in_order.is_empty() && self.parallel.is_empty()
    }
}

/// Candidate conditions that differ from what each live pod carries.
pub fn candidate_conditions(
    pool: &str,
    views: &[PodView],
    strategy: IdentityStrategy,
    conflicts: &[IdentityConflict],
) -> BTreeMap<String, CandidateCondition> {
    views
        .iter()
        .filter(|pod| !pod.finished)
        .filter_map(|pod| {
            let conflict = conflicts.iter().find(|c| c.pod == pod.name);
            let want = decide::pool_candidate_condition(pool, pod, strategy, conflict);
            (!decide::candidate_condition_current(pod, &want)).then(|| (pod.name.clone(), want))
        })
        .collect()
}

/// Conditions the user must read on the pod itself (why it cannot be a
/// candidate): (pod, reason, message), published as Warning events.
pub fn identity_warnings(
    conditions: &BTreeMap<String, CandidateCondition>,
) -> Vec<(&str, &'static str, &str)> {
    conditions
        .iter()
        .filter(|(_, want)| {
            matches!(
                want.reason,
                decide::DUPLICATE_IDENTITY | decide::IDENTITY_STRATEGY_MISMATCH
            )
        })
        .map(|(pod, want)| (pod.as_str(), want.reason, want.message.as_str()))
        .collect()
}

/// The role and condition writes of an active pool. `remembered` names pods
/// this controller labelled leader (the cache may not show it yet).
pub fn pod_writes(
    views: &[PodView],
    leader: Option<&str>,
    remembered: &BTreeSet<String>,
    mut conditions: BTreeMap<String, CandidateCondition>,
) -> PodWrites {
    let names: BTreeSet<&str> = views.iter().map(|p| p.name.as_str()).collect();
    let mut in_order: Vec<PodWrite> = remembered
        .iter()
        .filter(|n| !names.contains(n.as_str()))
        .map(|pod| PodWrite {
            pod: pod.clone(),
            role: Some(RoleWrite::Remove),
            condition: None,
        })
        .collect();
    let changes = decide::role_changes(views, leader, remembered);
    let labelled_leader = |name: &str| {
        remembered.contains(name)
            || views.iter().any(|p| {
                p.name == name && p.role_label.as_deref() == Some(crate::api::keys::ROLE_LEADER)
            })
    };
    // Demotions come first in `changes`; the promotion (if any) ends them.
    let ordered = changes
        .iter()
        .position(|c| c.role == RoleWrite::Leader)
        .map(|i| i + 1)
        .unwrap_or_else(|| changes.iter().filter(|c| labelled_leader(&c.pod)).count());
    for change in &changes[..ordered] {
        in_order.push(PodWrite {
            pod: change.pod.clone(),
            role: Some(change.role),
            condition: conditions.remove(&change.pod),
        });
    }
    let mut rest: BTreeMap<String, PodWrite> = BTreeMap::new();
    for change in &changes[ordered..] {
        rest.entry(change.pod.clone())
            .or_insert_with(|| empty_write(&change.pod))
            .role = Some(change.role);
    }
    for (pod, want) in conditions {
        rest.entry(pod.clone())
            .or_insert_with(|| empty_write(&pod))
            .condition = Some(want);
    }
    PodWrites {
        in_order,
        parallel: rest.into_values().collect(),
    }
}

fn empty_write(pod: &str) -> PodWrite {
    PodWrite {
        pod: pod.to_owned(),
        role: None,
        condition: None,
    }
}

/// The writes of a pool without a (live) policy: roles removed and the
/// candidate condition turned False, one write per pod.
pub fn orphan_writes(pool: &str, views: &[PodView]) -> Vec<PodWrite> {
    let removals = decide::role_removals(views);
    views
        .iter()
        .filter_map(|pod| {
            let want = decide::candidate_condition(false, pool, pod);
            let condition = (!decide::candidate_condition_current(pod, &want)).then_some(want);
            let role = removals.iter().find(|c| c.pod == pod.name).map(|c| c.role);
            (role.is_some() || condition.is_some()).then(|| PodWrite {
                pod: pod.name.clone(),
                role,
                condition,
            })
        })
        .collect()
}

/// How long a pod must look deposed before it is deleted: the kubelet's
/// report that an app exited can reach the API server after the agent's
/// release on shutdown (a Job pod that completed), and such a pod must not be
/// mistaken for a deposed leader whose app still runs.
pub const DEPOSED_GRACE: Duration = Duration::from_secs(3);

/// Margin added to every wake-up, so the pass runs after the moment it waits
/// for, not just before.
pub(crate) const WAKE_MARGIN: Duration = Duration::from_millis(100);

/// Deposed `start` leaders: keeps `since` (pod UID → first seen deposed) to
/// the pods deposed now, and returns the UIDs due for deletion and when the
/// next one falls due.
pub fn deposed_due(
    since: &mut HashMap<String, Instant>,
    deposed: &[&PodView],
    now: Instant,
) -> (BTreeSet<String>, Option<Duration>) {
    since.retain(|uid, _| deposed.iter().any(|p| &p.uid == uid));
    for pod in deposed {
        since.entry(pod.uid.clone()).or_insert(now);
    }
    let due = since
        .iter()
        .filter(|(_, t)| now >= **t + DEPOSED_GRACE)
        .map(|(uid, _)| uid.clone())
        .collect();
    let next = since
        .values()
        .map(|t| *t + DEPOSED_GRACE)
        .filter(|t| *t > now)
        .min()
        .map(|t| t.saturating_duration_since(now) + WAKE_MARGIN);
    (due, next)
}

/// The Lease's clock as this controller sees it: when its current version
/// was first seen, and the holder's timings.
#[derive(Debug, Clone, Copy)]
pub struct LeaseClock {
    pub seen: Instant,
    pub renew_deadline: Duration,
    pub lease_duration: Duration,
}

/// When to look at a held Lease again without any change: at the holder's
/// renew deadline (a holder on a NotReady node may be cleared then), and
/// after that at expiry.
pub fn lease_wake(lease: &LeaseView, clock: Option<LeaseClock>, now: Instant) -> Option<Duration> {
    if lease.holder.is_none() || lease.expired {
        return None;
    }
    let clock = clock?;
    let at = if lease.past_renew_deadline {
        clock.seen + clock.lease_duration
    } else {
        clock.seen + clock.renew_deadline
    };
    Some(at.saturating_duration_since(now) + WAKE_MARGIN)
}

/// The earlier of two optional wake-ups.
pub fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
