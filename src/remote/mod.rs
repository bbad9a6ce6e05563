//! Remote caches: a shared directory, or a server speaking Bazel's HTTP cache
//! protocol. A CI runner fetches what another runner built instead of building
//! it again; a laptop reuses what CI built.
//!
//! A remote cache holds two kinds of immutable things, as Bazel's HTTP cache does:
//!
//! | name            | content                                   | checked by |
//! |-----------------|-------------------------------------------|------------|
//! | `cas/<sha256>`  | a blob (layer, config, manifest, listing) | its sha256, while it is copied in |
//! | `ac/<key>`      | an action's output ([`entry`])            | its checksum, its key, and every blob it names |
//!
//! A directory ([`dir`]) stores them as `cas/sha256/<hex>` and `ac/<hex>`; a
//! server ([`http`]) under `<url>/cas/<hex>` and `<url>/ac/<hex>`. Neither holds
//! SQLite, which must not live on a network filesystem: the per-machine index
//! ([`crate::cache`]) stays local.
//!
//! # How it is used ([`crate::scheduler`])
//!
//! - **Lookup** (on a worker, after a local miss): fetch the entry; fetch every
//!   blob it names that the local store lacks, into the local store, verified
//!   against its digest before it is published there ([`crate::cas`]). The entry
//!   is a hit only if all of that succeeds; the local index then records it, so
//!   the next build hits locally.
//! - **Upload** (on a worker, after an action ran, and for a local hit the remote
//!   lacks): blobs first, the entry last, so an entry never names a blob that was
//!   not uploaded. A blob the remote already has is not sent again.
//!
//! # Failure is a miss, never a wrong hit
//!
//! - A damaged entry or blob (wrong checksum, wrong size, wrong content,
//!   truncated) is reported once, treated as a miss, rebuilt, and uploaded
//!   again, replacing the damaged copy.
//! - A remote that fails (a dead server, a timeout, a full disk, permissions)
//!   after bounded retries is switched off for the rest of the build with one
//!   warning: the build goes on locally, slower, never failed.
//! - Modes ([`Mode`]): read-only never writes (nor touches) anything remote, for
//!   untrusted builds; write-only never reads.
//!
//! # What it does not do
//!
//! - No trust decisions: whoever can write to a remote cache can make every
//!   reader build what it wrote. Checksums catch damage, not forgery; give pull
//!   requests read-only access.
//! - No listing over HTTP: the protocol has none, so garbage collection and
//!   verification of a server are the server's job; `imgc cache gc --remote`
//!   and `verify --remote` work on directories.

pub mod dir;
pub mod entry;
pub mod gc;
pub mod http;

use crate::action::Output;
use crate::cas::Cas;
use crate::hash::{Digest, Key};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a build reads from and writes to the remote cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ReadWrite,
    /// Never writes: for builds that must not be trusted (pull requests).
    Read,
    /// Never reads: for builds that only populate the cache.
    Write,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "read-write" | "rw" => Some(Mode::ReadWrite),
            "read" | "read-only" => Some(Mode::Read),
            "write" | "write-only" => Some(Mode::Write),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::ReadWrite => "read-write",
            Mode::Read => "read",
            Mode::Write => "write",
        }
    }
}

/// Where a remote cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    Http(http::Endpoint),
}

impl Location {
    /// Parses a `--remote-cache` value: an `http://` URL, or a directory path
    /// (relative paths are taken relative to `base`).
    pub fn parse(value: &str, base: &Path) -> Result<Location, String> {
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("http://") {
            return http::Endpoint::parse(value).map(Location::Http);
        }
        if lower.starts_with("https://") {
            return Err(format!(
                "`{}`: https remote caches are not supported yet; use http:// (for example behind a TLS-terminating proxy on loopback) or a directory",
                http::redact(value)
            ));
        }
        if let Some((scheme, _)) = value.split_once("://") {
            return Err(format!(
                "`{}`: unsupported remote cache scheme `{scheme}`; give a directory or an http:// URL",
                http::redact(value)
            ));
        }
        if value.is_empty() {
            return Err("the remote cache location is empty".into());
        }
        Ok(Location::Dir(base.join(value)))
    }
}

/// Where a blob or entry could not be used from, and why.
#[derive(Debug)]
pub enum Fault {
    /// Not there: an ordinary miss.
    Missing,
    /// There, but wrong: reported, then treated as a miss.
    Damaged(String),
    /// The remote failed (IO, network, server error): switches it off.
    Failed(io::Error),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Fault {
        if e.kind() == io::ErrorKind::NotFound {
            Fault::Missing
        } else {
            Fault::Failed(e)
        }
    }
}

/// A remote store: the few operations both backends offer.
pub trait Store: Send + Sync {
    /// The entry's bytes (at most [`entry::MAX_ENTRY_BYTES`]).
    fn get_entry(&self, key: &Key) -> Result<Vec<u8>, Fault>;
    fn has_entry(&self, key: &Key) -> Result<bool, Fault>;
    /// Publishes an entry; `replace` overwrites an existing one (known damaged).
    fn put_entry(&self, key: &Key, bytes: &[u8], replace: bool) -> Result<(), Fault>;
    /// Marks an entry used now, for least-recently-used eviction (best effort).
    fn touch_entry(&self, key: &Key);
    /// Copies (or links) blob `d` of `size` bytes into `cas`, verified; returns
    /// its size.
    fn fetch_blob(&self, d: &Digest, size: u64, cas: &Cas) -> Result<u64, Fault>;
    /// Whether the remote has blob `d` with `size` bytes (not re-hashed).
    fn has_blob(&self, d: &Digest, size: u64) -> Result<bool, Fault>;
    /// Uploads the local file `path` as blob `d`; `replace` overwrites an
    /// existing (known damaged) copy. Returns the bytes sent.
    fn put_blob(&self, d: &Digest, size: u64, path: &Path, replace: bool) -> Result<u64, Fault>;
    /// For messages: where it is, without credentials.
    fn describe(&self) -> String;
    /// Whether [`Store::has_blob`] must be asked every time a blob is reused
    /// (it refreshes the blob against garbage collection), rather than once per build.
    fn refreshes_on_reuse(&self) -> bool {
        false
    }
}

/// A remote cache as one build uses it: the store, the mode, and what this
/// build learnt about it (switched off, damaged names, warnings).
pub struct Remote {
    store: Box<dyn Store>,
    mode: Mode,
    off: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Said once each, taken by the caller with [`Remote::take_warnings`].
    warnings: Vec<String>,
    said: BTreeSet<String>,
    /// Damaged on the remote: the next upload replaces them.
    bad_blobs: BTreeSet<Digest>,
    bad_entries: BTreeSet<Key>,
    /// Known present on the remote (seen or sent in this build): shared base
    /// layers are asked about and sent once, not once per image (unless the store
    /// refreshes blobs on reuse: a directory, against a concurrent `gc`).
    present: BTreeSet<Digest>,
}

/// A remote hit: the output, every blob of which is now in the local store.
#[derive(Debug)]
pub struct Hit {
    pub output: Output,
    pub label: String,
    pub downloaded: u64,
    /// Blobs fetched (and so verified) into the local store.
    pub fetched: Vec<Digest>,
}

impl Remote {
    pub fn new(store: Box<dyn Store>, mode: Mode) -> Remote {
        Remote {
            store,
            mode,
            off: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    /// Opens the remote at `location` (a directory is created and marked if
    /// new; an HTTP server is not contacted yet).
    pub fn open(
        location: &Location,
        mode: Mode,
        credentials: Option<http::Credentials>,
    ) -> Result<Remote, String> {
        let store: Box<dyn Store> = match location {
            Location::Dir(path) => Box::new(dir::DirStore::open(path, mode)?),
            Location::Http(endpoint) => {
                Box::new(http::HttpStore::new(endpoint.clone(), credentials)?)
            }
        };
        Ok(Remote::new(store, mode))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Whether lookups go to the remote (mode allows it, and it has not failed).
    pub fn reads(&self) -> bool {
        self.mode != Mode::Write && !self.off.load(Ordering::Relaxed)
    }

    /// Whether results are uploaded.
    pub fn writes(&self) -> bool {
        self.mode != Mode::Read && !self.off.load(Ordering::Relaxed)
    }

    /// Warnings since the last call, each said once per build.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().warnings)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warn(&self, message: String) {
        let mut s = self.lock();
        if s.said.insert(message.clone()) {
            s.warnings.push(message);
        }
    }

    /// The remote failed: off for the rest of the build, with one warning.
    fn fail(&self, e: &io::Error) {
        if !self.off.swap(true, Ordering::Relaxed) {
            self.warn(format!(
                "remote cache `{}` failed, building without it: {e}",
                self.describe()
            ));
        }
    }

    fn damaged(&self, what: &str, why: &str) {
        self.warn(format!(
            "remote cache `{}`: {what} is damaged ({why}); not used, rebuilt and uploaded again",
            self.describe()
        ));
    }

    /// Looks `key` up: the entry, then every blob it names that `have` (the
    /// local store, checked by the caller) lacks. `None` on any miss, damage or
    /// failure.
    pub fn lookup(&self, key: &Key, cas: &Cas, have: &dyn Fn(&Digest, u64) -> bool) -> Option<Hit> {
        if !self.reads() {
            return None;
        }
        let bytes = match self.store.get_entry(key) {
            Ok(b) => b,
            Err(f) => {
                self.fault(
                    f,
                    || format!("action-cache entry `{}`", key.to_hex()),
                    None,
                    Some(key),
                );
                return None;
            }
        };
        let e = match entry::decode(key, &bytes) {
            Ok(e) => e,
            Err(why) => {
                self.lock().bad_entries.insert(*key);
                self.damaged(
                    &format!("action-cache entry `{}`", key.to_hex()),
                    &why.to_string(),
                );
                return None;
            }
        };
        let mut downloaded = 0;
        let mut fetched = Vec::new();
        for (d, size) in e.output.blobs() {
            if fetched.contains(&d) || have(&d, size) {
                continue;
            }
            match self.store.fetch_blob(&d, size, cas) {
                Ok(n) => {
                    downloaded += n;
                    fetched.push(d);
                }
                Err(f) => {
                    self.fault(f, || format!("blob `{d}`"), Some(&d), None);
                    return None;
                }
            }
        }
        if self.mode == Mode::ReadWrite {
            self.store.touch_entry(key);
        }
        Some(Hit {
            output: e.output,
            label: e.label,
            downloaded,
            fetched,
        })
    }

    fn fault(&self, f: Fault, what: impl Fn() -> String, blob: Option<&Digest>, key: Option<&Key>) {
        match f {
            Fault::Missing => {}
            Fault::Damaged(why) => {
                let mut s = self.lock();
                if let Some(d) = blob {
                    s.bad_blobs.insert(*d);
                }
                if let Some(k) = key {
                    s.bad_entries.insert(*k);
                }
                drop(s);
                self.damaged(&what(), &why);
            }
            Fault::Failed(e) => self.fail(&e),
        }
    }

    /// Uploads an action's output: its blobs (from `cas`) the remote lacks, then
    /// its entry. With `only_if_missing`, first asks whether the remote has the
    /// entry, and does nothing if it does (a local hit the remote may lack).
    /// Returns the bytes sent (0 if nothing was).
    pub fn upload(
        &self,
        key: &Key,
        kind: &str,
        label: &str,
        output: &Output,
        cas: &Cas,
        only_if_missing: bool,
    ) -> u64 {
        if !self.writes() {
            return 0;
        }
        let replace_entry = self.lock().bad_entries.contains(key);
        if only_if_missing && !replace_entry {
            match self.store.has_entry(key) {
                Ok(true) => return 0,
                Ok(false) => {}
                Err(f) => {
                    self.fault(
                        f,
                        || format!("action-cache entry `{}`", key.to_hex()),
                        None,
                        None,
                    );
                    return 0;
                }
            }
        }
        let mut sent = 0;
        let mut done = BTreeSet::new();
        for (d, size) in output.blobs() {
            if !done.insert(d) {
                continue;
            }
            let (replace, present) = {
                let s = self.lock();
                (s.bad_blobs.contains(&d), s.present.contains(&d))
            };
            if present && !replace && !self.store.refreshes_on_reuse() {
                continue;
            }
            if !replace {
                match self.store.has_blob(&d, size) {
                    Ok(true) => {
                        self.lock().present.insert(d);
                        continue;
                    }
                    Ok(false) => {}
                    Err(f) => {
                        self.fault(f, || format!("blob `{d}`"), None, None);
                        return sent;
                    }
                }
            }
            match self.store.put_blob(&d, size, &cas.blob_path(&d), replace) {
                Ok(n) => {
                    sent += n;
                    let mut s = self.lock();
                    s.bad_blobs.remove(&d);
                    s.present.insert(d);
                }
                Err(f) => {
                    // A local blob that cannot be read is not the remote's fault:
                    // no entry is written, and the remote stays on.
                    match f {
                        Fault::Failed(e) => self.fail(&e),
                        Fault::Missing | Fault::Damaged(_) => {}
                    }
                    return sent;
                }
            }
        }
        let bytes = entry::encode(key, kind, label, output);
        match self.store.put_entry(key, &bytes, replace_entry) {
            Ok(()) => {
                sent += bytes.len() as u64;
                self.lock().bad_entries.remove(key);
            }
            Err(f) => self.fault(
                f,
                || format!("action-cache entry `{}`", key.to_hex()),
                None,
                None,
            ),
        }
        sent
    }
}
