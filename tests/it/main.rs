//! The integration test binary: drives the real `imgc` binary on fixture
//! workspaces in temp dirs, each with its own cache directory.

mod support;

mod affected;
mod build;
mod cache_gc;
mod cli;
mod completions;
mod concurrency;
mod confinement;
mod conformance;
mod debian_build;
mod debian_lock;
mod determinism;
mod diagnostics;
mod differential;
mod export;
mod http_file;
mod imports;
mod layers;
mod parse_cache;
mod plan;
mod policy;
mod progress;
mod registry_auth;
mod registry_import;
mod registry_push;
mod remote_dir;
mod remote_http;
mod remote_http_server;
mod report;
mod robustness;
mod safety;
mod snapshot;
