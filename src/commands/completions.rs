//! `imgc completions bash|zsh|fish`: print a completion script (see [`crate::docgen`]).

use super::CmdError;
use crate::cli::CompletionsArgs;
use crate::report;

pub fn run(args: CompletionsArgs) -> Result<(), CmdError> {
    let script = crate::docgen::completions(args.shell);
    report::result(script.trim_end_matches('\n'));
    Ok(())
}
