//! docs/API.md must name every field of the LeaderPolicy types, every
//! annotation, label and condition key in src/api/keys.rs: a field or key
//! added to the code without a line in the reference fails here.

use serde_json::Value;
use zen_lead::api::crd;

fn api_md() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `prefix.field` for every property of `schema`, objects recursed into.
/// Array items are not: the only array of objects is the standard Kubernetes
/// Condition, documented as a whole.
fn paths(prefix: &str, schema: &Value, out: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, sub) in props {
        let path = format!("{prefix}.{name}");
        paths(&path, sub, out);
        out.push(path);
    }
}

#[test]
fn every_spec_and_status_field_is_documented() {
    let crd = serde_json::to_value(crd()).expect("crd to json");
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut all = Vec::new();
    paths("spec", &root["spec"], &mut all);
    paths("status", &root["status"], &mut all);
    assert!(
        all.iter().any(|p| p == "status.timings.retryPeriodSeconds"),
        "the walk reaches nested fields: {all:?}"
    );
    let doc = api_md();
    let missing: Vec<&String> = all
        .iter()
        .filter(|p| !doc.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/API.md does not document {missing:?}"
    );
}

#[test]
fn every_key_is_documented() {
    let keys = include_str!("../src/api/keys.rs");
    // `pub const NAME: &str = "value";`: every key, value and condition type.
    let values: Vec<&str> = keys
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(
        values.contains(&"zen-lead/pool") && values.contains(&"IdentityConflict"),
        "the scan finds keys and condition types: {values:?}"
    );
    let doc = api_md();
    let missing: Vec<&&str> = values
        .iter()
        .filter(|v| !doc.contains(&format!("`{v}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/API.md does not document {missing:?}"
    );
}
