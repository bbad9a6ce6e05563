//! A remote cache in a plain shared directory (NFS, or a folder a CI cache step
//! restores and saves).
//!
//! ```text
//! <dir>/imgc-remote-cache     marker: imgc made (or adopted, empty) this directory
//!       cas/sha256/<hex>      blobs, 0444, published by temp file + fsync + rename
//!       ac/<hex>              action-cache entries (see [`super::entry`]), same way
//!       tmp/                  temp files of writers in flight
//! ```
//!
//! Every file is immutable once named. Writers publish with a no-clobber rename,
//! so the first writer wins; an existing file is replaced only when it is
//! damaged (a blob that does not hash to its name, an entry that does not
//! decode), atomically, by a rename over it ([`crate::cas`] does this for blobs).
//! Readers therefore see a whole old file or a whole new one.
//!
//! Fetching a blob hard-links it into the local store when both are on one
//! filesystem, the remote file is read-only and the build may write to the
//! remote (a shared inode's metadata is shared too), and copies it otherwise;
//! either way its content is hashed before the local store publishes it.
//!
//! The directory must be empty or carry the marker: imgc never writes into, nor
//! garbage-collects, a directory it did not make. The subdirectories must be
//! real directories (a symlink planted there is refused), and files are opened
//! without following links.
//!
//! Entry mtimes record use (refreshed on a hit, at most hourly, in read-write
//! mode): `imgc cache gc --remote` evicts the least recently used entries first.

use super::{Fault, Mode, Store, entry};
use crate::cas::{Cas, touch};
use crate::hash::{Digest, Key};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The marker file's name and content.
pub const MARKER: &str = "imgc-remote-cache";
const MARKER_TEXT: &str = "imgc remote cache, format 1: cas/sha256/<hex> blobs, ac/<hex> entries\n";

/// How stale an entry's mtime may get before a hit refreshes it.
const TOUCH_AFTER: Duration = Duration::from_secs(3600);

pub struct DirStore {
    root: PathBuf,
    mode: Mode,
    blobs: Cas,
    ac: PathBuf,
    tmp: PathBuf,
}

impl DirStore {
    /// Opens the directory cache at `root`: creates and marks it if it does not
    /// exist or is empty (unless `mode` is read-only, which writes nothing), and
    /// refuses a directory with other content and no marker.
    pub fn open(root: &Path, mode: Mode) -> Result<DirStore, String> {
        let show = root.display();
        let store = DirStore {
            root: root.to_path_buf(),
            mode,
            blobs: Cas::flat_view(&root.join("cas").join("sha256"), &root.join("tmp")),
            ac: root.join("ac"),
            tmp: root.join("tmp"),
        };
        match fs::symlink_metadata(root.join(MARKER)) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(format!(
                    "`{show}/{MARKER}` is not a regular file: not an imgc remote cache"
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Empty, or holding only the temp file of another imgc marking
                // it right now (the marker is published before anything else).
                let empty = match fs::read_dir(root) {
                    Ok(entries) => entries.filter_map(Result::ok).all(|e| {
                        e.file_name().to_string_lossy().starts_with(".entry-")
                            && e.file_type().is_ok_and(|t| t.is_file())
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                    Err(e) => {
                        return Err(format!(
                            "cannot read the remote cache directory `{show}`: {e}"
                        ));
                    }
                };
                // Anything else was made after the marker (imgc marks first): if
                // another imgc marked it since we looked, it is ours after all.
                let marked_since =
                    || fs::symlink_metadata(root.join(MARKER)).is_ok_and(|m| m.is_file());
                if !empty && !marked_since() {
                    return Err(format!(
                        "`{show}` is not an imgc remote cache (it has no `{MARKER}` file) and is not empty: refusing to use it; give an empty or new directory"
                    ));
                }
                if empty && mode == Mode::Read {
                    // Nothing to read, and a read-only build writes nothing.
                    return Ok(store);
                }
                if empty {
                    fs::create_dir_all(root).map_err(|e| {
                        format!("cannot create the remote cache directory `{show}`: {e}")
                    })?;
                    store
                        .publish(&root.join(MARKER), MARKER_TEXT.as_bytes(), false)
                        .map_err(|e| {
                            format!("cannot mark the remote cache directory `{show}`: {e}")
                        })?;
                }
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the remote cache directory `{show}`: {e}"
                ));
            }
        }
        if mode != Mode::Read {
            for d in [
                root.join("cas").join("sha256"),
                store.ac.clone(),
                store.tmp.clone(),
            ] {
                fs::create_dir_all(&d)
                    .map_err(|e| format!("cannot create `{}`: {e}", d.display()))?;
            }
        }
        for d in [
            root.join("cas"),
            root.join("cas").join("sha256"),
            store.ac.clone(),
            store.tmp.clone(),
        ] {
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                _ => {
                    return Err(format!(
                        "`{}` in the remote cache is not a directory: refusing to use it",
                        d.display()
                    ));
                }
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store view of `cas/sha256/`.
    pub fn blobs(&self) -> &Cas {
        &self.blobs
    }

    pub fn entry_path(&self, key: &Key) -> PathBuf {
        self.ac.join(key.to_hex())
    }

    pub fn entries_dir(&self) -> &Path {
        &self.ac
    }

    /// Writes `bytes` to `dest` through a temp file: no-clobber (first writer
    /// wins) unless `replace`.
    fn publish(&self, dest: &Path, bytes: &[u8], replace: bool) -> io::Result<()> {
        let dir = dest.parent().unwrap_or(&self.root);
        let tmp_dir = if self.tmp.is_dir() { &self.tmp } else { dir };
        let mut tmp = tempfile::Builder::new()
            .prefix(".entry-")
            .tempfile_in(tmp_dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o444))?;
        if replace {
            tmp.persist(dest).map_err(|e| e.error)?;
        } else {
            match tmp.persist_noclobber(dest) {
                Ok(_) => {}
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.error),
            }
        }
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Opens `path` for reading: no links followed, no FIFOs, regular files only.
pub fn open_regular(path: &Path) -> Result<fs::File, Fault> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Fault::Damaged("a symlink".into()),
            _ => Fault::from(e),
        })?;
    if !file.metadata().map_err(Fault::from)?.is_file() {
        return Err(Fault::Damaged("not a regular file".into()));
    }
    Ok(file)
}

/// Reads an entry file, at most [`entry::MAX_ENTRY_BYTES`].
pub fn read_entry(path: &Path) -> Result<Vec<u8>, Fault> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(entry::MAX_ENTRY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Fault::from)?;
    if bytes.len() as u64 > entry::MAX_ENTRY_BYTES {
        return Err(Fault::Damaged("larger than any entry".into()));
    }
    Ok(bytes)
}

impl Store for DirStore {
    fn get_entry(&self, key: &Key) -> Result<Vec<u8>, Fault> {
        read_entry(&self.entry_path(key))
    }

    fn has_entry(&self, key: &Key) -> Result<bool, Fault> {
        match fs::symlink_metadata(self.entry_path(key)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Fault::Failed(e)),
        }
    }

    fn put_entry(&self, key: &Key, bytes: &[u8], replace: bool) -> Result<(), Fault> {
        let dest = self.entry_path(key);
        // First writer wins, unless what is there is not a usable entry.
        let replace = replace
            || match read_entry(&dest) {
                Ok(old) => entry::decode(key, &old).is_err(),
                Err(Fault::Missing) => false,
                Err(Fault::Damaged(_)) => true,
                Err(Fault::Failed(e)) => return Err(Fault::Failed(e)),
            };
        self.publish(&dest, bytes, replace).map_err(Fault::Failed)
    }

    fn touch_entry(&self, key: &Key) {
        let path = self.entry_path(key);
        let old = fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok());
        if let Some(t) = old
            && SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age > TOUCH_AFTER)
        {
            let _ = touch(&path);
        }
    }

    fn fetch_blob(&self, d: &Digest, size: u64, cas: &Cas) -> Result<u64, Fault> {
        let src = self.blobs.blob_path(d);
        let file = open_regular(&src)?;
        let meta = file.metadata().map_err(Fault::from)?;
        if meta.len() != size {
            return Err(Fault::Damaged(format!(
                "{} bytes, expected {size}",
                meta.len()
            )));
        }
        // A link shares the inode: whatever the local store later does to its
        // file's metadata (refreshing its mtime) would show in the remote, which
        // a read-only build must not touch at all. Those copy.
        let read_only = meta.permissions().mode() & 0o222 == 0;
        if read_only && self.mode != Mode::Read {
            match cas.link_in(&src, d, size) {
                Ok(true) => return Ok(size),
                Ok(false) => {} // another filesystem: copy
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(Fault::Damaged(e.to_string()));
                }
                Err(e) => return Err(Fault::Failed(e)),
            }
        }
        copy_into(file, d, size, cas)
    }

    fn has_blob(&self, d: &Digest, size: u64) -> Result<bool, Fault> {
        let path = self.blobs.blob_path(d);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => {
                // Keep it young: a concurrent `gc` never deletes a blob within its
                // grace period, and an entry about to name it is being written.
                let _ = touch(&path);
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Fault::Failed(e)),
        }
    }

    fn put_blob(&self, d: &Digest, size: u64, path: &Path, _replace: bool) -> Result<u64, Fault> {
        // The store keeps an intact copy and replaces a damaged one by itself.
        match self.blobs.import_file(path, d) {
            Ok(n) if n == size => Ok(n),
            Ok(n) => Err(Fault::Damaged(format!(
                "local blob `{d}` has {n} bytes, expected {size}"
            ))),
            Err(e)
                if e.kind() == io::ErrorKind::InvalidData
                    || e.kind() == io::ErrorKind::NotFound =>
            {
                Err(Fault::Damaged(e.to_string()))
            }
            Err(e) => Err(Fault::Failed(e)),
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    /// `has_blob` keeps a reused blob young, so a `gc` running alongside (whose
    /// grace period outlasts any upload) never deletes a blob an entry is about
    /// to name.
    fn refreshes_on_reuse(&self) -> bool {
        true
    }
}

/// Streams `file` into the local store as blob `d`, verified.
pub fn copy_into(mut file: impl Read, d: &Digest, size: u64, cas: &Cas) -> Result<u64, Fault> {
    let mut w = cas.writer().map_err(Fault::Failed)?;
    let n = io::copy(&mut (&mut file).take(size + 1), &mut w).map_err(Fault::from)?;
    if n != size {
        return Err(Fault::Damaged(format!("{n} bytes, expected {size}")));
    }
    match w.commit_expecting(d) {
        Ok(_) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(Fault::Damaged(
            "its content does not hash to its name".into(),
        )),
        Err(e) => Err(Fault::Failed(e)),
    }
}
