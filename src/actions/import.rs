//! The import action: an OCI layout or a `docker save` archive of the workspace,
//! copied into the CAS and verified ([`crate::import`]).

use super::{ActionError, Ctx, Keyed, Prepared as AnyPrepared};
use crate::action::{Components, ImageOut, Output};
use crate::diag::{Code, Diag};
use crate::fileset;
use crate::spec::model::{ImportSource, ImportSpec};
use petgraph::graph::NodeIndex;
use std::path::PathBuf;

/// The import recipe version: bump it whenever an import's output could change
/// for the same inputs (manifest synthesis for archives, platform selection).
pub const RECIPE: &str = "import-1";

/// What keying prepared for the run.
pub struct Prepared {
    path: PathBuf,
    is_layout: bool,
}

/// Key of import `n`: the content of every file it reads.
pub fn key(ctx: &Ctx<'_>, n: NodeIndex, spec: &ImportSpec) -> Result<Keyed, ActionError> {
    let node = ctx.graph.node(n);
    let (rel, is_layout) = match &spec.source.value {
        ImportSource::OciLayout(p) => (p, true),
        ImportSource::DockerArchive(p) => (p, false),
    };
    let ws_rel = if node.label.package().is_empty() {
        rel.clone()
    } else {
        format!("{}/{rel}", node.label.package())
    };
    let abs = ctx.root.join(&ws_rel);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if is_layout {
        if !abs.is_dir() {
            return Err(ActionError::Spec(
                Diag::new(
                    Code::SourceMissing,
                    format!("OCI layout directory `{ws_rel}` does not exist"),
                )
                .at(node.file, spec.source.span),
            ));
        }
        for e in walkdir::WalkDir::new(&abs)
            .follow_links(false)
            .sort_by_file_name()
        {
            let e = e.map_err(|e| ActionError::Message(format!("import `{}`: {e}", node.label)))?;
            if e.file_type().is_file() {
                let r = e
                    .path()
                    .strip_prefix(ctx.root)
                    .unwrap_or(e.path())
                    .to_string_lossy()
                    .into_owned();
                files.push((r, e.path().to_path_buf()));
            }
        }
    } else {
        if !abs.is_file() {
            return Err(ActionError::Spec(
                Diag::new(
                    Code::SourceMissing,
                    format!("docker archive `{ws_rel}` does not exist"),
                )
                .at(node.file, spec.source.span),
            ));
        }
        files.push((ws_rel.clone(), abs.clone()));
    }
    let hashed = fileset::hash_files(
        files.iter().map(|(r, a)| (r.as_str(), a.as_path(), None)),
        ctx.memo,
    )
    .map_err(|e| ActionError::Message(format!("import `{}`: {e}", node.label)))?;
    let mut c = Components::new("import");
    c.set("recipe", RECIPE);
    c.set("platform", ctx.params.platform.to_string());
    c.set(
        "source",
        if is_layout {
            "oci-layout"
        } else {
            "docker-archive"
        },
    );
    for (rel, k) in &hashed.hashes {
        c.set(format!("file:{rel}"), k.to_hex());
    }
    Ok(Keyed {
        key: c.key(),
        components: c,
        prepared: AnyPrepared::Import(Prepared {
            path: abs,
            is_layout,
        }),
        learnt: hashed.learnt,
    })
}

/// Copies the imported image into the CAS, verifying every blob.
pub fn run(ctx: &Ctx<'_>, n: NodeIndex, prepared: Prepared) -> Result<Output, ActionError> {
    let node = ctx.graph.node(n);
    let Prepared { path, is_layout } = prepared;
    let imported = if is_layout {
        crate::import::import_oci_layout(&path, &ctx.params.platform, ctx.cas)
    } else {
        crate::import::import_docker_archive(&path, &ctx.params.platform, ctx.cas)
    }
    .map_err(|e| ActionError::Message(format!("import `{}`: {e}", node.label)))?;
    Ok(Output::Image(ImageOut {
        manifest: imported.manifest_digest,
        manifest_size: imported.manifest_size,
        config: imported.config_digest,
        config_size: imported.config_size,
        layers: imported.layers,
    }))
}
