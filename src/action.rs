//! Actions as data, and what enters their keys (pure).
//!
//! Every target becomes one action; its key is the stable hash
//! ([`crate::hash::KeyHasher`]) of a set of named [`Components`]. Keeping the
//! components by name, rather than only their hash, is what lets imgc say *why*
//! something rebuilt: the last build's components are stored per label and
//! compared with the current ones ([`Components::diff`]).
//!
//! What enters each kind's key, and why, is tabled in [`crate::actions`].

use crate::hash::{DiffId, Digest, Key, KeyHasher};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The named parts of a key. The key is a pure function of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Components(BTreeMap<String, String>);

impl Components {
    pub fn new(kind: &str) -> Components {
        let mut c = Components::default();
        c.set("kind", kind);
        c
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The action key: every component, in name order, through the stable protocol.
    pub fn key(&self) -> Key {
        let mut h = KeyHasher::new(self.get("kind").unwrap_or("action"));
        h.seq(self.0.len());
        for (name, value) in &self.0 {
            h.field(name).str(value);
        }
        h.finish()
    }

    /// What changed from `old` to `self`, in name order.
    pub fn diff(&self, old: &Components) -> Vec<Change> {
        let mut out = Vec::new();
        for (name, value) in &self.0 {
            match old.0.get(name) {
                None => out.push(Change::Added(name.clone())),
                Some(v) if v != value => out.push(Change::Changed(name.clone())),
                Some(_) => {}
            }
        }
        for name in old.0.keys() {
            if !self.0.contains_key(name) {
                out.push(Change::Removed(name.clone()));
            }
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Option<Components> {
        serde_json::from_str(s).ok().map(Components)
    }
}

/// One difference between two sets of components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(String),
    Removed(String),
    Changed(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, verb) = match self {
            Change::Added(n) => (n, "added"),
            Change::Removed(n) => (n, "removed"),
            Change::Changed(n) => (n, "changed"),
        };
        match name.split_once(':') {
            Some(("file", path)) => write!(f, "file `{path}` {verb}"),
            Some((n, label)) if n.starts_with("layer.") => write!(f, "layer `{label}` {verb}"),
            _ => match name.as_str() {
                "base" => write!(f, "base image {verb}"),
                "entries" => write!(f, "layer entries {verb} in the spec"),
                "config" => write!(f, "image config {verb} in the spec"),
                n => write!(f, "parameter `{n}` {verb}"),
            },
        }
    }
}

/// Why an action runs (or would run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No record of an earlier build of this target.
    NeverBuilt,
    /// The key is what was built last time, but its cache entry or a blob is gone or damaged.
    CacheMiss(String),
    /// These components changed since the last build.
    Changed(Vec<Change>),
    /// (Dry runs.) A dependency would rebuild, so this key cannot be known yet:
    /// `root` is the first target on the way whose own inputs changed.
    Dependency { root: String, why: Box<Reason> },
}

impl Reason {
    pub fn between(
        current: &Components,
        last: Option<&Components>,
        detail_if_same: &str,
    ) -> Reason {
        match last {
            None => Reason::NeverBuilt,
            Some(old) => {
                let changes = current.diff(old);
                if changes.is_empty() {
                    Reason::CacheMiss(detail_if_same.to_string())
                } else {
                    Reason::Changed(changes)
                }
            }
        }
    }
}

impl Reason {
    /// `dependency` would rebuild for `why`: the reason of a target above it.
    pub fn dependency(dependency: &str, why: &Reason) -> Reason {
        match why {
            Reason::Dependency { root, why } => Reason::Dependency {
                root: root.clone(),
                why: why.clone(),
            },
            other => Reason::Dependency {
                root: dependency.to_string(),
                why: Box::new(other.clone()),
            },
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverBuilt => f.write_str("never built"),
            Reason::CacheMiss(why) => f.write_str(why),
            Reason::Dependency { root, why } => {
                write!(f, "it depends on `{root}`, which would rebuild ({why})")
            }
            Reason::Changed(changes) => {
                const SHOWN: usize = 3;
                let parts: Vec<String> =
                    changes.iter().take(SHOWN).map(|c| c.to_string()).collect();
                f.write_str(&parts.join(", "))?;
                if changes.len() > SHOWN {
                    write!(f, " and {} more", changes.len() - SHOWN)?;
                }
                Ok(())
            }
        }
    }
}

/// A layer as a manifest references it. Cached in the action cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDesc {
    /// sha256 of the blob as stored (compressed or not).
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: DiffId,
    pub size: u64,
    pub media_type: String,
    /// The layer's [`crate::listing::Listing`] in the CAS: what image assembly
    /// checks stacks of layers with. `None` for a layer not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<Blob>,
}

/// A blob in the CAS that is not an OCI blob of the image (a listing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
}

/// The output of an image or an import: what an image built on it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageOut {
    pub manifest: Digest,
    pub manifest_size: u64,
    pub config: Digest,
    pub config_size: u64,
    /// Every layer, base layers first.
    pub layers: Vec<LayerDesc>,
}

/// The output of an http-file: one blob in the CAS, the downloaded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOut {
    pub digest: Digest,
    pub size: u64,
}

/// What an action produced; stored (as JSON) in the action cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Output {
    Layer(LayerDesc),
    Image(ImageOut),
    File(FileOut),
}

impl Output {
    /// Every blob the output refers to, with its size: all must be in the CAS
    /// for a cache hit to be used.
    pub fn blobs(&self) -> Vec<(Digest, u64)> {
        let mut v = self.oci_blobs();
        let layers = match self {
            Output::Layer(l) => std::slice::from_ref(l),
            Output::Image(i) => &i.layers[..],
            Output::File(_) => &[],
        };
        v.extend(
            layers
                .iter()
                .filter_map(|l| l.listing.map(|b| (b.digest, b.size))),
        );
        v
    }

    /// The OCI blobs of the output (manifest, config, layers; no listing): what
    /// a layout of it holds. A downloaded file is no OCI blob, but it is what
    /// its output is made of, so it is listed too.
    pub fn oci_blobs(&self) -> Vec<(Digest, u64)> {
        match self {
            Output::Layer(l) => vec![(l.digest, l.size)],
            Output::File(f) => vec![(f.digest, f.size)],
            Output::Image(i) => {
                let mut v = vec![(i.manifest, i.manifest_size), (i.config, i.config_size)];
                v.extend(i.layers.iter().map(|l| (l.digest, l.size)));
                v
            }
        }
    }

    /// The digest that dependents see (and that enters their keys).
    pub fn digest(&self) -> Digest {
        match self {
            Output::Layer(l) => l.digest,
            Output::Image(i) => i.manifest,
            Output::File(f) => f.digest,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Option<Output> {
        serde_json::from_str(s).ok()
    }
}

/// A canonical, order-preserving hash of parameter values: a small helper so
/// callers write `params.str(..)` rather than formatting strings by hand.
pub fn params_hash(domain: &str, f: impl FnOnce(&mut KeyHasher)) -> String {
    let mut h = KeyHasher::new(domain);
    f(&mut h);
    h.finish().to_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_component_and_nothing_else() {
        let mut a = Components::new("layer");
        a.set("file:a", "1");
        a.set("format", "gzip/zlib-rs/6");
        let mut b = Components::new("layer");
        b.set("format", "gzip/zlib-rs/6");
        b.set("file:a", "1");
        assert_eq!(a.key(), b.key(), "insertion order must not matter");
        b.set("file:a", "2");
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn reasons_name_what_changed() {
        let mut old = Components::new("layer");
        old.set("file:svc/a.txt", "1");
        old.set("file:svc/gone.txt", "1");
        old.set("entries", "x");
        let mut new = old.clone();
        new.set("file:svc/a.txt", "2");
        new.0.remove("file:svc/gone.txt");
        new.set("base", "d");
        let r = Reason::between(&new, Some(&old), "");
        assert_eq!(
            r.to_string(),
            "base image added, file `svc/a.txt` changed, file `svc/gone.txt` removed"
        );
        assert_eq!(Reason::between(&new, None, "").to_string(), "never built");
        assert_eq!(
            Reason::between(&new, Some(&new), "cache entry missing").to_string(),
            "cache entry missing"
        );
    }

    #[test]
    fn components_round_trip_through_json() {
        let mut c = Components::new("image");
        c.set("base", "scratch");
        assert_eq!(Components::from_json(&c.to_json()), Some(c));
    }
}
