//! The shape of `runtime/src`: no module imports from a sibling that imports back,
//! directly or around a longer loop, at any level of the tree. Read from the source:
//! every `crate::…` and `super::…` path outside comments and `#[cfg(test)]` modules is
//! an edge from the module it is written in to the module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, `["pipeline", "lane"]`; the crate root is `[]`.
type ModPath = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    match last.as_str() {
        "lib.rs" if parts.is_empty() => Some(parts),
        "main.rs" if parts.is_empty() => None,
        "mod.rs" => Some(parts),
        "tests.rs" => None, // a `#[cfg(test)] mod tests;` of its parent
        name => {
            parts.push(name.strip_suffix(".rs")?.to_string());
            Some(parts)
        }
    }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir)
        .expect("readable source dir")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn product_code(text: &str) -> String {
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths `crate::…`/`super::…` name, each resolved to an absolute module path
/// (possibly ending in an item name), with brace groups expanded.
fn references(code: &str, here: &ModPath) -> Vec<ModPath> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let start_ok = i == 0 || !ident(bytes[i - 1]);
        let base: Option<(ModPath, usize)> = if start_ok && rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if start_ok && rest.starts_with("super::") {
            // `super` is the parent of the module the code is in.
            let mut m = here.clone();
            let mut n = 0;
            while code[i + n..].starts_with("super::") {
                m.pop();
                n += "super::".len();
            }
            Some((m, n))
        } else {
            None
        };
        let Some((base, skip)) = base else {
            i += 1;
            continue;
        };
        let (paths, used) = parse_tree(&code[i + skip..]);
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            out.push(full);
        }
        i += skip + used.max(1);
    }
    out
}

/// Parses `a::b::{c, d::e}` (or a plain path) into its leaf paths; returns how many bytes
/// it read.
fn parse_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            prefix.push(s[start..i].to_string());
        }
        let group = if s[i..].starts_with("::{") {
            Some(3)
        } else if i == start && s[i..].starts_with('{') {
            Some(1)
        } else {
            None
        };
        if let Some(open) = group {
            i += open;
            let mut out = Vec::new();
            loop {
                while i < b.len() && (b[i] == b' ' || b[i] == b'\n' || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let (sub, used) = parse_tree(&s[i..]);
                for p in sub {
                    let mut full = prefix.clone();
                    full.extend(p);
                    out.push(full);
                }
                i += used.max(1);
                // skip `as x`
                while i < b.len() && b[i] != b',' && b[i] != b'}' {
                    i += 1;
                }
            }
            return (out, i);
        }
        if s[i..].starts_with("::") && i > start {
            i += 2;
            continue;
        }
        return (vec![prefix], i);
    }
}

#[test]
fn no_import_cycles_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut modules: BTreeMap<ModPath, PathBuf> = BTreeMap::new();
    for f in &all {
        if let Some(m) = module_of(&src, f) {
            modules.insert(m, f.clone());
        }
    }
    // The longest known module that is a prefix of a path.
    let resolve = |p: &ModPath| -> ModPath {
        (0..=p.len())
            .rev()
            .map(|n| p[..n].to_vec())
            .find(|m| modules.contains_key(m))
            .unwrap_or_default()
    };
    // Edges at each level: parent → (from sibling, to sibling), where a sibling is a
    // child module's name or "<self>" for the parent's own file.
    let mut levels: BTreeMap<ModPath, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut examples: BTreeMap<(ModPath, String, String), String> = BTreeMap::new();
    for (here, file) in &modules {
        let text = std::fs::read_to_string(file).expect("readable");
        for r in references(&product_code(&text), here) {
            let target = resolve(&r);
            if target == *here {
                continue;
            }
            // The deepest common ancestor, and the siblings under it.
            let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let parent = here[..common].to_vec();
            let from = here.get(common).cloned().unwrap_or_else(|| "<self>".into());
            let to = target
                .get(common)
                .cloned()
                .unwrap_or_else(|| "<self>".into());
            if from == to {
                continue;
            }
            levels
                .entry(parent.clone())
                .or_default()
                .insert((from.clone(), to.clone()));
            examples
                .entry((parent, from, to))
                .or_insert_with(|| format!("{} names {}", file.display(), r.join("::")));
        }
    }
    let mut cycles = Vec::new();
    for (parent, edges) in &levels {
        let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
        for start in &nodes {
            // Is `start` reachable from itself?
            let mut stack: Vec<(&String, Vec<&String>)> = vec![(start, vec![start])];
            let mut seen = BTreeSet::new();
            while let Some((n, path)) = stack.pop() {
                for (a, b) in edges {
                    if a != n {
                        continue;
                    }
                    if b == *start {
                        let mut cycle: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                        cycle.push(b.clone());
                        let why: Vec<String> = cycle
                            .windows(2)
                            .filter_map(|w| {
                                examples
                                    .get(&(parent.clone(), w[0].clone(), w[1].clone()))
                                    .cloned()
                            })
                            .collect();
                        cycles.push(format!(
                            "in crate::{}: {} ({})",
                            parent.join("::"),
                            cycle.join(" → "),
                            why.join("; ")
                        ));
                    } else if seen.insert(b) {
                        let mut p = path.clone();
                        p.push(b);
                        stack.push((b, p));
                    }
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    // The check sees the modules it should.
    for m in [
        &["pipeline", "lane"][..],
        &["wasm", "http", "hooks"],
        &["daemon", "http"],
    ] {
        let m: ModPath = m.iter().map(|s| s.to_string()).collect();
        assert!(modules.contains_key(&m), "{m:?} not found");
    }
}

/// The checker itself finds a cycle when there is one.
#[test]
fn the_checker_sees_a_cycle() {
    let here: ModPath = vec!["a".into(), "b".into()];
    let refs = references(
        &product_code("use super::c::X;\nuse crate::{d::{E, f::G}, h};\n// use crate::ignored;\n"),
        &here,
    );
    let refs: Vec<String> = refs.iter().map(|r| r.join("::")).collect();
    assert_eq!(refs, ["a::c::X", "d::E", "d::f::G", "h"]);
}
