//! Workspace discovery and loading.
//!
//! The workspace root is the nearest directory at or above the starting point that
//! holds `imgc.kdl` (as git looks for `.git`). Every directory below it holding a
//! `BUILD.kdl` is a package; the output directory (once imgc made it: see
//! [`crate::output`]), `.git` and hidden directories are not searched. Packages are
//! returned sorted by path, so everything that follows is deterministic whatever
//! order the filesystem lists entries in.
//!
//! This module reads files; it hands their text to the pure [`crate::spec`] parser
//! and collects every diagnostic of every file. It never reads outside the
//! workspace: linked directories are not followed, and a `BUILD.kdl` that is a
//! symbolic link is read only if it resolves to a regular file inside the
//! workspace (else a diagnostic names it). Every spec file (`imgc.kdl` too) is
//! opened through [`Root`], beneath the opened workspace root: a link is followed
//! only inside the workspace at the moment of opening, so a link swapped after
//! discovery checked it cannot lead the read out. Spec files are opened without
//! blocking and must be regular files of at most [`MAX_SPEC_FILE_BYTES`]. Parsing runs on a
//! pool of threads with large stacks, because the KDL parser recurses (see
//! [`crate::spec::limits`]).
//!
//! An `output-dir` that is, holds or is inside a package is refused here (the
//! parser refuses the root, `.git`, absolute and escaping ones): imgc would write
//! into a directory of sources, and its packages would drop out of the graph.
//!
//! # The parse cache
//!
//! Parsing KDL is the bulk of loading a large workspace, so results are remembered in
//! the local [`Cache`], keyed by [`parse_key`]: the parser format version
//! ([`crate::spec::PARSE_FORMAT_VERSION`]), imgc's version and a fingerprint of the
//! parser's own sources (from `build.rs`: an imgc built from changed parser code
//! never reuses an old parse), the file kind, the
//! package path and the exact text. The value is the model serialized as JSON (spans
//! included: they stay valid because the text is identical by construction; nothing in
//! a [`Target`] or [`WorkspaceConfig`] holds a [`crate::spec::model::FileId`]). Only
//! files that parsed without any diagnostic are stored, so diagnostics are always
//! fresh and complete. The cache is an optimization only: a value that does not
//! deserialize is parsed again, and a cache that fails is dropped with a warning.

use crate::cache::{Cache, CacheError};
use crate::diag::{Code, Diag, Sources};
use crate::hash::{Key, KeyHasher};
use crate::input::{HashReader, InputError, Limit, Root, input_error, read_all};
use crate::report::{Progress, Tally};
use crate::spec::PARSE_FORMAT_VERSION;
use crate::spec::model::{FileId, Package, Target, WorkspaceConfig};
use crate::spec::parse::{parse_build_file, parse_workspace_file};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const WORKSPACE_FILE: &str = "imgc.kdl";
pub const BUILD_FILE: &str = "BUILD.kdl";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("no `{WORKSPACE_FILE}` found in `{0}` or any directory above it")]
    NotFound(PathBuf),
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A loaded workspace: its root, configuration, every parsed package, and the
/// sources of every file read (for rendering diagnostics).
#[derive(Debug)]
pub struct Workspace {
    pub root: PathBuf,
    pub config: WorkspaceConfig,
    /// `imgc.kdl` in [`Workspace::sources`] (where `config`'s spans point).
    pub config_file: FileId,
    pub sources: Sources,
    /// Sorted by package path. (Commands hand them over to the graph.)
    pub packages: Vec<Package>,
    /// What the parse cache did during the load.
    pub parse_cache: ParseCacheReport,
    /// Every path the load depended on: the spec files, the directories listed,
    /// the output directory (see [`crate::snapshot`]).
    pub recorded: crate::snapshot::Recorded,
}

/// What the parse cache did while loading (all zero without a cache).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseCacheReport {
    /// Files whose parse result came from the cache.
    pub hits: usize,
    /// Files parsed.
    pub parsed: usize,
    /// Parse results stored.
    pub stored: usize,
    /// A problem with the cache, which was then not used (or not written).
    pub warning: Option<String>,
}

/// Which kind of spec file a parse-cache entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Workspace,
    Build,
}

/// The parse-cache key of a file: see the module docs.
pub fn parse_key(kind: FileKind, package: &str, text: &str) -> Key {
    let mut h = KeyHasher::new("parse");
    h.field("format").u64(PARSE_FORMAT_VERSION);
    h.field("imgc").str(env!("CARGO_PKG_VERSION"));
    h.field("parser").str(env!("IMGC_PARSER_FINGERPRINT"));
    h.field("kind").str(match kind {
        FileKind::Workspace => "workspace",
        FileKind::Build => "build",
    });
    h.field("package").str(package);
    h.field("text").str(text);
    h.finish()
}

/// Finds the workspace root at or above `start`.
pub fn find_root(start: &Path) -> Result<PathBuf, WorkspaceError> {
    let start = std::path::absolute(start).map_err(|source| WorkspaceError::Io {
        path: start.to_path_buf(),
        source,
    })?;
    let mut dir = start.as_path();
    loop {
        if dir.join(WORKSPACE_FILE).is_file() {
            return Ok(dir.to_path_buf());
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => return Err(WorkspaceError::NotFound(start)),
        }
    }
}

/// The package path (`a/b`, `""` for the root) of directory `dir` inside `root`.
/// `None` if `dir` is outside the workspace.
pub fn package_of_dir(root: &Path, dir: &Path) -> Option<String> {
    let dir = std::path::absolute(dir).ok()?;
    let rel = dir.strip_prefix(root).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Some(parts.join("/"))
}

/// What [`discover_packages`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Package paths, sorted.
    pub packages: Vec<String>,
    /// Problems with linked `BUILD.kdl` files, as (workspace-relative path, message).
    pub problems: Vec<(String, String)>,
    /// Every directory listed, workspace-relative (`""` for the root), unsorted:
    /// what a snapshot must watch for new packages ([`crate::snapshot`]).
    pub dirs: Vec<PathBuf>,
}

/// Lists the package paths below `root`, sorted.
///
/// Directories are read in parallel (a large workspace has thousands, most of them
/// data directories of packages) and the result is sorted once at the end. Linked
/// directories are not followed; hidden directories, directories named `imgc-out`
/// and the output directory `output_dir` (when imgc made it: an unmarked one is
/// searched, so that packages in it are found and refused) are not searched. A
/// `BUILD.kdl` that is a symbolic link makes a package if it resolves to a regular
/// file inside the workspace; otherwise it is reported in [`Discovered::problems`]
/// (never read).
pub fn discover_packages(root: &Path, output_dir: &str) -> Result<Discovered, WorkspaceError> {
    discover(root, &open_root(root)?, output_dir, &Progress::hidden())
}

/// The workspace root `root`, opened (as a [`Root`], by its canonical path).
fn open_root(root: &Path) -> Result<Root, WorkspaceError> {
    let io = |source| WorkspaceError::Io {
        path: root.to_path_buf(),
        source,
    };
    Root::open(&std::fs::canonicalize(root).map_err(io)?).map_err(io)
}

/// [`discover_packages`] with the root already opened as `ws`, counting the
/// packages found on `progress`.
fn discover(
    root: &Path,
    ws: &Root,
    output_dir: &str,
    progress: &Progress,
) -> Result<Discovered, WorkspaceError> {
    let out = crate::output::OutputDir::new(root, output_dir);
    let skip = out.is_marked().then(|| PathBuf::from(out.shown()));
    let walker = Walker {
        root,
        ws,
        skip: skip.as_deref(),
        progress,
    };
    let mut found = walker.walk(Path::new(""))?;
    found.packages.sort();
    found.problems.sort();
    Ok(found)
}

struct Walker<'a> {
    root: &'a Path,
    /// `root`, opened: linked BUILD.kdl files are resolved beneath it.
    ws: &'a Root,
    /// The output directory, relative, when it is to be skipped.
    skip: Option<&'a Path>,
    /// Counts the packages found.
    progress: &'a Progress,
}

impl Walker<'_> {
    /// The packages at and below `root/rel`.
    fn walk(&self, rel: &Path) -> Result<Discovered, WorkspaceError> {
        let dir = self.root.join(rel);
        let io = |path: &Path, source| WorkspaceError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut subdirs = Vec::new();
        let mut is_package = false;
        let mut problems = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let name = entry.file_name();
            // Usually from the directory entry itself: no stat.
            let file_type = entry.file_type().map_err(|e| io(&entry.path(), e))?;
            if file_type.is_dir() {
                let shown = name.to_string_lossy();
                if shown.starts_with('.') || shown == "imgc-out" {
                    continue;
                }
                let sub = rel.join(&name);
                if Some(sub.as_path()) != self.skip {
                    subdirs.push(sub);
                }
            } else if name == BUILD_FILE && file_type.is_file() {
                is_package = true;
            } else if name == BUILD_FILE && file_type.is_symlink() {
                let shown = rel.join(BUILD_FILE).to_string_lossy().into_owned();
                match self.linked_build_file(&rel.join(BUILD_FILE)) {
                    Ok(()) => is_package = true,
                    Err(why) => problems.push((shown, why)),
                }
            }
        }
        let mut found = Discovered::default();
        found.dirs.push(rel.to_path_buf());
        for sub in subdirs
            .par_iter()
            .map(|sub| self.walk(sub))
            .collect::<Result<Vec<_>, _>>()?
        {
            found.packages.extend(sub.packages);
            found.problems.extend(sub.problems);
            found.dirs.extend(sub.dirs);
        }
        found.problems.extend(problems);
        if is_package {
            self.progress.add(1);
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            found.packages.push(parts.join("/"));
        }
        Ok(found)
    }

    /// Whether the linked BUILD.kdl at `rel` may be read: it must resolve to a
    /// regular file inside the workspace (opened through [`Root`], which
    /// refuses a link out and does not open anything but a regular file).
    /// Otherwise, why not.
    fn linked_build_file(&self, rel: &Path) -> Result<(), String> {
        match self.ws.open_regular(rel) {
            Ok(_) => Ok(()),
            Err(e) => Err(match input_error(&e) {
                Some(InputError::Escapes) => {
                    "is a symbolic link to a file outside the workspace, which imgc does not read"
                        .into()
                }
                Some(InputError::NotRegular(_)) => {
                    "is a symbolic link to something that is not a regular file".into()
                }
                _ => format!("is a symbolic link that cannot be followed ({e})"),
            }),
        }
    }
}

/// The largest spec file imgc reads (the parser refuses far smaller ones anyway:
/// see [`crate::spec::limits`]).
pub const MAX_SPEC_FILE_BYTES: u64 = 16 << 20;

/// Reads the spec file `rel` of the workspace opened as `ws`: through
/// [`Root::open_regular`], so a link (in its directories or the file itself) is
/// followed only inside the workspace and only a regular file is opened (without
/// blocking, so a FIFO cannot hang the load), of at most [`MAX_SPEC_FILE_BYTES`].
/// Errors name the file as `root/rel`.
fn read(root: &Path, ws: &Root, rel: &str) -> Result<String, WorkspaceError> {
    let err = |source| WorkspaceError::Io {
        path: root.join(rel),
        source,
    };
    let opened = ws.open_regular(Path::new(rel)).map_err(err)?;
    if opened.meta.len() > MAX_SPEC_FILE_BYTES {
        return Err(err(std::io::Error::other(format!(
            "larger than the {} MiB a spec file may have",
            MAX_SPEC_FILE_BYTES >> 20
        ))));
    }
    // The cap again while reading: the file may grow after the `fstat`.
    let size = opened.meta.len();
    let reader = HashReader::new(opened.file, Limit::AtMost(MAX_SPEC_FILE_BYTES));
    let (bytes, _) = read_all(reader, size).map_err(err)?;
    String::from_utf8(bytes).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// The bytes of the workspace file `rel` (a keyring, `imgc.lock`), or `None`
/// when there is none ([`crate::input::read_beneath`]), errors naming the path.
pub fn read_workspace_file(
    root: &Path,
    rel: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, WorkspaceError> {
    crate::input::read_beneath(root, rel, max).map_err(|source| WorkspaceError::Io {
        path: root.join(rel),
        source,
    })
}

/// Diagnostics for an `output-dir` that holds or is inside a package: imgc would
/// write into (and `imgc clean` remove from) a directory of sources, and its
/// packages would silently drop out of the graph. The root package does not count
/// (every output directory is inside the workspace root).
fn output_dir_overlaps(
    config: &WorkspaceConfig,
    ws_file: FileId,
    packages: &[String],
) -> Vec<Diag> {
    let out = config.output_dir.trim_end_matches('/');
    let within = |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
    let mut diags = Vec::new();
    let holds: Vec<&String> = packages.iter().filter(|p| within(p, out)).collect();
    let inside: Option<&String> = packages
        .iter()
        .find(|p| !p.is_empty() && within(out, p) && !within(p, out));
    let problem = match (holds.first(), inside) {
        (Some(p), _) if p.as_str() == out => {
            Some(format!("`output-dir` \"{out}\" is the package `//{p}`"))
        }
        (Some(p), _) => Some(format!(
            "`output-dir` \"{out}\" holds the package `//{p}`{}",
            if holds.len() > 1 {
                format!(" and {} more", holds.len() - 1)
            } else {
                String::new()
            }
        )),
        (None, Some(p)) => Some(format!(
            "`output-dir` \"{out}\" is inside the package `//{p}`"
        )),
        (None, None) => None,
    };
    if let Some(message) = problem {
        let mut d = Diag::new(
            Code::InvalidValue,
            format!("{message}: imgc writes there and `imgc clean` removes what is there"),
        )
        .help("name a directory of its own that holds no sources, like \"imgc-out\"");
        if let Some(span) = config.output_dir_span {
            d = d.at(ws_file, span).label("a directory of sources");
        }
        diags.push(d);
    }
    diags
}

/// Workspace-relative path of a package's BUILD.kdl, `/`-separated.
pub fn build_file_path(package: &str) -> String {
    if package.is_empty() {
        BUILD_FILE.to_string()
    } else {
        format!("{package}/{BUILD_FILE}")
    }
}

/// The parse cache as used by one load: turns itself off at the first failure.
struct ParseCache<'c> {
    cache: Option<&'c mut Cache>,
    /// Whether new results are stored and hits marked used (not in a read-only load).
    store: bool,
    report: ParseCacheReport,
}

impl ParseCache<'_> {
    /// The stored values of `keys` (JSON), and the hits to refresh.
    fn get(&mut self, keys: &[Key]) -> (BTreeMap<Key, String>, Vec<Key>) {
        let Some(cache) = self.cache.as_deref_mut() else {
            return Default::default();
        };
        match cache.get_parsed(keys) {
            Ok(hits) => (hits.values, hits.stale),
            Err(e) => {
                self.fail("read", e);
                Default::default()
            }
        }
    }

    fn put(&mut self, entries: &[(Key, String)], touch: &[Key]) {
        let Some(cache) = self.cache.as_deref_mut().filter(|_| self.store) else {
            return;
        };
        match cache.put_parsed(entries, touch) {
            Ok(_) => self.report.stored += entries.len(),
            Err(e) => self.fail("write", e),
        }
    }

    fn fail(&mut self, what: &str, e: CacheError) {
        let Some(cache) = self.cache.take() else {
            return;
        };
        let mut warning = format!("cannot {what} the parse cache, going on without it: {e}");
        if e.is_corrupt() {
            match cache.recover() {
                Ok(w) => warning = w,
                Err(e2) => warning.push_str(&format!(" (and could not replace it: {e2})")),
            }
        }
        self.report.warning.get_or_insert(warning);
    }
}

/// Reads and parses only the workspace file (`imgc.kdl`) at `root`, for commands
/// that need the workspace's settings but not its targets (`imgc cache gc
/// --remote` finds the remote cache there).
pub fn load_config(root: &Path) -> Result<(WorkspaceConfig, Sources, Vec<Diag>), WorkspaceError> {
    let ws = open_root(root)?;
    let text = read(root, &ws, WORKSPACE_FILE)?;
    let mut sources = Sources::default();
    let file = sources.add(WORKSPACE_FILE, text.clone());
    let (config, diags) = parse_workspace_file(file, &text);
    Ok((config, sources, diags))
}

/// Loads and parses the whole workspace at `root`. IO errors stop the load;
/// spec errors are collected and returned beside the (partial) workspace. With a
/// `cache`, parse results of unchanged files are reused (see the module docs); a
/// cache problem never fails the load (it is reported in
/// [`Workspace::parse_cache`]).
pub fn load(
    root: &Path,
    cache: Option<&mut Cache>,
) -> Result<(Workspace, Vec<Diag>), WorkspaceError> {
    load_with(root, cache, true, &Progress::hidden())
}

/// Like [`load`], but leaves the parse cache as it was: its hits are used, but
/// nothing is stored or marked used (for dry runs, which write nothing).
pub fn load_read_only(
    root: &Path,
    cache: Option<&mut Cache>,
) -> Result<(Workspace, Vec<Diag>), WorkspaceError> {
    load_with(root, cache, false, &Progress::hidden())
}

/// [`load`] (or, without `store`, [`load_read_only`]), saying on `progress` what
/// it is doing: packages found, spec files read and parsed, with counts.
pub fn load_showing(
    root: &Path,
    cache: Option<&mut Cache>,
    store: bool,
    progress: &Progress,
) -> Result<(Workspace, Vec<Diag>), WorkspaceError> {
    load_with(root, cache, store, progress)
}

fn load_with(
    root: &Path,
    cache: Option<&mut Cache>,
    store: bool,
    progress: &Progress,
) -> Result<(Workspace, Vec<Diag>), WorkspaceError> {
    let mut pc = ParseCache {
        cache,
        store,
        report: ParseCacheReport::default(),
    };
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let mut new_entries: Vec<(Key, String)> = Vec::new();

    let ws = open_root(root)?;
    let ws_text = read(root, &ws, WORKSPACE_FILE)?;
    let ws_file = sources.add(WORKSPACE_FILE, ws_text.clone());
    let ws_key = parse_key(FileKind::Workspace, "", &ws_text);
    let (ws_hit, mut touch) = pc.get(std::slice::from_ref(&ws_key));
    let cached_config = ws_hit
        .get(&ws_key)
        .and_then(|json| serde_json::from_str::<WorkspaceConfig>(json).ok());
    let config = match cached_config {
        Some(config) => {
            pc.report.hits += 1;
            config
        }
        None => {
            let (config, ws_diags) = parse_workspace_file(ws_file, &ws_text);
            pc.report.parsed += 1;
            if ws_diags.is_empty() {
                if let Ok(json) = serde_json::to_string(&config) {
                    new_entries.push((ws_key, json));
                }
            }
            diags.extend(ws_diags);
            config
        }
    };

    progress.phase("discovering packages", Tally::Found);
    let found = discover(root, &ws, &config.output_dir, progress)?;
    let mut recorded = crate::snapshot::Recorded::default();
    recorded.ws_followed(root, WORKSPACE_FILE);
    recorded.ws(root, &config.output_dir);
    for d in &found.dirs {
        recorded.ws(root, d);
    }
    for pkg in &found.packages {
        recorded.ws_followed(root, build_file_path(pkg));
    }
    for (path, why) in &found.problems {
        diags.push(
            Diag::new(Code::Workspace, format!("`{path}` {why}"))
                .help("replace the link by the file, or by a link to a file inside the workspace"),
        );
    }
    diags.extend(output_dir_overlaps(&config, ws_file, &found.packages));
    let package_paths = found.packages;
    let count = package_paths.len() as u64;
    progress.phase("reading BUILD.kdl files", Tally::Of(count));
    let texts: Vec<(String, String, Key)> = package_paths
        .into_par_iter()
        .map(|pkg| {
            let text = read(root, &ws, &build_file_path(&pkg))?;
            let key = parse_key(FileKind::Build, &pkg, &text);
            progress.add(1);
            Ok((pkg, text, key))
        })
        .collect::<Result<_, WorkspaceError>>()?;
    let keys: Vec<Key> = texts.iter().map(|(_, _, k)| *k).collect();
    progress.say(&format!(
        "looking up {count} BUILD.kdl files in the parse cache"
    ));
    let (hits, stale) = pc.get(&keys);
    touch.extend(stale);
    let ids: Vec<usize> = texts
        .iter()
        .map(|(pkg, text, _)| sources.add(build_file_path(pkg), text.clone()))
        .collect();
    progress.phase(
        &format!(
            "parsing BUILD.kdl files ({} from the parse cache)",
            hits.len()
        ),
        Tally::Of(count),
    );
    let parsed = match parse_pool() {
        Some(pool) => pool.install(|| parse_texts(texts, ids, &hits, progress)),
        None => parse_texts(texts, ids, &hits, progress),
    };
    let mut packages = Vec::with_capacity(parsed.len());
    for p in parsed {
        match p.store {
            None => pc.report.hits += 1,
            Some(store) => {
                pc.report.parsed += 1;
                new_entries.extend(store);
            }
        }
        packages.push(p.package);
        diags.extend(p.diags);
    }
    if !new_entries.is_empty() || !touch.is_empty() {
        progress.say(&format!(
            "storing {} parse results in the parse cache",
            new_entries.len()
        ));
    }
    pc.put(&new_entries, &touch);
    Ok((
        Workspace {
            root: root.to_path_buf(),
            config,
            config_file: ws_file,
            sources,
            packages,
            parse_cache: pc.report,
            recorded,
        },
        diags,
    ))
}

/// Parses each text (or takes it from `hits`): on the parse pool when there is one.
fn parse_texts(
    texts: Vec<(String, String, Key)>,
    ids: Vec<usize>,
    hits: &BTreeMap<Key, String>,
    progress: &Progress,
) -> Vec<Parsed> {
    texts
        .into_par_iter()
        .zip(ids.into_par_iter())
        .map(|((pkg, text, key), file)| {
            let parsed = parse_text(pkg, text, key, file, hits);
            progress.add(1);
            parsed
        })
        .collect()
}

/// One text of [`parse_texts`], parsed or taken from `hits`.
fn parse_text(
    pkg: String,
    text: String,
    key: Key,
    file: usize,
    hits: &BTreeMap<Key, String>,
) -> Parsed {
    if let Some(targets) = hits
        .get(&key)
        .and_then(|json| serde_json::from_str::<Vec<Target>>(json).ok())
    {
        return Parsed {
            package: Package {
                path: pkg,
                file,
                targets,
            },
            diags: Vec::new(),
            store: None,
        };
    }
    let (targets, d) = parse_build_file(file, &pkg, &text);
    let store = if d.is_empty() {
        serde_json::to_string(&targets).ok().map(|json| (key, json))
    } else {
        None
    };
    Parsed {
        package: Package {
            path: pkg,
            file,
            targets,
        },
        diags: d,
        store: Some(store),
    }
}

/// Stack of the threads that parse spec files: texts needing no more than this
/// (see [`crate::spec::limits`]) parse on them, larger ones on a thread of their own.
const PARSE_POOL_STACK: usize = 64 << 20;

/// A pool of threads with large stacks for parsing, if one can be started (else
/// each large text gets a thread of its own).
fn parse_pool() -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("imgc-parse-{i}"))
        .stack_size(PARSE_POOL_STACK)
        .start_handler(|_| crate::spec::set_parse_stack_hint(PARSE_POOL_STACK - (4 << 20)))
        .build()
        .ok()
}

/// One BUILD.kdl, parsed or taken from the cache.
struct Parsed {
    package: Package,
    diags: Vec<Diag>,
    /// `None` for a cache hit; else the entry to store, if the file had no diagnostic.
    store: Option<Option<(Key, String)>>,
}

/// A diagnostic for a workspace that could not be found.
pub fn not_found_diag(err: &WorkspaceError) -> Diag {
    Diag::new(Code::Workspace, err.to_string()).help(format!(
        "run imgc inside a workspace, or pass `-C DIR`; a workspace root holds `{WORKSPACE_FILE}`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_skips_hidden_and_output_dirs_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["b", "a/x", ".hidden", "imgc-out/a", "out/z", "a/.git"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            std::fs::write(root.join(d).join(BUILD_FILE), "").unwrap();
        }
        std::fs::write(root.join(WORKSPACE_FILE), "").unwrap();
        // Linked directories are not followed.
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        std::fs::create_dir_all(root.join("c")).unwrap();
        std::os::unix::fs::symlink(root.join("b").join(BUILD_FILE), root.join("c/BUILD.kdl"))
            .unwrap();
        // A linked BUILD.kdl resolving to a file inside the workspace makes a package.
        let packages = |out: &str| discover_packages(root, out).unwrap().packages;
        assert_eq!(packages("imgc-out"), vec!["a/x", "b", "c", "out/z"]);
        // An output directory is skipped only once imgc made it (it is marked).
        assert_eq!(packages("out"), vec!["a/x", "b", "c", "out/z"]);
        std::fs::write(root.join("out").join(crate::output::DIR_MARK), "").unwrap();
        assert_eq!(packages("out/"), vec!["a/x", "b", "c"]);
        assert_eq!(packages("out"), vec!["a/x", "b", "c"]);
        assert_eq!(
            find_root(&root.join("a/x")).unwrap(),
            std::path::absolute(root).unwrap()
        );
        assert_eq!(
            package_of_dir(&std::path::absolute(root).unwrap(), &root.join("a/x")).unwrap(),
            "a/x"
        );
    }

    fn small_workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join(WORKSPACE_FILE), "workspace {\n}\n").unwrap();
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(
            root.join("app").join(BUILD_FILE),
            "layer \"files\" {\n    text \"/etc/x\" \"x\"\n}\n",
        )
        .unwrap();
        dir
    }

    fn summary(ws: &Workspace) -> String {
        format!("{:?} {:?}", ws.config, ws.packages)
    }

    #[test]
    fn parse_cache_hits_and_gives_the_same_result() {
        let dir = small_workspace();
        let mut cache = Cache::open_in_memory().unwrap();
        let (cold, d) = load(dir.path(), Some(&mut cache)).unwrap();
        assert!(d.is_empty(), "{d:?}");
        assert_eq!((cold.parse_cache.hits, cold.parse_cache.parsed), (0, 2));
        assert_eq!(cold.parse_cache.stored, 2);
        let (warm, d) = load(dir.path(), Some(&mut cache)).unwrap();
        assert!(d.is_empty());
        assert_eq!((warm.parse_cache.hits, warm.parse_cache.parsed), (2, 0));
        assert_eq!(warm.parse_cache.stored, 0, "nothing written when all hit");
        assert_eq!(summary(&cold), summary(&warm));
        let (uncached, _) = load(dir.path(), None).unwrap();
        assert_eq!(summary(&uncached), summary(&warm));
    }

    #[test]
    fn a_read_only_load_uses_the_parse_cache_and_stores_nothing() {
        let dir = small_workspace();
        let mut cache = Cache::open_in_memory().unwrap();
        let (cold, _) = load_read_only(dir.path(), Some(&mut cache)).unwrap();
        assert_eq!((cold.parse_cache.parsed, cold.parse_cache.stored), (2, 0));
        let (again, _) = load(dir.path(), Some(&mut cache)).unwrap();
        assert_eq!(
            again.parse_cache.hits, 0,
            "the read-only load stored nothing"
        );
        let (warm, _) = load_read_only(dir.path(), Some(&mut cache)).unwrap();
        assert_eq!((warm.parse_cache.hits, warm.parse_cache.parsed), (2, 0));
        assert_eq!(summary(&cold), summary(&warm));
    }

    #[test]
    fn a_corrupt_parse_cache_value_is_parsed_again() {
        let dir = small_workspace();
        let root = dir.path();
        let mut cache = Cache::open_in_memory().unwrap();
        let (cold, _) = load(root, Some(&mut cache)).unwrap();
        let text = std::fs::read_to_string(root.join("app").join(BUILD_FILE)).unwrap();
        let ws_text = std::fs::read_to_string(root.join(WORKSPACE_FILE)).unwrap();
        let keys = [
            parse_key(FileKind::Build, "app", &text),
            parse_key(FileKind::Workspace, "", &ws_text),
        ];
        cache
            .put_parsed(
                &[
                    (keys[0], "not json".to_string()),
                    (keys[1], r#"{"output_dir": 7}"#.to_string()),
                ],
                &[],
            )
            .unwrap();
        let (ws, d) = load(root, Some(&mut cache)).unwrap();
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(ws.parse_cache.warning, None);
        assert_eq!((ws.parse_cache.hits, ws.parse_cache.parsed), (0, 2));
        assert_eq!(summary(&ws), summary(&cold));
        // ... and the bad values were replaced.
        let (ws, _) = load(root, Some(&mut cache)).unwrap();
        assert_eq!(ws.parse_cache.hits, 2);
    }

    #[test]
    fn files_with_diagnostics_are_not_cached() {
        let dir = small_workspace();
        let root = dir.path();
        std::fs::write(
            root.join("app").join(BUILD_FILE),
            "layer \"files\" {\n    bogus\n}\n",
        )
        .unwrap();
        let mut cache = Cache::open_in_memory().unwrap();
        let (ws, d) = load(root, Some(&mut cache)).unwrap();
        assert!(!d.is_empty());
        assert_eq!(ws.parse_cache.stored, 1, "only imgc.kdl");
        let (ws, d2) = load(root, Some(&mut cache)).unwrap();
        assert_eq!(d.len(), d2.len());
        assert_eq!((ws.parse_cache.hits, ws.parse_cache.parsed), (1, 1));
    }

    #[test]
    fn keys_separate_kind_package_and_text() {
        let k = parse_key(FileKind::Build, "a", "x");
        assert_ne!(k, parse_key(FileKind::Workspace, "a", "x"));
        assert_ne!(k, parse_key(FileKind::Build, "b", "x"));
        assert_ne!(k, parse_key(FileKind::Build, "a", "x "));
        assert_eq!(k, parse_key(FileKind::Build, "a", "x"));
    }
}
