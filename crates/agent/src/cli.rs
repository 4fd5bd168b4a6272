//! The command line: one clap tree, every flag also an environment variable `RETRYBUDGET_<FLAG>`.
//!
//! Flags that a config file may also set are `Option`s without a clap default, so that "not given" can be told
//! apart from "given the default" and the precedence flag > env > file > default can be applied afterwards
//! ([`crate::config`]). Defaults are therefore written in the help text, not in `default_value`.
//! Value *syntax* (a number, a duration, an address) is checked here; value *ranges* are checked once, after
//! the layers are merged, so a bad value is reported the same way whichever layer it came from.
// Doc comments on these structs are clap's help text (what `--help` prints), not rustdoc prose: brackets such as
// `[required unless --self-test]` and bare URLs are meant literally.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Bounded, budgeted retries for OpenAI-compatible chat-completion APIs, with OpenTelemetry evidence.
#[derive(Debug, Parser)]
#[command(name = "retrybudget", version, propagate_version = true)]
#[command(
    after_help = "Every flag can also be set as an environment variable RETRYBUDGET_<FLAG> \
(e.g. RETRYBUDGET_MAX_ATTEMPTS=3) or as a key in the --config TOML file (flag name with `_`, e.g. \
max_attempts = 3). Precedence: flag > environment > config file > default. Durations are written like \
500ms, 30s or 5m."
)]
pub struct Cli {
    /// TOML config file; keys are the subcommand's flag names with `_` (unknown keys are rejected).
    #[arg(long, global = true, env = "RETRYBUDGET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Operational log level or filter directives (e.g. debug, retrybudget=debug,warn) [default: RUST_LOG, else info]
    #[arg(
        long,
        global = true,
        env = "RETRYBUDGET_LOG_LEVEL",
        value_name = "LEVEL"
    )]
    pub log_level: Option<String>,

    /// Operational logs on stderr as text or one JSON object a line [default: text]
    #[arg(long, global = true, env = "RETRYBUDGET_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text, hide_default_value = true)]
    pub log_format: LogFormat,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How operational logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the local OpenAI-compatible sidecar: budgeted retries plus evidence for any app.
    Proxy(Box<ProxyArgs>),
    /// Run the built-in scriptable fake upstream (the test double) until Ctrl-C.
    FakeUpstream(FakeUpstreamArgs),
    /// Run the runbook's smoke test: happy path, validation path, retry path; evidence table, report, exit code.
    Smoke(SmokeArgs),
    /// Run the happy-path check on a schedule and export the result as metrics.
    Probe(ProbeArgs),
    /// Drive a scripted fault mix through the proxy against a built-in fake upstream and show the evidence.
    Demo(DemoArgs),
    /// Summarise an evidence file: outcomes, attempts, amplification, budget exhaustion, calls to open; --html
    /// writes a self-contained timeline page. Exit codes: 0 report written, 1 cannot read or write a file, 2 bad
    /// flag, 3 nothing to report (no evidence record, or none matching the filters).
    Report(ReportArgs),
}

/// `retrybudget proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8787]
    #[arg(long, env = "RETRYBUDGET_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Upstream base URL, e.g. https://api.openai.com (a trailing /v1 is accepted) [required]
    #[arg(long, env = "RETRYBUDGET_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// gen_ai.provider.name recorded in telemetry [default: openai]
    #[arg(long, env = "RETRYBUDGET_PROVIDER_NAME", value_name = "NAME")]
    pub provider_name: Option<String>,
    /// Provider route name recorded as provider_route [default: chat_completions]
    #[arg(long, env = "RETRYBUDGET_ROUTE_NAME", value_name = "NAME")]
    pub route_name: Option<String>,
    /// Retry policy flags.
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Append one JSON line per attempt to this file [default: none]
    #[arg(long, env = "RETRYBUDGET_EVIDENCE_FILE", value_name = "PATH")]
    pub evidence_file: Option<PathBuf>,
    /// Rotate the evidence file to PATH.1 before it would exceed SIZE (0 = never; SIGHUP reopens PATH for
    /// logrotate either way) [default: 100MiB]
    #[arg(long, env = "RETRYBUDGET_EVIDENCE_MAX_SIZE", value_name = "SIZE", value_parser = parse_size)]
    pub evidence_max_size: Option<u64>,
    /// Rotated evidence files kept, PATH.1 (newest) to PATH.N; older ones are deleted [default: 5]
    #[arg(long, env = "RETRYBUDGET_EVIDENCE_KEEP", value_name = "N")]
    pub evidence_keep: Option<u32>,
    /// NAME of an environment variable holding the provider key, injected into every forwarded request
    /// (replacing the caller's credential)
    #[arg(long, env = "RETRYBUDGET_API_KEY_ENV", value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// Header that carries the injected key: authorization (as Bearer KEY) or e.g. api-key (Azure OpenAI)
    /// [default: authorization]
    #[arg(long, env = "RETRYBUDGET_API_KEY_HEADER", value_name = "HEADER")]
    pub api_key_header: Option<String>,
    /// NAME of an environment variable holding a token callers must send as Authorization: Bearer TOKEN
    /// (required to inject a key on a non-loopback address) [default: none]
    #[arg(long, env = "RETRYBUDGET_CALLER_TOKEN_ENV", value_name = "NAME")]
    pub caller_token_env: Option<String>,
    /// A Host name (or name:port) accepted besides localhost, loopback addresses and the listen address;
    /// repeatable
    #[arg(
        long,
        env = "RETRYBUDGET_ALLOWED_HOST",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub allowed_host: Vec<String>,
    /// An Origin (scheme://host[:port]) whose browser requests are accepted, with CORS headers; repeatable
    /// [default: none, browser requests are refused]
    #[arg(
        long,
        env = "RETRYBUDGET_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,
    /// Largest request body accepted, in bytes or with a unit (8MiB, 512KiB) [default: 8MiB]
    #[arg(long, env = "RETRYBUDGET_MAX_BODY", value_name = "SIZE", value_parser = parse_size)]
    pub max_body: Option<u64>,
    /// Distinct model ids kept as metric labels and budget scopes; later ones are labelled `_other` [default: 200]
    #[arg(long, env = "RETRYBUDGET_MAX_MODELS_PER_ROUTE", value_name = "N")]
    pub max_models_per_route: Option<u32>,
    /// Callers' own retries (the same request re-sent after a failure, an SDK retry header, a reused
    /// Idempotency-Key): budget = count them and make them pay from the shared retry budget (429 with
    /// retry-after when it is empty), detect = only count them, off = remember nothing [default: budget]
    #[arg(long, env = "RETRYBUDGET_CALLER_RETRIES", value_name = "MODE", value_parser = parse_caller_retries)]
    pub caller_retries: Option<retrybudget_proxy::CallerRetries>,
    /// How long after a failure the same request from the same caller counts as its retry (1s to 1h) [default: 60s]
    #[arg(long, env = "RETRYBUDGET_CALLER_RETRY_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
    pub caller_retry_window: Option<Duration>,
    /// Most recent requests remembered to recognise caller retries (16 to 10000000; ~100 bytes each) [default: 10000]
    #[arg(long, env = "RETRYBUDGET_CALLER_RETRY_CAPACITY", value_name = "N")]
    pub caller_retry_capacity: Option<u64>,
    /// Largest upstream answer buffered whole (errors, chat completions); a larger one fails as
    /// invalid_response. Streams and other successful answers pass through unbuffered (1KiB to 1GiB)
    /// [default: 32MiB]
    #[arg(long, env = "RETRYBUDGET_MAX_RESPONSE_BODY", value_name = "SIZE", value_parser = parse_size)]
    pub max_response_body: Option<u64>,
    /// Longest time to receive a request head, from its first byte (10ms to 10m) [default: 10s]
    #[arg(long, env = "RETRYBUDGET_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Longest time to receive a request body; then 408 (10ms to 1h) [default: 30s]
    #[arg(long, env = "RETRYBUDGET_BODY_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub body_read_timeout: Option<Duration>,
    /// Longest time a connection stays open without a request (10ms to 1h) [default: 60s]
    #[arg(long, env = "RETRYBUDGET_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Connections served at once; one more gets a local 503 (1 to 1000000) [default: 1024]
    #[arg(long, env = "RETRYBUDGET_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u32>,
    /// Proxied requests in progress at once, streams included; one more gets a local 503 (1 to 1000000)
    /// [default: 256]
    #[arg(long, env = "RETRYBUDGET_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Threads serving connections, each keeping its connections (and their upstream connections) to itself
    /// (1 to 256) [default: the CPUs available to the process]
    #[arg(long, env = "RETRYBUDGET_THREADS", value_name = "N")]
    pub threads: Option<u32>,
}

/// Retry policy flags (proxy).
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Attempts per call, the first included (1 to 100) [default: 3]
    #[arg(long, env = "RETRYBUDGET_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Overall deadline per call, backoff included [default: 300s]
    #[arg(long, env = "RETRYBUDGET_DEADLINE", value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Timeout of each attempt (for streams: time to first byte) [default: none, the deadline bounds it]
    #[arg(long, env = "RETRYBUDGET_PER_ATTEMPT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub per_attempt_timeout: Option<Duration>,
    /// Shared budget: retry tokens each first attempt deposits (0.0 to 1.0) [default: 0.1]
    #[arg(
        long,
        env = "RETRYBUDGET_BUDGET_RATIO",
        value_name = "RATIO",
        allow_negative_numbers = true
    )]
    pub budget_ratio: Option<f64>,
    /// Shared budget: retries per second always allowed (0 to 1000000) [default: 1]
    #[arg(
        long,
        env = "RETRYBUDGET_BUDGET_MIN_PER_SEC",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub budget_min_per_sec: Option<f64>,
    /// Shared budget: how long a deposit stays spendable (100ms to 1h) [default: 10s]
    #[arg(long, env = "RETRYBUDGET_BUDGET_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub budget_ttl: Option<Duration>,
}

/// `retrybudget fake-upstream`.
#[derive(Debug, Args)]
pub struct FakeUpstreamArgs {
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8788]
    #[arg(long, env = "RETRYBUDGET_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// `retrybudget smoke`.
#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// Base URL of the API under test, e.g. https://api.openai.com [required unless --self-test]
    #[arg(long, env = "RETRYBUDGET_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// Model id to request [required unless --self-test; self-test default: fake-model]
    #[arg(long, env = "RETRYBUDGET_MODEL", value_name = "MODEL")]
    pub model: Option<String>,
    /// NAME of an environment variable holding the API key (the key itself is never printed)
    #[arg(long, env = "RETRYBUDGET_API_KEY_ENV", value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// Write the JSON report to this file
    #[arg(long, env = "RETRYBUDGET_REPORT", value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Run every check against built-in fake upstreams: no key, no network
    #[arg(long, env = "RETRYBUDGET_SELF_TEST")]
    pub self_test: bool,
}

/// `retrybudget probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Base URL of the API to probe [required]
    #[arg(long, env = "RETRYBUDGET_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// Model id to request [required]
    #[arg(long, env = "RETRYBUDGET_MODEL", value_name = "MODEL")]
    pub model: Option<String>,
    /// NAME of an environment variable holding the API key (never printed)
    #[arg(long, env = "RETRYBUDGET_API_KEY_ENV", value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// Time between checks (1s to 24h) [default: 30s]
    #[arg(long, env = "RETRYBUDGET_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Address serving GET /metrics and /healthz (port 0 picks a free port) [default: 127.0.0.1:8789]
    #[arg(long, env = "RETRYBUDGET_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// `retrybudget demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to drive traffic (2s to 1h) [default: 20s]
    #[arg(long, env = "RETRYBUDGET_DURATION", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Address of the in-process proxy and its /metrics (port 0 picks a free port) [default: 127.0.0.1:8787]
    #[arg(long, env = "RETRYBUDGET_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Keep the proxy, /metrics and /healthz running after the mix until Ctrl-C
    #[arg(long, env = "RETRYBUDGET_SERVE")]
    pub serve: bool,
    /// Evidence file, truncated at start [default: ./retrybudget-demo-evidence.jsonl]
    #[arg(long, env = "RETRYBUDGET_EVIDENCE_FILE", value_name = "PATH")]
    pub evidence_file: Option<PathBuf>,
    /// Calls started per second (1 to 1000) [default: 20]
    #[arg(long, env = "RETRYBUDGET_RATE", value_name = "N")]
    pub rate: Option<u32>,
    /// Print the final table as one JSON document on stdout (progress goes to stderr)
    #[arg(long, env = "RETRYBUDGET_JSON")]
    pub json: bool,
}

/// `retrybudget report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The JSONL evidence file to summarise
    #[arg(value_name = "EVIDENCE.jsonl")]
    pub evidence: PathBuf,
    /// Print the summary as JSON
    #[arg(long, env = "RETRYBUDGET_JSON")]
    pub json: bool,
    /// Also write the incident review as one self-contained HTML page (timeline, figures, calls to open)
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// Link trace ids through this URL template, e.g. 'http://jaeger:16686/trace/{trace_id}'
    #[arg(long, env = "RETRYBUDGET_TRACE_URL", value_name = "TEMPLATE")]
    pub trace_url: Option<String>,
    /// Only records at or after this RFC 3339 UTC instant, e.g. 2026-06-13T14:05:00Z
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub since: Option<i64>,
    /// Only records before this RFC 3339 UTC instant
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub until: Option<i64>,
    /// Only records of this provider route (provider_route)
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// Only records of this model (model)
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
}

/// Parses a humantime duration (`500ms`, `30s`, `5m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; expected a duration such as 500ms, 30s or 5m"))
}

/// Parses `--caller-retries` (`budget`, `detect`, `off`).
pub fn parse_caller_retries(text: &str) -> Result<retrybudget_proxy::CallerRetries, String> {
    retrybudget_proxy::CallerRetries::parse(text).ok_or_else(|| {
        format!(
            "{text:?} is not a caller-retries mode; expected one of {}",
            retrybudget_proxy::CallerRetries::NAMES.join(", ")
        )
    })
}

/// Parses a byte size: a plain number of bytes or a number with a unit (`KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{text:?} is not a size; write bytes (8388608) or a number with a unit (8MiB, 512KiB)"
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Parses `--since`/`--until`: an RFC 3339 UTC instant, as in the evidence file.
pub(crate) fn parse_instant(text: &str) -> Result<i64, String> {
    retrybudget_telemetry::timestamp::parse_rfc3339_ms(text.trim()).ok_or_else(|| {
        format!("{text:?} is not an RFC 3339 UTC instant; write it as in the evidence file, e.g. 2026-06-13T14:05:00Z")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("8 MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("2kb").unwrap(), 2000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("8XB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
    }
}
