//! `make demo`'s script, `examples/demo/run.sh`, on the local cluster, run
//! twice in a row as a user might: each run installs zen-lead with the Helm
//! chart (`helm upgrade --install`, release `zen-lead-demo`), shows the `api`
//! controller pool with one writer and the `process` worker pool, deletes
//! each pool's leader and prints how long the take-over took. The second run
//! must work as the first did (nothing left over breaks it).
//!
//! The demo namespace is this test's own; the release is the demo's, so a
//! demo a developer left running on the test cluster is replaced, and it is
//! uninstalled at the end.

#[path = "common/chart.rs"]
mod chart;
mod common;

use std::process::Command;

use chart::helm_path;
use common::{kubeconfig_path, kubectl_path, repo_root};

const RELEASE: &str = "zen-lead-demo";
const SYSTEM_NS: &str = "zen-lead-demo-system";
/// The chart's image.repository (charts/zen-lead/values.yaml).
const CHART_IMAGE: &str = "ghcr.io/kube-zen/zen-lead";

/// Uninstalls the release and deletes both namespaces, whatever happened.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(helm_path())
            .args(["uninstall", RELEASE, "--namespace", SYSTEM_NS, "--wait"])
            .env("KUBECONFIG", kubeconfig_path())
            .status();
        let _ = Command::new(kubectl_path())
            .args(["delete", "namespace", &self.0, SYSTEM_NS, "--wait=false"])
            .args(["--ignore-not-found"])
            .env("KUBECONFIG", kubeconfig_path())
            .status();
    }
}

/// The number before " ms later" on the line that starts with `prefix`.
fn ms_after(stdout: &str, prefix: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{stdout}"));
    line.split(" ms later")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no take-over time in {line:?}"))
}

#[test]
fn make_demo_installs_with_helm_shows_both_pools_and_times_a_failover_twice() {
    let ns = format!("zl-demo-{}", std::process::id());
    let _cleanup = Cleanup(ns.clone());
    for round in 1..=2 {
        let out = Command::new("bash")
            .arg("examples/demo/run.sh")
            .current_dir(repo_root())
            .env("KUBECONFIG", kubeconfig_path())
            .env("KUBECTL", kubectl_path())
            .env("HELM", helm_path())
            .env("DEMO_NAMESPACE", &ns)
            .output()
            .unwrap_or_else(|e| panic!("run examples/demo/run.sh: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "make demo, run {round}, failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        for step in ["1/4", "2/4", "3/4", "4/4"] {
            assert!(
                stdout.contains(&format!("== {step}")),
                "run {round}: step {step} missing:\n{stdout}"
            );
        }
        assert!(
            stdout.contains("the heartbeat ConfigMap is written by"),
            "run {round}: no writer shown:\n{stdout}"
        );
        let api = ms_after(&stdout, "demo-controller: deleted");
        let process = ms_after(&stdout, "demo-workers: deleted");
        println!(
            "make demo, run {round}: take-over after deleting the leader: api pool (next \
             heartbeat) {api} ms, process pool (next app start) {process} ms"
        );
    }
    // Installed as a user would: the chart's own image name and tag (the
    // pod spec's; the status may name another tag of the same digest),
    // pulled by the kubelet (a pulled image is recorded by its registry
    // digest; the local node mirrors ghcr.io to the local registry).
    let out = common::run_ok(
        Command::new(kubectl_path())
            .env("KUBECONFIG", kubeconfig_path())
            .args(["get", "pods", "-n", SYSTEM_NS, "-o"])
            .arg(r#"jsonpath={range .items[*]}{.spec.containers[0].image} {.status.containerStatuses[0].imageID}{"\n"}{end}"#),
        "kubectl get the demo controller's pods",
    );
    let images = String::from_utf8_lossy(&out.stdout);
    let image = format!("{CHART_IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    assert!(
        !images.trim().is_empty()
            && images
                .lines()
                .all(|l| l.starts_with(&format!("{image} ")) && l.contains("@sha256:")),
        "the demo's controller does not run the chart's image, pulled:\n{images}"
    );
}
