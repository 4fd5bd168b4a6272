//! Metrics to OTLP from the reader that already serves `/metrics`.
//!
//! # Why
//! Each reader registered with the SDK's meter provider keeps its own aggregation: every measurement on the
//! request path looks its attribute set up (a hash and a map probe) once per reader. Prometheus and the SDK's
//! `PeriodicReader` side by side made each of a call's eight measurements twice — ~7 % of the proxy's CPU
//! with full evidence on (BENCHMARKS.md). Both want cumulative sums, so one aggregation can serve both: the
//! Prometheus exporter stays the only reader, and [`MetricPush`] collects from that same reader on its own
//! thread at the export interval and hands the result to the OTLP exporter.
//!
//! An OTLP exporter that asks for delta temporality (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`)
//! cannot share Prometheus's cumulative sums; it gets a reader of its own with its temporality, and the push
//! loop is the same.
//!
//! # What must never happen
//! - A measurement blocking on the export: collection takes the SDK's aggregation locks briefly, the export
//!   runs after them, on this thread.
//! - Shutdown losing what was measured since the last tick: [`MetricPush::shutdown`] exports once more first.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

/// A reader registered with the meter provider while another owner (a [`MetricPush`]) collects from it too.
#[derive(Debug, Clone)]
pub(crate) struct SharedReader(pub(crate) Arc<dyn MetricReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

impl SharedReader {
    /// The reader to push to an exporter that wants `temporality`: this one if it is cumulative (Prometheus's
    /// sums are), else a new reader with that temporality, which the meter provider must also be given.
    pub(crate) fn reader_for(&self, temporality: Temporality) -> SharedReader {
        if temporality == self.0.temporality(InstrumentKind::Counter) {
            self.clone()
        } else {
            SharedReader(Arc::new(
                ManualReader::builder()
                    .with_temporality(temporality)
                    .build(),
            ))
        }
    }
}

/// The push thread's loop: export at every tick; once more, then shut the exporter down, when the
/// [`MetricPush`] is shut down (its sender dropped; nothing is ever sent).
fn run<E: PushMetricExporter>(
    reader: &SharedReader,
    exporter: &E,
    interval: Duration,
    stop: &mpsc::Receiver<()>,
) {
    let export = || {
        let mut rm = ResourceMetrics::default();
        // A failed collection (the provider already shut down) leaves nothing to send.
        if reader.collect(&mut rm).is_ok() {
            // Failures are counted and logged by the exporter's `Counted` wrapper.
            let _ = futures_executor::block_on(exporter.export(&rm));
        }
    };
    loop {
        match stop.recv_timeout(interval) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => export(),
            Err(RecvTimeoutError::Disconnected) => {
                export();
                let _ = exporter.shutdown_with_timeout(interval.max(Duration::from_secs(1)));
                return;
            }
        }
    }
}

/// The thread that exports a reader's metrics every interval, and once more at shutdown.
#[derive(Debug)]
pub(crate) struct MetricPush {
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MetricPush {
    /// Starts the thread. `reader` must be registered with the meter provider (directly or as a
    /// [`SharedReader`]) before the first tick.
    pub(crate) fn start<E: PushMetricExporter>(
        reader: SharedReader,
        exporter: E,
        interval: Duration,
    ) -> std::io::Result<MetricPush> {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("retrybudget-metrics".into())
            .spawn(move || run(&reader, &exporter, interval, &rx))?;
        Ok(MetricPush {
            stop: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Exports what is left and stops the thread (it ends after that export: the exporter's own timeout
    /// bounds it). Later calls do nothing.
    pub(crate) fn shutdown(&self) {
        drop(
            self.stop
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicU64, Ordering};

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};

    use super::*;

    /// Remembers the last sum it was sent, the total of every sum it was sent, and their temporality.
    #[derive(Debug, Clone, Default)]
    struct Last(Arc<(AtomicU64, Mutex<Option<Temporality>>, AtomicU64)>);

    impl PushMetricExporter for Last {
        async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
            for m in metrics.scope_metrics().flat_map(|s| s.metrics()) {
                if let AggregatedMetrics::U64(MetricData::Sum(s)) = m.data() {
                    let v = s.data_points().map(|p| p.value()).sum::<u64>();
                    self.0.0.store(v, Ordering::SeqCst);
                    self.0.2.fetch_add(v, Ordering::SeqCst);
                    *self.0.1.lock().unwrap() = Some(s.temporality());
                }
            }
            Ok(())
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    /// The Prometheus reader's cumulative sums reach the push exporter, including what was measured after the
    /// last tick (the export at shutdown), and `/metrics` reads the very same aggregation.
    #[test]
    fn one_aggregation_serves_prometheus_and_the_push() {
        let registry = prometheus::Registry::new();
        let prom = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .unwrap();
        let prom = SharedReader(Arc::new(prom));
        let provider = SdkMeterProvider::builder()
            .with_reader(prom.clone())
            .build();
        let counter = provider.meter("t").u64_counter("pushed").build();
        let last = Last::default();
        let push = MetricPush::start(prom, last.clone(), Duration::from_secs(3600)).unwrap();
        counter.add(2, &[]);
        counter.add(3, &[]);
        push.shutdown();
        push.shutdown();
        assert_eq!(last.0.0.load(Ordering::SeqCst), 5);
        assert_eq!(*last.0.1.lock().unwrap(), Some(Temporality::Cumulative));
        let text = {
            use prometheus::Encoder as _;
            let mut buf = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains("pushed_total{otel_scope_name=\"t\"} 5"),
            "{text}"
        );
    }

    /// An exporter that wants delta sums gets a reader of its own: each push carries what was measured since
    /// the one before.
    #[test]
    fn a_delta_exporter_gets_a_reader_of_its_own() {
        let prom = SharedReader(Arc::new(ManualReader::builder().build()));
        assert!(Arc::ptr_eq(
            &prom.reader_for(Temporality::Cumulative).0,
            &prom.0
        ));
        let own = prom.reader_for(Temporality::Delta);
        assert!(!Arc::ptr_eq(&own.0, &prom.0));
        let provider = SdkMeterProvider::builder()
            .with_reader(prom)
            .with_reader(own.clone())
            .build();
        let counter = provider.meter("t").u64_counter("pushed").build();
        let last = Last::default();
        let push = MetricPush::start(own, last.clone(), Duration::from_millis(20)).unwrap();
        counter.add(4, &[]);
        // Wait (bounded) for a tick to push the 4, however slow the machine.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while last.0.2.load(Ordering::SeqCst) < 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(last.0.2.load(Ordering::SeqCst), 4, "a tick pushed the 4");
        counter.add(1, &[]);
        push.shutdown();
        // Cumulative pushes would add up to at least 4 + 5; deltas add up to what was measured.
        assert_eq!(
            last.0.2.load(Ordering::SeqCst),
            5,
            "delta: each push carries only what came after the one before"
        );
        assert_eq!(*last.0.1.lock().unwrap(), Some(Temporality::Delta));
    }
}
