//! Leader-only routing (`spec.leaderService`), decided without I/O: the
//! Service and EndpointSlice a pool should have, given its leader and what
//! the caches hold, and the writes that get there.
//!
//! The controller is the only writer (docs/ARCHITECTURE.md, "Leader-only
//! routing"): the slice holds at most one endpoint, the pod [`super::leader`]
//! names, so a switch replaces one address with another in a single write
//! and two pods are never named at once. Pool pods get no rights on either
//! object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

#[cfg(test)]
use super::PodPort;
use super::{LeaseView, PodView};
use crate::api::LeaderService;
use crate::api::keys::conditions::reasons;
use crate::api::keys::{ENDPOINT_SLICE_MANAGER, LEADER_SERVICE_LABEL, LEADER_SLICE_SUFFIX};

/// `kubernetes.io/service-name`: ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `endpointslice.kubernetes.io/managed-by`.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// The policy that owns a pool's routing objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub pool: String,
    pub uid: String,
}

impl Owner {
    fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "coordination.kube-zen.io/v1alpha1".to_owned(),
            kind: "LeaderPolicy".to_owned(),
            name: self.pool.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// Ours: labelled for this pool and owned by this policy.
    pub fn owns(&self, meta: &ObjectMeta) -> bool {
        let labelled = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LEADER_SERVICE_LABEL))
            .is_some_and(|p| *p == self.pool);
        let owned = meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == self.uid);
        labelled && owned
    }

    fn meta(&self, name: &str, extra: &[(&str, &str)]) -> ObjectMeta {
        let mut labels = BTreeMap::from([
            (LEADER_SERVICE_LABEL.to_owned(), self.pool.clone()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "zen-lead".to_owned(),
            ),
        ]);
        labels.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.reference()]),
            ..ObjectMeta::default()
        }
    }
}

/// The EndpointSlice name of leader Service `service`.
pub fn slice_name(service: &str) -> String {
    format!("{service}{LEADER_SLICE_SUFFIX}")
}

/// The Service as zen-lead keeps it: no selector, the spec's ports.
pub fn desired_service(owner: &Owner, spec: &LeaderService) -> Service {
    let ports = spec
        .ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.port,
            target_port: Some(p.target_port.clone().unwrap_or(IntOrString::Int(p.port))),
            protocol: Some(p.protocol.as_str().to_owned()),
            ..ServicePort::default()
        })
        .collect();
    Service {
        metadata: owner.meta(&spec.name, &[]),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The ports that matter in a Service: what routing reads.
fn service_ports(svc: &Service) -> Vec<(Option<String>, i32, Option<IntOrString>, String)> {
    let mut ports: Vec<_> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.name,
                p.port,
                p.target_port,
                p.protocol.unwrap_or_else(|| "TCP".to_owned()),
            )
        })
        .collect();
    ports.sort_by(|a, b| (a.1, &a.3).cmp(&(b.1, &b.3)));
    ports
}

fn has_selector(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

/// The leader pod's number for a target port; `None`: a name the pod does
/// not declare.
fn resolve(target: &IntOrString, leader: Option<&PodView>) -> Option<i32> {
    match target {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => leader?
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.port),
    }
}

/// The EndpointSlice for `leader` (none: an empty slice), and the named
/// target ports the leader does not declare.
pub fn desired_slice(
    owner: &Owner,
    spec: &LeaderService,
    leader: Option<&PodView>,
    address_type: &str,
) -> (EndpointSlice, Vec<String>) {
    let mut missing = Vec::new();
    let mut ports = Vec::new();
    for p in &spec.ports {
        let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
        match resolve(&target, leader) {
            Some(n) => ports.push(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(n),
                protocol: Some(p.protocol.as_str().to_owned()),
                app_protocol: None,
            }),
            None => {
                if let (IntOrString::String(name), Some(_)) = (&target, leader) {
                    missing.push(name.clone());
                }
            }
        }
    }
    let endpoints = leader
        .and_then(|pod| pod.ip.as_ref().map(|ip| (pod, ip)))
        .map(|(pod, ip)| Endpoint {
            addresses: vec![ip.clone()],
            conditions: Some(EndpointConditions {
                // A terminating leader is not marked terminating: it serves
                // until its successor takes over, kube-proxy would send to it
                // all the same (no other endpoint), and the change would
                // cost a kube-proxy sync before the switch (see [`target`]).
                ready: Some(pod.ready),
                serving: Some(pod.ready),
                terminating: Some(false),
            }),
            node_name: pod.node.clone(),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_owned()),
                namespace: Some(owner.namespace.clone()),
                name: Some(pod.name.clone()),
                uid: Some(pod.uid.clone()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        })
        .into_iter()
        .collect();
    let slice = EndpointSlice {
        metadata: owner.meta(
            &slice_name(&spec.name),
            &[
                (SERVICE_NAME_LABEL, &spec.name),
                (MANAGED_BY_LABEL, ENDPOINT_SLICE_MANAGER),
            ],
        ),
        address_type: address_type.to_owned(),
        endpoints,
        ports: Some(ports),
    };
    (slice, missing)
}

/// The pod a leader Service routes to: the Lease's holder while its term
/// is valid (terminating or not: it serves until its successor takes
/// over), unless its pod finished or its node is NotReady. A graceful
/// hand-off releases the Lease a few milliseconds before the successor
/// takes it: while nobody holds it and the pod routed to now
/// (`routed_now`) is terminating, that pod stays, so the switch is one
/// change of the slice. Every change costs a kube-proxy sync, and kube-proxy
/// rate-limits them (`--iptables-min-sync-period`, 1 s by default): a
/// needless one before the switch would hold the switch back.
pub fn target<'a>(
    lease: &LeaseView,
    pods: &'a [PodView],
    node_ready: &dyn Fn(&str) -> bool,
    routed_now: Option<&str>,
) -> Option<&'a PodView> {
    if lease.expired {
        return None;
    }
    let usable = |p: &&PodView| !p.finished && p.node.as_deref().is_none_or(node_ready);
    if lease.holder.is_none() {
        return pods
            .iter()
            .filter(usable)
            .find(|p| p.terminating && Some(p.name.as_str()) == routed_now);
    }
    super::holder_pod(lease, pods).filter(usable)
}

/// The pod an EndpointSlice names.
pub fn routed_pod(slice: &EndpointSlice) -> Option<&str> {
    slice
        .endpoints
        .first()
        .and_then(|e| e.target_ref.as_ref())
        .and_then(|r| r.name.as_deref())
}

/// `IPv6` for an address with a colon, else `IPv4`.
pub fn address_type_of(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

/// What a slice holds that routing decides.
fn slice_content(s: &EndpointSlice) -> (String, Vec<Endpoint>, Vec<EndpointPort>, bool) {
    let labelled = s.metadata.labels.as_ref().is_some_and(|l| {
        l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(ENDPOINT_SLICE_MANAGER)
            && l.contains_key(SERVICE_NAME_LABEL)
    });
    let mut endpoints = s.endpoints.clone();
    for e in &mut endpoints {
        // Fields the API server may fill in; routing does not set them.
        e.hints = None;
        e.deprecated_topology = None;
        e.zone = None;
        e.hostname = None;
    }
    (
        s.address_type.clone(),
        endpoints,
        s.ports.clone().unwrap_or_default(),
        labelled,
    )
}

/// What to do with one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Write<K> {
    /// It is as wanted.
    Keep,
    /// It does not exist: create it (a conflict means someone else's object
    /// appeared; the next pass reports it).
    Create(K),
    /// Ours, but different: replace what zen-lead sets (server-side apply).
    Apply(K),
    /// Ours, but its immutable address type differs: delete it and create
    /// this.
    Recreate(K),
}

/// Why routing is not in place, for the LeaderService condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A Service (or EndpointSlice) of that name exists that zen-lead did not
    /// create.
    NotManaged { kind: &'static str, name: String },
    /// The leader declares no container port of these names.
    TargetPortNotFound { pod: String, names: Vec<String> },
    /// EndpointSlices zen-lead did not write claim the leader Service
    /// (`kubernetes.io/service-name`): kube-proxy merges their endpoints
    /// into the Service's, so other pods receive leader traffic.
    ForeignSlices { names: Vec<String> },
}

/// The decisions of one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub service: Write<Service>,
    /// The Service has a selector: remove it outright. A server-side apply
    /// leaves a field another manager set (`kubectl edit`), and while it is
    /// there the EndpointSlice controller adds every pod it selects.
    pub drop_selector: bool,
    pub slice: Write<EndpointSlice>,
    pub problem: Option<Problem>,
}

/// The writes that bring `service` and `slice` (as cached) to what
/// `spec` and `leader` want. Nothing is written to an object zen-lead does
/// not own, and the slice is not written while its Service is not ours.
pub fn plan(
    owner: &Owner,
    spec: &LeaderService,
    leader: Option<&PodView>,
    service: Option<&Service>,
    slice: Option<&EndpointSlice>,
) -> Plan {
    let not_managed = |kind, name: &str| Plan {
        service: Write::Keep,
        drop_selector: false,
        slice: Write::Keep,
        problem: Some(Problem::NotManaged {
            kind,
            name: name.to_owned(),
        }),
    };
    if let Some(s) = service.filter(|s| !owner.owns(&s.metadata)) {
        return not_managed("Service", s.metadata.name.as_deref().unwrap_or(&spec.name));
    }
    if let Some(s) = slice.filter(|s| !owner.owns(&s.metadata)) {
        return not_managed(
            "EndpointSlice",
            s.metadata.name.as_deref().unwrap_or_default(),
        );
    }
    let want_svc = desired_service(owner, spec);
    let service_write = match service {
        None => Write::Create(want_svc),
        Some(s) if service_ports(s) != service_ports(&want_svc) || has_selector(s) => {
            Write::Apply(want_svc)
        }
        Some(_) => Write::Keep,
    };
    let address_type = leader
        .and_then(|p| p.ip.as_deref())
        .map(address_type_of)
        .or_else(|| slice.map(|s| s.address_type.as_str()))
        .unwrap_or("IPv4")
        .to_owned();
    let (want_slice, missing) = desired_slice(owner, spec, leader, &address_type);
    let slice_write = match slice {
        None => Write::Create(want_slice),
        Some(s) if s.address_type != address_type => Write::Recreate(want_slice),
        Some(s) if slice_content(s) != slice_content(&want_slice) => Write::Apply(want_slice),
        Some(_) => Write::Keep,
    };
    let problem = (!missing.is_empty()).then(|| Problem::TargetPortNotFound {
        pod: leader.map(|p| p.name.clone()).unwrap_or_default(),
        names: missing,
    });
    Plan {
        service: service_write,
        drop_selector: service.is_some_and(has_selector),
        slice: slice_write,
        problem,
    }
}

/// The EndpointSlices that claim leader Service `spec` and are not
/// zen-lead's (sorted names): someone else's, or what the EndpointSlice
/// controller left from a selector (it does not delete its slices when a
/// selector is removed).
pub fn foreign_slices<'a>(
    owner: &Owner,
    spec: &LeaderService,
    slices: impl IntoIterator<Item = &'a ObjectMeta>,
) -> Vec<String> {
    let mut names: Vec<String> = slices
        .into_iter()
        .filter(|m| {
            m.labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .is_some_and(|s| *s == spec.name)
        })
        .filter(|m| !owner.owns(m))
        .filter_map(|m| m.name.clone())
        .collect();
    names.sort();
    names
}

/// The LeaderService condition: (status, reason, message).
pub fn condition(
    namespace: &str,
    spec: &LeaderService,
    leader: Option<&str>,
    problem: Option<&Problem>,
    write_error: Option<&str>,
) -> (bool, &'static str, String) {
    let svc = format!("{namespace}/{}", spec.name);
    if let Some(err) = write_error {
        return (
            false,
            reasons::SERVICE_ERROR,
            format!("could not write Service {svc} or its EndpointSlice: {err}; retrying"),
        );
    }
    match problem {
        Some(Problem::NotManaged { kind, name }) => (
            false,
            reasons::SERVICE_NOT_MANAGED,
            format!(
                "{kind} {namespace}/{name} exists and zen-lead did not create it, so it is left \
                 untouched and the pool has no leader-only Service: choose another \
                 spec.leaderService.name, or delete that {kind}"
            ),
        ),
        Some(Problem::ForeignSlices { names }) => (
            false,
            reasons::FOREIGN_ENDPOINT_SLICE,
            format!(
                "EndpointSlice {} in {namespace} claims Service {svc} (label \
                 {SERVICE_NAME_LABEL}) and zen-lead did not write it: kube-proxy sends part of the \
                 leader traffic to its endpoints. Delete it, and find who creates it (who may \
                 create EndpointSlices in {namespace})",
                names.join(", ")
            ),
        ),
        Some(Problem::TargetPortNotFound { pod, names }) => (
            false,
            reasons::TARGET_PORT_NOT_FOUND,
            format!(
                "leader pod {pod} declares no container port named {}: spec.leaderService \
                 targetPort names a port the pod must declare (or give a number); Service {svc} \
                 leaves that port out",
                names.join(", ")
            ),
        ),
        None => match leader {
            Some(_) => (
                true,
                reasons::ROUTING_TO_LEADER,
                format!(
                    "Service {svc} sends traffic to the leader only (EndpointSlice {})",
                    slice_name(&spec.name)
                ),
            ),
            None => (
                true,
                reasons::NO_LEADER_TO_ROUTE,
                format!("Service {svc} has no endpoint while the pool has no leader"),
            ),
        },
    }
}

/// Routing objects of this pool that are not the wanted ones (a renamed or
/// removed `spec.leaderService`): `(kind, name)` to delete. Only ours.
pub fn stale<'a>(
    owner: &Owner,
    spec: Option<&LeaderService>,
    services: impl Iterator<Item = &'a ObjectMeta>,
    slices: impl Iterator<Item = &'a ObjectMeta>,
) -> Vec<(&'static str, String)> {
    let want = spec.map(|s| s.name.clone());
    let want_slice = want.as_deref().map(slice_name);
    let mut out = ours_except(owner, "Service", want.as_deref(), services);
    out.extend(ours_except(
        owner,
        "EndpointSlice",
        want_slice.as_deref(),
        slices,
    ));
    out
}

/// `(kind, name)` of each object of `metas` that is ours and not `keep`.
fn ours_except<'a>(
    owner: &Owner,
    kind: &'static str,
    keep: Option<&str>,
    metas: impl Iterator<Item = &'a ObjectMeta>,
) -> Vec<(&'static str, String)> {
    metas
        .filter(|m| owner.owns(m))
        .filter_map(|m| m.name.clone())
        .filter(|n| Some(n.as_str()) != keep)
        .map(|n| (kind, n))
        .collect()
}

#[cfg(test)]
mod tests;
