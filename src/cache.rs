//! The local cache index: the one module that talks to SQLite.
//!
//! # What is stored
//!
//! `<cache-dir>/v1/imgc.sqlite` (schema: `cache-schema.sql`, loaded with
//! `include_str!`) holds small tables:
//!
//! - **the action cache**: an action [`Key`] → the action's outputs, as an opaque JSON
//!   text that the scheduler defines, plus the list of blob [`Digest`]s (and their sizes)
//!   those outputs reference. The blob list lets the scheduler check that every blob of
//!   a hit is still in the CAS before trusting it, and gives garbage collection its roots;
//! - **the file-hash memo**: a path and its stat data ([`StatKey`]: size, mtime, ctime,
//!   inode, mode) → the blake3 of its contents, so that an unchanged file is not read
//!   again. Stat data only decides whether to re-hash: it never enters a key;
//! - **blob checks**: store blobs verified to hash to their name, with their stat data
//!   then, so that a hit re-hashes a blob only when its stat data changed;
//! - **the last build of each label**: its key and the JSON of the key's named
//!   components, so the next build can print *why* something rebuilt;
//! - **layouts**: what each image layout directory held when a build last wrote or
//!   fully checked it, and the blobs it names ([`LayoutRecord`]);
//! - **the parse cache**: a [`Key`] over a spec file's exact text (and the parser
//!   version, file kind and package) → the parse result as opaque JSON, defined by
//!   `workspace`. Only files that parsed without any diagnostic are stored, so errors
//!   are always reported fresh;
//! - bookkeeping: the workspaces that built, when each row was last used.
//!
//! # What is deliberately not stored
//!
//! No blob contents (those live in the content-addressed store, `cas/`, as plain
//! immutable files that are valid OCI blobs), no spec text (only parse results keyed
//! by its hash), no build logs, nothing from a remote cache. The database is a
//! **per-machine index**: everything in it can be recomputed from the workspace and the
//! CAS. It is never the only copy of anything, so losing it costs one cold build, never
//! correctness.
//!
//! # Damage heals itself
//!
//! [`Cache::open`] never fails because of what is in the file: a file that is not a
//! database or has another schema version is moved aside (to `imgc.sqlite.bad`) and a
//! fresh one is created, with a warning returned to the caller. A file damaged further
//! in (page 1 intact, so it opens, but its tables garbage) is found by the first
//! statement that reads a damaged page, which fails with `SQLITE_CORRUPT`: every method
//! then does the same, once, by itself (moves the file aside, starts a new one, and
//! runs the statement again on it), and keeps the warning for
//! [`Cache::take_warnings`]. A caller therefore never sees corruption as an error, and
//! one damaged file gives one warning, not one per statement. Only environment errors
//! (permissions, a full disk, a lock held too long) are returned. No integrity check
//! runs at open: it reads the whole file, on every command, to find what the first
//! failing statement finds anyway.
//!
//! If another process already replaced the damaged file (the path now names another
//! file than the one this connection opened), the replacement is used as it is,
//! rather than moved aside in turn.
//!
//! The remote cache never holds SQLite: SQLite's locking and WAL do not work on
//! network filesystems. It is a directory of immutable files handled by `cas`.
//!
//! # Several processes, short transactions
//!
//! Two builds (of one workspace or of two), `imgc query` and `imgc cache stats` may
//! run at the same time on one cache directory. The rules that make that work:
//!
//! - **WAL mode** with `synchronous=NORMAL`: readers never block the writer or each
//!   other, and a commit appends to the write-ahead log without an fsync (the log is
//!   synced at checkpoints). A power cut may lose the last few commits, never
//!   consistency: for an index that is the right trade.
//! - **Opening takes no write lock** unless it must create the schema: checking the
//!   schema version is a read. Read-only commands (`query`, `check`, `explain`,
//!   `cache stats`) only read, except the parse cache, whose writes are best-effort:
//!   they wait at most [`PARSE_WRITE_WAIT`] for the lock and are skipped if it is busy.
//! - **Builds write in batches of short transactions.** The coordinator collects its
//!   records (actions, last builds, memo rows, layouts, repairs) in a [`Batch`], in
//!   memory, and [`Cache::commit`]s it every few hundred milliseconds and at the end:
//!   at most [`CHUNK`] rows per transaction, so the write lock is held for
//!   milliseconds at a time and never while an action runs. Every row is independent
//!   (a key and its blobs go in one row's statements), so a batch need not be atomic;
//!   a killed build keeps what it committed. A **busy timeout** covers the rest.
//!
//! Two builds of the same workspace may both run an action and record the same key:
//! the records are equal (a key determines its outputs), so the last write wins
//! harmlessly.
//!
//! # What keeps it bounded
//!
//! Rows that name a checkout (memo rows are keyed by absolute path; last builds and
//! layouts are per checkout) are scoped by a [`WorkspaceId`], the hash of the canonical
//! workspace root. A build loads only its own workspace's memo. Every such row, blob
//! check and parse-cache row carries the time it was last used (refreshed at most once
//! a day, so a build in which everything hits writes nearly nothing), and
//! [`Cache::prune`], run by a commit at most once a day, deletes rows not used for
//! [`KEEP`], and every row of workspaces beyond the [`MAX_WORKSPACES`] most recently
//! seen (a CI job with a new checkout path each time leaves its rows for the next
//! prune, not forever). Action rows are not pruned here: they are the roots of the
//! blob store, and go with its garbage collection.
//!
//! The memory a connection takes is bounded too, whatever the size of the file: a
//! page cache of [`CACHE_KIB`] and no memory map (a mapped page that a statement
//! touched counts in the process's resident set, so a mapped database made a
//! build's peak memory grow with the workspace).
//!
//! # Versioning
//!
//! The directory name (`v1/`) changes when the on-disk format changes; inside it,
//! `PRAGMA user_version` must equal [`SCHEMA_VERSION`], else the file is rebuilt,
//! unless a migration from its version exists (5 -> 6 only adds the `registry_blob`
//! table, so the action cache survives the upgrade). A test pins a hash of the schema
//! text so a schema edit cannot forget the version bump.
//!
//! # Threads
//!
//! A [`Cache`] (a `rusqlite::Connection`) lives on the coordinating thread. Workers
//! get read-only snapshots instead: [`Cache::load_memo`] returns a [`FileMemo`]
//! (`Send + Sync`), workers return new [`MemoEntry`]s, and the coordinator adds them
//! to its [`Batch`]. A memo row that a worker finds still valid is marked used in the
//! snapshot (an atomic flag), so [`Batch::touch_memo`] can refresh it later.
//!
//! # The racy-file rule
//!
//! A file modified in the same clock tick as it was hashed could later show the same
//! stat data with different contents (git's "racy git" problem). So a memo row (and a
//! blob check, and a layout stamp) whose mtime or ctime is not at least
//! [`RACY_WINDOW`] older than the start of the build that computed it is not stored;
//! such a file is simply hashed again next time (by then it is old enough to be
//! remembered). Rows in the database are therefore always trustworthy, and
//! [`FileMemo::lookup`] only compares stat data. Callers must take the stat *before*
//! reading the contents they hash, so a concurrent edit shows up as a stat change. The
//! ctime is part of [`StatKey`] because, unlike mtime, no user tool can set it back.

use crate::hash::{Digest, Key};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The page cache of each connection, in KiB (about SQLite's default).
pub const CACHE_KIB: i64 = 2048;

/// The schema, as created by [`Cache::open`].
pub const SCHEMA: &str = include_str!("../cache-schema.sql");

/// `PRAGMA user_version` of a database made from [`SCHEMA`]. Bump on any schema change.
pub const SCHEMA_VERSION: i32 = 6;

/// The migration from schema 5: the `registry_blob` table of [`SCHEMA`], unchanged.
const MIGRATE_5_TO_6: &str = "CREATE TABLE registry_blob (registry TEXT NOT NULL, digest BLOB NOT NULL CHECK (length(digest) = 32),
repository TEXT NOT NULL, seen_at INTEGER NOT NULL, PRIMARY KEY (registry, digest, repository)) WITHOUT ROWID;";

/// How much older than the build start a file's mtime and ctime must be before its
/// hash is remembered (covers coarse filesystem timestamps, e.g. 2 s on FAT).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Rows (memo, blob checks, last builds, layouts, parse results) not used for this
/// long are deleted.
pub const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parse-cache rows not used for this long are deleted when new rows are written.
pub const PARSE_KEEP: Duration = KEEP;

/// A hit (parse cache, action cache, memo row...) refreshes its last-use time only
/// when it is older than this, so a run in which everything hits writes nothing.
pub const TOUCH_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How often a build refreshes its workspace's last-seen time.
pub const WORKSPACE_TOUCH_AFTER: Duration = Duration::from_secs(3600);

/// How often [`Cache::commit`] prunes old rows.
pub const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The workspaces whose rows are kept: the most recently seen ones.
pub const MAX_WORKSPACES: usize = 16;

/// Rows written per transaction by [`Cache::commit`]: the write lock is held for
/// about a millisecond per chunk.
pub const CHUNK: usize = 256;

/// How long a best-effort write (the parse cache) waits for the write lock.
pub const PARSE_WRITE_WAIT: Duration = Duration::from_millis(100);

/// How long to wait for another imgc process holding the write lock. Every write
/// transaction is short, so this is only reached when something is badly wrong.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the cache index. Corruption is healed inside [`Cache`] (see the module
/// docs); what remains are environment problems.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache database `{path}`: {source}")]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cache database `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cache database `{path}` is corrupt: {what}")]
    Corrupt { path: String, what: String },
}

impl CacheError {
    /// True when the database file itself is damaged (rather than the environment).
    pub fn is_corrupt(&self) -> bool {
        match self {
            CacheError::Corrupt { .. } => true,
            CacheError::Db { source, .. } => is_corruption(source),
            CacheError::Io { .. } => false,
        }
    }

    /// True when another process held the lock for longer than the wait allowed.
    pub fn is_busy(&self) -> bool {
        matches!(self, CacheError::Db { source, .. } if is_busy(source))
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A checkout that builds with this cache: the hash of its canonical root path,
/// which scopes the rows that name its files (memo, last builds, layouts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceId {
    id: [u8; 32],
    root: String,
}

impl WorkspaceId {
    /// The id of the workspace whose canonical (symlink-free, absolute) root is
    /// `canonical_root`.
    pub fn of_root(canonical_root: &Path) -> WorkspaceId {
        use std::os::unix::ffi::OsStrExt;
        let mut bytes = b"imgc workspace\0".to_vec();
        bytes.extend_from_slice(canonical_root.as_os_str().as_bytes());
        WorkspaceId {
            id: Key::of_bytes(&bytes).0,
            root: canonical_root.to_string_lossy().into_owned(),
        }
    }

    /// The root path it was made from (for humans).
    pub fn root(&self) -> &str {
        &self.root
    }
}

/// A blob referenced by an action's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// A hit in the action cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    pub key: Key,
    pub kind: String,
    pub label: String,
    /// Opaque JSON defined by the scheduler.
    pub outputs_json: String,
    /// Sorted by digest.
    pub blobs: Vec<BlobRef>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub used_at: i64,
}

/// An action row as garbage collection and verification see it: when it was
/// last used, and the blobs it names (the roots of the blob store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionUse {
    pub key: Key,
    pub label: String,
    /// Opaque JSON defined by the scheduler.
    pub outputs_json: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds (refreshed at most once per [`TOUCH_AFTER`]).
    pub used_at: i64,
    /// Sorted by digest.
    pub blobs: Vec<BlobRef>,
}

/// The stat data that decides whether a file must be re-hashed. Never part of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    pub size: u64,
    /// Nanoseconds since the unix epoch (negative before 1970).
    pub mtime_ns: i64,
    /// Nanoseconds since the unix epoch; changes on any write, chmod or rename and
    /// cannot be set by `touch`.
    pub ctime_ns: i64,
    pub inode: u64,
    /// `st_mode`, file type bits included.
    pub mode: u32,
}

impl StatKey {
    /// From `std::fs::symlink_metadata` or `metadata` of the file.
    pub fn from_metadata(m: &std::fs::Metadata) -> StatKey {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        StatKey {
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
            mode: m.mode(),
        }
    }

    /// Whether this stat data is older than the racy window before `limit_ns`.
    fn settled(&self, limit_ns: i64) -> bool {
        self.mtime_ns <= limit_ns && self.ctime_ns <= limit_ns
    }
}

/// What a layout directory held when a build last wrote or fully checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRecord {
    pub manifest: Digest,
    /// The ref names of its `index.json`, one per line.
    pub refs: String,
    /// Stat data of its top-level files and blob directory (see `output::layout_stamp`).
    pub stamp: String,
}

/// A remembered layout, as [`Cache::layout_records`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedLayout {
    pub record: LayoutRecord,
    /// Not seen for [`TOUCH_AFTER`]: pass the path to [`Batch::touch_layout`] when
    /// the build trusts it again.
    pub stale: bool,
}

/// The last build of a label, as [`Cache::last_build_keys`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastKey {
    pub key: Key,
    /// Not seen for [`TOUCH_AFTER`]: pass the label to
    /// [`Batch::touch_last_build`] when a build finds the same key again.
    pub stale: bool,
}

/// One memo row: a file's stat data and the blake3 of its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoEntry {
    pub stat: StatKey,
    pub hash: Key,
}

#[derive(Debug)]
struct MemoSlot {
    entry: MemoEntry,
    /// Last used more than [`TOUCH_AFTER`] ago.
    stale: bool,
    /// Set by a lookup that matched (only tracked for stale rows).
    used: AtomicBool,
}

#[derive(Debug)]
struct BlobSlot {
    stat: StatKey,
    stale: bool,
    used: AtomicBool,
}

/// A read-only snapshot of the file-hash memo of one workspace and of the blob
/// checks, for worker threads.
#[derive(Debug, Default)]
pub struct FileMemo {
    files: HashMap<String, MemoSlot>,
    blobs: HashMap<Digest, BlobSlot>,
}

impl FileMemo {
    /// The remembered hash of `path`, if its stat data is exactly as recorded.
    pub fn lookup(&self, path: &str, stat: &StatKey) -> Option<Key> {
        let slot = self.files.get(path).filter(|s| s.entry.stat == *stat)?;
        if slot.stale {
            slot.used.store(true, Ordering::Relaxed);
        }
        Some(slot.entry.hash)
    }

    /// Whether the store blob `d` was verified with exactly this stat data.
    pub fn blob_verified(&self, d: &Digest, stat: &StatKey) -> bool {
        let Some(slot) = self.blobs.get(d).filter(|s| s.stat == *stat) else {
            return false;
        };
        if slot.stale {
            slot.used.store(true, Ordering::Relaxed);
        }
        true
    }

    /// Memo rows (files) in the snapshot.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Counts for `imgc cache stats` and the build summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub actions: u64,
    pub memo_entries: u64,
    /// Rows of the parse cache.
    pub parsed_files: u64,
    pub last_builds: u64,
    /// Workspaces (checkouts) with rows in the index.
    pub workspaces: u64,
    /// Remembered layouts.
    pub layouts: u64,
    /// Store blobs remembered as verified.
    pub blob_checks: u64,
    /// Distinct blobs referenced by at least one action.
    pub blobs_referenced: u64,
    /// Total size of those distinct blobs, in bytes.
    pub bytes_referenced: u64,
    /// Size of the database file itself (pages in use), in bytes.
    pub db_bytes: u64,
}

/// What [`Cache::get_parsed`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedHits {
    /// Key → the stored value (opaque JSON), for the keys that hit.
    pub values: BTreeMap<Key, String>,
    /// Hits whose `used_at` is older than [`TOUCH_AFTER`]: pass them to
    /// [`Cache::put_parsed`] to keep them from being dropped as unused.
    pub stale: Vec<Key>,
}

/// What [`Cache::store_memo`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoStored {
    pub stored: usize,
    /// Entries refused by the racy-file rule (too recent to be trusted).
    pub too_recent: usize,
}

/// What [`Cache::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    /// Rows written (of any kind).
    pub rows: usize,
    /// Memo rows, blob checks and layout stamps refused by the racy-file rule.
    pub too_recent: usize,
    /// Transactions used.
    pub transactions: usize,
    /// Whether old rows were pruned.
    pub pruned: bool,
}

/// What [`Cache::prune`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub workspaces: usize,
    pub memo_rows: usize,
    pub last_builds: usize,
    pub layouts: usize,
    pub blob_checks: usize,
    pub parsed_files: usize,
}

/// One record waiting in a [`Batch`].
#[derive(Debug, Clone)]
enum Op {
    Action {
        key: Key,
        kind: String,
        label: String,
        outputs: String,
        blobs: Vec<BlobRef>,
        /// `""`: built here; else the remote cache it came from.
        origin: String,
    },
    Forget(Key),
    /// Garbage collection: forget `key` unless it was used (or recorded again)
    /// after the given `used_at`.
    Evict(Key, i64),
    Used(Key),
    LastBuild {
        label: String,
        key: Key,
        components: String,
    },
    TouchLastBuild(String),
    Memo(String, MemoEntry),
    TouchMemo(String),
    BlobVerified(Digest, StatKey),
    TouchBlob(Digest),
    Layout {
        path: String,
        record: LayoutRecord,
        blobs: Vec<Digest>,
        newest_ns: i64,
    },
    TouchLayout(String),
    Repaired(Digest),
    /// A store blob was deleted (garbage collection): its check goes.
    Deleted(Digest),
    /// Blobs known to be in a registry repository (after a push or a pull).
    RegistryBlobs {
        registry: String,
        repository: String,
        digests: Vec<Digest>,
    },
}

/// Records of one build of one workspace, kept in memory until
/// [`Cache::commit`] writes them in short transactions (see the module docs). The
/// records are written in the order they were added.
#[derive(Debug, Clone)]
pub struct Batch {
    ws: WorkspaceId,
    /// Stat data newer than this (ns) is not remembered: the racy-file rule.
    settled_before_ns: i64,
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch for a build of `ws` that started at `build_start` (taken
    /// before any file was stat-ed).
    pub fn new(ws: WorkspaceId, build_start: SystemTime) -> Batch {
        Batch {
            ws,
            settled_before_ns: system_time_ns(build_start)
                .saturating_sub(RACY_WINDOW.as_nanos() as i64),
            ops: Vec::new(),
        }
    }

    pub fn workspace(&self) -> &WorkspaceId {
        &self.ws
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Records (or replaces) the outputs of `key`.
    pub fn put_action(
        &mut self,
        key: &Key,
        kind: &str,
        label: &str,
        outputs_json: &str,
        blobs: &[BlobRef],
    ) {
        self.put_action_from(key, kind, label, outputs_json, blobs, "");
    }

    /// Records (or replaces) the outputs of `key` fetched from the remote cache
    /// `origin` (`""` for an action run here): see [`Cache::get_outputs_from`].
    pub fn put_action_from(
        &mut self,
        key: &Key,
        kind: &str,
        label: &str,
        outputs_json: &str,
        blobs: &[BlobRef],
        origin: &str,
    ) {
        self.ops.push(Op::Action {
            key: *key,
            kind: kind.to_string(),
            label: label.to_string(),
            outputs: outputs_json.to_string(),
            blobs: blobs.to_vec(),
            origin: origin.to_string(),
        });
    }

    /// Removes `key`, e.g. when a blob it references turned out missing or corrupt.
    pub fn forget_action(&mut self, key: &Key) {
        self.ops.push(Op::Forget(*key));
    }

    /// Marks a hit as used now (for the garbage collector's LRU order). Pass only
    /// hits that [`Cache::get_outputs`] flagged as stale.
    pub fn mark_used(&mut self, key: &Key) {
        self.ops.push(Op::Used(*key));
    }

    /// Records the last build of `label` in this workspace.
    pub fn set_last_build(&mut self, label: &str, key: &Key, components_json: &str) {
        self.ops.push(Op::LastBuild {
            label: label.to_string(),
            key: *key,
            components: components_json.to_string(),
        });
    }

    /// Keeps the last build of `label` from being pruned (see [`LastKey::stale`]).
    pub fn touch_last_build(&mut self, label: &str) {
        self.ops.push(Op::TouchLastBuild(label.to_string()));
    }

    /// A freshly computed file hash, for the memo. Not stored if its stat data is
    /// too recent (the racy-file rule), and then any older row for `path` is dropped.
    pub fn learn(&mut self, path: &str, entry: MemoEntry) {
        self.ops.push(Op::Memo(path.to_string(), entry));
    }

    /// A store blob just verified to hash to `d`, with its stat data taken before
    /// it was read. Same racy-file rule as [`Batch::learn`].
    pub fn blob_verified(&mut self, d: &Digest, stat: StatKey) {
        self.ops.push(Op::BlobVerified(*d, stat));
    }

    /// Refreshes the memo rows and blob checks that the build found valid and that
    /// were last used more than [`TOUCH_AFTER`] ago, so they are not pruned.
    pub fn touch_memo(&mut self, memo: &FileMemo) {
        let mut paths: Vec<&String> = memo
            .files
            .iter()
            .filter(|(_, s)| s.used.load(Ordering::Relaxed))
            .map(|(p, _)| p)
            .collect();
        paths.sort();
        let mut blobs: Vec<&Digest> = memo
            .blobs
            .iter()
            .filter(|(_, s)| s.used.load(Ordering::Relaxed))
            .map(|(d, _)| d)
            .collect();
        blobs.sort();
        self.ops
            .extend(paths.into_iter().map(|p| Op::TouchMemo(p.clone())));
        self.ops
            .extend(blobs.into_iter().map(|d| Op::TouchBlob(*d)));
    }

    /// Records a layout as written or fully checked, with the blobs it names (its
    /// manifest, config and layers). `newest_ns` is the newest mtime or ctime in
    /// its stamp: a stamp within the racy window is not stored (and any older record
    /// of `path` is dropped).
    pub fn put_layout(
        &mut self,
        path: &str,
        record: &LayoutRecord,
        blobs: &[Digest],
        newest_ns: i64,
    ) {
        let mut blobs = blobs.to_vec();
        blobs.sort();
        blobs.dedup();
        self.ops.push(Op::Layout {
            path: path.to_string(),
            record: record.clone(),
            blobs,
            newest_ns,
        });
    }

    /// Keeps a trusted layout record from being pruned (see
    /// [`RememberedLayout::stale`]).
    pub fn touch_layout(&mut self, path: &str) {
        self.ops.push(Op::TouchLayout(path.to_string()));
    }

    /// Blobs just pushed to, or pulled from, `repository` of `registry`
    /// (`Reference::registry`, e.g. `docker.io`): a later push to another
    /// repository of that registry may mount them from there.
    pub fn registry_blobs(&mut self, registry: &str, repository: &str, digests: &[Digest]) {
        let mut digests = digests.to_vec();
        digests.sort();
        digests.dedup();
        self.ops.push(Op::RegistryBlobs {
            registry: registry.to_string(),
            repository: repository.to_string(),
            digests,
        });
    }

    /// The store blob `d` was found damaged (and is being rebuilt) or was replaced:
    /// forget every layout record naming it, in every workspace, so each such layout
    /// is checked in full (and re-linked) by its next build, and its blob check.
    pub fn blob_repaired(&mut self, d: &Digest) {
        self.ops.push(Op::Repaired(*d));
    }
}

/// The cache index. See the module docs.
pub struct Cache {
    conn: Connection,
    /// For error messages; `:memory:` for an in-memory database.
    path: String,
    /// (device, inode) of the file this connection opened: recovery moves aside
    /// only that file, never one another process put in its place.
    file_id: Option<(u64, u64)>,
    /// Damage healed since the last [`Cache::take_warnings`].
    warnings: Vec<String>,
    /// Whether this connection already asked if a prune is due.
    prune_checked: bool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("path", &self.path).finish()
    }
}

/// Why an existing database file was not usable.
enum Unusable {
    /// Damaged, not a database, or another schema: move aside and recreate.
    Replace(String),
    /// An environment problem: report it, do not touch the file.
    Fail(CacheError),
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn blob32(v: &[u8], what: &str) -> Result<[u8; 32], String> {
    v.try_into()
        .map_err(|_| format!("{what} has {} bytes, expected 32", v.len()))
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A row of the stat columns shared by `file_memo` and `blob_check`.
fn stat_from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<StatKey> {
    Ok(StatKey {
        size: r.get::<_, i64>(first)? as u64,
        mtime_ns: r.get(first + 1)?,
        ctime_ns: r.get(first + 2)?,
        inode: r.get::<_, i64>(first + 3)? as u64,
        mode: r.get::<_, i64>(first + 4)? as u32,
    })
}

impl Cache {
    /// Opens (creating if needed) the database at `path`. A file that is corrupt, not a
    /// database, or of another schema version is moved aside to `<path>.bad` and
    /// replaced; the returned warning says so. Creates the parent directory. Takes
    /// the write lock only to create the schema.
    pub fn open(path: &Path) -> Result<(Cache, Option<String>), CacheError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| CacheError::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
        match Cache::try_open(path) {
            Ok(cache) => Ok((cache, None)),
            Err(Unusable::Fail(e)) => Err(e),
            Err(Unusable::Replace(why)) => {
                let aside = move_aside(path)?;
                let cache = Cache::try_open(path).map_err(|u| match u {
                    Unusable::Fail(e) => e,
                    Unusable::Replace(what) => CacheError::Corrupt {
                        path: shown.clone(),
                        what,
                    },
                })?;
                let warning = format!(
                    "cache database `{shown}` was unusable ({why}); moved it to `{}` and \
                     started a new one (only the local cache index is lost: the next build \
                     re-hashes inputs and re-checks cached outputs)",
                    aside.display()
                );
                Ok((cache, Some(warning)))
            }
        }
    }

    /// A private in-memory database, for tests and `--no-cache` style runs.
    pub fn open_in_memory() -> Result<Cache, CacheError> {
        let path = ":memory:".to_string();
        let conn = Connection::open_in_memory().map_err(|source| CacheError::Db {
            path: path.clone(),
            source,
        })?;
        let cache = Cache {
            conn,
            path,
            file_id: None,
            warnings: Vec::new(),
            prune_checked: false,
        };
        match cache.init() {
            Ok(()) => Ok(cache),
            Err(Unusable::Fail(e)) => Err(e),
            Err(Unusable::Replace(what)) => Err(CacheError::Corrupt {
                path: cache.path,
                what,
            }),
        }
    }

    /// Opens and initializes a connection. Two processes opening a new file at
    /// once both try to switch it to WAL mode, which takes an exclusive lock;
    /// SQLite answers one of them `SQLITE_BUSY` at once (its busy handler is not
    /// called where waiting could deadlock), so a busy open is retried, with a
    /// new connection, until [`BUSY_TIMEOUT`].
    fn try_open(path: &Path) -> Result<Cache, Unusable> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            match Cache::try_open_once(path) {
                Err(Unusable::Fail(e)) if e.is_busy() && started.elapsed() < BUSY_TIMEOUT => {
                    #[cfg(test)]
                    tests::BUSY_OPENS.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    fn try_open_once(path: &Path) -> Result<Cache, Unusable> {
        let shown = path.display().to_string();
        let conn = Connection::open(path).map_err(|source| classify(&shown, source))?;
        let cache = Cache {
            conn,
            path: shown,
            file_id: file_id(path),
            warnings: Vec::new(),
            prune_checked: false,
        };
        cache.init()?;
        Ok(cache)
    }

    /// Pragmas, then schema check (a read) or creation (a short write).
    fn init(&self) -> Result<(), Unusable> {
        let c = &self.conn;
        let err = |source| classify(&self.path, source);
        c.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        if self.path != ":memory:" {
            // Reading the header happens here: garbage fails with NotADatabase. On a
            // file already in WAL mode this needs no lock.
            let mode: String = c
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(err)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Unusable::Fail(CacheError::Corrupt {
                    path: self.path.clone(),
                    what: format!("could not switch to WAL mode (journal mode is `{mode}`)"),
                }));
            }
        }
        c.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // A small page cache and no memory map, so what SQLite holds does not
        // grow with the database: each mapped page a statement touches counts in
        // the resident set, and the 32 MiB cache used before filled up with the
        // pages a cold build writes (10 MB for 500 images of 10 files). A no-op
        // build mostly does not get here (the snapshot answers it); a full-path
        // no-op build of 500 images makes about 11,000 `pread`s more this way, in
        // the same CPU time.
        c.pragma_update(None, "mmap_size", 0i64).map_err(err)?;
        c.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(err)?;
        // The common case, a database of this version, is a read: no write lock, so
        // opening never waits behind a running build.
        if self.schema_state()? == SchemaState::Current {
            return Ok(());
        }
        // IMMEDIATE: two processes creating the same fresh file serialize here, and the
        // second one sees the first one's schema.
        c.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        let result = match self.schema_state() {
            Ok(SchemaState::Current) => Ok(()),
            Ok(SchemaState::Empty) => self.create_schema(),
            Ok(SchemaState::Migrate) => self.migrate(),
            Err(e) => Err(e),
        };
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = c.execute_batch(end).map_err(err);
        result.and(ended)
    }

    fn schema_state(&self) -> Result<SchemaState, Unusable> {
        let c = &self.conn;
        let err = |source| classify(&self.path, source);
        // One statement, so one snapshot: read apart, another process creating the
        // schema could commit in between, and the tables would seem versionless.
        let (version, objects): (i32, i64) = c
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version),
                        (SELECT count(*) FROM sqlite_master)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(err)?;
        if version == SCHEMA_VERSION {
            return Ok(SchemaState::Current);
        }
        if version == 5 {
            return Ok(SchemaState::Migrate);
        }
        if version != 0 {
            return Err(Unusable::Replace(format!(
                "schema version {version}, this imgc uses {SCHEMA_VERSION}"
            )));
        }
        if objects != 0 {
            return Err(Unusable::Replace(
                "tables present but no schema version".to_string(),
            ));
        }
        Ok(SchemaState::Empty)
    }

    /// Schema 5 -> 6, inside the caller's write transaction.
    fn migrate(&self) -> Result<(), Unusable> {
        let err = |source| classify(&self.path, source);
        self.conn.execute_batch(MIGRATE_5_TO_6).map_err(err)?;
        self.conn
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        Ok(())
    }

    fn create_schema(&self) -> Result<(), Unusable> {
        let err = |source| classify(&self.path, source);
        self.conn.execute_batch(SCHEMA).map_err(err)?;
        self.conn
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        Ok(())
    }

    /// Replaces a database found corrupt after opening: moves the file aside and
    /// starts a new one, like [`Cache::open`] does (unless another process already
    /// replaced it: then that replacement is opened). Returns the warning to show.
    /// An in-memory cache is simply emptied. Every method does this by itself when
    /// a statement finds corruption; callers rarely need it.
    pub fn recover(&mut self) -> Result<String, CacheError> {
        let memory = Connection::open_in_memory().map_err(|e| self.db_err(e))?;
        // Closes the damaged file before it is renamed.
        drop(std::mem::replace(&mut self.conn, memory));
        let warnings = std::mem::take(&mut self.warnings);
        if self.path == ":memory:" {
            *self = Cache::open_in_memory()?;
            self.warnings = warnings;
            return Ok("the in-memory cache was corrupt and was emptied".to_string());
        }
        let path = PathBuf::from(&self.path);
        let current = file_id(&path);
        let mut warning = if current.is_none() || current != self.file_id {
            // Another process moved it aside (and maybe made a new one) first.
            format!(
                "cache database `{}` is corrupt; another imgc process has already replaced it",
                path.display()
            )
        } else {
            let aside = move_aside(&path)?;
            format!(
                "cache database `{}` is corrupt; moved it to `{}` and started a new one \
                 (only the local cache index is lost: this build re-hashes inputs and \
                 re-checks cached outputs)",
                path.display(),
                aside.display()
            )
        };
        let (fresh, more) = Cache::open(&path)?;
        *self = fresh;
        self.warnings = warnings;
        if let Some(more) = more {
            warning.push_str(&format!("; then: {more}"));
        }
        Ok(warning)
    }

    /// Warnings about damage healed since the last call (see the module docs):
    /// the caller shows them once.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Runs `op`; if it finds the database corrupt, replaces the database (keeping
    /// the warning) and runs `op` again on the new one.
    fn healing<T>(
        &mut self,
        mut op: impl FnMut(&mut Cache) -> Result<T, CacheError>,
    ) -> Result<T, CacheError> {
        match op(self) {
            Err(e) if e.is_corrupt() => {
                let warning = self.recover()?;
                self.warnings.push(warning);
                op(self)
            }
            other => other,
        }
    }

    fn db_err(&self, source: rusqlite::Error) -> CacheError {
        CacheError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: String) -> CacheError {
        CacheError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    // ---- action cache ----

    /// The recorded outputs of `key`, if any. Does not check that the blobs exist:
    /// the caller verifies them in the CAS and forgets the action if not.
    pub fn get_action(&mut self, key: &Key) -> Result<Option<ActionRecord>, CacheError> {
        self.healing(|c| c.get_action_once(key))
    }

    fn get_action_once(&self, key: &Key) -> Result<Option<ActionRecord>, CacheError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT kind, label, outputs, created_at, used_at FROM action WHERE key = ?1",
            )
            .and_then(|mut st| {
                st.query_row(params![&key.0[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()
            })
            .map_err(|e| self.db_err(e))?;
        let Some((kind, label, outputs_json, created_at, used_at)) = row else {
            return Ok(None);
        };
        let blobs = self.action_blobs(key)?;
        Ok(Some(ActionRecord {
            key: *key,
            kind,
            label,
            outputs_json,
            blobs,
            created_at,
            used_at,
        }))
    }

    fn action_blobs(&self, key: &Key) -> Result<Vec<BlobRef>, CacheError> {
        let rows: Vec<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached("SELECT digest, size FROM action_blob WHERE key = ?1 ORDER BY digest")
            .and_then(|mut st| {
                st.query_map(params![&key.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(|e| self.db_err(e))?;
        rows.into_iter()
            .map(|(d, size)| {
                let digest = Digest(blob32(&d, "a blob digest").map_err(|w| self.corrupt(w))?);
                Ok(BlobRef {
                    digest,
                    size: size as u64,
                })
            })
            .collect()
    }

    /// The recorded outputs of `key` (the scheduler's JSON) without the blob list:
    /// one indexed read, for the hot path of a no-op build. The flag says the
    /// entry's `used_at` is older than [`TOUCH_AFTER`]: the caller passes such hits
    /// to [`Batch::mark_used`], so a build refreshes the garbage collector's view at
    /// most once a day per entry instead of writing on every hit.
    pub fn get_outputs(&mut self, key: &Key) -> Result<Option<(String, bool)>, CacheError> {
        self.get_outputs_from(key, "")
    }

    /// Like [`Cache::get_outputs`], but an entry fetched from a remote cache is
    /// returned only if `remote` is that remote: hits are trusted as far as their
    /// source is. (A workspace that names a remote cache of its own cannot plant
    /// entries that other workspaces' builds would use.) `""` trusts only
    /// actions run on this machine.
    pub fn get_outputs_from(
        &mut self,
        key: &Key,
        remote: &str,
    ) -> Result<Option<(String, bool)>, CacheError> {
        let stale_before = now_unix() - secs(TOUCH_AFTER);
        self.healing(|c| {
            c.conn
                .prepare_cached(
                    "SELECT outputs, used_at < ?2 FROM action
                     WHERE key = ?1 AND (origin = '' OR origin = ?3)",
                )
                .and_then(|mut st| {
                    st.query_row(params![&key.0[..], stale_before, remote], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                })
                .map_err(|e| c.db_err(e))
        })
    }

    /// Records (or replaces) the outputs of `key`, in its own short transaction.
    pub fn put_action(
        &mut self,
        key: &Key,
        kind: &str,
        label: &str,
        outputs_json: &str,
        blobs: &[BlobRef],
    ) -> Result<(), CacheError> {
        let mut b = self.unscoped_batch();
        b.put_action(key, kind, label, outputs_json, blobs);
        self.commit_ops(&mut b).map(|_| ())
    }

    /// Removes `key`, in its own short transaction.
    pub fn forget_action(&mut self, key: &Key) -> Result<(), CacheError> {
        let mut b = self.unscoped_batch();
        b.forget_action(key);
        self.commit_ops(&mut b).map(|_| ())
    }

    /// Marks hits as used now, for least-recently-used garbage collection.
    pub fn mark_used(&mut self, keys: &[Key]) -> Result<(), CacheError> {
        let mut b = self.unscoped_batch();
        for k in keys {
            b.mark_used(k);
        }
        self.commit_ops(&mut b).map(|_| ())
    }

    /// Every blob referenced by some action: the roots of CAS garbage collection.
    pub fn referenced_blobs(&mut self) -> Result<BTreeSet<Digest>, CacheError> {
        self.healing(|c| {
            let rows: Vec<Vec<u8>> = c
                .conn
                .prepare("SELECT DISTINCT digest FROM action_blob")
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                .map_err(|e| c.db_err(e))?;
            rows.iter()
                .map(|d| {
                    blob32(d, "a blob digest")
                        .map(Digest)
                        .map_err(|w| c.corrupt(w))
                })
                .collect()
        })
    }

    /// Every action row with the blobs it names (one read), sorted by key: what
    /// garbage collection chooses from and verification checks.
    pub fn action_uses(&mut self) -> Result<Vec<ActionUse>, CacheError> {
        self.healing(|c| {
            type Row = (
                Vec<u8>,
                String,
                String,
                i64,
                i64,
                Option<Vec<u8>>,
                Option<i64>,
            );
            let rows: Vec<Row> = c
                .conn
                .prepare(
                    "SELECT a.key, a.label, a.outputs, a.created_at, a.used_at, b.digest, b.size
                     FROM action a LEFT JOIN action_blob b ON b.key = a.key
                     ORDER BY a.key, b.digest",
                )
                .and_then(|mut st| {
                    st.query_map([], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    })?
                    .collect()
                })
                .map_err(|e| c.db_err(e))?;
            let mut out: Vec<ActionUse> = Vec::new();
            for (key, label, outputs_json, created_at, used_at, digest, size) in rows {
                let key = Key(blob32(&key, "an action key").map_err(|w| c.corrupt(w))?);
                if out.last().is_none_or(|a| a.key != key) {
                    out.push(ActionUse {
                        key,
                        label,
                        outputs_json,
                        created_at,
                        used_at,
                        blobs: Vec::new(),
                    });
                }
                if let (Some(d), Some(size), Some(last)) = (digest, size, out.last_mut()) {
                    let digest = Digest(blob32(&d, "a blob digest").map_err(|w| c.corrupt(w))?);
                    last.blobs.push(BlobRef {
                        digest,
                        size: u64::try_from(size).unwrap_or(0),
                    });
                }
            }
            Ok(out)
        })
    }

    /// Garbage collection: deletes the action rows `rows` (each key with the
    /// `used_at` it was chosen with) in short transactions of at most [`CHUNK`]
    /// rows. A row used or recorded again since it was read is kept. Returns how
    /// many rows were deleted.
    pub fn evict_actions(&mut self, rows: &[(Key, i64)]) -> Result<usize, CacheError> {
        let mut b = self.unscoped_batch();
        for (key, used_at) in rows {
            b.ops.push(Op::Evict(*key, *used_at));
        }
        self.commit_ops(&mut b).map(|done| done.rows)
    }

    /// Deletes action rows found damaged (or naming damaged blobs), in short
    /// transactions.
    pub fn forget_actions(&mut self, keys: &[Key]) -> Result<(), CacheError> {
        let mut b = self.unscoped_batch();
        for key in keys {
            b.forget_action(key);
        }
        self.commit_ops(&mut b).map(|_| ())
    }

    /// Forgets what the index remembers of store blobs that were deleted: their
    /// blob checks; and, with `damaged`, every layout record naming them (as
    /// [`Batch::blob_repaired`] does: such a layout may hard-link the damaged
    /// file, so its next build checks it in full).
    pub fn forget_blobs(&mut self, digests: &[Digest], damaged: bool) -> Result<(), CacheError> {
        let mut b = self.unscoped_batch();
        for d in digests {
            b.ops.push(if damaged {
                Op::Repaired(*d)
            } else {
                Op::Deleted(*d)
            });
        }
        self.commit_ops(&mut b).map(|_| ())
    }

    // ---- file-hash memo and blob checks ----

    /// The memo rows of workspace `ws` and every blob check, as a snapshot for
    /// worker threads.
    pub fn load_memo(&mut self, ws: &WorkspaceId) -> Result<FileMemo, CacheError> {
        let stale_before = now_unix() - secs(TOUCH_AFTER);
        self.healing(|c| c.load_memo_once(ws, stale_before))
    }

    fn load_memo_once(&self, ws: &WorkspaceId, stale_before: i64) -> Result<FileMemo, CacheError> {
        let err = |e| self.db_err(e);
        let mut memo = FileMemo::default();
        // One read transaction: one snapshot for both tables.
        let _read = if self.conn.is_autocommit() {
            Some(self.conn.unchecked_transaction().map_err(err)?)
        } else {
            None
        };
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT path, size, mtime_ns, ctime_ns, inode, mode, hash, seen_at < ?2
                 FROM file_memo WHERE ws = ?1",
            )
            .map_err(err)?;
        let mut rows = st.query(params![&ws.id[..], stale_before]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let path: String = r.get(0).map_err(err)?;
            let stat = stat_from_row(r, 1).map_err(err)?;
            let hash: Vec<u8> = r.get(6).map_err(err)?;
            let hash = Key(blob32(&hash, "a memo hash").map_err(|w| self.corrupt(w))?);
            let stale: bool = r.get(7).map_err(err)?;
            memo.files.insert(
                path,
                MemoSlot {
                    entry: MemoEntry { stat, hash },
                    stale,
                    used: AtomicBool::new(false),
                },
            );
        }
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT digest, size, mtime_ns, ctime_ns, inode, mode, seen_at < ?1
                 FROM blob_check",
            )
            .map_err(err)?;
        let mut rows = st.query(params![stale_before]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let d: Vec<u8> = r.get(0).map_err(err)?;
            let d = Digest(blob32(&d, "a blob digest").map_err(|w| self.corrupt(w))?);
            let stat = stat_from_row(r, 1).map_err(err)?;
            let stale: bool = r.get(6).map_err(err)?;
            memo.blobs.insert(
                d,
                BlobSlot {
                    stat,
                    stale,
                    used: AtomicBool::new(false),
                },
            );
        }
        Ok(memo)
    }

    /// Stores freshly computed hashes for workspace `ws` right away, applying the
    /// racy-file rule: an entry whose mtime or ctime is later than
    /// `build_start - RACY_WINDOW` is not stored (and any older row for its path is
    /// dropped). `build_start` is the time the build began, taken before any file
    /// was stat-ed. Builds use [`Batch::learn`] instead.
    pub fn store_memo(
        &mut self,
        ws: &WorkspaceId,
        build_start: SystemTime,
        entries: &[(String, MemoEntry)],
    ) -> Result<MemoStored, CacheError> {
        let mut b = Batch::new(ws.clone(), build_start);
        for (path, e) in entries {
            b.learn(path, *e);
        }
        let done = self.commit(&mut b)?;
        Ok(MemoStored {
            stored: entries.len() - done.too_recent,
            too_recent: done.too_recent,
        })
    }

    // ---- parse cache ----

    /// The stored values of those `keys` that are present (one prepared statement).
    /// Reads only: refreshing the stale hits is [`Cache::put_parsed`]'s job.
    pub fn get_parsed(&mut self, keys: &[Key]) -> Result<ParsedHits, CacheError> {
        self.healing(|c| c.get_parsed_once(keys))
    }

    fn get_parsed_once(&self, keys: &[Key]) -> Result<ParsedHits, CacheError> {
        let stale_before = now_unix() - secs(TOUCH_AFTER);
        let mut hits = ParsedHits::default();
        // One read transaction: one snapshot and one WAL read lock for all the keys,
        // instead of taking and releasing the lock for each (measurably slower).
        let _read = if self.conn.is_autocommit() {
            Some(
                self.conn
                    .unchecked_transaction()
                    .map_err(|e| self.db_err(e))?,
            )
        } else {
            None
        };
        let mut st = self
            .conn
            .prepare_cached("SELECT value, used_at FROM parse_cache WHERE key = ?1")
            .map_err(|e| self.db_err(e))?;
        for k in keys {
            let row: Option<(String, i64)> = st
                .query_row(params![&k.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(|e| self.db_err(e))?;
            if let Some((value, used_at)) = row {
                if used_at < stale_before {
                    hits.stale.push(*k);
                }
                hits.values.insert(*k, value);
            }
        }
        Ok(hits)
    }

    /// In one transaction: stores (or replaces) `entries`, marks `touch` as used now,
    /// and, if anything was stored, deletes the rows unused for [`PARSE_KEEP`].
    /// Does not write at all when both lists are empty. Returns how many rows were
    /// deleted.
    ///
    /// Best-effort: it waits at most [`PARSE_WRITE_WAIT`] for the write lock and
    /// stores nothing (returning `Ok(0)`) if another process holds it longer, so a
    /// read-only command never waits behind a build.
    pub fn put_parsed(
        &mut self,
        entries: &[(Key, String)],
        touch: &[Key],
    ) -> Result<usize, CacheError> {
        if entries.is_empty() && touch.is_empty() {
            return Ok(0);
        }
        let result = self.healing(|c| {
            c.conn
                .busy_timeout(PARSE_WRITE_WAIT)
                .map_err(|e| c.db_err(e))?;
            let r = c.put_parsed_once(entries, touch);
            c.conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| c.db_err(e))?;
            r
        });
        match result {
            Err(e) if e.is_busy() => Ok(0),
            other => other,
        }
    }

    fn put_parsed_once(
        &mut self,
        entries: &[(Key, String)],
        touch: &[Key],
    ) -> Result<usize, CacheError> {
        let now = now_unix();
        let path = self.path.clone();
        let err = |source| CacheError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut dropped = 0;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO parse_cache (key, value, used_at) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            for (k, v) in entries {
                ins.execute(params![&k.0[..], v, now]).map_err(err)?;
            }
            let mut upd = tx
                .prepare_cached("UPDATE parse_cache SET used_at = ?2 WHERE key = ?1")
                .map_err(err)?;
            for k in touch {
                upd.execute(params![&k.0[..], now]).map_err(err)?;
            }
            if !entries.is_empty() {
                dropped = tx
                    .prepare_cached("DELETE FROM parse_cache WHERE used_at < ?1")
                    .and_then(|mut st| st.execute(params![now - secs(PARSE_KEEP)]))
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(dropped)
    }

    // ---- image layouts ----

    /// The layout records of workspace `ws`, by layout path.
    pub fn layout_records(
        &mut self,
        ws: &WorkspaceId,
    ) -> Result<BTreeMap<String, RememberedLayout>, CacheError> {
        let stale_before = now_unix() - secs(TOUCH_AFTER);
        self.healing(|c| {
            let rows: Vec<(String, Vec<u8>, String, String, bool)> = c
                .conn
                .prepare_cached(
                    "SELECT path, manifest, refs, stamp, seen_at < ?2 FROM layout WHERE ws = ?1",
                )
                .and_then(|mut st| {
                    st.query_map(params![&ws.id[..], stale_before], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect()
                })
                .map_err(|e| c.db_err(e))?;
            rows.into_iter()
                .map(|(path, m, refs, stamp, stale)| {
                    let manifest =
                        Digest(blob32(&m, "a layout manifest").map_err(|w| c.corrupt(w))?);
                    let record = LayoutRecord {
                        manifest,
                        refs,
                        stamp,
                    };
                    Ok((path, RememberedLayout { record, stale }))
                })
                .collect()
        })
    }

    /// Records a layout right away (see [`Batch::put_layout`]); `false` if its
    /// stamp was too recent to be stored.
    pub fn put_layout(
        &mut self,
        ws: &WorkspaceId,
        path: &str,
        record: &LayoutRecord,
        blobs: &[Digest],
        newest_ns: i64,
        build_start: SystemTime,
    ) -> Result<bool, CacheError> {
        let mut b = Batch::new(ws.clone(), build_start);
        b.put_layout(path, record, blobs, newest_ns);
        Ok(self.commit(&mut b)?.too_recent == 0)
    }

    // ---- last builds ----

    /// The key and components JSON of the last build of `label` in workspace `ws`.
    pub fn last_build(
        &mut self,
        ws: &WorkspaceId,
        label: &str,
    ) -> Result<Option<(Key, String)>, CacheError> {
        self.healing(|c| {
            let row: Option<(Vec<u8>, String)> = c
                .conn
                .prepare_cached(
                    "SELECT key, components FROM last_build WHERE ws = ?1 AND label = ?2",
                )
                .and_then(|mut st| {
                    st.query_row(params![&ws.id[..], label], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(|e| c.db_err(e))?;
            match row {
                None => Ok(None),
                Some((k, json)) => {
                    let key = Key(blob32(&k, "a last-build key").map_err(|w| c.corrupt(w))?);
                    Ok(Some((key, json)))
                }
            }
        })
    }

    /// The key of the last build of every label of workspace `ws`, in one query (a
    /// build compares each hit with it, and fetches the components only for what
    /// must rebuild).
    pub fn last_build_keys(
        &mut self,
        ws: &WorkspaceId,
    ) -> Result<BTreeMap<String, LastKey>, CacheError> {
        let stale_before = now_unix() - secs(TOUCH_AFTER);
        self.healing(|c| {
            let rows: Vec<(String, Vec<u8>, bool)> = c
                .conn
                .prepare_cached("SELECT label, key, seen_at < ?2 FROM last_build WHERE ws = ?1")
                .and_then(|mut st| {
                    st.query_map(params![&ws.id[..], stale_before], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect()
                })
                .map_err(|e| c.db_err(e))?;
            rows.into_iter()
                .map(|(label, k, stale)| {
                    let key = Key(blob32(&k, "a last-build key").map_err(|w| c.corrupt(w))?);
                    Ok((label, LastKey { key, stale }))
                })
                .collect()
        })
    }

    /// Records the last build of `label` in workspace `ws` right away.
    pub fn set_last_build(
        &mut self,
        ws: &WorkspaceId,
        label: &str,
        key: &Key,
        components_json: &str,
    ) -> Result<(), CacheError> {
        let mut b = Batch::new(ws.clone(), SystemTime::now());
        b.set_last_build(label, key, components_json);
        self.commit(&mut b).map(|_| ())
    }

    // ---- writing ----

    /// A batch for writes that name no workspace (actions).
    fn unscoped_batch(&self) -> Batch {
        Batch::new(WorkspaceId::of_root(Path::new("")), SystemTime::now())
    }

    /// Writes everything `batch` holds, in transactions of at most [`CHUNK`] rows,
    /// and empties it. Also refreshes the workspace's last-seen time (at most
    /// hourly: with nothing to write and a fresh workspace row, it writes nothing)
    /// and, at most once per [`PRUNE_EVERY`] or when a new workspace appears,
    /// prunes old rows ([`Cache::prune`]).
    ///
    /// The rows are independent, so an error (a full disk, a lock held past the
    /// busy timeout) loses the rows not yet written (the batch is emptied anyway:
    /// it is only an index) and is returned for the caller to warn about.
    pub fn commit(&mut self, batch: &mut Batch) -> Result<Committed, CacheError> {
        let now = now_unix();
        let mut done = Committed::default();
        let new_workspace = self.healing(|c| c.touch_workspace(&batch.ws, now))?;
        if new_workspace.is_some() {
            done.transactions += 1;
        }
        let healed = self.warnings.len();
        done = self.commit_ops_counting(batch, done)?;
        if self.warnings.len() > healed {
            // The index was replaced while writing: register the workspace in the
            // new one, or its rows would be pruned as orphans.
            self.healing(|c| c.touch_workspace(&batch.ws, now))?;
        }
        if new_workspace == Some(true) {
            // Cheap (by primary key), so a new checkout path per CI job cannot
            // pile up memo rows between two daily prunes.
            self.healing(|c| c.evict_workspaces(now - secs(KEEP)).map(|_| ()))?;
        }
        if !self.prune_checked {
            self.prune_checked = true;
            if self.prune_due(now)? {
                self.prune(now)?;
                done.pruned = true;
            }
        }
        Ok(done)
    }

    /// [`Cache::commit`] without the workspace bookkeeping (for rows that name no
    /// workspace).
    fn commit_ops(&mut self, batch: &mut Batch) -> Result<Committed, CacheError> {
        self.commit_ops_counting(batch, Committed::default())
    }

    fn commit_ops_counting(
        &mut self,
        batch: &mut Batch,
        mut done: Committed,
    ) -> Result<Committed, CacheError> {
        let ops = std::mem::take(&mut batch.ops);
        let now = now_unix();
        for chunk in ops.chunks(CHUNK) {
            let (rows, too_recent) =
                self.healing(|c| c.write_chunk(&batch.ws, chunk, batch.settled_before_ns, now))?;
            done.rows += rows;
            done.too_recent += too_recent;
            done.transactions += 1;
        }
        Ok(done)
    }

    /// Inserts or refreshes the workspace row if it is missing or older than
    /// [`WORKSPACE_TOUCH_AFTER`]: `Some(true)` if it was new, `Some(false)` if
    /// refreshed, `None` if nothing was written.
    fn touch_workspace(&mut self, ws: &WorkspaceId, now: i64) -> Result<Option<bool>, CacheError> {
        let seen: Option<i64> = self
            .conn
            .prepare_cached("SELECT seen_at FROM workspace WHERE id = ?1")
            .and_then(|mut st| st.query_row(params![&ws.id[..]], |r| r.get(0)).optional())
            .map_err(|e| self.db_err(e))?;
        if seen.is_some_and(|s| s >= now - secs(WORKSPACE_TOUCH_AFTER)) {
            return Ok(None);
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO workspace (id, root, seen_at) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| st.execute(params![&ws.id[..], ws.root, now]))
            .map_err(|e| self.db_err(e))?;
        Ok(Some(seen.is_none()))
    }

    /// One short write transaction: (rows written, rows refused as too recent).
    fn write_chunk(
        &mut self,
        ws: &WorkspaceId,
        ops: &[Op],
        settled_before_ns: i64,
        now: i64,
    ) -> Result<(usize, usize), CacheError> {
        let path = self.path.clone();
        let err = |source| CacheError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut too_recent = 0;
        for op in ops {
            if !write_op(&tx, &ws.id, op, settled_before_ns, now).map_err(err)? {
                too_recent += 1;
            }
        }
        tx.commit().map_err(err)?;
        Ok((ops.len() - too_recent, too_recent))
    }

    fn prune_due(&mut self, now: i64) -> Result<bool, CacheError> {
        self.healing(|c| {
            let last: Option<i64> = c
                .conn
                .prepare_cached("SELECT value FROM meta WHERE name = 'pruned_at'")
                .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
                .map_err(|e| c.db_err(e))?;
            Ok(last.is_none_or(|t| t < now - secs(PRUNE_EVERY)))
        })
    }

    /// Deletes the rows of workspaces not seen for [`KEEP`] or beyond the
    /// [`MAX_WORKSPACES`] most recently seen, and every memo row, blob check, last
    /// build, layout and parse-cache row not used since `now - KEEP` (unix
    /// seconds). One short transaction per table.
    pub fn prune(&mut self, now: i64) -> Result<Pruned, CacheError> {
        let cutoff = now - secs(KEEP);
        self.healing(|c| c.prune_once(now, cutoff))
    }

    /// Deletes workspaces not seen since `cutoff` or beyond the [`MAX_WORKSPACES`]
    /// most recently seen, with every row they scope: one short transaction each.
    fn evict_workspaces(&mut self, cutoff: i64) -> Result<Pruned, CacheError> {
        let path = self.path.clone();
        let err = |source| CacheError::Db {
            path: path.clone(),
            source,
        };
        let mut out = Pruned::default();
        let keep = i64::try_from(MAX_WORKSPACES).unwrap_or(i64::MAX);
        // Workspaces first, with everything they scope.
        let gone: Vec<Vec<u8>> = self
            .conn
            .prepare(
                "SELECT id FROM workspace WHERE seen_at < ?1 OR id NOT IN
                 (SELECT id FROM workspace ORDER BY seen_at DESC, id LIMIT ?2)",
            )
            .and_then(|mut st| st.query_map(params![cutoff, keep], |r| r.get(0))?.collect())
            .map_err(err)?;
        for id in &gone {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            out.memo_rows += tx
                .execute("DELETE FROM file_memo WHERE ws = ?1", params![id])
                .map_err(err)?;
            out.last_builds += tx
                .execute("DELETE FROM last_build WHERE ws = ?1", params![id])
                .map_err(err)?;
            out.layouts += tx
                .execute("DELETE FROM layout WHERE ws = ?1", params![id])
                .map_err(err)?;
            tx.execute("DELETE FROM layout_blob WHERE ws = ?1", params![id])
                .map_err(err)?;
            out.workspaces += tx
                .execute("DELETE FROM workspace WHERE id = ?1", params![id])
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(out)
    }

    fn prune_once(&mut self, now: i64, cutoff: i64) -> Result<Pruned, CacheError> {
        let mut out = self.evict_workspaces(cutoff)?;
        let path = self.path.clone();
        let err = |source| CacheError::Db {
            path: path.clone(),
            source,
        };
        // Then rows not used for a while, and rows whose workspace is gone.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        for (table, deleted) in [
            ("file_memo", &mut out.memo_rows),
            ("last_build", &mut out.last_builds),
            ("layout", &mut out.layouts),
        ] {
            *deleted += tx
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE seen_at < ?1
                         OR ws NOT IN (SELECT id FROM workspace)"
                    ),
                    params![cutoff],
                )
                .map_err(err)?;
        }
        tx.execute(
            "DELETE FROM layout_blob WHERE NOT EXISTS (SELECT 1 FROM layout
             WHERE layout.ws = layout_blob.ws AND layout.path = layout_blob.path)",
            [],
        )
        .map_err(err)?;
        out.blob_checks += tx
            .execute("DELETE FROM blob_check WHERE seen_at < ?1", params![cutoff])
            .map_err(err)?;
        out.parsed_files += tx
            .execute(
                "DELETE FROM parse_cache WHERE used_at < ?1",
                params![cutoff],
            )
            .map_err(err)?;
        tx.execute(
            "DELETE FROM registry_blob WHERE seen_at < ?1",
            params![cutoff],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('pruned_at', ?1)",
            params![now],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// The repositories of `registry` known to hold each of `digests` (see
    /// [`Batch::registry_blobs`]), most recently seen first, at most `per_blob` each.
    pub fn registry_repositories(
        &mut self,
        registry: &str,
        digests: &[Digest],
        per_blob: usize,
    ) -> Result<BTreeMap<Digest, Vec<String>>, CacheError> {
        self.healing(|c| {
            let mut out = BTreeMap::new();
            let mut st = c
                .conn
                .prepare_cached(
                    "SELECT repository FROM registry_blob WHERE registry = ?1 AND digest = ?2
                     ORDER BY seen_at DESC, repository LIMIT ?3",
                )
                .map_err(|e| c.db_err(e))?;
            for d in digests {
                let repos: Vec<String> = st
                    .query_map(params![registry, &d.0[..], per_blob as i64], |r| r.get(0))
                    .and_then(|rows| rows.collect())
                    .map_err(|e| c.db_err(e))?;
                if !repos.is_empty() {
                    out.insert(*d, repos);
                }
            }
            Ok(out)
        })
    }

    // ---- bookkeeping ----

    pub fn stats(&mut self) -> Result<CacheStats, CacheError> {
        self.healing(|c| {
            let count = |sql: &str| -> Result<u64, CacheError> {
                c.conn
                    .query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(|e| c.db_err(e))
            };
            Ok(CacheStats {
                actions: count("SELECT count(*) FROM action")?,
                memo_entries: count("SELECT count(*) FROM file_memo")?,
                parsed_files: count("SELECT count(*) FROM parse_cache")?,
                last_builds: count("SELECT count(*) FROM last_build")?,
                workspaces: count("SELECT count(*) FROM workspace")?,
                layouts: count("SELECT count(*) FROM layout")?,
                blob_checks: count("SELECT count(*) FROM blob_check")?,
                blobs_referenced: count("SELECT count(DISTINCT digest) FROM action_blob")?,
                bytes_referenced: count(
                    "SELECT coalesce(sum(size), 0) FROM
                     (SELECT max(size) AS size FROM action_blob GROUP BY digest)",
                )?,
                db_bytes: count(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                )?,
            })
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaState {
    Current,
    Empty,
    /// An older version with a migration to this one.
    Migrate,
}

/// Writes one record; `false` if the racy-file rule refused it.
fn write_op(
    c: &Connection,
    ws: &[u8; 32],
    op: &Op,
    settled_before_ns: i64,
    now: i64,
) -> rusqlite::Result<bool> {
    let ws = &ws[..];
    match op {
        Op::Action {
            key,
            kind,
            label,
            outputs,
            blobs,
            origin,
        } => {
            c.prepare_cached(
                "INSERT OR REPLACE INTO action (key, kind, label, outputs, origin, created_at, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )?
            .execute(params![&key.0[..], kind, label, outputs, origin, now])?;
            c.prepare_cached("DELETE FROM action_blob WHERE key = ?1")?
                .execute(params![&key.0[..]])?;
            let mut ins = c.prepare_cached(
                "INSERT OR REPLACE INTO action_blob (key, digest, size) VALUES (?1, ?2, ?3)",
            )?;
            for b in blobs {
                let size = i64::try_from(b.size).unwrap_or(i64::MAX);
                ins.execute(params![&key.0[..], &b.digest.0[..], size])?;
            }
        }
        Op::Forget(key) => {
            c.prepare_cached("DELETE FROM action_blob WHERE key = ?1")?
                .execute(params![&key.0[..]])?;
            c.prepare_cached("DELETE FROM action WHERE key = ?1")?
                .execute(params![&key.0[..]])?;
        }
        Op::Evict(key, used_at) => {
            let gone = c
                .prepare_cached("DELETE FROM action WHERE key = ?1 AND used_at <= ?2")?
                .execute(params![&key.0[..], used_at])?;
            if gone == 0 {
                // Used (or recorded again) since garbage collection read it.
                return Ok(false);
            }
            c.prepare_cached("DELETE FROM action_blob WHERE key = ?1")?
                .execute(params![&key.0[..]])?;
        }
        Op::Used(key) => {
            c.prepare_cached("UPDATE action SET used_at = ?2 WHERE key = ?1")?
                .execute(params![&key.0[..], now])?;
        }
        Op::LastBuild {
            label,
            key,
            components,
        } => {
            c.prepare_cached(
                "INSERT OR REPLACE INTO last_build (ws, label, key, components, built_at, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![ws, label, &key.0[..], components, now])?;
        }
        Op::TouchLastBuild(label) => {
            c.prepare_cached("UPDATE last_build SET seen_at = ?3 WHERE ws = ?1 AND label = ?2")?
                .execute(params![ws, label, now])?;
        }
        Op::Memo(path, e) => {
            if !e.stat.settled(settled_before_ns) {
                c.prepare_cached("DELETE FROM file_memo WHERE ws = ?1 AND path = ?2")?
                    .execute(params![ws, path])?;
                return Ok(false);
            }
            let s = &e.stat;
            // SQLite integers are i64: u64 values are stored bit-for-bit.
            c.prepare_cached(
                "INSERT OR REPLACE INTO file_memo
                 (ws, path, size, mtime_ns, ctime_ns, inode, mode, hash, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                ws,
                path,
                s.size as i64,
                s.mtime_ns,
                s.ctime_ns,
                s.inode as i64,
                i64::from(s.mode),
                &e.hash.0[..],
                now
            ])?;
        }
        Op::TouchMemo(path) => {
            c.prepare_cached("UPDATE file_memo SET seen_at = ?3 WHERE ws = ?1 AND path = ?2")?
                .execute(params![ws, path, now])?;
        }
        Op::BlobVerified(d, s) => {
            if !s.settled(settled_before_ns) {
                c.prepare_cached("DELETE FROM blob_check WHERE digest = ?1")?
                    .execute(params![&d.0[..]])?;
                return Ok(false);
            }
            c.prepare_cached(
                "INSERT OR REPLACE INTO blob_check
                 (digest, size, mtime_ns, ctime_ns, inode, mode, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                &d.0[..],
                s.size as i64,
                s.mtime_ns,
                s.ctime_ns,
                s.inode as i64,
                i64::from(s.mode),
                now
            ])?;
        }
        Op::TouchBlob(d) => {
            c.prepare_cached("UPDATE blob_check SET seen_at = ?2 WHERE digest = ?1")?
                .execute(params![&d.0[..], now])?;
        }
        Op::Layout {
            path,
            record,
            blobs,
            newest_ns,
        } => {
            c.prepare_cached("DELETE FROM layout_blob WHERE ws = ?1 AND path = ?2")?
                .execute(params![ws, path])?;
            if *newest_ns > settled_before_ns {
                c.prepare_cached("DELETE FROM layout WHERE ws = ?1 AND path = ?2")?
                    .execute(params![ws, path])?;
                return Ok(false);
            }
            c.prepare_cached(
                "INSERT OR REPLACE INTO layout (ws, path, manifest, refs, stamp, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                ws,
                path,
                &record.manifest.0[..],
                record.refs,
                record.stamp,
                now
            ])?;
            let mut ins = c.prepare_cached(
                "INSERT OR REPLACE INTO layout_blob (ws, path, digest) VALUES (?1, ?2, ?3)",
            )?;
            for d in blobs {
                ins.execute(params![ws, path, &d.0[..]])?;
            }
        }
        Op::TouchLayout(path) => {
            c.prepare_cached("UPDATE layout SET seen_at = ?3 WHERE ws = ?1 AND path = ?2")?
                .execute(params![ws, path, now])?;
        }
        Op::Repaired(d) => {
            // Every layout (of any workspace) naming the blob, then its blob rows.
            let named: Vec<(Vec<u8>, String)> = c
                .prepare_cached("SELECT ws, path FROM layout_blob WHERE digest = ?1")?
                .query_map(params![&d.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (w, p) in &named {
                c.prepare_cached("DELETE FROM layout WHERE ws = ?1 AND path = ?2")?
                    .execute(params![w, p])?;
                c.prepare_cached("DELETE FROM layout_blob WHERE ws = ?1 AND path = ?2")?
                    .execute(params![w, p])?;
            }
            c.prepare_cached("DELETE FROM blob_check WHERE digest = ?1")?
                .execute(params![&d.0[..]])?;
        }
        Op::Deleted(d) => {
            c.prepare_cached("DELETE FROM blob_check WHERE digest = ?1")?
                .execute(params![&d.0[..]])?;
        }
        Op::RegistryBlobs {
            registry,
            repository,
            digests,
        } => {
            let mut st = c.prepare_cached(
                "INSERT OR REPLACE INTO registry_blob (registry, digest, repository, seen_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for d in digests {
                st.execute(params![registry, &d.0[..], repository, now])?;
            }
        }
    }
    Ok(true)
}

fn classify(path: &str, source: rusqlite::Error) -> Unusable {
    if is_corruption(&source) {
        Unusable::Replace(source.to_string())
    } else {
        Unusable::Fail(CacheError::Db {
            path: path.to_string(),
            source,
        })
    }
}

/// The directory beside the database that holds the no-op snapshots
/// (`crate::snapshot`): they answer "cached" from this index's rows, so a
/// replaced index drops them.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Moves a bad database to `<path>.bad` (replacing an older one) and removes its WAL
/// and shared-memory files, which belong to the old file, and the snapshots that
/// relied on its rows.
fn move_aside(path: &Path) -> Result<PathBuf, CacheError> {
    if let Some(dir) = path.parent() {
        match std::fs::remove_dir_all(dir.join(SNAPSHOT_DIR)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CacheError::Io {
                    path: dir.join(SNAPSHOT_DIR).display().to_string(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    let with_suffix = |s: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(s);
        PathBuf::from(p)
    };
    let aside = with_suffix(".bad");
    let io = |p: &Path, source| CacheError::Io {
        path: p.display().to_string(),
        source,
    };
    std::fs::rename(path, &aside).map_err(|e| io(path, e))?;
    for s in ["-wal", "-shm"] {
        let p = with_suffix(s);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p, e)),
            _ => {}
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key::of_bytes(&[n])
    }

    fn blob(n: u8, size: u64) -> BlobRef {
        BlobRef {
            digest: Digest::of_bytes(&[n]),
            size,
        }
    }

    fn stat(mtime_s: i64) -> StatKey {
        StatKey {
            size: 42,
            mtime_ns: mtime_s * 1_000_000_000,
            ctime_ns: mtime_s * 1_000_000_000,
            inode: u64::MAX - 1, // above i64::MAX: must survive the i64 column
            mode: 0o100644,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn ws(name: &str) -> WorkspaceId {
        WorkspaceId::of_root(Path::new(name))
    }

    /// Sets the last-use time of every row of `table` to `secs_ago` seconds ago.
    fn age(c: &Cache, table: &str, column: &str, secs_ago: u64) {
        c.conn
            .execute(
                &format!("UPDATE {table} SET {column} = ?1"),
                params![now_unix() - secs_ago as i64],
            )
            .unwrap();
    }

    fn count(c: &Cache, table: &str) -> i64 {
        c.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// If this fails, the schema changed: bump SCHEMA_VERSION and update the hash.
    #[test]
    fn schema_is_pinned_to_its_version() {
        assert_eq!(SCHEMA_VERSION, 6);
        // Comments and layout do not count, only the statements.
        let normalized: Vec<&str> = SCHEMA
            .lines()
            .map(|l| l.split("--").next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            Key::of_bytes(normalized.join(" ").as_bytes()).to_hex(),
            "81c1243d3989639c90276557a4220a7f156fc5630837181f44a28846d3d7bb23",
            "cache-schema.sql changed: bump SCHEMA_VERSION and update this hash"
        );
    }

    #[test]
    fn workspace_ids_differ_by_root_and_are_stable() {
        assert_eq!(ws("/a/b"), ws("/a/b"));
        assert_ne!(ws("/a/b").id, ws("/a/c").id);
        assert_eq!(ws("/a/b").root(), "/a/b");
    }

    #[test]
    fn layout_records_are_per_workspace_and_refuse_racy_stamps() {
        let mut c = Cache::open_in_memory().unwrap();
        let r = LayoutRecord {
            manifest: Digest::of_bytes(b"m"),
            refs: "latest".into(),
            stamp: "1:2:3".into(),
        };
        let old_ns = 1_000_000_000i64;
        let blobs = [Digest::of_bytes(b"m"), Digest::of_bytes(b"c")];
        let (one, two) = (ws("/ws"), ws("/other"));
        assert!(
            c.put_layout(&one, "/ws/imgc-out/a/b", &r, &blobs, old_ns, at(100))
                .unwrap()
        );
        assert!(
            c.put_layout(&two, "/other/imgc-out/a/b", &r, &blobs, old_ns, at(100))
                .unwrap()
        );
        let got = c.layout_records(&one).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["/ws/imgc-out/a/b"].record, r);
        assert!(!got["/ws/imgc-out/a/b"].stale);
        // a stamp within the racy window replaces nothing and drops the row
        assert!(
            !c.put_layout(
                &one,
                "/ws/imgc-out/a/b",
                &r,
                &blobs,
                99_500_000_000,
                at(100)
            )
            .unwrap()
        );
        assert!(c.layout_records(&one).unwrap().is_empty());
        assert_eq!(c.layout_records(&two).unwrap().len(), 1);
        assert_eq!(count(&c, "layout_blob"), 2, "only the other layout's blobs");
    }

    /// A store blob replaced after damage was linked by layouts of any checkout:
    /// none of their records may be trusted any more.
    #[test]
    fn a_repaired_blob_forgets_every_layout_naming_it_in_every_workspace() {
        let mut c = Cache::open_in_memory().unwrap();
        let r = LayoutRecord {
            manifest: Digest::of_bytes(b"m"),
            refs: "latest".into(),
            stamp: "s".into(),
        };
        let (damaged, other) = (Digest::of_bytes(b"layer"), Digest::of_bytes(b"other"));
        let (one, two) = (ws("/one"), ws("/two"));
        for (w, path, blobs) in [
            (&one, "/one/out/app", vec![r.manifest, damaged]),
            (&two, "/two/out/app", vec![r.manifest, damaged]),
            (&two, "/two/out/base", vec![r.manifest, other]),
        ] {
            assert!(c.put_layout(w, path, &r, &blobs, 1, at(100)).unwrap());
        }
        let mut b = Batch::new(one.clone(), at(100));
        b.blob_verified(&damaged, stat(10));
        b.blob_repaired(&damaged);
        c.commit(&mut b).unwrap();
        assert!(b.is_empty());
        assert!(c.layout_records(&one).unwrap().is_empty());
        let left: Vec<String> = c.layout_records(&two).unwrap().into_keys().collect();
        assert_eq!(left, ["/two/out/base"]);
        assert_eq!(count(&c, "layout_blob"), 2);
        assert_eq!(count(&c, "blob_check"), 0, "its verification is void too");
    }

    #[test]
    fn remote_fetched_hits_are_trusted_only_by_builds_using_that_remote() {
        let mut c = Cache::open_in_memory().unwrap();
        let mut b = c.unscoped_batch();
        b.put_action_from(&key(1), "layer", "//a:l", "{}", &[blob(1, 1)], "/ci/cache");
        c.commit_ops(&mut b).unwrap();
        assert_eq!(
            c.get_outputs(&key(1)).unwrap(),
            None,
            "no remote: untrusted"
        );
        assert_eq!(c.get_outputs_from(&key(1), "/other").unwrap(), None);
        assert!(c.get_outputs_from(&key(1), "/ci/cache").unwrap().is_some());
        // Built here: trusted by every build.
        c.put_action(&key(1), "layer", "//a:l", "{}", &[blob(1, 1)])
            .unwrap();
        assert!(c.get_outputs(&key(1)).unwrap().is_some());
        assert!(c.get_outputs_from(&key(1), "/other").unwrap().is_some());
    }

    #[test]
    fn hits_older_than_a_day_are_flagged_for_mark_used() {
        let mut c = Cache::open_in_memory().unwrap();
        c.put_action(&key(1), "layer", "//a:l", "{}", &[blob(1, 1)])
            .unwrap();
        assert_eq!(
            c.get_outputs(&key(1)).unwrap(),
            Some(("{}".to_string(), false))
        );
        age(&c, "action", "used_at", TOUCH_AFTER.as_secs() + 10);
        assert_eq!(
            c.get_outputs(&key(1)).unwrap(),
            Some(("{}".to_string(), true))
        );
        c.mark_used(&[key(1)]).unwrap();
        assert_eq!(
            c.get_outputs(&key(1)).unwrap(),
            Some(("{}".to_string(), false))
        );
        assert_eq!(c.get_outputs(&key(2)).unwrap(), None);
    }

    #[test]
    fn action_round_trip_replace_and_forget() {
        let mut c = Cache::open_in_memory().unwrap();
        assert_eq!(c.get_action(&key(1)).unwrap(), None);
        c.put_action(
            &key(1),
            "layer",
            "//a:b",
            r#"{"x":1}"#,
            &[blob(2, 20), blob(1, 10)],
        )
        .unwrap();
        let r = c.get_action(&key(1)).unwrap().unwrap();
        assert_eq!(r.key, key(1));
        assert_eq!((r.kind.as_str(), r.label.as_str()), ("layer", "//a:b"));
        assert_eq!(r.outputs_json, r#"{"x":1}"#);
        let mut want = vec![blob(2, 20), blob(1, 10)];
        want.sort();
        assert_eq!(r.blobs, want);

        // Replacing drops the old blob list.
        c.put_action(&key(1), "layer", "//a:b", "{}", &[blob(3, 30)])
            .unwrap();
        assert_eq!(
            c.get_action(&key(1)).unwrap().unwrap().blobs,
            vec![blob(3, 30)]
        );
        c.mark_used(&[key(1), key(9)]).unwrap();

        c.forget_action(&key(1)).unwrap();
        assert_eq!(c.get_action(&key(1)).unwrap(), None);
        assert!(c.referenced_blobs().unwrap().is_empty());
    }

    #[test]
    fn referenced_blobs_and_stats_count_distinct_blobs() {
        let mut c = Cache::open_in_memory().unwrap();
        c.put_action(&key(1), "layer", "//a:l", "{}", &[blob(1, 100), blob(2, 5)])
            .unwrap();
        c.put_action(&key(2), "image", "//a:i", "{}", &[blob(1, 100), blob(3, 7)])
            .unwrap();
        c.set_last_build(&ws("/w"), "//a:i", &key(2), "{}").unwrap();
        let refs = c.referenced_blobs().unwrap();
        let want: BTreeSet<Digest> = [1u8, 2, 3]
            .iter()
            .map(|n| Digest::of_bytes(&[*n]))
            .collect();
        assert_eq!(refs, want);
        let s = c.stats().unwrap();
        assert_eq!(s.actions, 2);
        assert_eq!(s.blobs_referenced, 3);
        assert_eq!(s.bytes_referenced, 112);
        assert_eq!(s.last_builds, 1);
        assert_eq!(s.workspaces, 1);
        assert_eq!(s.memo_entries, 0);
        assert!(s.db_bytes > 0);
    }

    #[test]
    fn parse_cache_round_trip_touch_and_cleanup() {
        let mut c = Cache::open_in_memory().unwrap();
        let hits = c.get_parsed(&[key(1), key(2)]).unwrap();
        assert_eq!(hits, ParsedHits::default());
        assert_eq!(c.put_parsed(&[], &[]).unwrap(), 0);
        c.put_parsed(
            &[(key(1), "[1]".to_string()), (key(2), "[2]".to_string())],
            &[],
        )
        .unwrap();
        c.put_parsed(&[(key(2), "[22]".to_string())], &[]).unwrap();
        let hits = c.get_parsed(&[key(1), key(2), key(3)]).unwrap();
        assert_eq!(hits.values.len(), 2);
        assert_eq!(hits.values[&key(1)], "[1]");
        assert_eq!(hits.values[&key(2)], "[22]");
        assert!(hits.stale.is_empty(), "just written");
        assert_eq!(c.stats().unwrap().parsed_files, 2);

        // Age key 1 past the touch interval, key 2 past the keep limit.
        let now = now_unix();
        let age = |c: &Cache, k: &Key, secs: u64| {
            c.conn
                .execute(
                    "UPDATE parse_cache SET used_at = ?2 WHERE key = ?1",
                    params![&k.0[..], now - secs as i64],
                )
                .unwrap();
        };
        age(&c, &key(1), TOUCH_AFTER.as_secs() + 10);
        age(&c, &key(2), PARSE_KEEP.as_secs() + 10);
        let hits = c.get_parsed(&[key(1), key(2)]).unwrap();
        let mut stale = hits.stale.clone();
        stale.sort();
        assert_eq!(stale, vec![key(1), key(2)]);
        // Touching key 1 only, and storing key 3, drops the long-unused key 2.
        let dropped = c
            .put_parsed(&[(key(3), "[3]".to_string())], &[key(1)])
            .unwrap();
        assert_eq!(dropped, 1);
        let hits = c.get_parsed(&[key(1), key(2), key(3)]).unwrap();
        assert_eq!(hits.values.len(), 2);
        assert!(hits.stale.is_empty());
        assert!(!hits.values.contains_key(&key(2)));
    }

    #[test]
    fn last_builds_are_kept_per_workspace() {
        let mut c = Cache::open_in_memory().unwrap();
        let (one, two) = (ws("/checkout-one"), ws("/checkout-two"));
        assert_eq!(c.last_build(&one, "//a:i").unwrap(), None);
        c.set_last_build(&one, "//a:i", &key(1), r#"{"file:x":"ab"}"#)
            .unwrap();
        c.set_last_build(&one, "//a:i", &key(2), r#"{"file:x":"cd"}"#)
            .unwrap();
        // another checkout of the same label does not overwrite it
        c.set_last_build(&two, "//a:i", &key(3), r#"{"file:x":"ef"}"#)
            .unwrap();
        assert_eq!(
            c.last_build(&one, "//a:i").unwrap(),
            Some((key(2), r#"{"file:x":"cd"}"#.to_string()))
        );
        assert_eq!(
            c.last_build(&two, "//a:i").unwrap(),
            Some((key(3), r#"{"file:x":"ef"}"#.to_string()))
        );
        let keys = c.last_build_keys(&one).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys["//a:i"],
            LastKey {
                key: key(2),
                stale: false
            }
        );
        age(&c, "last_build", "seen_at", TOUCH_AFTER.as_secs() + 10);
        assert!(c.last_build_keys(&one).unwrap()["//a:i"].stale);
        let mut b = Batch::new(one.clone(), SystemTime::now());
        b.touch_last_build("//a:i");
        c.commit(&mut b).unwrap();
        assert!(!c.last_build_keys(&one).unwrap()["//a:i"].stale);
        assert!(c.last_build_keys(&two).unwrap()["//a:i"].stale);
    }

    #[test]
    fn memo_round_trip_and_racy_rule() {
        let mut c = Cache::open_in_memory().unwrap();
        let w = ws("/w");
        let start = at(1_000_000);
        let old = MemoEntry {
            stat: stat(1_000_000 - 10),
            hash: key(1),
        };
        let racy = MemoEntry {
            stat: stat(1_000_000 - 1), // within the 2 s window
            hash: key(2),
        };
        let future = MemoEntry {
            stat: stat(1_000_000 + 60), // clock skew: also not trusted
            hash: key(3),
        };
        let mut recent_ctime = old;
        recent_ctime.stat.ctime_ns = 1_000_000 * 1_000_000_000;
        let entries = vec![
            ("old".to_string(), old),
            ("racy".to_string(), racy),
            ("future".to_string(), future),
            ("ctime".to_string(), recent_ctime),
        ];
        let r = c.store_memo(&w, start, &entries).unwrap();
        assert_eq!(
            r,
            MemoStored {
                stored: 1,
                too_recent: 3
            }
        );

        let memo = c.load_memo(&w).unwrap();
        assert_eq!(memo.len(), 1);
        assert_eq!(memo.lookup("old", &old.stat), Some(key(1)));
        assert_eq!(memo.lookup("racy", &racy.stat), None);
        // Any stat difference is a miss.
        let mut touched = old.stat;
        touched.mtime_ns += 1;
        assert_eq!(memo.lookup("old", &touched), None);
        let mut moved = old.stat;
        moved.inode = 7;
        assert_eq!(memo.lookup("old", &moved), None);

        // A later build trusts the once-racy file, and a racy re-store drops the old row.
        let later = at(1_000_100);
        c.store_memo(&w, later, &[("racy".to_string(), racy)])
            .unwrap();
        let edited = MemoEntry {
            stat: stat(1_000_100),
            hash: key(4),
        };
        c.store_memo(&w, later, &[("old".to_string(), edited)])
            .unwrap();
        let memo = c.load_memo(&w).unwrap();
        assert_eq!(memo.lookup("racy", &racy.stat), Some(key(2)));
        assert_eq!(memo.lookup("old", &old.stat), None);
        assert_eq!(c.stats().unwrap().memo_entries, 1);
    }

    /// CI with a new checkout path per job must not make every build load (and the
    /// index keep) every other checkout's rows.
    #[test]
    fn a_build_loads_only_its_own_workspace_memo() {
        let mut c = Cache::open_in_memory().unwrap();
        let e = MemoEntry {
            stat: stat(100),
            hash: key(1),
        };
        for n in 0..5 {
            let w = ws(&format!("/ci/job-{n}"));
            c.store_memo(&w, at(1_000), &[(format!("/ci/job-{n}/f"), e)])
                .unwrap();
        }
        let memo = c.load_memo(&ws("/ci/job-3")).unwrap();
        assert_eq!(memo.len(), 1);
        assert_eq!(memo.lookup("/ci/job-3/f", &e.stat), Some(key(1)));
        assert!(c.load_memo(&ws("/ci/job-9")).unwrap().is_empty());
    }

    #[test]
    fn blob_checks_round_trip_and_follow_the_racy_rule() {
        let mut c = Cache::open_in_memory().unwrap();
        let w = ws("/w");
        let (d1, d2) = (Digest::of_bytes(b"1"), Digest::of_bytes(b"2"));
        let mut b = Batch::new(w.clone(), at(1_000));
        b.blob_verified(&d1, stat(500));
        b.blob_verified(&d2, stat(999)); // too recent
        let done = c.commit(&mut b).unwrap();
        assert_eq!((done.rows, done.too_recent), (1, 1));
        let memo = c.load_memo(&ws("/any")).unwrap();
        assert!(memo.blob_verified(&d1, &stat(500)));
        assert!(!memo.blob_verified(&d1, &stat(501)));
        assert!(!memo.blob_verified(&d2, &stat(999)));
    }

    /// Rows used by a build are refreshed at most once a day (so a no-op build
    /// writes nothing), and rows nobody used for 30 days are pruned.
    #[test]
    fn used_rows_are_touched_and_unused_rows_pruned() {
        let mut c = Cache::open_in_memory().unwrap();
        let w = ws("/w");
        let e = MemoEntry {
            stat: stat(100),
            hash: key(1),
        };
        let d = Digest::of_bytes(b"blob");
        let mut b = Batch::new(w.clone(), at(1_000));
        b.learn("/w/used", e);
        b.learn("/w/unused", e);
        b.blob_verified(&d, stat(100));
        c.commit(&mut b).unwrap();

        // Fresh rows: a lookup marks nothing, touching writes nothing.
        let memo = c.load_memo(&w).unwrap();
        assert!(memo.lookup("/w/used", &e.stat).is_some());
        let mut b = Batch::new(w.clone(), at(1_000));
        b.touch_memo(&memo);
        assert!(b.is_empty());

        // Stale rows that are used get touched; unused ones are left to age.
        age(&c, "file_memo", "seen_at", KEEP.as_secs() - 100);
        age(&c, "blob_check", "seen_at", KEEP.as_secs() - 100);
        let memo = c.load_memo(&w).unwrap();
        assert!(memo.lookup("/w/used", &e.stat).is_some());
        assert!(memo.blob_verified(&d, &stat(100)));
        let mut b = Batch::new(w.clone(), at(1_000));
        b.touch_memo(&memo);
        assert_eq!(b.len(), 2);
        c.commit(&mut b).unwrap();

        // A month later, only what was touched is left.
        let pruned = c.prune(now_unix() + 200).unwrap();
        assert_eq!(pruned.memo_rows, 1);
        assert_eq!(pruned.blob_checks, 0);
        let memo = c.load_memo(&w).unwrap();
        assert_eq!(memo.len(), 1);
        assert!(memo.lookup("/w/used", &e.stat).is_some());
    }

    #[test]
    fn only_the_most_recent_workspaces_keep_their_rows() {
        let mut c = Cache::open_in_memory().unwrap();
        let e = MemoEntry {
            stat: stat(100),
            hash: key(1),
        };
        let r = LayoutRecord {
            manifest: Digest::of_bytes(b"m"),
            refs: "latest".into(),
            stamp: "s".into(),
        };
        let n = MAX_WORKSPACES + 4;
        let now = now_unix();
        for i in 0..n {
            let w = ws(&format!("/ci/{i:02}"));
            let mut b = Batch::new(w.clone(), at(1_000));
            b.learn(&format!("/ci/{i:02}/f"), e);
            b.set_last_build("//a:b", &key(1), "{}");
            b.put_layout(&format!("/ci/{i:02}/out"), &r, &[r.manifest], 1);
            c.commit(&mut b).unwrap();
            // Seen in order: workspace i was last seen i seconds after the first.
            c.conn
                .execute(
                    "UPDATE workspace SET seen_at = ?2 WHERE id = ?1",
                    params![&w.id[..], now - 1_000 + i as i64],
                )
                .unwrap();
        }
        // Each new workspace evicted the oldest beyond the limit, with its rows.
        assert_eq!(count(&c, "workspace") as usize, MAX_WORKSPACES);
        for table in ["file_memo", "last_build", "layout", "layout_blob"] {
            assert_eq!(count(&c, table) as usize, MAX_WORKSPACES, "{table}");
        }
        assert!(c.load_memo(&ws("/ci/03")).unwrap().is_empty());
        assert_eq!(c.load_memo(&ws("/ci/04")).unwrap().len(), 1);
        assert_eq!(c.prune(now).unwrap(), Pruned::default());

        // Not seen for 30 days: gone too, whatever the count.
        let later = now + KEEP.as_secs() as i64;
        let pruned = c.prune(later).unwrap();
        assert_eq!(pruned.workspaces, MAX_WORKSPACES);
        assert_eq!(pruned.memo_rows, MAX_WORKSPACES);
        for table in [
            "workspace",
            "file_memo",
            "last_build",
            "layout",
            "layout_blob",
        ] {
            assert_eq!(count(&c, table), 0, "{table}");
        }
    }

    /// A new workspace evicts the oldest at once, without waiting for the daily
    /// prune: a CI runner with a new checkout path per job stays bounded.
    #[test]
    fn a_new_workspace_evicts_the_oldest_beyond_the_limit() {
        let mut c = Cache::open_in_memory().unwrap();
        let e = MemoEntry {
            stat: stat(100),
            hash: key(1),
        };
        for i in 0..MAX_WORKSPACES + 3 {
            let w = ws(&format!("/ci/{i:02}"));
            c.store_memo(&w, at(1_000), &[("f".to_string(), e)])
                .unwrap();
            c.conn
                .execute(
                    "UPDATE workspace SET seen_at = seen_at - ?2 WHERE id = ?1",
                    params![&w.id[..], 1_000 - i as i64],
                )
                .unwrap();
        }
        assert_eq!(count(&c, "workspace") as usize, MAX_WORKSPACES);
        assert_eq!(count(&c, "file_memo") as usize, MAX_WORKSPACES);
    }

    #[test]
    fn commit_writes_in_short_transactions_and_empties_the_batch() {
        let mut c = Cache::open_in_memory().unwrap();
        let w = ws("/w");
        let mut b = Batch::new(w.clone(), SystemTime::now());
        for n in 0..(CHUNK * 3 + 1) as u32 {
            let k = Key::of_bytes(&n.to_le_bytes());
            b.put_action(&k, "layer", "//a:l", "{}", &[blob(1, 1)]);
        }
        let done = c.commit(&mut b).unwrap();
        assert!(b.is_empty());
        assert_eq!(done.rows, CHUNK * 3 + 1);
        // one for the new workspace row, four for the records
        assert_eq!(done.transactions, 5);
        assert_eq!(c.stats().unwrap().actions, (CHUNK * 3 + 1) as u64);
        // the workspace row is fresh: an empty commit writes nothing
        let done = c.commit(&mut b).unwrap();
        assert_eq!(done.transactions, 0);
    }

    #[test]
    fn stat_key_from_real_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let s = StatKey::from_metadata(&std::fs::metadata(&p).unwrap());
        assert_eq!(s.size, 5);
        assert!(s.mtime_ns > 1_600_000_000 * 1_000_000_000);
        assert_eq!(s.mode & 0o170000, 0o100000);
        assert_eq!(s, StatKey::from_metadata(&std::fs::metadata(&p).unwrap()));
    }

    #[test]
    fn file_database_persists_and_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1").join("imgc.sqlite");
        {
            let (mut c, warning) = Cache::open(&path).unwrap();
            assert_eq!(warning, None);
            c.put_action(&key(1), "layer", "//a:l", "{}", &[blob(1, 1)])
                .unwrap();
            let mode: String = c
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            // synchronous=NORMAL is 1
            let sync: i64 = c
                .conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 1);
        }
        let (mut c, warning) = Cache::open(&path).unwrap();
        assert_eq!(warning, None);
        assert!(c.get_action(&key(1)).unwrap().is_some());
    }

    #[test]
    fn two_connections_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        let (mut a, _) = Cache::open(&path).unwrap();
        let (mut b, w) = Cache::open(&path).unwrap();
        assert_eq!(w, None);
        a.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
        b.put_action(&key(2), "layer", "//a:m", "{}", &[]).unwrap();
        assert!(a.get_action(&key(2)).unwrap().is_some());
        assert!(b.get_action(&key(1)).unwrap().is_some());
    }

    /// While another process holds the write lock (a build committing), opening
    /// the cache and everything a read-only command does must not wait for it.
    #[test]
    fn opening_and_reading_never_wait_for_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        let w = ws("/w");
        {
            let (mut c, _) = Cache::open(&path).unwrap();
            c.put_action(&key(1), "layer", "//a:l", "{}", &[blob(1, 1)])
                .unwrap();
            c.put_parsed(&[(key(7), "[7]".to_string())], &[]).unwrap();
        }
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        holder
            .execute("DELETE FROM meta WHERE name = 'none'", [])
            .unwrap();

        let t = std::time::Instant::now();
        let (mut c, warning) = Cache::open(&path).unwrap();
        assert_eq!(warning, None);
        assert!(c.get_outputs(&key(1)).unwrap().is_some());
        assert_eq!(c.get_parsed(&[key(7)]).unwrap().values.len(), 1);
        c.load_memo(&w).unwrap();
        c.last_build_keys(&w).unwrap();
        c.layout_records(&w).unwrap();
        c.stats().unwrap();
        // the parse cache write is best-effort: skipped when the lock is busy
        assert_eq!(
            c.put_parsed(&[(key(8), "[8]".to_string())], &[]).unwrap(),
            0
        );
        let took = t.elapsed();
        assert!(
            took < PARSE_WRITE_WAIT + Duration::from_secs(1),
            "read-only work waited {took:?} for the write lock"
        );
        holder.execute_batch("COMMIT").unwrap();
        assert!(c.get_parsed(&[key(8)]).unwrap().values.is_empty());
    }

    /// Opens that met a busy database and retried (see `try_open`).
    pub(super) static BUSY_OPENS: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    /// Two builds starting at once on a new cache directory both switch it to WAL
    /// mode, and SQLite answers one of them "database is locked" at once. Here the
    /// other process is a connection holding the write lock on a new file: the open
    /// must wait for it, not fail.
    #[test]
    fn opening_a_new_database_another_process_is_creating_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let before = BUSY_OPENS.load(Ordering::SeqCst);
        std::thread::scope(|s| {
            let opener = s.spawn(|| Cache::open(&path));
            // Release the lock once the opener has met it (or given up).
            while BUSY_OPENS.load(Ordering::SeqCst) == before && !opener.is_finished() {
                std::thread::yield_now();
            }
            holder.execute_batch("COMMIT").unwrap();
            let (mut c, warning) = opener.join().unwrap().unwrap();
            assert_eq!(warning, None);
            c.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
        });
    }

    /// With WAL and synchronous=NORMAL a commit does not fsync: 1,000 single-action
    /// commits must stay cheap (generous bound for slow CI disks; about 0.1 s in release on a laptop SSD).
    #[test]
    fn a_thousand_single_commits_are_cheap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Cache::open(&dir.path().join("imgc.sqlite")).unwrap();
        let t = std::time::Instant::now();
        for n in 0..1000u32 {
            let k = Key::of_bytes(&n.to_le_bytes());
            let b = BlobRef {
                digest: Digest::of_bytes(&n.to_le_bytes()),
                size: 1,
            };
            c.put_action(&k, "layer", "//a:l", "{}", &[b]).unwrap();
        }
        let took = t.elapsed();
        eprintln!("1000 single-action commits: {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn garbage_file_is_moved_aside_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &garbage).unwrap();
        std::fs::write(dir.path().join("imgc.sqlite-wal"), b"stale").unwrap();
        let (mut c, warning) = Cache::open(&path).unwrap();
        let warning = warning.expect("a warning");
        assert!(warning.contains("moved it to"), "{warning}");
        assert_eq!(
            std::fs::read(dir.path().join("imgc.sqlite.bad")).unwrap(),
            garbage
        );
        c.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
        assert!(c.get_action(&key(1)).unwrap().is_some());
    }

    #[test]
    fn damaged_database_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        {
            let (mut c, _) = Cache::open(&path).unwrap();
            c.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
            c.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        }
        // Keep the valid header, overwrite the schema page with garbage.
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[100..] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let (mut c, warning) = Cache::open(&path).unwrap();
        assert!(warning.is_some());
        assert_eq!(c.get_action(&key(1)).unwrap(), None);
    }

    /// Writes a database with some rows of every kind, then overwrites every page
    /// after the first with garbage: it still opens (page 1 holds the header and
    /// the schema version), and only reading a table finds the damage.
    fn corrupt_from_the_second_page(path: &Path) {
        let w = ws("/w");
        {
            let (mut c, _) = Cache::open(path).unwrap();
            let mut b = Batch::new(w.clone(), at(1_000));
            for n in 0..50u8 {
                b.put_action(&key(n), "layer", "//a:l", "{}", &[blob(n, 1)]);
                b.learn(
                    &format!("/w/f{n}"),
                    MemoEntry {
                        stat: stat(100),
                        hash: key(n),
                    },
                );
                b.set_last_build(&format!("//a:{n}"), &key(n), "{}");
            }
            c.commit(&mut b).unwrap();
            c.put_parsed(&[(key(1), "[1]".to_string())], &[]).unwrap();
            c.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        }
        let page_size = 4096;
        let mut bytes = std::fs::read(path).unwrap();
        assert!(bytes.len() > 3 * page_size);
        for (i, b) in bytes[page_size..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        std::fs::write(path, &bytes).unwrap();
    }

    #[test]
    fn a_database_corrupt_from_its_second_page_is_replaced_once_whatever_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        let w = ws("/w");
        corrupt_from_the_second_page(&path);
        let (mut c, warning) = Cache::open(&path).unwrap();
        assert_eq!(warning, None, "page 1 is intact: it opens");
        // Whatever reads first heals it; nothing fails, nothing is found.
        assert_eq!(c.get_outputs(&key(1)).unwrap(), None);
        let warnings = c.take_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("imgc.sqlite.bad"), "{warnings:?}");
        assert!(dir.path().join("imgc.sqlite.bad").exists());
        assert!(c.load_memo(&w).unwrap().is_empty());
        assert!(c.last_build_keys(&w).unwrap().is_empty());
        assert_eq!(c.stats().unwrap().actions, 0);
        c.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
        assert!(c.get_action(&key(1)).unwrap().is_some());
        assert!(c.take_warnings().is_empty(), "one warning in all");

        // Every entry point heals the same way.
        type Probe = fn(&mut Cache) -> bool;
        let probes: [(&str, Probe); 6] = [
            ("stats", |c| c.stats().is_ok()),
            ("load_memo", |c| c.load_memo(&ws("/w")).is_ok()),
            ("get_parsed", |c| c.get_parsed(&[key(1)]).is_ok()),
            ("last_build", |c| c.last_build(&ws("/w"), "//a:1").is_ok()),
            ("layout_records", |c| c.layout_records(&ws("/w")).is_ok()),
            ("commit", |c| {
                let mut b = Batch::new(ws("/w"), SystemTime::now());
                b.put_action(&key(2), "layer", "//a:l", "{}", &[]);
                c.commit(&mut b).is_ok()
            }),
        ];
        for (name, probe) in probes {
            drop(c);
            let _ = std::fs::remove_file(dir.path().join("imgc.sqlite"));
            corrupt_from_the_second_page(&path);
            let (mut fresh, warning) = Cache::open(&path).unwrap();
            assert_eq!(warning, None);
            assert!(probe(&mut fresh), "{name} failed on a corrupt database");
            assert_eq!(fresh.take_warnings().len(), 1, "{name}");
            c = fresh;
        }
    }

    #[test]
    fn recovery_keeps_a_replacement_another_process_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        let (mut a, _) = Cache::open(&path).unwrap();
        // Another process found it corrupt first: moved it aside and made a new one.
        std::fs::rename(&path, dir.path().join("elsewhere")).unwrap();
        let (mut b, _) = Cache::open(&path).unwrap();
        b.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
        let warning = a.recover().unwrap();
        assert!(warning.contains("already replaced"), "{warning}");
        assert!(!dir.path().join("imgc.sqlite.bad").exists());
        assert!(a.get_action(&key(1)).unwrap().is_some(), "uses b's file");
    }

    #[test]
    fn other_schema_version_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        {
            let (mut c, _) = Cache::open(&path).unwrap();
            c.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
            c.conn
                .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        let (mut c, warning) = Cache::open(&path).unwrap();
        let warning = warning.expect("a warning");
        assert!(
            warning.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{warning}"
        );
        assert_eq!(c.get_action(&key(1)).unwrap(), None);
        let (_, again) = Cache::open(&path).unwrap();
        assert_eq!(again, None);
    }

    #[test]
    fn a_schema_5_database_is_migrated_keeping_its_actions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        {
            let (mut c, _) = Cache::open(&path).unwrap();
            c.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
            // What schema 5 was: this one without `registry_blob`.
            c.conn.execute_batch("DROP TABLE registry_blob").unwrap();
            c.conn.pragma_update(None, "user_version", 5).unwrap();
        }
        let (mut c, warning) = Cache::open(&path).unwrap();
        assert_eq!(warning, None);
        assert!(c.get_action(&key(1)).unwrap().is_some());
        let d = Digest([7; 32]);
        let mut b = Batch::new(WorkspaceId::of_root(dir.path()), SystemTime::now());
        b.registry_blobs("127.0.0.1:5000", "base", &[d, d]);
        c.commit(&mut b).unwrap();
        // The migrated table is the schema's own.
        let sql = |c: &Cache| -> String {
            c.conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE name = 'registry_blob'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let fresh = Cache::open_in_memory().unwrap();
        let norm = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let without_comments = |s: String| {
            s.lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            norm(without_comments(sql(&c))),
            norm(without_comments(sql(&fresh)))
        );
        assert_eq!(
            c.registry_repositories("127.0.0.1:5000", &[d], 4).unwrap()[&d],
            ["base"]
        );
    }

    #[test]
    fn registry_blobs_are_found_per_registry_most_recent_first() {
        let mut c = Cache::open_in_memory().unwrap();
        let (a, b) = (Digest([1; 32]), Digest([2; 32]));
        let mut batch = Batch::new(WorkspaceId::of_root(Path::new("/ws")), SystemTime::now());
        batch.registry_blobs("reg.example", "team/base", &[a, b]);
        batch.registry_blobs("reg.example", "team/app", &[a]);
        batch.registry_blobs("other.example", "x", &[b]);
        c.commit(&mut batch).unwrap();
        let found = c.registry_repositories("reg.example", &[a, b], 8).unwrap();
        let mut repos_a = found[&a].clone();
        repos_a.sort();
        assert_eq!(repos_a, ["team/app", "team/base"]);
        assert_eq!(found[&b], ["team/base"]);
        assert_eq!(
            c.registry_repositories("reg.example", &[a], 1).unwrap()[&a].len(),
            1
        );
        assert!(
            c.registry_repositories("nowhere", &[a], 8)
                .unwrap()
                .is_empty()
        );
        // Pruned like the other hints once not seen for a while.
        c.prune(now_unix() + secs(KEEP) + 10).unwrap();
        assert!(
            c.registry_repositories("reg.example", &[a], 8)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn foreign_database_without_version_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE other (x)")
            .unwrap();
        let (_, warning) = Cache::open(&path).unwrap();
        assert!(warning.unwrap().contains("no schema version"));
    }

    #[test]
    fn environment_errors_fail_without_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        // The database path is a directory: cannot open, not corrupt.
        let path = dir.path().join("imgc.sqlite");
        std::fs::create_dir(&path).unwrap();
        let err = Cache::open(&path).unwrap_err();
        assert!(!err.is_corrupt(), "{err}");
        assert!(path.is_dir());
    }
}
