//! Debian packages: `.deb` files fetched into the store and turned into layers.

pub mod deb;
pub mod fetch;
