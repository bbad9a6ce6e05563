//! Fetching a Debian repository's index over HTTP, verified: the one place that
//! talks to Debian repositories.
//!
//! For a `debian` repository of imgc.kdl, [`fetch`] downloads
//! `dists/SUITE/InRelease` (when the server has none, `dists/SUITE/Release` and,
//! with a keyring, `Release.gpg`) and, when the spec gives a keyring, verifies
//! the OpenPGP signature against it: a Release signed by no key of the keyring,
//! or not signed at all, is refused with an error naming the URL, the keys of
//! the keyring and the keys that did sign. An InRelease that fails is never
//! replaced by the Release beside it (that would let whoever serves the files
//! pick the weaker one); the fallback is only for a server that answers 404.
//! The Release's `Suite` or `Codename` must be the suite asked for, so a
//! correctly signed Release of another suite cannot be served in its place.
//!
//! Then, for each component, the Release's SHA256 list names the index
//! `COMPONENT/binary-ARCH/Packages.xz` (else `.gz`, else the plain file): it is
//! downloaded, its size and SHA256 checked against the Release *before* it is
//! decompressed or parsed, and its text handed back for the pure index parser.
//! What the Release does not list is never fetched.
//!
//! # What this module deliberately does not do
//!
//! - Without a keyring nothing is verified but the indexes against the Release
//!   (the spec chose so; `imgc lock` says so on every run).
//! - `Valid-Until` is not enforced: a lock is made once from a Release and pinned
//!   by its SHA256 (`release-sha256` in `imgc.lock`), and snapshots of old suites
//!   are legitimate sources. Key expiry and revocation are not looked at either:
//!   the keyring in the workspace is what the user trusts.
//! - No cache: indexes are fetched anew by each `imgc lock`; builds never read
//!   them (they read only the lock).
//! - No credentials: a URL with a user part is refused by the parser.
//!
//! HTTP: one agent per fetch, redirects followed by hand (at most
//! [`MAX_REDIRECTS`], never from `https` to plain `http`), connect and stall
//! timeouts, every body read within a bound ([`MAX_RELEASE_BYTES`], the size
//! the Release gives for an index, [`MAX_INDEX_TEXT_BYTES`] once decompressed).

use debian_packaging::repository::release::{ChecksumType, ReleaseFile};
use pgp::types::PublicKeyTrait as _;
use pgp::{Deserializable, SignedPublicKey, StandaloneSignature};
use sha2::{Digest as _, Sha256};
use std::io::{BufReader, Read};
use std::time::Duration;

/// Connecting gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response whose bytes stop coming for this long fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed for one file.
pub const MAX_REDIRECTS: usize = 5;
/// A Release, InRelease or Release.gpg larger than this is refused (Debian's
/// InRelease is about 150 KB).
pub const MAX_RELEASE_BYTES: u64 = 16 << 20;
/// A compressed index larger than this is refused whatever the Release says.
pub const MAX_INDEX_BYTES: u64 = 256 << 20;
/// An index larger than this once decompressed is refused (Debian 12's main
/// amd64 `Packages` is about 45 MB).
pub const MAX_INDEX_TEXT_BYTES: u64 = 1 << 30;
/// A keyring file larger than this is refused.
pub const MAX_KEYRING_BYTES: u64 = 8 << 20;

/// Where a repository is and what to read of it (from a `debian` node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The name in imgc.kdl, for messages.
    pub name: String,
    /// The repository root, without a trailing `/`.
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
    pub arch: String,
}

impl Source {
    pub fn from_spec(r: &crate::spec::model::DebianRepo) -> Source {
        Source {
            name: r.name.value.clone(),
            url: r.url.value.trim_end_matches('/').to_string(),
            suite: r.suite.value.clone(),
            components: r.components.value.clone(),
            arch: r.arch.value.clone(),
        }
    }

    fn dist_url(&self, file: &str) -> String {
        format!("{}/dists/{}/{file}", self.url, self.suite)
    }
}

/// The public keys a Release must be signed by.
pub struct Keyring {
    /// Where the keys came from (a workspace path), for messages.
    pub origin: String,
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Parses OpenPGP public keys, binary (`gpg --export`) or ASCII-armored
    /// (`gpg --export --armor`); at least one key.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Keyring, RepoError> {
        let bad = |why: String| RepoError::Keyring {
            origin: origin.to_string(),
            why,
        };
        let armored = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN PGP"));
        let parsed: Vec<pgp::errors::Result<SignedPublicKey>> = if armored {
            SignedPublicKey::from_armor_many(bytes)
                .map_err(|e| bad(e.to_string()))?
                .0
                .collect()
        } else {
            SignedPublicKey::from_bytes_many(bytes).collect()
        };
        let mut keys = Vec::new();
        for k in parsed {
            keys.push(k.map_err(|e| bad(format!("not an OpenPGP public key: {e}")))?);
        }
        if keys.is_empty() {
            return Err(bad("it holds no OpenPGP public key".into()));
        }
        Ok(Keyring {
            origin: origin.to_string(),
            keys,
        })
    }

    /// The fingerprints of the primary keys, for messages.
    pub fn describe(&self) -> String {
        self.keys
            .iter()
            .map(|k| hex::encode_upper(k.primary_key.fingerprint().as_bytes()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether a key of the keyring (a primary key or a subkey: Debian signs
    /// with subkeys) made a valid signature of an InRelease.
    fn verifies_cleartext(&self, sigs: &pgp_cleartext::CleartextSignatures) -> bool {
        self.keys.iter().any(|k| {
            sigs.verify(&k.primary_key).is_ok()
                || k.public_subkeys.iter().any(|s| sigs.verify(&s.key).is_ok())
        })
    }

    /// Whether a key of the keyring made `sig` over `data`.
    fn verifies_detached(&self, sig: &StandaloneSignature, data: &[u8]) -> bool {
        self.keys.iter().any(|k| {
            sig.verify(&k.primary_key, data).is_ok()
                || k.public_subkeys
                    .iter()
                    .any(|s| sig.verify(&s.key, data).is_ok())
        })
    }
}

/// A repository's indexes, fetched and verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// SHA256 (hex) of the file the Release was read from (InRelease, or Release).
    pub release_sha256: String,
    /// Whether the Release's signature was verified against a keyring.
    pub verified: bool,
    /// One index per component, in the order of the spec.
    pub indexes: Vec<FetchedIndex>,
}

/// One component's `Packages` text.
#[derive(Debug, Clone)]
pub struct FetchedIndex {
    pub component: String,
    /// The URL it was downloaded from (compressed or not).
    pub url: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The server could not be reached, or answered with an error.
    #[error("cannot download `{url}`: {why}")]
    Unavailable { url: String, why: String },
    /// The answer is there but cannot be trusted or read.
    #[error("refused `{url}`: {why}")]
    Untrusted { url: String, why: String },
    #[error("cannot read the keyring `{origin}`: {why}")]
    Keyring { origin: String, why: String },
}

impl RepoError {
    /// The stable code of the error (see [`crate::diag::Code`]).
    pub fn code(&self) -> crate::diag::Code {
        match self {
            RepoError::Unavailable { .. } => crate::diag::Code::RepositoryUnavailable,
            RepoError::Untrusted { .. } | RepoError::Keyring { .. } => {
                crate::diag::Code::RepositoryUntrusted
            }
        }
    }

    fn untrusted(url: &str, why: impl Into<String>) -> RepoError {
        RepoError::Untrusted {
            url: url.to_string(),
            why: why.into(),
        }
    }
}

/// Downloads and verifies the indexes of `source` (see the module docs),
/// saying what it does on `progress`.
pub fn fetch(
    source: &Source,
    keyring: Option<&Keyring>,
    progress: &dyn Fn(&str),
) -> Result<Fetched, RepoError> {
    let http = Http::new();
    let (release, release_sha256) = release(&http, source, keyring, progress)?;
    check_suite(&release, source)?;
    let listed: Vec<(String, u64, String)> = match release.iter_index_files(ChecksumType::Sha256) {
        Some(it) => {
            let mut v = Vec::new();
            for e in it {
                let e = e.map_err(|e| {
                    RepoError::untrusted(
                        &source.dist_url("Release"),
                        format!("a bad SHA256 line: {e}"),
                    )
                })?;
                v.push((e.path.to_string(), e.size, e.digest.digest_hex()));
            }
            v
        }
        None => {
            return Err(RepoError::untrusted(
                &source.dist_url("Release"),
                "the Release has no SHA256 list of its indexes",
            ));
        }
    };
    let mut indexes = Vec::new();
    for component in &source.components {
        let dir = format!("{component}/binary-{}", source.arch);
        let choice = ["Packages.xz", "Packages.gz", "Packages"]
            .iter()
            .find_map(|f| {
                let path = format!("{dir}/{f}");
                listed.iter().find(|(p, _, _)| *p == path).cloned()
            });
        let Some((path, size, sha256)) = choice else {
            return Err(RepoError::untrusted(
                &source.dist_url("Release"),
                format!(
                    "the Release lists no `Packages` index for component `{component}` and architecture `{}`",
                    source.arch
                ),
            ));
        };
        let url = source.dist_url(&path);
        progress(&format!(
            "{}: downloading {path} ({})",
            source.name,
            crate::input::human_size(size)
        ));
        let bytes = http.get_exact(&url, size)?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&sha256) {
            return Err(RepoError::untrusted(
                &url,
                format!("its SHA256 is {actual}, the Release says {sha256}"),
            ));
        }
        let text = decompress(&url, &path, &bytes)?;
        indexes.push(FetchedIndex {
            component: component.clone(),
            url,
            text,
        });
    }
    Ok(Fetched {
        release_sha256,
        verified: keyring.is_some(),
        indexes,
    })
}

/// The Release of `source`, verified against `keyring` when there is one, and
/// the SHA256 of the file it was read from.
fn release(
    http: &Http,
    source: &Source,
    keyring: Option<&Keyring>,
    progress: &dyn Fn(&str),
) -> Result<(ReleaseFile<'static>, String), RepoError> {
    let in_url = source.dist_url("InRelease");
    progress(&format!("{}: downloading {in_url}", source.name));
    if let Some(bytes) = http.get_bounded(&in_url, MAX_RELEASE_BYTES, true)? {
        let sha = hex::encode(Sha256::digest(&bytes));
        let release =
            ReleaseFile::from_armored_reader(BufReader::new(bytes.as_slice())).map_err(|e| {
                RepoError::untrusted(&in_url, format!("not a signed Release file: {e}"))
            })?;
        if let Some(keyring) = keyring {
            let Some(sigs) = release.signatures() else {
                return Err(RepoError::untrusted(&in_url, "it holds no signature"));
            };
            let issuers: Vec<String> = sigs
                .iter_signatures()
                .flat_map(|s| {
                    s.issuer()
                        .into_iter()
                        .map(|k| hex::encode_upper(k.as_ref()))
                })
                .collect();
            let ok = keyring.verifies_cleartext(sigs);
            if !ok {
                return Err(not_signed(&in_url, keyring, &issuers));
            }
        }
        return Ok((release, sha));
    }
    let url = source.dist_url("Release");
    progress(&format!("{}: no InRelease; downloading {url}", source.name));
    let bytes = http
        .get_bounded(&url, MAX_RELEASE_BYTES, false)?
        .unwrap_or_default();
    if let Some(keyring) = keyring {
        let sig_url = source.dist_url("Release.gpg");
        let sig = match http.get_bounded(&sig_url, MAX_RELEASE_BYTES, true)? {
            Some(s) => s,
            None => {
                return Err(RepoError::untrusted(
                    &url,
                    format!(
                        "it is not signed: neither `{in_url}` nor `{sig_url}` exists, and the spec gives a keyring"
                    ),
                ));
            }
        };
        verify_detached(&url, &sig_url, &bytes, &sig, keyring)?;
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    let release = ReleaseFile::from_reader(BufReader::new(bytes.as_slice()))
        .map_err(|e| RepoError::untrusted(&url, format!("not a Release file: {e}")))?;
    Ok((release, sha))
}

fn not_signed(url: &str, keyring: &Keyring, issuers: &[String]) -> RepoError {
    let by = if issuers.is_empty() {
        "no key named in its signatures".to_string()
    } else {
        format!("signed by key {}", issuers.join(", "))
    };
    RepoError::untrusted(
        url,
        format!(
            "no valid signature by a key of the keyring `{}` ({}); {by}",
            keyring.origin,
            keyring.describe()
        ),
    )
}

fn verify_detached(
    url: &str,
    sig_url: &str,
    data: &[u8],
    sig: &[u8],
    keyring: &Keyring,
) -> Result<(), RepoError> {
    let armored = sig.starts_with(b"-----BEGIN PGP");
    let parsed: Vec<pgp::errors::Result<StandaloneSignature>> = if armored {
        StandaloneSignature::from_armor_many(sig)
            .map_err(|e| RepoError::untrusted(sig_url, format!("not an OpenPGP signature: {e}")))?
            .0
            .collect()
    } else {
        StandaloneSignature::from_bytes_many(sig).collect()
    };
    let mut sigs = Vec::new();
    for s in parsed {
        sigs.push(s.map_err(|e| {
            RepoError::untrusted(sig_url, format!("not an OpenPGP signature: {e}"))
        })?);
    }
    let issuers: Vec<String> = sigs
        .iter()
        .flat_map(|s| {
            s.signature
                .issuer()
                .into_iter()
                .map(|k| hex::encode_upper(k.as_ref()))
        })
        .collect();
    let ok = sigs.iter().any(|s| keyring.verifies_detached(s, data));
    if ok {
        Ok(())
    } else {
        Err(not_signed(url, keyring, &issuers))
    }
}

/// The Release must be for the suite asked for (its `Suite` or its `Codename`).
fn check_suite(release: &ReleaseFile<'_>, source: &Source) -> Result<(), RepoError> {
    let suite = release.suite();
    let codename = release.codename();
    if suite == Some(source.suite.as_str()) || codename == Some(source.suite.as_str()) {
        return Ok(());
    }
    Err(RepoError::untrusted(
        &source.dist_url("Release"),
        format!(
            "it is the Release of suite `{}` (codename `{}`), not of `{}`",
            suite.unwrap_or("?"),
            codename.unwrap_or("?"),
            source.suite
        ),
    ))
}

/// The text of a `Packages` index, decompressed as its name says, bounded.
fn decompress(url: &str, path: &str, bytes: &[u8]) -> Result<String, RepoError> {
    let reader: Box<dyn Read + '_> = if path.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new(bytes))
    } else if path.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut out = Vec::new();
    reader
        .take(MAX_INDEX_TEXT_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| RepoError::untrusted(url, format!("cannot decompress it: {e}")))?;
    if out.len() as u64 > MAX_INDEX_TEXT_BYTES {
        return Err(RepoError::untrusted(
            url,
            format!(
                "it decompresses to more than {}",
                crate::input::human_size(MAX_INDEX_TEXT_BYTES)
            ),
        ));
    }
    String::from_utf8(out).map_err(|_| RepoError::untrusted(url, "the index is not UTF-8 text"))
}

/// Plain GETs with bounds, timeouts and redirects followed by hand.
struct Http {
    agent: ureq::Agent,
}

impl Http {
    fn new() -> Http {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .timeout_recv_response(Some(STALL_TIMEOUT))
            .user_agent(concat!("imgc/", env!("CARGO_PKG_VERSION")))
            .tls_config(crate::registry::client::tls_config())
            .build();
        Http {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// The response to a GET of `url` after redirects (status 200), or `None`
    /// for a 404 when `missing_ok`.
    fn get(
        &self,
        url: &str,
        missing_ok: bool,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>, RepoError> {
        let unavailable = |at: &str, why: String| RepoError::Unavailable {
            url: at.to_string(),
            why,
        };
        let mut at = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self
                .agent
                .get(at.as_str())
                .call()
                .map_err(|e| unavailable(&at, e.to_string()))?;
            let status = resp.status().as_u16();
            match status {
                200 => return Ok(Some(resp)),
                404 | 410 if missing_ok => return Ok(None),
                301 | 302 | 303 | 307 | 308 => {
                    let Some(loc) = resp.headers().get("location").and_then(|v| v.to_str().ok())
                    else {
                        return Err(unavailable(
                            &at,
                            format!("a redirect ({status}) without `Location`"),
                        ));
                    };
                    let next = join_url(&at, loc);
                    if !next.starts_with("http://") && !next.starts_with("https://") {
                        return Err(unavailable(
                            &at,
                            format!("a redirect to `{next}`, which is not HTTP"),
                        ));
                    }
                    if at.starts_with("https://") && next.starts_with("http://") {
                        return Err(unavailable(
                            &at,
                            format!("a redirect from https to plain http (`{next}`) is refused"),
                        ));
                    }
                    at = next;
                }
                _ => {
                    let reason = resp.status().canonical_reason().unwrap_or("");
                    return Err(unavailable(
                        &at,
                        format!("the server answered {status} {reason}"),
                    ));
                }
            }
        }
        Err(unavailable(
            url,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    /// The body of `url`, at most `max` bytes (else an error), or `None` for a
    /// 404 when `missing_ok`.
    fn get_bounded(
        &self,
        url: &str,
        max: u64,
        missing_ok: bool,
    ) -> Result<Option<Vec<u8>>, RepoError> {
        let Some(resp) = self.get(url, missing_ok)? else {
            return Ok(None);
        };
        let bytes = read_body(url, resp, max)?;
        if bytes.len() as u64 > max {
            return Err(RepoError::Unavailable {
                url: url.to_string(),
                why: format!(
                    "the answer is larger than the {} allowed",
                    crate::input::human_size(max)
                ),
            });
        }
        Ok(Some(bytes))
    }

    /// The body of `url`, which must be exactly `size` bytes (as the Release says).
    fn get_exact(&self, url: &str, size: u64) -> Result<Vec<u8>, RepoError> {
        if size > MAX_INDEX_BYTES {
            return Err(RepoError::untrusted(
                url,
                format!(
                    "the Release gives it {}, more than the {} an index may have",
                    crate::input::human_size(size),
                    crate::input::human_size(MAX_INDEX_BYTES)
                ),
            ));
        }
        let bytes = match self.get(url, false)? {
            Some(resp) => read_body(url, resp, size)?,
            None => Vec::new(),
        };
        if bytes.len() as u64 != size {
            let got = if bytes.len() as u64 > size {
                "more".to_string()
            } else {
                bytes.len().to_string()
            };
            return Err(RepoError::untrusted(
                url,
                format!("it is {got} bytes, the Release says {size}"),
            ));
        }
        Ok(bytes)
    }
}

/// Reads at most `max + 1` bytes of a body (one more than allowed tells "too long").
fn read_body(
    url: &str,
    resp: ureq::http::Response<ureq::Body>,
    max: u64,
) -> Result<Vec<u8>, RepoError> {
    let mut out = Vec::new();
    resp.into_body()
        .into_with_config()
        .limit(max.saturating_add(1))
        .reader()
        .read_to_end(&mut out)
        .map_err(|e| RepoError::Unavailable {
            url: url.to_string(),
            why: format!("the download failed: {e}"),
        })?;
    Ok(out)
}

/// `loc` (a `Location` header) relative to `base`.
fn join_url(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    if let Some(rest) = loc.strip_prefix("//") {
        return format!("{}{rest}", &base[..scheme_end]);
    }
    if loc.starts_with('/') {
        return format!("{}{loc}", &base[..host_end]);
    }
    let dir_end = base
        .rfind('/')
        .filter(|i| *i >= host_end)
        .map_or(base.len(), |i| i + 1);
    let mut dir = base[..dir_end].to_string();
    if !dir.ends_with('/') {
        dir.push('/');
    }
    format!("{dir}{loc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_url() {
        assert_eq!(join_url("http://a/b/c", "/x"), "http://a/x");
        assert_eq!(join_url("http://a/b/c", "x"), "http://a/b/x");
        assert_eq!(join_url("https://a/b/c", "//m/y"), "https://m/y");
        assert_eq!(join_url("http://a/b", "https://z/q"), "https://z/q");
        assert_eq!(join_url("http://a", "x"), "http://a/x");
    }

    #[test]
    fn a_keyring_of_garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x99\x00",
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nzz\n",
        ] {
            let e = Keyring::parse(bytes, "keys/k.gpg").err().expect("refused");
            assert!(e.to_string().contains("keys/k.gpg"), "{e}");
        }
    }

    #[test]
    fn indexes_decompress_within_bounds() {
        let text = "Package: a\nVersion: 1\n\n";
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(text.as_bytes(), 6)
            .read_to_end(&mut xz)
            .unwrap();
        assert_eq!(
            decompress("u", "main/binary-amd64/Packages.xz", &xz).unwrap(),
            text
        );
        assert_eq!(
            decompress("u", "main/binary-amd64/Packages", text.as_bytes()).unwrap(),
            text
        );
        let e = decompress("http://x/P.xz", "Packages.xz", b"not xz").unwrap_err();
        assert!(e.to_string().contains("http://x/P.xz"), "{e}");
        let e = decompress("u", "Packages", &[0xff, 0xfe]).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }
}
