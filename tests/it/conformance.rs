//! OCI conformance: an independent checker, then real tools (umoci, skopeo, runc)
//! on the images of the bundled example workspace, and every config and manifest
//! field the example specs set, read back from the layouts and through skopeo.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

fn require(tool: &str) {
    assert!(
        have(tool),
        "`{tool}` is not installed: the README's test command installs the tools the tests need"
    );
}

/// Builds a copy of spec-examples once per test.
fn examples() -> (Ws, Events) {
    let ws = Ws::copy_of(&spec_examples());
    let ev = ws.build(&[]);
    (ws, ev)
}

fn image_layouts(ws: &Ws, ev: &Events) -> Vec<(String, std::path::PathBuf)> {
    ev.images()
        .keys()
        .map(|label| {
            let (pkg, name) = label.trim_start_matches("//").split_once(':').unwrap();
            (label.clone(), ws.layout(pkg, name))
        })
        .collect()
}

#[test]
fn every_example_image_passes_the_independent_checker() {
    let (ws, ev) = examples();
    let layouts = image_layouts(&ws, &ev);
    assert!(
        layouts.len() >= 4,
        "expected the base and three services, got {layouts:?}"
    );
    for (label, dir) in layouts {
        if let Err(problems) = imgc::oci::check_layout(&dir) {
            panic!("{label}: {problems:#?}");
        }
    }
}

#[test]
fn every_example_image_unpacks_with_umoci() {
    require("umoci");
    let (ws, ev) = examples();
    for (label, dir) in image_layouts(&ws, &ev) {
        let bundle = tempfile::tempdir().unwrap();
        let target = bundle.path().join("b");
        let refname = ref_name(&dir);
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{refname}", dir.display()))
            .arg(&target));
        assert!(target.join("rootfs").is_dir(), "{label}");
    }
}

/// What one example image must be, written out by hand from its BUILD.kdl (and,
/// for `reports`, the vendor base's config in make-vendor-base.py), so the check
/// shares nothing with imgc's inheritance code.
struct Expected {
    label: &'static str,
    /// The image's `index.json` ref name (the tag part of its first `tag`).
    ref_name: &'static str,
    /// The whole `config` object of the image config.
    config: Value,
    /// The spec's own manifest annotations (without `base.digest`, which is
    /// the base's manifest digest and added by the test).
    annotations: Value,
    /// The base (an image label, or the vendor layout) and the image's own
    /// layer count.
    base: Option<&'static str>,
    own_layers: usize,
    /// Top-level config fields besides those imgc sets itself.
    extra_top_level: Value,
}

const VENDOR_BASE: &str = "third_party/vendor-base";

fn runtime_labels(title: &str) -> Value {
    json!({
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.description": "Minimal runtime base for the example services",
        "org.opencontainers.image.vendor": "Acme Example Corp",
    })
}

fn expected_images() -> Vec<Expected> {
    let base_name = "org.opencontainers.image.base.name";
    let api_config = |cmd: Value, labels: Value| {
        json!({
            "Entrypoint": ["/bin/cat"],
            "Cmd": cmd,
            "Env": ["PATH=/bin", "LANG=C.UTF-8", "API_PORT=8080", "RUST_LOG=info", "TZ=UTC"],
            "WorkingDir": "/var/lib/api",
            "User": "10001:10001",
            "ExposedPorts": {"8080/tcp": {}, "9090/tcp": {}},
            "Volumes": {"/var/lib/api": {}},
            "Labels": labels,
            "StopSignal": "SIGTERM",
        })
    };
    let mut api_labels = runtime_labels("api");
    api_labels["org.opencontainers.image.version"] = "1.4.2".into();
    let mut migrate_labels = api_labels.clone();
    migrate_labels["org.opencontainers.image.title"] = "api-migrate".into();
    vec![
        Expected {
            label: "//bases:runtime",
            ref_name: "1",
            config: json!({
                "Entrypoint": ["/bin/cat"],
                "Cmd": ["/etc/os-release"],
                "Env": ["PATH=/bin", "LANG=C.UTF-8"],
                "WorkingDir": "/",
                "Labels": runtime_labels("runtime"),
            }),
            annotations: json!({"com.example.owner": "platform-team"}),
            base: None,
            own_layers: 2,
            extra_top_level: json!({}),
        },
        Expected {
            label: "//services/api:api",
            ref_name: "1.4.2",
            config: api_config(
                json!(["/etc/api/banner.txt", "/etc/api/current.toml"]),
                api_labels,
            ),
            annotations: json!({
                "com.example.team": "payments",
                base_name: "registry.example.com/acme/runtime:1",
            }),
            base: Some("//bases:runtime"),
            own_layers: 4,
            extra_top_level: json!({}),
        },
        Expected {
            label: "//services/api:api-migrate",
            ref_name: "1.4.2",
            config: api_config(
                json!([
                    "/etc/api/migrations/0001_init.sql",
                    "/etc/api/migrations/0002_orders.sql"
                ]),
                migrate_labels,
            ),
            // Manifest annotations belong to one manifest: api's are not inherited.
            annotations: json!({base_name: "registry.example.com/acme/api:1.4.2"}),
            base: Some("//services/api:api"),
            own_layers: 0,
            extra_top_level: json!({}),
        },
        Expected {
            label: "//services/worker:worker",
            ref_name: "latest",
            config: json!({
                "Entrypoint": ["/bin/cat", "/etc/worker/banner.txt"],
                "Env": ["PATH=/bin", "LANG=C.UTF-8", "WORKER_CONCURRENCY=4", "RUST_LOG=warn", "TZ=UTC"],
                "WorkingDir": "/var/spool/worker",
                "User": "10001:10001",
                "Volumes": {"/var/spool/worker": {}},
                "Labels": runtime_labels("worker"),
                "StopSignal": "SIGQUIT",
            }),
            annotations: json!({
                "com.example.team": "payments",
                base_name: "registry.example.com/acme/runtime:1",
            }),
            base: Some("//bases:runtime"),
            own_layers: 4,
            extra_top_level: json!({}),
        },
        Expected {
            label: "//services/web:web",
            ref_name: "2024.06.1",
            config: json!({
                "Entrypoint": ["/bin/cat"],
                "Cmd": ["/srv/www/index.html"],
                "Env": ["PATH=/bin", "LANG=C.UTF-8", "WEB_ROOT=/srv/www"],
                "WorkingDir": "/srv/www",
                "User": "10001:10001",
                "ExposedPorts": {"8080/tcp": {}},
                "Labels": runtime_labels("web"),
                "StopSignal": "SIGQUIT",
            }),
            annotations: json!({
                "com.example.team": "storefront",
                base_name: "registry.example.com/acme/runtime:1",
            }),
            base: Some("//bases:runtime"),
            own_layers: 2,
            extra_top_level: json!({}),
        },
        Expected {
            label: "//services/reports:reports",
            ref_name: "0.9",
            config: json!({
                "Entrypoint": ["/bin/cat"],
                "Cmd": ["/etc/vendor-release", "/etc/reports/banner.txt"],
                "Env": [
                    "PATH=/usr/local/bin:/usr/bin:/bin",
                    "VENDOR_HOME=/opt/vendor",
                    "LANG=C.UTF-8",
                    "REPORTS_DIR=/var/lib/reports"
                ],
                "WorkingDir": "/opt/vendor",
                "User": "10001:10001",
                "ExposedPorts": {"7000/tcp": {}, "8443/tcp": {}},
                "Volumes": {"/var/lib/vendor": {}, "/var/lib/reports": {}},
                "Labels": {
                    "org.opencontainers.image.title": "reports",
                    "org.opencontainers.image.vendor": "Vendor Example",
                },
                "StopSignal": "SIGINT",
                // What oci-spec's typed config model lacks, inherited whole.
                "Healthcheck": {
                    "Test": ["CMD", "/bin/cat", "/etc/vendor-release"],
                    "Interval": 30_000_000_000u64,
                    "Timeout": 5_000_000_000u64,
                    "Retries": 3,
                },
                "Shell": ["/bin/sh", "-c"],
                "OnBuild": ["RUN /opt/vendor/bin/register"],
                "ArgsEscaped": true,
                "X-Vendor-Policy": {"tier": "gold", "audited": true},
            }),
            annotations: json!({
                "com.example.team": "finance",
                base_name: "registry.vendor.example/base:3.1",
            }),
            base: Some(VENDOR_BASE),
            own_layers: 2,
            extra_top_level: json!({
                "author": "Vendor Example <builds@vendor.example>",
                "x-vendor-build": {"pipeline": "vendor-ci", "run": 1234},
            }),
        },
    ]
}

/// An image as stored in its layout: (manifest digest, manifest, config).
fn stored(layout: &Path) -> (String, Value, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = |d: &str| -> Value {
        let hex = d.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let manifest = blob(&digest);
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    (digest, manifest, config)
}

fn skopeo_json(args: &[&str], layout: &Path, refname: &str) -> Value {
    let out = run(Command::new("skopeo")
        .arg("inspect")
        .args(args)
        .arg(format!("oci:{}:{refname}", layout.display())));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo {args:?}: {e}\n{out}"))
}

/// Every config and manifest field the example specs set, on every example
/// image: from the layout's JSON, then as skopeo reads it. A field that goes
/// missing, appears uninvited or changes fails here.
#[test]
fn every_example_image_has_the_config_and_manifest_its_spec_says() {
    require("skopeo");
    let (ws, ev) = examples();
    let built = ev.images();
    let expected = expected_images();
    let want_labels: BTreeSet<&str> = expected.iter().map(|e| e.label).collect();
    let built_labels: BTreeSet<&str> = built.keys().map(String::as_str).collect();
    assert_eq!(
        built_labels, want_labels,
        "every example image needs an entry in expected_images()"
    );
    assert_eq!(built.len(), expected.len(), "{built:?}");
    let layouts: BTreeMap<String, std::path::PathBuf> =
        image_layouts(&ws, &ev).into_iter().collect();

    for want in &expected {
        let label = want.label;
        let layout = &layouts[label];
        let (digest, manifest, config) = stored(layout);
        assert_eq!(
            digest, built[label],
            "{label}: the manifest the build reported"
        );
        assert_eq!(ref_name(layout), want.ref_name, "{label}: ref name");

        // The base: its manifest, config and layers (as stored upstream for the import).
        let base = want.base.map(|b| {
            let dir = if b == VENDOR_BASE {
                ws.path(b)
            } else {
                layouts[b].clone()
            };
            stored(&dir)
        });

        // Manifest: annotations exactly the spec's plus the base's digest.
        let mut annotations = want.annotations.clone();
        if let Some((base_digest, _, _)) = &base {
            annotations["org.opencontainers.image.base.digest"] = base_digest.as_str().into();
        }
        let ann = if annotations.as_object().unwrap().is_empty() {
            Value::Null
        } else {
            annotations.clone()
        };
        assert_eq!(
            manifest["annotations"], ann,
            "{label}: manifest annotations"
        );
        assert_eq!(manifest["schemaVersion"], 2, "{label}");
        assert_eq!(
            manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{label}"
        );
        let layers = manifest["layers"].as_array().unwrap();
        let base_layers = base
            .as_ref()
            .map(|(_, m, _)| m["layers"].as_array().unwrap().clone())
            .unwrap_or_default();
        assert_eq!(
            layers.len(),
            base_layers.len() + want.own_layers,
            "{label}: the base's layers, then its own"
        );
        assert_eq!(
            layers[..base_layers.len()],
            base_layers[..],
            "{label}: base layers byte for byte"
        );

        // Config: the whole `config` object, platform, rootfs, history.
        assert_eq!(config["config"], want.config, "{label}: config");
        assert_eq!(config["os"], "linux", "{label}");
        assert_eq!(config["architecture"], "amd64", "{label}");
        assert_eq!(config.get("variant"), None, "{label}");
        assert_eq!(config["created"], "2023-11-14T22:13:20Z", "{label}");
        let imgc_set = [
            "architecture",
            "config",
            "created",
            "history",
            "os",
            "rootfs",
        ];
        let extra: serde_json::Map<String, Value> = config
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !imgc_set.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            Value::Object(extra),
            want.extra_top_level,
            "{label}: other top-level fields"
        );
        assert_eq!(config["rootfs"]["type"], "layers", "{label}");
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(
            diff_ids.len(),
            layers.len(),
            "{label}: one diff_id per layer"
        );
        let history = config["history"].as_array().unwrap();
        let base_history = base
            .as_ref()
            .map(|(_, _, c)| c["history"].as_array().unwrap().clone())
            .unwrap_or_default();
        assert_eq!(
            history.len(),
            base_history.len() + want.own_layers,
            "{label}: the base's history, then one entry per own layer"
        );
        assert_eq!(
            history[..base_history.len()],
            base_history[..],
            "{label}: base history"
        );
        let non_empty = history.iter().filter(|h| h["empty_layer"] != true).count();
        assert_eq!(
            non_empty,
            layers.len(),
            "{label}: history entries with a layer"
        );
        if let Some((_, _, base_config)) = &base {
            let base_diff_ids = base_config["rootfs"]["diff_ids"].as_array().unwrap();
            assert_eq!(
                diff_ids[..base_diff_ids.len()],
                base_diff_ids[..],
                "{label}"
            );
        }

        // The same through skopeo: the raw blobs it resolves, ...
        let refname = want.ref_name;
        let raw_manifest = skopeo_json(&["--raw"], layout, refname);
        assert_eq!(raw_manifest, manifest, "{label}: skopeo's manifest");
        assert_eq!(raw_manifest["annotations"], ann, "{label}");
        let raw_config = skopeo_json(&["--config", "--raw"], layout, refname);
        assert_eq!(
            raw_config["config"], want.config,
            "{label}: skopeo's raw config"
        );
        // ... its OCI config model (which has no Healthcheck, Shell, OnBuild or
        // unknown fields) ...
        let typed = skopeo_json(&["--config"], layout, refname);
        let mut known = want.config.clone();
        for f in ["Healthcheck", "Shell", "OnBuild", "X-Vendor-Policy"] {
            known.as_object_mut().unwrap().remove(f);
        }
        assert_eq!(typed["config"], known, "{label}: skopeo's config");
        assert_eq!(typed["os"], "linux", "{label}");
        assert_eq!(typed["architecture"], "amd64", "{label}");
        assert_eq!(
            typed["rootfs"]["diff_ids"], config["rootfs"]["diff_ids"],
            "{label}"
        );
        assert_eq!(
            typed["history"].as_array().unwrap().len(),
            history.len(),
            "{label}"
        );
        // ... and its summary.
        let summary = skopeo_json(&[], layout, refname);
        assert_eq!(summary["Digest"], digest.as_str(), "{label}");
        assert_eq!(summary["Os"], "linux", "{label}");
        assert_eq!(summary["Architecture"], "amd64", "{label}");
        assert_eq!(summary["Created"], "2023-11-14T22:13:20Z", "{label}");
        assert_eq!(summary["Labels"], want.config["Labels"], "{label}");
        assert_eq!(summary["Env"], want.config["Env"], "{label}");
        let layer_digests: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
        assert_eq!(summary["Layers"], Value::Array(layer_digests), "{label}");
    }
}

/// The vendor base's config has what oci-spec's typed model lacks (Healthcheck,
/// Shell, OnBuild, ArgsEscaped, unknown fields in `config` and at the top
/// level): `reports`, built on it, keeps every field of it that its spec does
/// not set, as it is, in the layout and as skopeo reads it raw.
#[test]
fn an_image_on_an_imported_base_keeps_healthcheck_shell_onbuild_argsescaped_and_unknown_fields() {
    require("skopeo");
    let (ws, _) = examples();
    let (_, _, base) = stored(&ws.path(VENDOR_BASE));
    let layout = ws.layout("services/reports", "reports");
    let (_, _, image) = stored(&layout);
    let raw = skopeo_json(&["--config", "--raw"], &layout, "0.9");
    assert_eq!(raw, image);
    for f in [
        "Healthcheck",
        "Shell",
        "OnBuild",
        "ArgsEscaped",
        "X-Vendor-Policy",
    ] {
        assert!(base["config"].get(f).is_some(), "the fixture lacks `{f}`");
    }
    // The reports spec sets these; everything else of the base's config stays.
    let set_by_spec = [
        "Entrypoint",
        "Cmd",
        "Env",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
    ];
    for (field, value) in base["config"].as_object().unwrap() {
        if !set_by_spec.contains(&field.as_str()) {
            assert_eq!(&image["config"][field], value, "config field `{field}`");
        }
    }
    let set_by_imgc = ["config", "created", "rootfs", "history"];
    for (field, value) in base.as_object().unwrap() {
        if !set_by_imgc.contains(&field.as_str()) {
            assert_eq!(&image[field], value, "top-level field `{field}`");
        }
    }
}

/// An image built on a base imgc made without a `tag`, or on an import the spec
/// does not name, has `base.digest` but no `base.name`: an imgc label is not an
/// image reference.
#[test]
fn an_image_on_an_untagged_base_or_an_import_has_no_base_name() {
    let ws = small_ws();
    copy_tree(
        &spec_examples().join(VENDOR_BASE),
        &ws.path("vendor/vendor-base"),
    );
    ws.write(
        "vendor/BUILD.kdl",
        r#"
import "vendor-base" {
    oci-layout "vendor-base"
}
image "on-import" {
    from ":vendor-base"
    annotation "com.example.team" "finance"
}
"#,
    );
    let ev = ws.build(&[]);
    let images = ev.images();
    let (_, app, _) = stored(&ws.layout("app", "app"));
    assert_eq!(
        app["annotations"],
        json!({"org.opencontainers.image.base.digest": images["//base:base"]})
    );
    let (_, on_import, _) = stored(&ws.layout("vendor", "on-import"));
    let (vendor_digest, _, _) = stored(&ws.path("vendor/vendor-base"));
    assert_eq!(
        on_import["annotations"],
        json!({
            "com.example.team": "finance",
            "org.opencontainers.image.base.digest": vendor_digest,
        })
    );
}

/// The committed vendor layout is exactly what its script writes.
#[test]
fn the_vendor_base_layout_is_what_its_script_makes() {
    require("python3");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("vendor-base");
    run(Command::new("python3")
        .arg(spec_examples().join("third_party/make-vendor-base.py"))
        .arg(&dir));
    assert_same_tree(&dir, &spec_examples().join(VENDOR_BASE));
}

fn ref_name(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Unpacks `layout` with umoci and runs it with runc; returns stdout.
fn runc_run(layout: &Path) -> String {
    let bundle = tempfile::tempdir().unwrap();
    let b = bundle.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", layout.display(), ref_name(layout)))
        .arg(&b));
    runnable_here(&b);
    let id = format!("imgc-test-{}", std::process::id());
    let root = bundle.path().join("runc-root");
    run(Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&b)
        .arg(&id))
}

#[test]
fn example_images_run_under_runc_and_print_what_their_layers_hold() {
    require("umoci");
    require("runc");
    let (ws, _) = examples();
    // api: `cat` of its banner and, through a symlink, its production config.
    let expected = std::fs::read_to_string(ws.path("services/api/banner.txt")).unwrap()
        + &std::fs::read_to_string(ws.path("services/api/config/production.toml")).unwrap();
    assert_eq!(runc_run(&ws.layout("services/api", "api")), expected);
    // api-migrate inherits everything from api and only changes `cmd`.
    let migrations = ws.path("services/api/migrations");
    let expected = std::fs::read_to_string(migrations.join("0001_init.sql")).unwrap()
        + &std::fs::read_to_string(migrations.join("0002_orders.sql")).unwrap();
    assert_eq!(
        runc_run(&ws.layout("services/api", "api-migrate")),
        expected
    );
    // reports: the imported vendor base's release file, then its own banner.
    assert_eq!(
        runc_run(&ws.layout("services/reports", "reports")),
        "NAME=\"Vendor Example base\"\nVERSION_ID=3.1\n== acme reports ==\n"
    );
}

/// Guards the zstd layer format (independent frames per 8 MiB of tar): a layer
/// of several frames passes the independent checker (each layer decoded and
/// hashed to its diff_id), and skopeo decodes it into a gzip layout with the
/// same diff_ids, whose layers hash to them and which umoci unpacks to the same
/// file bytes. (umoci 0.4 does not read zstd layers at all, whatever their
/// frames: "blob is not correct mediatype"; nor do docker archives hold them.)
#[test]
fn a_multi_frame_zstd_layer_is_read_by_skopeo_and_unpacked_by_umoci() {
    require("umoci");
    require("skopeo");
    let ws = Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n    compression \"zstd\"\n}\n",
        ),
        (
            "big/BUILD.kdl",
            "image \"big\" {\n    from \"scratch\"\n    layer {\n        \
             copy \"big.bin\" to=\"/data/big.bin\"\n    }\n    \
             tag \"example.com/big:latest\"\n}\n",
        ),
    ]);
    let big = semi_random(20 << 20, 0x9e37_79b9_7f4a_7c15);
    ws.write_bytes("big/big.bin", &big);
    ws.build(&[]);
    let layout = ws.layout("big", "big");
    if let Err(problems) = imgc::oci::check_layout(&layout) {
        panic!("{problems:#?}");
    }
    let digest = layer_field(&layout, "digest").pop().unwrap();
    let blob = std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    // Several frames: each is complete and decodes on its own.
    let mut frames = 0;
    let mut rest = &blob[..];
    while !rest.is_empty() {
        let n = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
        let plain = zstd::stream::decode_all(&rest[..n]).unwrap();
        assert!(plain.len() <= 8 << 20);
        rest = &rest[n..];
        frames += 1;
    }
    assert!(frames >= 3, "{frames} frames for 20 MiB");

    let bundle = tempfile::tempdir().unwrap();
    let gz = bundle.path().join("gz");
    let refname = ref_name(&layout);
    run(Command::new("skopeo")
        .args(["copy", "--dest-compress-format", "gzip"])
        .arg(format!("oci:{}:{refname}", layout.display()))
        .arg(format!("oci:{}:{refname}", gz.display())));
    let (_, _, gz_config) = stored(&gz);
    let target = bundle.path().join("b");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{refname}", gz.display()))
        .arg(&target));
    assert!(std::fs::read(target.join("rootfs/data/big.bin")).unwrap() == big);

    let (_, _, config) = stored(&layout);
    let diff_ids = config["rootfs"]["diff_ids"].clone();
    assert_eq!(
        gz_config["rootfs"]["diff_ids"], diff_ids,
        "skopeo decoded another tar"
    );
    // skopeo's gzip layers hold exactly the tar it decoded from the frames:
    // the checker decompresses each and hashes it to the (unchanged) diff_id.
    if let Err(problems) = imgc::oci::check_layout(&gz) {
        panic!("skopeo's gzip copy: {problems:#?}");
    }
}
