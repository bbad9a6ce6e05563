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
    let mut stores = super::cache::Stores::open_with(ctx, loaded.index.take())?;
    if let Some(w) = stores.warning.take() {
        crate::report::warning(&w);
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
    let mut loaded = Loaded::load(ctx)?;
    let selected = loaded.select(&args.patterns)?;
    check_policy(&loaded, &selected)?;
    check_pinned(&loaded, &selected, Some(ctx))?;
    let settings = settings(ctx, &loaded, args.jobs, args.keep_going, Run::Build)?;
    let mut reporter = Reporter::new(
        args.message_format == MessageFormat::Json,
        &loaded.ws.root,
        loaded.ws.sources.clone(),
    );
    if loaded.selects_everything(&args.patterns)
        && let Some(out) = &settings.output_dir
    {
        let (removed, kept) = out
            .remove_stale(&loaded.image_layouts())
            .map_err(output_error)?;
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
    reporter.summary(&summary.totals());
    let out_of_room = summary
        .outcomes
        .values()
        .filter(|o| matches!(o, Outcome::Failed(ActionError::Env(_))))
        .count();
    if out_of_room > 0 {
        return Err(CmdError::Env(format!(
            "{out_of_room} target{} failed because the disk is full (or a quota is exceeded)",
            if out_of_room == 1 { "" } else { "s" }
        )));
    }
    if summary.failed > 0 {
        return Err(CmdError::Failed(format!(
            "{} target{} failed",
            summary.failed,
            if summary.failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// `imgc build --dry-run`: the engine's dry run over the selection, reported as
/// a [`Plan`]. Nothing runs and nothing is written: no layout, no blob, no row of
/// the cache (not even the parse cache); the remote cache is not consulted.
/// Exits 1 if a target cannot be planned (the build would fail there).
/// The policy of imgc.kdl over the selection and what it depends on: a build
/// (and its plan) refuses images the policy forbids before any work.
fn check_policy(loaded: &Loaded, selected: &[NodeIndex]) -> Result<(), CmdError> {
    loaded.check_policy(
        &loaded
            .graph
            .closure(selected, petgraph::Direction::Outgoing),
    )
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
