//! Node-shape helpers for the spec parser: splitting a KDL node into arguments and
//! properties, checking counts, types and duplicates, and turning every problem into
//! a located [`Diag`]. Nothing here knows the spec language's vocabulary; the
//! lowering in [`super::parse`] passes in the names that are valid at each place.

use crate::diag::{Code, Diag, did_you_mean};
use crate::spec::model::{FileId, Spanned};
use kdl::{KdlDocument, KdlEntry, KdlError, KdlNode, KdlValue};
use miette::SourceSpan;
use std::collections::HashMap;

/// The state of one file's lowering: where we are and what went wrong so far.
pub(crate) struct Ctx<'a> {
    pub file: FileId,
    pub text: &'a str,
    pub diags: Vec<Diag>,
}

/// A node's entries, split into positional arguments and properties.
pub(crate) struct Parts<'n> {
    pub args: Vec<&'n KdlEntry>,
    pub props: Vec<&'n KdlEntry>,
}

impl<'n> Parts<'n> {
    /// The first property called `name`.
    pub fn prop(&self, name: &str) -> Option<&'n KdlEntry> {
        self.props
            .iter()
            .copied()
            .find(|e| e.name().is_some_and(|k| k.value() == name))
    }
}

/// The name of a node, as written.
pub(crate) fn name(node: &KdlNode) -> &str {
    node.name().value()
}

/// The span of a node's first line: its name and entries, without the children block.
pub(crate) fn head_span(node: &KdlNode) -> SourceSpan {
    let start = node.span().offset();
    let end = node
        .entries()
        .iter()
        .map(|e| e.span().offset() + e.span().len())
        .chain(std::iter::once(
            node.name().span().offset() + node.name().span().len(),
        ))
        .max()
        .unwrap_or(start);
    SourceSpan::from(start..end.max(start))
}

/// The span of an entry's value (for a property, without `key=`).
pub(crate) fn value_span(e: &KdlEntry) -> SourceSpan {
    let span = e.span();
    if e.name().is_none() || e.ty().is_some() {
        return span;
    }
    let repr = e.format().map_or(0, |f| f.value_repr.len());
    if repr == 0 || repr > span.len() {
        return span;
    }
    SourceSpan::from(span.offset() + span.len() - repr..span.offset() + span.len())
}

/// A short description of a KDL value for messages: `a number (12)`.
pub(crate) fn describe(v: &KdlValue) -> String {
    match v {
        KdlValue::String(s) => format!("a string (\"{s}\")"),
        KdlValue::Integer(i) => format!("a number ({i})"),
        KdlValue::Float(f) => format!("a number ({f})"),
        KdlValue::Bool(b) => format!("a boolean (#{b})"),
        KdlValue::Null => "#null".to_string(),
    }
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'a> Ctx<'a> {
    pub fn new(file: FileId, text: &'a str) -> Self {
        Ctx {
            file,
            text,
            diags: Vec::new(),
        }
    }

    /// A diagnostic at `span` of this file, with a caret label.
    pub fn diag(&self, code: Code, span: SourceSpan, message: String, label: &str) -> Diag {
        Diag::new(code, message).at(self.file, span).label(label)
    }

    pub fn push(&mut self, d: Diag) {
        self.diags.push(d);
    }

    /// 1-based line of a byte offset in this file.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// Parses KDL text, converting every syntax error into a [`Code::Syntax`] diag.
    pub fn parse_kdl(&mut self) -> Option<KdlDocument> {
        match KdlDocument::parse(self.text) {
            Ok(doc) => {
                self.check_types(doc.nodes());
                Some(doc)
            }
            Err(e) => {
                self.syntax_errors(&e);
                None
            }
        }
    }

    fn syntax_errors(&mut self, e: &KdlError) {
        for d in &e.diagnostics {
            let msg = d.message.as_deref().unwrap_or("invalid KDL");
            let label = d.label.as_deref().unwrap_or("here");
            let mut diag = self.diag(Code::Syntax, d.span, lowercase_first(msg), label);
            if let Some(help) = &d.help {
                diag = diag.help(lowercase_first(help));
            }
            self.push(diag);
        }
        if e.diagnostics.is_empty() {
            let span = SourceSpan::from(0..0);
            self.push(self.diag(Code::Syntax, span, "invalid KDL".into(), "here"));
        }
    }

    /// Reports every KDL type annotation, on nodes and values, anywhere.
    fn check_types(&mut self, nodes: &[KdlNode]) {
        for node in nodes {
            if let Some(ty) = node.ty() {
                self.type_annotation(ty.value(), ty.span());
            }
            for e in node.entries() {
                if let Some(ty) = e.ty() {
                    self.type_annotation(ty.value(), ty.span());
                }
            }
            if let Some(children) = node.children() {
                self.check_types(children.nodes());
            }
        }
    }

    fn type_annotation(&mut self, ty: &str, span: SourceSpan) {
        let d = self.diag(
            Code::WrongType,
            span,
            format!("type annotation `({ty})` is not allowed in imgc specs"),
            "type annotation",
        );
        self.push(d.help("remove the `(...)` before the value"));
    }

    /// Splits a node's entries and reports properties not in `allowed` (did you
    /// mean) and properties given twice. `allowed = None` accepts any key.
    pub fn parts<'n>(&mut self, node: &'n KdlNode, allowed: Option<&[&str]>) -> Parts<'n> {
        let mut parts = Parts {
            args: Vec::new(),
            props: Vec::new(),
        };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for e in node.entries() {
            let Some(key) = e.name() else {
                parts.args.push(e);
                continue;
            };
            if let Some(allowed) = allowed {
                if !allowed.contains(&key.value()) {
                    self.unknown_property(node, e, key.value(), allowed);
                    continue;
                }
                if let Some(first) = seen.get(key.value()) {
                    self.duplicate_property(e, key.value(), *first);
                    continue;
                }
                seen.insert(key.value(), e.span().offset());
            }
            parts.props.push(e);
        }
        parts
    }

    fn unknown_property(&mut self, node: &KdlNode, e: &KdlEntry, key: &str, allowed: &[&str]) {
        let node_name = name(node);
        let d = self.diag(
            Code::UnknownProperty,
            e.span(),
            format!("unknown property `{key}` on `{node_name}`"),
            "unknown property",
        );
        let help = match did_you_mean(key, allowed.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if allowed.is_empty() => format!("`{node_name}` takes no properties"),
            None => format!("`{node_name}` takes {}", list(allowed)),
        };
        self.push(d.help(help));
    }

    fn duplicate_property(&mut self, e: &KdlEntry, key: &str, first: usize) {
        let line = self.line_of(first);
        let d = self.diag(
            Code::Duplicate,
            e.span(),
            format!("property `{key}` is given twice (first on line {line})"),
            "given again here",
        );
        self.push(d.help(format!("keep one `{key}=`")));
    }

    /// Reports an unknown node at a place where `valid` nodes are allowed.
    pub fn unknown_node(&mut self, node: &KdlNode, place: &str, valid: &[&str]) {
        let n = name(node);
        let d = self.diag(
            Code::UnknownNode,
            node.name().span(),
            format!("unknown node `{n}` in {place}"),
            "unknown node",
        );
        let help = match did_you_mean(n, valid.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("valid here: {}", list(valid)),
        };
        self.push(d.help(help));
    }

    /// Reports a children block on a node that takes none.
    pub fn no_children(&mut self, node: &KdlNode) {
        let Some(children) = node.children() else {
            return;
        };
        let span = if children.span().is_empty() {
            node.span()
        } else {
            children.span()
        };
        let n = name(node);
        let d = self.diag(
            Code::UnknownNode,
            span,
            format!("`{n}` takes no children block"),
            "unexpected block",
        );
        self.push(d.help("remove the `{ ... }`"));
    }

    /// Checks that there are exactly `n` arguments; returns them if there are at
    /// least `n` (extra ones are reported). `what` describes them: "a source path".
    pub fn exact_args<'n>(
        &mut self,
        node: &KdlNode,
        args: &[&'n KdlEntry],
        n: usize,
        what: &str,
    ) -> Option<Vec<&'n KdlEntry>> {
        if args.len() < n {
            self.missing_args(node, what);
            return None;
        }
        if args.len() > n {
            self.too_many(node, &args[n..], n, what);
        }
        Some(args[..n].to_vec())
    }

    /// Checks that there is at least one argument.
    pub fn some_args(&mut self, node: &KdlNode, args: &[&KdlEntry], what: &str) -> bool {
        if args.is_empty() {
            self.missing_args(node, what);
            return false;
        }
        true
    }

    fn missing_args(&mut self, node: &KdlNode, what: &str) {
        let n = name(node);
        let d = self.diag(
            Code::Missing,
            head_span(node),
            format!("`{n}` needs {what}"),
            "argument missing",
        );
        self.push(d);
    }

    fn too_many(&mut self, node: &KdlNode, extra: &[&KdlEntry], n: usize, what: &str) {
        let (Some(first), Some(last)) = (extra.first(), extra.last()) else {
            return;
        };
        let start = first.span().offset();
        let end = last.span().offset() + last.span().len();
        let count = if n == 1 {
            "one argument".to_string()
        } else {
            format!("{n} arguments")
        };
        let node_name = name(node);
        let d = self.diag(
            Code::TooManyValues,
            SourceSpan::from(start..end.max(start)),
            format!(
                "`{node_name}` takes {count} ({what}), got {}",
                n + extra.len()
            ),
            "extra",
        );
        self.push(d.help("remove the extra values"));
    }

    /// Reports a missing property or child.
    pub fn missing(&mut self, span: SourceSpan, message: String, help: &str) {
        let d = self.diag(Code::Missing, span, message, "required here");
        self.push(d.help(help));
    }

    /// The string value of an entry, or a [`Code::WrongType`] diag.
    pub fn string(&mut self, e: &KdlEntry, what: &str) -> Option<Spanned<String>> {
        let span = value_span(e);
        if let Some(s) = e.value().as_string() {
            return Some(Spanned::new(s.to_string(), span));
        }
        let d = self.diag(
            Code::WrongType,
            span,
            format!("{what} must be a string, got {}", describe(e.value())),
            "not a string",
        );
        let repr = e.format().map(|f| f.value_repr.clone());
        let help = match repr {
            Some(r) if !r.is_empty() => format!("quote it: \"{r}\""),
            _ => "write it in double quotes".to_string(),
        };
        self.push(d.help(help));
        None
    }

    /// All arguments as strings (each non-string one is reported).
    pub fn strings(&mut self, args: &[&KdlEntry], what: &str) -> Vec<Spanned<String>> {
        args.iter().filter_map(|e| self.string(e, what)).collect()
    }

    /// Records the first occurrence of a singleton node; reports later ones.
    /// Returns false if the node was seen before (the caller then skips it).
    pub fn singleton(&mut self, seen: &mut HashMap<String, usize>, node: &KdlNode) -> bool {
        let n = name(node).to_string();
        if let Some(first) = seen.get(&n) {
            let line = self.line_of(*first);
            let d = self.diag(
                Code::Duplicate,
                head_span(node),
                format!("`{n}` is given twice (first on line {line})"),
                "given again here",
            );
            self.push(d.help(format!("keep one `{n}`")));
            return false;
        }
        seen.insert(n, node.span().offset());
        true
    }

    /// Sorts the collected diagnostics by position (stable) and returns them.
    pub fn finish(mut self) -> Vec<Diag> {
        self.diags
            .sort_by_key(|d| d.location.map_or(0, |(_, s)| s.offset()));
        self.diags
    }
}
