//! `imgc check [PATTERN...]`: parse and resolve everything, hold the selected images
//! to the workspace's policy, build nothing.

use super::{CmdError, Context, Loaded};
use crate::cli::CheckArgs;
use crate::report;

pub fn run(ctx: &Context, args: CheckArgs) -> Result<(), CmdError> {
    let loaded = Loaded::load(ctx)?;
    loaded.warn_without_cache();
    let roots = loaded.select(&args.patterns)?;
    let selected = loaded.graph.closure(&roots, petgraph::Direction::Outgoing);
    loaded.check_policy(&selected)?;
    super::pin::check_pinned(&loaded, &selected, None)?;
    report::result(&format!(
        "ok: {} targets checked in {} packages",
        selected.len(),
        loaded.package_count
    ));
    Ok(())
}
