//! One repository's `Packages` index, parsed into typed binary packages.
//!
//! The text is split into paragraphs and fields by `debian-packaging`'s control
//! file parser, fed line by line here so that every paragraph keeps the line it
//! starts on (errors name the package and that line). Versions are parsed and
//! ordered by `debian-packaging` (dpkg's rules) and dependency fields by its
//! dependency expression parser; this module then checks what that crate leaves
//! loose (package names, arch qualifiers, version digit runs that its comparison
//! would overflow on) and converts everything into small owned types, so the
//! resolver and the lock never depend on the crate's types.
//!
//! Only the fields the resolver, the lock and the fetcher need are kept. Conflicts,
//! Breaks, Replaces and Suggests are read by nobody: an image holds what is asked
//! and needed, and nothing is installed over anything (see [`super::resolve`]).

use crate::hash::Digest;
use debian_packaging::control::{ControlFileParser, ControlParagraph};
use debian_packaging::dependency::{DependencyList, VersionRelationship};
use debian_packaging::package_version::PackageVersion;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// A Debian version: the text as written (printed and stored verbatim) and its
/// parsed form (compared by dpkg's rules).
#[derive(Clone)]
pub struct Version {
    text: String,
    parsed: PackageVersion,
}

impl Version {
    /// Parses a version string; `Err` says why it is not one.
    pub fn parse(text: &str) -> Result<Version, String> {
        if text.is_empty() {
            return Err("the version is empty".into());
        }
        // debian-packaging compares digit runs as u64 and panics beyond it.
        let mut run = 0usize;
        let mut leading = true;
        for c in text.chars() {
            if c.is_ascii_digit() {
                if !(leading && c == '0') {
                    leading = false;
                    run += 1;
                }
                if run > 19 {
                    return Err(format!(
                        "version `{text}` has a number too large to compare"
                    ));
                }
            } else {
                run = 0;
                leading = true;
            }
        }
        let parsed = PackageVersion::parse(text)
            .map_err(|e| format!("`{text}` is not a Debian version: {e}"))?;
        if parsed.upstream_version().is_empty() {
            return Err(format!("version `{text}` has no upstream part"));
        }
        Ok(Version {
            text: text.to_string(),
            parsed,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// dpkg's comparison (`1.0` and `1.0-0` compare equal here, unlike [`Ord`]).
    pub fn dpkg_cmp(&self, other: &Version) -> Ordering {
        self.parsed.cmp(&other.parsed)
    }
}

/// dpkg order, ties broken by the text so that the order is total and agrees with `==`.
impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        self.dpkg_cmp(other)
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.text == other.text
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// A version relation of a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Relation {
    /// `<<`
    Lt,
    /// `<=`
    Le,
    /// `=`
    Eq,
    /// `>=`
    Ge,
    /// `>>`
    Gt,
}

impl Relation {
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Lt => "<<",
            Relation::Le => "<=",
            Relation::Eq => "=",
            Relation::Ge => ">=",
            Relation::Gt => ">>",
        }
    }
}

/// `(>= 2.0)`: a relation and a version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Constraint {
    pub relation: Relation,
    pub version: Version,
}

impl Constraint {
    /// Whether `v` satisfies the constraint (dpkg comparison).
    pub fn allows(&self, v: &Version) -> bool {
        let o = v.dpkg_cmp(&self.version);
        match self.relation {
            Relation::Lt => o == Ordering::Less,
            Relation::Le => o != Ordering::Greater,
            Relation::Eq => o == Ordering::Equal,
            Relation::Ge => o != Ordering::Less,
            Relation::Gt => o == Ordering::Greater,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({} {})", self.relation.as_str(), self.version)
    }
}

/// One package relation: `libc6 (>= 2.34)`, `perl:any`, `awk`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dep {
    pub name: String,
    /// The architecture qualifier after `:` (`any`, `native`, or an architecture).
    pub qualifier: Option<String>,
    pub constraint: Option<Constraint>,
    /// An architecture restriction `[amd64 arm64]` / `[!i386]` (rare in binary indexes):
    /// `(negated, architectures)`.
    pub restriction: Option<(bool, Vec<String>)>,
}

impl Dep {
    /// Whether the relation applies when resolving for `arch` (its `[...]` restriction).
    pub fn applies_to(&self, arch: &str) -> bool {
        match &self.restriction {
            None => true,
            Some((negated, arches)) => arches.iter().any(|a| a == arch) != *negated,
        }
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(q) = &self.qualifier {
            write!(f, ":{q}")?;
        }
        if let Some(c) = &self.constraint {
            write!(f, " {c}")?;
        }
        if let Some((negated, arches)) = &self.restriction {
            write!(
                f,
                " [{}{}]",
                if *negated { "!" } else { "" },
                arches.join(" ")
            )?;
        }
        Ok(())
    }
}

/// `a | b (>= 2)`: alternatives, the first that can be satisfied wins.
pub type Alternatives = Vec<Dep>;

/// Writes alternatives as Debian does: `a | b (>= 2)`.
pub fn display_alternatives(alts: &[Dep]) -> String {
    alts.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `Provides: name` or `Provides: name (= version)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Provide {
    pub name: String,
    pub version: Option<Version>,
}

/// The `Multi-Arch` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum MultiArch {
    #[default]
    No,
    Same,
    Foreign,
    Allowed,
}

/// One binary package of an index.
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub arch: String,
    pub depends: Vec<Alternatives>,
    pub pre_depends: Vec<Alternatives>,
    pub recommends: Vec<Alternatives>,
    pub provides: Vec<Provide>,
    pub multi_arch: MultiArch,
    pub essential: bool,
    pub priority: Option<String>,
    /// Path of the `.deb` below the repository's URL.
    pub filename: String,
    pub size: u64,
    pub sha256: Digest,
    /// 1-based line of the index where the paragraph starts.
    pub line: usize,
}

/// A `Packages` index that does not parse: which repository, line and package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexError {
    pub repo: String,
    /// 1-based line where the paragraph at fault starts (or the line at fault).
    pub line: usize,
    /// The paragraph's `Package`, when it has one.
    pub package: Option<String>,
    pub message: String,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Packages index of `{}`, line {}", self.repo, self.line)?;
        if let Some(p) = &self.package {
            write!(f, " (package `{p}`)")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for IndexError {}

impl IndexError {
    /// As a diagnostic ([`crate::diag::Code::BadIndex`]); the caller adds where the
    /// index came from (its URL) to the help if it knows it.
    pub fn to_diag(&self) -> crate::diag::Diag {
        crate::diag::Diag::new(crate::diag::Code::BadIndex, self.to_string())
    }
}

/// The binary packages of one repository (one suite, its components, one
/// architecture plus `all`), by name and by what they provide.
#[derive(Clone, Debug)]
pub struct Index {
    repo: String,
    /// Sorted by (name, version, architecture); no (name, version, architecture) twice.
    packages: Vec<Package>,
    /// Name → positions in `packages`.
    by_name: BTreeMap<String, Vec<usize>>,
    /// Provided name → positions of the packages that provide it.
    providers: BTreeMap<String, Vec<usize>>,
}

/// Whether `name` is a Debian package name: `[a-z0-9][a-z0-9+.-]+` (policy 5.6.1).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c))
}

fn valid_arch(arch: &str) -> bool {
    !arch.is_empty()
        && arch
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Parses a dependency field (`Depends`, `Pre-Depends`, `Recommends`).
pub fn parse_relations(text: &str) -> Result<Vec<Alternatives>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let list = DependencyList::parse(text).map_err(|e| format!("`{text}`: {e}"))?;
    // The crate's expression is not anchored: it would read `a (>= 1` as `a` and
    // drop the rest. Split as it does and check each alternative's shape.
    let texts: Vec<&str> = text.split(',').flat_map(|e| e.split('|')).collect();
    let mut texts = texts.into_iter();
    let mut out = Vec::new();
    for variants in list.requirements() {
        let mut alts = Vec::new();
        for single in variants.iter() {
            let written = texts.next().unwrap_or_default();
            if !well_formed(written, single.version_constraint.is_some()) {
                return Err(format!("`{}` is not a package relation", written.trim()));
            }
            let (name, qualifier) = match single.package.split_once(':') {
                Some((n, q)) => (n, Some(q)),
                None => (single.package.as_str(), None),
            };
            if !valid_name(name) {
                return Err(format!("`{name}` is not a package name (in `{text}`)"));
            }
            if let Some(q) = qualifier
                && !valid_arch(q)
            {
                return Err(format!(
                    "`{}` has a bad architecture qualifier",
                    single.package
                ));
            }
            let constraint = match &single.version_constraint {
                None => None,
                Some(c) => Some(Constraint {
                    relation: match c.relationship {
                        VersionRelationship::StrictlyEarlier => Relation::Lt,
                        VersionRelationship::EarlierOrEqual => Relation::Le,
                        VersionRelationship::ExactlyEqual => Relation::Eq,
                        VersionRelationship::LaterOrEqual => Relation::Ge,
                        VersionRelationship::StrictlyLater => Relation::Gt,
                    },
                    version: Version::parse(&c.version.to_string())?,
                }),
            };
            if let Some((_, arches)) = &single.architectures
                && (arches.is_empty() || !arches.iter().all(|a| valid_arch(a)))
            {
                return Err(format!("`{text}` has a bad architecture restriction"));
            }
            alts.push(Dep {
                name: name.to_string(),
                qualifier: qualifier.map(str::to_string),
                constraint,
                restriction: single.architectures.clone(),
            });
        }
        out.push(alts);
    }
    Ok(out)
}

/// `name[:arch] [(op version)] [[arches]]`, nothing else; `parsed_constraint`
/// says whether the crate found the `(...)`.
fn well_formed(alt: &str, parsed_constraint: bool) -> bool {
    let s = alt.trim();
    let end = s.find(|c: char| c.is_whitespace() || c == '(' || c == '[');
    let mut rest = end.map_or("", |i| s[i..].trim_start());
    if let Some(inner) = rest.strip_prefix('(') {
        let Some(close) = inner.find(')') else {
            return false;
        };
        if !parsed_constraint || inner[..close].contains('(') {
            return false;
        }
        rest = inner[close + 1..].trim_start();
    }
    if let Some(inner) = rest.strip_prefix('[') {
        return inner.ends_with(']') && !inner[..inner.len() - 1].contains(['[', ']']);
    }
    rest.is_empty()
}

fn parse_provides(text: &str) -> Result<Vec<Provide>, String> {
    let mut out = Vec::new();
    for alts in parse_relations(text)? {
        let [dep] = alts.as_slice() else {
            return Err(format!("`Provides: {text}` has alternatives (`|`)"));
        };
        if dep.qualifier.is_some() || dep.restriction.is_some() {
            return Err(format!("`Provides: {text}` qualifies `{}`", dep.name));
        }
        let version = match &dep.constraint {
            None => None,
            Some(c) if c.relation == Relation::Eq => Some(c.version.clone()),
            Some(c) => {
                return Err(format!(
                    "`Provides: {text}`: a provided version must be `=`, got `{}`",
                    c.relation.as_str()
                ));
            }
        };
        out.push(Provide {
            name: dep.name.clone(),
            version,
        });
    }
    Ok(out)
}

/// Index texts beyond this many bytes are refused (Debian's main/amd64 is about 45 MB).
pub const MAX_INDEX_BYTES: usize = 512 << 20;

impl Index {
    /// Parses the text of a `Packages` file of the repository called `repo`.
    pub fn parse(text: &str, repo: &str) -> Result<Index, IndexError> {
        let err = |line: usize, package: Option<&str>, message: String| IndexError {
            repo: repo.to_string(),
            line,
            package: package.map(str::to_string),
            message,
        };
        if text.len() > MAX_INDEX_BYTES {
            return Err(err(
                1,
                None,
                format!(
                    "the index is {} bytes, more than the limit of {MAX_INDEX_BYTES}",
                    text.len()
                ),
            ));
        }
        let mut packages = Vec::new();
        let mut parser = ControlFileParser::default();
        let mut start: Option<usize> = None;
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            if line.starts_with('\t') || (line.starts_with(' ') && start.is_none()) {
                // The crate folds only space-indented lines; say so instead of misreading.
                if !line.trim().is_empty() {
                    return Err(err(
                        number,
                        None,
                        "a continuation line outside a field (or indented with a tab)".into(),
                    ));
                }
            }
            if !line.trim().is_empty() && start.is_none() {
                start = Some(number);
            }
            match parser.write_line(line) {
                Ok(Some(p)) => {
                    packages.push(package(&p, start.take().unwrap_or(number), repo)?);
                }
                Ok(None) => {}
                Err(e) => return Err(err(start.unwrap_or(number), None, e.to_string())),
            }
        }
        match parser.finish() {
            Ok(Some(p)) => packages.push(package(&p, start.unwrap_or(1), repo)?),
            Ok(None) => {}
            Err(e) => return Err(err(start.unwrap_or(1), None, e.to_string())),
        }
        packages
            .sort_by(|a, b| (&a.name, &a.version, &a.arch).cmp(&(&b.name, &b.version, &b.arch)));
        for w in packages.windows(2) {
            if (&w[0].name, &w[0].version, &w[0].arch) == (&w[1].name, &w[1].version, &w[1].arch) {
                let (first, again) = if w[0].line < w[1].line {
                    (&w[0], &w[1])
                } else {
                    (&w[1], &w[0])
                };
                return Err(err(
                    again.line,
                    Some(&again.name),
                    format!(
                        "version {} ({}) is listed twice (first on line {})",
                        again.version, again.arch, first.line
                    ),
                ));
            }
        }
        let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut providers: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, p) in packages.iter().enumerate() {
            by_name.entry(p.name.clone()).or_default().push(i);
            for prov in &p.provides {
                let list = providers.entry(prov.name.clone()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        Ok(Index {
            repo: repo.to_string(),
            packages,
            by_name,
            providers,
        })
    }

    /// The repository's name (as the spec and the lock call it).
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// Every package, sorted by (name, version, architecture).
    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    /// The packages called `name`, lowest version first.
    pub fn named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Package> + 'a {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.packages[i])
    }

    /// The packages whose `Provides` names `name`, sorted by (name, version).
    pub fn providers<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Package> + 'a {
        self.providers
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.packages[i])
    }

    /// The package `name` at exactly `version` for `arch` (or `all`).
    pub fn get(&self, name: &str, version: &str, arch: &str) -> Option<&Package> {
        self.named(name)
            .filter(|p| p.version.as_str() == version)
            .find(|p| p.arch == arch || p.arch == "all")
    }
}

/// One paragraph → one package, or an error naming it.
fn package(p: &ControlParagraph<'_>, line: usize, repo: &str) -> Result<Package, IndexError> {
    let name = p.field_str("Package").map(str::trim);
    let err = |message: String| IndexError {
        repo: repo.to_string(),
        line,
        package: name.map(str::to_string),
        message,
    };
    let required = |field: &str| {
        p.field_str(field)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| err(format!("the paragraph has no `{field}` field")))
    };
    let name = required("Package")?;
    if !valid_name(name) {
        return Err(err(format!("`{name}` is not a Debian package name")));
    }
    let version = Version::parse(required("Version")?).map_err(&err)?;
    let arch = required("Architecture")?;
    if !valid_arch(arch) {
        return Err(err(format!("`{arch}` is not an architecture")));
    }
    let relations = |field: &str| match p.field_str(field) {
        None => Ok(Vec::new()),
        Some(text) => parse_relations(text).map_err(|e| err(format!("`{field}`: {e}"))),
    };
    let filename = required("Filename")?;
    if filename.starts_with('/')
        || filename
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || filename.chars().any(|c| c.is_control() || c == '\\')
    {
        return Err(err(format!(
            "`Filename: {filename}` is not a relative path below the repository"
        )));
    }
    let size = required("Size")?;
    let size = size
        .parse::<u64>()
        .map_err(|_| err(format!("`Size: {size}` is not a number of bytes")))?;
    let sha = required("SHA256")?;
    let sha256 = Digest::from_hex(sha)
        .ok_or_else(|| err(format!("`SHA256: {sha}` is not 64 lowercase hex digits")))?;
    let multi_arch = match p.field_str("Multi-Arch").map(str::trim) {
        None | Some("no") => MultiArch::No,
        Some("same") => MultiArch::Same,
        Some("foreign") => MultiArch::Foreign,
        Some("allowed") => MultiArch::Allowed,
        Some(other) => {
            return Err(err(format!(
                "`Multi-Arch: {other}` is not a Multi-Arch value"
            )));
        }
    };
    let essential = match p.field_str("Essential").map(str::trim) {
        None | Some("no") => false,
        Some("yes") => true,
        Some(other) => return Err(err(format!("`Essential: {other}` is neither yes nor no"))),
    };
    let provides = match p.field_str("Provides") {
        None => Vec::new(),
        Some(text) => parse_provides(text).map_err(&err)?,
    };
    Ok(Package {
        name: name.to_string(),
        version,
        arch: arch.to_string(),
        depends: relations("Depends")?,
        pre_depends: relations("Pre-Depends")?,
        recommends: relations("Recommends")?,
        provides,
        multi_arch,
        essential,
        priority: p.field_str("Priority").map(|s| s.trim().to_string()),
        filename: filename.to_string(),
        size,
        sha256,
        line,
    })
}
