//! Nothing outside the workspace is ever read, even when the workspace changes
//! under a running build. Each test plays the attacker deterministically:
//! the engine's `before_run` hook swaps a directory of the workspace for a
//! symlink to a directory outside it after the layer was keyed and before it
//! is written, and inotify on the outside directory tells whether imgc opened
//! or read anything there.

use crate::support::*;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An inotify watch on one directory for opens and reads of it and of the
/// files in it.
struct Watch {
    fd: std::os::fd::OwnedFd,
}

impl Watch {
    fn new(dir: &Path) -> Watch {
        use std::os::fd::FromRawFd;
        // SAFETY: inotify_init1 returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            raw >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a descriptor we own from here on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        let wd =
            unsafe { libc::inotify_add_watch(raw, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS) };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        Watch { fd }
    }

    /// The events since the watch began: `(mask, name)`, name empty for the
    /// directory itself.
    fn events(&self) -> Vec<(u32, String)> {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break; // EAGAIN: nothing (more) happened
            }
            let mut at = 0usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= n as usize {
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = String::from_utf8_lossy(&buf[at + head..at + head + len])
                    .trim_end_matches('\0')
                    .to_string();
                out.push((mask, name));
                at += head + len;
            }
        }
        out
    }
}

/// `pkg` with a layer `//pkg:l` made of `layer_body`, in an image `//pkg:img`.
fn ws_with_layer(layer_body: &str) -> Ws {
    Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "pkg/BUILD.kdl",
            &format!(
                "layer \"l\" {{\n    {layer_body}\n}}\nimage \"img\" {{\n    from \"scratch\"\n    layers \":l\"\n}}\n"
            ),
        ),
    ])
}

/// Every file under `dir`, decompressed where it is a gzip or zstd blob.
fn contents_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        let mut plain = Vec::new();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut plain)
                .unwrap();
        } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            plain = zstd::stream::decode_all(&bytes[..]).unwrap();
        }
        out.push((e.path().to_path_buf(), bytes));
        if !plain.is_empty() {
            out.push((e.path().to_path_buf(), plain));
        }
    }
    out
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The body of the one layer of `//pkg:img`.
fn layer_body(ws: &Ws) -> Vec<(String, Vec<u8>)> {
    last_layer_tar(&ws.layout("pkg", "img"))
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            (String::from_utf8(e.path_bytes().to_vec()).unwrap(), body)
        })
        .collect()
}

/// Before: the layer writer opened each source by its absolute path, so a
/// parent directory swapped for a symlink after the layer was keyed led it
/// outside the workspace: it read the outside file into the tar (and, where
/// the outside file held the keyed bytes, built and cached the layer from it).
/// Now every source is opened beneath the workspace root's descriptor: the
/// layer fails naming the file, nothing outside is opened or read, and no
/// outside byte reaches any blob. For a source below a directory, a copied
/// directory and a glob; a link by absolute and by relative path; an outside
/// file with the keyed bytes and one with other bytes of the same size.
#[test]
fn a_directory_swapped_for_a_link_out_of_the_workspace_after_keying_is_never_read() {
    let inside: &[u8] = b"inside bytes, keyed!\n";
    let secret: &[u8] = b"OUTSIDE SECRET BYTES\n";
    assert_eq!(inside.len(), secret.len());
    for (body, swapped) in [
        (r#"copy "sub/data.bin" to="/data.bin""#, "sub"),
        (r#"copy "d" to="/d""#, "d"),
        (r#"copy "g/*.bin" to="/g/""#, "g"),
    ] {
        for outside_bytes in [inside, secret] {
            for relative in [false, true] {
                let ws = ws_with_layer(body);
                let at = ws.path(&format!("pkg/{swapped}"));
                ws.write_bytes(&format!("pkg/{swapped}/data.bin"), inside);
                // A directory outside, beside the workspace.
                let outside = tempfile::tempdir().unwrap();
                std::fs::write(outside.path().join("data.bin"), outside_bytes).unwrap();
                let target = if relative {
                    let root = ws.root().canonicalize().unwrap();
                    let out = outside.path().canonicalize().unwrap();
                    assert_eq!(root.parent(), out.parent());
                    Path::new("../..").join(out.file_name().unwrap())
                } else {
                    outside.path().to_path_buf()
                };
                let case = format!(
                    "{body}, {} link, outside bytes {:?}",
                    if relative { "relative" } else { "absolute" },
                    String::from_utf8_lossy(outside_bytes)
                );
                let watch = Watch::new(outside.path());
                let (hook_at, hook_target) = (at.clone(), target.clone());
                let failures = build_with_hook(&ws, &[], move |label| {
                    if label.to_string() == "//pkg:l" {
                        let mut aside = hook_at.clone().into_os_string();
                        aside.push(".orig");
                        std::fs::rename(&hook_at, &aside).unwrap();
                        std::os::unix::fs::symlink(&hook_target, &hook_at).unwrap();
                    }
                });
                let events = watch.events();
                assert!(
                    events.is_empty(),
                    "{case}: imgc opened or read outside the workspace: {events:?}"
                );
                let failure = failures
                    .get("//pkg:l")
                    .unwrap_or_else(|| panic!("{case}: the layer must fail: {failures:?}"));
                assert_eq!(
                    failure,
                    &format!(
                        "layer `//pkg:l`: `pkg/{swapped}/data.bin` changed while building the \
                         layer: it now resolves outside the workspace through a symbolic link"
                    ),
                    "{case}"
                );
                assert!(!ws.layout("pkg", "img").exists(), "{case}");
                for (path, bytes) in contents_below(ws.cache.path()) {
                    assert!(
                        !holds(&bytes, secret),
                        "{case}: outside bytes in `{}`",
                        path.display()
                    );
                }

                // Put back: the layer is built from the inside file.
                std::fs::remove_file(&at).unwrap();
                let mut aside = at.clone().into_os_string();
                aside.push(".orig");
                std::fs::rename(&aside, &at).unwrap();
                let ev = ws.build(&[]);
                assert_eq!(ev.ran(), ["//pkg:img", "//pkg:l"], "{case}");
                let files: Vec<(String, Vec<u8>)> = layer_body(&ws)
                    .into_iter()
                    .filter(|(p, _)| !p.ends_with('/'))
                    .collect();
                assert_eq!(files.len(), 1, "{case}: {files:?}");
                assert_eq!(files[0].1, inside, "{case}");
                assert!(watch.events().is_empty(), "{case}");
            }
        }
    }
}

/// Before: a source was first looked up through its path (`lstat`, links in
/// its parents followed wherever they led) and only then checked for links
/// leaving the workspace, so a source behind such a link that does not exist
/// was reported missing: a build told whether a file exists outside the
/// workspace. Now the lookup itself stops at the link: refused (E008) whether
/// or not the file exists there.
#[test]
fn a_source_behind_a_link_out_of_the_workspace_is_refused_without_looking_outside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("there.bin"), b"outside\n").unwrap();
    for name in ["there.bin", "missing.bin"] {
        let ws = ws_with_layer(&format!(r#"copy "sub/{name}" to="/x""#));
        std::os::unix::fs::symlink(outside.path(), ws.path("pkg/sub")).unwrap();
        let watch = Watch::new(outside.path());
        let out = ws.run(&["build"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("E008"), "{name}: {err}");
        assert!(
            err.contains(&format!(
                "source `pkg/sub/{name}` resolves outside the workspace through a symlink"
            )),
            "{name}: {err}"
        );
        assert_eq!(watch.events(), [], "{name}");
    }
}

/// A tar of `(name, kind, link target)` entries, directories and symlinks only.
fn layer_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, target) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_path(name).unwrap();
        if !target.is_empty() {
            h.set_link_name(target).unwrap();
        }
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Before: the E030 message printed the path a layer's entry lands on once
/// lower symlinks are followed, and that path comes from an imported layer
/// (a symlink's target, a directory's name) chosen by the archive's author:
/// terminal escape sequences reached the terminal as they were.
#[test]
fn stack_conflict_messages_escape_paths_from_imported_layers() {
    use tar::EntryType::{Directory, Symlink};
    let evil = "evil\u{1b}]2;owned\u{7}\u{1b}[2J";
    let layer = layer_tar(&[
        (&format!("{evil}/"), Directory, ""),
        (&format!("{evil}/x/"), Directory, ""),
        ("lib", Symlink, evil),
    ]);
    let diff = imgc::hash::Digest::of_bytes(&layer);
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]}}))
    .unwrap();
    let cname = format!("{}.json", imgc::hash::Digest::of_bytes(&config).hex());
    let manifest =
        serde_json::to_vec(&serde_json::json!([{"Config": cname, "Layers": ["l/layer.tar"]}]))
            .unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("l/layer.tar", &layer[..]),
        (&cname, &config),
        ("manifest.json", &manifest),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        archive.append_data(&mut h, name, data).unwrap();
    }
    let ws = Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "pkg/BUILD.kdl",
            "import \"up\" {\n    docker-archive \"img.tar\"\n}\n\
             layer \"x\" {\n    text \"/lib/x\" \"a file\"\n}\n\
             image \"img\" {\n    from \":up\"\n    layers \":x\"\n}\n",
        ),
    ]);
    ws.write_bytes("pkg/img.tar", &archive.into_inner().unwrap());
    let out = ws.run(&["build"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("E030"), "{err}");
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{7}'),
        "raw control characters: {err:?}"
    );
    assert!(
        err.contains(
            "(at `/evil\\u{1b}]2;owned\\u{7}\\u{1b}[2J/x` once lower symlinks are followed)"
        ),
        "{err}"
    );
}
