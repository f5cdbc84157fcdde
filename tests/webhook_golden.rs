//! Golden tests of the webhook's injection: `tests/golden/webhook/<case>/`
//! holds `input.yaml` (the pod as the API server sends it at CREATE, the
//! owners and LeaderPolicies that exist, and reads that fail) and
//! `expected.yaml` (outcome, or a refusal's code and message;
//! warnings, the JSON patch, the pod after the patch, and what a second pass
//! over that pod does: nothing).
//!
//! `UPDATE_GOLDEN=1 cargo test --test webhook_golden` rewrites the expected
//! files; review the diff before committing it.

use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};
use zen_lead::api::{Activation, IdentityStrategy};
use zen_lead::webhook::InjectConfig;
use zen_lead::webhook::lookup::{PolicyFacts, StaticLookup, owner_meta};
use zen_lead::webhook::membership::OwnerMeta;
use zen_lead::webhook::review::{admit, decide};

#[derive(Deserialize)]
struct Input {
    namespace: String,
    pod: Value,
    #[serde(default)]
    owners: Vec<OwnerInput>,
    #[serde(default)]
    policies: Vec<PolicyInput>,
    /// Owners whose read fails: the API server's answer.
    #[serde(default)]
    owner_errors: Vec<OwnerErrorInput>,
    /// LeaderPolicies whose read fails.
    #[serde(default)]
    policy_errors: Vec<PolicyErrorInput>,
}

#[derive(Deserialize)]
struct OwnerErrorInput {
    uid: String,
    code: u16,
    message: String,
}

#[derive(Deserialize)]
struct PolicyErrorInput {
    name: String,
    reason: String,
}

#[derive(Deserialize)]
struct OwnerInput {
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyInput {
    name: String,
    activation: Activation,
    #[serde(default)]
    identity_strategy: IdentityStrategy,
}

fn config() -> InjectConfig {
    let mut c = InjectConfig::with_image("ghcr.io/kube-zen/zen-lead:golden");
    // Fixed so a version bump does not rewrite every golden file.
    c.version = "golden".to_owned();
    c
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/webhook");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("input.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn review_body(namespace: &str, pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
        }
    }))
    .expect("review json")
}

/// What came back through the full AdmissionReview path.
struct Answer {
    allowed: bool,
    /// A refusal's status code and message.
    code: Value,
    message: Option<String>,
    patch: Value,
    warnings: Vec<String>,
}

/// Sends `pod` through the full AdmissionReview path.
async fn through_review(namespace: &str, pod: &Value, lookup: &StaticLookup) -> Answer {
    let reply = admit(&review_body(namespace, pod), lookup, &config()).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let review: Value = serde_json::from_slice(&reply.body).expect("response json");
    let response = &review["response"];
    assert_eq!(
        response["uid"], "00000000-0000-0000-0000-000000000001",
        "uid echoed"
    );
    let patch = match response["patch"].as_str() {
        Some(b64) => {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 patch");
            serde_json::from_slice(&bytes).expect("patch json")
        }
        None => json!([]),
    };
    let warnings = response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Answer {
        allowed: response["allowed"].as_bool().expect("allowed"),
        code: response["status"]["code"].clone(),
        message: response["status"]["message"].as_str().map(str::to_owned),
        patch,
        warnings,
    }
}

async fn run_case(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    let input: Input = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: bad input.yaml: {e}", dir.display()));
    let mut lookup = StaticLookup::default();
    for owner in &input.owners {
        let meta: OwnerMeta = owner_meta(&owner.kind, &owner.metadata);
        lookup = lookup.with_owner(&input.namespace, meta);
    }
    for policy in &input.policies {
        lookup = lookup.with_policy_facts(
            &input.namespace,
            &policy.name,
            PolicyFacts {
                activation: policy.activation,
                identity: policy.identity_strategy,
            },
        );
    }
    for failure in &input.owner_errors {
        lookup = lookup.with_owner_error(
            &input.namespace,
            &failure.uid,
            failure.code,
            &failure.message,
        );
    }
    for failure in &input.policy_errors {
        lookup = lookup.with_policy_error(&input.namespace, &failure.name, &failure.reason);
    }
    let pod: Pod = serde_json::from_value(input.pod.clone()).expect("input pod is a Pod");

    let Answer {
        allowed,
        code,
        message,
        patch,
        warnings,
    } = through_review(&input.namespace, &input.pod, &lookup).await;
    if !allowed {
        return json!({ "allowed": false, "code": code, "message": message });
    }
    // The pure path and the HTTP path agree.
    let decision = decide(&pod, &input.namespace, &lookup, &config())
        .await
        .expect("allowed above");
    assert_eq!(
        serde_json::to_value(&decision.patch).expect("json"),
        patch,
        "{}: review patch differs from decide()",
        dir.display()
    );
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).expect("ops");
    let mut after = input.pod.clone();
    json_patch::patch(&mut after, &ops)
        .unwrap_or_else(|e| panic!("{}: patch does not apply: {e}", dir.display()));
    let _: Pod = serde_json::from_value(after.clone()).expect("patched pod is still a Pod");

    // Idempotency: a second pass (reinvocation) over the result changes nothing.
    let again = through_review(&input.namespace, &after, &lookup).await;
    assert!(again.allowed);
    let again_decision = decide(
        &serde_json::from_value(after.clone()).expect("pod"),
        &input.namespace,
        &lookup,
        &config(),
    )
    .await
    .expect("allowed");
    json!({
        "allowed": true,
        "outcome": decision.outcome.as_str(),
        "warnings": warnings,
        "patch": patch,
        "pod": after,
        "reinvocation": {
            "outcome": again_decision.outcome.as_str(),
            "patch": again.patch,
            "warnings": again.warnings,
        }
    })
}

#[tokio::test]
async fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let cases = cases();
    assert!(
        cases.len() >= 10,
        "expected the golden cases, found {cases:?}"
    );
    let mut failures = Vec::new();
    for dir in &cases {
        let got = run_case(dir).await;
        if got["allowed"] == true {
            assert_eq!(
                got["reinvocation"]["patch"],
                json!([]),
                "{}: re-injection must be an empty patch",
                dir.display()
            );
        }
        let expected_path = dir.join("expected.yaml");
        let rendered = format!(
            "# Generated by `UPDATE_GOLDEN=1 cargo test --test webhook_golden`; review changes.\n{}",
            serde_saphyr::to_string(&got).expect("yaml")
        );
        if update {
            std::fs::write(&expected_path, &rendered).expect("write expected.yaml");
            continue;
        }
        let expected: Value = match std::fs::read_to_string(&expected_path) {
            Ok(text) => serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: bad expected.yaml: {e}", dir.display())),
            Err(e) => {
                failures.push(format!(
                    "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                    expected_path.display()
                ));
                continue;
            }
        };
        if expected != got {
            failures.push(format!(
                "{} differs from the webhook's output (UPDATE_GOLDEN=1 rewrites it). Got:\n{rendered}",
                expected_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
