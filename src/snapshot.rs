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
//! | ancestors | every directory above a recorded workspace path, up to the root | a parent replaced (by a link, by another directory) changes its inode |
//! | outputs | every CAS blob of every target in the build, and per image layout its directory (its mtime covers the mark and `blobs`), `oci-layout`, `index.json`, `blobs/sha256`; with `//...`, every directory of the output directory that the stale-layout sweep listed | a deleted blob, a blob or layout file edited in place (ctime), a blob unlinked from a layout (the CAS file's link count and ctime), a layout added or removed |
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
//! # What stat data cannot see, and why that is no loss
//!
//! A file rewritten in place to the same size with its mtime set back *and* within
//! the same ctime tick as the record is invisible to stat; ctime cannot be set by
//! user tools, and the full path trusts the very same stat data (the file-hash
//! memo, the CAS blob checks and layout stamps of [`crate::cache`]), so it would
//! not see it either. The action cache's rows are not validated: a snapshot
//! answers "cached" from the outputs it checked, which are the bytes the cache
//! rows name; `imgc cache gc` and `imgc cache verify` drop every snapshot, and
//! `imgc clean --cache` removes them with the cache.
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
use std::collections::BTreeSet;
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

const MAGIC: &[u8; 8] = b"IMGCSNP1";

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
    /// Absolute paths inside the workspace: their ancestors up to the root are
    /// recorded too, and none of them may be a symbolic link.
    pub workspace: BTreeSet<PathBuf>,
    /// Of `workspace`: paths opened following a link at their last component
    /// (spec files, imports, glob bases): if one is a link, no snapshot.
    pub followed: BTreeSet<PathBuf>,
    /// Absolute paths outside the workspace (CAS blobs), recorded as they are.
    pub outside: BTreeSet<PathBuf>,
    /// Set when the build depended on something a snapshot cannot describe.
    pub refused: bool,
}

impl Recorded {
    /// Records workspace path `rel` (relative to `root`).
    pub fn ws(&mut self, root: &Path, rel: impl AsRef<Path>) {
        let rel = rel.as_ref();
        self.workspace.insert(if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        });
    }

    /// Records workspace path `rel`, which was opened following a link.
    pub fn ws_followed(&mut self, root: &Path, rel: impl AsRef<Path>) {
        self.ws(root, rel.as_ref());
        self.followed.insert(root.join(rel));
    }
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

/// A loaded snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When the build that wrote it started (ns since the epoch).
    pub start_ns: i64,
    pub entries: Vec<(PathBuf, Option<StatRec>)>,
    pub replay: Replay,
}

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

impl Snapshot {
    /// Whether every recorded path is as recorded, none too recent to trust, and
    /// the snapshot young enough.
    pub fn holds(&self) -> bool {
        self.holds_below(&[])
    }

    /// [`Snapshot::holds`], each path below one of `bases` stat-ed relative to a
    /// descriptor of that directory (the kernel then walks only the rest of the
    /// path). A base is opened by its path: it is recorded too (the workspace
    /// root), or names no recorded path's parent link (the cache's blobs).
    pub fn holds_below(&self, bases: &[&Path]) -> bool {
        let now = ns_of(SystemTime::now());
        if now.saturating_sub(self.start_ns) > MAX_AGE.as_nanos() as i64 {
            return false;
        }
        let limit = self.start_ns.saturating_sub(RACY_WINDOW.as_nanos() as i64);
        let opened: Vec<(&Path, Option<std::os::fd::OwnedFd>)> = bases
            .iter()
            .map(|b| {
                let fd = rustix::fs::open(
                    *b,
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .ok();
                (*b, fd)
            })
            .collect();
        self.entries.par_iter().all(|(path, rec)| {
            if let Some(r) = rec
                && (r.mtime_ns > limit || r.ctime_ns > limit)
            {
                return false;
            }
            let below = opened.iter().find_map(|(base, fd)| {
                let rel = path.strip_prefix(base).ok()?;
                (!rel.as_os_str().is_empty()).then_some((fd.as_ref()?, rel))
            });
            let now = match below {
                Some((fd, rel)) => lstat_at(fd, rel),
                None => lstat(path),
            };
            matches!(now, Ok(now) if now == *rec)
        })
    }
}

/// `lstat` of `rel` below the directory `dir`: `Ok(None)` if it does not exist.
/// Field types differ between architectures (hence the casts).
#[allow(clippy::unnecessary_cast)]
fn lstat_at(dir: &std::os::fd::OwnedFd, rel: &Path) -> std::io::Result<Option<StatRec>> {
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

/// Loads the snapshot of `inv`, if there is a whole one for it.
pub fn load(inv: &Invocation) -> Option<Snapshot> {
    let bytes = std::fs::read(&inv.file).ok()?;
    decode(&bytes, &inv.key)
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
    let mut paths: BTreeSet<&Path> = BTreeSet::new();
    for p in &recorded.workspace {
        if !p.starts_with(&inv.root) {
            // Not under the root as given: not described by ancestors.
            return refuse(inv);
        }
        let mut at: &Path = p;
        loop {
            if !paths.insert(at) || at == inv.root {
                break;
            }
            match at.parent() {
                Some(parent) => at = parent,
                None => break,
            }
        }
    }
    paths.extend(recorded.outside.iter().map(PathBuf::as_path));
    if recorded.refused {
        return refuse(inv);
    }
    let paths: Vec<&Path> = paths.into_iter().collect();
    let stats: Vec<std::io::Result<Option<StatRec>>> = paths.par_iter().map(|p| lstat(p)).collect();
    let mut entries = Vec::with_capacity(paths.len());
    for (p, s) in paths.iter().zip(stats) {
        let Ok(s) = s else { return refuse(inv) };
        // Every blob of the answer was just found intact: one gone now (another
        // process's gc) means the answer is already stale.
        if s.is_none() && recorded.outside.contains(*p) {
            return refuse(inv);
        }
        // A workspace path that is a link was followed (spec files, imports,
        // glob bases) or a directory above one: its target is not described.
        if s.is_some_and(|s| s.is_symlink())
            && (recorded.followed.contains(*p)
                || recorded
                    .workspace
                    .iter()
                    .any(|w| w != p && w.starts_with(p)))
        {
            return refuse(inv);
        }
        entries.push((p.to_path_buf(), s));
    }
    let snapshot = Snapshot {
        start_ns: ns_of(start),
        entries,
        replay,
    };
    let bytes = encode(&snapshot, &inv.key);
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
        let Some(mut s) = decode(&std::fs::read(&path)?, &key) else {
            continue;
        };
        s.start_ns = s.start_ns.saturating_add(by.as_nanos() as i64);
        std::fs::write(&path, encode(&s, &key))?;
        n += 1;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// The file format: MAGIC, the invocation key (32 bytes), the payload's length
// (u64 LE), the payload, its blake3 (32 bytes). Integers are little-endian;
// strings and paths are a u32 length and their bytes.

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
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).expect("a snapshot string fits in 4 GiB"));
        self.0.extend_from_slice(b);
    }
    fn key(&mut self, k: &Key) {
        self.0.extend_from_slice(&k.0);
    }
    fn digest(&mut self, d: &Digest) {
        self.bytes(d.to_string().as_bytes());
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
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn key(&mut self) -> Option<Key> {
        Some(Key(self.take(32)?.try_into().ok()?))
    }
    fn digest(&mut self) -> Option<Digest> {
        self.string()?.parse().ok()
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

fn encode(s: &Snapshot, key: &Key) -> Vec<u8> {
    let mut p = Enc(Vec::new());
    p.i64(s.start_ns);
    p.u64(s.entries.len() as u64);
    for (path, rec) in &s.entries {
        p.bytes(path.as_os_str().as_bytes());
        match rec {
            None => p.u8(0),
            Some(r) => {
                p.u8(1);
                p.u64(r.dev);
                p.u64(r.ino);
                p.u32(r.mode);
                p.u64(r.nlink);
                p.u64(r.size);
                p.i64(r.mtime_ns);
                p.i64(r.ctime_ns);
            }
        }
    }
    match &s.replay {
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
                p.key(&f.key);
                p.digest(&f.digest);
            }
            p.u64(materialized.len() as u64);
            for m in materialized {
                p.label(&m.label);
                p.bytes(m.path.as_os_str().as_bytes());
                p.digest(&m.digest);
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

fn decode(bytes: &[u8], key: &Key) -> Option<Snapshot> {
    let mut d = Dec(bytes);
    if d.take(8)? != MAGIC || d.key()? != *key {
        return None;
    }
    let len = d.u64()? as usize;
    let payload = d.take(len)?;
    let sum = d.take(32)?;
    if !d.0.is_empty() || blake3::hash(payload).as_bytes() != sum {
        return None;
    }
    let mut d = Dec(payload);
    let start_ns = d.i64()?;
    let n = d.count(5)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let path = PathBuf::from(OsString::from_vec(d.bytes()?.to_vec()));
        let rec = match d.u8()? {
            0 => None,
            1 => Some(StatRec {
                dev: d.u64()?,
                ino: d.u64()?,
                mode: d.u32()?,
                nlink: d.u64()?,
                size: d.u64()?,
                mtime_ns: d.i64()?,
                ctime_ns: d.i64()?,
            }),
            _ => return None,
        };
        entries.push((path, rec));
    }
    let replay = match d.u8()? {
        1 => {
            let planned = d.u64()?;
            let images = d.u64()?;
            let n = d.count(40)?;
            let mut finished = Vec::with_capacity(n);
            for _ in 0..n {
                finished.push(Finished {
                    label: d.label()?,
                    kind: d.string()?,
                    key: d.key()?,
                    digest: d.digest()?,
                });
            }
            let n = d.count(12)?;
            let mut materialized = Vec::with_capacity(n);
            for _ in 0..n {
                materialized.push(Materialized {
                    label: d.label()?,
                    path: PathBuf::from(OsString::from_vec(d.bytes()?.to_vec())),
                    digest: d.digest()?,
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
        entries,
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

    /// A workspace with one file, and a snapshot of it written as if its build
    /// had started `shift` after now.
    fn setup(shift: Duration) -> (tempfile::TempDir, tempfile::TempDir, Invocation) {
        let ws = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("d")).unwrap();
        std::fs::write(ws.path().join("d/f"), "x").unwrap();
        let inv = inv(cache.path(), ws.path());
        let mut rec = Recorded::default();
        rec.ws(ws.path(), "d/f");
        rec.ws(ws.path(), "gone");
        assert!(write(&inv, SystemTime::now() + shift, &rec, replay()).unwrap());
        (ws, cache, inv)
    }

    #[test]
    fn round_trips_and_records_ancestors_and_absence() {
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        let s = load(&inv).unwrap();
        assert_eq!(s.replay, replay());
        let paths: Vec<&Path> = s.entries.iter().map(|(p, _)| p.as_path()).collect();
        for p in ["", "d", "d/f", "gone"] {
            let want = if p.is_empty() {
                ws.path().to_path_buf()
            } else {
                ws.path().join(p)
            };
            assert!(paths.contains(&want.as_path()), "{p} not recorded");
        }
        assert!(
            s.entries
                .iter()
                .any(|(p, r)| p.ends_with("gone") && r.is_none())
        );
        assert!(s.holds());
    }

    #[test]
    fn a_change_or_a_new_path_breaks_it() {
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        std::fs::write(ws.path().join("d/f"), "y").unwrap();
        assert!(!load(&inv).unwrap().holds());
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        std::fs::write(ws.path().join("gone"), "").unwrap();
        assert!(!load(&inv).unwrap().holds());
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        std::fs::write(ws.path().join("d/new"), "").unwrap();
        assert!(!load(&inv).unwrap().holds());
    }

    #[test]
    fn paths_below_a_base_are_checked_through_its_descriptor() {
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        assert!(load(&inv).unwrap().holds_below(&[ws.path()]));
        std::fs::write(ws.path().join("d/f"), "yy").unwrap();
        assert!(!load(&inv).unwrap().holds_below(&[ws.path()]));
        let (ws, _cache, inv) = setup(Duration::from_secs(3));
        std::fs::write(ws.path().join("gone"), "").unwrap();
        assert!(!load(&inv).unwrap().holds_below(&[ws.path()]));
    }

    #[test]
    fn recent_files_are_not_trusted() {
        // Written just now: every file is within the racy window of the build start.
        let (_ws, cache, inv) = setup(Duration::ZERO);
        assert!(!load(&inv).unwrap().holds());
        assert_eq!(
            pretend_older_files(cache.path(), Duration::from_secs(3)).unwrap(),
            1
        );
        assert!(load(&inv).unwrap().holds());
    }

    #[test]
    fn damaged_truncated_or_foreign_snapshots_are_ignored() {
        let (ws, cache, inv) = setup(Duration::from_secs(3));
        let good = std::fs::read(&inv.file).unwrap();
        for cut in [0, 7, 40, good.len() / 2, good.len() - 1] {
            std::fs::write(&inv.file, &good[..cut]).unwrap();
            assert_eq!(load(&inv), None, "cut at {cut}");
        }
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        std::fs::write(&inv.file, &bad).unwrap();
        assert_eq!(load(&inv), None);
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
