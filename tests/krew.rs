//! The krew plugin (`make krew`), installed as a user installs it: krew
//! 0.4.3 (the Go module proxy's newest; `go install`ed into target/tools on
//! first use, `$ZEN_LEAD_KREW` overriding it) adds a local git repository as
//! a custom index, downloads the archive from a loopback HTTP server, checks
//! its sha256 and links the plugin; `kubectl zen-lead version` then runs the
//! packed binary through kubectl's plugin lookup. No cluster needed.
//!
//! The archive packs this build's `zen-lead` (`KREW_BIN`), not the static
//! release build `make krew` packs by default: that one costs minutes of fat
//! LTO, and tests/release_image.rs already checks it is static.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo_root, run_ok, scratch_dir, sha256_of};

const KREW_MODULE: &str = "sigs.k8s.io/krew/cmd/krew@v0.4.3";

/// The krew binary, installed from the Go module proxy when missing.
fn krew() -> PathBuf {
    if let Some(bin) = std::env::var_os("ZEN_LEAD_KREW").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let gobin = repo_root().join("target/tools/krew/bin");
    let bin = gobin.join("krew");
    if !bin.exists() {
        run_ok(
            Command::new("go")
                .args(["install", KREW_MODULE])
                .env("GOBIN", &gobin)
                .env("GOFLAGS", "-buildvcs=false")
                .env("CGO_ENABLED", "0"),
            &format!("installing krew (go install {KREW_MODULE})"),
        );
    }
    bin
}

/// `make krew` with `vars`, in a shell's environment (as tests/release_image.rs).
fn make_krew(vars: &[String]) -> String {
    let mut cmd = Command::new("make");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO") && key != "CARGO_HOME") || key == "OUT_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
    let out = run_ok(
        cmd.args(["--no-print-directory", "krew"])
            .args(vars)
            .current_dir(repo_root()),
        "make krew",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A git repository holding `manifest` as plugins/zen-lead.yaml: a krew index.
fn local_index(dir: &Path, manifest: &Path) {
    std::fs::create_dir_all(dir.join("plugins")).expect("index dir");
    std::fs::copy(manifest, dir.join("plugins/zen-lead.yaml")).expect("copy manifest");
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git")
                .args([
                    "-c",
                    "user.name=zen-lead test",
                    "-c",
                    "user.email=test@invalid",
                ])
                .args(args)
                .current_dir(dir),
            &format!("git {}", args.join(" ")),
        )
    };
    git(&["init", "--quiet"]);
    git(&["add", "plugins"]);
    git(&["commit", "--quiet", "-m", "index"]);
}

#[test]
fn the_krew_manifest_installs_from_a_local_index_and_kubectl_runs_the_plugin() {
    let work = scratch_dir("krew");
    let serve = work.join("serve");
    let port = common::net::serve_files(serve.clone());
    let base = format!("http://127.0.0.1:{port}");
    let bin = env!("CARGO_BIN_EXE_zen-lead");
    let pack = |out: &Path| {
        make_krew(&[
            format!("KREW_BIN={bin}"),
            format!("KREW_URI_BASE={base}"),
            format!("KREW_OUT={}", out.display()),
        ])
    };
    pack(&serve);
    pack(&work.join("again"));
    let archive_name = format!("zen-lead-v{}-linux-amd64.tar.gz", env!("CARGO_PKG_VERSION"));
    let archive = serve.join(&archive_name);
    let sha256 = sha256_of(&archive);
    assert_eq!(
        sha256,
        sha256_of(&work.join("again").join(&archive_name)),
        "two packs of the same binary differ"
    );
    let manifest = std::fs::read_to_string(serve.join("zen-lead.yaml")).expect("manifest");
    assert!(
        manifest.contains(&format!("uri: {base}/{archive_name}\n"))
            && manifest.contains(&format!("sha256: {sha256}\n"))
            && manifest.contains(&format!("version: v{}\n", env!("CARGO_PKG_VERSION"))),
        "the manifest does not name the archive:\n{manifest}"
    );

    local_index(&work.join("index"), &serve.join("zen-lead.yaml"));
    let root = work.join("krew-root");
    let krew_bin = krew();
    let krew = |args: &[&str]| {
        run_ok(
            Command::new(&krew_bin)
                .args(args)
                .env("KREW_ROOT", &root)
                .env("KREW_NO_UPGRADE_CHECK", "1")
                .stdin(std::process::Stdio::null()),
            &format!("krew {}", args.join(" ")),
        )
    };
    let index = work.join("index");
    krew(&["index", "add", "local", &index.to_string_lossy()]);
    krew(&["install", "local/zen-lead"]);
    assert!(
        root.join(format!(
            "store/zen-lead/v{}/LICENSE",
            env!("CARGO_PKG_VERSION")
        ))
        .exists(),
        "the plugin was installed without its LICENSE"
    );

    let kubectl = common::kubectl_path();
    let kubectl = if kubectl.exists() {
        kubectl
    } else {
        PathBuf::from("kubectl")
    };
    let path = std::env::join_paths(std::iter::once(root.join("bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let out = run_ok(
        Command::new(&kubectl)
            .args(["zen-lead", "version"])
            .env("PATH", path),
        "kubectl zen-lead version",
    );
    let want = run_ok(Command::new(bin).arg("version"), "zen-lead version");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&want.stdout),
        "kubectl zen-lead is not the packed zen-lead"
    );
}

/// Without KREW_BIN, `make krew` packs the static release build, and the
/// manifest names the GitHub release of the chart's version.
#[test]
fn make_krew_packs_the_release_build_for_the_github_release() {
    let out = Command::new("make")
        .args(["--no-print-directory", "-n", "krew"])
        .current_dir(repo_root())
        .output()
        .expect("make -n krew");
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("tools/static-binaries.sh"), "{plan}");
    assert!(
        plan.contains(&format!(
            "\"https://github.com/kube-zen/zen-lead/releases/download/v{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{plan}"
    );
}
