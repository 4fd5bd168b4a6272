//! `retrybudget proxy`: the sidecar. Settings are merged and validated here, then handed to
//! `retrybudget_proxy::serve`; SIGTERM or Ctrl-C drains in-flight requests (bounded by the proxy's grace
//! period) and then flushes telemetry with a bounded wait.
//!
//! The startup line says where to listen, where the upstream and `/metrics` are and whether OTLP is on; it never
//! shows the API key (only the *name* of its variable, and only in errors).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::ArgMatches;
use retrybudget_client::{Client, ClientConfig, ClientError};
use retrybudget_proxy::{Access, CallerConfig, Limits, ProxyConfig, ProxyState};
use retrybudget_telemetry::{EvidenceRotation, names};
use serde::Deserialize;

use crate::cli::ProxyArgs;
use crate::common::{
    init_telemetry_rotating, otlp_summary, reopen_evidence_on_sighup, shutdown_signal,
    shutdown_telemetry,
};
use crate::config::{
    FileSize, Layers, RetryFile, check_range, check_writable_parent, file_addr, file_duration,
    file_size, load_file, policy_config, printable_url, usage,
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
    evidence_max_size: Option<FileSize>,
    evidence_keep: Option<u32>,
    api_key_env: Option<String>,
    api_key_header: Option<String>,
    caller_token_env: Option<String>,
    #[serde(default)]
    allowed_host: Vec<String>,
    #[serde(default)]
    allowed_origin: Vec<String>,
    max_body: Option<FileSize>,
    caller_retries: Option<String>,
    caller_retry_window: Option<String>,
    caller_retry_capacity: Option<u64>,
    max_response_body: Option<FileSize>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<u32>,
    max_in_flight: Option<u32>,
    threads: Option<u32>,
    max_models_per_route: Option<u32>,
}

const DEFAULT_MAX_BODY: u64 = 8 << 20;
const MAX_CALLER_RETRY_CAPACITY: u64 = 10_000_000;
const DEFAULT_EVIDENCE_MAX_SIZE: u64 = 100 << 20;
const DEFAULT_EVIDENCE_KEEP: u32 = 5;

/// `--evidence-max-size` / `--evidence-keep` (and their env/file forms) as a rotation setting.
fn evidence_rotation(
    layers: &Layers<'_>,
    args: &ProxyArgs,
    file_max_size: Option<FileSize>,
    file_keep: Option<u32>,
    config: Option<&Path>,
) -> anyhow::Result<EvidenceRotation> {
    let max = layers.pick_or(
        "evidence_max_size",
        args.evidence_max_size,
        file_size(config, "evidence_max_size", file_max_size)?,
        DEFAULT_EVIDENCE_MAX_SIZE,
    );
    if max.value != 0 {
        check_range(
            layers,
            "evidence_max_size",
            &max,
            1 << 10,
            1 << 40,
            "0 (no size rotation) or a size from 1KiB to 1TiB",
        )?;
    }
    let keep = layers.pick_or(
        "evidence_keep",
        args.evidence_keep,
        file_keep,
        DEFAULT_EVIDENCE_KEEP,
    );
    check_range(layers, "evidence_keep", &keep, 0, 1_000, "0 to 1000")?;
    Ok(EvidenceRotation {
        max_bytes: (max.value != 0).then_some(max.value),
        keep: keep.value,
    })
}
const MAX_MAX_BODY: u64 = 1 << 30;
/// How long calls cancelled at shutdown get to write their evidence.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const DEFAULT_MAX_RESPONSE_BODY: u64 = 32 << 20;

/// `retrybudget proxy`.
pub(crate) async fn run(
    args: &ProxyArgs,
    matches: &ArgMatches,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let layers = Layers::new(matches, config);
    let file: ProxyFile = load_file(config)?;
    let caller = caller_config(&layers, args, &file, config)?;
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
    let max_response_body = layers.pick_or(
        "max_response_body",
        args.max_response_body,
        file_size(config, "max_response_body", file.max_response_body)?,
        DEFAULT_MAX_RESPONSE_BODY,
    );
    check_range(
        &layers,
        "max_response_body",
        &max_response_body,
        1024,
        MAX_MAX_BODY,
        "a size from 1KiB to 1GiB",
    )?;
    let evidence = layers.pick(
        "evidence_file",
        args.evidence_file.clone(),
        file.evidence_file,
    );
    if let Some(e) = &evidence {
        check_writable_parent(&layers, "evidence_file", e)?;
    }
    let mut file_access = FileAccess {
        api_key_header: file.api_key_header,
        caller_token_env: file.caller_token_env,
        allowed_host: file.allowed_host,
        allowed_origin: file.allowed_origin,
        header_read_timeout: file.header_read_timeout,
        body_read_timeout: file.body_read_timeout,
        idle_timeout: file.idle_timeout,
        max_connections: file.max_connections,
        max_in_flight: file.max_in_flight,
        threads: file.threads,
    };
    let rotation = evidence_rotation(
        &layers,
        args,
        file.evidence_max_size,
        file.evidence_keep,
        config,
    )?;
    let key = crate::config::api_key(
        &layers,
        layers.pick("api_key_env", args.api_key_env.clone(), file.api_key_env),
    )?;
    let has_key = key.is_some();
    let access = access(&layers, args, &mut file_access, key)?;
    if access.exposes_key(listen.value) {
        return Err(usage(format!(
            "refusing to start: {} injects the provider key, and {} ({}) is reachable from other hosts, with \
             no caller token: anyone who can reach the port could spend the key. Listen on 127.0.0.1, or set \
             --caller-token-env NAME (callers then send Authorization: Bearer <token>)",
            layers.all_names("api_key_env"),
            listen.value,
            layers.describe("listen", listen.src)
        )));
    }
    let limits = limits(&layers, args, &mut file_access, config)?;
    let threads = limits.threads;

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
    let telemetry = init_telemetry_rotating(evidence.as_ref().map(|e| e.value.clone()), rotation)?;
    tokio::spawn(reopen_evidence_on_sighup(telemetry.clone()));
    let mut client_config = ClientConfig::new(upstream.value.clone());
    client_config.provider_name = provider.value;
    client_config.route_name = route.value;
    client_config.policy = policy;
    // The proxy injects the key itself (into the configured header, replacing the caller's credential).
    client_config.api_key = None;
    let max_models = layers.pick_or(
        "max_models_per_route",
        args.max_models_per_route,
        file.max_models_per_route,
        retrybudget_telemetry::names::DEFAULT_MAX_MODELS_PER_ROUTE as u32,
    );
    check_range(
        &layers,
        "max_models_per_route",
        &max_models,
        1,
        100_000,
        "1 to 100000",
    )?;
    client_config.max_models_per_route = max_models.value as usize;
    client_config.max_response_body =
        usize::try_from(max_response_body.value).unwrap_or(usize::MAX);
    let client = Client::new(client_config, telemetry.clone()).map_err(|e| match e {
        ClientError::BaseUrl { .. } => usage(format!(
            "{e} ({})",
            layers.describe("upstream", upstream.src)
        )),
        ClientError::Policy(_) => usage(e.to_string()),
        ClientError::Http(_) => anyhow::Error::new(e),
    })?;
    let has_token = access.caller_token.is_some();
    let state = ProxyState::new(
        client,
        ProxyConfig {
            max_body: usize::try_from(max_body.value).unwrap_or(usize::MAX),
            caller,
            access,
            limits,
            ..ProxyConfig::default()
        },
    );
    // Kept to end what is still in flight once the grace period is over (see below).
    let inflight = state.client().clone();
    let listener = tokio::net::TcpListener::bind(listen.value)
        .await
        .with_context(|| format!("cannot listen on {}: is the port in use?", listen.value))?;
    let addr = listener.local_addr()?;
    println!(
        "retrybudget proxy listening on http://{addr} -> upstream {}; metrics at http://{addr}/metrics; {}; evidence file {}; caller retries {}; API key {}; {} connection thread(s)",
        printable_url(&upstream.value),
        otlp_summary(),
        evidence
            .as_ref()
            .map_or_else(|| "off".to_owned(), |e| e.value.display().to_string()),
        caller.mode.as_str(),
        match (has_key, has_token) {
            (true, true) => "injected for callers presenting the caller token",
            (true, false) => "injected into every request",
            (false, true) => "not configured (callers must present the caller token)",
            (false, false) => "not configured (callers' Authorization is forwarded)",
        },
        threads,
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
    // Calls still in flight when the grace period ended are cancelled now, so their `cancelled` evidence is
    // written before the final flush instead of being lost with the runtime.
    let unfinished = inflight.cancel_inflight(CANCEL_WAIT).await;
    if unfinished > 0 {
        eprintln!(
            "retrybudget proxy: {unfinished} call(s) did not record their cancellation in time"
        );
    }
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

/// `--caller-retries`, `--caller-retry-window` and `--caller-retry-capacity`, merged and range-checked.
fn caller_config(
    layers: &Layers<'_>,
    args: &ProxyArgs,
    file: &ProxyFile,
    config: Option<&Path>,
) -> anyhow::Result<CallerConfig> {
    let defaults = CallerConfig::default();
    let file_mode = file
        .caller_retries
        .as_deref()
        .map(|v| {
            crate::cli::parse_caller_retries(v)
                .map_err(|e| usage(format!("{e} (config key `caller_retries`)")))
        })
        .transpose()?;
    let mode = layers.pick_or(
        "caller_retries",
        args.caller_retries,
        file_mode,
        defaults.mode,
    );
    let window = layers.pick_or(
        "caller_retry_window",
        args.caller_retry_window,
        file_duration(
            config,
            "caller_retry_window",
            file.caller_retry_window.clone(),
        )?,
        defaults.window,
    );
    check_range(
        layers,
        "caller_retry_window",
        &window,
        Duration::from_secs(1),
        Duration::from_secs(3600),
        "a duration from 1s to 1h",
    )?;
    let capacity = layers.pick_or(
        "caller_retry_capacity",
        args.caller_retry_capacity,
        file.caller_retry_capacity,
        defaults.capacity as u64,
    );
    check_range(
        layers,
        "caller_retry_capacity",
        &capacity,
        16,
        MAX_CALLER_RETRY_CAPACITY,
        "a number from 16 to 10000000",
    )?;
    Ok(CallerConfig {
        mode: mode.value,
        window: window.value,
        capacity: usize::try_from(capacity.value).unwrap_or(usize::MAX),
    })
}

/// The access settings as the config file may give them (moved out of [`ProxyFile`] before the key is read).
struct FileAccess {
    api_key_header: Option<String>,
    caller_token_env: Option<String>,
    allowed_host: Vec<String>,
    allowed_origin: Vec<String>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<u32>,
    max_in_flight: Option<u32>,
    threads: Option<u32>,
}

/// Who may use the proxy: allowed hosts and origins, the caller token and the header carrying the key.
fn access(
    layers: &Layers<'_>,
    args: &ProxyArgs,
    file: &mut FileAccess,
    api_key: Option<secrecy::SecretString>,
) -> anyhow::Result<Access> {
    let header = layers.pick(
        "api_key_header",
        args.api_key_header.clone(),
        file.api_key_header.take(),
    );
    let api_key_header = match &header {
        None => http::header::AUTHORIZATION,
        Some(s) => http::HeaderName::from_bytes(s.value.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| {
                usage(format!(
                    "invalid value {:?} for {}: expected an HTTP header name such as authorization or api-key",
                    s.value,
                    layers.describe("api_key_header", s.src)
                ))
            })?,
    };
    if let Some(key) = &api_key {
        use secrecy::ExposeSecret as _;
        if http::HeaderValue::from_str(key.expose_secret()).is_err() {
            return Err(usage(format!(
                "the API key named by {} contains characters an HTTP header cannot carry (a newline?); fix the \
                 variable's value",
                layers.all_names("api_key_env")
            )));
        }
    }
    let token_env = layers.pick(
        "caller_token_env",
        args.caller_token_env.clone(),
        file.caller_token_env.take(),
    );
    let caller_token = crate::config::secret_from_env(layers, "caller_token_env", token_env)?;
    // A list given by flag or environment replaces the file's.
    let pick_list = |cli: &[String], from_file: Vec<String>| -> Vec<String> {
        let chosen = if cli.is_empty() {
            from_file
        } else {
            cli.to_vec()
        };
        chosen
            .into_iter()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect()
    };
    let allowed_hosts = pick_list(&args.allowed_host, std::mem::take(&mut file.allowed_host));
    let allowed_origins = pick_list(
        &args.allowed_origin,
        std::mem::take(&mut file.allowed_origin),
    );
    for origin in &allowed_origins {
        let ok = url::Url::parse(origin).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.path() == "/"
                && u.query().is_none()
                && !origin.trim_end_matches('/').ends_with(':')
        });
        if !ok {
            return Err(usage(format!(
                "invalid value {origin:?} for --allowed-origin: expected an origin such as https://app.example:3000 \
                 (scheme, host and optional port; no path)"
            )));
        }
    }
    Ok(Access {
        allowed_hosts,
        allowed_origins,
        caller_token,
        api_key,
        api_key_header,
        listen_addr: None,
    })
}

/// The listener's timeouts and caps, validated.
fn limits(
    layers: &Layers<'_>,
    args: &ProxyArgs,
    file: &mut FileAccess,
    config: Option<&Path>,
) -> anyhow::Result<Limits> {
    use std::time::Duration;
    let d = Limits::default();
    let duration = |id: &str,
                    cli: Option<Duration>,
                    from_file: Option<String>,
                    default: Duration,
                    max: Duration,
                    expected: &str|
     -> anyhow::Result<Duration> {
        let s = layers.pick_or(
            id,
            cli,
            crate::config::file_duration(config, id, from_file)?,
            default,
        );
        check_range(layers, id, &s, Duration::from_millis(10), max, expected)?;
        Ok(s.value)
    };
    let header_read_timeout = duration(
        "header_read_timeout",
        args.header_read_timeout,
        file.header_read_timeout.take(),
        d.header_read_timeout,
        Duration::from_secs(600),
        "a duration from 10ms to 10m",
    )?;
    let body_read_timeout = duration(
        "body_read_timeout",
        args.body_read_timeout,
        file.body_read_timeout.take(),
        d.body_read_timeout,
        Duration::from_secs(3600),
        "a duration from 10ms to 1h",
    )?;
    let idle_timeout = duration(
        "idle_timeout",
        args.idle_timeout,
        file.idle_timeout.take(),
        d.idle_timeout,
        Duration::from_secs(3600),
        "a duration from 10ms to 1h",
    )?;
    let count = |id: &str, cli: Option<u32>, from_file: Option<u32>, default: usize| {
        let s = layers.pick_or(
            id,
            cli,
            from_file,
            u32::try_from(default).unwrap_or(u32::MAX),
        );
        check_range(layers, id, &s, 1, 1_000_000, "a number from 1 to 1000000")?;
        Ok::<_, anyhow::Error>(s.value as usize)
    };
    let max_connections = count(
        "max_connections",
        args.max_connections,
        file.max_connections.take(),
        d.max_connections,
    )?;
    let max_in_flight = count(
        "max_in_flight",
        args.max_in_flight,
        file.max_in_flight.take(),
        d.max_in_flight,
    )?;
    // One connection thread per CPU the process may use (std reads cgroup CPU quotas, so a container
    // limited to one CPU gets one).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(256));
    let threads = layers.pick_or(
        "threads",
        args.threads,
        file.threads.take(),
        u32::try_from(cpus).unwrap_or(1),
    );
    check_range(
        layers,
        "threads",
        &threads,
        1,
        256,
        "a number from 1 to 256",
    )?;
    Ok(Limits {
        header_read_timeout,
        body_read_timeout,
        idle_timeout,
        max_connections,
        max_in_flight,
        threads: threads.value as usize,
    })
}
