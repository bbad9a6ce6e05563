//! Action-cache entries as a remote cache stores them: `ac/<key>`.
//!
//! An entry maps an action key to the action's [`Output`]. Blobs check
//! themselves (their name is their sha256), but an entry has no such name: a
//! flipped byte in a layer's `diff_id` or media type would pass every blob
//! check and change the image built on it. So an entry carries a checksum over
//! everything it says, and an entry is only used when its checksum, format and
//! key all match. The checksum detects damage, not forgery: whoever may write to
//! the remote cache is trusted (untrusted builds use read-only mode).
//!
//! | field    | what                                                       |
//! |----------|------------------------------------------------------------|
//! | `format` | [`FORMAT`]; another value is a miss (never an error)        |
//! | `key`    | the action key (hex): an entry copied under another name is refused |
//! | `kind`   | the action kind, `label` the target that produced it (for humans) |
//! | `output` | the output's JSON, as a string: the exact bytes the sum covers |
//! | `sum`    | blake3 over all of the above, length-prefixed              |
//!
//! Encoding is canonical (sorted keys, no whitespace), so two runners that
//! produce the same output write byte-identical entries.

use crate::action::Output;
use crate::hash::Key;
use std::collections::BTreeMap;

/// The entry format; bump it when the layout or the checksum changes.
pub const FORMAT: &str = "imgc-action-cache-entry/1";

/// Entries are small (a few KiB for an image with many layers): anything larger
/// is not one of ours, and is not read whole.
pub const MAX_ENTRY_BYTES: u64 = 4 << 20;

/// A decoded, checked entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: String,
    pub label: String,
    pub output: Output,
}

fn sum(key: &Key, kind: &str, label: &str, output_json: &str) -> String {
    let mut h = blake3::Hasher::new();
    for part in [FORMAT, &key.to_hex(), kind, label, output_json] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The bytes of the entry for `key`.
pub fn encode(key: &Key, kind: &str, label: &str, output: &Output) -> Vec<u8> {
    let output_json = output.to_json();
    let fields: BTreeMap<&str, String> = BTreeMap::from([
        ("format", FORMAT.to_string()),
        ("key", key.to_hex()),
        ("kind", kind.to_string()),
        ("label", label.to_string()),
        ("sum", sum(key, kind, label, &output_json)),
        ("output", output_json),
    ]);
    serde_json::to_vec(&fields).unwrap_or_default()
}

/// Why bytes are not a usable entry for a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not an action-cache entry")]
    Malformed,
    #[error("an entry of another format (`{0}`)")]
    Format(String),
    #[error("an entry for another key")]
    OtherKey,
    #[error("its checksum does not match its content")]
    Checksum,
}

/// Decodes and checks the entry stored for `key`.
pub fn decode(key: &Key, bytes: &[u8]) -> Result<Entry, Invalid> {
    let fields: BTreeMap<String, String> =
        serde_json::from_slice(bytes).map_err(|_| Invalid::Malformed)?;
    let get = |name: &str| fields.get(name).ok_or(Invalid::Malformed);
    let format = get("format")?;
    if format != FORMAT {
        return Err(Invalid::Format(format.chars().take(80).collect()));
    }
    if get("key")? != &key.to_hex() {
        return Err(Invalid::OtherKey);
    }
    let (kind, label, output_json) = (get("kind")?, get("label")?, get("output")?);
    if get("sum")? != &sum(key, kind, label, output_json) {
        return Err(Invalid::Checksum);
    }
    let output = Output::from_json(output_json).ok_or(Invalid::Malformed)?;
    Ok(Entry {
        kind: kind.clone(),
        label: label.clone(),
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{LayerDesc, Output};
    use crate::hash::{DiffId, Digest};

    fn layer() -> Output {
        Output::Layer(LayerDesc {
            digest: Digest::of_bytes(b"layer"),
            diff_id: DiffId(Digest::of_bytes(b"tar")),
            size: 5,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            listing: None,
        })
    }

    fn key() -> Key {
        Key::from_hex(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn entries_round_trip_and_are_canonical() {
        let bytes = encode(&key(), "layer", "//a:b", &layer());
        assert_eq!(bytes, encode(&key(), "layer", "//a:b", &layer()));
        let e = decode(&key(), &bytes).unwrap();
        assert_eq!(e.output, layer());
        assert_eq!((e.kind.as_str(), e.label.as_str()), ("layer", "//a:b"));
    }

    /// Golden bytes: the format is read by other runners and other versions.
    #[test]
    fn entry_encoding_is_pinned() {
        let bytes = encode(&key(), "layer", "//a:b", &layer());
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"format":"imgc-action-cache-entry/1","key":"abab"#),
            "{text}"
        );
        assert_eq!(
            blake3::hash(text.as_bytes()).to_hex().to_string(),
            "97dc4c74e4f3c2f46aa190bed53fa05fc96419766b08a52e3f9fc73424605711",
            "the entry format changed: bump FORMAT"
        );
    }

    /// Every single flipped byte makes the entry unusable (or, in a string that
    /// the checksum covers, a checksum failure): never a different output.
    #[test]
    fn any_flipped_byte_is_refused_never_misread() {
        let bytes = encode(&key(), "layer", "//a:b", &layer());
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x20, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                match decode(&key(), &b) {
                    Err(_) => {}
                    Ok(e) => assert_eq!(e.output, layer(), "byte {i} bit {bit:#x}"),
                }
            }
        }
        // Truncations too.
        for n in 0..bytes.len() {
            assert!(decode(&key(), &bytes[..n]).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn an_entry_under_another_key_is_refused() {
        let bytes = encode(&key(), "layer", "//a:b", &layer());
        let other = Key::from_hex(&"cd".repeat(32)).unwrap();
        assert_eq!(decode(&other, &bytes), Err(Invalid::OtherKey));
    }
}
