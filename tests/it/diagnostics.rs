//! One fixture workspace per diagnostic kind, checked through the real CLI.
//!
//! Each directory under `tests/fixtures/diagnostics/<case>/` is a tiny workspace
//! (`imgc.kdl` and `BUILD.kdl` files). `imgc check` must exit 1, and its rendered
//! diagnostics (code, file:line:col, message, the source line with a caret,
//! `help:`) are compared with the snapshot `snapshots/it__diagnostics__<case>.snap`.

use crate::support::*;
use std::path::{Path, PathBuf};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diagnostics")
}

/// Runs `imgc check` on a copy of the fixture and returns its stderr.
fn render_case(case: &str) -> String {
    let ws = Ws::copy_of(&fixtures_dir().join(case));
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{case}: {}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "{case}: diagnostics belong on stderr"
    );
    stderr(&out)
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
    not_on_required_base,
    http_file,
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
