//! `registry` imports against a real registry on loopback (Debian's
//! docker-registry, started by the harness): pinned bases are fetched once,
//! verified, reused byte for byte and offline; unpinned ones are errors that
//! name the digest to pin; `imgc pin` rewrites only the reference.

use crate::support::registry::{LogLine, Registry, RegistryOpts};
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The registry and skopeo, which the README's test command installs.
fn tools() {
    require("docker-registry");
    require("skopeo");
}

/// `imgc ARGS` in `ws` with no credentials from this machine: an empty docker
/// config directory and none of the `IMGC_REGISTRY_*` variables.
fn imgc(ws: &Ws, args: &[&str]) -> Output {
    let empty = ws.cache.path().join("docker-config");
    std::fs::create_dir_all(&empty).unwrap();
    let mut c = ws.cmd(args);
    c.env("DOCKER_CONFIG", &empty)
        .env("HOME", ws.cache.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("IMGC_REGISTRY_HOST")
        .env_remove("IMGC_REGISTRY_USERNAME")
        .env_remove("IMGC_REGISTRY_PASSWORD");
    c.output().unwrap()
}

fn imgc_ok(ws: &Ws, args: &[&str]) -> Output {
    let out = imgc(ws, args);
    assert!(
        out.status.success(),
        "imgc {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

fn build_json(ws: &Ws, extra: &[&str]) -> Events {
    let mut args = vec!["build", "--message-format", "json"];
    args.extend_from_slice(extra);
    Events::parse(&imgc_ok(ws, &args).stdout)
}

/// A base image built by imgc (two layers), as an OCI layout: the upstream
/// image the tests push to the registry. `marker` makes different bases.
fn base_layout(marker: &str, platform: &str) -> (Ws, PathBuf) {
    let ws = Ws::new(&[
        (
            "imgc.kdl",
            &format!(
                "workspace {{\n    source-date-epoch 1700000000\n    platform \"{platform}\"\n}}\n"
            ),
        ),
        (
            "base/BUILD.kdl",
            &format!(
                r#"
layer "os" {{
    text "/etc/os-release" "ID=upstream-{marker}\n"
    dir "/tmp" mode="1777"
    text "/bin/sh" "not really a shell\n" mode="0755"
}}
layer "extra" {{
    text "/usr/share/doc/base/README" "{marker} {platform}\n"
}}
image "base" {{
    from "scratch"
    layers ":os" ":extra"
    env PATH="/usr/bin:/bin"
    tag "upstream/base:1"
}}
"#
            ),
        ),
    ]);
    ws.build(&["//base:base"]);
    let layout = ws.layout("base", "base");
    (ws, layout)
}

/// The digest of what the registry serves for `repo:tag` (what `imgc pin`
/// must write), asked over plain HTTP without imgc's client.
fn remote_digest(reg: &Registry, repo_tag: &str) -> String {
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    let url = format!("{}/v2/{repo}/manifests/{tag}", reg.url());
    let accept = "application/vnd.oci.image.index.v1+json, \
                  application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let mut resp = ureq::get(&url).header("Accept", accept).call().unwrap();
    let body = resp.body_mut().read_to_vec().unwrap();
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(&body))
}

/// A workspace whose `//third_party:base` imports `reference` and whose two
/// images are built on it.
fn consumer_ws(reference: &str) -> Ws {
    Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n}\n",
        ),
        (
            "third_party/BUILD.kdl",
            &format!("import \"base\" {{\n    registry \"{reference}\"\n}}\n"),
        ),
        (
            "app/BUILD.kdl",
            r#"
image "app" {
    from "//third_party:base"
    layer {
        text "/app/version" "1\n"
    }
    entrypoint "/bin/sh"
}
image "tool" {
    from "//third_party:base"
    layer {
        text "/opt/tool" "tool\n"
    }
}
"#,
        ),
    ])
}

/// The layer digests of the image in the layout at `dir`.
fn layers_of(dir: &Path) -> Vec<String> {
    layer_field(dir, "digest")
}

/// GETs of blobs (`/v2/<repo>/blobs/sha256:...`) in `log`, by path.
fn blob_gets(log: &[LogLine]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for l in log {
        if l.method == "GET" && l.path().contains("/blobs/sha256:") {
            *out.entry(l.path().to_string()).or_default() += 1;
        }
    }
    out
}

/// The registry with the base pushed as `base:1`, and its pinned reference.
fn registry_with_base() -> (Registry, Ws, PathBuf, String) {
    let reg = Registry::start(RegistryOpts::default());
    let (up, layout) = base_layout("one", "linux/amd64");
    reg.skopeo_push(&layout, "base:1", false);
    let digest = remote_digest(&reg, "base:1");
    let pinned = format!("{}/base:1@{digest}", reg.host());
    (reg, up, layout, pinned)
}

#[test]
fn an_image_on_a_pinned_registry_base_builds_and_its_base_layers_are_byte_identical() {
    tools();
    let (_reg, _up, upstream, pinned) = registry_with_base();
    let ws = consumer_ws(&pinned);
    let ev = build_json(&ws, &[]);
    assert_eq!(
        ev.ran(),
        [
            "//app:app",
            "//app:app~layer0",
            "//app:tool",
            "//app:tool~layer0",
            "//third_party:base"
        ]
    );
    let app = ws.layout("app", "app");
    let base_layers = layers_of(&upstream);
    let app_layers = layers_of(&app);
    assert_eq!(app_layers.len(), base_layers.len() + 1);
    assert_eq!(&app_layers[..base_layers.len()], &base_layers[..]);
    // The very bytes of upstream's blobs.
    for d in &base_layers {
        let rel = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        assert!(
            std::fs::read(upstream.join(&rel)).unwrap() == std::fs::read(app.join(&rel)).unwrap(),
            "{d} differs from upstream"
        );
    }
    // The image names its base by the pinned manifest.
    let m = manifest_of(&app);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.base.digest"],
        pinned.split('@').nth(1).unwrap()
    );
    if let Err(problems) = imgc::oci::check_layout(&app) {
        panic!("{problems:#?}");
    }
    if have("umoci") {
        let bundle = tempfile::tempdir().unwrap();
        let refname = "latest";
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(app.join("index.json")).unwrap()).unwrap();
        let name = idx["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or(refname)
            .to_string();
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{name}", app.display()))
            .arg(bundle.path().join("b")));
        let rootfs = bundle.path().join("b/rootfs");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap(),
            "ID=upstream-one\n"
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.join("app/version")).unwrap(),
            "1\n"
        );
    }
}

#[test]
fn a_registry_import_remembers_where_its_blobs_are_for_pushes() {
    tools();
    let (reg, _up, upstream, pinned) = registry_with_base();
    let ws = consumer_ws(&pinned);
    build_json(&ws, &[]);
    let (mut cache, _) = imgc::cache::Cache::open(&ws.cache.path().join("v1/imgc.sqlite")).unwrap();
    let layers: Vec<imgc::hash::Digest> = layers_of(&upstream)
        .iter()
        .map(|d| d.parse().unwrap())
        .collect();
    let found = cache
        .registry_repositories(&reg.host(), &layers, 4)
        .unwrap();
    for d in &layers {
        assert_eq!(found.get(d), Some(&vec!["base".to_string()]), "{d}");
    }
}

#[test]
fn registry_base_blobs_are_fetched_once() {
    tools();
    let (reg, _up, upstream, pinned) = registry_with_base();
    let before = reg.access_log().len();
    let ws = consumer_ws(&pinned);
    build_json(&ws, &[]);
    // An edit above the base: the import is cached, nothing is fetched.
    ws.write(
        "app/BUILD.kdl",
        &std::fs::read_to_string(ws.path("app/BUILD.kdl"))
            .unwrap()
            .replace("\"1\\n\"", "\"2\\n\""),
    );
    let ev = build_json(&ws, &[]);
    assert!(ev.cached().contains(&"//third_party:base".to_string()));
    assert_eq!(ev.ran(), ["//app:app", "//app:app~layer0"]);
    let log = reg.access_log()[before..].to_vec();
    let gets = blob_gets(&log);
    // The config and each layer: fetched exactly once for two images and two builds.
    let mut want: Vec<String> = layers_of(&upstream);
    want.push(
        manifest_of(&upstream)["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    for d in &want {
        let path = format!("/v2/base/blobs/{d}");
        assert_eq!(gets.get(&path), Some(&1), "{path}: {log:#?}");
    }
    assert_eq!(gets.len(), want.len(), "{gets:#?}");
    let manifest_gets = log
        .iter()
        .filter(|l| l.method == "GET" && l.path().contains("/manifests/"))
        .count();
    assert_eq!(manifest_gets, 1, "{log:#?}");
}

#[test]
fn a_build_with_a_cached_registry_import_needs_no_registry() {
    tools();
    let (mut reg, _up, _upstream, pinned) = registry_with_base();
    let ws = consumer_ws(&pinned);
    let first = build_json(&ws, &[]);
    reg.kill();
    ws.write(
        "app/BUILD.kdl",
        &std::fs::read_to_string(ws.path("app/BUILD.kdl"))
            .unwrap()
            .replace("\"1\\n\"", "\"offline\\n\""),
    );
    let ev = build_json(&ws, &[]);
    assert_eq!(ev.ran(), ["//app:app", "//app:app~layer0"]);
    assert!(ev.cached().contains(&"//third_party:base".to_string()));
    assert_eq!(ev.images()["//app:tool"], first.images()["//app:tool"]);
    // A dry run and `explain` need no registry either.
    imgc_ok(&ws, &["build", "--dry-run"]);
    imgc_ok(&ws, &["explain", "//third_party:base"]);
}

#[test]
fn a_mirror_with_the_same_digest_rebuilds_nothing() {
    tools();
    let (reg, _up, upstream, pinned) = registry_with_base();
    let ws = consumer_ws(&pinned);
    let first = build_json(&ws, &[]);
    // The same image under another name (a mirror): the key holds the digest only.
    reg.skopeo_push(&upstream, "mirror/team/base:1", false);
    let digest = pinned.split('@').nth(1).unwrap();
    let mirrored = format!("{}/mirror/team/base:1@{digest}", reg.host());
    ws.write(
        "third_party/BUILD.kdl",
        &format!("import \"base\" {{\n    registry \"{mirrored}\"\n}}\n"),
    );
    let before = reg.access_log().len();
    let ev = build_json(&ws, &[]);
    assert!(ev.ran().is_empty(), "{:?}", ev.ran());
    assert_eq!(ev.images(), first.images());
    assert_eq!(reg.access_log().len(), before, "the mirror was contacted");
}

#[test]
fn a_wrong_digest_is_rejected() {
    tools();
    let (reg, _up, upstream, pinned) = registry_with_base();
    // A digest that the registry does not have.
    let absent = format!(
        "{}/base:1@sha256:{}",
        reg.host(),
        "0123456789abcdef".repeat(4)
    );
    let ws = consumer_ws(&absent);
    let out = imgc(&ws, &["build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("//third_party:base"), "{err}");
    assert!(
        err.contains(&absent) || err.contains("0123456789abcdef"),
        "{err}"
    );
    assert!(!ws.layout("app", "app").exists());

    // The registry serves other bytes for a layer: rejected, nothing cached.
    let layer = layers_of(&upstream)[0].clone();
    let hex = layer.trim_start_matches("sha256:");
    let data = reg.storage().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let good = std::fs::read(&data).unwrap();
    flip_byte(&data);
    let ws = consumer_ws(&pinned);
    let out = imgc(&ws, &["build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(hex), "the error names the blob: {err}");
    assert!(!ws.layout("app", "app").exists());
    // Nothing of the failed import was kept as a result: with the registry
    // repaired, the import runs (and succeeds), it is not served from the cache.
    std::fs::write(&data, &good).unwrap();
    let ev = build_json(&ws, &[]);
    assert!(
        ev.ran().contains(&"//third_party:base".to_string()),
        "{:?}",
        ev.ran()
    );
    assert_eq!(layers_of(&ws.layout("app", "app"))[0], layer);
}

#[test]
fn an_unpinned_tag_is_an_error_that_prints_the_current_digest() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    let (_up, layout) = base_layout("one", "linux/amd64");
    reg.skopeo_push(&layout, "base:1", false);
    let digest = remote_digest(&reg, "base:1");
    let ws = consumer_ws(&format!("{}/base:1", reg.host()));
    let before = reg.access_log().len();

    // `check` and a dry run never touch the network.
    let out = imgc(&ws, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("E061"), "{err}");
    assert!(err.contains("is not pinned"), "{err}");
    assert!(!err.contains(&digest), "check asked the registry: {err}");
    let out = imgc(&ws, &["build", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("E061"));
    assert_eq!(
        reg.access_log().len(),
        before,
        "check or --dry-run reached the registry"
    );

    // A build names the digest to pin.
    let out = imgc(&ws, &["build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("E061"), "{err}");
    assert!(
        err.contains(&digest),
        "the current digest is printed: {err}"
    );
    assert!(err.contains("imgc pin"), "{err}");
    assert!(!ws.path("imgc-out").join("app").exists());
}

#[test]
fn check_of_an_unpinned_spec_makes_no_network_connection() {
    // No registry is running at all (a closed port): `check` still answers
    // with the spec's problem, not a connection error.
    let ws = consumer_ws("127.0.0.1:9/team/base:1");
    let out = imgc(&ws, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("E061"), "{err}");
    assert!(!err.contains("connect"), "{err}");
}

#[test]
fn imgc_pin_rewrites_only_the_reference() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    let (_up, layout) = base_layout("one", "linux/amd64");
    reg.skopeo_push(&layout, "base:1", false);
    let digest = remote_digest(&reg, "base:1");
    let ws = consumer_ws("placeholder");
    let host = reg.host();
    let original = format!(
        "// Third-party bases.\n\
         import \"base\"   {{   // the runtime base\n\
         \x20   registry \"{host}/base:1\"     /* tag for humans */\n\
         }}\n\
         \n\
         import   \"other\" {{ registry #\"{host}/base:1\"#; }}\n"
    );
    let spec = ws.path("third_party/BUILD.kdl");
    std::fs::write(&spec, &original).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&spec, std::fs::Permissions::from_mode(0o640)).unwrap();

    let out = imgc_ok(&ws, &["pin"]);
    let said = stdout(&out);
    assert!(
        said.contains(&format!(
            "pinned //third_party:base {host}/base:1 -> {digest}"
        )),
        "{said}"
    );
    assert!(said.contains("pinned //third_party:other"), "{said}");
    let want = original
        .replace(
            &format!("\"{host}/base:1\""),
            &format!("\"{host}/base:1@{digest}\""),
        )
        .replace(
            &format!("#\"{host}/base:1\"#"),
            &format!("#\"{host}/base:1@{digest}\"#"),
        );
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), want);
    assert_eq!(
        std::fs::metadata(&spec).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    // No temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(ws.path("third_party"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["BUILD.kdl"]);
    // Pinned now: nothing to do, and the file is not touched.
    let out = imgc_ok(&ws, &["pin"]);
    assert!(stdout(&out).contains("nothing to pin"), "{}", stdout(&out));
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), want);
    imgc_ok(&ws, &["check"]);

    // The tag moves: `--update` follows it, and only the digest changes.
    let (_up2, layout2) = base_layout("two", "linux/amd64");
    reg.skopeo_push(&layout2, "base:1", false);
    let moved = remote_digest(&reg, "base:1");
    assert_ne!(moved, digest);
    imgc_ok(&ws, &["pin", "//third_party:base"]);
    assert_eq!(
        std::fs::read_to_string(&spec).unwrap(),
        want,
        "pinned ones stay"
    );
    let out = imgc_ok(&ws, &["pin", "--update", "//third_party:base"]);
    assert!(stdout(&out).contains(&moved), "{}", stdout(&out));
    let updated = std::fs::read_to_string(&spec).unwrap();
    assert_eq!(
        updated,
        want.replacen(
            &format!("base:1@{digest}\""),
            &format!("base:1@{moved}\""),
            1
        )
    );

    // A spec file that is a symbolic link is refused and left alone.
    let ws2 = consumer_ws(&format!("{host}/base:1"));
    let real = ws2.path("third_party/real.kdl");
    std::fs::rename(ws2.path("third_party/BUILD.kdl"), &real).unwrap();
    std::os::unix::fs::symlink("real.kdl", ws2.path("third_party/BUILD.kdl")).unwrap();
    let before = std::fs::read(&real).unwrap();
    let out = imgc(&ws2, &["pin"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&real).unwrap(), before);
}

#[test]
fn a_build_after_pin_is_reproducible() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    let (_up, layout) = base_layout("one", "linux/amd64");
    reg.skopeo_push(&layout, "base:1", false);
    let ws = consumer_ws(&format!("{}/base:1", reg.host()));
    imgc_ok(&ws, &["pin"]);
    let first = build_json(&ws, &[]);
    // Another cache directory, another checkout: the same digests.
    let other = Ws::copy_of(ws.root());
    let second = build_json(&other, &[]);
    assert_eq!(first.images(), second.images());
    assert_same_tree(&ws.layout("app", "app"), &other.layout("app", "app"));
    assert!(second.ran().contains(&"//third_party:base".to_string()));
}

/// An OCI layout whose `index.json` names one image index listing `images`
/// (each a single-image layout with its platform), as `skopeo copy --all`
/// pushes a multi-platform image.
fn multi_platform_layout(images: &[(&Path, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut manifests = Vec::new();
    for (layout, os, arch) in images {
        for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
        }
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let m = &idx["manifests"][0];
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m["digest"],
            "size": m["size"],
            "platform": {"os": os, "architecture": arch},
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    use sha2::Digest as _;
    let hex = format!("{:x}", sha2::Sha256::digest(&index));
    std::fs::write(blobs.join(&hex), &index).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": index.len(),
        }],
    });
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&top).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .unwrap();
    dir
}

#[test]
fn a_multi_platform_index_selects_the_workspace_platform() {
    tools();
    let reg = Registry::start(RegistryOpts::default());
    let (_a, amd64) = base_layout("multi", "linux/amd64");
    let (_b, arm64) = base_layout("multi", "linux/arm64");
    let multi = multi_platform_layout(&[(&amd64, "linux", "amd64"), (&arm64, "linux", "arm64")]);
    reg.skopeo_push(multi.path(), "multi:1", true);
    let index_digest = remote_digest(&reg, "multi:1");
    let pinned = format!("{}/multi:1@{index_digest}", reg.host());
    let ws = consumer_ws(&pinned);
    build_json(&ws, &[]);
    let app = ws.layout("app", "app");
    let amd_layers = layers_of(&amd64);
    assert_ne!(amd_layers, layers_of(&arm64));
    assert_eq!(&layers_of(&app)[..amd_layers.len()], &amd_layers[..]);
    // The base is named by the chosen platform's manifest.
    let amd_manifest = {
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(amd64.join("index.json")).unwrap()).unwrap();
        idx["manifests"][0]["digest"].as_str().unwrap().to_string()
    };
    assert_eq!(
        manifest_of(&app)["annotations"]["org.opencontainers.image.base.digest"],
        amd_manifest.as_str()
    );
    // A platform the index does not hold is a clear error.
    ws.write(
        "imgc.kdl",
        "workspace {\n    source-date-epoch 1700000000\n    platform \"linux/s390x\"\n}\n",
    );
    let out = imgc(&ws, &["build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("linux/s390x"), "{err}");
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
}
