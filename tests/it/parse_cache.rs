//! The parse cache: a warm `imgc check` says exactly what a cold one says, an edit
//! is always seen, and a damaged or unusable cache only costs time.

use crate::support::*;

fn check(ws: &Ws) -> (Option<i32>, String, String) {
    let out = ws.run(&["check"]);
    (out.status.code(), stdout(&out), stderr(&out))
}

fn parsed_files(ws: &Ws) -> String {
    let out = stdout(&ws.ok(&["cache", "stats"]));
    out.lines()
        .find(|l| l.starts_with("parsed files"))
        .unwrap_or_else(|| panic!("no `parsed files` in {out}"))
        .to_string()
}

#[test]
fn a_warm_check_gives_the_same_output() {
    let ws = small_ws();
    let cold = check(&ws);
    assert_eq!(cold.0, Some(0), "{}", cold.2);
    assert_eq!(parsed_files(&ws), "parsed files     3");
    let warm = check(&ws);
    assert_eq!(cold, warm);
    let graph = ws.ok(&["query", "deps", "//app"]);
    assert!(
        stdout(&graph).contains("//base:files"),
        "{}",
        stdout(&graph)
    );
}

#[test]
fn an_edit_is_seen_even_when_the_old_text_was_cached() {
    let ws = small_ws();
    let good = std::fs::read_to_string(ws.path("base/BUILD.kdl")).unwrap();
    check(&ws);

    // A parse error in the edited file.
    ws.write(
        "base/BUILD.kdl",
        &good.replace("mode=\"1777\"", "mode=\"9999\""),
    );
    let (code, _, err) = check(&ws);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("9999"), "{err}");
    // Twice: files with errors are never cached, the error stays.
    let again = check(&ws);
    assert_eq!((again.0, again.2), (Some(1), err));

    // A resolve error: the file parses cleanly, so its result is cached, and the
    // error (pointing into it) must read the same from the cached spans.
    ws.write(
        "base/BUILD.kdl",
        &good.replace("layer \"files\"", "layer \"renamed\""),
    );
    let (code, _, err) = check(&ws);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("//base:files"), "{err}");
    let again = check(&ws);
    assert_eq!((again.0, again.2), (Some(1), err));

    // Back to the original text: a hit again, and fine.
    ws.write("base/BUILD.kdl", &good);
    assert_eq!(check(&ws).0, Some(0));
}

#[test]
fn garbage_in_the_cache_is_parsed_again() {
    let ws = small_ws();
    let cold = check(&ws);
    let db = ws.cache.path().join("v1/imgc.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n = conn
        .execute("UPDATE parse_cache SET value = '{\"garbage\": [1, 2'", [])
        .unwrap();
    assert_eq!(n, 3);
    drop(conn);
    let warm = check(&ws);
    assert_eq!(cold, warm, "no warning, same result");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let bad: i64 = conn
        .query_row(
            "SELECT count(*) FROM parse_cache WHERE value LIKE '{\"garbage%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bad, 0, "the bad values were replaced");
}

#[test]
fn an_unusable_cache_directory_is_only_a_warning() {
    let ws = small_ws();
    let not_a_dir = ws.cache.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let out = std::process::Command::new(imgc_bin())
        .current_dir(ws.root())
        .arg("--cache-dir")
        .arg(&not_a_dir)
        .arg("check")
        .env("NO_COLOR", "1")
        .env_remove("IMGC_CACHE_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok:"), "{}", stdout(&out));
    assert!(stderr(&out).contains("warning:"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("parsing every file"),
        "{}",
        stderr(&out)
    );
}
