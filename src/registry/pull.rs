//! Fetching a pinned image from a registry into the CAS, every byte verified.
//!
//! [`fetch_image`] reads the manifest (or index) the reference's digest names
//! and checks it hashes to that digest; an index (OCI, or a Docker manifest
//! list) is resolved to the workspace platform by the same rule as an OCI
//! layout's index (`import::layout::choose`), nested indexes followed up to
//! [`MAX_NESTING`] levels, each verified against its descriptor. The chosen
//! manifest, the indexes on the way and the config go into the CAS; so does
//! every layer, streamed and hashed on the way, through the CAS's own writer
//! ([`crate::cas::BlobWriter::commit_expecting`]): a blob that does not hash to
//! its digest, or has another size than its descriptor says, is never stored.
//! A blob the CAS already holds intact is not fetched again. Layers are kept
//! byte for byte, with the media types the manifest gives them.
//!
//! What is not done here, but by the import action that calls this: decompressing
//! the layers to check their `diff_ids` and list them (shared with the layout
//! import).

use super::client::{Client, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, RegistryError};
use crate::cas::Cas;
use crate::hash::Digest;
use crate::input::escape;
use crate::reference::Reference;
use crate::spec::model::Platform;
use oci_spec::image::{ImageIndex, ImageManifest};
use std::io;

/// How many image indexes may be nested below the one pinned.
pub const MAX_NESTING: usize = 4;

/// A layer as the pulled manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledLayer {
    pub digest: Digest,
    pub size: u64,
    /// As written in the manifest (OCI or Docker names).
    pub media_type: String,
}

/// An image fetched into the CAS.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference as pinned (its digest may name an index).
    pub reference: Reference,
    /// The image manifest chosen for the platform (the pinned digest itself
    /// unless that is an index).
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config_size: u64,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<PulledLayer>,
    /// Every blob this image consists of in the registry's repository (indexes on
    /// the way, manifest, config, layers): what a push may mount from there.
    pub blobs: Vec<Digest>,
    /// Blobs fetched over the network by this call, and their bytes (those
    /// already in the CAS are not counted).
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
}

/// Why a pull failed; each names the reference.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("`{reference}` is not pinned: pull it by digest (`@sha256:…`)")]
    NotPinned { reference: String },
    #[error("`{reference}`: {source}")]
    Registry {
        reference: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("`{reference}`: the {what} {digest} is not valid: {}", escape(reason))]
    Invalid {
        reference: String,
        what: &'static str,
        digest: Digest,
        reason: String,
    },
    #[error(
        "`{reference}` has no image for platform {platform} (found: {})",
        escape(found)
    )]
    NoPlatform {
        reference: String,
        platform: String,
        found: String,
    },
    #[error(
        "`{reference}` holds a {} image; the workspace builds {want}",
        escape(found)
    )]
    WrongPlatform {
        reference: String,
        found: String,
        want: String,
    },
    #[error("`{reference}`: cannot store blob {digest} in the cache: {source}")]
    Store {
        reference: String,
        digest: Digest,
        #[source]
        source: io::Error,
    },
}

/// Fetches the image `r` (pinned by digest) for `platform` into `cas`.
pub fn fetch_image(
    client: &Client,
    r: &Reference,
    platform: &Platform,
    cas: &Cas,
) -> Result<PulledImage, PullError> {
    let name = r.to_string();
    let Some(pinned) = r.digest else {
        return Err(PullError::NotPinned { reference: name });
    };
    let reg = |source| PullError::Registry {
        reference: name.clone(),
        source: Box::new(source),
    };
    let invalid = |what, digest, reason: String| PullError::Invalid {
        reference: name.clone(),
        what,
        digest,
        reason,
    };
    let store = |digest, source| PullError::Store {
        reference: name.clone(),
        digest,
        source,
    };
    let mut blobs = Vec::new();
    let mut fetched = (0usize, 0u64);

    // The pinned document, then down the indexes to an image manifest.
    let mut doc = client.get_manifest(r).map_err(reg)?;
    let mut depth = 0;
    loop {
        cas.put_bytes(&doc.bytes)
            .map_err(|e| store(doc.digest, e))?;
        blobs.push(doc.digest);
        let kind = document_kind(&doc.bytes)
            .map_err(|why| invalid("manifest or index", doc.digest, why))?;
        if kind == Kind::Manifest {
            break;
        }
        if depth >= MAX_NESTING {
            return Err(invalid(
                "image index",
                doc.digest,
                "indexes are nested too deeply".into(),
            ));
        }
        let index: ImageIndex = serde_json::from_slice(&doc.bytes)
            .map_err(|e| invalid("image index", doc.digest, e.to_string()))?;
        let chosen = crate::import::layout::choose(&index, platform).map_err(|found| {
            PullError::NoPlatform {
                reference: name.clone(),
                platform: platform.to_string(),
                found,
            }
        })?;
        let d: Digest = chosen
            .digest()
            .as_ref()
            .parse()
            .map_err(|e: crate::hash::BadDigest| invalid("image index", doc.digest, e.0))?;
        let size = chosen.size();
        let next = client.get_manifest(&r.pinned(d)).map_err(reg)?;
        if next.bytes.len() as u64 != size {
            return Err(invalid(
                "image index",
                doc.digest,
                format!(
                    "it lists {d} with {size} bytes, the registry sent {}",
                    next.bytes.len()
                ),
            ));
        }
        doc = next;
        depth += 1;
    }

    let manifest: ImageManifest = serde_json::from_slice(&doc.bytes)
        .map_err(|e| invalid("image manifest", doc.digest, e.to_string()))?;
    let parse = |s: &str| -> Result<Digest, PullError> {
        s.parse()
            .map_err(|e: crate::hash::BadDigest| invalid("image manifest", doc.digest, e.0))
    };

    // The config: small, read whole, verified, stored, platform checked.
    let cdesc = manifest.config();
    let config_digest = parse(cdesc.digest().as_ref())?;
    let config_size = cdesc.size();
    if config_size > crate::import::JSON_LIMIT {
        return Err(invalid(
            "image manifest",
            doc.digest,
            format!("its config is {config_size} bytes, more than imgc reads"),
        ));
    }
    fetch_blob(client, r, cas, &config_digest, config_size, &mut fetched).map_err(|e| match e {
        Fetch::Registry(e) => reg(e),
        Fetch::Store(e) => store(config_digest, e),
    })?;
    blobs.push(config_digest);
    let config_bytes = cas
        .read(&config_digest)
        .map_err(|e| store(config_digest, e))?;
    check_platform(&config_bytes, platform).map_err(|found| PullError::WrongPlatform {
        reference: name.clone(),
        found,
        want: platform.to_string(),
    })?;

    let mut layers = Vec::new();
    for l in manifest.layers() {
        let digest = parse(l.digest().as_ref())?;
        let layer = PulledLayer {
            digest,
            size: l.size(),
            media_type: l.media_type().to_string(),
        };
        if !blobs.contains(&digest) {
            fetch_blob(client, r, cas, &digest, layer.size, &mut fetched).map_err(|e| match e {
                Fetch::Registry(e) => reg(e),
                Fetch::Store(e) => store(digest, e),
            })?;
            blobs.push(digest);
        }
        layers.push(layer);
    }

    Ok(PulledImage {
        reference: r.pinned(pinned),
        manifest_digest: doc.digest,
        manifest_size: doc.bytes.len() as u64,
        manifest_media_type: doc.media_type,
        manifest_bytes: doc.bytes,
        config_digest,
        config_size,
        config_bytes,
        layers,
        blobs,
        blobs_fetched: fetched.0,
        bytes_fetched: fetched.1,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Manifest,
    Index,
}

/// An index or a manifest, decided by the document's bytes alone (its own
/// `mediaType`, else its shape), never by the response's `Content-Type`: the
/// digest pins the bytes, not the headers, so two registries serving the same
/// digest must give the same image. A document shaped as both is refused.
fn document_kind(bytes: &[u8]) -> Result<Kind, String> {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let shape: Shape = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let index_shaped = shape.manifests.is_some();
    let manifest_shaped = shape.config.is_some() || shape.layers.is_some();
    if index_shaped && manifest_shaped {
        return Err("it has both `manifests` and `config`/`layers`".into());
    }
    match shape.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) if !manifest_shaped => Ok(Kind::Index),
        Some(OCI_MANIFEST | DOCKER_MANIFEST) if !index_shaped => Ok(Kind::Manifest),
        Some(OCI_INDEX | DOCKER_LIST | OCI_MANIFEST | DOCKER_MANIFEST) => {
            Err("its `mediaType` does not match its fields".into())
        }
        _ if index_shaped => Ok(Kind::Index),
        _ => Ok(Kind::Manifest),
    }
}

/// The config's platform must be the build platform; `Err` describes what it is.
fn check_platform(config: &[u8], want: &Platform) -> Result<(), String> {
    let found = crate::import::ConfigPlatform::of_config(config);
    if found.matches(want) {
        return Ok(());
    }
    Err(found.describe())
}

enum Fetch {
    Registry(RegistryError),
    Store(io::Error),
}

/// Puts blob `d` of `r`'s repository into `cas` unless an intact copy is there.
/// A connection that breaks mid-blob is tried again (the partial copy dropped).
fn fetch_blob(
    client: &Client,
    r: &Reference,
    cas: &Cas,
    d: &Digest,
    size: u64,
    fetched: &mut (usize, u64),
) -> Result<(), Fetch> {
    if cas.verify(d, Some(size)).map_err(Fetch::Store)? {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut w = cas.writer().map_err(Fetch::Store)?;
        match client.get_blob_to(r, d, size, &mut w) {
            Ok(_) => {
                w.commit_expecting(d).map_err(Fetch::Store)?;
                fetched.0 += 1;
                fetched.1 += size;
                return Ok(());
            }
            // `w` is dropped: its temp file goes with it.
            Err(e) if e.is_transient() && attempt < super::client::ATTEMPTS => continue,
            Err(e) => return Err(Fetch::Registry(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned bytes alone decide whether a document is an index: a header
    /// (which no digest covers) cannot turn one pinned digest into two images.
    #[test]
    fn a_pinned_document_is_an_index_or_a_manifest_by_its_bytes_alone() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(document_kind(index), Ok(Kind::Index));
        assert_eq!(document_kind(manifest), Ok(Kind::Manifest));
        let typed = format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert_eq!(document_kind(typed.as_bytes()), Ok(Kind::Index));
        let both = br#"{"manifests":[],"config":{},"layers":[]}"#;
        assert!(document_kind(both).is_err());
        let lying = format!(r#"{{"mediaType":"{OCI_MANIFEST}","manifests":[]}}"#);
        assert!(document_kind(lying.as_bytes()).is_err());
        assert!(document_kind(b"not json").is_err());
    }
}
