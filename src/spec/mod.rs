//! The spec language front end: KDL text → typed, spanned model (pure).

pub mod model;
pub mod parse;
