//! `imgc check [PATTERN...]`: parse and resolve everything, hold the selected images
//! to the workspace's policy, build nothing. A check whose every spec file and
//! listed directory is unchanged since the last successful one prints its result
//! again from the snapshot (see [`crate::snapshot`]).

use super::{CmdError, Context, Loaded};
use crate::cli::CheckArgs;
use crate::report;
use crate::snapshot::Replay;

pub fn run(ctx: &Context, args: CheckArgs) -> Result<(), CmdError> {
    // Taken before anything is read: the snapshot's racy-file rule compares with it.
    let start = std::time::SystemTime::now();
    let invocation = super::build::invocation(ctx, "check", &args.patterns);
    if let Some(inv) = &invocation
        && let Some(snapshot) = crate::snapshot::load(inv)
        && let Some(Replay::Check { result }) = snapshot.holds(inv)
    {
        report::result(result);
        return Ok(());
    }
    let mut loaded = Loaded::load(ctx)?;
    loaded.warn_without_cache();
    let roots = loaded.select(&args.patterns)?;
    let selected = loaded.graph.closure(&roots, petgraph::Direction::Outgoing);
    loaded.check_policy(&selected)?;
    loaded.check_lock(&selected)?;
    super::pin::check_pinned(&loaded, &selected, None)?;
    let result = format!(
        "ok: {} targets checked in {} packages",
        selected.len(),
        loaded.package_count
    );
    report::result(&result);
    // Only what was printed above can be printed again: not after a warning.
    if let Some(inv) = &invocation {
        if loaded.index_error.is_some() || loaded.warned {
            crate::snapshot::discard(inv);
        } else {
            let recorded = std::mem::take(&mut loaded.ws.recorded);
            let _ = crate::snapshot::write(inv, start, &recorded, Replay::Check { result });
        }
    }
    Ok(())
}
