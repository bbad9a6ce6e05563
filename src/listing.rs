//! What a layer holds, path by path: the index image assembly checks layers against.
//!
//! A layer's tar is opaque once compressed. To tell, when an image is assembled,
//! whether one of its layers would silently destroy something a lower layer put
//! there (a file over a directory deletes the whole subtree; a directory over the
//! merged-/usr symlink `/lib` hides every library reached through it), every layer
//! output comes with a [`Listing`]: one [`Listed`] per tar entry, in tar order
//! (sorted by path for imgc's own layers), stored in the CAS as canonical JSON
//! next to the layer blob. Layers imgc builds list their entries as written;
//! imported layers are listed while their diff_id is computed (the tar is read
//! anyway).
//!
//! This module is pure: the listing type, its canonical encoding, and the check.

use serde::{Deserialize, Serialize};

/// The type of a path in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Dir,
    File,
    Symlink,
    /// A hard link to another path of the same layer.
    Hardlink,
    /// An OCI whiteout (`.wh.NAME`): deletes NAME from the layers below.
    Whiteout,
    /// An opaque whiteout (`.wh..wh..opq`): hides the directory's lower contents.
    Opaque,
    /// Device, FIFO or anything else.
    Other,
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// In-image path without a leading or trailing `/` (`usr/lib`); for a
    /// whiteout, the path it deletes (for an opaque one, its directory).
    pub path: String,
    pub kind: PathKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Symlink or hard-link target, as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Every entry of one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub entries: Vec<Listed>,
}

impl Listing {
    /// The canonical encoding stored in the CAS (fields in declaration order,
    /// entries in tar order).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Listing, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl PathKind {
    fn is_dir(self) -> bool {
        self == PathKind::Dir
    }

    /// How a message names it.
    pub fn noun(self) -> &'static str {
        match self {
            PathKind::Dir => "directory",
            PathKind::File => "file",
            PathKind::Symlink => "symlink",
            PathKind::Hardlink => "hard link",
            PathKind::Whiteout | PathKind::Opaque => "whiteout",
            PathKind::Other => "special file",
        }
    }
}

/// An entry of an upper layer that would destroy what a lower layer put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The path as the upper layer writes it.
    pub path: String,
    /// Where it lands once lower symlinks in its parents are followed.
    pub resolved: String,
    pub upper: PathKind,
    pub lower: PathKind,
    /// Which layer put the lower path there (as given to [`Stack::apply`]).
    pub lower_origin: String,
}

#[derive(Debug, Clone)]
struct Node {
    kind: PathKind,
    origin: usize,
    target: Option<String>,
}

/// The merged view of a stack of layers, as an unpacker would leave it.
#[derive(Debug, Default, Clone)]
pub struct Stack {
    view: std::collections::BTreeMap<String, Node>,
    origins: Vec<String>,
}

/// Symlinks followed at most this many times resolving one path (as Linux's 40).
const MAX_HOPS: usize = 40;

impl Stack {
    pub fn new() -> Stack {
        Stack::default()
    }

    /// `path` with every symlink among its parent directories followed, the way
    /// an unpacker resolves a tar entry inside the root filesystem (a link never
    /// leaves the root: `..` stops at `/`). The last component is not followed.
    pub fn resolve(&self, path: &str) -> String {
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", path),
        };
        let dir = self.resolve_dir(parent, 0);
        join(&dir, name)
    }

    fn resolve_dir(&self, path: &str, mut hops: usize) -> String {
        let mut cur: Vec<String> = Vec::new();
        let mut todo: Vec<String> = components(path).into_iter().rev().collect();
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            cur.push(c);
            let here = cur.join("/");
            if let Some(Node {
                kind: PathKind::Symlink,
                target: Some(t),
                ..
            }) = self.view.get(&here)
            {
                hops += 1;
                if hops > MAX_HOPS {
                    break;
                }
                cur.pop();
                if t.starts_with('/') {
                    cur.clear();
                }
                for part in components(t).into_iter().rev() {
                    todo.push(part);
                }
            }
        }
        cur.join("/")
    }

    /// Entries of `upper` that would change the type of a path below between
    /// directory and non-directory: a file or symlink over a directory deletes
    /// everything under it; a directory over a symlink (`/lib -> usr/lib`)
    /// replaces the link.
    pub fn conflicts(&self, upper: &Listing) -> Vec<Conflict> {
        let mut out = Vec::new();
        for e in &upper.entries {
            if matches!(e.kind, PathKind::Whiteout | PathKind::Opaque) {
                continue;
            }
            let resolved = self.resolve(&e.path);
            if let Some(lower) = self.view.get(&resolved)
                && lower.kind.is_dir() != e.kind.is_dir()
            {
                out.push(Conflict {
                    path: e.path.clone(),
                    resolved,
                    upper: e.kind,
                    lower: lower.kind,
                    lower_origin: self.origins[lower.origin].clone(),
                });
            }
        }
        out
    }

    /// Lays `listing` on top, as the layer named `origin`.
    pub fn apply(&mut self, origin: &str, listing: &Listing) {
        let idx = self.origins.len();
        self.origins.push(origin.to_string());
        for e in &listing.entries {
            let resolved = self.resolve(&e.path);
            match e.kind {
                PathKind::Whiteout => self.remove_tree(&resolved, true),
                PathKind::Opaque => self.remove_tree(&resolved, false),
                kind => {
                    if !kind.is_dir() {
                        self.remove_tree(&resolved, false);
                    }
                    self.view.insert(
                        resolved,
                        Node {
                            kind,
                            origin: idx,
                            target: e.target.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Removes everything below `path` (and `path` itself if `itself`).
    fn remove_tree(&mut self, path: &str, itself: bool) {
        if path.is_empty() {
            // The root: an opaque whiteout there hides everything below.
            self.view.clear();
            return;
        }
        if itself {
            self.view.remove(path);
        }
        let prefix = format!("{path}/");
        let below: Vec<String> = self
            .view
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.view.remove(&k);
        }
    }
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(entries: &[(&str, PathKind, Option<&str>)]) -> Listing {
        Listing {
            entries: entries
                .iter()
                .map(|(p, k, t)| Listed {
                    path: p.to_string(),
                    kind: *k,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    target: t.map(str::to_string),
                })
                .collect(),
        }
    }

    fn merged_usr() -> Stack {
        let mut s = Stack::new();
        s.apply(
            "base",
            &l(&[
                ("lib", PathKind::Symlink, Some("usr/lib")),
                ("tmp", PathKind::Dir, None),
                ("usr", PathKind::Dir, None),
                ("usr/lib", PathKind::Dir, None),
                ("usr/lib/libc.so", PathKind::File, None),
            ]),
        );
        s
    }

    #[test]
    fn paths_under_a_lower_symlink_go_where_it_points() {
        let s = merged_usr();
        assert_eq!(
            s.resolve("lib/x86_64/libfoo.so"),
            "usr/lib/x86_64/libfoo.so"
        );
        assert_eq!(
            s.resolve("lib"),
            "lib",
            "the last component is not followed"
        );
        let upper = l(&[
            ("lib/x86_64", PathKind::Dir, None),
            ("lib/x86_64/libfoo.so", PathKind::File, None),
            ("tmp/x", PathKind::File, None),
        ]);
        assert!(s.conflicts(&upper).is_empty());
    }

    #[test]
    fn a_directory_over_a_symlink_is_a_conflict() {
        let c = merged_usr().conflicts(&l(&[("lib", PathKind::Dir, None)]));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].lower, PathKind::Symlink);
        assert_eq!(c[0].lower_origin, "base");
    }

    #[test]
    fn a_file_over_a_directory_is_a_conflict_even_through_a_link() {
        let s = merged_usr();
        let c = s.conflicts(&l(&[("tmp", PathKind::File, None)]));
        assert_eq!((c[0].upper, c[0].lower), (PathKind::File, PathKind::Dir));
        let c = s.conflicts(&l(&[("lib/libc.so", PathKind::Dir, None)]));
        assert_eq!(c[0].resolved, "usr/lib/libc.so");
    }

    #[test]
    fn whiteouts_remove_and_links_cannot_loop_forever() {
        let mut s = merged_usr();
        s.apply("rm", &l(&[("usr/lib", PathKind::Whiteout, None)]));
        assert!(
            s.conflicts(&l(&[("usr/lib", PathKind::File, None)]))
                .is_empty()
        );
        let mut s = Stack::new();
        s.apply(
            "loop",
            &l(&[
                ("a", PathKind::Symlink, Some("b")),
                ("b", PathKind::Symlink, Some("/a")),
                ("up", PathKind::Symlink, Some("../../..")),
            ]),
        );
        let _ = s.resolve("a/x/y");
        assert_eq!(s.resolve("up/etc/passwd"), "etc/passwd");
    }

    #[test]
    fn an_opaque_whiteout_at_the_root_hides_everything() {
        let mut s = merged_usr();
        s.apply("opaque", &l(&[("", PathKind::Opaque, None)]));
        assert!(s.conflicts(&l(&[("tmp", PathKind::File, None)])).is_empty());
    }

    #[test]
    fn listing_round_trips_through_json() {
        let x = l(&[("lib", PathKind::Symlink, Some("usr/lib"))]);
        assert_eq!(Listing::from_json(&x.to_json()).unwrap(), x);
    }
}
