//! Shared helpers for tests that run against the local Kubernetes cluster
//! (`make cluster-up`). No mock stands in for the API server: when no cluster
//! is reachable these helpers make the test FAIL, saying how to start one.
//!
//! Each test file uses a subset; the rest would warn as dead code there.
//! Heavier helpers of one topic live beside this file and are included by
//! the suites that use them (`#[path = "common/<topic>.rs"] mod <topic>;`):
//! `chart.rs` (a Helm install per test), `gate.rs` (the API gate),
//! `tls_client.rs` (a webhook client over TLS), `late_webhook.rs` (a second
//! mutating webhook called after zen-lead's), `election.rs` (host
//! agents and Lease helpers), `upstream.rs` (the upstream Go zen-lead as a
//! routing peer), `model/` (the election's model for the model checker,
//! `tests/model.rs` only; it needs no cluster).
#![allow(dead_code)]

pub mod delay_proxy;
pub mod faults;
pub mod fencing;
pub mod guard;
pub mod net;
pub mod records;
pub mod webhook;
pub mod workloads;
pub mod zen_lead_host;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};

/// Label on every namespace a test creates, so leftovers are easy to find:
/// `kubectl delete ns -l zen-lead.io/test=true`.
pub const TEST_LABEL: &str = "zen-lead.io/test";

/// Field manager for the tests' server-side applies.
pub const FIELD_MANAGER: &str = "zen-lead-tests";

/// The local cluster's registry (tests/cluster/realnode.go `registryAddr`):
/// the real node's containerd pulls from it over plain HTTP.
pub const LOCAL_REGISTRY: &str = "198.19.128.1:5000";

/// The release image as `make cluster-up` pushes it to the local registry:
/// the chart's default tag (its appVersion, which is the crate's version).
pub fn local_registry_image() -> String {
    format!("{LOCAL_REGISTRY}/zen-lead:{}", env!("CARGO_PKG_VERSION"))
}

const CLUSTER_HINT: &str = "run `make cluster-up` (or point KUBECONFIG at a reachable cluster)";

/// A file of the repository, by its path from the root.
pub fn read_repo_file(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cleanup` with a fresh client to completion, from a `Drop`: drop
/// cannot await, and the test's client belongs to the test's runtime (blocked
/// there), so a fresh client on a fresh runtime in a thread of its own.
pub fn cleanup_on_drop<F, Fut>(cleanup: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move { cleanup(client().await).await });
    })
    .join();
}

/// The object of `kind` named `name` in `deploy/zen-lead.yaml` (the chart
/// as the kubectl-only install ships it; tests/manifests.rs keeps the two
/// equal).
pub fn shipped<T: serde::de::DeserializeOwned>(kind: &str, name: &str) -> T {
    let path = repo_root().join("deploy/zen-lead.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    let doc = docs
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {}", path.display()));
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

/// The kubeconfig the tests use: `$KUBECONFIG` if set, else the one
/// `make cluster-up` writes to `<repo>/.cluster/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        // KUBECONFIG may be a list; the first entry is the one we mean.
        Some(v) if !v.is_empty() => std::env::split_paths(&v)
            .next()
            .unwrap_or_else(|| repo_root().join(".cluster/kubeconfig")),
        _ => repo_root().join(".cluster/kubeconfig"),
    }
}

/// `kubectl` built with the local cluster, `$ZEN_LEAD_KUBECTL` overriding it.
pub fn kubectl_path() -> PathBuf {
    std::env::var_os("ZEN_LEAD_KUBECTL")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/cluster/bin/kubectl"))
}

/// A client for the local cluster, or a panic explaining how to get one.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("no kubeconfig at {} ({e}); {CLUSTER_HINT}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "unusable kubeconfig {} ({e}); {CLUSTER_HINT}",
                path.display()
            )
        });
    let client = Client::try_from(config).unwrap_or_else(|e| {
        panic!(
            "cannot build a client from {} ({e}); {CLUSTER_HINT}",
            path.display()
        )
    });
    match tokio::time::timeout(Duration::from_secs(15), client.apiserver_version()).await {
        Ok(Ok(_)) => client,
        Ok(Err(e)) => panic!(
            "the API server in {} is not reachable ({}); {CLUSTER_HINT}",
            path.display(),
            error_chain(&e)
        ),
        Err(_) => panic!(
            "the API server in {} did not answer within 15s; {CLUSTER_HINT}",
            path.display()
        ),
    }
}

/// `err: cause: cause ...`, because kube's top-level messages ("client error
/// (Connect)") hide the part that says what went wrong.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The pod's `Ready` condition is True.
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A fresh test namespace (`zl-<prefix>-…`, labelled [`TEST_LABEL`]) whose
/// `default` ServiceAccount exists; the caller deletes it
/// ([`with_namespace`] does).
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            generate_name: Some(format!("zl-{prefix}-")),
            labels: Some([(TEST_LABEL.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create a test namespace: {e}"));
    let name = created
        .metadata
        .name
        .unwrap_or_else(|| panic!("the API server returned a namespace without a name"));

    // Pods are refused until the service-account controller has made the
    // namespace's `default` ServiceAccount. Every test creates pods sooner or
    // later, so wait here. After API server restarts (tests/election_chaos)
    // the controller manager's informers back off before relisting: client-go
    // caps that at 30 s with up to 100% jitter, so allow well over 60 s.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &name);
    eventually(
        &format!("ServiceAccount {name}/default"),
        Duration::from_secs(180),
        || async {
            accounts
                .get_opt("default")
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .ok_or_else(|| "not created yet".to_owned())
        },
    )
    .await;
    name
}

/// Runs `body` with a fresh namespace (server-generated unique name starting
/// with `zl-<prefix>-`) and deletes the namespace afterwards, also when
/// `body` panics; the panic is then re-raised.
pub async fn with_namespace<F, Fut>(client: &Client, prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = create_namespace(client, prefix).await;

    let outcome = AssertUnwindSafe(body(client.clone(), name.clone()))
        .catch_unwind()
        .await;

    // Background deletion: the namespace controller finishes it; the test
    // need not wait for every object to go.
    if let Err(e) = namespaces.delete(&name, &DeleteParams::background()).await {
        eprintln!("warning: could not delete test namespace {name}: {e}");
    }
    if let Err(panic) = outcome {
        // What the test left in the temporary directory stays, to look at.
        std::panic::resume_unwind(panic);
    }
    remove_temp_of(&name);
}

/// Removes what tests put in the temporary directory for namespace `ns`
/// (kubectl caches, rendered charts, values files: `zl-…<ns>…`), which a
/// full run would otherwise leave by the hundred.
pub fn remove_temp_of(ns: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if !(file.starts_with("zl-") && file.contains(ns)) {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Applies a CRD (server-side apply) and waits until the API server serves it.
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) {
    let name = crd
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| panic!("CRD without a name"));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("applying CRD {name} failed: {e}"));
    wait_for(
        &format!("CRD {name} to be Established"),
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls a synchronous condition (a file written, a process gone) every
/// 20 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `probe` until it returns `Some`, at most until `limit`: for checks
/// that have no watch to wait on (e.g. output of a CLI).
pub async fn eventually<T, Fut>(what: &str, limit: Duration, mut probe: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}; last observation: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the cluster's kubectl against the tests' kubeconfig, with a private
/// discovery cache (a shared one may predate a CRD the test just applied).
pub fn kubectl(args: &[&str], cache_dir: &Path) -> std::process::Output {
    let kubectl = kubectl_path();
    std::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .arg("--cache-dir")
        .arg(cache_dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); it is built by `make cluster-up`, or set ZEN_LEAD_KUBECTL",
                kubectl.display()
            )
        })
}

/// An API call's result as the refusal tests compare it: `Ok(())`, or the
/// API server's status code and message (code 0: no answer from it).
pub fn outcome<T>(result: Result<T, kube::Error>) -> Result<(), (u16, String)> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err((s.code, s.message)),
        Err(e) => Err((0, e.to_string())),
    }
}

/// A test fixture written as JSON, as a typed object.
pub fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("test fixture does not parse: {e}"))
}

/// A host directory, mounted into real-node pods as hostPath, where
/// `zl-testapp` containers append their start/stop lines.
pub fn records_dir(ns: &str) -> PathBuf {
    let dir = repo_root().join(".cluster/records").join(ns);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    // Containers run as uid 65532; let them write here.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    dir
}

/// One plain HTTP/1.1 request (`Connection: close`) to ip:port; the whole
/// reply when its status is 200, else why not. Connecting is bounded by 3 s.
pub async fn http_ok(ip: &str, port: u16, method: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let connect = tokio::net::TcpStream::connect((ip, port));
    let mut s = tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    if reply.starts_with("HTTP/1.1 200") {
        Ok(reply)
    } else {
        Err(format!("answered {reply:?}"))
    }
}

/// Runs `cmd` to the end; fails the test, with `what` and the command's
/// stderr, unless it succeeds.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The sum of the samples of Prometheus text `text` on lines that start
/// with `prefix` (a series, or a family with `{`): 0 when there are none.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A fresh scratch directory under target/test-scratch (emptied if it
/// existed), kept after the test for inspection.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = repo_root()
        .join("target/test-scratch")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// The SHA-256 of a file, hex (`sha256sum`).
pub fn sha256_of(path: &Path) -> String {
    let out = run_ok(
        std::process::Command::new("sha256sum").arg(path),
        "sha256sum",
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
