//! `imgc cache gc` and `imgc cache verify`, local and remote (a directory): what
//! goes, what stays, and that a build after them makes byte-identical images,
//! hitting or rebuilding.

use crate::support::*;
use imgc::action::{LayerDesc, Output};
use imgc::hash::{DiffId, Digest, Key};
use imgc::remote::dir::{DirStore, MARKER};
use imgc::remote::{Mode, Store, entry};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output as Run;
use std::time::{Duration, SystemTime};

fn store_blobs(ws: &Ws) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(ws.cache.path().join("v1/cas/sha256"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}

/// Runs `imgc ARGS` (no remote cache in the environment) and returns the output.
fn imgc(ws: &Ws, args: &[&str]) -> Run {
    ws.cmd(args)
        .env_remove("IMGC_REMOTE_CACHE")
        .output()
        .unwrap()
}

fn ok(ws: &Ws, args: &[&str]) -> String {
    let out = imgc(ws, args);
    assert!(
        out.status.success(),
        "imgc {args:?}: {}\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no `{start}` line in:\n{text}"))
}

#[test]
fn local_gc_then_build_hits_or_rebuilds_with_identical_output() {
    let ws = Ws::copy_of(&spec_examples());
    let first = ws.build(&[]);
    let all = first.ran();
    let images = tree_bytes(&ws.path("imgc-out"));
    let blobs_before = store_blobs(&ws).len();

    // Everything fits: nothing goes, the next build hits everything.
    let text = ok(&ws, &["cache", "gc", "--max-size", "1G", "--grace", "0"]);
    assert!(
        line(&text, "actions").contains(&format!(" 0 of {} removed", all.len())),
        "{text}"
    );
    assert_eq!(store_blobs(&ws).len(), blobs_before);
    assert!(ws.build(&[]).ran().is_empty());

    // A dry run removes nothing.
    let text = ok(
        &ws,
        &[
            "cache",
            "gc",
            "--max-size",
            "8K",
            "--grace",
            "0",
            "--dry-run",
        ],
    );
    assert!(text.contains("would remove action "), "{text}");
    assert!(text.contains("would remove blob sha256:"), "{text}");
    assert_eq!(store_blobs(&ws).len(), blobs_before);
    assert!(ws.build(&[]).ran().is_empty());

    // Down to 8 KB: some actions go (with the blobs only they named), some stay.
    let text = ok(&ws, &["cache", "gc", "--max-size", "8K", "--grace", "0"]);
    assert!(!line(&text, "actions").contains(" 0 of"), "{text}");
    let left: u64 = store_blobs(&ws)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(left <= 8000, "{left} bytes left:\n{text}");
    assert!(store_blobs(&ws).len() < blobs_before);
    let ok_verify = imgc(&ws, &["cache", "verify"]);
    assert!(ok_verify.status.success(), "{}", stderr(&ok_verify));
    let partial = ws.build(&[]);
    assert!(!partial.ran().is_empty() && !partial.cached().is_empty());
    assert_eq!(tree_bytes(&ws.path("imgc-out")), images);
    assert_eq!(store_blobs(&ws).len(), blobs_before, "rebuilt what went");

    // Down to nothing: every action and blob goes; everything rebuilds, the same.
    let text = ok(&ws, &["cache", "gc", "--max-size", "0", "--grace", "0"]);
    assert!(
        line(&text, "blobs").contains(&format!("{blobs_before} of {blobs_before} removed")),
        "{text}"
    );
    assert!(store_blobs(&ws).is_empty());
    let stats = ok(&ws, &["cache", "stats"]);
    assert!(line(&stats, "actions").ends_with(" 0"), "{stats}");
    assert_eq!(ws.build(&[]).ran(), all);
    assert_eq!(tree_bytes(&ws.path("imgc-out")), images);
    assert!(ws.build(&[]).ran().is_empty());
}

#[test]
fn local_gc_never_deletes_blobs_younger_than_the_grace_period() {
    let ws = small_ws();
    let all = ws.build(&[]).ran();
    let images = tree_bytes(&ws.path("imgc-out"));
    let blobs = store_blobs(&ws);
    let out = imgc(&ws, &["cache", "gc", "--max-size", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // The rows go (least recently used first), the blobs just built stay.
    assert!(
        line(&text, "actions").contains(&format!("{0} of {0} removed", all.len())),
        "{text}"
    );
    assert!(
        line(&text, "blobs").contains(&format!("0 of {} removed", blobs.len())),
        "{text}"
    );
    assert!(
        stderr(&out).contains("younger than the grace period (1h)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(store_blobs(&ws), blobs);
    // No row names them: the build runs again and finds them already stored.
    assert_eq!(ws.build(&[]).ran(), all);
    assert_eq!(tree_bytes(&ws.path("imgc-out")), images);
    assert_eq!(store_blobs(&ws), blobs);
}

#[test]
fn local_verify_removes_a_flipped_and_a_truncated_blob_and_their_actions() {
    let ws = small_ws();
    let all = ws.build(&[]).ran();
    let images = tree_bytes(&ws.path("imgc-out"));
    let clean = imgc(&ws, &["cache", "verify", "-j", "2"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));

    // Damage two layers of the app image in the store, in place (so the layout's
    // hard links see the damage too, as an edit through them would).
    let layers = layer_field(&ws.layout("app", "app"), "digest");
    let path = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        ws.cache
            .path()
            .join("v1/cas/sha256")
            .join(&hex[..2])
            .join(hex)
    };
    let (flipped, truncated) = (path(&layers[1]), path(&layers[2]));
    for p in [&flipped, &truncated] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&flipped, &bytes).unwrap();
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len - 1)
        .unwrap();

    let out = imgc(&ws, &["cache", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("damaged blob {}", layers[1])),
        "{text}"
    );
    assert!(
        text.contains(&format!("damaged blob {}", layers[2])),
        "{text}"
    );
    assert!(
        line(&text, "blobs").contains("2 damaged, 2 removed"),
        "{text}"
    );
    // The layers' own actions and the image naming them go; the base stays.
    assert!(!line(&text, "actions").contains(" 0 damaged"), "{text}");
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert!(!flipped.exists() && !truncated.exists());

    let again = imgc(&ws, &["cache", "verify"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}{}",
        stdout(&again),
        stderr(&again)
    );

    // The next build rebuilds what went, and writes the same images.
    let rebuilt = ws.build(&[]);
    assert!(!rebuilt.ran().is_empty() && rebuilt.ran().len() < all.len());
    assert!(rebuilt.ran().contains(&"//app:app".to_string()));
    assert_eq!(tree_bytes(&ws.path("imgc-out")), images);
    assert_eq!(imgc(&ws, &["cache", "verify"]).status.code(), Some(0));
}

#[test]
fn gc_and_verify_refuse_bad_arguments_with_usage_errors() {
    let ws = small_ws();
    let cases: [(&[&str], &str); 6] = [
        (
            &["cache", "gc", "--max-size", "lots"],
            "`lots` is not a size",
        ),
        (
            &["cache", "gc", "--max-size", "10X"],
            "like `10G`, `500MiB` or `1024`",
        ),
        (
            &["cache", "gc", "--max-size", "1G", "--grace", "5 fortnights"],
            "is not a duration",
        ),
        (
            &["cache", "gc", "--max-size", "1G", "--remote"],
            "no remote cache is configured",
        ),
        (&["cache", "verify", "-j", "0"], "at least 1"),
        (
            &["cache", "verify", "--remote"],
            "no remote cache is configured",
        ),
    ];
    for (args, want) in cases {
        let out = imgc(&ws, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = imgc(&ws, &["cache", "gc"]);
    assert_eq!(out.status.code(), Some(2), "--max-size is required");
    // An HTTP remote cannot be listed: a clear error, nothing contacted.
    for args in [
        &["cache", "gc", "--remote", "--max-size", "1G"][..],
        &["cache", "verify", "--remote"],
    ] {
        let out = ws
            .cmd(args)
            .env("IMGC_REMOTE_CACHE", "http://user:secret@127.0.0.1:9/cache")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("collect garbage on the server"), "{err}");
        assert!(!err.contains("secret"), "credentials printed: {err}");
    }
}

// ---------------------------------------------------------------------------
// Remote directories, populated through the library (as uploads do).

struct Remote {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: DirStore,
}

fn remote() -> Remote {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("remote");
    let store = DirStore::open(&root, Mode::ReadWrite).unwrap();
    Remote {
        _dir: dir,
        root,
        store,
    }
}

fn hours_ago(h: u64) -> filetime::FileTime {
    filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(h * 3600))
}

impl Remote {
    /// Stores a layer blob and an entry naming it, both last touched `age` hours ago.
    fn layer(&self, name: &str, size: usize, age: u64) -> (Key, Digest) {
        let bytes: Vec<u8> = name.bytes().cycle().take(size).collect();
        let (digest, size) = self.store.blobs().put_bytes(&bytes).unwrap();
        let key = Key::of_bytes(name.as_bytes());
        let output = Output::Layer(LayerDesc {
            digest,
            diff_id: DiffId(Digest::of_bytes(name.as_bytes())),
            size,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            listing: None,
        });
        let e = entry::encode(&key, "layer", &format!("//p:{name}"), &output);
        self.store.put_entry(&key, &e, false).unwrap();
        filetime::set_file_mtime(self.store.blobs().blob_path(&digest), hours_ago(age)).unwrap();
        filetime::set_file_mtime(self.store.entry_path(&key), hours_ago(age)).unwrap();
        (key, digest)
    }

    fn has(&self, p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok()
    }

    /// Runs `imgc --remote-cache ROOT ARGS`.
    fn run(&self, ws: &Ws, args: &[&str]) -> Run {
        ws.cmd(&[&["--remote-cache", self.root.to_str().unwrap()], args].concat())
            .env_remove("IMGC_REMOTE_CACHE")
            .output()
            .unwrap()
    }
}

#[test]
fn remote_gc_evicts_least_recently_used_entries_through_the_command_line() {
    let ws = small_ws();
    let r = remote();
    let (k_old, d_old) = r.layer("old", 4000, 5);
    let (k_mid, d_mid) = r.layer("mid", 4000, 4);
    let (k_new, d_new) = r.layer("new", 4000, 3);

    let dry = r.run(
        &ws,
        &["cache", "gc", "--remote", "--max-size", "8000", "--dry-run"],
    );
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains(&format!("would remove entry {} //p:old", k_old.to_hex())),
        "{}",
        stdout(&dry)
    );
    assert!(r.has(&r.store.entry_path(&k_old)));

    let out = r.run(&ws, &["cache", "gc", "--remote", "--max-size", "8000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(line(&text, "entries").contains("1 of 3 removed"), "{text}");
    assert!(line(&text, "blobs").contains("1 of 3 removed"), "{text}");
    assert!(!r.has(&r.store.entry_path(&k_old)) && !r.has(&r.store.blobs().blob_path(&d_old)));
    for (k, d) in [(k_mid, d_mid), (k_new, d_new)] {
        assert!(r.has(&r.store.entry_path(&k)) && r.has(&r.store.blobs().blob_path(&d)));
    }
    assert!(r.has(&r.root.join(MARKER)));
    // The local cache was not touched.
    assert!(!ws.cache.path().join("v1").exists());

    let out = r.run(&ws, &["cache", "verify", "--remote"]);
    expect_code(&out, 0);
    assert!(line(&stdout(&out), "entries").contains("2 checked, 0 damaged"));
}

#[test]
fn remote_gc_finds_the_remote_cache_as_builds_do() {
    let r = remote();
    let (k, _) = r.layer("old", 100, 5);
    let gone = || !r.has(&r.store.entry_path(&k));
    let gc = ["cache", "gc", "--remote", "--max-size", "0"];
    // From the environment...
    let ws = small_ws();
    let out = ws
        .cmd(&gc)
        .env("IMGC_REMOTE_CACHE", &r.root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(gone());
    // ...from imgc.kdl, relative to the workspace root...
    let (k2, _) = r.layer("older", 100, 6);
    let ws = small_ws();
    let rel = pathdiff(&r.root, ws.root());
    ws.write(
        "imgc.kdl",
        &format!(
            "workspace {{\n    source-date-epoch 1700000000\n    remote-cache \"{rel}\"\n}}\n"
        ),
    );
    let out = ws
        .cmd(&gc)
        .env_remove("IMGC_REMOTE_CACHE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!r.has(&r.store.entry_path(&k2)));
    // ...and never with --no-remote-cache.
    let out = ws
        .cmd(&[&["--no-remote-cache"][..], &gc].concat())
        .env_remove("IMGC_REMOTE_CACHE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no remote cache is configured"));
}

/// `to` relative to `from` (both absolute), as `../..`-style text.
fn pathdiff(to: &Path, from: &Path) -> String {
    let (to, from) = (to.canonicalize().unwrap(), from.canonicalize().unwrap());
    let common = to
        .components()
        .zip(from.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel: Vec<String> = from
        .components()
        .skip(common)
        .map(|_| "..".into())
        .collect();
    rel.extend(
        to.components()
            .skip(common)
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    rel.join("/")
}

#[test]
fn remote_verify_removes_a_damaged_blob_and_its_entry_then_passes() {
    let ws = small_ws();
    let r = remote();
    let (k_good, d_good) = r.layer("good", 3000, 1);
    let (k_bad, d_bad) = r.layer("bad", 3000, 1);
    let p = r.store.blobs().blob_path(&d_bad);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[1234] ^= 0x01;
    std::fs::write(&p, &bytes).unwrap();

    let out = r.run(&ws, &["cache", "verify", "--remote", "-j", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("damaged blob {d_bad}")), "{text}");
    assert!(
        text.contains(&format!("damaged entry {}", k_bad.to_hex())),
        "{text}"
    );
    assert!(!r.has(&p) && !r.has(&r.store.entry_path(&k_bad)));
    assert!(r.has(&r.store.entry_path(&k_good)) && r.has(&r.store.blobs().blob_path(&d_good)));

    let out = r.run(&ws, &["cache", "verify", "--remote"]);
    expect_code(&out, 0);
}

#[test]
fn remote_gc_refuses_a_directory_imgc_did_not_make() {
    let ws = small_ws();
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("ac").join("ab".repeat(32));
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, b"someone else's").unwrap();
    filetime::set_file_mtime(&theirs, hours_ago(100)).unwrap();
    for args in [
        &["cache", "gc", "--remote", "--max-size", "0", "--grace", "0"][..],
        &["cache", "verify", "--remote"],
    ] {
        let out = ws
            .cmd(args)
            .env("IMGC_REMOTE_CACHE", dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("not an imgc remote cache"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read(&theirs).unwrap(), b"someone else's");
    assert!(!dir.path().join(MARKER).exists());
}

/// Files directly in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn remote_gc_and_verify_after_real_builds_leave_a_remote_runners_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("remote");
    let flag = root.to_str().unwrap().to_string();
    let with_remote = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["--remote-cache".to_string(), flag.clone()];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    };
    let run = |ws: &Ws, args: &[&str]| -> Run {
        let args = with_remote(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ws.cmd(&args)
            .env_remove("IMGC_REMOTE_CACHE")
            .output()
            .unwrap()
    };
    let build = |ws: &Ws| -> Events {
        let out = run(ws, &["build", "--message-format", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        Events::parse(&out.stdout)
    };

    // The first runner fills the remote; it verifies.
    let a = Ws::copy_of(&spec_examples());
    let all = build(&a).ran();
    let entries = files_in(&root.join("ac")).len();
    let blobs = files_in(&root.join("cas/sha256")).len();
    assert_eq!(entries, all.len());
    let out = run(&a, &["cache", "verify", "--remote"]);
    expect_code(&out, 0);
    assert!(
        line(&stdout(&out), "entries").contains(&format!("{entries} checked, 0 damaged")),
        "{}",
        stdout(&out)
    );

    // Collected to one byte less than it holds (the least recently used entries go
    // until a blob is freed), it still verifies, and a second runner with an empty
    // local cache fetches what stayed, builds what went, and makes the same images.
    let total: u64 = files_in(&root.join("cas/sha256"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let limit = (total - 1).to_string();
    let out = run(
        &a,
        &[
            "cache",
            "gc",
            "--remote",
            "--max-size",
            &limit,
            "--grace",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let left = files_in(&root.join("ac")).len();
    assert!(left > 0 && left < entries, "{}", stdout(&out));
    assert!(files_in(&root.join("cas/sha256")).len() < blobs);
    let out = run(&a, &["cache", "verify", "--remote"]);
    expect_code(&out, 0);
    let b = Ws::copy_of(&spec_examples());
    let second = build(&b);
    assert!(summary_count(&second, "remote_hits") > 0);
    assert!(!second.ran().is_empty());
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));
    // It uploaded what it built: the remote is whole again.
    assert_eq!(files_in(&root.join("ac")).len(), entries);

    // Damage two blobs: verify removes them and what names them, then passes;
    // a third runner rebuilds what went and makes the same images.
    let remote_blobs = files_in(&root.join("cas/sha256"));
    let largest: Vec<&PathBuf> = {
        let mut v: Vec<&PathBuf> = remote_blobs.iter().collect();
        v.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
        v.into_iter().take(2).collect()
    };
    flip_byte(largest[0]);
    let bytes = std::fs::read(largest[1]).unwrap();
    rewrite_read_only(largest[1], &bytes[..bytes.len() - 1]);
    let out = run(&a, &["cache", "verify", "--remote"]);
    expect_code(&out, 1);
    assert!(
        line(&stdout(&out), "blobs").contains("2 damaged, 2 removed"),
        "{}",
        stdout(&out)
    );
    assert!(!largest[0].exists() && !largest[1].exists());
    let out = run(&a, &["cache", "verify", "--remote"]);
    expect_code(&out, 0);
    let c = Ws::copy_of(&spec_examples());
    let third = build(&c);
    assert!(!third.ran().is_empty() && summary_count(&third, "remote_hits") > 0);
    assert_same_tree(&a.path("imgc-out"), &c.path("imgc-out"));

    // Collected to nothing: no entry or blob is left, the marker stays.
    let out = run(
        &a,
        &["cache", "gc", "--remote", "--max-size", "0", "--grace", "0"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(files_in(&root.join("ac")).is_empty());
    assert!(files_in(&root.join("cas/sha256")).is_empty());
    assert!(root.join(MARKER).is_file());
}

/// Asserts the exit code, showing what the command printed otherwise.
fn expect_code(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        stdout(out),
        stderr(out)
    );
}
