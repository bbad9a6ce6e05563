//! Layers hold exactly what their spec declares, read from inside the workspace
//! only: no entry for an undeclared parent (it would replace the base's), no
//! file reached through a symlink that leaves the workspace, no special file
//! read, no name silently changed, no option silently ignored.

use crate::support::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// One entry of a layer tar, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TarEntry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<String>,
    body: Vec<u8>,
}

/// The entries of the last layer of the image at `layout` (gzip layers).
fn last_layer(layout: &Path) -> Vec<TarEntry> {
    last_layer_tar(layout)
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            TarEntry {
                path: String::from_utf8(e.path_bytes().to_vec()).unwrap(),
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                link: h
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
                body,
            }
        })
        .collect()
}

fn paths(entries: &[TarEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

/// A workspace with one package `pkg` whose BUILD.kdl is `build`, plus an
/// image `//pkg:img` on scratch made of the layer `//pkg:l`.
fn one_layer_ws(layer_body: &str) -> Ws {
    Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "pkg/BUILD.kdl",
            &format!(
                "layer \"l\" {{\n{layer_body}\n}}\nimage \"img\" {{\n    from \"scratch\"\n    layers \":l\"\n}}\n"
            ),
        ),
    ])
}

/// Builds and expects a failure; returns stderr.
fn build_fails(ws: &Ws) -> String {
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!ws.layout("pkg", "img").exists());
    stderr(&out)
}

/// The base of the issue: a sticky `/tmp`, an app-owned `/home/app`, and the
/// merged-/usr symlink `/lib -> usr/lib`; a static `cat` to run. The service
/// layer holds a file below each of them and declares none of them.
fn base_and_service_ws() -> Ws {
    let ws = Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "base/BUILD.kdl",
            r#"
layer "root" {
    copy "cat" to="/bin/cat" mode="0755"
    dir "/tmp" mode="1777"
    dir "/home/app" owner="10001:10001"
    dir "/usr/lib"
    symlink "/lib" target="usr/lib"
}
image "base" {
    from "scratch"
    layers ":root"
    entrypoint "/bin/cat"
}
"#,
        ),
        (
            "svc/BUILD.kdl",
            r#"
layer "files" {
    text "/tmp/x" "tmp file\n"
    text "/home/app/.profile" "export APP=1\n"
    copy "libfoo.so.1" to="/lib/x86_64-linux-gnu/libfoo.so.1"
}
image "svc" {
    from "//base:base"
    layers ":files"
    cmd "/lib/x86_64-linux-gnu/libfoo.so.1" "/usr/lib/x86_64-linux-gnu/libfoo.so.1" "/tmp/x" "/home/app/.profile"
}
"#,
        ),
        ("svc/libfoo.so.1", "not really an ELF library\n"),
    ]);
    std::fs::copy(
        spec_examples().join("bases/runtime/bin/cat"),
        ws.path("base/cat"),
    )
    .unwrap();
    ws
}

#[test]
fn layers_leave_undeclared_parents_to_the_base() {
    assert!(have("umoci"), "`umoci` is not installed");
    let ws = base_and_service_ws();
    ws.build(&[]);
    let layout = ws.layout("svc", "svc");

    // The service layer holds its three files and nothing else.
    let svc = last_layer(&layout);
    assert_eq!(
        paths(&svc),
        [
            "home/app/.profile",
            "lib/x86_64-linux-gnu/libfoo.so.1",
            "tmp/x"
        ]
    );

    let bundle = tempfile::tempdir().unwrap();
    let b = bundle.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&b));
    let rootfs = b.join("rootfs");
    let tmp = std::fs::symlink_metadata(rootfs.join("tmp")).unwrap();
    assert!(tmp.is_dir());
    assert_eq!(
        tmp.permissions().mode() & 0o7777,
        0o1777,
        "/tmp lost its sticky bit"
    );
    let home = std::fs::symlink_metadata(rootfs.join("home/app")).unwrap();
    assert_eq!(
        (home.uid(), home.gid()),
        (10001, 10001),
        "/home/app changed owner"
    );
    let lib = std::fs::symlink_metadata(rootfs.join("lib")).unwrap();
    assert!(lib.file_type().is_symlink(), "/lib is no longer a symlink");
    assert_eq!(
        std::fs::read_link(rootfs.join("lib")).unwrap(),
        Path::new("usr/lib")
    );
    assert_eq!(
        std::fs::read(rootfs.join("usr/lib/x86_64-linux-gnu/libfoo.so.1")).unwrap(),
        b"not really an ELF library\n"
    );
    assert_eq!(std::fs::read(rootfs.join("tmp/x")).unwrap(), b"tmp file\n");

    // And a process in the image reads the library through `/lib` and at its
    // real place, and the files in `/tmp` and `/home/app`.
    if !have("runc") {
        panic!("`runc` is not installed");
    }
    runnable_here(&b);
    let out = run(Command::new("runc")
        .arg("--root")
        .arg(bundle.path().join("runc-root"))
        .args(["run", "--bundle"])
        .arg(&b)
        .arg(format!("imgc-layers-{}", std::process::id())));
    assert_eq!(
        out,
        "not really an ELF library\nnot really an ELF library\ntmp file\nexport APP=1\n"
    );
}

#[test]
fn glob_through_a_symlinked_directory_outside_the_workspace_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("a.txt"), "outside secret\n").unwrap();
    std::fs::create_dir(outside.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("sub/b.txt"), "outside secret\n").unwrap();
    for (body, base) in [
        (r#"copy "ext/*.txt" to="/x/""#, "pkg/ext"),
        (r#"copy "ext/**/*.txt" to="/x/""#, "pkg/ext"),
        (r#"copy "ext/sub/*.txt" to="/x/""#, "pkg/ext/sub"),
        (r#"copy "deep/ext/*.txt" to="/x/""#, "pkg/deep/ext"),
    ] {
        let ws = one_layer_ws(body);
        std::os::unix::fs::symlink(outside.path(), ws.path("pkg/ext")).unwrap();
        std::fs::create_dir(ws.path("pkg/deep")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path("pkg/deep/ext")).unwrap();
        let err = build_fails(&ws);
        assert!(err.contains("E008"), "{body}: {err}");
        assert!(
            err.contains(&format!("`{base}`, which resolves outside the workspace")),
            "{body}: {err}"
        );
        assert!(err.contains("pkg/BUILD.kdl:2:"), "{body}: {err}");
        // The direct form was already refused.
        let ws = one_layer_ws(r#"copy "ext/a.txt" to="/x/a.txt""#);
        std::os::unix::fs::symlink(outside.path(), ws.path("pkg/ext")).unwrap();
        assert!(build_fails(&ws).contains("E008"));
    }
    // A symlinked glob base that stays inside the workspace is fine.
    let ws = one_layer_ws(r#"copy "ext/*.txt" to="/x/""#);
    ws.write("shared/a.txt", "inside\n");
    std::os::unix::fs::symlink("../shared", ws.path("pkg/ext")).unwrap();
    ws.build(&[]);
    let entries = last_layer(&ws.layout("pkg", "img"));
    assert_eq!(paths(&entries), ["x/a.txt"]);
    assert_eq!(entries[0].body, b"inside\n");
}

#[test]
fn symlinks_inside_copied_directories_are_copied_as_links_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside secret\n").unwrap();
    let ws = one_layer_ws(
        r#"    copy "d" to="/d"
    copy "g/*" to="/g/""#,
    );
    for dir in ["pkg/d", "pkg/g"] {
        ws.write(&format!("{dir}/f.txt"), "inside\n");
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, ws.path(&format!("{dir}/{name}"))).unwrap()
        };
        link(outside.path(), "out-dir");
        link(&outside.path().join("secret.txt"), "out-file");
        link(Path::new("/dev/zero"), "zero");
    }
    ws.build(&[]);
    let entries = last_layer(&ws.layout("pkg", "img"));
    let out_dir = outside.path().to_string_lossy().into_owned();
    let out_file = outside
        .path()
        .join("secret.txt")
        .to_string_lossy()
        .into_owned();
    let got: Vec<(&str, tar::EntryType, Option<&str>)> = entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.link.as_deref()))
        .collect();
    use tar::EntryType::{Directory as D, Regular as R, Symlink as S};
    assert_eq!(
        got,
        [
            ("d/", D, None),
            ("d/f.txt", R, None),
            ("d/out-dir", S, Some(out_dir.as_str())),
            ("d/out-file", S, Some(out_file.as_str())),
            ("d/zero", S, Some("/dev/zero")),
            ("g/f.txt", R, None),
            ("g/out-dir", S, Some(out_dir.as_str())),
            ("g/out-file", S, Some(out_file.as_str())),
            ("g/zero", S, Some("/dev/zero")),
        ]
    );
    assert!(
        entries
            .iter()
            .all(|e| e.body.is_empty() || e.body == b"inside\n")
    );
}

#[test]
fn special_files_in_copied_directories_are_refused_never_read() {
    for body in [r#"copy "d" to="/d""#, r#"copy "d/*" to="/d/""#] {
        let ws = one_layer_ws(body);
        ws.write("pkg/d/f.txt", "inside\n");
        let fifo = ws.path("pkg/d/pipe");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = build_fails(&ws);
        assert!(err.contains("E019"), "{body}: {err}");
        assert!(
            err.contains("source `pkg/d/pipe` is not a regular file, directory or symlink"),
            "{body}: {err}"
        );
    }
}

#[test]
fn exclude_that_matches_nothing_is_an_error_at_the_pattern() {
    // Written relative to the copied directory instead of the package.
    let ws = one_layer_ws(r#"    copy "static" to="/s/" exclude="drafts/*""#);
    ws.write("pkg/static/index.html", "<p>hi</p>\n");
    ws.write("pkg/static/drafts/wip.html", "wip\n");
    let err = build_fails(&ws);
    assert!(err.contains("E019"), "{err}");
    assert!(
        err.contains("exclude pattern `drafts/*` matches nothing that this `copy` copies"),
        "{err}"
    );
    // The caret is under the pattern (column 36 is its opening quote), and
    // the help suggests it relative to the package.
    assert!(err.contains("pkg/BUILD.kdl:2:36"), "{err}");
    assert!(err.contains("did you mean `static/drafts/*`?"), "{err}");
    // Written relative to the package, it excludes what it says.
    let ws = one_layer_ws(r#"    copy "static" to="/s/" exclude="static/drafts""#);
    ws.write("pkg/static/index.html", "<p>hi</p>\n");
    ws.write("pkg/static/drafts/wip.html", "wip\n");
    ws.build(&[]);
    assert_eq!(
        paths(&last_layer(&ws.layout("pkg", "img"))),
        ["s/static/", "s/static/index.html"]
    );
    // The same for a glob: a pattern that excludes none of its matches.
    let ws = one_layer_ws(r#"    copy "conf/*.toml" to="/etc/" exclude="conf/dev-*.conf""#);
    ws.write("pkg/conf/a.toml", "a\n");
    ws.write("pkg/conf/dev-a.toml", "a\n");
    let err = build_fails(&ws);
    assert!(err.contains("exclude pattern `conf/dev-*.conf`"), "{err}");
    assert!(err.contains("pkg/BUILD.kdl:2:"), "{err}");
}

#[test]
fn copy_of_a_layer_applies_its_mode_and_owner() {
    let ws = Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "pkg/BUILD.kdl",
            r#"
layer "inner" {
    owner "7:7"
    text "/etc/a.conf" "a\n"
    copy "run.sh" to="/bin/run.sh"
    dir "/var/lib/x" mode="0700"
    symlink "/bin/sh" target="run.sh"
}
layer "as-is" {
    copy ":inner" to="/opt/"
}
layer "l" {
    owner "9:9"
    copy ":inner" to="/opt/" mode="0600" owner="5:6"
}
image "img" {
    from "scratch"
    layers ":l"
}
image "as-is-img" {
    from "scratch"
    layers ":as-is"
}
"#,
        ),
        ("pkg/run.sh", "#!/bin/sh\n"),
    ]);
    std::fs::set_permissions(
        ws.path("pkg/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    ws.build(&[]);
    use tar::EntryType::{Directory as D, Regular as R, Symlink as S};
    let got = |layout: &Path| -> Vec<(String, tar::EntryType, u32, u64, u64)> {
        last_layer(layout)
            .into_iter()
            .map(|e| (e.path, e.kind, e.mode, e.uid, e.gid))
            .collect()
    };
    // `mode` applies to the files, `owner` to every entry.
    assert_eq!(
        got(&ws.layout("pkg", "img")),
        [
            ("opt/bin/run.sh".to_string(), R, 0o600, 5, 6),
            ("opt/bin/sh".to_string(), S, 0o777, 5, 6),
            ("opt/etc/a.conf".to_string(), R, 0o600, 5, 6),
            ("opt/var/lib/x/".to_string(), D, 0o700, 5, 6),
        ]
    );
    // Without them, the entries keep what their own layer gave them.
    assert_eq!(
        got(&ws.layout("pkg", "as-is-img")),
        [
            ("opt/bin/run.sh".to_string(), R, 0o755, 7, 7),
            ("opt/bin/sh".to_string(), S, 0o777, 7, 7),
            ("opt/etc/a.conf".to_string(), R, 0o644, 7, 7),
            ("opt/var/lib/x/".to_string(), D, 0o700, 7, 7),
        ]
    );
}

#[test]
fn copy_of_a_layer_with_exclude_is_refused_by_check() {
    let ws = Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "pkg/BUILD.kdl",
            "layer \"inner\" {\n    text \"/a\" \"a\\n\"\n}\nlayer \"l\" {\n    copy \":inner\" to=\"/opt/\" exclude=\"a\"\n}\n",
        ),
    ]);
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("E016"), "{err}");
    assert!(
        err.contains("`exclude` does not apply to a `copy` of a target's outputs"),
        "{err}"
    );
    assert!(err.contains("pkg/BUILD.kdl:5:"), "{err}");
}

#[test]
fn file_names_that_are_not_utf8_are_refused_by_name() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    for body in [
        r#"copy "d" to="/d""#,
        r#"copy "d/*.txt" to="/d/""#,
        r#"copy "d/**" to="/d/""#,
    ] {
        let ws = one_layer_ws(body);
        ws.write("pkg/d/ok.txt", "ok\n");
        std::fs::write(ws.path("pkg/d").join(bad), "bad\n").unwrap();
        let err = build_fails(&ws);
        assert!(err.contains("E019"), "{body}: {err}");
        assert!(
            err.contains(r"`pkg/d` holds a file name that is not valid UTF-8: `caf\xe9.txt`"),
            "{body}: {err}"
        );
    }
    // Below a directory whose own name is not UTF-8, that directory is named.
    let ws = one_layer_ws(r#"copy "d/**/*.txt" to="/d/""#);
    ws.write("pkg/d/ok.txt", "ok\n");
    let sub = ws
        .path("pkg/d")
        .join(std::ffi::OsStr::from_bytes(b"sub\xff"));
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("x.txt"), "x\n").unwrap();
    let err = build_fails(&ws);
    assert!(
        err.contains(r"`pkg/d` holds a file name that is not valid UTF-8: `sub\xff`"),
        "{err}"
    );
    // A name that would not be copied is no problem: excluded, or not matched.
    for body in [
        r#"copy "d" to="/d" exclude="d/caf*""#,
        r#"copy "d/ok.*" to="/d/""#,
    ] {
        let ws = one_layer_ws(body);
        ws.write("pkg/d/ok.txt", "ok\n");
        std::fs::write(ws.path("pkg/d").join(bad), "bad\n").unwrap();
        ws.build(&[]);
        let entries = last_layer(&ws.layout("pkg", "img"));
        assert!(paths(&entries).contains(&"d/ok.txt"), "{body}");
        assert_eq!(entries.len(), if body.contains("exclude") { 2 } else { 1 });
    }
}

/// Sets the mtime of `path` to a fixed time in the past.
fn set_mtime(path: &Path) {
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_mtime(path, t).unwrap();
}

/// The race of the issue, made deterministic with the engine's `before_run`
/// hook: the layer is keyed on one content, then its source is rewritten with
/// other bytes of the same size and the same mtime before the layer is
/// written. The layer must fail and cache nothing; restoring the old content
/// must then build the old bytes, not serve the rewritten ones from the cache.
#[test]
fn a_source_rewritten_after_keying_fails_the_layer_and_caches_nothing() {
    let original: &[u8] = b"original content\n";
    let rewritten: &[u8] = b"replaced content\n";
    assert_eq!(original.len(), rewritten.len());
    let ws = one_layer_ws(r#"    copy "data.bin" to="/data.bin""#);
    let src = ws.path("pkg/data.bin");
    std::fs::write(&src, original).unwrap();
    set_mtime(&src);

    let ctx = context(&ws);
    let (mut loaded, selected, mut settings) = engine_setup(&ctx, 1, false);
    let hooked = src.clone();
    settings.before_run = Some(std::sync::Arc::new(move |label| {
        if label.to_string() == "//pkg:l" {
            std::fs::write(&hooked, rewritten).unwrap();
            set_mtime(&hooked);
        }
    }));
    let mut reporter =
        imgc::report::Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone()).quiet();
    let summary =
        imgc::commands::build::run_engine(&ctx, &mut loaded, &selected, settings, &mut reporter)
            .unwrap();
    assert_eq!(summary.failed, 1, "the layer must fail");
    let failure = summary
        .outcomes
        .values()
        .find_map(|o| match o {
            imgc::scheduler::Outcome::Failed(e) => Some(e.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(
        failure.contains("pkg/data.bin")
            && failure.contains("not what the layer's key was computed from"),
        "{failure}"
    );
    assert!(!ws.layout("pkg", "img").exists());

    // Back to the original content, size and mtime: the key is the first
    // build's again. Nothing was cached under it, so the layer runs and
    // holds the original bytes.
    std::fs::write(&src, original).unwrap();
    set_mtime(&src);
    let ev = ws.build(&[]);
    assert_eq!(ev.ran(), ["//pkg:img", "//pkg:l"]);
    let entries = last_layer(&ws.layout("pkg", "img"));
    assert_eq!(paths(&entries), ["data.bin"]);
    assert_eq!(entries[0].body, original);
}

/// A cold build keys its layers only a little ahead of running them (at most
/// `2 x -j` open at once), so it never holds what keying prepared for every layer
/// of the workspace at once. Seen from outside: at `-j 1`, when the first layer
/// runs, at most two layers have been keyed (that one and the next), so
/// rewriting every source then (same size, same mtime) fails at most those two;
/// keying every layer first failed them all.
#[test]
fn a_cold_build_keys_layers_only_a_little_ahead_of_running() {
    const LAYERS: usize = 8;
    let mut spec = String::new();
    for i in 0..LAYERS {
        spec.push_str(&format!(
            "layer \"l{i}\" {{\n    copy \"f{i}.txt\" to=\"/f{i}.txt\"\n}}\n"
        ));
    }
    let ws = Ws::new(&[("imgc.kdl", "workspace {}\n"), ("pkg/BUILD.kdl", &spec)]);
    let sources: Vec<_> = (0..LAYERS)
        .map(|i| ws.path(&format!("pkg/f{i}.txt")))
        .collect();
    for src in &sources {
        std::fs::write(src, b"original content\n").unwrap();
        set_mtime(src);
    }

    let ctx = context(&ws);
    let (mut loaded, selected, mut settings) = engine_setup(&ctx, 1, true);
    let first = std::sync::atomic::AtomicBool::new(true);
    let hooked = sources.clone();
    settings.before_run = Some(std::sync::Arc::new(move |_| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            for src in &hooked {
                std::fs::write(src, b"replaced content\n").unwrap();
                set_mtime(src);
            }
        }
    }));
    let mut reporter =
        imgc::report::Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone()).quiet();
    let summary =
        imgc::commands::build::run_engine(&ctx, &mut loaded, &selected, settings, &mut reporter)
            .unwrap();
    assert_eq!(summary.outcomes.len(), LAYERS);
    assert!(
        summary.failed <= 2,
        "{} of {LAYERS} layers were keyed before the first one ran",
        summary.failed
    );
    assert_eq!(summary.ran, LAYERS - summary.failed);
}

#[test]
fn copy_of_the_package_directory_copies_its_contents() {
    let ws = one_layer_ws(r#"    copy "." to="/app/" exclude="BUILD.kdl""#);
    ws.write("pkg/a.txt", "a\n");
    ws.write("pkg/sub/b.txt", "b\n");
    ws.build(&[]);
    assert_eq!(
        paths(&last_layer(&ws.layout("pkg", "img"))),
        ["app/", "app/a.txt", "app/sub/", "app/sub/b.txt"]
    );
}
