//! The spec language front end: KDL text → typed, spanned model (pure).

pub mod model;
pub mod parse;
mod paths;
mod reader;

pub use parse::{parse_build_file, parse_workspace_file};
