//! Build-time facts that enter cache keys:
//! - the exact versions of the compression crates (from Cargo.lock), for layer
//!   keys: a new compressor may produce other bytes for the same input;
//! - a fingerprint of the sources that turn spec text into the model, for the
//!   parse cache: a parser change must never be served an old parse.

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

/// Sources whose change can change what a spec file parses to.
const PARSER_SOURCES: &[&str] = &["src/spec", "src/label.rs", "src/diag.rs"];

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    parser_fingerprint();
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

fn parser_fingerprint() {
    use std::hash::{Hash, Hasher};
    let mut files = Vec::new();
    for p in PARSER_SOURCES {
        println!("cargo:rerun-if-changed={p}");
        let path = std::path::Path::new(p);
        if path.is_dir() {
            for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
                files.push(e.path());
            }
        } else {
            files.push(path.to_path_buf());
        }
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in &files {
        f.hash(&mut h);
        std::fs::read(f).unwrap_or_default().hash(&mut h);
    }
    println!(
        "cargo:rustc-env=IMGC_PARSER_FINGERPRINT={:016x}",
        h.finish()
    );
}
