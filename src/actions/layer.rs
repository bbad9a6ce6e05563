//! The layer action: a file set expanded, hashed, and written as a compressed tar.
//!
//! Keying ([`key`]) expands the layer's entries ([`crate::fileset`]) and hashes
//! every input file through the memo; running ([`run`]) writes the tar
//! ([`crate::layer`]). The key holds the blake3 of each file as it was when keyed,
//! and the run must store exactly those bytes: each file entry carries that
//! blake3, and [`layer::write_layer`] hashes the file again as it streams it
//! into the tar and fails (storing and caching nothing) if it differs.

use super::{ActionError, Ctx, Keyed, Prepared as AnyPrepared};
use crate::action::{Blob, Components, Output, params_hash};
use crate::diag::{Code, Diag};
use crate::fileset::{self, Planned};
use crate::layer::{self, EntryData};
use crate::oci::LayerDesc;
use petgraph::graph::NodeIndex;

/// The layer recipe version: bump it whenever a layer's output could change
/// for the same key components (tar writing, entry expansion, normalization,
/// the listing). History: 2 added the listing; 3 dropped the entries of
/// undeclared parent directories (they replaced the base's).
pub const RECIPE: &str = "layer-3";

/// What keying prepared for the run: the expanded entries.
pub struct Prepared(Vec<Planned>);

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
    Ok(Keyed {
        key: c.key(),
        components: c,
        prepared: AnyPrepared::Layer(Prepared(expanded.planned)),
        learnt: expanded.learnt,
        touched: expanded.touched,
    })
}

/// Writes layer `n`'s tar into the CAS.
pub fn run(ctx: &Ctx<'_>, n: NodeIndex, prepared: Prepared) -> Result<Output, ActionError> {
    let node = ctx.graph.node(n);
    let entries =
        layer::normalize(prepared.0.into_iter().map(|p| p.entry).collect()).map_err(|e| {
            ActionError::Spec(
                Diag::new(Code::Conflict, format!("layer `{}`: {e}", node.label))
                    .at(node.file, node.target.span),
            )
        })?;
    let out = layer::write_layer(
        &entries,
        &ctx.params.format,
        ctx.params.source_date_epoch,
        ctx.cas,
    )
    .map_err(|e| ActionError::failed(format_args!("layer `{}`", node.label), &e))?;
    let (digest, size) = ctx
        .cas
        .put_bytes(&out.listing.to_json())
        .map_err(|e| ActionError::failed(format_args!("layer `{}`", node.label), &e))?;
    Ok(Output::Layer(LayerDesc {
        digest: out.digest,
        diff_id: out.diff_id,
        size: out.size,
        media_type: out.media_type,
        listing: Some(Blob { digest, size }),
    }))
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
