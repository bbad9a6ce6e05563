-- imgc local cache index: schema of `<cache-dir>/v1/imgc.sqlite`.
--
-- Loaded by src/cache.rs with include_str!, inside one transaction that also sets
-- `PRAGMA user_version` to `cache::SCHEMA_VERSION`. Any change to this file must
-- bump SCHEMA_VERSION (a test pins a hash of this text): there are no migrations,
-- an old database is simply moved aside and rebuilt, because it is only an index.
--
-- Conventions:
--   * blake3 keys and sha256 digests are stored as 32-byte BLOBs, never as hex text
--     (use `hex(key)` in the sqlite3 shell to read them);
--   * times are integers: unix seconds for bookkeeping, nanoseconds for file stat;
--   * no foreign-key pragmas are relied on: src/cache.rs deletes dependent rows itself.

-- Action cache: an action key -> what the action produced.
CREATE TABLE action (
    key         BLOB    NOT NULL PRIMARY KEY CHECK (length(key) = 32),
    kind        TEXT    NOT NULL,            -- "layer", "image", ... (for humans and stats)
    label       TEXT    NOT NULL,            -- the target that last produced it (for humans)
    outputs     TEXT    NOT NULL,            -- opaque JSON, defined by the scheduler
    created_at  INTEGER NOT NULL,            -- unix seconds, when recorded
    used_at     INTEGER NOT NULL             -- unix seconds, last hit, refreshed at most once a day (for LRU garbage collection)
) WITHOUT ROWID;

-- The blobs an action's outputs reference: verified present before a hit is trusted,
-- and the roots of garbage collection in the CAS.
CREATE TABLE action_blob (
    key     BLOB    NOT NULL CHECK (length(key) = 32),
    digest  BLOB    NOT NULL CHECK (length(digest) = 32),
    size    INTEGER NOT NULL CHECK (size >= 0),
    PRIMARY KEY (key, digest)
) WITHOUT ROWID;
CREATE INDEX action_blob_by_digest ON action_blob (digest);

-- File-hash memo: stat data -> blake3 of the contents, only to skip re-hashing.
-- Never part of any key. Rows are only written for files whose mtime and ctime are
-- safely older than the start of the build that hashed them (racy-git rule).
CREATE TABLE file_memo (
    path      TEXT    NOT NULL PRIMARY KEY,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    mode      INTEGER NOT NULL,
    hash      BLOB    NOT NULL CHECK (length(hash) = 32)
) WITHOUT ROWID;

-- The last build of each label: its key and the JSON of the key's named components,
-- so the next build can say why it rebuilt ("`src/main.rs` changed").
CREATE TABLE last_build (
    label       TEXT    NOT NULL PRIMARY KEY,
    key         BLOB    NOT NULL CHECK (length(key) = 32),
    components  TEXT    NOT NULL,
    built_at    INTEGER NOT NULL             -- unix seconds
) WITHOUT ROWID;

-- Parse cache: a key over (parser format version, file kind, package path, exact file
-- text) -> the parse result as JSON (defined by src/workspace.rs). Only files that
-- parsed without any diagnostic are stored. Rows unused for a while are deleted when
-- new rows are written; used_at is refreshed at most once a day per row.
CREATE TABLE parse_cache (
    key      BLOB    NOT NULL PRIMARY KEY CHECK (length(key) = 32),
    value    TEXT    NOT NULL,
    used_at  INTEGER NOT NULL             -- unix seconds, last hit (coarse, see above)
);
CREATE INDEX parse_cache_by_used_at ON parse_cache (used_at);

-- Image layouts as a build last wrote or fully checked them: the absolute path of the
-- layout directory -> the manifest digest and ref names it holds, and the stat data of
-- its `oci-layout`, `index.json` and `blobs/sha256` directory at that moment (the
-- "stamp", as text). A later build trusts a layout whose stamp is unchanged, and none
-- of whose blobs it had to replace in the store, without checking it blob by blob:
-- adding, removing or replacing a blob changes the directory's stat data, and a blob
-- changed in place is the store's own file, which the build verifies. A stamp younger
-- than the racy window is not stored (as for file_memo).
CREATE TABLE layout (
    path      TEXT    NOT NULL PRIMARY KEY,
    manifest  BLOB    NOT NULL CHECK (length(manifest) = 32),
    refs      TEXT    NOT NULL,
    stamp     TEXT    NOT NULL
) WITHOUT ROWID;
