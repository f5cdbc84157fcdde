//! App runs as the test app records them: `zl-testapp --record FILE`
//! appends `start`/`stop` lines with CLOCK_MONOTONIC timestamps (the host's
//! clock, shared with every container on the real node) to a hostPath file.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

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

/// How long a pool must go without any change to its pods before a round
/// deletes the leader: past the kubelet's few seconds of syncs after a
/// container starts (see the rounds below).
pub const STEADY: Duration = Duration::from_secs(5);

/// Waits until `leader` is Ready (the Pod condition) and no pod matching
/// `selector` has changed (resourceVersion) for `steady`: the pool's steady
/// state, as a user who deletes a running leader finds it.
pub async fn wait_steady(pods: &Api<Pod>, selector: &str, leader: &str, steady: Duration) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut since = tokio::time::Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap_or_else(|e| panic!("list pods: {e}"));
        let mut now: Vec<(String, String)> = list
            .items
            .iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.metadata.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect();
        now.sort();
        if now != seen {
            seen = now;
            since = tokio::time::Instant::now();
        }
        let leader_ready = list
            .items
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(leader) && super::pod_ready(p));
        if leader_ready && since.elapsed() >= steady {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool {selector} not steady (leader {leader} Ready: {leader_ready}) after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
