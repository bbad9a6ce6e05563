//! The workspace's Debian packages, the side that touches files and the network:
//! which targets request which packages from which repository ([`requests`], pure),
//! the repositories' indexes fetched and verified over HTTP ([`repo`], the only
//! module that talks to Debian repositories), `imgc.lock` read and written
//! ([`lockfile`]), a locked `.deb` fetched into the store ([`fetch`], over the one
//! owner of pinned downloads, [`crate::fetch`]) and read into the entries of its
//! package's layer ([`deb`]). Resolving, the lock's format and the plan of package
//! layers are pure and live in [`crate::debian`]; `imgc lock` and the
//! `deb-package` action put them together.

pub mod deb;
pub mod fetch;
pub mod lockfile;
pub mod repo;
pub mod requests;

/// The lock file at the workspace root.
pub const LOCK_FILE: &str = "imgc.lock";

/// A lock file larger than this is refused (a lock of 5,000 packages is about
/// 2 MB).
pub const MAX_LOCK_BYTES: u64 = 64 << 20;
