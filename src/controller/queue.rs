//! A de-duplicating work queue of pools: a pool queued twice is reconciled
//! once, and a pool is never reconciled by two workers at the same time (a
//! change that arrives while it runs queues it again afterwards).

use std::collections::{HashSet, VecDeque};
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
}

/// The queue; cheap to clone.
#[derive(Clone, Default)]
pub struct Queue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent sets behind
        // (every mutation is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` (no-op if already queued).
    pub fn push(&self, key: PoolKey) {
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
}
