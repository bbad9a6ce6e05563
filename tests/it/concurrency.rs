//! The local cache as several processes and checkouts share it: builds at the same
//! time, a store blob damaged behind imgc's back, a damaged index, and what the
//! index remembers per checkout. Every test compares bytes with what a fresh build
//! makes, and checks that every blob in the store hashes to its name.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Every blob in the store under `cache` hashes to its name.
fn assert_store_sound(cache: &Path) {
    assert_blobs_hash_to_their_names(&cache.join("v1/cas/sha256"));
}

/// Every blob of every layout under `out` hashes to its name.
fn assert_layouts_sound(out: &Path) {
    let mut n = 0;
    for e in walkdir::WalkDir::new(out) {
        let e = e.unwrap();
        let in_blobs = e
            .path()
            .parent()
            .is_some_and(|p| p.ends_with("blobs/sha256"));
        if e.file_type().is_file() && in_blobs {
            assert_hashes_to_its_name(e.path());
            n += 1;
        }
    }
    assert!(n > 0, "no layout blobs under {}", out.display());
}

/// The store path of a blob named `sha256:<hex>`.
fn store_blob(cache: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    cache.join("v1/cas/sha256").join(&hex[..2]).join(hex)
}

/// Flips the first byte of a file in place (same size, same inode), as an edit
/// through a layout's hard link would.
fn damage_in_place(p: &Path) {
    let mut bytes = std::fs::read(p).unwrap();
    bytes[0] ^= 0xff;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(p, &bytes).unwrap();
}

/// The layouts a build with a fresh cache makes of the workspace at `root`.
fn fresh_build(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let copy = Ws::new(&[]);
    copy_tree(root, copy.root());
    copy.ok(&["build"]);
    tree_bytes(&copy.path("imgc-out"))
}

/// A store blob damaged in place (through a layout's hard link) must not survive
/// an action that makes the same blob again: publishing checks what is there.
#[test]
fn a_damaged_store_blob_is_replaced_when_an_action_makes_it_again() {
    let ws = Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n}\n",
        ),
        (
            "app/BUILD.kdl",
            "layer \"code\" {\n    copy \"old-name.txt\" to=\"/app/data.txt\"\n}\nimage \"app\" {\n    from \"scratch\"\n    layers \":code\"\n    annotation \"team\" \"one\"\n}\n",
        ),
        ("app/old-name.txt", "payload\n"),
    ]);
    ws.build(&[]);
    let layout = ws.layout("app", "app");
    let layer = layer_field(&layout, "digest").pop().unwrap();
    let config = manifest_of(&layout)["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    for blob in [&layer, &config] {
        damage_in_place(
            &layout
                .join("blobs/sha256")
                .join(blob.trim_start_matches("sha256:")),
        );
        assert!(
            imgc::hash::Digest::of_bytes(
                &std::fs::read(store_blob(ws.cache.path(), blob)).unwrap()
            )
            .hex()
                != blob.trim_start_matches("sha256:"),
            "the store shares the damaged file"
        );
    }
    // The layer runs again (its source was renamed) and makes the same bytes; the
    // image runs again (an annotation changed) and makes the same config.
    std::fs::rename(ws.path("app/old-name.txt"), ws.path("app/new-name.txt")).unwrap();
    let spec = std::fs::read_to_string(ws.path("app/BUILD.kdl")).unwrap();
    ws.write(
        "app/BUILD.kdl",
        &spec
            .replace("old-name.txt", "new-name.txt")
            .replace("\"one\"", "\"two\""),
    );
    let ev = ws.build(&[]);
    assert_eq!(ev.ran(), ["//app:app", "//app:code"]);
    assert_eq!(layer_field(&layout, "digest").pop().unwrap(), layer);
    assert_store_sound(ws.cache.path());
    assert_layouts_sound(&ws.path("imgc-out"));
    assert_eq!(tree_bytes(&ws.path("imgc-out")), fresh_build(ws.root()));
}

/// `imgc ARGS` run in `dir` with the cache directory `cache`.
fn imgc_in(dir: &Path, cache: &Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(imgc_bin());
    c.current_dir(dir)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("IMGC_CACHE_DIR");
    c
}

/// Runs `imgc ARGS` in `dir` with `cache` and asserts success.
fn ok_in(dir: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    let out = imgc_in(dir, cache, args).output().unwrap();
    assert!(
        out.status.success(),
        "imgc {args:?} in {} failed: {}\nstdout: {}\nstderr: {}",
        dir.display(),
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// The warning lines of a run (human output on stderr).
fn warnings(out: &std::process::Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("warning"))
        .map(str::to_string)
        .collect()
}

/// Waits until files written now are older than the racy window, so that a
/// build may remember their stat data (memo rows, layout stamps). Not a race:
/// what follows does not depend on timing, only on that age.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

/// Overwrites the pages of the database `db` that `pick` selects (numbered
/// from one) with garbage, keeping its size. The database must be closed and
/// checkpointed (it is after every imgc run).
fn damage_pages(db: &Path, pick: impl Fn(usize) -> bool) {
    let mut bytes = std::fs::read(db).unwrap();
    assert!(
        !db.with_extension("sqlite-wal").exists()
            || std::fs::metadata(db.with_extension("sqlite-wal"))
                .unwrap()
                .len()
                == 0,
        "the index has an unmerged WAL"
    );
    let page_size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        n => n as usize,
    };
    let pages = bytes.len() / page_size;
    assert!(pages > 2, "only {pages} pages");
    for p in 1..=pages {
        if pick(p) {
            for (i, b) in bytes[(p - 1) * page_size..p * page_size]
                .iter_mut()
                .enumerate()
            {
                *b = (i as u8).wrapping_mul(31).wrapping_add(p as u8);
            }
        }
    }
    std::fs::write(db, &bytes).unwrap();
}

/// The root page of table `name` in the database `db`.
fn root_page(db: &Path, name: &str) -> usize {
    let c = rusqlite::Connection::open(db).unwrap();
    let page: i64 = c
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap();
    page as usize
}

/// An index intact on its first page (so it opens) and garbage after it: found
/// by the first statement that reads a table, replaced once, with one warning,
/// whichever command meets it first.
#[test]
fn an_index_corrupt_from_its_second_page_is_replaced_with_one_warning() {
    let ws = small_ws();
    let good = fresh_build(ws.root());
    let db = ws.cache.path().join("v1/imgc.sqlite");

    // `cache stats` meets it first: one warning, exit 0, an empty index.
    ws.ok(&["build"]);
    damage_pages(&db, |p| p >= 2);
    let out = ws.run(&["cache", "stats"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(warnings(&out).len(), 1, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("actions          0"),
        "{}",
        stdout(&out)
    );
    assert!(ws.cache.path().join("v1/imgc.sqlite.bad").exists());
    assert!(warnings(&ws.run(&["cache", "stats"])).is_empty());

    // A build meets it first: one warning, the right output, and the next build
    // is a clean no-op.
    ws.ok(&["build"]);
    damage_pages(&db, |p| p >= 2);
    let out = ws.ok(&["build"]);
    assert_eq!(warnings(&out).len(), 1, "{}", stderr(&out));
    assert_eq!(tree_bytes(&ws.path("imgc-out")), good);
    let out = ws.ok(&["build", "--message-format", "json"]);
    assert!(warnings(&out).is_empty(), "{}", stderr(&out));
    assert!(Events::parse(&out.stdout).ran().is_empty());
    assert_store_sound(ws.cache.path());
}

/// Only the action table damaged, the parse cache readable: the build itself
/// meets the damage, mid-run, and must replace the index once rather than warn for
/// every action it cannot look up or record.
#[test]
fn an_index_with_a_damaged_action_table_is_replaced_with_one_warning() {
    let ws = small_ws();
    let good = fresh_build(ws.root());
    let db = ws.cache.path().join("v1/imgc.sqlite");
    ws.ok(&["build"]);
    let action = root_page(&db, "action");
    damage_pages(&db, |p| p == action);
    let out = ws.ok(&["build"]);
    assert_eq!(warnings(&out).len(), 1, "{}", stderr(&out));
    assert_eq!(tree_bytes(&ws.path("imgc-out")), good);
    let out = ws.ok(&["build", "--message-format", "json"]);
    assert!(warnings(&out).is_empty(), "{}", stderr(&out));
    assert!(Events::parse(&out.stdout).ran().is_empty());
    assert_eq!(warnings(&ws.ok(&["cache", "stats"])).len(), 0);
}

/// Two checkouts share one cache; a blob damaged through the first one's layout
/// (a hard link, so the store's file and the second checkout's link are damaged
/// too) is repaired by the first one's build, and the second one's next build
/// must not trust its remembered layout: it re-links it.
#[test]
fn a_blob_repaired_by_one_checkout_is_relinked_in_the_other() {
    let one = small_ws();
    let two = Ws::new(&[]);
    copy_tree(one.root(), two.root());
    let cache = one.cache.path();
    let good = fresh_build(one.root());
    ok_in(one.root(), cache, &["build"]);
    ok_in(two.root(), cache, &["build"]);
    // Old enough to be remembered: both builds now record their layouts' stamps.
    settle();
    ok_in(one.root(), cache, &["build"]);
    ok_in(two.root(), cache, &["build"]);

    let layout = one.layout("app", "app");
    let blob = layer_field(&layout, "digest").pop().unwrap();
    damage_in_place(
        &layout
            .join("blobs/sha256")
            .join(blob.trim_start_matches("sha256:")),
    );
    assert_ne!(
        tree_bytes(&two.path("imgc-out")),
        good,
        "the link is shared"
    );

    let ev =
        Events::parse(&ok_in(one.root(), cache, &["build", "--message-format", "json"]).stdout);
    assert_eq!(ev.ran(), ["//app:app~layer0"]);
    assert_eq!(tree_bytes(&one.path("imgc-out")), good);

    let ev =
        Events::parse(&ok_in(two.root(), cache, &["build", "--message-format", "json"]).stdout);
    assert!(ev.ran().is_empty(), "the store is repaired: {:?}", ev.ran());
    assert_eq!(tree_bytes(&two.path("imgc-out")), good);
    assert_layouts_sound(&two.path("imgc-out"));
    assert_store_sound(cache);
}

/// Checkouts sharing a cache keep their own last builds: a rebuild's reason is
/// computed against this checkout's last build, not another's.
#[test]
fn checkouts_sharing_a_cache_keep_their_own_rebuild_reasons() {
    let one = small_ws();
    let two = Ws::new(&[]);
    copy_tree(one.root(), two.root());
    two.write(
        "app/src/lib/util.txt",
        "util, as the other checkout has it\n",
    );
    let cache = one.cache.path();
    ok_in(one.root(), cache, &["build"]);
    ok_in(two.root(), cache, &["build"]);
    one.write("app/src/main.txt", "hello again\n");
    let ev =
        Events::parse(&ok_in(one.root(), cache, &["build", "--message-format", "json"]).stdout);
    assert_eq!(
        ev.reason("//app:code").unwrap(),
        "file `app/src/main.txt` changed"
    );
}

/// CI with a new checkout path per job: the index keeps the rows of the most
/// recent checkouts only, instead of growing with every job.
#[test]
fn the_index_keeps_only_the_most_recent_checkouts() {
    let cache = tempfile::tempdir().unwrap();
    let jobs: Vec<Ws> = (0..imgc::cache::MAX_WORKSPACES + 2)
        .map(|_| small_ws())
        .collect();
    settle();
    for job in &jobs {
        ok_in(job.root(), cache.path(), &["build"]);
    }
    let stats = stdout(&ok_in(jobs[0].root(), cache.path(), &["cache", "stats"]));
    let line = |name: &str| -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` in {stats}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(line("workspaces") as usize, imgc::cache::MAX_WORKSPACES);
    // four hashed files per checkout (main.txt, util.txt, run.sh, config.toml)
    assert_eq!(
        line("file hashes") as usize,
        4 * imgc::cache::MAX_WORKSPACES,
        "{stats}"
    );
}

/// What a build writes to the index is committed in short transactions: while an
/// action runs, another process can take the write lock at once.
#[test]
fn a_build_holds_no_write_lock_while_actions_run() {
    use std::sync::{Arc, Mutex};
    let ws = small_ws();
    let ctx = context(&ws);
    let (mut loaded, selected, mut settings) = engine_setup(&ctx, 2, false);
    let db = ws.cache.path().join("v1/imgc.sqlite");
    let probes: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let seen = probes.clone();
    settings.before_run = Some(Arc::new(move |label| {
        let c = rusqlite::Connection::open(&db).unwrap();
        // The coordinator may be in one of its short commits right now (the
        // other worker keeps it busy): wait that long, not forever. A lock held
        // while actions run would be held while this hook runs, and time out.
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        let free = c.execute_batch("BEGIN IMMEDIATE; COMMIT").is_ok();
        seen.lock().unwrap().push((label.to_string(), free));
    }));
    let mut reporter =
        imgc::report::Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone()).quiet();
    let summary =
        imgc::commands::build::run_engine(&ctx, &mut loaded, &selected, settings, &mut reporter)
            .unwrap();
    assert_eq!(summary.ran, 5);
    let mut probes = probes.lock().unwrap().clone();
    probes.sort();
    assert_eq!(probes.len(), 5);
    for (label, free) in probes {
        assert!(free, "the write lock was held while `{label}` ran");
    }
}

/// While another process holds the index's write lock (a build committing),
/// read-only commands answer at once: they neither wait nor give up on the cache.
#[test]
fn read_only_commands_do_not_wait_for_a_build() {
    let ws = small_ws();
    ws.ok(&["build"]);
    // an edit, so that the parse cache has something to store (best-effort)
    let spec = std::fs::read_to_string(ws.path("app/BUILD.kdl")).unwrap();
    ws.write("app/BUILD.kdl", &format!("// edited\n{spec}"));
    let holder = rusqlite::Connection::open(ws.cache.path().join("v1/imgc.sqlite")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    for args in [
        &["query", "deps", "//app"][..],
        &["check"],
        &["explain", "//app:app"],
        &["cache", "stats"],
    ] {
        let mut child = ws
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A hang guard, not a measurement: the busy timeout is 30 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("imgc {args:?} waited for the write lock");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "imgc {args:?}: {}", stderr(&out));
        assert!(warnings(&out).is_empty(), "imgc {args:?}: {}", stderr(&out));
    }
    holder.execute_batch("COMMIT").unwrap();
}

/// Starts two builds at once and waits for both; both must succeed.
fn build_twice_at_once(a: (&Path, &Path), b: (&Path, &Path)) {
    let spawn = |(dir, cache): (&Path, &Path)| {
        imgc_in(dir, cache, &["build"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(a), spawn(b));
    for (child, dir) in [(first, a.0), (second, b.0)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "build in {} failed: {}",
            dir.display(),
            stderr(&out)
        );
        assert!(warnings(&out).is_empty(), "{}", stderr(&out));
    }
}

const ROUNDS: usize = 20;

#[test]
fn two_builds_in_one_directory_at_once_both_succeed() {
    let ws = small_ws();
    let good = fresh_build(ws.root());
    for _ in 0..ROUNDS {
        let cache = tempfile::tempdir().unwrap();
        let _ = std::fs::remove_dir_all(ws.path("imgc-out"));
        build_twice_at_once((ws.root(), cache.path()), (ws.root(), cache.path()));
        assert_eq!(tree_bytes(&ws.path("imgc-out")), good);
        assert_store_sound(cache.path());
    }
}

#[test]
fn two_checkouts_build_at_once_on_one_cache() {
    let one = small_ws();
    let two = Ws::new(&[]);
    copy_tree(one.root(), two.root());
    let good = fresh_build(one.root());
    for _ in 0..ROUNDS {
        let cache = tempfile::tempdir().unwrap();
        for ws in [&one, &two] {
            let _ = std::fs::remove_dir_all(ws.path("imgc-out"));
        }
        build_twice_at_once((one.root(), cache.path()), (two.root(), cache.path()));
        assert_eq!(tree_bytes(&one.path("imgc-out")), good);
        assert_eq!(tree_bytes(&two.path("imgc-out")), good);
        assert_store_sound(cache.path());
    }
}

#[test]
fn two_workspaces_build_at_once_on_one_cache() {
    let one = small_ws();
    let two = small_ws();
    two.write("app/src/main.txt", "another workspace\n");
    two.write(
        "base/extra/BUILD.kdl",
        "layer \"more\" {\n    text \"/more\" \"x\\n\"\n}\n",
    );
    let (good_one, good_two) = (fresh_build(one.root()), fresh_build(two.root()));
    assert_ne!(good_one, good_two);
    for round in 0..ROUNDS {
        // Alternately cold, and warm with one edit in each.
        let cache = tempfile::tempdir().unwrap();
        for ws in [&one, &two] {
            let _ = std::fs::remove_dir_all(ws.path("imgc-out"));
        }
        build_twice_at_once((one.root(), cache.path()), (two.root(), cache.path()));
        if round % 2 == 1 {
            one.write("app/config.toml", "port = 1\n");
            two.write("app/config.toml", "port = 2\n");
            build_twice_at_once((one.root(), cache.path()), (two.root(), cache.path()));
            one.write("app/config.toml", "port = 8080\n");
            two.write("app/config.toml", "port = 8080\n");
            build_twice_at_once((one.root(), cache.path()), (two.root(), cache.path()));
        }
        assert_eq!(tree_bytes(&one.path("imgc-out")), good_one);
        assert_eq!(tree_bytes(&two.path("imgc-out")), good_two);
        assert_store_sound(cache.path());
    }
}

/// Builds `ws` in this process with the cache `cache`; when its first action is
/// about to run (on a worker, mid-build), runs `imgc build` in `other` with the
/// same cache to completion. Both must succeed: neither waits for the other.
fn build_around_another(ws: &Ws, cache: &Path, other: &Path) {
    use std::sync::{Arc, Mutex};
    let ctx = imgc::commands::Context {
        cache_dir: Some(cache.to_path_buf()),
        ..context(ws)
    };
    let (mut loaded, selected, mut settings) = engine_setup(&ctx, 2, false);
    let inner: Arc<Mutex<Option<std::process::Output>>> = Arc::default();
    let slot = inner.clone();
    let (other, cache_dir) = (other.to_path_buf(), cache.to_path_buf());
    settings.before_run = Some(Arc::new(move |_| {
        let mut slot = slot.lock().unwrap();
        if slot.is_none() {
            *slot = Some(imgc_in(&other, &cache_dir, &["build"]).output().unwrap());
        }
    }));
    let mut reporter =
        imgc::report::Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone()).quiet();
    let summary =
        imgc::commands::build::run_engine(&ctx, &mut loaded, &selected, settings, &mut reporter)
            .unwrap();
    assert_eq!(summary.failed, 0);
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    let out = inner.lock().unwrap().take().expect("no action ran");
    assert!(
        out.status.success(),
        "the build in the middle failed: {}",
        stderr(&out)
    );
    assert!(warnings(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn a_build_in_the_same_directory_runs_while_another_is_mid_action() {
    let ws = small_ws();
    let good = fresh_build(ws.root());
    build_around_another(&ws, ws.cache.path(), ws.root());
    assert_eq!(tree_bytes(&ws.path("imgc-out")), good);
    assert_store_sound(ws.cache.path());
}

#[test]
fn a_build_of_another_checkout_runs_while_one_is_mid_action() {
    let one = small_ws();
    let two = Ws::new(&[]);
    copy_tree(one.root(), two.root());
    let good = fresh_build(one.root());
    build_around_another(&one, one.cache.path(), two.root());
    assert_eq!(tree_bytes(&one.path("imgc-out")), good);
    assert_eq!(tree_bytes(&two.path("imgc-out")), good);
    assert_store_sound(one.cache.path());
}

#[test]
fn a_build_of_another_workspace_runs_while_one_is_mid_action() {
    let one = small_ws();
    let two = small_ws();
    two.write("app/src/main.txt", "another workspace\n");
    let (good_one, good_two) = (fresh_build(one.root()), fresh_build(two.root()));
    build_around_another(&one, one.cache.path(), two.root());
    assert_eq!(tree_bytes(&one.path("imgc-out")), good_one);
    assert_eq!(tree_bytes(&two.path("imgc-out")), good_two);
    assert_store_sound(one.cache.path());
}
