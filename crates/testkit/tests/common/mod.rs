//! Shared pieces of the integration tests: real OpenTelemetry SDK pipelines pointed at the
//! receiver over gRPC or OTLP/HTTP, a fixed set of telemetry to emit, and the checks that it
//! arrived decoded.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use opentelemetry::{
    Array, Context, KeyValue, Value,
    logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity},
    metrics::MeterProvider as _,
    trace::{SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::{
    LogExporter, MetricExporter, Protocol, RetryPolicy, SpanExporter, WithExportConfig,
    WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    logs::SdkLoggerProvider,
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::SdkTracerProvider,
};
use retrybudget_testkit::{
    OtlpReceiver, Signal, Transport,
    proto::tonic::{
        logs::v1::SeverityNumber,
        trace::v1::{span::SpanKind as ProtoKind, status::StatusCode as ProtoStatus},
    },
};

pub(crate) const SCOPE: &str = "retrybudget-testkit-tests";
pub(crate) const CANARY: &str = "canary-7f3a9c";
pub(crate) const LOGICAL: &str = "chat gpt-test";
pub(crate) const ATTEMPT: &str = "POST /v1/chat/completions";
pub(crate) const EVENT: &str = "retrybudget.attempt";

/// How the exporters reach the receiver.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A gRPC endpoint, `http://host:port`.
    Grpc(String),
    /// An OTLP/HTTP base URL, `http://host:port`; the signal paths are appended here because a
    /// programmatic endpoint is used verbatim.
    Http(String),
}

/// Exporter settings that matter to the tests.
#[derive(Debug, Clone)]
pub(crate) struct ExportSettings {
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::disabled(),
        }
    }
}

/// One builder chain per transport, the same for every signal (`$path` is the HTTP signal path).
macro_rules! exporter {
    ($kind:ident, $target:expr, $s:expr, $path:literal) => {
        match $target {
            Target::Grpc(endpoint) => $kind::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout($s.timeout)
                .with_retry_policy($s.retry.clone())
                .build()
                .unwrap(),
            Target::Http(base) => $kind::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}{}", $path))
                .with_timeout($s.timeout)
                .with_retry_policy($s.retry.clone())
                .build()
                .unwrap(),
        }
    };
}

pub(crate) fn span_exporter(target: &Target, s: &ExportSettings) -> SpanExporter {
    exporter!(SpanExporter, target, s, "/v1/traces")
}

pub(crate) fn metric_exporter(target: &Target, s: &ExportSettings) -> MetricExporter {
    exporter!(MetricExporter, target, s, "/v1/metrics")
}

pub(crate) fn log_exporter(target: &Target, s: &ExportSettings) -> LogExporter {
    exporter!(LogExporter, target, s, "/v1/logs")
}

fn resource() -> Resource {
    Resource::builder()
        .with_service_name("testkit-roundtrip")
        .with_attribute(KeyValue::new("deployment.environment.name", "test"))
        .build()
}

/// The three SDK providers of one test, each with a background-thread processor/reader.
#[derive(Clone)]
pub(crate) struct Pipelines {
    pub(crate) traces: SdkTracerProvider,
    pub(crate) metrics: SdkMeterProvider,
    pub(crate) logs: SdkLoggerProvider,
}

/// Builds the providers. Must run inside the Tokio runtime (the tonic channel needs it).
pub(crate) fn pipelines(target: &Target, settings: &ExportSettings) -> Pipelines {
    let traces = SdkTracerProvider::builder()
        .with_batch_exporter(span_exporter(target, settings))
        .with_resource(resource())
        .build();
    // A long interval: the tests export metrics only through force_flush, deterministically.
    let reader = PeriodicReader::builder(metric_exporter(target, settings))
        .with_interval(Duration::from_secs(3600))
        .build();
    let metrics = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource())
        .build();
    let logs = SdkLoggerProvider::builder()
        .with_batch_exporter(log_exporter(target, settings))
        .with_resource(resource())
        .build();
    Pipelines {
        traces,
        metrics,
        logs,
    }
}

/// The outcome of flushing each signal, in order traces, metrics, logs.
#[derive(Debug)]
pub(crate) struct Flushed {
    pub(crate) traces: OTelSdkResult,
    pub(crate) metrics: OTelSdkResult,
    pub(crate) logs: OTelSdkResult,
}

/// `force_flush` on all three providers. They block on the exporters, so this runs them on the
/// blocking pool, never on a runtime worker.
pub(crate) async fn flush(p: &Pipelines) -> Flushed {
    let p = p.clone();
    tokio::task::spawn_blocking(move || Flushed {
        traces: p.traces.force_flush(),
        metrics: p.metrics.force_flush(),
        logs: p.logs.force_flush(),
    })
    .await
    .unwrap()
}

/// Shuts the providers down on the blocking pool (gRPC exporter shutdown hangs on a runtime
/// worker of a current-thread runtime; the blocking pool is safe everywhere). Results ignored:
/// `Ok` would prove nothing, the receiver is what the tests look at.
pub(crate) async fn shutdown(p: Pipelines) {
    tokio::task::spawn_blocking(move || {
        let _ = p.traces.shutdown();
        let _ = p.metrics.shutdown();
        let _ = p.logs.shutdown();
    })
    .await
    .unwrap();
}

/// Emits a logical span with one attempt child, a log record inside the attempt, and counter /
/// histogram / gauge measurements; the metrics are flushed twice so the receiver sees repeated
/// cumulative exports.
pub(crate) async fn emit_everything(p: &Pipelines) {
    let tracer = p.traces.tracer(SCOPE);
    let logger = p.logs.logger(SCOPE);
    let meter = p.metrics.meter(SCOPE);

    let calls = meter.u64_counter("retrybudget.calls").build();
    let duration = meter
        .f64_histogram("http.client.request.duration")
        .with_unit("s")
        .build();
    let remaining = meter.f64_gauge("retrybudget.budget.remaining").build();

    {
        let logical = tracer
            .span_builder(LOGICAL)
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("gen_ai.request.model", "gpt-test"),
                KeyValue::new("gen_ai.request.max_tokens", 64_i64),
                KeyValue::new("gen_ai.request.temperature", 0.5_f64),
                KeyValue::new("gen_ai.request.stream", false),
                KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    Value::Array(Array::String(vec!["stop".into(), "length".into()])),
                ),
            ])
            .start(&tracer);
        let logical_cx = Context::current_with_span(logical);

        let attempt = tracer
            .span_builder(ATTEMPT)
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.response.status_code", 503_i64),
                KeyValue::new("error.type", "503"),
                KeyValue::new("retrybudget.attempt", 0_i64),
            ])
            .start_with_context(&tracer, &logical_cx);
        let attempt_cx = logical_cx.with_span(attempt);
        {
            let _entered = attempt_cx.clone().attach();
            let mut record = logger.create_log_record();
            record.set_event_name(EVENT);
            record.set_severity_number(Severity::Warn);
            record.set_severity_text("WARN");
            record.set_body(format!("operator note {CANARY}").into());
            record.add_attribute("retrybudget.attempt", 0_i64);
            record.add_attribute("retrybudget.decision", "retry");
            logger.emit(record);
        }
        attempt_cx.span().set_status(Status::error("503"));
        attempt_cx.span().end();
        logical_cx.span().end();
    }

    calls.add(2, &[KeyValue::new("outcome", "success")]);
    calls.add(1, &[KeyValue::new("outcome", "failure")]);
    duration.record(0.1, &[KeyValue::new("http.request.method", "POST")]);
    remaining.record(5.0, &[KeyValue::new("scope", "global")]);
    let first = flush(p).await;
    assert!(first.metrics.is_ok(), "first metric flush: {first:?}");

    calls.add(1, &[KeyValue::new("outcome", "success")]);
    duration.record(0.3, &[KeyValue::new("http.request.method", "POST")]);
    remaining.record(4.0, &[KeyValue::new("scope", "global")]);
    let second = flush(p).await;
    assert!(second.metrics.is_ok(), "second metric flush: {second:?}");
}

/// Checks that everything [`emit_everything`] produced arrived decoded, via `transport`.
pub(crate) async fn assert_everything_arrived(r: &OtlpReceiver, transport: Transport) {
    let complete = r
        .wait_until(Duration::from_secs(10), |r| {
            r.spans().len() >= 2
                && !r.logs().is_empty()
                && r.counter_value("retrybudget.calls", &[]) >= 4.0
        })
        .await;
    assert!(
        complete,
        "spans {:?}, {} logs, metrics {:?}",
        r.span_names(),
        r.logs().len(),
        r.metric_names()
    );

    // spans: the tree, kinds, statuses, typed attributes, resource and scope
    let logical = r.spans_named(LOGICAL);
    assert_eq!(logical.len(), 1, "{:?}", r.span_names());
    let logical = &logical[0];
    assert_eq!(logical.transport, transport);
    assert!(logical.is_root());
    assert_eq!(logical.kind(), ProtoKind::Client);
    assert_eq!(logical.status_code(), ProtoStatus::Unset);
    assert_eq!(logical.scope_name, SCOPE);
    assert_eq!(
        logical.resource_attr_str("service.name"),
        Some("testkit-roundtrip")
    );
    assert_eq!(logical.attr_str("gen_ai.request.model"), Some("gpt-test"));
    assert_eq!(logical.attr_i64("gen_ai.request.max_tokens"), Some(64));
    assert_eq!(logical.attr_f64("gen_ai.request.temperature"), Some(0.5));
    assert_eq!(logical.attr_bool("gen_ai.request.stream"), Some(false));
    assert_eq!(
        logical.attr_str_array("gen_ai.response.finish_reasons"),
        Some(vec!["stop", "length"])
    );
    assert_eq!(logical.trace_id_hex().len(), 32);
    assert_eq!(logical.span_id_hex().len(), 16);

    let children = r.children_of(logical);
    assert_eq!(children.len(), 1);
    let attempt = &children[0];
    assert_eq!(attempt.name(), ATTEMPT);
    assert_eq!(attempt.parent_span_id_hex(), Some(logical.span_id_hex()));
    assert_eq!(attempt.trace_id_hex(), logical.trace_id_hex());
    assert_eq!(attempt.kind(), ProtoKind::Client);
    assert_eq!(attempt.status_code(), ProtoStatus::Error);
    assert_eq!(attempt.status_message(), "503");
    assert_eq!(attempt.attr_i64("http.response.status_code"), Some(503));
    // typed getters are strict: the integer is not a string
    assert_eq!(attempt.attr_str("http.response.status_code"), None);
    assert!(r.children_of(attempt).is_empty());

    // the evidence log record, correlated with the attempt span
    let logs = r.logs_with_event_name(EVENT);
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    assert_eq!(log.transport, transport);
    assert_eq!(
        log.record.event_name, EVENT,
        "the SDK fills the proto field"
    );
    assert_eq!(log.severity(), SeverityNumber::Warn);
    assert_eq!(log.severity_text(), "WARN");
    assert_eq!(
        log.body_str(),
        Some(format!("operator note {CANARY}").as_str())
    );
    assert_eq!(log.attr_i64("retrybudget.attempt"), Some(0));
    assert_eq!(log.attr_str("retrybudget.decision"), Some("retry"));
    assert_eq!(
        log.resource_attr_str("deployment.environment.name"),
        Some("test")
    );
    assert_eq!(log.trace_id_hex(), Some(attempt.trace_id_hex()));
    assert_eq!(log.span_id_hex(), Some(attempt.span_id_hex()));
    assert!(log.is_in_span(attempt));
    assert!(!log.is_in_span(logical));
    assert_eq!(r.logs_in_span(attempt).len(), 1);
    assert!(r.logs_with_event_name("nope").is_empty());

    // metrics: repeated cumulative exports are read as latest-per-series, not summed
    let call_batches = r
        .metrics()
        .iter()
        .filter(|m| m.name() == "retrybudget.calls")
        .count();
    assert!(call_batches >= 2, "expected two cumulative exports");
    assert_eq!(r.counter_value("retrybudget.calls", &[]), 4.0);
    assert_eq!(
        r.counter_value("retrybudget.calls", &[("outcome", "success")]),
        3.0
    );
    assert_eq!(
        r.counter_value("retrybudget.calls", &[("outcome", "failure")]),
        1.0
    );
    assert_eq!(
        r.counter_value("retrybudget.calls", &[("outcome", "cancelled")]),
        0.0
    );
    assert_eq!(r.histogram_count("http.client.request.duration", &[]), 2);
    assert_eq!(
        r.histogram_count(
            "http.client.request.duration",
            &[("http.request.method", "POST")]
        ),
        2
    );
    assert!((r.histogram_sum("http.client.request.duration", &[]) - 0.4).abs() < 1e-9);
    assert_eq!(r.gauge_last("retrybudget.budget.remaining", &[]), Some(4.0));
    assert_eq!(
        r.gauge_last("retrybudget.budget.remaining", &[("scope", "nope")]),
        None
    );
    assert!(r.metrics().iter().all(|m| m.transport == transport));
    assert!(
        r.metrics()
            .iter()
            .any(|m| m.name() == "http.client.request.duration" && m.unit() == "s")
    );

    // leak scans see every body
    assert!(r.raw_bytes_contain(CANARY.as_bytes()));
    assert!(r.raw_bytes_contain(LOGICAL.as_bytes()));
    assert!(!r.raw_bytes_contain(b"sk-never-sent"));
    for signal in Signal::ALL {
        assert!(r.request_count(signal) >= 1, "{signal:?}");
    }
}

/// Emits one span, one log record (with the canary) and one counter point, without flushing.
pub(crate) fn emit_small(p: &Pipelines) {
    let tracer = p.traces.tracer(SCOPE);
    let span = tracer.span_builder(LOGICAL).start(&tracer);
    let cx = Context::current_with_span(span);
    {
        let _entered = cx.clone().attach();
        let logger = p.logs.logger(SCOPE);
        let mut record = logger.create_log_record();
        record.set_event_name(EVENT);
        record.set_body(format!("operator note {CANARY}").into());
        logger.emit(record);
    }
    cx.span().end();
    p.metrics
        .meter(SCOPE)
        .u64_counter("retrybudget.calls")
        .build()
        .add(1, &[KeyValue::new("outcome", "success")]);
}
