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
//! layer's entries are not).
//!
//! # Confinement
//!
//! The workspace may be hostile (a cloned repository can ship any symlink), so
//! nothing outside it is ever read:
//!
//! - A source path is resolved by its words ([`ws_path`]: `..` and `.` by name),
//!   then its parent directories are checked: if one of them is a symlink, the
//!   resolved parent must still be inside the workspace ([`confine`]). The
//!   source itself is never followed: a symlink is copied as a symlink.
//! - A glob's literal directory (`ext` in `ext/*.txt`) is walked, so it is
//!   checked like the parents, itself included. The walk follows no link below
//!   it, so everything it finds is inside.
//! - A copied directory is listed with `lstat`: a symlink found in it (to a
//!   directory outside, to `/dev/zero`) is copied as a symlink, never followed;
//!   a FIFO, socket or device is refused, never opened.
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
//! blake3 of the content does. A file that is read is opened without following
//! a link or blocking on a FIFO, and must be the regular file that was found
//! (same inode, same size), so a key never describes something swapped in.
//!
//! The hash travels with the entry ([`EntryData::File`]): the layer writer
//! hashes the file again as it streams it into the tar and fails if the bytes
//! differ, so a file rewritten between keying and writing (even to the same
//! size and mtime) fails the layer instead of caching bytes its key does not
//! describe. [`hash_files`] is the same protocol for inputs that are not layer
//! entries (imports).

use crate::cache::{FileMemo, MemoEntry, StatKey};
use crate::diag::{Code, Diag};
use crate::graph::Graph;
use crate::hash::Key;
use crate::layer::{Entry, EntryData};
use crate::spec::model::{
    CopySource, FileId, LayerEntry, LayerSpec, Mode, Owner, Spanned, TargetKind,
};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use miette::SourceSpan;
use petgraph::graph::NodeIndex;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
}

struct Ctx<'a> {
    root: &'a Path,
    canonical_root: &'a Path,
    graph: &'a Graph,
    memo: &'a FileMemo,
}

/// Expands the layer target `node` into its entries and hashes every file
/// they read, through `memo` (a file whose stat data matches its memo entry is
/// not read). Every problem is a diagnostic pointing at the spec entry that
/// caused it. `canonical_root` is the workspace root with symlinks resolved
/// (computed once per build), to refuse sources reached through a symlink that
/// leaves the workspace.
pub fn expand_layer(
    root: &Path,
    canonical_root: &Path,
    graph: &Graph,
    node: NodeIndex,
    memo: &FileMemo,
) -> Result<Expanded, Diag> {
    let ctx = Ctx {
        root,
        canonical_root,
        graph,
        memo,
    };
    let mut out = Expanded::default();
    expand_into(&ctx, node, &mut out)?;
    Ok(out)
}

impl Expanded {
    /// The blake3 of the file at `abs` (workspace-relative `ws_rel`), whose
    /// `lstat` gave `meta`: from this expansion, else from the memo, else read.
    fn hash(
        &mut self,
        memo: &FileMemo,
        ws_rel: &str,
        abs: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<Key, Diag> {
        if let Some(k) = self.hashes.get(ws_rel) {
            return Ok(*k);
        }
        let stat = StatKey::from_metadata(meta);
        // The memo is keyed by absolute path: two checkouts may share one cache.
        let memo_path = abs.to_string_lossy();
        let key = match memo.lookup(&memo_path, &stat) {
            Some(k) => k,
            None => {
                let k = hash_source(abs, &stat).map_err(|e| {
                    Diag::new(Code::SourceMissing, format!("cannot read `{ws_rel}`: {e}"))
                })?;
                self.learnt
                    .push((memo_path.into_owned(), MemoEntry { stat, hash: k }));
                k
            }
        };
        self.hashes.insert(ws_rel.to_string(), key);
        Ok(key)
    }
}

/// blake3 of the regular file at `abs`, which must be the very file `stat`
/// describes (same inode, same size): it is opened without following a
/// symlink (`O_NOFOLLOW`) or blocking on a FIFO (`O_NONBLOCK`), and anything
/// else there now (a link, a FIFO, a device, another file moved in, a file
/// that grew or shrank) is an error rather than a hash of something else.
fn hash_source(abs: &Path, stat: &StatKey) -> std::io::Result<Key> {
    use std::os::unix::fs::OpenOptionsExt;
    let changed =
        |what: &str| std::io::Error::other(format!("it changed while being hashed: {what}"));
    let mut f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(abs)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                changed("it is now a symbolic link")
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(changed("it is no longer a regular file"));
    }
    if meta.ino() != stat.inode {
        return Err(changed("another file is there now"));
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    if total != stat.size {
        return Err(changed(&format!(
            "{total} bytes read, {} expected",
            stat.size
        )));
    }
    Ok(Key(*h.finalize().as_bytes()))
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
/// (that is [`confine`]'s business). Empty for the workspace root.
fn ws_path(package: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = package.split('/').filter(|c| !c.is_empty()).collect();
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
                    let start = out.planned.len();
                    expand_into(ctx, dep, out)?;
                    // The entries keep what their own layer gave them, except
                    // what this `copy` sets: `mode` for files, `owner` for all.
                    let own = owner.as_ref().map(|o| o.value);
                    for p in &mut out.planned[start..] {
                        p.entry.path = join(&dest, &p.entry.path);
                        if let (Some(m), EntryData::File { .. } | EntryData::Bytes(_)) =
                            (opts.mode, &p.entry.data)
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
                    let abs = checked_source(ctx, &ws_rel, file, src.span)?;
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
                    copy_path(&abs, &ws_rel, pkg_rel, &target, &mut opts, out)
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

fn glob(pattern: &str) -> Result<Glob, Diag> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Diag::new(Code::InvalidValue, format!("bad glob `{pattern}`: {e}")))
}

/// The absolute path of a workspace-relative source, refusing one that does not
/// exist or whose parent directory resolves (through symlinks) outside the
/// workspace. The source itself is not followed: a symlink is copied as one.
fn checked_source(
    ctx: &Ctx<'_>,
    ws_rel: &str,
    file: FileId,
    span: SourceSpan,
) -> Result<PathBuf, Diag> {
    let abs = ctx.root.join(ws_rel);
    if std::fs::symlink_metadata(&abs).is_err() {
        return Err(Diag::new(
            Code::SourceMissing,
            format!("source `{ws_rel}` does not exist"),
        )
        .at(file, span)
        .label("not found")
        .help("source paths are relative to the directory of the BUILD.kdl"));
    }
    confine(ctx, ws_rel, false)
        .map_err(|()| {
            Diag::new(
                Code::PathEscapes,
                format!("source `{ws_rel}` resolves outside the workspace through a symlink"),
            )
            .at(file, span)
        })
        .map(|()| abs)
}

/// Checks that following `ws_rel`'s symlinks keeps inside the workspace: its
/// parent directories, and the path itself too if `follow_last` (a glob's base
/// directory, which is walked). Only a symlink on the way can lead outside, so
/// the components are `lstat`ed, and the path is resolved fully only if one of
/// them is a link (a link inside the workspace to elsewhere inside it is
/// fine). A path that does not resolve (missing, a dangling link) is not
/// refused here: whoever reads it finds it missing.
fn confine(ctx: &Ctx<'_>, ws_rel: &str, follow_last: bool) -> Result<(), ()> {
    let comps: Vec<&str> = ws_rel.split('/').filter(|c| !c.is_empty()).collect();
    let followed = if follow_last {
        &comps[..]
    } else {
        &comps[..comps.len().saturating_sub(1)]
    };
    let mut prefix = ctx.root.to_path_buf();
    let through_link = followed.iter().any(|c| {
        prefix.push(c);
        std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink())
    });
    if !through_link {
        return Ok(());
    }
    let mut resolved = ctx.root.to_path_buf();
    resolved.extend(followed);
    match resolved.canonicalize() {
        Ok(p) if p.starts_with(ctx.canonical_root) => Ok(()),
        Ok(_) => Err(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => Err(()),
    }
}

fn default_file_mode(meta: &std::fs::Metadata) -> u32 {
    if meta.mode() & 0o111 != 0 {
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

/// Copies the file, symlink or directory (recursively) at `abs`.
/// `ws_rel` is its workspace-relative path, `pkg_rel` its package-relative
/// one (what `exclude` patterns match), `dest` its in-image path.
fn copy_path(
    abs: &Path,
    ws_rel: &str,
    pkg_rel: &str,
    dest: &str,
    opts: &mut CopyOpts<'_>,
    out: &mut Expanded,
) -> Result<(), Diag> {
    let owner = opts.owner;
    let meta = std::fs::symlink_metadata(abs)
        .map_err(|e| Diag::new(Code::SourceMissing, format!("cannot read `{ws_rel}`: {e}")))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(abs).map_err(|e| {
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
    } else if ft.is_file() {
        let blake3 = out.hash(opts.memo, ws_rel, abs, &meta)?;
        out.planned.push(Planned {
            entry: entry(
                dest.to_string(),
                EntryData::File {
                    source: abs.to_path_buf(),
                    size: meta.len(),
                    blake3,
                },
                opts.mode.unwrap_or_else(|| default_file_mode(&meta)),
                owner,
            ),
            source: Some(Source {
                rel: ws_rel.to_string(),
            }),
        });
    } else if ft.is_dir() {
        out.planned.push(Planned {
            entry: entry(dest.to_string(), EntryData::Dir, 0o755, owner),
            source: None,
        });
        let cannot_list = |e: std::io::Error| {
            Diag::new(Code::SourceMissing, format!("cannot list `{ws_rel}`: {e}"))
        };
        let mut children = Vec::new();
        for child in std::fs::read_dir(abs).map_err(cannot_list)? {
            children.push(child.map_err(cannot_list)?.file_name());
        }
        children.sort();
        for name in children {
            let child_pkg = Path::new(pkg_rel).join(&name);
            if opts.excludes.excludes(&child_pkg) {
                continue;
            }
            let name = name.to_str().ok_or_else(|| not_utf8(&name, ws_rel))?;
            copy_path(
                &abs.join(name),
                &join(ws_rel, name),
                &join(pkg_rel, name),
                &join(dest, name),
                opts,
                out,
            )?;
        }
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

/// The literal directory of a glob: its components before the first one
/// holding a metacharacter (empty for the package directory).
fn glob_base(pattern: &str) -> &str {
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
    // The walk follows the base directory itself if it is a symlink (and no
    // link below it): the base is confined like a source's parents.
    confine(ctx, &base_ws, true).map_err(|()| {
        Diag::new(
            Code::PathEscapes,
            format!(
                "glob `{pattern}` searches `{base_ws}`, which resolves outside the workspace through a symlink"
            ),
        )
    })?;
    let base_abs = ctx.root.join(&base_ws);
    let mut matched = 0usize;
    if base_abs.is_dir() {
        let walker = walkdir::WalkDir::new(&base_abs)
            .follow_links(false)
            .sort_by_file_name();
        for item in walker {
            // An unreadable directory under the glob is an error, not fewer files.
            let item = item.map_err(|e| {
                Diag::new(
                    Code::SourceMissing,
                    format!("cannot read below `{base_ws}`: {e}"),
                )
            })?;
            if item.depth() == 0 || item.file_type().is_dir() {
                continue;
            }
            let Ok(rel_to_base) = item.path().strip_prefix(&base_abs) else {
                continue;
            };
            // Matched as bytes: a name that is not UTF-8 is refused only if it
            // would be copied.
            let pkg_rel_path = Path::new(base).join(rel_to_base);
            if !matcher.is_match(&pkg_rel_path) || opts.excludes.excludes(&pkg_rel_path) {
                continue;
            }
            let rel_to_base = rel_to_base
                .to_str()
                .ok_or_else(|| not_utf8_below(&base_ws, rel_to_base))?;
            matched += 1;
            copy_path(
                item.path(),
                &join(&base_ws, rel_to_base),
                &join(base, rel_to_base),
                &join(dest, rel_to_base),
                opts,
                out,
            )?;
        }
    }
    if matched == 0 {
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

/// blake3 of a file's contents, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<Key> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Key(*h.finalize().as_bytes()))
}

/// Content hashes of input files, and memo entries learnt on the way.
#[derive(Debug, Default)]
pub struct Hashed {
    pub hashes: BTreeMap<String, Key>,
    pub learnt: Vec<(String, MemoEntry)>,
}

/// Hashes every file `(workspace-relative path, absolute path, stat data if
/// already taken)`, through the memo. The stat is taken before the contents are
/// read, so an edit during the read shows up as a stat change next time.
/// (Whether a learnt entry is fresh enough to be trusted later is decided by
/// [`crate::cache::Cache::store_memo`].)
pub fn hash_files<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a Path, Option<StatKey>)>,
    memo: &FileMemo,
) -> std::io::Result<Hashed> {
    let mut out = Hashed::default();
    for (rel, abs, stat) in files {
        if out.hashes.contains_key(rel) {
            continue;
        }
        let stat =
            match stat {
                Some(s) => s,
                None => StatKey::from_metadata(&std::fs::symlink_metadata(abs).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot read `{rel}`: {e}"))
                })?),
            };
        // The memo is keyed by absolute path: two checkouts may share one cache.
        let memo_path = abs.to_string_lossy();
        let key = match memo.lookup(&memo_path, &stat) {
            Some(k) => k,
            None => {
                let k = hash_file(abs).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot read `{rel}`: {e}"))
                })?;
                out.learnt
                    .push((memo_path.into_owned(), MemoEntry { stat, hash: k }));
                k
            }
        };
        out.hashes.insert(rel.to_string(), key);
    }
    Ok(out)
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
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"content").unwrap();
        let stat = |p: &Path| StatKey::from_metadata(&std::fs::symlink_metadata(p).unwrap());
        let found = stat(&f);
        assert_eq!(hash_source(&f, &found).unwrap(), Key::of_bytes(b"content"));
        // grown since it was found
        std::fs::write(&f, b"content!").unwrap();
        let err = hash_source(&f, &found).unwrap_err().to_string();
        assert!(err.contains("8 bytes read, 7 expected"), "{err}");
        // another file moved in
        let g = dir.path().join("g");
        std::fs::write(&g, b"content").unwrap();
        std::fs::rename(&g, &f).unwrap();
        let err = hash_source(&f, &found).unwrap_err().to_string();
        assert!(err.contains("another file is there now"), "{err}");
        // a symlink to it, or to a device
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("/dev/zero", &l).unwrap();
        let err = hash_source(&l, &found).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // a FIFO: opened without blocking, then refused
        let p = dir.path().join("p");
        let c = std::ffi::CString::new(p.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = hash_source(&p, &stat(&p)).unwrap_err().to_string();
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
