use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;

fn key(ns: &str, pool: &str) -> PoolKey {
    PoolKey::new(ns.to_owned(), pool.to_owned())
}

fn pod(name: &str, uid: &str, pool: Option<&str>, node: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.to_owned());
    p.metadata.namespace = Some("ns".to_owned());
    p.metadata.uid = Some(uid.to_owned());
    if let Some(pool) = pool {
        p.metadata.labels = Some(BTreeMap::from([(POOL_LABEL.to_owned(), pool.to_owned())]));
    }
    p.spec = Some(PodSpec {
        node_name: Some(node.to_owned()),
        ..PodSpec::default()
    });
    p
}

fn names(by_pool: &HashMap<PoolKey, BTreeSet<String>>, pool: &str) -> Vec<String> {
    by_pool
        .get(&key("ns", pool))
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn a_pod_moving_between_pools_queues_both_and_leaves_the_old_index() {
    let mut index = PodIndex::default();
    let mut by_pool = HashMap::new();
    let none = Vec::new;
    let a = pod("a", "u1", Some("web"), "n1");
    assert_eq!(
        index.event(&mut by_pool, &Event::Apply(a), none),
        vec![key("ns", "web")]
    );
    assert_eq!(names(&by_pool, "web"), vec!["a"]);
    // Relabelled to another pool: both queued, the old set loses it.
    let moved = pod("a", "u1", Some("api"), "n1");
    assert_eq!(
        index.event(&mut by_pool, &Event::Apply(moved.clone()), none),
        vec![key("ns", "web"), key("ns", "api")]
    );
    assert!(names(&by_pool, "web").is_empty());
    assert_eq!(names(&by_pool, "api"), vec!["a"]);
    // Deleted: its pool queued, the index forgets it.
    assert_eq!(
        index.event(&mut by_pool, &Event::Delete(moved.clone()), none),
        vec![key("ns", "api")]
    );
    assert!(names(&by_pool, "api").is_empty());
    // A second delete (or one of a pod never seen) queues nothing.
    assert!(
        index
            .event(&mut by_pool, &Event::Delete(moved), none)
            .is_empty()
    );
}

#[test]
fn a_relist_rebuilds_the_pod_index_from_the_store_and_queues_every_pool() {
    let mut index = PodIndex::default();
    let mut by_pool = HashMap::new();
    let none = Vec::new;
    // Seen before the disconnect: a in web, b in api.
    index.event(
        &mut by_pool,
        &Event::Apply(pod("a", "u1", Some("web"), "n1")),
        none,
    );
    index.event(
        &mut by_pool,
        &Event::Apply(pod("b", "u2", Some("api"), "n1")),
        none,
    );
    // While disconnected, b was deleted and c joined db.
    let store = vec![
        Arc::new(pod("a", "u1", Some("web"), "n1")),
        Arc::new(pod("c", "u3", Some("db"), "n1")),
    ];
    let queued = index.event(&mut by_pool, &Event::InitDone, || store);
    assert_eq!(
        queued,
        vec![key("ns", "api"), key("ns", "db"), key("ns", "web")]
    );
    assert!(names(&by_pool, "api").is_empty());
    assert_eq!(names(&by_pool, "db"), vec!["c"]);
    assert!(index.event(&mut by_pool, &Event::Init, none).is_empty());
}

fn deployment(uid: &str, template_pool: Option<&str>, scaled_by: Option<&str>) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.name = Some("d".to_owned());
    d.metadata.namespace = Some("ns".to_owned());
    d.metadata.uid = Some(uid.to_owned());
    if let Some(pool) = scaled_by {
        d.metadata.annotations = Some(BTreeMap::from([(
            SCALED_BY_ANNOTATION.to_owned(),
            pool.to_owned(),
        )]));
    }
    let mut template = PodTemplateSpec::default();
    if let Some(pool) = template_pool {
        template.metadata = Some(ObjectMeta {
            annotations: Some(BTreeMap::from([(
                POOL_ANNOTATION.to_owned(),
                format!(" {pool} "),
            )])),
            ..ObjectMeta::default()
        });
    }
    d.spec = Some(DeploymentSpec {
        template,
        ..DeploymentSpec::default()
    });
    d
}

fn template(d: &Deployment) -> Option<&ObjectMeta> {
    d.spec.as_ref().and_then(|s| s.template.metadata.as_ref())
}

#[test]
fn workload_events_queue_their_pools_and_the_pools_they_left() {
    let mut index = WorkloadIndex::default();
    let cases: Vec<(&str, Event<Deployment>, Vec<PoolKey>)> = vec![
        (
            "joins web (trimmed)",
            Event::Apply(deployment("w1", Some("web"), None)),
            vec![key("ns", "web")],
        ),
        (
            "any change of a member queues it",
            Event::Apply(deployment("w1", Some("web"), None)),
            vec![key("ns", "web")],
        ),
        (
            "moves to api, still scaled by web",
            Event::Apply(deployment("w1", Some("api"), Some("web"))),
            vec![key("ns", "api"), key("ns", "web")],
        ),
        (
            "leaves every pool: both queued once",
            Event::Apply(deployment("w1", None, None)),
            vec![key("ns", "api"), key("ns", "web")],
        ),
        (
            "not a member: nothing",
            Event::Apply(deployment("w1", None, None)),
            vec![],
        ),
        (
            "another workload, deleted unseen: nothing",
            Event::Delete(deployment("w2", Some("web"), None)),
            vec![],
        ),
        ("list markers: nothing", Event::InitDone, vec![]),
    ];
    for (name, ev, want) in cases {
        assert_eq!(index.event(&ev, template), want, "{name}");
    }
    index.event(&Event::Apply(deployment("w3", Some("db"), None)), template);
    assert_eq!(
        index.event(&Event::Delete(deployment("w3", Some("db"), None)), template),
        vec![key("ns", "db")],
        "a deleted member queues its pool"
    );
}

fn node(name: &str, ready: Option<&str>) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.to_owned());
    n.status = ready.map(|status| NodeStatus {
        conditions: Some(vec![NodeCondition {
            type_: "Ready".to_owned(),
            status: status.to_owned(),
            ..NodeCondition::default()
        }]),
        ..NodeStatus::default()
    });
    n
}

#[test]
fn only_a_change_of_node_readiness_queues_the_pools_on_it() {
    let mut nodes = HashMap::new();
    let cases: Vec<(&str, Event<Node>, Option<&str>)> = vec![
        (
            "initial list: recorded, nothing queued",
            Event::InitApply(node("n1", Some("True"))),
            None,
        ),
        (
            "same readiness: nothing",
            Event::Apply(node("n1", Some("True"))),
            None,
        ),
        (
            "turns NotReady",
            Event::Apply(node("n1", Some("False"))),
            Some("n1"),
        ),
        (
            "Unknown is not ready either",
            Event::Apply(node("n1", Some("Unknown"))),
            None,
        ),
        ("ready again", Event::Apply(node("n1", None)), Some("n1")),
        (
            "deleted: not ready",
            Event::Delete(node("n1", Some("True"))),
            Some("n1"),
        ),
    ];
    for (name, ev, want) in cases {
        assert_eq!(node_change(&mut nodes, &ev).as_deref(), want, "{name}");
    }
    let pods = vec![
        Arc::new(pod("a", "u1", Some("web"), "n1")),
        Arc::new(pod("b", "u2", Some("api"), "n2")),
        Arc::new(pod("c", "u3", Some("web"), "n1")),
    ];
    assert_eq!(
        pools_on_node(&pods, "n1"),
        BTreeSet::from([key("ns", "web")])
    );
}

fn meta(name: &str, ns: &str, pool: Option<&str>) -> PartialObjectMeta<Pod> {
    let mut m = PartialObjectMeta::<Pod>::default();
    m.metadata.name = Some(name.to_owned());
    m.metadata.namespace = Some(ns.to_owned());
    m.metadata.annotations =
        pool.map(|p| BTreeMap::from([(POOL_ANNOTATION.to_owned(), p.to_owned())]));
    m.metadata.owner_references = Some(vec![OwnerReference {
        kind: "ReplicaSet".to_owned(),
        name: "rs".to_owned(),
        controller: Some(true),
        ..OwnerReference::default()
    }]);
    m
}

#[test]
fn annotation_only_pods_are_indexed_moved_and_relisted() {
    let mut index = UnlabelledIndex::default();
    let mut map = UnlabelledMap::new();
    let owner = Some(("ReplicaSet".to_owned(), "rs".to_owned()));
    assert_eq!(
        index.event(&mut map, &Event::Apply(meta("a", "ns", Some("web")))),
        vec![key("ns", "web")]
    );
    assert_eq!(map[&key("ns", "web")]["a"].owner, owner);
    // The annotation now names api: dropped from web, added to api.
    assert_eq!(
        index.event(&mut map, &Event::Apply(meta("a", "ns", Some("api")))),
        vec![key("ns", "web"), key("ns", "api")]
    );
    assert!(map[&key("ns", "web")].is_empty());
    // Same name in another namespace is another pod.
    assert_eq!(
        index.event(&mut map, &Event::Delete(meta("a", "other", None))),
        vec![]
    );
    assert_eq!(
        index.event(&mut map, &Event::Delete(meta("a", "ns", None))),
        vec![key("ns", "api")]
    );
    // A relist swaps in what it listed; every pool before and after queued.
    index.event(&mut map, &Event::Apply(meta("b", "ns", Some("web"))));
    assert!(index.event(&mut map, &Event::Init).is_empty());
    assert!(
        index
            .event(&mut map, &Event::InitApply(meta("c", "ns", Some("db"))))
            .is_empty()
    );
    assert!(
        index
            .event(&mut map, &Event::InitApply(meta("x", "ns", None)))
            .is_empty(),
        "no annotation: not a pool pod"
    );
    let queued = index.event(&mut map, &Event::InitDone);
    assert_eq!(
        queued,
        vec![key("ns", "api"), key("ns", "db"), key("ns", "web")]
    );
    assert_eq!(map.len(), 1);
    assert!(map[&key("ns", "db")].contains_key("c"));
}

#[test]
fn policies_and_leases_name_their_pools() {
    let mut policy = crate::api::LeaderPolicy::new("web", Default::default());
    policy.metadata.namespace = Some("ns".to_owned());
    assert_eq!(policy_pool(&Event::Delete(policy)), Some(key("ns", "web")));
    let mut lease = k8s_openapi::api::coordination::v1::Lease::default();
    lease.metadata.namespace = Some("ns".to_owned());
    assert_eq!(
        lease_pool(&Event::Apply(lease.clone())),
        None,
        "unlabelled Lease"
    );
    lease.metadata.labels = Some(BTreeMap::from([(
        LEASE_POLICY_LABEL.to_owned(),
        "web".to_owned(),
    )]));
    assert_eq!(lease_pool(&Event::Apply(lease)), Some(key("ns", "web")));
    assert_eq!(
        lease_pool::<k8s_openapi::api::coordination::v1::Lease>(&Event::Init),
        None
    );
}

#[test]
fn the_workload_cache_keeps_only_pool_workloads() {
    let kept = |ev: Event<Deployment>| match pool_workload_event(ev, template) {
        None => "dropped",
        Some(Event::Apply(_)) => "applied",
        Some(Event::InitApply(_)) => "listed",
        Some(Event::Delete(_)) => "deleted",
        Some(Event::Init | Event::InitDone) => "marker",
    };
    let cases: Vec<(&str, Event<Deployment>, &str)> = vec![
        (
            "another tenant's workload in a list: never stored",
            Event::InitApply(deployment("w1", None, None)),
            "dropped",
        ),
        (
            "a pool member in a list",
            Event::InitApply(deployment("w1", Some("web"), None)),
            "listed",
        ),
        (
            "scaled by a pool, no longer a member: kept to restore it",
            Event::InitApply(deployment("w1", None, Some("web"))),
            "listed",
        ),
        (
            "a member changes",
            Event::Apply(deployment("w1", Some("web"), None)),
            "applied",
        ),
        (
            "an update that leaves every pool removes it from the cache",
            Event::Apply(deployment("w1", None, None)),
            "deleted",
        ),
        (
            "a deletion stays one",
            Event::Delete(deployment("w1", None, None)),
            "deleted",
        ),
        ("list markers pass", Event::Init, "marker"),
        ("list markers pass", Event::InitDone, "marker"),
    ];
    for (name, ev, want) in cases {
        assert_eq!(kept(ev), want, "{name}");
    }
}

#[test]
fn a_workload_relist_queues_its_pools_when_done_and_the_pools_of_members_it_lost() {
    let mut index = WorkloadIndex::default();
    for (uid, pool) in [("w1", "web"), ("w2", "api"), ("w3", "db")] {
        index.event(&Event::Apply(deployment(uid, Some(pool), None)), template);
    }
    let relist: Vec<Event<Deployment>> = vec![
        Event::Init,
        // w1 listed again in web; w2 listed but no longer a member, so the
        // cache filter dropped it; w3 deleted while the watch was down.
        Event::InitApply(deployment("w1", Some("web"), None)),
        Event::InitApply(deployment("w4", Some("new"), None)),
    ];
    for ev in &relist {
        assert!(
            index.event(ev, template).is_empty(),
            "nothing queued before the store holds the list: {ev:?}"
        );
    }
    assert_eq!(
        index.event(&Event::<Deployment>::InitDone, template),
        vec![
            key("ns", "api"),
            key("ns", "db"),
            key("ns", "new"),
            key("ns", "web")
        ]
    );
    assert!(
        index
            .event(&Event::Delete(deployment("w2", None, None)), template)
            .is_empty(),
        "w2 was forgotten at the relist"
    );
}

#[test]
fn a_change_of_a_nodes_zone_label_queues_the_pools_on_it() {
    let zoned = |zone: Option<&str>| {
        let mut n = node("n1", Some("True"));
        n.metadata.labels = zone.map(|z| BTreeMap::from([(ZONE_LABEL.to_owned(), z.to_owned())]));
        n
    };
    let mut zones = HashMap::new();
    // (what, event, node queued, zone recorded)
    type Case<'a> = (&'a str, Event<Node>, Option<&'a str>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "initial list: recorded, nothing queued",
            Event::InitApply(zoned(Some("a"))),
            None,
            Some("a"),
        ),
        (
            "same zone: nothing",
            Event::Apply(zoned(Some("a"))),
            None,
            Some("a"),
        ),
        (
            "moved",
            Event::Apply(zoned(Some("b"))),
            Some("n1"),
            Some("b"),
        ),
        ("label removed", Event::Apply(zoned(None)), Some("n1"), None),
        ("still none", Event::Apply(zoned(None)), None, None),
        (
            "labelled again",
            Event::Apply(zoned(Some("b"))),
            Some("n1"),
            Some("b"),
        ),
        (
            "deleted: no zone known",
            Event::Delete(zoned(Some("b"))),
            Some("n1"),
            None,
        ),
    ];
    for (name, ev, want, zone) in cases {
        assert_eq!(zone_change(&mut zones, &ev).as_deref(), want, "{name}");
        assert_eq!(zones.get("n1").map(String::as_str), zone, "{name}");
    }
}
