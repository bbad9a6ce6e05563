//! The only module that prints: results on stdout, everything else on stderr.
//!
//! Diagnostics are rendered with miette: colour and Unicode on a terminal,
//! plain text (same meaning, no escapes) when stderr is not a terminal or
//! `NO_COLOR` is set.

use crate::commands::CmdError;
use crate::diag::{Diag, Sources};
use miette::{GraphicalReportHandler, GraphicalTheme};
use std::io::{IsTerminal, Write};

/// Whether stderr gets colour.
pub fn color_enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Prints a result line (or block) on stdout.
pub fn result(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// Prints a status line on stderr.
pub fn status(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Prints a warning on stderr.
pub fn warning(text: &str) {
    status(&format!("warning: {text}"));
}

/// Renders diagnostics to a string (no colour), for tests and logs.
pub fn render_diagnostics(sources: &Sources, diags: &[Diag], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    for d in diags {
        let report = d.to_report(sources);
        let _ = handler.render_report(&mut out, report.as_ref());
        out.push('\n');
    }
    let n = diags.len();
    out.push_str(&format!(
        "error: {n} problem{} found\n",
        if n == 1 { "" } else { "s" }
    ));
    out
}

/// Prints a command's failure on stderr.
pub fn error(err: &CmdError) {
    let mut e = std::io::stderr().lock();
    let _ = match err {
        CmdError::Diagnostics { sources, diags } => {
            write!(e, "{}", render_diagnostics(sources, diags, color_enabled()))
        }
        CmdError::Failed(msg) | CmdError::Env(msg) => writeln!(e, "error: {msg}"),
        CmdError::Usage(msg) => writeln!(e, "error: {msg}\n\nFor more information, try '--help'."),
    };
}
