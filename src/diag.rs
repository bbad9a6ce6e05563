//! Diagnostics: stable codes, file + span, a `help:` where a fix is known.
//!
//! Every stage collects [`Diag`]s into a `Vec` instead of stopping at the first;
//! the CLI renders them all with miette (file:line:col, the source line, a caret
//! under the span) and exits 1. The codes are stable: tests and the book's
//! diagnostics chapter refer to them.

use crate::spec::model::FileId;
use miette::{LabeledSpan, NamedSource, SourceSpan};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Stable diagnostic codes. Never renumber; retire a code by leaving a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Code {
    /// The KDL text does not parse.
    Syntax,
    /// A node name that is not part of the spec language here.
    UnknownNode,
    /// A property that the node does not take.
    UnknownProperty,
    /// A value of the wrong type (a number where a string is needed, ...).
    WrongType,
    /// A required argument, property or child is missing.
    Missing,
    /// A mode string that is not 3-4 octal digits.
    BadMode,
    /// An owner string that is not `UID:GID` in numbers.
    BadOwner,
    /// A source path that is absolute or leaves the workspace.
    PathEscapes,
    /// Two targets with the same name in one package.
    DuplicateTarget,
    /// A label that names no target.
    UnknownLabel,
    /// A dependency cycle.
    Cycle,
    /// A dependency of the wrong kind (an image `from` a layer, `layers` naming an image...).
    WrongKind,
    /// A malformed label.
    BadLabel,
    /// More arguments than the node takes.
    TooManyValues,
    /// A node or property given twice where it may appear once.
    Duplicate,
    /// A value outside what is allowed (unknown compression, bad port, relative path...).
    InvalidValue,
    /// No `imgc.kdl` above the current directory, or a workspace file problem.
    Workspace,
    /// A command-line pattern that selects nothing.
    NoMatch,
    /// A source file, directory or glob of a layer that does not exist or cannot be read.
    SourceMissing,
    /// Two entries of one layer that claim the same path differently.
    Conflict,
    /// Two images whose output layouts would be nested in one another.
    OutputCollision,
    /// A layer of an image that would change a lower layer's path between
    /// directory and non-directory (deleting what was below).
    StackConflict,
    /// A spec beyond a documented limit: nesting depth, file size for the parser,
    /// the length of an output path.
    Limit,
    /// An image that the policy in imgc.kdl requires to be built on a base
    /// (`require-base`) and that is not, directly or through other images.
    NotOnRequiredBase,
    /// A `registry` import whose image reference is malformed.
    BadReference,
    /// A `registry` import without a digest (a tag moves; a build must not).
    NotPinned,
    /// An `http-file` URL that imgc will not fetch: not `http`/`https`, no host,
    /// credentials in it, spaces or control characters.
    BadUrl,
    /// A `sha256` that is not 64 hexadecimal digits.
    BadChecksum,
    /// An `http-file` download that failed: the server could not be reached or
    /// answered with an error (404, 500, ...), or sent more than it should.
    DownloadFailed,
    /// An `http-file` download whose bytes do not have the pinned sha256 (or size).
    DownloadMismatch,
    /// A Debian repository's `Packages` index that does not parse.
    BadIndex,
    /// Package requests that cannot be resolved against the repositories.
    Unresolvable,
    /// A lock file that no longer satisfies the spec's package requests.
    StaleLock,
    /// A lock file that contradicts itself (a target naming a package it lacks...).
    BadLock,
    /// A `packages` node naming no `debian` repository of imgc.kdl (or none
    /// when imgc.kdl declares several).
    UnknownRepository,
    /// A package request that is no Debian package name, or whose `=version` pin
    /// is no Debian version.
    BadPackageRequest,
    /// Targets request packages and the workspace has no `imgc.lock`.
    LockMissing,
    /// Retired: a target with `packages` selected for a build, when packages
    /// were locked but not built. Kept so the code never means anything else.
    PackagesNotBuilt,
    /// A Debian repository that cannot be downloaded: transport failure,
    /// timeout, an HTTP error, a refused redirect, an answer too large.
    RepositoryUnavailable,
    /// A Debian repository whose files cannot be trusted: a missing or bad
    /// signature, an index whose size or SHA256 is not the Release's, a malformed
    /// Release or keyring.
    RepositoryUntrusted,
}

impl Code {
    pub const ALL: [Code; 40] = [
        Code::Syntax,
        Code::UnknownNode,
        Code::UnknownProperty,
        Code::WrongType,
        Code::Missing,
        Code::BadMode,
        Code::BadOwner,
        Code::PathEscapes,
        Code::DuplicateTarget,
        Code::UnknownLabel,
        Code::Cycle,
        Code::WrongKind,
        Code::BadLabel,
        Code::TooManyValues,
        Code::Duplicate,
        Code::InvalidValue,
        Code::Workspace,
        Code::NoMatch,
        Code::SourceMissing,
        Code::Conflict,
        Code::OutputCollision,
        Code::StackConflict,
        Code::Limit,
        Code::NotOnRequiredBase,
        Code::BadReference,
        Code::NotPinned,
        Code::BadUrl,
        Code::BadChecksum,
        Code::DownloadFailed,
        Code::DownloadMismatch,
        Code::BadIndex,
        Code::Unresolvable,
        Code::StaleLock,
        Code::BadLock,
        Code::UnknownRepository,
        Code::BadPackageRequest,
        Code::LockMissing,
        Code::PackagesNotBuilt,
        Code::RepositoryUnavailable,
        Code::RepositoryUntrusted,
    ];

    /// The stable code, `E001`...
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "E001",
            Code::UnknownNode => "E002",
            Code::UnknownProperty => "E003",
            Code::WrongType => "E004",
            Code::Missing => "E005",
            Code::BadMode => "E006",
            Code::BadOwner => "E007",
            Code::PathEscapes => "E008",
            Code::DuplicateTarget => "E009",
            Code::UnknownLabel => "E010",
            Code::Cycle => "E011",
            Code::WrongKind => "E012",
            Code::BadLabel => "E013",
            Code::TooManyValues => "E014",
            Code::Duplicate => "E015",
            Code::InvalidValue => "E016",
            Code::Workspace => "E017",
            Code::NoMatch => "E018",
            Code::SourceMissing => "E019",
            Code::Conflict => "E020",
            Code::OutputCollision => "E021",
            Code::StackConflict => "E030",
            Code::Limit => "E040",
            Code::NotOnRequiredBase => "E050",
            Code::BadReference => "E060",
            Code::NotPinned => "E061",
            Code::BadUrl => "E070",
            Code::BadChecksum => "E071",
            Code::DownloadFailed => "E072",
            Code::DownloadMismatch => "E073",
            Code::BadIndex => "E090",
            Code::Unresolvable => "E091",
            Code::StaleLock => "E092",
            Code::BadLock => "E093",
            Code::UnknownRepository => "E074",
            Code::BadPackageRequest => "E075",
            Code::LockMissing => "E076",
            Code::PackagesNotBuilt => "E077",
            Code::RepositoryUnavailable => "E078",
            Code::RepositoryUntrusted => "E079",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source file known to the diagnostics renderer.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Workspace-relative path with `/` separators, e.g. `services/api/BUILD.kdl`.
    pub path: String,
    pub text: Arc<String>,
}

/// All source files of a run, indexed by [`FileId`].
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, path: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile {
            path: path.into(),
            text: Arc::new(text.into()),
        });
        self.files.len() - 1
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id]
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        let text = &self.files[id].text;
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub code: Code,
    pub message: String,
    /// Where, if it comes from a file.
    pub location: Option<(FileId, SourceSpan)>,
    /// Text shown under the caret.
    pub label: Option<String>,
    pub help: Option<String>,
}

impl Diag {
    pub fn new(code: Code, message: impl Into<String>) -> Diag {
        Diag {
            code,
            message: message.into(),
            location: None,
            label: None,
            help: None,
        }
    }

    pub fn at(mut self, file: FileId, span: SourceSpan) -> Diag {
        self.location = Some((file, span));
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Diag {
        self.label = Some(label.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diag {
        self.help = Some(help.into());
        self
    }

    /// `path:line:col` of the diagnostic, if it has a location.
    pub fn position(&self, sources: &Sources) -> Option<String> {
        let (file, span) = self.location?;
        let (line, col) = sources.line_col(file, span.offset());
        Some(format!("{}:{line}:{col}", sources.get(file).path))
    }

    /// A miette report for rendering, with the named source attached.
    pub fn to_report(&self, sources: &Sources) -> miette::Report {
        let pos = self.position(sources);
        let rendered = Rendered {
            code: self.code,
            message: match &pos {
                Some(pos) => format!(
                    "{}: {}",
                    escape_controls(pos),
                    escape_controls(&self.message)
                ),
                None => escape_controls(&self.message).into_owned(),
            },
            source: self.location.map(|(file, _)| {
                let f = sources.get(file);
                let text = match mask_controls(&f.text) {
                    Cow::Borrowed(_) => f.text.clone(),
                    Cow::Owned(masked) => Arc::new(masked),
                };
                NamedSource::new(escape_controls(&f.path), text)
            }),
            span: self.location.map(|(_, s)| s),
            label: self
                .label
                .as_deref()
                .map(|l| escape_controls(l).into_owned()),
            help: self
                .help
                .as_deref()
                .map(|h| escape_controls(h).into_owned()),
        };
        miette::Report::new(rendered)
    }
}

/// A one-line, colour-free form: `E010 services/api/BUILD.kdl:3:10: unknown label ...`.
impl Diag {
    pub fn short(&self, sources: &Sources) -> String {
        match self.position(sources) {
            Some(pos) => format!(
                "{} {}: {}",
                self.code,
                escape_controls(&pos),
                escape_controls(&self.message)
            ),
            None => format!("{} {}", self.code, escape_controls(&self.message)),
        }
    }
}

#[derive(Debug)]
struct Rendered {
    code: Code,
    message: String,
    source: Option<NamedSource<Arc<String>>>,
    span: Option<SourceSpan>,
    label: Option<String>,
    help: Option<String>,
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            self.label.clone(),
            span,
        ))))
    }
}

/// `text` with every character that a terminal would act on instead of showing
/// escaped as `\u{..}`: control characters other than newline and tab (so an
/// escape sequence in a file name cannot recolour, retitle or rewrite the terminal)
/// and the Unicode direction overrides (so a name cannot reorder what is shown).
/// Everything imgc prints that comes from the workspace or the environment (paths,
/// file names, messages that quote them) goes through it; labels are validated.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with each character [`escape_controls`] would escape replaced by one of
/// the same length in UTF-8 (`?`, `¿` or U+FFFD), so byte offsets (spans) stay
/// valid: for source text shown under a diagnostic.
pub fn mask_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match (needs_escape(c), c.len_utf8()) {
                (false, _) => c,
                (true, 1) => '?',
                (true, 2) => '\u{bf}',
                (true, _) => '\u{fffd}',
            })
            .collect(),
    )
}

/// Suggests the closest candidate to `name`, for "did you mean".
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(name, c);
        if score >= 0.8 && best.is_none_or(|(s, b)| score > s || (score == s && c < b)) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let mut s = Sources::default();
        let id = s.add("a/BUILD.kdl", "ab\ncdé\nf");
        assert_eq!(s.line_col(id, 0), (1, 1));
        assert_eq!(s.line_col(id, 3), (2, 1));
        assert_eq!(s.line_col(id, 5), (2, 3));
        assert_eq!(s.line_col(id, 8), (3, 1));
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
        }
    }

    #[test]
    fn every_code_is_documented_in_the_book() {
        let book = include_str!("../book/src/diagnostics.md");
        for c in Code::ALL {
            assert!(
                book.contains(&format!("## {c} — ")),
                "{c} has no section in the diagnostics chapter"
            );
            assert!(
                book.contains(&format!("| {c} |")),
                "{c} is missing from the diagnostics table"
            );
        }
    }

    #[test]
    fn control_characters_are_escaped_and_masked() {
        assert_eq!(escape_controls("plain/path ok\n\t"), "plain/path ok\n\t");
        assert_eq!(escape_controls("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape_controls("x\ry\u{7f}"), "x\\u{d}y\\u{7f}");
        assert_eq!(escape_controls("evil\u{202e}txt"), "evil\\u{202e}txt");
        assert_eq!(escape_controls("\u{9b}31m"), "\\u{9b}31m");
        // Masking keeps every byte offset.
        for text in ["a\u{1b}b", "c\u{9b}d", "e\u{202e}f", "é\u{7}"] {
            let masked = mask_controls(text);
            assert_eq!(masked.len(), text.len(), "{text:?}");
            assert!(!masked.chars().any(needs_escape));
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("runtme", ["runtime", "certs"]),
            Some("runtime")
        );
        assert_eq!(did_you_mean("zzz", ["runtime", "certs"]), None);
    }
}
