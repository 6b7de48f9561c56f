//! The layering rules of `docs/architecture.md`, checked by reading the sources:
//!
//! 1. no app has a cycle among its modules (a module's `crate::`/`super::` paths are its
//!    edges; a `mod.rs` is the module of the items it declares itself; a file's
//!    `#[cfg(test)]` part, at its end, is not read);
//! 2. in commerce-api, `domain` and `infra` import nothing from `http`, `state`, `startup`,
//!    `config` or `seed`, and `infra` nothing from `domain`;
//! 3. the infrastructure crates (`modules/{db,cache,kafka,events}`) do not depend on the web
//!    crate or axum.
//!
//! A failure names the modules and the lines that make the cycle or break the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One module's use of another: where it is written.
#[derive(Debug, Clone)]
struct Use {
    file: String,
    line: usize,
}

/// An app's modules (`a::b`; the crate root is ``) and the uses between them.
struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeMap<String, Use>>,
}

/// The module a source file is: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` and
/// `main.rs` the root.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The line without its `//` comment (a `//` inside a string literal is kept).
fn code_of(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Every path written after `prefix` on `code`, with `{a, b::c}` groups expanded.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        // `foo_crate::x` or `self.crate::` are not this crate's paths.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand("", rest, &mut found);
    }
    found
}

/// Expands the path at the start of `text` (after `base`) into `out`.
fn expand(base: &str, text: &str, out: &mut Vec<String>) {
    let ident: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let path = format!("{base}{ident}");
    let after = &text[ident.len()..];
    if ident.ends_with("::") && after.starts_with('{') {
        // A group: split its top-level items.
        let inner = &after[1..];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&path, inner[start..i].trim(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&path, inner[start..i].trim(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        // A group spanning lines: what is on this one.
        for item in inner[start..].split(',') {
            expand(&path, item.trim(), out);
        }
    } else {
        out.push(path.trim_end_matches(':').to_owned());
    }
}

/// The longest known module that `path` (relative to the crate root) lies in.
fn owner(modules: &BTreeSet<String>, path: &str) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    (0..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
        .unwrap_or_default()
}

fn graph(app: &str) -> Graph {
    let src = workspace().join(app).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, Use>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        // A multi-line `use crate::x::{...};` is read as one line.
        let mut joined = String::new();
        let mut lines: Vec<(usize, String)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            // A file's tests come last; what they import is not the module's design.
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = code_of(line);
            if !joined.is_empty() {
                joined.push(' ');
                joined.push_str(code.trim());
                if code.contains(';') {
                    lines.push((n + 1, std::mem::take(&mut joined)));
                }
            } else if code.trim_start().starts_with("use ") && !code.contains(';') {
                joined = code.trim().to_owned();
            } else {
                lines.push((n + 1, code.to_owned()));
            }
        }
        let parent = from.rsplit_once("::").map_or("", |(p, _)| p).to_owned();
        for (line, code) in lines {
            let mut targets = paths_after(&code, "crate::");
            for rel in paths_after(&code, "super::") {
                if rel != "*" {
                    targets.push(if parent.is_empty() {
                        rel
                    } else {
                        format!("{parent}::{rel}")
                    });
                }
            }
            for target in targets {
                let to = owner(&modules, &target);
                // A module's own items, and a parent's `pub mod` of its children, are not uses.
                if to == from || to.is_empty() {
                    continue;
                }
                let place = Use {
                    file: file
                        .strip_prefix(workspace())
                        .unwrap_or(file)
                        .display()
                        .to_string(),
                    line,
                };
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert(place);
            }
        }
    }
    Graph { modules, edges }
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(out) = s.g.edges.get(v) {
            for w in out.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for m in &g.modules {
        if !s.index.contains_key(m.as_str()) {
            visit(&mut s, m);
        }
    }
    s.found
}

/// The uses inside a cycle, as `a -> b (file:line)` lines.
fn describe(g: &Graph, component: &[String]) -> String {
    let mut out = String::new();
    for from in component {
        for (to, at) in g.edges.get(from).into_iter().flatten() {
            if component.contains(to) {
                out.push_str(&format!("    {from} -> {to} ({}:{})\n", at.file, at.line));
            }
        }
    }
    out
}

const APPS: [&str; 4] = [
    "apps/commerce-api",
    "apps/commerce-collector",
    "apps/pg-simulator",
    "apps/loadgen",
];

#[test]
fn no_app_has_a_module_cycle() {
    let mut report = String::new();
    for app in APPS {
        let g = graph(app);
        assert!(g.modules.len() > 1, "{app}: no modules read");
        for component in cycles(&g) {
            report.push_str(&format!(
                "{app}: a cycle among {}:\n{}",
                component.join(", "),
                describe(&g, &component)
            ));
        }
    }
    assert!(report.is_empty(), "module cycles:\n{report}");
}

#[test]
fn the_apis_domain_and_infra_import_nothing_above_them() {
    let g = graph("apps/commerce-api");
    let top = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let above = ["http", "state", "startup", "config", "seed"];
    let mut broken = Vec::new();
    for (from, out) in &g.edges {
        let layer = top(from);
        for (to, at) in out {
            let to_layer = top(to);
            let wrong = match layer.as_str() {
                "domain" => above.contains(&to_layer.as_str()),
                "infra" => above.contains(&to_layer.as_str()) || to_layer == "domain",
                _ => false,
            };
            if wrong {
                broken.push(format!("{from} -> {to} ({}:{})", at.file, at.line));
            }
        }
    }
    assert!(g.edges.contains_key("domain::orders"), "the graph is empty");
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn infrastructure_crates_do_not_pull_the_web_stack() {
    for krate in [
        "modules/db",
        "modules/cache",
        "modules/kafka",
        "modules/events",
    ] {
        let manifest = std::fs::read_to_string(workspace().join(krate).join("Cargo.toml")).unwrap();
        let deps = manifest
            .split("\n[")
            .filter(|section| section.starts_with("dependencies]"))
            .collect::<String>();
        for web in ["commerce-web", "axum", "tower-http"] {
            assert!(
                !deps.lines().any(|l| l.starts_with(&format!("{web} ")) || l.starts_with(&format!("{web}."))),
                "{krate} depends on {web}"
            );
        }
    }
}

#[test]
fn the_reader_sees_uses_in_groups_paths_and_parents() {
    let mut found = Vec::new();
    expand(
        "",
        "domain::{orders::{self, Order}, states::X}, infra::y;",
        &mut found,
    );
    assert_eq!(
        found,
        [
            "domain::orders::self",
            "domain::orders::Order",
            "domain::states::X"
        ]
    );
    assert_eq!(
        paths_after(
            "let x = crate::infra::schema::t::table; // crate::http",
            "crate::"
        ),
        ["infra::schema::t::table", "http"]
    );
    assert_eq!(
        code_of("let u = \"http://x\"; // crate::http"),
        "let u = \"http://x\"; "
    );
    assert!(paths_after("commerce_crate::x", "crate::").is_empty());
    let modules: BTreeSet<String> = ["", "domain", "domain::orders"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(owner(&modules, "domain::orders::Order"), "domain::orders");
    assert_eq!(owner(&modules, "domain::Error"), "domain");
}
