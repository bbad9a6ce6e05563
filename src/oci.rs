//! OCI JSON (config, manifest, index) and OCI image layouts on disk.
//!
//! # JSON
//!
//! Every JSON blob goes through [`canonical_json`]: the value is converted to a
//! `serde_json::Value` first (whose maps are `BTreeMap`s in this build: the
//! `preserve_order` feature is off), so object keys come out sorted, including
//! the `HashMap`s oci-spec uses for labels, annotations, exposed ports and
//! volumes; then it is written compactly. The same value always gives the same
//! bytes, hence the same digest.
//!
//! # Config inheritance ([`build_config`])
//!
//! As SPEC.md says: the base's `diff_ids` first, then the image's own; `env`
//! merges by key (the image wins; the base's order is kept, new keys follow in
//! the order written); labels merge (the image wins); `expose` and `volume` are
//! unions; `entrypoint`, `cmd`, `workdir`, `user` and `stop-signal` override;
//! setting `entrypoint` without `cmd` clears an inherited `cmd`. `created` is the
//! source-date-epoch in RFC 3339 UTC. The base's history is kept and each own
//! layer adds one entry (`created_by: "imgc layer //pkg:name"`), never
//! `empty_layer`. Platform fields come from the image's platform; the base's
//! `author`, `os.version` and `os.features` are not inherited.
//!
//! # Layouts ([`write_layout`])
//!
//! An image is materialized as an OCI image layout: `oci-layout`, `index.json`
//! with one manifest descriptor annotated `org.opencontainers.image.ref.name`,
//! and `blobs/sha256/<hex>` hard-linked from the CAS (copied when linking fails,
//! e.g. across filesystems). It is built in a temp dir next to the destination
//! and swapped in with one `renameat2(RENAME_EXCHANGE)` (falling back to two
//! renames), so readers see the old or the new layout, never a half-written one.
//! [`layout_is_current`] is the cheap no-op check: `index.json` bytes equal to
//! what would be written and every blob present with its size.
//!
//! # What it deliberately does not do
//!
//! - It does not decide *which* blobs or annotations an image has: the caller
//!   (the scheduler) passes digests, sizes and annotations such as
//!   `org.opencontainers.image.base.name`.
//! - It does not re-hash blobs when materializing: the CAS verifies on read,
//!   and re-hashing every layer on every build would dominate a no-op build.
//!   [`check_layout`] is the independent, thorough checker for tests; it shares
//!   no code with the writers (it parses JSON generically and hashes directly).

use crate::cas::Cas;
use crate::hash::{DiffId, Digest};
use crate::spec::model::{ImageSpec, Platform};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder,
    MediaType, Os, RootFsBuilder,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Serializes `v` with sorted object keys and no whitespace.
pub fn canonical_json<T: Serialize>(v: &T) -> Vec<u8> {
    let value = serde_json::to_value(v).expect("OCI types serialize to JSON");
    serde_json::to_vec(&value).expect("a JSON value serializes")
}

pub use crate::action::LayerDesc;

/// Seconds since the epoch as RFC 3339 UTC, e.g. `1970-01-01T00:00:00Z`.
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn oci_digest(d: &Digest) -> oci_spec::image::Digest {
    d.to_string()
        .parse()
        .expect("a sha256 digest is a valid OCI digest")
}

fn descriptor(
    media_type: &str,
    digest: &Digest,
    size: u64,
    annotations: Option<HashMap<String, String>>,
) -> Descriptor {
    let mut b = DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(oci_digest(digest))
        .size(size);
    if let Some(a) = annotations {
        b = b.annotations(a);
    }
    b.build().expect("all descriptor fields are set")
}

/// Assembles an image config from its base, its spec and its own layers
/// (see the module docs for the inheritance rules). `layer_labels` names each
/// own layer for the history (`//pkg:name`), one per entry of `layer_diff_ids`.
pub fn build_config(
    base: Option<&ImageConfiguration>,
    spec: &ImageSpec,
    platform: &Platform,
    layer_diff_ids: &[DiffId],
    created_epoch: u64,
    layer_labels: &[String],
) -> ImageConfiguration {
    assert_eq!(
        layer_diff_ids.len(),
        layer_labels.len(),
        "one history label per layer"
    );
    let created = rfc3339(created_epoch);
    let base_cfg = base.and_then(|b| b.config().as_ref());

    // env: base order, image values win, new keys in written order.
    let mut env: Vec<(String, Option<String>)> = base_cfg
        .and_then(|c| c.env().as_ref())
        .map(|e| {
            e.iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (kv.clone(), None),
                })
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in &spec.env {
        match env.iter_mut().find(|(bk, _)| bk == k) {
            Some(slot) => slot.1 = Some(v.clone()),
            None => env.push((k.clone(), Some(v.clone()))),
        }
    }
    let env: Vec<String> = env
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect();

    let mut labels: BTreeMap<String, String> = base_cfg
        .and_then(|c| c.labels().as_ref())
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    labels.extend(spec.labels.iter().cloned());

    let union = |inherited: Option<&Vec<String>>, own: &[String]| -> Vec<String> {
        let set: BTreeSet<String> = inherited
            .into_iter()
            .flatten()
            .chain(own)
            .cloned()
            .collect();
        set.into_iter().collect()
    };
    let expose = union(
        base_cfg.and_then(|c| c.exposed_ports().as_ref()),
        &spec.expose,
    );
    let volumes = union(base_cfg.and_then(|c| c.volumes().as_ref()), &spec.volume);

    let entrypoint = spec
        .entrypoint
        .clone()
        .or_else(|| base_cfg.and_then(|c| c.entrypoint().clone()));
    let cmd = match (&spec.cmd, &spec.entrypoint) {
        (Some(cmd), _) => Some(cmd.clone()),
        (None, Some(_)) => None,
        (None, None) => base_cfg.and_then(|c| c.cmd().clone()),
    };
    let inherit = |own: &Option<String>, get: fn(&oci_spec::image::Config) -> &Option<String>| {
        own.clone()
            .or_else(|| base_cfg.and_then(|c| get(c).clone()))
    };
    let user = inherit(&spec.user, |c| c.user());
    let workdir = inherit(&spec.workdir, |c| c.working_dir());
    let stop_signal = inherit(&spec.stop_signal, |c| c.stop_signal());

    let mut cb = ConfigBuilder::default();
    if !env.is_empty() {
        cb = cb.env(env);
    }
    if !labels.is_empty() {
        cb = cb.labels(labels.into_iter().collect::<HashMap<_, _>>());
    }
    if !expose.is_empty() {
        cb = cb.exposed_ports(expose);
    }
    if !volumes.is_empty() {
        cb = cb.volumes(volumes);
    }
    if let Some(v) = entrypoint {
        cb = cb.entrypoint(v);
    }
    if let Some(v) = cmd {
        cb = cb.cmd(v);
    }
    if let Some(v) = user {
        cb = cb.user(v);
    }
    if let Some(v) = workdir {
        cb = cb.working_dir(v);
    }
    if let Some(v) = stop_signal {
        cb = cb.stop_signal(v);
    }
    let config = cb.build().expect("config fields are optional");

    let mut diff_ids: Vec<String> = base
        .map(|b| b.rootfs().diff_ids().clone())
        .unwrap_or_default();
    diff_ids.extend(layer_diff_ids.iter().map(|d| d.to_string()));
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(diff_ids)
        .build()
        .expect("rootfs fields are set");

    let mut history = base.and_then(|b| b.history().clone()).unwrap_or_default();
    for label in layer_labels {
        history.push(
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(format!("imgc layer {label}"))
                .build()
                .expect("history fields are optional"),
        );
    }

    let mut b = ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(platform.architecture.as_str()))
        .os(Os::from(platform.os.as_str()))
        .config(config)
        .rootfs(rootfs);
    if let Some(v) = &platform.variant {
        b = b.variant(v.clone());
    }
    if !history.is_empty() {
        b = b.history(history);
    }
    b.build().expect("all required config fields are set")
}

/// An image manifest (schema 2) for a stored config and layers. `annotations`
/// (e.g. base name and digest) are set as given; none means no field.
pub fn build_manifest(
    config: (Digest, u64),
    layers: &[LayerDesc],
    annotations: BTreeMap<String, String>,
) -> ImageManifest {
    let mut b = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MEDIA_TYPE_CONFIG, &config.0, config.1, None))
        .layers(
            layers
                .iter()
                .map(|l| descriptor(&l.media_type, &l.digest, l.size, None))
                .collect::<Vec<_>>(),
        );
    if !annotations.is_empty() {
        b = b.annotations(annotations.into_iter().collect::<HashMap<_, _>>());
    }
    b.build().expect("all manifest fields are set")
}

/// The `index.json` of a layout holding one manifest named `ref_name`.
pub fn build_index(manifest: (Digest, u64), ref_names: &[String]) -> ImageIndex {
    let manifests = ref_names
        .iter()
        .map(|r| {
            let ann = HashMap::from([(ANNOTATION_REF_NAME.to_string(), r.clone())]);
            descriptor(MEDIA_TYPE_MANIFEST, &manifest.0, manifest.1, Some(ann))
        })
        .collect::<Vec<_>>();
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .expect("all index fields are set")
}

/// Writes (or atomically replaces) an OCI image layout at `dest` holding the
/// manifest `manifest` and `blobs` (its config and layers), all from `cas`.
pub fn write_layout(
    dest: &Path,
    cas: &Cas,
    manifest: (Digest, u64),
    blobs: &[Digest],
    ref_names: &[String],
) -> io::Result<()> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::other(format!("`{}` names no directory", dest.display())))?;
    fs::create_dir_all(parent).map_err(|e| ctx(e, "create", parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.new-", name.to_string_lossy()))
        .tempdir_in(parent)
        .map_err(|e| ctx(e, "create a temp dir in", parent))?;
    let root = tmp.path();
    write_file(&root.join("oci-layout"), OCI_LAYOUT)?;
    write_file(
        &root.join("index.json"),
        &canonical_json(&build_index(manifest, ref_names)),
    )?;
    let blob_dir = root.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).map_err(|e| ctx(e, "create", &blob_dir))?;
    let all: BTreeSet<&Digest> = std::iter::once(&manifest.0).chain(blobs).collect();
    for d in all {
        let src = cas.blob_path(d);
        let dst = blob_dir.join(d.hex());
        if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst).map_err(|e| ctx(e, "copy", &src))?;
        }
    }
    swap_into_place(root, dest)?;
    // `tmp` now holds the old layout (or nothing); dropping it removes it.
    drop(tmp);
    Ok(())
}

/// Moves `new` to `dest`; whatever was at `dest` ends up at `new`.
fn swap_into_place(new: &Path, dest: &Path) -> io::Result<()> {
    if fs::symlink_metadata(dest).is_err() {
        return fs::rename(new, dest).map_err(|e| ctx(e, "rename into", dest));
    }
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let a = CString::new(new.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let b = CString::new(dest.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them
        // like `rename` does.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    // No atomic exchange here: move the old one aside, then the new one in.
    let mut aside = new.as_os_str().to_owned();
    aside.push(".old");
    let aside = PathBuf::from(aside);
    fs::rename(dest, &aside).map_err(|e| ctx(e, "move aside", dest))?;
    fs::rename(new, dest).map_err(|e| ctx(e, "rename into", dest))?;
    let old_meta = fs::symlink_metadata(&aside)?;
    if old_meta.is_dir() {
        fs::remove_dir_all(&aside).map_err(|e| ctx(e, "remove", &aside))?;
    } else {
        fs::remove_file(&aside).map_err(|e| ctx(e, "remove", &aside))?;
    }
    // Leave an empty dir at `new` so the caller's cleanup has something to remove.
    let _ = fs::create_dir(new);
    Ok(())
}

/// Whether `dest` already is the layout [`write_layout`] would write: same
/// `oci-layout` and `index.json` bytes, and every blob (the manifest and
/// `blobs`) present with its size and, where it was hard-linked, still the very
/// file the CAS holds (so a blob the CAS replaced after damage is linked
/// again). Stats only; no hashing.
pub fn layout_is_current(
    dest: &Path,
    cas: &Cas,
    manifest: (Digest, u64),
    blobs: &[(Digest, u64)],
    ref_names: &[String],
) -> bool {
    use std::os::unix::fs::MetadataExt;
    let same = |p: PathBuf, want: &[u8]| fs::read(p).is_ok_and(|b| b == want);
    if !same(dest.join("oci-layout"), OCI_LAYOUT)
        || !same(
            dest.join("index.json"),
            &canonical_json(&build_index(manifest, ref_names)),
        )
    {
        return false;
    }
    std::iter::once(&manifest).chain(blobs).all(|(d, size)| {
        let Ok(out) = fs::symlink_metadata(dest.join("blobs").join("sha256").join(d.hex())) else {
            return false;
        };
        let Ok(stored) = fs::metadata(cas.blob_path(d)) else {
            return false;
        };
        let same_file = out.dev() == stored.dev() && out.ino() == stored.ino();
        let copied = out.dev() != stored.dev();
        out.is_file() && out.len() == *size && (same_file || copied)
    })
}

/// The stat data of a layout's `oci-layout`, `index.json` and `blobs/sha256`
/// directory, as text, and the newest mtime or ctime among them (ns): what
/// [`crate::cache::LayoutRecord`] remembers. Adding, removing or replacing a
/// blob or rewriting a top-level file changes it. `None` if any is missing.
pub fn layout_stamp(dest: &Path) -> Option<(String, i64)> {
    let mut text = String::new();
    let mut newest = i64::MIN;
    for p in [
        dest.join("oci-layout"),
        dest.join("index.json"),
        dest.join("blobs").join("sha256"),
    ] {
        let s = crate::cache::StatKey::from_metadata(&fs::symlink_metadata(p).ok()?);
        newest = newest.max(s.mtime_ns).max(s.ctime_ns);
        text.push_str(&format!(
            "{}:{}:{}:{}:{};",
            s.size, s.mtime_ns, s.ctime_ns, s.inode, s.mode
        ));
    }
    Some((text, newest))
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::write(path, bytes).map_err(|e| ctx(e, "write", path))
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} `{}`: {e}", path.display()))
}

/// Checks an OCI image layout thoroughly and independently of the writers:
/// every blob's name is its sha256, descriptor sizes and media types match,
/// manifest → config → layers are consistent, and each layer, decompressed
/// according to its media type, hashes to the config's diff_id at its position.
/// Returns every problem found.
pub fn check_layout(dir: &Path) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    check_layout_into(dir, &mut errs);
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn check_layout_into(dir: &Path, errs: &mut Vec<String>) {
    use serde_json::Value;
    use sha2::Digest as _;

    let sha_hex = |r: &mut dyn Read| -> io::Result<String> {
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(hex::encode(h.finalize()));
            }
            h.update(&buf[..n]);
        }
    };
    let read_json = |path: &Path, errs: &mut Vec<String>| -> Option<Value> {
        match fs::read(path).map(|b| serde_json::from_slice::<Value>(&b)) {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                errs.push(format!("{}: invalid JSON: {e}", path.display()));
                None
            }
            Err(e) => {
                errs.push(format!("{}: {e}", path.display()));
                None
            }
        }
    };

    match read_json(&dir.join("oci-layout"), errs) {
        Some(v) if v["imageLayoutVersion"] == "1.0.0" => {}
        Some(v) => errs.push(format!("oci-layout: unexpected content {v}")),
        None => {}
    }

    // Every blob's name is its sha256.
    let blob_dir = dir.join("blobs").join("sha256");
    match fs::read_dir(&blob_dir) {
        Ok(rd) => {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                match fs::File::open(ent.path()).and_then(|mut f| sha_hex(&mut f)) {
                    Ok(h) if h == name => {}
                    Ok(h) => errs.push(format!("blob {name} hashes to {h}")),
                    Err(e) => errs.push(format!("blob {name}: {e}")),
                }
            }
        }
        Err(e) => errs.push(format!("{}: {e}", blob_dir.display())),
    }

    // A descriptor's blob: exists, size matches; returns its path.
    let blob = |desc: &Value, what: &str, errs: &mut Vec<String>| -> Option<PathBuf> {
        let digest = desc["digest"].as_str().unwrap_or_default();
        let Some(hex) = digest.strip_prefix("sha256:") else {
            errs.push(format!("{what}: bad digest {:?}", desc["digest"]));
            return None;
        };
        let path = blob_dir.join(hex);
        let Ok(meta) = fs::metadata(&path) else {
            errs.push(format!("{what}: blob {digest} missing"));
            return None;
        };
        if desc["size"].as_u64() != Some(meta.len()) {
            errs.push(format!(
                "{what}: descriptor size {} but blob {digest} has {} bytes",
                desc["size"],
                meta.len()
            ));
        }
        Some(path)
    };

    let Some(index) = read_json(&dir.join("index.json"), errs) else {
        return;
    };
    if index["schemaVersion"] != 2 {
        errs.push("index.json: schemaVersion is not 2".into());
    }
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    if manifests.is_empty() {
        errs.push("index.json: no manifests".into());
    }
    for (i, mdesc) in manifests.iter().enumerate() {
        let what = format!("manifest #{i}");
        if mdesc["mediaType"] != MEDIA_TYPE_MANIFEST {
            errs.push(format!("{what}: media type {}", mdesc["mediaType"]));
            continue;
        }
        let Some(mpath) = blob(mdesc, &what, errs) else {
            continue;
        };
        let Some(m) = read_json(&mpath, errs) else {
            continue;
        };
        if m["schemaVersion"] != 2 {
            errs.push(format!("{what}: schemaVersion is not 2"));
        }
        if m["config"]["mediaType"] != MEDIA_TYPE_CONFIG {
            errs.push(format!(
                "{what}: config media type {}",
                m["config"]["mediaType"]
            ));
        }
        let Some(cpath) = blob(&m["config"], &format!("{what} config"), errs) else {
            continue;
        };
        let Some(config) = read_json(&cpath, errs) else {
            continue;
        };
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if config["rootfs"]["type"] != "layers" {
            errs.push(format!("{what}: rootfs.type is not \"layers\""));
        }
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        if layers.len() != diff_ids.len() {
            errs.push(format!(
                "{what}: {} layers but {} diff_ids",
                layers.len(),
                diff_ids.len()
            ));
        }
        for (j, (ldesc, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
            let lwhat = format!("{what} layer #{j}");
            let Some(lpath) = blob(ldesc, &lwhat, errs) else {
                continue;
            };
            let file = match fs::File::open(&lpath) {
                Ok(f) => f,
                Err(e) => {
                    errs.push(format!("{lwhat}: {e}"));
                    continue;
                }
            };
            let media = ldesc["mediaType"].as_str().unwrap_or_default();
            let hashed = match media {
                "application/vnd.oci.image.layer.v1.tar+gzip"
                | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                    sha_hex(&mut flate2::read::MultiGzDecoder::new(file))
                }
                "application/vnd.oci.image.layer.v1.tar+zstd" => {
                    zstd::stream::read::Decoder::new(file).and_then(|mut d| sha_hex(&mut d))
                }
                "application/vnd.oci.image.layer.v1.tar" => sha_hex(&mut { file }),
                other => {
                    errs.push(format!("{lwhat}: unknown media type {other:?}"));
                    continue;
                }
            };
            match hashed {
                Ok(h) if diff_id.as_str() == Some(&format!("sha256:{h}")) => {}
                Ok(h) => errs.push(format!(
                    "{lwhat}: uncompressed sha256:{h} but diff_id {diff_id}"
                )),
                Err(e) => errs.push(format!("{lwhat}: cannot decompress: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry, EntryData, LayerFormat, normalize, write_layer};
    use crate::spec::model::Compression;

    fn platform() -> Platform {
        Platform::parse("linux/amd64").unwrap()
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Builds a one-layer scratch image into `cas`; returns (manifest, blobs).
    fn scratch_image(cas: &Cas, content: &str) -> ((Digest, u64), Vec<(Digest, u64)>) {
        let long = format!("app/{}/{}", "d".repeat(90), "f".repeat(90));
        let entries = normalize(vec![
            Entry {
                path: "app/hello".into(),
                data: EntryData::Bytes(content.as_bytes().to_vec()),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            Entry {
                path: long,
                data: EntryData::Bytes(b"long".to_vec()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        ])
        .unwrap();
        let layer = write_layer(
            &entries,
            &LayerFormat::default_for(Compression::Gzip),
            0,
            cas,
        )
        .unwrap();
        let spec = ImageSpec {
            entrypoint: Some(strs(&["/app/hello"])),
            ..Default::default()
        };
        let config = build_config(
            None,
            &spec,
            &platform(),
            &[layer.diff_id],
            0,
            &strs(&["//app:layer"]),
        );
        let config_blob = cas.put_bytes(&canonical_json(&config)).unwrap();
        let desc = LayerDesc {
            digest: layer.digest,
            diff_id: layer.diff_id,
            size: layer.size,
            media_type: layer.media_type,
            listing: None,
        };
        let manifest = build_manifest(config_blob, &[desc], BTreeMap::new());
        let manifest_blob = cas.put_bytes(&canonical_json(&manifest)).unwrap();
        (manifest_blob, vec![config_blob, (layer.digest, layer.size)])
    }

    #[test]
    fn canonical_json_sorts_hashmaps() {
        let labels: HashMap<String, String> = ["z", "a", "m", "b", "y", "c"]
            .iter()
            .map(|k| (k.to_string(), "v".to_string()))
            .collect();
        let cfg = ConfigBuilder::default()
            .labels(labels)
            .exposed_ports(strs(&["9090/tcp", "80/tcp", "8080/tcp"]))
            .build()
            .unwrap();
        let json = String::from_utf8(canonical_json(&cfg)).unwrap();
        assert_eq!(
            json,
            r#"{"ExposedPorts":{"80/tcp":{},"8080/tcp":{},"9090/tcp":{}},"Labels":{"a":"v","b":"v","c":"v","m":"v","y":"v","z":"v"}}"#
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    fn base_config() -> ImageConfiguration {
        let cfg = ConfigBuilder::default()
            .env(strs(&["PATH=/usr/bin", "LANG=C", "ODD"]))
            .cmd(strs(&["sh"]))
            .entrypoint(strs(&["/bin/base"]))
            .exposed_ports(strs(&["80/tcp"]))
            .volumes(strs(&["/var/log"]))
            .labels(HashMap::from([
                ("a".to_string(), "base".to_string()),
                ("keep".to_string(), "yes".to_string()),
            ]))
            .working_dir("/base")
            .user("1:1")
            .build()
            .unwrap();
        ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .author("someone")
            .config(cfg)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![Digest::of_bytes(b"base").to_string()])
                    .build()
                    .unwrap(),
            )
            .history(vec![
                HistoryBuilder::default()
                    .created_by("base step")
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap()
    }

    #[test]
    fn inheritance() {
        let base = base_config();
        let own = DiffId(Digest::of_bytes(b"own"));
        let spec = ImageSpec {
            env: vec![
                ("NEW".into(), "1".into()),
                ("PATH".into(), "/app:/usr/bin".into()),
                ("NEW".into(), "2".into()),
            ],
            expose: strs(&["8080/tcp", "80/tcp"]),
            volume: strs(&["/data"]),
            labels: vec![("a".into(), "own".into()), ("b".into(), "own".into())],
            entrypoint: Some(strs(&["/app/server"])),
            ..Default::default()
        };
        let cfg = build_config(
            Some(&base),
            &spec,
            &platform(),
            &[own],
            86_400,
            &strs(&["//x:l"]),
        );
        let c = cfg.config().as_ref().unwrap();
        assert_eq!(
            c.env().as_ref().unwrap(),
            &strs(&["PATH=/app:/usr/bin", "LANG=C", "ODD", "NEW=2"])
        );
        assert_eq!(c.entrypoint().as_ref().unwrap(), &strs(&["/app/server"]));
        assert_eq!(
            c.cmd(),
            &None,
            "entrypoint without cmd clears the inherited cmd"
        );
        assert_eq!(
            c.exposed_ports().as_ref().unwrap(),
            &strs(&["80/tcp", "8080/tcp"])
        );
        assert_eq!(c.volumes().as_ref().unwrap(), &strs(&["/data", "/var/log"]));
        let labels: BTreeMap<_, _> = c.labels().clone().unwrap().into_iter().collect();
        assert_eq!(
            labels,
            BTreeMap::from([
                ("a".to_string(), "own".to_string()),
                ("b".to_string(), "own".to_string()),
                ("keep".to_string(), "yes".to_string()),
            ])
        );
        assert_eq!(c.working_dir().as_deref(), Some("/base"));
        assert_eq!(c.user().as_deref(), Some("1:1"));
        assert_eq!(
            cfg.rootfs().diff_ids(),
            &vec![Digest::of_bytes(b"base").to_string(), own.to_string()]
        );
        let hist = cfg.history().as_ref().unwrap();
        assert_eq!(hist.len(), 2);
        assert_eq!(hist[0].created_by().as_deref(), Some("base step"));
        assert_eq!(hist[1].created_by().as_deref(), Some("imgc layer //x:l"));
        assert_eq!(hist[1].created().as_deref(), Some("1970-01-02T00:00:00Z"));
        assert_eq!(hist[1].empty_layer(), None);
        assert_eq!(cfg.created().as_deref(), Some("1970-01-02T00:00:00Z"));
        assert_eq!(cfg.author(), &None);

        // cmd alone overrides cmd and keeps the entrypoint; unset fields inherit.
        let spec = ImageSpec {
            cmd: Some(strs(&["-c", "true"])),
            workdir: Some("/w".into()),
            stop_signal: Some("SIGTERM".into()),
            ..Default::default()
        };
        let cfg = build_config(Some(&base), &spec, &platform(), &[], 0, &[]);
        let c = cfg.config().as_ref().unwrap();
        assert_eq!(c.entrypoint().as_ref().unwrap(), &strs(&["/bin/base"]));
        assert_eq!(c.cmd().as_ref().unwrap(), &strs(&["-c", "true"]));
        assert_eq!(c.working_dir().as_deref(), Some("/w"));
        assert_eq!(c.stop_signal().as_deref(), Some("SIGTERM"));
        assert_eq!(
            c.env().as_ref().unwrap(),
            &strs(&["PATH=/usr/bin", "LANG=C", "ODD"])
        );
        assert_eq!(cfg.history().as_ref().unwrap().len(), 1);
        // Same inputs, same bytes.
        assert_eq!(
            canonical_json(&cfg),
            canonical_json(&build_config(Some(&base), &spec, &platform(), &[], 0, &[]))
        );
    }

    #[test]
    fn manifest_json_shape() {
        let l = LayerDesc {
            digest: Digest::of_bytes(b"l"),
            diff_id: DiffId(Digest::of_bytes(b"d")),
            size: 3,
            media_type: crate::layer::MEDIA_TYPE_ZSTD.into(),
            listing: None,
        };
        let ann = BTreeMap::from([
            (
                ANNOTATION_BASE_NAME.to_string(),
                "//bases:runtime".to_string(),
            ),
            (
                ANNOTATION_BASE_DIGEST.to_string(),
                Digest::of_bytes(b"b").to_string(),
            ),
        ]);
        let m = build_manifest((Digest::of_bytes(b"c"), 7), std::slice::from_ref(&l), ann);
        let v: serde_json::Value = serde_json::from_slice(&canonical_json(&m)).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(v["config"]["mediaType"], MEDIA_TYPE_CONFIG);
        assert_eq!(v["config"]["size"], 7);
        assert_eq!(v["layers"][0]["mediaType"], crate::layer::MEDIA_TYPE_ZSTD);
        assert_eq!(v["layers"][0]["digest"], l.digest.to_string());
        assert_eq!(v["annotations"][ANNOTATION_BASE_NAME], "//bases:runtime");
        // LayerDesc round-trips through serde (it is cached).
        let back: LayerDesc = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn scratch_layout_checks_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(&dir.path().join("cache/v1")).unwrap();
        let (manifest, blobs) = scratch_image(&cas, "hi\n");
        let digests: Vec<Digest> = blobs.iter().map(|b| b.0).collect();
        let dest = dir.path().join("out/pkg/image");
        assert!(!layout_is_current(
            &dest,
            &cas,
            manifest,
            &blobs,
            &["latest".to_string()]
        ));
        write_layout(&dest, &cas, manifest, &digests, &["latest".to_string()]).unwrap();
        check_layout(&dest).unwrap();
        assert!(layout_is_current(
            &dest,
            &cas,
            manifest,
            &blobs,
            &["latest".to_string()]
        ));
        assert!(!layout_is_current(
            &dest,
            &cas,
            manifest,
            &blobs,
            &["other".to_string()]
        ));
        let index = fs::read_to_string(dest.join("index.json")).unwrap();
        assert!(
            index.contains(r#""org.opencontainers.image.ref.name":"latest""#),
            "{index}"
        );

        // Replace with another image: old blobs go, nothing is left beside it.
        let (manifest2, blobs2) = scratch_image(&cas, "bye\n");
        let digests2: Vec<Digest> = blobs2.iter().map(|b| b.0).collect();
        write_layout(&dest, &cas, manifest2, &digests2, &["latest".to_string()]).unwrap();
        check_layout(&dest).unwrap();
        assert!(layout_is_current(
            &dest,
            &cas,
            manifest2,
            &blobs2,
            &["latest".to_string()]
        ));
        assert!(!dest.join("blobs/sha256").join(manifest.0.hex()).exists());
        let siblings: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().collect();
        assert_eq!(siblings.len(), 1);

        // The checker notices a wrong diff_id and a bad blob.
        let blob = dest.join("blobs/sha256").join(digests2[1].hex());
        fs::remove_file(&blob).unwrap();
        fs::write(&blob, b"garbage").unwrap();
        let errs = check_layout(&dest).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("hashes to")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("size")), "{errs:?}");
        assert!(!layout_is_current(
            &dest,
            &cas,
            manifest2,
            &blobs2,
            &["latest".to_string()]
        ));
    }

    #[test]
    fn umoci_unpacks_our_layout() {
        let Some(umoci) = ["/usr/bin/umoci", "/usr/local/bin/umoci"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            eprintln!("note: umoci not found, skipping umoci_unpacks_our_layout");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(&dir.path().join("cache/v1")).unwrap();
        let (manifest, blobs) = scratch_image(&cas, "hello from imgc\n");
        let digests: Vec<Digest> = blobs.iter().map(|b| b.0).collect();
        let dest = dir.path().join("layout");
        write_layout(&dest, &cas, manifest, &digests, &["latest".to_string()]).unwrap();
        let bundle = dir.path().join("bundle");
        let out = std::process::Command::new(umoci)
            .arg("unpack")
            .arg("--rootless")
            .arg("--image")
            .arg(format!("{}:latest", dest.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umoci failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs::read_to_string(bundle.join("rootfs/app/hello")).unwrap(),
            "hello from imgc\n"
        );
        let long = format!("rootfs/app/{}/{}", "d".repeat(90), "f".repeat(90));
        assert_eq!(fs::read_to_string(bundle.join(long)).unwrap(), "long");
        // skopeo reads it too, when installed.
        if Path::new("/usr/bin/skopeo").exists() {
            let out = std::process::Command::new("/usr/bin/skopeo")
                .arg("inspect")
                .arg(format!("oci:{}:latest", dest.display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "skopeo failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["Architecture"], "amd64");
            assert_eq!(v["Layers"][0], blobs[1].0.to_string());
        }
    }
}
