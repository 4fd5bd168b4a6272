//! retrybudget for `reqwest-middleware`: bounded, budgeted retries and OpenTelemetry evidence for the
//! OpenAI-compatible calls of any `reqwest`-based code.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use retrybudget_client::{Client, ClientConfig};
//! use retrybudget_middleware::RetryBudgetMiddleware;
//! let client = Client::new(ClientConfig::new("https://api.openai.com"), retrybudget_telemetry::Telemetry::local())?;
//! let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(RetryBudgetMiddleware::new(client))
//!     .build();
//! let answer = http.post("https://api.openai.com/v1/chat/completions").body(r#"{"model":"gpt-4o-mini","messages":[]}"#).send().await?;
//! # let _ = answer; Ok(()) }
//! ```
//!
//! Why a middleware and not a second client: [`RetryBudgetMiddleware`] hands the request to
//! [`Client::send_via`], the very loop behind the client and the proxy, with the rest of the middleware chain
//! as the [`Transport`] of each attempt. Policy, shared budget, backoff, the `chat {model}` span with one child
//! per attempt, `traceparent`, and one `retrybudget.attempt` evidence record per attempt are therefore exactly
//! the client's. There is no retry logic in this crate, and it must never grow any.
//!
//! What gets the policy: `POST` requests under the client's base URL to an OpenAI-compatible route
//! ([`ROUTES`]) whose body is in memory (a streaming request body cannot be replayed). Anything else passes
//! through untouched, unretried and unrecorded. Place the middleware *last* in the chain if other middlewares
//! (auth, tracing) should run on every attempt, or first if they should see the logical call only.
//!
//! The response is the final upstream response, whatever its status (like the proxy, the middleware never
//! invents an answer); a call that ends without one (refused, timed out, budget exhausted) is an
//! [`reqwest_middleware::Error::Middleware`] wrapping the client's [`CallError`], which says how many attempts
//! were made and what to do next. Streaming answers (`"stream": true`) come back as a body stream that ends
//! the call's evidence when it ends; a stream cut after its first byte is a body error, never retried.
//! The response's `url()` is not the upstream's: `reqwest` cannot carry it through a rebuilt response.
//!
//! Nothing here reads or records content: the body is read only for `model`, `stream`, `max_tokens` and
//! `temperature`, like the proxy.

use std::borrow::Cow;

use bytes::Bytes;
use http::Extensions;
use http_body_util::BodyExt as _;
use reqwest_middleware::{Middleware, Next};
use retrybudget_client::{
    CallError, Client, Exchange, ExchangeBody, RawRequest, ResponseBody, Transport,
};
use retrybudget_policy::{FailureKind, routes};

pub use retrybudget_client;

/// The OpenAI-compatible routes (path templates under the base URL) that get the policy.
pub const ROUTES: [&str; 4] = [
    routes::CHAT_COMPLETIONS,
    routes::RESPONSES,
    routes::COMPLETIONS,
    routes::EMBEDDINGS,
];

/// A `reqwest-middleware` middleware that runs OpenAI-compatible calls through a retrybudget [`Client`].
#[derive(Debug, Clone)]
pub struct RetryBudgetMiddleware {
    client: Client,
}

impl RetryBudgetMiddleware {
    /// Uses `client`'s base URL, policy, budgets and telemetry. Clones of one client share their budgets, so
    /// a middleware and a direct [`Client`] built from the same one draw on one budget.
    pub fn new(client: Client) -> Self {
        RetryBudgetMiddleware { client }
    }

    /// The logical call `request` describes, or `None` if it is not one the policy applies to.
    fn logical_call(&self, request: &reqwest::Request) -> Option<RawRequest> {
        if request.method() != http::Method::POST {
            return None;
        }
        let path = request
            .url()
            .as_str()
            .strip_prefix(self.client.base_url())?;
        let template = ROUTES
            .into_iter()
            .find(|r| path.split(['?', '#']).next() == Some(*r))?;
        let body = request.body()?.as_bytes()?;
        // Lenient: a body that is not a JSON object is still forwarded (the upstream answers 400).
        let head: Head<'_> = serde_json::from_slice(body).unwrap_or_default();
        let mut raw = RawRequest::chat(Bytes::copy_from_slice(body));
        raw.path = path.to_owned();
        raw.url_template = template.into();
        raw.headers = request.headers().clone();
        raw.model = head.model.map(Cow::into_owned);
        raw.stream = head.stream.unwrap_or(false);
        raw.max_tokens = head.max_tokens;
        raw.temperature = head.temperature;
        Some(raw)
    }
}

/// The few request fields telemetry records; every other field (messages included) is skipped unread.
#[derive(Default, serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
}

#[async_trait::async_trait]
impl Middleware for RetryBudgetMiddleware {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let Some(raw) = self.logical_call(&request) else {
            return next.run(request, extensions).await;
        };
        let transport = Chain { next, extensions };
        match self.client.send_via(raw, transport).await {
            Ok(exchange) => Ok(into_response(exchange)),
            Err(e) => Err(reqwest_middleware::Error::middleware(CallFailed(e))),
        }
    }
}

/// A logical call that ended without a response to hand back.
#[derive(Debug)]
pub struct CallFailed(pub CallError);

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CallFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The rest of the middleware chain, as the transport of each attempt.
struct Chain<'a, 'e> {
    next: Next<'a>,
    extensions: &'e mut Extensions,
}

impl Transport for Chain<'_, '_> {
    async fn send_attempt(
        &mut self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<ResponseBody>, FailureKind> {
        let request = reqwest::Request::try_from(request).map_err(|e| failure_kind(&e))?;
        match self.next.clone().run(request, self.extensions).await {
            Ok(response) => Ok(http::Response::from(response)
                .map(|body| body.map_err(|e| failure_kind(&e)).boxed_unsync())),
            Err(reqwest_middleware::Error::Reqwest(e)) => Err(failure_kind(&e)),
            Err(reqwest_middleware::Error::Middleware(_)) => Err(FailureKind::Other),
        }
    }
}

/// What a `reqwest` error means to the policy (`connect_error`, `timeout`, `tls_error`, …), from its kind and
/// source chain — never from its own message, which contains the URL.
fn failure_kind(e: &reqwest::Error) -> FailureKind {
    if e.is_timeout() {
        FailureKind::Timeout
    } else if std::error::Error::source(e).is_some_and(retrybudget_client::is_tls) {
        FailureKind::Tls
    } else if e.is_connect() {
        FailureKind::Connect
    } else if e.is_request() || e.is_body() || e.is_decode() {
        FailureKind::ConnectionReset
    } else {
        FailureKind::Other
    }
}

fn into_response(exchange: Exchange) -> reqwest::Response {
    let body = match exchange.body {
        ExchangeBody::Full(bytes) => reqwest::Body::from(bytes),
        ExchangeBody::Stream(stream) => reqwest::Body::wrap_stream(*stream),
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = exchange.status;
    *response.headers_mut() = exchange.headers;
    reqwest::Response::from(response)
}
