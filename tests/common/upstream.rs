//! The upstream Go zen-lead (github.com/kube-zen/zen-lead at 8372680) as a
//! peer of leader-only routing (tests/routing.rs): installed into one test
//! namespace from tests/cluster/manifests/upstream-zen-lead.yaml, it keeps
//! beside a Service annotated `zen-lead.io/enabled: "true"` a selector-less
//! `<name>-leader` Service whose EndpointSlice (same name) holds one
//! endpoint: the oldest Ready pod the Service selects. No election: a pod
//! that is deleted, turns NotReady or loses its IP is replaced by the next
//! oldest Ready one on the controller's next reconcile.
//!
//! Its image is not made by `make cluster-up`: it must already be in the
//! local registry ([`install_upstream`] says so, naming it, when it is not).
//! The manager watches the whole cluster (it has no namespace flag) but acts
//! only on annotated Services; its ClusterRole and binding are named after
//! the namespace and removed by [`Upstream::uninstall`], or on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};

use crate::common::{self, LOCAL_REGISTRY, eventually, kubectl};

/// The manifests, with `__NAMESPACE__` where the install's namespace goes.
pub const MANIFEST: &str = "tests/cluster/manifests/upstream-zen-lead.yaml";
/// The annotation that opts a Service in.
pub const ENABLED: &str = "zen-lead.io/enabled";
/// How long the manager gets to start, and a slice to name a pod.
pub const WAIT: Duration = Duration::from_secs(120);

/// One install; [`Upstream::uninstall`] removes it (drop does too, less
/// tidily: the namespace's deletion takes the rest).
pub struct Upstream {
    pub ns: String,
    cluster_name: String,
    removed: bool,
}

/// The manifests for namespace `ns`, one JSON value per document.
pub fn manifests(ns: &str) -> Vec<Value> {
    let text = common::read_repo_file(MANIFEST).replace("__NAMESPACE__", ns);
    serde_saphyr::from_str_multiple(&text).unwrap_or_else(|e| panic!("{MANIFEST}: {e}"))
}

/// The manager's image, as the manifests name it.
pub fn image() -> String {
    let docs = manifests("x");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap_or_else(|| panic!("{MANIFEST} has no Deployment"));
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_else(|| panic!("{MANIFEST}: the Deployment names no image"))
        .to_owned()
}

/// Fails the test, saying what is missing, unless the local registry has
/// the manager's image (a pod would only sit in ImagePullBackOff).
pub async fn assert_image_in_registry() {
    if let Err(why) = image_in_registry().await {
        panic!("{why}");
    }
}

/// Whether the local registry has the manager's image; if not, why.
pub async fn image_in_registry() -> Result<(), String> {
    let image = image();
    let (repo, tag) = image
        .strip_prefix(&format!("{LOCAL_REGISTRY}/"))
        .and_then(|r| r.rsplit_once(':'))
        .unwrap_or_else(|| panic!("{image} is not in the local registry {LOCAL_REGISTRY}"));
    let (host, port) = LOCAL_REGISTRY.split_once(':').expect("host:port");
    let port: u16 = port.parse().expect("registry port");
    let tags = common::http_ok(host, port, "GET", &format!("/v2/{repo}/tags/list")).await;
    let listed = tags
        .as_ref()
        .is_ok_and(|body| body.contains(&format!("\"{tag}\"")));
    if listed {
        return Ok(());
    }
    Err(format!(
        "the upstream zen-lead image {image} is not in the local registry ({}); it is built \
         outside this repository and pushed there by hand (see {MANIFEST})",
        tags.map_or_else(|e| e, |body| body.trim().to_owned())
    ))
}

async fn create<K>(client: &Client, ns: &str, doc: &Value)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let object: K = common::from_json(doc.clone());
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {} {}: {e}", doc["kind"], doc["metadata"]["name"]));
}

async fn create_cluster<K>(client: &Client, doc: &Value)
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let object: K = common::from_json(doc.clone());
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {} {}: {e}", doc["kind"], doc["metadata"]["name"]));
}

/// Installs the manager into `ns` and waits until it is Ready (its /readyz
/// answers). It routes only once its own Lease is taken, which a lone
/// replica does at once: [`wait_routed_to_one`] is the proof that it works.
pub async fn install_upstream(client: &Client, ns: &str) -> Upstream {
    assert_image_in_registry().await;
    let cluster_name = format!("upstream-zen-lead-{ns}");
    let install = Upstream {
        ns: ns.to_owned(),
        cluster_name,
        removed: false,
    };
    for doc in manifests(ns) {
        match doc["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => create::<ServiceAccount>(client, ns, &doc).await,
            "Role" => create::<Role>(client, ns, &doc).await,
            "RoleBinding" => create::<RoleBinding>(client, ns, &doc).await,
            "Deployment" => create::<Deployment>(client, ns, &doc).await,
            "ClusterRole" => create_cluster::<ClusterRole>(client, &doc).await,
            "ClusterRoleBinding" => create_cluster::<ClusterRoleBinding>(client, &doc).await,
            other => panic!("{MANIFEST}: no rule to create a {other}"),
        }
    }
    install.wait_ready(client).await;
    install
}

impl Upstream {
    async fn wait_ready(&self, client: &Client) {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &self.ns);
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut dumped = false;
        eventually("the upstream zen-lead manager to be Ready", WAIT, || {
            if !dumped && tokio::time::Instant::now() + Duration::from_secs(2) >= deadline {
                dumped = true;
                self.dump();
            }
            let deployments = deployments.clone();
            async move {
                let d = deployments
                    .get("upstream-zen-lead")
                    .await
                    .map_err(|e| e.to_string())?;
                let status = d.status.unwrap_or_default();
                (status.ready_replicas == Some(1))
                    .then_some(())
                    .ok_or_else(|| format!("{status:?}"))
            }
        })
        .await;
    }

    /// The manager's pod and its log, on stderr: why it did not start.
    pub fn dump(&self) {
        let cache = std::env::temp_dir().join(format!("zl-upstream-{}", self.ns));
        for args in [
            &["get", "pods", "-o", "wide"][..],
            &["logs", "deploy/upstream-zen-lead", "--tail=40"][..],
        ] {
            let mut all = vec!["-n", self.ns.as_str()];
            all.extend_from_slice(args);
            let out = kubectl(&all, &cache);
            eprintln!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Stops the manager (its pod gone) and deletes its cluster-scoped
    /// objects; what it made in the namespace stays until the namespace goes.
    pub async fn uninstall(mut self, client: &Client) {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &self.ns);
        let _ = deployments
            .delete("upstream-zen-lead", &DeleteParams::foreground())
            .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.ns);
        eventually("the upstream zen-lead pod to be gone", WAIT, || {
            let pods = pods.clone();
            async move {
                let left = pods
                    .list(&ListParams::default().labels("app=upstream-zen-lead"))
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                (left == 0).then_some(()).ok_or(format!("{left} left"))
            }
        })
        .await;
        delete_cluster_objects(client.clone(), self.cluster_name.clone()).await;
        self.removed = true;
    }
}

async fn delete_cluster_objects(client: Client, name: String) {
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    if let Err(e) = bindings.delete(&name, &DeleteParams::default()).await {
        eprintln!("warning: ClusterRoleBinding {name} not deleted: {e}");
    }
    let roles: Api<ClusterRole> = Api::all(client);
    if let Err(e) = roles.delete(&name, &DeleteParams::default()).await {
        eprintln!("warning: ClusterRole {name} not deleted: {e}");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if !self.removed {
            let name = self.cluster_name.clone();
            common::cleanup_on_drop(move |client| delete_cluster_objects(client, name));
        }
    }
}

/// Creates Service `service` in `ns`, selecting `selector`, port `port` to
/// the pods' `target_port`, opted in to upstream's routing; returns the name
/// of the leader Service (and EndpointSlice) upstream keeps beside it.
pub async fn make_leader_routed(
    client: &Client,
    ns: &str,
    service: &str,
    selector: &BTreeMap<String, String>,
    port: i32,
    target_port: i32,
) -> String {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc: Service = common::from_json(json!({
        "metadata": {"name": service, "annotations": {ENABLED: "true"}},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": target_port}]
        }
    }));
    services
        .create(&PostParams::default(), &svc)
        .await
        .unwrap_or_else(|e| panic!("creating Service {ns}/{service}: {e}"));
    format!("{service}-leader")
}

/// One endpoint of a leader EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedEndpoint {
    /// The pod its targetRef names.
    pub pod: Option<String>,
    pub addresses: Vec<String>,
    pub ready: bool,
}

/// The endpoints of leader Service `leader`'s EndpointSlice (the slices
/// labelled `kubernetes.io/service-name: <leader>`, which upstream names
/// after the Service); `None` while there is no slice.
pub async fn leader_endpoints(
    client: &Client,
    ns: &str,
    leader: &str,
) -> Result<Option<Vec<RoutedEndpoint>>, kube::Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let selector = format!("kubernetes.io/service-name={leader}");
    let list = slices
        .list(&ListParams::default().labels(&selector))
        .await?;
    if list.items.is_empty() {
        return Ok(None);
    }
    let endpoints = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| RoutedEndpoint {
            pod: e.target_ref.as_ref().and_then(|r| r.name.clone()),
            addresses: e.addresses.clone(),
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false),
        })
        .collect();
    Ok(Some(endpoints))
}

/// Waits until leader Service `leader` routes to exactly one endpoint, ready,
/// naming a pod other than `not` (the deposed leader, if any); returns that
/// pod's name.
pub async fn wait_routed_to_one(
    client: &Client,
    ns: &str,
    leader: &str,
    not: Option<&str>,
    limit: Duration,
) -> String {
    let what = format!("{ns}/{leader} to route to one ready pod other than {not:?}");
    eventually(&what, limit, || async move {
        let endpoints = leader_endpoints(client, ns, leader)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no EndpointSlice yet")?;
        match endpoints.as_slice() {
            [one] if one.ready && one.addresses.len() == 1 && one.pod.as_deref() != not => one
                .pod
                .clone()
                .ok_or_else(|| format!("{one:?} names no pod")),
            other => Err(format!("endpoints {other:?}")),
        }
    })
    .await
}
