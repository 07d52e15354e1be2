//! The import graph of each library crate, drawn from the code: no module
//! imports another that imports it back (directly or around a circle, per
//! file and per top-level module), every import points down the layer
//! order ARCHITECTURE.md's module map declares, that map lists every
//! module file there is, and no non-test file reaches 500 lines.
//!
//! An edge is any `use` of, or path through, another module of the same
//! crate (`crate::…`, `super::…`, `self::…`, or a child named from its
//! parent), in code that is not a test. `mod x;` declarations are not
//! edges: a parent owns its children, it does not depend on them until it
//! names something inside one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where an edge was seen, for the failure message.
type Site = (String, usize);

struct Crate {
    /// Module path (`rules::route::gateway`, `` for the root) → file.
    files: BTreeMap<String, PathBuf>,
    /// from → to → first place seen.
    edges: BTreeMap<String, BTreeMap<String, Site>>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Module path of a file under `src`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir)
        .expect("readable source dir")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's code without its test module and comments, line by line.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Tests sit at the end of a file, by the house style.
            break;
        }
        let code = match t.find("//") {
            Some(at) => &t[..at],
            None => t,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, self}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.trim_end_matches("::self").to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').expect("balanced braces")];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p).into_iter().map(move |s| {
                if s == "self" {
                    prefix.to_string()
                } else if prefix.is_empty() {
                    s
                } else {
                    format!("{prefix}::{s}")
                }
            })
        })
        .collect()
}

/// The deepest module of the crate that `path`, seen from `from`, names.
fn resolve(files: &BTreeMap<String, PathBuf>, from: &str, path: &str) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first().copied() {
        Some("crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some("super") | Some("self") => {
            let mut b: Vec<String> = from
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            while let Some(s) = segs.first().copied() {
                match s {
                    "super" => {
                        b.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                segs.remove(0);
            }
            b
        }
        // A child module named from its parent (`use child::Item`).
        Some(first) => {
            let mut b: Vec<String> = from
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            b.push(first.to_string());
            if !files.contains_key(&b.join("::")) {
                return None;
            }
            b.pop();
            b
        }
        None => return None,
    };
    let mut found = None;
    for s in segs {
        base.push(s.to_string());
        let m = base.join("::");
        if files.contains_key(&m) {
            found = Some(m);
        } else {
            break;
        }
    }
    found.or_else(|| Some(base_module(&base, files)))
}

/// The longest prefix of `segs` that is a module (the root at worst).
fn base_module(segs: &[String], files: &BTreeMap<String, PathBuf>) -> String {
    (0..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| files.contains_key(m))
        .unwrap_or_default()
}

/// Every `crate::…` / `super::…` path written inline in `code`.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(i) = rest.find(key) {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                out.push(tail[..end].trim_end_matches(':').to_string());
            }
            rest = &tail[end.max(key.len())..];
        }
    }
    out
}

fn load(src: &Path) -> Crate {
    let mut paths = Vec::new();
    rust_files(src, &mut paths);
    let mut files = BTreeMap::new();
    for p in &paths {
        let name = p.file_name().unwrap().to_string_lossy();
        // The binary is its own crate; test files are not the library.
        let rel = p.strip_prefix(src).expect("under src");
        if name == "main.rs"
            || name == "tests.rs"
            || rel.components().any(|c| c.as_os_str() == "tests")
        {
            continue;
        }
        files.insert(module_of(src, p), p.clone());
    }
    let mut edges: BTreeMap<String, BTreeMap<String, Site>> = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let lines = code_lines(&text);
        let mut record = |to: String, line: usize| {
            // A module's own items, and the crate root (which only declares
            // modules), are not dependencies.
            if to == *module || to.is_empty() {
                return;
            }
            edges
                .entry(module.clone())
                .or_default()
                .entry(to)
                .or_insert_with(|| (file.display().to_string(), line));
        };
        let mut i = 0;
        while i < lines.len() {
            let (n, code) = &lines[i];
            let t = code.trim_start();
            let use_at = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find(|p| t.starts_with(**p))
                .map(|p| p.len());
            if let Some(skip) = use_at {
                let mut stmt = t[skip..].to_string();
                while !stmt.contains(';') && i + 1 < lines.len() {
                    i += 1;
                    stmt.push_str(&lines[i].1);
                }
                let stmt = stmt.split(';').next().unwrap_or_default();
                let stmt = strip_renames(stmt);
                for p in expand(&stmt) {
                    if let Some(to) = resolve(&files, module, &p) {
                        record(to, *n);
                    }
                }
            } else {
                for p in inline_paths(code) {
                    if let Some(to) = resolve(&files, module, &p) {
                        record(to, *n);
                    }
                }
            }
            i += 1;
        }
    }
    Crate { files, edges }
}

/// `a::b as c` → `a::b`.
fn strip_renames(stmt: &str) -> String {
    let mut out = String::new();
    let mut words = stmt.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w == "as" {
            // Drop the alias, keep any punctuation glued to it.
            if let Some(alias) = words.next() {
                out.push_str(alias.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
            }
            continue;
        }
        out.push_str(w);
    }
    out
}

/// Strongly connected components with more than one member (circles).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    let nodes: BTreeSet<&String> = edges
        .keys()
        .chain(edges.values().flat_map(|s| s.iter()))
        .collect();
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for n in &nodes {
        let mut stack = vec![((*n).clone(), false)];
        while let Some((v, done)) = stack.pop() {
            if done {
                order.push(v);
                continue;
            }
            if !seen.insert(v.clone()) {
                continue;
            }
            stack.push((v.clone(), true));
            for w in edges.get(&v).into_iter().flatten() {
                if !seen.contains(w) {
                    stack.push((w.clone(), false));
                }
            }
        }
    }
    let mut rev: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (a, bs) in edges {
        for b in bs {
            rev.entry(b).or_default().push(a);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        if assigned.contains(v) {
            continue;
        }
        let mut comp = Vec::new();
        let mut stack = vec![v];
        while let Some(x) = stack.pop() {
            if !assigned.insert(x.clone()) {
                continue;
            }
            comp.push(x.clone());
            for y in rev.get(x).into_iter().flatten() {
                if !assigned.contains(*y) {
                    stack.push(y);
                }
            }
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

fn top(module: &str) -> String {
    module.split("::").next().unwrap_or_default().to_string()
}

/// The layers ARCHITECTURE.md's module map gives a crate, bottom first:
/// rows of `| layer | module | … |` under the heading that names it.
fn declared_layers(doc: &str, heading: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with('#') {
            inside = line.contains(heading);
            continue;
        }
        if !inside || !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let (Some(layer), Some(module)) = (cells.get(1), cells.get(2))
            && let Ok(layer) = layer.parse::<u32>()
        {
            for m in module.split(',') {
                let m = m.trim().trim_matches('`').trim_end_matches('/');
                out.insert(m.to_string(), layer);
            }
        }
    }
    out
}

/// The text under the heading that names a crate, up to the next heading.
fn section(doc: &str, heading: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with('#') {
            inside = line.contains(heading);
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn check(name: &str, src: &str, heading: &str) -> Vec<String> {
    let c = load(&root().join(src));
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut problems = Vec::new();
    let flat: BTreeMap<String, BTreeSet<String>> = c
        .edges
        .iter()
        .map(|(a, bs)| (a.clone(), bs.keys().cloned().collect()))
        .collect();
    let site = |a: &str, b: &str| {
        let (f, l) = &c.edges[a][b];
        format!("{a} → {b} ({f}:{l})")
    };
    for comp in circles(&flat) {
        let inside: Vec<String> = comp
            .iter()
            .flat_map(|a| {
                flat.get(a)
                    .into_iter()
                    .flatten()
                    .filter(|b| comp.contains(b))
                    .map(move |b| site(a, b))
            })
            .collect();
        problems.push(format!(
            "{name}: files import each other in a circle: {}",
            inside.join("; ")
        ));
    }
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut top_site: BTreeMap<(String, String), String> = BTreeMap::new();
    for (a, bs) in &flat {
        for b in bs {
            let (ta, tb) = (top(a), top(b));
            if ta != tb {
                tops.entry(ta.clone()).or_default().insert(tb.clone());
                top_site.entry((ta, tb)).or_insert_with(|| site(a, b));
            }
        }
    }
    for comp in circles(&tops) {
        let inside: Vec<String> = top_site
            .iter()
            .filter(|((a, b), _)| comp.contains(a) && comp.contains(b))
            .map(|(_, s)| s.clone())
            .collect();
        problems.push(format!(
            "{name}: top-level modules import each other in a circle: {}",
            inside.join("; ")
        ));
    }
    let layers = declared_layers(&doc, heading);
    let modules: BTreeSet<String> = c
        .files
        .keys()
        .map(|m| top(m))
        .filter(|m| !m.is_empty())
        .collect();
    for m in &modules {
        if !layers.contains_key(m) {
            problems.push(format!(
                "{name}: module {m} is missing from ARCHITECTURE.md's module map ({heading})"
            ));
        }
    }
    for m in layers.keys() {
        if !modules.contains(m) {
            problems.push(format!(
                "{name}: ARCHITECTURE.md's module map ({heading}) lists {m}, which is not in {src}"
            ));
        }
    }
    for ((a, b), s) in &top_site {
        if let (Some(la), Some(lb)) = (layers.get(a), layers.get(b))
            && la < lb
        {
            problems.push(format!(
                "{name}: {a} (layer {la}) imports {b} (layer {lb}), a higher layer: {s}"
            ));
        }
    }
    let map = section(&doc, heading);
    let src_dir = root().join(src);
    for (module, f) in &c.files {
        let rel = f
            .strip_prefix(&src_dir)
            .expect("under src")
            .display()
            .to_string();
        if !module.is_empty() && !map.contains(&format!("`{rel}`")) {
            problems.push(format!(
                "{name}: {rel} is not in ARCHITECTURE.md's module map ({heading})"
            ));
        }
    }
    for named in map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| t.ends_with(".rs"))
    {
        if !src_dir.join(named).is_file() {
            problems.push(format!(
                "{name}: ARCHITECTURE.md's module map ({heading}) names {named}, which is not in {src}"
            ));
        }
    }
    for f in c.files.values() {
        let text = std::fs::read_to_string(f).expect("readable");
        let code = text
            .lines()
            .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
            .count();
        if code >= 500 {
            problems.push(format!(
                "{name}: {} has {code} lines before its tests; split it by concern",
                f.display()
            ));
        }
        let rel = f.strip_prefix(root()).unwrap_or(f).display().to_string();
        let rel = rel.trim_start_matches("./").trim_start_matches('/');
        if !text.starts_with("//!") {
            problems.push(format!("{name}: {rel} does not open with a //! line"));
        }
    }
    problems
}

#[test]
fn the_control_plane_imports_one_way() {
    let problems = check("mesh-control", "control-plane/src", "mesh-control modules");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_sidecar_imports_one_way() {
    let problems = check("mesh-proxy", "data-plane/src", "mesh-proxy modules");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The checker itself finds what it is meant to find.
#[test]
fn the_checker_sees_use_trees_and_circles() {
    assert_eq!(
        expand("a::{b, c::{d, self}}"),
        vec!["a::b", "a::c::d", "a::c"]
    );
    assert_eq!(strip_renames("mesh_proto::v1 as pb"), "mesh_proto::v1");
    assert_eq!(
        inline_paths("let x = crate::rules::Split::new(super::y);"),
        vec!["crate::rules::Split::new", "super::y"]
    );
    let mut files = BTreeMap::new();
    for m in ["", "a", "a::b", "c"] {
        files.insert(m.to_string(), PathBuf::new());
    }
    assert_eq!(
        resolve(&files, "a::b", "super::Thing").as_deref(),
        Some("a")
    );
    assert_eq!(resolve(&files, "a", "b::Thing").as_deref(), Some("a::b"));
    assert_eq!(resolve(&files, "a", "crate::c::f").as_deref(), Some("c"));
    assert_eq!(resolve(&files, "a", "std::fmt").as_deref(), None);
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("x", vec!["y"]),
        ("y", vec!["z"]),
        ("z", vec!["x"]),
        ("w", vec!["x"]),
    ]
    .into_iter()
    .map(|(a, bs)| (a.to_string(), bs.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(circles(&g), vec![vec!["x", "y", "z"]]);
}
