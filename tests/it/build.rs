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
        out.contains(
            "//app:app: would rebuild: it depends on `//app:code`, which would rebuild \
             (file `app/run.sh` changed)"
        ),
        "{out}"
    );
    // explain built nothing
    assert_eq!(ws.build(&[]).ran(), ["//app:app", "//app:code"]);
}

#[test]
fn explain_two_levels_above_a_changed_base_gives_the_real_reason() {
    let ws = small_ws();
    ws.build(&[]);
    ws.write(
        "base/BUILD.kdl",
        &std::fs::read_to_string(ws.path("base/BUILD.kdl"))
            .unwrap()
            .replace("ID=imgc-test", "ID=imgc-test-2"),
    );
    let out = ws.ok(&["explain", "//app:app"]);
    let (stdout, stderr) = (stdout(&out), stderr(&out));
    let because = "it depends on `//base:files`, which would rebuild \
                   (layer entries changed in the spec)";
    assert!(
        stdout.contains(&format!("//base:base: would rebuild: {because}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("//app:app: would rebuild: {because}")),
        "{stdout}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains("failed"), "nothing failed: {text}");
        assert!(!text.contains("skipped"), "nothing was skipped: {text}");
    }
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

#[test]
fn copy_from_a_layer_target_rebases_its_files() {
    let ws = small_ws();
    ws.write(
        "app/extra/BUILD.kdl",
        "layer \"bundle\" {\n    copy \"//app:code\" to=\"/opt/bundle/\"\n}\nimage \"extra\" {\n    from \"scratch\"\n    layers \":bundle\"\n}\n",
    );
    let ev = ws.build(&["//app/extra/..."]);
    assert!(ev.ran().contains(&"//app/extra:bundle".to_string()));
    let listing = layer_listing(&ws.layout("app/extra", "extra"), 0);
    assert_eq!(
        listing,
        [
            "opt/bundle/app/run.sh",
            "opt/bundle/app/src/",
            "opt/bundle/app/src/lib/",
            "opt/bundle/app/src/lib/util.txt",
            "opt/bundle/app/src/main.txt",
        ]
    );
    // an edit to a file of the copied layer rebuilds the layer that copies it
    ws.write("app/src/main.txt", "changed\n");
    let ev = ws.build(&["//app/extra/..."]);
    assert_eq!(
        ev.ran(),
        ["//app/extra:bundle", "//app/extra:extra", "//app:code"]
    );
}

/// Paths in the `n`th layer of the image at `layout` (decompressed with flate2).
fn layer_listing(layout: &std::path::Path, n: usize) -> Vec<String> {
    let digests = layer_field(layout, "digest");
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let file = std::fs::File::open(blob(&digests[n])).unwrap();
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Layer digests of the image at `layout`.
fn layer_digests(layout: &std::path::Path) -> Vec<String> {
    layer_field(layout, "digest")
}

#[test]
fn imported_oci_layout_layers_are_reused_byte_for_byte() {
    let ws = small_ws();
    ws.build(&["//base:base"]);
    copy_tree(
        &ws.layout("base", "base"),
        &ws.path("third_party/base-layout"),
    );
    ws.write(
        "third_party/BUILD.kdl",
        "import \"upstream\" {\n    oci-layout \"base-layout\"\n}\nimage \"on-upstream\" {\n    from \":upstream\"\n    layer {\n        text \"/hello\" \"hi\\n\"\n    }\n}\n",
    );
    let ev = ws.build(&["//third_party/..."]);
    assert!(ev.ran().contains(&"//third_party:upstream".to_string()));
    let upstream = layer_digests(&ws.path("third_party/base-layout"));
    let mine = layer_digests(&ws.layout("third_party", "on-upstream"));
    assert_eq!(mine.len(), upstream.len() + 1);
    assert_eq!(mine[..upstream.len()], upstream[..]);
    imgc::oci::check_layout(&ws.layout("third_party", "on-upstream")).unwrap();
    assert!(ws.build(&["//third_party/..."]).ran().is_empty());
}

#[test]
fn imported_docker_archive_is_a_base() {
    if !have("skopeo") {
        panic!("`skopeo` is not installed: the README's test command installs it");
    }
    let ws = small_ws();
    ws.build(&["//base:base"]);
    std::fs::create_dir_all(ws.path("third_party")).unwrap();
    skopeo_docker_archive(&ws.layout("base", "base"), &ws.path("third_party/base.tar"));
    ws.write(
        "third_party/BUILD.kdl",
        "import \"saved\" {\n    docker-archive \"base.tar\"\n}\nimage \"on-saved\" {\n    from \":saved\"\n    entrypoint \"/bin/true\"\n}\n",
    );
    ws.build(&["//third_party/..."]);
    let layout = ws.layout("third_party", "on-saved");
    imgc::oci::check_layout(&layout).unwrap();
    assert_eq!(layer_digests(&layout).len(), 1);
}

#[test]
fn zstd_workspaces_build_valid_images() {
    let ws = small_ws();
    ws.write("imgc.kdl", "workspace {\n    compression \"zstd\"\n}\n");
    ws.build(&[]);
    let layout = ws.layout("app", "app");
    imgc::oci::check_layout(&layout).unwrap();
    let manifest_media = layer_field(&layout, "mediaType");
    assert!(
        manifest_media
            .iter()
            .all(|m| m == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{manifest_media:?}"
    );
}

/// Guards E030: a layer whose entry would change a lower path between directory
/// and non-directory (deleting the directory, or replacing the merged-/usr link)
/// fails the image, naming the path and both layers; nothing is written.
#[test]
fn a_layer_that_would_destroy_a_lower_path_is_refused_at_assembly() {
    let ws = Ws::new(&[
        ("imgc.kdl", "workspace {\n}\n"),
        (
            "base/BUILD.kdl",
            r#"
image "base" {
    from "scratch"
    layer {
        dir "/usr/lib"
        symlink "/lib" target="usr/lib"
        dir "/etc/app"
        text "/etc/app/keep.conf" "keep\n"
    }
}
"#,
        ),
        (
            "svc/BUILD.kdl",
            r#"
layer "over-dir" {
    text "/etc/app" "a file where a directory was\n"
}
layer "over-link" {
    dir "/lib" mode="0755"
}
layer "through-link" {
    text "/usr/lib/libfoo.so" "fine: a directory over a directory\n"
}
image "bad-file" {
    from "//base"
    layers ":over-dir"
}
image "bad-dir" {
    from "//base"
    layers ":over-link"
}
image "good" {
    from "//base"
    layers ":through-link"
}
"#,
        ),
    ]);
    let out = ws.run(&["build", "--keep-going", "//svc/..."]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("E030"), "{err}");
    assert!(
        err.contains(
            "layer `//svc:over-dir` puts a file at `/etc/app` where layer 1 of base `//base:base`"
        ),
        "{err}"
    );
    assert!(
        err.contains("delete that directory and everything under it"),
        "{err}"
    );
    assert!(
        err.contains(
            "layer `//svc:over-link` puts a directory at `/lib` where layer 1 of base `//base:base`"
        ),
        "{err}"
    );
    assert!(err.contains("holds a symlink"), "{err}");
    assert!(!ws.layout("svc", "bad-file").exists());
    assert!(!ws.layout("svc", "bad-dir").exists());
    assert!(!err.contains("`//svc:good`"), "{err}");
}
