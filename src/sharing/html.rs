//! The report as one self-contained HTML page (pure).
//!
//! One file, opened from disk, with nothing to fetch: the style is inline, the
//! picture is an inline SVG, and a Content-Security-Policy forbids every load
//! (`default-src 'none'`), so the page cannot reach the network even if a label
//! tried to. Every text that comes from the workspace is escaped.
//!
//! The picture draws each image as a column of stacked blocks, one per layer,
//! base layers at the bottom (the manifest's order), so images on the same base
//! line up. A layer carried by several images has one colour wherever it
//! appears, and a band links its blocks in neighbouring columns; a layer only
//! one image carries is grey. Heights grow with the square root of the size, so
//! a 1 KB layer stays visible next to a 64 MB one; each block's tooltip, and the
//! tables below, give the exact numbers.

use super::Sharing;
use super::human::short_digest;
use crate::hash::Digest;
use crate::report::bytes;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const COL_W: f64 = 112.0;
const GAP: f64 = 36.0;
const LEFT: f64 = 16.0;
const TOP: f64 = 28.0;
const MIN_H: f64 = 12.0;
const MAX_H: f64 = 150.0;
/// About how wide a character of the labels is, in pixels.
const CHAR_W: f64 = 6.6;
/// Labels under the columns are turned by this many degrees.
const SLANT: f64 = 30.0;
/// The colour of a layer only one image carries.
const UNSHARED: &str = "#d6d6d6";

/// Escapes text for HTML and SVG (element content and quoted attributes).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {
                let _ = write!(out, "&#{};", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Each shared layer's colour: hues a golden angle apart in the layers' order,
/// so neighbours in the table never look alike.
fn colours(s: &Sharing) -> BTreeMap<Digest, String> {
    let mut out = BTreeMap::new();
    let mut rank = 0u32;
    for l in &s.layers {
        let colour = if l.images.len() > 1 {
            let hue = (f64::from(rank) * 137.508) % 360.0;
            rank += 1;
            format!("hsl({hue:.0}, 62%, 62%)")
        } else {
            UNSHARED.to_string()
        };
        out.insert(l.digest, colour);
    }
    out
}

/// The block height of a layer of `size` bytes when the largest is `max`.
fn height(size: u64, max: u64) -> f64 {
    let share = if max == 0 {
        0.0
    } else {
        (size as f64 / max as f64).sqrt()
    };
    (MIN_H + (MAX_H - MIN_H) * share).round()
}

/// The SVG picture of images and their shared layers.
pub fn picture(s: &Sharing) -> String {
    let colour = colours(s);
    let rows: BTreeMap<Digest, &super::LayerRow> = s.layers.iter().map(|l| (l.digest, l)).collect();
    let max = s.layers.iter().map(|l| l.size).max().unwrap_or(0);
    // Each column's blocks, bottom up: (digest, top y offset from the base line, height).
    let stacks: Vec<Vec<(Digest, f64, f64)>> = s
        .images
        .iter()
        .map(|img| {
            let mut y = 0.0;
            img.layers
                .iter()
                .map(|d| {
                    let h = height(rows.get(d).map_or(0, |r| r.size), max);
                    y += h;
                    (*d, y, h)
                })
                .collect()
        })
        .collect();
    let tallest = stacks
        .iter()
        .map(|c| c.last().map_or(0.0, |b| b.1))
        .fold(0.0, f64::max);
    let x_of = |i: usize| LEFT + i as f64 * (COL_W + GAP);
    let label_len = |i: usize| s.images[i].label.chars().count() as f64 * CHAR_W;
    let (sin, cos) = SLANT.to_radians().sin_cos();
    let base = TOP + tallest;
    // Wide enough for the last column and for every slanted label.
    let width = (0..s.images.len())
        .map(|i| x_of(i) + 4.0 + label_len(i) * cos)
        .fold(x_of(s.images.len()) - GAP, f64::max)
        + LEFT;
    let longest = (0..s.images.len()).map(label_len).fold(0.0, f64::max);
    let height_px = base + 24.0 + longest * sin + 16.0;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width:.0}" height="{height_px:.0}" viewBox="0 0 {width:.0} {height_px:.0}" aria-label="images as stacks of layers; shared layers in one colour">"#
    );
    // Bands linking a layer's blocks in neighbouring columns, under the blocks.
    for i in 1..stacks.len() {
        let (left, right) = (&stacks[i - 1], &stacks[i]);
        let mut linked = std::collections::BTreeSet::new();
        for (d, top_l, h_l) in left {
            let Some((_, top_r, h_r)) = right.iter().find(|b| b.0 == *d) else {
                continue;
            };
            if !linked.insert(*d) {
                continue;
            }
            let (x0, x1) = (x_of(i - 1) + COL_W, x_of(i));
            let _ = writeln!(
                out,
                r#"<polygon class="link" points="{x0:.0},{:.0} {x1:.0},{:.0} {x1:.0},{:.0} {x0:.0},{:.0}" fill="{}"/>"#,
                base - top_l,
                base - top_r,
                base - top_r + h_r,
                base - top_l + h_l,
                colour[d]
            );
        }
    }
    for (i, (img, stack)) in s.images.iter().zip(&stacks).enumerate() {
        let x = x_of(i);
        let _ = writeln!(out, r#"<g class="image">"#);
        for (d, top, h) in stack {
            let row = rows[d];
            let tip = format!(
                "{} · {} · in {} image{} · made by {}",
                d,
                bytes(row.size),
                row.images.len(),
                if row.images.len() == 1 { "" } else { "s" },
                if row.targets.is_empty() {
                    "?".to_string()
                } else {
                    row.targets.join(", ")
                }
            );
            let y = base - top;
            let _ = writeln!(
                out,
                r##"<rect x="{x:.0}" y="{y:.0}" width="{COL_W:.0}" height="{h:.0}" fill="{}" stroke="#fff"><title>{}</title></rect>"##,
                colour[d],
                escape(&tip)
            );
            if *h >= 14.0 {
                let _ = writeln!(
                    out,
                    r#"<text class="size" x="{:.0}" y="{:.0}">{}</text>"#,
                    x + COL_W / 2.0,
                    y + h / 2.0 + 4.0,
                    escape(&bytes(row.size))
                );
            }
        }
        let top = stack.last().map_or(0.0, |b| b.1);
        let _ = writeln!(
            out,
            r#"<text class="total" x="{:.0}" y="{:.0}">{}</text>"#,
            x + COL_W / 2.0,
            base - top - 6.0,
            escape(&bytes(img.total))
        );
        let (lx, ly) = (x + 4.0, base + 18.0);
        let _ = writeln!(
            out,
            r#"<text class="label" x="{lx:.0}" y="{ly:.0}" transform="rotate({SLANT:.0} {lx:.0} {ly:.0})">{}</text>"#,
            escape(&img.label)
        );
        let _ = writeln!(out, "</g>");
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT:.0}" y1="{base:.0}" x2="{:.0}" y2="{base:.0}" stroke="#555"/>"##,
        x_of(s.images.len()) - GAP
    );
    out.push_str("</svg>\n");
    out
}

const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; }
.fleet { display: flex; gap: 28px; flex-wrap: wrap; margin: 16px 0; }
.fleet div { background: #f3f3f3; border-radius: 6px; padding: 8px 14px; }
.fleet b { display: block; font-size: 22px; }
.picture { overflow-x: auto; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px; }
svg text { font: 12px system-ui, sans-serif; fill: #222; }
svg text.size { font-size: 10px; text-anchor: middle; }
svg text.total { font-size: 11px; text-anchor: middle; fill: #555; }
svg polygon.link { opacity: 0.35; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 3px 10px; border-bottom: 1px solid #e6e6e6; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px; }
.note { color: #666; }
";

/// The whole page.
pub fn render(s: &Sharing) -> String {
    let f = &s.fleet;
    let colour = colours(s);
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n",
    );
    let _ = writeln!(
        out,
        "<title>imgc report: {} image{}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        f.images,
        if f.images == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "<h1>Layer sharing of {} image{}</h1>",
        f.images,
        if f.images == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "<p class=\"note\">Sizes are blob sizes as a registry stores them and a node pulls them (compressed layers, configs, manifests).</p>"
    );
    let _ = writeln!(
        out,
        "<div class=\"fleet\">\
         <div><b id=\"alone\">{}</b>stored alone (every image with all of its blobs)</div>\
         <div><b id=\"stored\">{}</b>stored ({} distinct blobs, each once)</div>\
         <div><b id=\"ratio\">{:.2}×</b>less (sharing saves {})</div></div>",
        bytes(f.alone),
        bytes(f.stored),
        f.blobs,
        f.ratio(),
        bytes(f.saved())
    );
    out.push_str("<div class=\"picture\">\n");
    out.push_str(&picture(s));
    out.push_str("</div>\n<p class=\"note\">Each column is an image, its layers stacked base first from the bottom; a shared layer has one colour wherever it appears, a grey layer belongs to one image. Heights grow with the square root of the size.</p>\n");

    out.push_str("<h2>Images</h2>\n<table id=\"images\">\n<tr><th>image</th><th class=\"n\">layers</th><th class=\"n\">total</th><th class=\"n\">own</th><th class=\"n\">shared</th></tr>\n");
    for i in &s.images {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\" title=\"{} bytes\">{}</td><td class=\"n\" title=\"{} bytes\">{}</td><td class=\"n\" title=\"{} bytes\">{}</td></tr>",
            escape(&i.label),
            i.layers.len(),
            i.total,
            bytes(i.total),
            i.own,
            bytes(i.own),
            i.shared,
            bytes(i.shared)
        );
    }
    out.push_str("</table>\n");

    out.push_str("<h2>Layers</h2>\n<table id=\"layers\">\n<tr><th></th><th>layer</th><th class=\"n\">size</th><th class=\"n\">images</th><th>carried by</th><th>made by</th></tr>\n");
    for l in &s.layers {
        let _ = writeln!(
            out,
            "<tr><td><span class=\"swatch\" style=\"background: {}\"></span></td><td><code title=\"{}\">{}</code></td><td class=\"n\" title=\"{} bytes\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            colour[&l.digest],
            l.digest,
            escape(&short_digest(&l.digest)),
            l.size,
            bytes(l.size),
            l.images.len(),
            escape(&l.images.join(", ")),
            escape(&l.targets.join(", "))
        );
    }
    out.push_str("</table>\n");

    out.push_str("<h2>Diverged images</h2>\n");
    if s.images.len() < 2 {
        out.push_str("<p id=\"diverged\">None: one image, no other to share with.</p>\n");
    } else if s.diverged.is_empty() {
        out.push_str("<p id=\"diverged\">None: every image shares a layer with another.</p>\n");
    } else {
        out.push_str("<p>These images share no layer with the others (another base, or another version of it):</p>\n<ul id=\"diverged\">\n");
        for d in &s.diverged {
            let _ = writeln!(out, "<li>{}</li>", escape(d));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<p class=\"note\">Made by <code>imgc report</code>.</p>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Blob, ImageBlobs, compute};
    use super::*;
    use std::collections::BTreeSet;

    use super::super::test_blob as blob;

    fn fixture() -> Sharing {
        let base = blob("base", 1 << 20);
        let img = |label: &str, layers: Vec<Blob>| ImageBlobs {
            label: label.into(),
            manifest: blob(&format!("{label}m"), 400),
            config: blob(&format!("{label}c"), 600),
            layers,
        };
        compute(
            &[
                img("//a:a", vec![base, blob("a", 1000)]),
                img("//b:b<&>", vec![base, blob("b", 10)]),
                img("//c:c", vec![blob("c", 5)]),
            ],
            &BTreeMap::from([(base.digest, BTreeSet::from(["//bases:x".to_string()]))]),
        )
    }

    #[test]
    fn page_is_self_contained_and_escapes_labels() {
        let page = render(&fixture());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("default-src 'none'"));
        for fetch in ["src=", "href=", "url(", "@import", "<script", "<link"] {
            assert!(
                !page.contains(fetch),
                "the page must load nothing: `{fetch}`"
            );
        }
        assert!(page.contains("//b:b&lt;&amp;&gt;"));
        assert!(!page.contains("//b:b<&>"));
        assert!(
            page.contains("<li>//c:c</li>"),
            "the diverged image is listed"
        );
    }

    #[test]
    fn a_shared_layer_has_one_colour_and_a_link_between_columns() {
        let s = fixture();
        let svg = picture(&s);
        let shared = colours(&s)[&s.layers[0].digest].clone();
        assert_ne!(shared, UNSHARED);
        assert_eq!(
            svg.matches(&format!("fill=\"{shared}\" stroke")).count(),
            2,
            "the base layer is drawn once per image, in its colour"
        );
        assert_eq!(
            svg.matches("<polygon").count(),
            1,
            "one link: //a:a to //b:b"
        );
        assert_eq!(svg.matches(&format!("fill=\"{UNSHARED}\"")).count(), 3);
        assert_eq!(svg.matches("<g class=\"image\">").count(), 3);
        assert_eq!(svg, picture(&s), "the same report draws the same picture");
    }

    #[test]
    fn heights_grow_with_the_square_root_of_size() {
        assert_eq!(height(100, 100), MAX_H);
        assert_eq!(height(0, 100), MIN_H);
        assert_eq!(height(25, 100), (MIN_H + (MAX_H - MIN_H) * 0.5).round());
        assert_eq!(height(5, 0), MIN_H);
    }
}
