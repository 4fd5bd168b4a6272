//! The count of what telemetry export lost.
//!
//! Export runs on background threads with bounded queues, so a collector that is down, slow or rejecting never
//! blocks a call. But losing evidence silently is not acceptable either. An item can be lost in three places,
//! and each is counted in `retrybudget.telemetry.dropped{signal}`:
//! - the export queue is full (a hanging collector holds the export thread for a whole timeout while calls keep
//!   ending): the span and log batcher (`crate::otlp::Batcher`) drops — and counts — what would not fit;
//! - an export fails or times out (after the exporter's own retries, bounded by the export timeout): the batch's
//!   items (spans, log records; metric data points through `Counted`) are counted by `export_failed`;
//! - an item arrives after shutdown began: counted by the batcher instead of vanishing.
//!
//! Nothing here may block the emitting thread, or count an item twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;

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

// === impl Counted ===

/// Counts the `n` items of `signal` in a failed export as dropped, and says so on stderr.
pub(crate) fn export_failed(dropped: &Dropped, signal: usize, n: usize, error: &OTelSdkError) {
    dropped.add(signal, n as u64);
    // An operational log on stderr. Its target is kept out of the OTLP log bridge (an export failure
    // exported as a log could feed back into the failing exporter).
    tracing::warn!(
        name: crate::names::LOG_EXPORT_FAILED,
        target: EXPORT_LOG_TARGET,
        signal = SIGNALS.get(signal).copied().unwrap_or("unknown"),
        items = n,
        error = %error,
        "telemetry export failed; the items are dropped and counted in retrybudget.telemetry.dropped"
    );
}

/// Wraps the metric exporter: a failed export (an error, or the exporter's timeout) adds its data points to
/// [`Dropped`].
#[derive(Debug)]
pub(crate) struct Counted<E> {
    pub(crate) inner: E,
    pub(crate) dropped: Arc<Dropped>,
}

/// Data points in one metrics export: the unit `retrybudget.telemetry.dropped{signal="metrics"}` counts in.
pub fn data_points(metrics: &ResourceMetrics) -> usize {
    fn points<T>(data: &MetricData<T>) -> usize {
        match data {
            MetricData::Gauge(g) => g.data_points().count(),
            MetricData::Sum(s) => s.data_points().count(),
            MetricData::Histogram(h) => h.data_points().count(),
            MetricData::ExponentialHistogram(h) => h.data_points().count(),
        }
    }
    metrics
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .map(|m| match m.data() {
            AggregatedMetrics::F64(d) => points(d),
            AggregatedMetrics::U64(d) => points(d),
            AggregatedMetrics::I64(d) => points(d),
        })
        .sum()
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        if let Err(e) = &result {
            export_failed(&self.dropped, METRICS, data_points(metrics), e);
        }
        result
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
