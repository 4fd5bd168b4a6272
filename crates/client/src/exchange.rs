//! The byte-level face of the client, for the proxy and the middleware: a request as it arrived
//! ([`RawRequest`]) and the final answer of its logical call ([`Exchange`]), bodies untouched.
//!
//! `Debug` never shows a header value or a body: headers carry credentials, bodies the prompt and completion.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use retrybudget_policy::Outcome;
use retrybudget_telemetry::CallerRetry;

use std::borrow::Cow;

use crate::{CHAT_COMPLETIONS, ChatStream};

/// A request as the proxy (or [`Client::chat`](crate::Client::chat)) hands it over: bytes in, bytes out.
///
/// `Debug` shows header names and the body's length only: headers carry credentials, the body the prompt.
#[derive(Clone)]
pub struct RawRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query under the base URL, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Low-cardinality route template for telemetry.
    pub url_template: Cow<'static, str>,
    /// Headers to forward (hop-by-hop ones already removed).
    pub headers: HeaderMap,
    /// Body, forwarded unchanged.
    pub body: Bytes,
    /// `gen_ai.request.model`.
    pub model: Option<String>,
    /// Whether the caller asked for SSE.
    pub stream: bool,
    /// `gen_ai.request.max_tokens`.
    pub max_tokens: Option<u64>,
    /// `gen_ai.request.temperature`.
    pub temperature: Option<f64>,
    /// Parent context (the caller's trace).
    pub parent: opentelemetry::Context,
    /// The caller's own retry count (`x-stainless-retry-count`), if sent.
    pub client_retry_count: Option<u32>,
    /// Set when this request is its caller's re-send of an earlier one (proxy mode): counted in
    /// `retrybudget.client.nested_retries` and recorded on the logical span and in the evidence.
    pub caller_retry: Option<CallerRetry>,
    /// With a `caller_retry`: its first attempt withdraws from the shared budget like a retry (instead of
    /// depositing like new traffic) and its allowance counts the caller's earlier attempts; when the budget
    /// cannot pay, [`Client::send`](crate::Client::send) makes no attempt and returns a `budget_exhausted` [`CallError`](crate::CallError) with a
    /// `retry_after_secs`.
    pub caller_retry_pays: bool,
    /// The caller's deadline, if shorter than the configured one.
    pub deadline: Option<Duration>,
    /// Whether the request may be sent more than once (see `retrybudget_policy::repeatable`); when false the
    /// call has an allowance of one attempt.
    pub repeatable: bool,
}

impl RawRequest {
    /// A `POST /v1/chat/completions` with `body`.
    pub fn chat(body: Bytes) -> Self {
        RawRequest {
            method: Method::POST,
            path: CHAT_COMPLETIONS.to_owned(),
            url_template: Cow::Borrowed(CHAT_COMPLETIONS),
            headers: HeaderMap::new(),
            body,
            model: None,
            stream: false,
            max_tokens: None,
            temperature: None,
            parent: opentelemetry::Context::new(),
            client_retry_count: None,
            caller_retry: None,
            caller_retry_pays: false,
            deadline: None,
            repeatable: true,
        }
    }
}

/// The final response of a logical call (`Debug` shows header names and body sizes only).
pub struct Exchange {
    /// Status of the final upstream response.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: ExchangeBody,
    /// Attempts made (for a stream: up to its head).
    pub attempts: u32,
    /// Terminal outcome (for a stream: as of its head; an interruption later ends it `stream_interrupted`).
    pub outcome: Outcome,
}

/// A buffered body or a live stream.
pub enum ExchangeBody {
    /// The whole body.
    Full(Bytes),
    /// SSE bytes, passed on as they arrive.
    Stream(Box<ChatStream>),
}

/// Header names, never values (which may be credentials).
struct HeaderNames<'a>(&'a HeaderMap);

impl std::fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.keys().map(|k| k.as_str()))
            .finish()
    }
}

impl std::fmt::Debug for RawRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRequest")
            .field("method", &self.method)
            .field("url_template", &self.url_template)
            .field("header_names", &HeaderNames(&self.headers))
            .field("body_len", &self.body.len())
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("status", &self.status)
            .field("header_names", &HeaderNames(&self.headers))
            .field("body", &self.body)
            .field("attempts", &self.attempts)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl std::fmt::Debug for ExchangeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            ExchangeBody::Stream(s) => f.debug_tuple("Stream").field(s).finish(),
        }
    }
}
