//! The source layout's rules, checked on the text of `src/` (no cluster):
//! - no two modules import each other, directly or around a longer circle;
//! - no production function is longer than [`MAX_FN_LINES`] lines.
//!
//! Both read rustfmt-formatted code (`make lint` enforces it): a function's
//! closing brace sits alone at the indentation of its `fn` line. Test modules
//! (`#[cfg(test)] mod …` and `tests.rs` files) are left out: table tests may
//! be long.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 80;

/// A module of the crate: its path (`controller::pool::plan`; the crate root
/// is "") and its file.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    /// Production code only: everything before a `#[cfg(test)] mod`, without
    /// comment lines.
    code: Vec<String>,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn production_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map_or("", |l| l.trim_start());
        if line.trim_start().starts_with("#[cfg(test)]") && next.starts_with("mod ") {
            break;
        }
        out.push((*line).to_owned());
    }
    out
}

fn modules() -> Vec<Module> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.starts_with(src.join("bin")) && f.file_name() != Some("tests.rs".as_ref()))
        .map(|file| {
            let rel = file
                .strip_prefix(&src)
                .expect("under src")
                .with_extension("");
            let mut path: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                path.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                path.pop();
            }
            let text = fs::read_to_string(&file).expect("readable source");
            Module {
                path,
                file,
                code: production_lines(&text),
            }
        })
        .collect()
}

/// The module a `crate::…`/`super::…` path names: the longest prefix that
/// is a module of the crate.
fn target(from: &[String], use_path: &str, known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segments = use_path.split("::").peekable();
    let mut base: Vec<String> = match segments.peek() {
        Some(&"crate") => Vec::new(),
        Some(&"super") => from.to_vec(),
        _ => return None,
    };
    while let Some(&s) = segments.peek() {
        match s {
            "crate" => {}
            "super" => {
                base.pop()?;
            }
            _ => break,
        }
        segments.next();
    }
    let mut best = None;
    for s in segments {
        base.push(s.to_owned());
        if known.contains(&base) {
            best = Some(base.clone());
        }
    }
    best
}

fn import_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for start in ["crate::", "super::"] {
        let mut rest = line;
        while let Some(at) = rest.find(start) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                out.push(tail[..end].trim_end_matches(':').to_owned());
            }
            rest = &tail[start.len()..];
        }
    }
    out
}

fn graph(mods: &[Module]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.path.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in mods {
        let set = edges.entry(m.path.clone()).or_default();
        for line in &m.code {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for p in import_paths(line) {
                let Some(to) = target(&m.path, &p, &known) else {
                    continue;
                };
                // A parent and its child modules are one room: `mod.rs`
                // declares its children and they use its items.
                if to.is_empty() || to.starts_with(&m.path) || m.path.starts_with(&to) {
                    continue;
                }
                set.insert(to);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                comp.push(w.join("::"));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.found.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_module_imports_its_importer() {
    let found = circles(&graph(&modules()));
    assert!(
        found.is_empty(),
        "modules that import each other (move what both need into a leaf module): {found:?}"
    );
}

#[test]
fn the_circle_finder_finds_a_circle() {
    // The checker must be able to fail: two modules using each other.
    let m = |p: &str, code: &str| Module {
        path: p.split("::").map(str::to_owned).collect(),
        file: PathBuf::new(),
        code: code.lines().map(str::to_owned).collect(),
    };
    let mods = vec![
        m("webhook::inject", "use super::process::wiring;"),
        m(
            "webhook::process",
            "use crate::webhook::inject::{add, Denial};",
        ),
        m("webhook::patch", "// use super::inject::add;"),
    ];
    assert_eq!(
        circles(&graph(&mods)),
        vec![vec![
            "webhook::inject".to_owned(),
            "webhook::process".to_owned()
        ]]
    );
}

/// `(file, name, lines)` of every function longer than `max`.
fn long_functions(mods: &[Module], max: usize) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    for m in mods {
        let mut i = 0;
        while i < m.code.len() {
            let line = &m.code[i];
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            let sig = trimmed
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("const ")
                .trim_start_matches("async ");
            if let Some(rest) = sig.strip_prefix("fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let close = format!("{}}}", " ".repeat(indent));
                let end = (i + 1..m.code.len())
                    .find(|&j| m.code[j] == close)
                    .unwrap_or(i);
                if end - i > max {
                    out.push((m.file.display().to_string(), name, end - i));
                }
                i = end;
            }
            i += 1;
        }
    }
    out
}

#[test]
fn no_production_function_is_longer_than_the_limit() {
    let long = long_functions(&modules(), MAX_FN_LINES);
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them by step): {long:?}"
    );
}

#[test]
fn the_length_check_sees_a_long_function() {
    let mut code = vec!["pub async fn long() {".to_owned()];
    code.extend((0..MAX_FN_LINES).map(|i| format!("    step({i});")));
    code.push("}".to_owned());
    code.push("fn short() {}".to_owned());
    let m = Module {
        path: vec!["x".to_owned()],
        file: PathBuf::from("x.rs"),
        code,
    };
    assert_eq!(
        long_functions(&[m], MAX_FN_LINES),
        vec![("x.rs".to_owned(), "long".to_owned(), MAX_FN_LINES + 1)]
    );
}
