//! `zen-lead`: see `zen-lead --help`. All logic lives in the library; this is
//! the edge where errors become an exit status.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Parser;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("zen-lead: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // One process-wide provider (ring), chosen before any TLS is set up, so
    // kube's client, the webhook and the agent agree.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow!("a rustls crypto provider was already installed"))?;
    let cli = zen_lead::cli::Cli::parse();
    // The agent and `lock` run in every pool pod: one thread does their work
    // with no cross-thread wake-ups (for the API gate, a futex and a context
    // switch per proxied watch event otherwise). The controller's reconcilers
    // and webhook use every core.
    let runtime = if cli.command.single_threaded() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .context("could not start the async runtime")?;
    runtime.block_on(zen_lead::run(cli))?;
    Ok(())
}
