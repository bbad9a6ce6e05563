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
//! Files get their mode from the spec, else 0755 if any executable bit is set and
//! 0644 otherwise, whatever the checkout's umask; directories get 0755; owner is
//! the entry's, else the layer's, else `0:0`. Symlinks are copied as symlinks and
//! never followed, and a source reached through a symlink that leaves the
//! workspace is refused.
//!
//! Hashing goes through the file-hash memo: a file whose stat data (size, mtime,
//! inode, mode) matches the memo is not re-read. The stat data itself never enters
//! a key; only the blake3 of the content does.

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
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One planned entry of a layer, and the workspace-relative source file it is read from.
#[derive(Debug, Clone)]
pub struct Planned {
    pub entry: Entry,
    pub source: Option<Source>,
}

/// A workspace file read into a layer, with the stat data taken when it was
/// found (so it is stat-ed once per build).
#[derive(Debug, Clone)]
pub struct Source {
    /// Workspace-relative path, `/`-separated.
    pub rel: String,
    pub stat: StatKey,
}

struct Ctx<'a> {
    root: &'a Path,
    canonical_root: &'a Path,
    graph: &'a Graph,
}

/// Expands the layer target `node` into its entries (unsorted; see
/// [`crate::layer::normalize`]). Every problem is a diagnostic pointing at the
/// spec entry that caused it. `canonical_root` is the workspace root with
/// symlinks resolved (computed once per build), to refuse sources reached
/// through a symlink that leaves the workspace.
pub fn expand_layer(
    root: &Path,
    canonical_root: &Path,
    graph: &Graph,
    node: NodeIndex,
) -> Result<Vec<Planned>, Diag> {
    let ctx = Ctx {
        root,
        canonical_root,
        graph,
    };
    let mut out = Vec::new();
    expand_into(&ctx, node, &mut out)?;
    Ok(out)
}

fn expand_into(ctx: &Ctx<'_>, node: NodeIndex, out: &mut Vec<Planned>) -> Result<(), Diag> {
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
    out: &mut Vec<Planned>,
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
            let opts = CopyOpts {
                package,
                mode: mode_of(mode),
                owner: owner_of(spec, owner),
                excludes: build_excludes(exclude, file)?,
            };
            match &src.value {
                CopySource::Target(label) => {
                    let dep = ctx.graph.get(label).ok_or_else(|| {
                        Diag::new(Code::UnknownLabel, format!("unknown label `{label}`"))
                            .at(file, src.span)
                    })?;
                    let mut inner = Vec::new();
                    expand_into(ctx, dep, &mut inner)?;
                    for mut p in inner {
                        p.entry.path = join(&dest, &p.entry.path);
                        out.push(p);
                    }
                }
                CopySource::Path(rel) => {
                    let ws_rel = join(package, rel);
                    let abs = checked_source(ctx, &ws_rel, file, src.span)?;
                    let name = rel.rsplit('/').next().unwrap_or(rel);
                    let target = if into_dir { join(&dest, name) } else { dest };
                    copy_path(&abs, &ws_rel, &target, &opts, out)
                        .map_err(|d| d.at(file, src.span))?;
                }
                CopySource::Glob(pattern) => {
                    copy_glob(ctx, pattern, &dest, &opts, out).map_err(|d| d.at(file, src.span))?;
                }
            }
            return Ok(());
        }
    };
    out.push(Planned {
        entry: entry(image_path(&path.value), data, mode, owner_of(spec, own)),
        source: None,
    });
    Ok(())
}

fn build_excludes(exclude: &[Spanned<String>], file: FileId) -> Result<GlobSet, Diag> {
    let mut b = GlobSetBuilder::new();
    for x in exclude {
        b.add(glob(&x.value).map_err(|d| d.at(file, x.span))?);
    }
    b.build()
        .map_err(|e| Diag::new(Code::InvalidValue, format!("bad exclude pattern: {e}")))
}

fn glob(pattern: &str) -> Result<Glob, Diag> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Diag::new(Code::InvalidValue, format!("bad glob `{pattern}`: {e}")))
}

/// The absolute path of a workspace-relative source, refusing one that does not
/// exist or whose parent directory resolves (through symlinks) outside the workspace.
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
    // Only a symlink on the way can lead outside: lstat the parents inside the
    // workspace, and resolve the path fully only if one of them is a link.
    let mut prefix = ctx.root.to_path_buf();
    let parents: Vec<&str> = ws_rel.split('/').collect();
    let through_link = parents[..parents.len().saturating_sub(1)].iter().any(|c| {
        prefix.push(c);
        std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink())
    });
    if !through_link {
        return Ok(abs);
    }
    let parent = abs.parent().unwrap_or(ctx.root);
    match parent.canonicalize() {
        Ok(p) if p.starts_with(ctx.canonical_root) => Ok(abs),
        _ => Err(Diag::new(
            Code::PathEscapes,
            format!("source `{ws_rel}` resolves outside the workspace through a symlink"),
        )
        .at(file, span)),
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
    excludes: GlobSet,
}

fn copy_path(
    abs: &Path,
    ws_rel: &str,
    dest: &str,
    opts: &CopyOpts<'_>,
    out: &mut Vec<Planned>,
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
        out.push(Planned {
            entry: entry(
                dest.to_string(),
                EntryData::Symlink(target.to_string_lossy().into_owned()),
                0o777,
                owner,
            ),
            source: None,
        });
    } else if ft.is_file() {
        out.push(Planned {
            entry: entry(
                dest.to_string(),
                EntryData::File {
                    source: abs.to_path_buf(),
                    size: meta.len(),
                },
                opts.mode.unwrap_or_else(|| default_file_mode(&meta)),
                owner,
            ),
            source: Some(Source {
                rel: ws_rel.to_string(),
                stat: StatKey::from_metadata(&meta),
            }),
        });
    } else if ft.is_dir() {
        out.push(Planned {
            entry: entry(dest.to_string(), EntryData::Dir, 0o755, owner),
            source: None,
        });
        let mut children: Vec<_> = std::fs::read_dir(abs)
            .map_err(|e| Diag::new(Code::SourceMissing, format!("cannot list `{ws_rel}`: {e}")))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        children.sort();
        for name in children {
            let name = name.to_string_lossy().into_owned();
            let child_rel = format!("{ws_rel}/{name}");
            let pkg_rel = child_rel
                .strip_prefix(opts.package)
                .unwrap_or(&child_rel)
                .trim_start_matches('/');
            if opts.excludes.is_match(pkg_rel) {
                continue;
            }
            copy_path(&abs.join(&name), &child_rel, &join(dest, &name), opts, out)?;
        }
    } else {
        return Err(Diag::new(
            Code::SourceMissing,
            format!("source `{ws_rel}` is not a regular file, directory or symlink"),
        ));
    }
    Ok(())
}

fn copy_glob(
    ctx: &Ctx<'_>,
    pattern: &str,
    dest: &str,
    opts: &CopyOpts<'_>,
    out: &mut Vec<Planned>,
) -> Result<(), Diag> {
    let package = opts.package;
    let matcher = glob(pattern)?.compile_matcher();
    // The literal directory before the first component holding a metacharacter.
    let base: Vec<&str> = pattern
        .split('/')
        .take_while(|c| !c.contains(['*', '?', '[', '{']))
        .collect();
    let base = base.join("/");
    let base_abs = ctx.root.join(join(package, &base));
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
                    format!("cannot read below `{}`: {e}", join(package, &base)),
                )
            })?;
            if item.depth() == 0 || item.file_type().is_dir() {
                continue;
            }
            let Ok(rel_to_base) = item.path().strip_prefix(&base_abs) else {
                continue;
            };
            let rel_to_base = rel_to_base.to_string_lossy().replace('\\', "/");
            let pkg_rel = join(&base, &rel_to_base);
            if !matcher.is_match(&pkg_rel) || opts.excludes.is_match(&pkg_rel) {
                continue;
            }
            matched += 1;
            let ws_rel = join(package, &pkg_rel);
            copy_path(item.path(), &ws_rel, &join(dest, &rel_to_base), opts, out)?;
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
