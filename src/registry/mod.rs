//! Registries: the OCI Distribution protocol, for pushing images and importing
//! pinned bases.
//!
//! - [`reference`]: the pure parser of image references that the spec, the
//!   client and the commands share.
//! - [`client`]: a thin Distribution client over `ureq` (auth, retries,
//!   redirects, TLS), streaming blobs and verifying every byte.
//! - [`pull`]: a pinned image fetched into the CAS, verified.

pub mod client;
pub mod pull;
pub mod reference;

pub use client::{Client, ClientOptions, RegistryError};
pub use reference::{RefError, Reference};
