//! retrybudget's telemetry: the names, the pipelines and the evidence events.
//!
//! - [`names`]: every span attribute, metric and event name of the telemetry contract, as constants.
//! - [`config`]: settings from the standard `OTEL_*` variables (protocol and `OTEL_SDK_DISABLED` included).
//! - [`Telemetry`]: OTLP export over gRPC or HTTP/protobuf, the same instruments for Prometheus scraping, the
//!   JSONL evidence file; bounded queues, counted drops, a shutdown that waits a bounded time. Over HTTP,
//!   spans and log records go through our own encoder (`otlp`), the hot path of full evidence; metrics
//!   are aggregated once for Prometheus and OTLP (`metric_push`).
//! - [`labels`]: caller-chosen model ids turned into bounded metric labels and budget scopes.
//! - [`evidence`]: [`AttemptEvent`] and [`CallEvent`], whose one `emit` writes span attributes, log record,
//!   metrics and evidence line together.
//! - [`record`]: [`EvidenceRecord`], the JSONL evidence line: written by the evidence writer, read by
//!   `retrybudget report` and `smoke`; [`timestamp`]: its RFC 3339 time format, both ways.
//!
//! This crate must never record content: no API key, prompt, completion, full body or upstream error message
//! ever reaches an event type, so none can reach an exporter.

mod bound;
pub mod config;
pub mod evidence;
mod evidence_file;
pub mod export;
pub mod labels;
mod metric_push;
pub mod names;
mod nested;
mod otlp;
mod pipeline;
mod propagation;
pub mod record;
pub mod redact;
pub mod timestamp;

pub use config::{OtlpConfig, OtlpProtocol, TelemetryConfig};
pub use evidence::{AttemptEvent, CallEvent, CallLabels, ResponseFacts};
pub use evidence_file::EvidenceRotation;
pub use labels::ModelLabels;
pub use nested::{CallerRetry, CallerRetrySource};
pub use pipeline::Telemetry;
pub use propagation::{TRACEPARENT, extract_traceparent, traceparent};
pub use record::EvidenceRecord;

/// Why the telemetry pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting is invalid; the message says which and how to fix it.
    #[error("telemetry configuration: {0}")]
    Config(String),
    /// An exporter, the evidence file or a thread could not be set up.
    #[error("telemetry setup: {0}")]
    Init(String),
}
