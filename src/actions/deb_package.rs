//! The deb-package action: one locked Debian package as one layer.
//!
//! Every package of `imgc.lock` that an image of the workspace uses becomes one
//! generated target (see [`crate::debian::plan`]), and this action makes its
//! layer: the `.deb` fetched into the store ([`crate::packages::fetch`]), read into
//! the package's entries ([`crate::packages::deb::package_layer_from_cas`]: its
//! data, merged-/usr rewritten, and `var/lib/dpkg/status.d/<package>`), and
//! written by the same layer writer as any layer ([`crate::layer::write_layer`]),
//! with a listing. Its output is an ordinary [`Output::Layer`], so image assembly
//! stacks it like any other layer, and every image that uses the package shares
//! the very same blob.
//!
//! # The key
//!
//! | component | value |
//! |---|---|
//! | `kind` | `deb-package` |
//! | `recipe` | [`RECIPE`] |
//! | `deb` | [`crate::packages::deb::RECIPE`]: what is made of a `.deb` |
//! | `layer` | [`crate::actions::LAYER_RECIPE`]: how entries become a tar and a listing |
//! | `sha256`, `size` | the `.deb` as the lock pins it |
//! | `format`, `compressor`, `epoch` | as for every layer (tar format and compression, the crates' versions, source-date-epoch) |
//!
//! Deliberately not in the key: the URL (a mirror, or a repository moved to
//! another host, rebuilds nothing), the package's name and version (the bytes
//! of the `.deb` decide the layer; a package renamed in the lock with the same
//! file is the same layer) and the repository's name. Keying needs no IO: it
//! runs on the coordinator, and `imgc explain` or a dry run never touch the
//! network.
//!
//! # Running
//!
//! The store is asked first: a `.deb` already there under its sha256 and size
//! is used without any request, so a build whose packages are in the store is
//! offline (also after `imgc clean` of the outputs, or into a fresh output
//! directory). Otherwise it is downloaded and published only once its size and
//! sha256 are the lock's; a mismatch is an error naming the URL and both hashes,
//! and nothing is stored or cached. The stored `.deb` is hashed again while it
//! is read into entries: a store damaged in between fails the action.
//!
//! What it deliberately does not do: resolve (the lock is the only source), run
//! maintainer scripts, or add the merged-/usr symlinks (`/lib` → `usr/lib`...):
//! those belong to the base image ([`crate::packages::deb::merged_usr_links`]).

use super::{ActionError, Ctx, Keyed, Prepared as AnyPrepared};
use crate::action::{Components, Output};
use crate::packages::deb::{self, Limits};
use crate::packages::fetch::Fetcher;
use crate::spec::model::{DebPackageSpec, TargetKind};
use petgraph::graph::NodeIndex;

/// The deb-package recipe version: bump it whenever the output could change for
/// the same key components (beyond [`deb::RECIPE`] and the layer recipe, which
/// are keyed on their own).
pub const RECIPE: &str = "deb-package-1";

/// Key of a package layer: recipes, the pinned `.deb`, the layer format. No IO.
pub fn key(ctx: &Ctx<'_>, spec: &DebPackageSpec) -> Keyed {
    key_with(ctx.params, spec)
}

fn key_with(params: &super::Params, spec: &DebPackageSpec) -> Keyed {
    let mut c = Components::new("deb-package");
    c.set("recipe", RECIPE);
    c.set("deb", deb::RECIPE);
    c.set("layer", super::LAYER_RECIPE);
    c.set("sha256", spec.sha256.hex());
    c.set("size", spec.size.to_string());
    c.set("format", params.format.identity());
    c.set("compressor", super::COMPRESSOR_VERSIONS);
    c.set("epoch", params.source_date_epoch.to_string());
    Keyed {
        key: c.key(),
        components: c,
        prepared: AnyPrepared::DebPackage,
        learnt: Vec::new(),
        touched: Vec::new(),
    }
}

fn describe(node: &crate::graph::Node, spec: &DebPackageSpec) -> String {
    format!(
        "`{}` (package {} {} from `{}`)",
        node.label, spec.name, spec.version, spec.repository
    )
}

/// Fetches the `.deb` of `spec` into the store (or finds it there, verified)
/// and reads it into its package layer; `node` is the target it is for.
fn read(
    ctx: &Ctx<'_>,
    node: &crate::graph::Node,
    spec: &DebPackageSpec,
) -> Result<deb::PackageLayer, ActionError> {
    let context = || describe(node, spec);
    Fetcher::new()
        .fetch(ctx.cas, &spec.url, spec.size, &spec.sha256)
        .map_err(|e| {
            let text = format!("{}: {e}", context());
            if crate::actions::is_out_of_room(&e) {
                ActionError::Env(text)
            } else {
                ActionError::Message(text)
            }
        })?;
    let file = spec
        .filename
        .rsplit('/')
        .next()
        .unwrap_or(&spec.filename)
        .to_string();
    let layer = deb::package_layer_from_cas(ctx.cas, &spec.sha256, &file, &Limits::default())
        .map_err(|e| ActionError::Message(format!("{}: {e}", context())))?;
    if layer.control.package != spec.name {
        return Err(ActionError::Message(format!(
            "{}: `{file}` is the package `{}`, not `{}` as imgc.lock says",
            context(),
            layer.control.package,
            spec.name
        )));
    }
    Ok(layer)
}

/// The entries of the package `spec` for the layer target `node` (a layer
/// with `packages`, see [`super::layer`]).
pub fn entries(
    ctx: &Ctx<'_>,
    node: &crate::graph::Node,
    spec: &DebPackageSpec,
) -> Result<Vec<crate::layer::Entry>, ActionError> {
    read(ctx, node, spec).map(|l| l.entries)
}

/// Fetches package `n`'s `.deb` (or finds it in the store) and writes its layer.
pub fn run(ctx: &Ctx<'_>, n: NodeIndex) -> Result<Output, ActionError> {
    let node = ctx.graph.node(n);
    let TargetKind::DebPackage(spec) = &node.target.kind else {
        return Err(ActionError::Message(format!(
            "`{}` is not a package layer",
            node.label
        )));
    };
    let layer = read(ctx, node, spec)?;
    super::write_layer(ctx, &layer.entries, describe(node, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Digest;
    use crate::layer::LayerFormat;
    use crate::spec::model::{Compression, Platform};

    fn spec(url: &str, sha: u8, size: u64) -> DebPackageSpec {
        DebPackageSpec {
            repository: "bookworm".into(),
            name: "libc6".into(),
            version: "2.36-9".into(),
            arch: "amd64".into(),
            url: url.into(),
            filename: "pool/main/g/glibc/libc6_2.36-9_amd64.deb".into(),
            size,
            sha256: Digest([sha; 32]),
        }
    }

    fn params(compression: Compression, epoch: u64) -> crate::actions::Params {
        crate::actions::Params {
            source_date_epoch: epoch,
            format: LayerFormat {
                compression,
                level: 6,
            },
            platform: Platform::parse("linux/amd64").unwrap(),
        }
    }

    #[test]
    fn the_key_holds_the_deb_and_the_layer_format_not_the_url_or_names() {
        let p = params(Compression::Gzip, 0);
        let a = key_with(&p, &spec("http://a.example/debian/x.deb", 1, 10));
        let mirror = key_with(&p, &spec("https://mirror.example/y.deb", 1, 10));
        assert_eq!(a.key, mirror.key, "a mirror rebuilds nothing");
        let mut renamed = spec("http://a.example/debian/x.deb", 1, 10);
        renamed.repository = "other".into();
        renamed.version = "2.36-9+b1".into();
        assert_eq!(a.key, key_with(&p, &renamed).key, "the .deb decides");
        for other in [
            key_with(&p, &spec("http://a.example/debian/x.deb", 2, 10)),
            key_with(&p, &spec("http://a.example/debian/x.deb", 1, 11)),
            key_with(
                &params(Compression::Zstd, 0),
                &spec("http://a.example/debian/x.deb", 1, 10),
            ),
            key_with(
                &params(Compression::Gzip, 1),
                &spec("http://a.example/debian/x.deb", 1, 10),
            ),
        ] {
            assert_ne!(a.key, other.key);
        }
        assert_eq!(a.components.get("kind"), Some("deb-package"));
        assert_eq!(a.components.get("recipe"), Some(RECIPE));
        assert_eq!(a.components.get("deb"), Some(deb::RECIPE));
        assert_eq!(
            a.components.get("layer"),
            Some(crate::actions::LAYER_RECIPE)
        );
        assert_eq!(a.components.get("size"), Some("10"));
    }
}
