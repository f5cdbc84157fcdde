//! `process` activation's changes to the app containers, free of I/O: each
//! app container's program runs under `zen-lead run` (from the binary the
//! agent shares), and its probes go through the agent or `zen-lead probe`,
//! so a held app's pod is still Ready.
//!
//! Istio's injector rewrites app probes the same way: the kubelet probes
//! the sidecar, which answers for the app (here: "held" while the pod does
//! not lead, the app's own probe while it does).

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::denial::Denial;
use super::patch::{add, replace};
use crate::api::keys::EXCLUDE_CONTAINERS_ANNOTATION;
use crate::contract::{
    AGENT_PROBE_PORT, AppProbe, BIN_DIR, BIN_PATH, BIN_VOLUME, ProbeAction, ProbeKind,
    app_health_path, start_budget_seconds,
};

/// What `process` activation adds besides the agent.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessWiring {
    /// Patch operations on the app containers (indexes of `spec.containers`,
    /// which inserting the agent among init containers does not move).
    pub ops: Vec<PatchOperation>,
    /// The probes the agent performs for the app, for its env.
    pub probes: Vec<AppProbe>,
}

/// The containers `zen-lead/exclude-containers` names (trimmed, no empties).
fn excluded(pod: &Pod) -> Vec<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXCLUDE_CONTAINERS_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Rewrites every app container that is not excluded, or refuses the pod
/// naming the container to fix. Nothing is changed when anything is wrong.
pub fn wiring(pod: &Pod, pool: &str) -> Result<ProcessWiring, Denial> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let excluded = excluded(pod);
    let unknown: Vec<String> = excluded
        .iter()
        .filter(|n| !containers.iter().any(|c| &c.name == *n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(Denial::UnknownExcludedContainers {
            pool: pool.to_owned(),
            names: unknown,
            containers: containers.iter().map(|c| c.name.clone()).collect(),
        });
    }
    let mut wiring = ProcessWiring::default();
    for (i, container) in containers.iter().enumerate() {
        if excluded.contains(&container.name) {
            continue;
        }
        let index = i.to_string();
        let at = |rest: &[&str]| -> Vec<String> {
            ["spec", "containers", index.as_str()]
                .iter()
                .chain(rest)
                .map(|s| (*s).to_owned())
                .collect()
        };
        wiring.ops.push(wrap_command(container, pool, &at)?);
        wiring.ops.push(bin_mount(container, &at));
        wire_probes(container, pool, &at, &mut wiring)?;
    }
    Ok(wiring)
}

/// Runs the container's program under `zen-lead run`; a container without
/// an explicit `command` is refused.
fn wrap_command(
    container: &Container,
    pool: &str,
    at: &impl Fn(&[&str]) -> Vec<String>,
) -> Result<PatchOperation, Denial> {
    let command = container
        .command
        .as_deref()
        .filter(|c| c.first().is_some_and(|p| !p.is_empty()))
        .ok_or_else(|| Denial::NoCommand {
            pool: pool.to_owned(),
            container: container.name.clone(),
        })?;
    let wrapped: Vec<&str> = [BIN_PATH, "run", "--"]
        .into_iter()
        .chain(command.iter().map(String::as_str))
        .collect();
    Ok(replace(&at(&["command"]), json!(wrapped)))
}

/// Mounts the binary the agent shares, read-only.
fn bin_mount(container: &Container, at: &impl Fn(&[&str]) -> Vec<String>) -> PatchOperation {
    let mount = json!(VolumeMount {
        name: BIN_VOLUME.to_owned(),
        mount_path: BIN_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    match container.volume_mounts.as_deref() {
        Some(list) if !list.is_empty() => add(&at(&["volumeMounts", "-"]), mount),
        _ => add(&at(&["volumeMounts"]), Value::Array(vec![mount])),
    }
}

/// Rewrites the container's probes (startup, readiness, liveness, in that
/// order); only the liveness probe gets the start budget.
fn wire_probes(
    container: &Container,
    pool: &str,
    at: &impl Fn(&[&str]) -> Vec<String>,
    wiring: &mut ProcessWiring,
) -> Result<(), Denial> {
    let budget = container.liveness_probe.as_ref().map_or(0, |l| {
        start_budget_seconds(container.startup_probe.as_ref(), l)
    });
    for (kind, field, probe) in [
        (
            ProbeKind::Startup,
            "startupProbe",
            container.startup_probe.as_ref(),
        ),
        (
            ProbeKind::Readiness,
            "readinessProbe",
            container.readiness_probe.as_ref(),
        ),
        (
            ProbeKind::Liveness,
            "livenessProbe",
            container.liveness_probe.as_ref(),
        ),
    ] {
        let Some(probe) = probe else { continue };
        let budget = if kind == ProbeKind::Liveness {
            budget
        } else {
            0
        };
        let (rewritten, app) = rewrite_probe(container, pool, kind, probe, budget)?;
        wiring.ops.push(replace(&at(&[field]), json!(rewritten)));
        wiring.probes.extend(app);
    }
    Ok(())
}

/// One probe: `exec` wrapped by `zen-lead probe`; the network kinds pointed
/// at the agent, which performs the original (returned) while the app runs.
fn rewrite_probe(
    container: &Container,
    pool: &str,
    kind: ProbeKind,
    probe: &Probe,
    budget: u32,
) -> Result<(Probe, Option<AppProbe>), Denial> {
    let mut out = probe.clone();
    if let Some(exec) = &probe.exec {
        let command = probe_command(kind, budget, exec.command.iter().flatten());
        if let Some(e) = out.exec.as_mut() {
            e.command = Some(command);
        }
        return Ok((out, None));
    }
    let Some(action) = probe_action(container, pool, kind, probe)? else {
        // A probe with no handler is refused by the API server anyway.
        return Ok((out, None));
    };
    out.tcp_socket = None;
    out.grpc = None;
    out.http_get = Some(HTTPGetAction {
        path: Some(app_health_path(&container.name, kind)),
        port: IntOrString::Int(AGENT_PROBE_PORT),
        scheme: Some("HTTP".to_owned()),
        ..HTTPGetAction::default()
    });
    let app = AppProbe {
        container: container.name.clone(),
        kind,
        action,
        timeout_seconds: probe
            .timeout_seconds
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(1),
        start_budget_seconds: budget,
    };
    Ok((out, Some(app)))
}

/// An exec probe's command under `zen-lead probe`.
fn probe_command<'a>(
    kind: ProbeKind,
    budget: u32,
    original: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let mut command = vec![
        BIN_PATH.to_owned(),
        "probe".to_owned(),
        "--kind".to_owned(),
        kind.as_str().to_owned(),
    ];
    if budget > 0 {
        command.extend(["--budget".to_owned(), format!("{budget}s")]);
    }
    command.push("--".to_owned());
    command.extend(original.cloned());
    command
}

/// What the agent performs for a network probe (`None`: no handler).
fn probe_action(
    container: &Container,
    pool: &str,
    kind: ProbeKind,
    probe: &Probe,
) -> Result<Option<ProbeAction>, Denial> {
    let port = |value: &IntOrString| probe_port(container, pool, kind, value);
    let action = if let Some(http) = &probe.http_get {
        ProbeAction::HttpGet {
            scheme: http.scheme.clone().unwrap_or_else(|| "HTTP".to_owned()),
            host: http.host.clone().unwrap_or_default(),
            port: port(&http.port)?,
            path: http.path.clone().unwrap_or_else(|| "/".to_owned()),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        ProbeAction::TcpSocket {
            host: tcp.host.clone().unwrap_or_default(),
            port: port(&tcp.port)?,
        }
    } else if let Some(grpc) = &probe.grpc {
        ProbeAction::Grpc {
            port: port(&IntOrString::Int(grpc.port))?,
            service: grpc.service.clone().unwrap_or_default(),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(action))
}

/// A probe's port as a number (named ports looked up in the container);
/// refuses the pod when it does not resolve to a valid port.
fn probe_port(
    container: &Container,
    pool: &str,
    kind: ProbeKind,
    value: &IntOrString,
) -> Result<u16, Denial> {
    let resolved = match value {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    };
    resolved
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| Denial::ProbePort {
            pool: pool.to_owned(),
            container: container.name.clone(),
            kind: kind.as_str(),
            port: match value {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => s.clone(),
            },
        })
}

/// The shared volume for the binary (a disk-backed emptyDir: the binary is
/// ~20 MB, which in memory would count against the pod's memory limit).
pub fn bin_volume() -> Value {
    json!({"name": BIN_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value, annotations: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": containers},
        }))
        .expect("pod")
    }

    #[test]
    fn refusals_name_what_to_fix_and_change_nothing() {
        let two = json!([
            {"name": "app", "command": ["/app"]},
            {"name": "sidecar"},
        ]);
        // The second container has no command.
        let err = wiring(&pod(two.clone(), json!({})), "pool").unwrap_err();
        assert!(
            matches!(&err, Denial::NoCommand { container, .. } if container == "sidecar"),
            "{err}"
        );
        // Excluding it is the fix ...
        let ok = wiring(
            &pod(
                two.clone(),
                json!({EXCLUDE_CONTAINERS_ANNOTATION: " sidecar , "}),
            ),
            "pool",
        )
        .expect("excluded");
        assert!(!ok.ops.is_empty());
        // ... but a name that is not a container is refused.
        let err = wiring(
            &pod(
                two,
                json!({EXCLUDE_CONTAINERS_ANNOTATION: "sidecar,shipper"}),
            ),
            "pool",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("shipper") && text.contains("\"app\""),
            "{text}"
        );
        // An empty command counts as none.
        let err = wiring(
            &pod(json!([{"name": "app", "command": []}]), json!({})),
            "pool",
        );
        assert!(matches!(err, Err(Denial::NoCommand { .. })));
        // A probe on a port name the container does not declare.
        let err = wiring(
            &pod(
                json!([{"name": "app", "command": ["/app"],
                        "readinessProbe": {"tcpSocket": {"port": "metrics"}}}]),
                json!({}),
            ),
            "pool",
        )
        .unwrap_err();
        assert!(
            matches!(&err, Denial::ProbePort { kind: "readiness", port, .. } if port == "metrics"),
            "{err}"
        );
    }

    #[test]
    fn args_stay_and_probe_timings_are_kept() {
        let w = wiring(
            &pod(
                json!([{"name": "app", "command": ["/app", "-v"], "args": ["x"],
                        "ports": [{"name": "web", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"port": "web", "path": "/r", "scheme": "HTTPS"},
                                           "periodSeconds": 3, "timeoutSeconds": 2,
                                           "failureThreshold": 4}}]),
                json!({}),
            ),
            "pool",
        )
        .expect("wired");
        let mut after = serde_json::to_value(pod(
            json!([{"name": "app", "command": ["/app", "-v"], "args": ["x"],
                    "ports": [{"name": "web", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"port": "web", "path": "/r", "scheme": "HTTPS"},
                                       "periodSeconds": 3, "timeoutSeconds": 2,
                                       "failureThreshold": 4}}]),
            json!({}),
        ))
        .expect("json");
        json_patch::patch(&mut after, &w.ops).expect("applies");
        let c = &after["spec"]["containers"][0];
        assert_eq!(c["command"], json!([BIN_PATH, "run", "--", "/app", "-v"]));
        assert_eq!(c["args"], json!(["x"]));
        let r = &c["readinessProbe"];
        assert_eq!(r["periodSeconds"], 3);
        assert_eq!(r["timeoutSeconds"], 2);
        assert_eq!(r["failureThreshold"], 4);
        assert_eq!(r["httpGet"]["port"], 9468);
        assert_eq!(w.probes.len(), 1);
        assert_eq!(w.probes[0].timeout_seconds, 2);
        assert!(matches!(
            &w.probes[0].action,
            ProbeAction::HttpGet { scheme, port: 8080, .. } if scheme == "HTTPS"
        ));
    }
}
