//! imgc: a declarative, incremental OCI image compiler for monorepos.
//!
//! # Data flow
//!
//! | # | stage | module | in → out |
//! |---|---|---|---|
//! | 0 | no-op fast path | [`snapshot`] | invocation + stat data of every path the last successful build or check depended on → its events again, or the full path |
//! | 1 | discover | [`workspace`] | cwd → workspace root (`imgc.kdl`), sorted `BUILD.kdl` files |
//! | 2 | parse & lower | [`spec`] | KDL text → typed, spanned model; every diagnostic collected ([`diag`]) |
//! | 3 | resolve & plan | [`label`], [`graph`], [`policy`] | model + patterns → graph of targets; unknown labels, cycles are errors; `check` and `build` hold the images to the workspace's policy |
//! | 3 | packages | [`debian::lock`], [`debian::plan`] | `imgc.lock` (read beneath the root) + each target's `packages` → checked (stale is E092), one generated package-layer target per locked package in use, `Package` edges from images and layers |
//! | 4 | key | [`actions`], [`action`], [`hash`] | recipe version + parameters + input hashes ([`fileset`], [`import`]) + deps' output digests → blake3 key |
//! | 4, 6 | read inputs | [`input`] | workspace files opened beneath the root's descriptor (no link out of it, regular files only), read within bounds and hashed as read: the same bytes for the key and the output |
//! | 5 | execute | [`scheduler`], [`actions`], [`remote`] | key hit in [`cache`] → fresh; else a hit in the [`remote`] cache (a shared directory or Bazel's HTTP protocol) → its blobs fetched into [`cas`], verified; miss → the kind's action runs on a rayon worker, blobs into [`cas`], then uploaded |
//! | 6 | assemble | [`layer`], [`oci`], [`import`], [`listing`] | layers (each with a listing of its paths), config, manifest; the stack of layers checked against destroying lower paths: cached actions too (early cutoff) |
//! | 7 | materialize | [`oci`], [`output`] | an OCI image layout per image, blobs hard-linked from the CAS; only where imgc may write (marked, no links followed) |
//! | 8 | report | [`report`] | events → progress on stderr, results on stdout, JSON lines |
//! | 5, 8 | plan | [`plan`] | a dry run's outcomes (stage 5 keyed and looked up, nothing run) → what a build would rebuild, re-assemble and reuse |
//! | 9 | share | [`sharing`] | built images → which blobs they share, what they store alone and together (`imgc report`) |
//! | 9 | export | [`export`] | a built image → one deterministic archive file (`docker-archive`, also an OCI layout; or `oci-archive`), streamed from [`cas`] and verified, renamed into place when complete (`imgc export`) |
//! | 10 | push | [`registry`] | built images → registries: blobs found, mounted or streamed from [`cas`], the manifest last (`imgc push`) |
//!
//! # Invariants
//!
//! 1. **Pure core.** [`label`], [`reference`](mod@reference), [`spec`], [`graph`], [`policy`], [`action`] and [`debian`]'s index, resolver and lock do no IO beyond the
//!    bytes handed to them; they are tested with strings.
//! 2. **Nothing unstable enters a key**: no mtime, absolute path, environment
//!    variable, clock, hostname, uid or completion order. Stat data only decides
//!    whether a file must be re-hashed.
//! 3. **Keys are blake3, blobs are sha256**: [`hash::Key`], [`hash::Digest`] and
//!    [`hash::DiffId`] are distinct types.
//! 4. **Constructive traces, early cutoff.** A key includes its dependencies'
//!    *output* digests, so a dependency rebuilt to the same bytes stops the cascade.
//! 5. **A hit is a fresh build.** Every action kind has a recipe version in its
//!    key ([`actions`]); what an action reads is hashed while read and must be
//!    what its key hashed, else it fails and nothing is cached.
//! 6. **One owner per side effect.** [`cache`] alone talks to SQLite (on the
//!    coordinating thread), [`cas`] alone writes blobs, [`remote`] alone talks to
//!    remote caches, [`registry`] alone talks to registries, [`fetch`] alone
//!    downloads pinned files (`http-file` targets, the `.deb`s of package layers), the
//!    repository client of [`packages`] alone fetches Debian indexes, [`output`] alone writes and
//!    removes in the output directory, [`export`] alone writes archives (to the
//!    file `-o` names, or as bytes on stdout), [`input`] alone opens workspace files,
//!    [`report`] alone prints.
//! 7. **The workspace may be hostile.** No read leaves it, no link leads into a
//!    special file, and nothing imgc did not make (and mark) is replaced or deleted
//!    (but for a file the user names with `-o`).

pub mod action;
pub mod actions;
pub mod affected;
pub mod cache;
pub mod cas;
pub mod cli;
pub mod commands;
pub mod debian;
pub mod diag;
pub mod docgen;
pub mod export;
pub mod fetch;
pub mod fileset;
pub mod gc;
pub mod git;
pub mod graph;
pub mod hash;
pub mod import;
pub mod input;
pub mod label;
pub mod layer;
pub mod listing;
pub mod oci;
pub mod output;
pub mod packages;
pub mod plan;
pub mod policy;
pub mod reference;
pub mod registry;
pub mod remote;
pub mod report;
pub mod scheduler;
pub mod sharing;
pub mod snapshot;
pub mod spec;
pub mod workspace;

#[cfg(test)]
mod architecture {
    /// The pure core must not reach for IO or threads: it is tested with strings.
    #[test]
    fn pure_core_does_no_io() {
        let core: &[(&str, &str)] = &[
            ("label.rs", include_str!("label.rs")),
            ("diag.rs", include_str!("diag.rs")),
            ("hash.rs", include_str!("hash.rs")),
            ("graph.rs", include_str!("graph.rs")),
            ("action.rs", include_str!("action.rs")),
            ("listing.rs", include_str!("listing.rs")),
            ("plan.rs", include_str!("plan.rs")),
            ("affected.rs", include_str!("affected.rs")),
            ("spec/model.rs", include_str!("spec/model.rs")),
            ("spec/parse.rs", include_str!("spec/parse.rs")),
            ("spec/reader.rs", include_str!("spec/reader.rs")),
            ("spec/paths.rs", include_str!("spec/paths.rs")),
            ("spec/limits.rs", include_str!("spec/limits.rs")),
            ("sharing/mod.rs", include_str!("sharing/mod.rs")),
            ("sharing/human.rs", include_str!("sharing/human.rs")),
            ("sharing/html.rs", include_str!("sharing/html.rs")),
            ("policy.rs", include_str!("policy.rs")),
            ("reference.rs", include_str!("reference.rs")),
            ("debian/mod.rs", include_str!("debian/mod.rs")),
            ("debian/index.rs", include_str!("debian/index.rs")),
            ("debian/resolve.rs", include_str!("debian/resolve.rs")),
            ("debian/lock.rs", include_str!("debian/lock.rs")),
            ("debian/plan.rs", include_str!("debian/plan.rs")),
            ("packages/requests.rs", include_str!("packages/requests.rs")),
        ];
        let forbidden = [
            "std::fs",
            "rusqlite",
            "rayon",
            "tar::",
            "walkdir",
            "std::process",
            "std::env",
        ];
        for (file, text) in core {
            for word in forbidden {
                assert!(
                    !text.contains(word),
                    "src/{file} uses `{word}`: the core stays pure"
                );
            }
        }
    }
}
