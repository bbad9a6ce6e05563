//! The import action: an OCI layout or a `docker save` archive of the workspace,
//! copied into the CAS and verified ([`crate::import`]).
//!
//! Keying ([`key`]) hashes exactly the files the import will read
//! ([`crate::import::key_inputs`], which walks the layout with the import's own
//! code); running ([`run`]) imports while hashing every file it reads, and fails,
//! caching nothing, unless it read exactly the keyed files with the keyed
//! hashes (a file changed between keying and reading). Its output carries a
//! listing of every layer (made while the layer's diff_id was computed), so an
//! image built on an import is checked against its layers like any base.

use super::{ActionError, Ctx, Keyed, Prepared as AnyPrepared};
use crate::action::{Blob, Components, ImageOut, Output};
use crate::diag::{Code, Diag};
use crate::hash::Key;
use crate::import::{self, Format, ImportError, Source};
use crate::registry::Reference;
use crate::spec::model::{ImportSource, ImportSpec, RegistryRef};
use petgraph::graph::NodeIndex;
use std::collections::BTreeMap;

/// The import recipe version: bump it whenever an import's output could change
/// for the same inputs (manifest synthesis for archives, platform selection).
///
/// - `import-2`: the chosen image's config must be for the build platform (a
///   single-image layout or archive of another platform was accepted before,
///   and an old cache entry for one must not be served where a fresh import now
///   fails); the key holds the files the import reads, through in-workspace links;
///   every layer's listing is stored with the output.
pub const RECIPE: &str = "import-2";

/// What keying prepared for the run.
pub enum Prepared {
    /// A layout or an archive of the workspace.
    Workspace {
        /// Workspace-relative path of the layout directory or the archive.
        rel: String,
        format: Format,
        /// The files the key hashed (its `file:` components), to compare with what
        /// the run reads.
        keyed: BTreeMap<String, Key>,
    },
    /// An image in a registry, pinned by digest.
    Registry(Reference),
}

/// Key of import `n`: the content of every file it reads, or the pinned digest
/// of a registry image.
pub fn key(ctx: &Ctx<'_>, n: NodeIndex, spec: &ImportSpec) -> Result<Keyed, ActionError> {
    let node = ctx.graph.node(n);
    let (rel, format) = match &spec.source.value {
        ImportSource::OciLayout(p) => (p, Format::OciLayout),
        ImportSource::DockerArchive(p) => (p, Format::DockerArchive),
        ImportSource::Registry(r) => return key_registry(ctx, n, r, spec),
    };
    let ws_rel = if node.label.package().is_empty() {
        rel.clone()
    } else {
        format!("{}/{rel}", node.label.package())
    };
    let src = Source {
        root: ctx.canonical_root,
        rel: &ws_rel,
        format,
    };
    let inputs = import::key_inputs(src, &ctx.params.platform, ctx.memo).map_err(|e| match e {
        ImportError::Missing { .. } => ActionError::Spec(
            Diag::new(Code::SourceMissing, e.to_string()).at(node.file, spec.source.span),
        ),
        ImportError::Escapes { .. } => ActionError::Spec(
            Diag::new(Code::PathEscapes, e.to_string()).at(node.file, spec.source.span),
        ),
        e => ActionError::Message(format!("import `{}`: {e}", node.label)),
    })?;
    let mut c = Components::new("import");
    c.set("recipe", RECIPE);
    c.set("platform", ctx.params.platform.to_string());
    c.set("source", format.name());
    for (rel, k) in &inputs.files {
        c.set(format!("file:{rel}"), k.to_hex());
    }
    Ok(Keyed {
        key: c.key(),
        components: c,
        prepared: AnyPrepared::Import(Prepared::Workspace {
            rel: ws_rel,
            format,
            keyed: inputs.files,
        }),
        learnt: inputs.learnt,
    })
}

/// Key of a registry import: the pinned digest and nothing else of the
/// reference. The digest names the content (every byte fetched is verified
/// against it, and everything below it is named by digest too), so the host
/// and repository are where the bytes come from, not what they are: moving a
/// base to a mirror rebuilds nothing. Keying touches no network, so a dry run
/// or `explain` never does; an unpinned reference cannot be keyed at all.
fn key_registry(
    ctx: &Ctx<'_>,
    n: NodeIndex,
    r: &RegistryRef,
    spec: &ImportSpec,
) -> Result<Keyed, ActionError> {
    let node = ctx.graph.node(n);
    let Some(digest) = r.reference.digest else {
        return Err(ActionError::Spec(crate::graph::not_pinned(
            node,
            r,
            spec.source.span,
            None,
        )));
    };
    let mut c = Components::new("import");
    c.set("recipe", RECIPE);
    c.set("platform", ctx.params.platform.to_string());
    c.set("source", "registry");
    c.set("digest", digest.to_string());
    Ok(Keyed {
        key: c.key(),
        components: c,
        prepared: AnyPrepared::Import(Prepared::Registry(r.reference.clone())),
        learnt: Vec::new(),
    })
}

/// Copies the imported image into the CAS, verifying every blob and that what
/// was read is what was keyed.
pub fn run(ctx: &Ctx<'_>, n: NodeIndex, prepared: Prepared) -> Result<Output, ActionError> {
    let node = ctx.graph.node(n);
    let imported = match prepared {
        Prepared::Workspace { rel, format, keyed } => {
            let src = Source {
                root: ctx.canonical_root,
                rel: &rel,
                format,
            };
            import::import(src, &ctx.params.platform, ctx.cas)
                .and_then(|img| img.check_read(&keyed).map(|()| img))
                .map_err(|e| ActionError::failed(format_args!("import `{}`", node.label), &e))?
        }
        Prepared::Registry(reference) => pull(ctx, n, &reference)?,
    };
    // Each layer's listing goes into the CAS beside it, so images built on the
    // import check their own layers against it ([`crate::listing::Stack`]).
    let mut layers = imported.layers;
    for (l, listing) in layers.iter_mut().zip(&imported.listings) {
        let (digest, size) = ctx.cas.put_bytes(&listing.to_json()).map_err(|e| {
            ActionError::Message(format!(
                "import `{}`: cannot store the listing of {}: {e}",
                node.label, l.digest
            ))
        })?;
        l.listing = Some(Blob { digest, size });
    }
    Ok(Output::Image(ImageOut {
        manifest: imported.manifest_digest,
        manifest_size: imported.manifest_size,
        config: imported.config_digest,
        config_size: imported.config_size,
        layers,
    }))
}

/// Fetches a pinned registry image into the CAS and imports it.
fn pull(
    ctx: &Ctx<'_>,
    n: NodeIndex,
    reference: &Reference,
) -> Result<import::ImportedImage, ActionError> {
    let node = ctx.graph.node(n);
    let _ = (ctx, reference);
    Err(ActionError::Message(format!(
        "import `{}`: registry access is not wired yet",
        node.label
    )))
}
