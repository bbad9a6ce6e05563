//! Pinned downloads: one file fetched over HTTP(S) into the store, unpublished
//! until its caller has checked it. The one place imgc downloads pinned files
//! (`http-file` targets, Debian packages named by the lock); registries and remote
//! caches have their own clients.
//!
//! [`download`] streams the body straight into a [`BlobWriter`] of the CAS, hashed
//! on the way, and stops reading one byte past the limit the caller gives (the
//! pinned size, else [`MAX_UNSIZED`]), so a server cannot fill the disk. It
//! returns the writer *unpublished*: the caller compares its size and digest with
//! the pin, publishes it with [`BlobWriter::commit_expecting`] or drops it (the
//! temp file goes with it). [`stored`] answers first whether the store already
//! holds the pinned blob intact, so that a stored file needs no network at all.
//!
//! # Transport
//!
//! One `ureq` agent per process, made on the first download: TLS verified
//! against the system's roots (as for registries), proxies from the usual
//! environment variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY`), up to [`MAX_REDIRECTS`] redirects followed (release downloads
//! and mirrors are mostly redirects; the content is verified whatever serves
//! it), no compression asked for (the digest is of the bytes as served).
//! Transport errors, 408, 429 and 5xx are tried [`ATTEMPTS`] times with a
//! growing pause, each attempt from the start; any other answer but 2xx fails
//! at once. Connecting gives up after 10 s; a response whose bytes stop coming
//! for 60 s fails.
//!
//! What it deliberately does not do: decide what to fetch or what the bytes must
//! be (the caller's pin), trust the server's `Content-Length` or checksum headers,
//! send credentials.

use crate::cas::{BlobWriter, Cas};
use crate::hash::Digest;
use std::io::{self, Read, Write};
use std::sync::OnceLock;
use std::time::Duration;

/// Attempts per download (the first and two retries).
pub const ATTEMPTS: u32 = 3;
/// Redirects followed per download.
pub const MAX_REDIRECTS: u32 = 5;
/// The most bytes read for a file whose size is not pinned (64 GiB).
pub const MAX_UNSIZED: u64 = 64 << 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response whose bytes stop coming for this long fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const BUF_SIZE: usize = 256 * 1024;

/// `value` with any `user:password@` part of a URL replaced by `***@`.
pub fn redact(value: &str) -> String {
    match value.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => value.to_string(),
            }
        }
        None => value.to_string(),
    }
}

/// The size of the blob `d` if the store holds it intact (and of the pinned
/// size, when one is given).
pub fn stored(cas: &Cas, d: &Digest, pinned: Option<u64>) -> io::Result<Option<u64>> {
    let len = match cas.open_blob(d) {
        Ok((_, len)) => len,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // Not a regular file: damage, which a good download replaces.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
        Err(e) => return Err(e),
    };
    if pinned.is_some_and(|p| p != len) {
        return Ok(None);
    }
    Ok(cas.verify(d, Some(len))?.then_some(len))
}

/// Why a download failed.
pub enum Failure {
    /// The server could not be reached, or answered with an error status.
    Http { why: String, attempts: u32 },
    /// The body went beyond `limit` bytes.
    TooLong { limit: u64 },
    /// The store could not take the bytes.
    Store(io::Error),
}

/// The agent every download uses, made on the first one.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .timeout_recv_response(Some(STALL_TIMEOUT))
            .user_agent(concat!("imgc/", env!("CARGO_PKG_VERSION")))
            .tls_config(crate::registry::client::tls_config())
            .build();
        ureq::Agent::new_with_config(config)
    })
}

/// Downloads `url` into a new blob writer (not yet published), retrying what
/// is worth retrying. More than `limit` bytes is [`Failure::TooLong`].
pub fn download(url: &str, limit: u64, cas: &Cas) -> Result<BlobWriter, Failure> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 1)));
        }
        let resp = match agent().get(url).call() {
            Ok(r) => r,
            Err(e) => {
                last = transport(&e);
                continue;
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let text = match status.canonical_reason() {
                Some(r) => format!("HTTP {} {r}", status.as_u16()),
                None => format!("HTTP {}", status.as_u16()),
            };
            if crate::registry::client::retryable_status(status.as_u16()) {
                last = text;
                continue;
            }
            return Err(Failure::Http {
                why: text,
                attempts: attempt + 1,
            });
        }
        let mut w = cas.writer().map_err(Failure::Store)?;
        let body = resp.into_body().into_reader().take(limit + 1);
        match copy(body, &mut w) {
            Ok(()) if w.bytes_written() > limit => return Err(Failure::TooLong { limit }),
            Ok(()) => return Ok(w),
            Err(Copy::Store(e)) => return Err(Failure::Store(e)),
            // A connection that breaks mid-body: start again.
            Err(Copy::Read(e)) => last = format!("the connection broke while reading: {e}"),
        }
    }
    Err(Failure::Http {
        why: last,
        attempts: ATTEMPTS,
    })
}

enum Copy {
    Read(io::Error),
    Store(io::Error),
}

fn copy(mut r: impl Read, w: &mut BlobWriter) -> Result<(), Copy> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(Copy::Store)?;
    }
}

/// A transport error in words, with what TLS said when it is about TLS.
fn transport(e: &ureq::Error) -> String {
    let text = crate::input::escape(&e.to_string()).into_owned();
    match crate::registry::client::tls_failure(e) {
        Some(crate::registry::client::TlsFailure::NotTls) => {
            format!("{text} (the server does not speak TLS: is the URL `http://`?)")
        }
        Some(crate::registry::client::TlsFailure::Certificate(_)) => {
            format!("{text} (its TLS certificate does not verify: trust its CA with SSL_CERT_FILE)")
        }
        _ => text,
    }
}
