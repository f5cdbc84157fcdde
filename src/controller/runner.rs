//! Runs the controllers on the replica that holds the controller's own
//! Lease, and stops them the moment it no longer does.

use crate::admin::ReadyFlag;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::context::Context;
use super::fencing::{Fencing, FencingSettings};
use super::metrics::Metrics;
use super::pool;
use super::queue::Queue;
use super::watch as watches;
use crate::election::{Elector, ElectorConfig, LeaderStatus, Timings};

/// What the controllers need beyond the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `None`: every namespace.
    pub watch_namespace: Option<String>,
    /// Where the controller's own Lease lives.
    pub namespace: String,
    pub lease_name: String,
    pub lease_timings: Timings,
    pub identity: String,
    pub workers: u16,
    pub evict_uninjected: bool,
    pub create_missing_policies: bool,
    pub detect_uninjected: bool,
    pub resync: Duration,
    pub fencing: FencingSettings,
}

/// Runs the controllers until the task is aborted: watches, workers and a
/// periodic resync. `ready` turns true once every watch has listed.
pub async fn controllers(client: Client, settings: Settings, metrics: Metrics, ready: ReadyFlag) {
    let queue = Queue::default();
    let (cache, tasks) = watches::start(
        &client,
        settings.watch_namespace.as_deref(),
        settings.detect_uninjected,
        &queue,
    );
    let _guard = AbortOnDrop(tasks);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "zen-lead".to_owned(),
            instance: Some(settings.identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client,
        cache.clone(),
        recorder,
        metrics.clone(),
        settings.evict_uninjected,
        settings.create_missing_policies,
        Fencing::new(
            settings.fencing.clone(),
            metrics.fencing_read_errors.clone(),
        ),
    ));
    // Do not act on half-listed caches: a pod missing from a partial list
    // would look deleted.
    while !cache.synced() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ready.set(true);
    info!("caches synced; reconciling");

    let mut workers = Vec::new();
    for _ in 0..settings.workers {
        let ctx = ctx.clone();
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let key = queue.pop().await;
                let span = info_span!("reconcile", namespace = %key.namespace, policy = %key.name);
                let result = pool::reconcile(&ctx, &key).instrument(span).await;
                queue.done(&key);
                match result {
                    Ok(after) => {
                        queue.succeeded(&key);
                        if let Some(after) = after {
                            queue.push_after(key, after);
                        }
                    }
                    Err(err) => {
                        ctx.metrics.error(err.step());
                        let pool = key.to_string();
                        let retry = queue.retry(key);
                        if err.is_conflict() {
                            debug!(%pool, error = %err, ?retry, "conflict; retrying");
                        } else {
                            warn!(%pool, error = %err, ?retry, "reconcile failed; retrying");
                        }
                    }
                }
            }
        }));
    }
    let _workers = AbortOnDrop(workers);
    let mut tick = tokio::time::interval(settings.resync);
    tick.tick().await;
    loop {
        tick.tick().await;
        metrics
            .policies
            .set(i64::try_from(cache.policies.state().len()).unwrap_or(i64::MAX));
        metrics
            .pool_pods
            .set(i64::try_from(cache.pods.state().len()).unwrap_or(i64::MAX));
        for key in cache.all_pools() {
            queue.push(key);
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Campaigns for the controller Lease; runs [`controllers`] while leading.
/// Returns when `shutdown` turns true (after releasing the Lease).
pub async fn lead_and_run(
    client: Client,
    election_client: Client,
    settings: Settings,
    metrics: Metrics,
    ready: ReadyFlag,
    election_metrics: crate::election::Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), crate::election::RunError> {
    let config = elector_config(&settings);
    // Its own client (connection pool): renewals never queue behind a
    // burst of reconcile requests.
    let (elector, mut status) = Elector::new(election_client, config, election_metrics)?;
    let election = tokio::spawn(elector.run(shutdown.clone(), Duration::from_secs(2)));
    // A standby replica is ready: it serves the webhook.
    ready.set(true);
    let span = info_span!("controller", identity = %settings.identity);
    async {
        loop {
            wait_to_lead(&mut status, &mut shutdown).await;
            if *shutdown.borrow() || !status.borrow().leading_at(Instant::now()) {
                break;
            }
            info!(lease = %format!("{}/{}", settings.namespace, settings.lease_name), "acquired the controller Lease; starting the controllers");
            metrics.is_active.set(1);
            ready.set(false);
            let task = tokio::spawn(
                controllers(client.clone(), settings.clone(), metrics.clone(), ready.clone())
                    .in_current_span(),
            );
            lead_while_renewed(&mut status, &mut shutdown).await;
            task.abort();
            let _ = task.await;
            metrics.is_active.set(0);
            ready.set(true);
            if *shutdown.borrow() {
                info!("shutting down: controllers stopped");
                break;
            }
            warn!("lost the controller Lease; controllers stopped, serving the webhook only");
        }
    }
    .instrument(span)
    .await;
    // The election ends by itself only on an error; otherwise it releases
    // the Lease once shutdown is signalled.
    let mut election = election;
    let finished_early = tokio::select! {
        r = &mut election => Some(r),
        _ = async { let _ = shutdown.wait_for(|s| *s).await; } => None,
    };
    let joined = match finished_early {
        Some(r) => r,
        None => election.await,
    };
    joined.unwrap_or(Ok(()))
}

/// The controller Lease's election settings: fixed timings, always allowed to create it.
fn elector_config(settings: &Settings) -> ElectorConfig {
    ElectorConfig {
        namespace: settings.namespace.clone(),
        name: settings.lease_name.clone(),
        identity: settings.identity.clone(),
        instance: crate::election::process_instance(),
        can_create: true,
        fixed: Some(settings.lease_timings),
        create_timings: settings.lease_timings,
        preferred_defer: Duration::ZERO,
        fail_on_denied: false,
        leadership_log: None,
    }
}

/// Waits to lead: returns once we lead, shutdown is signalled, or the status channel closes.
async fn wait_to_lead(
    status: &mut watch::Receiver<LeaderStatus>,
    shutdown: &mut watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        if status.borrow().leading_at(Instant::now()) {
            break;
        }
        tokio::select! {
            r = status.changed() => if r.is_err() { break },
            _ = shutdown.changed() => {}
        }
    }
}

/// Leads until the deadline passes without renewal, or shutdown.
async fn lead_while_renewed(
    status: &mut watch::Receiver<LeaderStatus>,
    shutdown: &mut watch::Receiver<bool>,
) {
    loop {
        let until = lead_until(&status.borrow());
        let Some(until) = until else { break };
        if Instant::now() >= until {
            break;
        }
        tokio::select! {
            r = status.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(until) => {}
            _ = shutdown.changed() => if *shutdown.borrow() { break },
        }
    }
}

fn lead_until(status: &LeaderStatus) -> Option<Instant> {
    if status.leading {
        status.lead_until
    } else {
        None
    }
}
