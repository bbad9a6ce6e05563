//! The output directory: the only place in a workspace where imgc writes, replaces
//! or deletes anything, and the rules that keep it from touching what it did not make.
//!
//! A workspace may be hostile (a cloned repository can ship `imgc-out -> /home/you`,
//! or `imgc-out/services -> /etc`), and `output-dir` may be misconfigured. So imgc
//! **marks what it makes** and refuses anything else:
//!
//! - the output root, and each directory imgc creates below it, holds a file
//!   [`DIR_MARK`] (`.imgc-dir`);
//! - each image layout imgc writes holds a file [`LAYOUT_MARK`] (`.imgc-layout`),
//!   beside `oci-layout`, `index.json` and `blobs/`. OCI tools ignore other files in
//!   a layout, so the mark does not change what skopeo or umoci read.
//!
//! # The rules
//!
//! - **No links are followed** from the workspace root down: every directory is
//!   opened with `O_NOFOLLOW` relative to its parent's descriptor (`openat`), so a
//!   symbolic link anywhere on the path (the output root, a package directory inside
//!   it, the layout itself) is an error naming it, and a link swapped in between a
//!   check and a write is not followed either.
//! - **The output root** is created (and marked) when missing. An existing one must
//!   carry the mark; an existing *empty* directory is adopted (marked). A non-empty
//!   one without the mark (an old output directory, or a directory of the user's that
//!   `output-dir` names by mistake) is refused: imgc cannot tell what is in it.
//! - **A layout** is written only where nothing is, or over a directory carrying the
//!   layout mark whose entries are all ones imgc writes (`oci-layout`, `index.json`,
//!   `blobs`, the mark). It is built in a marked temporary directory beside the
//!   destination and swapped in with one `renameat2(RENAME_EXCHANGE)` (two renames
//!   where the filesystem cannot exchange), so readers see the old or the new layout,
//!   never a half-written one; the old one is then removed member by member. Two
//!   builds of one workspace may write the same layout at once: the one whose
//!   rename finds the other's layout already in place checks it like any existing
//!   one (marked, only imgc's members) and exchanges with it, so both succeed.
//! - **Removing** (`imgc clean`, stale layouts) deletes only marked layouts (their
//!   known members; anything else in them is kept) and then directories that carry
//!   the directory mark and hold nothing else. Whatever is left is reported as kept.
//!
//! Which `output-dir` values are allowed at all (not the root, not `.git`, no
//! package inside or around it) is checked when the workspace loads
//! ([`crate::workspace`], [`crate::spec`]); this module enforces what is on disk.
//!
//! # What it deliberately does not do
//!
//! - It does not decide which images are current: callers pass the layout paths
//!   (`<package>/<name>`) of the images that exist; see [`layout_rel`].
//! - It does not re-hash blobs: [`Root::layout_is_current`] is stat-only, like the
//!   rest of a no-op build; [`crate::oci::check_layout`] is the thorough checker.
//! - It does not defend against another local user racing it inside the output
//!   directory beyond never following links: the output root is the user's own.

use crate::cas::Cas;
use crate::hash::Digest;
use crate::label::Label;
use crate::oci;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Marks a directory imgc made: the output root and the directories below it.
pub const DIR_MARK: &str = ".imgc-dir";
/// Marks an OCI image layout imgc wrote.
pub const LAYOUT_MARK: &str = ".imgc-layout";
const DIR_MARK_TEXT: &[u8] =
    b"imgc made this directory: `imgc clean` removes it once it holds nothing else.\n";
const LAYOUT_MARK_TEXT: &[u8] =
    b"imgc wrote this OCI image layout: `imgc build` may replace it and `imgc clean` remove it.\n";
/// What a layout imgc writes holds; anything else in one is not imgc's.
const LAYOUT_MEMBERS: [&str; 4] = ["index.json", "oci-layout", "blobs", LAYOUT_MARK];
/// Temporary layouts (being written, or left by a killed build) start with this.
pub const TMP_PREFIX: &str = ".imgc-new-";
/// Largest `index.json` read back to compare (ours are a few hundred bytes).
const MAX_INDEX_BYTES: u64 = 1 << 20;

/// Why the output directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Something imgc did not make is in the way; the message says what and how to fix it.
    #[error("{0}")]
    Refused(String),
    /// The filesystem failed.
    #[error("cannot {what} `{path}`: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
}

impl OutputError {
    fn io(what: &'static str, path: &str, e: impl Into<io::Error>) -> OutputError {
        OutputError::Io {
            what,
            path: path.to_string(),
            source: e.into(),
        }
    }

    /// The underlying IO error, if the filesystem failed (for exit codes).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            OutputError::Io { source, .. } => Some(source),
            OutputError::Refused(_) => None,
        }
    }
}

/// The layout path of an image inside the output directory: `<package>/<name>`.
pub fn layout_rel(label: &Label) -> String {
    if label.package().is_empty() {
        label.name().to_string()
    } else {
        format!("{}/{}", label.package(), label.name())
    }
}

/// A workspace's output directory, as configured: not yet opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDir {
    ws_root: PathBuf,
    /// Normalized, `/`-separated, relative to the workspace root (e.g. `imgc-out`).
    rel: String,
}

impl OutputDir {
    /// `rel` is the workspace's `output-dir` as the parser normalized it.
    pub fn new(ws_root: &Path, rel: &str) -> OutputDir {
        OutputDir {
            ws_root: ws_root.to_path_buf(),
            rel: rel.trim_end_matches('/').to_string(),
        }
    }

    /// The absolute path of the output root.
    pub fn path(&self) -> PathBuf {
        self.ws_root.join(&self.rel)
    }

    /// The output root as shown to users: relative to the workspace root.
    pub fn shown(&self) -> &str {
        &self.rel
    }

    /// The absolute path of the layout of `label`.
    pub fn layout_path(&self, label: &Label) -> PathBuf {
        self.path().join(layout_rel(label))
    }

    /// Opens the output root to write into it, creating (and marking) it and the
    /// directories above it when missing. See the module docs for what is refused.
    pub fn open_for_write(&self) -> Result<Root, OutputError> {
        match self.open(true)? {
            Some(root) => Ok(root),
            None => unreachable!("opening with create makes the root"),
        }
    }

    /// Opens the output root if it exists and imgc made it: `None` if it does not
    /// exist, or is an empty directory without the mark (nothing of imgc's in it).
    pub fn open_existing(&self) -> Result<Option<Root>, OutputError> {
        self.open(false)
    }

    /// Whether the output root exists and carries imgc's mark (it is then skipped
    /// when looking for packages). Never follows links; any doubt answers `false`.
    pub fn is_marked(&self) -> bool {
        matches!(self.open(false), Ok(Some(_)))
    }

    fn open(&self, create: bool) -> Result<Option<Root>, OutputError> {
        let ws = rfs::open(
            &self.ws_root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            OutputError::io(
                "open the workspace root",
                &self.ws_root.to_string_lossy(),
                e,
            )
        })?;
        let comps: Vec<&str> = self.rel.split('/').filter(|c| !c.is_empty()).collect();
        let Some((name, above)) = comps.split_last() else {
            return Err(OutputError::Refused(
                "`output-dir` names the workspace root itself".into(),
            ));
        };
        let mut dir = ws;
        let mut shown = String::new();
        for comp in above {
            push_comp(&mut shown, comp);
            let Some(fd) = open_or_make(dir.as_fd(), comp, &shown, create, false)? else {
                return Ok(None);
            };
            dir = fd;
        }
        push_comp(&mut shown, name);
        let Some(fd) = open_or_make(dir.as_fd(), name, &shown, create, true)? else {
            return Ok(None);
        };
        // Checked again after listing: another imgc process making the root at the
        // same time may have marked it in between (the mark is then what we listed).
        if !has_mark(fd.as_fd(), DIR_MARK) {
            let entries = list(fd.as_fd(), &shown)?;
            if !entries.is_empty() && !has_mark(fd.as_fd(), DIR_MARK) {
                return Err(OutputError::Refused(format!(
                    "the output directory `{shown}` exists but imgc did not make it (it has no `{DIR_MARK}` mark), so it may hold files that are not imgc's; \
                     if it is an old output directory, remove it (`rm -r {shown}`) and build again, or set another `output-dir` in imgc.kdl"
                )));
            }
            if !has_mark(fd.as_fd(), DIR_MARK) {
                if !create {
                    return Ok(None);
                }
                write_new(fd.as_fd(), DIR_MARK, DIR_MARK_TEXT, &shown)?;
            }
        }
        Ok(Some(Root {
            fd,
            parent: dir,
            name: name.to_string(),
            shown,
            path: self.path(),
        }))
    }
}

/// An opened output root (a marked directory, reached without following links).
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    /// The directory holding the root, and the root's name in it (for `clean`).
    parent: OwnedFd,
    name: String,
    /// The root relative to the workspace, for messages.
    shown: String,
    /// The absolute path of the root (for events and the cache's layout records).
    path: PathBuf,
}

/// What [`Root::clean`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Layouts removed, relative to the output root (temporary ones included).
    pub layouts: Vec<String>,
    /// Entries kept because imgc did not make them, relative to the workspace.
    pub kept: Vec<String>,
    /// Whether the output root itself was removed.
    pub removed_root: bool,
}

impl Root {
    /// The absolute path of the output root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The output root as shown to users (relative to the workspace root).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `<root>/<rel>` as shown to users.
    pub fn show(&self, rel: &str) -> String {
        format!("{}/{rel}", self.shown)
    }

    /// Opens the directory holding `rel` (creating and marking missing ones when
    /// `create`), and returns it with the last component. `None` if a directory on
    /// the way is missing and `create` is false.
    fn open_parent<'r>(
        &self,
        rel: &'r str,
        create: bool,
    ) -> Result<Option<(OwnedFd, &'r str)>, OutputError> {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let Some((name, above)) = comps.split_last() else {
            return Err(OutputError::Refused(format!(
                "`{rel}` names no layout in `{}`",
                self.shown
            )));
        };
        if comps.iter().any(|c| *c == "." || *c == "..") {
            return Err(OutputError::Refused(format!(
                "`{rel}` is not a layout path inside `{}`",
                self.shown
            )));
        }
        let mut dir = dup(self.fd.as_fd(), &self.shown)?;
        let mut shown = self.shown.clone();
        for comp in above {
            push_comp(&mut shown, comp);
            let Some(fd) = open_or_make(dir.as_fd(), comp, &shown, create, true)? else {
                return Ok(None);
            };
            dir = fd;
        }
        Ok(Some((dir, name)))
    }

    /// Writes (or atomically replaces) the layout at `rel` (`<package>/<name>`)
    /// holding the manifest `manifest` and `blobs` (its config and layers), all
    /// hard-linked (or copied) from `cas`. Refuses to replace anything imgc did not
    /// write (see the module docs).
    pub fn write_layout(
        &self,
        rel: &str,
        cas: &Cas,
        manifest: (Digest, u64),
        blobs: &[Digest],
        ref_names: &[String],
    ) -> Result<(), OutputError> {
        let Some((parent, name)) = self.open_parent(rel, true)? else {
            unreachable!("opening with create makes the parents");
        };
        write_layout_in(
            parent.as_fd(),
            name,
            &self.show(rel),
            cas,
            manifest,
            blobs,
            ref_names,
        )
    }

    /// Whether the layout at `rel` already is what [`Root::write_layout`] would
    /// write (stats only; see [`layout_is_current_in`]).
    pub fn layout_is_current(
        &self,
        rel: &str,
        cas: &Cas,
        manifest: (Digest, u64),
        blobs: &[(Digest, u64)],
        ref_names: &[String],
    ) -> bool {
        match self.open_parent(rel, false) {
            Ok(Some((parent, name))) => {
                layout_is_current_in(parent.as_fd(), name, cas, manifest, blobs, ref_names)
            }
            _ => false,
        }
    }

    /// The stat stamp of the layout at `rel` (see [`layout_stamp_in`]).
    pub fn layout_stamp(&self, rel: &str) -> Option<(String, i64)> {
        let (parent, name) = self.open_parent(rel, false).ok()??;
        layout_stamp_in(parent.as_fd(), name)
    }

    /// The layouts imgc wrote in the output root (marked ones, reached without
    /// following links), as paths relative to it, sorted. Layouts are not searched
    /// for further layouts; temporary ones are included.
    pub fn layouts(&self) -> Result<Vec<String>, OutputError> {
        Ok(self.layouts_and_listed()?.0)
    }

    /// [`Root::layouts`], and the directories listed to find them (relative to
    /// the output root, `""` for the root itself), sorted.
    pub fn layouts_and_listed(&self) -> Result<(Vec<String>, Vec<String>), OutputError> {
        let mut found = Vec::new();
        let mut listed = Vec::new();
        let mut stack: Vec<(OwnedFd, String)> =
            vec![(dup(self.fd.as_fd(), &self.shown)?, String::new())];
        while let Some((dir, rel)) = stack.pop() {
            for name in list(dir.as_fd(), &self.show(&rel))? {
                let Ok(name) = name.into_string() else {
                    continue; // not UTF-8: no layout of imgc's has such a name
                };
                let child_rel = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let Ok(child) = open_dir(dir.as_fd(), &name) else {
                    continue; // a file, a link or gone: not a directory of ours
                };
                if has_mark(child.as_fd(), LAYOUT_MARK) {
                    found.push(child_rel);
                } else {
                    stack.push((child, child_rel));
                }
            }
            listed.push(rel);
        }
        found.sort();
        listed.sort();
        Ok((found, listed))
    }

    /// Removes the marked layout at `rel` (its known members; anything else in it is
    /// kept), then the directories above it that imgc made and that hold nothing
    /// else. Returns the entries kept, as shown to users.
    pub fn remove_layout(&self, rel: &str) -> Result<Vec<String>, OutputError> {
        let Some((parent, name)) = self.open_parent(rel, false)? else {
            return Ok(Vec::new());
        };
        let shown = self.show(rel);
        let mut kept = remove_layout_in(parent.as_fd(), name, &shown)?;
        if kept.is_empty() {
            kept.extend(self.prune_above(rel)?);
        }
        Ok(kept)
    }

    /// Removes the directories above `rel` (inside the root) that imgc made and
    /// that hold nothing but their mark, deepest first.
    fn prune_above(&self, rel: &str) -> Result<Option<String>, OutputError> {
        let mut comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        comps.pop();
        while !comps.is_empty() {
            let dir_rel = comps.join("/");
            let Some((parent, name)) = self.open_parent(&dir_rel, false)? else {
                return Ok(None);
            };
            if !remove_marked_dir(parent.as_fd(), name, &self.show(&dir_rel))? {
                return Ok(None);
            }
            comps.pop();
        }
        Ok(None)
    }

    /// Removes the layouts imgc wrote whose paths are not in `current` (the layout
    /// paths of the images that exist), and the directories that leaves empty.
    /// Temporary layouts are left alone (a concurrent build may be writing one;
    /// `imgc clean` removes them). Returns the paths removed and the entries kept.
    pub fn remove_stale(
        &self,
        current: &BTreeSet<String>,
    ) -> Result<(Vec<String>, Vec<String>), OutputError> {
        self.remove_stale_listing(current)
            .map(|(removed, kept, _)| (removed, kept))
    }

    /// [`Root::remove_stale`], and the directories listed to find the layouts
    /// (see [`Root::layouts_and_listed`]).
    #[allow(clippy::type_complexity)]
    pub fn remove_stale_listing(
        &self,
        current: &BTreeSet<String>,
    ) -> Result<(Vec<String>, Vec<String>, Vec<String>), OutputError> {
        let mut removed = Vec::new();
        let mut kept = Vec::new();
        let (layouts, listed) = self.layouts_and_listed()?;
        for rel in layouts {
            let temporary = rel
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(TMP_PREFIX));
            if current.contains(&rel) || temporary {
                continue;
            }
            kept.extend(self.remove_layout(&rel)?);
            removed.push(rel);
        }
        Ok((removed, kept, listed))
    }

    /// Removes everything imgc made in the output root, then the root itself if
    /// nothing else is left in it.
    pub fn clean(self) -> Result<CleanReport, OutputError> {
        let mut report = CleanReport::default();
        for rel in self.layouts()? {
            let Some((parent, name)) = self.open_parent(&rel, false)? else {
                continue;
            };
            report
                .kept
                .extend(remove_layout_in(parent.as_fd(), name, &self.show(&rel))?);
            report.layouts.push(rel);
        }
        // Directories imgc made that are now empty, deepest first.
        let mut dirs = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                dup(self.fd.as_fd(), &self.shown)?
            } else {
                let Some((parent, name)) = self.open_parent(&rel, false)? else {
                    continue;
                };
                match open_dir(parent.as_fd(), name) {
                    Ok(fd) => fd,
                    Err(_) => continue,
                }
            };
            for name in list(dir.as_fd(), &self.show(&rel))? {
                let shown_name = name.to_string_lossy().into_owned();
                let child_rel = if rel.is_empty() {
                    shown_name.clone()
                } else {
                    format!("{rel}/{shown_name}")
                };
                match name.to_str().map(|n| open_dir(dir.as_fd(), n)) {
                    Some(Ok(child)) if has_mark(child.as_fd(), DIR_MARK) => {
                        dirs.push(child_rel.clone());
                        stack.push(child_rel);
                    }
                    _ if shown_name == DIR_MARK => {}
                    _ => report.kept.push(self.show(&child_rel)),
                }
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        for rel in &dirs {
            if let Some((parent, name)) = self.open_parent(rel, false)? {
                remove_marked_dir(parent.as_fd(), name, &self.show(rel))?;
            }
        }
        report.removed_root = remove_marked_dir(self.parent.as_fd(), &self.name, &self.shown)?;
        report.kept.sort();
        report.kept.dedup();
        Ok(report)
    }
}

/// Writes the layout `name` in the directory `parent` (see [`Root::write_layout`]);
/// `shown` names it in messages.
pub fn write_layout_in(
    parent: BorrowedFd<'_>,
    name: &str,
    shown: &str,
    cas: &Cas,
    manifest: (Digest, u64),
    blobs: &[Digest],
    ref_names: &[String],
) -> Result<(), OutputError> {
    let mut existed = check_replaceable(parent, name, shown)?;
    let tmp = make_tmp_dir(parent, shown)?;
    let filled = fill_layout(parent, &tmp, shown, cas, manifest, blobs, ref_names);
    if let Err(e) = filled {
        let _ = remove_layout_in(parent, &tmp, shown);
        return Err(e);
    }
    let swapped = if existed {
        swap(parent, &tmp, name, shown)
    } else {
        match rfs::renameat_with(parent, tmp.as_str(), parent, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                rfs::renameat(parent, tmp.as_str(), parent, name)
                    .map_err(|e| OutputError::io("rename into", shown, e))
            }
            // Another build of this workspace (on another cache, or racing on
            // the same one) put its layout there meanwhile: replace it like any
            // layout imgc made, and refuse anything else.
            Err(Errno::EXIST | Errno::NOTEMPTY) => match check_replaceable(parent, name, shown) {
                Ok(true) => {
                    existed = true;
                    swap(parent, &tmp, name, shown)
                }
                Ok(false) => Err(OutputError::Refused(format!(
                    "`{shown}` appeared and vanished while imgc was writing it: build again"
                ))),
                Err(e) => Err(e),
            },
            Err(e) => Err(OutputError::io("rename into", shown, e)),
        }
    };
    if let Err(e) = swapped {
        let _ = remove_layout_in(parent, &tmp, shown);
        return Err(e);
    }
    if existed {
        // `tmp` now holds the old layout.
        remove_layout_in(parent, &tmp, shown)?;
    }
    Ok(())
}

/// Whether `name` in `parent` exists and may be replaced: a marked layout holding
/// only what imgc writes. Missing is fine (`Ok(false)`); anything else is refused.
fn check_replaceable(parent: BorrowedFd<'_>, name: &str, shown: &str) -> Result<bool, OutputError> {
    let dir = match open_dir(parent, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(refuse_at(parent, name, e, shown)),
    };
    if !has_mark(dir.as_fd(), LAYOUT_MARK) {
        return Err(OutputError::Refused(format!(
            "`{shown}` exists but imgc did not write it (it has no `{LAYOUT_MARK}` mark): move it away or remove it, then build again"
        )));
    }
    for entry in list(dir.as_fd(), shown)? {
        let entry = entry.to_string_lossy();
        if !LAYOUT_MEMBERS.contains(&&*entry) {
            return Err(OutputError::Refused(format!(
                "`{shown}` holds `{entry}`, which imgc did not write: move it out of the image layout, then build again"
            )));
        }
    }
    Ok(true)
}

/// Puts the new layout in place of the old one: one atomic exchange, or two
/// renames where the filesystem cannot exchange. The old one ends up at `tmp`.
fn swap(parent: BorrowedFd<'_>, tmp: &str, name: &str, shown: &str) -> Result<(), OutputError> {
    match rfs::renameat_with(parent, tmp, parent, name, RenameFlags::EXCHANGE) {
        Ok(()) => return Ok(()),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {}
        Err(e) => return Err(OutputError::io("replace", shown, e)),
    }
    let aside = make_tmp_name(parent, shown)?;
    rfs::renameat(parent, name, parent, aside.as_str())
        .map_err(|e| OutputError::io("move aside", shown, e))?;
    rfs::renameat(parent, tmp, parent, name)
        .map_err(|e| OutputError::io("rename into", shown, e))?;
    rfs::renameat(parent, aside.as_str(), parent, tmp)
        .map_err(|e| OutputError::io("move aside", shown, e))
}

/// A fresh, marked temporary directory in `parent`; returns its name.
fn make_tmp_dir(parent: BorrowedFd<'_>, shown: &str) -> Result<String, OutputError> {
    for _ in 0..100 {
        let name = tmp_name();
        match rfs::mkdirat(parent, name.as_str(), Mode::from_raw_mode(0o777)) {
            Ok(()) => {
                let dir = open_dir(parent, &name).map_err(|e| not_a_dir(e, shown))?;
                write_new(dir.as_fd(), LAYOUT_MARK, LAYOUT_MARK_TEXT, shown)?;
                return Ok(name);
            }
            Err(Errno::EXIST) => continue,
            Err(e) => {
                return Err(OutputError::io(
                    "create a temporary directory beside",
                    shown,
                    e,
                ));
            }
        }
    }
    Err(OutputError::Refused(format!(
        "cannot find a free temporary name beside `{shown}`"
    )))
}

/// A temporary name not used in `parent` (for the old layout, when swapping by renames).
fn make_tmp_name(parent: BorrowedFd<'_>, shown: &str) -> Result<String, OutputError> {
    for _ in 0..100 {
        let name = tmp_name();
        if let Err(Errno::NOENT) = rfs::statat(parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            return Ok(name);
        }
    }
    Err(OutputError::Refused(format!(
        "cannot find a free temporary name beside `{shown}`"
    )))
}

fn tmp_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.update(&now.to_le_bytes());
    format!("{TMP_PREFIX}{}", &h.finalize().to_hex()[..12])
}

/// Writes the members of a layout into the (marked, empty) directory `tmp`.
fn fill_layout(
    parent: BorrowedFd<'_>,
    tmp: &str,
    shown: &str,
    cas: &Cas,
    manifest: (Digest, u64),
    blobs: &[Digest],
    ref_names: &[String],
) -> Result<(), OutputError> {
    let dir = open_dir(parent, tmp).map_err(|e| not_a_dir(e, shown))?;
    write_new(dir.as_fd(), "oci-layout", oci::OCI_LAYOUT, shown)?;
    let index = oci::canonical_json(&oci::build_index(manifest, ref_names));
    write_new(dir.as_fd(), "index.json", &index, shown)?;
    make_dir(dir.as_fd(), "blobs", shown, false)?;
    let blobs_dir = open_dir(dir.as_fd(), "blobs").map_err(|e| not_a_dir(e, shown))?;
    make_dir(blobs_dir.as_fd(), "sha256", shown, false)?;
    let sha = open_dir(blobs_dir.as_fd(), "sha256").map_err(|e| not_a_dir(e, shown))?;
    let all: BTreeSet<&Digest> = std::iter::once(&manifest.0).chain(blobs).collect();
    for d in all {
        let src = cas.blob_path(d);
        let hex = d.hex();
        if rfs::linkat(rfs::CWD, &src, sha.as_fd(), hex.as_str(), AtFlags::empty()).is_ok() {
            continue;
        }
        // Not linkable (another filesystem): copy.
        let shown_src = src.to_string_lossy();
        let mut from =
            std::fs::File::open(&src).map_err(|e| OutputError::io("read", &shown_src, e))?;
        let to = rfs::openat(
            sha.as_fd(),
            hex.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
        .map_err(|e| OutputError::io("write a blob into", shown, e))?;
        let mut to = std::fs::File::from(to);
        io::copy(&mut from, &mut to).map_err(|e| OutputError::io("write a blob into", shown, e))?;
    }
    Ok(())
}

/// Removes the marked layout (or temporary layout) `name` in `parent`: its known
/// members, its mark last, then the directory if nothing else is in it. Returns
/// what was kept (as shown to users). A missing or unmarked directory is left alone.
fn remove_layout_in(
    parent: BorrowedFd<'_>,
    name: &str,
    shown: &str,
) -> Result<Vec<String>, OutputError> {
    let dir = match open_dir(parent, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(refuse_at(parent, name, e, shown)),
    };
    if !has_mark(dir.as_fd(), LAYOUT_MARK) {
        return Ok(vec![shown.to_string()]);
    }
    for member in ["index.json", "oci-layout"] {
        unlink(dir.as_fd(), member, shown)?;
    }
    remove_tree(dir.as_fd(), "blobs", shown, 0)?;
    let mut kept: Vec<String> = list(dir.as_fd(), shown)?
        .into_iter()
        .filter(|n| n.as_bytes() != LAYOUT_MARK.as_bytes())
        .map(|n| format!("{shown}/{}", n.to_string_lossy()))
        .collect();
    if !kept.is_empty() {
        return Ok(kept);
    }
    unlink(dir.as_fd(), LAYOUT_MARK, shown)?;
    match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(Errno::NOTEMPTY | Errno::EXIST) => kept.push(shown.to_string()),
        Err(e) => return Err(OutputError::io("remove", shown, e)),
    }
    Ok(kept)
}

/// Removes the directory `name` in `parent` if imgc made it and it holds nothing
/// but its mark. Returns whether it is gone.
fn remove_marked_dir(parent: BorrowedFd<'_>, name: &str, shown: &str) -> Result<bool, OutputError> {
    let dir = match open_dir(parent, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(true),
        Err(_) => return Ok(false),
    };
    if !has_mark(dir.as_fd(), DIR_MARK) {
        return Ok(false);
    }
    let entries = list(dir.as_fd(), shown)?;
    if entries.iter().any(|n| n.as_bytes() != DIR_MARK.as_bytes()) {
        return Ok(false);
    }
    unlink(dir.as_fd(), DIR_MARK, shown)?;
    match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(true),
        Err(Errno::NOTEMPTY | Errno::EXIST) => Ok(false),
        Err(e) => Err(OutputError::io("remove", shown, e)),
    }
}

/// Removes `name` in `dir` and everything below it, never following a link (links
/// are removed, not their targets). Only used on a layout's `blobs` directory.
fn remove_tree(
    dir: BorrowedFd<'_>,
    name: &str,
    shown: &str,
    depth: usize,
) -> Result<(), OutputError> {
    let sub = match open_dir(dir, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(Errno::NOTDIR | Errno::LOOP) => return unlink(dir, name, shown),
        Err(e) => return Err(refuse_at(dir, name, e, shown)),
    };
    if depth > 8 {
        return Err(OutputError::Refused(format!(
            "`{shown}` holds directories nested deeper than an image layout does: remove it by hand"
        )));
    }
    for entry in list(sub.as_fd(), shown)? {
        let Some(entry) = entry.to_str().map(str::to_string) else {
            // Not UTF-8: remove it by its bytes.
            let c = std::ffi::CString::new(entry.as_bytes())
                .map_err(|e| OutputError::io("remove", shown, io::Error::other(e)))?;
            match rfs::unlinkat(sub.as_fd(), c.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    return Err(OutputError::Refused(format!(
                        "`{shown}` holds a directory whose name is not UTF-8: remove it by hand"
                    )));
                }
                Err(e) => return Err(OutputError::io("remove", shown, e)),
            }
            continue;
        };
        match rfs::unlinkat(sub.as_fd(), entry.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR | Errno::PERM) => remove_tree(sub.as_fd(), &entry, shown, depth + 1)?,
            Err(e) => return Err(OutputError::io("remove", shown, e)),
        }
    }
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(OutputError::io("remove", shown, e)),
    }
}

/// Whether the layout `name` in `parent` already is what [`write_layout_in`] would
/// write: the mark, the same `oci-layout` and `index.json` bytes, and every blob
/// (the manifest and `blobs`) present with its size and, where it was hard-linked,
/// still the very file the CAS holds (so a blob the CAS replaced after damage is
/// linked again). Stats and two small reads; no link is followed.
pub fn layout_is_current_in(
    parent: BorrowedFd<'_>,
    name: &str,
    cas: &Cas,
    manifest: (Digest, u64),
    blobs: &[(Digest, u64)],
    ref_names: &[String],
) -> bool {
    let Ok(dir) = open_dir(parent, name) else {
        return false;
    };
    if !has_mark(dir.as_fd(), LAYOUT_MARK)
        || read_small(dir.as_fd(), "oci-layout").as_deref() != Some(oci::OCI_LAYOUT)
        || read_small(dir.as_fd(), "index.json")
            != Some(oci::canonical_json(&oci::build_index(manifest, ref_names)))
    {
        return false;
    }
    let Ok(sha) = open_dir(dir.as_fd(), "blobs").and_then(|b| open_dir(b.as_fd(), "sha256")) else {
        return false;
    };
    std::iter::once(&manifest).chain(blobs).all(|(d, size)| {
        let Ok(out) = rfs::statat(sha.as_fd(), d.hex().as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            return false;
        };
        let Ok(stored) = std::fs::metadata(cas.blob_path(d)) else {
            return false;
        };
        use std::os::unix::fs::MetadataExt;
        let same_file = out.st_dev == stored.dev() && out.st_ino == stored.ino();
        let copied = out.st_dev != stored.dev();
        FileType::from_raw_mode(out.st_mode) == FileType::RegularFile
            && out.st_size as u64 == *size
            && (same_file || copied)
    })
}

/// The stat data of a layout's mark, `oci-layout`, `index.json` and `blobs/sha256`
/// directory, as text, and the newest mtime or ctime among them (ns): what
/// [`crate::cache::LayoutRecord`] remembers. Adding, removing or replacing a blob
/// or rewriting a top-level file changes it. `None` if any is missing or the
/// layout is not marked.
pub fn layout_stamp_in(parent: BorrowedFd<'_>, name: &str) -> Option<(String, i64)> {
    let dir = open_dir(parent, name).ok()?;
    let blobs = open_dir(dir.as_fd(), "blobs").ok()?;
    let mut text = String::new();
    let mut newest = i64::MIN;
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    for (at, file) in [
        (dir.as_fd(), LAYOUT_MARK),
        (dir.as_fd(), "oci-layout"),
        (dir.as_fd(), "index.json"),
        (blobs.as_fd(), "sha256"),
    ] {
        let s = rfs::statat(at, file, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let mtime = ns(s.st_mtime as i64, s.st_mtime_nsec as i64);
        let ctime = ns(s.st_ctime as i64, s.st_ctime_nsec as i64);
        newest = newest.max(mtime).max(ctime);
        text.push_str(&format!(
            "{}:{mtime}:{ctime}:{}:{};",
            s.st_size, s.st_ino, s.st_mode
        ));
    }
    Some((text, newest))
}

// ---------------------------------------------------------------------------
// Small descriptor-relative helpers. None of them follows a symbolic link.

fn open_dir(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    crate::input::open_dir_at(dir, name.as_ref())
}

fn dup(fd: BorrowedFd<'_>, shown: &str) -> Result<OwnedFd, OutputError> {
    fd.try_clone_to_owned()
        .map_err(|e| OutputError::io("open", shown, e))
}

/// The error for `name` in `dir` that could not be opened as a directory: with
/// `O_NOFOLLOW | O_DIRECTORY`, Linux answers `ENOTDIR` for a link, so look.
fn refuse_at(dir: BorrowedFd<'_>, name: &str, e: Errno, shown: &str) -> OutputError {
    let is_link = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
    not_a_dir(if is_link { Errno::LOOP } else { e }, shown)
}

/// The error for a path component that could not be opened as a directory.
fn not_a_dir(e: Errno, shown: &str) -> OutputError {
    match e {
        Errno::LOOP => OutputError::Refused(format!(
            "`{shown}` is a symbolic link: imgc never writes or removes anything through a link in its output directory; \
             remove the link (or set another `output-dir` in imgc.kdl)"
        )),
        Errno::NOTDIR => OutputError::Refused(format!(
            "`{shown}` is in the way: imgc needs a directory there and did not make this; move it away"
        )),
        e => OutputError::io("open", shown, e),
    }
}

/// Opens the directory `name` in `dir` (never through a link). A missing one is
/// made if `create` (with the directory mark if `mark`: see [`make_dir`]), else
/// it is `None`; anything else in the way is refused (see [`refuse_at`]).
fn open_or_make(
    dir: BorrowedFd<'_>,
    name: &str,
    shown: &str,
    create: bool,
    mark: bool,
) -> Result<Option<OwnedFd>, OutputError> {
    match open_dir(dir, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) if create => {
            make_dir(dir, name, shown, mark)?;
            open_dir(dir, name)
                .map(Some)
                .map_err(|e| refuse_at(dir, name, e, shown))
        }
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(refuse_at(dir, name, e, shown)),
    }
}

/// Creates the directory `name` in `dir` (an existing one is fine); `mark` says to
/// write the directory mark into it when this call made it.
fn make_dir(dir: BorrowedFd<'_>, name: &str, shown: &str, mark: bool) -> Result<(), OutputError> {
    match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
        Ok(()) => {
            if mark {
                let made = open_dir(dir, name).map_err(|e| not_a_dir(e, shown))?;
                write_new(made.as_fd(), DIR_MARK, DIR_MARK_TEXT, shown)?;
            }
            Ok(())
        }
        Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(OutputError::io("create", shown, e)),
    }
}

/// Whether `dir` holds a regular file `mark`.
fn has_mark(dir: BorrowedFd<'_>, mark: &str) -> bool {
    rfs::statat(dir, mark, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile)
}

/// Creates the file `name` in `dir` with `bytes` (an existing mark is fine).
fn write_new(
    dir: BorrowedFd<'_>,
    name: &str,
    bytes: &[u8],
    shown: &str,
) -> Result<(), OutputError> {
    let fd = match rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    ) {
        Ok(fd) => fd,
        Err(Errno::EXIST) if name == DIR_MARK || name == LAYOUT_MARK => return Ok(()),
        Err(e) => return Err(OutputError::io("write into", shown, e)),
    };
    std::fs::File::from(fd)
        .write_all(bytes)
        .map_err(|e| OutputError::io("write into", shown, e))
}

/// The bytes of the regular file `name` in `dir`, if it is one of at most
/// [`MAX_INDEX_BYTES`] (never a link, FIFO or device).
fn read_small(dir: BorrowedFd<'_>, name: &str) -> Option<Vec<u8>> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rfs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_size as u64 > MAX_INDEX_BYTES
    {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

fn unlink(dir: BorrowedFd<'_>, name: &str, shown: &str) -> Result<(), OutputError> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(OutputError::io("remove a file of", shown, e)),
    }
}

/// The names in `dir` (without `.` and `..`), sorted bytewise.
fn list(dir: BorrowedFd<'_>, shown: &str) -> Result<Vec<std::ffi::OsString>, OutputError> {
    crate::input::names_at(dir).map_err(|e| OutputError::io("list", shown, e))
}

fn push_comp(shown: &mut String, comp: &str) {
    if !shown.is_empty() {
        shown.push('/');
    }
    shown.push_str(comp);
}

/// Writes (or atomically replaces) an OCI image layout at `dest` holding the
/// manifest `manifest` and `blobs` (its config and layers), all from `cas`.
/// `dest`'s parent is created (through the path as given); `dest` itself must be
/// missing or a layout imgc wrote, and is never reached through a link: see
/// the module docs; builds go through [`Root`] so that no directory of the output
/// is reached through a link either.
pub fn write_layout(
    dest: &Path,
    cas: &Cas,
    manifest: (Digest, u64),
    blobs: &[Digest],
    ref_names: &[String],
) -> io::Result<()> {
    let (parent, name) = parent_and_name(dest)?;
    std::fs::create_dir_all(parent).map_err(|e| ctx(e, "create", parent))?;
    let dir = std::fs::File::open(parent).map_err(|e| ctx(e, "open", parent))?;
    write_layout_in(
        std::os::fd::AsFd::as_fd(&dir),
        name,
        &dest.to_string_lossy(),
        cas,
        manifest,
        blobs,
        ref_names,
    )
    .map_err(|e| match e.io_error() {
        Some(source) => io::Error::new(source.kind(), e.to_string()),
        None => io::Error::other(e.to_string()),
    })
}

fn parent_and_name(dest: &Path) -> io::Result<(&Path, &str)> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other(format!("`{}` names no directory", dest.display())))?;
    Ok((parent, name))
}

/// Whether `dest` already is the layout [`write_layout`] would write (see
/// [`crate::output::layout_is_current_in`]). Stats only; no hashing.
pub fn layout_is_current(
    dest: &Path,
    cas: &Cas,
    manifest: (Digest, u64),
    blobs: &[(Digest, u64)],
    ref_names: &[String],
) -> bool {
    let Ok((parent, name)) = parent_and_name(dest) else {
        return false;
    };
    let Ok(dir) = std::fs::File::open(parent) else {
        return false;
    };
    layout_is_current_in(
        std::os::fd::AsFd::as_fd(&dir),
        name,
        cas,
        manifest,
        blobs,
        ref_names,
    )
}

/// The stat stamp of the layout at `dest` (see [`crate::output::layout_stamp_in`]).
pub fn layout_stamp(dest: &Path) -> Option<(String, i64)> {
    let (parent, name) = parent_and_name(dest).ok()?;
    let dir = std::fs::File::open(parent).ok()?;
    layout_stamp_in(std::os::fd::AsFd::as_fd(&dir), name)
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} `{}`: {e}", path.display()))
}
