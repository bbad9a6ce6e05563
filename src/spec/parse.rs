//! Parsing and lowering of `imgc.kdl` and `BUILD.kdl` files (pure: no IO).
//!
//! [`parse_workspace_file`] and [`parse_build_file`] take the text of one file and
//! return the typed, spanned model of [`super::model`] together with *every*
//! diagnostic of the file: an error in one node does not stop the others from being
//! checked. Each diagnostic points at the offending node, value or property.
//!
//! Inline `layer { ... }` blocks of an image are lowered into separate layer targets
//! named by [`inline_layer_name`], placed right after their image in the result, and
//! referenced from the image's `layers` at the position where they were written.

use crate::diag::{Code, Diag, did_you_mean};
use crate::label::{Label, Pattern, check_target_name};
use crate::spec::model::{
    BaseRef, Compression, CopySource, DebianRepo, FileId, HttpFileSpec, ImageSpec, ImportSource,
    ImportSpec, LayerEntry, LayerSpec, Mode, Owner, PackageRequest, PackagesNode, Platform, Policy,
    RegistryRef, RequireBase, Spanned, Target, TargetKind, WorkspaceConfig, inline_layer_name,
};
use crate::spec::paths::{Rejection, check_image_path, normalize_expose, normalize_source};
use crate::spec::reader::{Ctx, Parts, head_span, name, value_span};
use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;
use std::collections::HashMap;

const WORKSPACE_NODES: &[&str] = &[
    "output-dir",
    "source-date-epoch",
    "compression",
    "platform",
    "remote-cache",
];
const WORKSPACE_FILE_NODES: &[&str] = &["workspace", "policy", "debian"];
const DEBIAN_NODES: &[&str] = &["url", "suite", "components", "arch", "keyring"];
const POLICY_NODES: &[&str] = &["require-base"];
const TARGET_NODES: &[&str] = &["layer", "image", "import", "http-file"];
const HTTP_FILE_PROPS: &[&str] = &["url", "sha256", "size", "executable"];
const LAYER_NODES: &[&str] = &["copy", "text", "dir", "symlink", "owner", "packages"];
const IMAGE_NODES: &[&str] = &[
    "from",
    "layers",
    "layer",
    "entrypoint",
    "cmd",
    "env",
    "workdir",
    "user",
    "expose",
    "volume",
    "label",
    "annotation",
    "stop-signal",
    "tag",
    "packages",
];
const IMPORT_NODES: &[&str] = &["oci-layout", "docker-archive", "registry"];

// ---------------------------------------------------------------------------
// imgc.kdl

/// Parses the text of `imgc.kdl`. Settings that are missing or wrong keep their
/// defaults from [`WorkspaceConfig::default`].
pub fn parse_workspace_file(file: FileId, text: &str) -> (WorkspaceConfig, Vec<Diag>) {
    let mut cx = Ctx::new(file, text);
    let mut config = WorkspaceConfig::default();
    if let Some(doc) = cx.parse_kdl() {
        let mut first: Option<usize> = None;
        let mut first_policy: Option<usize> = None;
        for node in doc.nodes() {
            if name(node) == "policy" {
                if let Some(line) = first_policy.map(|o| cx.line_of(o)) {
                    let d = cx.diag(
                        Code::Duplicate,
                        node.name().span(),
                        format!("`policy` is given twice (first on line {line})"),
                        "given again here",
                    );
                    cx.push(d.help("merge both into one `policy { ... }`"));
                    continue;
                }
                first_policy = Some(node.span().offset());
                policy_node(&mut cx, node, &mut config.policy);
                continue;
            }
            if name(node) == "debian" {
                debian_node(&mut cx, node, &mut config.debian);
                continue;
            }
            if name(node) != "workspace" {
                cx.unknown_node(node, "imgc.kdl", WORKSPACE_FILE_NODES);
                continue;
            }
            if let Some(line) = first.map(|o| cx.line_of(o)) {
                let d = cx.diag(
                    Code::Duplicate,
                    node.name().span(),
                    format!("`workspace` is given twice (first on line {line})"),
                    "given again here",
                );
                cx.push(d.help("merge both into one `workspace { ... }`"));
                continue;
            }
            first = Some(node.span().offset());
            workspace_node(&mut cx, node, &mut config);
        }
        if first.is_none() {
            let d = cx.diag(
                Code::Missing,
                SourceSpan::from(0..0),
                "imgc.kdl has no `workspace` node".into(),
                "expected here",
            );
            cx.push(d.help("add `workspace {}` (all settings have defaults)"));
        }
    }
    (config, cx.finish())
}

fn workspace_node(cx: &mut Ctx, node: &KdlNode, config: &mut WorkspaceConfig) {
    let parts = cx.parts(node, Some(&[]));
    cx.exact_args(node, &parts.args, 0, "no values");
    let Some(children) = node.children() else {
        return;
    };
    let mut seen = HashMap::new();
    for child in children.nodes() {
        if !WORKSPACE_NODES.contains(&name(child)) {
            cx.unknown_node(child, "`workspace`", WORKSPACE_NODES);
            if name(child) == "policy"
                && let Some(d) = cx.diags.last_mut()
            {
                d.help = Some("`policy { ... }` is a node of its own, beside `workspace`".into());
            }
            continue;
        }
        cx.no_children(child);
        if cx.singleton(&mut seen, child) {
            workspace_setting(cx, child, config);
        }
    }
}

fn workspace_setting(cx: &mut Ctx, node: &KdlNode, config: &mut WorkspaceConfig) {
    let key = name(node);
    let parts = cx.parts(node, Some(&[]));
    let Some(args) = cx.exact_args(node, &parts.args, 1, "one value") else {
        return;
    };
    let e = args[0];
    if key == "source-date-epoch" {
        if let Some(v) = source_date_epoch(cx, e) {
            config.source_date_epoch = v;
        }
        return;
    }
    let Some(s) = cx.string(e, &format!("`{key}`")) else {
        return;
    };
    match key {
        "output-dir" => {
            if let Some(dir) = output_dir(cx, &s) {
                config.output_dir = dir;
                config.output_dir_span = Some(s.span);
            }
        }
        "compression" => {
            if let Some(c) = compression(cx, &s) {
                config.compression = c;
            }
        }
        "platform" => {
            if let Some(p) = platform(cx, &s) {
                config.platform = p;
            }
        }
        _ => {
            if non_empty(cx, &s, "`remote-cache`") {
                config.remote_cache = Some(s.value);
            }
        }
    }
}

// -- debian ------------------------------------------------------------------

fn debian_node(cx: &mut Ctx, node: &KdlNode, repos: &mut Vec<DebianRepo>) {
    let parts = cx.parts(node, Some(&[]));
    let repo_name = cx
        .exact_args(
            node,
            &parts.args,
            1,
            "a name, like `debian \"bookworm\" { ... }`",
        )
        .and_then(|args| cx.string(args[0], "the repository name"));
    let repo_name = repo_name.and_then(|n| repository_name(cx, n));
    let mut seen = HashMap::new();
    let mut url = None;
    let mut suite = None;
    let mut components = None;
    let mut arch = None;
    let mut keyring = None;
    for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
        let key = name(child);
        if !DEBIAN_NODES.contains(&key) {
            cx.unknown_node(child, "a `debian` repository", DEBIAN_NODES);
            continue;
        }
        cx.no_children(child);
        if !cx.singleton(&mut seen, child) {
            continue;
        }
        let parts = cx.parts(child, Some(&[]));
        if key == "components" {
            if cx.some_args(
                child,
                &parts.args,
                "one or more component names, like \"main\"",
            ) {
                let all = cx.strings(&parts.args, "a component");
                if all.len() == parts.args.len() {
                    components = debian_components(cx, child, all);
                }
            }
            continue;
        }
        let Some(args) = cx.exact_args(child, &parts.args, 1, "one value") else {
            continue;
        };
        let Some(v) = cx.string(args[0], &format!("`{key}`")) else {
            continue;
        };
        match key {
            "url" => url = debian_url(cx, v),
            "suite" => suite = debian_word(cx, v, "`suite`", "bookworm"),
            "arch" => arch = debian_word(cx, v, "`arch`", "amd64"),
            _ => {
                keyring = match normalize_source("`keyring`", "", &v.value) {
                    Ok(p) if p != "." => Some(Spanned::new(p, v.span)),
                    Ok(_) => {
                        let d = cx.diag(
                            Code::InvalidValue,
                            v.span,
                            "`keyring` names a directory".into(),
                            "not a file",
                        );
                        cx.push(d.help(
                            "name a keyring file in the workspace, like \"keys/debian.gpg\"",
                        ));
                        None
                    }
                    Err(r) => {
                        cx.reject(v.span, r);
                        None
                    }
                }
            }
        }
    }
    let head = head_span(node);
    for (key, a, missing, example) in [
        (
            "url",
            "a",
            url.is_none(),
            "url \"http://deb.debian.org/debian\"",
        ),
        ("suite", "a", suite.is_none(), "suite \"bookworm\""),
        (
            "components",
            "a",
            components.is_none(),
            "components \"main\"",
        ),
        ("arch", "an", arch.is_none(), "arch \"amd64\""),
    ] {
        if missing && !seen.contains_key(key) {
            cx.missing(
                head,
                format!("`debian` needs {a} `{key}`"),
                &format!("add `{example}`"),
            );
        }
    }
    let (Some(name), Some(url), Some(suite), Some(components), Some(arch)) =
        (repo_name, url, suite, components, arch)
    else {
        return;
    };
    if let Some(first) = repos.iter().find(|r| r.name.value == name.value) {
        let line = cx.line_of(first.span.offset());
        let d = cx.diag(
            Code::Duplicate,
            name.span,
            format!(
                "repository `{}` is declared twice (first on line {line})",
                name.value
            ),
            "declared again here",
        );
        cx.push(d.help("rename one of the repositories"));
        return;
    }
    repos.push(DebianRepo {
        name,
        url,
        suite,
        components,
        arch,
        keyring,
        span: head,
    });
}

fn repository_name(cx: &mut Ctx, n: Spanned<String>) -> Option<Spanned<String>> {
    let ok = !n.value.is_empty()
        && n.value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        return Some(n);
    }
    let d = cx.diag(
        Code::InvalidValue,
        n.span,
        format!(
            "repository name \"{}\" must be ASCII letters, digits and `- _ .`",
            n.value
        ),
        "invalid name",
    );
    cx.push(d.help("name it like the suite, for example \"bookworm\""));
    None
}

fn debian_url(cx: &mut Ctx, v: Spanned<String>) -> Option<Spanned<String>> {
    let rest = v
        .value
        .strip_prefix("http://")
        .or_else(|| v.value.strip_prefix("https://"));
    let why = match rest {
        None => Some("must start with `http://` or `https://`"),
        Some(r) if r.is_empty() || r.starts_with('/') => Some("names no host"),
        Some(r) if r.contains(['?', '#', ' ']) || r.chars().any(|c| c.is_control()) => {
            Some("may not hold a query, a fragment, spaces or control characters")
        }
        Some(r) if r.split('/').next().is_some_and(|h| h.contains('@')) => {
            Some("may not hold credentials")
        }
        Some(_) => None,
    };
    if let Some(why) = why {
        let d = cx.diag(
            Code::InvalidValue,
            v.span,
            format!("the repository URL \"{}\" {why}", v.value),
            "invalid URL",
        );
        cx.push(
            d.help("write the URL of the repository's root, like \"http://deb.debian.org/debian\""),
        );
        return None;
    }
    let trimmed = v.value.trim_end_matches('/').to_string();
    Some(Spanned::new(trimmed, v.span))
}

/// A suite or an architecture: one path segment of a repository URL.
fn debian_word(
    cx: &mut Ctx,
    v: Spanned<String>,
    what: &str,
    example: &str,
) -> Option<Spanned<String>> {
    let ok = !v.value.is_empty()
        && v.value != "."
        && v.value != ".."
        && v.value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+~".contains(c));
    if ok {
        return Some(v);
    }
    let d = cx.diag(
        Code::InvalidValue,
        v.span,
        format!(
            "{what} must be one word of ASCII letters, digits and `- _ . + ~`, got \"{}\"",
            v.value
        ),
        "invalid value",
    );
    cx.push(d.help(format!("for example \"{example}\"")));
    None
}

fn debian_components(
    cx: &mut Ctx,
    node: &KdlNode,
    all: Vec<Spanned<String>>,
) -> Option<Spanned<Vec<String>>> {
    let mut out: Vec<String> = Vec::new();
    for c in all {
        // A component may have a directory part (`updates/main`), never `..`.
        let ok = !c.value.is_empty()
            && c.value.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.+~".contains(ch))
            });
        if !ok {
            let d = cx.diag(
                Code::InvalidValue,
                c.span,
                format!("\"{}\" is not a component name", c.value),
                "invalid component",
            );
            cx.push(d.help("for example \"main\" or \"contrib\""));
            return None;
        }
        if out.contains(&c.value) {
            let d = cx.diag(
                Code::Duplicate,
                c.span,
                format!("component \"{}\" is given twice", c.value),
                "given again here",
            );
            cx.push(d.help("keep one"));
            return None;
        }
        out.push(c.value);
    }
    Some(Spanned::new(out, head_span(node)))
}

// -- policy ------------------------------------------------------------------

fn policy_node(cx: &mut Ctx, node: &KdlNode, policy: &mut Policy) {
    let parts = cx.parts(node, Some(&[]));
    cx.exact_args(node, &parts.args, 0, "no values");
    for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
        if !POLICY_NODES.contains(&name(child)) {
            cx.unknown_node(child, "`policy`", POLICY_NODES);
            continue;
        }
        cx.no_children(child);
        let Some(rule) = require_base(cx, child) else {
            continue;
        };
        let same = policy
            .require_base
            .iter()
            .find(|r| r.base.value == rule.base.value && r.pattern() == rule.pattern());
        if let Some(first) = same {
            let line = cx.line_of(first.span.offset());
            let d = cx.diag(
                Code::Duplicate,
                rule.span,
                format!("this `require-base` rule is given twice (first on line {line})"),
                "given again here",
            );
            cx.push(d.help("keep one of the two lines"));
            continue;
        }
        policy.require_base.push(rule);
    }
}

fn require_base(cx: &mut Ctx, node: &KdlNode) -> Option<RequireBase> {
    let parts = cx.parts(node, Some(&["for"]));
    let what = "the label of the required base, like `require-base \"//bases:runtime\"`";
    let base = cx
        .exact_args(node, &parts.args, 1, what)
        .and_then(|args| cx.string(args[0], "the `require-base` label"))
        .and_then(|s| policy_label(cx, &s));
    let scope = match parts.prop("for") {
        None => None,
        Some(e) => {
            let s = cx.string(e, "`for`")?;
            Some(policy_pattern(cx, &s)?)
        }
    };
    Some(RequireBase {
        base: base?,
        scope,
        span: head_span(node),
    })
}

/// The label of a required base: absolute (`//package:name`), as imgc.kdl
/// belongs to no package.
fn policy_label(cx: &mut Ctx, s: &Spanned<String>) -> Option<Spanned<Label>> {
    let v = s.value.as_str();
    let (why, help) = if v == "scratch" {
        (
            "`scratch` is no target: a policy requires an image or an import".to_string(),
            "name the image or import every image in scope must be built on".to_string(),
        )
    } else if let Some(name) = v.strip_prefix(':') {
        (
            format!("`{v}` is relative, and imgc.kdl belongs to no package"),
            format!("write the label in full: `//:{name}`"),
        )
    } else if !v.starts_with("//") {
        (
            format!("`{v}` is not a label"),
            match v.contains(':') {
                true => format!("did you mean `//{v}`?"),
                false => "labels in imgc.kdl look like `//package:name`".to_string(),
            },
        )
    } else {
        match Label::parse_in(v, "") {
            Ok(l) => return Some(Spanned::new(l, s.span)),
            Err(e) => (e.0, "labels look like `//package:name`".to_string()),
        }
    };
    let d = cx.diag(
        Code::BadLabel,
        s.span,
        format!("bad label in `require-base`: {why}"),
        "bad label",
    );
    cx.push(d.help(help));
    None
}

/// The `for` of a rule: one absolute target pattern (`//...`, `//services/...`,
/// `//services/api:all`, a label).
fn policy_pattern(cx: &mut Ctx, s: &Spanned<String>) -> Option<Spanned<Pattern>> {
    let v = s.value.as_str();
    let parsed = if v.starts_with('-') {
        Err((
            format!("`{v}` subtracts, and `for` selects"),
            "write the pattern the rule is about, like `//services/...`".to_string(),
        ))
    } else if !v.starts_with("//") {
        Err((
            format!("`{v}` is relative, and imgc.kdl belongs to no package"),
            format!("write the pattern in full: `//{v}`"),
        ))
    } else {
        Pattern::parse(v, "").map_err(|e| {
            (
                e.0,
                "patterns look like `//...`, `//services/...`, `//services/api:all` or a label"
                    .to_string(),
            )
        })
    };
    match parsed {
        Ok(p) => Some(Spanned::new(p, s.span)),
        Err((why, help)) => {
            let d = cx.diag(
                Code::BadLabel,
                s.span,
                format!("bad target pattern in `for`: {why}"),
                "bad pattern",
            );
            cx.push(d.help(help));
            None
        }
    }
}

fn source_date_epoch(cx: &mut Ctx, e: &KdlEntry) -> Option<u64> {
    let span = value_span(e);
    let bad = |cx: &mut Ctx, code: Code, what: String| {
        let d = cx.diag(
            code,
            span,
            format!("`source-date-epoch` must be a non-negative integer, got {what}"),
            "not a non-negative integer",
        );
        cx.push(d.help("write seconds since 1970-01-01 UTC, like `source-date-epoch 0`"));
        None
    };
    match e.value() {
        KdlValue::Integer(i) => match u64::try_from(*i) {
            Ok(v) => Some(v),
            Err(_) => bad(cx, Code::InvalidValue, i.to_string()),
        },
        other => bad(cx, Code::WrongType, crate::spec::reader::describe(other)),
    }
}

fn output_dir(cx: &mut Ctx, s: &Spanned<String>) -> Option<String> {
    match normalize_source("`output-dir`", "", &s.value) {
        Ok(dir) if dir.split('/').next() == Some(".git") => {
            let d = cx.diag(
                Code::InvalidValue,
                s.span,
                format!(
                    "`output-dir` may not be `.git` or inside it, got \"{}\"",
                    s.value
                ),
                "invalid output directory",
            );
            cx.push(d.help("name a directory of its own below the root, like \"imgc-out\""));
            None
        }
        Ok(dir) if dir != "." => Some(dir),
        Ok(_) => {
            let d = cx.diag(
                Code::InvalidValue,
                s.span,
                "`output-dir` may not be the workspace root itself".into(),
                "invalid output directory",
            );
            cx.push(d.help("name a directory below the root, like \"imgc-out\""));
            None
        }
        Err(r) => {
            cx.reject(s.span, r);
            None
        }
    }
}

fn compression(cx: &mut Ctx, s: &Spanned<String>) -> Option<Compression> {
    match s.value.as_str() {
        "gzip" => Some(Compression::Gzip),
        "zstd" => Some(Compression::Zstd),
        other => {
            let d = cx.diag(
                Code::InvalidValue,
                s.span,
                format!("unknown compression \"{other}\""),
                "unknown compression",
            );
            let help = match did_you_mean(other, ["gzip", "zstd"]) {
                Some(m) => format!("did you mean \"{m}\"?"),
                None => "use \"gzip\" or \"zstd\"".to_string(),
            };
            cx.push(d.help(help));
            None
        }
    }
}

fn platform(cx: &mut Ctx, s: &Spanned<String>) -> Option<Platform> {
    let p = Platform::parse(&s.value);
    if p.is_none() {
        let d = cx.diag(
            Code::InvalidValue,
            s.span,
            format!(
                "`platform` must be \"os/arch\" or \"os/arch/variant\", got \"{}\"",
                s.value
            ),
            "invalid platform",
        );
        cx.push(d.help("for example \"linux/amd64\" or \"linux/arm64/v8\""));
    }
    p
}

fn non_empty(cx: &mut Ctx, s: &Spanned<String>, what: &str) -> bool {
    if !s.value.is_empty() {
        return true;
    }
    let d = cx.diag(
        Code::InvalidValue,
        s.span,
        format!("{what} may not be empty"),
        "empty",
    );
    cx.push(d);
    false
}

impl Ctx<'_> {
    fn reject(&mut self, span: SourceSpan, r: Rejection) {
        let label = match r.code {
            Code::PathEscapes => "leaves the workspace",
            _ => "invalid path",
        };
        let d = self.diag(r.code, span, r.message, label);
        self.push(d.help(r.help));
    }
}

// ---------------------------------------------------------------------------
// BUILD.kdl

/// Parses the text of the BUILD.kdl of package `package` (workspace-relative,
/// `""` for the root). Returns the targets in the order written, each image
/// followed by its lowered inline layers.
pub fn parse_build_file(file: FileId, package: &str, text: &str) -> (Vec<Target>, Vec<Diag>) {
    let mut cx = Ctx::new(file, text);
    let mut targets = Vec::new();
    if let Some(doc) = cx.parse_kdl() {
        let mut b = Build {
            cx: &mut cx,
            package,
            names: HashMap::new(),
        };
        for node in doc.nodes() {
            b.target(node, &mut targets);
        }
    }
    (targets, cx.finish())
}

struct Build<'c, 'a> {
    cx: &'c mut Ctx<'a>,
    package: &'a str,
    /// Target names seen so far and the offset of their definition.
    names: HashMap<String, usize>,
}

impl Build<'_, '_> {
    fn target(&mut self, node: &KdlNode, out: &mut Vec<Target>) {
        let kind = name(node);
        if !TARGET_NODES.contains(&kind) {
            self.cx.unknown_node(node, "a BUILD.kdl", TARGET_NODES);
            if kind == "workspace" {
                if let Some(d) = self.cx.diags.last_mut() {
                    d.help = Some("`workspace` belongs in imgc.kdl at the workspace root".into());
                }
            }
            return;
        }
        let allowed: &[&str] = if kind == "http-file" {
            HTTP_FILE_PROPS
        } else {
            &[]
        };
        let parts = self.cx.parts(node, Some(allowed));
        let target_name = self.target_name(node, &parts);
        match kind {
            "http-file" => {
                self.cx.no_children(node);
                let spec = self.http_file(node, &parts);
                if let (Some(n), Some(spec)) = (target_name, spec) {
                    out.push(target(n, node, TargetKind::HttpFile(spec)));
                }
            }
            "layer" => {
                let spec = self.layer_body(node);
                if let Some(n) = target_name {
                    out.push(target(n, node, TargetKind::Layer(spec)));
                }
            }
            "image" => self.image(node, target_name, out),
            _ => {
                let spec = self.import_body(node);
                if let (Some(n), Some(spec)) = (target_name, spec) {
                    out.push(target(n, node, TargetKind::Import(spec)));
                }
            }
        }
    }

    fn target_name(&mut self, node: &KdlNode, parts: &Parts) -> Option<Spanned<String>> {
        let kind = name(node);
        let what = format!("a name, like `{kind} \"app\" {{ ... }}`");
        let args = self.cx.exact_args(node, &parts.args, 1, &what)?;
        let s = self.cx.string(args[0], "a target name")?;
        if let Err(e) = check_target_name(&s.value) {
            let d = self
                .cx
                .diag(Code::InvalidValue, s.span, e.0, "invalid name");
            let help = "use ASCII letters, digits and `_ - . +`, not starting with `.`";
            self.cx.push(d.help(help));
            return None;
        }
        if let Some(first) = self.names.get(&s.value) {
            let line = self.cx.line_of(*first);
            let d = self.cx.diag(
                Code::DuplicateTarget,
                s.span,
                format!(
                    "target `{}` is already defined in this package (first on line {line})",
                    s.value
                ),
                "defined again here",
            );
            self.cx.push(d.help("rename one of the targets"));
            return None;
        }
        self.names.insert(s.value.clone(), s.span.offset());
        Some(s)
    }

    // -- labels and values ----------------------------------------------------

    fn label(&mut self, s: &Spanned<String>, what: &str) -> Option<Spanned<Label>> {
        match Label::parse_in(&s.value, self.package) {
            Ok(l) => Some(Spanned::new(l, s.span)),
            Err(e) => {
                let d = self.cx.diag(
                    Code::BadLabel,
                    s.span,
                    format!("bad label in {what}: {}", e.0),
                    "bad label",
                );
                self.cx.push(d.help(label_help(&s.value)));
                None
            }
        }
    }

    fn string_prop(&mut self, parts: &Parts, key: &str) -> Option<Spanned<String>> {
        let e = parts.prop(key)?;
        self.cx.string(e, &format!("`{key}`"))
    }

    fn mode(&mut self, parts: &Parts) -> Option<Spanned<Mode>> {
        let e = parts.prop("mode")?;
        if let KdlValue::Integer(_) = e.value() {
            return self.mode_number(e);
        }
        let s = self.cx.string(e, "`mode`")?;
        if let Some(m) = Mode::parse(&s.value) {
            return Some(Spanned::new(m, s.span));
        }
        let d = self.cx.diag(
            Code::BadMode,
            s.span,
            format!(
                "`mode` must be an octal string like \"0644\", got \"{}\"",
                s.value
            ),
            "bad mode",
        );
        let help = "write 3 or 4 octal digits: \"0644\", \"0755\", \"1777\", \"4755\"";
        self.cx.push(d.help(help));
        None
    }

    fn mode_number(&mut self, e: &KdlEntry) -> Option<Spanned<Mode>> {
        let repr = e.format().map(|f| f.value_repr.clone()).unwrap_or_default();
        let d = self.cx.diag(
            Code::WrongType,
            value_span(e),
            format!("`mode` must be an octal string like \"0644\", got the number {repr}"),
            "not a string",
        );
        let digits = repr.trim_start_matches("0o");
        self.cx.push(d.help(format!("quote it: mode=\"{digits}\"")));
        None
    }

    fn owner_value(&mut self, s: Spanned<String>) -> Option<Spanned<Owner>> {
        if let Some(o) = Owner::parse(&s.value) {
            return Some(Spanned::new(o, s.span));
        }
        let d = self.cx.diag(
            Code::BadOwner,
            s.span,
            format!(
                "`owner` must be \"UID:GID\" in numbers, like \"10001:10001\", got \"{}\"",
                s.value
            ),
            "bad owner",
        );
        self.cx
            .push(d.help("user and group names are not resolved: write the numeric ids"));
        None
    }

    fn owner(&mut self, parts: &Parts) -> Option<Spanned<Owner>> {
        let s = self.string_prop(parts, "owner")?;
        self.owner_value(s)
    }

    fn image_path(&mut self, s: Spanned<String>, what: &str) -> Option<Spanned<String>> {
        match check_image_path(what, &s.value) {
            Ok(()) => Some(s),
            Err(r) => {
                self.cx.reject(s.span, r);
                None
            }
        }
    }

    fn source_path(&mut self, s: &Spanned<String>, what: &str) -> Option<String> {
        match normalize_source(what, self.package, &s.value) {
            Ok(p) => Some(p),
            Err(r) => {
                self.cx.reject(s.span, r);
                None
            }
        }
    }

    // -- layer ------------------------------------------------------------------

    fn layer_body(&mut self, node: &KdlNode) -> LayerSpec {
        let mut spec = LayerSpec::default();
        let Some(children) = node.children() else {
            return spec;
        };
        let mut seen = HashMap::new();
        for child in children.nodes() {
            let kind = name(child);
            if !LAYER_NODES.contains(&kind) {
                self.cx.unknown_node(child, "a `layer`", LAYER_NODES);
                continue;
            }
            self.cx.no_children(child);
            if kind == "owner" {
                if self.cx.singleton(&mut seen, child) {
                    spec.owner = self.layer_owner(child);
                }
                continue;
            }
            if kind == "packages" {
                if let Some(p) = self.packages(child, &spec.packages) {
                    spec.packages.push(p);
                }
                continue;
            }
            if let Some(entry) = self.layer_entry(child) {
                spec.entries.push(entry);
            }
        }
        spec
    }

    fn layer_owner(&mut self, node: &KdlNode) -> Option<Spanned<Owner>> {
        let parts = self.cx.parts(node, Some(&[]));
        let what = "a \"UID:GID\" argument";
        let args = self.cx.exact_args(node, &parts.args, 1, what)?;
        let s = self.cx.string(args[0], "`owner`")?;
        self.owner_value(s)
    }

    fn layer_entry(&mut self, node: &KdlNode) -> Option<LayerEntry> {
        match name(node) {
            "copy" => self.copy(node),
            "text" => self.text(node),
            "dir" => self.dir(node),
            _ => self.symlink(node),
        }
    }

    fn copy(&mut self, node: &KdlNode) -> Option<LayerEntry> {
        let parts = self
            .cx
            .parts(node, Some(&["to", "mode", "owner", "exclude"]));
        let src = self.copy_source(node, &parts);
        let to = self.required_image_path(node, &parts, "to", "`to`");
        let mode = self.mode(&parts);
        let owner = self.owner(&parts);
        let exclude = self.exclude(&parts);
        if let (
            Some(Spanned {
                value: CopySource::Target(l),
                ..
            }),
            Some(x),
        ) = (&src, exclude.first())
        {
            let d = self.cx.diag(
                Code::InvalidValue,
                x.span,
                "`exclude` does not apply to a `copy` of a target's outputs".to_string(),
                "not with a label",
            );
            self.cx.push(d.help(format!(
                "`exclude` patterns are source paths; leave the files out of `{l}` itself"
            )));
            return None;
        }
        Some(LayerEntry::Copy {
            src: src?,
            to: to?,
            mode,
            owner,
            exclude,
            span: node.span(),
        })
    }

    fn copy_source(&mut self, node: &KdlNode, parts: &Parts) -> Option<Spanned<CopySource>> {
        let what = "a source: a path, a glob or a label like \":server-bin\"";
        let args = self.cx.exact_args(node, &parts.args, 1, what)?;
        let s = self.cx.string(args[0], "the `copy` source")?;
        if s.value.starts_with(':') || s.value.starts_with("//") {
            let l = self.label(&s, "`copy`")?;
            return Some(Spanned::new(CopySource::Target(l.value), s.span));
        }
        let path = self.source_path(&s, "source path")?;
        let src = if path.contains(['*', '?', '[', '{']) {
            CopySource::Glob(path)
        } else {
            CopySource::Path(path)
        };
        Some(Spanned::new(src, s.span))
    }

    fn required_image_path(
        &mut self,
        node: &KdlNode,
        parts: &Parts,
        key: &str,
        what: &str,
    ) -> Option<Spanned<String>> {
        if parts.prop(key).is_none() {
            let n = name(node);
            let msg = format!("`{n}` needs a `{key}=` property");
            let help = format!("add `{key}=\"/path/in/image\"`");
            self.cx.missing(head_span(node), msg, &help);
            return None;
        }
        let s = self.string_prop(parts, key)?;
        self.image_path(s, what)
    }

    fn exclude(&mut self, parts: &Parts) -> Vec<Spanned<String>> {
        let Some(s) = self.string_prop(parts, "exclude") else {
            return Vec::new();
        };
        match self.source_path(&s, "`exclude` pattern") {
            Some(p) => vec![Spanned::new(p, s.span)],
            None => Vec::new(),
        }
    }

    fn text(&mut self, node: &KdlNode) -> Option<LayerEntry> {
        let parts = self.cx.parts(node, Some(&["mode", "owner"]));
        let what = "a path and its content, like `text \"/etc/version\" \"1.0\\n\"`";
        let args = self.cx.exact_args(node, &parts.args, 2, what);
        let mode = self.mode(&parts);
        let owner = self.owner(&parts);
        let args = args?;
        let path = self.cx.string(args[0], "the `text` path");
        let content = self.cx.string(args[1], "the `text` content");
        let path = self.image_path(path?, "the `text` path")?;
        Some(LayerEntry::Text {
            path,
            content: content?.value,
            mode,
            owner,
            span: node.span(),
        })
    }

    fn dir(&mut self, node: &KdlNode) -> Option<LayerEntry> {
        let parts = self.cx.parts(node, Some(&["mode", "owner"]));
        let path = self.one_image_path(node, &parts, "`dir`");
        let mode = self.mode(&parts);
        let owner = self.owner(&parts);
        Some(LayerEntry::Dir {
            path: path?,
            mode,
            owner,
            span: node.span(),
        })
    }

    fn symlink(&mut self, node: &KdlNode) -> Option<LayerEntry> {
        let parts = self.cx.parts(node, Some(&["target", "owner"]));
        let path = self.one_image_path(node, &parts, "`symlink`");
        let target = self.symlink_target(node, &parts);
        let owner = self.owner(&parts);
        Some(LayerEntry::Symlink {
            path: path?,
            target: target?,
            owner,
            span: node.span(),
        })
    }

    fn one_image_path(
        &mut self,
        node: &KdlNode,
        parts: &Parts,
        what: &str,
    ) -> Option<Spanned<String>> {
        let args = self
            .cx
            .exact_args(node, &parts.args, 1, "a path in the image")?;
        let s = self.cx.string(args[0], &format!("the {what} path"))?;
        self.image_path(s, &format!("the {what} path"))
    }

    fn symlink_target(&mut self, node: &KdlNode, parts: &Parts) -> Option<Spanned<String>> {
        if parts.prop("target").is_none() {
            let msg = "`symlink` needs a `target=` property".to_string();
            let help = "add `target=\"/where/it/points\"`";
            self.cx.missing(head_span(node), msg, help);
            return None;
        }
        let s = self.string_prop(parts, "target")?;
        non_empty(self.cx, &s, "`target`").then_some(s)
    }

    // -- packages ---------------------------------------------------------------

    /// `packages "a" "b=1.0" from="repo" recommends=#true`. `earlier` are the
    /// target's `packages` nodes before this one: a name requested twice in one
    /// target is an error.
    fn packages(&mut self, node: &KdlNode, earlier: &[PackagesNode]) -> Option<PackagesNode> {
        let parts = self.cx.parts(node, Some(&["from", "recommends"]));
        let from = match parts.prop("from") {
            None => None,
            Some(e) => {
                let s = self.cx.string(e, "`from`")?;
                non_empty(self.cx, &s, "`from`").then_some(s)?.into()
            }
        };
        let recommends = match parts.prop("recommends") {
            None => false,
            Some(e) => match e.value() {
                KdlValue::Bool(b) => *b,
                other => {
                    let d = self.cx.diag(
                        Code::WrongType,
                        value_span(e),
                        format!(
                            "`recommends` must be #true or #false, got {}",
                            crate::spec::reader::describe(other)
                        ),
                        "not a boolean",
                    );
                    self.cx.push(d.help("write `recommends=#true`"));
                    return None;
                }
            },
        };
        let what = "one or more package names, like `packages \"ca-certificates\" \"tzdata\"`";
        if !self.cx.some_args(node, &parts.args, what) {
            return None;
        }
        let mut requests: Vec<Spanned<PackageRequest>> = Vec::new();
        let mut ok = true;
        for s in self.cx.strings(&parts.args, "a package") {
            let r = match PackageRequest::parse(&s.value) {
                Ok(r) => r,
                Err(why) => {
                    let d =
                        self.cx
                            .diag(Code::BadPackageRequest, s.span, why, "bad package request");
                    self.cx.push(d.help(
                        "write a package name, or pin a version with `name=version`, like \"tzdata=2024a-0+deb12u1\"",
                    ));
                    ok = false;
                    continue;
                }
            };
            let before = earlier
                .iter()
                .flat_map(|p| p.requests.iter())
                .chain(requests.iter())
                .find(|o| o.value.name == r.name);
            if let Some(first) = before {
                let line = self.cx.line_of(first.span.offset());
                let d = self.cx.diag(
                    Code::Duplicate,
                    s.span,
                    format!(
                        "package `{}` is requested twice in this target (first on line {line})",
                        r.name
                    ),
                    "requested again here",
                );
                self.cx.push(d.help("keep one request per package"));
                ok = false;
                continue;
            }
            requests.push(Spanned::new(r, s.span));
        }
        if !ok || requests.len() != parts.args.len() {
            return None;
        }
        Some(PackagesNode {
            requests,
            from,
            recommends,
            span: head_span(node),
        })
    }

    // -- image ------------------------------------------------------------------

    fn image(&mut self, node: &KdlNode, name: Option<Spanned<String>>, out: &mut Vec<Target>) {
        let image_name = name.as_ref().map_or("", |n| n.value.as_str()).to_string();
        let mut spec = ImageSpec::default();
        let mut inline = Vec::new();
        let mut seen = HashMap::new();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            if !IMAGE_NODES.contains(&self::name(child)) {
                self.cx.unknown_node(child, "an `image`", IMAGE_NODES);
                continue;
            }
            if self::name(child) == "layer" {
                self.inline_layer(child, &image_name, &mut spec, &mut inline);
                continue;
            }
            self.cx.no_children(child);
            self.image_child(child, &mut spec, &mut seen);
        }
        if spec.from.is_none() && !seen.contains_key("from") {
            let msg = "`image` needs a `from`".to_string();
            let help = "add `from \"scratch\"` or `from \"//package:base\"` to the image";
            self.cx.missing(head_span(node), msg, help);
        }
        if let Some(n) = name {
            out.push(target(n, node, TargetKind::Image(spec)));
            out.extend(inline);
        }
    }

    fn inline_layer(
        &mut self,
        node: &KdlNode,
        image: &str,
        spec: &mut ImageSpec,
        inline: &mut Vec<Target>,
    ) {
        let parts = self.cx.parts(node, Some(&[]));
        if let Some(first) = parts.args.first() {
            let d = self.cx.diag(
                Code::TooManyValues,
                first.span(),
                "an inline `layer` inside an image takes no name".into(),
                "unexpected name",
            );
            let help =
                "remove the name, or define the layer at the top level and list it in `layers`";
            self.cx.push(d.help(help));
        }
        let body = self.layer_body(node);
        let layer_name = inline_layer_name(image, inline.len());
        let name_span = node.name().span();
        spec.layers.push(Spanned::new(
            Label::new(self.package, layer_name.as_str()),
            name_span,
        ));
        inline.push(Target {
            name: Spanned::new(layer_name, name_span),
            span: node.span(),
            kind: TargetKind::Layer(body),
        });
    }

    fn image_child(
        &mut self,
        node: &KdlNode,
        spec: &mut ImageSpec,
        seen: &mut HashMap<String, usize>,
    ) {
        let kind = name(node);
        let singleton = matches!(
            kind,
            "from" | "entrypoint" | "cmd" | "workdir" | "user" | "stop-signal"
        );
        if singleton && !self.cx.singleton(seen, node) {
            return;
        }
        if kind == "env" {
            self.env(node, spec);
            return;
        }
        if kind == "packages" {
            if let Some(p) = self.packages(node, &spec.packages) {
                spec.packages.push(p);
            }
            return;
        }
        let parts = self.cx.parts(node, Some(&[]));
        match kind {
            "from" => spec.from = self.from(node, &parts),
            "layers" => self.layers(node, &parts, spec),
            "entrypoint" | "cmd" => self.command(node, &parts, spec),
            "workdir" | "user" | "stop-signal" => self.single_string(node, &parts, spec),
            "expose" => self.expose(node, &parts, spec),
            "volume" => self.volume(node, &parts, spec),
            "tag" => self.tag(node, &parts, spec),
            _ => self.key_value(node, &parts, spec),
        }
    }

    fn from(&mut self, node: &KdlNode, parts: &Parts) -> Option<Spanned<BaseRef>> {
        let what = "a base: \"scratch\" or the label of an image or import";
        let args = self.cx.exact_args(node, &parts.args, 1, what)?;
        let s = self.cx.string(args[0], "`from`")?;
        if s.value == "scratch" {
            return Some(Spanned::new(BaseRef::Scratch, s.span));
        }
        let l = self.label(&s, "`from`")?;
        Some(Spanned::new(BaseRef::Target(l.value), l.span))
    }

    fn layers(&mut self, node: &KdlNode, parts: &Parts, spec: &mut ImageSpec) {
        if !self
            .cx
            .some_args(node, &parts.args, "one or more layer labels")
        {
            return;
        }
        for s in self.cx.strings(&parts.args, "a `layers` entry") {
            if let Some(l) = self.label(&s, "`layers`") {
                spec.layers.push(l);
            }
        }
    }

    fn command(&mut self, node: &KdlNode, parts: &Parts, spec: &mut ImageSpec) {
        let kind = name(node);
        if !self.cx.some_args(node, &parts.args, "one or more strings") {
            return;
        }
        let what = format!("a `{kind}` argument");
        let values: Vec<String> = self
            .cx
            .strings(&parts.args, &what)
            .into_iter()
            .map(|s| s.value)
            .collect();
        if values.len() != parts.args.len() {
            return;
        }
        if kind == "entrypoint" {
            spec.entrypoint = Some(values);
        } else {
            spec.cmd = Some(values);
        }
    }

    fn single_string(&mut self, node: &KdlNode, parts: &Parts, spec: &mut ImageSpec) {
        let kind = name(node);
        let Some(args) = self.cx.exact_args(node, &parts.args, 1, "one string") else {
            return;
        };
        let Some(s) = self.cx.string(args[0], &format!("`{kind}`")) else {
            return;
        };
        if !non_empty(self.cx, &s, &format!("`{kind}`")) {
            return;
        }
        match kind {
            "workdir" => spec.workdir = Some(s.value),
            "user" => spec.user = Some(s.value),
            _ => spec.stop_signal = Some(s.value),
        }
    }

    fn expose(&mut self, node: &KdlNode, parts: &Parts, spec: &mut ImageSpec) {
        if !self
            .cx
            .some_args(node, &parts.args, "one or more ports, like \"8080/tcp\"")
        {
            return;
        }
        for s in self.cx.strings(&parts.args, "an `expose` port") {
            match normalize_expose(&s.value) {
                Ok(p) => spec.expose.push(p),
                Err(r) => {
                    let d = self.cx.diag(r.code, s.span, r.message, "invalid port");
                    self.cx.push(d.help(r.help));
                }
            }
        }
    }

    fn volume(&mut self, node: &KdlNode, parts: &Parts, spec: &mut ImageSpec) {
        if !self.cx.some_args(node, &parts.args, "one or more paths") {
            return;
        }
        for s in self.cx.strings(&parts.args, "a `volume` path") {
            if let Some(s) = self.image_path(s, "a `volume` path") {
                spec.volume.push(s.value);
            }
        }
    }

    fn tag(&mut self, node: &KdlNode, parts: &Parts, spec: &mut ImageSpec) {
        if !self
            .cx
            .some_args(node, &parts.args, "one or more image names")
        {
            return;
        }
        for s in self.cx.strings(&parts.args, "a `tag`") {
            if non_empty(self.cx, &s, "a `tag`") {
                spec.tags.push(s);
            }
        }
    }

    fn key_value(&mut self, node: &KdlNode, parts: &Parts, spec: &mut ImageSpec) {
        let kind = name(node);
        let what = format!("a key and a value, like `{kind} \"com.example.team\" \"payments\"`");
        let Some(args) = self.cx.exact_args(node, &parts.args, 2, &what) else {
            return;
        };
        let key = self.cx.string(args[0], &format!("the `{kind}` key"));
        let value = self.cx.string(args[1], &format!("the `{kind}` value"));
        let (Some(key), Some(value)) = (key, value) else {
            return;
        };
        if !non_empty(self.cx, &key, &format!("the `{kind}` key")) {
            return;
        }
        if kind == "annotation" && key.value == "org.opencontainers.image.base.digest" {
            let msg = format!(
                "`{}` is written by imgc: the manifest digest of the image's base",
                key.value
            );
            let d = self
                .cx
                .diag(Code::InvalidValue, key.span, msg, "set by imgc");
            let help = "remove this annotation (`org.opencontainers.image.base.name` may be set)";
            self.cx.push(d.help(help));
            return;
        }
        let list = if kind == "label" {
            &mut spec.labels
        } else {
            &mut spec.annotations
        };
        list.push((key.value, value.value));
    }

    fn env(&mut self, node: &KdlNode, spec: &mut ImageSpec) {
        let parts = self.cx.parts(node, None);
        for e in &parts.args {
            let d = self.cx.diag(
                Code::WrongType,
                e.span(),
                "`env` takes `KEY=\"value\"` properties, not arguments".into(),
                "not a property",
            );
            self.cx
                .push(d.help("write `env PATH=\"/usr/bin:/bin\" RUST_LOG=\"info\"`"));
        }
        if parts.props.is_empty() && parts.args.is_empty() {
            let msg = "`env` needs at least one `KEY=\"value\"` property".to_string();
            let help = "write `env PATH=\"/usr/bin:/bin\"`";
            self.cx.missing(head_span(node), msg, help);
        }
        for e in &parts.props {
            if let Some(kv) = self.env_var(e) {
                spec.env.push(kv);
            }
        }
    }

    fn env_var(&mut self, e: &KdlEntry) -> Option<(String, String)> {
        let key = e.name()?.value().to_string();
        if key.is_empty() || key.contains('=') {
            let d = self.cx.diag(
                Code::InvalidValue,
                e.span(),
                format!("environment variable name \"{key}\" must be non-empty and without `=`"),
                "invalid name",
            );
            self.cx.push(d.help("write `env NAME=\"value\"`"));
            return None;
        }
        let value = self.cx.string(e, &format!("`env` variable `{key}`"))?;
        Some((key, value.value))
    }

    // -- import -----------------------------------------------------------------

    fn import_body(&mut self, node: &KdlNode) -> Option<ImportSpec> {
        let mut source: Option<Spanned<ImportSource>> = None;
        let mut first: Option<&KdlNode> = None;
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            let kind = name(child);
            if !IMPORT_NODES.contains(&kind) {
                self.cx.unknown_node(child, "an `import`", IMPORT_NODES);
                continue;
            }
            self.cx.no_children(child);
            if let Some(f) = first {
                self.second_import_source(child, f);
                continue;
            }
            first = Some(child);
            source = self.import_source(child);
        }
        if first.is_none() {
            let msg =
                "`import` needs an `oci-layout`, a `docker-archive` or a `registry`".to_string();
            let help = "add `oci-layout \"path/to/layout\"`, `docker-archive \"path/to/image.tar\"` \
                        or `registry \"host/repo:tag@sha256:...\"`";
            self.cx.missing(head_span(node), msg, help);
        }
        Some(ImportSpec { source: source? })
    }

    fn second_import_source(&mut self, node: &KdlNode, first: &KdlNode) {
        let line = self.cx.line_of(first.span().offset());
        let d = self.cx.diag(
            Code::Duplicate,
            head_span(node),
            format!(
                "`import` takes exactly one of `oci-layout`, `docker-archive` or `registry` (`{}` on line {line})",
                name(first)
            ),
            "second source",
        );
        self.cx.push(d.help("keep one source per import"));
    }

    fn import_source(&mut self, node: &KdlNode) -> Option<Spanned<ImportSource>> {
        let kind = name(node);
        let parts = self.cx.parts(node, Some(&[]));
        if kind == "registry" {
            let args = self
                .cx
                .exact_args(node, &parts.args, 1, "an image reference")?;
            let s = self.cx.string(args[0], "`registry`")?;
            return match RegistryRef::parse(&s.value) {
                Ok(r) => Some(Spanned::new(ImportSource::Registry(r), s.span)),
                Err(e) => {
                    let d = self.cx.diag(
                        Code::BadReference,
                        s.span,
                        e.to_string(),
                        "not an image reference",
                    );
                    self.cx.push(d.help(
                        "write `host[:port]/repository[:tag]@sha256:<64 hex digits>`, \
                         like `registry.example.com/team/debian:12@sha256:...`",
                    ));
                    None
                }
            };
        }
        let args = self.cx.exact_args(node, &parts.args, 1, "a path")?;
        let s = self.cx.string(args[0], &format!("`{kind}`"))?;
        let path = self.source_path(&s, &format!("`{kind}` path"))?;
        let src = if kind == "oci-layout" {
            ImportSource::OciLayout(path)
        } else {
            ImportSource::DockerArchive(path)
        };
        Some(Spanned::new(src, s.span))
    }
}

impl Build<'_, '_> {
    // -- http-file --------------------------------------------------------------

    fn http_file(&mut self, node: &KdlNode, parts: &Parts) -> Option<HttpFileSpec> {
        let url = self.http_url(node, parts);
        let sha256 = self.http_sha256(node, parts);
        let size = match parts.prop("size") {
            None => Some(None),
            Some(e) => self.http_size(e).map(Some),
        };
        let executable = match parts.prop("executable") {
            None => Some(false),
            Some(e) => match e.value() {
                KdlValue::Bool(b) => Some(*b),
                other => {
                    let d = self.cx.diag(
                        Code::WrongType,
                        value_span(e),
                        format!(
                            "`executable` must be #true or #false, got {}",
                            crate::spec::reader::describe(other)
                        ),
                        "not a boolean",
                    );
                    self.cx
                        .push(d.help("write `executable=#true` (KDL booleans start with `#`)"));
                    None
                }
            },
        };
        Some(HttpFileSpec {
            url: url?,
            sha256: sha256?,
            size: size?,
            executable: executable?,
        })
    }

    fn http_url(&mut self, node: &KdlNode, parts: &Parts) -> Option<Spanned<String>> {
        if parts.prop("url").is_none() {
            let msg = "`http-file` needs a `url=` property".to_string();
            self.cx
                .missing(head_span(node), msg, "add `url=\"https://host/path/file\"`");
            return None;
        }
        let s = self.string_prop(parts, "url")?;
        match check_url(&s.value) {
            Ok(()) => Some(s),
            Err((why, help)) => {
                // The value is not repeated when it may hold a password.
                let message = if why.contains("credentials") {
                    format!("`url` {why}")
                } else {
                    format!("`url` {why}, got \"{}\"", escape_shown(&s.value))
                };
                let d = self.cx.diag(Code::BadUrl, s.span, message, "bad URL");
                self.cx.push(d.help(help));
                None
            }
        }
    }

    fn http_sha256(
        &mut self,
        node: &KdlNode,
        parts: &Parts,
    ) -> Option<Spanned<crate::hash::Digest>> {
        if parts.prop("sha256").is_none() {
            let msg = "`http-file` needs a `sha256=` property".to_string();
            let help = "add `sha256=\"<64 hex digits>\"`: run `sha256sum` on the file, or build \
                        once with any 64 hex digits and copy the actual sha256 from the error";
            self.cx.missing(head_span(node), msg, help);
            return None;
        }
        let s = self.string_prop(parts, "sha256")?;
        let hex = s.value.strip_prefix("sha256:").unwrap_or(&s.value);
        let lower = hex.to_ascii_lowercase();
        if let Some(d) = crate::hash::Digest::from_hex(&lower) {
            return Some(Spanned::new(d, s.span));
        }
        let why = if hex.len() != 64 {
            format!("has {} characters", hex.chars().count())
        } else {
            "has characters that are not hexadecimal digits".to_string()
        };
        let d = self.cx.diag(
            Code::BadChecksum,
            s.span,
            format!(
                "`sha256` must be 64 hexadecimal digits, and \"{}\" {why}",
                escape_shown(&s.value)
            ),
            "not a sha256",
        );
        self.cx
            .push(d.help("write the file's sha256 as `sha256sum` prints it (64 hex digits)"));
        None
    }

    fn http_size(&mut self, e: &KdlEntry) -> Option<Spanned<u64>> {
        let span = value_span(e);
        let (code, got) = match e.value() {
            KdlValue::Integer(i) => match u64::try_from(*i) {
                Ok(v) => return Some(Spanned::new(v, span)),
                Err(_) => (Code::InvalidValue, i.to_string()),
            },
            other => (Code::WrongType, crate::spec::reader::describe(other)),
        };
        let d = self.cx.diag(
            code,
            span,
            format!("`size` must be a number of bytes (a non-negative integer), got {got}"),
            "not a size",
        );
        self.cx
            .push(d.help("write the size in bytes unquoted, like `size=1048576`, or leave it out"));
        None
    }
}

/// Whether imgc will fetch `url`: `http://` or `https://` (any case), then a
/// host (with an optional port), no `user:password@` (a spec is committed; a
/// secret does not belong in it), no fragment, and nothing but printable ASCII
/// (other characters must be percent-encoded). `Err((why, help))` otherwise.
fn check_url(url: &str) -> Result<(), (String, String)> {
    let scheme_end = url.find("://");
    let scheme = scheme_end.map(|i| &url[..i]);
    let rest = match scheme {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
            &url[s.len() + 3..]
        }
        Some(s) => {
            return Err((
                format!("must be http:// or https://, not `{}://`", escape_shown(s)),
                "imgc fetches `http-file`s over HTTP(S) only: put the file on a web server or \
                 copy it into the workspace"
                    .to_string(),
            ));
        }
        None => {
            return Err((
                "must start with http:// or https://".to_string(),
                "write the full URL, like `url=\"https://example.com/tool-1.2.tar.gz\"`"
                    .to_string(),
            ));
        }
    };
    if let Some(c) = url
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || *c == ' ')
    {
        return Err((
            format!("may hold printable ASCII only, and it holds {c:?}"),
            "percent-encode it (a space is `%20`)".to_string(),
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err((
            "holds credentials (`user:password@`)".to_string(),
            "a spec is committed, a secret does not belong in it: serve the file without \
             credentials (it is verified by its sha256 anyway)"
                .to_string(),
        ));
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || authority.starts_with('[') => {
            if !port.is_empty() && !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err((
                    "has a port that is not a number".to_string(),
                    "write `host:port`, like `example.com:8080`".to_string(),
                ));
            }
            h
        }
        _ => authority,
    };
    if host.is_empty() {
        return Err((
            "has no host".to_string(),
            "write the full URL, like `url=\"https://example.com/tool-1.2.tar.gz\"`".to_string(),
        ));
    }
    if url.contains('#') {
        return Err((
            "has a fragment (`#...`), which is never sent to the server".to_string(),
            "remove the `#` and what follows it".to_string(),
        ));
    }
    Ok(())
}

/// At most 200 characters of a user's value, for a message.
fn escape_shown(s: &str) -> String {
    let cut: String = s.chars().take(200).collect();
    let cut = cut.escape_debug().to_string();
    if s.chars().count() > 200 {
        format!("{cut}...")
    } else {
        cut
    }
}

/// A fix for a malformed label: add the missing `//` or `:` when that is all it lacks.
fn label_help(s: &str) -> String {
    let relative = !s.starts_with(':') && !s.starts_with('/');
    if relative && s.contains(':') {
        return format!("did you mean `//{s}`?");
    }
    if relative && check_target_name(s).is_ok() {
        return format!("did you mean `:{s}`?");
    }
    "labels look like `:name` (this package) or `//package:name`".to_string()
}

fn target(name: Spanned<String>, node: &KdlNode, kind: TargetKind) -> Target {
    Target {
        name,
        span: node.span(),
        kind,
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
