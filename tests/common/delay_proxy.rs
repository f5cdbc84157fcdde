//! A TCP proxy on loopback that delays what clients send to the API server
//! by an adjustable latency: a slow API server (or a slow network path) for
//! the processes pointed at it, while everything else talks to the real one.
//! Bytes are forwarded in order, each chunk at its arrival time plus the
//! latency in force when it arrived; answers come back undelayed. A latency
//! can also be set for one client address only (the overlap checker slows
//! one pod's path while the others' stay fast). It can also refuse: every
//! connection is dropped and new ones are closed at once, an API server that
//! cannot be reached for the processes pointed at it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::config::Kubeconfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A running proxy; stops with the test's runtime.
pub struct DelayProxy {
    pub addr: SocketAddr,
    latency: Arc<Latency>,
    refusing: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The latency for everyone, and for some client addresses.
#[derive(Default)]
struct Latency {
    all_ms: AtomicU64,
    by_client_ms: Mutex<HashMap<IpAddr, u64>>,
}

impl Latency {
    fn for_client(&self, client: IpAddr) -> Duration {
        let one = self
            .by_client_ms
            .lock()
            .map(|m| m.get(&client).copied().unwrap_or(0))
            .unwrap_or(0);
        Duration::from_millis(self.all_ms.load(Ordering::Relaxed).max(one))
    }
}

impl DelayProxy {
    /// Listens on 127.0.0.1 (the API server's certificate covers it) and
    /// forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> DelayProxy {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Listens on `bind` (port 0: any free port) and forwards to `upstream`.
    pub async fn start_on(bind: SocketAddr, upstream: SocketAddr) -> DelayProxy {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("delay proxy: bind {bind}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("delay proxy: {e}"));
        let latency = Arc::new(Latency::default());
        let shared = latency.clone();
        let refusing = Arc::new(tokio::sync::watch::channel(false).0);
        let cut = refusing.clone();
        tokio::spawn(async move {
            while let Ok((client, from)) = listener.accept().await {
                if *cut.borrow() {
                    continue;
                }
                let latency = shared.clone();
                let cut = cut.subscribe();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, from.ip(), server, latency, cut).await;
                    }
                });
            }
        });
        DelayProxy {
            addr,
            latency,
            refusing,
        }
    }

    /// Refusing: every open connection is dropped, and new ones are closed
    /// as they come, until this is called with `false`.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.send_replace(refusing);
    }

    /// Latency added to everything sent from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.latency.all_ms.store(
            u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Latency added to what `client` sends from now on (zero: none).
    pub fn set_client_latency(&self, client: IpAddr, latency: Duration) {
        if let Ok(mut m) = self.latency.by_client_ms.lock() {
            m.insert(
                client,
                u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            );
        }
    }

    /// A copy of `kubeconfig` whose current cluster is reached through the
    /// proxy, written into `dir`.
    pub fn kubeconfig(&self, kubeconfig: &Path, dir: &Path) -> PathBuf {
        let mut config = Kubeconfig::read_from(kubeconfig)
            .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
        for cluster in &mut config.clusters {
            if let Some(c) = cluster.cluster.as_mut() {
                let server = c.server.clone().unwrap_or_default();
                let rest = server.trim_start_matches("https://");
                let path = rest.split_once('/').map_or("", |(_, p)| p);
                c.server = Some(format!("https://{}/{path}", self.addr));
            }
        }
        let out = dir.join("kubeconfig-via-delay-proxy");
        let text = serde_json::to_string(&config).unwrap_or_else(|e| panic!("kubeconfig: {e}"));
        std::fs::write(&out, text).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        out
    }
}

/// The API server's address from a kubeconfig's current cluster.
pub fn api_server_addr(kubeconfig: &Path) -> SocketAddr {
    let config = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
    let server = config
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref().and_then(|c| c.server.clone()))
        .unwrap_or_else(|| panic!("{}: no cluster server", kubeconfig.display()));
    let host_port = server
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("API server address {host_port:?} is not ip:port: {e}"))
}

async fn relay(
    client: TcpStream,
    from: IpAddr,
    server: TcpStream,
    latency: Arc<Latency>,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let upstream_reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + latency.for_client(from);
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let upstream_writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if server_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    });
    tokio::select! {
        _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
    upstream_reader.abort();
    upstream_writer.abort();
}
