//! `retrybudget fake-upstream`: the built-in test double as a process, for users' CI and for benchmarks.
//!
//! It prints its bound address (so `--listen 127.0.0.1:0` is usable from scripts) and serves until Ctrl-C or
//! SIGTERM. It is scripted over its `/_control/*` HTTP API; it never prints request content.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::ArgMatches;
use serde::Deserialize;

use crate::cli::FakeUpstreamArgs;
use crate::common::shutdown_signal;
use crate::config::{Layers, file_addr, load_file};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeUpstreamFile {
    listen: Option<String>,
}

/// `retrybudget fake-upstream`.
pub(crate) async fn run(
    args: &FakeUpstreamArgs,
    matches: &ArgMatches,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let layers = Layers::new(matches, config);
    let file: FakeUpstreamFile = load_file(config)?;
    let default: SocketAddr = ([127, 0, 0, 1], 8788).into();
    let listen = layers.pick_or(
        "listen",
        args.listen,
        file_addr(config, "listen", file.listen)?,
        default,
    );
    let listener = tokio::net::TcpListener::bind(listen.value)
        .await
        .with_context(|| format!("cannot listen on {}: is the port in use?", listen.value))?;
    let addr = listener.local_addr()?;
    println!(
        "retrybudget fake-upstream listening on http://{addr} (OpenAI-compatible /v1/*, control API under /_control/; Ctrl-C to stop)"
    );
    tracing::info!(name: retrybudget_telemetry::names::LOG_STARTED, listen = %addr, "retrybudget fake-upstream started");
    retrybudget_fake_upstream::serve(listener, shutdown_signal()).await;
    tracing::info!(name: retrybudget_telemetry::names::LOG_STOPPED, "retrybudget fake-upstream stopped");
    println!("retrybudget fake-upstream stopped");
    Ok(ExitCode::SUCCESS)
}
