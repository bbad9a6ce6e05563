//! `imgc affected (--since GIT_REV | --files FILE...) [--output label|json]`:
//! the images whose output can change because of changed files.
//!
//! The command only gathers the changed paths (from git, or from the command
//! line and stdin) and the old spec texts; [`crate::affected`] decides.

use super::{CmdError, Context, Loaded};
use crate::affected::{self, Cause, Changed, History, Readers};
use crate::cli::{AffectedArgs, AffectedOutput};
use crate::git::{GitError, Repo};
use crate::graph::Graph;
use crate::input::Root;
use crate::label::Label;
use crate::report;
use crate::workspace::MAX_SPEC_FILE_BYTES;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub fn run(ctx: &Context, args: AffectedArgs) -> Result<(), CmdError> {
    let loaded = Loaded::load(ctx)?;
    loaded.warn_without_cache();
    let ws = &loaded.ws;
    let opened = Opened::new(&ws.root)?;
    let (changed, history) = match &args.since {
        Some(rev) => since(&ws.root, rev)?,
        None => {
            let mut paths = Vec::new();
            for f in &args.files {
                if f.as_os_str() == "-" {
                    paths.extend(stdin_paths()?);
                } else {
                    paths.push(f.clone());
                }
            }
            let changed = opened
                .changed_paths(ctx, &paths)?
                .into_iter()
                .filter_map(|(arg, c)| {
                    if c.is_none() {
                        report::warning(&format!(
                            "`{}` is outside the workspace: ignored",
                            arg.display()
                        ));
                    }
                    c
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            (changed, History::Listed)
        }
    };
    let readers = opened.readers(&loaded.graph);
    let direct = affected::direct_causes(&loaded.graph, &readers, &ws.config, &changed, &history);
    let images = affected::affected_images(&loaded.graph, &direct);
    let total = loaded
        .graph
        .nodes()
        .filter(|n| loaded.graph.node(*n).is_image())
        .count();
    report::status(&format!(
        "{} of {total} image{} affected by {} changed path{}",
        images.len(),
        if total == 1 { "" } else { "s" },
        changed.len(),
        if changed.len() == 1 { "" } else { "s" },
    ));
    match args.output {
        AffectedOutput::Label => {
            if !images.is_empty() {
                report::result(&render_labels(&images));
            }
        }
        AffectedOutput::Json => report::result(&render_json(&images)),
    }
    Ok(())
}

/// One label per line.
pub fn render_labels(images: &BTreeMap<Label, BTreeSet<Cause>>) -> String {
    images
        .keys()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON array of `{label, because}`, `because` sorted.
pub fn render_json(images: &BTreeMap<Label, BTreeSet<Cause>>) -> String {
    #[derive(serde::Serialize)]
    struct Item {
        label: String,
        because: Vec<String>,
    }
    let items: Vec<Item> = images
        .iter()
        .map(|(label, causes)| {
            let mut because: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
            because.sort();
            because.dedup();
            Item {
                label: label.to_string(),
                because,
            }
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_default()
}

/// The changes since `rev`, and the old texts of the spec files among them.
fn since(root: &Path, rev: &str) -> Result<(Vec<Changed>, History), CmdError> {
    let repo = Repo::open(root).map_err(git_error)?;
    let commit = repo.commit(rev).map_err(git_error)?;
    let changes = repo.changes(&commit).map_err(git_error)?;
    let mut old = BTreeMap::new();
    for f in affected::spec_files(&changes.changed) {
        if changes.existed.contains(&f) {
            let text = repo.old_text(&commit, &f, MAX_SPEC_FILE_BYTES);
            old.insert(f, text);
        }
    }
    Ok((changes.changed, History::Since(old)))
}

fn git_error(e: GitError) -> CmdError {
    match e {
        GitError::NotARepository { .. } => CmdError::Usage(format!(
            "{e}\n`--since` lists changes with git; outside a repository, name the changed files with `--files`"
        )),
        GitError::BadRevision { .. } => CmdError::Usage(e.to_string()),
        GitError::Unavailable(_) | GitError::Failed { .. } => CmdError::Env(e.to_string()),
    }
}

/// Newline-separated paths read from stdin (empty lines skipped, a `\r`
/// before the newline dropped).
fn stdin_paths() -> Result<Vec<PathBuf>, CmdError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| CmdError::Env(format!("cannot read the paths on stdin: {e}")))?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l)))
        .collect())
}

/// The workspace root, opened: command-line paths and symbolic links in
/// sources are looked at beneath it.
pub(super) struct Opened {
    root: PathBuf,
    canonical: PathBuf,
    dir: Root,
}

impl Opened {
    pub(super) fn new(root: &Path) -> Result<Opened, CmdError> {
        let env = |e: std::io::Error| {
            CmdError::Env(format!(
                "cannot open the workspace root `{}`: {e}",
                root.display()
            ))
        };
        let canonical = std::fs::canonicalize(root).map_err(env)?;
        let dir = Root::open(&canonical).map_err(env)?;
        Ok(Opened {
            root: root.to_path_buf(),
            canonical,
            dir,
        })
    }

    /// What every layer and import reads, also where symbolic links on the
    /// way lead ([`Readers::with_links`]).
    pub(super) fn readers(&self, graph: &Graph) -> Readers {
        let resolve = |rel: &str, follow: bool| -> Option<String> {
            let l = self.dir.locate(Path::new(rel), follow).ok()?;
            l.resolved.to_str().map(str::to_string)
        };
        Readers::with_links(graph, &resolve)
    }

    /// Each command-line path (relative to the current directory, or
    /// absolute) as a workspace-relative [`Changed`], `None` for one outside
    /// the workspace. A path that is a directory now (not followed through a
    /// symbolic link) stands for everything in it.
    pub(super) fn changed_paths(
        &self,
        ctx: &Context,
        paths: &[PathBuf],
    ) -> Result<Vec<(PathBuf, Option<Changed>)>, CmdError> {
        let cwd = std::path::absolute(&ctx.cwd)
            .map_err(|e| CmdError::Env(format!("cannot read the current directory: {e}")))?;
        let roots = [self.root.as_path(), self.canonical.as_path()];
        Ok(paths
            .iter()
            .map(|p| {
                let c = affected::workspace_path(&roots, &cwd, p).map(|rel| {
                    let dir = rel.is_empty()
                        || self
                            .dir
                            .locate(Path::new(&rel), false)
                            .and_then(|l| l.lstat())
                            .is_ok_and(|s| s.is_dir());
                    Changed { path: rel, dir }
                });
                (p.clone(), c)
            })
            .collect())
    }
}
