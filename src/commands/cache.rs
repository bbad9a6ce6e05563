//! `imgc cache stats|gc|verify`, and opening the local stores for other commands.
//!
//! `cache stats` only reads: opening the index takes no write lock (see
//! [`crate::cache`]), so it answers at once while builds run on the same cache. A
//! damaged index is replaced on the way, with a warning, and reported as empty.
//!
//! `cache gc` and `cache verify` are thin: the work is in [`crate::gc`] (local)
//! and [`crate::remote::gc`] (a remote cache directory).

use super::{CmdError, Context};
use crate::cache::Cache;
use crate::cas::Cas;
use crate::cli::{CacheCommand, GcArgs, VerifyArgs};
use crate::gc::{GcOptions, GcReport, VerifyReport};
use crate::remote::{Location, Mode, dir::DirStore};
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
        CacheCommand::Gc(args) => gc(ctx, args),
        CacheCommand::Verify(args) => verify(ctx, args),
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

/// The remote cache directory that `--remote` works on: the one builds use
/// (`--remote-cache`, `IMGC_REMOTE_CACHE`, else `remote-cache` in the imgc.kdl of
/// the workspace imgc runs in). Opened read-only: nothing is created or marked.
fn remote_dir(ctx: &Context) -> Result<DirStore, CmdError> {
    let mut location = super::remote_cache_location(ctx, None, &ctx.cwd)?;
    if location.is_none()
        && !ctx.remote.no_remote_cache
        && let Ok(root) = crate::workspace::find_root(&ctx.cwd)
    {
        let (config, sources, diags) = crate::workspace::load_config(&root)?;
        if !diags.is_empty() {
            return Err(CmdError::Diagnostics { sources, diags });
        }
        location = super::remote_cache_location(ctx, config.remote_cache.as_deref(), &root)?;
    }
    let Some(location) = location else {
        return Err(CmdError::Usage(
            "`--remote`: no remote cache is configured; give `--remote-cache DIR`, set `IMGC_REMOTE_CACHE`, or write `remote-cache` in imgc.kdl"
                .into(),
        ));
    };
    match location {
        Location::Http(endpoint) => Err(CmdError::Usage(format!(
            "`{}` is an HTTP remote cache: the protocol cannot list a server, so imgc can neither collect nor verify it; collect garbage on the server",
            endpoint.base
        ))),
        Location::Dir(path) => DirStore::open(&path, Mode::Read).map_err(CmdError::Env),
    }
}

/// Opens the local stores, showing what the index recovered from.
fn open_local(ctx: &Context) -> Result<Stores, CmdError> {
    let mut stores = Stores::open(ctx)?;
    if let Some(w) = stores.warning.take() {
        report::warning(&w);
    }
    Ok(stores)
}

fn gc(ctx: &Context, args: GcArgs) -> Result<(), CmdError> {
    let max_size = crate::gc::parse_size(&args.max_size)
        .map_err(|e| CmdError::Usage(format!("`--max-size`: {e}")))?;
    let grace = crate::gc::parse_duration(&args.grace)
        .map_err(|e| CmdError::Usage(format!("`--grace`: {e}")))?;
    let opts = GcOptions {
        max_size,
        grace,
        dry_run: args.dry_run,
    };
    let (report, roots) = if args.remote {
        let store = remote_dir(ctx)?;
        let r = crate::remote::gc::collect(&store, &opts).map_err(CmdError::Env)?;
        (r, "entries")
    } else {
        let mut stores = open_local(ctx)?;
        let blobs_dir = stores.dir.join("cas").join("sha256");
        let r = crate::gc::collect(&stores.cas, &mut stores.cache, &blobs_dir, &opts);
        // The cache changed under every snapshot (see [`crate::snapshot`]).
        if !opts.dry_run {
            let _ = crate::snapshot::discard_all(&stores.dir);
        }
        for w in stores.cache.take_warnings() {
            report::warning(&w);
        }
        (r.map_err(CmdError::Env)?, "actions")
    };
    report::result(&gc_text(&report, roots, &opts, &args.grace));
    if !report.fits {
        report::warning(&format!(
            "the blobs are still above {}: {} of them are younger than the grace period ({}) and are never deleted",
            bytes(opts.max_size),
            bytes(report.young_bytes),
            args.grace.trim()
        ));
    }
    Ok(())
}

/// `12902400 bytes (12.3 MiB)`, or `312 bytes`.
fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} byte{}", if n == 1 { "" } else { "s" });
    }
    format!("{n} bytes ({})", report::bytes(n))
}

fn gc_text(r: &GcReport, roots: &str, opts: &GcOptions, grace: &str) -> String {
    let mut lines = Vec::new();
    let (removed, verb) = if r.dry_run {
        ("would be removed", "would remove")
    } else {
        ("removed", "removed")
    };
    if r.dry_run {
        let one = roots.trim_end_matches('s').replace("entrie", "entry");
        for root in &r.removed_roots {
            lines.push(format!("{verb} {one} {root}"));
        }
        for (d, size) in &r.removed_blobs {
            lines.push(format!("{verb} blob {d}: {}", bytes(*size)));
        }
    }
    lines.push(format!(
        "{roots:<16} {} of {} {removed} (least recently used first)",
        r.roots_removed, r.roots
    ));
    if r.roots_kept_in_use > 0 {
        lines.push(format!(
            "{:<16} {} kept: used since they were chosen",
            "", r.roots_kept_in_use
        ));
    }
    if r.damaged_roots_removed > 0 {
        lines.push(format!(
            "{:<16} {} {removed} (damaged, older than {})",
            format!("damaged {roots}"),
            r.damaged_roots_removed,
            grace.trim()
        ));
    }
    lines.push(format!(
        "{:<16} {} of {} {removed}, {}",
        "blobs",
        r.blobs_removed,
        r.blobs,
        bytes(r.bytes_removed)
    ));
    lines.push(format!(
        "{:<16} {} before, {} after; limit {}",
        "blob bytes",
        bytes(r.bytes),
        bytes(r.bytes_after()),
        bytes(opts.max_size)
    ));
    if r.temp_removed > 0 {
        lines.push(format!("{:<16} {} {removed}", "temp files", r.temp_removed));
    }
    if let Some(p) = r.pruned {
        let rows =
            p.memo_rows + p.last_builds + p.layouts + p.blob_checks + p.parsed_files + p.workspaces;
        if rows > 0 {
            lines.push(format!("{:<16} {rows} unused rows pruned", "index"));
        }
    }
    if r.skipped > 0 {
        lines.push(format!(
            "{:<16} {} left alone (not a name or file imgc stores)",
            "other files", r.skipped
        ));
    }
    lines.join("\n")
}

fn verify(ctx: &Context, args: VerifyArgs) -> Result<(), CmdError> {
    let jobs = super::jobs(args.jobs)?;
    let (report, roots, place) = if args.remote {
        let store = remote_dir(ctx)?;
        let r = crate::remote::gc::verify(&store, jobs).map_err(CmdError::Env)?;
        (
            r,
            "entries",
            format!("remote cache `{}`", store.root().display()),
        )
    } else {
        let mut stores = open_local(ctx)?;
        let blobs_dir = stores.dir.join("cas").join("sha256");
        let r = crate::gc::verify(&stores.cas, &mut stores.cache, &blobs_dir, jobs);
        // Verify drops damaged entries: the cache changed under every snapshot.
        let _ = crate::snapshot::discard_all(&stores.dir);
        for w in stores.cache.take_warnings() {
            report::warning(&w);
        }
        let place = format!("cache `{}`", stores.dir.display());
        (r.map_err(CmdError::Env)?, "actions", place)
    };
    report::result(&verify_text(&report, roots));
    for why in &report.unreadable {
        report::warning(why);
    }
    if !report.unreadable.is_empty() {
        return Err(CmdError::Env(format!(
            "{} blob{} of the {place} could not be checked",
            report.unreadable.len(),
            if report.unreadable.len() == 1 {
                ""
            } else {
                "s"
            }
        )));
    }
    if !report.all_good() {
        return Err(CmdError::Failed(format!(
            "the {place} had {} damaged blob{} and {} damaged {roots}; {} and {} removed",
            report.damaged_blobs.len(),
            if report.damaged_blobs.len() == 1 {
                ""
            } else {
                "s"
            },
            report.damaged_roots.len(),
            report.blobs_removed,
            report.roots_removed,
        )));
    }
    Ok(())
}

fn verify_text(r: &VerifyReport, roots: &str) -> String {
    let one = roots.trim_end_matches('s').replace("entrie", "entry");
    let mut lines = Vec::new();
    for (d, why) in &r.damaged_blobs {
        lines.push(format!("damaged blob {d}: {why}"));
    }
    for (key, why) in &r.damaged_roots {
        lines.push(format!("damaged {one} {key}: {why}"));
    }
    lines.push(format!(
        "{:<16} {} checked, {}; {} damaged, {} removed",
        "blobs",
        r.blobs,
        bytes(r.bytes),
        r.damaged_blobs.len(),
        r.blobs_removed
    ));
    if r.blobs_left > 0 {
        lines.push(format!(
            "{:<16} {} damaged left: replaced since they were checked, or directories",
            "", r.blobs_left
        ));
    }
    lines.push(format!(
        "{roots:<16} {} checked, {} damaged, {} removed",
        r.roots,
        r.damaged_roots.len(),
        r.roots_removed
    ));
    if r.skipped > 0 {
        lines.push(format!(
            "{:<16} {} left alone (not a name imgc stores)",
            "other files", r.skipped
        ));
    }
    lines.join("\n")
}
