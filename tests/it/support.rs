//! Fixtures and helpers shared by the integration tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod auth;
pub mod debian;
pub mod http_server;
pub mod nginx;
pub mod pty;
pub mod registry;
pub use debian::{pristine_repo, repo_copy};
pub use http_server::FileServer;
pub use nginx::{LogLine, Nginx, NginxOpts};

/// A workspace in a temp dir with its own cache directory.
pub struct Ws {
    pub dir: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

pub fn imgc_bin() -> &'static str {
    env!("CARGO_BIN_EXE_imgc")
}

impl Ws {
    /// A workspace made of `(path, contents)` pairs.
    pub fn new(files: &[(&str, &str)]) -> Ws {
        let ws = Ws {
            dir: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        };
        for (p, c) in files {
            ws.write(p, c);
        }
        ws
    }

    /// A copy of a directory of the repository (e.g. `spec-examples`).
    pub fn copy_of(src: &Path) -> Ws {
        let ws = Ws::new(&[]);
        copy_tree(src, ws.root());
        ws
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) {
        self.write_bytes(rel, contents.as_bytes());
    }

    pub fn write_bytes(&self, rel: &str, contents: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(imgc_bin());
        c.current_dir(self.root())
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("IMGC_CACHE_DIR")
            .env_remove("IMGC_REMOTE_CACHE")
            .env_remove("IMGC_REMOTE_CACHE_MODE")
            .env_remove("IMGC_REMOTE_CACHE_CREDENTIALS");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "imgc {args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Builds with JSON events and returns them.
    pub fn build(&self, extra: &[&str]) -> Events {
        let mut args = vec!["build", "--message-format", "json"];
        args.extend_from_slice(extra);
        Events::parse(&self.ok(&args).stdout)
    }

    /// The image layout directory of `//pkg:name`.
    pub fn layout(&self, pkg: &str, name: &str) -> PathBuf {
        self.path(&format!("imgc-out/{pkg}/{name}"))
    }
}

pub fn copy_tree(src: &Path, dst: &Path) {
    for e in walkdir::WalkDir::new(src).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(src).unwrap();
        if rel.components().any(|c| c.as_os_str() == "imgc-out") {
            continue;
        }
        let to = dst.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// The JSON events of one build.
pub struct Events(pub Vec<serde_json::Value>);

impl Events {
    pub fn parse(stdout: &[u8]) -> Events {
        Events(
            String::from_utf8_lossy(stdout)
                .lines()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))
                })
                .collect(),
        )
    }

    fn of(&self, kind: &str) -> impl Iterator<Item = &serde_json::Value> {
        let kind = kind.to_string();
        self.0.iter().filter(move |e| e["event"] == kind.as_str())
    }

    /// Labels of the actions that ran (not from the cache), sorted.
    pub fn ran(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .of("finished")
            .filter(|e| e["cached"] == false)
            .map(|e| e["label"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    /// Labels served from the cache, sorted.
    pub fn cached(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .of("finished")
            .filter(|e| e["cached"] == true)
            .map(|e| e["label"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    /// The reason given when `label` started.
    pub fn reason(&self, label: &str) -> Option<String> {
        self.of("started")
            .find(|e| e["label"] == label)
            .map(|e| e["reason"].as_str().unwrap().to_string())
    }

    pub fn summary(&self) -> &serde_json::Value {
        self.of("summary").last().expect("no summary event")
    }

    /// The kind and output digest of every action that finished, by label.
    pub fn outputs_with_kind(&self) -> BTreeMap<String, (String, String)> {
        self.of("finished")
            .map(|e| {
                (
                    e["label"].as_str().unwrap().to_string(),
                    (
                        e["kind"].as_str().unwrap().to_string(),
                        e["digest"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// Manifest digests of the materialized images.
    pub fn images(&self) -> BTreeMap<String, String> {
        self.of("materialized")
            .map(|e| {
                (
                    e["label"].as_str().unwrap().to_string(),
                    e["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// Every file under `dir` (relative path → bytes), for byte-for-byte comparisons.
pub fn tree_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

/// Asserts two trees hold the same files with the same bytes, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree_bytes(a), tree_bytes(b));
    let ka: Vec<&String> = ta.keys().collect();
    let kb: Vec<&String> = tb.keys().collect();
    assert_eq!(
        ka,
        kb,
        "different files in {} and {}",
        a.display(),
        b.display()
    );
    for (k, v) in &ta {
        assert!(
            v == &tb[k],
            "`{k}` differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    assert!(!ta.is_empty(), "nothing was built in {}", a.display());
}

/// Is `tool` on PATH?
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Fails the test, naming the fix, when `tool` is not installed: the README's
/// test command installs every tool the tests use, so a missing one is a broken
/// set-up, never a reason to pass.
pub fn require(tool: &str) {
    assert!(
        have(tool),
        "`{tool}` is not installed: the README's test command (scripts/test) installs the tools the tests need"
    );
}

/// The repository's example workspace.
pub fn spec_examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("spec-examples")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small two-image workspace: a base with one layer, an app on it with two
/// layers (one inline).
pub fn small_ws() -> Ws {
    Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n}\n",
        ),
        (
            "base/BUILD.kdl",
            r#"
layer "files" {
    text "/etc/os-release" "ID=imgc-test\n"
    dir "/tmp" mode="1777"
}
image "base" {
    from "scratch"
    layers ":files"
    env PATH="/bin"
}
"#,
        ),
        (
            "app/BUILD.kdl",
            r#"
layer "code" {
    copy "src" to="/app/"
    copy "run.sh" to="/app/run.sh" mode="0755"
}
image "app" {
    from "//base:base"
    layers ":code"
    layer {
        copy "config.toml" to="/etc/app/config.toml"
    }
    entrypoint "/app/run.sh"
    tag "example.com/app:1.0"
}
"#,
        ),
        ("app/src/main.txt", "hello\n"),
        ("app/src/lib/util.txt", "util\n"),
        ("app/run.sh", "#!/bin/sh\necho hi\n"),
        ("app/config.toml", "port = 8080\n"),
    ])
}

/// SIGKILLs a test server's process `child` (if it still runs) and reaps it.
pub fn stop_child(child: &mut std::process::Child) {
    if child.try_wait().unwrap().is_none() {
        // SAFETY: a plain syscall; the PID is our unreaped child, so it cannot
        // have been reused by another process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    }
    child.wait().unwrap();
}

/// A port on 127.0.0.1 that was free a moment ago (for a test server to listen on;
/// the server's start must cope with losing it to another process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0 to find a free port")
        .port()
}

/// The manifest digest (`sha256:...`) of the image in the OCI layout at `layout`
/// (the first entry of its `index.json`).
pub fn layout_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The manifest (as JSON) of the image in the OCI layout at `layout`.
pub fn manifest_of(layout: &Path) -> serde_json::Value {
    let digest = layout_digest(layout);
    let hex = digest.trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// One string field of every layer descriptor of the image at `layout`.
pub fn layer_field(layout: &Path, field: &str) -> Vec<String> {
    manifest_of(layout)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[field].as_str().unwrap().to_string())
        .collect()
}

/// Runs a tool, which must succeed; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies the OCI layout `layout` (tag `latest`) into a docker archive
/// `archive` (tagged `base:latest`) with skopeo.
pub fn skopeo_docker_archive(layout: &Path, archive: &Path) {
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker-archive:{}:base:latest", archive.display())));
}

/// The last layer of the image at `layout` (a gzip layer), as a tar archive.
pub fn last_layer_tar(layout: &Path) -> tar::Archive<flate2::read::MultiGzDecoder<std::fs::File>> {
    let digest = layer_field(layout, "digest").pop().unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    tar::Archive::new(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(blob).unwrap(),
    ))
}

/// An in-process build of everything in `ctx`'s workspace, ready for the engine:
/// the loaded workspace, the selection of `//...` and the build settings at
/// `-j jobs`.
pub fn engine_setup(
    ctx: &imgc::commands::Context,
    jobs: usize,
    keep_going: bool,
) -> (
    imgc::commands::Loaded,
    Vec<petgraph::graph::NodeIndex>,
    imgc::scheduler::Settings,
) {
    let loaded = imgc::commands::Loaded::load(ctx).unwrap();
    let selected = loaded.select(&[]).unwrap();
    let settings = imgc::commands::build::settings(
        ctx,
        &loaded,
        Some(jobs),
        keep_going,
        imgc::commands::build::Run::Build,
    )
    .unwrap();
    (loaded, selected, settings)
}

/// The command context of an in-process build of `ws` with its own cache and no
/// remote cache (change fields for others).
pub fn context(ws: &Ws) -> imgc::commands::Context {
    imgc::commands::Context {
        cwd: ws.root().to_path_buf(),
        cache_dir: Some(ws.cache.path().to_path_buf()),
        remote: Default::default(),
        registry: Default::default(),
    }
}

/// Builds `patterns` (everything if none) in the library with `hook` called
/// right before each action runs (after it was keyed and missed). Returns the
/// failure messages by label.
pub fn build_with_hook(
    ws: &Ws,
    patterns: &[&str],
    hook: impl Fn(&imgc::label::Label) + Send + Sync + 'static,
) -> BTreeMap<String, String> {
    use imgc::commands::{Loaded, build};
    use imgc::scheduler::Outcome;
    let ctx = context(ws);
    let mut loaded = Loaded::load(&ctx).unwrap_or_else(|e| panic!("{e:?}"));
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    let selected = loaded.select(&patterns).unwrap();
    let mut settings = build::settings(
        &ctx,
        &loaded,
        Some(1),
        false,
        imgc::commands::build::Run::Build,
    )
    .unwrap();
    settings.before_run = Some(std::sync::Arc::new(hook));
    let mut reporter =
        imgc::report::Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone()).quiet();
    let summary = build::run_engine(&ctx, &mut loaded, &selected, settings, &mut reporter)
        .unwrap_or_else(|e| panic!("{e:?}"));
    summary
        .outcomes
        .iter()
        .filter_map(|(n, o)| match o {
            Outcome::Failed(e) => Some((loaded.graph.node(*n).label.to_string(), e.to_string())),
            _ => None,
        })
        .collect()
}

/// Edits the `config.json` of the runtime bundle `bundle` (as `umoci unpack`
/// makes it) so that runc can run it here: this environment cannot apply
/// rlimits or cgroup resources, and has no terminal.
pub fn runnable_here(bundle: &Path) {
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    if let Some(p) = cfg["process"].as_object_mut() {
        p.remove("rlimits");
        p.insert("terminal".into(), serde_json::Value::Bool(false));
    }
    if let Some(l) = cfg["linux"].as_object_mut() {
        l.remove("resources");
    }
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

/// Flips one byte in the middle of a file (read-only ones too: remote blobs).
pub fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    rewrite_read_only(path, &bytes);
}

/// Replaces the content of a (possibly read-only) file, keeping it read-only.
pub fn rewrite_read_only(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).unwrap();
}

/// A numeric field of the build's summary event.
pub fn summary_count(e: &Events, field: &str) -> u64 {
    e.summary()[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{field}` in {}", e.summary()))
}

/// The largest layer a layer action produced: its label and where `blob_path`
/// says the blob (by its hex digest) is stored.
pub fn largest_layer(e: &Events, blob_path: impl Fn(&str) -> PathBuf) -> (String, PathBuf) {
    e.outputs_with_kind()
        .into_iter()
        .filter(|(_, (kind, _))| kind == "layer")
        .map(|(label, (_, d))| (label, blob_path(d.trim_start_matches("sha256:"))))
        .max_by_key(|(_, p)| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// Asserts that the file `path` hashes (sha256) to its own name.
pub fn assert_hashes_to_its_name(path: &Path) {
    let digest = imgc::hash::Digest::of_bytes(&std::fs::read(path).unwrap());
    assert_eq!(
        digest.hex(),
        path.file_name().unwrap().to_string_lossy(),
        "blob {} does not hash to its name",
        path.display()
    );
}

/// Asserts that every file below `dir` (a blob store: the local one with its
/// fan-out directories, or a remote's flat one) hashes to its name, and that
/// there is at least one.
pub fn assert_blobs_hash_to_their_names(dir: &Path) {
    let mut n = 0;
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            assert_hashes_to_its_name(e.path());
            n += 1;
        }
    }
    assert!(n > 0, "no blobs in {}", dir.display());
}

/// Deterministic bytes that compress like real binaries do (runs of words and
/// of noise), `len` long.
pub fn semi_random(len: usize, mut x: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 3 == 0 {
            v.extend_from_slice(&x.to_le_bytes());
        } else {
            v.extend_from_slice(b"imgc layer bytes ");
            v.extend_from_slice((x % 1000).to_string().as_bytes());
        }
    }
    v.truncate(len);
    v
}

/// Whether the workspace's local store holds a blob with this sha256 (hex).
pub fn cas_holds(ws: &Ws, hex: &str) -> bool {
    ws.cache
        .path()
        .join("v1/cas/sha256")
        .join(&hex[..2])
        .join(hex)
        .exists()
}
