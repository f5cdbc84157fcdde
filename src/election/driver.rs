//! The election's I/O: watches the Lease, performs the [`Machine`]'s actions
//! as compare-and-swap writes with per-request timeouts, and publishes the
//! result (a [`LeaderStatus`] channel, the leadership log, metrics).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{Instrument, debug, info, info_span, warn};

use super::Timings;
use super::clock;
use super::machine::{
    Action, EndReason, Failure, LeadEvent, Machine, MachineConfig, Observation, WriteKind,
};
use super::record::{
    Record, SpecWrite, apply_instance, apply_spec, drop_own_preference, format_seconds,
    lease_duration_seconds,
};
use crate::api::keys::{
    RENEW_DEADLINE_ANNOTATION, RETRY_PERIOD_ANNOTATION, SCHEDULED_RUN_ANNOTATION,
    SCHEDULED_RUNS_ANNOTATION,
};

/// Settings of one candidate's election.
#[derive(Debug, Clone)]
pub struct ElectorConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// Which instance of `identity` this is (the pod UID for the agent; a
    /// per-process value for `lock`): see [`MachineConfig::instance`].
    pub instance: String,
    /// Create the Lease when it is missing (lock; agent with --create-lease).
    pub can_create: bool,
    /// Our own timings (lock) instead of the Lease's (agent).
    pub fixed: Option<Timings>,
    /// Timings written into a Lease we create from nothing.
    pub create_timings: Timings,
    pub preferred_defer: Duration,
    /// Give up on 401/403 instead of retrying (lock: a person is waiting).
    pub fail_on_denied: bool,
    /// JSON line per leadership change, with CLOCK_MONOTONIC timestamps.
    pub leadership_log: Option<PathBuf>,
}

/// What the election currently knows, for the agent's API and for `lock`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaderStatus {
    /// Identity named in the Lease (`None`: free, missing or unknown).
    pub holder: Option<String>,
    /// We lead, until `lead_until`.
    pub leading: bool,
    pub lead_until: Option<Instant>,
    /// `leaseTransitions` of the observed term: the fencing token.
    pub token: Option<i32>,
    /// Start of the observed term (the Lease's acquireTime).
    pub since: Option<SystemTime>,
    /// The Lease's state has been observed at least once.
    pub observed: bool,
    /// The Lease exists.
    pub lease_exists: bool,
    /// The watch on the Lease is established.
    pub connected: bool,
    /// Timings in force (the API gate bounds in-flight writes with
    /// `lease_duration - renew_deadline` past the term's end).
    pub timings: Timings,
    /// `scheduledRuns: once`: when this candidate took the Lease, it had
    /// already been led for the same scheduled time by this Job (`run` then
    /// skips the command).
    pub duplicate_of: Option<String>,
}

impl LeaderStatus {
    /// Whether we lead at `now`: also false once the term's deadline passed,
    /// even if the election task has not run since (a paused process).
    pub fn leading_at(&self, now: Instant) -> bool {
        self.leading && self.lead_until.is_some_and(|until| now < until)
    }
}

/// Errors that stop an election.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "access to Lease {namespace}/{name} was denied ({message}); the identity in use needs \
         get, watch and update{create} on leases.coordination.k8s.io named {name} in namespace \
         {namespace}"
    )]
    Denied {
        namespace: String,
        name: String,
        message: String,
        create: &'static str,
    },

    #[error("could not write the leadership log {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the watch task of Lease {namespace}/{name} stopped")]
    WatchStopped { namespace: String, name: String },
}

/// Election metrics (registered under `zen_lead_`).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub is_leader: Gauge,
    pub became_leader: Counter,
    pub fencing_token: Gauge,
    pub api_requests: Counter,
    pub renew_latency: Gauge<f64, AtomicU64>,
    pub renew_failures: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "is_leader",
            "1 while this candidate holds the pool's Lease",
            self.is_leader.clone(),
        );
        registry.register(
            "leadership_acquired",
            "Times this candidate became leader",
            self.became_leader.clone(),
        );
        registry.register(
            "lease_transitions",
            "leaseTransitions of the observed term (the fencing token)",
            self.fencing_token.clone(),
        );
        registry.register(
            "api_requests",
            "HTTP requests sent to the Kubernetes API server (watch requests included)",
            self.api_requests.clone(),
        );
        registry.register(
            "renew_latency_seconds",
            "Duration of the last successful renewal",
            self.renew_latency.clone(),
        );
        registry.register(
            "renew_failures",
            "Renewal attempts that failed",
            self.renew_failures.clone(),
        );
    }
}

/// Errors building the API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no Kubernetes configuration found ({0}); run inside a pod with a ServiceAccount, or set \
         KUBECONFIG"
    )]
    Config(#[source] kube::config::InferConfigError),
    #[error("could not build the Kubernetes client: {0}")]
    Build(#[source] kube::Error),
}

/// Who retries a failed request of a [`counting_client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// The caller, on its own schedule (an election): kube's retry layer is
    /// off and a connection attempt gives up after 2 s.
    Caller,
    /// kube's client, with its defaults (the controllers).
    Kube,
}

/// The inferred client (in-cluster, else KUBECONFIG) whose every request
/// increments `requests`: the API load every role reports as a metric.
pub async fn counting_client(requests: Counter, retries: Retries) -> Result<Client, ClientError> {
    let mut config = kube::Config::infer().await.map_err(ClientError::Config)?;
    if retries == Retries::Caller {
        config.default_retry = false;
        config.connect_timeout = Some(Duration::from_secs(2));
    }
    let layer = tower::util::MapRequestLayer::new(move |req| {
        requests.inc();
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(ClientError::Build)?
        .with_layer(&layer)
        .build())
}

/// A Lease holder identity unique to this process: `base`, else the host
/// name, else `fallback`; then `separator` and the process id, so two
/// processes on one host never share an identity.
pub fn process_identity(base: Option<String>, fallback: &str, separator: char) -> String {
    let named = |v: String| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
    let base = base
        .and_then(named)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(named)
        })
        .unwrap_or_else(|| fallback.to_owned());
    format!("{base}{separator}{}", std::process::id())
}

enum WatchMsg {
    Listed {
        lease: Option<Lease>,
        resource_version: Option<String>,
    },
    Applied(Lease),
    Deleted(Lease),
    Connected(bool),
}

/// The leadership log: one JSON line per change of our own leadership.
struct LeadershipLog {
    path: PathBuf,
    file: File,
}

impl LeadershipLog {
    fn open(path: &Path) -> Result<Self, RunError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RunError::Log {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<(), RunError> {
        let mut text = line.to_string();
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(|source| RunError::Log {
                path: self.path.clone(),
                source,
            })
    }
}

/// One candidate's election on one Lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: ElectorConfig,
    machine: Machine,
    last_lease: Option<Lease>,
    status: watch::Sender<LeaderStatus>,
    log: Option<LeadershipLog>,
    metrics: Metrics,
    connected: bool,
    /// See [`Elector::with_stand_down`].
    stand_down: Option<watch::Receiver<Option<Instant>>>,
    /// See [`Elector::with_running_apps`].
    running_apps: Option<watch::Receiver<usize>>,
    /// See [`Elector::with_in_flight_writes`].
    in_flight_writes: Option<watch::Receiver<usize>>,
    /// See [`Elector::with_scheduled_run`]: `(time, job)`.
    scheduled_run: Option<(String, String)>,
    /// The Job whose run of our scheduled time the Lease named when we last
    /// sent an acquire; kept once that acquire succeeded.
    pending_duplicate: Option<String>,
    duplicate_of: Option<String>,
}

impl Elector {
    /// Lets the owner make this candidate stand down until a given time
    /// (release a term it holds and take none): the agent does so when the
    /// app under `zen-lead run` fails while leading.
    pub fn with_stand_down(mut self, until: watch::Receiver<Option<Instant>>) -> Self {
        self.stand_down = Some(until);
        self
    }

    /// `process` activation: how many app processes run under this term.
    /// A voluntary release (hand-off, stand-down, shutdown) ends the term at
    /// once, so `zen-lead run` stops its app, but clears the Lease only once
    /// they are gone (at the latest when the term's deadline plus the stop
    /// grace has passed, when `run` has killed them): the successor's app
    /// never starts beside an old one that is still shutting down.
    pub fn with_running_apps(mut self, running: watch::Receiver<usize>) -> Self {
        self.running_apps = Some(running);
        self
    }

    /// `api` activation: how many of the app's writes the API gate has sent
    /// and not yet seen answered. A voluntary release clears the Lease only
    /// once they are (at the latest at the Lease's expiry, when anyone may
    /// take it anyway): a write the API server admitted before the release
    /// is stored before the successor's first write.
    pub fn with_in_flight_writes(mut self, writes: watch::Receiver<usize>) -> Self {
        self.in_flight_writes = Some(writes);
        self
    }

    /// A CronJob-created Job's candidate: every term it begins records
    /// `<time> <job>` on the Lease ([`SCHEDULED_RUN_ANNOTATION`]). When the
    /// Lease says `scheduledRuns: once` and already records the same time for
    /// another Job, the term begins without recording and reports that Job in
    /// [`LeaderStatus::duplicate_of`]. The check and the acquire are one
    /// compare-and-swap, so two Jobs of one time can never both run.
    pub fn with_scheduled_run(mut self, time: String, job: String) -> Self {
        self.scheduled_run = Some((time, job));
        self
    }

    /// Waits until no app runs under our ended term, or until `limit`.
    async fn apps_stopped(&mut self, limit: Instant) {
        let Some(running) = self.running_apps.as_mut() else {
            return;
        };
        let started = Instant::now();
        match tokio::time::timeout_at(limit, running.wait_for(|n| *n == 0)).await {
            Ok(_) => {}
            Err(_) => warn!(
                "app processes still ran at the term's stop deadline; releasing anyway (zen-lead \
                 run has killed them by now)"
            ),
        }
        let waited = started.elapsed();
        if waited >= Duration::from_millis(1) {
            debug!(
                waited_ms = waited.as_millis(),
                "release waited for the app to stop"
            );
        }
    }

    /// Waits until the gate has no write in flight, or until `limit`;
    /// whether none is left.
    async fn writes_answered(&mut self, limit: Instant) -> bool {
        let Some(writes) = self.in_flight_writes.as_mut() else {
            return true;
        };
        let started = Instant::now();
        let answered = tokio::time::timeout_at(limit, writes.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|alive| alive.is_ok());
        let waited = started.elapsed();
        if waited >= Duration::from_millis(1) {
            debug!(
                waited_ms = waited.as_millis(),
                answered, "release waited for the app's writes in flight"
            );
        }
        answered
    }

    /// When our term ending at `until` expires: nobody else may take the
    /// Lease before, anyone may after (the gate cuts our writes there).
    fn expiry(&self, until: Option<Instant>, now: Instant) -> Instant {
        let timings = self.machine.timings();
        until.unwrap_or(now).max(now)
            + timings
                .lease_duration()
                .saturating_sub(timings.renew_deadline())
    }

    /// Latest time an app may still run after our term ends at `until`.
    fn stop_limit(&self, until: Option<Instant>, now: Instant) -> Instant {
        until.unwrap_or(now).max(now) + self.machine.timings().stop_grace()
    }

    /// Prepares the election; nothing is sent until [`Elector::run`].
    pub fn new(
        client: Client,
        cfg: ElectorConfig,
        metrics: Metrics,
    ) -> Result<(Self, watch::Receiver<LeaderStatus>), RunError> {
        clock::init();
        let api = Api::namespaced(client, &cfg.namespace);
        let machine = Machine::new(MachineConfig {
            identity: cfg.identity.clone(),
            instance: cfg.instance.clone(),
            can_create: cfg.can_create,
            fixed: cfg.fixed,
            create_timings: cfg.create_timings,
            preferred_defer: cfg.preferred_defer,
        });
        let log = cfg
            .leadership_log
            .as_deref()
            .map(LeadershipLog::open)
            .transpose()?;
        let (status, rx) = watch::channel(LeaderStatus::default());
        Ok((
            Self {
                api,
                cfg,
                machine,
                last_lease: None,
                status,
                log,
                metrics,
                connected: false,
                stand_down: None,
                running_apps: None,
                in_flight_writes: None,
                scheduled_run: None,
                pending_duplicate: None,
                duplicate_of: None,
            },
            rx,
        ))
    }

    /// Campaigns until `shutdown` becomes true, then releases the Lease if
    /// it names us (bounded by `release_timeout`).
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        release_timeout: Duration,
    ) -> Result<(), RunError> {
        let span = info_span!("election", namespace = %self.cfg.namespace, lease = %self.cfg.name, identity = %self.cfg.identity);
        async move {
            let (tx, mut events) = mpsc::channel(64);
            let watcher = tokio::spawn(
                watch_lease(self.api.clone(), self.cfg.name.clone(), tx).in_current_span(),
            );
            let mut stand_down = self.stand_down.take();
            let result = self
                .campaign(&mut events, &mut shutdown, stand_down.as_mut())
                .await;
            watcher.abort();
            if result.is_ok() {
                self.release(release_timeout).await;
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn campaign(
        &mut self,
        events: &mut mpsc::Receiver<WatchMsg>,
        shutdown: &mut watch::Receiver<bool>,
        mut stand_down: Option<&mut watch::Receiver<Option<Instant>>>,
    ) -> Result<(), RunError> {
        let mut waiting_logged = false;
        let mut last_logged: Option<Action> = None;
        loop {
            while let Ok(msg) = events.try_recv() {
                self.apply_watch(msg)?;
            }
            if let Some(rx) = stand_down.as_deref_mut() {
                self.machine.stand_down(*rx.borrow_and_update());
            }
            let now = Instant::now();
            if let Some(ev) = self.machine.expire(now) {
                self.emit(ev)?;
            }
            self.publish();
            if *shutdown.borrow() {
                return Ok(());
            }
            let action = self.machine.decide(now);
            self.log_decision(&action, now, &mut last_logged);
            match action {
                Action::Wait(until) => {
                    self.note_missing_lease(until, now, &mut waiting_logged);
                    let wake = match (until, self.machine.lead_deadline()) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let flow = self
                        .wait_for_change(wake, now, events, shutdown, &mut stand_down)
                        .await?;
                    if flow.is_break() {
                        return Ok(());
                    }
                }
                Action::Read => self.read().await?,
                Action::Create(write) => self.write(WriteKind::Create, None, write).await?,
                Action::Replace {
                    kind,
                    base_resource_version,
                    write,
                } => {
                    self.replace(kind, base_resource_version, write, now)
                        .await?;
                }
            }
        }
    }

    /// Logs `action` once per distinct decision: enough to reconstruct what
    /// a candidate thought, without a line per renewal.
    fn log_decision(&self, action: &Action, now: Instant, last_logged: &mut Option<Action>) {
        if last_logged.as_ref() != Some(action) {
            match action {
                Action::Wait(until) => debug!(
                    wait_ms = until.map(|u| u.saturating_duration_since(now).as_millis()),
                    holder = ?self.machine.record().and_then(|r| r.holder.as_deref()),
                    leading = self.machine.leading(now),
                    "waiting"
                ),
                Action::Replace {
                    kind: WriteKind::Renew,
                    ..
                } => {}
                other => debug!(action = ?other, "next step"),
            }
            *last_logged = Some(action.clone());
        }
    }

    /// Says once (until it changes) that we wait for someone else to create
    /// the missing Lease.
    fn note_missing_lease(&self, until: Option<Instant>, now: Instant, waiting_logged: &mut bool) {
        if until.is_none() && !self.machine.leading(now) {
            if self.machine.observed() && self.machine.record().is_none() {
                if !*waiting_logged {
                    info!(
                        "Lease {}/{} does not exist yet; waiting for the zen-lead \
                         controller to create it (or start with --create-lease)",
                        self.cfg.namespace, self.cfg.name
                    );
                    *waiting_logged = true;
                }
            } else {
                *waiting_logged = false;
            }
        }
    }

    /// Sleeps until `wake`, a watch event, a shutdown or a stand-down
    /// change, whichever comes first. `Break`: the shutdown sender is gone,
    /// so the campaign ends as on shutdown.
    async fn wait_for_change(
        &mut self,
        wake: Option<Instant>,
        now: Instant,
        events: &mut mpsc::Receiver<WatchMsg>,
        shutdown: &mut watch::Receiver<bool>,
        stand_down: &mut Option<&mut watch::Receiver<Option<Instant>>>,
    ) -> Result<ControlFlow<()>, RunError> {
        tokio::select! {
            msg = events.recv() => match msg {
                Some(msg) => self.apply_watch(msg)?,
                None => return Err(RunError::WatchStopped {
                    namespace: self.cfg.namespace.clone(),
                    name: self.cfg.name.clone(),
                }),
            },
            () = sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            // Picked up at the top of the loop.
            changed = async {
                match stand_down.as_deref_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    *stand_down = None;
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Performs a CAS write decided by the machine; a release ends our term
    /// first and waits for our apps to stop before clearing the Lease.
    async fn replace(
        &mut self,
        kind: WriteKind,
        base_resource_version: String,
        write: SpecWrite,
        now: Instant,
    ) -> Result<(), RunError> {
        let term_until = self.machine.lead_deadline();
        if let Some(ev) = self.machine.begin(
            &Action::Replace {
                kind,
                base_resource_version: base_resource_version.clone(),
                write: write.clone(),
            },
            now,
        ) {
            self.emit(ev)?;
            self.publish();
        }
        if kind == WriteKind::Release {
            let limit = self.stop_limit(term_until, now);
            self.apps_stopped(limit).await;
            // Past the expiry the release is harmless: anyone may take over.
            let expiry = self.expiry(term_until, now);
            self.writes_answered(expiry).await;
        }
        self.write(kind, Some(base_resource_version), write).await
    }

    fn apply_watch(&mut self, msg: WatchMsg) -> Result<(), RunError> {
        let now = Instant::now();
        // A term whose deadline passed ends first, at its deadline.
        if let Some(ev) = self.machine.expire(now) {
            self.emit(ev)?;
        }
        let event = match msg {
            WatchMsg::Connected(up) => {
                self.connected = up;
                None
            }
            WatchMsg::Listed {
                lease: Some(lease), ..
            }
            | WatchMsg::Applied(lease) => self.observe_lease(lease, now),
            WatchMsg::Listed {
                lease: None,
                resource_version,
            } => self.machine.observe(
                Observation::Missing {
                    continuous: false,
                    resource_version,
                },
                now,
            ),
            WatchMsg::Deleted(lease) => {
                let resource_version = lease.metadata.resource_version.clone();
                if self.machine.leading(now) {
                    warn!("Lease deleted while we lead; our term lasts until its deadline");
                }
                self.machine.observe(
                    Observation::Missing {
                        continuous: true,
                        resource_version,
                    },
                    now,
                )
            }
        };
        if let Some(ev) = event {
            self.emit(ev)?;
        }
        Ok(())
    }

    fn observe_lease(&mut self, lease: Lease, now: Instant) -> Option<LeadEvent> {
        let rec = Record::from_lease(&lease)?;
        let newer = self
            .machine
            .record()
            .is_none_or(|r| r.resource_version != rec.resource_version);
        let event = self.machine.observe(Observation::Present(rec), now);
        if newer
            && self.machine.record().is_some_and(|r| {
                Some(&r.resource_version) == lease.metadata.resource_version.as_ref()
            })
        {
            self.last_lease = Some(lease);
        }
        event
    }

    async fn read(&mut self) -> Result<(), RunError> {
        let limit = self.machine.request_timeout();
        let result = timeout(limit, self.api.get_opt(&self.cfg.name)).await;
        let now = Instant::now();
        match result {
            Ok(Ok(Some(lease))) => {
                if let Some(ev) = self.observe_lease(lease, now) {
                    self.emit(ev)?;
                }
            }
            Ok(Ok(None)) => {
                if let Some(ev) = self.machine.observe(
                    Observation::Missing {
                        continuous: false,
                        resource_version: None,
                    },
                    now,
                ) {
                    self.emit(ev)?;
                }
            }
            Ok(Err(err)) => {
                self.check_denied(&err)?;
                debug!(error = %err, "reading the Lease failed");
                self.machine.write_failed(Failure::Transient, now);
            }
            Err(_) => {
                debug!(?limit, "reading the Lease timed out");
                self.machine.write_failed(Failure::Transient, now);
            }
        }
        Ok(())
    }

    fn check_denied(&self, err: &kube::Error) -> Result<(), RunError> {
        if let kube::Error::Api(status) = err
            && matches!(status.code, 401 | 403)
        {
            let denied = RunError::Denied {
                namespace: self.cfg.namespace.clone(),
                name: self.cfg.name.clone(),
                message: status.message.clone(),
                create: if self.cfg.can_create {
                    " and create"
                } else {
                    ""
                },
            };
            if self.cfg.fail_on_denied {
                return Err(denied);
            }
            warn!("{denied}");
        }
        Ok(())
    }

    fn lease_body(&mut self, kind: WriteKind, base_rv: Option<&str>, write: &SpecWrite) -> Lease {
        let base = self.last_lease.as_ref();
        let mut metadata = base.map(|l| l.metadata.clone()).unwrap_or_default();
        if kind == WriteKind::Create {
            // A fresh object: keep what describes it (labels, annotations,
            // owners), drop what belonged to the deleted one.
            metadata = ObjectMeta {
                name: Some(self.cfg.name.clone()),
                namespace: Some(self.cfg.namespace.clone()),
                labels: metadata.labels,
                annotations: metadata.annotations,
                owner_references: metadata.owner_references,
                ..ObjectMeta::default()
            };
            if base.is_none() {
                let t = self.cfg.fixed.unwrap_or(self.cfg.create_timings);
                let annotations: BTreeMap<String, String> = [
                    (
                        RENEW_DEADLINE_ANNOTATION.to_owned(),
                        format_seconds(t.renew_deadline()),
                    ),
                    (
                        RETRY_PERIOD_ANNOTATION.to_owned(),
                        format_seconds(t.retry_period()),
                    ),
                ]
                .into();
                metadata.annotations = Some(annotations);
            }
        } else {
            metadata.resource_version = base_rv.map(str::to_owned);
            metadata.managed_fields = None;
        }
        apply_instance(&mut metadata.annotations, write);
        if write.holder.is_none() {
            drop_own_preference(&mut metadata.annotations, self.machine.identity());
        }
        if write.new_term
            && let Some((time, job)) = &self.scheduled_run
        {
            let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
            let once = annotations
                .get(SCHEDULED_RUNS_ANNOTATION)
                .map(String::as_str)
                == Some("once");
            let recorded = annotations
                .get(SCHEDULED_RUN_ANNOTATION)
                .and_then(|v| v.split_once(' '))
                .map(|(t, j)| (t.to_owned(), j.to_owned()));
            self.pending_duplicate = match recorded {
                Some((t, j)) if once && &t == time && &j != job => Some(j),
                _ => None,
            };
            if self.pending_duplicate.is_none() {
                annotations.insert(SCHEDULED_RUN_ANNOTATION.to_owned(), format!("{time} {job}"));
            }
        }
        let mut write = write.clone();
        if base.is_none() && write.lease_duration_seconds.is_none() {
            let t = self.cfg.fixed.unwrap_or(self.cfg.create_timings);
            write.lease_duration_seconds = Some(lease_duration_seconds(t.lease_duration()));
        }
        Lease {
            metadata,
            spec: Some(apply_spec(base.and_then(|l| l.spec.as_ref()), &write)),
        }
    }

    async fn write(
        &mut self,
        kind: WriteKind,
        base_rv: Option<String>,
        write: SpecWrite,
    ) -> Result<(), RunError> {
        let body = self.lease_body(kind, base_rv.as_deref(), &write);
        let write_new_term = write.new_term;
        let sent_at = Instant::now();
        let limit = self.machine.write_timeout(kind, sent_at);
        let api = self.api.clone();
        let name = self.cfg.name.clone();
        let request = async move {
            match kind {
                WriteKind::Create => api.create(&PostParams::default(), &body).await,
                _ => api.replace(&name, &PostParams::default(), &body).await,
            }
        };
        let result = self.during_term(timeout(limit, request), sent_at).await?;
        let now = Instant::now();
        match result {
            Ok(Ok(lease)) => {
                self.write_succeeded(kind, sent_at, lease, write_new_term, now)?;
            }
            Ok(Err(err)) => {
                if kind == WriteKind::Renew {
                    self.metrics.renew_failures.inc();
                }
                self.check_denied(&err)?;
                let stale = matches!(&err, kube::Error::Api(s) if s.code == 409 || s.code == 404);
                debug!(?kind, error = %err, stale, "write failed");
                let failure = if stale {
                    Failure::Stale
                } else {
                    Failure::Transient
                };
                self.machine.write_failed(failure, now);
            }
            Err(_) => {
                if kind == WriteKind::Renew {
                    self.metrics.renew_failures.inc();
                }
                debug!(?kind, ?limit, "write timed out");
                self.machine.write_failed(Failure::Transient, now);
            }
        }
        Ok(())
    }

    /// Awaits `request`; our term may end while it is in flight: say so on
    /// time.
    async fn during_term<F: Future>(
        &mut self,
        request: F,
        sent_at: Instant,
    ) -> Result<F::Output, RunError> {
        let mut request = std::pin::pin!(request);
        loop {
            let deadline = self.machine.lead_deadline();
            tokio::select! {
                r = &mut request => break Ok(r),
                () = sleep_until(deadline.unwrap_or(sent_at)), if deadline.is_some() => {
                    let now = Instant::now();
                    if let Some(ev) = self.machine.expire(now) {
                        self.emit(ev)?;
                        self.publish();
                    }
                }
            }
        }
    }

    /// Takes in the Lease a write returned, and notes a skipped duplicate
    /// scheduled run when the write began our term.
    fn write_succeeded(
        &mut self,
        kind: WriteKind,
        sent_at: Instant,
        lease: Lease,
        new_term: bool,
        now: Instant,
    ) -> Result<(), RunError> {
        let Some(rec) = Record::from_lease(&lease) else {
            self.machine.write_failed(Failure::Stale, now);
            return Ok(());
        };
        if kind == WriteKind::Renew {
            self.metrics
                .renew_latency
                .set((now - sent_at).as_secs_f64());
        }
        self.last_lease = Some(lease);
        if let Some(ev) = self.machine.write_ok(kind, sent_at, rec, now) {
            self.emit(ev)?;
        }
        if new_term
            && self.machine.leading(now)
            && let Some(job) = self.pending_duplicate.take()
        {
            {
                warn!(
                    job = %job,
                    "this scheduled time already ran in the pool (scheduledRuns: once); \
                     the command is skipped"
                );
                self.duplicate_of = Some(job);
            }
        }
        Ok(())
    }

    /// Shutdown: stop leading first, then clear our name by CAS.
    async fn release(&mut self, limit: Duration) {
        let now = Instant::now();
        let term_until = self.machine.lead_deadline();
        if let Some(ev) = self.machine.step_down(now, EndReason::Shutdown)
            && let Err(err) = self.emit(ev)
        {
            warn!("{err}");
        }
        self.publish();
        let deadline = now + limit;
        if term_until.is_some() {
            let stop = self.stop_limit(term_until, now).min(deadline);
            self.apps_stopped(stop).await;
            let expiry = self.expiry(term_until, now);
            if !self.writes_answered(expiry.min(deadline)).await && Instant::now() < expiry {
                warn!(
                    ?limit,
                    "the app's writes were still in flight at the release deadline; the Lease is \
                     left to expire, so no successor writes before them"
                );
                return;
            }
        }
        let mut attempts = 0;
        while Instant::now() < deadline && attempts < 5 {
            attempts += 1;
            let Some(Action::Replace {
                kind,
                base_resource_version,
                write,
            }) = self.machine.release_action()
            else {
                return;
            };
            let body = self.lease_body(kind, Some(&base_resource_version), &write);
            let remaining = deadline.saturating_duration_since(Instant::now());
            match timeout(
                remaining,
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &body),
            )
            .await
            {
                Ok(Ok(lease)) => {
                    info!("released the Lease");
                    if let Some(rec) = Record::from_lease(&lease) {
                        self.machine
                            .observe(Observation::Present(rec), Instant::now());
                    }
                    self.publish();
                    return;
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                    // Changed meanwhile (e.g. by the controller): look again;
                    // if it still names us, release that version.
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match timeout(remaining, self.api.get_opt(&self.cfg.name)).await {
                        Ok(Ok(Some(lease))) => {
                            self.observe_lease(lease, Instant::now());
                        }
                        Ok(Ok(None)) => return,
                        _ => {}
                    }
                }
                Ok(Err(err)) => {
                    warn!(error = %err, "releasing the Lease failed");
                    sleep(Duration::from_millis(100)).await;
                }
                Err(_) => break,
            }
        }
        warn!(
            ?limit,
            "could not release the Lease in time; the others take over when it expires"
        );
    }

    fn emit(&mut self, ev: LeadEvent) -> Result<(), RunError> {
        let (line, leading) = match ev {
            LeadEvent::Started { token, at } => {
                info!(token, "leading");
                self.metrics.became_leader.inc();
                (
                    serde_json::json!({
                        "event": "leading",
                        "id": self.cfg.identity,
                        "token": token,
                        "mono_ns": clock::mono_ns(at) as u64,
                        "unix_ns": clock::unix_ns() as u64,
                    }),
                    true,
                )
            }
            LeadEvent::Ended { at, reason } => {
                info!(reason = reason.as_str(), "stopped leading");
                let late = Instant::now().saturating_duration_since(at);
                (
                    serde_json::json!({
                        "event": "stopped",
                        "id": self.cfg.identity,
                        "reason": reason.as_str(),
                        "mono_ns": clock::mono_ns(at) as u64,
                        "unix_ns": clock::unix_ns().saturating_sub(late.as_nanos()) as u64,
                    }),
                    false,
                )
            }
        };
        self.metrics.is_leader.set(i64::from(leading));
        self.publish();
        if let Some(log) = &mut self.log {
            log.write(&line)?;
        }
        Ok(())
    }

    fn publish(&self) {
        let now = Instant::now();
        let rec = self.machine.record();
        let status = LeaderStatus {
            holder: rec.and_then(|r| r.holder.clone()),
            leading: self.machine.leading(now),
            lead_until: self.machine.lead_deadline(),
            token: self
                .machine
                .token()
                .or_else(|| rec.filter(|r| r.holder.is_some()).map(|r| r.transitions)),
            since: rec.and_then(|r| r.acquired),
            observed: self.machine.observed(),
            lease_exists: rec.is_some(),
            connected: self.connected,
            timings: self.machine.timings(),
            duplicate_of: self.duplicate_of.clone(),
        };
        if let Some(token) = status.token {
            self.metrics.fencing_token.set(i64::from(token));
        }
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

fn is_gone(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 410)
}

/// Longest pause between failed reads or watches of the Lease.
const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Doubles the pause after a failure, up to [`WATCH_MAX_BACKOFF`].
fn grow_backoff(backoff: &mut Duration) {
    *backoff = (*backoff * 2).min(WATCH_MAX_BACKOFF);
}

/// Where the Lease watch task goes after a step.
enum WatchFlow {
    /// Watch again from the last seen version.
    Rewatch,
    /// Read the Lease again first (the version is too old, or an error).
    Relist,
    /// The election is gone: end the task.
    Stop,
}

/// Reads the Lease once, then watches it from that version; re-watches from
/// the last seen version when a watch ends, and reads again only when the
/// version is too old (410). No polling: an idle candidate has one open
/// request. GET + WATCH with a `metadata.name` field selector is all it
/// needs, so RBAC can be limited to that one Lease (resourceNames).
async fn watch_lease(api: Api<Lease>, name: String, tx: mpsc::Sender<WatchMsg>) {
    let fields = format!("metadata.name={name}");
    let mut backoff = Duration::from_millis(100);
    loop {
        let resource_version = match list_lease(&api, &name, &tx, &mut backoff).await {
            Ok(resource_version) => resource_version,
            Err(WatchFlow::Stop) => return,
            Err(WatchFlow::Relist | WatchFlow::Rewatch) => continue,
        };
        match watch_from(&api, &fields, resource_version, &tx, &mut backoff).await {
            WatchFlow::Stop => return,
            WatchFlow::Relist | WatchFlow::Rewatch => {}
        }
    }
}

/// Reads the Lease and reports it; returns the version to watch from (empty
/// when missing), or `Err` with what to do instead.
async fn list_lease(
    api: &Api<Lease>,
    name: &str,
    tx: &mpsc::Sender<WatchMsg>,
    backoff: &mut Duration,
) -> Result<String, WatchFlow> {
    let read = timeout(Duration::from_secs(5), api.get_opt(name)).await;
    let lease = match read {
        Ok(Ok(lease)) => lease,
        other => {
            if let Ok(Err(err)) = &other {
                debug!(error = %err, "reading the Lease failed");
            }
            if tx.send(WatchMsg::Connected(false)).await.is_err() {
                return Err(WatchFlow::Stop);
            }
            sleep(*backoff).await;
            grow_backoff(backoff);
            return Err(WatchFlow::Relist);
        }
    };
    // Missing: watch from "now" (an empty version); a Lease created in
    // between arrives as a synthetic ADDED event.
    let resource_version = lease
        .as_ref()
        .and_then(|l| l.metadata.resource_version.clone())
        .unwrap_or_default();
    let listed_rv = lease
        .as_ref()
        .and_then(|l| l.metadata.resource_version.clone());
    if tx
        .send(WatchMsg::Listed {
            lease,
            resource_version: listed_rv,
        })
        .await
        .is_err()
    {
        return Err(WatchFlow::Stop);
    }
    Ok(resource_version)
}

/// Watches the Lease from `resource_version`, re-watching from the last
/// seen version whenever a watch ends; returns only to re-read or stop.
async fn watch_from(
    api: &Api<Lease>,
    fields: &str,
    mut resource_version: String,
    tx: &mpsc::Sender<WatchMsg>,
    backoff: &mut Duration,
) -> WatchFlow {
    loop {
        let params = WatchParams::default().fields(fields).timeout(290);
        let stream = match timeout(
            Duration::from_secs(5),
            api.watch(&params, &resource_version),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                let _ = tx.send(WatchMsg::Connected(false)).await;
                if is_gone(&err) {
                    return WatchFlow::Relist;
                }
                debug!(error = %err, "watching the Lease failed");
                sleep(*backoff).await;
                grow_backoff(backoff);
                continue;
            }
            Err(_) => {
                let _ = tx.send(WatchMsg::Connected(false)).await;
                continue;
            }
        };
        if tx.send(WatchMsg::Connected(true)).await.is_err() {
            return WatchFlow::Stop;
        }
        *backoff = Duration::from_millis(100);
        let stream = std::pin::pin!(stream.boxed());
        match forward_events(stream, tx, &mut resource_version, backoff).await {
            WatchFlow::Rewatch => {}
            flow @ (WatchFlow::Relist | WatchFlow::Stop) => return flow,
        }
    }
}

/// Passes one watch's events on, tracking the last seen version, until the
/// watch ends (`Rewatch`), fails for good (`Relist`) or nobody listens.
async fn forward_events<S>(
    mut stream: S,
    tx: &mpsc::Sender<WatchMsg>,
    resource_version: &mut String,
    backoff: &mut Duration,
) -> WatchFlow
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Lease>>> + Unpin,
{
    loop {
        match stream.try_next().await {
            Ok(Some(WatchEvent::Added(lease) | WatchEvent::Modified(lease))) => {
                if let Some(rv) = &lease.metadata.resource_version {
                    resource_version.clone_from(rv);
                }
                if tx.send(WatchMsg::Applied(lease)).await.is_err() {
                    return WatchFlow::Stop;
                }
            }
            Ok(Some(WatchEvent::Deleted(lease))) => {
                if let Some(rv) = &lease.metadata.resource_version {
                    resource_version.clone_from(rv);
                }
                if tx.send(WatchMsg::Deleted(lease)).await.is_err() {
                    return WatchFlow::Stop;
                }
            }
            Ok(Some(WatchEvent::Bookmark(bookmark))) => {
                *resource_version = bookmark.metadata.resource_version;
            }
            Ok(Some(WatchEvent::Error(status))) => {
                let _ = tx.send(WatchMsg::Connected(false)).await;
                if status.code != 410 {
                    debug!(?status, "watch error");
                    sleep(*backoff).await;
                }
                return WatchFlow::Relist;
            }
            Ok(None) => return WatchFlow::Rewatch,
            Err(err) => {
                debug!(error = %err, "the Lease watch broke");
                let _ = tx.send(WatchMsg::Connected(false)).await;
                sleep(*backoff).await;
                grow_backoff(backoff);
                return WatchFlow::Rewatch;
            }
        }
    }
}

#[cfg(test)]
mod tests;
