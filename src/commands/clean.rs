//! `imgc clean [--stale] [--cache]`: remove what imgc wrote in the output
//! directory (only that: see [`crate::output`]), or only the layouts of images
//! that no longer exist; with `--cache`, also the local cache.

use super::{CmdError, Context, Loaded};
use crate::cli::CleanArgs;
use crate::output::OutputDir;
use crate::report;
use crate::workspace;

pub fn run(ctx: &Context, args: CleanArgs) -> Result<(), CmdError> {
    let root = workspace::find_root(&ctx.cwd)?;
    if args.stale {
        // Which images exist needs the whole workspace, without errors.
        let loaded = Loaded::load(ctx)?;
        let out = OutputDir::new(&loaded.ws.root, &loaded.ws.config.output_dir);
        if let Some(dir) = out.open_existing().map_err(super::build::output_error)? {
            let (removed, kept) = dir
                .remove_stale(&loaded.image_layouts())
                .map_err(super::build::output_error)?;
            for rel in &removed {
                report::result(&format!("removed the stale layout `{}`", dir.show(rel)));
            }
            warn_kept(&kept);
            if removed.is_empty() {
                report::result(&format!("no stale layouts in `{}`", dir.shown()));
            }
        }
    } else {
        let (ws, _) = workspace::load(&root, None)?;
        let out = OutputDir::new(&ws.root, &ws.config.output_dir);
        match out.open_existing().map_err(super::build::output_error)? {
            Some(dir) => {
                let shown = dir.shown().to_string();
                let report = dir.clean().map_err(super::build::output_error)?;
                warn_kept(&report.kept);
                let n = report.layouts.len();
                let what = format!("{n} layout{}", if n == 1 { "" } else { "s" });
                if report.removed_root {
                    report::result(&format!("removed `{shown}` ({what})"));
                } else {
                    report::result(&format!("removed {what} from `{shown}`"));
                }
            }
            None => report::result(&format!("nothing to remove in `{}`", out.shown())),
        }
    }
    if args.cache {
        let dir = super::cache::cache_root(ctx)?.join(super::cache::CACHE_VERSION_DIR);
        remove(&dir)?;
        report::result(&format!("removed {}", dir.display()));
    }
    Ok(())
}

fn warn_kept(kept: &[String]) {
    for k in kept {
        report::warning(&format!("kept `{k}`: imgc did not make it"));
    }
}

fn remove(dir: &std::path::Path) -> Result<(), CmdError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CmdError::Env(format!(
            "cannot remove `{}`: {e}",
            dir.display()
        ))),
    }
}
