//! Debian packages in the spec, up to the lock: which targets request which
//! packages from which repository ([`requests`], pure), and the repositories'
//! indexes fetched and verified over HTTP ([`repo`], the only module that talks
//! to Debian repositories). Resolving the requests and the lock file's format
//! are pure and live beside them in `crate::debian`; `imgc lock` puts the three
//! together.

pub mod lockfile;
pub mod repo;
pub mod requests;

/// The lock file at the workspace root.
pub const LOCK_FILE: &str = "imgc.lock";

/// A lock file larger than this is refused (a lock of 5,000 packages is about
/// 2 MB).
pub const MAX_LOCK_BYTES: u64 = 64 << 20;
