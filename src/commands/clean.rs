//! `imgc clean [--cache]`: remove the output directory (and the local cache).

use super::{CmdError, Context};
use crate::cli::CleanArgs;
use crate::report;
use crate::workspace;

pub fn run(ctx: &Context, args: CleanArgs) -> Result<(), CmdError> {
    let root = workspace::find_root(&ctx.cwd)?;
    let (ws, _) = workspace::load(&root, None)?;
    let out = root.join(&ws.config.output_dir);
    let inside = std::path::absolute(&out).is_ok_and(|o| o.starts_with(&root) && o != root);
    if !inside {
        return Err(CmdError::Usage(format!(
            "refusing to remove the output directory `{}`: it is not inside the workspace",
            out.display()
        )));
    }
    remove(&out)?;
    report::result(&format!("removed {}", out.display()));
    if args.cache {
        let dir = super::cache::cache_root(ctx)?.join(super::cache::CACHE_VERSION_DIR);
        remove(&dir)?;
        report::result(&format!("removed {}", dir.display()));
    }
    Ok(())
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
