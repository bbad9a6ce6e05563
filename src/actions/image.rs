//! The image action: a config and a manifest from a base, own layers and the spec.
//!
//! Keying needs no IO: the key is the spec's config parameters plus the
//! dependencies' output digests, so it is computed on the coordinator. Running
//! reads the base's config from the CAS and stores the new config and manifest.

use super::{ActionError, Ctx, Dep, Keyed, Prepared};
use crate::action::{Components, ImageOut, Output, params_hash};
use crate::diag::{Code, Diag};
use crate::graph::{EdgeKind, Graph};
use crate::input::escape;
use crate::listing::{Listing, PathKind, Stack};
use crate::oci::{self, LayerDesc};
use crate::spec::model::{ImageSpec, TargetKind};
use petgraph::graph::NodeIndex;

/// The image recipe version: bump it whenever an image's config or manifest
/// could change for the same key components (inheritance rules, fields written,
/// checks that refuse an image). History: 2 checks layer stacks (E030); 3
/// writes the spec's annotations, inherits the base's config at the JSON level
/// (Healthcheck, Shell, OnBuild, unknown fields) and writes no label as
/// `base.name`.
pub const RECIPE: &str = "image-3";

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
            EdgeKind::Package | EdgeKind::Layer => {
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
        touched: Vec::new(),
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
    let io_err =
        |e: std::io::Error| ActionError::failed(format_args!("image `{}`", node.label), &e);
    let mut base: Option<(&ImageOut, oci::BaseConfig)> = None;
    let mut own: Vec<(String, LayerDesc)> = Vec::new();
    for (edge, label, out) in deps {
        match (edge, out) {
            (EdgeKind::Base, Output::Image(img)) => {
                let bytes = cas.read(&img.config).map_err(io_err)?;
                let cfg = oci::BaseConfig::from_slice(&bytes).map_err(|e| {
                    ActionError::Message(format!(
                        "image `{}`: base config of `{label}` is not valid: {e}",
                        node.label
                    ))
                })?;
                base = Some((img, cfg));
            }
            (EdgeKind::Package | EdgeKind::Layer, Output::Layer(l)) => {
                own.push((label.clone(), l.clone()))
            }
            _ => {}
        }
    }
    check_stack(ctx, n, spec, base.as_ref().map(|(b, _)| *b), &own)?;
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
    let base_name = base_name(graph, n);
    let annotations = oci::manifest_annotations(
        &spec.annotations,
        base.as_ref()
            .map(|(b, _)| (&b.manifest, base_name.as_deref())),
    );
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

/// Refuses an image one of whose own layers would destroy what a lower layer
/// holds ([`Stack::conflicts`]): every conflict of the image, each naming the
/// path and both layers. Layers without a listing are laid on the stack as
/// unknown (nothing of theirs can be checked).
fn check_stack(
    ctx: &Ctx<'_>,
    n: NodeIndex,
    spec: &ImageSpec,
    base: Option<&ImageOut>,
    own: &[(String, LayerDesc)],
) -> Result<(), ActionError> {
    let node = ctx.graph.node(n);
    let read = |l: &LayerDesc| -> Result<Option<Listing>, ActionError> {
        let Some(blob) = l.listing else {
            return Ok(None);
        };
        let bytes = ctx.cas.read(&blob.digest).map_err(|e| {
            ActionError::Message(format!(
                "image `{}`: listing of {}: {e}",
                node.label, l.digest
            ))
        })?;
        Listing::from_json(&bytes).map(Some).map_err(|e| {
            ActionError::Message(format!(
                "image `{}`: listing of {} is not valid: {e}",
                node.label, l.digest
            ))
        })
    };
    let mut stack = Stack::new();
    if let Some(b) = base {
        let base_label = ctx
            .graph
            .deps(n)
            .into_iter()
            .find(|(k, _)| *k == EdgeKind::Base)
            .map(|(_, d)| ctx.graph.node(d).label.to_string())
            .unwrap_or_default();
        for (i, l) in b.layers.iter().enumerate() {
            if let Some(listing) = read(l)? {
                let origin = format!("layer {} of base `{base_label}` ({})", i + 1, l.digest);
                stack.apply(&origin, &listing);
            }
        }
    }
    let mut problems = Vec::new();
    let mut span = None;
    for (label, l) in own {
        let Some(listing) = read(l)? else { continue };
        for c in stack.conflicts(&listing) {
            span = span.or_else(|| {
                spec.layers
                    .iter()
                    .find(|s| s.value.to_string() == *label)
                    .map(|s| s.span)
            });
            // Paths (and where lower symlinks lead them) can come from an
            // imported layer, named by the archive's author: escaped.
            let at = if c.resolved == c.path {
                String::new()
            } else {
                format!(
                    " (at `/{}` once lower symlinks are followed)",
                    escape(&c.resolved)
                )
            };
            problems.push(format!(
                "layer `{label}` puts a {} at `/{}`{at} where {} holds a {}: unpacked, it would {}",
                c.upper.noun(),
                escape(&c.path),
                c.lower_origin,
                c.lower.noun(),
                if c.lower == PathKind::Dir {
                    "delete that directory and everything under it"
                } else {
                    "replace it"
                },
            ));
        }
        stack.apply(&format!("layer `{label}`"), &listing);
    }
    if problems.is_empty() {
        return Ok(());
    }
    let span = span.unwrap_or(node.target.span);
    Err(ActionError::Spec(
        Diag::new(
            Code::StackConflict,
            format!("image `{}`: {}", node.label, problems.join("; ")),
        )
        .at(node.file, span)
        .help("write the entry where the lower layer's path really is (e.g. `/usr/lib/...` under a `/lib -> usr/lib` link), or change the lower layer"),
    ))
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

/// `org.opencontainers.image.base.name` for image `n`: its base's first tag.
/// None for an untagged base or an import: an imgc label is no image reference
/// (the spec may still name the base with its own annotation, see
/// [`oci::manifest_annotations`]).
fn base_name(graph: &Graph, n: NodeIndex) -> Option<String> {
    let (_, base) = graph
        .deps(n)
        .into_iter()
        .find(|(k, _)| *k == EdgeKind::Base)?;
    match &graph.node(base).target.kind {
        TargetKind::Image(spec) => spec.tags.first().map(|t| t.value.clone()),
        _ => None,
    }
}
