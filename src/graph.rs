//! The target graph: labels resolved, dependencies checked, cycles found (pure).
//!
//! Nodes are targets (layers, images, imports, http-files); an edge `a → b` means
//! "a needs b": an image needs its base and its layers, a layer needs the targets
//! it copies from (layers, http-files). Resolution collects every problem at once: unknown labels (with a "did
//! you mean"), dependencies of the wrong kind (an image `from` a layer), duplicate
//! targets, and every cycle, printed as the full path.
//!
//! Node order is deterministic: targets in package order, then in file order.

use crate::diag::{Code, Diag, did_you_mean};
use crate::label::{Label, PatternSet};
use crate::spec::model::{
    BaseRef, CopySource, FileId, LayerEntry, Package, Spanned, Target, TargetKind,
};
use miette::SourceSpan;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, BTreeSet};

/// Why one target depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    /// `from`: the image's base.
    Base,
    /// A Debian package's layer (generated from `imgc.lock`, see
    /// [`crate::debian::plan`]): an image's packages, laid after its base and
    /// before its own layers.
    Package,
    /// `layers` (or an inline layer).
    Layer,
    /// `copy ":target"`.
    Copy,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub label: Label,
    pub file: FileId,
    pub target: Target,
}

impl Node {
    pub fn kind_name(&self) -> &'static str {
        self.target.kind.kind_name()
    }

    pub fn is_image(&self) -> bool {
        matches!(self.target.kind, TargetKind::Image(_))
    }

    /// Generated targets (inline layers) have a `~` in their name.
    pub fn is_generated(&self) -> bool {
        self.label.name().contains('~')
    }
}

#[derive(Debug, Default)]
pub struct Graph {
    pub graph: DiGraph<Node, EdgeKind>,
    by_label: BTreeMap<Label, NodeIndex>,
}

impl Graph {
    pub fn get(&self, label: &Label) -> Option<NodeIndex> {
        self.by_label.get(label).copied()
    }

    pub fn node(&self, ix: NodeIndex) -> &Node {
        &self.graph[ix]
    }

    /// All nodes in label order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.by_label.values().copied()
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Direct dependencies of `ix`: by kind (base, packages, layers, copies),
    /// each kind in the order written (packages in the plan's order).
    pub fn deps(&self, ix: NodeIndex) -> Vec<(EdgeKind, NodeIndex)> {
        let mut out: Vec<(EdgeKind, usize, NodeIndex)> = self
            .graph
            .edges_directed(ix, Direction::Outgoing)
            .map(|e| {
                use petgraph::visit::EdgeRef;
                (*e.weight(), e.id().index(), e.target())
            })
            .collect();
        out.sort();
        out.into_iter().map(|(k, _, t)| (k, t)).collect()
    }

    /// Adds the package layers of `plan` as targets (their spec file: `file`,
    /// imgc.lock) and, for each image of `plan.uses`, an edge to each of its
    /// packages that no image of its base chain already holds. Every problem is
    /// returned (a generated label already taken). A layer target gets an edge
    /// to every package of its closure (it holds them all, in one layer).
    pub fn add_packages(&mut self, plan: &crate::debian::plan::Plan, file: FileId) -> Vec<Diag> {
        let mut diags = Vec::new();
        for p in &plan.packages {
            if self.by_label.contains_key(&p.label) {
                diags.push(Diag::new(
                    Code::DuplicateTarget,
                    format!(
                        "the layer of package `{}` would be named `{}`, which is taken",
                        p.spec.name, p.label
                    ),
                ));
                continue;
            }
            let ix = self.graph.add_node(Node {
                label: p.label.clone(),
                file,
                target: Target {
                    name: Spanned::new(p.label.name().to_string(), (0, 0).into()),
                    span: (0, 0).into(),
                    kind: TargetKind::DebPackage(p.spec.clone()),
                },
            });
            self.by_label.insert(p.label.clone(), ix);
        }
        // An image's packages less those of every image below it (their
        // closures, as planned: what each base holds whatever its own base).
        let users: BTreeSet<NodeIndex> = plan.uses.keys().filter_map(|l| self.get(l)).collect();
        for ix in users {
            if !self.node(ix).is_image() {
                // A layer holds its whole closure, in one layer.
                let all: Vec<NodeIndex> = plan.uses[&self.node(ix).label]
                    .iter()
                    .filter_map(|l| self.get(l))
                    .collect();
                for dep in all {
                    self.graph.add_edge(ix, dep, EdgeKind::Package);
                }
                continue;
            }
            let mut held: BTreeSet<&Label> = BTreeSet::new();
            let mut cur = ix;
            for _ in 0..=self.graph.node_count() {
                let Some((_, base)) = self
                    .deps(cur)
                    .into_iter()
                    .find(|(k, _)| *k == EdgeKind::Base)
                else {
                    break;
                };
                if let Some(ls) = plan.uses.get(&self.node(base).label) {
                    held.extend(ls);
                }
                cur = base;
            }
            let own = &plan.uses[&self.node(ix).label];
            let add: Vec<NodeIndex> = own
                .iter()
                .filter(|l| !held.contains(l))
                .filter_map(|l| self.get(l))
                .collect();
            for dep in add {
                self.graph.add_edge(ix, dep, EdgeKind::Package);
            }
        }
        diags
    }

    /// Targets selected by `patterns`, in label order.
    pub fn select(&self, patterns: &PatternSet) -> Vec<NodeIndex> {
        self.by_label
            .iter()
            .filter(|(l, _)| patterns.matches(l))
            .map(|(_, ix)| *ix)
            .collect()
    }

    /// `roots` and everything they depend on, transitively (label order).
    pub fn closure(&self, roots: &[NodeIndex], dir: Direction) -> BTreeSet<NodeIndex> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<NodeIndex> = roots.to_vec();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(self.graph.neighbors_directed(n, dir));
            }
        }
        seen
    }

    /// Labels of all targets, for "did you mean".
    pub fn labels(&self) -> impl Iterator<Item = &Label> {
        self.by_label.keys()
    }

    /// Targets in dependency order (dependencies first); ties broken by label.
    /// The graph is known to be acyclic once [`build`] returned no diagnostics.
    pub fn topo_order(&self, subset: &BTreeSet<NodeIndex>) -> Vec<NodeIndex> {
        let mut remaining: BTreeMap<NodeIndex, usize> = subset
            .iter()
            .map(|&n| {
                let deps = self
                    .graph
                    .neighbors_directed(n, Direction::Outgoing)
                    .filter(|d| subset.contains(d))
                    .collect::<BTreeSet<_>>()
                    .len();
                (n, deps)
            })
            .collect();
        let mut ready: BTreeSet<(Label, NodeIndex)> = remaining
            .iter()
            .filter(|(_, c)| **c == 0)
            .map(|(n, _)| (self.graph[*n].label.clone(), *n))
            .collect();
        let mut order = Vec::with_capacity(subset.len());
        while let Some((_, n)) = ready.pop_first() {
            order.push(n);
            let dependents: BTreeSet<NodeIndex> = self
                .graph
                .neighbors_directed(n, Direction::Incoming)
                .collect();
            for d in dependents {
                if let Some(c) = remaining.get_mut(&d) {
                    *c -= 1;
                    if *c == 0 {
                        ready.insert((self.graph[d].label.clone(), d));
                    }
                }
            }
        }
        order
    }

    /// The image reference of `ix` when it is a `registry` import.
    pub fn registry_reference(&self, ix: NodeIndex) -> Option<&crate::reference::Reference> {
        match &self.graph[ix].target.kind {
            TargetKind::Import(spec) => spec.source.value.registry(),
            _ => None,
        }
    }

    /// The registry import an image is built on, following `from` down through
    /// other images: its node and reference (for a push to mount the base's
    /// blobs from that repository). `None` for an image on `scratch`, on a
    /// layout or archive import, and for a target that is not an image.
    pub fn registry_base(
        &self,
        image: NodeIndex,
    ) -> Option<(NodeIndex, &crate::reference::Reference)> {
        let mut cur = image;
        // Bounded by the node count: the graph is acyclic once built, but a
        // walk over a hostile graph still ends.
        for _ in 0..=self.graph.node_count() {
            if let Some(r) = self.registry_reference(cur) {
                return Some((cur, r));
            }
            let base = self
                .deps(cur)
                .into_iter()
                .find(|(k, _)| *k == EdgeKind::Base)?;
            cur = base.1;
        }
        None
    }
}

/// `registry` imports among `within` that name no digest: a tag moves, so they
/// cannot be built ([`Code::NotPinned`]). `resolved` gives, for a label, what
/// its tag points at now (when the caller asked the registry), for the help.
pub fn unpinned_imports(
    g: &Graph,
    within: &BTreeSet<NodeIndex>,
    resolved: &BTreeMap<NodeIndex, String>,
) -> Vec<(NodeIndex, Diag)> {
    let mut out = Vec::new();
    for &n in within {
        let node = g.node(n);
        let TargetKind::Import(spec) = &node.target.kind else {
            continue;
        };
        let crate::spec::model::ImportSource::Registry(r) = &spec.source.value else {
            continue;
        };
        if r.reference.digest.is_some() {
            continue;
        }
        out.push((n, not_pinned(node, r, spec.source.span, resolved.get(&n))));
    }
    out
}

/// The diagnostic for an unpinned `registry` import at `span`; `now` is the
/// digest its tag points at, when known.
pub fn not_pinned(
    node: &Node,
    r: &crate::spec::model::RegistryRef,
    span: SourceSpan,
    now: Option<&String>,
) -> Diag {
    let label = &node.label;
    let tag = r.reference.tag.as_deref().unwrap_or("latest");
    let what = if r.reference.tag.is_some() {
        "names a tag"
    } else {
        "names no tag or digest (so `latest`)"
    };
    let help = match now {
        Some(d) => format!(
            "its tag `{tag}` points at {d} now: run `imgc pin {label}` or write `registry \"{}@{d}\"`",
            r.written.split('@').next().unwrap_or(&r.written)
        ),
        None => format!("run `imgc pin {label}` or add `@sha256:...` (the digest to build on)"),
    };
    Diag::new(
        Code::NotPinned,
        format!(
            "`registry` import `{label}` is not pinned: `{}` {what}, which can move",
            r.written
        ),
    )
    .at(node.file, span)
    .label("no digest")
    .help(help)
}

/// A reference to another target, as written.
struct Reference<'a> {
    label: &'a Label,
    span: SourceSpan,
    edge: EdgeKind,
}

fn references(target: &Target) -> Vec<Reference<'_>> {
    let mut out = Vec::new();
    match &target.kind {
        TargetKind::Image(img) => {
            if let Some(from) = &img.from
                && let BaseRef::Target(l) = &from.value
            {
                out.push(Reference {
                    label: l,
                    span: from.span,
                    edge: EdgeKind::Base,
                });
            }
            for l in &img.layers {
                out.push(Reference {
                    label: &l.value,
                    span: l.span,
                    edge: EdgeKind::Layer,
                });
            }
        }
        TargetKind::Layer(layer) => {
            for e in &layer.entries {
                if let LayerEntry::Copy { src, .. } = e
                    && let CopySource::Target(l) = &src.value
                {
                    out.push(Reference {
                        label: l,
                        span: src.span,
                        edge: EdgeKind::Copy,
                    });
                }
            }
        }
        TargetKind::Import(_) | TargetKind::HttpFile(_) | TargetKind::DebPackage(_) => {}
    }
    out
}

/// Which kinds a reference may point at.
fn accepts(edge: EdgeKind, kind: &TargetKind) -> Result<(), &'static str> {
    match (edge, kind) {
        (EdgeKind::Base, TargetKind::Image(_) | TargetKind::Import(_)) => Ok(()),
        (EdgeKind::Base, _) => Err("`from` takes an image or an import (or \"scratch\")"),
        (EdgeKind::Layer, TargetKind::Layer(_)) => Ok(()),
        (EdgeKind::Layer, TargetKind::HttpFile(_)) => Err(
            "`layers` takes layer targets; to put a downloaded file in a layer, `copy` it: `copy \":file\" to=\"/path/in/image\"`",
        ),
        (EdgeKind::Layer, _) => {
            Err("`layers` takes layer targets; to build on an image, use `from`")
        }
        (EdgeKind::Package, TargetKind::DebPackage(_)) => Ok(()),
        (EdgeKind::Package, _) => Err("packages come from imgc.lock: request them with `packages`"),
        (EdgeKind::Copy, TargetKind::Layer(_) | TargetKind::HttpFile(_)) => Ok(()),
        (EdgeKind::Copy, _) => Err("`copy` takes the files of a layer or an http-file target"),
    }
}

/// Builds the graph of all targets of all packages. Returns every problem found.
pub fn build(packages: Vec<Package>) -> (Graph, Vec<Diag>) {
    // The nodes are kept for the whole command: no spare capacity (a vector grown
    // by doubling could hold room for as many nodes again).
    let targets = packages.iter().map(|p| p.targets.len()).sum();
    let mut g = Graph {
        graph: DiGraph::with_capacity(targets, 0),
        by_label: BTreeMap::new(),
    };
    let mut diags = Vec::new();
    let packages_known: BTreeSet<String> = packages.iter().map(|p| p.path.clone()).collect();
    for pkg in packages {
        for mut t in pkg.targets {
            t.kind.shrink_to_fit();
            let label = Label::new(pkg.path.clone(), t.name.value.clone());
            if g.by_label.contains_key(&label) {
                // The parser reports duplicates within a file; this is a safety net.
                diags.push(
                    Diag::new(
                        Code::DuplicateTarget,
                        format!("target `{label}` is defined twice"),
                    )
                    .at(pkg.file, t.name.span)
                    .label("second definition"),
                );
                continue;
            }
            let ix = g.graph.add_node(Node {
                label: label.clone(),
                file: pkg.file,
                target: t,
            });
            g.by_label.insert(label, ix);
        }
    }
    // Label strings for "did you mean", made only if a label is unknown.
    let mut all_labels: Option<Vec<String>> = None;
    let nodes: Vec<NodeIndex> = g.graph.node_indices().collect();
    for ix in nodes {
        let (file, refs): (FileId, Vec<(Label, SourceSpan, EdgeKind)>) = {
            let n = &g.graph[ix];
            (
                n.file,
                references(&n.target)
                    .into_iter()
                    .map(|r| (r.label.clone(), r.span, r.edge))
                    .collect(),
            )
        };
        for (label, span, edge) in refs {
            let Some(&dep) = g.by_label.get(&label) else {
                let all = all_labels
                    .get_or_insert_with(|| g.by_label.keys().map(|l| l.to_string()).collect());
                diags.push(unknown_label(&label, file, span, &packages_known, all));
                continue;
            };
            if let Err(why) = accepts(edge, &g.graph[dep].target.kind) {
                diags.push(
                    Diag::new(
                        Code::WrongKind,
                        format!(
                            "`{label}` is {} {}",
                            article(g.graph[dep].kind_name()),
                            g.graph[dep].kind_name()
                        ),
                    )
                    .at(file, span)
                    .label(format!("{} here", g.graph[dep].kind_name()))
                    .help(why),
                );
                continue;
            }
            g.graph.add_edge(ix, dep, edge);
        }
    }
    diags.extend(cycles(&g));
    diags.extend(output_collisions(&g));
    (g, diags)
}

/// Each image is written to `<output-dir>/<package>/<name>/`, so an image
/// `//a:b` and an image in package `a/b` (or below) would write one layout
/// inside the other.
fn output_collisions(g: &Graph) -> Vec<Diag> {
    let mut outputs: Vec<(String, NodeIndex)> = g
        .nodes()
        .filter(|n| g.graph[*n].is_image())
        .map(|n| {
            let l = &g.graph[n].label;
            let path = if l.package().is_empty() {
                l.name().to_string()
            } else {
                format!("{}/{}", l.package(), l.name())
            };
            (path, n)
        })
        .collect();
    outputs.sort();
    let mut diags = Vec::new();
    for (i, (outer, a)) in outputs.iter().enumerate() {
        for (inner, b) in &outputs[i + 1..] {
            if !inner.starts_with(outer.as_str()) {
                break;
            }
            if inner.as_bytes().get(outer.len()) == Some(&b'/') {
                let (na, nb) = (&g.graph[*a], &g.graph[*b]);
                diags.push(
                    Diag::new(
                        Code::OutputCollision,
                        format!(
                            "the image layout of `{}` would be written inside the one of `{}` (`{outer}/`)",
                            nb.label, na.label
                        ),
                    )
                    .at(nb.file, nb.target.name.span)
                    .label("its layout goes below another image's")
                    .help(format!("rename `{}` or move one of the two images", na.label)),
                );
            }
        }
    }
    diags
}

/// The longest name of one path component (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// The longest layout directory path, the workspace root's absolute path included:
/// `PATH_MAX` (4096) less room for `blobs/sha256/<64 hex digits>` inside it.
pub const MAX_LAYOUT_PATH_BYTES: usize = 4000;

/// Diagnostics for images whose layout at `<root>/<output_dir>/<package>/<name>`
/// could not be written: a name longer than [`MAX_NAME_BYTES`], or a path longer
/// than [`MAX_LAYOUT_PATH_BYTES`] (`root_len` is the length of the workspace root's
/// absolute path). Checked with the graph, so `imgc check` finds what a build would
/// otherwise fail on with `ENAMETOOLONG`.
pub fn output_path_limits(g: &Graph, output_dir: &str, root_len: usize) -> Vec<Diag> {
    // Temporary layouts are written beside the destination under this long a name.
    const TMP_NAME_BYTES: usize = 22;
    let mut diags = Vec::new();
    for n in g.nodes() {
        let node = &g.graph[n];
        if !node.is_image() {
            continue;
        }
        let name = node.label.name();
        let package = node.label.package();
        let (message, label) = if name.len() > MAX_NAME_BYTES {
            (
                format!(
                    "image name `{}...` is {} bytes long; a file name may have at most {MAX_NAME_BYTES}",
                    &name[..40.min(name.len())],
                    name.len()
                ),
                "name too long",
            )
        } else {
            let len = root_len
                + 1
                + output_dir.trim_end_matches('/').len()
                + if package.is_empty() {
                    0
                } else {
                    package.len() + 1
                }
                + 1
                + name.len().max(TMP_NAME_BYTES);
            if len <= MAX_LAYOUT_PATH_BYTES {
                continue;
            }
            (
                format!(
                    "the image layout of `{}` would be at a path of {len} bytes (with the workspace's own path); at most {MAX_LAYOUT_PATH_BYTES} are allowed",
                    node.label
                ),
                "path too long",
            )
        };
        diags.push(
            Diag::new(Code::Limit, message)
                .at(node.file, node.target.name.span)
                .label(label)
                .help("shorten the image name (or the package path, or `output-dir`)"),
        );
    }
    diags
}

fn article(kind: &str) -> &'static str {
    // "an http-file": the letter is read "aitch".
    if kind.starts_with(['a', 'e', 'i', 'o', 'u', 'h']) {
        "an"
    } else {
        "a"
    }
}

fn unknown_label(
    label: &Label,
    file: FileId,
    span: SourceSpan,
    packages: &BTreeSet<String>,
    all: &[String],
) -> Diag {
    let text = label.to_string();
    let mut d = if packages.contains(label.package()) {
        Diag::new(
            Code::UnknownLabel,
            format!(
                "unknown label `{text}`: package `//{}` has no target `{}`",
                label.package(),
                label.name()
            ),
        )
    } else {
        Diag::new(
            Code::UnknownLabel,
            format!(
                "unknown label `{text}`: there is no package `//{}`",
                label.package()
            ),
        )
    }
    .at(file, span)
    .label("not found");
    if let Some(s) = did_you_mean(&text, all.iter().map(String::as_str)) {
        d = d.help(format!("did you mean `{s}`?"));
    }
    d
}

/// Every elementary cycle is reported once, as the full path `a -> b -> a`,
/// at the reference that closes it.
fn cycles(g: &Graph) -> Vec<Diag> {
    let mut diags = Vec::new();
    for scc in petgraph::algo::tarjan_scc(&g.graph) {
        let self_loop = scc.len() == 1 && g.graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        // Start from the smallest label, walk edges inside the SCC until we return.
        let start = *members
            .iter()
            .min_by_key(|n| &g.graph[**n].label)
            .expect("non-empty scc");
        let path = cycle_path(g, start, &members);
        let text: Vec<String> = path.iter().map(|n| g.graph[*n].label.to_string()).collect();
        let last = path[path.len() - 2];
        let node = &g.graph[last];
        let span = references(&node.target)
            .into_iter()
            .find(|r| g.get(r.label) == Some(start))
            .map_or(node.target.name.span, |r| r.span);
        diags.push(
            Diag::new(
                Code::Cycle,
                format!("dependency cycle: {}", text.join(" -> ")),
            )
            .at(node.file, span)
            .label("this reference closes the cycle")
            .help("a target cannot depend on itself, directly or through others"),
        );
    }
    diags
}

/// A shortest path from `start` back to `start` within `members` (BFS).
fn cycle_path(g: &Graph, start: NodeIndex, members: &BTreeSet<NodeIndex>) -> Vec<NodeIndex> {
    let mut prev: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = g
            .graph
            .neighbors_directed(n, Direction::Outgoing)
            .filter(|m| members.contains(m))
            .collect();
        next.sort_by_key(|m| &g.graph[*m].label);
        for m in next {
            if m == start {
                let mut chain = Vec::new();
                let mut cur = n;
                while cur != start {
                    chain.push(cur);
                    cur = prev[&cur];
                }
                chain.reverse();
                let mut fwd = vec![start];
                fwd.extend(chain);
                fwd.push(start);
                return fwd;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    vec![start, start]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::{ImageSpec, LayerSpec, Spanned};

    fn span() -> SourceSpan {
        (0, 1).into()
    }

    fn image(name: &str, from: Option<&str>, layers: &[&str], pkg: &str) -> Target {
        Target {
            name: Spanned::new(name.into(), span()),
            span: span(),
            kind: TargetKind::Image(ImageSpec {
                from: Some(Spanned::new(
                    match from {
                        None => BaseRef::Scratch,
                        Some(l) => BaseRef::Target(Label::parse_in(l, pkg).unwrap()),
                    },
                    span(),
                )),
                layers: layers
                    .iter()
                    .map(|l| Spanned::new(Label::parse_in(l, pkg).unwrap(), span()))
                    .collect(),
                ..Default::default()
            }),
        }
    }

    fn layer(name: &str) -> Target {
        Target {
            name: Spanned::new(name.into(), span()),
            span: span(),
            kind: TargetKind::Layer(LayerSpec::default()),
        }
    }

    fn pkg(path: &str, file: FileId, targets: Vec<Target>) -> Package {
        Package {
            path: path.into(),
            file,
            targets,
        }
    }

    fn messages(diags: &[Diag]) -> Vec<String> {
        diags
            .iter()
            .map(|d| {
                format!(
                    "{} {} {}",
                    d.code,
                    d.message,
                    d.help.clone().unwrap_or_default()
                )
            })
            .collect()
    }

    fn registry_import(name: &str, reference: &str) -> Target {
        Target {
            name: Spanned::new(name.into(), span()),
            span: span(),
            kind: TargetKind::Import(crate::spec::model::ImportSpec {
                source: Spanned::new(
                    crate::spec::model::ImportSource::Registry(
                        crate::spec::model::RegistryRef::parse(reference).unwrap(),
                    ),
                    span(),
                ),
            }),
        }
    }

    /// The graph is kept for the whole command, one node per target: no spare
    /// room in its nodes or in the lists of their specs.
    #[test]
    fn the_graph_and_its_specs_hold_no_spare_capacity() {
        let mut with_room = layer("l");
        if let TargetKind::Layer(spec) = &mut with_room.kind {
            spec.entries = Vec::with_capacity(16);
            spec.entries.push(crate::spec::model::LayerEntry::Dir {
                path: Spanned::new("/d".into(), span()),
                mode: None,
                owner: None,
                span: span(),
            });
        }
        let mut img = image("img", None, &[":l"], "p");
        if let TargetKind::Image(spec) = &mut img.kind {
            spec.layers.reserve(16);
        }
        let mut targets = vec![with_room, img];
        targets.extend((0..4).map(|i| layer(&format!("x{i}"))));
        let (g, diags) = build(vec![pkg("p", 0, targets)]);
        assert!(diags.is_empty(), "{:?}", messages(&diags));
        assert_eq!(g.graph.capacity().0, g.graph.node_count());
        for n in g.graph.node_indices() {
            match &g.node(n).target.kind {
                TargetKind::Layer(l) => assert_eq!(l.entries.capacity(), l.entries.len()),
                TargetKind::Image(i) => assert_eq!(i.layers.capacity(), i.layers.len()),
                TargetKind::Import(_) | TargetKind::HttpFile(_) | TargetKind::DebPackage(_) => {}
            }
        }
    }

    #[test]
    fn registry_bases_are_found_through_images_and_unpinned_ones_reported() {
        let pinned = format!("r.io/team/base:1@sha256:{}", "ab".repeat(32));
        let pkgs = vec![
            pkg(
                "bases",
                0,
                vec![
                    registry_import("up", &pinned),
                    registry_import("loose", "r.io/team/other:2"),
                    image("mid", Some(":up"), &[], "bases"),
                ],
            ),
            pkg(
                "svc",
                1,
                vec![
                    image("svc", Some("//bases:mid"), &[], "svc"),
                    image("solo", None, &[], "svc"),
                    image("on-loose", Some("//bases:loose"), &[], "svc"),
                ],
            ),
        ];
        let (g, diags) = build(pkgs);
        assert!(diags.is_empty(), "{diags:?}");
        let at = |l: &str| g.get(&Label::parse_in(l, "").unwrap()).unwrap();
        let (n, r) = g.registry_base(at("//svc:svc")).unwrap();
        assert_eq!(n, at("//bases:up"));
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("r.io", "team/base")
        );
        assert!(g.registry_base(at("//svc:solo")).is_none());
        assert!(g.registry_reference(at("//bases:mid")).is_none());
        // Only the unpinned import the selection builds on is reported.
        let all: BTreeSet<_> = g.nodes().collect();
        let found = unpinned_imports(&g, &all, &BTreeMap::new());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, at("//bases:loose"));
        assert_eq!(found[0].1.code, Code::NotPinned);
        let svc = g.closure(&[at("//svc:svc")], Direction::Outgoing);
        assert!(unpinned_imports(&g, &svc, &BTreeMap::new()).is_empty());
        let now = BTreeMap::from([(at("//bases:loose"), format!("sha256:{}", "cd".repeat(32)))]);
        let help = unpinned_imports(&g, &all, &now)[0].1.help.clone().unwrap();
        assert!(
            help.contains(&format!(
                "registry \"r.io/team/other:2@sha256:{}\"",
                "cd".repeat(32)
            )),
            "{help}"
        );
    }

    #[test]
    fn resolves_and_orders_dependencies_first() {
        let pkgs = vec![
            pkg(
                "bases",
                0,
                vec![image("runtime", None, &[":files"], "bases"), layer("files")],
            ),
            pkg(
                "svc",
                1,
                vec![
                    image("svc", Some("//bases:runtime"), &[":app"], "svc"),
                    layer("app"),
                ],
            ),
        ];
        let (g, diags) = build(pkgs);
        assert!(diags.is_empty(), "{diags:?}");
        let all: BTreeSet<_> = g.nodes().collect();
        let order: Vec<String> = g
            .topo_order(&all)
            .iter()
            .map(|n| g.node(*n).label.to_string())
            .collect();
        assert_eq!(
            order,
            ["//bases:files", "//bases:runtime", "//svc:app", "//svc:svc"]
        );
        let rdeps = g.closure(
            &[g.get(&Label::new("bases", "runtime")).unwrap()],
            Direction::Incoming,
        );
        let names: Vec<String> = rdeps.iter().map(|n| g.node(*n).label.to_string()).collect();
        assert!(names.contains(&"//svc:svc".to_string()));
        assert!(!names.contains(&"//svc:app".to_string()));
    }

    #[test]
    fn unknown_labels_suggest_the_closest() {
        let pkgs = vec![
            pkg("bases", 0, vec![image("runtime", None, &[], "bases")]),
            pkg(
                "svc",
                1,
                vec![
                    image("a", Some("//bases:runtme"), &[], "svc"),
                    image("b", Some("//nope:x"), &[], "svc"),
                ],
            ),
        ];
        let (_, diags) = build(pkgs);
        assert_eq!(
            messages(&diags),
            [
                "E010 unknown label `//bases:runtme`: package `//bases` has no target `runtme` did you mean `//bases:runtime`?",
                "E010 unknown label `//nope:x`: there is no package `//nope` "
            ]
        );
    }

    #[test]
    fn wrong_kinds_are_reported() {
        let pkgs = vec![pkg(
            "p",
            0,
            vec![
                layer("l"),
                image("i", Some(":l"), &[], "p"),
                image("j", None, &[":i"], "p"),
            ],
        )];
        let (_, diags) = build(pkgs);
        let m = messages(&diags);
        assert_eq!(m.len(), 2);
        assert!(m[0].starts_with("E012 `//p:l` is a layer"), "{m:?}");
        assert!(m[1].starts_with("E012 `//p:i` is an image"), "{m:?}");
    }

    #[test]
    fn nested_output_layouts_are_refused() {
        let pkgs = vec![
            pkg("services", 0, vec![image("api", None, &[], "services")]),
            pkg(
                "services/api",
                1,
                vec![image("api", None, &[], "services/api")],
            ),
            pkg(
                "services/apix",
                2,
                vec![image("apix", None, &[], "services/apix")],
            ),
        ];
        let (_, diags) = build(pkgs);
        assert_eq!(
            messages(&diags),
            [
                "E021 the image layout of `//services/api:api` would be written inside the one of `//services:api` (`services/api/`) rename `//services:api` or move one of the two images"
            ]
        );
    }

    #[test]
    fn cycles_print_the_whole_path() {
        let pkgs = vec![pkg(
            "p",
            0,
            vec![
                image("a", Some(":b"), &[], "p"),
                image("b", Some(":c"), &[], "p"),
                image("c", Some(":a"), &[], "p"),
                image("self", Some(":self"), &[], "p"),
            ],
        )];
        let (_, diags) = build(pkgs);
        let m = messages(&diags);
        assert!(m.contains(&"E011 dependency cycle: //p:a -> //p:b -> //p:c -> //p:a a target cannot depend on itself, directly or through others".to_string()), "{m:?}");
        assert!(
            m.iter()
                .any(|x| x.starts_with("E011 dependency cycle: //p:self -> //p:self")),
            "{m:?}"
        );
        assert_eq!(m.len(), 2);
    }
}
