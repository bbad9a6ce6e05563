//! `imgc.lock`: the resolved packages of every target, in a stable KDL text.
//!
//! Builds read only this file and never resolve, so it holds everything a build
//! needs to fetch and verify each `.deb` (repository URL, filename, size, sha256)
//! and everything `imgc check` needs to tell whether it is still what the spec
//! asks (each target's requests as written). It is written canonically: nodes
//! sorted (repositories by name, packages by name, version and repository,
//! targets by label), one node per package, fixed property order, four-space
//! indentation, so `imgc lock` twice gives the same bytes and a diff shows exactly
//! the packages that moved.
//!
//! ```kdl
//! // imgc.lock: written by `imgc lock`; builds read only this file. Do not edit: run `imgc lock`.
//! lock-version 1
//!
//! repository "bookworm" url="http://deb.debian.org/debian" suite="bookworm" components="main" arch="amd64" release-sha256="<hex>"
//!
//! package "bookworm" "libc6" version="2.36-9+deb12u9" arch="amd64" filename="pool/..." size=2757936 sha256="<hex>" {
//!     depends "libgcc-s1"
//! }
//!
//! target "//bases:runtime" {
//!     requests "ca-certificates" "libc6" "tzdata"
//!     packages "base-files" "ca-certificates" "libc6" "libgcc-s1" "tzdata"
//! }
//! ```
//!
//! A package entry is identified by (repository, name, version): two targets
//! may lock two versions of one name (different pins) or take it from two
//! repositories. A target's `packages` names each of its packages by the shortest
//! unambiguous form: `name` when the lock holds one entry of that name, else
//! `name=version`, else `repo/name=version`. `depends` (and `recommends`, for
//! targets that follow them) name packages: within a target a name is unique, so
//! an edge means "the entry of that name in the same target". When targets
//! resolved one package's alternatives differently, its entry lists the union of
//! what they resolved to; [`Lock::why`] only follows edges inside the target, so a
//! chain it prints is always made of real relations between the target's packages.
//!
//! What it deliberately does not hold: the spec's keyring (a build trusts the
//! lock's hashes, not the repository) and anything of the index not needed to
//! fetch or explain (descriptions, priorities).

use super::index::{Version, valid_name};
use super::resolve::{Request, Resolution, chain};
use crate::diag::{Code, Diag};
use crate::hash::Digest;
use crate::spec::model::FileId;
use crate::spec::reader::{Ctx, head_span, name as node_name, value_span};
use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// The format this imgc reads and writes.
pub const LOCK_VERSION: i128 = 1;

/// The first line of every lock file.
pub const HEADER: &str = "// imgc.lock: written by `imgc lock`; builds read only this file. Do not edit: run `imgc lock`.";

/// A Debian repository as locked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repository {
    /// The name the spec gives it (`debian "bookworm" { ... }`).
    pub name: String,
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
    pub arch: String,
    /// SHA256 of the `Release` text the indexes were verified against.
    pub release_sha256: Digest,
}

/// One locked package (a `.deb`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedPackage {
    pub repo: String,
    pub name: String,
    pub version: Version,
    pub arch: String,
    /// Path below the repository's URL.
    pub filename: String,
    pub size: u64,
    pub sha256: Digest,
    /// Names its `Pre-Depends`/`Depends` resolved to (see the module docs).
    pub depends: BTreeSet<String>,
    /// Names its `Recommends` resolved to, in targets that follow them.
    pub recommends: BTreeSet<String>,
}

impl LockedPackage {
    pub fn id(&self) -> PackageId {
        PackageId {
            name: self.name.clone(),
            version: self.version.clone(),
            repo: self.repo.clone(),
        }
    }
}

/// Identifies a package entry: name, version, repository.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageId {
    pub name: String,
    pub version: Version,
    pub repo: String,
}

/// One target's packages as locked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedTarget {
    /// The target's label (`//bases:runtime`).
    pub label: String,
    /// Whether its resolution followed `Recommends`.
    pub recommends: bool,
    /// The requests as the spec wrote them, sorted.
    pub requests: Vec<Request>,
    /// Its closure, sorted by name (one entry per name).
    pub packages: Vec<PackageId>,
}

/// A parsed or constructed lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// Sorted by name.
    pub repositories: Vec<Repository>,
    /// Sorted by [`PackageId`].
    pub packages: Vec<LockedPackage>,
    /// Sorted by label.
    pub targets: Vec<LockedTarget>,
}

/// Why a lock no longer satisfies a target's requests ([`Lock::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The lock has no entry for the target.
    NoTarget { target: String },
    /// Requested by the spec, not in the lock's requests.
    Missing { target: String, request: String },
    /// In the lock's requests, no longer requested.
    Extra { target: String, request: String },
    /// Requested with another pin (or none) than the lock recorded.
    Pinned {
        target: String,
        spec: String,
        lock: String,
    },
    /// `recommends` differs.
    Recommends { target: String, spec: bool },
}

impl Stale {
    /// The package the difference is about (`None` for the target as a whole).
    pub fn package(&self) -> Option<&str> {
        match self {
            Stale::Missing { request, .. } | Stale::Extra { request, .. } => {
                Some(request.split('=').next().unwrap_or(request))
            }
            Stale::Pinned { spec, .. } => Some(spec.split('=').next().unwrap_or(spec)),
            Stale::NoTarget { .. } | Stale::Recommends { .. } => None,
        }
    }

    /// As a diagnostic ([`Code::StaleLock`]); the caller adds the spec span.
    pub fn to_diag(&self) -> Diag {
        Diag::new(Code::StaleLock, self.to_string()).help("run `imgc lock` and commit imgc.lock")
    }
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::NoTarget { target } => {
                write!(f, "imgc.lock has no packages for `{target}`")
            }
            Stale::Missing { target, request } => write!(
                f,
                "`{target}` requests `{request}`, which imgc.lock does not have"
            ),
            Stale::Extra { target, request } => write!(
                f,
                "imgc.lock has `{request}` for `{target}`, which no longer requests it"
            ),
            Stale::Pinned { target, spec, lock } => {
                write!(f, "`{target}` requests `{spec}`, imgc.lock has `{lock}`")
            }
            Stale::Recommends { target, spec } => write!(
                f,
                "`{target}` has recommends={}, imgc.lock was resolved with recommends={}",
                if *spec { "#true" } else { "#false" },
                if *spec { "#false" } else { "#true" }
            ),
        }
    }
}

impl std::error::Error for Stale {}

/// Why [`Lock::from_resolutions`] refused its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError(pub String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// Whether `name` may name a repository in a lock: `[A-Za-z0-9._-]+`.
pub fn valid_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Lock {
    /// Builds the lock of `targets` (label, resolution), whose packages come from
    /// `repositories`.
    pub fn from_resolutions(
        repositories: Vec<Repository>,
        targets: Vec<(String, Resolution)>,
    ) -> Result<Lock, BuildError> {
        let mut repos: BTreeMap<String, Repository> = BTreeMap::new();
        for r in repositories {
            if !valid_repo_name(&r.name) {
                return Err(BuildError(format!(
                    "`{}` cannot name a repository in imgc.lock (letters, digits, `.`, `_`, `-`)",
                    r.name
                )));
            }
            for (what, value) in [("url", &r.url), ("suite", &r.suite), ("arch", &r.arch)] {
                if value.is_empty() || value.chars().any(char::is_control) {
                    return Err(BuildError(format!(
                        "repository `{}`: `{what}` must be a non-empty string without control characters",
                        r.name
                    )));
                }
            }
            if r.components.is_empty()
                || r.components.iter().any(|c| {
                    c.is_empty() || c.chars().any(|ch| ch.is_whitespace() || ch.is_control())
                })
            {
                return Err(BuildError(format!(
                    "repository `{}`: components must be non-empty words",
                    r.name
                )));
            }
            if let Some(old) = repos.get(&r.name) {
                if *old != r {
                    return Err(BuildError(format!(
                        "repository `{}` is given twice, differently",
                        r.name
                    )));
                }
                continue;
            }
            repos.insert(r.name.clone(), r);
        }
        let mut packages: BTreeMap<PackageId, LockedPackage> = BTreeMap::new();
        let mut locked_targets: BTreeMap<String, LockedTarget> = BTreeMap::new();
        for (label, res) in targets {
            if locked_targets.contains_key(&label) {
                return Err(BuildError(format!("target `{label}` is given twice")));
            }
            if res.requests.is_empty() {
                return Err(BuildError(format!("target `{label}` requests no package")));
            }
            let mut ids = Vec::new();
            for (name, s) in &res.packages {
                let Some(repo) = repos.get(&s.repo) else {
                    return Err(BuildError(format!(
                        "`{name}` of `{label}` comes from repository `{}`, which is not given",
                        s.repo
                    )));
                };
                let p = &s.package;
                if p.arch != repo.arch && p.arch != "all" {
                    return Err(BuildError(format!(
                        "`{name}` {} of `{label}` is for `{}`, repository `{}` for `{}`",
                        p.version, p.arch, repo.name, repo.arch
                    )));
                }
                let entry = LockedPackage {
                    repo: s.repo.clone(),
                    name: name.clone(),
                    version: p.version.clone(),
                    arch: p.arch.clone(),
                    filename: p.filename.clone(),
                    size: p.size,
                    sha256: p.sha256,
                    depends: BTreeSet::new(),
                    recommends: BTreeSet::new(),
                };
                let id = entry.id();
                let e = packages.entry(id.clone()).or_insert(entry);
                if (&e.arch, &e.filename, e.size, e.sha256)
                    != (&p.arch, &p.filename, p.size, p.sha256)
                {
                    return Err(BuildError(format!(
                        "`{name}` {} of repository `{}` is known with two different files",
                        p.version, s.repo
                    )));
                }
                e.depends.extend(s.depends.iter().cloned());
                e.recommends.extend(s.recommends.iter().cloned());
                ids.push(id);
            }
            ids.sort();
            locked_targets.insert(
                label.clone(),
                LockedTarget {
                    label,
                    recommends: res.options.recommends,
                    requests: res.requests.clone(),
                    packages: ids,
                },
            );
        }
        Ok(Lock {
            repositories: repos.into_values().collect(),
            packages: packages.into_values().collect(),
            targets: locked_targets.into_values().collect(),
        })
    }

    /// The target called `label`.
    pub fn target(&self, label: &str) -> Option<&LockedTarget> {
        self.targets
            .binary_search_by(|t| t.label.as_str().cmp(label))
            .ok()
            .map(|i| &self.targets[i])
    }

    /// The entry of a package.
    pub fn package(&self, id: &PackageId) -> Option<&LockedPackage> {
        self.packages
            .binary_search_by(|p| {
                (&p.name, &p.version, &p.repo).cmp(&(&id.name, &id.version, &id.repo))
            })
            .ok()
            .map(|i| &self.packages[i])
    }

    /// The repository called `name`.
    pub fn repository(&self, name: &str) -> Option<&Repository> {
        self.repositories.iter().find(|r| r.name == name)
    }

    /// The packages of a target, sorted by name; `None` for an unknown target.
    pub fn packages_of(&self, label: &str) -> Option<Vec<&LockedPackage>> {
        let t = self.target(label)?;
        Some(
            t.packages
                .iter()
                .filter_map(|id| self.package(id))
                .collect(),
        )
    }

    /// The shortest chain from one of the target's requests to `package` (a name):
    /// `[requested, ..., package]`. `None` if the target is unknown or does not
    /// hold the package.
    pub fn why(&self, label: &str, package: &str) -> Option<Vec<&LockedPackage>> {
        let entries: BTreeMap<&str, &LockedPackage> = self
            .packages_of(label)?
            .into_iter()
            .map(|p| (p.name.as_str(), p))
            .collect();
        let t = self.target(label)?;
        let roots: Vec<&str> = t.requests.iter().map(|r| r.name.as_str()).collect();
        let path = chain(&roots, package, |name| {
            entries
                .get(name)
                .map(|p| {
                    p.depends
                        .iter()
                        .chain(&p.recommends)
                        .filter(|n| entries.contains_key(n.as_str()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        })?;
        path.iter()
            .map(|n| entries.get(n.as_str()).copied())
            .collect()
    }

    /// Whether the lock still satisfies the target's `requests` (as the spec
    /// writes them now) and `recommends` exactly; else the first difference, in
    /// the order: target missing, recommends, then by package name.
    pub fn check(&self, label: &str, requests: &[Request], recommends: bool) -> Result<(), Stale> {
        let target = label.to_string();
        let Some(t) = self.target(label) else {
            return Err(Stale::NoTarget { target });
        };
        if t.recommends != recommends {
            return Err(Stale::Recommends {
                target,
                spec: recommends,
            });
        }
        let spec: BTreeMap<&str, &Request> =
            requests.iter().map(|r| (r.name.as_str(), r)).collect();
        let lock: BTreeMap<&str, &Request> =
            t.requests.iter().map(|r| (r.name.as_str(), r)).collect();
        let names: BTreeSet<&str> = spec.keys().chain(lock.keys()).copied().collect();
        for name in names {
            match (spec.get(name), lock.get(name)) {
                (Some(s), None) => {
                    return Err(Stale::Missing {
                        target,
                        request: s.to_string(),
                    });
                }
                (None, Some(l)) => {
                    return Err(Stale::Extra {
                        target,
                        request: l.to_string(),
                    });
                }
                (Some(s), Some(l)) if s.version != l.version => {
                    return Err(Stale::Pinned {
                        target,
                        spec: s.to_string(),
                        lock: l.to_string(),
                    });
                }
                _ => {}
            }
        }
        // Several requests of one name in the spec are the resolver's error, not staleness.
        Ok(())
    }

    /// The canonical text (see the module docs); [`Lock::parse`] reads it back equal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(HEADER);
        out.push('\n');
        out.push_str(&format!("lock-version {LOCK_VERSION}\n"));
        if !self.repositories.is_empty() {
            out.push('\n');
        }
        for r in &self.repositories {
            out.push_str(&format!(
                "repository {} url={} suite={} components={} arch={} release-sha256={}\n",
                q(&r.name),
                q(&r.url),
                q(&r.suite),
                q(&r.components.join(" ")),
                q(&r.arch),
                q(&r.release_sha256.hex()),
            ));
        }
        if !self.packages.is_empty() {
            out.push('\n');
        }
        for p in &self.packages {
            out.push_str(&format!(
                "package {} {} version={} arch={} filename={} size={} sha256={}",
                q(&p.repo),
                q(&p.name),
                q(p.version.as_str()),
                q(&p.arch),
                q(&p.filename),
                p.size,
                q(&p.sha256.hex()),
            ));
            if p.depends.is_empty() && p.recommends.is_empty() {
                out.push('\n');
                continue;
            }
            out.push_str(" {\n");
            for (node, names) in [("depends", &p.depends), ("recommends", &p.recommends)] {
                if !names.is_empty() {
                    out.push_str(&format!("    {node}"));
                    for n in names {
                        out.push(' ');
                        out.push_str(&q(n));
                    }
                    out.push('\n');
                }
            }
            out.push_str("}\n");
        }
        // How a target names each entry: the shortest unambiguous form.
        let mut by_name: BTreeMap<&str, Vec<&LockedPackage>> = BTreeMap::new();
        for p in &self.packages {
            by_name.entry(&p.name).or_default().push(p);
        }
        let reference = |id: &PackageId| -> String {
            let same = by_name.get(id.name.as_str()).map_or(0, Vec::len);
            let same_version = by_name
                .get(id.name.as_str())
                .map_or(0, |v| v.iter().filter(|p| p.version == id.version).count());
            if same <= 1 {
                id.name.clone()
            } else if same_version <= 1 {
                format!("{}={}", id.name, id.version)
            } else {
                format!("{}/{}={}", id.repo, id.name, id.version)
            }
        };
        if !self.targets.is_empty() {
            out.push('\n');
        }
        for t in &self.targets {
            out.push_str(&format!("target {}", q(&t.label)));
            if t.recommends {
                out.push_str(" recommends=#true");
            }
            out.push_str(" {\n    requests");
            for r in &t.requests {
                out.push(' ');
                out.push_str(&q(&r.to_string()));
            }
            out.push_str("\n    packages");
            for id in &t.packages {
                out.push(' ');
                out.push_str(&q(&reference(id)));
            }
            out.push_str("\n}\n");
        }
        out
    }

    /// Parses a lock file's text (`file` as registered in the caller's
    /// [`crate::diag::Sources`]). Every problem is a located diagnostic.
    pub fn parse(text: &str, file: FileId) -> Result<Lock, Vec<Diag>> {
        let mut cx = Ctx::new(file, text);
        let Some(doc) = cx.parse_kdl() else {
            return Err(cx.finish());
        };
        let mut p = LockParser {
            cx,
            version_seen: None,
            repos: Vec::new(),
            packages: Vec::new(),
            targets: Vec::new(),
        };
        for node in doc.nodes() {
            match node_name(node) {
                "lock-version" => p.lock_version(node),
                "repository" => p.repository(node),
                "package" => p.package(node),
                "target" => p.target(node),
                _ => p.cx.unknown_node(
                    node,
                    "imgc.lock",
                    &["lock-version", "repository", "package", "target"],
                ),
            }
        }
        p.finish()
    }
}

/// A KDL string literal of `s`.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A package reference in a target's `packages`, as written.
struct Reference {
    repo: Option<String>,
    name: String,
    version: Option<String>,
    span: SourceSpan,
}

struct ParsedTarget {
    target: LockedTarget,
    label_span: SourceSpan,
    request_spans: Vec<SourceSpan>,
    references: Vec<Reference>,
    head: SourceSpan,
}

/// A package entry with the span of its head, of its repository argument and of
/// each name its `depends`/`recommends` list.
type ParsedPackage = (
    LockedPackage,
    SourceSpan,
    SourceSpan,
    Vec<(String, SourceSpan)>,
);

struct LockParser<'a> {
    cx: Ctx<'a>,
    version_seen: Option<SourceSpan>,
    repos: Vec<(Repository, SourceSpan)>,
    /// Each package with the span of its head and of its repository argument.
    packages: Vec<ParsedPackage>,
    targets: Vec<ParsedTarget>,
}

impl LockParser<'_> {
    fn bad(&mut self, code: Code, span: SourceSpan, message: String, label: &str) {
        let d = self.cx.diag(code, span, message, label);
        self.cx.push(d);
    }

    fn string_prop(
        &mut self,
        node: &KdlNode,
        props: &[&KdlEntry],
        key: &str,
    ) -> Option<(String, SourceSpan)> {
        let Some(e) = props
            .iter()
            .find(|e| e.name().is_some_and(|k| k.value() == key))
        else {
            let n = node_name(node).to_string();
            self.cx.missing(
                head_span(node),
                format!("`{n}` needs `{key}=`"),
                "run `imgc lock` to write the lock again",
            );
            return None;
        };
        let s = self.cx.string(e, &format!("`{key}`"))?;
        Some((s.value, value_span(e)))
    }

    fn non_empty(&mut self, value: Option<(String, SourceSpan)>, what: &str) -> Option<String> {
        let (v, span) = value?;
        if v.is_empty() || v.chars().any(char::is_control) {
            self.bad(
                Code::InvalidValue,
                span,
                format!("{what} must be a non-empty string without control characters"),
                "invalid",
            );
            return None;
        }
        Some(v)
    }

    fn digest(&mut self, value: Option<(String, SourceSpan)>, what: &str) -> Option<Digest> {
        let (v, span) = value?;
        let d = Digest::from_hex(&v);
        if d.is_none() {
            self.bad(
                Code::InvalidValue,
                span,
                format!("{what} `{v}` is not 64 lowercase hex digits"),
                "not a sha256",
            );
        }
        d
    }

    fn lock_version(&mut self, node: &KdlNode) {
        if let Some(first) = self.version_seen {
            let line = self.cx.line_of(first.offset());
            self.bad(
                Code::Duplicate,
                head_span(node),
                format!("`lock-version` is given twice (first on line {line})"),
                "given again here",
            );
            return;
        }
        self.version_seen = Some(head_span(node));
        self.cx.no_children(node);
        let parts = self.cx.parts(node, Some(&[]));
        let Some(args) = self
            .cx
            .exact_args(node, &parts.args, 1, "the format version")
        else {
            return;
        };
        match args[0].value() {
            KdlValue::Integer(LOCK_VERSION) => {}
            KdlValue::Integer(n) => {
                let n = *n;
                let d = self
                    .cx
                    .diag(
                        Code::BadLock,
                        value_span(args[0]),
                        format!("lock-version {n} is not supported: this imgc reads lock-version {LOCK_VERSION}"),
                        "unsupported",
                    )
                    .help("run `imgc lock` with this imgc to write the lock again");
                self.cx.push(d);
            }
            other => {
                let what = crate::spec::reader::describe(other);
                self.bad(
                    Code::WrongType,
                    value_span(args[0]),
                    format!("`lock-version` must be a number, got {what}"),
                    "not a number",
                );
            }
        }
    }

    fn repository(&mut self, node: &KdlNode) {
        self.cx.no_children(node);
        let parts = self.cx.parts(
            node,
            Some(&["url", "suite", "components", "arch", "release-sha256"]),
        );
        let Some(args) = self
            .cx
            .exact_args(node, &parts.args, 1, "the repository's name")
        else {
            return;
        };
        let Some(name) = self.cx.string(args[0], "the repository's name") else {
            return;
        };
        if !valid_repo_name(&name.value) {
            self.bad(
                Code::InvalidValue,
                value_span(args[0]),
                format!(
                    "`{}` is not a repository name (letters, digits, `.`, `_`, `-`)",
                    name.value
                ),
                "invalid",
            );
        }
        let url = self.string_prop(node, &parts.props, "url");
        let url = self.non_empty(url, "`url`");
        let suite = self.string_prop(node, &parts.props, "suite");
        let suite = self.non_empty(suite, "`suite`");
        let components = self.string_prop(node, &parts.props, "components");
        let components = self.non_empty(components, "`components`");
        let arch = self.string_prop(node, &parts.props, "arch");
        let arch = self.non_empty(arch, "`arch`");
        let release = self.string_prop(node, &parts.props, "release-sha256");
        let release = self.digest(release, "`release-sha256`");
        if let (Some(url), Some(suite), Some(components), Some(arch), Some(release_sha256)) =
            (url, suite, components, arch, release)
        {
            self.repos.push((
                Repository {
                    name: name.value,
                    url,
                    suite,
                    components: components.split_whitespace().map(str::to_string).collect(),
                    arch,
                    release_sha256,
                },
                value_span(args[0]),
            ));
        }
    }

    fn names_node(&mut self, node: &KdlNode, what: &str) -> Vec<(String, SourceSpan)> {
        self.cx.no_children(node);
        let parts = self.cx.parts(node, Some(&[]));
        if !self.cx.some_args(node, &parts.args, what) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for e in &parts.args {
            if let Some(s) = self.cx.string(e, what) {
                out.push((s.value, value_span(e)));
            }
        }
        out
    }

    fn package(&mut self, node: &KdlNode) {
        let parts = self.cx.parts(
            node,
            Some(&["version", "arch", "filename", "size", "sha256"]),
        );
        let Some(args) =
            self.cx
                .exact_args(node, &parts.args, 2, "the repository and the package name")
        else {
            return;
        };
        let repo = self.cx.string(args[0], "the repository's name");
        let name = self.cx.string(args[1], "the package name");
        if let Some(n) = &name
            && !valid_name(&n.value)
        {
            self.bad(
                Code::InvalidValue,
                value_span(args[1]),
                format!("`{}` is not a Debian package name", n.value),
                "invalid",
            );
        }
        let version = self
            .string_prop(node, &parts.props, "version")
            .and_then(|(v, span)| match Version::parse(&v) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.bad(Code::InvalidValue, span, e, "not a Debian version");
                    None
                }
            });
        let arch = self.string_prop(node, &parts.props, "arch");
        let arch = self.non_empty(arch, "`arch`");
        let filename = self.string_prop(node, &parts.props, "filename");
        let filename = self.non_empty(filename, "`filename`");
        let sha = self.string_prop(node, &parts.props, "sha256");
        let sha256 = self.digest(sha, "`sha256`");
        let size = match parts.prop("size") {
            None => {
                self.cx.missing(
                    head_span(node),
                    "`package` needs `size=`".into(),
                    "run `imgc lock` to write the lock again",
                );
                None
            }
            Some(e) => match e.value() {
                KdlValue::Integer(n) => match u64::try_from(*n) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        self.bad(
                            Code::InvalidValue,
                            value_span(e),
                            format!("`size` {n} is not a number of bytes"),
                            "invalid",
                        );
                        None
                    }
                },
                other => {
                    let what = crate::spec::reader::describe(other);
                    self.bad(
                        Code::WrongType,
                        value_span(e),
                        format!("`size` must be a number, got {what}"),
                        "not a number",
                    );
                    None
                }
            },
        };
        let mut depends = Vec::new();
        let mut recommends = Vec::new();
        if let Some(children) = node.children() {
            let mut seen = HashMap::new();
            for child in children.nodes() {
                match node_name(child) {
                    "depends" | "recommends" => {
                        if !self.cx.singleton(&mut seen, child) {
                            continue;
                        }
                        let names = self.names_node(child, "package names");
                        for (n, span) in &names {
                            if !valid_name(n) {
                                self.bad(
                                    Code::InvalidValue,
                                    *span,
                                    format!("`{n}` is not a Debian package name"),
                                    "invalid",
                                );
                            }
                        }
                        if node_name(child) == "depends" {
                            depends = names;
                        } else {
                            recommends = names;
                        }
                    }
                    _ => self
                        .cx
                        .unknown_node(child, "a `package`", &["depends", "recommends"]),
                }
            }
        }
        let (
            Some(repo),
            Some(name),
            Some(version),
            Some(arch),
            Some(filename),
            Some(size),
            Some(sha256),
        ) = (repo, name, version, arch, filename, size, sha256)
        else {
            return;
        };
        let edges = depends.iter().chain(&recommends).cloned().collect();
        self.packages.push((
            LockedPackage {
                repo: repo.value,
                name: name.value,
                version,
                arch,
                filename,
                size,
                sha256,
                depends: depends.into_iter().map(|(n, _)| n).collect(),
                recommends: recommends.into_iter().map(|(n, _)| n).collect(),
            },
            head_span(node),
            value_span(args[0]),
            edges,
        ));
    }

    fn target(&mut self, node: &KdlNode) {
        let parts = self.cx.parts(node, Some(&["recommends"]));
        let Some(args) = self
            .cx
            .exact_args(node, &parts.args, 1, "the target's label")
        else {
            return;
        };
        let Some(label) = self.cx.string(args[0], "the target's label") else {
            return;
        };
        let recommends = match parts.prop("recommends") {
            None => false,
            Some(e) => match e.value() {
                KdlValue::Bool(b) => *b,
                other => {
                    let what = crate::spec::reader::describe(other);
                    self.bad(
                        Code::WrongType,
                        value_span(e),
                        format!("`recommends` must be #true or #false, got {what}"),
                        "not a boolean",
                    );
                    false
                }
            },
        };
        let mut requests: Option<Vec<(String, SourceSpan)>> = None;
        let mut packages: Option<Vec<(String, SourceSpan)>> = None;
        let mut seen = HashMap::new();
        for child in node.children().map(|c| c.nodes()).unwrap_or_default() {
            match node_name(child) {
                "requests" if self.cx.singleton(&mut seen, child) => {
                    requests = Some(self.names_node(child, "the requests"));
                }
                "packages" if self.cx.singleton(&mut seen, child) => {
                    packages = Some(self.names_node(child, "the packages"));
                }
                "requests" | "packages" => {}
                _ => self
                    .cx
                    .unknown_node(child, "a `target`", &["requests", "packages"]),
            }
        }
        for (have, what) in [
            (requests.is_some(), "requests"),
            (packages.is_some(), "packages"),
        ] {
            if !have {
                self.cx.missing(
                    head_span(node),
                    format!("`target` needs a `{what}` child"),
                    "run `imgc lock` to write the lock again",
                );
            }
        }
        let (Some(requests), Some(packages)) = (requests, packages) else {
            return;
        };
        let mut parsed = Vec::new();
        let mut request_spans = Vec::new();
        let mut names: BTreeMap<String, SourceSpan> = BTreeMap::new();
        for (text, span) in requests {
            match Request::parse(&text) {
                Ok(r) => {
                    if let Some(first) = names.insert(r.name.clone(), span) {
                        let line = self.cx.line_of(first.offset());
                        self.bad(
                            Code::Duplicate,
                            span,
                            format!("`{}` is requested twice (first on line {line})", r.name),
                            "again here",
                        );
                        continue;
                    }
                    parsed.push((r, span));
                }
                Err(e) => self.bad(Code::InvalidValue, span, e, "not a request"),
            }
        }
        parsed.sort_by(|a, b| a.0.cmp(&b.0));
        let (requests, request_spans_sorted): (Vec<Request>, Vec<SourceSpan>) =
            parsed.into_iter().unzip();
        request_spans.extend(request_spans_sorted);
        let mut references = Vec::new();
        for (text, span) in packages {
            let (repo, rest) = match text.split_once('/') {
                Some((r, rest)) => (Some(r.to_string()), rest),
                None => (None, text.as_str()),
            };
            let (name, version) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (rest, None),
            };
            if !valid_name(name)
                || repo
                    .as_ref()
                    .is_some_and(|r| !valid_repo_name(r) || version.is_none())
            {
                self.bad(
                    Code::InvalidValue,
                    span,
                    format!("`{text}` is not `name`, `name=version` or `repository/name=version`"),
                    "invalid",
                );
                continue;
            }
            references.push(Reference {
                repo,
                name: name.to_string(),
                version,
                span,
            });
        }
        self.targets.push(ParsedTarget {
            target: LockedTarget {
                label: label.value,
                recommends,
                requests,
                packages: Vec::new(),
            },
            label_span: value_span(args[0]),
            request_spans,
            references,
            head: head_span(node),
        });
    }

    /// Cross-checks and assembles the lock.
    fn finish(mut self) -> Result<Lock, Vec<Diag>> {
        if self.version_seen.is_none() && self.cx.diags.is_empty() {
            let d = self
                .cx
                .diag(
                    Code::Missing,
                    SourceSpan::from(0..0),
                    "imgc.lock has no `lock-version`".into(),
                    "in this file",
                )
                .help("run `imgc lock` to write the lock again");
            self.cx.push(d);
        }
        let mut repos: BTreeMap<String, Repository> = BTreeMap::new();
        for (r, span) in std::mem::take(&mut self.repos) {
            if repos.contains_key(&r.name) {
                self.bad(
                    Code::Duplicate,
                    span,
                    format!("repository `{}` is given twice", r.name),
                    "again here",
                );
                continue;
            }
            repos.insert(r.name.clone(), r);
        }
        let mut packages: BTreeMap<PackageId, LockedPackage> = BTreeMap::new();
        let mut all_names: BTreeSet<String> = BTreeSet::new();
        let mut edges = Vec::new();
        for (p, head, repo_span, spans) in std::mem::take(&mut self.packages) {
            match repos.get(&p.repo) {
                None => {
                    self.bad(
                        Code::BadLock,
                        repo_span,
                        format!(
                            "package `{}` names repository `{}`, which the lock does not declare",
                            p.name, p.repo
                        ),
                        "unknown repository",
                    );
                    continue;
                }
                Some(r) if p.arch != r.arch && p.arch != "all" => {
                    let message = format!(
                        "package `{}` is for `{}`, its repository `{}` for `{}`",
                        p.name, p.arch, r.name, r.arch
                    );
                    self.bad(Code::BadLock, head, message, "wrong architecture");
                    continue;
                }
                Some(_) => {}
            }
            let id = p.id();
            if packages.contains_key(&id) {
                self.bad(
                    Code::Duplicate,
                    head,
                    format!(
                        "package `{}` {} of `{}` is given twice",
                        p.name, p.version, p.repo
                    ),
                    "again here",
                );
                continue;
            }
            all_names.insert(p.name.clone());
            edges.extend(spans);
            packages.insert(id, p);
        }
        for (n, span) in edges {
            if !all_names.contains(&n) {
                self.bad(
                    Code::BadLock,
                    span,
                    format!("`{n}` is not a package of the lock"),
                    "unknown package",
                );
            }
        }
        let mut targets: BTreeMap<String, LockedTarget> = BTreeMap::new();
        for mut t in std::mem::take(&mut self.targets) {
            if targets.contains_key(&t.target.label) {
                self.bad(
                    Code::Duplicate,
                    t.label_span,
                    format!("target `{}` is given twice", t.target.label),
                    "again here",
                );
                continue;
            }
            let mut ids: BTreeMap<String, PackageId> = BTreeMap::new();
            for r in &t.references {
                let found: Vec<&PackageId> = packages
                    .keys()
                    .filter(|id| {
                        id.name == r.name
                            && r.version.as_ref().is_none_or(|v| id.version.as_str() == v)
                            && r.repo.as_ref().is_none_or(|x| &id.repo == x)
                    })
                    .collect();
                match found.as_slice() {
                    [id] => {
                        if ids.insert(id.name.clone(), (*id).clone()).is_some() {
                            self.bad(
                                Code::Duplicate,
                                r.span,
                                format!("target `{}` lists `{}` twice", t.target.label, r.name),
                                "again here",
                            );
                        }
                    }
                    [] => self.bad(
                        Code::BadLock,
                        r.span,
                        format!("target `{}` names a package the lock lacks", t.target.label),
                        "no such package entry",
                    ),
                    _ => self.bad(
                        Code::BadLock,
                        r.span,
                        format!(
                            "`{}` is ambiguous: the lock has {} entries of that name",
                            r.name,
                            found.len()
                        ),
                        "ambiguous",
                    ),
                }
            }
            for (r, span) in t.target.requests.iter().zip(&t.request_spans) {
                match ids.get(&r.name) {
                    None => self.bad(
                        Code::BadLock,
                        *span,
                        format!(
                            "`{}` is requested but not among the target's packages",
                            r.name
                        ),
                        "not locked",
                    ),
                    Some(id)
                        if r.version
                            .as_ref()
                            .is_some_and(|v| v.dpkg_cmp(&id.version).is_ne()) =>
                    {
                        self.bad(
                            Code::BadLock,
                            *span,
                            format!(
                                "`{r}` is pinned, the target's package is `{}` {}",
                                id.name, id.version
                            ),
                            "pin not met",
                        )
                    }
                    Some(_) => {}
                }
            }
            if t.target.requests.is_empty() && t.request_spans.is_empty() {
                self.bad(
                    Code::BadLock,
                    t.head,
                    format!("target `{}` requests nothing", t.target.label),
                    "empty",
                );
            }
            t.target.packages = ids.into_values().collect();
            t.target.packages.sort();
            targets.insert(t.target.label.clone(), t.target);
        }
        let diags = self.cx.finish();
        if !diags.is_empty() {
            return Err(diags);
        }
        Ok(Lock {
            repositories: repos.into_values().collect(),
            packages: packages.into_values().collect(),
            targets: targets.into_values().collect(),
        })
    }
}
