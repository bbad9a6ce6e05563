//! Unit tests of the spec parser: SPEC.md examples, one test per diagnostic kind,
//! spans, and a deterministic mutation run that must never panic.

use super::*;
use crate::spec::model::Compression;

const WORKSPACE: &str = r#"// imgc.kdl
workspace {
    output-dir "imgc-out"            // default "imgc-out"
    source-date-epoch 0              // default 0; SOURCE_DATE_EPOCH env overrides
    compression "gzip"               // "gzip" (default) or "zstd"
    platform "linux/amd64"           // default platform of images
    remote-cache "/mnt/ci/imgc"      // optional; --remote-cache overrides
}
"#;

const LAYER: &str = r#"layer "app" {
    copy "bin/server" to="/app/server" mode="0755"       // one file
    copy "static" to="/app/static"                      // a directory, recursively
    copy "conf/*.toml" to="/etc/app/" exclude="conf/dev-*.toml"   // a glob, into a directory
    copy ":server-bin" to="/app/bin/"                   // the outputs of another target
    text "/etc/app/version" "1.2.3\n"                   // inline file content
    dir "/var/lib/app" mode="0700" owner="10001:10001"
    symlink "/app/current" target="/app/server"
    owner "0:0"                                          // default owner for this layer
}
"#;

const IMAGE: &str = r#"image "api" {
    from "//bases:runtime"             // "scratch", or the label of an image or import
    layers ":app" "//shared:certs"     // layers by label, in order
    layer {                            // an inline, anonymous layer (same body as `layer`)
        copy "config.toml" to="/etc/api/config.toml"
    }
    entrypoint "/app/server"
    cmd "--port" "8080"
    env PATH="/usr/bin:/bin" RUST_LOG="info"
    workdir "/app"
    user "10001:10001"
    expose "8080/tcp" "9090"
    volume "/data"
    label "org.opencontainers.image.title" "api"
    annotation "com.example.team" "payments"
    stop-signal "SIGTERM"
    tag "registry.example.com/acme/api:latest"   // names used by export and push
}
"#;

const IMPORT: &str = r#"import "debian" {
    oci-layout "third_party/debian-12"          // an OCI image layout directory
}
import "alpine" {
    docker-archive "third_party/alpine.tar"      // a `docker save` / `podman save` tarball
}
"#;

fn build(text: &str) -> (Vec<Target>, Vec<Diag>) {
    parse_build_file(0, "services/api", text)
}

/// Parses `text` and expects exactly one diagnostic; returns it.
fn one_diag(text: &str) -> Diag {
    let (_, diags) = build(text);
    assert_eq!(diags.len(), 1, "expected one diagnostic, got {diags:#?}");
    diags.into_iter().next().unwrap()
}

fn spanned_text<'t>(text: &'t str, d: &Diag) -> &'t str {
    let (_, span) = d.location.expect("diagnostic has a location");
    &text[span.offset()..span.offset() + span.len()]
}

fn layer_of(t: &Target) -> &LayerSpec {
    match &t.kind {
        TargetKind::Layer(l) => l,
        other => panic!("expected a layer, got {}", other.kind_name()),
    }
}

fn image_of(t: &Target) -> &ImageSpec {
    match &t.kind {
        TargetKind::Image(i) => i,
        other => panic!("expected an image, got {}", other.kind_name()),
    }
}

// -- SPEC.md examples ---------------------------------------------------------

#[test]
fn spec_workspace_example() {
    let (config, diags) = parse_workspace_file(0, WORKSPACE);
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(config.output_dir, "imgc-out");
    assert_eq!(config.source_date_epoch, 0);
    assert_eq!(config.compression, Compression::Gzip);
    assert_eq!(config.platform.to_string(), "linux/amd64");
    assert_eq!(config.remote_cache.as_deref(), Some("/mnt/ci/imgc"));
}

#[test]
fn workspace_defaults_and_values() {
    let (config, diags) = parse_workspace_file(0, "workspace {}");
    assert!(diags.is_empty());
    assert_eq!(config, WorkspaceConfig::default());
    let text = "workspace {\n compression \"zstd\"\n platform \"linux/arm64/v8\"\n source-date-epoch 1700000000\n output-dir \"./out/\"\n}";
    let (config, diags) = parse_workspace_file(0, text);
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(config.compression, Compression::Zstd);
    assert_eq!(config.platform.variant.as_deref(), Some("v8"));
    assert_eq!(config.source_date_epoch, 1_700_000_000);
    assert_eq!(config.output_dir, "out");
}

#[test]
fn spec_layer_example() {
    let (targets, diags) = build(LAYER);
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].name.value, "app");
    let layer = layer_of(&targets[0]);
    assert_eq!(layer.owner.as_ref().map(|o| o.value), Some(Owner::ROOT));
    assert_eq!(layer.entries.len(), 7);
    let LayerEntry::Copy { src, to, mode, .. } = &layer.entries[0] else {
        panic!("copy expected")
    };
    assert_eq!(src.value, CopySource::Path("bin/server".into()));
    assert_eq!(to.value, "/app/server");
    assert_eq!(mode.as_ref().map(|m| m.value), Some(Mode(0o755)));
    let LayerEntry::Copy { src, exclude, .. } = &layer.entries[2] else {
        panic!("copy expected")
    };
    assert_eq!(src.value, CopySource::Glob("conf/*.toml".into()));
    assert_eq!(exclude.len(), 1);
    assert_eq!(exclude[0].value, "conf/dev-*.toml");
    let LayerEntry::Copy { src, to, .. } = &layer.entries[3] else {
        panic!("copy expected")
    };
    assert_eq!(
        src.value,
        CopySource::Target(Label::new("services/api", "server-bin"))
    );
    assert_eq!(to.value, "/app/bin/");
    let LayerEntry::Text { path, content, .. } = &layer.entries[4] else {
        panic!("text expected")
    };
    assert_eq!(
        (path.value.as_str(), content.as_str()),
        ("/etc/app/version", "1.2.3\n")
    );
    let LayerEntry::Dir { mode, owner, .. } = &layer.entries[5] else {
        panic!("dir expected")
    };
    assert_eq!(mode.as_ref().map(|m| m.value), Some(Mode(0o700)));
    assert_eq!(
        owner.as_ref().map(|o| o.value),
        Some(Owner {
            uid: 10001,
            gid: 10001
        })
    );
    let LayerEntry::Symlink { path, target, .. } = &layer.entries[6] else {
        panic!("symlink expected")
    };
    assert_eq!(
        (path.value.as_str(), target.value.as_str()),
        ("/app/current", "/app/server")
    );
}

#[test]
fn spec_image_example() {
    let (targets, diags) = build(IMAGE);
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0].name.value, "api");
    assert_eq!(targets[1].name.value, inline_layer_name("api", 0));
    assert_eq!(layer_of(&targets[1]).entries.len(), 1);
    let img = image_of(&targets[0]);
    assert_eq!(
        img.from.as_ref().map(|f| &f.value),
        Some(&BaseRef::Target(Label::new("bases", "runtime")))
    );
    let layers: Vec<String> = img.layers.iter().map(|l| l.value.to_string()).collect();
    assert_eq!(
        layers,
        [
            "//services/api:app",
            "//shared:certs",
            "//services/api:api~layer0"
        ]
    );
    assert_eq!(img.entrypoint, Some(vec!["/app/server".to_string()]));
    assert_eq!(
        img.cmd,
        Some(vec!["--port".to_string(), "8080".to_string()])
    );
    let env: Vec<(&str, &str)> = img
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("PATH", "/usr/bin:/bin"), ("RUST_LOG", "info")]);
    assert_eq!(img.workdir.as_deref(), Some("/app"));
    assert_eq!(img.user.as_deref(), Some("10001:10001"));
    assert_eq!(img.expose, ["8080/tcp", "9090/tcp"]);
    assert_eq!(img.volume, ["/data"]);
    assert_eq!(
        img.labels,
        [(
            "org.opencontainers.image.title".to_string(),
            "api".to_string()
        )]
    );
    assert_eq!(
        img.annotations,
        [("com.example.team".to_string(), "payments".to_string())]
    );
    assert_eq!(img.stop_signal.as_deref(), Some("SIGTERM"));
    assert_eq!(img.tags.len(), 1);
    assert_eq!(img.tags[0].value, "registry.example.com/acme/api:latest");
}

#[test]
fn spec_import_example() {
    let (targets, diags) = build(IMPORT);
    assert!(diags.is_empty(), "{diags:#?}");
    let sources: Vec<ImportSource> = targets
        .iter()
        .map(|t| match &t.kind {
            TargetKind::Import(i) => i.source.value.clone(),
            other => panic!("expected an import, got {}", other.kind_name()),
        })
        .collect();
    assert_eq!(
        sources,
        [
            ImportSource::OciLayout("third_party/debian-12".into()),
            ImportSource::DockerArchive("third_party/alpine.tar".into())
        ]
    );
}

#[test]
fn inline_layers_keep_written_order() {
    let text = r#"image "img" {
        from "scratch"
        layers ":a"
        layer { text "/x" "1" }
        layers ":b" ":c"
        layer { text "/y" "2" }
    }"#;
    let (targets, diags) = build(text);
    assert!(diags.is_empty(), "{diags:#?}");
    let names: Vec<&str> = targets.iter().map(|t| t.name.value.as_str()).collect();
    assert_eq!(names, ["img", "img~layer0", "img~layer1"]);
    let img = image_of(&targets[0]);
    assert_eq!(img.from.as_ref().map(|f| &f.value), Some(&BaseRef::Scratch));
    let layers: Vec<&str> = img.layers.iter().map(|l| l.value.name()).collect();
    assert_eq!(layers, ["a", "img~layer0", "b", "c", "img~layer1"]);
}

#[test]
fn sources_are_normalized() {
    let text = r#"layer "l" { copy "./a/../b//c" to="/c"; copy "../../shared/x" to="/x" }"#;
    let (targets, diags) = build(text);
    assert!(diags.is_empty(), "{diags:#?}");
    let srcs: Vec<CopySource> = layer_of(&targets[0])
        .entries
        .iter()
        .map(|e| match e {
            LayerEntry::Copy { src, .. } => src.value.clone(),
            _ => panic!("copy expected"),
        })
        .collect();
    assert_eq!(
        srcs,
        [
            CopySource::Path("b/c".into()),
            CopySource::Path("../../shared/x".into())
        ]
    );
}

// -- one test per diagnostic kind --------------------------------------------

#[test]
fn syntax_error() {
    let (targets, diags) = build("layer \"app\" {\n  copy \"x\n}\n");
    assert!(targets.is_empty());
    assert!(!diags.is_empty());
    assert!(diags.iter().all(|d| d.code == Code::Syntax));
    assert!(
        diags
            .iter()
            .all(|d| d.location.is_some() && d.label.is_some())
    );
    let first = &diags[0].message;
    assert!(first.starts_with(|c: char| c.is_lowercase()), "{first}");
}

#[test]
fn unknown_node_suggests() {
    let text = "layer \"app\" {\n  cpy \"x\" to=\"/x\"\n}";
    let d = one_diag(text);
    assert_eq!(d.code, Code::UnknownNode);
    assert_eq!(d.message, "unknown node `cpy` in a `layer`");
    assert_eq!(d.help.as_deref(), Some("did you mean `copy`?"));
    assert_eq!(spanned_text(text, &d), "cpy");
}

#[test]
fn unknown_top_level_node() {
    let d = one_diag("imag \"x\" { from \"scratch\" }");
    assert_eq!(d.code, Code::UnknownNode);
    assert_eq!(d.help.as_deref(), Some("did you mean `image`?"));
}

#[test]
fn unknown_property_suggests() {
    let text = r#"layer "app" { copy "x" to="/x" mdoe="0644" }"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::UnknownProperty);
    assert_eq!(d.message, "unknown property `mdoe` on `copy`");
    assert_eq!(d.help.as_deref(), Some("did you mean `mode`?"));
    assert_eq!(spanned_text(text, &d), r#"mdoe="0644""#);
}

#[test]
fn wrong_type() {
    let text = r#"layer "app" { copy "x" to=42 }"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::WrongType);
    assert_eq!(d.message, "`to` must be a string, got a number (42)");
    assert_eq!(spanned_text(text, &d), "42");
    let d = one_diag(r#"layer "app" { copy "x" to="/x" mode=0644 }"#);
    assert_eq!(d.code, Code::WrongType);
    assert_eq!(d.help.as_deref(), Some("quote it: mode=\"0644\""));
}

#[test]
fn type_annotations_are_rejected() {
    let text = r#"layer "app" { copy (path)"x" to="/x" }"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::WrongType);
    assert_eq!(spanned_text(text, &d), "path");
}

#[test]
fn source_date_epoch_must_be_non_negative_integer() {
    let text = "workspace {\n  source-date-epoch \"0\"\n}";
    let (_, diags) = parse_workspace_file(0, text);
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].code, Code::WrongType);
    assert_eq!(spanned_text(text, &diags[0]), "\"0\"");
    let (config, diags) = parse_workspace_file(0, "workspace { source-date-epoch -1 }");
    assert_eq!(diags[0].code, Code::InvalidValue);
    assert!(diags[0].message.contains("non-negative integer"));
    assert_eq!(config.source_date_epoch, 0);
}

#[test]
fn missing_from_and_to() {
    let d = one_diag(r#"image "api" { cmd "x" }"#);
    assert_eq!(d.code, Code::Missing);
    assert_eq!(d.message, "`image` needs a `from`");
    let text = r#"layer "l" { copy "x" }"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::Missing);
    assert_eq!(d.message, "`copy` needs a `to=` property");
    assert_eq!(spanned_text(text, &d), "copy \"x\"");
}

#[test]
fn import_needs_exactly_one_source() {
    let d = one_diag(r#"import "x" {}"#);
    assert_eq!(d.code, Code::Missing);
    let d = one_diag(r#"import "x" { oci-layout "a"; docker-archive "b.tar" }"#);
    assert_eq!(d.code, Code::Duplicate);
    assert!(d.message.contains("exactly one of"), "{}", d.message);
}

#[test]
fn too_many_values() {
    let text = r#"image "i" { from "scratch" "//x:y" }"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::TooManyValues);
    assert_eq!(spanned_text(text, &d), "\"//x:y\"");
    let d = one_diag(r#"image "i" { from "scratch"; layer "named" {} }"#);
    assert_eq!(d.code, Code::TooManyValues);
}

#[test]
fn duplicate_singleton() {
    let text = "image \"i\" {\n  from \"scratch\"\n  entrypoint \"/a\"\n  from \"scratch\"\n}";
    let d = one_diag(text);
    assert_eq!(d.code, Code::Duplicate);
    assert_eq!(d.message, "`from` is given twice (first on line 2)");
    assert_eq!(spanned_text(text, &d), "from \"scratch\"");
    let d = one_diag(r#"layer "l" { owner "0:0"; owner "1:1" }"#);
    assert_eq!(d.code, Code::Duplicate);
    let d = one_diag(r#"layer "l" { copy "a" to="/a" to="/b" }"#);
    assert_eq!(d.code, Code::Duplicate);
}

#[test]
fn bad_mode() {
    let text = r#"layer "l" { dir "/d" mode="rwx" }"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::BadMode);
    assert_eq!(
        d.message,
        "`mode` must be an octal string like \"0644\", got \"rwx\""
    );
    assert_eq!(spanned_text(text, &d), "\"rwx\"");
}

#[test]
fn bad_owner() {
    let text = r#"layer "l" { dir "/d" owner="app:app" }"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::BadOwner);
    assert!(d.message.contains("\"app:app\""));
    assert_eq!(spanned_text(text, &d), "\"app:app\"");
}

#[test]
fn paths_escaping_the_workspace() {
    let d = one_diag(r#"layer "l" { copy "../../../etc/passwd" to="/x" }"#);
    assert_eq!(d.code, Code::PathEscapes);
    assert_eq!(
        d.message,
        "source path `../../../etc/passwd` leaves the workspace"
    );
    let d = one_diag(r#"layer "l" { copy "/etc/passwd" to="/x" }"#);
    assert_eq!(d.code, Code::PathEscapes);
    let d = one_diag(r#"import "i" { oci-layout "../../../x" }"#);
    assert_eq!(d.code, Code::PathEscapes);
}

#[test]
fn image_paths_are_absolute() {
    let d = one_diag(r#"layer "l" { copy "a" to="app/" }"#);
    assert_eq!(d.code, Code::InvalidValue);
    assert_eq!(
        d.message,
        "`to` must be an absolute path in the image, got \"app/\""
    );
    let d = one_diag(r#"layer "l" { text "/a/../b" "x" }"#);
    assert_eq!(d.code, Code::InvalidValue);
    let d = one_diag(r#"layer "l" { symlink "rel" target="x" }"#);
    assert_eq!(d.code, Code::InvalidValue);
}

#[test]
fn duplicate_target() {
    let text = "layer \"app\" {}\n\nimage \"app\" { from \"scratch\" }";
    let (targets, diags) = build(text);
    assert_eq!(targets.len(), 1);
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].code, Code::DuplicateTarget);
    assert!(diags[0].message.contains("line 1"), "{}", diags[0].message);
    assert_eq!(diags[0].location.map(|l| l.1.offset()), Some(22));
}

#[test]
fn bad_labels() {
    for text in [
        r#"image "i" { from "bases:runtime" }"#,
        r#"image "i" { from "scratch"; layers ":a" "//x/../y:z" }"#,
        r#"layer "l" { copy ":bad name" to="/x" }"#,
    ] {
        let d = one_diag(text);
        assert_eq!(d.code, Code::BadLabel, "{text}");
        assert!(d.help.is_some());
    }
}

#[test]
fn invalid_target_name() {
    let d = one_diag(r#"layer "all" {}"#);
    assert_eq!(d.code, Code::InvalidValue);
    let d = one_diag(r#"layer "a~b" {}"#);
    assert_eq!(d.code, Code::InvalidValue);
}

#[test]
fn invalid_values() {
    let (_, diags) =
        parse_workspace_file(0, "workspace { compression \"gzp\"; platform \"linux\" }");
    let codes: Vec<Code> = diags.iter().map(|d| d.code).collect();
    assert_eq!(codes, [Code::InvalidValue, Code::InvalidValue]);
    assert_eq!(diags[0].help.as_deref(), Some("did you mean \"gzip\"?"));
    for text in [
        r#"image "i" { from "scratch"; expose "80/xyz" }"#,
        r#"image "i" { from "scratch"; expose "abc" }"#,
        r#"image "i" { from "scratch"; env ""="x" }"#,
        r#"image "i" { from "scratch"; env "A=B"="x" }"#,
    ] {
        assert_eq!(one_diag(text).code, Code::InvalidValue, "{text}");
    }
}

#[test]
fn all_errors_of_a_file_are_reported() {
    let text = r#"layer "a" {
    cpy "x" to="/x"
    copy "y" to="rel" mode="9"
}
image "a" { from "scratch" }
image "b" {
    from "nope"
    expose "http"
}
"#;
    let (_, diags) = build(text);
    let codes: Vec<Code> = diags.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [
            Code::UnknownNode,
            Code::InvalidValue,
            Code::BadMode,
            Code::DuplicateTarget,
            Code::BadLabel,
            Code::InvalidValue
        ]
    );
}

#[test]
fn every_diag_has_location_label_and_lowercase_message() {
    let texts = [
        r#"layer "a" { cpy "x"; copy 1 to=2 mode="x" owner="y" exclude=3 }"#,
        r#"image "b" { from "x"; layers; env 1; expose 1 "a"; label "k" }"#,
        r#"import "c" { oci-layout "/abs"; docker-archive "x" }"#,
        r#"foo; layer; layer 1 2; layer "x" y=1"#,
    ];
    for text in texts {
        let (_, diags) = build(text);
        assert!(!diags.is_empty());
        for d in diags {
            assert!(d.location.is_some() && d.label.is_some(), "{d:?}");
            assert!(!d.message.starts_with(char::is_uppercase), "{d:?}");
        }
    }
}

// -- robustness ----------------------------------------------------------------

/// A tiny deterministic xorshift generator.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(3) {
            0 if at < bytes.len() => {
                bytes.remove(at);
            }
            1 => {
                let inserts = b"{}\"=/*;()#.-0\n\\:";
                bytes.insert(at.min(bytes.len()), inserts[rng.below(inserts.len())]);
            }
            _ => bytes.truncate(at),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutations_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let seeds = [WORKSPACE, LAYER, IMAGE, IMPORT, POLICY];
    let mut sources = crate::diag::Sources::default();
    for i in 0..3000 {
        let text = mutate(&mut rng, seeds[i % seeds.len()]);
        let file = sources.add("BUILD.kdl", text.clone());
        let (_, d1) = parse_workspace_file(file, &text);
        let (_, d2) = parse_build_file(file, "services/api", &text);
        for d in d1.iter().chain(&d2) {
            let _ = d.short(&sources);
            let _ = format!("{:?}", d.to_report(&sources));
        }
    }
}

// -- the book's examples ---------------------------------------------------------

/// The ```kdl blocks of a markdown text (```kdl,invalid blocks are skipped).
fn kdl_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```kdl") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn book_spec_reference_examples_parse_cleanly() {
    let book = include_str!("../../book/src/spec-reference.md");
    let blocks = kdl_blocks(book);
    assert!(blocks.len() >= 10, "found only {} kdl blocks", blocks.len());
    for block in blocks {
        let diags = if block.trim_start().starts_with("workspace") {
            parse_workspace_file(0, &block).1
        } else {
            parse_build_file(0, "services/api", &block).1
        };
        assert!(diags.is_empty(), "book example:\n{block}\n{diags:#?}");
    }
}

#[test]
fn annotation_base_digest_is_refused_and_base_name_allowed() {
    let text = r#"
image "i" {
    from "//bases:runtime"
    annotation "org.opencontainers.image.base.digest" "sha256:00"
}
"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::InvalidValue);
    assert_eq!(
        spanned_text(text, &d),
        r#""org.opencontainers.image.base.digest""#
    );
    assert!(d.message.contains("written by imgc"), "{}", d.message);
    let (targets, diags) = build(
        r#"
image "i" {
    from "//bases:runtime"
    annotation "org.opencontainers.image.base.name" "docker.io/library/debian:12"
}
"#,
    );
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(
        image_of(&targets[0]).annotations,
        [(
            "org.opencontainers.image.base.name".to_string(),
            "docker.io/library/debian:12".to_string()
        )]
    );
}

#[test]
fn copy_of_a_label_with_exclude_is_rejected() {
    let text = r#"layer "l" { copy ":other" to="/opt/" exclude="x/*.txt" mode="0600" }"#;
    let d = one_diag(text);
    assert_eq!(d.code, Code::InvalidValue);
    assert_eq!(spanned_text(text, &d), "\"x/*.txt\"");
    assert!(d.message.contains("`exclude`"), "{}", d.message);
    // `mode` and `owner` apply to a label's outputs: no diagnostic.
    let (_, diags) = build(r#"layer "l" { copy ":other" to="/opt/" mode="0600" owner="1:1" }"#);
    assert!(diags.is_empty(), "{diags:#?}");
}

// -- policy (imgc.kdl) -------------------------------------------------------------

const POLICY: &str = r#"workspace {}
policy {
    require-base "//bases:runtime" for="//services/..."
    require-base "//third_party:debian"
}
"#;

fn policy_diags(policy_body: &str) -> (Policy, Vec<Diag>, String) {
    let text = format!("workspace {{}}\npolicy {{\n{policy_body}\n}}\n");
    let (config, diags) = parse_workspace_file(0, &text);
    (config.policy, diags, text)
}

#[test]
fn policy_rules_parse_with_spans_and_default_scope() {
    let (config, diags) = parse_workspace_file(0, POLICY);
    assert!(diags.is_empty(), "{diags:#?}");
    let rules = &config.policy.require_base;
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].base.value, Label::new("bases", "runtime"));
    assert_eq!(
        &POLICY[rules[0].base.span.offset()..][..rules[0].base.span.len()],
        "\"//bases:runtime\""
    );
    let scope = rules[0].scope.as_ref().expect("for= was written");
    assert_eq!(scope.value, Pattern::Recursive("services".into()));
    assert_eq!(
        &POLICY[scope.span.offset()..][..scope.span.len()],
        "\"//services/...\""
    );
    assert_eq!(
        &POLICY[rules[0].span.offset()..][..rules[0].span.len()],
        "require-base \"//bases:runtime\" for=\"//services/...\""
    );
    // No `for`: every target.
    assert_eq!(rules[1].base.value, Label::new("third_party", "debian"));
    assert!(rules[1].scope.is_none());
    assert_eq!(rules[1].pattern(), Pattern::Recursive(String::new()));
    // Without a policy node, the policy is empty.
    assert_eq!(
        parse_workspace_file(0, "workspace {}").0.policy,
        Policy::default()
    );
}

#[test]
fn policy_short_label_and_package_pattern() {
    let (policy, diags, _) =
        policy_diags(r#"require-base "//bases/runtime" for="//services/api:all""#);
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(
        policy.require_base[0].base.value,
        Label::new("bases/runtime", "runtime")
    );
    assert_eq!(
        policy.require_base[0].pattern(),
        Pattern::Package("services/api".into())
    );
}

#[test]
fn policy_unknown_child_and_property_suggest() {
    let (policy, diags, text) = policy_diags(r#"require-bse "//bases:runtime""#);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].code, Code::UnknownNode);
    assert_eq!(diags[0].message, "unknown node `require-bse` in `policy`");
    assert_eq!(
        diags[0].help.as_deref(),
        Some("did you mean `require-base`?")
    );
    assert_eq!(spanned_text(&text, &diags[0]), "require-bse");
    assert!(policy.require_base.is_empty());

    let (policy, diags, text) =
        policy_diags(r#"require-base "//bases:runtime" forr="//services/...""#);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].code, Code::UnknownProperty);
    assert_eq!(diags[0].help.as_deref(), Some("did you mean `for`?"));
    assert_eq!(spanned_text(&text, &diags[0]), r#"forr="//services/...""#);
    // The rest of the rule still stands (with the default scope).
    assert_eq!(policy.require_base.len(), 1);
}

#[test]
fn policy_node_shape_errors() {
    let text = "workspace {}\npolicy \"x\" {\n}\npolcy {\n}\n";
    let (_, diags) = parse_workspace_file(0, text);
    let codes: Vec<Code> = diags.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [Code::TooManyValues, Code::UnknownNode],
        "{diags:#?}"
    );
    assert_eq!(diags[1].help.as_deref(), Some("did you mean `policy`?"));

    let text = "workspace {}\npolicy {\n}\npolicy {\n}\n";
    let (_, diags) = parse_workspace_file(0, text);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].code, Code::Duplicate);
    assert_eq!(
        diags[0].message,
        "`policy` is given twice (first on line 2)"
    );

    // Inside `workspace` by mistake: the help says where it goes.
    let text = "workspace {\n    policy {\n    }\n}\n";
    let (_, diags) = parse_workspace_file(0, text);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].code, Code::UnknownNode);
    assert!(
        diags[0]
            .help
            .as_deref()
            .unwrap_or("")
            .contains("beside `workspace`"),
        "{diags:#?}"
    );

    let (_, diags, _) = policy_diags("require-base");
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].code, Code::Missing);

    let (_, diags, _) = policy_diags(r#"require-base "//a:b" "//c:d""#);
    assert_eq!(diags[0].code, Code::TooManyValues, "{diags:#?}");

    let (policy, diags, _) = policy_diags(r#"require-base "//a:b" for=1"#);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].code, Code::WrongType);
    // A rule whose scope is wrong is dropped, not widened to everything.
    assert!(policy.require_base.is_empty());

    let (_, diags, _) = policy_diags(r#"require-base "//a:b" { }"#);
    assert_eq!(diags[0].code, Code::UnknownNode, "{diags:#?}");
}

#[test]
fn policy_bad_labels_have_fixes() {
    let cases = [
        (r#""bases:runtime""#, "did you mean `//bases:runtime`?"),
        (r#"":runtime""#, "write the label in full: `//:runtime`"),
        (
            r#""scratch""#,
            "name the image or import every image in scope must be built on",
        ),
        (
            r#""runtime""#,
            "labels in imgc.kdl look like `//package:name`",
        ),
        (r#""//bases:run time""#, "labels look like `//package:name`"),
        (r#""//""#, "labels look like `//package:name`"),
    ];
    for (value, help) in cases {
        let (policy, diags, text) = policy_diags(&format!("require-base {value}"));
        assert_eq!(diags.len(), 1, "{value}: {diags:#?}");
        assert_eq!(diags[0].code, Code::BadLabel, "{value}");
        assert!(
            diags[0]
                .message
                .starts_with("bad label in `require-base`: "),
            "{}",
            diags[0].message
        );
        assert_eq!(diags[0].help.as_deref(), Some(help), "{value}");
        assert_eq!(spanned_text(&text, &diags[0]), value);
        assert!(policy.require_base.is_empty());
    }
}

#[test]
fn policy_bad_patterns_have_fixes() {
    let cases = [
        (
            r#""services/...""#,
            "write the pattern in full: `//services/...`",
        ),
        (r#"":api""#, "write the pattern in full: `//:api`"),
        (
            r#""-//services/legacy/...""#,
            "write the pattern the rule is about, like `//services/...`",
        ),
        (
            r#""//services/.../api""#,
            "patterns look like `//...`, `//services/...`, `//services/api:all` or a label",
        ),
        (
            r#""//""#,
            "patterns look like `//...`, `//services/...`, `//services/api:all` or a label",
        ),
    ];
    for (value, help) in cases {
        let (policy, diags, text) =
            policy_diags(&format!("require-base \"//bases:runtime\" for={value}"));
        assert_eq!(diags.len(), 1, "{value}: {diags:#?}");
        assert_eq!(diags[0].code, Code::BadLabel, "{value}");
        assert!(
            diags[0]
                .message
                .starts_with("bad target pattern in `for`: "),
            "{}",
            diags[0].message
        );
        assert_eq!(diags[0].help.as_deref(), Some(help), "{value}");
        assert_eq!(spanned_text(&text, &diags[0]), value);
        assert!(policy.require_base.is_empty(), "{value}");
    }
}

#[test]
fn policy_rule_given_twice_is_reported() {
    let body = "require-base \"//bases:runtime\" for=\"//services/...\"\n\
                require-base \"//bases:runtime\" for=\"//...\"\n\
                require-base \"//bases:runtime\" for=\"//services/...\"";
    let (policy, diags, text) = policy_diags(body);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].code, Code::Duplicate);
    assert_eq!(
        diags[0].message,
        "this `require-base` rule is given twice (first on line 3)"
    );
    assert!(spanned_text(&text, &diags[0]).starts_with("require-base"));
    assert_eq!(policy.require_base.len(), 2);
    // `//...` written and `for` left out are the same scope.
    let (_, diags, _) =
        policy_diags("require-base \"//a:b\" for=\"//...\"\nrequire-base \"//a:b\"");
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].code, Code::Duplicate);
}

#[test]
fn policy_round_trips_through_the_parse_cache_format() {
    let (config, diags) = parse_workspace_file(0, POLICY);
    assert!(diags.is_empty());
    let json = serde_json::to_string(&config).unwrap();
    let back: WorkspaceConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
}

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn registry_of(text: &str) -> (Option<RegistryRef>, Vec<Diag>) {
    let (targets, diags) = build(text);
    let r = targets.iter().find_map(|t| match &t.kind {
        TargetKind::Import(i) => match &i.source.value {
            ImportSource::Registry(r) => Some(r.clone()),
            _ => None,
        },
        _ => None,
    });
    (r, diags)
}

#[test]
fn registry_import_parses_pinned_and_unpinned_references() {
    let text = format!(
        "import \"debian\" {{\n    registry \"127.0.0.1:5000/team/debian:12@sha256:{HEX}\"\n}}\n"
    );
    let (r, diags) = registry_of(&text);
    assert!(diags.is_empty(), "{diags:#?}");
    let r = r.expect("a registry import");
    assert_eq!(r.reference.registry, "127.0.0.1:5000");
    assert_eq!(r.reference.repository, "team/debian");
    assert_eq!(r.reference.tag.as_deref(), Some("12"));
    assert_eq!(r.reference.digest.map(|d| d.hex()), Some(HEX.to_string()));
    assert_eq!(
        r.written,
        format!("127.0.0.1:5000/team/debian:12@sha256:{HEX}")
    );
    // The span is the string's: what `imgc pin` rewrites.
    let (targets, _) = build(&text);
    let TargetKind::Import(spec) = &targets[0].kind else {
        panic!("an import")
    };
    let at = &text[spec.source.span.offset()..][..spec.source.span.len()];
    assert!(at.contains(&r.written), "{at:?}");
    // A tag without a digest parses: `check` and `build` refuse it, `pin` fixes it.
    let (r, diags) = registry_of("import \"d\" { registry \"debian:12\"; }");
    assert!(diags.is_empty(), "{diags:#?}");
    let r = r.unwrap();
    assert_eq!(
        (r.reference.registry.as_str(), r.reference.digest),
        ("docker.io", None)
    );
}

#[test]
fn registry_import_malformed_reference_is_e060_at_the_string() {
    let text = "import \"d\" {\n    registry \"127.0.0.1:5000/Team/debian\"\n}\n";
    let d = one_diag(text);
    assert_eq!(d.code, Code::BadReference);
    assert!(
        d.message.contains("not a valid image reference"),
        "{}",
        d.message
    );
    let (_, span) = d.location.unwrap();
    assert_eq!(
        &text[span.offset()..][..span.len()],
        "\"127.0.0.1:5000/Team/debian\""
    );
    assert!(d.help.unwrap().contains("@sha256:"));
    // Credentials are refused without being repeated.
    let d = one_diag("import \"d\" { registry \"alice:s3cret@example.com/a:1\"; }");
    assert_eq!(d.code, Code::BadReference);
    assert!(!d.message.contains("s3cret"), "{}", d.message);
    for bad in [
        format!(
            "import \"d\" {{ registry \"example.com/a@sha256:{}\"; }}",
            &HEX[..10]
        ),
        format!("import \"d\" {{ registry \"example.com/a@sha512:{HEX}\"; }}"),
        "import \"d\" { registry \"\"; }".to_string(),
    ] {
        assert_eq!(one_diag(&bad).code, Code::BadReference, "{bad}");
    }
}

#[test]
fn registry_import_shape_errors() {
    // Not a string, two arguments, a property, a second source.
    assert_eq!(
        one_diag("import \"d\" { registry 12; }").code,
        Code::WrongType
    );
    assert_eq!(
        one_diag("import \"d\" { registry \"a.io/b:1\" \"c\"; }").code,
        Code::TooManyValues
    );
    assert_eq!(
        one_diag("import \"d\" { registry \"a.io/b:1\" tls=#false; }").code,
        Code::UnknownProperty
    );
    let d = one_diag("import \"d\" {\n registry \"a.io/b:1\"\n oci-layout \"x\"\n}");
    assert_eq!(d.code, Code::Duplicate);
    assert!(d.message.contains("`registry`"), "{}", d.message);
    let d = one_diag("import \"d\" { }");
    assert_eq!(d.code, Code::Missing);
    assert!(d.message.contains("`registry`"), "{}", d.message);
}

#[test]
fn registry_import_round_trips_through_the_parse_cache_format() {
    let text = format!("import \"d\" {{ registry \"a.io/b:1@sha256:{HEX}\"; }}");
    let (targets, diags) = build(&text);
    assert!(diags.is_empty());
    let json = serde_json::to_string(&targets).unwrap();
    assert!(
        json.contains(&format!("\"a.io/b:1@sha256:{HEX}\"")),
        "{json}"
    );
    let back: Vec<Target> = serde_json::from_str(&json).unwrap();
    let (TargetKind::Import(a), TargetKind::Import(b)) = (&targets[0].kind, &back[0].kind) else {
        panic!("imports")
    };
    assert_eq!(a.source, b.source);
    // A stored value that is no reference is refused, not trusted.
    let tampered = json.replace(&format!("a.io/b:1@sha256:{HEX}"), "Not A Ref");
    assert!(serde_json::from_str::<Vec<Target>>(&tampered).is_err());
}

#[test]
fn http_file_parses_with_its_optional_properties() {
    let hex = "0123456789abcdef".repeat(4);
    let text = format!(
        "http-file \"jq\" url=\"https://example.com/jq-1.7\" sha256=\"{}\" size=123 executable=#true\n\
         http-file \"plain\" url=\"HTTP://127.0.0.1:8080/a?b=c\" sha256=\"sha256:{hex}\"\n",
        hex.to_uppercase()
    );
    let (targets, diags) = build(&text);
    assert!(diags.is_empty(), "{diags:?}");
    let TargetKind::HttpFile(jq) = &targets[0].kind else {
        panic!("not an http-file: {:?}", targets[0].kind);
    };
    assert_eq!(jq.url.value, "https://example.com/jq-1.7");
    assert_eq!(jq.sha256.value.hex(), hex, "upper case is read as lower");
    assert_eq!(jq.size.as_ref().map(|s| s.value), Some(123));
    assert!(jq.executable);
    assert_eq!(
        &text[jq.url.span.offset()..][..jq.url.span.len()],
        "\"https://example.com/jq-1.7\""
    );
    let TargetKind::HttpFile(plain) = &targets[1].kind else {
        panic!("not an http-file");
    };
    assert_eq!(plain.sha256.value.hex(), hex);
    assert!(plain.size.is_none() && !plain.executable);
    assert_eq!(targets[1].kind.kind_name(), "http-file");
}

#[test]
fn http_file_urls_are_checked() {
    let hex = "ab".repeat(32);
    let cases = [
        ("ftp://example.com/x", "must be http:// or https://"),
        ("file:///etc/passwd", "must be http:// or https://"),
        ("example.com/x", "must start with http:// or https://"),
        ("https:///x", "has no host"),
        ("https://u:p@example.com/x", "holds credentials"),
        ("https://example.com/a b", "printable ASCII only"),
        ("https://example.com/é", "printable ASCII only"),
        ("https://example.com:80a/x", "port that is not a number"),
        ("https://example.com/x#frag", "has a fragment"),
    ];
    for (url, why) in cases {
        let d = one_diag(&format!("http-file \"f\" url=\"{url}\" sha256=\"{hex}\"\n"));
        assert_eq!(d.code, Code::BadUrl, "{url}: {d:?}");
        assert!(d.message.contains(why), "{url}: {}", d.message);
        assert!(!d.message.contains("u:p@"), "{}", d.message);
    }
    for url in [
        "http://127.0.0.1:8080/x",
        "https://[::1]:8443/x",
        "https://example.com",
        "https://example.com/dl?version=1&arch=amd64",
    ] {
        let (_, diags) = build(&format!("http-file \"f\" url=\"{url}\" sha256=\"{hex}\"\n"));
        assert!(diags.is_empty(), "{url}: {diags:?}");
    }
}

#[test]
fn http_file_needs_a_well_formed_sha256() {
    for (sha, code) in [
        ("abc", Code::BadChecksum),
        (&"g".repeat(64)[..], Code::BadChecksum),
        (&format!("md5:{}", "a".repeat(64))[..], Code::BadChecksum),
    ] {
        let d = one_diag(&format!(
            "http-file \"f\" url=\"https://e.com/x\" sha256=\"{sha}\"\n"
        ));
        assert_eq!(d.code, code, "{sha}: {d:?}");
    }
    let d = one_diag("http-file \"f\" url=\"https://e.com/x\"\n");
    assert_eq!(d.code, Code::Missing);
    assert!(d.message.contains("sha256="), "{}", d.message);
    let d = one_diag(&format!("http-file \"f\" sha256=\"{}\"\n", "a".repeat(64)));
    assert_eq!(d.code, Code::Missing);
    let d = one_diag(&format!(
        "http-file \"f\" url=\"https://e.com/x\" sha256=\"{}\" size=-1\n",
        "a".repeat(64)
    ));
    assert_eq!(d.code, Code::InvalidValue);
    let d = one_diag(&format!(
        "http-file \"f\" url=\"https://e.com/x\" sha256=\"{}\" {{ copy \"a\" to=\"/a\" }}\n",
        "a".repeat(64)
    ));
    assert_eq!(d.code, Code::UnknownNode, "{d:?}");
}
// -- debian and packages -------------------------------------------------------

#[test]
fn debian_repositories_parse_with_spans_and_defaults() {
    let text = "workspace {}\ndebian \"bookworm\" {\n    url \"http://deb.example/debian/\"\n    suite \"bookworm\"\n    components \"main\" \"contrib\"\n    arch \"amd64\"\n    keyring \"keys/./d.gpg\"\n}\n";
    let (config, diags) = parse_workspace_file(0, text);
    assert!(diags.is_empty(), "{diags:#?}");
    let r = &config.debian[0];
    assert_eq!(r.name.value, "bookworm");
    assert_eq!(r.url.value, "http://deb.example/debian");
    assert_eq!(r.components.value, ["main", "contrib"]);
    assert_eq!(r.keyring.as_ref().unwrap().value, "keys/d.gpg");
    assert_eq!(&text[r.suite.span.offset()..][..10], "\"bookworm\"");
}

#[test]
fn packages_parse_into_requests() {
    let text = "layer \"l\" {\n    packages \"tzdata=2024a-0+deb12u1\" \"libc6\" from=\"bookworm\" recommends=#true\n}\nimage \"i\" {\n    from \"scratch\"\n    packages \"redis-server=5:7.0.15-1~deb12u1\"\n}\n";
    let (targets, diags) = parse_build_file(0, "p", text);
    assert!(diags.is_empty(), "{diags:#?}");
    let TargetKind::Layer(l) = &targets[0].kind else {
        panic!("a layer")
    };
    let p = &l.packages[0];
    assert!(p.recommends);
    assert_eq!(p.from.as_ref().unwrap().value, "bookworm");
    assert_eq!(p.requests[0].value.name, "tzdata");
    assert_eq!(
        p.requests[0].value.version.as_deref(),
        Some("2024a-0+deb12u1")
    );
    assert_eq!(p.requests[1].value.to_string(), "libc6");
    let TargetKind::Image(i) = &targets[1].kind else {
        panic!("an image")
    };
    assert_eq!(
        i.packages[0].requests[0].value.version.as_deref(),
        Some("5:7.0.15-1~deb12u1")
    );
    assert!(!i.packages[0].recommends);
}

#[test]
fn bad_package_requests_are_refused() {
    for bad in [
        "",
        "a",
        "Redis",
        "-x",
        "libc6:amd64",
        "xy=",
        "xy=a1",
        "xy=1:",
        "xy=1.0-",
        "xy=1 2",
    ] {
        assert!(PackageRequest::parse(bad).is_err(), "{bad:?} accepted");
    }
    for good in [
        "libc6",
        "g++-12",
        "xy=1.0",
        "xy=1:2.3-4+deb12u1",
        "xy=2024a-0+deb12u1",
        "xy=1.0~rc1",
    ] {
        assert!(PackageRequest::parse(good).is_ok(), "{good:?} refused");
    }
}
