//! The kubelet behaviours zen-lead relies on, proven on the local cluster's
//! real node `real-0` (containerd + runc + kubelet): a native sidecar's
//! startup probe holds the app container back, and on deletion the sidecar is
//! stopped after the app. KWOK nodes cannot show either: they run nothing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{client, eventually, from_json, records_dir, with_namespace};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const TESTAPP: &str = "localhost/zl-testapp:dev";

/// Scheduling onto the real node: it is tainted so that ordinary pods land on
/// KWOK nodes; real-node tests opt in explicitly.
fn on_real_node(mut spec: serde_json::Value) -> serde_json::Value {
    spec["nodeSelector"] = json!({"zen-lead.io/node": "real"});
    spec["tolerations"] =
        json!([{"key": "zen-lead.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]);
    spec["terminationGracePeriodSeconds"] = json!(20);
    spec
}

fn testapp(name: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec![format!("--name={name}")];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    json!({"name": name, "image": TESTAPP, "imagePullPolicy": "Never", "args": all})
}

fn read_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn container_running(pods: &Api<Pod>, pod: &str, container: &str) -> Result<Pod, String> {
    let p = pods.get(pod).await.map_err(|e| e.to_string())?;
    let status = p.status.clone().unwrap_or_default();
    let all = status
        .init_container_statuses
        .unwrap_or_default()
        .into_iter()
        .chain(status.container_statuses.unwrap_or_default());
    for cs in all {
        if cs.name == container {
            if cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some() {
                return Ok(p);
            }
            return Err(format!("{container} state {:?}", cs.state));
        }
    }
    Err(format!(
        "no status for {container} yet (phase {:?})",
        status.phase
    ))
}

async fn startup_probe_failures(client: &Client, ns: &str, pod: &str) -> Result<usize, String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod},reason=Unhealthy")))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("Startup probe failed"))
        })
        .map(|e| e.count.unwrap_or(1).max(1) as usize)
        .sum())
}

#[tokio::test]
async fn failing_sidecar_startup_probe_keeps_the_app_waiting() {
    let client = client().await;
    with_namespace(&client, "gate", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut gate = testapp("gate", &["--listen=:8080", "--gate=:8081"]);
        gate["restartPolicy"] = json!("Always");
        gate["startupProbe"] = json!({"httpGet": {"path": "/startz", "port": 8081}, "periodSeconds": 1, "failureThreshold": 600});
        let pod: Pod = from_json(json!({
            "metadata": {"name": "gated"},
            "spec": on_real_node(json!({
                "initContainers": [gate],
                "containers": [testapp("app", &["--listen=:8090"])]
            }))
        }));
        pods.create(&PostParams::default(), &pod).await.unwrap_or_else(|e| panic!("create pod: {e}"));

        let running = eventually("the sidecar to run on real-0", Duration::from_secs(60), || {
            container_running(&pods, "gated", "gate")
        })
        .await;
        // Wait until the kubelet has really probed and failed several times...
        eventually("3 failed startup probes", Duration::from_secs(60), || async {
            let n = startup_probe_failures(&client, &ns, "gated").await?;
            if n >= 3 { Ok(()) } else { Err(format!("{n} failed probes so far")) }
        })
        .await;
        // ...and the app container has still not been started.
        let p = pods.get("gated").await.unwrap_or_else(|e| panic!("get pod: {e}"));
        let app = p
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == "app");
        if let Some(app) = app {
            let state = app.state.unwrap_or_default();
            assert!(
                state.running.is_none() && state.terminated.is_none(),
                "the app started while the sidecar's startup probe was failing: {state:?}"
            );
        }

        // Open the gate: the probe passes, and only now does the app start.
        let ip = running
            .status
            .and_then(|s| s.pod_ip)
            .unwrap_or_else(|| panic!("running pod without an IP"));
        eventually("the gate to open", Duration::from_secs(20), || async { common::http_ok(&ip, 8081, "POST", "/open").await.map(|_| ()) }).await;
        eventually("the app to start once the probe passes", Duration::from_secs(60), || {
            container_running(&pods, "gated", "app")
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn native_sidecar_is_stopped_after_the_app() {
    let client = client().await;
    with_namespace(&client, "order", |client, ns| async move {
        let dir = records_dir(&ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mount = json!([{"name": "records", "mountPath": "/records"}]);
        let mut sidecar = testapp("sidecar", &["--listen=:8080", "--record=/records/log"]);
        sidecar["restartPolicy"] = json!("Always");
        sidecar["volumeMounts"] = mount.clone();
        // The app takes 2 s to stop: were the sidecar stopped alongside it, its
        // SIGTERM would be recorded before the app's stop.
        let mut app = testapp("app", &["--listen=:8090", "--record=/records/log", "--stop-delay=2s"]);
        app["volumeMounts"] = mount;
        let pod: Pod = from_json(json!({
            "metadata": {"name": "ordered"},
            "spec": on_real_node(json!({
                "initContainers": [sidecar],
                "containers": [app],
                "volumes": [{"name": "records", "hostPath": {"path": dir.to_string_lossy(), "type": "Directory"}}]
            }))
        }));
        pods.create(&PostParams::default(), &pod).await.unwrap_or_else(|e| panic!("create pod: {e}"));
        eventually("the app to run", Duration::from_secs(60), || container_running(&pods, "ordered", "app")).await;
        eventually("both containers to record their start", Duration::from_secs(20), || async {
            let starts = read_records(&dir).iter().filter(|r| r["event"] == "start").count();
            if starts >= 2 { Ok(()) } else { Err(format!("{starts} start lines")) }
        })
        .await;

        pods.delete("ordered", &DeleteParams::default()).await.unwrap_or_else(|e| panic!("delete pod: {e}"));
        eventually("the pod to be gone", Duration::from_secs(60), || async {
            match pods.get_opt("ordered").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("pod still exists".to_owned()),
            }
        })
        .await;
        let records = read_records(&dir);
        let mono = |name: &str, event: &str| {
            records
                .iter()
                .find(|r| r["name"] == name && r["event"] == event)
                .and_then(|r| r["mono"].as_i64())
                .unwrap_or_else(|| panic!("no {event} line from {name} in {records:?}"))
        };
        let app_stopped = mono("app", "stop");
        let sidecar_told = mono("sidecar", "sigterm");
        assert!(
            app_stopped <= sidecar_told,
            "the sidecar got SIGTERM {} ms before the app had stopped",
            (app_stopped - sidecar_told) / 1_000_000
        );
    })
    .await;
}

#[tokio::test]
async fn real_node_pods_have_ips_logs_exec_and_services() {
    let client = client().await;
    with_namespace(&client, "net", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // The pod reaches the API server through the `kubernetes` Service
        // (ClusterIP, routed by kube-proxy), the way in-cluster clients do.
        let mut app = testapp("web", &["--listen=:8080", "--fetch=https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)/version"]);
        app["ports"] = json!([{"containerPort": 8080}]);
        let pod: Pod = from_json(json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": on_real_node(json!({"containers": [app]}))
        }));
        pods.create(&PostParams::default(), &pod).await.unwrap_or_else(|e| panic!("create pod: {e}"));
        let running = eventually("the pod to run", Duration::from_secs(60), || container_running(&pods, "web", "web")).await;
        let ip = running.status.and_then(|s| s.pod_ip).unwrap_or_else(|| panic!("no pod IP"));
        assert!(ip.starts_with("198.19.128."), "pod IP {ip} is outside the real node's pod CIDR");

        // kubectl logs (API server -> kubelet): the fetch line says 200.
        let cache = tempdir(&ns);
        let line = eventually("the pod's fetch of the API server to be logged", Duration::from_secs(30), || {
            let out = common::kubectl(&["logs", "-n", &ns, "web"], &cache);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            async move {
                text.lines()
                    .find(|l| l.contains("\"event\":\"fetch\""))
                    .map(str::to_owned)
                    .ok_or_else(|| format!("no fetch line in logs: {text:?}"))
            }
        })
        .await;
        assert!(line.contains("200 OK"), "pod could not reach the API server via the kubernetes Service: {line}");

        // kubectl exec (API server -> kubelet -> containerd, upgraded stream).
        let out = common::kubectl(
            &["exec", "-n", &ns, "web", "--", "/usr/local/bin/testapp", "--name=exec", "--listen=:0", "--run-for=1ms"],
            &cache,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("\"name\":\"exec\""), "kubectl exec failed: {text} {}", String::from_utf8_lossy(&out.stderr));

        // A Service routes to the pod: from the host through its ClusterIP.
        let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns);
        let svc = services
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})),
            )
            .await
            .unwrap_or_else(|e| panic!("create Service: {e}"));
        let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_else(|| panic!("no ClusterIP"));
        // kube-proxy programs the Service once the EndpointSlice lists the pod;
        // both lag for a while after an API server restart (the chaos test).
        let body = eventually("the Service's ClusterIP to answer", Duration::from_secs(120), || {
            let cluster_ip = cluster_ip.clone();
            async move { common::http_ok(&cluster_ip, 80, "GET", "/").await }
        })
        .await;
        assert!(body.contains("\"name\":\"web\""), "unexpected answer through the Service: {body}");
    })
    .await;
}

fn tempdir(ns: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zl-kubectl-cache-{ns}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
