//! A real OCI registry for the tests: Debian's `docker-registry` (the
//! distribution project's registry 2.8) on loopback, with its config, storage
//! and logs in its own temp dir, anonymous or behind htpasswd basic auth.
//!
//! The child this harness spawns is the whole server, so [`Registry::kill`] and
//! `Drop` stop it by its own PID and reap it. [`Registry::restart`] starts a
//! new server on the same port and storage (a registry "coming back" after a
//! crash). The system's registry service (if any) is never used or touched.
//!
//! The access log (Apache combined format, on the server's stdout) is read by
//! [`Registry::access_log`], which first sends a barrier request and waits for
//! its line: the registry logs each request from the goroutine that served it
//! right after the handler returns, so the requests a finished client saw
//! answered are logged by then.

use super::{free_port, stop_child as stop};
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How to start the registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// Require HTTP basic auth with this `(user, password)` (an htpasswd file
    /// made with `htpasswd -B`, the only hash the registry accepts).
    pub basic_auth: Option<(String, String)>,
    /// Extra top-level YAML appended to the config as is (for example a
    /// `notifications:` block); the harness writes `version`, `log`, `storage`,
    /// `http` and `auth` itself.
    pub extra_yaml: String,
    /// Require bearer tokens from a token server (instead of `basic_auth`).
    pub token_auth: Option<TokenAuth>,
    /// Serve HTTPS with this certificate (see [`super::auth::TestCa`]).
    pub tls: Option<Tls>,
}

/// The registry's `auth: token:` settings, and the account a test's own tools
/// (skopeo) use.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    /// The token server's URL (the challenge's `realm`).
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// The CA (PEM) that signs the token server's signing cert.
    pub rootcertbundle: PathBuf,
    /// `(user, password)` for skopeo.
    pub account: (String, String),
}

/// The registry's `http: tls:` settings.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed `cert`, for the harness's own requests.
    pub ca: PathBuf,
}

impl RegistryOpts {
    pub fn with_basic_auth(user: &str, password: &str) -> RegistryOpts {
        RegistryOpts {
            basic_auth: Some((user.to_string(), password.to_string())),
            ..RegistryOpts::default()
        }
    }
}

/// One request of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub method: String,
    /// The request target as sent, query string included, e.g.
    /// `/v2/x/blobs/uploads/?mount=sha256:...&from=y`.
    pub uri: String,
    pub status: u16,
    /// Bytes of the response body.
    pub bytes: u64,
}

impl LogLine {
    /// The path without its query string.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or(&self.uri)
    }

    /// A request that puts a blob's bytes on the registry: a `PATCH` or a `PUT`
    /// under `/blobs/uploads/`, or a `POST` upload that carries `?digest=` (a
    /// monolithic single-request upload).
    pub fn is_blob_upload(&self) -> bool {
        self.path().contains("/blobs/uploads/")
            && (self.method == "PATCH"
                || self.method == "PUT"
                || (self.method == "POST" && self.uri.contains("digest=")))
    }

    /// A `PUT` of a manifest.
    pub fn is_manifest_put(&self) -> bool {
        self.method == "PUT" && self.path().contains("/manifests/")
    }
}

/// A running registry; stopped and reaped on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    opts: RegistryOpts,
}

static BARRIERS: AtomicU64 = AtomicU64::new(0);

fn registry_bin() -> PathBuf {
    if super::have("docker-registry") {
        return PathBuf::from("docker-registry");
    }
    panic!(
        "`docker-registry` is not installed: the README's test command (scripts/test) installs it"
    );
}

/// A path as a quoted YAML string.
fn q(p: &Path) -> String {
    let s = p.to_str().expect("temp dir path is not UTF-8");
    assert!(
        !s.contains(['"', '\\']),
        "temp dir path `{s}` cannot be quoted"
    );
    format!("\"{s}\"")
}

fn config(dir: &Path, port: u16, opts: &RegistryOpts) -> String {
    let auth = if let Some(t) = &opts.token_auth {
        format!(
            "auth:\n  token:\n    realm: \"{}\"\n    service: \"{}\"\n    issuer: \"{}\"\n    rootcertbundle: {}\n",
            t.realm,
            t.service,
            t.issuer,
            q(&t.rootcertbundle)
        )
    } else if opts.basic_auth.is_some() {
        format!(
            "auth:\n  htpasswd:\n    realm: imgc-test\n    path: {}\n",
            q(&dir.join("htpasswd"))
        )
    } else {
        String::new()
    };
    format!(
        "# Debian's docker-registry for imgc's tests.\n\
         version: 0.1\n\
         log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: imgc-test-secret\n{tls}\
         {auth}{extra}",
        data = q(&dir.join("data")),
        extra = opts.extra_yaml,
        tls = match &opts.tls {
            Some(t) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                q(&t.cert),
                q(&t.key)
            ),
            None => String::new(),
        },
    )
}

fn logs_in(dir: &Path) -> String {
    fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
}

fn log_len(dir: &Path) -> usize {
    fs::metadata(dir.join("registry.log")).map_or(0, |m| m.len() as usize)
}

/// Does a probe request get an HTTP answer (any status: a 404) on `addr`? The
/// probe's path is one the access log reader leaves out.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        s,
        "GET /imgc-harness-probe HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// Spawns the registry with the config in `dir`; `None` when the port was taken.
fn spawn_ready(dir: &Path, port: u16) -> Option<Child> {
    const TRIES: usize = 3000; // 10 ms apart: 30 s on a loaded machine
    let logged_before = log_len(dir);
    let stdout = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("access.log"))
        .unwrap();
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .unwrap();
    let mut child = Command::new(registry_bin())
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `docker-registry`: {e}"));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..TRIES {
        if let Some(status) = child.try_wait().unwrap() {
            let log = logs_in(dir);
            if log
                .get(logged_before..)
                .unwrap_or("")
                .contains("address already in use")
            {
                return None;
            }
            panic!(
                "docker-registry exited at start ({status}):\n{}",
                logs_in(dir)
            );
        }
        if answers(addr) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop(&mut child);
    panic!(
        "docker-registry did not answer on {addr} after {TRIES} tries:\n{}",
        logs_in(dir)
    );
}

impl Registry {
    /// Starts a registry on a free port of 127.0.0.1 and returns once it
    /// answers. Panics with its log if it cannot start.
    pub fn start(opts: RegistryOpts) -> Registry {
        const ATTEMPTS: usize = 10;
        let dir = tempfile::tempdir().unwrap();
        if let Some((user, password)) = &opts.basic_auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("cannot run `htpasswd` (apache2-utils; scripts/test installs it)");
            assert!(out.status.success(), "htpasswd failed");
            fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
        }
        for _ in 0..ATTEMPTS {
            let port = free_port();
            fs::write(
                dir.path().join("config.yml"),
                config(dir.path(), port, &opts),
            )
            .unwrap();
            if let Some(child) = spawn_ready(dir.path(), port) {
                return Registry {
                    dir,
                    child: Some(child),
                    port,
                    opts,
                };
            }
        }
        panic!("docker-registry found no free port on 127.0.0.1 in {ATTEMPTS} attempts");
    }

    /// `127.0.0.1:PORT`, the registry part of a reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn opts(&self) -> &RegistryOpts {
        &self.opts
    }

    /// The PID of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temp dir holding config, `data/` (the storage), `access.log` and
    /// `registry.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The storage root (`docker/registry/v2/...` below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The registry's own log (stderr), for failure messages and greps.
    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }

    /// Every request logged so far, in log order. While the server runs, a
    /// barrier request is sent first and its line awaited (bounded).
    pub fn access_log(&self) -> Vec<LogLine> {
        let barrier = if self.child.is_some() {
            Some(self.barrier())
        } else {
            None
        };
        for _ in 0..3000 {
            let lines = self.read_log();
            match &barrier {
                Some(b) if !lines.iter().any(|l| &l.uri == b) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    return lines
                        .into_iter()
                        .filter(|l| !l.uri.starts_with("/imgc-harness-"))
                        .collect();
                }
            }
        }
        panic!("the registry never logged the barrier request");
    }

    /// The access log lines as they are now, without a barrier (for polling
    /// while a client is still talking to the registry).
    pub fn read_log(&self) -> Vec<LogLine> {
        let text = fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete.lines().filter_map(parse_log_line).collect()
    }

    fn barrier(&self) -> String {
        let n = BARRIERS.fetch_add(1, Ordering::Relaxed);
        let uri = format!("/imgc-harness-barrier-{}-{n}", std::process::id());
        if let Some(tls) = &self.opts.tls {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "--max-time", "30", "--cacert"])
                .arg(&tls.ca)
                .arg(format!("{}{uri}", self.url()))
                .output()
                .expect("cannot run curl");
            assert!(
                out.status.success(),
                "curl could not reach the TLS registry"
            );
            return uri;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the registry on port {} is not answering: {e}", self.port));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {uri} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        uri
    }

    /// Kills the server at once (SIGKILL) and reaps it. Storage and logs stay.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }

    /// Starts the server again on the same port, config and storage (after
    /// [`Registry::kill`]). Panics if the port was taken meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..100 {
            if let Some(child) = spawn_ready(self.dir.path(), self.port) {
                self.child = Some(child);
                return;
            }
            // The killed server's socket may linger for a moment.
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "port {} stayed taken; cannot restart the registry",
            self.port
        );
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `--creds user:password` for skopeo, when the registry has basic auth.
    fn skopeo_creds(&self, flag: &str) -> Vec<String> {
        let account = self
            .opts
            .token_auth
            .as_ref()
            .map(|t| &t.account)
            .or(self.opts.basic_auth.as_ref());
        match account {
            Some((u, p)) => vec![flag.to_string(), format!("{u}:{p}")],
            None => Vec::new(),
        }
    }

    /// Pushes the OCI layout at `layout` to `HOST/repo_tag` with skopeo (all
    /// platforms of an index with `all`). Returns the pushed reference.
    pub fn skopeo_push(&self, layout: &Path, repo_tag: &str, all: bool) -> String {
        let reference = format!("{}/{repo_tag}", self.host());
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        c.args(self.skopeo_creds("--dest-creds"));
        if all {
            c.arg("--all");
        }
        c.arg(format!("oci:{}", layout.display()));
        c.arg(format!("docker://{reference}"));
        super::run(&mut c);
        reference
    }

    /// Copies `HOST/repo_ref` out of the registry into a new OCI layout at
    /// `dest` with skopeo.
    pub fn skopeo_pull(&self, repo_ref: &str, dest: &Path) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--src-tls-verify=false"]);
        c.args(self.skopeo_creds("--src-creds"));
        c.arg(format!("docker://{}/{repo_ref}", self.host()));
        c.arg(format!("oci:{}", dest.display()));
        super::run(&mut c);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `HOST - USER [DATE] "METHOD URI PROTO" STATUS BYTES "REFERER" "AGENT"`.
fn parse_log_line(l: &str) -> Option<LogLine> {
    let (_, rest) = l.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut req = request.split(' ');
    let method = req.next()?.to_string();
    let uri = req.next()?.to_string();
    let mut nums = rest.split(' ');
    let status = nums.next()?.parse().ok()?;
    let bytes = nums.next()?.parse().unwrap_or(0);
    Some(LogLine {
        method,
        uri,
        status,
        bytes,
    })
}

/// The harness itself, against curl: a registry starts, logs, restarts on its
/// storage, and requires its password.
#[test]
fn the_registry_harness_logs_requests_and_survives_a_restart() {
    let mut reg = Registry::start(RegistryOpts::with_basic_auth("alice", "s3cret pass"));
    let url = format!("{}/v2/", reg.url());
    let curl = |auth: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(a) = auth {
            c.args(["-u", a]);
        }
        let out = c.arg(&url).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(curl(None), "401");
    assert_eq!(curl(Some("alice:s3cret pass")), "200");
    assert_eq!(curl(Some("alice:wrong")), "401");
    let log = reg.access_log();
    let statuses: Vec<u16> = log
        .iter()
        .filter(|l| l.path() == "/v2/")
        .map(|l| l.status)
        .collect();
    assert_eq!(statuses, [401, 200, 401], "{log:?}");
    reg.kill();
    assert!(!answers(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        reg.port()
    ))));
    reg.restart();
    assert_eq!(curl(Some("alice:s3cret pass")), "200");

    // skopeo pushes a layout and reads it back, byte for byte.
    let ws = super::small_ws();
    ws.ok(&["build", "//..."]);
    let layout = ws.layout("app", "app");
    let name = reg.skopeo_push(&layout, "harness/app:1", false);
    assert_eq!(name, format!("{}/harness/app:1", reg.host()));
    let back = tempfile::tempdir().unwrap();
    reg.skopeo_pull("harness/app:1", &back.path().join("oci"));
    let manifest = |dir: &Path| super::manifest_of(dir).to_string();
    assert_eq!(manifest(&layout), manifest(&back.path().join("oci")));
}
