//! Records the git commit for `zen-lead version`.
//!
//! Order: `ZEN_LEAD_GIT_COMMIT` from the environment (container builds copy no
//! `.git`), then `git rev-parse --short=12 HEAD`, then `unknown`. A fixed
//! length: plain `--short` grows with the repository's object count, so a
//! shallow and a full clone of one commit would build different binaries.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ZEN_LEAD_GIT_COMMIT");
    watch_git_head();

    let commit = std::env::var("ZEN_LEAD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_short_head)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ZEN_LEAD_GIT_COMMIT={}", commit.trim());
}

fn git_short_head() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8(out.stdout).ok()?;
    let commit = commit.trim();
    (!commit.is_empty()).then(|| commit.to_owned())
}

/// Rebuild when HEAD moves: HEAD itself changes on checkout, the ref file on
/// commit, and packed-refs after `git gc`.
fn watch_git_head() {
    let git = Path::new(".git");
    if !git.is_dir() {
        // A worktree (`.git` is a file) or no repository: watch what exists.
        if git.exists() {
            println!("cargo:rerun-if-changed=.git");
        }
        return;
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(reference) = head.strip_prefix("ref: ")
    {
        let reference = git.join(reference.trim());
        if reference.exists() {
            println!("cargo:rerun-if-changed={}", reference.display());
        }
    }
    if git.join("packed-refs").exists() {
        println!("cargo:rerun-if-changed=.git/packed-refs");
    }
}
