//! The local cache index: the one module that talks to SQLite.
//!
//! # What is stored
//!
//! `<cache-dir>/v1/imgc.sqlite` (schema: `cache-schema.sql`, loaded with
//! `include_str!`) holds five small tables:
//!
//! - **the action cache**: an action [`Key`] → the action's outputs, as an opaque JSON
//!   text that the scheduler defines, plus the list of blob [`Digest`]s (and their sizes)
//!   those outputs reference. The blob list lets the scheduler check that every blob of
//!   a hit is still in the CAS before trusting it, and gives garbage collection its roots;
//! - **the file-hash memo**: a path and its stat data ([`StatKey`]: size, mtime, ctime,
//!   inode, mode) → the blake3 of its contents, so that an unchanged file is not read
//!   again. Stat data only decides whether to re-hash: it never enters a key;
//! - **the last build of each label**: its key and the JSON of the key's named
//!   components, so the next build can print *why* something rebuilt;
//! - **the parse cache**: a [`Key`] over a spec file's exact text (and the parser
//!   version, file kind and package) → the parse result as opaque JSON, defined by
//!   `workspace`. Only files that parsed without any diagnostic are stored, so errors
//!   are always reported fresh. Rows not used for [`PARSE_KEEP`] are dropped whenever
//!   new rows are written, which keeps the table about the size of the workspace;
//! - bookkeeping: when each action was recorded and last used, blob sizes.
//!
//! # What is deliberately not stored
//!
//! No blob contents (those live in the content-addressed store, `cas/`, as plain
//! immutable files that are valid OCI blobs), no spec text (only parse results keyed
//! by its hash), no build logs, no absolute
//! workspace paths inside keys, nothing from a remote cache. The database is a
//! **per-machine index**: everything in it can be recomputed from the workspace and the
//! CAS. It is never the only copy of anything, so losing it costs one cold build, never
//! correctness. That is why [`Cache::open`] never fails because of what is in the file:
//! a file that is not a database, a corrupt one, or one with another schema version is
//! moved aside (to `imgc.sqlite.bad`) and a fresh one is created, with a warning
//! returned to the caller. Only environment errors (permissions, a full disk) fail.
//! Damage found later, by a query (an error with [`CacheError::is_corrupt`]), is
//! handled the same way by [`Cache::recover`]: the caller warns and goes on with an
//! empty index.
//!
//! The remote cache never holds SQLite: SQLite's locking and WAL do not work on
//! network filesystems. It is a directory of immutable files handled by `cas`.
//!
//! # How it is opened
//!
//! - **WAL mode** with `synchronous=NORMAL`: readers never block the writer, and a
//!   commit is an append to the write-ahead log without an fsync (the log is synced at
//!   checkpoints). A power cut may lose the last few commits, never consistency: for an
//!   index that is the right trade. A build of 1,000 actions therefore does not do
//!   1,000 fsyncs even with one commit per action; [`Cache::batch`] groups writes
//!   further when the caller has several at hand.
//! - **A busy timeout**: two imgc processes may share a cache directory. Write
//!   transactions here are short (one action, one memo flush), so waiting is cheap.
//! - **Versioning**: the directory name (`v1/`) changes when the on-disk format
//!   changes; inside it, `PRAGMA user_version` must equal [`SCHEMA_VERSION`], else the
//!   file is rebuilt. There are no migrations. A test pins a hash of the schema text so
//!   a schema edit cannot forget the version bump.
//!
//! # Threads
//!
//! A [`Cache`] (a `rusqlite::Connection`) lives on the coordinating thread. Workers
//! get read-only snapshots instead: [`Cache::load_memo`] returns a [`FileMemo`]
//! (`Send + Sync`), workers return new [`MemoEntry`]s, and the coordinator stores them
//! with one [`Cache::store_memo`] call.
//!
//! # The racy-file rule
//!
//! A file modified in the same clock tick as it was hashed could later show the same
//! stat data with different contents (git's "racy git" problem). So
//! [`Cache::store_memo`] takes the start time of the build and refuses to store an entry
//! whose mtime or ctime is not at least [`RACY_WINDOW`] older than that start; such a
//! file is simply hashed again next time (by then it is old enough to be remembered).
//! Entries in the database are therefore always trustworthy, and
//! [`FileMemo::lookup`] only compares stat data. Callers must take the stat *before*
//! reading the contents they hash, so a concurrent edit shows up as a stat change. The
//! ctime is part of [`StatKey`] because, unlike mtime, no user tool can set it back.
//!
//! Memo rows are keyed by the path the caller gives. Use the file's absolute path:
//! the memo never enters a key, so absolute paths are harmless there, and two
//! checkouts sharing one cache directory then keep separate rows instead of
//! overwriting each other's on every build.

use crate::hash::{Digest, Key};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The schema, as created by [`Cache::open`].
pub const SCHEMA: &str = include_str!("../cache-schema.sql");

/// `PRAGMA user_version` of a database made from [`SCHEMA`]. Bump on any schema change.
pub const SCHEMA_VERSION: i32 = 3;

/// How much older than the build start a file's mtime and ctime must be before its
/// hash is remembered (covers coarse filesystem timestamps, e.g. 2 s on FAT).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Parse-cache rows not used for this long are deleted when new rows are written.
pub const PARSE_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// A hit (parse cache or action cache) refreshes its `used_at` only when it is
/// older than this, so a run in which everything hits writes nothing.
pub const TOUCH_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How long to wait for another imgc process holding the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the cache index. Corruption found after opening is reported as
/// [`CacheError::Corrupt`] so the caller can treat it like a miss and carry on.
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
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
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
}

/// What a layout directory held when a build last wrote or fully checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRecord {
    pub manifest: Digest,
    /// The ref names of its `index.json`, one per line.
    pub refs: String,
    /// Stat data of its top-level files and blob directory (see `oci::layout_stamp`).
    pub stamp: String,
}

/// One memo row: a file's stat data and the blake3 of its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoEntry {
    pub stat: StatKey,
    pub hash: Key,
}

/// A read-only snapshot of the file-hash memo, for worker threads.
#[derive(Debug, Clone, Default)]
pub struct FileMemo {
    entries: HashMap<String, MemoEntry>,
}

impl FileMemo {
    /// The remembered hash of `path`, if its stat data is exactly as recorded.
    pub fn lookup(&self, path: &str, stat: &StatKey) -> Option<Key> {
        self.entries
            .get(path)
            .filter(|e| e.stat == *stat)
            .map(|e| e.hash)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

/// The cache index. See the module docs.
pub struct Cache {
    conn: Connection,
    /// For error messages; `:memory:` for an in-memory database.
    path: String,
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

fn blob32(v: &[u8], what: &str) -> Result<[u8; 32], String> {
    v.try_into()
        .map_err(|_| format!("{what} has {} bytes, expected 32", v.len()))
}

impl Cache {
    /// Opens (creating if needed) the database at `path`. A file that is corrupt, not a
    /// database, or of another schema version is moved aside to `<path>.bad` and
    /// replaced; the returned warning says so. Creates the parent directory.
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
        let cache = Cache { conn, path };
        match cache.init() {
            Ok(()) => Ok(cache),
            Err(Unusable::Fail(e)) => Err(e),
            Err(Unusable::Replace(what)) => Err(CacheError::Corrupt {
                path: cache.path,
                what,
            }),
        }
    }

    fn try_open(path: &Path) -> Result<Cache, Unusable> {
        let shown = path.display().to_string();
        let conn = Connection::open(path).map_err(|source| classify(&shown, source))?;
        let cache = Cache { conn, path: shown };
        cache.init()?;
        Ok(cache)
    }

    /// Pragmas, then schema check or creation.
    fn init(&self) -> Result<(), Unusable> {
        let c = &self.conn;
        let err = |source| classify(&self.path, source);
        c.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        if self.path != ":memory:" {
            // Reading the header happens here: garbage fails with NotADatabase.
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
        // Reads through a memory map and a larger page cache: a no-op build reads
        // thousands of rows, and one `pread` per page shows in its profile.
        c.pragma_update(None, "mmap_size", 256i64 << 20)
            .map_err(err)?;
        c.pragma_update(None, "cache_size", -32768i64)
            .map_err(err)?;
        // IMMEDIATE: two processes creating the same fresh file serialize here, and the
        // second one sees the first one's schema.
        c.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        let result = self.check_or_create_schema();
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = c.execute_batch(end).map_err(err);
        result.and(ended)
    }

    fn check_or_create_schema(&self) -> Result<(), Unusable> {
        let c = &self.conn;
        let err = |source| classify(&self.path, source);
        let version: i32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version != 0 {
            return Err(Unusable::Replace(format!(
                "schema version {version}, this imgc uses {SCHEMA_VERSION}"
            )));
        }
        let objects: i64 = c
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(err)?;
        if objects != 0 {
            return Err(Unusable::Replace(
                "tables present but no schema version".to_string(),
            ));
        }
        c.execute_batch(SCHEMA).map_err(err)?;
        c.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        Ok(())
    }

    /// Replaces a database found corrupt after opening (any call returned an error
    /// with [`CacheError::is_corrupt`]): moves the file aside and starts a new one, like
    /// [`Cache::open`] does. Returns the warning to show. An in-memory cache is simply
    /// emptied.
    pub fn recover(&mut self) -> Result<String, CacheError> {
        let memory = Connection::open_in_memory().map_err(|e| self.db_err(e))?;
        // Closes the damaged file before it is renamed.
        drop(std::mem::replace(&mut self.conn, memory));
        if self.path == ":memory:" {
            *self = Cache::open_in_memory()?;
            return Ok("the in-memory cache was corrupt and was emptied".to_string());
        }
        let path = PathBuf::from(&self.path);
        let aside = move_aside(&path)?;
        *self = Cache::try_open(&path).map_err(|u| match u {
            Unusable::Fail(e) => e,
            Unusable::Replace(what) => CacheError::Corrupt {
                path: path.display().to_string(),
                what,
            },
        })?;
        Ok(format!(
            "cache database `{}` is corrupt; moved it to `{}` and started a new one",
            path.display(),
            aside.display()
        ))
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

    /// Runs `f` in one transaction: all its writes commit together, or none if it
    /// fails. Nested calls (and the single-write methods, which open their own
    /// savepoints) join the outer transaction.
    pub fn batch<T>(
        &mut self,
        f: impl FnOnce(&mut Cache) -> Result<T, CacheError>,
    ) -> Result<T, CacheError> {
        if !self.conn.is_autocommit() {
            return f(self);
        }
        self.conn
            .execute_batch("BEGIN")
            .map_err(|e| self.db_err(e))?;
        match f(self) {
            Ok(v) => {
                self.conn
                    .execute_batch("COMMIT")
                    .map_err(|e| self.db_err(e))?;
                Ok(v)
            }
            Err(e) => {
                // The original error matters more than a failed rollback.
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Starts a long write transaction for a build: every lookup and record of the
    /// build then shares it instead of paying for one transaction each. The caller
    /// calls [`Cache::checkpoint_batch`] now and then (so a killed build keeps what
    /// it recorded, and other processes get their turn) and
    /// [`Cache::end_batch`] at the end. Within it, [`Cache::batch`] nests.
    pub fn begin_batch(&mut self) -> Result<(), CacheError> {
        if !self.conn.is_autocommit() {
            return Ok(());
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.db_err(e))
    }

    /// Commits what a long transaction holds so far and starts a new one.
    pub fn checkpoint_batch(&mut self) -> Result<(), CacheError> {
        self.end_batch()?;
        self.begin_batch()
    }

    /// Commits a long transaction, if one is open.
    pub fn end_batch(&mut self) -> Result<(), CacheError> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| self.db_err(e))
    }

    // ---- action cache ----

    /// The recorded outputs of `key`, if any. Does not check that the blobs exist:
    /// the caller verifies them in the CAS and calls [`Cache::forget_action`] if not.
    pub fn get_action(&self, key: &Key) -> Result<Option<ActionRecord>, CacheError> {
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

    /// Records (or replaces) the outputs of `key`.
    pub fn put_action(
        &mut self,
        key: &Key,
        kind: &str,
        label: &str,
        outputs_json: &str,
        blobs: &[BlobRef],
    ) -> Result<(), CacheError> {
        let now = now_unix();
        self.write(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO action (key, kind, label, outputs, created_at, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![&key.0[..], kind, label, outputs_json, now])?;
            c.prepare_cached("DELETE FROM action_blob WHERE key = ?1")?
                .execute(params![&key.0[..]])?;
            let mut ins = c.prepare_cached(
                "INSERT OR REPLACE INTO action_blob (key, digest, size) VALUES (?1, ?2, ?3)",
            )?;
            for b in blobs {
                let size = i64::try_from(b.size).unwrap_or(i64::MAX);
                ins.execute(params![&key.0[..], &b.digest.0[..], size])?;
            }
            Ok(())
        })
    }

    /// Removes `key`, e.g. when a blob it references turned out missing or corrupt.
    pub fn forget_action(&mut self, key: &Key) -> Result<(), CacheError> {
        self.write(|c| {
            c.prepare_cached("DELETE FROM action_blob WHERE key = ?1")?
                .execute(params![&key.0[..]])?;
            c.prepare_cached("DELETE FROM action WHERE key = ?1")?
                .execute(params![&key.0[..]])?;
            Ok(())
        })
    }

    /// Marks hits as used now, for least-recently-used garbage collection. One
    /// transaction; call it once per build with all the keys that hit.
    pub fn mark_used(&mut self, keys: &[Key]) -> Result<(), CacheError> {
        let now = now_unix();
        self.write(|c| {
            let mut st = c.prepare_cached("UPDATE action SET used_at = ?2 WHERE key = ?1")?;
            for k in keys {
                st.execute(params![&k.0[..], now])?;
            }
            Ok(())
        })
    }

    /// Every blob referenced by some action: the roots of CAS garbage collection.
    pub fn referenced_blobs(&self) -> Result<BTreeSet<Digest>, CacheError> {
        let rows: Vec<Vec<u8>> = self
            .conn
            .prepare("SELECT DISTINCT digest FROM action_blob")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.db_err(e))?;
        rows.iter()
            .map(|d| {
                blob32(d, "a blob digest")
                    .map(Digest)
                    .map_err(|w| self.corrupt(w))
            })
            .collect()
    }

    // ---- file-hash memo ----

    /// All memo rows, as a snapshot for worker threads.
    pub fn load_memo(&self) -> Result<FileMemo, CacheError> {
        let mut st = self
            .conn
            .prepare("SELECT path, size, mtime_ns, ctime_ns, inode, mode, hash FROM file_memo")
            .map_err(|e| self.db_err(e))?;
        let mut rows = st.query([]).map_err(|e| self.db_err(e))?;
        let mut entries = HashMap::new();
        while let Some(r) = rows.next().map_err(|e| self.db_err(e))? {
            let get = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(String, MemoRow)> {
                Ok((
                    r.get(0)?,
                    (
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ),
                ))
            };
            let (path, (size, mtime_ns, ctime_ns, inode, mode, hash)) =
                get(r).map_err(|e| self.db_err(e))?;
            let hash = Key(blob32(&hash, "a memo hash").map_err(|w| self.corrupt(w))?);
            let stat = StatKey {
                size: size as u64,
                mtime_ns,
                ctime_ns,
                inode: inode as u64,
                mode: mode as u32,
            };
            entries.insert(path, MemoEntry { stat, hash });
        }
        Ok(FileMemo { entries })
    }

    /// Stores freshly computed hashes in one transaction, applying the racy-file rule:
    /// an entry whose mtime or ctime is later than `build_start - RACY_WINDOW` is not
    /// stored (and any older row for its path is dropped). `build_start` is the time
    /// the build began, taken before any file was stat-ed.
    pub fn store_memo(
        &mut self,
        build_start: SystemTime,
        entries: &[(String, MemoEntry)],
    ) -> Result<MemoStored, CacheError> {
        let limit = system_time_ns(build_start).saturating_sub(RACY_WINDOW.as_nanos() as i64);
        let mut out = MemoStored::default();
        self.write(|c| {
            let mut ins = c.prepare_cached(
                "INSERT OR REPLACE INTO file_memo (path, size, mtime_ns, ctime_ns, inode, mode, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut del = c.prepare_cached("DELETE FROM file_memo WHERE path = ?1")?;
            for (path, e) in entries {
                let s = &e.stat;
                if s.mtime_ns > limit || s.ctime_ns > limit {
                    del.execute(params![path])?;
                    out.too_recent += 1;
                    continue;
                }
                // SQLite integers are i64: u64 values are stored bit-for-bit.
                ins.execute(params![
                    path,
                    s.size as i64,
                    s.mtime_ns,
                    s.ctime_ns,
                    s.inode as i64,
                    i64::from(s.mode),
                    &e.hash.0[..]
                ])?;
                out.stored += 1;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Drops memo rows whose path `keep` rejects (files gone from the workspace).
    /// Returns how many were dropped.
    pub fn prune_memo(&mut self, keep: impl Fn(&str) -> bool) -> Result<usize, CacheError> {
        let paths: Vec<String> = self
            .conn
            .prepare("SELECT path FROM file_memo")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.db_err(e))?;
        let gone: Vec<&String> = paths.iter().filter(|p| !keep(p)).collect();
        self.write(|c| {
            let mut del = c.prepare_cached("DELETE FROM file_memo WHERE path = ?1")?;
            for p in &gone {
                del.execute(params![p])?;
            }
            Ok(())
        })?;
        Ok(gone.len())
    }

    // ---- parse cache ----

    /// The stored values of those `keys` that are present (one prepared statement).
    /// Reads only: refreshing the stale hits is [`Cache::put_parsed`]'s job.
    pub fn get_parsed(&self, keys: &[Key]) -> Result<ParsedHits, CacheError> {
        let stale_before = now_unix() - TOUCH_AFTER.as_secs() as i64;
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
    pub fn put_parsed(
        &mut self,
        entries: &[(Key, String)],
        touch: &[Key],
    ) -> Result<usize, CacheError> {
        if entries.is_empty() && touch.is_empty() {
            return Ok(0);
        }
        let now = now_unix();
        let mut dropped = 0;
        self.write(|c| {
            let mut ins = c.prepare_cached(
                "INSERT OR REPLACE INTO parse_cache (key, value, used_at) VALUES (?1, ?2, ?3)",
            )?;
            for (k, v) in entries {
                ins.execute(params![&k.0[..], v, now])?;
            }
            let mut upd = c.prepare_cached("UPDATE parse_cache SET used_at = ?2 WHERE key = ?1")?;
            for k in touch {
                upd.execute(params![&k.0[..], now])?;
            }
            if !entries.is_empty() {
                dropped = c
                    .prepare_cached("DELETE FROM parse_cache WHERE used_at < ?1")?
                    .execute(params![now - PARSE_KEEP.as_secs() as i64])?;
            }
            Ok(())
        })?;
        Ok(dropped)
    }

    // ---- image layouts ----

    /// The layout records of every layout directory whose path starts with
    /// `prefix` (an output directory), by path.
    pub fn layout_records(
        &self,
        prefix: &str,
    ) -> Result<HashMap<String, LayoutRecord>, CacheError> {
        let rows: Vec<(String, Vec<u8>, String, String)> = self
            .conn
            .prepare_cached("SELECT path, manifest, refs, stamp FROM layout")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect()
            })
            .map_err(|e| self.db_err(e))?;
        rows.into_iter()
            .filter(|(path, ..)| path.starts_with(prefix))
            .map(|(path, m, refs, stamp)| {
                let manifest =
                    Digest(blob32(&m, "a layout manifest").map_err(|w| self.corrupt(w))?);
                Ok((
                    path,
                    LayoutRecord {
                        manifest,
                        refs,
                        stamp,
                    },
                ))
            })
            .collect()
    }

    /// Records a layout as written or fully checked. A stamp with an mtime or
    /// ctime within [`RACY_WINDOW`] of `build_start` is not trusted later: the
    /// row is dropped instead, and `false` returned.
    pub fn put_layout(
        &mut self,
        path: &str,
        record: &LayoutRecord,
        newest_ns: i64,
        build_start: SystemTime,
    ) -> Result<bool, CacheError> {
        let limit = system_time_ns(build_start).saturating_sub(RACY_WINDOW.as_nanos() as i64);
        let fresh = newest_ns > limit;
        self.write(|c| {
            if fresh {
                c.prepare_cached("DELETE FROM layout WHERE path = ?1")?.execute(params![path])?;
            } else {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO layout (path, manifest, refs, stamp) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![path, &record.manifest.0[..], record.refs, record.stamp])?;
            }
            Ok(())
        })?;
        Ok(!fresh)
    }

    // ---- last builds ----

    /// The key and components JSON of the last build of `label`.
    pub fn last_build(&self, label: &str) -> Result<Option<(Key, String)>, CacheError> {
        let row: Option<(Vec<u8>, String)> = self
            .conn
            .prepare_cached("SELECT key, components FROM last_build WHERE label = ?1")
            .and_then(|mut st| {
                st.query_row(params![label], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.db_err(e))?;
        match row {
            None => Ok(None),
            Some((k, json)) => {
                let key = Key(blob32(&k, "a last-build key").map_err(|w| self.corrupt(w))?);
                Ok(Some((key, json)))
            }
        }
    }

    /// The key of the last build of every label, in one query (a build compares
    /// each hit with it, and fetches the components only for what must rebuild).
    pub fn last_build_keys(&self) -> Result<HashMap<String, Key>, CacheError> {
        let rows: Vec<(String, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT label, key FROM last_build")
            .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(|e| self.db_err(e))?;
        rows.into_iter()
            .map(|(label, k)| {
                let key = Key(blob32(&k, "a last-build key").map_err(|w| self.corrupt(w))?);
                Ok((label, key))
            })
            .collect()
    }

    /// The recorded outputs of `key` (the scheduler's JSON) without the blob list:
    /// one indexed read, for the hot path of a no-op build. The flag says the
    /// entry's `used_at` is older than [`TOUCH_AFTER`]: the caller passes
    /// such hits to [`Cache::mark_used`], so a build refreshes the garbage
    /// collector's view at most once a day per entry instead of writing on every hit.
    pub fn get_outputs(&self, key: &Key) -> Result<Option<(String, bool)>, CacheError> {
        let stale_before = now_unix() - TOUCH_AFTER.as_secs() as i64;
        self.conn
            .prepare_cached("SELECT outputs, used_at < ?2 FROM action WHERE key = ?1")
            .and_then(|mut st| {
                st.query_row(params![&key.0[..], stale_before], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(|e| self.db_err(e))
    }

    /// Records the last build of `label`: its key and the JSON of the key's named
    /// components (component name → hash hex), defined by the caller.
    pub fn set_last_build(
        &mut self,
        label: &str,
        key: &Key,
        components_json: &str,
    ) -> Result<(), CacheError> {
        let now = now_unix();
        self.write(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO last_build (label, key, components, built_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![label, &key.0[..], components_json, now])?;
            Ok(())
        })
    }

    // ---- bookkeeping ----

    pub fn stats(&self) -> Result<CacheStats, CacheError> {
        let count = |sql: &str| -> Result<u64, CacheError> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(|e| self.db_err(e))
        };
        Ok(CacheStats {
            actions: count("SELECT count(*) FROM action")?,
            memo_entries: count("SELECT count(*) FROM file_memo")?,
            parsed_files: count("SELECT count(*) FROM parse_cache")?,
            last_builds: count("SELECT count(*) FROM last_build")?,
            blobs_referenced: count("SELECT count(DISTINCT digest) FROM action_blob")?,
            bytes_referenced: count(
                "SELECT coalesce(sum(size), 0) FROM
                 (SELECT max(size) AS size FROM action_blob GROUP BY digest)",
            )?,
            db_bytes: count(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            )?,
        })
    }

    /// One write in its own savepoint: atomic alone, or part of an enclosing
    /// [`Cache::batch`].
    fn write(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> Result<(), CacheError> {
        let path = self.path.clone();
        let err = |source| CacheError::Db {
            path: path.clone(),
            source,
        };
        let sp = self.conn.savepoint().map_err(err)?;
        f(&sp).map_err(err)?;
        sp.commit().map_err(err)
    }
}

type MemoRow = (i64, i64, i64, i64, i64, Vec<u8>);

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

/// Moves a bad database to `<path>.bad` (replacing an older one) and removes its WAL
/// and shared-memory files, which belong to the old file.
fn move_aside(path: &Path) -> Result<PathBuf, CacheError> {
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

    /// If this fails, the schema changed: bump SCHEMA_VERSION and update the hash.
    #[test]
    fn schema_is_pinned_to_its_version() {
        assert_eq!(SCHEMA_VERSION, 3);
        // Comments and layout do not count, only the statements.
        let normalized: Vec<&str> = SCHEMA
            .lines()
            .map(|l| l.split("--").next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            Key::of_bytes(normalized.join(" ").as_bytes()).to_hex(),
            "345d66c2b90ea7747f92b123b8ba0f27ea72697c4563775242fafa05247f8d58",
            "cache-schema.sql changed: bump SCHEMA_VERSION and update this hash"
        );
    }

    #[test]
    fn layout_records_round_trip_by_prefix_and_refuse_racy_stamps() {
        let mut c = Cache::open_in_memory().unwrap();
        let r = LayoutRecord {
            manifest: Digest::of_bytes(b"m"),
            refs: "latest".into(),
            stamp: "1:2:3".into(),
        };
        let old_ns = 1_000_000_000i64;
        assert!(
            c.put_layout("/ws/imgc-out/a/b", &r, old_ns, at(100))
                .unwrap()
        );
        assert!(
            c.put_layout("/other/imgc-out/a/b", &r, old_ns, at(100))
                .unwrap()
        );
        let got = c.layout_records("/ws/imgc-out/").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["/ws/imgc-out/a/b"], r);
        // a stamp within the racy window replaces nothing and drops the row
        assert!(
            !c.put_layout("/ws/imgc-out/a/b", &r, 99_500_000_000, at(100))
                .unwrap()
        );
        assert!(c.layout_records("/ws/imgc-out/").unwrap().is_empty());
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
        let old = now_unix() - TOUCH_AFTER.as_secs() as i64 - 10;
        c.conn
            .execute("UPDATE action SET used_at = ?1", params![old])
            .unwrap();
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
        c.set_last_build("//a:i", &key(2), "{}").unwrap();
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
    fn last_build_round_trip() {
        let mut c = Cache::open_in_memory().unwrap();
        assert_eq!(c.last_build("//a:i").unwrap(), None);
        c.set_last_build("//a:i", &key(1), r#"{"file:x":"ab"}"#)
            .unwrap();
        c.set_last_build("//a:i", &key(2), r#"{"file:x":"cd"}"#)
            .unwrap();
        assert_eq!(
            c.last_build("//a:i").unwrap(),
            Some((key(2), r#"{"file:x":"cd"}"#.to_string()))
        );
    }

    #[test]
    fn memo_round_trip_and_racy_rule() {
        let mut c = Cache::open_in_memory().unwrap();
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
        let r = c.store_memo(start, &entries).unwrap();
        assert_eq!(
            r,
            MemoStored {
                stored: 1,
                too_recent: 3
            }
        );

        let memo = c.load_memo().unwrap();
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
        c.store_memo(later, &[("racy".to_string(), racy)]).unwrap();
        let edited = MemoEntry {
            stat: stat(1_000_100),
            hash: key(4),
        };
        c.store_memo(later, &[("old".to_string(), edited)]).unwrap();
        let memo = c.load_memo().unwrap();
        assert_eq!(memo.lookup("racy", &racy.stat), Some(key(2)));
        assert_eq!(memo.lookup("old", &old.stat), None);
        assert_eq!(c.stats().unwrap().memo_entries, 1);

        assert_eq!(c.prune_memo(|p| p != "racy").unwrap(), 1);
        assert!(c.load_memo().unwrap().is_empty());
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
    fn batch_commits_together_or_not_at_all() {
        let mut c = Cache::open_in_memory().unwrap();
        c.batch(|c| {
            for n in 0..100 {
                c.put_action(&key(n), "layer", "//a:l", "{}", &[blob(n, 1)])?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(c.stats().unwrap().actions, 100);

        let r: Result<(), CacheError> = c.batch(|c| {
            c.forget_action(&key(0))?;
            Err(CacheError::Corrupt {
                path: "x".into(),
                what: "test".into(),
            })
        });
        assert!(r.is_err());
        assert!(c.get_action(&key(0)).unwrap().is_some(), "rolled back");
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
        let (c, warning) = Cache::open(&path).unwrap();
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
        let (c, warning) = Cache::open(&path).unwrap();
        assert!(warning.is_some());
        assert_eq!(c.get_action(&key(1)).unwrap(), None);
    }

    #[test]
    fn corruption_found_after_open_is_reported_and_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imgc.sqlite");
        let page_size: usize;
        {
            let (mut c, _) = Cache::open(&path).unwrap();
            c.put_action(&key(1), "layer", "//a:l", "{}", &[blob(1, 1)])
                .unwrap();
            page_size = c
                .conn
                .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
                .unwrap() as usize;
            c.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        }
        // Page 1 (header and schema) intact, every table page garbage: opening works,
        // reading an action does not.
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[page_size..] {
            *b = 0x5A;
        }
        std::fs::write(&path, &bytes).unwrap();
        let (mut c, warning) = Cache::open(&path).unwrap();
        assert_eq!(warning, None);
        let err = c.get_action(&key(1)).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        let warning = c.recover().unwrap();
        assert!(warning.contains("imgc.sqlite.bad"), "{warning}");
        assert_eq!(c.get_action(&key(1)).unwrap(), None);
        c.put_action(&key(1), "layer", "//a:l", "{}", &[]).unwrap();
        assert!(dir.path().join("imgc.sqlite.bad").exists());
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
        let (c, warning) = Cache::open(&path).unwrap();
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
