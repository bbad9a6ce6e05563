//! A workspace may be hostile, and `output-dir` may be wrong: imgc never writes,
//! replaces or deletes anything it did not make, never reads outside the
//! workspace, and refuses what it cannot handle with a clear error instead of a
//! crash. Each test plays the attacker (or the careless user) and checks that the
//! victim's files are byte-identical afterwards.

use crate::support::*;
use std::collections::BTreeMap;
use std::path::Path;

/// A directory outside the workspace holding files someone cares about.
struct Victim {
    dir: tempfile::TempDir,
    before: BTreeMap<String, Vec<u8>>,
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in [
            ("Documents/thesis.txt", "years of work\n"),
            ("Documents/app/notes.txt", "notes\n"),
            ("app/app/keep.txt", "keep me\n"),
            ("base/base/index.json", "not an image\n"),
        ] {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        let before = tree_bytes(dir.path());
        Victim { dir, before }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn assert_untouched(&self) {
        assert_eq!(
            tree_bytes(self.path()),
            self.before,
            "files outside the workspace changed"
        );
    }
}

fn symlink(target: &Path, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

/// A workspace whose root package has an image named like the victim's folder.
fn documents_ws() -> Ws {
    Ws::new(&[
        ("imgc.kdl", "workspace {\n}\n"),
        (
            "BUILD.kdl",
            "image \"Documents\" {\n    from \"scratch\"\n    layer {\n        text \"/x\" \"x\"\n    }\n}\n",
        ),
    ])
}

#[test]
fn symlinked_output_root_is_never_written_through_nor_cleaned() {
    let victim = Victim::new();
    let ws = documents_ws();
    symlink(victim.path(), &ws.path("imgc-out"));
    let out = ws.run(&["build"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("`imgc-out` is a symbolic link"), "{err}");
    victim.assert_untouched();
    let out = ws.run(&["clean"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    victim.assert_untouched();
    assert!(
        std::fs::symlink_metadata(ws.path("imgc-out"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn symlinked_package_directory_inside_the_output_is_refused() {
    let victim = Victim::new();
    let ws = small_ws();
    ws.build(&[]);
    // The repository (or someone) swaps a package directory of the output for a link.
    std::fs::remove_dir_all(ws.path("imgc-out/app")).unwrap();
    symlink(&victim.path().join("app"), &ws.path("imgc-out/app"));
    ws.write("app/config.toml", "port = 9090\n");
    let out = ws.run(&["build"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`imgc-out/app` is a symbolic link"),
        "{}",
        stderr(&out)
    );
    victim.assert_untouched();
    // clean removes what imgc made and leaves the link (and what it points at).
    let out = ws.ok(&["clean"]);
    assert!(
        stderr(&out).contains("kept `imgc-out/app`"),
        "{}",
        stderr(&out)
    );
    victim.assert_untouched();
    assert!(!ws.path("imgc-out/base").exists());
    assert!(
        std::fs::symlink_metadata(ws.path("imgc-out/app"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn unmarked_directory_where_a_layout_goes_is_not_replaced() {
    let ws = small_ws();
    ws.build(&[]);
    std::fs::remove_dir_all(ws.layout("app", "app")).unwrap();
    ws.write("imgc-out/app/app/mine.txt", "mine\n");
    let before = tree_bytes(&ws.layout("app", "app"));
    let out = ws.run(&["build"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`imgc-out/app/app` exists but imgc did not write it"),
        "{err}"
    );
    assert_eq!(tree_bytes(&ws.layout("app", "app")), before);
    // The other image was still written; clean keeps the stranger's directory.
    assert!(ws.layout("base", "base").join("index.json").is_file());
    let out = ws.ok(&["clean"]);
    assert!(
        stderr(&out).contains("kept `imgc-out/app/app`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_bytes(&ws.layout("app", "app")), before);
    assert!(!ws.layout("base", "base").exists());
}

#[test]
fn a_layout_holding_foreign_files_is_not_replaced() {
    let ws = small_ws();
    ws.build(&[]);
    ws.write("imgc-out/app/app/notes.txt", "mine\n");
    ws.write("app/config.toml", "port = 9090\n");
    let out = ws.run(&["build"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds `notes.txt`, which imgc did not write"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("imgc-out/app/app/notes.txt")).unwrap(),
        "mine\n"
    );
}

#[test]
fn unmarked_existing_output_root_is_refused_and_kept() {
    let ws = small_ws();
    ws.write("imgc-out/photos/cat.jpg", "meow");
    let before = tree_bytes(&ws.path("imgc-out"));
    for args in [&["build"][..], &["clean"][..]] {
        let out = ws.run(args);
        assert_eq!(code(&out), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("exists but imgc did not make it"),
            "{}",
            stderr(&out)
        );
        assert_eq!(tree_bytes(&ws.path("imgc-out")), before);
    }
    // An empty directory is adopted.
    std::fs::remove_dir_all(ws.path("imgc-out")).unwrap();
    std::fs::create_dir(ws.path("imgc-out")).unwrap();
    ws.build(&[]);
    assert!(ws.layout("app", "app").join("index.json").is_file());
}

#[test]
fn output_dir_naming_sources_root_git_or_outside_is_refused() {
    let cases: &[(&str, &str)] = &[
        ("app", "is the package `//app`"),
        ("base/..", "may not be the workspace root itself"),
        (".", "may not be the workspace root itself"),
        (".git", "may not be `.git` or inside it"),
        (".git/objects", "may not be `.git` or inside it"),
        ("..", "leaves the workspace"),
        ("../elsewhere", "leaves the workspace"),
        ("/tmp/out", "is absolute"),
        ("app/out", "is inside the package `//app`"),
    ];
    for (dir, why) in cases {
        let ws = small_ws();
        ws.write("app/BUILD.kdl.bak", "not a spec\n");
        ws.write(".git/HEAD", "ref: refs/heads/main\n");
        ws.write("app/out/data.txt", "sources\n");
        ws.write(
            "imgc.kdl",
            &format!("workspace {{\n    output-dir \"{dir}\"\n}}\n"),
        );
        let before = tree_bytes(ws.root());
        for cmd in ["check", "build"] {
            let out = ws.run(&[cmd]);
            assert_eq!(code(&out), Some(1), "{dir}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(err.contains(why), "{dir}: {err}");
            assert!(
                err.contains("imgc.kdl:2:"),
                "{dir}: the place in imgc.kdl: {err}"
            );
        }
        let _ = ws.run(&["clean"]);
        assert_eq!(
            tree_bytes(ws.root()),
            before,
            "{dir}: the workspace changed"
        );
    }
    // A directory holding packages (not one itself) is refused as well.
    let ws = small_ws();
    ws.write("imgc.kdl", "workspace {\n    output-dir \"base\"\n}\n");
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("is the package `//base`"),
        "{}",
        stderr(&out)
    );
    let ws = small_ws();
    ws.write(
        "services/api/BUILD.kdl",
        "layer \"l\" {\n    text \"/a\" \"a\"\n}\n",
    );
    ws.write("imgc.kdl", "workspace {\n    output-dir \"services\"\n}\n");
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("holds the package `//services/api`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stale_layouts_are_removed_by_a_full_build_and_clean_stale() {
    let ws = small_ws();
    ws.build(&[]);
    assert!(ws.layout("base", "base").is_dir());
    // Rename the base image: its old layout is stale.
    let text = std::fs::read_to_string(ws.path("base/BUILD.kdl")).unwrap();
    ws.write(
        "base/BUILD.kdl",
        &text.replace("image \"base\"", "image \"runtime\""),
    );
    let app = std::fs::read_to_string(ws.path("app/BUILD.kdl")).unwrap();
    ws.write(
        "app/BUILD.kdl",
        &app.replace("//base:base", "//base:runtime"),
    );
    // A partial build leaves it.
    ws.build(&["//app:app"]);
    assert!(ws.layout("base", "base").join("index.json").is_file());
    // A build of everything removes it (and says so), and keeps the others.
    let ev = ws.build(&[]);
    let removed: Vec<&serde_json::Value> =
        ev.0.iter().filter(|e| e["event"] == "removed").collect();
    assert_eq!(removed.len(), 1, "{:?}", ev.0);
    assert_eq!(removed[0]["path"], "imgc-out/base/base");
    assert!(!ws.layout("base", "base").exists());
    assert!(ws.layout("base", "runtime").join("index.json").is_file());
    assert!(ws.layout("app", "app").join("index.json").is_file());
    // Human output: a line on stderr.
    ws.write(
        "base/BUILD.kdl",
        &text.replace("image \"base\"", "image \"rt\""),
    );
    ws.write("app/BUILD.kdl", &app.replace("//base:base", "//base:rt"));
    let out = ws.ok(&["build", "//..."]);
    assert!(
        stderr(&out).contains("removed the stale layout `imgc-out/base/runtime`"),
        "{}",
        stderr(&out)
    );
    // clean --stale: a package that is gone entirely; its directory goes too.
    std::fs::remove_dir_all(ws.path("app")).unwrap();
    let out = ws.ok(&["clean", "--stale"]);
    assert!(
        stdout(&out).contains("removed the stale layout `imgc-out/app/app`"),
        "{}",
        stdout(&out)
    );
    assert!(!ws.path("imgc-out/app").exists());
    assert!(ws.layout("base", "rt").join("index.json").is_file());
    let out = ws.ok(&["clean", "--stale"]);
    assert!(
        stdout(&out).contains("no stale layouts"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn clean_removes_only_what_imgc_made() {
    let ws = small_ws();
    ws.build(&[]);
    ws.write("imgc-out/README.txt", "mine\n");
    ws.write("imgc-out/app/extra/file.txt", "mine too\n");
    let out = ws.ok(&["clean"]);
    let err = stderr(&out);
    assert!(err.contains("kept `imgc-out/README.txt`"), "{err}");
    assert!(err.contains("kept `imgc-out/app/extra`"), "{err}");
    assert!(!ws.layout("app", "app").exists());
    assert!(!ws.layout("base", "base").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path("imgc-out/app/extra/file.txt")).unwrap(),
        "mine too\n"
    );
    // Without strangers, the whole output directory goes.
    std::fs::remove_file(ws.path("imgc-out/README.txt")).unwrap();
    std::fs::remove_dir_all(ws.path("imgc-out/app/extra")).unwrap();
    let out = ws.ok(&["clean"]);
    assert!(
        stdout(&out).contains("removed `imgc-out`"),
        "{}",
        stdout(&out)
    );
    assert!(!ws.path("imgc-out").exists());
}

#[test]
fn deeply_nested_build_file_is_a_diagnostic_not_a_crash() {
    let ws = small_ws();
    let n = 2000;
    ws.write(
        "deep/BUILD.kdl",
        &format!("layer \"x\" {}{}\n", "{ a ".repeat(n), "}".repeat(n)),
    );
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("E040"), "{}", stderr(&out));
    assert!(stderr(&out).contains("nested more than 32 levels"));
    // Children blocks commented out inside each other would take exponential time.
    ws.write(
        "deep/BUILD.kdl",
        &format!("layer \"x\" {}{}\n", "/-{ a ".repeat(30), "}".repeat(30)),
    );
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("commented out with `/-` are nested 30 deep"));
    // Stray characters at the top level (each one a recursion in the KDL parser).
    ws.write("deep/BUILD.kdl", &"}".repeat(200_000));
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
}

#[test]
fn jobs_above_the_maximum_are_a_usage_error() {
    let ws = small_ws();
    let out = ws.run(&["build", "-j", "99999999999"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("at most") || stderr(&out).contains("more than"));
    assert!(!ws.path("imgc-out").exists());
    ws.ok(&["build", "-j", "1024"]);
}

#[test]
fn overlong_image_names_are_refused_at_check() {
    let ws = small_ws();
    let name = "n".repeat(300);
    ws.write(
        "long/BUILD.kdl",
        &format!("image \"{name}\" {{\n    from \"scratch\"\n}}\n"),
    );
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("E040"), "{err}");
    assert!(err.contains("long/BUILD.kdl:1:7"), "{err}");
    // A long package path with a name that fits, too long as a whole path.
    let ws = small_ws();
    // The BUILD.kdl's own path stays under PATH_MAX; the layout's would not fit.
    let budget = 3990 - ws.root().as_os_str().len() - "/BUILD.kdl".len() - 1;
    let mut deep: Vec<String> = Vec::new();
    let mut len = 0;
    while len < budget {
        let n = (budget - len).min(201);
        deep.push("d".repeat(n.max(1)));
        len += n + 1;
    }
    let pkg = deep.join("/");
    ws.write(
        &format!("{pkg}/BUILD.kdl"),
        "image \"i\" {\n    from \"scratch\"\n}\n",
    );
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("would be at a path of"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn linked_build_file_inside_is_used_and_outside_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("BUILD.kdl"),
        "layer \"secret\" {\n    text \"/s\" \"s\"\n}\n",
    )
    .unwrap();
    let ws = small_ws();
    ws.write(
        "shared/real.kdl",
        "layer \"l\" {\n    text \"/a\" \"a\"\n}\n",
    );
    symlink(Path::new("real.kdl"), &ws.path("shared/BUILD.kdl"));
    let out = ws.ok(&["query", "targets", "//shared:all"]);
    assert_eq!(stdout(&out).trim(), "//shared:l");
    symlink(
        &outside.path().join("BUILD.kdl"),
        &ws.path("evil/BUILD.kdl"),
    );
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("`evil/BUILD.kdl` is a symbolic link to a file outside the workspace"),
        "{}",
        stderr(&out)
    );
    // A link to a FIFO is refused without opening it (it would block).
    std::fs::remove_file(ws.path("evil/BUILD.kdl")).unwrap();
    let fifo = ws.path("evil/fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    symlink(Path::new("fifo"), &ws.path("evil/BUILD.kdl"));
    let out = ws.run(&["check"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
}

/// `imgc.kdl` is read through the opened workspace root like every spec file:
/// a link to a file inside is followed, a link out of the workspace is refused
/// (it used to be read by path, wherever it led).
#[test]
fn linked_workspace_file_inside_is_used_and_outside_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let text = "workspace {\n    source-date-epoch 1700000000\n}\n";
    std::fs::write(outside.path().join("imgc.kdl"), text).unwrap();
    let ws = small_ws();
    ws.write("conf/imgc.kdl", text);
    std::fs::remove_file(ws.path("imgc.kdl")).unwrap();
    symlink(Path::new("conf/imgc.kdl"), &ws.path("imgc.kdl"));
    ws.ok(&["check"]);
    std::fs::remove_file(ws.path("imgc.kdl")).unwrap();
    symlink(&outside.path().join("imgc.kdl"), &ws.path("imgc.kdl"));
    let out = ws.run(&["check"]);
    assert_ne!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resolves outside the workspace through a symbolic link"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn patterns_that_only_subtract_are_a_usage_error() {
    let ws = small_ws();
    let out = ws.run(&["build", "--", "-//..."]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("only subtract"), "{}", stderr(&out));
    let out = ws.run(&["build", "--", "//app/...", "-//app:all"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("select nothing"), "{}", stderr(&out));
    assert!(!ws.path("imgc-out").exists());
}

#[test]
fn control_characters_in_printed_paths_are_escaped() {
    let ws = small_ws();
    ws.write(
        "app/BUILD.kdl",
        "image \"app\" {\n    from \"scratch\"\n    layer {\n        copy \"x\\u{1b}[2Jy\" to=\"/x\"\n    }\n}\n",
    );
    let out = ws.run(&["build"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        !err.contains('\u{1b}'),
        "a raw escape reached the terminal: {err:?}"
    );
    assert!(err.contains("x\\u{1b}[2Jy"), "{err}");
}

#[test]
fn read_only_cache_error_is_printed_once() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("setpriv") {
        eprintln!("note: needs root and setpriv to drop privileges; skipped");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let ws = small_ws();
    let cache = tempfile::tempdir().unwrap();
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(ws.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(imgc_bin())
        .arg("build")
        .current_dir(ws.root())
        .env("IMGC_CACHE_DIR", cache.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("Permission denied").count(), 1, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn a_full_disk_is_an_environment_error() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("unshare") {
        eprintln!("note: needs root and unshare to mount a small tmpfs; skipped");
        return;
    }
    let ws = small_ws();
    // 2 MB that do not compress: the layer cannot fit a 1 MB cache.
    let mut noise = Vec::with_capacity(2 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 2 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    ws.write_bytes("app/src/noise.bin", &noise);
    let cache = tempfile::tempdir().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{}' && exec '{}' --cache-dir '{}' build",
        cache.path().display(),
        imgc_bin(),
        cache.path().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .current_dir(ws.root())
        .env("NO_COLOR", "1")
        .env_remove("IMGC_CACHE_DIR")
        .output()
        .unwrap();
    if stderr(&out).contains("mount:") {
        eprintln!("note: cannot mount here ({}); skipped", stderr(&out));
        return;
    }
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("disk is full"), "{err}");
}
