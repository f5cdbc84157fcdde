//! Fixture for the API-gate tests (`tests/gate.rs`) and benchmark
//! (`benches/gate.rs`): ServiceAccounts with real tokens (TokenRequest) and
//! RBAC in a test namespace, a `zen-lead agent --activation api` process on
//! the host forwarding to the local cluster's API server, and clients that
//! talk to the gate the way an app in the pod would.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;

use crate::common::net::free_port;

pub const BIN: &str = env!("CARGO_BIN_EXE_zen-lead");

/// The local cluster's API server address and CA, from the kubeconfig.
pub struct Cluster {
    pub server: String,
    pub ca_pem: Vec<u8>,
}

pub fn cluster(kubeconfig: &Path) -> Cluster {
    let config = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    let current = config.current_context.clone().unwrap_or_default();
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.clone())
        .unwrap_or_else(|| panic!("kubeconfig has no current context"));
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .unwrap_or_else(|| panic!("kubeconfig has no cluster {}", context.cluster));
    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .unwrap_or_else(|e| panic!("certificate-authority-data: {e}")),
        (None, Some(file)) => std::fs::read(file).unwrap_or_else(|e| panic!("CA {file}: {e}")),
        _ => panic!("the kubeconfig's cluster has no CA"),
    };
    Cluster {
        server: cluster
            .server
            .unwrap_or_else(|| panic!("the kubeconfig's cluster has no server")),
        ca_pem,
    }
}

/// A kubeconfig with one cluster and one bearer token.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &[u8],
    token: &str,
    tls_server_name: Option<&str>,
) {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut cluster = json!({"server": server, "certificate-authority-data": ca});
    if let Some(name) = tls_server_name {
        cluster["tls-server-name"] = json!(name);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    // JSON is YAML.
    std::fs::write(path, config.to_string())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub async fn client_from(kubeconfig: &Path, retry: bool) -> Client {
    let raw = Kubeconfig::read_from(kubeconfig).unwrap_or_else(|e| panic!("kubeconfig: {e}"));
    let mut config = Config::from_custom_kubeconfig(raw, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    config.default_retry = retry;
    Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"))
}

/// Real tokens of two ServiceAccounts: `app` (what the app container runs
/// as: ConfigMaps, Events, Leases, reading pods, exec) and `agent` (the
/// agent's own election: Leases only).
pub struct Tokens {
    pub app: String,
    pub agent: String,
}

pub async fn accounts(client: &Client, ns: &str) -> Tokens {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    let rules = [
        (
            "agent",
            json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "update", "patch", "create"]}]),
        ),
        (
            "app",
            json!([
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["pods/exec", "pods/portforward", "pods/attach"], "verbs": ["get", "create"]},
            ]),
        ),
    ];
    let mut tokens = Vec::new();
    for (name, rules) in rules {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("sa");
        sas.create(&pp, &sa)
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {name}: {e}"));
        let role: Role =
            serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))
                .expect("role");
        roles
            .create(&pp, &role)
            .await
            .unwrap_or_else(|e| panic!("create Role {name}: {e}"));
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
        }))
        .expect("binding");
        bindings
            .create(&pp, &binding)
            .await
            .unwrap_or_else(|e| panic!("create RoleBinding {name}: {e}"));
        tokens.push(issue_token(client, ns, name).await);
    }
    // Issued in the order of `rules`: agent, then app.
    let app = tokens.pop().unwrap_or_default();
    let agent = tokens.pop().unwrap_or_default();
    Tokens { app, agent }
}

/// A fresh token of ServiceAccount `name` (TokenRequest, one hour).
pub async fn issue_token(client: &Client, ns: &str, name: &str) -> String {
    token_request(client, ns, name, json!({})).await
}

/// A fresh token of ServiceAccount `sa` bound to a pod, as the kubelet
/// mounts one: the API server puts the pod's name and UID into the
/// request's user info (`authentication.kubernetes.io/pod-name`, `pod-uid`).
pub async fn issue_pod_token(client: &Client, ns: &str, sa: &str, pod: &str, uid: &str) -> String {
    let bound =
        json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}});
    token_request(client, ns, sa, bound).await
}

/// TokenRequest for `sa`, one hour, with `extra` merged into its spec.
async fn token_request(client: &Client, ns: &str, sa: &str, extra: serde_json::Value) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut spec = json!({"audiences": [], "expirationSeconds": 3600});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let request: TokenRequest =
        serde_json::from_value(json!({ "spec": spec })).expect("token request");
    let issued: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {sa} ({extra}): {e}"));
    issued.status.map(|s| s.token).unwrap_or_default()
}

/// Creates the pool's Lease with the given holder and timings (seconds).
pub async fn create_lease(
    client: &Client,
    ns: &str,
    name: &str,
    holder: Option<&str>,
    timings: (u32, f64, f64),
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut spec = json!({"leaseDurationSeconds": timings.0, "leaseTransitions": 0});
    if let Some(holder) = holder {
        spec["holderIdentity"] = json!(holder);
        spec["renewTime"] = json!(now);
        spec["acquireTime"] = json!(now);
    }
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            "zen-lead.io/renew-deadline-seconds": timings.1.to_string(),
            "zen-lead.io/retry-period-seconds": timings.2.to_string(),
        }},
        "spec": spec,
    }))
    .expect("lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_or_else(|e| panic!("create Lease {name}: {e}"));
}

/// Frees the Lease by compare-and-swap, with a new lease duration, as the
/// controller's fast failover does: a candidate acquires at once.
pub async fn free_lease(client: &Client, ns: &str, name: &str, lease_seconds: i32) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    for _ in 0..20 {
        let mut lease = leases
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get Lease {name}: {e}"));
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(lease_seconds);
        match leases.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("free Lease {name}: {e}"),
        }
    }
    panic!("could not free Lease {name}: conflicts");
}

/// Options of one host agent.
pub struct AgentOpts<'a> {
    pub ns: &'a str,
    pub pool: &'a str,
    pub dir: PathBuf,
    pub cluster: &'a Cluster,
    pub tokens: &'a Tokens,
    /// Replaces the upstream (e.g. an unreachable address).
    pub upstream: Option<String>,
    pub extra: Vec<String>,
    /// The pod the agent stands for (name, UID), when a real Pod object
    /// exists; else a made-up `gate-<pool>` with a fresh UID.
    pub pod: Option<(&'a str, &'a str)>,
}

/// `zen-lead agent --activation api` on the host: its election uses the
/// `agent` token, its gate forwards to the cluster's API server.
pub struct GateAgent {
    child: Child,
    command: Command,
    pub gate: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
    pub sa_dir: PathBuf,
    pub source_dir: PathBuf,
    pub identity: String,
    pub log: PathBuf,
    pub cluster_ca: Vec<u8>,
}

impl GateAgent {
    pub fn start(opts: AgentOpts<'_>) -> GateAgent {
        let dir = opts.dir;
        let _ = std::fs::remove_dir_all(&dir);
        let source_dir = dir.join("source-sa");
        let sa_dir = dir.join("gate-sa");
        std::fs::create_dir_all(&source_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
        std::fs::write(source_dir.join("token"), &opts.tokens.app).expect("token");
        std::fs::write(source_dir.join("namespace"), opts.ns).expect("namespace");
        std::fs::write(source_dir.join("ca.crt"), &opts.cluster.ca_pem).expect("ca.crt");
        let agent_kubeconfig = dir.join("agent.kubeconfig");
        write_kubeconfig(
            &agent_kubeconfig,
            &opts.cluster.server,
            &opts.cluster.ca_pem,
            &opts.tokens.agent,
            None,
        );
        let gate = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let (pod, uid) = match opts.pod {
            Some((name, uid)) => (name.to_owned(), uid.to_owned()),
            None => (
                format!("gate-{}", opts.pool),
                format!(
                    "{:08x}-0000-4000-8000-{:012x}",
                    (nanos >> 20) as u32,
                    nanos as u64 & 0xffff_ffff_ffff
                ),
            ),
        };
        let identity = format!("{pod}_{}", &uid[..8]);
        let log = dir.join("agent.log");
        let stderr = std::fs::File::create(&log).unwrap_or_else(|e| panic!("agent log: {e}"));
        let upstream = opts.upstream.unwrap_or_else(|| opts.cluster.server.clone());
        let mut command = Command::new(BIN);
        command
            .env("KUBECONFIG", &agent_kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("ZEN_LEAD_LOG_LEVEL", "info,zen_lead=debug")
            .args([
                "agent",
                "--pool",
                opts.pool,
                "--pod-name",
                &pod,
                "--pod-namespace",
                opts.ns,
                "--pod-uid",
                &uid,
            ])
            .args([
                "--http-addr",
                &http.to_string(),
                // Several agents share the host: any free probe port.
                "--probe-addr",
                "127.0.0.1:0",
                "--activation",
                "api",
                "--gate-addr",
                &gate.to_string(),
            ])
            .arg("--gate-sa-dir")
            .arg(&sa_dir)
            .arg("--gate-source-sa-dir")
            .arg(&source_dir)
            .args(["--gate-upstream", &upstream])
            .args(&opts.extra)
            .stdout(Stdio::null());
        let child = command
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} agent: {e}"));
        GateAgent {
            child,
            command,
            gate,
            http,
            dir,
            sa_dir,
            source_dir,
            identity,
            log,
            cluster_ca: opts.cluster.ca_pem.clone(),
        }
    }

    /// A container restart: the process is killed and started again with
    /// the same flags, directories and identity.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("agent log: {e}"));
        self.child = self
            .command
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot restart {BIN} agent: {e}"));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Plain GET on the agent's HTTP port: (status, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String), String> {
        match crate::common::net::http_get(self.http.port(), path).await {
            (0, _) => Err(format!("no answer from the agent at {}", self.http)),
            reply => Ok(reply),
        }
    }

    /// Waits for `/startz` (the gate serves) and `/readyz` (the Lease is known).
    pub async fn wait_serving(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent exited ({status}) before serving:\n{}",
                    self.log_text()
                );
            }
            let started = matches!(self.http_get("/startz").await, Ok((200, _)));
            let ready = matches!(self.http_get("/readyz").await, Ok((200, _)));
            if started && ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not serve within {limit:?} (startz {started}, readyz {ready}):\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `leading` from `GET /v1/leader`.
    pub async fn leading(&self) -> Result<bool, String> {
        let (code, body) = self.http_get("/v1/leader").await?;
        if code != 200 {
            return Err(format!("/v1/leader answered {code}"));
        }
        // The body may be chunked; find the field.
        Ok(body.contains("\"leading\":true"))
    }

    pub async fn wait_leading(&self, want: bool, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.leading().await == Ok(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent's leading did not become {want} within {limit:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.http_get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The gate's CA, as the app reads it from its service-account mount.
    pub fn gate_ca(&self) -> Vec<u8> {
        std::fs::read(self.sa_dir.join("ca.crt")).unwrap_or_else(|e| panic!("gate ca.crt: {e}"))
    }

    /// A kubeconfig for the gate, the way an in-cluster app sees it:
    /// `kubernetes.default.svc` verified with the gate's CA, the token from
    /// the gate's service-account directory.
    pub fn gate_kubeconfig(&self, token: &str) -> PathBuf {
        let path = self.dir.join(format!("gate-{}.kubeconfig", token.len()));
        let server = format!("https://{}", self.gate);
        write_kubeconfig(
            &path,
            &server,
            &self.gate_ca(),
            token,
            Some("kubernetes.default.svc"),
        );
        path
    }

    pub async fn app_client(&self, retry: bool) -> Client {
        let token = std::fs::read_to_string(self.sa_dir.join("token"))
            .unwrap_or_else(|e| panic!("gate token: {e}"));
        client_from(&self.gate_kubeconfig(&token), retry).await
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// The agent's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GateAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTPS exchange, for what kube's client hides (status line,
/// headers, protocol version).
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub fn tls_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA accepted");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &[u8],
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(tls_config(ca_pem, alpn));
    let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    connector.connect(name, tcp).await
}

/// A connection that sends requests over HTTP/1.1 or HTTP/2.
pub enum RawConn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl RawConn {
    pub async fn open(addr: SocketAddr, ca_pem: &[u8], h2: bool) -> RawConn {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tls_connect(addr, ca_pem, "kubernetes.default.svc", alpn)
            .await
            .unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
            tokio::spawn(conn);
            RawConn::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .unwrap_or_else(|e| panic!("http/1.1 handshake: {e}"));
            tokio::spawn(conn);
            RawConn::H1(sender)
        }
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, serde_json::Value)>,
    ) -> Result<RawResponse, String> {
        let mut builder = Request::builder()
            .method(method)
            .header("accept", "application/json");
        builder = match self {
            RawConn::H1(_) => builder.uri(path).header("host", "kubernetes.default.svc"),
            RawConn::H2(_) => builder.uri(format!("https://kubernetes.default.svc{path}")),
        };
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let bytes = match body {
            Some((content_type, value)) => {
                builder = builder.header("content-type", content_type);
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        let response = match self {
            RawConn::H1(s) => s.send_request(request).await,
            RawConn::H2(s) => s.send_request(request).await,
        }
        .map_err(|e| e.to_string())?;
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(RawResponse {
            status,
            version,
            headers,
            body,
        })
    }
}
