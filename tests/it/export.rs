//! `imgc export`: archives that podman and skopeo read as the image imgc built
//! (there is no Docker engine here: `docker load` is not tested), byte-identical
//! wherever they are made, and never left half-written.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const API_TAG: &str = "registry.example.com/acme/api:1.4.2";

/// A copy of spec-examples and a temp dir for archives.
fn examples() -> (Ws, tempfile::TempDir) {
    (Ws::copy_of(&spec_examples()), tempfile::tempdir().unwrap())
}

fn export(ws: &Ws, label: &str, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["export", label, "-o", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    ws.ok(&args)
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn skopeo_json(args: &[&str], image: &str) -> Value {
    let out = run(Command::new("skopeo").arg("inspect").args(args).arg(image));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo {args:?} {image}: {e}\n{out}"))
}

/// The blob `digest` (`sha256:...`) of an OCI layout.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// The member paths of a tar file, in order.
fn members(file: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(file).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Unpacks a tar file into a new directory.
fn unpack(file: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(std::fs::File::open(file).unwrap())
        .unpack(dir.path())
        .unwrap();
    dir
}

/// Names of the files in `dir`.
fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// podman with its own storage (vfs), run root and temp dir in a temp dir:
/// never the system's storage.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// `None` (with a message) only if podman cannot run here at all.
    fn new() -> Option<Podman> {
        require("podman");
        let p = Podman {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = p.cmd(&["info"]).output().unwrap();
        assert!(
            out.status.success(),
            "podman cannot run here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(p)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(args)
            .env("TMPDIR", d);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        run(&mut self.cmd(args))
    }

    /// `REPOSITORY:TAG ID` of every image, sorted.
    fn images(&self) -> Vec<String> {
        let out = self.run(&[
            "images",
            "--no-trunc",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ID}}",
        ]);
        let mut v: Vec<String> = out.lines().map(str::to_string).collect();
        v.sort();
        v
    }
}

#[test]
fn an_exported_docker_archive_loads_into_podman() {
    let (ws, out) = examples();
    let file = out.path().join("api.tar");
    export(&ws, "//services/api", &file, &[]);
    ws.build(&["//services/api"]);
    let layout = ws.layout("services/api", "api");
    let manifest = json_of(&blob(&layout, &layout_digest(&layout)));
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();

    let Some(podman) = Podman::new() else { return };
    let loaded = podman.run(&["load", "-i", file.to_str().unwrap()]);
    assert!(
        loaded.contains(&format!("Loaded image: {API_TAG}")),
        "{loaded}"
    );
    // The image id is the config digest; podman's digest is the manifest's.
    assert_eq!(podman.images(), vec![format!("{API_TAG} {config}")]);
    let inspect = podman.run(&["inspect", "--format", "{{.Id}} {{.Digest}}", API_TAG]);
    assert_eq!(
        inspect.trim(),
        format!(
            "{} {}",
            config.trim_start_matches("sha256:"),
            layout_digest(&layout)
        )
    );
}

/// Two names make podman read the archive's `manifest.json` side (its OCI side
/// names one image only), and zstd layers load through it as they are.
#[test]
fn a_zstd_docker_archive_with_two_names_loads_into_podman() {
    let (ws, out) = examples();
    let kdl = std::fs::read_to_string(ws.path("imgc.kdl")).unwrap();
    ws.write(
        "imgc.kdl",
        &kdl.replace("compression \"gzip\"", "compression \"zstd\""),
    );
    let file = out.path().join("api.tar");
    export(&ws, "//services/api", &file, &["--tag", "acme/api:zstd"]);
    ws.build(&["//services/api"]);
    let layout = ws.layout("services/api", "api");
    let manifest = json_of(&blob(&layout, &layout_digest(&layout)));
    assert!(
        manifest["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with("+zstd")
    );
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    // Fully qualified in manifest.json: podman would make `acme/api` `localhost/acme/api`.
    let a = unpack(&file);
    let repo_tags =
        json_of(&std::fs::read(a.path().join("manifest.json")).unwrap())[0]["RepoTags"].clone();
    assert_eq!(
        repo_tags,
        serde_json::json!(["docker.io/acme/api:zstd", API_TAG])
    );

    let Some(podman) = Podman::new() else { return };
    podman.run(&["load", "-i", file.to_str().unwrap()]);
    assert_eq!(
        podman.images(),
        vec![
            format!("docker.io/acme/api:zstd {config}"),
            format!("{API_TAG} {config}"),
        ]
    );
}

#[test]
fn skopeo_inspect_of_the_docker_archive_shows_the_layout_config_digest() {
    require("skopeo");
    let (ws, out) = examples();
    ws.build(&[]);
    for (pkg, name) in [("services/api", "api"), ("services/reports", "reports")] {
        let file = out.path().join(format!("{name}.tar"));
        export(&ws, &format!("//{pkg}:{name}"), &file, &[]);
        let layout = ws.layout(pkg, name);
        let manifest = json_of(&blob(&layout, &layout_digest(&layout)));
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config = json_of(&blob(&layout, config_digest));
        let image = format!("docker-archive:{}", file.display());

        // skopeo builds a Docker manifest from manifest.json: same config,
        // layers named by their diff_ids.
        let raw = skopeo_json(&["--raw"], &image);
        assert_eq!(raw["config"]["digest"], config_digest, "{name}");
        let layers: Vec<&Value> = raw["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        let diff_ids: Vec<&Value> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(layers, diff_ids, "{name}");
        // The config itself, byte for byte.
        let raw_config = run(Command::new("skopeo")
            .args(["inspect", "--config", "--raw"])
            .arg(&image));
        assert_eq!(
            raw_config.as_bytes(),
            blob(&layout, config_digest),
            "{name}"
        );
    }
}

#[test]
fn the_docker_archive_is_also_an_oci_layout() {
    require("skopeo");
    require("umoci");
    let (ws, out) = examples();
    ws.build(&["//services/api"]);
    let layout = ws.layout("services/api", "api");
    let file = out.path().join("api.tar");
    export(&ws, "//services/api", &file, &[]);

    // Unpacked, it passes the independent layout checker and holds exactly the
    // blobs of the build's layout.
    let dir = unpack(&file);
    imgc::oci::check_layout(dir.path()).unwrap();
    assert_eq!(
        names_in(&dir.path().join("blobs/sha256")),
        names_in(&layout.join("blobs/sha256"))
    );
    for name in names_in(&layout.join("blobs/sha256")) {
        assert_eq!(
            std::fs::read(dir.path().join("blobs/sha256").join(&name)).unwrap(),
            std::fs::read(layout.join("blobs/sha256").join(&name)).unwrap()
        );
    }
    let index = json_of(&std::fs::read(dir.path().join("index.json")).unwrap());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], layout_digest(&layout));
    assert_eq!(
        index["manifests"][0]["annotations"],
        serde_json::json!({
            "io.containerd.image.name": API_TAG,
            "org.opencontainers.image.ref.name": "1.4.2",
        })
    );

    // skopeo reads it as an OCI archive; umoci unpacks it (checking diff_ids).
    let oci = skopeo_json(&[], &format!("oci-archive:{}", file.display()));
    assert_eq!(oci["Digest"], layout_digest(&layout));
    let bundle = tempfile::tempdir().unwrap();
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:1.4.2", dir.path().display()))
        .arg(bundle.path().join("b")));
    assert_eq!(
        std::fs::read_to_string(bundle.path().join("b/rootfs/etc/api/version")).unwrap(),
        "1.4.2\n"
    );
}

#[test]
fn oci_archive_round_trips_through_skopeo() {
    require("skopeo");
    let (ws, out) = examples();
    ws.build(&["//services/web"]);
    let layout = ws.layout("services/web", "web");
    let file = out.path().join("web.tar");
    export(&ws, "//services/web", &file, &["--format", "oci-archive"]);
    let m = members(&file);
    assert!(!m.contains(&"manifest.json".to_string()), "{m:?}");
    assert!(m.contains(&"index.json".to_string()) && m.contains(&"oci-layout".to_string()));

    let copy = tempfile::tempdir().unwrap();
    let dest = copy.path().join("web");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", file.display()))
        .arg(format!("oci:{}:again", dest.display())));
    // The same manifest, config and layers as the build wrote.
    assert_eq!(layout_digest(&dest), layout_digest(&layout));
    let manifest = json_of(&blob(&layout, &layout_digest(&layout)));
    let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    for l in manifest["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in digests {
        assert_eq!(blob(&dest, &d), blob(&layout, &d), "{d}");
    }
}

#[test]
fn exports_are_byte_identical_across_machines() {
    let (a, out) = examples();
    let b = Ws::copy_of(&spec_examples());
    for format in ["docker-archive", "oci-archive"] {
        let fa = out.path().join(format!("a-{format}.tar"));
        let fb = out.path().join(format!("b-{format}.tar"));
        // Two checkouts, two caches, and b under another umask.
        export(&a, "//services/api", &fa, &["--format", format]);
        let o = Command::new("sh")
            .args(["-c", "umask 077; exec \"$0\" \"$@\"", imgc_bin()])
            .args(["--cache-dir", b.cache.path().to_str().unwrap()])
            .args([
                "export",
                "//services/api",
                "-o",
                fb.to_str().unwrap(),
                "--format",
                format,
            ])
            .current_dir(b.root())
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let (ba, bb) = (std::fs::read(&fa).unwrap(), std::fs::read(&fb).unwrap());
        assert!(ba == bb, "{format}: the two exports differ");
        // And again from a warm cache.
        export(&a, "//services/api", &fa, &["--format", format]);
        assert!(
            std::fs::read(&fa).unwrap() == ba,
            "{format}: a warm export differs"
        );
    }
}

#[test]
fn export_to_stdout_writes_the_same_archive() {
    let (ws, out) = examples();
    let file = out.path().join("api.tar");
    export(&ws, "//services/api", &file, &[]);
    let piped = ws.ok(&["export", "//services/api", "-o", "-"]);
    assert!(piped.stdout == std::fs::read(&file).unwrap());
    assert!(stderr(&piped).contains("exported `//services/api:api` to stdout"));
}

/// `-o -` on a terminal (a pseudo-terminal from `script`) is refused before
/// any work: an archive is no text for a screen.
#[test]
fn export_to_a_terminal_is_refused() {
    require("script");
    let (ws, _out) = examples();
    let cmd = format!(
        "{} --cache-dir {} export //services/api -o -; echo \"exit=$?\"",
        imgc_bin(),
        ws.cache.path().display()
    );
    let o = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .current_dir(ws.root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("which is a terminal"), "{text}");
    assert!(text.contains("exit=2"), "{text}");
    assert!(!text.contains("oci-layout"), "{text}");
    // Refused before the workspace is even loaded: no cache was made.
    assert!(!ws.cache.path().join("v1").exists());
}

#[test]
fn export_builds_first_and_a_second_export_runs_nothing() {
    let (ws, out) = examples();
    let file = out.path().join("api.tar");
    let first = export(&ws, "//services/api", &file, &[]);
    assert!(
        stderr(&first).contains("built image //services/api:api"),
        "{}",
        stderr(&first)
    );
    // The export built what `imgc build` builds: all cached now.
    let ev = ws.build(&["//services/api"]);
    assert!(ev.ran().is_empty(), "{:?}", ev.ran());
    let again = export(&ws, "//services/api", &file, &[]);
    assert!(!stderr(&again).contains("built "), "{}", stderr(&again));
    // Export writes the archive, not a layout.
    assert_eq!(
        stdout(&again).trim(),
        format!(
            "//services/api:api {} {}",
            file.display(),
            layout_digest(&ws.layout("services/api", "api"))
        )
    );
}

/// spec-examples with 4 MiB that gzip cannot shrink in `//services/api`, built,
/// so its archive outgrows a 2 MiB file size limit.
fn noisy_api() -> (Ws, tempfile::TempDir) {
    let (ws, out) = examples();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    ws.write_bytes("services/api/noise.bin", &noise);
    let build = std::fs::read_to_string(ws.path("services/api/BUILD.kdl")).unwrap();
    ws.write(
        "services/api/BUILD.kdl",
        &build.replace(
            "    text \"/etc/api/version\"",
            "    copy \"noise.bin\" to=\"/etc/api/noise.bin\"\n    text \"/etc/api/version\"",
        ),
    );
    ws.build(&["//services/api"]); // the cache is written without a limit
    (ws, out)
}

/// Exports `//services/api` to `file` under a 2 MiB file size limit
/// (`ulimit -f`): with SIGXFSZ ignored the write fails, else the signal kills imgc.
fn export_limited(ws: &Ws, file: &Path, ignore_sigxfsz: bool) -> std::process::Output {
    let trap = if ignore_sigxfsz { "trap '' XFSZ; " } else { "" };
    let cmd = format!(
        "{trap}ulimit -f 4096; exec \"$0\" --cache-dir \"$1\" export //services/api -o \"$2\""
    );
    Command::new("sh")
        .args(["-c", &cmd, imgc_bin()])
        .arg(ws.cache.path())
        .arg(file)
        .current_dir(ws.root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// A file that grows past the size limit makes the export fail half-way: the
/// existing FILE stays as it was and no temporary file is left.
#[test]
fn a_failed_export_leaves_no_partial_file() {
    let (ws, out) = noisy_api();
    let file = out.path().join("api.tar");
    std::fs::write(&file, b"an older archive").unwrap();
    let o = export_limited(&ws, &file, true);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot write the archive"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"an older archive");
    assert_eq!(
        names_in(out.path()),
        BTreeSet::from(["api.tar".to_string()])
    );

    // A missing directory: a clear error before any work, nothing created.
    let missing = out.path().join("no/such/dir/api.tar");
    let o = ws.run(&["export", "//services/api", "-o", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("its directory") && stderr(&o).contains("No such file"),
        "{}",
        stderr(&o)
    );
    assert!(!out.path().join("no").exists());

    // Without the limit the same export completes over the old file.
    export(&ws, "//services/api", &file, &[]);
    assert!(members(&file).contains(&"manifest.json".to_string()));
    assert_eq!(
        names_in(out.path()),
        BTreeSet::from(["api.tar".to_string()])
    );
}

/// Killed half-way (by SIGXFSZ here, as by any signal), an export leaves the
/// old FILE in place: only its temporary file remains beside it.
#[test]
fn a_killed_export_leaves_the_old_file_in_place() {
    use std::os::unix::process::ExitStatusExt;
    let (ws, out) = noisy_api();
    let file = out.path().join("api.tar");
    std::fs::write(&file, b"an older archive").unwrap();
    let o = export_limited(&ws, &file, false);
    assert_eq!(o.status.signal(), Some(libc::SIGXFSZ), "{}", stderr(&o));
    assert_eq!(std::fs::read(&file).unwrap(), b"an older archive");
    let left: Vec<String> = names_in(out.path())
        .into_iter()
        .filter(|n| n != "api.tar")
        .collect();
    assert!(
        left.len() == 1 && left[0].starts_with(".api.tar.") && left[0].ends_with(".imgc-tmp"),
        "{left:?}"
    );
}

#[test]
fn exporting_over_a_directory_or_a_fifo_is_refused() {
    let (ws, out) = examples();
    let dir = out.path().join("a-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep"), b"mine").unwrap();
    let o = ws.run(&["export", "//services/api", "-o", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    assert_eq!(std::fs::read(dir.join("keep")).unwrap(), b"mine");

    let fifo = out.path().join("fifo");
    run(Command::new("mkfifo").arg(&fifo));
    let o = ws.run(&["export", "//services/api", "-o", fifo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        names_in(out.path()),
        BTreeSet::from(["a-dir".to_string(), "fifo".to_string()])
    );
}

#[test]
fn an_export_replaces_a_symlink_at_its_place_not_its_target() {
    let (ws, out) = examples();
    let target = out.path().join("precious");
    std::fs::write(&target, b"not an archive").unwrap();
    let link = out.path().join("api.tar");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    export(&ws, "//services/api", &link, &[]);
    assert_eq!(std::fs::read(&target).unwrap(), b"not an archive");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert!(members(&link).contains(&"oci-layout".to_string()));
}

#[test]
fn exporting_a_layer_is_an_error() {
    let (ws, out) = examples();
    let file = out.path().join("x.tar");
    let o = ws.run(&["export", "//services/api:app", "-o", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`//services/api:app` is a layer"),
        "{}",
        stderr(&o)
    );
    // An unknown label is the usual diagnostic; a pattern is not a label.
    let o = ws.run(&[
        "export",
        "//services/api:nope",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("matches no target"), "{}", stderr(&o));
    let o = ws.run(&["export", "//services/...", "-o", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is a pattern"), "{}", stderr(&o));
    assert!(!file.exists());
}

#[test]
fn an_import_exports_with_its_upstream_digests() {
    require("skopeo");
    let (ws, out) = examples();
    let file = out.path().join("vendor.tar");
    let o = export(&ws, "//third_party:vendor-base", &file, &[]);
    // It has no tag: the archive names no image, and says so.
    assert!(stderr(&o).contains("has no `tag`"), "{}", stderr(&o));
    let upstream = ws.path("third_party/vendor-base");
    let oci = skopeo_json(&[], &format!("oci-archive:{}", file.display()));
    assert_eq!(oci["Digest"], layout_digest(&upstream));
    let raw = skopeo_json(&["--raw"], &format!("docker-archive:{}", file.display()));
    let upstream_manifest = json_of(&blob(&upstream, &layout_digest(&upstream)));
    assert_eq!(
        raw["config"]["digest"],
        upstream_manifest["config"]["digest"]
    );
    // With a name given on the command line.
    export(
        &ws,
        "//third_party:vendor-base",
        &file,
        &["--tag", "vendor/base:3.1"],
    );
    let a = unpack(&file);
    let mj = json_of(&std::fs::read(a.path().join("manifest.json")).unwrap());
    assert_eq!(
        mj[0]["RepoTags"],
        serde_json::json!(["docker.io/vendor/base:3.1"])
    );
}

#[test]
fn a_tag_that_names_no_image_fails_the_export_at_its_line() {
    let (ws, out) = examples();
    let build = std::fs::read_to_string(ws.path("services/api/BUILD.kdl")).unwrap();
    ws.write(
        "services/api/BUILD.kdl",
        &build.replace(API_TAG, "Registry.Example.com/Acme/API:1.4.2"),
    );
    let file = out.path().join("api.tar");
    let o = ws.run(&["export", "//services/api", "-o", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("services/api/BUILD.kdl:31"), "{err}");
    assert!(err.contains("cannot be exported"), "{err}");
    assert!(!file.exists());
    // A bad `--tag` is a usage error.
    let o = ws.run(&[
        "export",
        "//services/web",
        "-o",
        file.to_str().unwrap(),
        "--tag",
        "x@sha256:00",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!file.exists());
}
