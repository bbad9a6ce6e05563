//! `imgc cache stats`, and opening the local stores for other commands.
//!
//! `cache stats` only reads: opening the index takes no write lock (see
//! [`crate::cache`]), so it answers at once while builds run on the same cache. A
//! damaged index is replaced on the way, with a warning, and reported as empty.

use super::{CmdError, Context};
use crate::cache::Cache;
use crate::cas::Cas;
use crate::cli::CacheCommand;
use crate::report;
use std::path::PathBuf;

/// Versioned subdirectory: a format change bumps the name, no migrations.
pub const CACHE_VERSION_DIR: &str = "v1";

/// The cache directory: `--cache-dir`, else `$IMGC_CACHE_DIR`, else `~/.cache/imgc`.
pub fn cache_root(ctx: &Context) -> Result<PathBuf, CmdError> {
    if let Some(d) = &ctx.cache_dir {
        return Ok(std::path::absolute(d).unwrap_or_else(|_| d.clone()));
    }
    if let Some(d) = std::env::var_os("IMGC_CACHE_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("imgc")),
        None => Err(CmdError::Env(
            "cannot find a cache directory: set `--cache-dir`, `IMGC_CACHE_DIR` or `HOME`".into(),
        )),
    }
}

/// The local blob store and action cache.
pub struct Stores {
    pub dir: PathBuf,
    pub cas: Cas,
    pub cache: Cache,
    /// A problem the cache recovered from (e.g. a corrupt database replaced).
    pub warning: Option<String>,
}

impl Stores {
    pub fn open(ctx: &Context) -> Result<Stores, CmdError> {
        Stores::open_with(ctx, None)
    }

    /// Like [`Stores::open`], reusing an index already opened by [`open_index`]
    /// (e.g. by [`super::Loaded::load`]) instead of opening the database again.
    pub fn open_with(ctx: &Context, index: Option<Cache>) -> Result<Stores, CmdError> {
        let dir = cache_dir(ctx)?;
        let cas = Cas::open(&dir).map_err(|e| {
            CmdError::Env(format!(
                "cannot open the blob store in `{}`: {e}",
                dir.display()
            ))
        })?;
        // Temp files of killed builds; a day is far longer than any write.
        let _ = cas.sweep_tmp(std::time::Duration::from_secs(24 * 3600));
        let (cache, warning) = match index {
            Some(cache) => (cache, None),
            None => open_index(ctx)?,
        };
        Ok(Stores {
            dir,
            cas,
            cache,
            warning,
        })
    }
}

/// This version's cache directory, `<cache-root>/v1`.
pub fn cache_dir(ctx: &Context) -> Result<PathBuf, CmdError> {
    Ok(cache_root(ctx)?.join(CACHE_VERSION_DIR))
}

/// Opens only the cache index (the SQLite database), not the blob store: enough for
/// the parse cache. The warning says if a damaged database was replaced.
pub fn open_index(ctx: &Context) -> Result<(Cache, Option<String>), CmdError> {
    let dir = cache_dir(ctx)?;
    Cache::open(&dir.join("imgc.sqlite")).map_err(|e| {
        CmdError::Env(format!(
            "cannot open the action cache in `{}`: {e}",
            dir.display()
        ))
    })
}

pub fn run(ctx: &Context, cmd: CacheCommand) -> Result<(), CmdError> {
    match cmd {
        CacheCommand::Stats => {
            let mut stores = Stores::open(ctx)?;
            if let Some(w) = stores.warning.take() {
                report::warning(&w);
            }
            let stats = stores.cache.stats();
            // A damaged index is replaced on the way (and counts as empty): say so.
            for w in stores.cache.take_warnings() {
                report::warning(&w);
            }
            let stats =
                stats.map_err(|e| CmdError::Env(format!("cannot read the action cache: {e}")))?;
            let (blobs, bytes) = stores
                .cas
                .usage()
                .map_err(|e| CmdError::Env(format!("cannot read the blob store: {e}")))?;
            report::result(&format!(
                "cache directory  {}\nactions          {}\nfile hashes      {}\nparsed files     {}\nworkspaces       {}\nlayouts          {}\nindex bytes      {}\nblobs            {blobs}\nblob bytes       {bytes} ({:.1} MiB)",
                stores.dir.display(),
                stats.actions,
                stats.memo_entries,
                stats.parsed_files,
                stats.workspaces,
                stats.layouts,
                stats.db_bytes,
                bytes as f64 / (1024.0 * 1024.0),
            ));
            Ok(())
        }
    }
}
