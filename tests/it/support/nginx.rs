//! A real HTTP cache server for the tests: Debian's nginx as a Bazel-style
//! HTTP cache (GET/HEAD/PUT under one URL prefix, WebDAV PUT), on loopback,
//! with everything it writes (config, pid file, logs, temp files, document
//! root) in its own temp dir.
//!
//! nginx runs in the foreground as one process (`daemon off`, `master_process
//! off`): the child this harness spawns is the whole server, so [`Nginx::kill`]
//! and `Drop` stop it by its own PID and reap it, leaving no worker behind. The
//! system's nginx service (if any) is never used or touched.

use super::{free_port, stop_child as stop};
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The URL path under which the cache is served.
pub const PREFIX: &str = "/cache";

/// Serves `204` with no access-log line; see [`Nginx::access_log`].
const BARRIER: &str = "/__imgc_log_barrier";

/// How to start the server.
#[derive(Clone, Debug, Default)]
pub struct NginxOpts {
    /// Require HTTP basic auth with this `(user, password)` for the cache prefix.
    pub basic_auth: Option<(String, String)>,
}

impl NginxOpts {
    pub fn with_basic_auth(user: &str, password: &str) -> NginxOpts {
        NginxOpts {
            basic_auth: Some((user.to_string(), password.to_string())),
        }
    }
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub method: String,
    /// The request path (normalized, without the query string), e.g. `/cache/cas/<hex>`.
    pub uri: String,
    pub status: u16,
    /// Bytes of the response body.
    pub bytes: u64,
}

/// A running nginx; stopped and reaped on drop.
pub struct Nginx {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pid: u32,
    port: u16,
}

/// The nginx binary: Debian's, else one on PATH. Panics, naming the fix, when
/// there is none.
fn nginx_bin() -> PathBuf {
    let debian = Path::new("/usr/sbin/nginx");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    if super::have("nginx") {
        return PathBuf::from("nginx");
    }
    panic!("`nginx` is not installed: the README's test command (scripts/test) installs it");
}

/// A path as a quoted nginx config string.
fn q(p: &Path) -> String {
    let s = p.to_str().expect("temp dir path is not UTF-8");
    assert!(
        !s.contains(['"', '\\', '$']),
        "temp dir path `{s}` cannot be quoted for nginx"
    );
    format!("\"{s}\"")
}

fn config(dir: &Path, port: u16, opts: &NginxOpts) -> String {
    let user = if unsafe { libc::geteuid() } == 0 {
        // Files PUT through nginx belong to root then, like the tests' own files.
        "user root;\n"
    } else {
        ""
    };
    let auth = if opts.basic_auth.is_some() {
        format!(
            "auth_basic \"imgc test cache\";\n            auth_basic_user_file {};",
            q(&dir.join("htpasswd"))
        )
    } else {
        String::new()
    };
    let tmp = dir.join("tmp");
    format!(
        r#"# nginx as a Bazel-style HTTP cache for imgc's tests.
daemon off;
master_process off;
{user}worker_processes 1;
pid {pid};
lock_file {lock};
error_log {error_log} notice;
events {{
    worker_connections 1024;
}}
http {{
    types {{ }}
    default_type application/octet-stream;
    server_tokens off;
    log_format imgc '$request_method $uri $status $body_bytes_sent';
    access_log {access_log} imgc;
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {www};
        location = {BARRIER} {{
            access_log off;
            return 204;
        }}
        location {PREFIX}/ {{
            {auth}
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
        }}
        location / {{
            return 404;
        }}
    }}
}}
"#,
        pid = q(&dir.join("nginx.pid")),
        lock = q(&dir.join("nginx.lock")),
        error_log = q(&dir.join("error.log")),
        access_log = q(&dir.join("access.log")),
        client_body = q(&tmp.join("client_body")),
        proxy = q(&tmp.join("proxy")),
        fastcgi = q(&tmp.join("fastcgi")),
        uwsgi = q(&tmp.join("uwsgi")),
        scgi = q(&tmp.join("scgi")),
        www = q(&dir.join("www")),
    )
}

/// Why a start attempt failed and may be retried.
struct AddrInUse;

/// nginx's stderr and error log in `dir`, for failure messages.
fn logs_in(dir: &Path) -> String {
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!("{}{}", read("stderr.log"), read("error.log"))
}

/// Spawns nginx with the config in `dir` and polls (bounded) until it wrote its
/// pid file, which it does only after binding its port, and the port accepts
/// a connection. A failure other than a taken port panics with nginx's logs.
fn spawn_ready(bin: &Path, dir: &Path, port: u16) -> Result<Child, AddrInUse> {
    const TRIES: usize = 3000; // 10 ms apart: 30 s on a loaded machine
    let pid_file = dir.join("nginx.pid");
    let stderr = fs::File::create(dir.join("stderr.log")).unwrap();
    let mut child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", bin.display()));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..TRIES {
        let exited = child.try_wait().unwrap();
        // nginx retries a taken port for 2.5 s before it gives up: do not wait.
        if logs_in(dir).contains("Address already in use") {
            stop(&mut child);
            return Err(AddrInUse);
        }
        if let Some(status) = exited {
            panic!("nginx exited at start ({status}):\n{}", logs_in(dir));
        }
        let written =
            fs::read_to_string(&pid_file).is_ok_and(|s| s.trim() == child.id().to_string());
        if written && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop(&mut child);
    panic!(
        "nginx did not accept connections on {addr} after {TRIES} tries:\n{}",
        logs_in(dir)
    );
}

impl Nginx {
    /// Starts nginx on a free port of 127.0.0.1 and returns once it accepts
    /// connections. Panics with nginx's error log if it cannot start.
    pub fn start(opts: NginxOpts) -> Nginx {
        const ATTEMPTS: usize = 10;
        for _ in 0..ATTEMPTS {
            // Another process may take the port between this probe and nginx's bind.
            if let Some(nginx) = Nginx::start_on(&opts, free_port()) {
                return nginx;
            }
        }
        panic!("nginx found no free port on 127.0.0.1 in {ATTEMPTS} attempts");
    }

    /// Starts nginx on 127.0.0.1:`port`, in a fresh temp dir; `None` when the
    /// port is taken. Panics with nginx's error log on any other failure.
    pub fn start_on(opts: &NginxOpts, port: u16) -> Option<Nginx> {
        let bin = nginx_bin();
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("www").join(PREFIX.trim_start_matches('/'))).unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        if let Some((user, password)) = &opts.basic_auth {
            assert!(
                !user.contains([':', '\n']) && !password.contains('\n'),
                "basic auth user may not hold `:` or a newline, nor the password a newline"
            );
            // nginx accepts the `{PLAIN}` scheme: no hashing tool needed.
            fs::write(
                dir.path().join("htpasswd"),
                format!("{user}:{{PLAIN}}{password}\n"),
            )
            .unwrap();
        }
        fs::write(
            dir.path().join("nginx.conf"),
            config(dir.path(), port, opts),
        )
        .unwrap();
        let child = spawn_ready(&bin, dir.path(), port).ok()?;
        Some(Nginx {
            pid: child.id(),
            child: Some(child),
            dir,
            port,
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// nginx's stderr and error log, for failure messages.
    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }

    /// The cache's base URL, e.g. `http://127.0.0.1:PORT/cache` (no trailing slash,
    /// no credentials).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PREFIX}", self.port)
    }

    /// The base URL with `user:password@` (percent-encoded) in it.
    pub fn url_with_auth(&self, user: &str, password: &str) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        format!(
            "http://{}:{}@127.0.0.1:{}{PREFIX}",
            utf8_percent_encode(user, NON_ALPHANUMERIC),
            utf8_percent_encode(password, NON_ALPHANUMERIC),
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PID of the nginx process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The directory that `url()` maps to: `<url>/cas/<hex>` is stored at
    /// `root()/cas/<hex>`.
    pub fn root(&self) -> PathBuf {
        self.dir
            .path()
            .join("www")
            .join(PREFIX.trim_start_matches('/'))
    }

    /// Every request nginx has logged, in order. While the server runs, this
    /// first sends it a request that it does not log and waits for the answer:
    /// nginx is one single-threaded process that writes a request's log line
    /// right after its last response byte, so every request whose response a
    /// client has received is in the log by then.
    pub fn access_log(&self) -> Vec<LogLine> {
        if self.child.is_some() {
            self.barrier();
        }
        let text = fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        // A line is complete once its newline is written.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| parse_log_line(l).unwrap_or_else(|| panic!("bad access log line {l:?}")))
            .collect()
    }

    fn barrier(&self) {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("nginx on port {} is not answering: {e}", self.port));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {BARRIER} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        assert!(
            reply.starts_with(b"HTTP/1.1 204"),
            "unexpected reply to the log barrier: {}",
            String::from_utf8_lossy(&reply)
        );
    }

    /// Kills nginx at once (SIGKILL) and reaps it: from then on its port refuses
    /// connections. The root and the logs stay readable.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }

    /// Is the server running (not killed)?
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `METHOD URI STATUS BYTES` (the URI may hold spaces, the method may be empty
/// for a request nginx could not parse).
fn parse_log_line(l: &str) -> Option<LogLine> {
    let (method, rest) = l.split_once(' ')?;
    let mut tail = rest.rsplitn(3, ' ');
    let bytes = tail.next()?.parse().ok()?;
    let status = tail.next()?.parse().ok()?;
    let uri = tail.next()?;
    Some(LogLine {
        method: method.to_string(),
        uri: uri.to_string(),
        status,
        bytes,
    })
}
