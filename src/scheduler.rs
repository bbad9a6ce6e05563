//! The build coordinator: keys, cache lookups, and actions on rayon workers.
//!
//! One coordinating thread owns the SQLite [`Cache`] and the run's state; a rayon
//! pool of `-j N` workers does everything that touches files. Each target of the
//! requested closure goes through:
//!
//! ```text
//! waiting ──deps done──▶ keying ──key──▶ lookup ──hit, blobs ok──▶ done (cached)
//!                        (worker)         (coordinator)   └─miss──▶ running ──▶ done (ran)
//!                                                                   (worker)
//! ```
//!
//! * **Keying** expands a layer's entries and hashes its files through the memo
//!   (stat data only decides whether to re-read a file). Image keys need no IO:
//!   they are computed on the coordinator from the spec and the dependencies'
//!   outputs.
//! * **Lookup**: a hit is used only if every blob it names is in the CAS with its
//!   recorded size; a missing or damaged blob makes it a miss (the bad blob is
//!   removed so the rebuild can write it anew), never an error.
//! * **Early cutoff**: keys include the dependencies' *output digests*, so a layer
//!   rebuilt to the same bytes leaves the images above it cached.
//! * **Failure**: a failed action fails its dependents (reported as skipped); with
//!   `--keep-going` independent work continues, otherwise no new work starts.
//!
//! Nothing about scheduling order reaches the output: every key and blob is a
//! function of the inputs alone, which the `-j1` vs `-jN` tests check.

use crate::action::{Components, ImageOut, Output, Reason, params_hash};
use crate::cache::{BlobRef, Cache, FileMemo, LayoutRecord, MemoEntry, StatKey};
use crate::cas::Cas;
use crate::diag::{Code, Diag};
use crate::fileset::{self, Planned};
use crate::graph::{EdgeKind, Graph};
use crate::hash::{Digest, Key};
use crate::layer::{self, EntryData, LayerFormat};
use crate::oci::{self, LayerDesc};
use crate::report::{Event, Reporter};
use crate::spec::model::{ImageSpec, ImportSource, Platform, TargetKind};
use petgraph::Direction;
use petgraph::graph::NodeIndex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Resolved settings of one build.
#[derive(Debug, Clone)]
pub struct Settings {
    pub jobs: usize,
    pub keep_going: bool,
    pub source_date_epoch: u64,
    pub format: LayerFormat,
    pub platform: Platform,
    /// Absolute output directory; `None` to build without writing layouts.
    pub output_dir: Option<PathBuf>,
    /// Compute keys and reasons only: run nothing, write nothing.
    pub dry_run: bool,
}

/// Why an action failed.
#[derive(Debug, Clone)]
pub enum ActionError {
    /// A problem with a location in a spec.
    Spec(Diag),
    /// Anything else (IO, corrupt import), already phrased for the user.
    Message(String),
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionError::Spec(d) => f.write_str(&d.message),
            ActionError::Message(m) => f.write_str(m),
        }
    }
}

/// The state of one target at the end of a run.
#[derive(Debug, Clone)]
pub enum Outcome {
    Cached(Output),
    Ran(Output),
    /// `dry_run` only: it would run, for this reason.
    WouldRun(Reason),
    Failed(ActionError),
    /// A dependency failed (or would run, in a dry run).
    Skipped(String),
}

impl Outcome {
    pub fn output(&self) -> Option<&Output> {
        match self {
            Outcome::Cached(o) | Outcome::Ran(o) => Some(o),
            _ => None,
        }
    }
}

/// Result of a build.
#[derive(Debug, Default)]
pub struct Summary {
    pub outcomes: BTreeMap<NodeIndex, Outcome>,
    /// Materialized layouts: label → (path, manifest digest).
    pub layouts: BTreeMap<NodeIndex, (PathBuf, Digest)>,
    pub ran: usize,
    pub cached: usize,
    pub failed: usize,
    pub images: usize,
    pub elapsed: Duration,
    pub warnings: Vec<String>,
}

/// What a key computation prepares for the run that may follow.
enum Prepared {
    Layer(Vec<Planned>),
    Import(PathBuf, bool),
    Image,
}

struct Keyed {
    components: Components,
    key: Key,
    prepared: Prepared,
    learnt: Vec<(String, MemoEntry)>,
}

enum Msg {
    Keyed(NodeIndex, Result<Keyed, ActionError>),
    Ran(NodeIndex, Result<Output, ActionError>, Duration),
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

/// How long records may wait in the build's transaction before they are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(250);

impl Engine<'_> {
    /// Builds `requested` and everything they depend on; materializes the
    /// requested images.
    pub fn build(&mut self, requested: &[NodeIndex]) -> std::io::Result<Summary> {
        let start = Instant::now();
        let closure = self.graph.closure(requested, Direction::Outgoing);
        let requested: BTreeSet<NodeIndex> = requested.iter().copied().collect();
        let mut summary = Summary::default();
        let memo = match self.cache.load_memo() {
            Ok(m) => m,
            Err(e) => {
                summary.warnings.push(format!(
                    "file-hash memo unavailable, hashing every file: {e}"
                ));
                FileMemo::default()
            }
        };
        let build_start = std::time::SystemTime::now();
        let canonical_root = self.root.canonicalize().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot resolve the workspace root: {e}"))
        })?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.settings.jobs.max(1))
            .build()
            .map_err(|e| std::io::Error::other(format!("cannot start worker threads: {e}")))?;
        self.reporter.event(&Event::Planned {
            actions: closure.len(),
        });
        // One transaction for the build's lookups and records, committed now and then.
        if let Err(e) = self.cache.begin_batch() {
            summary
                .warnings
                .push(format!("action cache busy, recording without a batch: {e}"));
        }
        let mut last_commit = Instant::now();
        let mut last_keys = self.cache.last_build_keys().unwrap_or_default();
        let mut stale_hits: Vec<Key> = Vec::new();

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
        let mut learnt: Vec<(String, MemoEntry)> = Vec::new();
        let mut checks = BlobChecks {
            memo,
            learnt: Vec::new(),
            verified: BTreeSet::new(),
            replaced: BTreeSet::new(),
        };
        let mut in_flight = 0usize;
        let mut stop = false;
        let (tx, rx) = mpsc::channel::<Msg>();
        let graph = self.graph;
        let root = self.root;
        let cas = self.cas;
        let settings = self.settings.clone();

        pool.in_place_scope(|scope| {
            let mut ready: Vec<NodeIndex> = waiting
                .iter()
                .filter(|(_, c)| **c == 0)
                .map(|(n, _)| *n)
                .collect();
            loop {
                // Start every ready target.
                while let Some(n) = ready.pop() {
                    waiting.remove(&n);
                    if stop {
                        continue;
                    }
                    if let Some(why) = self.failed_dependency(n, &summary.outcomes) {
                        summary.outcomes.insert(n, Outcome::Skipped(why.clone()));
                        self.reporter.event(&Event::Skipped {
                            label: &graph.node(n).label,
                            because: &why,
                        });
                        ready.extend(self.release(n, &mut waiting));
                        continue;
                    }
                    if matches!(graph.node(n).target.kind, TargetKind::Image(_)) {
                        let keyed = self.image_key(n, &summary.outcomes);
                        let _ = tx.send(Msg::Keyed(n, keyed));
                        in_flight += 1;
                    } else {
                        let tx = tx.clone();
                        let settings = &settings;
                        in_flight += 1;
                        scope.spawn(move |_| {
                            let r = key_with_io(root, canonical_root, graph, n, settings, memo);
                            let _ = tx.send(Msg::Keyed(n, r));
                        });
                    }
                }
                if in_flight == 0 {
                    break;
                }
                let Ok(msg) = rx.recv() else { break };
                in_flight -= 1;
                if last_commit.elapsed() > COMMIT_EVERY {
                    let _ = self.cache.checkpoint_batch();
                    last_commit = Instant::now();
                }
                match msg {
                    Msg::Keyed(n, Err(e)) | Msg::Ran(n, Err(e), _) => {
                        self.fail(n, e, &mut summary, &mut stop);
                        ready.extend(self.release(n, &mut waiting));
                    }
                    Msg::Keyed(n, Ok(k)) => {
                        learnt.extend(k.learnt);
                        let label = graph.node(n).label.to_string();
                        match self.lookup(&k.key, &mut checks, &mut stale_hits) {
                            Some(output) => {
                                if last_keys.get(&label) != Some(&k.key) {
                                    let _ = self.cache.set_last_build(
                                        &label,
                                        &k.key,
                                        &k.components.to_json(),
                                    );
                                    last_keys.insert(label, k.key);
                                }
                                self.reporter.event(&Event::Finished {
                                    label: &graph.node(n).label,
                                    kind: graph.node(n).kind_name(),
                                    key: &k.key,
                                    cached: true,
                                    digest: &output.digest(),
                                    duration: Duration::ZERO,
                                });
                                summary.cached += 1;
                                summary.outcomes.insert(n, Outcome::Cached(output));
                                ready.extend(self.release(n, &mut waiting));
                            }
                            None => {
                                let last = self.cache.last_build(&label).ok().flatten();
                                let last_components =
                                    last.as_ref().and_then(|(_, j)| Components::from_json(j));
                                let reason = Reason::between(
                                    &k.components,
                                    last_components.as_ref(),
                                    "cache entry missing or damaged",
                                );
                                if settings.dry_run {
                                    self.reporter.event(&Event::WouldRun {
                                        label: &graph.node(n).label,
                                        reason: &reason.to_string(),
                                    });
                                    summary.outcomes.insert(n, Outcome::WouldRun(reason));
                                    ready.extend(self.release(n, &mut waiting));
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
                                let settings = &settings;
                                let prepared = k.prepared;
                                in_flight += 1;
                                scope.spawn(move |_| {
                                    let t = Instant::now();
                                    let r = run_action(graph, n, prepared, &deps, settings, cas);
                                    let _ = tx.send(Msg::Ran(n, r, t.elapsed()));
                                });
                            }
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
                        if let Err(e) = self.cache.put_action(
                            &key,
                            graph.node(n).kind_name(),
                            &label,
                            &output.to_json(),
                            &blobs,
                        ) {
                            summary
                                .warnings
                                .push(format!("cannot record `{label}` in the action cache: {e}"));
                        }
                        let _ = self
                            .cache
                            .set_last_build(&label, &key, &components.to_json());
                        self.reporter.event(&Event::Finished {
                            label: &graph.node(n).label,
                            kind: graph.node(n).kind_name(),
                            key: &key,
                            cached: false,
                            digest: &output.digest(),
                            duration: took,
                        });
                        summary.ran += 1;
                        summary.outcomes.insert(n, Outcome::Ran(output));
                        ready.extend(self.release(n, &mut waiting));
                    }
                    Msg::Materialized(..) => unreachable!("materialized before the build ended"),
                }
            }

            // Materialize the requested images that were built.
            if !settings.dry_run
                && let Some(out_dir) = &settings.output_dir
            {
                let records = self
                    .cache
                    .layout_records(&out_dir.to_string_lossy())
                    .unwrap_or_default();
                let mut written = BTreeMap::new();
                let mut checked: Vec<(NodeIndex, LayoutRecord)> = Vec::new();
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
                    let dest = out_dir.join(node.label.package()).join(node.label.name());
                    let refs = ref_names(spec);
                    let record = LayoutRecord {
                        manifest: img.manifest,
                        refs: refs.join("\n"),
                        stamp: String::new(),
                    };
                    // A layout unchanged since a build checked it in full, none of
                    // whose blobs this build replaced, is trusted without a look at
                    // every blob.
                    let trusted = oci::layout_stamp(&dest).is_some_and(|(stamp, _)| {
                        records.get(&*dest.to_string_lossy()).is_some_and(|r| {
                            r.manifest == record.manifest
                                && r.refs == record.refs
                                && r.stamp == stamp
                        })
                    }) && !Output::Image(img.clone())
                        .blobs()
                        .iter()
                        .any(|(d, _)| checks.replaced.contains(d));
                    if trusted {
                        written.insert(node.label.clone(), (n, Ok((dest, img.manifest))));
                        continue;
                    }
                    checked.push((n, record));
                    let tx = tx.clone();
                    in_flight += 1;
                    scope.spawn(move |_| {
                        let r = materialize(cas, &dest, &img, &refs);
                        let _ = tx.send(Msg::Materialized(n, r));
                    });
                }
                while in_flight > 0 {
                    let Ok(msg) = rx.recv() else { break };
                    in_flight -= 1;
                    if let Msg::Materialized(n, r) = msg {
                        written.insert(graph.node(n).label.clone(), (n, r));
                    }
                }
                for (n, mut record) in checked {
                    if let Some((_, Ok((dest, _)))) = written.get(&graph.node(n).label)
                        && let Some((stamp, newest_ns)) = oci::layout_stamp(dest)
                    {
                        record.stamp = stamp;
                        let _ = self.cache.put_layout(
                            &dest.to_string_lossy(),
                            &record,
                            newest_ns,
                            build_start,
                        );
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

        learnt.append(&mut checks.learnt);
        if !stale_hits.is_empty() && !self.settings.dry_run {
            let _ = self.cache.mark_used(&stale_hits);
        }
        if let Err(e) = self.cache.end_batch() {
            summary
                .warnings
                .push(format!("cannot commit the action cache: {e}"));
        }
        if !learnt.is_empty()
            && !self.settings.dry_run
            && let Err(e) = self.cache.store_memo(build_start, &learnt)
        {
            summary
                .warnings
                .push(format!("cannot update the file-hash memo: {e}"));
        }
        summary.images = requested
            .iter()
            .filter(|n| {
                graph.node(**n).is_image()
                    && summary.outcomes.get(n).and_then(Outcome::output).is_some()
            })
            .count();
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

    fn failed_dependency(
        &self,
        n: NodeIndex,
        outcomes: &BTreeMap<NodeIndex, Outcome>,
    ) -> Option<String> {
        for (_, d) in self.graph.deps(n) {
            match outcomes.get(&d) {
                Some(Outcome::Failed(_)) | Some(Outcome::Skipped(_)) => {
                    return Some(format!("dependency `{}` failed", self.graph.node(d).label));
                }
                Some(Outcome::WouldRun(_)) => {
                    return Some(format!(
                        "dependency `{}` would rebuild",
                        self.graph.node(d).label
                    ));
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

    /// A cache hit whose every blob is present and intact. Hits not marked used
    /// for a day go into `stale`, for one [`Cache::mark_used`] at the end.
    fn lookup(
        &mut self,
        key: &Key,
        checks: &mut BlobChecks<'_>,
        stale: &mut Vec<Key>,
    ) -> Option<Output> {
        let (outputs, is_stale) = self.cache.get_outputs(key).ok().flatten()?;
        let output = Output::from_json(&outputs)?;
        let mut ok = true;
        for (digest, size) in output.blobs() {
            if !checks.intact(self.cas, &digest, size) {
                let _ = self.cas.remove(&digest);
                ok = false;
            }
        }
        if !ok {
            let _ = self.cache.forget_action(key);
            return None;
        }
        if is_stale {
            stale.push(*key);
        }
        Some(output)
    }

    fn dep_outputs(
        &self,
        n: NodeIndex,
        outcomes: &BTreeMap<NodeIndex, Outcome>,
    ) -> Vec<(EdgeKind, String, Output)> {
        self.graph
            .deps(n)
            .into_iter()
            .filter_map(|(k, d)| {
                let o = outcomes.get(&d)?.output()?.clone();
                Some((k, self.graph.node(d).label.to_string(), o))
            })
            .collect()
    }

    /// An image's key: from its spec and its dependencies' outputs, no IO.
    fn image_key(
        &self,
        n: NodeIndex,
        outcomes: &BTreeMap<NodeIndex, Outcome>,
    ) -> Result<Keyed, ActionError> {
        let node = self.graph.node(n);
        let TargetKind::Image(spec) = &node.target.kind else {
            return Err(ActionError::Message(format!(
                "`{}` is not an image",
                node.label
            )));
        };
        let mut c = Components::new("image");
        c.set("platform", self.settings.platform.to_string());
        c.set("epoch", self.settings.source_date_epoch.to_string());
        c.set("config", config_params(spec));
        c.set("base", "scratch");
        let mut layer_n = 0usize;
        for (edge, label, output) in self.dep_outputs(n, outcomes) {
            match (edge, output) {
                (EdgeKind::Base, out) => {
                    c.set("base", format!("{label} {}", out.digest()));
                    c.set("base.name", base_name(self.graph, n).unwrap_or_default());
                }
                (EdgeKind::Layer, out) => {
                    c.set(format!("layer.{layer_n}:{label}"), out.digest().to_string());
                    layer_n += 1;
                }
                (EdgeKind::Copy, _) => {}
            }
        }
        Ok(Keyed {
            key: c.key(),
            components: c,
            prepared: Prepared::Image,
            learnt: Vec::new(),
        })
    }
}

/// Checks that blobs of cache hits are in the CAS, of the recorded size, with
/// the content their name says.
///
/// Re-hashing every blob of every hit would make a no-op build read every
/// layer, so verification is remembered like file hashes are: once a blob has
/// been verified, its stat data goes into the memo (as `cas:<hex>`, with the
/// blake3 of its content), and later hits only compare the stat data. A blob
/// changed in place (even to the same size) changes its mtime and ctime, and is
/// verified again, found bad, and not used.
struct BlobChecks<'m> {
    memo: &'m FileMemo,
    learnt: Vec<(String, MemoEntry)>,
    /// Blobs already found intact in this build (shared base layers are checked once).
    verified: BTreeSet<Digest>,
    /// Blobs found missing or damaged (and removed): layouts holding them must be
    /// checked in full, since they may still link the damaged file.
    replaced: BTreeSet<Digest>,
}

impl BlobChecks<'_> {
    fn intact(&mut self, cas: &Cas, d: &Digest, size: u64) -> bool {
        if self.verified.contains(d) {
            return true;
        }
        let path = cas.blob_path(d);
        let Ok(meta) = std::fs::metadata(&path) else {
            return false;
        };
        if meta.len() != size {
            return false;
        }
        let stat = StatKey::from_metadata(&meta);
        let memo_path = format!("cas:{}", d.hex());
        let ok = if self.memo.lookup(&memo_path, &stat).is_some() {
            true
        } else if let Ok(Some(content)) = verify_blob(&path, d) {
            self.learnt.push((
                memo_path,
                MemoEntry {
                    stat,
                    hash: content,
                },
            ));
            true
        } else {
            false
        };
        if ok {
            self.verified.insert(*d);
        } else {
            self.replaced.insert(*d);
        }
        ok
    }
}

/// Reads a blob once: its sha256 must equal `d`; returns its blake3.
fn verify_blob(path: &Path, d: &Digest) -> std::io::Result<Option<Key>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut sha = crate::hash::Sha256::new();
    let mut b3 = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        b3.update(&buf[..n]);
    }
    Ok((sha.finish() == *d).then(|| Key(*b3.finalize().as_bytes())))
}

/// The canonical hash of everything in an image spec that shapes its config.
fn config_params(spec: &ImageSpec) -> String {
    params_hash("image-config", |h| {
        let opt_list = |h: &mut crate::hash::KeyHasher, name: &str, v: &Option<Vec<String>>| {
            h.field(name);
            match v {
                None => {
                    h.opt_str(None);
                }
                Some(items) => {
                    h.opt_str(Some(""));
                    h.seq(items.len());
                    for i in items {
                        h.str(i);
                    }
                }
            }
        };
        let pairs = |h: &mut crate::hash::KeyHasher, name: &str, v: &[(String, String)]| {
            h.field(name).seq(v.len());
            for (k, val) in v {
                h.str(k).str(val);
            }
        };
        let list = |h: &mut crate::hash::KeyHasher, name: &str, v: &[String]| {
            h.field(name).seq(v.len());
            for i in v {
                h.str(i);
            }
        };
        opt_list(h, "entrypoint", &spec.entrypoint);
        opt_list(h, "cmd", &spec.cmd);
        pairs(h, "env", &spec.env);
        h.field("workdir").opt_str(spec.workdir.as_deref());
        h.field("user").opt_str(spec.user.as_deref());
        list(h, "expose", &spec.expose);
        list(h, "volume", &spec.volume);
        pairs(h, "labels", &spec.labels);
        pairs(h, "annotations", &spec.annotations);
        h.field("stop-signal").opt_str(spec.stop_signal.as_deref());
    })
}

/// `org.opencontainers.image.base.name` for image `n`: the base's first tag, else its label.
fn base_name(graph: &Graph, n: NodeIndex) -> Option<String> {
    let (_, base) = graph
        .deps(n)
        .into_iter()
        .find(|(k, _)| *k == EdgeKind::Base)?;
    let node = graph.node(base);
    if let TargetKind::Image(spec) = &node.target.kind
        && let Some(tag) = spec.tags.first()
    {
        return Some(tag.value.clone());
    }
    Some(node.label.to_string())
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

/// Key of a layer or import: needs file IO (expansion, hashing through the memo).
fn key_with_io(
    root: &Path,
    canonical_root: &Path,
    graph: &Graph,
    n: NodeIndex,
    settings: &Settings,
    memo: &FileMemo,
) -> Result<Keyed, ActionError> {
    let node = graph.node(n);
    match &node.target.kind {
        TargetKind::Layer(_) => {
            let planned =
                fileset::expand_layer(root, canonical_root, graph, n).map_err(ActionError::Spec)?;
            let files: Vec<(&str, &Path, Option<StatKey>)> = planned
                .iter()
                .filter_map(|p| match (&p.source, &p.entry.data) {
                    (Some(src), EntryData::File { source, .. }) => {
                        Some((src.rel.as_str(), source.as_path(), Some(src.stat)))
                    }
                    _ => None,
                })
                .collect();
            let hashed = fileset::hash_files(files, memo)
                .map_err(|e| ActionError::Message(format!("layer `{}`: {e}", node.label)))?;
            let mut c = Components::new("layer");
            c.set("format", settings.format.identity());
            c.set("epoch", settings.source_date_epoch.to_string());
            c.set("entries", entries_params(&planned));
            for (rel, k) in &hashed.hashes {
                c.set(format!("file:{rel}"), k.to_hex());
            }
            Ok(Keyed {
                key: c.key(),
                components: c,
                prepared: Prepared::Layer(planned),
                learnt: hashed.learnt,
            })
        }
        TargetKind::Import(spec) => {
            let (rel, is_layout) = match &spec.source.value {
                ImportSource::OciLayout(p) => (p, true),
                ImportSource::DockerArchive(p) => (p, false),
            };
            let ws_rel = if node.label.package().is_empty() {
                rel.clone()
            } else {
                format!("{}/{rel}", node.label.package())
            };
            let abs = root.join(&ws_rel);
            let mut files: Vec<(String, PathBuf)> = Vec::new();
            if is_layout {
                if !abs.is_dir() {
                    return Err(ActionError::Spec(
                        Diag::new(
                            Code::SourceMissing,
                            format!("OCI layout directory `{ws_rel}` does not exist"),
                        )
                        .at(node.file, spec.source.span),
                    ));
                }
                for e in walkdir::WalkDir::new(&abs)
                    .follow_links(false)
                    .sort_by_file_name()
                {
                    let e = e.map_err(|e| {
                        ActionError::Message(format!("import `{}`: {e}", node.label))
                    })?;
                    if e.file_type().is_file() {
                        let r = e
                            .path()
                            .strip_prefix(root)
                            .unwrap_or(e.path())
                            .to_string_lossy()
                            .into_owned();
                        files.push((r, e.path().to_path_buf()));
                    }
                }
            } else {
                if !abs.is_file() {
                    return Err(ActionError::Spec(
                        Diag::new(
                            Code::SourceMissing,
                            format!("docker archive `{ws_rel}` does not exist"),
                        )
                        .at(node.file, spec.source.span),
                    ));
                }
                files.push((ws_rel.clone(), abs.clone()));
            }
            let hashed = fileset::hash_files(
                files.iter().map(|(r, a)| (r.as_str(), a.as_path(), None)),
                memo,
            )
            .map_err(|e| ActionError::Message(format!("import `{}`: {e}", node.label)))?;
            let mut c = Components::new("import");
            c.set("platform", settings.platform.to_string());
            c.set(
                "source",
                if is_layout {
                    "oci-layout"
                } else {
                    "docker-archive"
                },
            );
            for (rel, k) in &hashed.hashes {
                c.set(format!("file:{rel}"), k.to_hex());
            }
            Ok(Keyed {
                key: c.key(),
                components: c,
                prepared: Prepared::Import(abs, is_layout),
                learnt: hashed.learnt,
            })
        }
        TargetKind::Image(_) => Err(ActionError::Message(
            "images are keyed on the coordinator".into(),
        )),
    }
}

/// The canonical hash of a layer's entry list, without file contents.
fn entries_params(planned: &[Planned]) -> String {
    let mut sorted: Vec<&Planned> = planned.iter().collect();
    sorted.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    params_hash("layer-entries", |h| {
        h.seq(sorted.len());
        for p in sorted {
            let e = &p.entry;
            h.str(&e.path)
                .u64(u64::from(e.mode))
                .u64(u64::from(e.uid))
                .u64(u64::from(e.gid));
            match &e.data {
                EntryData::File { .. } => {
                    h.str("file")
                        .opt_str(p.source.as_ref().map(|s| s.rel.as_str()));
                }
                EntryData::Bytes(b) => {
                    h.str("bytes").bytes(b);
                }
                EntryData::Dir => {
                    h.str("dir");
                }
                EntryData::Symlink(t) => {
                    h.str("symlink").str(t);
                }
            }
        }
    })
}

/// Runs one action on a worker.
fn run_action(
    graph: &Graph,
    n: NodeIndex,
    prepared: Prepared,
    deps: &[(EdgeKind, String, Output)],
    settings: &Settings,
    cas: &Cas,
) -> Result<Output, ActionError> {
    let node = graph.node(n);
    match prepared {
        Prepared::Layer(planned) => {
            let entries = layer::normalize(planned.into_iter().map(|p| p.entry).collect())
                .map_err(|e| {
                    ActionError::Spec(
                        Diag::new(Code::Conflict, format!("layer `{}`: {e}", node.label))
                            .at(node.file, node.target.span),
                    )
                })?;
            let out =
                layer::write_layer(&entries, &settings.format, settings.source_date_epoch, cas)
                    .map_err(|e| ActionError::Message(format!("layer `{}`: {e}", node.label)))?;
            Ok(Output::Layer(LayerDesc {
                digest: out.digest,
                diff_id: out.diff_id,
                size: out.size,
                media_type: out.media_type,
            }))
        }
        Prepared::Import(path, is_layout) => {
            let imported = if is_layout {
                crate::import::import_oci_layout(&path, &settings.platform, cas)
            } else {
                crate::import::import_docker_archive(&path, &settings.platform, cas)
            }
            .map_err(|e| ActionError::Message(format!("import `{}`: {e}", node.label)))?;
            Ok(Output::Image(ImageOut {
                manifest: imported.manifest_digest,
                manifest_size: imported.manifest_size,
                config: imported.config_digest,
                config_size: imported.config_size,
                layers: imported.layers,
            }))
        }
        Prepared::Image => assemble_image(graph, n, deps, settings, cas).map(Output::Image),
    }
}

/// Config and manifest of an image, from its base and its own layers.
fn assemble_image(
    graph: &Graph,
    n: NodeIndex,
    deps: &[(EdgeKind, String, Output)],
    settings: &Settings,
    cas: &Cas,
) -> Result<ImageOut, ActionError> {
    let node = graph.node(n);
    let TargetKind::Image(spec) = &node.target.kind else {
        return Err(ActionError::Message(format!(
            "`{}` is not an image",
            node.label
        )));
    };
    let io_err = |e: std::io::Error| ActionError::Message(format!("image `{}`: {e}", node.label));
    let mut base: Option<(&ImageOut, oci_spec::image::ImageConfiguration)> = None;
    let mut own: Vec<(String, LayerDesc)> = Vec::new();
    for (edge, label, out) in deps {
        match (edge, out) {
            (EdgeKind::Base, Output::Image(img)) => {
                let bytes = cas.read(&img.config).map_err(io_err)?;
                let cfg: oci_spec::image::ImageConfiguration = serde_json::from_slice(&bytes)
                    .map_err(|e| {
                        ActionError::Message(format!(
                            "image `{}`: base config of `{label}` is not valid: {e}",
                            node.label
                        ))
                    })?;
                base = Some((img, cfg));
            }
            (EdgeKind::Layer, Output::Layer(l)) => own.push((label.clone(), l.clone())),
            _ => {}
        }
    }
    let diff_ids: Vec<_> = own.iter().map(|(_, l)| l.diff_id).collect();
    let history_labels: Vec<String> = own.iter().map(|(label, _)| label.clone()).collect();
    let config = oci::build_config(
        base.as_ref().map(|(_, c)| c),
        spec,
        &settings.platform,
        &diff_ids,
        settings.source_date_epoch,
        &history_labels,
    );
    let config_bytes = oci::canonical_json(&config);
    let (config_digest, config_size) = cas.put_bytes(&config_bytes).map_err(io_err)?;
    let mut layers: Vec<LayerDesc> = base
        .as_ref()
        .map(|(b, _)| b.layers.clone())
        .unwrap_or_default();
    layers.extend(own.into_iter().map(|(_, l)| l));
    let mut annotations = BTreeMap::new();
    if let Some((b, _)) = &base {
        annotations.insert(
            "org.opencontainers.image.base.digest".to_string(),
            b.manifest.to_string(),
        );
        if let Some(name) = base_name(graph, n) {
            annotations.insert("org.opencontainers.image.base.name".to_string(), name);
        }
    }
    let manifest = oci::build_manifest((config_digest, config_size), &layers, annotations);
    let (manifest_digest, manifest_size) = cas
        .put_bytes(&oci::canonical_json(&manifest))
        .map_err(io_err)?;
    Ok(ImageOut {
        manifest: manifest_digest,
        manifest_size,
        config: config_digest,
        config_size,
        layers,
    })
}

/// Writes (or leaves in place, if already current) an image's OCI layout.
fn materialize(
    cas: &Cas,
    dest: &Path,
    img: &ImageOut,
    refs: &[String],
) -> Result<(PathBuf, Digest), ActionError> {
    let mut sized = vec![(img.config, img.config_size)];
    sized.extend(img.layers.iter().map(|l| (l.digest, l.size)));
    let blobs: Vec<Digest> = sized.iter().map(|(d, _)| *d).collect();
    if !oci::layout_is_current(dest, cas, (img.manifest, img.manifest_size), &sized, refs) {
        oci::write_layout(dest, cas, (img.manifest, img.manifest_size), &blobs, refs)
            .map_err(|e| ActionError::Message(format!("cannot write `{}`: {e}", dest.display())))?;
    }
    Ok((dest.to_path_buf(), img.manifest))
}
