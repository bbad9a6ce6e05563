//! The base standardization policy of `imgc.kdl` through the real CLI: `check` and
//! `build` enforce it on the images they work on, the rules themselves are checked,
//! other commands still work, and a cached parse of `imgc.kdl` keeps it.

use crate::support::*;

const POLICY: &str =
    "workspace {}\n\npolicy {\n    require-base \"//bases:runtime\" for=\"//services/...\"\n}\n";

const BASES: &str = r#"image "runtime" {
    from "scratch"
    layer {
        text "/etc/os-release" "ID=runtime\n"
    }
}
image "python" {
    from ":runtime"
    layer {
        text "/usr/bin/python3" "python\n"
    }
}
image "other" {
    from "scratch"
}
layer "certs" {
    text "/etc/ssl/certs/ca.pem" "ca\n"
}
"#;

/// Two services: `api` on `from_api`, `ml` on `//bases:python` (itself on runtime).
fn ws(from_api: &str) -> Ws {
    Ws::new(&[
        ("imgc.kdl", POLICY),
        ("bases/BUILD.kdl", BASES),
        (
            "services/api/BUILD.kdl",
            &format!(
                "image \"api\" {{\n    from \"{from_api}\"\n    layer {{\n        text \"/app/api\" \"api\\n\"\n    }}\n}}\n"
            ),
        ),
        (
            "services/ml/BUILD.kdl",
            "image \"ml\" {\n    from \"//bases:python\"\n}\n",
        ),
    ])
}

fn redact(ws: &Ws, s: &str) -> String {
    s.replace(&ws.root().display().to_string(), "[WS]")
}

#[test]
fn check_passes_when_images_are_on_the_base_directly_or_through_others() {
    let ws = ws("//bases:runtime");
    let out = ws.ok(&["check"]);
    assert!(stdout(&out).starts_with("ok: "), "{}", stdout(&out));
}

#[test]
fn check_fails_at_the_from_line_and_names_the_rule() {
    let ws = ws("//bases:other");
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "E050\n\n  × services/api/BUILD.kdl:2:10: `//services/api:api` is built on `//bases:other`, \
             not on `//bases:runtime` that the policy in imgc.kdl:4 requires"
        ),
        "{err}"
    );
    assert!(err.contains("error: 1 problem found"), "{err}");
}

/// The cascade plan of a build the policy refuses says so, as the build would.
#[test]
fn a_dry_run_reports_the_policy_violation_too() {
    let ws = ws("scratch");
    let out = ws.run(&["build", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("E050"), "{}", stderr(&out));
}

#[test]
fn build_fails_on_a_violation_before_building_anything() {
    let ws = ws("scratch");
    let out = ws.run(&["build", "--message-format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("E050"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "no build event: {}", stdout(&out));
    assert!(!ws.path("imgc-out").exists(), "nothing was written");
    // Fixing the `from` line is all it takes.
    ws.write(
        "services/api/BUILD.kdl",
        "image \"api\" {\n    from \"//bases:runtime\"\n}\n",
    );
    let images = ws.build(&[]).images();
    assert!(
        images.contains_key("//services/api:api") && images.contains_key("//services/ml:ml"),
        "{images:?}"
    );
}

#[test]
fn a_build_or_check_of_conforming_images_is_not_failed_by_another() {
    let ws = ws("//bases:other");
    // The selection (and what it depends on) is checked, not the whole workspace.
    ws.ok(&["check", "//services/ml"]);
    let events = ws.build(&["//services/ml"]);
    assert_eq!(
        events.images().keys().cloned().collect::<Vec<_>>(),
        ["//services/ml:ml"]
    );
    let out = ws.run(&["build", "//services/..."]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("E050"), "{}", stderr(&out));
}

#[test]
fn other_commands_still_work_on_a_workspace_that_breaks_the_policy() {
    let ws = ws("//bases:other");
    // To find what is built on the wrong base, query must not refuse to run.
    let out = ws.ok(&["query", "rdeps", "//bases:other", "--kind", "image"]);
    assert_eq!(stdout(&out), "//bases:other\n//services/api:api\n");
}

#[test]
fn bad_rules_are_reported_in_imgc_kdl() {
    let ws = ws("//bases:runtime");
    ws.write(
        "imgc.kdl",
        "workspace {}\npolicy {\n    require-base \"//bases:runtme\" for=\"//services/...\"\n    \
         require-base \"//bases:certs\"\n    require-base \"//bases:runtime\" for=\"//service/...\"\n}\n",
    );
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    insta::assert_snapshot!("bad_rules", redact(&ws, &stderr(&out)));
}

#[test]
fn malformed_rules_fail_every_command_like_any_imgc_kdl_error() {
    let ws = ws("//bases:runtime");
    ws.write(
        "imgc.kdl",
        "workspace {}\npolicy {\n    require-base \"bases:runtime\" for=\"services/...\"\n    requires-base \"//bases:runtime\"\n}\n",
    );
    let out = ws.run(&["query", "targets", "//..."]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    insta::assert_snapshot!("malformed_rules", redact(&ws, &stderr(&out)));
}

#[test]
fn a_cached_parse_of_imgc_kdl_keeps_the_policy_and_its_spans() {
    let ws = ws("//bases:other");
    let first = ws.run(&["check"]);
    assert_eq!(first.status.code(), Some(1));
    // imgc.kdl parsed without a diagnostic: the second run takes it from the parse cache.
    let stats = stdout(&ws.ok(&["cache", "stats"]));
    assert!(
        stats.lines().any(|l| l == "parsed files     4"),
        "imgc.kdl and three BUILD.kdl files are cached: {stats}"
    );
    let second = ws.run(&["check"]);
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(stderr(&first), stderr(&second));
    assert!(
        stderr(&second).contains("imgc.kdl:4"),
        "{}",
        stderr(&second)
    );
}
