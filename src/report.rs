//! The only module that prints: results on stdout, everything else on stderr.
//!
//! Diagnostics are rendered with miette: colour and Unicode on a terminal,
//! plain text (same meaning, no escapes) when stderr is not a terminal or
//! `NO_COLOR` is set.
//!
//! # The status line
//!
//! On a terminal (stderr is one, `TERM` is not `dumb`), a build says what it is
//! doing on one live line at the bottom of stderr from its first milliseconds to
//! its summary: [`announce`] draws it at once without starting a thread (the no-op
//! fast path must stay as cheap as it was), [`Progress::status`] takes it over as a
//! spinner with counts through the phases of loading, and the [`Reporter`] turns it
//! into the build's bar. There is only ever one such line, kept here: every other
//! output of this module (results on stdout, warnings, errors) takes it down first
//! and draws it again after, so nothing is printed into it, and whoever ends it
//! clears it. When stderr is not a terminal, or with `--message-format json`, there
//! is no line at all and nothing of it is printed.

use crate::actions::ActionError;
pub use crate::diag::escape_controls;
use crate::diag::{Diag, Sources};
use crate::hash::{Digest, Key};
use crate::label::Label;
use miette::{GraphicalReportHandler, GraphicalTheme};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Whether stderr gets colour.
pub fn color_enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether stderr gets a live status line (see the module docs): it is a terminal
/// that can move its cursor. `NO_COLOR` turns off colour, not progress.
pub fn progress_enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// The live status line, if one is drawn: a handle on it (the owner holds another).
static LINE: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

fn live_line() -> std::sync::MutexGuard<'static, Option<indicatif::ProgressBar>> {
    LINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `print` with the status line taken down, then draws the line again.
fn above_line<R>(print: impl FnOnce() -> R) -> R {
    let line = live_line().clone();
    match line {
        Some(bar) => bar.suspend(print),
        None => print(),
    }
}

/// Clears the status line `bar` for good.
fn end_line(bar: &indicatif::ProgressBar) {
    bar.finish_and_clear();
    *live_line() = None;
}

/// The spinner of a status line saying `what` (drawn once; no thread ticks it).
fn new_line(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(plain_style());
    bar.set_message(escape_controls(what).into_owned());
    bar
}

fn plain_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {wide_msg} {elapsed}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

/// Says what imgc is doing on the status line at once (on a terminal only): one
/// draw, no thread, so that it costs a command answering in milliseconds nothing it
/// would notice. A [`Progress::status`] or a [`Reporter`]'s bar takes the line over;
/// any other output of this module takes it down first.
pub fn announce(what: &str) {
    if !progress_enabled() {
        return;
    }
    let mut live = live_line();
    match live.as_ref() {
        Some(bar) => bar.set_message(escape_controls(what).into_owned()),
        None => *live = Some(new_line(what)),
    }
}

/// Prints a result line (or block) on stdout, control characters escaped.
pub fn result(text: &str) {
    raw_stdout(&escape_controls(text));
}

/// Prints `text` on stdout as it is (JSON lines: serde escapes control characters).
fn raw_stdout(text: &str) {
    above_line(|| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        // Before the status line is drawn again on the same terminal.
        let _ = out.flush();
    });
}

/// Prints a status line on stderr, as it is: callers escape what they put in it
/// (rendered diagnostics carry the colour codes of the renderer).
pub fn status(text: &str) {
    above_line(|| {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    });
}

/// Prints a warning on stderr, control characters escaped.
pub fn warning(text: &str) {
    status(&format!("warning: {}", escape_controls(text)));
}

/// Renders diagnostics (miette: source line, caret, help), without a count.
fn render_reports(sources: &Sources, diags: &[Diag], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(120)
        .with_wrap_lines(false);
    let mut out = String::new();
    for d in diags {
        let report = d.to_report(sources);
        let _ = handler.render_report(&mut out, report.as_ref());
        out.push('\n');
    }
    out
}

/// Renders diagnostics followed by the count line `error: N problems found`.
pub fn render_diagnostics(sources: &Sources, diags: &[Diag], color: bool) -> String {
    let n = diags.len();
    format!(
        "{}error: {n} problem{} found\n",
        render_reports(sources, diags, color),
        if n == 1 { "" } else { "s" }
    )
}

/// How a command failed, as the printer needs it.
pub enum Failure<'a> {
    Diagnostics(&'a Sources, &'a [Diag]),
    Message(&'a str),
    Usage(&'a str),
}

/// Prints a command's failure on stderr (and ends the status line, if one is left).
pub fn error(failure: Failure<'_>) {
    let line = live_line().clone();
    if let Some(bar) = line {
        end_line(&bar);
    }
    let mut e = std::io::stderr().lock();
    let _ = match failure {
        Failure::Diagnostics(sources, diags) => {
            write!(e, "{}", render_diagnostics(sources, diags, color_enabled()))
        }
        Failure::Message(msg) => writeln!(e, "error: {}", escape_controls(msg)),
        Failure::Usage(msg) => writeln!(
            e,
            "error: {}\n\nFor more information, try '--help'.",
            escape_controls(msg)
        ),
    };
}

/// The numbers of a build's closing line.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub images: usize,
    pub ran: usize,
    /// Hits, local and remote.
    pub cached: usize,
    pub remote_hits: usize,
    pub failed: usize,
    pub downloaded: u64,
    pub uploaded: u64,
    pub elapsed: Duration,
    /// Answered from the snapshot of the last build ([`crate::snapshot`]).
    pub snapshot: bool,
}

/// `1.5 MiB`, `312 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Where a finished action's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The local action cache.
    Local,
    /// The remote cache, with the bytes fetched for it.
    Remote { downloaded: u64 },
    /// It ran.
    Ran,
}

/// Something that happened during a build. The scheduler emits; the
/// [`Reporter`] alone decides how it is shown.
#[derive(Debug)]
pub enum Event<'a> {
    /// The build will consider this many actions.
    Planned {
        actions: usize,
    },
    /// An action starts running (its key missed the cache), and why.
    Started {
        label: &'a Label,
        kind: &'a str,
        key: &'a Key,
        reason: &'a str,
    },
    /// An action finished, from a cache or by running.
    Finished {
        label: &'a Label,
        kind: &'a str,
        key: &'a Key,
        source: Source,
        digest: &'a Digest,
        duration: Duration,
        /// The bytes fetched by an http-file that ran (`None` for every other).
        size: Option<u64>,
    },
    /// An action's outputs were sent to the remote cache.
    Uploaded {
        label: &'a Label,
        key: &'a Key,
        bytes: u64,
    },
    /// Dry runs: this action would run, as `step` of the plan.
    WouldRun {
        label: &'a Label,
        kind: &'a str,
        step: crate::plan::Step,
        reason: &'a str,
    },
    Failed {
        label: &'a Label,
        error: &'a ActionError,
    },
    Skipped {
        label: &'a Label,
        because: &'a str,
    },
    /// An image layout was written (or found current) at `path`.
    Materialized {
        label: &'a Label,
        path: &'a Path,
        digest: &'a Digest,
    },
    Warning {
        message: &'a str,
    },
    /// A stale layout (of an image that no longer exists) was removed from `path`.
    Removed {
        path: &'a Path,
    },
    /// The plan of a dry run (`imgc build --dry-run`), after its other events.
    Plan {
        plan: &'a crate::plan::Plan,
    },
}

/// Renders build events: human progress on stderr (a live bar on a terminal,
/// plain lines otherwise) or one JSON object per line on stdout.
pub struct Reporter {
    json: bool,
    /// Workspace root, to print paths relative to it.
    root: PathBuf,
    sources: Sources,
    /// The status line (see the module docs): taken over when the reporter is made,
    /// the build's bar from [`Event::Planned`]. Ended by the summary or when dropped.
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: usize,
    quiet_plan: bool,
    /// Why each running action started, shown when it finishes.
    reasons: std::collections::BTreeMap<String, String>,
    /// Actions started (keyed, missed every cache): the bar counts them while its
    /// position (actions done) waits for the first to finish.
    started: usize,
    /// Stdout lines held back until the summary (see [`Reporter::buffered`]).
    held: std::cell::RefCell<Option<Vec<u8>>>,
}

impl Reporter {
    pub fn new(json: bool, root: &Path, sources: Sources) -> Reporter {
        Reporter {
            json,
            root: root.to_path_buf(),
            sources,
            bar: if json { None } else { live_line().clone() },
            total: 0,
            done: 0,
            quiet_plan: false,
            reasons: Default::default(),
            started: 0,
            held: Default::default(),
        }
    }

    /// Holds stdout lines back and writes them at once before the summary (or
    /// when dropped): for a replay, which has nothing to show live and would
    /// otherwise make one write per line.
    pub fn buffered(self) -> Reporter {
        *self.held.borrow_mut() = Some(Vec::new());
        self
    }

    fn flush_held(&self) {
        if let Some(held) = self.held.borrow_mut().as_mut()
            && !held.is_empty()
        {
            above_line(|| {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(held);
                let _ = out.flush();
            });
            held.clear();
        }
    }

    /// A result line on stdout, as [`result`] prints it (or held back).
    fn result_line(&self, text: &str) {
        match self.held.borrow_mut().as_mut() {
            Some(held) => {
                let _ = writeln!(held, "{}", escape_controls(text));
            }
            None => result(text),
        }
    }

    /// No progress output (for `explain`).
    pub fn quiet(mut self) -> Reporter {
        self.quiet_plan = true;
        self
    }

    /// Says what the build is doing on its status line (before its bar counts
    /// actions, or after), if there is one.
    pub fn say(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(escape_controls(what).into_owned());
        }
    }

    fn json_line(&self, v: serde_json::Value) {
        match self.held.borrow_mut().as_mut() {
            Some(held) => {
                let _ = writeln!(held, "{v}");
            }
            None => raw_stdout(&v.to_string()),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => status(text),
        }
    }

    fn relative<'p>(&self, p: &'p Path) -> std::borrow::Cow<'p, str> {
        match p.strip_prefix(&self.root) {
            Ok(r) => std::borrow::Cow::Owned(r.to_string_lossy().into_owned()),
            Err(_) => p.to_string_lossy(),
        }
    }

    pub fn event(&mut self, e: &Event<'_>) {
        if self.json {
            self.event_json(e);
        } else {
            self.event_human(e);
        }
    }

    fn event_json(&self, e: &Event<'_>) {
        use serde_json::json;
        let v = match e {
            Event::Planned { actions } => json!({"event": "planned", "actions": actions}),
            Event::Started {
                label,
                kind,
                key,
                reason,
            } => json!({
                "event": "started", "label": label.to_string(), "kind": kind, "key": key.to_hex(), "reason": reason
            }),
            Event::Finished {
                label,
                kind,
                key,
                source,
                digest,
                duration,
                size,
            } => {
                let (cache, downloaded) = match source {
                    Source::Local => (json!("local"), 0),
                    Source::Remote { downloaded } => (json!("remote"), *downloaded),
                    Source::Ran => (serde_json::Value::Null, 0),
                };
                let mut v = json!({
                    "event": "finished", "label": label.to_string(), "kind": kind, "key": key.to_hex(),
                    "cached": *source != Source::Ran, "cache": cache, "downloaded_bytes": downloaded,
                    "digest": digest.to_string(), "duration_ms": duration.as_millis() as u64
                });
                if let Some(size) = size {
                    v["size_bytes"] = json!(size);
                }
                v
            }
            Event::Uploaded { label, key, bytes } => json!({
                "event": "uploaded", "label": label.to_string(), "key": key.to_hex(), "bytes": bytes
            }),
            Event::WouldRun {
                label,
                kind,
                step,
                reason,
            } => json!({
                "event": "would-run", "label": label.to_string(), "kind": kind, "step": step.name(), "reason": reason
            }),
            Event::Failed { label, error } => {
                json!({"event": "failed", "label": label.to_string(), "error": self.error_text(error)})
            }
            Event::Skipped { label, because } => {
                json!({"event": "skipped", "label": label.to_string(), "reason": because})
            }
            Event::Materialized {
                label,
                path,
                digest,
            } => json!({
                "event": "materialized", "label": label.to_string(), "path": self.relative(path), "digest": digest.to_string()
            }),
            Event::Warning { message } => json!({"event": "warning", "message": message}),
            Event::Removed { path } => {
                json!({"event": "removed", "path": self.relative(path)})
            }
            Event::Plan { plan } => {
                let mut v = plan.to_json();
                v.insert("event".into(), "plan".into());
                serde_json::Value::Object(v)
            }
        };
        self.json_line(v);
    }

    fn error_text(&self, error: &ActionError) -> String {
        match error {
            ActionError::Spec(d) => d.short(&self.sources),
            ActionError::Message(m) | ActionError::Env(m) => m.clone(),
        }
    }

    fn event_human(&mut self, e: &Event<'_>) {
        match e {
            Event::Planned { actions } => {
                self.total = *actions;
                let adopted = self.bar.take();
                if !self.quiet_plan && progress_enabled() && *actions > 0 {
                    // The status line becomes the bar: no gap, nothing left behind.
                    let bar = adopted.unwrap_or_else(|| {
                        let bar = indicatif::ProgressBar::new_spinner();
                        *live_line() = Some(bar.clone());
                        bar
                    });
                    // Every frame drawn on the way is true (see `Progress::phase`).
                    bar.set_style(plain_style());
                    bar.set_message("keying targets and checking the cache");
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} [{pos}/{len}] {wide_msg} {elapsed}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar.update(|state| {
                        state.set_pos(0);
                        state.set_len(*actions as u64);
                    });
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bar = Some(bar);
                } else if let Some(bar) = adopted {
                    end_line(&bar);
                }
            }
            Event::Started {
                label,
                kind,
                reason,
                ..
            } => {
                self.started += 1;
                if let Some(bar) = &self.bar {
                    let verb = if *kind == "http-file" {
                        "downloading"
                    } else {
                        "building"
                    };
                    bar.set_message(format!("{verb} {kind} {label} ({} started)", self.started));
                }
                self.reasons.insert(label.to_string(), reason.to_string());
            }
            Event::Finished {
                label,
                kind,
                source,
                duration,
                size,
                ..
            } => {
                self.done += 1;
                if let Some(bar) = &self.bar {
                    bar.set_position(self.done as u64);
                }
                if let Source::Remote { downloaded } = source
                    && !self.quiet_plan
                {
                    self.line(&format!(
                        "[{}/{}] fetched {kind} {label} from the remote cache ({})",
                        self.done,
                        self.total,
                        bytes(*downloaded)
                    ));
                }
                if *source == Source::Ran && !self.quiet_plan {
                    let reason = self.reasons.remove(&label.to_string()).unwrap_or_default();
                    let done = match size {
                        Some(n) => format!("downloaded {kind} {label} ({})", bytes(*n)),
                        None => format!("built {kind} {label}"),
                    };
                    self.line(&format!(
                        "[{}/{}] {done} in {:.2}s ({reason})",
                        self.done,
                        self.total,
                        duration.as_secs_f64()
                    ));
                }
            }
            Event::WouldRun { .. } | Event::Uploaded { .. } => {}
            Event::Failed { label, error } => {
                let text = match error {
                    ActionError::Spec(d) => {
                        render_reports(&self.sources, std::slice::from_ref(d), color_enabled())
                    }
                    ActionError::Message(m) | ActionError::Env(m) => {
                        format!("error: {}", escape_controls(m))
                    }
                };
                self.line(&format!("failed: {label}\n{}", text.trim_end()));
            }
            Event::Skipped { label, because } => {
                self.line(&format!("skipped {label}: {}", escape_controls(because)))
            }
            Event::Materialized {
                label,
                path,
                digest,
            } => {
                // Above the bar, if any (see `above_line`), or held back.
                self.result_line(&format!("{label} {} {digest}", self.relative(path)));
            }
            Event::Warning { message } => {
                self.line(&format!("warning: {}", escape_controls(message)))
            }
            Event::Removed { path } => self.line(&format!(
                "removed the stale layout `{}`",
                escape_controls(&self.relative(path))
            )),
            Event::Plan { plan } => {
                if let Some(bar) = self.bar.take() {
                    end_line(&bar);
                }
                result(plan.render().trim_end());
            }
        }
    }

    /// The closing line: "N images, M actions run, K from cache, X s" (and what
    /// the remote cache gave and took).
    pub fn summary(&mut self, t: &Totals) {
        if let Some(bar) = self.bar.take() {
            end_line(&bar);
        }
        self.flush_held();
        if self.json {
            self.json_line(serde_json::json!({
                "event": "summary", "images": t.images, "ran": t.ran, "cached": t.cached,
                "local_hits": t.cached - t.remote_hits, "remote_hits": t.remote_hits,
                "downloaded_bytes": t.downloaded, "uploaded_bytes": t.uploaded, "failed": t.failed,
                "seconds": (t.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                "snapshot": t.snapshot
            }));
        } else {
            let failed = if t.failed > 0 {
                format!(", {} failed", t.failed)
            } else {
                String::new()
            };
            let mut remote = Vec::new();
            if t.remote_hits > 0 {
                remote.push(format!(
                    "{} remote, {} fetched",
                    t.remote_hits,
                    bytes(t.downloaded)
                ));
            }
            if t.uploaded > 0 {
                remote.push(format!("{} uploaded", bytes(t.uploaded)));
            }
            let remote = if remote.is_empty() {
                String::new()
            } else {
                format!(" ({})", remote.join(", "))
            };
            status(&format!(
                "{} image{}, {} action{} run, {} from cache{remote}{failed}, {:.2} s",
                t.images,
                if t.images == 1 { "" } else { "s" },
                t.ran,
                if t.ran == 1 { "" } else { "s" },
                t.cached,
                t.elapsed.as_secs_f64()
            ));
        }
        self.flush_held();
    }
}

impl Drop for Reporter {
    /// A build that stops early (an error) leaves no bar behind, and what it
    /// held back printed.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            end_line(&bar);
        }
        self.flush_held();
    }
}

/// A progress bar on stderr for long work counted in bytes (`imgc cache
/// verify`): drawn only on a terminal and only for work large enough to take a
/// while; otherwise nothing. Or the status line of a build while it loads the
/// workspace ([`Progress::status`]). Shared by worker threads.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// The bar is the status line (see the module docs): ended when dropped.
    is_line: bool,
}

/// What a phase of [`Progress::status`] counts (with [`Progress::add`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Nothing: the spinner and the clock move.
    Nothing,
    /// Things found, with no total known: `what: N found`.
    Found,
    /// Steps of a known total: `what: i/N`.
    Of(u64),
}

impl Progress {
    /// Below this much, work is quick enough to need no bar.
    const SHOWN_FROM: u64 = 256 << 20;

    pub fn bytes(what: &str, total: u64) -> Progress {
        if total < Progress::SHOWN_FROM || !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bytes}/{total_bytes}] {bytes_per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(escape_controls(what).into_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar: Some(bar),
            is_line: false,
        }
    }

    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            is_line: false,
        }
    }

    /// The status line saying what imgc is doing (loading a workspace before a
    /// build's bar can count actions), as a spinner, on a terminal only: it takes
    /// over the line [`announce`] drew, if any. Ended when finished or dropped, or
    /// handed to the build's [`Reporter`] ([`Progress::hand_over`]).
    pub fn status(what: &str) -> Progress {
        if !progress_enabled() {
            return Progress::hidden();
        }
        let bar = {
            let mut live = live_line();
            live.get_or_insert_with(|| new_line(what)).clone()
        };
        bar.set_style(plain_style());
        bar.set_message(escape_controls(what).into_owned());
        bar.enable_steady_tick(Duration::from_millis(80));
        Progress {
            bar: Some(bar),
            is_line: true,
        }
    }

    /// Changes what a [`Progress::status`] spinner says.
    pub fn say(&self, what: &str) {
        self.phase(what, Tally::Nothing);
    }

    /// Starts a phase of a [`Progress::status`]: says `what`, counting from zero
    /// as `tally` says.
    pub fn phase(&self, what: &str, tally: Tally) {
        let Some(bar) = &self.bar else {
            return;
        };
        // Every frame drawn on the way is true: the message alone, then with its count.
        bar.set_style(plain_style());
        bar.set_message(escape_controls(what).into_owned());
        let counted = match tally {
            Tally::Nothing => return,
            Tally::Found => "{spinner} {wide_msg} {human_pos} found {elapsed}",
            Tally::Of(_) => "{spinner} {wide_msg} {human_pos}/{human_len} {elapsed}",
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(counted)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.update(|state| {
            state.set_pos(0);
            if let Tally::Of(n) = tally {
                state.set_len(n);
            }
        });
    }

    pub fn add(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            if self.is_line {
                end_line(bar);
            } else {
                bar.finish_and_clear();
            }
        }
    }

    /// Leaves the status line drawn for the build's [`Reporter`], which takes it
    /// over (and ends it).
    pub fn hand_over(mut self) {
        self.bar = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.is_line {
            self.finish();
        }
    }
}

/// One image `imgc push` pushed, as [`pushed`] prints it.
#[derive(Debug)]
pub struct PushedImage<'a> {
    pub label: &'a str,
    /// The first reference, with its tag.
    pub reference: &'a str,
    pub digest: &'a Digest,
    /// Every reference the manifest is now under.
    pub references: &'a [String],
    pub blobs: usize,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_existing: usize,
    pub bytes_uploaded: u64,
    pub manifests_put: usize,
}

/// `pushed REF@DIGEST (N blobs, X uploaded, Y mounted, Z existing, B sent)` on
/// stdout, or one JSON object.
pub fn pushed(json: bool, p: &PushedImage<'_>) {
    if json {
        raw_stdout(
            &serde_json::json!({
                "event": "pushed", "label": p.label, "reference": p.reference,
                "digest": p.digest.to_string(), "references": p.references,
                "blobs": p.blobs, "blobs_uploaded": p.blobs_uploaded,
                "blobs_mounted": p.blobs_mounted, "blobs_existing": p.blobs_existing,
                "bytes_uploaded": p.bytes_uploaded, "manifests_put": p.manifests_put,
            })
            .to_string(),
        );
    } else {
        result(&format!(
            "pushed {}@{} ({} blob{}, {} uploaded, {} mounted, {} existing; {} sent)",
            p.reference,
            p.digest,
            p.blobs,
            if p.blobs == 1 { "" } else { "s" },
            p.blobs_uploaded,
            p.blobs_mounted,
            p.blobs_existing,
            bytes(p.bytes_uploaded)
        ));
        for r in p.references.iter().skip(1) {
            result(&format!("  also {r}"));
        }
    }
}

/// `imgc push --dry-run`: where an image would go (nothing is sent).
pub fn would_push(json: bool, label: &str, digest: &Digest, references: &[String]) {
    if json {
        raw_stdout(
            &serde_json::json!({
                "event": "would-push", "label": label, "digest": digest.to_string(),
                "references": references,
            })
            .to_string(),
        );
    } else {
        for r in references {
            result(&format!("would push `{label}` as {r}@{digest}"));
        }
    }
}

/// An image `imgc push` could not push: `error: …` on stderr (and a JSON
/// object on stdout with `--output json`).
pub fn push_failed(json: bool, label: &str, reference: &str, message: &str) {
    if json {
        raw_stdout(
            &serde_json::json!({
                "event": "push-failed", "label": label, "reference": reference, "error": message,
            })
            .to_string(),
        );
    }
    status(&format!("error: {}", escape_controls(message)));
}

/// Progress of a push on stderr.
pub fn push_progress(text: &str) {
    status(&escape_controls(text));
}

/// The closing line of `imgc push`: on stderr, or a JSON summary on stdout.
pub fn push_summary(
    json: bool,
    pushed: usize,
    failed: usize,
    bytes_uploaded: u64,
    elapsed: Duration,
) {
    if json {
        raw_stdout(
            &serde_json::json!({
                "event": "push-summary", "pushed": pushed, "failed": failed,
                "bytes_uploaded": bytes_uploaded,
                "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            })
            .to_string(),
        );
    } else {
        let failed = if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        };
        status(&format!(
            "{pushed} image{} pushed{failed}, {} uploaded, {:.2} s",
            if pushed == 1 { "" } else { "s" },
            bytes(bytes_uploaded),
            elapsed.as_secs_f64()
        ));
    }
}
