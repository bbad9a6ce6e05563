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
//! Transport, retries and the bounded read are [`crate::fetch`]'s (the one owner
//! of pinned downloads). Messages show URLs without any `user:password@` part.
//!
//! What it deliberately does not do: decide what to fetch (the lock does),
//! verify a repository's signatures (the repository fetcher does, before a
//! lock names a sha256), or read the `.deb` ([`super::deb`]).

use super::deb::Code;
use crate::cas::Cas;
use crate::fetch::{Failure, download, redact};
use crate::hash::Digest;

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

/// Downloads pinned `.deb` files into the store.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fetcher;

impl Fetcher {
    pub fn new() -> Fetcher {
        Fetcher
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
        match crate::fetch::stored(cas, sha256, Some(size)) {
            Ok(Some(_)) => {
                return Ok(Fetched {
                    digest: *sha256,
                    size,
                    downloaded: false,
                });
            }
            Ok(None) => {}
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
        let w = match download(url, size, cas) {
            Ok(w) => w,
            Err(Failure::TooLong { .. }) => {
                return Err(fail(
                    Code::Mismatch,
                    format!("the server sent more than the expected {size} bytes"),
                ));
            }
            Err(Failure::Http { why, attempts }) => {
                let tries = if attempts > 1 {
                    format!(" (after {attempts} attempts)")
                } else {
                    String::new()
                };
                return Err(fail(Code::Download, format!("{why}{tries}")));
            }
            Err(Failure::Store(e)) => {
                return Err(fail(
                    Code::Download,
                    format!("cannot write it into the store: {e}"),
                ));
            }
        };
        let got = w.bytes_written();
        if got != size {
            return Err(fail(
                Code::Mismatch,
                format!("expected {size} bytes, got {got}"),
            ));
        }
        let actual = w.digest_so_far();
        if actual != *sha256 {
            return Err(fail(
                Code::Mismatch,
                format!(
                    "sha256 mismatch: expected {}, got {}",
                    sha256.hex(),
                    actual.hex()
                ),
            ));
        }
        w.commit_expecting(sha256).map_err(|e| {
            fail(
                Code::Download,
                format!("cannot write it into the store: {e}"),
            )
        })?;
        Ok(Fetched {
            digest: *sha256,
            size,
            downloaded: true,
        })
    }
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
                    std::thread::sleep(std::time::Duration::from_millis(50));
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
        assert_eq!(
            e.to_string(),
            format!("E085 `{missing}`: HTTP 404 Not Found")
        );

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
