//! Garbage collection and verification of a remote cache directory
//! (`imgc cache gc --remote`, `imgc cache verify --remote`).
//!
//! A directory remote ([`super::dir`]) has no index: its entries (`ac/<key>`)
//! are the roots, each naming the blobs (`cas/sha256/<hex>`) of its output, and
//! an entry's mtime is its last use (a hit refreshes it). Only directories carry
//! the [`MARKER`] are touched; an HTTP server cannot be listed, so it collects
//! its own garbage.
//!
//! # Collection ([`collect`])
//!
//! 1. List the entries (each decoded: [`entry::decode`]) and the blobs, with
//!    sizes and mtimes.
//! 2. Evict entries, least recently used (oldest mtime) first, until the blobs
//!    the remaining entries name plus the blobs younger than the grace period fit
//!    the size asked for ([`crate::gc::plan`]). An entry that does not decode is
//!    deleted once it is older than the grace period (it names nothing usable).
//! 3. Unlink the evicted entries **first**, each only if it is still the file
//!    that was listed (a hit that refreshed it meanwhile keeps it).
//! 4. List the entries again, and unlink every blob none of them names that is
//!    older than the grace period, stat-ed again right before.
//! 5. Unlink temp files in `tmp/` older than the grace period.
//!
//! # Safe alongside builds and other collections
//!
//! - An entry goes before the blobs it names, so no collection leaves an entry
//!   naming a blob it deleted; a reader that finds an entry whose blob has just
//!   gone anyway sees a miss, and rebuilds.
//! - Uploaders publish blobs before the entry naming them, and touch a blob they
//!   find already there ([`super::dir::DirStore`]): a blob an entry is about to
//!   name is young, and a young blob is never deleted.
//! - Nothing is followed or guessed at: only regular files with 64-hex names (and
//!   temp files with imgc's prefixes) are ever unlinked; symbolic links, other
//!   names and directories are left alone.

use super::dir::{DirStore, MARKER, open_regular};
use super::{Fault, entry};
use crate::gc::{
    Blobs, GcOptions, GcReport, Ident, Listing, Root, VerifyReport, cutoff, is_hex64, list_blobs,
    plan, remove_if_old, remove_if_same,
};
use crate::hash::{Digest, Key};
use crate::report::Progress;
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Prefixes of the temp files imgc writes in `tmp/` (blobs, entries, links).
const TEMP_PREFIXES: [&str; 3] = [".blob-", ".entry-", ".link-"];

/// An entry file as listed.
struct EntryFile {
    key: Key,
    path: PathBuf,
    ident: Ident,
    entry: Result<entry::Entry, String>,
}

/// What `ac/` holds.
#[derive(Default)]
struct Entries {
    files: Vec<EntryFile>,
    /// Entry names that are not regular files (symlinks, FIFOs, directories).
    other: Vec<(PathBuf, Ident)>,
    /// Names that are not entry names: left alone.
    foreign: usize,
}

fn require_marker(store: &DirStore) -> Result<(), String> {
    let marker = store.root().join(MARKER);
    match fs::symlink_metadata(&marker) {
        Ok(m) if m.is_file() => Ok(()),
        _ => Err(format!(
            "`{}` is not an imgc remote cache (it has no `{MARKER}` file): refusing to touch it",
            store.root().display()
        )),
    }
}

fn scan_entries(store: &DirStore) -> Result<Entries, String> {
    let dir = store.entries_dir();
    let mut out = Entries::default();
    let list = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(format!("cannot list `{}`: {e}", dir.display())),
    };
    for e in list {
        let e = e.map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let key = match Key::from_hex(&name).filter(|_| is_hex64(&name)) {
            Some(k) => k,
            None => {
                out.foreign += 1;
                continue;
            }
        };
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot stat `{}`: {e}", path.display())),
        };
        if !meta.file_type().is_file() {
            out.other.push((path, Ident::of(&meta)));
            continue;
        }
        let file = match open_regular(&path) {
            Ok(f) => f,
            Err(Fault::Missing) => continue,
            Err(Fault::Damaged(_)) => {
                // Replaced by something else since the stat.
                if let Ok(m) = fs::symlink_metadata(&path) {
                    out.other.push((path, Ident::of(&m)));
                }
                continue;
            }
            Err(Fault::Failed(e)) => {
                return Err(format!("cannot read `{}`: {e}", path.display()));
            }
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat `{}`: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(entry::MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let entry = if bytes.len() as u64 > entry::MAX_ENTRY_BYTES {
            Err("larger than any entry".to_string())
        } else {
            entry::decode(&key, &bytes).map_err(|e| e.to_string())
        };
        out.files.push(EntryFile {
            key,
            path,
            ident: Ident::of(&meta),
            entry,
        });
    }
    out.files.sort_by_key(|f| f.key);
    Ok(out)
}

fn list_store(store: &DirStore) -> Result<Listing, String> {
    let dir = store.root().join("cas").join("sha256");
    list_blobs(store.blobs(), &dir, false).map_err(|e| format!("cannot list the remote blobs: {e}"))
}

/// Collects garbage in the remote cache directory `store` (see the module docs).
pub fn collect(store: &DirStore, opts: &GcOptions) -> Result<GcReport, String> {
    collect_observed(store, opts, &mut |_| {})
}

/// [`collect`], calling `removed` with each path it unlinks, in order.
fn collect_observed(
    store: &DirStore,
    opts: &GcOptions,
    removed: &mut dyn FnMut(&Path),
) -> Result<GcReport, String> {
    require_marker(store)?;
    let now = SystemTime::now();
    let old_before = cutoff(now, opts.grace);
    let entries = scan_entries(store)?;
    let listing = list_store(store)?;
    let stored = listing.stored(old_before);
    let live: Vec<(&EntryFile, &entry::Entry)> = entries
        .files
        .iter()
        .filter_map(|f| f.entry.as_ref().ok().map(|e| (f, e)))
        .collect();
    let roots: Vec<Root> = live
        .iter()
        .map(|(f, e)| Root {
            used: f.ident.mtime_ns,
            blobs: e.output.blobs().into_iter().map(|(d, _)| d).collect(),
        })
        .collect();
    let plan = plan(&roots, &stored, opts.max_size);
    let dead: Vec<&EntryFile> = entries
        .files
        .iter()
        .filter(|f| f.entry.is_err() && f.ident.mtime() < old_before)
        .collect();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        roots: live.len(),
        blobs: stored.len(),
        bytes: listing.bytes(),
        fits: plan.fits,
        young_bytes: plan.young_bytes,
        skipped: entries.foreign
            + entries.other.len()
            + listing.foreign
            + (listing.blobs.len() - stored.len()),
        removed_roots: plan
            .evict
            .iter()
            .map(|&i| format!("{} {}", live[i].0.key.to_hex(), live[i].1.label))
            .collect(),
        ..GcReport::default()
    };
    if opts.dry_run {
        report.roots_removed = plan.evict.len();
        report.damaged_roots_removed = dead.len();
        for s in stored.iter().filter(|s| plan.doomed.contains(&s.digest)) {
            report.removed_blobs.push((s.digest, s.size));
            report.blobs_removed += 1;
            report.bytes_removed += s.size;
        }
        return Ok(report);
    }
    let unlink = |path: &Path, ident: &Ident| {
        remove_if_same(path, ident).map_err(|e| format!("cannot remove `{}`: {e}", path.display()))
    };
    // Entries first...
    for &i in &plan.evict {
        let f = live[i].0;
        if unlink(&f.path, &f.ident)? {
            removed(&f.path);
            report.roots_removed += 1;
        } else {
            report.roots_kept_in_use += 1;
        }
    }
    for f in dead {
        if unlink(&f.path, &f.ident)? {
            removed(&f.path);
            report.damaged_roots_removed += 1;
        }
    }
    // ...then the blobs no entry names now (entries written meanwhile included).
    let named: BTreeSet<Digest> = scan_entries(store)?
        .files
        .iter()
        .filter_map(|f| f.entry.as_ref().ok())
        .flat_map(|e| e.output.blobs().into_iter().map(|(d, _)| d))
        .collect();
    for b in listing.blobs.iter().filter(|b| b.ident.is_file) {
        if named.contains(&b.digest) {
            continue;
        }
        match remove_if_old(&b.path, old_before) {
            Ok(Some(size)) => {
                removed(&b.path);
                report.removed_blobs.push((b.digest, size));
                report.blobs_removed += 1;
                report.bytes_removed += size;
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot remove `{}`: {e}", b.path.display())),
        }
    }
    report.temp_removed = sweep_tmp(store, old_before, removed)?;
    Ok(report)
}

/// Unlinks imgc's temp files in `tmp/` older than `old_before` (regular files
/// with imgc's prefixes only).
fn sweep_tmp(
    store: &DirStore,
    old_before: SystemTime,
    removed: &mut dyn FnMut(&Path),
) -> Result<usize, String> {
    let dir = store.root().join("tmp");
    let list = match fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot list `{}`: {e}", dir.display())),
    };
    let mut n = 0;
    for e in list {
        let e = e.map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !TEMP_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let path = e.path();
        match remove_if_old(&path, old_before) {
            Ok(Some(_)) => {
                removed(&path);
                n += 1;
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot remove `{}`: {e}", path.display())),
        }
    }
    Ok(n)
}

/// Verifies the remote cache directory `store`: re-hashes every blob on `jobs`
/// threads, removes the damaged ones, then removes every entry that does not
/// decode or names a blob that is missing or damaged. Each removal only if the
/// file is still the one that was checked.
pub fn verify(store: &DirStore, jobs: usize) -> Result<VerifyReport, String> {
    require_marker(store)?;
    let mut report = VerifyReport::default();
    let listing = list_store(store)?;
    let progress = Progress::bytes("verifying remote blobs", listing.bytes());
    let mut blobs = Blobs::scan(store.blobs(), &listing, jobs, &progress, &mut report)?;
    let entries = scan_entries(store)?;
    report.skipped += entries.foreign;
    report.roots = entries.files.len() + entries.other.len();
    let mut bad: Vec<(&Path, &Ident, String, String)> = Vec::new();
    for f in &entries.files {
        let why = match &f.entry {
            Err(why) => Some(why.clone()),
            Ok(e) => blobs.check_output(&e.output),
        };
        if let Some(why) = why {
            bad.push((&f.path, &f.ident, f.key.to_hex(), why));
        }
    }
    for (path, ident) in &entries.other {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bad.push((path, ident, name, "not a regular file".into()));
    }
    for (path, ident, key, why) in bad {
        report.damaged_roots.push((key, why));
        if remove_if_same(path, ident)
            .map_err(|e| format!("cannot remove `{}`: {e}", path.display()))?
        {
            report.roots_removed += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{LayerDesc, Output};
    use crate::gc::DEFAULT_GRACE;
    use crate::hash::DiffId;
    use crate::remote::{Mode, Store};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    struct Fixture {
        dir: tempfile::TempDir,
        store: DirStore,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(&dir.path().join("remote"), Mode::ReadWrite).unwrap();
        Fixture { dir, store }
    }

    fn ago(secs: u64) -> filetime::FileTime {
        filetime::FileTime::from_system_time(SystemTime::now() - Duration::from_secs(secs))
    }

    impl Fixture {
        fn root(&self) -> &Path {
            self.store.root()
        }

        /// A blob of `size` bytes (content from `seed`), last modified `age` s ago.
        fn blob(&self, seed: &str, size: usize, age: u64) -> (Digest, u64) {
            let bytes: Vec<u8> = seed.bytes().cycle().take(size).collect();
            let (d, n) = self.store.blobs().put_bytes(&bytes).unwrap();
            filetime::set_file_mtime(self.store.blobs().blob_path(&d), ago(age)).unwrap();
            (d, n)
        }

        /// An entry naming `layer` and `listing`, last used `age` s ago.
        fn entry(
            &self,
            name: &str,
            layer: (Digest, u64),
            listing: Option<(Digest, u64)>,
            age: u64,
        ) -> Key {
            let key = Key::of_bytes(name.as_bytes());
            let output = Output::Layer(LayerDesc {
                digest: layer.0,
                diff_id: DiffId(Digest::of_bytes(name.as_bytes())),
                size: layer.1,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                listing: listing.map(|(digest, size)| crate::action::Blob { digest, size }),
            });
            let bytes = entry::encode(&key, "layer", &format!("//p:{name}"), &output);
            self.store.put_entry(&key, &bytes, false).unwrap();
            filetime::set_file_mtime(self.store.entry_path(&key), ago(age)).unwrap();
            key
        }

        fn has_blob(&self, d: &Digest) -> bool {
            fs::symlink_metadata(self.store.blobs().blob_path(d)).is_ok()
        }

        fn has_entry(&self, k: &Key) -> bool {
            fs::symlink_metadata(self.store.entry_path(k)).is_ok()
        }
    }

    fn opts(max_size: u64, grace: Duration) -> GcOptions {
        GcOptions {
            max_size,
            grace,
            dry_run: false,
        }
    }

    const HOURS: u64 = 3600;

    #[test]
    fn gc_to_a_size_evicts_the_oldest_entries_and_their_unshared_blobs() {
        let f = fixture();
        let shared = f.blob("shared", 50, 5 * HOURS);
        let (a, b, c) = (
            f.blob("a", 100, 5 * HOURS),
            f.blob("b", 100, 5 * HOURS),
            f.blob("c", 100, 5 * HOURS),
        );
        // Used 3, 4 and 2 hours ago: b is the least recently used.
        let ka = f.entry("a", a, Some(shared), 3 * HOURS);
        let kb = f.entry("b", b, Some(shared), 4 * HOURS);
        let kc = f.entry("c", c, Some(shared), 2 * HOURS);

        // Everything fits: nothing goes.
        let r = collect(&f.store, &opts(350, DEFAULT_GRACE)).unwrap();
        assert_eq!((r.roots, r.roots_removed, r.blobs_removed), (3, 0, 0));
        assert_eq!((r.blobs, r.bytes), (4, 350));

        // A dry run says what would go, and removes nothing.
        let dry = GcOptions {
            dry_run: true,
            ..opts(200, DEFAULT_GRACE)
        };
        let r = collect(&f.store, &dry).unwrap();
        assert_eq!(r.roots_removed, 2);
        assert_eq!(r.removed_blobs.len(), 2);
        assert!(
            r.removed_roots[0].starts_with(&kb.to_hex()),
            "{:?}",
            r.removed_roots
        );
        assert!(f.has_entry(&kb) && f.has_blob(&b.0));

        let r = collect(&f.store, &opts(200, DEFAULT_GRACE)).unwrap();
        assert_eq!(
            (r.roots_removed, r.blobs_removed, r.bytes_removed),
            (2, 2, 200)
        );
        assert_eq!(r.bytes_after(), 150);
        assert!(r.fits);
        assert!(!f.has_entry(&kb) && !f.has_entry(&ka) && f.has_entry(&kc));
        assert!(!f.has_blob(&a.0) && !f.has_blob(&b.0));
        assert!(
            f.has_blob(&c.0) && f.has_blob(&shared.0),
            "named by a kept entry"
        );
        // What is left still verifies.
        assert!(verify(&f.store, 2).unwrap().all_good());
    }

    #[test]
    fn gc_keeps_young_blobs() {
        let f = fixture();
        let young = f.blob("young", 100, 60);
        let old = f.blob("old", 100, 5 * HOURS);
        let named_young = f.blob("named", 100, 60);
        let k = f.entry("e", named_young, None, 5 * HOURS);
        let r = collect(&f.store, &opts(0, DEFAULT_GRACE)).unwrap();
        assert!(!f.has_entry(&k), "evicted: the limit is 0");
        assert!(!f.has_blob(&old.0));
        assert!(f.has_blob(&young.0) && f.has_blob(&named_young.0));
        assert_eq!(r.blobs_removed, 1);
        assert!(!r.fits);
        assert_eq!(r.young_bytes, 200);
        // Once the grace period is over, they go.
        let r = collect(&f.store, &opts(0, Duration::ZERO)).unwrap();
        assert_eq!(r.blobs_removed, 2);
        assert!(!f.has_blob(&young.0));
    }

    #[test]
    fn gc_deletes_entries_before_the_blobs_they_name() {
        let f = fixture();
        let mut keys = Vec::new();
        for n in 0..5 {
            let name = format!("e{n}");
            let blob = f.blob(&name, 10, 5 * HOURS);
            keys.push(f.entry(&name, blob, None, (10 - n) * HOURS));
        }
        let stray = dir_tmp_file(&f, ".blob-stray", 5 * HOURS);
        let mut order = Vec::new();
        collect_observed(&f.store, &opts(0, DEFAULT_GRACE), &mut |p| {
            order.push(p.to_path_buf())
        })
        .unwrap();
        let kind = |p: &PathBuf| {
            if p.starts_with(f.store.entries_dir()) {
                0
            } else if p.starts_with(f.root().join("cas")) {
                1
            } else {
                2
            }
        };
        let kinds: Vec<i32> = order.iter().map(kind).collect();
        assert_eq!(kinds, vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2], "{order:?}");
        // Oldest entry first.
        assert_eq!(order[0], f.store.entry_path(&keys[0]));
        assert!(!stray.exists());
    }

    fn dir_tmp_file(f: &Fixture, name: &str, age: u64) -> PathBuf {
        let p = f.root().join("tmp").join(name);
        fs::write(&p, b"partial").unwrap();
        filetime::set_file_mtime(&p, ago(age)).unwrap();
        p
    }

    #[test]
    fn gc_and_verify_never_touch_a_directory_without_the_marker() {
        let f = fixture();
        let blob = f.blob("x", 10, 5 * HOURS);
        let k = f.entry("x", blob, None, 5 * HOURS);
        fs::remove_file(f.root().join(MARKER)).unwrap();
        let e = collect(&f.store, &opts(0, Duration::ZERO)).unwrap_err();
        assert!(e.contains("not an imgc remote cache"), "{e}");
        let e = verify(&f.store, 1).unwrap_err();
        assert!(e.contains("not an imgc remote cache"), "{e}");
        assert!(f.has_entry(&k) && f.has_blob(&blob.0));
        // Opened as the commands open it (read-only), it gets no marker either.
        if let Ok(store) = DirStore::open(f.root(), Mode::Read) {
            assert!(collect(&store, &opts(0, Duration::ZERO)).is_err());
            assert!(verify(&store, 1).is_err());
        }
        assert!(!f.root().join(MARKER).exists());
        assert!(f.has_entry(&k) && f.has_blob(&blob.0));
    }

    #[test]
    fn gc_skips_symlinks_and_names_that_are_not_the_stores() {
        let f = fixture();
        let outside = f.dir.path().join("outside");
        fs::write(&outside, b"not imgc's").unwrap();
        let old =
            |p: &Path| filetime::set_symlink_file_times(p, ago(5 * HOURS), ago(5 * HOURS)).unwrap();
        let blobs = f.root().join("cas/sha256");
        let planted = [
            blobs.join("ab".repeat(32)), // a symlink under a blob name
            f.store.entries_dir().join("cd".repeat(32)), // a symlink under an entry name
            f.root().join("tmp/.blob-link"), // a symlink with a temp prefix
        ];
        for p in &planted {
            std::os::unix::fs::symlink(&outside, p).unwrap();
            old(p);
        }
        let files = [
            blobs.join("README"),
            blobs.join("AB".repeat(32)), // upper case: not a name imgc writes
            blobs.join(format!("{}.tmp", "ab".repeat(32))),
            f.store.entries_dir().join("notes.txt"),
            f.root().join("tmp/not-ours"),
        ];
        for p in &files {
            fs::write(p, b"x").unwrap();
            old(p);
        }
        fs::create_dir(blobs.join("ef".repeat(32))).unwrap();
        let r = collect(&f.store, &opts(0, Duration::ZERO)).unwrap();
        assert_eq!(
            (r.blobs_removed, r.roots_removed, r.temp_removed),
            (0, 0, 0)
        );
        assert_eq!(r.skipped, 7, "tmp/ is not counted");
        for p in planted.iter().chain(&files) {
            assert!(
                fs::symlink_metadata(p).is_ok(),
                "{} was removed",
                p.display()
            );
        }
        assert_eq!(fs::read(&outside).unwrap(), b"not imgc's");
    }

    /// Makes a stored blob writable and changes it in place.
    fn damage(f: &Fixture, d: &Digest, how: impl FnOnce(&mut Vec<u8>)) {
        let p = f.store.blobs().blob_path(d);
        let mut bytes = fs::read(&p).unwrap();
        how(&mut bytes);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, &bytes).unwrap();
    }

    #[test]
    fn verify_removes_flipped_and_truncated_blobs_and_the_entries_naming_them() {
        let f = fixture();
        let good = f.blob("good", 1000, 60);
        let flipped = f.blob("flipped", 1000, 60);
        let truncated = f.blob("truncated", 1000, 60);
        let listing = f.blob("listing", 10, 60);
        let k_good = f.entry("good", good, Some(listing), 60);
        let k_flipped = f.entry("flipped", flipped, Some(listing), 60);
        let k_truncated = f.entry("truncated", truncated, None, 60);
        // An entry damaged itself, and one naming a blob that is not there.
        let k_garbled = f.entry("garbled", good, None, 60);
        let p = f.store.entry_path(&k_garbled);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        fs::write(&p, &bytes).unwrap();
        let k_missing = f.entry("missing", (Digest::of_bytes(b"nowhere"), 7), None, 60);

        damage(&f, &flipped.0, |b| b[500] ^= 0x80);
        damage(&f, &truncated.0, |b| b.truncate(999));

        let r = verify(&f.store, 2).unwrap();
        assert!(!r.all_good());
        let damaged: BTreeSet<Digest> = r.damaged_blobs.iter().map(|(d, _)| *d).collect();
        assert_eq!(damaged, BTreeSet::from([flipped.0, truncated.0]));
        assert_eq!(r.blobs_removed, 2);
        assert_eq!((r.blobs, r.roots), (4, 5));
        let bad: BTreeSet<String> = r.damaged_roots.iter().map(|(k, _)| k.clone()).collect();
        let want: BTreeSet<String> = [k_flipped, k_truncated, k_garbled, k_missing]
            .iter()
            .map(|k| k.to_hex())
            .collect();
        assert_eq!(bad, want);
        assert_eq!(r.roots_removed, 4);
        assert!(!f.has_blob(&flipped.0) && !f.has_blob(&truncated.0));
        assert!(f.has_entry(&k_good) && f.has_blob(&good.0) && f.has_blob(&listing.0));
        for k in [k_flipped, k_truncated, k_garbled, k_missing] {
            assert!(!f.has_entry(&k));
        }

        // A second verification finds nothing wrong.
        let r = verify(&f.store, 1).unwrap();
        assert!(r.all_good(), "{r:?}");
        assert_eq!((r.blobs, r.roots), (2, 1));
    }

    #[test]
    fn verify_removes_a_symlink_under_a_blob_name_but_not_its_target() {
        let f = fixture();
        let outside = f.dir.path().join("outside");
        fs::write(&outside, b"content").unwrap();
        let d = Digest::of_bytes(b"content");
        let p = f.store.blobs().blob_path(&d);
        std::os::unix::fs::symlink(&outside, &p).unwrap();
        let r = verify(&f.store, 1).unwrap();
        assert_eq!(r.damaged_blobs.len(), 1);
        assert_eq!(r.blobs_removed, 1);
        assert!(fs::symlink_metadata(&p).is_err());
        assert_eq!(fs::read(&outside).unwrap(), b"content");
    }

    #[test]
    fn undecodable_entries_go_only_once_older_than_the_grace_period() {
        let f = fixture();
        let blob = f.blob("b", 10, 60);
        let young = f.store.entries_dir().join("11".repeat(32));
        let old = f.store.entries_dir().join("22".repeat(32));
        for p in [&young, &old] {
            fs::write(p, b"{not an entry").unwrap();
        }
        filetime::set_file_mtime(&old, ago(5 * HOURS)).unwrap();
        let k = f.entry("kept", blob, None, 60);
        let r = collect(&f.store, &opts(1 << 30, DEFAULT_GRACE)).unwrap();
        assert_eq!(r.damaged_roots_removed, 1);
        assert!(young.exists() && !old.exists() && f.has_entry(&k));
    }
}
