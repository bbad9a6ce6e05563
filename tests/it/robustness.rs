//! Bad input and accidents end in a clear error or a correct rebuild, never a wrong image.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn missing_source_file_is_a_located_error() {
    let ws = small_ws();
    std::fs::remove_file(ws.path("app/run.sh")).unwrap();
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("E019"), "{err}");
    assert!(err.contains("source `app/run.sh` does not exist"), "{err}");
    assert!(err.contains("app/BUILD.kdl:4:10"), "{err}");
    assert!(!ws.layout("app", "app").exists());
}

#[test]
fn keep_going_builds_what_does_not_depend_on_a_failure() {
    let ws = small_ws();
    std::fs::remove_file(ws.path("app/run.sh")).unwrap();
    let out = ws.run(&["build", "--keep-going", "--message-format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let ev = Events::parse(&out.stdout);
    assert!(ev.ran().contains(&"//base:base".to_string()));
    assert!(ws.layout("base", "base").join("index.json").is_file());
    assert!(!ws.layout("app", "app").exists());
}

fn as_nobody_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && have("setpriv")
}

#[test]
fn unreadable_file_is_a_clear_error() {
    let ws = small_ws();
    let secret = ws.path("app/src/main.txt");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = if as_nobody_available() {
        // root reads everything: drop to `nobody` so the permission bites
        for dir in [ws.root(), ws.cache.path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        for e in walkdir::WalkDir::new(ws.root()).min_depth(1) {
            let e = e.unwrap();
            if e.file_type().is_dir() {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            }
        }
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(imgc_bin())
            .arg("--cache-dir")
            .arg(ws.cache.path())
            .arg("build")
            .current_dir(ws.root())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    } else {
        ws.run(&["build"])
    };
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot read `app/src/main.txt`"), "{err}");
    assert!(err.contains("ermission denied"), "{err}");
}

#[test]
fn corrupt_import_tarball_is_a_clear_error() {
    let ws = small_ws();
    ws.write_bytes(
        "third_party/broken.tar",
        b"this is not a tar archive at all, just some bytes",
    );
    ws.write(
        "third_party/BUILD.kdl",
        "import \"broken\" {\n    docker-archive \"broken.tar\"\n}\nimage \"on-broken\" {\n    from \":broken\"\n}\n",
    );
    let out = ws.run(&["build", "//third_party/..."]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("import `//third_party:broken`"), "{err}");
    assert!(!ws.layout("third_party", "on-broken").exists());
}

/// Every blob in the CAS must hash to its name.
fn assert_cas_sound(ws: &Ws) {
    let cas = ws.cache.path().join("v1/cas/sha256");
    let mut n = 0;
    for e in walkdir::WalkDir::new(&cas) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            let digest = imgc::hash::Digest::of_bytes(&std::fs::read(e.path()).unwrap());
            assert_eq!(
                digest.hex(),
                name,
                "blob {} does not match its name",
                e.path().display()
            );
            n += 1;
        }
    }
    assert!(n > 0);
}

fn layer_blob_paths(ws: &Ws, pkg: &str, name: &str) -> Vec<std::path::PathBuf> {
    layer_field(&ws.layout(pkg, name), "digest")
        .iter()
        .map(|d| {
            let hex = d.trim_start_matches("sha256:");
            ws.cache
                .path()
                .join("v1/cas/sha256")
                .join(&hex[..2])
                .join(hex)
        })
        .collect()
}

#[test]
fn truncated_blob_in_the_cache_is_rebuilt_not_used() {
    let ws = small_ws();
    ws.build(&[]);
    let good = tree_bytes(&ws.path("imgc-out"));
    let blob = layer_blob_paths(&ws, "app", "app").pop().unwrap();
    let len = std::fs::metadata(&blob).unwrap().len();
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let ev = ws.build(&[]);
    assert_eq!(
        ev.ran(),
        ["//app:app~layer0"],
        "the damaged layer must be rebuilt"
    );
    assert_eq!(tree_bytes(&ws.path("imgc-out")), good);
    assert_cas_sound(&ws);
}

#[test]
fn blob_damaged_in_place_is_rebuilt_not_used() {
    let ws = small_ws();
    ws.build(&[]);
    let good = tree_bytes(&ws.path("imgc-out"));
    let blob = layer_blob_paths(&ws, "base", "base").pop().unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let ev = ws.build(&[]);
    assert_eq!(ev.ran(), ["//base:files"]);
    assert_eq!(tree_bytes(&ws.path("imgc-out")), good);
    assert_cas_sound(&ws);
}

#[test]
fn corrupt_cache_database_is_replaced_with_a_warning() {
    let ws = small_ws();
    ws.build(&[]);
    std::fs::write(
        ws.cache.path().join("v1/imgc.sqlite"),
        b"garbage garbage garbage",
    )
    .unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(ws.cache.path().join(format!("v1/imgc.sqlite{ext}")));
    }
    let out = ws.ok(&["build"]);
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(ws.build(&[]).ran().is_empty());
}

#[test]
fn killed_build_then_build_again_is_correct() {
    let ws = small_ws();
    // Enough data that the build is still running when it is killed.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..6 {
        let mut data = vec![0u8; 24 << 20];
        for chunk in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        ws.write_bytes(&format!("big/data/{i}.bin"), &data);
    }
    ws.write(
        "big/BUILD.kdl",
        "layer \"blobs\" {\n    copy \"data\" to=\"/data\"\n}\nimage \"big\" {\n    from \"//base:base\"\n    layers \":blobs\"\n}\n",
    );
    let mut child = ws.cmd(&["build", "-j", "1"]).spawn().unwrap();
    // Kill it once it has published some blobs, but before it is done.
    let blobs = ws.cache.path().join("v1/cas/sha256");
    let started = std::time::Instant::now();
    while walkdir::WalkDir::new(&blobs)
        .into_iter()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_type().is_file()))
        .count()
        < 2
        && started.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the build finished before it could be killed"
    );
    // SAFETY: kill with a valid pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    ws.ok(&["build"]);
    assert_cas_sound(&ws);
    let after_kill = tree_bytes(&ws.path("imgc-out"));
    let clean = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(ws.path("imgc-out")).unwrap();
    let out = ws
        .cmd(&["build"])
        .arg("--cache-dir")
        .arg(clean.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(after_kill, tree_bytes(&ws.path("imgc-out")));
}

#[test]
fn source_behind_a_symlink_leaving_the_workspace_is_refused() {
    let ws = small_ws();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "not yours\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path("app/escape")).unwrap();
    ws.write(
        "app/BUILD.kdl",
        "layer \"code\" {\n    copy \"escape/secret\" to=\"/secret\"\n}\n",
    );
    let out = ws.run(&["build", "//app:code"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("E008"), "{err}");
    assert!(
        err.contains("resolves outside the workspace through a symlink"),
        "{err}"
    );
    // a symlink that stays inside the workspace is fine
    std::fs::remove_file(ws.path("app/escape")).unwrap();
    std::os::unix::fs::symlink("src", ws.path("app/inside")).unwrap();
    ws.write(
        "app/BUILD.kdl",
        "layer \"code\" {\n    copy \"inside/main.txt\" to=\"/main.txt\"\n}\n",
    );
    ws.ok(&["build", "//app:code"]);
}

/// Layouts a build checked in full are later trusted by the stat data of their
/// top-level files and blob directory; this guards what that shortcut must
/// still notice.
#[test]
fn remembered_layouts_are_still_repaired() {
    let ws = small_ws();
    ws.build(&[]);
    let good = tree_bytes(&ws.path("imgc-out"));
    let settle = || {
        // layouts younger than the racy window are not remembered
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(ws.build(&[]).ran().is_empty());
    };

    // a store blob damaged in place (the layout links the very same file)
    settle();
    let blob = layer_blob_paths(&ws, "app", "app").pop().unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    ws.build(&[]);
    assert_eq!(tree_bytes(&ws.path("imgc-out")), good);

    // a blob deleted from a layout
    settle();
    let layout_blobs = ws.layout("base", "base").join("blobs/sha256");
    let victim = std::fs::read_dir(&layout_blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(&victim).unwrap();
    assert!(ws.build(&[]).ran().is_empty());
    assert_eq!(tree_bytes(&ws.path("imgc-out")), good);

    // index.json overwritten
    settle();
    ws.write("imgc-out/app/app/index.json", "{}");
    assert!(ws.build(&[]).ran().is_empty());
    assert_eq!(tree_bytes(&ws.path("imgc-out")), good);
}
