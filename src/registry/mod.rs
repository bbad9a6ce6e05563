//! Registries: the OCI Distribution protocol, for pushing images and importing
//! pinned bases.
//!
//! - [`crate::reference`] (outside this module, because the pure core uses it):
//!   the parser of image references that the spec, the client and the
//!   commands share.
//! - [`credentials`]: what to present to a registry (environment, Docker and
//!   podman config files, credential helpers), never printed.
//! - [`client`]: a thin Distribution client over `ureq` (auth, retries,
//!   redirects, TLS), streaming blobs and verifying every byte.
//! - [`pull`]: a pinned image fetched into the CAS, verified.
//! - [`push`]: built images pushed: blobs found, mounted or uploaded, the
//!   manifest last.

pub mod client;
pub mod credentials;
pub mod pull;
pub mod push;

pub use crate::reference::{RefError, Reference};
pub use client::{Client, ClientOptions, RegistryError};
pub use credentials::{CredError, Credential, Credentials, Secret};
