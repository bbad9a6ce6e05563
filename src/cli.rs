//! Command-line definitions (clap derive) only: raw flags, no behaviour.
//! [`crate::commands`] resolves them into settings and does the work.
//!
//! The doc comments below are `--help` text written for a terminal
//! (`HOST[:PORT]`, `<package path>`), not rustdoc markup.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "imgc",
    version,
    about = "A declarative, incremental OCI image compiler for monorepos",
    long_about = "imgc compiles KDL image specs (imgc.kdl at the workspace root, BUILD.kdl in each package) \
                  into reproducible OCI images, rebuilding only what changed.",
    after_help = "Target patterns: //services/api:image, //services/api (= :api), //services/api:all, \
                  //services/... , //... , relative forms (:image, api:image, ...). \
                  Subtract with -PATTERN after `--`: imgc build -- //... -//legacy/..."
)]
pub struct Cli {
    /// Run as if imgc was started in DIR.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub directory: Option<PathBuf>,

    /// Cache directory [default: $IMGC_CACHE_DIR, else ~/.cache/imgc].
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    #[command(flatten)]
    pub remote: RemoteArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The remote cache flags (global). Environment values are never shown in help:
/// a URL may carry credentials.
#[derive(Debug, Clone, Default, Args)]
pub struct RemoteArgs {
    /// Remote cache: a shared directory, or an http:// URL speaking Bazel's HTTP
    /// cache protocol [default: `remote-cache` in imgc.kdl].
    #[arg(
        long,
        global = true,
        value_name = "DIR|URL",
        env = "IMGC_REMOTE_CACHE",
        hide_env_values = true
    )]
    pub remote_cache: Option<String>,

    /// Use no remote cache, whatever the flags, environment or imgc.kdl say.
    #[arg(long, global = true)]
    pub no_remote_cache: bool,

    /// Whether builds read from and write to the remote cache [default: read-write].
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "MODE",
        env = "IMGC_REMOTE_CACHE_MODE",
        hide_env_values = true
    )]
    pub remote_cache_mode: Option<RemoteCacheMode>,

    /// A file whose first line is `user:password`, for an HTTP remote cache
    /// (wins over credentials in the URL).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "IMGC_REMOTE_CACHE_CREDENTIALS",
        hide_env_values = true
    )]
    pub remote_cache_credentials: Option<PathBuf>,
}

/// The registry flags (global): for `registry` imports, `imgc pin` and `imgc push`.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP to registry HOST[:PORT] when it does not speak TLS
    /// (https is tried first; repeatable). Loopback registries (localhost,
    /// 127.0.0.0/8, ::1) need no flag.
    #[arg(long, global = true, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RemoteCacheMode {
    /// Fetch hits, upload results.
    ReadWrite,
    /// Fetch hits, never write (for untrusted builds, such as pull requests).
    Read,
    /// Upload results, never fetch.
    Write,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build images (and everything they need), incrementally.
    Build(BuildArgs),
    /// Validate specs, the target graph and the policy without building.
    Check(CheckArgs),
    /// Query the target graph.
    #[command(subcommand)]
    Query(QueryCommand),
    /// Tell why a target would rebuild.
    Explain(ExplainArgs),
    /// Inspect, collect and verify the cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Remove what imgc wrote in the output directory (and, with --cache, the local cache).
    Clean(CleanArgs),
    /// Report how the selected images share layers, and what they store.
    Report(ReportArgs),
    /// Print a shell completion script on stdout (bash, zsh or fish).
    Completions(CompletionsArgs),
    /// Print imgc's man page (roff) on stdout: `imgc man | man -l -`.
    Man,
    /// List the images that changed files affect (for CI).
    Affected(AffectedArgs),
    /// Pin `registry` imports to the digest their tag points at now (rewrites the specs).
    Pin(PinArgs),
    /// Resolve the `packages` requests against the Debian repositories; write imgc.lock.
    Lock(LockArgs),
    /// Build the selected images and push them to their registries.
    Push(PushArgs),
    /// Build an image and write it as an archive for `docker load` or `podman load`.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Target patterns [default: //...].
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Number of parallel jobs, at most 1024 [default: number of CPUs].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,

    /// Keep building independent targets after a failure.
    #[arg(short = 'k', long)]
    pub keep_going: bool,

    /// How to report progress and results on stdout.
    #[arg(long, value_enum, default_value_t = MessageFormat::Human)]
    pub message_format: MessageFormat,

    /// Print the plan (which layers would be rebuilt, which images re-assembled,
    /// what is reused) and build nothing: nothing runs, nothing is written.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MessageFormat {
    /// Progress on stderr, a summary line.
    Human,
    /// One JSON event per line on stdout.
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Target patterns [default: //...].
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Targets matching the patterns.
    Targets(QueryArgs),
    /// The matching targets and everything they depend on.
    Deps(QueryArgs),
    /// The matching targets and everything in the workspace that depends on them.
    Rdeps(QueryArgs),
    /// The images that contain a Debian package (from imgc.lock), for security fixes.
    Package(QueryPackageArgs),
}

#[derive(Debug, Args)]
pub struct QueryPackageArgs {
    /// The Debian package's name, e.g. `libssl3`.
    #[arg(value_name = "PACKAGE")]
    pub package: String,

    /// Only images whose version of the package is below this one (dpkg's order),
    /// e.g. the first version with a fix.
    #[arg(long, value_name = "VERSION")]
    pub below: Option<String>,

    /// The images to look at [default: //...].
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Output format: `label` prints `LABEL PACKAGE VERSION` per image, `json` an array.
    #[arg(long, value_enum, default_value_t = QueryOutput::Label)]
    pub output: QueryOutput,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Target patterns.
    #[arg(value_name = "PATTERN", required = true)]
    pub patterns: Vec<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = QueryOutput::Label)]
    pub output: QueryOutput,

    /// Only list targets of this kind.
    #[arg(long, value_enum)]
    pub kind: Option<TargetKindFilter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryOutput {
    /// One label per line.
    Label,
    /// A JSON array of {label, kind, deps}.
    Json,
    /// A Graphviz digraph (render with `dot -Tsvg`).
    Dot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKindFilter {
    Layer,
    Image,
    Import,
    HttpFile,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The target to explain.
    #[arg(value_name = "LABEL")]
    pub label: String,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Show what the local cache holds.
    Stats,
    /// Evict least-recently-used cache entries and delete the blobs nothing names
    /// any more, until the blobs fit SIZE.
    Gc(GcArgs),
    /// Re-hash every blob; remove damaged blobs and the cache entries naming
    /// them (exit 1 if anything was bad).
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep at most this many bytes of blobs: a number, or with a unit: 500M,
    /// 10G (powers of 1000), 500MiB, 10GiB (powers of 1024).
    #[arg(long, value_name = "SIZE")]
    pub max_size: String,

    /// Collect the remote cache directory instead of the local cache.
    #[arg(long)]
    pub remote: bool,

    /// Never delete a blob or temp file younger than this: 30s, 10m, 1h, 2d.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub grace: String,

    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify the remote cache directory instead of the local cache.
    #[arg(long)]
    pub remote: bool,

    /// Number of blobs hashed in parallel, at most 1024 [default: number of CPUs].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Only remove the layouts of images that no longer exist (and the directories
    /// that leaves empty).
    #[arg(long)]
    pub stale: bool,

    /// Also remove the local cache directory (action cache and blobs).
    #[arg(long)]
    pub cache: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Target patterns [default: //...]; the images among them are reported.
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Report format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = ReportOutput::Human)]
    pub output: ReportOutput,

    /// Write the report to FILE instead of stdout.
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output_file: Option<PathBuf>,

    /// Number of parallel jobs for building what is not cached, at most 1024
    /// [default: number of CPUs].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportOutput {
    /// Tables for a terminal.
    Human,
    /// One JSON object, keys sorted.
    Json,
    /// One self-contained HTML page with a picture of the images and their shared layers.
    Html,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CompletionShell,
}

/// The shells `imgc completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("changes").required(true).args(["since", "files"])))]
pub struct AffectedArgs {
    /// The files that differ between GIT_REV and the working tree (committed,
    /// staged, unstaged, untracked), as git lists them; spec files are compared
    /// with their text at GIT_REV.
    #[arg(long, value_name = "GIT_REV")]
    pub since: Option<String>,

    /// The changed files, relative to the current directory (a directory stands
    /// for everything in it); `-` reads newline-separated paths from stdin.
    /// Deleted files count. With no old text to compare, a listed BUILD.kdl
    /// affects every target of its package, a listed imgc.kdl every target.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "since")]
    pub files: Vec<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = AffectedOutput::Label)]
    pub output: AffectedOutput,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Target patterns [default: //...]: the registry imports they select or
    /// build on are pinned.
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Also re-resolve imports that are already pinned, following their tag.
    #[arg(long)]
    pub update: bool,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Write nothing: exit 1 if imgc.lock is missing or differs from what
    /// `imgc lock` would write now (the repositories are fetched).
    #[arg(long, conflicts_with = "why")]
    pub check: bool,

    /// Print the chain of dependencies that puts PACKAGE in TARGET's packages,
    /// from imgc.lock alone (nothing is fetched).
    #[arg(long, num_args = 2, value_names = ["TARGET", "PACKAGE"])]
    pub why: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Target patterns [default: //...]; the images among them are pushed.
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,

    /// Push to HOST/NAMESPACE/<package path>/<target name>:<tag> instead of the
    /// specs' `tag`s (the tag part of each spec tag, else `latest`).
    #[arg(long, value_name = "HOST/NAMESPACE")]
    pub registry: Option<String>,

    /// How to print what was pushed.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = PushOutput::Human)]
    pub output: PushOutput,

    /// Number of parallel jobs for the build and for blob uploads, at most 1024
    /// [default: number of CPUs].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,

    /// Build, and print where each image would be pushed; send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PushOutput {
    /// One line per image on stdout, progress on stderr.
    Human,
    /// One JSON object per image, and a summary, on stdout.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AffectedOutput {
    /// One image label per line, sorted.
    Label,
    /// A JSON array of {label, because}: the changed paths and spec changes
    /// that reach each image.
    Json,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The image (or import) to export.
    #[arg(value_name = "LABEL")]
    pub label: String,

    /// The archive file to write (replaced only once the archive is complete);
    /// `-` writes it to stdout, which must not be a terminal.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,

    /// The archive format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = ExportFormat::DockerArchive)]
    pub format: ExportFormat,

    /// Another name for the image in the archive (`registry.example.com/acme/api:1.0`),
    /// besides the `tag`s of its spec; may be given more than once.
    #[arg(long = "tag", value_name = "REF")]
    pub tags: Vec<String>,

    /// Number of parallel jobs for building what is not cached, at most 1024
    /// [default: number of CPUs].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The Docker 25 `docker save` tarball, also an OCI image layout: `docker
    /// load`, `podman load`, `skopeo ... docker-archive:FILE`.
    DockerArchive,
    /// A tar of an OCI image layout: `skopeo ... oci-archive:FILE`, `podman load`.
    OciArchive,
}
