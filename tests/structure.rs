//! The module graph has no cycle (#19): each module's `crate::…` references, outside its tests
//! and comments, point only "downwards". A cycle makes every module in it depend on all the
//! others, so none can be read, tested or changed alone; this test names the modules of one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code a module's graph is read from: no tests, no comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path after `crate::`, with `use crate::{a::B, c}` groups spread out.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = vec![];
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find("};").unwrap_or(group.len());
            for item in group[..end].split([',', '{', '}']) {
                let item = item.trim();
                if !item.is_empty() {
                    out.push(item.to_owned());
                }
            }
        } else {
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(path);
        }
    }
    out
}

#[test]
fn no_module_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "rs")
            && path.file_name() != Some("main.rs".as_ref())
        {
            files.insert(
                module_of(&src, path),
                std::fs::read_to_string(path).unwrap(),
            );
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &files {
        let edges = graph.entry(module.clone()).or_default();
        for path in crate_paths(&code(text)) {
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            // The longest module the path names.
            let Some(target) = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|m| modules.contains(m))
            else {
                continue;
            };
            let nested = |a: &str, b: &str| a.starts_with(&format!("{b}::"));
            if target != *module && !nested(module, &target) && !nested(&target, module) {
                edges.insert(target);
            }
        }
    }
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        cycles: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = vec![];
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.cycles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        cycles: vec![],
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    assert!(
        walk.cycles.is_empty(),
        "modules that depend on each other in a circle: {:?}",
        walk.cycles
    );
    assert!(
        graph.len() > 40,
        "the graph was read: {} modules",
        graph.len()
    );
}
