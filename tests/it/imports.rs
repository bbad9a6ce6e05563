//! Imports: the key hashes exactly what the import reads, inputs are bounded
//! (no FIFO hangs, no endless file), platforms are checked, names are escaped.

use crate::support::*;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMPORT_BUILD: &str = "import \"up\" {\n    oci-layout \"img\"\n}\nimage \"on-up\" {\n    from \":up\"\n    entrypoint \"/bin/true\"\n}\n";

/// Runs `cmd`, killing it if it has not finished after a minute (a hang is a
/// failure of the test, not of the whole test run).
fn run_bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("imgc hung; stderr so far: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn build_fails(ws: &Ws) -> String {
    let out = run_bounded(ws.cmd(&["build", "//third_party/..."]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!ws.layout("third_party", "on-up").exists());
    stderr(&out)
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// The small workspace with `//base:base` built and its layout copied to
/// `third_party/img`, imported by `//third_party:up`.
fn ws_with_imported_layout() -> Ws {
    let ws = small_ws();
    ws.build(&["//base:base"]);
    copy_tree(&ws.layout("base", "base"), &ws.path("third_party/img"));
    ws.write("third_party/BUILD.kdl", IMPORT_BUILD);
    ws
}

/// The manifest digest of the base an image was built on.
fn base_digest(layout: &Path) -> String {
    manifest_of(layout)["annotations"]["org.opencontainers.image.base.digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Before: the key skipped symlinks while the import followed them, so
/// re-pointing a symlinked `index.json` served the old image from the cache.
#[test]
fn import_symlinked_index_json_is_keyed_as_read() {
    let ws = small_ws();
    ws.build(&["//base:base"]);
    let img = ws.path("third_party/img");
    copy_tree(&ws.layout("base", "base"), &img);
    let a = layout_digest(&img);
    std::fs::rename(img.join("index.json"), img.join("index-a.json")).unwrap();
    // A second base image, its blobs added to the same layout.
    ws.write(
        "base/BUILD.kdl",
        &std::fs::read_to_string(ws.path("base/BUILD.kdl"))
            .unwrap()
            .replace("ID=imgc-test", "ID=imgc-other"),
    );
    ws.build(&["//base:base"]);
    let other = ws.layout("base", "base");
    let b = layout_digest(&other);
    assert_ne!(a, b);
    for e in std::fs::read_dir(other.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let to = img.join("blobs/sha256").join(e.file_name());
        if !to.exists() {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    std::fs::copy(other.join("index.json"), img.join("index-b.json")).unwrap();
    symlink("index-a.json", img.join("index.json")).unwrap();
    ws.write("third_party/BUILD.kdl", IMPORT_BUILD);

    let ev = ws.build(&["//third_party/..."]);
    assert!(ev.ran().contains(&"//third_party:up".to_string()));
    assert_eq!(base_digest(&ws.layout("third_party", "on-up")), a);

    std::fs::remove_file(img.join("index.json")).unwrap();
    symlink("index-b.json", img.join("index.json")).unwrap();
    let ev = ws.build(&["//third_party/..."]);
    assert_eq!(
        ev.ran(),
        ["//third_party:on-up", "//third_party:up"],
        "re-pointing index.json must re-import"
    );
    let reason = ev.reason("//third_party:up").unwrap();
    assert!(reason.contains("file `third_party/img/"), "{reason}");
    assert_eq!(base_digest(&ws.layout("third_party", "on-up")), b);
    // Files the import does not read are not in its key.
    std::fs::write(img.join("blobs/sha256/unrelated"), b"junk").unwrap();
    assert!(ws.build(&["//third_party/..."]).ran().is_empty());
}

#[test]
fn import_fifo_as_index_json_fails_promptly() {
    let ws = ws_with_imported_layout();
    let index = ws.path("third_party/img/index.json");
    std::fs::remove_file(&index).unwrap();
    mkfifo(&index);
    let err = build_fails(&ws);
    assert!(
        err.contains("cannot read `third_party/img/index.json`: it is a FIFO, not a regular file"),
        "{err}"
    );
}

#[test]
fn import_fifo_as_blob_fails_promptly() {
    let ws = ws_with_imported_layout();
    let layer = &layer_field(&ws.path("third_party/img"), "digest")[0];
    let blob = ws
        .path("third_party/img/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    std::fs::remove_file(&blob).unwrap();
    mkfifo(&blob);
    let err = build_fails(&ws);
    assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
    assert!(err.contains(layer.trim_start_matches("sha256:")), "{err}");
}

#[test]
fn import_index_json_linked_to_dev_zero_is_refused() {
    let ws = ws_with_imported_layout();
    let index = ws.path("third_party/img/index.json");
    std::fs::remove_file(&index).unwrap();
    symlink("/dev/zero", &index).unwrap();
    let err = build_fails(&ws);
    assert!(
        err.contains(
            "`third_party/img/index.json` resolves outside the workspace through a symbolic link"
        ),
        "{err}"
    );
}

/// A layout whose only layer has size 0 in its descriptor and whose blob is
/// what `make_blob` makes of its path.
fn ws_with_zero_size_layer(make_blob: impl Fn(&Path)) -> Ws {
    let ws = small_ws();
    let empty = imgc::hash::Digest::of_bytes(b"");
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [empty.to_string()]}}))
    .unwrap();
    let cd = imgc::hash::Digest::of_bytes(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": empty.to_string(), "size": 0}]}))
    .unwrap();
    let md = imgc::hash::Digest::of_bytes(&manifest);
    let blobs = "third_party/img/blobs/sha256";
    ws.write_bytes(&format!("{blobs}/{}", cd.hex()), &config);
    ws.write_bytes(&format!("{blobs}/{}", md.hex()), &manifest);
    make_blob(&ws.path(&format!("{blobs}/{}", empty.hex())));
    ws.write(
        "third_party/img/index.json",
        &serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": md.to_string(), "size": manifest.len()}]})
        .to_string(),
    );
    ws.write("third_party/BUILD.kdl", IMPORT_BUILD);
    ws
}

#[test]
fn import_blob_linked_to_dev_zero_with_size_0_is_refused() {
    let ws = ws_with_zero_size_layer(|p| symlink("/dev/zero", p).unwrap());
    let err = build_fails(&ws);
    assert!(
        err.contains("resolves outside the workspace through a symbolic link"),
        "{err}"
    );
    // A regular file longer than its descriptor is refused before it is read.
    let ws = ws_with_zero_size_layer(|p| {
        std::fs::File::create(p).unwrap().set_len(1 << 30).unwrap();
    });
    let err = build_fails(&ws);
    assert!(
        err.contains("1073741824 bytes, the descriptor says 0"),
        "{err}"
    );
    // The empty blob it should be imports fine.
    let ws = ws_with_zero_size_layer(|p| std::fs::write(p, b"").unwrap());
    ws.build(&["//third_party/..."]);
    imgc::oci::check_layout(&ws.layout("third_party", "on-up")).unwrap();
}

#[test]
fn import_of_another_platform_is_an_error() {
    // An arm64 image, built by imgc in an arm64 workspace.
    let arm = small_ws();
    arm.write("imgc.kdl", "workspace {\n    platform \"linux/arm64\"\n}\n");
    arm.build(&["//base:base"]);
    let ws = small_ws();
    copy_tree(&arm.layout("base", "base"), &ws.path("third_party/img"));
    ws.write("third_party/BUILD.kdl", IMPORT_BUILD);
    let err = build_fails(&ws);
    assert!(
        err.contains(
            "`third_party/img` holds a linux/arm64 image; the workspace builds linux/amd64"
        ),
        "{err}"
    );
    // `arm64/v8` is `arm64`.
    ws.write(
        "imgc.kdl",
        "workspace {\n    platform \"linux/arm64/v8\"\n}\n",
    );
    ws.build(&["//third_party/..."]);
}

/// A docker archive of tar members `(name, data)`.
fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

const ARCHIVE_BUILD: &str =
    "import \"up\" {\n    docker-archive \"img.tar\"\n}\nimage \"on-up\" {\n    from \":up\"\n}\n";

#[test]
fn import_single_image_docker_archive_of_another_platform_is_an_error() {
    let layer = archive(&[("hello", b"hi")]);
    let diff = imgc::hash::Digest::of_bytes(&layer);
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "arm64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]}}))
    .unwrap();
    let cname = format!("{}.json", imgc::hash::Digest::of_bytes(&config).hex());
    let manifest =
        serde_json::to_vec(&serde_json::json!([{"Config": cname, "Layers": ["l/layer.tar"]}]))
            .unwrap();
    let ws = small_ws();
    ws.write_bytes(
        "third_party/img.tar",
        &archive(&[
            ("l/layer.tar", &layer),
            (&cname, &config),
            ("manifest.json", &manifest),
        ]),
    );
    ws.write("third_party/BUILD.kdl", ARCHIVE_BUILD);
    let err = build_fails(&ws);
    assert!(
        err.contains(
            "`third_party/img.tar` holds a linux/arm64 image; the workspace builds linux/amd64"
        ),
        "{err}"
    );
}

#[test]
fn import_huge_pax_header_in_docker_archive_is_refused() {
    let ws = small_ws();
    let big: u64 = 300 << 20;
    let mut h = tar::Header::new_ustar();
    h.set_path("././@PaxHeader").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(big);
    h.set_cksum();
    std::fs::create_dir_all(ws.path("third_party")).unwrap();
    let mut f = std::fs::File::create(ws.path("third_party/img.tar")).unwrap();
    std::io::Write::write_all(&mut f, h.as_bytes()).unwrap();
    // Sparse: the 300 MB of the header's data take no disk and no memory here.
    f.set_len(512 + big + 1024).unwrap();
    drop(f);
    ws.write("third_party/BUILD.kdl", ARCHIVE_BUILD);
    let err = build_fails(&ws);
    assert!(
        err.contains("`third_party/img.tar` is not a valid docker archive: the PAX header at byte 0 holds 314572800 bytes, over the limit of 1 MiB"),
        "{err}"
    );
}

#[test]
fn import_archive_member_names_are_escaped() {
    let evil = "\u{1b}]2;owned\u{7}\u{1b}[2Jlayer.tar";
    let manifest =
        serde_json::to_vec(&serde_json::json!([{"Config": "c.json", "Layers": [evil]}])).unwrap();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
    let ws = small_ws();
    ws.write_bytes(
        "third_party/img.tar",
        &archive(&[("c.json", config), ("manifest.json", &manifest)]),
    );
    ws.write("third_party/BUILD.kdl", ARCHIVE_BUILD);
    let err = build_fails(&ws);
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
    assert!(
        err.contains("\\u{1b}]2;owned\\u{7}\\u{1b}[2Jlayer.tar"),
        "{err}"
    );
}

#[test]
fn import_through_links_inside_the_workspace_only() {
    // A layout reached through a symlink inside the workspace is imported...
    let ws = ws_with_imported_layout();
    std::fs::rename(ws.path("third_party/img"), ws.path("vendor-img")).unwrap();
    symlink("../vendor-img", ws.path("third_party/img")).unwrap();
    ws.build(&["//third_party/..."]);
    // ...one outside it is refused, with the spec location.
    let outside = tempfile::tempdir().unwrap();
    std::fs::rename(ws.path("vendor-img"), outside.path().join("img")).unwrap();
    std::fs::remove_file(ws.path("third_party/img")).unwrap();
    symlink(outside.path().join("img"), ws.path("third_party/img")).unwrap();
    std::fs::remove_dir_all(ws.path("imgc-out/third_party")).unwrap();
    let err = build_fails(&ws);
    assert!(err.contains("E008"), "{err}");
    assert!(
        err.contains("`third_party/img` resolves outside the workspace through a symbolic link"),
        "{err}"
    );
    assert!(err.contains("third_party/BUILD.kdl:2"), "{err}");
}

/// Before: the import action read the layout after it was keyed and stored
/// whatever it read under the key of what was there before, so a file changed
/// in between was served from the cache after it was changed back.
#[test]
fn import_file_changed_between_key_and_read_fails_and_caches_nothing() {
    let ws = ws_with_imported_layout();
    let img = ws.path("third_party/img");
    let a = layout_digest(&img);
    let index_a = std::fs::read(img.join("index.json")).unwrap();
    // A second image in the same layout, and its `index.json` kept aside.
    ws.write(
        "base/BUILD.kdl",
        &std::fs::read_to_string(ws.path("base/BUILD.kdl"))
            .unwrap()
            .replace("ID=imgc-test", "ID=imgc-other"),
    );
    ws.build(&["//base:base"]);
    let other = ws.layout("base", "base");
    for e in std::fs::read_dir(other.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let to = img.join("blobs/sha256").join(e.file_name());
        if !to.exists() {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    let index_b = std::fs::read(other.join("index.json")).unwrap();
    assert_ne!(index_a, index_b);

    // Keyed on image A; right before it runs, `index.json` becomes image B's.
    let index = img.join("index.json");
    let swap = index.clone();
    let failures = build_with_hook(&ws, &["//third_party/..."], move |label| {
        if label.to_string() == "//third_party:up" {
            std::fs::write(&swap, &index_b).unwrap();
        }
    });
    assert_eq!(
        failures.get("//third_party:up").map(String::as_str),
        Some(
            "import `//third_party:up`: `third_party/img/index.json` changed while it was imported"
        ),
        "{failures:?}"
    );
    assert!(!ws.layout("third_party", "on-up").exists());

    // Restored: the key is the one keyed above, and nothing was stored under it.
    std::fs::write(&index, &index_a).unwrap();
    let ev = ws.build(&["//third_party/..."]);
    assert!(
        ev.ran().contains(&"//third_party:up".to_string()),
        "the import must run again: {:?}",
        ev.ran()
    );
    assert_eq!(base_digest(&ws.layout("third_party", "on-up")), a);
}

/// Before: imported layers had no listing, so a layer over an imported base
/// could silently replace one of its directories.
#[test]
fn image_on_an_import_is_checked_against_the_imported_layers() {
    let ws = ws_with_imported_layout();
    ws.write(
        "third_party/BUILD.kdl",
        &format!(
            "{IMPORT_BUILD}layer \"clobber\" {{\n    text \"/tmp\" \"x\"\n}}\n\
             image \"bad\" {{\n    from \":up\"\n    layers \":clobber\"\n}}\n"
        ),
    );
    let out = ws.run(&["build", "//third_party:bad"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("E030"), "{err}");
    assert!(
        err.contains("layer `//third_party:clobber` puts a file at `/tmp` where layer 1 of base `//third_party:up`"),
        "{err}"
    );
    // The listing of the imported layer is kept with the import's output: a
    // cached import is checked the same.
    std::fs::remove_dir_all(ws.path("imgc-out")).ok();
    let out = ws.run(&["build", "//third_party:bad"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).matches("E030").count(),
        err.matches("E030").count()
    );
}
