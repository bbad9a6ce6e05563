//! OCI conformance: an independent checker, then real tools (umoci, skopeo, runc)
//! on the images of the bundled example workspace.

use crate::support::*;
use std::path::Path;
use std::process::Command;

fn require(tool: &str) {
    assert!(
        have(tool),
        "`{tool}` is not installed: the README's test command installs the tools the tests need"
    );
}

/// Builds a copy of spec-examples once per test.
fn examples() -> (Ws, Events) {
    let ws = Ws::copy_of(&spec_examples());
    let ev = ws.build(&[]);
    (ws, ev)
}

fn image_layouts(ws: &Ws, ev: &Events) -> Vec<(String, std::path::PathBuf)> {
    ev.images()
        .keys()
        .map(|label| {
            let (pkg, name) = label.trim_start_matches("//").split_once(':').unwrap();
            (label.clone(), ws.layout(pkg, name))
        })
        .collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_example_image_passes_the_independent_checker() {
    let (ws, ev) = examples();
    let layouts = image_layouts(&ws, &ev);
    assert!(
        layouts.len() >= 4,
        "expected the base and three services, got {layouts:?}"
    );
    for (label, dir) in layouts {
        if let Err(problems) = imgc::oci::check_layout(&dir) {
            panic!("{label}: {problems:#?}");
        }
    }
}

#[test]
fn every_example_image_unpacks_with_umoci_and_inspects_with_skopeo() {
    require("umoci");
    require("skopeo");
    let (ws, ev) = examples();
    for (label, dir) in image_layouts(&ws, &ev) {
        let bundle = tempfile::tempdir().unwrap();
        let target = bundle.path().join("b");
        let refname = ref_name(&dir);
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{refname}", dir.display()))
            .arg(&target));
        assert!(target.join("rootfs").is_dir(), "{label}");
        let json = run(Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:{refname}", dir.display())));
        let manifest: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(manifest["schemaVersion"], 2, "{label}");
        let cfg = run(Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:{refname}", dir.display())));
        let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
        assert_eq!(cfg["os"], "linux", "{label}");
    }
}

fn ref_name(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Unpacks `layout` with umoci and runs it with runc; returns stdout.
fn runc_run(layout: &Path) -> String {
    let bundle = tempfile::tempdir().unwrap();
    let b = bundle.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", layout.display(), ref_name(layout)))
        .arg(&b));
    // This environment cannot apply rlimits or cgroup resources.
    let cfg_path = b.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    if let Some(p) = cfg["process"].as_object_mut() {
        p.remove("rlimits");
        p.insert("terminal".into(), serde_json::Value::Bool(false));
    }
    if let Some(l) = cfg["linux"].as_object_mut() {
        l.remove("resources");
    }
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let id = format!("imgc-test-{}", std::process::id());
    let root = bundle.path().join("runc-root");
    run(Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&b)
        .arg(&id))
}

#[test]
fn example_images_run_under_runc_and_print_what_their_layers_hold() {
    require("umoci");
    require("runc");
    let (ws, _) = examples();
    // api: `cat` of its banner and, through a symlink, its production config.
    let expected = std::fs::read_to_string(ws.path("services/api/banner.txt")).unwrap()
        + &std::fs::read_to_string(ws.path("services/api/config/production.toml")).unwrap();
    assert_eq!(runc_run(&ws.layout("services/api", "api")), expected);
    // api-migrate inherits everything from api and only changes `cmd`.
    let migrations = ws.path("services/api/migrations");
    let expected = std::fs::read_to_string(migrations.join("0001_init.sql")).unwrap()
        + &std::fs::read_to_string(migrations.join("0002_orders.sql")).unwrap();
    assert_eq!(
        runc_run(&ws.layout("services/api", "api-migrate")),
        expected
    );
}
