//! Garbage collection and verification of the local cache (`imgc cache gc`,
//! `imgc cache verify`), and what the remote directory's ([`crate::remote::gc`])
//! share with them: sizes and durations as written on the command line, the
//! choice of what to evict, listing a blob store, and deleting a file only if it
//! is still the one that was looked at.
//!
//! # Garbage collection
//!
//! The action rows of the index ([`crate::cache`]) are the roots of the blob
//! store: a blob no row names is garbage. [`collect`] evicts the least recently
//! used rows (`used_at`) until the blobs the remaining rows name, plus the blobs
//! younger than the grace period, fit the size asked for; then deletes the store
//! blobs that no row names and that are older than the grace period.
//!
//! # Safe while builds run
//!
//! Builds on the same cache go on during a collection; none of them can be made
//! to use a wrong result, at worst one rebuilds:
//!
//! - rows go first (in short transactions), blobs after, and the blobs spared are
//!   those named by the rows present *after* the rows went, read again then;
//! - a row a build used or recorded again after the collection chose it is kept
//!   ([`Cache::evict_actions`]);
//! - a blob younger than the grace period is never deleted: a build that just
//!   published it (or found it already there, which refreshes its mtime: see
//!   [`crate::cas`]) records a row naming it within that time;
//! - each blob is stat-ed again right before it is unlinked;
//! - a build whose hit names a blob that was deleted anyway sees it missing when
//!   it checks the blobs of the hit (it always does), forgets the row and
//!   rebuilds.
//!
//! # Verification
//!
//! [`verify`] re-hashes every blob, removes the damaged ones (each only if it is
//! still the very file that was hashed: same device, inode, size and mtime right
//! before the unlink), then removes every action row whose outputs do not parse,
//! do not match its blob list, or name a blob that is missing or damaged.

use crate::action::Output;
use crate::cache::{ActionUse, Cache, Pruned};
use crate::cas::Cas;
use crate::hash::Digest;
use crate::report::Progress;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The grace period when none is given: far longer than any build takes to
/// record what it published.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Parses a size: a number of bytes, optionally with a unit. `K`, `M`, `G`, `T`
/// (or `KB`, `MB`, ...) are powers of 1000; `KiB`, `MiB`, `GiB`, `TiB` (or `Ki`,
/// ...) powers of 1024. Case does not matter; a fraction is allowed with a unit
/// (`1.5G`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{text}` is not a size: write a number of bytes, optionally with a unit, like `10G`, `500MiB` or `1024`"
        )
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim_start();
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || number.ends_with('.')
        || (!frac.is_empty() && factor == 1)
        || frac.len() > 12
    {
        return Err(bad());
    }
    let too_big = || format!("`{text}` is too large a size");
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_big())?
    };
    let mut bytes = whole.checked_mul(factor).ok_or_else(too_big)?;
    if !frac.is_empty() {
        // Exact in integers: frac / 10^len of the factor, rounded down.
        let scale = 10u128.pow(frac.len() as u32);
        let part = frac.parse::<u128>().map_err(|_| bad())? * u128::from(factor) / scale;
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| too_big())?)
            .ok_or_else(too_big)?;
    }
    Ok(bytes)
}

/// Parses a duration: `30s`, `10m`, `1h`, `2d`, several in a row (`1h30m`), or a
/// bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: write a number with a unit, like `30s`, `10m`, `1h` or `2d`"
        )
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs: u64 = match &rest[..unit_len] {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(secs)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
    }
    Ok(Duration::from_secs(total))
}

/// What a collection is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Bytes of blobs to keep at most.
    pub max_size: u64,
    /// Blobs (and temp files) younger than this are never deleted.
    pub grace: Duration,
    /// Only say what would go.
    pub dry_run: bool,
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    /// Action rows (local) or entries (remote) before.
    pub roots: usize,
    /// Evicted: least recently used first.
    pub roots_removed: usize,
    /// Chosen for eviction but used since: kept.
    pub roots_kept_in_use: usize,
    /// Remote entries that do not decode, older than the grace period: deleted.
    pub damaged_roots_removed: usize,
    /// Blobs in the store before, and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    /// Whether what is kept fits the size asked for (it may not: blobs younger
    /// than the grace period stay).
    pub fits: bool,
    /// Bytes of blobs younger than the grace period that no remaining entry names.
    pub young_bytes: u64,
    /// Stale temp files removed.
    pub temp_removed: usize,
    /// Files with names that are not the store's (or not regular files), left alone.
    pub skipped: usize,
    /// `key label` of each action or entry chosen for eviction, least recently
    /// used first.
    pub removed_roots: Vec<String>,
    /// Each blob deleted (or that would be), with its size.
    pub removed_blobs: Vec<(Digest, u64)>,
    /// The index pruning run along (local only).
    pub pruned: Option<Pruned>,
}

impl GcReport {
    /// Blob bytes after the collection (as far as it knows: builds may add).
    pub fn bytes_after(&self) -> u64 {
        self.bytes.saturating_sub(self.bytes_removed)
    }
}

/// A root of the blob store for [`plan`]: an action row or a remote entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// When it was last used (any unit, only compared).
    pub used: i64,
    pub blobs: Vec<Digest>,
}

/// A blob in the store for [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub digest: Digest,
    pub size: u64,
    /// Younger than the grace period: never deleted, so always counted.
    pub young: bool,
}

/// Which roots to evict, and what follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Indexes into the roots, least recently used first.
    pub evict: Vec<usize>,
    /// Blobs present that no remaining root names and that are not young.
    pub doomed: BTreeSet<Digest>,
    /// Bytes kept: blobs named by remaining roots, and young blobs.
    pub kept_bytes: u64,
    /// Bytes of young blobs no remaining root names.
    pub young_bytes: u64,
    pub fits: bool,
}

/// Chooses the roots to evict: least recently used first (ties: in the order
/// given), until the blobs the remaining roots name plus the young blobs fit
/// `max` bytes. Blobs a root names that are not in the store take no room.
pub fn plan(roots: &[Root], stored: &[Stored], max: u64) -> Plan {
    let present: BTreeMap<Digest, Stored> = stored.iter().map(|s| (s.digest, *s)).collect();
    let named: Vec<BTreeSet<Digest>> = roots
        .iter()
        .map(|r| r.blobs.iter().copied().collect())
        .collect();
    let mut refs: BTreeMap<Digest, usize> = BTreeMap::new();
    for set in &named {
        for d in set {
            *refs.entry(*d).or_default() += 1;
        }
    }
    let mut kept: u64 = present
        .values()
        .filter(|s| s.young || refs.contains_key(&s.digest))
        .map(|s| s.size)
        .sum();
    let mut order: Vec<usize> = (0..roots.len()).collect();
    order.sort_by_key(|&i| (roots[i].used, i));
    let mut evict = Vec::new();
    for i in order {
        if kept <= max {
            break;
        }
        evict.push(i);
        for d in &named[i] {
            let Some(n) = refs.get_mut(d) else { continue };
            *n -= 1;
            if *n == 0 {
                refs.remove(d);
                if let Some(s) = present.get(d).filter(|s| !s.young) {
                    kept -= s.size;
                }
            }
        }
    }
    let doomed = present
        .values()
        .filter(|s| !s.young && !refs.contains_key(&s.digest))
        .map(|s| s.digest)
        .collect();
    let young_bytes = present
        .values()
        .filter(|s| s.young && !refs.contains_key(&s.digest))
        .map(|s| s.size)
        .sum();
    Plan {
        evict,
        doomed,
        kept_bytes: kept,
        young_bytes,
        fits: kept <= max,
    }
}

// ---------------------------------------------------------------------------
// Files: listing a store, removing only what was looked at.

/// Which file a path named when it was looked at: a removal re-checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i64,
    pub is_file: bool,
    pub is_dir: bool,
}

impl Ident {
    pub fn of(m: &fs::Metadata) -> Ident {
        Ident {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            is_file: m.file_type().is_file(),
            is_dir: m.file_type().is_dir(),
        }
    }

    pub fn mtime(&self) -> SystemTime {
        let ns = self.mtime_ns;
        if ns >= 0 {
            UNIX_EPOCH + Duration::from_nanos(ns as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
        }
    }
}

/// Nanoseconds since the epoch (negative before it).
pub fn unix_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Unlinks `path` if it still is the file `was` describes (same device, inode,
/// size, mtime, kind), `lstat`-ed right before: no link followed, and a file
/// replaced or touched since is left alone. Never a directory. `Ok(false)` if
/// it was left (or is gone).
pub fn remove_if_same(path: &Path, was: &Ident) -> io::Result<bool> {
    let now = match fs::symlink_metadata(path) {
        Ok(m) => Ident::of(&m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if now != *was || now.is_dir {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Unlinks `path` if it is (by an `lstat` right before) a regular file last
/// modified before `cutoff`. Returns its size if it was removed.
pub fn remove_if_old(path: &Path, cutoff: SystemTime) -> io::Result<Option<u64>> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let ident = Ident::of(&m);
    if !ident.is_file || ident.mtime() >= cutoff {
        return Ok(None);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(Some(ident.len)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `cutoff` for a grace period: files modified before it are old.
pub fn cutoff(now: SystemTime, grace: Duration) -> SystemTime {
    now.checked_sub(grace).unwrap_or(UNIX_EPOCH)
}

/// 64 lowercase hex digits: the only names the stores give files.
pub fn is_hex64(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A file under a blob's name, as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub digest: Digest,
    pub path: PathBuf,
    /// From `lstat` (not followed).
    pub ident: Ident,
}

/// What a blob store holds.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Everything under a blob's name (regular files or not), sorted by digest.
    pub blobs: Vec<Listed>,
    /// Entries with names that are not the store's: left alone.
    pub foreign: usize,
}

impl Listing {
    /// The regular files, as [`plan`] sees them.
    pub fn stored(&self, cutoff: SystemTime) -> Vec<Stored> {
        self.blobs
            .iter()
            .filter(|b| b.ident.is_file)
            .map(|b| Stored {
                digest: b.digest,
                size: b.ident.len,
                young: b.ident.mtime() >= cutoff,
            })
            .collect()
    }

    /// Bytes of the regular files.
    pub fn bytes(&self) -> u64 {
        self.blobs
            .iter()
            .filter(|b| b.ident.is_file)
            .map(|b| b.ident.len)
            .sum()
    }
}

/// Lists the blob store `cas` keeps in `dir` (`dir/ab/<hex>` with `fanout`, else
/// `dir/<hex>`), following no link. A missing `dir` is an empty store. A name
/// that is not where `cas` would put that digest is foreign.
pub fn list_blobs(cas: &Cas, dir: &Path, fanout: bool) -> io::Result<Listing> {
    let mut out = Listing::default();
    let read = |d: &Path| -> io::Result<Vec<(String, PathBuf, fs::Metadata)>> {
        let mut v = Vec::new();
        let entries = match fs::read_dir(d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(with_path(e, "list", d)),
        };
        for e in entries {
            let e = e.map_err(|e| with_path(e, "list", d))?;
            let path = e.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, "stat", &path)),
            };
            v.push((e.file_name().to_string_lossy().into_owned(), path, meta));
        }
        Ok(v)
    };
    let add =
        |name: &str, path: PathBuf, meta: &fs::Metadata, out: &mut Listing| match Digest::from_hex(
            name,
        )
        .filter(|d| is_hex64(name) && cas.blob_path(d) == path)
        {
            Some(digest) => out.blobs.push(Listed {
                digest,
                path,
                ident: Ident::of(meta),
            }),
            None => out.foreign += 1,
        };
    for (name, path, meta) in read(dir)? {
        if !fanout {
            add(&name, path, &meta, &mut out);
            continue;
        }
        let fan = name.len() == 2
            && name
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !fan || !meta.file_type().is_dir() {
            out.foreign += 1;
            continue;
        }
        for (name, path, meta) in read(&path)? {
            add(&name, path, &meta, &mut out);
        }
    }
    out.blobs.sort_by_key(|a| a.digest);
    Ok(out)
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} `{}`: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Local collection.

/// Collects the local cache: `cache` is its index, `cas` its store, which keeps
/// blobs in `blobs_dir` (`<cache>/v1/cas/sha256`). See the module docs.
pub fn collect(
    cas: &Cas,
    cache: &mut Cache,
    blobs_dir: &Path,
    opts: &GcOptions,
) -> Result<GcReport, String> {
    let now = SystemTime::now();
    let old_before = cutoff(now, opts.grace);
    let db = |e: crate::cache::CacheError| format!("cannot read the action cache: {e}");
    let actions = cache.action_uses().map_err(db)?;
    let listing =
        list_blobs(cas, blobs_dir, true).map_err(|e| format!("cannot list the blob store: {e}"))?;
    let stored = listing.stored(old_before);
    let roots: Vec<Root> = actions
        .iter()
        .map(|a| Root {
            used: a.used_at,
            blobs: a.blobs.iter().map(|b| b.digest).collect(),
        })
        .collect();
    let plan = plan(&roots, &stored, opts.max_size);
    let mut report = GcReport {
        dry_run: opts.dry_run,
        roots: actions.len(),
        blobs: stored.len(),
        bytes: listing.bytes(),
        fits: plan.fits,
        young_bytes: plan.young_bytes,
        skipped: listing.foreign + listing.blobs.len() - stored.len(),
        removed_roots: plan
            .evict
            .iter()
            .map(|&i| format!("{} {}", actions[i].key.to_hex(), actions[i].label))
            .collect(),
        ..GcReport::default()
    };
    if opts.dry_run {
        report.roots_removed = plan.evict.len();
        for s in stored.iter().filter(|s| plan.doomed.contains(&s.digest)) {
            report.removed_blobs.push((s.digest, s.size));
            report.blobs_removed += 1;
            report.bytes_removed += s.size;
        }
        return Ok(report);
    }
    // Rows first...
    let chosen: Vec<_> = plan
        .evict
        .iter()
        .map(|&i| (actions[i].key, actions[i].used_at))
        .collect();
    let write = |e: crate::cache::CacheError| format!("cannot update the action cache: {e}");
    report.roots_removed = cache.evict_actions(&chosen).map_err(write)?;
    report.roots_kept_in_use = chosen.len() - report.roots_removed;
    // ...then blobs no row names now (rows builds added meanwhile included).
    let named = cache.referenced_blobs().map_err(db)?;
    let mut deleted = Vec::new();
    let mut failed = None;
    for b in listing.blobs.iter().filter(|b| b.ident.is_file) {
        if named.contains(&b.digest) {
            continue;
        }
        match remove_if_old(&b.path, old_before) {
            Ok(Some(size)) => {
                deleted.push(b.digest);
                report.removed_blobs.push((b.digest, size));
                report.blobs_removed += 1;
                report.bytes_removed += size;
            }
            Ok(None) => {}
            Err(e) => {
                failed = Some(format!("cannot remove `{}`: {e}", b.path.display()));
                break;
            }
        }
    }
    // What the index remembers of the deleted blobs goes too (even after a failure).
    cache.forget_blobs(&deleted, false).map_err(write)?;
    if let Some(e) = failed {
        return Err(e);
    }
    report.pruned = Some(cache.prune(unix_ns(now) / 1_000_000_000).map_err(write)?);
    report.temp_removed = cas
        .sweep_tmp(opts.grace)
        .map_err(|e| format!("cannot sweep the store's temp files: {e}"))?;
    Ok(report)
}

// ---------------------------------------------------------------------------
// Verification (local and remote).

/// What a verification found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs hashed, and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs found damaged, and why.
    pub damaged_blobs: Vec<(Digest, String)>,
    pub blobs_removed: usize,
    /// Damaged blobs left because they changed (were replaced) before removal,
    /// or are directories.
    pub blobs_left: usize,
    /// Action rows (local) or entries (remote) checked.
    pub roots: usize,
    /// `key` and why, for each damaged one.
    pub damaged_roots: Vec<(String, String)>,
    pub roots_removed: usize,
    /// Files with names that are not the store's: left alone.
    pub skipped: usize,
    /// What could not be checked, and why.
    pub unreadable: Vec<String>,
}

impl VerifyReport {
    pub fn all_good(&self) -> bool {
        self.damaged_blobs.is_empty() && self.damaged_roots.is_empty() && self.unreadable.is_empty()
    }
}

/// The state of a blob as verification found it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Checked {
    /// A regular file of this many bytes that hashes to its name.
    Intact(u64),
    Damaged,
}

/// The blobs of a store, re-hashed (see [`Blobs::scan`]), for checking what
/// names them.
pub struct Blobs<'a> {
    cas: &'a Cas,
    checked: BTreeMap<Digest, Checked>,
}

impl<'a> Blobs<'a> {
    /// Re-hashes every blob of `listing` on `jobs` threads; removes each damaged
    /// one that is still the file that was hashed.
    pub fn scan(
        cas: &'a Cas,
        listing: &Listing,
        jobs: usize,
        progress: &Progress,
        report: &mut VerifyReport,
    ) -> Result<Blobs<'a>, String> {
        use rayon::prelude::*;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .build()
            .map_err(|e| format!("cannot start {jobs} threads: {e}"))?;
        let results: Vec<FileCheck> = pool.install(|| {
            listing
                .blobs
                .par_iter()
                .map(|b| {
                    let r = check_file(b);
                    progress.add(b.ident.len);
                    r
                })
                .collect()
        });
        progress.finish();
        report.skipped += listing.foreign;
        let mut checked = BTreeMap::new();
        for (b, result) in listing.blobs.iter().zip(results) {
            match result {
                FileCheck::Gone => {}
                FileCheck::Unreadable(e) => report.unreadable.push(e),
                FileCheck::Intact(len) => {
                    report.blobs += 1;
                    report.bytes += len;
                    checked.insert(b.digest, Checked::Intact(len));
                }
                FileCheck::Damaged { ident, why } => {
                    report.blobs += 1;
                    report.damaged_blobs.push((b.digest, why));
                    checked.insert(b.digest, Checked::Damaged);
                    let removed = remove_if_same(&b.path, &ident)
                        .map_err(|e| format!("cannot remove `{}`: {e}", b.path.display()))?;
                    if removed {
                        report.blobs_removed += 1;
                    } else {
                        report.blobs_left += 1;
                    }
                }
            }
        }
        Ok(Blobs { cas, checked })
    }

    /// Digests found damaged.
    pub fn damaged(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self
            .checked
            .iter()
            .filter(|(_, c)| **c == Checked::Damaged)
            .map(|(d, _)| *d)
            .collect();
        v.sort();
        v
    }

    /// Why the blobs of `output` make it unusable, if they do.
    pub fn check_output(&mut self, output: &Output) -> Option<String> {
        let mut sizes: BTreeMap<Digest, u64> = BTreeMap::new();
        for (d, size) in output.blobs() {
            if sizes.insert(d, size).is_some_and(|s| s != size) {
                return Some(format!("it gives blob `{d}` two sizes"));
            }
        }
        for (d, size) in sizes {
            let state = match self.checked.get(&d) {
                Some(s) => s.clone(),
                None => {
                    // Not there when the store was listed (or added since).
                    match self.cas.verify(&d, Some(size)) {
                        Ok(true) => Checked::Intact(size),
                        Ok(false) | Err(_) => {
                            return Some(format!("its blob `{d}` is missing or damaged"));
                        }
                    }
                }
            };
            match state {
                Checked::Intact(len) if len == size => {
                    self.checked.insert(d, Checked::Intact(len));
                }
                Checked::Intact(len) => {
                    return Some(format!("it says blob `{d}` has {size} bytes, it has {len}"));
                }
                Checked::Damaged => return Some(format!("its blob `{d}` was damaged")),
            }
        }
        None
    }
}

/// What hashing one listed file found.
enum FileCheck {
    /// A regular file of this many bytes that hashes to its name.
    Intact(u64),
    /// Damaged: `ident` is the file that was found so (for the removal).
    Damaged {
        ident: Ident,
        why: String,
    },
    /// Gone since it was listed (another collection or verification).
    Gone,
    Unreadable(String),
}

/// Hashes one listed file (never following a link).
fn check_file(b: &Listed) -> FileCheck {
    if !b.ident.is_file {
        let why = if b.ident.is_dir {
            "a directory"
        } else {
            "not a regular file"
        };
        return FileCheck::Damaged {
            ident: b.ident,
            why: why.into(),
        };
    }
    match crate::input::hash_file(&b.path, crate::input::Algos::Sha256) {
        Ok((h, meta)) => match h.sha256 {
            Some(d) if d == b.digest => FileCheck::Intact(h.len),
            Some(d) => FileCheck::Damaged {
                ident: Ident::of(&meta),
                why: format!("its {} bytes hash to `{d}`", h.len),
            },
            None => FileCheck::Unreadable(format!("cannot hash `{}`", b.path.display())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => FileCheck::Gone,
        Err(e) => match fs::symlink_metadata(&b.path) {
            Err(m) if m.kind() == io::ErrorKind::NotFound => FileCheck::Gone,
            // Replaced by something that is not a regular file, or changed size
            // while it was read: damaged (removed only if it stays as it is now).
            Ok(m) if !m.file_type().is_file() || Ident::of(&m) != b.ident => FileCheck::Damaged {
                ident: Ident::of(&m),
                why: format!("it changed while it was read ({e})"),
            },
            _ => FileCheck::Unreadable(format!("cannot check `{}`: {e}", b.path.display())),
        },
    }
}

/// Verifies the local cache: every blob of the store in `blobs_dir`, then every
/// action row of `cache`. See the module docs.
pub fn verify(
    cas: &Cas,
    cache: &mut Cache,
    blobs_dir: &Path,
    jobs: usize,
) -> Result<VerifyReport, String> {
    let mut report = VerifyReport::default();
    let listing =
        list_blobs(cas, blobs_dir, true).map_err(|e| format!("cannot list the blob store: {e}"))?;
    let progress = Progress::bytes("verifying blobs", listing.bytes());
    let mut blobs = Blobs::scan(cas, &listing, jobs, &progress, &mut report)?;
    let db = |e: crate::cache::CacheError| format!("cannot read the action cache: {e}");
    let write = |e: crate::cache::CacheError| format!("cannot update the action cache: {e}");
    let damaged = blobs.damaged();
    // Layouts may hard-link a damaged file: their next build checks them in full.
    cache.forget_blobs(&damaged, true).map_err(write)?;
    let actions = cache.action_uses().map_err(db)?;
    report.roots = actions.len();
    let mut bad = Vec::new();
    for a in &actions {
        if let Some(why) = check_action(a, &mut blobs) {
            report.damaged_roots.push((a.key.to_hex(), why));
            bad.push(a.key);
        }
    }
    cache.forget_actions(&bad).map_err(write)?;
    report.roots_removed = bad.len();
    Ok(report)
}

/// Why an action row is unusable, if it is.
fn check_action(a: &ActionUse, blobs: &mut Blobs<'_>) -> Option<String> {
    let Some(output) = Output::from_json(&a.outputs_json) else {
        return Some("its outputs do not parse".into());
    };
    let named: BTreeSet<(Digest, u64)> = output.blobs().into_iter().collect();
    let recorded: BTreeSet<(Digest, u64)> = a.blobs.iter().map(|b| (b.digest, b.size)).collect();
    if named != recorded {
        return Some("its list of blobs does not match its outputs".into());
    }
    blobs.check_output(&output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        let ok = [
            ("1024", 1024),
            ("0", 0),
            ("10G", 10_000_000_000),
            ("10GB", 10_000_000_000),
            ("10g", 10_000_000_000),
            ("500MiB", 500 << 20),
            ("500mib", 500 << 20),
            ("500Mi", 500 << 20),
            ("1K", 1000),
            ("1KiB", 1024),
            ("2T", 2_000_000_000_000),
            ("1TiB", 1 << 40),
            ("1.5G", 1_500_000_000),
            ("1.5GiB", 3 << 29),
            (".5K", 500),
            (" 7 B ", 7),
            ("3 MB", 3_000_000),
        ];
        for (text, want) in ok {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn junk_sizes_are_refused_with_a_clear_message() {
        for text in [
            "", "G", "abc", "10X", "10 GiBs", "-5", "1.5", "1.", "1..5G", "1e9", "10G10", "0x10",
            "五G",
        ] {
            let e = parse_size(text).unwrap_err();
            assert!(
                e.contains("is not a size") && e.contains("10G"),
                "{text}: {e}"
            );
        }
        for text in ["99999999999999999999", "20000000000G", "17179869184GiB"] {
            assert!(
                parse_size(text).unwrap_err().contains("too large"),
                "{text}"
            );
        }
    }

    #[test]
    fn durations_parse() {
        let ok = [
            ("1h", 3600),
            ("10m", 600),
            ("30s", 30),
            ("2d", 172_800),
            ("1h30m", 5400),
            ("0", 0),
            ("0s", 0),
            ("90", 90),
        ];
        for (text, want) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(want)),
                "{text}"
            );
        }
        for text in ["", "h", "1x", "1.5h", "-1h", "1h 30m", "m5"] {
            assert!(
                parse_duration(text).unwrap_err().contains("not a duration"),
                "{text}"
            );
        }
    }

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn root(used: i64, blobs: &[u8]) -> Root {
        Root {
            used,
            blobs: blobs.iter().map(|&n| d(n)).collect(),
        }
    }

    fn blob(n: u8, size: u64, young: bool) -> Stored {
        Stored {
            digest: d(n),
            size,
            young,
        }
    }

    #[test]
    fn eviction_takes_the_least_recently_used_first_and_stops_when_it_fits() {
        // Three roots, each with its own 100-byte blob, all sharing blob 9.
        let roots = [root(30, &[1, 9]), root(10, &[2, 9]), root(20, &[3, 9])];
        let stored = [
            blob(1, 100, false),
            blob(2, 100, false),
            blob(3, 100, false),
            blob(9, 50, false),
        ];
        let p = plan(&roots, &stored, 1000);
        assert!(p.evict.is_empty() && p.doomed.is_empty() && p.fits);
        assert_eq!(p.kept_bytes, 350);

        let p = plan(&roots, &stored, 250);
        assert_eq!(p.evict, vec![1], "exactly fits after one");
        let p = plan(&roots, &stored, 200);
        assert_eq!(p.evict, vec![1, 2], "oldest first, until it fits");
        assert_eq!(
            p.doomed,
            BTreeSet::from([d(2), d(3)]),
            "the shared blob stays"
        );
        assert_eq!(p.kept_bytes, 150);

        let p = plan(&roots, &stored, 0);
        assert_eq!(p.evict, vec![1, 2, 0]);
        assert_eq!(p.doomed.len(), 4);
        assert!(p.fits);
    }

    #[test]
    fn young_blobs_count_but_are_never_doomed() {
        let roots = [root(1, &[1]), root(2, &[2])];
        let stored = [blob(1, 100, true), blob(2, 100, false), blob(3, 500, true)];
        let p = plan(&roots, &stored, 550);
        // 700 bytes: evicting root 0 frees nothing (its blob is young), root 1 frees 100.
        assert_eq!(p.evict, vec![0, 1]);
        assert_eq!(p.doomed, BTreeSet::from([d(2)]));
        assert_eq!(p.kept_bytes, 600);
        assert_eq!(p.young_bytes, 600);
        assert!(!p.fits, "young blobs keep it above the limit");
    }

    #[test]
    fn unreferenced_old_blobs_go_even_without_eviction() {
        let roots = [root(1, &[1, 7])];
        let stored = [blob(1, 10, false), blob(2, 10, false)];
        let p = plan(&roots, &stored, 1000);
        assert!(p.evict.is_empty());
        assert_eq!(p.doomed, BTreeSet::from([d(2)]));
        assert_eq!(
            p.kept_bytes, 10,
            "a named blob missing from the store takes no room"
        );
    }

    #[test]
    fn ties_are_broken_by_the_order_given() {
        let roots = [root(5, &[1]), root(5, &[2]), root(5, &[3])];
        let stored = [blob(1, 10, false), blob(2, 10, false), blob(3, 10, false)];
        assert_eq!(plan(&roots, &stored, 15).evict, vec![0, 1]);
    }

    #[test]
    fn remove_if_same_leaves_a_replaced_or_touched_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"one").unwrap();
        let was = Ident::of(&fs::symlink_metadata(&p).unwrap());
        // Replaced by another file (another inode): left.
        let q = dir.path().join("g");
        fs::write(&q, b"one").unwrap();
        fs::rename(&q, &p).unwrap();
        assert!(!remove_if_same(&p, &was).unwrap());
        assert!(p.exists());
        // Touched: left.
        let was = Ident::of(&fs::symlink_metadata(&p).unwrap());
        let later = SystemTime::now() + Duration::from_secs(100);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(!remove_if_same(&p, &was).unwrap());
        let was = Ident::of(&fs::symlink_metadata(&p).unwrap());
        assert!(remove_if_same(&p, &was).unwrap());
        assert!(!p.exists());
        assert!(!remove_if_same(&p, &was).unwrap(), "gone is not an error");
    }

    #[test]
    fn evicting_rows_keeps_those_used_since() {
        use crate::cache::BlobRef;
        use crate::hash::Key;
        let mut cache = Cache::open_in_memory().unwrap();
        let k1 = Key([1; 32]);
        let k2 = Key([2; 32]);
        for k in [&k1, &k2] {
            cache
                .put_action(
                    k,
                    "layer",
                    "//a:b",
                    "{}",
                    &[BlobRef {
                        digest: d(1),
                        size: 3,
                    }],
                )
                .unwrap();
        }
        let uses = cache.action_uses().unwrap();
        assert_eq!(uses.len(), 2);
        assert_eq!(
            uses[0].blobs,
            vec![BlobRef {
                digest: d(1),
                size: 3
            }]
        );
        // k2 was used "after" gc read it: its used_at moved past what gc saw.
        let chosen = [(k1, uses[0].used_at), (k2, uses[1].used_at - 1)];
        assert_eq!(cache.evict_actions(&chosen).unwrap(), 1);
        let left: Vec<Key> = cache.action_uses().unwrap().iter().map(|a| a.key).collect();
        assert_eq!(left, vec![k2]);
        assert_eq!(cache.referenced_blobs().unwrap(), BTreeSet::from([d(1)]));
    }
}
