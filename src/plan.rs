//! The cascade plan of `imgc build --dry-run`: what a build would do, before it runs.
//!
//! A platform team about to change a base image wants to know what the change
//! costs: how many layers must be tarred and compressed again, how many images
//! only get a new config and manifest, and what stays as it is. The plan answers
//! from the engine's own dry run ([`crate::scheduler::Settings::dry_run`]): every
//! target of the selection's closure is keyed exactly as a build keys it (files
//! hashed through the memo) and looked up in the local action cache, but nothing
//! runs, no layout is written, and no cache row is committed. This module only
//! sorts the engine's outcomes into steps and words them; it does no IO.
//!
//! # Steps
//!
//! | step | targets | what the build does | cost |
//! |---|---|---|---|
//! | rebuild | layers (named, inline or a package's) whose key missed | reads, tars and compresses the layer's files again | the expensive part: proportional to the layer's bytes |
//! | re-assemble | images whose key missed | writes a new config and manifest from its base's and layers' outputs | a few KB per image, whatever the image's size |
//! | re-import | imports whose key missed | reads and verifies the imported layout or archive again | proportional to the imported bytes (no compression) |
//! | download | http-files whose key missed (never fetched, or fetched under another sha256) | fetches the file and verifies its sha256 | the network: proportional to the file's bytes |
//! | reuse | targets whose key hit | nothing: the cached output is used | none |
//! | fail | targets that cannot be keyed, or depend on one | the build would fail here | |
//!
//! The step follows from the target's kind, and that is exact, not a guess: an
//! image action never compresses anything (its layers are separate actions,
//! listed on their own), and a layer's key never includes the image it is used
//! in nor that image's base. So when a base changes, every image above it is
//! *re-assembled* (its manifest names new base layers, so its digest changes) while
//! the services' own layers are *reused*: rebuilding is only for layers whose own
//! inputs changed (a file, the layer's entries in the spec, the layer format, or a
//! target it copies from). An image whose own config changed is re-assembled too.
//!
//! # An upper bound
//!
//! An image's key includes the *output digests* of its base and layers. In a dry
//! run a target that would run has no output yet, so nothing above it can be keyed:
//! it is counted as running, with the reason "it depends on `X`, which would
//! rebuild (...)" ([`Reason::Dependency`]). A real build may do less, never more
//! (given the same files and cache): a layer rebuilt to the very same bytes stops
//! the cascade there (early cutoff), and a remote cache, which a dry run does not
//! consult, may serve what the local one lacks.
//!
//! [`Reason::Dependency`]: crate::action::Reason::Dependency

use crate::actions::Outcome;
use crate::graph::Graph;
use crate::label::Label;
use crate::spec::model::TargetKind;
use petgraph::graph::NodeIndex;
use std::collections::BTreeMap;

/// What a build would do with one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// A layer whose inputs changed: tarred and compressed again.
    Rebuild,
    /// An image whose base, layers or config changed: a new config and manifest.
    Reassemble,
    /// An import whose files changed: read and verified again.
    Reimport,
    /// An http-file not in the store: fetched and verified.
    Download,
    /// Up to date: the cached output is used.
    Reuse,
    /// Cannot be keyed (or depends on a target that cannot): the build would fail.
    Fail,
}

impl Step {
    /// Every step, in the order a plan lists them.
    pub const ALL: [Step; 6] = [
        Step::Rebuild,
        Step::Reassemble,
        Step::Reimport,
        Step::Download,
        Step::Reuse,
        Step::Fail,
    ];

    /// The step of a target of this kind that would run.
    pub fn for_kind(kind: &TargetKind) -> Step {
        match kind {
            TargetKind::Layer(_) | TargetKind::DebPackage(_) => Step::Rebuild,
            TargetKind::Image(_) => Step::Reassemble,
            TargetKind::Import(_) => Step::Reimport,
            TargetKind::HttpFile(_) => Step::Download,
        }
    }

    /// The step's name in JSON (`--message-format json`).
    pub fn name(self) -> &'static str {
        match self {
            Step::Rebuild => "rebuild",
            Step::Reassemble => "reassemble",
            Step::Reimport => "reimport",
            Step::Download => "download",
            Step::Reuse => "reuse",
            Step::Fail => "fail",
        }
    }

    /// The heading of the step's group in the human plan.
    fn heading(self, n: usize) -> String {
        match self {
            Step::Rebuild => format!(
                "rebuild: {} (inputs changed: read, tarred and compressed again)",
                count(n, "layer")
            ),
            Step::Reassemble => format!(
                "re-assemble: {} (a new config and manifest only; their layers are reused unless listed under rebuild)",
                count(n, "image")
            ),
            Step::Reimport => format!(
                "re-import: {} (read and verified again)",
                count(n, "import")
            ),
            Step::Download => format!(
                "download: {} (fetched and verified against its sha256)",
                count(n, "file")
            ),
            Step::Reuse => format!("reuse: {} (up to date)", count(n, "target")),
            Step::Fail => format!("cannot plan: {} (the build would fail)", count(n, "target")),
        }
    }
}

/// `1 layer`, `3 layers`.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// One target of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub label: Label,
    /// `layer`, `image`, `import` or `http-file`.
    pub kind: &'static str,
    pub step: Step,
    /// Why it would run, or why it cannot be planned; empty for a reused target.
    pub detail: String,
}

/// What a build of a selection would do, target by target (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// By step (in [`Step::ALL`] order), then by label.
    entries: Vec<Entry>,
}

impl Plan {
    /// The plan of a dry run, from its outcomes (every target of the closure the
    /// engine reached). A target that ran (which a dry run never does) counts
    /// as its kind's step, like one that would run.
    pub fn new(graph: &Graph, outcomes: &BTreeMap<NodeIndex, Outcome>) -> Plan {
        let mut entries: Vec<Entry> = outcomes
            .iter()
            .map(|(&n, outcome)| {
                let node = graph.node(n);
                let (step, detail) = match outcome {
                    Outcome::Cached(_) => (Step::Reuse, String::new()),
                    Outcome::WouldRun(reason) => {
                        (Step::for_kind(&node.target.kind), reason.to_string())
                    }
                    Outcome::Ran(_) => (Step::for_kind(&node.target.kind), String::new()),
                    Outcome::Failed(e) => (Step::Fail, e.to_string()),
                    Outcome::Skipped(why) => (Step::Fail, why.clone()),
                };
                Entry {
                    label: node.label.clone(),
                    kind: node.kind_name(),
                    step,
                    detail,
                }
            })
            .collect();
        entries.sort_by(|a, b| (a.step, &a.label).cmp(&(b.step, &b.label)));
        Plan { entries }
    }

    /// Every target of the plan.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The targets of one step, in label order.
    pub fn step(&self, step: Step) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.step == step)
    }

    pub fn count(&self, step: Step) -> usize {
        self.step(step).count()
    }

    /// The one-line summary: `1 layer to rebuild, 5 images to re-assemble, 8
    /// targets reused`.
    pub fn headline(&self) -> String {
        let n = |s| self.count(s);
        let mut parts = vec![
            match n(Step::Rebuild) {
                0 => "no layer to rebuild".to_string(),
                k => format!("{} to rebuild", count(k, "layer")),
            },
            match n(Step::Reassemble) {
                0 => "no image to re-assemble".to_string(),
                k => format!("{} to re-assemble", count(k, "image")),
            },
        ];
        if n(Step::Reimport) > 0 {
            parts.push(format!(
                "{} to re-import",
                count(n(Step::Reimport), "import")
            ));
        }
        if n(Step::Download) > 0 {
            parts.push(format!("{} to download", count(n(Step::Download), "file")));
        }
        parts.push(format!("{} reused", count(n(Step::Reuse), "target")));
        if n(Step::Fail) > 0 {
            parts.push(format!(
                "{} cannot be planned",
                count(n(Step::Fail), "target")
            ));
        }
        parts.join(", ")
    }

    /// The plan for people: the headline, then each non-empty step with its
    /// targets (and each one's reason).
    pub fn render(&self) -> String {
        let mut out = format!("plan: {}\n", self.headline());
        for step in Step::ALL {
            let n = self.count(step);
            if n == 0 {
                continue;
            }
            out.push('\n');
            out.push_str(&step.heading(n));
            out.push('\n');
            for e in self.step(step) {
                match (step, e.detail.is_empty()) {
                    (Step::Reuse, _) | (_, true) => {
                        out.push_str(&format!("  {} ({})\n", e.label, e.kind))
                    }
                    _ => out.push_str(&format!("  {}: {}\n", e.label, e.detail)),
                }
            }
        }
        out
    }

    /// The plan for programs: the count of each step and its labels, keyed by
    /// [`Step::name`] (`"rebuild": [...]`, `"counts": {"rebuild": 1, ...}`), and
    /// `"targets"`, the number of targets planned.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        let mut counts = serde_json::Map::new();
        for step in Step::ALL {
            let labels: Vec<serde_json::Value> = self
                .step(step)
                .map(|e| serde_json::Value::String(e.label.to_string()))
                .collect();
            counts.insert(step.name().into(), labels.len().into());
            map.insert(step.name().into(), labels.into());
        }
        map.insert("counts".into(), counts.into());
        map.insert("targets".into(), self.len().into());
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Change, LayerDesc, Output, Reason};
    use crate::actions::ActionError;
    use crate::hash::{DiffId, Digest};
    use crate::spec::model::Package;
    use crate::spec::parse_build_file;

    /// A base with two layers, a service on it with a layer and an inline layer,
    /// and an import.
    fn graph() -> Graph {
        let base = r#"
            layer "bin" { text "/bin/x" "x" }
            layer "etc" { text "/etc/x" "x" }
            image "runtime" { from "scratch"; layers ":bin" ":etc"; }
        "#;
        let svc = r#"
            layer "app" { text "/app/x" "x" }
            import "vendor" { oci-layout "vendor" }
            image "api" {
                from "//bases:runtime"
                layers ":app"
                layer { text "/etc/api" "x" }
            }
            image "legacy" { from ":vendor"; }
        "#;
        let packages = [("bases", base), ("svc", svc)]
            .into_iter()
            .enumerate()
            .map(|(file, (path, text))| {
                let (targets, diags) = parse_build_file(file, path, text);
                assert!(diags.is_empty(), "{diags:?}");
                Package {
                    path: path.into(),
                    file,
                    targets,
                }
            })
            .collect();
        let (g, diags) = crate::graph::build(packages);
        assert!(diags.is_empty(), "{diags:?}");
        g
    }

    fn cached() -> Outcome {
        let d = Digest::of_bytes(b"x");
        Outcome::Cached(Output::Layer(LayerDesc {
            digest: d,
            diff_id: DiffId(d),
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            listing: None,
        }))
    }

    fn at(g: &Graph, label: &str) -> NodeIndex {
        g.nodes()
            .find(|n| g.node(*n).label.to_string() == label)
            .unwrap_or_else(|| panic!("no target `{label}`"))
    }

    fn labels(plan: &Plan, step: Step) -> Vec<String> {
        plan.step(step).map(|e| e.label.to_string()).collect()
    }

    /// The base cascade: one base layer changed; everything above it is
    /// re-assembled, the service's own layers reused.
    fn cascade(g: &Graph) -> BTreeMap<NodeIndex, Outcome> {
        let changed = Reason::Changed(vec![Change::Changed("file:bases/etc/x".into())]);
        let via = |label: &str| Outcome::WouldRun(Reason::dependency(label, &changed));
        [
            ("//bases:bin", cached()),
            ("//bases:etc", Outcome::WouldRun(changed.clone())),
            ("//bases:runtime", via("//bases:etc")),
            ("//svc:app", cached()),
            ("//svc:api~layer0", cached()),
            ("//svc:api", via("//bases:etc")),
            ("//svc:vendor", cached()),
            ("//svc:legacy", cached()),
        ]
        .into_iter()
        .map(|(l, o)| (at(g, l), o))
        .collect()
    }

    #[test]
    fn a_base_change_rebuilds_the_base_layer_and_reassembles_the_images_above_it() {
        let g = graph();
        let plan = Plan::new(&g, &cascade(&g));
        assert_eq!(labels(&plan, Step::Rebuild), ["//bases:etc"]);
        assert_eq!(
            labels(&plan, Step::Reassemble),
            ["//bases:runtime", "//svc:api"]
        );
        assert_eq!(
            labels(&plan, Step::Reuse),
            [
                "//bases:bin",
                "//svc:api~layer0",
                "//svc:app",
                "//svc:legacy",
                "//svc:vendor"
            ]
        );
        assert_eq!(plan.len(), 8);
        assert_eq!(
            plan.headline(),
            "1 layer to rebuild, 2 images to re-assemble, 5 targets reused"
        );
        let text = plan.render();
        assert!(
            text.contains(
                "\n  //svc:api: it depends on `//bases:etc`, which would rebuild (file `bases/etc/x` changed)\n"
            ),
            "{text}"
        );
        assert!(text.contains("\n  //svc:app (layer)\n"), "{text}");
        assert!(!text.contains("re-import"), "{text}");
    }

    #[test]
    fn imports_failures_and_skips_have_their_own_steps() {
        let g = graph();
        let mut outcomes = cascade(&g);
        outcomes.insert(
            at(&g, "//svc:vendor"),
            Outcome::WouldRun(Reason::NeverBuilt),
        );
        outcomes.insert(
            at(&g, "//svc:app"),
            Outcome::Failed(ActionError::Message("source `app/x` is missing".into())),
        );
        outcomes.insert(
            at(&g, "//svc:api"),
            Outcome::Skipped("dependency `//svc:app` failed".into()),
        );
        let plan = Plan::new(&g, &outcomes);
        assert_eq!(labels(&plan, Step::Reimport), ["//svc:vendor"]);
        assert_eq!(labels(&plan, Step::Fail), ["//svc:api", "//svc:app"]);
        assert_eq!(
            plan.headline(),
            "1 layer to rebuild, 1 image to re-assemble, 1 import to re-import, \
             3 targets reused, 2 targets cannot be planned"
        );
        let text = plan.render();
        assert!(
            text.contains("\n  //svc:app: source `app/x` is missing\n"),
            "{text}"
        );
        assert!(text.contains("\n  //svc:vendor: never built\n"), "{text}");
    }

    #[test]
    fn json_lists_every_step_with_its_count() {
        let g = graph();
        let plan = Plan::new(&g, &cascade(&g));
        let v = serde_json::Value::Object(plan.to_json());
        assert_eq!(v["rebuild"], serde_json::json!(["//bases:etc"]));
        assert_eq!(v["reimport"], serde_json::json!([]));
        assert_eq!(
            v["counts"],
            serde_json::json!({"rebuild": 1, "reassemble": 2, "reimport": 0, "download": 0, "reuse": 5, "fail": 0})
        );
        assert_eq!(v["targets"], 8);
    }

    #[test]
    fn nothing_to_do_says_so() {
        let g = graph();
        let outcomes = g.nodes().map(|n| (n, cached())).collect();
        let plan = Plan::new(&g, &outcomes);
        assert_eq!(
            plan.headline(),
            "no layer to rebuild, no image to re-assemble, 8 targets reused"
        );
    }
}
