//! The differential test of the cache: after every edit, a warm build is a cold one.
//!
//! imgc promises that a cache hit is exactly what a fresh build would make. The
//! targeted tests elsewhere each guard one way that promise could break; this one
//! guards it as a whole, the way a user meets it: one workspace and one cache
//! living through many edits of every kind a monorepo sees. It applies a seeded,
//! deterministic pseudo-random sequence of edits to a small fixture workspace
//! (every action kind: layers with every entry kind, copies of directories, globs
//! and another layer, images chained three deep, an import of an OCI layout) and
//! after each edit builds the workspace twice:
//!
//! * **warm**: in place, with the cache and the output directory of every earlier
//!   step;
//! * **cold**: a copy of the workspace (so also another checkout path), with a fresh
//!   cache and a fresh output directory.
//!
//! Both must exit alike (a spec error is an error both ways, with the same error
//! codes and the same failed targets), and their output trees must be
//! byte-identical (when a target fails: the layouts both builds wrote). Edits that
//! change nothing a build reads (reformatting a `BUILD.kdl`, touching files) must
//! also run no action at all. Damage to the cache's blob store is one of the edits:
//! the warm build must repair it and still equal the cold one.
//!
//! Edits are drawn from a deck holding every edit kind (a few twice), shuffled and
//! dealt again when empty, so even the short default run applies each kind at
//! least once. `IMGC_DIFF_SEED` (decimal or `0x` hex) and `IMGC_DIFF_STEPS` choose
//! another or a longer run; `IMGC_DIFF_KEEP=1` keeps the directories of a failing
//! run. A failure prints the seed, every step so far, both builds' outcomes and
//! the first differing file.
//!
//! # Time
//!
//! The cache trusts stat data (the file-hash memo, a layout remembered as
//! current) only for what is older than its racy window, and a step takes a
//! fraction of a second. So that those paths are exercised as a user's edits
//! and builds exercise them, every file the test writes gets an mtime from a
//! clock in the past (one hour a step), and before damaging a blob in place the
//! test waits the racy window out once and builds, so the damage meets layouts
//! remembered as current. Nothing it asserts depends on time: a correct cache
//! gives the same answers at any pace.
//!
//! What it deliberately does not do: check expected bytes (the golden tests do),
//! generate arbitrary specs (the parser tests cover the language; here every
//! edit is one a user makes), or race edits against a running build (the
//! `before_run` hook tests do that deterministically). Builds use
//! `--keep-going`, so which targets a failing build still finishes does not depend
//! on scheduling order.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_SEED: u64 = 0x696d_6763_0006_0001;
const DEFAULT_STEPS: usize = 40;

/// More than the cache's racy window (`RACY_WINDOW`, 2 s): how long to wait
/// until everything written so far is old enough to be trusted by its stat data.
const RACY_WAIT: std::time::Duration = std::time::Duration::from_millis(2200);

/// The fixed time every fixture file starts with (2021-01-01), old enough for the
/// file-hash memo to remember it.
const OLD_MTIME: i64 = 1_609_459_200;

#[test]
fn warm_builds_equal_cold_builds_through_random_edits() {
    let seed = env_number("IMGC_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    let steps = env_number("IMGC_DIFF_STEPS").map_or(DEFAULT_STEPS, |n| n as usize);
    let mut t = Differential::new(seed, steps);
    t.check("initial build", false);
    let mut deck: Vec<Edit> = Vec::new();
    for _ in 0..steps {
        if deck.is_empty() {
            deck = EDITS.to_vec();
            t.rng.shuffle(&mut deck);
        }
        let edit = deck.pop().expect("a dealt deck");
        let healed = t.heal();
        let mut what = t.apply(edit);
        if let Some(h) = &healed {
            what = format!("{what} (and healed: {h})");
        }
        let quiet = edit.changes_nothing() && healed.is_none();
        t.check(&what, quiet);
    }
    assert!(
        t.ok_steps > 0,
        "seed {seed:#x}: no step built successfully, so nothing was compared"
    );
    assert!(
        t.cached_actions > 0,
        "seed {seed:#x}: no warm build used the cache, so nothing was compared"
    );
}

/// Found by the differential test (seeds 61 and 68 of a long run): an imported
/// layer's blob damaged in the store was never written again, because the import
/// skipped copying any blob the store had under that name. Every warm build then
/// failed on the damaged copy (`corrupt deflate stream`, or a diff_id mismatch)
/// while a cold build succeeded.
#[test]
fn a_damaged_store_blob_of_an_import_is_replaced_when_the_import_runs_again() {
    let ws = Ws::new(&[
        ("imgc.kdl", "workspace {\n}\n"),
        (
            "third_party/BUILD.kdl",
            "import \"vendor-base\" {\n    oci-layout \"vendor-base\"\n}\n\
             image \"on-vendor\" {\n    from \":vendor-base\"\n}\n",
        ),
    ]);
    let vendor = spec_examples().join("third_party/vendor-base");
    copy_tree(&vendor, &ws.path("third_party/vendor-base"));
    ws.build(&[]);
    let layout = ws.layout("third_party", "on-vendor");
    let layers = layer_field(&layout, "digest");
    let hex = layers[0].trim_start_matches("sha256:");
    let stored = ws
        .cache
        .path()
        .join("v1/cas/sha256")
        .join(&hex[..2])
        .join(hex);
    let what = damage_in_place(&mut Rng::new(1), &stored);
    assert!(what.starts_with("damaged"), "{what}");

    let ev = ws.build(&[]);
    assert_eq!(ev.ran(), ["//third_party:vendor-base"]);
    let digest = |p: &Path| imgc::hash::Digest::of_bytes(&std::fs::read(p).unwrap());
    assert_eq!(digest(&stored).to_string(), layers[0], "the store's copy");
    let cold = Ws::copy_of(ws.root());
    cold.build(&[]);
    assert_same_tree(&cold.path("imgc-out"), &ws.path("imgc-out"));
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => v.replace('_', "").parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}=`{v}` is not a number: {e}")))
}

// -- the pseudo-random source -----------------------------------------------------

/// xorshift64*: small, fixed, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let s = seed ^ 0x9e37_79b9_7f4a_7c15;
        Rng(if s == 0 { 0x9e37_79b9_7f4a_7c15 } else { s })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() >> 63 == 1
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// One of `items` other than `current`.
    fn pick_other<T: Clone + PartialEq>(&mut self, items: &[T], current: &T) -> T {
        let others: Vec<&T> = items.iter().filter(|i| *i != current).collect();
        others[self.below(others.len())].clone()
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    fn text(&mut self, len: usize) -> Vec<u8> {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 =#\n";
        (0..len).map(|_| CHARS[self.below(CHARS.len())]).collect()
    }
}

// -- the edits ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    /// New content for a source file (another size, usually).
    Rewrite,
    /// New content of the same size, the old mtime set back.
    RewriteSameSize,
    AddFile,
    DeleteFile,
    RenameFile,
    Chmod,
    /// Re-point a symlink inside a copied directory.
    RepointLink,
    /// `mode=`/`owner=` of a `copy` or `dir` entry, a layer's `owner`.
    EntryModeOwner,
    /// The contents of a `text` entry.
    Text,
    /// A `dir` entry in or out.
    ToggleDir,
    /// The target of a `symlink` entry.
    SymlinkTarget,
    /// `owner=` of a copy of another layer.
    LabelCopyOwner,
    Env,
    Label,
    Annotation,
    Entrypoint,
    Cmd,
    Expose,
    Volume,
    User,
    Workdir,
    StopSignal,
    Tag,
    ReorderLayers,
    SwitchFrom,
    Epoch,
    Compression,
    /// The workspace's platform, for one step: an import of another platform is
    /// an error.
    Platform,
    /// An image renamed: its old layout is stale.
    RenameImage,
    /// Whitespace, comments, node order of properties: nothing may run.
    Reformat,
    /// A spec error for one step (a parse error, an unknown label, a source that
    /// matches nothing, a layer that would destroy a lower path).
    Break,
    DeleteBlob,
    DamageBlob,
    /// New mtimes, same contents: nothing may run.
    Touch,
    /// The import's `index.json` replaced by another layout's.
    ImportSwapIndex,
    /// The import's `index.json` a symlink inside the workspace, re-pointed.
    ImportRelinkIndex,
}

const EDITS: &[Edit] = &[
    Edit::Rewrite,
    Edit::RewriteSameSize,
    Edit::AddFile,
    Edit::DeleteFile,
    Edit::RenameFile,
    Edit::Chmod,
    Edit::RepointLink,
    Edit::EntryModeOwner,
    Edit::Text,
    Edit::ToggleDir,
    Edit::SymlinkTarget,
    Edit::LabelCopyOwner,
    Edit::Env,
    Edit::Label,
    Edit::Annotation,
    Edit::Entrypoint,
    Edit::Cmd,
    Edit::Expose,
    Edit::Volume,
    Edit::User,
    Edit::Workdir,
    Edit::StopSignal,
    Edit::Tag,
    Edit::ReorderLayers,
    Edit::SwitchFrom,
    Edit::Epoch,
    Edit::Compression,
    Edit::Platform,
    Edit::RenameImage,
    Edit::Reformat,
    Edit::Break,
    Edit::DeleteBlob,
    Edit::DamageBlob,
    Edit::Touch,
    Edit::ImportSwapIndex,
    // Twice, so a symlinked index.json is re-pointed in every deck.
    Edit::ImportRelinkIndex,
    Edit::ImportRelinkIndex,
];

impl Edit {
    /// Edits after which a build must run no action (if the previous one succeeded).
    fn changes_nothing(self) -> bool {
        matches!(self, Edit::Reformat | Edit::Touch)
    }
}

/// Directories whose files are copied (a directory copy, a glob), where files
/// come and go.
const TREES: &[&str] = &["app/src", "app/static", "app/conf"];
/// Where new files may appear (some of them new directories).
const ADD_DIRS: &[&str] = &[
    "app/src",
    "app/src/lib",
    "app/src/new",
    "app/static",
    "app/static/css",
    "app/conf",
];
const ADD_NAMES: &[&str] = &[
    "alpha.txt",
    "beta.toml",
    "gamma.css",
    "dev-extra.toml",
    "notes",
    "z.toml",
];
/// Files that stay: see [`movable_files`].
const ANCHORS: &[&str] = &["app/conf/a.toml", "app/conf/dev-local.toml"];
/// Files copied by name.
const DIRECT: &[&str] = &["app/run.sh", "app/config.toml"];
/// Symlink targets for the import's `index.json` (inside and outside the layout)
/// with the vendor layout's content, and with the other layout's.
const INDEX_A_LINKS: &[&str] = &["index-a.json", "../indexes/a.json"];
const INDEX_B_LINKS: &[&str] = &["index-b.json", "../indexes/b.json"];
/// Targets of `symlink "/app/current"`.
const SYMLINK_TARGETS: &[&str] = &[
    "/app/src/main.txt",
    "src/lib/util.txt",
    "/nowhere",
    "../etc/app/a.toml",
];
/// `app/src/link`'s possible targets (some dangling, one a directory).
const LINK_TARGETS: &[&str] = &[
    "main.txt",
    "lib/util.txt",
    "lib",
    "nowhere.txt",
    "../run.sh",
];

// -- the spec, as data -----------------------------------------------------------

type Pairs = Vec<(String, String)>;

#[derive(Clone, Debug)]
struct Image {
    name: &'static str,
    from: String,
    layers: Vec<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Pairs,
    labels: Pairs,
    annotations: Pairs,
    expose: Vec<String>,
    volume: Vec<String>,
    user: Option<String>,
    workdir: Option<String>,
    stop_signal: Option<String>,
    tags: Vec<String>,
}

impl Image {
    fn new(name: &'static str, from: &str, layers: &[&str]) -> Image {
        Image {
            name,
            from: from.into(),
            layers: layers.iter().map(|l| l.to_string()).collect(),
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            labels: Vec::new(),
            annotations: Vec::new(),
            expose: Vec::new(),
            volume: Vec::new(),
            user: None,
            workdir: None,
            stop_signal: None,
            tags: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Break {
    /// `mode="0x9"`: a parse error (E006), nothing builds.
    BadMode,
    /// `from ":nope"`: an unknown label (E010), nothing builds.
    UnknownFrom,
    /// A glob that matches nothing: the layer action fails (E019).
    MissingGlob,
    /// An `exclude` that leaves nothing out: the layer action fails (E019).
    ExcludeNothing,
    /// A file over a lower layer's directory: the image action fails (E030)
    /// when `app-debug` is built on `app`.
    StackConflict,
}

const BREAKS: &[Break] = &[
    Break::BadMode,
    Break::UnknownFrom,
    Break::MissingGlob,
    Break::ExcludeNothing,
    Break::StackConflict,
];

/// Everything the specs say; the `BUILD.kdl` files are rendered from it.
#[derive(Clone, Debug)]
struct Spec {
    epoch: u64,
    zstd: bool,
    arm64: bool,
    /// Formatting only: 0 plain, 1 comments and tabs, 2 compact and split nodes.
    style: usize,
    os_release: String,
    sticky_tmp: bool,
    version: String,
    run_mode: Option<&'static str>,
    run_owner: Option<&'static str>,
    /// `dir "/var/lib/app"` with its mode and owner, when present.
    data_dir: Option<(&'static str, &'static str)>,
    current: &'static str,
    assets_owner: Option<&'static str>,
    bundle_owner: Option<&'static str>,
    broken: Option<Break>,
    base: Image,
    app: Image,
    debug: Image,
    vendored: Image,
}

const MODES: &[Option<&str>] = &[None, Some("0755"), Some("0700"), Some("4755"), Some("0600")];
const OWNERS: &[Option<&str>] = &[None, Some("0:0"), Some("10001:10001"), Some("65534:100")];

impl Spec {
    fn initial() -> Spec {
        let mut base = Image::new("base", "scratch", &[":files"]);
        base.env = vec![("PATH".into(), "/bin".into())];
        base.labels = vec![("org.opencontainers.image.title".into(), "base".into())];
        base.tags = vec!["example.com/base:1".into()];
        let mut app = Image::new("app", "//base:base", &[":code", ":assets", ":bundle"]);
        app.entrypoint = Some(vec!["/app/run.sh".into()]);
        app.cmd = Some(vec!["--port".into(), "8080".into()]);
        app.env = vec![("RUST_LOG".into(), "info".into())];
        app.expose = vec!["8080/tcp".into()];
        app.volume = vec!["/data".into()];
        app.user = Some("10001:10001".into());
        app.workdir = Some("/app".into());
        app.annotations = vec![("com.example.team".into(), "payments".into())];
        app.tags = vec!["example.com/app:1.0".into()];
        let mut debug = Image::new("app-debug", ":app", &[]);
        debug.cmd = Some(vec!["--debug".into()]);
        let mut vendored = Image::new("on-vendor", ":vendor-base", &["//app:assets"]);
        vendored.cmd = Some(vec!["/etc/vendor-release".into()]);
        vendored.tags = vec!["example.com/on-vendor:0.9".into()];
        Spec {
            epoch: 1_700_000_000,
            zstd: false,
            arm64: false,
            style: 0,
            os_release: "ID=imgc-diff\n".into(),
            sticky_tmp: true,
            version: "1.0.0\n".into(),
            run_mode: Some("0755"),
            run_owner: None,
            data_dir: Some(("0700", "10001:10001")),
            current: "/app/src/main.txt",
            assets_owner: None,
            bundle_owner: None,
            broken: None,
            base,
            app,
            debug,
            vendored,
        }
    }

    fn image_mut(&mut self, i: usize) -> &mut Image {
        match i {
            0 => &mut self.base,
            1 => &mut self.app,
            2 => &mut self.debug,
            _ => &mut self.vendored,
        }
    }

    /// `(workspace-relative path, text)` of every spec file.
    fn render(&self) -> Vec<(&'static str, String)> {
        let s = self.style;
        let mut ws = Doc::new(s);
        ws.comment("the workspace root");
        ws.open("workspace", None);
        ws.node(n("source-date-epoch").raw(self.epoch.to_string()));
        ws.node(n("compression").s(if self.zstd { "zstd" } else { "gzip" }));
        if self.arm64 {
            ws.node(n("platform").s("linux/arm64"));
        }
        ws.close();

        let mut base = Doc::new(s);
        base.comment("the base image");
        base.open("layer", Some("files"));
        base.node(n("text").s("/etc/os-release").s(&self.os_release));
        if self.sticky_tmp {
            base.node(n("dir").s("/tmp").p("mode", "1777"));
        }
        base.close();
        base.image(&self.base, &[]);

        let mut app = Doc::new(s);
        app.comment("the application");
        app.open("layer", Some("code"));
        app.node(n("copy").s("src").p("to", "/app/"));
        let mut run = n("copy").s("run.sh").p("to", "/app/run.sh");
        if let Some(m) = self.run_mode {
            run = run.p("mode", m);
        }
        if let Some(o) = self.run_owner {
            run = run.p("owner", o);
        }
        app.node(run);
        app.node(n("text").s("/app/version").s(&self.version));
        app.node(n("symlink").s("/app/current").p("target", self.current));
        if let Some((mode, owner)) = self.data_dir {
            app.node(n("dir").s("/var/lib/app").p("mode", mode).p("owner", owner));
        }
        if self.broken == Some(Break::BadMode) {
            app.node(n("dir").s("/var/broken").p("mode", "0x9"));
        }
        app.close();
        app.open("layer", Some("assets"));
        if let Some(o) = self.assets_owner {
            app.node(n("owner").s(o));
        }
        app.node(n("copy").s("conf/*.toml").p("to", "/etc/app/").p(
            "exclude",
            if self.broken == Some(Break::ExcludeNothing) {
                "conf/none-*.toml"
            } else {
                "conf/dev-*.toml"
            },
        ));
        app.node(n("copy").s("static").p("to", "/srv/static"));
        if self.broken == Some(Break::MissingGlob) {
            app.node(n("copy").s("missing/*.txt").p("to", "/opt/missing/"));
        }
        app.close();
        app.open("layer", Some("bundle"));
        let mut bundle = n("copy").s(":code").p("to", "/opt/bundle/");
        if let Some(o) = self.bundle_owner {
            bundle = bundle.p("owner", o);
        }
        app.node(bundle);
        app.close();
        app.image(
            &self.app,
            &[n("copy").s("config.toml").p("to", "/etc/app/config.toml")],
        );
        let mut debug = self.debug.clone();
        if self.broken == Some(Break::UnknownFrom) {
            debug.from = ":nope".into();
        }
        let mut debug_layer = vec![n("text").s("/etc/debug").s("on\n")];
        if self.broken == Some(Break::StackConflict) {
            debug_layer.push(n("text").s("/app/src").s("not a directory\n"));
        }
        app.image(&debug, &debug_layer);

        let mut tp = Doc::new(s);
        tp.comment("an image made elsewhere, and one built on it");
        tp.open("import", Some("vendor-base"));
        tp.node(n("oci-layout").s("vendor-base"));
        tp.close();
        tp.image(&self.vendored, &[]);

        vec![
            ("imgc.kdl", ws.out),
            ("base/BUILD.kdl", base.out),
            ("app/BUILD.kdl", app.out),
            ("third_party/BUILD.kdl", tp.out),
        ]
    }
}

/// One KDL node: name, argument tokens, property tokens.
#[derive(Clone)]
struct Node {
    name: &'static str,
    args: Vec<String>,
    props: Vec<(&'static str, String)>,
    /// Several values mean several nodes' worth (`layers`, `env`, `expose`...):
    /// the compact style writes one node per value.
    split: bool,
    /// Properties are named options in any order (not `env`, whose order is kept).
    free_props: bool,
}

fn n(name: &'static str) -> Node {
    Node {
        name,
        args: Vec::new(),
        props: Vec::new(),
        split: false,
        free_props: true,
    }
}

impl Node {
    fn raw(mut self, token: String) -> Node {
        self.args.push(token);
        self
    }

    fn s(self, v: &str) -> Node {
        self.raw(q(v))
    }

    fn p(mut self, key: &'static str, v: &str) -> Node {
        self.props.push((key, q(v)));
        self
    }

    fn split(mut self) -> Node {
        self.split = true;
        self
    }
}

/// A KDL string literal.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders nodes in one of three styles that all mean the same.
struct Doc {
    style: usize,
    depth: usize,
    out: String,
}

impl Doc {
    fn new(style: usize) -> Doc {
        Doc {
            style,
            depth: 0,
            out: String::new(),
        }
    }

    fn indent(&mut self) {
        let unit = match self.style {
            1 => "\t",
            2 => "  ",
            _ => "    ",
        };
        for _ in 0..self.depth {
            self.out.push_str(unit);
        }
    }

    fn comment(&mut self, text: &str) {
        if self.style == 1 {
            self.indent();
            let _ = writeln!(self.out, "// {text}\n");
        }
    }

    fn open(&mut self, name: &str, arg: Option<&str>) {
        if self.style != 2 && self.depth == 0 && !self.out.is_empty() {
            self.out.push('\n');
        }
        self.indent();
        self.out.push_str(name);
        if let Some(a) = arg {
            self.out.push(' ');
            if self.style == 1 {
                self.out.push_str("/* named */ ");
            }
            self.out.push_str(&q(a));
        }
        self.out
            .push_str(if self.style == 2 { "  {\n" } else { " {\n" });
        self.depth += 1;
        if self.style == 1 {
            // A node commented out with a slashdash, and a blank line.
            self.indent();
            self.out.push_str("/-annotation \"dead\" \"code\"\n\n");
        }
    }

    fn close(&mut self) {
        self.depth -= 1;
        self.indent();
        self.out.push_str("}\n");
    }

    fn node(&mut self, node: Node) {
        if self.style == 2 && node.split && node.args.len() + node.props.len() > 1 {
            for a in &node.args {
                self.node(Node {
                    args: vec![a.clone()],
                    props: Vec::new(),
                    split: false,
                    ..node.clone()
                });
            }
            for p in &node.props {
                self.node(Node {
                    args: Vec::new(),
                    props: vec![p.clone()],
                    split: false,
                    ..node.clone()
                });
            }
            return;
        }
        self.indent();
        let args = node.args.iter().cloned();
        let props: Vec<String> = node.props.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let tokens: Vec<String> = match self.style {
            // Properties first and in reverse (they are named), a comment inside.
            1 if node.free_props => props
                .into_iter()
                .rev()
                .chain(std::iter::once("/* - */".to_string()))
                .chain(args)
                .collect(),
            _ => args.chain(props).collect(),
        };
        self.out.push_str(node.name);
        let sep = if self.style == 2 { "   " } else { " " };
        for t in tokens {
            self.out.push_str(sep);
            self.out.push_str(&t);
        }
        if self.style == 1 {
            self.out.push_str(" // said twice\n");
        } else if self.style == 2 {
            self.out.push_str("  \n");
        } else {
            self.out.push('\n');
        }
    }

    fn image(&mut self, img: &Image, inline: &[Node]) {
        self.open("image", Some(img.name));
        self.node(n("from").s(&img.from));
        if !img.layers.is_empty() {
            let mut l = n("layers").split();
            for x in &img.layers {
                l = l.s(x);
            }
            self.node(l);
        }
        if !inline.is_empty() {
            self.open("layer", None);
            for e in inline {
                self.node(e.clone());
            }
            self.close();
        }
        let list = |name: &'static str, v: &[String]| {
            let mut node = n(name);
            for x in v {
                node = node.s(x);
            }
            node
        };
        if let Some(e) = &img.entrypoint {
            self.node(list("entrypoint", e));
        }
        if let Some(c) = &img.cmd {
            self.node(list("cmd", c));
        }
        if !img.env.is_empty() {
            let mut e = n("env").split();
            e.free_props = false;
            for (k, v) in &img.env {
                e.props.push((env_key(k), q(v)));
            }
            self.node(e);
        }
        for (k, v) in &img.labels {
            self.node(n("label").s(k).s(v));
        }
        for (k, v) in &img.annotations {
            self.node(n("annotation").s(k).s(v));
        }
        if !img.expose.is_empty() {
            self.node(list("expose", &img.expose).split());
        }
        if !img.volume.is_empty() {
            self.node(list("volume", &img.volume).split());
        }
        if let Some(u) = &img.user {
            self.node(n("user").s(u));
        }
        if let Some(w) = &img.workdir {
            self.node(n("workdir").s(w));
        }
        if let Some(s) = &img.stop_signal {
            self.node(n("stop-signal").s(s));
        }
        if !img.tags.is_empty() {
            self.node(list("tag", &img.tags).split());
        }
        self.close();
    }
}

/// The `'static` name of an env key (they come from [`ENV_KEYS`]).
fn env_key(s: &str) -> &'static str {
    match ENV_KEYS.iter().find(|k| **k == s) {
        Some(k) => k,
        None => panic!("env key `{s}` is not in ENV_KEYS"),
    }
}

const ENV_KEYS: &[&str] = &["PATH", "RUST_LOG", "TZ", "APP_MODE"];
const ENV_VALUES: &[&str] = &["/bin", "/usr/bin:/bin", "info", "debug", "UTC", "prod"];
const LABEL_KEYS: &[&str] = &[
    "org.opencontainers.image.title",
    "org.opencontainers.image.version",
    "com.example.tier",
];
const ANNOTATION_KEYS: &[&str] = &[
    "com.example.team",
    "com.example.owner",
    "org.opencontainers.image.base.name",
];
const VALUES: &[&str] = &[
    "api",
    "gold",
    "1.2.3",
    "payments",
    "registry.example/base:1",
];

// -- the run -------------------------------------------------------------------------

/// One build's outcome, as the comparison needs it.
struct Run {
    status: Option<i32>,
    events: Vec<serde_json::Value>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(mut cmd: Command) -> Run {
        let out = cmd
            .args([
                "build",
                "--message-format",
                "json",
                "-j",
                "2",
                "--keep-going",
            ])
            .output()
            .expect("cannot run imgc");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Run {
            status: out.status.code(),
            events,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self) -> bool {
        self.status == Some(0)
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &serde_json::Value> {
        let kind = kind.to_string();
        self.events
            .iter()
            .filter(move |e| e["event"].as_str() == Some(kind.as_str()))
    }

    fn label(e: &serde_json::Value) -> String {
        e["label"].as_str().unwrap_or("?").to_string()
    }

    /// Labels of the actions that ran (`true`) or came from the cache (`false`).
    fn finished(&self, ran: bool) -> Vec<String> {
        self.of_kind("finished")
            .filter(|e| e["cached"] == !ran)
            .map(Run::label)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Each failed target and the code of its error (`-` for none).
    fn failed(&self) -> BTreeMap<String, String> {
        self.of_kind("failed")
            .map(|e| {
                let codes = error_codes(e["error"].as_str().unwrap_or(""));
                (Run::label(e), codes.first().cloned().unwrap_or("-".into()))
            })
            .collect()
    }

    fn skipped(&self) -> BTreeSet<String> {
        self.of_kind("skipped").map(Run::label).collect()
    }

    /// Materialized images: label → (layout path relative to the workspace, digest).
    fn materialized(&self) -> BTreeMap<String, (String, String)> {
        self.of_kind("materialized")
            .map(|e| {
                (
                    Run::label(e),
                    (
                        e["path"].as_str().unwrap_or("?").to_string(),
                        e["digest"].as_str().unwrap_or("?").to_string(),
                    ),
                )
            })
            .collect()
    }

    /// The error of each failed target, as reported.
    fn errors(&self) -> String {
        self.of_kind("failed")
            .map(|e| {
                format!(
                    "    {}: {}\n",
                    Run::label(e),
                    e["error"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    fn describe(&self, name: &str) -> String {
        let lines_not_json = self
            .stdout
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .count();
        format!(
            "{name} build: exit {:?}, ran {:?}, cached {:?}, failed {:?}, skipped {:?}{}\n{}  stderr:\n{}",
            self.status,
            self.finished(true),
            self.finished(false),
            self.failed(),
            self.skipped(),
            if lines_not_json > 0 {
                format!(", {lines_not_json} stdout lines that are not JSON")
            } else {
                String::new()
            },
            self.errors(),
            indent(&self.stderr, "    ")
        )
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// Every diagnostic code (`E` and three digits, standing alone) in `text`, sorted.
fn error_codes(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    for i in 0..b.len() {
        let alone_before = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let alone_after = i + 4 >= b.len() || !b[i + 4].is_ascii_alphanumeric();
        if b[i] == b'E'
            && alone_before
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && alone_after
        {
            out.push(text[i..i + 4].to_string());
        }
    }
    out.sort();
    out
}

/// The first difference between two directory trees (files and their bytes).
fn tree_difference(a: &Path, b: &Path) -> Option<String> {
    let read = |d: &Path| {
        if d.exists() {
            tree_bytes(d)
        } else {
            BTreeMap::new()
        }
    };
    let (ta, tb) = (read(a), read(b));
    let keys: BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    for k in keys {
        match (ta.get(k), tb.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let at = x.iter().zip(y).position(|(p, q)| p != q);
                let mut s = format!(
                    "`{k}` differs: warm {} bytes, cold {} bytes, first difference at byte {}",
                    x.len(),
                    y.len(),
                    at.unwrap_or(x.len().min(y.len()))
                );
                if let (Ok(tx), Ok(ty)) = (std::str::from_utf8(x), std::str::from_utf8(y))
                    && x.len() + y.len() < 8000
                {
                    let _ = write!(s, "\n  warm: {tx}\n  cold: {ty}");
                }
                return Some(s);
            }
            (Some(_), None) => return Some(format!("`{k}` only in the warm output")),
            (None, _) => return Some(format!("`{k}` only in the cold output")),
        }
    }
    None
}

/// The differential test's state: the warm workspace and cache, the spec, the log.
struct Differential {
    seed: u64,
    steps: usize,
    rng: Rng,
    ws: Ws,
    spec: Spec,
    /// Index file contents: the vendor layout's and another layout's.
    index_a: Vec<u8>,
    index_b: Vec<u8>,
    log: Vec<String>,
    /// Whether the last warm build succeeded.
    last_ok: bool,
    ok_steps: usize,
    cached_actions: usize,
}

impl Differential {
    fn new(seed: u64, steps: usize) -> Differential {
        let ws = Ws::new(&[
            ("app/src/main.txt", "hello\n"),
            ("app/src/lib/util.txt", "util\n"),
            ("app/run.sh", "#!/bin/sh\necho hi\n"),
            ("app/config.toml", "port = 8080\n"),
            ("app/conf/a.toml", "a = 1\n"),
            ("app/conf/b.toml", "b = 2\n"),
            ("app/conf/dev-local.toml", "debug = true\n"),
            ("app/static/index.html", "<h1>hi</h1>\n"),
            ("app/static/css/site.css", "h1 { color: red }\n"),
        ]);
        std::fs::set_permissions(
            ws.path("app/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("main.txt", ws.path("app/src/link")).unwrap();
        // The import: the vendor layout, plus every blob of another layout whose
        // index.json can take the place of the vendor's.
        let layout = ws.path("third_party/vendor-base");
        std::fs::create_dir_all(&layout).unwrap();
        copy_tree(&spec_examples().join("third_party/vendor-base"), &layout);
        let index_a = std::fs::read(layout.join("index.json")).unwrap();
        let (blobs, index_b) = another_layout();
        for (hex, bytes) in blobs {
            std::fs::write(layout.join("blobs/sha256").join(hex), bytes).unwrap();
        }
        for (rel, bytes) in [
            ("third_party/vendor-base/index-a.json", &index_a),
            ("third_party/vendor-base/index-b.json", &index_b),
            ("third_party/indexes/a.json", &index_a),
            ("third_party/indexes/b.json", &index_b),
        ] {
            ws.write_bytes(rel, bytes);
        }
        // `index.json` starts as a symlink, so the first deck re-points it.
        std::fs::remove_file(layout.join("index.json")).unwrap();
        std::os::unix::fs::symlink("index-a.json", layout.join("index.json")).unwrap();
        let spec = Spec::initial();
        for (rel, text) in spec.render() {
            ws.write(rel, &text);
        }
        for e in walkdir::WalkDir::new(ws.root()) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                filetime::set_file_mtime(
                    e.path(),
                    filetime::FileTime::from_unix_time(OLD_MTIME, 0),
                )
                .unwrap();
            }
        }
        Differential {
            seed,
            steps,
            rng: Rng::new(seed),
            ws,
            spec,
            index_a,
            index_b,
            log: Vec::new(),
            last_ok: true,
            ok_steps: 0,
            cached_actions: 0,
        }
    }

    // -- building and comparing ----------------------------------------------------

    /// Writes the spec files that changed, builds warm and cold, compares.
    fn check(&mut self, what: &str, quiet: bool) {
        self.log.push(what.to_string());
        let now = self.now();
        for (rel, text) in self.spec.render() {
            let p = self.ws.path(rel);
            if std::fs::read_to_string(&p).ok().as_deref() != Some(&text) {
                write_at(&p, text.as_bytes(), now);
            }
        }
        let warm = Run::of(self.ws.cmd(&[]));
        let cold_ws = tempfile::tempdir().unwrap();
        let cold_cache = tempfile::tempdir().unwrap();
        copy_tree(self.ws.root(), cold_ws.path());
        let cold = {
            let mut c = Command::new(imgc_bin());
            c.current_dir(cold_ws.path())
                .arg("--cache-dir")
                .arg(cold_cache.path())
                .env("NO_COLOR", "1")
                .env_remove("SOURCE_DATE_EPOCH")
                .env_remove("IMGC_CACHE_DIR");
            Run::of(c)
        };
        let mut problem = compare(&warm, &cold, self.ws.root(), cold_ws.path()).err();
        if problem.is_none() && quiet && self.last_ok && !warm.finished(true).is_empty() {
            problem = Some(format!(
                "nothing a build reads changed, yet actions ran: {:?}",
                warm.finished(true)
            ));
        }
        if let Some(p) = problem {
            let runs = [("warm", &warm), ("cold", &cold)];
            let dirs = vec![("cold workspace", cold_ws), ("cold cache", cold_cache)];
            self.fail(&p, &runs, dirs);
        }
        let errors = if warm.ok() {
            String::new()
        } else {
            format!(
                ", errors {:?}, failed {:?}",
                error_codes(&warm.stderr),
                warm.failed()
            )
        };
        eprintln!(
            "step {:3}: {what}\n           warm: exit {:?}, {} ran, {} cached{errors}",
            self.log.len() - 1,
            warm.status,
            warm.finished(true).len(),
            warm.finished(false).len()
        );
        self.last_ok = warm.ok();
        self.ok_steps += usize::from(warm.ok());
        self.cached_actions += warm.finished(false).len();
    }

    /// Panics with the seed, the steps so far, the problem, the builds'
    /// outcomes and where their directories are (kept with `IMGC_DIFF_KEEP=1`).
    fn fail(
        &mut self,
        problem: &str,
        runs: &[(&str, &Run)],
        mut dirs: Vec<(&str, tempfile::TempDir)>,
    ) -> ! {
        let keep = std::env::var_os("IMGC_DIFF_KEEP").is_some_and(|v| v == "1");
        if keep {
            self.ws.dir.disable_cleanup(true);
            self.ws.cache.disable_cleanup(true);
            for (_, d) in &mut dirs {
                d.disable_cleanup(true);
            }
        }
        let step = self.log.len() - 1;
        let mut msg = format!(
            "the warm build differs from a cold one at step {step} of {} \
             (seed {:#x}; replay with IMGC_DIFF_SEED={:#x} IMGC_DIFF_STEPS={step})\n\nsteps:\n",
            self.steps, self.seed, self.seed
        );
        for (i, s) in self.log.iter().enumerate() {
            let _ = writeln!(msg, "  {i:3}. {s}");
        }
        let _ = writeln!(msg, "\nproblem: {problem}\n");
        for (name, run) in runs {
            let _ = writeln!(msg, "{}", run.describe(name));
        }
        let _ = write!(
            msg,
            "directories{}: warm workspace {}, warm cache {}",
            if keep {
                " (kept)"
            } else {
                " (removed; IMGC_DIFF_KEEP=1 keeps them)"
            },
            self.ws.root().display(),
            self.ws.cache.path().display(),
        );
        for (name, d) in &dirs {
            let _ = write!(msg, ", {name} {}", d.path().display());
        }
        panic!("{msg}");
    }

    // -- applying edits ----------------------------------------------------------------

    /// Undoes a [`Break`] or [`Edit::Platform`] of the previous step.
    fn heal(&mut self) -> Option<String> {
        if std::mem::take(&mut self.spec.arm64) {
            return Some("platform linux/amd64 again".into());
        }
        self.spec.broken.take().map(|b| format!("{b:?} removed"))
    }

    /// The mtime of what this step writes: a clock one hour a step, in the past,
    /// so the file-hash memo may remember the files (as it does between a user's
    /// edits and builds) instead of re-hashing everything as too new.
    fn now(&self) -> filetime::FileTime {
        filetime::FileTime::from_unix_time(OLD_MTIME + 3600 * self.log.len() as i64, 0)
    }

    fn apply(&mut self, edit: Edit) -> String {
        let what = match edit {
            Edit::Rewrite
            | Edit::RewriteSameSize
            | Edit::AddFile
            | Edit::DeleteFile
            | Edit::RenameFile
            | Edit::Chmod
            | Edit::RepointLink
            | Edit::Touch => self.edit_files(edit),
            Edit::DeleteBlob | Edit::DamageBlob => self.edit_store(edit),
            Edit::ImportSwapIndex | Edit::ImportRelinkIndex => self.edit_import(edit),
            _ => edit_spec(&mut self.rng, &mut self.spec, edit),
        };
        format!("{edit:?}: {what}")
    }

    /// Edits of source files: contents, names, modes, links, mtimes.
    fn edit_files(&mut self, edit: Edit) -> String {
        let now = self.now();
        let root = self.ws.root().to_path_buf();
        let rng = &mut self.rng;
        match edit {
            Edit::Rewrite => {
                let f = pick_file(rng, &root);
                let len = rng.below(160);
                write_at(&root.join(&f), &rng.text(len), now);
                format!("`{f}` rewritten, {len} bytes")
            }
            Edit::RewriteSameSize => {
                let f = pick_file(rng, &root);
                let p = root.join(&f);
                let meta = std::fs::metadata(&p).unwrap();
                let mut bytes = std::fs::read(&p).unwrap();
                if bytes.is_empty() {
                    write_at(&p, b"seven!\n", now);
                    return format!("`{f}` was empty: now 7 bytes");
                }
                let at = rng.below(bytes.len());
                bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
                // In place (same inode, same size), the old mtime set back.
                write_at(
                    &p,
                    &bytes,
                    filetime::FileTime::from_last_modification_time(&meta),
                );
                format!(
                    "`{f}`: byte {at} changed in place, size {} and mtime kept",
                    bytes.len()
                )
            }
            Edit::AddFile => {
                let rel = format!("{}/{}", rng.pick(ADD_DIRS), rng.pick(ADD_NAMES));
                let p = root.join(&rel);
                if p.symlink_metadata().is_ok_and(|m| !m.is_file()) {
                    return format!("`{rel}` exists and is no file: left alone");
                }
                let existed = p.exists();
                let len = rng.below(80);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                write_at(&p, &rng.text(len), now);
                let how = if existed { "overwritten" } else { "added" };
                format!("`{rel}` {how}, {len} bytes")
            }
            Edit::DeleteFile => {
                let files = movable_files(&root);
                if files.is_empty() {
                    return "no file to delete".into();
                }
                let f = rng.pick(&files);
                std::fs::remove_file(root.join(&f)).unwrap();
                format!("`{f}` deleted")
            }
            Edit::RenameFile => {
                let files = movable_files(&root);
                if files.is_empty() {
                    return "no file to rename".into();
                }
                let f = rng.pick(&files);
                let to = format!("{}/{}", rng.pick(ADD_DIRS), rng.pick(ADD_NAMES));
                let dest = root.join(&to);
                if to == f || dest.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    return format!("`{f}` not renamed to `{to}`");
                }
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::rename(root.join(&f), &dest).unwrap();
                format!("`{f}` renamed to `{to}`")
            }
            Edit::Chmod => {
                let f = pick_file(rng, &root);
                let p = root.join(&f);
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
                let new = if mode & 0o111 == 0 {
                    mode | 0o111
                } else {
                    mode & !0o111
                };
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(new)).unwrap();
                format!("`{f}` chmod {mode:o} -> {new:o}")
            }
            Edit::RepointLink => {
                let p = root.join("app/src/link");
                let current = link_target(&p);
                let targets: Vec<String> = LINK_TARGETS.iter().map(|t| t.to_string()).collect();
                let target = rng.pick_other(&targets, &current);
                link_at(&target, &p, now);
                format!("`app/src/link` -> `{target}` (was `{current}`)")
            }
            Edit::Touch => {
                let mut touched = 0;
                let walk = walkdir::WalkDir::new(&root)
                    .sort_by_file_name()
                    .into_iter()
                    .filter_entry(|e| e.file_name() != "imgc-out");
                for e in walk {
                    let e = e.unwrap();
                    if e.file_type().is_file() && rng.coin() {
                        let t = 1_500_000_000 + rng.below(200_000_000) as i64;
                        let t = filetime::FileTime::from_unix_time(t, 0);
                        filetime::set_file_mtime(e.path(), t).unwrap();
                        touched += 1;
                    }
                }
                format!("{touched} files touched (new mtimes, same contents)")
            }
            _ => unreachable!("{edit:?} is no file edit"),
        }
    }

    /// Damage to the warm cache's blob store.
    ///
    /// Before damage in place, time passes: the cache trusts what it recorded of
    /// files and layouts only once they are older than its racy window, which the
    /// quick steps of this test never are. So the damage meets a layout that a
    /// build checked in full and remembered as current, as it would a user's.
    fn edit_store(&mut self, edit: Edit) -> String {
        if edit == Edit::DamageBlob {
            self.let_time_pass();
        }
        let all = blob_files(self.ws.cache.path());
        let out = self.ws.path("imgc-out");
        let in_layouts = blob_files(&out);
        let among = |names: &[PathBuf]| -> Vec<PathBuf> {
            let names: BTreeSet<_> = names.iter().map(|p| p.file_name()).collect();
            let mut v = all.clone();
            v.retain(|b| names.contains(&b.file_name()));
            v
        };
        let held = among(&in_layouts);
        let imported = among(&imported_blobs(&self.ws.path("third_party/vendor-base")));
        // One that the output's layouts hold too (hard-linked, so damage in place
        // reaches them); for damage, also one of the image the import reads now,
        // and any other: a listing, or an old output that a later build may write
        // again under another key.
        let mut victims: Vec<PathBuf> = Vec::new();
        let damage = edit == Edit::DamageBlob;
        for (set, wanted) in [
            (&held, damage || self.rng.coin()),
            (&imported, damage),
            (&all, damage),
        ] {
            if wanted && !set.is_empty() {
                let b = self.rng.pick(set);
                if !victims.contains(&b) {
                    victims.push(b);
                }
            }
        }
        if victims.is_empty() && !all.is_empty() {
            victims.push(self.rng.pick(&all));
        }
        let mut done = Vec::new();
        for b in victims {
            let holders: Vec<String> = in_layouts
                .iter()
                .filter(|p| p.file_name() == b.file_name())
                .map(|p| {
                    let layout = p.parent().and_then(Path::parent).and_then(Path::parent);
                    let rel = layout.and_then(|l| l.strip_prefix(&out).ok());
                    rel.map_or("?".into(), |r| r.display().to_string())
                })
                .collect();
            let what = if edit == Edit::DeleteBlob {
                std::fs::remove_file(&b).unwrap();
                "deleted".to_string()
            } else {
                damage_in_place(&mut self.rng, &b)
            };
            done.push(format!(
                "store blob {} (in layouts {holders:?}) {what}",
                name_of(&b)
            ));
        }
        if done.is_empty() {
            return "no blob in the store".into();
        }
        done.join("; ")
    }

    /// Waits out the cache's racy window, then builds warm once with no edit: it
    /// must run nothing, and it records the layouts it checks as current.
    fn let_time_pass(&mut self) {
        std::thread::sleep(RACY_WAIT);
        let settle = Run::of(self.ws.cmd(&[]));
        let problem = if settle.status != Some(0) && self.last_ok {
            Some("it failed".to_string())
        } else if self.last_ok && !settle.finished(true).is_empty() {
            Some(format!("actions ran: {:?}", settle.finished(true)))
        } else {
            None
        };
        if let Some(p) = problem {
            self.log
                .push("(time passes, then a warm build with no edit)".into());
            let p = format!("nothing changed, yet in a warm build {p}");
            self.fail(&p, &[("warm", &settle)], Vec::new());
        }
    }

    /// The import's `index.json`: the other layout's content, as a file or a link.
    fn edit_import(&mut self, edit: Edit) -> String {
        let now = self.now();
        let p = self.ws.path("third_party/vendor-base/index.json");
        let now_a = std::fs::read(&p).unwrap() == self.index_a;
        let is_link = p.symlink_metadata().unwrap().file_type().is_symlink();
        let targets = if now_a { INDEX_B_LINKS } else { INDEX_A_LINKS };
        if edit == Edit::ImportSwapIndex && !is_link {
            write_at(&p, if now_a { &self.index_b } else { &self.index_a }, now);
            let which = if now_a { "other" } else { "vendor" };
            return format!("the import's `index.json` rewritten with the {which} layout's");
        }
        // A link re-pointed (to the other content), or a file made a link.
        let was = if is_link {
            format!("a symlink to `{}`", link_target(&p))
        } else {
            "a file".to_string()
        };
        let target = self.rng.pick(targets);
        link_at(target, &p, now);
        format!("the import's `index.json`, {was}, now a symlink to `{target}`")
    }
}

/// Edits of the spec (the `BUILD.kdl` files are rendered from it).
fn edit_spec(rng: &mut Rng, spec: &mut Spec, edit: Edit) -> String {
    match edit {
        Edit::EntryModeOwner => match rng.below(4) {
            0 => {
                spec.run_mode = rng.pick_other(MODES, &spec.run_mode);
                format!("`copy \"run.sh\"` mode={:?}", spec.run_mode)
            }
            1 => {
                spec.run_owner = rng.pick_other(OWNERS, &spec.run_owner);
                format!("`copy \"run.sh\"` owner={:?}", spec.run_owner)
            }
            2 => {
                let (mode, owner) = spec.data_dir.unwrap_or(("0755", "0:0"));
                let mode = if rng.coin() {
                    rng.pick_other(&MODES[1..], &Some(mode)).unwrap()
                } else {
                    mode
                };
                let owner = rng.pick_other(&OWNERS[1..], &Some(owner)).unwrap();
                spec.data_dir = Some((mode, owner));
                format!("`dir \"/var/lib/app\"` mode={mode} owner={owner}")
            }
            _ => {
                spec.assets_owner = rng.pick_other(OWNERS, &spec.assets_owner);
                format!("layer `assets` owner {:?}", spec.assets_owner)
            }
        },
        Edit::Text => {
            let len = 1 + rng.below(20);
            let line = String::from_utf8(rng.text(len)).unwrap();
            if rng.coin() {
                spec.version = format!("{line}\n");
                format!("`/app/version` text {:?}", spec.version)
            } else {
                spec.os_release = format!("ID={line}\n");
                format!("`/etc/os-release` text {:?}", spec.os_release)
            }
        }
        Edit::ToggleDir => {
            if rng.coin() {
                spec.sticky_tmp = !spec.sticky_tmp;
                format!("`dir \"/tmp\"` present: {}", spec.sticky_tmp)
            } else {
                spec.data_dir = match spec.data_dir {
                    Some(_) => None,
                    None => Some(("0700", "10001:10001")),
                };
                format!("`dir \"/var/lib/app\"`: {:?}", spec.data_dir)
            }
        }
        Edit::SymlinkTarget => {
            spec.current = rng.pick_other(SYMLINK_TARGETS, &spec.current);
            format!("`symlink \"/app/current\"` target={}", spec.current)
        }
        Edit::LabelCopyOwner => {
            spec.bundle_owner = rng.pick_other(OWNERS, &spec.bundle_owner);
            format!("`copy \":code\"` owner={:?}", spec.bundle_owner)
        }
        Edit::ReorderLayers => {
            let before = spec.app.layers.clone();
            while spec.app.layers == before {
                rng.shuffle(&mut spec.app.layers);
            }
            format!("`app` layers {:?}", spec.app.layers)
        }
        Edit::SwitchFrom => {
            let (img, froms): (&mut Image, &[&str]) = match rng.below(3) {
                0 => (
                    &mut spec.app,
                    &["scratch", "//base:base", "//third_party:vendor-base"],
                ),
                1 => (&mut spec.debug, &[":app", "//base:base", "scratch"]),
                _ => (&mut spec.vendored, &[":vendor-base", "//app:app"]),
            };
            img.from = rng.pick_other(froms, &img.from.as_str()).to_string();
            format!("`{}` from {}", img.name, img.from)
        }
        Edit::Epoch => {
            spec.epoch = rng.pick_other(
                &[1_700_000_000, 0, 1_234_567_890, 1_700_000_001],
                &spec.epoch,
            );
            format!("source-date-epoch {}", spec.epoch)
        }
        Edit::Compression => {
            spec.zstd = !spec.zstd;
            format!("compression {}", if spec.zstd { "zstd" } else { "gzip" })
        }
        Edit::Platform => {
            spec.arm64 = true;
            "platform linux/arm64 for this step (the imported layouts are linux/amd64)".into()
        }
        Edit::RenameImage => {
            spec.debug.name = if spec.debug.name == "app-debug" {
                "app-dbg"
            } else {
                "app-debug"
            };
            format!(
                "`//app:app-debug` and `//app:app-dbg`: now `{}`",
                spec.debug.name
            )
        }
        Edit::Reformat => {
            spec.style = rng.pick_other(&[0, 1, 2], &spec.style);
            format!("every spec file in style {}", spec.style)
        }
        Edit::Break => {
            let b = rng.pick(BREAKS);
            spec.broken = Some(b);
            format!("{b:?} (for this step)")
        }
        _ => {
            let i = rng.below(4);
            edit_image(rng, spec.image_mut(i), edit)
        }
    }
}

/// Edits of one image's config and tags.
fn edit_image(rng: &mut Rng, img: &mut Image, edit: Edit) -> String {
    let strings = |v: &[&[&str]]| -> Vec<Option<Vec<String>>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.iter().map(|x| x.to_string()).collect()))
            .collect()
    };
    let one = |v: &[&str]| -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect()
    };
    let name = img.name;
    match edit {
        Edit::Env => edit_pairs(rng, &mut img.env, ENV_KEYS, ENV_VALUES, name, "env"),
        Edit::Label => edit_pairs(rng, &mut img.labels, LABEL_KEYS, VALUES, name, "label"),
        Edit::Annotation => {
            let a = &mut img.annotations;
            edit_pairs(rng, a, ANNOTATION_KEYS, VALUES, name, "annotation")
        }
        Edit::Entrypoint => {
            let choices = strings(&[&[], &["/app/run.sh"], &["/bin/cat", "/etc/os-release"]]);
            img.entrypoint = rng.pick_other(&choices, &img.entrypoint);
            format!("`{name}` entrypoint {:?}", img.entrypoint)
        }
        Edit::Cmd => {
            let choices = strings(&[&[], &["serve"], &["--port", "9090"], &["/etc/app/a.toml"]]);
            img.cmd = rng.pick_other(&choices, &img.cmd);
            format!("`{name}` cmd {:?}", img.cmd)
        }
        Edit::Expose => {
            toggle(rng, &mut img.expose, &["8080/tcp", "9090", "53/udp"]);
            format!("`{name}` expose {:?}", img.expose)
        }
        Edit::Volume => {
            toggle(rng, &mut img.volume, &["/data", "/var/lib/app", "/cache"]);
            format!("`{name}` volume {:?}", img.volume)
        }
        Edit::User => {
            img.user = rng.pick_other(&one(&["", "10001:10001", "app", "0"]), &img.user);
            format!("`{name}` user {:?}", img.user)
        }
        Edit::Workdir => {
            img.workdir = rng.pick_other(&one(&["", "/app", "/"]), &img.workdir);
            format!("`{name}` workdir {:?}", img.workdir)
        }
        Edit::StopSignal => {
            let choices = one(&["", "SIGTERM", "SIGQUIT"]);
            img.stop_signal = rng.pick_other(&choices, &img.stop_signal);
            format!("`{name}` stop-signal {:?}", img.stop_signal)
        }
        Edit::Tag => {
            let repo = format!("example.com/{name}");
            let choices = vec![
                vec![],
                vec![format!("{repo}:1.0")],
                vec![format!("{repo}:2"), format!("{repo}:latest")],
                vec![repo.clone()],
            ];
            img.tags = rng.pick_other(&choices, &img.tags);
            format!("`{name}` tag {:?}", img.tags)
        }
        _ => unreachable!("{edit:?} is no image edit"),
    }
}

/// Writes `bytes` to `p` (in place if it exists) with mtime `t`.
fn write_at(p: &Path, bytes: &[u8], t: filetime::FileTime) {
    if p.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        std::fs::remove_file(p).unwrap();
    }
    std::fs::write(p, bytes).unwrap();
    filetime::set_file_mtime(p, t).unwrap();
}

/// Makes `p` a symlink to `target` (replacing what is there) with mtime `t`.
fn link_at(target: &str, p: &Path, t: filetime::FileTime) {
    if p.symlink_metadata().is_ok() {
        std::fs::remove_file(p).unwrap();
    }
    std::os::unix::fs::symlink(target, p).unwrap();
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

/// The target of the symlink `p` (empty if it is none).
fn link_target(p: &Path) -> String {
    std::fs::read_link(p)
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Files (and, unless `regular_only`, symlinks) under `dirs`, workspace-relative, sorted.
fn files_in(root: &Path, dirs: &[&str], regular_only: bool) -> Vec<String> {
    let mut out = Vec::new();
    for d in dirs {
        let dir = root.join(d);
        if !dir.exists() {
            continue;
        }
        for e in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let e = e.unwrap();
            let t = e.file_type();
            if t.is_file() || (!regular_only && t.is_symlink()) {
                let rel = e.path().strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Files of the copied trees that may be deleted or renamed: all but the
/// anchors, which keep the glob matching and its `exclude` excluding something
/// (when either does not, the build fails, as [`Break`] tries for a step).
fn movable_files(root: &Path) -> Vec<String> {
    let mut files = files_in(root, TREES, false);
    files.retain(|f| !ANCHORS.contains(&f.as_str()));
    files
}

/// A regular source file: in a copied tree, or copied by name.
fn pick_file(rng: &mut Rng, root: &Path) -> String {
    let mut files = files_in(root, TREES, true);
    files.extend(DIRECT.iter().map(|f| f.to_string()));
    rng.pick(&files)
}

/// Sets a key of `pairs` to another value, adds one, or removes one.
fn edit_pairs(
    rng: &mut Rng,
    pairs: &mut Pairs,
    keys: &[&str],
    values: &[&str],
    image: &str,
    what: &str,
) -> String {
    let key = rng.pick(keys).to_string();
    match pairs.iter().position(|(k, _)| *k == key) {
        Some(i) if rng.coin() => {
            pairs.remove(i);
            format!("`{image}` {what} `{key}` removed")
        }
        Some(i) => {
            let v = rng.pick_other(values, &pairs[i].1.as_str()).to_string();
            pairs[i].1 = v.clone();
            format!("`{image}` {what} `{key}`=`{v}`")
        }
        None => {
            let v = rng.pick(values).to_string();
            pairs.push((key.clone(), v.clone()));
            format!("`{image}` {what} `{key}`=`{v}` added")
        }
    }
}

/// Adds one of `choices` to `list`, or removes it if present.
fn toggle(rng: &mut Rng, list: &mut Vec<String>, choices: &[&str]) {
    let c = rng.pick(choices).to_string();
    match list.iter().position(|x| *x == c) {
        Some(i) => {
            list.remove(i);
        }
        None => list.push(c),
    }
}

/// Flips a bit of one byte of blob `b` in place (its hard links in layouts see the
/// damage too), keeping its size, mode and mtime.
fn damage_in_place(rng: &mut Rng, b: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom, Write};
    let meta = std::fs::metadata(b).unwrap();
    if meta.len() == 0 {
        return "empty: left alone".into();
    }
    let at = rng.below(meta.len() as usize);
    std::fs::set_permissions(b, std::fs::Permissions::from_mode(0o644)).unwrap();
    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(b)
            .unwrap();
        let mut byte = [0u8];
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.read_exact(&mut byte).unwrap();
        byte[0] ^= 0x20;
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&byte).unwrap();
    }
    std::fs::set_permissions(b, meta.permissions()).unwrap();
    filetime::set_file_mtime(b, filetime::FileTime::from_last_modification_time(&meta)).unwrap();
    format!("damaged in place at byte {at} (size and mtime kept)")
}

/// The blobs of the image the OCI layout at `dir` holds (its `index.json`'s
/// first manifest, its config and layers), as paths in the layout.
fn imported_blobs(dir: &Path) -> Vec<PathBuf> {
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &serde_json::Value| {
        let hex = d.as_str().unwrap().trim_start_matches("sha256:");
        dir.join("blobs/sha256").join(hex)
    };
    let index = json(dir.join("index.json"));
    let manifest = blob(&index["manifests"][0]["digest"]);
    let m = json(manifest.clone());
    let mut out = vec![manifest, blob(&m["config"]["digest"])];
    for l in m["layers"].as_array().unwrap() {
        out.push(blob(&l["digest"]));
    }
    out
}

/// Every blob file under `dir` (a cache's store, layouts), sorted.
fn blob_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type().is_file()
                && e.file_name().len() == 64
                && e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit())
        })
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

fn name_of(p: &Path) -> String {
    let name = p.file_name().unwrap().to_string_lossy();
    format!("sha256:{}…", &name[..12])
}

/// Another OCI layout (built by imgc from a one-image workspace): its blobs
/// (hex → bytes) and its `index.json`.
fn another_layout() -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let ws = Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1600000000\n}\n",
        ),
        (
            "other/BUILD.kdl",
            r#"
image "other" {
    from "scratch"
    layer {
        text "/etc/other-release" "other 1\n"
        dir "/opt" mode="0755"
    }
    env OTHER="1"
    cmd "/etc/other-release"
}
"#,
        ),
    ]);
    ws.ok(&["build"]);
    let layout = ws.layout("other", "other");
    let mut blobs = Vec::new();
    for e in walkdir::WalkDir::new(layout.join("blobs/sha256")).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let hex = e.file_name().to_string_lossy().into_owned();
            blobs.push((hex, std::fs::read(e.path()).unwrap()));
        }
    }
    let index = std::fs::read(layout.join("index.json")).unwrap();
    (blobs, index)
}

/// Compares a warm and a cold build of the same workspace state.
fn compare(warm: &Run, cold: &Run, warm_root: &Path, cold_root: &Path) -> Result<(), String> {
    for (name, r) in [("warm", warm), ("cold", cold)] {
        if !matches!(r.status, Some(0..=3)) {
            return Err(format!(
                "the {name} build crashed or panicked (exit {:?})",
                r.status
            ));
        }
    }
    if warm.status != cold.status {
        return Err(format!(
            "exit status: warm {:?}, cold {:?}",
            warm.status, cold.status
        ));
    }
    let (wc, cc) = (error_codes(&warm.stderr), error_codes(&cold.stderr));
    if wc != cc {
        return Err(format!("error codes on stderr: warm {wc:?}, cold {cc:?}"));
    }
    if warm.failed() != cold.failed() {
        return Err(format!(
            "failed targets: warm {:?}, cold {:?}",
            warm.failed(),
            cold.failed()
        ));
    }
    if warm.skipped() != cold.skipped() {
        return Err(format!(
            "skipped targets: warm {:?}, cold {:?}",
            warm.skipped(),
            cold.skipped()
        ));
    }
    let (wm, cm) = (warm.materialized(), cold.materialized());
    // The first differing file: of the whole output after a successful build; of
    // the layouts both wrote after a failed one (a failed image's old layout stays).
    let difference = if warm.ok() {
        tree_difference(&warm_root.join("imgc-out"), &cold_root.join("imgc-out"))
    } else {
        cm.iter().find_map(|(label, (path, _))| {
            tree_difference(&warm_root.join(path), &cold_root.join(path))
                .map(|d| format!("in the layout of `{label}`: {d}"))
        })
    };
    if wm != cm {
        let differing: BTreeMap<&String, (Option<&String>, Option<&String>)> = wm
            .keys()
            .chain(cm.keys())
            .map(|l| (l, (wm.get(l).map(|x| &x.1), cm.get(l).map(|x| &x.1))))
            .filter(|(_, (w, c))| w != c)
            .collect();
        return Err(format!(
            "materialized images (label: (warm, cold)): {differing:?}\nfirst differing file: {}",
            difference.as_deref().unwrap_or("none")
        ));
    }
    match difference {
        Some(d) => Err(d),
        None => Ok(()),
    }
}
