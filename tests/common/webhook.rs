//! The webhook served as `zen-lead controller` serves it: the HTTPS server,
//! plus the process's admin server with the webhook's readiness condition.

use std::net::SocketAddr;
use std::sync::Arc;

use zen_lead::admin::{self, Admin, Readiness};
use zen_lead::webhook::certs::CertStore;
use zen_lead::webhook::lookup::Lookup;
use zen_lead::webhook::server::{self, Metrics, Running, ServeOptions};

pub struct Served {
    pub running: Running,
    pub admin: Admin,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl Served {
    pub async fn shutdown(self) {
        self.running.shutdown().await;
        self.admin.shutdown().await;
    }
}

pub async fn serve<L: Lookup>(
    options: ServeOptions,
    store: Arc<CertStore>,
    lookup: Arc<L>,
) -> Served {
    let mut registry = zen_lead::telemetry::new_registry();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let ready = readiness.condition("webhook serving certificate");
    let admin = admin::serve("127.0.0.1:0".parse().expect("addr"), registry, readiness)
        .await
        .expect("admin server starts");
    let running = server::start(options, store, lookup, metrics, ready)
        .await
        .expect("webhook starts");
    Served {
        addr: running.addr,
        admin_addr: admin.addr,
        running,
        admin,
    }
}
