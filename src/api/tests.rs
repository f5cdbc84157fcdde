use serde_json::{Value, json};

use super::*;

fn spec_schema() -> Value {
    let crd = serde_json::to_value(crd()).expect("crd to json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

#[test]
fn empty_spec_gets_the_documented_defaults() {
    let spec: LeaderPolicySpec = serde_json::from_value(json!({})).expect("deserialize");
    assert_eq!(spec, LeaderPolicySpec::default());
    assert_eq!(spec.lease_duration_seconds, 15);
    assert_eq!(spec.renew_deadline_seconds, None, "derived, not stored");
    assert_eq!(spec.retry_period_seconds, None, "derived, not stored");
    let e = spec.effective_seconds();
    assert_eq!(
        (
            e.lease_duration_seconds,
            e.renew_deadline_seconds,
            e.retry_period_seconds
        ),
        (15, 10, 2),
        "client-go's defaults"
    );
    assert_eq!(spec.identity_strategy, IdentityStrategy::Pod);
    assert_eq!(spec.follower_mode, FollowerMode::Standby);
    assert_eq!(spec.activation, Activation::Auto);
}

#[test]
fn seed_example_parses_and_round_trips() {
    let yaml = include_str!("../../examples/basic/leaderpolicy.yaml");
    let policy: LeaderPolicy = serde_saphyr::from_str(yaml).expect("example parses");
    assert_eq!(policy.metadata.name.as_deref(), Some("my-controller-pool"));
    assert_eq!(policy.spec.lease_duration_seconds, 15);
    assert_eq!(policy.spec.follower_mode, FollowerMode::Standby);
    assert_eq!(policy.spec.renew_deadline_seconds, None, "derived");
    assert_eq!(policy.spec.effective_seconds().renew_deadline_seconds, 10);

    let json = serde_json::to_value(&policy).expect("serialize");
    assert_eq!(json["apiVersion"], "coordination.kube-zen.io/v1alpha1");
    assert_eq!(json["kind"], "LeaderPolicy");
    let back: LeaderPolicy = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, policy);
}

#[test]
fn wire_names_are_camel_case() {
    let spec = LeaderPolicySpec {
        follower_mode: FollowerMode::ScaleDown,
        activation: Activation::Start,
        identity_strategy: IdentityStrategy::Custom,
        scheduled_runs: ScheduledRuns::Once,
        renew_deadline_seconds: Some(10),
        retry_period_seconds: Some(2),
        preferred_zones: vec!["zone-a".to_owned()],
        ..LeaderPolicySpec::default()
    };
    assert_eq!(
        serde_json::to_value(&spec).expect("serialize"),
        json!({
            "leaseDurationSeconds": 15,
            "renewDeadlineSeconds": 10,
            "retryPeriodSeconds": 2,
            "identityStrategy": "custom",
            "followerMode": "scaleDown",
            "activation": "start",
            "scheduledRuns": "once",
            "preferredZones": ["zone-a"],
            "preferenceCooldownSeconds": 300,
        })
    );
    assert!(
        serde_json::from_value::<LeaderPolicySpec>(json!({"followerMode": "sideways"})).is_err()
    );
}

#[test]
fn status_round_trips_and_omits_empty_fields() {
    assert_eq!(
        serde_json::to_value(LeaderPolicyStatus::default()).expect("serialize"),
        json!({})
    );
    let status = json!({
        "phase": "Stable",
        "currentHolder": {
            "name": "web-0",
            "uid": "6f1c7c1e-0000-4000-8000-000000000000",
            "identity": "web-0_6f1c7c1e",
            "since": "2025-01-02T03:04:05Z"
        },
        "candidates": 3,
        "leaseTransitions": 7,
        "lastTransitionTime": "2025-01-02T03:04:05Z",
        "observedGeneration": 2,
        "conditions": [{
            "type": "LeaderElected",
            "status": "True",
            "reason": "LeaseHeld",
            "message": "web-0 holds the lease",
            "lastTransitionTime": "2025-01-02T03:04:05Z",
            "observedGeneration": 2
        }]
    });
    let parsed: LeaderPolicyStatus = serde_json::from_value(status.clone()).expect("deserialize");
    assert_eq!(parsed.phase, Some(Phase::Stable));
    assert_eq!(parsed.candidates, Some(3));
    assert_eq!(parsed.conditions[0].type_, keys::conditions::LEADER_ELECTED);
    assert_eq!(serde_json::to_value(&parsed).expect("serialize"), status);
}

#[test]
fn crd_identity() {
    let crd = crd();
    assert_eq!(crd.metadata.name.as_deref(), Some(CRD_NAME));
    let spec = &crd.spec;
    assert_eq!(spec.group, "coordination.kube-zen.io");
    assert_eq!(spec.scope, "Namespaced");
    assert_eq!(spec.names.kind, "LeaderPolicy");
    assert_eq!(spec.names.plural, "leaderpolicies");
    assert_eq!(
        spec.names.short_names.as_deref(),
        Some(&["lp".to_owned()][..])
    );
    assert_eq!(
        spec.names.categories.as_deref(),
        Some(&["zen-lead".to_owned()][..])
    );
    let version = &spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );
}

#[test]
fn printer_columns() {
    let crd = crd();
    let columns: Vec<(String, String)> = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .expect("printer columns")
        .iter()
        .map(|c| (c.name.to_uppercase(), c.json_path.clone()))
        .collect();
    let expected = [
        ("PHASE", ".status.phase"),
        ("LEADER", ".status.currentHolder.name"),
        ("CANDIDATES", ".status.candidates"),
        ("MODE", ".spec.followerMode"),
        ("PAUSED", ".status.conditions[?(@.type==\"Paused\")].status"),
        ("AGE", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(columns, expected);
}

#[test]
fn schema_has_defaults_bounds_and_real_enums() {
    let spec = spec_schema();
    let props = &spec["properties"];
    assert_eq!(props["leaseDurationSeconds"]["default"], 15);
    assert_eq!(props["leaseDurationSeconds"]["minimum"].as_f64(), Some(5.0));
    assert_eq!(
        props["leaseDurationSeconds"]["maximum"].as_f64(),
        Some(300.0)
    );
    // No schema defaults: unset values follow the lease duration, and a
    // stored default would freeze them.
    assert!(props["renewDeadlineSeconds"].get("default").is_none());
    assert_eq!(props["renewDeadlineSeconds"]["minimum"].as_f64(), Some(2.0));
    assert!(props["retryPeriodSeconds"].get("default").is_none());
    assert_eq!(props["retryPeriodSeconds"]["minimum"].as_f64(), Some(1.0));
    for (field, default, values) in [
        ("identityStrategy", "pod", json!(["pod", "custom"])),
        ("followerMode", "standby", json!(["standby", "scaleDown"])),
        (
            "activation",
            "auto",
            json!(["auto", "api", "start", "process"]),
        ),
        ("scheduledRuns", "each", json!(["each", "once"])),
    ] {
        assert_eq!(props[field]["default"], default, "{field}");
        assert_eq!(props[field]["type"], "string", "{field}");
        assert_eq!(props[field]["enum"], values, "{field}");
    }
}

#[test]
fn schema_has_the_cel_rules() {
    let rules = spec_schema()["x-kubernetes-validations"].clone();
    let rules = rules.as_array().expect("validations on spec");
    let by_path = |path: &str| {
        rules
            .iter()
            .find(|r| r["fieldPath"] == path)
            .unwrap_or_else(|| panic!("no rule with fieldPath {path}: {rules:?}"))
            .clone()
    };
    let renew = by_path(".renewDeadlineSeconds");
    assert_eq!(
        renew["rule"],
        "!has(self.renewDeadlineSeconds) || self.renewDeadlineSeconds < self.leaseDurationSeconds"
    );
    let msg = renew["message"].as_str().expect("message");
    assert!(msg.contains("renewDeadlineSeconds") && msg.contains("leaseDurationSeconds"));
    let retry = by_path(".retryPeriodSeconds");
    let msg = retry["message"].as_str().expect("message");
    assert!(msg.contains("retryPeriodSeconds") && msg.contains("renewDeadlineSeconds"));
    assert_eq!(retry["reason"], "FieldValueInvalid");
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let crd = serde_json::to_value(crd()).expect("crd to json");
    let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        ["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

#[test]
fn client_side_checks_mirror_the_server() {
    let ok = LeaderPolicySpec::default()
        .timings()
        .expect("defaults are valid");
    assert_eq!(ok.lease_duration().as_secs(), 15);

    let short = LeaderPolicySpec {
        lease_duration_seconds: 2,
        ..LeaderPolicySpec::default()
    };
    let err = short.timings().unwrap_err().to_string();
    assert!(err.contains("spec.leaseDurationSeconds"), "{err}");

    let late = LeaderPolicySpec {
        renew_deadline_seconds: Some(20),
        ..LeaderPolicySpec::default()
    };
    let err = late.timings().unwrap_err().to_string();
    assert!(
        err.contains("spec.renewDeadlineSeconds") && err.contains("spec.leaseDurationSeconds"),
        "{err}"
    );

    let slow = LeaderPolicySpec {
        retry_period_seconds: Some(9),
        ..LeaderPolicySpec::default()
    };
    let err = slow.timings().unwrap_err().to_string();
    assert!(err.contains("spec.retryPeriodSeconds"), "{err}");
}

#[test]
fn crd_yaml_is_a_single_document_with_a_header() {
    let yaml = crd_yaml().expect("yaml");
    assert!(yaml.starts_with("# Generated by `zen-lead crd`"));
    assert!(yaml.contains("make crd"));
    let parsed: Value = serde_saphyr::from_str(&yaml).expect("yaml parses back");
    assert_eq!(parsed, serde_json::to_value(crd()).expect("json"));
}

#[test]
fn names() {
    assert!(validate_pool_name("my-controller-pool").is_ok());
    assert!(validate_pool_name("a.b").is_ok());
    assert!(
        validate_pool_name(&"a".repeat(64))
            .unwrap_err()
            .contains("63")
    );
    assert!(validate_pool_name("My-Pool").is_err());
    assert!(validate_pool_name("").is_err());
    assert!(validate_pool_name("-x").is_err());
    assert!(validate_dns_label("zen-lead").is_ok());
    assert!(validate_dns_label("a.b").is_err());
    assert!(validate_dns_subdomain(&"a".repeat(254)).is_err());
}

/// Unset timings follow the lease duration (15:10:2, whole seconds), and the
/// result is valid for every lease duration the schema allows, whatever an
/// explicit renew deadline in range says, so the CEL rules (which repeat this
/// arithmetic) only ever refuse values the user wrote.
#[test]
fn derived_timings_are_proportional_and_always_valid() {
    let spec = |lease: i32, renew: Option<i32>| LeaderPolicySpec {
        lease_duration_seconds: lease,
        renew_deadline_seconds: renew,
        ..LeaderPolicySpec::default()
    };
    for (lease, renew, retry) in [(5, 3, 1), (15, 10, 2), (30, 20, 4), (300, 200, 40)] {
        let e = spec(lease, None).effective_seconds();
        assert_eq!(
            (e.renew_deadline_seconds, e.retry_period_seconds),
            (renew, retry),
            "lease {lease}"
        );
    }
    for lease in LEASE_DURATION_RANGE {
        spec(lease, None)
            .timings()
            .unwrap_or_else(|e| panic!("lease {lease}: {e}"));
        for renew in *RENEW_RANGE.start()..lease {
            spec(lease, Some(renew))
                .timings()
                .unwrap_or_else(|e| panic!("lease {lease}, renew {renew}: {e}"));
        }
    }
}
