//! Proves the local cluster (tests/cluster/) is a real, working Kubernetes:
//! version, scheduling onto KWOK nodes, controllers (Deployments, CronJobs,
//! garbage collection, namespaces), PodSecurity admission, an API server that
//! really calls a mutating webhook on loopback, and the client-go election
//! peer that benchmarks compare zen-lead against.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{client, eventually, from_json, repo_root, with_namespace};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const LONG: Duration = Duration::from_secs(120);

fn small_pod_spec() -> serde_json::Value {
    json!({
        "containers": [{
            "name": "app",
            "image": "registry.invalid/app:1",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "runAsNonRoot": true,
                "runAsUser": 1000,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            }
        }]
    })
}

#[tokio::test]
async fn reports_kubernetes_1_34() {
    let client = client().await;
    let info = client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("GET /version failed: {e}"));
    assert_eq!(info.major, "1");
    assert_eq!(
        info.minor, "34",
        "expected Kubernetes 1.34, got {}",
        info.git_version
    );
    assert!(
        info.git_version.starts_with("v1.34."),
        "gitVersion must be stamped v1.34.x (helm relies on it), got {}",
        info.git_version
    );
}

async fn pods_ready_on_kwok(
    client: &Client,
    ns: &str,
    selector: &str,
    want: usize,
) -> Result<(), String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| e.to_string())?;
    let ready = list
        .items
        .iter()
        .filter(|p| {
            let status = p.status.as_ref();
            let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
            let is_ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let on_kwok = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n.starts_with("kwok-"));
            running && is_ready && on_kwok
        })
        .count();
    if ready == want && list.items.len() == want {
        Ok(())
    } else {
        Err(format!(
            "{ready} of {} pods Running+Ready on KWOK nodes, want {want}",
            list.items.len()
        ))
    }
}

#[tokio::test]
async fn deployment_runs_three_ready_pods_on_kwok_nodes() {
    let client = client().await;
    with_namespace(&client, "deploy", |client, ns| async move {
        let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let d: Deployment = from_json(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": small_pod_spec()}
            }
        }));
        deploys
            .create(&PostParams::default(), &d)
            .await
            .unwrap_or_else(|e| panic!("create Deployment: {e}"));
        eventually("3 pods Running and Ready on KWOK nodes", LONG, || {
            pods_ready_on_kwok(&client, &ns, "app=web", 3)
        })
        .await;
        eventually(
            "the Deployment to report 3 available replicas",
            LONG,
            || async {
                let d = deploys.get("web").await.map_err(|e| e.to_string())?;
                let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
                if available == 3 {
                    Ok(())
                } else {
                    Err(format!("{available} available"))
                }
            },
        )
        .await;

        // Garbage collector: deleting the Deployment (background propagation)
        // removes its ReplicaSet and pods.
        deploys
            .delete("web", &DeleteParams::background())
            .await
            .unwrap_or_else(|e| panic!("delete Deployment: {e}"));
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        eventually("the garbage collector to remove the pods", LONG, || async {
            let n = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} pods left"))
            }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn cronjob_creates_jobs_on_schedule() {
    let client = client().await;
    with_namespace(&client, "cron", |client, ns| async move {
        let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
        let cj: CronJob = from_json(json!({
            "metadata": {"name": "tick"},
            "spec": {
                "schedule": "* * * * *",
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": small_pod_spec()["containers"].clone()
                }}}}
            }
        }));
        cronjobs
            .create(&PostParams::default(), &cj)
            .await
            .unwrap_or_else(|e| panic!("create CronJob: {e}"));
        // The schedule fires at the next minute boundary: at most ~60 s away.
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let owner = eventually(
            "the CronJob controller to create a Job",
            Duration::from_secs(150),
            || async {
                let list = jobs
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                list.items
                    .into_iter()
                    .find_map(|j| {
                        j.metadata
                            .owner_references
                            .unwrap_or_default()
                            .into_iter()
                            .find(|o| o.kind == "CronJob" && o.name == "tick")
                    })
                    .ok_or_else(|| "no Job owned by CronJob tick yet".to_owned())
            },
        )
        .await;
        assert_eq!(owner.controller, Some(true));
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        eventually(
            "the Job controller to create the Job's pod",
            LONG,
            || async {
                let n = pods
                    .list(&ListParams::default().labels("batch.kubernetes.io/job-name"))
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                if n > 0 {
                    Ok(())
                } else {
                    Err("no Job pod yet".to_owned())
                }
            },
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn deleting_a_namespace_removes_everything_in_it() {
    let client = client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"generateName": "zl-nsgc-", "labels": {"zen-lead.io/test": "true"}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace: {e}"));
    let ns = ns
        .metadata
        .name
        .unwrap_or_else(|| panic!("namespace without a name"));
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deploys
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": "doomed"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "doomed"}},
                         "template": {"metadata": {"labels": {"app": "doomed"}}, "spec": small_pod_spec()}}
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("create Deployment: {e}"));
    eventually("2 pods Running", LONG, || {
        pods_ready_on_kwok(&client, &ns, "app=doomed", 2)
    })
    .await;
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete namespace: {e}"));
    eventually(
        "the namespace and all its objects to be gone",
        LONG,
        || async {
            match namespaces.get_opt(&ns).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(n) => Err(format!(
                    "namespace still {:?}",
                    n.status.and_then(|s| s.phase)
                )),
            }
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let left = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    assert_eq!(left, 0, "pods survived their namespace");
}

#[tokio::test]
async fn pod_security_restricted_rejects_a_privileged_pod() {
    let client = client().await;
    with_namespace(&client, "psa", |client, ns| async move {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("label namespace: {e}"));
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let privileged: Pod = from_json(json!({
            "metadata": {"name": "root"},
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/c:1",
                                      "securityContext": {"privileged": true}}]}
        }));
        let err = pods
            .create(&PostParams::default(), &privileged)
            .await
            .expect_err("a privileged pod must be rejected in a restricted namespace");
        let text = err.to_string();
        assert!(text.contains("violates PodSecurity \"restricted"), "unexpected rejection: {text}");
        // And a compliant pod is admitted, so the rejection is about the pod.
        let ok: Pod = from_json(json!({"metadata": {"name": "fine"}, "spec": small_pod_spec()}));
        pods.create(&PostParams::default(), &ok)
            .await
            .unwrap_or_else(|e| panic!("a restricted-compliant pod was rejected: {e}"));
    })
    .await;
}

/// A tiny HTTPS admission webhook: rcgen certificate, rustls, HTTP/1.1 by
/// hand. It labels every pod it sees and counts calls.
async fn start_tiny_webhook() -> (u16, String, Arc<AtomicUsize>) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = zen_lead::tls::generate(&zen_lead::tls::CertRequest {
        dns_names: vec![],
        ip_addresses: vec!["127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"))],
        validity: Duration::from_secs(24 * 3600),
    })
    .unwrap_or_else(|e| panic!("rcgen certificates: {e}"));
    let chain = vec![
        CertificateDer::from_pem_slice(certs.cert_pem.as_bytes())
            .unwrap_or_else(|e| panic!("cert: {e}")),
    ];
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .unwrap_or_else(|e| panic!("key: {e}"));
    // No ALPN: this server speaks HTTP/1.1 only, so the API server must not pick h2.
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| panic!("{e}"))
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap_or_else(|e| panic!("server config: {e}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut stream = BufReader::new(tls);
                loop {
                    // Request line + headers.
                    let mut content_length = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if !first
                            && let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                        first = false;
                    }
                    let mut body = vec![0u8; content_length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let review: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let uid = review["request"]["uid"].clone();
                    let patch = serde_json::to_vec(&json!([
                        {"op": "add", "path": "/metadata/labels", "value": {"smoke-webhook": "called"}}
                    ]))
                    .unwrap_or_default();
                    // ByteString serialises as base64, the encoding `patch` needs.
                    let patch = serde_json::to_value(ByteString(patch)).unwrap_or_default();
                    let response = json!({
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch",
                                     "patch": patch}
                    })
                    .to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        response.len()
                    );
                    let inner = stream.get_mut();
                    if inner.write_all(head.as_bytes()).await.is_err()
                        || inner.write_all(response.as_bytes()).await.is_err()
                        || inner.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, certs.ca_cert_pem, calls)
}

#[tokio::test]
async fn api_server_calls_a_loopback_https_webhook() {
    let client = client().await;
    let (port, ca_pem, calls) = start_tiny_webhook().await;
    with_namespace(&client, "hook", |client, ns| async move {
        let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let name = format!("{ns}-smoke");
        let cfg = MutatingWebhookConfiguration {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            webhooks: Some(vec![MutatingWebhook {
                name: "smoke.zen-lead.io".to_owned(),
                admission_review_versions: vec!["v1".to_owned()],
                side_effects: "None".to_owned(),
                failure_policy: Some("Fail".to_owned()),
                timeout_seconds: Some(5),
                client_config: WebhookClientConfig {
                    url: Some(format!("https://127.0.0.1:{port}/mutate")),
                    ca_bundle: Some(ByteString(ca_pem.into_bytes())),
                    ..WebhookClientConfig::default()
                },
                // Only this test's namespace, so parallel tests are unaffected.
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), ns.clone())])),
                    ..LabelSelector::default()
                }),
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".to_owned()]),
                    operations: Some(vec!["CREATE".to_owned()]),
                    resources: Some(vec!["pods".to_owned()]),
                    scope: Some("Namespaced".to_owned()),
                }]),
                ..MutatingWebhook::default()
            }]),
        };
        configs
            .create(&PostParams::default(), &cfg)
            .await
            .unwrap_or_else(|e| panic!("create MutatingWebhookConfiguration: {e}"));
        // The API server picks up webhook configurations from an informer, so
        // the first pods may slip past; retry with fresh pods until one is mutated.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut attempt = 0;
        let pod = eventually("a pod to be mutated by the loopback webhook", Duration::from_secs(30), || {
            attempt += 1;
            let pods = pods.clone();
            async move {
                let p: Pod = from_json(json!({"metadata": {"name": format!("p{attempt}")}, "spec": small_pod_spec()}));
                let created = pods.create(&PostParams::default(), &p).await.map_err(|e| e.to_string())?;
                let labelled = created.metadata.labels.as_ref().and_then(|l| l.get("smoke-webhook")).cloned();
                if labelled.as_deref() == Some("called") { Ok(created) } else { Err("pod not mutated yet".to_owned()) }
            }
        })
        .await;
        assert!(calls.load(Ordering::SeqCst) >= 1, "the webhook server saw no request");
        assert!(pod.metadata.name.is_some());
        let _ = configs.delete(&name, &DeleteParams::default()).await;
    })
    .await;
}

#[tokio::test]
async fn client_go_election_peer_leads_and_releases() {
    let client = client().await;
    with_namespace(&client, "lepeer", |client, ns| async move {
        let bin = repo_root().join("tests/cluster/bin/lepeer");
        let mut child = tokio::process::Command::new(&bin)
            .args(["--kubeconfig"])
            .arg(common::kubeconfig_path())
            .args(["--namespace", &ns, "--lease", "peer", "--id", "peer-a"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); `make cluster-up` builds it",
                    bin.display()
                )
            });
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut lines = BufReader::new(stdout).lines();
        common::wait_for("lepeer to report leading", Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let ev: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if ev["event"] == "leading" {
                    return;
                }
            }
            panic!("lepeer exited before leading");
        })
        .await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let lease = leases
            .get("peer")
            .await
            .unwrap_or_else(|e| panic!("get Lease: {e}"));
        let spec = lease.spec.unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some("peer-a"));
        assert_eq!(
            spec.lease_duration_seconds,
            Some(15),
            "client-go default lease duration"
        );

        // SIGTERM: ReleaseOnCancel clears the holder before exiting.
        let pid = child.id().unwrap_or_else(|| panic!("lepeer has no pid"));
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success());
        let exit = common::wait_for("lepeer to exit", Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|e| panic!("wait: {e}"));
        assert!(exit.success(), "lepeer exited with {exit}");
        let lease = leases
            .get("peer")
            .await
            .unwrap_or_else(|e| panic!("get Lease: {e}"));
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        assert!(
            holder.is_empty(),
            "ReleaseOnCancel should clear the holder, found {holder:?}"
        );
    })
    .await;
}
