//! A Rust service's own `tracing` spans, bridged by `tracing-opentelemetry`, are the parents of the logical
//! call span with no extra argument — through the client and through the middleware — while the evidence
//! still reconciles and the operational logs (bridged by `opentelemetry-appender-tracing`) arrive with the
//! call's trace ids and are never counted as evidence.

use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use retrybudget_client::ChatRequest;
use retrybudget_fake_upstream::Step;
use retrybudget_middleware::RetryBudgetMiddleware;
use retrybudget_telemetry::names::*;
use retrybudget_testkit::proto::tonic::trace::v1::span::SpanKind;
use tracing::Instrument as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::harness::{Harness, MODEL};
use retrybudget_telemetry::OtlpProtocol;

#[tracing::instrument(name = "handle_question", skip_all)]
async fn handler(h: &Harness) {
    tracing::info!(name: "app.question", "answering a question");
    // The client, with no parent argument: 503, 503, then 200.
    let answer = h
        .client
        .chat(&ChatRequest::user(MODEL, "Say OK."))
        .await
        .unwrap();
    assert!(answer.text().is_some());
    // The middleware, in a child span of the handler: 200.
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryBudgetMiddleware::new(h.client.clone()))
        .build();
    let body = serde_json::to_vec(&ChatRequest::user(MODEL, "Say OK again.")).unwrap();
    let r = http
        .post(format!("{}/v1/chat/completions", h.upstream.base_url()))
        .body(body)
        .send()
        .instrument(tracing::info_span!("second_question"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn app_span_is_the_parent_of_the_logical_and_attempt_spans() {
    let h = Harness::start(OtlpProtocol::HttpProtobuf).await;
    h.upstream
        .push([Step::status(503), Step::status(503), Step::ok(), Step::ok()]);
    // An app's subscriber: its spans through tracing-opentelemetry (exported by our pipeline's tracer),
    // its logs and ours through the log bridge, filtered to app and retrybudget targets (never the HTTP
    // stack's, never the export-failure target).
    let provider = h.telemetry.logger_provider().unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(h.telemetry.tracer()))
        .with(OpenTelemetryTracingBridge::new(&provider).with_filter(
            tracing_subscriber::filter::filter_fn(|m| {
                (m.target().starts_with("retrybudget") || m.target().starts_with("all::"))
                    && !m
                        .target()
                        .starts_with(retrybudget_telemetry::export::EXPORT_LOG_TARGET)
            }),
        ));
    {
        let _default = tracing::subscriber::set_default(subscriber);
        handler(&h).await;
    }
    assert!(h.flush().await, "flush within its bound");

    // --- one trace: app span → logical span → attempt spans
    let app = h.receiver.spans_named("handle_question");
    assert_eq!(app.len(), 1, "spans: {:?}", h.receiver.span_names());
    let app = &app[0];
    assert!(app.is_root());
    let second = &h.receiver.spans_named("second_question")[0];
    assert!(second.is_child_of(app));
    let mut logical = h.receiver.spans_named(&format!("chat {MODEL}"));
    assert_eq!(logical.len(), 2);
    logical.sort_by_key(|s| s.attr_i64(RB_ATTEMPTS));
    let (second_call, first_call) = (&logical[0], &logical[1]);
    assert!(
        first_call.is_child_of(app),
        "the client's call is the handler's child"
    );
    assert!(
        second_call.is_child_of(second),
        "the middleware's call is its span's child"
    );
    assert_eq!(first_call.kind(), SpanKind::Client);
    assert_eq!(first_call.attr_i64(RB_ATTEMPTS), Some(3));
    assert_eq!(second_call.attr_i64(RB_ATTEMPTS), Some(1));
    let mut attempt_spans = h.receiver.children_of(first_call);
    attempt_spans.extend(h.receiver.children_of(second_call));
    assert_eq!(attempt_spans.len(), 4);
    for s in h.receiver.spans() {
        assert_eq!(
            s.trace_id_hex(),
            app.trace_id_hex(),
            "{} in the app's trace",
            s.name()
        );
    }
    for s in &attempt_spans {
        assert_eq!(s.name(), "POST /v1/chat/completions");
        assert_eq!(s.kind(), SpanKind::Client);
    }

    // --- reconciliation: upstream attempts = attempt spans = evidence records = JSONL lines = counter
    let evidence = h.receiver.logs_with_event_name(EVENT_ATTEMPT);
    assert_eq!(h.upstream.attempts(), 4);
    assert_eq!(evidence.len(), 4, "evidence records");
    assert_eq!(h.evidence_lines().len(), 4, "JSONL lines");
    assert_eq!(h.receiver.counter_value(M_ATTEMPTS, &[]), 4.0);
    for s in &attempt_spans {
        let inside: Vec<_> = h
            .receiver
            .logs_in_span(s)
            .into_iter()
            .filter(|l| l.event_name() == Some(EVENT_ATTEMPT))
            .collect();
        assert_eq!(inside.len(), 1, "one evidence record in each attempt span");
        assert_eq!(inside[0].scope_name, SCOPE_NAME);
    }

    // --- operational logs: their own stream, with the trace ids of what they concern
    let operational: Vec<_> = h
        .receiver
        .logs()
        .into_iter()
        .filter(|l| l.event_name() != Some(EVENT_ATTEMPT))
        .collect();
    let retries: Vec<_> = operational
        .iter()
        .filter(|l| l.event_name() == Some(LOG_RETRY))
        .collect();
    assert_eq!(retries.len(), 2, "one retry log per retried attempt");
    for l in &retries {
        assert_ne!(l.scope_name, SCOPE_NAME, "not in the evidence scope");
        assert_eq!(
            l.trace_id_hex(),
            Some(app.trace_id_hex()),
            "the call's trace"
        );
        assert!(
            attempt_spans.iter().any(|s| l.is_in_span(s)),
            "inside the attempt it concerns"
        );
    }
    let app_log = operational
        .iter()
        .find(|l| l.event_name() == Some("app.question"))
        .expect("the app's own log arrived");
    assert!(app_log.is_in_span(app));
    for l in &operational {
        let name = l.event_name().unwrap_or_default();
        assert!(
            name.starts_with(LOG_PREFIX) || name == "app.question",
            "only ours and the app's: {name}"
        );
    }
    h.stop().await;
}
