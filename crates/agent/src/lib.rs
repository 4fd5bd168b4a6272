//! The `retrybudget` agent: the one binary operators run.
//!
//! `main.rs` only parses the command line and maps errors to exit codes; each subcommand lives in its own
//! module here. Settings come from flags, `RETRYBUDGET_*` environment variables and an optional TOML file
//! ([`config`]), and a mistake in any of them is a [`UsageError`] (exit code 2) naming the flag or key and
//! the accepted range. Nothing here prints a secret: API keys are read from the variable *named* by
//! `--api-key-env` into a `SecretString`, and only that name ever appears in output.

pub mod cli;
mod cmd_fake;
mod cmd_proxy;
mod common;
pub mod config;
mod demo;
pub mod logging;
mod probe;
mod report;
mod smoke;

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _};

pub use config::UsageError;

use cli::{Cli, Command};

/// Parses the process's arguments (clap prints help, version and syntax errors itself and exits: 0 or 2).
pub fn parse() -> (Cli, ArgMatches) {
    let matches = Cli::command().get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli, matches),
        Err(e) => e.exit(),
    }
}

/// Runs the chosen subcommand. `Err` holding a [`UsageError`] means exit code 2, any other `Err` exit code 1.
pub async fn run(cli: Cli, matches: ArgMatches) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_deref();
    let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(&matches);
    match &cli.command {
        Command::Proxy(args) => cmd_proxy::run(args, sub, config).await,
        Command::FakeUpstream(args) => cmd_fake::run(args, sub, config).await,
        Command::Smoke(args) => smoke::run(args, sub, config).await,
        Command::Probe(args) => probe::run(args, sub, config).await,
        Command::Demo(args) => demo::run(args, sub, config).await,
        Command::Report(args) => report::run(args, config),
    }
}

/// The exit code for an error returned by [`run`]: 2 for usage errors, 3 when `report` has nothing to report,
/// 1 for runtime errors.
pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UsageError>().is_some() {
        2
    } else if error.downcast_ref::<report::NothingToReport>().is_some() {
        3
    } else {
        1
    }
}
