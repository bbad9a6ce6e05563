//! The content-addressed blob store: the only writer of blobs.
//!
//! Every byte sequence that becomes an OCI blob (a compressed layer, a config, a
//! manifest, an imported blob) is stored here once, under the sha256 of its
//! content: `<cache>/v1/cas/sha256/ab/<hex>` (the first two hex digits fan the
//! files out over 256 directories). Because the address is the OCI digest, the
//! store is directly a source of OCI blobs: image layouts hard-link from it.
//!
//! # How a blob is written
//!
//! [`Cas::writer`] opens a uniquely named temp file (the `tempfile` crate: random
//! name, `O_EXCL`, so unique across threads and processes) in the store's `tmp`
//! directory, which lives on the same filesystem as the blobs. The
//! [`BlobWriter`] hashes everything written through it. [`BlobWriter::commit`]
//! then flushes, fsyncs, makes the file read-only (`0444`), and publishes it
//! under its final name:
//!
//! - **nothing there yet**: a no-clobber rename (`renameat2(RENAME_NOREPLACE)` or
//!   link + unlink), so of two writers racing on the same content the first wins
//!   and the second finds an existing blob (next case);
//! - **a blob already there** is kept only if it is *intact*: a regular file of
//!   the right size whose content hashes to its name; its mtime is then set to
//!   now, as if just published (garbage collection spares young blobs, and the
//!   caller is about to record something naming it). Keeping it unchecked would
//!   let a damaged blob (a truncated write from another tool, a file edited in
//!   place through a layout's hard link) outlive every rebuild and be linked into
//!   new layouts;
//! - **a damaged blob there** (or anything that is not a regular file) is
//!   replaced atomically: the temp file is renamed over it. Readers see the old
//!   file or the new one, never a mix; concurrent writers all rename good copies.
//!   The replaced digest is noted (see [`Cas::take_repaired`]) so the caller can
//!   distrust whatever remembered the old file, e.g. layouts hard-linking it.
//!
//! Why check and replace, rather than always rename over the existing blob?
//! Image layouts hard-link store blobs: replacing an intact blob by an equal copy
//! would give it a new inode, so every layout linking the old one would no longer
//! share its file with the store (twice the disk, and a rewrite of each layout
//! the next time it is checked). Replacing only damaged blobs keeps the links of
//! good ones, and a damaged one must not be shared anyway. The price is one
//! re-hash of the existing blob when an action produces a blob the store already
//! holds (an early-cutoff rebuild, a re-import), which costs less than producing
//! it did.
//!
//! The containing directory is fsynced so the name survives a crash. A process
//! killed at any moment leaves at most a temp file in `tmp/`, never a partial blob
//! under a final name. Stale temp files are garbage for a later sweep; this module
//! never deletes files it did not create, because another process may be writing
//! them right now.
//!
//! # What it deliberately does not do
//!
//! - No bookkeeping (sizes, last use, reference counts): that is SQLite's job in
//!   [`crate::cache`], and SQLite must not live on network filesystems. The store
//!   is plain immutable files, so the same code serves a **remote directory
//!   cache**: [`Cas::open_at`] takes any blob and temp directory, and
//!   [`Cas::open_at_flat`] the flat `cas/sha256/<hex>` layout of DESIGN.md.
//! - No trust in what is on disk: [`Cas::contains`] is a cheap `stat` for the
//!   local fast path, but [`Cas::read`] and [`Cas::verify`] re-hash, and a
//!   mismatch is an error of kind [`io::ErrorKind::InvalidData`]. A caller that
//!   finds a corrupt blob rebuilds it: publishing the rebuilt blob replaces the
//!   damaged file (no need to remove it first, which could race with another
//!   process that has just published a good copy).
//! - No following of links: blobs are opened with `O_NOFOLLOW | O_NONBLOCK`, and
//!   only regular files are read, so a symlink or FIFO planted under a blob's name
//!   is treated as damage, never read through.
//! - No compression, no knowledge of media types: a blob is bytes.

use crate::hash::{Digest, Sha256};
use crate::input::{Algos, Limit};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Size of the read and write buffers used when streaming blobs.
const BUF_SIZE: usize = 256 * 1024;

/// A content-addressed store of sha256-named, immutable blobs.
#[derive(Debug, Clone)]
pub struct Cas {
    blobs: PathBuf,
    tmp: PathBuf,
    /// `ab/<hex>` (local store) or `<hex>` (flat remote layout).
    fanout: bool,
    /// Digests whose damaged file this process replaced (shared by clones).
    repaired: Arc<Mutex<BTreeSet<Digest>>>,
}

/// What is under a blob's final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Missing,
    /// A regular file of the right size that hashes to its name.
    Intact,
    /// Anything else: wrong content or size, a symlink, a FIFO, a directory.
    Damaged,
}

impl Cas {
    /// Opens (creating if needed) the local store under a versioned cache root
    /// (`<cache>/v1`): blobs in `cas/sha256/ab/<hex>`, temp files in `tmp/`.
    pub fn open(cache_root_v1: &Path) -> io::Result<Cas> {
        Cas::open_at(
            &cache_root_v1.join("cas").join("sha256"),
            &cache_root_v1.join("tmp"),
        )
    }

    /// Opens a store with blobs in `blobs_dir/ab/<hex>` and temp files in
    /// `tmp_dir`, which must be on the same filesystem (renames publish blobs).
    pub fn open_at(blobs_dir: &Path, tmp_dir: &Path) -> io::Result<Cas> {
        Cas::open_with(blobs_dir, tmp_dir, true)
    }

    /// Like [`Cas::open_at`] but with blobs directly in `blobs_dir/<hex>` (the
    /// remote directory cache layout).
    pub fn open_at_flat(blobs_dir: &Path, tmp_dir: &Path) -> io::Result<Cas> {
        Cas::open_with(blobs_dir, tmp_dir, false)
    }

    /// A flat store (as [`Cas::open_at_flat`]) that creates nothing: for reading
    /// a remote directory that may not exist (writes fail until it does).
    pub fn flat_view(blobs_dir: &Path, tmp_dir: &Path) -> Cas {
        Cas {
            blobs: blobs_dir.to_path_buf(),
            tmp: tmp_dir.to_path_buf(),
            fanout: false,
            repaired: Arc::default(),
        }
    }

    fn open_with(blobs_dir: &Path, tmp_dir: &Path, fanout: bool) -> io::Result<Cas> {
        fs::create_dir_all(blobs_dir).map_err(|e| with_path(e, "create", blobs_dir))?;
        fs::create_dir_all(tmp_dir).map_err(|e| with_path(e, "create", tmp_dir))?;
        Ok(Cas {
            blobs: blobs_dir.to_path_buf(),
            tmp: tmp_dir.to_path_buf(),
            fanout,
            repaired: Arc::default(),
        })
    }

    /// Where the blob with digest `d` lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        if self.fanout {
            self.blobs.join(&hex[..2]).join(hex)
        } else {
            self.blobs.join(hex)
        }
    }

    /// How many blobs the store holds and their total size in bytes.
    pub fn usage(&self) -> io::Result<(u64, u64)> {
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in walkdir::WalkDir::new(&self.blobs) {
            let entry = entry.map_err(io::Error::other)?;
            if entry.file_type().is_file() {
                count += 1;
                bytes += entry.metadata().map_err(io::Error::other)?.len();
            }
        }
        Ok((count, bytes))
    }

    /// Whether a blob is present (a `stat`, no hashing).
    pub fn contains(&self, d: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(d)).is_ok_and(|m| m.is_file())
    }

    /// Re-hashes a stored blob. `Ok(false)` if it is missing, has the wrong size,
    /// is not a regular file, or does not hash to `d`; `Err` only for other IO
    /// errors.
    pub fn verify(&self, d: &Digest, expected_size: Option<u64>) -> io::Result<bool> {
        Ok(self.existing(d, expected_size)? == Existing::Intact)
    }

    /// Checks what is under the name of `d` (hashing it if it is a regular file
    /// of the expected size). Never follows a symlink, never opens a FIFO.
    fn existing(&self, d: &Digest, expected_size: Option<u64>) -> io::Result<Existing> {
        let path = self.blob_path(d);
        let mut file = match open_regular(&path) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Existing::Damaged),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Missing),
            Err(e) => return Err(with_path(e, "open", &path)),
        };
        let len = file
            .metadata()
            .map_err(|e| with_path(e, "stat", &path))?
            .len();
        if expected_size.is_some_and(|s| s != len) {
            return Ok(Existing::Damaged);
        }
        let (digest, size) = hash_reader(&mut file).map_err(|e| with_path(e, "read", &path))?;
        Ok(if digest == *d && size == len {
            Existing::Intact
        } else {
            Existing::Damaged
        })
    }

    /// The digests whose damaged stored file this store (or a clone of it)
    /// replaced since the last call. Anything that remembered the old file (a
    /// layout hard-linking it, a record of its verification) must not be
    /// trusted any more.
    pub fn take_repaired(&self) -> BTreeSet<Digest> {
        std::mem::take(&mut *self.repaired.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn note_repaired(&self, d: Digest) {
        self.repaired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d);
    }

    /// Starts writing a new blob; see [`BlobWriter`].
    pub fn writer(&self) -> io::Result<BlobWriter> {
        let tmp = tempfile::Builder::new()
            .prefix(".blob-")
            .tempfile_in(&self.tmp)
            .map_err(|e| with_path(e, "create a temp file in", &self.tmp))?;
        Ok(BlobWriter {
            out: BufWriter::with_capacity(BUF_SIZE, tmp),
            sha: Sha256::new(),
            size: 0,
            cas: self.clone(),
        })
    }

    /// Stores `bytes`, returning their digest and size. An intact stored copy is
    /// kept; a damaged one is replaced.
    pub fn put_bytes(&self, bytes: &[u8]) -> io::Result<(Digest, u64)> {
        let digest = Digest::of_bytes(bytes);
        let size = bytes.len() as u64;
        if self.existing(&digest, Some(size))? == Existing::Intact {
            self.keep(&digest);
            return Ok((digest, size));
        }
        let mut w = self.writer()?;
        w.write_all(bytes)?;
        w.commit()
    }

    /// Reads a whole blob, verifying its digest. A blob that does not hash to
    /// `d` (or is not a regular file) is an error of kind
    /// [`io::ErrorKind::InvalidData`]. Meant for small blobs (configs,
    /// manifests); stream layers with [`Cas::blob_path`].
    pub fn read(&self, d: &Digest) -> io::Result<Vec<u8>> {
        let path = self.blob_path(d);
        let mut file = open_regular(&path)
            .map_err(|e| with_path(e, "read", &path))?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("corrupt blob `{}`: not a regular file", path.display()),
                )
            })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| with_path(e, "read", &path))?;
        let actual = Digest::of_bytes(&bytes);
        if actual != *d {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "corrupt blob `{}`: its content hashes to {actual}",
                    path.display()
                ),
            ));
        }
        Ok(bytes)
    }

    /// Opens a stored blob to stream it (a layer of any size), with its size.
    /// Only a regular file is opened, never through a symlink; the caller hashes
    /// what it reads and must refuse a blob that does not hash to `d` (the store
    /// is trusted only once verified). Missing: [`io::ErrorKind::NotFound`].
    pub fn open_blob(&self, d: &Digest) -> io::Result<(File, u64)> {
        let path = self.blob_path(d);
        let file = open_regular(&path)
            .map_err(|e| with_path(e, "open", &path))?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("corrupt blob `{}`: not a regular file", path.display()),
                )
            })?;
        let len = file
            .metadata()
            .map_err(|e| with_path(e, "stat", &path))?
            .len();
        Ok((file, len))
    }

    /// Copies an external file into the store, verifying that it hashes to
    /// `expected` (else an [`io::ErrorKind::InvalidData`] error naming `src`, and
    /// nothing is stored). Returns its size. The source is hashed even when the
    /// blob is already stored, so a corrupt source is always noticed; a stored
    /// copy is kept only if it is intact, else it is replaced by the source.
    pub fn import_file(&self, src: &Path, expected: &Digest) -> io::Result<u64> {
        let mut file = File::open(src).map_err(|e| with_path(e, "open", src))?;
        if self.existing(expected, None)? == Existing::Intact {
            let (digest, size) = hash_reader(&mut file).map_err(|e| with_path(e, "read", src))?;
            check_expected(src, expected, &digest)?;
            self.keep(expected);
            return Ok(size);
        }
        let mut w = self.writer()?;
        copy_stream(&mut file, &mut w).map_err(|e| with_path(e, "copy", src))?;
        let (_, size) = w
            .commit_expecting(expected)
            .map_err(|e| with_path(e, "import", src))?;
        Ok(size)
    }

    /// Adopts the read-only file `src` as blob `d` by hard-linking it (another
    /// store on the same filesystem: a remote cache directory). The linked file
    /// is hashed before it is published; `Ok(false)` if it cannot be linked (on
    /// another filesystem, not permitted), so the caller copies instead; an
    /// [`io::ErrorKind::InvalidData`] error if it is not blob `d` of `size` bytes.
    pub fn link_in(&self, src: &Path, d: &Digest, size: u64) -> io::Result<bool> {
        if self.existing(d, Some(size))? == Existing::Intact {
            self.keep(d);
            return Ok(true);
        }
        let linked = match tempfile::Builder::new()
            .prefix(".link-")
            .make_in(&self.tmp, |p| fs::hard_link(src, p))
        {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(_) => return Ok(false),
        };
        let mut file = open_regular(linked.path())?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a regular file"))?;
        let (digest, len) = hash_reader(&mut file)?;
        if digest != *d || len != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes hashing to {digest}, expected {size} bytes of {d}"),
            ));
        }
        self.place(linked, d, size)?;
        Ok(true)
    }

    /// Publishes the finished temp file `tmp` as blob `d` (see the module docs):
    /// no-clobber if nothing is there, kept out if an intact copy is, renamed
    /// over a damaged one.
    fn place<F>(&self, tmp: tempfile::NamedTempFile<F>, d: &Digest, size: u64) -> io::Result<()> {
        let dest = self.blob_path(d);
        let found = self.existing(d, Some(size))?;
        if found == Existing::Intact {
            self.keep(d);
            return Ok(());
        }
        let dir = dest.parent().ok_or_else(|| {
            io::Error::other(format!("blob path `{}` has no parent", dest.display()))
        })?;
        fs::create_dir_all(dir).map_err(|e| with_path(e, "create", dir))?;
        let tmp = if found == Existing::Missing {
            match tmp.persist_noclobber(&dest) {
                Ok(_) => None,
                // Another writer published first: keep theirs if it is intact.
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                    match self.existing(d, Some(size))? {
                        Existing::Intact => {
                            self.keep(d);
                            None
                        }
                        _ => Some(e.file),
                    }
                }
                Err(e) => return Err(with_path(e.error, "publish", &dest)),
            }
        } else {
            Some(tmp)
        };
        if let Some(tmp) = tmp {
            // Damaged: replace it atomically (a plain rename over it).
            tmp.persist(&dest)
                .map_err(|e| with_path(e.error, "replace the damaged blob", &dest))?;
            self.note_repaired(*d);
        }
        // Make the new name durable; failing to fsync a directory is not fatal
        // on filesystems that do not support it.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// An intact stored copy of `d` is kept instead of a new one being published:
    /// its mtime is set to now (best effort, no link followed), so that it is as
    /// young as a blob just published. Garbage collection never deletes a blob
    /// younger than its grace period, and the caller is about to record
    /// something naming this one.
    fn keep(&self, d: &Digest) {
        let _ = touch(&self.blob_path(d));
    }

    /// Removes a blob (a corrupt one, or garbage collection). Missing is fine.
    pub fn remove(&self, d: &Digest) -> io::Result<()> {
        let path = self.blob_path(d);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(e, "remove", &path)),
            _ => Ok(()),
        }
    }

    /// Removes temp files older than `age` (left by killed processes; a live
    /// writer's file is younger). Returns how many were removed.
    pub fn sweep_tmp(&self, age: std::time::Duration) -> io::Result<usize> {
        let mut removed = 0;
        let now = std::time::SystemTime::now();
        for entry in fs::read_dir(&self.tmp).map_err(|e| with_path(e, "list", &self.tmp))? {
            let entry = entry.map_err(|e| with_path(e, "list", &self.tmp))?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age));
            if old && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A blob being written: a temp file plus a running sha256. Dropping it without
/// [`BlobWriter::commit`] deletes the temp file.
pub struct BlobWriter {
    out: BufWriter<tempfile::NamedTempFile>,
    sha: Sha256,
    size: u64,
    cas: Cas,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.size
    }

    /// The sha256 of the bytes written so far (the blob's digest if nothing
    /// more is written): lets a caller refuse a blob, with the digest it has,
    /// before anything is published.
    pub fn digest_so_far(&self) -> Digest {
        self.sha.clone().finish()
    }

    /// Publishes the blob under its digest (see the module docs) and returns
    /// its digest and size. An intact existing copy is kept (and this one
    /// dropped); a damaged one is replaced.
    pub fn commit(self) -> io::Result<(Digest, u64)> {
        self.publish(None)
    }

    /// Like [`BlobWriter::commit`], but stores nothing and fails with
    /// [`io::ErrorKind::InvalidData`] unless the content hashes to `expected`.
    pub fn commit_expecting(self, expected: &Digest) -> io::Result<(Digest, u64)> {
        self.publish(Some(expected))
    }

    fn publish(self, expected: Option<&Digest>) -> io::Result<(Digest, u64)> {
        let BlobWriter {
            out,
            sha,
            size,
            cas,
        } = self;
        let digest = sha.finish();
        let tmp = out.into_inner().map_err(|e| e.into_error())?;
        if let Some(expected) = expected {
            check_expected(tmp.path(), expected, &digest)?;
        }
        if cas.existing(&digest, Some(size))? == Existing::Intact {
            cas.keep(&digest);
            return Ok((digest, size)); // `tmp` is deleted on drop
        }
        let file = tmp.as_file();
        file.sync_all()
            .map_err(|e| with_path(e, "fsync", tmp.path()))?;
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(|e| with_path(e, "chmod", tmp.path()))?;
        cas.place(tmp, &digest, size)?;
        Ok((digest, size))
    }
}

/// Sets a file's mtime to now, leaving its atime (no link followed): what keeps a
/// blob young for garbage collection's grace period.
pub fn touch(path: &Path) -> io::Result<()> {
    let now = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    let omit = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_OMIT,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: omit,
            last_modification: now,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// Opens `path` for reading without following a symlink and without blocking on
/// a FIFO. `Ok(None)` if it exists but is not a regular file.
fn open_regular(path: &Path) -> io::Result<Option<File>> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // O_NOFOLLOW on a symlink
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(file.metadata()?.is_file().then_some(file))
}

fn check_expected(path: &Path, expected: &Digest, actual: &Digest) -> io::Result<()> {
    if actual == expected {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "`{}` does not match its digest: expected {expected}, found {actual}",
            path.display()
        ),
    ))
}

/// sha256 and length of everything `r` yields (through the one read-and-hash
/// helper, [`crate::input::hash_all`]).
fn hash_reader(r: &mut dyn Read) -> io::Result<(Digest, u64)> {
    let h = crate::input::hash_all(r, Limit::AtMost(u64::MAX), Algos::Sha256)?;
    let sha = h
        .sha256
        .ok_or_else(|| io::Error::other("the reader computed no sha256"))?;
    Ok((sha, h.len))
}

fn copy_stream(r: &mut dyn Read, w: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut n_total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(n_total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        n_total += n as u64;
    }
}

/// Adds what was being done and to which path to an IO error, keeping its kind.
fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Cas) {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(&dir.path().join("v1")).unwrap();
        (dir, cas)
    }

    #[test]
    fn sweep_removes_only_old_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let old = dir.path().join("tmp/.old-blob");
        let young = dir.path().join("tmp/.young-blob");
        fs::write(&old, b"x").unwrap();
        fs::write(&young, b"y").unwrap();
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        assert_eq!(
            cas.sweep_tmp(std::time::Duration::from_secs(86400))
                .unwrap(),
            1
        );
        assert!(!old.exists());
        assert!(young.exists());
    }

    #[test]
    fn put_read_and_layout() {
        let (dir, cas) = store();
        let (d, n) = cas.put_bytes(b"hello").unwrap();
        assert_eq!(n, 5);
        assert_eq!(d, Digest::of_bytes(b"hello"));
        let p = cas.blob_path(&d);
        assert_eq!(p, dir.path().join("v1/cas/sha256/2c").join(d.hex()));
        assert!(cas.contains(&d));
        assert_eq!(cas.read(&d).unwrap(), b"hello");
        assert!(cas.verify(&d, Some(5)).unwrap());
        assert!(!cas.verify(&d, Some(6)).unwrap());
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        // Writing it again keeps the one file and leaves no temp files.
        assert_eq!(cas.put_bytes(b"hello").unwrap(), (d, 5));
        let mut w = cas.writer().unwrap();
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        assert_eq!(w.commit().unwrap(), (d, 5));
        assert_eq!(fs::read_dir(dir.path().join("v1/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let (dir, cas) = store();
        let mut w = cas.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("v1/tmp")).unwrap().count(), 0);
        assert!(!cas.contains(&Digest::of_bytes(b"partial")));
    }

    #[test]
    fn corruption_is_detected_and_removable() {
        let (_dir, cas) = store();
        let (d, _) = cas.put_bytes(b"good").unwrap();
        let p = cas.blob_path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"evil").unwrap();
        assert!(cas.contains(&d));
        assert!(!cas.verify(&d, None).unwrap());
        assert_eq!(cas.read(&d).unwrap_err().kind(), io::ErrorKind::InvalidData);
        cas.remove(&d).unwrap();
        assert!(!cas.contains(&d));
        assert!(!cas.verify(&d, None).unwrap());
        cas.remove(&d).unwrap();
    }

    #[test]
    fn import_file_verifies() {
        let (dir, cas) = store();
        let src = dir.path().join("src");
        fs::write(&src, b"payload").unwrap();
        let good = Digest::of_bytes(b"payload");
        let bad = Digest::of_bytes(b"other");
        let e = cas.import_file(&src, &bad).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("src"), "{e}");
        assert!(!cas.contains(&bad) && !cas.contains(&good));
        assert_eq!(cas.import_file(&src, &good).unwrap(), 7);
        assert!(cas.verify(&good, Some(7)).unwrap());
        // Already present: the source is still checked.
        fs::write(&src, b"tampered").unwrap();
        assert!(cas.import_file(&src, &good).is_err());
    }

    /// Damages the stored blob `d` in place (as an edit through a layout's hard
    /// link would), keeping its size.
    fn damage(cas: &Cas, d: &Digest) {
        let p = cas.blob_path(d);
        let mut bytes = fs::read(&p).unwrap();
        bytes[0] ^= 0xff;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, &bytes).unwrap();
    }

    fn inode(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn publishing_over_a_damaged_blob_replaces_it() {
        let (dir, cas) = store();
        let layout_link = dir.path().join("layout-link");
        for how in ["put_bytes", "writer", "import_file"] {
            let content = format!("content for {how}");
            let (d, _) = cas.put_bytes(content.as_bytes()).unwrap();
            let p = cas.blob_path(&d);
            let _ = fs::remove_file(&layout_link);
            fs::hard_link(&p, &layout_link).unwrap();
            damage(&cas, &d);
            assert!(cas.take_repaired().is_empty());
            match how {
                "put_bytes" => {
                    cas.put_bytes(content.as_bytes()).unwrap();
                }
                "writer" => {
                    let mut w = cas.writer().unwrap();
                    w.write_all(content.as_bytes()).unwrap();
                    w.commit().unwrap();
                }
                _ => {
                    let src = dir.path().join("src");
                    fs::write(&src, &content).unwrap();
                    cas.import_file(&src, &d).unwrap();
                }
            }
            assert_eq!(cas.read(&d).unwrap(), content.as_bytes(), "{how}");
            assert_eq!(cas.take_repaired(), BTreeSet::from([d]), "{how}");
            // A new file: the damaged one is still what the old link names.
            assert_ne!(inode(&p), inode(&layout_link), "{how}");
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o444, "{how}");
        }
        assert_eq!(fs::read_dir(dir.path().join("v1/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn publishing_an_intact_blob_keeps_its_file() {
        let (dir, cas) = store();
        let (d, _) = cas.put_bytes(b"shared").unwrap();
        let p = cas.blob_path(&d);
        let before = inode(&p);
        cas.put_bytes(b"shared").unwrap();
        let mut w = cas.writer().unwrap();
        w.write_all(b"shared").unwrap();
        w.commit().unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"shared").unwrap();
        cas.import_file(&src, &d).unwrap();
        assert_eq!(inode(&p), before, "layouts linking it keep sharing it");
        assert!(cas.take_repaired().is_empty());
    }

    #[test]
    fn a_truncated_blob_is_replaced() {
        let (_dir, cas) = store();
        let (d, _) = cas.put_bytes(b"0123456789").unwrap();
        let p = cas.blob_path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(3)
            .unwrap();
        assert!(!cas.verify(&d, None).unwrap());
        cas.put_bytes(b"0123456789").unwrap();
        assert!(cas.verify(&d, Some(10)).unwrap());
    }

    #[test]
    fn a_symlink_or_fifo_under_a_blob_name_is_replaced_never_read() {
        let (dir, cas) = store();
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, b"link target").unwrap();
        // a symlink to a file holding the very content: still not a blob
        let d = Digest::of_bytes(b"link target");
        let p = cas.blob_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &p).unwrap();
        assert!(!cas.verify(&d, None).unwrap());
        assert_eq!(cas.read(&d).unwrap_err().kind(), io::ErrorKind::InvalidData);
        cas.put_bytes(b"link target").unwrap();
        assert!(fs::symlink_metadata(&p).unwrap().is_file());
        assert_eq!(fs::read(&elsewhere).unwrap(), b"link target");

        // a FIFO: opening it for reading must not block
        let d = Digest::of_bytes(b"fifo");
        let p = cas.blob_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(!cas.verify(&d, None).unwrap());
        cas.put_bytes(b"fifo").unwrap();
        assert!(cas.verify(&d, Some(4)).unwrap());
        assert_eq!(cas.take_repaired().len(), 2);
    }

    #[test]
    fn concurrent_writers_over_a_damaged_blob_leave_it_intact() {
        let (_dir, cas) = store();
        let (d, _) = cas.put_bytes(b"contended").unwrap();
        damage(&cas, &d);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let mut w = cas.writer().unwrap();
                    w.write_all(b"contended").unwrap();
                    assert_eq!(w.commit().unwrap(), (d, 9));
                });
            }
        });
        assert!(cas.verify(&d, Some(9)).unwrap());
        assert_eq!(cas.take_repaired(), BTreeSet::from([d]));
    }

    #[test]
    fn flat_layout_and_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open_at_flat(&dir.path().join("cas"), &dir.path().join("tmp")).unwrap();
        let d = Digest::of_bytes(b"same");
        assert_eq!(cas.blob_path(&d), dir.path().join("cas").join(d.hex()));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let mut w = cas.writer().unwrap();
                    w.write_all(b"same").unwrap();
                    assert_eq!(w.commit().unwrap(), (d, 4));
                });
            }
        });
        assert!(cas.verify(&d, Some(4)).unwrap());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
