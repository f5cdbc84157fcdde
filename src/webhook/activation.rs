//! Which activation a pool pod gets, and why: the policy's choice, the
//! cluster's default for `auto`, or the per-kind rule `auto` stands for.

use k8s_openapi::api::core::v1::Pod;

use super::agent::InjectConfig;
use super::denial::Denial;
use super::membership::controller_of;
use super::process;
use crate::api::Activation;
use crate::api::keys::EXCLUDE_CONTAINERS_ANNOTATION;
use crate::contract::AGENT_CONTAINER;

/// An activation (never `auto`) and why the pod gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub activation: Activation,
    pub reason: String,
}

/// The activation a pod gets. `auto` means `api` for pods of long-running
/// controllers, whose rollouts and drains need every replica Ready: ReplicaSets
/// (Deployments), StatefulSets and DaemonSets. Everything else (Jobs, CronJobs,
/// bare pods, other owners) runs to completion and must not overlap: `process`
/// where it can hold every app container (each has a `command`, and the pod
/// has no init containers, which `process` would not hold), since `run` stops
/// a deposed leader's program by its term's deadline, where `start` leaves it
/// running until the kubelet kills it; `start` otherwise.
pub fn effective_activation(requested: Activation, pod: &Pod) -> Activation {
    match requested {
        Activation::Auto => auto_activation(pod).activation,
        chosen => chosen,
    }
}

/// The activation the policy's `requested` one (`auto` for a missing policy)
/// gives `pod`, with the cluster's default standing in for `auto`, and why.
pub fn resolve_activation(requested: Activation, pod: &Pod, config: &InjectConfig) -> Resolved {
    match (requested, config.default_activation) {
        (Activation::Auto, Activation::Auto) => auto_activation(pod),
        (Activation::Auto, default) => Resolved {
            activation: default,
            reason: format!(
                "auto: the controller's --default-activation is {}",
                activation_name(default)
            ),
        },
        (chosen, _) => Resolved {
            activation: chosen,
            reason: format!("LeaderPolicy activation: {}", activation_name(chosen)),
        },
    }
}

/// What `auto` means for `pod`, and why.
fn auto_activation(pod: &Pod) -> Resolved {
    if let Some(kind) = long_running_owner(pod) {
        return Resolved {
            activation: Activation::Api,
            reason: format!(
                "auto: a {kind}'s pods run continuously, and api keeps every replica Ready"
            ),
        };
    }
    match process_blocker(pod) {
        None => Resolved {
            activation: Activation::Process,
            reason: "auto: every app container has a command, so process".to_owned(),
        },
        Some(why) => Resolved {
            activation: Activation::Start,
            reason: format!("auto: {why}, so start"),
        },
    }
}

/// The kind of the pod's controller when its pods run continuously.
fn long_running_owner(pod: &Pod) -> Option<&str> {
    controller_of(pod.metadata.owner_references.as_ref())
        .filter(|o| {
            o.api_version.starts_with("apps/")
                && matches!(o.kind.as_str(), "ReplicaSet" | "StatefulSet" | "DaemonSet")
        })
        .map(|o| o.kind.as_str())
}

/// Why `process` cannot hold this run-to-completion pod the way `start`
/// would, if anything: a container it cannot wire (no `command`), init
/// containers (`process` holds only app containers; with `start` the kubelet
/// starts no init container of a follower), or no app container left to hold.
fn process_blocker(pod: &Pod) -> Option<String> {
    // The pool only names itself in a Denial's text, which is not used here.
    let wiring = match process::wiring(pod, "") {
        Ok(wiring) => wiring,
        Err(Denial::NoCommand { container, .. }) => {
            return Some(format!(
                "container {container:?} has no command (process needs one)"
            ));
        }
        Err(Denial::UnknownExcludedContainers { names, .. }) => {
            return Some(format!(
                "{EXCLUDE_CONTAINERS_ANNOTATION} names {names:?}, which the pod does not have"
            ));
        }
        Err(Denial::ProbePort {
            container,
            kind,
            port,
            ..
        }) => {
            return Some(format!(
                "container {container:?}'s {kind} probe port {port:?} is neither a number nor \
                 one of its named ports (process needs one)"
            ));
        }
        Err(other) => return Some(format!("process cannot wire the pod ({other})")),
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Some("the pod has no spec".to_owned());
    };
    if let Some(init) = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name != AGENT_CONTAINER)
    {
        return Some(format!(
            "init container {:?} would run in every pod under process, which holds only app \
             containers",
            init.name
        ));
    }
    if wiring.ops.is_empty() {
        return Some(if spec.containers.is_empty() {
            "the pod has no app container for process to hold".to_owned()
        } else {
            format!("{EXCLUDE_CONTAINERS_ANNOTATION} excludes every app container from process")
        });
    }
    None
}

pub(super) fn activation_name(activation: Activation) -> &'static str {
    match activation {
        Activation::Api => "api",
        Activation::Process => "process",
        Activation::Start | Activation::Auto => "start",
    }
}
