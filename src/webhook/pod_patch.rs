//! The JSON patch that makes a pod a candidate: the agent first among init
//! containers, its volumes, the readiness gate, the pool label and the
//! annotations recording what was injected.

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use super::activation::{Resolved, activation_name};
use super::agent::InjectConfig;
use super::api_wiring::{self, TokenVolume};
use super::denial::PoolOrigin;
use super::patch::add;
use super::process;
use crate::api::Activation;
use crate::api::keys::{
    ACTIVATION_ANNOTATION, ACTIVATION_REASON_ANNOTATION, CANDIDATE_READINESS_GATE,
    INJECTED_ANNOTATION, POOL_FROM_ANNOTATION, POOL_LABEL,
};

/// `<version>/sha256:<16 hex>`: the hash covers everything injected, so two
/// pods with equal values got exactly the same agent.
pub fn injected_value(agent: &Value, pool: &str, config: &InjectConfig) -> String {
    let material = json!({"agent": agent, "pool": pool, "gate": CANDIDATE_READINESS_GATE});
    let bytes = material.to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}/sha256:{hex}", config.version)
}

pub(super) fn injection_patch(
    pod: &Pod,
    pool: &str,
    origin: &PoolOrigin,
    agent: &Container,
    resolved: &Resolved,
    token: &TokenVolume,
    config: &InjectConfig,
) -> Vec<PatchOperation> {
    let activation = resolved.activation;
    // Serialising a k8s-openapi Container cannot fail (no maps with
    // non-string keys); Null would only produce a patch the API server
    // rejects with a clear message.
    let agent = serde_json::to_value(agent).unwrap_or(Value::Null);
    let spec = pod.spec.as_ref();
    let mut ops = Vec::with_capacity(8);

    let volumes = agent_volumes(activation, token);
    match spec.and_then(|s| s.volumes.as_ref()) {
        Some(list) if !list.is_empty() => {
            ops.extend(
                volumes
                    .into_iter()
                    .map(|v| add(&["spec", "volumes", "-"], v)),
            );
        }
        _ if volumes.is_empty() => {}
        _ => ops.push(add(&["spec", "volumes"], Value::Array(volumes))),
    }

    // Agent first among init containers.
    match spec.and_then(|s| s.init_containers.as_ref()) {
        Some(list) if !list.is_empty() => {
            ops.push(add(&["spec", "initContainers", "0"], agent.clone()));
        }
        _ => ops.push(add(
            &["spec", "initContainers"],
            Value::Array(vec![agent.clone()]),
        )),
    }

    // Readiness gate, unless the user already declared it.
    let gate = json!({ "conditionType": CANDIDATE_READINESS_GATE });
    match spec.and_then(|s| s.readiness_gates.as_ref()) {
        Some(gates)
            if gates
                .iter()
                .any(|g| g.condition_type == CANDIDATE_READINESS_GATE) => {}
        Some(gates) if !gates.is_empty() => ops.push(add(&["spec", "readinessGates", "-"], gate)),
        _ => ops.push(add(&["spec", "readinessGates"], Value::Array(vec![gate]))),
    }

    // Label (lets the controller watch pool pods only).
    match pod.metadata.labels.as_ref() {
        Some(labels) if labels.get(POOL_LABEL).map(String::as_str) == Some(pool) => {}
        Some(_) => ops.push(add(&["metadata", "labels", POOL_LABEL], json!(pool))),
        None => ops.push(add(&["metadata", "labels"], json!({ POOL_LABEL: pool }))),
    }

    ops.extend(record_annotations(
        pod, &agent, pool, origin, resolved, config,
    ));
    ops
}

/// Volumes the agent mounts: the directory it keeps for the app (`api`),
/// and a token of its own when the pod has none. The latter has the
/// sources of the ServiceAccount plugin's volume.
fn agent_volumes(activation: Activation, token: &TokenVolume) -> Vec<Value> {
    use api_wiring::*;
    let mut volumes = Vec::new();
    if activation == Activation::Api {
        volumes.push(
            json!({"name": GATE_SA_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        );
        // An emptyDir lives as long as the pod, so the CA key outlives
        // restarts of the agent container, which is all it is for.
        volumes.push(
            json!({"name": GATE_STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        );
    }
    if activation == Activation::Process {
        volumes.push(process::bin_volume());
    }
    if matches!(token, TokenVolume::Absent { .. }) {
        volumes.push(json!({"name": AGENT_TOKEN_VOLUME, "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": AGENT_TOKEN_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        }}));
    }
    volumes
}

/// Annotations recording what was injected, from where.
fn record_annotations(
    pod: &Pod,
    agent: &Value,
    pool: &str,
    origin: &PoolOrigin,
    resolved: &Resolved,
    config: &InjectConfig,
) -> Vec<PatchOperation> {
    let records = [
        (INJECTED_ANNOTATION, injected_value(agent, pool, config)),
        (
            ACTIVATION_ANNOTATION,
            activation_name(resolved.activation).to_owned(),
        ),
        (ACTIVATION_REASON_ANNOTATION, resolved.reason.clone()),
        (POOL_FROM_ANNOTATION, origin.to_string()),
    ];
    if pod.metadata.annotations.is_some() {
        records
            .into_iter()
            .map(|(key, value)| add(&["metadata", "annotations", key], Value::String(value)))
            .collect()
    } else {
        let map: serde_json::Map<String, Value> = records
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        vec![add(&["metadata", "annotations"], Value::Object(map))]
    }
}
