-- imgc local cache index: schema of `<cache-dir>/v1/imgc.sqlite`.
--
-- Loaded by src/cache.rs with include_str!, inside one transaction that also sets
-- `PRAGMA user_version` to `cache::SCHEMA_VERSION`. Any change to this file must
-- bump SCHEMA_VERSION (a test pins a hash of this text). An old database is moved
-- aside and rebuilt, because it is only an index, unless src/cache.rs has a
-- migration from its version (5 -> 6 adds `registry_blob`).
--
-- Conventions:
--   * blake3 keys, sha256 digests and workspace ids are stored as 32-byte BLOBs,
--     never as hex text (use `hex(key)` in the sqlite3 shell to read them);
--   * times are integers: unix seconds for bookkeeping, nanoseconds for file stat;
--   * `seen_at` is when a build last used a row, refreshed at most once a day per
--     row; rows not seen for 30 days are deleted (at most once a day, by the first
--     build that commits after that);
--   * no foreign-key pragmas are relied on: src/cache.rs deletes dependent rows itself.

-- Action cache: an action key -> what the action produced. Shared by every
-- workspace using this cache directory (keys hold no path), and not pruned here:
-- its rows are the roots that keep store blobs alive. A row fetched from a remote
-- cache is trusted only by builds that use that same remote: a workspace naming a
-- remote cache of its own choosing cannot plant hits for other workspaces' builds.
-- Columns: kind = "layer", "image", ... (for humans and stats); label = the target
-- that last produced it (for humans); outputs = opaque JSON, defined by the
-- scheduler; origin = '' when built on this machine, else the remote cache it was
-- fetched from; created_at = unix seconds, when recorded; used_at = unix seconds,
-- last hit, refreshed at most once a day (for LRU garbage collection). (These notes
-- are outside the statement: SQLite keeps every statement's text on the first page
-- of the file, and the schema must fit there.)
CREATE TABLE action (
    key         BLOB    NOT NULL PRIMARY KEY CHECK (length(key) = 32),
    kind        TEXT    NOT NULL,
    label       TEXT    NOT NULL,
    outputs     TEXT    NOT NULL,
    origin      TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    used_at     INTEGER NOT NULL
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

-- The workspaces (checkouts) that built with this cache: id = blake3 of the
-- canonical root path. Rows scoped by workspace (file_memo, last_build, layout) are
-- deleted with their workspace, when it was not seen for 30 days or when more than
-- `cache::MAX_WORKSPACES` more recently seen workspaces exist (CI with a new
-- checkout path per job must not grow the index forever).
CREATE TABLE workspace (
    id       BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 32),
    root     TEXT    NOT NULL,               -- the canonical root path (for humans)
    seen_at  INTEGER NOT NULL                -- unix seconds, last build (refreshed hourly)
) WITHOUT ROWID;

-- File-hash memo: stat data -> blake3 of the contents, only to skip re-hashing.
-- Never part of any key. Rows are only written for files whose mtime and ctime are
-- safely older than the start of the build that hashed them (racy-git rule). A
-- build loads only its own workspace's rows.
CREATE TABLE file_memo (
    ws        BLOB    NOT NULL CHECK (length(ws) = 32),
    path      TEXT    NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    mode      INTEGER NOT NULL,
    hash      BLOB    NOT NULL CHECK (length(hash) = 32),
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (ws, path)
) WITHOUT ROWID;

-- Store blobs verified to hash to their name, with their stat data at that moment:
-- a later hit naming the blob re-hashes it only if the stat data changed (a blob
-- damaged in place changes its mtime and ctime). Shared by all workspaces, like the
-- store; same racy-file rule as file_memo. A replaced blob's row is deleted.
CREATE TABLE blob_check (
    digest    BLOB    NOT NULL PRIMARY KEY CHECK (length(digest) = 32),
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    mode      INTEGER NOT NULL,
    seen_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- The last build of each label in each workspace: its key and the JSON of the key's
-- named components, so the next build can say why it rebuilt ("`src/main.rs`
-- changed"). Two checkouts sharing a cache keep their own rows.
CREATE TABLE last_build (
    ws          BLOB    NOT NULL CHECK (length(ws) = 32),
    label       TEXT    NOT NULL,
    key         BLOB    NOT NULL CHECK (length(key) = 32),
    components  TEXT    NOT NULL,
    built_at    INTEGER NOT NULL,            -- unix seconds
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (ws, label)
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
-- "stamp", as text). A later build trusts a layout whose stamp is unchanged without
-- checking it blob by blob: adding, removing or replacing a blob changes the
-- directory's stat data, and a blob changed in place is the store's own file, which
-- builds verify. When any build (of any workspace) replaces a damaged store blob, it
-- deletes every layout row naming it (through layout_blob), so a layout still
-- linking the damaged file is checked in full and re-linked. A stamp younger than the
-- racy window is not stored (as for file_memo).
CREATE TABLE layout (
    ws        BLOB    NOT NULL CHECK (length(ws) = 32),
    path      TEXT    NOT NULL,
    manifest  BLOB    NOT NULL CHECK (length(manifest) = 32),
    refs      TEXT    NOT NULL,
    stamp     TEXT    NOT NULL,
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (ws, path)
) WITHOUT ROWID;

-- The blobs of each remembered layout (manifest, config, layers).
CREATE TABLE layout_blob (
    ws      BLOB    NOT NULL CHECK (length(ws) = 32),
    path    TEXT    NOT NULL,
    digest  BLOB    NOT NULL CHECK (length(digest) = 32),
    PRIMARY KEY (ws, path, digest)
) WITHOUT ROWID;
CREATE INDEX layout_blob_by_digest ON layout_blob (digest);

-- Small named values: `pruned_at` (unix seconds of the last pruning).
CREATE TABLE meta (
    name   TEXT    NOT NULL PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;

-- Blobs known to be in a repository of a registry, recorded after each successful
-- push and pull: a later push to another repository of the same registry mounts
-- them from there instead of uploading them. Only a hint (the registry decides: a
-- refused mount falls back to an upload); rows not seen for 30 days are pruned.
-- Created by the 5 -> 6 migration too (src/cache.rs, MIGRATE_5_TO_6: keep equal).
-- Columns: `registry` is `host[:port]` as in references (`docker.io`); `seen_at`
-- unix seconds. (Compact, for the same reason as `action`'s notes.)
CREATE TABLE registry_blob (registry TEXT NOT NULL, digest BLOB NOT NULL CHECK (length(digest) = 32),
repository TEXT NOT NULL, seen_at INTEGER NOT NULL, PRIMARY KEY (registry, digest, repository)) WITHOUT ROWID;
