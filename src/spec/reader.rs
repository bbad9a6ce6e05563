//! Node-shape helpers for the spec parser: splitting a KDL node into arguments and
//! properties, checking counts, types and duplicates, and turning every problem into
//! a located [`Diag`]. Nothing here knows the spec language's vocabulary; the
//! lowering in [`super::parse`] passes in the names that are valid at each place.

use crate::diag::{Code, Diag, did_you_mean};
use crate::spec::limits;
use crate::spec::model::{FileId, Spanned};
use kdl::{KdlDocument, KdlEntry, KdlError, KdlNode, KdlValue};
use miette::SourceSpan;
use std::cell::Cell;
use std::collections::HashMap;

thread_local! {
    /// Stack this thread is known to have free for a parse (see [`set_parse_stack_hint`]).
    static STACK_HINT: Cell<usize> = const { Cell::new(DEFAULT_STACK_HINT) };
}

/// What any thread may be assumed to have free: Rust threads get 2 MiB by default.
const DEFAULT_STACK_HINT: usize = 1 << 20;

/// Tells the parser that the current thread has about `bytes` of stack free, so
/// texts needing no more are parsed on it instead of on a thread of their own.
/// For thread pools built with a large `stack_size` (see `workspace::load`).
pub fn set_parse_stack_hint(bytes: usize) {
    STACK_HINT.with(|h| h.set(bytes));
}

/// The outcome of one kdl parse.
enum Parsed {
    Doc(KdlDocument),
    /// Nested deeper than [`limits::MAX_DEPTH`]: the span of the first node too deep.
    TooDeep(SourceSpan),
    Error(KdlError),
    /// No thread with the stack needed could be started.
    NoStack(std::io::Error),
}

/// Parses `text` on a stack of at least `need` bytes: on this thread if its hint
/// says it has that much, else on a scoped thread of exactly that size. The depth
/// check runs (and a too-deep document is dropped) on that same stack.
fn parse_on_stack(text: &str, need: usize) -> Parsed {
    let parse = || match KdlDocument::parse(text) {
        Ok(doc) => match too_deep(&doc) {
            Some(span) => Parsed::TooDeep(span),
            None => Parsed::Doc(doc),
        },
        Err(e) => Parsed::Error(e),
    };
    if need <= STACK_HINT.with(Cell::get) {
        return parse();
    }
    std::thread::scope(|s| {
        match std::thread::Builder::new()
            .name("imgc-parse".into())
            .stack_size(need)
            .spawn_scoped(s, parse)
        {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => Parsed::NoStack(e),
        }
    })
}

/// The span of the first node nested deeper than [`limits::MAX_DEPTH`] (iterative).
fn too_deep(doc: &KdlDocument) -> Option<SourceSpan> {
    let mut stack: Vec<(&KdlNode, usize)> = doc.nodes().iter().rev().map(|n| (n, 1)).collect();
    while let Some((node, depth)) = stack.pop() {
        if depth > limits::MAX_DEPTH {
            return Some(head_span(node));
        }
        if let Some(children) = node.children() {
            stack.extend(children.nodes().iter().rev().map(|n| (n, depth + 1)));
        }
    }
    None
}

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
    /// Texts beyond the limits of [`super::limits`] get one [`Code::Limit`] diag
    /// and no document.
    pub fn parse_kdl(&mut self) -> Option<KdlDocument> {
        let need = limits::parse_stack_bytes(self.text);
        if need > limits::MAX_PARSE_STACK {
            let d = Diag::new(
                Code::Limit,
                format!(
                    "this file is too large for the spec parser: it may need {} MiB of stack, the limit is {} MiB",
                    need >> 20,
                    limits::MAX_PARSE_STACK >> 20
                ),
            )
            .at(self.file, SourceSpan::from(0..0))
            .label("in this file")
            .help("split it: move some targets into packages of their own");
            self.push(d);
            return None;
        }
        let (nesting, at) = limits::slashdash_nesting(self.text);
        if nesting > limits::MAX_SLASHDASH_NESTING {
            let d = self.diag(
                Code::Limit,
                SourceSpan::from(at..at + 1),
                format!(
                    "children blocks commented out with `/-` are nested {nesting} deep; the limit is {}",
                    limits::MAX_SLASHDASH_NESTING
                ),
                "too deep",
            );
            self.push(d.help("remove the commented-out blocks, or use `//` comments"));
            return None;
        }
        match parse_on_stack(self.text, need) {
            Parsed::Doc(doc) => {
                self.check_types(doc.nodes());
                Some(doc)
            }
            Parsed::TooDeep(span) => {
                let d = self.diag(
                    Code::Limit,
                    span,
                    format!(
                        "nodes are nested more than {} levels deep",
                        limits::MAX_DEPTH
                    ),
                    "too deep",
                );
                self.push(
                    d.help("the spec language nests at most 3 levels: `image` > `layer` > `copy`"),
                );
                None
            }
            Parsed::Error(e) => {
                self.syntax_errors(&e);
                None
            }
            Parsed::NoStack(e) => {
                let d = Diag::new(
                    Code::Limit,
                    format!(
                        "cannot parse this file: no thread with {} MiB of stack could be started ({e})",
                        need.div_ceil(1 << 20)
                    ),
                )
                .at(self.file, SourceSpan::from(0..0))
                .label("in this file")
                .help("split it: move some targets into packages of their own");
                self.push(d);
                None
            }
        }
    }

    fn syntax_errors(&mut self, e: &KdlError) {
        // The parser may report one error per stray character: the first few are
        // what helps (and rendering hundreds of thousands would take minutes).
        const SHOWN: usize = 20;
        if e.diagnostics.len() > SHOWN {
            let more = e.diagnostics.len() - SHOWN;
            let d = Diag::new(
                Code::Syntax,
                format!("{more} more syntax errors in this file are not shown"),
            )
            .at(self.file, SourceSpan::from(0..0))
            .label("in this file")
            .help("fix the errors shown first");
            self.push(d);
        }
        for d in e.diagnostics.iter().take(SHOWN) {
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
