//! The IO around `imgc.lock`: fetching the repositories a lock needs (with their
//! keyrings read from the workspace) and writing the lock file.
//!
//! Resolving and the file's format are pure (`crate::debian`); this module only
//! gets the bytes in and out. Writing follows the workspace rules: the file is
//! opened beneath the workspace root, a lock that is a symbolic link or not a
//! regular file is refused (imgc replaces only what it made), the new text goes
//! to a temporary file that is synced and then renamed over the old one (or
//! linked into place when there was none), and a lock whose text would not
//! change is not touched at all (its mtime stays, no rename happens).

use super::repo::{self, Fetched, Keyring, RepoError, Source};
use super::{LOCK_FILE, MAX_LOCK_BYTES};
use crate::spec::model::DebianRepo;
use std::ffi::OsStr;
use std::path::Path;

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The lock held this text already: untouched.
    Unchanged,
    /// There was no lock.
    Created,
    /// The lock held another text.
    Replaced,
}

/// Writes `text` to `imgc.lock` at the workspace root `root` (see the module docs).
pub fn write(root: &Path, text: &str) -> Result<Written, String> {
    let shown = root.join(LOCK_FILE);
    let fail = |e: std::io::Error| format!("cannot write `{}`: {e}", shown.display());
    let old = read(root)?;
    let ws = crate::input::Root::open(&std::fs::canonicalize(root).map_err(fail)?).map_err(fail)?;
    let dir = ws.dir(Path::new(".")).map_err(fail)?;
    let name = OsStr::new(LOCK_FILE);
    match old {
        Some(old) if old == text.as_bytes() => Ok(Written::Unchanged),
        Some(old) => {
            dir.replace_regular(name, &old, text.as_bytes())
                .map_err(fail)?;
            Ok(Written::Replaced)
        }
        None => {
            dir.create_regular(name, text.as_bytes(), 0o644)
                .map_err(fail)?;
            Ok(Written::Created)
        }
    }
}

/// The bytes of `imgc.lock` at the workspace root `root`, `None` if there is none.
pub fn read(root: &Path) -> Result<Option<Vec<u8>>, String> {
    crate::input::read_beneath(root, LOCK_FILE, MAX_LOCK_BYTES)
        .map_err(|e| format!("cannot read `{LOCK_FILE}`: {e}"))
}

/// The keyring of `r`, read from the workspace at `root` (`None` if the spec
/// gives none).
pub fn keyring(root: &Path, r: &DebianRepo) -> Result<Option<Keyring>, RepoError> {
    let Some(path) = &r.keyring else {
        return Ok(None);
    };
    let bytes = crate::input::read_beneath(root, &path.value, repo::MAX_KEYRING_BYTES)
        .map_err(|e| RepoError::Keyring {
            origin: path.value.clone(),
            why: e.to_string(),
        })?
        .ok_or_else(|| RepoError::Keyring {
            origin: path.value.clone(),
            why: "no such file in the workspace".into(),
        })?;
    Keyring::parse(&bytes, &path.value).map(Some)
}

/// Fetches and verifies each repository of `repos` whose name is in `names`
/// (each once, in the order of `repos`).
pub fn fetch_repositories<'r>(
    root: &Path,
    repos: &'r [DebianRepo],
    names: &std::collections::BTreeSet<String>,
    progress: &dyn Fn(&str),
) -> Result<Vec<(&'r DebianRepo, Fetched)>, RepoError> {
    let mut out = Vec::new();
    for r in repos.iter().filter(|r| names.contains(&r.name.value)) {
        let ring = keyring(root, r)?;
        let fetched = repo::fetch(&Source::from_spec(r), ring.as_ref(), progress)?;
        out.push((r, fetched));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_created_replaced_and_left_alone_when_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(LOCK_FILE);
        assert_eq!(write(d.path(), "a\n").unwrap(), Written::Created);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\n");
        let before = std::fs::metadata(&p).unwrap();
        assert_eq!(write(d.path(), "a\n").unwrap(), Written::Unchanged);
        let after = std::fs::metadata(&p).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );
        assert_eq!(write(d.path(), "b\n").unwrap(), Written::Replaced);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\n");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [LOCK_FILE], "no temporary file is left");
    }

    #[test]
    fn a_lock_that_is_a_link_or_a_directory_is_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("other"), "mine\n").unwrap();
        std::os::unix::fs::symlink("other", d.path().join(LOCK_FILE)).unwrap();
        assert!(write(d.path(), "x\n").is_err());
        assert_eq!(
            std::fs::read_to_string(d.path().join("other")).unwrap(),
            "mine\n"
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(LOCK_FILE)).unwrap();
        assert!(write(d.path(), "x\n").is_err());
        assert!(d.path().join(LOCK_FILE).is_dir());
    }
}
