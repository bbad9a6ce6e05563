//! OCI image layouts: the walk from `index.json` to the layers, shared by the
//! key ([`super::key_inputs`]) and the import ([`import`]), so both read the
//! same files (see the parent module's docs).

use super::{
    Files, ImportError, ImportedImage, check_diff_id, check_platform, invalid, join, layer_facts,
    parse_digest,
};
use crate::cas::Cas;
use crate::hash::{DiffId, Digest};
use crate::layer::{MEDIA_TYPE_GZIP, MEDIA_TYPE_TAR, MEDIA_TYPE_ZSTD};
use crate::listing::Listing;
use crate::oci::LayerDesc;
use crate::spec::model::Platform;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// How many image indexes may be nested below `index.json`.
const MAX_NESTING: usize = 4;

/// What the walk found: the chosen image and the files of its layers.
pub(super) struct Plan {
    pub manifest: (Digest, u64),
    pub config: (Digest, u64),
    pub config_doc: ImageConfiguration,
    /// The config's `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<String>,
    pub layers: Vec<PlannedLayer>,
}

pub(super) struct PlannedLayer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: &'static str,
    /// Workspace-relative path of the blob.
    pub rel: String,
}

fn blob_rel(dir: &str, d: &Digest) -> String {
    join(dir, &format!("blobs/sha256/{}", d.hex()))
}

/// Reads `index.json`, the indexes on the way, the manifest and the config of
/// the image for `platform` (each through `files`, which records and, on the
/// import side, stores them), checks the platform, and plans the layers.
pub(super) fn walk(
    files: &mut Files<'_>,
    dir: &str,
    platform: &Platform,
) -> Result<Plan, ImportError> {
    let index_rel = join(dir, "index.json");
    let bytes = files.document(&index_rel, None, "image index")?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|e| invalid(&index_rel, "image index", e))?;
    let mdesc = select_manifest(files, dir, &index_rel, &index, platform, 0)?;
    let mdigest = parse_digest(mdesc.digest().as_ref(), &index_rel)?;
    let mrel = blob_rel(dir, &mdigest);
    let mbytes = files.document(&mrel, Some((&mdigest, mdesc.size())), "image manifest")?;
    let manifest: ImageManifest =
        serde_json::from_slice(&mbytes).map_err(|e| invalid(&mrel, "image manifest", e))?;

    let cdesc = manifest.config();
    let cdigest = parse_digest(cdesc.digest().as_ref(), &mrel)?;
    let crel = blob_rel(dir, &cdigest);
    let cbytes = files.document(&crel, Some((&cdigest, cdesc.size())), "image config")?;
    let config: ImageConfiguration =
        serde_json::from_slice(&cbytes).map_err(|e| invalid(&crel, "image config", e))?;
    check_platform(&cbytes, platform, dir)?;

    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(
            &crel,
            "image config",
            format!(
                "{} diff_ids for {} layers in the manifest",
                diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let digest = parse_digest(l.digest().as_ref(), &mrel)?;
        let rel = blob_rel(dir, &digest);
        let media_type = oci_layer_media_type(l.media_type().as_ref()).ok_or_else(|| {
            invalid(
                &mrel,
                "image manifest",
                format!(
                    "layer {digest} has the unsupported media type `{}`",
                    l.media_type()
                ),
            )
        })?;
        layers.push(PlannedLayer {
            digest,
            size: l.size(),
            media_type,
            rel,
        });
    }
    Ok(Plan {
        manifest: (mdigest, mdesc.size()),
        config: (cdigest, cdesc.size()),
        config_doc: config,
        diff_ids,
        layers,
    })
}

/// Imports the image of the layout directory `dir` for `platform`.
pub(super) fn import(
    files: &mut Files<'_>,
    dir: &str,
    platform: &Platform,
    cas: &Cas,
) -> Result<ImportedImage, ImportError> {
    let plan = walk(files, dir, platform)?;
    let mut facts: BTreeMap<Digest, (DiffId, Listing)> = BTreeMap::new();
    let mut layers = Vec::new();
    let mut listings = Vec::new();
    for (i, (l, expected)) in plan.layers.iter().zip(&plan.diff_ids).enumerate() {
        let (diff_id, listing) = match facts.entry(l.digest) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                files.copy_blob(&l.rel, &l.digest, l.size, cas)?;
                e.insert(layer_facts(cas, &l.digest, l.media_type, &l.rel)?)
            }
        };
        check_diff_id(&l.rel, &l.digest.to_string(), i, expected, diff_id)?;
        layers.push(LayerDesc {
            digest: l.digest,
            diff_id: *diff_id,
            size: l.size,
            media_type: l.media_type.to_string(),
            listing: None,
        });
        listings.push(listing.clone());
    }
    Ok(ImportedImage {
        config: plan.config_doc,
        config_digest: plan.config.0,
        config_size: plan.config.1,
        layers,
        listings,
        manifest_digest: plan.manifest.0,
        manifest_size: plan.manifest.1,
        read: std::mem::take(&mut files.read),
    })
}

/// Picks the image manifest of `index` for `platform`, following nested indexes.
fn select_manifest(
    files: &mut Files<'_>,
    dir: &str,
    index_rel: &str,
    index: &ImageIndex,
    platform: &Platform,
    depth: usize,
) -> Result<Descriptor, ImportError> {
    if depth > MAX_NESTING {
        return Err(invalid(
            index_rel,
            "image index",
            "indexes are nested too deeply",
        ));
    }
    let chosen = choose(index, platform).map_err(|found| ImportError::NoPlatform {
        path: index_rel.to_string(),
        platform: platform.to_string(),
        found,
    })?;
    if is_manifest(chosen) {
        return Ok(chosen.clone());
    }
    let digest = parse_digest(chosen.digest().as_ref(), index_rel)?;
    let rel = blob_rel(dir, &digest);
    let bytes = files.document(&rel, Some((&digest, chosen.size())), "image index")?;
    let nested: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|e| invalid(&rel, "image index", e))?;
    select_manifest(files, dir, &rel, &nested, platform, depth + 1)
}

/// Whether a descriptor of an index names an image index (OCI or Docker list).
pub(crate) fn is_index(d: &Descriptor) -> bool {
    matches!(d.media_type().as_ref(), OCI_INDEX | DOCKER_LIST)
}

/// Whether a descriptor of an index names an image manifest (OCI or Docker).
pub(crate) fn is_manifest(d: &Descriptor) -> bool {
    matches!(d.media_type().as_ref(), OCI_MANIFEST | DOCKER_MANIFEST)
}

/// The entry of `index` for `platform` (an image manifest, or a nested index to
/// follow): the only manifest or index it lists, else the one whose descriptor
/// platform matches. Shared by layout imports and registry pulls. The error
/// lists what the index offers.
pub(crate) fn choose<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
) -> Result<&'a Descriptor, String> {
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| is_index(d) || is_manifest(d))
        .collect();
    if candidates.len() == 1 {
        return Ok(candidates[0]);
    }
    let matching: Vec<&Descriptor> = candidates
        .iter()
        .copied()
        .filter(|d| {
            d.platform().as_ref().is_some_and(|p| {
                super::platform_matches(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                    platform,
                )
            })
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        // Identical manifests listed twice (e.g. under two ref names).
        [first, rest @ ..] if rest.iter().all(|d| d.digest() == first.digest()) => Ok(*first),
        _ => {
            let found: Vec<String> = candidates
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => super::describe_platform(
                        &p.os().to_string(),
                        &p.architecture().to_string(),
                        p.variant().as_deref(),
                    ),
                    None => format!("{} without platform", d.digest()),
                })
                .collect();
            Err(if found.is_empty() {
                "no image manifests".into()
            } else {
                found.join(", ")
            })
        }
    }
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
