//! Incrementality: which actions ran, from `--message-format json`.

use crate::support::*;

const ALL: [&str; 5] = [
    "//app:app",
    "//app:app~layer0",
    "//app:code",
    "//base:base",
    "//base:files",
];

#[test]
fn cold_build_runs_everything_and_writes_layouts() {
    let ws = small_ws();
    let ev = ws.build(&[]);
    assert_eq!(ev.ran(), ALL);
    assert_eq!(ev.summary()["images"], 2);
    assert_eq!(ev.summary()["ran"], 5);
    assert!(ws.layout("app", "app").join("index.json").is_file());
    assert!(ws.layout("base", "base").join("oci-layout").is_file());
    assert!(ev.reason("//app:code").unwrap().contains("never built"));
}

#[test]
fn second_build_runs_nothing() {
    let ws = small_ws();
    ws.build(&[]);
    let ev = ws.build(&[]);
    assert!(ev.ran().is_empty(), "ran {:?}", ev.ran());
    assert_eq!(ev.cached(), ALL);
}

#[test]
fn touch_without_change_runs_nothing() {
    let ws = small_ws();
    ws.build(&[]);
    let later = filetime::FileTime::from_unix_time(2_000_000_000, 0);
    for f in [
        "app/src/main.txt",
        "app/run.sh",
        "app/config.toml",
        "app/BUILD.kdl",
    ] {
        filetime::set_file_mtime(ws.path(f), later).unwrap();
    }
    assert!(ws.build(&[]).ran().is_empty());
}

#[test]
fn reformatted_build_file_runs_nothing() {
    let ws = small_ws();
    ws.build(&[]);
    let text = std::fs::read_to_string(ws.path("app/BUILD.kdl")).unwrap();
    let reformatted = format!(
        "// a comment\n{}",
        text.replace("    ", "\t\t")
            .replace("\n}", "\n\n}")
            .replace("layers \":code\"", "layers  \":code\"  ")
    );
    assert_ne!(text, reformatted);
    ws.write("app/BUILD.kdl", &reformatted);
    assert!(ws.build(&[]).ran().is_empty());
}

#[test]
fn editing_one_file_rebuilds_its_layer_and_the_images_using_it() {
    let ws = small_ws();
    ws.build(&[]);
    ws.write("app/src/main.txt", "hello, world\n");
    let ev = ws.build(&[]);
    assert_eq!(ev.ran(), ["//app:app", "//app:code"]);
    assert_eq!(
        ev.reason("//app:code").unwrap(),
        "file `app/src/main.txt` changed"
    );
    assert_eq!(
        ev.reason("//app:app").unwrap(),
        "layer `//app:code` changed"
    );
}

#[test]
fn identical_layer_output_stops_the_cascade() {
    let ws = small_ws();
    ws.build(&[]);
    // Same bytes at the same place in the image, from a differently named source:
    // the layer's key changes, its output does not.
    std::fs::rename(ws.path("app/config.toml"), ws.path("app/config-prod.toml")).unwrap();
    let text = std::fs::read_to_string(ws.path("app/BUILD.kdl")).unwrap();
    ws.write(
        "app/BUILD.kdl",
        &text.replace("copy \"config.toml\"", "copy \"config-prod.toml\""),
    );
    let ev = ws.build(&[]);
    assert_eq!(ev.ran(), ["//app:app~layer0"], "early cutoff failed");
    assert!(ev.cached().contains(&"//app:app".to_string()));
}

#[test]
fn base_change_reassembles_dependents_without_rebuilding_their_layers() {
    let ws = small_ws();
    ws.build(&[]);
    let text = std::fs::read_to_string(ws.path("base/BUILD.kdl")).unwrap();
    ws.write(
        "base/BUILD.kdl",
        &text.replace("ID=imgc-test", "ID=imgc-test-2"),
    );
    let ev = ws.build(&[]);
    assert_eq!(ev.ran(), ["//app:app", "//base:base", "//base:files"]);
    assert!(
        ev.reason("//app:app")
            .unwrap()
            .contains("base image changed"),
        "{:?}",
        ev.reason("//app:app")
    );
}

#[test]
fn building_a_subset_builds_its_dependencies_only() {
    let ws = small_ws();
    let ev = ws.build(&["//base/..."]);
    assert_eq!(ev.ran(), ["//base:base", "//base:files"]);
    assert!(!ws.layout("app", "app").exists());
}

#[test]
fn explain_names_the_changed_file() {
    let ws = small_ws();
    ws.build(&[]);
    let out = ws.ok(&["explain", "//app:app"]);
    assert!(
        stdout(&out).contains("//app:app: up to date"),
        "{}",
        stdout(&out)
    );
    ws.write("app/run.sh", "#!/bin/sh\necho changed\n");
    let out = stdout(&ws.ok(&["explain", "//app:app"]));
    assert!(
        out.contains("//app:code: would rebuild: file `app/run.sh` changed"),
        "{out}"
    );
    assert!(
        out.contains("//app:app: would rebuild: dependency `//app:code` would rebuild"),
        "{out}"
    );
    // explain built nothing
    assert_eq!(ws.build(&[]).ran(), ["//app:app", "//app:code"]);
}

#[test]
fn cache_stats_and_clean() {
    let ws = small_ws();
    ws.build(&[]);
    let out = stdout(&ws.ok(&["cache", "stats"]));
    assert!(out.contains("actions          5"), "{out}");
    ws.ok(&["clean"]);
    assert!(!ws.path("imgc-out").exists());
    // outputs come back from the cache without running anything
    let ev = ws.build(&[]);
    assert!(ev.ran().is_empty());
    assert!(ws.layout("app", "app").join("index.json").is_file());
}

#[test]
fn index_names_the_manifest_by_tag() {
    let ws = small_ws();
    ws.build(&[]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.layout("app", "app").join("index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "1.0"
    );
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ws.layout("base", "base").join("index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
}
