//! The scenario table: every row runs through the real client against the real fake upstream, exporting to a
//! real OTLP receiver over gRPC and over HTTP, and checks the outcome, what the upstream saw, the span tree, the
//! evidence records, and that every count reconciles: upstream attempts = attempt spans = `retrybudget.attempts`
//! increments = OTLP evidence log records = JSONL lines.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Harness, MODEL};
use futures_util::StreamExt as _;
use retrybudget_client::{ChatError, ChatRequest, ExchangeBody, RawRequest};
use retrybudget_fake_upstream::{Fault, Step};
use retrybudget_policy::Outcome;
use retrybudget_telemetry::OtlpProtocol;
use retrybudget_telemetry::names::*;
use retrybudget_testkit::proto::tonic::trace::v1::status::StatusCode;

struct Row {
    name: &'static str,
    steps: Vec<Step>,
    stream: bool,
    refused: bool,
    outcome: Outcome,
    /// Per attempt: (status, error.type, decision).
    attempts: Vec<(Option<u16>, Option<&'static str>, &'static str)>,
    /// The call must take at least this long (server hints are honoured).
    min_elapsed: Duration,
}

fn row(
    name: &'static str,
    steps: Vec<Step>,
    outcome: Outcome,
    attempts: Vec<(Option<u16>, Option<&'static str>, &'static str)>,
) -> Row {
    Row {
        name,
        steps,
        stream: false,
        refused: false,
        outcome,
        attempts,
        min_elapsed: Duration::ZERO,
    }
}

fn table() -> Vec<Row> {
    let ok = (Some(200), None, "done");
    vec![
        row(
            "503,503,200",
            vec![Step::status(503), Step::status(503), Step::ok()],
            Outcome::SuccessAfterRetry,
            vec![
                (Some(503), Some("503"), "retry"),
                (Some(503), Some("503"), "retry"),
                ok,
            ],
        ),
        row(
            "400",
            vec![Step::status(400)],
            Outcome::FailedWithoutRetry,
            vec![(Some(400), Some("400"), "stop_non_retryable")],
        ),
        row(
            "401",
            vec![Step::status(401)],
            Outcome::FailedWithoutRetry,
            vec![(Some(401), Some("401"), "stop_non_retryable")],
        ),
        row(
            "429 insufficient_quota",
            vec![Step::status(429).error_code("insufficient_quota")],
            Outcome::FailedWithoutRetry,
            vec![(Some(429), Some("429"), "stop_non_retryable")],
        ),
        Row {
            min_elapsed: Duration::from_secs(1),
            ..row(
                "429 retry-after: 1",
                vec![Step::status(429).header("retry-after", "1"), Step::ok()],
                Outcome::SuccessAfterRetry,
                vec![(Some(429), Some("429"), "retry"), ok],
            )
        },
        Row {
            min_elapsed: Duration::from_millis(150),
            ..row(
                "429 retry-after-ms",
                vec![
                    Step::status(429).header("retry-after-ms", "150"),
                    Step::ok(),
                ],
                Outcome::SuccessAfterRetry,
                vec![(Some(429), Some("429"), "retry"), ok],
            )
        },
        row(
            "hint longer than the cap",
            vec![Step::status(503).header("retry-after", "120")],
            Outcome::DeadlineExceeded,
            vec![(Some(503), Some("503"), "stop_retry_after_too_long")],
        ),
        Row {
            refused: true,
            ..row(
                "connection refused",
                vec![],
                Outcome::FailedAfterRetry,
                vec![
                    (None, Some("connect_error"), "retry"),
                    (None, Some("connect_error"), "retry"),
                    (None, Some("connect_error"), "stop_attempts_exhausted"),
                ],
            )
        },
        row(
            "closed before head",
            vec![Step::with_fault(Fault::CloseBeforeHead), Step::ok()],
            Outcome::SuccessAfterRetry,
            vec![(None, Some("connection_reset"), "retry"), ok],
        ),
        row(
            "per-attempt timeout",
            vec![Step::ok().delay(Duration::from_secs(10)), Step::ok()],
            Outcome::SuccessAfterRetry,
            vec![(None, Some("timeout"), "retry"), ok],
        ),
        Row {
            stream: true,
            ..row(
                "stream success",
                vec![Step::ok()],
                Outcome::Success,
                vec![ok],
            )
        },
        Row {
            stream: true,
            ..row(
                "stream cut after the first chunk",
                vec![Step::with_fault(Fault::CutStreamAfter(1))],
                Outcome::StreamInterrupted,
                vec![(Some(200), Some("stream_interrupted"), "stop_committed")],
            )
        },
        Row {
            stream: true,
            ..row(
                "stream stalling after the first chunk (idle limit = per-attempt timeout)",
                vec![Step::ok().chunk_delay(Duration::from_secs(30))],
                Outcome::StreamInterrupted,
                vec![(Some(200), Some("stream_interrupted"), "stop_committed")],
            )
        },
        Row {
            stream: true,
            ..row(
                "stream failing before its first byte",
                vec![Step::with_fault(Fault::CloseBeforeHead), Step::ok()],
                Outcome::SuccessAfterRetry,
                vec![(None, Some("connection_reset"), "retry"), ok],
            )
        },
    ]
}

/// Runs the call; returns its outcome and the attempts the client reported.
async fn call(h: &Harness, stream: bool) -> (Outcome, Option<u32>) {
    let mut req = ChatRequest::user(MODEL, "Say OK.");
    if stream {
        req.extra.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
        match h.client.chat_stream(&req).await {
            Ok(mut s) => {
                while let Some(item) = s.next().await {
                    if item.is_err() {
                        break;
                    }
                }
                // A stream handed over reports no attempt count (the spans and records do).
                (s.outcome().expect("a finished stream has an outcome"), None)
            }
            Err(ChatError::Call(e)) => (e.outcome, Some(e.attempts)),
            Err(ChatError::Status {
                outcome, attempts, ..
            }) => (outcome, Some(attempts)),
            Err(e) => panic!("{e}"),
        }
    } else {
        let body = serde_json::to_vec(&req).unwrap();
        let mut raw = RawRequest::chat(body.into());
        raw.model = Some(MODEL.into());
        match h.client.send(raw).await {
            Ok(x) => {
                assert!(matches!(x.body, ExchangeBody::Full(_)));
                (x.outcome, Some(x.attempts))
            }
            Err(e) => (e.outcome, Some(e.attempts)),
        }
    }
}

async fn run_table(protocol: OtlpProtocol) {
    for r in table() {
        let h = if r.refused {
            Harness::start_with(protocol, |c| {
                c.base_url = retrybudget_testkit::refused_endpoint()
            })
            .await
        } else {
            Harness::start(protocol).await
        };
        h.upstream.push(r.steps.clone());
        let started = Instant::now();
        let (outcome, reported) = call(&h, r.stream).await;
        let elapsed = started.elapsed();
        assert!(
            h.flush().await,
            "{}: telemetry flush within its bound",
            r.name
        );
        check(&h, &r, outcome, reported, elapsed).await;
        h.upstream.shutdown().await;
        h.receiver.shutdown().await;
    }
}

async fn check(
    h: &Harness,
    r: &Row,
    outcome: Outcome,
    reported: Option<u32>,
    elapsed: std::time::Duration,
) {
    let name = r.name;
    let n = r.attempts.len();
    assert_eq!(outcome, r.outcome, "{name}: outcome");
    assert!(
        elapsed >= r.min_elapsed,
        "{name}: took {elapsed:?}, the hint asked for {:?}",
        r.min_elapsed
    );
    // A refused connection reaches no server: the fake must have seen nothing, and the attempts are those the
    // client reports (checked against spans, records and metrics below). Otherwise the fake saw each one.
    let expected_at_upstream = if r.refused { 0 } else { n };
    assert_eq!(
        h.upstream.attempts(),
        expected_at_upstream,
        "{name}: attempts the upstream saw"
    );
    if let Some(reported) = reported {
        assert_eq!(reported as usize, n, "{name}: attempts the client reported");
    }
    assert!(
        reported.is_some() || r.stream,
        "{name}: every non-streaming call reports its attempts"
    );

    // --- span tree: one logical span, one child per attempt
    let logical = h.receiver.spans_named(&format!("chat {MODEL}"));
    assert_eq!(logical.len(), 1, "{name}: one logical span");
    let logical = &logical[0];
    assert_eq!(
        logical.attr_str(RB_OUTCOME),
        Some(r.outcome.as_str()),
        "{name}"
    );
    assert_eq!(logical.attr_i64(RB_ATTEMPTS), Some(n as i64), "{name}");
    assert_eq!(logical.attr_str(GEN_AI_REQUEST_MODEL), Some(MODEL));
    let expect_error = r.outcome.is_failure();
    assert_eq!(
        logical.status_code() == StatusCode::Error,
        expect_error,
        "{name}: logical span status"
    );
    let mut attempts = h.receiver.children_of(logical);
    attempts.sort_by_key(|s| s.attr_i64(RB_ATTEMPT));
    assert_eq!(attempts.len(), n, "{name}: attempt spans");
    for (i, (span, (status, error_type, decision))) in attempts.iter().zip(&r.attempts).enumerate()
    {
        assert_eq!(span.name(), "POST /v1/chat/completions", "{name}");
        assert_eq!(span.attr_i64(RB_ATTEMPT), Some(i as i64));
        let resend = span.attr_i64(HTTP_REQUEST_RESEND_COUNT);
        assert_eq!(
            resend,
            (i > 0).then_some(i as i64),
            "{name}: resend_count on resends only"
        );
        assert_eq!(
            span.attr_i64(HTTP_RESPONSE_STATUS_CODE),
            status.map(i64::from),
            "{name} attempt {i}"
        );
        assert_eq!(span.attr_str(ERROR_TYPE), *error_type, "{name} attempt {i}");
        assert_eq!(
            span.attr_str(RB_DECISION),
            Some(*decision),
            "{name} attempt {i}"
        );
        assert_eq!(span.attr_str(URL_TEMPLATE), Some("/v1/chat/completions"));
        assert_eq!(span.attr_str(HTTP_REQUEST_METHOD), Some("POST"));
        assert_eq!(
            span.status_code() == StatusCode::Error,
            error_type.is_some(),
            "{name} attempt {i}: status"
        );
    }
    // traceparent on every attempt the upstream saw, naming that attempt's span (and the loop must run once per
    // attempt that reached the upstream: a zip over an empty list would check nothing)
    let requests = h.upstream.requests();
    assert_eq!(
        requests.len(),
        expected_at_upstream,
        "{name}: recorded requests"
    );
    let mut checked = 0;
    for (req, span) in requests.iter().zip(&attempts) {
        let tp = req.header("traceparent").expect("traceparent sent");
        assert_eq!(
            tp,
            format!("00-{}-{}-01", span.trace_id_hex(), span.span_id_hex()),
            "{name}"
        );
        checked += 1;
    }
    assert_eq!(
        checked, expected_at_upstream,
        "{name}: traceparents checked"
    );
    if r.stream && r.outcome == Outcome::Success {
        assert!(
            logical
                .attr_i64(GEN_AI_USAGE_INPUT_TOKENS)
                .is_some_and(|t| t > 0),
            "{name}: usage recorded"
        );
        assert!(
            logical
                .attr_i64(GEN_AI_USAGE_OUTPUT_TOKENS)
                .is_some_and(|t| t > 0),
            "{name}: usage recorded"
        );
    }

    // --- evidence records: OTLP logs inside their attempt spans, and JSONL lines
    let logs = h.receiver.logs_with_event_name(EVENT_ATTEMPT);
    assert_eq!(logs.len(), n, "{name}: evidence log records");
    for span in &attempts {
        assert_eq!(
            h.receiver.logs_in_span(span).len(),
            1,
            "{name}: one record inside each attempt span"
        );
    }
    let lines = h.evidence_lines();
    assert_eq!(lines.len(), n, "{name}: JSONL lines");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["retry_attempt"], i as u64);
        assert_eq!(
            line["retry_budget_remaining"],
            2 - i as u64,
            "{name}: allowance left"
        );
        assert_eq!(line["decision"], r.attempts[i].2);
        assert_eq!(line["provider_route"], "fake_chat_completions");
        assert_eq!(line["environment"], "test");
        assert_eq!(line["trace_id"], attempts[i].trace_id_hex());
        assert_eq!(line["span_id"], attempts[i].span_id_hex());
        let last = i + 1 == n;
        assert_eq!(
            line.get("terminal_outcome").and_then(|v| v.as_str()),
            last.then_some(r.outcome.as_str()),
            "{name}"
        );
    }

    // --- metrics add up
    let counted = h.receiver.counter_value(M_ATTEMPTS, &[]);
    assert_eq!(counted, n as f64, "{name}: retrybudget.attempts increments");
    assert_eq!(
        h.receiver
            .counter_value(M_CALLS, &[(RB_OUTCOME, r.outcome.as_str())]),
        1.0,
        "{name}: calls"
    );
    assert_eq!(
        h.receiver
            .histogram_count(M_HTTP_CLIENT_REQUEST_DURATION, &[]),
        n as u64,
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_table_over_grpc() {
    run_table(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_table_over_http() {
    run_table(OtlpProtocol::HttpProtobuf).await;
}

/// A request refused before it could leave (proxy-side validation) went on no wire: it leaves its evidence
/// record (inside the parent SERVER span's trace), its metric increments — and no CLIENT span at all.
async fn refused_locally(protocol: OtlpProtocol) {
    use opentelemetry::trace::{SpanKind, TraceContextExt as _};
    let h = Harness::start(protocol).await;
    let server = h.telemetry.start_span(
        &opentelemetry::Context::new(),
        "POST /v1/chat/completions",
        SpanKind::Server,
        vec![],
    );
    let mut raw = RawRequest::chat(b"{}".to_vec().into());
    raw.model = Some(MODEL.into());
    raw.parent = server.clone();
    assert_eq!(h.client.record_rejected(&raw), Outcome::FailedWithoutRetry);
    server.span().end();
    assert!(h.flush().await);
    assert_eq!(h.upstream.attempts(), 0);
    let spans = h.receiver.spans();
    assert_eq!(spans.len(), 1, "only the SERVER span: {spans:?}");
    assert_eq!(
        spans[0].kind(),
        retrybudget_testkit::proto::tonic::trace::v1::span::SpanKind::Server
    );
    let logs = h.receiver.logs_with_event_name(EVENT_ATTEMPT);
    assert_eq!(logs.len(), 1, "one evidence record");
    assert!(
        logs[0].is_in_span(&spans[0]),
        "correlated with the SERVER span"
    );
    let lines = h.evidence_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["error_type"], "validation_error");
    assert_eq!(lines[0]["span_id"], spans[0].span_id_hex());
    assert_eq!(h.receiver.counter_value(M_ATTEMPTS, &[]), 1.0);
    assert_eq!(
        h.receiver
            .counter_value(M_CALLS, &[(RB_OUTCOME, "failed_without_retry")]),
        1.0
    );
    assert_eq!(
        h.receiver
            .histogram_count(M_HTTP_CLIENT_REQUEST_DURATION, &[]),
        0,
        "no HTTP duration for a request that never left"
    );
    h.upstream.shutdown().await;
    h.receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_locally_has_no_client_span_grpc() {
    refused_locally(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_locally_has_no_client_span_http() {
    refused_locally(OtlpProtocol::HttpProtobuf).await;
}
