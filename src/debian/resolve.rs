//! The resolver: requests + indexes → the closure of packages an image needs.
//!
//! # What it computes
//!
//! From requests (`name`, or `name=version` for an exact pin) and the indexes of
//! one or more repositories for one architecture (packages of architecture `all`
//! count too), the closure over `Pre-Depends` and `Depends` (and `Recommends`
//! when [`Options::recommends`] asks), with **one version per package name**.
//! Each selected package records which selected packages its relations resolved
//! to, so [`Resolution::why`] can print a chain from a request to any package.
//!
//! # The rules (deterministic: the result depends on the indexes' contents, never
//! on the order of their paragraphs)
//!
//! Packages are processed breadth-first, requests first (sorted by name), then
//! each selected package's `Pre-Depends`, `Depends` (and `Recommends`), in the
//! order the package lists them. For each relation `a | b | ...`:
//!
//! 1. **Already selected wins.** The first alternative that a selected package
//!    satisfies is used: the real package of that name at a satisfying version,
//!    else the selected provider with the smallest name (through `Provides`).
//! 2. Else **the first alternative, in order, that can be satisfied**:
//!    - a real package of that name: the highest version (dpkg order) that
//!      satisfies the relation and every constraint learned on that name (below);
//!      across repositories, equal versions go to the repository listed first;
//!    - else a virtual package: the provider with the smallest name that has a
//!      version meeting its own learned constraints and providing the name as the
//!      relation needs (its highest such version). A versioned relation (`p (>= 2)`) is only met by a
//!      versioned `Provides: p (= 3.0)`, as in Debian policy 7.5.
//!
//!    "Can be satisfied" looks one level deep: a candidate exists. It does not
//!    try a candidate's own dependencies before choosing it (no backtracking
//!    search; a dead end further down is an error, not a retry).
//! 3. **Learning instead of a SAT solver.** A relation that a selected package's
//!    version does not meet (`b` took `libfoo` 2.1, then `c` needs
//!    `libfoo (<< 2.0)`) adds that constraint, with who asked, to a set of learned
//!    constraints, and the resolution restarts from the requests. Every later
//!    choice of that name must meet every learned constraint. The set only grows,
//!    so this ends; a name no version of which meets its learned constraints is an
//!    error naming the package, each constraint and who asked for it. A learned
//!    constraint is kept even if its asker drops out of a later round, so the
//!    result may hold a lower version than strictly needed, never an unmet one.
//! 4. Pins are learned constraints from the start (`= version`).
//! 5. A relation no alternative can meet is an error naming it and who asked;
//!    under `Recommends` it is skipped (as apt does).
//!
//! # Architecture qualifiers
//!
//! Only the resolution's architecture and `all` are candidates. `foo:any` and
//! `foo:native` are met by those like `foo`: with one architecture there is no
//! other to choose, and the Multi-Arch rule `:any` would add (the target must be
//! `Multi-Arch: allowed`) is a consistency check of the archive, not applied
//! here. A qualifier naming another architecture (`foo:i386`) cannot be met. A
//! relation restricted to other architectures (`foo [!amd64]`) is ignored.
//!
//! # What it deliberately does not do
//!
//! - `Conflicts`, `Breaks` and `Replaces` are not read: nothing is installed over
//!   anything, the image holds only the closure, and Debian's own archive keeps a
//!   suite co-installable.
//! - `Essential: yes` packages are not added implicitly: an image carries what is
//!   asked and needed (add `base-files` or `dash` to the requests to have them).
//! - A request must name a real package, not a virtual one: the spec says which
//!   provider it wants (the error lists them).

use super::index::{Alternatives, Constraint, Dep, Index, Package, Relation, Version, valid_name};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// A requested package: `name` or `name=version`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub name: String,
    /// An exact pin.
    pub version: Option<Version>,
}

impl Request {
    /// Parses `name` or `name=version`.
    pub fn parse(text: &str) -> Result<Request, String> {
        let (name, version) = match text.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        if !valid_name(name) {
            return Err(format!(
                "`{name}` is not a Debian package name (lowercase letters, digits, `+`, `-`, `.`; at least two characters)"
            ));
        }
        let version = match version {
            None => None,
            Some(v) => Some(Version::parse(v)?),
        };
        Ok(Request {
            name: name.to_string(),
            version,
        })
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(v) = &self.version {
            write!(f, "={v}")?;
        }
        Ok(())
    }
}

/// How to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The architecture (`amd64`); packages of `all` count too.
    pub arch: String,
    /// Follow `Recommends` as well.
    pub recommends: bool,
}

/// One package of a resolution and what its relations resolved to.
#[derive(Clone, Debug)]
pub struct Selected {
    /// The repository (index) it comes from.
    pub repo: String,
    pub package: Package,
    /// Names of the selected packages its `Pre-Depends` and `Depends` resolved to.
    pub depends: BTreeSet<String>,
    /// Names of the selected packages its `Recommends` resolved to (when followed).
    pub recommends: BTreeSet<String>,
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug)]
pub struct Resolution {
    /// The requests, sorted, each once.
    pub requests: Vec<Request>,
    pub options: Options,
    /// The closure, by name.
    pub packages: BTreeMap<String, Selected>,
}

impl Resolution {
    /// The shortest chain from a request to `package` (`[request, ..., package]`),
    /// or `None` if it is not in the resolution.
    pub fn why(&self, package: &str) -> Option<Vec<String>> {
        let roots: Vec<&str> = self.requests.iter().map(|r| r.name.as_str()).collect();
        chain(&roots, package, |name| {
            self.packages
                .get(name)
                .map(|s| s.depends.iter().chain(&s.recommends).cloned().collect())
                .unwrap_or_default()
        })
    }
}

/// Breadth-first from the sorted `roots` over `edges` (visited in sorted order):
/// the shortest path to `target`, the first found in that order.
pub(crate) fn chain(
    roots: &[&str],
    target: &str,
    edges: impl Fn(&str) -> BTreeSet<String>,
) -> Option<Vec<String>> {
    let mut parent: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut queue = VecDeque::new();
    let mut sorted: Vec<&str> = roots.to_vec();
    sorted.sort_unstable();
    for r in sorted {
        if parent.insert(r.to_string(), None).is_none() {
            queue.push_back(r.to_string());
        }
    }
    while let Some(name) = queue.pop_front() {
        if name == target {
            let mut path = vec![name.clone()];
            let mut at = &name;
            while let Some(Some(p)) = parent.get(at) {
                path.push(p.clone());
                at = p;
            }
            path.reverse();
            return Some(path);
        }
        for next in edges(&name) {
            if !parent.contains_key(&next) {
                parent.insert(next.clone(), Some(name.clone()));
                queue.push_back(next);
            }
        }
    }
    None
}

/// Who asked for a relation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Asker {
    /// The request, as written.
    Request(String),
    /// A package (name and version).
    Package(String, String),
}

impl fmt::Display for Asker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Asker::Request(r) => write!(f, "the request `{r}`"),
            Asker::Package(n, v) => write!(f, "`{n}` {v}"),
        }
    }
}

/// Why a resolution failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// A request names no package of the repositories (or only a virtual one).
    UnknownRequest {
        request: String,
        /// Providers, when the name is virtual.
        providers: Vec<String>,
        /// A similar real name.
        suggestion: Option<String>,
    },
    /// Two requests for one name with different pins.
    ConflictingRequests { first: String, second: String },
    /// A relation that no alternative can meet.
    Unsatisfiable {
        /// The relation as Debian writes it (`a | b (>= 2)`).
        relation: String,
        asker: Asker,
        /// What exists of the names it mentions (`a: 1.0, 1.5`), for the message.
        available: Vec<String>,
    },
    /// No version of `package` meets every constraint put on it.
    Conflict {
        package: String,
        /// Each constraint (`libfoo (<< 2.0)`) and who asked.
        constraints: Vec<(String, Asker)>,
        /// The versions that exist.
        available: Vec<String>,
    },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::UnknownRequest {
                request,
                providers,
                suggestion,
            } => {
                if providers.is_empty() {
                    write!(f, "no package `{request}` in the repositories")?;
                    if let Some(s) = suggestion {
                        write!(f, " (did you mean `{s}`?)")?;
                    }
                    Ok(())
                } else {
                    write!(
                        f,
                        "`{request}` is a virtual package: request one of its providers: {}",
                        providers.join(", ")
                    )
                }
            }
            ResolveError::ConflictingRequests { first, second } => {
                write!(
                    f,
                    "the requests `{first}` and `{second}` pin one package twice"
                )
            }
            ResolveError::Unsatisfiable {
                relation,
                asker,
                available,
            } => {
                write!(f, "cannot satisfy `{relation}`, needed by {asker}")?;
                if available.is_empty() {
                    write!(f, ": no such package or provider")
                } else {
                    write!(f, ": available: {}", available.join("; "))
                }
            }
            ResolveError::Conflict {
                package,
                constraints,
                available,
            } => {
                write!(f, "no version of `{package}` satisfies every constraint: ")?;
                let parts: Vec<String> = constraints
                    .iter()
                    .map(|(c, a)| format!("`{c}` (needed by {a})"))
                    .collect();
                write!(f, "{}", parts.join(", "))?;
                if available.is_empty() {
                    write!(f, "; no version of it is available")
                } else {
                    write!(f, "; available: {}", available.join(", "))
                }
            }
        }
    }
}

impl std::error::Error for ResolveError {}

impl ResolveError {
    /// The package the error is about.
    pub fn package(&self) -> &str {
        match self {
            ResolveError::UnknownRequest { request, .. } => request,
            ResolveError::ConflictingRequests { first, .. } => {
                first.split('=').next().unwrap_or(first)
            }
            ResolveError::Unsatisfiable { relation, .. } => {
                relation.split([' ', ':', '|']).next().unwrap_or(relation)
            }
            ResolveError::Conflict { package, .. } => package,
        }
    }

    /// As a diagnostic ([`crate::diag::Code::Unresolvable`]); the caller adds the
    /// target and the span of its `packages` node.
    pub fn to_diag(&self) -> crate::diag::Diag {
        crate::diag::Diag::new(crate::diag::Code::Unresolvable, self.to_string())
    }
}

/// A candidate: a package of one of the indexes.
#[derive(Clone, Copy)]
struct Cand<'a> {
    /// Position of its index in the caller's list.
    index: usize,
    pkg: &'a Package,
}

/// Where the resolution of one relation leads.
enum Outcome<'a> {
    /// The relation does not apply to this architecture.
    Skip,
    /// Met by this selected package.
    Existing(String),
    /// Met by selecting this package.
    New(Cand<'a>),
    /// The selected version of `name` does not meet the relation: learn it.
    Conflict(String, Constraint),
    /// No version meets the relation together with the learned constraints.
    Unmeetable(String, Option<Constraint>),
    /// Nothing meets it.
    Missing,
}

/// Learned constraints: name → (constraint, who asked).
type Learned = BTreeMap<String, Vec<(Constraint, Asker)>>;

struct Universe<'a> {
    indexes: &'a [&'a Index],
    arch: &'a str,
}

impl<'a> Universe<'a> {
    fn arch_ok(&self, p: &Package) -> bool {
        p.arch == self.arch || p.arch == "all"
    }

    /// Real packages called `name`, best first: highest version, then the first
    /// index, then the native architecture before `all`.
    fn named(&self, name: &str) -> Vec<Cand<'a>> {
        let mut out: Vec<Cand<'a>> = Vec::new();
        for (index, ix) in self.indexes.iter().enumerate() {
            for pkg in ix.named(name) {
                if self.arch_ok(pkg) {
                    out.push(Cand { index, pkg });
                }
            }
        }
        out.sort_by(|a, b| {
            b.pkg
                .version
                .cmp(&a.pkg.version)
                .then(a.index.cmp(&b.index))
                .then((a.pkg.arch == "all").cmp(&(b.pkg.arch == "all")))
        });
        out
    }

    /// Packages providing `name`, grouped by provider name (sorted), best first in each.
    fn providers(&self, name: &str) -> BTreeMap<&'a str, Vec<Cand<'a>>> {
        let mut names: BTreeSet<&'a str> = BTreeSet::new();
        for ix in self.indexes {
            for p in ix.providers(name) {
                if self.arch_ok(p) {
                    names.insert(&p.name);
                }
            }
        }
        names
            .into_iter()
            .map(|n| {
                let cands = self
                    .named(n)
                    .into_iter()
                    .filter(|c| c.pkg.provides.iter().any(|p| p.name == name))
                    .collect();
                (n, cands)
            })
            .collect()
    }
}

fn qualifier_ok(dep: &Dep, arch: &str) -> bool {
    match dep.qualifier.as_deref() {
        None | Some("any") | Some("native") => true,
        Some(q) => q == arch,
    }
}

/// Whether `pkg` provides `dep.name` in a way that meets `dep`'s constraint.
fn provides_match(pkg: &Package, dep: &Dep) -> bool {
    pkg.provides.iter().any(|p| {
        p.name == dep.name
            && match (&dep.constraint, &p.version) {
                (None, _) => true,
                (Some(c), Some(v)) => c.allows(v),
                (Some(_), None) => false,
            }
    })
}

fn meets_learned(learned: &Learned, name: &str, v: &Version) -> bool {
    learned
        .get(name)
        .is_none_or(|cs| cs.iter().all(|(c, _)| c.allows(v)))
}

/// One round of resolution over fixed learned constraints.
struct Round<'a, 'u> {
    u: &'u Universe<'a>,
    learned: &'u Learned,
    selected: BTreeMap<String, Cand<'a>>,
    depends: BTreeMap<String, BTreeSet<String>>,
    recommends: BTreeMap<String, BTreeSet<String>>,
    queue: VecDeque<String>,
}

/// What ends a round early.
enum Stop {
    /// Learn (name, constraint, asker) and restart.
    Learn(Box<(String, Constraint, Asker)>),
    Fail(Box<ResolveError>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Depends,
    Recommends,
}

impl<'a> Round<'a, '_> {
    fn plan(&self, dep: &Dep) -> Outcome<'a> {
        let u = self.u;
        if !dep.applies_to(u.arch) {
            return Outcome::Skip;
        }
        if !qualifier_ok(dep, u.arch) {
            return Outcome::Missing;
        }
        let allows = |v: &Version| dep.constraint.as_ref().is_none_or(|c| c.allows(v));
        // 1. Already selected.
        if let Some(c) = self.selected.get(&dep.name)
            && allows(&c.pkg.version)
        {
            return Outcome::Existing(dep.name.clone());
        }
        if let Some((name, _)) = self
            .selected
            .iter()
            .find(|(_, c)| provides_match(c.pkg, dep))
        {
            return Outcome::Existing(name.clone());
        }
        // 2. The real package.
        let real = u.named(&dep.name);
        let mut blocked: Option<Outcome<'a>> = None;
        if !real.is_empty() {
            if self.selected.contains_key(&dep.name) {
                if let Some(c) = &dep.constraint {
                    blocked = Some(Outcome::Conflict(dep.name.clone(), c.clone()));
                }
            } else if let Some(c) = real.iter().find(|c| {
                allows(&c.pkg.version) && meets_learned(self.learned, &dep.name, &c.pkg.version)
            }) {
                return Outcome::New(*c);
            } else if real.iter().any(|c| allows(&c.pkg.version)) {
                // Versions meet the relation, none together with the learned constraints.
                blocked = Some(Outcome::Unmeetable(
                    dep.name.clone(),
                    dep.constraint.clone(),
                ));
            }
        }
        // 3. A provider (none of them is selected with a matching version: see 1).
        for (name, cands) in u.providers(&dep.name) {
            if self.selected.contains_key(name) {
                continue;
            }
            if let Some(c) = cands.iter().find(|c| {
                provides_match(c.pkg, dep) && meets_learned(self.learned, name, &c.pkg.version)
            }) {
                return Outcome::New(*c);
            }
        }
        blocked.unwrap_or(Outcome::Missing)
    }

    fn select(&mut self, c: Cand<'a>) -> String {
        let name = c.pkg.name.clone();
        self.selected.insert(name.clone(), c);
        self.queue.push_back(name.clone());
        name
    }

    /// Resolves one relation of `asker` (`None` for a request); returns the name
    /// of the package that meets it, if any.
    fn relation(
        &mut self,
        alts: &Alternatives,
        asker: &Asker,
        kind: Kind,
    ) -> Result<Option<String>, Stop> {
        let outcomes: Vec<Outcome<'a>> = alts.iter().map(|d| self.plan(d)).collect();
        if outcomes.iter().all(|o| matches!(o, Outcome::Skip)) {
            return Ok(None);
        }
        if let Some(name) = outcomes.iter().find_map(|o| match o {
            Outcome::Existing(n) => Some(n.clone()),
            _ => None,
        }) {
            return Ok(Some(name));
        }
        if let Some(c) = outcomes.iter().find_map(|o| match o {
            Outcome::New(c) => Some(*c),
            _ => None,
        }) {
            return Ok(Some(self.select(c)));
        }
        if kind == Kind::Recommends {
            return Ok(None);
        }
        for o in &outcomes {
            match o {
                Outcome::Conflict(name, c) => {
                    return Err(Stop::Learn(Box::new((
                        name.clone(),
                        c.clone(),
                        asker.clone(),
                    ))));
                }
                Outcome::Unmeetable(name, c) => {
                    let extra = c.as_ref().map(|c| (c, asker));
                    return Err(Stop::Fail(Box::new(self.conflict(name, extra))));
                }
                _ => {}
            }
        }
        Err(Stop::Fail(Box::new(ResolveError::Unsatisfiable {
            relation: super::index::display_alternatives(alts),
            asker: asker.clone(),
            available: alts
                .iter()
                .filter_map(|d| self.available(&d.name))
                .collect(),
        })))
    }

    /// `name: 1.0, 2.1` or `name: provided by a, b`, if anything of that name exists.
    fn available(&self, name: &str) -> Option<String> {
        let versions: Vec<String> = self
            .u
            .named(name)
            .iter()
            .rev()
            .map(|c| c.pkg.version.to_string())
            .collect();
        let providers: Vec<String> = self
            .u
            .providers(name)
            .into_values()
            .flatten()
            .flat_map(|c| {
                c.pkg
                    .provides
                    .iter()
                    .filter(|p| p.name == name)
                    .map(move |p| match &p.version {
                        Some(v) => format!("{} {} (= {v})", c.pkg.name, c.pkg.version),
                        None => format!("{} {}", c.pkg.name, c.pkg.version),
                    })
            })
            .collect();
        match (versions.is_empty(), providers.is_empty()) {
            (true, true) => None,
            (false, true) => Some(format!("{name} {}", versions.join(", "))),
            (true, false) => Some(format!("{name} provided by {}", providers.join(", "))),
            (false, false) => Some(format!(
                "{name} {}, provided by {}",
                versions.join(", "),
                providers.join(", ")
            )),
        }
    }

    fn conflict(&self, name: &str, extra: Option<(&Constraint, &Asker)>) -> ResolveError {
        let mut constraints: Vec<(String, Asker)> = self
            .learned
            .get(name)
            .into_iter()
            .flatten()
            .map(|(c, a)| (format!("{name} {c}"), a.clone()))
            .collect();
        if let Some((c, a)) = extra {
            let item = (format!("{name} {c}"), a.clone());
            if !constraints.contains(&item) {
                constraints.push(item);
            }
        }
        let mut available: Vec<String> = self
            .u
            .named(name)
            .iter()
            .rev()
            .map(|c| c.pkg.version.to_string())
            .collect();
        available.dedup();
        ResolveError::Conflict {
            package: name.to_string(),
            constraints,
            available,
        }
    }

    fn run(&mut self, requests: &[Request], recommends: bool) -> Result<(), Stop> {
        for r in requests {
            let dep = Dep {
                name: r.name.clone(),
                qualifier: None,
                constraint: r.version.as_ref().map(|v| Constraint {
                    relation: Relation::Eq,
                    version: v.clone(),
                }),
                restriction: None,
            };
            self.relation(&vec![dep], &Asker::Request(r.to_string()), Kind::Depends)?;
        }
        while let Some(name) = self.queue.pop_front() {
            let Some(c) = self.selected.get(&name).copied() else {
                continue;
            };
            let asker = Asker::Package(name.clone(), c.pkg.version.to_string());
            for alts in c.pkg.pre_depends.iter().chain(&c.pkg.depends) {
                if let Some(to) = self.relation(alts, &asker, Kind::Depends)? {
                    self.depends.entry(name.clone()).or_default().insert(to);
                }
            }
            if recommends {
                for alts in &c.pkg.recommends {
                    if let Some(to) = self.relation(alts, &asker, Kind::Recommends)? {
                        self.recommends.entry(name.clone()).or_default().insert(to);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Resolves `requests` against `indexes` (see the module documentation for the rules).
pub fn resolve(
    indexes: &[&Index],
    requests: &[Request],
    options: &Options,
) -> Result<Resolution, ResolveError> {
    let u = Universe {
        indexes,
        arch: &options.arch,
    };
    let mut requests = requests.to_vec();
    requests.sort();
    requests.dedup();
    for w in requests.windows(2) {
        if w[0].name == w[1].name {
            return Err(ResolveError::ConflictingRequests {
                first: w[0].to_string(),
                second: w[1].to_string(),
            });
        }
    }
    let mut learned: Learned = BTreeMap::new();
    for r in &requests {
        if u.named(&r.name).is_empty() {
            let providers: BTreeSet<String> = u
                .providers(&r.name)
                .into_keys()
                .map(str::to_string)
                .collect();
            let all_names: BTreeSet<&str> = indexes
                .iter()
                .flat_map(|ix| ix.packages().iter().map(|p| p.name.as_str()))
                .collect();
            return Err(ResolveError::UnknownRequest {
                request: r.name.clone(),
                suggestion: if providers.is_empty() {
                    crate::diag::did_you_mean(&r.name, all_names).map(str::to_string)
                } else {
                    None
                },
                providers: providers.into_iter().collect(),
            });
        }
        if let Some(v) = &r.version {
            learned.entry(r.name.clone()).or_default().push((
                Constraint {
                    relation: Relation::Eq,
                    version: v.clone(),
                },
                Asker::Request(r.to_string()),
            ));
        }
    }
    loop {
        let mut round = Round {
            u: &u,
            learned: &learned,
            selected: BTreeMap::new(),
            depends: BTreeMap::new(),
            recommends: BTreeMap::new(),
            queue: VecDeque::new(),
        };
        match round.run(&requests, options.recommends) {
            Ok(()) => {
                let Round {
                    selected,
                    mut depends,
                    mut recommends,
                    ..
                } = round;
                let packages = selected
                    .into_iter()
                    .map(|(name, c)| {
                        let s = Selected {
                            repo: indexes[c.index].repo().to_string(),
                            package: c.pkg.clone(),
                            depends: depends.remove(&name).unwrap_or_default(),
                            recommends: recommends.remove(&name).unwrap_or_default(),
                        };
                        (name, s)
                    })
                    .collect();
                return Ok(Resolution {
                    requests,
                    options: options.clone(),
                    packages,
                });
            }
            Err(Stop::Fail(e)) => return Err(*e),
            Err(Stop::Learn(learn)) => {
                let (name, c, asker) = *learn;
                let list = learned.entry(name).or_default();
                let item = (c, asker);
                // A learned constraint is met by every later choice of its name, so
                // the same conflict cannot come back; guard the loop all the same.
                if list.contains(&item) {
                    return Err(round_conflict(&u, &learned, &item.0, &item.1));
                }
                list.push(item);
            }
        }
    }
}

/// The error for a conflict seen twice (cannot happen by construction; see `resolve`).
fn round_conflict(
    u: &Universe<'_>,
    learned: &Learned,
    c: &Constraint,
    asker: &Asker,
) -> ResolveError {
    let name = learned
        .iter()
        .find(|(_, cs)| cs.iter().any(|(x, a)| x == c && a == asker))
        .map(|(n, _)| n.clone())
        .unwrap_or_default();
    let round = Round {
        u,
        learned,
        selected: BTreeMap::new(),
        depends: BTreeMap::new(),
        recommends: BTreeMap::new(),
        queue: VecDeque::new(),
    };
    round.conflict(&name, None)
}
