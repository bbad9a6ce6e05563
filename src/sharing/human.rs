//! The report as text tables, for a terminal (pure).

use super::Sharing;
use crate::report::bytes;
use std::fmt::Write as _;

/// How many hex digits of a layer digest the table shows.
const SHORT: usize = 12;

/// `sha256:0123456789ab`: a digest short enough for a table.
pub fn short_digest(d: &crate::hash::Digest) -> String {
    format!("sha256:{}", &d.hex()[..SHORT])
}

/// Renders `s`: images, layers, the fleet's totals, diverged images.
pub fn render(s: &Sharing) -> String {
    let mut out = String::new();

    // Images.
    let w = s
        .images
        .iter()
        .map(|i| i.label.len())
        .chain(["images".len()])
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "{:<w$}  {:>6}  {:>10}  {:>10}  {:>10}",
        "images", "layers", "total", "own", "shared"
    );
    for i in &s.images {
        let _ = writeln!(
            out,
            "{:<w$}  {:>6}  {:>10}  {:>10}  {:>10}",
            i.label,
            i.layers.len(),
            bytes(i.total),
            bytes(i.own),
            bytes(i.shared)
        );
    }

    // Layers.
    let dw = "sha256:".len() + SHORT;
    let _ = writeln!(
        out,
        "\n{:<dw$}  {:>10}  {:>6}  made by",
        "layers", "size", "images"
    );
    for l in &s.layers {
        let made_by = if l.targets.is_empty() {
            "?".to_string()
        } else {
            l.targets.join(", ")
        };
        let _ = writeln!(
            out,
            "{:<dw$}  {:>10}  {:>6}  {made_by}",
            short_digest(&l.digest),
            bytes(l.size),
            l.images.len()
        );
    }

    // The fleet.
    let f = &s.fleet;
    let _ = writeln!(
        out,
        "\nfleet: {} image{}, {} distinct layer{}, {} distinct blob{}",
        f.images,
        plural(f.images),
        f.layers,
        plural(f.layers),
        f.blobs,
        plural(f.blobs)
    );
    let (alone, stored) = (bytes(f.alone), bytes(f.stored));
    let w = alone.len().max(stored.len());
    let _ = writeln!(
        out,
        "  stored alone  {alone:>w$}  (every image with all of its blobs)"
    );
    let _ = writeln!(
        out,
        "  stored        {stored:>w$}  (every distinct blob once)"
    );
    let _ = writeln!(
        out,
        "  ratio         {:>w$}  (sharing saves {})",
        format!("{:.2}x", f.ratio()),
        bytes(f.saved())
    );

    // Diverged images.
    if s.images.len() < 2 {
        out.push_str("\ndiverged: none (one image, no other to share with)\n");
    } else if s.diverged.is_empty() {
        out.push_str("\ndiverged: none (every image shares a layer with another)\n");
    } else {
        out.push_str("\ndiverged (sharing no layer with the other images):\n");
        for d in &s.diverged {
            let _ = writeln!(out, "  {d}");
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::super::{Blob, ImageBlobs, compute};
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    use super::super::test_blob as blob;

    #[test]
    fn tables_align_and_name_the_diverged() {
        let base = blob("base", 64 << 20);
        let img = |label: &str, layers: Vec<Blob>| ImageBlobs {
            label: label.into(),
            manifest: blob(&format!("{label}m"), 400),
            config: blob(&format!("{label}c"), 600),
            layers,
        };
        let images = vec![
            img("//services/api:api", vec![base, blob("api", 1 << 20)]),
            img("//services/web:web", vec![base, blob("web", 2048)]),
            img("//legacy:old", vec![blob("old", 10)]),
        ];
        let targets = BTreeMap::from([(base.digest, BTreeSet::from(["//bases:bin".to_string()]))]);
        let text = render(&compute(&images, &targets));
        assert_eq!(
            text,
            "\
images              layers       total         own      shared
//legacy:old             1      1010 B      1010 B         0 B
//services/api:api       2    65.0 MiB     1.0 MiB    64.0 MiB
//services/web:web       2    64.0 MiB     3.0 KiB    64.0 MiB

layers                     size  images  made by
sha256:cae662172fd4    64.0 MiB       2  //bases:bin
sha256:14c2529eb449     1.0 MiB       1  ?
sha256:4b5e57f6eb2f     2.0 KiB       1  ?
sha256:cba06b5736fa        10 B       1  ?

fleet: 3 images, 4 distinct layers, 10 distinct blobs
  stored alone  129.0 MiB  (every image with all of its blobs)
  stored         65.0 MiB  (every distinct blob once)
  ratio             1.98x  (sharing saves 64.0 MiB)

diverged (sharing no layer with the other images):
  //legacy:old
"
        );
    }
}
