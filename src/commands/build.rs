//! `imgc build [PATTERN...]`: build the selected targets and write their images.

use super::{CmdError, Context, Loaded};
use crate::actions::ActionError;
use crate::actions::import::Registries;
use crate::cli::{BuildArgs, MessageFormat};
use crate::layer::LayerFormat;
use crate::plan::{Plan, Step};
use crate::report::{Event, Reporter};
use crate::scheduler::{Engine, Outcome, Params, Settings, Summary};
use petgraph::graph::NodeIndex;

/// The source-date-epoch in force: `SOURCE_DATE_EPOCH` overrides the workspace's.
pub fn source_date_epoch(configured: u64) -> Result<u64, CmdError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| {
            CmdError::Usage(format!(
                "SOURCE_DATE_EPOCH must be a non-negative integer (seconds), got `{v}`"
            ))
        }),
        _ => Ok(configured),
    }
}

/// What a run of the engine is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Build and write the selected images' layouts (`imgc build`).
    Build,
    /// Build, but write no layout (`imgc report`).
    BuildOnly,
    /// Key and look up only: run, write and fetch nothing (`explain`, `--dry-run`).
    DryRun,
}

/// Settings from the workspace config and the command line.
pub fn settings(
    ctx: &super::Context,
    loaded: &Loaded,
    jobs: Option<usize>,
    keep_going: bool,
    run: Run,
) -> Result<Settings, CmdError> {
    let jobs = super::jobs(jobs)?;
    let config = &loaded.ws.config;
    let dry_run = run == Run::DryRun;
    Ok(Settings {
        jobs,
        keep_going,
        params: Params {
            source_date_epoch: source_date_epoch(config.source_date_epoch)?,
            format: LayerFormat::default_for(config.compression),
            platform: config.platform.clone(),
        },
        output_dir: if run == Run::Build {
            let out = crate::output::OutputDir::new(&loaded.ws.root, &config.output_dir);
            Some(std::sync::Arc::new(
                out.open_for_write().map_err(output_error)?,
            ))
        } else {
            None
        },
        dry_run,
        before_run: None,
        remote: if dry_run {
            None
        } else {
            super::open_remote_cache(ctx, config.remote_cache.as_deref(), &loaded.ws.root)?
        },
        registries: std::sync::Arc::new(if dry_run {
            Registries::unavailable("a dry run does not reach registries")
        } else {
            let insecure = ctx.registry.insecure_registry.clone();
            Registries::new(move || super::pin::client(&insecure))
        }),
    })
}

/// A problem with the output directory as a command error: refusals exit 1 (the
/// workspace must be fixed), IO failures 3.
pub fn output_error(e: crate::output::OutputError) -> CmdError {
    match e.io_error() {
        Some(_) => CmdError::Env(e.to_string()),
        None => CmdError::Failed(e.to_string()),
    }
}

/// Opens the stores (reusing the index [`Loaded`] opened) and runs the engine
/// over `selected`: the part `build` and `explain` share.
pub fn run_engine(
    ctx: &Context,
    loaded: &mut Loaded,
    selected: &[NodeIndex],
    settings: Settings,
    reporter: &mut Reporter,
) -> Result<Summary, CmdError> {
    if loaded.index.is_none()
        && let Some(why) = loaded.index_error.take()
    {
        return Err(CmdError::Env(why));
    }
    reporter.say("opening the cache");
    let mut stores = super::cache::Stores::open_with(ctx, loaded.index.take())?;
    if let Some(w) = stores.warning.take() {
        crate::report::warning(&w);
        loaded.warned = true;
    }
    Engine {
        root: &loaded.ws.root,
        graph: &loaded.graph,
        cas: &stores.cas,
        cache: &mut stores.cache,
        settings,
        reporter,
    }
    .build(selected)
    .map_err(|e| CmdError::Env(e.to_string()))
}

pub fn run(ctx: &Context, args: BuildArgs) -> Result<(), CmdError> {
    if args.dry_run {
        return plan(ctx, args);
    }
    // Taken before anything is read: the snapshot's racy-file rule compares with it.
    let start = std::time::SystemTime::now();
    let json = args.message_format == MessageFormat::Json;
    // The fast path answers only what the full path would: a bad `-j` is refused first.
    super::jobs(args.jobs)?;
    let invocation = invocation(ctx, "build", &args.patterns);
    if let Some(inv) = &invocation {
        // The first word on a terminal, within milliseconds whatever the path: a
        // plain line (no thread) that the fast path's output or the spinner below
        // takes over.
        if !json {
            crate::report::announce("checking what changed since the last build");
        }
        if replay(inv, json) {
            return Ok(());
        }
    }
    // Until the reporter's bar counts actions: say what is going on, with counts.
    let progress = if json {
        crate::report::Progress::hidden()
    } else {
        crate::report::Progress::status("loading the workspace")
    };
    let mut loaded = Loaded::load_showing(ctx, &progress)?;
    progress.say(&format!(
        "{} packages, {} targets: selecting targets, checking the policy and pins",
        loaded.package_count,
        loaded.graph.len()
    ));
    let selected = loaded.select(&args.patterns)?;
    check_policy(&loaded, &selected)?;
    check_pinned(&loaded, &selected, Some(ctx))?;
    let settings = settings(ctx, &loaded, args.jobs, args.keep_going, Run::Build)?;
    let remote_in_force = settings.remote.is_some();
    // The reporter takes the status line over, and its bar counts the actions.
    progress.hand_over();
    let mut reporter = Reporter::new(json, &loaded.ws.root, loaded.ws.sources.clone());
    let mut swept = false;
    let mut listed_outputs = None;
    if loaded.selects_everything(&args.patterns)
        && let Some(out) = &settings.output_dir
    {
        reporter.say("looking for stale layouts in the output directory");
        let (removed, kept, listed) = out
            .remove_stale_listing(&loaded.image_layouts())
            .map_err(output_error)?;
        swept = !removed.is_empty() || !kept.is_empty();
        listed_outputs = Some(listed);
        for rel in removed {
            reporter.event(&Event::Removed {
                path: &out.path().join(rel),
            });
        }
        for k in kept {
            let message = format!("kept `{k}`: imgc did not make it");
            reporter.event(&Event::Warning { message: &message });
        }
    }
    let summary = run_engine(ctx, &mut loaded, &selected, settings, &mut reporter)?;
    let out_of_room = summary
        .outcomes
        .values()
        .filter(|o| matches!(o, Outcome::Failed(ActionError::Env(_))))
        .count();
    let failure = if out_of_room > 0 {
        Some(CmdError::Env(format!(
            "{out_of_room} target{} failed because the disk is full (or a quota is exceeded)",
            if out_of_room == 1 { "" } else { "s" }
        )))
    } else if summary.failed > 0 {
        Some(CmdError::Failed(format!(
            "{} target{} failed",
            summary.failed,
            if summary.failed == 1 { "" } else { "s" }
        )))
    } else {
        None
    };
    if failure.is_none()
        && let Some(inv) = &invocation
    {
        if summary.ran > 0
            || swept
            || remote_in_force
            || loaded.warned
            || !summary.warnings.is_empty()
            || !summary.remote_warnings.is_empty()
        {
            crate::snapshot::discard(inv);
        } else {
            // Before the summary, under the bar: stat-ing every path the build
            // depended on takes a while in a large workspace.
            reporter.say("recording what the build depended on, for the next no-op build");
            write_snapshot(inv, start, &mut loaded, &summary, listed_outputs);
        }
    }
    reporter.summary(&summary.totals());
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The invocation of `command` a snapshot answers: `None` (no fast path) if
/// there is no workspace or cache directory to find.
pub(super) fn invocation(
    ctx: &Context,
    command: &str,
    patterns: &[String],
) -> Option<crate::snapshot::Invocation> {
    let root = crate::workspace::find_root(&ctx.cwd).ok()?;
    let cache_dir = super::cache::cache_dir(ctx).ok()?;
    let mut pats = Vec::new();
    for p in patterns {
        pats.extend_from_slice(&(p.len() as u64).to_le_bytes());
        pats.extend_from_slice(p.as_bytes());
    }
    let epoch = std::env::var_os("SOURCE_DATE_EPOCH");
    let epoch = match &epoch {
        Some(v) => [b"=".as_slice(), v.as_encoded_bytes()].concat(),
        None => Vec::new(),
    };
    let remote = format!("{:?}", ctx.remote);
    // Relative patterns resolve from the directory imgc runs in: the key holds it
    // absolute (`-C sub` from two places is two invocations).
    let cwd = std::path::absolute(&ctx.cwd).ok()?;
    use std::os::unix::ffi::OsStrExt;
    crate::snapshot::Invocation::new(
        &cache_dir,
        &root,
        command,
        &[
            ("cwd", cwd.as_os_str().as_bytes()),
            ("patterns", &pats),
            ("source-date-epoch", &epoch),
            ("remote", remote.as_bytes()),
        ],
    )
}

/// The fast path: if the snapshot of `inv` holds, prints what the build it
/// describes printed and returns `true`; else `false` (nothing printed).
fn replay(inv: &crate::snapshot::Invocation, json: bool) -> bool {
    use crate::snapshot::Replay;
    let begun = std::time::Instant::now();
    let Some(snapshot) = crate::snapshot::load(inv) else {
        return false;
    };
    let Some(Replay::Build {
        planned,
        images,
        finished,
        materialized,
    }) = snapshot.holds(inv)
    else {
        return false;
    };
    let mut reporter = Reporter::new(json, &inv.root, Default::default()).buffered();
    reporter.event(&Event::Planned {
        actions: *planned as usize,
    });
    for f in finished {
        reporter.event(&Event::Finished {
            label: &f.label,
            kind: &f.kind,
            key: &f.key,
            source: crate::report::Source::Local,
            digest: &f.digest,
            duration: std::time::Duration::ZERO,
            size: None,
        });
    }
    for m in materialized {
        reporter.event(&Event::Materialized {
            label: &m.label,
            path: &m.path,
            digest: &m.digest,
        });
    }
    reporter.summary(&crate::report::Totals {
        images: *images as usize,
        cached: finished.len(),
        elapsed: begun.elapsed(),
        snapshot: true,
        ..Default::default()
    });
    true
}

/// Writes the snapshot of a build that ran nothing: every path it depended on
/// (see [`crate::snapshot`]) and what it printed. A failure to write is no
/// failure of the build: the next one takes the full path.
fn write_snapshot(
    inv: &crate::snapshot::Invocation,
    start: std::time::SystemTime,
    loaded: &mut Loaded,
    summary: &Summary,
    listed_outputs: Option<Vec<String>>,
) {
    use crate::snapshot::{Finished, Materialized, Replay};
    let root = loaded.ws.root.clone();
    let mut rec = std::mem::take(&mut loaded.ws.recorded);
    for (path, followed) in &summary.touched {
        if *followed {
            rec.ws_followed(&root, path);
        } else {
            rec.ws(&root, path);
        }
    }
    let output_dir = &loaded.ws.config.output_dir;
    for rel in listed_outputs.unwrap_or_default() {
        rec.ws(&root, std::path::Path::new(output_dir).join(rel));
    }
    let mut materialized = Vec::new();
    for (n, (path, digest)) in &summary.layouts {
        // The directory's mtime covers its mark and `blobs` (removed, replaced or
        // added to); `blobs/sha256`'s covers blobs added or removed; the CAS
        // files (below) cover blobs edited in place through their hard links.
        for member in ["", "oci-layout", "index.json", "blobs/sha256"] {
            rec.ws(&root, path.join(member));
        }
        materialized.push((loaded.graph.node(*n).label.clone(), path.clone(), *digest));
    }
    materialized.sort_by(|a, b| a.0.cmp(&b.0));
    rec.outside.extend(summary.blob_paths.iter().cloned());
    let mut finished = Vec::new();
    for (n, outcome) in &summary.outcomes {
        let (Some(output), Some(key)) = (outcome.output(), summary.keys.get(n)) else {
            // Not a cache hit: nothing a replay could print.
            crate::snapshot::discard(inv);
            return;
        };
        let node = loaded.graph.node(*n);
        finished.push(Finished {
            label: node.label.clone(),
            kind: node.kind_name().to_string(),
            key: *key,
            digest: output.digest(),
        });
    }
    let replay = Replay::Build {
        planned: summary.outcomes.len() as u64,
        images: summary.images as u64,
        finished,
        materialized: materialized
            .into_iter()
            .map(|(label, path, digest)| Materialized {
                label,
                path,
                digest,
            })
            .collect(),
    };
    let _ = crate::snapshot::write(inv, start, &rec, replay);
}

/// `imgc build --dry-run`: the engine's dry run over the selection, reported as
/// a [`Plan`]. Nothing runs and nothing is written: no layout, no blob, no row of
/// the cache (not even the parse cache); the remote cache is not consulted.
/// Exits 1 if a target cannot be planned (the build would fail there).
/// The policy of imgc.kdl over the selection and what it depends on: a build
/// (and its plan) refuses images the policy forbids before any work.
fn check_policy(loaded: &Loaded, selected: &[NodeIndex]) -> Result<(), CmdError> {
    let within = loaded
        .graph
        .closure(selected, petgraph::Direction::Outgoing);
    loaded.check_policy(&within)?;
    loaded.refuse_packages(&within)
}

/// The `registry` imports the selection builds on must be pinned (see
/// [`super::pin::check_pinned`]); `ask` lets the help name each tag's digest.
fn check_pinned(
    loaded: &Loaded,
    selected: &[NodeIndex],
    ask: Option<&Context>,
) -> Result<(), CmdError> {
    let within = loaded
        .graph
        .closure(selected, petgraph::Direction::Outgoing);
    super::pin::check_pinned(loaded, &within, ask)
}

fn plan(ctx: &Context, args: BuildArgs) -> Result<(), CmdError> {
    let mut loaded = Loaded::load_read_only(ctx)?;
    let selected = loaded.select(&args.patterns)?;
    check_policy(&loaded, &selected)?;
    // A dry run never touches the network: no digest in the help.
    check_pinned(&loaded, &selected, None)?;
    // Keep going: a plan lists every target, also past one that cannot be keyed.
    let settings = settings(ctx, &loaded, args.jobs, true, Run::DryRun)?;
    let json = args.message_format == MessageFormat::Json;
    let mut reporter = Reporter::new(json, &loaded.ws.root, loaded.ws.sources.clone());
    if !json {
        reporter = reporter.quiet();
    }
    let summary = run_engine(ctx, &mut loaded, &selected, settings, &mut reporter)?;
    let plan = Plan::new(&loaded.graph, &summary.outcomes);
    reporter.event(&Event::Plan { plan: &plan });
    match plan.count(Step::Fail) {
        0 => Ok(()),
        n => Err(CmdError::Failed(format!(
            "{n} target{} cannot be planned: the build would fail",
            if n == 1 { "" } else { "s" }
        ))),
    }
}
