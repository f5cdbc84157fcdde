//! Runs the controllers on the replica that holds the controller's own
//! Lease, and stops them the moment it no longer does.
//!
//! The controllers' caches are theirs alone: they gate reconciling, not the
//! process's readiness (`/readyz` is the webhook's). A leader whose caches
//! do not sync within `--controller-sync-timeout` (a watch it cannot list:
//! RBAC, an API it cannot reach) gives the Lease up and exits, so the
//! kubelet restarts it and a standby can try, instead of holding the Lease
//! without ever reconciling.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::context::Context;
use super::fencing::{Fencing, FencingSettings};
use super::metrics::Metrics;
use super::pool;
use super::queue::Queue;
use super::task::{self, TaskError, Tasks};
use super::watch as watches;
use crate::election::{Elector, ElectorConfig, LeaderStatus, RunError, Timings};

/// Why [`lead_and_run`] stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Election(#[from] RunError),

    /// A controller task panicked (or ended): this replica stops leading
    /// (releasing the Lease) and exits, instead of holding the Lease with
    /// the part that failed gone.
    #[error("{0}")]
    Task(#[from] TaskError),

    /// The caches did not sync in time: this replica releases the Lease
    /// and exits, so a standby (or its restart) can try.
    #[error(
        "the controllers' caches did not sync within {timeout:?} \
         (--controller-sync-timeout, ZEN_LEAD_CONTROLLER_SYNC_TIMEOUT): the {} watch{} never \
         completed its first list; look for its watch errors in this log (usually missing \
         list/watch RBAC, or an API the server does not serve); this replica released the \
         controller Lease and exits so it restarts and a standby can lead",
        watches.join(", "),
        if watches.len() == 1 { "" } else { "es" }
    )]
    NotSynced {
        timeout: Duration,
        watches: Vec<&'static str>,
    },
}

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
    /// How long a new leader waits for its caches before giving up.
    pub sync_timeout: Duration,
}

/// While a leader waits for its caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncWait {
    Synced,
    Wait,
    GiveUp,
}

/// Whether to go on waiting for the caches after `waited` of `bound`.
fn sync_wait(synced: bool, waited: Duration, bound: Duration) -> SyncWait {
    if synced {
        SyncWait::Synced
    } else if waited >= bound {
        SyncWait::GiveUp
    } else {
        SyncWait::Wait
    }
}

/// The error for caches still not synced after `timeout`, naming the
/// watches that have not listed; `None` if all have meanwhile.
fn not_synced(timeout: Duration, pending: Vec<&'static str>) -> Option<RunnerError> {
    (!pending.is_empty()).then_some(RunnerError::NotSynced {
        timeout,
        watches: pending,
    })
}

/// The watches (of those [`watches::Cache::synced`] waits for) that have
/// not completed their first list. Only asked once, when giving up:
/// polling a store's readiness takes its single waiter slot, which the
/// cache's own sync marker then no longer gets woken through.
fn unsynced(cache: &watches::Cache) -> Vec<&'static str> {
    fn listed<F: std::future::Future<Output = Result<(), E>>, E>(ready: F) -> bool {
        ready.now_or_never().is_some_and(|r| r.is_ok())
    }
    [
        ("LeaderPolicies", listed(cache.policies.wait_until_ready())),
        ("pool pods", listed(cache.pods.wait_until_ready())),
        ("Leases", listed(cache.leases.wait_until_ready())),
        ("Deployments", listed(cache.deployments.wait_until_ready())),
        (
            "StatefulSets",
            listed(cache.statefulsets.wait_until_ready()),
        ),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| name)
    .collect()
}

/// Waits until every watch has listed, at most `bound`; fails early when a
/// task fails.
async fn wait_synced(
    cache: &watches::Cache,
    bound: Duration,
    running: &mut Tasks,
) -> Result<(), RunnerError> {
    let started = Instant::now();
    loop {
        match sync_wait(cache.synced(), started.elapsed(), bound) {
            SyncWait::Synced => return Ok(()),
            SyncWait::GiveUp => return not_synced(bound, unsynced(cache)).map_or(Ok(()), Err),
            SyncWait::Wait => {}
        }
        tokio::select! {
            failed = running.failed() => return Err(failed.into()),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Runs the controllers until the task is aborted: watches, workers and a
/// periodic resync. `synced` turns 1 once every watch has listed. Returns
/// only when one of its tasks panicked or ended, or the caches did not
/// sync within `settings.sync_timeout`.
pub async fn controllers(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    synced: Gauge,
) -> RunnerError {
    // Two lanes: every change queues the pool for a pass, and for a
    // routing pass that only keeps its leader Service's endpoint (so a
    // switch of traffic never waits behind a pass's other writes).
    let routes = Queue::default();
    let queue = Queue::mirrored(routes.clone());
    let (cache, tasks) = watches::start(
        &client,
        settings.watch_namespace.as_deref(),
        settings.detect_uninjected,
        &queue,
    );
    let mut running = Tasks::default();
    for t in tasks {
        // The cache-sync marker finishes once synced; only a panic counts.
        running.push("watch", false, t);
    }
    let ctx = context(client, cache.clone(), &settings, &metrics);
    // Do not act on half-listed caches: a pod missing from a partial list
    // would look deleted.
    if let Err(err) = wait_synced(&cache, settings.sync_timeout, &mut running).await {
        return err;
    }
    synced.set(1);
    info!("caches synced; reconciling");
    running.push(
        "fencing-scope",
        true,
        tokio::spawn(sweep_fencing_scope(ctx.clone())),
    );
    for _ in 0..settings.workers {
        running.push(
            "worker",
            true,
            tokio::spawn(work(ctx.clone(), queue.clone())),
        );
    }
    // As many routing workers as pass workers: one slow write (an admission
    // webhook on Services, say) must not hold back every pool's switch. The
    // lane's queue never runs two passes of one pool at once.
    for _ in 0..settings.workers {
        running.push(
            "routing",
            true,
            tokio::spawn(route(ctx.clone(), routes.clone(), queue.clone())),
        );
    }
    resync(&cache, &queue, &metrics, settings.resync, &mut running)
        .await
        .into()
}

/// What every pass shares.
fn context(
    client: Client,
    cache: watches::Cache,
    settings: &Settings,
    metrics: &Metrics,
) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "zen-lead".to_owned(),
            instance: Some(settings.identity.clone()),
        },
    );
    Arc::new(Context::new(
        client,
        cache,
        recorder,
        metrics.clone(),
        settings.evict_uninjected,
        settings.create_missing_policies,
        Fencing::new(
            settings.fencing.clone(),
            metrics.fencing_read_errors.clone(),
            metrics.fencing_scope_errors.clone(),
        ),
    ))
}

/// Keeps the fencing binding's namespace scope to the namespaces with fenced
/// pools, forever (see [`crate::controller::decide::fencing_scope`]).
async fn sweep_fencing_scope(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(ctx.fencing.settings.scope_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !ctx.cache.synced() {
            continue;
        }
        let fenced = ctx.cache.fenced_namespaces();
        ctx.fencing.sweep(&ctx.client, &fenced).await;
    }
}

/// The routing lane's worker: keeps each pool's leader Service endpoint
/// ([`pool::routing::pass`]); a changed LeaderService condition queues the
/// pool's pass (which writes the status), a failed write is retried.
async fn route(ctx: Arc<Context>, routes: Queue, queue: Queue) {
    loop {
        let key = routes.pop().await;
        let span = info_span!("route", namespace = %key.namespace, policy = %key.name);
        let routed = pool::routing::pass(&ctx, &key).instrument(span).await;
        routes.done(&key);
        if routed.failed {
            ctx.metrics.error("EndpointSlice");
            routes.retry(key.clone());
        } else {
            routes.succeeded(&key);
        }
        if routed.changed {
            queue.push(key);
        }
    }
}

/// One worker: reconciles the pools the queue hands it, forever.
async fn work(ctx: Arc<Context>, queue: Queue) {
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
}

/// Re-queues every pool each `every` (and updates the size gauges) until
/// one of `running` fails; returns that failure.
async fn resync(
    cache: &watches::Cache,
    queue: &Queue,
    metrics: &Metrics,
    every: Duration,
    running: &mut Tasks,
) -> TaskError {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            failed = running.failed() => return failed,
            _ = tick.tick() => {}
        }
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

/// Campaigns for the controller Lease; runs [`controllers`] while leading.
/// Returns when `shutdown` turns true (after releasing the Lease), or with
/// an error when the election or a controller task fails (after releasing
/// the Lease, so a standby takes over at once).
pub async fn lead_and_run(
    client: Client,
    election_client: Client,
    settings: Settings,
    metrics: Metrics,
    synced: Gauge,
    election_metrics: crate::election::Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunnerError> {
    let config = elector_config(&settings);
    // Its own client (connection pool): renewals never queue behind a
    // burst of reconcile requests.
    let (elector, mut status) = Elector::new(election_client, config, election_metrics)?;
    // Its own stop signal: it is stopped (and releases the Lease) on
    // shutdown, and also when the controllers fail.
    let (stop_election, election_stop) = watch::channel(false);
    let mut election = tokio::spawn(elector.run(election_stop, Duration::from_secs(2)));
    let span = info_span!("controller", identity = %settings.identity);
    let term = Term {
        client: &client,
        settings: &settings,
        metrics: &metrics,
        synced: &synced,
    };
    let failed = async {
        loop {
            wait_to_lead(&mut status, &mut shutdown).await;
            if *shutdown.borrow() || !status.borrow().leading_at(Instant::now()) {
                break None;
            }
            if let Some(err) = term.run(&mut status, &mut shutdown).await {
                error!(error = %err, "the controllers failed; releasing the controller Lease and stopping this replica so it restarts");
                break Some(err);
            }
            if *shutdown.borrow() {
                info!("shutting down: controllers stopped");
                break None;
            }
            warn!("lost the controller Lease; controllers stopped, serving the webhook only");
        }
    }
    .instrument(span)
    .await;
    // The election ends by itself only on an error; otherwise it releases
    // the Lease once stopped.
    let finished_early = if failed.is_some() {
        None
    } else {
        tokio::select! {
            r = &mut election => Some(r),
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => None,
        }
    };
    let _ = stop_election.send(true);
    let joined = match finished_early {
        Some(r) => r,
        None => election.await,
    };
    let elected = task::joined(
        "controller election",
        joined.map(|r| r.map_err(RunnerError::from)),
    );
    match failed {
        Some(err) => Err(err),
        None => elected,
    }
}

/// What one term of leading runs the controllers with.
struct Term<'a> {
    client: &'a Client,
    settings: &'a Settings,
    metrics: &'a Metrics,
    synced: &'a Gauge,
}

impl Term<'_> {
    /// Runs the controllers while this replica leads; returns their failure,
    /// or `None` once the Lease is lost or shutdown is signalled.
    async fn run(
        &self,
        status: &mut watch::Receiver<LeaderStatus>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<RunnerError> {
        let settings = self.settings;
        info!(lease = %format!("{}/{}", settings.namespace, settings.lease_name), "acquired the controller Lease; starting the controllers");
        self.metrics.is_active.set(1);
        let mut task = tokio::spawn(
            controllers(
                self.client.clone(),
                settings.clone(),
                self.metrics.clone(),
                self.synced.clone(),
            )
            .in_current_span(),
        );
        let ended = tokio::select! {
            _ = lead_while_renewed(status, shutdown) => None,
            ended = &mut task => Some(ended),
        };
        let failed = match ended {
            Some(Ok(err)) => Some(err),
            Some(Err(join)) => Some(task::join_error("controllers", join).into()),
            None => {
                task.abort();
                match task.await {
                    // Failed just before it was stopped.
                    Ok(err) => Some(err),
                    Err(join) if join.is_panic() => {
                        Some(task::join_error("controllers", join).into())
                    }
                    Err(_) => None,
                }
            }
        };
        self.metrics.is_active.set(0);
        self.metrics.pools.clear();
        self.synced.set(0);
        failed
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_waits_for_its_caches_only_up_to_the_bound() {
        let s = Duration::from_secs;
        // (synced, waited, bound, expected)
        let cases = [
            (true, s(0), s(120), SyncWait::Synced),
            (true, s(500), s(120), SyncWait::Synced),
            (false, s(0), s(120), SyncWait::Wait),
            (false, s(119), s(120), SyncWait::Wait),
            (false, s(120), s(120), SyncWait::GiveUp),
            (false, s(121), s(120), SyncWait::GiveUp),
        ];
        for (synced, waited, bound, want) in cases {
            assert_eq!(
                sync_wait(synced, waited, bound),
                want,
                "synced {synced}, waited {waited:?} of {bound:?}"
            );
        }
    }

    #[test]
    fn giving_up_names_the_watches_that_did_not_list() {
        let bound = Duration::from_secs(120);
        assert!(
            not_synced(bound, Vec::new()).is_none(),
            "all listed meanwhile: go on"
        );
        let one = not_synced(bound, vec!["StatefulSets"])
            .expect("an error")
            .to_string();
        assert!(
            one.contains("within 120s")
                && one.contains("--controller-sync-timeout")
                && one.contains("the StatefulSets watch never")
                && one.contains("released the controller Lease"),
            "{one}"
        );
        let two = not_synced(bound, vec!["pool pods", "Leases"])
            .expect("an error")
            .to_string();
        assert!(two.contains("the pool pods, Leases watches never"), "{two}");
    }

    #[tokio::test]
    async fn caches_that_never_list_are_named_once_the_bound_passes() {
        let cache = watches::Cache::empty();
        let mut running = Tasks::default();
        let bound = Duration::from_millis(50);
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            wait_synced(&cache, bound, &mut running),
        )
        .await
        .expect("gives up within the bound")
        .expect_err("not synced");
        match err {
            RunnerError::NotSynced { timeout, watches } => {
                assert_eq!(timeout, bound);
                assert_eq!(
                    watches,
                    [
                        "LeaderPolicies",
                        "pool pods",
                        "Leases",
                        "Deployments",
                        "StatefulSets"
                    ]
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
}
