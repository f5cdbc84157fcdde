//! `zen-lead-pod`: the binary of a pool pod's processes (the agent, and
//! `zen-lead run`/`probe` in the app containers); see `zen_lead::cli::PodCli`.
//! It calls only those roles, so link-time optimisation leaves the
//! controller's code out of it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = zen_lead::cli::PodCli::parse_process_args();
    zen_lead::exit_code(zen_lead::execute(true, zen_lead::run_pod(cli)))
}
