//! `imgc push [PATTERN...] [--registry HOST/NAMESPACE] [--output human|json]
//! [-j N] [--dry-run]`: build the selected images, then push them.
//!
//! The images are built first exactly as `imgc build` builds them (same checks,
//! keys, caches and layouts; a no-op when up to date). Each image then goes
//! under every `tag` of its spec, or, with `--registry R`, under
//! `R/<package path>/<target name>:<tag>` for the tag part of each spec tag
//! (`latest` if it has none). An image with neither is an error naming its
//! spec, before anything is built. How blobs and manifests go up is
//! [`crate::registry::push`]'s; the blobs now known in each repository are
//! recorded in the local cache for later cross-repository mounts.

use super::{CmdError, Context, Loaded};
use crate::action::Output;
use crate::cache::{Batch, WorkspaceId};
use crate::cli::{PushArgs, PushOutput};
use crate::hash::Digest;
use crate::registry::client::{Client, ClientOptions, OCI_MANIFEST};
use crate::registry::push::{self, Blob, Image, Progress};
use crate::registry::{Credentials, Reference};
use crate::report::{self, Reporter};
use crate::spec::model::TargetKind;
use petgraph::graph::NodeIndex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// How many repositories per blob the local cache suggests for mounts.
const HINTS_PER_BLOB: usize = 3;

/// A registry client with the environment's credentials (docker config,
/// credential helpers, `IMGC_REGISTRY_*`) and the `--insecure-registry` hosts.
pub fn registry_client(ctx: &Context) -> Result<Client, CmdError> {
    let credentials = Credentials::from_env().map_err(|e| CmdError::Env(e.to_string()))?;
    let mut options = ClientOptions::anonymous();
    options.credentials = Arc::new(credentials);
    options.insecure = ctx.registry.insecure_registry.clone();
    Ok(Client::new(options))
}

pub fn run(ctx: &Context, args: PushArgs) -> Result<(), CmdError> {
    let started = Instant::now();
    let json = args.output == PushOutput::Json;
    let mut loaded = Loaded::load(ctx)?;
    let images = loaded.select_images(&args.patterns, "push", "pushes")?;
    // Where each image goes, before any work.
    let registry = args.registry.as_deref().map(parse_registry).transpose()?;
    let mut targets: BTreeMap<NodeIndex, Vec<Reference>> = BTreeMap::new();
    let mut problems = Vec::new();
    for n in &images {
        match references(&loaded, *n, registry.as_deref()) {
            Ok(r) => {
                targets.insert(*n, r);
            }
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(CmdError::Failed(problems.join("\n")));
    }

    // Build them, as `imgc build` does.
    let within = loaded.graph.closure(&images, petgraph::Direction::Outgoing);
    loaded.check_policy(&within)?;
    loaded.refuse_packages(&within)?;
    super::pin::check_pinned(&loaded, &within, Some(ctx))?;
    let settings =
        super::build::settings(ctx, &loaded, args.jobs, false, super::build::Run::Build)?;
    let jobs = settings.jobs;
    let mut reporter = Reporter::new(json, &loaded.ws.root, loaded.ws.sources.clone());
    let summary = super::build::run_engine(ctx, &mut loaded, &images, settings, &mut reporter)?;
    reporter.summary(&summary.totals());
    if summary.failed > 0 {
        return Err(CmdError::Failed(format!(
            "{} target{} failed: nothing pushed",
            summary.failed,
            if summary.failed == 1 { "" } else { "s" }
        )));
    }

    let mut stores = super::cache::Stores::open(ctx)?;
    if let Some(w) = stores.warning.take() {
        report::warning(&w);
    }
    // Reported in selection order; [`push::push_images`] starts bases first and
    // makes an image wait for a blob another is uploading.
    let mut order: Vec<(String, NodeIndex)> = Vec::new();
    let mut outputs = BTreeMap::new();
    for n in &images {
        let Some(Output::Image(out)) = summary.outcomes.get(n).and_then(|o| o.output()) else {
            return Err(CmdError::Failed(format!(
                "`{}` was not built: nothing pushed",
                loaded.graph.node(*n).label
            )));
        };
        order.push((loaded.graph.node(*n).label.to_string(), *n));
        outputs.insert(*n, out.clone());
    }

    if args.dry_run {
        for (label, n) in &order {
            let refs: Vec<String> = targets[n].iter().map(|r| r.to_string()).collect();
            report::would_push(json, label, &outputs[n].manifest, &refs);
        }
        return Ok(());
    }

    let mut list = Vec::new();
    for (label, n) in &order {
        let out = &outputs[n];
        let refs = &targets[n];
        let mut digests: Vec<Digest> = out.layers.iter().map(|l| l.digest).collect();
        digests.push(out.config);
        // (a) the repository of the registry import the image is built on.
        let mut hints: BTreeMap<Digest, Vec<(String, String)>> = BTreeMap::new();
        if let Some((_, base)) = loaded.graph.registry_base(*n) {
            for d in &digests {
                hints
                    .entry(*d)
                    .or_default()
                    .push((base.registry.clone(), base.repository.clone()));
            }
        }
        // (c) what the local cache remembers of earlier pushes and pulls.
        let mut registries: Vec<&str> = refs.iter().map(|r| r.registry.as_str()).collect();
        registries.dedup();
        for reg in registries {
            let known = stores
                .cache
                .registry_repositories(reg, &digests, HINTS_PER_BLOB)
                .map_err(|e| CmdError::Env(e.to_string()))?;
            for (d, repos) in known {
                let h = hints.entry(d).or_default();
                h.extend(repos.into_iter().map(|r| (reg.to_string(), r)));
            }
        }
        let manifest_media_type = stores
            .cas
            .read(&out.manifest)
            .ok()
            .and_then(|b| media_type_of(&b))
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        list.push(Image {
            label: label.clone(),
            references: refs.clone(),
            manifest: Blob {
                digest: out.manifest,
                size: out.manifest_size,
            },
            manifest_media_type,
            config: Blob {
                digest: out.config,
                size: out.config_size,
            },
            layers: out
                .layers
                .iter()
                .map(|l| Blob {
                    digest: l.digest,
                    size: l.size,
                })
                .collect(),
            mount_hints: hints,
        });
    }

    let client = registry_client(ctx)?;
    let progress = |p: Progress<'_>| match p {
        Progress::Repository {
            label,
            reference,
            blobs,
        } => report::push_progress(&format!(
            "pushing `{label}` to {reference} ({blobs} blob{})",
            if blobs == 1 { "" } else { "s" }
        )),
        Progress::Uploading {
            label,
            digest,
            size,
        } => report::push_progress(&format!(
            "  uploading {digest} ({}) for `{label}`",
            report::bytes(size)
        )),
    };
    let results = push::push_images(&client, &stores.cas, &list, jobs, &progress);

    let ws_id = WorkspaceId::of_root(
        &std::fs::canonicalize(&loaded.ws.root).unwrap_or_else(|_| loaded.ws.root.clone()),
    );
    let mut batch = Batch::new(ws_id, std::time::SystemTime::now());
    let (mut pushed, mut failed, mut bytes) = (0, 0, 0);
    let mut auth_failure = None;
    for r in &results {
        match r {
            Ok(p) => {
                pushed += 1;
                bytes += p.bytes_uploaded;
                for (registry, repository, digests) in &p.known {
                    batch.registry_blobs(registry, repository, digests);
                }
                let refs: Vec<String> = p.references.iter().map(|r| r.to_string()).collect();
                report::pushed(
                    json,
                    &report::PushedImage {
                        label: &p.label,
                        reference: &p.reference.to_string(),
                        digest: &p.digest,
                        references: &refs,
                        blobs: p.blobs,
                        blobs_uploaded: p.blobs_uploaded,
                        blobs_mounted: p.blobs_mounted,
                        blobs_existing: p.blobs_existing,
                        bytes_uploaded: p.bytes_uploaded,
                        manifests_put: p.manifests_put,
                    },
                );
            }
            Err(e) => {
                failed += 1;
                if e.unauthorized {
                    auth_failure = Some(());
                }
                report::push_failed(json, &e.label, &e.reference, &e.to_string());
            }
        }
    }
    // Only a hint for later pushes: a failure to record it fails nothing.
    if let Err(e) = stores.cache.commit(&mut batch) {
        report::warning(&format!("cannot record the pushed blobs in the cache: {e}"));
    }
    report::push_summary(json, pushed, failed, bytes, started.elapsed());
    if failed > 0 {
        let hint = if auth_failure.is_some() {
            " (see the errors above for how to log in)"
        } else {
            ""
        };
        return Err(CmdError::Failed(format!(
            "{failed} image{} not pushed{hint}",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// `--registry HOST/NAMESPACE` (or just `HOST`): checked by parsing a reference
/// under it.
fn parse_registry(r: &str) -> Result<String, CmdError> {
    let trimmed = r.trim_end_matches('/');
    let bad = |why: String| CmdError::Usage(format!("`--registry {r}`: {why}"));
    if let Some((_, rest)) = r.split_once("://") {
        let host = rest.split('/').next().unwrap_or(rest);
        return Err(bad(format!(
            "references have no scheme: give `{}` (imgc tries https; for a registry that speaks only plain HTTP, add `--insecure-registry {host}`)",
            rest.trim_end_matches('/'),
        )));
    }
    if !trimmed.contains('/')
        && !trimmed.contains('.')
        && !trimmed.contains(':')
        && trimmed != "localhost"
    {
        return Err(bad(
            "name a registry host (`registry.example.com`, `127.0.0.1:5000`) and optionally a namespace".into(),
        ));
    }
    let probe = Reference::parse(&format!("{trimmed}/x")).map_err(|e| bad(e.to_string()))?;
    if probe.tag.is_some() || probe.digest.is_some() || !probe.repository.ends_with('x') {
        return Err(bad(
            "give a registry and namespace, without tag or digest".into()
        ));
    }
    Ok(trimmed.to_string())
}

/// Where image `n` goes: its spec's tags, or the `--registry` names.
fn references(
    loaded: &Loaded,
    n: NodeIndex,
    registry: Option<&str>,
) -> Result<Vec<Reference>, String> {
    let node = loaded.graph.node(n);
    let TargetKind::Image(spec) = &node.target.kind else {
        return Ok(Vec::new());
    };
    let sources = &loaded.ws.sources;
    let at = |offset: usize| {
        let (line, _) = sources.line_col(node.file, offset);
        format!("{}:{line}", sources.get(node.file).path)
    };
    let label = &node.label;
    let mut spec_refs = Vec::new();
    for t in &spec.tags {
        if let Some((_, rest)) = t.value.split_once("://") {
            let host = rest.split('/').next().unwrap_or(rest);
            return Err(format!(
                "`{label}` ({}): the tag `{}` is a URL; references have no scheme: write `{rest}` (for a registry that speaks plain HTTP, add `--insecure-registry {host}`)",
                at(t.span.offset()),
                t.value
            ));
        }
        let r = Reference::parse(&t.value).map_err(|e| {
            format!(
                "`{label}` ({}): its tag is not a valid reference: {e}",
                at(t.span.offset())
            )
        })?;
        if r.digest.is_some() {
            return Err(format!(
                "`{label}` ({}): the tag `{}` names a digest; a push needs a tag",
                at(t.span.offset()),
                t.value
            ));
        }
        spec_refs.push(r);
    }
    let mut out: Vec<Reference> = Vec::new();
    match registry {
        Some(reg) => {
            let mut tags: Vec<String> = spec_refs
                .iter()
                .map(|r| r.tag.clone().unwrap_or_else(|| "latest".into()))
                .collect();
            if tags.is_empty() {
                tags.push("latest".into());
            }
            let path = if label.package().is_empty() {
                label.name().to_string()
            } else {
                format!("{}/{}", label.package(), label.name())
            };
            for tag in tags {
                let written = format!("{reg}/{path}:{tag}");
                let r = Reference::parse(&written).map_err(|e| {
                    format!(
                        "`{label}` ({}): cannot be pushed under `--registry`: {e}",
                        at(node.target.span.offset())
                    )
                })?;
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        None => {
            if spec_refs.is_empty() {
                return Err(format!(
                    "`{label}` ({}) has no `tag` to push to: add one to its spec, or pass `--registry HOST/NAMESPACE`",
                    at(node.target.span.offset())
                ));
            }
            for mut r in spec_refs {
                if r.tag.is_none() {
                    r.tag = Some("latest".into());
                }
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

/// The `mediaType` a manifest declares.
fn media_type_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct M {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<M>(bytes).ok()?.media_type
}
