//! The nginx harness the HTTP remote-cache tests run against
//! (`support::nginx`), proved with curl alone: independent of imgc's own
//! remote-cache code.

use crate::support::*;
use sha2::{Digest, Sha256};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;

/// Runs curl (never through a proxy) with `args`; the HTTP status and the
/// response body (the headers for a HEAD).
fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    assert!(
        have("curl"),
        "`curl` is not installed: the README's test command (scripts/test) installs it"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let body = out_dir.path().join("body");
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "60", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    (status, std::fs::read(&body).unwrap_or_default())
}

fn put(url: &str, file: &Path) -> u16 {
    curl(&["-T", file.to_str().unwrap(), url]).0
}

fn get(url: &str) -> (u16, Vec<u8>) {
    curl(&[url])
}

fn head(url: &str) -> u16 {
    curl(&["-I", url]).0
}

/// Bytes like a layer blob: every byte value, more than nginx keeps in memory
/// (so the body goes through its temp file), not a multiple of a block size.
fn blob() -> (Vec<u8>, String) {
    let data: Vec<u8> = (0..300_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let hex = hex::encode(Sha256::digest(&data));
    (data, hex)
}

fn line(method: &str, uri: &str, status: u16, bytes: u64) -> LogLine {
    LogLine {
        method: method.into(),
        uri: uri.into(),
        status,
        bytes,
    }
}

fn refuses_connections(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Does a process with this PID exist (a zombie counts)?
fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn nginx_stores_a_put_body_and_serves_it_back_byte_identical() {
    let server = Nginx::start(NginxOpts::default());
    let (data, hex) = blob();
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), &data).unwrap();
    let url = format!("{}/cas/{hex}", server.url());
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    // A new key is created (201), with the directories above it.
    assert_eq!(put(&url, src.path()), 201, "{}", server.logs());
    let stored = server.root().join("cas").join(&hex);
    assert_eq!(std::fs::read(&stored).unwrap(), data, "stored bytes differ");
    let (status, body) = get(&url);
    assert_eq!(status, 200);
    assert!(body == data, "GET returned different bytes");
    assert_eq!(head(&url), 200);

    // Writing it again replaces it (nginx answers 204 then).
    assert_eq!(put(&url, src.path()), 204);
    assert_eq!(std::fs::read(&stored).unwrap(), data);

    let uri = format!("/cache/cas/{hex}");
    let log = server.access_log();
    let requests: Vec<(&str, &str, u16)> = log
        .iter()
        .map(|l| (l.method.as_str(), l.uri.as_str(), l.status))
        .collect();
    assert_eq!(
        requests,
        [
            ("PUT", uri.as_str(), 201),
            ("GET", &uri, 200),
            ("HEAD", &uri, 200),
            ("PUT", &uri, 204),
        ]
    );
    assert_eq!(log[1].bytes, data.len() as u64, "GET sent another length");
    assert_eq!(log[2].bytes, 0, "HEAD sent a body");
}

#[test]
fn nginx_serves_what_a_test_writes_or_flips_in_its_root() {
    let server = Nginx::start(NginxOpts::default());
    let (mut data, hex) = blob();
    let key = "0f".repeat(32);
    // Written straight into the root: `<url>/ac/<key>` is `root()/ac/<key>`.
    std::fs::create_dir_all(server.root().join("ac")).unwrap();
    std::fs::write(server.root().join("ac").join(&key), b"{\"entry\":1}").unwrap();
    assert_eq!(
        get(&format!("{}/ac/{key}", server.url())),
        (200, b"{\"entry\":1}".to_vec())
    );

    // A stored blob with one flipped byte is served flipped: what corruption
    // tests rely on.
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), &data).unwrap();
    let url = format!("{}/cas/{hex}", server.url());
    assert_eq!(put(&url, src.path()), 201);
    let stored = server.root().join("cas").join(&hex);
    data[1000] ^= 0x40;
    std::fs::write(&stored, &data).unwrap();
    let (status, body) = get(&url);
    assert_eq!(status, 200);
    assert!(body == data, "GET did not serve the flipped bytes");
    // And a truncated one truncated.
    std::fs::write(&stored, &data[..10]).unwrap();
    assert_eq!(get(&url), (200, data[..10].to_vec()));
}

#[test]
fn nginx_answers_404_for_a_missing_key() {
    let server = Nginx::start(NginxOpts::default());
    let hex = "ab".repeat(32);
    let url = format!("{}/cas/{hex}", server.url());
    assert_eq!(head(&url), 404);
    assert_eq!(get(&url).0, 404);
    assert_eq!(head(&format!("{}/ac/{hex}", server.url())), 404);
    let log = server.access_log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], line("HEAD", &format!("/cache/cas/{hex}"), 404, 0));
    assert_eq!(log[1].method, "GET");
    assert_eq!(log[1].status, 404);
    assert_eq!(log[2].uri, format!("/cache/ac/{hex}"));
    // Outside the prefix nothing is served or stored.
    let src = tempfile::NamedTempFile::new().unwrap();
    assert_eq!(
        put(
            &format!("http://127.0.0.1:{}/other/x", server.port()),
            src.path()
        ),
        404
    );
    assert!(!server.root().join("../other").exists());
}

#[test]
fn nginx_basic_auth_rejects_without_credentials_and_accepts_with_them() {
    let server = Nginx::start(NginxOpts::with_basic_auth("ci", "s3cret"));
    let (data, hex) = blob();
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), &data).unwrap();
    let path = format!("/cas/{hex}");
    let stored = server.root().join("cas").join(&hex);

    assert!(!server.url().contains('@'), "url() holds credentials");
    assert_eq!(put(&format!("{}{path}", server.url()), src.path()), 401);
    assert!(!stored.exists(), "an unauthenticated PUT stored the blob");
    let wrong = server.url_with_auth("ci", "wrong");
    assert_eq!(put(&format!("{wrong}{path}"), src.path()), 401);
    assert!(
        !stored.exists(),
        "a PUT with a wrong password stored the blob"
    );

    let good = server.url_with_auth("ci", "s3cret");
    assert!(good.starts_with("http://ci:s3cret@127.0.0.1:"), "{good}");
    assert_eq!(put(&format!("{good}{path}"), src.path()), 201);
    assert_eq!(std::fs::read(&stored).unwrap(), data);
    assert_eq!(get(&format!("{}{path}", server.url())).0, 401);
    assert_eq!(head(&format!("{}{path}", server.url())), 401);
    let (status, body) = get(&format!("{good}{path}"));
    assert_eq!(status, 200);
    assert!(body == data);
    // curl's `-u` sends the same header as credentials in the URL.
    assert_eq!(
        curl(&["-I", "-u", "ci:s3cret", &format!("{}{path}", server.url())]).0,
        200
    );
}

#[test]
fn killed_nginx_refuses_connections() {
    let mut server = Nginx::start(NginxOpts::default());
    let port = server.port();
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());
    assert!(process_exists(server.pid()));
    server.kill();
    assert!(!server.is_running());
    assert!(refuses_connections(port), "port {port} still accepts");
    assert!(!process_exists(server.pid()), "nginx was not reaped");
    // The log stays readable after the kill.
    assert_eq!(server.access_log(), []);
}

#[test]
fn dropped_nginx_is_stopped_and_reaped() {
    let server = Nginx::start(NginxOpts::default());
    let (port, pid) = (server.port(), server.pid());
    assert_eq!(
        head(&format!("{}/cas/{}", server.url(), "cd".repeat(32))),
        404
    );
    drop(server);
    assert!(refuses_connections(port), "port {port} still accepts");
    assert!(
        !process_exists(pid),
        "nginx {pid} was not stopped and reaped"
    );
}

#[test]
fn two_nginx_servers_run_side_by_side_with_their_own_roots() {
    let a = Nginx::start(NginxOpts::default());
    let b = Nginx::start(NginxOpts::default());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.root(), b.root());
    let (data, hex) = blob();
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), &data).unwrap();
    assert_eq!(put(&format!("{}/cas/{hex}", a.url()), src.path()), 201);
    assert_eq!(head(&format!("{}/cas/{hex}", b.url())), 404);
    assert_eq!(a.access_log().len(), 1);
    assert_eq!(b.access_log().len(), 1);
}

#[test]
fn nginx_on_a_taken_port_is_reported_so_start_can_retry() {
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    assert!(Nginx::start_on(&NginxOpts::default(), port).is_none());
    // That nginx is gone: once the listener is too, the port serves a new one.
    drop(taken);
    let server = Nginx::start_on(&NginxOpts::default(), port).expect("port is free now");
    assert_eq!(server.port(), port);
    assert_eq!(
        head(&format!("{}/cas/{}", server.url(), "ef".repeat(32))),
        404
    );
}
