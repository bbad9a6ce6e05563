//! The no-op fast path (`imgc::snapshot`): a build or check whose every recorded
//! stat is unchanged answers from the snapshot of the last one; anything that
//! changes the answer sends it down the full path. Each test here changes one
//! thing the answer depends on and checks that the next build sees it.
//!
//! Files a test just wrote are within the racy window of the build that follows,
//! so no snapshot would ever be trusted in a test; [`age`] makes the snapshots say
//! their build started an hour later (what a test cannot do to a file's ctime),
//! so only the stat comparison decides. [`racy_files_force_the_full_path`] checks
//! the window itself without it.

use crate::support::*;
use std::time::Duration;

/// Makes the snapshots in `ws`'s cache trust every file older than an hour from now.
fn age(ws: &Ws) {
    let n =
        imgc::snapshot::pretend_older_files(&ws.cache.path().join("v1"), Duration::from_secs(3600))
            .unwrap();
    assert!(n > 0, "no snapshot to age");
}

fn from_snapshot(e: &Events) -> bool {
    e.summary()["snapshot"] == true
}

/// Built cold, then again (the no-op that writes the snapshot), aged: the next
/// build answers from the snapshot.
fn primed(ws: &Ws) -> Events {
    primed_with(ws, &[])
}

fn primed_with(ws: &Ws, args: &[&str]) -> Events {
    ws.build(args);
    let full = ws.build(args);
    assert!(!from_snapshot(&full));
    assert!(full.ran().is_empty());
    age(ws);
    let fast = ws.build(args);
    assert!(from_snapshot(&fast), "{:?}", fast.summary());
    fast
}

/// The build after a change: full path, and what ran.
/// That `label` ran (the full path noticed what changed).
fn assert_ran(e: &Events, label: &str) {
    assert!(
        e.ran().iter().any(|l| l == label),
        "{label} did not run: {:?}",
        e.ran()
    );
}

fn after_change(ws: &Ws) -> Events {
    after_change_with(ws, &[])
}

fn after_change_with(ws: &Ws, args: &[&str]) -> Events {
    let e = ws.build(args);
    assert!(
        !from_snapshot(&e),
        "answered from the snapshot after a change"
    );
    e
}

#[test]
fn noop_build_from_the_snapshot_prints_what_the_full_build_printed() {
    let ws = small_ws();
    ws.build(&[]);
    let full = ws.build(&[]);
    let full_human = ws.ok(&["build"]);
    age(&ws);
    let fast = ws.build(&[]);
    assert!(from_snapshot(&fast));
    assert!(!from_snapshot(&full));
    let finished = |e: &Events| {
        let mut v: Vec<String> = e
            .0
            .iter()
            .filter(|e| {
                e["event"] == "finished" || e["event"] == "materialized" || e["event"] == "planned"
            })
            .map(|e| e.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(finished(&fast), finished(&full));
    for field in [
        "images",
        "ran",
        "cached",
        "local_hits",
        "remote_hits",
        "failed",
    ] {
        assert_eq!(fast.summary()[field], full.summary()[field], "{field}");
    }
    assert_eq!(summary_count(&fast, "ran"), 0);
    // Human output: the same result lines on stdout.
    let fast_human = ws.ok(&["build"]);
    assert_eq!(stdout(&fast_human), stdout(&full_human));
}

#[test]
fn racy_files_force_the_full_path() {
    let ws = small_ws();
    ws.build(&[]);
    ws.build(&[]);
    // Every file was written within the racy window of the build that wrote
    // the snapshot: it is not trusted, whatever the stat data says.
    let e = ws.build(&[]);
    assert!(!from_snapshot(&e));
    assert!(e.ran().is_empty());
}

#[test]
fn same_size_build_file_edit_is_noticed() {
    let ws = small_ws();
    primed(&ws);
    let p = ws.path("base/BUILD.kdl");
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&p).unwrap());
    let text = std::fs::read_to_string(&p).unwrap();
    let changed = text.replace("PATH=\"/bin\"", "PATH=\"/sbn\"");
    assert_eq!(changed.len(), text.len());
    assert_ne!(changed, text);
    std::fs::write(&p, changed).unwrap();
    filetime::set_file_mtime(&p, mtime).unwrap();
    let e = after_change(&ws);
    assert!(
        e.ran().contains(&"//base:base".to_string()),
        "{:?}",
        e.ran()
    );
}

#[test]
fn edited_input_file_is_noticed() {
    let ws = small_ws();
    primed(&ws);
    ws.write("app/src/main.txt", "hello, again\n");
    let e = after_change(&ws);
    assert_ran(&e, "//app:code");
}

#[test]
fn touched_but_unchanged_file_is_still_a_noop() {
    let ws = small_ws();
    primed(&ws);
    filetime::set_file_mtime(ws.path("app/run.sh"), filetime::FileTime::now()).unwrap();
    let e = ws.build(&[]);
    assert!(e.ran().is_empty(), "{:?}", e.ran());
    assert!(!from_snapshot(&e));
}

/// A workspace whose layer copies a hidden directory and globs below another:
/// the package search does not list hidden directories, so only what the
/// layer's walk recorded can notice a change there.
fn hidden_ws() -> Ws {
    Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n}\n",
        ),
        (
            "svc/BUILD.kdl",
            r#"
layer "conf" {
    copy ".data" to="/srv/data"
    copy ".conf/**/*.toml" to="/etc/svc/"
}
image "svc" {
    from "scratch"
    layers ":conf"
}
"#,
        ),
        ("svc/.data/sub/a.txt", "a\n"),
        ("svc/.conf/a.toml", "a = 1\n"),
        ("svc/.conf/sub/b.toml", "b = 1\n"),
    ])
}

#[test]
fn new_file_in_a_copied_directory_is_noticed() {
    let ws = small_ws();
    primed(&ws);
    ws.write("app/src/lib/new.txt", "new\n");
    let e = after_change(&ws);
    assert_ran(&e, "//app:code");
    let ws = hidden_ws();
    primed(&ws);
    ws.write("svc/.data/sub/new.txt", "new\n");
    let e = after_change(&ws);
    assert_ran(&e, "//svc:conf");
}

#[test]
fn deleted_input_file_is_noticed() {
    let ws = small_ws();
    primed(&ws);
    std::fs::remove_file(ws.path("app/src/lib/util.txt")).unwrap();
    let e = after_change(&ws);
    assert_ran(&e, "//app:code");
}

#[test]
fn new_file_matching_a_glob_is_noticed() {
    let ws = hidden_ws();
    primed(&ws);
    // Deep below the glob's base: its directory's mtime, not the base's, changes.
    ws.write("svc/.conf/sub/c.toml", "c = 1\n");
    let e = after_change(&ws);
    assert_ran(&e, "//svc:conf");
}

#[test]
fn new_package_is_noticed() {
    let ws = small_ws();
    // A directory no layer reads: only the package search lists it.
    ws.write("tools/README", "tools\n");
    let before = primed(&ws);
    ws.write(
        "tools/deep/BUILD.kdl",
        "image \"tool\" {\n    from \"//base:base\"\n}\n",
    );
    let e = after_change(&ws);
    assert_eq!(
        summary_count(&e, "images"),
        summary_count(&before, "images") + 1
    );
    assert!(e.images().contains_key("//tools/deep:tool"));
}

#[test]
fn deleted_blob_in_the_cache_is_noticed() {
    let ws = small_ws();
    let fast = primed(&ws);
    let (_, code) = fast.outputs_with_kind()["//app:code"].clone();
    let blob = ws
        .cache
        .path()
        .join("v1/cas/sha256")
        .join(&code["sha256:".len().."sha256:".len() + 2])
        .join(&code["sha256:".len()..]);
    std::fs::remove_file(&blob).unwrap();
    let e = after_change(&ws);
    assert_ran(&e, "//app:code");
    assert_hashes_to_its_name(&blob);
}

#[test]
fn deleted_or_damaged_blob_in_the_output_is_noticed() {
    let ws = small_ws();
    primed(&ws);
    let blobs = ws.layout("app", "app").join("blobs/sha256");
    let mut files: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::remove_file(&files[0]).unwrap();
    after_change(&ws);
    assert!(files[0].exists(), "the deleted blob was not put back");
    assert_blobs_hash_to_their_names(&blobs);
    age(&ws);
    assert!(from_snapshot(&ws.build(&[])));
    // Damaged in place (a hard link to the CAS file: same size).
    flip_byte(&files[1]);
    after_change(&ws);
    assert_blobs_hash_to_their_names(&blobs);
}

#[test]
fn deleted_layout_is_noticed() {
    let ws = small_ws();
    primed(&ws);
    std::fs::remove_dir_all(ws.layout("app", "app")).unwrap();
    after_change(&ws);
    assert!(ws.layout("app", "app").join("index.json").is_file());
    // Built by label (no sweep of the output directory): a blob unlinked
    // from the layout.
    primed_with(&ws, &["//app:app"]);
    std::fs::remove_file(ws.layout("app", "app").join("oci-layout")).unwrap();
    after_change_with(&ws, &["//app:app"]);
    assert!(ws.layout("app", "app").join("oci-layout").is_file());
}

#[test]
fn stale_layout_put_in_the_output_is_removed() {
    let ws = small_ws();
    ws.build(&[]);
    // A directory of the user's in the output, holding no layout.
    std::fs::create_dir(ws.path("imgc-out/mine")).unwrap();
    primed(&ws);
    // A layout of an image that does not exist, moved in by hand below it.
    copy_tree(&ws.layout("app", "app"), &ws.path("imgc-out/mine/old"));
    let e = after_change(&ws);
    assert!(e.0.iter().any(|e| e["event"] == "removed"), "{:?}", e.0);
    assert!(!ws.path("imgc-out/mine/old").exists());
}

#[test]
fn changed_workspace_config_is_noticed() {
    let ws = small_ws();
    let before = primed(&ws);
    ws.write(
        "imgc.kdl",
        "workspace {\n    source-date-epoch 1700000001\n}\n",
    );
    let e = after_change(&ws);
    assert!(!e.ran().is_empty());
    assert_ne!(e.images(), before.images());
}

#[test]
fn other_patterns_settings_and_flags_do_not_use_the_snapshot() {
    let ws = small_ws();
    let before = primed(&ws);
    let e = ws.build(&["//app:app"]);
    assert!(!from_snapshot(&e));
    assert_eq!(e.images().len(), 1);
    // SOURCE_DATE_EPOCH changes every key.
    let out = ws
        .cmd(&["build", "--message-format", "json"])
        .env("SOURCE_DATE_EPOCH", "1700000005")
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = Events::parse(&out.stdout);
    assert!(!from_snapshot(&e));
    assert_ne!(e.images(), before.images());
    // A remote cache may be written to: never answered from a snapshot, and
    // none is written.
    let remote = tempfile::tempdir().unwrap();
    let flag = remote.path().to_str().unwrap();
    for _ in 0..2 {
        let e = ws.build(&["--remote-cache", flag]);
        assert!(!from_snapshot(&e));
        let _ = imgc::snapshot::pretend_older_files(
            &ws.cache.path().join("v1"),
            Duration::from_secs(3600),
        );
    }
    assert!(
        remote.path().read_dir().unwrap().next().is_some(),
        "nothing uploaded"
    );
    // Another output directory (in imgc.kdl) is another answer.
    ws.write(
        "imgc.kdl",
        "workspace {\n    source-date-epoch 1700000000\n    output-dir \"out2\"\n}\n",
    );
    let e = after_change(&ws);
    assert!(e.images().len() == 2 && ws.path("out2/app/app/index.json").is_file());
}

#[test]
fn cleared_cache_is_noticed() {
    let ws = small_ws();
    primed(&ws);
    ws.ok(&["clean", "--cache"]);
    let e = after_change(&ws);
    assert!(!e.ran().is_empty());
}

#[test]
fn cache_gc_drops_the_snapshots() {
    let ws = small_ws();
    primed(&ws);
    ws.ok(&["cache", "gc", "--max-size", "10G"]);
    after_change(&ws);
}

#[test]
fn damaged_or_truncated_snapshot_is_ignored() {
    let ws = small_ws();
    let fast = primed(&ws);
    let dir = ws.cache.path().join("v1/snapshots");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    let e = after_change(&ws);
    assert_eq!(e.images(), fast.images());
    assert!(e.ran().is_empty());
    let mut bad = good.clone();
    let i = bad.len() - 40;
    bad[i] ^= 1;
    std::fs::write(&file, &bad).unwrap();
    let e = after_change(&ws);
    assert_eq!(e.images(), fast.images());
}

#[test]
fn check_answers_from_the_snapshot_and_notices_a_broken_build_file() {
    let ws = small_ws();
    let first = ws.ok(&["check"]);
    ws.ok(&["check"]);
    age(&ws);
    // From the snapshot, check does not even open the cache index.
    let index = ws.cache.path().join("v1/imgc.sqlite");
    std::fs::remove_file(&index).unwrap();
    let again = ws.ok(&["check"]);
    assert_eq!(stdout(&again), stdout(&first));
    assert!(!index.exists(), "check took the full path");
    ws.write(
        "app/BUILD.kdl",
        "image \"app\" {\n    from \"//base:nope\"\n}\n",
    );
    let out = ws.run(&["check"]);
    assert!(!out.status.success(), "{}", stdout(&out));
}

#[test]
fn check_notices_a_new_package() {
    let ws = small_ws();
    // A directory of no package: only the package search lists it.
    ws.write("docs/README", "docs\n");
    ws.ok(&["check"]);
    ws.ok(&["check"]);
    age(&ws);
    let before = stdout(&ws.ok(&["check"]));
    ws.write(
        "docs/more/BUILD.kdl",
        "image \"more\" {\n    from \"//base:base\"\n}\n",
    );
    let after = stdout(&ws.ok(&["check"]));
    assert_ne!(before, after);
    assert!(after.contains("in 3 packages"), "{after}");
}

/// `-C sub` is relative to where imgc starts: the same words from two places
/// are two invocations, and a relative pattern there names two packages.
#[test]
fn relative_c_from_another_directory_does_not_replay_another_package() {
    let spec = "layer \"x\" {\n    text \"/x\" \"x\\n\"\n}\n";
    let ws = Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n}\n",
        ),
        ("p/sub/BUILD.kdl", spec),
        ("q/sub/BUILD.kdl", spec),
    ]);
    let from = |dir: &str| {
        let mut c = ws.cmd(&["-C", "sub", "build", "--message-format", "json", ":x"]);
        c.current_dir(ws.path(dir));
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        Events::parse(&out.stdout)
    };
    from("p");
    from("p");
    age(&ws);
    assert!(from_snapshot(&from("p")));
    let q = from("q");
    assert!(
        !from_snapshot(&q),
        "answered `//q/sub:x` from `//p/sub:x`'s snapshot"
    );
    // The same layer text: a cache hit, but for `//q/sub:x`.
    let mut answered = q.ran();
    answered.extend(q.cached());
    assert_eq!(answered, ["//q/sub:x"]);
}

/// The fast path refuses what the full path refuses.
#[test]
fn a_bad_jobs_value_is_refused_by_the_fast_path_too() {
    let ws = small_ws();
    primed(&ws);
    for j in ["0", "5000"] {
        let out = ws.run(&["build", "-j", j]);
        assert_eq!(out.status.code(), Some(2), "-j {j}: {}", stderr(&out));
        assert!(stderr(&out).contains("--jobs"), "{}", stderr(&out));
    }
}

/// The engine's summary of a build of everything in `ws` (in the library, `-j 2`).
fn engine_summary(ws: &Ws) -> imgc::scheduler::Summary {
    let ctx = context(ws);
    let (mut loaded, selected, settings) = engine_setup(&ctx, 2, false);
    let mut reporter =
        imgc::report::Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone()).quiet();
    imgc::commands::build::run_engine(&ctx, &mut loaded, &selected, settings, &mut reporter)
        .unwrap()
}

/// Only a build that ran nothing writes a snapshot, so a build that ran keeps
/// none of the paths a snapshot records (a cold build used to hold every input
/// path and every blob path to its end); the no-op build after it has them all.
#[test]
fn a_build_that_ran_keeps_no_snapshot_paths() {
    let ws = small_ws();
    let cold = engine_summary(&ws);
    assert!(cold.ran > 0);
    assert!(cold.touched.is_empty(), "{:?}", cold.touched);
    assert!(cold.blob_paths.is_empty(), "{:?}", cold.blob_paths);
    let noop = engine_summary(&ws);
    assert_eq!(noop.ran, 0);
    assert!(!noop.touched.is_empty());
    assert!(!noop.blob_paths.is_empty());
}
