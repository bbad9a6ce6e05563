//! Debian packages, the pure part: everything here takes text or values and
//! returns values (no IO): index parsing, resolution, the lock file, the plan of
//! package layers. The flow:
//!
//! 1. [`Index::parse`]`(packages_text, repo_name)`: one repository's `Packages`
//!    index → typed packages ([`index`]). Errors ([`IndexError`], E090) name the
//!    repository, the paragraph's line and package.
//! 2. [`resolve`]`(&[&Index], &[Request], &Options)` → [`Resolution`]: the closure
//!    over `Pre-Depends`/`Depends` (and `Recommends` on request), one version per
//!    name, each package's resolved relations recorded ([`resolve`](mod@resolve) documents
//!    the rules). Errors ([`ResolveError`], E091) name the package, the constraint
//!    and who asked. [`Request::parse`] reads `name` / `name=version`.
//! 3. [`Lock::from_resolutions`]`(repositories, [(label, resolution)])` → [`Lock`];
//!    [`Lock::to_text`] writes the canonical `imgc.lock`; [`Lock::parse`]`(text,
//!    file)` reads it back (located diagnostics: E002/E003/E004/E005/E015/E016,
//!    E093 for a lock that contradicts itself).
//! 4. Queries for builds and commands: [`Lock::target`], [`Lock::packages_of`],
//!    [`Lock::package`], [`Lock::repository`], [`Lock::why`] (a chain from a
//!    request to a package), [`Lock::check`] (does the lock still match a target's
//!    requests; [`Stale`], E092).
//! 5. [`plan`]: the package-layer targets the lock's closures give the workspace.
//!
//! The parts that do IO are in [`crate::packages`]: fetching repositories, reading
//! and writing `imgc.lock`, fetching a `.deb` into the store and reading it.

pub mod index;
pub mod lock;
pub mod plan;
pub mod resolve;

pub use index::{Dep, Index, IndexError, MultiArch, Package, Provide, Relation, Version};
pub use lock::{BuildError, Lock, LockedPackage, LockedTarget, PackageId, Repository, Stale};
pub use resolve::{Asker, Options, Request, Resolution, ResolveError, Selected, resolve};

#[cfg(test)]
mod tests;
