//! App runs as the test app records them: `zl-testapp --record FILE`
//! appends `start`/`stop` lines with CLOCK_MONOTONIC timestamps (the host's
//! clock, shared with every container on the real node) to a hostPath file.

use std::path::Path;

/// The host's CLOCK_MONOTONIC, in nanoseconds: comparable with the records.
pub fn monotonic_ns() -> i64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub start: i64,
    pub stop: Option<i64>,
}

/// Each app run as [start, stop) in CLOCK_MONOTONIC ns, from the records file.
pub fn runs(dir: &Path) -> Vec<Run> {
    let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let mut runs: Vec<Run> = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(mono)) = (v["name"].as_str(), v["mono"].as_i64()) else {
            continue;
        };
        match v["event"].as_str() {
            Some("start") => runs.push(Run {
                name: name.to_owned(),
                start: mono,
                stop: None,
            }),
            Some("stop") => {
                if let Some(r) = runs
                    .iter_mut()
                    .rev()
                    .find(|r| r.name == name && r.stop.is_none())
                {
                    r.stop = Some(mono);
                }
            }
            _ => {}
        }
    }
    runs
}

pub fn assert_no_overlap(runs: &[Run]) {
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            let a_end = a.stop.unwrap_or(i64::MAX);
            let b_end = b.stop.unwrap_or(i64::MAX);
            assert!(
                a_end <= b.start || b_end <= a.start,
                "two apps ran at once: {a:?} and {b:?}"
            );
        }
    }
}
