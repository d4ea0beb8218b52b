//! The crate's modules form a strict downward order (datapath/src/lib.rs): `checksum` < ring and
//! buffers (`uring`) < block devices (`bdev`) < `runtime` < `transport` < layers (`layer`) < front ends
//! (`frontend`) < `control` < `daemon`. This test reads every source file's code (comments
//! left out) and fails on any path into a module above the file's own.

use std::path::{Path, PathBuf};

const ORDER: [&str; 9] = [
    "checksum",
    "uring",
    "bdev",
    "runtime",
    "transport",
    "layer",
    "frontend",
    "control",
    "daemon",
];

fn level(module: &str) -> Option<usize> {
    ORDER.iter().position(|m| *m == module)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src readable") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every top-level module named by a `crate::` path in `code`, grouped imports included.
fn referenced(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

fn code_only(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .expect("a name");
        let Some(mine) = level(&top) else {
            // lib.rs and main.rs stand above everything.
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(f).expect("readable");
        for m in referenced(&code_only(&text)) {
            if let Some(theirs) = level(&m)
                && theirs > mine
            {
                violations.push(format!("{} ({top}) uses crate::{m}", rel.display()));
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} files were checked: is the tree where it should be?"
    );
    assert!(
        violations.is_empty(),
        "modules importing from above them:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_paths() {
    assert_eq!(
        referenced("use crate::{bdev::X, runtime::Y};\nlet a = crate::layer::mirror::Z;"),
        vec!["bdev", "runtime", "layer"]
    );
    assert_eq!(
        code_only("// crate::daemon\nuse crate::uring;"),
        "use crate::uring;"
    );
}
