//! A thin client of the OCI Distribution API over `ureq`: manifests and blobs,
//! authentication, retries, redirects and TLS.
//!
//! # Transport
//!
//! - **Scheme.** `https`, verified against the system's roots
//!   (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set, else the platform's store, else
//!   Mozilla's roots). Loopback registries (`localhost`, 127.0.0.0/8, `::1`:
//!   Docker allows them without a flag) and the hosts given with
//!   `--insecure-registry` may also speak plain `http`: the first request to
//!   such a host tries a TLS handshake (`GET https://HOST/v2/`), and only when
//!   the peer answers with something that is not TLS (an HTTP response to the
//!   ClientHello) is the host reached over `http`, for the rest of the run. A
//!   certificate that does not verify is an error, never a reason to fall back
//!   (that would be a downgrade). Elsewhere a TLS failure against a plain HTTP
//!   server names `--insecure-registry`.
//! - **Redirects** are followed by hand, at most [`MAX_REDIRECTS`]. The
//!   `Authorization` header goes only to the scheme, host and port it was
//!   meant for: a blob `GET` redirected to a storage host (S3, a CDN) goes there
//!   without it. A redirect from `https` to plain `http` is refused unless the
//!   target is a loopback host.
//! - **Retries.** [`ATTEMPTS`] attempts with growing pauses on transport
//!   errors, 408, 429 (honouring `Retry-After` up to [`MAX_RETRY_AFTER`]) and
//!   5xx; never on any other 4xx. Connecting gives up after 10 s, and a request
//!   or response whose bytes stop coming for 60 s fails.
//!
//! # Authentication
//!
//! A request goes out anonymously (or with a token or Basic credentials this
//! run already needed for that host). On `401` the `WWW-Authenticate`
//! challenges are parsed:
//!
//! - `Basic`: the registry's credentials are sent (none: an error telling how to
//!   log in).
//! - `Bearer realm=…,service=…`: a token is asked of the realm for the scopes
//!   the request needs (`repository:NAME:pull` or `pull,push`), with the
//!   registry's Basic credentials if there are any, anonymously otherwise; with
//!   an identity token (what `docker login` keeps for some registries), through
//!   the OAuth2 `refresh_token` grant (`POST`). The realm may be another host:
//!   that is the protocol, and Docker sends the registry's credentials there
//!   too; a realm in plain `http` is refused unless it is a loopback host.
//!   Tokens are kept per (host, scopes) for the run, until their `expires_in`;
//!   a `401` with a kept token asks for a new one once.
//!
//! Credentials and tokens are never in a message, a log or `Debug` output.
//! Errors name the method, the URL (which never carries credentials: a
//! [`Reference`] cannot hold them), the status and the registry's error codes
//! from its JSON body, escaped and bounded.
//!
//! # Verification
//!
//! Manifests are read whole (at most [`MANIFEST_LIMIT`]) and their sha256 is
//! compared with `Docker-Content-Digest` when the registry sends it and with the
//! reference's digest when it is pinned. Blobs are streamed into a writer and
//! hashed on the way: a wrong size or digest is an error, and the caller's
//! writer (the CAS's, in [`super::pull`]) discards what it got.

use crate::hash::{Digest, HashReport, HashingReader, Sha256};
use crate::input::escape;
use crate::reference::{Reference, is_loopback_host};
use crate::registry::credentials::{Credential, Credentials, Secret};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Attempts per request (the first and two retries).
pub const ATTEMPTS: u32 = 3;
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;
/// The longest `Retry-After` honoured; longer ones are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// The largest manifest or index read (what registries themselves accept).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error body or a token answer is read.
const SMALL_BODY_LIMIT: u64 = 1 << 20;
/// How much of a registry's error text reaches a message.
const DETAIL_CHARS: usize = 300;
/// A token without `expires_in` lives this long (the spec's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The manifest media types asked for, in order of preference.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

// ---------------------------------------------------------------------------
// Options, results, errors

/// How a [`Client`] is set up.
pub struct ClientOptions {
    /// Looked up only when a registry asks for them (a `401`), so a config
    /// naming a helper that is not installed does not break anonymous registries.
    pub credentials: Arc<Credentials>,
    /// Hosts (`host` or `host:port`) allowed over plain HTTP.
    pub insecure: Vec<String>,
    pub user_agent: String,
}

impl ClientOptions {
    /// Anonymous, no insecure hosts, imgc's user agent.
    pub fn anonymous() -> ClientOptions {
        ClientOptions {
            credentials: Arc::new(Credentials::none()),
            insecure: Vec::new(),
            user_agent: concat!("imgc/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// What a tag or digest resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A manifest or index, verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// The answer to a cross-repository mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// `201`: the blob is now in the repository.
    Mounted,
    /// `202`: the registry did not mount; an upload session was opened here instead.
    Upload { location: String },
}

/// Why a registry request failed. Messages hold no credentials.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{method} `{url}`: HTTP {status}{}", detail_suffix(detail))]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        /// The registry's error codes and messages, escaped and bounded.
        detail: String,
    },
    #[error(
        "authentication required for {host} ({method} `{url}`: HTTP 401{}); log in with `docker login {host}` or set IMGC_REGISTRY_HOST, IMGC_REGISTRY_USERNAME and IMGC_REGISTRY_PASSWORD",
        detail_suffix(detail)
    )]
    Unauthorized {
        host: String,
        method: &'static str,
        url: String,
        detail: String,
    },
    #[error(
        "access denied by {host} ({method} `{url}`: HTTP 403{}); check that the credentials for {host} may do this (`docker login {host}` or IMGC_REGISTRY_*)",
        detail_suffix(detail)
    )]
    Denied {
        host: String,
        method: &'static str,
        url: String,
        detail: String,
    },
    #[error("{method} `{url}`: {reason} (after {attempts} attempts)")]
    Transport {
        method: &'static str,
        url: String,
        reason: String,
        attempts: u32,
    },
    #[error("{method} `{url}`: {reason}")]
    Protocol {
        method: &'static str,
        url: String,
        reason: String,
    },
    #[error("`{url}`: {what} has digest {actual}, expected {expected}")]
    Digest {
        url: String,
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("`{url}`: {what} has {actual} bytes, expected {expected}")]
    Size {
        url: String,
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error(
        "`{url}`: the TLS certificate of {host} does not verify ({reason}); imgc does not fall back to plain HTTP for a registry that speaks TLS: trust its CA with SSL_CERT_FILE"
    )]
    Certificate {
        host: String,
        url: String,
        reason: String,
    },
    #[error("credentials for {host}: {message}")]
    Credentials { host: String, message: String },
    #[error("{what}: {source}")]
    Local {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" {detail}")
    }
}

impl RegistryError {
    /// The registry answered 404 (unknown manifest, blob or repository).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::Status { status: 404, .. })
    }

    /// Worth trying again later: the connection broke or the registry was
    /// unavailable (the client already retried [`ATTEMPTS`] times).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => retryable_status(*status),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// The client

/// A Distribution API client; cheap to share between threads (`&Client`).
pub struct Client {
    agent: ureq::Agent,
    options: ClientOptions,
    /// Bearer tokens per (api host, scopes).
    tokens: Mutex<HashMap<(String, String), Token>>,
    /// Hosts that asked for Basic credentials: they get them up front.
    basic: Mutex<HashMap<String, ()>>,
    /// Logins looked up so far, per registry.
    logins: Mutex<HashMap<String, Option<Credential>>>,
    /// How each loopback or `--insecure-registry` host is reached, once probed
    /// (api host, lowercase → scheme).
    schemes: Mutex<HashMap<String, HostScheme>>,
    /// Held while a host's scheme is probed: one handshake per host per run.
    probing: Mutex<()>,
}

/// What the TLS probe of a host that may speak plain HTTP found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostScheme {
    Https,
    Http,
    /// It speaks TLS but its certificate does not verify: why.
    BadCertificate(String),
}

/// Why a TLS handshake failed, as far as the scheme is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The peer answered with something that is not TLS (an HTTP response to
    /// the ClientHello): it speaks plain HTTP.
    NotTls,
    /// The peer speaks TLS and its certificate does not verify.
    Certificate(String),
    /// Another TLS failure (an alert, no common protocol version, …).
    Other,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.options.insecure)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Token {
    value: Secret,
    until: Instant,
}

/// What a request is allowed to do, for a token: `(repository, actions)`.
type Scopes = Vec<(String, &'static str)>;

/// A request body that can be produced again (for retries and auth round trips).
type BodyFn<'a> = &'a (dyn Fn() -> io::Result<(Box<dyn Read + Send>, u64)> + Sync);

/// One request of the API, before auth, redirects and retries.
struct Call<'a> {
    method: &'static str,
    url: String,
    reference: &'a Reference,
    scopes: Scopes,
    headers: Vec<(&'static str, String)>,
    body: Option<BodyFn<'a>>,
}

impl<'a> Call<'a> {
    /// A request without a body that needs `actions` (`pull`, `pull,push`) on
    /// `reference`'s repository.
    fn new(
        method: &'static str,
        url: &str,
        reference: &'a Reference,
        actions: &'static str,
    ) -> Call<'a> {
        Call {
            method,
            url: url.to_string(),
            reference,
            scopes: vec![(reference.repository.clone(), actions)],
            headers: Vec::new(),
            body: None,
        }
    }

    /// The request also needs `actions` on `repository` (of the same registry).
    fn scope(mut self, repository: &str, actions: &'static str) -> Call<'a> {
        self.scopes.push((repository.to_string(), actions));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Call<'a> {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: BodyFn<'a>) -> Call<'a> {
        self.body = Some(body);
        self
    }
}

impl Client {
    pub fn new(options: ClientOptions) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .timeout_per_write(Some(STALL_TIMEOUT))
            .timeout_recv_response(Some(STALL_TIMEOUT))
            .user_agent(options.user_agent.as_str())
            .tls_config(tls_config())
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            options,
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(HashMap::new()),
            logins: Mutex::new(HashMap::new()),
            schemes: Mutex::new(HashMap::new()),
            probing: Mutex::new(()),
        }
    }

    /// Whether `r`'s registry may be reached over plain HTTP (when it does not
    /// speak TLS): a loopback host, or one given with `--insecure-registry`.
    fn may_be_plain(&self, r: &Reference) -> bool {
        r.is_loopback()
            || self.options.insecure.iter().any(|h| {
                h.eq_ignore_ascii_case(&r.registry) || h.eq_ignore_ascii_case(r.hostname())
            })
    }

    /// `http` or `https` for `r`'s registry: `http` only for a host that may be
    /// plain and was found not to speak TLS (see the module docs).
    pub fn scheme(&self, r: &Reference) -> &'static str {
        if !self.may_be_plain(r) {
            return "https";
        }
        match self
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.api_host().to_ascii_lowercase())
        {
            Some(HostScheme::Http) => "http",
            _ => "https",
        }
    }

    /// Points `call` at the scheme its registry speaks, probing the registry
    /// once per run if it may be plain HTTP. `Ok(Some(e))`: the probe could not
    /// connect (worth another attempt).
    fn settle_scheme(&self, call: &mut Call<'_>) -> Result<Option<RegistryError>, RegistryError> {
        let r = call.reference;
        if !self.may_be_plain(r) {
            return Ok(None);
        }
        let host = r.api_host().to_ascii_lowercase();
        // Only the registry's own URLs (not a storage host it redirects to).
        let Some((scheme, rest)) = call.url.split_once("://") else {
            return Ok(None);
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if !authority.eq_ignore_ascii_case(&host) {
            return Ok(None);
        }
        let known = self
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
            .cloned();
        let found = match known {
            Some(s) => s,
            None => match self.probe(call, &host) {
                Ok(s) => s,
                Err(e) => return Ok(Some(e)),
            },
        };
        let want = match found {
            HostScheme::Https => "https",
            HostScheme::Http => "http",
            HostScheme::BadCertificate(reason) => {
                return Err(RegistryError::Certificate {
                    host: r.registry.clone(),
                    url: format!("https://{}", strip_query(rest)),
                    reason,
                });
            }
        };
        if !scheme.eq_ignore_ascii_case(want) {
            call.url = format!("{want}://{rest}");
        }
        Ok(None)
    }

    /// Tries a TLS handshake with `host` (`GET https://HOST/v2/`, without
    /// credentials) and remembers what it found; one probe per host at a time.
    /// `Err`: the host could not be reached at all (not remembered).
    fn probe(&self, call: &Call<'_>, host: &str) -> Result<HostScheme, RegistryError> {
        let _one = self.probing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = self
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
        {
            return Ok(s.clone());
        }
        let url = format!("https://{host}/v2/");
        let found = match self.agent.get(url.as_str()).call() {
            // Any HTTP answer over TLS: it speaks https.
            Ok(_) => HostScheme::Https,
            Err(e) => match tls_failure(&e) {
                Some(TlsFailure::NotTls) => HostScheme::Http,
                Some(TlsFailure::Certificate(why)) => HostScheme::BadCertificate(why),
                Some(TlsFailure::Other) | None => return Err(self.transport(call, &url, &e)),
            },
        };
        self.schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string(), found.clone());
        Ok(found)
    }

    /// `SCHEME://HOST/v2/REPO/` for `r`.
    pub fn repo_url(&self, r: &Reference) -> String {
        format!("{}://{}/v2/{}/", self.scheme(r), r.api_host(), r.repository)
    }

    /// `SCHEME://HOST/v2/REPO/manifests/REF` for `r` (its digest, tag or `latest`).
    fn manifest_url(&self, r: &Reference) -> String {
        format!("{}manifests/{}", self.repo_url(r), r.manifest_ref())
    }

    /// Sends `method` (`HEAD` or `GET`) for the manifest `r` names, accepting every
    /// manifest and index type; the URL and the response.
    fn request_manifest(
        &self,
        method: &'static str,
        r: &Reference,
    ) -> Result<(String, ureq::http::Response<ureq::Body>), RegistryError> {
        let url = self.manifest_url(r);
        let resp = self.send(Call::new(method, &url, r, "pull").header("Accept", ACCEPT))?;
        Ok((url, resp))
    }

    /// What `r` (by digest, tag or `latest`) points at. A pinned reference must
    /// resolve to its own digest.
    pub fn resolve(&self, r: &Reference) -> Result<Resolved, RegistryError> {
        let (url, resp) = self.request_manifest("HEAD", r)?;
        let size = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
        let media_type = header(&resp, "content-type").unwrap_or_default();
        let digest = header(&resp, "docker-content-digest").and_then(|v| v.parse::<Digest>().ok());
        match (digest, size) {
            (Some(digest), Some(size)) if !media_type.is_empty() => {
                check_pinned(r, &url, digest)?;
                Ok(Resolved {
                    digest,
                    media_type: media_type_only(media_type),
                    size,
                })
            }
            // Not every registry answers a HEAD fully: read the manifest.
            _ => {
                let f = self.get_manifest(r)?;
                Ok(Resolved {
                    digest: f.digest,
                    media_type: f.media_type,
                    size: f.bytes.len() as u64,
                })
            }
        }
    }

    /// The manifest or index `r` names, read whole (at most [`MANIFEST_LIMIT`])
    /// and verified: against the reference's digest when pinned, and against
    /// `Docker-Content-Digest` when sent.
    pub fn get_manifest(&self, r: &Reference) -> Result<Fetched, RegistryError> {
        let (url, resp) = self.request_manifest("GET", r)?;
        let media_type = media_type_only(header(&resp, "content-type").unwrap_or_default());
        let sent = header(&resp, "docker-content-digest").map(str::to_string);
        let mut bytes = Vec::new();
        resp.into_body()
            .into_with_config()
            .limit(MANIFEST_LIMIT + 1)
            .reader()
            .take(MANIFEST_LIMIT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| RegistryError::Protocol {
                method: "GET",
                url: url.clone(),
                reason: format!("cannot read the manifest: {}", escape(&e.to_string())),
            })?;
        if bytes.len() as u64 > MANIFEST_LIMIT {
            return Err(RegistryError::Protocol {
                method: "GET",
                url,
                reason: format!("the manifest is larger than {MANIFEST_LIMIT} bytes"),
            });
        }
        let digest = Digest::of_bytes(&bytes);
        check_pinned(r, &url, digest)?;
        if let Some(sent) = sent {
            match sent.parse::<Digest>() {
                Ok(d) if d == digest => {}
                // Another algorithm (sha512) cannot be compared; ours is checked.
                _ if !sent.starts_with("sha256:") => {}
                _ => {
                    return Err(RegistryError::Protocol {
                        method: "GET",
                        url,
                        reason: format!(
                            "the manifest hashes to {digest} but the registry says {}",
                            escape(&truncate(&sent, 80))
                        ),
                    });
                }
            }
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            sniff_media_type(&bytes).unwrap_or(media_type)
        } else {
            media_type
        };
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    /// Streams blob `digest` of `repo`'s repository into `out`, hashing it on the
    /// way. Fails unless exactly `expected_size` bytes with that digest arrived;
    /// `out` has then received bytes that the caller must discard. Returns the
    /// size.
    pub fn get_blob_to(
        &self,
        repo: &Reference,
        digest: &Digest,
        expected_size: u64,
        out: &mut dyn Write,
    ) -> Result<u64, RegistryError> {
        let url = format!("{}blobs/{digest}", self.repo_url(repo));
        let resp = self.send(Call::new("GET", &url, repo, "pull"))?;
        let mut reader = resp
            .into_body()
            .into_with_config()
            .limit(expected_size.saturating_add(1))
            .reader();
        let mut sha = Sha256::new();
        let mut n: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(RegistryError::Transport {
                        method: "GET",
                        url,
                        reason: format!(
                            "the connection broke after {n} of {expected_size} bytes: {}",
                            escape(&e.to_string())
                        ),
                        attempts: 1,
                    });
                }
            };
            n += k as u64;
            if n > expected_size {
                break;
            }
            sha.update(&buf[..k]);
            out.write_all(&buf[..k]).map_err(|e| RegistryError::Local {
                what: format!("cannot store blob {digest}"),
                source: e,
            })?;
        }
        if n != expected_size {
            return Err(RegistryError::Size {
                url,
                what: "the blob",
                expected: expected_size,
                actual: n,
            });
        }
        let actual = sha.finish();
        if actual != *digest {
            return Err(RegistryError::Digest {
                url,
                what: "the blob",
                expected: *digest,
                actual,
            });
        }
        Ok(n)
    }

    /// The size of blob `digest` in `repo`'s repository, or `None` if it is not there.
    pub fn blob_exists(
        &self,
        repo: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let url = format!("{}blobs/{digest}", self.repo_url(repo));
        match self.send(Call::new("HEAD", &url, repo, "pull")) {
            Ok(r) => Ok(Some(
                header(&r, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks the registry to mount blob `digest` from repository `from` (of the
    /// same registry) into `to`'s repository.
    pub fn mount_blob(
        &self,
        to: &Reference,
        digest: &Digest,
        from: &str,
    ) -> Result<Mount, RegistryError> {
        let from_q = percent_encoding::utf8_percent_encode(from, QUERY).to_string();
        let url = format!(
            "{}blobs/uploads/?mount={digest}&from={from_q}",
            self.repo_url(to)
        );
        let resp = self.send(
            Call::new("POST", &url, to, "pull,push")
                .scope(from, "pull")
                .header("Content-Length", "0"),
        )?;
        match resp.status().as_u16() {
            201 => Ok(Mount::Mounted),
            _ => Ok(Mount::Upload {
                location: self.location(&resp, "POST", &url)?,
            }),
        }
    }

    /// Uploads blob `digest` (`size` bytes, read from what `open` returns) to
    /// `repo`'s repository in one `PUT`, into the upload session at `location`
    /// (from [`Client::mount_blob`]) or a new one. The bytes are hashed while
    /// sent: a local file that does not hash to `digest` fails the upload.
    pub fn upload_blob(
        &self,
        repo: &Reference,
        digest: &Digest,
        size: u64,
        open: &(dyn Fn() -> io::Result<Box<dyn Read + Send>> + Sync),
        location: Option<String>,
    ) -> Result<(), RegistryError> {
        let location = match location {
            Some(l) => l,
            None => {
                let url = format!("{}blobs/uploads/", self.repo_url(repo));
                let resp = self.send(
                    Call::new("POST", &url, repo, "pull,push").header("Content-Length", "0"),
                )?;
                self.location(&resp, "POST", &url)?
            }
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let seen: HashReport = Arc::new(Mutex::new(None));
        let body = || -> io::Result<(Box<dyn Read + Send>, u64)> {
            let r = open()?;
            let reader: Box<dyn Read + Send> =
                Box::new(HashingReader::new(r.take(size), size, seen.clone()));
            Ok((reader, size))
        };
        self.send(
            Call::new("PUT", &url, repo, "pull,push")
                .header("Content-Type", "application/octet-stream")
                .body(&body),
        )?;
        match *seen.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((d, n)) if d == *digest && n == size => Ok(()),
            // An empty body may never be read; its digest is known.
            None if size == 0 && *digest == Digest::of_bytes(b"") => Ok(()),
            _ => Err(RegistryError::Local {
                what: format!("uploading blob {digest}"),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the local copy does not hash to its name or changed while it was sent",
                ),
            }),
        }
    }

    /// Stores `bytes` as the manifest `r` names (its tag, or its digest), and
    /// returns the manifest's digest.
    pub fn put_manifest(
        &self,
        r: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of_bytes(bytes);
        let url = self.manifest_url(r);
        let owned = Arc::new(bytes.to_vec());
        let body = || -> io::Result<(Box<dyn Read + Send>, u64)> {
            let n = owned.len() as u64;
            Ok((Box::new(io::Cursor::new(owned.as_ref().clone())), n))
        };
        let resp = self.send(
            Call::new("PUT", &url, r, "pull,push")
                .header("Content-Type", media_type)
                .body(&body),
        )?;
        if let Some(sent) = header(&resp, "docker-content-digest") {
            if sent.starts_with("sha256:") && sent.parse::<Digest>().ok() != Some(digest) {
                return Err(RegistryError::Protocol {
                    method: "PUT",
                    url,
                    reason: format!(
                        "the registry stored the manifest as {} instead of {digest}",
                        escape(&truncate(sent, 80))
                    ),
                });
            }
        }
        Ok(digest)
    }

    // -----------------------------------------------------------------------
    // Requests

    /// The absolute URL of a response's `Location`.
    fn location(
        &self,
        resp: &ureq::http::Response<ureq::Body>,
        method: &'static str,
        url: &str,
    ) -> Result<String, RegistryError> {
        let loc = header(resp, "location").ok_or_else(|| RegistryError::Protocol {
            method,
            url: url.to_string(),
            reason: "the registry opened an upload without a `Location`".into(),
        })?;
        Ok(join_url(url, loc))
    }

    /// Sends `call` with retries; a success (2xx) or an error.
    fn send(&self, mut call: Call<'_>) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut last: Option<RegistryError> = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let pause = match &last {
                    Some(RegistryError::Status { .. }) | Some(RegistryError::Transport { .. }) => {
                        Duration::from_millis(200 * 4u64.pow(attempt - 1))
                    }
                    _ => Duration::ZERO,
                };
                std::thread::sleep(pause);
            }
            if let Some(unreachable) = self.settle_scheme(&mut call)? {
                last = Some(unreachable);
                continue;
            }
            match self.send_once(&call) {
                Ok(Outcome::Done(r)) => return Ok(r),
                Ok(Outcome::Retry(e, after)) => {
                    if let Some(after) = after {
                        std::thread::sleep(after.min(MAX_RETRY_AFTER));
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(match last {
            Some(RegistryError::Transport {
                method,
                url,
                reason,
                ..
            }) => RegistryError::Transport {
                method,
                url,
                reason,
                attempts: ATTEMPTS,
            },
            Some(e) => e,
            None => RegistryError::Protocol {
                method: call.method,
                url: call.url.clone(),
                reason: "no attempt was made".into(),
            },
        })
    }

    /// One attempt: auth round trips and redirects included.
    fn send_once(&self, call: &Call<'_>) -> Result<Outcome, RegistryError> {
        let host = call.reference.api_host().to_string();
        let mut reauthed = false;
        loop {
            let auth = self.auth_header(call)?;
            let resp = match self.follow(call, auth.as_ref())? {
                Ok(r) => r,
                Err(transport) => return Ok(Outcome::Retry(transport, None)),
            };
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(Outcome::Done(resp));
            }
            if status == 401 && !reauthed {
                reauthed = true;
                let challenges: Vec<Challenge> = resp
                    .headers()
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                if self.authenticate(call, &challenges, auth.as_ref())? {
                    continue;
                }
            }
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let detail = error_detail(resp);
            let err = match status {
                401 => RegistryError::Unauthorized {
                    host,
                    method: call.method,
                    url: call.url.clone(),
                    detail,
                },
                403 => RegistryError::Denied {
                    host,
                    method: call.method,
                    url: call.url.clone(),
                    detail,
                },
                _ => RegistryError::Status {
                    method: call.method,
                    url: call.url.clone(),
                    status,
                    detail,
                },
            };
            return if retryable_status(status) {
                Ok(Outcome::Retry(err, retry_after))
            } else {
                Err(err)
            };
        }
    }

    /// Sends `call` following redirects by hand. `Err` inside `Ok` is a
    /// transport failure (retryable).
    #[allow(clippy::type_complexity)]
    fn follow(
        &self,
        call: &Call<'_>,
        auth: Option<&Secret>,
    ) -> Result<Result<ureq::http::Response<ureq::Body>, RegistryError>, RegistryError> {
        let origin = origin_of(&call.url);
        let mut url = call.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = ureq::http::Request::builder()
                .method(call.method)
                .uri(url.as_str());
            for (k, v) in &call.headers {
                req = req.header(*k, v.as_str());
            }
            if let Some(a) = auth {
                if origin_of(&url) == origin {
                    req = req.header("Authorization", a.expose());
                }
            }
            let result = match call.body {
                Some(body) => {
                    let (reader, len) = body().map_err(|e| RegistryError::Local {
                        what: format!("cannot read what {} `{url}` sends", call.method),
                        source: e,
                    })?;
                    let req = req
                        .header("Content-Length", len.to_string())
                        .body(ureq::SendBody::from_owned_reader(reader))
                        .map_err(|e| self.protocol(call, &url, e.to_string()))?;
                    self.agent.run(req)
                }
                None => {
                    let req = req
                        .body(())
                        .map_err(|e| self.protocol(call, &url, e.to_string()))?;
                    self.agent.run(req)
                }
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) => return Ok(Err(self.transport(call, &url, &e))),
            };
            let status = resp.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                return Ok(Ok(resp));
            }
            let Some(loc) = header(&resp, "location") else {
                return Err(self.protocol(call, &url, "a redirect without `Location`".into()));
            };
            let next = join_url(&url, loc);
            if !next.starts_with("https://") && !next.starts_with("http://") {
                return Err(self.protocol(call, &url, "a redirect to a non-HTTP URL".into()));
            }
            if url.starts_with("https://")
                && next.starts_with("http://")
                && !origin_of(&next).is_some_and(|(_, h)| is_loopback_host(host_of(&h)))
            {
                return Err(self.protocol(
                    call,
                    &url,
                    format!(
                        "a redirect from https to plain http (`{}`) is refused",
                        escape(&truncate(&strip_query(&next), 200))
                    ),
                ));
            }
            url = next;
        }
        Err(self.protocol(
            call,
            &call.url,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    fn protocol(&self, call: &Call<'_>, url: &str, reason: String) -> RegistryError {
        RegistryError::Protocol {
            method: call.method,
            url: strip_query(url),
            reason,
        }
    }

    fn transport(&self, call: &Call<'_>, url: &str, e: &ureq::Error) -> RegistryError {
        let mut reason = escape(&e.to_string()).into_owned();
        let host = &call.reference.registry;
        match tls_failure(e) {
            Some(TlsFailure::NotTls) if url.starts_with("https://") => {
                reason.push_str(&format!(
                    "; if {host} serves plain HTTP, allow it with `--insecure-registry {host}`"
                ));
            }
            Some(TlsFailure::Certificate(_)) => {
                reason.push_str(&format!(
                    "; the TLS certificate of {host} does not verify: trust its CA with SSL_CERT_FILE"
                ));
            }
            _ => {}
        }
        RegistryError::Transport {
            method: call.method,
            url: strip_query(url),
            reason,
            attempts: 1,
        }
    }

    fn login(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = logins.get(registry) {
            return Ok(l.clone());
        }
        let l = self
            .options
            .credentials
            .for_registry(registry)
            .map_err(|e| RegistryError::Credentials {
                host: registry.to_string(),
                message: e.to_string(),
            })?;
        logins.insert(registry.to_string(), l.clone());
        Ok(l)
    }

    /// The `Authorization` value to send first: a kept token, or Basic for a
    /// host that asked for it.
    fn auth_header(&self, call: &Call<'_>) -> Result<Option<Secret>, RegistryError> {
        let host = call.reference.api_host().to_string();
        let key = (host.clone(), scope_string(&call.scopes));
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = tokens.get(&key) {
                if t.until > Instant::now() {
                    return Ok(Some(Secret::new(format!("Bearer {}", t.value.expose()))));
                }
                tokens.remove(&key);
            }
        }
        let basic = self
            .basic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&host);
        if basic {
            if let Some(Credential::Basic { username, password }) =
                self.login(&call.reference.registry)?
            {
                return Ok(Some(basic_header(&username, &password)));
            }
        }
        Ok(None)
    }

    /// Answers a 401's challenges; true when the request should be sent again.
    fn authenticate(
        &self,
        call: &Call<'_>,
        challenges: &[Challenge],
        sent: Option<&Secret>,
    ) -> Result<bool, RegistryError> {
        let host = call.reference.api_host().to_string();
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.fetch_token(call, c)?;
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((host, scope_string(&call.scopes)), token);
            return Ok(true);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            self.basic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(host, ());
            // Credentials sent and refused: no point sending them again.
            if sent.is_some_and(|a| a.expose().starts_with("Basic ")) {
                return Ok(false);
            }
            let have = matches!(
                self.login(&call.reference.registry)?,
                Some(Credential::Basic { .. })
            );
            return Ok(have);
        }
        Ok(false)
    }

    /// Gets a bearer token from the challenge's realm for `call`'s scopes.
    fn fetch_token(&self, call: &Call<'_>, c: &Challenge) -> Result<Token, RegistryError> {
        let realm = c.params.get("realm").cloned().unwrap_or_default();
        let fail = |reason: String| RegistryError::Protocol {
            method: call.method,
            url: call.url.clone(),
            reason,
        };
        let realm_origin = origin_of(&realm)
            .ok_or_else(|| fail("the registry's token realm is not an http(s) URL".into()))?;
        if realm_origin.0 == "http" && !is_loopback_host(host_of(&realm_origin.1)) {
            return Err(fail(format!(
                "the registry's token realm `{}` is plain http on a non-loopback host; refusing to send credentials there",
                escape(&truncate(&strip_query(&realm), 200))
            )));
        }
        let service = c.params.get("service").cloned();
        let scopes: Vec<String> = call
            .scopes
            .iter()
            .map(|(repo, actions)| format!("repository:{repo}:{actions}"))
            .collect();
        let login = self.login(&call.reference.registry)?;
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY).to_string();
        let result = match &login {
            Some(Credential::IdentityToken(refresh)) => {
                let mut form = format!(
                    "grant_type=refresh_token&client_id=imgc&refresh_token={}",
                    enc(refresh.expose())
                );
                if let Some(s) = &service {
                    form.push_str(&format!("&service={}", enc(s)));
                }
                form.push_str(&format!("&scope={}", enc(&scopes.join(" "))));
                self.agent
                    .post(realm.as_str())
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .send(form.as_bytes())
            }
            _ => {
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                if let Some(s) = &service {
                    url.push_str(&format!("{sep}service={}", enc(s)));
                    sep = '&';
                }
                for s in &scopes {
                    url.push_str(&format!("{sep}scope={}", enc(s)));
                    sep = '&';
                }
                let mut req = self.agent.get(url.as_str());
                if let Some(Credential::Basic { username, password }) = &login {
                    req = req.header("Authorization", basic_header(username, password).expose());
                }
                req.call()
            }
        };
        let realm_shown = strip_query(&realm);
        let resp = result.map_err(|e| {
            fail(format!(
                "cannot get a token from `{realm_shown}`: {}",
                escape(&e.to_string())
            ))
        })?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                host: call.reference.api_host().to_string(),
                method: call.method,
                url: call.url.clone(),
                detail: format!("(the token service `{realm_shown}` answered HTTP {status})"),
            });
        }
        if !(200..300).contains(&status) {
            return Err(fail(format!(
                "the token service `{realm_shown}` answered HTTP {status}"
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let mut bytes = Vec::new();
        resp.into_body()
            .into_with_config()
            .limit(SMALL_BODY_LIMIT)
            .reader()
            .read_to_end(&mut bytes)
            .map_err(|_| fail(format!("cannot read the answer of `{realm_shown}`")))?;
        let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|_| {
            fail(format!(
                "the token service `{realm_shown}` answered no JSON"
            ))
        })?;
        let value = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| fail(format!("the token service `{realm_shown}` sent no token")))?;
        if value.chars().any(|c| c.is_control() || c == ' ') {
            return Err(fail(format!(
                "the token service `{realm_shown}` sent a malformed token"
            )));
        }
        // Loosely: a little before it expires, and at least the spec's minimum.
        let life = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFE)
            .max(DEFAULT_TOKEN_LIFE);
        Ok(Token {
            value: Secret::new(value),
            until: Instant::now() + life.saturating_sub(Duration::from_secs(10)),
        })
    }
}

enum Outcome {
    Done(ureq::http::Response<ureq::Body>),
    Retry(RegistryError, Option<Duration>),
}

/// What is safe in a query value: unreserved characters.
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/')
    .remove(b':');

fn basic_header(username: &str, password: &Secret) -> Secret {
    use base64::Engine;
    let pair = format!("{username}:{}", password.expose());
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

fn scope_string(scopes: &Scopes) -> String {
    let mut v: Vec<String> = scopes.iter().map(|(r, a)| format!("{r}:{a}")).collect();
    v.sort();
    v.join(" ")
}

/// TLS verified against the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` when
/// set, else the platform's store), else Mozilla's roots: for every client imgc
/// makes to fetch over `https` (registries, pinned downloads, Debian repositories).
pub(crate) fn tls_config() -> ureq::tls::TlsConfig {
    let mut tls = ureq::tls::TlsConfig::builder();
    let native = rustls_native_certs::load_native_certs();
    if !native.certs.is_empty() {
        let certs: Vec<ureq::tls::Certificate<'static>> = native
            .certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    tls.build()
}

/// Whether an answer with this status is worth another attempt.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// What a failed request says about TLS: `None` when it is not a TLS failure.
///
/// rustls reports a peer that answered the ClientHello with something other
/// than a TLS record (`HTTP/1.1 400 …` from a plain HTTP server) as an invalid
/// content type; only that means "plain HTTP". A certificate that does not
/// verify is [`TlsFailure::Certificate`], never a reason to fall back.
pub(crate) fn tls_failure(e: &ureq::Error) -> Option<TlsFailure> {
    use rustls::{Error as R, InvalidMessage};
    let classify = |r: &R| match r {
        R::InvalidMessage(InvalidMessage::InvalidContentType) => TlsFailure::NotTls,
        R::InvalidCertificate(_) | R::InvalidCertRevocationList(_) => {
            TlsFailure::Certificate(escape(&r.to_string()).into_owned())
        }
        _ => TlsFailure::Other,
    };
    match e {
        ureq::Error::Rustls(r) => Some(classify(r)),
        ureq::Error::Tls(_) => Some(TlsFailure::Other),
        ureq::Error::Io(io) => {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<R>()) {
                return Some(classify(r));
            }
            // A wrapped error whose type is not rustls's own: by its text.
            let s = io.to_string().to_ascii_lowercase();
            if s.contains("invalidcontenttype") || s.contains("invalid content type") {
                Some(TlsFailure::NotTls)
            } else if s.contains("certificate") {
                Some(TlsFailure::Certificate(
                    escape(&io.to_string()).into_owned(),
                ))
            } else if s.contains("tls") || s.contains("corrupt message") {
                Some(TlsFailure::Other)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `type/subtype` of a `Content-Type` value, without parameters.
/// Header `name` of `resp`, if it is sent and is text.
fn header<'r>(resp: &'r ureq::http::Response<ureq::Body>, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Fails unless a pinned `r` names the manifest that hashes to `actual` (read
/// from `url`).
fn check_pinned(r: &Reference, url: &str, actual: Digest) -> Result<(), RegistryError> {
    match r.digest {
        Some(expected) if expected != actual => Err(RegistryError::Digest {
            url: url.to_string(),
            what: "the manifest",
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

fn media_type_only(v: &str) -> String {
    v.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The `mediaType` a manifest declares, for registries that send none.
fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let d: Doc = serde_json::from_slice(bytes).ok()?;
    match d.media_type {
        Some(m) => Some(m),
        None if d.manifests.is_some() => Some(OCI_INDEX.to_string()),
        None => Some(OCI_MANIFEST.to_string()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// `url` without its query: upload session URLs carry state tokens there.
fn strip_query(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_string()
}

/// `(scheme, host[:port])` of an absolute http(s) URL, lowercase, with the
/// default port made explicit.
fn origin_of(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let authority = if has_port {
        authority
    } else {
        format!("{authority}:{default}")
    };
    Some((scheme, authority))
}

/// The host of `host:port` (brackets kept off for IPv6).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    }
}

/// `loc` (absolute, absolute-path or relative) resolved against `base`.
fn join_url(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return loc.to_string();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some(path) = loc.strip_prefix("//") {
        return format!("{scheme}://{path}");
    }
    if loc.starts_with('/') {
        return format!("{scheme}://{authority}{loc}");
    }
    let path = &rest[authority.len()..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    format!("{scheme}://{authority}{dir}{loc}")
}

/// A `WWW-Authenticate` challenge: the scheme (lowercase) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: std::collections::BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value holding one or several challenges
/// (`Bearer realm="…",service="…", Basic realm="…"`); quoted strings may hold
/// commas and `\"`. Unparseable parts are skipped.
pub fn parse_challenges(v: &str) -> Vec<Challenge> {
    let b = v.as_bytes();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            i += 1; // a stray character
            continue;
        }
        let token = &v[start..i];
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !(j + 1 < b.len() && b[j + 1] == b'=') {
            // A parameter of the current challenge.
            j += 1;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            let value;
            if j < b.len() && b[j] == b'"' {
                j += 1;
                let mut s = String::new();
                let mut chars = v[j..].char_indices();
                let mut end = v.len();
                while let Some((k, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                s.push(n);
                            }
                        }
                        '"' => {
                            end = j + k + 1;
                            break;
                        }
                        c => s.push(c),
                    }
                }
                value = s;
                i = end;
            } else {
                let vs = j;
                while j < b.len() && b[j] != b',' && b[j] != b' ' {
                    j += 1;
                }
                value = v[vs..j].to_string();
                i = j;
            }
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
        } else if j < b.len() && b[j] == b'=' {
            // token68 (`Basic abc==`): not used.
            i = j;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Default::default(),
            });
            i = j;
        }
    }
    out
}

/// The registry's error codes and messages from an error body, escaped and
/// bounded (`(MANIFEST_UNKNOWN: manifest unknown)`), or empty.
fn error_detail(resp: ureq::http::Response<ureq::Body>) -> String {
    let mut bytes = Vec::new();
    let _ = resp
        .into_body()
        .into_with_config()
        .limit(SMALL_BODY_LIMIT)
        .reader()
        .take(SMALL_BODY_LIMIT)
        .read_to_end(&mut bytes);
    detail_of(&bytes)
}

fn detail_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(body) = serde_json::from_slice::<Body>(bytes) else {
        return String::new();
    };
    let parts: Vec<String> = body
        .errors
        .iter()
        .take(3)
        .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
            (false, false) => format!("{}: {}", e.code, e.message),
            (false, true) => e.code.clone(),
            _ => e.message.clone(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!("({})", escape(&truncate(&parts.join("; "), DETAIL_CHARS)))
}

#[cfg(test)]
mod tests;
