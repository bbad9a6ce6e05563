//! How a fleet of images shares its blobs: the arithmetic of `imgc report` (pure).
//!
//! A registry, and a node pulling images, stores each blob once, by its digest.
//! So what a set of images costs is not the sum of their sizes but the size of
//! the *distinct* blobs they name. Images built on the same base carry the very
//! same base layer blobs (imgc's layers do not depend on the base: see
//! [`crate::actions`]), so ten services of 1 MB each on one 64 MB base cost
//! 74 MB, not 650 MB. This module turns "which image names which blob" into
//! those numbers:
//!
//! * **An image's total**: its manifest, its config and its layers, each
//!   distinct blob once (a layer listed twice in one manifest is stored once).
//!   This is what the image costs stored alone.
//! * **Own bytes**: the part of that total no other image of the set names
//!   (its manifest and config, nearly always, and the layers only it carries);
//!   **shared bytes**: the rest. `own + shared = total`.
//! * **The fleet**: `alone` is the sum of every image's total (each image stored
//!   on its own); `stored` is the sum over distinct blobs (each stored once);
//!   their ratio says how much sharing saves. Always `stored <= alone`, and
//!   `stored` = the images' own bytes + each shared blob once.
//! * **Diverged images**: those sharing no layer with any other image of the
//!   set (among two or more). They are usually built on another base, or on an
//!   older version of it: the images a base standardization would bring back
//!   into the fold.
//!
//! Sizes are blob sizes as stored (compressed layers): what a registry stores
//! and a node downloads, not what an unpacked filesystem takes.
//!
//! Every list comes out in a fixed order (images by label, layers most shared
//! first) and the JSON with sorted keys, so two runs over the same images print
//! the same bytes. [`human`] and [`html`] render the same [`Sharing`].

pub mod html;
pub mod human;

use crate::hash::Digest;
use std::collections::{BTreeMap, BTreeSet};

/// A blob an image names, with its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
}

/// One image of the set, as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBlobs {
    pub label: String,
    pub manifest: Blob,
    pub config: Blob,
    /// Its layers, base layers first (the manifest's order).
    pub layers: Vec<Blob>,
}

/// One image of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    pub label: String,
    pub manifest: Blob,
    pub config: Blob,
    /// Layer digests, base layers first.
    pub layers: Vec<Digest>,
    /// Its distinct blobs (manifest, config, layers), each once.
    pub total: u64,
    /// Of `total`: blobs no other image of the set names.
    pub own: u64,
    /// Of `total`: blobs some other image names too.
    pub shared: u64,
}

/// One distinct layer of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    pub digest: Digest,
    pub size: u64,
    /// The images carrying it, in label order.
    pub images: Vec<String>,
    /// The targets that produce it (a layer target, an inline layer, an
    /// import), in label order; empty if unknown.
    pub targets: Vec<String>,
}

/// The totals of the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fleet {
    pub images: usize,
    /// Distinct layers.
    pub layers: usize,
    /// Distinct blobs: layers, configs and manifests.
    pub blobs: usize,
    /// Every image stored alone: the sum of the images' totals.
    pub alone: u64,
    /// Every distinct blob stored once.
    pub stored: u64,
}

impl Fleet {
    /// `alone / stored`: how many times less sharing stores (1 when nothing is shared).
    pub fn ratio(&self) -> f64 {
        if self.stored == 0 {
            1.0
        } else {
            self.alone as f64 / self.stored as f64
        }
    }

    /// The bytes sharing saves.
    pub fn saved(&self) -> u64 {
        self.alone - self.stored
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct Sharing {
    /// In label order.
    pub images: Vec<ImageRow>,
    /// Most shared first, then largest, then by digest.
    pub layers: Vec<LayerRow>,
    pub fleet: Fleet,
    /// Images sharing no layer with any other (empty with fewer than two images).
    pub diverged: Vec<String>,
}

/// Computes the report for `images` (one entry per label; a repeated label is
/// counted once, its first entry). `targets` names the producers of layer blobs.
pub fn compute(images: &[ImageBlobs], targets: &BTreeMap<Digest, BTreeSet<String>>) -> Sharing {
    let mut by_label: BTreeMap<&str, &ImageBlobs> = BTreeMap::new();
    for img in images {
        by_label.entry(img.label.as_str()).or_insert(img);
    }
    // Every distinct blob of each image, and who names each blob.
    let mut sizes: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut carriers: BTreeMap<Digest, BTreeSet<&str>> = BTreeMap::new();
    let mut layer_carriers: BTreeMap<Digest, BTreeSet<&str>> = BTreeMap::new();
    let mut blobs_of: BTreeMap<&str, BTreeMap<Digest, u64>> = BTreeMap::new();
    for (&label, img) in &by_label {
        let mut own: BTreeMap<Digest, u64> = BTreeMap::new();
        for b in [&img.manifest, &img.config].into_iter().chain(&img.layers) {
            own.entry(b.digest).or_insert(b.size);
            sizes.entry(b.digest).or_insert(b.size);
            carriers.entry(b.digest).or_default().insert(label);
        }
        for l in &img.layers {
            layer_carriers.entry(l.digest).or_default().insert(label);
        }
        blobs_of.insert(label, own);
    }

    let mut rows = Vec::new();
    let mut fleet = Fleet {
        images: by_label.len(),
        layers: layer_carriers.len(),
        blobs: sizes.len(),
        alone: 0,
        stored: sizes.values().sum(),
    };
    for (&label, img) in &by_label {
        let blobs = &blobs_of[label];
        let total: u64 = blobs.values().sum();
        let own: u64 = blobs
            .iter()
            .filter(|(d, _)| carriers[*d].len() == 1)
            .map(|(_, s)| s)
            .sum();
        fleet.alone += total;
        rows.push(ImageRow {
            label: label.to_string(),
            manifest: img.manifest,
            config: img.config,
            layers: img.layers.iter().map(|l| l.digest).collect(),
            total,
            own,
            shared: total - own,
        });
    }

    let mut layers: Vec<LayerRow> = layer_carriers
        .iter()
        .map(|(d, who)| LayerRow {
            digest: *d,
            size: sizes[d],
            images: who.iter().map(|s| s.to_string()).collect(),
            targets: targets
                .get(d)
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default(),
        })
        .collect();
    layers.sort_by(|a, b| {
        b.images
            .len()
            .cmp(&a.images.len())
            .then(b.size.cmp(&a.size))
            .then(a.digest.cmp(&b.digest))
    });

    let diverged = if by_label.len() < 2 {
        Vec::new()
    } else {
        by_label
            .iter()
            .filter(|(_, img)| {
                img.layers
                    .iter()
                    .all(|l| layer_carriers[&l.digest].len() == 1)
            })
            .map(|(label, _)| label.to_string())
            .collect()
    };

    Sharing {
        images: rows,
        layers,
        fleet,
        diverged,
    }
}

/// `x` rounded to three decimals, as the reports print ratios.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Sharing {
    /// The report as JSON: object keys sorted, lists in the report's order.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let images: Vec<serde_json::Value> = self
            .images
            .iter()
            .map(|i| {
                json!({
                    "label": i.label,
                    "manifest": {"digest": i.manifest.digest.to_string(), "size": i.manifest.size},
                    "config": {"digest": i.config.digest.to_string(), "size": i.config.size},
                    "layers": i.layers.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    "total_bytes": i.total,
                    "own_bytes": i.own,
                    "shared_bytes": i.shared,
                })
            })
            .collect();
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "digest": l.digest.to_string(),
                    "size": l.size,
                    "image_count": l.images.len(),
                    "images": l.images,
                    "targets": l.targets,
                })
            })
            .collect();
        let f = &self.fleet;
        json!({
            "images": images,
            "layers": layers,
            "fleet": {
                "images": f.images,
                "layers": f.layers,
                "blobs": f.blobs,
                "alone_bytes": f.alone,
                "stored_bytes": f.stored,
                "saved_bytes": f.saved(),
                "ratio": round3(f.ratio()),
            },
            "diverged": self.diverged,
        })
    }

    /// [`Sharing::to_json`], pretty-printed, with a final newline.
    pub fn to_json_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// A blob named after `seed`, for tests.
#[cfg(test)]
fn test_blob(seed: &str, size: u64) -> Blob {
    Blob {
        digest: crate::hash::Digest::of_bytes(seed.as_bytes()),
        size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    use super::test_blob as blob;

    fn image(label: &str, layers: &[Blob]) -> ImageBlobs {
        ImageBlobs {
            label: label.to_string(),
            manifest: blob(&format!("{label} manifest"), 500),
            config: blob(&format!("{label} config"), 1000),
            layers: layers.to_vec(),
        }
    }

    #[test]
    fn ten_services_on_one_base_store_74_mb_not_650() {
        let base = blob("base", 64 * MB);
        let images: Vec<ImageBlobs> = (0..10)
            .map(|i| {
                image(
                    &format!("//services/s{i}:s{i}"),
                    &[base, blob(&format!("own {i}"), MB)],
                )
            })
            .collect();
        let s = compute(&images, &BTreeMap::new());
        let meta = 1500;
        assert_eq!(s.fleet.images, 10);
        assert_eq!(s.fleet.layers, 11);
        assert_eq!(s.fleet.blobs, 31);
        assert_eq!(s.fleet.alone, 10 * (65 * MB + meta));
        assert_eq!(s.fleet.stored, 74 * MB + 10 * meta);
        assert_eq!(s.fleet.saved(), 9 * 64 * MB);
        assert!((s.fleet.ratio() - 650.0 / 74.0).abs() < 0.01);
        for row in &s.images {
            assert_eq!(row.total, 65 * MB + meta);
            assert_eq!(row.own, MB + meta);
            assert_eq!(row.shared, 64 * MB);
        }
        assert_eq!(
            s.layers[0].digest, base.digest,
            "the most shared comes first"
        );
        assert_eq!(s.layers[0].images.len(), 10);
        assert!(s.layers[1..].iter().all(|l| l.images.len() == 1));
        assert!(s.diverged.is_empty());
    }

    #[test]
    fn an_image_on_another_base_is_diverged_and_owns_everything() {
        let base = blob("base", 100);
        let other = blob("old base", 90);
        let images = vec![
            image("//a:a", &[base, blob("a", 10)]),
            image("//b:b", &[base, blob("b", 20)]),
            image("//legacy:l", &[other, blob("l", 30)]),
        ];
        let s = compute(&images, &BTreeMap::new());
        assert_eq!(s.diverged, ["//legacy:l"]);
        let legacy = &s.images[2];
        assert_eq!(legacy.label, "//legacy:l");
        assert_eq!((legacy.own, legacy.shared), (1500 + 120, 0));
        let a = &s.images[0];
        assert_eq!((a.own, a.shared, a.total), (1510, 100, 1610));
        assert_eq!(s.fleet.stored, 3 * 1500 + 100 + 10 + 20 + 90 + 30);
        assert_eq!(s.fleet.alone, 1610 + 1620 + 1620);
    }

    #[test]
    fn a_blob_twice_in_one_image_is_stored_once_and_not_shared() {
        let empty = blob("empty layer", 32);
        let s = compute(
            &[image("//a:a", &[empty, blob("x", 10), empty])],
            &BTreeMap::new(),
        );
        let a = &s.images[0];
        assert_eq!(a.layers.len(), 3, "the stack keeps both places");
        assert_eq!(a.total, 1500 + 32 + 10);
        assert_eq!((a.own, a.shared), (a.total, 0));
        assert_eq!(s.fleet.alone, s.fleet.stored);
        assert_eq!(s.fleet.ratio(), 1.0);
        assert_eq!(s.layers.len(), 2);
        assert!(
            s.diverged.is_empty(),
            "one image has no others to diverge from"
        );
    }

    #[test]
    fn identical_images_share_their_manifest_and_config_too() {
        let l = blob("l", 100);
        let mut b = image("//b:b", &[l]);
        let a = image("//a:a", &[l]);
        b.manifest = a.manifest;
        b.config = a.config;
        let s = compute(&[b, a], &BTreeMap::new());
        assert_eq!(s.images[0].label, "//a:a", "rows come in label order");
        assert_eq!(s.fleet.blobs, 3);
        assert_eq!(s.fleet.stored, 1600);
        assert_eq!(s.fleet.alone, 3200);
        assert!(s.images.iter().all(|i| i.own == 0 && i.shared == 1600));
    }

    #[test]
    fn layers_come_most_shared_then_largest_then_by_digest() {
        let (x, y, z) = (blob("x", 5), blob("y", 50), blob("z", 50));
        let images = vec![image("//a:a", &[x, y, z]), image("//b:b", &[x])];
        let mut targets = BTreeMap::new();
        targets.insert(
            y.digest,
            BTreeSet::from(["//l:y".to_string(), "//l:y2".to_string()]),
        );
        let s = compute(&images, &targets);
        let order: Vec<Digest> = s.layers.iter().map(|l| l.digest).collect();
        let (first, second) = if y.digest < z.digest { (y, z) } else { (z, y) };
        assert_eq!(order, [x.digest, first.digest, second.digest]);
        let y_row = s.layers.iter().find(|l| l.digest == y.digest).unwrap();
        assert_eq!(y_row.targets, ["//l:y", "//l:y2"]);
        assert!(s.layers[0].targets.is_empty());
        assert_eq!(s.layers[0].images, ["//a:a", "//b:b"]);
    }

    #[test]
    fn own_plus_shared_is_total_and_stored_is_own_plus_each_shared_blob_once() {
        let layers: Vec<Blob> = (0..6).map(|i| blob(&format!("l{i}"), 7 + i * 13)).collect();
        let images = vec![
            image("//a:a", &[layers[0], layers[1], layers[2]]),
            image("//b:b", &[layers[0], layers[3]]),
            image("//c:c", &[layers[1], layers[3], layers[4]]),
            image("//d:d", &[layers[5]]),
        ];
        let s = compute(&images, &BTreeMap::new());
        let own: u64 = s.images.iter().map(|i| i.own).sum();
        let shared_once: u64 = s
            .layers
            .iter()
            .filter(|l| l.images.len() > 1)
            .map(|l| l.size)
            .sum();
        assert_eq!(s.fleet.stored, own + shared_once);
        for i in &s.images {
            assert_eq!(i.own + i.shared, i.total);
        }
        assert_eq!(s.diverged, ["//d:d"]);
    }

    #[test]
    fn json_has_sorted_keys_and_every_number() {
        let base = blob("base", 100);
        let s = compute(
            &[image("//a:a", &[base]), image("//b:b", &[base])],
            &BTreeMap::new(),
        );
        let text = s.to_json_text();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["fleet"]["alone_bytes"], 3200);
        assert_eq!(v["fleet"]["stored_bytes"], 3100);
        assert_eq!(v["fleet"]["saved_bytes"], 100);
        assert_eq!(v["fleet"]["ratio"], 1.032);
        assert_eq!(v["layers"][0]["image_count"], 2);
        assert_eq!(v["images"][1]["own_bytes"], 1500);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["diverged", "fleet", "images", "layers"]);
        assert!(text.find("\"alone_bytes\"") < text.find("\"blobs\""));
        assert_eq!(
            text,
            s.to_json_text(),
            "the same report prints the same bytes"
        );
    }
}
