//! Registries: the OCI Distribution protocol, for pushing images and importing
//! pinned bases.
//!
//! [`reference`] is the pure parser of image references that the spec, the
//! client and the commands share; [`credentials`] finds what to present to a
//! registry (environment, Docker and podman config files, credential helpers).

pub mod credentials;
pub mod reference;

pub use credentials::{CredError, Credential, Credentials, Secret};
pub use reference::{RefError, Reference};
