//! `imgc lock`: resolve every `packages` request of the workspace against its Debian
//! repositories and write `imgc.lock` (`--check`: compare, write nothing; `--why`:
//! explain one package of a target from the lock, offline).
//!
//! The whole workspace is locked at once: the lock is one file, and a lock written
//! for some targets only would drop the others'. Repositories are fetched and
//! verified by [`crate::packages::lockfile`]; resolution and the lock's text are the
//! pure [`crate::debian`].

use super::{CmdError, Context, Loaded};
use crate::cli::LockArgs;
use crate::debian::{Index, Lock, Options, Repository, Request, resolve};
use crate::diag::{Code, Diag, Sources};
use crate::hash::Digest;
use crate::packages::lockfile::{self, Written};
use crate::packages::{LOCK_FILE, requests::TargetRequests};
use crate::report;
use std::collections::{BTreeMap, BTreeSet};

pub fn run(ctx: &Context, args: LockArgs) -> Result<(), CmdError> {
    let loaded = Loaded::load(ctx)?;
    if let Some(why) = &args.why {
        return explain(&loaded, &why[0], &why[1]);
    }
    let lock = resolve_workspace(&loaded)?;
    let text = lock.to_text();
    let root = &loaded.ws.root;
    if args.check {
        let old = lockfile::read(root).map_err(CmdError::Env)?;
        return match old {
            Some(old) if old == text.as_bytes() => {
                report::result(&format!("{LOCK_FILE} is up to date"));
                Ok(())
            }
            Some(old) => Err(CmdError::Failed(format!(
                "{LOCK_FILE} is out of date: {}; run `imgc lock`",
                differences(&String::from_utf8_lossy(&old), &lock)
            ))),
            None => Err(CmdError::Failed(format!(
                "the workspace has no {LOCK_FILE}; run `imgc lock`"
            ))),
        };
    }
    let written = lockfile::write(root, &text).map_err(CmdError::Env)?;
    let packages = lock.packages.len();
    let targets = loaded.package_requests.len();
    report::result(&match written {
        Written::Unchanged => format!("{LOCK_FILE} is up to date ({packages} packages)"),
        Written::Created | Written::Replaced => {
            format!("wrote {LOCK_FILE}: {packages} packages for {targets} targets")
        }
    });
    Ok(())
}

/// Fetches the repositories the requests name, resolves each target's requests
/// and returns the lock of the whole workspace.
fn resolve_workspace(loaded: &Loaded) -> Result<Lock, CmdError> {
    let requests = &loaded.package_requests;
    let diagnostics = |diags: Vec<Diag>| CmdError::Diagnostics {
        sources: loaded.ws.sources.clone(),
        diags,
    };
    let names: BTreeSet<String> = requests
        .iter()
        .flat_map(|t| t.repositories.iter().cloned())
        .collect();
    let progress = report::Progress::status("fetching the Debian repositories");
    let fetched =
        lockfile::fetch_repositories(&loaded.ws.root, &loaded.ws.config.debian, &names, &|s| {
            progress.say(s)
        })
        .map_err(|e| diagnostics(vec![Diag::new(e.code(), e.to_string())]))?;
    progress.say("resolving the packages");

    let mut indexes: BTreeMap<String, Vec<Index>> = BTreeMap::new();
    let mut repositories = Vec::new();
    let mut diags = Vec::new();
    for (repo, f) in &fetched {
        let name = repo.name.value.clone();
        for idx in &f.indexes {
            match Index::parse(&idx.text, &name) {
                Ok(i) => indexes.entry(name.clone()).or_default().push(i),
                Err(e) => diags.push(e.to_diag().help(format!("read from `{}`", idx.url))),
            }
        }
        let release_sha256 = Digest::from_hex(&f.release_sha256).ok_or_else(|| {
            CmdError::Env(format!(
                "repository `{name}`: the Release digest `{}` is not sha256 hex",
                f.release_sha256
            ))
        })?;
        repositories.push(Repository {
            name,
            url: repo.url.value.clone(),
            suite: repo.suite.value.clone(),
            components: repo.components.value.clone(),
            arch: repo.arch.value.clone(),
            release_sha256,
        });
    }
    if !diags.is_empty() {
        return Err(diagnostics(diags));
    }

    let mut resolutions = Vec::new();
    for t in requests {
        match resolve_target(t, &indexes, &repositories) {
            Ok(r) => resolutions.push((t.label.to_string(), r)),
            Err(d) => diags.push(d),
        }
    }
    if !diags.is_empty() {
        return Err(diagnostics(diags));
    }
    Lock::from_resolutions(repositories, resolutions).map_err(|e| {
        diagnostics(vec![Diag::new(
            Code::BadLock,
            format!("cannot write {LOCK_FILE}: {}", e.0),
        )])
    })
}

/// Resolves one target's requests against the indexes of the repositories it
/// names (a diagnostic at the target's `packages` otherwise).
fn resolve_target(
    t: &TargetRequests,
    indexes: &BTreeMap<String, Vec<Index>>,
    repositories: &[Repository],
) -> Result<crate::debian::Resolution, Diag> {
    let mut reqs = Vec::new();
    for r in &t.requests {
        let req = Request::parse(&r.value.to_string()).map_err(|why| {
            Diag::new(Code::BadPackageRequest, why)
                .at(t.file, r.span)
                .label("this request")
        })?;
        reqs.push(req);
    }
    let used: Vec<&Index> = t
        .repositories
        .iter()
        .filter_map(|n| indexes.get(n))
        .flatten()
        .collect();
    let arches: BTreeSet<&str> = repositories
        .iter()
        .filter(|r| t.repositories.contains(&r.name))
        .map(|r| r.arch.as_str())
        .collect();
    let arch = match arches.len() {
        1 => arches.into_iter().next().unwrap_or_default().to_string(),
        _ => {
            return Err(Diag::new(
                Code::Unresolvable,
                format!(
                    "`{}` takes packages from repositories of different architectures ({})",
                    t.label,
                    arches.into_iter().collect::<Vec<_>>().join(", ")
                ),
            )
            .at(t.file, t.span)
            .label("one architecture per target"));
        }
    };
    let options = Options {
        arch,
        recommends: t.recommends,
    };
    resolve(&used, &reqs, &options).map_err(|e| e.to_diag().at(t.file, t.span).label("here"))
}

/// What differs between the lock on disk (`old`) and the one `imgc lock` would
/// write: the packages added, removed or moved to another version, then the
/// targets whose closure changed.
fn differences(old: &str, new: &Lock) -> String {
    let mut sources = Sources::default();
    let file = sources.add(LOCK_FILE, old);
    let Ok(old) = Lock::parse(old, file) else {
        return format!("the {LOCK_FILE} on disk does not parse");
    };
    let versions = |l: &Lock| -> BTreeMap<String, String> {
        l.packages
            .iter()
            .map(|p| (format!("{}/{}", p.repo, p.name), p.version.to_string()))
            .collect()
    };
    let (a, b) = (versions(&old), versions(new));
    let mut out = Vec::new();
    for (name, v) in &b {
        match a.get(name) {
            None => out.push(format!("+{name} {v}")),
            Some(o) if o != v => out.push(format!("{name} {o} -> {v}")),
            _ => {}
        }
    }
    for (name, v) in &a {
        if !b.contains_key(name) {
            out.push(format!("-{name} {v}"));
        }
    }
    if out.is_empty() {
        out.push("the same packages, other targets, requests or repositories".into());
    }
    out.join(", ")
}

/// `--why TARGET PACKAGE`: the chain from one of the target's requests to the
/// package, from the lock alone.
fn explain(loaded: &Loaded, target: &str, package: &str) -> Result<(), CmdError> {
    let label = crate::label::Label::parse_in(target, "")
        .map_err(|e| CmdError::Usage(format!("`{target}` is not a target label: {}", e.0)))?
        .to_string();
    let text = lockfile::read(&loaded.ws.root)
        .map_err(CmdError::Env)?
        .ok_or_else(|| {
            CmdError::Failed(format!("the workspace has no {LOCK_FILE}; run `imgc lock`"))
        })?;
    let text = String::from_utf8(text)
        .map_err(|_| CmdError::Failed(format!("{LOCK_FILE} is not UTF-8")))?;
    let mut sources = loaded.ws.sources.clone();
    let file = sources.add(LOCK_FILE, text.clone());
    let lock =
        Lock::parse(&text, file).map_err(|diags| CmdError::Diagnostics { sources, diags })?;
    if lock.target(&label).is_none() {
        return Err(CmdError::Failed(format!(
            "{LOCK_FILE} has no packages for `{label}`"
        )));
    }
    let chain = lock.why(&label, package).ok_or_else(|| {
        CmdError::Failed(format!(
            "`{package}` is not among the packages of `{label}` in {LOCK_FILE}"
        ))
    })?;
    let names: Vec<String> = chain
        .iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    report::result(&format!("{label}: {}", names.join(" -> ")));
    Ok(())
}
