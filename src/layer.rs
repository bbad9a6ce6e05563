//! Deterministic layer tars, compressed and stored while streaming.
//!
//! A layer is a list of [`Entry`]s (in-image path, content, mode, owner). This
//! module turns it into the exact same bytes on every machine:
//!
//! 1. [`normalize`] validates paths, sorts entries bytewise by path (so parents
//!    come before children), drops exact duplicates and rejects conflicts (two
//!    different entries for one path, or a path that is both a non-directory and
//!    a parent). It adds no entry of its own: see "Only what the spec declares".
//! 2. [`write_layer`] writes the tar itself, header by header, with every field
//!    set explicitly: type, path (directories end with `/`), mode including
//!    setuid/setgid/sticky bits, uid/gid, empty uname/gname, device numbers 0,
//!    mtime = the given source-date-epoch, size. No atime/ctime, no xattrs, no
//!    sparse files. It does not use `tar::Builder` or
//!    `tar::HeaderMode::Deterministic` (which neither sorts nor lets us choose
//!    the mtime); `tar::Header` is only used as a typed view of the 512 bytes.
//! 3. The stream goes tar → sha256 (the `diff_id`) → compressor → sha256 (the
//!    blob digest, done by [`crate::cas::BlobWriter`]) → a temp file in the CAS. Nothing
//!    holds a whole layer in memory; a file is read in fixed-size chunks.
//!    Alongside, it lists what it wrote: one [`Listed`] per tar entry, in tar
//!    order (the [`Listing`] image assembly checks layer stacks against).
//!
//! # Only what the spec declares
//!
//! A layer's tar holds exactly the paths its spec declares: files, `text`,
//! explicit `dir` and `symlink` entries, and copied directories with everything
//! below them. It never holds an entry for a parent directory that nothing
//! declared. Such an entry would *replace* the lower layer's: a layer holding
//! `/tmp/x` would reset a base's sticky `/tmp` (`1777`) to `0755`, a layer
//! holding `/home/app/.profile` would hand the base's `10001`-owned `/home/app`
//! to root, and a layer holding `/lib/x86_64-linux-gnu/libfoo.so.1` would put a
//! real directory `/lib` where a merged-/usr base has the symlink `/lib ->
//! usr/lib` (and every library reached through it would be gone). Layers are
//! built without knowing their base (a layer's key never includes it: that is
//! what makes cascades cheap), so the only safe choice is to say nothing about
//! undeclared parents and let the unpacker do what it does for every image:
//! containerd, Docker and umoci create a missing parent as a root-owned
//! directory (`0755`), and resolve a parent through a lower layer's symlink, so
//! `/lib/x86_64-linux-gnu/libfoo.so.1` lands in `/usr/lib/x86_64-linux-gnu/`
//! (as Docker's `COPY` does). A layer thus never changes the mode, owner or
//! type of a path it did not declare. What it declares, it sets: an explicit
//! `dir "/tmp"` does replace the base's `/tmp` (the image assembly's check of
//! layer stacks is where a declared change of type is caught).
//!
//! # Tar format
//!
//! Every header is POSIX ustar. The one long-path format is **PAX**: a path
//! longer than 100 bytes (the ustar `name` field; the ustar `prefix` field is
//! never used, so there is exactly one encoding per path), a link target longer
//! than 100 bytes, a uid/gid above `0o7777777` or a size above `0o77777777777`
//! is written as a PAX extended header (`typeflag 'x'`, name
//! `././@PaxHeader`) right before its entry, with records in a fixed order
//! (`gid`, `linkpath`, `path`, `size`, `uid`). PAX is the POSIX format and the
//! one Go's `archive/tar` (Docker, BuildKit, containerd) writes; GNU
//! `././@LongLink` entries are never produced. The ustar field for such a value
//! holds the first 100 bytes (paths) or the GNU base-256 number (numbers), as
//! the `tar` crate encodes it; readers use the PAX record.
//!
//! # Compression
//!
//! - gzip: a series of independent gzip **members**, one per 1 MiB of the tar
//!   stream (the last one shorter), each compressed by libdeflate at level 6.
//!   RFC 1952 defines a gzip file as a series of members, and the readers
//!   that matter decode them as one stream: Go's `compress/gzip` (containerd,
//!   umoci, skopeo, Docker), GNU gzip, zlib's `gzread`, Python, flate2's
//!   `MultiGzDecoder`. This is how gzip layers get fast: libdeflate is about
//!   1.5× zlib per core but only compresses whole buffers, and independent
//!   members let the chunks of one layer compress in parallel (pigz's idea,
//!   without its shared dictionaries so that each member stands alone).
//!   - Determinism: the cut points depend only on the byte offset in the tar
//!     stream, never on entries, file reads or threads; each member depends
//!     only on its own bytes and the level. Chunks are collected into a window
//!     of up to `2 × threads` (at most 16) and compressed with rayon on a
//!     pool of their own (one thread per CPU), then written in order, so the
//!     blob is the same with 1 thread or 64 (a test compresses with a 1- and a
//!     4-thread pool). The pool is separate from the scheduler's on purpose: a
//!     layer job waiting for its members then blocks, where on a shared pool
//!     it would steal and start another layer job, whose window would start
//!     another, and memory would grow with the number of layers. Memory stays
//!     at about two windows of chunks per running layer, whatever its size.
//!   - Every byte outside the deflate data is written here, not by a library:
//!     each member is the 10-byte header `1f 8b 08 00 00000000 00 ff` (deflate,
//!     no flags so no name, comment or extra field, mtime 0, XFL 0, OS 255),
//!     libdeflate's raw deflate output, then CRC-32 and ISIZE. An empty stream
//!     (not reachable from a layer: a tar always ends with 1024 zero bytes)
//!     still gets one valid, empty member.
//!   - Chunk size: 1 MiB makes the per-member cost (18 bytes of framing, and a
//!     match window that starts empty) a fraction of a percent of the output,
//!     while a window of chunks stays a few MiB. Smaller chunks would cost
//!     ratio; larger ones memory and parallelism on small layers. Changing it
//!     changes the blobs, so it is part of the identity.
//! - zstd: a series of independent zstd **frames**, one per 8 MiB of the tar
//!   stream (the last one shorter), each compressed from a contiguous buffer
//!   by one `ZSTD_compress2` call at level 3. RFC 8878 (§3) defines a zstd
//!   stream as a series of frames, and decoders read them as one: the
//!   `zstd` CLI, Go's klauspost decoder (containerd, umoci, skopeo), the
//!   `zstd` crate's streaming decoder. Tests check umoci and skopeo read a
//!   multi-frame layer and get its diff_id.
//!   - Every frame parameter is set, not left to library defaults: level 3,
//!     the checksum on, the content size written (each frame's size is known
//!     when it is compressed), no dictionary id, a window of 2 MiB
//!     (`windowLog` 21, level 3's own for large inputs; zstd shrinks it by
//!     rule for a last frame shorter than that, which depends on its length
//!     alone), no long-distance matching, no worker threads.
//!   - Why frames: one frame per layer, streamed, goes through zstd's ring
//!     buffer (one window plus one block). Once that has wrapped, almost every
//!     block's window straddles the buffer's end, and the match finder runs
//!     its "external dictionary" variant: in a profile of a cold build of the
//!     benchmark's tree (bench/README.md) `ZSTD_compressBlock_doubleFast_extDict_generic`
//!     took 51% of all samples, and the build was 0.57 to 0.84× `zstd -T0` by
//!     CPU time. A contiguous buffer compressed at once never takes that
//!     path (it is what `zstd -T0`'s jobs do), and independent frames can be
//!     compressed in parallel like the gzip members. On a 31.5 MB tar: 256 to
//!     293 ms for 8 MiB frames against 336 to 397 ms streamed, the size within
//!     0.1% of `zstd -3 -T0`'s.
//!   - Frame size: 8 MiB, four windows: the per-frame cost (a window that
//!     starts empty, about 20 bytes of header and checksum) stays near 1% of
//!     the output. Changing it changes the blobs, so it is part of the
//!     identity.
//!   - Parallel and bounded: each full buffer is handed to the compression
//!     pool (the gzip members' pool) at once, while the layer's thread goes on
//!     filling the next; frames are written in order as they come back. The
//!     number of 8 MiB input buffers alive in the whole process (filling or
//!     in flight, over every layer being written) is bounded by a budget of
//!     two per pool thread, at most 16: a layer waits for its own oldest frame
//!     before it takes more, and waits on the budget only with no frame in
//!     flight (so it never holds a share while blocked, and cannot deadlock).
//!     At 2 CPUs that is 4 buffers: 32 MiB of input, plus a frame buffer
//!     each (as large as the largest frame it held). The buffers are kept for
//!     the next layer rather than freed: allocating them per layer faulted
//!     every page in again (about a second of system time on a 1 GB build).
//!     Peak RSS of a cold build of the 1 GB benchmark tree at `-j 2`: about
//!     62 MiB (bench/README.md).
//!   - Determinism: the cut points depend only on the byte offset in the tar
//!     stream; each frame depends only on its own bytes and the parameters
//!     above, so the blob is the same with 1 thread or 64 and whatever the
//!     budget (tests: pools of 1 to 4 threads and budgets of 1 to 8 buffers,
//!     two layers sharing a budget of 2, and `-j 1` against `-j 2`), and a
//!     test rebuilds a blob from the definition (fresh contexts, the
//!     parameters set by hand) and compares.
//!   - Not zstd's own threads (`ZSTD_c_nbWorkers`): `zstd.h` does not promise
//!     the same bytes for any number of workers, and each worker takes a
//!     buffer of at least 32 MiB per layer.
//!
//! The tar stream reaches the compressor in fixed 128 KiB chunks whatever the
//! sizes of headers, inline contents and file reads. Neither compressor needs
//! it now (both cut at byte offsets and compress whole buffers), but a
//! streaming one could emit different bytes for the same input cut
//! differently, and a test checks a file source and the same bytes inline
//! give the same blob.
//!
//! The format's [`LayerFormat::identity`] names the tar format revision, the
//! compressor and its level, and the member or frame size (e.g.
//! `tar-pax-1+gzip/libdeflate/6/members-1MiB`, `tar-pax-1+zstd/3/frames-8MiB`;
//! the other zstd frame parameters are fixed: changing one means a new
//! identity); it enters layer keys, so
//! changing any of them rebuilds layers instead of mixing outputs. The diff_id
//! does not depend on the compressor: it is the stable identity of the layer's
//! content.
//!
//! # What it deliberately does not do
//!
//! - It does not read the workspace, expand globs or decide modes and owners:
//!   [`crate::fileset`] does, and hands over finished entries.
//! - It does not follow symlinks when reading a [`EntryData::File`] source: the
//!   file is opened beneath the workspace root's descriptor
//!   ([`crate::input::Root::open_nofollow`]), its parent directories followed
//!   only through links that stay inside the workspace, itself never. A source
//!   that became a symlink, is no longer a regular file, is now reached
//!   through a link out of the workspace, whose size differs from the size
//!   given (at open time or while reading), or whose content does not have
//!   the blake3 the entry carries is an error naming the path, never a
//!   silently different layer.
//!   The caller hashed the file when it computed the layer's key, and that hash
//!   travels with the entry ([`EntryData::File`]); the file is hashed again as
//!   it streams into the tar, and a change since (even one that keeps the size
//!   and the mtime) fails the layer, so nothing is stored or cached under a key
//!   that does not describe it. blake3 runs at several GB/s: a few percent of
//!   what compression costs.
//! - It does not trust the store either: an [`EntryData::Blob`] (a downloaded
//!   file) is opened without following a link, streamed with the size its file
//!   has, and hashed on the way; a blob that does not hash to its digest fails
//!   the layer.
//! - No hard links, device nodes or whiteouts: imgc layers are additive.

use crate::cas::Cas;
use crate::hash::{DiffId, Digest, Key, Sha256};
use crate::input::{self, HashReader, InputError, Limit, READ_BUF, Root};
use crate::listing::{Listed, Listing, PathKind};
use crate::spec::model::Compression;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Revision of the tar encoding below; part of [`LayerFormat::identity`].
const TAR_FORMAT: &str = "tar-pax-1";
const BLOCK: usize = 512;
/// Largest value of an 8-byte octal ustar field (uid, gid).
const MAX_OCTAL_8: u64 = 0o7777777;
/// Largest value of a 12-byte octal ustar field (size).
const MAX_OCTAL_12: u64 = 0o77777777777;
const PAX_HEADER_NAME: &str = "././@PaxHeader";

/// What an entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryData {
    /// A regular file read from `source`, which must still have `size` bytes
    /// whose blake3 is `blake3`: the hash the layer's key was computed from.
    File {
        source: SourceFile,
        size: u64,
        blake3: Key,
    },
    /// A regular file with inline content.
    Bytes(Vec<u8>),
    /// A regular file whose bytes are the CAS blob with this sha256 (an
    /// http-file's download): streamed from the store when the layer is
    /// written, hashed on the way, and refused unless it hashes to the digest.
    Blob(Digest),
    Dir,
    /// A symbolic link to the given target (stored as written).
    Symlink(String),
}

/// A workspace file that a layer reads: opened beneath `root` (never by an
/// absolute path) when the layer is written, following symlinks in its parent
/// directories only inside the workspace, and never a symlink itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub root: Arc<Root>,
    /// Relative to the root; names the file in messages.
    pub rel: PathBuf,
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// In-image path without a leading or trailing `/`, e.g. `app/server`.
    pub path: String,
    pub data: EntryData,
    /// Permission bits including setuid/setgid/sticky (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerFormat {
    pub compression: Compression,
    pub level: i32,
}

impl LayerFormat {
    /// gzip level 6 or zstd level 3.
    pub fn default_for(c: Compression) -> Self {
        let level = match c {
            Compression::Gzip => 6,
            Compression::Zstd => 3,
        };
        LayerFormat {
            compression: c,
            level,
        }
    }

    /// Names everything that decides the blob's bytes besides the entries, e.g.
    /// `tar-pax-1+gzip/libdeflate/6/members-1MiB` or
    /// `tar-pax-1+zstd/3/frames-8MiB`. Part
    /// of layer keys.
    pub fn identity(&self) -> String {
        match self.compression {
            Compression::Gzip => format!(
                "{TAR_FORMAT}+gzip/libdeflate/{}/members-{}MiB",
                gzip_level(self.level),
                GZIP_MEMBER >> 20
            ),
            Compression::Zstd => format!(
                "{TAR_FORMAT}+zstd/{}/frames-{}MiB",
                self.level,
                ZSTD_FRAME >> 20
            ),
        }
    }

    pub fn media_type(&self) -> &'static str {
        match self.compression {
            Compression::Gzip => MEDIA_TYPE_GZIP,
            Compression::Zstd => MEDIA_TYPE_ZSTD,
        }
    }
}

pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Errors building a layer; each names the in-image path or source it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("invalid path `{path}` in layer: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("invalid mode {mode:#o} for `{path}` (at most 0o7777)")]
    InvalidMode { path: String, mode: u32 },
    #[error("two different entries write `{path}`")]
    Conflict { path: String },
    #[error("`{parent}` is not a directory but `{child}` is inside it")]
    NotADirectory { parent: String, child: String },
    #[error("cannot read `{}`: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("`{}` changed while building the layer: {reason}", path.display())]
    SourceChanged { path: PathBuf, reason: String },
    #[error("cannot write the layer blob: {0}")]
    Store(#[source] io::Error),
}

/// Validates, sorts and de-duplicates entries, and rejects conflicts: two
/// different entries for one path, or a path that is a non-directory in this
/// layer and a parent of another of its paths.
///
/// It adds nothing: a parent directory that no entry declares gets no entry
/// (see "Only what the spec declares" in the module documentation).
pub fn normalize(entries: Vec<Entry>) -> Result<Vec<Entry>, LayerError> {
    let mut map: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        validate_path(&e.path)?;
        if e.mode > 0o7777 {
            return Err(LayerError::InvalidMode {
                path: e.path,
                mode: e.mode,
            });
        }
        match map.get(&e.path) {
            Some(prev) if *prev != e => return Err(LayerError::Conflict { path: e.path }),
            Some(_) => {}
            None => {
                map.insert(e.path.clone(), e);
            }
        }
    }
    for path in map.keys() {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            end += i + 1;
            if map.get(parent).is_some_and(|p| p.data != EntryData::Dir) {
                return Err(LayerError::NotADirectory {
                    parent: parent.to_string(),
                    child: path.clone(),
                });
            }
        }
    }
    Ok(map.into_values().collect())
}

fn validate_path(path: &str) -> Result<(), LayerError> {
    let bad = |reason| {
        Err(LayerError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("starts with `/`");
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    for c in path.split('/') {
        match c {
            "" => return bad("has an empty component (`//` or a trailing `/`)"),
            "." | ".." => return bad("has a `.` or `..` component"),
            _ => {}
        }
    }
    Ok(())
}

/// What [`write_layer`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOutput {
    /// sha256 of the compressed blob (stored in the CAS).
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: DiffId,
    /// Size of the compressed blob.
    pub size: u64,
    pub media_type: String,
    /// Every entry of the tar, in tar order.
    pub listing: Listing,
}

/// Writes `entries` (as returned by [`normalize`]) as a compressed tar into the
/// CAS. `mtime` is the source-date-epoch, used for every entry.
pub fn write_layer(
    entries: &[Entry],
    format: &LayerFormat,
    mtime: u64,
    cas: &Cas,
) -> Result<LayerOutput, LayerError> {
    let blob = cas.writer().map_err(LayerError::Store)?;
    let (diff_id, blob) = match format.compression {
        Compression::Gzip => {
            let enc = GzipMembers::new(blob, format.level);
            let (diff_id, enc) = write_tar(entries, mtime, Some(cas), enc)?;
            (diff_id, enc.finish().map_err(LayerError::Store)?)
        }
        Compression::Zstd => {
            let enc = ZstdFrames::new(blob, format.level);
            let (diff_id, enc) = write_tar(entries, mtime, Some(cas), enc)?;
            (diff_id, enc.finish().map_err(LayerError::Store)?)
        }
    };
    let (digest, size) = blob.commit().map_err(LayerError::Store)?;
    Ok(LayerOutput {
        digest,
        diff_id: DiffId(diff_id),
        size,
        media_type: format.media_type().to_string(),
        listing: listing(entries),
    })
}

/// The listing of a tar written from `entries`: one [`Listed`] per entry, in
/// the same order (PAX extended headers belong to the entry after them and are
/// not listed).
fn listing(entries: &[Entry]) -> Listing {
    Listing {
        entries: entries
            .iter()
            .map(|e| {
                let (kind, target) = match &e.data {
                    EntryData::File { .. } | EntryData::Bytes(_) | EntryData::Blob(_) => {
                        (PathKind::File, None)
                    }
                    EntryData::Dir => (PathKind::Dir, None),
                    EntryData::Symlink(t) => (PathKind::Symlink, Some(t.clone())),
                };
                Listed {
                    path: e.path.clone(),
                    kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    target,
                }
            })
            .collect(),
    }
}

/// Size of the chunks handed to the compressor.
const CHUNK: usize = 128 * 1024;

/// The tar stream's sink: hashes it (the diff_id) and hands it to the
/// compressor in chunks of exactly [`CHUNK`] bytes (the last one shorter).
/// Compressors may emit different (equally valid) bytes for the same input cut
/// into different pieces; fixed chunks make the blob independent of how entries
/// and files happen to be read.
struct TarSink<W: Write> {
    inner: W,
    sha: Sha256,
    buf: Vec<u8>,
}

impl<W: Write> TarSink<W> {
    fn new(inner: W) -> Self {
        TarSink {
            inner,
            sha: Sha256::new(),
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn finish(mut self) -> io::Result<(Digest, W)> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
        }
        Ok((self.sha.finish(), self.inner))
    }
}

impl<W: Write> Write for TarSink<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.sha.update(&data[..n]);
        if self.buf.len() == CHUNK {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(n)
    }

    /// Does nothing: flushing a partial chunk would change the chunking.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Uncompressed bytes behind each gzip member (the last one may be shorter).
const GZIP_MEMBER: usize = 1 << 20;
/// Most members compressed at once, whatever the number of threads: bounds a
/// layer's memory to about twice this many MiB (inputs and outputs).
const GZIP_WINDOW_MAX: usize = 16;
/// Every member's header: magic, CM 8 (deflate), FLG 0 (no name, comment,
/// extra field or header CRC), MTIME 0, XFL 0, OS 255 (unknown).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// libdeflate's levels are 0 to 12.
fn gzip_level(level: i32) -> i32 {
    level.clamp(0, 12)
}

/// A gzip stream made of independent members, one per [`GZIP_MEMBER`] bytes
/// of input (RFC 1952 §2.2: a gzip file is a series of members). The cut
/// points depend only on the byte offset in the stream, so the output is the
/// same however the input arrives. Complete chunks are collected into a window
/// of up to `2 × threads` (at most [`GZIP_WINDOW_MAX`]) and compressed in
/// parallel on the compression pool, then written in order.
struct GzipMembers<'p, W: Write> {
    out: W,
    level: i32,
    pool: &'p rayon::ThreadPool,
    window: usize,
    /// Complete chunks waiting to be compressed.
    full: Vec<Vec<u8>>,
    /// The chunk being filled.
    cur: Vec<u8>,
    /// Emptied chunk buffers, reused.
    spare: Vec<Vec<u8>>,
    members: u64,
}

/// The pool that compresses gzip members, apart from the scheduler's: a layer
/// job waiting for its members blocks instead of stealing another layer job
/// (which would start another window, and another: memory without bound).
/// One thread per CPU; the output does not depend on it.
fn compress_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("imgc-compress-{i}"))
            .build()
            .or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
            .expect("a one-thread pool can always be built")
    })
}

impl<W: Write> GzipMembers<'static, W> {
    fn new(out: W, level: i32) -> Self {
        GzipMembers::with_pool(out, level, compress_pool())
    }
}

impl<'p, W: Write> GzipMembers<'p, W> {
    fn with_pool(out: W, level: i32, pool: &'p rayon::ThreadPool) -> Self {
        GzipMembers {
            out,
            level: gzip_level(level),
            pool,
            window: (2 * pool.current_num_threads()).clamp(1, GZIP_WINDOW_MAX),
            full: Vec::new(),
            cur: Vec::with_capacity(GZIP_MEMBER),
            spare: Vec::new(),
            members: 0,
        }
    }

    /// Compresses the waiting chunks in parallel and writes them in order.
    ///
    /// The chunks go to the compression pool with `spawn`, and this thread
    /// waits on a channel: a real block. (`install` or `scope` from a thread of
    /// another rayon pool would keep that thread busy with its own pool's jobs
    /// while it waits, i.e. start more layers, each with a window of its own.)
    fn drain(&mut self) -> io::Result<()> {
        let level = self.level;
        let n = self.full.len();
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, chunk) in self.full.drain(..).enumerate() {
            let tx = tx.clone();
            self.pool.spawn(move || {
                let member = gzip_member(&chunk, level);
                let _ = tx.send((i, member, chunk));
            });
        }
        drop(tx);
        let mut members: Vec<Option<io::Result<Vec<u8>>>> = (0..n).map(|_| None).collect();
        for (i, member, mut chunk) in rx {
            members[i] = Some(member);
            chunk.clear();
            self.spare.push(chunk);
        }
        for m in members {
            let m = m.ok_or_else(|| io::Error::other("a gzip compression job died"))??;
            self.out.write_all(&m)?;
            self.members += 1;
        }
        Ok(())
    }

    /// Compresses what is left (an empty stream still gets one member) and
    /// returns the inner writer.
    fn finish(mut self) -> io::Result<W> {
        if !self.cur.is_empty() || (self.members == 0 && self.full.is_empty()) {
            let cur = std::mem::take(&mut self.cur);
            self.full.push(cur);
        }
        self.drain()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for GzipMembers<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(GZIP_MEMBER - self.cur.len());
        self.cur.extend_from_slice(&data[..n]);
        if self.cur.len() == GZIP_MEMBER {
            let next = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(GZIP_MEMBER));
            let chunk = std::mem::replace(&mut self.cur, next);
            self.full.push(chunk);
            if self.full.len() >= self.window {
                self.drain()?;
            }
        }
        Ok(n)
    }

    /// Does nothing: a member ends only every [`GZIP_MEMBER`] bytes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// One libdeflate compressor per thread and level (it holds its match-finder
    /// tables, a few hundred KB, so it is not allocated per member).
    static DEFLATER: std::cell::RefCell<Option<(i32, libdeflater::Compressor)>> =
        const { std::cell::RefCell::new(None) };
}

/// One complete gzip member: [`GZIP_HEADER`], `data` as raw deflate
/// (libdeflate at `level`), CRC-32 and ISIZE (little-endian). The header is
/// ours rather than libdeflate's so that every byte outside the deflate stream
/// is chosen here.
fn gzip_member(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    DEFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            let lvl = libdeflater::CompressionLvl::new(level)
                .map_err(|e| io::Error::other(format!("gzip level {level}: {e:?}")))?;
            *slot = Some((level, libdeflater::Compressor::new(lvl)));
        }
        let (_, c) = slot.as_mut().expect("set above");
        let bound = c.deflate_compress_bound(data.len());
        let mut out = vec![0u8; GZIP_HEADER.len() + bound + 8];
        out[..GZIP_HEADER.len()].copy_from_slice(&GZIP_HEADER);
        let n = c
            .deflate_compress(data, &mut out[GZIP_HEADER.len()..][..bound])
            .map_err(io::Error::other)?;
        out.truncate(GZIP_HEADER.len() + n);
        out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        // ISIZE is the size modulo 2^32; a member is at most 1 MiB.
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        Ok(out)
    })
}

/// Uncompressed bytes behind each zstd frame (the last one may be shorter).
const ZSTD_FRAME: usize = 8 << 20;
/// The window of every zstd frame: 2 MiB, level 3's own for inputs over
/// 256 KiB (zstd shrinks it for a shorter last frame, by its size alone).
const ZSTD_WINDOW_LOG: u32 = 21;
/// Most zstd frame buffers alive at once in the whole process, whatever the
/// number of CPUs: bounds the inputs to this many × [`ZSTD_FRAME`].
const ZSTD_BUFFERS_MAX: usize = 16;

/// A process-wide budget of zstd frame buffers, shared by every layer being
/// written: a layer holds one [`Permit`] per buffer it fills or has in flight,
/// so memory does not grow with the number of layers written at once. The
/// buffers themselves are kept for the next layer (allocated at most once per
/// permit, not faulted in again for every frame).
struct Budget {
    state: std::sync::Mutex<BudgetState>,
    freed: std::sync::Condvar,
}

struct BudgetState {
    free: usize,
    spare: Vec<FrameBufs>,
}

/// The two buffers of one frame: its input, and the frame compressed from it.
#[derive(Default)]
struct FrameBufs {
    input: Vec<u8>,
    frame: Vec<u8>,
}

/// One share of a [`Budget`], with its buffers while they are not on the
/// compression pool; given back (buffers and all) when dropped.
struct Permit<'b> {
    budget: &'b Budget,
    bufs: Option<FrameBufs>,
}

impl Budget {
    fn new(buffers: usize) -> Self {
        Budget {
            state: std::sync::Mutex::new(BudgetState {
                free: buffers.max(1),
                spare: Vec::new(),
            }),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Two buffers per thread of the compression pool (one compressing, one
    /// being filled or waiting), at most [`ZSTD_BUFFERS_MAX`].
    fn global() -> &'static Budget {
        static BUDGET: std::sync::OnceLock<Budget> = std::sync::OnceLock::new();
        BUDGET.get_or_init(|| {
            Budget::new((2 * compress_pool().current_num_threads()).clamp(2, ZSTD_BUFFERS_MAX))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn grant(&self, state: &mut BudgetState) -> Permit<'_> {
        state.free -= 1;
        let mut bufs = state.spare.pop().unwrap_or_default();
        bufs.input.reserve_exact(ZSTD_FRAME);
        Permit {
            budget: self,
            bufs: Some(bufs),
        }
    }

    fn try_take(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        (state.free > 0).then(|| self.grant(&mut state))
    }

    fn take(&self) -> Permit<'_> {
        let mut state = self.lock();
        while state.free == 0 {
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        self.grant(&mut state)
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.lock().free
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        state.free += 1;
        if let Some(mut bufs) = self.bufs.take() {
            bufs.input.clear();
            state.spare.push(bufs);
        }
        self.budget.freed.notify_one();
    }
}

/// What a compression job sends back: whether it compressed, and the buffers.
type FrameResult = (io::Result<()>, FrameBufs);

/// A zstd stream made of independent frames, one per [`ZSTD_FRAME`] bytes of
/// input (RFC 8878 §3: a zstd stream is a series of frames). The cut points
/// depend only on the byte offset in the stream. Each full buffer goes to the
/// compression pool as soon as it is full (one `ZSTD_compress2` call from a
/// contiguous buffer), and frames are written in order as they come back; the
/// number of buffers alive in the process is bounded by a [`Budget`].
///
/// Deadlock-free: this thread blocks on the budget only while it has no frame
/// in flight (so it holds no permit); with frames in flight it waits for its
/// own oldest frame instead, which needs nothing but a pool thread.
struct ZstdFrames<'p, W: Write> {
    out: W,
    level: i32,
    pool: &'p rayon::ThreadPool,
    budget: &'p Budget,
    /// The permit whose input buffer is being filled.
    cur: Option<Permit<'p>>,
    /// Frames being compressed, oldest first (their permits hold no buffers).
    pending: std::collections::VecDeque<(std::sync::mpsc::Receiver<FrameResult>, Permit<'p>)>,
    frames: u64,
}

impl<W: Write> ZstdFrames<'static, W> {
    fn new(out: W, level: i32) -> Self {
        ZstdFrames::with_pool(out, level, compress_pool(), Budget::global())
    }
}

impl<'p, W: Write> ZstdFrames<'p, W> {
    fn with_pool(out: W, level: i32, pool: &'p rayon::ThreadPool, budget: &'p Budget) -> Self {
        ZstdFrames {
            out,
            level,
            pool,
            budget,
            cur: None,
            pending: std::collections::VecDeque::new(),
            frames: 0,
        }
    }

    /// Hands the current buffer to the pool (as with gzip members: `spawn`,
    /// and later a real block on a channel, never `install` or `scope`).
    fn submit(&mut self) {
        let Some(mut permit) = self.cur.take() else {
            return;
        };
        let mut bufs = permit.bufs.take().expect("a filling permit has buffers");
        let level = self.level;
        let (tx, rx) = std::sync::mpsc::channel();
        self.pool.spawn(move || {
            let done = zstd_frame(&bufs.input, &mut bufs.frame, level);
            let _ = tx.send((done, bufs));
        });
        self.pending.push_back((rx, permit));
    }

    /// Writes out a frame that came back, and returns its permit, buffers
    /// emptied, for the next input.
    fn write_frame(&mut self, done: FrameResult, mut permit: Permit<'p>) -> io::Result<Permit<'p>> {
        let (compressed, mut bufs) = done;
        compressed?;
        self.out.write_all(&bufs.frame)?;
        self.frames += 1;
        bufs.input.clear();
        permit.bufs = Some(bufs);
        Ok(permit)
    }

    /// Waits for the oldest frame in flight and writes it.
    fn write_oldest(&mut self) -> io::Result<Permit<'p>> {
        let (rx, permit) = self
            .pending
            .pop_front()
            .expect("write_oldest is called with frames in flight");
        let done = rx
            .recv()
            .map_err(|_| io::Error::other("a zstd compression job died"))?;
        self.write_frame(done, permit)
    }

    /// A buffer to fill: a finished frame's (written out first), else a new
    /// one within the budget, else the oldest frame's once it is done, else
    /// (nothing in flight) one another layer gives back.
    fn buffer(&mut self) -> io::Result<Permit<'p>> {
        let mut reuse = None;
        while let Some(Ok(done)) = self.pending.front().map(|(rx, _)| rx.try_recv()) {
            let (_, permit) = self.pending.pop_front().expect("front exists");
            reuse = Some(self.write_frame(done, permit)?);
        }
        if let Some(p) = reuse {
            return Ok(p);
        }
        if let Some(p) = self.budget.try_take() {
            return Ok(p);
        }
        if !self.pending.is_empty() {
            return self.write_oldest();
        }
        Ok(self.budget.take())
    }

    /// Compresses what is left (an empty stream still gets one frame), writes
    /// every frame in order and returns the inner writer.
    fn finish(mut self) -> io::Result<W> {
        let nothing_yet = self.frames == 0 && self.pending.is_empty();
        if nothing_yet && self.cur.is_none() {
            self.cur = Some(self.buffer()?);
        }
        let partial = self
            .cur
            .as_ref()
            .and_then(|p| p.bufs.as_ref())
            .is_some_and(|b| !b.input.is_empty());
        if partial || nothing_yet {
            self.submit();
        }
        self.cur = None;
        while !self.pending.is_empty() {
            drop(self.write_oldest()?);
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for ZstdFrames<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.cur.is_none() {
            self.cur = Some(self.buffer()?);
        }
        let input = &mut self
            .cur
            .as_mut()
            .and_then(|p| p.bufs.as_mut())
            .expect("set above, with buffers")
            .input;
        let n = data.len().min(ZSTD_FRAME - input.len());
        input.extend_from_slice(&data[..n]);
        if input.len() == ZSTD_FRAME {
            self.submit();
        }
        Ok(n)
    }

    /// Does nothing: a frame ends only every [`ZSTD_FRAME`] bytes.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// One zstd context per thread and level: its match-finder tables are
    /// reused from frame to frame.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// A zstd context with every frame parameter set explicitly: `level`, the
/// checksum on, the content size written, no dictionary id, a window of
/// 2^[`ZSTD_WINDOW_LOG`], no long-distance matching, no worker threads.
fn zstd_compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(CParameter::ChecksumFlag(true))?;
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    c.set_parameter(CParameter::DictIdFlag(false))?;
    c.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
    c.set_parameter(CParameter::EnableLongDistanceMatching(false))?;
    Ok(c)
}

/// One complete zstd frame of `data`, compressed in one call into `frame`
/// (emptied first).
fn zstd_frame(data: &[u8], frame: &mut Vec<u8>, level: i32) -> io::Result<()> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, zstd_compressor(level)?));
        }
        let (_, c) = slot.as_mut().expect("set above");
        frame.clear();
        frame.reserve(zstd::zstd_safe::compress_bound(data.len()));
        c.compress_to_buffer(data, frame)?;
        Ok(())
    })
}

/// Writes the tar stream into `out`, returning its sha256 and `out`. `cas`
/// holds the blobs of [`EntryData::Blob`] entries.
fn write_tar<W: Write>(
    entries: &[Entry],
    mtime: u64,
    cas: Option<&Cas>,
    out: W,
) -> Result<(Digest, W), LayerError> {
    let mut w = TarSink::new(out);
    // One read buffer for every source file of the layer.
    let mut buf = Vec::new();
    for e in entries {
        write_entry(&mut w, e, mtime, cas, &mut buf)?;
    }
    // End of archive: two zero blocks.
    w.write_all(&[0u8; 2 * BLOCK]).map_err(LayerError::Store)?;
    w.finish().map_err(LayerError::Store)
}

fn write_entry(
    w: &mut impl Write,
    e: &Entry,
    mtime: u64,
    cas: Option<&Cas>,
    buf: &mut Vec<u8>,
) -> Result<(), LayerError> {
    // A stored blob is opened first: its file's size goes into the header.
    let blob = match &e.data {
        EntryData::Blob(d) => Some(open_blob(cas, d)?),
        _ => None,
    };
    let (kind, size, link) = match &e.data {
        EntryData::File { size, .. } => (tar::EntryType::Regular, *size, None),
        EntryData::Blob(_) => (
            tar::EntryType::Regular,
            blob.as_ref().map_or(0, |(_, len)| *len),
            None,
        ),
        EntryData::Bytes(b) => (tar::EntryType::Regular, b.len() as u64, None),
        EntryData::Dir => (tar::EntryType::Directory, 0, None),
        EntryData::Symlink(t) => (tar::EntryType::Symlink, 0, Some(t.as_str())),
    };
    let name = match e.data {
        EntryData::Dir => format!("{}/", e.path),
        _ => e.path.clone(),
    };

    // PAX records, in a fixed (sorted) key order.
    let mut pax: Vec<(&str, String)> = Vec::new();
    if u64::from(e.gid) > MAX_OCTAL_8 {
        pax.push(("gid", e.gid.to_string()));
    }
    if let Some(t) = link.filter(|t| t.len() > 100) {
        pax.push(("linkpath", t.to_string()));
    }
    if name.len() > 100 {
        pax.push(("path", name.clone()));
    }
    if size > MAX_OCTAL_12 {
        pax.push(("size", size.to_string()));
    }
    if u64::from(e.uid) > MAX_OCTAL_8 {
        pax.push(("uid", e.uid.to_string()));
    }
    if !pax.is_empty() {
        let mut body = Vec::new();
        for (k, v) in &pax {
            body.extend_from_slice(&pax_record(k, v));
        }
        let h = header(
            PAX_HEADER_NAME.as_bytes(),
            tar::EntryType::XHeader,
            body.len() as u64,
            None,
            0o644,
            0,
            0,
            mtime,
        );
        w.write_all(h.as_bytes()).map_err(LayerError::Store)?;
        w.write_all(&body).map_err(LayerError::Store)?;
        pad(w, body.len() as u64)?;
    }

    let h = header(
        name.as_bytes(),
        kind,
        size,
        link.map(str::as_bytes),
        e.mode,
        e.uid.into(),
        e.gid.into(),
        mtime,
    );
    w.write_all(h.as_bytes()).map_err(LayerError::Store)?;
    match &e.data {
        EntryData::File {
            source,
            size,
            blake3,
        } => copy_source(w, source, *size, blake3, buf)?,
        EntryData::Bytes(b) => w.write_all(b).map_err(LayerError::Store)?,
        EntryData::Blob(d) => {
            if let Some((file, len)) = blob {
                copy_blob(w, file, len, d, buf)?;
            }
        }
        EntryData::Dir | EntryData::Symlink(_) => {}
    }
    pad(w, size)
}

/// Opens the stored blob `d` (a regular file, never through a link) and its size.
fn open_blob(cas: Option<&Cas>, d: &Digest) -> Result<(std::fs::File, u64), LayerError> {
    let path = || PathBuf::from(format!("the stored download {d}"));
    let cas = cas.ok_or_else(|| LayerError::Read {
        path: path(),
        source: io::Error::other("no store to read it from"),
    })?;
    cas.open_blob(d).map_err(|e| LayerError::Read {
        path: path(),
        source: e,
    })
}

/// Copies exactly `len` bytes of the stored blob `file`, hashing them: they
/// must hash to `d`.
fn copy_blob(
    w: &mut impl Write,
    file: std::fs::File,
    len: u64,
    d: &Digest,
    buf: &mut Vec<u8>,
) -> Result<(), LayerError> {
    let path = || PathBuf::from(format!("the stored download {d}"));
    buf.resize(READ_BUF, 0);
    let mut r = HashReader::new(file, Limit::Exactly(len)).sha256();
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(LayerError::Read {
                    path: path(),
                    source: e,
                });
            }
        };
        w.write_all(&buf[..n]).map_err(LayerError::Store)?;
    }
    let h = r.finish().map_err(|e| LayerError::Read {
        path: path(),
        source: e,
    })?;
    if h.sha256 != Some(*d) {
        return Err(LayerError::SourceChanged {
            path: path(),
            reason: "the store's copy is damaged (it does not hash to its digest): \
                     build again to fetch it anew"
                .into(),
        });
    }
    Ok(())
}

/// One ustar header with every field set explicitly. Values too long or too
/// large for their field are truncated (names) or base-256 encoded (numbers);
/// the caller has written a PAX header with the real value before it.
#[allow(clippy::too_many_arguments)]
fn header(
    name: &[u8],
    kind: tar::EntryType,
    size: u64,
    link: Option<&[u8]>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
) -> tar::Header {
    let mut h = tar::Header::new_ustar(); // magic "ustar\0", version "00"
    {
        let u = h.as_ustar_mut().expect("a ustar header");
        copy_truncated(&mut u.name, name);
        copy_truncated(&mut u.linkname, link.unwrap_or(b""));
        u.uname = [0; 32];
        u.gname = [0; 32];
        u.prefix = [0; 155];
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_device_major(0).expect("ustar has device fields");
    h.set_device_minor(0).expect("ustar has device fields");
    h.set_cksum();
    h
}

fn copy_truncated(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// A PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
pub(crate) fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

fn pad(w: &mut impl Write, size: u64) -> Result<(), LayerError> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        w.write_all(&[0u8; BLOCK][..BLOCK - rem])
            .map_err(LayerError::Store)?;
    }
    Ok(())
}

/// Copies exactly `size` bytes of a regular file, refusing symlinks, anything
/// but a regular file, a path that now leaves the workspace, and any change of
/// size before or during the copy; the bytes are hashed as they stream through
/// (in reads of [`READ_BUF`] bytes, into `buf`) and must have the blake3 `expect`.
fn copy_source(
    w: &mut impl Write,
    source: &SourceFile,
    size: u64,
    expect: &Key,
    buf: &mut Vec<u8>,
) -> Result<(), LayerError> {
    let changed = |reason: String| LayerError::SourceChanged {
        path: source.rel.clone(),
        reason,
    };
    // What the input module says of the file, as the reason it changed.
    let refused = |e: io::Error| match input::input_error(&e) {
        Some(InputError::Symlink) => changed("it is now a symbolic link".into()),
        Some(InputError::NotRegular(_)) => changed("it is no longer a regular file".into()),
        Some(InputError::Escapes) => {
            changed("it now resolves outside the workspace through a symbolic link".into())
        }
        Some(InputError::TooShort { got, expected }) => changed(format!(
            "it shrank while being read ({got} of {expected} bytes)"
        )),
        Some(InputError::TooLong { .. }) => changed("it grew while being read".into()),
        _ => LayerError::Read {
            path: source.rel.clone(),
            source: e,
        },
    };
    let o = source.root.open_nofollow(&source.rel).map_err(refused)?;
    if o.meta.len() != size {
        return Err(changed(format!(
            "its size is {} bytes, expected {size}",
            o.meta.len()
        )));
    }
    buf.resize(READ_BUF, 0);
    let mut r = HashReader::new(o.file, Limit::Exactly(size)).blake3();
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(refused(e)),
        };
        w.write_all(&buf[..n]).map_err(LayerError::Store)?;
    }
    if r.finish().map_err(refused)?.blake3 != Some(*expect) {
        return Err(changed(
            "its content is not what the layer's key was computed from \
             (it was rewritten after it was hashed)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `threads` threads for the compressors (0: one per core).
    fn pool_of(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }
    use std::io::Read;

    /// `entries` written as a layer in the default format of `compression`.
    fn write_default(
        entries: &[Entry],
        compression: Compression,
        mtime: u64,
        cas: &Cas,
    ) -> Result<LayerOutput, LayerError> {
        write_layer(entries, &LayerFormat::default_for(compression), mtime, cas)
    }

    fn e(path: &str, data: EntryData, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            data,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn file(path: &str, content: &str) -> Entry {
        e(path, EntryData::Bytes(content.as_bytes().to_vec()), 0o644)
    }

    /// A source file `rel` of a workspace whose root is `dir`.
    fn source(dir: &std::path::Path, rel: &str) -> SourceFile {
        SourceFile {
            root: Arc::new(Root::open(&dir.canonicalize().unwrap()).unwrap()),
            rel: rel.into(),
        }
    }

    fn cas() -> (tempfile::TempDir, Cas) {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(&dir.path().join("v1")).unwrap();
        (dir, cas)
    }

    fn decompress(cas: &Cas, out: &LayerOutput) -> Vec<u8> {
        let blob = cas.read(&out.digest).unwrap();
        let mut tar = Vec::new();
        if out.media_type == MEDIA_TYPE_GZIP {
            flate2::read::MultiGzDecoder::new(&blob[..])
                .read_to_end(&mut tar)
                .unwrap();
        } else {
            zstd::stream::read::Decoder::new(&blob[..])
                .unwrap()
                .read_to_end(&mut tar)
                .unwrap();
        }
        tar
    }

    fn fixture() -> Vec<Entry> {
        let mut suid = file("usr/bin/tool", "#!/bin/sh\n");
        suid.mode = 0o4755;
        let mut owned = e("var/lib/app", EntryData::Dir, 0o700);
        owned.uid = 10001;
        owned.gid = 10001;
        normalize(vec![
            file("etc/app/version", "1.2.3\n"),
            suid,
            owned,
            e(
                "app/current",
                EntryData::Symlink("/app/server".into()),
                0o777,
            ),
            file("app/server", "binary"),
        ])
        .unwrap()
    }

    /// A downloaded file (a CAS blob) goes into the tar as the blob's bytes,
    /// the same layer as inline bytes would give; a damaged blob fails the layer.
    #[test]
    fn blob_entries_stream_from_the_store_and_are_verified() {
        let (_d, cas) = cas();
        let content = b"#!/bin/sh\necho downloaded\n".repeat(1000);
        let (digest, _) = cas.put_bytes(&content).unwrap();
        let via_blob = write_default(
            &[e("usr/bin/t", EntryData::Blob(digest), 0o755)],
            Compression::Gzip,
            0,
            &cas,
        )
        .unwrap();
        let inline = write_default(
            &[e("usr/bin/t", EntryData::Bytes(content.clone()), 0o755)],
            Compression::Gzip,
            0,
            &cas,
        )
        .unwrap();
        assert_eq!(via_blob.digest, inline.digest);
        assert_eq!(via_blob.diff_id, inline.diff_id);

        // The stored copy rots: the layer is refused, not written from it.
        let path = cas.blob_path(&digest);
        std::fs::remove_file(&path).unwrap();
        let mut rotten = content.clone();
        rotten[10] ^= 1;
        std::fs::write(&path, &rotten).unwrap();
        let err = write_default(
            &[e("usr/bin/t", EntryData::Blob(digest), 0o755)],
            Compression::Gzip,
            0,
            &cas,
        )
        .unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        // A missing one too.
        std::fs::remove_file(&path).unwrap();
        assert!(
            write_default(
                &[e("usr/bin/t", EntryData::Blob(digest), 0o755)],
                Compression::Gzip,
                0,
                &cas
            )
            .is_err()
        );
    }

    #[test]
    fn golden_digests() {
        let (_d, cas) = cas();
        let entries = fixture();
        let gz = write_default(&entries, Compression::Gzip, 0, &cas).unwrap();
        let zs = write_default(&entries, Compression::Zstd, 0, &cas).unwrap();
        assert_eq!(gz.diff_id, zs.diff_id);
        assert_eq!(
            gz.diff_id.to_string(),
            "sha256:837b3ec9e6d51261ef1ad96b99c7436cfaa22edb6ae9f87180b2e19ae240f4c8"
        );
        assert_eq!(
            gz.digest.to_string(),
            "sha256:3ba45dde749311457ba5e2ca1b5b098ef0f91ac026775d3fd79d41428c607b90"
        );
        // Changed deliberately with the zstd format (`tar-pax-1+zstd/3` became
        // `tar-pax-1+zstd/3/frames-8MiB`: independent frames, each with its
        // content size); the identity is in the layer key, so no cache serves
        // the old bytes for the new format. The gzip digest did not change.
        assert_eq!(
            zs.digest.to_string(),
            "sha256:89e8a22482b55862ace05d692f5c13176874fe5abb79c491fe0249a2a9681e45"
        );
        assert_eq!(gz.media_type, MEDIA_TYPE_GZIP);
        assert_eq!(zs.media_type, MEDIA_TYPE_ZSTD);
        // gzip header: magic, deflate, no flags, mtime 0, XFL 0, OS 255.
        let blob = cas.read(&gz.digest).unwrap();
        assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        assert_eq!(gz.size, blob.len() as u64);
        assert_eq!(
            LayerFormat::default_for(Compression::Gzip).identity(),
            "tar-pax-1+gzip/libdeflate/6/members-1MiB"
        );
        assert_eq!(
            LayerFormat::default_for(Compression::Zstd).identity(),
            "tar-pax-1+zstd/3/frames-8MiB"
        );
        // A one-member layer is exactly what libdeflate's own gzip writer
        // makes at level 6 (same header, same trailer): an independent check.
        let tar = decompress(&cas, &gz);
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let mut own = vec![0u8; c.gzip_compress_bound(tar.len())];
        let n = c.gzip_compress(&tar, &mut own).unwrap();
        assert_eq!(blob, own[..n]);
    }

    /// Deterministic, semi-compressible bytes (words and random runs).
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            let r = rnd();
            if r % 8 == 0 {
                v.extend_from_slice(&r.to_le_bytes());
            } else {
                let word: &[u8] = [&b"layer "[..], b"tar ", b"digest\n", b"a "][(r % 4) as usize];
                v.extend_from_slice(word);
            }
        }
        v.truncate(len);
        v
    }

    /// Splits a zstd stream into its frames, checking that each one stands
    /// alone: decoded by itself, with its content size and checksum.
    fn zstd_frames(blob: &[u8]) -> Vec<Vec<u8>> {
        let mut rest = blob;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            let frame = &rest[..n];
            let size = zstd::zstd_safe::get_frame_content_size(frame)
                .unwrap()
                .expect("every frame has its content size");
            // Frame header descriptor: bit 2 is the checksum flag, bit 3 is
            // reserved, bits 0-1 the dictionary id size (none).
            assert_eq!(frame[4] & 0b111, 0b100, "checksum on, no dictionary id");
            let plain = zstd::bulk::decompress(frame, size as usize).unwrap();
            assert_eq!(plain.len() as u64, size);
            out.push(plain);
            rest = &rest[n..];
        }
        out
    }

    #[test]
    fn zstd_is_independent_eight_mib_frames() {
        let (_d, cas) = cas();
        let entries = normalize(vec![
            e(
                "a.bin",
                EntryData::Bytes(noise(2 * ZSTD_FRAME + 12345, 11)),
                0o644,
            ),
            e("b.txt", EntryData::Bytes(b"tail\n".to_vec()), 0o644),
        ])
        .unwrap();
        let fmt = LayerFormat::default_for(Compression::Zstd);
        let out = write_layer(&entries, &fmt, 0, &cas).unwrap();
        let tar = decompress(&cas, &out);
        let blob = cas.read(&out.digest).unwrap();
        let fs = zstd_frames(&blob);
        assert_eq!(fs.len(), tar.len().div_ceil(ZSTD_FRAME));
        assert!(fs.len() >= 3);
        for (i, f) in fs.iter().enumerate() {
            let start = i * ZSTD_FRAME;
            assert!(
                f[..] == tar[start..tar.len().min(start + ZSTD_FRAME)],
                "{i}"
            );
        }
        // The format as documented, rebuilt from its definition: each 8 MiB of
        // the tar compressed in one call by a fresh context with the frame
        // parameters set by hand, the frames concatenated.
        use zstd::zstd_safe::CParameter;
        let mut own = Vec::new();
        for chunk in tar.chunks(8 << 20) {
            let mut c = zstd::bulk::Compressor::new(3).unwrap();
            c.set_parameter(CParameter::ChecksumFlag(true)).unwrap();
            c.set_parameter(CParameter::ContentSizeFlag(true)).unwrap();
            c.set_parameter(CParameter::DictIdFlag(false)).unwrap();
            c.set_parameter(CParameter::WindowLog(21)).unwrap();
            own.extend_from_slice(&c.compress(chunk).unwrap());
        }
        assert!(own == blob, "the blob is not the documented frames");
        // The reference decoder reads the frames as one stream.
        if let Ok(mut child) = std::process::Command::new("zstd")
            .args(["-dc", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            let mut stdin = child.stdin.take().unwrap();
            let feed = blob.clone();
            let t = std::thread::spawn(move || stdin.write_all(&feed).unwrap());
            let got = child.wait_with_output().unwrap();
            t.join().unwrap();
            assert!(got.status.success(), "zstd -dc failed");
            assert!(got.stdout == tar, "zstd -dc gives another tar");
        }
    }

    #[test]
    fn zstd_same_bytes_whatever_the_threads_and_budget() {
        let data = noise(3 * ZSTD_FRAME + 4321, 12);
        let mut blobs = Vec::new();
        for (threads, buffers) in [(1, 1), (1, 2), (4, 8), (3, 2)] {
            let pool = pool_of(threads);
            let budget = Budget::new(buffers);
            let mut z = ZstdFrames::with_pool(Vec::new(), 3, &pool, &budget);
            // Uneven writes: the cut points are byte offsets, not writes.
            let mut rest = &data[..];
            for n in [1, 7, 4093, ZSTD_FRAME + 3, 65536].into_iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let k = n.min(rest.len());
                z.write_all(&rest[..k]).unwrap();
                rest = &rest[k..];
            }
            blobs.push(z.finish().unwrap());
            assert_eq!(budget.free(), buffers, "every permit back");
        }
        assert!(blobs.windows(2).all(|w| w[0] == w[1]), "bytes differ");
        let fs = zstd_frames(&blobs[0]);
        assert_eq!(fs.concat(), data);
        assert_eq!(fs.len(), 4);
    }

    /// Two layers written at once on one budget of two buffers (one each at
    /// least, none to spare): both finish, with the bytes they have alone.
    #[test]
    fn zstd_layers_sharing_a_small_budget_both_finish() {
        let pool = pool_of(2);
        let budget = Budget::new(2);
        let a = noise(3 * ZSTD_FRAME + 1, 13);
        let b = noise(2 * ZSTD_FRAME + 2, 14);
        let write = |data: &[u8]| {
            let mut z = ZstdFrames::with_pool(Vec::new(), 3, &pool, &budget);
            for c in data.chunks(CHUNK) {
                z.write_all(c).unwrap();
            }
            z.finish().unwrap()
        };
        let (za, zb) = std::thread::scope(|s| {
            let ha = s.spawn(|| write(&a));
            let hb = s.spawn(|| write(&b));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        assert_eq!(zstd_frames(&za).concat(), a);
        assert_eq!(zstd_frames(&zb).concat(), b);
        assert!(za == write(&a) && zb == write(&b));
        assert_eq!(budget.free(), 2);
    }

    #[test]
    fn zstd_empty_stream_is_one_valid_frame() {
        let pool = pool_of(1);
        let budget = Budget::new(1);
        let blob = ZstdFrames::with_pool(Vec::new(), 3, &pool, &budget)
            .finish()
            .unwrap();
        let fs = zstd_frames(&blob);
        assert_eq!(fs.len(), 1);
        assert!(fs[0].is_empty());
    }

    /// Decodes a multi-member gzip stream member by member, checking each
    /// member's header; returns the members' contents.
    fn members(blob: &[u8]) -> Vec<Vec<u8>> {
        let mut rest = blob;
        let mut out = Vec::new();
        while !rest.is_empty() {
            assert_eq!(rest[..10], GZIP_HEADER, "member {}", out.len());
            let mut d = flate2::bufread::GzDecoder::new(rest);
            let mut m = Vec::new();
            d.read_to_end(&mut m).unwrap();
            rest = d.into_inner();
            out.push(m);
        }
        out
    }

    /// `gzip -dc` of `blob`, or None when GNU gzip is not installed.
    fn gnu_gunzip(blob: &[u8]) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob.gz");
        std::fs::write(&path, blob).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .ok()?;
        assert!(out.status.success(), "gzip -dc failed: {out:?}");
        Some(out.stdout)
    }

    #[test]
    fn gzip_is_independent_one_mib_members() {
        let (_d, cas) = cas();
        let entries = normalize(vec![
            e(
                "big.bin",
                EntryData::Bytes(noise(3 * GZIP_MEMBER + 12345, 1)),
                0o644,
            ),
            file("small", "x"),
        ])
        .unwrap();
        let fmt = LayerFormat::default_for(Compression::Gzip);
        let out = write_layer(&entries, &fmt, 0, &cas).unwrap();
        let blob = cas.read(&out.digest).unwrap();
        let tar = decompress(&cas, &out); // MultiGzDecoder
        assert_eq!(out.diff_id.0, Digest::of_bytes(&tar));
        let ms = members(&blob);
        assert_eq!(ms.len(), tar.len().div_ceil(GZIP_MEMBER));
        for (i, m) in ms.iter().enumerate() {
            let start = i * GZIP_MEMBER;
            assert_eq!(m[..], tar[start..tar.len().min(start + GZIP_MEMBER)], "{i}");
        }
        if let Some(gnu) = gnu_gunzip(&blob) {
            assert!(gnu == tar, "gzip -dc gives another tar");
        }
    }

    #[test]
    fn gzip_same_bytes_whatever_the_threads() {
        let (_d, cas) = cas();
        // Enough members that a 1-thread window (2) and a 4-thread one (8)
        // cut the stream into different batches.
        let entries = normalize(vec![
            e(
                "a.bin",
                EntryData::Bytes(noise(5 * GZIP_MEMBER + 777, 2)),
                0o644,
            ),
            e("b.bin", EntryData::Bytes(noise(4 * GZIP_MEMBER, 3)), 0o644),
        ])
        .unwrap();
        let (_, tar) = write_tar(&entries, 0, None, Vec::new()).unwrap();
        let build = |threads: usize| {
            let pool = pool_of(threads);
            let mut gz = GzipMembers::with_pool(Vec::new(), 6, &pool);
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        };
        let one = build(1);
        let four = build(4);
        assert!(one == four, "the thread count changed the gzip bytes");
        // and write_layer (on the shared compression pool) stores exactly that
        let fmt = LayerFormat::default_for(Compression::Gzip);
        let out = write_layer(&entries, &fmt, 0, &cas).unwrap();
        assert_eq!(out.digest, Digest::of_bytes(&one));
        // called from inside another pool (as the scheduler does), the same
        let other = pool_of(3);
        assert_eq!(
            other.install(|| write_layer(&entries, &fmt, 0, &cas).unwrap()),
            out
        );
    }

    #[test]
    fn gzip_members_depend_only_on_the_byte_stream() {
        let data = noise(2 * GZIP_MEMBER + 4099, 4);
        let mut whole = GzipMembers::new(Vec::new(), 6);
        whole.write_all(&data).unwrap();
        let whole = whole.finish().unwrap();
        let mut pieces = GzipMembers::new(Vec::new(), 6);
        let mut rest = &data[..];
        for n in [1, 7, 4093, GZIP_MEMBER + 3, 65536].into_iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = n.min(rest.len());
            pieces.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        assert!(pieces.finish().unwrap() == whole);
        assert_eq!(members(&whole).concat(), data);
    }

    #[test]
    fn gzip_empty_stream_is_one_valid_member() {
        let blob = GzipMembers::new(Vec::new(), 6).finish().unwrap();
        assert_eq!(blob[..10], GZIP_HEADER);
        assert_eq!(blob[blob.len() - 8..], [0; 8]); // CRC-32 and ISIZE of nothing
        assert_eq!(members(&blob), vec![Vec::<u8>::new()]);
        if let Some(gnu) = gnu_gunzip(&blob) {
            assert!(gnu.is_empty());
        }
        // A layer without entries is still a tar (the end marker).
        let (_d, cas) = cas();
        let fmt = LayerFormat::default_for(Compression::Gzip);
        let out = write_layer(&[], &fmt, 0, &cas).unwrap();
        assert_eq!(decompress(&cas, &out), vec![0u8; 2 * BLOCK]);
    }

    #[test]
    fn diff_id_is_sha256_of_decompressed_blob() {
        let (_d, cas) = cas();
        for c in [Compression::Gzip, Compression::Zstd] {
            let out = write_default(&fixture(), c, 7, &cas).unwrap();
            assert_eq!(out.diff_id.0, Digest::of_bytes(&decompress(&cas, &out)));
        }
    }

    #[test]
    fn header_fields() {
        let (_d, cas) = cas();
        let out = write_default(&fixture(), Compression::Gzip, 1_700_000_000, &cas).unwrap();
        let tar = decompress(&cas, &out);
        let mut ar = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for ent in ar.entries().unwrap() {
            let mut ent = ent.unwrap();
            let h = ent.header().clone();
            let path = String::from_utf8(ent.path_bytes().to_vec()).unwrap();
            assert_eq!(h.mtime().unwrap(), 1_700_000_000, "{path}");
            assert_eq!(h.username_bytes(), Some(&b""[..]), "{path}");
            assert_eq!(h.groupname_bytes(), Some(&b""[..]), "{path}");
            assert!(h.as_ustar().is_some(), "{path}");
            assert_eq!(h.device_major().unwrap(), Some(0));
            let mut body = Vec::new();
            ent.read_to_end(&mut body).unwrap();
            let link = h.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((
                path,
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.size().unwrap(),
                link,
                body,
            ));
        }
        use tar::EntryType::{Directory as D, Regular as R, Symlink as S};
        type Row<'a> = (
            &'a str,
            tar::EntryType,
            u32,
            u64,
            u64,
            u64,
            Option<&'a str>,
            &'a [u8],
        );
        // Only the declared paths: no entry for `app/`, `etc/`, `usr/bin/`...
        let expect: Vec<Row> = vec![
            ("app/current", S, 0o777, 0, 0, 0, Some("/app/server"), b""),
            ("app/server", R, 0o644, 0, 0, 6, None, b"binary"),
            ("etc/app/version", R, 0o644, 0, 0, 6, None, b"1.2.3\n"),
            ("usr/bin/tool", R, 0o4755, 0, 0, 10, None, b"#!/bin/sh\n"),
            ("var/lib/app/", D, 0o700, 10001, 10001, 0, None, b""),
        ];
        assert_eq!(seen.len(), expect.len());
        for (s, x) in seen.iter().zip(&expect) {
            assert_eq!(s.0, x.0);
            assert_eq!(s.1, x.1, "{}", x.0);
            assert_eq!((s.2, s.3, s.4, s.5), (x.2, x.3, x.4, x.5), "{}", x.0);
            assert_eq!(s.6.as_deref(), x.6, "{}", x.0);
            assert_eq!(s.7, x.7, "{}", x.0);
        }
    }

    #[test]
    fn sorting_and_duplicates() {
        let n = normalize(vec![
            file("b", "x"),
            file("a-b", "x"),
            file("a/z", "x"),
            file("a/b", "x"),
            file("a/b", "x"), // exact duplicate: dropped
            e("a", EntryData::Dir, 0o700),
        ])
        .unwrap();
        let paths: Vec<&str> = n.iter().map(|e| e.path.as_str()).collect();
        // Bytewise: a declared parent comes before its children.
        assert_eq!(paths, ["a", "a-b", "a/b", "a/z", "b"]);
        assert_eq!(n[0].data, EntryData::Dir);
        assert_eq!(n[0].mode, 0o700);
    }

    /// A layer holding `/tmp/x`, `/home/app/.profile` and
    /// `/lib/x86_64-linux-gnu/libfoo.so.1` must not carry entries for `tmp`,
    /// `home`, `home/app`, `lib` or `lib/x86_64-linux-gnu`: each would replace
    /// the base's (a sticky `/tmp`, an app-owned home, the merged-/usr
    /// symlink `/lib`) when the layers are unpacked.
    #[test]
    fn normalize_adds_no_implicit_parents() {
        let n = normalize(vec![
            file("tmp/x", "x"),
            file("home/app/.profile", "p"),
            file("lib/x86_64-linux-gnu/libfoo.so.1", "elf"),
        ])
        .unwrap();
        let paths: Vec<&str> = n.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "home/app/.profile",
                "lib/x86_64-linux-gnu/libfoo.so.1",
                "tmp/x"
            ]
        );
        // and the tar holds exactly those three entries, listed as written
        let (_d, cas) = cas();
        let out = write_default(&n, Compression::Gzip, 0, &cas).unwrap();
        let tar = decompress(&cas, &out);
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|en| String::from_utf8(en.unwrap().path_bytes().to_vec()).unwrap())
            .collect();
        assert_eq!(names, paths);
        let listed: Vec<&str> = out
            .listing
            .entries
            .iter()
            .map(|l| l.path.as_str())
            .collect();
        assert_eq!(listed, paths);
    }

    /// The listing is one entry per tar entry, in tar order, with the type,
    /// mode, owner and link target the tar holds (read back with the `tar` crate).
    #[test]
    fn listing_matches_the_tar() {
        let (_d, cas) = cas();
        let long = format!("{}/{}", "d".repeat(60), "f".repeat(120));
        let mut entries = fixture();
        entries.push(e(&long, EntryData::Bytes(b"long".to_vec()), 0o600));
        let entries = normalize(entries).unwrap();
        let out = write_default(&entries, Compression::Zstd, 0, &cas).unwrap();
        let tar = decompress(&cas, &out);
        let mut from_tar = Vec::new();
        for en in tar::Archive::new(&tar[..]).entries().unwrap() {
            let en = en.unwrap();
            let h = en.header();
            let kind = match h.entry_type() {
                tar::EntryType::Directory => PathKind::Dir,
                tar::EntryType::Regular => PathKind::File,
                tar::EntryType::Symlink => PathKind::Symlink,
                other => panic!("unexpected {other:?}"),
            };
            let path = String::from_utf8(en.path_bytes().to_vec()).unwrap();
            from_tar.push(Listed {
                path: path.trim_end_matches('/').to_string(),
                kind,
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap() as u32,
                gid: h.gid().unwrap() as u32,
                target: h
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            });
        }
        assert_eq!(from_tar.len(), 6);
        assert_eq!(out.listing.entries, from_tar);
        // The listing of `write_layer` is a function of the entries alone.
        let again = write_default(&entries, Compression::Gzip, 9, &cas).unwrap();
        assert_eq!(again.listing, out.listing);
    }

    #[test]
    fn conflicts_and_bad_paths() {
        let err = normalize(vec![file("a", "x"), file("a", "y")]).unwrap_err();
        assert!(
            matches!(err, LayerError::Conflict { ref path } if path == "a"),
            "{err}"
        );
        let err = normalize(vec![
            e("d", EntryData::Dir, 0o755),
            e("d", EntryData::Dir, 0o700),
        ])
        .unwrap_err();
        assert!(matches!(err, LayerError::Conflict { .. }));
        let err = normalize(vec![file("a/b/c", "x"), file("a/b", "y")]).unwrap_err();
        assert!(
            matches!(err, LayerError::NotADirectory { ref parent, ref child } if parent == "a/b" && child == "a/b/c"),
            "{err}"
        );
        let err = normalize(vec![
            e("l", EntryData::Symlink("/x".into()), 0o777),
            file("l/f", "x"),
        ])
        .unwrap_err();
        assert!(matches!(err, LayerError::NotADirectory { .. }));
        for bad in ["", "/abs", "a//b", "a/", "a/../b", "./a"] {
            assert!(
                matches!(
                    normalize(vec![file(bad, "x")]),
                    Err(LayerError::InvalidPath { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            normalize(vec![e("a", EntryData::Dir, 0o17777)]),
            Err(LayerError::InvalidMode { .. })
        ));
    }

    #[test]
    fn long_paths_and_links_use_pax() {
        let (_d, cas) = cas();
        let long_dir = "d".repeat(60);
        let long = format!("{long_dir}/{}", "f".repeat(120));
        let target = format!("/{}", "t".repeat(150));
        let mut big = file("big-ids", "x");
        big.uid = 3_000_000;
        big.gid = 4_000_000;
        let entries = normalize(vec![
            file(&long, "long"),
            e("link", EntryData::Symlink(target.clone()), 0o777),
            big,
        ])
        .unwrap();
        let out = write_default(&entries, Compression::Zstd, 0, &cas).unwrap();
        let tar = decompress(&cas, &out);
        let mut ar = tar::Archive::new(&tar[..]);
        let got: Vec<(String, Option<String>, u64, u64)> = ar
            .entries()
            .unwrap()
            .map(|en| {
                let en = en.unwrap();
                (
                    en.path().unwrap().display().to_string(),
                    en.link_name().unwrap().map(|l| l.display().to_string()),
                    en.header().uid().unwrap(),
                    en.header().gid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("big-ids".to_string(), None, 3_000_000, 4_000_000),
                (long.clone(), None, 0, 0),
                ("link".to_string(), Some(target), 0, 0),
            ]
        );
        // PAX, never GNU long names.
        assert!(!tar.windows(13).any(|w| w == b"././@LongLink"));
        assert!(tar.windows(14).any(|w| w == PAX_HEADER_NAME.as_bytes()));
        assert_eq!(pax_record("path", "abc"), b"12 path=abc\n");
        assert_eq!(pax_record("a", "bcde"), b"9 a=bcde\n");
        // 9 bytes + 1 digit would be 10, which needs 2 digits: 11.
        assert_eq!(pax_record("a", "bcdef"), b"11 a=bcdef\n");
    }

    #[test]
    fn file_sources_are_streamed_and_checked() {
        let (dir, cas) = cas();
        let src = dir.path().join("src.bin");
        let content: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &content).unwrap();
        let blake3 = Key::of_bytes(&content);
        let entry = |size| {
            normalize(vec![e(
                "data.bin",
                EntryData::File {
                    source: source(dir.path(), "src.bin"),
                    size,
                    blake3,
                },
                0o644,
            )])
            .unwrap()
        };
        // Same blob as inline content, whatever the read pattern.
        for c in [Compression::Zstd, Compression::Gzip] {
            let fmt = LayerFormat::default_for(c);
            let from_file = write_layer(&entry(content.len() as u64), &fmt, 0, &cas).unwrap();
            let inline = normalize(vec![e(
                "data.bin",
                EntryData::Bytes(content.clone()),
                0o644,
            )])
            .unwrap();
            assert_eq!(write_layer(&inline, &fmt, 0, &cas).unwrap(), from_file);
        }
        let fmt = LayerFormat::default_for(Compression::Gzip);
        let out = write_layer(&entry(content.len() as u64), &fmt, 0, &cas).unwrap();
        let tar = decompress(&cas, &out);
        let mut ar = tar::Archive::new(&tar[..]);
        let mut body = Vec::new();
        ar.entries()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(body, content);
        // Same bytes as inline content.
        let inline = normalize(vec![e(
            "data.bin",
            EntryData::Bytes(content.clone()),
            0o644,
        )])
        .unwrap();
        assert_eq!(write_layer(&inline, &fmt, 0, &cas).unwrap(), out);

        let err = write_layer(&entry(5), &fmt, 0, &cas).unwrap_err();
        assert!(matches!(err, LayerError::SourceChanged { .. }), "{err}");
        assert!(err.to_string().contains("src.bin"), "{err}");

        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&src, &link).unwrap();
        let entries = vec![e(
            "l",
            EntryData::File {
                source: source(dir.path(), "link.bin"),
                size: content.len() as u64,
                blake3,
            },
            0o644,
        )];
        let err = write_layer(&entries, &fmt, 0, &cas).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let entries = vec![e(
            "m",
            EntryData::File {
                source: source(dir.path(), "missing"),
                size: 1,
                blake3,
            },
            0o644,
        )];
        let err = write_layer(&entries, &fmt, 0, &cas).unwrap_err();
        assert!(matches!(err, LayerError::Read { .. }), "{err}");

        // Other bytes of the same size than the key was computed from (the
        // file rewritten between keying and writing): refused.
        let blobs = || {
            walkdir::WalkDir::new(dir.path().join("v1"))
                .into_iter()
                .filter(|e| e.as_ref().unwrap().file_type().is_file())
                .count()
        };
        let before = blobs();
        let mut other = content.clone();
        other[500_000] ^= 1;
        std::fs::write(&src, &other).unwrap();
        for c in [Compression::Zstd, Compression::Gzip] {
            let fmt = LayerFormat::default_for(c);
            let err = write_layer(&entry(content.len() as u64), &fmt, 0, &cas).unwrap_err();
            assert!(matches!(err, LayerError::SourceChanged { .. }), "{err}");
            assert!(
                err.to_string().contains("src.bin")
                    && err
                        .to_string()
                        .contains("not what the layer's key was computed from"),
                "{err}"
            );
        }
        assert_eq!(blobs(), before, "a refused layer stored a blob");
        // Failed layers leave no temp files behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("v1/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    /// User + system CPU seconds of this process or of its waited-for children.
    fn cpu_secs(who: libc::c_int) -> f64 {
        // SAFETY: getrusage only writes the struct it is given.
        let r = unsafe {
            let mut r: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(who, &mut r), 0);
            r
        };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    }

    /// Throughput of `write_layer` on ~200 MB of semi-compressible data. On a
    /// busy machine wall-clock MB/s says little; MB per CPU-second is printed too.
    /// `cargo test --release --lib layer::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput() {
        let (dir, cas) = cas();
        const WORDS: &[&str] = &[
            "layer",
            "image",
            "the",
            "of",
            "container",
            "digest",
            "build",
            "cache",
            "and",
            "monorepo",
            "a",
            "deterministic",
            "tar",
            "compression",
            "to",
            "manifest",
            "config",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut entries = Vec::new();
        let mut total = 0u64;
        for f in 0..20 {
            let mut data = Vec::with_capacity(10 << 20);
            while data.len() < 10 << 20 {
                if rnd() % 4 == 0 {
                    for _ in 0..(16 * 1024 / 8) {
                        data.extend_from_slice(&rnd().to_le_bytes());
                    }
                } else {
                    let start = data.len();
                    while data.len() - start < 48 * 1024 {
                        data.extend_from_slice(
                            WORDS[(rnd() % WORDS.len() as u64) as usize].as_bytes(),
                        );
                        data.push(if rnd() % 12 == 0 { b'\n' } else { b' ' });
                    }
                }
            }
            let src = dir.path().join(format!("f{f}"));
            std::fs::write(&src, &data).unwrap();
            total += data.len() as u64;
            entries.push(e(
                &format!("data/f{f}"),
                EntryData::File {
                    source: source(dir.path(), &format!("f{f}")),
                    size: data.len() as u64,
                    blake3: Key::of_bytes(&data),
                },
                0o644,
            ));
        }
        let entries = normalize(entries).unwrap();
        // The bare compressors on the same bytes, in memory, for comparison.
        let data = std::fs::read(dir.path().join("f0")).unwrap();
        let t = std::time::Instant::now();
        let mut gz = flate2::write::GzEncoder::new(io::sink(), flate2::Compression::new(6));
        gz.write_all(&data).unwrap();
        gz.finish().unwrap();
        let mb = data.len() as f64 / 1e6;
        println!("bare gzip-6: {:.1} MB/s", mb / t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        zstd::stream::copy_encode(&data[..], io::sink(), 3).unwrap();
        println!("bare zstd-3: {:.1} MB/s", mb / t.elapsed().as_secs_f64());
        let mut sizes = BTreeMap::new();
        for (c, threads) in [
            (Compression::Gzip, 1),
            (Compression::Gzip, 0),
            (Compression::Zstd, 0),
        ] {
            let fmt = LayerFormat::default_for(c);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads) // 0: one per core
                .build()
                .unwrap();
            let cpu = cpu_secs(libc::RUSAGE_SELF);
            let t = std::time::Instant::now();
            let out = pool.install(|| write_layer(&entries, &fmt, 0, &cas).unwrap());
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_secs(libc::RUSAGE_SELF) - cpu;
            println!(
                "{} ({} threads): {:.0} MB in {:.2} s = {:.1} MB/s, {:.1} MB per CPU-second (ratio {:.3})",
                fmt.identity(),
                pool.current_num_threads(),
                total as f64 / 1e6,
                secs,
                total as f64 / 1e6 / secs,
                total as f64 / 1e6 / cpu,
                out.size as f64 / total as f64
            );
            sizes.insert(fmt.media_type(), out.size);
        }
        // The CLIs on the same tar, from a file, for comparison: GNU gzip, and
        // zstd single-threaded and on every core (what `tar | zstd -T0` does).
        let tar_path = dir.path().join("layer.tar");
        write_tar(&entries, 0, None, std::fs::File::create(&tar_path).unwrap()).unwrap();
        let out_path = dir.path().join("layer.tar.out");
        for (tool, args, media_type) in [
            ("gzip", &["-6"][..], MEDIA_TYPE_GZIP),
            ("zstd", &["-3", "-q"][..], MEDIA_TYPE_ZSTD),
            ("zstd", &["-3", "-q", "-T0"][..], MEDIA_TYPE_ZSTD),
        ] {
            let name = format!("{tool} {}", args.join(" "));
            let cpu = cpu_secs(libc::RUSAGE_CHILDREN);
            let t = std::time::Instant::now();
            let status = std::process::Command::new(tool)
                .args(args)
                .arg("-c")
                .arg(&tar_path)
                .stdout(std::fs::File::create(&out_path).unwrap())
                .status();
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_secs(libc::RUSAGE_CHILDREN) - cpu;
            match status {
                Ok(s) if s.success() => {
                    let size = std::fs::metadata(&out_path).unwrap().len();
                    println!(
                        "{name}: {:.0} MB in {:.2} s = {:.1} MB/s, {:.1} MB per CPU-second (ratio {:.3}); imgc's blob is {:.2}% larger",
                        total as f64 / 1e6,
                        secs,
                        total as f64 / 1e6 / secs,
                        total as f64 / 1e6 / cpu,
                        size as f64 / total as f64,
                        (sizes[media_type] as f64 / size as f64 - 1.0) * 100.0
                    );
                }
                other => println!("{name} not measured: {other:?}"),
            }
        }
    }
}
