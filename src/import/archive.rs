//! Docker archives (`docker save`, `podman save`, `skopeo copy docker-archive:`):
//! one streaming pass over the tarball, then the image picked from
//! `manifest.json` (see the parent module's docs).

use super::scan::Scanner;
use super::{
    Chosen, ConfigPlatform, Files, ImportError, ImportedImage, JSON_LIMIT, PlannedLayer, assemble,
    invalid, read_cas_document, store_err,
};
use crate::cas::Cas;
use crate::hash::Digest;
use crate::input::{self, Algos, HashReader, Limit};
use crate::layer::{MEDIA_TYPE_GZIP, MEDIA_TYPE_TAR, MEDIA_TYPE_ZSTD};
use crate::spec::model::Platform;
use oci_spec::image::ImageConfiguration;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::io::{self, Read, Write};

/// One file of a docker archive, as seen while streaming it.
enum ArchiveFile {
    /// Stored in the CAS.
    Blob { digest: Digest, size: u64 },
    /// A symlink or hard link to another member (path relative to the archive root).
    Link(String),
}

#[derive(serde::Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Imports the image of the tarball `rel` for `platform`.
pub(super) fn import(
    files: &mut Files<'_>,
    rel: &str,
    platform: &Platform,
    cas: &Cas,
) -> Result<ImportedImage, ImportError> {
    let corrupt = |reason: String| invalid(rel, "docker archive", reason);
    let o = files.open(rel)?;
    let size = o.meta.len();
    let mut buffered = io::BufReader::with_capacity(
        256 * 1024,
        HashReader::with(o.file, Limit::Exactly(size), Algos::Blake3),
    );
    // A read error is the file's (it changed, or IO failed); anything else the
    // scanner reports is the archive's.
    let read_failed = |e: io::Error| -> ImportError {
        let format_error = input::input_error(&e).is_none()
            && matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            );
        if format_error {
            corrupt(e.to_string())
        } else {
            files.io_error(rel, e)
        }
    };
    let mut members: BTreeMap<String, ArchiveFile> = BTreeMap::new();
    let mut manifest_json: Option<Vec<u8>> = None;
    let mut scanner = Scanner::new(&mut buffered);
    while let Some(m) = scanner.next_member().map_err(read_failed)? {
        let name = normalize_member(&m.path_lossy());
        let target = m
            .link
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        match m.kind {
            tar::EntryType::Symlink => {
                let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                members.insert(
                    name.clone(),
                    ArchiveFile::Link(resolve_member(dir, &target)),
                );
            }
            tar::EntryType::Link => {
                members.insert(name.clone(), ArchiveFile::Link(normalize_member(&target)));
            }
            t if t.is_file() => {
                if name == "manifest.json" {
                    if m.size > JSON_LIMIT {
                        return Err(corrupt(format!(
                            "`manifest.json` holds {} bytes, over the limit of {} for JSON documents",
                            m.size,
                            input::human_size(JSON_LIMIT)
                        )));
                    }
                    let mut buf = Vec::with_capacity(m.size as usize);
                    scanner.data().read_to_end(&mut buf).map_err(read_failed)?;
                    manifest_json = Some(buf);
                } else if is_blob_candidate(&name) {
                    let mut w = cas.writer().map_err(store_err(rel))?;
                    let mut data = scanner.data();
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let n = match data.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(read_failed(e)),
                        };
                        w.write_all(&buf[..n]).map_err(store_err(rel))?;
                    }
                    let (digest, size) = w.commit().map_err(store_err(rel))?;
                    if let Some(hex) = name.strip_prefix("blobs/sha256/")
                        && hex != digest.hex()
                    {
                        return Err(ImportError::BadBlob {
                            digest: format!("sha256:{hex}"),
                            path: rel.to_string(),
                            reason: format!("member `{name}` hashes to {digest}"),
                        });
                    }
                    members.insert(name, ArchiveFile::Blob { digest, size });
                }
            }
            _ => {}
        }
    }
    // The whole file is hashed, bytes after the end of the archive included.
    let hashes = buffered
        .into_inner()
        .finish()
        .map_err(|e| files.io_error(rel, e))?;
    let Some(b3) = hashes.blake3 else {
        unreachable!("blake3 was asked for");
    };
    files.record(rel, b3);

    let manifest_json =
        manifest_json.ok_or_else(|| corrupt("no `manifest.json` in the archive".into()))?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&manifest_json)
        .map_err(|e| corrupt(format!("`manifest.json`: {e}")))?;

    let lookup = |member: &str| -> Result<(Digest, u64), ImportError> {
        let mut name = normalize_member(member);
        for _ in 0..16 {
            match members.get(&name) {
                Some(ArchiveFile::Blob { digest, size }) => return Ok((*digest, *size)),
                Some(ArchiveFile::Link(t)) => name = t.clone(),
                None => break,
            }
        }
        Err(corrupt(format!(
            "`manifest.json` names `{member}`, which is not in the archive"
        )))
    };

    // Choose the image: the only one, or the first whose config fits `platform`.
    let mut chosen = None;
    let mut found = Vec::new();
    for entry in &entries {
        let (cdigest, csize) = lookup(&entry.config)?;
        let cbytes = read_cas_document(cas, &cdigest, csize, rel, "docker archive")?;
        // Parsed here too, so a broken config is named by its member.
        let _: ImageConfiguration = serde_json::from_slice(&cbytes)
            .map_err(|e| corrupt(format!("config `{}`: {e}", entry.config)))?;
        let fields = ConfigPlatform::of(&cbytes);
        let matches = fields.as_ref().is_some_and(|p| p.matches(platform));
        found.push(fields.map_or_else(|| "unknown".to_string(), |p| p.describe()));
        if chosen.is_none() && (entries.len() == 1 || matches) {
            chosen = Some((entry, cdigest, csize, cbytes));
        }
    }
    let Some((entry, config_digest, config_size, cbytes)) = chosen else {
        return Err(ImportError::NoPlatform {
            path: rel.to_string(),
            platform: platform.to_string(),
            found: if found.is_empty() {
                "no images".into()
            } else {
                found.join(", ")
            },
        });
    };
    // Each distinct layer's media type, sniffed once.
    let mut media: BTreeMap<Digest, &'static str> = BTreeMap::new();
    let mut planned = Vec::new();
    for member in &entry.layers {
        let (digest, size) = lookup(member)?;
        let media_type = match media.entry(digest) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => *e.insert(sniff_media_type(cas, &digest, rel)?),
        };
        planned.push(PlannedLayer {
            digest,
            size,
            media_type,
            path: rel.to_string(),
            name: member.clone(),
        });
    }
    let chosen = Chosen {
        manifest: None,
        config: (config_digest, config_size),
        config_bytes: &cbytes,
        config_path: rel,
        layers: &planned,
    };
    // Every blob was stored (and hashed) while the archive was scanned.
    let mut img = assemble(cas, rel, platform, chosen, |_| Ok(()))?;
    img.read = std::mem::take(&mut files.read);
    Ok(img)
}

/// `./a//b/` → `a/b`.
pub(super) fn normalize_member(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Resolves a symlink target relative to the member's directory.
pub(super) fn resolve_member(dir: &str, target: &str) -> String {
    let base = if target.starts_with('/') { "" } else { dir };
    crate::fileset::lexical_join(base, target)
}

/// Members that may be a config or a layer; everything else is metadata.
fn is_blob_candidate(name: &str) -> bool {
    name.starts_with("blobs/sha256/")
        || name.ends_with("/layer.tar")
        // skopeo and podman write layers as `<hex>.tar` at the top level
        || (name.ends_with(".tar") && !name.contains('/'))
        || (name.ends_with(".json") && !name.contains('/') && name != "index.json")
}

/// Media type of a stored layer from its first bytes.
fn sniff_media_type(cas: &Cas, d: &Digest, origin: &str) -> Result<&'static str, ImportError> {
    let mut magic = [0u8; 4];
    let o = input::open_regular(&cas.blob_path(d)).map_err(store_err(origin))?;
    let mut f = o.file;
    let mut n = 0;
    while n < magic.len() {
        match f.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(store_err(origin)(e)),
        }
    }
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => MEDIA_TYPE_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => MEDIA_TYPE_ZSTD,
        _ => MEDIA_TYPE_TAR,
    })
}
