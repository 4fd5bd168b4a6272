//! The proxy against a real fake upstream and a real client: in-process through `app(state)` + `oneshot`, and
//! over real sockets through `serve` where connections matter (disconnects, graceful shutdown).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use retrybudget_client::{Client, ClientConfig};
use retrybudget_fake_upstream::{FakeUpstream, Fault, Step};
use retrybudget_policy::{BudgetConfig, PolicyConfig};
use retrybudget_proxy::{
    ATTEMPTS_HEADER, Limits, OUTCOME_HEADER, ProxyConfig, ProxyState, STREAM_INTERRUPTED_EVENT,
    app, serve,
};
use retrybudget_telemetry::{Telemetry, TelemetryConfig};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const CANARY: &str = "prompt-canary-7c1f";

// === harness ===

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Quick retries, and a budget that never interferes with a test's few retries.
fn fast_policy() -> PolicyConfig {
    PolicyConfig {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        budget: BudgetConfig {
            min_retries_per_sec: 100.0,
            ..BudgetConfig::default()
        },
        ..PolicyConfig::default()
    }
}

fn state_for(
    base_url: &str,
    policy: PolicyConfig,
    telemetry: Telemetry,
    config: ProxyConfig,
) -> ProxyState {
    let client = Client::new(
        ClientConfig {
            policy,
            ..ClientConfig::new(base_url)
        },
        telemetry,
    )
    .unwrap();
    ProxyState::new(client, config)
}

async fn setup() -> (FakeUpstream, ProxyState) {
    setup_with(ProxyConfig::default()).await
}

/// A fake upstream and a proxy in front of it with `config`, fast retries and local telemetry.
async fn setup_with(config: ProxyConfig) -> (FakeUpstream, ProxyState) {
    let upstream = FakeUpstream::start(any_port()).await.unwrap();
    let state = state_for(
        &upstream.base_url(),
        fast_policy(),
        Telemetry::local(),
        config,
    );
    (upstream, state)
}

fn chat_body(stream: bool) -> String {
    json!({
        "model": "fake-model",
        "messages": [{"role": "user", "content": CANARY}],
        "stream": stream,
        "max_tokens": 16,
        "temperature": 0.2,
        "vendor_extension": {"keep": ["me", 1, true]},
    })
    .to_string()
}

fn post_chat(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn call(state: &ProxyState, request: Request<Body>) -> Answer {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// Polls the Prometheus text until `pred` holds (telemetry is recorded as calls end, maybe after the response).
async fn metrics_eventually(state: &ProxyState, pred: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let text = state.client().telemetry().prometheus_text();
        if pred(&text) || Instant::now() > until {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `retrybudget_calls_total` series with this outcome and a non-zero value.
fn has_call_outcome(text: &str, outcome: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("retrybudget_calls_total{")
            && l.contains(&format!("=\"{outcome}\""))
            && l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    })
}

/// What the capturing upstream saw of one request: everything, bytes included.
#[derive(Clone)]
struct Captured {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A minimal upstream that keeps every request's exact bytes and answers every request with `reply`
/// (`application/json`, 200). The fake upstream keeps only lengths (it must never hold content); the
/// byte-for-byte tests need the bytes themselves.
struct CaptureUpstream {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CaptureUpstream {
    async fn start(reply: &'static [u8]) -> CaptureUpstream {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&seen);
        let router = axum::Router::new().fallback(move |request: Request<Body>| {
            let keep = std::sync::Arc::clone(&keep);
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                keep.lock().unwrap().push(Captured {
                    method: parts.method,
                    path: parts.uri.path_and_query().unwrap().as_str().to_owned(),
                    headers: parts.headers,
                    body,
                });
                ([("content-type", "application/json")], reply)
            }
        });
        let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        CaptureUpstream { addr, seen, task }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for CaptureUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A chat request whose bytes any re-serialisation would change: odd spacing and key order, a number
/// written `2e3` and `1.50`, an escaped and a raw non-ASCII character, an unknown vendor field.
const ODD_CHAT_BODY: &str = "{ \"messages\" : [ {\"content\":\"caf\\u00e9 \u{2615} prompt-canary-7c1f\", \"role\":\"user\"} ],\n  \"model\":\"fake-model\", \"max_tokens\":2e3, \"temperature\":1.50,\t\"vendor_extension\":{\"z\":[true,null],\"a\":{}} }";

/// An upstream answer in the same spirit: a relay that parses and re-writes it cannot return it unchanged.
const ODD_COMPLETION: &[u8] = b"{\"object\":\"chat.completion\", \"id\":\"chatcmpl-odd\",\n \"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"\\u00e9 ok\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1.0e0,\"completion_tokens\":2,\"total_tokens\":3} }\n";

// === non-streaming ===

#[tokio::test]
async fn success_passes_through_unchanged() {
    let upstream = CaptureUpstream::start(ODD_COMPLETION).await;
    let state = state_for(
        &upstream.base_url(),
        fast_policy(),
        Telemetry::local(),
        ProxyConfig::default(),
    );
    let answer = call(&state, post_chat(ODD_CHAT_BODY)).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(ATTEMPTS_HEADER), "1");
    assert_eq!(answer.header(OUTCOME_HEADER), "success");
    assert!(
        answer
            .header("content-type")
            .starts_with("application/json")
    );
    assert_eq!(
        answer.text(),
        std::str::from_utf8(ODD_COMPLETION).unwrap(),
        "the upstream's answer comes back byte for byte"
    );

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        std::str::from_utf8(&seen[0].body).unwrap(),
        ODD_CHAT_BODY,
        "the body is forwarded byte for byte"
    );
}

#[tokio::test]
async fn transient_failures_are_retried_then_succeed() {
    let (upstream, state) = setup().await;
    upstream.push([Step::status(503), Step::status(503)]);
    let answer = call(&state, post_chat(chat_body(false))).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(ATTEMPTS_HEADER), "3");
    assert_eq!(answer.header(OUTCOME_HEADER), "success_after_retry");
    assert_eq!(upstream.attempts(), 3);
    assert_eq!(answer.json()["object"], "chat.completion");
    upstream.shutdown().await;
}

#[tokio::test]
async fn upstream_client_error_is_returned_as_is_after_one_attempt() {
    let (upstream, state) = setup().await;
    upstream.push([Step::status(400)
        .error_code("unsupported_parameter")
        .header("x-request-id", "req_123")]);
    let answer = call(&state, post_chat(chat_body(false))).await;

    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(upstream.attempts(), 1);
    assert_eq!(answer.header(ATTEMPTS_HEADER), "1");
    assert_eq!(answer.header(OUTCOME_HEADER), "failed_without_retry");
    assert_eq!(answer.header("x-request-id"), "req_123");
    assert_eq!(
        answer.json()["error"]["code"],
        "unsupported_parameter",
        "the upstream's own error body"
    );
    upstream.shutdown().await;
}

#[tokio::test]
async fn rate_limit_headers_are_relayed_and_hop_by_hop_are_not() {
    let (upstream, state) = setup().await;
    upstream.push([Step::status(429)
        .error_code("insufficient_quota")
        .header("retry-after", "1")
        .header("x-ratelimit-remaining-requests", "0")
        .header("openai-processing-ms", "12")
        .header("x-internal-upstream", "secret")]);
    let answer = call(&state, post_chat(chat_body(false))).await;

    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        upstream.attempts(),
        1,
        "insufficient_quota never heals: not retried"
    );
    assert_eq!(answer.header("retry-after"), "1");
    assert_eq!(answer.header("x-ratelimit-remaining-requests"), "0");
    assert_eq!(answer.header("openai-processing-ms"), "12");
    assert!(answer.headers.get("x-internal-upstream").is_none());
    assert!(answer.headers.get("connection").is_none());
    upstream.shutdown().await;
}

// === local validation ===

#[tokio::test]
async fn invalid_requests_are_rejected_locally() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("evidence.jsonl");
    let telemetry = Telemetry::init(&TelemetryConfig {
        evidence_file: Some(evidence.clone()),
        ..Default::default()
    })
    .unwrap();
    let upstream = FakeUpstream::start(any_port()).await.unwrap();
    let state = state_for(
        &upstream.base_url(),
        fast_policy(),
        telemetry.clone(),
        ProxyConfig::default(),
    );

    let cases: Vec<(String, &str, Option<&str>)> = vec![
        (
            format!("{{\"model\":\"fake-model\",\"messages\":[\"{CANARY}\""),
            "not valid JSON",
            None,
        ),
        (
            format!("[{{\"model\":\"fake-model\",\"messages\":[\"{CANARY}\"]}}]"),
            "must be a JSON object",
            None,
        ),
        (
            format!("{{\"messages\":[\"{CANARY}\"]}}"),
            "`model` is required and must be a string",
            Some("model"),
        ),
        (
            format!("{{\"model\":[\"{CANARY}\"],\"messages\":[1]}}"),
            "`model` must be a string",
            Some("model"),
        ),
        (
            "{\"model\":\"fake-model\"}".to_owned(),
            "`messages` is required and must be a non-empty array",
            Some("messages"),
        ),
        (
            "{\"model\":\"fake-model\",\"messages\":[]}".to_owned(),
            "`messages` must be a non-empty array",
            Some("messages"),
        ),
        (
            format!("{{\"model\":\"fake-model\",\"messages\":\"{CANARY}\"}}"),
            "`messages` must be a non-empty array",
            Some("messages"),
        ),
        (String::new(), "empty", None),
    ];
    let n = cases.len();
    for (body, message, param) in cases {
        let answer = call(&state, post_chat(body.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.header(ATTEMPTS_HEADER), "0");
        assert_eq!(answer.header(OUTCOME_HEADER), "failed_without_retry");
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        let text = error["message"].as_str().unwrap();
        assert!(text.contains(message), "{text:?} should say {message:?}");
        assert!(!answer.text().contains(CANARY), "content is never echoed");
        assert_eq!(error["param"].as_str(), param);
    }
    assert_eq!(
        upstream.attempts(),
        0,
        "no request that failed validation reaches the upstream"
    );

    let text = metrics_eventually(&state, |t| has_call_outcome(t, "failed_without_retry")).await;
    assert!(has_call_outcome(&text, "failed_without_retry"), "{text}");
    assert!(telemetry.shutdown(Duration::from_secs(5)));
    let lines = std::fs::read_to_string(&evidence).unwrap();
    assert!(!lines.contains(CANARY));
    let rows: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), n, "one evidence row per rejected request");
    for row in rows {
        assert_eq!(row["error_type"], "validation_error");
        assert_eq!(row["terminal_outcome"], "failed_without_retry");
        assert_eq!(row["retry_attempt"], 0);
    }
    upstream.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_without_an_upstream_call() {
    let config = ProxyConfig {
        max_body: 256,
        ..ProxyConfig::default()
    };
    let (upstream, state) = setup_with(config).await;
    let big =
        json!({"model": "fake-model", "messages": [{"role": "user", "content": "x".repeat(1000)}]})
            .to_string();

    // Without a content-length (read until the limit trips) and with one (refused before reading).
    let declared = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", big.len().to_string())
        .body(Body::from(big.clone()))
        .unwrap();
    let chunked = Body::from_stream(futures_util::stream::iter(
        big.as_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    ));
    for request in [post_chat(big.clone()), declared, post_chat(chunked)] {
        let answer = call(&state, request).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "request_too_large");
        assert_eq!(answer.header(ATTEMPTS_HEADER), "0");
        assert_eq!(answer.header(OUTCOME_HEADER), "failed_without_retry");
    }
    // At the limit exactly, a valid request goes through.
    let small =
        json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let state = state_for(
        &upstream.base_url(),
        fast_policy(),
        Telemetry::local(),
        ProxyConfig {
            max_body: small.len(),
            ..ProxyConfig::default()
        },
    );
    assert_eq!(call(&state, post_chat(small)).await.status, StatusCode::OK);
    assert_eq!(upstream.attempts(), 1);
    upstream.shutdown().await;
}

// === what is forwarded ===

#[tokio::test]
async fn caller_headers_and_trace_are_forwarded_hop_by_hop_are_not() {
    let upstream = CaptureUpstream::start(ODD_COMPLETION).await;
    let state = state_for(
        &upstream.base_url(),
        fast_policy(),
        Telemetry::local(),
        ProxyConfig::default(),
    );
    let request = Request::post("/v1/chat/completions?api-version=2024-10-21")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-caller-key")
        .header("openai-organization", "org-1")
        .header("x-custom-tag", "kept")
        .header("x-stainless-retry-count", "1")
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("host", "localhost:8787")
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "never forwarded")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .body(Body::from(ODD_CHAT_BODY))
        .unwrap();
    let answer = call(&state, request).await;
    assert_eq!(answer.status, StatusCode::OK);

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path, "/v1/chat/completions?api-version=2024-10-21");
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        ODD_CHAT_BODY,
        "unknown fields included, the body is forwarded byte for byte"
    );
    assert_eq!(r.header("authorization"), Some("Bearer sk-caller-key"));
    assert_eq!(r.header("openai-organization"), Some("org-1"));
    assert_eq!(r.header("x-custom-tag"), Some("kept"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-stainless-retry-count"), Some("1"));
    for hop in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert_eq!(r.header(hop), None, "{hop} must not be forwarded");
    }
    assert_ne!(r.header("host"), Some("localhost:8787"));
    let traceparent = r.header("traceparent").unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{CALLER_TRACE}-")),
        "the caller's trace continues: {traceparent}"
    );
    assert!(
        !traceparent.contains(CALLER_SPAN),
        "the upstream's parent is our attempt span"
    );

    // The caller's own retry shows up as a nested retry.
    let nested_is_one = |t: &str| {
        t.lines()
            .any(|l| l.starts_with("retrybudget_client_nested_retries_total{") && l.ends_with(" 1"))
    };
    let text = metrics_eventually(&state, nested_is_one).await;
    assert!(nested_is_one(&text), "one nested retry counted: {text}");
}

#[tokio::test]
async fn other_v1_routes_are_forwarded_under_route_templates() {
    let (upstream, state) = setup().await;
    let models = call(
        &state,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(models.status, StatusCode::OK);
    assert_eq!(models.header(ATTEMPTS_HEADER), "1");
    assert_eq!(models.header(OUTCOME_HEADER), "success");
    assert!(models.text().contains("fake-model"));

    let raw_path = "/v1/files/file-raw-id-4711/content";
    let file = call(
        &state,
        Request::delete(raw_path).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(file.status, StatusCode::OK);

    let seen = upstream.requests();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/v1/models")
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("DELETE", raw_path)
    );

    let text = metrics_eventually(&state, |t| t.contains("/v1/{other}")).await;
    assert!(text.contains("/v1/models"), "{text}");
    assert!(text.contains("/v1/{other}"), "{text}");
    assert!(
        !text.contains("file-raw-id-4711"),
        "never the raw path in telemetry"
    );
    upstream.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_get_an_openai_style_404() {
    let (upstream, state) = setup().await;
    let answer = call(
        &state,
        Request::get("/v2/secret-path").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json()["error"]["code"], "not_found");
    assert!(!answer.text().contains("secret-path"));
    assert_eq!(answer.header(ATTEMPTS_HEADER), "0");
    assert_eq!(upstream.attempts(), 0);
    upstream.shutdown().await;
}

#[tokio::test]
async fn metrics_and_healthz() {
    let (upstream, state) = setup().await;
    let health = call(
        &state,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (health.status, health.text().as_str()),
        (StatusCode::OK, "ok")
    );

    assert_eq!(
        call(&state, post_chat(chat_body(false))).await.status,
        StatusCode::OK
    );
    let metrics = call(
        &state,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.header("content-type"), "text/plain; version=0.0.4");
    assert!(
        metrics.text().contains("retrybudget_calls_total"),
        "{}",
        metrics.text()
    );
    assert!(has_call_outcome(&metrics.text(), "success"));
    upstream.shutdown().await;
}

// === no response at all ===

#[tokio::test]
async fn unreachable_upstream_gets_502_quickly() {
    let closed = std::net::TcpListener::bind(any_port()).unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let state = state_for(
        &format!("http://127.0.0.1:{port}"),
        fast_policy(),
        Telemetry::local(),
        ProxyConfig::default(),
    );

    // Three refused connects and two backoffs of equal jitter (10 ms then 20 ms nominal: 5–10 ms and
    // 10–20 ms) are all the time this may take; the bound leaves room for a loaded machine, not for a hang,
    // a connect timeout or a backoff at the default policy's scale (seconds).
    let (least, most) = (Duration::from_millis(15), Duration::from_millis(30));
    let started = Instant::now();
    let answer = call(&state, post_chat(chat_body(false))).await;
    let took = started.elapsed();
    assert!(
        took >= least,
        "took {took:?}: the two backoffs were not waited"
    );
    assert!(took < most * 10, "took {took:?} for {most:?} of backoff");
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "upstream_error");
    assert_eq!(error["code"], "connect_error");
    assert!(
        error["message"].as_str().unwrap().contains("unreachable"),
        "{error}"
    );
    assert_eq!(
        answer.header(ATTEMPTS_HEADER),
        "3",
        "connect errors are transient: retried within the allowance"
    );
    assert_eq!(answer.header(OUTCOME_HEADER), "failed_after_retry");
}

#[tokio::test]
async fn attempt_timeouts_past_the_deadline_get_504() {
    let upstream = FakeUpstream::start(any_port()).await.unwrap();
    upstream.set_default(Step::ok().delay(Duration::from_secs(3)));
    let policy = PolicyConfig {
        per_attempt_timeout: Some(Duration::from_millis(100)),
        deadline: Duration::from_millis(150),
        ..fast_policy()
    };
    let state = state_for(
        &upstream.base_url(),
        policy,
        Telemetry::local(),
        ProxyConfig::default(),
    );
    let answer = call(&state, post_chat(chat_body(false))).await;
    assert_eq!(answer.header(OUTCOME_HEADER), "deadline_exceeded");
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.json()["error"]["code"], "timeout");
    upstream.shutdown().await;
}

// === streaming ===

#[tokio::test]
async fn streams_pass_through_with_done() {
    let (upstream, state) = setup().await;
    let answer = call(&state, post_chat(chat_body(true))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer
            .header("content-type")
            .starts_with("text/event-stream")
    );
    assert_eq!(answer.header(ATTEMPTS_HEADER), "1");
    assert_eq!(answer.header(OUTCOME_HEADER), "success");
    let text = answer.text();
    assert!(text.starts_with("data: {"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("stream_interrupted"));
    assert_eq!(upstream.attempts(), 1);
    let metrics = metrics_eventually(&state, |t| has_call_outcome(t, "success")).await;
    assert!(has_call_outcome(&metrics, "success"), "{metrics}");
    upstream.shutdown().await;
}

/// Time to first byte against a slow upstream, over real sockets (so the server's framing is tested too):
/// the upstream sends its first event at once, then pauses [`PAUSE`] before each of the others (six more
/// events and `[DONE]`). A relay that collects the stream before replaying it — in one piece or in
/// frames — hands over its first byte only after the upstream's last pause, seconds later; a relay that
/// passes events on as they arrive hands it over in milliseconds, long before the upstream's first pause
/// ends.
#[tokio::test]
async fn streams_arrive_chunk_by_chunk() {
    const PAUSE: Duration = Duration::from_secs(1);
    let (upstream, state) = setup().await;
    upstream.push([Step::ok().chunk_delay(PAUSE)]);
    let running = start(state.clone()).await;

    let started = Instant::now();
    let response = http()
        .post(format!("http://{}/v1/chat/completions", running.addr))
        .header("content-type", "application/json")
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    let first = tokio::time::timeout(10 * PAUSE, chunks.next())
        .await
        .expect("no first event at all")
        .unwrap()
        .unwrap();
    let first_after = started.elapsed();
    assert!(
        first_after < PAUSE,
        "the first event reached the caller after {first_after:?}, not before the upstream's first \
         {PAUSE:?} pause ended: the relay waited for later events"
    );
    assert!(first.starts_with(b"data: {"), "{first:?}");
    assert!(
        !first.windows(6).any(|w| w == b"[DONE]"),
        "not buffered to the end"
    );
    assert_eq!(upstream.attempts(), 1);
    drop(chunks);

    let _ = running.stop.send(());
    running.server.await.unwrap().unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_event_and_is_not_retried() {
    let (upstream, state) = setup().await;
    upstream.push([Step::with_fault(Fault::CutStreamAfter(1))]);
    let answer = call(&state, post_chat(chat_body(true))).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the head had already gone out"
    );
    let text = answer.text();
    let first_event = text.split("\n\n").next().unwrap();
    assert!(
        first_event.starts_with("data: {") && first_event.contains("chat.completion.chunk"),
        "{text}"
    );
    assert!(text.ends_with(STREAM_INTERRUPTED_EVENT), "{text}");
    assert_eq!(
        text.matches("data: ").count(),
        2,
        "one chunk, then the error event: {text}"
    );
    let event: Value = serde_json::from_str(
        STREAM_INTERRUPTED_EVENT
            .trim_start_matches("data: ")
            .trim_end(),
    )
    .unwrap();
    assert_eq!(event["error"]["code"], "stream_interrupted");
    assert_eq!(
        upstream.attempts(),
        1,
        "a committed stream is never retried"
    );
    let metrics = metrics_eventually(&state, |t| has_call_outcome(t, "stream_interrupted")).await;
    assert!(
        has_call_outcome(&metrics, "stream_interrupted"),
        "{metrics}"
    );
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_byte_is_retried() {
    let (upstream, state) = setup().await;
    upstream.push([Step::with_fault(Fault::CloseBeforeHead)]);
    let answer = call(&state, post_chat(chat_body(true))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(ATTEMPTS_HEADER), "2");
    assert_eq!(answer.header(OUTCOME_HEADER), "success_after_retry");
    assert!(answer.text().trim_end().ends_with("data: [DONE]"));
    upstream.shutdown().await;
}

#[tokio::test]
async fn dropping_the_stream_body_records_cancelled() {
    let (upstream, state) = setup().await;
    upstream.push([Step::ok().chunk_delay(Duration::from_millis(200))]);
    let response = app(state.clone())
        .oneshot(post_chat(chat_body(true)))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let text = metrics_eventually(&state, |t| has_call_outcome(t, "cancelled")).await;
    assert!(has_call_outcome(&text, "cancelled"), "{text}");
    upstream.shutdown().await;
}

// === over real sockets ===

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(state: ProxyState) -> Running {
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Running { addr, stop, server }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn wait_for(what: &str, pred: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !pred() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_caller_that_disconnects_mid_stream_is_recorded_as_cancelled() {
    let (upstream, state) = setup().await;
    upstream.push([Step::ok().chunk_delay(Duration::from_millis(200))]);
    let running = start(state.clone()).await;

    let response = http()
        .post(format!("http://{}/v1/chat/completions", running.addr))
        .header("content-type", "application/json")
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: {"));
    drop(chunks); // the caller goes away with the stream unfinished

    let text = metrics_eventually(&state, |t| has_call_outcome(t, "cancelled")).await;
    assert!(has_call_outcome(&text, "cancelled"), "{text}");
    assert!(
        !has_call_outcome(&text, "success"),
        "the call did not finish: {text}"
    );
    assert_eq!(upstream.attempts(), 1);

    let _ = running.stop.send(());
    running.server.await.unwrap().unwrap();
    upstream.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_the_request_in_flight_finish() {
    const UPSTREAM_DELAY: Duration = Duration::from_millis(500);
    let (upstream, state) = setup().await;
    upstream.push([Step::ok().delay(UPSTREAM_DELAY)]);
    let running = start(state).await;

    let url = format!("http://{}/v1/chat/completions", running.addr);
    let in_flight = tokio::spawn(async move {
        let response = http()
            .post(url)
            .header("content-type", "application/json")
            .body(chat_body(false))
            .send()
            .await?;
        let status = response.status();
        let outcome = response
            .headers()
            .get(OUTCOME_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, outcome, body, Instant::now()))
    });
    wait_for("the request to reach the upstream", || {
        upstream.attempts() == 1
    })
    .await;
    let reached = Instant::now();
    // The signal arrives while the upstream is still holding the answer back.
    assert!(!in_flight.is_finished(), "the request is still in flight");
    let signalled = Instant::now();
    running.stop.send(()).unwrap();

    let (status, outcome, body, answered) = in_flight.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(outcome, "success");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["object"],
        "chat.completion"
    );
    assert!(answered > signalled, "answered after the signal");
    // The answer came when the upstream released it, not earlier and not much later (CI slack: 3x).
    let waited = answered - reached;
    assert!(
        waited <= UPSTREAM_DELAY * 3,
        "answered {waited:?} after reaching the upstream (delay {UPSTREAM_DELAY:?})"
    );
    tokio::time::timeout(UPSTREAM_DELAY * 3, running.server)
        .await
        .expect("serve returns once the drained request is done, well within the grace period")
        .unwrap()
        .unwrap();
    // serve waited for the request: it returned no earlier than the upstream's answer (less the polling slack
    // of `wait_for`), not at the signal.
    let stopped = reached.elapsed();
    assert!(
        stopped + Duration::from_millis(20) >= UPSTREAM_DELAY,
        "serve returned {stopped:?} after the request reached the upstream, before its answer"
    );
    // Stopped accepting: a new connection is refused.
    assert!(tokio::net::TcpStream::connect(running.addr).await.is_err());
    upstream.shutdown().await;
}

/// Sends a chat request the upstream holds back and returns once it reached the upstream, still in flight.
async fn stuck_request(
    url: String,
    upstream: &FakeUpstream,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let before = upstream.attempts();
    let stuck = tokio::spawn(async move {
        http()
            .post(url)
            .header("content-type", "application/json")
            .body(chat_body(false))
            .send()
            .await
    });
    wait_for("the request to reach the upstream", || {
        upstream.attempts() == before + 1
    })
    .await;
    assert!(!stuck.is_finished(), "the request is still in flight");
    stuck
}

/// Signals shutdown and returns how long `serve` took to return, which it must (cleanly) within 10× `grace`.
async fn stop_after_grace(running: Running, grace: Duration) -> Duration {
    let signalled = Instant::now();
    running.stop.send(()).unwrap();
    let returned = tokio::time::timeout(grace * 10, running.server).await;
    assert!(
        matches!(returned, Ok(Ok(Ok(())))),
        "serve returns after the grace period: {returned:?}"
    );
    signalled.elapsed()
}

#[tokio::test]
async fn shutdown_never_waits_longer_than_the_grace_period() {
    const GRACE: Duration = Duration::from_millis(200);
    let config = ProxyConfig {
        shutdown_grace: GRACE,
        ..ProxyConfig::default()
    };
    let (upstream, state) = setup_with(config).await;
    upstream.set_default(Step::ok().delay(Duration::from_secs(30)));
    let running = start(state).await;

    let url = format!("http://{}/v1/chat/completions", running.addr);
    let stuck = stuck_request(url, &upstream).await;
    let took = stop_after_grace(running, GRACE).await;
    // It waited for the request (the grace period) and no longer than a small factor of it.
    assert!(
        took >= GRACE,
        "returned after {took:?}, before the grace period"
    );
    assert!(
        took <= GRACE * 5,
        "returned after {took:?}, grace {GRACE:?}"
    );
    assert_eq!(upstream.attempts(), 1, "the upstream was asked once");
    stuck.abort();
    upstream.shutdown().await;
}

/// With connection threads, each connection is served on a thread of its own (the upstream sees every
/// request, callers on several connections get their answers), and a request still in flight when the grace
/// period ends is dropped with its thread before `serve` returns: its `cancelled` evidence is already written
/// then, not lost with a thread that outlives the flush.
#[tokio::test]
async fn connection_threads_serve_and_drop_what_is_left_before_serve_returns() {
    const GRACE: Duration = Duration::from_millis(200);
    let config = ProxyConfig {
        shutdown_grace: GRACE,
        limits: Limits {
            threads: 2,
            ..Limits::default()
        },
        ..ProxyConfig::default()
    };
    let (upstream, state) = setup_with(config).await;
    let running = start(state.clone()).await;
    let url = format!("http://{}/v1/chat/completions", running.addr);

    // Four callers, each on its own connection, two requests each.
    let callers: Vec<_> = (0..4)
        .map(|caller| {
            let url = url.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let mut statuses = Vec::new();
                for n in 0..2 {
                    // Distinct bodies: the same body in flight twice is a caller's re-send.
                    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": format!("caller {caller} request {n}")}]});
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    statuses.push(r.status().as_u16());
                    r.bytes().await.unwrap();
                }
                statuses
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap(), [200, 200]);
    }
    assert_eq!(upstream.attempts(), 8);

    upstream.set_default(Step::ok().delay(Duration::from_secs(30)));
    let stuck = stuck_request(url, &upstream).await;
    assert!(!has_call_outcome(
        &state.client().telemetry().prometheus_text(),
        "cancelled"
    ));
    let took = stop_after_grace(running, GRACE).await;
    assert!(took >= GRACE, "returned after {took:?}, before the grace");
    // Read right away, without waiting: the cut-off call was recorded before serve returned.
    let text = state.client().telemetry().prometheus_text();
    assert!(has_call_outcome(&text, "cancelled"), "{text}");
    stuck.abort();
    upstream.shutdown().await;
}

// === the span tree, as a collector receives it ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_span_continues_the_callers_trace_and_parents_the_call() {
    let receiver = retrybudget_testkit::OtlpReceiver::start().await.unwrap();
    let endpoint = receiver.http_endpoint();
    let config = TelemetryConfig::from_lookup(|name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_owned()),
        _ => None,
    })
    .unwrap();
    let telemetry = Telemetry::init(&config).unwrap();
    let upstream = FakeUpstream::start(any_port()).await.unwrap();
    upstream.push([Step::status(503)]);
    let state = state_for(
        &upstream.base_url(),
        fast_policy(),
        telemetry.clone(),
        ProxyConfig::default(),
    );

    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .body(Body::from(chat_body(false)))
        .unwrap();
    assert_eq!(call(&state, request).await.status, StatusCode::OK);
    assert!(telemetry.shutdown(Duration::from_secs(5)));

    let arrived = receiver
        .wait_until(Duration::from_secs(5), |r| {
            r.spans_named("POST /v1/chat/completions").len() >= 3
        })
        .await;
    assert!(arrived, "spans: {:?}", receiver.span_names());
    let server = receiver
        .spans()
        .into_iter()
        .find(|s| s.kind() == retrybudget_testkit::proto::tonic::trace::v1::span::SpanKind::Server)
        .unwrap();
    assert_eq!(server.name(), "POST /v1/chat/completions");
    assert_eq!(server.trace_id_hex(), CALLER_TRACE);
    assert_eq!(server.parent_span_id_hex().as_deref(), Some(CALLER_SPAN));
    assert_eq!(server.attr_str("http.request.method"), Some("POST"));
    assert_eq!(server.attr_str("http.route"), Some("/v1/chat/completions"));
    assert_eq!(server.attr_i64("http.response.status_code"), Some(200));

    let calls = receiver.children_of(&server);
    assert_eq!(calls.len(), 1, "one logical call under the server span");
    assert_eq!(calls[0].name(), "chat fake-model");
    let attempts = receiver.children_of(&calls[0]);
    assert_eq!(attempts.len(), 2, "503 then 200");
    assert!(
        !receiver.raw_bytes_contain(CANARY.as_bytes()),
        "no content in telemetry"
    );
    upstream.shutdown().await;
    receiver.shutdown().await;
}
