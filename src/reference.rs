//! Image references: `host[:port]/path/name[:tag][@sha256:hex]`, parsed the way
//! Docker and the distribution project parse them (pure: strings in, values out).
//!
//! | written | registry | repository | tag | digest |
//! |---|---|---|---|---|
//! | `alpine` | `docker.io` | `library/alpine` | | |
//! | `acme/api:1.2` | `docker.io` | `acme/api` | `1.2` | |
//! | `127.0.0.1:5000/base@sha256:…` | `127.0.0.1:5000` | `base` | | `sha256:…` |
//! | `registry.example.com/a/b:t@sha256:…` | `registry.example.com` | `a/b` | `t` | `sha256:…` |
//!
//! The first path component is a registry host when it contains `.` or `:`, is
//! `localhost`, or is a bracketed IPv6 address; otherwise the reference is on
//! Docker Hub (`docker.io`, whose API lives at `registry-1.docker.io`), and a
//! single-component name there gets the `library/` namespace.
//!
//! Only `sha256` digests are accepted: they are what imgc writes and verifies.
//! A reference never carries credentials: a `user:pass@` prefix is refused with
//! a message that does not repeat it.

use crate::hash::Digest;
use std::fmt;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API is served.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    /// `host[:port]`, lowercase; `docker.io` for Docker Hub.
    pub registry: String,
    /// `path/name`, with `library/` added for single-component Docker Hub names.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a string is not a reference. The message never repeats what looked like a
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("an image reference is empty")]
    Empty,
    #[error(
        "an image reference cannot carry credentials (`user:password@`); give them through a credential store instead"
    )]
    Credentials,
    #[error("`{0}` is not a valid image reference: {1}")]
    Invalid(String, &'static str),
}

impl Reference {
    /// Parses `s`.
    pub fn parse(s: &str) -> Result<Reference, RefError> {
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        let bad = |why: &'static str| RefError::Invalid(s.to_string(), why);
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RefError::Invalid(
                s.escape_default().to_string(),
                "it contains whitespace or control characters",
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((name, d)) => {
                if d.contains('@') || name.contains('@') {
                    return Err(RefError::Credentials);
                }
                // `user:pass@host/...`: the part before `@` has no `/`.
                if !name.contains('/') && d.contains('/') {
                    return Err(RefError::Credentials);
                }
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("only `sha256:` digests are supported"))?;
                let digest = Digest::from_hex(hex)
                    .ok_or_else(|| bad("a sha256 digest is 64 lowercase hex digits"))?;
                (name, Some(digest))
            }
            None => (s, None),
        };
        // A tag is after the last `:` that follows the last `/` (a `:` before
        // it belongs to the host's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad(
                    "a tag is 1 to 128 of `A-Za-z0-9_.-` and does not start with `.` or `-`",
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if is_host(first) => (first.to_ascii_lowercase(), path),
            _ => (DOCKER_HUB.to_string(), name),
        };
        if registry != DOCKER_HUB && !valid_host(&registry) {
            return Err(bad("the registry host is not a valid `host[:port]`"));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(bad(
                "each path component is lowercase letters and digits, separated by `.`, `_`, `__` or `-`",
            ));
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(bad("the name is longer than 255 characters"));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The host (and port) the registry API is served on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The host without its port (brackets kept for IPv6).
    pub fn hostname(&self) -> &str {
        host_without_port(&self.registry)
    }

    /// True when the registry is on this machine (`localhost`, 127.0.0.0/8,
    /// `::1`): plain HTTP is allowed there without a flag, as Docker allows it.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.hostname())
    }

    /// What the registry resolves: the digest when pinned, else the tag, else `latest`.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// This reference pinned to `digest` (keeping its tag, for humans).
    pub fn pinned(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// This reference without tag or digest: `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

/// `host` or `host:port`, where host is a DNS name, an IPv4 address or a
/// bracketed IPv6 address.
fn valid_host(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match tail {
                    "" => return true,
                    t => match t.strip_prefix(':') {
                        Some(p) => ("v6", Some(p)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if p.parse::<u32>().map_or(true, |n| n == 0 || n > 65535) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn host_without_port(registry: &str) -> &str {
    if registry.starts_with('[') {
        match registry.find(']') {
            Some(i) => &registry[..=i],
            None => registry,
        }
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

/// `localhost`, an address in 127.0.0.0/8, or `::1` (bracketed or not).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !t.starts_with('.')
        && !t.starts_with('-')
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or one or more `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_names_are_normalized() {
        let r = p("alpine");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/alpine")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.manifest_ref(), "latest");
        let r = p("acme/api:1.2");
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("acme/api", Some("1.2"))
        );
        assert_eq!(r.to_string(), "docker.io/acme/api:1.2");
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let r = p(&format!("127.0.0.1:5000/team/base:v1@sha256:{HEX}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/base");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.unwrap().hex(), HEX);
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert!(r.is_loopback());
        assert_eq!(
            r.to_string(),
            format!("127.0.0.1:5000/team/base:v1@sha256:{HEX}")
        );
        let r = p("localhost:5000/x");
        assert!(r.is_loopback() && r.tag.is_none());
        let r = p("[::1]:5000/x:t");
        assert_eq!((r.registry.as_str(), r.hostname()), ("[::1]:5000", "[::1]"));
        assert!(r.is_loopback());
        let r = p("Registry.Example.com/a/b");
        assert_eq!(r.registry, "registry.example.com");
        assert!(!r.is_loopback());
        assert!(!p("127.example.com/a").is_loopback());
        assert!(p("127.1.2.3:1/a").is_loopback());
    }

    #[test]
    fn pinning_keeps_the_tag() {
        let d = Digest::from_hex(HEX).unwrap();
        let r = p("example.com/a:t").pinned(d);
        assert_eq!(r.to_string(), format!("example.com/a:t@sha256:{HEX}"));
        assert_eq!(r.name(), "example.com/a");
    }

    #[test]
    fn malformed_references_are_refused() {
        for s in [
            "",
            "UPPER/case",
            "a//b",
            "a/b:",
            "a/b:-x",
            "example.com:99999/a",
            "example.com:/a",
            "a/b@sha256:1234",
            &format!("a/b@sha512:{HEX}"),
            "a b",
            "a/b\x1b[31m",
            "[::zz]:5000/a",
            "-a.com/b",
            "a/-b",
            "a/b_",
            "a/b___c",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} was accepted");
        }
        assert_eq!(
            Reference::parse("ex.com/a/b:t").unwrap().tag.as_deref(),
            Some("t")
        );
    }

    #[test]
    fn credentials_are_refused_without_being_repeated() {
        for s in ["alice:s3cret@example.com/a", "alice@example.com/a:t"] {
            let e = Reference::parse(s).unwrap_err();
            assert_eq!(e, RefError::Credentials, "{s}");
            assert!(!e.to_string().contains("s3cret"));
        }
    }
}
