//! Exporter wrappers that count what was lost.
//!
//! Export runs on the SDK's background threads with bounded queues, so a collector that is down, slow or
//! rejecting never blocks a call. But losing evidence silently is not acceptable either: every batch an exporter
//! fails to deliver (after its own retries and timeout) is counted in `retrybudget.telemetry.dropped{signal}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// The `tracing` target of export-failure events: an OTLP log bridge must filter it out (see the agent's
/// `logging` module), so that a failing log exporter never logs into itself.
pub const EXPORT_LOG_TARGET: &str = "retrybudget_telemetry::export";

/// The signals whose losses are counted, in the order of [`Dropped`]'s counters.
pub const SIGNALS: [&str; 4] = ["traces", "metrics", "logs", "evidence"];

/// Per-signal counters of dropped items, shared by the wrappers and the observable counter that reports them.
#[derive(Debug, Default)]
pub struct Dropped([AtomicU64; 4]);

impl Dropped {
    /// Counts `n` items of `signal` (an index into [`SIGNALS`]) as dropped.
    pub fn add(&self, signal: usize, n: u64) {
        if let Some(c) = self.0.get(signal) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Items of `signal` dropped so far.
    pub fn get(&self, signal: usize) -> u64 {
        self.0.get(signal).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Index of traces in [`SIGNALS`].
pub const TRACES: usize = 0;
/// Index of metrics.
pub const METRICS: usize = 1;
/// Index of logs.
pub const LOGS: usize = 2;
/// Index of the JSONL evidence file.
pub const EVIDENCE: usize = 3;

/// Wraps an exporter; failed exports add their item count to [`Dropped`].
#[derive(Debug)]
pub(crate) struct Counted<E> {
    pub(crate) inner: E,
    pub(crate) dropped: Arc<Dropped>,
}

impl<E> Counted<E> {
    fn count(&self, signal: usize, n: usize, result: OTelSdkResult) -> OTelSdkResult {
        if let Err(e) = &result {
            self.dropped.add(signal, n as u64);
            // An operational log on stderr. Its target is kept out of the OTLP log bridge (an export failure
            // exported as a log could feed back into the failing exporter).
            tracing::warn!(
                name: crate::names::LOG_EXPORT_FAILED,
                target: EXPORT_LOG_TARGET,
                signal = SIGNALS.get(signal).copied().unwrap_or("unknown"),
                items = n,
                error = %e,
                "telemetry export failed; the items are dropped and counted in retrybudget.telemetry.dropped"
            );
        }
        result
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.count(TRACES, n, result)
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for Counted<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        let result = self.inner.export(batch).await;
        self.count(LOGS, n, result)
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let n = metrics.scope_metrics().map(|s| s.metrics().count()).sum();
        let result = self.inner.export(metrics).await;
        self.count(METRICS, n, result)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
