//! The `zen-lead` binary as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn zen_lead(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zen-lead"))
        .args(args)
        // The developer's environment must not change what the tests see.
        .env_remove("ZEN_LEAD_LOG_LEVEL")
        .env_remove("ZEN_LEAD_LOG_FORMAT")
        .output()
        .expect("run zen-lead")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_prints_version_and_commit() {
    let out = zen_lead(&["version"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("zen-lead {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    let commit = stdout
        .trim_end()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit:?} in {stdout}"
    );
    // clap: `-V` is the short form, `--version` the long one (with the commit).
    assert_eq!(
        text(&zen_lead(&["-V"]).stdout),
        format!("zen-lead {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(text(&zen_lead(&["--version"]).stdout), stdout);
}

/// `agent` and `lock` check their settings before contacting any cluster,
/// and say which flag to change.
#[test]
fn agent_and_lock_reject_unsafe_settings_before_starting() {
    for (args, needle) in [
        (
            vec![
                "agent",
                "--pool",
                "p",
                "--pod-name",
                "p-0",
                "--pod-namespace",
                "ns",
                "--pod-uid",
                "u",
                "--identity-strategy",
                "custom",
            ],
            "zen-lead/identity",
        ),
        (
            vec!["lock", "nightly", "--grace-period", "6s", "--", "true"],
            "--grace-period",
        ),
        (
            vec!["lock", "nightly", "--renew-deadline", "15s", "--", "true"],
            "--renew-deadline",
        ),
    ] {
        let out = zen_lead(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn bad_flags_are_named_in_the_error() {
    let out = zen_lead(&["lock", "nightly", "--renew-deadline", "20s", "--", "true"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--renew-deadline") && stderr.contains("--lease-duration"),
        "{stderr}"
    );

    let out = zen_lead(&[
        "agent",
        "--pool",
        "Not_A_Name",
        "--pod-name",
        "a",
        "--pod-namespace",
        "b",
        "--pod-uid",
        "c",
    ]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--pool"), "{stderr}");

    let out = zen_lead(&["--log-level", "zen_lead=loudest", "version"]);
    assert!(text(&out.stderr).contains("--log-level"));

    // Usage errors come from clap, with its exit status 2.
    let out = zen_lead(&["certs", "--days", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--days"));
}

#[test]
fn env_twins_configure_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_zen-lead"))
        .args(["lock", "nightly", "--", "true"])
        .env("ZEN_LEAD_LOCK_RETRY_PERIOD", "9s")
        .output()
        .expect("run");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--retry-period (9s)"), "{stderr}");
}

#[test]
fn certs_writes_a_ca_and_serving_certificate() {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("certs-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let dir_arg = dir.to_str().expect("utf-8 path");
    let out = zen_lead(&[
        "certs",
        "--out",
        dir_arg,
        "--dns",
        "localhost,zen-lead.zen-lead.svc",
        "--ip",
        "127.0.0.1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        let path = dir.join(file);
        let pem =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(pem.starts_with("-----BEGIN "), "{file}");
        assert!(text(&out.stdout).contains(file), "stdout lists {file}");
        #[cfg(unix)]
        if file.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{file} must be owner-only");
        }
    }
    // The pair loads as a rustls server identity.
    zen_lead::tls::load_server_config(&dir.join("tls.crt"), &dir.join("tls.key"))
        .expect("usable identity");

    // A second run keeps the CA that clusters may already trust...
    let before = std::fs::read(dir.join("ca.crt")).expect("read");
    let out = zen_lead(&["certs", "--out", dir_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(dir.join("ca.crt")).expect("read"), before);
    // ...unless told otherwise.
    let out = zen_lead(&["certs", "--out", dir_arg, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(std::fs::read(dir.join("ca.crt")).expect("read"), before);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn crd_keeps_stdout_clean() {
    let out = zen_lead(&["--log-level", "debug", "crd"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("# Generated by `zen-lead crd`"));
}

/// Whether `word` occurs in `script` as a word of its own (not inside
/// `return` or `--run-x`).
fn names(script: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    script.match_indices(word).any(|(at, _)| {
        let before = script[..at].chars().next_back();
        let after = script[at + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// `zen-lead completion SHELL`: a script that names every subcommand a user
/// runs and that the shell itself accepts (`bash -n`; `zsh -n` and `fish -n`
/// where those shells are installed, skipped otherwise).
#[test]
fn completion_scripts_name_every_subcommand_and_parse() {
    let subcommands = [
        "controller",
        "agent",
        "lock",
        "run",
        "probe",
        "handoff",
        "status",
        "crd",
        "certs",
        "completion",
        "version",
    ];
    let dir = std::env::temp_dir().join(format!("zl-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    for shell in ["bash", "zsh", "fish"] {
        let out = zen_lead(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for sub in subcommands {
            assert!(
                names(&script, sub),
                "the {shell} script does not name `{sub}`"
            );
        }
        assert!(
            !names(&script, "lock-guard"),
            "the {shell} script offers the internal lock-guard"
        );
        let file = dir.join(format!("zen-lead.{shell}"));
        std::fs::write(&file, &script).expect("write script");
        match Command::new(shell).arg("-n").arg(&file).output() {
            Ok(check) => assert!(
                check.status.success(),
                "{shell} -n rejects the script: {}",
                text(&check.stderr)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && shell != "bash" => {
                eprintln!("{shell} is not installed: its syntax check is skipped");
            }
            Err(e) => panic!("{shell} -n: {e}"),
        }
    }
    let bad = zen_lead(&["completion", "tcsh"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("bash"), "{}", text(&bad.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
