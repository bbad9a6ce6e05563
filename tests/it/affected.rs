//! `imgc affected` on git repositories and listed files, and `imgc query
//! rdeps` over paths.

use crate::support::*;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs git in `dir` with a fixed identity and no user or system config.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn commit_all(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
}

const BASES: &str = r#"layer "files" {
    copy "etc" to="/etc/"
}
image "runtime" {
    from "scratch"
    layers ":files"
}
"#;

const SVC_A: &str = r#"layer "app" {
    copy "bin/server" to="/app/server"
    copy "conf/*.toml" to="/etc/a/" exclude="conf/dev-*.toml"
}
image "a" {
    from "//bases:runtime"
    layers ":app"
}
"#;

const SVC_B: &str = r#"layer "app" {
    copy "static" to="/srv"
}
image "b" {
    from "//bases:runtime"
    layers ":app"
    env MODE="prod"
}
image "b-debug" {
    from ":b"
    env DEBUG="1"
}
"#;

const SVC_C: &str = r#"image "c" {
    from "scratch"
    layer {
        text "/etc/c" "c\n"
    }
}
"#;

/// Four images: `//bases:runtime`, `//svc/a:a` and `//svc/b:b` on it,
/// `//svc/b:b-debug` on `b`, and `//svc/c:c` on scratch.
fn fixture_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("imgc.kdl", "workspace {\n    source-date-epoch 0\n}\n"),
        (".gitignore", "imgc-out/\n"),
        ("bases/BUILD.kdl", BASES),
        ("bases/etc/passwd", "root:x:0:0::/:/bin/sh\n"),
        ("bases/etc/group", "root:x:0:\n"),
        ("svc/a/BUILD.kdl", SVC_A),
        ("svc/a/bin/server", "#!/bin/sh\necho a\n"),
        ("svc/a/conf/prod.toml", "port = 1\n"),
        ("svc/a/conf/dev-local.toml", "port = 2\n"),
        ("svc/b/BUILD.kdl", SVC_B),
        ("svc/b/static/index.html", "<p>b</p>\n"),
        ("svc/b/static/css/site.css", "p {}\n"),
        ("svc/c/BUILD.kdl", SVC_C),
        ("README.md", "fixture\n"),
    ]
}

/// The fixture, committed once.
fn repo() -> Ws {
    let ws = Ws::new(&fixture_files());
    git(ws.root(), &["init", "-q"]);
    commit_all(ws.root(), "init");
    ws
}

/// `imgc affected ARGS` from the workspace root: the labels printed.
fn affected(ws: &Ws, args: &[&str]) -> Vec<String> {
    let mut a = vec!["affected"];
    a.extend_from_slice(args);
    let out = ws.ok(&a);
    stdout(&out).lines().map(str::to_string).collect()
}

fn since(ws: &Ws, rev: &str) -> Vec<String> {
    affected(ws, &["--since", rev])
}

#[test]
fn affected_follows_edits_renames_deletions_and_new_files() {
    let ws = repo();
    assert_eq!(since(&ws, "HEAD"), Vec::<String>::new(), "a clean tree");

    // An edited file, not yet committed, then committed.
    ws.write("svc/a/bin/server", "#!/bin/sh\necho A\n");
    assert_eq!(since(&ws, "HEAD"), ["//svc/a:a"]);
    commit_all(ws.root(), "edit");
    assert_eq!(since(&ws, "HEAD"), Vec::<String>::new());
    assert_eq!(since(&ws, "HEAD~1"), ["//svc/a:a"]);

    // A renamed file (staged, so git sees the rename): both sides count.
    git(
        ws.root(),
        &["mv", "svc/b/static/css/site.css", "svc/b/static/site.css"],
    );
    assert_eq!(since(&ws, "HEAD"), ["//svc/b:b", "//svc/b:b-debug"]);
    // A file renamed out of every layer still affects what had it.
    git(ws.root(), &["reset", "-q", "--hard"]);
    git(
        ws.root(),
        &["mv", "svc/b/static/index.html", "svc/b/index.html"],
    );
    assert_eq!(since(&ws, "HEAD"), ["//svc/b:b", "//svc/b:b-debug"]);
    git(ws.root(), &["reset", "-q", "--hard"]);

    // A deleted file of the base: everything on it.
    std::fs::remove_file(ws.path("bases/etc/group")).unwrap();
    assert_eq!(
        since(&ws, "HEAD"),
        [
            "//bases:runtime",
            "//svc/a:a",
            "//svc/b:b",
            "//svc/b:b-debug"
        ]
    );
    commit_all(ws.root(), "delete");
    assert_eq!(
        since(&ws, "HEAD~1"),
        [
            "//bases:runtime",
            "//svc/a:a",
            "//svc/b:b",
            "//svc/b:b-debug"
        ]
    );

    // New files: one the glob matches (untracked, then committed), one it
    // matches but `exclude` leaves out, one it does not match.
    ws.write("svc/a/conf/extra.toml", "x = 1\n");
    assert_eq!(since(&ws, "HEAD"), ["//svc/a:a"]);
    commit_all(ws.root(), "add");
    assert_eq!(since(&ws, "HEAD~1"), ["//svc/a:a"]);
    ws.write("svc/a/conf/dev-more.toml", "x = 2\n");
    ws.write("svc/a/conf/notes.txt", "-\n");
    ws.write("README.md", "changed\n");
    assert_eq!(since(&ws, "HEAD"), Vec::<String>::new());
    // ... and ignored files are not seen at all (the build output).
    ws.write("imgc-out/svc/a/a/index.json", "{}");
    assert_eq!(since(&ws, "HEAD"), Vec::<String>::new());

    // Everything since the first commit, as JSON with the causes.
    let out = ws.ok(&["affected", "--since", "HEAD~3", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"label": "//bases:runtime", "because": ["bases/etc/group"]},
            {"label": "//svc/a:a", "because": ["bases/etc/group", "svc/a/bin/server", "svc/a/conf/extra.toml"]},
            {"label": "//svc/b:b", "because": ["bases/etc/group"]},
            {"label": "//svc/b:b-debug", "because": ["bases/etc/group"]},
        ])
    );
    assert_eq!(
        stderr(&out).trim_end(),
        "4 of 5 images affected by 6 changed paths",
        "three commits' changes, README.md and two untracked files (not the ignored one)"
    );
}

#[test]
fn a_build_kdl_edit_affects_only_the_targets_it_changes() {
    let ws = repo();
    // `b-debug` gets another env value; `b` and its layer stay as they were.
    ws.write(
        "svc/b/BUILD.kdl",
        &SVC_B.replace("DEBUG=\"1\"", "DEBUG=\"2\""),
    );
    assert_eq!(since(&ws, "HEAD"), ["//svc/b:b-debug"]);
    let out = ws.ok(&["affected", "--since", "HEAD", "--output", "json"]);
    assert_eq!(
        stdout(&out),
        "[\n  {\n    \"label\": \"//svc/b:b-debug\",\n    \"because\": [\n      \"svc/b/BUILD.kdl: //svc/b:b-debug changed\"\n    ]\n  }\n]\n"
    );
    commit_all(ws.root(), "debug 2");
    assert_eq!(since(&ws, "HEAD~1"), ["//svc/b:b-debug"]);

    // The layer changes: both images on it.
    ws.write(
        "svc/b/BUILD.kdl",
        &SVC_B
            .replace("DEBUG=\"1\"", "DEBUG=\"2\"")
            .replace("\"/srv\"", "\"/srv/www\""),
    );
    assert_eq!(since(&ws, "HEAD"), ["//svc/b:b", "//svc/b:b-debug"]);
    git(ws.root(), &["checkout", "-q", "--", "."]);

    // A new image in an existing package, and a new package.
    ws.write(
        "svc/c/BUILD.kdl",
        &format!("{SVC_C}image \"c2\" {{\n    from \":c\"\n}}\n"),
    );
    ws.write(
        "svc/d/BUILD.kdl",
        "image \"d\" {\n    from \"scratch\"\n}\n",
    );
    let out = ws.ok(&["affected", "--since", "HEAD", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"label": "//svc/c:c2", "because": ["svc/c/BUILD.kdl: //svc/c:c2 added"]},
            {"label": "//svc/d:d", "because": ["svc/d/BUILD.kdl: //svc/d:d added"]},
        ])
    );
    git(ws.root(), &["clean", "-q", "-f", "-d"]);
    git(ws.root(), &["checkout", "-q", "--", "."]);

    // A removed image affects nothing by itself (what depended on it would
    // have had to change too).
    ws.write(
        "svc/b/BUILD.kdl",
        &SVC_B[..SVC_B.find("image \"b-debug\"").unwrap()],
    );
    assert_eq!(since(&ws, "HEAD"), Vec::<String>::new());
}

#[test]
fn a_reformatted_build_kdl_affects_nothing() {
    let ws = repo();
    // Comments, whitespace, `;`-separated nodes, and the images before the
    // layer: the same lowered targets.
    ws.write(
        "svc/b/BUILD.kdl",
        r#"// The b service.
image "b-debug" { from ":b"; env DEBUG="1"; }

image "b" {
        from   "//bases:runtime"      // the base
        layers ":app"
        env MODE="prod"
}
/* its files */
layer "app" { copy "static" to="/srv"; }
"#,
    );
    // imgc.kdl: comments, and settings that enter no key.
    ws.write(
        "imgc.kdl",
        "// the workspace\nworkspace { source-date-epoch 0; remote-cache \"/mnt/ci/imgc\"; }\n",
    );
    assert_eq!(since(&ws, "HEAD"), Vec::<String>::new());
    commit_all(ws.root(), "reformat");
    assert_eq!(since(&ws, "HEAD~1"), Vec::<String>::new());

    // Unless a layer copies the spec file itself: then its bytes matter.
    ws.write(
        "svc/c/BUILD.kdl",
        "layer \"src\" {\n    copy \".\" to=\"/src/\"\n}\nimage \"c\" {\n    from \"scratch\"\n    layers \":src\"\n}\n",
    );
    commit_all(ws.root(), "copy the package");
    let text = std::fs::read_to_string(ws.path("svc/c/BUILD.kdl")).unwrap();
    ws.write("svc/c/BUILD.kdl", &format!("// a comment\n{text}"));
    let out = ws.ok(&["affected", "--since", "HEAD", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"label": "//svc/c:c", "because": ["svc/c/BUILD.kdl"]}])
    );
}

#[test]
fn imgc_kdl_settings_that_enter_keys_affect_every_image() {
    let ws = repo();
    for (setting, because) in [
        ("compression \"zstd\"", "imgc.kdl: compression changed"),
        ("source-date-epoch 7", "imgc.kdl: source-date-epoch changed"),
        ("platform \"linux/arm64\"", "imgc.kdl: platform changed"),
    ] {
        ws.write("imgc.kdl", &format!("workspace {{\n    {setting}\n}}\n"));
        let out = ws.ok(&["affected", "--since", "HEAD", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let v = v.as_array().unwrap();
        assert_eq!(v.len(), 5, "{setting}: {v:?}");
        for image in v {
            assert_eq!(image["because"], serde_json::json!([because]), "{setting}");
        }
    }
    // `output-dir` enters no key.
    ws.write("imgc.kdl", "workspace {\n    output-dir \"out\"\n}\n");
    assert_eq!(since(&ws, "HEAD"), Vec::<String>::new());
}

#[test]
fn affected_with_listed_files_and_stdin() {
    // No git at all: `--files` needs none.
    let ws = Ws::new(&fixture_files());
    assert_eq!(
        affected(&ws, &["--files", "svc/a/bin/server"]),
        ["//svc/a:a"]
    );
    // Relative to the current directory; deleted (missing) files count.
    let out = ws
        .cmd(&[
            "affected",
            "--files",
            "static/gone.css",
            "../a/conf/new.toml",
            "./nothing",
        ])
        .current_dir(ws.path("svc/b"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "//svc/a:a\n//svc/b:b\n//svc/b:b-debug\n");
    // A directory stands for everything in it.
    assert_eq!(
        affected(&ws, &["--files", "bases/etc"]),
        [
            "//bases:runtime",
            "//svc/a:a",
            "//svc/b:b",
            "//svc/b:b-debug"
        ]
    );
    // A listed BUILD.kdl affects every target of its package (there is no
    // old text to compare); a listed imgc.kdl every target.
    assert_eq!(
        affected(&ws, &["--files", "svc/b/BUILD.kdl"]),
        ["//svc/b:b", "//svc/b:b-debug"]
    );
    assert_eq!(affected(&ws, &["--files", "imgc.kdl"]).len(), 5);

    // `-` reads newline-separated paths from stdin, mixed with arguments.
    let mut child = ws
        .cmd(&[
            "affected",
            "--files",
            "-",
            "svc/c/BUILD.kdl",
            "--output",
            "json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"svc/a/conf/prod.toml\r\n\nREADME.md\n../outside\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            {"label": "//svc/a:a", "because": ["svc/a/conf/prod.toml"]},
            {"label": "//svc/c:c", "because": ["svc/c/BUILD.kdl: listed"]},
        ])
    );
    assert!(
        stderr(&out).contains("warning: `../outside` is outside the workspace: ignored"),
        "{}",
        stderr(&out)
    );

    // Nothing affected: nothing on stdout (an empty line would be a label).
    let out = ws.ok(&["affected", "--files", "README.md"]);
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), "0 of 5 images affected by 1 changed path\n");
}

#[test]
fn a_workspace_in_a_subdirectory_of_the_repository() {
    let ws = Ws::new(&[("README.md", "the repository\n"), ("tools/x.sh", "echo\n")]);
    for (p, c) in fixture_files() {
        ws.write(&format!("images/{p}"), c);
    }
    git(ws.root(), &["init", "-q"]);
    commit_all(ws.root(), "init");
    let run = |args: &[&str]| -> String {
        let out = ws
            .cmd(args)
            .current_dir(ws.path("images/svc"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    ws.write("tools/x.sh", "echo changed\n");
    ws.write("README.md", "changed\n");
    ws.write("images/svc/b/static/new.html", "new\n");
    git(
        ws.root(),
        &[
            "mv",
            "images/svc/a/conf/prod.toml",
            "images/svc/a/conf/production.toml",
        ],
    );
    // Renamed from outside into the workspace: an addition inside.
    git(ws.root(), &["mv", "tools/x.sh", "images/bases/etc/x.sh"]);
    assert_eq!(
        run(&["affected", "--since", "HEAD"]),
        "//bases:runtime\n//svc/a:a\n//svc/b:b\n//svc/b:b-debug\n"
    );
    git(ws.root(), &["reset", "-q", "--hard"]);
    git(ws.root(), &["clean", "-q", "-f", "-d"]);
    // A BUILD.kdl edit is compared with its old text at the right path.
    ws.write(
        "images/svc/b/BUILD.kdl",
        &SVC_B.replace("DEBUG=\"1\"", "DEBUG=\"9\""),
    );
    assert_eq!(run(&["affected", "--since", "HEAD"]), "//svc/b:b-debug\n");
}

#[test]
fn since_outside_a_git_repository_or_with_an_unknown_revision_fails() {
    let ws = Ws::new(&fixture_files());
    // Even if the temp directory is inside some repository, git must not
    // look above the workspace.
    let out = ws
        .cmd(&["affected", "--since", "HEAD"])
        .env("GIT_CEILING_DIRECTORIES", ws.root().parent().unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is not in a git repository: fatal: not a git repository"),
        "{err}"
    );
    assert!(
        err.contains("name the changed files with `--files`"),
        "{err}"
    );

    let ws = repo();
    let out = ws.run(&["affected", "--since", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).lines().next().unwrap(),
        "error: unknown revision `no-such-branch`: fatal: bad revision 'no-such-branch'"
    );
    let out = ws.run(&["affected", "--since=--output=x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("a revision may not start with `-`"),
        "{}",
        stderr(&out)
    );
    // A blob is not a commit.
    let blob = git(ws.root(), &["rev-parse", "HEAD:README.md"]);
    let out = ws.run(&["affected", "--since", blob.trim()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Neither flag, or both: usage errors.
    assert_eq!(ws.run(&["affected"]).status.code(), Some(2));
    let both = ws.run(&["affected", "--since", "HEAD", "--files", "x"]);
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn affected_ignores_git_variables_pointing_elsewhere() {
    // As inside a git hook of another repository.
    let ws = repo();
    let other = tempfile::tempdir().unwrap();
    git(other.path(), &["init", "-q"]);
    ws.write("svc/a/bin/server", "changed\n");
    let out = ws
        .cmd(&["affected", "--since", "HEAD"])
        .env("GIT_DIR", other.path().join(".git"))
        .env("GIT_WORK_TREE", other.path())
        .env("GIT_INDEX_FILE", other.path().join("index"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "//svc/a:a\n");
}

/// A checkout's own `.git/config` may name an fsmonitor command; `git diff` and
/// `git ls-files` would run it. imgc turns it off.
#[test]
fn affected_never_runs_an_fsmonitor_named_by_the_repository() {
    let ws = repo();
    let witness = tempfile::tempdir().unwrap();
    let pwned = witness.path().join("pwned");
    git(
        ws.root(),
        &[
            "config",
            "core.fsmonitor",
            &format!("touch {} #", pwned.display()),
        ],
    );
    ws.write("svc/a/bin/server", "changed\n");
    assert_eq!(since(&ws, "HEAD"), ["//svc/a:a"]);
    assert!(
        !pwned.exists(),
        "imgc let git run the repository's fsmonitor"
    );
}

/// The answer is sound: every image whose digest a change moves is in it.
#[test]
fn affected_covers_every_image_whose_digest_changes() {
    let ws = repo();
    let digests = |ws: &Ws| ws.build(&[]).images();
    let before = digests(&ws);
    assert_eq!(before.len(), 5);
    ws.write("bases/etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    ws.write("svc/a/conf/new.toml", "n = 1\n");
    ws.write(
        "svc/b/BUILD.kdl",
        &SVC_B.replace("MODE=\"prod\"", "MODE=\"dev\""),
    );
    ws.write("svc/c/BUILD.kdl", &format!("// only a comment\n{SVC_C}"));
    let listed = since(&ws, "HEAD");
    let after = digests(&ws);
    let moved: Vec<String> = after
        .iter()
        .filter(|(l, d)| before.get(*l) != Some(*d))
        .map(|(l, _)| l.clone())
        .collect();
    assert_eq!(
        moved,
        [
            "//bases:runtime",
            "//svc/a:a",
            "//svc/b:b",
            "//svc/b:b-debug"
        ]
    );
    assert_eq!(listed, moved);
}

#[test]
fn query_rdeps_over_a_file_lists_the_layers_and_images_that_contain_it() {
    let ws = Ws::new(&fixture_files());
    let out = ws.ok(&["query", "rdeps", "svc/a/conf/prod.toml"]);
    assert_eq!(stdout(&out), "//svc/a:a\n//svc/a:app\n");
    let out = ws.ok(&["query", "rdeps", "bases/etc/passwd", "--kind", "image"]);
    assert_eq!(
        stdout(&out),
        "//bases:runtime\n//svc/a:a\n//svc/b:b\n//svc/b:b-debug\n"
    );
    // Relative to the current directory, mixed with a pattern.
    let out = ws
        .cmd(&[
            "query",
            "rdeps",
            "./static/index.html",
            ":b",
            "--kind",
            "layer",
        ])
        .current_dir(ws.path("svc/b"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "//svc/b:app\n");
    // Excluded, and in no layer at all: an error, with the target suggested
    // when the word also names one.
    let out = ws.run(&["query", "rdeps", "svc/a/conf/dev-local.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no layer or import reads `svc/a/conf/dev-local.toml`"),
        "{}",
        stderr(&out)
    );
    let out = ws
        .cmd(&["query", "rdeps", "c"])
        .current_dir(ws.path("svc"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("for the target, write `//svc/c:c`"),
        "{}",
        stderr(&out)
    );
    // Patterns work as before.
    let out = ws.ok(&["query", "rdeps", "//svc/b:app"]);
    assert_eq!(stdout(&out), "//svc/b:app\n//svc/b:b\n//svc/b:b-debug\n");
}

/// Expansion follows links in a source's parent directories (inside the
/// workspace); git reports the file where the link leads.
#[test]
fn a_source_reached_through_a_symbolic_link_is_affected_where_the_link_leads() {
    let ws = repo();
    ws.write("vendor/lib/libx.so", "x\n");
    ws.write("vendor/gen/a.txt", "a\n");
    std::os::unix::fs::symlink("../../vendor/lib", ws.path("svc/c/lib")).unwrap();
    std::os::unix::fs::symlink("../../vendor/gen", ws.path("svc/c/gen")).unwrap();
    ws.write(
        "svc/c/BUILD.kdl",
        "layer \"l\" {\n    copy \"lib/libx.so\" to=\"/lib/\"\n    copy \"gen/*.txt\" to=\"/gen/\"\n}\nimage \"c\" {\n    from \"scratch\"\n    layers \":l\"\n}\n",
    );
    ws.build(&[]);
    commit_all(ws.root(), "links");
    ws.write("vendor/lib/libx.so", "y\n");
    assert_eq!(since(&ws, "HEAD"), ["//svc/c:c"]);
    git(ws.root(), &["checkout", "-q", "--", "."]);
    ws.write("vendor/gen/b.txt", "b\n");
    assert_eq!(since(&ws, "HEAD"), ["//svc/c:c"]);
    let out = ws.ok(&["query", "rdeps", "vendor/lib/libx.so"]);
    assert_eq!(stdout(&out), "//svc/c:c\n//svc/c:l\n");
}
