//! Registries: the OCI Distribution protocol, for pushing images and importing
//! pinned bases.
//!
//! Today this holds [`reference`], the pure parser of image references that the
//! spec, the client and the commands share.

pub mod reference;

pub use reference::{RefError, Reference};
