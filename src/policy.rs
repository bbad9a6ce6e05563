//! Base standardization: the `policy` of `imgc.kdl`, checked on the target graph (pure).
//!
//! Images that share a base share its layer blobs: a registry and every node store and
//! pull them once, and a fix to the base reaches every image above it in one cascade.
//! That only holds while teams actually build on the shared base, so a workspace can
//! require it:
//!
//! ```kdl
//! policy {
//!     require-base "//bases:runtime" for="//services/..."
//! }
//! ```
//!
//! # What "built on" means
//!
//! An image's *base chain* is the sequence of targets reached by following `from`:
//! its base, the base's base, and so on, until an import or an image built `from
//! "scratch"`. An image is built on `B` when `B` is somewhere in its chain, so
//! intermediate images (a `//bases:python` built on `//bases:runtime`) satisfy a rule
//! about the base below them. An image built from scratch has an empty chain and
//! satisfies no rule.
//!
//! # Which images a rule checks
//!
//! The images its `for` pattern selects (every target when `for` is not written),
//! *except* the required base itself and the images in its own chain: with
//! `for="//..."`, `//bases:runtime` cannot be built on itself, nor can what it is built
//! on. Layers and imports are not checked (they are not built on anything). An image in
//! the scope of several rules must satisfy each of them: a more specific rule for a
//! subtree (`require-base "//bases:python" for="//services/ml/..."`) composes with a
//! general one as long as the specific base is itself built on the general one.
//!
//! A command checks the images it works on ([`check`]'s `within`: for `imgc check` and
//! `imgc build`, the selected targets and everything they depend on), so building one
//! service is not failed by another's base. The rules themselves are validated against
//! the whole graph every time: a required base that is not an image or an import, or a
//! `for` that selects no image (a typo there would silently switch the rule off), is
//! reported at its place in `imgc.kdl`.
//!
//! # Where it is reported
//!
//! A violation is reported at the image's `from` value, the one line to change, and its
//! message names the chain (`... is built on `//bases:other` (through `//bases:mid`)
//! ...`) and the rule (`imgc.kdl:5`). Everything here is data in, diagnostics out: no IO.

use crate::diag::{Code, Diag, Sources, did_you_mean};
use crate::graph::{EdgeKind, Graph};
use crate::label::{Label, Pattern};
use crate::spec::model::{FileId, Policy, RequireBase, TargetKind};
use petgraph::graph::NodeIndex;
use std::collections::BTreeSet;

/// The base chain of `image`: its base, the base's base, ... nearest first; empty for
/// an image built from scratch (and for anything that is not an image). Stops at a
/// target seen before, so a cycle (reported by [`crate::graph::build`]) cannot hang it.
pub fn base_chain(graph: &Graph, image: NodeIndex) -> Vec<NodeIndex> {
    let mut chain = Vec::new();
    let mut seen = BTreeSet::from([image]);
    let mut at = image;
    while let Some(base) = base_of(graph, at) {
        if !seen.insert(base) {
            break;
        }
        chain.push(base);
        at = base;
    }
    chain
}

fn base_of(graph: &Graph, ix: NodeIndex) -> Option<NodeIndex> {
    graph
        .deps(ix)
        .into_iter()
        .find_map(|(kind, dep)| (kind == EdgeKind::Base).then_some(dep))
}

/// A rule that passed validation, with what it needs for checking.
struct Rule<'p> {
    rule: &'p RequireBase,
    pattern: Pattern,
    base: NodeIndex,
    /// The base and its own chain: never violations of this rule.
    exempt: BTreeSet<NodeIndex>,
    /// `imgc.kdl:5`: where the rule is written.
    place: String,
}

/// Checks `policy` (written in file `file` of `sources`, normally `imgc.kdl`) on
/// `graph`: every rule is validated against the whole graph, and every image of
/// `within` is checked against the rules whose scope selects it. Diagnostics come in
/// a deterministic order: rule problems in the order written, then violations by
/// image label and rule order.
pub fn check(
    graph: &Graph,
    policy: &Policy,
    file: FileId,
    sources: &Sources,
    within: &BTreeSet<NodeIndex>,
) -> Vec<Diag> {
    let mut diags = Vec::new();
    let mut rules = Vec::new();
    for rule in &policy.require_base {
        let base = validate_base(graph, rule, file, &mut diags);
        let scope_ok = validate_scope(graph, rule, file, &mut diags);
        let (Some(base), true) = (base, scope_ok) else {
            continue;
        };
        let (line, _) = sources.line_col(file, rule.span.offset());
        rules.push(Rule {
            rule,
            pattern: rule.pattern(),
            base,
            exempt: std::iter::once(base)
                .chain(base_chain(graph, base))
                .collect(),
            place: format!("{}:{line}", sources.get(file).path),
        });
    }
    if rules.is_empty() {
        return diags;
    }
    for ix in graph.nodes().filter(|n| within.contains(n)) {
        let node = graph.node(ix);
        if !node.is_image() {
            continue;
        }
        let mut chain: Option<Vec<NodeIndex>> = None;
        for r in &rules {
            if !r.pattern.matches(&node.label) || r.exempt.contains(&ix) {
                continue;
            }
            let chain = chain.get_or_insert_with(|| base_chain(graph, ix));
            if !chain.contains(&r.base) {
                diags.push(violation(graph, ix, chain, r));
            }
        }
    }
    diags
}

/// The required base, if it names an image or an import; else a diagnostic.
fn validate_base(
    graph: &Graph,
    rule: &RequireBase,
    file: FileId,
    diags: &mut Vec<Diag>,
) -> Option<NodeIndex> {
    let label = &rule.base.value;
    let Some(ix) = graph.get(label) else {
        diags.push(unknown_base(graph, label, file, rule));
        return None;
    };
    let kind = graph.node(ix).kind_name();
    match graph.node(ix).target.kind {
        TargetKind::Image(_) | TargetKind::Import(_) => Some(ix),
        TargetKind::Layer(_) | TargetKind::HttpFile(_) | TargetKind::DebPackage(_) => {
            let article = if kind.starts_with('h') { "an" } else { "a" };
            diags.push(
                Diag::new(Code::WrongKind, format!("`{label}` is {article} {kind}"))
                    .at(file, rule.base.span)
                    .label(format!("{kind} here"))
                    .help(
                        "`require-base` takes an image or an import: the base images are built on",
                    ),
            );
            None
        }
    }
}

fn unknown_base(graph: &Graph, label: &Label, file: FileId, rule: &RequireBase) -> Diag {
    let package_known = graph.labels().any(|l| l.package() == label.package());
    let message = if package_known {
        format!(
            "unknown label `{label}` in `require-base`: package `//{}` has no target `{}`",
            label.package(),
            label.name()
        )
    } else {
        format!(
            "unknown label `{label}` in `require-base`: there is no package `//{}`",
            label.package()
        )
    };
    let bases: Vec<String> = graph
        .nodes()
        .filter(|n| {
            !matches!(
                graph.node(*n).target.kind,
                TargetKind::Layer(_) | TargetKind::HttpFile(_) | TargetKind::DebPackage(_)
            )
        })
        .map(|n| graph.node(n).label.to_string())
        .collect();
    let d = Diag::new(Code::UnknownLabel, message)
        .at(file, rule.base.span)
        .label("not found");
    match did_you_mean(&label.to_string(), bases.iter().map(String::as_str)) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help("name an image or an import of the workspace"),
    }
}

/// Whether the rule's `for` (if written) selects at least one image; else a diagnostic.
fn validate_scope(graph: &Graph, rule: &RequireBase, file: FileId, diags: &mut Vec<Diag>) -> bool {
    let Some(scope) = &rule.scope else {
        return true;
    };
    let images: Vec<&Label> = graph
        .nodes()
        .map(|n| graph.node(n))
        .filter(|n| n.is_image())
        .map(|n| &n.label)
        .collect();
    if images.iter().any(|l| scope.value.matches(l)) {
        return true;
    }
    let pattern = scope.value.to_string();
    let d = Diag::new(
        Code::NoMatch,
        format!("the `for` pattern `{pattern}` of this rule selects no image"),
    )
    .at(file, scope.span)
    .label("no image here");
    let candidates = scope_candidates(&images);
    diags.push(
        match did_you_mean(&pattern, candidates.iter().map(String::as_str)) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(
                "a rule that selects nothing checks nothing: point `for` at images, or remove the rule",
            ),
        },
    );
    false
}

/// Patterns that would select images: each image's label, `//pkg:all` of its
/// package and `//prefix/...` of the package and each of its parents.
fn scope_candidates(images: &[&Label]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in images {
        out.insert(l.to_string());
        let pkg = l.package();
        out.insert(format!("//{pkg}:all"));
        let mut prefix = pkg;
        while !prefix.is_empty() {
            out.insert(format!("//{prefix}/..."));
            prefix = prefix.rsplit_once('/').map_or("", |(p, _)| p);
        }
    }
    out
}

fn violation(graph: &Graph, ix: NodeIndex, chain: &[NodeIndex], r: &Rule) -> Diag {
    let node = graph.node(ix);
    let required = &r.rule.base.value;
    let label = |n: &NodeIndex| format!("`{}`", graph.node(*n).label);
    let on = chain.last().map_or("`scratch`".to_string(), label);
    let through = match chain.len() {
        0 | 1 => String::new(),
        n => format!(
            " (through {})",
            chain[..n - 1]
                .iter()
                .map(label)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // The `from` value: the one line to change. Every image has one once the parser
    // accepted it; the name is a fallback that keeps this total.
    let span = match &node.target.kind {
        TargetKind::Image(img) => img.from.as_ref().map(|f| f.span),
        _ => None,
    }
    .unwrap_or(node.target.name.span);
    Diag::new(
        Code::NotOnRequiredBase,
        format!(
            "`{}` is built on {on}{through}, not on `{required}` that the policy in {} requires",
            node.label, r.place
        ),
    )
    .at(node.file, span)
    .label(format!("not on `{required}`"))
    .help(format!(
        "build it from `{required}` or from an image built on it; if it is an exception, leave it out of the rule's `for` ({})",
        r.place
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::Package;
    use crate::spec::{parse_build_file, parse_workspace_file};

    struct Fixture {
        graph: Graph,
        policy: Policy,
        sources: Sources,
        imgc: FileId,
    }

    /// `policy` is the body of the `policy` node; `builds` are (package, BUILD.kdl text).
    fn fixture(policy: &str, builds: &[(&str, &str)]) -> Fixture {
        let mut sources = Sources::default();
        let text = format!("workspace {{}}\npolicy {{\n{policy}\n}}\n");
        let imgc = sources.add("imgc.kdl", text.clone());
        let (config, diags) = parse_workspace_file(imgc, &text);
        assert!(diags.is_empty(), "{diags:#?}");
        let mut packages = Vec::new();
        for (pkg, text) in builds {
            let file = sources.add(format!("{pkg}/BUILD.kdl"), *text);
            let (targets, diags) = parse_build_file(file, pkg, text);
            assert!(diags.is_empty(), "{pkg}: {diags:#?}");
            packages.push(Package {
                path: pkg.to_string(),
                file,
                targets,
            });
        }
        let (graph, diags) = crate::graph::build(packages);
        assert!(diags.is_empty(), "{diags:#?}");
        Fixture {
            graph,
            policy: config.policy,
            sources,
            imgc,
        }
    }

    impl Fixture {
        fn everything(&self) -> BTreeSet<NodeIndex> {
            self.graph.nodes().collect()
        }

        fn check_within(&self, within: &BTreeSet<NodeIndex>) -> Vec<Diag> {
            check(&self.graph, &self.policy, self.imgc, &self.sources, within)
        }

        fn check(&self) -> Vec<Diag> {
            self.check_within(&self.everything())
        }

        fn ix(&self, label: &str) -> NodeIndex {
            self.graph
                .get(&Label::parse_in(label, "").unwrap())
                .expect(label)
        }

        /// `CODE path:line:col: message` of each diagnostic, and the text under its span.
        fn short(&self, diags: &[Diag]) -> Vec<(String, String)> {
            diags
                .iter()
                .map(|d| {
                    let (file, span) = d.location.expect("located");
                    let text = &self.sources.get(file).text;
                    let under = text[span.offset()..span.offset() + span.len()].to_string();
                    (d.short(&self.sources), under)
                })
                .collect()
        }
    }

    const BASES: &str = r#"
import "debian" { oci-layout "debian" }
image "runtime" { from "//bases:core" }
image "core" { from ":debian" }
image "other" { from "scratch" }
image "mid" { from ":other" }
image "python" { from ":runtime" }
layer "files" { text "/f" "x" }
"#;

    fn services(api_from: &str) -> String {
        format!(
            "image \"api\" {{\n    from \"{api_from}\"\n}}\nimage \"web\" {{\n    from \"//bases:python\"\n}}\n"
        )
    }

    #[test]
    fn direct_and_intermediate_bases_satisfy_the_rule() {
        let f = fixture(
            r#"require-base "//bases:runtime" for="//services/...""#,
            &[("bases", BASES), ("services", &services("//bases:runtime"))],
        );
        assert!(f.check().is_empty(), "{:#?}", f.check());
        assert_eq!(
            base_chain(&f.graph, f.ix("//services:web")),
            [
                f.ix("//bases:python"),
                f.ix("//bases:runtime"),
                f.ix("//bases:core"),
                f.ix("//bases:debian")
            ]
        );
    }

    #[test]
    fn a_violation_names_the_chain_the_rule_and_points_at_from() {
        let f = fixture(
            "\n\n\nrequire-base \"//bases:runtime\" for=\"//services/...\"",
            &[("bases", BASES), ("services", &services("//bases:mid"))],
        );
        let diags = f.check();
        assert_eq!(
            f.short(&diags),
            [(
                "E050 services/BUILD.kdl:2:10: `//services:api` is built on `//bases:other` \
                 (through `//bases:mid`), not on `//bases:runtime` that the policy in imgc.kdl:6 requires"
                    .to_string(),
                "\"//bases:mid\"".to_string()
            )]
        );
        assert_eq!(diags[0].label.as_deref(), Some("not on `//bases:runtime`"));
        assert!(
            diags[0].help.as_deref().unwrap().contains("imgc.kdl:6"),
            "{diags:#?}"
        );
    }

    #[test]
    fn direct_other_base_and_import_bottoms() {
        let f = fixture(
            r#"require-base "//bases:runtime" for="//services/...""#,
            &[("bases", BASES), ("services", &services("//bases:other"))],
        );
        let d = f.check();
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(
            d[0].message
                .starts_with("`//services:api` is built on `//bases:other`, not on"),
            "{}",
            d[0].message
        );
        // A chain ending in an import names the import.
        let f = fixture(
            r#"require-base "//bases:runtime" for="//services/...""#,
            &[("bases", BASES), ("services", &services("//bases:core"))],
        );
        let d = f.check();
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(
            d[0].message.starts_with(
                "`//services:api` is built on `//bases:debian` (through `//bases:core`), not on"
            ),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn an_image_from_scratch_violates_at_its_from() {
        let f = fixture(
            r#"require-base "//bases:runtime" for="//services/...""#,
            &[("bases", BASES), ("services", &services("scratch"))],
        );
        let diags = f.check();
        assert_eq!(
            f.short(&diags),
            [(
                "E050 services/BUILD.kdl:2:10: `//services:api` is built on `scratch`, not on \
                 `//bases:runtime` that the policy in imgc.kdl:3 requires"
                    .to_string(),
                "\"scratch\"".to_string()
            )]
        );
    }

    #[test]
    fn images_outside_the_scope_and_non_images_are_not_checked() {
        let f = fixture(
            r#"require-base "//bases:runtime" for="//services/api:all""#,
            &[
                ("bases", BASES),
                ("services/api", "image \"api\" { from \"//bases:runtime\" }"),
                ("services/web", "image \"web\" { from \"scratch\" }"),
            ],
        );
        assert!(f.check().is_empty(), "{:#?}", f.check());
    }

    #[test]
    fn the_base_and_its_own_chain_are_exempt_from_a_rule_on_everything() {
        // `for` left out: every image, //bases:* included. runtime and core (its chain)
        // are exempt; other, mid (not on runtime) violate; python (on it) passes.
        let f = fixture(
            r#"require-base "//bases:runtime""#,
            &[("bases", BASES), ("services", &services("//bases:runtime"))],
        );
        let flagged: Vec<String> = f
            .check()
            .iter()
            .map(|d| d.message.split('`').nth(1).unwrap().to_string())
            .collect();
        assert_eq!(flagged, ["//bases:mid", "//bases:other"]);
    }

    #[test]
    fn an_import_can_be_the_required_base() {
        let f = fixture(
            r#"require-base "//bases:debian" for="//services/...""#,
            &[("bases", BASES), ("services", &services("//bases:python"))],
        );
        assert!(f.check().is_empty(), "{:#?}", f.check());
        let f = fixture(
            r#"require-base "//bases:debian" for="//services/...""#,
            &[("bases", BASES), ("services", &services("//bases:mid"))],
        );
        assert_eq!(f.check().len(), 1);
    }

    #[test]
    fn every_rule_in_scope_must_hold() {
        let policy = "require-base \"//bases:runtime\" for=\"//services/...\"\n\
                      require-base \"//bases:python\" for=\"//services:web\"";
        // web is on python, which is on runtime: both hold.
        let f = fixture(
            policy,
            &[("bases", BASES), ("services", &services("//bases:runtime"))],
        );
        assert!(f.check().is_empty(), "{:#?}", f.check());
        // Point web at runtime: the specific rule fails, the general one holds.
        let f = fixture(
            policy,
            &[
                ("bases", BASES),
                (
                    "services",
                    "image \"api\" { from \"//bases:other\" }\nimage \"web\" { from \"//bases:runtime\" }",
                ),
            ],
        );
        let messages: Vec<String> = f.check().into_iter().map(|d| d.message).collect();
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(messages[0].starts_with("`//services:api` is built on `//bases:other`"));
        assert!(messages[1].starts_with("`//services:web` is built on `//bases:debian`"));
        assert!(messages[1].contains("not on `//bases:python`"));
    }

    #[test]
    fn only_images_within_are_checked_but_rules_always_are() {
        let f = fixture(
            "require-base \"//bases:runtime\" for=\"//services/...\"\n\
             require-base \"//bases:nope\" for=\"//services/...\"",
            &[
                ("bases", BASES),
                ("services/api", "image \"api\" { from \"//bases:other\" }"),
                ("services/web", "image \"web\" { from \"//bases:runtime\" }"),
            ],
        );
        let web = f
            .graph
            .closure(&[f.ix("//services/web:web")], petgraph::Direction::Outgoing);
        let codes: Vec<Code> = f.check_within(&web).iter().map(|d| d.code).collect();
        assert_eq!(codes, [Code::UnknownLabel]);
        let codes: Vec<Code> = f.check().iter().map(|d| d.code).collect();
        assert_eq!(codes, [Code::UnknownLabel, Code::NotOnRequiredBase]);
    }

    #[test]
    fn bad_rules_are_reported_in_imgc_kdl() {
        let f = fixture(
            "require-base \"//bases:runtme\" for=\"//services/...\"\n\
             require-base \"//bases:files\"\n\
             require-base \"//bases:runtime\" for=\"//service/...\"\n\
             require-base \"//nowhere:x\" for=\"//bases:files\"",
            &[("bases", BASES), ("services", &services("//bases:runtime"))],
        );
        let diags = f.check();
        let short = f.short(&diags);
        let expect = [
            (
                "E010 imgc.kdl:3:14: unknown label `//bases:runtme` in `require-base`: package `//bases` has no target `runtme`",
                "\"//bases:runtme\"",
            ),
            (
                "E012 imgc.kdl:4:14: `//bases:files` is a layer",
                "\"//bases:files\"",
            ),
            (
                "E018 imgc.kdl:5:36: the `for` pattern `//service/...` of this rule selects no image",
                "\"//service/...\"",
            ),
            (
                "E010 imgc.kdl:6:14: unknown label `//nowhere:x` in `require-base`: there is no package `//nowhere`",
                "\"//nowhere:x\"",
            ),
            (
                "E018 imgc.kdl:6:32: the `for` pattern `//bases:files` of this rule selects no image",
                "\"//bases:files\"",
            ),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(short, expect);
        assert_eq!(
            diags[0].help.as_deref(),
            Some("did you mean `//bases:runtime`?")
        );
        assert_eq!(
            diags[2].help.as_deref(),
            Some("did you mean `//services/...`?")
        );
    }

    #[test]
    fn diagnostics_come_in_label_order() {
        let f = fixture(
            r#"require-base "//bases:runtime" for="//services/...""#,
            &[
                ("bases", BASES),
                (
                    "services/b",
                    "image \"z\" { from \"scratch\" }\nimage \"a\" { from \"scratch\" }",
                ),
                ("services/a", "image \"y\" { from \"scratch\" }"),
            ],
        );
        let flagged: Vec<String> = f
            .check()
            .iter()
            .map(|d| d.message.split('`').nth(1).unwrap().to_string())
            .collect();
        assert_eq!(
            flagged,
            ["//services/a:y", "//services/b:a", "//services/b:z"]
        );
    }

    #[test]
    fn a_cycle_does_not_hang_the_chain() {
        let mut sources = Sources::default();
        let text = "image \"a\" { from \":b\" }\nimage \"b\" { from \":a\" }\n";
        let file = sources.add("c/BUILD.kdl", text);
        let (targets, _) = parse_build_file(file, "c", text);
        let (graph, diags) = crate::graph::build(vec![Package {
            path: "c".into(),
            file,
            targets,
        }]);
        assert_eq!(diags[0].code, Code::Cycle);
        let a = graph.get(&Label::new("c", "a")).unwrap();
        let b = graph.get(&Label::new("c", "b")).unwrap();
        assert_eq!(base_chain(&graph, a), [b]);
    }
}
