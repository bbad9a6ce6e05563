//! Workspace discovery and loading.
//!
//! The workspace root is the nearest directory at or above the starting point that
//! holds `imgc.kdl` (as git looks for `.git`). Every directory below it holding a
//! `BUILD.kdl` is a package; the output directory, `.git` and hidden directories
//! are not searched. Packages are returned sorted by path, so everything that
//! follows is deterministic whatever order the filesystem lists entries in.
//!
//! This module reads files; it hands their text to the pure [`crate::spec`] parser
//! and collects every diagnostic of every file.

use crate::diag::{Code, Diag, Sources};
use crate::spec::model::{Package, WorkspaceConfig};
use crate::spec::parse::{parse_build_file, parse_workspace_file};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

pub const WORKSPACE_FILE: &str = "imgc.kdl";
pub const BUILD_FILE: &str = "BUILD.kdl";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("no `{WORKSPACE_FILE}` found in `{0}` or any directory above it")]
    NotFound(PathBuf),
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A loaded workspace: its root, configuration, every parsed package, and the
/// sources of every file read (for rendering diagnostics).
#[derive(Debug)]
pub struct Workspace {
    pub root: PathBuf,
    pub config: WorkspaceConfig,
    pub sources: Sources,
    /// Sorted by package path.
    pub packages: Vec<Package>,
}

/// Finds the workspace root at or above `start`.
pub fn find_root(start: &Path) -> Result<PathBuf, WorkspaceError> {
    let start = std::path::absolute(start).map_err(|source| WorkspaceError::Io {
        path: start.to_path_buf(),
        source,
    })?;
    let mut dir = start.as_path();
    loop {
        if dir.join(WORKSPACE_FILE).is_file() {
            return Ok(dir.to_path_buf());
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => return Err(WorkspaceError::NotFound(start)),
        }
    }
}

/// The package path (`a/b`, `""` for the root) of directory `dir` inside `root`.
/// `None` if `dir` is outside the workspace.
pub fn package_of_dir(root: &Path, dir: &Path) -> Option<String> {
    let dir = std::path::absolute(dir).ok()?;
    let rel = dir.strip_prefix(root).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Some(parts.join("/"))
}

/// Lists the package paths below `root`, sorted.
pub fn discover_packages(root: &Path, output_dir: &str) -> Result<Vec<String>, WorkspaceError> {
    let output_dir = Path::new(output_dir.trim_end_matches('/'));
    let mut packages = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            if e.depth() == 0 {
                return true;
            }
            if !e.file_type().is_dir() {
                return e.file_name() == BUILD_FILE;
            }
            let name = e.file_name().to_string_lossy();
            if name.starts_with('.') || name == "imgc-out" {
                return false;
            }
            e.path()
                .strip_prefix(root)
                .is_ok_and(|rel| rel != output_dir)
        });
    for entry in walker {
        let entry = entry.map_err(|e| WorkspaceError::Io {
            path: e.path().unwrap_or(root).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk error")),
        })?;
        if entry.file_type().is_file() && entry.file_name() == BUILD_FILE {
            let dir = entry.path().parent().unwrap_or(root);
            if let Some(pkg) = package_of_dir(root, dir) {
                packages.push(pkg);
            }
        }
    }
    packages.sort();
    Ok(packages)
}

fn read(path: &Path) -> Result<String, WorkspaceError> {
    std::fs::read_to_string(path).map_err(|source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Workspace-relative path of a package's BUILD.kdl, `/`-separated.
pub fn build_file_path(package: &str) -> String {
    if package.is_empty() {
        BUILD_FILE.to_string()
    } else {
        format!("{package}/{BUILD_FILE}")
    }
}

/// Loads and parses the whole workspace at `root`. IO errors stop the load;
/// spec errors are collected and returned beside the (partial) workspace.
pub fn load(root: &Path) -> Result<(Workspace, Vec<Diag>), WorkspaceError> {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let ws_text = read(&root.join(WORKSPACE_FILE))?;
    let ws_file = sources.add(WORKSPACE_FILE, ws_text.clone());
    let (config, ws_diags) = parse_workspace_file(ws_file, &ws_text);
    diags.extend(ws_diags);

    let package_paths = discover_packages(root, &config.output_dir)?;
    let texts: Vec<(String, String)> = package_paths
        .par_iter()
        .map(|pkg| Ok((pkg.clone(), read(&root.join(build_file_path(pkg)))?)))
        .collect::<Result<_, WorkspaceError>>()?;
    let ids: Vec<usize> = texts
        .iter()
        .map(|(pkg, text)| sources.add(build_file_path(pkg), text.clone()))
        .collect();
    let parsed: Vec<(Package, Vec<Diag>)> = texts
        .par_iter()
        .zip(ids.par_iter())
        .map(|((pkg, text), &file)| {
            let (targets, d) = parse_build_file(file, pkg, text);
            (
                Package {
                    path: pkg.clone(),
                    file,
                    targets,
                },
                d,
            )
        })
        .collect();
    let mut packages = Vec::with_capacity(parsed.len());
    for (p, d) in parsed {
        packages.push(p);
        diags.extend(d);
    }
    Ok((
        Workspace {
            root: root.to_path_buf(),
            config,
            sources,
            packages,
        },
        diags,
    ))
}

/// A diagnostic for a workspace that could not be found.
pub fn not_found_diag(err: &WorkspaceError) -> Diag {
    Diag::new(Code::Workspace, err.to_string()).help(format!(
        "run imgc inside a workspace, or pass `-C DIR`; a workspace root holds `{WORKSPACE_FILE}`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_skips_hidden_and_output_dirs_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["b", "a/x", ".hidden", "imgc-out/a", "out/z", "a/.git"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            std::fs::write(root.join(d).join(BUILD_FILE), "").unwrap();
        }
        std::fs::write(root.join(WORKSPACE_FILE), "").unwrap();
        assert_eq!(
            discover_packages(root, "imgc-out").unwrap(),
            vec!["a/x", "b", "out/z"]
        );
        assert_eq!(discover_packages(root, "out").unwrap(), vec!["a/x", "b"]);
        assert_eq!(
            find_root(&root.join("a/x")).unwrap(),
            std::path::absolute(root).unwrap()
        );
        assert_eq!(
            package_of_dir(&std::path::absolute(root).unwrap(), &root.join("a/x")).unwrap(),
            "a/x"
        );
    }
}
