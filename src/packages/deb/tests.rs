use super::*;
use crate::layer::{LayerFormat, write_layer};
use crate::spec::model::Compression;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of real Debian 12 packages (`scripts/test` downloads them).
fn test_debs() -> PathBuf {
    let dir = std::env::var_os("IMGC_TEST_DEBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-debs"));
    assert!(
        dir.is_dir(),
        "no Debian packages in `{}`: run scripts/test (it downloads them with \
         tests/fixtures/debian/fetch-debs.sh) or set IMGC_TEST_DEBS",
        dir.display()
    );
    dir
}

fn real_deb(prefix: &str) -> PathBuf {
    let dir = test_debs();
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    assert_eq!(found.len(), 1, "one `{prefix}*.deb` in {}", dir.display());
    found.pop().unwrap()
}

fn layer_of(deb: &Path) -> Result<PackageLayer, DebError> {
    let f = std::fs::File::open(deb).unwrap();
    package_layer(f, &deb.display().to_string(), &Limits::default())
}

fn layer_of_bytes(deb: &[u8]) -> Result<PackageLayer, DebError> {
    layer_of_bytes_with(deb, &Limits::default())
}

fn layer_of_bytes_with(deb: &[u8], limits: &Limits) -> Result<PackageLayer, DebError> {
    package_layer(deb, "test.deb", limits)
}

fn find<'a>(l: &'a PackageLayer, path: &str) -> &'a Entry {
    l.entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no `{path}` in the layer"))
}

fn bytes(e: &Entry) -> &[u8] {
    match &e.data {
        EntryData::Bytes(b) => b,
        other => panic!("`{}` is not inline bytes: {other:?}", e.path),
    }
}

const CONTROL: &str = "Package: crafted\n\
Version: 1:2.0-1\n\
Architecture: amd64\n\
Maintainer: Test <test@example.org>\n\
Depends: libc6 (>= 2.36)\n\
Description: a crafted package\n \
with a long description\n .\n and a second paragraph\n";

/// A package tree for `dpkg-deb --build`: a setuid binary, a symlink, a hard
/// link, a sticky directory, a file owned by 1234:1234, and /lib, /lib64 and
/// /bin paths (one relative link climbing out of /lib64).
fn package_tree(root: &Path) {
    let w = |p: &str, content: &[u8], mode: u32| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    w("DEBIAN/control", CONTROL.as_bytes(), 0o644);
    w(
        "DEBIAN/md5sums",
        b"0123456789abcdef0123456789abcdef  usr/bin/tool\n\
          fedcba9876543210fedcba9876543210  lib/x86_64-linux-gnu/libfoo.so.1\n",
        0o644,
    );
    w("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o4755);
    symlink("tool", root.join("usr/bin/tool-link")).unwrap();
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-hard")).unwrap();
    w(
        "lib/x86_64-linux-gnu/libfoo.so.1",
        b"\x7fELF fake library",
        0o644,
    );
    symlink("libfoo.so.1", root.join("lib/x86_64-linux-gnu/libfoo.so")).unwrap();
    std::fs::create_dir_all(root.join("lib64")).unwrap();
    symlink(
        "../lib/x86_64-linux-gnu/libfoo.so.1",
        root.join("lib64/ld-fake.so.2"),
    )
    .unwrap();
    w("bin/sh-ish", b"#!/bin/sh\n", 0o755);
    std::fs::create_dir_all(root.join("var/spool/crafted")).unwrap();
    std::fs::set_permissions(
        root.join("var/spool/crafted"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    w("etc/crafted.conf", b"owned = 1234\n", 0o640);
    std::os::unix::fs::chown(root.join("etc/crafted.conf"), Some(1234), Some(1234)).unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
}

/// Builds the crafted package with `dpkg-deb`, data.tar compressed with
/// `compression` (`gzip`, `xz`, `zstd` or `none`).
fn crafted_deb(dir: &Path, compression: &str) -> PathBuf {
    let root = dir.join(format!("root-{compression}"));
    package_tree(&root);
    let out = dir.join(format!("crafted-{compression}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--build", "-Z", compression, "--nocheck"])
        .arg(&root)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("dpkg-deb runs (scripts/test installs it)");
    assert!(status.success(), "dpkg-deb --build failed");
    out
}

#[test]
fn crafted_package_in_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = Vec::new();
    for (c, ext) in [
        ("gzip", ".gz"),
        ("xz", ".xz"),
        ("zstd", ".zst"),
        ("none", ""),
    ] {
        let deb = crafted_deb(dir.path(), c);
        let l = layer_of(&deb).unwrap();
        assert_eq!(l.data_compression, ext, "{c}");
        layers.push(l);
    }
    // The same files whatever the compression.
    for l in &layers[1..] {
        assert_eq!(l.entries, layers[0].entries);
        assert_eq!(l.control, layers[0].control);
    }
    let l = &layers[0];
    assert_eq!(l.control.package, "crafted");
    assert_eq!(l.control.version, "1:2.0-1");
    assert_eq!(l.control.architecture, "amd64");

    let tool = find(l, "usr/bin/tool");
    assert_eq!(tool.mode, 0o4755, "setuid kept");
    assert_eq!(bytes(tool), b"#!/bin/sh\necho tool\n");
    let hard = find(l, "usr/bin/tool-hard");
    assert_eq!(bytes(hard), bytes(tool), "a hard link becomes a copy");
    assert_eq!(hard.mode, 0o4755);
    assert_eq!(
        find(l, "usr/bin/tool-link").data,
        EntryData::Symlink("tool".into())
    );
    let conf = find(l, "etc/crafted.conf");
    assert_eq!((conf.uid, conf.gid, conf.mode), (1234, 1234, 0o640));
    let spool = find(l, "var/spool/crafted");
    assert_eq!((&spool.data, spool.mode), (&EntryData::Dir, 0o1777));

    // Merged /usr: nothing under a top-level lib, lib64 or bin.
    for e in &l.entries {
        let top = e.path.split('/').next().unwrap();
        assert!(
            !ALIASED_DIRS.contains(&top),
            "`{}` is under a top-level `{top}`",
            e.path
        );
    }
    assert_eq!(
        bytes(find(l, "usr/lib/x86_64-linux-gnu/libfoo.so.1")),
        b"\x7fELF fake library"
    );
    assert_eq!(
        find(l, "usr/lib/x86_64-linux-gnu/libfoo.so").data,
        EntryData::Symlink("libfoo.so.1".into())
    );
    // `../lib/...` from /lib64 still reaches the library from /usr/lib64.
    assert_eq!(
        find(l, "usr/lib64/ld-fake.so.2").data,
        EntryData::Symlink("../lib/x86_64-linux-gnu/libfoo.so.1".into())
    );
    assert_eq!(bytes(find(l, "usr/bin/sh-ish")), b"#!/bin/sh\n");
    assert_eq!(
        l.aliased,
        ["bin", "lib", "lib64"]
            .map(String::from)
            .into_iter()
            .collect()
    );

    // The dpkg status for scanners.
    let status = std::str::from_utf8(bytes(find(l, "var/lib/dpkg/status.d/crafted"))).unwrap();
    assert_eq!(
        status,
        "Package: crafted\n\
         Status: install ok installed\n\
         Version: 1:2.0-1\n\
         Architecture: amd64\n\
         Maintainer: Test <test@example.org>\n\
         Depends: libc6 (>= 2.36)\n\
         Description: a crafted package\n \
         with a long description\n .\n and a second paragraph\n"
    );
    let sums = find(l, "var/lib/dpkg/status.d/crafted.md5sums");
    assert_eq!(
        std::str::from_utf8(bytes(sums)).unwrap(),
        "0123456789abcdef0123456789abcdef  usr/bin/tool\n\
         fedcba9876543210fedcba9876543210  usr/lib/x86_64-linux-gnu/libfoo.so.1\n"
    );
    assert_eq!((sums.mode, sums.uid, sums.gid), (0o644, 0, 0));
    // Sorted and valid, as the layer writer wants them.
    assert_eq!(layer::normalize(l.entries.clone()).unwrap(), l.entries);
}

// ---------------------------------------------------------------------------
// Hand-made archives for the malformed cases.

/// An `ar` archive of `members` as `dpkg-deb` writes it.
fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let h = format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name,
            0,
            0,
            0,
            "100644",
            data.len()
        );
        assert_eq!(h.len(), 60);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // Raw bytes: the crate refuses to write `..`, which a hostile tar has.
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_cksum();
    h
}

fn hard_link(path: &str, target: &str) -> tar::Header {
    let mut h = header(path, tar::EntryType::Link, 0, 0o644);
    h.set_link_name(target).unwrap();
    h.set_cksum();
    h
}

fn tar_of(entries: &[(tar::Header, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (h, data) in entries {
        b.append(h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn control_tar() -> Vec<u8> {
    tar_of(&[(
        header(
            "./control",
            tar::EntryType::Regular,
            CONTROL.len() as u64,
            0o644,
        ),
        CONTROL.as_bytes(),
    )])
}

fn deb_with_data(data: &[u8]) -> Vec<u8> {
    ar(&[
        ("debian-binary", b"2.0\n"),
        ("control.tar", &control_tar()),
        ("data.tar", data),
    ])
}

fn code_of(r: Result<PackageLayer, DebError>) -> (Code, String) {
    let e = r.expect_err("the package must be refused");
    (e.code, e.to_string())
}

#[test]
fn hand_made_deb_reads() {
    let data = tar_of(&[
        (header("./", tar::EntryType::Directory, 0, 0o755), b""),
        (header("./usr/", tar::EntryType::Directory, 0, 0o755), b""),
        (header("./usr/x", tar::EntryType::Regular, 3, 0o644), b"abc"),
    ]);
    let l = layer_of_bytes(&deb_with_data(&data)).unwrap();
    let paths: Vec<&str> = l.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["usr", "usr/x", "var/lib/dpkg/status.d/crafted"],
        "the root entry is dropped"
    );
}

#[test]
fn truncated_deb_is_refused_at_every_length() {
    let dir = tempfile::tempdir().unwrap();
    for c in ["xz", "none"] {
        let deb = std::fs::read(crafted_deb(dir.path(), c)).unwrap();
        for cut in (0..deb.len()).step_by(37) {
            let (code, msg) = code_of(layer_of_bytes(&deb[..cut]));
            assert!(
                matches!(code, Code::Malformed),
                "{c}, cut at {cut}: {code} {msg}"
            );
            assert!(msg.starts_with("E080 `test.deb`: "), "{msg}");
        }
    }
}

#[test]
fn data_tar_lying_about_sizes_is_refused() {
    // A size larger than the data that follows: the archive ends inside it.
    let mut data = tar_of(&[(header("./usr/x", tar::EntryType::Regular, 3, 0o644), b"abc")]);
    let mut h = header("./usr/x", tar::EntryType::Regular, 1 << 20, 0o644);
    h.set_cksum();
    data[..512].copy_from_slice(h.as_bytes());
    let (code, msg) = code_of(layer_of_bytes(&deb_with_data(&data)));
    assert_eq!(code, Code::Malformed, "{msg}");
    assert!(msg.contains("ends inside"), "{msg}");

    // A size smaller than the data: the file's bytes are read as a header.
    let long = [b'x'; 1500];
    let mut data = tar_of(&[
        (
            header("./usr/x", tar::EntryType::Regular, 1500, 0o644),
            &long,
        ),
        (header("./usr/y", tar::EntryType::Regular, 1, 0o644), b"y"),
    ]);
    let h = header("./usr/x", tar::EntryType::Regular, 10, 0o644);
    data[..512].copy_from_slice(h.as_bytes());
    let (code, msg) = code_of(layer_of_bytes(&deb_with_data(&data)));
    assert_eq!(code, Code::Malformed, "{msg}");
    assert!(msg.contains("not a tar header"), "{msg}");

    // An ar member that claims more bytes than the file has.
    let mut deb = deb_with_data(&tar_of(&[(
        header("./usr/x", tar::EntryType::Regular, 3, 0o644),
        b"abc",
    )]));
    let pos = find_bytes(&deb, b"data.tar").unwrap() + 48;
    deb[pos..pos + 10].copy_from_slice(b"99999999  ");
    let (code, msg) = code_of(layer_of_bytes(&deb));
    assert_eq!(code, Code::Malformed, "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn devices_fifos_and_whiteouts_are_refused() {
    for (path, kind, what) in [
        ("./dev/null", tar::EntryType::Char, "character device"),
        ("./dev/sda", tar::EntryType::Block, "block device"),
        ("./run/pipe", tar::EntryType::Fifo, "FIFO"),
        ("./etc/.wh.passwd", tar::EntryType::Regular, "whiteout"),
    ] {
        let data = tar_of(&[(header(path, kind, 0, 0o644), b"")]);
        let (code, msg) = code_of(layer_of_bytes(&deb_with_data(&data)));
        assert_eq!(code, Code::Unsupported, "{msg}");
        assert!(msg.starts_with("E082"), "{msg}");
        assert!(msg.contains(what), "{msg}");
    }
}

#[test]
fn bad_archives_are_refused() {
    let data = tar_of(&[(header("./usr/x", tar::EntryType::Regular, 3, 0o644), b"abc")]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not an archive".to_vec(), "not an ar archive"),
        (
            ar(&[("control.tar", &control_tar())]),
            "not `debian-binary`",
        ),
        (
            ar(&[("debian-binary", b"3.0\n"), ("control.tar", &control_tar())]),
            "not 2.x",
        ),
        (
            ar(&[("debian-binary", b"2.0\n"), ("data.tar", &data)]),
            "before control.tar",
        ),
        (
            ar(&[("debian-binary", b"2.0\n"), ("control.tar", &control_tar())]),
            "no data.tar",
        ),
        (
            ar(&[
                ("debian-binary", b"2.0\n"),
                ("control.tar", &control_tar()),
                ("evil", b"x"),
            ]),
            "unexpected member",
        ),
        (
            ar(&[
                ("debian-binary", b"2.0\n"),
                ("control.tar", &tar_of(&[])),
                ("data.tar", &data),
            ]),
            "no `control` file",
        ),
        (
            deb_with_data(&tar_of(&[(
                header("./usr/../../etc/x", tar::EntryType::Regular, 0, 0o644),
                b"",
            )])),
            "leaves the image root",
        ),
        (
            deb_with_data(&tar_of(&[(
                header("./usr/h", tar::EntryType::Link, 0, 0o644),
                b"",
            )])),
            "has no target",
        ),
    ];
    for (deb, want) in cases {
        let e = layer_of_bytes(&deb).expect_err(want);
        assert_eq!(e.code, Code::Malformed, "{e}");
        assert!(e.to_string().contains(want), "`{e}` should say `{want}`");
    }
    // Unknown compression.
    let e = layer_of_bytes(&ar(&[
        ("debian-binary", b"2.0\n"),
        ("control.tar", &control_tar()),
        ("data.tar.bz2", b"BZh"),
    ]))
    .unwrap_err();
    assert_eq!(e.code, Code::Unsupported, "{e}");
}

#[test]
fn bad_control_files_are_refused() {
    for (control, want) in [
        ("Version: 1\nArchitecture: all\n", "no `Package` field"),
        (
            "Package: ../../etc\nVersion: 1\nArchitecture: all\n",
            "not a Debian package name",
        ),
        (
            "Package: ok\nVersion: 1\nArchitecture: all\nStatus: purge\n",
            "`Status` field",
        ),
        (
            "Package: ok\nVersion: bad version!\nArchitecture: all\n",
            "malformed version",
        ),
        (
            "Package: ok\nVersion: 1\nArchitecture: all\n\nPackage: two\n",
            "more than one paragraph",
        ),
    ] {
        let ctl = tar_of(&[(
            header(
                "./control",
                tar::EntryType::Regular,
                control.len() as u64,
                0o644,
            ),
            control.as_bytes(),
        )]);
        let deb = ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar", &ctl),
            ("data.tar", &tar_of(&[])),
        ]);
        let e = layer_of_bytes(&deb).expect_err(want);
        assert_eq!(e.code, Code::Malformed, "{e}");
        assert!(e.to_string().contains(want), "`{e}` should say `{want}`");
    }
}

#[test]
fn limits_are_enforced() {
    let data = tar_of(&[
        (header("./a", tar::EntryType::Regular, 3, 0o644), b"abc"),
        (header("./b", tar::EntryType::Regular, 3, 0o644), b"abc"),
        (hard_link("./c", "./a"), b""),
    ]);
    let deb = deb_with_data(&data);
    let few = Limits {
        max_entries: 1,
        ..Limits::default()
    };
    let e = layer_of_bytes_with(&deb, &few).unwrap_err();
    assert_eq!(e.code, Code::Limit, "{e}");
    assert!(e.to_string().contains("more than 1 entries"), "{e}");
    let small = Limits {
        max_content: 5,
        ..Limits::default()
    };
    let e = layer_of_bytes_with(&deb, &small).unwrap_err();
    assert_eq!(e.code, Code::Limit, "{e}");
    let short = Limits {
        max_path: 1,
        ..Limits::default()
    };
    let e = layer_of_bytes_with(&deb, &short).unwrap_err();
    assert_eq!(e.code, Code::Limit, "{e}");
    // A decompression bomb: a small gzip of many zero bytes, over the cap of
    // the data tar (content limit plus overhead per entry).
    let tiny = Limits {
        max_entries: 1,
        max_content: 0,
        max_path: 100,
    };
    let zeros = vec![0u8; (tiny.max_data_tar() + 4096) as usize];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &zeros).unwrap();
    let bomb = ar(&[
        ("debian-binary", b"2.0\n"),
        ("control.tar", &control_tar()),
        ("data.tar.gz", &gz.finish().unwrap()),
    ]);
    let e = layer_of_bytes_with(&bomb, &tiny).unwrap_err();
    assert_eq!(e.code, Code::Limit, "{e}");
    assert!(
        e.to_string()
            .contains("the data tar is larger than allowed"),
        "{e}"
    );
}

#[test]
fn both_lib_and_usr_lib_for_one_file_is_a_conflict() {
    let data = tar_of(&[
        (header("./lib/x", tar::EntryType::Regular, 1, 0o644), b"a"),
        (
            header("./usr/lib/x", tar::EntryType::Regular, 1, 0o644),
            b"b",
        ),
    ]);
    let e = layer_of_bytes(&deb_with_data(&data)).unwrap_err();
    assert_eq!(e.code, Code::Conflict, "{e}");
    assert!(e.to_string().contains("`/lib/x` and `/usr/lib/x`"), "{e}");
    // The same directory under both names is one directory, the /usr one's.
    let data = tar_of(&[
        (header("./lib/", tar::EntryType::Directory, 0, 0o700), b""),
        (
            header("./usr/lib/", tar::EntryType::Directory, 0, 0o755),
            b"",
        ),
    ]);
    let l = layer_of_bytes(&deb_with_data(&data)).unwrap();
    assert_eq!(find(&l, "usr/lib").mode, 0o755);
    // A package's own merged-/usr link is left to the base; another is refused.
    let mut link = header("./lib", tar::EntryType::Symlink, 0, 0o777);
    link.set_link_name("usr/lib").unwrap();
    link.set_cksum();
    let l = layer_of_bytes(&deb_with_data(&tar_of(&[(link, b"")]))).unwrap();
    assert!(
        l.entries
            .iter()
            .all(|e| e.path != "lib" && e.path != "usr/lib")
    );
    let mut link = header("./lib", tar::EntryType::Symlink, 0, 0o777);
    link.set_link_name("/opt/lib").unwrap();
    link.set_cksum();
    let e = layer_of_bytes(&deb_with_data(&tar_of(&[(link, b"")]))).unwrap_err();
    assert_eq!(e.code, Code::Conflict, "{e}");
}

#[test]
fn moved_relative_links_keep_their_meaning() {
    // Unchanged when the target means the same from /usr.
    assert_eq!(moved_link_target("lib/a/b", "usr/lib/a/b", "c"), "c");
    assert_eq!(
        moved_link_target("lib64/ld", "usr/lib64/ld", "../lib/x/ld"),
        "../lib/x/ld"
    );
    assert_eq!(moved_link_target("lib/x", "usr/lib/x", "/lib/y"), "/lib/y");
    // `../usr/bin/x` from /bin is /usr/bin/x; from /usr/bin it would be
    // /usr/usr/bin/x.
    assert_eq!(moved_link_target("bin/a", "usr/bin/a", "../usr/bin/x"), "x");
    assert_eq!(
        moved_link_target("sbin/a", "usr/sbin/a", "../usr/lib/b"),
        "../lib/b"
    );
    // Climbing past the root stays at the root.
    assert_eq!(
        moved_link_target("bin/a", "usr/bin/a", "../../../etc/x"),
        "../../../etc/x"
    );
    assert_eq!(
        moved_link_target("bin/a", "usr/bin/a", "../etc/x"),
        "../../etc/x"
    );
}

#[test]
fn status_paragraph_puts_status_after_package() {
    assert_eq!(
        status_paragraph("Version: 1\nPackage: p\nArchitecture: all\n"),
        "Version: 1\nPackage: p\nStatus: install ok installed\nArchitecture: all\n"
    );
    assert_eq!(
        status_paragraph("Package: p\n"),
        "Package: p\nStatus: install ok installed\n"
    );
}

#[test]
fn merged_usr_links_are_the_debian_ones() {
    let links: Vec<(String, EntryData)> = merged_usr_links()
        .into_iter()
        .map(|e| (e.path, e.data))
        .collect();
    assert_eq!(
        links,
        ["bin", "lib", "lib64", "sbin"]
            .map(|d| (d.to_string(), EntryData::Symlink(format!("usr/{d}"))))
            .to_vec()
    );
    assert!(merged_usr_link("lib32").is_some());
    assert!(merged_usr_link("etc").is_none());
    assert_eq!(merged_path("lib/x").as_deref(), Some("usr/lib/x"));
    assert_eq!(merged_path("libexec/x"), None);
    assert_eq!(merged_path("usr/lib/x"), None);
}

// ---------------------------------------------------------------------------
// Real Debian 12 packages.

#[test]
fn real_libc6() {
    let l = layer_of(&real_deb("libc6_")).unwrap();
    assert_eq!(l.control.package, "libc6");
    assert_eq!(l.data_compression, ".xz");
    let libc = find(&l, "usr/lib/x86_64-linux-gnu/libc.so.6");
    assert!(bytes(libc).starts_with(b"\x7fELF"));
    assert_eq!(libc.mode, 0o755);
    // The ELF interpreter, reached through the base's /lib64 link.
    let ld = find(&l, "usr/lib64/ld-linux-x86-64.so.2");
    assert_eq!(
        ld.data,
        EntryData::Symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into())
    );
    assert!(
        bytes(find(&l, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")).starts_with(b"\x7fELF")
    );
    for e in &l.entries {
        let top = e.path.split('/').next().unwrap();
        assert!(!ALIASED_DIRS.contains(&top), "`{}` outside /usr", e.path);
    }
    assert!(l.aliased.contains("lib") && l.aliased.contains("lib64"));
    let status = std::str::from_utf8(bytes(find(&l, "var/lib/dpkg/status.d/libc6"))).unwrap();
    assert!(
        status.starts_with("Package: libc6\nStatus: install ok installed\n"),
        "{status}"
    );
    assert!(status.contains(&format!("\nVersion: {}\n", l.control.version)));
    assert!(status.contains("\nArchitecture: amd64\n"));
    assert!(status.contains("\nSource: glibc\n"));
    assert!(status.contains("\nMaintainer: "));
    assert!(status.contains("\nDepends: libgcc-s1"));
    let sums = std::str::from_utf8(bytes(find(&l, "var/lib/dpkg/status.d/libc6.md5sums"))).unwrap();
    assert!(
        sums.contains("  usr/lib/x86_64-linux-gnu/libc.so.6\n"),
        "{sums}"
    );
    assert!(!sums.contains("  lib/"), "md5sums paths are merged: {sums}");
}

#[test]
fn real_tzdata() {
    let l = layer_of(&real_deb("tzdata_")).unwrap();
    assert_eq!(l.control.package, "tzdata");
    assert_eq!(l.control.architecture, "all");
    let berlin = find(&l, "usr/share/zoneinfo/Europe/Berlin");
    assert!(bytes(berlin).starts_with(b"TZif"));
    let status = std::str::from_utf8(bytes(find(&l, "var/lib/dpkg/status.d/tzdata"))).unwrap();
    assert!(status.starts_with("Package: tzdata\nStatus: install ok installed\n"));
    assert!(l.aliased.is_empty());
}

#[test]
fn real_packages_all_read() {
    // Every real package of the test set makes a valid layer.
    let dir = test_debs();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    names.sort();
    assert!(names.len() > 10);
    for p in names {
        let l = layer_of(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(layer::normalize(l.entries.clone()).unwrap(), l.entries);
    }
}

#[test]
fn same_package_same_layer_in_two_stores() {
    let deb = real_deb("libc6_");
    for c in [Compression::Gzip, Compression::Zstd] {
        let mut outs = Vec::new();
        for _ in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let cas = Cas::open(dir.path()).unwrap();
            let l = layer_of(&deb).unwrap();
            let out = write_layer(
                &l.entries,
                &LayerFormat::default_for(c),
                1_700_000_000,
                &cas,
            )
            .unwrap();
            assert!(cas.verify(&out.digest, Some(out.size)).unwrap());
            outs.push((out.digest, out.diff_id, out.size));
        }
        assert_eq!(outs[0], outs[1], "{c:?}");
    }
}

#[test]
fn from_cas_verifies_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(dir.path()).unwrap();
    let bytes = std::fs::read(real_deb("tzdata_")).unwrap();
    let (digest, _) = cas.put_bytes(&bytes).unwrap();
    let l = package_layer_from_cas(&cas, &digest, "tzdata.deb", &Limits::default()).unwrap();
    assert_eq!(l.control.package, "tzdata");
    // A damaged stored copy (one byte after the data member) is refused.
    let path = cas.blob_path(&digest);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut damaged = bytes.clone();
    damaged.push(b'\n');
    std::fs::write(&path, &damaged).unwrap();
    let e = package_layer_from_cas(&cas, &digest, "tzdata.deb", &Limits::default()).unwrap_err();
    assert_eq!(e.code, Code::Mismatch, "{e}");
    assert!(e.to_string().contains(&digest.to_string()), "{e}");
}

/// The written layer, unpacked by GNU tar (an independent reader), holds the
/// package's files with their bytes and modes, merged /usr included.
#[test]
fn written_layer_unpacks_with_gnu_tar() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cache")).unwrap();
    let l = layer_of(&crafted_deb(dir.path(), "xz")).unwrap();
    let out = write_layer(
        &l.entries,
        &LayerFormat::default_for(Compression::Gzip),
        0,
        &cas,
    )
    .unwrap();
    let root = dir.path().join("unpacked");
    std::fs::create_dir(&root).unwrap();
    let status = Command::new("tar")
        .args(["-xzpf"])
        .arg(cas.blob_path(&out.digest))
        .arg("--numeric-owner")
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    let meta = std::fs::symlink_metadata(root.join("usr/bin/tool")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        std::fs::read(root.join("usr/bin/tool-hard")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    assert_eq!(
        std::fs::read_link(root.join("usr/lib64/ld-fake.so.2")).unwrap(),
        Path::new("../lib/x86_64-linux-gnu/libfoo.so.1")
    );
    // Resolved through the layer's own paths, the link reaches the library.
    assert_eq!(
        std::fs::read(root.join("usr/lib64/ld-fake.so.2")).unwrap(),
        b"\x7fELF fake library"
    );
    assert!(!root.join("lib").exists() && !root.join("lib64").exists());
    assert!(root.join("var/lib/dpkg/status.d/crafted").is_file());
    let conf = std::fs::metadata(root.join("etc/crafted.conf")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&conf),
            conf.permissions().mode() & 0o7777
        ),
        (1234, 0o640)
    );
}

/// libc6's layer on a base layer of the merged-/usr links, as an OCI image
/// unpacked by umoci: the ELF interpreter at `/lib64/ld-linux-x86-64.so.2`
/// (two links away, through the base's `/lib64` and `/lib`) runs in a chroot.
#[test]
fn libc6_on_merged_usr_base_unpacks_with_umoci_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cache")).unwrap();
    let format = LayerFormat::default_for(Compression::Gzip);
    let base = layer::normalize(merged_usr_links()).unwrap();
    let libc = layer_of(&real_deb("libc6_")).unwrap();
    let layers = [
        write_layer(&base, &format, 0, &cas).unwrap(),
        write_layer(&libc.entries, &format, 0, &cas).unwrap(),
    ];
    let layout = dir.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of_bytes(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        serde_json::json!({"digest": d.to_string(), "size": bytes.len()})
    };
    for l in &layers {
        std::fs::copy(cas.blob_path(&l.digest), blobs.join(l.digest.hex())).unwrap();
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
    });
    let mut config_desc = put(config.to_string().as_bytes());
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let mut manifest_desc = put(manifest.to_string().as_bytes());
    manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    manifest_desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();

    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_link(rootfs.join("lib64")).unwrap(),
        Path::new("usr/lib64")
    );
    assert!(
        std::fs::symlink_metadata(rootfs.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "/lib is still the base's symlink"
    );
    let out = Command::new("chroot")
        .arg(&rootfs)
        .args(["/lib64/ld-linux-x86-64.so.2", "--version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("GLIBC 2.36"), "{text}");
}
