use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::api::{LeaderServicePort, ServiceProtocol};
use crate::controller::decide::fixtures::pod;

fn owner() -> Owner {
    Owner {
        namespace: "ns".to_owned(),
        pool: "db".to_owned(),
        uid: "policy-uid".to_owned(),
    }
}

fn spec(target: Option<IntOrString>) -> LeaderService {
    LeaderService {
        name: "db-leader".to_owned(),
        ports: vec![LeaderServicePort {
            name: Some("http".to_owned()),
            port: 80,
            target_port: target,
            protocol: ServiceProtocol::Tcp,
        }],
    }
}

fn lease(holder: &str) -> LeaseView {
    LeaseView {
        holder: Some(format!("{holder}_id")),
        ..LeaseView::default()
    }
}

/// The plan's writes applied to the cache, as the next pass sees them.
fn applied(
    plan: &Plan,
    svc: Option<Service>,
    slice: Option<EndpointSlice>,
) -> (Option<Service>, Option<EndpointSlice>) {
    let svc = match &plan.service {
        Write::Create(s) | Write::Apply(s) => Some(s.clone()),
        Write::Keep => svc,
        Write::Recreate(s) => Some(s.clone()),
    };
    let slice = match &plan.slice {
        Write::Create(s) | Write::Apply(s) => Some(s.clone()),
        Write::Keep => slice,
        Write::Recreate(s) => Some(s.clone()),
    };
    (svc, slice)
}

fn endpoint_names(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.clone()))
        .collect()
}

#[test]
fn a_new_pool_creates_the_service_and_a_slice_naming_only_the_leader() {
    let pods = [pod("a"), pod("b")];
    let leader = target(&lease("a"), &pods, &|_| true, None);
    let plan = plan(&owner(), &spec(None), leader, None, None);
    let Write::Create(svc) = &plan.service else {
        panic!("{plan:?}")
    };
    let svc_spec = svc.spec.as_ref().expect("spec");
    assert!(
        svc_spec.selector.is_none(),
        "no selector: zen-lead keeps the endpoints"
    );
    assert_eq!(
        svc_spec.ports.as_ref().expect("ports")[0].target_port,
        Some(IntOrString::Int(80))
    );
    let Write::Create(slice) = &plan.slice else {
        panic!("{plan:?}")
    };
    assert_eq!(endpoint_names(slice), ["a"]);
    let labels = slice.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[SERVICE_NAME_LABEL], "db-leader");
    assert_eq!(labels[MANAGED_BY_LABEL], "zen-lead.io");
    assert_eq!(slice.metadata.name.as_deref(), Some("db-leader-zen-lead"));
    assert_eq!(plan.problem, None);
}

#[test]
fn a_switch_is_one_write_that_replaces_one_address_with_the_other() {
    let mut pods = [pod("a"), pod("b")];
    pods[1].ip = Some("198.18.0.11".to_owned());
    let first = plan(
        &owner(),
        &spec(None),
        target(&lease("a"), &pods, &|_| true, None),
        None,
        None,
    );
    let (svc, slice) = applied(&first, None, None);
    // Steady: nothing to write.
    let again = plan(
        &owner(),
        &spec(None),
        target(&lease("a"), &pods, &|_| true, None),
        svc.as_ref(),
        slice.as_ref(),
    );
    assert_eq!((&again.service, &again.slice), (&Write::Keep, &Write::Keep));
    // b takes over: the slice is rewritten to name b alone.
    let switch = plan(
        &owner(),
        &spec(None),
        target(&lease("b"), &pods, &|_| true, None),
        svc.as_ref(),
        slice.as_ref(),
    );
    assert_eq!(switch.service, Write::Keep);
    let Write::Apply(next) = &switch.slice else {
        panic!("{switch:?}")
    };
    assert_eq!(endpoint_names(next), ["b"]);
    assert_eq!(next.endpoints[0].addresses, ["198.18.0.11"]);
}

#[test]
fn the_slice_has_no_endpoint_without_a_leader_or_with_an_expired_lease() {
    let pods = [pod("a")];
    let mut expired = lease("a");
    expired.expired = true;
    for (what, lv) in [
        ("nobody holds", LeaseView::default()),
        ("expired", expired),
        ("holder gone", lease("zz")),
    ] {
        let p = plan(
            &owner(),
            &spec(None),
            target(&lv, &pods, &|_| true, None),
            None,
            None,
        );
        let Write::Create(slice) = &p.slice else {
            panic!("{what}: {p:?}")
        };
        assert!(slice.endpoints.is_empty(), "{what}");
    }
}

#[test]
fn a_terminating_holder_stays_routed_through_its_hand_off_so_the_switch_is_one_write() {
    let mut pods = [pod("a"), pod("b")];
    pods[0].terminating = true;
    let o = owner();
    let routed = target(&lease("a"), &pods, &|_| true, None).expect("still the holder");
    let (slice, _) = desired_slice(&o, &spec(None), Some(routed), "IPv4");
    let c = slice.endpoints[0].conditions.clone().expect("conditions");
    // Unchanged by the termination: no slice write before the switch.
    assert_eq!(
        (c.ready, c.serving, c.terminating),
        (Some(true), Some(true), Some(false))
    );
    let svc = desired_service(&o, &spec(None));
    let (before, _) = desired_slice(&o, &spec(None), Some(&pod("a")), "IPv4");
    let p = plan(&o, &spec(None), Some(routed), Some(&svc), Some(&before));
    assert_eq!(p.slice, Write::Keep, "{p:?}");
    // Released: nobody holds the Lease for a moment; the terminating pod the
    // slice names stays until the successor holds it.
    let released = LeaseView::default();
    assert_eq!(
        target(&released, &pods, &|_| true, routed_pod(&before)).map(|p| p.name.as_str()),
        Some("a")
    );
    assert_eq!(
        target(&lease("b"), &pods, &|_| true, routed_pod(&before)).map(|p| p.name.as_str()),
        Some("b")
    );
    // A live pod that released (an app-failure hand-off) is not kept: it is
    // a follower now.
    pods[0].terminating = false;
    assert!(target(&released, &pods, &|_| true, routed_pod(&before)).is_none());
    pods[0].terminating = true;
    // A holder on a NotReady node, or whose pod finished, is not routed to.
    assert!(target(&lease("a"), &pods, &|_| false, None).is_none());
    pods[0].finished = true;
    assert!(target(&lease("a"), &pods, &|_| true, None).is_none());
}

#[test]
fn a_leader_pod_that_is_not_ready_is_named_but_not_ready() {
    let mut pods = [pod("a")];
    pods[0].ready = false;
    let (slice, _) = desired_slice(&owner(), &spec(None), Some(&pods[0]), "IPv4");
    let c = slice.endpoints[0].conditions.clone().expect("conditions");
    assert_eq!((c.ready, c.serving), (Some(false), Some(false)));
}

#[test]
fn a_named_target_port_resolves_on_the_leader_or_is_reported() {
    let mut pods = [pod("a")];
    let named = spec(Some(IntOrString::String("web".to_owned())));
    let p = plan(&owner(), &named, Some(&pods[0]), None, None);
    assert_eq!(
        p.problem,
        Some(Problem::TargetPortNotFound {
            pod: "a".to_owned(),
            names: vec!["web".to_owned()]
        })
    );
    let Write::Create(slice) = &p.slice else {
        panic!("{p:?}")
    };
    assert!(slice.ports.as_ref().expect("ports").is_empty());
    pods[0].ports = vec![PodPort {
        name: Some("web".to_owned()),
        port: 8080,
    }];
    let p = plan(&owner(), &named, Some(&pods[0]), None, None);
    assert_eq!(p.problem, None);
    let Write::Create(slice) = &p.slice else {
        panic!("{p:?}")
    };
    assert_eq!(slice.ports.as_ref().expect("ports")[0].port, Some(8080));
}

#[test]
fn someone_elses_service_or_slice_is_never_written() {
    let pods = [pod("a")];
    let o = owner();
    let ours = desired_service(&o, &spec(None));
    let mut foreign = ours.clone();
    foreign.metadata.owner_references = None;
    let mut other_policy = ours.clone();
    if let Some(refs) = other_policy.metadata.owner_references.as_mut() {
        refs[0].uid = "another".to_owned();
    }
    for (what, svc) in [("unowned", &foreign), ("another policy's", &other_policy)] {
        let p = plan(&o, &spec(None), Some(&pods[0]), Some(svc), None);
        assert_eq!(
            (&p.service, &p.slice),
            (&Write::Keep, &Write::Keep),
            "{what}"
        );
        assert!(
            matches!(
                p.problem,
                Some(Problem::NotManaged {
                    kind: "Service",
                    ..
                })
            ),
            "{what}: {p:?}"
        );
    }
    let (mut slice, _) = desired_slice(&o, &spec(None), Some(&pods[0]), "IPv4");
    slice.metadata.owner_references = None;
    let p = plan(&o, &spec(None), Some(&pods[0]), Some(&ours), Some(&slice));
    assert!(matches!(
        p.problem,
        Some(Problem::NotManaged {
            kind: "EndpointSlice",
            ..
        })
    ));
    let (ok, reason, message) = condition("ns", &spec(None), None, p.problem.as_ref(), None);
    assert!(!ok);
    assert_eq!(reason, reasons::SERVICE_NOT_MANAGED);
    assert!(
        message.contains("EndpointSlice ns/db-leader-zen-lead"),
        "{message}"
    );
}

#[test]
fn an_edited_service_is_put_back_and_a_changed_address_family_recreates_the_slice() {
    let pods = [pod("a")];
    let o = owner();
    let mut svc = desired_service(&o, &spec(None));
    if let Some(s) = svc.spec.as_mut() {
        s.selector = Some([("app".to_owned(), "x".to_owned())].into());
    }
    let p = plan(&o, &spec(None), Some(&pods[0]), Some(&svc), None);
    assert!(matches!(p.service, Write::Apply(_)), "{p:?}");
    let (slice, _) = desired_slice(&o, &spec(None), Some(&pods[0]), "IPv6");
    let p = plan(
        &o,
        &spec(None),
        Some(&pods[0]),
        Some(&desired_service(&o, &spec(None))),
        Some(&slice),
    );
    assert!(
        matches!(&p.slice, Write::Recreate(s) if s.address_type == "IPv4"),
        "{p:?}"
    );
}

#[test]
fn stale_objects_are_ours_under_another_name() {
    let o = owner();
    let old = desired_service(
        &o,
        &LeaderService {
            name: "old".to_owned(),
            ..spec(None)
        },
    );
    let current = desired_service(&o, &spec(None));
    let mut foreign = old.clone();
    foreign.metadata.name = Some("foreign".to_owned());
    foreign.metadata.owner_references = None;
    let (old_slice, _) = desired_slice(
        &o,
        &LeaderService {
            name: "old".to_owned(),
            ..spec(None)
        },
        None,
        "IPv4",
    );
    let metas = [&old.metadata, &current.metadata, &foreign.metadata];
    assert_eq!(
        stale(
            &o,
            Some(&spec(None)),
            metas.into_iter(),
            [&old_slice.metadata].into_iter()
        ),
        [
            ("Service", "old".to_owned()),
            ("EndpointSlice", "old-zen-lead".to_owned())
        ]
    );
    // The field removed: everything of ours goes.
    assert_eq!(
        stale(&o, None, metas.into_iter(), std::iter::empty()).len(),
        2
    );
}

#[test]
fn the_condition_says_where_traffic_goes() {
    let s = spec(None);
    let (ok, reason, _) = condition("ns", &s, Some("a"), None, None);
    assert!(ok);
    assert_eq!(reason, reasons::ROUTING_TO_LEADER);
    let (ok, reason, _) = condition("ns", &s, None, None, None);
    assert!(ok);
    assert_eq!(reason, reasons::NO_LEADER_TO_ROUTE);
    let (ok, reason, message) = condition("ns", &s, Some("a"), None, Some("forbidden"));
    assert!(!ok);
    assert_eq!(reason, reasons::SERVICE_ERROR);
    assert!(message.contains("forbidden"), "{message}");
}

#[test]
fn a_selector_on_our_service_is_dropped_whatever_else_matches() {
    let o = owner();
    let mut svc = desired_service(&o, &spec(None));
    let p = plan(&o, &spec(None), None, Some(&svc), None);
    assert!(!p.drop_selector, "no selector: nothing to drop");
    if let Some(s) = svc.spec.as_mut() {
        s.selector = Some([("app".to_owned(), "x".to_owned())].into());
    }
    // Ports as wanted: the selector alone must still go.
    let p = plan(&o, &spec(None), None, Some(&svc), None);
    assert!(p.drop_selector, "{p:?}");
    // Not ours: untouched.
    svc.metadata.owner_references = None;
    let p = plan(&o, &spec(None), None, Some(&svc), None);
    assert!(!p.drop_selector, "{p:?}");
}

#[test]
fn slices_that_claim_the_service_and_are_not_ours_are_foreign() {
    let o = owner();
    let s = spec(None);
    let (ours, _) = desired_slice(&o, &s, None, "IPv4");
    let claim = |name: &str, service: &str| ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())].into()),
        ..ObjectMeta::default()
    };
    // Even one that copies our labels but not our owner.
    let mut copied = ours.metadata.clone();
    copied.name = Some("db-leader-copy".to_owned());
    copied.owner_references = None;
    let metas = [
        ours.metadata.clone(),
        claim("db-leader-zz", "db-leader"),
        claim("db-leader-abc12", "db-leader"),
        claim("other-x", "other"),
        copied,
    ];
    assert_eq!(
        foreign_slices(&o, &s, metas.iter()),
        ["db-leader-abc12", "db-leader-copy", "db-leader-zz"]
    );
    assert!(foreign_slices(&o, &s, [&ours.metadata]).is_empty());
    let problem = Problem::ForeignSlices {
        names: vec!["db-leader-abc12".to_owned()],
    };
    let (ok, reason, message) = condition("ns", &s, Some("a"), Some(&problem), None);
    assert!(!ok);
    assert_eq!(reason, reasons::FOREIGN_ENDPOINT_SLICE);
    assert!(
        message.contains("EndpointSlice db-leader-abc12 in ns claims Service ns/db-leader"),
        "{message}"
    );
}
