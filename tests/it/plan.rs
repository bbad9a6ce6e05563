//! `imgc build --dry-run`: the cascade plan names exactly what a build then
//! does, and writes nothing.

use crate::support::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

/// Every file under `dir`: its bytes and its mtime (directories are not
/// compared: SQLite creates and deletes its `-wal` and `-shm` files beside the
/// database even when it only reads).
fn files_with_mtimes(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy();
            let mtime = e.metadata().unwrap().modified().unwrap();
            out.insert(rel.into_owned(), (std::fs::read(e.path()).unwrap(), mtime));
        }
    }
    out
}

/// What a dry run must leave as it was: the cache directory and the workspace
/// (its output directory included).
struct Untouched<'w> {
    ws: &'w Ws,
    cache: BTreeMap<String, (Vec<u8>, SystemTime)>,
    workspace: BTreeMap<String, (Vec<u8>, SystemTime)>,
}

impl<'w> Untouched<'w> {
    fn note(ws: &'w Ws) -> Untouched<'w> {
        Untouched {
            ws,
            cache: files_with_mtimes(ws.cache.path()),
            workspace: files_with_mtimes(ws.root()),
        }
    }

    fn check(&self) {
        let cache = files_with_mtimes(self.ws.cache.path());
        assert_eq!(
            cache.keys().collect::<Vec<_>>(),
            self.cache.keys().collect::<Vec<_>>(),
            "the dry run added or removed files in the cache directory"
        );
        for (path, before) in &self.cache {
            assert!(
                &cache[path] == before,
                "the dry run changed `{path}` in the cache directory"
            );
        }
        assert!(
            self.cache.contains_key("v1/imgc.sqlite"),
            "the check must cover the cache database"
        );
        let workspace = files_with_mtimes(self.ws.root());
        assert_eq!(
            workspace.keys().collect::<Vec<_>>(),
            self.workspace.keys().collect::<Vec<_>>(),
            "the dry run added or removed files in the workspace"
        );
        assert!(
            workspace == self.workspace,
            "the dry run changed a workspace file"
        );
    }
}

/// The labels of the would-run events of a given step, sorted.
fn would_run(e: &Events, step: &str) -> Vec<String> {
    let mut v: Vec<String> =
        e.0.iter()
            .filter(|e| e["event"] == "would-run" && e["step"] == step)
            .map(|e| e["label"].as_str().unwrap().to_string())
            .collect();
    v.sort();
    v
}

fn plan_event(e: &Events) -> &serde_json::Value {
    let plans: Vec<_> = e.0.iter().filter(|e| e["event"] == "plan").collect();
    assert_eq!(plans.len(), 1, "one plan event");
    assert_eq!(
        e.0.last().unwrap()["event"],
        "plan",
        "the plan event closes the stream"
    );
    plans[0]
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn dry_run_json(ws: &Ws, extra: &[&str]) -> Events {
    let mut args = vec!["build", "--dry-run", "--message-format", "json"];
    args.extend_from_slice(extra);
    Events::parse(&ws.ok(&args).stdout)
}

const BASE_FILE: &str = "bases/runtime/etc/nsswitch.conf";

/// The images above `//bases:runtime`: `reports` is built on the imported
/// vendor base, with `//bases:runtime-bin` (unchanged) as a layer.
const ABOVE_THE_BASE: [&str; 5] = [
    "//bases:runtime",
    "//services/api:api",
    "//services/api:api-migrate",
    "//services/web:web",
    "//services/worker:worker",
];

#[test]
fn dry_run_after_a_base_change_plans_exactly_what_the_build_then_runs() {
    let ws = Ws::copy_of(&spec_examples());
    let cold = ws.build(&[]);
    let all: Vec<String> = cold.ran();
    assert_eq!(all.len(), 18);
    let mut text = std::fs::read_to_string(ws.path(BASE_FILE)).unwrap();
    text.push_str("# changed\n");
    ws.write(BASE_FILE, &text);

    let before = Untouched::note(&ws);
    let plan = dry_run_json(&ws, &[]);
    before.check();

    assert_eq!(would_run(&plan, "rebuild"), ["//bases:runtime-etc"]);
    assert_eq!(would_run(&plan, "reassemble"), ABOVE_THE_BASE);
    assert_eq!(would_run(&plan, "reimport"), Vec::<String>::new());
    assert!(plan.ran().is_empty(), "a dry run runs nothing");
    let reused = plan.cached();
    let mut planned: Vec<String> = reused.clone();
    planned.extend(would_run(&plan, "rebuild"));
    planned.extend(would_run(&plan, "reassemble"));
    planned.sort();
    assert_eq!(planned, all, "one event per target");
    let reason = plan
        .0
        .iter()
        .find(|e| e["label"] == "//services/web:web")
        .unwrap();
    assert_eq!(reason["kind"], "image");
    assert_eq!(
        reason["reason"],
        format!(
            "it depends on `//bases:runtime-etc`, which would rebuild (file `{BASE_FILE}` changed)"
        )
    );

    let summary = plan_event(&plan);
    assert_eq!(strings(&summary["rebuild"]), ["//bases:runtime-etc"]);
    assert_eq!(strings(&summary["reassemble"]), ABOVE_THE_BASE);
    assert_eq!(strings(&summary["reuse"]), reused);
    assert_eq!(
        summary["counts"],
        serde_json::json!({"rebuild": 1, "reassemble": 5, "reimport": 0, "download": 0, "reuse": 12, "fail": 0})
    );
    assert_eq!(summary["targets"], 18);
    assert!(
        !reused.iter().any(|l| l.starts_with("//bases:runtime-etc")),
        "{reused:?}"
    );
    for own in [
        "//services/api:app",
        "//services/web:site",
        "//services/worker:jobs",
    ] {
        assert!(reused.contains(&own.to_string()), "{own} is reused");
    }

    // The build does exactly what the plan said.
    let build = ws.build(&[]);
    let mut ran = would_run(&plan, "rebuild");
    ran.extend(would_run(&plan, "reassemble"));
    ran.sort();
    assert_eq!(build.ran(), ran);
    assert_eq!(build.cached(), reused);

    // And then there is nothing left to do.
    let noop = dry_run_json(&ws, &[]);
    assert_eq!(strings(&plan_event(&noop)["reuse"]), all);
    assert_eq!(plan_event(&noop)["counts"]["reuse"], 18);
}

#[test]
fn dry_run_human_plan_groups_targets_with_their_reasons() {
    let ws = Ws::copy_of(&spec_examples());
    ws.build(&[]);
    let out = ws.ok(&["build", "--dry-run"]);
    assert_eq!(
        stdout(&out).lines().next().unwrap(),
        "plan: no layer to rebuild, no image to re-assemble, 18 targets reused"
    );
    let mut text = std::fs::read_to_string(ws.path(BASE_FILE)).unwrap();
    text.push_str("# changed\n");
    ws.write(BASE_FILE, &text);
    let out = ws.ok(&["build", "--dry-run", "//services/..."]);
    assert_eq!(stderr(&out), "", "a plan prints no progress");
    insta::assert_snapshot!("base_change_plan", stdout(&out));
    let book =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src/commands.md"))
            .unwrap();
    assert!(
        book.contains(&format!("```text\n{}```", stdout(&out))),
        "book/src/commands.md shows this very plan"
    );
}

#[test]
fn dry_run_after_a_spec_change_writes_no_parse_cache_rows() {
    let ws = Ws::copy_of(&spec_examples());
    ws.build(&[]);
    let spec = std::fs::read_to_string(ws.path("services/api/BUILD.kdl")).unwrap();
    ws.write(
        "services/api/BUILD.kdl",
        &spec.replace("RUST_LOG=\"info\"", "RUST_LOG=\"debug\""),
    );
    let before = Untouched::note(&ws);
    let plan = dry_run_json(&ws, &[]);
    before.check();
    assert_eq!(would_run(&plan, "rebuild"), Vec::<String>::new());
    assert_eq!(
        would_run(&plan, "reassemble"),
        ["//services/api:api", "//services/api:api-migrate"]
    );
    let reason = plan
        .0
        .iter()
        .find(|e| e["label"] == "//services/api:api")
        .unwrap();
    assert_eq!(reason["reason"], "image config changed in the spec");
    assert_eq!(
        ws.build(&[]).ran(),
        ["//services/api:api", "//services/api:api-migrate"]
    );
}

#[test]
fn a_cold_dry_run_plans_everything_and_writes_no_layout() {
    let ws = Ws::copy_of(&spec_examples());
    let plan = dry_run_json(&ws, &["//services/reports"]);
    assert!(!ws.path("imgc-out").exists());
    let summary = plan_event(&plan);
    assert_eq!(
        strings(&summary["rebuild"]),
        ["//bases:runtime-bin", "//services/reports:reports~layer0"]
    );
    assert_eq!(
        strings(&summary["reassemble"]),
        ["//services/reports:reports"]
    );
    assert_eq!(strings(&summary["reimport"]), ["//third_party:vendor-base"]);
    assert_eq!(summary["counts"]["reuse"], 0);
    let vendor = plan
        .0
        .iter()
        .find(|e| e["label"] == "//third_party:vendor-base")
        .unwrap();
    assert_eq!(
        (&vendor["step"], &vendor["reason"]),
        (&"reimport".into(), &"never built".into())
    );
    let build = ws.build(&["//services/reports"]);
    assert_eq!(
        build.ran(),
        [
            "//bases:runtime-bin",
            "//services/reports:reports",
            "//services/reports:reports~layer0",
            "//third_party:vendor-base"
        ]
    );
}

#[test]
fn dry_run_exits_1_when_a_target_cannot_be_planned() {
    let ws = Ws::copy_of(&spec_examples());
    ws.build(&[]);
    std::fs::remove_file(ws.path("services/api/banner.txt")).unwrap();
    let before = Untouched::note(&ws);
    let out = ws.run(&["build", "--dry-run"]);
    before.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (stdout, stderr) = (stdout(&out), stderr(&out));
    assert!(stderr.contains("services/api/banner.txt"), "{stderr}");
    assert!(
        stderr.contains("error: 3 targets cannot be planned: the build would fail"),
        "{stderr}"
    );
    assert!(
        stdout.starts_with(
            "plan: no layer to rebuild, no image to re-assemble, 15 targets reused, \
             3 targets cannot be planned\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n  //services/api:api: dependency `//services/api:app` failed\n"),
        "{stdout}"
    );
}
