//! Same inputs, same bytes: across job counts, caches, checkout paths, umasks and mtimes.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Builds `ws` with a fresh cache and returns a copy of its output directory.
fn fresh_output(ws: &Ws, extra: &[&str]) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let _ = std::fs::remove_dir_all(ws.path("imgc-out"));
    let mut args = vec!["build"];
    args.extend_from_slice(extra);
    let out = ws
        .cmd(&args)
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&ws.path("imgc-out"), copy.path());
    copy
}

#[test]
fn jobs_1_and_jobs_8_give_identical_layouts() {
    let ws = small_ws();
    let a = fresh_output(&ws, &["-j", "1"]);
    let b = fresh_output(&ws, &["-j", "8"]);
    assert_same_tree(a.path(), b.path());
}

#[test]
fn cold_and_warm_cache_give_identical_layouts() {
    let ws = small_ws();
    ws.build(&[]);
    let cold = tempfile::tempdir().unwrap();
    copy_tree(&ws.path("imgc-out"), cold.path());
    std::fs::remove_dir_all(ws.path("imgc-out")).unwrap();
    let ev = ws.build(&[]);
    assert!(ev.ran().is_empty());
    assert_same_tree(cold.path(), &ws.path("imgc-out"));
}

#[test]
fn two_checkout_directories_give_identical_layouts() {
    let a = small_ws();
    let b = Ws::copy_of(a.root());
    let oa = fresh_output(&a, &[]);
    let ob = fresh_output(&b, &[]);
    assert_same_tree(oa.path(), ob.path());
}

#[test]
fn another_umask_and_other_mtimes_give_identical_layouts() {
    let a = small_ws();
    let oa = fresh_output(&a, &[]);

    let b = Ws::copy_of(a.root());
    let t = filetime::FileTime::from_unix_time(1_234_567_890, 0);
    for e in walkdir::WalkDir::new(b.root()) {
        let e = e.unwrap();
        let p: PathBuf = e.path().to_path_buf();
        let meta = std::fs::metadata(&p).unwrap();
        // as if checked out under umask 077 (executable bits kept)
        let mode = meta.permissions().mode() & 0o700;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        filetime::set_file_mtime(&p, t).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.current_dir(b.root())
        .arg("-c")
        .arg(format!(
            "umask 077 && exec {} --cache-dir {} build",
            imgc_bin(),
            cache.path().display()
        ))
        .env("NO_COLOR", "1");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(oa.path(), &b.path("imgc-out"));
}

#[test]
fn source_date_epoch_from_the_environment_changes_the_layers() {
    let ws = small_ws();
    let a = fresh_output(&ws, &[]);
    let cache = tempfile::tempdir().unwrap();
    let out = ws
        .cmd(&["build"])
        .arg("--cache-dir")
        .arg(cache.path())
        .env("SOURCE_DATE_EPOCH", "42")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(tree_bytes(a.path()), tree_bytes(&ws.path("imgc-out")));
}

/// Guards the whole pipeline's bytes: tar headers, compression, JSON. A change
/// here changes every digest users have; it needs a deliberate decision.
#[test]
fn golden_digests_of_the_small_fixture() {
    let ws = small_ws();
    let ev = ws.build(&[]);
    let images = ev.images();
    assert_eq!(
        images["//base:base"],
        "sha256:f8ca4f71bc779370695f0d13d0ce2da3381bbac40b9c22614751a2b994c5a164"
    );
    assert_eq!(
        images["//app:app"],
        "sha256:8f830eafdfe8cf3e005302d56601f0cf116a7d3eb0fd7a93c53955c89ea60743"
    );
}
