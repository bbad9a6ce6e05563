//! `imgc query targets|deps|rdeps PATTERN... [--output label|json|dot]`, and
//! `imgc query package NAME [--below VERSION] [PATTERN...]`: the images whose layers
//! hold a locked Debian package (their own package layers, a layer with `packages`,
//! or their base chain's), read from the graph the lock adds; nothing is built.
//!
//! `rdeps` also takes paths (see [`crate::affected::is_path_argument`]): the
//! layers and imports that read a path ([`crate::affected::Readers`]) are
//! its roots, as targets are for a pattern.

use super::{CmdError, Context, Loaded};
use crate::affected;
use crate::cli::{QueryCommand, QueryOutput, TargetKindFilter};
use crate::diag::{Code, Diag, Sources};
use crate::graph::{EdgeKind, Graph};
use crate::label::Pattern;
use crate::report;
use crate::spec::model::TargetKind;
use petgraph::Direction;
use petgraph::graph::NodeIndex;
use std::collections::BTreeSet;
use std::fmt::Write as _;

pub fn run(ctx: &Context, q: QueryCommand) -> Result<(), CmdError> {
    let (args, dir) = match q {
        QueryCommand::Targets(a) => (a, None),
        QueryCommand::Deps(a) => (a, Some(Direction::Outgoing)),
        QueryCommand::Rdeps(a) => (a, Some(Direction::Incoming)),
        QueryCommand::Package(a) => return package(ctx, a),
    };
    let loaded = Loaded::load(ctx)?;
    loaded.warn_without_cache();
    let (paths, patterns): (Vec<&String>, Vec<&String>) = args
        .patterns
        .iter()
        .partition(|a| dir == Some(Direction::Incoming) && affected::is_path_argument(a));
    let mut roots = if patterns.is_empty() {
        Vec::new()
    } else {
        loaded.select(&patterns.into_iter().cloned().collect::<Vec<_>>())?
    };
    if !paths.is_empty() {
        roots.extend(path_roots(ctx, &loaded, &paths)?);
    }
    let set: BTreeSet<NodeIndex> = match dir {
        None => roots.into_iter().collect(),
        Some(d) => loaded.graph.closure(&roots, d),
    };
    let g = &loaded.graph;
    let mut result: Vec<NodeIndex> = set
        .into_iter()
        .filter(|n| kind_matches(g, *n, args.kind))
        .collect();
    result.sort_by(|a, b| g.node(*a).label.cmp(&g.node(*b).label));
    report::result(render(g, &result, args.output).trim_end());
    Ok(())
}

/// `imgc query package`: each selected image holding `args.package` (in the
/// closure of its layers and base images), with the locked version, optionally
/// only below `--below` in dpkg's order.
fn package(ctx: &Context, args: crate::cli::QueryPackageArgs) -> Result<(), CmdError> {
    let below = args
        .below
        .as_deref()
        .map(crate::debian::Version::parse)
        .transpose()
        .map_err(|why| CmdError::Usage(format!("--below: not a Debian version: {why}")))?;
    let loaded = Loaded::load(ctx)?;
    loaded.warn_without_cache();
    let patterns = if args.patterns.is_empty() {
        vec!["//...".to_string()]
    } else {
        args.patterns.clone()
    };
    let roots = loaded.select(&patterns)?;
    let g = &loaded.graph;
    let mut images: Vec<NodeIndex> = roots
        .into_iter()
        .filter(|n| g.node(*n).is_image())
        .collect();
    images.sort_by(|a, b| g.node(*a).label.cmp(&g.node(*b).label));
    images.dedup();
    let mut found = Vec::new();
    for img in images {
        let mut versions: BTreeSet<(String, String)> = BTreeSet::new();
        for n in g.closure(&[img], Direction::Outgoing) {
            if let TargetKind::DebPackage(p) = &g.node(n).target.kind
                && p.name == args.package
            {
                let old = match (&below, crate::debian::Version::parse(&p.version)) {
                    (Some(limit), Ok(v)) => v.dpkg_cmp(limit) == std::cmp::Ordering::Less,
                    (Some(_), Err(_)) => false,
                    (None, _) => true,
                };
                if old {
                    versions.insert((p.repository.clone(), p.version.clone()));
                }
            }
        }
        for (repository, version) in versions {
            found.push((g.node(img).label.to_string(), repository, version));
        }
    }
    let text = match args.output {
        QueryOutput::Dot => {
            return Err(CmdError::Usage(
                "`query package` prints labels or json, not dot".into(),
            ));
        }
        QueryOutput::Json => {
            let v: Vec<serde_json::Value> = found
                .iter()
                .map(|(image, repository, version)| {
                    serde_json::json!({
                        "image": image,
                        "package": args.package,
                        "repository": repository,
                        "version": version,
                    })
                })
                .collect();
            String::from_utf8_lossy(&crate::oci::canonical_json(&serde_json::Value::Array(v)))
                .into_owned()
        }
        QueryOutput::Label => found
            .iter()
            .map(|(image, _, version)| format!("{image} {} {version}\n", args.package))
            .collect(),
    };
    // No image holds it: no line at all (as `grep` prints nothing).
    if !text.is_empty() {
        report::result(text.trim_end());
    }
    Ok(())
}

/// The layers and imports that read each path; a path that none reads is an
/// error (as a pattern that selects nothing is).
fn path_roots(
    ctx: &Context,
    loaded: &Loaded,
    paths: &[&String],
) -> Result<Vec<NodeIndex>, CmdError> {
    let args: Vec<std::path::PathBuf> = paths.iter().map(std::path::PathBuf::from).collect();
    let opened = super::affected::Opened::new(&loaded.ws.root)?;
    let readers = opened.readers(&loaded.graph);
    let mut roots = Vec::new();
    let mut diags = Vec::new();
    for (arg, changed) in opened.changed_paths(ctx, &args)? {
        let Some(changed) = changed else {
            return Err(CmdError::Usage(format!(
                "`{}` is outside the workspace",
                arg.display()
            )));
        };
        let found = readers.reading(&changed);
        if found.is_empty() {
            diags.push(nothing_reads(loaded, &arg.to_string_lossy(), &changed.path));
        }
        roots.extend(found);
    }
    if !diags.is_empty() {
        return Err(CmdError::Diagnostics {
            sources: Sources::default(),
            diags,
        });
    }
    Ok(roots)
}

fn nothing_reads(loaded: &Loaded, arg: &str, rel: &str) -> Diag {
    let shown = if rel.is_empty() { "." } else { rel };
    let d = Diag::new(Code::NoMatch, format!("no layer or import reads `{shown}`"));
    // `api` is a path to rdeps; the user may have meant the target.
    match Pattern::parse(arg, &loaded.cwd_package) {
        Ok(Pattern::Target(l)) if loaded.graph.get(&l).is_some() => d.help(format!(
            "arguments without `//` or `:` are paths; for the target, write `{l}`"
        )),
        _ => d.help("paths are relative to the current directory"),
    }
}

fn kind_matches(g: &Graph, n: NodeIndex, filter: Option<TargetKindFilter>) -> bool {
    matches!(
        (filter, &g.node(n).target.kind),
        (None, _)
            | (Some(TargetKindFilter::Layer), TargetKind::Layer(_))
            | (Some(TargetKindFilter::Image), TargetKind::Image(_))
            | (Some(TargetKindFilter::Import), TargetKind::Import(_))
            | (Some(TargetKindFilter::HttpFile), TargetKind::HttpFile(_))
    )
}

fn edge_name(e: EdgeKind) -> &'static str {
    match e {
        EdgeKind::Base => "from",
        EdgeKind::Layer => "layer",
        EdgeKind::Package => "package",
        EdgeKind::Copy => "copy",
    }
}

/// Renders the result; pure, for tests.
pub fn render(g: &Graph, nodes: &[NodeIndex], output: QueryOutput) -> String {
    let mut out = String::new();
    match output {
        QueryOutput::Label => {
            for n in nodes {
                let _ = writeln!(out, "{}", g.node(*n).label);
            }
        }
        QueryOutput::Json => {
            let items: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| {
                    let node = g.node(*n);
                    let deps: Vec<serde_json::Value> = g
                        .deps(*n)
                        .into_iter()
                        .map(|(k, d)| serde_json::json!({"label": g.node(d).label.to_string(), "edge": edge_name(k)}))
                        .collect();
                    serde_json::json!({"label": node.label.to_string(), "kind": node.kind_name(), "deps": deps})
                })
                .collect();
            out = serde_json::to_string_pretty(&items).unwrap_or_default();
        }
        QueryOutput::Dot => {
            let members: BTreeSet<NodeIndex> = nodes.iter().copied().collect();
            out.push_str("digraph imgc {\n  rankdir=BT;\n  node [fontname=\"monospace\"];\n");
            for n in nodes {
                let node = g.node(*n);
                let shape = match node.target.kind {
                    TargetKind::Image(_) => "box",
                    TargetKind::Layer(_) => "note",
                    TargetKind::Import(_) => "cylinder",
                    TargetKind::HttpFile(_) => "component",
                    TargetKind::DebPackage(_) => "folder",
                };
                let _ = writeln!(out, "  \"{}\" [shape={shape}];", node.label);
            }
            for n in nodes {
                for (k, d) in g.deps(*n) {
                    if members.contains(&d) {
                        let _ = writeln!(
                            out,
                            "  \"{}\" -> \"{}\" [label=\"{}\"];",
                            g.node(*n).label,
                            g.node(d).label,
                            edge_name(k)
                        );
                    }
                }
            }
            out.push_str("}\n");
        }
    }
    out
}
