//! Registries: pulling pinned images into the store, and `imgc push`, against a
//! real registry on loopback (Debian's `docker-registry`, started per test).

use crate::support::registry::{Registry, RegistryOpts};
use crate::support::{
    Ws, layout_digest, manifest_of, require, small_ws, spec_examples, stderr, stdout,
};
use imgc::cas::Cas;
use imgc::hash::Digest;
use imgc::registry::Reference;
use imgc::registry::Secret;
use imgc::registry::client::{Client, ClientOptions};
use imgc::registry::credentials::{Credentials, Sources};
use imgc::registry::pull::{PullError, fetch_image};
use imgc::spec::model::Platform;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// The registry and skopeo, which the README's test command installs.
fn tools() {
    require("docker-registry");
    require("skopeo");
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

/// The manifest digest of the image in the layout at `dir`.
fn layout_manifest_digest(dir: &Path) -> Digest {
    layout_digest(dir).parse().unwrap()
}

fn built_app() -> Ws {
    let ws = small_ws();
    ws.ok(&["build", "//..."]);
    ws
}

#[test]
fn a_pinned_image_pushed_by_skopeo_is_pulled_into_the_store_verified() {
    tools();
    let reg = Registry::start(RegistryOpts::with_basic_auth("puller", "pull pw"));
    let ws = built_app();
    let layout = ws.layout("app", "app");
    reg.skopeo_push(&layout, "team/app:1", false);
    let digest = layout_manifest_digest(&layout);

    let store = tempfile::tempdir().unwrap();
    let cas = Cas::open(store.path()).unwrap();
    let mut opts = ClientOptions::anonymous();
    opts.credentials = Arc::new(
        Credentials::from_sources(Sources {
            env_host: Some(reg.host()),
            env_username: Some("puller".into()),
            env_password: Some(Secret::new("pull pw")),
            ..Sources::default()
        })
        .unwrap(),
    );
    let client = Client::new(opts);
    let r = Reference::parse(&format!("{}/team/app:1@{digest}", reg.host())).unwrap();
    assert_eq!(client.resolve(&r).unwrap().digest, digest);

    let pulled = fetch_image(&client, &r, &amd64(), &cas).unwrap();
    assert_eq!(pulled.manifest_digest, digest);
    let manifest = manifest_of(&layout);
    assert_eq!(
        pulled.config_digest.to_string(),
        manifest["config"]["digest"].as_str().unwrap()
    );
    let layers: Vec<String> = pulled.layers.iter().map(|l| l.digest.to_string()).collect();
    let want: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers, want);
    // Every blob is in the store, byte for byte what the layout holds.
    for d in pulled.blobs.iter() {
        let ours = std::fs::read(cas.blob_path(d)).unwrap();
        let theirs = std::fs::read(layout.join("blobs/sha256").join(d.hex())).unwrap();
        assert!(ours == theirs, "blob {d} differs");
    }
    assert_eq!(pulled.blobs_fetched, 1 + layers.len());

    // A second pull finds everything in the store: nothing is fetched.
    let before = reg.access_log().len();
    let again = fetch_image(&client, &r, &amd64(), &cas).unwrap();
    assert_eq!((again.blobs_fetched, again.bytes_fetched), (0, 0));
    let blob_gets = reg.access_log()[before..]
        .iter()
        .filter(|l| l.method == "GET" && l.path().contains("/blobs/"))
        .count();
    assert_eq!(blob_gets, 0);

    // A digest that is not the image's is refused, and the wrong platform too.
    let wrong = Reference::parse(&format!(
        "{}/team/app@{}",
        reg.host(),
        Digest::of_bytes(b"not it")
    ))
    .unwrap();
    let err = fetch_image(&client, &wrong, &amd64(), &cas).unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "{err}");
    let err = fetch_image(&client, &r, &Platform::parse("linux/arm64").unwrap(), &cas)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds a linux/amd64 image"), "{err}");

    // Without credentials: a clear error naming the registry.
    let anonymous = Client::new(ClientOptions::anonymous());
    let err = fetch_image(&anonymous, &r, &amd64(), &cas)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("authentication required for {}", reg.host())),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// imgc push

/// `imgc push ARGS` in `ws` with credentials for `reg` (if any) from the CI
/// variables, and no other credential source (an empty docker config).
fn push_cmd(ws: &Ws, reg: &Registry, creds: Option<(&str, &str)>, args: &[&str]) -> Command {
    let mut all = vec!["push"];
    all.extend_from_slice(args);
    let mut c = ws.cmd(&all);
    let empty = ws.cache.path().join("no-docker-config");
    std::fs::create_dir_all(&empty).unwrap();
    c.env("DOCKER_CONFIG", &empty)
        .env("HOME", &empty)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("IMGC_REGISTRY_HOST")
        .env_remove("IMGC_REGISTRY_USERNAME")
        .env_remove("IMGC_REGISTRY_PASSWORD");
    if let Some((u, p)) = creds {
        c.env("IMGC_REGISTRY_HOST", reg.host())
            .env("IMGC_REGISTRY_USERNAME", u)
            .env("IMGC_REGISTRY_PASSWORD", p);
    }
    c
}

/// Runs a push that must succeed; its JSON lines (`--output json` is added).
fn push_json(ws: &Ws, reg: &Registry, creds: Option<(&str, &str)>, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--output", "json"]);
    let out = push_cmd(ws, reg, creds, &all).output().unwrap();
    assert!(
        out.status.success(),
        "imgc push {all:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn pushed_lines(lines: &[Value]) -> BTreeMap<String, Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "pushed")
        .map(|l| (l["label"].as_str().unwrap().to_string(), l.clone()))
        .collect()
}

/// `//a/b:c` → (`a/b`, `c`).
fn split_label(label: &str) -> (String, String) {
    let rest = label.trim_start_matches("//");
    let (pkg, name) = rest.split_once(':').unwrap();
    (pkg.to_string(), name.to_string())
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn push_of_spec_examples_round_trips_through_skopeo() {
    tools();
    let reg = Registry::start(RegistryOpts::with_basic_auth("ci", "ci pass 1"));
    let ws = Ws::copy_of(&spec_examples());
    let namespace = format!("{}/acme", reg.host());
    let lines = push_json(
        &ws,
        &reg,
        Some(("ci", "ci pass 1")),
        &["//...", "--registry", &namespace],
    );
    let pushed = pushed_lines(&lines);
    assert!(pushed.len() >= 4, "{lines:?}");
    let summary = lines.iter().find(|l| l["event"] == "push-summary").unwrap();
    assert_eq!(summary["failed"], 0);
    for (label, p) in &pushed {
        let (pkg, name) = split_label(label);
        let layout = ws.layout(&pkg, &name);
        let digest = layout_manifest_digest(&layout);
        assert_eq!(p["digest"], digest.to_string(), "{label}");
        let reference = p["reference"].as_str().unwrap();
        assert!(
            reference.starts_with(&format!("{namespace}/{pkg}/{name}:")),
            "{reference}"
        );
        // The registry holds our manifest byte for byte.
        let raw = crate::support::run(
            Command::new("skopeo")
                .args([
                    "inspect",
                    "--raw",
                    "--tls-verify=false",
                    "--creds",
                    "ci:ci pass 1",
                ])
                .arg(format!("docker://{reference}")),
        );
        assert_eq!(Digest::of_bytes(raw.as_bytes()), digest, "{label}");
        // skopeo reads it back: the same config, and the same manifest unless
        // skopeo rewrote it (it compresses uncompressed layers when it copies
        // them into a layout, which changes the layer digests).
        let back = tempfile::tempdir().unwrap();
        let dest = back.path().join("oci");
        reg.skopeo_pull(&reference[reg.host().len() + 1..], &dest);
        assert_eq!(
            manifest_of(&dest)["config"]["digest"],
            manifest_of(&layout)["config"]["digest"],
            "{label}"
        );
        let uncompressed = manifest_of(&layout)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar");
        if !uncompressed {
            assert_eq!(layout_manifest_digest(&dest), digest, "{label}");
        }
    }
}

#[test]
fn a_second_push_uploads_nothing() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    let ws = small_ws();
    let namespace = format!("{}/team", reg.host());
    let first = push_json(&ws, &reg, None, &["//...", "--registry", &namespace]);
    assert_eq!(pushed_lines(&first).len(), 2);
    let before = reg.access_log().len();
    let second = push_json(&ws, &reg, None, &["//...", "--registry", &namespace]);
    let log = reg.access_log();
    let again = &log[before..];
    assert!(!again.is_empty());
    // Zero blob uploads, and zero manifest PUTs: the tags are HEAD-ed first and
    // already point at the same manifests.
    let uploads: Vec<_> = again.iter().filter(|l| l.is_blob_upload()).collect();
    assert!(uploads.is_empty(), "{uploads:?}");
    let puts: Vec<_> = again.iter().filter(|l| l.is_manifest_put()).collect();
    assert!(puts.is_empty(), "{puts:?}");
    assert!(!again.iter().any(|l| l.method == "POST"), "{again:?}");
    for p in pushed_lines(&second).values() {
        assert_eq!(p["bytes_uploaded"], 0, "{p}");
        assert_eq!(p["blobs_uploaded"], 0, "{p}");
        assert_eq!(p["blobs_existing"], p["blobs"], "{p}");
        assert_eq!(p["manifests_put"], 0, "{p}");
    }
}

#[test]
fn unauthorized_push_fails_clearly_without_the_password() {
    tools();
    let password = "Wr0ng-Pa55word-x7Q";
    let reg = Registry::start(RegistryOpts::with_basic_auth("ci", "the right one"));
    let ws = small_ws();
    let namespace = format!("{}/team", reg.host());
    let out = push_cmd(
        &ws,
        &reg,
        Some(("ci", password)),
        &["//...", "--registry", &namespace],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("authentication required for {}", reg.host())),
        "{err}"
    );
    assert!(err.contains("docker login"), "{err}");
    assert!(!reg.access_log().iter().any(|l| l.method == "PUT"));
    // Nowhere: not in what imgc printed, not in the registry's logs, not in any
    // file imgc wrote (workspace, output, cache).
    assert!(!stdout(&out).contains(password) && !err.contains(password));
    assert!(!reg.logs().contains(password));
    let log_text = format!("{:?}", reg.access_log());
    assert!(!log_text.contains(password));
    for dir in [ws.root().to_path_buf(), ws.cache.path().to_path_buf()] {
        for e in walkdir::WalkDir::new(&dir) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                assert!(
                    !bytes
                        .windows(password.len())
                        .any(|w| w == password.as_bytes()),
                    "the password is in {}",
                    e.path().display()
                );
            }
        }
    }
}

#[test]
fn push_after_a_base_cascade_uploads_only_configs_and_manifests() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    let ws = small_ws();
    let namespace = format!("{}/team", reg.host());
    push_json(&ws, &reg, None, &["//...", "--registry", &namespace]);
    // The base's layer changes: the app is re-assembled on it, its own layers
    // are not rebuilt.
    let spec = std::fs::read_to_string(ws.path("base/BUILD.kdl")).unwrap();
    ws.write(
        "base/BUILD.kdl",
        &spec.replace("ID=imgc-test\\n", "ID=imgc-test\\nVERSION_ID=2\\n"),
    );
    let lines = push_json(&ws, &reg, None, &["//...", "--registry", &namespace]);
    let pushed = pushed_lines(&lines);
    let sizes = |label: &str| {
        let (pkg, name) = split_label(label);
        let layout = ws.layout(&pkg, &name);
        let m = manifest_of(&layout);
        let manifest = file_size(
            &layout
                .join("blobs/sha256")
                .join(layout_manifest_digest(&layout).hex()),
        );
        let layers: Vec<u64> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .collect();
        (m["config"]["size"].as_u64().unwrap(), manifest, layers)
    };
    // The app: only its new config and manifest went up; the new base layer was
    // mounted from the base's repository, its own layers were there.
    let app = &pushed["//app:app"];
    let (config, manifest, _) = sizes("//app:app");
    assert_eq!(app["bytes_uploaded"], config + manifest, "{app}");
    assert_eq!(app["blobs_uploaded"], 1, "{app}");
    assert_eq!(app["blobs_mounted"], 1, "{app}");
    // The base: its new layer, config and manifest.
    let base = &pushed["//base:base"];
    let (config, manifest, layers) = sizes("//base:base");
    assert_eq!(
        base["bytes_uploaded"],
        layers[0] + config + manifest,
        "{base}"
    );
}

#[test]
fn cross_repository_mount_is_used_for_a_base_pushed_elsewhere() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    let ws = small_ws();
    // The base goes to one namespace, in one run...
    push_json(
        &ws,
        &reg,
        None,
        &["//base:base", "--registry", &format!("{}/one", reg.host())],
    );
    let before = reg.access_log().len();
    // ...the app to another, in a later run: the local cache remembers where the
    // base layer is, and the registry mounts it.
    let lines = push_json(
        &ws,
        &reg,
        None,
        &["//app:app", "--registry", &format!("{}/two", reg.host())],
    );
    let app = &pushed_lines(&lines)["//app:app"];
    assert_eq!(app["blobs_mounted"], 1, "{app}");
    let log = reg.access_log();
    let mounts: Vec<_> = log[before..]
        .iter()
        .filter(|l| l.method == "POST" && l.uri.contains("?mount=sha256:"))
        .collect();
    assert_eq!(mounts.len(), 1, "{:?}", &log[before..]);
    assert!(mounts[0].uri.contains("&from=one/base/base"), "{mounts:?}");
    assert_eq!(mounts[0].status, 201, "{mounts:?}");
    assert!(
        mounts[0]
            .path()
            .starts_with("/v2/two/app/app/blobs/uploads/")
    );
}

/// Bytes no compressor shrinks (xorshift), so a layer of them is as large as they are.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn registry_killed_mid_push_leaves_no_tag_and_the_next_push_completes() {
    tools();
    let mut reg = Registry::start(RegistryOpts::default());
    let ws = small_ws();
    // A layer far larger than any socket buffer: once the registry is stopped,
    // its upload cannot finish.
    ws.write_bytes("app/src/big.bin", &noise(64 << 20));
    ws.ok(&["build", "//..."]);
    let namespace = format!("{}/fault", reg.host());
    push_json(&ws, &reg, None, &["//base:base", "--registry", &namespace]);
    let app_repo = "/v2/fault/app/app/blobs/uploads/";

    let mut child = push_cmd(&ws, &reg, None, &["//app:app", "--registry", &namespace])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first upload session of the app's repository is open: its blobs are
    // on their way and its manifest cannot have been sent. Freeze the registry
    // (so nothing more completes), then kill it.
    let pid = reg.pid().unwrap() as i32;
    loop {
        if reg
            .read_log()
            .iter()
            .any(|l| l.method == "POST" && l.path() == app_repo)
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("imgc push ended before uploading: {status}");
        }
        std::thread::yield_now();
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    reg.kill();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error: cannot push `//app:app` to "), "{err}");
    assert!(err.contains("(after 3 attempts)"), "{err}");
    assert!(!stdout(&out).contains("pushed "), "{}", stdout(&out));

    // Back up on the same storage: the tag was never written.
    reg.restart();
    let tag = Reference::parse(&format!("{namespace}/app/app:1.0")).unwrap();
    let client = Client::new(ClientOptions::anonymous());
    let gone = client.resolve(&tag).unwrap_err();
    assert!(gone.is_not_found(), "{gone}");

    // The next push completes, and skopeo reads the image.
    let lines = push_json(&ws, &reg, None, &["//app:app", "--registry", &namespace]);
    let app = &pushed_lines(&lines)["//app:app"];
    let digest = layout_manifest_digest(&ws.layout("app", "app"));
    assert_eq!(app["digest"], digest.to_string());
    assert_eq!(client.resolve(&tag).unwrap().digest, digest);
    let back = tempfile::tempdir().unwrap();
    reg.skopeo_pull("fault/app/app:1.0", &back.path().join("oci"));
    assert_eq!(layout_manifest_digest(&back.path().join("oci")), digest);
}

/// `digest=sha256:…` of a blob upload request, if it carries one.
fn uploaded_digest(l: &crate::support::registry::LogLine) -> Option<String> {
    if !l.is_blob_upload() {
        return None;
    }
    let at = l.uri.find("digest=")?;
    let d = &l.uri[at + "digest=".len()..];
    let d = d.split('&').next().unwrap_or(d);
    Some(d.replace("%3A", ":").replace("%3a", ":"))
}

/// The digest a mount request asks for, its source repository and status.
fn mount_of(l: &crate::support::registry::LogLine) -> Option<(String, String, u16)> {
    if l.method != "POST" {
        return None;
    }
    let (_, query) = l.uri.split_once('?')?;
    let mut digest = None;
    let mut from = None;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("mount", v)) => digest = Some(v.replace("%3A", ":")),
            Some(("from", v)) => from = Some(v.replace("%2F", "/")),
            _ => {}
        }
    }
    Some((digest?, from?, l.status))
}

/// A base image, a layer shared by six services built on it, and the services,
/// each with a layer of its own.
fn fleet_ws(services: usize) -> Ws {
    let mut files: Vec<(String, String)> = vec![
        (
            "imgc.kdl".into(),
            "workspace {\n    source-date-epoch 1700000000\n}\n".into(),
        ),
        (
            "base/BUILD.kdl".into(),
            "layer \"files\" {\n    text \"/etc/os-release\" \"ID=fleet\\n\"\n}\nimage \"base\" {\n    from \"scratch\"\n    layers \":files\"\n}\n".into(),
        ),
        (
            "shared/BUILD.kdl".into(),
            "layer \"lib\" {\n    text \"/usr/lib/fleet/lib.txt\" \"shared library\\n\"\n}\n".into(),
        ),
    ];
    for i in 0..services {
        files.push((
            format!("svc{i}/BUILD.kdl"),
            format!(
                "image \"svc{i}\" {{\n    from \"//base:base\"\n    layers \"//shared:lib\"\n    layer {{\n        text \"/srv/id\" \"{i}\\n\"\n    }}\n}}\n"
            ),
        ));
    }
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    Ws::new(&borrowed)
}

#[test]
fn images_pushed_in_parallel_upload_each_shared_blob_once_and_mount_the_rest() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    let services = 6;
    let ws = fleet_ws(services);
    let namespace = format!("{}/fleet", reg.host());
    let lines = push_json(
        &ws,
        &reg,
        None,
        &["//...", "--registry", &namespace, "-j", "4"],
    );

    // Reported in selection order (by label), whatever order they finished in.
    let labels: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "pushed")
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    let mut sorted = labels.clone();
    sorted.sort();
    assert_eq!(labels, sorted);
    assert_eq!(labels.len(), services + 1);

    let log = reg.access_log();
    // Every distinct blob went up exactly once, whichever image took it first.
    let mut uploads: BTreeMap<String, usize> = BTreeMap::new();
    for d in log.iter().filter_map(uploaded_digest) {
        *uploads.entry(d).or_default() += 1;
    }
    let twice: Vec<_> = uploads.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "uploaded more than once: {twice:?}");
    // The base's layer is in all 7 repositories, the shared layer in 6: one
    // upload each, and a mount (answered 201) for every other repository.
    let base_layer = manifest_of(&ws.layout("base", "base"))["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let svc = manifest_of(&ws.layout("svc0", "svc0"));
    let shared_layer = svc["layers"][1]["digest"].as_str().unwrap().to_string();
    assert_eq!(svc["layers"][0]["digest"], base_layer.as_str());
    assert_eq!(uploads.get(&base_layer), Some(&1), "{uploads:?}");
    assert_eq!(uploads.get(&shared_layer), Some(&1), "{uploads:?}");
    let mounts: Vec<(String, String, u16)> = log.iter().filter_map(mount_of).collect();
    for (layer, repositories) in [(&base_layer, services + 1), (&shared_layer, services)] {
        let ok: Vec<_> = mounts
            .iter()
            .filter(|(d, _, status)| d == layer && *status == 201)
            .collect();
        assert_eq!(ok.len(), repositories - 1, "{mounts:?}");
        assert!(
            ok.iter().all(|(_, from, _)| from.starts_with("fleet/")),
            "{ok:?}"
        );
    }
    assert!(mounts.iter().all(|(_, _, s)| *s == 201), "{mounts:?}");
    // What the images say matches: 2 * 6 + 1 - 2 uploads saved.
    let pushed = pushed_lines(&lines);
    let mounted: u64 = pushed
        .values()
        .map(|p| p["blobs_mounted"].as_u64().unwrap())
        .sum();
    assert_eq!(mounted as usize, services + (services - 1), "{pushed:?}");
    for p in pushed.values() {
        assert_eq!(
            p["blobs_uploaded"].as_u64().unwrap()
                + p["blobs_mounted"].as_u64().unwrap()
                + p["blobs_existing"].as_u64().unwrap(),
            p["blobs"].as_u64().unwrap(),
            "{p}"
        );
    }
    // Every image is there, byte for byte.
    let client = Client::new(ClientOptions::anonymous());
    for (label, p) in &pushed {
        let (pkg, name) = split_label(label);
        let r = Reference::parse(p["reference"].as_str().unwrap()).unwrap();
        assert_eq!(
            client.resolve(&r).unwrap().digest,
            layout_manifest_digest(&ws.layout(&pkg, &name)),
            "{label}"
        );
    }

    // A second push, in parallel too, uploads and mounts nothing.
    let before = reg.access_log().len();
    push_json(
        &ws,
        &reg,
        None,
        &["//...", "--registry", &namespace, "-j", "4"],
    );
    let log = reg.access_log();
    let again = &log[before..];
    assert!(!again.iter().any(|l| l.is_blob_upload()), "{again:?}");
    assert!(!again.iter().any(|l| l.method == "POST"), "{again:?}");
    assert!(!again.iter().any(|l| l.is_manifest_put()), "{again:?}");
}

#[test]
fn layers_of_a_registry_base_are_mounted_from_the_base_repository() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    // The base goes to `bases/x` from another workspace (and cache).
    let upstream = small_ws();
    upstream.ok(&["build", "//base:base"]);
    let base_ref = reg.skopeo_push(&upstream.layout("base", "base"), "bases/x:1", false);
    let base_digest = layout_manifest_digest(&upstream.layout("base", "base"));
    let base_layers: Vec<String> = manifest_of(&upstream.layout("base", "base"))["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert!(!base_layers.is_empty());

    // An app built on it as a pinned `registry` import, pushed to `apps/y`.
    let ws = Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n}\n",
        ),
        (
            "third_party/BUILD.kdl",
            &format!("import \"x\" {{\n    registry \"{base_ref}@{base_digest}\"\n}}\n"),
        ),
        (
            "y/BUILD.kdl",
            &format!(
                "image \"y\" {{\n    from \"//third_party:x\"\n    layer {{\n        text \"/app/v\" \"1\\n\"\n    }}\n    tag \"{}/apps/y:1\"\n}}\n",
                reg.host()
            ),
        ),
    ]);
    ws.ok(&["build", "//..."]);
    // This cache has never pushed anything: the only repository it knows for
    // the base's layers is the one the import fetched them from (recorded when
    // it ran), the same one the graph names as the image's registry base.
    let (mut cache, _) = imgc::cache::Cache::open(&ws.cache.path().join("v1/imgc.sqlite")).unwrap();
    let digests: Vec<Digest> = base_layers.iter().map(|d| d.parse().unwrap()).collect();
    let known = cache
        .registry_repositories(&reg.host(), &digests, 10)
        .unwrap();
    assert_eq!(known.len(), digests.len(), "{known:?}");
    assert!(
        known.values().all(|v| v == &["bases/x".to_string()]),
        "{known:?}"
    );
    drop(cache);
    // Forget that record: the mount source must then come from the graph alone.
    rusqlite::Connection::open(ws.cache.path().join("v1/imgc.sqlite"))
        .unwrap()
        .execute("DELETE FROM registry_blob", [])
        .unwrap();

    let before = reg.access_log().len();
    let lines = push_json(&ws, &reg, None, &["//y:y"]);
    let y = &pushed_lines(&lines)["//y:y"];
    assert_eq!(
        y["blobs_mounted"].as_u64().unwrap(),
        base_layers.len() as u64,
        "{y}"
    );
    let log = reg.access_log();
    let after = &log[before..];
    let mounts: Vec<(String, String, u16)> = after.iter().filter_map(mount_of).collect();
    for layer in &base_layers {
        assert!(
            mounts
                .iter()
                .any(|(d, from, s)| d == layer && from == "bases/x" && *s == 201),
            "{layer} not mounted from bases/x: {mounts:?}"
        );
        assert!(
            !after
                .iter()
                .any(|l| uploaded_digest(l).as_deref() == Some(layer)),
            "{layer} was uploaded: {after:?}"
        );
    }
    assert!(
        after
            .iter()
            .filter(|l| l.method == "POST")
            .all(|l| l.path().starts_with("/v2/apps/y/blobs/uploads/")),
        "{after:?}"
    );
}

#[test]
fn a_registry_or_tag_written_as_a_url_is_a_usage_error_naming_insecure_registry() {
    let ws = small_ws();
    for registry in [
        "http://127.0.0.1:5000/ns",
        "https://registry.example.com/ns/",
    ] {
        let out = ws.run(&["push", "//...", "--registry", registry]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("references have no scheme"), "{err}");
        assert!(err.contains("--insecure-registry"), "{err}");
        let (_, rest) = registry.split_once("://").unwrap();
        assert!(
            err.contains(&format!("`{}`", rest.trim_end_matches('/'))),
            "{err}"
        );
    }
    let out = ws.run(&["push", "//...", "--registry", "http://127.0.0.1:5000/ns"]);
    assert!(stderr(&out).contains("`--insecure-registry 127.0.0.1:5000`"));
    // A spec tag that is a URL: named with its file and line.
    let spec = std::fs::read_to_string(ws.path("app/BUILD.kdl")).unwrap();
    ws.write(
        "app/BUILD.kdl",
        &spec.replace("example.com/app:1.0", "http://127.0.0.1:5000/app:1.0"),
    );
    let out = ws.run(&["push", "//app:app"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("app/BUILD.kdl:"), "{err}");
    assert!(err.contains("references have no scheme"), "{err}");
    assert!(
        err.contains("`--insecure-registry 127.0.0.1:5000`"),
        "{err}"
    );
}
