use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = imgc::cli::Cli::parse();
    match imgc::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            ExitCode::from(e.exit_code())
        }
    }
}
