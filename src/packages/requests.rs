//! The `packages` requests of a workspace, checked against its `debian`
//! repositories and grouped per target (pure: no IO).
//!
//! The parser checks what one file can show: names, pins, a package requested
//! twice in one target. What needs both files (a `from=` naming a repository of
//! imgc.kdl, a `packages` node without `from=` where imgc.kdl declares none or
//! several) is checked here, once the graph is built, for every command that
//! loads the workspace: a spec that names an unknown repository is wrong whether
//! or not anything is locked or built.
//!
//! A target's requests are what `imgc lock` resolves together (one closure per
//! target), what `imgc.lock` records under `target "//pkg:name"`, and what
//! `imgc check` compares with the lock. All `packages` nodes of one target must
//! agree on `recommends=` (one resolution cannot both follow and ignore them).

use crate::diag::{Code, Diag, did_you_mean};
use crate::graph::Graph;
use crate::label::Label;
use crate::spec::model::{DebianRepo, FileId, PackageRequest, Spanned};
use miette::SourceSpan;

/// The requests of one target, ready to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRequests {
    pub label: Label,
    /// The spec file of the target.
    pub file: FileId,
    /// Span of the target's first `packages` node (for diagnostics about the target).
    pub span: SourceSpan,
    /// The repositories the requests come from (names, sorted, unique).
    pub repositories: Vec<String>,
    /// Every request of the target, sorted by name, each with its span.
    pub requests: Vec<Spanned<PackageRequest>>,
    /// Whether Recommends are followed.
    pub recommends: bool,
}

/// Every target of `graph` with `packages`, sorted by label, and a diagnostic for
/// each `packages` node that names no repository of `repos` (or needs a `from=`),
/// and for each target whose nodes disagree on `recommends=`.
pub fn collect(graph: &Graph, repos: &[DebianRepo]) -> (Vec<TargetRequests>, Vec<Diag>) {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    for ix in graph.nodes() {
        let node = graph.node(ix);
        let nodes = node.target.kind.packages();
        let Some(first) = nodes.first() else {
            continue;
        };
        let mut t = TargetRequests {
            label: node.label.clone(),
            file: node.file,
            span: first.span,
            repositories: Vec::new(),
            requests: Vec::new(),
            recommends: first.recommends,
        };
        let mut ok = true;
        for p in nodes {
            match repository_of(p.from.as_ref(), p.span, repos) {
                Ok(name) => {
                    if !t.repositories.contains(&name) {
                        t.repositories.push(name);
                    }
                }
                Err(e) => {
                    let (span, d) = *e;
                    diags.push(d.at(node.file, span));
                    ok = false;
                }
            }
            if p.recommends != t.recommends {
                let d = Diag::new(
                    Code::InvalidValue,
                    format!(
                        "the `packages` of `{}` disagree on `recommends`: one resolution either follows Recommends or not",
                        node.label
                    ),
                )
                .at(node.file, p.span)
                .label("differs from the target's first `packages`")
                .help("give every `packages` node of the target the same `recommends=`");
                diags.push(d);
                ok = false;
            }
            t.requests.extend(p.requests.iter().cloned());
        }
        if ok {
            t.repositories.sort();
            t.requests.sort_by(|a, b| a.value.cmp(&b.value));
            out.push(t);
        }
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    (out, diags)
}

/// The repository a `packages` node takes its packages from.
fn repository_of(
    from: Option<&Spanned<String>>,
    node: SourceSpan,
    repos: &[DebianRepo],
) -> Result<String, Box<(SourceSpan, Diag)>> {
    let names = || repos.iter().map(|r| r.name.value.as_str());
    let declared = || {
        names()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match from {
        Some(f) => {
            if names().any(|n| n == f.value) {
                return Ok(f.value.clone());
            }
            let mut d = Diag::new(
                Code::UnknownRepository,
                format!("`from=\"{}\"` names no `debian` repository of imgc.kdl", f.value),
            )
            .label("unknown repository");
            d = match (did_you_mean(&f.value, names()), repos.is_empty()) {
                (Some(s), _) => d.help(format!("did you mean \"{s}\"?")),
                (None, true) => d.help(
                    "declare it in imgc.kdl: `debian \"NAME\" { url \"...\"; suite \"...\"; components \"main\"; arch \"amd64\" }`",
                ),
                (None, false) => d.help(format!("imgc.kdl declares {}", declared())),
            };
            Err(Box::new((f.span, d)))
        }
        None => match repos {
            [one] => Ok(one.name.value.clone()),
            [] => Err(Box::new((
                node,
                Diag::new(
                    Code::UnknownRepository,
                    "`packages` needs a `debian` repository, and imgc.kdl declares none",
                )
                .label("no repository to take these from")
                .help(
                    "declare one in imgc.kdl: `debian \"NAME\" { url \"...\"; suite \"...\"; components \"main\"; arch \"amd64\" }`",
                ),
            ))),
            _ => Err(Box::new((
                node,
                Diag::new(
                    Code::UnknownRepository,
                    "`packages` needs `from=`: imgc.kdl declares several `debian` repositories",
                )
                .label("which repository?")
                .help(format!("add `from=` with one of {}", declared())),
            ))),
        },
    }
}
