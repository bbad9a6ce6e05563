//! Importing images made elsewhere: OCI image layouts, `docker save` tarballs
//! and (once [`crate::registry::pull`] fetched them) pinned registry images.
//!
//! An import copies an image's blobs into the CAS, verifying each one, and
//! returns its parsed config, its layer descriptors and a [`Listing`] of every
//! layer, so it can be used as a base like any image imgc built. Imported layers
//! are kept **byte for byte** (same digests as upstream, never recompressed), so
//! an image built on `debian:12` shares its base layers with every other copy of
//! `debian:12`.
//!
//! # Keys and reads see the same bytes
//!
//! An import is an action: its key hashes its input files, and a cache hit must
//! be exactly what a fresh import would make. So the key side and the read side
//! share one rule, in this module:
//!
//! - [`key_inputs`] lists and hashes (blake3, through the file-hash memo) exactly
//!   the files [`import`] reads: for a layout, `index.json`, each nested index
//!   on the way to the chosen manifest, the manifest, the config and the layer
//!   blobs it names, found by the same code (`import::layout`) that the import runs;
//!   for a docker archive, the tarball. Files of the layout that the import
//!   does not read (other platforms' blobs, `oci-layout`, garbage) are not in
//!   the key and changing them rebuilds nothing.
//! - Both sides open files the same way ([`crate::input::Root`]): relative to a
//!   descriptor of the workspace root, never by absolute path, **following a
//!   symlink only while every step stays inside the workspace** (so a directory
//!   swapped for a link out of it between the key and the read is refused, not
//!   read), and only a regular file is opened (`lstat` first, then
//!   `O_NOFOLLOW | O_NONBLOCK` and `fstat`). Links are followed rather than refused
//!   because vendored images are legitimately reached through them: git-annex
//!   stores every large file as a link into `.git/annex/objects`, and a
//!   `third_party/debian -> ../vendor/debian-12` link is ordinary. The key
//!   names each file by the path the import uses (`third_party/x/index.json`)
//!   and hashes the content reached through the link, and the memo is keyed by
//!   the resolved path and its `stat`, so re-pointing a link, or editing its
//!   target, changes the key.
//! - [`import`] hashes (blake3) every workspace file while it reads it and
//!   returns the hashes in [`ImportedImage::read`]. The action compares them
//!   with the key's `file:` components ([`ImportedImage::check_read`]): any
//!   difference (a file changed between keying and reading, or a different set
//!   of files) fails the action with "`x` changed while it was imported", and
//!   nothing is cached.
//!
//! # Bounded input
//!
//! Every input may be hostile. Only regular files are opened, so a FIFO never
//! hangs a build and a device is never read. Every read is bounded:
//!
//! | what | bound |
//! |---|---|
//! | a blob of a layout (index, manifest, config, layer) | exactly its descriptor's size: a longer, shorter or growing file is an error |
//! | `index.json`, `manifest.json` of an archive, every index, manifest and config | [`JSON_LIMIT`] (4 MiB, the limit registries put on manifests) |
//! | each tar extension header (PAX `x`/`g`, GNU `L`/`K`) of an archive or a layer | [`EXT_HEADER_LIMIT`] (1 MiB), checked before it is read |
//! | nested image indexes | 4 levels |
//!
//! Layers and archive members are streamed, never held in memory. Names taken
//! from an input (archive members, media types, platforms, parser messages)
//! are escaped when they reach a message ([`crate::input::escape`]), so an
//! archive cannot write terminal escape sequences.
//!
//! # Platforms
//!
//! The imported config's `os`, `architecture` and `variant` must equal the
//! build platform ([`Platform`]) after normalizing both as containerd does
//! ([`normalize_platform`]): `aarch64` is `arm64` and arm64's variant `v8` is
//! the same as none; `x86_64` is `amd64` and its `v1` the same as none (`v2`,
//! `v3`, `v4` are not: such an image needs a newer CPU); `arm` without a
//! variant is `arm/v7`, `armhf` is `arm/v7`, `armel` is `arm/v6`; `i386` is
//! `386`. This holds for a single-image layout or archive as much as for one
//! picked from a multi-platform index: an arm64 image in an amd64 workspace is
//! an error naming both, never an amd64 image with arm64 layers.
//!
//! # OCI image layouts (`import::layout`)
//!
//! `index.json` is read; if it holds exactly one image manifest (or index), that
//! one is taken. Otherwise (several manifests, or a nested image index as
//! `skopeo`/`docker buildx` write for multi-platform images) the one whose
//! descriptor platform matches is chosen, following nested indexes. Every blob
//! is checked against its descriptor's digest and size, and each layer is
//! decompressed (by media type) once: its sha256 must equal the config's
//! `diff_ids`, and its entries make its [`Listing`].
//!
//! # One path for every source
//!
//! Whatever the source, once the chosen image's manifest, config and layer
//! blobs are known, `assemble` makes the [`ImportedImage`]: the config must be
//! for the build platform and list one diff_id per layer; each distinct layer
//! is made present in the CAS (copied from a layout, already stored by an
//! archive scan or a pull), then decompressed once into its diff_id (which
//! must be the config's) and its listing.
//!
//! # Registry images ([`import_pulled`])
//!
//! The pull stored the chosen manifest, the config and the layers, each
//! verified against its digest. The manifest is parsed here again, from its
//! bytes (which must hash to the manifest digest), with the layout's own
//! parser; the config is read back from the CAS (verified), and each layer is
//! re-hashed in the CAS before it is decompressed: what is used is what the
//! pinned digest names.
//!
//! # Docker archives (`import::archive`)
//!
//! The tarball is streamed once; every candidate blob (`<id>/layer.tar` of the
//! classic format, `blobs/sha256/<hex>` of Docker ≥ 25, `<hex>.json` configs)
//! goes straight into the CAS while being hashed, so a large archive is never
//! held in memory. `manifest.json` then says which config and layers make up
//! the image (several images: the one whose config matches the platform). Layer
//! files are usually uncompressed tars (media type
//! `application/vnd.oci.image.layer.v1.tar`, diff_id = digest); a gzip (or
//! zstd) layer is recognized by its magic bytes, gets the matching media type,
//! and its diff_id is computed by decompressing it. Symlinked duplicate layers
//! (`docker save` writes `<id>/layer.tar -> ../<other>/layer.tar`) are followed
//! inside the archive. There is no upstream OCI manifest in such an archive,
//! so one is built with [`crate::oci::build_manifest`] and stored.
//!
//! # What it deliberately does not do
//!
//! - No registry access, no credentials: [`crate::registry::pull`] fetches a
//!   registry image into the CAS (verified), and [`import_pulled`] takes it from
//!   there through the checks every import shares (`assemble`).
//! - No conversion: layers are not recompressed, configs are stored as found
//!   (their digest is the upstream image id). Docker layer media types in an OCI
//!   layout are mapped to their OCI names, which describe the same bytes.
//! - No check of what the layers do to each other: the listings are returned
//!   for image assembly to check.
//! - Never panics on malformed input: corrupt, truncated or oversized files are
//!   errors naming the file.

mod archive;
pub(crate) mod layout;
pub(crate) mod scan;

pub use scan::EXT_HEADER_LIMIT;

use crate::cache::{FileMemo, MemoEntry, StatKey};
use crate::cas::Cas;
use crate::hash::{DiffId, Digest, Key};
use crate::input::{self, Algos, HashReader, Limit, Located, Root, Stat, escape};
use crate::layer::{MEDIA_TYPE_GZIP, MEDIA_TYPE_ZSTD};
use crate::listing::Listing;
use crate::oci::LayerDesc;
use crate::spec::model::Platform;
use oci_spec::image::ImageConfiguration;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

/// The most bytes a JSON document of an import may hold.
pub const JSON_LIMIT: u64 = 4 << 20;

/// What an import reads: a layout directory or a tarball inside a workspace.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The workspace root with its symlinks resolved (`Path::canonicalize`).
    pub root: &'a Path,
    /// Workspace-relative, `/`-separated path of the directory or tarball.
    pub rel: &'a str,
    pub format: Format,
}

/// The two kinds of import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OciLayout,
    DockerArchive,
}

impl Format {
    /// The key component `source`.
    pub fn name(self) -> &'static str {
        match self {
            Format::OciLayout => "oci-layout",
            Format::DockerArchive => "docker-archive",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Format::OciLayout => "OCI layout directory",
            Format::DockerArchive => "docker archive",
        }
    }
}

/// An image copied into the CAS.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    pub config: ImageConfiguration,
    pub config_digest: Digest,
    pub config_size: u64,
    pub layers: Vec<LayerDesc>,
    /// One per layer, in the same order: what each layer holds.
    pub listings: Vec<Listing>,
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    /// Every workspace file the import read (workspace-relative path) and the
    /// blake3 of the bytes it read.
    pub read: BTreeMap<String, Key>,
}

impl ImportedImage {
    /// Fails with [`ImportError::Changed`] unless the import read exactly the
    /// files of `keyed` (what [`key_inputs`] returned, which became the key's
    /// `file:<path>` components), with the same hashes.
    ///
    /// A file read on both sides with other content is named first: it is the
    /// cause (`index.json` changed), while files read on one side only are its
    /// consequence (the blobs of another image).
    pub fn check_read(&self, keyed: &BTreeMap<String, Key>) -> Result<(), ImportError> {
        let changed = self
            .read
            .iter()
            .find(|(path, k)| keyed.get(*path).is_some_and(|old| old != *k))
            .map(|(path, _)| path);
        let one_side = || {
            keyed
                .keys()
                .find(|p| !self.read.contains_key(*p))
                .or_else(|| self.read.keys().find(|p| !keyed.contains_key(*p)))
        };
        match changed.or_else(one_side) {
            Some(path) => Err(ImportError::Changed { path: path.clone() }),
            None => Ok(()),
        }
    }
}

/// The hashes of an import's input files, for its key.
#[derive(Debug, Default)]
pub struct KeyInputs {
    /// Workspace-relative path → blake3 of the content: the key's `file:` components.
    pub files: BTreeMap<String, Key>,
    /// New memo entries learnt while hashing (resolved path, stat, hash).
    pub learnt: Vec<(String, MemoEntry)>,
}

/// Why an import failed; every variant names the file concerned. Strings that
/// come from the input are escaped when displayed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{what} `{}` does not exist", escape(path))]
    Missing { path: String, what: &'static str },
    #[error(
        "`{}` resolves outside the workspace through a symbolic link",
        escape(path)
    )]
    Escapes { path: String },
    #[error("cannot read `{}`: {}", escape(path), escape(&source.to_string()))]
    Io { path: String, source: io::Error },
    #[error("`{}` is not a valid {what}: {}", escape(path), escape(reason))]
    Invalid {
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error(
        "blob {} (`{}`) is corrupt: {}",
        escape(digest),
        escape(path),
        escape(reason)
    )]
    BadBlob {
        digest: String,
        path: String,
        reason: String,
    },
    #[error(
        "`{}` has no image for platform {platform} (found: {})",
        escape(path),
        escape(found)
    )]
    NoPlatform {
        path: String,
        platform: String,
        found: String,
    },
    #[error(
        "`{}` holds a {} image; the workspace builds {want}",
        escape(path),
        escape(found)
    )]
    WrongPlatform {
        path: String,
        found: String,
        want: String,
    },
    #[error(
        "layer {index} of `{}` (`{}`) has diff_id {actual} but the config says {}",
        escape(path),
        escape(layer),
        escape(expected)
    )]
    DiffIdMismatch {
        path: String,
        layer: String,
        index: usize,
        expected: String,
        actual: String,
    },
    #[error("`{}` changed while it was imported", escape(path))]
    Changed { path: String },
    #[error("cannot store a blob of `{}` in the cache: {source}", escape(path))]
    Store { path: String, source: io::Error },
}

fn invalid(path: &str, what: &'static str, reason: impl ToString) -> ImportError {
    ImportError::Invalid {
        path: path.to_string(),
        what,
        reason: reason.to_string(),
    }
}

fn store_err(path: &str) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Store {
        path: path.to_string(),
        source,
    }
}

fn parse_digest(s: &str, path: &str) -> Result<Digest, ImportError> {
    s.parse::<Digest>()
        .map_err(|e| invalid(path, "descriptor", e))
}

/// `a` + `/` + `b`, either may be empty.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

// ---------------------------------------------------------------------------
// Entry points

/// Lists and hashes exactly the files [`import`] reads (see the module docs),
/// through the file-hash memo. Checks on the way what the import would check of
/// them (sizes, document digests, the platform), so a bad input fails early.
pub fn key_inputs(
    src: Source<'_>,
    platform: &Platform,
    memo: &FileMemo,
) -> Result<KeyInputs, ImportError> {
    let mut files = Files::new(&src, None)?;
    let mut learnt = Vec::new();
    match src.format {
        Format::OciLayout => {
            files.check_dir(src.rel)?;
            let plan = layout::walk(&mut files, src.rel, platform)?;
            for l in &plan.layers {
                files.hash_through_memo(&l.path, Some((&l.digest, l.size)), memo, &mut learnt)?;
            }
        }
        Format::DockerArchive => {
            files.check_exists(src.rel, Format::DockerArchive)?;
            files.hash_through_memo(src.rel, None, memo, &mut learnt)?;
        }
    }
    Ok(KeyInputs {
        files: files.read,
        learnt,
    })
}

/// Imports the image of `src` for `platform` into `cas`.
pub fn import(
    src: Source<'_>,
    platform: &Platform,
    cas: &Cas,
) -> Result<ImportedImage, ImportError> {
    let mut files = Files::new(&src, Some(cas))?;
    match src.format {
        Format::OciLayout => {
            files.check_dir(src.rel)?;
            layout::import(&mut files, src.rel, platform, cas)
        }
        Format::DockerArchive => {
            files.check_exists(src.rel, Format::DockerArchive)?;
            archive::import(&mut files, src.rel, platform, cas)
        }
    }
}

/// A pinned registry image that a pull stored in the CAS: the chosen image
/// manifest's bytes and what they hash to (the pull checked them against the
/// pinned digest, or against the descriptor of the index that led to them).
#[derive(Debug, Clone, Copy)]
pub struct Pulled<'a> {
    /// The reference, as errors name the image.
    pub reference: &'a str,
    pub manifest: (Digest, u64),
    pub manifest_bytes: &'a [u8],
}

/// Imports a registry image whose blobs a pull stored in the CAS, through the
/// same checks as a layout: the manifest is parsed here (from its verified
/// bytes, not from what the pull made of them), the config is read back from
/// the CAS and must hash to the manifest's descriptor, each layer must be in
/// the CAS intact (re-hashed: what is used is what the digest names), then
/// `assemble` checks the platform and the diff_ids and lists the layers.
pub fn import_pulled(
    pulled: Pulled<'_>,
    platform: &Platform,
    cas: &Cas,
) -> Result<ImportedImage, ImportError> {
    let origin = pulled.reference;
    if Digest::of_bytes(pulled.manifest_bytes) != pulled.manifest.0
        || pulled.manifest_bytes.len() as u64 != pulled.manifest.1
    {
        return Err(ImportError::BadBlob {
            digest: pulled.manifest.0.to_string(),
            path: origin.to_string(),
            reason: "the manifest's bytes do not hash to its digest".into(),
        });
    }
    cas.put_bytes(pulled.manifest_bytes)
        .map_err(store_err(origin))?;
    let (config, layers) =
        layout::parse_manifest(pulled.manifest_bytes, origin, |_| origin.to_string())?;
    let config_bytes = read_cas_document(cas, &config.0, config.1, origin, "image config")?;
    if config_bytes.len() as u64 != config.1 {
        return Err(ImportError::BadBlob {
            digest: config.0.to_string(),
            path: origin.to_string(),
            reason: format!(
                "{} bytes, the descriptor says {}",
                config_bytes.len(),
                config.1
            ),
        });
    }
    let chosen = Chosen {
        manifest: Some(pulled.manifest),
        config,
        config_bytes: &config_bytes,
        config_path: origin,
        layers: &layers,
    };
    assemble(cas, origin, platform, chosen, |l| {
        if cas
            .verify(&l.digest, Some(l.size))
            .map_err(store_err(origin))?
        {
            Ok(())
        } else {
            Err(ImportError::BadBlob {
                digest: l.digest.to_string(),
                path: origin.to_string(),
                reason: "the pull did not leave it intact in the cache".into(),
            })
        }
    })
}

// ---------------------------------------------------------------------------
// Reading workspace files: one rule for the key and the import

/// The workspace files one import (or its key) reads, and their hashes.
struct Files<'a> {
    /// Every file is opened beneath it, through links inside the workspace only.
    root: Root,
    /// Where the import stores the documents it reads; `None` on the key side.
    store: Option<&'a Cas>,
    read: BTreeMap<String, Key>,
}

impl<'a> Files<'a> {
    fn new(src: &Source<'_>, store: Option<&'a Cas>) -> Result<Files<'a>, ImportError> {
        let root = Root::open(src.root).map_err(|e| ImportError::Io {
            path: src.root.display().to_string(),
            source: e,
        })?;
        Ok(Files {
            root,
            store,
            read: BTreeMap::new(),
        })
    }

    /// Where `rel` leads, every symlink (its own too) followed inside the
    /// workspace only.
    fn resolve(&self, rel: &str) -> Result<Located, ImportError> {
        self.root
            .locate(Path::new(rel), true)
            .map_err(|e| self.io_error(rel, e))
    }

    fn io_error(&self, rel: &str, e: io::Error) -> ImportError {
        match input::input_error(&e) {
            Some(input::InputError::Escapes) => ImportError::Escapes {
                path: rel.to_string(),
            },
            _ => ImportError::Io {
                path: rel.to_string(),
                source: e,
            },
        }
    }

    /// `stat` of `rel` (through its links), which must exist.
    fn check_exists(&self, rel: &str, format: Format) -> Result<Stat, ImportError> {
        let missing = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            )
        };
        let stat = self
            .resolve(rel)
            .and_then(|l| l.lstat().map_err(|e| self.io_error(rel, e)));
        match stat {
            Err(ImportError::Io { source, .. }) if missing(&source) => Err(ImportError::Missing {
                path: rel.to_string(),
                what: format.what(),
            }),
            r => r,
        }
    }

    fn check_dir(&self, rel: &str) -> Result<(), ImportError> {
        if self.check_exists(rel, Format::OciLayout)?.is_dir() {
            Ok(())
        } else {
            Err(invalid(
                rel,
                "OCI layout directory",
                "it is not a directory",
            ))
        }
    }

    fn open(&self, rel: &str) -> Result<input::Opened, ImportError> {
        self.root
            .open_regular(Path::new(rel))
            .map_err(|e| self.io_error(rel, e))
    }

    fn record(&mut self, rel: &str, key: Key) {
        self.read.insert(rel.to_string(), key);
    }

    /// Reads a JSON document: `index.json` (`desc` = `None`, capped at
    /// [`JSON_LIMIT`]) or the blob `rel` that descriptor `desc` names, which
    /// must have exactly its size and digest. On the import side, a blob is
    /// also stored in the CAS.
    fn document(
        &mut self,
        rel: &str,
        desc: Option<(&Digest, u64)>,
        what: &'static str,
    ) -> Result<Vec<u8>, ImportError> {
        if let Some((d, size)) = desc
            && size > JSON_LIMIT
        {
            return Err(too_large(rel, what, d));
        }
        let o = self.open(rel)?;
        let limit = match desc {
            Some((d, size)) => {
                check_size(rel, d, o.meta.len(), size)?;
                Limit::Exactly(size)
            }
            None => Limit::AtMost(JSON_LIMIT),
        };
        let (bytes, h) =
            input::read_all(HashReader::with(o.file, limit, Algos::Both), o.meta.len()).map_err(
                |e| match input::input_error(&e) {
                    Some(input::InputError::TooLong {
                        limit: Limit::AtMost(_),
                    }) => invalid(rel, what, e),
                    _ => self.io_error(rel, e),
                },
            )?;
        let (Some(b3), Some(sha)) = (h.blake3, h.sha256) else {
            unreachable!("both hashes were asked for");
        };
        if let Some((d, _)) = desc {
            if sha != *d {
                return Err(ImportError::BadBlob {
                    digest: d.to_string(),
                    path: rel.to_string(),
                    reason: format!("its content hashes to {sha}"),
                });
            }
            if let Some(cas) = self.store {
                cas.put_bytes(&bytes).map_err(store_err(rel))?;
            }
        }
        self.record(rel, b3);
        Ok(bytes)
    }

    /// Copies the blob `rel` into the CAS, hashing it (blake3 for the read
    /// record, sha256 against `d`): it must hold exactly `size` bytes.
    fn copy_blob(
        &mut self,
        rel: &str,
        d: &Digest,
        size: u64,
        cas: &Cas,
    ) -> Result<(), ImportError> {
        let o = self.open(rel)?;
        check_size(rel, d, o.meta.len(), size)?;
        let mut r = HashReader::with(
            io::BufReader::with_capacity(256 * 1024, o.file),
            Limit::Exactly(size),
            Algos::Both,
        );
        // Only an intact stored copy is kept (a damaged one is written again);
        // either way the source is read, verified and hashed.
        let mut writer = if cas.verify(d, Some(size)).map_err(store_err(rel))? {
            None
        } else {
            Some(cas.writer().map_err(store_err(rel))?)
        };
        let read_err = |e: io::Error| self.io_error(rel, e);
        if let Some(w) = &mut writer {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_err(e)),
                };
                w.write_all(&buf[..n]).map_err(store_err(rel))?;
            }
        }
        let h = r.finish().map_err(read_err)?;
        let (Some(b3), Some(sha)) = (h.blake3, h.sha256) else {
            unreachable!("both hashes were asked for");
        };
        if sha != *d {
            return Err(ImportError::BadBlob {
                digest: d.to_string(),
                path: rel.to_string(),
                reason: "its content does not hash to its digest".into(),
            });
        }
        if let Some(w) = writer {
            w.commit_expecting(d).map_err(store_err(rel))?;
        }
        self.record(rel, b3);
        Ok(())
    }

    /// The key side of a large file: its blake3 through the memo (keyed by the
    /// resolved path and its `stat`), else read as the import reads it.
    fn hash_through_memo(
        &mut self,
        rel: &str,
        desc: Option<(&Digest, u64)>,
        memo: &FileMemo,
        learnt: &mut Vec<(String, MemoEntry)>,
    ) -> Result<(), ImportError> {
        let found = self.resolve(rel)?;
        let stat = found.lstat().map_err(|e| self.io_error(rel, e))?;
        // The memo is keyed by the resolved path: re-pointing a link misses.
        let memo_path = self
            .root
            .path()
            .join(&found.resolved)
            .to_string_lossy()
            .into_owned();
        // Anything but a regular file is left to `open_regular` to refuse.
        if stat.is_file() {
            if let Some((d, size)) = desc {
                check_size(rel, d, stat.len(), size)?;
            }
            if let Some(k) = memo.lookup(&memo_path, &stat.key) {
                self.record(rel, k);
                return Ok(());
            }
        }
        let o = found.open_regular().map_err(|e| self.io_error(rel, e))?;
        let size = match desc {
            Some((d, size)) => {
                check_size(rel, d, o.meta.len(), size)?;
                size
            }
            None => o.meta.len(),
        };
        let stat = StatKey::from_metadata(&o.meta);
        let h = input::hash_all(o.file, Limit::Exactly(size), Algos::Blake3)
            .map_err(|e| self.io_error(rel, e))?;
        let Some(k) = h.blake3 else {
            unreachable!("blake3 was asked for");
        };
        learnt.push((memo_path, MemoEntry { stat, hash: k }));
        self.record(rel, k);
        Ok(())
    }
}

fn check_size(rel: &str, d: &Digest, actual: u64, size: u64) -> Result<(), ImportError> {
    if actual == size {
        return Ok(());
    }
    Err(ImportError::BadBlob {
        digest: d.to_string(),
        path: rel.to_string(),
        reason: format!("{actual} bytes, the descriptor says {size}"),
    })
}

fn too_large(rel: &str, what: &'static str, d: &Digest) -> ImportError {
    invalid(
        rel,
        what,
        format!(
            "its descriptor ({d}) is larger than the limit of {} for JSON documents",
            input::human_size(JSON_LIMIT)
        ),
    )
}

/// Reads a JSON blob back from the CAS (an archive's config), within [`JSON_LIMIT`].
fn read_cas_document(
    cas: &Cas,
    d: &Digest,
    size: u64,
    origin: &str,
    what: &'static str,
) -> Result<Vec<u8>, ImportError> {
    if size > JSON_LIMIT {
        return Err(invalid(
            origin,
            what,
            format!(
                "{d} is larger than the limit of {} for JSON documents",
                input::human_size(JSON_LIMIT)
            ),
        ));
    }
    cas.read(d).map_err(store_err(origin))
}

// ---------------------------------------------------------------------------
// Layers: diff_id and listing in one pass

/// Decompresses a stored layer as `media_type` says, once: the sha256 of the
/// stream (its diff_id) and the listing of its entries.
fn layer_facts(
    cas: &Cas,
    d: &Digest,
    media_type: &str,
    origin: &str,
) -> Result<(DiffId, Listing), ImportError> {
    let o = input::open_regular(&cas.blob_path(d)).map_err(store_err(origin))?;
    let file = io::BufReader::with_capacity(256 * 1024, o.file);
    let bad = |e: io::Error| ImportError::BadBlob {
        digest: d.to_string(),
        path: origin.to_string(),
        reason: format!("cannot read it as {media_type}: {e}"),
    };
    let decoded: Box<dyn Read> = match media_type {
        MEDIA_TYPE_GZIP => Box::new(flate2::read::MultiGzDecoder::new(file)),
        MEDIA_TYPE_ZSTD => Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(bad)?),
        _ => Box::new(file),
    };
    let hashing = HashReader::with(decoded, Limit::AtMost(u64::MAX), Algos::Sha256);
    let (listing, rest) =
        scan::list_layer(io::BufReader::with_capacity(256 * 1024, hashing)).map_err(bad)?;
    let h = rest.into_inner().finish().map_err(bad)?;
    let Some(sha) = h.sha256 else {
        unreachable!("sha256 was asked for");
    };
    Ok((DiffId(sha), listing))
}

/// A layer of the chosen image, as its manifest (or `manifest.json`) lists it.
#[derive(Debug, Clone)]
pub(crate) struct PlannedLayer {
    pub digest: Digest,
    pub size: u64,
    /// The OCI media type (docker names already mapped).
    pub media_type: &'static str,
    /// Where errors say the layer is: its blob file in a layout, the archive,
    /// the reference of a registry image.
    pub path: String,
    /// How errors name the layer: its digest, or its member in an archive.
    pub name: String,
}

/// The chosen image's config and layers.
pub(crate) struct Chosen<'a> {
    /// The image's manifest (`None` for an archive: built from the result).
    pub manifest: Option<(Digest, u64)>,
    pub config: (Digest, u64),
    /// The config's bytes, as stored (verified against `config`).
    pub config_bytes: &'a [u8],
    /// Where errors about the config say it is.
    pub config_path: &'a str,
    pub layers: &'a [PlannedLayer],
}

/// The one path every import (layout, archive, registry) takes from "manifest,
/// config and layer blobs" to an [`ImportedImage`]: the config must be for the
/// build `platform` and list one diff_id per layer; each distinct layer is made
/// present in the CAS by `store` (copied from a layout; a no-op for blobs an
/// archive scan or a registry pull already stored, verified), then
/// decompressed once, as its media type says, into its diff_id (which must be
/// the config's) and its listing. An archive has no upstream OCI manifest: one
/// is built from the config and the layers as they are, and stored. `origin`
/// names the source in errors.
pub(crate) fn assemble(
    cas: &Cas,
    origin: &str,
    platform: &Platform,
    chosen: Chosen<'_>,
    mut store: impl FnMut(&PlannedLayer) -> Result<(), ImportError>,
) -> Result<ImportedImage, ImportError> {
    let config: ImageConfiguration = serde_json::from_slice(chosen.config_bytes)
        .map_err(|e| invalid(chosen.config_path, "image config", e))?;
    check_platform(chosen.config_bytes, platform, origin)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != chosen.layers.len() {
        return Err(invalid(
            chosen.config_path,
            "image config",
            format!(
                "{} diff_ids for {} layers in the manifest",
                diff_ids.len(),
                chosen.layers.len()
            ),
        ));
    }
    let mut facts: BTreeMap<Digest, (DiffId, Listing)> = BTreeMap::new();
    let mut layers: Vec<LayerDesc> = Vec::new();
    let mut listings = Vec::new();
    for (i, (l, expected)) in chosen.layers.iter().zip(diff_ids).enumerate() {
        let (diff_id, listing) = match facts.entry(l.digest) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                store(l)?;
                e.insert(layer_facts(cas, &l.digest, l.media_type, &l.path)?)
            }
        };
        check_diff_id(&l.path, &l.name, i, expected, diff_id)?;
        layers.push(LayerDesc {
            digest: l.digest,
            diff_id: *diff_id,
            size: l.size,
            media_type: l.media_type.to_string(),
            listing: None,
        });
        listings.push(listing.clone());
    }
    let (manifest_digest, manifest_size) = match chosen.manifest {
        Some(m) => m,
        None => {
            let manifest = crate::oci::build_manifest(chosen.config, &layers, BTreeMap::new());
            cas.put_bytes(&crate::oci::canonical_json(&manifest))
                .map_err(store_err(origin))?
        }
    };
    Ok(ImportedImage {
        config,
        config_digest: chosen.config.0,
        config_size: chosen.config.1,
        layers,
        listings,
        manifest_digest,
        manifest_size,
        read: BTreeMap::new(),
    })
}

/// The config's `rootfs.diff_ids[index]` must be the layer's uncompressed digest.
fn check_diff_id(
    path: &str,
    layer: &str,
    index: usize,
    expected: &str,
    actual: &DiffId,
) -> Result<(), ImportError> {
    if actual.to_string() == expected {
        return Ok(());
    }
    Err(ImportError::DiffIdMismatch {
        path: path.to_string(),
        layer: layer.to_string(),
        index,
        expected: expected.to_string(),
        actual: actual.to_string(),
    })
}

// ---------------------------------------------------------------------------
// Platforms

/// `(os, architecture, variant)` normalized as containerd does (see the module
/// docs), so that equal platforms compare equal.
pub fn normalize_platform(
    os: &str,
    arch: &str,
    variant: Option<&str>,
) -> (String, String, Option<String>) {
    let os = os.to_ascii_lowercase();
    let variant = variant.filter(|v| !v.is_empty());
    let (arch, variant): (&str, Option<String>) = match (arch, variant) {
        ("i386", _) => ("386", None),
        ("x86_64" | "x86-64" | "amd64", Some("v1")) => ("amd64", None),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v.map(String::from)),
        ("aarch64" | "arm64", Some("8" | "v8" | "v8.0") | None) => ("arm64", None),
        ("aarch64" | "arm64", Some(v)) if !v.starts_with('v') => ("arm64", Some(format!("v{v}"))),
        ("aarch64" | "arm64", v) => ("arm64", v.map(String::from)),
        ("armhf", _) => ("arm", Some("v7".into())),
        ("armel", _) => ("arm", Some("v6".into())),
        ("arm", None | Some("7")) => ("arm", Some("v7".into())),
        ("arm", Some(v @ ("5" | "6" | "8"))) => ("arm", Some(format!("v{v}"))),
        (a, v) => (a, v.map(String::from)),
    };
    (os, arch.to_string(), variant)
}

/// Whether `(os, arch, variant)` is the build platform `want`.
pub fn platform_matches(os: &str, arch: &str, variant: Option<&str>, want: &Platform) -> bool {
    normalize_platform(os, arch, variant)
        == normalize_platform(&want.os, &want.architecture, want.variant.as_deref())
}

/// `os/arch[/variant]` as written in an input.
fn describe_platform(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant.filter(|v| !v.is_empty()) {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    }
}

/// The platform fields of a config, read from its JSON as written.
#[derive(serde::Deserialize, Default)]
pub(crate) struct ConfigPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl ConfigPlatform {
    fn of(bytes: &[u8]) -> Option<ConfigPlatform> {
        serde_json::from_slice(bytes).ok()
    }

    /// The platform of config `bytes`; all empty when they are not a config.
    pub(crate) fn of_config(bytes: &[u8]) -> ConfigPlatform {
        ConfigPlatform::of(bytes).unwrap_or_default()
    }

    pub(crate) fn matches(&self, want: &Platform) -> bool {
        platform_matches(&self.os, &self.architecture, self.variant.as_deref(), want)
    }

    /// `os/arch[/variant]`.
    pub(crate) fn describe(&self) -> String {
        describe_platform(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// The config of the chosen image must be for the build platform.
fn check_platform(config: &[u8], want: &Platform, src: &str) -> Result<(), ImportError> {
    let found = ConfigPlatform::of_config(config);
    if found.matches(want) {
        return Ok(());
    }
    Err(ImportError::WrongPlatform {
        path: src.to_string(),
        found: found.describe(),
        want: want.to_string(),
    })
}

#[cfg(test)]
mod tests;
