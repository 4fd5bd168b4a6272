//! `retrybudget probe`: the smoke test's happy path on a schedule, exported as metrics (a canary).
//!
//! Every interval one minimal chat completion is made through the instrumented client, and the result is
//! recorded as `retrybudget.probe.success{check="happy_path"}` plus its duration; `/metrics` serves every
//! instrument (the attempts and calls of the probe included) and `/healthz` says the prober is alive. A failing
//! check is a metric and a line on stdout, never an exit: alerting is Prometheus's job.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::ArgMatches;
use retrybudget_client::{ChatRequest, Client, ClientConfig};
use retrybudget_policy::PolicyConfig;
use serde::Deserialize;

use crate::cli::ProbeArgs;
use crate::common::{init_telemetry, otlp_summary, shutdown_signal};
use crate::config::{
    Layers, check_range, file_addr, file_duration, load_file, printable_url, usage,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    interval: Option<String>,
    listen: Option<String>,
}

/// The probe's check name, as recorded in `retrybudget_probe_success{check=…}`.
pub(crate) const CHECK: &str = "happy_path";

/// `retrybudget probe`.
pub(crate) async fn run(
    args: &ProbeArgs,
    matches: &ArgMatches,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let layers = Layers::new(matches, config);
    let file: ProbeFile = load_file(config)?;
    let base_url = layers
        .pick("base_url", args.base_url.clone(), file.base_url)
        .ok_or_else(|| {
            usage(format!(
                "missing {}: the API to probe",
                layers.all_names("base_url")
            ))
        })?;
    let model = layers
        .pick("model", args.model.clone(), file.model)
        .ok_or_else(|| {
            usage(format!(
                "missing {}: the model id to request",
                layers.all_names("model")
            ))
        })?;
    let interval = layers.pick_or(
        "interval",
        args.interval,
        file_duration(config, "interval", file.interval)?,
        Duration::from_secs(30),
    );
    check_range(
        &layers,
        "interval",
        &interval,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
        "a duration from 1s to 24h",
    )?;
    let listen = layers.pick_or(
        "listen",
        args.listen,
        file_addr(config, "listen", file.listen)?,
        SocketAddr::from(([127, 0, 0, 1], 8789)),
    );
    let key = crate::config::api_key(
        &layers,
        layers.pick("api_key_env", args.api_key_env.clone(), file.api_key_env),
    )?;

    let telemetry = init_telemetry(None)?;
    let mut client_config = ClientConfig::new(base_url.value.clone());
    client_config.api_key = key;
    client_config.policy = PolicyConfig {
        deadline: interval.value.min(Duration::from_secs(60)),
        per_attempt_timeout: Some(interval.value.min(Duration::from_secs(30))),
        ..PolicyConfig::default()
    };
    let client = Client::new(client_config, telemetry.clone()).map_err(|e| {
        usage(format!(
            "{e} ({})",
            layers.describe("base_url", base_url.src)
        ))
    })?;

    let listener = tokio::net::TcpListener::bind(listen.value)
        .await
        .with_context(|| format!("cannot listen on {}: is the port in use?", listen.value))?;
    let addr = listener.local_addr()?;
    println!(
        "retrybudget probe listening on http://{addr} (metrics at http://{addr}/metrics); checking {} model {} every {}; {}",
        printable_url(&base_url.value),
        model.value,
        humantime::format_duration(interval.value),
        otlp_summary()
    );

    tracing::info!(
        name: retrybudget_telemetry::names::LOG_STARTED,
        listen = %addr,
        base_url = %printable_url(&base_url.value),
        interval = ?interval.value,
        "retrybudget probe started"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            retrybudget_proxy::observability::<()>(telemetry.clone()),
        )
        .with_graceful_shutdown(async move {
            let _ = server_stop.wait_for(|s| *s).await;
        })
        .await
        .map(|()| telemetry)
    });

    let mut ticker = tokio::time::interval(interval.value);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = ticker.tick() => {
                let mut stop = stop_rx.clone();
                tokio::select! {
                    _ = &mut signal => break,
                    _ = stop.wait_for(|s| *s) => break,
                    () = check_once(&client, &model.value) => {}
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let telemetry = server.await.context("the metrics server task failed")??;
    let flushed = crate::common::shutdown_telemetry(&telemetry).await;
    tracing::info!(name: retrybudget_telemetry::names::LOG_STOPPED, telemetry_flushed = flushed, "retrybudget probe stopped");
    println!("retrybudget probe stopped");
    Ok(ExitCode::SUCCESS)
}

async fn check_once(client: &Client, model: &str) {
    let mut request = ChatRequest::user(model, "Reply with OK.");
    request.max_tokens = Some(32);
    let started = Instant::now();
    let result = client.chat(&request).await;
    let took = started.elapsed();
    let (ok, detail) = match &result {
        Ok(r) if r.text().is_some_and(|t| !t.trim().is_empty()) => {
            (true, "2xx with a usable choice".to_owned())
        }
        Ok(_) => (false, "2xx but the first choice has no text".to_owned()),
        Err(e) => (false, e.to_string()),
    };
    client.telemetry().record_probe(CHECK, ok, took);
    println!(
        "{} probe {CHECK} {} in {} ms: {detail}",
        retrybudget_telemetry::timestamp::rfc3339(std::time::SystemTime::now()),
        if ok { "PASS" } else { "FAIL" },
        took.as_millis()
    );
}
