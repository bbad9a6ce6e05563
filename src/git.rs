//! What changed since a git revision, from git's own plumbing.
//!
//! `imgc affected --since REV` needs the files that differ between `REV` and
//! the working tree, and the old text of the spec files among them. Rather
//! than reading git's object store itself (the `gix` crate could, at the cost
//! of a large dependency tree), imgc runs the `git` every CI job that has a
//! checkout already has, with output made for programs:
//!
//! | step | command (run with `-C <workspace root>`) |
//! |---|---|
//! | where the workspace is in the repository | `git rev-parse --show-prefix` |
//! | the commit `REV` names | `git rev-parse --verify --quiet REV^{commit}` (on failure, `git rev-list -n 1 REV --` for git's own message) |
//! | tracked files changed (committed, staged or not) | `git diff --name-status -z -M COMMIT -- .` |
//! | files git does not track and does not ignore | `git ls-files --others --exclude-standard -z --full-name` |
//! | the old text of a spec file | `git cat-file -s COMMIT:PATH`, then `git cat-file blob COMMIT:PATH` |
//!
//! Details that keep the answer exact:
//!
//! - `-z` everywhere: paths come raw, never quoted or escaped. A rename
//!   (`R<score>`) is a deletion of its old path plus an addition of its new
//!   one; a copy (`C<score>`) an addition of the new path.
//! - Paths git prints are relative to the top of the repository; the workspace
//!   root may be a directory below it (`--show-prefix`), so paths are taken
//!   relative to the root, and paths outside the workspace are dropped (the
//!   pathspec `.` already keeps git from looking at them).
//! - Configuration that would change what `git diff` prints is overridden:
//!   `diff.relative=false` (paths stay relative to the top), `--no-color`,
//!   `--no-ext-diff`. `GIT_OPTIONAL_LOCKS=0` keeps `git diff` from rewriting
//!   the index while it refreshes it (a concurrent `git` would find it locked).
//! - `core.fsmonitor=false`: a `.git/config` that came with a checkout someone
//!   else made may name an fsmonitor command, which `git diff` and `git ls-files`
//!   would run. (Clean filters named in such a config still run when git hashes
//!   a changed file; run `affected` in checkouts made by git itself, as CI's are.)
//! - The variables that would point git at another repository, index or work
//!   tree ([`CLEARED_ENV`]: `GIT_DIR`, `GIT_WORK_TREE`, `GIT_INDEX_FILE`...,
//!   as set inside a git hook or alias) are removed: the repository is the one
//!   holding the workspace.
//! - A revision starting with `-` is refused before git sees it: it would be
//!   read as an option.
//! - An old spec text is read only up to [`crate::workspace::MAX_SPEC_FILE_BYTES`]
//!   (its size is asked first); a larger or non-UTF-8 one cannot be compared
//!   and counts as changed ([`OldText::Unusable`]).
//!
//! Files that git ignores (`.gitignore`) are not seen: a layer that copies an
//! ignored file (a build output) is not found affected when only that file
//! changed. Use `--files` for those.

use crate::affected::{Changed, OldText};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Environment variables removed before running git (see the module docs).
pub const CLEARED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_REPLACE_REF_BASE",
    "GIT_EXTERNAL_DIFF",
    "GIT_DIFF_OPTS",
    "GIT_CONFIG_PARAMETERS",
];

/// Why the changes could not be listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error("cannot run `git`: {0}")]
    Unavailable(String),
    /// The workspace is not inside a git work tree (git's message).
    #[error("`{dir}` is not in a git repository: {message}")]
    NotARepository { dir: String, message: String },
    /// The revision names no commit (git's message).
    #[error("unknown revision `{rev}`: {message}")]
    BadRevision { rev: String, message: String },
    /// Any other failure of git (its message).
    #[error("`git {command}` failed: {message}")]
    Failed { command: String, message: String },
}

/// The files that changed, workspace-relative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Sorted, without duplicates.
    pub changed: Vec<Changed>,
    /// The changed paths that existed at the revision (they have an old text).
    pub existed: BTreeSet<String>,
}

/// The git repository holding a workspace.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
    /// The workspace root relative to the top of the repository: `""`, or
    /// `a/b/` (with the slash).
    prefix: String,
}

/// git's message on stderr, trimmed to one line per line it printed.
fn message(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.trim();
    if text.is_empty() {
        format!("exited with {}", out.status)
    } else {
        text.lines().map(str::trim).collect::<Vec<_>>().join(" ")
    }
}

impl Repo {
    fn command(&self) -> Command {
        let mut c = Command::new("git");
        c.arg("--no-pager")
            .arg("-C")
            .arg(&self.root)
            .args(["-c", "diff.relative=false", "-c", "core.quotePath=false"])
            // A repository's own config may name an fsmonitor command, which git
            // would run on `diff` and `ls-files`: never run one.
            .args(["-c", "core.fsmonitor=false"])
            .env("GIT_OPTIONAL_LOCKS", "0")
            .stdin(Stdio::null());
        for v in CLEARED_ENV {
            c.env_remove(v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Result<Output, GitError> {
        self.command()
            .args(args)
            .output()
            .map_err(|e| GitError::Unavailable(e.to_string()))
    }

    fn run_ok(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let out = self.run(args)?;
        if !out.status.success() {
            return Err(GitError::Failed {
                command: args.join(" "),
                message: message(&out),
            });
        }
        Ok(out.stdout)
    }

    /// The repository holding the workspace at `root`.
    pub fn open(root: &Path) -> Result<Repo, GitError> {
        let mut repo = Repo {
            root: root.to_path_buf(),
            prefix: String::new(),
        };
        let out = repo.run(&["rev-parse", "--show-prefix"])?;
        if !out.status.success() {
            return Err(GitError::NotARepository {
                dir: root.display().to_string(),
                message: message(&out),
            });
        }
        repo.prefix = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        Ok(repo)
    }

    /// The workspace root relative to the top of the repository (`""`, or
    /// ending in `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The commit `rev` names (its full object name).
    pub fn commit(&self, rev: &str) -> Result<String, GitError> {
        let bad = |message: String| GitError::BadRevision {
            rev: rev.to_string(),
            message,
        };
        if rev.is_empty() {
            return Err(bad("the revision is empty".into()));
        }
        if rev.starts_with('-') {
            return Err(bad("a revision may not start with `-`".into()));
        }
        let spec = format!("{rev}^{{commit}}");
        let out = self.run(&["rev-parse", "--verify", "--quiet", &spec])?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        // `--verify` says only "Needed a single revision": ask again for
        // git's own words.
        let out = self.run(&["rev-list", "-n", "1", rev, "--"])?;
        Err(bad(if out.status.success() {
            "it does not name one commit".to_string()
        } else {
            message(&out)
        }))
    }

    /// The workspace-relative form of a path git printed (relative to the
    /// top), if it is inside the workspace.
    fn relative(&self, top_relative: &[u8]) -> Option<Changed> {
        let path = String::from_utf8_lossy(top_relative);
        let rel = path.strip_prefix(self.prefix.as_str())?;
        // `ls-files --others` prints a nested repository as `dir/`.
        let (rel, dir) = match rel.strip_suffix('/') {
            Some(r) => (r, true),
            None => (rel, false),
        };
        Some(Changed {
            path: rel.to_string(),
            dir,
        })
    }

    /// The files that differ between `commit` and the working tree, and the
    /// files git neither tracks nor ignores.
    pub fn changes(&self, commit: &str) -> Result<Changes, GitError> {
        let diff = self.run_ok(&[
            "diff",
            "--name-status",
            "-z",
            "-M",
            "--no-color",
            "--no-ext-diff",
            commit,
            "--",
            ".",
        ])?;
        let mut changed = BTreeSet::new();
        let mut existed = BTreeSet::new();
        let mut fields = diff.split(|b| *b == 0).filter(|f| !f.is_empty());
        while let Some(status) = fields.next() {
            let (old, new) = match status.first() {
                // A rename deletes the old path and adds the new one; a copy
                // adds the new one.
                Some(b'R') => (fields.next(), fields.next()),
                Some(b'C') => (None, fields.nth(1)),
                Some(b'A') => (None, fields.next()),
                // M (modified), D (deleted), T (type changed), U (unmerged)...
                _ => {
                    let p = fields.next();
                    (p, p)
                }
            };
            if let Some(c) = old.and_then(|p| self.relative(p)) {
                existed.insert(c.path.clone());
                changed.insert(c);
            }
            if let Some(c) = new.and_then(|p| self.relative(p)) {
                changed.insert(c);
            }
        }
        let others = self.run_ok(&[
            "ls-files",
            "--others",
            "--exclude-standard",
            "-z",
            "--full-name",
        ])?;
        for p in others.split(|b| *b == 0).filter(|f| !f.is_empty()) {
            if let Some(c) = self.relative(p) {
                changed.insert(c);
            }
        }
        Ok(Changes {
            changed: changed.into_iter().collect(),
            existed,
        })
    }

    /// The text of the workspace-relative `path` at `commit`, read only if it
    /// is at most `limit` bytes.
    pub fn old_text(&self, commit: &str, path: &str, limit: u64) -> OldText {
        let object = format!("{commit}:{}{path}", self.prefix);
        let size = match self.run_ok(&["cat-file", "-s", &object]) {
            Ok(out) => String::from_utf8_lossy(&out).trim().parse::<u64>().ok(),
            Err(e) => return OldText::Unusable(e.to_string()),
        };
        match size {
            Some(n) if n <= limit => {}
            Some(n) => {
                return OldText::Unusable(format!(
                    "{n} bytes, more than the {limit} a spec may have"
                ));
            }
            None => return OldText::Unusable("git printed no size".into()),
        }
        match self.run_ok(&["cat-file", "blob", &object]) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => OldText::Text(text),
                Err(_) => OldText::Unusable("not UTF-8".into()),
            },
            Err(e) => OldText::Unusable(e.to_string()),
        }
    }
}
