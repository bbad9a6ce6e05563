//! Importing images made elsewhere: OCI image layouts and `docker save` tarballs.
//!
//! An import copies an image's blobs into the CAS, verifying each one, and
//! returns its parsed config and layer descriptors, so it can be used as a base
//! like any image imgc built. Imported layers are kept **byte for byte** (same
//! digests as upstream, never recompressed), so an image built on
//! `debian:12` shares its base layers with every other copy of `debian:12`.
//!
//! # OCI image layouts ([`import_oci_layout`])
//!
//! `index.json` is read; if it holds exactly one image manifest, that one is
//! taken as is. Otherwise (several manifests, or a nested image index as
//! `skopeo`/`docker buildx` write for multi-platform images) the manifest whose
//! descriptor platform matches the requested [`Platform`] is chosen, following
//! nested indexes. Every blob (index, manifest, config, layers) is checked
//! against its descriptor's digest and size before use, and each layer is
//! decompressed (by media type) and hashed against the config's `diff_ids`. A
//! mismatch is an [`ImportError`] naming the blob and the file.
//!
//! # Docker archives ([`import_docker_archive`])
//!
//! The tarball is streamed once; every candidate blob (`<id>/layer.tar` of the
//! classic format, `blobs/sha256/<hex>` of Docker ≥ 25, `<hex>.json` configs)
//! goes straight into the CAS while being hashed, so a large archive is never
//! held in memory. `manifest.json` then says which config and layers make up
//! the image (several images: the one whose config matches the platform). Layer
//! files are usually uncompressed tars (media type
//! `application/vnd.oci.image.layer.v1.tar`, diff_id = digest); a gzip (or
//! zstd) layer is recognized by its magic bytes, gets the matching media type,
//! and its diff_id is computed by decompressing it. The diff_ids must equal the
//! config's `rootfs.diff_ids`. Symlinked duplicate layers (`docker save` writes
//! `<id>/layer.tar -> ../<other>/layer.tar`) are followed inside the archive.
//! There is no upstream OCI manifest in such an archive, so one is built with
//! [`crate::oci::build_manifest`] and stored; `manifest_digest` is that one.
//!
//! # What it deliberately does not do
//!
//! - No registry access, no credentials: pulling is a separate, later step.
//! - No conversion: layers are not recompressed, configs are stored as found
//!   (their digest is the upstream image id). Docker layer media types in an OCI
//!   layout are mapped to their OCI names, which describe the same bytes.
//! - Never panics on malformed input: corrupt or truncated files are errors
//!   naming the file.

use crate::cas::Cas;
use crate::hash::{DiffId, Digest, Sha256};
use crate::layer::{MEDIA_TYPE_GZIP, MEDIA_TYPE_TAR, MEDIA_TYPE_ZSTD};
use crate::oci::{LayerDesc, build_manifest, canonical_json};
use crate::spec::model::Platform;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// An image copied into the CAS.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    pub config: ImageConfiguration,
    pub config_digest: Digest,
    pub config_size: u64,
    pub layers: Vec<LayerDesc>,
    pub manifest_digest: Digest,
    pub manifest_size: u64,
}

/// Why an import failed; every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read `{}`: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("`{}` is not a valid {what}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("blob {digest} (`{}`) is corrupt: {reason}", path.display())]
    BadBlob {
        digest: String,
        path: PathBuf,
        reason: String,
    },
    #[error("`{}` has no image for platform {platform} (found: {found})", path.display())]
    NoPlatform {
        path: PathBuf,
        platform: String,
        found: String,
    },
    #[error("layer {index} of `{}` (`{layer}`) has diff_id {actual} but the config says {expected}", path.display())]
    DiffIdMismatch {
        path: PathBuf,
        layer: String,
        index: usize,
        expected: String,
        actual: String,
    },
    #[error("cannot store a blob of `{}` in the cache: {source}", path.display())]
    Store { path: PathBuf, source: io::Error },
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, what: &'static str, reason: impl ToString) -> ImportError {
    ImportError::Invalid {
        path: path.to_path_buf(),
        what,
        reason: reason.to_string(),
    }
}

fn parse_digest(s: &str, path: &Path) -> Result<Digest, ImportError> {
    s.parse::<Digest>()
        .map_err(|e| invalid(path, "descriptor", e))
}

// ---------------------------------------------------------------------------
// OCI image layouts

/// Imports the image of an OCI image layout directory for `platform`.
pub fn import_oci_layout(
    dir: &Path,
    platform: &Platform,
    cas: &Cas,
) -> Result<ImportedImage, ImportError> {
    let index_path = dir.join("index.json");
    let bytes = fs::read(&index_path).map_err(io_err(&index_path))?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|e| invalid(&index_path, "image index", e))?;
    let mdesc = select_manifest(dir, &index_path, &index, platform, cas, 0)?;
    let mdigest = parse_digest(mdesc.digest().as_ref(), &index_path)?;
    let mpath = import_blob(dir, &mdigest, mdesc.size(), cas)?;
    let manifest: ImageManifest = serde_json::from_slice(&read_cas(cas, &mdigest, &mpath)?)
        .map_err(|e| invalid(&mpath, "image manifest", e))?;

    let cdesc = manifest.config();
    let cdigest = parse_digest(cdesc.digest().as_ref(), &mpath)?;
    let cpath = import_blob(dir, &cdigest, cdesc.size(), cas)?;
    let config: ImageConfiguration = serde_json::from_slice(&read_cas(cas, &cdigest, &cpath)?)
        .map_err(|e| invalid(&cpath, "image config", e))?;

    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(
            &cpath,
            "image config",
            format!(
                "{} diff_ids for {} layers in the manifest",
                diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (i, (l, expected)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let digest = parse_digest(l.digest().as_ref(), &mpath)?;
        let lpath = import_blob(dir, &digest, l.size(), cas)?;
        let media_type = oci_layer_media_type(l.media_type().as_ref()).ok_or_else(|| {
            invalid(
                &lpath,
                "layer",
                format!("unsupported media type `{}`", l.media_type()),
            )
        })?;
        let diff_id = uncompressed_digest(cas, &digest, media_type, &lpath)?;
        check_diff_id(&lpath, &digest.to_string(), i, expected, &diff_id)?;
        layers.push(LayerDesc {
            digest,
            diff_id,
            size: l.size(),
            media_type: media_type.to_string(),
            listing: None,
        });
    }
    Ok(ImportedImage {
        config,
        config_digest: cdigest,
        config_size: cdesc.size(),
        layers,
        manifest_digest: mdigest,
        manifest_size: mdesc.size(),
    })
}

/// Picks the image manifest of `index` for `platform`, following nested indexes.
fn select_manifest(
    dir: &Path,
    index_path: &Path,
    index: &ImageIndex,
    platform: &Platform,
    cas: &Cas,
    depth: usize,
) -> Result<Descriptor, ImportError> {
    if depth > 4 {
        return Err(invalid(index_path, "image index", "nested too deeply"));
    }
    let is_index = |d: &Descriptor| matches!(d.media_type().as_ref(), OCI_INDEX | DOCKER_LIST);
    let is_manifest =
        |d: &Descriptor| matches!(d.media_type().as_ref(), OCI_MANIFEST | DOCKER_MANIFEST);
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| is_index(d) || is_manifest(d))
        .collect();
    let chosen = if candidates.len() == 1 {
        candidates[0]
    } else {
        let matching: Vec<&Descriptor> = candidates
            .iter()
            .copied()
            .filter(|d| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| platform_matches(p, platform))
            })
            .collect();
        match matching.as_slice() {
            [one] => *one,
            // Identical manifests listed twice (e.g. under two ref names).
            [first, rest @ ..] if rest.iter().all(|d| d.digest() == first.digest()) => *first,
            _ => {
                let found: Vec<String> = candidates
                    .iter()
                    .map(|d| match d.platform() {
                        Some(p) => {
                            let mut s = format!("{}/{}", p.os(), p.architecture());
                            if let Some(v) = p.variant() {
                                s = format!("{s}/{v}");
                            }
                            s
                        }
                        None => format!("{} without platform", d.digest()),
                    })
                    .collect();
                return Err(ImportError::NoPlatform {
                    path: index_path.to_path_buf(),
                    platform: platform.to_string(),
                    found: if found.is_empty() {
                        "no image manifests".into()
                    } else {
                        found.join(", ")
                    },
                });
            }
        }
    };
    if is_manifest(chosen) {
        return Ok(chosen.clone());
    }
    let digest = parse_digest(chosen.digest().as_ref(), index_path)?;
    let path = import_blob(dir, &digest, chosen.size(), cas)?;
    let nested: ImageIndex = serde_json::from_slice(&read_cas(cas, &digest, &path)?)
        .map_err(|e| invalid(&path, "image index", e))?;
    select_manifest(dir, &path, &nested, platform, cas, depth + 1)
}

fn platform_matches(p: &oci_spec::image::Platform, want: &Platform) -> bool {
    let default_variant = |arch: &str| match arch {
        "arm64" => Some("v8"),
        _ => None,
    };
    let theirs = p
        .variant()
        .as_deref()
        .or(default_variant(&want.architecture));
    let ours = want
        .variant
        .as_deref()
        .or(default_variant(&want.architecture));
    p.os().to_string() == want.os
        && p.architecture().to_string() == want.architecture
        && theirs == ours
}

/// OCI media type for a layer media type, docker names mapped to OCI ones.
fn oci_layer_media_type(m: &str) -> Option<&'static str> {
    match m {
        MEDIA_TYPE_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Some(MEDIA_TYPE_GZIP)
        }
        MEDIA_TYPE_ZSTD => Some(MEDIA_TYPE_ZSTD),
        MEDIA_TYPE_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Some(MEDIA_TYPE_TAR),
        _ => None,
    }
}

/// Copies `blobs/sha256/<hex>` of a layout into the CAS, checking size and digest.
fn import_blob(dir: &Path, d: &Digest, size: u64, cas: &Cas) -> Result<PathBuf, ImportError> {
    let path = dir.join("blobs").join("sha256").join(d.hex());
    let meta = fs::metadata(&path).map_err(io_err(&path))?;
    if meta.len() != size {
        return Err(ImportError::BadBlob {
            digest: d.to_string(),
            path,
            reason: format!("{} bytes, the descriptor says {size}", meta.len()),
        });
    }
    match cas.import_file(&path, d) {
        Ok(_) => Ok(path),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(ImportError::BadBlob {
            digest: d.to_string(),
            path,
            reason: "its content does not hash to its digest".into(),
        }),
        Err(e) => Err(ImportError::Store { path, source: e }),
    }
}

fn read_cas(cas: &Cas, d: &Digest, origin: &Path) -> Result<Vec<u8>, ImportError> {
    cas.read(d).map_err(|e| ImportError::Store {
        path: origin.to_path_buf(),
        source: e,
    })
}

/// sha256 of a stored layer after decompressing it as `media_type` says.
fn uncompressed_digest(
    cas: &Cas,
    d: &Digest,
    media_type: &str,
    origin: &Path,
) -> Result<DiffId, ImportError> {
    let path = cas.blob_path(d);
    let file = File::open(&path).map_err(|e| ImportError::Store {
        path: origin.to_path_buf(),
        source: e,
    })?;
    let file = io::BufReader::with_capacity(256 * 1024, file);
    let res = match media_type {
        MEDIA_TYPE_GZIP => hash_all(flate2::read::MultiGzDecoder::new(file)),
        MEDIA_TYPE_ZSTD => zstd::stream::read::Decoder::with_buffer(file).and_then(hash_all),
        _ => hash_all(file),
    };
    res.map(DiffId).map_err(|e| ImportError::BadBlob {
        digest: d.to_string(),
        path: origin.to_path_buf(),
        reason: format!("cannot decompress it as {media_type}: {e}"),
    })
}

fn hash_all(mut r: impl Read) -> io::Result<Digest> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(sha.finish()),
            Ok(n) => sha.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Docker archives

/// One file of a docker archive, as seen while streaming it.
enum ArchiveFile {
    /// Stored in the CAS.
    Blob { digest: Digest, size: u64 },
    /// A symlink to another member (path relative to the archive root).
    Link(String),
}

#[derive(serde::Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Imports the image of a `docker save` / `podman save` tarball for `platform`.
pub fn import_docker_archive(
    tarball: &Path,
    platform: &Platform,
    cas: &Cas,
) -> Result<ImportedImage, ImportError> {
    let corrupt = |reason: String| invalid(tarball, "docker archive", reason);
    let file = File::open(tarball).map_err(io_err(tarball))?;
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(256 * 1024, file));
    let mut files: BTreeMap<String, ArchiveFile> = BTreeMap::new();
    let mut manifest_json: Option<Vec<u8>> = None;
    let entries = archive.entries().map_err(|e| corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = normalize_member(&raw);
        match entry.header().entry_type() {
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                files.insert(
                    name.clone(),
                    ArchiveFile::Link(resolve_member(dir, &target)),
                );
            }
            t if t.is_file() => {
                if name == "manifest.json" {
                    let mut buf = Vec::new();
                    entry
                        .read_to_end(&mut buf)
                        .map_err(|e| corrupt(format!("`{name}`: {e}")))?;
                    manifest_json = Some(buf);
                } else if is_blob_candidate(&name) {
                    let mut w = cas.writer().map_err(|e| ImportError::Store {
                        path: tarball.to_path_buf(),
                        source: e,
                    })?;
                    io::copy(&mut entry, &mut w).map_err(|e| corrupt(format!("`{name}`: {e}")))?;
                    w.flush().map_err(|e| corrupt(format!("`{name}`: {e}")))?;
                    let (digest, size) = w.commit().map_err(|e| ImportError::Store {
                        path: tarball.to_path_buf(),
                        source: e,
                    })?;
                    if let Some(hex) = name.strip_prefix("blobs/sha256/")
                        && hex != digest.hex()
                    {
                        return Err(ImportError::BadBlob {
                            digest: format!("sha256:{hex}"),
                            path: tarball.to_path_buf(),
                            reason: format!("member `{name}` hashes to {digest}"),
                        });
                    }
                    files.insert(name, ArchiveFile::Blob { digest, size });
                }
            }
            _ => {}
        }
    }
    let manifest_json =
        manifest_json.ok_or_else(|| corrupt("no `manifest.json` in the archive".into()))?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&manifest_json)
        .map_err(|e| corrupt(format!("`manifest.json`: {e}")))?;

    let lookup = |member: &str| -> Result<(Digest, u64), ImportError> {
        let mut name = normalize_member(member);
        for _ in 0..16 {
            match files.get(&name) {
                Some(ArchiveFile::Blob { digest, size }) => return Ok((*digest, *size)),
                Some(ArchiveFile::Link(t)) => name = t.clone(),
                None => break,
            }
        }
        Err(corrupt(format!(
            "`manifest.json` names `{member}`, which is not in the archive"
        )))
    };

    // Choose the image: the only one, or the one whose config fits `platform`.
    let mut chosen = None;
    let mut found = Vec::new();
    for entry in &entries {
        let (cdigest, csize) = lookup(&entry.config)?;
        let cbytes = read_cas(cas, &cdigest, tarball)?;
        let config: ImageConfiguration = serde_json::from_slice(&cbytes)
            .map_err(|e| corrupt(format!("config `{}`: {e}", entry.config)))?;
        let matches = config.os().to_string() == platform.os
            && config.architecture().to_string() == platform.architecture;
        found.push(format!("{}/{}", config.os(), config.architecture()));
        if entries.len() == 1 || (matches && chosen.is_none()) {
            chosen = Some((entry, cdigest, csize, config));
        }
    }
    let Some((entry, config_digest, config_size, config)) = chosen else {
        return Err(ImportError::NoPlatform {
            path: tarball.to_path_buf(),
            platform: platform.to_string(),
            found: if found.is_empty() {
                "no images".into()
            } else {
                found.join(", ")
            },
        });
    };

    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(corrupt(format!(
            "config `{}` lists {} diff_ids for {} layers",
            entry.config,
            diff_ids.len(),
            entry.layers.len()
        )));
    }
    let mut layers = Vec::new();
    for (i, (member, expected)) in entry.layers.iter().zip(diff_ids).enumerate() {
        let (digest, size) = lookup(member)?;
        let media_type = sniff_media_type(cas, &digest, tarball)?;
        let diff_id = if media_type == MEDIA_TYPE_TAR {
            DiffId(digest)
        } else {
            uncompressed_digest(cas, &digest, media_type, tarball)?
        };
        check_diff_id(tarball, member, i, expected, &diff_id)?;
        layers.push(LayerDesc {
            digest,
            diff_id,
            size,
            media_type: media_type.to_string(),
            listing: None,
        });
    }
    let manifest = build_manifest((config_digest, config_size), &layers, BTreeMap::new());
    let (manifest_digest, manifest_size) =
        cas.put_bytes(&canonical_json(&manifest))
            .map_err(|e| ImportError::Store {
                path: tarball.to_path_buf(),
                source: e,
            })?;
    Ok(ImportedImage {
        config,
        config_digest,
        config_size,
        layers,
        manifest_digest,
        manifest_size,
    })
}

/// `./a//b/` → `a/b`.
fn normalize_member(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Resolves a symlink target relative to the member's directory.
fn resolve_member(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|c| !c.is_empty()).collect()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Members that may be a config or a layer; everything else is metadata.
/// The config's `rootfs.diff_ids[index]` must be the layer's uncompressed digest.
fn check_diff_id(
    path: &Path,
    layer: &str,
    index: usize,
    expected: &str,
    actual: &DiffId,
) -> Result<(), ImportError> {
    if actual.to_string() == expected {
        return Ok(());
    }
    Err(ImportError::DiffIdMismatch {
        path: path.to_path_buf(),
        layer: layer.to_string(),
        index,
        expected: expected.to_string(),
        actual: actual.to_string(),
    })
}

fn is_blob_candidate(name: &str) -> bool {
    name.starts_with("blobs/sha256/")
        || name.ends_with("/layer.tar")
        // skopeo and podman write layers as `<hex>.tar` at the top level
        || (name.ends_with(".tar") && !name.contains('/'))
        || (name.ends_with(".json") && !name.contains('/') && name != "index.json")
}

/// Media type of a stored layer from its first bytes.
fn sniff_media_type(cas: &Cas, d: &Digest, origin: &Path) -> Result<&'static str, ImportError> {
    let mut magic = [0u8; 4];
    let mut f = File::open(cas.blob_path(d)).map_err(|e| ImportError::Store {
        path: origin.to_path_buf(),
        source: e,
    })?;
    let mut n = 0;
    while n < magic.len() {
        match f.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ImportError::Store {
                    path: origin.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => MEDIA_TYPE_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => MEDIA_TYPE_ZSTD,
        _ => MEDIA_TYPE_TAR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry, EntryData, LayerFormat, normalize, write_layer};
    use crate::oci::{build_config, check_layout, write_layout};
    use crate::spec::model::{Compression, ImageSpec};

    fn amd64() -> Platform {
        Platform::parse("linux/amd64").unwrap()
    }

    fn cas_in(dir: &Path, name: &str) -> Cas {
        Cas::open(&dir.join(name).join("v1")).unwrap()
    }

    /// A one-layer image stored in `cas`: (manifest digest+size, blobs).
    fn image(cas: &Cas, content: &str, platform: &Platform) -> ((Digest, u64), Vec<Digest>) {
        let entries = normalize(vec![Entry {
            path: "etc/hello".into(),
            data: EntryData::Bytes(content.as_bytes().to_vec()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }])
        .unwrap();
        let l = write_layer(
            &entries,
            &LayerFormat::default_for(Compression::Zstd),
            0,
            cas,
        )
        .unwrap();
        let spec = ImageSpec {
            env: vec![("A".into(), "1".into())],
            ..Default::default()
        };
        let cfg = build_config(None, &spec, platform, &[l.diff_id], 0, &["//b:l".into()]);
        let c = cas.put_bytes(&canonical_json(&cfg)).unwrap();
        let desc = LayerDesc {
            digest: l.digest,
            diff_id: l.diff_id,
            size: l.size,
            media_type: l.media_type,
            listing: None,
        };
        let m = build_manifest(c, &[desc], BTreeMap::new());
        let m = cas.put_bytes(&canonical_json(&m)).unwrap();
        (m, vec![c.0, l.digest])
    }

    #[test]
    fn oci_layout_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let src = cas_in(dir.path(), "a");
        let (m, blobs) = image(&src, "hi", &amd64());
        let layout = dir.path().join("layout");
        write_layout(&layout, &src, m, &blobs, &["latest".to_string()]).unwrap();
        let dst = cas_in(dir.path(), "b");
        let img = import_oci_layout(&layout, &amd64(), &dst).unwrap();
        assert_eq!(img.manifest_digest, m.0);
        assert_eq!(img.config_digest, blobs[0]);
        assert_eq!(img.layers.len(), 1);
        assert_eq!(img.layers[0].digest, blobs[1]);
        assert_eq!(img.layers[0].media_type, MEDIA_TYPE_ZSTD);
        assert_eq!(
            img.config.rootfs().diff_ids()[0],
            img.layers[0].diff_id.to_string()
        );
        for d in [m.0, blobs[0], blobs[1]] {
            assert!(dst.verify(&d, None).unwrap(), "{d}");
        }
    }

    #[test]
    fn oci_layout_picks_the_platform() {
        let dir = tempfile::tempdir().unwrap();
        let src = cas_in(dir.path(), "a");
        let arm = Platform::parse("linux/arm64").unwrap();
        let (m1, b1) = image(&src, "amd", &amd64());
        let (m2, b2) = image(&src, "arm", &arm);
        let layout = dir.path().join("layout");
        let blob_dir = layout.join("blobs/sha256");
        fs::create_dir_all(&blob_dir).unwrap();
        for d in [m1.0, m2.0].iter().chain(&b1).chain(&b2) {
            fs::copy(src.blob_path(d), blob_dir.join(d.hex())).unwrap();
        }
        // A nested index with both platforms, referenced from index.json.
        let desc = |m: (Digest, u64), arch: &str| {
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": m.0.to_string(), "size": m.1,
                "platform": {"os": "linux", "architecture": arch}})
        };
        let nested = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [desc(m1, "amd64"), desc(m2, "arm64")]});
        let nested = serde_json::to_vec(&nested).unwrap();
        let nd = Digest::of_bytes(&nested);
        fs::write(blob_dir.join(nd.hex()), &nested).unwrap();
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_INDEX, "digest": nd.to_string(), "size": nested.len()}]});
        fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();

        let dst = cas_in(dir.path(), "b");
        assert_eq!(
            import_oci_layout(&layout, &arm, &dst)
                .unwrap()
                .manifest_digest,
            m2.0
        );
        assert_eq!(
            import_oci_layout(&layout, &amd64(), &dst)
                .unwrap()
                .manifest_digest,
            m1.0
        );
        let s390 = Platform::parse("linux/s390x").unwrap();
        let err = import_oci_layout(&layout, &s390, &dst).unwrap_err();
        assert!(matches!(err, ImportError::NoPlatform { .. }), "{err}");
        assert!(err.to_string().contains("linux/arm64"), "{err}");
    }

    #[test]
    fn oci_layout_corrupt_blob_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let src = cas_in(dir.path(), "a");
        let (m, blobs) = image(&src, "hi", &amd64());
        let layout = dir.path().join("layout");
        write_layout(&layout, &src, m, &blobs, &["latest".to_string()]).unwrap();
        // Same size, different bytes (the file is a hard link: replace it).
        let p = layout.join("blobs/sha256").join(blobs[1].hex());
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::remove_file(&p).unwrap();
        fs::write(&p, &bytes).unwrap();
        assert!(check_layout(&layout).is_err());
        let dst = cas_in(dir.path(), "b");
        let err = import_oci_layout(&layout, &amd64(), &dst).unwrap_err();
        assert!(matches!(err, ImportError::BadBlob { .. }), "{err}");
        assert!(err.to_string().contains(&blobs[1].hex()), "{err}");
        assert!(!dst.contains(&blobs[1]));
        // Wrong size.
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"short").unwrap();
        let err = import_oci_layout(&layout, &amd64(), &dst).unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
    }

    /// An uncompressed layer tar with one file.
    fn layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, content).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    /// A `docker save`-style archive. `new_format`: Docker ≥ 25 `blobs/sha256`.
    /// Layers: a plain tar, a gzip one, and (classic format) a symlinked duplicate.
    fn docker_archive(new_format: bool, diff_id_override: Option<&str>) -> (Vec<u8>, Vec<Vec<u8>>) {
        let l1 = layer_tar("a.txt", b"one");
        let l2_tar = layer_tar("b.txt", b"two");
        let l2 = gzip(&l2_tar);
        let mut diff_ids = vec![
            Digest::of_bytes(&l1).to_string(),
            Digest::of_bytes(&l2_tar).to_string(),
        ];
        if !new_format {
            diff_ids.push(diff_ids[0].clone());
        }
        if let Some(d) = diff_id_override {
            diff_ids[0] = d.to_string();
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "ExposedPorts": null},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "container_config": {"Hostname": ""}, "docker_version": "24.0.0"
        }))
        .unwrap();
        let ch = Digest::of_bytes(&config).hex();
        let mut b = tar::Builder::new(Vec::new());
        let (cname, names) = if new_format {
            let n1 = format!("blobs/sha256/{}", Digest::of_bytes(&l1).hex());
            let n2 = format!("blobs/sha256/{}", Digest::of_bytes(&l2).hex());
            let cn = format!("blobs/sha256/{ch}");
            add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
            add(&mut b, &n1, &l1);
            add(&mut b, &n2, &l2);
            add(&mut b, &cn, &config);
            (cn, vec![n1, n2])
        } else {
            add(&mut b, "aaaa/layer.tar", &l1);
            add(&mut b, "aaaa/VERSION", b"1.0");
            add(&mut b, "bbbb/layer.tar", &l2);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "cccc/layer.tar", "../aaaa/layer.tar")
                .unwrap();
            let cn = format!("{ch}.json");
            add(&mut b, &cn, &config);
            (
                cn,
                vec![
                    "aaaa/layer.tar".to_string(),
                    "bbbb/layer.tar".to_string(),
                    "cccc/layer.tar".to_string(),
                ],
            )
        };
        let manifest =
            serde_json::json!([{"Config": cname, "RepoTags": ["x:latest"], "Layers": names}]);
        add(
            &mut b,
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        add(&mut b, "repositories", b"{}");
        (b.into_inner().unwrap(), vec![l1, l2])
    }

    #[test]
    fn docker_archives_both_formats() {
        for new_format in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (tarball, layers) = docker_archive(new_format, None);
            let path = dir.path().join("image.tar");
            fs::write(&path, &tarball).unwrap();
            let cas = cas_in(dir.path(), "c");
            let img = import_docker_archive(&path, &amd64(), &cas).unwrap();
            let n = if new_format { 2 } else { 3 };
            assert_eq!(img.layers.len(), n);
            assert_eq!(img.layers[0].digest, Digest::of_bytes(&layers[0]));
            assert_eq!(img.layers[0].diff_id.0, img.layers[0].digest);
            assert_eq!(img.layers[0].media_type, MEDIA_TYPE_TAR);
            assert_eq!(img.layers[1].digest, Digest::of_bytes(&layers[1]));
            assert_eq!(img.layers[1].media_type, MEDIA_TYPE_GZIP);
            assert_ne!(img.layers[1].diff_id.0, img.layers[1].digest);
            assert_eq!(img.layers[1].size, layers[1].len() as u64);
            if !new_format {
                assert_eq!(img.layers[2], img.layers[0]);
            }
            assert_eq!(
                img.config
                    .config()
                    .as_ref()
                    .unwrap()
                    .cmd()
                    .as_ref()
                    .unwrap(),
                &vec!["sh".to_string()]
            );
            // Everything referenced is in the CAS and a layout of it is valid.
            assert!(
                cas.verify(&img.config_digest, Some(img.config_size))
                    .unwrap()
            );
            let mut blobs = vec![img.config_digest];
            blobs.extend(img.layers.iter().map(|l| l.digest));
            let m = cas.read(&img.manifest_digest).unwrap();
            let out = dir.path().join("out");
            write_layout(
                &out,
                &cas,
                (img.manifest_digest, m.len() as u64),
                &blobs,
                &["x".to_string()],
            )
            .unwrap();
            check_layout(&out).unwrap();
        }
    }

    #[test]
    fn docker_archive_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cas = cas_in(dir.path(), "c");
        let path = dir.path().join("image.tar");
        // Wrong diff_id in the config.
        let wrong = Digest::of_bytes(b"nope").to_string();
        let (tarball, _) = docker_archive(false, Some(&wrong));
        fs::write(&path, &tarball).unwrap();
        let err = import_docker_archive(&path, &amd64(), &cas).unwrap_err();
        assert!(
            matches!(err, ImportError::DiffIdMismatch { index: 0, .. }),
            "{err}"
        );
        // Truncated at many points: always an error naming the file, never a panic.
        let (tarball, _) = docker_archive(true, None);
        for cut in [
            0,
            100,
            512,
            1000,
            1536,
            tarball.len() / 2,
            tarball.len() - 1100,
        ] {
            fs::write(&path, &tarball[..cut]).unwrap();
            let err = import_docker_archive(&path, &amd64(), &cas).unwrap_err();
            assert!(err.to_string().contains("image.tar"), "{cut}: {err}");
        }
        // Garbage.
        fs::write(&path, vec![0x5a; 4096]).unwrap();
        assert!(import_docker_archive(&path, &amd64(), &cas).is_err());
        // A blob whose name is not its digest.
        let mut b = tar::Builder::new(Vec::new());
        add(
            &mut b,
            &format!("blobs/sha256/{}", Digest::of_bytes(b"x").hex()),
            b"y",
        );
        fs::write(&path, b.into_inner().unwrap()).unwrap();
        let err = import_docker_archive(&path, &amd64(), &cas).unwrap_err();
        assert!(matches!(err, ImportError::BadBlob { .. }), "{err}");
        // Missing file.
        let err = import_docker_archive(&dir.path().join("nope.tar"), &amd64(), &cas).unwrap_err();
        assert!(err.to_string().contains("nope.tar"), "{err}");
    }

    #[test]
    fn member_paths() {
        assert_eq!(normalize_member("./a//b/"), "a/b");
        assert_eq!(
            resolve_member("cccc", "../aaaa/layer.tar"),
            "aaaa/layer.tar"
        );
        assert_eq!(resolve_member("x", "/y/z"), "y/z");
    }
}
