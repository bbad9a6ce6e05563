//! One home per action kind: what enters its key, its recipe version, and how it runs.
//!
//! Every target of the graph is one action. The coordinator
//! ([`crate::scheduler`]) decides *when* an action is keyed, looked up and run;
//! this module and its children decide *what* that means for each kind:
//!
//! | kind | module | keyed on | runs on |
//! |---|---|---|---|
//! | layer | [`layer`] | a worker (expands the file set, hashes files through the memo) | a worker (writes the tar into the CAS) |
//! | import | [`import`] | a worker (hashes the layout or archive; a registry import: its digest, no IO) | a worker (copies and verifies blobs; fetches a registry image's) |
//! | image | [`image`] | the coordinator (spec + dependencies' output digests, no IO) | a worker (config + manifest) |
//! | http-file | [`http_file`] | the coordinator (the pinned sha256 and size, no IO) | a worker (downloads into the CAS, verified) |
//! | package | [`deb_package`] | the coordinator (the lock's sha256 and size, the layer format, no IO) | a worker (fetches the `.deb` into the CAS unless stored, verified; writes its layer) |
//!
//! # What enters a key
//!
//! Every key is the stable hash ([`crate::hash::KeyHasher`]) of named
//! [`Components`] (kept by name so a rebuild can say *why*, see
//! [`crate::action::Reason`]):
//!
//! | kind | component | value |
//! |---|---|---|
//! | all | `kind` | `layer`, `image`, `import`, `http-file`, `deb-package` (also the hash domain) |
//! | all | `recipe` | the kind's recipe version ([`layer::RECIPE`], [`image::RECIPE`], [`import::RECIPE`], [`http_file::RECIPE`], [`deb_package::RECIPE`]) |
//! | layer | `format` | tar format, compressor, level and member or frame size (`tar-pax-1+gzip/libdeflate/6/members-1MiB`, `tar-pax-1+zstd/3/frames-8MiB`) |
//! | layer | `compressor` | the versions of the compression crates imgc was built with ([`COMPRESSOR_VERSIONS`]) |
//! | layer | `epoch` | source-date-epoch (every mtime in the tar) |
//! | layer | `entries` | blake3 of the canonical entry list: in-image path, type, mode, owner, symlink target, text content, source path, the sha256 of a copied http-file |
//! | layer | `file:<path>` | blake3 of the contents of each input file (workspace-relative path) |
//! | image | `base` | label and manifest digest of the base (`scratch` for none) |
//! | image | `base.name` | the base's first tag, written as `org.opencontainers.image.base.name` (empty without one) |
//! | image | `layer.<n>:<label>` | digest of the n-th own layer |
//! | image | `config` | blake3 of the canonical config parameters (entrypoint, env, annotations, ...) |
//! | image | `platform`, `epoch` | as configured |
//! | import | `source` | `oci-layout`, `docker-archive` or `registry` |
//! | import | `file:<path>` | blake3 of each file the import reads (layouts, archives) |
//! | import | `digest` | a registry import's pinned digest (not its host, repository or tag: a mirror with the same digest rebuilds nothing) |
//! | import | `platform` | the platform picked from a multi-platform index |
//! | http-file | `sha256` | the pinned sha256 (not the URL: a mirror of the same bytes rebuilds nothing) |
//! | http-file | `size` | the pinned size, when given |
//! | deb-package | `deb`, `layer` | the recipes of what is made of a `.deb` ([`crate::packages::deb::RECIPE`]) and of the layer writer ([`LAYER_RECIPE`]) |
//! | deb-package | `sha256`, `size` | the `.deb` as `imgc.lock` pins it (not its URL: a mirror rebuilds nothing) |
//! | deb-package | `format`, `compressor`, `epoch` | as for a layer |
//! | image | `layer.<n>:<label>` | also the package layers, numbered first (see [`crate::debian::plan`]) |
//!
//! # Recipe versions
//!
//! A key must change whenever the bytes its action would produce could change,
//! or a fix to how images are assembled never reaches a warm cache (which keeps
//! serving the old bytes). The inputs are in the key; *how* they are turned into
//! bytes is named by each kind's `RECIPE` constant, bumped with every change to
//! that kind's output, and, for layers, by the exact versions of the compression
//! crates. `tests::recipes_pin_their_output` holds golden digests per recipe
//! version: a change of output without a bump fails it.
//!
//! # Hash what you read
//!
//! An action's output must be a function of its key. Layers and imports read
//! files after they were keyed; each such read hashes the bytes as they stream
//! through and the action fails, caching nothing, if they differ from what the
//! key was computed from (a file rewritten in between).
//!
//! Deliberately *not* in any key: mtimes, absolute paths, environment, clock,
//! user, host, completion order, and the KDL text itself (reformatting a spec
//! rebuilds nothing). An image's own layers do not depend on its base, so a base
//! change re-assembles dependents (config + manifest) without rebuilding their
//! layers. A tag only names the image in its layout's `index.json`; it is not
//! part of the image, so changing it re-materializes without re-assembling.

pub mod deb_package;
pub mod http_file;
pub mod image;
pub mod import;
pub mod layer;

use crate::action::{Components, Output, Reason};
use crate::cache::{FileMemo, MemoEntry};
use crate::cas::Cas;
use crate::diag::Diag;
use crate::graph::{EdgeKind, Graph};
use crate::hash::Key;
use crate::layer::LayerFormat;
use crate::spec::model::{Platform, TargetKind};
use petgraph::graph::NodeIndex;
use std::path::Path;

/// The layer recipe version: bump it whenever a layer's output could change
/// for the same key components (tar writing, entry expansion, normalization,
/// the listing). History: 2 added the listing; 3 dropped the entries of
/// undeclared parent directories (they replaced the base's). Keyed by layers and
/// by package layers, which the same writer makes.
pub const LAYER_RECIPE: &str = "layer-3";

/// The exact versions of the compression crates (from `Cargo.lock`, by `build.rs`):
/// a new compressor may emit other bytes for the same input.
pub const COMPRESSOR_VERSIONS: &str = env!("IMGC_COMPRESSOR_VERSIONS");

/// What shapes the bytes of every action's output, besides its own inputs.
#[derive(Debug, Clone)]
pub struct Params {
    pub source_date_epoch: u64,
    pub format: LayerFormat,
    pub platform: Platform,
}

/// Why an action failed.
#[derive(Debug, Clone)]
pub enum ActionError {
    /// A problem with a location in a spec.
    Spec(Diag),
    /// Anything else (IO, corrupt import), already phrased for the user.
    Message(String),
    /// The machine ran out of room (no space left, quota exceeded): not the
    /// build's fault, so the command exits 3 (environment), not 1.
    Env(String),
}

impl ActionError {
    /// `context: error`, as [`ActionError::Env`] if the error (or one it was caused
    /// by) is a full disk or an exceeded quota, else as [`ActionError::Message`].
    pub fn failed(
        context: impl std::fmt::Display,
        e: &(dyn std::error::Error + 'static),
    ) -> ActionError {
        let text = format!("{context}: {e}");
        if is_out_of_room(e) {
            ActionError::Env(text)
        } else {
            ActionError::Message(text)
        }
    }
}

/// Whether `e` or an error in its source chain is ENOSPC or EDQUOT. Errors that
/// were flattened into text on the way keep the OS's own wording, so the text is
/// checked too (`(os error 28)`, `(os error 122)`: how std shows these errors).
pub fn is_out_of_room(e: &(dyn std::error::Error + 'static)) -> bool {
    let full = |io: &std::io::Error| {
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().is_some_and(full) {
            return true;
        }
        let text = err.to_string();
        if [libc::ENOSPC, libc::EDQUOT]
            .iter()
            .any(|code| text.contains(&format!("(os error {code})")))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionError::Spec(d) => f.write_str(&d.message),
            ActionError::Message(m) | ActionError::Env(m) => f.write_str(m),
        }
    }
}

/// What every action may use.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub root: &'a Path,
    /// The workspace root with symlinks resolved (computed once per build).
    pub canonical_root: &'a Path,
    pub graph: &'a Graph,
    pub params: &'a Params,
    pub memo: &'a FileMemo,
    pub cas: &'a Cas,
    /// Registry access for `registry` imports (the client is made on first use).
    pub registries: &'a import::Registries,
}

/// A dependency's output, as an action sees it: edge kind, label, output.
pub type Dep = (EdgeKind, String, Output);

/// What a key computation prepares for the run that may follow.
pub enum Prepared {
    Layer(layer::Prepared),
    Import(import::Prepared),
    Image,
    /// An http-file needs nothing but its spec.
    HttpFile,
    /// A package layer needs nothing but its spec.
    DebPackage,
}

/// The state of one target at the end of a run.
#[derive(Debug, Clone)]
pub enum Outcome {
    Cached(Output),
    Ran(Output),
    /// `dry_run` only: it would run, for this reason.
    WouldRun(Reason),
    Failed(ActionError),
    /// A dependency failed.
    Skipped(String),
}

impl Outcome {
    pub fn output(&self) -> Option<&Output> {
        match self {
            Outcome::Cached(o) | Outcome::Ran(o) => Some(o),
            _ => None,
        }
    }
}

/// A computed key, its components, and what the run needs.
pub struct Keyed {
    pub components: Components,
    pub key: Key,
    pub prepared: Prepared,
    /// File hashes learnt while keying, for the memo.
    pub learnt: Vec<(String, MemoEntry)>,
    /// Workspace-relative paths keying depended on, and whether each was
    /// followed if a link (see [`crate::snapshot`]).
    pub touched: Vec<(std::path::PathBuf, bool)>,
}

/// Whether `n`'s key needs file IO (and so a worker); image, http-file and
/// package-layer keys do not.
pub fn keyed_with_io(graph: &Graph, n: NodeIndex) -> bool {
    !matches!(
        graph.node(n).target.kind,
        TargetKind::Image(_) | TargetKind::HttpFile(_) | TargetKind::DebPackage(_)
    )
}

/// Computes the key of action `n`; `deps` are its dependencies' outputs.
pub fn key(ctx: &Ctx<'_>, n: NodeIndex, deps: &[Dep]) -> Result<Keyed, ActionError> {
    match &ctx.graph.node(n).target.kind {
        TargetKind::Layer(_) => layer::key(ctx, n),
        TargetKind::Import(spec) => import::key(ctx, n, spec),
        TargetKind::Image(spec) => Ok(image::key(ctx, n, spec, deps)),
        TargetKind::HttpFile(spec) => Ok(http_file::key(spec)),
        TargetKind::DebPackage(spec) => Ok(deb_package::key(ctx, spec)),
    }
}

/// Runs action `n` with what its key computation prepared.
pub fn run(
    ctx: &Ctx<'_>,
    n: NodeIndex,
    prepared: Prepared,
    deps: &[Dep],
) -> Result<Output, ActionError> {
    match prepared {
        Prepared::Layer(p) => layer::run(ctx, n, p),
        Prepared::Import(p) => import::run(ctx, n, p),
        Prepared::Image => image::run(ctx, n, deps),
        Prepared::HttpFile => http_file::run(ctx, n),
        Prepared::DebPackage => deb_package::run(ctx, n),
    }
}

/// Writes `entries` as a layer in the workspace's format, with its listing in
/// the store: the output of every layer-making kind (layers, package layers).
/// `context` names the target in errors.
pub fn write_layer(
    ctx: &Ctx<'_>,
    entries: &[crate::layer::Entry],
    context: impl std::fmt::Display,
) -> Result<Output, ActionError> {
    let out = crate::layer::write_layer(
        entries,
        &ctx.params.format,
        ctx.params.source_date_epoch,
        ctx.cas,
    )
    .map_err(|e| ActionError::failed(&context, &e))?;
    let (digest, size) = ctx
        .cas
        .put_bytes(&out.listing.to_json())
        .map_err(|e| ActionError::failed(&context, &e))?;
    Ok(Output::Layer(crate::oci::LayerDesc {
        digest: out.digest,
        diff_id: out.diff_id,
        size: out.size,
        media_type: out.media_type,
        listing: Some(crate::action::Blob { digest, size }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_an_environment_failure() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(
            ActionError::failed("layer `//a:b`", &full),
            ActionError::Env(_)
        ));
        let quota = std::io::Error::from_raw_os_error(libc::EDQUOT);
        assert!(matches!(
            ActionError::failed("x", &quota),
            ActionError::Env(_)
        ));
        // Wrapped with a kind kept, or flattened into text on the way.
        let wrapped = std::io::Error::new(full.kind(), format!("cannot write `x`: {full}"));
        assert!(is_out_of_room(&wrapped));
        let flattened = std::io::Error::other(format!("store: {full}"));
        assert!(is_out_of_room(&flattened));
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(
            ActionError::failed("x", &denied),
            ActionError::Message(_)
        ));
    }
}
