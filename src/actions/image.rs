//! The image action: a config and a manifest from a base, own layers and the spec.
//!
//! Keying needs no IO: the key is the spec's config parameters plus the
//! dependencies' output digests, so it is computed on the coordinator. Running
//! reads the base's config from the CAS and stores the new config and manifest.

use super::{ActionError, Ctx, Dep, Keyed, Prepared};
use crate::action::{Components, ImageOut, Output, params_hash};
use crate::graph::{EdgeKind, Graph};
use crate::oci::{self, LayerDesc};
use crate::spec::model::{ImageSpec, TargetKind};
use petgraph::graph::NodeIndex;
use std::collections::BTreeMap;

/// The image recipe version: bump it whenever an image's config or manifest
/// could change for the same key components (inheritance rules, fields written).
pub const RECIPE: &str = "image-1";

/// An image's key: from its spec and its dependencies' outputs, no IO.
pub fn key(ctx: &Ctx<'_>, n: NodeIndex, spec: &ImageSpec, deps: &[Dep]) -> Keyed {
    let mut c = Components::new("image");
    c.set("recipe", RECIPE);
    c.set("platform", ctx.params.platform.to_string());
    c.set("epoch", ctx.params.source_date_epoch.to_string());
    c.set("config", config_params(spec));
    c.set("base", "scratch");
    let mut layer_n = 0usize;
    for (edge, label, output) in deps {
        match edge {
            EdgeKind::Base => {
                c.set("base", format!("{label} {}", output.digest()));
                c.set("base.name", base_name(ctx.graph, n).unwrap_or_default());
            }
            EdgeKind::Layer => {
                c.set(
                    format!("layer.{layer_n}:{label}"),
                    output.digest().to_string(),
                );
                layer_n += 1;
            }
            EdgeKind::Copy => {}
        }
    }
    Keyed {
        key: c.key(),
        components: c,
        prepared: Prepared::Image,
        learnt: Vec::new(),
    }
}

/// Assembles image `n` from its dependencies' outputs.
pub fn run(ctx: &Ctx<'_>, n: NodeIndex, deps: &[Dep]) -> Result<Output, ActionError> {
    assemble(ctx, n, deps).map(Output::Image)
}

/// Config and manifest of an image, from its base and its own layers.
fn assemble(ctx: &Ctx<'_>, n: NodeIndex, deps: &[Dep]) -> Result<ImageOut, ActionError> {
    let (graph, cas) = (ctx.graph, ctx.cas);
    let node = graph.node(n);
    let TargetKind::Image(spec) = &node.target.kind else {
        return Err(ActionError::Message(format!(
            "`{}` is not an image",
            node.label
        )));
    };
    let io_err = |e: std::io::Error| ActionError::Message(format!("image `{}`: {e}", node.label));
    let mut base: Option<(&ImageOut, oci_spec::image::ImageConfiguration)> = None;
    let mut own: Vec<(String, LayerDesc)> = Vec::new();
    for (edge, label, out) in deps {
        match (edge, out) {
            (EdgeKind::Base, Output::Image(img)) => {
                let bytes = cas.read(&img.config).map_err(io_err)?;
                let cfg: oci_spec::image::ImageConfiguration = serde_json::from_slice(&bytes)
                    .map_err(|e| {
                        ActionError::Message(format!(
                            "image `{}`: base config of `{label}` is not valid: {e}",
                            node.label
                        ))
                    })?;
                base = Some((img, cfg));
            }
            (EdgeKind::Layer, Output::Layer(l)) => own.push((label.clone(), l.clone())),
            _ => {}
        }
    }
    let diff_ids: Vec<_> = own.iter().map(|(_, l)| l.diff_id).collect();
    let history_labels: Vec<String> = own.iter().map(|(label, _)| label.clone()).collect();
    let config = oci::build_config(
        base.as_ref().map(|(_, c)| c),
        spec,
        &ctx.params.platform,
        &diff_ids,
        ctx.params.source_date_epoch,
        &history_labels,
    );
    let config_bytes = oci::canonical_json(&config);
    let (config_digest, config_size) = cas.put_bytes(&config_bytes).map_err(io_err)?;
    let mut layers: Vec<LayerDesc> = base
        .as_ref()
        .map(|(b, _)| b.layers.clone())
        .unwrap_or_default();
    layers.extend(own.into_iter().map(|(_, l)| l));
    let mut annotations = BTreeMap::new();
    if let Some((b, _)) = &base {
        annotations.insert(
            "org.opencontainers.image.base.digest".to_string(),
            b.manifest.to_string(),
        );
        if let Some(name) = base_name(graph, n) {
            annotations.insert("org.opencontainers.image.base.name".to_string(), name);
        }
    }
    let manifest = oci::build_manifest((config_digest, config_size), &layers, annotations);
    let (manifest_digest, manifest_size) = cas
        .put_bytes(&oci::canonical_json(&manifest))
        .map_err(io_err)?;
    Ok(ImageOut {
        manifest: manifest_digest,
        manifest_size,
        config: config_digest,
        config_size,
        layers,
    })
}

/// The canonical hash of everything in an image spec that shapes its config.
fn config_params(spec: &ImageSpec) -> String {
    params_hash("image-config", |h| {
        let opt_list = |h: &mut crate::hash::KeyHasher, name: &str, v: &Option<Vec<String>>| {
            h.field(name);
            match v {
                None => {
                    h.opt_str(None);
                }
                Some(items) => {
                    h.opt_str(Some(""));
                    h.seq(items.len());
                    for i in items {
                        h.str(i);
                    }
                }
            }
        };
        let pairs = |h: &mut crate::hash::KeyHasher, name: &str, v: &[(String, String)]| {
            h.field(name).seq(v.len());
            for (k, val) in v {
                h.str(k).str(val);
            }
        };
        let list = |h: &mut crate::hash::KeyHasher, name: &str, v: &[String]| {
            h.field(name).seq(v.len());
            for i in v {
                h.str(i);
            }
        };
        opt_list(h, "entrypoint", &spec.entrypoint);
        opt_list(h, "cmd", &spec.cmd);
        pairs(h, "env", &spec.env);
        h.field("workdir").opt_str(spec.workdir.as_deref());
        h.field("user").opt_str(spec.user.as_deref());
        list(h, "expose", &spec.expose);
        list(h, "volume", &spec.volume);
        pairs(h, "labels", &spec.labels);
        pairs(h, "annotations", &spec.annotations);
        h.field("stop-signal").opt_str(spec.stop_signal.as_deref());
    })
}

/// `org.opencontainers.image.base.name` for image `n`: the base's first tag, else its label.
fn base_name(graph: &Graph, n: NodeIndex) -> Option<String> {
    let (_, base) = graph
        .deps(n)
        .into_iter()
        .find(|(k, _)| *k == EdgeKind::Base)?;
    let node = graph.node(base);
    if let TargetKind::Image(spec) = &node.target.kind
        && let Some(tag) = spec.tags.first()
    {
        return Some(tag.value.clone());
    }
    Some(node.label.to_string())
}
