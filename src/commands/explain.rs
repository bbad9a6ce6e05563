//! `imgc explain LABEL`: why a target would rebuild, without building anything.

use super::{CmdError, Context, Loaded};
use crate::cli::ExplainArgs;
use crate::label::Pattern;
use crate::report::{self, Reporter};
use crate::scheduler::Outcome;
use petgraph::Direction;

pub fn run(ctx: &Context, args: ExplainArgs) -> Result<(), CmdError> {
    let mut loaded = Loaded::load_read_only(ctx)?;
    let pattern = Pattern::parse(&args.label, &loaded.cwd_package)
        .map_err(|e| CmdError::Usage(format!("bad label: {e}")))?;
    let Pattern::Target(_) = &pattern else {
        return Err(CmdError::Usage(format!(
            "`{}` is a pattern: explain takes one label",
            args.label
        )));
    };
    let selected = loaded.select(std::slice::from_ref(&args.label))?;
    loaded.refuse_packages(&loaded.graph.closure(&selected, Direction::Outgoing))?;
    let settings = super::build::settings(ctx, &loaded, None, true, super::build::Run::DryRun)?;
    let mut reporter = Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone()).quiet();
    let summary = super::build::run_engine(ctx, &mut loaded, &selected, settings, &mut reporter)?;
    let g = &loaded.graph;
    let mut lines = Vec::new();
    for n in g.topo_order(&g.closure(&selected, Direction::Outgoing)) {
        let label = &g.node(n).label;
        let line = match summary.outcomes.get(&n) {
            Some(Outcome::Cached(o)) => format!("{label}: up to date ({})", o.digest()),
            Some(Outcome::WouldRun(reason)) => {
                let verb = match g.node(n).target.kind {
                    crate::spec::model::TargetKind::HttpFile(_) => "download",
                    _ => "rebuild",
                };
                format!("{label}: would {verb}: {reason}")
            }
            Some(Outcome::Skipped(why)) => format!("{label}: cannot tell: {why}"),
            Some(Outcome::Failed(e)) => format!("{label}: cannot tell: {e}"),
            Some(Outcome::Ran(_)) | None => continue,
        };
        lines.push(line);
    }
    report::result(&lines.join("\n"));
    Ok(())
}
