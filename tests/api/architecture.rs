//! The rooms of the crate and who may enter them (docs/architecture.md, "Who may import
//! whom"), read from the source itself so a change that breaks a rule fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Every module of the crate, by path (`["server", "oauth"]`), with its source minus comments
/// and unit tests.
fn modules() -> BTreeMap<Vec<String>, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new(SRC), &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(SRC).unwrap().with_extension("");
        let mut path: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if path.last().is_some_and(|l| l == "mod") || path == ["lib"] || path == ["main"] {
            path.pop();
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let code: String = text.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
        out.insert(path, code);
    }
    out
}

/// The module paths a source names: `crate::a::b…` (and the groups of a `use crate::a::{b, c}`),
/// and `super::x…` from `module`.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let path_at = |s: &str| -> Vec<String> {
        let mut parts = Vec::new();
        let mut rest = s;
        loop {
            let id = ident(rest);
            if id.is_empty() || !id.starts_with(|c: char| c.is_ascii_lowercase()) {
                break;
            }
            rest = &rest[id.len()..];
            parts.push(id);
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        parts
    };
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let after = &code[i + "crate::".len()..];
        let base = path_at(after);
        let tail = &after[base.iter().map(|p| p.len() + 2).sum::<usize>().min(after.len())..];
        if let Some(group) = tail.strip_prefix('{') {
            for item in group.split('}').next().unwrap_or("").split(',') {
                let mut p = base.clone();
                p.extend(path_at(item.trim()));
                out.push(p);
            }
        }
        out.push(base);
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut p: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
        p.extend(path_at(&code[i + "super::".len()..]));
        out.push(p);
    }
    out
}

/// The longest module named by `path`.
fn resolve(mods: &BTreeMap<Vec<String>, String>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|k| path[..k].to_vec()).find(|p| mods.contains_key(p))
}

/// Among the children of any module, the uses form no circle: a child may use its ancestors and
/// the parent its children, but two siblings never depend on each other, however indirectly.
#[test]
fn no_two_sibling_modules_depend_on_each_other() {
    let mods = modules();
    // parent → (child → children it uses)
    let mut graph: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut why: BTreeMap<(Vec<String>, String, String), String> = BTreeMap::new();
    for (m, code) in &mods {
        for r in references(m, code) {
            let Some(target) = resolve(&mods, &r) else { continue };
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == target.len() {
                continue;
            }
            let parent = m[..common].to_vec();
            let (from, to) = (m[common].clone(), target[common].clone());
            why.entry((parent.clone(), from.clone(), to.clone()))
                .or_insert_with(|| format!("{} → {}", m.join("::"), target.join("::")));
            graph.entry(parent).or_default().entry(from).or_default().insert(to);
        }
    }
    assert!(graph.values().map(|g| g.len()).sum::<usize>() > 20, "the graph was read: {graph:?}");
    let mut circles = Vec::new();
    for (parent, g) in &graph {
        // A path back to the start from any edge is a circle.
        for (from, tos) in g {
            for to in tos {
                let mut seen = BTreeSet::new();
                let mut stack = vec![(to.clone(), vec![from.clone(), to.clone()])];
                while let Some((at, trail)) = stack.pop() {
                    if &at == from {
                        let edges: Vec<String> = trail
                            .windows(2)
                            .map(|w| why[&(parent.clone(), w[0].clone(), w[1].clone())].clone())
                            .collect();
                        circles.push(format!(
                            "in {}: {}",
                            if parent.is_empty() { "crate".into() } else { parent.join("::") },
                            edges.join(", ")
                        ));
                        break;
                    }
                    if !seen.insert(at.clone()) {
                        continue;
                    }
                    for next in g.get(&at).into_iter().flatten() {
                        let mut t = trail.clone();
                        t.push(next.clone());
                        stack.push((next.clone(), t));
                    }
                }
            }
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

/// SQL lives in `store/` (and the audit log's own in `audit/`); nothing else names a database
/// crate.
#[test]
fn only_the_store_and_the_audit_log_speak_sql() {
    let offenders: Vec<String> = modules()
        .into_iter()
        .filter(|(m, _)| !matches!(m.first().map(String::as_str), Some("store" | "audit")))
        .filter(|(_, code)| code.contains("sqlx") || code.contains("rusqlite"))
        .map(|(m, _)| m.join("::"))
        .collect();
    assert!(offenders.is_empty(), "outside store/ and audit/: {offenders:?}");
}

/// The HTTP handlers, the console, the command line and the proxy go through the services:
/// they hold the store's handle, never one of its tables.
#[test]
fn handlers_the_cli_and_the_proxy_never_touch_a_table() {
    let tables = ["approvals", "client_keys", "clients", "console", "federation", "keys", "passkeys", "revocations"];
    let mut offenders = Vec::new();
    let mut checked = 0;
    for (m, code) in modules() {
        if !matches!(m.first().map(String::as_str), Some("server" | "cli" | "proxy")) {
            continue;
        }
        checked += 1;
        for r in references(&m, &code) {
            if r.first().is_some_and(|s| s == "store") && r.get(1).is_some_and(|t| tables.contains(&t.as_str())) {
                offenders.push(format!("{} names {}", m.join("::"), r.join("::")));
            }
        }
    }
    assert!(checked > 20, "{checked} modules checked");
    assert!(offenders.is_empty(), "{offenders:#?}");
}
