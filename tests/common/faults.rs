//! Faults a real-node test injects into one pod, each undone when its guard
//! is dropped (a failing assertion must never leave a pod frozen or cut off:
//! the cluster outlives the test). Only the pod's own processes and the
//! cluster's own addresses (198.18.0.0/15) are touched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::Api;

/// Every process of a pod frozen with the cgroup v1 freezer (the real node's
/// kubelet uses `cgroupDriver: cgroupfs`), as a GC pause or a frozen VM
/// would; thawed on drop.
pub struct Frozen(PathBuf);

impl Frozen {
    pub fn pod(uid: &str) -> Frozen {
        let root = Path::new("/sys/fs/cgroup/freezer/kubepods");
        let state = ["burstable/", "besteffort/", ""]
            .iter()
            .map(|class| root.join(format!("{class}pod{uid}/freezer.state")))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no freezer cgroup for pod {uid} under {}", root.display()));
        std::fs::write(&state, "FROZEN").unwrap_or_else(|e| panic!("{}: {e}", state.display()));
        Frozen(state)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "THAWED");
    }
}

/// A pod cut off from the API server: its packets to the API server's
/// address (after kube-proxy's DNAT of the `kubernetes` Service) and the
/// answers back are dropped. The kubelet's probes still reach the pod, as in
/// a partition between the pod's network and the control plane. Healed on
/// drop. `api` lists every address the pod reaches the API server at (the
/// API server itself, and a [`Redirected`] proxy in front of it).
pub struct CutOff {
    rules: Vec<Vec<String>>,
}

impl CutOff {
    pub fn pod(pod_ip: &str, api: &[std::net::SocketAddr]) -> CutOff {
        let mut rules: Vec<Vec<String>> = Vec::new();
        for addr in api {
            let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
            for r in [
                [
                    "INPUT", "-s", pod_ip, "-d", &ip, "-p", "tcp", "--dport", &port,
                ],
                [
                    "OUTPUT", "-s", &ip, "-d", pod_ip, "-p", "tcp", "--sport", &port,
                ],
            ] {
                let mut rule: Vec<String> = r.iter().map(|s| (*s).to_owned()).collect();
                rule.extend(
                    ["-m", "comment", "--comment", "zl-test-cut", "-j", "DROP"].map(str::to_owned),
                );
                rules.push(rule);
            }
        }
        for rule in &rules {
            iptables("filter", "-I", rule);
        }
        CutOff { rules }
    }
}

impl Drop for CutOff {
    fn drop(&mut self) {
        for rule in &self.rules {
            iptables("filter", "-D", rule);
        }
    }
}

/// New connections from the real node's pods to the `kubernetes` Service
/// (`service`, its ClusterIP and port) go to `to` instead (a delaying proxy
/// of the test, in front of the API server), ahead of kube-proxy's own DNAT.
/// Installed before the pods start, so their every connection takes it.
/// Removed on drop; a rule left by a killed test run is removed first.
pub struct Redirected {
    rule: Vec<String>,
}

/// The real node's pod network (tests/cluster/realnode.go).
pub const REAL_POD_CIDR: &str = "198.19.128.0/24";

impl Redirected {
    pub fn service(service: std::net::SocketAddr, to: std::net::SocketAddr) -> Redirected {
        remove_rules("nat", "PREROUTING", "zl-test-redirect");
        let rule: Vec<String> = [
            "PREROUTING",
            "-s",
            REAL_POD_CIDR,
            "-d",
            &service.ip().to_string(),
            "-p",
            "tcp",
            "--dport",
            &service.port().to_string(),
            "-m",
            "comment",
            "--comment",
            "zl-test-redirect",
            "-j",
            "DNAT",
            "--to-destination",
            &to.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        iptables("nat", "-I", &rule);
        Redirected { rule }
    }
}

impl Drop for Redirected {
    fn drop(&mut self) {
        iptables("nat", "-D", &self.rule);
    }
}

/// Deletes every rule of `chain` whose comment is `comment`.
fn remove_rules(table: &str, chain: &str, comment: &str) {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-t", table, "-S", chain])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains(comment) {
            continue;
        }
        // `-A CHAIN args...` back into `-D CHAIN args...` (the comment has
        // no spaces, so splitting on whitespace is exact).
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let _ = Command::new("iptables")
            .args(["-w", "-t", table, "-D"])
            .args(args)
            .output();
    }
}

fn iptables(table: &str, op: &str, rule: &[String]) {
    let (chain, rest) = rule.split_first().unwrap_or_else(|| panic!("empty rule"));
    let mut cmd = Command::new("iptables");
    cmd.args(["-w", "-t", table, op, chain]);
    if op == "-I" {
        cmd.arg("1");
    }
    let out = cmd
        .args(rest)
        .output()
        .unwrap_or_else(|e| panic!("iptables: {e}"));
    if op == "-I" {
        assert!(
            out.status.success(),
            "iptables {op} {rule:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// PIDs of the host processes whose executable name ends with `exe` and
/// whose environment has `key=value` (a container's processes are host
/// processes on the real node).
/// How an injected agent's argv[0] ends (the webhook's `AGENT_COMMAND`).
pub fn agent_exe() -> &'static str {
    let command = zen_lead::contract::AGENT_COMMAND;
    command.rsplit('/').next().unwrap_or(command)
}

pub fn pids_with_env(exe: &str, key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv0 = cmdline.split(|b| *b == 0).next()?;
            if !argv0.ends_with(exe.as_bytes()) {
                return None;
            }
            let env = std::fs::read(e.path().join("environ")).ok()?;
            env.split(|b| *b == 0)
                .any(|kv| kv == needle.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// SIGKILL to each PID.
pub fn kill_all(pids: &[i32]) {
    for pid in pids {
        if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Restarts the API server and waits until it is ready again.
pub fn restart_apiserver() {
    restart_component("kube-apiserver");
}

/// Restarts one process of the local cluster (`kube-apiserver`, `kubelet`,
/// ...) with its command line; for the API server, waits until it is ready.
pub fn restart_component(name: &str) {
    let root = super::repo_root();
    super::run_ok(
        Command::new(root.join("tests/cluster/bin/zl-cluster"))
            .args(["restart", "--state"])
            .arg(root.join(".cluster"))
            .arg(name),
        &format!("zl-cluster restart {name}"),
    );
}

/// After API server restarts the controller manager's informers back off:
/// waits (up to 300 s) until a Deployment and a StatefulSet get their pods
/// again, so the next suite's workloads are not left without pods.
pub async fn wait_workload_controllers(client: &kube::Client) {
    super::with_namespace(client, "settle", |client, ns| async move {
        let pod_template = serde_json::json!({
            "metadata": {"labels": {"app": "settle"}},
            "spec": {"nodeSelector": {"type": "kwok"},
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "app", "image": "app"}]}
        });
        let workload = serde_json::json!({
            "metadata": {"name": "settle"},
            "spec": {"replicas": 1, "serviceName": "settle",
                     "selector": {"matchLabels": {"app": "settle"}},
                     "template": pod_template}
        });
        let mut deployment = workload.clone();
        if let Some(spec) = deployment["spec"].as_object_mut() {
            spec.remove("serviceName");
        }
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
            .create(&Default::default(), &super::from_json(deployment))
            .await
            .unwrap_or_else(|e| panic!("settle Deployment: {e}"));
        Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), &ns)
            .create(&Default::default(), &super::from_json(workload))
            .await
            .unwrap_or_else(|e| panic!("settle StatefulSet: {e}"));
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
        super::eventually(
            "the workload controllers to create pods again",
            Duration::from_secs(300),
            || {
                let pods = pods.clone();
                async move {
                    let list = pods
                        .list(&Default::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    let names: Vec<String> = list
                        .items
                        .iter()
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    let sts = names.iter().any(|n| n == "settle-0");
                    let deploy = names.iter().any(|n| n != "settle-0");
                    (sts && deploy)
                        .then_some(())
                        .ok_or(format!("pods so far: {names:?}"))
                }
            },
        )
        .await;
    })
    .await;
}
