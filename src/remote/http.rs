//! A remote cache behind Bazel's HTTP cache protocol: `GET`, `PUT` and `HEAD` on
//! `<url>/ac/<key hex>` and `<url>/cas/<sha256 hex>`, as `bazel-remote`, nginx
//! with WebDAV, and most CI cache servers speak it.
//!
//! | request            | success     | miss  | anything else |
//! |--------------------|-------------|-------|---------------|
//! | `GET /ac/<key>`    | 200 + entry | 404   | failure       |
//! | `GET /cas/<hex>`   | 200 + blob  | 404   | failure       |
//! | `HEAD ...`         | 200         | 404   | failure       |
//! | `PUT ...`          | 200/201/204 |       | failure       |
//!
//! Connections are pooled (one agent per build). Transport errors, timeouts and
//! 5xx/408/429 answers are retried [`ATTEMPTS`] times with a growing pause; a
//! failure after that switches the remote off for the build ([`super::Remote`]).
//! Every blob is streamed into the local store and hashed on the way; the store
//! publishes it only if it hashes to its name and has the expected size.
//!
//! Credentials (from the URL or a file) go in a basic `Authorization` header.
//! They are never printed: messages show the URL without its user part. Redirects
//! are not followed, so the header never goes to another host.

use super::{Fault, Store, entry};
use crate::cas::Cas;
use crate::hash::{Digest, HashingReader, Key};
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

/// Attempts per request (the first and two retries).
pub const ATTEMPTS: u32 = 3;
/// Connecting gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request or a response whose bytes stop coming for this long fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// An `http://` cache endpoint: where, and the credentials given in the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://host:port/prefix` without a trailing slash and without credentials.
    pub base: String,
    pub credentials: Option<Credentials>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A user name and password for basic authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// Reads a credentials file: its first line is `user:password`.
    pub fn from_file(path: &Path) -> Result<Credentials, String> {
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(64 * 1024).read_to_string(&mut text))
            .map_err(|e| {
                format!(
                    "cannot read the remote cache credentials file `{}`: {e}",
                    path.display()
                )
            })?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err(format!(
                "the remote cache credentials file `{}` must start with a `user:password` line",
                path.display()
            )),
        }
    }

    fn header(&self) -> String {
        use base64::Engine;
        let pair = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

pub use crate::fetch::redact;

impl Endpoint {
    /// Parses `http://[user[:password]@]host[:port][/prefix]`.
    pub fn parse(value: &str) -> Result<Endpoint, String> {
        let bad = |why: &str| {
            format!(
                "`{}` is not a usable remote cache URL: {why}",
                redact(value)
            )
        };
        let rest = &value["http://".len()..];
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, host) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        if path.contains(['?', '#']) {
            return Err(bad("it has a query or fragment"));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("its user part is not UTF-8"))
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                Some(Credentials {
                    user: decode(user)?,
                    password: decode(password)?,
                })
            }
        };
        let base = format!("http://{host}{}", path.trim_end_matches('/'));
        base.parse::<ureq::http::Uri>()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Endpoint { base, credentials })
    }
}

pub struct HttpStore {
    endpoint: Endpoint,
    auth: Option<String>,
    agent: ureq::Agent,
}

/// What a request came back with, once retries are done.
enum Answer {
    Ok(ureq::http::Response<ureq::Body>),
    NotFound,
}

impl HttpStore {
    /// `credentials` (from a file) win over those in the URL.
    pub fn new(endpoint: Endpoint, credentials: Option<Credentials>) -> Result<HttpStore, String> {
        let auth = credentials
            .or(endpoint.credentials.clone())
            .map(|c| c.header());
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .timeout_per_write(Some(STALL_TIMEOUT))
            .timeout_recv_response(Some(STALL_TIMEOUT))
            .user_agent(concat!("imgc/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(HttpStore {
            endpoint,
            auth,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    fn url(&self, kind: &str, hex: &str) -> String {
        format!("{}/{kind}/{hex}", self.endpoint.base)
    }

    /// Runs `send` until it answers something other than a retryable failure.
    fn request(
        &self,
        what: &str,
        url: &str,
        send: &dyn Fn() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, Fault> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 1)));
            }
            match send() {
                Ok(r) => match r.status().as_u16() {
                    200..=299 => return Ok(Answer::Ok(r)),
                    404 => return Ok(Answer::NotFound),
                    s @ (408 | 429 | 500..=599) => last = format!("{what} `{url}`: HTTP {s}"),
                    401 | 403 => {
                        return Err(Fault::Failed(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "{what} `{url}`: HTTP {} (check the credentials)",
                                r.status().as_u16()
                            ),
                        )));
                    }
                    s => {
                        return Err(Fault::Failed(io::Error::other(format!(
                            "{what} `{url}`: HTTP {s}"
                        ))));
                    }
                },
                Err(e) => last = format!("{what} `{url}`: {e}"),
            }
        }
        Err(Fault::Failed(io::Error::other(format!(
            "{last} (after {ATTEMPTS} attempts)"
        ))))
    }

    fn get(&self, kind: &str, hex: &str) -> Result<Answer, Fault> {
        let url = self.url(kind, hex);
        self.request("GET", &url, &|| {
            let mut r = self.agent.get(&url);
            if let Some(a) = &self.auth {
                r = r.header("Authorization", a);
            }
            r.call()
        })
    }

    fn head(&self, kind: &str, hex: &str) -> Result<Option<Option<u64>>, Fault> {
        let url = self.url(kind, hex);
        let answer = self.request("HEAD", &url, &|| {
            let mut r = self.agent.head(&url);
            if let Some(a) = &self.auth {
                r = r.header("Authorization", a);
            }
            r.call()
        })?;
        Ok(match answer {
            Answer::NotFound => None,
            Answer::Ok(r) => Some(
                r.headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            ),
        })
    }

    fn put(
        &self,
        kind: &str,
        hex: &str,
        len: u64,
        body: &dyn Fn() -> io::Result<Box<dyn Read + Send>>,
    ) -> Result<(), Fault> {
        let url = self.url(kind, hex);
        let answer = self.request("PUT", &url, &|| {
            let reader = body().map_err(ureq::Error::Io)?;
            let mut r = self
                .agent
                .put(&url)
                .header("Content-Length", len.to_string())
                .header("Content-Type", "application/octet-stream");
            if let Some(a) = &self.auth {
                r = r.header("Authorization", a);
            }
            r.send(ureq::SendBody::from_owned_reader(reader))
        })?;
        match answer {
            Answer::Ok(_) => Ok(()),
            Answer::NotFound => Err(Fault::Failed(io::Error::other(format!(
                "PUT `{url}`: HTTP 404"
            )))),
        }
    }
}

impl Store for HttpStore {
    fn get_entry(&self, key: &Key) -> Result<Vec<u8>, Fault> {
        match self.get("ac", &key.to_hex())? {
            Answer::NotFound => Err(Fault::Missing),
            Answer::Ok(r) => {
                let mut bytes = Vec::new();
                r.into_body()
                    .into_with_config()
                    .limit(entry::MAX_ENTRY_BYTES)
                    .reader()
                    .read_to_end(&mut bytes)
                    .map_err(|e| Fault::Damaged(format!("cannot read it whole: {e}")))?;
                Ok(bytes)
            }
        }
    }

    fn has_entry(&self, key: &Key) -> Result<bool, Fault> {
        Ok(self.head("ac", &key.to_hex())?.is_some())
    }

    fn put_entry(&self, key: &Key, bytes: &[u8], _replace: bool) -> Result<(), Fault> {
        let owned = bytes.to_vec();
        self.put("ac", &key.to_hex(), bytes.len() as u64, &|| {
            Ok(Box::new(io::Cursor::new(owned.clone())))
        })
    }

    fn touch_entry(&self, _key: &Key) {}

    fn fetch_blob(&self, d: &Digest, size: u64, cas: &Cas) -> Result<u64, Fault> {
        match self.get("cas", &d.hex())? {
            Answer::NotFound => Err(Fault::Missing),
            Answer::Ok(r) => {
                let reader = r.into_body().into_with_config().limit(size + 1).reader();
                // A connection that breaks mid-body is a transport failure; bytes
                // that arrive but are wrong are damage.
                super::dir::copy_into(reader, d, size, cas)
            }
        }
    }

    fn has_blob(&self, d: &Digest, size: u64) -> Result<bool, Fault> {
        Ok(matches!(self.head("cas", &d.hex())?, Some(Some(n)) if n == size))
    }

    fn put_blob(&self, d: &Digest, size: u64, path: &Path, _replace: bool) -> Result<u64, Fault> {
        let path = path.to_path_buf();
        let digest = *d;
        // The local blob is re-hashed while it is sent: a damaged local copy
        // must not reach the remote. (The server stores what it got; a wrong
        // upload fails here before its entry is written.)
        let check = std::sync::Arc::new(std::sync::Mutex::new(None::<(Digest, u64)>));
        let seen = check.clone();
        self.put("cas", &d.hex(), size, &|| {
            let file = super::dir::open_regular(&path).map_err(|f| match f {
                Fault::Failed(e) => e,
                _ => io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("local blob `{digest}` is not a regular file"),
                ),
            })?;
            Ok(Box::new(HashingReader::new(
                file.take(size),
                size,
                seen.clone(),
            )))
        })?;
        match *check.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((got, n)) if got == *d && n == size => Ok(size),
            _ => Err(Fault::Damaged(format!(
                "local blob `{d}` changed while it was uploaded"
            ))),
        }
    }

    fn describe(&self) -> String {
        self.endpoint.base.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_credentials() {
        let e = Endpoint::parse("http://127.0.0.1:8080/cache/").unwrap();
        assert_eq!(e.base, "http://127.0.0.1:8080/cache");
        assert!(e.credentials.is_none());
        let e = Endpoint::parse("http://ci%40corp:p%3Ass@cache.local:9090").unwrap();
        assert_eq!(e.base, "http://cache.local:9090");
        let c = e.credentials.unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("ci@corp", "p:ss"));
    }

    #[test]
    fn credentials_never_reach_messages() {
        assert_eq!(redact("http://u:secret@h:1/p"), "http://***@h:1/p");
        let err = Endpoint::parse("http://u:secret@/p").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        let e = Endpoint::parse("http://u:secret@h:1/p").unwrap();
        assert!(!format!("{e:?}").contains("secret"));
    }
}
