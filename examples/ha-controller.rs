//! The kube-rs counterpart of `tests/cluster/cmd/hactl` (client-go): a
//! typical controller without leader election of its own, built from
//! kube-rs's standard parts (in-cluster config, a reflector, the runtime
//! `Controller`), which the `api` activation tests run as three replicas
//! behind zen-lead's API gate (`tests/e2e_api.rs`). Not part of zen-lead.
//!
//! Writes, all with the pod's name as field manager:
//! - heartbeat: every `--interval` a merge patch of the ConfigMap `heartbeat`
//!   with a counter and the pod name (created if the cache has none);
//! - reconcile: each ConfigMap labelled `hactl.zen-lead.io/input=true` gets a
//!   copy named `<name>-out`.
//!
//! Every write attempt, as the kube client returns it (after its own
//! retries), is appended to `--record` as a JSON line with CLOCK_MONOTONIC
//! start/end, ok, HTTP status and the returned resourceVersion; once a second
//! it records the heartbeat its cache holds. Same format as hactl.
//!
//! Build: `cargo build --release --example ha-controller`; image
//! `localhost/zl-hactl-rs:dev` (tests/cluster/images.sh).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Config, ResourceExt as _};
use serde_json::{Value, json};

const INPUT_LABEL: &str = "hactl.zen-lead.io/input";

fn monotonic_ns() -> i64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

struct Recorder {
    path: Option<PathBuf>,
    pod: String,
    lock: Mutex<()>,
}

impl Recorder {
    fn emit(&self, mut fields: serde_json::Map<String, Value>) {
        fields.insert("name".into(), json!(self.pod));
        fields.entry("mono").or_insert(json!(monotonic_ns()));
        fields.insert("unixNano".into(), json!(unix_ns()));
        let line = Value::Object(fields).to_string();
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = &self.path else {
            println!("{line}");
            return;
        };
        // One write per line, O_APPEND: lines of concurrent writers stay whole.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!("ha-controller: record {}: {e}", path.display());
        }
    }

    fn write(&self, kind: &str, object: &str, start: i64, result: &Result<ConfigMap, kube::Error>) {
        let mut f = serde_json::Map::new();
        f.insert("event".into(), json!("write"));
        f.insert("kind".into(), json!(kind));
        f.insert("object".into(), json!(object));
        f.insert("start".into(), json!(start));
        f.insert("ok".into(), json!(result.is_ok()));
        match result {
            Ok(cm) => {
                f.insert("code".into(), json!(200));
                if let Some(rv) = cm.resource_version().and_then(|v| v.parse::<i64>().ok()) {
                    f.insert("rv".into(), json!(rv));
                }
            }
            Err(e) => {
                let code = match e {
                    kube::Error::Api(status) => status.code,
                    _ => 0,
                };
                f.insert("code".into(), json!(code));
                f.insert("error".into(), json!(e.to_string()));
            }
        }
        self.emit(f);
    }
}

struct Ctx {
    api: Api<ConfigMap>,
    cache: Store<ConfigMap>,
    pod: String,
    rec: Recorder,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] kube::Error);

/// `<input>-out` becomes a copy of the input's data.
async fn reconcile(input: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let out_name = format!("{}-out", input.name_any());
    let ns = input.namespace().unwrap_or_default();
    let current = ctx.cache.get(&ObjectRef::new(&out_name).within(&ns));
    let start = monotonic_ns();
    let result = match current {
        Some(out) if out.data == input.data => return Ok(Action::await_change()),
        Some(out) => {
            let mut want = (*out).clone();
            want.data.clone_from(&input.data);
            want.metadata.managed_fields = None;
            ctx.api
                .replace(
                    &out_name,
                    &PostParams {
                        field_manager: Some(ctx.pod.clone()),
                        ..PostParams::default()
                    },
                    &want,
                )
                .await
        }
        None => {
            let want = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(out_name.clone()),
                    ..Default::default()
                },
                data: input.data.clone(),
                ..Default::default()
            };
            ctx.api
                .create(
                    &PostParams {
                        field_manager: Some(ctx.pod.clone()),
                        ..PostParams::default()
                    },
                    &want,
                )
                .await
        }
    };
    ctx.rec.write("output", &out_name, start, &result);
    result?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ConfigMap>, _: &ReconcileError, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_secs(1))
}

async fn beat(ctx: &Ctx, ns: &str, counter: u64) {
    let start = monotonic_ns();
    let data = BTreeMap::from([
        ("counter".to_owned(), counter.to_string()),
        ("writer".to_owned(), ctx.pod.clone()),
    ]);
    if ctx
        .cache
        .get(&ObjectRef::new("heartbeat").within(ns))
        .is_none()
    {
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("heartbeat".to_owned()),
                ..Default::default()
            },
            data: Some(data.clone()),
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some(ctx.pod.clone()),
            ..PostParams::default()
        };
        let result = ctx.api.create(&pp, &cm).await;
        if !matches!(&result, Err(kube::Error::Api(s)) if s.code == 409) {
            ctx.rec.write("heartbeat", "heartbeat", start, &result);
            return;
        }
    }
    let result = ctx
        .api
        .patch(
            "heartbeat",
            &PatchParams {
                field_manager: Some(ctx.pod.clone()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"data": data})),
        )
        .await;
    ctx.rec.write("heartbeat", "heartbeat", start, &result);
}

fn flag(name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    std::env::args().find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs like a typical kube-rs operator: the fmt subscriber at `info`
    // (RUST_LOG overrides), so what the client logs about refused writes
    // shows in `kubectl logs`.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("could not install the ring crypto provider"))?;
    let pod = flag("name")
        .or_else(|| std::env::var("POD_NAME").ok())
        .context("--name=POD or $POD_NAME is required")?;
    let ns = flag("namespace")
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .context("--namespace=NS or $POD_NAMESPACE is required")?;
    let interval = match flag("interval-ms") {
        Some(v) => Duration::from_millis(v.parse().context("--interval-ms must be a number")?),
        None => Duration::from_millis(100),
    };
    let rec = Recorder {
        path: flag("record").map(PathBuf::from),
        pod: pod.clone(),
        lock: Mutex::new(()),
    };

    // What an operator does: in-cluster config (KUBERNETES_SERVICE_* and the
    // service-account directory), the client's default layers (including
    // its default retry policy).
    let config = Config::incluster().context("in-cluster config")?;
    let mut start = serde_json::Map::new();
    start.insert("event".into(), json!("start"));
    start.insert("host".into(), json!(config.cluster_url.to_string()));
    rec.emit(start);
    let client = Client::try_from(config).context("client")?;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);

    let (cache, writer) = reflector::store();
    let reflect = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(reflect);
    cache
        .wait_until_ready()
        .await
        .context("the ConfigMap cache never filled")?;
    let mut synced = serde_json::Map::new();
    synced.insert("event".into(), json!("synced"));
    synced.insert("configMaps".into(), json!(cache.state().len()));
    rec.emit(synced);

    let ctx = Arc::new(Ctx {
        api: api.clone(),
        cache: cache.clone(),
        pod,
        rec,
    });
    let inputs = watcher::Config::default().labels(&format!("{INPUT_LABEL}=true"));
    let controller = Controller::new(api, inputs)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(controller);

    let sampler = {
        let ctx = ctx.clone();
        let ns = ns.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let mut f = serde_json::Map::new();
                f.insert("event".into(), json!("cache"));
                if let Some(cm) = ctx.cache.get(&ObjectRef::new("heartbeat").within(&ns)) {
                    let data = cm.data.clone().unwrap_or_default();
                    f.insert("writer".into(), json!(data.get("writer")));
                    f.insert("counter".into(), json!(data.get("counter")));
                }
                ctx.rec.emit(f);
            }
        }
    };
    tokio::spawn(sampler);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut tick = tokio::time::interval(interval);
    // A write slower than the interval (the client retrying a refused write)
    // delays the next one; missed ticks are not caught up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counter = 0u64;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tick.tick() => {
                counter += 1;
                tokio::select! {
                    _ = term.recv() => break,
                    () = beat(&ctx, &ns, counter) => {}
                }
            }
        }
    }
    let mut stop = serde_json::Map::new();
    stop.insert("event".into(), json!("stop"));
    ctx.rec.emit(stop);
    Ok(())
}
