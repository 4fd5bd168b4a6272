//! The handlers: one path for every proxied request, so chat and the other `/v1/*` routes share the body
//! limit, the header policy, the SERVER span and the response marking.
//!
//! The upstream call is awaited inside the handler's own future, never spawned: when the caller disconnects,
//! the server drops that future (or the streaming body), and the client's in-flight guard records `cancelled`.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::Method;
use http::{HeaderValue, header, request::Parts};
use retrybudget_client::{CHAT_COMPLETIONS, RawRequest};
use retrybudget_telemetry::{Telemetry, extract_traceparent};

use retrybudget_policy::repeatable;

use crate::ProxyState;
use crate::access::Refusal;
use crate::caller::{CallerRetries, CallerTable, Pending};
use crate::request::{self, BodyError, TRACEPARENT};
use crate::response::{self, ServerSpan};

/// Prometheus text format 0.0.4, as the exposition's content type.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `GET /metrics`: every instrument in the Prometheus text format.
pub(crate) async fn metrics(State(telemetry): State<Telemetry>) -> Response {
    let text = telemetry.prometheus_text();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

/// `GET /healthz`: the proxy is up (it says nothing about the upstream).
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Every route of the proxy, after [`crate::guard`]'s checks: `/metrics` and `/healthz` (GET or HEAD),
/// `POST /v1/chat/completions` validated then forwarded, any other `/v1/*` request forwarded as it is, and
/// 404 for the rest.
pub(crate) async fn route(state: &ProxyState, request: Request) -> Response {
    let path = request.uri().path();
    if path == "/metrics" || path == "/healthz" {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return response::method_not_allowed();
        }
        if path == "/healthz" {
            return healthz().await.into_response();
        }
        return metrics(State(state.client().telemetry().clone())).await;
    }
    if path == CHAT_COMPLETIONS && request.method() == Method::POST {
        return proxied(state, request, CHAT_COMPLETIONS, true).await;
    }
    // `/v1/` itself names nothing upstream.
    if path.len() > "/v1/".len() && path.starts_with("/v1/") {
        let route = request::route_template(path);
        return proxied(state, request, route, false).await;
    }
    response::not_found()
}

/// Frames one proxied request in its SERVER span, whose status code is the response's.
async fn proxied(
    state: &ProxyState,
    request: Request,
    route: &'static str,
    validate: bool,
) -> Response {
    let (parts, body) = request.into_parts();
    let caller = extract_traceparent(parts.headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    let span = ServerSpan::start(state.client().telemetry(), &caller, &parts.method, route);
    let raw = raw_request(state, &parts, route, span.context().clone());
    let response = exchange(state, raw, &parts, body, validate).await;
    span.finish(response.status());
    response
}

/// Everything but the body and the body's facts.
fn raw_request(
    state: &ProxyState,
    parts: &Parts,
    route: &'static str,
    parent: opentelemetry::Context,
) -> RawRequest {
    let mut raw = RawRequest::chat(Bytes::new());
    raw.method = parts.method.clone();
    // Written into the string `chat` allocated (a short path fits): no new allocation.
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    raw.path.clear();
    raw.path.push_str(path);
    raw.url_template = route.into();
    raw.headers = request::forward_headers(&parts.headers);
    state.config().access.set_credentials(&mut raw.headers);
    raw.parent = parent;
    raw.client_retry_count = request::client_retry_count(&parts.headers);
    raw.deadline = None;
    let idempotency_key = parts
        .headers
        .get(crate::caller::IDEMPOTENCY_KEY)
        .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
    raw.repeatable =
        repeatable::is_repeatable(parts.method.as_str(), parts.uri.path(), idempotency_key);
    raw
}

async fn exchange(
    state: &ProxyState,
    mut raw: RawRequest,
    parts: &Parts,
    body: axum::body::Body,
    validate: bool,
) -> Response {
    let client = state.client();
    let max = state.config().max_body;
    let within = state.config().limits.body_read_timeout;
    let read = tokio::time::timeout(within, request::read_body(body, &parts.headers, max)).await;
    let Ok(read) = read else {
        client
            .telemetry()
            .record_proxy_rejected(Refusal::BodyTimeout.reason());
        return response::refused(Refusal::BodyTimeout);
    };
    raw.body = match read {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            let outcome = client.record_rejected(&raw);
            return response::too_large(max, outcome);
        }
        // The caller broke off while sending: nothing was asked of the upstream, and nobody may be listening.
        Err(BodyError::Unreadable) => return response::unreadable_body(),
    };
    if validate {
        match request::validate_chat(&raw.body) {
            Ok(facts) => {
                raw.model = Some(facts.model);
                raw.stream = facts.stream;
                raw.max_tokens = facts.max_tokens;
                raw.temperature = facts.temperature;
            }
            Err(invalid) => {
                raw.model = invalid.model;
                let outcome = client.record_rejected(&raw);
                return response::invalid_request(&invalid.message, invalid.param, outcome);
            }
        }
    } else if let Some(facts) = request::loose_facts(&raw.body) {
        raw.model = facts.model;
        raw.stream = facts.stream && request::streams_with_done(&raw.url_template);
        raw.max_tokens = facts.max_tokens;
        raw.temperature = facts.temperature;
    }
    let pending = caller_retry(state, parts, &mut raw);
    match client.send(raw).await {
        Ok(exchange) => {
            if let Some(p) = pending {
                p.finish(exchange.status.is_success(), exchange.attempts);
            }
            response::relay(exchange)
        }
        Err(error) => {
            if let Some(p) = pending {
                p.finish(false, error.attempts);
            }
            response::upstream_failed(&error)
        }
    }
}

/// Recognises the caller's own re-send (see [`crate::caller`]) and marks `raw` with it. The returned guard
/// must see the request's end (or be dropped, which records a failure: the caller went away).
fn caller_retry(state: &ProxyState, parts: &Parts, raw: &mut RawRequest) -> Option<Pending> {
    let table = state.callers();
    if table.config().mode == CallerRetries::Off {
        raw.caller_retry = CallerTable::header_only(raw.client_retry_count);
        return None;
    }
    let keys = table.keys(&parts.method, &raw.url_template, &parts.headers, &raw.body);
    let pending = Pending::new(table.clone(), table.arrive(keys, raw.client_retry_count));
    raw.caller_retry = pending.retry();
    raw.caller_retry_pays = table.config().mode == CallerRetries::Budget;
    Some(pending)
}
