//! The webhook's HTTPS server on loopback, without the cluster: answers to
//! malformed input, body limits, and certificate rotation under load.

mod common;
#[path = "common/tls_client.rs"]
mod tls_client;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};
use zen_lead::api::Activation;
use zen_lead::tls::{CertRequest, GeneratedCerts, generate};
use zen_lead::webhook::InjectConfig;
use zen_lead::webhook::certs::CertStore;
use zen_lead::webhook::inject::PolicyState;
use zen_lead::webhook::lookup::{Lookup, LookupError, StaticLookup};
use zen_lead::webhook::membership::OwnerMeta;
use zen_lead::webhook::server::{self, ServeOptions};

fn certs() -> GeneratedCerts {
    generate(&CertRequest {
        dns_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
        validity: Duration::from_secs(2 * 86400),
    })
    .expect("certs")
}

/// A mounted-Secret lookalike: `tls.crt -> ..data/tls.crt`, `..data ->
/// gen-N/`; [`SecretDir::rotate`] swaps `..data` atomically, as the kubelet does.
struct SecretDir {
    root: PathBuf,
    generation: usize,
}

impl SecretDir {
    fn new(name: &str, first: &GeneratedCerts) -> Self {
        let root = std::env::temp_dir().join(format!("zl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("dir");
        let mut dir = Self {
            root,
            generation: 0,
        };
        dir.write_generation(first);
        std::os::unix::fs::symlink("gen-0", dir.root.join("..data")).expect("symlink");
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.root.join(f)).expect("symlink");
        }
        dir
    }

    fn write_generation(&mut self, certs: &GeneratedCerts) {
        let gen_dir = self.root.join(format!("gen-{}", self.generation));
        std::fs::create_dir_all(&gen_dir).expect("gen dir");
        std::fs::write(gen_dir.join("tls.crt"), &certs.cert_pem).expect("write");
        std::fs::write(gen_dir.join("tls.key"), &certs.key_pem).expect("write");
    }

    fn rotate(&mut self, certs: &GeneratedCerts) {
        self.generation += 1;
        self.write_generation(certs);
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("gen-{}", self.generation), &tmp).expect("symlink");
        std::fs::rename(&tmp, self.root.join("..data")).expect("atomic swap");
    }

    fn cert(&self) -> PathBuf {
        self.root.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.root.join("tls.key")
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn start(store: Arc<CertStore>, max_body: usize) -> common::webhook::Served {
    let lookup = StaticLookup::default().with_policy("ns", "pool", Activation::Auto);
    common::webhook::serve(
        ServeOptions {
            addr: "127.0.0.1:0".parse().expect("addr"),
            max_body_bytes: max_body,
            request_timeout: Duration::from_secs(4),
            inject: InjectConfig::with_image("zen-lead:test"),
        },
        store,
        Arc::new(lookup),
    )
    .await
}

fn review(uid: &str, object: Value) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "ns",
                "operation": "CREATE",
                "object": object,
            }
        }))
        .expect("json"),
    )
}

fn annotated_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "p-", "annotations": {"zen-lead/pool": "pool"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    })
}

fn store_for(certs: &GeneratedCerts) -> Arc<CertStore> {
    CertStore::from_pem(certs.cert_pem.as_bytes(), certs.key_pem.as_bytes(), "test").expect("store")
}

#[tokio::test]
async fn malformed_input_gets_a_review_or_a_400_with_a_message() {
    let certs = certs();
    let running = start(store_for(&certs), 64 * 1024).await;
    let config = tls_client::client_config(certs.ca_cert_pem.as_bytes());
    let mut conn = tls_client::connect(running.addr, config)
        .await
        .expect("connect");

    // A parseable review whose pod is malformed: a review, allowed=false, why.
    let (status, body) = conn
        .post(
            "/mutate",
            review("u-1", json!({"spec": {"containers": "not-a-list"}})),
        )
        .await
        .expect("post");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("review");
    assert_eq!(v["response"]["uid"], "u-1");
    assert_eq!(v["response"]["allowed"], false);
    let message = v["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(message.contains("not a valid Pod"), "{message}");

    // A pod without a spec (the fuzzer's first find: the patch built for it
    // did not apply) is refused as malformed too.
    let (status, body) = conn
        .post(
            "/mutate",
            review(
                "u-3",
                json!({"metadata": {"annotations": {"zen-lead/pool": "p"}}, "qpec": {}}),
            ),
        )
        .await
        .expect("post");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("review");
    assert_eq!(v["response"]["allowed"], false);
    let message = v["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(message.contains("has no spec"), "{message}");

    // Unparseable: 400 with a message.
    for bad in [
        &b"{not json"[..],
        br#"{"kind":"Pod"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let (status, body) = conn
            .post("/mutate", Bytes::from_static(bad))
            .await
            .expect("post");
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(!body.is_empty());
    }

    // A good one still works on the same connection, and injects.
    let (status, body) = conn
        .post("/mutate", review("u-2", annotated_pod()))
        .await
        .expect("post");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("review");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");

    // Admin: live, ready, and the latency histogram is exported.
    assert_eq!(
        common::net::http_get(running.admin_addr.port(), "/livez")
            .await
            .0,
        200
    );
    assert_eq!(
        common::net::http_get(running.admin_addr.port(), "/readyz")
            .await
            .0,
        200
    );
    let (status, metrics) = common::net::http_get(running.admin_addr.port(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("zen_lead_webhook_admission_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"injected\""), "{metrics}");
    running.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let certs = certs();
    let running = start(store_for(&certs), 16 * 1024).await;
    let config = tls_client::client_config(certs.ca_cert_pem.as_bytes());
    let mut conn = tls_client::connect(running.addr, config.clone())
        .await
        .expect("connect");
    let mut pod = annotated_pod();
    pod["metadata"]["annotations"]["padding"] = json!("x".repeat(20 * 1024));
    let (status, body) = conn.post("/mutate", review("u", pod)).await.expect("post");
    assert_eq!(status, 413);
    assert!(String::from_utf8_lossy(&body).contains("--max-body-bytes"));
    // Just under the limit is fine.
    let mut conn = tls_client::connect(running.addr, config)
        .await
        .expect("connect");
    let mut pod = annotated_pod();
    pod["metadata"]["annotations"]["padding"] = json!("x".repeat(12 * 1024));
    let (status, _) = conn.post("/mutate", review("u", pod)).await.expect("post");
    assert_eq!(status, 200);
    running.shutdown().await;
}

/// A lookup that takes `delay` per LeaderPolicy read, counts how many run at
/// once, and panics for namespace `boom` (a latent bug).
struct CountingLookup {
    inner: StaticLookup,
    delay: Duration,
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl CountingLookup {
    fn new(delay: Duration) -> Self {
        Self {
            inner: StaticLookup::default().with_policy("ns", "pool", Activation::Auto),
            delay,
            now: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }
}

impl Lookup for CountingLookup {
    async fn owner(
        &self,
        namespace: &str,
        owner: &OwnerReference,
    ) -> Result<Option<OwnerMeta>, LookupError> {
        self.inner.owner(namespace, owner).await
    }

    async fn policy(&self, namespace: &str, name: &str) -> PolicyState {
        assert_ne!(namespace, "boom", "a latent bug in the webhook");
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.inner.policy(namespace, name).await
    }
}

async fn start_counting(
    store: Arc<CertStore>,
    lookup: Arc<CountingLookup>,
) -> common::webhook::Served {
    common::webhook::serve(
        ServeOptions {
            addr: "127.0.0.1:0".parse().expect("addr"),
            max_body_bytes: server::DEFAULT_MAX_BODY_BYTES,
            request_timeout: server::DEFAULT_REQUEST_TIMEOUT,
            inject: InjectConfig::with_image("zen-lead:test"),
        },
        store,
        lookup,
    )
    .await
}

/// A flood of admissions, as the API server's HTTP/2 streams and as many
/// connections: at most MAX_IN_FLIGHT are answered at once (the rest wait
/// for a slot), bodies in flight stay within MAX_IN_FLIGHT_BYTES,
/// connections beyond MAX_CONNECTIONS are closed, a panicking admission is
/// a 500 for itself alone, and the webhook serves on.
#[tokio::test]
async fn a_flood_is_held_to_the_caps_and_the_webhook_serves_on() {
    let certs = certs();
    let lookup = Arc::new(CountingLookup::new(Duration::from_millis(200)));
    let running = start_counting(store_for(&certs), lookup.clone()).await;
    let h2 = tls_client::connect_h2(running.addr, certs.ca_cert_pem.as_bytes())
        .await
        .expect("h2");

    // 200 admissions at once over 4 HTTP/2 connections (each allows
    // MAX_IN_FLIGHT streams, so up to 200 reach the server together).
    let mut conns = vec![h2.clone()];
    for _ in 0..3 {
        let conn = tls_client::connect_h2(running.addr, certs.ca_cert_pem.as_bytes());
        conns.push(conn.await.expect("h2"));
    }
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..200).map(|i| {
        conns[i % conns.len()].post("/mutate", review(&format!("u-{i}"), annotated_pod()))
    }))
    .await;
    let ok = answers.iter().filter(|a| matches!(a, Ok((200, _)))).count();
    let peak = lookup.peak.load(Ordering::SeqCst);
    eprintln!(
        "200 concurrent admissions: {ok} answered 200, peak {peak} in flight, {:?}",
        started.elapsed()
    );
    assert_eq!(
        ok,
        200,
        "every admission answered: {:?}",
        answers.iter().find(|a| !matches!(a, Ok((200, _))))
    );
    assert!(peak <= server::MAX_IN_FLIGHT, "peak {peak} in flight");
    assert!(
        peak >= server::MAX_IN_FLIGHT / 2,
        "the flood did overlap: peak {peak}"
    );

    // Big bodies: ~2.9 MiB each, 24 at once; 16 MiB hold 5 of them.
    lookup.peak.store(0, Ordering::SeqCst);
    let mut big = annotated_pod();
    big["metadata"]["annotations"]["padding"] = json!("x".repeat(2_900 * 1024));
    let body = review("big", big);
    let answers =
        futures::future::join_all((0..24).map(|_| h2.post("/mutate", body.clone()))).await;
    let ok = answers.iter().filter(|a| matches!(a, Ok((200, _)))).count();
    let busy = answers.iter().filter(|a| matches!(a, Ok((503, b)) if String::from_utf8_lossy(b).contains("zen-lead webhook busy"))).count();
    let peak = lookup.peak.load(Ordering::SeqCst);
    let fits = server::MAX_IN_FLIGHT_BYTES / body.len();
    eprintln!(
        "24 concurrent {} KiB admissions: {ok} answered 200, {busy} busy (503), peak {peak} in flight",
        body.len() >> 10
    );
    assert_eq!(ok + busy, 24, "each answered or told busy");
    assert!(ok > 0);
    assert!(
        peak <= fits,
        "peak {peak} bodies in flight, {fits} fit the budget"
    );

    // 300 connections: the cap's worth are kept, the rest closed.
    let config = tls_client::client_config(certs.ca_cert_pem.as_bytes());
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        match tls_client::connect(running.addr, config.clone()).await {
            Ok(conn) => kept.push(conn),
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "300 connections: {} kept, {refused} closed at once",
        kept.len()
    );
    assert!(kept.len() <= server::MAX_CONNECTIONS, "{} kept", kept.len());
    drop(kept);

    // A panicking admission is a 500 naming the panic; the next is served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut boom = serde_json::from_slice::<Value>(&review("boom", annotated_pod())).expect("json");
    boom["request"]["namespace"] = json!("boom");
    let h2 = tls_client::connect_h2(running.addr, certs.ca_cert_pem.as_bytes())
        .await
        .expect("h2 after the flood");
    let (status, text) = h2
        .post("/mutate", Bytes::from(boom.to_string()))
        .await
        .expect("post");
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("a latent bug"));
    let (status, _) = h2
        .post("/mutate", review("after", annotated_pod()))
        .await
        .expect("post");
    assert_eq!(status, 200, "serves on");
    running.shutdown().await;
}

#[tokio::test]
async fn a_bad_certificate_at_start_names_the_flag() {
    let dir = std::env::temp_dir().join(format!("zl-badcert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, "garbage").expect("write");
    std::fs::write(&key, "garbage").expect("write");
    let err = CertStore::from_files(&cert, &key).expect_err("must fail");
    let text = err.to_string();
    assert!(
        text.contains("--tls-cert-file") && text.contains(&*cert.to_string_lossy()),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Clients keep sending reviews (reconnecting often, so new handshakes see
/// each new certificate) while the mounted-Secret lookalike is swapped
/// several times, once with a broken pair. Every request must succeed, and
/// the last certificate must end up being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_mid_load_loses_no_request() {
    const CLIENTS: usize = 4;
    /// Upper bound per client; clients stop earlier, once rotation is over.
    const PER_CLIENT_CAP: usize = 50_000;
    const ROTATIONS: usize = 5;
    let generations: Vec<GeneratedCerts> = (0..=ROTATIONS).map(|_| certs()).collect();
    let mut secret = SecretDir::new("rotation", &generations[0]);
    let store = CertStore::from_files(&secret.cert(), &secret.key()).expect("load");
    let reloader = store.spawn_reloader(Duration::from_millis(50), |_| {});
    let running = start(store.clone(), 1024 * 1024).await;
    // Clients trust every generation's CA, as they would trust one CA that
    // signs every rotated certificate.
    let all_cas: String = generations.iter().map(|g| g.ca_cert_pem.clone()).collect();
    let config = tls_client::client_config(all_cas.as_bytes());

    let addr = running.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let config = config.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut ok = 0usize;
            let mut conn = tls_client::connect(addr, config.clone())
                .await
                .expect("connect");
            for i in 0..PER_CLIENT_CAP {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if i % 25 == 0 {
                    conn = tls_client::connect(addr, config.clone())
                        .await
                        .unwrap_or_else(|e| panic!("client {c} request {i}: handshake: {e}"));
                }
                let uid = format!("c{c}-{i}");
                let (status, body) = conn
                    .post("/mutate", review(&uid, annotated_pod()))
                    .await
                    .unwrap_or_else(|e| panic!("client {c} request {i}: {e}"));
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                let v: Value = serde_json::from_slice(&body).expect("review");
                assert_eq!(v["response"]["uid"], uid.as_str());
                ok += 1;
            }
            ok
        }));
    }

    // Rotate while the clients run; one broken pair in the middle must be
    // refused (old certificate kept) without disturbing anyone.
    let served = |store: &CertStore| store.current().cert[0].as_ref().to_vec();
    let der = |g: &GeneratedCerts| {
        rustls::pki_types::CertificateDer::from_pem_slice(g.cert_pem.as_bytes())
            .expect("der")
            .as_ref()
            .to_vec()
    };
    use rustls::pki_types::pem::PemObject;
    for (n, generation) in generations.iter().enumerate().skip(1) {
        if n == 3 {
            let broken = GeneratedCerts {
                ca_cert_pem: String::new(),
                ca_key_pem: String::new(),
                cert_pem: generation.cert_pem.clone(),
                key_pem: generations[0].key_pem.clone(),
            };
            secret.rotate(&broken);
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                served(&store),
                der(&generations[2]),
                "a broken pair must not be served"
            );
        }
        secret.rotate(generation);
        let want = der(generation);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while served(&store) != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "generation {n} was not picked up within 10s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        // Each client asserted every one of its requests.
        total += client.await.expect("client task");
    }
    assert!(
        total >= 200,
        "only {total} requests ran during the rotations"
    );
    eprintln!("{total} admission requests, all answered, across {ROTATIONS} rotations");

    // A fresh connection is served the last generation.
    let conn = tls_client::connect(addr, config).await.expect("connect");
    assert_eq!(conn.server_cert, der(&generations[ROTATIONS]));
    reloader.abort();
    running.shutdown().await;
    drop(secret);
}
