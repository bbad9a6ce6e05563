//! The build coordinator: readiness, cache lookups, events; actions on rayon workers.
//!
//! One coordinating thread owns the SQLite [`Cache`] and the run's state; a rayon
//! pool of `-j N` workers does everything that touches files. What a key holds
//! and how an action runs is each kind's business ([`crate::actions`]); this
//! module only decides when. Each target of the requested closure goes through:
//!
//! ```text
//! waiting ──deps done──▶ keying ──key──▶ lookup ──hit, blobs ok──────────────▶ done (cached)
//!                        (worker)         (coordinator)
//!                                            └─miss──▶ remote lookup ──hit──▶ done (cached, remote)
//!                                                      (worker)   └─miss──▶ running ──▶ done (ran)
//!                                                                           (worker)  └─▶ upload
//! ```
//!
//! * **Keying** ([`actions::key`]) runs on a worker for layers and imports (file
//!   hashes through the memo); image keys need no IO and are computed on the
//!   coordinator from the spec and the dependencies' outputs.
//! * **Keying runs only a little ahead of running**: at most `2 × -j` targets keyed
//!   on a worker (layers, imports) are open at once (being keyed, looked up
//!   remotely, waiting to run or running); the others wait, in the order they
//!   became ready. Keying prepares what the run needs (a layer's entries, its key's
//!   components) and that is held until the run: keying every layer of a cold
//!   build first held all of them at once, so the build's peak memory grew with
//!   the workspace, and read every input file twice far apart (to key it, then
//!   to write it). Hits are done as soon as they are looked up, so a no-op build
//!   is not held back.
//! * **Lookup**: a hit is used only if every blob it names is in the CAS with its
//!   recorded size and content (`BlobChecks`); a missing or damaged blob makes it
//!   a miss, never an error. Stat data decides most blobs on the coordinator; a
//!   blob that must be re-hashed (none remembered with its stat data, as after the
//!   build that wrote it) is hashed on a worker while other lookups go on. The rebuild publishes the blob again, which replaces
//!   the damaged file (see [`crate::cas`]); the damaged file is not removed first,
//!   since another process may have just replaced it with a good copy.
//! * **Recording**: the coordinator collects what the cache must remember (actions,
//!   last builds, memo rows, blob checks, layouts, repairs) in a [`Batch`] and
//!   commits it every `COMMIT_EVERY` and at the end, in short transactions: the
//!   SQLite write lock is never held while actions run, so other builds and
//!   commands on the same cache proceed. A dry run (`imgc explain`, `imgc build
//!   --dry-run`) commits nothing.
//! * **Repairs invalidate layouts**: a blob found damaged, or replaced by a publish,
//!   is recorded as repaired, which drops every remembered layout naming it, in
//!   every checkout sharing the cache: those layouts may hard-link the damaged file,
//!   so their next build checks them in full and re-links them.
//! * **Remote cache** ([`crate::remote`]): after a local miss, a worker looks the
//!   key up remotely and fetches the blobs the local store lacks, verified; a hit
//!   is recorded locally with its origin (trusted only by builds using the same
//!   remote). After a run, and for a local hit the remote lacks, a worker uploads
//!   blobs then the entry. Uploads finish before the build does. Dry runs skip it.
//! * **Early cutoff**: keys include the dependencies' *output digests*, so a layer
//!   rebuilt to the same bytes leaves the images above it cached.
//! * **Failure**: a failed action fails its dependents (reported as skipped); with
//!   `--keep-going` independent work continues, otherwise no new work starts.
//!
//! Nothing about scheduling order reaches the output: every key and blob is a
//! function of the inputs alone, which the `-j1` vs `-jN` tests check.

pub use crate::actions::{ActionError, Outcome, Params};

use crate::action::{Components, ImageOut, Output, Reason};
use crate::actions::{self, Dep};
use crate::cache::{Batch, BlobRef, Cache, FileMemo, LastKey, LayoutRecord, StatKey, WorkspaceId};
use crate::cas::Cas;
use crate::graph::Graph;
use crate::hash::{Digest, Key};
use crate::remote::Remote;
use crate::report::{Event, Reporter, Source};
use crate::spec::model::{ImageSpec, TargetKind};
use petgraph::Direction;
use petgraph::graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Resolved settings of one build.
#[derive(Clone)]
pub struct Settings {
    pub jobs: usize,
    pub keep_going: bool,
    /// What shapes the actions' outputs.
    pub params: Params,
    /// The opened output directory (see [`crate::output`]); `None` to build
    /// without writing layouts.
    pub output_dir: Option<std::sync::Arc<crate::output::Root>>,
    /// Compute keys and reasons only: run nothing, write nothing.
    pub dry_run: bool,
    /// Test hook: called on the worker right before an action runs (after it was
    /// keyed and missed), with its label. Lets tests change inputs between keying
    /// and reading deterministically.
    pub before_run: Option<BeforeRun>,
    /// The remote cache, if any (see [`crate::remote`]). Dry runs do not use it.
    pub remote: Option<std::sync::Arc<Remote>>,
    /// Registry access for `registry` imports that run (a dry run runs none).
    pub registries: std::sync::Arc<crate::actions::import::Registries>,
}

/// See [`Settings::before_run`].
pub type BeforeRun = std::sync::Arc<dyn Fn(&crate::label::Label) + Send + Sync>;

/// Why a target cannot be keyed yet.
enum Blocked {
    Failed(String),
    WouldRun(Reason),
}

/// Result of a build.
#[derive(Debug, Default)]
pub struct Summary {
    pub outcomes: BTreeMap<NodeIndex, Outcome>,
    /// Materialized layouts: label → (path, manifest digest).
    pub layouts: BTreeMap<NodeIndex, (PathBuf, Digest)>,
    pub ran: usize,
    /// Hits, local and remote.
    pub cached: usize,
    /// Of `cached`: fetched from the remote cache.
    pub remote_hits: usize,
    /// Bytes fetched from and sent to the remote cache.
    pub downloaded: u64,
    pub uploaded: u64,
    pub failed: usize,
    pub images: usize,
    pub elapsed: Duration,
    pub warnings: Vec<String>,
    /// What the remote cache warned about (reported as it happened).
    pub remote_warnings: Vec<String>,
    /// Workspace-relative paths the keys depended on, and whether each was
    /// followed if a link (see [`crate::snapshot`]). Only a build that ran
    /// nothing writes a snapshot, so this is emptied (and no longer collected)
    /// when an action runs: a cold build does not hold every input path.
    pub touched: Vec<(PathBuf, bool)>,
    /// The key of every target served from a cache.
    pub keys: BTreeMap<NodeIndex, Key>,
    /// The CAS file of every OCI blob of every output (see [`crate::snapshot`]:
    /// layer listings are the cache's own, in no output, and verified by the full
    /// path before any use), if nothing ran or failed (else empty: no snapshot is
    /// written).
    pub blob_paths: BTreeSet<PathBuf>,
}

impl Summary {
    /// The numbers of the build's closing line.
    pub fn totals(&self) -> crate::report::Totals {
        crate::report::Totals {
            images: self.images,
            ran: self.ran,
            cached: self.cached,
            remote_hits: self.remote_hits,
            failed: self.failed,
            downloaded: self.downloaded,
            uploaded: self.uploaded,
            elapsed: self.elapsed,
            snapshot: false,
        }
    }
}

enum Msg {
    Keyed(NodeIndex, Result<actions::Keyed, ActionError>),
    Ran(NodeIndex, Result<Output, ActionError>, Duration),
    /// A local cache entry's blobs re-hashed on a worker: whether each of its
    /// [`Pending`] blobs is intact, in order.
    Checked(NodeIndex, Vec<bool>),
    /// A remote lookup after a local miss: the hit, or `None` to run.
    Fetched(NodeIndex, Option<crate::remote::Hit>),
    /// An upload to the remote cache finished: bytes sent.
    Uploaded(NodeIndex, Key, u64),
    Materialized(NodeIndex, Result<(PathBuf, Digest), ActionError>),
}

/// Runs builds. Borrowed pieces: the loaded graph, the stores, the reporter.
pub struct Engine<'a> {
    pub root: &'a Path,
    pub graph: &'a Graph,
    pub cas: &'a Cas,
    pub cache: &'a mut Cache,
    pub settings: Settings,
    pub reporter: &'a mut Reporter,
}

/// How long records may wait in the build's [`Batch`] before they are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(250);

/// How many records may wait in the build's [`Batch`] before they are committed.
const COMMIT_AT: usize = crate::cache::CHUNK;

impl Engine<'_> {
    /// Builds `requested` and everything they depend on; materializes the
    /// requested images.
    pub fn build(&mut self, requested: &[NodeIndex]) -> std::io::Result<Summary> {
        let start = Instant::now();
        let closure = self.graph.closure(requested, Direction::Outgoing);
        let requested: BTreeSet<NodeIndex> = requested.iter().copied().collect();
        let mut summary = Summary::default();
        // Taken before any file is stat-ed: the racy-file rule compares with it.
        let build_start = std::time::SystemTime::now();
        let canonical_root = self.root.canonicalize().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot resolve the workspace root: {e}"))
        })?;
        let ws = WorkspaceId::of_root(&canonical_root);
        self.reporter
            .say("loading the file-hash memo (what each input file hashed to)");
        let memo = match self.cache.load_memo(&ws) {
            Ok(m) => m,
            Err(e) => {
                summary.warnings.push(format!(
                    "file-hash memo unavailable, hashing every file: {e}"
                ));
                FileMemo::default()
            }
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.settings.jobs.max(1))
            .build()
            .map_err(|e| std::io::Error::other(format!("cannot start worker threads: {e}")))?;
        self.reporter.event(&Event::Planned {
            actions: closure.len(),
        });
        // What the cache must remember, committed now and then in short transactions.
        let mut batch = Batch::new(ws.clone(), build_start);
        let mut last_commit = Instant::now();
        let mut last_keys = self.cache.last_build_keys(&ws).unwrap_or_default();

        let mut waiting: BTreeMap<NodeIndex, usize> = closure
            .iter()
            .map(|&n| {
                let deps: BTreeSet<NodeIndex> = self
                    .graph
                    .graph
                    .neighbors_directed(n, Direction::Outgoing)
                    .collect();
                (n, deps.len())
            })
            .collect();
        let mut keys: BTreeMap<NodeIndex, (Key, Components)> = BTreeMap::new();
        let memo = &memo;
        let canonical_root = canonical_root.as_path();
        let mut checks = BlobChecks {
            memo,
            verified: Arc::default(),
            replaced: BTreeSet::new(),
        };
        let mut in_flight = 0usize;
        let mut stop = false;
        let (tx, rx) = mpsc::channel::<Msg>();
        let graph = self.graph;
        let cas = self.cas;
        let settings = self.settings.clone();
        // Dry runs only look at the local cache.
        let remote = settings.remote.as_deref().filter(|_| !settings.dry_run);
        let origin = remote.map(|r| r.describe()).unwrap_or_default();
        let ctx = actions::Ctx {
            root: self.root,
            canonical_root,
            graph,
            params: &settings.params,
            memo,
            cas,
            registries: &settings.registries,
        };
        let ctx = &ctx;
        // Keyed targets whose local entry's blobs are being re-hashed on a worker.
        let mut checking: BTreeMap<NodeIndex, (actions::Keyed, Pending)> = BTreeMap::new();
        // Keyed targets waiting for a remote lookup.
        let mut fetching: BTreeMap<NodeIndex, actions::Keyed> = BTreeMap::new();
        // Targets keyed on a worker (layers, imports) that are not done yet: being
        // keyed, looked up remotely, waiting to run or running. At most `window` at
        // once; the rest wait in `deferred`, in the order they became ready (see
        // the module essay).
        let window = 2 * settings.jobs.max(1);
        let mut open: BTreeSet<NodeIndex> = BTreeSet::new();
        let mut deferred: std::collections::VecDeque<NodeIndex> = Default::default();

        pool.in_place_scope(|scope| {
            let mut ready: Vec<NodeIndex> = waiting
                .iter()
                .filter(|(_, c)| **c == 0)
                .map(|(n, _)| *n)
                .collect();
            // Keyed targets that missed every cache: run them.
            let mut missed: Vec<(NodeIndex, actions::Keyed)> = Vec::new();
            loop {
                // Admit deferred targets as those keyed before them are done.
                open.retain(|n| !summary.outcomes.contains_key(n));
                if stop {
                    deferred.clear();
                }
                for _ in open.len()..window {
                    match deferred.pop_front() {
                        Some(n) => ready.push(n),
                        None => break,
                    }
                }
                // Start every ready target.
                while let Some(n) = ready.pop() {
                    waiting.remove(&n);
                    if stop {
                        continue;
                    }
                    if actions::keyed_with_io(graph, n) && open.len() >= window {
                        deferred.push_back(n);
                        continue;
                    }
                    match self.blocked_by(n, &summary.outcomes) {
                        Some(Blocked::Failed(why)) => {
                            self.reporter.event(&Event::Skipped {
                                label: &graph.node(n).label,
                                because: &why,
                            });
                            summary.outcomes.insert(n, Outcome::Skipped(why));
                            ready.extend(self.release(n, &mut waiting));
                            continue;
                        }
                        Some(Blocked::WouldRun(reason)) => {
                            ready.extend(self.would_run(n, reason, &mut summary, &mut waiting));
                            continue;
                        }
                        None => {}
                    }
                    in_flight += 1;
                    if actions::keyed_with_io(graph, n) {
                        open.insert(n);
                        let tx = tx.clone();
                        scope.spawn(move |_| {
                            let _ = tx.send(Msg::Keyed(n, actions::key(ctx, n, &[])));
                        });
                    } else {
                        let deps = self.dep_outputs(n, &summary.outcomes);
                        let _ = tx.send(Msg::Keyed(n, actions::key(ctx, n, &deps)));
                    }
                }
                // Run (or, dry, report) every target that missed.
                while let Some((n, k)) = missed.pop() {
                    if stop {
                        continue;
                    }
                    let label = graph.node(n).label.to_string();
                    let last = self.cache.last_build(&ws, &label).ok().flatten();
                    let last_components = last.as_ref().and_then(|(_, j)| Components::from_json(j));
                    let reason = Reason::between(
                        &k.components,
                        last_components.as_ref(),
                        "cache entry missing or damaged",
                    );
                    if settings.dry_run {
                        ready.extend(self.would_run(n, reason, &mut summary, &mut waiting));
                        continue;
                    }
                    self.reporter.event(&Event::Started {
                        label: &graph.node(n).label,
                        kind: graph.node(n).kind_name(),
                        key: &k.key,
                        reason: &reason.to_string(),
                    });
                    keys.insert(n, (k.key, k.components));
                    let deps = self.dep_outputs(n, &summary.outcomes);
                    let tx = tx.clone();
                    let before_run = settings.before_run.clone();
                    let prepared = k.prepared;
                    in_flight += 1;
                    scope.spawn(move |_| {
                        if let Some(hook) = before_run {
                            hook(&graph.node(n).label);
                        }
                        let t = Instant::now();
                        let r = actions::run(ctx, n, prepared, &deps);
                        let _ = tx.send(Msg::Ran(n, r, t.elapsed()));
                    });
                }
                if !ready.is_empty() {
                    continue;
                }
                if !deferred.is_empty()
                    && open
                        .iter()
                        .filter(|n| !summary.outcomes.contains_key(n))
                        .count()
                        < window
                {
                    continue;
                }
                if in_flight == 0 {
                    break;
                }
                let Ok(msg) = rx.recv() else { break };
                in_flight -= 1;
                checks.note_repairs(cas, &mut batch);
                if batch.len() >= COMMIT_AT || last_commit.elapsed() > COMMIT_EVERY {
                    self.commit(&mut batch, &mut summary);
                    last_commit = Instant::now();
                }
                // A keyed target whose local lookup is complete: hit or miss.
                let mut looked_up: Option<(NodeIndex, actions::Keyed, Option<Output>)> = None;
                match msg {
                    Msg::Keyed(n, Err(e)) | Msg::Ran(n, Err(e), _) => {
                        self.fail(n, e, &mut summary, &mut stop);
                        ready.extend(self.release(n, &mut waiting));
                    }
                    Msg::Keyed(n, Ok(mut k)) => {
                        if summary.ran == 0 {
                            summary.touched.append(&mut k.touched);
                        }
                        for (path, entry) in &k.learnt {
                            batch.learn(path, *entry);
                        }
                        match self.lookup(&k.key, &origin, &mut checks, &mut batch) {
                            Local::Done(local) => looked_up = Some((n, k, local)),
                            Local::Hash(pending) => {
                                let blobs: Vec<(Digest, u64)> = pending
                                    .blobs
                                    .iter()
                                    .map(|(d, size, _)| (*d, *size))
                                    .collect();
                                checking.insert(n, (k, pending));
                                let tx = tx.clone();
                                in_flight += 1;
                                scope.spawn(move |_| {
                                    let intact = blobs
                                        .iter()
                                        .map(|(d, size)| {
                                            cas.verify(d, Some(*size)).unwrap_or(false)
                                        })
                                        .collect();
                                    let _ = tx.send(Msg::Checked(n, intact));
                                });
                            }
                        }
                    }
                    Msg::Checked(n, intact) => {
                        if let Some((k, pending)) = checking.remove(&n) {
                            let local = checks.settle(pending, &intact, &mut batch);
                            looked_up = Some((n, k, local));
                        }
                    }
                    Msg::Fetched(n, hit) => {
                        let Some(k) = fetching.remove(&n) else {
                            continue;
                        };
                        let Some(hit) = hit else {
                            missed.push((n, k));
                            continue;
                        };
                        {
                            let mut verified =
                                checks.verified.lock().unwrap_or_else(|e| e.into_inner());
                            verified.extend(hit.fetched.iter().copied());
                        }
                        let blobs: Vec<BlobRef> = hit
                            .output
                            .blobs()
                            .into_iter()
                            .map(|(digest, size)| BlobRef { digest, size })
                            .collect();
                        batch.put_action_from(
                            &k.key,
                            graph.node(n).kind_name(),
                            &graph.node(n).label.to_string(),
                            &hit.output.to_json(),
                            &blobs,
                            &origin,
                        );
                        summary.downloaded += hit.downloaded;
                        let source = Source::Remote {
                            downloaded: hit.downloaded,
                        };
                        self.hit(
                            n,
                            &k,
                            hit.output,
                            source,
                            &mut batch,
                            &mut last_keys,
                            &mut summary,
                        );
                        ready.extend(self.release(n, &mut waiting));
                    }
                    Msg::Uploaded(n, key, bytes) => {
                        if bytes > 0 {
                            summary.uploaded += bytes;
                            self.reporter.event(&Event::Uploaded {
                                label: &graph.node(n).label,
                                key: &key,
                                bytes,
                            });
                        }
                    }
                    Msg::Ran(n, Ok(output), took) => {
                        let (key, components) = keys.remove(&n).expect("ran without a key");
                        let label = graph.node(n).label.to_string();
                        let blobs: Vec<BlobRef> = output
                            .blobs()
                            .into_iter()
                            .map(|(digest, size)| BlobRef { digest, size })
                            .collect();
                        batch.put_action(
                            &key,
                            graph.node(n).kind_name(),
                            &label,
                            &output.to_json(),
                            &blobs,
                        );
                        batch.set_last_build(&label, &key, &components.to_json());
                        // A registry import's blobs are in its repository: a
                        // push to that registry may mount them from there.
                        if let (Some(r), Output::Image(img)) =
                            (graph.registry_reference(n), &output)
                        {
                            let mut digests: Vec<Digest> = r.digest.into_iter().collect();
                            digests.extend([img.manifest, img.config]);
                            digests.extend(img.layers.iter().map(|l| l.digest));
                            batch.registry_blobs(&r.registry, &r.repository, &digests);
                        }
                        if let Some(r) = remote.filter(|r| r.writes()) {
                            in_flight += 1;
                            spawn_upload(scope, &tx, r, cas, graph, n, key, output.clone(), false);
                        }
                        self.reporter.event(&Event::Finished {
                            label: &graph.node(n).label,
                            kind: graph.node(n).kind_name(),
                            key: &key,
                            source: Source::Ran,
                            digest: &output.digest(),
                            duration: took,
                            size: match &output {
                                Output::File(f) => Some(f.size),
                                _ => None,
                            },
                        });
                        summary.ran += 1;
                        summary.touched = Vec::new();
                        summary.outcomes.insert(n, Outcome::Ran(output));
                        ready.extend(self.release(n, &mut waiting));
                    }
                    Msg::Materialized(..) => unreachable!("materialized before the build ended"),
                }
                if let Some((n, k, local)) = looked_up {
                    match local {
                        Some(output) => {
                            // A local hit the remote may lack (a cache that was
                            // emptied, a runner that built before the remote existed).
                            if let Some(r) = remote.filter(|r| r.writes()) {
                                in_flight += 1;
                                spawn_upload(
                                    scope,
                                    &tx,
                                    r,
                                    cas,
                                    graph,
                                    n,
                                    k.key,
                                    output.clone(),
                                    true,
                                );
                            }
                            self.hit(
                                n,
                                &k,
                                output,
                                Source::Local,
                                &mut batch,
                                &mut last_keys,
                                &mut summary,
                            );
                            ready.extend(self.release(n, &mut waiting));
                        }
                        None => match remote.filter(|r| r.reads()) {
                            Some(r) => {
                                let key = k.key;
                                fetching.insert(n, k);
                                let tx = tx.clone();
                                let verified = checks.verified.clone();
                                in_flight += 1;
                                scope.spawn(move |_| {
                                    let have = |d: &Digest, size: u64| {
                                        local_blob_ok(cas, memo, &verified, d, size)
                                    };
                                    let _ = tx.send(Msg::Fetched(n, r.lookup(&key, cas, &have)));
                                });
                            }
                            None => missed.push((n, k)),
                        },
                    }
                }
                if let Some(r) = remote {
                    for w in r.take_warnings() {
                        self.reporter.event(&Event::Warning { message: &w });
                        summary.remote_warnings.push(w);
                    }
                }
            }

            // Materialize the requested images that were built.
            if !settings.dry_run
                && let Some(out) = &settings.output_dir
            {
                let out: &crate::output::Root = out;
                self.reporter.say("checking the image layouts");
                let records = self.cache.layout_records(&ws).unwrap_or_default();
                checks.note_repairs(cas, &mut batch);
                let mut written = BTreeMap::new();
                let mut checked: Vec<(NodeIndex, LayoutRecord, Vec<Digest>)> = Vec::new();
                for &n in &requested {
                    let Some(Output::Image(img)) =
                        summary.outcomes.get(&n).and_then(Outcome::output).cloned()
                    else {
                        continue;
                    };
                    let TargetKind::Image(spec) = &graph.node(n).target.kind else {
                        continue;
                    };
                    let node = graph.node(n);
                    let rel = crate::output::layout_rel(&node.label);
                    let dest = out.path().join(&rel);
                    let refs = ref_names(spec);
                    let record = LayoutRecord {
                        manifest: img.manifest,
                        refs: refs.join("\n"),
                        stamp: String::new(),
                    };
                    let blobs: Vec<Digest> = Output::Image(img.clone())
                        .blobs()
                        .into_iter()
                        .map(|(d, _)| d)
                        .collect();
                    // A layout unchanged since a build checked it in full, none of
                    // whose blobs was repaired since (by this build: `replaced`; by
                    // another: the record would be gone), is trusted without a look
                    // at every blob.
                    let path = dest.to_string_lossy().into_owned();
                    let remembered = records.get(&path).filter(|r| {
                        r.record.manifest == record.manifest && r.record.refs == record.refs
                    });
                    let trusted = remembered.is_some_and(|r| {
                        out.layout_stamp(&rel)
                            .is_some_and(|(stamp, _)| r.record.stamp == stamp)
                    }) && !blobs.iter().any(|d| checks.replaced.contains(d));
                    if trusted {
                        if remembered.is_some_and(|r| r.stale) {
                            batch.touch_layout(&path);
                        }
                        written.insert(node.label.clone(), (n, Ok((dest, img.manifest))));
                        continue;
                    }
                    checked.push((n, record, blobs));
                    let tx = tx.clone();
                    in_flight += 1;
                    scope.spawn(move |_| {
                        let r = materialize(cas, out, &rel, &img, &refs);
                        let _ = tx.send(Msg::Materialized(n, r));
                    });
                }
                let mut done = 0;
                while in_flight > 0 {
                    let Ok(msg) = rx.recv() else { break };
                    in_flight -= 1;
                    if let Msg::Materialized(n, r) = msg {
                        written.insert(graph.node(n).label.clone(), (n, r));
                        done += 1;
                        self.reporter
                            .say(&format!("writing image layouts: {done}/{}", checked.len()));
                    }
                }
                for (n, mut record, blobs) in checked {
                    if let Some((_, Ok((dest, _)))) = written.get(&graph.node(n).label)
                        && let Some((stamp, newest_ns)) =
                            out.layout_stamp(&crate::output::layout_rel(&graph.node(n).label))
                    {
                        record.stamp = stamp;
                        batch.put_layout(&dest.to_string_lossy(), &record, &blobs, newest_ns);
                    }
                }
                // Reported in label order, whatever order the workers finished in.
                for (_, (n, r)) in written {
                    match r {
                        Ok((path, digest)) => {
                            self.reporter.event(&Event::Materialized {
                                label: &graph.node(n).label,
                                path: &path,
                                digest: &digest,
                            });
                            summary.layouts.insert(n, (path, digest));
                        }
                        Err(e) => self.fail(n, e, &mut summary, &mut stop),
                    }
                }
            }
        });

        checks.note_repairs(self.cas, &mut batch);
        batch.touch_memo(memo);
        self.reporter.say("saving what the build did in the cache");
        self.commit(&mut batch, &mut summary);
        summary.warnings.extend(self.cache.take_warnings());
        summary.images = requested
            .iter()
            .filter(|n| {
                graph.node(**n).is_image()
                    && summary.outcomes.get(n).and_then(Outcome::output).is_some()
            })
            .count();
        if summary.ran == 0 && summary.failed == 0 {
            summary.blob_paths = summary
                .outcomes
                .values()
                .filter_map(Outcome::output)
                .flat_map(|o| o.oci_blobs())
                .map(|(d, _)| self.cas.blob_path(&d))
                .collect();
        }
        summary.elapsed = start.elapsed();
        for w in &summary.warnings {
            self.reporter.event(&Event::Warning { message: w });
        }
        Ok(summary)
    }

    /// Dependents of `n` whose last dependency this was.
    fn release(&self, n: NodeIndex, waiting: &mut BTreeMap<NodeIndex, usize>) -> Vec<NodeIndex> {
        let mut ready = Vec::new();
        let dependents: BTreeSet<NodeIndex> = self
            .graph
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .collect();
        for d in dependents {
            if let Some(c) = waiting.get_mut(&d) {
                *c -= 1;
                if *c == 0 {
                    ready.push(d);
                }
            }
        }
        ready
    }

    /// (Dry runs.) Records that `n` would run for `reason`; returns the
    /// dependents this releases.
    fn would_run(
        &mut self,
        n: NodeIndex,
        reason: Reason,
        summary: &mut Summary,
        waiting: &mut BTreeMap<NodeIndex, usize>,
    ) -> Vec<NodeIndex> {
        let node = self.graph.node(n);
        self.reporter.event(&Event::WouldRun {
            label: &node.label,
            kind: node.kind_name(),
            step: crate::plan::Step::for_kind(&node.target.kind),
            reason: &reason.to_string(),
        });
        summary.outcomes.insert(n, Outcome::WouldRun(reason));
        self.release(n, waiting)
    }

    /// Why `n` cannot be keyed: a dependency failed (or was skipped), or, in a
    /// dry run, a dependency would rebuild (its output, and so `n`'s key, is not
    /// known yet).
    fn blocked_by(&self, n: NodeIndex, outcomes: &BTreeMap<NodeIndex, Outcome>) -> Option<Blocked> {
        for (_, d) in self.graph.deps(n) {
            match outcomes.get(&d) {
                Some(Outcome::Failed(_)) | Some(Outcome::Skipped(_)) => {
                    return Some(Blocked::Failed(format!(
                        "dependency `{}` failed",
                        self.graph.node(d).label
                    )));
                }
                Some(Outcome::WouldRun(reason)) => {
                    let label = self.graph.node(d).label.to_string();
                    return Some(Blocked::WouldRun(Reason::dependency(&label, reason)));
                }
                _ => {}
            }
        }
        None
    }

    fn fail(&mut self, n: NodeIndex, e: ActionError, summary: &mut Summary, stop: &mut bool) {
        self.reporter.event(&Event::Failed {
            label: &self.graph.node(n).label,
            error: &e,
        });
        summary.failed += 1;
        summary.outcomes.insert(n, Outcome::Failed(e));
        if !self.settings.keep_going {
            *stop = true;
        }
    }

    /// The local cache entry of `key`, if any, checked: every blob it names must
    /// be present and intact. Blobs decided by stat data alone (verified earlier
    /// in this build, or since with the same stat data) are checked here; blobs
    /// that must be re-hashed are left [`Pending`] for a worker, so that the
    /// re-hashing of many hits' blobs (the first build after one that wrote
    /// them) runs on every core and not on this thread. `origin` names the
    /// remote cache in use (`""` for none): entries fetched from it are
    /// trusted, those fetched from another remote are not.
    fn lookup(
        &mut self,
        key: &Key,
        origin: &str,
        checks: &mut BlobChecks<'_>,
        batch: &mut Batch,
    ) -> Local {
        let Some((outputs, stale)) = self.cache.get_outputs_from(key, origin).ok().flatten() else {
            return Local::Done(None);
        };
        let Some(output) = Output::from_json(&outputs) else {
            return Local::Done(None);
        };
        let mut pending = Pending {
            key: *key,
            stale,
            intact: true,
            blobs: Vec::new(),
            output,
        };
        for (digest, size) in pending.output.blobs() {
            // Every blob, not only up to the first bad one: each bad one is a repair.
            match checks.by_stat(self.cas, &digest, size, batch) {
                ByStat::Intact => {}
                ByStat::Bad => pending.intact = false,
                ByStat::Hash(stat) => pending.blobs.push((digest, size, stat)),
            }
        }
        if pending.blobs.is_empty() {
            Local::Done(checks.settle(pending, &[], batch))
        } else {
            Local::Hash(pending)
        }
    }

    /// Records a hit (local or remote) of keyed target `n`: its last build, its
    /// event, its outcome.
    #[allow(clippy::too_many_arguments)]
    fn hit(
        &mut self,
        n: NodeIndex,
        k: &actions::Keyed,
        output: Output,
        source: Source,
        batch: &mut Batch,
        last_keys: &mut BTreeMap<String, LastKey>,
        summary: &mut Summary,
    ) {
        let label = self.graph.node(n).label.to_string();
        match last_keys.get(&label) {
            Some(last) if last.key == k.key => {
                if last.stale {
                    batch.touch_last_build(&label);
                }
            }
            _ => batch.set_last_build(&label, &k.key, &k.components.to_json()),
        }
        last_keys.insert(
            label,
            LastKey {
                key: k.key,
                stale: false,
            },
        );
        self.reporter.event(&Event::Finished {
            label: &self.graph.node(n).label,
            kind: self.graph.node(n).kind_name(),
            key: &k.key,
            source,
            digest: &output.digest(),
            duration: Duration::ZERO,
            size: None,
        });
        summary.cached += 1;
        summary.keys.insert(n, k.key);
        if matches!(source, Source::Remote { .. }) {
            summary.remote_hits += 1;
        }
        summary.outcomes.insert(n, Outcome::Cached(output));
    }

    /// Commits what `batch` holds (never in a dry run, which writes nothing); a
    /// failure is a warning (once), since the cache is only an index.
    fn commit(&mut self, batch: &mut Batch, summary: &mut Summary) {
        if self.settings.dry_run {
            return;
        }
        if let Err(e) = self.cache.commit(batch) {
            let w = format!("cannot record this build in the action cache: {e}");
            if !summary.warnings.contains(&w) {
                summary.warnings.push(w);
            }
        }
    }

    fn dep_outputs(&self, n: NodeIndex, outcomes: &BTreeMap<NodeIndex, Outcome>) -> Vec<Dep> {
        self.graph
            .deps(n)
            .into_iter()
            .filter_map(|(k, d)| {
                let o = outcomes.get(&d)?.output()?.clone();
                Some((k, self.graph.node(d).label.to_string(), o))
            })
            .collect()
    }
}

/// Checks that blobs of cache hits are in the CAS, of the recorded size, with
/// the content their name says.
///
/// Re-hashing every blob of every hit would make a no-op build read every
/// layer, so verification is remembered like file hashes are: once a blob has
/// been verified, its stat data (taken before reading it) goes into the index's
/// blob checks, and later hits only compare the stat data. A blob changed in
/// place (even to the same size) changes its mtime and ctime, and is verified
/// again, found bad, and not used.
struct BlobChecks<'m> {
    memo: &'m FileMemo,
    /// Blobs already found intact in this build (shared base layers are checked
    /// once), by the coordinator or by remote lookups on workers.
    verified: Arc<Mutex<BTreeSet<Digest>>>,
    /// Blobs found missing or damaged, or replaced by a publish: layouts holding
    /// them must be checked in full, since they may still link the damaged file.
    replaced: BTreeSet<Digest>,
}

/// A local lookup: decided, or waiting for blobs to be re-hashed on a worker.
enum Local {
    /// The checked entry's output, or `None` for a miss.
    Done(Option<Output>),
    Hash(Pending),
}

/// A local cache entry found, whose blobs are not all checked yet.
struct Pending {
    key: Key,
    output: Output,
    /// Whether the entry was not marked used for a day.
    stale: bool,
    /// Whether every blob checked so far (by stat data) is intact.
    intact: bool,
    /// Blobs to re-hash: digest, size, stat data taken before reading.
    blobs: Vec<(Digest, u64, StatKey)>,
}

/// What stat data alone says of a blob (see [`BlobChecks::by_stat`]).
enum ByStat {
    Intact,
    Bad,
    Hash(StatKey),
}

impl BlobChecks<'_> {
    /// What stat data alone says of blob `d`: intact (verified earlier in this
    /// build, or before with exactly this stat data), bad (missing, of another
    /// size, not a regular file), or to be re-hashed, with the stat data taken
    /// before reading it.
    fn by_stat(&mut self, cas: &Cas, d: &Digest, size: u64, batch: &mut Batch) -> ByStat {
        if lock(&self.verified).contains(d) {
            return ByStat::Intact;
        }
        match std::fs::symlink_metadata(cas.blob_path(d)) {
            Ok(meta) if meta.is_file() && meta.len() == size => {
                let stat = StatKey::from_metadata(&meta);
                if self.memo.blob_verified(d, &stat) {
                    lock(&self.verified).insert(*d);
                    ByStat::Intact
                } else {
                    ByStat::Hash(stat)
                }
            }
            _ => {
                self.bad(d, batch);
                ByStat::Bad
            }
        }
    }

    /// Completes the check of a [`Pending`] entry with whether each of its blobs
    /// hashed to its name (in order): remembers the intact ones with the stat
    /// data taken before they were read, notes the bad ones as repairs. The
    /// entry's output if every blob is intact; otherwise it is forgotten.
    fn settle(&mut self, p: Pending, hashed: &[bool], batch: &mut Batch) -> Option<Output> {
        let mut intact = p.intact && hashed.len() == p.blobs.len();
        for ((d, _, stat), ok) in p.blobs.iter().zip(hashed) {
            if *ok {
                batch.blob_verified(d, *stat);
                lock(&self.verified).insert(*d);
            } else {
                self.bad(d, batch);
                intact = false;
            }
        }
        if !intact {
            batch.forget_action(&p.key);
            return None;
        }
        if p.stale {
            batch.mark_used(&p.key);
        }
        Some(p.output)
    }

    fn bad(&mut self, d: &Digest, batch: &mut Batch) {
        if self.replaced.insert(*d) {
            batch.blob_repaired(d);
        }
    }

    /// Takes the blobs the store replaced (on any worker) since the last call:
    /// repairs too.
    fn note_repairs(&mut self, cas: &Cas, batch: &mut Batch) {
        for d in cas.take_repaired() {
            lock(&self.verified).remove(&d);
            if self.replaced.insert(d) {
                batch.blob_repaired(&d);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// (On a worker, for a remote lookup.) Whether the local store has blob `d`
/// intact: verified in this build, verified earlier with the same stat data, or
/// re-hashed now. A missing or damaged blob is fetched from the remote, and
/// publishing it there replaces the damaged file.
fn local_blob_ok(
    cas: &Cas,
    memo: &FileMemo,
    verified: &Mutex<BTreeSet<Digest>>,
    d: &Digest,
    size: u64,
) -> bool {
    if lock(verified).contains(d) {
        return true;
    }
    let ok = match std::fs::symlink_metadata(cas.blob_path(d)) {
        Ok(meta) if meta.is_file() && meta.len() == size => {
            memo.blob_verified(d, &StatKey::from_metadata(&meta))
                || cas.verify(d, Some(size)).unwrap_or(false)
        }
        _ => false,
    };
    if ok {
        lock(verified).insert(*d);
    }
    ok
}

/// Starts uploading `output` (the outputs of target `n`, key `key`) to the
/// remote cache on a worker; reports [`Msg::Uploaded`].
#[allow(clippy::too_many_arguments)]
fn spawn_upload<'s>(
    scope: &rayon::Scope<'s>,
    tx: &mpsc::Sender<Msg>,
    remote: &'s Remote,
    cas: &'s Cas,
    graph: &'s Graph,
    n: NodeIndex,
    key: Key,
    output: Output,
    only_if_missing: bool,
) {
    let tx = tx.clone();
    scope.spawn(move |_| {
        let node = graph.node(n);
        let sent = remote.upload(
            &key,
            node.kind_name(),
            &node.label.to_string(),
            &output,
            cas,
            only_if_missing,
        );
        let _ = tx.send(Msg::Uploaded(n, key, sent));
    });
}

/// Names for `index.json` (`org.opencontainers.image.ref.name`): the tag part of
/// each `tag`, or `latest`.
pub fn ref_names(spec: &ImageSpec) -> Vec<String> {
    let mut names: Vec<String> = spec
        .tags
        .iter()
        .map(|t| {
            let after_slash = t.value.rsplit('/').next().unwrap_or(&t.value);
            match after_slash.split_once(':') {
                Some((_, tag)) if !tag.is_empty() => tag.to_string(),
                _ => "latest".to_string(),
            }
        })
        .collect();
    if names.is_empty() {
        names.push("latest".to_string());
    }
    names.sort();
    names.dedup();
    names
}

/// Writes (or leaves in place, if already current) an image's OCI layout at
/// `rel` in the output directory `out` (which refuses to replace or write through
/// anything imgc did not make).
fn materialize(
    cas: &Cas,
    out: &crate::output::Root,
    rel: &str,
    img: &ImageOut,
    refs: &[String],
) -> Result<(PathBuf, Digest), ActionError> {
    let mut sized = vec![(img.config, img.config_size)];
    sized.extend(img.layers.iter().map(|l| (l.digest, l.size)));
    let blobs: Vec<Digest> = sized.iter().map(|(d, _)| *d).collect();
    if !out.layout_is_current(rel, cas, (img.manifest, img.manifest_size), &sized, refs) {
        out.write_layout(rel, cas, (img.manifest, img.manifest_size), &blobs, refs)
            .map_err(|e| match e.io_error() {
                Some(io) => {
                    ActionError::failed(format_args!("cannot write `{}`", out.show(rel)), io)
                }
                None => ActionError::Message(e.to_string()),
            })?;
    }
    Ok((out.path().join(rel), img.manifest))
}
