use super::*;
use crate::diag::{Code, Sources};
use crate::hash::Digest;

/// One paragraph of a Packages file; `extra` fields are added as written.
fn para(name: &str, version: &str, arch: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!("Package: {name}\nVersion: {version}\nArchitecture: {arch}\n");
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\n"));
    }
    let sha = Digest::of_bytes(format!("{name}_{version}_{arch}").as_bytes()).hex();
    s.push_str(&format!(
        "Filename: pool/main/{}/{name}/{name}_{version}_{arch}.deb\nSize: {}\nSHA256: {sha}\n",
        &name[..1],
        100 + name.len()
    ));
    s
}

fn index(paras: &[String]) -> Index {
    Index::parse(&paras.join("\n"), "main").unwrap()
}

fn opts() -> Options {
    Options {
        arch: "amd64".into(),
        recommends: false,
    }
}

fn reqs(names: &[&str]) -> Vec<Request> {
    names.iter().map(|n| Request::parse(n).unwrap()).collect()
}

/// `name=version` of every selected package.
fn picked(r: &Resolution) -> Vec<String> {
    r.packages
        .values()
        .map(|s| format!("{}={}", s.package.name, s.package.version))
        .collect()
}

fn run(ix: &Index, names: &[&str]) -> Result<Resolution, ResolveError> {
    resolve(&[ix], &reqs(names), &opts())
}

// ---------------------------------------------------------------- index

#[test]
fn index_reads_the_fields_the_resolver_and_the_lock_need() {
    let text = [
        para(
            "libfoo",
            "1:2.0-3",
            "amd64",
            &[
                ("Pre-Depends", "libc6 (>= 2.34)"),
                ("Depends", "aa | bb (<< 3~), perl:any"),
                ("Recommends", "cc"),
                ("Provides", "foo-api (= 2.0), foo-virtual"),
                ("Multi-Arch", "same"),
                ("Priority", "optional"),
                ("Description", "a library\n with a long\n .\n description"),
            ],
        ),
        para("base", "1", "all", &[("Essential", "yes")]),
    ]
    .join("\n");
    let ix = Index::parse(&text, "bookworm").unwrap();
    assert_eq!(ix.repo(), "bookworm");
    let p = ix.named("libfoo").next().unwrap();
    assert_eq!(p.version.as_str(), "1:2.0-3");
    assert_eq!(p.line, 1);
    assert_eq!(
        index::display_alternatives(&p.pre_depends[0]),
        "libc6 (>= 2.34)"
    );
    assert_eq!(
        index::display_alternatives(&p.depends[0]),
        "aa | bb (<< 3~)"
    );
    assert_eq!(p.depends[1][0].qualifier.as_deref(), Some("any"));
    assert_eq!(p.recommends.len(), 1);
    assert_eq!(p.provides.len(), 2);
    assert_eq!(p.provides[0].version.as_ref().unwrap().as_str(), "2.0");
    assert_eq!(p.multi_arch, MultiArch::Same);
    assert_eq!(p.priority.as_deref(), Some("optional"));
    assert_eq!(p.filename, "pool/main/l/libfoo/libfoo_1:2.0-3_amd64.deb");
    assert_eq!(p.size, 106);
    let base = ix.named("base").next().unwrap();
    assert!(base.essential);
    assert_eq!(base.line, 18);
    assert_eq!(ix.providers("foo-api").count(), 1);
    assert!(ix.get("libfoo", "1:2.0-3", "amd64").is_some());
}

#[test]
fn versions_compare_by_dpkg_rules() {
    let v = |s: &str| Version::parse(s).unwrap();
    assert!(v("1.0~rc1") < v("1.0"));
    assert!(v("1.0") < v("1.0a"));
    assert!(v("2.36-9") < v("2.36-9+deb12u9"));
    assert!(v("9.9") < v("1:0.1"));
    assert!(v("1.10") > v("1.9"));
    assert_eq!(v("1.0").dpkg_cmp(&v("1.0-0")), std::cmp::Ordering::Equal);
    // Digit runs the comparison could not hold are refused, not a panic later.
    assert!(Version::parse("1.99999999999999999999999").is_err());
    assert!(Version::parse("1.0000000000000000000000000001").is_ok());
    assert!(Version::parse("").is_err());
    assert!(Version::parse("a:1").is_err());
    assert!(Version::parse("1.0 beta").is_err());
}

#[test]
fn index_errors_name_the_repository_the_line_and_the_package() {
    let good = para("ok", "1.0", "amd64", &[]);
    let cases: Vec<(String, usize, Option<&str>, &str)> = vec![
        (
            format!("{good}\nPackage: broken\nArchitecture: amd64\n"),
            8,
            Some("broken"),
            "no `Version` field",
        ),
        (
            para("bad-sha", "1", "amd64", &[]).replace("SHA256: ", "SHA256: XY"),
            1,
            Some("bad-sha"),
            "is not 64 lowercase hex digits",
        ),
        (
            para("bad-dep", "1", "amd64", &[("Depends", "aa (>= 1")]),
            1,
            Some("bad-dep"),
            "`Depends`",
        ),
        (
            para("bad-dep2", "1", "amd64", &[("Depends", "aa (>= 1) junk")]),
            1,
            Some("bad-dep2"),
            "is not a package relation",
        ),
        (
            para("big", "1.99999999999999999999999", "amd64", &[]),
            1,
            Some("big"),
            "too large",
        ),
        (
            para("escape", "1", "amd64", &[]).replace("Filename: pool", "Filename: ../pool"),
            1,
            Some("escape"),
            "not a relative path",
        ),
        (
            format!("{good}\n{good}"),
            8,
            Some("ok"),
            "listed twice (first on line 1)",
        ),
        (
            para("BadName", "1", "amd64", &[]),
            1,
            Some("BadName"),
            "not a Debian package name",
        ),
        (
            para("prov", "1", "amd64", &[("Provides", "xx (>= 1)")]),
            1,
            Some("prov"),
            "must be `=`",
        ),
        (
            "Package: xx\nnot a field\n".to_string(),
            1,
            None,
            "could not detect value",
        ),
    ];
    for (text, line, package, message) in cases {
        let e = Index::parse(&text, "bookworm").unwrap_err();
        assert_eq!(e.repo, "bookworm");
        assert_eq!(e.line, line, "{e}");
        if package.is_some() {
            assert_eq!(e.package.as_deref(), package, "{e}");
        }
        assert!(e.to_string().contains(message), "{e}");
        assert_eq!(e.to_diag().code, Code::BadIndex);
    }
}

#[test]
fn index_parsing_never_panics_on_mangled_text() {
    let base = [
        para(
            "aa",
            "1:2.0-1",
            "amd64",
            &[("Depends", "bb (>= 1) | cc:any, dd [amd64]")],
        ),
        para("bb", "1.0", "all", &[("Provides", "v (= 1)")]),
    ]
    .join("\n");
    let bytes = base.as_bytes();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut b = bytes.to_vec();
        let at = (seed as usize) % b.len();
        let junk = b"():|,[]!~ \n9=-+.";
        b[at] = junk[(seed >> 32) as usize % junk.len()];
        if let Ok(text) = std::str::from_utf8(&b)
            && let Ok(ix) = Index::parse(text, "r")
        {
            let _ = resolve(&[&ix], &reqs(&["aa"]), &opts());
        }
    }
}

// ---------------------------------------------------------------- resolver

#[test]
fn alternatives_take_the_first_that_can_be_satisfied() {
    let ix = index(&[
        para(
            "user",
            "1",
            "amd64",
            &[("Depends", "missing | second | third")],
        ),
        para("second", "1", "amd64", &[]),
        para("third", "1", "amd64", &[]),
    ]);
    let r = run(&ix, &["user"]).unwrap();
    assert_eq!(picked(&r), ["second=1", "user=1"]);
    assert_eq!(
        r.packages["user"].depends.iter().collect::<Vec<_>>(),
        ["second"]
    );
}

#[test]
fn alternatives_prefer_what_is_already_selected() {
    let ix = index(&[
        para("user", "1", "amd64", &[("Depends", "first | second")]),
        para("first", "1", "amd64", &[]),
        para("second", "1", "amd64", &[]),
    ]);
    // `second` is requested (and so selected) before `user`'s relation is seen.
    let r = run(&ix, &["user", "second"]).unwrap();
    assert_eq!(picked(&r), ["second=1", "user=1"]);
}

#[test]
fn virtual_packages_resolve_through_provides() {
    let ix = index(&[
        para("user", "1", "amd64", &[("Depends", "mta")]),
        para("zmail", "1", "amd64", &[("Provides", "mta")]),
        para("bmail", "1", "amd64", &[("Provides", "mta")]),
    ]);
    // Several providers: the smallest name.
    assert_eq!(picked(&run(&ix, &["user"]).unwrap()), ["bmail=1", "user=1"]);
    // One already selected wins.
    assert_eq!(
        picked(&run(&ix, &["user", "zmail"]).unwrap()),
        ["user=1", "zmail=1"]
    );
    // A real package of that name wins over providers.
    let ix = index(&[
        para("user", "1", "amd64", &[("Depends", "mta")]),
        para("amail", "1", "amd64", &[("Provides", "mta")]),
        para("mta", "1", "amd64", &[]),
    ]);
    assert_eq!(picked(&run(&ix, &["user"]).unwrap()), ["mta=1", "user=1"]);
}

#[test]
fn versioned_provides_meet_versioned_relations_and_unversioned_do_not() {
    let ix = index(&[
        para("user", "1", "amd64", &[("Depends", "api (>= 2)")]),
        para("aaa-plain", "1", "amd64", &[("Provides", "api")]),
        para("old", "1", "amd64", &[("Provides", "api (= 1.5)")]),
        para("new", "1", "amd64", &[("Provides", "api (= 3.0)")]),
    ]);
    assert_eq!(picked(&run(&ix, &["user"]).unwrap()), ["new=1", "user=1"]);
    // An unversioned relation takes any provider: the smallest name.
    let ix = index(&[
        para("user", "1", "amd64", &[("Depends", "api")]),
        para("aaa-plain", "1", "amd64", &[("Provides", "api")]),
        para("new", "1", "amd64", &[("Provides", "api (= 3.0)")]),
    ]);
    assert_eq!(
        picked(&run(&ix, &["user"]).unwrap()),
        ["aaa-plain=1", "user=1"]
    );
}

#[test]
fn version_relations_pick_among_versions() {
    let versions = [
        para("lib", "1.0", "amd64", &[]),
        para("lib", "2.1", "amd64", &[]),
        para("lib", "3.0~rc1", "amd64", &[]),
    ];
    for (relation, want) in [
        ("lib", "lib=3.0~rc1"),
        ("lib (<< 2.0)", "lib=1.0"),
        ("lib (<= 2.1)", "lib=2.1"),
        ("lib (= 2.1)", "lib=2.1"),
        ("lib (>= 2.0)", "lib=3.0~rc1"),
        ("lib (>> 2.1)", "lib=3.0~rc1"),
        ("lib (<< 3.0)", "lib=3.0~rc1"),
        ("lib (<< 3.0~)", "lib=2.1"),
    ] {
        let mut paras = versions.to_vec();
        paras.push(para("user", "1", "amd64", &[("Depends", relation)]));
        let r = run(&index(&paras), &["user"]).unwrap();
        assert_eq!(picked(&r)[0], want, "{relation}");
    }
}

#[test]
fn a_later_constraint_lowers_an_earlier_choice() {
    // `a` takes lib 2.1 first; `b` needs lib << 2: learned, restarted, lib 1.0.
    let ix = index(&[
        para("aa", "1", "amd64", &[("Depends", "lib")]),
        para("bb", "1", "amd64", &[("Depends", "lib (<< 2.0)")]),
        para("lib", "1.0", "amd64", &[]),
        para("lib", "2.1", "amd64", &[]),
    ]);
    assert_eq!(
        picked(&run(&ix, &["aa", "bb"]).unwrap()),
        ["aa=1", "bb=1", "lib=1.0"]
    );
}

#[test]
fn constraints_no_version_meets_are_an_error_naming_each_and_who_asked() {
    let ix = index(&[
        para("aa", "1", "amd64", &[("Depends", "lib (>= 2.0)")]),
        para("bb", "1", "amd64", &[("Depends", "lib (<< 2.0)")]),
        para("lib", "1.0", "amd64", &[]),
        para("lib", "2.1", "amd64", &[]),
    ]);
    let e = run(&ix, &["aa", "bb"]).unwrap_err();
    assert_eq!(e.package(), "lib");
    assert_eq!(
        e.to_string(),
        "no version of `lib` satisfies every constraint: `lib (<< 2.0)` (needed by `bb` 1), \
         `lib (>= 2.0)` (needed by `aa` 1); available: 1.0, 2.1"
    );
    assert_eq!(e.to_diag().code, Code::Unresolvable);
}

#[test]
fn pins_select_exactly_that_version() {
    let ix = index(&[
        para("lib", "1.0", "amd64", &[]),
        para("lib", "2.1", "amd64", &[]),
        para("user", "1", "amd64", &[("Depends", "lib (>= 1.0)")]),
    ]);
    assert_eq!(
        picked(&run(&ix, &["user", "lib=1.0"]).unwrap()),
        ["lib=1.0", "user=1"]
    );
    let e = run(&ix, &["lib=3.0"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot satisfy `lib (= 3.0)`, needed by the request `lib=3.0`: available: lib 1.0, 2.1"
    );
    let e = run(&ix, &["lib=1.0", "lib=2.1"]).unwrap_err();
    assert!(matches!(e, ResolveError::ConflictingRequests { .. }), "{e}");
    // A pin against a dependency's constraint.
    let ix = index(&[
        para("lib", "1.0", "amd64", &[]),
        para("lib", "2.1", "amd64", &[]),
        para("user", "1", "amd64", &[("Depends", "lib (>= 2.0)")]),
    ]);
    let e = run(&ix, &["user", "lib=1.0"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no version of `lib` satisfies every constraint: `lib (= 1.0)` (needed by the request \
         `lib=1.0`), `lib (>= 2.0)` (needed by `user` 1); available: 1.0, 2.1"
    );
}

#[test]
fn recommends_are_followed_only_when_asked() {
    let ix = index(&[
        para(
            "app",
            "1",
            "amd64",
            &[("Depends", "lib"), ("Recommends", "extra, not-there")],
        ),
        para("lib", "1", "amd64", &[("Recommends", "lib-extra")]),
        para("extra", "1", "amd64", &[]),
        para("lib-extra", "1", "amd64", &[]),
    ]);
    assert_eq!(picked(&run(&ix, &["app"]).unwrap()), ["app=1", "lib=1"]);
    let with = Options {
        recommends: true,
        ..opts()
    };
    let r = resolve(&[&ix], &reqs(&["app"]), &with).unwrap();
    // Recommends of recommended and depended-on packages too; a missing one is skipped.
    assert_eq!(picked(&r), ["app=1", "extra=1", "lib=1", "lib-extra=1"]);
    assert_eq!(
        r.packages["app"].recommends.iter().collect::<Vec<_>>(),
        ["extra"]
    );
    assert_eq!(r.why("lib-extra").unwrap(), ["app", "lib", "lib-extra"]);
}

#[test]
fn architecture_qualifiers_and_foreign_packages() {
    let ix = index(&[
        para(
            "user",
            "1",
            "amd64",
            &[("Depends", "perl:any, tool:native, helper")],
        ),
        para("perl", "1", "amd64", &[("Multi-Arch", "allowed")]),
        para("tool", "1", "all", &[]),
        para("helper", "2", "i386", &[]),
        para("helper", "1", "amd64", &[]),
        para("other", "1", "amd64", &[("Depends", "helper:i386")]),
        para(
            "restricted",
            "1",
            "amd64",
            &[("Depends", "nowhere [!amd64], tool [amd64]")],
        ),
    ]);
    // i386 packages are never candidates for an amd64 resolution.
    assert_eq!(
        picked(&run(&ix, &["user"]).unwrap()),
        ["helper=1", "perl=1", "tool=1", "user=1"]
    );
    let e = run(&ix, &["other"]).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot satisfy `helper:i386`"),
        "{e}"
    );
    assert_eq!(
        picked(&run(&ix, &["restricted"]).unwrap()),
        ["restricted=1", "tool=1"]
    );
}

#[test]
fn cycles_end() {
    let ix = index(&[
        para("aa", "1", "amd64", &[("Depends", "bb")]),
        para("bb", "1", "amd64", &[("Pre-Depends", "cc")]),
        para("cc", "1", "amd64", &[("Depends", "aa")]),
    ]);
    let r = run(&ix, &["aa"]).unwrap();
    assert_eq!(picked(&r), ["aa=1", "bb=1", "cc=1"]);
    assert_eq!(r.packages["cc"].depends.iter().collect::<Vec<_>>(), ["aa"]);
    assert_eq!(r.why("cc").unwrap(), ["aa", "bb", "cc"]);
}

#[test]
fn unsatisfiable_relations_name_the_relation_and_who_asked() {
    let ix = index(&[
        para(
            "user",
            "1.0",
            "amd64",
            &[("Depends", "gone (>= 1) | alsogone")],
        ),
        para("gone", "0.5", "amd64", &[]),
    ]);
    let e = run(&ix, &["user"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot satisfy `gone (>= 1) | alsogone`, needed by `user` 1.0: available: gone 0.5"
    );
    assert_eq!(e.package(), "gone");
    let e = run(&ix, &["usr"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no package `usr` in the repositories (did you mean `user`?)"
    );
    let ix = index(&[
        para("p1", "1", "amd64", &[("Provides", "virt")]),
        para("p2", "1", "amd64", &[("Provides", "virt")]),
    ]);
    let e = run(&ix, &["virt"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`virt` is a virtual package: request one of its providers: p1, p2"
    );
}

#[test]
fn essential_packages_are_not_added_implicitly() {
    let ix = index(&[
        para("base-files", "1", "amd64", &[("Essential", "yes")]),
        para("dash", "1", "amd64", &[("Essential", "yes")]),
        para("app", "1", "amd64", &[]),
    ]);
    assert_eq!(picked(&run(&ix, &["app"]).unwrap()), ["app=1"]);
}

#[test]
fn several_repositories_take_the_highest_version_and_ties_go_to_the_first() {
    let main = Index::parse(
        &[
            para("libc6", "2.36-9", "amd64", &[]),
            para("tz", "1", "all", &[]),
            para("app", "1", "amd64", &[("Depends", "libc6, tz")]),
        ]
        .join("\n"),
        "main",
    )
    .unwrap();
    let security = Index::parse(
        &[
            para("libc6", "2.36-9+deb12u9", "amd64", &[]),
            para("tz", "1", "all", &[]),
        ]
        .join("\n"),
        "security",
    )
    .unwrap();
    let r = resolve(&[&main, &security], &reqs(&["app"]), &opts()).unwrap();
    assert_eq!(r.packages["libc6"].repo, "security");
    assert_eq!(
        r.packages["libc6"].package.version.as_str(),
        "2.36-9+deb12u9"
    );
    assert_eq!(r.packages["tz"].repo, "main");
    let r = resolve(&[&security, &main], &reqs(&["app"]), &opts()).unwrap();
    assert_eq!(r.packages["tz"].repo, "security");
}

/// The packages of a resolution with their edges, for comparing resolutions.
fn summary(r: &Resolution) -> Vec<String> {
    r.packages
        .values()
        .map(|s| {
            format!(
                "{}={} -> {:?} {:?}",
                s.package.name, s.package.version, s.depends, s.recommends
            )
        })
        .collect()
}

#[test]
fn the_result_does_not_depend_on_the_order_of_the_index() {
    let mut paras = vec![
        para(
            "app",
            "1",
            "amd64",
            &[
                ("Depends", "mta, lib (>= 1.5), aa | bb"),
                ("Recommends", "xx"),
            ],
        ),
        para("z-mta", "1", "amd64", &[("Provides", "mta")]),
        para(
            "c-mta",
            "1",
            "amd64",
            &[("Provides", "mta"), ("Depends", "lib (<< 3)")],
        ),
        para("lib", "1.0", "amd64", &[]),
        para("lib", "2.0", "amd64", &[]),
        para("lib", "3.0", "amd64", &[]),
        para("aa", "1", "amd64", &[("Depends", "app")]),
        para("bb", "1", "amd64", &[]),
        para("xx", "1", "all", &[("Depends", "bb")]),
    ];
    let with = Options {
        recommends: true,
        ..opts()
    };
    let first = summary(&resolve(&[&index(&paras)], &reqs(&["app"]), &with).unwrap());
    assert_eq!(
        first
            .iter()
            .map(|s| s.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["aa=1", "app=1", "bb=1", "c-mta=1", "lib=2.0", "xx=1"]
    );
    let mut seed = 7u64;
    for _ in 0..50 {
        // Fisher-Yates with a small xorshift.
        for i in (1..paras.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            paras.swap(i, (seed as usize) % (i + 1));
        }
        let again = summary(&resolve(&[&index(&paras)], &reqs(&["app"]), &with).unwrap());
        assert_eq!(again, first);
    }
}

// ---------------------------------------------------------------- lock

fn repo(name: &str) -> Repository {
    Repository {
        name: name.into(),
        url: "http://deb.example/debian".into(),
        suite: "bookworm".into(),
        components: vec!["main".into()],
        arch: "amd64".into(),
        release_sha256: Digest::of_bytes(name.as_bytes()),
    }
}

fn sample_lock() -> Lock {
    let ix = index(&[
        para("libc6", "2.36-9", "amd64", &[("Depends", "libgcc-s1")]),
        para(
            "libgcc-s1",
            "12.2.0-14",
            "amd64",
            &[("Depends", "libc6 (>= 2.35)")],
        ),
        para("tzdata", "2024a-0", "all", &[("Recommends", "extra")]),
        para("extra", "1", "all", &[]),
        para("lib", "1.0", "amd64", &[]),
        para("lib", "2.1", "amd64", &[]),
    ]);
    let runtime = resolve(&[&ix], &reqs(&["tzdata", "libc6", "lib"]), &opts()).unwrap();
    let pinned = resolve(
        &[&ix],
        &reqs(&["lib=1.0", "tzdata"]),
        &Options {
            recommends: true,
            ..opts()
        },
    )
    .unwrap();
    Lock::from_resolutions(
        vec![repo("main")],
        vec![
            ("//bases:runtime".into(), runtime),
            ("//apps:pinned".into(), pinned),
        ],
    )
    .unwrap()
}

fn parse(text: &str) -> Result<Lock, Vec<String>> {
    let mut sources = Sources::default();
    let id = sources.add("imgc.lock", text);
    Lock::parse(text, id).map_err(|ds| ds.iter().map(|d| d.short(&sources)).collect())
}

#[test]
fn lock_text_is_canonical() {
    let lock = sample_lock();
    let sha = |s: &str| Digest::of_bytes(s.as_bytes()).hex();
    let expected = format!(
        r#"// imgc.lock: written by `imgc lock`; builds read only this file. Do not edit: run `imgc lock`.
lock-version 1

repository "main" url="http://deb.example/debian" suite="bookworm" components="main" arch="amd64" release-sha256="{}"

package "main" "extra" version="1" arch="all" filename="pool/main/e/extra/extra_1_all.deb" size=105 sha256="{}"
package "main" "lib" version="1.0" arch="amd64" filename="pool/main/l/lib/lib_1.0_amd64.deb" size=103 sha256="{}"
package "main" "lib" version="2.1" arch="amd64" filename="pool/main/l/lib/lib_2.1_amd64.deb" size=103 sha256="{}"
package "main" "libc6" version="2.36-9" arch="amd64" filename="pool/main/l/libc6/libc6_2.36-9_amd64.deb" size=105 sha256="{}" {{
    depends "libgcc-s1"
}}
package "main" "libgcc-s1" version="12.2.0-14" arch="amd64" filename="pool/main/l/libgcc-s1/libgcc-s1_12.2.0-14_amd64.deb" size=109 sha256="{}" {{
    depends "libc6"
}}
package "main" "tzdata" version="2024a-0" arch="all" filename="pool/main/t/tzdata/tzdata_2024a-0_all.deb" size=106 sha256="{}" {{
    recommends "extra"
}}

target "//apps:pinned" recommends=#true {{
    requests "lib=1.0" "tzdata"
    packages "extra" "lib=1.0" "tzdata"
}}
target "//bases:runtime" {{
    requests "lib" "libc6" "tzdata"
    packages "lib=2.1" "libc6" "libgcc-s1" "tzdata"
}}
"#,
        sha("main"),
        sha("extra_1_all"),
        sha("lib_1.0_amd64"),
        sha("lib_2.1_amd64"),
        sha("libc6_2.36-9_amd64"),
        sha("libgcc-s1_12.2.0-14_amd64"),
        sha("tzdata_2024a-0_all"),
    );
    assert_eq!(lock.to_text(), expected);
    let back = parse(&expected).unwrap();
    assert_eq!(back, lock);
    assert_eq!(back.to_text(), expected);
}

#[test]
fn lock_round_trips_odd_strings_and_several_repositories() {
    let ix_a = Index::parse(&para("libc6", "2.36-9", "amd64", &[]), "a").unwrap();
    let ix_b = Index::parse(&para("libc6", "2.36-9", "amd64", &[]), "b.security").unwrap();
    let ra = resolve(&[&ix_a], &reqs(&["libc6"]), &opts()).unwrap();
    let rb = resolve(&[&ix_b], &reqs(&["libc6"]), &opts()).unwrap();
    let mut odd = repo("a");
    odd.url = "http://h/\"quoted\" \\ back\u{e9}slash".into();
    odd.components = vec!["main".into(), "contrib".into()];
    let lock = Lock::from_resolutions(
        vec![repo("b.security"), odd],
        vec![("//x:one".into(), ra), ("//x:two".into(), rb)],
    )
    .unwrap();
    let text = lock.to_text();
    // The same name and version from two repositories: the target names the repository.
    assert!(text.contains(r#"packages "a/libc6=2.36-9""#), "{text}");
    assert!(
        text.contains(r#"packages "b.security/libc6=2.36-9""#),
        "{text}"
    );
    assert!(
        text.contains(r#"url="http://h/\"quoted\" \\ backéslash""#),
        "{text}"
    );
    let back = parse(&text).unwrap();
    assert_eq!(back, lock);
    assert_eq!(back.to_text(), text);
}

#[test]
fn lock_errors_are_located_with_stable_codes() {
    let text = sample_lock().to_text();
    let cases: Vec<(String, &str)> = vec![
        (text.replace("lock-version 1", "lock-version 2"), "E093 imgc.lock:2:14: lock-version 2 is not supported"),
        (text.replace("lock-version 1\n", "lock-version 1\nfrobnicate\n"), "E002 imgc.lock:3:1: unknown node `frobnicate` in imgc.lock"),
        (text.replacen(" size=105", "", 1), "E005 imgc.lock:6:1: `package` needs `size=`"),
        (text.replacen("sha256=\"", "sha256=\"Z", 2), "E016 imgc.lock:6:"),
        (
            text.replacen("package \"main\" \"extra\"", "package \"main\" \"lib\" version=\"1.0\" arch=\"amd64\" filename=\"x\" size=1 sha256=\"0000000000000000000000000000000000000000000000000000000000000000\"\npackage \"main\" \"extra\"", 1),
            "E015 imgc.lock:8:1: package `lib` 1.0 of `main` is given twice",
        ),
        (text.replace("\"libgcc-s1\" \"tzdata\"", "\"libgcc-s2\" \"tzdata\""), "E093 imgc.lock:25:32: target `//bases:runtime` names a package the lock lacks"),
        (text.replace("packages \"lib=2.1\"", "packages \"lib\""), "E093 imgc.lock:25:14: `lib` is ambiguous"),
        (text.replace("requests \"lib=1.0\"", "requests \"lib=2.1\""), "E093 imgc.lock:20:14: `lib=2.1` is pinned"),
        (text.replace("depends \"libc6\"", "depends \"libc7\""), "E093 imgc.lock:13:13: `libc7` is not a package of the lock"),
        (text.replace("repository \"main\"", "repository \"other\""), "E093 imgc.lock:6:9: package `extra` names repository `main`"),
        (text.replace("size=105", "size=\"105\""), "E004 imgc.lock:6:"),
        (text.replace("lock-version 1\n", ""), "E005 imgc.lock:1:1: imgc.lock has no `lock-version`"),
        (text.replace("target \"//apps:pinned\" recommends=#true {", "target \"//apps:pinned\" recommends=#true {\n    provides \"x\""), "E002 imgc.lock:20:5: unknown node `provides` in a `target`"),
        (format!("{text}target \"//bases:runtime\" {{\n    requests \"libc6\"\n    packages \"libc6\"\n}}\n"), "E015 imgc.lock:27:8: target `//bases:runtime` is given twice"),
        ("lock-version 1\npackage {".to_string(), "E001 imgc.lock:2:"),
    ];
    for (bad, want) in cases {
        let errors = parse(&bad).expect_err(want);
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "want {want:?}, got {errors:#?}"
        );
    }
}

#[test]
fn lock_queries_and_why() {
    let lock = sample_lock();
    let names = |label: &str| -> Vec<String> {
        lock.packages_of(label)
            .unwrap()
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect()
    };
    assert_eq!(
        names("//bases:runtime"),
        [
            "lib=2.1",
            "libc6=2.36-9",
            "libgcc-s1=12.2.0-14",
            "tzdata=2024a-0"
        ]
    );
    assert_eq!(
        names("//apps:pinned"),
        ["extra=1", "lib=1.0", "tzdata=2024a-0"]
    );
    assert!(lock.packages_of("//nope:x").is_none());
    let chain = |label: &str, p: &str| -> Option<Vec<String>> {
        lock.why(label, p)
            .map(|c| c.iter().map(|p| p.name.clone()).collect())
    };
    assert_eq!(
        chain("//bases:runtime", "libgcc-s1").unwrap(),
        ["libc6", "libgcc-s1"]
    );
    assert_eq!(
        chain("//apps:pinned", "extra").unwrap(),
        ["tzdata", "extra"]
    );
    // `extra` is in the lock (for the other target), not in this one.
    assert_eq!(chain("//bases:runtime", "extra"), None);
    let id = lock.target("//apps:pinned").unwrap().packages[1].clone();
    assert_eq!(lock.package(&id).unwrap().version.as_str(), "1.0");
    assert_eq!(lock.repository("main").unwrap().arch, "amd64");
}

#[test]
fn check_names_what_differs() {
    let lock = sample_lock();
    let t = "//bases:runtime";
    assert_eq!(
        lock.check(t, &reqs(&["libc6", "tzdata", "lib"]), false),
        Ok(())
    );
    let e = lock
        .check(t, &reqs(&["libc6", "tzdata", "lib", "openssl"]), false)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`//bases:runtime` requests `openssl`, which imgc.lock does not have"
    );
    assert_eq!(e.package(), Some("openssl"));
    let e = lock.check(t, &reqs(&["libc6", "lib"]), false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "imgc.lock has `tzdata` for `//bases:runtime`, which no longer requests it"
    );
    let e = lock
        .check(t, &reqs(&["libc6", "tzdata", "lib=1.0"]), false)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`//bases:runtime` requests `lib=1.0`, imgc.lock has `lib`"
    );
    let e = lock
        .check("//apps:pinned", &reqs(&["tzdata", "lib"]), true)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`//apps:pinned` requests `lib`, imgc.lock has `lib=1.0`"
    );
    let e = lock
        .check(t, &reqs(&["libc6", "tzdata", "lib"]), true)
        .unwrap_err();
    assert!(matches!(e, Stale::Recommends { spec: true, .. }), "{e}");
    let e = lock.check("//new:x", &reqs(&["libc6"]), false).unwrap_err();
    assert_eq!(e.to_string(), "imgc.lock has no packages for `//new:x`");
    assert_eq!(e.to_diag().code, Code::StaleLock);
}

#[test]
fn from_resolutions_refuses_what_it_cannot_write() {
    let ix = index(&[para("a1", "1", "amd64", &[])]);
    let r = run(&ix, &["a1"]).unwrap();
    let e = Lock::from_resolutions(vec![repo("other")], vec![("//x:y".into(), r.clone())]);
    assert!(
        e.unwrap_err()
            .0
            .contains("repository `main`, which is not given")
    );
    let e = Lock::from_resolutions(vec![repo("bad/name")], vec![]);
    assert!(e.unwrap_err().0.contains("cannot name a repository"));
    let e = Lock::from_resolutions(
        vec![repo("main")],
        vec![("//x:y".into(), r.clone()), ("//x:y".into(), r)],
    );
    assert!(e.unwrap_err().0.contains("given twice"));
}

// ---------------------------------------------------------------- the real index

#[test]
fn the_test_repository_resolves_redis_without_recommends() {
    let debs = std::env::var_os("IMGC_TEST_DEBS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-debs")
        });
    assert!(
        debs.join("redis-server_5%3a7.0.15-1~deb12u10_amd64.deb")
            .exists()
            || std::fs::read_dir(&debs)
                .is_ok_and(|mut d| d.any(|e| e
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("redis-server_")))),
        "no Debian packages in {}: run scripts/test (it downloads them once) or set IMGC_TEST_DEBS",
        debs.display()
    );
    let out = tempfile::tempdir().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian/make_repo.py");
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg("--out")
        .arg(out.path())
        .arg("--debs")
        .arg(&debs)
        .arg("--no-sign")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 runs make_repo.py");
    assert!(status.success(), "make_repo.py failed");
    let text =
        std::fs::read_to_string(out.path().join("dists/bookworm/main/binary-amd64/Packages"))
            .unwrap();
    let ix = Index::parse(&text, "bookworm").unwrap();
    assert!(ix.packages().len() >= 80);
    let requests = reqs(&["redis-server", "ca-certificates", "tzdata", "libssl3"]);
    let r = resolve(&[&ix], &requests, &opts()).unwrap();
    let names: Vec<&str> = r.packages.keys().map(String::as_str).collect();
    for needed in [
        "libc6",
        "redis-tools",
        "libssl3",
        "openssl",
        "debconf",
        "libgcc-s1",
        "libsystemd0",
    ] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
    // Every package but the requests is there because a Depends/Pre-Depends resolved to it.
    for name in r.packages.keys() {
        let requested = requests.iter().any(|q| &q.name == name);
        let depended = r.packages.values().any(|s| s.depends.contains(name));
        assert!(
            requested || depended,
            "{name} is in the closure for no dependency"
        );
        assert!(r.packages.values().all(|s| s.recommends.is_empty()));
    }
    // Recommends-only packages stay out: `perl` is recommended by a package of the
    // repository, but it comes here only through `usrmerge`'s `perl:any`.
    assert_eq!(
        r.why("perl").unwrap(),
        ["redis-server", "init-system-helpers", "usrmerge", "perl"]
    );
    assert_eq!(
        r.why("redis-tools").unwrap(),
        ["redis-server", "redis-tools"]
    );
    // The crafted edge cases of the repository.
    let one = |req: &str| picked(&resolve(&[&ix], &reqs(&[req]), &opts()).unwrap());
    assert_eq!(
        one("imgc-alt-user"),
        ["imgc-alt-second=1.0", "imgc-alt-user=1.0"]
    );
    assert_eq!(
        one("imgc-virt-user"),
        ["imgc-provider=1.0", "imgc-virt-user=1.0"]
    );
    assert_eq!(
        one("imgc-ver-user"),
        ["imgc-ver-user=1.0", "imgc-versioned=2.1"]
    );
    assert_eq!(
        one("imgc-vvirt-user"),
        ["imgc-vprov=1.0", "imgc-vvirt-user=1.0"]
    );
    assert_eq!(
        one("imgc-any-user"),
        ["imgc-any-user=1.0", "imgc-provider=1.0"]
    );
    assert_eq!(one("imgc-predep"), ["imgc-predep=1.0", "imgc-provider=1.0"]);
    assert_eq!(
        one("imgc-cycle-a"),
        ["imgc-cycle-a=1.0", "imgc-cycle-b=1.0"]
    );
    assert_eq!(one("imgc-recommends"), ["imgc-recommends=1.0"]);
    let e = resolve(&[&ix], &reqs(&["imgc-unsat"]), &opts()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot satisfy `imgc-nowhere (>= 1)`, needed by `imgc-unsat` 1.0: no such package or provider"
    );
    // And the lock of it reads back equal.
    let lock =
        Lock::from_resolutions(vec![repo("bookworm")], vec![("//r:redis".into(), r)]).unwrap();
    assert_eq!(parse(&lock.to_text()).unwrap(), lock);
}
