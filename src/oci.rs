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
//! Inheritance works on the base's config *document* ([`BaseConfig`], a JSON
//! object), not on oci-spec's typed `ImageConfiguration`: the typed model has
//! no `Healthcheck`, `Shell`, `OnBuild` or `ArgsEscaped` and drops every field
//! it does not know, and an image built on a Docker-made base must keep them.
//! So the base's document is the starting point and nothing of it is lost
//! unless the spec overrides it; at the config level and the top level alike,
//! fields imgc does not know (and `author`, `os.version`, `os.features`) come
//! through as they are. `OnBuild` is kept, not run: imgc runs no Dockerfile
//! triggers, and a later Dockerfile build `FROM` the image still runs them.
//!
//! Onto that document, as SPEC.md says: `env` merges by key (the image wins;
//! the base's order is kept, new keys follow in the order written); labels
//! merge (the image wins); `expose` and `volume` are unions; `entrypoint`,
//! `cmd`, `workdir`, `user` and `stop-signal` override; setting `entrypoint`
//! without `cmd` clears an inherited `cmd`. A base field the spec does not
//! touch is kept byte for byte (even `"Env": null`). imgc itself sets
//! `created` (the source-date-epoch in RFC 3339 UTC), `os`, `architecture`
//! and `variant` (from the build platform; a base's variant goes when the
//! platform has none), and `rootfs` (the base's `diff_ids`, then the image's
//! own). The base's history is kept and each own layer adds one entry
//! (`created_by: "imgc layer //pkg:name"`), never `empty_layer`. For a base
//! built by imgc the result is exactly what the typed model wrote before
//! (`scratch_config_bytes_are_stable` pins the bytes).
//!
//! [`BaseConfig::from_slice`] checks the fields it merges into (`config.Env`,
//! `Labels`, `ExposedPorts`, `Volumes`, `rootfs.diff_ids`, `history`) and says
//! which one is malformed; it never panics on a base made elsewhere.
//!
//! # Manifest annotations ([`manifest_annotations`])
//!
//! The spec's `annotation`s, then `org.opencontainers.image.base.digest` (the
//! base's manifest digest) and `org.opencontainers.image.base.name` for an
//! image built on a base. `base.name` must be an image reference: the base's
//! first `tag`, or the spec's own `base.name` annotation, which wins (it is
//! how an image on an `import` names where that import came from). Without
//! either there is no `base.name`: an imgc label is not an image reference.
//! `base.digest` is always imgc's; the parser refuses a user annotation of it.
//!
//! # Layouts
//!
//! An image is materialized as an OCI image layout: `oci-layout` ([`OCI_LAYOUT`]),
//! `index.json` ([`build_index`]: one manifest descriptor annotated
//! `org.opencontainers.image.ref.name`) and `blobs/sha256/<hex>` hard-linked from
//! the CAS. Writing, replacing and checking layouts on disk is
//! [`crate::output`]'s job: it marks each layout it writes, never replaces one it
//! did not write, never follows a link, and swaps the new layout in atomically.
//! [`crate::output::write_layout`] and its siblings are path-based entry points
//! to it for a layout anywhere (tests, fixtures); builds go through
//! [`crate::output::Root`], which also opens every directory above the layout
//! without following links. This module only makes the bytes.
//!
//! # What it deliberately does not do
//!
//! - It does not decide *which* blobs an image has or what its base is called:
//!   the caller ([`crate::actions::image`]) passes digests, sizes and the base's
//!   reference.
//! - It does not re-hash blobs when materializing: the CAS verifies on read,
//!   and re-hashing every layer on every build would dominate a no-op build.
//!   [`check_layout`] is the independent, thorough checker for tests; it shares
//!   no code with the writers (it parses JSON generically and hashes directly).

use crate::hash::{DiffId, Digest};
use crate::spec::model::{ImageSpec, Platform};
use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageIndex, ImageIndexBuilder, ImageManifest,
    ImageManifestBuilder, MediaType,
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
/// The `oci-layout` file of every layout.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

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

/// The config document of a base image, as JSON, checked where
/// [`build_config`] merges into it.
///
/// It is kept as a generic JSON object rather than oci-spec's typed
/// `ImageConfiguration`, because the typed model drops every field it does not
/// know (Docker's `Healthcheck`, `Shell`, `OnBuild`, `ArgsEscaped`, and any
/// other extension), and a derived image must keep them.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseConfig(Map<String, Value>);

/// Why a base image's config cannot be built on; says which field and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadBaseConfig(String);

impl BaseConfig {
    /// Parses a config blob and checks the fields inheritance reads: the
    /// document and `config` are objects, `config.Env` is a list of strings,
    /// `config.Labels`, `config.ExposedPorts` and `config.Volumes` are objects,
    /// `rootfs.diff_ids` is a list of strings and `history` a list (each of
    /// them may also be `null` or absent, except `rootfs.diff_ids`).
    pub fn from_slice(bytes: &[u8]) -> Result<BaseConfig, BadBaseConfig> {
        let bad = |m: String| BadBaseConfig(m);
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("{e}")))?;
        let Value::Object(doc) = doc else {
            return Err(bad("it is not a JSON object".into()));
        };
        let is_strings = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        match doc.get("config") {
            None | Some(Value::Null) => {}
            Some(Value::Object(c)) => {
                if !matches!(c.get("Env"), None | Some(Value::Null)) && !is_strings(&c["Env"]) {
                    return Err(bad("`config.Env` is not a list of strings".into()));
                }
                for field in ["Labels", "ExposedPorts", "Volumes"] {
                    if !matches!(c.get(field), None | Some(Value::Null | Value::Object(_))) {
                        return Err(bad(format!("`config.{field}` is not an object")));
                    }
                }
            }
            Some(_) => return Err(bad("`config` is not an object".into())),
        }
        if !doc
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .is_some_and(is_strings)
        {
            return Err(bad("`rootfs.diff_ids` is not a list of strings".into()));
        }
        if !matches!(
            doc.get("history"),
            None | Some(Value::Null | Value::Array(_))
        ) {
            return Err(bad("`history` is not a list".into()));
        }
        Ok(BaseConfig(doc))
    }

    /// The base's `rootfs.diff_ids`, in order.
    pub fn diff_ids(&self) -> Vec<String> {
        strings(self.0.get("rootfs").and_then(|r| r.get("diff_ids")))
    }
}

/// The strings of a JSON list (nothing for anything else).
fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Assembles an image config from its base, its spec and its own layers
/// (see the module docs for the inheritance rules). `layer_labels` names each
/// own layer for the history (`//pkg:name`), one per entry of `layer_diff_ids`.
/// The result is a JSON document; [`canonical_json`] gives its bytes.
pub fn build_config(
    base: Option<&BaseConfig>,
    spec: &ImageSpec,
    platform: &Platform,
    layer_diff_ids: &[DiffId],
    created_epoch: u64,
    layer_labels: &[String],
) -> Value {
    assert_eq!(
        layer_diff_ids.len(),
        layer_labels.len(),
        "one history label per layer"
    );
    let created = rfc3339(created_epoch);
    let mut doc = base.map(|b| b.0.clone()).unwrap_or_default();
    let mut config = match doc.remove("config") {
        Some(Value::Object(c)) => c,
        _ => Map::new(),
    };

    // env: base order, image values win, new keys in written order.
    if !spec.env.is_empty() {
        let mut env: Vec<(String, Option<String>)> = strings(config.get("Env"))
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (kv, None),
            })
            .collect();
        for (k, v) in &spec.env {
            match env.iter_mut().find(|(bk, _)| bk == k) {
                Some(slot) => slot.1 = Some(v.clone()),
                None => env.push((k.clone(), Some(v.clone()))),
            }
        }
        let env: Vec<Value> = env
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            })
            .map(Value::String)
            .collect();
        config.insert("Env".into(), Value::Array(env));
    }

    // labels merge, the image wins; expose and volume are unions. The base's
    // values are kept as they are.
    // (`Some` value: set, the image wins; `None`: a set member, `{}` if new.)
    let mut merge = |field: &str, own: Vec<(String, Option<Value>)>| {
        if own.is_empty() {
            return;
        }
        let mut map = match config.remove(field) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in own {
            match v {
                Some(v) => {
                    map.insert(k, v);
                }
                None => {
                    map.entry(k).or_insert_with(|| Value::Object(Map::new()));
                }
            }
        }
        config.insert(field.into(), Value::Object(map));
    };
    let with = |v: &[(String, String)]| -> Vec<(String, Option<Value>)> {
        v.iter()
            .map(|(k, v)| (k.clone(), Some(Value::String(v.clone()))))
            .collect()
    };
    let set_of = |v: &[String]| -> Vec<(String, Option<Value>)> {
        v.iter().map(|k| (k.clone(), None)).collect()
    };
    merge("Labels", with(&spec.labels));
    merge("ExposedPorts", set_of(&spec.expose));
    merge("Volumes", set_of(&spec.volume));

    // entrypoint, cmd, workdir, user, stop-signal override; an entrypoint
    // without a cmd clears the inherited cmd.
    let list = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    if let Some(e) = &spec.entrypoint {
        config.insert("Entrypoint".into(), list(e));
    }
    match (&spec.cmd, &spec.entrypoint) {
        (Some(c), _) => {
            config.insert("Cmd".into(), list(c));
        }
        (None, Some(_)) => {
            config.remove("Cmd");
        }
        (None, None) => {}
    }
    for (field, own) in [
        ("User", &spec.user),
        ("WorkingDir", &spec.workdir),
        ("StopSignal", &spec.stop_signal),
    ] {
        if let Some(v) = own {
            config.insert(field.into(), Value::String(v.clone()));
        }
    }
    doc.insert("config".into(), Value::Object(config));

    // What imgc sets itself: platform, creation time, rootfs and history.
    doc.insert("created".into(), Value::String(created.clone()));
    doc.insert("os".into(), Value::String(platform.os.clone()));
    doc.insert(
        "architecture".into(),
        Value::String(platform.architecture.clone()),
    );
    match &platform.variant {
        Some(v) => doc.insert("variant".into(), Value::String(v.clone())),
        None => doc.remove("variant"),
    };
    let mut diff_ids = base.map(BaseConfig::diff_ids).unwrap_or_default();
    diff_ids.extend(layer_diff_ids.iter().map(|d| d.to_string()));
    doc.insert(
        "rootfs".into(),
        serde_json::json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    let mut history = match doc.remove("history") {
        Some(Value::Array(h)) => h,
        _ => Vec::new(),
    };
    for label in layer_labels {
        history.push(serde_json::json!({
            "created": created,
            "created_by": format!("imgc layer {label}"),
        }));
    }
    if !history.is_empty() {
        doc.insert("history".into(), Value::Array(history));
    }
    Value::Object(doc)
}

/// The annotations of an image's manifest: the spec's `annotation`s (a later
/// one with the same key wins), then, for an image built on a base,
/// `org.opencontainers.image.base.digest` (the base's manifest digest) and
/// `org.opencontainers.image.base.name` (`base_name`, an image reference such
/// as the base's first `tag`) unless the spec sets that one itself. There is
/// no `base.name` when neither knows a reference: an imgc label is not one.
/// The parser refuses a user `base.digest`: only imgc knows it.
pub fn manifest_annotations(
    spec: &[(String, String)],
    base: Option<(&Digest, Option<&str>)>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = spec.iter().cloned().collect();
    if let Some((digest, name)) = base {
        out.insert(ANNOTATION_BASE_DIGEST.to_string(), digest.to_string());
        if let Some(name) = name {
            out.entry(ANNOTATION_BASE_NAME.to_string())
                .or_insert_with(|| name.to_string());
        }
    }
    out
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
    use crate::cas::Cas;
    use crate::layer::{Entry, EntryData, LayerFormat, normalize, write_layer};
    use crate::output::{layout_is_current, write_layout};
    use crate::spec::model::Compression;
    use oci_spec::image::ConfigBuilder;

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

    fn base_config() -> BaseConfig {
        let doc = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "author": "someone",
            "config": {
                "Env": ["PATH=/usr/bin", "LANG=C", "ODD"],
                "Cmd": ["sh"],
                "Entrypoint": ["/bin/base"],
                "ExposedPorts": {"80/tcp": {}},
                "Volumes": {"/var/log": {}},
                "Labels": {"a": "base", "keep": "yes"},
                "WorkingDir": "/base",
                "User": "1:1"
            },
            "rootfs": {"type": "layers", "diff_ids": [Digest::of_bytes(b"base").to_string()]},
            "history": [{"created_by": "base step"}]
        });
        BaseConfig::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap()
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
        let c = &cfg["config"];
        assert_eq!(
            c["Env"],
            serde_json::json!(["PATH=/app:/usr/bin", "LANG=C", "ODD", "NEW=2"])
        );
        assert_eq!(c["Entrypoint"], serde_json::json!(["/app/server"]));
        assert_eq!(
            c.get("Cmd"),
            None,
            "entrypoint without cmd clears the inherited cmd"
        );
        assert_eq!(
            c["ExposedPorts"],
            serde_json::json!({"80/tcp": {}, "8080/tcp": {}})
        );
        assert_eq!(
            c["Volumes"],
            serde_json::json!({"/data": {}, "/var/log": {}})
        );
        assert_eq!(
            c["Labels"],
            serde_json::json!({"a": "own", "b": "own", "keep": "yes"})
        );
        assert_eq!(c["WorkingDir"], "/base");
        assert_eq!(c["User"], "1:1");
        assert_eq!(
            cfg["rootfs"],
            serde_json::json!({
                "type": "layers",
                "diff_ids": [Digest::of_bytes(b"base").to_string(), own.to_string()]
            })
        );
        let hist = cfg["history"].as_array().unwrap();
        assert_eq!(hist.len(), 2);
        assert_eq!(hist[0], serde_json::json!({"created_by": "base step"}));
        assert_eq!(
            hist[1],
            serde_json::json!({"created": "1970-01-02T00:00:00Z", "created_by": "imgc layer //x:l"}),
            "no empty_layer"
        );
        assert_eq!(cfg["created"], "1970-01-02T00:00:00Z");
        assert_eq!(cfg["author"], "someone", "nothing of the base is lost");

        // cmd alone overrides cmd and keeps the entrypoint; unset fields inherit.
        let spec = ImageSpec {
            cmd: Some(strs(&["-c", "true"])),
            workdir: Some("/w".into()),
            stop_signal: Some("SIGTERM".into()),
            ..Default::default()
        };
        let cfg = build_config(Some(&base), &spec, &platform(), &[], 0, &[]);
        let c = &cfg["config"];
        assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/base"]));
        assert_eq!(c["Cmd"], serde_json::json!(["-c", "true"]));
        assert_eq!(c["WorkingDir"], "/w");
        assert_eq!(c["StopSignal"], "SIGTERM");
        assert_eq!(
            c["Env"],
            serde_json::json!(["PATH=/usr/bin", "LANG=C", "ODD"])
        );
        assert_eq!(cfg["history"].as_array().unwrap().len(), 1);
        // Same inputs, same bytes.
        assert_eq!(
            canonical_json(&cfg),
            canonical_json(&build_config(Some(&base), &spec, &platform(), &[], 0, &[]))
        );
    }

    /// oci-spec's typed config has no `Healthcheck`, `Shell`, `OnBuild` or
    /// `ArgsEscaped` and drops unknown fields: inheritance works on the JSON so
    /// an image built on such a base keeps them all.
    #[test]
    fn base_config_fields_the_typed_model_lacks_are_inherited() {
        let healthcheck = serde_json::json!({
            "Test": ["CMD", "/bin/check"], "Interval": 30_000_000_000u64, "Retries": 3
        });
        let doc = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "os.version": "6.1",
            "x-vendor-provenance": {"builder": "elsewhere", "n": [1, 2]},
            "config": {
                "Env": ["PATH=/bin"],
                "Cmd": ["/bin/serve"],
                "Healthcheck": healthcheck,
                "Shell": ["/bin/sh", "-c"],
                "OnBuild": ["RUN echo hi"],
                "ArgsEscaped": true,
                "X-Unknown": {"kept": true},
                "Labels": null,
                "Volumes": null
            },
            "rootfs": {"type": "layers", "diff_ids": [Digest::of_bytes(b"b").to_string()]},
            "history": [{"created_by": "base", "x-extra": 1}]
        });
        let base = BaseConfig::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap();
        // Touch every field the spec can set.
        let spec = ImageSpec {
            entrypoint: Some(strs(&["/bin/app"])),
            cmd: Some(strs(&["run"])),
            env: vec![("A".into(), "1".into())],
            workdir: Some("/w".into()),
            user: Some("2:2".into()),
            expose: strs(&["80/tcp"]),
            volume: strs(&["/data"]),
            labels: vec![("l".into(), "v".into())],
            stop_signal: Some("SIGINT".into()),
            ..Default::default()
        };
        let own = DiffId(Digest::of_bytes(b"own"));
        let cfg = build_config(
            Some(&base),
            &spec,
            &platform(),
            &[own],
            0,
            &strs(&["//x:l"]),
        );
        let c = &cfg["config"];
        assert_eq!(c["Healthcheck"], healthcheck);
        assert_eq!(c["Shell"], serde_json::json!(["/bin/sh", "-c"]));
        assert_eq!(c["OnBuild"], serde_json::json!(["RUN echo hi"]));
        assert_eq!(c["ArgsEscaped"], true);
        assert_eq!(c["X-Unknown"], serde_json::json!({"kept": true}));
        assert_eq!(c["Labels"], serde_json::json!({"l": "v"}));
        assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
        assert_eq!(c["Env"], serde_json::json!(["PATH=/bin", "A=1"]));
        assert_eq!(cfg["x-vendor-provenance"], doc["x-vendor-provenance"]);
        assert_eq!(cfg["os.version"], "6.1");
        assert_eq!(cfg["history"][0], doc["history"][0]);
        // With nothing set by the spec, the base's config comes through whole.
        let cfg = build_config(Some(&base), &ImageSpec::default(), &platform(), &[], 0, &[]);
        assert_eq!(cfg["config"], doc["config"]);
        assert_eq!(cfg["x-vendor-provenance"], doc["x-vendor-provenance"]);
        // Platform, created, rootfs and history are imgc's: a base variant goes
        // when the build platform has none.
        let mut arm = doc.clone();
        arm["variant"] = "v3".into();
        arm["created"] = "2001-01-01T00:00:00Z".into();
        let base = BaseConfig::from_slice(&serde_json::to_vec(&arm).unwrap()).unwrap();
        let cfg = build_config(Some(&base), &ImageSpec::default(), &platform(), &[], 0, &[]);
        assert_eq!(cfg.get("variant"), None);
        assert_eq!(cfg["created"], "1970-01-01T00:00:00Z");
    }

    /// The exact bytes of a scratch image's config with every field set: the
    /// JSON-level assembly writes what the typed model wrote before, so
    /// digests users already have stay valid.
    #[test]
    fn scratch_config_bytes_are_stable() {
        let spec = ImageSpec {
            entrypoint: Some(strs(&["/app"])),
            cmd: Some(strs(&["--port", "80"])),
            env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            workdir: Some("/w".into()),
            user: Some("1:1".into()),
            expose: strs(&["9090/tcp", "80/tcp"]),
            volume: strs(&["/v"]),
            labels: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
            annotations: vec![("not".into(), "in the config".into())],
            stop_signal: Some("SIGTERM".into()),
            ..Default::default()
        };
        let own = DiffId(Digest::of_bytes(b"own"));
        let cfg = build_config(None, &spec, &platform(), &[own], 0, &strs(&["//p:l"]));
        assert_eq!(
            String::from_utf8(canonical_json(&cfg)).unwrap(),
            format!(
                concat!(
                    r#"{{"architecture":"amd64","config":{{"Cmd":["--port","80"],"#,
                    r#""Entrypoint":["/app"],"Env":["B=2","A=1"],"#,
                    r#""ExposedPorts":{{"80/tcp":{{}},"9090/tcp":{{}}}},"Labels":{{"a":"2","z":"1"}},"#,
                    r#""StopSignal":"SIGTERM","User":"1:1","Volumes":{{"/v":{{}}}},"WorkingDir":"/w"}},"#,
                    r#""created":"1970-01-01T00:00:00Z","#,
                    r#""history":[{{"created":"1970-01-01T00:00:00Z","created_by":"imgc layer //p:l"}}],"#,
                    r#""os":"linux","rootfs":{{"diff_ids":["{own}"],"type":"layers"}}}}"#
                ),
                own = own
            )
        );
        let empty = build_config(None, &ImageSpec::default(), &platform(), &[], 0, &[]);
        assert_eq!(
            String::from_utf8(canonical_json(&empty)).unwrap(),
            r#"{"architecture":"amd64","config":{},"created":"1970-01-01T00:00:00Z","os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#
        );
    }

    #[test]
    fn a_malformed_base_config_is_an_error_naming_the_field() {
        let diff = Digest::of_bytes(b"b").to_string();
        let cases = [
            ("[]".to_string(), "not a JSON object"),
            ("{".to_string(), "EOF"),
            (
                r#"{"rootfs":{"diff_ids":[]},"config":[]}"#.into(),
                "`config` is not an object",
            ),
            (
                r#"{"rootfs":{"diff_ids":[]},"config":{"Env":"A=1"}}"#.into(),
                "`config.Env` is not a list of strings",
            ),
            (
                r#"{"rootfs":{"diff_ids":[]},"config":{"Env":[1]}}"#.into(),
                "`config.Env` is not a list of strings",
            ),
            (
                r#"{"rootfs":{"diff_ids":[]},"config":{"Labels":["a"]}}"#.into(),
                "`config.Labels` is not an object",
            ),
            (
                r#"{"rootfs":{"diff_ids":[]},"config":{"ExposedPorts":["80/tcp"]}}"#.into(),
                "`config.ExposedPorts` is not an object",
            ),
            (
                r#"{"config":{}}"#.into(),
                "`rootfs.diff_ids` is not a list of strings",
            ),
            (
                format!(r#"{{"rootfs":{{"diff_ids":["{diff}"]}},"history":{{}}}}"#),
                "`history` is not a list",
            ),
        ];
        for (json, want) in cases {
            let err = BaseConfig::from_slice(json.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(want), "{json}: {err}");
        }
        let ok = format!(r#"{{"rootfs":{{"diff_ids":["{diff}"]}},"config":null,"history":null}}"#);
        assert_eq!(
            BaseConfig::from_slice(ok.as_bytes()).unwrap().diff_ids(),
            vec![diff]
        );
    }

    /// `serde_json` must keep its maps sorted (its `preserve_order` feature off,
    /// which any dependency could turn on): parsed base configs rely on it.
    #[test]
    fn canonical_json_sorts_parsed_documents() {
        let v: Value = serde_json::from_str(r#"{"b":{"z":1,"a":2},"a":[{"y":1,"x":2}]}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":[{"x":2,"y":1}],"b":{"a":2,"z":1}}"#
        );
    }

    #[test]
    fn manifest_annotations_hold_the_spec_and_the_base() {
        let spec = vec![
            ("com.example.team".to_string(), "payments".to_string()),
            ("com.example.x".to_string(), "first".to_string()),
            ("com.example.x".to_string(), "second".to_string()),
        ];
        let base = Digest::of_bytes(b"base");
        // Scratch: the spec's annotations only, a later one winning.
        assert_eq!(
            manifest_annotations(&spec, None),
            BTreeMap::from([
                ("com.example.team".to_string(), "payments".to_string()),
                ("com.example.x".to_string(), "second".to_string()),
            ])
        );
        // A tagged base: its digest and name.
        let a = manifest_annotations(&spec, Some((&base, Some("example.com/base:1"))));
        assert_eq!(a[ANNOTATION_BASE_DIGEST], base.to_string());
        assert_eq!(a[ANNOTATION_BASE_NAME], "example.com/base:1");
        assert_eq!(a["com.example.team"], "payments");
        // No reference known: no base.name at all.
        let a = manifest_annotations(&[], Some((&base, None)));
        assert_eq!(
            a,
            BTreeMap::from([(ANNOTATION_BASE_DIGEST.to_string(), base.to_string())])
        );
        // The spec may name the base itself (an import's upstream name).
        let own = vec![(
            ANNOTATION_BASE_NAME.to_string(),
            "docker.io/library/debian:12".to_string(),
        )];
        for name in [None, Some("example.com/base:1")] {
            let a = manifest_annotations(&own, Some((&base, name)));
            assert_eq!(a[ANNOTATION_BASE_NAME], "docker.io/library/debian:12");
            assert_eq!(a[ANNOTATION_BASE_DIGEST], base.to_string());
        }
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
        let ann = manifest_annotations(
            &[("com.example.team".to_string(), "payments".to_string())],
            Some((&Digest::of_bytes(b"b"), Some("example.com/runtime:1"))),
        );
        let m = build_manifest((Digest::of_bytes(b"c"), 7), std::slice::from_ref(&l), ann);
        let v: serde_json::Value = serde_json::from_slice(&canonical_json(&m)).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(v["config"]["mediaType"], MEDIA_TYPE_CONFIG);
        assert_eq!(v["config"]["size"], 7);
        assert_eq!(v["layers"][0]["mediaType"], crate::layer::MEDIA_TYPE_ZSTD);
        assert_eq!(v["layers"][0]["digest"], l.digest.to_string());
        assert_eq!(
            v["annotations"],
            serde_json::json!({
                "com.example.team": "payments",
                ANNOTATION_BASE_NAME: "example.com/runtime:1",
                ANNOTATION_BASE_DIGEST: Digest::of_bytes(b"b").to_string(),
            })
        );
        // No annotations, no field.
        let m = build_manifest((Digest::of_bytes(b"c"), 7), &[], BTreeMap::new());
        assert!(
            !String::from_utf8(canonical_json(&m))
                .unwrap()
                .contains("annotations")
        );
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
