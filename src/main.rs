//! `zen-lead`: see `zen-lead --help`. All logic lives in the library; this is
//! the edge where errors become an exit status.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = zen_lead::cli::Cli::parse_process_args();
    let single_threaded = cli.command.single_threaded();
    zen_lead::exit_code(zen_lead::execute(single_threaded, zen_lead::run(cli)))
}
