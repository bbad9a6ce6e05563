//! Registries: pulling pinned images into the store, and `imgc push`, against a
//! real registry on loopback (Debian's `docker-registry`, started per test).

use crate::support::registry::{Registry, RegistryOpts};
use crate::support::{Ws, have, manifest_of, small_ws};
use imgc::cas::Cas;
use imgc::hash::Digest;
use imgc::registry::Reference;
use imgc::registry::Secret;
use imgc::registry::client::{Client, ClientOptions};
use imgc::registry::credentials::{Credentials, Sources};
use imgc::registry::pull::{PullError, fetch_image};
use imgc::spec::model::Platform;
use std::path::Path;
use std::sync::Arc;

fn tools() -> bool {
    let ok = have("docker-registry") && have("skopeo");
    if !ok {
        eprintln!("skipped: docker-registry or skopeo is not installed");
    }
    ok
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

/// The manifest digest of the image in the layout at `dir`.
fn layout_manifest_digest(dir: &Path) -> Digest {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn built_app() -> Ws {
    let ws = small_ws();
    ws.ok(&["build", "//..."]);
    ws
}

#[test]
fn a_pinned_image_pushed_by_skopeo_is_pulled_into_the_store_verified() {
    if !tools() {
        return;
    }
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
