//! `imgc build [PATTERN...]`: build the selected targets and write their images.

use super::{CmdError, Context, Loaded};
use crate::cli::{BuildArgs, MessageFormat};
use crate::layer::LayerFormat;
use crate::report::Reporter;
use crate::scheduler::{Engine, Params, Settings, Summary};
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

/// Settings from the workspace config and the command line.
pub fn settings(
    loaded: &Loaded,
    jobs: Option<usize>,
    keep_going: bool,
    dry_run: bool,
) -> Result<Settings, CmdError> {
    let jobs = match jobs {
        Some(0) => return Err(CmdError::Usage("`--jobs` must be at least 1".into())),
        Some(j) => j,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let config = &loaded.ws.config;
    Ok(Settings {
        jobs,
        keep_going,
        params: Params {
            source_date_epoch: source_date_epoch(config.source_date_epoch)?,
            format: LayerFormat::default_for(config.compression),
            platform: config.platform.clone(),
        },
        output_dir: Some(loaded.ws.root.join(&config.output_dir)),
        dry_run,
        before_run: None,
    })
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
    let mut loaded = Loaded::load(ctx)?;
    let selected = loaded.select(&args.patterns)?;
    let settings = settings(&loaded, args.jobs, args.keep_going, false)?;
    let mut reporter = Reporter::new(
        args.message_format == MessageFormat::Json,
        &loaded.ws.root,
        loaded.ws.sources.clone(),
    );
    let summary = run_engine(ctx, &mut loaded, &selected, settings, &mut reporter)?;
    reporter.summary(
        summary.images,
        summary.ran,
        summary.cached,
        summary.failed,
        summary.elapsed,
    );
    if summary.failed > 0 {
        return Err(CmdError::Failed(format!(
            "{} target{} failed",
            summary.failed,
            if summary.failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}
