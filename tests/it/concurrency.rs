//! The local cache as several processes and checkouts share it: builds at the same
//! time, a store blob damaged behind imgc's back, a damaged index, and what the
//! index remembers per checkout. Every test compares bytes with what a fresh build
//! makes, and checks that every blob in the store hashes to its name.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Every blob in the store under `cache` hashes to its name.
fn assert_store_sound(cache: &Path) {
    let mut n = 0;
    for e in walkdir::WalkDir::new(cache.join("v1/cas/sha256")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let digest = imgc::hash::Digest::of_bytes(&std::fs::read(e.path()).unwrap());
            assert_eq!(
                digest.hex(),
                e.file_name().to_string_lossy(),
                "store blob {} does not match its name",
                e.path().display()
            );
            n += 1;
        }
    }
    assert!(n > 0, "the store is empty");
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
            let digest = imgc::hash::Digest::of_bytes(&std::fs::read(e.path()).unwrap());
            assert_eq!(
                digest.hex(),
                e.file_name().to_string_lossy(),
                "layout blob {} does not match its name",
                e.path().display()
            );
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
