//! Which package layers a workspace builds, and which targets use them (pure).
//!
//! Builds never resolve: what a target with `packages` holds is its closure in
//! `imgc.lock` ([`Lock::packages_of`]), taken only once [`Lock::check`] said the
//! lock still satisfies the target's requests. [`plan`] turns those closures into
//! generated targets, one per package entry (repository, name, version) used by
//! any target of the workspace, so that every image using `libc6` shares one
//! target, one key and one blob:
//!
//! | a package entry | its label |
//! |---|---|
//! | the only version of `libc6` from `bookworm` that the workspace uses | `//:bookworm~libc6` |
//! | one of several versions of `imgc-versioned` from `bookworm` in use | `//:bookworm~imgc-versioned~2.1` |
//!
//! `~` cannot be written in a target name, so users cannot define (or name on
//! the command line) these targets, as for inline layers; events, `explain` and
//! `query deps` show them.
//!
//! # Order
//!
//! A target's packages are listed by name (the lock's order), and that is the
//! order of their layers in an image: after the base's layers, before the
//! image's own `layers`. Name order is stable under edits: adding a package
//! inserts its layer and moves no other package's layer blob (each layer is the
//! same bytes wherever it sits; only the images' manifests change). Debian
//! packages own disjoint files (dpkg refuses otherwise, and a package layer
//! holds only what its package ships), so the order decides nothing of what an
//! image holds.
//!
//! What it deliberately does not do: look at the base images (the graph drops
//! from an image the packages its base chain already holds:
//! [`crate::graph::Graph::add_packages`]), fetch anything, or merge packages
//! into fewer layers (the layer budget is not planned yet).

use super::lock::{Lock, PackageId};
use crate::label::Label;
use crate::spec::model::DebPackageSpec;
use std::collections::BTreeMap;

/// One generated package-layer target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageTarget {
    pub label: Label,
    pub spec: DebPackageSpec,
}

/// The package layers of a workspace and their users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every package entry some target uses, by label.
    pub packages: Vec<PackageTarget>,
    /// For each target with packages: the labels of its closure's package
    /// layers, by package name.
    pub uses: BTreeMap<Label, Vec<Label>>,
}

/// The label of a package entry: `//:REPO~NAME`, with `~VERSION` when the
/// workspace uses several versions of `NAME` from `REPO`.
pub fn label_of(id: &PackageId, versioned: bool) -> Label {
    let name = if versioned {
        format!("{}~{}~{}", id.repo, id.name, id.version)
    } else {
        format!("{}~{}", id.repo, id.name)
    };
    Label::new("", name)
}

/// The plan for `targets` (each already [`Lock::check`]ed), from `lock`. An
/// error names what the lock lacks (it was parsed, so this is a lock that
/// contradicts itself).
pub fn plan(lock: &Lock, targets: &[Label]) -> Result<Plan, String> {
    let mut closures: BTreeMap<&Label, Vec<PackageId>> = BTreeMap::new();
    for label in targets {
        let text = label.to_string();
        let Some(t) = lock.target(&text) else {
            return Err(format!("imgc.lock has no packages for `{text}`"));
        };
        let mut ids = t.packages.clone();
        ids.sort_by(|a, b| (&a.name, &a.version, &a.repo).cmp(&(&b.name, &b.version, &b.repo)));
        closures.insert(label, ids);
    }
    // Which (repository, name) pairs are used in several versions.
    let mut versions: BTreeMap<(&str, &str), Vec<&PackageId>> = BTreeMap::new();
    for id in closures.values().flatten() {
        let v = versions
            .entry((id.repo.as_str(), id.name.as_str()))
            .or_default();
        if !v.contains(&id) {
            v.push(id);
        }
    }
    let mut labels: BTreeMap<PackageId, Label> = BTreeMap::new();
    for ids in versions.values() {
        for id in ids {
            labels.insert((*id).clone(), label_of(id, ids.len() > 1));
        }
    }
    drop(versions);
    let mut packages = Vec::with_capacity(labels.len());
    for (id, label) in &labels {
        let Some(p) = lock.package(id) else {
            return Err(format!(
                "imgc.lock names `{}` {} of `{}` in a target but has no entry for it",
                id.name, id.version, id.repo
            ));
        };
        let Some(repo) = lock.repository(&p.repo) else {
            return Err(format!(
                "imgc.lock's `{}` comes from repository `{}`, which it does not list",
                p.name, p.repo
            ));
        };
        packages.push(PackageTarget {
            label: label.clone(),
            spec: DebPackageSpec {
                repository: p.repo.clone(),
                name: p.name.clone(),
                version: p.version.to_string(),
                arch: p.arch.clone(),
                url: format!(
                    "{}/{}",
                    repo.url.trim_end_matches('/'),
                    pool_path(&p.filename)
                ),
                filename: p.filename.clone(),
                size: p.size,
                sha256: p.sha256,
            },
        });
    }
    packages.sort_by(|a, b| a.label.cmp(&b.label));
    let uses = closures
        .into_iter()
        .map(|(t, ids)| {
            let ls = ids.iter().map(|id| labels[id].clone()).collect();
            (t.clone(), ls)
        })
        .collect();
    Ok(Plan { packages, uses })
}

/// Bytes of a pool path that a URL path cannot hold as they are: controls, space,
/// and what would end the path or start an escape (`?`, `#`, `%`...). `/` stays a
/// separator; `+`, `~` and `:` (common in Debian file names) are kept.
const PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// A lock's pool path (`Filename`), relative and percent-encoded for a URL: a file
/// named `x%3a1.deb` is fetched as that name, not as `x:1.deb`.
fn pool_path(filename: &str) -> String {
    percent_encoding::utf8_percent_encode(filename.trim_start_matches('/'), PATH).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"// imgc.lock: written by `imgc lock`; builds read only this file. Do not edit: run `imgc lock`.
lock-version 1

repository "bookworm" url="http://127.0.0.1:1/debian/" suite="bookworm" components="main" arch="amd64" release-sha256="0000000000000000000000000000000000000000000000000000000000000000"

package "bookworm" "imgc-versioned" version="1.0" arch="amd64" filename="pool/main/i/imgc-versioned/imgc-versioned_1.0_amd64.deb" size=10 sha256="1111111111111111111111111111111111111111111111111111111111111111"
package "bookworm" "imgc-versioned" version="2.1" arch="amd64" filename="pool/main/i/imgc-versioned/imgc-versioned_2.1_amd64.deb" size=11 sha256="2222222222222222222222222222222222222222222222222222222222222222"
package "bookworm" "libc6" version="2.36-9" arch="amd64" filename="pool/main/g/glibc/libc6_2.36-9_amd64.deb" size=12 sha256="3333333333333333333333333333333333333333333333333333333333333333"
package "bookworm" "zz-tool" version="1.0" arch="amd64" filename="pool/main/z/zz-tool/zz-tool_1.0_amd64.deb" size=13 sha256="4444444444444444444444444444444444444444444444444444444444444444" {
    depends "libc6"
}

target "//a:one" {
    requests "imgc-versioned=1.0" "zz-tool"
    packages "imgc-versioned=1.0" "libc6" "zz-tool"
}

target "//b:two" {
    requests "imgc-versioned=2.1"
    packages "imgc-versioned=2.1"
}

target "//c:three" {
    requests "libc6"
    packages "libc6"
}
"#;

    fn lock() -> Lock {
        Lock::parse(LOCK, 0).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn one_target_per_package_entry_shared_by_its_users() {
        let l = |s: &str| Label::parse_in(s, "").unwrap();
        let p = plan(&lock(), &[l("//a:one"), l("//b:two"), l("//c:three")]).unwrap();
        let labels: Vec<String> = p.packages.iter().map(|t| t.label.to_string()).collect();
        assert_eq!(
            labels,
            [
                "//:bookworm~imgc-versioned~1.0",
                "//:bookworm~imgc-versioned~2.1",
                "//:bookworm~libc6",
                "//:bookworm~zz-tool",
            ]
        );
        let libc = &p.packages[2].spec;
        assert_eq!(
            libc.url,
            "http://127.0.0.1:1/debian/pool/main/g/glibc/libc6_2.36-9_amd64.deb"
        );
        assert_eq!((libc.size, libc.sha256.0[0]), (12, 0x33));
        assert_eq!(
            pool_path("pool/main/r/redis/redis_5%3a7.0~rc1+b1 x#y?.deb"),
            "pool/main/r/redis/redis_5%253a7.0~rc1+b1%20x%23y%3F.deb"
        );
        assert_eq!(
            (libc.name.as_str(), libc.version.as_str()),
            ("libc6", "2.36-9")
        );
        let uses =
            |t: &str| -> Vec<String> { p.uses[&l(t)].iter().map(|x| x.to_string()).collect() };
        assert_eq!(
            uses("//a:one"),
            [
                "//:bookworm~imgc-versioned~1.0",
                "//:bookworm~libc6",
                "//:bookworm~zz-tool"
            ]
        );
        assert_eq!(uses("//c:three"), ["//:bookworm~libc6"]);
    }

    #[test]
    fn only_the_targets_asked_for_and_no_version_when_one_is_used() {
        let l = |s: &str| Label::parse_in(s, "").unwrap();
        let p = plan(&lock(), &[l("//b:two")]).unwrap();
        assert_eq!(p.packages.len(), 1);
        assert_eq!(
            p.packages[0].label.to_string(),
            "//:bookworm~imgc-versioned"
        );
        assert_eq!(p.uses.len(), 1);
        let e = plan(&lock(), &[l("//d:four")]).unwrap_err();
        assert!(e.contains("no packages for `//d:four`"), "{e}");
    }
}
