//! `imgc report [PATTERN...] [--output human|json|html] [-o FILE]`: how the
//! selected images share layers.
//!
//! The images are built first, exactly as `imgc build` would (same keys, same
//! caches, the remote cache too) but without writing layouts: what is cached
//! costs a lookup, so the report describes the real output of the current
//! tree, never a stale layout. The numbers are [`crate::sharing`]'s.

use super::{CmdError, Context, Loaded};
use crate::action::Output;
use crate::actions::ActionError;
use crate::cli::{ReportArgs, ReportOutput};
use crate::hash::Digest;
use crate::report::{self, Reporter};
use crate::scheduler::{Outcome, Summary};
use crate::sharing::{self, Blob, ImageBlobs};
use crate::spec::model::TargetKind;
use petgraph::graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub fn run(ctx: &Context, args: ReportArgs) -> Result<(), CmdError> {
    // Refuse a directory before any work, not after.
    let file = args.output_file.as_ref().map(|f| ctx.cwd.join(f));
    if let Some(f) = &file
        && f.is_dir()
    {
        return Err(CmdError::Usage(format!(
            "`-o {}` is a directory: name a file to write the report to",
            args.output_file.as_deref().unwrap_or(f).display()
        )));
    }
    let mut loaded = Loaded::load(ctx)?;
    let images = loaded.select_images(&args.patterns, "report", "reports on")?;

    let settings =
        super::build::settings(ctx, &loaded, args.jobs, false, super::build::Run::BuildOnly)?;
    let mut reporter = Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone());
    let summary = super::build::run_engine(ctx, &mut loaded, &images, settings, &mut reporter)?;
    check_built(&summary)?;
    if summary.ran > 0 {
        reporter.summary(&summary.totals());
    }

    let (blobs, targets) = collect(&loaded, &images, &summary)?;
    let sharing = sharing::compute(&blobs, &targets);
    let text = match args.output {
        ReportOutput::Human => sharing::human::render(&sharing),
        ReportOutput::Json => sharing.to_json_text(),
        ReportOutput::Html => sharing::html::render(&sharing),
    };
    match file {
        None => report::result(text.trim_end()),
        Some(path) => write(&path, args.output_file.as_deref().unwrap_or(&path), &text)?,
    }
    Ok(())
}

/// Fails unless every selected image was built.
fn check_built(summary: &Summary) -> Result<(), CmdError> {
    let out_of_room = summary
        .outcomes
        .values()
        .filter(|o| matches!(o, Outcome::Failed(ActionError::Env(_))))
        .count();
    let failed = summary
        .outcomes
        .values()
        .filter(|o| matches!(o, Outcome::Failed(_)))
        .count();
    let s = |n: usize| if n == 1 { "" } else { "s" };
    if out_of_room > 0 {
        return Err(CmdError::Env(format!(
            "{out_of_room} target{} failed because the disk is full (or a quota is exceeded): no report",
            s(out_of_room)
        )));
    }
    if failed > 0 {
        return Err(CmdError::Failed(format!(
            "{failed} target{} failed: no report until the selected images build",
            s(failed)
        )));
    }
    Ok(())
}

/// The blobs of each selected image, and which targets produce each layer blob.
type Collected = (Vec<ImageBlobs>, BTreeMap<Digest, BTreeSet<String>>);

fn collect(
    loaded: &Loaded,
    images: &[NodeIndex],
    summary: &Summary,
) -> Result<Collected, CmdError> {
    let g = &loaded.graph;
    let mut targets: BTreeMap<Digest, BTreeSet<String>> = BTreeMap::new();
    for (n, outcome) in &summary.outcomes {
        let node = g.node(*n);
        match (outcome.output(), &node.target.kind) {
            (Some(Output::Layer(l)), _) => {
                targets
                    .entry(l.digest)
                    .or_default()
                    .insert(node.label.to_string());
            }
            (Some(Output::Image(i)), TargetKind::Import(_)) => {
                for l in &i.layers {
                    targets
                        .entry(l.digest)
                        .or_default()
                        .insert(node.label.to_string());
                }
            }
            _ => {}
        }
    }
    let mut blobs = Vec::new();
    for n in images {
        let label = g.node(*n).label.to_string();
        let Some(Output::Image(i)) = summary.outcomes.get(n).and_then(Outcome::output) else {
            return Err(CmdError::Failed(format!(
                "`{label}` was not built: no report"
            )));
        };
        blobs.push(ImageBlobs {
            label,
            manifest: Blob {
                digest: i.manifest,
                size: i.manifest_size,
            },
            config: Blob {
                digest: i.config,
                size: i.config_size,
            },
            layers: i
                .layers
                .iter()
                .map(|l| Blob {
                    digest: l.digest,
                    size: l.size,
                })
                .collect(),
        });
    }
    Ok((blobs, targets))
}

/// Writes the report to `path` (the user's choice, like any command's `-o`).
/// `shown` is the path as the user gave it.
fn write(path: &Path, shown: &Path, text: &str) -> Result<(), CmdError> {
    let shown = report::escape_controls(&shown.display().to_string()).into_owned();
    std::fs::write(path, text)
        .map_err(|e| CmdError::Env(format!("cannot write the report to `{shown}`: {e}")))?;
    report::status(&format!("wrote the report to `{shown}`"));
    Ok(())
}
