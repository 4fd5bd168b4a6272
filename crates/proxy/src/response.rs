//! What the proxy sends back: the upstream's answer as it came (a useful subset of its headers), our own
//! OpenAI-style errors, the SSE relay, and the SERVER span that frames the whole exchange.
//!
//! Error messages here are fixed text (or the client's `CallError` display, which holds only outcome, counts,
//! status and error type): nothing from a request or an upstream body is ever quoted.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _};
use retrybudget_client::{CallError, ChatStream, Exchange, ExchangeBody, StreamError};
use retrybudget_policy::{ErrorType, Outcome};
use retrybudget_telemetry::Telemetry;
use tokio::sync::mpsc;

use crate::access::Refusal;
use crate::listener::RETRY_AFTER_SECS;
use retrybudget_telemetry::names::{
    ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, http_method_label,
};

/// Response header: attempts the proxy made upstream for this request (0 when it never left).
pub const ATTEMPTS_HEADER: &str = "x-retrybudget-attempts";
/// Response header: the call's terminal outcome (for a stream: as of its head), e.g. `success_after_retry`.
pub const OUTCOME_HEADER: &str = "x-retrybudget-outcome";
/// The SSE event that ends a relayed stream whose upstream broke after output reached the caller.
pub const STREAM_INTERRUPTED_EVENT: &str = "data: {\"error\":{\"message\":\"upstream stream interrupted\",\"type\":\"upstream_error\",\"code\":\"stream_interrupted\"}}\n\n";

const JSON: &str = "application/json";
const INVALID_REQUEST: &str = "invalid_request_error";
const UPSTREAM_ERROR: &str = "upstream_error";
const RATE_LIMIT_ERROR: &str = "rate_limit_error";
/// `error.code` of the 429 for a caller's re-send the shared retry budget refused.
pub const RETRY_BUDGET_EXHAUSTED: &str = "retry_budget_exhausted";
const OVERLOADED: &str = "overloaded_error";

// === errors of our own ===

/// An OpenAI-style error answer: `{"error":{"message","type","param","code"}}` plus our two headers.
pub(crate) fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    attempts: u32,
    outcome: Outcome,
) -> Response {
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "param": param, "code": code } });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    mark(response.headers_mut(), attempts, outcome);
    response
}

/// 400 for a request that failed local validation (it never left).
pub(crate) fn invalid_request(message: &str, param: Option<&str>, outcome: Outcome) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        message,
        INVALID_REQUEST,
        Some("validation_error"),
        param,
        0,
        outcome,
    )
}

/// 413 for a body over `max_body` (it never left).
pub(crate) fn too_large(max: usize, outcome: Outcome) -> Response {
    let message = format!(
        "the request body is larger than the proxy's limit of {max} bytes; send a smaller request"
    );
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &message,
        INVALID_REQUEST,
        Some("request_too_large"),
        None,
        0,
        outcome,
    )
}

/// The local answer to a refused request ([`Refusal`]): nothing was sent upstream, so 0 attempts.
pub(crate) fn refused(refusal: Refusal) -> Response {
    let (status, message, code) = match refusal {
        Refusal::Host => (
            StatusCode::FORBIDDEN,
            "the Host of this request is not one the retrybudget proxy serves; call it as localhost or 127.0.0.1, \
             or start it with --allowed-host NAME",
            "host_not_allowed",
        ),
        Refusal::Origin => (
            StatusCode::FORBIDDEN,
            "browser requests (with an Origin header) are refused; start the proxy with --allowed-origin ORIGIN \
             to allow this origin",
            "origin_not_allowed",
        ),
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "this proxy requires its caller token: send Authorization: Bearer <token> (the value of the variable \
             named by --caller-token-env)",
            "invalid_api_key",
        ),
        Refusal::ContentType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be sent with content-type: application/json",
            "unsupported_media_type",
        ),
        Refusal::Path => (
            StatusCode::BAD_REQUEST,
            "the path is not a plain /v1/ path",
            "invalid_path",
        ),
        Refusal::BodyTimeout => (
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive within the proxy's body-read timeout; send it faster or raise \
             --body-read-timeout",
            "body_timeout",
        ),
        Refusal::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the retrybudget proxy has too many requests in flight; retry shortly or raise --max-in-flight",
            "too_many_requests_in_flight",
        ),
    };
    let kind = if status == StatusCode::SERVICE_UNAVAILABLE {
        OVERLOADED
    } else {
        INVALID_REQUEST
    };
    let mut response = error_response(
        status,
        message,
        kind,
        Some(code),
        None,
        0,
        Outcome::FailedWithoutRetry,
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    if status == StatusCode::REQUEST_TIMEOUT {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// 400 for a path that may not be joined to the upstream; `message` is [`crate::path::PathError::message`].
pub(crate) fn bad_path(message: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        message,
        INVALID_REQUEST,
        Some("invalid_path"),
        None,
        0,
        Outcome::FailedWithoutRetry,
    )
}

/// 400 when the caller's body could not be read (it broke off while sending).
pub(crate) fn unreadable_body() -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "the request body could not be read (the connection broke while sending it); send the request again",
        INVALID_REQUEST,
        Some("unreadable_body"),
        None,
        0,
        Outcome::FailedWithoutRetry,
    )
}

/// 405 for a method other than GET or HEAD on `/metrics` or `/healthz`.
pub(crate) fn method_not_allowed() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    response
}

/// 404 for anything outside `/v1/*`, `/metrics` and `/healthz` (the path is not echoed: it may carry data).
pub(crate) fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such route on the retrybudget proxy; it forwards /v1/* (and serves /metrics and /healthz)",
        INVALID_REQUEST,
        Some("not_found"),
        None,
        0,
        Outcome::FailedWithoutRetry,
    )
}

/// 429 for a caller's re-send the shared retry budget could not pay for (no upstream call was made), with
/// `retry-after` = the budget's refill time. Not `insufficient_quota`: an SDK treats this as retryable later.
pub(crate) fn retry_budget_exhausted(retry_after_secs: u64) -> Response {
    let message = format!(
        "retry budget exhausted: this request repeats one that just failed, and the shared retry budget for \
         this upstream is spent, so it was not sent; retry after {retry_after_secs} s, and let one layer own \
         retries (e.g. max_retries=0 in the SDK behind this proxy)"
    );
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        &message,
        RATE_LIMIT_ERROR,
        Some(RETRY_BUDGET_EXHAUSTED),
        None,
        0,
        Outcome::BudgetExhausted,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// 502 (or 504 after a timeout that ran into the deadline) when no upstream response ever arrived; 429 when
/// the budget refused a caller's re-send before any attempt.
pub(crate) fn upstream_failed(error: &CallError) -> Response {
    if let Some(secs) = error.retry_after_secs {
        return retry_budget_exhausted(secs);
    }
    let timed_out =
        error.outcome == Outcome::DeadlineExceeded && error.error_type == Some(ErrorType::Timeout);
    let status = if timed_out {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    let code = error.error_type.map(ErrorType::as_str);
    let mut message = error.to_string();
    if error.error_type == Some(ErrorType::InvalidResponse) {
        message.push_str(
            "; the upstream's answer was not usable: larger than the proxy's --max-response-body, or not the \
             JSON it should be",
        );
    }
    error_response(
        status,
        &message,
        UPSTREAM_ERROR,
        code.as_deref(),
        None,
        error.attempts,
        error.outcome,
    )
}

// === the upstream's answer ===

/// The upstream's headers worth handing back; hop-by-hop headers and framing (`content-length`,
/// `transfer-encoding`) are left for our server to set.
fn is_relayed(name: &HeaderName) -> bool {
    let n = name.as_str();
    name == header::CONTENT_TYPE
        || n == "x-request-id"
        || n.starts_with("openai-")
        || n.starts_with("x-ratelimit-")
        || n.starts_with("retry-after")
}

/// The final upstream response as it came: status, body (or live stream) and the useful headers.
pub(crate) fn relay(exchange: Exchange) -> Response {
    let body = match exchange.body {
        ExchangeBody::Full(bytes) => Body::from(bytes),
        ExchangeBody::Stream(stream) => {
            let is_sse = exchange
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let chunks = Pumped(pump(stream));
            if is_sse {
                Body::from_stream(SseRelay::new(chunks))
            } else {
                // Not SSE: an interruption aborts the body (the caller sees a broken transfer, not an event).
                Body::from_stream(chunks)
            }
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = exchange.status;
    let headers = response.headers_mut();
    for (name, value) in exchange.headers.iter().filter(|(name, _)| is_relayed(name)) {
        headers.append(name.clone(), value.clone());
    }
    mark(headers, exchange.attempts, exchange.outcome);
    response
}

fn mark(headers: &mut HeaderMap, attempts: u32, outcome: Outcome) {
    // Parsed names and static values: nothing allocated per response.
    const ATTEMPTS: HeaderName = HeaderName::from_static(ATTEMPTS_HEADER);
    const OUTCOME: HeaderName = HeaderName::from_static(OUTCOME_HEADER);
    headers.insert(ATTEMPTS, retrybudget_client::count_value(attempts));
    headers.insert(OUTCOME, HeaderValue::from_static(outcome.as_str()));
}

/// Chunks of a body passed through, at most this many waiting for a slow reader.
const PUMP_CHUNKS: usize = 8;
/// How long the last chunk of an ended stream may wait for a reader that stopped reading.
const LAST_CHUNK_WAIT: Duration = Duration::from_secs(30);

/// Reads a committed stream on a task of its own, so that its idle limit and deadline hold even when the
/// caller stops reading: if a chunk cannot be handed on within [`ChatStream::time_left`], the call ends as
/// a timeout and the upstream connection is dropped. The task ends with the caller too: when the response
/// body is dropped, the channel closes and the stream is dropped (the client records `cancelled`).
fn pump(mut stream: Box<ChatStream>) -> mpsc::Receiver<Result<Bytes, StreamError>> {
    let (tx, rx) = mpsc::channel(PUMP_CHUNKS);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = tx.closed() => return,
            };
            let Some(item) = item else { return };
            let limit = stream.time_left().unwrap_or(LAST_CHUNK_WAIT);
            match tokio::time::timeout(limit, tx.send(item)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    stream.time_out();
                    let _ = tx.try_send(Err(StreamError::Interrupted));
                    return;
                }
            }
        }
    });
    rx
}

/// The receiving end of [`pump`] as a stream.
struct Pumped(mpsc::Receiver<Result<Bytes, StreamError>>);

impl Stream for Pumped {
    type Item = Result<Bytes, StreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// SSE bytes of a committed stream (a [`ChatStream`], however the client hands it over), passed on chunk by
/// chunk; an interruption becomes one final error event.
///
/// Holding the [`ChatStream`] is what keeps its call open: when the caller goes away, the server drops this
/// body, the stream drops, and the client records `cancelled`.
struct SseRelay<S> {
    inner: Option<S>,
    /// How many newlines the bytes sent so far end with (0, 1 or 2+), so the error event starts an event of
    /// its own even when the upstream broke off mid-line.
    trailing_newlines: usize,
}

impl<S> SseRelay<S> {
    fn new(inner: S) -> Self {
        SseRelay {
            inner: Some(inner),
            trailing_newlines: 2,
        }
    }

    fn note(&mut self, chunk: &[u8]) {
        let n = chunk
            .iter()
            .rev()
            .take(2)
            .take_while(|&&b| b == b'\n')
            .count();
        self.trailing_newlines = if n == chunk.len() {
            (self.trailing_newlines + n).min(2)
        } else {
            n
        };
    }
}

impl<S, E> Stream for SseRelay<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_next(cx)) {
            Some(Ok(chunk)) => {
                this.note(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(_interrupted)) => {
                // The client has already recorded `stream_interrupted`; end the body after the event.
                this.inner = None;
                let separator = &b"\n\n"[..2 - this.trailing_newlines.min(2)];
                let mut event =
                    Vec::with_capacity(separator.len() + STREAM_INTERRUPTED_EVENT.len());
                event.extend_from_slice(separator);
                event.extend_from_slice(STREAM_INTERRUPTED_EVENT.as_bytes());
                Poll::Ready(Some(Ok(Bytes::from(event))))
            }
            None => {
                this.inner = None;
                Poll::Ready(None)
            }
        }
    }
}

// === the SERVER span ===

/// The SERVER span of one proxied request: child of the caller's `traceparent`, parent of the client's
/// logical span. It ends when the response head is produced (for a stream, before its body), or — if the
/// caller went away first — when the handler is dropped, without a status code.
pub(crate) struct ServerSpan {
    cx: opentelemetry::Context,
    ended: bool,
}

impl ServerSpan {
    pub(crate) fn start(
        telemetry: &Telemetry,
        parent: &opentelemetry::Context,
        method: &Method,
        route: &'static str,
    ) -> Self {
        let method = http_method_label(method.as_str());
        // Room for what `finish` adds: the attributes grow in place.
        let mut attributes = Vec::with_capacity(4);
        attributes.extend([
            KeyValue::new(HTTP_REQUEST_METHOD, method),
            KeyValue::new(HTTP_ROUTE, route),
        ]);
        let name = retrybudget_client::http_span_name(method, route);
        let cx = telemetry.start_span(parent, name, SpanKind::Server, attributes);
        ServerSpan { cx, ended: false }
    }

    /// The context to pass as the client's `RawRequest.parent`.
    pub(crate) fn context(&self) -> &opentelemetry::Context {
        &self.cx
    }

    /// Records the status code (server spans are errors on 5xx only) and ends the span.
    pub(crate) fn finish(mut self, status: StatusCode) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            HTTP_RESPONSE_STATUS_CODE,
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_attribute(KeyValue::new(ERROR_TYPE, status.as_str().to_owned()));
            span.set_status(Status::error(""));
        }
        span.end();
        self.ended = true;
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        // The client's spans keep this context alive (it is their parent), so end explicitly.
        if !self.ended {
            self.cx.span().end();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn relayed_headers() {
        for keep in [
            "content-type",
            "x-request-id",
            "openai-processing-ms",
            "x-ratelimit-remaining-requests",
            "retry-after",
            "retry-after-ms",
        ] {
            assert!(is_relayed(&HeaderName::from_static(keep)), "{keep}");
        }
        for drop in [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "set-cookie",
            "server",
        ] {
            assert!(!is_relayed(&HeaderName::from_static(drop)), "{drop}");
        }
    }

    #[test]
    fn event_is_a_valid_sse_error() {
        let data = STREAM_INTERRUPTED_EVENT
            .strip_prefix("data: ")
            .unwrap()
            .trim_end();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["error"]["code"], "stream_interrupted");
        assert_eq!(v["error"]["type"], "upstream_error");
        assert!(STREAM_INTERRUPTED_EVENT.ends_with("\n\n"));
    }
}
