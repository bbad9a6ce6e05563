//! Debian packages built into images: the lock's packages as one layer each,
//! shared by every image that uses them, fetched from a local repository
//! (tests/fixtures/debian/make_repo.py: crafted and real Debian 12 packages)
//! served on 127.0.0.1 by python's http.server, which each test starts and
//! stops by its PID.

use crate::support::*;
use imgc::debian::Lock;
use imgc::hash::Digest;
use std::process::Command;

/// A server of a fresh copy of the repository (to tamper with).
fn serve_repo() -> FileServer {
    let server = FileServer::start();
    copy_tree(pristine_repo(), server.root());
    server
}

fn imgc_kdl(url: &str, extra: &str) -> String {
    format!(
        "workspace {{\n{extra}}}\ndebian \"bookworm\" {{\n    url \"{url}\"\n    suite \"bookworm\"\n    components \"main\"\n    arch \"amd64\"\n}}\n"
    )
}

const APPS: &str = "image \"files\" {\n    from \"scratch\"\n    packages \"imgc-files\"\n}\n\
image \"alt\" {\n    from \"scratch\"\n    packages \"imgc-alt-user\" \"libc6\"\n    layer {\n        text \"/etc/alt\" \"alt\"\n    }\n}\n";

/// `imgc lock` against the served repository; the lock it wrote.
fn write_lock(ws: &Ws) -> Lock {
    ws.ok(&["lock"]);
    Lock::parse(&std::fs::read_to_string(ws.path("imgc.lock")).unwrap(), 0).unwrap()
}

fn setup(server: &FileServer) -> (Ws, String) {
    let url = server.url("").trim_end_matches('/').to_string();
    let ws = Ws::new(&[("imgc.kdl", &imgc_kdl(&url, "")), ("apps/BUILD.kdl", APPS)]);
    write_lock(&ws);
    (ws, url)
}

/// The layer digests of an image's manifest, in order.
fn layers(ws: &Ws, name: &str) -> Vec<String> {
    layer_field(&ws.layout("apps", name), "digest")
}

fn package_digests(e: &Events) -> std::collections::BTreeMap<String, String> {
    e.outputs_with_kind()
        .into_iter()
        .filter(|(_, (kind, _))| kind == "package")
        .map(|(l, (_, d))| (l, d))
        .collect()
}

#[test]
fn images_share_package_layers_rebuild_nothing_and_build_offline() {
    let mut server = serve_repo();
    let (ws, _) = setup(&server);
    let e = ws.build(&[]);
    let pkgs = package_digests(&e);
    let names: Vec<&str> = pkgs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "//:bookworm~gcc-12-base",
            "//:bookworm~imgc-alt-second",
            "//:bookworm~imgc-alt-user",
            "//:bookworm~imgc-files",
            "//:bookworm~libc6",
            "//:bookworm~libgcc-s1",
        ],
        "one target per package used anywhere"
    );
    // Each package layer ran once, though two images use libc6 and its deps.
    let ran = e.ran();
    for p in pkgs.keys() {
        assert_eq!(ran.iter().filter(|l| *l == p).count(), 1, "{p}: {ran:?}");
    }
    // Base (none), packages by name, then the image's own layers.
    let d = |l: &str| format!("sha256:{}", pkgs[l].trim_start_matches("sha256:"));
    let files = layers(&ws, "files");
    assert_eq!(
        files,
        [
            d("//:bookworm~gcc-12-base"),
            d("//:bookworm~imgc-files"),
            d("//:bookworm~libc6"),
            d("//:bookworm~libgcc-s1"),
        ]
    );
    let alt = layers(&ws, "alt");
    assert_eq!(alt.len(), 6, "{alt:?}");
    assert_eq!(
        alt[..5],
        [
            d("//:bookworm~gcc-12-base"),
            d("//:bookworm~imgc-alt-second"),
            d("//:bookworm~imgc-alt-user"),
            d("//:bookworm~libc6"),
            d("//:bookworm~libgcc-s1"),
        ]
    );
    // The shared layers are one blob, hard-linked into both layouts.
    use std::os::unix::fs::MetadataExt;
    let libc = d("//:bookworm~libc6");
    let blob = |img: &str| {
        ws.layout("apps", img)
            .join("blobs/sha256")
            .join(libc.trim_start_matches("sha256:"))
    };
    assert_eq!(
        std::fs::metadata(blob("files")).unwrap().ino(),
        std::fs::metadata(blob("alt")).unwrap().ino(),
        "stored once"
    );

    // A no-op rebuild runs nothing.
    assert_eq!(ws.build(&[]).ran(), Vec::<String>::new());

    // The server gone, outputs cleaned, and every layer to rebuild (another
    // compression): the .debs come from the store, nothing from the network.
    server.stop();
    ws.ok(&["clean"]);
    ws.write(
        "imgc.kdl",
        &imgc_kdl(
            server.url("").trim_end_matches('/'),
            "    compression \"zstd\"\n",
        ),
    );
    let e = ws.build(&[]);
    for p in pkgs.keys() {
        assert!(e.ran().contains(p), "{p} rebuilt offline: {:?}", e.ran());
    }
    assert!(ws.layout("apps", "files").join("index.json").exists());
}

#[test]
fn package_layers_hold_merged_usr_paths_and_dpkg_status_and_unpack_with_umoci() {
    require("umoci");
    let server = serve_repo();
    let (ws, _) = setup(&server);
    ws.build(&[]);
    let layout = ws.layout("apps", "files");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let refname = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_string();
    let bundle = tempfile::tempdir().unwrap();
    let target = bundle.path().join("b");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{refname}", layout.display()))
        .arg(&target));
    let rootfs = target.join("rootfs");
    for path in [
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/libimgc.so.1",
        "var/lib/dpkg/status.d/imgc-files",
        "var/lib/dpkg/status.d/libc6",
    ] {
        assert!(
            rootfs.join(path).symlink_metadata().is_ok(),
            "{path} in the rootfs"
        );
    }
    // Merged /usr: nothing under a real /lib.
    assert!(!rootfs.join("lib").exists(), "no /lib directory");
    let status = std::fs::read_to_string(rootfs.join("var/lib/dpkg/status.d/imgc-files")).unwrap();
    assert!(
        status.starts_with("Package: imgc-files\nStatus: install ok installed\n"),
        "{status}"
    );
}

#[test]
fn a_tampered_deb_is_refused_naming_the_url_and_both_hashes() {
    let server = serve_repo();
    let (ws, _) = setup(&server);
    let lock = std::fs::read_to_string(ws.path("imgc.lock")).unwrap();
    let lock = Lock::parse(&lock, 0).unwrap();
    let entry = lock
        .packages
        .iter()
        .find(|p| p.name == "imgc-alt-second")
        .unwrap();
    let served = server.root().join(&entry.filename);
    let mut bytes = std::fs::read(&served).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&served, &bytes).unwrap();
    let out = ws.run(&["build", "--keep-going"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let url = server.url(&entry.filename);
    let tampered = Digest::of_bytes(&bytes).hex();
    assert!(
        err.contains(&url) && err.contains(&entry.sha256.hex()) && err.contains(&tampered),
        "{err}"
    );
    assert!(err.contains("//:bookworm~imgc-alt-second"), "{err}");
    assert!(!cas_holds(&ws, &tampered) && !cas_holds(&ws, &entry.sha256.hex()));
    // The image that does not use it is built (`--keep-going`).
    assert!(ws.layout("apps", "files").join("index.json").exists());
    assert!(!ws.layout("apps", "alt").exists());
}

#[test]
fn a_changed_lock_entry_rebuilds_that_package_and_the_images_above_it() {
    let server = serve_repo();
    let url = server.url("").trim_end_matches('/').to_string();
    let ws = Ws::new(&[
        ("imgc.kdl", &imgc_kdl(&url, "")),
        (
            "apps/BUILD.kdl",
            "image \"one\" {\n    from \"scratch\"\n    packages \"imgc-versioned\" \"imgc-extra\"\n}\n\
             image \"two\" {\n    from \"scratch\"\n    packages \"imgc-extra\"\n}\n\
             image \"three\" {\n    from \":one\"\n    packages \"imgc-provider\" \"imgc-extra\"\n}\n",
        ),
    ]);
    let lock = write_lock(&ws);
    let first = ws.build(&[]);
    // `three` holds only what its base `one` does not.
    assert_eq!(layers(&ws, "three").len(), 3);
    assert_eq!(layers(&ws, "three")[..2], layers(&ws, "one")[..]);
    let extra = package_digests(&first)["//:bookworm~imgc-extra"].clone();
    assert!(layers(&ws, "two").contains(&extra));

    // The lock moves imgc-versioned from 2.1 to 1.0 (same requests): exactly
    // that package's layer and the images above it run again.
    let v2 = lock
        .packages
        .iter()
        .find(|p| p.name == "imgc-versioned")
        .unwrap();
    assert_eq!(v2.version.to_string(), "2.1");
    let packages =
        std::fs::read_to_string(pristine_repo().join("dists/bookworm/main/binary-amd64/Packages"))
            .unwrap();
    let para = packages
        .split("\n\n")
        .find(|p| p.starts_with("Package: imgc-versioned\n") && p.contains("\nVersion: 1.0\n"))
        .unwrap();
    let field = |f: &str| {
        para.lines()
            .find_map(|l| l.strip_prefix(&format!("{f}: ")))
            .unwrap()
            .to_string()
    };
    let text = std::fs::read_to_string(ws.path("imgc.lock")).unwrap();
    let text = text
        .replace("version=\"2.1\"", "version=\"1.0\"")
        .replace(&v2.filename, &field("Filename"))
        .replace(
            &format!("size={}", v2.size),
            &format!("size={}", field("Size")),
        )
        .replace(&v2.sha256.hex(), &field("SHA256"));
    ws.write("imgc.lock", &text);
    let e = ws.build(&[]);
    assert_eq!(
        e.ran(),
        ["//:bookworm~imgc-versioned", "//apps:one", "//apps:three"]
    );
    assert!(
        e.reason("//:bookworm~imgc-versioned")
            .unwrap()
            .contains("sha256")
    );
}

#[test]
fn a_stale_or_missing_lock_is_an_error_naming_the_package() {
    let server = serve_repo();
    let (ws, _) = setup(&server);
    ws.write(
        "apps/BUILD.kdl",
        &APPS.replace(
            "\"imgc-alt-user\" \"libc6\"",
            "\"imgc-alt-user\" \"libc6\" \"imgc-extra\"",
        ),
    );
    for cmd in ["check", "build"] {
        let out = ws.run(&[cmd]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("E092") && err.contains("imgc-extra") && err.contains("apps/BUILD.kdl"),
            "{cmd}: {err}"
        );
    }
    // The image whose requests still match builds.
    ws.ok(&["build", "//apps:files"]);
    std::fs::remove_file(ws.path("imgc.lock")).unwrap();
    let out = ws.run(&["build", "//apps:files"]);
    assert!(stderr(&out).contains("E076"), "{}", stderr(&out));
    // A lock that does not parse: an error with its file and line.
    ws.write("imgc.lock", "lock-version 1\nbogus 1\n");
    let out = ws.run(&["build", "//apps:files"]);
    let err = stderr(&out);
    assert!(err.contains("imgc.lock:2"), "{err}");
}

#[test]
fn a_layer_with_packages_is_one_layer_holding_its_closure() {
    let server = serve_repo();
    let url = server.url("").trim_end_matches('/').to_string();
    let build = |own: &str| {
        format!(
            "layer \"pkgs\" {{\n    packages \"imgc-files\"\n    text \"{own}\" \"mine\"\n}}\n\
             image \"img\" {{\n    from \"scratch\"\n    layers \":pkgs\"\n}}\n"
        )
    };
    let ws = Ws::new(&[
        ("imgc.kdl", &imgc_kdl(&url, "")),
        ("apps/BUILD.kdl", &build("/etc/mine")),
    ]);
    write_lock(&ws);
    ws.build(&[]);
    assert_eq!(layers(&ws, "img").len(), 1);
    let mut tar = last_layer_tar(&ws.layout("apps", "img"));
    let paths: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    for p in [
        "etc/mine",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/libimgc.so.1",
        "var/lib/dpkg/status.d/imgc-files",
        "var/lib/dpkg/status.d/libc6",
        "var/lib/dpkg/status.d/libgcc-s1",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
    }
    // The layer's own entry and a package's file at one path, differently:
    // refused, naming both and the path.
    ws.write(
        "apps/BUILD.kdl",
        &build("/var/lib/dpkg/status.d/imgc-files"),
    );
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("layer `//apps:pkgs` and package `imgc-files` both have `/var/lib/dpkg/status.d/imgc-files`"),
        "{err}"
    );
}

/// Golden package-layer digests per recipe (the deb-package recipe, what is
/// made of a `.deb`, the layer writer's), of a crafted package whose bytes
/// make_repo.py fixes: a change of output without a bump fails here (see
/// `determinism::recipes_pin_their_output`).
const PACKAGE_GOLDEN: &[(&str, &str, &str)] = &[
    (
        "deb-package-1/deb-layer-1/layer-3",
        "gzip",
        "sha256:4838aec414ad8a727986d14a5a109b3061433d90cbf70e85f2b588f3758cece0",
    ),
    (
        "deb-package-1/deb-layer-1/layer-3",
        "zstd",
        "sha256:44635c82bff610a44bb82ea82f8653c63c84e793cd933389df2056ac8fab27cb",
    ),
];

#[test]
fn package_layer_recipes_pin_their_output() {
    use imgc::actions::{deb_package, layer};
    let server = serve_repo();
    let url = server.url("").trim_end_matches('/').to_string();
    let recipe = format!(
        "{}/{}/{}",
        deb_package::RECIPE,
        imgc::packages::deb::RECIPE,
        layer::RECIPE
    );
    let mut missing = Vec::new();
    for compression in ["gzip", "zstd"] {
        let ws = Ws::new(&[
            (
                "imgc.kdl",
                &imgc_kdl(
                    &url,
                    &format!(
                        "    source-date-epoch 1700000000\n    compression \"{compression}\"\n"
                    ),
                ),
            ),
            (
                "apps/BUILD.kdl",
                "image \"one\" {\n    from \"scratch\"\n    packages \"imgc-files\"\n}\n",
            ),
        ]);
        write_lock(&ws);
        let digest = package_digests(&ws.build(&[]))["//:bookworm~imgc-files"].clone();
        match PACKAGE_GOLDEN
            .iter()
            .find(|(r, c, _)| *r == recipe && *c == compression)
        {
            Some((_, _, golden)) => assert_eq!(
                *golden, digest,
                "the package layer ({compression}) changed under `{recipe}`: bump a RECIPE \
                 and add golden lines for the new version"
            ),
            None => missing.push(format!(
                "    (\"{recipe}\", \"{compression}\", \"{digest}\"),"
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "no golden output; add to PACKAGE_GOLDEN:\n{}",
        missing.join("\n")
    );
}

#[test]
fn query_package_names_the_images_holding_a_package_below_a_version() {
    let server = serve_repo();
    let url = server.url("").trim_end_matches('/').to_string();
    let ws = Ws::new(&[
        ("imgc.kdl", &imgc_kdl(&url, "")),
        (
            "apps/BUILD.kdl",
            "image \"base\" {\n    from \"scratch\"\n    packages \"imgc-versioned\"\n}\n\
             image \"above\" {\n    from \":base\"\n    packages \"imgc-extra\"\n}\n\
             image \"other\" {\n    from \"scratch\"\n    packages \"imgc-extra\"\n}\n\
             image \"bundled\" {\n    from \"scratch\"\n    layer {\n        packages \"imgc-ver-user\"\n    }\n}\n",
        ),
    ]);
    write_lock(&ws);
    drop(server); // the lock alone answers: nothing is fetched or built
    let lines = |args: &[&str]| -> Vec<String> {
        stdout(&ws.ok(args)).lines().map(str::to_string).collect()
    };
    // Its own package layer, a base's (inherited), and one inside a layer with packages.
    assert_eq!(
        lines(&["query", "package", "imgc-versioned"]),
        [
            "//apps:above imgc-versioned 2.1",
            "//apps:base imgc-versioned 2.1",
            "//apps:bundled imgc-versioned 2.1",
        ]
    );
    assert_eq!(
        lines(&["query", "package", "imgc-versioned", "--below", "2.1"]),
        Vec::<String>::new()
    );
    assert_eq!(
        lines(&[
            "query",
            "package",
            "imgc-versioned",
            "--below",
            "2.1-1",
            "//apps:above"
        ]),
        ["//apps:above imgc-versioned 2.1"]
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&ws.ok(&[
        "query",
        "package",
        "imgc-extra",
        "--output",
        "json",
    ])))
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"image": "//apps:above", "package": "imgc-extra", "repository": "bookworm", "version": "1.0"},
            {"image": "//apps:other", "package": "imgc-extra", "repository": "bookworm", "version": "1.0"},
        ])
    );
    let out = ws.run(&["query", "package", "imgc-extra", "--below", "not a version"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(ws.path("imgc-out").read_dir().is_err(), "nothing was built");
}
