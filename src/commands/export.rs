//! `imgc export LABEL -o FILE [--format docker-archive|oci-archive] [--tag REF]...`:
//! build one image and write it as an archive file (see [`crate::export`]).
//!
//! The image is built first exactly as `imgc build` would (same keys, same
//! caches, the remote cache too; nothing runs when it is up to date) but no
//! layout is written in the output directory: the archive is the output. It
//! is then streamed from the store into a temporary file beside FILE, which
//! replaces FILE only when complete; `-o -` streams it to stdout.

use super::{CmdError, Context, Loaded};
use crate::action::Output;
use crate::actions::ActionError;
use crate::cas::Cas;
use crate::cli::{ExportArgs, ExportFormat};
use crate::diag::{Code, Diag};
use crate::export::{self, ArchiveName, ExportError, Format};
use crate::label::Pattern;
use crate::report::{self, Reporter};
use crate::scheduler::Outcome;
use crate::spec::model::TargetKind;
use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};

pub fn run(ctx: &Context, args: ExportArgs) -> Result<(), CmdError> {
    let format = match args.format {
        ExportFormat::DockerArchive => Format::DockerArchive,
        ExportFormat::OciArchive => Format::OciArchive,
    };
    let to_stdout = args.output.as_os_str() == "-";
    let shown = report::escape_controls(&args.output.display().to_string()).into_owned();
    let dest = ctx.cwd.join(&args.output);
    // Refuse what cannot work before any build.
    if to_stdout {
        if std::io::stdout().is_terminal() {
            return Err(CmdError::Usage(
                "`-o -` writes the archive to stdout, which is a terminal: redirect it \
                 (`> FILE`, `| podman load`) or name a file"
                    .into(),
            ));
        }
    } else {
        export::check_destination(&dest, &shown).map_err(export_error)?;
    }
    let mut extra = BTreeSet::new();
    for t in &args.tags {
        extra.insert(ArchiveName::parse(t).map_err(|e| CmdError::Usage(format!("`--tag`: {e}")))?);
    }

    let mut loaded = Loaded::load(ctx)?;
    let pattern = Pattern::parse(&args.label, &loaded.cwd_package)
        .map_err(|e| CmdError::Usage(format!("bad label: {e}")))?;
    let Pattern::Target(_) = &pattern else {
        return Err(CmdError::Usage(format!(
            "`{}` is a pattern: `imgc export` takes the label of one image",
            report::escape_controls(&args.label)
        )));
    };
    let selected = loaded.select(std::slice::from_ref(&args.label))?;
    let [n] = selected[..] else {
        return Err(CmdError::Usage(format!(
            "`{}` selects {} targets: `imgc export` takes the label of one image",
            report::escape_controls(&args.label),
            selected.len()
        )));
    };
    let node = loaded.graph.node(n);
    let label = node.label.to_string();
    let mut names = extra;
    match &node.target.kind {
        TargetKind::Layer(_) => {
            return Err(CmdError::Usage(format!(
                "`{label}` is a layer: `imgc export` exports an image or an import \
                 (an image made of this layer: `image \"x\" {{ from \"scratch\"; layers \"{label}\" }}`)"
            )));
        }
        TargetKind::HttpFile(_) => {
            return Err(CmdError::Usage(format!(
                "`{label}` is an http-file: `imgc export` exports an image or an import \
                 (put the file in a layer with `copy \"{label}\" to=\"/path/in/image\"`)"
            )));
        }
        TargetKind::DebPackage(_) => {
            return Err(CmdError::Usage(format!(
                "`{label}` is a Debian package's layer: `imgc export` exports an image or an import \
                 (an image with this package: `image \"x\" {{ packages \"...\" }}`)"
            )));
        }
        TargetKind::Import(_) => {}
        TargetKind::Image(spec) => {
            let mut diags = Vec::new();
            for tag in &spec.tags {
                match ArchiveName::parse(&tag.value) {
                    Ok(name) => {
                        names.insert(name);
                    }
                    Err(e) => diags.push(
                        Diag::new(
                            Code::InvalidValue,
                            format!("`{label}` cannot be exported: {e}"),
                        )
                        .at(node.file, tag.span)
                        .label("not an image name with a tag")
                        .help("a `tag` is a reference like `registry.example.com/team/name:1.0`"),
                    ),
                }
            }
            if !diags.is_empty() {
                return Err(CmdError::Diagnostics {
                    sources: loaded.ws.sources.clone(),
                    diags,
                });
            }
        }
    }
    let names: Vec<ArchiveName> = names.into_iter().collect();
    if names.is_empty() {
        report::warning(&format!(
            "`{label}` has no `tag` and no `--tag` was given: the archive names no image \
             (`docker load` and `podman load` load it untagged)"
        ));
    }

    // Built as `imgc build` would build it (and held to the same policy).
    let within = loaded
        .graph
        .closure(&selected, petgraph::Direction::Outgoing);
    loaded.check_policy(&within)?;
    loaded.refuse_packages(&within)?;
    let mtime = super::build::source_date_epoch(loaded.ws.config.source_date_epoch)?;
    let settings =
        super::build::settings(ctx, &loaded, args.jobs, false, super::build::Run::BuildOnly)?;
    let mut reporter = Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone());
    let summary = super::build::run_engine(ctx, &mut loaded, &selected, settings, &mut reporter)?;
    if summary.ran > 0 || summary.failed > 0 {
        reporter.summary(&summary.totals());
    }
    if summary
        .outcomes
        .values()
        .any(|o| matches!(o, Outcome::Failed(ActionError::Env(_))))
    {
        return Err(CmdError::Env(format!(
            "`{label}` was not built: the disk is full (or a quota is exceeded); nothing exported"
        )));
    }
    let Some(Output::Image(img)) = summary.outcomes.get(&n).and_then(Outcome::output) else {
        return Err(CmdError::Failed(format!(
            "`{label}` was not built: nothing exported"
        )));
    };

    let cas_dir = super::cache::cache_dir(ctx)?;
    let cas = Cas::open(&cas_dir).map_err(|e| {
        CmdError::Env(format!(
            "cannot open the blob store in `{}`: {e}",
            cas_dir.display()
        ))
    })?;
    let write = |w: &mut dyn Write| export::write_archive(&cas, img, &names, format, mtime, w);
    let failed = |e: ExportError| match e {
        ExportError::Blob { .. } => CmdError::Failed(format!("cannot export `{label}`: {e}")),
        other => export_error(other),
    };
    if to_stdout {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        let bytes = write(&mut out).map_err(failed)?;
        report::status(&format!(
            "exported `{label}` to stdout ({}, {}): {}",
            format.name(),
            report::bytes(bytes),
            img.manifest
        ));
    } else {
        let bytes = export::write_file(&dest, &shown, write).map_err(failed)?;
        report::status(&format!(
            "exported `{label}` ({}, {})",
            format.name(),
            report::bytes(bytes)
        ));
        report::result(&format!("{label} {shown} {}", img.manifest));
    }
    Ok(())
}

/// An export problem as a command error: a destination that is no place for
/// an archive exits 2, the environment's failures 3, a damaged store 1.
fn export_error(e: ExportError) -> CmdError {
    match e {
        ExportError::Refused(m) => CmdError::Usage(m),
        ExportError::Blob { .. } => CmdError::Failed(e.to_string()),
        ExportError::Write(_) | ExportError::Destination { .. } => CmdError::Env(e.to_string()),
    }
}
