//! The agent container the webhook injects: image, environment, probes,
//! mounts and the restricted security context, from [`InjectConfig`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::api_wiring::{self, TokenVolume};
use super::membership::ScheduledRun;
use crate::api::keys::IDENTITY_ANNOTATION;
use crate::api::{Activation, IdentityStrategy};
use crate::contract::{
    AGENT_COMMAND, AGENT_CONTAINER, AGENT_PROBE_PORT, APP_PROBES_ENV, AppProbe, BIN_DIR,
    BIN_DIR_ENV, BIN_VOLUME, JOB_NAME_ENV, SCHEDULED_TIME_ENV, agent_env,
};

/// Name of the agent's container port, its probe port on the pod IP (at
/// most 15 characters). The loopback API (`AGENT_PORT`) is not declared:
/// nothing outside the pod may use it.
pub const AGENT_PORT_NAME: &str = "zl-agent";

/// Arguments of the agent container's [`AGENT_COMMAND`].
pub const AGENT_ARGS: &[&str] = &["agent"];

/// The agent's probe endpoints.
pub mod agent_paths {
    /// Succeeds once the pod leads (`start` activation gates the app on it).
    pub const STARTZ: &str = "/startz";
    pub const READYZ: &str = "/readyz";
    pub const LIVEZ: &str = "/livez";
}

/// Largest `failureThreshold` the API accepts (int32). With `periodSeconds:
/// 1` a follower can wait about 68 years for leadership: effectively forever,
/// without the kubelet ever restarting a healthy follower's agent.
pub const STARTUP_FAILURE_THRESHOLD: i32 = i32::MAX;

/// UID and GID of the image's non-root user (distroless `nonroot`).
pub const AGENT_UID: i64 = 65532;

/// How the agent container is built. Comes from `zen-lead controller` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    pub image: String,
    /// `None`: the cluster's default (Always for `:latest`, else IfNotPresent).
    pub image_pull_policy: Option<String>,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// What a policy's `activation: auto` (the CRD default) means in this
    /// cluster: `Auto` keeps the per-kind rule of
    /// [`effective_activation`](super::activation::effective_activation).
    pub default_activation: Activation,
    /// Recorded in the injected annotation.
    pub version: String,
}

impl InjectConfig {
    /// Defaults for an image: requests small enough for any node.
    pub fn with_image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_pull_policy: None,
            cpu_request: "10m".to_owned(),
            memory_request: "16Mi".to_owned(),
            memory_limit: "64Mi".to_owned(),
            default_activation: Activation::Auto,
            version: crate::VERSION.to_owned(),
        }
    }
}

/// The agent container for `pool`. It always mounts a real service-account
/// token for its own API access (the Lease): the pod's, or with
/// [`TokenVolume::Absent`] one of its own. In `api` activation it also gets
/// the directory it writes the app's credentials into.
pub fn agent_container(
    pool: &str,
    config: &InjectConfig,
    activation: Activation,
    identity: IdentityStrategy,
    token: &TokenVolume,
    app_probes: &[AppProbe],
    scheduled: Option<&ScheduledRun>,
) -> Container {
    let mounts = agent_mounts(activation, token);
    let extra_env = agent_extra_env(activation, app_probes, scheduled);
    Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec![AGENT_COMMAND.to_owned()]),
        args: Some(AGENT_ARGS.iter().map(|a| (*a).to_owned()).collect()),
        // A native sidecar: started before the app, stopped after it.
        restart_policy: Some("Always".to_owned()),
        env: Some(agent_env_vars(pool, identity, extra_env)),
        ports: Some(vec![ContainerPort {
            name: Some(AGENT_PORT_NAME.to_owned()),
            container_port: AGENT_PROBE_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(agent_resources(config)),
        volume_mounts: Some(mounts),
        // The kubelet starts the app containers only after this succeeds:
        // once the pod leads (`start`), once the gate serves (`api`), once
        // the binary is shared (`process`).
        startup_probe: Some(agent_probe(
            agent_paths::STARTZ,
            1,
            STARTUP_FAILURE_THRESHOLD,
        )),
        readiness_probe: Some(agent_probe(agent_paths::READYZ, 5, 3)),
        liveness_probe: Some(agent_probe(agent_paths::LIVEZ, 10, 3)),
        security_context: Some(restricted_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// The agent's volume mounts: a real service-account token for its own API
/// access, plus what its activation shares with the app.
fn agent_mounts(activation: Activation, token: &TokenVolume) -> Vec<VolumeMount> {
    use api_wiring::*;
    let mut mounts = vec![VolumeMount {
        name: match token {
            TokenVolume::Present(name) => name.clone(),
            TokenVolume::Absent { .. } => AGENT_TOKEN_VOLUME.to_owned(),
        },
        mount_path: SA_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if activation == Activation::Api {
        mounts.push(VolumeMount {
            name: GATE_SA_VOLUME.to_owned(),
            mount_path: GATE_SA_DIR.to_owned(),
            ..VolumeMount::default()
        });
        mounts.push(VolumeMount {
            name: GATE_STATE_VOLUME.to_owned(),
            mount_path: GATE_STATE_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    if activation == Activation::Process {
        mounts.push(VolumeMount {
            name: BIN_VOLUME.to_owned(),
            mount_path: BIN_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    mounts
}

/// The agent's activation-specific environment (after the common part).
fn agent_extra_env(
    activation: Activation,
    app_probes: &[AppProbe],
    scheduled: Option<&ScheduledRun>,
) -> Vec<EnvVar> {
    use api_wiring::GATE_STATE_DIR;
    let mut extra_env = Vec::new();
    if activation == Activation::Api {
        extra_env.push(EnvVar {
            name: agent_env::ACTIVATION.to_owned(),
            value: Some("api".to_owned()),
            ..EnvVar::default()
        });
        extra_env.push(EnvVar {
            name: agent_env::GATE_STATE_DIR.to_owned(),
            value: Some(GATE_STATE_DIR.to_owned()),
            ..EnvVar::default()
        });
    }
    if activation == Activation::Process {
        let plain = |name: &str, value: String| EnvVar {
            name: name.to_owned(),
            value: Some(value),
            ..EnvVar::default()
        };
        extra_env.push(plain(agent_env::ACTIVATION, "process".to_owned()));
        extra_env.push(plain(BIN_DIR_ENV, BIN_DIR.to_owned()));
        if !app_probes.is_empty() {
            // Serialising plain structs cannot fail.
            let probes = serde_json::to_string(app_probes).unwrap_or_default();
            extra_env.push(plain(APP_PROBES_ENV, probes));
        }
        if let Some(run) = scheduled {
            extra_env.push(plain(SCHEDULED_TIME_ENV, run.time.clone()));
            extra_env.push(plain(JOB_NAME_ENV, run.job.clone()));
        }
    }
    extra_env
}

/// The agent's whole environment: pool, pod facts and identity, then
/// `extra_env`.
fn agent_env_vars(pool: &str, identity: IdentityStrategy, extra_env: Vec<EnvVar>) -> Vec<EnvVar> {
    vec![
        EnvVar {
            name: agent_env::POOL.to_owned(),
            value: Some(pool.to_owned()),
            ..EnvVar::default()
        },
        field_env(agent_env::POD_NAME, "metadata.name"),
        field_env(agent_env::POD_NAMESPACE, "metadata.namespace"),
        field_env(agent_env::POD_UID, "metadata.uid"),
        EnvVar {
            name: agent_env::IDENTITY_STRATEGY.to_owned(),
            value: Some(identity.as_str().to_owned()),
            ..EnvVar::default()
        },
        // Empty when the annotation is absent, which the agent reads as
        // "derive the identity from the pod".
        field_env(
            agent_env::IDENTITY,
            &format!("metadata.annotations['{IDENTITY_ANNOTATION}']"),
        ),
    ]
    .into_iter()
    .chain(extra_env)
    .collect()
}

/// An env var read from the pod's own fields (downward API).
fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An HTTP probe of the agent's probe port.
fn agent_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(AGENT_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// The agent's requests and limits, from the webhook's configuration.
fn agent_resources(config: &InjectConfig) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(config.cpu_request.clone())),
            ("memory".to_owned(), Quantity(config.memory_request.clone())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(config.memory_limit.clone()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Everything Pod Security "restricted" asks of a container.
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(AGENT_UID),
        run_as_group: Some(AGENT_UID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}
