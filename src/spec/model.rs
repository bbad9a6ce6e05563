//! The typed, spanned model of the spec language (SPEC.md).
//!
//! Every value a user wrote keeps the span it came from, so later stages (graph,
//! build) can point at it. Nothing here does IO. Strings are as written;
//! validated forms (labels, modes, owners) are parsed at lowering time.

use crate::label::{Label, Pattern};
use crate::reference::Reference;
use miette::SourceSpan;
use serde::{Deserialize, Serialize};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spanned<T> {
    pub value: T,
    pub span: SourceSpan,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: SourceSpan) -> Self {
        Spanned { value, span }
    }
}

/// Index of a source file in [`crate::diag::Sources`].
pub type FileId = usize;

/// Layer compression, as configured in the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// An OS/architecture pair such as `linux/amd64` or `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?.to_string();
        let architecture = it.next().filter(|x| !x.is_empty())?.to_string();
        let variant = match it.next() {
            Some(v) if !v.is_empty() => Some(v.to_string()),
            Some(_) => return None,
            None => None,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Platform {
            os,
            architecture,
            variant,
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The `workspace` node of `imgc.kdl`, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceConfig {
    pub output_dir: String,
    /// Where `output-dir` was written in imgc.kdl, if it was (for diagnostics).
    #[serde(default)]
    pub output_dir_span: Option<SourceSpan>,
    pub source_date_epoch: u64,
    pub compression: Compression,
    pub platform: Platform,
    pub remote_cache: Option<String>,
    /// The `policy` node (a sibling of `workspace` in imgc.kdl), empty if none.
    #[serde(default)]
    pub policy: Policy,
    /// The `debian` repositories of imgc.kdl, in the order written (names unique).
    #[serde(default)]
    pub debian: Vec<DebianRepo>,
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        WorkspaceConfig {
            output_dir: "imgc-out".to_string(),
            output_dir_span: None,
            source_date_epoch: 0,
            compression: Compression::Gzip,
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            remote_cache: None,
            policy: Policy::default(),
            debian: Vec::new(),
        }
    }
}

/// A `debian "NAME" { url ...; suite ...; components ...; arch ...; keyring ... }`
/// node of imgc.kdl: a Debian repository that `packages` requests resolve against
/// (see `crate::packages`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianRepo {
    /// The name `packages ... from="NAME"` refers to.
    pub name: Spanned<String>,
    /// The repository's base URL (`http://` or `https://`), without a trailing `/`.
    pub url: Spanned<String>,
    /// The directory below `dists/` (`bookworm`, `stable`...).
    pub suite: Spanned<String>,
    /// The components whose indexes are read (`main`...), in the order written.
    pub components: Spanned<Vec<String>>,
    /// The Debian architecture (`amd64`, `arm64`...); packages of `all` count too.
    pub arch: Spanned<String>,
    /// OpenPGP public keys (binary or armored) that must have signed the Release:
    /// a path relative to the workspace root, normalized. `None`: not verified.
    pub keyring: Option<Spanned<String>>,
    /// The node, without its children block.
    pub span: SourceSpan,
}

/// The `policy` node of `imgc.kdl`: rules on the target graph, checked by
/// [`crate::policy`] (`imgc check`, `imgc build`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The `require-base` rules, in the order written. An image in the scope of
    /// several must satisfy each of them.
    pub require_base: Vec<RequireBase>,
}

/// `require-base "LABEL" for="PATTERN"`: every image the pattern selects is built
/// on `LABEL`, directly or through other images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequireBase {
    /// The required base: an image or an import (checked against the graph).
    pub base: Spanned<Label>,
    /// `for=`, absolute; `None` when not written: every target (`//...`).
    pub scope: Option<Spanned<Pattern>>,
    /// The rule's node, without a children block (for "the policy in imgc.kdl:5").
    pub span: SourceSpan,
}

impl RequireBase {
    /// The targets the rule is about: `for=`, else `//...`.
    pub fn pattern(&self) -> Pattern {
        match &self.scope {
            Some(p) => p.value.clone(),
            None => Pattern::Recursive(String::new()),
        }
    }
}

/// A file mode, parsed from an octal string (`"0644"`, `"4755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mode(pub u32);

impl Mode {
    /// Parses 3 or 4 octal digits (optionally with a leading `0o`), at most `07777`.
    pub fn parse(s: &str) -> Option<Mode> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return None;
        }
        let v = u32::from_str_radix(digits, 8).ok()?;
        (v <= 0o7777).then_some(Mode(v))
    }
}

/// A numeric owner, `"UID:GID"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };

    pub fn parse(s: &str) -> Option<Owner> {
        let (u, g) = s.split_once(':')?;
        let num = |x: &str| -> Option<u32> {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            x.parse().ok()
        };
        Some(Owner {
            uid: num(u)?,
            gid: num(g)?,
        })
    }
}

/// One parsed BUILD.kdl.
#[derive(Debug, Clone)]
pub struct Package {
    /// Package path relative to the workspace root (`""` for the root).
    pub path: String,
    pub file: FileId,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// The target's name; inline layers get a generated name (see [`inline_layer_name`]).
    pub name: Spanned<String>,
    /// Span of the whole node.
    pub span: SourceSpan,
    pub kind: TargetKind,
}

/// The name given to the `n`th (0-based) inline layer of image `image`.
/// `~` is not allowed in user-written names, so it cannot clash.
pub fn inline_layer_name(image: &str, n: usize) -> String {
    format!("{image}~layer{n}")
}

/// Targets are few (one per spec node), so the size difference between variants
/// does not matter; boxing would only add noise to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TargetKind {
    Layer(LayerSpec),
    Image(ImageSpec),
    Import(ImportSpec),
    HttpFile(HttpFileSpec),
    /// One locked Debian package's layer: generated from `imgc.lock`, never
    /// written in a spec (see `crate::debian::plan`).
    DebPackage(DebPackageSpec),
}

impl TargetKind {
    /// Drops the spare capacity of the spec's lists: a spec is kept for the whole
    /// command, one per target of the workspace, and a list grown by pushes holds
    /// room for several entries (a layer's list of entries of about 200 bytes each).
    pub fn shrink_to_fit(&mut self) {
        match self {
            TargetKind::Layer(l) => {
                l.entries.shrink_to_fit();
                l.packages.shrink_to_fit();
            }
            TargetKind::Image(i) => {
                i.layers.shrink_to_fit();
                i.env.shrink_to_fit();
                i.expose.shrink_to_fit();
                i.volume.shrink_to_fit();
                i.labels.shrink_to_fit();
                i.annotations.shrink_to_fit();
                i.tags.shrink_to_fit();
                i.packages.shrink_to_fit();
            }
            TargetKind::Import(_) | TargetKind::HttpFile(_) | TargetKind::DebPackage(_) => {}
        }
    }

    /// The target's `packages` nodes (none for an import, an http-file or a package layer).
    pub fn packages(&self) -> &[PackagesNode] {
        match self {
            TargetKind::Layer(l) => &l.packages,
            TargetKind::Image(i) => &i.packages,
            TargetKind::Import(_) | TargetKind::HttpFile(_) | TargetKind::DebPackage(_) => &[],
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            TargetKind::Layer(_) => "layer",
            TargetKind::Image(_) => "image",
            TargetKind::Import(_) => "import",
            TargetKind::HttpFile(_) => "http-file",
            TargetKind::DebPackage(_) => "package",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LayerSpec {
    pub entries: Vec<LayerEntry>,
    /// Default owner of every entry of the layer (`owner "UID:GID"`).
    pub owner: Option<Spanned<Owner>>,
    /// `packages` nodes, in the order written (locked by `imgc lock`).
    #[serde(default)]
    pub packages: Vec<PackagesNode>,
}

/// `packages "name" "name=version" ... from="REPO" recommends=#false`: Debian
/// packages for a layer or an image, resolved by `imgc lock` into `imgc.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagesNode {
    /// The requests, in the order written (no name twice in one target).
    pub requests: Vec<Spanned<PackageRequest>>,
    /// `from=`: the name of a `debian` repository of imgc.kdl; `None` when not
    /// written (allowed when imgc.kdl declares exactly one).
    pub from: Option<Spanned<String>>,
    /// `recommends=#true`: Recommends are installed too (default: not).
    pub recommends: bool,
    /// The node, without a children block.
    pub span: SourceSpan,
}

/// One requested package: a name, and optionally an exact version (`name=version`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackageRequest {
    pub name: String,
    pub version: Option<String>,
}

impl PackageRequest {
    /// Parses `name` or `name=version`: a Debian package name (lowercase letters,
    /// digits, `+ - .`, at least two characters, starting with a letter or digit)
    /// and a Debian version (`[epoch:]upstream[-revision]`).
    pub fn parse(s: &str) -> Result<PackageRequest, String> {
        let (name, version) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        check_package_name(name)?;
        let version = match version {
            None => None,
            Some(v) => {
                check_package_version(v)?;
                Some(v.to_string())
            }
        };
        Ok(PackageRequest {
            name: name.to_string(),
            version,
        })
    }
}

impl std::fmt::Display for PackageRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(v) = &self.version {
            write!(f, "={v}")?;
        }
        Ok(())
    }
}

/// Debian policy 5.6.1: `[a-z0-9][a-z0-9+.-]+`.
fn check_package_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the package name is empty".into());
    }
    if let Some((_, arch)) = name.split_once(':') {
        return Err(format!(
            "`{name}` has an architecture qualifier (`:{arch}`): the repository's `arch` applies to every package"
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c);
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() < 2 || !first_ok || !name.chars().all(ok_char) {
        return Err(format!(
            "`{name}` is not a Debian package name (lowercase letters, digits, `+`, `-` and `.`, \
             at least two characters, starting with a letter or digit)"
        ));
    }
    Ok(())
}

/// A Debian version (`[epoch:]upstream[-revision]`), as dpkg orders them.
fn check_package_version(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("the version after `=` is empty".into());
    }
    if v.ends_with('-') {
        return Err(format!(
            "`{v}` is not a Debian version: the revision after `-` is empty"
        ));
    }
    match debian_packaging::package_version::PackageVersion::parse(v) {
        Ok(_)
            if v.split(':')
                .next_back()
                .is_some_and(|u| u.starts_with(|c: char| c.is_ascii_digit())) =>
        {
            Ok(())
        }
        Ok(_) => Err(format!(
            "`{v}` is not a Debian version: the upstream version must start with a digit"
        )),
        Err(e) => Err(format!("`{v}` is not a Debian version: {e}")),
    }
}

/// Where a `copy` takes its files from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopySource {
    /// A file or directory, relative to the package directory (normalized, `/`-separated).
    Path(String),
    /// A glob relative to the package directory (contains `*`, `?`, `[` or `{`).
    Glob(String),
    /// The outputs of another target.
    Target(Label),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LayerEntry {
    Copy {
        src: Spanned<CopySource>,
        /// Destination as written: absolute; ending in `/` means "into this directory".
        to: Spanned<String>,
        mode: Option<Spanned<Mode>>,
        owner: Option<Spanned<Owner>>,
        /// Globs relative to the package directory.
        exclude: Vec<Spanned<String>>,
        span: SourceSpan,
    },
    Text {
        path: Spanned<String>,
        content: String,
        mode: Option<Spanned<Mode>>,
        owner: Option<Spanned<Owner>>,
        span: SourceSpan,
    },
    Dir {
        path: Spanned<String>,
        mode: Option<Spanned<Mode>>,
        owner: Option<Spanned<Owner>>,
        span: SourceSpan,
    },
    Symlink {
        path: Spanned<String>,
        target: Spanned<String>,
        owner: Option<Spanned<Owner>>,
        span: SourceSpan,
    },
}

/// What an image is built on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BaseRef {
    Scratch,
    Target(Label),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageSpec {
    /// `None` if the spec has no `from` (an error reported by the parser).
    pub from: Option<Spanned<BaseRef>>,
    /// Layers in the order written: `layers` labels and inline `layer {}` blocks
    /// (lowered into separate layer targets named by [`inline_layer_name`]).
    pub layers: Vec<Spanned<Label>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// In order written; a later key replaces an earlier one.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Normalized to `PORT/PROTO` (`"9090"` becomes `"9090/tcp"`).
    pub expose: Vec<String>,
    pub volume: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub stop_signal: Option<String>,
    pub tags: Vec<Spanned<String>>,
    /// `packages` nodes, in the order written (locked by `imgc lock`).
    #[serde(default)]
    pub packages: Vec<PackagesNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportSource {
    /// An OCI image layout directory, relative to the package directory.
    OciLayout(String),
    /// A `docker save` tarball, relative to the package directory.
    DockerArchive(String),
    /// An image in a registry: `registry "host/repo:tag@sha256:..."`. The parser
    /// accepts a reference without a digest (so `imgc pin` can find it); `check`
    /// and `build` refuse it ([`crate::diag::Code::NotPinned`]).
    Registry(RegistryRef),
}

impl ImportSource {
    /// The reference of a `registry` import.
    pub fn registry(&self) -> Option<&Reference> {
        match self {
            ImportSource::Registry(r) => Some(&r.reference),
            _ => None,
        }
    }
}

/// A registry reference as written in a spec, and parsed.
///
/// Stored (parse cache) as the text written; read back by parsing it again, so
/// the two can never disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// The string as written (`debian:12@sha256:...`), which `imgc pin` rewrites.
    pub written: String,
    pub reference: Reference,
}

impl RegistryRef {
    pub fn parse(written: &str) -> Result<RegistryRef, crate::reference::RefError> {
        Ok(RegistryRef {
            written: written.to_string(),
            reference: Reference::parse(written)?,
        })
    }
}

impl Serialize for RegistryRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

impl<'de> Deserialize<'de> for RegistryRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RegistryRef, D::Error> {
        let written = String::deserialize(d)?;
        RegistryRef::parse(&written).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportSpec {
    pub source: Spanned<ImportSource>,
}

/// `http-file "NAME" url="..." sha256="..."`: one file fetched over HTTP(S),
/// pinned by its sha256 (and optionally its size). The URL says where to fetch,
/// the digest what is fetched: only the digest (and size) enter the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpFileSpec {
    /// `http://` or `https://`, with a host and no credentials (checked by the parser).
    pub url: Spanned<String>,
    pub sha256: Spanned<crate::hash::Digest>,
    /// The expected size in bytes, when given: checked while downloading.
    pub size: Option<Spanned<u64>>,
    /// `executable=#true`: the file's default mode in a layer is 0755, not 0644.
    pub executable: bool,
}

/// A package layer's target (generated from `imgc.lock`, see
/// `crate::debian::plan`): which `.deb` it is made of and where to fetch it.
/// Only `sha256` and `size` enter its key; the rest names it in messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebPackageSpec {
    /// The `debian` repository's name.
    pub repository: String,
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The repository's URL joined with `filename`.
    pub url: String,
    /// The `.deb`'s path below the repository's URL, as the lock gives it.
    pub filename: String,
    pub size: u64,
    pub sha256: crate::hash::Digest,
}
