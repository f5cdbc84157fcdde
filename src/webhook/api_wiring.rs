//! `api` activation's wiring: every app container is pointed at the agent's
//! API gate on the pod's loopback (its environment, service-account
//! directory and host aliases), pure like the rest of the patch.

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, Pod, VolumeMount};
use serde_json::{Value, json};

use super::patch::{add, replace};
use crate::contract::{AGENT_CONTAINER, agent_env};

/// The gate's port on the pod's loopback. Must equal the default of
/// `zen-lead agent --gate-addr` (`127.0.0.1:9467`), like [`crate::contract::AGENT_PORT`].
pub const GATE_PORT: u16 = 9467;
/// The gate listens on loopback only: nothing outside the pod reaches it.
pub const GATE_HOST: &str = "127.0.0.1";
/// The directory every in-cluster client reads `token`, `ca.crt` and
/// `namespace` from (client-go, kube-rs, the Python and Java clients).
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Prefix of the projected token volume the ServiceAccount admission
/// plugin adds (`kube-api-access-<random>`); the plugin finds its own
/// volume by the same prefix.
pub const SA_VOLUME_PREFIX: &str = "kube-api-access-";
/// Where the agent writes the app's service-account directory (the
/// default of `zen-lead agent --gate-sa-dir`).
pub const GATE_SA_DIR: &str = "/var/run/zen-lead/serviceaccount";
/// The in-memory volume holding that directory, shared with the app.
pub const GATE_SA_VOLUME: &str = "zen-lead-serviceaccount";
/// Where the agent keeps the gate's CA private key across restarts of
/// its container (`zen-lead agent --gate-state-dir`).
pub const GATE_STATE_DIR: &str = "/var/run/zen-lead/gate-state";
/// The in-memory volume holding that directory. Mounted into the agent
/// only: an app that could read the key could impersonate the gate.
pub const GATE_STATE_VOLUME: &str = "zen-lead-gate-state";
/// The agent's own token volume, added only when the pod has none
/// (`automountServiceAccountToken: false` on the pod or its ServiceAccount).
pub const AGENT_TOKEN_VOLUME: &str = "zen-lead-api-access";
/// Lifetime requested for the agent's own projected token; the kubelet
/// rotates it at 80 %. The same value the ServiceAccount plugin uses.
pub const AGENT_TOKEN_SECONDS: i64 = 3607;
/// Names in-cluster clients use for the API server; they resolve to the
/// gate through the pod's host aliases. The agent's certificate covers
/// them and 127.0.0.1.
pub const API_SERVER_NAMES: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];
/// Environment variables in-cluster clients build the API server's
/// address from; app containers get them pointing at the gate.
pub const HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
pub const PORT_ENV: &str = "KUBERNETES_SERVICE_PORT";
pub const PORT_HTTPS_ENV: &str = "KUBERNETES_SERVICE_PORT_HTTPS";

/// The first injection's `api` wiring again, on the pod as it is now: it
/// changes only what is not wired yet (containers added since), so a pod
/// with nothing new gets no operations. Other activations wire nothing here.
pub(super) fn rewiring(pod: &Pod, warnings: &mut Vec<String>) -> Vec<PatchOperation> {
    if !runs_gate(pod) {
        return Vec::new();
    }
    match TokenVolume::of(pod) {
        TokenVolume::Present(volume) => app_wiring(pod, &volume, warnings),
        // Nothing was wired at injection either, and it said so then.
        TokenVolume::Absent { .. } => Vec::new(),
    }
}

/// Whether the pod's agent runs the gate (`api` activation). Asks the agent
/// container, not the activation annotation: wiring a container to a gate
/// that is not there would cut it off the API server.
fn runs_gate(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == AGENT_CONTAINER)
        .flat_map(|c| c.env.iter().flatten())
        .any(|e| e.name == agent_env::ACTIVATION && e.value.as_deref() == Some("api"))
}

/// `api` activation's wiring of the app containers, or (without a token to
/// fence) nothing but a warning.
pub(super) fn api_patch(
    pod: &Pod,
    pool: &str,
    token: &TokenVolume,
    warnings: &mut Vec<String>,
) -> Vec<PatchOperation> {
    match token {
        TokenVolume::Present(volume) => app_wiring(pod, volume, warnings),
        TokenVolume::Absent { pod_opted_out } => {
            warnings.push(format!(
                "zen-lead: activation \"api\" for pool {pool:?}, but the app has no \
                 service-account token ({}), so there are no Kubernetes API writes to fence: \
                 every replica runs unrestricted. Route traffic with the zen-lead.io/role=leader \
                 label, or use activation \"start\" if only one replica may run",
                if *pod_opted_out {
                    "the pod sets automountServiceAccountToken: false"
                } else {
                    "its ServiceAccount does not automount one"
                }
            ));
            Vec::new()
        }
    }
}

/// The pod's service-account token volume, as the ServiceAccount admission
/// plugin left it (it runs before mutating webhooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVolume {
    /// The plugin's projected volume, by name.
    Present(String),
    /// No token is mounted: the pod or its ServiceAccount turned automounting
    /// off. The agent then gets a token volume of its own.
    Absent { pod_opted_out: bool },
}

impl TokenVolume {
    pub fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let volume = spec
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .find(|v| v.name.starts_with(SA_VOLUME_PREFIX) && v.projected.is_some());
        match volume {
            Some(v) => Self::Present(v.name.clone()),
            None => Self::Absent {
                pod_opted_out: spec.and_then(|s| s.automount_service_account_token) == Some(false),
            },
        }
    }
}

/// Points every app container at the gate: `KUBERNETES_SERVICE_HOST/PORT`,
/// the service-account directory the agent keeps instead of the real token
/// mount, and host aliases for the API server's in-cluster names. Uses the
/// pod's indexes before the agent is inserted, so it must come first in the
/// patch. All init containers count: the agent is inserted in front of them,
/// so its gate is up before any of them starts. What is wired already gets
/// no operation, so on reinvocation only containers added since change.
fn app_wiring(pod: &Pod, token_volume: &str, warnings: &mut Vec<String>) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return ops;
    };
    let gate_env = [
        (HOST_ENV, GATE_HOST.to_owned()),
        (PORT_ENV, GATE_PORT.to_string()),
        (PORT_HTTPS_ENV, GATE_PORT.to_string()),
    ];
    let mount = serde_json::to_value(VolumeMount {
        name: GATE_SA_VOLUME.to_owned(),
        mount_path: SA_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    })
    .unwrap_or(Value::Null);
    let lists = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (list, containers) in lists {
        for (i, container) in containers.iter().enumerate() {
            // Present on reinvocation; it keeps the real token.
            if container.name == AGENT_CONTAINER {
                continue;
            }
            let index = i.to_string();
            let at = |rest: &[&'static str]| -> Vec<String> {
                ["spec", list, index.as_str()]
                    .iter()
                    .chain(rest)
                    .map(|s| (*s).to_owned())
                    .collect()
            };
            match token_mount_op(container, token_volume, &mount, &at) {
                Ok(op) => ops.extend(op),
                Err(warning) => {
                    warnings.push(warning);
                    continue;
                }
            }
            gate_env_ops(container, &gate_env, &at, &mut ops);
        }
    }
    ops.extend(host_aliases(pod, warnings));
    ops
}

/// The token mount: the plugin's volume is swapped for the agent's
/// directory. A container mounting something else there brings its own
/// credentials, which the gate could not forward: it is left alone entirely
/// (pointed at the gate, the CA it brings would not trust the agent's
/// certificate), and `Err` carries the warning saying so. `None`: the
/// directory is mounted already.
fn token_mount_op(
    container: &Container,
    token_volume: &str,
    mount: &Value,
    at: &impl Fn(&[&'static str]) -> Vec<String>,
) -> Result<Option<PatchOperation>, String> {
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    match mounts
        .iter()
        .position(|m| m.mount_path.trim_end_matches('/') == SA_MOUNT_PATH)
    {
        Some(k) if mounts[k].name == GATE_SA_VOLUME => Ok(None),
        Some(k) if mounts[k].name == token_volume => {
            let mut path = at(&["volumeMounts"]);
            path.push(k.to_string());
            Ok(Some(replace(&path, mount.clone())))
        }
        Some(k) => Err(format!(
            "zen-lead: container {:?} mounts volume {:?} at {SA_MOUNT_PATH}, not the \
             pod's service-account token; it keeps its own credentials and talks to \
             the API server directly, so its writes are not fenced",
            container.name, mounts[k].name
        )),
        // Also keeps the ServiceAccount plugin, which runs again
        // after this webhook changed the pod, from adding the real
        // token to this container.
        None if container.volume_mounts.is_none() => Ok(Some(add(
            &at(&["volumeMounts"]),
            Value::Array(vec![mount.clone()]),
        ))),
        None => Ok(Some(add(&at(&["volumeMounts", "-"]), mount.clone()))),
    }
}

/// Environment: explicit env wins over the kubelet's service variables and
/// over envFrom, so these override both. Entries already equal are left.
fn gate_env_ops(
    container: &Container,
    gate_env: &[(&str, String)],
    at: &impl Fn(&[&'static str]) -> Vec<String>,
    ops: &mut Vec<PatchOperation>,
) {
    match container.env.as_ref() {
        None => ops.push(add(
            &at(&["env"]),
            Value::Array(
                gate_env
                    .iter()
                    .map(|(n, v)| json!({"name": n, "value": v}))
                    .collect(),
            ),
        )),
        Some(env) => {
            for (name, value) in gate_env {
                let entry = json!({"name": name, "value": value});
                match env.iter().position(|e| e.name == *name) {
                    Some(k)
                        if env[k].value.as_ref() == Some(value) && env[k].value_from.is_none() => {}
                    Some(k) => {
                        let mut path = at(&["env"]);
                        path.push(k.to_string());
                        ops.push(replace(&path, entry));
                    }
                    None => ops.push(add(&at(&["env", "-"]), entry)),
                }
            }
        }
    }
}

/// Host aliases sending the API server's in-cluster names to the gate,
/// merged into an existing 127.0.0.1 entry so no name is listed twice.
fn host_aliases(pod: &Pod, warnings: &mut Vec<String>) -> Vec<PatchOperation> {
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    for alias in aliases.iter().filter(|a| a.ip != GATE_HOST) {
        for name in alias.hostnames.iter().flatten() {
            if API_SERVER_NAMES.contains(&name.as_str()) {
                warnings.push(format!(
                    "zen-lead: hostAliases send {name:?} to {}; the API gate needs it on \
                     {GATE_HOST}, and /etc/hosts answers with the first match",
                    alias.ip
                ));
            }
        }
    }
    let Some(i) = aliases.iter().position(|a| a.ip == GATE_HOST) else {
        let entry = json!({"ip": GATE_HOST, "hostnames": API_SERVER_NAMES});
        return vec![if aliases.is_empty() {
            add(&["spec", "hostAliases"], Value::Array(vec![entry]))
        } else {
            add(&["spec", "hostAliases", "-"], entry)
        }];
    };
    let index = i.to_string();
    let present = aliases[i].hostnames.as_deref().unwrap_or_default();
    let missing: Vec<&str> = API_SERVER_NAMES
        .iter()
        .copied()
        .filter(|n| !present.iter().any(|p| p == n))
        .collect();
    if aliases[i].hostnames.is_none() {
        return vec![add(
            &["spec", "hostAliases", &index, "hostnames"],
            json!(missing),
        )];
    }
    missing
        .into_iter()
        .map(|n| add(&["spec", "hostAliases", &index, "hostnames", "-"], json!(n)))
        .collect()
}
