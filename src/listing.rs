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
