//! Image archives: one built image as a single tar file, for `imgc export`.
//!
//! # Formats
//!
//! - **`docker-archive`** (the default) is the tarball `docker save` writes since
//!   Docker 25: at once an OCI image layout (`oci-layout`, `index.json`,
//!   `blobs/sha256/<hex>`) and a classic `docker save` archive (`manifest.json`
//!   naming the config and the layer files by their blob paths, with the image's
//!   names as `RepoTags`). `docker load` reads `manifest.json`; `podman load` and
//!   containerd read either side.
//! - **`oci-archive`** is the same tar without `manifest.json`: a tar of an OCI
//!   image layout, what `skopeo copy oci-archive:FILE ...` reads.
//!
//! Both hold the very blobs of the build (the manifest, the config and the
//! layers, compressed as they are in the store: gzip or zstd, never recompressed),
//! so the manifest digest in the archive is the image's digest everywhere else.
//!
//! # Names
//!
//! Each name is a tagged image reference ([`ArchiveName`]; no tag means
//! `latest`, a digest is refused: `docker load` takes only tags). The archive
//! carries it twice in `index.json`, as Docker 25 writes it, and once in
//! `manifest.json`:
//!
//! | where | form | for `alpine` | for `registry.example.com/acme/api:1.4.2` |
//! |---|---|---|---|
//! | `index.json` `io.containerd.image.name` | fully qualified | `docker.io/library/alpine:latest` | `registry.example.com/acme/api:1.4.2` |
//! | `index.json` `org.opencontainers.image.ref.name` | the tag alone | `latest` | `1.4.2` |
//! | `manifest.json` `RepoTags` | fully qualified | `docker.io/library/alpine:latest` | `registry.example.com/acme/api:1.4.2` |
//!
//! `docker save` writes `RepoTags` in the familiar form (`alpine:latest`), but
//! both loaders accept the fully qualified one and only it means the same to
//! both: Docker normalizes either to `docker.io/library/alpine` (and prints
//! `alpine:latest`), while `podman load` (4.3) names an image loaded from a
//! familiar `acme/api:1.0` `localhost/acme/api:1.0`.
//!
//! `index.json` holds one descriptor of the manifest per name (none named: one
//! descriptor without annotations). The legacy `repositories` file of older
//! `docker save` archives is not written: every reader of a Docker 25 archive
//! takes the names from `manifest.json` or `index.json`.
//!
//! # Determinism
//!
//! The same image exported with the same names is the same bytes on any
//! machine: entries sorted bytewise by path (`blobs/`, `blobs/sha256/`, the
//! blobs by digest, `index.json`, `manifest.json`, `oci-layout`), explicit
//! directory entries, ustar headers with every field set (mode 0644 for files
//! and 0755 for directories, uid/gid 0, empty user and group names, mtime the
//! workspace's source-date-epoch), a PAX `size` record before a blob too large
//! for the ustar field, canonical JSON (sorted keys, no whitespace), and the
//! two zero blocks that end a tar.
//!
//! # Trust
//!
//! Every blob is streamed from the store (a layer is never held in memory) and
//! hashed as it goes into the archive: a blob that is missing, is not a regular
//! file, has another size than its descriptor says, or does not hash to its
//! digest fails the export ([`ExportError::Blob`]) before the archive is
//! complete, so a damaged store never yields an archive that looks whole.
//! [`write_file`] only renames a complete, fsynced archive over the
//! destination.

use crate::action::ImageOut;
use crate::cas::Cas;
use crate::hash::{Digest, Sha256};
use crate::oci;
use crate::reference::{RefError, Reference};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The archive formats `imgc export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Docker 25 `docker save` tarball, also an OCI image layout.
    DockerArchive,
    /// A tar of an OCI image layout.
    OciArchive,
}

impl Format {
    /// The name users write (and `skopeo` uses as transport).
    pub fn name(self) -> &'static str {
        match self {
            Format::DockerArchive => "docker-archive",
            Format::OciArchive => "oci-archive",
        }
    }
}

/// Docker's own annotation for the full name of an image in `index.json`.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Largest manifest read back from the store (registries refuse larger ones).
const MANIFEST_LIMIT: u64 = 4 << 20;
/// Largest size a ustar header holds (11 octal digits); a larger blob gets a PAX
/// `size` record.
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
const PAX_HEADER_NAME: &str = "././@PaxHeader";
const BLOCK: usize = 512;
const COPY_BUF: usize = 1 << 20;

/// A name for the image in an archive: a reference with a tag (`latest` when
/// none is written) and no digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArchiveName(Reference);

/// Why a string cannot name an image in an archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(transparent)]
    Invalid(#[from] RefError),
    #[error(
        "`{0}` carries a digest: an archive names its image by tag (`docker load` refuses digests)"
    )]
    Digest(String),
}

impl ArchiveName {
    /// Parses `s` as Docker does (`alpine` is `docker.io/library/alpine:latest`).
    pub fn parse(s: &str) -> Result<ArchiveName, NameError> {
        let mut r = Reference::parse(s)?;
        if r.digest.is_some() {
            return Err(NameError::Digest(s.to_string()));
        }
        if r.tag.is_none() {
            r.tag = Some("latest".to_string());
        }
        Ok(ArchiveName(r))
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        self.0.tag.as_deref().unwrap_or("latest")
    }

    /// The fully qualified name: `docker.io/library/alpine:latest`.
    pub fn full(&self) -> String {
        self.0.to_string()
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A blob of the image could not be used from the store.
    #[error("blob `{digest}` of the image in the cache: {reason}")]
    Blob { digest: Digest, reason: String },
    /// Writing the archive failed.
    #[error("cannot write the archive: {0}")]
    Write(#[source] io::Error),
    /// The destination is not a place for an archive (a directory, a special
    /// file): a mistake on the command line.
    #[error("{0}")]
    Refused(String),
    /// The destination's directory could not be used, or putting the archive
    /// in place failed.
    #[error("{what}: {source}")]
    Destination {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// The `index.json` of an archive: one descriptor of the manifest per name.
pub fn index_json(manifest: (Digest, u64), media_type: &str, names: &[ArchiveName]) -> Vec<u8> {
    let descriptor = |annotations: Option<Value>| {
        let mut d = json!({
            "mediaType": media_type,
            "digest": manifest.0.to_string(),
            "size": manifest.1,
        });
        if let Some(a) = annotations {
            d["annotations"] = a;
        }
        d
    };
    let manifests: Vec<Value> = if names.is_empty() {
        vec![descriptor(None)]
    } else {
        names
            .iter()
            .map(|n| {
                descriptor(Some(json!({
                    ANNOTATION_CONTAINERD_NAME: n.full(),
                    oci::ANNOTATION_REF_NAME: n.tag(),
                })))
            })
            .collect()
    };
    oci::canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_TYPE_INDEX,
        "manifests": manifests,
    }))
}

/// The `manifest.json` of a docker archive: the config and the layers by their
/// paths in the archive, in the image's order, and the names as `RepoTags`.
pub fn manifest_json(img: &ImageOut, names: &[ArchiveName]) -> Vec<u8> {
    let path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    oci::canonical_json(&json!([{
        "Config": path(&img.config),
        "RepoTags": names.iter().map(ArchiveName::full).collect::<Vec<_>>(),
        "Layers": img.layers.iter().map(|l| path(&l.digest)).collect::<Vec<_>>(),
    }]))
}

/// Writes the archive of `img` in `format` to `w`, streaming every blob from
/// `cas` and verifying it on the way. `names` are used in the given order
/// (callers sort them); `mtime` is every entry's mtime. Returns the bytes
/// written. On error the archive is incomplete (no end-of-archive blocks).
pub fn write_archive(
    cas: &Cas,
    img: &ImageOut,
    names: &[ArchiveName],
    format: Format,
    mtime: u64,
    w: &mut dyn Write,
) -> Result<u64, ExportError> {
    let manifest = read_small(cas, &img.manifest, img.manifest_size)?;
    let media_type = manifest_media_type(&manifest).map_err(|reason| ExportError::Blob {
        digest: img.manifest,
        reason,
    })?;
    // Every blob once, sorted by digest (= by path in the archive).
    let mut blobs: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    blobs.insert(img.manifest.hex(), (img.manifest, img.manifest_size));
    blobs.insert(img.config.hex(), (img.config, img.config_size));
    for l in &img.layers {
        blobs.insert(l.digest.hex(), (l.digest, l.size));
    }
    let mut t = TarWriter {
        w,
        mtime,
        written: 0,
        buf: vec![0; COPY_BUF],
    };
    t.dir("blobs/")?;
    t.dir("blobs/sha256/")?;
    for (hex, (digest, size)) in &blobs {
        let name = format!("blobs/sha256/{hex}");
        if *digest == img.manifest {
            t.file(&name, &manifest)?;
        } else {
            t.blob(&name, cas, digest, *size)?;
        }
    }
    t.file(
        "index.json",
        &index_json((img.manifest, img.manifest_size), &media_type, names),
    )?;
    if format == Format::DockerArchive {
        t.file("manifest.json", &manifest_json(img, names))?;
    }
    t.file("oci-layout", oci::OCI_LAYOUT)?;
    t.finish()
}

/// The `mediaType` a manifest declares (OCI's when it declares none, as the
/// image spec allows).
fn manifest_media_type(bytes: &[u8]) -> Result<String, String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    match v.get("mediaType") {
        None => Ok(oci::MEDIA_TYPE_MANIFEST.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err("the manifest's `mediaType` is not a string".to_string()),
    }
}

/// Reads a small blob (the manifest) whole, checking its size and digest.
fn read_small(cas: &Cas, d: &Digest, size: u64) -> Result<Vec<u8>, ExportError> {
    let bad = |reason: String| ExportError::Blob { digest: *d, reason };
    let (file, len) = cas.open_blob(d).map_err(|e| bad(blob_problem(&e)))?;
    if len != size || size > MANIFEST_LIMIT {
        return Err(bad(format!(
            "it is {len} bytes, not the {size} its descriptor says"
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    let actual = Digest::of_bytes(&bytes);
    if bytes.len() as u64 != size || actual != *d {
        return Err(bad(format!(
            "it is damaged (its content hashes to {actual})"
        )));
    }
    Ok(bytes)
}

fn blob_problem(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "it is missing (was the cache collected meanwhile?)".to_string(),
        io::ErrorKind::InvalidData => "it is damaged (not a regular file)".to_string(),
        _ => format!("cannot open it: {e}"),
    }
}

/// Writes tar entries with every header field fixed.
struct TarWriter<'a> {
    w: &'a mut dyn Write,
    mtime: u64,
    written: u64,
    buf: Vec<u8>,
}

impl TarWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        self.w.write_all(bytes).map_err(ExportError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, size: u64) -> Result<(), ExportError> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn header(&mut self, name: &str, kind: tar::EntryType, size: u64) -> Result<(), ExportError> {
        if size > USTAR_MAX_SIZE {
            let record = crate::layer::pax_record("size", &size.to_string());
            let h = header(
                PAX_HEADER_NAME,
                tar::EntryType::XHeader,
                record.len() as u64,
                self.mtime,
            );
            self.put(h.as_bytes())?;
            self.put(&record)?;
            self.pad(record.len() as u64)?;
        }
        let h = header(name, kind, size, self.mtime);
        self.put(h.as_bytes())
    }

    fn dir(&mut self, name: &str) -> Result<(), ExportError> {
        self.header(name, tar::EntryType::Directory, 0)
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<(), ExportError> {
        self.header(name, tar::EntryType::Regular, bytes.len() as u64)?;
        self.put(bytes)?;
        self.pad(bytes.len() as u64)
    }

    /// Streams a stored blob into the archive, hashing it: exactly `size`
    /// bytes that hash to `d`, else an error.
    fn blob(&mut self, name: &str, cas: &Cas, d: &Digest, size: u64) -> Result<(), ExportError> {
        let bad = |reason: String| ExportError::Blob { digest: *d, reason };
        let (mut file, len) = cas.open_blob(d).map_err(|e| bad(blob_problem(&e)))?;
        if len != size {
            return Err(bad(format!(
                "it is {len} bytes, not the {size} its descriptor says"
            )));
        }
        self.header(name, tar::EntryType::Regular, size)?;
        let mut hasher = Sha256::new();
        let mut left = size;
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) => return Err(bad("it shrank while being read".to_string())),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(bad(format!("cannot read it: {e}"))),
                };
                hasher.update(&buf[..n]);
                self.put(&buf[..n])?;
                left -= n as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        result?;
        let actual = hasher.finish();
        if actual != *d {
            return Err(bad(format!(
                "it is damaged (its content hashes to {actual}); `imgc cache verify` removes damaged blobs"
            )));
        }
        self.pad(size)
    }

    fn finish(mut self) -> Result<u64, ExportError> {
        self.put(&[0u8; 2 * BLOCK])?;
        self.w.flush().map_err(ExportError::Write)?;
        Ok(self.written)
    }
}

/// One ustar header with every field set: uid/gid 0, no user or group name,
/// mode 0755 for directories and 0644 otherwise.
fn header(name: &str, kind: tar::EntryType, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().expect("a ustar header");
        u.name.fill(0);
        u.name[..name.len()].copy_from_slice(name.as_bytes());
        u.linkname.fill(0);
        u.uname = [0; 32];
        u.gname = [0; 32];
        u.prefix = [0; 155];
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    // Past the ustar limit the PAX record written before says the size.
    h.set_size(size.min(USTAR_MAX_SIZE));
    h.set_mtime(mtime);
    h.set_device_major(0).expect("ustar has device fields");
    h.set_device_minor(0).expect("ustar has device fields");
    h.set_cksum();
    h
}

/// Checks that `dest` can take an archive before any work: its directory
/// exists, and it is nothing or a regular file or a symbolic link (which the
/// final rename replaces, never following it). A directory or a special file
/// (a device, a FIFO, a socket) is refused. `shown` is how the user wrote it.
pub fn check_destination(dest: &Path, shown: &str) -> Result<(), ExportError> {
    let parent = parent_dir(dest);
    match fs::metadata(&parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ExportError::Refused(format!(
                "cannot write `{shown}`: `{}` is not a directory",
                parent.display()
            )));
        }
        Err(source) => {
            return Err(ExportError::Destination {
                what: format!(
                    "cannot write `{shown}`: its directory `{}`",
                    parent.display()
                ),
                source,
            });
        }
    }
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ExportError::Destination {
            what: format!("cannot write `{shown}`"),
            source,
        }),
        Ok(m) if m.is_file() || m.file_type().is_symlink() => Ok(()),
        Ok(m) if m.is_dir() => Err(ExportError::Refused(format!(
            "`{shown}` is a directory: name the archive file to write"
        ))),
        Ok(_) => Err(ExportError::Refused(format!(
            "`{shown}` is not a regular file (a device, FIFO or socket): imgc replaces only a regular file or a symbolic link"
        ))),
    }
}

fn parent_dir(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes a file atomically: `write` fills a new temporary file beside `dest`
/// (`.NAME.XXXXXX.imgc-tmp`), which is flushed, fsynced and renamed over `dest`
/// only when `write` succeeded, and the directory is fsynced. On any error the
/// temporary file is removed and `dest` is untouched: whatever was there
/// stays. The rename replaces a symbolic link at `dest` itself, never what
/// it points to. The file gets mode 0666 less the umask, as a new file would.
pub fn write_file<T>(
    dest: &Path,
    shown: &str,
    write: impl FnOnce(&mut dyn Write) -> Result<T, ExportError>,
) -> Result<T, ExportError> {
    use std::os::unix::fs::PermissionsExt;
    check_destination(dest, shown)?;
    let parent = parent_dir(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ExportError::Refused(format!("`{shown}` does not name a file")))?;
    // Room for the dot, the random part and the suffix within a file name's 255 bytes.
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = &name[..cut];
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".imgc-tmp")
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(&parent)
        .map_err(|source| ExportError::Destination {
            what: format!("cannot create a temporary file in `{}`", parent.display()),
            source,
        })?;
    let value = {
        let mut out = io::BufWriter::with_capacity(COPY_BUF, tmp.as_file());
        let value = write(&mut out)?;
        out.flush().map_err(ExportError::Write)?;
        value
    };
    tmp.as_file().sync_all().map_err(ExportError::Write)?;
    // Checked again: what stands at `dest` may have changed during the export.
    check_destination(dest, shown)?;
    tmp.persist(dest).map_err(|e| ExportError::Destination {
        what: format!("cannot put the archive at `{shown}`"),
        source: e.error,
    })?;
    if let Ok(dir) = fs::File::open(&parent) {
        let _ = dir.sync_all();
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::LayerDesc;
    use crate::hash::DiffId;

    fn name(s: &str) -> ArchiveName {
        ArchiveName::parse(s).unwrap()
    }

    #[test]
    fn names_are_fully_qualified_with_a_tag() {
        let cases = [
            ("alpine", "docker.io/library/alpine:latest", "latest"),
            ("acme/api:1.0", "docker.io/acme/api:1.0", "1.0"),
            ("docker.io/library/x:2", "docker.io/library/x:2", "2"),
            (
                "registry.example.com/acme/api:1.4.2",
                "registry.example.com/acme/api:1.4.2",
                "1.4.2",
            ),
            (
                "127.0.0.1:5000/base",
                "127.0.0.1:5000/base:latest",
                "latest",
            ),
        ];
        for (given, full, tag) in cases {
            let n = name(given);
            assert_eq!(n.full(), full, "{given}");
            assert_eq!(n.tag(), tag, "{given}");
        }
    }

    #[test]
    fn a_name_with_a_digest_or_bad_syntax_is_refused() {
        let hex = "a".repeat(64);
        assert!(matches!(
            ArchiveName::parse(&format!("x:1@sha256:{hex}")),
            Err(NameError::Digest(_))
        ));
        assert!(matches!(
            ArchiveName::parse("Upper/Case"),
            Err(NameError::Invalid(_))
        ));
        assert!(ArchiveName::parse("").is_err());
    }

    fn image(cas: &Cas) -> ImageOut {
        let (config, config_size) = cas.put_bytes(br#"{"rootfs":{}}"#).unwrap();
        let (layer, layer_size) = cas.put_bytes(b"not really a layer").unwrap();
        let layers = vec![LayerDesc {
            digest: layer,
            diff_id: DiffId(layer),
            size: layer_size,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            listing: None,
        }];
        let manifest = oci::canonical_json(&oci::build_manifest(
            (config, config_size),
            &layers,
            BTreeMap::new(),
        ));
        let (manifest, manifest_size) = cas.put_bytes(&manifest).unwrap();
        ImageOut {
            manifest,
            manifest_size,
            config,
            config_size,
            layers,
        }
    }

    fn entries(bytes: &[u8]) -> Vec<(String, tar::Header, Vec<u8>)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().clone(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn archive_entries_are_sorted_with_fixed_headers() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let img = image(&cas);
        let names = [name("x:1")];
        let mut out = Vec::new();
        let n = write_archive(
            &cas,
            &img,
            &names,
            Format::DockerArchive,
            1_700_000_000,
            &mut out,
        )
        .unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % BLOCK, 0);
        assert!(out[out.len() - 2 * BLOCK..].iter().all(|b| *b == 0));
        let es = entries(&out);
        let paths: Vec<&str> = es.iter().map(|(p, _, _)| p.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        assert_eq!(paths[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(
            paths[paths.len() - 3..],
            ["index.json", "manifest.json", "oci-layout"]
        );
        assert_eq!(paths.len(), 2 + 3 + 3);
        for (p, h, data) in &es {
            assert_eq!(h.mtime().unwrap(), 1_700_000_000, "{p}");
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "{p}");
            assert_eq!(h.username_bytes(), Some(&b""[..]), "{p}");
            assert_eq!(h.groupname_bytes(), Some(&b""[..]), "{p}");
            let dir = p.ends_with('/');
            assert_eq!(h.mode().unwrap(), if dir { 0o755 } else { 0o644 }, "{p}");
            if let Some(hex) = p.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(Digest::of_bytes(data).hex(), hex);
            }
        }
        let manifest: Value = serde_json::from_slice(&es[es.len() - 2].2).unwrap();
        assert_eq!(
            manifest,
            json!([{
                "Config": format!("blobs/sha256/{}", img.config.hex()),
                "RepoTags": ["docker.io/library/x:1"],
                "Layers": [format!("blobs/sha256/{}", img.layers[0].digest.hex())],
            }])
        );
        let index: Value = serde_json::from_slice(&es[es.len() - 3].2).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"],
            json!({"io.containerd.image.name": "docker.io/library/x:1", "org.opencontainers.image.ref.name": "1"})
        );

        // The OCI archive is the same without manifest.json.
        let mut oci_out = Vec::new();
        write_archive(
            &cas,
            &img,
            &names,
            Format::OciArchive,
            1_700_000_000,
            &mut oci_out,
        )
        .unwrap();
        let oci_paths: Vec<String> = entries(&oci_out).into_iter().map(|e| e.0).collect();
        let without: Vec<&str> = paths
            .into_iter()
            .filter(|p| *p != "manifest.json")
            .collect();
        assert_eq!(oci_paths, without);
    }

    #[test]
    fn a_damaged_blob_fails_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let img = image(&cas);
        let path = cas.blob_path(&img.layers[0].digest);
        let mut perms = fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        fs::set_permissions(&path, perms).unwrap();
        fs::write(&path, b"not really a layeR").unwrap(); // same size
        let err =
            write_archive(&cas, &img, &[], Format::OciArchive, 0, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&err, ExportError::Blob { digest, .. } if *digest == img.layers[0].digest),
            "{err}"
        );
        assert!(err.to_string().contains("damaged"), "{err}");
        fs::remove_file(&path).unwrap();
        let err =
            write_archive(&cas, &img, &[], Format::OciArchive, 0, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn an_unnamed_image_has_one_plain_descriptor() {
        let d = Digest::of_bytes(b"m");
        let v: Value =
            serde_json::from_slice(&index_json((d, 1), oci::MEDIA_TYPE_MANIFEST, &[])).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
        assert!(v["manifests"][0].get("annotations").is_none());
    }

    #[test]
    fn a_huge_blob_gets_a_pax_size_record() {
        let mut out = Vec::new();
        let mut t = TarWriter {
            w: &mut out,
            mtime: 0,
            written: 0,
            buf: Vec::new(),
        };
        t.header(
            "blobs/sha256/x",
            tar::EntryType::Regular,
            USTAR_MAX_SIZE + 1,
        )
        .unwrap();
        assert_eq!(out.len(), 3 * BLOCK);
        let pax = tar::Header::from_byte_slice(&out[..BLOCK]);
        assert_eq!(pax.entry_type(), tar::EntryType::XHeader);
        let record = b"19 size=8589934592\n";
        assert_eq!(pax.size().unwrap(), record.len() as u64);
        assert_eq!(&out[BLOCK..BLOCK + record.len()], record);
        let h = tar::Header::from_byte_slice(&out[2 * BLOCK..]);
        assert_eq!(h.path_bytes().as_ref(), b"blobs/sha256/x");
        assert_eq!(h.size().unwrap(), USTAR_MAX_SIZE);
        // Small blobs need no record.
        let mut small = Vec::new();
        let mut t = TarWriter {
            w: &mut small,
            mtime: 0,
            written: 0,
            buf: Vec::new(),
        };
        t.header("x", tar::EntryType::Regular, USTAR_MAX_SIZE)
            .unwrap();
        assert_eq!(small.len(), BLOCK);
    }

    #[test]
    fn write_file_leaves_the_destination_alone_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        fs::write(&dest, b"old").unwrap();
        let err = write_file(&dest, "out.tar", |w| {
            w.write_all(b"partial").map_err(ExportError::Write)?;
            Err::<(), _>(ExportError::Write(io::Error::other("boom")))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        write_file(&dest, "out.tar", |w| {
            w.write_all(b"new").map_err(ExportError::Write)
        })
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_file_takes_the_longest_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join(format!("{}.tar", "é".repeat(125)));
        write_file(&dest, "long", |w| {
            w.write_all(b"tar").map_err(ExportError::Write)
        })
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"tar");
    }

    #[test]
    fn write_file_replaces_a_symlink_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link.tar");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_file(&link, "link.tar", |w| {
            w.write_all(b"tar").map_err(ExportError::Write)
        })
        .unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(fs::read(&link).unwrap(), b"tar");
    }

    #[test]
    fn special_files_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_destination(dir.path(), "d").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        let err = check_destination(Path::new("/dev/null"), "/dev/null").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let missing = dir.path().join("no/such/dir/x.tar");
        let err = check_destination(&missing, "no/such/dir/x.tar").unwrap_err();
        assert!(err.to_string().contains("its directory"), "{err}");
    }
}
