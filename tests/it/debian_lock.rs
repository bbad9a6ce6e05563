//! Debian repositories: the spec's `debian` and `packages` nodes, and a local
//! repository (tests/fixtures/debian/make_repo.py: crafted packages and real
//! Debian 12 ones, signed by a throwaway key) served on 127.0.0.1 by python's
//! http.server, started and stopped (by PID) by each test: fetched and verified,
//! and refused when the Release, its signature or an index is tampered with.

use crate::support::*;
use imgc::packages::repo::{Keyring, RepoError, Source, fetch};
use std::path::Path;

fn source(url: &str) -> Source {
    Source {
        name: "bookworm".into(),
        url: url.into(),
        suite: "bookworm".into(),
        components: vec!["main".into()],
        arch: "amd64".into(),
    }
}

fn keyring(repo: &Path, file: &str) -> Keyring {
    Keyring::parse(&std::fs::read(repo.join(file)).unwrap(), file).unwrap()
}

fn quiet(_: &str) {}

/// Replaces the first occurrence of `from` by `to` in a file.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no `{from}`", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// The SHA256 of `main/binary-amd64/Packages.xz` as the Release lists it.
fn listed_xz_sha(repo: &Path) -> String {
    let release = std::fs::read_to_string(repo.join("dists/bookworm/Release")).unwrap();
    release
        .lines()
        .find(|l| l.ends_with(" main/binary-amd64/Packages.xz"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string()
}

/// The hex digit after `c` (a different one, always).
fn other_hex(c: char) -> char {
    if c == '0' { '1' } else { '0' }
}

#[test]
fn a_good_signed_repository_is_fetched_and_verified() {
    let repo = repo_copy();
    let server = FileServer::serve(repo.path());
    let said = std::sync::Mutex::new(Vec::new());
    for ring in ["keyring.gpg", "keyring.asc"] {
        let fetched = fetch(
            &source(&server.base()),
            Some(&keyring(repo.path(), ring)),
            &|s| said.lock().unwrap().push(s.to_string()),
        )
        .unwrap_or_else(|e| panic!("{ring}: {e}"));
        assert!(fetched.verified);
        assert_eq!(fetched.indexes.len(), 1);
        let index = &fetched.indexes[0];
        assert!(
            index
                .url
                .ends_with("/dists/bookworm/main/binary-amd64/Packages.xz"),
            "{}",
            index.url
        );
        let text = std::fs::read_to_string(
            repo.path()
                .join("dists/bookworm/main/binary-amd64/Packages"),
        )
        .unwrap();
        assert_eq!(
            index.text, text,
            "the index is the Packages file, decompressed"
        );
        for p in [
            "Package: imgc-alt-user",
            "Package: imgc-virt-user",
            "Package: redis-server",
        ] {
            assert!(index.text.contains(p), "{p}");
        }
        let in_release = std::fs::read(repo.path().join("dists/bookworm/InRelease")).unwrap();
        assert_eq!(fetched.release_sha256, sha256_hex(&in_release));
    }
    let said = said.lock().unwrap();
    assert!(said.iter().any(|s| s.contains("InRelease")), "{said:?}");
    assert!(said.iter().any(|s| s.contains("Packages.xz")), "{said:?}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_release_signed_by_another_key_is_refused() {
    let repo = repo_copy();
    let server = FileServer::serve(repo.path());
    let e = fetch(
        &source(&server.base()),
        Some(&keyring(repo.path(), "other-keyring.gpg")),
        &quiet,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RepoError::Untrusted { .. }), "{msg}");
    assert_eq!(e.code().as_str(), "E079");
    assert!(
        msg.contains(&format!("{}/dists/bookworm/InRelease", server.base())),
        "{msg}"
    );
    assert!(
        msg.contains("other-keyring.gpg"),
        "names the keyring: {msg}"
    );
    assert!(msg.contains("signed by key"), "names who signed: {msg}");
}

#[test]
fn a_tampered_release_is_refused() {
    let repo = repo_copy();
    let sha = listed_xz_sha(repo.path());
    let first = sha.chars().next().unwrap();
    let tampered = format!("{}{}", other_hex(first), &sha[1..]);
    // The signed text of InRelease and the Release beside it, one hex digit of
    // the Packages.xz hash changed.
    edit(
        &repo.path().join("dists/bookworm/InRelease"),
        &sha,
        &tampered,
    );
    edit(&repo.path().join("dists/bookworm/Release"), &sha, &tampered);
    let server = FileServer::serve(repo.path());
    // With the keyring: the signature no longer matches.
    let e = fetch(
        &source(&server.base()),
        Some(&keyring(repo.path(), "keyring.gpg")),
        &quiet,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/dists/bookworm/InRelease"), "{msg}");
    assert!(msg.contains("no valid signature"), "{msg}");
    // Without one: the index does not hash to what the Release says.
    let e = fetch(&source(&server.base()), None, &quiet).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/dists/bookworm/main/binary-amd64/Packages.xz"),
        "{msg}"
    );
    assert!(msg.contains(&tampered) && msg.contains(&sha), "{msg}");
    // Neither InRelease nor Release: the detached signature of the Release fails too.
    std::fs::remove_file(repo.path().join("dists/bookworm/InRelease")).unwrap();
    let e = fetch(
        &source(&server.base()),
        Some(&keyring(repo.path(), "keyring.gpg")),
        &quiet,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/dists/bookworm/Release`"), "{msg}");
    assert!(msg.contains("no valid signature"), "{msg}");
}

#[test]
fn a_tampered_index_is_refused() {
    let repo = repo_copy();
    flip_byte(
        &repo
            .path()
            .join("dists/bookworm/main/binary-amd64/Packages.xz"),
    );
    let server = FileServer::serve(repo.path());
    let e = fetch(
        &source(&server.base()),
        Some(&keyring(repo.path(), "keyring.gpg")),
        &quiet,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.code().as_str(), "E079", "{msg}");
    assert!(
        msg.contains(&format!(
            "{}/dists/bookworm/main/binary-amd64/Packages.xz",
            server.base()
        )),
        "{msg}"
    );
    assert!(msg.contains("SHA256"), "{msg}");
}

#[test]
fn without_inrelease_the_release_and_its_detached_signature_are_used() {
    let repo = repo_copy();
    std::fs::remove_file(repo.path().join("dists/bookworm/InRelease")).unwrap();
    let server = FileServer::serve(repo.path());
    let fetched = fetch(
        &source(&server.base()),
        Some(&keyring(repo.path(), "keyring.gpg")),
        &quiet,
    )
    .unwrap();
    let release = std::fs::read(repo.path().join("dists/bookworm/Release")).unwrap();
    assert_eq!(fetched.release_sha256, sha256_hex(&release));
    let e = fetch(
        &source(&server.base()),
        Some(&keyring(repo.path(), "other-keyring.gpg")),
        &quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no valid signature"), "{e}");
    // Unsigned, with a keyring: refused; without one: taken as it is.
    std::fs::remove_file(repo.path().join("dists/bookworm/Release.gpg")).unwrap();
    let e = fetch(
        &source(&server.base()),
        Some(&keyring(repo.path(), "keyring.gpg")),
        &quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("is not signed"), "{e}");
    let fetched = fetch(&source(&server.base()), None, &quiet).unwrap();
    assert!(!fetched.verified);
}

#[test]
fn a_missing_repository_or_component_is_a_clear_error() {
    let repo = repo_copy();
    let server = FileServer::serve(repo.path());
    let mut s = source(&server.base());
    s.suite = "trixie".into();
    let e = fetch(&s, None, &quiet).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.code().as_str(), "E078", "{msg}");
    assert!(
        msg.contains("/dists/trixie/Release") && msg.contains("404"),
        "{msg}"
    );
    let mut s = source(&server.base());
    s.components = vec!["contrib".into()];
    let e = fetch(&s, None, &quiet).unwrap_err();
    assert!(e.to_string().contains("component `contrib`"), "{e}");
    // Nothing listens there any more.
    let url = server.base();
    drop(server);
    let e = fetch(&source(&url), None, &quiet).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("{url}/dists/bookworm/InRelease")),
        "{e}"
    );
}

// -- the spec ------------------------------------------------------------------

const IMGC_KDL: &str = r#"workspace {}
debian "bookworm" {
    url "http://127.0.0.1:9/debian"
    suite "bookworm"
    components "main"
    arch "amd64"
}
"#;

fn check_stderr(ws: &Ws) -> String {
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn an_unknown_repository_is_a_diagnostic() {
    let ws = Ws::new(&[
        ("imgc.kdl", IMGC_KDL),
        (
            "base/BUILD.kdl",
            "layer \"pkgs\" {\n    packages \"tzdata\" from=\"bookwrom\"\n}\n",
        ),
    ]);
    insta::assert_snapshot!("unknown_repository", check_stderr(&ws));
}

#[test]
fn a_bad_pin_and_a_package_twice_are_diagnostics() {
    let ws = Ws::new(&[
        ("imgc.kdl", IMGC_KDL),
        (
            "base/BUILD.kdl",
            "image \"app\" {\n    from \"scratch\"\n    packages \"tzdata=\" \"Redis\" \"libc6=x1.0\"\n    packages \"ca-certificates\" \"ca-certificates=20230311\"\n}\n",
        ),
    ]);
    insta::assert_snapshot!("bad_package_requests", check_stderr(&ws));
}

#[test]
fn a_bad_debian_node_is_a_diagnostic() {
    let ws = Ws::new(&[(
        "imgc.kdl",
        "workspace {}\ndebian \"a\" {\n    url \"ftp://x\"\n    suite \"../x\"\n    keyring \"../keys.gpg\"\n}\ndebian \"a\" {\n    url \"http://x\"\n    suite \"s\"\n    components \"main\"\n    arch \"amd64\"\n}\n",
    )]);
    insta::assert_snapshot!("bad_debian_node", check_stderr(&ws));
}

#[test]
fn packages_without_from_need_exactly_one_repository() {
    let two = format!(
        "{IMGC_KDL}debian \"other\" {{\n    url \"http://127.0.0.1:9/o\"\n    suite \"s\"\n    components \"main\"\n    arch \"amd64\"\n}}\n"
    );
    let ws = Ws::new(&[
        ("imgc.kdl", &two),
        (
            "base/BUILD.kdl",
            "layer \"pkgs\" {\n    packages \"tzdata\"\n}\n",
        ),
    ]);
    let err = check_stderr(&ws);
    assert!(
        err.contains("E074") && err.contains("needs `from=`"),
        "{err}"
    );
    let ws = Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "base/BUILD.kdl",
            "layer \"pkgs\" {\n    packages \"tzdata\"\n}\n",
        ),
    ]);
    let err = check_stderr(&ws);
    assert!(
        err.contains("E074") && err.contains("declares none"),
        "{err}"
    );
}

#[test]
fn a_build_of_a_target_with_packages_fails_clearly() {
    let ws = Ws::new(&[
        ("imgc.kdl", IMGC_KDL),
        (
            "base/BUILD.kdl",
            "layer \"pkgs\" {\n    packages \"tzdata\"\n}\nimage \"app\" {\n    from \"scratch\"\n    layers \":pkgs\"\n}\nimage \"plain\" {\n    from \"scratch\"\n    layer {\n        text \"/a\" \"a\"\n    }\n}\n",
        ),
    ]);
    for args in [
        &["build", "//base:app"][..],
        &["build", "--dry-run"],
        &["explain", "//base:pkgs"],
    ] {
        let out = ws.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        // Without imgc.lock: E076 (with a lock, a layer with packages is E077).
        assert!(
            err.contains("E076") && err.contains("//base:pkgs"),
            "{args:?}: {err}"
        );
    }
    // Targets without packages still build.
    ws.ok(&["build", "//base:plain"]);
}

#[test]
fn check_wants_a_lock_when_targets_request_packages() {
    let ws = Ws::new(&[
        ("imgc.kdl", IMGC_KDL),
        (
            "base/BUILD.kdl",
            "layer \"pkgs\" {\n    packages \"tzdata\"\n}\nlayer \"plain\" {\n    text \"/a\" \"a\"\n}\n",
        ),
    ]);
    let err = check_stderr(&ws);
    assert!(
        err.contains("E076") && err.contains("//base:pkgs") && err.contains("imgc lock"),
        "{err}"
    );
    // Twice: the snapshot of a check never hides the missing lock.
    let err = check_stderr(&ws);
    assert!(err.contains("E076"), "{err}");
    // Targets without packages need no lock.
    ws.ok(&["check", "//base:plain"]);
}

#[test]
fn keyrings_are_read_from_the_workspace_only() {
    let repo = repo_copy();
    let server = FileServer::serve(repo.path());
    let text = format!(
        "workspace {{}}\ndebian \"bookworm\" {{\n    url \"{}\"\n    suite \"bookworm\"\n    components \"main\"\n    arch \"amd64\"\n    keyring \"keys/repo.gpg\"\n}}\n",
        server.base()
    );
    let (config, diags) = imgc::spec::parse_workspace_file(0, &text);
    assert!(diags.is_empty(), "{diags:?}");
    let names = std::collections::BTreeSet::from(["bookworm".to_string()]);
    let ws = Ws::new(&[("imgc.kdl", &text)]);
    let fetch_all =
        || imgc::packages::lockfile::fetch_repositories(ws.root(), &config.debian, &names, &quiet);
    // No keyring file: an error naming it, nothing fetched.
    let e = fetch_all().expect_err("refused");
    assert!(e.to_string().contains("keys/repo.gpg"), "{e}");
    // A link out of the workspace is not followed.
    std::fs::create_dir_all(ws.path("keys")).unwrap();
    std::os::unix::fs::symlink(repo.path().join("keyring.gpg"), ws.path("keys/repo.gpg")).unwrap();
    let e = fetch_all().expect_err("refused");
    assert!(e.to_string().contains("keys/repo.gpg"), "{e}");
    // The right key in the workspace: fetched and verified.
    std::fs::remove_file(ws.path("keys/repo.gpg")).unwrap();
    std::fs::copy(repo.path().join("keyring.asc"), ws.path("keys/repo.gpg")).unwrap();
    let fetched = fetch_all().unwrap();
    assert_eq!(fetched.len(), 1);
    assert!(fetched[0].1.verified);
    // Another key: refused.
    std::fs::copy(
        repo.path().join("other-keyring.gpg"),
        ws.path("keys/repo.gpg"),
    )
    .unwrap();
    let e = fetch_all().expect_err("refused");
    assert!(e.to_string().contains("no valid signature"), "{e}");
}

/// A workspace locking against `server`'s repository, verified with its key.
fn locking_ws(server: &FileServer, repo: &Path, build: &str) -> Ws {
    let kdl = format!(
        "workspace {{}}\ndebian \"bookworm\" {{\n    url \"{}\"\n    suite \"bookworm\"\n    components \"main\"\n    arch \"amd64\"\n    keyring \"keys/repo.gpg\"\n}}\n",
        server.base()
    );
    let ws = Ws::new(&[("imgc.kdl", &kdl), ("base/BUILD.kdl", build)]);
    std::fs::create_dir_all(ws.path("keys")).unwrap();
    std::fs::copy(repo.join("keyring.gpg"), ws.path("keys/repo.gpg")).unwrap();
    ws
}

#[test]
fn imgc_lock_writes_a_stable_lock_that_check_holds_the_specs_to() {
    let repo = repo_copy();
    let server = FileServer::serve(repo.path());
    let build = "image \"app\" {\n    from \"scratch\"\n    packages \"redis-server\" \"ca-certificates\"\n}\nlayer \"edge\" {\n    packages \"imgc-alt-user\" \"imgc-virt-user\" \"imgc-ver-user\"\n}\n";
    let ws = locking_ws(&server, repo.path(), build);
    let out = ws.ok(&["lock"]);
    assert!(stdout(&out).contains("wrote imgc.lock"), "{}", stdout(&out));
    let lock = std::fs::read_to_string(ws.path("imgc.lock")).unwrap();
    for want in [
        "package \"bookworm\" \"redis-tools\"",
        "package \"bookworm\" \"libc6\"",
        "package \"bookworm\" \"imgc-alt-second\"",
        "package \"bookworm\" \"imgc-provider\"",
        "package \"bookworm\" \"imgc-versioned\" version=\"2.1\"",
        "target \"//base:app\"",
        "target \"//base:edge\"",
    ] {
        assert!(lock.contains(want), "{want} not in:\n{lock}");
    }
    assert!(!lock.contains("imgc-versioned\" version=\"1.0\""), "{lock}");
    // Again: the same bytes, left alone.
    let out = ws.ok(&["lock"]);
    assert!(stdout(&out).contains("up to date"), "{}", stdout(&out));
    assert_eq!(std::fs::read_to_string(ws.path("imgc.lock")).unwrap(), lock);
    ws.ok(&["lock", "--check"]);
    ws.ok(&["check"]);
    // Why is a package there: a chain of real dependencies, from the lock alone.
    drop(server);
    let out = ws.ok(&["lock", "--why", "//base:app", "libc6"]);
    let why = stdout(&out);
    assert!(
        why.starts_with("//base:app: ") && why.contains("libc6 "),
        "{why}"
    );
    let out = ws.run(&["lock", "--why", "//base:app", "imgc-provider"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // A spec asking for more than the lock holds: `check` names the package.
    let server = FileServer::serve(repo.path());
    let ws2 = locking_ws(
        &server,
        repo.path(),
        &build.replace("\"ca-certificates\"", "\"ca-certificates\" \"tzdata\""),
    );
    std::fs::write(ws2.path("imgc.lock"), &lock).unwrap();
    let err = check_stderr(&ws2);
    assert!(err.contains("E092") && err.contains("tzdata"), "{err}");
    let out = ws2.run(&["lock", "--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("+bookworm/tzdata"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(ws2.path("imgc.lock")).unwrap(),
        lock,
        "--check writes nothing"
    );
    ws2.ok(&["lock"]);
    ws2.ok(&["check"]);
    assert!(
        std::fs::read_to_string(ws2.path("imgc.lock"))
            .unwrap()
            .contains("\"tzdata\"")
    );
}

#[test]
fn imgc_lock_refuses_what_cannot_be_resolved_and_a_repository_it_cannot_trust() {
    let repo = repo_copy();
    let server = FileServer::serve(repo.path());
    let ws = locking_ws(
        &server,
        repo.path(),
        "layer \"l\" {\n    packages \"imgc-unsat\"\n}\n",
    );
    let out = ws.run(&["lock"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("E091") && err.contains("imgc-nowhere"),
        "{err}"
    );
    assert!(!ws.path("imgc.lock").exists(), "nothing written");
    // Signed by a key the workspace does not trust: refused, nothing written.
    std::fs::copy(
        repo.path().join("other-keyring.gpg"),
        ws.path("keys/repo.gpg"),
    )
    .unwrap();
    std::fs::write(
        ws.path("base/BUILD.kdl"),
        "layer \"l\" {\n    packages \"tzdata\"\n}\n",
    )
    .unwrap();
    let out = ws.run(&["lock"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("E079"), "{}", stderr(&out));
    assert!(!ws.path("imgc.lock").exists(), "nothing written");
}
