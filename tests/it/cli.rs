//! The command line: check, query, exit codes, graph diagnostics (snapshots).

use crate::support::*;

fn graph_ws() -> Ws {
    Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "bases/BUILD.kdl",
            "layer \"files\" {\n    text \"/etc/motd\" \"hi\\n\"\n}\nimage \"runtime\" {\n    from \"scratch\"\n    layers \":files\"\n}\n",
        ),
        (
            "services/api/BUILD.kdl",
            "image \"api\" {\n    from \"//bases:runtime\"\n}\n",
        ),
        (
            "services/web/BUILD.kdl",
            "image \"web\" {\n    from \"//bases:runtime\"\n}\nimage \"web-debug\" {\n    from \":web\"\n}\n",
        ),
    ])
}

/// Renders stderr with the temp dirs replaced, for snapshots.
fn redact(ws: &Ws, s: &str) -> String {
    s.replace(&ws.root().display().to_string(), "[WS]")
}

#[test]
fn check_succeeds_on_a_valid_workspace() {
    let ws = graph_ws();
    let out = ws.ok(&["check"]);
    assert_eq!(stdout(&out), "ok: 5 targets checked in 3 packages\n");
}

#[test]
fn query_rdeps_lists_every_image_built_on_a_base() {
    let ws = graph_ws();
    let out = ws.ok(&["query", "rdeps", "//bases:runtime", "--kind", "image"]);
    assert_eq!(
        stdout(&out),
        "//bases:runtime\n//services/api:api\n//services/web:web\n//services/web:web-debug\n"
    );
}

#[test]
fn query_deps_and_relative_patterns_from_a_subdirectory() {
    let ws = graph_ws();
    let out = ws
        .cmd(&["query", "deps", ":web-debug"])
        .current_dir(ws.path("services/web"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "//bases:files\n//bases:runtime\n//services/web:web\n//services/web:web-debug\n"
    );
    let out = ws
        .cmd(&["query", "targets", "..."])
        .current_dir(ws.path("services"))
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "//services/api:api\n//services/web:web\n//services/web:web-debug\n"
    );
}

#[test]
fn subtraction_after_double_dash() {
    let ws = graph_ws();
    let out = ws.ok(&["query", "targets", "--", "//...", "-//services/web/..."]);
    assert_eq!(
        stdout(&out),
        "//bases:files\n//bases:runtime\n//services/api:api\n"
    );
}

#[test]
fn query_output_json_and_dot() {
    let ws = graph_ws();
    let out = ws.ok(&["query", "deps", "//services/api", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[2]["label"], "//services/api:api");
    assert_eq!(v[2]["deps"][0]["label"], "//bases:runtime");
    assert_eq!(v[2]["deps"][0]["edge"], "from");
    let out = ws.ok(&["query", "rdeps", "//bases:runtime", "--output", "dot"]);
    let dot = stdout(&out);
    assert!(dot.starts_with("digraph imgc {"));
    assert!(
        dot.contains("\"//services/api:api\" -> \"//bases:runtime\" [label=\"from\"];"),
        "{dot}"
    );
    if have("dot") {
        let mut child = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dot.as_bytes())
            .unwrap();
        let svg = child.wait_with_output().unwrap();
        assert!(svg.status.success());
        assert!(String::from_utf8_lossy(&svg.stdout).contains("<svg"));
    }
}

#[test]
fn usage_errors_exit_2() {
    let ws = graph_ws();
    assert_eq!(ws.run(&["build", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(
        ws.run(&["query", "targets", "//a/.../b"]).status.code(),
        Some(2)
    );
    assert_eq!(ws.run(&["build", "-j", "0"]).status.code(), Some(2));
    assert_eq!(ws.run(&["frobnicate"]).status.code(), Some(2));
}

/// Writes `files` over the graph workspace; `imgc check` must exit 1 and print
/// the diagnostics of snapshot `snapshot`.
fn check_fails_with(files: &[(&str, &str)], snapshot: &str) {
    let ws = graph_ws();
    for (path, content) in files {
        ws.write(path, content);
    }
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(snapshot, redact(&ws, &stderr(&out)));
}

#[test]
fn pattern_matching_nothing_is_an_error_with_a_suggestion() {
    let ws = graph_ws();
    let out = ws.run(&["check", "//services/apu"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("pattern_matching_nothing", redact(&ws, &stderr(&out)));
}

#[test]
fn unknown_label_reports_file_line_and_suggestion() {
    check_fails_with(
        &[(
            "services/api/BUILD.kdl",
            "image \"api\" {\n    from \"//bases:runtme\"\n}\n",
        )],
        "unknown_label",
    );
}

#[test]
fn cycle_is_printed_as_the_whole_path() {
    check_fails_with(
        &[(
            "bases/BUILD.kdl",
            "image \"runtime\" {\n    from \"//services/web:web\"\n}\n",
        )],
        "cycle",
    );
}

#[test]
fn image_from_a_layer_is_an_error() {
    check_fails_with(
        &[(
            "services/api/BUILD.kdl",
            "image \"api\" {\n    from \"//bases:files\"\n}\n",
        )],
        "from_a_layer",
    );
}

#[test]
fn all_problems_of_a_run_are_reported() {
    let ws = graph_ws();
    ws.write(
        "services/api/BUILD.kdl",
        "image \"api\" {\n    from \"//nope:x\"\n}\n",
    );
    ws.write(
        "services/web/BUILD.kdl",
        "image \"web\" {\n    from \"//bases:files\"\n}\n",
    );
    let out = ws.run(&["check"]);
    let err = stderr(&out);
    assert!(err.contains("E010"), "{err}");
    assert!(err.contains("E012"), "{err}");
    assert!(err.contains("error: 2 problems found"), "{err}");
}

#[test]
fn outside_a_workspace_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(imgc_bin())
        .current_dir(dir.path())
        .args(["check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("E017"), "{}", stderr(&out));
}

#[test]
fn dash_c_runs_elsewhere() {
    let ws = graph_ws();
    let out = std::process::Command::new(imgc_bin())
        .arg("-C")
        .arg(ws.path("services"))
        .args(["query", "targets", "..."])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "//services/api:api\n//services/web:web\n//services/web:web-debug\n"
    );
}

#[test]
fn help_texts() {
    let ws = graph_ws();
    let out = ws.ok(&["--help"]);
    insta::assert_snapshot!("help", stdout(&out));
    let out = ws.ok(&["build", "--help"]);
    insta::assert_snapshot!("build_help", stdout(&out));
    let out = ws.ok(&["pin", "--help"]);
    insta::assert_snapshot!("pin_help", stdout(&out));
}
