//! Authentication fixtures for the registry tests, each made or started by the
//! test in its own temp dir, on loopback only, stopped by its own PID:
//!
//! - [`TestCa`]: a throwaway certificate authority (`openssl`), issuing server
//!   certificates for the TLS registry and the token server's signing cert.
//! - [`TokenServer`]: a Docker-style token server (a python3 `http.server`
//!   script, no packages): checks Basic credentials (or an OAuth2 password or
//!   refresh-token grant), signs an RS256 JWT with `openssl dgst -sha256 -sign`
//!   whose `x5c` header holds its cert, and logs each request with whether it
//!   carried an `Authorization` header (never the header's value).
//! - [`Trap`]: a plain file server on 127.0.0.2 (another host as far as any
//!   client knows) serving the registry's storage, to which the registry's
//!   `redirect` storage middleware sends blob requests; it logs every header it
//!   receives, so a test can show that no credential followed the redirect.
//!
//! The registry side of these lives in [`super::registry`]: [`RegistryOpts`]
//! with [`TokenAuth`], [`Tls`] and [`redirect_yaml`].
//!
//! [`RegistryOpts`]: super::registry::RegistryOpts

use super::stop_child as stop;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn openssl(args: &[&str], cwd: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run `openssl` (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate and its private key (PEM files).
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A throwaway CA in a temp dir.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM): the trust root to hand a client
    /// (`SSL_CERT_FILE`) or the registry (`rootcertbundle`).
    pub cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3",
                "-subj",
                "/CN=imgc test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir.path(),
        );
        TestCa {
            cert: dir.path().join("ca.pem"),
            key: dir.path().join("ca.key"),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate for `name` signed by this CA. `san` is an openssl
    /// `subjectAltName` value (`IP:127.0.0.1,DNS:localhost`); `rsa` makes an
    /// RSA 2048 key (for RS256 signing), else an EC P-256 one.
    pub fn issue(&self, name: &str, san: &str, rsa: bool) -> CertPair {
        let d = self.dir.path();
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let cert = format!("{name}.pem");
        let ext = format!("{name}.ext");
        let newkey: &[&str] = if rsa {
            &["-newkey", "rsa:2048"]
        } else {
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        };
        let subj = format!("/CN={name}");
        let mut args = vec!["req", "-new"];
        args.extend_from_slice(newkey);
        args.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&args, d);
        let usage = if rsa {
            "keyUsage=critical,digitalSignature\n"
        } else {
            "keyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth\n"
        };
        fs::write(
            d.join(&ext),
            format!("basicConstraints=critical,CA:FALSE\nsubjectAltName={san}\n{usage}"),
        )
        .unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
            d,
        );
        CertPair {
            cert: d.join(cert),
            key: d.join(key),
        }
    }
}

/// Waits (bounded) for a server script to write the port it bound.
fn wait_for_port(dir: &Path, child: &mut Child, what: &str, log: &Path) -> u16 {
    for _ in 0..3000 {
        if let Ok(s) = fs::read_to_string(dir.join("port")) {
            if let Ok(p) = s.trim().parse() {
                return p;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the {what} exited at start ({status}):\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop(child);
    panic!("the {what} never wrote its port");
}

fn spawn_script(dir: &Path, script: &str, args: &[&str]) -> Child {
    assert!(
        super::have("python3"),
        "python3 is needed for the auth test servers"
    );
    fs::write(dir.join("server.py"), script).unwrap();
    let stderr = fs::File::create(dir.join("stderr.log")).unwrap();
    Command::new("python3")
        .arg(dir.join("server.py"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("cannot run python3")
}

/// Reads a JSON-lines log (complete lines only).
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("a log line is JSON"))
        .collect()
}

/// What the token server accepts and how it signs.
#[derive(Clone, Debug)]
pub struct TokenOpts {
    /// `(user, password)` pairs accepted by Basic auth and the password grant.
    pub users: Vec<(String, String)>,
    /// `(refresh token, user)` pairs accepted by the refresh-token grant (what
    /// Docker calls an identity token).
    pub refresh_tokens: Vec<(String, String)>,
    pub issuer: String,
    pub service: String,
    /// The RSA key and cert that sign tokens (the cert goes into `x5c`).
    pub signing: CertPair,
}

/// A running token server; stopped by its PID on drop.
pub struct TokenServer {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    pub opts: TokenOpts,
}

/// One request the token server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub method: String,
    pub path: String,
    /// The requested scopes, as sent.
    pub scopes: Vec<String>,
    /// `basic`, `bearer`, `other` or `none`: which kind of `Authorization`
    /// header came (never its value).
    pub authorization: String,
    /// `grant_type` of a POST, else empty.
    pub grant: String,
    /// The user the token was issued to (empty for anonymous), or empty on a
    /// refusal.
    pub subject: String,
    pub status: u16,
}

impl TokenServer {
    pub fn start(opts: TokenOpts) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "users": opts.users.iter().map(|(u, p)| (u.clone(), p.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "refresh_tokens": opts.refresh_tokens.iter().map(|(t, u)| (t.clone(), u.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "issuer": opts.issuer,
            "service": opts.service,
            "key": opts.signing.key,
            "cert": opts.signing.cert,
        });
        fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let mut child = spawn_script(dir.path(), &TOKEN_SERVER, &["config.json"]);
        let port = wait_for_port(
            dir.path(),
            &mut child,
            "token server",
            &dir.path().join("stderr.log"),
        );
        TokenServer {
            dir,
            child,
            port,
            opts,
        }
    }

    /// `http://127.0.0.1:PORT/token`, the realm of the registry's challenge.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every request served so far (each is logged before its answer is sent).
    pub fn requests(&self) -> Vec<TokenRequest> {
        json_lines(&self.dir.path().join("requests.log"))
            .into_iter()
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                TokenRequest {
                    method: s("method"),
                    path: s("path"),
                    scopes: v["scopes"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    authorization: s("authorization"),
                    grant: s("grant"),
                    subject: s("subject"),
                    status: v["status"].as_u64().unwrap_or(0) as u16,
                }
            })
            .collect()
    }

    /// Everything the server wrote (its request log and stderr), for greps.
    pub fn all_logs(&self) -> String {
        all_logs(self.dir.path())
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A test server's request log and stderr under `dir`, joined.
fn all_logs(dir: &Path) -> String {
    ["requests.log", "stderr.log"]
        .iter()
        .map(|f| fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file server on 127.0.0.2 that logs every request's headers.
pub struct Trap {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

/// One request the trap saw.
#[derive(Clone, Debug)]
pub struct TrapRequest {
    pub method: String,
    pub path: String,
    /// Every header as received, names lowercased.
    pub headers: Vec<(String, String)>,
    pub status: u16,
}

impl TrapRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Trap {
    /// Starts on 127.0.0.2, serving nothing (404) until [`Trap::serve_from`].
    pub fn start() -> Trap {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_script(dir.path(), &TRAP_SERVER, &[]);
        let port = wait_for_port(
            dir.path(),
            &mut child,
            "trap server",
            &dir.path().join("stderr.log"),
        );
        Trap { dir, child, port }
    }

    /// Serves the files under `root` (GET and HEAD), e.g. a registry's
    /// storage once it runs.
    pub fn serve_from(&self, root: &Path) {
        let tmp = self.dir.path().join("root.tmp");
        fs::write(&tmp, root.to_str().expect("a UTF-8 temp path")).unwrap();
        fs::rename(tmp, self.dir.path().join("root")).unwrap();
    }

    /// `http://127.0.0.2:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.2:{}", self.port)
    }

    pub fn requests(&self) -> Vec<TrapRequest> {
        json_lines(&self.dir.path().join("requests.log"))
            .into_iter()
            .map(|v| TrapRequest {
                method: v["method"].as_str().unwrap_or_default().to_string(),
                path: v["path"].as_str().unwrap_or_default().to_string(),
                headers: v["headers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|h| {
                                (
                                    h[0].as_str().unwrap_or_default().to_ascii_lowercase(),
                                    h[1].as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                status: v["status"].as_u64().unwrap_or(0) as u16,
            })
            .collect()
    }

    /// Everything the trap wrote, for greps.
    pub fn all_logs(&self) -> String {
        all_logs(self.dir.path())
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Registry config for the `redirect` storage middleware: blob GETs and HEADs
/// are answered with a redirect to `base` + the blob's storage path.
pub fn redirect_yaml(base: &str) -> String {
    format!(
        "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {base}/\n"
    )
}

/// Writes `port` to `./port` once bound (atomically), serves until killed.
const SERVER_PRELUDE: &str = r#"
import json, os, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

LOG_LOCK = threading.Lock()

def log(entry):
    with LOG_LOCK:
        with open("requests.log", "a") as f:
            f.write(json.dumps(entry) + "\n")

def serve(handler, host):
    server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    with open("port.tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename("port.tmp", "port")
    server.serve_forever()
"#;

const TOKEN_SERVER_BODY: &str = r#"
import base64, secrets, subprocess, time
from urllib.parse import urlsplit, parse_qs

CONFIG = json.load(open(sys.argv[1]))
with open(CONFIG["cert"]) as f:
    CERT_B64 = "".join(l.strip() for l in f if not l.startswith("-----"))

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def sign(subject, scopes):
    access = []
    if subject:
        for s in scopes:
            parts = s.split(":")
            if len(parts) < 3:
                continue
            kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1]
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [CERT_B64]}
    claims = {"iss": CONFIG["issuer"], "sub": subject, "aud": CONFIG["service"],
              "exp": now + 600, "nbf": now - 60, "iat": now, "jti": secrets.token_hex(16),
              "access": access}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", CONFIG["key"]],
                         input=signing_input.encode(), capture_output=True, check=True).stdout
    return signing_input + "." + b64url(sig)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def auth_kind(self):
        h = self.headers.get("Authorization")
        if h is None:
            return "none", None
        scheme, _, value = h.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
                return "basic", (user, password)
            except Exception:
                return "basic", ("", None)
        return ("bearer" if scheme.lower() == "bearer" else "other"), None

    def answer(self, entry, status, body):
        entry["status"] = status
        log(entry)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="imgc-test-token"')
        self.end_headers()
        self.wfile.write(data)

    def issue(self, entry, subject, scopes, refresh=None):
        entry["subject"] = subject
        token = sign(subject, scopes)
        body = {"token": token, "access_token": token, "expires_in": 600,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if refresh:
            body["refresh_token"] = refresh
        self.answer(entry, 200, body)

    def refuse(self, entry):
        self.answer(entry, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "access denied"}]})

    def entry(self, scopes, grant=""):
        kind, _ = self.auth_kind()
        return {"method": self.command, "path": urlsplit(self.path).path, "scopes": scopes,
                "authorization": kind, "grant": grant, "subject": ""}

    def do_GET(self):
        q = parse_qs(urlsplit(self.path).query)
        scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
        entry = self.entry(scopes)
        if urlsplit(self.path).path != "/token" or q.get("service", [""])[0] != CONFIG["service"]:
            return self.answer(entry, 404, {"errors": [{"code": "NOT_FOUND"}]})
        kind, creds = self.auth_kind()
        if kind == "none":
            return self.issue(entry, "", scopes)
        if kind == "basic" and creds[1] is not None and CONFIG["users"].get(creds[0]) == creds[1]:
            return self.issue(entry, creds[0], scopes)
        return self.refuse(entry)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        one = lambda k: form.get(k, [""])[0]
        scopes = [s for v in form.get("scope", []) for s in v.split(" ") if s]
        entry = self.entry(scopes, one("grant_type"))
        if urlsplit(self.path).path != "/token" or one("service") != CONFIG["service"]:
            return self.answer(entry, 404, {"errors": [{"code": "NOT_FOUND"}]})
        if one("grant_type") == "password" and CONFIG["users"].get(one("username")) == one("password") and one("username"):
            refresh = None
            for t, u in CONFIG["refresh_tokens"].items():
                if u == one("username") and one("access_type") == "offline":
                    refresh = t
            return self.issue(entry, one("username"), scopes, refresh)
        if one("grant_type") == "refresh_token" and one("refresh_token") in CONFIG["refresh_tokens"]:
            return self.issue(entry, CONFIG["refresh_tokens"][one("refresh_token")], scopes)
        return self.refuse(entry)

serve(Handler, "127.0.0.1")
"#;

const TRAP_SERVER_BODY: &str = r#"
def root():
    try:
        with open("root") as f:
            return os.path.realpath(f.read())
    except FileNotFoundError:
        return None

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, head_only):
        path = self.path.split("?", 1)[0]
        entry = {"method": self.command, "path": path, "headers": [[k, v] for k, v in self.headers.items()]}
        base = root()
        full = os.path.realpath(os.path.join(base or "/nonexistent", path.lstrip("/")))
        if base and full.startswith(base + "/") and os.path.isfile(full):
            with open(full, "rb") as f:
                data = f.read()
            status = 200
        else:
            data, status = b"not found\n", 404
        entry["status"] = status
        log(entry)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def do_GET(self):
        self.reply(False)

    def do_HEAD(self):
        self.reply(True)

    def refuse_write(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        log({"method": self.command, "path": self.path.split("?", 1)[0],
             "headers": [[k, v] for k, v in self.headers.items()], "status": 405})
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = refuse_write
    do_POST = refuse_write
    do_PATCH = refuse_write
    do_DELETE = refuse_write

serve(Handler, "127.0.0.2")
"#;

static TOKEN_SERVER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SERVER_PRELUDE}{TOKEN_SERVER_BODY}"));
static TRAP_SERVER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SERVER_PRELUDE}{TRAP_SERVER_BODY}"));

/// A TLS registry whose bearer tokens come from a token server, with the
/// account `(user, password)`: what the auth tests start.
pub struct TokenRegistry {
    pub ca: TestCa,
    pub tokens: TokenServer,
    pub registry: super::registry::Registry,
}

pub const SERVICE: &str = "imgc-test-registry";
pub const ISSUER: &str = "imgc-test-issuer";
/// The refresh token (Docker's "identity token") the token server accepts for
/// the account of a [`TokenRegistry`].
pub const REFRESH_TOKEN: &str = "imgc-test-refresh-7f3a9c";

impl TokenRegistry {
    /// A registry behind `tokens` (plain HTTP on loopback unless `tls`),
    /// `extra_yaml` appended to its config.
    pub fn start(user: &str, password: &str, tls: bool, extra_yaml: &str) -> TokenRegistry {
        let ca = TestCa::new();
        let signing = ca.issue("token-signer", "DNS:token-signer", true);
        let tokens = TokenServer::start(TokenOpts {
            users: vec![(user.to_string(), password.to_string())],
            refresh_tokens: vec![(REFRESH_TOKEN.to_string(), user.to_string())],
            issuer: ISSUER.to_string(),
            service: SERVICE.to_string(),
            signing,
        });
        let tls = tls.then(|| {
            let pair = ca.issue("registry", "IP:127.0.0.1", false);
            super::registry::Tls {
                cert: pair.cert,
                key: pair.key,
                ca: ca.cert.clone(),
            }
        });
        let registry = super::registry::Registry::start(super::registry::RegistryOpts {
            token_auth: Some(super::registry::TokenAuth {
                realm: tokens.realm(),
                service: SERVICE.to_string(),
                issuer: ISSUER.to_string(),
                rootcertbundle: ca.cert.clone(),
                account: (user.to_string(), password.to_string()),
            }),
            tls,
            extra_yaml: extra_yaml.to_string(),
            ..Default::default()
        });
        TokenRegistry {
            ca,
            tokens,
            registry,
        }
    }
}

/// `curl` with the test CA: (status, body).
pub fn curl(args: &[&str], ca: Option<&Path>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "60", "-w", "\n%{http_code}"]);
    if let Some(ca) = ca {
        c.arg("--cacert").arg(ca);
    }
    let out = c.args(args).output().expect("cannot run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The harness itself, with curl and skopeo: tokens are issued only for the
/// right password and let skopeo push and pull; the TLS registry answers with
/// the test CA; blob requests are redirected to the trap, which serves them.
#[test]
fn the_auth_harness_issues_tokens_serves_tls_and_redirects_blobs() {
    let trap = Trap::start();
    let tr = TokenRegistry::start("bob", "b0b pass", true, &redirect_yaml(&trap.url()));
    let reg = &tr.registry;
    trap.serve_from(&reg.storage());
    assert!(reg.url().starts_with("https://"));

    // TLS with the test CA; the bearer challenge names the token server.
    let (status, _) = curl(
        &["-D", "-", &format!("{}/v2/", reg.url())],
        Some(&tr.ca.cert),
    );
    assert_eq!(status, 401);
    let mut c = Command::new("curl");
    let out = c
        .args(["-s", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(&tr.ca.cert)
        .arg(format!("{}/v2/", reg.url()))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.contains(&format!(
            "www-authenticate: bearer realm=\"{}\"",
            tr.tokens.realm()
        )),
        "{head}"
    );
    // Without the CA, curl refuses the certificate.
    assert_eq!(curl(&[&format!("{}/v2/", reg.url())], None).0, 0);

    // Tokens: wrong password refused, anonymous gets no access, right one works.
    let token_url = format!(
        "{}?service={SERVICE}&scope=repository:harness/app:pull,push",
        tr.tokens.realm()
    );
    assert_eq!(curl(&["-u", "bob:wrong", &token_url], None).0, 401);
    let (status, body) = curl(&["-u", "bob:b0b pass", &token_url], None);
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = curl(
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/v2/", reg.url()),
        ],
        Some(&tr.ca.cert),
    );
    assert_eq!(status, 200, "{}", reg.logs());

    // skopeo pushes with the account and reads the image back.
    let ws = super::small_ws();
    ws.ok(&["build", "//..."]);
    let layout = ws.layout("app", "app");
    reg.skopeo_push(&layout, "harness/app:1", false);
    let back = tempfile::tempdir().unwrap();
    reg.skopeo_pull("harness/app:1", &back.path().join("oci"));
    assert_eq!(
        super::manifest_of(&layout).to_string(),
        super::manifest_of(&back.path().join("oci")).to_string()
    );
    let reqs = tr.tokens.requests();
    assert!(
        reqs.iter()
            .any(|r| r.authorization == "basic" && r.subject == "bob" && r.status == 200),
        "{reqs:?}"
    );
    assert!(reqs.iter().any(|r| r.status == 401), "{reqs:?}");

    // A blob GET is redirected to the trap, which serves its bytes.
    let config = super::manifest_of(&layout)["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let token_url = format!(
        "{}?service={SERVICE}&scope=repository:harness/app:pull",
        tr.tokens.realm()
    );
    let (_, body) = curl(&["-u", "bob:b0b pass", &token_url], None);
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let blob_url = format!("{}/v2/harness/app/blobs/{config}", reg.url());
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--cacert",
        ])
        .arg(&tr.ca.cert)
        .args(["-H", &format!("Authorization: Bearer {token}"), &blob_url])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(answer.starts_with("307 http://127.0.0.2:"), "{answer}");
    let target = answer.split_once(' ').unwrap().1.to_string();
    let (status, body) = curl(&[&target], None);
    assert_eq!(status, 200);
    let blob = fs::read(
        layout
            .join("blobs/sha256")
            .join(config.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(body.as_bytes(), &blob[..]);
    // skopeo's pull was redirected too; neither it nor curl sent credentials.
    let seen = trap.requests();
    assert!(seen.len() > 1, "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.header("authorization").is_none() && r.status == 200),
        "{seen:?}"
    );
    // The trap does record a credential that reaches it.
    curl(&["-H", "Authorization: Basic dHJhcDp0cmFw", &target], None);
    let last = trap.requests().pop().unwrap();
    assert_eq!(last.header("authorization"), Some("Basic dHJhcDp0cmFw"));
}
