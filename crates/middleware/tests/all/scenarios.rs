//! The scenario table's key rows through the client and through the middleware: the same outcome, the same
//! spans (names, kinds, tree, attributes), the same evidence (OTLP records, JSONL lines, metric increments).

use futures_util::StreamExt as _;
use retrybudget_client::{ChatError, ChatRequest, RawRequest};
use retrybudget_fake_upstream::{Fault, Step};
use retrybudget_middleware::RetryBudgetMiddleware;
use retrybudget_telemetry::names::*;
use retrybudget_testkit::proto::tonic::trace::v1::span::SpanKind;
use retrybudget_testkit::proto::tonic::trace::v1::status::StatusCode;

use crate::harness::{Harness, MODEL};
use retrybudget_telemetry::OtlpProtocol;

struct Row {
    name: &'static str,
    steps: fn() -> Vec<Step>,
    stream: bool,
    outcome: &'static str,
    /// Per attempt: (status, error.type, decision).
    attempts: Vec<(Option<i64>, Option<&'static str>, &'static str)>,
}

fn rows() -> Vec<Row> {
    let ok = (Some(200), None, "done");
    vec![
        Row {
            name: "503,503,200",
            steps: || vec![Step::status(503), Step::status(503), Step::ok()],
            stream: false,
            outcome: "success_after_retry",
            attempts: vec![
                (Some(503), Some("503"), "retry"),
                (Some(503), Some("503"), "retry"),
                ok,
            ],
        },
        Row {
            name: "400",
            steps: || vec![Step::status(400)],
            stream: false,
            outcome: "failed_without_retry",
            attempts: vec![(Some(400), Some("400"), "stop_non_retryable")],
        },
        Row {
            name: "429 retry-after: 1",
            steps: || vec![Step::status(429).header("retry-after", "1"), Step::ok()],
            stream: false,
            outcome: "success_after_retry",
            attempts: vec![(Some(429), Some("429"), "retry"), ok],
        },
        Row {
            name: "stream cut after the first chunk",
            steps: || vec![Step::with_fault(Fault::CutStreamAfter(1))],
            stream: true,
            outcome: "stream_interrupted",
            attempts: vec![(Some(200), Some("stream_interrupted"), "stop_committed")],
        },
    ]
}

/// What one logical call left behind, in a form two runs can be compared by.
#[derive(Debug, PartialEq)]
struct Seen {
    upstream_attempts: usize,
    /// name, kind, status is Error, outcome, attempts, route
    logical: (
        String,
        SpanKind,
        bool,
        Option<String>,
        Option<i64>,
        Option<String>,
    ),
    /// name, kind, parent is the logical span, status is Error, status code, error.type, decision, resend count
    attempts: Vec<Attempt>,
    /// OTLP evidence records, each inside its attempt span
    otlp_records_in_spans: Vec<usize>,
    /// JSONL: retry_attempt, decision, http_status_code, error_type, terminal_outcome, budget remaining
    lines: Vec<String>,
    attempts_counter: f64,
    calls_counter: f64,
    traceparents_match: bool,
}

type Attempt = (
    String,
    SpanKind,
    bool,
    bool,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

fn seen(h: &Harness, outcome: &str) -> Seen {
    let logical = h.receiver.spans_named(&format!("chat {MODEL}"));
    assert_eq!(
        logical.len(),
        1,
        "one logical span: {:?}",
        h.receiver.span_names()
    );
    let logical = &logical[0];
    let mut attempts = h.receiver.children_of(logical);
    attempts.sort_by_key(|s| s.attr_i64(RB_ATTEMPT));
    let tps = h.upstream.requests();
    Seen {
        upstream_attempts: h.upstream.attempts(),
        logical: (
            logical.name().to_owned(),
            logical.kind(),
            logical.status_code() == StatusCode::Error,
            logical.attr_str(RB_OUTCOME).map(str::to_owned),
            logical.attr_i64(RB_ATTEMPTS),
            logical.attr_str(RB_ROUTE).map(str::to_owned),
        ),
        attempts: attempts
            .iter()
            .map(|s| {
                (
                    s.name().to_owned(),
                    s.kind(),
                    s.is_child_of(logical),
                    s.status_code() == StatusCode::Error,
                    s.attr_i64(HTTP_RESPONSE_STATUS_CODE),
                    s.attr_str(ERROR_TYPE).map(str::to_owned),
                    s.attr_str(RB_DECISION).map(str::to_owned),
                    s.attr_i64(HTTP_REQUEST_RESEND_COUNT),
                )
            })
            .collect(),
        otlp_records_in_spans: attempts
            .iter()
            .map(|s| {
                h.receiver
                    .logs_in_span(s)
                    .iter()
                    .filter(|l| l.event_name() == Some(EVENT_ATTEMPT))
                    .count()
            })
            .collect(),
        lines: h
            .evidence_lines()
            .iter()
            .map(|l| {
                format!(
                    "{} {} {} {} {} {}",
                    l["retry_attempt"],
                    l["decision"],
                    l["http_status_code"],
                    l["error_type"],
                    l["terminal_outcome"],
                    l["retry_budget_remaining"]
                )
            })
            .collect(),
        attempts_counter: h.receiver.counter_value(M_ATTEMPTS, &[]),
        calls_counter: h.receiver.counter_value(M_CALLS, &[(RB_OUTCOME, outcome)]),
        traceparents_match: tps.len() == attempts.len()
            && tps.iter().zip(&attempts).all(|(r, s)| {
                r.header("traceparent").is_some_and(|tp| {
                    tp.contains(&s.span_id_hex()) && tp.contains(&s.trace_id_hex())
                })
            }),
    }
}

fn body(stream: bool) -> Vec<u8> {
    let mut req = ChatRequest::user(MODEL, "Say OK.");
    req.stream = stream;
    serde_json::to_vec(&req).unwrap()
}

/// Through the client itself.
async fn via_client(h: &Harness, stream: bool) {
    if stream {
        let req: ChatRequest = serde_json::from_slice(&body(true)).unwrap();
        match h.client.chat_stream(&req).await {
            Ok(mut s) => while let Some(Ok(_)) = s.next().await {},
            Err(ChatError::Call(_) | ChatError::Status { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    } else {
        let mut raw = RawRequest::chat(body(false).into());
        raw.model = Some(MODEL.into());
        raw.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let _ = h.client.send(raw).await;
    }
}

/// Through `reqwest-middleware` with the middleware; returns the final status the caller saw.
async fn via_middleware(h: &Harness, stream: bool) -> Option<u16> {
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryBudgetMiddleware::new(h.client.clone()))
        .build();
    let sent = http
        .post(format!("{}/v1/chat/completions", h.upstream.base_url()))
        .header("content-type", "application/json")
        .body(body(stream))
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let mut body = response.bytes_stream();
            while let Some(Ok(_)) = body.next().await {}
            Some(status)
        }
        Err(_) => None,
    }
}

fn check(row: &Row, s: &Seen, how: &str) {
    let name = format!("{} ({how})", row.name);
    let n = row.attempts.len();
    assert_eq!(s.upstream_attempts, n, "{name}: attempts the upstream saw");
    assert_eq!(s.logical.0, format!("chat {MODEL}"), "{name}");
    assert_eq!(s.logical.1, SpanKind::Client, "{name}");
    assert_eq!(s.logical.3.as_deref(), Some(row.outcome), "{name}: outcome");
    assert_eq!(s.logical.4, Some(n as i64), "{name}");
    assert_eq!(s.attempts.len(), n, "{name}: attempt spans");
    for (i, (a, (status, error_type, decision))) in s.attempts.iter().zip(&row.attempts).enumerate()
    {
        assert_eq!(a.0, "POST /v1/chat/completions", "{name}");
        assert_eq!(a.1, SpanKind::Client, "{name}");
        assert!(a.2, "{name}: attempt {i} is a child of the logical span");
        assert_eq!(a.3, error_type.is_some(), "{name}: attempt {i} status");
        assert_eq!(a.4, *status, "{name}: attempt {i}");
        assert_eq!(a.5.as_deref(), *error_type, "{name}: attempt {i}");
        assert_eq!(a.6.as_deref(), Some(*decision), "{name}: attempt {i}");
        assert_eq!(a.7, (i > 0).then_some(i as i64), "{name}: resend count");
    }
    assert_eq!(
        s.otlp_records_in_spans,
        vec![1; n],
        "{name}: one record per attempt span"
    );
    assert_eq!(s.lines.len(), n, "{name}: JSONL lines");
    assert_eq!(s.attempts_counter, n as f64, "{name}: retrybudget.attempts");
    assert_eq!(s.calls_counter, 1.0, "{name}: retrybudget.calls");
    assert!(
        s.traceparents_match,
        "{name}: traceparent names each attempt span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_middleware_leaves_what_the_client_leaves() {
    for row in rows() {
        let h = Harness::start(OtlpProtocol::HttpProtobuf).await;
        h.upstream.push((row.steps)());
        via_client(&h, row.stream).await;
        assert!(h.flush().await, "{}: flush", row.name);
        let by_client = seen(&h, row.outcome);
        h.stop().await;
        check(&row, &by_client, "client");

        let h = Harness::start(OtlpProtocol::HttpProtobuf).await;
        h.upstream.push((row.steps)());
        let status = via_middleware(&h, row.stream).await;
        assert!(h.flush().await, "{}: flush", row.name);
        let by_middleware = seen(&h, row.outcome);
        h.stop().await;
        check(&row, &by_middleware, "middleware");
        assert_eq!(
            status.map(i64::from),
            row.attempts.last().unwrap().0,
            "{}: the caller gets the final upstream status",
            row.name
        );
        assert_eq!(
            by_middleware, by_client,
            "{}: middleware = client",
            row.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_pass_through_unretried_and_unrecorded() {
    let h = Harness::start(OtlpProtocol::HttpProtobuf).await;
    h.upstream.push([Step::status(503), Step::ok()]);
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryBudgetMiddleware::new(h.client.clone()))
        .build();
    let r = http
        .get(format!("{}/v1/models", h.upstream.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        503,
        "not an OpenAI call route: no retry"
    );
    assert_eq!(h.upstream.attempts(), 1);
    assert!(h.flush().await);
    assert!(
        h.evidence_lines().is_empty(),
        "no evidence for a pass-through"
    );
    h.stop().await;
}
