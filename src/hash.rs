//! Hashes and the stable hashing protocol.
//!
//! Three kinds of identity, each its own type so they cannot be mixed up:
//!
//! | type | algorithm | names | persisted in |
//! |---|---|---|---|
//! | [`Key`] | blake3 | action keys, input file contents | SQLite, remote `ac/` |
//! | [`Digest`] | sha256 | every OCI blob (compressed layer, config, manifest) | CAS, OCI JSON |
//! | [`DiffId`] | sha256 | the *uncompressed* tar of a layer | image config `rootfs.diff_ids` |
//!
//! Keys are never derived with `#[derive(Hash)]` (whose output may change between
//! compiler versions and ignores field boundaries). Instead [`KeyHasher`] is an
//! explicit protocol: every field is written as a one-byte type tag, then its
//! length as a little-endian u64 where it has one, then its bytes. So `("ab", "c")`
//! and `("a", "bc")` hash differently, and the encoding is fixed by this file
//! alone. The golden-value tests below fail if the protocol ever drifts, which
//! must come with a bump of [`KEY_FORMAT_VERSION`].

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::fmt;
use std::str::FromStr;

/// Bumped whenever anything about how keys are derived changes. Part of every key.
pub const KEY_FORMAT_VERSION: u32 = 1;

/// A blake3 hash: an action key or the hash of an input file's contents.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn of_bytes(bytes: &[u8]) -> Key {
        Key(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Key> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Key(out))
    }

    /// The first 12 hex digits, for humans.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

/// A sha256 content digest of an OCI blob, written `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(sha2::Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Digest> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.hex()[..12])
    }
}

/// Error for a string that is not `sha256:<64 lowercase hex>`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a sha256 digest (expected `sha256:` and 64 lowercase hex digits)")]
pub struct BadDigest(pub String);

impl FromStr for Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Digest, BadDigest> {
        s.strip_prefix("sha256:")
            .and_then(Digest::from_hex)
            .ok_or_else(|| BadDigest(s.to_string()))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The sha256 of a layer's uncompressed tar stream (OCI `diff_id`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DiffId(pub Digest);

impl fmt::Display for DiffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for DiffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiffId({:?})", self.0)
    }
}

/// Incremental sha256, for hashing while streaming.
#[derive(Clone, Default)]
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256(sha2::Sha256::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// Where a [`HashingReader`] reports `(digest, length)` once it is done; `None`
/// until then.
pub type HashReport = std::sync::Arc<std::sync::Mutex<Option<(Digest, u64)>>>;

/// A reader that hashes what passes through and reports the sha256 digest and
/// length into its [`HashReport`] once `total` bytes have passed (an HTTP client
/// stops reading at the Content-Length, so the end may never be read) or the end
/// is reached. For checking a local file while it is uploaded.
pub struct HashingReader<R> {
    inner: R,
    sha: Option<Sha256>,
    len: u64,
    total: u64,
    done: HashReport,
}

impl<R> HashingReader<R> {
    /// Clears `done` (a retry starts over) and hashes `inner`.
    pub fn new(inner: R, total: u64, done: HashReport) -> Self {
        *done.lock().unwrap_or_else(|e| e.into_inner()) = None;
        HashingReader {
            inner,
            sha: Some(Sha256::new()),
            len: 0,
            total,
            done,
        }
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(sha) = &mut self.sha {
            sha.update(&buf[..n]);
            self.len += n as u64;
            if n == 0 || self.len >= self.total {
                let d = self.sha.take().map(|s| (s.finish(), self.len));
                *self.done.lock().unwrap_or_else(|e| e.into_inner()) = d;
            }
        }
        Ok(n)
    }
}

/// Type tags of the stable hashing protocol. Never reuse a value.
mod tag {
    pub const STR: u8 = 1;
    pub const BYTES: u8 = 2;
    pub const U64: u8 = 3;
    pub const KEY: u8 = 4;
    pub const DIGEST: u8 = 5;
    pub const FIELD: u8 = 6;
    pub const SEQ: u8 = 7;
    pub const NONE: u8 = 8;
    pub const SOME: u8 = 9;
}

/// The stable hashing protocol (see the module docs). Fields are named with
/// [`KeyHasher::field`], so reordering code cannot silently alias two keys.
pub struct KeyHasher(blake3::Hasher);

impl KeyHasher {
    /// A hasher for one kind of key. `domain` separates kinds (`"layer"`, `"image"`).
    pub fn new(domain: &str) -> KeyHasher {
        let mut h = KeyHasher(blake3::Hasher::new());
        h.u64(u64::from(KEY_FORMAT_VERSION));
        h.str(domain);
        h
    }

    fn len(&mut self, n: usize) {
        self.0.update(&(n as u64).to_le_bytes());
    }

    pub fn field(&mut self, name: &str) -> &mut Self {
        self.0.update(&[tag::FIELD]);
        self.len(name.len());
        self.0.update(name.as_bytes());
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.update(&[tag::STR]);
        self.len(s.len());
        self.0.update(s.as_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update(&[tag::BYTES]);
        self.len(b.len());
        self.0.update(b);
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&[tag::U64]);
        self.0.update(&v.to_le_bytes());
        self
    }

    pub fn key(&mut self, k: &Key) -> &mut Self {
        self.0.update(&[tag::KEY]);
        self.0.update(&k.0);
        self
    }

    pub fn digest(&mut self, d: &Digest) -> &mut Self {
        self.0.update(&[tag::DIGEST]);
        self.0.update(&d.0);
        self
    }

    /// Starts a sequence of `n` items; the items follow.
    pub fn seq(&mut self, n: usize) -> &mut Self {
        self.0.update(&[tag::SEQ]);
        self.len(n);
        self
    }

    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            None => {
                self.0.update(&[tag::NONE]);
            }
            Some(s) => {
                self.0.update(&[tag::SOME]);
                self.str(s);
            }
        }
        self
    }

    pub fn finish(&self) -> Key {
        Key(*self.0.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_and_rejects_garbage() {
        let d = Digest::of_bytes(b"hello");
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!(
            "md5:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
                .parse::<Digest>()
                .is_err()
        );
        assert!(
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"
                .parse::<Digest>()
                .is_err()
        );
    }

    #[test]
    fn field_boundaries_matter() {
        let a = KeyHasher::new("t").str("ab").str("c").finish();
        let b = KeyHasher::new("t").str("a").str("bc").finish();
        assert_ne!(a, b);
        let c = KeyHasher::new("t").opt_str(None).finish();
        let d = KeyHasher::new("t").opt_str(Some("")).finish();
        assert_ne!(c, d);
        assert_ne!(KeyHasher::new("a").finish(), KeyHasher::new("b").finish());
    }

    /// Golden values: if this fails, the key protocol changed. Bump
    /// KEY_FORMAT_VERSION (which changes these values on purpose) and update them.
    #[test]
    fn key_protocol_golden_values() {
        let mut h = KeyHasher::new("golden");
        h.field("name").str("api");
        h.field("mode").u64(0o755);
        h.field("content").key(&Key::of_bytes(b"x"));
        h.field("dep").digest(&Digest::of_bytes(b"y"));
        h.field("list").seq(2).str("a").bytes(b"b");
        h.field("opt").opt_str(None);
        assert_eq!(
            h.finish().to_hex(),
            "be001f866261cc4befdefb27cc1f8e6dd12ed892c477d7b78a03dd724340040f"
        );
        assert_eq!(
            Key::of_bytes(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
