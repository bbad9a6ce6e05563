//! The remote cache over Bazel's HTTP cache protocol, against a real nginx
//! (WebDAV PUT) on loopback: runners share it, damage on the server is found
//! and repaired, read-only runs send no write, a dead or dying server only
//! makes a build slower.

use crate::support::nginx::{Nginx, NginxOpts};
use crate::support::*;

fn runner() -> Ws {
    Ws::copy_of(&spec_examples())
}

/// Builds with JSON events against `url` (plus `extra` flags), never through a
/// proxy: `(events, stderr)`.
fn build_with(ws: &Ws, url: &str, extra: &[&str]) -> (Events, String) {
    let mut args = vec!["build", "--message-format", "json", "--remote-cache", url];
    args.extend_from_slice(extra);
    let out = ws
        .cmd(&args)
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imgc {args:?} failed: {}\n{}",
        out.status,
        stderr(&out)
    );
    (Events::parse(&out.stdout), stderr(&out))
}

fn warnings(e: &Events) -> Vec<String> {
    e.0.iter()
        .filter(|v| v["event"] == "warning")
        .map(|v| v["message"].as_str().unwrap().to_string())
        .collect()
}

fn writes(server: &Nginx) -> Vec<String> {
    server
        .access_log()
        .into_iter()
        .filter(|l| l.method != "GET" && l.method != "HEAD")
        .map(|l| format!("{} {}", l.method, l.uri))
        .collect()
}

#[test]
fn a_second_runner_builds_nothing_over_http() {
    let server = Nginx::start(NginxOpts::default());
    let (a, b) = (runner(), runner());
    let (first, _) = build_with(&a, &server.url(), &[]);
    assert!(first.ran().len() > 10);
    assert!(summary_count(&first, "uploaded_bytes") > 0);
    let puts = writes(&server).len();
    assert!(puts > 0);

    let (second, _) = build_with(&b, &server.url(), &[]);
    assert_eq!(
        second.ran(),
        Vec::<String>::new(),
        "the second runner built"
    );
    assert_eq!(
        summary_count(&second, "remote_hits") as usize,
        first.ran().len()
    );
    assert!(summary_count(&second, "downloaded_bytes") > 0);
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));
    assert_eq!(writes(&server).len(), puts, "the second runner wrote");
    assert_blobs_hash_to_their_names(&server.root().join("cas"));
}

#[test]
fn flipped_and_truncated_blobs_on_the_server_are_rebuilt_and_repaired() {
    let server = Nginx::start(NginxOpts::default());
    let (a, b) = (runner(), runner());
    let (first, _) = build_with(&a, &server.url(), &[]);
    let root = server.root();
    let (flipped_label, flipped) = largest_layer(&first, |hex| root.join("cas").join(hex));
    flip_byte(&flipped);
    // Another layer, truncated.
    let (truncated_label, truncated) = first
        .outputs_with_kind()
        .into_iter()
        .filter(|(l, (kind, _))| kind == "layer" && *l != flipped_label)
        .map(|(l, (_, d))| (l, root.join("cas").join(d.trim_start_matches("sha256:"))))
        .max_by_key(|(_, p)| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let bytes = std::fs::read(&truncated).unwrap();
    rewrite_read_only(&truncated, &bytes[..bytes.len() / 2]);

    let (second, _) = build_with(&b, &server.url(), &[]);
    let mut expected = vec![flipped_label, truncated_label];
    expected.sort();
    assert_eq!(
        second.ran(),
        expected,
        "only the damaged layers are rebuilt"
    );
    assert_eq!(warnings(&second).len(), 2, "{:?}", warnings(&second));
    assert_same_tree(&a.path("imgc-out"), &b.path("imgc-out"));
    // Uploaded again over the damaged copies: the next runner fetches everything.
    assert_blobs_hash_to_their_names(&root.join("cas"));
    let c = runner();
    let (third, _) = build_with(&c, &server.url(), &[]);
    assert_eq!(third.ran(), Vec::<String>::new());
    assert_same_tree(&a.path("imgc-out"), &c.path("imgc-out"));
}

#[test]
fn a_read_only_run_sends_no_write_to_the_server() {
    let server = Nginx::start(NginxOpts::default());
    let (a, b) = (runner(), runner());
    build_with(&a, &server.url(), &[]);
    let before = writes(&server);
    let banner = b.path("services/api/banner.txt");
    let mut bytes = std::fs::read(&banner).unwrap();
    bytes.extend_from_slice(b"changed\n");
    std::fs::write(&banner, bytes).unwrap();
    // A damaged blob too: a read-write run would upload its rebuild.
    let (first_layer, damaged) =
        largest_layer(&a.build(&[]), |hex| server.root().join("cas").join(hex));
    flip_byte(&damaged);

    let (e, _) = build_with(&b, &server.url(), &["--remote-cache-mode", "read"]);
    assert!(e.ran().contains(&first_layer));
    assert!(summary_count(&e, "remote_hits") > 0);
    assert_eq!(summary_count(&e, "uploaded_bytes"), 0);
    assert_eq!(
        writes(&server),
        before,
        "a read-only build wrote to the server"
    );
}

#[test]
fn basic_auth_from_the_url_or_a_file_works_and_is_never_printed() {
    let password = "s3cr3t-Pa55";
    let server = Nginx::start(NginxOpts::with_basic_auth("ci", password));
    let (a, b, c) = (runner(), runner(), runner());

    // Wrong credentials: the server refuses, the build goes on without it.
    let wrong = server.url_with_auth("ci", "nope");
    let (e, err) = build_with(&a, &wrong, &[]);
    assert_eq!(summary_count(&e, "remote_hits"), 0);
    let w = warnings(&e);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("401"), "{w:?}");
    assert!(!err.contains("nope"));

    let (e, err) = build_with(&a, &server.url_with_auth("ci", password), &[]);
    assert!(
        summary_count(&e, "uploaded_bytes") > 0,
        "{:?}",
        warnings(&e)
    );
    let stdout = serde_json::to_string(&e.0).unwrap();
    assert!(!stdout.contains(password) && !err.contains(password));

    // From a file (which wins over the URL's).
    let creds = tempfile::tempdir().unwrap();
    let file = creds.path().join("credentials");
    std::fs::write(&file, format!("ci:{password}\n")).unwrap();
    let (e, err) = build_with(
        &b,
        &server.url_with_auth("ci", "stale"),
        &["--remote-cache-credentials", file.to_str().unwrap()],
    );
    assert_eq!(e.ran(), Vec::<String>::new(), "{:?}", warnings(&e));
    assert!(!err.contains(password));

    // Without credentials: refused, with one warning, and built locally.
    let (e, _) = build_with(&c, &server.url(), &[]);
    assert_eq!(summary_count(&e, "remote_hits"), 0);
    assert_eq!(warnings(&e).len(), 1);
    assert_same_tree(&b.path("imgc-out"), &c.path("imgc-out"));
}

#[test]
fn a_dead_server_makes_the_build_slower_never_failed() {
    let mut server = Nginx::start(NginxOpts::default());
    let url = server.url();
    server.kill();
    let (a, reference) = (runner(), runner());
    let (e, _) = build_with(&a, &url, &[]);
    let w = warnings(&e);
    assert_eq!(w.len(), 1, "one warning, not one per action: {w:?}");
    assert!(w[0].contains("building without it"), "{w:?}");
    reference.build(&["--no-remote-cache"]);
    assert_same_tree(&reference.path("imgc-out"), &a.path("imgc-out"));
}

/// The server dies between the first remote hits and the first upload: the
/// build switches the remote off (one warning) and finishes, correctly. The
/// kill is placed by the engine's before-run hook, right before the image
/// `//services/api:api` runs: that can only be after its base, `//bases:runtime`,
/// came from the server.
#[test]
fn the_server_killed_mid_build_leaves_a_correct_build() {
    use imgc::commands::{Loaded, build};
    let server = std::sync::Arc::new(std::sync::Mutex::new(Nginx::start(NginxOpts::default())));
    let url = server.lock().unwrap().url();
    // Another runner filled the remote with the bases only.
    let filler = runner();
    build_with(&filler, &url, &["//bases/..."]);

    let ws = runner();
    let mut ctx = context(&ws);
    ctx.remote.remote_cache = Some(url.clone());
    let mut loaded = Loaded::load(&ctx).unwrap();
    let selected = loaded.select(&[]).unwrap();
    let mut settings = build::settings(
        &ctx,
        &loaded,
        Some(2),
        false,
        imgc::commands::build::Run::Build,
    )
    .unwrap();
    let killer = server.clone();
    settings.before_run = Some(std::sync::Arc::new(move |label| {
        if label.to_string() == "//services/api:api" {
            killer.lock().unwrap().kill();
        }
    }));
    let mut reporter =
        imgc::report::Reporter::new(false, &loaded.ws.root, loaded.ws.sources.clone()).quiet();
    let summary = build::run_engine(&ctx, &mut loaded, &selected, settings, &mut reporter).unwrap();
    assert_eq!(summary.failed, 0);
    assert!(
        summary.remote_hits > 0,
        "nothing came from the server before it died"
    );
    assert!(summary.ran > 0);
    assert_eq!(
        summary.remote_warnings.len(),
        1,
        "{:?}",
        summary.remote_warnings
    );
    assert!(!server.lock().unwrap().is_running());

    let reference = runner();
    reference.build(&["--no-remote-cache"]);
    assert_same_tree(&reference.path("imgc-out"), &ws.path("imgc-out"));
}
