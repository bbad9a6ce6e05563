//! Fetching a pinned `.deb` (URL, size, sha256 from the lock) into the store.
//!
//! [`Fetcher::fetch`] first asks the store: a blob of the expected size that
//! hashes to the expected sha256 is used as it is, with **no network at all**
//! (a build with every package in the store is offline). Otherwise the URL is
//! fetched with `GET` and the body streamed into [`Cas::writer`], hashed on
//! the way; at most `size + 1` bytes are read. The blob is published only if
//! it has exactly the expected size and sha256
//! ([`crate::cas::BlobWriter::commit_expecting`] checks again); anything else
//! is an error that names the URL and prints the expected and actual size or
//! sha256 (so a user who changed a pin on purpose can paste the new one), and
//! the temp file is dropped: nothing unverified is ever stored.
//!
//! Transport: `http` and `https` (verified against the system's roots, as the
//! registry client does). Redirects are followed (at most
//! [`MAX_REDIRECTS`]; mirrors redirect, and the content is verified whatever
//! serves it). Transport errors, 408, 429 and 5xx are retried [`ATTEMPTS`]
//! times with a growing pause; any other status fails at once. Connecting
//! gives up after 10 s, and a response whose bytes stop coming for 60 s fails.
//! Messages show URLs without any `user:password@` part.
//!
//! What it deliberately does not do: decide what to fetch (the lock does),
//! verify a repository's signatures (the repository fetcher does, before a
//! lock names a sha256), or read the `.deb` ([`super::deb`]).

use super::deb::Code;
use crate::cas::Cas;
use crate::hash::{Digest, Sha256};
use crate::remote::http::redact;
use std::io::{self, Read, Write};
use std::time::Duration;

/// Attempts per download (the first and two retries).
pub const ATTEMPTS: u32 = 3;
/// Redirects followed per request.
pub const MAX_REDIRECTS: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a pinned download failed. `url` holds no credentials.
#[derive(Debug, thiserror::Error)]
#[error("{code} `{url}`: {message}")]
pub struct FetchError {
    /// [`Code::Download`] or [`Code::Mismatch`].
    pub code: Code,
    pub url: String,
    pub message: String,
}

/// What [`Fetcher::fetch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub digest: Digest,
    pub size: u64,
    /// `false`: the store already held the blob intact; nothing was fetched.
    pub downloaded: bool,
}

/// Downloads pinned files into the store; one agent (pooled connections) for
/// many downloads.
pub struct Fetcher {
    agent: ureq::Agent,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::new()
    }
}

impl Fetcher {
    pub fn new() -> Fetcher {
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
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .timeout_per_write(Some(STALL_TIMEOUT))
            .timeout_recv_response(Some(STALL_TIMEOUT))
            .user_agent(concat!("imgc/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build();
        Fetcher {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// Makes the blob `sha256` of `size` bytes present in `cas`: kept if the
    /// store holds it intact, else downloaded from `url` and verified.
    pub fn fetch(
        &self,
        cas: &Cas,
        url: &str,
        size: u64,
        sha256: &Digest,
    ) -> Result<Fetched, FetchError> {
        let shown = redact(url);
        let fail = |code, message: String| FetchError {
            code,
            url: shown.clone(),
            message,
        };
        match cas.verify(sha256, Some(size)) {
            Ok(true) => {
                return Ok(Fetched {
                    digest: *sha256,
                    size,
                    downloaded: false,
                });
            }
            Ok(false) => {}
            Err(e) => {
                return Err(fail(
                    Code::Download,
                    format!("cannot check the store for {sha256}: {e}"),
                ));
            }
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(fail(
                Code::Download,
                "only http:// and https:// URLs can be downloaded".into(),
            ));
        }
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 1)));
            }
            let response = match self.agent.get(url).call() {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = response.status().as_u16();
            match status {
                200 => {}
                408 | 429 | 500..=599 => {
                    last = format!("HTTP {status}");
                    continue;
                }
                _ => return Err(fail(Code::Download, format!("HTTP {status}"))),
            }
            let body = response.into_body().into_reader();
            match store(body, cas, size, sha256) {
                Ok(()) => {
                    return Ok(Fetched {
                        digest: *sha256,
                        size,
                        downloaded: true,
                    });
                }
                Err(Stored::Mismatch(m)) => return Err(fail(Code::Mismatch, m)),
                Err(Stored::Store(e)) => {
                    return Err(fail(
                        Code::Download,
                        format!("cannot write it into the store: {e}"),
                    ));
                }
                // A connection broken mid-body: retried like any transport error.
                Err(Stored::Transfer(e)) => last = e.to_string(),
            }
        }
        Err(fail(
            Code::Download,
            format!("{last} (after {ATTEMPTS} attempts)"),
        ))
    }
}

enum Stored {
    Mismatch(String),
    Store(io::Error),
    Transfer(io::Error),
}

/// Streams `body` into the store, reading at most `size + 1` bytes, and
/// publishes it only if it is `size` bytes hashing to `sha256`.
fn store(body: impl Read, cas: &Cas, size: u64, sha256: &Digest) -> Result<(), Stored> {
    let mut w = cas.writer().map_err(Stored::Store)?;
    let mut sha = Sha256::new();
    let mut got = 0u64;
    let mut body = body.take(size.saturating_add(1));
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Stored::Transfer(e)),
        };
        got += n as u64;
        if got > size {
            return Err(Stored::Mismatch(format!(
                "the server sent more than the expected {size} bytes"
            )));
        }
        sha.update(&buf[..n]);
        w.write_all(&buf[..n]).map_err(Stored::Store)?;
    }
    if got != size {
        return Err(Stored::Mismatch(format!(
            "expected {size} bytes, got {got}"
        )));
    }
    let actual = sha.finish();
    if actual != *sha256 {
        return Err(Stored::Mismatch(format!(
            "sha256 mismatch: expected {}, got {}",
            sha256.hex(),
            actual.hex()
        )));
    }
    w.commit_expecting(sha256).map_err(Stored::Store)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    /// `python3 -m http.server` serving `dir` on 127.0.0.1, stopped (by its
    /// own PID) when dropped.
    struct Server {
        child: Child,
        port: u16,
    }

    impl Server {
        fn start(dir: &Path) -> Server {
            for _ in 0..5 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .unwrap()
                    .port();
                let mut child = Command::new("python3")
                    .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
                    .arg(dir)
                    .arg(port.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("python3 runs");
                for _ in 0..100 {
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return Server { child, port };
                    }
                    if child.try_wait().unwrap().is_some() {
                        break; // lost the port to another process: try another
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("python3 -m http.server did not start");
        }

        fn url(&self, name: &str) -> String {
            format!("http://127.0.0.1:{}/{name}", self.port)
        }

        fn stop(mut self) {
            self.kill();
        }

        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.kill();
        }
    }

    #[test]
    fn download_verify_and_offline() {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        std::fs::create_dir(&served).unwrap();
        let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(served.join("pkg_1.0_amd64.deb"), &content).unwrap();
        let digest = Digest::of_bytes(&content);
        let size = content.len() as u64;
        let cas = Cas::open(&dir.path().join("cache")).unwrap();
        let fetcher = Fetcher::new();
        let server = Server::start(&served);
        let url = server.url("pkg_1.0_amd64.deb");

        // A wrong sha256: refused, the actual one printed, nothing stored.
        let wrong = Digest::of_bytes(b"something else");
        let e = fetcher.fetch(&cas, &url, size, &wrong).unwrap_err();
        assert_eq!(e.code, Code::Mismatch, "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("E086 `{url}`: ")), "{msg}");
        assert!(
            msg.contains(&wrong.hex()) && msg.contains(&digest.hex()),
            "{msg}"
        );
        assert!(!cas.contains(&wrong) && !cas.contains(&digest));

        // A wrong size (either way): refused.
        let e = fetcher.fetch(&cas, &url, size - 1, &digest).unwrap_err();
        assert_eq!(e.code, Code::Mismatch, "{e}");
        assert!(e.to_string().contains("more than the expected"), "{e}");
        let e = fetcher.fetch(&cas, &url, size + 1, &digest).unwrap_err();
        assert!(e.to_string().contains(&format!("got {size}")), "{e}");
        assert!(!cas.contains(&digest));

        // Missing on the server: an HTTP error naming the URL.
        let missing = server.url("nope.deb");
        let e = fetcher.fetch(&cas, &missing, size, &digest).unwrap_err();
        assert_eq!(e.code, Code::Download);
        assert_eq!(e.to_string(), format!("E085 `{missing}`: HTTP 404"));

        // The right pin: downloaded and stored.
        let f = fetcher.fetch(&cas, &url, size, &digest).unwrap();
        assert!(f.downloaded);
        assert_eq!(cas.read(&digest).unwrap(), content);

        // Tampered on the server: the stored copy is used, no request made.
        std::fs::write(served.join("pkg_1.0_amd64.deb"), b"tampered").unwrap();
        server.stop();
        let f = fetcher.fetch(&cas, &url, size, &digest).unwrap();
        assert!(!f.downloaded, "offline: the store holds it");

        // A damaged stored copy with the server gone: a download error, not
        // the damaged bytes.
        let path = cas.blob_path(&digest);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&path, b"damaged").unwrap();
        let e = fetcher.fetch(&cas, &url, size, &digest).unwrap_err();
        assert_eq!(e.code, Code::Download, "{e}");
        assert!(e.to_string().contains("after 3 attempts"), "{e}");
    }

    #[test]
    fn tampered_download_is_refused_and_a_good_one_repairs_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        std::fs::create_dir(&served).unwrap();
        let good = b"the real package bytes".to_vec();
        let digest = Digest::of_bytes(&good);
        // Same size, different bytes.
        let mut tampered = good.clone();
        tampered[0] ^= 1;
        std::fs::write(served.join("p.deb"), &tampered).unwrap();
        let cas = Cas::open(&dir.path().join("cache")).unwrap();
        let server = Server::start(&served);
        let fetcher = Fetcher::new();
        let e = fetcher
            .fetch(&cas, &server.url("p.deb"), good.len() as u64, &digest)
            .unwrap_err();
        assert_eq!(e.code, Code::Mismatch, "{e}");
        assert!(
            e.to_string()
                .contains(&format!("got {}", Digest::of_bytes(&tampered).hex())),
            "{e}"
        );
        assert!(!cas.contains(&digest));
        std::fs::write(served.join("p.deb"), &good).unwrap();
        let f = fetcher
            .fetch(&cas, &server.url("p.deb"), good.len() as u64, &digest)
            .unwrap();
        assert!(f.downloaded);
        assert!(cas.verify(&digest, Some(good.len() as u64)).unwrap());
    }

    #[test]
    fn only_http_urls() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let e = Fetcher::new()
            .fetch(&cas, "file:///etc/passwd", 1, &Digest::of_bytes(b"x"))
            .unwrap_err();
        assert_eq!(e.code, Code::Download);
        assert!(e.to_string().contains("only http:// and https://"), "{e}");
    }
}
