//! The import action: an OCI layout or a `docker save` archive of the workspace,
//! copied into the CAS and verified ([`crate::import`]), or an image of a
//! registry pinned by digest, fetched into the CAS and verified
//! ([`crate::registry::pull`]).
//!
//! A registry import's key is its recipe version, the platform, the source
//! kind and the pinned digest, nothing else: the digest names the content (and
//! every byte fetched is verified against the digests that lead to it), so the
//! host and repository say where to fetch, not what is fetched, and moving a
//! base to a mirror rebuilds nothing. Keying one needs no network; running one
//! makes the run's registry client on first use ([`Registries`]). An unpinned
//! reference cannot be keyed (E061).
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
use crate::registry::{Client, Reference, pull};
use crate::spec::model::{ImportSource, ImportSpec, RegistryRef};
use petgraph::graph::NodeIndex;
use std::collections::BTreeMap;
use std::sync::OnceLock;

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
    // Imports follow links inside the workspace: every file read, and the source.
    let mut touched = vec![(std::path::PathBuf::from(&ws_rel), true)];
    touched.extend(
        inputs
            .files
            .keys()
            .map(|rel| (std::path::PathBuf::from(rel), true)),
    );
    Ok(Keyed {
        key: c.key(),
        components: c,
        touched,
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
        touched: Vec::new(),
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

/// Registry access for a run's imports: the client is made on the first
/// registry import that runs (never for a build whose imports are all cached,
/// nor for a dry run), with the run's credentials and flags.
pub struct Registries {
    make: Box<dyn Fn() -> Result<Client, String> + Send + Sync>,
    client: OnceLock<Result<Client, String>>,
}

impl Registries {
    /// Access through the client `make` returns, made once when first needed.
    pub fn new(make: impl Fn() -> Result<Client, String> + Send + Sync + 'static) -> Registries {
        Registries {
            make: Box::new(make),
            client: OnceLock::new(),
        }
    }

    /// No registry access: a registry import that must run fails with `why`.
    pub fn unavailable(why: &str) -> Registries {
        let why = why.to_string();
        Registries::new(move || Err(why.clone()))
    }

    /// The client, made now if it was not yet.
    pub fn client(&self) -> Result<&Client, String> {
        self.client
            .get_or_init(|| (self.make)())
            .as_ref()
            .map_err(|e| e.clone())
    }
}

/// Fetches a pinned registry image into the CAS (every byte verified against
/// the digests that lead to it from the pinned one) and imports it through
/// the layout import's own checks ([`import::import_pulled`]).
fn pull(
    ctx: &Ctx<'_>,
    n: NodeIndex,
    reference: &Reference,
) -> Result<import::ImportedImage, ActionError> {
    let node = ctx.graph.node(n);
    let context = || format!("import `{}`", node.label);
    let client = ctx
        .registries
        .client()
        .map_err(|e| ActionError::Message(format!("{}: {e}", context())))?;
    let pulled = pull::fetch_image(client, reference, &ctx.params.platform, ctx.cas)
        .map_err(|e| ActionError::failed(context(), &e))?;
    let name = reference.to_string();
    import::import_pulled(
        import::Pulled {
            reference: &name,
            manifest: (pulled.manifest_digest, pulled.manifest_size),
            manifest_bytes: &pulled.manifest_bytes,
        },
        &ctx.params.platform,
        ctx.cas,
    )
    .map_err(|e| ActionError::failed(context(), &e))
}
