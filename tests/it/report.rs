//! `imgc report`: the sharing numbers checked against blob sizes computed here,
//! independently, from the OCI layouts; the HTML page rendered by a real browser.

use crate::support::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// `n` bytes no compressor can shrink (xorshift64*), different for each seed.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The seed scenario: ten services, each with 1 MiB of its own, on one base of
/// 64 MiB (incompressible, so the blob sizes are about the file sizes).
fn ten_services() -> Ws {
    let ws = Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "bases/BUILD.kdl",
            "layer \"os\" {\n    copy \"os.bin\" to=\"/os.bin\"\n}\nimage \"base\" {\n    from \"scratch\"\n    layers \":os\"\n}\n",
        ),
    ]);
    ws.write_bytes("bases/os.bin", &noise(64, (64 * MIB) as usize));
    for i in 0..10 {
        ws.write(
            &format!("services/s{i}/BUILD.kdl"),
            &format!(
                "layer \"app\" {{\n    copy \"app.bin\" to=\"/app/app.bin\"\n}}\nimage \"s{i}\" {{\n    from \"//bases:base\"\n    layers \":app\"\n}}\n"
            ),
        );
        ws.write_bytes(&format!("services/s{i}/app.bin"), &noise(i, MIB as usize));
    }
    ws
}

/// One image as its OCI layout says, every size from `stat` of the blob file.
struct Layout {
    manifest: (String, u64),
    config: (String, u64),
    layers: Vec<(String, u64)>,
}

fn blob_size(layout: &Path, digest: &str) -> u64 {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::metadata(layout.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("blob {digest} of {}: {e}", layout.display()))
        .len()
}

fn read_layout(layout: &Path) -> Layout {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let m = manifest_of(layout);
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    Layout {
        manifest: (manifest.clone(), blob_size(layout, &manifest)),
        config: (config.clone(), blob_size(layout, &config)),
        layers: m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let d = l["digest"].as_str().unwrap().to_string();
                let size = blob_size(layout, &d);
                (d, size)
            })
            .collect(),
    }
}

/// `//pkg:name` → its layout in `ws`.
fn layout_of(ws: &Ws, label: &str) -> PathBuf {
    let (pkg, name) = label.trim_start_matches("//").split_once(':').unwrap();
    ws.layout(pkg, name)
}

/// Checks every number of the JSON report `r` against the layouts of `labels`,
/// computed here from the blobs' file sizes. Returns (alone, stored).
fn check_against_layouts(ws: &Ws, labels: &[&str], r: &Value) -> (u64, u64) {
    let layouts: BTreeMap<&str, Layout> = labels
        .iter()
        .map(|l| (*l, read_layout(&layout_of(ws, l))))
        .collect();
    // Each image's distinct blobs, and who carries each blob.
    let mut blobs_of: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut carriers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut layer_carriers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for (label, l) in &layouts {
        let mine = blobs_of.entry(label).or_default();
        for (d, s) in [&l.manifest, &l.config].into_iter().chain(&l.layers) {
            mine.insert(d, *s);
            sizes.insert(d, *s);
            carriers.entry(d).or_default().insert(label);
        }
        for (d, _) in &l.layers {
            layer_carriers.entry(d).or_default().insert(label);
        }
    }
    let stored: u64 = sizes.values().sum();
    let alone: u64 = blobs_of.values().map(|b| b.values().sum::<u64>()).sum();

    let fleet = &r["fleet"];
    assert_eq!(fleet["images"], labels.len());
    assert_eq!(fleet["layers"], layer_carriers.len());
    assert_eq!(fleet["blobs"], sizes.len());
    assert_eq!(fleet["alone_bytes"], alone);
    assert_eq!(fleet["stored_bytes"], stored);
    assert_eq!(fleet["saved_bytes"], alone - stored);
    let ratio = ((alone as f64 / stored as f64) * 1000.0).round() / 1000.0;
    assert_eq!(fleet["ratio"].as_f64().unwrap(), ratio);

    let images = r["images"].as_array().unwrap();
    let listed: Vec<&str> = images
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert_eq!(listed, layouts.keys().copied().collect::<Vec<_>>());
    for img in images {
        let label = img["label"].as_str().unwrap();
        let (l, mine) = (&layouts[label], &blobs_of[label]);
        let total: u64 = mine.values().sum();
        let own: u64 = mine
            .iter()
            .filter(|(d, _)| carriers[*d].len() == 1)
            .map(|(_, s)| s)
            .sum();
        assert_eq!(img["total_bytes"], total, "{label}");
        assert_eq!(img["own_bytes"], own, "{label}");
        assert_eq!(img["shared_bytes"], total - own, "{label}");
        assert_eq!(img["manifest"]["digest"], l.manifest.0.as_str());
        assert_eq!(img["manifest"]["size"], l.manifest.1);
        assert_eq!(img["config"]["digest"], l.config.0.as_str());
        assert_eq!(img["config"]["size"], l.config.1);
        let stack: Vec<&str> = img["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        let want: Vec<&str> = l.layers.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(stack, want, "{label}: layers base first");
    }

    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), layer_carriers.len());
    for l in layers {
        let d = l["digest"].as_str().unwrap();
        let who: Vec<&str> = layer_carriers[d].iter().copied().collect();
        assert_eq!(l["size"], sizes[d], "{d}");
        assert_eq!(l["image_count"], who.len(), "{d}");
        assert_eq!(l["images"], serde_json::json!(who), "{d}");
    }
    // Most shared first, then largest, then by digest.
    let keys: Vec<(std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, &str)> = layers
        .iter()
        .map(|l| {
            (
                std::cmp::Reverse(l["image_count"].as_u64().unwrap()),
                std::cmp::Reverse(l["size"].as_u64().unwrap()),
                l["digest"].as_str().unwrap(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "layers in the report's order");
    (alone, stored)
}

fn report_json(ws: &Ws, args: &[&str]) -> (Value, String) {
    let mut all = vec!["report", "--output", "json"];
    all.extend_from_slice(args);
    let out = ws.ok(&all);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON: {e}\n{}", stdout(&out)));
    (v, stderr(&out))
}

#[test]
fn report_numbers_match_the_blob_sizes_of_ten_services_on_one_64_mb_base() {
    let ws = ten_services();
    ws.build(&["//services/..."]);
    let (r, err) = report_json(&ws, &["//services/..."]);
    assert!(
        !err.contains("built "),
        "every image was cached: the report builds nothing\n{err}"
    );
    let labels: Vec<String> = (0..10).map(|i| format!("//services/s{i}:s{i}")).collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let (alone, stored) = check_against_layouts(&ws, &labels, &r);

    // The seed scenario: 74 MiB stored, not 650 MiB (plus gzip's framing and
    // the configs and manifests: well under 1%).
    assert!(
        (74 * MIB..74 * MIB + 74 * MIB / 100).contains(&stored),
        "stored {stored}"
    );
    assert!(
        (650 * MIB..650 * MIB + 650 * MIB / 100).contains(&alone),
        "alone {alone}"
    );
    let base = &r["layers"][0];
    assert_eq!(base["image_count"], 10, "the base layer comes first");
    assert_eq!(base["targets"], serde_json::json!(["//bases:os"]));
    assert_eq!(r["layers"][1]["image_count"], 1);
    assert_eq!(r["diverged"], serde_json::json!([]));
    for (i, img) in r["images"].as_array().unwrap().iter().enumerate() {
        let own = img["own_bytes"].as_u64().unwrap();
        assert!((MIB..MIB + MIB / 50).contains(&own), "s{i} owns {own}");
    }

    // The human table says the same.
    let text = stdout(&ws.ok(&["report", "//services/..."]));
    assert!(
        text.contains("fleet: 10 images, 11 distinct layers, 31 distinct blobs\n"),
        "{text}"
    );
    assert!(
        text.contains("  stored         74.0 MiB  (every distinct blob once)\n"),
        "{text}"
    );
    assert!(text.contains("  ratio             8.78x"), "{text}");
}

#[test]
fn report_names_the_images_on_another_base_as_diverged() {
    let ws = small_ws();
    ws.write(
        "legacy/BUILD.kdl",
        "image \"old\" {\n    from \"scratch\"\n    layer {\n        text \"/etc/os-release\" \"ID=old\\n\"\n    }\n}\n",
    );
    ws.build(&[]);
    let (r, _) = report_json(&ws, &[]);
    check_against_layouts(&ws, &["//app:app", "//base:base", "//legacy:old"], &r);
    assert_eq!(r["diverged"], serde_json::json!(["//legacy:old"]));
    let text = stdout(&ws.ok(&["report"]));
    assert!(
        text.ends_with("diverged (sharing no layer with the other images):\n  //legacy:old\n"),
        "{text}"
    );
}

#[test]
fn report_builds_what_is_missing_and_writes_no_layout() {
    let ws = small_ws();
    let out = ws.ok(&["report", "//app:app", "--output", "json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["fleet"]["images"], 1, "only the selected image: {r}");
    assert!(
        stderr(&out).contains("built image //app:app"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.path("imgc-out").exists(), "a report writes no layout");
    // A later build finds everything cached: the report built the real thing.
    let ev = ws.build(&["//app:app"]);
    assert!(ev.ran().is_empty(), "ran again: {:?}", ev.ran());
    let (again, _) = report_json(&ws, &["//app:app"]);
    check_against_layouts(&ws, &["//app:app"], &again);
    assert_eq!(again, r);
}

#[test]
fn report_fails_without_output_when_an_image_fails_to_build() {
    let ws = small_ws();
    std::fs::remove_file(ws.path("app/run.sh")).unwrap();
    let out = ws.run(&["report", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no report until the selected images build"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn report_usage_errors_exit_2() {
    let ws = small_ws();
    let out = ws.run(&["report", "//base:files"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the patterns select no image"),
        "{}",
        stderr(&out)
    );
    std::fs::create_dir(ws.path("out")).unwrap();
    let out = ws.run(&["report", "-o", "out"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`-o out` is a directory"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.path("imgc-out").exists(), "refused before building");
}

#[test]
fn report_human_on_spec_examples() {
    let ws = Ws::copy_of(&spec_examples());
    let out = ws.ok(&["report"]);
    insta::assert_snapshot!("report_spec_examples", stdout(&out));
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `args` (no network, no profile kept); its stdout.
fn chromium(profile: &Path, args: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "`{CHROMIUM}` is not installed: the README's test command (scripts/test) installs it (Debian's `chromium`)"
    );
    run(Command::new("timeout")
        .arg("300")
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args))
}

#[test]
fn report_html_renders_in_headless_chromium_with_every_image_name() {
    let ws = Ws::copy_of(&spec_examples());
    let out = ws.ok(&["report", "--output", "html", "-o", "report.html"]);
    assert!(out.stdout.is_empty(), "the page went to the file");
    assert!(stderr(&out).contains("wrote the report to `report.html`"));
    let (json, _) = report_json(&ws, &[]);
    let page = ws.path("report.html");
    let url = format!("file://{}", page.display());
    let profile = tempfile::tempdir().unwrap();

    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    assert!(dom.contains("Layer sharing of 6 images"), "{dom}");
    for img in json["images"].as_array().unwrap() {
        let label = img["label"].as_str().unwrap();
        assert!(
            dom.contains(&format!(">{label}</text>")),
            "`{label}` under its column"
        );
        assert!(
            dom.contains(&format!("<td>{label}</td>")),
            "`{label}` in the table"
        );
    }
    assert_eq!(dom.matches("<g class=\"image\">").count(), 6);
    let alone = imgc::report::bytes(json["fleet"]["alone_bytes"].as_u64().unwrap());
    assert!(
        dom.contains(&format!("<b id=\"alone\">{alone}</b>")),
        "{alone}"
    );

    let shot = profile.path().join("report.png");
    chromium(
        profile.path(),
        &[
            "--window-size=1100,900",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real screenshot"
    );
}
