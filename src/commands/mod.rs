//! One file per subcommand. Commands are thin: they resolve flags into settings,
//! call the library, and hand results to [`crate::report`].

pub mod affected;
pub mod build;
pub mod cache;
pub mod check;
pub mod clean;
pub mod completions;
pub mod explain;
pub mod export;
pub mod lock;
pub mod man;
pub mod pin;
pub mod push;
pub mod query;
pub mod sharing;

use crate::cli::{Cli, Command};
use crate::diag::{Code, Diag, Sources, did_you_mean};
use crate::graph::{self, Graph};
use crate::label::{Pattern, PatternSet};
use crate::report;
use crate::workspace::{self, Workspace, WorkspaceError};
use petgraph::graph::NodeIndex;
use std::path::PathBuf;

/// How a command failed; each maps to an exit code.
#[derive(Debug)]
pub enum CmdError {
    /// Spec, graph or pattern problems, with their sources: exit 1.
    Diagnostics { sources: Sources, diags: Vec<Diag> },
    /// A build failed (its errors were already reported): exit 1.
    Failed(String),
    /// Bad command line: exit 2.
    Usage(String),
    /// The environment failed us (IO, permissions): exit 3.
    Env(String),
}

impl CmdError {
    /// Prints this failure on stderr (through [`crate::report`]).
    pub fn report(&self) {
        report::error(match self {
            CmdError::Diagnostics { sources, diags } => {
                report::Failure::Diagnostics(sources, diags)
            }
            CmdError::Failed(msg) | CmdError::Env(msg) => report::Failure::Message(msg),
            CmdError::Usage(msg) => report::Failure::Usage(msg),
        });
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::Diagnostics { .. } | CmdError::Failed(_) => 1,
            CmdError::Usage(_) => 2,
            CmdError::Env(_) => 3,
        }
    }
}

impl From<WorkspaceError> for CmdError {
    fn from(e: WorkspaceError) -> CmdError {
        match e {
            WorkspaceError::NotFound(_) => CmdError::Diagnostics {
                sources: Sources::default(),
                diags: vec![workspace::not_found_diag(&e)],
            },
            WorkspaceError::Io { .. } => CmdError::Env(e.to_string()),
        }
    }
}

/// The most parallel jobs `-j` may ask for: each is a thread, and more than a
/// machine's CPUs only costs memory. (`-j 99999999999` used to try to start them.)
pub const MAX_JOBS: usize = 1024;

/// `-j N` resolved: at least 1, at most [`MAX_JOBS`]; default the number of CPUs.
pub fn jobs(given: Option<usize>) -> Result<usize, CmdError> {
    match given {
        Some(0) => Err(CmdError::Usage("`--jobs` must be at least 1".into())),
        Some(j) if j > MAX_JOBS => Err(CmdError::Usage(format!(
            "`--jobs {j}` is more than the {MAX_JOBS} parallel jobs imgc allows"
        ))),
        Some(j) => Ok(j),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_JOBS))),
    }
}

/// Global settings resolved from the command line and the environment.
#[derive(Debug, Clone)]
pub struct Context {
    /// The directory imgc acts in (`-C`, else the current directory).
    pub cwd: PathBuf,
    /// `--cache-dir`, if given.
    pub cache_dir: Option<PathBuf>,
    /// The remote cache flags, as given (resolved by [`open_remote_cache`]).
    pub remote: crate::cli::RemoteArgs,
    /// The registry flags, as given (`--insecure-registry`).
    pub registry: crate::cli::RegistryArgs,
}

/// The remote cache in force: `--no-remote-cache` turns it off; else
/// `--remote-cache` (or `IMGC_REMOTE_CACHE`), relative to the current directory;
/// else `remote-cache` in imgc.kdl (`configured`), relative to the workspace
/// root `ws_root`. `None` if there is none.
pub fn remote_cache_location(
    ctx: &Context,
    configured: Option<&str>,
    ws_root: &std::path::Path,
) -> Result<Option<crate::remote::Location>, CmdError> {
    use crate::remote::Location;
    if ctx.remote.no_remote_cache {
        return Ok(None);
    }
    let given = ctx.remote.remote_cache.as_deref().filter(|v| !v.is_empty());
    let (value, base) = match (given, configured) {
        (Some(v), _) => (
            v,
            std::path::absolute(".").unwrap_or_else(|_| ctx.cwd.clone()),
        ),
        (None, Some(v)) => (v, ws_root.to_path_buf()),
        (None, None) => return Ok(None),
    };
    Location::parse(value, &base)
        .map(Some)
        .map_err(CmdError::Usage)
}

/// Opens the remote cache in force (see [`remote_cache_location`]) in the mode
/// the flags give.
pub fn open_remote_cache(
    ctx: &Context,
    configured: Option<&str>,
    ws_root: &std::path::Path,
) -> Result<Option<std::sync::Arc<crate::remote::Remote>>, CmdError> {
    use crate::cli::RemoteCacheMode;
    use crate::remote::{Mode, Remote, http::Credentials};
    let Some(location) = remote_cache_location(ctx, configured, ws_root)? else {
        return Ok(None);
    };
    let mode = match ctx.remote.remote_cache_mode {
        None | Some(RemoteCacheMode::ReadWrite) => Mode::ReadWrite,
        Some(RemoteCacheMode::Read) => Mode::Read,
        Some(RemoteCacheMode::Write) => Mode::Write,
    };
    let credentials = match &ctx.remote.remote_cache_credentials {
        Some(path) => Some(Credentials::from_file(path).map_err(CmdError::Env)?),
        None => None,
    };
    Remote::open(&location, mode, credentials)
        .map(|r| Some(std::sync::Arc::new(r)))
        .map_err(CmdError::Env)
}

/// A workspace loaded, parsed and resolved into a graph without errors.
pub struct Loaded {
    pub ws: Workspace,
    pub graph: Graph,
    /// How many packages the workspace has (their targets are in `graph`).
    pub package_count: usize,
    /// The package path of the directory imgc was started in.
    pub cwd_package: String,
    /// The cache index opened for the parse cache (`None` if it could not be
    /// opened): pass it to [`cache::Stores::open_with`] rather than opening it twice.
    pub index: Option<crate::cache::Cache>,
    /// Why the index could not be opened. Not printed by [`Loaded::load`]: a command
    /// that needs the cache fails with it (once), one that does not warns with
    /// [`Loaded::warn_without_cache`].
    pub index_error: Option<String>,
    /// A warning was printed while loading (or while opening the stores): a
    /// snapshot could not print it again, so none is written.
    pub warned: bool,
    /// Every target with `packages`, its requests checked against imgc.kdl's
    /// `debian` repositories (sorted by label).
    pub package_requests: Vec<crate::packages::requests::TargetRequests>,
    /// Why targets with `packages` cannot be built (see [`PackageProblems`]).
    pub package_problems: PackageProblems,
}

/// Why targets with `packages` cannot be built, found while loading (and
/// reported only by the commands that build or check them, so `query` works on
/// a workspace with a stale lock).
#[derive(Debug, Default)]
pub struct PackageProblems {
    /// imgc.lock could not be read or parsed (E093 and the syntax codes), or
    /// contradicts itself: every target with packages is affected.
    pub lock: Vec<Diag>,
    /// One problem per target: no lock (E076), a lock that no longer satisfies
    /// its requests (E092, naming the package).
    pub targets: Vec<(crate::label::Label, Diag)>,
}

impl Loaded {
    /// Loads everything; any spec or graph diagnostic fails the command.
    pub fn load(ctx: &Context) -> Result<Loaded, CmdError> {
        Loaded::load_with(ctx, true, &report::Progress::hidden())
    }

    /// [`Loaded::load`], saying on `progress` what it is doing, with counts (see
    /// [`report::Progress::status`]).
    pub fn load_showing(ctx: &Context, progress: &report::Progress) -> Result<Loaded, CmdError> {
        Loaded::load_with(ctx, true, progress)
    }

    /// Like [`Loaded::load`], writing nothing to the parse cache (dry runs).
    pub fn load_read_only(ctx: &Context) -> Result<Loaded, CmdError> {
        Loaded::load_with(ctx, false, &report::Progress::hidden())
    }

    fn load_with(
        ctx: &Context,
        store_parses: bool,
        progress: &report::Progress,
    ) -> Result<Loaded, CmdError> {
        let root = workspace::find_root(&ctx.cwd)?;
        let mut index_error = None;
        let mut warned = false;
        let mut index = match cache::open_index(ctx) {
            Ok((index, warning)) => {
                if let Some(w) = warning {
                    report::warning(&w);
                    warned = true;
                }
                Some(index)
            }
            // Only an optimization for loading: never fail the load because of it.
            Err(e) => {
                index_error = Some(match e {
                    CmdError::Env(m) | CmdError::Usage(m) | CmdError::Failed(m) => m,
                    CmdError::Diagnostics { .. } => "cannot open the cache".to_string(),
                });
                None
            }
        };
        let (mut ws, mut diags) =
            workspace::load_showing(&root, index.as_mut(), store_parses, progress)?;
        if let Some(w) = &ws.parse_cache.warning {
            report::warning(w);
            warned = true;
        }
        // A damaged index replaced while reading the parse cache.
        for w in index
            .as_mut()
            .map(|i| i.take_warnings())
            .unwrap_or_default()
        {
            report::warning(&w);
            warned = true;
        }
        // The graph takes the targets over; the workspace keeps the rest.
        let packages = std::mem::take(&mut ws.packages);
        let package_count = packages.len();
        progress.say(&format!(
            "{package_count} packages parsed: resolving their targets"
        ));
        let (mut graph, graph_diags) = graph::build(packages);
        diags.extend(graph_diags);
        diags.extend(graph::output_path_limits(
            &graph,
            &ws.config.output_dir,
            ws.root.as_os_str().len(),
        ));
        let (package_requests, request_diags) =
            crate::packages::requests::collect(&graph, &ws.config.debian);
        diags.extend(request_diags);
        if !diags.is_empty() {
            return Err(CmdError::Diagnostics {
                sources: ws.sources,
                diags,
            });
        }
        let package_problems = packages_from_lock(&mut ws, &mut graph, &package_requests)?;
        let cwd_package = workspace::package_of_dir(&root, &ctx.cwd).unwrap_or_default();
        Ok(Loaded {
            ws,
            graph,
            package_count,
            cwd_package,
            index,
            index_error,
            warned,
            package_requests,
            package_problems,
        })
    }

    /// For commands that use the cache only to parse faster: warns that it could
    /// not be opened, if so.
    pub fn warn_without_cache(&self) {
        if let Some(why) = &self.index_error {
            report::warning(&format!("{why}; parsing every file"));
        }
    }

    /// Whether `args` select the whole workspace: no pattern, or `//...` (or a
    /// relative `...` at the root) with nothing subtracted.
    pub fn selects_everything(&self, args: &[String]) -> bool {
        if args.is_empty() {
            return true;
        }
        PatternSet::parse(args, &self.cwd_package).is_ok_and(|set| {
            set.exclude.is_empty()
                && set
                    .include
                    .iter()
                    .any(|p| matches!(p, Pattern::Recursive(prefix) if prefix.is_empty()))
        })
    }

    /// The layout paths (`<package>/<name>`) of every image of the workspace.
    pub fn image_layouts(&self) -> std::collections::BTreeSet<String> {
        self.graph
            .nodes()
            .filter(|n| self.graph.node(*n).is_image())
            .map(|n| crate::output::layout_rel(&self.graph.node(n).label))
            .collect()
    }

    /// Resolves command-line patterns (`//...` when empty). A pattern that
    /// selects nothing is an error, with a suggestion when one is close.
    pub fn select(&self, args: &[String]) -> Result<Vec<NodeIndex>, CmdError> {
        let args: Vec<String> = if args.is_empty() {
            vec!["//...".to_string()]
        } else {
            args.to_vec()
        };
        let set = PatternSet::parse(&args, &self.cwd_package)
            .map_err(|e| CmdError::Usage(format!("bad target pattern: {e}")))?;
        if set.include.is_empty() {
            let first = set
                .exclude
                .first()
                .map(|p| p.to_string())
                .unwrap_or_default();
            return Err(CmdError::Usage(format!(
                "the patterns only subtract (`-{first}`): they select nothing; \
                 to build everything else, add what to subtract from, like `-- //... -{first}`"
            )));
        }
        let mut diags = Vec::new();
        for p in &set.include {
            if !self.graph.labels().any(|l| p.matches(l)) {
                diags.push(self.no_match(p));
            }
        }
        if !diags.is_empty() {
            return Err(CmdError::Diagnostics {
                sources: Sources::default(),
                diags,
            });
        }
        let selected = self.graph.select(&set);
        if selected.is_empty() {
            return Err(CmdError::Usage(
                "the patterns select nothing: every target they include is subtracted again".into(),
            ));
        }
        Ok(selected)
    }

    /// Like [`Loaded::select`], keeping only the images; selecting none is an error
    /// that says `imgc COMMAND` `does` images.
    pub fn select_images(
        &self,
        args: &[String],
        command: &str,
        does: &str,
    ) -> Result<Vec<NodeIndex>, CmdError> {
        let images: Vec<NodeIndex> = self
            .select(args)?
            .into_iter()
            .filter(|n| self.graph.node(*n).is_image())
            .collect();
        if images.is_empty() {
            return Err(CmdError::Usage(format!(
                "the patterns select no image (only layers or imports): `imgc {command}` {does} images"
            )));
        }
        Ok(images)
    }

    /// Holds the images of `within` (and the rules themselves) to the workspace's
    /// `policy` (see [`crate::policy`]): any problem fails the command like a graph
    /// diagnostic.
    pub fn check_policy(
        &self,
        within: &std::collections::BTreeSet<NodeIndex>,
    ) -> Result<(), CmdError> {
        let diags = crate::policy::check(
            &self.graph,
            &self.ws.config.policy,
            self.ws.config_file,
            &self.ws.sources,
            within,
        );
        if diags.is_empty() {
            return Ok(());
        }
        Err(CmdError::Diagnostics {
            sources: self.ws.sources.clone(),
            diags,
        })
    }

    /// Refuses to build or check targets with `packages` among `within` that
    /// imgc.lock does not satisfy: no lock (E076), a lock that cannot be read or
    /// parsed, a lock that no longer satisfies a target's requests (E092, naming
    /// the package).
    pub fn refuse_packages(
        &self,
        within: &std::collections::BTreeSet<NodeIndex>,
    ) -> Result<(), CmdError> {
        let labels: std::collections::BTreeSet<&crate::label::Label> =
            within.iter().map(|n| &self.graph.node(*n).label).collect();
        let wanted = self
            .package_requests
            .iter()
            .any(|t| labels.contains(&t.label));
        if !wanted {
            return Ok(());
        }
        let diags: Vec<Diag> = if self.package_problems.lock.is_empty() {
            self.package_problems
                .targets
                .iter()
                .filter(|(l, _)| labels.contains(l))
                .map(|(_, d)| d.clone())
                .collect()
        } else {
            self.package_problems.lock.clone()
        };
        if diags.is_empty() {
            return Ok(());
        }
        Err(CmdError::Diagnostics {
            sources: self.ws.sources.clone(),
            diags,
        })
    }

    /// [`Loaded::refuse_packages`] for `imgc check`.
    pub fn check_lock(
        &mut self,
        within: &std::collections::BTreeSet<NodeIndex>,
    ) -> Result<(), CmdError> {
        self.refuse_packages(within)
    }

    fn no_match(&self, p: &Pattern) -> Diag {
        let mut d = Diag::new(Code::NoMatch, format!("pattern `{p}` matches no target"));
        let labels: Vec<String> = self.graph.labels().map(|l| l.to_string()).collect();
        let want = p.to_string();
        if let Some(s) = did_you_mean(&want, labels.iter().map(String::as_str)) {
            d = d.help(format!("did you mean `{s}`?"));
        } else if self.graph.is_empty() {
            d = d.help("the workspace has no targets: add a BUILD.kdl");
        }
        d
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CmdError> {
    let cwd = match cli.directory {
        Some(d) => {
            if !d.is_dir() {
                return Err(CmdError::Usage(format!(
                    "`-C {}`: not a directory",
                    d.display()
                )));
            }
            d
        }
        None => std::env::current_dir()
            .map_err(|e| CmdError::Env(format!("cannot read the current directory: {e}")))?,
    };
    let ctx = Context {
        cwd,
        cache_dir: cli.cache_dir,
        remote: cli.remote,
        registry: cli.registry,
    };
    match cli.command {
        Command::Build(args) => build::run(&ctx, args),
        Command::Check(args) => check::run(&ctx, args),
        Command::Query(q) => query::run(&ctx, q),
        Command::Explain(args) => explain::run(&ctx, args),
        Command::Cache(c) => cache::run(&ctx, c),
        Command::Clean(args) => clean::run(&ctx, args),
        Command::Report(args) => sharing::run(&ctx, args),
        Command::Completions(args) => completions::run(args),
        Command::Man => man::run(),
        Command::Affected(args) => affected::run(&ctx, args),
        Command::Pin(args) => pin::run(&ctx, args),
        Command::Lock(args) => lock::run(&ctx, args),
        Command::Push(args) => push::run(&ctx, args),
        Command::Export(args) => export::run(&ctx, args),
    }
}

/// Reads imgc.lock when some target requests packages, checks each such target
/// against it, and adds the package layers of those it satisfies to `graph`
/// ([`crate::debian::plan`], [`graph::Graph::add_packages`]). The lock is read
/// beneath the workspace root and recorded for the no-op snapshot (a lock
/// written or changed later sends a build down the full path). What cannot be
/// built is returned, for the commands that build or check those targets.
fn packages_from_lock(
    ws: &mut workspace::Workspace,
    graph: &mut graph::Graph,
    requests: &[crate::packages::requests::TargetRequests],
) -> Result<PackageProblems, CmdError> {
    use crate::packages::{LOCK_FILE, MAX_LOCK_BYTES};
    let mut problems = PackageProblems::default();
    if requests.is_empty() {
        return Ok(problems);
    }
    let root = ws.root.clone();
    ws.recorded.ws(&root, LOCK_FILE);
    let Some(bytes) = workspace::read_workspace_file(&root, LOCK_FILE, MAX_LOCK_BYTES)? else {
        for t in requests {
            let d = Diag::new(
                Code::LockMissing,
                format!(
                    "`{}` requests packages and the workspace has no `{LOCK_FILE}`",
                    t.label
                ),
            )
            .at(t.file, t.span)
            .label("not locked")
            .help("run `imgc lock` to resolve the packages and write the lock");
            problems.targets.push((t.label.clone(), d));
        }
        return Ok(problems);
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            problems.lock.push(
                Diag::new(
                    Code::BadLock,
                    format!(
                        "`{LOCK_FILE}` is not UTF-8 text (byte {})",
                        e.utf8_error().valid_up_to()
                    ),
                )
                .help("run `imgc lock` to write it again"),
            );
            return Ok(problems);
        }
    };
    let file = ws.sources.add(LOCK_FILE, text.clone());
    let lock = match crate::debian::Lock::parse(&text, file) {
        Ok(l) => l,
        Err(diags) => {
            problems.lock = diags;
            return Ok(problems);
        }
    };
    let mut ok = Vec::new();
    for t in requests {
        let mut reqs = Vec::with_capacity(t.requests.len());
        for r in &t.requests {
            match crate::debian::Request::parse(&r.value.to_string()) {
                Ok(q) => reqs.push(q),
                Err(e) => {
                    let d = Diag::new(Code::BadPackageRequest, e)
                        .at(t.file, r.span)
                        .label("this request");
                    problems.targets.push((t.label.clone(), d));
                }
            }
        }
        if reqs.len() != t.requests.len() {
            continue;
        }
        match lock.check(&t.label.to_string(), &reqs, t.recommends) {
            Ok(()) => ok.push(t.label.clone()),
            Err(stale) => {
                let span = stale
                    .package()
                    .and_then(|p| t.requests.iter().find(|r| r.value.name == p))
                    .map_or(t.span, |r| r.span);
                let d = stale.to_diag().at(t.file, span).label("not as locked");
                problems.targets.push((t.label.clone(), d));
            }
        }
    }
    let plan = match crate::debian::plan::plan(&lock, &ok) {
        Ok(p) => p,
        Err(e) => {
            problems.lock.push(
                Diag::new(Code::BadLock, format!("`{LOCK_FILE}`: {e}"))
                    .help("run `imgc lock` to write it again"),
            );
            return Ok(problems);
        }
    };
    let diags = graph.add_packages(&plan, file);
    if !diags.is_empty() {
        return Err(CmdError::Diagnostics {
            sources: ws.sources.clone(),
            diags,
        });
    }
    Ok(problems)
}
