//! The CRD committed in the chart must be exactly what `zen-lead crd` prints,
//! or users would install a schema that differs from the code.

use std::process::Command;

use zen_lead::api::{CRD_PATH, crd_yaml};

fn committed() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CRD_PATH);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run `make crd` to generate it",
            path.display()
        )
    })
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let generated = crd_yaml().expect("render CRD");
    assert!(
        committed() == generated,
        "{CRD_PATH} is out of date with src/api/: run `make crd` and commit the result"
    );
}

#[test]
fn zen_lead_crd_prints_the_committed_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_zen-lead"))
        .arg("crd")
        .output()
        .expect("run zen-lead crd");
    assert!(
        out.status.success(),
        "zen-lead crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == committed().into_bytes(),
        "`zen-lead crd` differs from {CRD_PATH}: run `make crd` and commit the result"
    );
}
