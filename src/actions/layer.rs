//! The layer action: a file set expanded, hashed, and written as a compressed tar.
//!
//! Keying ([`key`]) expands the layer's entries ([`crate::fileset`]) and hashes
//! every input file through the memo; running ([`run`]) writes the tar
//! ([`crate::layer`]). The key holds the blake3 of each file as it was when keyed,
//! and the run must store exactly those bytes: each file entry carries that
//! blake3, and [`layer::write_layer`] hashes the file again as it streams it
//! into the tar and fails (storing and caching nothing) if it differs.
//!
//! # A layer with `packages`
//!
//! A layer target with `packages` is one layer holding every package of its
//! locked closure (its `Package` edges, see [`crate::debian::plan`]) besides
//! its own entries. Its key then also holds [`crate::packages::deb::RECIPE`] and,
//! per package, `package:<name>` = the `.deb`'s sha256 and size (not its URL).
//! Running reads each `.deb` from the store (its package target, a dependency,
//! fetched and verified it; the store is asked again, verified, and the
//! network used only if it lost it) into its entries. A path that two packages
//! both ship must be the same entry in both (same type, bytes, mode, owner),
//! else the layer fails naming both packages and the path; the layer's own
//! entries must agree with the packages' likewise. The package targets also
//! write their own layers, which this layer does not use: the cost of keeping
//! one owner of `.deb` downloads. A layer with packages cannot be copied from
//! (`copy ":layer"` expands a spec, and packages are not in it).

use super::{ActionError, Ctx, Keyed, Prepared as AnyPrepared};
use crate::action::{Components, Output, params_hash};
use crate::diag::{Code, Diag};
use crate::fileset::{self, Planned};
use crate::graph::EdgeKind;
use crate::layer::{self, Entry, EntryData};
use crate::packages::deb;
use crate::spec::model::{DebPackageSpec, TargetKind};
use petgraph::graph::NodeIndex;

/// The layer recipe version ([`super::LAYER_RECIPE`], kept beside the other
/// kinds' shared constants: package layers are written the same way and key it too).
pub use super::LAYER_RECIPE as RECIPE;

/// What keying prepared for the run: the expanded entries, and the packages
/// (by name) the layer holds.
pub struct Prepared(Vec<Planned>, Vec<DebPackageSpec>);

/// The packages of layer `n` (its `Package` edges), by name.
fn packages(ctx: &Ctx<'_>, n: NodeIndex) -> Vec<DebPackageSpec> {
    ctx.graph
        .deps(n)
        .into_iter()
        .filter(|(k, _)| *k == EdgeKind::Package)
        .filter_map(|(_, d)| match &ctx.graph.node(d).target.kind {
            TargetKind::DebPackage(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Refuses a `copy` (direct or through other layers) from a layer with
/// packages: the copy would expand its spec and leave the packages out.
fn refuse_copied_packages(ctx: &Ctx<'_>, n: NodeIndex) -> Result<(), ActionError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![n];
    while let Some(cur) = stack.pop() {
        if !seen.insert(cur) {
            continue;
        }
        for (k, d) in ctx.graph.deps(cur) {
            if k != EdgeKind::Copy {
                continue;
            }
            if ctx
                .graph
                .deps(d)
                .iter()
                .any(|(k, _)| *k == EdgeKind::Package)
            {
                let node = ctx.graph.node(n);
                return Err(ActionError::Spec(
                    Diag::new(
                        Code::WrongKind,
                        format!(
                            "layer `{}` copies from `{}`, a layer with `packages`: a copy takes a layer's files, not its packages",
                            node.label,
                            ctx.graph.node(d).label
                        ),
                    )
                    .at(node.file, node.target.span)
                    .help("list that layer in the image's `layers`, or request the packages here"),
                ));
            }
            stack.push(d);
        }
    }
    Ok(())
}

/// Key of layer `n`: expands its entries and hashes its files through the memo.
pub fn key(ctx: &Ctx<'_>, n: NodeIndex) -> Result<Keyed, ActionError> {
    let expanded = fileset::expand_layer(ctx.root, ctx.canonical_root, ctx.graph, n, ctx.memo)
        .map_err(ActionError::Spec)?;
    let mut c = Components::new("layer");
    c.set("recipe", RECIPE);
    c.set("format", ctx.params.format.identity());
    c.set("compressor", super::COMPRESSOR_VERSIONS);
    c.set("epoch", ctx.params.source_date_epoch.to_string());
    c.set("entries", entries_params(&expanded.planned));
    for (rel, k) in &expanded.hashes {
        c.set(format!("file:{rel}"), k.to_hex());
    }
    refuse_copied_packages(ctx, n)?;
    let debs = packages(ctx, n);
    if !debs.is_empty() {
        c.set("deb", deb::RECIPE);
    }
    for d in &debs {
        c.set(
            format!("package:{}", d.name),
            format!("{} {}", d.sha256.hex(), d.size),
        );
    }
    Ok(Keyed {
        key: c.key(),
        components: c,
        prepared: AnyPrepared::Layer(Prepared(expanded.planned, debs)),
        learnt: expanded.learnt,
        touched: expanded.touched,
    })
}

/// Writes layer `n`'s tar into the CAS.
pub fn run(ctx: &Ctx<'_>, n: NodeIndex, prepared: Prepared) -> Result<Output, ActionError> {
    let node = ctx.graph.node(n);
    let mut all: Vec<Entry> = prepared.0.into_iter().map(|p| p.entry).collect();
    if !prepared.1.is_empty() {
        all.extend(package_entries(ctx, n, &prepared.1, &all)?);
    }
    let entries = layer::normalize(all).map_err(|e| {
        ActionError::Spec(
            Diag::new(Code::Conflict, format!("layer `{}`: {e}", node.label))
                .at(node.file, node.target.span),
        )
    })?;
    super::write_layer(ctx, &entries, format_args!("layer `{}`", node.label))
}

/// The entries of `debs` for layer `n`: each `.deb` read from the store
/// (fetched again, verified, if the store lost it). A path two packages ship
/// (or a package and the layer's `own` entries) must be the same entry.
fn package_entries(
    ctx: &Ctx<'_>,
    n: NodeIndex,
    debs: &[DebPackageSpec],
    own: &[Entry],
) -> Result<Vec<Entry>, ActionError> {
    let node = ctx.graph.node(n);
    let mut by_path: std::collections::BTreeMap<String, (String, Entry)> = own
        .iter()
        .map(|e| {
            (
                e.path.clone(),
                (format!("layer `{}`", node.label), e.clone()),
            )
        })
        .collect();
    let mut out = Vec::new();
    for d in debs {
        let entries = super::deb_package::entries(ctx, node, d)?;
        for e in entries {
            let who = format!("package `{}`", d.name);
            match by_path.get(&e.path) {
                Some((other, prev)) if *prev != e => {
                    return Err(ActionError::Spec(
                        Diag::new(
                            Code::Conflict,
                            format!(
                                "layer `{}`: {other} and {who} both have `/{}`, differently",
                                node.label,
                                crate::input::escape(&e.path)
                            ),
                        )
                        .at(node.file, node.target.span)
                        .help("put these packages in separate images, or drop one of them"),
                    ));
                }
                Some(_) => {}
                None => {
                    by_path.insert(e.path.clone(), (who, e.clone()));
                    out.push(e);
                }
            }
        }
    }
    Ok(out)
}

/// The canonical hash of a layer's entry list, without file contents.
fn entries_params(planned: &[Planned]) -> String {
    let mut sorted: Vec<&Planned> = planned.iter().collect();
    sorted.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    params_hash("layer-entries", |h| {
        h.seq(sorted.len());
        for p in sorted {
            let e = &p.entry;
            h.str(&e.path)
                .u64(u64::from(e.mode))
                .u64(u64::from(e.uid))
                .u64(u64::from(e.gid));
            match &e.data {
                EntryData::File { .. } => {
                    h.str("file")
                        .opt_str(p.source.as_ref().map(|s| s.rel.as_str()));
                }
                EntryData::Bytes(b) => {
                    h.str("bytes").bytes(b);
                }
                EntryData::Blob(d) => {
                    h.str("blob").digest(d);
                }
                EntryData::Dir => {
                    h.str("dir");
                }
                EntryData::Symlink(t) => {
                    h.str("symlink").str(t);
                }
            }
        }
    })
}
