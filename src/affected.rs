//! Which images a set of changed files can change (pure).
//!
//! `imgc affected` answers a CI question: given the files a commit (or a
//! branch, or a working tree) changed, which images must be rebuilt and
//! shipped? The answer must never miss an image whose bytes can change, and
//! should name as few others as it can. It is decided from the specs alone,
//! without reading or hashing any file, so that a file that no longer exists
//! (deleted, renamed away) and one that did not exist before (added, renamed
//! in) count as naturally as an edited one.
//!
//! # What reads a path
//!
//! A changed path `P` (workspace-relative) is read by:
//!
//! - a layer's `copy "SRC"` when `P` is `SRC`, is below it (`SRC` is a
//!   directory) and neither `P` nor a directory between `SRC` and `P` is
//!   matched by one of the `copy`'s `exclude` patterns: exactly the test
//!   expansion applies while it walks the directory ([`crate::fileset`]);
//! - a layer's `copy "GLOB"` when `P` is below the glob's literal directory,
//!   the glob matches `P` as expansion matches it (package-relative, `*` stops
//!   at `/`, the same [`globset`] options) and no `exclude` pattern does;
//! - an import when `P` is its `oci-layout` directory or `docker-archive`
//!   file, or below it;
//! - any of those when `P` is an *ancestor* of what they read: a file that
//!   replaced a directory, or a symbolic link on the way that was changed, can
//!   change everything below it. So a directory given to `--files` (or to
//!   `imgc query rdeps`) stands for everything in it, and a glob is then
//!   assumed to match something in it.
//!
//! Paths are compared by their words, as the spec wrote them, like expansion
//! resolves them (`fileset::lexical_join`). Expansion follows
//! symbolic links in a source's parent directories (and a glob's literal
//! directory) while they stay inside the workspace, so `copy "lib/x"` with
//! `lib` a link to `vendor/lib` reads `vendor/lib/x`, which is what git
//! reports as changed. The command therefore hands [`Readers::with_links`] a
//! resolver (the one IO this decision needs: [`crate::input::Root::locate`]),
//! and a read whose path resolves elsewhere is matched under both paths. A
//! `copy ":target"` reads no path: the graph edge to that target carries its
//! changes.
//!
//! # Spec files
//!
//! A `BUILD.kdl` is compared, not matched: its text at the old revision is
//! parsed and lowered again, and each target of its package in the current
//! graph is compared with the target of the same name in the old model
//! ([`lowered`]: the serialized model with every source span dropped). Only
//! targets that are new or differ are affected, so reformatting a file, adding
//! comments, or reordering independent nodes affects nothing. A target that
//! was removed affects nothing by itself: whatever still depended on it had to
//! change its own spec to load at all. An old text that cannot be compared
//! (it does not parse, is too large, is not UTF-8) affects every target of the
//! package: the safe answer.
//!
//! `imgc.kdl` enters keys through three settings: `source-date-epoch`,
//! `compression` and `platform`. When one of them differs from the old text
//! (or the old text is missing or unusable), every target is affected; a change
//! to any other setting (`output-dir`, `remote-cache`, comments) affects
//! nothing.
//!
//! Without an old revision (`--files`), there is nothing to compare with: a
//! listed `BUILD.kdl` affects every target of its package, a listed `imgc.kdl`
//! every target.
//!
//! A spec file is also a file like any other: a layer that copies its
//! package directory copies its `BUILD.kdl` too, and is affected by any change
//! to its bytes, a reformatting included.
//!
//! # Propagation
//!
//! Every target a change reaches directly is affected, and so is everything
//! that depends on it, transitively (the reverse closure of the graph): a layer
//! copying an affected layer, an image with an affected layer or base. The
//! answer lists the images of that closure, each with the causes that reached
//! it (file paths, or `FILE: reason` for spec changes), sorted. Paths under the
//! output directory are imgc's own output and are ignored.

use crate::fileset::{glob, glob_base, lexical_join};
use crate::graph::Graph;
use crate::label::Label;
use crate::spec::model::{
    CopySource, ImportSource, LayerEntry, Target, TargetKind, WorkspaceConfig,
};
use crate::workspace::{BUILD_FILE, WORKSPACE_FILE};
use globset::{GlobMatcher, GlobSet, GlobSetBuilder};
use petgraph::Direction;
use petgraph::graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// A changed path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Changed {
    /// Workspace-relative, `/`-separated, without `.` or `..` (`""`: the root).
    pub path: String,
    /// A directory: it stands for everything below it.
    pub dir: bool,
}

impl Changed {
    pub fn file(path: impl Into<String>) -> Changed {
        Changed {
            path: path.into(),
            dir: false,
        }
    }
}

/// Whether `path` is `dir` or below it (everything is below the root, `""`).
fn within(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// `path` below `dir`, relative to it; `None` if it is not strictly below.
fn below<'p>(path: &'p str, dir: &str) -> Option<&'p str> {
    if dir.is_empty() {
        return (!path.is_empty()).then_some(path);
    }
    path.strip_prefix(dir)?.strip_prefix('/')
}

/// `a/b` joined, either may be empty.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// One thing a layer or import reads, as its spec declares it.
#[derive(Debug)]
enum Read {
    /// A file or directory (and everything below it).
    Path {
        /// Workspace-relative.
        ws: String,
        /// Package-relative, as `exclude` patterns see it (`""` for `.`).
        pkg: String,
        excludes: Option<GlobSet>,
    },
    /// The files below `base_ws` that the glob matches.
    Glob {
        /// The literal directory, workspace-relative and package-relative.
        base_ws: String,
        base: String,
        /// `None`: the glob does not compile (the build will say so); every
        /// file below the base counts.
        matcher: Option<GlobMatcher>,
        excludes: Option<GlobSet>,
    },
}

impl Read {
    /// The path everything this reads is at or below.
    fn anchor(&self) -> &str {
        match self {
            Read::Path { ws, .. } => ws,
            Read::Glob { base_ws, .. } => base_ws,
        }
    }

    fn reads(&self, c: &Changed) -> bool {
        match self {
            Read::Path { ws, pkg, excludes } => {
                if within(ws, &c.path) {
                    return true;
                }
                let Some(rest) = below(&c.path, ws) else {
                    return false;
                };
                // Expansion checks every level it descends to: an excluded
                // directory leaves out everything below it.
                let Some(x) = excludes else { return true };
                let mut prefix = String::new();
                for comp in rest.split('/') {
                    prefix = join(&prefix, comp);
                    if x.is_match(Path::new(&join(pkg, &prefix))) {
                        return false;
                    }
                }
                true
            }
            Read::Glob {
                base_ws,
                base,
                matcher,
                excludes,
            } => {
                if within(base_ws, &c.path) {
                    return true;
                }
                let Some(rest) = below(&c.path, base_ws) else {
                    return false;
                };
                if c.dir {
                    return true;
                }
                let candidate = join(base, rest);
                let candidate = Path::new(&candidate);
                matcher.as_ref().is_none_or(|m| m.is_match(candidate))
                    && !excludes.as_ref().is_some_and(|x| x.is_match(candidate))
            }
        }
    }
}

/// `None` when a pattern does not compile: then nothing is taken as excluded.
fn excludes(patterns: &[crate::spec::model::Spanned<String>]) -> Option<GlobSet> {
    if patterns.is_empty() {
        return None;
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(glob(&p.value).ok()?);
    }
    b.build().ok()
}

/// What every layer and import of a graph reads, to find the targets that
/// read a changed path.
///
/// Reads are indexed by their anchor (a path's source, a glob's literal
/// directory): only the reads anchored at a changed path, at one of its
/// ancestors or below it can read it, so a change costs a few map lookups
/// plus the reads it may concern, not a pass over every read of the
/// workspace.
#[derive(Debug)]
pub struct Readers {
    reads: Vec<(NodeIndex, Read)>,
    by_anchor: BTreeMap<String, Vec<usize>>,
}

/// Resolves a workspace-relative path through the symbolic links on its way
/// (its last component too if the flag says so) to the path it leads to;
/// `None` if it cannot be resolved (missing, or leading outside).
pub type Resolve<'a> = &'a dyn Fn(&str, bool) -> Option<String>;

impl Read {
    /// The same read under the path `resolve` leads its path to, if that is
    /// another path.
    fn resolved(&self, resolve: Resolve<'_>) -> Option<Read> {
        match self {
            Read::Path { ws, pkg, excludes } if !ws.is_empty() => {
                let to = resolve(ws, false).filter(|to| to != ws)?;
                Some(Read::Path {
                    ws: to,
                    pkg: pkg.clone(),
                    excludes: excludes.clone(),
                })
            }
            Read::Glob {
                base_ws,
                base,
                matcher,
                excludes,
            } if !base_ws.is_empty() => {
                let to = resolve(base_ws, true).filter(|to| to != base_ws)?;
                Some(Read::Glob {
                    base_ws: to,
                    base: base.clone(),
                    matcher: matcher.clone(),
                    excludes: excludes.clone(),
                })
            }
            _ => None,
        }
    }
}

impl Readers {
    /// The reads as the specs write them, links not resolved.
    pub fn of(graph: &Graph) -> Readers {
        Readers::with_links(graph, &|_, _| None)
    }

    /// The reads, each also under the path `resolve` leads it to (see the
    /// module docs).
    pub fn with_links(graph: &Graph, resolve: Resolve<'_>) -> Readers {
        let mut reads = Vec::new();
        for n in graph.nodes() {
            let node = graph.node(n);
            let package = node.label.package();
            match &node.target.kind {
                TargetKind::Layer(spec) => {
                    for e in &spec.entries {
                        let LayerEntry::Copy { src, exclude, .. } = e else {
                            continue;
                        };
                        let read = match &src.value {
                            CopySource::Target(_) => continue,
                            CopySource::Path(rel) => Read::Path {
                                ws: lexical_join(package, rel),
                                pkg: if rel == "." {
                                    String::new()
                                } else {
                                    rel.clone()
                                },
                                excludes: excludes(exclude),
                            },
                            CopySource::Glob(pattern) => {
                                let base = glob_base(pattern);
                                Read::Glob {
                                    base_ws: lexical_join(package, base),
                                    base: base.to_string(),
                                    matcher: glob(pattern).ok().map(|g| g.compile_matcher()),
                                    excludes: excludes(exclude),
                                }
                            }
                        };
                        reads.push((n, read));
                    }
                }
                TargetKind::Import(spec) => {
                    // A registry import reads no workspace file: its spec is its input.
                    let (ImportSource::OciLayout(rel) | ImportSource::DockerArchive(rel)) =
                        &spec.source.value
                    else {
                        continue;
                    };
                    reads.push((
                        n,
                        Read::Path {
                            ws: lexical_join(package, rel),
                            pkg: rel.clone(),
                            excludes: None,
                        },
                    ));
                }
                // An http-file reads no workspace file: its spec is its input.
                // Package layers read imgc.lock, not workspace files.
                TargetKind::Image(_) | TargetKind::HttpFile(_) | TargetKind::DebPackage(_) => {}
            }
        }
        let aliases: Vec<(NodeIndex, Read)> = reads
            .iter()
            .filter_map(|(n, r)| r.resolved(resolve).map(|r| (*n, r)))
            .collect();
        reads.extend(aliases);
        let mut by_anchor: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (_, r)) in reads.iter().enumerate() {
            by_anchor.entry(r.anchor().to_string()).or_default().push(i);
        }
        Readers { reads, by_anchor }
    }

    /// The layers and imports that read `changed` (see the module docs).
    pub fn reading(&self, changed: &Changed) -> BTreeSet<NodeIndex> {
        let p = changed.path.as_str();
        // Anchored at `p` or one of its ancestors (the root `""` included)...
        let mut anchors: Vec<&str> = vec![""];
        anchors.extend(p.match_indices('/').map(|(i, _)| &p[..i]));
        if !p.is_empty() {
            anchors.push(p);
        }
        let mut candidates: BTreeSet<usize> = anchors
            .into_iter()
            .filter_map(|a| self.by_anchor.get(a))
            .flatten()
            .copied()
            .collect();
        // ... or below it (`/` + 1 is `0`).
        let below: Box<dyn Iterator<Item = (&String, &Vec<usize>)>> = if p.is_empty() {
            Box::new(self.by_anchor.iter())
        } else {
            Box::new(self.by_anchor.range(format!("{p}/")..format!("{p}0")))
        };
        candidates.extend(below.flat_map(|(_, v)| v.iter().copied()));
        candidates
            .into_iter()
            .filter(|i| self.reads[*i].1.reads(changed))
            .map(|i| self.reads[i].0)
            .collect()
    }
}

/// A target's lowered spec without its source spans: what decides whether a
/// `BUILD.kdl` edit changed it. Spans are recognized by their shape (an object
/// of exactly `offset` and `length`, as `miette::SourceSpan` serializes), so a
/// span added to the model later is dropped too.
pub fn lowered(target: &Target) -> serde_json::Value {
    fn is_span(v: &serde_json::Value) -> bool {
        matches!(v, serde_json::Value::Object(m)
            if m.len() == 2
                && m.get("offset").is_some_and(serde_json::Value::is_u64)
                && m.get("length").is_some_and(serde_json::Value::is_u64))
    }
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, x| !is_span(x));
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(target).unwrap_or(serde_json::Value::Null);
    strip(&mut v);
    v
}

/// A spec file as it was at the old revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldText {
    /// It did not exist.
    Absent,
    Text(String),
    /// It existed but cannot be compared (why: too large, not UTF-8...).
    Unusable(String),
}

/// Where the old spec texts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum History {
    /// An old revision: the old text of every changed spec file
    /// ([`spec_files`]); a file missing from the map did not exist.
    Since(BTreeMap<String, OldText>),
    /// No old revision (`--files`): a listed spec file affects every target it
    /// declares (`imgc.kdl`: every target).
    Listed,
}

/// Why a target is affected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// A file it reads changed (or was added, deleted, renamed).
    File(String),
    /// Its lowered spec in `file` is new or differs (`how`).
    Spec {
        file: String,
        label: Label,
        how: &'static str,
    },
    /// `imgc.kdl` changed a setting that enters every key (`what`).
    Settings(String),
    /// The spec file was listed (`--files`): there is no old text to compare.
    Listed(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::File(p) => write!(f, "{p}"),
            Cause::Spec { file, label, how } => write!(f, "{file}: {label} {how}"),
            Cause::Settings(what) => write!(f, "{WORKSPACE_FILE}: {what}"),
            Cause::Listed(file) => write!(f, "{file}: listed"),
        }
    }
}

/// The package a `BUILD.kdl` path declares, if `path` is one.
pub fn build_file_package(path: &str) -> Option<&str> {
    if path == BUILD_FILE {
        return Some("");
    }
    path.strip_suffix(BUILD_FILE)?.strip_suffix('/')
}

/// The changed paths that are spec files (a `BUILD.kdl` anywhere, the root's
/// `imgc.kdl`): those whose old text [`History::Since`] needs.
pub fn spec_files(changed: &[Changed]) -> Vec<String> {
    let mut out: Vec<String> = changed
        .iter()
        .filter(|c| !c.dir && (c.path == WORKSPACE_FILE || build_file_package(&c.path).is_some()))
        .map(|c| c.path.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The targets of `package` in `graph` that are new or differ from what
/// `old` (the package's old `BUILD.kdl`) declared.
fn spec_changes(
    graph: &Graph,
    file: &str,
    package: &str,
    old: &OldText,
) -> Vec<(NodeIndex, Cause)> {
    let cause = |n: NodeIndex, how| Cause::Spec {
        file: file.to_string(),
        label: graph.node(n).label.clone(),
        how,
    };
    let current = graph
        .nodes()
        .filter(|n| graph.node(*n).label.package() == package);
    let old_targets = match old {
        OldText::Absent => Some(BTreeMap::new()),
        OldText::Unusable(_) => None,
        OldText::Text(text) => {
            let (targets, diags) = crate::spec::parse_build_file(0, package, text);
            diags.is_empty().then(|| {
                targets
                    .iter()
                    .map(|t| (t.name.value.clone(), lowered(t)))
                    .collect::<BTreeMap<String, serde_json::Value>>()
            })
        }
    };
    let Some(old_targets) = old_targets else {
        return current
            .map(|n| (n, cause(n, "cannot be compared with the old revision")))
            .collect();
    };
    current
        .filter_map(|n| {
            let t = &graph.node(n).target;
            match old_targets.get(&t.name.value) {
                None => Some((n, cause(n, "added"))),
                Some(v) if *v != lowered(t) => Some((n, cause(n, "changed"))),
                Some(_) => None,
            }
        })
        .collect()
}

/// What a change of `imgc.kdl` means for keys: `None` if no setting that
/// enters a key changed, else why every target is affected.
pub fn settings_change(old: &OldText, new: &WorkspaceConfig) -> Option<String> {
    let text = match old {
        OldText::Absent => return Some("added".to_string()),
        OldText::Unusable(why) => return Some(format!("cannot be compared ({why})")),
        OldText::Text(t) => t,
    };
    let (old, diags) = crate::spec::parse_workspace_file(0, text);
    if !diags.is_empty() {
        return Some("did not parse at the old revision".to_string());
    }
    let mut changed = Vec::new();
    if old.source_date_epoch != new.source_date_epoch {
        changed.push("source-date-epoch");
    }
    if old.compression != new.compression {
        changed.push("compression");
    }
    if old.platform != new.platform {
        changed.push("platform");
    }
    (!changed.is_empty()).then(|| format!("{} changed", changed.join(", ")))
}

/// Every target a change reaches directly, with why.
pub fn direct_causes(
    graph: &Graph,
    readers: &Readers,
    config: &WorkspaceConfig,
    changed: &[Changed],
    history: &History,
) -> BTreeMap<NodeIndex, BTreeSet<Cause>> {
    let mut out: BTreeMap<NodeIndex, BTreeSet<Cause>> = BTreeMap::new();
    let output_dir = config.output_dir.trim_end_matches('/');
    let mut add = |n: NodeIndex, c: Cause| {
        out.entry(n).or_default().insert(c);
    };
    for c in changed {
        if !c.path.is_empty() && within(&c.path, output_dir) {
            continue;
        }
        for n in readers.reading(c) {
            add(n, Cause::File(c.path.clone()));
        }
    }
    for file in spec_files(changed) {
        if file == WORKSPACE_FILE {
            let cause = match history {
                History::Listed => Some(Cause::Listed(file.clone())),
                History::Since(old) => {
                    let old = old.get(&file).unwrap_or(&OldText::Absent);
                    settings_change(old, config).map(Cause::Settings)
                }
            };
            if let Some(cause) = cause {
                for n in graph.nodes() {
                    add(n, cause.clone());
                }
            }
            continue;
        }
        let Some(package) = build_file_package(&file) else {
            continue;
        };
        match history {
            History::Listed => {
                for n in graph.nodes() {
                    if graph.node(n).label.package() == package {
                        add(n, Cause::Listed(file.clone()));
                    }
                }
            }
            History::Since(old) => {
                let old = old.get(&file).unwrap_or(&OldText::Absent);
                for (n, cause) in spec_changes(graph, &file, package, old) {
                    add(n, cause);
                }
            }
        }
    }
    out
}

/// Every image whose output can change: the images among the targets that
/// `direct` names and everything depending on them, each with the causes
/// that reach it (sorted). Sorted by label.
pub fn affected_images(
    graph: &Graph,
    direct: &BTreeMap<NodeIndex, BTreeSet<Cause>>,
) -> BTreeMap<Label, BTreeSet<Cause>> {
    let roots: Vec<NodeIndex> = direct.keys().copied().collect();
    let reached = graph.closure(&roots, Direction::Incoming);
    // Dependencies first, so that every target's causes are complete before
    // its dependents take them over.
    let mut causes: BTreeMap<NodeIndex, BTreeSet<Cause>> = BTreeMap::new();
    for n in graph.topo_order(&reached) {
        let mut mine = direct.get(&n).cloned().unwrap_or_default();
        for d in graph.graph.neighbors_directed(n, Direction::Outgoing) {
            if let Some(theirs) = causes.get(&d) {
                mine.extend(theirs.iter().cloned());
            }
        }
        causes.insert(n, mine);
    }
    causes
        .into_iter()
        .filter(|(n, _)| graph.node(*n).is_image())
        .map(|(n, c)| (graph.node(n).label.clone(), c))
        .collect()
}

/// The workspace-relative form of a command-line path: `arg` relative to
/// `cwd` (absolute), or absolute; `.` and `..` resolved by name. `None` if it
/// is outside the workspace (`roots`: the root as found, and its canonical
/// form, either of which an absolute path may start with).
pub fn workspace_path(roots: &[&Path], cwd: &Path, arg: &Path) -> Option<String> {
    fn words(p: &Path) -> Vec<String> {
        let mut parts: Vec<String> = Vec::new();
        for c in p.components() {
            match c {
                std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
                std::path::Component::ParentDir => {
                    parts.pop();
                }
                _ => {}
            }
        }
        parts
    }
    let full = words(&cwd.join(arg)).join("/");
    roots.iter().find_map(|root| {
        let root = words(root).join("/");
        if full == root {
            Some(String::new())
        } else {
            below(&full, &root).map(str::to_string)
        }
    })
}

/// Whether a command-line argument of `imgc query rdeps` names a path rather
/// than a target pattern: patterns start with `//`, `:` or `-`, hold a `:`, or
/// end with `...`; everything else (`./x`, `bin/server`, `/abs/path`) is a path.
pub fn is_path_argument(arg: &str) -> bool {
    !(arg.starts_with("//")
        || arg.starts_with(':')
        || arg.starts_with('-')
        || arg.contains(':')
        || arg == "..."
        || arg.ends_with("/..."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(files: &[(&str, &str)]) -> Graph {
        let mut packages = Vec::new();
        for (i, (pkg, text)) in files.iter().enumerate() {
            let (targets, diags) = crate::spec::parse_build_file(i, pkg, text);
            assert!(diags.is_empty(), "{pkg}: {diags:?}");
            packages.push(crate::spec::model::Package {
                path: pkg.to_string(),
                file: i,
                targets,
            });
        }
        let (g, diags) = crate::graph::build(packages);
        assert!(diags.is_empty(), "{diags:?}");
        g
    }

    fn reading(g: &Graph, path: &str, dir: bool) -> Vec<String> {
        let mut v: Vec<String> = Readers::of(g)
            .reading(&Changed {
                path: path.into(),
                dir,
            })
            .into_iter()
            .map(|n| g.node(n).label.to_string())
            .collect();
        v.sort();
        v
    }

    const APP: &str = r#"
layer "bin" {
    copy "bin/server" to="/app/server"
}
layer "conf" {
    copy "conf/*.toml" to="/etc/app/" exclude="conf/dev-*.toml"
}
layer "static" {
    copy "static" to="/srv" exclude="static/tmp"
}
layer "shared" {
    copy "../shared/certs" to="/etc/ssl/"
}
layer "deep" {
    copy "docs/**/*.md" to="/doc/"
}
layer "whole" {
    copy "." to="/src/"
}
layer "text" {
    text "/etc/x" "x"
}
"#;

    #[test]
    fn exact_files_directories_and_parents() {
        let g = graph(&[("svc", APP)]);
        assert_eq!(
            reading(&g, "svc/bin/server", false),
            ["//svc:bin", "//svc:whole"]
        );
        assert_eq!(reading(&g, "svc/bin/server2", false), ["//svc:whole"]);
        assert_eq!(
            reading(&g, "svc/static/css/a.css", false),
            ["//svc:static", "//svc:whole"]
        );
        // A changed parent (a link swapped, a file that replaced the directory).
        assert_eq!(reading(&g, "svc/bin", false), ["//svc:bin", "//svc:whole"]);
        // Resolved by name, and only within the workspace-relative path.
        assert_eq!(reading(&g, "shared/certs/ca.pem", false), ["//svc:shared"]);
        assert_eq!(reading(&g, "shared/certs2", false), Vec::<String>::new());
        assert_eq!(reading(&g, "svcx/bin/server", false), Vec::<String>::new());
        assert_eq!(reading(&g, "other", false), Vec::<String>::new());
    }

    #[test]
    fn excluded_paths_and_everything_below_an_excluded_directory() {
        let g = graph(&[("svc", APP)]);
        assert_eq!(reading(&g, "svc/static/tmp", false), ["//svc:whole"]);
        assert_eq!(
            reading(&g, "svc/static/tmp/cache/x", false),
            ["//svc:whole"]
        );
        assert_eq!(
            reading(&g, "svc/static/tmpx", false),
            ["//svc:static", "//svc:whole"]
        );
    }

    #[test]
    fn globs_match_as_expansion_does() {
        let g = graph(&[("svc", APP)]);
        assert_eq!(
            reading(&g, "svc/conf/prod.toml", false),
            ["//svc:conf", "//svc:whole"]
        );
        // excluded
        assert_eq!(
            reading(&g, "svc/conf/dev-local.toml", false),
            ["//svc:whole"]
        );
        // `*` stops at `/`; other extensions do not match
        assert_eq!(reading(&g, "svc/conf/sub/x.toml", false), ["//svc:whole"]);
        assert_eq!(reading(&g, "svc/conf/prod.yaml", false), ["//svc:whole"]);
        // `**` does not stop
        assert_eq!(
            reading(&g, "svc/docs/a/b/c.md", false),
            ["//svc:deep", "//svc:whole"]
        );
        assert_eq!(
            reading(&g, "svc/docs/c.md", false),
            ["//svc:deep", "//svc:whole"]
        );
        // a directory stands for everything in it: a glob below it may match
        assert_eq!(
            reading(&g, "svc/docs/a", true),
            ["//svc:deep", "//svc:whole"]
        );
        assert_eq!(
            reading(&g, "svc", true),
            [
                "//svc:bin",
                "//svc:conf",
                "//svc:deep",
                "//svc:static",
                "//svc:whole"
            ]
        );
        // the root stands for everything
        assert_eq!(reading(&g, "", true).len(), 6);
    }

    /// The anchor index finds exactly what a pass over every read finds.
    #[test]
    fn the_index_agrees_with_every_read() {
        let g = graph(&[
            ("svc", APP),
            ("", "layer \"top\" {\n    copy \"*.md\" to=\"/doc/\"\n}\n"),
            ("shared", "layer \"c\" {\n    copy \"certs\" to=\"/c\"\n}\n"),
        ]);
        let readers = Readers::of(&g);
        let paths = [
            "",
            "svc",
            "svc/bin",
            "svc/bin/server",
            "svc/bin/server/x",
            "svc/conf/a.toml",
            "svc/conf/dev-a.toml",
            "svc/static/tmp/x",
            "svc/docs/a/b.md",
            "shared",
            "shared/certs",
            "shared/certs/a",
            "sharedx/certs",
            "README.md",
            "a/README.md",
            "svc0",
        ];
        for p in paths {
            for dir in [false, true] {
                let c = Changed {
                    path: p.into(),
                    dir,
                };
                let all: BTreeSet<NodeIndex> = readers
                    .reads
                    .iter()
                    .filter(|(_, r)| r.reads(&c))
                    .map(|(n, _)| *n)
                    .collect();
                assert_eq!(readers.reading(&c), all, "{p} {dir}");
            }
        }
        assert_eq!(reading(&g, "README.md", false), ["//:top"]);
    }

    #[test]
    fn reads_through_links_are_matched_where_the_links_lead() {
        let g = graph(&[(
            "svc",
            "layer \"a\" {\n    copy \"lib/x\" to=\"/x\"\n    copy \"gen/*.txt\" to=\"/t/\"\n}\n",
        )]);
        // `svc/lib` and `svc/gen` are links to directories elsewhere.
        let resolve = |p: &str, follow: bool| -> Option<String> {
            match (p, follow) {
                ("svc/lib/x", false) => Some("vendor/lib/x".into()),
                ("svc/gen", true) => Some("out/gen".into()),
                _ => None,
            }
        };
        let readers = Readers::with_links(&g, &resolve);
        let hits = |path: &str| readers.reading(&Changed::file(path)).len();
        assert_eq!(hits("vendor/lib/x"), 1);
        assert_eq!(hits("svc/lib/x"), 1);
        assert_eq!(hits("out/gen/a.txt"), 1);
        assert_eq!(hits("out/gen/a.md"), 0);
        assert_eq!(hits("vendor/lib/y"), 0);
        assert_eq!(
            Readers::of(&g)
                .reading(&Changed::file("vendor/lib/x"))
                .len(),
            0
        );
    }

    #[test]
    fn imports_read_their_layout_or_archive() {
        let g = graph(&[(
            "third_party",
            "import \"base\" {\n    oci-layout \"base\"\n}\nimport \"tar\" {\n    docker-archive \"x/a.tar\"\n}\n",
        )]);
        assert_eq!(
            reading(&g, "third_party/base/blobs/sha256/ab", false),
            ["//third_party:base"]
        );
        assert_eq!(
            reading(&g, "third_party/x/a.tar", false),
            ["//third_party:tar"]
        );
        assert_eq!(
            reading(&g, "third_party/x/a.tar.gz", false),
            Vec::<String>::new()
        );
    }

    #[test]
    fn reformatting_keeps_the_lowered_spec() {
        let old = r#"layer "app" {
    copy "bin/server" to="/app/server" mode="0755"
    text "/etc/v" "1\n"
}
image "api" {
    from "scratch"
    layers ":app"
    layer {
        copy "conf/*.toml" to="/etc/" exclude="conf/dev-*.toml"
    }
    env A="1" B="2"
    tag "r/api:1"
}
"#;
        let new = r#"// the image first now, and comments
image "api" { from "scratch"; layers ":app"
  layer { copy "conf/*.toml"   to="/etc/"  exclude="conf/dev-*.toml" }
  env A="1" B="2"
  tag "r/api:1" }

/* the layer */
layer "app" {
  copy "bin/server" \
      to="/app/server" mode="0755"
        text "/etc/v" "1\n"
}
"#;
        let lower = |text: &str| -> BTreeMap<String, serde_json::Value> {
            let (t, d) = crate::spec::parse_build_file(0, "p", text);
            assert!(d.is_empty(), "{d:?}");
            t.iter()
                .map(|t| (t.name.value.clone(), lowered(t)))
                .collect()
        };
        let (a, b) = (lower(old), lower(new));
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        // Entries of one layer in another order: compared as written, so
        // counted as a change (the safe side).
        let swapped = old.replace(
            "    copy \"bin/server\" to=\"/app/server\" mode=\"0755\"\n    text \"/etc/v\" \"1\\n\"\n",
            "    text \"/etc/v\" \"1\\n\"\n    copy \"bin/server\" to=\"/app/server\" mode=\"0755\"\n",
        );
        assert_ne!(swapped, old);
        assert_ne!(a["app"], lower(&swapped)["app"]);
        assert_eq!(a["api"], b["api"]);
        assert_eq!(a["api~layer0"], b["api~layer0"]);
        assert!(!a["api"].to_string().contains("offset"), "{}", a["api"]);
        let changed = lower(&old.replace("B=\"2\"", "B=\"3\""));
        assert_ne!(a["api"], changed["api"]);
        assert_eq!(a["app"], changed["app"]);
    }

    #[test]
    fn build_file_changes_affect_only_what_changed() {
        let old =
            "layer \"a\" {\n    text \"/a\" \"a\"\n}\nlayer \"b\" {\n    text \"/b\" \"b\"\n}\n";
        let new = "layer \"b\" {\n    text \"/b\" \"B\"\n}\n\n// a\nlayer \"a\" { text \"/a\" \"a\"; }\nlayer \"c\" {\n    text \"/c\" \"c\"\n}\n";
        let g = graph(&[("p", new)]);
        let changes = |old: OldText| -> Vec<String> {
            spec_changes(&g, "p/BUILD.kdl", "p", &old)
                .into_iter()
                .map(|(_, c)| c.to_string())
                .collect()
        };
        assert_eq!(
            changes(OldText::Text(old.into())),
            ["p/BUILD.kdl: //p:b changed", "p/BUILD.kdl: //p:c added"]
        );
        assert_eq!(changes(OldText::Text(new.into())), Vec::<String>::new());
        assert_eq!(changes(OldText::Absent).len(), 3);
        // An old text that does not parse cannot be compared: everything.
        assert_eq!(
            changes(OldText::Text("layer {".into()))[0],
            "p/BUILD.kdl: //p:a cannot be compared with the old revision"
        );
        assert_eq!(changes(OldText::Unusable("too large".into())).len(), 3);
    }

    #[test]
    fn only_key_settings_of_imgc_kdl_matter() {
        let (new, d) = crate::spec::parse_workspace_file(
            0,
            "workspace {\n    source-date-epoch 5\n    output-dir \"out\"\n}\n",
        );
        assert!(d.is_empty());
        let t = |s: &str| OldText::Text(s.to_string());
        let same = "// moved around\nworkspace { output-dir \"elsewhere\"; source-date-epoch 5; remote-cache \"/x\"; }";
        assert_eq!(settings_change(&t(same), &new), None);
        assert_eq!(
            settings_change(&t("workspace {\n compression \"zstd\"\n}"), &new).as_deref(),
            Some("source-date-epoch, compression changed")
        );
        assert_eq!(
            settings_change(
                &t("workspace { source-date-epoch 5; platform \"linux/arm64\"; }"),
                &new
            )
            .as_deref(),
            Some("platform changed")
        );
        assert_eq!(
            settings_change(&OldText::Absent, &new).as_deref(),
            Some("added")
        );
        assert!(settings_change(&t("workspace {"), &new).is_some());
    }

    #[test]
    fn propagation_reaches_every_dependent_image() {
        let g = graph(&[
            (
                "bases",
                "layer \"files\" {\n    copy \"etc\" to=\"/etc/\"\n}\nimage \"runtime\" {\n    from \"scratch\"\n    layers \":files\"\n}\n",
            ),
            (
                "svc",
                "layer \"app\" {\n    copy \"app\" to=\"/app/\"\n}\nlayer \"wrap\" {\n    copy \":app\" to=\"/w/\"\n}\nimage \"a\" {\n    from \"//bases:runtime\"\n    layers \":app\"\n}\nimage \"b\" {\n    from \":a\"\n}\nimage \"c\" {\n    from \"scratch\"\n    layers \":wrap\"\n}\nimage \"d\" {\n    from \"scratch\"\n}\n",
            ),
        ]);
        let config = WorkspaceConfig::default();
        let run = |paths: &[&str]| -> Vec<(String, Vec<String>)> {
            let changed: Vec<Changed> = paths.iter().map(|p| Changed::file(*p)).collect();
            let direct = direct_causes(&g, &Readers::of(&g), &config, &changed, &History::Listed);
            affected_images(&g, &direct)
                .into_iter()
                .map(|(l, c)| (l.to_string(), c.iter().map(|c| c.to_string()).collect()))
                .collect()
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            run(&["bases/etc/passwd"]),
            [
                ("//bases:runtime".to_string(), s(&["bases/etc/passwd"])),
                ("//svc:a".to_string(), s(&["bases/etc/passwd"])),
                ("//svc:b".to_string(), s(&["bases/etc/passwd"])),
            ]
        );
        assert_eq!(
            run(&[
                "svc/app/x",
                "svc/app/y",
                "imgc-out/svc/a/index.json",
                "README.md"
            ]),
            [
                ("//svc:a".to_string(), s(&["svc/app/x", "svc/app/y"])),
                ("//svc:b".to_string(), s(&["svc/app/x", "svc/app/y"])),
                ("//svc:c".to_string(), s(&["svc/app/x", "svc/app/y"])),
            ]
        );
        // A listed BUILD.kdl: every target of its package, and their dependents.
        let listed = run(&["bases/BUILD.kdl"]);
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].1, ["bases/BUILD.kdl: listed"]);
        assert_eq!(run(&["imgc.kdl"]).len(), 5);
        assert_eq!(run(&[]), []);
    }

    #[test]
    fn command_line_paths() {
        let root = Path::new("/w/ws");
        let canon = Path::new("/real/ws");
        let p =
            |cwd: &str, arg: &str| workspace_path(&[root, canon], Path::new(cwd), Path::new(arg));
        assert_eq!(p("/w/ws", "a/b").as_deref(), Some("a/b"));
        assert_eq!(p("/w/ws/a", "./b/../c").as_deref(), Some("a/c"));
        assert_eq!(p("/w/ws/a", "..").as_deref(), Some(""));
        assert_eq!(p("/w/ws/a", "../../x"), None);
        assert_eq!(p("/w/ws/a", "/real/ws/z").as_deref(), Some("z"));
        assert_eq!(p("/w/ws", "/w/wsx/z"), None);
        assert!(is_path_argument("services/api/bin/server"));
        assert!(is_path_argument("./x"));
        assert!(is_path_argument("api"));
        assert!(!is_path_argument("//services/api"));
        assert!(!is_path_argument(":image"));
        assert!(!is_path_argument("api:image"));
        assert!(!is_path_argument("services/..."));
        assert!(!is_path_argument("..."));
        assert_eq!(build_file_package("BUILD.kdl"), Some(""));
        assert_eq!(build_file_package("a/b/BUILD.kdl"), Some("a/b"));
        assert_eq!(build_file_package("a/xBUILD.kdl"), None);
    }
}
