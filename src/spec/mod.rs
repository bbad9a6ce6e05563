//! The spec language front end: KDL text → typed, spanned model (pure).

pub mod limits;
pub mod model;
pub mod parse;
mod paths;
pub(crate) mod reader;

pub use parse::{parse_build_file, parse_workspace_file};
pub use reader::set_parse_stack_hint;

/// The meaning of a parse result, as stored by the parse cache (`workspace`): bump
/// whenever the parser or the model changes what some text parses to, or how the
/// model serializes. Part of every parse-cache key.
pub const PARSE_FORMAT_VERSION: u64 = 5;
