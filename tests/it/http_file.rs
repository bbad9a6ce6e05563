//! `http-file` targets end to end: downloads from a python3 `http.server` on
//! 127.0.0.1 that each test starts and stops by its PID.

use crate::support::*;
use imgc::hash::Digest;
use std::io::Read;

const TOOL_LEN: usize = 300_000;

fn tool_bytes() -> Vec<u8> {
    semi_random(TOOL_LEN, 7)
}

fn hex(bytes: &[u8]) -> String {
    Digest::of_bytes(bytes).hex()
}

/// A workspace with one http-file and an image holding it in a layer at
/// `/usr/local/bin/tool` (named by the target, copied into a directory), and
/// at `/opt/tool.bin` with the copy's own mode.
fn ws_with(url: &str, sha256: &str, extra: &str) -> Ws {
    Ws::new(&[
        ("imgc.kdl", "workspace {}\n"),
        (
            "svc/BUILD.kdl",
            &format!(
                "http-file \"tool\" url=\"{url}\" sha256=\"{sha256}\" {extra}\n\
                 image \"app\" {{\n    from \"scratch\"\n    layer {{\n        copy \":tool\" to=\"/usr/local/bin/\"\n        copy \":tool\" to=\"/opt/tool.bin\" mode=\"0600\"\n    }}\n}}\n"
            ),
        ),
    ])
}

fn set_spec(ws: &Ws, url: &str, sha256: &str, extra: &str) {
    let fresh = ws_with(url, sha256, extra);
    ws.write(
        "svc/BUILD.kdl",
        &std::fs::read_to_string(fresh.path("svc/BUILD.kdl")).unwrap(),
    );
}

/// Every file of the image's (only) layer: path → (mode, bytes).
fn layer_files(ws: &Ws) -> std::collections::BTreeMap<String, (u32, Vec<u8>)> {
    let mut tar = last_layer_tar(&ws.layout("svc", "app"));
    let mut out = std::collections::BTreeMap::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        out.insert(path, (mode, bytes));
    }
    out
}

fn failing_build(ws: &Ws) -> String {
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn downloads_once_then_builds_offline_and_a_mirror_rebuilds_nothing() {
    let mut server = FileServer::start();
    let bytes = tool_bytes();
    server.put("dl/tool", &bytes);
    let ws = ws_with(
        &server.url("dl/tool"),
        &hex(&bytes),
        &format!("size={TOOL_LEN} executable=#true"),
    );

    let first = ws.build(&[]);
    assert_eq!(first.ran(), ["//svc:app", "//svc:app~layer0", "//svc:tool"]);
    let tool = first
        .0
        .iter()
        .find(|e| e["event"] == "finished" && e["label"] == "//svc:tool")
        .unwrap();
    assert_eq!(tool["kind"], "http-file");
    assert_eq!(tool["size_bytes"], TOOL_LEN as u64);
    assert_eq!(tool["digest"], format!("sha256:{}", hex(&bytes)));
    let files = layer_files(&ws);
    assert_eq!(files["usr/local/bin/tool"], (0o755, bytes.clone()));
    assert_eq!(files["opt/tool.bin"], (0o600, bytes.clone()));
    let image = first.images()["//svc:app"].clone();

    // Offline: the server is gone, and nothing needs it.
    server.stop();
    let second = ws.build(&[]);
    assert!(second.ran().is_empty(), "{:?}", second.ran());
    assert_eq!(second.images()["//svc:app"], image);

    // A mirror (here: a URL nothing answers at) with the same sha256 rebuilds
    // nothing: the URL is where to fetch, not what.
    set_spec(
        &ws,
        "https://mirror.invalid/elsewhere/tool",
        &hex(&bytes),
        &format!("size={TOOL_LEN} executable=#true"),
    );
    let moved = ws.build(&[]);
    assert!(moved.ran().is_empty(), "{:?}", moved.ran());
    assert_eq!(moved.images()["//svc:app"], image);

    // `explain` keys it without the network.
    let explained = stdout(&ws.ok(&["explain", "//svc:tool"]));
    assert_eq!(
        explained.trim(),
        format!("//svc:tool: up to date (sha256:{})", hex(&bytes))
    );
}

#[test]
fn a_wrong_sha256_fails_with_the_actual_one_and_caches_nothing() {
    let server = FileServer::start();
    let bytes = tool_bytes();
    server.put("tool", &bytes);
    let wrong = "ab".repeat(32);
    let ws = ws_with(&server.url("tool"), &wrong, "");

    let err = failing_build(&ws);
    let actual = hex(&bytes);
    assert!(err.contains("E073"), "{err}");
    assert!(err.contains(&server.url("tool")), "{err}");
    assert!(err.contains(&wrong), "the expected sha256: {err}");
    assert!(
        err.contains(&format!("sha256=\"{actual}\"")),
        "the actual sha256, ready to paste: {err}"
    );
    assert!(!cas_holds(&ws, &actual), "nothing may be stored");
    assert!(!cas_holds(&ws, &wrong));
    let tmp: Vec<_> = std::fs::read_dir(ws.cache.path().join("v1/tmp"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    // A second try downloads again (nothing was cached) and fails the same way.
    assert!(failing_build(&ws).contains("E073"));

    // With the hash the error printed, it builds.
    set_spec(&ws, &server.url("tool"), &actual, "");
    let fixed = ws.build(&[]);
    assert!(fixed.ran().contains(&"//svc:tool".to_string()));
    assert!(cas_holds(&ws, &actual));
    let files = layer_files(&ws);
    // Not executable: 0644 by default.
    assert_eq!(files["usr/local/bin/tool"], (0o644, bytes));
}

#[test]
fn other_bytes_at_the_same_url_are_refused() {
    let server = FileServer::start();
    let bytes = tool_bytes();
    server.put("tool", &bytes);
    let ws = ws_with(&server.url("tool"), &hex(&bytes), "");
    ws.build(&[]);

    // The server now answers with other bytes (same length): a fresh cache
    // must not take them.
    let mut tampered = bytes.clone();
    tampered[TOOL_LEN / 2] ^= 0xff;
    server.put("tool", &tampered);
    let fresh = ws_with(&server.url("tool"), &hex(&bytes), "");
    let err = failing_build(&fresh);
    assert!(err.contains("E073"), "{err}");
    assert!(err.contains(&hex(&tampered)), "{err}");
    assert!(!cas_holds(&fresh, &hex(&tampered)));
    assert!(!cas_holds(&fresh, &hex(&bytes)));

    // The first workspace still has the pinned bytes: it rebuilds nothing.
    let again = ws.build(&[]);
    assert!(again.ran().is_empty(), "{:?}", again.ran());
}

#[test]
fn a_wrong_size_or_a_longer_body_is_refused() {
    let server = FileServer::start();
    let bytes = tool_bytes();
    server.put("tool", &bytes);
    // Pinned one byte short: the body goes beyond it and is cut off.
    let short = ws_with(
        &server.url("tool"),
        &hex(&bytes),
        &format!("size={}", TOOL_LEN - 1),
    );
    let err = failing_build(&short);
    assert!(err.contains("E073"), "{err}");
    assert!(err.contains("more than the pinned"), "{err}");
    // Pinned one byte long: the body ends early.
    let long = ws_with(
        &server.url("tool"),
        &hex(&bytes),
        &format!("size={}", TOOL_LEN + 1),
    );
    let err = failing_build(&long);
    assert!(err.contains("E073"), "{err}");
    assert!(err.contains(&format!("sent {TOOL_LEN} bytes")), "{err}");
    assert!(!cas_holds(&long, &hex(&bytes)));
}

#[test]
fn a_404_names_the_url() {
    let server = FileServer::start();
    let ws = ws_with(&server.url("nothing/here"), &"cd".repeat(32), "");
    let err = failing_build(&ws);
    assert!(err.contains("E072"), "{err}");
    assert!(err.contains(&server.url("nothing/here")), "{err}");
    assert!(err.contains("HTTP 404"), "{err}");
    // Not retried: a 404 is an answer.
    assert!(!err.contains("attempts"), "{err}");
}

#[test]
fn a_dry_run_plans_the_download_without_the_network() {
    let ws = ws_with("http://127.0.0.1:9/never", &"ef".repeat(32), "size=10");
    let out = ws.ok(&["build", "--dry-run"]);
    let plan = stdout(&out);
    assert!(plan.contains("download: 1 file"), "{plan}");
    assert!(plan.contains("//svc:tool: never built"), "{plan}");
    let explained = stdout(&ws.ok(&["explain", "//svc:tool"]));
    assert_eq!(explained.trim(), "//svc:tool: would download: never built");
}

/// A remote cache serves a downloaded file like any other output: a second
/// machine (a fresh local cache) builds with the server gone.
#[test]
fn the_remote_cache_serves_downloads() {
    let mut server = FileServer::start();
    let bytes = tool_bytes();
    server.put("tool", &bytes);
    let remote = tempfile::tempdir().unwrap();
    let flag = remote.path().to_str().unwrap().to_string();
    let a = ws_with(&server.url("tool"), &hex(&bytes), "");
    let first = a.build(&["--remote-cache", &flag]);
    assert!(first.ran().contains(&"//svc:tool".to_string()));
    server.stop();

    let b = ws_with(&server.url("tool"), &hex(&bytes), "");
    let second = b.build(&["--remote-cache", &flag]);
    assert!(second.ran().is_empty(), "{:?}", second.ran());
    assert_eq!(second.images(), first.images());
    assert!(
        cas_holds(&b, &hex(&bytes)),
        "the file was fetched from the remote"
    );
}
