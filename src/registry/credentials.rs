//! Registry credentials: where they come from, and how they are kept out of
//! every output.
//!
//! # Sources and precedence
//!
//! [`Credentials::from_env`] reads the environment and the credential files
//! once; [`Credentials::for_registry`] then answers per registry host, the
//! first source that has something for that host winning:
//!
//! 1. `IMGC_REGISTRY_HOST` + `IMGC_REGISTRY_USERNAME` + `IMGC_REGISTRY_PASSWORD`,
//!    for CI. They apply to the one host named by `IMGC_REGISTRY_HOST` and to no
//!    other. All three or none: a partial set is an error naming the missing
//!    variables (never a value). An empty variable counts as unset.
//! 2. `REGISTRY_AUTH_FILE`: podman's and skopeo's `auth.json` (the same format
//!    as Docker's).
//! 3. `$DOCKER_CONFIG/config.json` when `DOCKER_CONFIG` is set, else
//!    `$HOME/.docker/config.json`.
//!
//! Within one file, for a host: `credHelpers[host]` (run
//! `docker-credential-NAME get`), then `auths[host]` (an `identitytoken`, else
//! `auth`, the base64 of `user:password`, else `username` + `password`), then
//! `credsStore` (a helper for every host). An `auths` entry with none of those
//! (Docker writes `{}` beside a `credsStore`) is no answer, and the search goes
//! on. A helper that answers "credentials not found" is no answer either: the
//! next source is asked, and with none left the registry is used anonymously.
//!
//! Keys are matched as Docker matches them: a key may be a URL
//! (`https://index.docker.io/v1/`, `https://host:5000/v2/`) or a bare
//! `host[:port]`; the scheme and any path are dropped and the host compared
//! without case. Docker Hub's names (`docker.io`, `index.docker.io`,
//! `registry-1.docker.io`, `https://index.docker.io/v1/`) are one host. When
//! several keys name the same host, a key spelt exactly as asked wins, then the
//! first in sorted order. A helper is asked with Docker's spelling:
//! `https://index.docker.io/v1/` for Docker Hub, `host[:port]` otherwise.
//!
//! # What is never printed
//!
//! Passwords, identity tokens and helper secrets are held in [`Secret`], whose
//! `Debug` and `Display` print `<redacted>`, which cannot be serialized, and
//! which is zeroed when dropped (copies made by the JSON reader on the way in
//! are not). Errors name the file, the host, the variable or the helper, and
//! the position of a JSON error, never a file's content: serde's own messages
//! can quote a value, so they are not passed on. A helper's stderr is not read
//! (it is discarded, as it may hold anything), and its stdout is never quoted;
//! a failing helper is reported by its name and exit status.
//!
//! Helpers are run with a bounded output (64 KiB) and a time limit (30 s), at
//! most once per host per run (answers are remembered), and only when a host's
//! credentials are asked for. They are looked up on the `PATH` given to
//! [`Sources`] (the process's `PATH` for [`Credentials::from_env`]), by a name
//! of letters, digits, `.`, `_` and `-` only, so a config file cannot name a
//! program by path.
//!
//! # Not supported
//!
//! - `credsStore` or `credHelpers` naming a helper that is not installed (e.g.
//!   `desktop` or `osxkeychain` in a config file copied from a Mac) is an error
//!   for the hosts it covers: those helpers work only where they exist.
//! - Repository-scoped keys of podman's `auth.json` (`quay.io/org`) are not
//!   used: credentials are chosen per registry host. URL keys keep working.
//! - `registrytoken` (a bearer token written into the file) is not read.
//!
//! # Why not the `docker_credential` crate
//!
//! It reads the same files, but it runs helpers through the process's `PATH`
//! with neither a time limit nor an output bound, puts a failing helper's
//! stdout and stderr into its error's message (where a secret may be), treats
//! "credentials not found" as a failure rather than as anonymous access,
//! returns secrets as plain `String`s, and does not match Docker Hub's aliases.
//! The reader here is small (serde and one `Command`).

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a credential helper may run.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// How much a credential helper may print.
pub const HELPER_OUTPUT_LIMIT: usize = 64 * 1024;

/// The environment variables of the CI source.
pub const ENV_HOST: &str = "IMGC_REGISTRY_HOST";
pub const ENV_USERNAME: &str = "IMGC_REGISTRY_USERNAME";
pub const ENV_PASSWORD: &str = "IMGC_REGISTRY_PASSWORD";

/// Docker Hub as Docker's credential stores spell it.
const DOCKER_HUB_INDEX: &str = "https://index.docker.io/v1/";

/// A password or token. Printing it, in either form, prints `<redacted>`; it is
/// zeroed when dropped. Use [`Secret::expose`] only where it is sent to the
/// registry it belongs to.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: for an `Authorization` header or a token request
    /// body, never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// What to present to a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// HTTP Basic, or the username and password of a token request.
    Basic { username: String, password: Secret },
    /// An OAuth2 refresh token (`docker login` to some registries stores one):
    /// exchanged at the token endpoint with `grant_type=refresh_token`.
    IdentityToken(Secret),
}

/// A credential and where it was found (for messages: `auths` in a file, a
/// helper's name, the environment), never the credential itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub credential: Credential,
    pub source: String,
}

/// Why credentials could not be read. No message contains a credential or a
/// file's content.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    #[error(
        "{missing} must be set with {present}: give all of `{ENV_HOST}`, `{ENV_USERNAME}` and `{ENV_PASSWORD}`, or none"
    )]
    EnvIncomplete { present: String, missing: String },
    #[error("`{0}` is not valid UTF-8")]
    EnvNotUtf8(&'static str),
    #[error("cannot read the credentials file `{}`: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the credentials file `{}` is not valid: {what} at line {line}, column {column}", path.display())]
    Malformed {
        path: PathBuf,
        what: &'static str,
        line: usize,
        column: usize,
    },
    #[error("the credentials file `{}` has an unusable entry for `{host}` in `auths`: {why}", path.display())]
    BadEntry {
        path: PathBuf,
        host: String,
        why: &'static str,
    },
    #[error(
        "`{helper}` (named by {named_by}) is not a valid credential helper name: use letters, digits, `.`, `_` and `-`"
    )]
    HelperName { helper: String, named_by: String },
    #[error("the credential helper `{helper}` (named by {named_by}) is not on PATH")]
    HelperNotFound { helper: String, named_by: String },
    #[error("cannot run the credential helper `{helper}` for `{host}`: {error}")]
    HelperSpawn {
        helper: String,
        host: String,
        error: std::io::Error,
    },
    #[error(
        "the credential helper `{helper}` failed for `{host}` ({status}); its output is not shown as it may hold secrets"
    )]
    HelperFailed {
        helper: String,
        host: String,
        status: String,
    },
    #[error(
        "the credential helper `{helper}` did not answer for `{host}` within {secs} s and was stopped"
    )]
    HelperTimeout {
        helper: String,
        host: String,
        secs: u64,
    },
    #[error(
        "the credential helper `{helper}` printed more than {limit} bytes for `{host}` and was stopped"
    )]
    HelperTooMuch {
        helper: String,
        host: String,
        limit: usize,
    },
    #[error("the credential helper `{helper}` answered `{host}` with {why}")]
    HelperMalformed {
        helper: String,
        host: String,
        why: &'static str,
    },
}

/// Everything [`Credentials`] reads, so tests can hand it fake files and a
/// fake `PATH` without touching the process's environment.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `IMGC_REGISTRY_HOST`, `_USERNAME`, `_PASSWORD`.
    pub env_host: Option<String>,
    pub env_username: Option<String>,
    pub env_password: Option<Secret>,
    /// `REGISTRY_AUTH_FILE`.
    pub registry_auth_file: Option<PathBuf>,
    /// `DOCKER_CONFIG` (a directory).
    pub docker_config_dir: Option<PathBuf>,
    /// `HOME`, for `~/.docker/config.json` when `DOCKER_CONFIG` is not set.
    pub home: Option<PathBuf>,
    /// Where `docker-credential-*` helpers are looked up.
    pub path: Option<OsString>,
}

impl Sources {
    /// The process's environment.
    pub fn from_process_env() -> Result<Sources, CredError> {
        fn text(name: &'static str) -> Result<Option<String>, CredError> {
            match std::env::var_os(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(Some)
                    .map_err(|_| CredError::EnvNotUtf8(name)),
            }
        }
        fn path(name: &str) -> Option<PathBuf> {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        }
        Ok(Sources {
            env_host: text(ENV_HOST)?,
            env_username: text(ENV_USERNAME)?,
            env_password: text(ENV_PASSWORD)?.map(Secret),
            registry_auth_file: path("REGISTRY_AUTH_FILE"),
            docker_config_dir: path("DOCKER_CONFIG"),
            home: path("HOME"),
            path: std::env::var_os("PATH"),
        })
    }
}

/// The credentials of one run: the environment and config files read once,
/// helpers run lazily and their answers remembered. Shared between threads.
pub struct Credentials {
    env: Option<(String, String, Secret)>,
    files: Vec<ConfigFile>,
    path: Option<OsString>,
    helper_timeout: Duration,
    answers: Mutex<HashMap<String, Option<Found>>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("env_host", &self.env.as_ref().map(|(h, _, _)| h))
            .field(
                "files",
                &self.files.iter().map(|c| &c.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// No credentials: every registry is used anonymously.
    pub fn none() -> Credentials {
        Credentials {
            env: None,
            files: Vec::new(),
            path: None,
            helper_timeout: HELPER_TIMEOUT,
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the environment and the credential files (see the module docs).
    pub fn from_env() -> Result<Credentials, CredError> {
        Credentials::from_sources(Sources::from_process_env()?)
    }

    /// Reads the given sources. Files that do not exist are skipped; a file
    /// that exists but cannot be read or parsed is an error.
    pub fn from_sources(s: Sources) -> Result<Credentials, CredError> {
        let env = match (s.env_host, s.env_username, s.env_password) {
            (None, None, None) => None,
            (Some(h), Some(u), Some(p)) => Some((normalize_host(&h), u, p)),
            (h, u, p) => {
                let names = [
                    (ENV_HOST, h.is_some()),
                    (ENV_USERNAME, u.is_some()),
                    (ENV_PASSWORD, p.is_some()),
                ];
                let list = |set: bool| {
                    names
                        .iter()
                        .filter(|(_, is)| *is == set)
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                };
                return Err(CredError::EnvIncomplete {
                    present: list(true),
                    missing: list(false),
                });
            }
        };
        let mut files = Vec::new();
        if let Some(p) = s.registry_auth_file {
            files.extend(ConfigFile::read(&p)?);
        }
        let docker = match (s.docker_config_dir, s.home) {
            (Some(dir), _) => Some(dir.join("config.json")),
            (None, Some(home)) => Some(home.join(".docker").join("config.json")),
            (None, None) => None,
        };
        if let Some(p) = docker {
            files.extend(ConfigFile::read(&p)?);
        }
        Ok(Credentials {
            env,
            files,
            path: s.path,
            helper_timeout: HELPER_TIMEOUT,
            answers: Mutex::new(HashMap::new()),
        })
    }

    /// The same, with another limit on how long a helper may run.
    pub fn with_helper_timeout(mut self, limit: Duration) -> Credentials {
        self.helper_timeout = limit;
        self
    }

    /// The credential for `registry` (a [`Reference::registry`], e.g.
    /// `docker.io` or `127.0.0.1:5000`; URLs and Docker Hub's other names are
    /// accepted too), or `None` for anonymous access.
    ///
    /// [`Reference::registry`]: super::Reference::registry
    pub fn for_registry(&self, registry: &str) -> Result<Option<Credential>, CredError> {
        Ok(self.find(registry)?.map(|f| f.credential))
    }

    /// [`Credentials::for_registry`] with where the credential came from.
    pub fn find(&self, registry: &str) -> Result<Option<Found>, CredError> {
        let host = normalize_host(registry);
        if let Some((h, user, pass)) = &self.env {
            if *h == host {
                return Ok(Some(Found {
                    credential: Credential::Basic {
                        username: user.clone(),
                        password: pass.clone(),
                    },
                    source: format!("`{ENV_USERNAME}` and `{ENV_PASSWORD}`"),
                }));
            }
        }
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = answers.get(&host) {
            return Ok(known.clone());
        }
        let mut found = None;
        for file in &self.files {
            found = self.search_file(file, &host)?;
            if found.is_some() {
                break;
            }
        }
        answers.insert(host, found.clone());
        Ok(found)
    }

    fn search_file(&self, file: &ConfigFile, host: &str) -> Result<Option<Found>, CredError> {
        let shown = file.path.display();
        if let Some((key, helper)) = pick(&file.cred_helpers, host) {
            let named_by = format!("`credHelpers` `{key}` in `{shown}`");
            if let Some(f) = self.run_helper(helper, &named_by, host)? {
                return Ok(Some(f));
            }
        }
        if let Some((key, entry)) = pick(&file.auths, host) {
            if let Some(credential) = entry.credential(&file.path, key)? {
                return Ok(Some(Found {
                    credential,
                    source: format!("`auths` `{key}` in `{shown}`"),
                }));
            }
        }
        if let Some(store) = file.creds_store.as_deref().filter(|s| !s.is_empty()) {
            let named_by = format!("`credsStore` in `{shown}`");
            return self.run_helper(store, &named_by, host);
        }
        Ok(None)
    }

    fn run_helper(
        &self,
        name: &str,
        named_by: &str,
        host: &str,
    ) -> Result<Option<Found>, CredError> {
        let helper = format!("docker-credential-{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(CredError::HelperName {
                helper: name.escape_default().to_string(),
                named_by: named_by.to_string(),
            });
        }
        let program = find_program(&helper, self.path.as_deref()).ok_or_else(|| {
            CredError::HelperNotFound {
                helper: helper.clone(),
                named_by: named_by.to_string(),
            }
        })?;
        let server = if host == reference_hub() {
            DOCKER_HUB_INDEX
        } else {
            host
        };
        let out = run_bounded(&program, self.path.as_deref(), server, self.helper_timeout)
            .map_err(|e| match e {
                RunError::Spawn(error) => CredError::HelperSpawn {
                    helper: helper.clone(),
                    host: host.to_string(),
                    error,
                },
                RunError::Timeout => CredError::HelperTimeout {
                    helper: helper.clone(),
                    host: host.to_string(),
                    secs: self.helper_timeout.as_secs(),
                },
                RunError::TooMuch => CredError::HelperTooMuch {
                    helper: helper.clone(),
                    host: host.to_string(),
                    limit: HELPER_OUTPUT_LIMIT,
                },
            })?;
        if !out.success {
            // The helpers of docker-credential-helpers print this on stdout
            // and exit 1 when they hold nothing for the host.
            if String::from_utf8_lossy(&out.stdout)
                .to_ascii_lowercase()
                .contains("credentials not found")
            {
                return Ok(None);
            }
            return Err(CredError::HelperFailed {
                helper,
                host: host.to_string(),
                status: out.status,
            });
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "Username", default)]
            username: String,
            #[serde(rename = "Secret", default)]
            secret: Option<Secret>,
        }
        let malformed = |why| CredError::HelperMalformed {
            helper: helper.clone(),
            host: host.to_string(),
            why,
        };
        let answer: Answer = serde_json::from_slice(&out.stdout).map_err(|e| {
            malformed(match e.classify() {
                serde_json::error::Category::Data => "JSON of the wrong shape",
                _ => "something that is not JSON",
            })
        })?;
        let source = format!("`{helper}` (named by {named_by})");
        let secret = match answer.secret {
            Some(s) if !s.is_empty() => s,
            _ => return Ok(None),
        };
        let credential = if answer.username == "<token>" {
            Credential::IdentityToken(secret)
        } else if answer.username.is_empty() {
            return Err(malformed("a secret but no `Username`"));
        } else {
            Credential::Basic {
                username: answer.username,
                password: secret,
            }
        };
        Ok(Some(Found { credential, source }))
    }
}

fn reference_hub() -> &'static str {
    crate::reference::DOCKER_HUB
}

/// A registry name as credential files key it, reduced to the host Docker
/// compares: no scheme, no path, lowercase, Docker Hub's aliases as `docker.io`.
pub fn normalize_host(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            reference_hub().to_string()
        }
        _ => host,
    }
}

/// The entry of `map` for `host`: a key whose normalized host is `host`, the
/// one spelt exactly as `host` first, else the first in sorted order. Bare keys
/// with a path (podman's repository-scoped `quay.io/org`) are not matched.
fn pick<'m, V>(map: &'m BTreeMap<String, V>, host: &str) -> Option<(&'m str, &'m V)> {
    if let Some((k, v)) = map.get_key_value(host) {
        return Some((k.as_str(), v));
    }
    map.iter()
        .filter(|(k, _)| {
            let is_url = k.starts_with("https://") || k.starts_with("http://");
            (is_url || !k.contains('/')) && normalize_host(k) == host
        })
        .map(|(k, v)| (k.as_str(), v))
        .next()
}

/// One parsed `config.json` or `auth.json`.
struct ConfigFile {
    path: PathBuf,
    auths: BTreeMap<String, AuthEntry>,
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<Secret>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    identitytoken: Option<Secret>,
}

impl AuthEntry {
    fn credential(&self, path: &Path, key: &str) -> Result<Option<Credential>, CredError> {
        let bad = |why| CredError::BadEntry {
            path: path.to_path_buf(),
            host: key.to_string(),
            why,
        };
        if let Some(t) = self.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credential::IdentityToken(t.clone())));
        }
        if let Some(auth) = self.auth.as_ref().filter(|a| !a.is_empty()) {
            use base64::Engine;
            let bytes = Secret(
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
                        .decode(auth.expose().trim())
                        .map_err(|_| bad("`auth` is not base64"))?,
                )
                .map_err(|_| bad("`auth` does not decode to UTF-8 text"))?,
            );
            let (user, pass) = bytes
                .expose()
                .split_once(':')
                .ok_or_else(|| bad("`auth` does not decode to `username:password`"))?;
            if user.is_empty() {
                return Err(bad("`auth` has an empty username"));
            }
            return Ok(Some(Credential::Basic {
                username: user.to_string(),
                password: Secret::new(pass),
            }));
        }
        match (
            self.username.as_deref().filter(|u| !u.is_empty()),
            self.password.as_ref().filter(|p| !p.is_empty()),
        ) {
            (Some(u), Some(p)) => Ok(Some(Credential::Basic {
                username: u.to_string(),
                password: p.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(bad("`username` without `password`")),
            (None, Some(_)) => Err(bad("`password` without `username`")),
        }
    }
}

impl ConfigFile {
    /// The file at `path`, or `None` when there is none.
    fn read(path: &Path) -> Result<Option<ConfigFile>, CredError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(CredError::Read {
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        let text = zeroize::Zeroizing::new(text);
        let raw: RawConfig = if text.iter().all(|b| b.is_ascii_whitespace()) {
            RawConfig::default()
        } else {
            serde_json::from_slice(&text).map_err(|e| CredError::Malformed {
                path: path.to_path_buf(),
                what: match e.classify() {
                    serde_json::error::Category::Syntax => "a JSON syntax error",
                    serde_json::error::Category::Eof => "the JSON ends early",
                    serde_json::error::Category::Data => "a value of the wrong type",
                    serde_json::error::Category::Io => "a read error",
                },
                line: e.line(),
                column: e.column(),
            })?
        };
        Ok(Some(ConfigFile {
            path: path.to_path_buf(),
            auths: raw
                .auths
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.trim().to_string(), v))
                .collect(),
            cred_helpers: raw.cred_helpers.unwrap_or_default(),
            creds_store: raw.creds_store,
        }))
    }
}

/// `name` in the directories of `path`: an executable regular file.
fn find_program(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = path?;
    std::env::split_paths(path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

struct RunOutput {
    success: bool,
    status: String,
    stdout: zeroize::Zeroizing<Vec<u8>>,
}

enum RunError {
    Spawn(std::io::Error),
    Timeout,
    TooMuch,
}

/// Runs `program get` with `input` on stdin; stdout read up to
/// [`HELPER_OUTPUT_LIMIT`], stderr discarded, killed after `limit`.
fn run_bounded(
    program: &Path,
    path: Option<&std::ffi::OsStr>,
    input: &str,
    limit: Duration,
) -> Result<RunOutput, RunError> {
    let mut cmd = Command::new(program);
    cmd.arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match path {
        Some(p) => cmd.env("PATH", p),
        None => cmd.env_remove("PATH"),
    };
    // A script just written by another thread of this process can be briefly
    // "busy" (a forked child still holds its write descriptor until exec).
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r.map_err(RunError::Spawn)?,
        }
    };
    let deadline = Instant::now() + limit;
    // The input is one host name: far below a pipe's buffer, so this write
    // cannot block on a helper that does not read.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = match stdout {
            Some(s) => s
                .take(HELPER_OUTPUT_LIMIT as u64 + 1)
                .read_to_end(&mut buf)
                .map(|_| ()),
            None => Ok(()),
        };
        let _ = tx.send((r, zeroize::Zeroizing::new(buf)));
    });
    let stop = |child: &mut std::process::Child, e: RunError| {
        let _ = child.kill();
        let _ = child.wait();
        Err(e)
    };
    let stdout = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok((Ok(()), buf)) if buf.len() > HELPER_OUTPUT_LIMIT => {
            return stop(&mut child, RunError::TooMuch);
        }
        Ok((Ok(()), buf)) => buf,
        Ok((Err(e), _)) => return stop(&mut child, RunError::Spawn(e)),
        Err(_) => return stop(&mut child, RunError::Timeout),
    };
    // Its stdout is closed; it should be gone or about to be.
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Ok(RunOutput {
                    success: status.success(),
                    status: status.to_string(),
                    stdout,
                });
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => return stop(&mut child, RunError::Timeout),
            Err(e) => return stop(&mut child, RunError::Spawn(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const PASSWORD: &str = "hunter2-s3cr3t";

    /// A temp dir holding config files and a `bin` directory of fake helpers.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let f = Fixture {
                dir: tempfile::tempdir().unwrap(),
            };
            std::fs::create_dir_all(f.bin()).unwrap();
            f
        }
        fn bin(&self) -> PathBuf {
            self.dir.path().join("bin")
        }
        fn path(&self) -> OsString {
            // The helpers are shell scripts: they need `sh` and `cat`.
            std::env::join_paths([self.bin(), "/usr/bin".into(), "/bin".into()]).unwrap()
        }
        fn file(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        }
        /// A `docker-credential-NAME` script with `body` after the shebang;
        /// it records its stdin in `NAME.asked`.
        fn helper(&self, name: &str, body: &str) {
            let p = self.bin().join(format!("docker-credential-{name}"));
            let asked = self.dir.path().join(format!("{name}.asked"));
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\n[ \"$1\" = get ] || exit 9\ncat >> '{}'\necho >> '{}'\n{body}\n",
                    asked.display(),
                    asked.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        fn asked(&self, name: &str) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join(format!("{name}.asked")))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        }
        fn docker_config(&self, json: &str) -> Sources {
            self.file("docker/config.json", json);
            Sources {
                docker_config_dir: Some(self.dir.path().join("docker")),
                path: Some(self.path()),
                ..Sources::default()
            }
        }
        fn creds(&self, json: &str) -> Credentials {
            Credentials::from_sources(self.docker_config(json)).unwrap()
        }
    }

    fn basic(user: &str, pass: &str) -> Option<Credential> {
        Some(Credential::Basic {
            username: user.into(),
            password: Secret::new(pass),
        })
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn a_secret_prints_redacted_in_every_form() {
        let s = Secret::new(PASSWORD);
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let c = Credential::Basic {
            username: "u".into(),
            password: s.clone(),
        };
        assert!(!format!("{c:?}").contains(PASSWORD));
        let t = Credential::IdentityToken(s);
        assert!(!format!("{t:?}").contains(PASSWORD));
        let f = Fixture::new();
        let creds = f.creds(&format!(
            r#"{{"auths":{{"h:1":{{"auth":"{}"}}}}}}"#,
            b64(&format!("u:{PASSWORD}"))
        ));
        creds.for_registry("h:1").unwrap();
        assert!(!format!("{creds:?}").contains(PASSWORD));
    }

    #[test]
    fn auths_auth_field_is_base64_user_colon_password() {
        let f = Fixture::new();
        let c = f.creds(&format!(
            r#"{{"auths":{{"registry.example.com":{{"auth":"{}"}}}}}}"#,
            b64("alice:pa:ss")
        ));
        assert_eq!(
            c.for_registry("registry.example.com").unwrap(),
            basic("alice", "pa:ss")
        );
        assert_eq!(c.for_registry("other.example.com").unwrap(), None);
    }

    #[test]
    fn auths_username_password_and_identity_token_are_read() {
        let f = Fixture::new();
        let c = f.creds(
            r#"{"auths":{
                "a.example":{"username":"bob","password":"pw"},
                "b.example":{"identitytoken":"refresh","auth":"eDp5"}
            }}"#,
        );
        assert_eq!(c.for_registry("a.example").unwrap(), basic("bob", "pw"));
        assert_eq!(
            c.for_registry("b.example").unwrap(),
            Some(Credential::IdentityToken(Secret::new("refresh")))
        );
    }

    #[test]
    fn url_keys_and_docker_hub_aliases_match() {
        let f = Fixture::new();
        let c = f.creds(&format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "https://Reg.Example.com:5000/v2/":{{"auth":"{}"}}
            }}}}"#,
            b64("hub:1"),
            b64("reg:2")
        ));
        for hub in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
        ] {
            assert_eq!(c.for_registry(hub).unwrap(), basic("hub", "1"), "{hub}");
        }
        assert_eq!(
            c.for_registry("reg.example.com:5000").unwrap(),
            basic("reg", "2")
        );
        // The port is part of the host.
        assert_eq!(c.for_registry("reg.example.com").unwrap(), None);
    }

    #[test]
    fn an_exactly_spelt_key_wins_over_an_alias() {
        let f = Fixture::new();
        let c = f.creds(&format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},"docker.io":{{"auth":"{}"}}}}}}"#,
            b64("url:1"),
            b64("bare:2")
        ));
        assert_eq!(c.for_registry("docker.io").unwrap(), basic("bare", "2"));
    }

    #[test]
    fn repository_scoped_keys_are_not_used_for_the_whole_registry() {
        let f = Fixture::new();
        let c = f.creds(&format!(
            r#"{{"auths":{{"quay.io/org-a":{{"auth":"{}"}}}}}}"#,
            b64("a:1")
        ));
        assert_eq!(c.for_registry("quay.io").unwrap(), None);
    }

    #[test]
    fn a_cred_helper_answers_with_docker_spelling_of_the_host() {
        let f = Fixture::new();
        f.helper(
            "fake",
            r#"echo '{"ServerURL":"x","Username":"helper-user","Secret":"helper-secret"}'"#,
        );
        let c = f.creds(r#"{"credHelpers":{"127.0.0.1:5000":"fake","docker.io":"fake"}}"#);
        assert_eq!(
            c.for_registry("127.0.0.1:5000").unwrap(),
            basic("helper-user", "helper-secret")
        );
        assert_eq!(
            c.for_registry("docker.io").unwrap(),
            basic("helper-user", "helper-secret")
        );
        assert_eq!(
            f.asked("fake"),
            ["127.0.0.1:5000", "https://index.docker.io/v1/"]
        );
        assert_eq!(c.for_registry("elsewhere.example").unwrap(), None);
    }

    #[test]
    fn a_helper_runs_once_per_host_and_only_when_asked() {
        let f = Fixture::new();
        f.helper("fake", r#"echo '{"Username":"u","Secret":"s"}'"#);
        let c = f.creds(r#"{"credsStore":"fake"}"#);
        assert!(f.asked("fake").is_empty());
        for _ in 0..3 {
            assert_eq!(c.for_registry("h.example").unwrap(), basic("u", "s"));
        }
        assert_eq!(f.asked("fake"), ["h.example"]);
    }

    #[test]
    fn a_helper_username_token_means_an_identity_token() {
        let f = Fixture::new();
        f.helper(
            "fake",
            r#"echo '{"Username":"<token>","Secret":"refresh-me"}'"#,
        );
        let c = f.creds(r#"{"credsStore":"fake"}"#);
        assert_eq!(
            c.for_registry("h.example").unwrap(),
            Some(Credential::IdentityToken(Secret::new("refresh-me")))
        );
    }

    #[test]
    fn cred_helpers_then_auths_then_creds_store() {
        let f = Fixture::new();
        f.helper(
            "per-host",
            r#"echo '{"Username":"from-helper","Secret":"1"}'"#,
        );
        f.helper("store", r#"echo '{"Username":"from-store","Secret":"3"}'"#);
        let c = f.creds(&format!(
            r#"{{"credHelpers":{{"a.example":"per-host"}},
                "auths":{{"a.example":{{"auth":"{a}"}},"b.example":{{"auth":"{b}"}},"c.example":{{}}}},
                "credsStore":"store"}}"#,
            a = b64("from-auths:2"),
            b = b64("from-auths:2"),
        ));
        assert_eq!(
            c.for_registry("a.example").unwrap(),
            basic("from-helper", "1")
        );
        assert_eq!(
            c.for_registry("b.example").unwrap(),
            basic("from-auths", "2")
        );
        // Docker writes an empty entry beside a store: the store answers.
        assert_eq!(
            c.for_registry("c.example").unwrap(),
            basic("from-store", "3")
        );
        assert_eq!(
            c.for_registry("d.example").unwrap(),
            basic("from-store", "3")
        );
    }

    #[test]
    fn credentials_not_found_from_a_helper_means_anonymous_or_the_next_source() {
        let f = Fixture::new();
        f.helper(
            "empty",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        let c = f.creds(&format!(
            r#"{{"credHelpers":{{"a.example":"empty"}},"auths":{{"a.example":{{"auth":"{}"}}}}}}"#,
            b64("next:source")
        ));
        assert_eq!(
            c.for_registry("a.example").unwrap(),
            basic("next", "source")
        );
        let c = f.creds(r#"{"credsStore":"empty"}"#);
        assert_eq!(c.for_registry("a.example").unwrap(), None);
    }

    #[test]
    fn a_failing_helper_is_an_error_that_does_not_repeat_its_output() {
        let f = Fixture::new();
        f.helper(
            "leaky",
            &format!("echo 'oops {PASSWORD}'; echo '{PASSWORD}' >&2; exit 3"),
        );
        let c = f.creds(r#"{"credsStore":"leaky"}"#);
        let e = c.for_registry("h.example").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CredError::HelperFailed { .. }), "{msg}");
        assert!(msg.contains("docker-credential-leaky"), "{msg}");
        assert!(msg.contains("3"), "{msg}");
        assert!(!msg.contains(PASSWORD), "{msg}");
        assert!(!format!("{e:?}").contains(PASSWORD));
    }

    #[test]
    fn a_helper_that_answers_garbage_is_an_error_without_the_garbage() {
        let f = Fixture::new();
        f.helper("garbage", &format!("echo 'not json {PASSWORD}'"));
        f.helper(
            "shape",
            &format!(r#"echo '{{"Username":1,"Secret":"{PASSWORD}"}}'"#),
        );
        for h in ["garbage", "shape"] {
            let c = f.creds(&format!(r#"{{"credsStore":"{h}"}}"#));
            let e = c.for_registry("h.example").unwrap_err();
            assert!(matches!(e, CredError::HelperMalformed { .. }), "{e}");
            assert!(!e.to_string().contains(PASSWORD), "{e}");
        }
    }

    #[test]
    fn a_helper_that_prints_too_much_is_stopped() {
        let f = Fixture::new();
        f.helper("flood", "yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        let c = f.creds(r#"{"credsStore":"flood"}"#);
        let e = c.for_registry("h.example").unwrap_err();
        assert!(matches!(e, CredError::HelperTooMuch { .. }), "{e}");
    }

    #[test]
    fn a_helper_that_hangs_is_stopped_at_the_time_limit() {
        let f = Fixture::new();
        f.helper("hang", "exec sleep 1000");
        let c = f
            .creds(r#"{"credsStore":"hang"}"#)
            .with_helper_timeout(Duration::from_millis(200));
        let e = c.for_registry("h.example").unwrap_err();
        assert!(matches!(e, CredError::HelperTimeout { .. }), "{e}");
        assert!(e.to_string().contains("docker-credential-hang"), "{e}");
    }

    #[test]
    fn a_missing_helper_is_an_error_naming_it_and_where_it_was_named() {
        let f = Fixture::new();
        let c = f.creds(r#"{"credsStore":"desktop"}"#);
        let e = c.for_registry("h.example").unwrap_err().to_string();
        assert!(e.contains("`docker-credential-desktop`"), "{e}");
        assert!(e.contains("credsStore"), "{e}");
        assert!(e.contains("config.json"), "{e}");
    }

    #[test]
    fn a_helper_name_cannot_be_a_path() {
        let f = Fixture::new();
        let c = f.creds(r#"{"credHelpers":{"h.example":"../../../bin/sh"}}"#);
        let e = c.for_registry("h.example").unwrap_err();
        assert!(matches!(e, CredError::HelperName { .. }), "{e}");
    }

    #[test]
    fn helpers_are_found_only_on_the_path_given() {
        let f = Fixture::new();
        f.helper("fake", r#"echo '{"Username":"u","Secret":"s"}'"#);
        let mut s = f.docker_config(r#"{"credsStore":"fake"}"#);
        s.path = Some("/nonexistent-dir".into());
        let c = Credentials::from_sources(s).unwrap();
        assert!(matches!(
            c.for_registry("h.example"),
            Err(CredError::HelperNotFound { .. })
        ));
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it_and_the_position_not_its_content() {
        let f = Fixture::new();
        let bad = [
            format!("{{\"auths\": {{\"h\": {{\"auth\": \"{PASSWORD}\"}}}}"),
            format!("{{\"auths\": {{\"h\": {{\"auth\": 1, \"password\": \"{PASSWORD}\"}}}}}}"),
            format!("{{\"credsStore\": [\"{PASSWORD}\"]}}"),
            PASSWORD.to_string(),
        ];
        for text in bad {
            let e = Credentials::from_sources(f.docker_config(&text))
                .unwrap_err()
                .to_string();
            assert!(e.contains("config.json"), "{e}");
            assert!(e.contains("line 1"), "{e}");
            assert!(!e.contains(PASSWORD), "{e}");
        }
    }

    #[test]
    fn an_unusable_auth_entry_is_an_error_without_its_content() {
        let f = Fixture::new();
        for auth in [
            format!("!!{PASSWORD}!!"),
            b64(PASSWORD),
            b64(&format!(":{PASSWORD}")),
        ] {
            let c = f.creds(&format!(
                r#"{{"auths":{{"h.example":{{"auth":"{auth}"}}}}}}"#
            ));
            let e = c.for_registry("h.example").unwrap_err();
            assert!(matches!(e, CredError::BadEntry { .. }), "{e}");
            assert!(!e.to_string().contains(PASSWORD), "{e}");
            assert!(!e.to_string().contains(&auth), "{e}");
        }
    }

    #[test]
    fn missing_and_empty_files_are_no_credentials() {
        let f = Fixture::new();
        let c = Credentials::from_sources(Sources {
            registry_auth_file: Some(f.dir.path().join("nope.json")),
            docker_config_dir: Some(f.dir.path().join("nope")),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(c.for_registry("h.example").unwrap(), None);
        let c = f.creds("  \n");
        assert_eq!(c.for_registry("h.example").unwrap(), None);
        let c = f.creds(r#"{"auths":null,"credHelpers":null,"psFormat":"x"}"#);
        assert_eq!(c.for_registry("h.example").unwrap(), None);
    }

    #[test]
    fn home_docker_config_is_read_when_docker_config_is_unset() {
        let f = Fixture::new();
        f.file(
            ".docker/config.json",
            &format!(
                r#"{{"auths":{{"h.example":{{"auth":"{}"}}}}}}"#,
                b64("home:1")
            ),
        );
        let c = Credentials::from_sources(Sources {
            home: Some(f.dir.path().to_path_buf()),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(c.for_registry("h.example").unwrap(), basic("home", "1"));
        // DOCKER_CONFIG, when set, replaces it.
        let c = Credentials::from_sources(Sources {
            home: Some(f.dir.path().to_path_buf()),
            docker_config_dir: Some(f.dir.path().join("elsewhere")),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(c.for_registry("h.example").unwrap(), None);
    }

    #[test]
    fn env_then_registry_auth_file_then_docker_config() {
        let f = Fixture::new();
        let auth = f.file(
            "auth.json",
            &format!(
                r#"{{"auths":{{"a.example":{{"auth":"{}"}},"b.example":{{"auth":"{}"}}}}}}"#,
                b64("podman:a"),
                b64("podman:b")
            ),
        );
        let mut s = f.docker_config(&format!(
            r#"{{"auths":{{"a.example":{{"auth":"{x}"}},"b.example":{{"auth":"{x}"}},"c.example":{{"auth":"{x}"}}}}}}"#,
            x = b64("docker:c")
        ));
        s.registry_auth_file = Some(auth);
        s.env_host = Some("https://A.example/".into());
        s.env_username = Some("ci".into());
        s.env_password = Some(Secret::new("env"));
        let c = Credentials::from_sources(s).unwrap();
        assert_eq!(c.for_registry("a.example").unwrap(), basic("ci", "env"));
        assert_eq!(c.for_registry("b.example").unwrap(), basic("podman", "b"));
        assert_eq!(c.for_registry("c.example").unwrap(), basic("docker", "c"));
        let found = c.find("a.example").unwrap().unwrap();
        assert!(found.source.contains(ENV_PASSWORD), "{}", found.source);
        let found = c.find("b.example").unwrap().unwrap();
        assert!(found.source.contains("auth.json"), "{}", found.source);
    }

    #[test]
    fn env_credentials_apply_only_to_their_host() {
        let c = Credentials::from_sources(Sources {
            env_host: Some("ci.example:5000".into()),
            env_username: Some("ci".into()),
            env_password: Some(Secret::new(PASSWORD)),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(
            c.for_registry("ci.example:5000").unwrap(),
            basic("ci", PASSWORD)
        );
        assert_eq!(c.for_registry("ci.example").unwrap(), None);
        assert_eq!(c.for_registry("evil.example").unwrap(), None);
        assert_eq!(c.for_registry("docker.io").unwrap(), None);
    }

    #[test]
    fn partial_env_is_an_error_naming_what_is_missing_never_a_value() {
        let cases = [
            (
                Some("h"),
                Some("u"),
                None,
                "`IMGC_REGISTRY_PASSWORD` must be set",
            ),
            (
                Some("h"),
                None,
                Some(PASSWORD),
                "`IMGC_REGISTRY_USERNAME` must be set",
            ),
            (
                None,
                Some("u"),
                Some(PASSWORD),
                "`IMGC_REGISTRY_HOST` must be set",
            ),
            (
                None,
                None,
                Some(PASSWORD),
                "`IMGC_REGISTRY_HOST` and `IMGC_REGISTRY_USERNAME` must be set",
            ),
        ];
        for (h, u, p, want) in cases {
            let e = Credentials::from_sources(Sources {
                env_host: h.map(str::to_string),
                env_username: u.map(str::to_string),
                env_password: p.map(Secret::new),
                ..Sources::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.starts_with(want), "{e}");
            assert!(!e.contains(PASSWORD), "{e}");
        }
    }

    #[test]
    fn none_is_anonymous_everywhere() {
        assert_eq!(Credentials::none().for_registry("docker.io").unwrap(), None);
    }

    #[test]
    fn normalize_host_drops_scheme_and_path_and_folds_docker_hub() {
        assert_eq!(normalize_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_host("registry-1.docker.io"), "docker.io");
        assert_eq!(
            normalize_host("http://Localhost:5000/v2/"),
            "localhost:5000"
        );
        assert_eq!(normalize_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn credentials_are_shared_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Credentials>();
    }
}
