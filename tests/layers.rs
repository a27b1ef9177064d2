//! The layers hold: every module imports only what `src/lib.rs`'s module
//! map allows (lower layers, and the same-layer modules its row names), no
//! module is missing from the map, and no two modules import each other
//! through any path. Reads the sources; needs no service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

struct Row {
    layer: u32,
    also: BTreeSet<String>,
}

/// The rows `| L<n> | [`module`] | owns | `a`, `b` |` of lib.rs's table.
fn module_map(lib: &str) -> BTreeMap<String, Row> {
    let mut map = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | L") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let layer: u32 = cells[0].parse().expect("layer number");
        let module = cells[1]
            .trim_start_matches("[`")
            .trim_end_matches("`]")
            .to_string();
        let also = cells[3]
            .split(',')
            .map(|s| s.trim().trim_matches('`').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        map.insert(module, Row { layer, also });
    }
    map
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate modules a file names in code (`crate::x`, and `crate::Ekko`
/// for `ekko`), comments left out.
fn imports(text: &str, modules: &BTreeMap<String, Row>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "Ekko" {
                found.insert("ekko".to_string());
            } else if modules.contains_key(&name) {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_what_the_map_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
    let map = module_map(&lib);
    assert!(map.len() > 30, "the module map was not found in lib.rs");

    // Every `pub mod` of lib.rs has a row, and every row a module.
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let mapped: BTreeSet<String> = map.keys().cloned().collect();
    assert_eq!(
        declared, mapped,
        "lib.rs's modules and its module map differ"
    );

    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&root).expect("under src");
        let first = rel.components().next().expect("a component");
        let top = first.as_os_str().to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "bin" {
            continue;
        }
        let row = map
            .get(&module)
            .unwrap_or_else(|| panic!("{} is in no module of the map", rel.display()));
        let text = std::fs::read_to_string(&file).expect("readable file");
        for used in imports(&text, &map) {
            if used == module {
                continue;
            }
            let target = &map[&used];
            let allowed =
                target.layer < row.layer || (target.layer == row.layer && row.also.contains(&used));
            if !allowed {
                wrong.push(format!(
                    "{} (L{}) imports {used} (L{})",
                    rel.display(),
                    row.layer,
                    target.layer
                ));
            }
            edges.entry(module.clone()).or_default().insert(used);
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );

    // No circles: a depth-first search finds no back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) {
        match state.get(m) {
            Some(2) => return,
            Some(1) => panic!("import circle: {} -> {m}", path.join(" -> ")),
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for n in edges.get(m).into_iter().flatten() {
            visit(n, edges, state, path);
        }
        path.pop();
        state.insert(m.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for m in map.keys() {
        visit(m, &edges, &mut state, &mut Vec::new());
    }
}

#[test]
fn the_api_never_touches_the_catalog_or_the_store() {
    let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut files = vec![api.with_extension("rs")];
    rust_files(&api, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for forbidden in ["crate::db", "crate::store", "diesel::"] {
                assert!(
                    !code.contains(forbidden),
                    "{}:{}: {forbidden} in the API",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn no_file_is_over_700_lines_and_the_worker_and_conductor_are_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    for file in files {
        let lines = std::fs::read_to_string(&file)
            .expect("readable")
            .lines()
            .count();
        assert!(lines <= 700, "{} has {lines} lines", file.display());
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "worker.rs" | "reports.rs") {
            assert!(lines < 500, "{} has {lines} lines", file.display());
        }
    }
}
