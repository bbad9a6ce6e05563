//! Snapshot tests of the spec parser's diagnostics.
//!
//! Each directory under `tests/fixtures/diagnostics/<case>/` is a tiny workspace
//! (`imgc.kdl` and `BUILD.kdl` files). The test parses every file directly through
//! the library, renders each diagnostic in its short form followed by its `help:`
//! line, and compares the result with `tests/snapshots/diagnostics__<case>.snap`.

use imgc::diag::{Diag, Sources};
use imgc::spec::{parse_build_file, parse_workspace_file};
use std::path::{Path, PathBuf};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diagnostics")
}

/// Workspace-relative paths (with `/`) of the spec files below `root`, sorted.
fn spec_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("fixture directory is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some("imgc.kdl" | "BUILD.kdl")
            ) {
                let rel = path.strip_prefix(root).expect("path below root");
                let parts: Vec<_> = rel.iter().map(|c| c.to_string_lossy()).collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    out
}

/// Parses every spec file of a fixture and renders all diagnostics.
fn render_case(case: &str) -> String {
    let root = fixtures_dir().join(case);
    let mut sources = Sources::default();
    let mut diags: Vec<Diag> = Vec::new();
    for rel in spec_files(&root) {
        let text = std::fs::read_to_string(root.join(&rel)).expect("fixture is UTF-8");
        let file = sources.add(rel.clone(), text.clone());
        if rel == "imgc.kdl" {
            diags.extend(parse_workspace_file(file, &text).1);
        } else {
            let package = rel.strip_suffix("BUILD.kdl").unwrap_or("");
            let package = package.trim_end_matches('/');
            diags.extend(parse_build_file(file, package, &text).1);
        }
    }
    let mut out = String::new();
    for d in &diags {
        out.push_str(&d.short(&sources));
        out.push('\n');
        if let Some(help) = &d.help {
            out.push_str(&format!("  help: {help}\n"));
        }
    }
    out
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($case)),*];
        $(
            #[test]
            fn $case() {
                let rendered = render_case(stringify!($case));
                assert!(!rendered.is_empty(), "fixture produced no diagnostics");
                insta::assert_snapshot!(stringify!($case), rendered);
            }
        )*
    };
}

cases!(
    syntax,
    unknown_node,
    unknown_property,
    wrong_type,
    type_annotation,
    missing_value,
    too_many_values,
    duplicate_singleton,
    bad_mode,
    bad_owner,
    path_escaping,
    duplicate_target,
    bad_label,
    invalid_value,
    several_errors,
);

#[test]
fn every_fixture_has_a_test() {
    let mut dirs: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures exist")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut cases: Vec<String> = CASES.iter().map(|c| c.to_string()).collect();
    cases.sort();
    assert_eq!(dirs, cases);
}
