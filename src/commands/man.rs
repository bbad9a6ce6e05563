//! `imgc man`: print the man page `imgc(1)` in roff (see [`crate::docgen`]).

use super::CmdError;
use crate::report;

pub fn run() -> Result<(), CmdError> {
    report::result(crate::docgen::man_page().trim_end_matches('\n'));
    Ok(())
}
