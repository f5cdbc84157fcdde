//! Leader-only routing on the local cluster's real node, and its peers.
//!
//! `upstream_peer_routes_to_one_pod` (ignored: it needs the upstream Go
//! zen-lead's image, which `make cluster-up` does not build) proves the
//! upstream peer works here before anything is timed against it: installed
//! in a test namespace, it routes a Service's `-leader` Service to exactly
//! one ready pod, and to another when that pod is deleted.

mod common;
#[path = "common/upstream.rs"]
mod upstream;

use std::collections::BTreeMap;
use std::time::Instant;

use common::workloads::pods_where;
use common::{client, eventually, from_json, pod_ready, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const TESTAPP: &str = "localhost/zl-testapp:dev";

/// A Deployment of `replicas` testapp pods on the real node, labelled
/// `app: <name>`, each answering HTTP on 8080 with its pod name, Ready once
/// it answers.
fn testapp_deployment(name: &str, replicas: i32) -> Deployment {
    from_json(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"zen-lead.io/node": "real"},
                    "tolerations": [{
                        "key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"
                    }],
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "app",
                        "image": TESTAPP,
                        "imagePullPolicy": "Never",
                        "env": [{
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}
                        }],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1
                        }
                    }]
                }
            }
        }
    }))
}

/// The Ready pod upstream must pick: the oldest, by name among equals.
fn oldest_ready<'a>(pods: &'a [Pod], except: Option<&str>) -> &'a str {
    pods.iter()
        .filter(|p| pod_ready(p) && p.metadata.name.as_deref() != except)
        .min_by_key(|p| {
            (
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                p.metadata.name.clone(),
            )
        })
        .and_then(|p| p.metadata.name.as_deref())
        .unwrap_or_else(|| panic!("no Ready pod left"))
}

/// Waits until Service `service`'s ClusterIP, from this host, answers with
/// pod `pod`'s name.
async fn answers_from(client: &Client, ns: &str, service: &str, pod: &str) {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = services
        .get(service)
        .await
        .unwrap_or_else(|e| panic!("Service {service}: {e}"));
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_else(|| panic!("{service} has no ClusterIP"));
    let want = format!("\"name\":\"{pod}\"");
    eventually(
        &format!("{service} ({ip}) to answer from {pod}"),
        upstream::WAIT,
        || {
            let (ip, want) = (ip.clone(), want.clone());
            async move {
                let body = common::http_ok(&ip, 80, "GET", "/").await?;
                body.contains(&want).then_some(()).ok_or(body)
            }
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the upstream zen-lead image in the local registry (tests/common/upstream.rs)"]
async fn upstream_peer_routes_to_one_pod() {
    let client = client().await;
    with_namespace(&client, "routing", |client, ns| async move {
        let peer = upstream::install_upstream(&client, &ns).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(&PostParams::default(), &testapp_deployment("app", 3))
            .await
            .unwrap_or_else(|e| panic!("creating Deployment app: {e}"));
        let pods = pods_where(&client, &ns, "app=app", 3, "Ready", pod_ready).await;

        let selector = BTreeMap::from([("app".to_owned(), "app".to_owned())]);
        let leader = upstream::make_leader_routed(&client, &ns, "app", &selector, 80, 8080).await;
        let wait = upstream::WAIT;
        let first = upstream::wait_routed_to_one(&client, &ns, &leader, None, wait).await;
        let oldest = oldest_ready(&pods, None);
        assert_eq!(first, oldest, "upstream routes to the oldest Ready pod");
        answers_from(&client, &ns, &leader, &first).await;

        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let deleted_at = Instant::now();
        pods_api
            .delete(&first, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting leader pod {first}: {e}"));
        let not = Some(first.as_str());
        let second = upstream::wait_routed_to_one(&client, &ns, &leader, not, wait).await;
        let switched = deleted_at.elapsed();
        let next = oldest_ready(&pods, not);
        assert_eq!(second, next, "the next oldest Ready pod takes over");
        answers_from(&client, &ns, &leader, &second).await;
        let answered = deleted_at.elapsed();
        eprintln!(
            "upstream: {first} deleted; the slice named {second} after {switched:?} \
             (polled every 200 ms), its ClusterIP answered from it after {answered:?}"
        );
        peer.uninstall(&client).await;
    })
    .await;
}
