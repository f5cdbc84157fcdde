//! The facts the webhook needs beyond the pod: the annotations of the pod's
//! owners and whether its LeaderPolicy exists.
//!
//! In a cluster both come from in-memory indexes fed by watches (metadata only
//! for workloads), so admitting a pod normally costs no API request. An owner
//! or policy the index has not seen yet (created a moment ago, the watch still
//! catching up) is read with one GET, bounded by [`FALLBACK_TIMEOUT`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::inject::PolicyState;
use super::membership::{OWNER_KINDS, OwnerMeta, controller_of};
use crate::api::keys::{CRONJOB_SCHEDULED_TIMESTAMP, JOIN_ANNOTATION, POOL_ANNOTATION};
use crate::api::{Activation, IdentityStrategy, LeaderPolicy};

/// Longest time one fallback GET may take; the API server gives the whole
/// webhook call at most `timeoutSeconds` (5 in our manifests).
pub const FALLBACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of a lookup.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading {kind} {namespace}/{name} failed: {source}")]
    Get {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("reading {kind} {namespace}/{name} took longer than {FALLBACK_TIMEOUT:?}")]
    Timeout {
        kind: String,
        namespace: String,
        name: String,
    },
}

/// Where the webhook's handler gets owner and policy facts from.
pub trait Lookup: Send + Sync + 'static {
    /// The owner `owner` of an object in `namespace`, if it (still) exists
    /// with that UID and is of a kind in [`OWNER_KINDS`].
    fn owner(
        &self,
        namespace: &str,
        owner: &OwnerReference,
    ) -> impl Future<Output = Result<Option<OwnerMeta>, LookupError>> + Send;

    /// Whether LeaderPolicy `name` exists in `namespace`, and its activation.
    fn policy(&self, namespace: &str, name: &str) -> impl Future<Output = PolicyState> + Send;
}

/// Owner metadata from an object's `ObjectMeta`.
pub fn owner_meta(kind: &str, meta: &ObjectMeta) -> OwnerMeta {
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    OwnerMeta {
        kind: kind.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        pool: annotation(POOL_ANNOTATION),
        join: annotation(JOIN_ANNOTATION),
        controller: controller_of(meta.owner_references.as_ref()).cloned(),
        scheduled_time: annotation(CRONJOB_SCHEDULED_TIMESTAMP),
    }
}

/// A fixed set of owners and policies: golden tests, the fuzz target and
/// the benchmark. Tests can also make it fail a read, or answer slowly.
#[derive(Debug, Clone, Default)]
pub struct StaticLookup {
    /// By `(namespace, uid)`.
    pub owners: HashMap<(String, String), OwnerMeta>,
    /// By `(namespace, name)`.
    pub policies: HashMap<(String, String), PolicyFacts>,
    /// Owners whose read fails, by `(namespace, uid)`: the API server's
    /// answer (HTTP code, message).
    pub owner_errors: HashMap<(String, String), (u16, String)>,
    /// LeaderPolicies whose read fails, by `(namespace, name)`: the reason.
    pub policy_errors: HashMap<(String, String), String>,
    /// How long every answer takes (a slow API server behind the index).
    pub delay: Option<Duration>,
}

/// What the webhook needs of a LeaderPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyFacts {
    pub activation: Activation,
    pub identity: IdentityStrategy,
}

impl PolicyFacts {
    fn of(policy: &LeaderPolicy) -> Self {
        Self {
            activation: policy.spec.activation,
            identity: policy.spec.identity_strategy,
        }
    }

    fn state(self) -> PolicyState {
        PolicyState::Found {
            activation: self.activation,
            identity: self.identity,
        }
    }
}

impl StaticLookup {
    pub fn with_policy(self, namespace: &str, name: &str, activation: Activation) -> Self {
        self.with_policy_facts(
            namespace,
            name,
            PolicyFacts {
                activation,
                identity: IdentityStrategy::Pod,
            },
        )
    }

    pub fn with_policy_facts(mut self, namespace: &str, name: &str, facts: PolicyFacts) -> Self {
        self.policies
            .insert((namespace.to_owned(), name.to_owned()), facts);
        self
    }

    pub fn with_owner(mut self, namespace: &str, owner: OwnerMeta) -> Self {
        self.owners
            .insert((namespace.to_owned(), owner.uid.clone()), owner);
        self
    }

    /// Reading the owner with `uid` fails: the API server answers `code`
    /// with `message` (as a fallback GET's failure reaches the webhook).
    pub fn with_owner_error(
        mut self,
        namespace: &str,
        uid: &str,
        code: u16,
        message: &str,
    ) -> Self {
        self.owner_errors.insert(
            (namespace.to_owned(), uid.to_owned()),
            (code, message.to_owned()),
        );
        self
    }

    /// Reading LeaderPolicy `name` fails with `reason`.
    pub fn with_policy_error(mut self, namespace: &str, name: &str, reason: &str) -> Self {
        self.policy_errors
            .insert((namespace.to_owned(), name.to_owned()), reason.to_owned());
        self
    }

    /// Every answer takes `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    async fn wait(&self) {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
    }
}

impl Lookup for StaticLookup {
    async fn owner(
        &self,
        namespace: &str,
        owner: &OwnerReference,
    ) -> Result<Option<OwnerMeta>, LookupError> {
        self.wait().await;
        let key = (namespace.to_owned(), owner.uid.clone());
        if let Some((code, message)) = self.owner_errors.get(&key) {
            let status = kube::core::Status::failure(message, "").with_code(*code);
            return Err(LookupError::Get {
                kind: owner.kind.clone(),
                namespace: namespace.to_owned(),
                name: owner.name.clone(),
                source: kube::Error::Api(Box::new(status)),
            });
        }
        Ok(self
            .owners
            .get(&(namespace.to_owned(), owner.uid.clone()))
            .filter(|o| o.kind == owner.kind && o.name == owner.name)
            .cloned())
    }

    async fn policy(&self, namespace: &str, name: &str) -> PolicyState {
        self.wait().await;
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(reason) = self.policy_errors.get(&key) {
            return PolicyState::Unknown {
                reason: reason.clone(),
            };
        }
        match self.policies.get(&key) {
            Some(facts) => facts.state(),
            None => PolicyState::Missing,
        }
    }
}

/// By (namespace, UID): an owner reference names an object of the pod's
/// own namespace, so an object of another namespace must never answer it
/// (a pod could otherwise borrow another namespace's workload annotations by
/// naming its UID).
type OwnerMap = HashMap<(String, String), Arc<OwnerMeta>>;

fn owner_key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.uid.clone().unwrap_or_default(),
    )
}

/// One watched kind's index.
#[derive(Default)]
struct KindIndex {
    objects: RwLock<OwnerMap>,
    synced: AtomicBool,
}

/// Watch-fed indexes of workload owners and LeaderPolicies, with GET
/// fallback on a miss.
pub struct ClusterLookup {
    client: Client,
    kinds: Vec<(&'static str, Arc<KindIndex>)>,
    policies: Arc<RwLock<HashMap<(String, String), PolicyFacts>>>,
    policies_synced: Arc<AtomicBool>,
    /// LeaderPolicies a GET found missing, and when: any pod may name any
    /// pool, and each admission must not cost the API server a GET.
    misses: Misses,
}

/// How long a LeaderPolicy a GET found missing is answered as missing
/// without asking again (the watch adds it as soon as it is created).
const MISS_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// At most this many remembered misses (then they are forgotten at once).
const MISS_CAP: usize = 4096;

#[derive(Default)]
struct Misses(std::sync::Mutex<HashMap<(String, String), tokio::time::Instant>>);

impl Misses {
    fn recent(&self, key: &(String, String)) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).is_some_and(|at| at.elapsed() < MISS_TTL)
    }

    fn record(&self, key: (String, String)) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MISS_CAP {
            map.retain(|_, at| at.elapsed() < MISS_TTL);
            if map.len() >= MISS_CAP {
                map.clear();
            }
        }
        map.insert(key, tokio::time::Instant::now());
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave a HashMap half-updated in
    // a way that matters here; keep serving.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClusterLookup {
    /// Starts the watches (tasks on the current runtime) and returns at once;
    /// until they have listed, lookups fall back to GETs.
    pub fn start(client: Client) -> Arc<Self> {
        let kinds: Vec<(&'static str, Arc<KindIndex>)> = OWNER_KINDS
            .iter()
            .map(|(_, kind)| (*kind, Arc::new(KindIndex::default())))
            .collect();
        let lookup = Arc::new(Self {
            client: client.clone(),
            kinds,
            policies: Arc::default(),
            policies_synced: Arc::default(),
            misses: Misses::default(),
        });
        for (kind, index) in &lookup.kinds {
            let index = index.clone();
            let client = client.clone();
            match *kind {
                "ReplicaSet" => spawn_owner_watch::<ReplicaSet>(client, kind, index),
                "StatefulSet" => spawn_owner_watch::<StatefulSet>(client, kind, index),
                "DaemonSet" => spawn_owner_watch::<DaemonSet>(client, kind, index),
                "Deployment" => spawn_owner_watch::<Deployment>(client, kind, index),
                "Job" => spawn_owner_watch::<Job>(client, kind, index),
                "CronJob" => spawn_owner_watch::<CronJob>(client, kind, index),
                _ => {}
            }
        }
        spawn_policy_watch(
            client,
            lookup.policies.clone(),
            lookup.policies_synced.clone(),
        );
        lookup
    }

    /// Whether every watch has completed its first list.
    pub fn synced(&self) -> bool {
        self.policies_synced.load(Ordering::Relaxed)
            && self
                .kinds
                .iter()
                .all(|(_, i)| i.synced.load(Ordering::Relaxed))
    }

    async fn fetch_owner(
        &self,
        namespace: &str,
        owner: &OwnerReference,
    ) -> Result<Option<OwnerMeta>, LookupError> {
        let c = self.client.clone();
        let (ns, name) = (namespace, owner.name.as_str());
        let fut = async {
            match owner.kind.as_str() {
                "ReplicaSet" => get_meta::<ReplicaSet>(c, ns, name).await,
                "StatefulSet" => get_meta::<StatefulSet>(c, ns, name).await,
                "DaemonSet" => get_meta::<DaemonSet>(c, ns, name).await,
                "Deployment" => get_meta::<Deployment>(c, ns, name).await,
                "Job" => get_meta::<Job>(c, ns, name).await,
                "CronJob" => get_meta::<CronJob>(c, ns, name).await,
                _ => Ok(None),
            }
        };
        let meta = tokio::time::timeout(FALLBACK_TIMEOUT, fut)
            .await
            .map_err(|_| LookupError::Timeout {
                kind: owner.kind.clone(),
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })?
            .map_err(|source| LookupError::Get {
                kind: owner.kind.clone(),
                namespace: ns.to_owned(),
                name: name.to_owned(),
                source,
            })?;
        Ok(meta
            .map(|m| owner_meta(&owner.kind, &m))
            // Same name, different incarnation: not our owner.
            .filter(|m| m.uid == owner.uid))
    }
}

async fn get_meta<K>(
    client: Client,
    ns: &str,
    name: &str,
) -> Result<Option<ObjectMeta>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client, ns);
    Ok(api.get_metadata_opt(name).await?.map(|m| m.metadata))
}

fn spawn_owner_watch<K>(client: Client, kind: &'static str, index: Arc<KindIndex>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let api: Api<PartialObjectMeta<K>> = Api::all(client);
        let mut stream = watcher::watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .boxed();
        let mut buffer: Option<OwnerMap> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(obj)) => {
                    let meta = owner_meta(kind, &obj.metadata);
                    write(&index.objects).insert(owner_key(&obj.metadata), Arc::new(meta));
                }
                Ok(Event::Delete(obj)) => {
                    write(&index.objects).remove(&owner_key(&obj.metadata));
                }
                Ok(Event::Init) => buffer = Some(OwnerMap::new()),
                Ok(Event::InitApply(obj)) => {
                    let meta = owner_meta(kind, &obj.metadata);
                    buffer
                        .get_or_insert_with(OwnerMap::new)
                        .insert(owner_key(&obj.metadata), Arc::new(meta));
                }
                Ok(Event::InitDone) => {
                    *write(&index.objects) = buffer.take().unwrap_or_default();
                    if !index.synced.swap(true, Ordering::Relaxed) {
                        tracing::debug!(kind, "owner index synced");
                    }
                }
                Err(err) => {
                    tracing::warn!(kind, error = %err, "watching owners failed; retrying (lookups fall back to GET)");
                }
            }
        }
    });
}

fn spawn_policy_watch(
    client: Client,
    policies: Arc<RwLock<HashMap<(String, String), PolicyFacts>>>,
    synced: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        let api: Api<LeaderPolicy> = Api::all(client);
        let mut stream = watcher::watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .boxed();
        let key = |p: &LeaderPolicy| {
            (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            )
        };
        let mut buffer: Option<HashMap<(String, String), PolicyFacts>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(p)) => {
                    write(&policies).insert(key(&p), PolicyFacts::of(&p));
                }
                Ok(Event::Delete(p)) => {
                    write(&policies).remove(&key(&p));
                }
                Ok(Event::Init) => buffer = Some(HashMap::new()),
                Ok(Event::InitApply(p)) => {
                    buffer
                        .get_or_insert_with(HashMap::new)
                        .insert(key(&p), PolicyFacts::of(&p));
                }
                Ok(Event::InitDone) => {
                    *write(&policies) = buffer.take().unwrap_or_default();
                    synced.store(true, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "watching LeaderPolicies failed; retrying (lookups fall back to GET)");
                }
            }
        }
    });
}

impl Lookup for ClusterLookup {
    async fn owner(
        &self,
        namespace: &str,
        owner: &OwnerReference,
    ) -> Result<Option<OwnerMeta>, LookupError> {
        let Some((_, index)) = self.kinds.iter().find(|(k, _)| *k == owner.kind) else {
            return Ok(None);
        };
        let key = (namespace.to_owned(), owner.uid.clone());
        if let Some(hit) = read(&index.objects).get(&key)
            && hit.name == owner.name
        {
            return Ok(Some(OwnerMeta::clone(hit)));
        }
        tracing::debug!(kind = %owner.kind, name = %owner.name, "owner not indexed yet; reading it");
        let fetched = self.fetch_owner(namespace, owner).await?;
        if let Some(meta) = &fetched {
            write(&index.objects).insert(key, Arc::new(meta.clone()));
        }
        Ok(fetched)
    }

    async fn policy(&self, namespace: &str, name: &str) -> PolicyState {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(facts) = read(&self.policies).get(&key) {
            return facts.state();
        }
        // Not indexed: created a moment ago, or really missing. Ask, unless
        // asked a moment ago.
        if self.misses.recent(&key) {
            return PolicyState::Missing;
        }
        let api: Api<LeaderPolicy> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(FALLBACK_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(Some(p))) => PolicyFacts::of(&p).state(),
            Ok(Ok(None)) => {
                self.misses.record(key);
                PolicyState::Missing
            }
            Ok(Err(err)) => PolicyState::Unknown {
                reason: err.to_string(),
            },
            Err(_) => PolicyState::Unknown {
                reason: format!("no answer within {FALLBACK_TIMEOUT:?}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_miss_is_remembered_for_its_ttl_and_the_memory_is_bounded() {
        let misses = Misses::default();
        let key = ("ns".to_owned(), "pool".to_owned());
        assert!(!misses.recent(&key), "nothing asked yet");
        misses.record(key.clone());
        assert!(misses.recent(&key), "asked a moment ago");
        tokio::time::advance(MISS_TTL).await;
        assert!(!misses.recent(&key), "asked longer ago than the TTL");
        for i in 0..MISS_CAP + 10 {
            misses.record(("ns".to_owned(), i.to_string()));
        }
        let len = misses.0.lock().unwrap_or_else(|e| e.into_inner()).len();
        assert!(len <= MISS_CAP, "{len} misses remembered");
    }
}
