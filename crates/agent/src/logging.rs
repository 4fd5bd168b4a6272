//! Operational logs: what the agent tells its operator (start-up, configuration, shutdown, export failures,
//! refusals, retries and failed calls), as `tracing` events.
//!
//! Two outputs share one `tracing` subscriber:
//! - **stderr**, as text or one JSON object a line (`--log-format`), filtered by `--log-level` (or
//!   `RETRYBUDGET_LOG_LEVEL`), else `RUST_LOG`, else `info` — any `EnvFilter` directive is accepted;
//! - **OTLP log records**, through the OpenTelemetry log bridge (`opentelemetry-appender-tracing`), once a
//!   subcommand has started telemetry with OTLP on (`attach_otlp`). The SDK stamps each record with the
//!   current OpenTelemetry context, so the events the client emits inside a call carry that call's trace ids.
//!
//! Why the bridge has its own filter: unfiltered, every hyper/h2/tonic/reqwest event would become a log record,
//! and the exporter's own transport events would be exported by that same exporter — a feedback loop. The
//! bridge therefore takes only our crates' targets (`retrybudget*`), and never the export-failure target
//! ([`retrybudget_telemetry::export::EXPORT_LOG_TARGET`]): a failing log exporter must not log into itself.
//!
//! What must never happen: a key, prompt, completion or upstream message in an event. Events carry names,
//! numbers and printable (credential-free) URLs only. These records are never evidence: their event names
//! are `retrybudget.log.*` and their instrumentation scope is the bridge's, not `retrybudget`; the
//! `retrybudget.attempt` records are written by the evidence events alone.
//!
//! The command's own answers (the proxy's "listening on" line, tables, reports, the final error line) are
//! not logs: they go to stdout or stderr as before, whatever the log level.

use std::io::IsTerminal as _;
use std::sync::{Arc, PoisonError, RwLock};

use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use retrybudget_telemetry::Telemetry;
use retrybudget_telemetry::export::EXPORT_LOG_TARGET;
use tracing::Subscriber;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, filter_fn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::cli::LogFormat;
use crate::config::UsageError;

/// The level when neither `--log-level` nor `RUST_LOG` is set.
pub const DEFAULT_LEVEL: &str = "info";

type Bridge = OpenTelemetryTracingBridge<SdkLoggerProvider, SdkLogger>;

/// The bridge of the telemetry currently running, if it exports OTLP. Replaced when a subcommand starts
/// telemetry again (the smoke test starts several pipelines), cleared when it stops.
static BRIDGE: RwLock<Option<Arc<Bridge>>> = RwLock::new(None);

/// The filter directives in force: `--log-level` (flag or `RETRYBUDGET_LOG_LEVEL`), else `RUST_LOG`, else
/// [`DEFAULT_LEVEL`].
pub fn directives(log_level: Option<&str>) -> String {
    log_level
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| DEFAULT_LEVEL.to_owned())
}

fn env_filter(directives: &str) -> Result<EnvFilter, UsageError> {
    EnvFilter::builder().parse(directives).map_err(|e| {
        UsageError(format!(
            "invalid log level {directives:?} (--log-level, RETRYBUDGET_LOG_LEVEL or RUST_LOG): {e}; write a \
             level (error, warn, info, debug, trace) or directives such as retrybudget=debug,info"
        ))
    })
}

/// Installs the process's subscriber: stderr in `format`, plus the (initially detached) OTLP log bridge.
/// A bad level is a usage error (exit 2).
pub fn init(log_level: Option<&str>, format: LogFormat) -> Result<(), UsageError> {
    let directives = directives(log_level);
    let stderr_filter = env_filter(&directives)?;
    let bridge_filter =
        env_filter(&directives)?.and(filter_fn(|meta| bridged_target(meta.target())));
    let stderr = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // A second init (tests calling `run` twice in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(stderr.with_filter(stderr_filter))
        .with(LateBridge.with_filter(bridge_filter))
        .try_init();
    Ok(())
}

/// Whether events of `target` may become OTLP log records: our crates, never the export-failure events.
pub fn bridged_target(target: &str) -> bool {
    target.starts_with("retrybudget") && !target.starts_with(EXPORT_LOG_TARGET)
}

/// Sends operational logs to `telemetry`'s OTLP logs exporter from now on (no-op when OTLP is off).
pub(crate) fn attach_otlp(telemetry: &Telemetry) {
    let bridge = telemetry
        .logger_provider()
        .map(|p| Arc::new(OpenTelemetryTracingBridge::new(&p)));
    *BRIDGE.write().unwrap_or_else(PoisonError::into_inner) = bridge;
}

/// Stops sending operational logs over OTLP (before the telemetry they went to shuts down).
pub(crate) fn detach_otlp() {
    *BRIDGE.write().unwrap_or_else(PoisonError::into_inner) = None;
}

/// A layer that forwards events to the bridge attached at the time, if any. The subscriber is global and
/// installed at start-up, before any subcommand has read its telemetry settings; this is the seam.
struct LateBridge;

impl<S> Layer<S> for LateBridge
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let bridge = BRIDGE
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(bridge) = bridge {
            bridge.on_event(event, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_bridge_takes_our_targets_only() {
        assert!(bridged_target("retrybudget::cmd_proxy"));
        assert!(bridged_target("retrybudget_client::inflight"));
        assert!(bridged_target("retrybudget_proxy::handler"));
        for feedback in [
            EXPORT_LOG_TARGET,
            "hyper_util::client::legacy::pool",
            "h2::codec::framed_write",
            "tonic::transport",
            "reqwest::connect",
            "opentelemetry_sdk",
        ] {
            assert!(!bridged_target(feedback), "{feedback}");
        }
    }

    #[test]
    fn a_flag_wins_and_a_bad_level_is_a_usage_error() {
        assert_eq!(directives(Some("debug")), "debug");
        assert!(env_filter("retrybudget=debug,info").is_ok());
        let e = env_filter("retrybudget=loud").unwrap_err().to_string();
        assert!(e.contains("--log-level"), "{e}");
    }
}
