//! Records the exact versions of the compression crates (from Cargo.lock) for
//! layer keys: a new compressor may produce other bytes for the same input.

use std::fmt::Write;

const COMPRESSORS: &[&str] = &[
    "flate2",
    "libdeflate-sys",
    "libdeflater",
    "zlib-rs",
    "zstd",
    "zstd-safe",
    "zstd-sys",
];

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut found: Vec<(String, String)> = Vec::new();
    for block in lock.split("[[package]]") {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.trim().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        };
        if let (Some(name), Some(version)) = (field("name "), field("version "))
            && COMPRESSORS.contains(&name.as_str())
        {
            found.push((name, version));
        }
    }
    found.sort();
    let mut out = String::new();
    for (name, version) in &found {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{name}@{version}");
    }
    if out.is_empty() {
        out.push_str("unknown");
    }
    println!("cargo:rustc-env=IMGC_COMPRESSOR_VERSIONS={out}");
}
