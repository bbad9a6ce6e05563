//! The no-op fast path: a snapshot of everything the last successful build (or
//! check) depended on, validated by stat data alone, as git's index is.
//!
//! A no-op `imgc build` used to discover every package, parse (or read back from
//! the parse cache) every `BUILD.kdl`, key every target through the file-hash memo,
//! look every key up in SQLite and check every layout. When a build succeeds
//! without running anything, without a warning and without a remote cache, it
//! writes a snapshot: the invocation it answered, the stat data of every path its
//! answer depended on, and what it printed. The next identical invocation `lstat`s
//! those paths (in parallel) and, if every one is unchanged and none is too recent
//! to be trusted, prints the same answer and stops: no discovery, no parse, no key,
//! no cache lookup, no SQLite. Any difference, any doubt: the full path, as before,
//! which writes a new snapshot.
//!
//! # What a snapshot holds
//!
//! | part | what | why |
//! |---|---|---|
//! | invocation key | imgc's version, the executable's stat data, the command, the workspace root, the directory it ran in, the patterns as given, `SOURCE_DATE_EPOCH`, the remote-cache flags | anything else that changes the answer is in a file below |
//! | discovery | every directory the package search listed, the output directory (or its absence) | a new or removed package directory, or a `BUILD.kdl` added anywhere, changes a listed directory's mtime |
//! | specs | `imgc.kdl` and every `BUILD.kdl` | platform, compression, output directory, policy, targets |
//! | inputs | every file, symlink and directory a layer's `copy` (or a glob's walk) `lstat`ed or listed; every file a local import read | an edited file changes its mtime/ctime/size; a new or deleted file in a copied directory or a glob's directories changes that directory's mtime |
//! | ancestors | every directory above a recorded workspace path, up to the root, except one recorded only as an ancestor whose parent is stat-ed | a parent replaced (by a link, by another directory) changes its inode, and its own parent's mtime (which is why the parent suffices) |
//! | outputs | the CAS file of every OCI blob (manifest, config, layer) of every target in the build, and per image layout its directory (its mtime covers the mark and `blobs`), `oci-layout`, `index.json`, `blobs/sha256`; with `//...`, every directory of the output directory that the stale-layout sweep listed | a deleted blob, a blob or layout file edited in place (ctime), a blob unlinked from a layout (the CAS file's link count and ctime), a layout added or removed |
//! | replay | the events of the build (targets, keys, digests, layouts) or the result line of `check` | a no-op prints what the full path would print |
//!
//! Each path's record is `lstat`'s device, inode, mode, size, link count, mtime and
//! ctime (nanoseconds), or "absent". A snapshot is refused (the full path runs) if:
//! any record differs; any recorded mtime or ctime is not at least [`RACY_WINDOW`]
//! older than the start of the build that wrote it (git's racy-file rule: a file
//! changed in the same timestamp tick as it was read could keep its stat data); the
//! snapshot is older than [`MAX_AGE`] (so the full path regularly marks cache entries
//! used, which `imgc cache gc` relies on); the file is damaged, truncated, of another
//! version or for another invocation (its checksum and key are checked).
//!
//! A build records stat data *after* it finished, not when it read each file: any
//! change after the build started has a timestamp after the build start, so the
//! racy rule refuses it, and any change after the record changes the record.
//! Paths followed through a symbolic link (spec files, imports, glob bases) and
//! paths below a linked directory are not recorded: such a build writes no
//! snapshot, since a link's target can change without the link's stat data
//! changing.
//!
//! Paths are stored relative to the workspace root or to the CAS directory and
//! `lstat`ed relative to a descriptor of it; the records have a fixed size and are
//! checked in place, in parallel, so loading a snapshot allocates nothing per
//! path. A no-op build's cost is then its `lstat` calls: as many as git's for the
//! inputs (`git status` stats the same files and directories), plus about nine
//! per image for its outputs.
//!
//! # What stat data cannot see, and why that is no loss
//!
//! A file rewritten in place to the same size with its mtime set back *and* within
//! the same ctime tick as the record is invisible to stat; ctime cannot be set by
//! user tools, and the full path trusts the very same stat data (the file-hash
//! memo, the CAS blob checks and layout stamps of [`crate::cache`]), so it would
//! not see it either. The action cache's rows are not validated: a snapshot
//! answers "cached" from the outputs it checked, which are the bytes the cache
//! rows name; `imgc cache gc` and `imgc cache verify` drop every snapshot, and
//! `imgc clean --cache` removes them with the cache. The layers' listing blobs
//! are not recorded either: they are the cache's own, in no output, so a damaged
//! one cannot make the outputs differ from the full path's, and the full
//! path verifies them (and rebuilds the layer) before any use.
//!
//! # What it does not do
//!
//! No snapshot is written with a remote cache in force (a build may upload what
//! the remote lacks), by a dry run, or by a build that ran, failed or warned. The
//! snapshot lives in the cache directory (`snapshots/`, one file per invocation),
//! written to a temporary file, synced and renamed, so a reader sees a whole old
//! one or a whole new one.

use crate::hash::{Digest, Key, KeyHasher};
use crate::label::Label;
use rayon::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use crate::cache::RACY_WINDOW;

/// A snapshot older than this is not used: the full path then marks cache entries used.
pub const MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// The directory of snapshots inside the cache directory.
pub const DIR: &str = crate::cache::SNAPSHOT_DIR;

const MAGIC: &[u8; 8] = b"IMGCSNP2";

/// The stat data of one path, or its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatRec {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl StatRec {
    fn of(m: &std::fs::Metadata) -> StatRec {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        StatRec {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
}

/// `lstat` of `path`: `Ok(None)` if it does not exist.
fn lstat(path: &Path) -> std::io::Result<Option<StatRec>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(StatRec::of(&m))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The paths a build or check depended on, collected while it ran.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Paths inside the workspace, relative to its root (the empty path is the
    /// root): their ancestors up to the root are recorded too, and none of them
    /// may be a symbolic link.
    workspace: HashSet<PathBuf>,
    /// Of `workspace`: paths opened following a link at their last component
    /// (spec files, imports, glob bases): if one is a link, no snapshot.
    followed: HashSet<PathBuf>,
    /// Set when a path outside the root was recorded as a workspace path: a
    /// snapshot could not describe it by its ancestors, so none is written.
    stray: bool,
    /// Absolute paths outside the workspace (CAS blobs), recorded as they are.
    pub outside: BTreeSet<PathBuf>,
}

impl Recorded {
    /// Records workspace path `path`: relative to `root`, or absolute below it.
    pub fn ws(&mut self, root: &Path, path: impl AsRef<Path>) {
        match relative(root, path.as_ref()) {
            Some(rel) => {
                self.workspace.insert(rel);
            }
            None => self.stray = true,
        }
    }

    /// Records workspace path `path`, which was opened following a link.
    pub fn ws_followed(&mut self, root: &Path, path: impl AsRef<Path>) {
        match relative(root, path.as_ref()) {
            Some(rel) => {
                self.workspace.insert(rel.clone());
                self.followed.insert(rel);
            }
            None => self.stray = true,
        }
    }
}

/// `path` relative to `root` (`path` relative to it already, or absolute below
/// it), its `.` components dropped; `None` if it is outside or climbs (`..`).
fn relative(root: &Path, path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let rel = if path.is_absolute() {
        path.strip_prefix(root).ok()?
    } else {
        path
    };
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// One invocation: where its snapshot lives and the key it must carry.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub key: Key,
    pub root: PathBuf,
    /// The cache directory (`<cache-root>/v1`).
    pub cache_dir: PathBuf,
    pub file: PathBuf,
}

impl Invocation {
    /// The invocation of `command` in workspace `root`, its snapshot in
    /// `cache_dir`; `parts` are the settings that change its answer. `None` if
    /// imgc's own executable cannot be found (its identity is part of the key).
    pub fn new(
        cache_dir: &Path,
        root: &Path,
        command: &str,
        parts: &[(&str, &[u8])],
    ) -> Option<Invocation> {
        let exe = std::env::current_exe().ok()?;
        let exe = std::fs::metadata(exe).ok().map(|m| StatRec::of(&m))?;
        let mut h = KeyHasher::new("snapshot");
        h.field("format").bytes(MAGIC);
        h.field("imgc").str(env!("CARGO_PKG_VERSION"));
        h.field("exe")
            .u64(exe.dev)
            .u64(exe.ino)
            .u64(exe.size)
            .u64(exe.mtime_ns as u64)
            .u64(exe.ctime_ns as u64);
        h.field("command").str(command);
        h.field("root").bytes(root.as_os_str().as_bytes());
        for (name, value) in parts {
            h.field(name).bytes(value);
        }
        let key = h.finish();
        Some(Invocation {
            key,
            root: root.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            file: cache_dir.join(DIR).join(key.to_hex()),
        })
    }
}

/// A target's line in a build's replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub label: Label,
    pub kind: String,
    pub key: Key,
    pub digest: Digest,
}

/// An image layout in a build's replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialized {
    pub label: Label,
    pub path: PathBuf,
    pub digest: Digest,
}

/// What the invocation printed, to print again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    Build {
        planned: u64,
        images: u64,
        finished: Vec<Finished>,
        materialized: Vec<Materialized>,
    },
    /// `imgc check`'s result line.
    Check { result: String },
}

/// Where a recorded path is stat-ed from: each path is stored relative to one of
/// these, and checked relative to a descriptor of it (the kernel then walks only
/// the rest of the path, and nothing is joined or stripped per path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// The workspace root (recorded itself, as the empty path).
    Root = 0,
    /// The cache's blob store, `<cache>/v1/cas`: it moves with the snapshot.
    Cas = 1,
    /// An absolute path.
    Absolute = 2,
}

/// A loaded snapshot: its payload kept as read, its path records read in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When the build that wrote it started (ns since the epoch).
    pub start_ns: i64,
    /// The payload: the table of path records starts at [`TABLE`], their
    /// NUL-terminated paths follow it.
    payload: Vec<u8>,
    count: usize,
    heap: std::ops::Range<usize>,
    /// The payload's blake3 as the file says: checked by [`Snapshot::holds`],
    /// beside the paths, not before them.
    sum: [u8; 32],
    /// Decoded (safely) from bytes not yet checked: only [`Snapshot::holds`]
    /// hands it out.
    replay: Replay,
}

/// The payload's header: `start_ns` (i64), the record count (u64), the length of
/// the path heap (u64).
const TABLE: usize = 24;

/// One path record, fixed size so records are read in place and in parallel:
///
/// | bytes | field |
/// |---|---|
/// | 0 | base (0 root, 1 CAS, 2 absolute) |
/// | 1 | 1 if the path existed, else 0 (the rest then zero) |
/// | 2..4 | zero |
/// | 4..8 | offset of the path in the heap (u32) |
/// | 8..12 | its length without the NUL (u32) |
/// | 12..16 | mode (u32) |
/// | 16..64 | dev, ino, nlink, size (u64), mtime, ctime (i64 ns) |
const RECORD: usize = 64;

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn put_record(out: &mut Vec<u8>, base: Base, path: (u32, u32), rec: Option<StatRec>) {
    let r = rec.unwrap_or(StatRec {
        dev: 0,
        ino: 0,
        mode: 0,
        nlink: 0,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
    });
    out.extend_from_slice(&[base as u8, rec.is_some() as u8, 0, 0]);
    out.extend_from_slice(&path.0.to_le_bytes());
    out.extend_from_slice(&path.1.to_le_bytes());
    out.extend_from_slice(&stat_array(&r));
}

/// Bytes 12..64 of a record.
fn stat_array(r: &StatRec) -> [u8; RECORD - 12] {
    let mut a = [0; RECORD - 12];
    a[0..4].copy_from_slice(&r.mode.to_le_bytes());
    a[4..12].copy_from_slice(&r.dev.to_le_bytes());
    a[12..20].copy_from_slice(&r.ino.to_le_bytes());
    a[20..28].copy_from_slice(&r.nlink.to_le_bytes());
    a[28..36].copy_from_slice(&r.size.to_le_bytes());
    a[36..44].copy_from_slice(&r.mtime_ns.to_le_bytes());
    a[44..52].copy_from_slice(&r.ctime_ns.to_le_bytes());
    a
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_i64(b: &[u8]) -> i64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_le_bytes(a)
}

impl Snapshot {
    fn record(&self, i: usize) -> &[u8] {
        &self.payload[TABLE + i * RECORD..TABLE + (i + 1) * RECORD]
    }

    /// Record `i`'s base and NUL-terminated path; `None` if malformed.
    fn path(&self, i: usize) -> Option<(u8, &std::ffi::CStr)> {
        let r = self.record(i);
        let off = le_u32(&r[4..8]) as usize;
        let len = le_u32(&r[8..12]) as usize;
        let bytes = self
            .payload
            .get(self.heap.start.checked_add(off)?..)?
            .get(..len.checked_add(1)?)?;
        Some((r[0], std::ffi::CStr::from_bytes_with_nul(bytes).ok()?))
    }

    /// Every recorded path, as its base would name it, and its stat data.
    #[cfg(test)]
    fn entries(&self, inv: &Invocation) -> Vec<(PathBuf, Option<StatRec>)> {
        (0..self.count)
            .filter_map(|i| {
                let (base, path) = self.path(i)?;
                let path = Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
                let path = match base {
                    0 if path.as_os_str().is_empty() => inv.root.clone(),
                    0 => inv.root.join(path),
                    1 => inv.cache_dir.join("cas").join(path),
                    _ => path.to_path_buf(),
                };
                let r = self.record(i);
                let rec = (r[1] == 1).then(|| {
                    let u = |a: usize| u64::from_le_bytes(r[a..a + 8].try_into().unwrap_or([0; 8]));
                    StatRec {
                        mode: le_u32(&r[12..16]),
                        dev: u(16),
                        ino: u(24),
                        nlink: u(32),
                        size: u(40),
                        mtime_ns: le_i64(&r[48..56]),
                        ctime_ns: le_i64(&r[56..64]),
                    }
                });
                Some((path, rec))
            })
            .collect()
    }

    /// What the invocation printed, if the snapshot is whole (its checksum), young
    /// enough, and every recorded path is as recorded and none too recent to
    /// trust. Each path is `lstat`ed relative to a descriptor of its base, in
    /// parallel (the checksum is computed meanwhile); the fresh stat data is
    /// encoded as the record was and compared byte for byte.
    pub fn holds(&self, inv: &Invocation) -> Option<&Replay> {
        let now = ns_of(SystemTime::now());
        if now.saturating_sub(self.start_ns) > MAX_AGE.as_nanos() as i64 {
            return None;
        }
        let (whole, held) = rayon::join(
            || blake3::hash(&self.payload).as_bytes() == &self.sum,
            || self.paths_hold(inv),
        );
        (whole && held).then_some(&self.replay)
    }

    fn paths_hold(&self, inv: &Invocation) -> bool {
        let limit = self.start_ns.saturating_sub(RACY_WINDOW.as_nanos() as i64);
        let open = |p: &Path| {
            rustix::fs::open(
                p,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()
        };
        // A base that cannot be opened fails every path below it.
        let root = open(&inv.root);
        let cas = open(&inv.cache_dir.join("cas"));
        (0..self.count).into_par_iter().all(|i| {
            let r = self.record(i);
            if r[1] == 1 && (le_i64(&r[48..56]) > limit || le_i64(&r[56..64]) > limit) {
                return false;
            }
            let Some((base, path)) = self.path(i) else {
                return false;
            };
            let now = match base {
                0 if path.is_empty() => lstat(&inv.root),
                0 => match &root {
                    Some(fd) => lstat_at(fd, path),
                    None => return false,
                },
                1 => match &cas {
                    Some(fd) => lstat_at(fd, path),
                    None => return false,
                },
                2 => lstat(Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()))),
                _ => return false,
            };
            match now {
                Ok(None) => r[1] == 0,
                Ok(Some(now)) => r[1] == 1 && r[12..] == stat_array(&now)[..],
                Err(_) => false,
            }
        })
    }
}

/// `lstat` of `rel` below the directory `dir`: `Ok(None)` if it does not exist.
/// Field types differ between architectures (hence the casts).
#[allow(clippy::unnecessary_cast)]
fn lstat_at(dir: &std::os::fd::OwnedFd, rel: &std::ffi::CStr) -> std::io::Result<Option<StatRec>> {
    let ns = |sec: i64, nsec: i64| sec.saturating_mul(1_000_000_000).saturating_add(nsec);
    match rustix::fs::statat(dir, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(StatRec {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            nlink: s.st_nlink as u64,
            size: s.st_size as u64,
            mtime_ns: ns(s.st_mtime as i64, s.st_mtime_nsec as i64),
            ctime_ns: ns(s.st_ctime as i64, s.st_ctime_nsec as i64),
        })),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Loads the snapshot of `inv`, if there is one of the right shape for it (its
/// checksum is checked by [`Snapshot::holds`]).
pub fn load(inv: &Invocation) -> Option<Snapshot> {
    let bytes = std::fs::read(&inv.file).ok()?;
    decode(bytes, &inv.key)
}

/// Writes the snapshot of `inv`: stat data of everything `recorded` names, taken
/// now, and `replay`. `start` is when the build started (before it read
/// anything). Writes nothing (and removes an old snapshot) if the build
/// depended on a link, or on a path that cannot be stat-ed.
pub fn write(
    inv: &Invocation,
    start: SystemTime,
    recorded: &Recorded,
    replay: Replay,
) -> std::io::Result<bool> {
    // An error leaves no snapshot behind either: the old one described another build.
    write_or_refuse(inv, start, recorded, replay).inspect_err(|_| discard(inv))
}

fn write_or_refuse(
    inv: &Invocation,
    start: SystemTime,
    recorded: &Recorded,
    replay: Replay,
) -> std::io::Result<bool> {
    if recorded.stray {
        return refuse(inv);
    }
    // Every recorded path and every directory above it, up to the root (the
    // empty path); `parents` are those with a recorded path below them.
    let root = Path::new("");
    let mut paths: HashSet<&Path> = HashSet::with_capacity(recorded.workspace.len() * 2);
    let mut parents: HashSet<&Path> = HashSet::new();
    for p in &recorded.workspace {
        let mut at: &Path = p;
        while paths.insert(at) {
            let Some(parent) = at.parent() else { break };
            parents.insert(parent);
            at = parent;
        }
    }
    let mut paths: Vec<&Path> = paths.into_iter().collect();
    paths.sort_unstable_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    let base = rustix::fs::open(
        &inv.root,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let stats: Vec<std::io::Result<Option<StatRec>>> = paths
        .par_iter()
        .map(|p| {
            if *p == root {
                return lstat(&inv.root);
            }
            match std::ffi::CString::new(p.as_os_str().as_bytes()) {
                Ok(c) => lstat_at(&base, &c),
                Err(e) => Err(e.into()),
            }
        })
        .collect();
    // A workspace path that is a link, followed (spec files, imports, glob bases)
    // or a directory above a recorded path: its target is not described.
    for (p, s) in paths.iter().zip(&stats) {
        let Ok(s) = s else { return refuse(inv) };
        if s.is_some_and(|s| s.is_symlink())
            && (recorded.followed.contains(*p) || parents.contains(*p))
        {
            return refuse(inv);
        }
    }
    let cas = inv.cache_dir.join("cas");
    let outside: Vec<&Path> = recorded.outside.iter().map(PathBuf::as_path).collect();
    let outside_stats: Vec<std::io::Result<Option<StatRec>>> =
        outside.par_iter().map(|p| lstat(p)).collect();
    let mut table = Vec::with_capacity((paths.len() + outside.len()) * RECORD);
    let mut heap = Vec::new();
    let mut add = |table: &mut Vec<u8>, base: Base, rel: &Path, rec: Option<StatRec>| -> bool {
        let bytes = rel.as_os_str().as_bytes();
        if bytes.contains(&0) {
            return false;
        }
        let (Ok(off), Ok(len)) = (u32::try_from(heap.len()), u32::try_from(bytes.len())) else {
            return false;
        };
        heap.extend_from_slice(bytes);
        heap.push(0);
        put_record(table, base, (off, len), rec);
        true
    };
    // A directory recorded only as an ancestor need not be stat-ed when its parent
    // is recorded in its own right (or is the root): replacing it (by a link, by
    // another directory) changes that parent's mtime, and the paths below are
    // stat-ed through it, so its own stat data adds nothing. (If its parent is
    // only an ancestor too, it is kept: that parent may not be stat-ed.)
    let covered = |p: &Path| {
        p != root
            && !recorded.workspace.contains(p)
            && p.parent()
                .is_some_and(|parent| parent == root || recorded.workspace.contains(parent))
    };
    for (p, s) in paths.iter().zip(stats) {
        let Ok(s) = s else { return refuse(inv) };
        if !covered(p) && !add(&mut table, Base::Root, p, s) {
            return refuse(inv);
        }
    }
    for (p, s) in outside.iter().zip(outside_stats) {
        // Every blob of the answer was just found intact: one gone now (another
        // process's gc) means the answer is already stale.
        let Ok(Some(s)) = s else { return refuse(inv) };
        let ok = match p.strip_prefix(&cas) {
            Ok(rel) if !rel.as_os_str().is_empty() => add(&mut table, Base::Cas, rel, Some(s)),
            _ => add(&mut table, Base::Absolute, p, Some(s)),
        };
        if !ok {
            return refuse(inv);
        }
    }
    let bytes = encode(ns_of(start), &table, &heap, &replay, &inv.key);
    let dir = inv.file.parent().expect("a snapshot file has a directory");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&inv.file).map_err(|e| e.error)?;
    Ok(true)
}

fn refuse(inv: &Invocation) -> std::io::Result<bool> {
    discard(inv);
    Ok(false)
}

/// Removes the snapshot of `inv`, if any.
pub fn discard(inv: &Invocation) {
    let _ = std::fs::remove_file(&inv.file);
}

/// Removes every snapshot in `cache_dir` (after the cache's contents changed
/// under them: `imgc cache gc`, `imgc cache verify`).
pub fn discard_all(cache_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(cache_dir.join(DIR)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// For tests: makes every snapshot in `cache_dir` say its build started `by`
/// later than it did, as if the files it recorded had been left alone for that
/// long (the racy-file rule distrusts files younger than [`RACY_WINDOW`], and a
/// test cannot set a file's ctime back).
#[doc(hidden)]
pub fn pretend_older_files(cache_dir: &Path, by: Duration) -> std::io::Result<usize> {
    let mut n = 0;
    let Ok(dir) = std::fs::read_dir(cache_dir.join(DIR)) else {
        return Ok(0);
    };
    for e in dir {
        let path = e?.path();
        let Some(key) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(Key::from_hex)
        else {
            continue;
        };
        let Some(mut s) = decode(std::fs::read(&path)?, &key)
            .filter(|s| blake3::hash(&s.payload).as_bytes() == &s.sum)
        else {
            continue;
        };
        s.start_ns = s.start_ns.saturating_add(by.as_nanos() as i64);
        let table = &s.payload[TABLE..TABLE + s.count * RECORD];
        let heap = &s.payload[s.heap.clone()];
        std::fs::write(&path, encode(s.start_ns, table, heap, &s.replay, &key))?;
        n += 1;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// The file format: MAGIC, the invocation key (32 bytes), the payload's length
// (u64 LE), the payload, its blake3 (32 bytes). The payload: the header (see
// [`TABLE`]), the path records ([`RECORD`] bytes each), the path heap, the
// replay. Integers are little-endian; strings are a u32 length and their bytes;
// keys and digests their 32 raw bytes.

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).expect("a snapshot string fits in 4 GiB"));
        self.0.extend_from_slice(b);
    }
    fn label(&mut self, l: &Label) {
        self.bytes(l.package().as_bytes());
        self.bytes(l.name().as_bytes());
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn raw32(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    fn label(&mut self) -> Option<Label> {
        Some(Label::new(self.string()?, self.string()?))
    }
    /// A count of items each at least `min` bytes long: never more than remain.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = self.u64()? as usize;
        (n <= self.0.len() / min.max(1)).then_some(n)
    }
}

fn encode(start_ns: i64, table: &[u8], heap: &[u8], replay: &Replay, key: &Key) -> Vec<u8> {
    let mut p = Enc(Vec::with_capacity(TABLE + table.len() + heap.len() + 4096));
    p.u64(start_ns as u64);
    p.u64((table.len() / RECORD) as u64);
    p.u64(heap.len() as u64);
    p.0.extend_from_slice(table);
    p.0.extend_from_slice(heap);
    match replay {
        Replay::Build {
            planned,
            images,
            finished,
            materialized,
        } => {
            p.u8(1);
            p.u64(*planned);
            p.u64(*images);
            p.u64(finished.len() as u64);
            for f in finished {
                p.label(&f.label);
                p.bytes(f.kind.as_bytes());
                p.0.extend_from_slice(&f.key.0);
                p.0.extend_from_slice(&f.digest.0);
            }
            p.u64(materialized.len() as u64);
            for m in materialized {
                p.label(&m.label);
                p.bytes(m.path.as_os_str().as_bytes());
                p.0.extend_from_slice(&m.digest.0);
            }
        }
        Replay::Check { result } => {
            p.u8(2);
            p.bytes(result.as_bytes());
        }
    }
    let payload = p.0;
    let mut out = Vec::with_capacity(payload.len() + 80);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(blake3::hash(&payload).as_bytes());
    out
}

fn decode(mut bytes: Vec<u8>, key: &Key) -> Option<Snapshot> {
    let head = 8 + 32 + 8;
    let (len, sum) = {
        let mut d = Dec(&bytes);
        if d.take(8)? != MAGIC || d.raw32()? != key.0 {
            return None;
        }
        let len = d.u64()? as usize;
        if d.0.len() != len.checked_add(32)? {
            return None;
        }
        d.take(len)?;
        (len, d.raw32()?)
    };
    bytes.truncate(head + len);
    bytes.drain(..head);
    let payload = bytes;
    let mut d = Dec(&payload);
    let start_ns = d.u64()? as i64;
    let count = d.count(RECORD)?;
    let heap_len = d.u64()? as usize;
    d.take(count * RECORD)?;
    let heap_start = TABLE + count * RECORD;
    d.take(heap_len)?;
    let replay = match d.u8()? {
        1 => {
            let planned = d.u64()?;
            let images = d.u64()?;
            let n = d.count(8 + 4 + 64)?;
            let mut finished = Vec::with_capacity(n);
            for _ in 0..n {
                finished.push(Finished {
                    label: d.label()?,
                    kind: d.string()?,
                    key: Key(d.raw32()?),
                    digest: Digest(d.raw32()?),
                });
            }
            let n = d.count(12 + 32)?;
            let mut materialized = Vec::with_capacity(n);
            for _ in 0..n {
                materialized.push(Materialized {
                    label: d.label()?,
                    path: PathBuf::from(OsString::from_vec(d.bytes()?.to_vec())),
                    digest: Digest(d.raw32()?),
                });
            }
            Replay::Build {
                planned,
                images,
                finished,
                materialized,
            }
        }
        2 => Replay::Check {
            result: d.string()?,
        },
        _ => return None,
    };
    if !d.0.is_empty() {
        return None;
    }
    Some(Snapshot {
        start_ns,
        count,
        heap: heap_start..heap_start + heap_len,
        payload,
        sum,
        replay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(dir: &Path, root: &Path) -> Invocation {
        Invocation::new(dir, root, "build", &[("patterns", b"//...")]).unwrap()
    }

    fn replay() -> Replay {
        Replay::Build {
            planned: 2,
            images: 1,
            finished: vec![Finished {
                label: Label::new("a", "b"),
                kind: "image".into(),
                key: Key::of_bytes(b"k"),
                digest: Digest::of_bytes(b"d"),
            }],
            materialized: vec![Materialized {
                label: Label::new("a", "b"),
                path: PathBuf::from("/x/imgc-out/a/b"),
                digest: Digest::of_bytes(b"d"),
            }],
        }
    }

    /// Writes a snapshot of `rec` as if its build had started in 3 s (every file
    /// already out of the racy window).
    fn write_trusted(inv: &Invocation, rec: &Recorded) -> bool {
        write(
            inv,
            SystemTime::now() + Duration::from_secs(3),
            rec,
            replay(),
        )
        .unwrap()
    }

    /// A workspace with one file, and a snapshot of it written as if its build
    /// had started `shift` after now.
    fn setup(shift: Duration) -> (tempfile::TempDir, tempfile::TempDir, Invocation) {
        let ws = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("d")).unwrap();
        std::fs::write(ws.path().join("d/f"), "x").unwrap();
        let inv = inv(cache.path(), ws.path());
        let mut rec = Recorded::default();
        // `d` as a listed directory (a copy's walk records it), `d/f` in it.
        rec.ws(ws.path(), "d");
        rec.ws(ws.path(), "d/f");
        rec.ws(ws.path(), "gone");
        assert!(write(&inv, SystemTime::now() + shift, &rec, replay()).unwrap());
        (ws, cache, inv)
    }

    #[test]
    fn round_trips_and_records_ancestors_and_absence() {
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        let s = load(&inv).unwrap();
        assert_eq!(s.holds(&inv), Some(&replay()));
        let entries = s.entries(&inv);
        let paths: Vec<&Path> = entries.iter().map(|(p, _)| p.as_path()).collect();
        for p in ["", "d", "d/f", "gone"] {
            let want = if p.is_empty() {
                ws.path().to_path_buf()
            } else {
                ws.path().join(p)
            };
            assert!(paths.contains(&want.as_path()), "{p} not recorded");
        }
        assert!(
            s.entries(&inv)
                .iter()
                .any(|(p, r)| p.ends_with("gone") && r.is_none())
        );
        assert!(s.holds(&inv).is_some());
    }

    #[test]
    fn a_change_or_a_new_path_breaks_it() {
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        std::fs::write(ws.path().join("d/f"), "y").unwrap();
        assert!(load(&inv).unwrap().holds(&inv).is_none());
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        std::fs::write(ws.path().join("gone"), "").unwrap();
        assert!(load(&inv).unwrap().holds(&inv).is_none());
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        std::fs::write(ws.path().join("d/new"), "").unwrap();
        assert!(load(&inv).unwrap().holds(&inv).is_none());
    }

    #[test]
    fn blobs_are_recorded_below_the_cache_and_other_paths_absolutely() {
        let ws = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let blob = cache.path().join("cas/sha256/ab/abcd");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, "blob").unwrap();
        let other = elsewhere.path().join("f");
        std::fs::write(&other, "x").unwrap();
        let inv = inv(cache.path(), ws.path());
        let mut rec = Recorded::default();
        rec.outside.insert(blob.clone());
        rec.outside.insert(other.clone());
        assert!(write_trusted(&inv, &rec));
        let s = load(&inv).unwrap();
        let mut bases: Vec<u8> = (0..s.count).map(|i| s.path(i).unwrap().0).collect();
        bases.sort();
        assert_eq!(bases, [Base::Cas as u8, Base::Absolute as u8]);
        let mut paths: Vec<PathBuf> = s.entries(&inv).into_iter().map(|(p, _)| p).collect();
        paths.sort();
        let mut want = vec![blob.clone(), other.clone()];
        want.sort();
        assert_eq!(paths, want);
        assert!(s.holds(&inv).is_some());
        std::fs::write(&blob, "BLOB").unwrap();
        assert!(s.holds(&inv).is_none());
        std::fs::write(&blob, "blob").unwrap();
        std::fs::write(&other, "y").unwrap();
        assert!(load(&inv).unwrap().holds(&inv).is_none());
        // A blob gone when the snapshot is written: no snapshot.
        std::fs::remove_file(&blob).unwrap();
        assert!(!write(&inv, SystemTime::now(), &rec, replay()).unwrap());
        assert!(load(&inv).is_none());
    }

    #[test]
    fn a_directory_recorded_only_as_an_ancestor_is_covered_by_its_parent() {
        let ws = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join("d/e")).unwrap();
        std::fs::write(ws.path().join("d/e/f"), "x").unwrap();
        let inv = inv(cache.path(), ws.path());
        let mut rec = Recorded::default();
        rec.ws(ws.path(), "d/e/f");
        let write_it = || assert!(write_trusted(&inv, &rec));
        write_it();
        // The root, `f`, and every other ancestor below the root: `d` is left out
        // (the root's mtime covers it), `e` is not (`d` is not stat-ed).
        let paths: Vec<PathBuf> = load(&inv)
            .unwrap()
            .entries(&inv)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let want: Vec<PathBuf> = ["", "d/e", "d/e/f"]
            .iter()
            .map(|p| {
                if p.is_empty() {
                    ws.path().to_path_buf()
                } else {
                    ws.path().join(p)
                }
            })
            .collect();
        assert_eq!(paths, want);
        assert!(load(&inv).unwrap().holds(&inv).is_some());
        // `d` or `e` moved away and replaced by a link to it: `f` is the same file,
        // reached through a link, and each is noticed.
        for (dir, away, link) in [("d", "y", "y"), ("d/e", "x", "../x")] {
            write_it();
            std::fs::rename(ws.path().join(dir), ws.path().join(away)).unwrap();
            std::os::unix::fs::symlink(link, ws.path().join(dir)).unwrap();
            assert!(ws.path().join("d/e/f").exists());
            assert!(
                load(&inv).unwrap().holds(&inv).is_none(),
                "{dir} replaced by a link"
            );
            std::fs::remove_file(ws.path().join(dir)).unwrap();
            std::fs::rename(ws.path().join(away), ws.path().join(dir)).unwrap();
        }
    }

    #[test]
    fn a_snapshot_that_cannot_be_written_leaves_no_old_one_behind() {
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        assert!(inv.file.exists());
        let mut rec = Recorded::default();
        rec.ws(ws.path(), "d/f");
        std::fs::remove_dir_all(ws.path()).unwrap();
        assert!(write(&inv, SystemTime::now(), &rec, replay()).is_err());
        assert!(!inv.file.exists());
    }

    #[test]
    fn recent_files_are_not_trusted() {
        // Written just now: every file is within the racy window of the build start.
        let (_ws, cache, inv) = setup(Duration::ZERO);
        assert!(load(&inv).unwrap().holds(&inv).is_none());
        assert_eq!(
            pretend_older_files(cache.path(), Duration::from_secs(3)).unwrap(),
            1
        );
        assert!(load(&inv).unwrap().holds(&inv).is_some());
    }

    #[test]
    fn damaged_truncated_or_foreign_snapshots_are_ignored() {
        let (ws, cache, inv) = setup(Duration::from_secs(3));
        let good = std::fs::read(&inv.file).unwrap();
        for cut in [0, 7, 40, good.len() / 2, good.len() - 1] {
            std::fs::write(&inv.file, &good[..cut]).unwrap();
            assert_eq!(load(&inv), None, "cut at {cut}");
        }
        // A flipped bit anywhere (a path record, a path, the replay, the checksum):
        // unreadable, or read but never held.
        std::fs::write(&inv.file, &good).unwrap();
        assert!(load(&inv).unwrap().holds(&inv).is_some());
        for at in (8 + 32 + 8..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[at] ^= 1;
            std::fs::write(&inv.file, &bad).unwrap();
            assert!(
                load(&inv).is_none_or(|s| s.holds(&inv).is_none()),
                "bit flipped at {at}"
            );
        }
        std::fs::write(&inv.file, &good).unwrap();
        let other =
            Invocation::new(cache.path(), ws.path(), "build", &[("patterns", b"//a")]).unwrap();
        assert_ne!(other.file, inv.file);
        std::fs::copy(&inv.file, &other.file).unwrap();
        assert_eq!(load(&other), None);
    }

    #[test]
    fn a_followed_link_writes_no_snapshot() {
        let ws = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("real")).unwrap();
        std::fs::write(ws.path().join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink("real", ws.path().join("link")).unwrap();
        let inv = inv(cache.path(), ws.path());
        let mut rec = Recorded::default();
        rec.ws(ws.path(), "link/f");
        assert!(!write(&inv, SystemTime::now(), &rec, replay()).unwrap());
        assert!(!inv.file.exists());
        // A link copied as a link (recorded itself, nothing below it) is fine.
        let mut rec = Recorded::default();
        rec.ws(ws.path(), "link");
        assert!(write(&inv, SystemTime::now(), &rec, replay()).unwrap());
        // A link opened following it is not.
        let mut rec = Recorded::default();
        rec.ws_followed(ws.path(), "link");
        assert!(!write(&inv, SystemTime::now(), &rec, replay()).unwrap());
    }
}
