//! Registry authentication, tested as an attacker would: credentials from each
//! source reach the registry they belong to and nothing else (not another host
//! after a redirect, not any output, log, cache or output file); bearer tokens
//! and TLS with a private CA work end to end.
//!
//! Every server is started by the test on loopback ([`support::registry`],
//! [`support::auth`]) and stopped by its PID. The `imgc` process gets a
//! private `HOME` and only the credential variables a test gives it, so the
//! machine's own `~/.docker/config.json` is never read.

use crate::support::auth::{self, TokenRegistry, Trap, redirect_yaml};
use crate::support::registry::{Registry, RegistryOpts};
use crate::support::{self, Ws};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const USER: &str = "ci-bot";
const PASSWORD: &str = "Tr0ub4dor&3-registry-pw";

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The strings that must never appear anywhere: the password, and the
/// base64 of `user:password` (a Basic header or an `auth` field).
fn secrets(user: &str, password: &str) -> Vec<String> {
    vec![password.to_string(), b64(&format!("{user}:{password}"))]
}

/// What the imgc process sees of credentials: a private HOME, and only what
/// the test sets.
struct Env {
    home: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new() -> Env {
        Env {
            home: tempfile::tempdir().unwrap(),
            vars: Vec::new(),
        }
    }

    fn set(mut self, k: &str, v: &str) -> Env {
        self.vars.push((k.to_string(), v.to_string()));
        self
    }

    /// `IMGC_REGISTRY_*` for `host`.
    fn imgc_env(self, host: &str, user: &str, password: &str) -> Env {
        self.set("IMGC_REGISTRY_HOST", host)
            .set("IMGC_REGISTRY_USERNAME", user)
            .set("IMGC_REGISTRY_PASSWORD", password)
    }

    /// A Docker config directory (`DOCKER_CONFIG`) holding `json`.
    fn docker_config(self, json: &str) -> Env {
        let dir = self.home.path().join("docker-config");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), json).unwrap();
        let dir = dir.to_str().unwrap().to_string();
        self.set("DOCKER_CONFIG", &dir)
    }

    /// A `docker-credential-NAME` on the PATH given to imgc, answering `user`
    /// and `password` for `host` only ("credentials not found" otherwise), and
    /// recording each host it was asked for in `NAME.asked` in HOME.
    fn helper(self, name: &str, host: &str, user: &str, password: &str) -> Env {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.home.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let asked = self.home.path().join(format!("{name}.asked"));
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r host\necho \"$host\" >> '{asked}'\n\
             if [ \"$host\" = '{host}' ]; then\n\
               printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}\\n' \"$host\"\n\
             else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
            asked = asked.display()
        );
        let path = bin.join(format!("docker-credential-{name}"));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let search = format!("{}:/usr/bin:/bin", bin.display());
        self.set("PATH", &search)
    }

    fn asked(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.home.path().join(format!("{name}.asked")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `imgc ARGS` in `ws` with this environment.
    fn cmd(&self, ws: &Ws, args: &[&str]) -> Command {
        let mut c = ws.cmd(args);
        for k in [
            "IMGC_REGISTRY_HOST",
            "IMGC_REGISTRY_USERNAME",
            "IMGC_REGISTRY_PASSWORD",
            "DOCKER_CONFIG",
            "REGISTRY_AUTH_FILE",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "XDG_RUNTIME_DIR",
        ] {
            c.env_remove(k);
        }
        c.env("HOME", self.home.path());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    fn run(&self, ws: &Ws, args: &[&str]) -> Output {
        self.cmd(ws, args).output().unwrap()
    }

    fn ok(&self, ws: &Ws, args: &[&str]) -> Output {
        let out = self.run(ws, args);
        assert!(
            out.status.success(),
            "imgc {args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            support::stdout(&out),
            support::stderr(&out)
        );
        out
    }
}

/// Every file under `dir` whose bytes contain one of `needles`.
fn files_containing(dir: &Path, needles: &[String]) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            needles
                .iter()
                .any(|n| bytes.windows(n.len()).any(|w| w == n.as_bytes()))
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

fn assert_no_secret(what: &str, text: &str, needles: &[String]) {
    for n in needles {
        assert!(
            !text.contains(n.as_str()),
            "{what} holds a credential:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// In-process: the client with credentials from `registry::credentials`

use imgc::cas::Cas;
use imgc::hash::Digest;
use imgc::registry::Reference;
use imgc::registry::client::{Client, ClientOptions};
use imgc::registry::credentials::{Credentials, Secret, Sources};
use imgc::registry::pull::fetch_image;
use imgc::spec::model::Platform;
use std::sync::Arc;

fn client(credentials: Credentials) -> Client {
    let mut opts = ClientOptions::anonymous();
    opts.credentials = Arc::new(credentials);
    Client::new(opts)
}

/// Credentials from `IMGC_REGISTRY_*`-style sources for one host.
fn env_credentials(host: &str, user: &str, password: &str) -> Credentials {
    Credentials::from_sources(Sources {
        env_host: Some(host.to_string()),
        env_username: Some(user.to_string()),
        env_password: Some(Secret::new(password)),
        ..Sources::default()
    })
    .unwrap()
}

/// A Docker config with an identity token for `host`.
fn identity_token_credentials(dir: &Path, host: &str, token: &str) -> Credentials {
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"identitytoken":"{token}"}}}}}}"#),
    )
    .unwrap();
    Credentials::from_sources(Sources {
        docker_config_dir: Some(dir.to_path_buf()),
        ..Sources::default()
    })
    .unwrap()
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

fn layout_manifest_digest(dir: &Path) -> Digest {
    support::layout_digest(dir).parse().unwrap()
}

/// The small workspace, built; its app image pushed by skopeo as `repo:1`.
/// Returns the workspace and the pinned reference.
fn skopeo_pushed_app(reg: &Registry, repo: &str) -> (Ws, Reference) {
    let ws = support::small_ws();
    ws.ok(&["build", "//..."]);
    let layout = ws.layout("app", "app");
    reg.skopeo_push(&layout, &format!("{repo}:1"), false);
    let digest = layout_manifest_digest(&layout);
    let r = Reference::parse(&format!("{}/{repo}:1@{digest}", reg.host())).unwrap();
    (ws, r)
}

#[test]
fn a_token_registry_serves_a_pull_with_a_password_or_an_identity_token() {
    let tr = TokenRegistry::start(USER, PASSWORD, false, "");
    let reg = &tr.registry;
    let (ws, r) = skopeo_pushed_app(reg, "team/app");

    // Username and password: Basic to the token server, then the token.
    let store = tempfile::tempdir().unwrap();
    let cas = Cas::open(store.path()).unwrap();
    let pulled = fetch_image(
        &client(env_credentials(&reg.host(), USER, PASSWORD)),
        &r,
        &amd64(),
        &cas,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pulled.manifest_digest,
        layout_manifest_digest(&ws.layout("app", "app"))
    );
    let issued: Vec<_> = tr.tokens.requests();
    assert!(
        issued.iter().any(|t| t.method == "GET"
            && t.authorization == "basic"
            && t.subject == USER
            && t.scopes == ["repository:team/app:pull"]),
        "{issued:?}"
    );

    // An identity token: the refresh-token grant, no password anywhere.
    let conf = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let cas = Cas::open(store.path()).unwrap();
    let creds = identity_token_credentials(conf.path(), &reg.host(), auth::REFRESH_TOKEN);
    fetch_image(&client(creds), &r, &amd64(), &cas).unwrap_or_else(|e| panic!("{e}"));
    let issued = tr.tokens.requests();
    assert!(
        issued
            .iter()
            .any(|t| t.method == "POST" && t.grant == "refresh_token" && t.subject == USER),
        "{issued:?}"
    );

    // A wrong password: refused by the token server, with a clear error that
    // holds no credential.
    let store = tempfile::tempdir().unwrap();
    let cas = Cas::open(store.path()).unwrap();
    let err = fetch_image(
        &client(env_credentials(&reg.host(), USER, "wrong-pw-0451")),
        &r,
        &amd64(),
        &cas,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&reg.host()), "{err}");
    let mut needles = secrets(USER, "wrong-pw-0451");
    needles.extend(secrets(USER, PASSWORD));
    assert_no_secret("the error", &err, &needles);

    // Anonymous: the token server grants nothing, the registry refuses.
    let err = fetch_image(&Client::new(ClientOptions::anonymous()), &r, &amd64(), &cas)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&reg.host()), "{err}");
    assert_no_secret("the token server's logs", &tr.tokens.all_logs(), &needles);
    assert_no_secret("the registry's log", &reg.logs(), &needles);
}

/// A registry that redirects blob requests to another host (the trap on
/// 127.0.0.2, as S3 or a CDN would be): the client follows the redirect with
/// no `Authorization` header, with Basic auth and with bearer tokens alike.
#[test]
fn a_redirect_to_another_host_never_carries_credentials() {
    for bearer in [false, true] {
        let trap = Trap::start();
        let (reg, _tokens) = if bearer {
            let tr = TokenRegistry::start(USER, PASSWORD, false, &redirect_yaml(&trap.url()));
            (tr.registry, Some((tr.tokens, tr.ca)))
        } else {
            let mut opts = RegistryOpts::with_basic_auth(USER, PASSWORD);
            opts.extra_yaml = redirect_yaml(&trap.url());
            (Registry::start(opts), None)
        };
        trap.serve_from(&reg.storage());
        let (ws, r) = skopeo_pushed_app(&reg, "team/app");
        let before = trap.requests().len();

        let store = tempfile::tempdir().unwrap();
        let cas = Cas::open(store.path()).unwrap();
        let pulled = fetch_image(
            &client(env_credentials(&reg.host(), USER, PASSWORD)),
            &r,
            &amd64(),
            &cas,
        )
        .unwrap_or_else(|e| panic!("bearer {bearer}: {e}"));
        let layout = ws.layout("app", "app");
        for d in &pulled.blobs {
            let ours = std::fs::read(cas.blob_path(d)).unwrap();
            let theirs = std::fs::read(layout.join("blobs/sha256").join(d.hex())).unwrap();
            assert!(ours == theirs, "blob {d} differs");
        }
        let seen = &trap.requests()[before..];
        let blob_gets = seen
            .iter()
            .filter(|t| t.method == "GET" && t.status == 200)
            .count();
        assert_eq!(blob_gets, pulled.blobs_fetched, "bearer {bearer}: {seen:?}");
        for t in seen {
            assert_eq!(t.header("authorization"), None, "bearer {bearer}: {t:?}");
        }
        assert_no_secret("the trap's log", &trap.all_logs(), &secrets(USER, PASSWORD));
        // The registry did redirect those GETs.
        let redirects = reg
            .access_log()
            .iter()
            .filter(|l| l.status == 307 && l.path().contains("/blobs/sha256:"))
            .count();
        assert!(redirects >= pulled.blobs_fetched, "bearer {bearer}");

        // `imgc push`, twice: the second push's HEADs of blobs the registry
        // has are redirected to the trap too.
        let env = Env::new().imgc_env(&reg.host(), USER, PASSWORD);
        let namespace = format!("{}/pushed", reg.host());
        let before = trap.requests().len();
        for _ in 0..2 {
            push_json(&env, &ws, &["//...", "--registry", &namespace]);
        }
        let seen = &trap.requests()[before..];
        assert!(
            seen.iter().any(|t| t.method == "HEAD" && t.status == 200),
            "bearer {bearer}: no blob HEAD was redirected: {seen:?}"
        );
        for t in seen {
            assert_eq!(t.header("authorization"), None, "bearer {bearer}: {t:?}");
        }
        assert_no_secret("the trap's log", &trap.all_logs(), &secrets(USER, PASSWORD));
    }
}

// ---------------------------------------------------------------------------
// The `imgc` command: credentials from each source, for a `registry` import

/// A workspace whose `//app:app` is built on `registry "REFERENCE"`.
fn consumer(reference: &Reference) -> Ws {
    Ws::new(&[
        (
            "imgc.kdl",
            "workspace {\n    source-date-epoch 1700000000\n}\n",
        ),
        (
            "third_party/BUILD.kdl",
            &format!("import \"base\" {{\n    registry \"{reference}\"\n}}\n"),
        ),
        (
            "app/BUILD.kdl",
            "image \"app\" {\n    from \"//third_party:base\"\n    layer {\n        text \"/app/v\" \"1\\n\"\n    }\n}\n",
        ),
    ])
}

/// A basic-auth registry holding the small workspace's app image; a consumer
/// workspace built on it.
fn basic_registry_and_consumer() -> (Registry, Ws, Ws) {
    let reg = Registry::start(RegistryOpts::with_basic_auth(USER, PASSWORD));
    let (upstream, r) = skopeo_pushed_app(&reg, "team/base");
    (reg, upstream, consumer(&r))
}

/// Without credentials the build is refused by the registry (so a test whose
/// build passes did use the credentials it was given), with a message naming
/// the host and how to log in.
fn assert_refused_without_credentials(reg: &Registry, ws: &Ws) {
    assert_refused(&Env::new(), reg, ws);
}

/// The build in `env` is refused by the registry for want of credentials.
fn assert_refused(env: &Env, reg: &Registry, ws: &Ws) {
    let out = env.run(ws, &["build", "//..."]);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(
        err.contains(&format!("authentication required for {}", reg.host())),
        "{err}"
    );
}

#[test]
fn credentials_come_from_docker_config_auths() {
    let (reg, _up, ws) = basic_registry_and_consumer();
    assert_refused_without_credentials(&reg, &ws);
    let env = Env::new().docker_config(&format!(
        r#"{{"auths":{{"http://{}/v2/":{{"auth":"{}"}}}}}}"#,
        reg.host(),
        b64(&format!("{USER}:{PASSWORD}"))
    ));
    env.ok(&ws, &["build", "//..."]);
    assert!(ws.layout("app", "app").join("index.json").is_file());
}

#[test]
fn credentials_come_from_registry_auth_file() {
    let (reg, _up, ws) = basic_registry_and_consumer();
    let env = Env::new();
    let file = env.home.path().join("auth.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.host(),
            b64(&format!("{USER}:{PASSWORD}"))
        ),
    )
    .unwrap();
    let env = env.set("REGISTRY_AUTH_FILE", file.to_str().unwrap());
    env.ok(&ws, &["build", "//..."]);
}

#[test]
fn credentials_come_from_a_credential_helper() {
    let (reg, _up, ws) = basic_registry_and_consumer();
    let env = Env::new()
        .helper("testhelper", &reg.host(), USER, PASSWORD)
        .docker_config(&format!(
            r#"{{"credHelpers":{{"{}":"testhelper"}}}}"#,
            reg.host()
        ));
    env.ok(&ws, &["build", "//..."]);
    // Asked once, for this registry, with Docker's spelling of it.
    assert_eq!(env.asked("testhelper"), [reg.host()]);
}

#[test]
fn credentials_come_from_creds_store() {
    let (reg, _up, ws) = basic_registry_and_consumer();
    let env = Env::new()
        .helper("testhelper", &reg.host(), USER, PASSWORD)
        .docker_config(r#"{"auths":{},"credsStore":"testhelper"}"#);
    env.ok(&ws, &["build", "//..."]);
    assert_eq!(env.asked("testhelper"), [reg.host()]);

    // A store that holds nothing for the host: anonymous, refused.
    let (reg2, _up2, ws2) = basic_registry_and_consumer();
    let env = Env::new()
        .helper("testhelper", "elsewhere.example", USER, PASSWORD)
        .docker_config(r#"{"credsStore":"testhelper"}"#);
    assert_refused(&env, &reg2, &ws2);
}

#[test]
fn credentials_come_from_imgc_registry_env() {
    let (reg, _up, ws) = basic_registry_and_consumer();
    // For another host they are not used.
    let out = Env::new()
        .imgc_env("registry.example.com", USER, PASSWORD)
        .run(&ws, &["build", "//..."]);
    assert!(!out.status.success());
    // Half a set is an error naming what is missing, never a value.
    let out = Env::new()
        .set("IMGC_REGISTRY_HOST", &reg.host())
        .set("IMGC_REGISTRY_PASSWORD", PASSWORD)
        .run(&ws, &["build", "//..."]);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(err.contains("`IMGC_REGISTRY_USERNAME`"), "{err}");
    assert_no_secret("stderr", &err, &secrets(USER, PASSWORD));
    assert_no_secret("stdout", &support::stdout(&out), &secrets(USER, PASSWORD));

    Env::new()
        .imgc_env(&reg.host(), USER, PASSWORD)
        .ok(&ws, &["build", "//..."]);
}

// ---------------------------------------------------------------------------
// Nothing prints or stores a credential

/// Everything a run left where a credential could leak: its stdout and stderr,
/// every file of the workspace (specs, `imgc-out`), the cache directory, the
/// private HOME (but the credential file the test itself wrote there), and the
/// servers' logs and files.
struct Leaks {
    needles: Vec<String>,
    outputs: Vec<(String, String)>,
}

impl Leaks {
    fn new(needles: Vec<String>) -> Leaks {
        Leaks {
            needles,
            outputs: Vec::new(),
        }
    }

    fn record(&mut self, what: &str, out: &Output) {
        self.outputs
            .push((format!("stdout of {what}"), support::stdout(out)));
        self.outputs
            .push((format!("stderr of {what}"), support::stderr(out)));
    }

    fn check_text(&self, what: &str, text: &str) {
        assert_no_secret(what, text, &self.needles);
    }

    fn check_dir(&self, dir: &Path, except: &[&Path]) {
        let found: Vec<_> = files_containing(dir, &self.needles)
            .into_iter()
            .filter(|p| !except.iter().any(|e| p.starts_with(e)))
            .collect();
        assert!(found.is_empty(), "files hold a credential: {found:?}");
    }

    fn check_outputs(&self) {
        assert!(!self.outputs.is_empty());
        for (what, text) in &self.outputs {
            self.check_text(what, text);
        }
    }
}

#[test]
fn no_credential_appears_in_any_output_or_log() {
    const WRONG: &str = "Wr0ng-but-still-secret-77";
    for bearer in [false, true] {
        let tr;
        let reg = if bearer {
            tr = Some(TokenRegistry::start(USER, PASSWORD, false, ""));
            &tr.as_ref().unwrap().registry
        } else {
            tr = None;
            &Registry::start(RegistryOpts::with_basic_auth(USER, PASSWORD))
        };
        let (_up, r) = skopeo_pushed_app(reg, "team/base");
        let ws = consumer(&r);
        let mut needles = secrets(USER, PASSWORD);
        needles.extend(secrets(USER, WRONG));
        let mut leaks = Leaks::new(needles);
        let wrong_env = Env::new().imgc_env(&reg.host(), USER, WRONG);
        let wrong_config = Env::new().docker_config(&format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.host(),
            b64(&format!("{USER}:{WRONG}"))
        ));
        let right = Env::new().imgc_env(&reg.host(), USER, PASSWORD);

        let namespace = format!("{}/leak", reg.host());
        // Refused: a clear error naming the registry, in every format.
        for (how, env) in [("env", &wrong_env), ("config", &wrong_config)] {
            for args in [
                &["build", "//..."][..],
                &["build", "//...", "--message-format", "json"][..],
                &["push", "//...", "--registry", &namespace][..],
                &[
                    "push",
                    "//...",
                    "--registry",
                    &namespace,
                    "--output",
                    "json",
                ][..],
            ] {
                let out = env.run(&ws, args);
                assert!(!out.status.success(), "{how} {args:?} (bearer {bearer})");
                let all = format!("{}{}", support::stdout(&out), support::stderr(&out));
                assert!(all.contains(&reg.host()), "{how} {args:?}: {all}");
                leaks.record(&format!("{how} {args:?} (bearer {bearer})"), &out);
            }
        }
        // Accepted, in every format; `imgc pin --update` asks the registry too.
        for args in [
            &["build", "//...", "--message-format", "json"][..],
            &["build", "//..."][..],
            &["pin", "--update"][..],
            &[
                "push",
                "//...",
                "--registry",
                &namespace,
                "--output",
                "json",
            ][..],
            &["push", "//...", "--registry", &namespace][..],
        ] {
            let out = right.ok(&ws, args);
            leaks.record(&format!("{args:?} (bearer {bearer})"), &out);
        }

        leaks.check_outputs();
        leaks.check_dir(ws.root(), &[]);
        leaks.check_dir(ws.cache.path(), &[]);
        for env in [&wrong_env, &wrong_config, &right] {
            leaks.check_dir(env.home.path(), &[&env.home.path().join("docker-config")]);
        }
        // The grep finds what is there: the config file the test wrote.
        assert!(!files_containing(wrong_config.home.path(), &leaks.needles).is_empty());
        leaks.check_dir(reg.dir(), &[]);
        leaks.check_text("the registry's log", &reg.logs());
        if let Some(tr) = &tr {
            leaks.check_text("the token server's logs", &tr.tokens.all_logs());
            // The wrong password was refused by the token server.
            assert!(tr.tokens.requests().iter().any(|t| t.status == 401));
        }
    }
}

// ---------------------------------------------------------------------------
// `imgc push` through the auth flows

/// The JSON lines of `imgc push ARGS --output json`, which must succeed.
fn push_json(env: &Env, ws: &Ws, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["push"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    support::stdout(&env.ok(ws, &all))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(label, reference, digest)` of each image a push reported.
fn pushed(lines: &[serde_json::Value]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter(|l| l["event"] == "pushed")
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap().to_string();
            (s("label"), s("reference"), s("digest"))
        })
        .collect()
}

/// `skopeo inspect --raw` of `reference` with the account: the manifest's
/// digest as the registry serves it.
fn skopeo_digest(reference: &str, user: &str, password: &str) -> String {
    let raw = support::run(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
            .arg(format!("{user}:{password}"))
            .arg(format!("docker://{reference}")),
    );
    Digest::of_bytes(raw.as_bytes()).to_string()
}

#[test]
fn bearer_token_flow_pushes_and_pulls() {
    let tr = TokenRegistry::start(USER, PASSWORD, false, "");
    let reg = &tr.registry;
    let ws = Ws::copy_of(&support::spec_examples());
    let env = Env::new().imgc_env(&reg.host(), USER, PASSWORD);
    let namespace = format!("{}/acme", reg.host());
    let lines = push_json(&env, &ws, &["//...", "--registry", &namespace]);
    let images = pushed(&lines);
    assert!(images.len() >= 4, "{lines:?}");
    // skopeo reads each back with the same account: our manifest, by digest.
    for (label, reference, digest) in &images {
        assert_eq!(&skopeo_digest(reference, USER, PASSWORD), digest, "{label}");
    }
    // Tokens for pushing were issued to the account, after a Basic login.
    let issued = tr.tokens.requests();
    assert!(
        issued.iter().any(|t| t.authorization == "basic"
            && t.subject == USER
            && t.status == 200
            && t.scopes.iter().any(|s| s.ends_with(":pull,push"))),
        "{issued:?}"
    );

    // imgc pulls one back as a pinned base and builds on it.
    let (_, reference, digest) = &images[0];
    let pinned = Reference::parse(&format!("{}@{digest}", reference)).unwrap();
    let consumer = consumer(&pinned);
    env.ok(&consumer, &["build", "//..."]);
    assert!(consumer.layout("app", "app").join("index.json").is_file());
    // Without the account, neither works (a fresh workspace and cache: the
    // first one has the base cached).
    let out = Env::new().run(&self::consumer(&pinned), &["build", "//..."]);
    assert!(!out.status.success());
    let out = Env::new().run(&ws, &["push", "//...", "--registry", &namespace]);
    assert!(!out.status.success());
    assert_no_secret("stderr", &support::stderr(&out), &secrets(USER, PASSWORD));
}

/// A loopback registry is tried over `https` first: one that speaks TLS is
/// reached over TLS, verified, and never over plain HTTP.
#[test]
fn https_registry_with_a_test_ca_works_and_plain_http_to_a_non_loopback_host_is_refused() {
    // A registry on TLS with a certificate from the test's own CA, behind
    // bearer tokens; imgc trusts the CA through SSL_CERT_FILE.
    let tr = TokenRegistry::start(USER, PASSWORD, true, "");
    let reg = &tr.registry;
    let ws = support::small_ws();
    let namespace = format!("{}/tls", reg.host());
    let ca = tr.ca.cert.to_str().unwrap();
    let env = Env::new()
        .imgc_env(&reg.host(), USER, PASSWORD)
        .set("SSL_CERT_FILE", ca);
    let images = pushed(&push_json(&env, &ws, &["//...", "--registry", &namespace]));
    assert_eq!(images.len(), 2, "{images:?}");
    for (label, reference, digest) in &images {
        assert_eq!(&skopeo_digest(reference, USER, PASSWORD), digest, "{label}");
    }
    // The requests were served over TLS: the registry logged them.
    assert!(
        reg.access_log()
            .iter()
            .any(|l| l.is_manifest_put() && l.status == 201)
    );
    // And pulled back over TLS as a pinned base.
    let (_, reference, digest) = &images[0];
    let pinned = Reference::parse(&format!("{reference}@{digest}")).unwrap();
    env.ok(&consumer(&pinned), &["build", "//..."]);

    // Without the CA the certificate is not trusted: a clear error, and no
    // fall back to plain HTTP.
    let untrusted = Env::new().imgc_env(&reg.host(), USER, PASSWORD);
    let logged = reg.access_log().len();
    let out = untrusted.run(&consumer(&pinned), &["build", "//..."]);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(err.contains(&reg.host()), "{err}");
    assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
    // No request reached the registry (a handshake that failed is not logged).
    let after = reg.access_log();
    assert_eq!(after.len(), logged, "{:?}", &after[logged..]);

    plain_http_token_realm_on_another_host_is_refused();
}

/// The second half of the test above, on its own (it needs no TLS): a
/// registry whose token realm is plain HTTP on a non-loopback host.
#[test]
fn a_plain_http_token_realm_on_another_host_is_refused_before_any_connection() {
    plain_http_token_realm_on_another_host_is_refused();
}

fn plain_http_token_realm_on_another_host_is_refused() {
    let ca = auth::TestCa::new();
    let ws = support::small_ws();
    // A registry whose token realm is plain HTTP on another (non-loopback)
    // host: imgc refuses to send the credentials there, before connecting.
    let realm = "http://auth.imgc-test.invalid/token";
    let plain = Registry::start(RegistryOpts {
        token_auth: Some(crate::support::registry::TokenAuth {
            realm: realm.to_string(),
            service: auth::SERVICE.to_string(),
            issuer: auth::ISSUER.to_string(),
            rootcertbundle: ca.cert.clone(),
            account: (USER.to_string(), PASSWORD.to_string()),
        }),
        ..Default::default()
    });
    let env = Env::new().imgc_env(&plain.host(), USER, PASSWORD);
    let out = env.run(
        &ws,
        &[
            "push",
            "//...",
            "--registry",
            &format!("{}/x", plain.host()),
        ],
    );
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(err.contains("auth.imgc-test.invalid"), "{err}");
    assert!(err.contains("plain http"), "{err}");
    assert_no_secret("stderr", &err, &secrets(USER, PASSWORD));
}
