//! The local Debian repository of the package tests: tests/fixtures/debian/make_repo.py
//! run once per test binary over the real Debian 12 packages scripts/test downloads
//! (tests/fixtures/debian/fetch-debs.sh) and its crafted edge cases; indexed and signed
//! by a throwaway key. Tests serve a copy ([`super::FileServer`]) to tamper with.

use super::{copy_tree, require};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The real .debs: `IMGC_TEST_DEBS`, else `target/test-debs`.
pub fn test_debs() -> PathBuf {
    let dir = std::env::var_os("IMGC_TEST_DEBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-debs"));
    let has_debs = std::fs::read_dir(&dir).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".deb")))
    });
    assert!(
        has_debs,
        "no Debian packages in `{}`: run scripts/test (it downloads them with \
         tests/fixtures/debian/fetch-debs.sh), or set IMGC_TEST_DEBS",
        dir.display()
    );
    dir
}

/// The repository's directory, built once per test run; never modified.
pub fn pristine_repo() -> &'static Path {
    static REPO: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = REPO.get_or_init(|| {
        require("dpkg-scanpackages");
        require("gpg");
        require("python3");
        let dir = tempfile::tempdir().unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian/make_repo.py");
        let status = Command::new("python3")
            .arg(script)
            .arg("--out")
            .arg(dir.path().join("repo"))
            .arg("--debs")
            .arg(test_debs())
            .stdout(Stdio::null())
            .status()
            .expect("python3 runs");
        assert!(status.success(), "make_repo.py failed");
        dir
    });
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| dir.path().join("repo"))
}

/// A copy of the repository to serve and tamper with.
pub fn repo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(pristine_repo(), dir.path());
    dir
}
