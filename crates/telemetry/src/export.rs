//! Exporter and processor wrappers that count what was lost.
//!
//! Export runs on the SDK's background threads with bounded queues, so a collector that is down, slow or
//! rejecting never blocks a call. But losing evidence silently is not acceptable either. An item can be lost in
//! three places, and each is counted in `retrybudget.telemetry.dropped{signal}`:
//! - the export queue is full (a hanging collector holds the export thread for a whole timeout while calls keep
//!   ending): `Bounded` keeps its own count of queued items and drops — and counts — what would not fit, because
//!   the SDK's batch processors drop silently (their counter is private and only logged at shutdown);
//! - an export fails or times out (after the exporter's own retries, bounded by the export timeout): `Counted`
//!   adds the batch's items (spans, log records, metric data points);
//! - an item arrives after shutdown began: counted by `Bounded` instead of vanishing.
//!
//! This module must never block the emitting thread, and never count an item twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

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

// === impl Queue ===

/// Our own count of the items waiting in one batch processor's queue, so a full queue is seen (and counted)
/// before the SDK would drop an item silently. The count is conservative: an item leaves it only when its batch
/// is handed to the exporter, so the SDK's channel (of the same capacity) is never the one that overflows.
#[derive(Debug)]
pub(crate) struct Queue {
    signal: usize,
    capacity: usize,
    queued: AtomicUsize,
    closed: AtomicBool,
    dropped: Arc<Dropped>,
}

impl Queue {
    pub(crate) fn new(signal: usize, capacity: usize, dropped: Arc<Dropped>) -> Arc<Queue> {
        Arc::new(Queue {
            signal,
            capacity: capacity.max(1),
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            dropped,
        })
    }

    /// Takes a place in the queue, or counts the item as dropped (queue full, or shut down).
    fn admit(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            self.dropped.add(self.signal, 1);
            return false;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.add(self.signal, 1);
            return false;
        }
        true
    }

    /// `n` items left the queue for the exporter.
    fn release(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Wraps a batch processor: admits an item only while its [`Queue`] has room, counts the rest.
#[derive(Debug)]
pub(crate) struct Bounded<P> {
    pub(crate) inner: P,
    pub(crate) queue: Arc<Queue>,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        if self.queue.admit() {
            self.inner.on_end(span);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.queue.close();
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<P: LogProcessor> LogProcessor for Bounded<P> {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        if self.queue.admit() {
            self.inner.emit(data, instrumentation);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.queue.close();
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// === impl Counted ===

/// Wraps an exporter; failed exports (an error, or the exporter's timeout) add their item count to [`Dropped`].
/// With a [`Queue`], handing a batch to the exporter frees its places.
#[derive(Debug)]
pub(crate) struct Counted<E> {
    pub(crate) inner: E,
    pub(crate) dropped: Arc<Dropped>,
    pub(crate) queue: Option<Arc<Queue>>,
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

    fn release(&self, n: usize) {
        if let Some(q) = &self.queue {
            q.release(n);
        }
    }
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

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.release(n);
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
        self.release(n);
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
        let n = data_points(metrics);
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
