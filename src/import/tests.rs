use super::*;
use crate::cache::Cache;
use crate::layer::{Entry, EntryData, LayerFormat, MEDIA_TYPE_TAR, normalize, write_layer};
use crate::listing::PathKind;
use crate::oci::{build_config, build_manifest, canonical_json, check_layout};
use crate::output::write_layout;
use crate::spec::model::{Compression, ImageSpec};
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

fn arm64() -> Platform {
    Platform::parse("linux/arm64").unwrap()
}

/// A temp dir as a workspace root (canonical), with a CAS outside it.
struct Ws {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Ws {
    fn new() -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        Ws { dir, root }
    }

    fn cas(&self, name: &str) -> Cas {
        Cas::open(&self.dir.path().join(name).join("v1")).unwrap()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn layout<'a>(&'a self, rel: &'a str) -> Source<'a> {
        Source {
            root: &self.root,
            rel,
            format: Format::OciLayout,
        }
    }

    fn archive<'a>(&'a self, rel: &'a str) -> Source<'a> {
        Source {
            root: &self.root,
            rel,
            format: Format::DockerArchive,
        }
    }
}

/// A one-layer image stored in `cas`: (manifest digest+size, [config, layer]).
fn image(cas: &Cas, content: &str, platform: &Platform) -> ((Digest, u64), Vec<Digest>) {
    let entries = normalize(vec![
        Entry {
            path: "etc".into(),
            data: EntryData::Dir,
            mode: 0o750,
            uid: 0,
            gid: 0,
        },
        Entry {
            path: "etc/hello".into(),
            data: EntryData::Bytes(content.as_bytes().to_vec()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    ])
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

/// Writes a layout of one image at `ws/rel` (blobs copied, not linked).
fn layout_of(
    ws: &Ws,
    rel: &str,
    content: &str,
    platform: &Platform,
) -> ((Digest, u64), Vec<Digest>) {
    let src = ws.cas("src");
    let (m, blobs) = image(&src, content, platform);
    let out = ws.path(rel);
    write_layout(&out, &src, m, &blobs, &["latest".to_string()]).unwrap();
    // Replace the hard links into the source CAS with copies we may edit.
    for d in blobs.iter().chain([&m.0]) {
        let p = out.join("blobs/sha256").join(d.hex());
        let bytes = fs::read(&p).unwrap();
        fs::remove_file(&p).unwrap();
        fs::write(&p, bytes).unwrap();
    }
    (m, blobs)
}

fn blob_path(ws: &Ws, layout: &str, d: &Digest) -> PathBuf {
    ws.path(layout).join("blobs/sha256").join(d.hex())
}

fn no_memo() -> FileMemo {
    FileMemo::default()
}

#[test]
fn oci_layout_round_trip() {
    let ws = Ws::new();
    let (m, blobs) = layout_of(&ws, "layout", "hi", &amd64());
    let dst = ws.cas("dst");
    let img = import(ws.layout("layout"), &amd64(), &dst).unwrap();
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
    // One listing per layer, as written.
    let listed: Vec<(&str, PathKind, u32)> = img.listings[0]
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.mode))
        .collect();
    assert_eq!(
        listed,
        [
            ("etc", PathKind::Dir, 0o750),
            ("etc/hello", PathKind::File, 0o644)
        ]
    );
    // What was read: the index, the manifest, the config and the layer.
    let read: Vec<&str> = img.read.keys().map(String::as_str).collect();
    let mut want = vec!["layout/index.json".to_string()];
    want.extend([m.0, blobs[0], blobs[1]].map(|d| format!("layout/blobs/sha256/{}", d.hex())));
    want.sort();
    assert_eq!(read, want);
    assert_eq!(
        img.read["layout/index.json"],
        Key::of_bytes(&fs::read(ws.path("layout/index.json")).unwrap())
    );
}

#[test]
fn oci_layout_picks_the_platform() {
    let ws = Ws::new();
    let src = ws.cas("a");
    let (m1, b1) = image(&src, "amd", &amd64());
    let (m2, b2) = image(&src, "arm", &arm64());
    let layout = ws.path("layout");
    let blob_dir = layout.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).unwrap();
    for d in [m1.0, m2.0].iter().chain(&b1).chain(&b2) {
        fs::copy(src.blob_path(d), blob_dir.join(d.hex())).unwrap();
    }
    // A nested index with both platforms, referenced from index.json.
    let desc = |m: (Digest, u64), arch: &str, variant: Option<&str>| {
        let mut p = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m.0.to_string(), "size": m.1, "platform": p})
    };
    let nested = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc(m1, "amd64", None), desc(m2, "arm64", Some("v8"))]});
    let nested = serde_json::to_vec(&nested).unwrap();
    let nd = Digest::of_bytes(&nested);
    fs::write(blob_dir.join(nd.hex()), &nested).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd.to_string(),
         "size": nested.len()}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let dst = ws.cas("b");
    // arm64/v8 in the index is arm64.
    let img = import(ws.layout("layout"), &arm64(), &dst).unwrap();
    assert_eq!(img.manifest_digest, m2.0);
    // The nested index is read, and keyed.
    assert!(
        img.read
            .contains_key(&format!("layout/blobs/sha256/{}", nd.hex()))
    );
    let keyed = key_inputs(ws.layout("layout"), &arm64(), &no_memo()).unwrap();
    assert_eq!(keyed.files, img.read);
    assert_eq!(
        import(ws.layout("layout"), &amd64(), &dst)
            .unwrap()
            .manifest_digest,
        m1.0
    );
    let s390 = Platform::parse("linux/s390x").unwrap();
    let err = import(ws.layout("layout"), &s390, &dst).unwrap_err();
    assert!(matches!(err, ImportError::NoPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
}

#[test]
fn oci_layout_corrupt_blob_is_rejected() {
    let ws = Ws::new();
    let (_, blobs) = layout_of(&ws, "layout", "hi", &amd64());
    let p = blob_path(&ws, "layout", &blobs[1]);
    let mut bytes = fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    assert!(check_layout(&ws.path("layout")).is_err());
    let dst = ws.cas("b");
    let err = import(ws.layout("layout"), &amd64(), &dst).unwrap_err();
    assert!(matches!(err, ImportError::BadBlob { .. }), "{err}");
    assert!(err.to_string().contains(&blobs[1].hex()), "{err}");
    assert!(!dst.contains(&blobs[1]));
    // Wrong size: refused before it is read, on the key side too.
    fs::write(&p, b"short").unwrap();
    let err = import(ws.layout("layout"), &amd64(), &dst).unwrap_err();
    assert!(
        err.to_string().contains("5 bytes, the descriptor says"),
        "{err}"
    );
    let err = key_inputs(ws.layout("layout"), &amd64(), &no_memo()).unwrap_err();
    assert!(
        err.to_string().contains("5 bytes, the descriptor says"),
        "{err}"
    );
}

#[test]
fn key_inputs_are_exactly_the_files_the_import_reads() {
    let ws = Ws::new();
    layout_of(&ws, "layout", "hi", &amd64());
    // Files the import does not read are not keyed.
    fs::write(ws.path("layout/blobs/sha256/unrelated"), b"junk").unwrap();
    fs::write(ws.path("layout/README"), b"junk").unwrap();
    let keyed = key_inputs(ws.layout("layout"), &amd64(), &no_memo()).unwrap();
    let img = import(ws.layout("layout"), &amd64(), &ws.cas("c")).unwrap();
    assert_eq!(keyed.files, img.read);
    assert!(img.check_read(&keyed.files).is_ok());
    // Only the layer goes through the memo (documents are read to be parsed anyway).
    assert_eq!(keyed.learnt.len(), 1);

    // With the memo, the layer is not re-read, and the hashes are the same.
    let mut cache = Cache::open_in_memory().unwrap();
    let later = SystemTime::now() + Duration::from_secs(3600);
    let scope = crate::cache::WorkspaceId::of_root(std::path::Path::new("/ws"));
    cache.store_memo(&scope, later, &keyed.learnt).unwrap();
    let memo = cache.load_memo(&scope).unwrap();
    let again = key_inputs(ws.layout("layout"), &amd64(), &memo).unwrap();
    assert_eq!(again.files, keyed.files);
    assert!(again.learnt.is_empty());

    // A docker archive's key is its one file.
    let (tarball, _) = docker_archive(&ArchiveOpts::default());
    fs::write(ws.path("image.tar"), &tarball).unwrap();
    let keyed = key_inputs(ws.archive("image.tar"), &amd64(), &no_memo()).unwrap();
    let img = import(ws.archive("image.tar"), &amd64(), &ws.cas("c")).unwrap();
    assert_eq!(keyed.files, img.read);
    assert_eq!(
        keyed.files.into_iter().collect::<Vec<_>>(),
        [("image.tar".to_string(), Key::of_bytes(&tarball))]
    );
}

/// The bug: the key skipped symlinks while the import followed them, so
/// re-pointing a symlinked `index.json` served the old image from the cache.
#[test]
fn import_symlinked_index_json_is_keyed_as_read() {
    let ws = Ws::new();
    let (ma, _) = layout_of(&ws, "a", "one", &amd64());
    let (mb, _) = layout_of(&ws, "b", "two", &amd64());
    // One layout holding both images' blobs, and two index files.
    fs::create_dir_all(ws.path("layout/blobs")).unwrap();
    fs::rename(ws.path("a/blobs/sha256"), ws.path("layout/blobs/sha256")).unwrap();
    for e in fs::read_dir(ws.path("b/blobs/sha256")).unwrap() {
        let e = e.unwrap();
        fs::rename(e.path(), ws.path("layout/blobs/sha256").join(e.file_name())).unwrap();
    }
    fs::rename(ws.path("a/index.json"), ws.path("layout/index-a.json")).unwrap();
    fs::rename(ws.path("b/index.json"), ws.path("layout/index-b.json")).unwrap();
    symlink("index-a.json", ws.path("layout/index.json")).unwrap();

    let cas = ws.cas("c");
    let key_a = key_inputs(ws.layout("layout"), &amd64(), &no_memo()).unwrap();
    assert!(key_a.files.contains_key("layout/index.json"));
    assert_eq!(
        import(ws.layout("layout"), &amd64(), &cas)
            .unwrap()
            .manifest_digest,
        ma.0
    );

    fs::remove_file(ws.path("layout/index.json")).unwrap();
    symlink("index-b.json", ws.path("layout/index.json")).unwrap();
    let key_b = key_inputs(ws.layout("layout"), &amd64(), &no_memo()).unwrap();
    assert_ne!(
        key_a.files["layout/index.json"],
        key_b.files["layout/index.json"]
    );
    let img = import(ws.layout("layout"), &amd64(), &cas).unwrap();
    assert_eq!(img.manifest_digest, mb.0);
    assert_eq!(img.read, key_b.files);

    // A symlinked layout directory is read through too, under its own name.
    symlink("layout", ws.path("linked")).unwrap();
    let img = import(ws.layout("linked"), &amd64(), &cas).unwrap();
    assert_eq!(img.manifest_digest, mb.0);
    assert!(img.read.contains_key("linked/index.json"));
}

#[test]
fn import_links_leaving_the_workspace_are_refused() {
    let ws = Ws::new();
    let (_, blobs) = layout_of(&ws, "layout", "hi", &amd64());
    // index.json -> /dev/zero: refused, never read (it would never end).
    let index = ws.path("layout/index.json");
    let saved = fs::read(&index).unwrap();
    fs::remove_file(&index).unwrap();
    symlink("/dev/zero", &index).unwrap();
    for err in [
        key_inputs(ws.layout("layout"), &amd64(), &no_memo()).unwrap_err(),
        import(ws.layout("layout"), &amd64(), &ws.cas("c")).unwrap_err(),
    ] {
        assert!(matches!(err, ImportError::Escapes { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "`layout/index.json` resolves outside the workspace through a symbolic link"
        );
    }
    // A layer blob that is a link to a file outside the workspace.
    fs::remove_file(&index).unwrap();
    fs::write(&index, saved).unwrap();
    let layer = blob_path(&ws, "layout", &blobs[1]);
    let outside = ws.dir.path().join("outside");
    fs::rename(&layer, &outside).unwrap();
    symlink(&outside, &layer).unwrap();
    let err = import(ws.layout("layout"), &amd64(), &ws.cas("c")).unwrap_err();
    assert!(matches!(err, ImportError::Escapes { .. }), "{err}");
    // The layout directory itself through a link out.
    symlink(ws.path("layout"), ws.dir.path().join("out-layout")).unwrap();
    symlink("../out-layout", ws.path("via")).unwrap();
    let err = key_inputs(ws.layout("via"), &amd64(), &no_memo()).unwrap_err();
    assert!(matches!(err, ImportError::Escapes { .. }), "{err}");
}

/// A layer descriptor of size 0 whose blob links to `/dev/zero`, in a layout
/// of its own: `(layout rel, manifest blob path)`.
fn zero_size_layer_layout(ws: &Ws, blob: &dyn Fn(&Path)) -> Digest {
    let layer = Digest::of_bytes(b"");
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]}}))
    .unwrap();
    let cd = Digest::of_bytes(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": MEDIA_TYPE_TAR, "digest": layer.to_string(), "size": 0}]}))
    .unwrap();
    let md = Digest::of_bytes(&manifest);
    let dir = ws.path("zero/blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(cd.hex()), &config).unwrap();
    fs::write(dir.join(md.hex()), &manifest).unwrap();
    blob(&dir.join(layer.hex()));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(),
         "size": manifest.len()}]});
    fs::write(
        ws.path("zero/index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    layer
}

#[test]
fn import_blob_with_size_0_linking_to_dev_zero_is_refused() {
    let ws = Ws::new();
    zero_size_layer_layout(&ws, &|p| symlink("/dev/zero", p).unwrap());
    let cas = ws.cas("c");
    let err = import(ws.layout("zero"), &amd64(), &cas).unwrap_err();
    assert!(matches!(err, ImportError::Escapes { .. }), "{err}");
    assert!(key_inputs(ws.layout("zero"), &amd64(), &no_memo()).is_err());
    // A regular file longer than its descriptor says is refused before reading.
    let ws = Ws::new();
    zero_size_layer_layout(&ws, &|p| {
        let f = fs::File::create(p).unwrap();
        f.set_len(1 << 30).unwrap(); // 1 GiB, sparse
    });
    let err = import(ws.layout("zero"), &amd64(), &cas).unwrap_err();
    assert!(
        err.to_string()
            .contains("1073741824 bytes, the descriptor says 0"),
        "{err}"
    );
    // The empty blob it should be is fine (an empty tar stream is an empty layer).
    let ws = Ws::new();
    let layer = zero_size_layer_layout(&ws, &|p| fs::write(p, b"").unwrap());
    let img = import(ws.layout("zero"), &amd64(), &cas).unwrap();
    assert_eq!(img.layers[0].digest, layer);
    assert!(img.listings[0].entries.is_empty());
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn import_fifo_as_index_json_or_blob_fails_promptly() {
    let ws = Ws::new();
    let (m, blobs) = layout_of(&ws, "layout", "hi", &amd64());
    let start = Instant::now();
    let index = ws.path("layout/index.json");
    fs::remove_file(&index).unwrap();
    mkfifo(&index);
    for err in [
        key_inputs(ws.layout("layout"), &amd64(), &no_memo()).unwrap_err(),
        import(ws.layout("layout"), &amd64(), &ws.cas("c")).unwrap_err(),
    ] {
        assert_eq!(
            err.to_string(),
            "cannot read `layout/index.json`: it is a FIFO, not a regular file"
        );
    }
    // A FIFO as the layer blob (of the right name), and as the manifest.
    let ws = Ws::new();
    layout_of(&ws, "layout", "hi", &amd64());
    for d in [blobs[1], m.0] {
        let p = blob_path(&ws, "layout", &d);
        let saved = fs::read(&p).unwrap();
        fs::remove_file(&p).unwrap();
        mkfifo(&p);
        let err = import(ws.layout("layout"), &amd64(), &ws.cas("c")).unwrap_err();
        assert!(
            err.to_string().contains("it is a FIFO, not a regular file"),
            "{err}"
        );
        assert!(key_inputs(ws.layout("layout"), &amd64(), &no_memo()).is_err());
        fs::remove_file(&p).unwrap();
        fs::write(&p, saved).unwrap();
    }
    // A FIFO as a docker archive.
    mkfifo(&ws.path("image.tar"));
    let err = import(ws.archive("image.tar"), &amd64(), &ws.cas("c")).unwrap_err();
    assert!(err.to_string().contains("it is a FIFO"), "{err}");
    assert!(key_inputs(ws.archive("image.tar"), &amd64(), &no_memo()).is_err());
    // "Promptly": nothing waited for a writer.
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn import_json_documents_are_capped() {
    let ws = Ws::new();
    let (m, _) = layout_of(&ws, "layout", "hi", &amd64());
    // An index.json over 4 MiB (sparse: nothing real is written).
    let index = ws.path("layout/index.json");
    let saved = fs::read(&index).unwrap();
    fs::File::create(&index)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let err = import(ws.layout("layout"), &amd64(), &ws.cas("c")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`layout/index.json` is not a valid image index: it is larger than the limit of 4 MiB"
    );
    // A manifest whose descriptor claims more than the cap: refused unread.
    let mut index_json: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    index_json["manifests"][0]["size"] = (JSON_LIMIT + 1).into();
    fs::write(&index, serde_json::to_vec(&index_json).unwrap()).unwrap();
    let err = import(ws.layout("layout"), &amd64(), &ws.cas("c")).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "its descriptor ({}) is larger than the limit of 4 MiB",
            m.0
        )),
        "{err}"
    );
}

/// A gzip layer whose tar starts with a PAX header of 300 MB, streamed (never
/// held in memory): refused when the header is seen, before its data is read.
#[test]
fn import_huge_pax_header_in_a_layer_is_refused() {
    let ws = Ws::new();
    let big: u64 = 300 << 20;
    let mut h = tar::Header::new_ustar();
    h.set_path("././@PaxHeader").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(big);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(h.as_bytes()).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..(big >> 20) {
        gz.write_all(&chunk).unwrap();
    }
    gz.write_all(&[0u8; 1024]).unwrap();
    let layer = gz.finish().unwrap();
    let digest = Digest::of_bytes(&layer);
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest.to_string()]}}))
    .unwrap();
    let cd = Digest::of_bytes(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": MEDIA_TYPE_GZIP, "digest": digest.to_string(),
                    "size": layer.len()}]}))
    .unwrap();
    let md = Digest::of_bytes(&manifest);
    let dir = ws.path("pax/blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(digest.hex()), &layer).unwrap();
    fs::write(dir.join(cd.hex()), &config).unwrap();
    fs::write(dir.join(md.hex()), &manifest).unwrap();
    fs::write(
        ws.path("pax/index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": md.to_string(), "size": manifest.len()}]}))
        .unwrap(),
    )
    .unwrap();
    let err = import(ws.layout("pax"), &amd64(), &ws.cas("c")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImportError::BadBlob { .. }), "{msg}");
    assert!(
        msg.contains("the PAX header at byte 0 holds 314572800 bytes, over the limit of 1 MiB"),
        "{msg}"
    );
    assert!(msg.contains("pax/blobs/sha256/"), "{msg}");
}

/// A docker archive whose first member is a PAX header of 300 MB (a sparse
/// file): refused at the header.
#[test]
fn import_huge_pax_header_in_a_docker_archive_is_refused() {
    let ws = Ws::new();
    let big: u64 = 300 << 20;
    let mut h = tar::Header::new_ustar();
    h.set_path("././@PaxHeader").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(big);
    h.set_cksum();
    let path = ws.path("huge.tar");
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    f.set_len(512 + big + 3 * 512).unwrap();
    drop(f);
    let err = import(ws.archive("huge.tar"), &amd64(), &ws.cas("c")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`huge.tar` is not a valid docker archive: the PAX header at byte 0 holds 314572800 bytes, over the limit of 1 MiB"
    );
}

#[test]
fn a_file_changed_between_key_and_read_fails_the_import() {
    // Same size, other content, still a valid layout: only the hash tells.
    let ws = Ws::new();
    layout_of(&ws, "layout", "hi", &amd64());
    let keyed = key_inputs(ws.layout("layout"), &amd64(), &no_memo()).unwrap();
    let index = ws.path("layout/index.json");
    let text = fs::read_to_string(&index).unwrap();
    assert!(text.contains("\"latest\""));
    fs::write(&index, text.replace("\"latest\"", "\"stable\"")).unwrap();
    let img = import(ws.layout("layout"), &amd64(), &ws.cas("c")).unwrap();
    let err = img.check_read(&keyed.files).unwrap_err();
    assert!(matches!(err, ImportError::Changed { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "`layout/index.json` changed while it was imported"
    );

    // The same for a docker archive.
    let (a, _) = docker_archive(&ArchiveOpts::default());
    let (b, _) = docker_archive(&ArchiveOpts {
        tag: "y:latest",
        ..ArchiveOpts::default()
    });
    assert_eq!(a.len(), b.len());
    fs::write(ws.path("image.tar"), &a).unwrap();
    let keyed = key_inputs(ws.archive("image.tar"), &amd64(), &no_memo()).unwrap();
    fs::write(ws.path("image.tar"), &b).unwrap();
    let img = import(ws.archive("image.tar"), &amd64(), &ws.cas("c")).unwrap();
    let err = img.check_read(&keyed.files).unwrap_err();
    assert_eq!(err.to_string(), "`image.tar` changed while it was imported");
}

#[test]
fn check_read_wants_the_same_files_and_hashes() {
    let k = |s: &[u8]| Key::of_bytes(s);
    let map = |pairs: &[(&str, Key)]| -> BTreeMap<String, Key> {
        pairs.iter().map(|(p, h)| (p.to_string(), *h)).collect()
    };
    let img = |read: BTreeMap<String, Key>| ImportedImage {
        config: ImageConfiguration::default(),
        config_digest: Digest::of_bytes(b"c"),
        config_size: 1,
        layers: Vec::new(),
        listings: Vec::new(),
        manifest_digest: Digest::of_bytes(b"m"),
        manifest_size: 1,
        read,
    };
    let read = img(map(&[("a", k(b"1")), ("b", k(b"2"))]));
    assert!(
        read.check_read(&map(&[("a", k(b"1")), ("b", k(b"2"))]))
            .is_ok()
    );
    for (keyed, path) in [
        // Read but not keyed, keyed but not read, keyed with other content.
        (map(&[("a", k(b"1"))]), "b"),
        (map(&[("a", k(b"1")), ("b", k(b"2")), ("c", k(b"3"))]), "c"),
        (map(&[("a", k(b"x")), ("b", k(b"2"))]), "a"),
        // A changed file is named before the files read on one side only.
        (map(&[("0", k(b"0")), ("b", k(b"x"))]), "b"),
    ] {
        match read.check_read(&keyed) {
            Err(ImportError::Changed { path: p }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn single_image_layout_of_another_platform_is_an_error() {
    let ws = Ws::new();
    layout_of(&ws, "third_party/x", "hi", &arm64());
    for err in [
        import(ws.layout("third_party/x"), &amd64(), &ws.cas("c")).unwrap_err(),
        key_inputs(ws.layout("third_party/x"), &amd64(), &no_memo()).unwrap_err(),
    ] {
        assert_eq!(
            err.to_string(),
            "`third_party/x` holds a linux/arm64 image; the workspace builds linux/amd64"
        );
    }
    // arm64 and arm64/v8 are the same platform.
    let v8 = Platform::parse("linux/arm64/v8").unwrap();
    assert!(import(ws.layout("third_party/x"), &v8, &ws.cas("c")).is_ok());
}

#[test]
fn single_image_docker_archive_of_another_platform_is_an_error() {
    let ws = Ws::new();
    let (tarball, _) = docker_archive(&ArchiveOpts {
        arch: "arm64",
        ..ArchiveOpts::default()
    });
    fs::write(ws.path("x.tar"), &tarball).unwrap();
    let err = import(ws.archive("x.tar"), &amd64(), &ws.cas("c")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`x.tar` holds a linux/arm64 image; the workspace builds linux/amd64"
    );
    assert!(import(ws.archive("x.tar"), &arm64(), &ws.cas("c")).is_ok());
}

#[test]
fn platforms_normalize_as_containerd_does() {
    let p = |s: &str| Platform::parse(s).unwrap();
    let yes = [
        ("linux", "arm64", None, "linux/arm64"),
        ("linux", "arm64", Some("v8"), "linux/arm64"),
        ("linux", "aarch64", None, "linux/arm64/v8"),
        ("linux", "amd64", Some("v1"), "linux/amd64"),
        ("linux", "x86_64", None, "linux/amd64"),
        ("linux", "arm", None, "linux/arm/v7"),
        ("linux", "arm", Some("7"), "linux/arm"),
        ("linux", "armhf", None, "linux/arm/v7"),
        ("linux", "armel", None, "linux/arm/v6"),
        ("Linux", "i386", None, "linux/386"),
    ];
    for (os, arch, v, want) in yes {
        assert!(
            platform_matches(os, arch, v, &p(want)),
            "{os}/{arch}/{v:?} vs {want}"
        );
    }
    let no = [
        ("linux", "arm64", None, "linux/amd64"),
        ("linux", "amd64", Some("v3"), "linux/amd64"),
        ("linux", "arm", Some("v6"), "linux/arm"),
        ("windows", "amd64", None, "linux/amd64"),
        ("linux", "arm64", Some("v9"), "linux/arm64"),
    ];
    for (os, arch, v, want) in no {
        assert!(
            !platform_matches(os, arch, v, &p(want)),
            "{os}/{arch}/{v:?} vs {want}"
        );
    }
}

// ---------------------------------------------------------------------------
// Docker archives

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
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

struct ArchiveOpts<'a> {
    /// Docker ≥ 25 `blobs/sha256` layout, else the classic one.
    new_format: bool,
    diff_id_override: Option<&'a str>,
    arch: &'a str,
    os: &'a str,
    tag: &'a str,
    /// Names in `manifest.json`'s `Layers` instead of the real ones.
    layer_names: Option<Vec<String>>,
}

impl Default for ArchiveOpts<'_> {
    fn default() -> Self {
        ArchiveOpts {
            new_format: false,
            diff_id_override: None,
            arch: "amd64",
            os: "linux",
            tag: "x:latest",
            layer_names: None,
        }
    }
}

/// A `docker save`-style archive. Layers: a plain tar, a gzip one, and
/// (classic format) a symlinked duplicate of the first.
fn docker_archive(o: &ArchiveOpts<'_>) -> (Vec<u8>, Vec<Vec<u8>>) {
    let l1 = layer_tar("a.txt", b"one");
    let l2_tar = layer_tar("b.txt", b"two");
    let l2 = gzip(&l2_tar);
    let mut diff_ids = vec![
        Digest::of_bytes(&l1).to_string(),
        Digest::of_bytes(&l2_tar).to_string(),
    ];
    if !o.new_format {
        diff_ids.push(diff_ids[0].clone());
    }
    if let Some(d) = o.diff_id_override {
        diff_ids[0] = d.to_string();
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": o.arch, "os": o.os, "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "ExposedPorts": null},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "container_config": {"Hostname": ""}, "docker_version": "24.0.0"
    }))
    .unwrap();
    let ch = Digest::of_bytes(&config).hex();
    let mut b = tar::Builder::new(Vec::new());
    let (cname, names) = if o.new_format {
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
    let names = o.layer_names.clone().unwrap_or(names);
    let manifest = serde_json::json!([{"Config": cname, "RepoTags": [o.tag], "Layers": names}]);
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
        let ws = Ws::new();
        let (tarball, layers) = docker_archive(&ArchiveOpts {
            new_format,
            ..ArchiveOpts::default()
        });
        fs::write(ws.path("image.tar"), &tarball).unwrap();
        let cas = ws.cas("c");
        let img = import(ws.archive("image.tar"), &amd64(), &cas).unwrap();
        let n = if new_format { 2 } else { 3 };
        assert_eq!(img.layers.len(), n);
        assert_eq!(img.listings.len(), n);
        assert_eq!(img.layers[0].digest, Digest::of_bytes(&layers[0]));
        assert_eq!(img.layers[0].diff_id.0, img.layers[0].digest);
        assert_eq!(img.layers[0].media_type, MEDIA_TYPE_TAR);
        assert_eq!(img.layers[1].digest, Digest::of_bytes(&layers[1]));
        assert_eq!(img.layers[1].media_type, MEDIA_TYPE_GZIP);
        assert_ne!(img.layers[1].diff_id.0, img.layers[1].digest);
        assert_eq!(img.layers[1].size, layers[1].len() as u64);
        assert_eq!(img.listings[0].entries[0].path, "a.txt");
        assert_eq!(img.listings[1].entries[0].path, "b.txt");
        if !new_format {
            assert_eq!(img.layers[2], img.layers[0]);
            assert_eq!(img.listings[2], img.listings[0]);
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
        let out = ws.dir.path().join("out");
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
    let ws = Ws::new();
    let cas = ws.cas("c");
    let path = ws.path("image.tar");
    let run = || import(ws.archive("image.tar"), &amd64(), &cas);
    // Wrong diff_id in the config.
    let wrong = Digest::of_bytes(b"nope").to_string();
    let (tarball, _) = docker_archive(&ArchiveOpts {
        diff_id_override: Some(&wrong),
        ..ArchiveOpts::default()
    });
    fs::write(&path, &tarball).unwrap();
    let err = run().unwrap_err();
    assert!(
        matches!(err, ImportError::DiffIdMismatch { index: 0, .. }),
        "{err}"
    );
    // Truncated at many points: always an error naming the file, never a panic.
    let (tarball, _) = docker_archive(&ArchiveOpts {
        new_format: true,
        ..ArchiveOpts::default()
    });
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
        let err = run().unwrap_err();
        assert!(err.to_string().contains("image.tar"), "{cut}: {err}");
    }
    // Garbage.
    fs::write(&path, vec![0x5a; 4096]).unwrap();
    assert!(run().is_err());
    // A blob whose name is not its digest.
    let mut b = tar::Builder::new(Vec::new());
    add(
        &mut b,
        &format!("blobs/sha256/{}", Digest::of_bytes(b"x").hex()),
        b"y",
    );
    fs::write(&path, b.into_inner().unwrap()).unwrap();
    let err = run().unwrap_err();
    assert!(matches!(err, ImportError::BadBlob { .. }), "{err}");
    // A manifest.json over the cap is refused by its header, unread.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(JSON_LIMIT + 1);
    h.set_mode(0o644);
    h.set_path("manifest.json").unwrap();
    h.set_cksum();
    b.append(&h, io::repeat(b' ').take(JSON_LIMIT + 1)).unwrap();
    fs::write(&path, b.into_inner().unwrap()).unwrap();
    let err = run().unwrap_err().to_string();
    assert!(
        err.contains("`manifest.json` holds 4194305 bytes, over the limit of 4 MiB"),
        "{err}"
    );
    // Missing file.
    let err = import(ws.archive("nope.tar"), &amd64(), &cas).unwrap_err();
    assert_eq!(err.to_string(), "docker archive `nope.tar` does not exist");
    let err = import(ws.layout("nope"), &amd64(), &cas).unwrap_err();
    assert_eq!(
        err.to_string(),
        "OCI layout directory `nope` does not exist"
    );
}

/// Names an archive chooses reach messages escaped, never as raw control
/// characters that a terminal would act on.
#[test]
fn archive_names_in_messages_are_escaped() {
    let ws = Ws::new();
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let (tarball, _) = docker_archive(&ArchiveOpts {
        layer_names: Some(vec![evil.to_string(); 3]),
        ..ArchiveOpts::default()
    });
    fs::write(ws.path("image.tar"), &tarball).unwrap();
    let msg = import(ws.archive("image.tar"), &amd64(), &ws.cas("c"))
        .unwrap_err()
        .to_string();
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    assert!(msg.contains("\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"), "{msg}");

    let (tarball, _) = docker_archive(&ArchiveOpts {
        os: "linux\u{1b}[31m",
        ..ArchiveOpts::default()
    });
    fs::write(ws.path("image.tar"), &tarball).unwrap();
    let msg = import(ws.archive("image.tar"), &amd64(), &ws.cas("c"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "`image.tar` holds a linux\\u{1b}[31m/amd64 image; the workspace builds linux/amd64"
    );
}

#[test]
fn member_paths() {
    use super::archive::{normalize_member, resolve_member};
    assert_eq!(normalize_member("./a//b/"), "a/b");
    assert_eq!(
        resolve_member("cccc", "../aaaa/layer.tar"),
        "aaaa/layer.tar"
    );
    assert_eq!(resolve_member("x", "/y/z"), "y/z");
}

/// A pulled image is imported through the layout's checks: the same result as
/// the layout import of the same image, and nothing unverified is used.
#[test]
fn a_pulled_image_is_imported_like_a_layout_and_verified() {
    let ws = Ws::new();
    let cas = ws.cas("c");
    let (m, blobs) = image(&cas, "pulled", &amd64());
    let bytes = cas.read(&m.0).unwrap();
    let pulled = Pulled {
        reference: "r.io/a:1@sha256:x",
        manifest: m,
        manifest_bytes: &bytes,
    };
    let img = import_pulled(pulled, &amd64(), &cas).unwrap();
    assert_eq!(img.manifest_digest, m.0);
    assert_eq!(img.config_digest, blobs[0]);
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].digest, blobs[1]);
    assert!(
        img.listings[0]
            .entries
            .iter()
            .any(|e| e.path == "etc/hello")
    );
    assert!(
        img.read.is_empty(),
        "a registry import reads no workspace file"
    );

    // The manifest's bytes must be what its digest names.
    let mut other = bytes.clone();
    other.push(b' ');
    let bad = Pulled {
        manifest_bytes: &other,
        ..pulled
    };
    assert!(matches!(
        import_pulled(bad, &amd64(), &cas),
        Err(ImportError::BadBlob { .. })
    ));
    // Another platform's image is refused.
    assert!(matches!(
        import_pulled(pulled, &arm64(), &cas),
        Err(ImportError::WrongPlatform { .. })
    ));
    // A layer damaged in the store after the pull is not used.
    let layer = cas.blob_path(&blobs[1]);
    let mut data = fs::read(&layer).unwrap();
    let i = data.len() / 2;
    data[i] ^= 0x5a;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&layer, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&layer, &data).unwrap();
    let e = import_pulled(pulled, &amd64(), &cas).unwrap_err();
    assert!(
        matches!(&e, ImportError::BadBlob { digest, .. } if *digest == blobs[1].to_string()),
        "{e}"
    );
}
