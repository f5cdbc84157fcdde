//! Every process `run` is responsible for: its descendants, found by
//! walking parent links in `/proc`. CMD's process group is not enough: a
//! process that calls setsid or setpgid (a daemonising app, a shell with
//! job control) leaves it and would outlive the term. `run` is a child
//! subreaper (or PID 1), so such a process stays in `run`'s tree even when
//! its parent exits: orphans are re-parented to `run`, not to the host's
//! init.
//!
//! Ancestry rather than "every process in the PID namespace": processes
//! the kubelet starts in the container (exec probes, `kubectl exec`) have
//! a parent outside the namespace, so they are left alone.
//!
//! [`descendants`] and [`parse_stat`] are pure; the rest reads `/proc` and
//! sends signals.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::time::{Instant, sleep};

/// One process as `/proc/PID/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub pid: i32,
    pub ppid: i32,
    /// Exited, not yet reaped (or being torn down): cannot act any more.
    pub dead: bool,
}

/// Reads one `/proc/PID/stat` line: `pid (comm) state ppid ...`. The name
/// may hold spaces and parentheses, so fields are counted from its last `)`.
pub fn parse_stat(line: &str) -> Option<Entry> {
    let (head, rest) = line.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Entry {
        pid,
        ppid,
        dead: matches!(state, "Z" | "X" | "x"),
    })
}

/// The live processes whose parent chain leads to `root` (not `root`
/// itself), in pid order.
pub fn descendants(root: i32, table: &[Entry]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<&Entry>> = HashMap::new();
    for entry in table {
        // A pid that is its own parent would loop; only the kernel's idle
        // task (pid 0) has ppid 0 = itself, and it is not listed.
        if entry.pid != entry.ppid {
            children.entry(entry.ppid).or_default().push(entry);
        }
    }
    let mut found = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(parent) = stack.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            // `found` also guards against a cycle in a torn read.
            if child.pid != root && found.insert(child.pid) {
                stack.push(child.pid);
            }
        }
    }
    // A dead process's children are still listed (re-parented later):
    // walked through, not signalled.
    let dead: BTreeSet<i32> = table.iter().filter(|e| e.dead).map(|e| e.pid).collect();
    found.into_iter().filter(|p| !dead.contains(p)).collect()
}

/// Every process in `/proc` now (those that vanish mid-read are skipped).
fn scan() -> std::io::Result<Vec<Entry>> {
    let mut table = Vec::new();
    for dir in std::fs::read_dir("/proc")? {
        let Ok(dir) = dir else { continue };
        let name = dir.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some(entry) = std::fs::read_to_string(dir.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            table.push(entry);
        }
    }
    Ok(table)
}

/// `run`'s own live descendants now; `None` when `/proc` cannot be read.
fn live_descendants() -> Option<Vec<i32>> {
    let root = rustix::process::getpid().as_raw_nonzero().get();
    match scan() {
        Ok(table) => Some(descendants(root, &table)),
        Err(err) => {
            tracing::warn!(
                "cannot read /proc ({err}): only CMD's process group is signalled, so a process \
                 that left it may outlive the term"
            );
            None
        }
    }
}

/// Bound on rescans for processes forked while a scan was being signalled.
const MAX_PASSES: usize = 16;

/// Sends `sig` to CMD's process group and to every descendant of `run`,
/// rescanning until a pass finds none it has not signalled (a process
/// forked between a scan and its signals is caught by the next one).
/// Returns how many descendants were signalled.
pub fn signal_all(group: Option<Pid>, sig: Signal) -> usize {
    if let Some(pgid) = group {
        // ESRCH (the group is gone already) is fine.
        let _ = rustix::process::kill_process_group(pgid, sig);
    }
    let mut signalled = BTreeSet::new();
    for _ in 0..MAX_PASSES {
        let Some(found) = live_descendants() else {
            break;
        };
        let fresh: Vec<i32> = found
            .into_iter()
            .filter(|p| !signalled.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            if let Some(p) = Pid::from_raw(pid) {
                // ESRCH: it exited meanwhile.
                let _ = rustix::process::kill_process(p, sig);
            }
            signalled.insert(pid);
        }
    }
    signalled.len()
}

/// How long [`kill_all`] waits for SIGKILLed processes to be gone.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// SIGKILLs CMD's group and every descendant of `run`, then waits (up to
/// [`KILL_WAIT`]) until none is alive, so what follows (dropping the hold,
/// so the agent may release; starting the next term's CMD) never overlaps
/// them. Their exits are reaped by `run`'s SIGCHLD loop (`super::reap`) or
/// by their own parents.
pub async fn kill_all(group: Option<Pid>) {
    let found = signal_all(group, Signal::KILL);
    if found == 0 {
        return;
    }
    tracing::info!(
        processes = found,
        "SIGKILLed the processes CMD left running (in its process group or not)"
    );
    let until = Instant::now() + KILL_WAIT;
    loop {
        let left = live_descendants().unwrap_or_default();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= until {
            tracing::warn!(
                pids = ?left,
                "processes left by CMD are still alive {KILL_WAIT:?} after SIGKILL (stuck in the \
                 kernel?); going on"
            );
            return;
        }
        // Anything forked since the last pass is killed too.
        signal_all(None, Signal::KILL);
        sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: i32, ppid: i32) -> Entry {
        Entry {
            pid,
            ppid,
            dead: false,
        }
    }

    #[test]
    fn reads_stat_lines_whatever_the_name_holds() {
        let cases: &[(&str, Option<Entry>)] = &[
            ("42 (sleep) S 7 42 42 0 -1", Some(e(42, 7))),
            ("43 (my (odd) name) R 1 43 1 0", Some(e(43, 1))),
            ("44 (a b) c) S 2 1 1", Some(e(44, 2))),
            (
                "45 (sh) Z 1 45 45",
                Some(Entry {
                    pid: 45,
                    ppid: 1,
                    dead: true,
                }),
            ),
            ("46 (sh)", None),
            ("x (sh) S 1", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_stat(line), *want, "{line:?}");
        }
    }

    #[test]
    fn finds_every_live_descendant_and_nothing_else() {
        let dead = |pid, ppid| Entry {
            pid,
            ppid,
            dead: true,
        };
        // (name, root, table, expected)
        let cases: Vec<(&str, i32, Vec<Entry>, Vec<i32>)> = vec![
            ("no children", 10, vec![e(10, 1), e(11, 1)], vec![]),
            (
                "children and grandchildren, not siblings or the parent",
                10,
                vec![e(1, 0), e(10, 1), e(20, 10), e(30, 20), e(31, 20), e(40, 1)],
                vec![20, 30, 31],
            ),
            (
                "a setsid'd process re-parented to run is still found",
                10,
                vec![e(10, 1), e(20, 10), e(25, 10)],
                vec![20, 25],
            ),
            (
                "run as PID 1: exec'd processes (parent outside, ppid 0) are left alone",
                1,
                vec![e(1, 0), e(7, 1), e(8, 7), e(9, 0), e(12, 9)],
                vec![7, 8],
            ),
            (
                "a zombie is not signalled, its live children are",
                10,
                vec![e(10, 1), dead(20, 10), e(30, 20)],
                vec![30],
            ),
            (
                "a cycle in a torn read ends",
                10,
                vec![e(10, 1), e(20, 10), e(30, 20), e(20, 30)],
                vec![20, 30],
            ),
            (
                "a self-parented entry is ignored",
                10,
                vec![e(10, 1), e(20, 20)],
                vec![],
            ),
        ];
        for (name, root, table, want) in cases {
            assert_eq!(descendants(root, &table), want, "{name}");
        }
    }
}
