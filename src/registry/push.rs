//! Pushing built images to registries, as the Distribution spec lays it out.
//!
//! For each image and each repository it goes to (its references grouped by
//! registry and repository):
//!
//! 1. Every blob (layers and config) is made present, in parallel (at most
//!    `jobs` at once): a `HEAD` first, and a blob already there is skipped;
//!    else a cross-repository mount (`POST …/blobs/uploads/?mount=D&from=R`)
//!    from a repository of the same registry known to hold it (one this run
//!    pushed it to, then the caller's hints: the repository of the registry
//!    import the image is built on, and the local cache's record of earlier
//!    pushes and pulls); `201` is mounted, `202` falls back to an upload into the
//!    session it opened; else a monolithic upload (`POST`, then one `PUT
//!    ?digest=` whose body streams from the store and is hashed on the way).
//!    Chunked (`PATCH`) uploads are not used.
//! 2. Only when every blob is confirmed present, the manifest goes up under
//!    each tag, last: a tag that already points at this very manifest (a `HEAD`
//!    says so) is left alone. So no tag ever points at a partial image, and a
//!    second push of the same image uploads nothing and puts nothing.
//!
//! Images are pushed in parallel (at most `jobs` at once, those with fewer
//! layers, bases usually, started first), and so are their blobs, with at most
//! `jobs` blob operations at once over all images. Blobs are deduplicated
//! across the images of one run: a blob is placed in one repository of a
//! registry at a time, so an image that needs a blob another image is
//! uploading waits for it, then finds it (same repository) or mounts it from
//! there (another repository of the same registry). Two images sharing a base
//! layer never upload it twice. A failing image fails alone: the others are
//! still pushed. Results come back in the order the images were given.

use super::client::{Client, Mount, RegistryError};
use crate::cas::Cas;
use crate::hash::Digest;
use crate::reference::Reference;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// How many repositories a blob's mount is tried from before it is uploaded.
const MOUNT_TRIES: usize = 3;

/// A blob of an image: its digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
}

/// An image to push.
#[derive(Debug, Clone)]
pub struct Image {
    /// For messages (`//app:app`).
    pub label: String,
    /// Where it goes: each with a tag; the first is the one reported.
    pub references: Vec<Reference>,
    pub manifest: Blob,
    /// The manifest's media type (imgc writes OCI image manifests).
    pub manifest_media_type: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// Repositories believed to hold some blobs: digest → `(registry,
    /// repository)`, most likely first. Only a hint.
    pub mount_hints: BTreeMap<Digest, Vec<(String, String)>>,
}

/// What a push did for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub label: String,
    /// The first reference (with its tag) and the manifest digest.
    pub reference: Reference,
    pub digest: Digest,
    /// Every reference the manifest is now under.
    pub references: Vec<Reference>,
    /// Blobs (layers and config) per repository pushed to, added up.
    pub blobs: usize,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_existing: usize,
    /// Bytes sent: uploaded blobs and manifests.
    pub bytes_uploaded: u64,
    /// Manifest `PUT`s (tags that already pointed at the manifest need none).
    pub manifests_put: usize,
    /// `(registry, repository)` → the blobs now known there (manifest, config,
    /// layers): for the local cache's mount table.
    pub known: Vec<(String, String, Vec<Digest>)>,
}

/// Why one image was not pushed.
#[derive(Debug, thiserror::Error)]
#[error("cannot push `{label}` to `{reference}`: {message}")]
pub struct PushError {
    pub label: String,
    pub reference: String,
    pub message: String,
    /// The registry refused the credentials (401/403).
    pub unauthorized: bool,
}

/// What is happening, for progress output.
#[derive(Debug)]
pub enum Progress<'a> {
    /// An image starts going to `reference`'s repository, with this many blobs.
    Repository {
        label: &'a str,
        reference: &'a Reference,
        blobs: usize,
    },
    /// A blob is being uploaded (not found, not mounted).
    Uploading {
        label: &'a str,
        digest: &'a Digest,
        size: u64,
    },
}

/// How one blob came to be in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    Existing,
    Mounted,
    Uploaded(u64),
}

/// Pushes `images`, at most `jobs` images and `jobs` blob operations at once
/// (see the module docs); one result per image, in the order given.
pub fn push_images(
    client: &Client,
    cas: &Cas,
    images: &[Image],
    jobs: usize,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Vec<Result<Pushed, PushError>> {
    let jobs = jobs.max(1);
    let shared = Shared::new(jobs);
    // Fewer layers first: bases tend to go up before what is built on them.
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by_key(|&i| (images[i].layers.len(), i));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Pushed, PushError>>>> =
        Mutex::new((0..images.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(images.len()) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let r = push_image(client, cas, &images[i], jobs, progress, &shared);
                    lock(&results)[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results
        .into_iter()
        .zip(images)
        .map(|(r, image)| {
            r.unwrap_or_else(|| {
                Err(PushError {
                    label: image.label.clone(),
                    reference: String::new(),
                    message: "it was not pushed".into(),
                    unauthorized: false,
                })
            })
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the images pushed at once share: where each blob is, and who is
/// placing it now; and the blob operations allowed at once.
struct Shared {
    /// `(registry, digest)` → its state this run.
    blobs: Mutex<HashMap<(String, Digest), BlobState>>,
    /// Signalled when a blob stops being busy.
    settled: Condvar,
    /// Blob operations that may start now.
    permits: Mutex<usize>,
    freed: Condvar,
}

#[derive(Default)]
struct BlobState {
    /// Repositories (of the registry) this run put it in or found it in.
    known: Vec<String>,
    /// An image is placing it in a repository of the registry now.
    busy: bool,
}

impl Shared {
    fn new(permits: usize) -> Shared {
        Shared {
            blobs: Mutex::new(HashMap::new()),
            settled: Condvar::new(),
            permits: Mutex::new(permits),
            freed: Condvar::new(),
        }
    }

    /// The right to place blob `digest` in a repository of `registry`: waits
    /// while another image is placing it, so a blob is uploaded once and then
    /// found or mounted. Holds no permit while waiting.
    fn claim(&self, registry: &str, digest: Digest) -> Claim<'_> {
        let key = (registry.to_string(), digest);
        let mut blobs = lock(&self.blobs);
        loop {
            let state = blobs.entry(key.clone()).or_default();
            if !state.busy {
                state.busy = true;
                let known = state.known.clone();
                return Claim {
                    shared: self,
                    key,
                    known,
                };
            }
            blobs = self.settled.wait(blobs).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Records that `digest` is in `repository` of `registry`.
    fn record(&self, registry: &str, digest: Digest, repository: &str) {
        let mut blobs = lock(&self.blobs);
        let known = &mut blobs
            .entry((registry.to_string(), digest))
            .or_default()
            .known;
        if !known.iter().any(|r| r == repository) {
            known.push(repository.to_string());
        }
    }

    /// One blob operation at a time per permit (a claim is taken first: a
    /// permit holder never waits for a claim).
    fn permit(&self) -> Permit<'_> {
        let mut n = lock(&self.permits);
        while *n == 0 {
            n = self.freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n -= 1;
        Permit { shared: self }
    }
}

/// A blob being placed by this image; released (and waiters woken) on drop.
struct Claim<'a> {
    shared: &'a Shared,
    key: (String, Digest),
    /// Where the blob was known to be when claimed.
    known: Vec<String>,
}

impl Claim<'_> {
    /// The blob is now in `repository`.
    fn placed(&self, repository: &str) {
        self.shared.record(&self.key.0, self.key.1, repository);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(state) = lock(&self.shared.blobs).get_mut(&self.key) {
            state.busy = false;
        }
        self.shared.settled.notify_all();
    }
}

struct Permit<'a> {
    shared: &'a Shared,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.shared.permits) += 1;
        self.shared.freed.notify_one();
    }
}

fn push_image(
    client: &Client,
    cas: &Cas,
    image: &Image,
    jobs: usize,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    shared: &Shared,
) -> Result<Pushed, PushError> {
    let first = image.references.first().ok_or_else(|| PushError {
        label: image.label.clone(),
        reference: String::new(),
        message: "it has no reference to push to".into(),
        unauthorized: false,
    })?;
    let fail = |r: &Reference, e: RegistryError| PushError {
        label: image.label.clone(),
        reference: r.to_string(),
        unauthorized: matches!(
            e,
            RegistryError::Unauthorized { .. } | RegistryError::Denied { .. }
        ),
        message: e.to_string(),
    };
    let local = |r: &Reference, what: String| PushError {
        label: image.label.clone(),
        reference: r.to_string(),
        message: what,
        unauthorized: false,
    };
    let manifest = cas.read(&image.manifest.digest).map_err(|e| {
        local(
            first,
            format!("cannot read its manifest from the store: {e}"),
        )
    })?;
    if manifest.len() as u64 != image.manifest.size {
        return Err(local(
            first,
            "its manifest in the store has another size than built".into(),
        ));
    }
    let mut blobs: Vec<Blob> = image.layers.clone();
    blobs.push(image.config);
    blobs.sort();
    blobs.dedup();

    // Repositories in the order their first reference appears.
    let mut groups: Vec<(Reference, Vec<&Reference>)> = Vec::new();
    for r in &image.references {
        match groups
            .iter_mut()
            .find(|(g, _)| g.registry == r.registry && g.repository == r.repository)
        {
            Some((_, refs)) => refs.push(r),
            None => groups.push((r.clone(), vec![r])),
        }
    }

    let mut out = Pushed {
        label: image.label.clone(),
        reference: first.clone(),
        digest: image.manifest.digest,
        references: image.references.clone(),
        blobs: 0,
        blobs_uploaded: 0,
        blobs_mounted: 0,
        blobs_existing: 0,
        bytes_uploaded: 0,
        manifests_put: 0,
        known: Vec::new(),
    };
    for (repo, refs) in &groups {
        progress(Progress::Repository {
            label: &image.label,
            reference: refs[0],
            blobs: blobs.len(),
        });
        let placed = place_blobs(client, cas, image, repo, &blobs, jobs, progress, shared)
            .map_err(|e| match e {
                Failure::Registry(e) => fail(repo, *e),
                Failure::Local(m) => local(repo, m),
            })?;
        for p in &placed {
            match p {
                Placed::Existing => out.blobs_existing += 1,
                Placed::Mounted => out.blobs_mounted += 1,
                Placed::Uploaded(n) => {
                    out.blobs_uploaded += 1;
                    out.bytes_uploaded += n;
                }
            }
        }
        out.blobs += placed.len();
        // Every blob is there: now the manifest, under each tag.
        for r in refs {
            let current = match client.resolve(r) {
                Ok(res) => Some(res.digest),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(fail(r, e)),
            };
            if current == Some(image.manifest.digest) {
                continue;
            }
            client
                .put_manifest(r, &manifest, &image.manifest_media_type)
                .map_err(|e| fail(r, e))?;
            out.manifests_put += 1;
            out.bytes_uploaded += manifest.len() as u64;
        }
        let mut known: Vec<Digest> = blobs.iter().map(|b| b.digest).collect();
        known.push(image.manifest.digest);
        shared.record(&repo.registry, image.manifest.digest, &repo.repository);
        out.known
            .push((repo.registry.clone(), repo.repository.clone(), known));
    }
    Ok(out)
}

enum Failure {
    Registry(Box<RegistryError>),
    Local(String),
}

/// Makes every blob present in `repo`'s repository, `jobs` at a time. On
/// failure, the first error (by blob order).
#[allow(clippy::too_many_arguments)]
fn place_blobs(
    client: &Client,
    cas: &Cas,
    image: &Image,
    repo: &Reference,
    blobs: &[Blob],
    jobs: usize,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    shared: &Shared,
) -> Result<Vec<Placed>, Failure> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Placed, Failure>>>> =
        Mutex::new((0..blobs.len()).map(|_| None).collect());
    let workers = jobs.min(blobs.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = blobs.get(i) else { break };
                    let r = place_blob(client, cas, image, repo, b, progress, shared);
                    let failed = r.is_err();
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                    if failed {
                        // No new blobs once one failed: the image fails anyway.
                        next.store(blobs.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut placed = Vec::with_capacity(blobs.len());
    for r in results {
        match r {
            Some(Ok(p)) => placed.push(p),
            Some(Err(e)) => return Err(e),
            // Skipped after another blob failed: that failure is reported.
            None => {}
        }
    }
    if placed.len() != blobs.len() {
        return Err(Failure::Local("not every blob was placed".into()));
    }
    Ok(placed)
}

fn place_blob(
    client: &Client,
    cas: &Cas,
    image: &Image,
    repo: &Reference,
    b: &Blob,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    shared: &Shared,
) -> Result<Placed, Failure> {
    // Another image of this run may be placing it: wait, then use where it went.
    let claim = shared.claim(&repo.registry, b.digest);
    if claim.known.contains(&repo.repository) {
        return Ok(Placed::Existing);
    }
    let _permit = shared.permit();
    let placed = place_claimed(client, cas, image, repo, b, progress, &claim.known)?;
    claim.placed(&repo.repository);
    Ok(placed)
}

/// Places blob `b` in `repo`, which this run has not put it in; `this_run`:
/// the repositories of the registry it did put it in.
fn place_claimed(
    client: &Client,
    cas: &Cas,
    image: &Image,
    repo: &Reference,
    b: &Blob,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    this_run: &[String],
) -> Result<Placed, Failure> {
    match client.blob_exists(repo, &b.digest) {
        Ok(Some(n)) if n == b.size => return Ok(Placed::Existing),
        // Present with another size: not ours to trust; upload over it.
        Ok(_) => {}
        Err(e) => return Err(Failure::Registry(Box::new(e))),
    }
    let mut from: Vec<&str> = Vec::new();
    let hinted = image.mount_hints.get(&b.digest);
    for candidate in this_run.iter().map(String::as_str).chain(
        hinted
            .into_iter()
            .flatten()
            .filter(|(reg, _)| *reg == repo.registry)
            .map(|(_, r)| r.as_str()),
    ) {
        if candidate != repo.repository && !from.contains(&candidate) {
            from.push(candidate);
        }
    }
    let mut location = None;
    for f in from.into_iter().take(MOUNT_TRIES) {
        match client.mount_blob(repo, &b.digest, f) {
            Ok(Mount::Mounted) => return Ok(Placed::Mounted),
            Ok(Mount::Upload { location: l }) => {
                location = Some(l);
                break;
            }
            // A refused mount (no pull right on `from`, say) is not a failure:
            // the upload below says what is really wrong, if anything.
            Err(_) => continue,
        }
    }
    progress(Progress::Uploading {
        label: &image.label,
        digest: &b.digest,
        size: b.size,
    });
    // The store's own open: a regular file only (never a link or a FIFO), of
    // the size the image says; its bytes are hashed again as they are sent.
    let open = || -> io::Result<Box<dyn Read + Send>> {
        let (file, len) = cas.open_blob(&b.digest)?;
        if len != b.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {} has {len} bytes in the store, not {}",
                    b.digest, b.size
                ),
            ));
        }
        Ok(Box::new(file))
    };
    if let Err(e) = open() {
        return Err(Failure::Local(format!(
            "blob {} cannot be read from the local store (build the image again): {e}",
            b.digest
        )));
    }
    client
        .upload_blob(repo, &b.digest, b.size, &open, location)
        .map_err(|e| Failure::Registry(Box::new(e)))?;
    Ok(Placed::Uploaded(b.size))
}
