//! Feeds arbitrary bytes to the webhook's AdmissionReview handler, half of
//! them wrapped in a well-formed review envelope so the fuzzer reaches the
//! pod decoding and patch building. Checks the handler's promises: it never
//! panics; a 200 is always a JSON AdmissionReview echoing the uid; a patch
//! always applies to the object it was computed for.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use zen_lead::api::Activation;
use zen_lead::webhook::InjectConfig;
use zen_lead::webhook::lookup::StaticLookup;
use zen_lead::webhook::review::admit;

fn check(body: &[u8], lookup: &StaticLookup, config: &InjectConfig) {
    let reply = futures::executor::block_on(admit(body, lookup, config));
    if reply.status != 200 {
        assert!(
            !reply.body.is_empty(),
            "an error reply must say what is wrong"
        );
        return;
    }
    let review: Value = serde_json::from_slice(&reply.body).expect("200 must be JSON");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert!(response["allowed"].is_boolean());
    if let Some(patch) = response["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("patch is base64");
        let ops: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is JSON Patch");
        // The handler never reads some fields, and serde skips those without
        // validating them (e.g. invalid UTF-8 inside an ignored string), so a
        // full parse may refuse a body the handler rightly answered.
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let mut object = request["request"]["object"].clone();
        json_patch::patch(&mut object, &ops).expect("patch applies to the object");
    }
}

fuzz_target!(|data: &[u8]| {
    // `pool` (auto) and `worker` (process: command and probe rewriting).
    let lookup = StaticLookup::default()
        .with_policy("ns", "pool", Activation::Auto)
        .with_policy("ns", "worker", Activation::Process);
    let config = InjectConfig::with_image("zen-lead:fuzz");
    check(data, &lookup, &config);
    // The same bytes as the pod of a well-formed review.
    if let Ok(object) = serde_json::from_slice::<Value>(data) {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "ns",
                "operation": "CREATE",
                "object": object,
            }
        });
        if let Ok(body) = serde_json::to_vec(&review) {
            check(&body, &lookup, &config);
        }
    }
});
