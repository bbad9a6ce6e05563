//! OCI image layouts: the walk from `index.json` to the layers, shared by the
//! key ([`super::key_inputs`]) and the import ([`import`]), so both read the
//! same files (see the parent module's docs).

use super::{
    Chosen, Files, ImportError, ImportedImage, PlannedLayer, assemble, check_platform, invalid,
    join, parse_digest,
};
use crate::cas::Cas;
use crate::hash::Digest;
use crate::layer::{MEDIA_TYPE_GZIP, MEDIA_TYPE_TAR, MEDIA_TYPE_ZSTD};
use crate::spec::model::Platform;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

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
    pub config_bytes: Vec<u8>,
    /// Workspace-relative path of the config blob.
    pub config_rel: String,
    /// Each layer's `path` is the workspace-relative path of its blob.
    pub layers: Vec<PlannedLayer>,
}

fn blob_rel(dir: &str, d: &Digest) -> String {
    join(dir, &format!("blobs/sha256/{}", d.hex()))
}

/// An image manifest's config descriptor and layers: shared by layouts and
/// registry imports. `mpath` names the manifest in errors; `layer_path` says
/// where each layer is (for errors, and for a layout the file to read).
pub(crate) fn parse_manifest(
    mbytes: &[u8],
    mpath: &str,
    layer_path: impl Fn(&Digest) -> String,
) -> Result<((Digest, u64), Vec<PlannedLayer>), ImportError> {
    let manifest: ImageManifest =
        serde_json::from_slice(mbytes).map_err(|e| invalid(mpath, "image manifest", e))?;
    let cdesc = manifest.config();
    let cdigest = parse_digest(cdesc.digest().as_ref(), mpath)?;
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let digest = parse_digest(l.digest().as_ref(), mpath)?;
        let media_type = oci_layer_media_type(l.media_type().as_ref()).ok_or_else(|| {
            invalid(
                mpath,
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
            path: layer_path(&digest),
            name: digest.to_string(),
        });
    }
    Ok(((cdigest, cdesc.size()), layers))
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
    let ((cdigest, csize), layers) = parse_manifest(&mbytes, &mrel, |d| blob_rel(dir, d))?;

    let crel = blob_rel(dir, &cdigest);
    let cbytes = files.document(&crel, Some((&cdigest, csize)), "image config")?;
    let config: ImageConfiguration =
        serde_json::from_slice(&cbytes).map_err(|e| invalid(&crel, "image config", e))?;
    // Checked on the key side too, so a bad input fails before anything is read.
    check_platform(&cbytes, platform, dir)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(invalid(
            &crel,
            "image config",
            format!(
                "{} diff_ids for {} layers in the manifest",
                diff_ids.len(),
                layers.len()
            ),
        ));
    }
    Ok(Plan {
        manifest: (mdigest, mdesc.size()),
        config: (cdigest, csize),
        config_bytes: cbytes,
        config_rel: crel,
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
    let chosen = Chosen {
        manifest: Some(plan.manifest),
        config: plan.config,
        config_bytes: &plan.config_bytes,
        config_path: &plan.config_rel,
        layers: &plan.layers,
    };
    let mut img = assemble(cas, dir, platform, chosen, |l| {
        files.copy_blob(&l.path, &l.digest, l.size, cas)
    })?;
    img.read = std::mem::take(&mut files.read);
    Ok(img)
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
