//! `retrybudget proxy`: the sidecar. Settings are merged and validated here, then handed to
//! `retrybudget_proxy::serve`; SIGTERM or Ctrl-C drains in-flight requests (bounded by the proxy's grace
//! period) and then flushes telemetry with a bounded wait.
//!
//! The startup line says where to listen, where the upstream and `/metrics` are and whether OTLP is on; it never
//! shows the API key (only the *name* of its variable, and only in errors).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::ArgMatches;
use retrybudget_client::{Client, ClientConfig, ClientError};
use retrybudget_proxy::{ProxyConfig, ProxyState};
use retrybudget_telemetry::names;
use serde::Deserialize;

use crate::cli::ProxyArgs;
use crate::common::{init_telemetry, otlp_summary, shutdown_signal, shutdown_telemetry};
use crate::config::{
    FileSize, Layers, RetryFile, check_range, check_writable_parent, file_addr, file_size,
    load_file, policy_config, printable_url, usage,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    listen: Option<String>,
    upstream: Option<String>,
    provider_name: Option<String>,
    route_name: Option<String>,
    max_attempts: Option<u32>,
    deadline: Option<String>,
    per_attempt_timeout: Option<String>,
    budget_ratio: Option<f64>,
    budget_min_per_sec: Option<f64>,
    budget_ttl: Option<String>,
    evidence_file: Option<PathBuf>,
    api_key_env: Option<String>,
    max_body: Option<FileSize>,
}

const DEFAULT_MAX_BODY: u64 = 8 << 20;
const MAX_MAX_BODY: u64 = 1 << 30;

/// `retrybudget proxy`.
pub(crate) async fn run(
    args: &ProxyArgs,
    matches: &ArgMatches,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let layers = Layers::new(matches, config);
    let file: ProxyFile = load_file(config)?;
    let listen = layers.pick_or(
        "listen",
        args.listen,
        file_addr(config, "listen", file.listen)?,
        SocketAddr::from(([127, 0, 0, 1], 8787)),
    );
    let upstream = layers
        .pick("upstream", args.upstream.clone(), file.upstream)
        .ok_or_else(|| {
            usage(format!(
                "missing {}: the upstream base URL, e.g. https://api.openai.com",
                layers.all_names("upstream")
            ))
        })?;
    let provider = layers.pick_or(
        "provider_name",
        args.provider_name.clone(),
        file.provider_name,
        "openai".to_owned(),
    );
    let route = layers.pick_or(
        "route_name",
        args.route_name.clone(),
        file.route_name,
        "chat_completions".to_owned(),
    );
    for (id, s) in [("provider_name", &provider), ("route_name", &route)] {
        if s.value.trim().is_empty() || s.value.len() > 128 {
            return Err(usage(format!(
                "invalid value {:?} for {}: expected a short non-empty name (at most 128 characters)",
                s.value,
                layers.describe(id, s.src)
            )));
        }
    }
    let retry_file = RetryFile {
        max_attempts: file.max_attempts,
        deadline: file.deadline,
        per_attempt_timeout: file.per_attempt_timeout,
        budget_ratio: file.budget_ratio,
        budget_min_per_sec: file.budget_min_per_sec,
        budget_ttl: file.budget_ttl,
    };
    let policy = policy_config(&layers, &args.retry, retry_file, config)?;
    let max_body = layers.pick_or(
        "max_body",
        args.max_body,
        file_size(config, "max_body", file.max_body)?,
        DEFAULT_MAX_BODY,
    );
    check_range(
        &layers,
        "max_body",
        &max_body,
        1,
        MAX_MAX_BODY,
        "a size from 1 byte to 1GiB",
    )?;
    let evidence = layers.pick(
        "evidence_file",
        args.evidence_file.clone(),
        file.evidence_file,
    );
    if let Some(e) = &evidence {
        check_writable_parent(&layers, "evidence_file", e)?;
    }
    let key = crate::config::api_key(
        &layers,
        layers.pick("api_key_env", args.api_key_env.clone(), file.api_key_env),
    )?;
    let has_key = key.is_some();

    tracing::info!(
        name: names::LOG_CONFIG,
        upstream = %printable_url(&upstream.value),
        provider = %provider.value,
        route = %route.value,
        max_attempts = policy.max_attempts,
        deadline = ?policy.deadline,
        per_attempt_timeout = ?policy.per_attempt_timeout,
        max_body = max_body.value,
        "proxy configuration"
    );
    let telemetry = init_telemetry(evidence.as_ref().map(|e| e.value.clone()))?;
    let mut client_config = ClientConfig::new(upstream.value.clone());
    client_config.provider_name = provider.value;
    client_config.route_name = route.value;
    client_config.policy = policy;
    client_config.api_key = key;
    let client = Client::new(client_config, telemetry.clone()).map_err(|e| match e {
        ClientError::BaseUrl { .. } => usage(format!(
            "{e} ({})",
            layers.describe("upstream", upstream.src)
        )),
        ClientError::Policy(_) => usage(e.to_string()),
        ClientError::Http(_) => anyhow::Error::new(e),
    })?;
    let state = ProxyState::new(
        client,
        ProxyConfig {
            max_body: usize::try_from(max_body.value).unwrap_or(usize::MAX),
            ..ProxyConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind(listen.value)
        .await
        .with_context(|| format!("cannot listen on {}: is the port in use?", listen.value))?;
    let addr = listener.local_addr()?;
    if has_key && !addr.ip().is_loopback() {
        tracing::warn!(
            name: names::LOG_WARNING,
            listen = %addr,
            "listening on {addr}, beyond this host, with --api-key-env set: anyone who can reach this \
             port can call the upstream with your key. Bind 127.0.0.1 or put authentication in front."
        );
    }
    println!(
        "retrybudget proxy listening on http://{addr} -> upstream {}; metrics at http://{addr}/metrics; {}; evidence file {}; API key {}",
        printable_url(&upstream.value),
        otlp_summary(),
        evidence
            .as_ref()
            .map_or_else(|| "off".to_owned(), |e| e.value.display().to_string()),
        if has_key {
            "injected when the caller sends none"
        } else {
            "not configured (callers' Authorization is forwarded)"
        },
    );
    tracing::info!(
        name: names::LOG_STARTED,
        listen = %addr,
        upstream = %printable_url(&upstream.value),
        otlp = %otlp_summary(),
        evidence_file = ?evidence.as_ref().map(|e| &e.value),
        api_key_configured = has_key,
        "retrybudget proxy started"
    );
    let served = retrybudget_proxy::serve(listener, state, async {
        shutdown_signal().await;
        tracing::info!(name: names::LOG_STOPPING, "shutdown signal received; draining in-flight requests");
        println!("retrybudget proxy: shutting down, draining in-flight requests");
    })
    .await;
    let flushed = shutdown_telemetry(&telemetry).await;
    tracing::info!(name: names::LOG_STOPPED, telemetry_flushed = flushed, "retrybudget proxy stopped");
    served.context("the proxy server failed")?;
    println!(
        "retrybudget proxy stopped{}",
        if flushed {
            ""
        } else {
            " (telemetry flush timed out; some items may be lost)"
        }
    );
    Ok(ExitCode::SUCCESS)
}
