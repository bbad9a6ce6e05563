//! From a layer's spec to the exact list of entries it holds, and the content
//! hashes of its input files.
//!
//! Expansion follows the `copy`, `text`, `dir` and `symlink` entries of a layer:
//!
//! | spec | entries |
//! |---|---|
//! | `copy "f" to="/a/b"` | file `a/b` |
//! | `copy "f" to="/a/"` | file `a/f` (`/` at the end: into the directory) |
//! | `copy "d" to="/a/d"` | `a/d/` and everything below it, recursively |
//! | `copy "d" to="/a/"` | `a/d/` and everything below it (as `cp -r d /a/`) |
//! | `copy "c/*.toml" to="/etc/x/"` | each match, relative to the glob's literal directory `c`, into `/etc/x/` |
//! | `copy ":layer" to="/a/"` | every entry of that layer, re-rooted under `/a/` |
//! | `copy ":http-file" to="/a/b"` | file `a/b`: the downloaded bytes |
//! | `copy ":http-file" to="/a/"` | file `a/<target name>` |
//!
//! Only what the spec declares becomes an entry: `copy "f" to="/a/b"` gives
//! the one entry `a/b`, not `a` (see [`crate::layer`] on why a layer never
//! carries undeclared parents).
//!
//! Files get their mode from the spec, else 0755 if any executable bit is set and
//! 0644 otherwise, whatever the checkout's umask; directories get 0755; owner is
//! the entry's, else the layer's, else `0:0`. The entries of a copied layer
//! (`copy ":layer"`) keep the modes and owners their own layer gave them, except
//! that the `copy`'s `mode` applies to its files and its `owner` to all of them;
//! its `exclude` is refused by the parser (patterns are source paths, and a
//! layer's entries are not). A copied http-file is named by its target's name
//! when copied into a directory (never by its URL, which is not in any key: a
//! mirror must not rename the file), and gets the `copy`'s mode, else 0755 with
//! `executable=#true`, else 0644. Its entry names the download by its sha256
//! ([`EntryData::Blob`]): the layer's key holds that digest, and the layer
//! writer reads the bytes from the store (the scheduler runs the http-file
//! first, as it is a dependency).
//!
//! # Confinement
//!
//! The workspace may be hostile (a cloned repository can ship any symlink, and
//! anything on the machine may rename its directories while imgc runs), so
//! nothing outside it is ever read. Every file and directory is opened through
//! [`crate::input::Root`], relative to a descriptor of the canonical workspace
//! root, never by its absolute path: a check of a path followed by an open of
//! the same path could be raced (a parent directory swapped for a symlink in
//! between), an open beneath the root cannot.
//!
//! - A source path is resolved by its words (`ws_path`: `..` and `.` by name),
//!   then located beneath the root: its parent directories may be symlinks only
//!   while they lead inside the workspace (else `E008`). The source itself is
//!   never followed: a symlink is copied as a symlink.
//! - A glob's literal directory (`ext` in `ext/*.txt`) is walked, so it is
//!   opened like the parents, itself included. Below it, every directory is
//!   listed through its own descriptor and entered without following a link,
//!   so everything the walk finds is inside.
//! - A copied directory is listed the same way, each entry `lstat`ed through the
//!   directory's descriptor: a symlink found in it (to a directory outside, to
//!   `/dev/zero`) is copied as a symlink, never followed; a FIFO, socket or
//!   device is refused, never opened.
//! - The layer writer opens each file again the same way
//!   ([`crate::layer::SourceFile`]), so a directory swapped for a link out of
//!   the workspace between keying and writing fails the layer instead of
//!   handing it outside bytes.
//!
//! A name that would be copied must be UTF-8: keys, tar headers and listings
//! hold UTF-8 paths, and a lossy conversion would copy a file under another
//! name (or, joined back, not find it). Such a name is refused with the
//! directory and its escaped bytes; one that is excluded or not matched is no
//! problem, since globs and `exclude` patterns match the raw bytes.
//!
//! Every `exclude` pattern must leave something out. A pattern is relative to
//! the package, like the source; written relative to the copied directory
//! instead, it would match nothing and silently let everything through.
//!
//! # Hashing
//!
//! Every file is hashed (blake3) as expansion finds it, through the file-hash
//! memo: a file whose stat data (size, mtime, ctime, inode, mode) matches the
//! memo is not re-read. The stat data itself never enters a key; only the
//! blake3 of the content does. A file that is read is opened through the
//! descriptor of the directory it was found in, without following a link or
//! blocking on a FIFO, and must be the regular file that was found (same
//! inode, same size), so a key never describes something swapped in. Reading
//! and hashing is [`crate::input`]'s ([`input::hash_all`]), as for imports.
//!
//! The hash travels with the entry ([`EntryData::File`]): the layer writer
//! hashes the file again as it streams it into the tar and fails if the bytes
//! differ, so a file rewritten between keying and writing (even to the same
//! size and mtime) fails the layer instead of caching bytes its key does not
//! describe.

use crate::cache::{FileMemo, MemoEntry, StatKey};
use crate::diag::{Code, Diag};
use crate::graph::Graph;
use crate::hash::Key;
use crate::input::{self, Algos, Dir, InputError, Limit, Located, Root, Stat};
use crate::layer::{Entry, EntryData, SourceFile};
use crate::spec::model::{
    CopySource, FileId, LayerEntry, LayerSpec, Mode, Owner, Spanned, TargetKind,
};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use miette::SourceSpan;
use petgraph::graph::NodeIndex;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One planned entry of a layer, and the workspace-relative source file it is read from.
#[derive(Debug, Clone)]
pub struct Planned {
    pub entry: Entry,
    pub source: Option<Source>,
}

/// A workspace file read into a layer.
#[derive(Debug, Clone)]
pub struct Source {
    /// Workspace-relative path, `/`-separated.
    pub rel: String,
}

/// A layer's entries, and the content hash of every file they read.
#[derive(Debug, Default)]
pub struct Expanded {
    /// Unsorted; see [`crate::layer::normalize`]. Every [`EntryData::File`]
    /// carries the blake3 recorded in `hashes` for its source.
    pub planned: Vec<Planned>,
    /// blake3 of each input file's content, by workspace-relative path.
    pub hashes: BTreeMap<String, Key>,
    /// Memo entries learnt on the way (files that had to be read).
    pub learnt: Vec<(String, MemoEntry)>,
    /// Every workspace-relative path the expansion `lstat`ed or listed, and
    /// whether it was followed if a link (a glob's base): what a snapshot of the
    /// build must watch ([`crate::snapshot`]).
    pub touched: Vec<(PathBuf, bool)>,
}

struct Ctx<'a> {
    root: &'a Path,
    /// The canonical root, opened: every file and directory is opened beneath it.
    ws: &'a Arc<Root>,
    graph: &'a Graph,
    memo: &'a FileMemo,
}

/// Expands the layer target `node` into its entries and hashes every file
/// they read, through `memo` (a file whose stat data matches its memo entry is
/// not read). Every problem is a diagnostic pointing at the spec entry that
/// caused it. `canonical_root` is the workspace root with symlinks resolved
/// (computed once per build): every source is opened beneath it, so that
/// nothing outside the workspace is read.
pub fn expand_layer(
    root: &Path,
    canonical_root: &Path,
    graph: &Graph,
    node: NodeIndex,
    memo: &FileMemo,
) -> Result<Expanded, Diag> {
    let ws = Arc::new(Root::open(canonical_root).map_err(|e| {
        Diag::new(
            Code::SourceMissing,
            format!(
                "cannot open the workspace root `{}`: {e}",
                canonical_root.display()
            ),
        )
    })?);
    let ctx = Ctx {
        root,
        ws: &ws,
        graph,
        memo,
    };
    let mut out = Expanded::default();
    expand_into(&ctx, node, &mut out)?;
    Ok(out)
}

impl Expanded {
    /// The blake3 of the file `name` of `dir` (workspace-relative `ws_rel`),
    /// whose `lstat` gave `stat`: from this expansion, else from the memo
    /// (keyed by `memo_path`), else read.
    fn hash(
        &mut self,
        memo: &FileMemo,
        ws_rel: &str,
        memo_path: &Path,
        dir: &Dir,
        name: &OsStr,
        stat: &StatKey,
    ) -> Result<Key, Diag> {
        if let Some(k) = self.hashes.get(ws_rel) {
            return Ok(*k);
        }
        // The memo is keyed by absolute path: two checkouts may share one cache.
        let memo_path = memo_path.to_string_lossy();
        let key = match memo.lookup(&memo_path, stat) {
            Some(k) => k,
            None => {
                let k = hash_source(dir, name, stat).map_err(|e| {
                    Diag::new(Code::SourceMissing, format!("cannot read `{ws_rel}`: {e}"))
                })?;
                self.learnt.push((
                    memo_path.into_owned(),
                    MemoEntry {
                        stat: *stat,
                        hash: k,
                    },
                ));
                k
            }
        };
        self.hashes.insert(ws_rel.to_string(), key);
        Ok(key)
    }
}

/// blake3 of the regular file `name` of `dir`, which must be the very file
/// `stat` describes (same inode, same size): it is opened without following a
/// symlink or blocking on a FIFO ([`Dir::open_regular`]), and anything else
/// there now (a link, a FIFO, a device, another file moved in, a file that
/// grew or shrank) is an error rather than a hash of something else.
fn hash_source(dir: &Dir, name: &OsStr, stat: &StatKey) -> std::io::Result<Key> {
    let changed =
        |what: &str| std::io::Error::other(format!("it changed while being hashed: {what}"));
    let o = dir
        .open_regular(name)
        .map_err(|e| match input::input_error(&e) {
            Some(InputError::Symlink) => changed("it is now a symbolic link"),
            Some(InputError::NotRegular(_)) => changed("it is no longer a regular file"),
            _ => e,
        })?;
    if o.meta.ino() != stat.inode {
        return Err(changed("another file is there now"));
    }
    let h = input::hash_all(o.file, Limit::Exactly(stat.size), Algos::Blake3).map_err(|e| {
        match input::input_error(&e) {
            Some(InputError::TooLong { .. } | InputError::TooShort { .. }) => {
                changed(&e.to_string())
            }
            _ => e,
        }
    })?;
    Ok(h.blake3.expect("blake3 was asked for"))
}

fn expand_into(ctx: &Ctx<'_>, node: NodeIndex, out: &mut Expanded) -> Result<(), Diag> {
    let n = ctx.graph.node(node);
    let TargetKind::Layer(spec) = &n.target.kind else {
        return Ok(());
    };
    let package = n.label.package();
    for e in &spec.entries {
        expand_entry(ctx, package, n.file, spec, e, out)?;
    }
    Ok(())
}

fn owner_of(spec: &LayerSpec, own: &Option<Spanned<Owner>>) -> Owner {
    own.as_ref()
        .or(spec.owner.as_ref())
        .map_or(Owner::ROOT, |o| o.value)
}

fn mode_of(m: &Option<Spanned<Mode>>) -> Option<u32> {
    m.as_ref().map(|m| m.value.0)
}

/// In-image path without the leading `/`, with `//` and a trailing `/` removed.
pub fn image_path(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Joins two `/`-separated relative paths, either of which may be empty
/// (in-image paths under a directory, package-relative paths under a package).
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else if name.is_empty() {
        dir.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The workspace-relative path of `rel`, a source path of `package` as the
/// parser normalized it (`..` only at its start, never above the workspace;
/// `.` for the package directory): `..` and `.` are resolved by name, so
/// `services/api` + `../shared/certs` is `shared/certs`. What a path names is
/// decided by its words, never by where a symlink on the way happens to point
/// (that is [`Root::locate`]'s business). Empty for the workspace root.
fn ws_path(package: &str, rel: &str) -> String {
    lexical_join(package, rel)
}

/// `base` and then `rel` (both `/`-separated), joined by name: `.` and empty
/// components dropped, `..` removing the component before it (never going
/// above the start). Nothing on disk is looked at.
pub(crate) fn lexical_join(base: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = base.split('/').filter(|c| !c.is_empty()).collect();
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn entry(path: String, data: EntryData, mode: u32, owner: Owner) -> Entry {
    Entry {
        path,
        data,
        mode,
        uid: owner.uid,
        gid: owner.gid,
    }
}

fn expand_entry(
    ctx: &Ctx<'_>,
    package: &str,
    file: FileId,
    spec: &LayerSpec,
    e: &LayerEntry,
    out: &mut Expanded,
) -> Result<(), Diag> {
    let (path, data, mode, own) = match e {
        LayerEntry::Text {
            path,
            content,
            mode,
            owner,
            ..
        } => (
            path,
            EntryData::Bytes(content.clone().into_bytes()),
            mode_of(mode).unwrap_or(0o644),
            owner,
        ),
        LayerEntry::Dir {
            path, mode, owner, ..
        } => (path, EntryData::Dir, mode_of(mode).unwrap_or(0o755), owner),
        LayerEntry::Symlink {
            path,
            target,
            owner,
            ..
        } => (path, EntryData::Symlink(target.value.clone()), 0o777, owner),
        LayerEntry::Copy {
            src,
            to,
            mode,
            owner,
            exclude,
            ..
        } => {
            let into_dir = to.value.ends_with('/');
            let dest = image_path(&to.value);
            let mut opts = CopyOpts {
                package,
                mode: mode_of(mode),
                owner: owner_of(spec, owner),
                excludes: Excludes::new(exclude, file)?,
                memo: ctx.memo,
            };
            match &src.value {
                CopySource::Target(label) => {
                    let dep = ctx.graph.get(label).ok_or_else(|| {
                        Diag::new(Code::UnknownLabel, format!("unknown label `{label}`"))
                            .at(file, src.span)
                    })?;
                    if let TargetKind::HttpFile(http) = &ctx.graph.node(dep).target.kind {
                        let path = if into_dir {
                            join(&dest, label.name())
                        } else {
                            dest
                        };
                        let default = if http.executable { 0o755 } else { 0o644 };
                        out.planned.push(Planned {
                            entry: entry(
                                path,
                                EntryData::Blob(http.sha256.value),
                                opts.mode.unwrap_or(default),
                                opts.owner,
                            ),
                            source: None,
                        });
                        return Ok(());
                    }
                    let start = out.planned.len();
                    expand_into(ctx, dep, out)?;
                    // The entries keep what their own layer gave them, except
                    // what this `copy` sets: `mode` for files, `owner` for all.
                    let own = owner.as_ref().map(|o| o.value);
                    for p in &mut out.planned[start..] {
                        p.entry.path = join(&dest, &p.entry.path);
                        if let (
                            Some(m),
                            EntryData::File { .. } | EntryData::Bytes(_) | EntryData::Blob(_),
                        ) = (opts.mode, &p.entry.data)
                        {
                            p.entry.mode = m;
                        }
                        if let Some(o) = own {
                            p.entry.uid = o.uid;
                            p.entry.gid = o.gid;
                        }
                    }
                }
                CopySource::Path(rel) => {
                    let ws_rel = ws_path(package, rel);
                    let (found, stat) = checked_source(ctx, &ws_rel, file, src.span)?;
                    let name = ws_rel.rsplit('/').next().unwrap_or(&ws_rel);
                    // `copy "." to="/app/"` copies the package directory's
                    // contents into `/app/`, as `cp -r . /app/` and a
                    // Dockerfile's `COPY . /app/` do.
                    let (target, pkg_rel) = if rel == "." {
                        (dest, "")
                    } else if into_dir {
                        (join(&dest, name), rel.as_str())
                    } else {
                        (dest, rel.as_str())
                    };
                    let at = At {
                        ws_rel: &ws_rel,
                        pkg_rel,
                        dest: &target,
                    };
                    match &found.name {
                        Some(name) => copy_path(ctx, &found.dir, name, stat, at, &mut opts, out),
                        // The path led to a directory it walked into (the root).
                        None => copy_dir(ctx, found.dir, at, &mut opts, out),
                    }
                    .map_err(|d| d.at(file, src.span))?;
                }
                CopySource::Glob(pattern) => {
                    copy_glob(ctx, pattern, &dest, &mut opts, out)
                        .map_err(|d| d.at(file, src.span))?;
                }
            }
            let dir = match &src.value {
                CopySource::Path(rel) => rel.as_str(),
                CopySource::Glob(pattern) => glob_base(pattern),
                CopySource::Target(_) => "",
            };
            return opts.excludes.all_used(dir);
        }
    };
    out.planned.push(Planned {
        entry: entry(image_path(&path.value), data, mode, owner_of(spec, own)),
        source: None,
    });
    Ok(())
}

/// The `exclude` patterns of one `copy`, and which of them excluded something:
/// a pattern that excludes nothing is an error (most often it was written
/// relative to the copied directory instead of the package, and so silently
/// let everything through).
struct Excludes<'a> {
    set: GlobSet,
    patterns: &'a [Spanned<String>],
    file: FileId,
    used: Vec<bool>,
    hits: Vec<usize>,
}

impl<'a> Excludes<'a> {
    fn new(patterns: &'a [Spanned<String>], file: FileId) -> Result<Self, Diag> {
        let mut b = GlobSetBuilder::new();
        for x in patterns {
            b.add(glob(&x.value).map_err(|d| d.at(file, x.span))?);
        }
        let set = b
            .build()
            .map_err(|e| Diag::new(Code::InvalidValue, format!("bad exclude pattern: {e}")))?;
        Ok(Excludes {
            set,
            patterns,
            file,
            used: vec![false; patterns.len()],
            hits: Vec::new(),
        })
    }

    /// Whether `pkg_rel` (package-relative, as its bytes) is excluded; records
    /// which patterns matched.
    fn excludes(&mut self, pkg_rel: &Path) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        self.set.matches_into(pkg_rel, &mut self.hits);
        for &i in &self.hits {
            self.used[i] = true;
        }
        !self.hits.is_empty()
    }

    /// An error at the first pattern that excluded nothing. `dir` is the
    /// package-relative directory the `copy` reads (its source, or a glob's
    /// literal directory), to suggest the pattern written relative to it.
    fn all_used(&self, dir: &str) -> Result<(), Diag> {
        let Some(i) = self.used.iter().position(|u| !u) else {
            return Ok(());
        };
        let x = &self.patterns[i];
        let help = if dir.is_empty() || dir == "." || x.value.starts_with(&format!("{dir}/")) {
            "exclude patterns are relative to the directory of the BUILD.kdl, like the \
             source, and must match something the `copy` would copy"
                .to_string()
        } else {
            format!(
                "exclude patterns are relative to the directory of the BUILD.kdl, like the \
                 source: did you mean `{dir}/{}`?",
                x.value
            )
        };
        Err(Diag::new(
            Code::SourceMissing,
            format!(
                "exclude pattern `{}` matches nothing that this `copy` copies",
                x.value
            ),
        )
        .at(self.file, x.span)
        .label("excludes nothing")
        .help(help))
    }
}

/// A source or `exclude` glob as expansion matches it (also used by
/// [`crate::affected`], which must decide exactly as expansion does).
pub(crate) fn glob(pattern: &str) -> Result<Glob, Diag> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Diag::new(Code::InvalidValue, format!("bad glob `{pattern}`: {e}")))
}

/// Finds a workspace-relative source beneath the workspace root, refusing one
/// that does not exist or whose parent directories lead (through symlinks)
/// outside the workspace. The source itself is not followed: a symlink is
/// copied as one. Returns where it is and its `lstat`.
fn checked_source(
    ctx: &Ctx<'_>,
    ws_rel: &str,
    file: FileId,
    span: SourceSpan,
) -> Result<(Located, Stat), Diag> {
    let missing = || {
        Diag::new(
            Code::SourceMissing,
            format!("source `{ws_rel}` does not exist"),
        )
        .at(file, span)
        .label("not found")
        .help("source paths are relative to the directory of the BUILD.kdl")
    };
    let found = ctx
        .ws
        .locate(Path::new(ws_rel), false)
        .and_then(|l| l.lstat().map(|s| (l, s)));
    found.map_err(|e| match input::input_error(&e) {
        Some(InputError::Escapes) => Diag::new(
            Code::PathEscapes,
            format!("source `{ws_rel}` resolves outside the workspace through a symlink"),
        )
        .at(file, span),
        _ if is_missing(&e) => missing(),
        _ => Diag::new(Code::SourceMissing, format!("cannot read `{ws_rel}`: {e}")).at(file, span),
    })
}

/// Whether an error says a path is not there (a component missing, or not a
/// directory).
fn is_missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

fn default_file_mode(stat: &Stat) -> u32 {
    if stat.mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// What one `copy` entry applies to every file it copies.
struct CopyOpts<'a> {
    /// The package the source paths are relative to.
    package: &'a str,
    /// The entry's `mode`, for files; `None`: from the executable bit.
    mode: Option<u32>,
    owner: Owner,
    /// `exclude` globs, matched against package-relative paths.
    excludes: Excludes<'a>,
    memo: &'a FileMemo,
}

/// The error for a name found in the directory `dir_ws_rel` that is not
/// UTF-8. imgc's paths (in keys, tar headers, listings) are UTF-8, and a lossy
/// conversion would silently copy a file under another name (or, joined back,
/// not find it at all), so such a name is refused if it would be copied.
fn not_utf8(name: &OsStr, dir_ws_rel: &str) -> Diag {
    Diag::new(
        Code::SourceMissing,
        format!(
            "`{}` holds a file name that is not valid UTF-8: `{}`",
            if dir_ws_rel.is_empty() {
                "."
            } else {
                dir_ws_rel
            },
            name.as_bytes().escape_ascii()
        ),
    )
    .help("imgc stores paths as UTF-8: rename the file, or leave it out with `exclude`")
}

/// [`not_utf8`] for the first component of `rel` (below `dir_ws_rel`) that
/// is not UTF-8.
fn not_utf8_below(dir_ws_rel: &str, rel: &Path) -> Diag {
    let mut dir = dir_ws_rel.to_string();
    for c in rel.iter() {
        match c.to_str() {
            Some(s) => dir = join(&dir, s),
            None => return not_utf8(c, &dir),
        }
    }
    not_utf8(rel.as_os_str(), dir_ws_rel)
}

/// Where one entry being copied is, and goes.
#[derive(Clone, Copy)]
struct At<'p> {
    /// Workspace-relative path (file hashes, memo, messages).
    ws_rel: &'p str,
    /// Package-relative path: what `exclude` patterns match.
    pkg_rel: &'p str,
    /// In-image path.
    dest: &'p str,
}

/// Copies the entry `name` of `dir` (a file, a symlink, or a directory,
/// recursively), whose `lstat` is `stat`.
fn copy_path(
    ctx: &Ctx<'_>,
    dir: &Dir,
    name: &OsStr,
    stat: Stat,
    at: At<'_>,
    opts: &mut CopyOpts<'_>,
    out: &mut Expanded,
) -> Result<(), Diag> {
    let (ws_rel, dest, owner) = (at.ws_rel, at.dest, opts.owner);
    out.touched.push((PathBuf::from(ws_rel), false));
    if stat.is_symlink() {
        let target = dir.read_link(name).map_err(|e| {
            Diag::new(
                Code::SourceMissing,
                format!("cannot read the symlink `{ws_rel}`: {e}"),
            )
        })?;
        let target = target.into_os_string().into_string().map_err(|t| {
            Diag::new(
                Code::SourceMissing,
                format!(
                    "the symlink `{ws_rel}` points to a path that is not valid UTF-8: `{}`",
                    t.as_bytes().escape_ascii()
                ),
            )
            .help("imgc stores paths as UTF-8: change the link, or leave it out with `exclude`")
        })?;
        out.planned.push(Planned {
            entry: entry(dest.to_string(), EntryData::Symlink(target), 0o777, owner),
            source: None,
        });
    } else if stat.is_file() {
        let memo_path = ctx.root.join(ws_rel);
        let blake3 = out.hash(opts.memo, ws_rel, &memo_path, dir, name, &stat.key)?;
        out.planned.push(Planned {
            entry: entry(
                dest.to_string(),
                EntryData::File {
                    source: SourceFile {
                        root: ctx.ws.clone(),
                        rel: PathBuf::from(ws_rel),
                    },
                    size: stat.len(),
                    blake3,
                },
                opts.mode.unwrap_or_else(|| default_file_mode(&stat)),
                owner,
            ),
            source: Some(Source {
                rel: ws_rel.to_string(),
            }),
        });
    } else if stat.is_dir() {
        // Opened without following a link: a directory swapped for one since
        // its `lstat` is an error, not a way out.
        let sub = dir
            .open_dir(name)
            .map_err(|e| Diag::new(Code::SourceMissing, format!("cannot list `{ws_rel}`: {e}")))?;
        copy_dir(ctx, sub, at, opts, out)?;
    } else {
        // A FIFO, socket or device: never opened (a FIFO would block, a
        // device would be read without end).
        return Err(Diag::new(
            Code::SourceMissing,
            format!("source `{ws_rel}` is not a regular file, directory or symlink"),
        ));
    }
    Ok(())
}

/// Copies the open directory `dir` and everything below it, listed and
/// opened through its descriptor.
fn copy_dir(
    ctx: &Ctx<'_>,
    dir: Dir,
    at: At<'_>,
    opts: &mut CopyOpts<'_>,
    out: &mut Expanded,
) -> Result<(), Diag> {
    let ws_rel = at.ws_rel;
    out.touched.push((PathBuf::from(ws_rel), false));
    out.planned.push(Planned {
        entry: entry(at.dest.to_string(), EntryData::Dir, 0o755, opts.owner),
        source: None,
    });
    let cannot_list =
        |e: std::io::Error| Diag::new(Code::SourceMissing, format!("cannot list `{ws_rel}`: {e}"));
    for name in dir.names().map_err(cannot_list)? {
        let child_pkg = Path::new(at.pkg_rel).join(&name);
        if opts.excludes.excludes(&child_pkg) {
            continue;
        }
        let utf8 = name.to_str().ok_or_else(|| not_utf8(&name, ws_rel))?;
        let (child_ws, child_pkg, child_dest) = (
            join(ws_rel, utf8),
            join(at.pkg_rel, utf8),
            join(at.dest, utf8),
        );
        let stat = dir.lstat(&name).map_err(|e| {
            Diag::new(
                Code::SourceMissing,
                format!("cannot read `{child_ws}`: {e}"),
            )
        })?;
        let child = At {
            ws_rel: &child_ws,
            pkg_rel: &child_pkg,
            dest: &child_dest,
        };
        copy_path(ctx, &dir, &name, stat, child, opts, out)?;
    }
    Ok(())
}

/// The literal directory of a glob: its components before the first one
/// holding a metacharacter (empty for the package directory).
pub(crate) fn glob_base(pattern: &str) -> &str {
    let mut end = 0;
    for c in pattern.split('/') {
        if c.contains(['*', '?', '[', '{']) {
            break;
        }
        end += c.len() + 1;
    }
    &pattern[..end.saturating_sub(1).min(pattern.len())]
}

fn copy_glob(
    ctx: &Ctx<'_>,
    pattern: &str,
    dest: &str,
    opts: &mut CopyOpts<'_>,
    out: &mut Expanded,
) -> Result<(), Diag> {
    let package = opts.package;
    let matcher = glob(pattern)?.compile_matcher();
    let base = glob_base(pattern);
    let base_ws = ws_path(package, base);
    out.touched.push((PathBuf::from(&base_ws), true));
    // The base directory is followed if it is a symlink (and no link below
    // it): it is confined like a source's parents.
    let dir = match ctx.ws.dir(Path::new(&base_ws)) {
        Ok(dir) => Some(dir),
        Err(e) if input::input_error(&e) == Some(&InputError::Escapes) => {
            return Err(Diag::new(
                Code::PathEscapes,
                format!(
                    "glob `{pattern}` searches `{base_ws}`, which resolves outside the workspace through a symlink"
                ),
            ));
        }
        Err(e) if is_missing(&e) => None,
        Err(e) => {
            return Err(Diag::new(
                Code::SourceMissing,
                format!("cannot read `{base_ws}`: {e}"),
            ));
        }
    };
    let mut walk = GlobWalk {
        ctx,
        matcher: &matcher,
        base,
        base_ws: &base_ws,
        dest,
        matched: 0,
    };
    if let Some(dir) = dir {
        walk.dir(&dir, Path::new(""), opts, out)?;
    }
    if walk.matched == 0 {
        return Err(Diag::new(
            Code::SourceMissing,
            format!("glob `{pattern}` matches no file"),
        )
        .label("no match")
        .help(
            "globs are relative to the directory of the BUILD.kdl; `*` stops at `/`, `**` does not",
        ));
    }
    Ok(())
}

/// The walk below a glob's literal directory: every directory is listed
/// through its descriptor, in name order, and entered without following a
/// link, so everything it finds is inside; each file or symlink the glob
/// matches (and no `exclude` pattern does) is copied.
struct GlobWalk<'a> {
    ctx: &'a Ctx<'a>,
    matcher: &'a globset::GlobMatcher,
    /// The literal directory, package-relative and workspace-relative.
    base: &'a str,
    base_ws: &'a str,
    dest: &'a str,
    matched: usize,
}

impl GlobWalk<'_> {
    /// Walks `dir`, at `rel` below the base.
    fn dir(
        &mut self,
        dir: &Dir,
        rel: &Path,
        opts: &mut CopyOpts<'_>,
        out: &mut Expanded,
    ) -> Result<(), Diag> {
        // An unreadable directory under the glob is an error, not fewer files.
        let base_ws = self.base_ws;
        let below = |e: std::io::Error| {
            Diag::new(
                Code::SourceMissing,
                format!("cannot read below `{base_ws}`: {e}"),
            )
        };
        for name in dir.names().map_err(below)? {
            let rel_to_base = rel.join(&name);
            let stat = dir.lstat(&name).map_err(below)?;
            if stat.is_dir() {
                out.touched
                    .push((Path::new(self.base_ws).join(&rel_to_base), false));
                let sub = dir.open_dir(&name).map_err(below)?;
                self.dir(&sub, &rel_to_base, opts, out)?;
                continue;
            }
            // Matched as bytes: a name that is not UTF-8 is refused only if it
            // would be copied.
            let pkg_rel_path = Path::new(self.base).join(&rel_to_base);
            if !self.matcher.is_match(&pkg_rel_path) || opts.excludes.excludes(&pkg_rel_path) {
                continue;
            }
            let rel_to_base = rel_to_base
                .to_str()
                .ok_or_else(|| not_utf8_below(self.base_ws, &rel_to_base))?;
            self.matched += 1;
            let (ws_rel, pkg_rel, dest) = (
                join(self.base_ws, rel_to_base),
                join(self.base, rel_to_base),
                join(self.dest, rel_to_base),
            );
            let at = At {
                ws_rel: &ws_rel,
                pkg_rel: &pkg_rel,
                dest: &dest,
            };
            copy_path(self.ctx, dir, &name, stat, at, opts, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_paths_resolve_dots_by_name() {
        assert_eq!(
            ws_path("services/api", "bin/server"),
            "services/api/bin/server"
        );
        assert_eq!(
            ws_path("services/api", "../shared/certs"),
            "services/shared/certs"
        );
        assert_eq!(ws_path("services/api", "../../top"), "top");
        assert_eq!(ws_path("services/api", "."), "services/api");
        assert_eq!(ws_path("", "a/b"), "a/b");
        assert_eq!(ws_path("", "."), "");
    }

    /// The hash taken for a key is of the very file found: never through a
    /// link that replaced it, never of a FIFO (which would block) or of a
    /// file moved in or resized since it was found.
    #[test]
    fn sources_are_hashed_only_as_found() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().canonicalize().unwrap();
        let root = Root::open(&path).unwrap();
        let dir = root.dir(Path::new("")).unwrap();
        let f = path.join("f");
        std::fs::write(&f, b"content").unwrap();
        let stat = |name: &str| dir.lstat(OsStr::new(name)).unwrap().key;
        let found = stat("f");
        let hash = |name: &str, stat: &StatKey| hash_source(&dir, OsStr::new(name), stat);
        assert_eq!(hash("f", &found).unwrap(), Key::of_bytes(b"content"));
        // grown since it was found
        std::fs::write(&f, b"content!").unwrap();
        let err = hash("f", &found).unwrap_err().to_string();
        assert!(
            err.contains("changed while being hashed: it holds more than the expected 7 bytes"),
            "{err}"
        );
        // shrunk
        std::fs::write(&f, b"conten").unwrap();
        let err = hash("f", &found).unwrap_err().to_string();
        assert!(
            err.contains("it ended after 6 of the expected 7 bytes"),
            "{err}"
        );
        // another file moved in
        let g = path.join("g");
        std::fs::write(&g, b"content").unwrap();
        std::fs::rename(&g, &f).unwrap();
        let err = hash("f", &found).unwrap_err().to_string();
        assert!(err.contains("another file is there now"), "{err}");
        // a symlink to it, or to a device
        std::os::unix::fs::symlink("/dev/zero", path.join("l")).unwrap();
        let err = hash("l", &found).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // a FIFO: refused without being opened
        let c = std::ffi::CString::new(path.join("p").to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = hash("p", &stat("p")).unwrap_err().to_string();
        assert!(err.contains("no longer a regular file"), "{err}");
    }

    #[test]
    fn glob_base_is_the_literal_directory() {
        assert_eq!(glob_base("*.txt"), "");
        assert_eq!(glob_base("conf/*.toml"), "conf");
        assert_eq!(glob_base("a/b/**/*.html"), "a/b");
        assert_eq!(glob_base("../shared/{a,b}/x"), "../shared");
        assert_eq!(glob_base("a[0-9]/x"), "");
    }
}
