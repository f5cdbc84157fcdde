//! The user docs' rules, as tests/layout.rs checks the code's:
//! - the README stays a front door: under [`README_MAX_LINES`] lines;
//! - every relative link in README.md and docs/*.md resolves: the file or
//!   directory exists, and a `#anchor` names a heading of the target, slugged
//!   as GitHub does;
//! - the examples run on any cluster as written: no `localhost/` image and no
//!   placement on the local cluster's test node;
//! - every example applies with `kubectl apply --dry-run=server` (needs the
//!   local cluster, like the other cluster tests: no cluster, a failure).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use common::workloads::kubectl_ok;
use common::{apply_crd, client, repo_root, with_namespace};

const README_MAX_LINES: usize = 170;

/// The node selector the local cluster's real node answers to
/// (tests/cluster/realnode.go): examples must not carry it.
const TEST_NODE_SELECTOR: &str = "zen-lead.io/node";

fn files_with_extension(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files_with_extension(&path, exts, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            out.push(path);
        }
    }
    out.sort();
}

/// README.md and every Markdown file in docs/.
fn user_docs() -> Vec<PathBuf> {
    let mut docs = vec![repo_root().join("README.md")];
    files_with_extension(&repo_root().join("docs"), &["md"], &mut docs);
    docs
}

/// The example manifests: what a user applies.
fn example_manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_with_extension(&repo_root().join("examples"), &["yaml", "yml"], &mut files);
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The lines of a Markdown text outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The targets of the inline links `[text](target)` of one line.
fn link_targets(line: &str) -> Vec<&str> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target);
        rest = &after[end..];
    }
    targets
}

/// A heading's anchor as GitHub makes it: the rendered text lowercased, every
/// character but letters, digits, `_`, `-` and spaces dropped, spaces made
/// hyphens.
fn slug(heading: &str) -> String {
    let rendered = render_inline(heading);
    rendered
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '-' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text of inline Markdown as rendered: links become their text, code
/// spans and emphasis lose their markers.
fn render_inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| {
            let end = after[close + 2..].find(')')?;
            Some((close, close + 2 + end + 1))
        }) {
            Some((close, next)) => {
                out.push_str(&after[..close]);
                rest = &after[next..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace(['`', '*'], "")
}

/// Every anchor of a Markdown file's headings, GitHub's `-1`, `-2` suffixes
/// for repeated headings included.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let count = seen.entry(base.clone()).or_insert(0);
        let anchor = if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        };
        *count += 1;
        out.insert(anchor);
    }
    out
}

/// What is wrong with one relative link of `doc`, if anything.
fn broken(doc: &Path, target: &str) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        doc.to_path_buf()
    } else {
        doc.parent().expect("a doc's directory").join(path)
    };
    if !file.exists() {
        return Some(format!("{} does not exist", relative(&file)));
    }
    let anchor = anchor?;
    if file.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let known = anchors(&text);
    (!known.contains(anchor)).then(|| format!("{} has no heading #{anchor}", relative(&file)))
}

fn is_external(target: &str) -> bool {
    target.is_empty() || target.contains("://") || target.starts_with("mailto:")
}

#[test]
fn readme_is_a_front_door() {
    let text = common::read_repo_file("README.md");
    let lines = text.lines().count();
    assert!(
        lines < README_MAX_LINES,
        "README.md has {lines} lines; keep it under {README_MAX_LINES} and move detail to docs/"
    );
    assert!(
        text.contains("make test"),
        "README.md must say how to run every test (`make test`, what CI runs)"
    );
}

#[test]
fn every_relative_link_resolves() {
    let mut problems = Vec::new();
    for doc in user_docs() {
        let text = fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if is_external(target) {
                    continue;
                }
                if let Some(problem) = broken(&doc, target) {
                    problems.push(format!(
                        "{}:{number}: ({target}): {problem}",
                        relative(&doc)
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn examples_run_on_any_cluster() {
    let mut problems = Vec::new();
    for file in example_manifests() {
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            if line.contains("localhost/") {
                problems.push(format!(
                    "{}:{}: a localhost/ image no other cluster has",
                    relative(&file),
                    i + 1
                ));
            }
            if line.contains(TEST_NODE_SELECTOR) {
                problems.push(format!(
                    "{}:{}: placement on the local cluster's test node",
                    relative(&file),
                    i + 1
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "examples tied to the local cluster:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn every_example_applies_with_a_server_dry_run() {
    let client = client().await;
    apply_crd(&client, &zen_lead::api::crd()).await;
    with_namespace(&client, "docs", |_, ns| async move {
        for file in example_manifests() {
            let path = file.to_string_lossy();
            let out = kubectl_ok(&ns, &["apply", "--dry-run=server", "-f", &path]);
            assert!(
                !out.trim().is_empty(),
                "{}: kubectl applied nothing",
                relative(&file)
            );
        }
    })
    .await;
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug(" Install"), "install");
    assert_eq!(slug(" The agent's local API"), "the-agents-local-api");
    assert_eq!(
        slug(" `process` activation (`src/run/`, `src/agent/app_probe.rs`)"),
        "process-activation-srcrun-srcagentapp_probers"
    );
    assert_eq!(
        slug(" Activation: keeping followers inactive"),
        "activation-keeping-followers-inactive"
    );
    assert_eq!(slug(" [Link](x.md) and more"), "link-and-more");
    let repeated = anchors("# A\n## A\n```\n# not a heading\n```\n### A\n");
    assert_eq!(
        repeated,
        BTreeSet::from(["a".to_owned(), "a-1".to_owned(), "a-2".to_owned()])
    );
}
