//! The remote cache in a shared directory: runners that share it build once;
//! damage in it is found, rebuilt and repaired; read-only runs write nothing.

use crate::support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A remote cache directory shared by "runners" (workspace copies with their
/// own local caches).
struct Remote {
    dir: tempfile::TempDir,
}

impl Remote {
    fn new() -> Remote {
        Remote {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    fn flag(&self) -> String {
        self.path().to_string_lossy().into_owned()
    }

    fn blob(&self, hex: &str) -> PathBuf {
        self.path().join("cas/sha256").join(hex)
    }

    fn entries(&self) -> Vec<PathBuf> {
        sorted_files(&self.path().join("ac"))
    }

    fn blobs(&self) -> Vec<PathBuf> {
        sorted_files(&self.path().join("cas/sha256"))
    }

    /// A new runner (checkout and local cache) that builds everything from this
    /// remote, running nothing.
    fn fresh_runner_builds_nothing(&self) -> Ws {
        let ws = runner();
        let e = ws.build(&["--remote-cache", &self.flag()]);
        assert_eq!(e.ran(), Vec::<String>::new(), "a fresh runner built");
        ws
    }

    /// Every file's name, size and mtime: unchanged means nothing was written.
    fn snapshot(&self) -> BTreeMap<String, (u64, std::time::SystemTime)> {
        walkdir::WalkDir::new(self.path())
            .sort_by_file_name()
            .into_iter()
            .map(|e| e.unwrap())
            .map(|e| {
                let m = e.metadata().unwrap();
                (
                    e.path()
                        .strip_prefix(self.path())
                        .unwrap()
                        .display()
                        .to_string(),
                    (if m.is_dir() { 0 } else { m.len() }, m.modified().unwrap()),
                )
            })
            .collect()
    }

    /// An independent check of the whole directory: every blob hashes to its
    /// name; every entry names only blobs that are present with their size.
    fn assert_consistent(&self) {
        assert_blobs_hash_to_their_names(&self.path().join("cas/sha256"));
        let entries = self.entries();
        assert!(!entries.is_empty(), "the remote holds no entries");
        for e in entries {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&e).unwrap()).unwrap();
            let output: serde_json::Value =
                serde_json::from_str(v["output"].as_str().unwrap()).unwrap();
            for (digest, size) in blobs_named(&output) {
                let p = self.blob(digest.trim_start_matches("sha256:"));
                let len = std::fs::metadata(&p)
                    .unwrap_or_else(|_| panic!("entry {} names missing {digest}", e.display()))
                    .len();
                assert_eq!(len, size, "{digest}");
            }
        }
    }
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The (digest, size) pairs an entry's output JSON names.
fn blobs_named(v: &serde_json::Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut layer = |l: &serde_json::Value| {
        out.push((
            l["digest"].as_str().unwrap().to_string(),
            l["size"].as_u64().unwrap(),
        ));
        if let Some(b) = l.get("listing").filter(|b| !b.is_null()) {
            out.push((
                b["digest"].as_str().unwrap().to_string(),
                b["size"].as_u64().unwrap(),
            ));
        }
    };
    if v["type"] == "layer" {
        layer(v);
    } else {
        for l in v["layers"].as_array().unwrap() {
            layer(l);
        }
        out.push((
            v["manifest"].as_str().unwrap().to_string(),
            v["manifest_size"].as_u64().unwrap(),
        ));
        out.push((
            v["config"].as_str().unwrap().to_string(),
            v["config_size"].as_u64().unwrap(),
        ));
    }
    out
}

fn runner() -> Ws {
    Ws::copy_of(&spec_examples())
}

#[test]
fn a_second_runner_with_an_empty_local_cache_executes_nothing() {
    let remote = Remote::new();
    let (a, b) = (runner(), runner());
    let first = a.build(&["--remote-cache", &remote.flag()]);
    let actions = first.ran().len();
    assert!(actions > 10, "{actions}");
    assert!(summary_count(&first, "uploaded_bytes") > 0);
    remote.assert_consistent();

    let second = b.build(&["--remote-cache", &remote.flag()]);
    assert_eq!(
        second.ran(),
        Vec::<String>::new(),
        "the second runner built"
    );
    assert_eq!(summary_count(&second, "remote_hits") as usize, actions);
    assert!(summary_count(&second, "downloaded_bytes") > 0);
    assert_eq!(summary_count(&second, "uploaded_bytes"), 0);
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));

    // What it fetched is now local: the next build neither fetches nor runs.
    let third = b.build(&["--remote-cache", &remote.flag()]);
    assert_eq!(summary_count(&third, "local_hits") as usize, actions);
    assert_eq!(summary_count(&third, "remote_hits"), 0);
    assert_eq!(summary_count(&third, "downloaded_bytes"), 0);
}

#[test]
fn remote_flag_environment_and_imgc_kdl_all_select_the_remote() {
    let remote = Remote::new();
    let a = runner();
    a.build(&["--remote-cache", &remote.flag()]);

    let by_env = runner();
    let out = by_env
        .cmd(&["build", "--message-format", "json"])
        .env("IMGC_REMOTE_CACHE", remote.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(Events::parse(&out.stdout).ran(), Vec::<String>::new());

    let by_config = runner();
    let kdl = std::fs::read_to_string(by_config.path("imgc.kdl")).unwrap();
    let with_remote = kdl.replace(
        "// remote-cache \"/mnt/ci/imgc\"",
        &format!("remote-cache \"{}\"", remote.flag()),
    );
    assert_ne!(kdl, with_remote);
    by_config.write("imgc.kdl", &with_remote);
    let e = by_config.build(&[]);
    assert_eq!(e.ran(), Vec::<String>::new());

    // --no-remote-cache wins over imgc.kdl: a fresh cache builds everything.
    let off = Ws::copy_of(by_config.root());
    let e = off.build(&["--no-remote-cache"]);
    assert_eq!(summary_count(&e, "remote_hits"), 0);
    assert!(!e.ran().is_empty());
}

#[test]
fn a_flipped_byte_in_a_remote_blob_is_detected_rebuilt_and_repaired() {
    let remote = Remote::new();
    let (a, b) = (runner(), runner());
    let first = a.build(&["--remote-cache", &remote.flag()]);
    let (label, victim) = largest_layer(&first, |hex| remote.blob(hex));
    let hex = victim.file_name().unwrap().to_str().unwrap().to_string();
    flip_byte(&victim);

    let out = b.ok(&[
        "build",
        "--message-format",
        "json",
        "--remote-cache",
        &remote.flag(),
    ]);
    let second = Events::parse(&out.stdout);
    assert_eq!(
        second.ran(),
        vec![label],
        "only the damaged layer is rebuilt"
    );
    let warnings: Vec<&serde_json::Value> = second
        .0
        .iter()
        .filter(|e| e["event"] == "warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]["message"].as_str().unwrap().contains(&hex),
        "{warnings:?}"
    );
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));
    // Re-uploaded over the damaged copy.
    remote.assert_consistent();
    let c = remote.fresh_runner_builds_nothing();
    assert_same_tree(&a.path("imgc-out"), &c.path("imgc-out"));
}

#[test]
fn a_truncated_remote_blob_is_detected_rebuilt_and_repaired() {
    let remote = Remote::new();
    let (a, b) = (runner(), runner());
    let first = a.build(&["--remote-cache", &remote.flag()]);
    let (label, victim) = largest_layer(&first, |hex| remote.blob(hex));
    let bytes = std::fs::read(&victim).unwrap();
    rewrite_read_only(&victim, &bytes[..bytes.len() / 3]);

    let second = b.build(&["--remote-cache", &remote.flag()]);
    assert_eq!(second.ran(), vec![label]);
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));
    remote.assert_consistent();
}

#[test]
fn a_damaged_remote_entry_is_refused_rebuilt_and_replaced() {
    let remote = Remote::new();
    let (a, b) = (runner(), runner());
    a.build(&["--remote-cache", &remote.flag()]);
    // Damage every entry: a flipped byte somewhere in its JSON.
    let entries = remote.entries();
    for e in &entries {
        flip_byte(e);
    }
    let second = b.build(&["--remote-cache", &remote.flag()]);
    assert_eq!(
        second.ran().len(),
        entries.len(),
        "every damaged entry is rebuilt"
    );
    assert_eq!(summary_count(&second, "remote_hits"), 0);
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));
    remote.assert_consistent();
    remote.fresh_runner_builds_nothing();
}

#[test]
fn a_read_only_run_never_writes_to_the_remote() {
    let remote = Remote::new();
    let (a, b) = (runner(), runner());
    a.build(&["--remote-cache", &remote.flag()]);
    let before = remote.snapshot();
    // B changes a file, so it builds (and would upload) something new.
    let banner = b.path("services/api/banner.txt");
    let mut bytes = std::fs::read(&banner).unwrap();
    bytes.extend_from_slice(b"changed\n");
    std::fs::write(&banner, bytes).unwrap();
    let e = b.build(&[
        "--remote-cache",
        &remote.flag(),
        "--remote-cache-mode",
        "read",
    ]);
    assert!(!e.ran().is_empty(), "the change was built");
    assert!(
        summary_count(&e, "remote_hits") > 0,
        "unchanged actions were fetched"
    );
    assert_eq!(summary_count(&e, "uploaded_bytes"), 0);
    assert_eq!(
        remote.snapshot(),
        before,
        "a read-only build wrote to the remote"
    );
    // Nor does what B later does with what it fetched: a build without the
    // remote makes every fetched blob again, and keeps (and refreshes) B's copy.
    b.build(&["--no-remote-cache"]);
    assert_eq!(
        remote.snapshot(),
        before,
        "a fetched blob still shares its file with the remote"
    );

    // A read-only build against a directory that does not exist creates nothing.
    let missing = remote.dir.path().join("not-there");
    let c = runner();
    c.build(&[
        "--remote-cache",
        missing.to_str().unwrap(),
        "--remote-cache-mode",
        "read",
    ]);
    assert!(!missing.exists());
}

#[test]
fn a_write_only_run_never_reads_the_remote() {
    let remote = Remote::new();
    let (a, b) = (runner(), runner());
    let first = a.build(&["--remote-cache", &remote.flag()]);
    let e = b.build(&[
        "--remote-cache",
        &remote.flag(),
        "--remote-cache-mode",
        "write",
    ]);
    assert_eq!(e.ran(), first.ran(), "write-only fetched something");
    assert_eq!(summary_count(&e, "downloaded_bytes"), 0);
}

#[test]
fn a_local_hit_the_remote_lacks_is_uploaded() {
    let remote = Remote::new();
    let a = runner();
    let first = a.build(&[]);
    let e = a.build(&["--remote-cache", &remote.flag()]);
    assert_eq!(summary_count(&e, "local_hits") as usize, first.ran().len());
    assert!(summary_count(&e, "uploaded_bytes") > 0);
    remote.assert_consistent();
    remote.fresh_runner_builds_nothing();
}

/// Entries fetched from a remote live in the local index, but only builds using
/// that remote trust them: a workspace whose imgc.kdl names a remote of its own
/// choosing cannot plant hits for other builds sharing the local cache.
#[test]
fn hits_fetched_from_a_remote_are_not_trusted_by_builds_without_it() {
    let remote = Remote::new();
    let a = runner();
    a.build(&["--remote-cache", &remote.flag()]);
    let b = runner();
    let fetched = b.build(&["--remote-cache", &remote.flag()]);
    assert!(fetched.ran().is_empty());
    // Same local cache, no remote: nothing fetched from it is used.
    let e = b.build(&["--no-remote-cache"]);
    assert_eq!(summary_count(&e, "local_hits"), 0);
    assert_eq!(e.ran().len(), fetched.cached().len());
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));
}

#[test]
fn a_non_empty_directory_without_the_marker_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), b"mine").unwrap();
    let a = runner();
    let out = a.run(&["build", "--remote-cache", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not an imgc remote cache"),
        "{}",
        stderr(&out)
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["precious"]);
}

#[test]
fn a_symlink_planted_in_the_remote_is_refused() {
    let remote = Remote::new();
    let a = runner();
    a.build(&["--remote-cache", &remote.flag()]);
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::rename(remote.path().join("ac"), elsewhere.path().join("ac")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("ac"), remote.path().join("ac")).unwrap();
    let b = runner();
    let out = b.run(&["build", "--remote-cache", &remote.flag()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
}

/// A blob planted as a symlink (to a file with the right content, even) or a
/// FIFO under a blob's name is damage: never followed, never opened blocking.
#[test]
fn symlinks_and_fifos_under_remote_blob_names_are_damage_not_read() {
    let remote = Remote::new();
    let (a, b) = (runner(), runner());
    a.build(&["--remote-cache", &remote.flag()]);
    let mut blobs = remote.blobs();
    blobs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let (fifo, link) = (blobs.pop().unwrap(), blobs.pop().unwrap());
    let outside = tempfile::tempdir().unwrap();
    let copy = outside.path().join("copy");
    std::fs::copy(&link, &copy).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&copy, &link).unwrap();
    std::fs::remove_file(&fifo).unwrap();
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

    let e = b.build(&["--remote-cache", &remote.flag()]);
    assert!(!e.ran().is_empty());
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));
    // Replaced by good copies on upload.
    remote.assert_consistent();
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert!(std::fs::symlink_metadata(&fifo).unwrap().is_file());
}

#[test]
fn eight_builds_at_once_against_one_remote_directory_agree_and_verify() {
    eight_builds_at_once(false);
}

/// The same, with `imgc cache gc --remote` evicting down to nothing over and over
/// while they build: builds only miss more, never fail or differ, and what the
/// directory holds afterwards still verifies.
#[test]
fn eight_builds_at_once_with_gc_alongside_agree_and_verify() {
    eight_builds_at_once(true);
}

fn eight_builds_at_once(with_gc: bool) {
    let remote = Remote::new();
    let reference = runner();
    let expected = reference.build(&["--no-remote-cache"]).images();
    let ws = runner();
    let caches: Vec<tempfile::TempDir> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let imgc = |cache: &Path| {
        let mut cmd = std::process::Command::new(imgc_bin());
        cmd.current_dir(ws.root())
            .args(["--cache-dir", cache.to_str().unwrap()])
            .args(["--remote-cache", &remote.flag()])
            .env("NO_COLOR", "1")
            .env_remove("SOURCE_DATE_EPOCH")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    // The first build creates the directory; gc needs it to exist.
    std::fs::create_dir_all(remote.path()).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let gc_cache = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        let gc = with_gc.then(|| {
            s.spawn(|| {
                let mut runs = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                    let out = imgc(gc_cache.path())
                        .args(["cache", "gc", "--remote", "--max-size", "1"])
                        .output()
                        .unwrap();
                    // Before the first build marks the directory, gc refuses it.
                    let code = out.status.code();
                    assert!(code == Some(0) || code == Some(3), "{}", stderr(&out));
                    runs += 1;
                }
                runs
            })
        });
        let children: Vec<std::process::Child> = caches
            .iter()
            .map(|c| {
                imgc(c.path())
                    .args(["build", "--message-format", "json", "-j", "2"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(Events::parse(&out.stdout).images(), expected);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(gc) = gc {
            assert!(gc.join().unwrap() > 0);
        }
    });
    assert_same_tree(&reference.path("imgc-out"), &ws.path("imgc-out"));
    let out = imgc(gc_cache.path())
        .args(["cache", "verify", "--remote"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify --remote: {}",
        stderr(&out)
    );
    if !with_gc {
        remote.assert_consistent();
    }
}

/// A directory shaped like a remote cache (a Bazel disk cache has `ac/` and
/// `cas/`) but without the marker is someone else's: refused, never adopted
/// (adopting it would let `cache gc --remote` delete its entries).
#[test]
fn a_bazel_disk_cache_without_the_marker_is_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ac")).unwrap();
    std::fs::create_dir_all(dir.path().join("cas")).unwrap();
    std::fs::write(dir.path().join("ac").join("ab".repeat(32)), b"bazel's").unwrap();
    let a = runner();
    let out = a.run(&["build", "--remote-cache", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!dir.path().join("imgc-remote-cache").exists());
    assert_eq!(
        std::fs::read(dir.path().join("ac").join("ab".repeat(32))).unwrap(),
        b"bazel's"
    );
}
