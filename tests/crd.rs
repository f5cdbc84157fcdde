//! The LeaderPolicy CRD against the real local API server (`make cluster-up`):
//! schema defaults, schema and CEL rejections, the status subresource and
//! kubectl's printer columns. Fails, never skips, without a cluster.

mod common;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use zen_lead::api::{CRD_PATH, FollowerMode, LeaderPolicy, LeaderPolicySpec, Phase};

/// The CRD exactly as committed in the chart (the drift test ties it to the
/// Rust types).
fn committed_crd() -> CustomResourceDefinition {
    let path = common::repo_root().join(CRD_PATH);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{} is not a CRD: {e}", path.display()))
}

async fn setup() -> Client {
    let client = common::client().await;
    common::apply_crd(&client, &committed_crd()).await;
    client
}

/// Untyped access, so a test sends exactly the fields it means to send (the
/// typed spec would fill every default client-side and hide the server's).
fn raw_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<LeaderPolicy>(&()))
}

fn policy(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "coordination.kube-zen.io/v1alpha1",
        "kind": "LeaderPolicy",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("valid DynamicObject")
}

/// Creates `obj` and returns the API server's rejection message; fails the
/// test if the object is accepted.
async fn rejection(api: &Api<DynamicObject>, obj: &DynamicObject) -> String {
    match api.create(&PostParams::default(), obj).await {
        Ok(created) => panic!(
            "expected the API server to reject {:?}, but it was accepted: {:?}",
            obj.data, created.data
        ),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid, got {status:?}");
            status.message.clone()
        }
        Err(other) => panic!("request failed for another reason: {other}"),
    }
}

#[tokio::test]
async fn seed_example_is_accepted_and_defaults_are_filled() {
    let client = setup().await;
    common::with_namespace(&client, "crd-defaults", |client, ns| async move {
        let path = common::repo_root().join("examples/basic/leaderpolicy.yaml");
        let text = std::fs::read_to_string(&path).expect("read example");
        let example: DynamicObject = serde_saphyr::from_str(&text).expect("example is YAML");
        assert!(
            example.data["spec"].get("renewDeadlineSeconds").is_none(),
            "the example must leave fields out for this test to mean anything"
        );

        let api = raw_api(&client, &ns);
        let created = api
            .create(&PostParams::default(), &example)
            .await
            .unwrap_or_else(|e| panic!("the seed example was rejected: {e}"));
        let spec = &created.data["spec"];
        assert_eq!(spec["leaseDurationSeconds"], 15);
        // Not defaulted by the server: unset, they follow the lease duration.
        assert!(spec.get("renewDeadlineSeconds").is_none(), "{spec}");
        assert!(spec.get("retryPeriodSeconds").is_none(), "{spec}");
        assert_eq!(spec["identityStrategy"], "pod");
        assert_eq!(spec["followerMode"], "standby");
        assert_eq!(spec["activation"], "auto", "server default");

        // Typed reads agree.
        let typed: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        let got = typed.get("my-controller-pool").await.expect("get typed");
        assert_eq!(got.spec, LeaderPolicySpec::default());

        // An empty spec is all defaults.
        let empty = api
            .create(&PostParams::default(), &policy("all-defaults", json!({})))
            .await
            .expect("empty spec accepted");
        assert_eq!(empty.data["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(empty.data["spec"]["followerMode"], "standby");
    })
    .await;
}

#[tokio::test]
async fn invalid_policies_are_rejected_with_the_field_named() {
    let client = setup().await;
    common::with_namespace(&client, "crd-reject", |client, ns| async move {
        let api = raw_api(&client, &ns);

        let msg = rejection(
            &api,
            &policy("too-short", json!({ "leaseDurationSeconds": 2 })),
        )
        .await;
        assert!(
            msg.contains("spec.leaseDurationSeconds") && msg.contains("greater than or equal to 5"),
            "leaseDurationSeconds: 2: {msg}"
        );

        let msg = rejection(
            &api,
            &policy("sideways", json!({ "followerMode": "sideways" })),
        )
        .await;
        assert!(
            msg.contains("spec.followerMode") && msg.contains("sideways"),
            "followerMode: sideways: {msg}"
        );
        assert!(
            msg.contains("standby") && msg.contains("scaleDown"),
            "lists the values: {msg}"
        );

        let msg = rejection(
            &api,
            &policy(
                "late-renew",
                json!({ "renewDeadlineSeconds": 20, "leaseDurationSeconds": 15 }),
            ),
        )
        .await;
        assert!(
            msg.contains("spec.renewDeadlineSeconds") && msg.contains("leaseDurationSeconds"),
            "renewDeadlineSeconds: 20 with leaseDurationSeconds: 15: {msg}"
        );

        // The retry rule, with the deadline derived (two thirds of 15 s).
        let msg = rejection(
            &api,
            &policy("slow-retry", json!({ "retryPeriodSeconds": 9 })),
        )
        .await;
        assert!(
            msg.contains("spec.retryPeriodSeconds") && msg.contains("renewDeadlineSeconds"),
            "retryPeriodSeconds: 9: {msg}"
        );
        // The exact boundary: 5 * 1.2 == 6 is rejected, just under it is fine.
        rejection(
            &api,
            &policy(
                "boundary",
                json!({ "retryPeriodSeconds": 5, "renewDeadlineSeconds": 6 }),
            ),
        )
        .await;
        api.create(
            &PostParams::default(),
            &policy(
                "boundary-ok",
                json!({ "retryPeriodSeconds": 4, "renewDeadlineSeconds": 6 }),
            ),
        )
        .await
        .expect("retry 4 s with deadline 6 s is valid");

        // Derived values obey the rules: a short lease alone is valid (the
        // seed's range is 5 to 300), and so is a retry period alone that fits
        // the derived deadline.
        for (name, spec) in [
            ("short-lease", json!({ "leaseDurationSeconds": 5 })),
            ("long-lease", json!({ "leaseDurationSeconds": 300 })),
            (
                "renew-only",
                json!({ "leaseDurationSeconds": 5, "renewDeadlineSeconds": 2 }),
            ),
            (
                "retry-only",
                json!({ "leaseDurationSeconds": 6, "retryPeriodSeconds": 3 }),
            ),
        ] {
            api.create(&PostParams::default(), &policy(name, spec.clone()))
                .await
                .unwrap_or_else(|e| panic!("{spec} was refused: {e}"));
        }
        // ...and explicit values are still checked against a derived one: a
        // 6 s lease derives a 4 s deadline, and 4 * 1.2 is not below it.
        let msg = rejection(
            &api,
            &policy(
                "retry-vs-derived",
                json!({ "leaseDurationSeconds": 6, "retryPeriodSeconds": 4 }),
            ),
        )
        .await;
        assert!(
            msg.contains("spec.retryPeriodSeconds") && msg.contains("leaseDurationSeconds"),
            "retryPeriodSeconds: 4 with leaseDurationSeconds: 6: {msg}"
        );
        let msg = rejection(
            &api,
            &policy("renew-one", json!({ "renewDeadlineSeconds": 1 })),
        )
        .await;
        assert!(
            msg.contains("spec.renewDeadlineSeconds"),
            "renewDeadlineSeconds: 1: {msg}"
        );

        let long_name = "p".repeat(64);
        let msg = rejection(&api, &policy(&long_name, json!({}))).await;
        assert!(msg.contains("metadata.name"), "64-character name: {msg}");
    })
    .await;
}

#[tokio::test]
async fn status_subresource_and_kubectl_columns() {
    let client = setup().await;
    common::with_namespace(&client, "crd-columns", |client, ns| async move {
        let api: Api<LeaderPolicy> = Api::namespaced(client.clone(), &ns);
        let mut lp = LeaderPolicy::new(
            "web",
            LeaderPolicySpec {
                follower_mode: FollowerMode::ScaleDown,
                paused: true,
                ..LeaderPolicySpec::default()
            },
        );
        // A status sent with the main resource is ignored: it has its own
        // subresource.
        lp.status = Some(serde_json::from_value(json!({"phase": "Electing"})).expect("status"));
        let created = api
            .create(&PostParams::default(), &lp)
            .await
            .expect("create");
        assert_eq!(
            created.status, None,
            "status must only be writable through /status"
        );

        let status = json!({
            "status": {
                "phase": "Stable",
                "currentHolder": {
                    "name": "web-7d9f-abcde",
                    "uid": "0d5c3c7e-1111-4222-8333-444455556666",
                    "identity": "web-7d9f-abcde_0d5c3c7e",
                    "since": "2025-01-02T03:04:05Z"
                },
                "candidates": 3,
                "leaseTransitions": 4,
                "lastTransitionTime": "2025-01-02T03:04:05Z",
                "observedGeneration": created.metadata.generation,
                "conditions": [{
                    "type": "LeaderElected",
                    "status": "True",
                    "reason": "LeaseHeld",
                    "message": "web-7d9f-abcde holds the lease",
                    "lastTransitionTime": "2025-01-02T03:04:05Z"
                }, {
                    // The PAUSED column shows this condition's status.
                    "type": "Paused",
                    "status": "True",
                    "reason": "Paused",
                    "message": "paused",
                    "lastTransitionTime": "2025-01-02T03:04:05Z"
                }]
            }
        });
        let patched = api
            .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch status");
        let written = patched.status.expect("status written");
        assert_eq!(written.phase, Some(Phase::Stable));
        assert_eq!(written.candidates, Some(3));
        assert_eq!(
            written.current_holder.and_then(|h| h.name).as_deref(),
            Some("web-7d9f-abcde")
        );

        let cache = std::env::temp_dir().join(format!("zen-lead-kubectl-cache-{ns}"));
        let table = common::eventually(
            "kubectl get lp to list the policy",
            Duration::from_secs(30),
            || {
                let cache = cache.clone();
                let ns = ns.clone();
                async move {
                    let out = common::kubectl(&["get", "lp", "-n", &ns], &cache);
                    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    if out.status.success() && stdout.contains("web") {
                        Ok(stdout)
                    } else {
                        Err(format!(
                            "exit {:?}, stdout {stdout:?}, stderr {:?}",
                            out.status.code(),
                            String::from_utf8_lossy(&out.stderr)
                        ))
                    }
                }
            },
        )
        .await;
        std::fs::remove_dir_all(&cache).ok();

        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        assert_eq!(
            header,
            [
                "NAME",
                "PHASE",
                "LEADER",
                "CANDIDATES",
                "MODE",
                "PAUSED",
                "AGE"
            ],
            "{table}"
        );
        let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
        assert_eq!(row.len(), 7, "{table}");
        assert_eq!(
            row[..6],
            ["web", "Stable", "web-7d9f-abcde", "3", "scaleDown", "True"],
            "{table}"
        );
        assert!(
            row[6].ends_with('s') || row[6].ends_with('m'),
            "AGE should be a short duration, got {:?}",
            row[6]
        );
    })
    .await;
}
