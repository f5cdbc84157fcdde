//! A de-duplicating work queue of pools: a pool queued twice is reconciled
//! once, and a pool is never reconciled by two workers at the same time (a
//! change that arrives while it runs queues it again afterwards). A pool
//! whose pass fails is retried with a per-pool exponential back-off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// A pool: (namespace, LeaderPolicy name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub namespace: String,
    pub name: String,
}

impl PoolKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Default)]
struct State {
    pending: VecDeque<PoolKey>,
    queued: HashSet<PoolKey>,
    running: HashSet<PoolKey>,
    dirty: HashSet<PoolKey>,
    /// Failed passes in a row, per pool (gone after a pass succeeds).
    failures: HashMap<PoolKey, u32>,
}

/// The first retry of a failed pass.
pub const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Retries double up to this, so a pool failing through a long outage costs
/// a couple of requests a minute, not ten a second.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// The delay before retrying a pass that failed `attempt` times in a row
/// (1 = the first failure): [`RETRY_FIRST`] doubling to [`RETRY_CAP`],
/// times a jitter of ±20% taken from `seed`, so pools that failed together
/// (an API server brownout) do not all come back in the same instant.
pub fn retry_delay(attempt: u32, seed: u64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let base = RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_CAP);
    // 800 ..= 1200 thousandths.
    let permille = 800 + u32::try_from(seed % 1001).unwrap_or(0) * 400 / 1000;
    base.saturating_mul(permille) / 1000
}

/// The queue; cheap to clone.
#[derive(Clone, Default)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    /// A second queue every key pushed here also goes to (the routing
    /// lane: see `runner`).
    mirror: Option<Arc<Queue>>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent sets behind
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A queue whose every push also queues the key on `mirror`.
    pub fn mirrored(mirror: Queue) -> Self {
        Queue {
            mirror: Some(Arc::new(mirror)),
            ..Queue::default()
        }
    }

    /// Queues `key` (no-op if already queued).
    pub fn push(&self, key: PoolKey) {
        if let Some(m) = &self.mirror {
            m.push(key.clone());
        }
        let mut s = self.lock();
        if s.running.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.pending.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues every pool of `keys`.
    pub fn extend(&self, keys: impl IntoIterator<Item = PoolKey>) {
        for key in keys {
            self.push(key);
        }
    }

    /// Queues `key` after `delay`.
    pub fn push_after(&self, key: PoolKey, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.push(key);
        });
    }

    /// Records a failed pass of `key` and queues it again after its
    /// back-off; returns the delay.
    pub fn retry(&self, key: PoolKey) -> Duration {
        let attempt = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        // A per-process random hash: replicas and pools spread differently.
        let seed = std::collections::hash_map::RandomState::new().hash_one((&key, attempt));
        let delay = retry_delay(attempt, seed);
        self.push_after(key, delay);
        delay
    }

    /// A pass of `key` succeeded: its next failure starts the back-off over.
    pub fn succeeded(&self, key: &PoolKey) {
        self.lock().failures.remove(key);
    }

    /// Waits for the next key and marks it running.
    pub async fn pop(&self) -> PoolKey {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.pending.pop_front() {
                    s.queued.remove(&key);
                    s.running.insert(key.clone());
                    if !s.pending.is_empty() {
                        // Wake another worker for the rest.
                        self.notify.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` finished; re-queues it if it changed meanwhile.
    pub fn done(&self, key: &PoolKey) {
        let again = {
            let mut s = self.lock();
            s.running.remove(key);
            s.dirty.remove(key)
        };
        if again {
            self.push(key.clone());
        }
    }

    /// Keys waiting (for tests and the metrics gauge).
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mirrored_queue_hands_every_key_to_its_mirror_too() {
        let lane = Queue::default();
        let q = Queue::mirrored(lane.clone());
        q.extend([PoolKey::new("ns", "a"), PoolKey::new("ns", "b")]);
        assert_eq!((q.len(), lane.len()), (2, 2));
        // The mirror runs on its own: a key running there is queued again
        // there, whatever the first queue does.
        let k = lane.pop().await;
        q.push(k.clone());
        lane.done(&k);
        assert_eq!(lane.len(), 2);
    }

    #[tokio::test]
    async fn dedupes_and_requeues_changes_made_while_running() {
        let q = Queue::default();
        let a = PoolKey::new("ns", "a");
        let b = PoolKey::new("ns", "b");
        q.push(a.clone());
        q.push(b.clone());
        q.push(a.clone());
        assert_eq!(q.len(), 2);
        let first = q.pop().await;
        assert_eq!(first, a);
        // Changed while running: not handed to a second worker...
        q.push(a.clone());
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop().await, b);
        assert!(q.is_empty());
        // ...but queued again once the first run is done.
        q.done(&a);
        assert_eq!(q.pop().await, a);
        q.done(&a);
        q.done(&b);
        assert!(q.is_empty());
    }

    #[test]
    fn retry_delays_double_to_the_cap_with_twenty_percent_jitter() {
        let ms = Duration::from_millis;
        let cases = [
            // (attempt, base)
            (0, ms(200)),
            (1, ms(200)),
            (2, ms(400)),
            (3, ms(800)),
            (5, ms(3_200)),
            (8, ms(25_600)),
            (9, RETRY_CAP),
            (1_000, RETRY_CAP),
            (u32::MAX, RETRY_CAP),
        ];
        for (attempt, base) in cases {
            let low = retry_delay(attempt, 0);
            let mid = retry_delay(attempt, 500);
            let high = retry_delay(attempt, 1000);
            assert_eq!(low, base * 4 / 5, "attempt {attempt}: lowest");
            assert_eq!(mid, base, "attempt {attempt}: middle");
            assert_eq!(high, base * 6 / 5, "attempt {attempt}: highest");
            for seed in [1, 7, 999, 123_456_789, u64::MAX] {
                let d = retry_delay(attempt, seed);
                assert!(
                    low <= d && d <= high,
                    "attempt {attempt} seed {seed}: {d:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn failures_back_off_per_pool_and_a_success_starts_over() {
        let q = Queue::default();
        let a = PoolKey::new("ns", "a");
        let b = PoolKey::new("ns", "b");
        let in_band = |d: Duration, base: Duration| base * 4 / 5 <= d && d <= base * 6 / 5;
        let ms = Duration::from_millis;
        for base in [ms(200), ms(400), ms(800), ms(1_600)] {
            let d = q.retry(a.clone());
            assert!(in_band(d, base), "a: {d:?} for {base:?}");
        }
        // Another pool's failures are its own.
        let d = q.retry(b.clone());
        assert!(in_band(d, ms(200)), "b: {d:?}");
        q.succeeded(&a);
        let d = q.retry(a.clone());
        assert!(in_band(d, ms(200)), "a after a success: {d:?}");
    }
}
