//! `imgc pin [PATTERN...] [--update]`: pin `registry` imports to the digest their
//! tag points at now, rewriting the reference in its spec file in place.
//!
//! The selected targets and everything they build on are looked at; each
//! `registry` import without a digest (with `--update`: each one with a tag)
//! has its tag (`latest` if none) resolved through the registry, and its string
//! in the `BUILD.kdl` is replaced by the same text with `@sha256:...` (the tag
//! stays, for humans). Only that string changes: comments, formatting and every
//! other byte of the file are kept. The new text is parsed again before it is
//! written and must hold the new reference and nothing else new; it is written
//! to a temporary file beside the old one (same permissions) and renamed over
//! it, only if the file still holds what was loaded. A spec file that is a
//! symbolic link or not a regular file is refused.

use super::{CmdError, Context, Loaded};
use crate::cli::PinArgs;
use crate::graph::Graph;
use crate::hash::Digest;
use crate::input::Root;
use crate::registry::{Client, ClientOptions, Reference};
use crate::report;
use crate::spec::model::{FileId, ImportSource, RegistryRef, TargetKind};
use miette::SourceSpan;
use petgraph::graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// What a tag points at now, asked of its registry.
pub type Resolve = Box<dyn Fn(&Reference) -> Result<Digest, String> + Send + Sync>;

/// A registry client with the credentials of the environment and the
/// `--insecure-registry` hosts `insecure`: for `registry` imports (made once,
/// on the first one that runs), `imgc pin` and the help of an unpinned import.
pub fn client(insecure: &[String]) -> Result<Client, String> {
    let credentials = crate::registry::Credentials::from_env().map_err(|e| e.to_string())?;
    Ok(Client::new(ClientOptions {
        credentials: Arc::new(credentials),
        insecure: insecure.to_vec(),
        ..ClientOptions::anonymous()
    }))
}

/// Resolves tags through a [`client`] for the run's flags.
pub fn resolver(ctx: &Context) -> Result<Resolve, String> {
    let client = client(&ctx.registry.insecure_registry)?;
    Ok(Box::new(move |r: &Reference| {
        client
            .resolve(r)
            .map(|res| res.digest)
            .map_err(|e| e.to_string())
    }))
}

/// Fails with [`crate::diag::Code::NotPinned`] for each `registry` import of
/// `within` that names no digest. With `ask` (a build), the registry is asked
/// what each tag points at now, so the help can give the digest to paste;
/// without it (`check`, dry runs) nothing touches the network. A registry
/// that cannot be asked only leaves the digest out of the help.
pub fn check_pinned(
    loaded: &Loaded,
    within: &BTreeSet<NodeIndex>,
    ask: Option<&Context>,
) -> Result<(), CmdError> {
    let unpinned = crate::graph::unpinned_imports(&loaded.graph, within, &BTreeMap::new());
    if unpinned.is_empty() {
        return Ok(());
    }
    let mut now = BTreeMap::new();
    if let Some(ctx) = ask
        && let Ok(resolve) = resolver(ctx)
    {
        for (n, _) in &unpinned {
            if let Some(r) = loaded.graph.registry_reference(*n)
                && let Ok(d) = resolve(&tag_of(r))
            {
                now.insert(*n, d.to_string());
            }
        }
    }
    let diags = crate::graph::unpinned_imports(&loaded.graph, within, &now)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    Err(CmdError::Diagnostics {
        sources: loaded.ws.sources.clone(),
        diags,
    })
}

/// One import to pin.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    pub node: NodeIndex,
    pub file: FileId,
    /// Where the reference string is in the file.
    pub span: SourceSpan,
    pub reference: &'a RegistryRef,
}

/// The `registry` imports of `within` to pin: those without a digest, and with
/// `update` also the pinned ones that have a tag to follow.
pub fn wanted<'a>(graph: &'a Graph, within: &BTreeSet<NodeIndex>, update: bool) -> Vec<Wanted<'a>> {
    let mut out = Vec::new();
    for &n in within {
        let node = graph.node(n);
        let TargetKind::Import(spec) = &node.target.kind else {
            continue;
        };
        let ImportSource::Registry(r) = &spec.source.value else {
            continue;
        };
        let unpinned = r.reference.digest.is_none();
        if unpinned || (update && r.reference.tag.is_some()) {
            out.push(Wanted {
                node: n,
                file: node.file,
                span: spec.source.span,
                reference: r,
            });
        }
    }
    out
}

/// What the tag of `r` is resolved from: `r` without its digest (and `latest`
/// when it names no tag).
pub fn tag_of(r: &Reference) -> Reference {
    Reference {
        tag: Some(r.tag.clone().unwrap_or_else(|| "latest".to_string())),
        digest: None,
        ..r.clone()
    }
}

/// The reference as written, pinned to `d`: the written text up to any `@`,
/// then `@sha256:...` (so the tag and the user's spelling stay).
pub fn pinned_text(written: &str, d: &Digest) -> String {
    let name = written.split('@').next().unwrap_or(written);
    format!("{name}@{d}")
}

/// `text` with the string at each span replaced by a string holding the new
/// reference: a raw string stays raw (same number of `#`), anything else
/// becomes a plain quoted string (a reference needs no escapes). Spans must
/// not overlap and must fall on character boundaries.
pub fn rewrite(text: &str, edits: &[(SourceSpan, String)]) -> Result<String, String> {
    let mut sorted: Vec<&(SourceSpan, String)> = edits.iter().collect();
    sorted.sort_by_key(|(s, _)| s.offset());
    let mut out = String::with_capacity(text.len() + 80 * edits.len());
    let mut at = 0;
    for (span, new) in sorted {
        let (start, end) = (span.offset(), span.offset() + span.len());
        if start < at {
            return Err("two references overlap".into());
        }
        let old = text
            .get(start..end)
            .ok_or_else(|| format!("bytes {start}..{end} are not a string of the file"))?;
        out.push_str(&text[at..start]);
        let hashes = old.len() - old.trim_start_matches('#').len();
        let fence = "#".repeat(hashes);
        out.push_str(&format!("{fence}\"{new}\"{fence}"));
        at = end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

/// Checks that `new_text` parses as cleanly as the old one did and that it holds,
/// at the import of each edit, the new reference (in file order).
fn check_rewrite(package: &str, new_text: &str, expected: &[String]) -> Result<(), String> {
    let (targets, diags) = crate::spec::parse_build_file(0, package, new_text);
    if let Some(d) = diags.first() {
        return Err(format!("the rewritten file would not parse: {}", d.message));
    }
    let found: BTreeSet<String> = targets
        .iter()
        .filter_map(|t| match &t.kind {
            TargetKind::Import(i) => match &i.source.value {
                ImportSource::Registry(r) => Some(r.written.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    match expected.iter().find(|e| !found.contains(*e)) {
        Some(missing) => Err(format!(
            "the rewritten file does not hold `{missing}`; it was left unchanged"
        )),
        None => Ok(()),
    }
}

/// Writes `new_text` over the spec file `rel` of the workspace at `root` if it
/// still holds `old_text` (see the module docs).
fn write_spec(root: &Path, rel: &str, old_text: &str, new_text: &str) -> Result<(), String> {
    let canonical = root
        .canonicalize()
        .map_err(|e| format!("cannot resolve the workspace root: {e}"))?;
    let ws = Root::open(&canonical).map_err(|e| format!("cannot open the workspace: {e}"))?;
    let located = ws
        .locate(Path::new(rel), false)
        .map_err(|e| format!("cannot reach `{rel}`: {e}"))?;
    let Some(name) = &located.name else {
        return Err(format!("`{rel}` is not a file"));
    };
    located
        .dir
        .replace_regular(name, old_text.as_bytes(), new_text.as_bytes())
        .map_err(|e| match crate::input::input_error(&e) {
            Some(crate::input::InputError::Symlink) => format!(
                "`{rel}` is a symbolic link: imgc does not rewrite through links; pin the file it points to by hand"
            ),
            Some(crate::input::InputError::NotRegular(what)) => {
                format!("`{rel}` is {what}, not a regular file")
            }
            _ => format!("cannot rewrite `{rel}`: {e}"),
        })
}

pub fn run(ctx: &Context, args: PinArgs) -> Result<(), CmdError> {
    let loaded = Loaded::load(ctx)?;
    loaded.warn_without_cache();
    let roots = loaded.select(&args.patterns)?;
    let within = loaded.graph.closure(&roots, petgraph::Direction::Outgoing);
    let wanted = wanted(&loaded.graph, &within, args.update);
    if wanted.is_empty() {
        report::result(if args.update {
            "nothing to pin: no selected `registry` import has a tag to follow"
        } else {
            "nothing to pin: every selected `registry` import is pinned"
        });
        return Ok(());
    }
    let resolve = resolver(ctx).map_err(CmdError::Env)?;
    let mut by_file: BTreeMap<FileId, Vec<(Wanted<'_>, Digest)>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut resolved: BTreeMap<Reference, Result<Digest, String>> = BTreeMap::new();
    for w in wanted {
        let tagged = tag_of(&w.reference.reference);
        let got = resolved
            .entry(tagged.clone())
            .or_insert_with(|| resolve(&tagged))
            .clone();
        let label = &loaded.graph.node(w.node).label;
        match got {
            Ok(d) => {
                if w.reference.reference.digest != Some(d) {
                    by_file.entry(w.file).or_default().push((w, d));
                }
            }
            Err(e) => failures.push(format!("cannot pin `{label}`: {e}")),
        }
    }
    let mut changed = 0;
    for (file, pins) in &by_file {
        let source = loaded.ws.sources.get(*file);
        let package = loaded
            .graph
            .node(pins[0].0.node)
            .label
            .package()
            .to_string();
        let edits: Vec<(SourceSpan, String)> = pins
            .iter()
            .map(|(w, d)| (w.span, pinned_text(&w.reference.written, d)))
            .collect();
        let expected: Vec<String> = edits.iter().map(|(_, t)| t.clone()).collect();
        let written = rewrite(&source.text, &edits)
            .and_then(|new| check_rewrite(&package, &new, &expected).map(|()| new))
            .and_then(|new| write_spec(&loaded.ws.root, &source.path, &source.text, &new));
        match written {
            Ok(()) => {
                for (w, d) in pins {
                    let label = &loaded.graph.node(w.node).label;
                    let tagged = tag_of(&w.reference.reference);
                    report::result(&format!("pinned {label} {tagged} -> {d}"));
                    changed += 1;
                }
            }
            Err(e) => failures.push(format!("`{}`: {e}", source.path)),
        }
    }
    if changed == 0 && failures.is_empty() {
        report::result("nothing to pin: every selected `registry` import is up to date");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        for f in &failures {
            report::warning(f);
        }
        Err(CmdError::Failed(format!(
            "{} import{} could not be pinned",
            failures.len(),
            if failures.len() == 1 { "" } else { "s" }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn d() -> Digest {
        Digest::from_hex(HEX).unwrap()
    }

    fn span_of(text: &str, needle: &str) -> SourceSpan {
        let at = text.find(needle).unwrap();
        SourceSpan::from(at..at + needle.len())
    }

    #[test]
    fn pinning_keeps_the_written_name_and_tag() {
        assert_eq!(
            pinned_text("127.0.0.1:5000/base:1", &d()),
            format!("127.0.0.1:5000/base:1@sha256:{HEX}")
        );
        let old = "0".repeat(64);
        assert_eq!(
            pinned_text(&format!("debian:12@sha256:{old}"), &d()),
            format!("debian:12@sha256:{HEX}")
        );
        let r = Reference::parse("example.com/a").unwrap();
        assert_eq!(tag_of(&r).to_string(), "example.com/a:latest");
        let r = Reference::parse(&format!("example.com/a:t@sha256:{HEX}")).unwrap();
        assert_eq!(tag_of(&r).to_string(), "example.com/a:t");
    }

    #[test]
    fn rewrite_changes_only_the_strings() {
        let text = "// base images\nimport \"a\" {\n    registry \"x.io/a:1\"   // the base\n}\n\
                    import \"b\" { registry #\"x.io/b:2\"#; }\n";
        let a = span_of(text, "\"x.io/a:1\"");
        let b = span_of(text, "#\"x.io/b:2\"#");
        let out = rewrite(
            text,
            &[
                (b, pinned_text("x.io/b:2", &d())),
                (a, pinned_text("x.io/a:1", &d())),
            ],
        )
        .unwrap();
        let want = text
            .replace("\"x.io/a:1\"", &format!("\"x.io/a:1@sha256:{HEX}\""))
            .replace("#\"x.io/b:2\"#", &format!("#\"x.io/b:2@sha256:{HEX}\"#"));
        assert_eq!(out, want);
        let exp = vec![
            format!("x.io/a:1@sha256:{HEX}"),
            format!("x.io/b:2@sha256:{HEX}"),
        ];
        check_rewrite("p", &out, &exp).unwrap();
        // A rewrite that lost a reference is caught before anything is written.
        assert!(check_rewrite("p", text, &exp).is_err());
        // Overlapping or out-of-range spans are refused.
        assert!(rewrite(text, &[(a, "x".into()), (a, "y".into())]).is_err());
        assert!(rewrite(text, &[(SourceSpan::from(0..10_000), "x".into())]).is_err());
    }
}
