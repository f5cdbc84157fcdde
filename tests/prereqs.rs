//! `tests/cluster/prereqs.sh`, the set-up step `make test`, `make demo` and
//! CI share: on a machine that has everything it only checks; on one that
//! lacks pieces (and is not root, so it may not install them) it stops and
//! names each missing piece with the command that installs it. No cluster
//! needed, and nothing is ever installed here (ZL_PREREQS_AS_ROOT=0).

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn run(path_env: &str, cni_dir: &Path) -> Output {
    Command::new("/bin/bash")
        .arg(common::repo_root().join("tests/cluster/prereqs.sh"))
        .env("PATH", path_env)
        .env("ZL_PREREQS_AS_ROOT", "0")
        .env("ZL_PREREQS_CNI_DIR", cni_dir)
        .output()
        .unwrap_or_else(|e| panic!("run prereqs.sh: {e}"))
}

#[test]
fn this_machine_has_everything_and_nothing_is_installed() {
    // `make test` ran the script (as root in CI, installing) before this
    // test: now it must find everything, as any user.
    let path = std::env::var("PATH").unwrap_or_default();
    let out = run(&path, Path::new("/usr/lib/cni"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("prereqs: ok"), "{stdout}");
    assert!(!stdout.contains("installing"), "{stdout}");
}

#[test]
fn each_missing_piece_is_named_with_the_command_that_installs_it() {
    // A PATH with the shell's basics only: no Rust, Go, containerd, runc,
    // iptables, curl or musl-gcc, and no CNI plugins.
    let dir = common::scratch_dir("prereqs-missing");
    let bin = dir.join("bin");
    let cni = dir.join("cni");
    for d in [&bin, &cni] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    for tool in ["bash", "id", "sed", "grep", "cat", "env"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found in /usr/bin or /bin"));
        let link = bin.join(tool);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&found, &link).unwrap_or_else(|e| panic!("symlink {tool}: {e}"));
    }
    let out = run(&bin.to_string_lossy(), &cni);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for (piece, how) in [
        ("Rust toolchain", "https://rustup.rs"),
        ("Go >= 1.26.7", "https://go.dev/dl"),
        ("Debian packages", "sudo apt-get install -y"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(piece))
            .unwrap_or_else(|| panic!("{piece} not named:\n{stderr}"));
        assert!(line.contains(how), "{piece} without {how}: {line}");
    }
    for package in [
        "musl-tools",
        "containerd",
        "runc",
        "containernetworking-plugins",
        "iptables",
        "curl",
    ] {
        assert!(
            stderr.contains(package),
            "the package {package} is not named:\n{stderr}"
        );
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("prereqs: ok"),
        "{stderr}"
    );
}

#[test]
fn ci_and_the_makefile_use_this_step_and_keep_no_copy_of_it() {
    let read = |rel: &str| {
        std::fs::read_to_string(common::repo_root().join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let ci = read(".ci/run");
    assert!(ci.contains("tests/cluster/prereqs.sh"), ".ci/run");
    for copy in ["apt-get", "rustup target add"] {
        assert!(
            !ci.contains(copy),
            ".ci/run installs on its own ({copy}) instead of calling prereqs.sh"
        );
    }
    let makefile = read("Makefile");
    assert!(
        makefile
            .lines()
            .any(|l| l.starts_with("cluster-up:") && l.contains("prereqs")),
        "make cluster-up (and so make test and make demo) must run the prereqs step first"
    );
}
