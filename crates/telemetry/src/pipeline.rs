//! The telemetry pipeline: one tracer, one meter, one logger, a Prometheus registry and the evidence file.
//!
//! Spans and log records are always produced in-process (their trace and span ids are the link between the
//! evidence file and the traces); they are exported only when OTLP is configured. Metrics always feed the
//! Prometheus registry behind `/metrics`, and also an OTLP periodic reader when configured. Everything that
//! leaves the process goes through bounded queues on background threads, and shutdown waits a bounded time.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::metrics::{
    Counter, Gauge, Histogram, Meter, MeterProvider as _, ObservableCounter, ObservableGauge,
};
use opentelemetry::trace::{TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter as _;
use opentelemetry_sdk::metrics::{Instrument, SdkMeterProvider, Stream};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::TelemetryError;
use crate::bound::Bound;
use crate::config::{OtlpProtocol, TelemetryConfig};
use crate::evidence_file::EvidenceWriter;
use crate::export::{Counted, Dropped, LOGS, SIGNALS, TRACES};
use crate::metric_push::{MetricPush, SharedReader};
use crate::names::*;
use crate::otlp::{Batcher, OtlpExporter, Records, Signal, headers_from_env};

/// The instruments of the contract, created once.
#[derive(Debug)]
pub(crate) struct Instruments {
    pub(crate) http_duration: Bound<Histogram<f64>>,
    pub(crate) operation_duration: Bound<Histogram<f64>>,
    pub(crate) token_usage: Bound<Histogram<u64>>,
    pub(crate) calls: Bound<Counter<u64>>,
    pub(crate) attempts: Bound<Counter<u64>>,
    pub(crate) call_attempts: Bound<Histogram<u64>>,
    pub(crate) backoff: Histogram<f64>,
    pub(crate) budget_denied: Counter<u64>,
    pub(crate) nested_retries: Counter<u64>,
    pub(crate) proxy_rejected: Counter<u64>,
    pub(crate) probe_success: Gauge<f64>,
    pub(crate) probe_duration: Histogram<f64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        Instruments {
            http_duration: Bound::new(
                meter
                    .f64_histogram(M_HTTP_CLIENT_REQUEST_DURATION)
                    .with_unit("s")
                    .with_description("Duration of each HTTP attempt to the upstream.")
                    .with_boundaries(HTTP_DURATION_BUCKETS.to_vec())
                    .build(),
            ),
            operation_duration: Bound::new(
                meter
                    .f64_histogram(M_GEN_AI_OPERATION_DURATION)
                    .with_unit("s")
                    .with_description("Duration of each logical chat call, backoff included.")
                    .with_boundaries(GEN_AI_DURATION_BUCKETS.to_vec())
                    .build(),
            ),
            token_usage: Bound::new(
                meter
                    .u64_histogram(M_GEN_AI_TOKEN_USAGE)
                    .with_unit("{token}")
                    .with_description("Tokens used per call, by token type.")
                    .with_boundaries(TOKEN_BUCKETS.to_vec())
                    .build(),
            ),
            calls: Bound::new(
                meter
                    .u64_counter(M_CALLS)
                    .with_unit("{call}")
                    .with_description("Logical calls by terminal outcome.")
                    .build(),
            ),
            attempts: Bound::new(
                meter
                    .u64_counter(M_ATTEMPTS)
                    .with_unit("{attempt}")
                    .with_description("Upstream attempts by decision and error type.")
                    .build(),
            ),
            call_attempts: Bound::new(
                meter
                    .u64_histogram(M_CALL_ATTEMPTS)
                    .with_unit("{attempt}")
                    .with_description("Attempts per logical call.")
                    .with_boundaries(CALL_ATTEMPTS_BUCKETS.to_vec())
                    .build(),
            ),
            backoff: meter
                .f64_histogram(M_BACKOFF_DURATION)
                .with_unit("s")
                .with_description("Delay slept before a retry, by delay source.")
                .with_boundaries(BACKOFF_BUCKETS.to_vec())
                .build(),
            budget_denied: meter
                .u64_counter(M_BUDGET_DENIED)
                .with_unit("{retry}")
                .with_description("Retries the shared budget denied.")
                .build(),
            nested_retries: meter
                .u64_counter(M_NESTED_RETRIES)
                .with_unit("{request}")
                .with_description("Requests whose caller was itself retrying.")
                .build(),
            proxy_rejected: meter
                .u64_counter(M_PROXY_REJECTED)
                .with_unit("{request}")
                .with_description(
                    "Requests the proxy refused before anything was sent upstream, by reason.",
                )
                .build(),
            probe_success: meter
                .f64_gauge(M_PROBE_SUCCESS)
                // No unit: the Prometheus exporter turns unit "1" into a `_ratio` suffix, and the contract's
                // Prometheus name is `retrybudget_probe_success`.
                .with_description("1 if the last probe check passed, else 0.")
                .build(),
            probe_duration: meter
                .f64_histogram(M_PROBE_DURATION)
                .with_unit("s")
                .with_description("Duration of each probe check.")
                .with_boundaries(GEN_AI_DURATION_BUCKETS.to_vec())
                .build(),
        }
    }
}

/// The running pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) tracer: SdkTracer,
    tracer_provider: SdkTracerProvider,
    /// The evidence log records' way in (when OTLP is on): encoded from the event's fields, no SDK record.
    pub(crate) records: Option<Records>,
    /// Their instrumentation scope (that of a logger named [`SCOPE_NAME`]).
    pub(crate) records_scope: InstrumentationScope,
    logger_provider: Option<SdkLoggerProvider>,
    meter_provider: SdkMeterProvider,
    metric_push: Option<MetricPush>,
    meter: Meter,
    registry: prometheus::Registry,
    pub(crate) instruments: Instruments,
    pub(crate) evidence: Option<EvidenceWriter>,
    pub(crate) dropped: Arc<Dropped>,
    pub(crate) environment: String,
    otlp: bool,
    observers: Mutex<Vec<ObservableGauge<f64>>>,
    _dropped_counter: ObservableCounter<u64>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("otlp", &self.inner.otlp)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the pipeline. With OTLP over gRPC this must run inside a Tokio runtime (the exporter's channel
    /// lives on it).
    pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
        let mut attrs: Vec<KeyValue> = config
            .resource_attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        attrs.retain(|kv| kv.key.as_str() != SERVICE_NAME);
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attributes(attrs)
            .build();
        let dropped = Arc::new(Dropped::default());

        let registry = prometheus::Registry::new();
        let prom = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .map_err(|e| TelemetryError::Init(format!("prometheus exporter: {e}")))?;
        // Explicit cardinality limit on every instrument: past it the SDK folds new attribute sets into one
        // `otel.metric.overflow` series instead of growing memory. Our own labels are bounded before this
        // (see `crate::labels`), so reaching it means a bug, not a busy caller.
        let limit_cardinality = |_: &Instrument| {
            Stream::builder()
                .with_cardinality_limit(METRIC_CARDINALITY_LIMIT)
                .build()
                .ok()
        };
        // One aggregation for `/metrics` and OTLP alike (`crate::metric_push`).
        let prom = SharedReader(Arc::new(prom));
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_view(limit_cardinality)
            .with_reader(prom.clone());
        let mut metric_push = None;
        let mut tracers = SdkTracerProvider::builder().with_resource(resource.clone());
        let mut logger_provider = None;
        let mut records = None;
        if let Some(otlp) = &config.otlp {
            let timeout = otlp.timeout;
            let err = |signal: &str, e: opentelemetry_otlp::ExporterBuildError| {
                TelemetryError::Init(format!("OTLP {signal} exporter: {e}"))
            };
            let metrics = match otlp.protocol {
                OtlpProtocol::Grpc => MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(&otlp.metrics_endpoint)
                    .with_timeout(timeout)
                    .build(),
                OtlpProtocol::HttpProtobuf => MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(&otlp.metrics_endpoint)
                    .with_timeout(timeout)
                    .build(),
            }
            .map_err(|e| err("metrics", e))?;
            // Spans and log records: our own encoder and transports (`crate::otlp`), the hot path.
            let otlp_exporter = |signal, endpoint: &str| {
                OtlpExporter::new(
                    otlp.protocol,
                    signal,
                    endpoint,
                    headers_from_env(signal),
                    timeout,
                )
            };
            let batcher = |signal, exporter| {
                Batcher::start(
                    signal,
                    exporter,
                    config.queue_size,
                    config.batch_size,
                    config.batch_delay,
                    Arc::clone(&dropped),
                )
                .map_err(|e| TelemetryError::Init(format!("OTLP export thread: {e}")))
            };
            let spans = batcher(
                TRACES,
                otlp_exporter(Signal::Traces, &otlp.traces_endpoint)?,
            )?;
            let logs = batcher(LOGS, otlp_exporter(Signal::Logs, &otlp.logs_endpoint)?)?;
            records = Some(logs.records());
            let metrics = Counted {
                inner: metrics,
                dropped: Arc::clone(&dropped),
            };
            tracers = tracers.with_span_processor(spans);
            let push_reader = prom.reader_for(metrics.temporality());
            if !Arc::ptr_eq(&push_reader.0, &prom.0) {
                meters = meters.with_reader(push_reader.clone());
            }
            metric_push = Some((push_reader, metrics));
            logger_provider = Some(
                SdkLoggerProvider::builder()
                    .with_resource(resource.clone())
                    .with_log_processor(logs)
                    .build(),
            );
        }
        let tracer_provider = tracers.build();
        let meter_provider = meters.build();
        let metric_push = match metric_push {
            Some((reader, exporter)) => Some(
                MetricPush::start(reader, exporter, config.metric_interval)
                    .map_err(|e| TelemetryError::Init(format!("metrics export thread: {e}")))?,
            ),
            None => None,
        };
        let meter = meter_provider.meter(SCOPE_NAME);
        let tracer = tracer_provider.tracer(SCOPE_NAME);
        let dropped_for_counter = Arc::clone(&dropped);
        let dropped_counter = meter
            .u64_observable_counter(M_TELEMETRY_DROPPED)
            .with_unit("{item}")
            .with_description("Telemetry items that could not be delivered, by signal.")
            .with_callback(move |obs| {
                for (i, signal) in SIGNALS.iter().enumerate() {
                    obs.observe(
                        dropped_for_counter.get(i),
                        &[KeyValue::new(RB_SIGNAL, *signal)],
                    );
                }
            })
            .build();
        let evidence = match &config.evidence_file {
            Some(path) => Some(EvidenceWriter::open(
                path,
                config.evidence_rotation,
                Arc::clone(&dropped),
            )?),
            None => None,
        };
        Ok(Telemetry {
            inner: Arc::new(Inner {
                instruments: Instruments::new(&meter),
                tracer,
                tracer_provider,
                records,
                records_scope: InstrumentationScope::builder(SCOPE_NAME).build(),
                logger_provider,
                meter_provider,
                metric_push,
                meter,
                registry,
                evidence,
                dropped,
                environment: config.environment().unwrap_or("unknown").to_owned(),
                otlp: config.otlp.is_some(),
                observers: Mutex::new(Vec::new()),
                _dropped_counter: dropped_counter,
            }),
        })
    }

    /// A pipeline with nothing exported (tests, benchmarks with telemetry "off" still need ids).
    pub fn local() -> Telemetry {
        // Cannot fail: no exporter and no file to open.
        match Telemetry::init(&TelemetryConfig::default()) {
            Ok(t) => t,
            Err(e) => unreachable!("local telemetry has nothing that can fail: {e}"),
        }
    }

    /// Reports each scope's budget balance through `retrybudget.budget.remaining`, read at collection time.
    pub fn observe_budgets(
        &self,
        balances: impl Fn() -> Vec<(String, f64)> + Send + Sync + 'static,
    ) {
        let gauge = self
            .inner
            .meter
            .f64_observable_gauge(M_BUDGET_REMAINING)
            .with_unit("{retry}")
            .with_description("Shared retry budget balance per scope.")
            .with_callback(move |obs| {
                for (scope, balance) in balances() {
                    obs.observe(balance, &[KeyValue::new(RB_SCOPE, scope)]);
                }
            })
            .build();
        self.inner
            .observers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(gauge);
    }

    /// Creates `route`'s series that dashboards and alerts must read as 0, not "no data", before anything
    /// happened on it (`retrybudget.client.nested_retries`). Once per route, not per call: every measurement
    /// costs a hash of its attributes on the request path.
    pub fn announce_route(&self, route: &opentelemetry::StringValue) {
        self.inner
            .instruments
            .nested_retries
            .add(0, &[KeyValue::new(RB_ROUTE, route.clone())]);
    }

    /// Counts a request the proxy refused locally; `reason` is one of a fixed set of words (bounded label).
    pub fn record_proxy_rejected(&self, reason: &'static str) {
        self.inner
            .instruments
            .proxy_rejected
            .add(1, &[KeyValue::new(RB_REJECT_REASON, reason)]);
    }

    /// Records a probe check's result.
    pub fn record_probe(&self, check: &str, success: bool, duration: Duration) {
        let attrs = [KeyValue::new(RB_CHECK, check.to_owned())];
        self.inner
            .instruments
            .probe_success
            .record(if success { 1.0 } else { 0.0 }, &attrs);
        self.inner
            .instruments
            .probe_duration
            .record(duration.as_secs_f64(), &attrs);
    }

    /// The Prometheus text exposition of every instrument.
    pub fn prometheus_text(&self) -> String {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode(&self.inner.registry.gather(), &mut buf)
        {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Items dropped so far for `signal` (index into [`crate::export::SIGNALS`]).
    pub fn dropped(&self, signal: usize) -> u64 {
        self.inner.dropped.get(signal)
    }

    /// Whether OTLP export is configured.
    pub fn exports_otlp(&self) -> bool {
        self.inner.otlp
    }

    /// The tracer of this pipeline, for an application's own spans (e.g. a `tracing-opentelemetry` layer), so
    /// they are exported with ours and share their traces.
    pub fn tracer(&self) -> SdkTracer {
        self.inner.tracer.clone()
    }

    /// The OTLP logger provider, when OTLP is on: for a log bridge (`opentelemetry-appender-tracing`) that
    /// exports operational logs next to the evidence records.
    pub fn logger_provider(&self) -> Option<SdkLoggerProvider> {
        self.inner.logger_provider.clone()
    }

    /// Starts a span as a child of `parent` and returns the context holding it.
    pub fn start_span(
        &self,
        parent: &Context,
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: opentelemetry::trace::SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .inner
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.inner.tracer, parent);
        parent.with_span(span)
    }

    /// Writes every evidence line emitted so far to the file. True if that worked, or if there is no file.
    pub fn flush_evidence(&self) -> bool {
        self.inner
            .evidence
            .as_ref()
            .is_none_or(EvidenceWriter::flush)
    }

    /// Reopens the evidence file by its path, e.g. on SIGHUP after `logrotate` renamed it. Returns at once: the
    /// writer thread reopens before its next write, so lines emitted until then land in the renamed file.
    pub fn reopen_evidence(&self) {
        if let Some(e) = &self.inner.evidence {
            e.reopen();
        }
    }

    /// Flushes and shuts everything down, waiting at most `timeout` in total. Returns whether it all completed
    /// in time; on `false` whatever was still queued is lost (and the caller is not held hostage by a dead
    /// collector). Safe to call from async code: the work runs on its own thread.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let inner = Arc::clone(&self.inner);
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("retrybudget-telemetry-shutdown".into())
            .spawn(move || {
                let per = timeout / 2;
                let _ = inner.tracer_provider.force_flush();
                if let Some(p) = &inner.logger_provider {
                    let _ = p.force_flush();
                }
                let _ = inner.tracer_provider.shutdown_with_timeout(per);
                if let Some(p) = &inner.logger_provider {
                    let _ = p.shutdown_with_timeout(per);
                }
                if let Some(m) = &inner.metric_push {
                    m.shutdown();
                }
                let _ = inner.meter_provider.shutdown_with_timeout(per);
                if let Some(e) = &inner.evidence {
                    e.close();
                }
                let _ = tx.send(());
            });
        spawned.is_ok() && rx.recv_timeout(timeout).is_ok()
    }
}
