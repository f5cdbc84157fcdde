//! Admission latency and throughput over TLS on loopback: zen-lead's webhook
//! side by side with a controller-runtime (`webhook/admission`) peer making the
//! same change (`tests/peers/go-webhook`, built by its `build.sh`).
//!
//!   make bench-webhook        (builds the peer, then `cargo bench --bench webhook`)
//!
//! For each server and each payload (a pod annotated for a pool, and an
//! unannotated pod):
//! - latency at a fixed 1,000 requests/s for 5 s, open loop: a request's
//!   latency counts from when the ticker released it, so a stalled server is
//!   not hidden by the load generator waiting for it (the ticker never waits
//!   for the server). It does not count from the nominal due time: tokio's
//!   timer fires on a 1 ms wheel, so up to 1 ms of every sample would be the
//!   generator's own lateness, not the server's;
//! - throughput: 8 connections sending back to back for 3 s.
//!
//! Everything talks to 127.0.0.1 only, and every phase is bounded in time.
//! The zen-lead server runs in this process on its own 2-thread runtime; the
//! peer is its own process. Both share the machine's cores with the load
//! generator, so absolute numbers are pessimistic; the ratios are the point.

#[path = "../tests/common/net.rs"]
mod net;
#[path = "../tests/common/tls_client.rs"]
mod tls_client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use zen_lead::api::Activation;
use zen_lead::tls::{CertRequest, generate};
use zen_lead::webhook::InjectConfig;
use zen_lead::webhook::certs::CertStore;
use zen_lead::webhook::lookup::StaticLookup;
use zen_lead::webhook::server::{self, ServeOptions};

const RATE: u64 = 1_000;
const RATE_SECS: u64 = 5;
const RATE_CONNS: usize = 4;
const MAX_CONNS: usize = 8;
const MAX_SECS: u64 = 3;
const WARMUP: Duration = Duration::from_secs(1);

fn pod(annotated: bool) -> Value {
    // What a Deployment's pod looks like at CREATE, after defaulting.
    let mut annotations = json!({"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"});
    if annotated {
        annotations["zen-lead/pool"] = json!("orders-pool");
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "orders-7d9f8b6c5-", "namespace": "shop",
            "labels": {"app": "orders", "pod-template-hash": "7d9f8b6c5", "tier": "backend"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-7d9f8b6c5",
                "uid": "6a1e0b7e-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{
                "name": "orders", "image": "registry.example/orders:1.4",
                "args": ["--listen=:8080", "--metrics=:9090"],
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"},
                          {"containerPort": 9090, "name": "metrics", "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
                    "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access-x1y2z", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "orders", "serviceAccount": "orders", "securityContext": {},
            "schedulerName": "default-scheduler", "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access-x1y2z", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}]
        }
    })
}

fn review(annotated: bool) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                    "uid": "b1", "groups": ["system:serviceaccounts", "system:authenticated"]},
                "object": pod(annotated), "oldObject": null, "dryRun": false,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        }))
        .expect("json"),
    )
}

/// Checks an answer: 200, a review, and a patch exactly when annotated.
fn valid(status: u16, body: &[u8], annotated: bool) -> bool {
    status == 200
        && serde_json::from_slice::<Value>(body).is_ok_and(|v| {
            v["response"]["allowed"] == true && v["response"]["patch"].is_string() == annotated
        })
}

struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    sent: usize,
}

async fn fixed_rate(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    body: Bytes,
    annotated: bool,
) -> Latency {
    let (tx, rx) = async_channel();
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..RATE_CONNS {
        let rx = rx.clone();
        let tls = tls.clone();
        let body = body.clone();
        let errors = errors.clone();
        workers.push(tokio::spawn(async move {
            let mut conn = tls_client::connect(addr, tls).await.expect("connect");
            let mut samples = Vec::with_capacity((RATE * RATE_SECS) as usize);
            while let Ok(due) = rx.recv().await {
                let (status, reply) = conn.post("/mutate", body.clone()).await.expect("request");
                if !valid(status, &reply, annotated) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                samples.push(due.elapsed());
            }
            samples
        }));
    }
    let period = Duration::from_nanos(1_000_000_000 / RATE);
    let start = tokio::time::Instant::now();
    for i in 0..RATE * RATE_SECS {
        let due = start + period * u32::try_from(i).expect("small");
        tokio::time::sleep_until(due).await;
        if tx.send(Instant::now()).await.is_err() {
            break;
        }
    }
    drop(tx);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "invalid answers");
    all.sort();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Latency {
        p50: pick(0.50),
        p99: pick(0.99),
        max: *all.last().expect("samples"),
        sent: all.len(),
    }
}

/// A tiny MPMC channel from tokio's pieces: workers share one receiver.
fn async_channel() -> (tokio::sync::mpsc::Sender<Instant>, SharedRx) {
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    (tx, SharedRx(Arc::new(tokio::sync::Mutex::new(rx))))
}

#[derive(Clone)]
struct SharedRx(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Instant>>>);

impl SharedRx {
    async fn recv(&self) -> Result<Instant, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

async fn max_throughput(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    body: Bytes,
    annotated: bool,
    secs: u64,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..MAX_CONNS {
        let (tls, body, stop, done, errors) = (
            tls.clone(),
            body.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut conn = tls_client::connect(addr, tls).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let (status, reply) = conn.post("/mutate", body.clone()).await.expect("request");
                if !valid(status, &reply, annotated) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "invalid answers");
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

struct Row {
    case: &'static str,
    server: &'static str,
    latency: Latency,
    max_rps: f64,
}

async fn measure(
    server: &'static str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    rows: &mut Vec<Row>,
) {
    for (case, annotated) in [("annotated", true), ("unannotated", false)] {
        let body = review(annotated);
        // Warm up connections, allocators and the peer's GC.
        max_throughput(addr, tls.clone(), body.clone(), annotated, WARMUP.as_secs()).await;
        let latency = fixed_rate(addr, tls.clone(), body.clone(), annotated).await;
        let max_rps = max_throughput(addr, tls.clone(), body, annotated, MAX_SECS).await;
        rows.push(Row {
            case,
            server,
            latency,
            max_rps,
        });
    }
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_peer(
    binary: &Path,
    cert_dir: &Path,
    tls: Arc<rustls::ClientConfig>,
) -> (Peer, SocketAddr) {
    let port = net::free_port();
    let child = Command::new(binary)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--cert-dir",
        ])
        .arg(cert_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let peer = Peer(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut conn) = tls_client::connect(addr, tls.clone()).await
            && conn
                .post("/mutate", review(true))
                .await
                .is_ok_and(|(s, _)| s == 200)
        {
            return (peer, addr);
        }
        assert!(
            Instant::now() < deadline,
            "the Go peer did not answer within 20s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = generate(&CertRequest {
        dns_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
        validity: Duration::from_secs(2 * 86400),
    })
    .expect("certs");
    let dir = std::env::temp_dir().join(format!("zl-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    certs.write_to(&dir, true).expect("write certs");
    let tls = tls_client::client_config(certs.ca_cert_pem.as_bytes());

    // zen-lead's server: its own runtime, as in `zen-lead controller`.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = CertStore::from_files(&dir.join("tls.crt"), &dir.join("tls.key")).expect("certs");
    let lookup = StaticLookup::default().with_policy("shop", "orders-pool", Activation::Auto);
    let running = server_rt
        .block_on(server::start(
            ServeOptions {
                addr: "127.0.0.1:0".parse().expect("addr"),
                max_body_bytes: server::DEFAULT_MAX_BODY_BYTES,
                request_timeout: server::DEFAULT_REQUEST_TIMEOUT,
                inject: InjectConfig::with_image("ghcr.io/kube-zen/zen-lead:bench"),
            },
            store,
            Arc::new(lookup),
            server::Metrics::register(&mut zen_lead::telemetry::new_registry()),
            zen_lead::admin::ReadyFlag::default(),
        ))
        .expect("zen-lead webhook starts");

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let peer_bin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/go-webhook/bin/go-webhook");
    let mut rows = Vec::new();
    client_rt.block_on(async {
        measure("zen-lead", running.addr, tls.clone(), &mut rows).await;
        if peer_bin.is_file() {
            let (peer, addr) = start_peer(&peer_bin, &dir, tls.clone()).await;
            measure("go-peer", addr, tls.clone(), &mut rows).await;
            drop(peer);
        } else {
            eprintln!(
                "{} is missing: run tests/peers/go-webhook/build.sh (make bench-webhook does) \
                 for the side-by-side comparison",
                peer_bin.display()
            );
        }
    });
    server_rt.block_on(running.shutdown());
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "webhook admission over TLS 1.3 on 127.0.0.1 ({} cores shared by servers and load generator)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "fixed rate: {RATE} req/s for {RATE_SECS}s over {RATE_CONNS} connections (open loop); \
         max: {MAX_CONNS} connections back to back for {MAX_SECS}s"
    );
    println!(
        "{:<12} {:<9} {:>12} {:>12} {:>12} {:>8} {:>12}",
        "case", "server", "p50", "p99", "max", "sent", "max req/s"
    );
    for r in &rows {
        println!(
            "{:<12} {:<9} {:>12.3?} {:>12.3?} {:>12.3?} {:>8} {:>12.0}",
            r.case,
            r.server,
            r.latency.p50,
            r.latency.p99,
            r.latency.max,
            r.latency.sent,
            r.max_rps
        );
    }
    for case in ["annotated", "unannotated"] {
        let find = |server: &str| rows.iter().find(|r| r.case == case && r.server == server);
        if let (Some(zl), Some(go)) = (find("zen-lead"), find("go-peer")) {
            println!(
                "{case}: throughput zen-lead/go-peer = {:.2}x; p99 go-peer/zen-lead = {:.2}x; \
                 zen-lead p99 < 1ms: {}",
                zl.max_rps / go.max_rps,
                go.latency.p99.as_secs_f64() / zl.latency.p99.as_secs_f64(),
                if zl.latency.p99 < Duration::from_millis(1) {
                    "yes"
                } else {
                    "NO"
                }
            );
        }
    }
}
