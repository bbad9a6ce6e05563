//! Progress on a terminal: `imgc build` says what it is doing from its first
//! moment (before discovery, while it keys and checks) on one status line that
//! the build's bar takes over, and leaves nothing of it behind; a stderr that is
//! not a terminal, and JSON output, get none of it. Run on a real
//! pseudo-terminal ([`pty`]), the screen it leaves checked by a small terminal
//! emulation. Behaviour only: no timing.

use crate::support::pty;
use crate::support::*;

/// What `imgc ARGS` wrote to a terminal: its exit code, the text written (escape
/// sequences removed) and the screen left.
fn on_terminal(ws: &Ws, args: &[&str]) -> (i32, String, Vec<String>) {
    let (status, bytes) = pty::run(ws.cmd(args));
    let screen = pty::screen(&bytes);
    (status.code().unwrap(), pty::written_text(&bytes), screen)
}

/// What the status line says in some phase (see `report::Progress::status` and
/// its callers): none of it may be left on the screen.
const STATUS_WORDS: [&str; 17] = [
    "checking what changed",
    "loading the workspace",
    "discovering packages",
    "reading BUILD.kdl",
    "looking up",
    "parsing BUILD.kdl",
    "parse results",
    "packages parsed",
    "checking the policy",
    "stale layouts",
    "opening the cache",
    "file-hash memo",
    "keying targets",
    "building ",
    " started)",
    "recording what",
    "[0/",
];

/// Panics naming the first line of `screen` that shows a spinner or status text.
fn assert_no_status_left(screen: &[String]) {
    for line in screen {
        assert!(
            !pty::has_spinner(line) && !STATUS_WORDS.iter().any(|w| line.contains(w)),
            "status left on the screen: {line:?}\nscreen:\n{}",
            screen.join("\n")
        );
    }
}

fn last_nonempty(screen: &[String]) -> &str {
    screen
        .iter()
        .rev()
        .find(|l| !l.is_empty())
        .map(String::as_str)
        .unwrap_or("")
}

/// The status texts of the live line.
const STATUS: [&str; 4] = [
    "checking what changed since the last build",
    "discovering packages",
    "parsing BUILD.kdl files",
    "keying targets and checking the cache",
];

#[test]
fn a_build_on_a_terminal_says_what_it_does_before_the_first_target_line_and_leaves_only_results() {
    let ws = small_ws();
    let (code, written, screen) = on_terminal(&ws, &["build"]);
    assert_eq!(code, 0, "{written}");
    let first_target = written.find("] built ").expect("no target line");
    for s in STATUS {
        let at = written
            .find(s)
            .unwrap_or_else(|| panic!("never said {s:?}: {written}"));
        if s != "keying targets and checking the cache" {
            assert!(at < first_target, "{s:?} after the first target line");
        }
    }
    // Only results are left: each target line whole, the layouts, the summary last.
    assert_no_status_left(&screen);
    let lines = shown(&screen);
    assert_eq!(
        lines.len(),
        8,
        "5 targets, 2 layouts, the summary: {screen:#?}"
    );
    let (built, images): (Vec<&str>, Vec<&str>) =
        lines[..7].iter().partition(|l| l.contains("] built "));
    assert_eq!(built.len(), 5, "{screen:#?}");
    for line in built {
        assert!(
            line.starts_with('[') && line.ends_with("(never built)"),
            "{line:?}"
        );
    }
    let mut images = images;
    images.sort();
    assert!(
        images[0].starts_with("//app:app imgc-out/app/app sha256:"),
        "{screen:#?}"
    );
    assert!(
        images[1].starts_with("//base:base imgc-out/base/base sha256:"),
        "{screen:#?}"
    );
    let summary = last_nonempty(&screen);
    assert!(
        summary.starts_with("2 images, 5 actions run, 0 from cache, ") && summary.ends_with(" s"),
        "{summary:?}"
    );
}

#[test]
fn the_fast_path_on_a_terminal_says_what_it_checks_and_leaves_only_results() {
    let ws = small_ws();
    ws.build(&[]);
    ws.build(&[]);
    imgc::snapshot::pretend_older_files(
        &ws.cache.path().join("v1"),
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let (code, written, screen) = on_terminal(&ws, &["build"]);
    assert_eq!(code, 0, "{written}");
    assert!(written.contains("checking what changed since the last build"));
    // Answered from the snapshot: no discovery.
    assert!(!written.contains("discovering packages"), "{written}");
    assert_no_status_left(&screen);
    let lines = shown(&screen);
    assert_eq!(lines.len(), 3, "two layouts and the summary: {screen:#?}");
    assert!(lines[0].starts_with("//app:app imgc-out/app/app sha256:"));
    assert!(lines[1].starts_with("//base:base imgc-out/base/base sha256:"));
    assert!(lines[2].starts_with("2 images, 0 actions run, 5 from cache, "));
}

#[test]
fn a_build_failing_on_a_terminal_leaves_its_error_and_no_status_line() {
    let ws = small_ws();
    ws.write("app/BUILD.kdl", "layer \"code\" {\n    bogus\n}\n");
    let (code, written, screen) = on_terminal(&ws, &["build"]);
    assert_eq!(code, 1, "{written}");
    assert!(written.contains("discovering packages"), "{written}");
    assert_no_status_left(&screen);
    assert_eq!(
        last_nonempty(&screen),
        "error: 1 problem found",
        "{screen:#?}"
    );
}

#[test]
fn progress_goes_to_a_terminal_only_never_to_a_pipe_json_or_a_dumb_terminal() {
    let ws = small_ws();
    // A pipe: the target lines and the summary, nothing else.
    let out = ws.ok(&["build"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 6, "{stderr}");
    assert!(
        lines[..5]
            .iter()
            .all(|l| l.starts_with('[') && l.contains("] built "))
    );
    assert!(lines[5].starts_with("2 images, 5 actions run, 0 from cache, "));
    for s in STATUS {
        assert!(!stderr.contains(s), "{s:?} in {stderr}");
    }

    // JSON on a terminal: every line an event, no status.
    std::fs::remove_dir_all(ws.path("imgc-out")).unwrap();
    let (status, bytes) = pty::run(ws.cmd(&["build", "--message-format", "json"]));
    let written = pty::written_text(&bytes);
    assert!(status.success(), "{written}");
    assert!(
        !bytes.contains(&0x1b) && !pty::has_spinner(&written),
        "{written:?}"
    );
    let events: Vec<&str> = written.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(events.len() > 5, "{written:?}");
    for line in events {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON event: {line:?}: {e}"));
    }

    // A terminal that cannot move its cursor: plain lines, as on a pipe.
    std::fs::remove_dir_all(ws.path("imgc-out")).unwrap();
    let mut cmd = ws.cmd(&["build"]);
    cmd.env("TERM", "dumb");
    let (status, bytes) = pty::run(cmd);
    assert!(status.success());
    let written = pty::written_text(&bytes);
    assert!(!bytes.contains(&0x1b), "{written:?}");
    for s in STATUS {
        assert!(!written.contains(s), "{s:?} in {written}");
    }
    assert!(
        written.contains("2 images, 0 actions run, 5 from cache, "),
        "{written}"
    );
}

/// The lines left on the screen, blank ones left out.
fn shown(screen: &[String]) -> Vec<&str> {
    screen
        .iter()
        .map(String::as_str)
        .filter(|l| !l.is_empty())
        .collect()
}
