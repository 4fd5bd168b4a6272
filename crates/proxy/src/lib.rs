//! The local OpenAI-compatible sidecar of `retrybudget proxy`.
//!
//! # Why it exists
//! Retries belong to one owner. An application in any language points its SDK's `base_url` at this proxy
//! (with the SDK's own retries off) and gets the retrybudget policy — a small attempt allowance, jittered
//! backoff that honours server hints, a deadline and a shared retry budget — plus the evidence of every
//! attempt, without changing a line of its code. The proxy itself decides nothing about retrying: it reads
//! the caller's request, checks what can be checked locally, and hands the bytes to
//! [`retrybudget_client::Client::send`], which owns the policy and the evidence.
//!
//! # What it does
//! - `POST /v1/chat/completions`: the body is read up to [`ProxyConfig::max_body`] (413 above it), validated
//!   locally (a JSON object, `model` a string, `messages` a non-empty array; else 400 and no upstream call,
//!   recorded as a `validation_error` attempt), then forwarded unchanged with the caller's headers minus the
//!   hop-by-hop ones. The caller's `traceparent` is continued by a SERVER span, parent of the client's
//!   logical span. Streams (`"stream": true`) are relayed chunk by chunk as they arrive.
//! - Any other `/v1/*` request is forwarded with the same policy under a low-cardinality route template.
//! - `GET /metrics` (Prometheus text) and `GET /healthz`.
//! - Every proxied response carries `x-retrybudget-attempts` and `x-retrybudget-outcome`.
//!
//! # What it must never do
//! - **Buffer a whole stream**: SSE bytes go to the caller as they arrive; nothing waits for `[DONE]`.
//! - **Log or echo content**: no prompt, completion, header value or body ever reaches a log, a span or an
//!   error message; our own error messages are fixed text that names the offending field, never its value.
//! - **Retry after commit**: once a stream's first byte reached the caller it is never re-sent (the client
//!   enforces it; the proxy never re-issues a request itself). A broken stream ends with an SSE error event.
//! - **Outlive its caller**: the upstream call runs inside the request's own future (never spawned detached),
//!   so a caller that disconnects drops it and the client records the call as `cancelled`.
//! - **Put raw paths in telemetry**: only route templates such as `/v1/models/{model}`.
//!
//! # Example
//! ```no_run
//! use retrybudget_client::{Client, ClientConfig};
//! use retrybudget_proxy::{ProxyConfig, ProxyState};
//! use retrybudget_telemetry::Telemetry;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new(ClientConfig::new("https://api.openai.com"), Telemetry::local())?;
//! let state = ProxyState::new(client, ProxyConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! retrybudget_proxy::serve(listener, state, async { /* e.g. wait for Ctrl-C */ }).await?;
//! # Ok(())
//! # }
//! ```

mod access;
mod caller;
mod guard;
mod handler;
mod listener;
mod path;
mod request;
mod response;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, Response};
use retrybudget_client::Client;
use retrybudget_telemetry::Telemetry;
use tokio::sync::Semaphore;

pub use access::Access;
pub use caller::{CallerConfig, CallerRetries};
pub use listener::Limits;
pub use response::{
    ATTEMPTS_HEADER, OUTCOME_HEADER, RETRY_BUDGET_EXHAUSTED, STREAM_INTERRUPTED_EVENT,
};

/// Not API: entry points for the fuzz targets in `fuzz/` (chat validation and path checks stay crate-private).
#[doc(hidden)]
pub mod fuzzing {
    /// Local chat-request validation: the model and `stream` flag of a valid body, or the caller's error message.
    pub fn validate_chat(body: &[u8]) -> Result<(String, bool), String> {
        crate::request::validate_chat(body)
            .map(|f| (f.model, f.stream))
            .map_err(|e| e.message)
    }

    /// The `/v1/*` path rules (dot segments, encoded separators, bad escapes…), with the refusal's message.
    pub fn check_path(path: &str) -> Result<(), &'static str> {
        crate::path::check(path).map_err(|e| e.message())
    }

    /// The last check: `base` + `path_and_query` must stay under the base's `/v1/`.
    pub fn check_joined(base: &str, path_and_query: &str) -> Result<(), &'static str> {
        crate::path::check_joined(base, path_and_query).map_err(|e| e.message())
    }
}

/// How the proxy treats requests and shutdown.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Largest request body accepted, in bytes (default 8 MiB); a larger one gets 413 and never leaves.
    pub max_body: usize,
    /// Longest wait for in-flight requests after the shutdown signal (default 10 s).
    pub shutdown_grace: Duration,
    /// Recognising callers' own retries (`--caller-retries`, see [`CallerRetries`]).
    pub caller: CallerConfig,
    /// Who may use the proxy (and its key), and how the key is sent.
    pub access: Access,
    /// Timeouts and caps of the listener and of request handling.
    pub limits: Limits,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_body: 8 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            caller: CallerConfig::default(),
            access: Access::default(),
            limits: Limits::default(),
        }
    }
}

/// What every handler shares: the client (policy, budgets, telemetry), the settings and the in-flight cap.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProxyState {
    client: Client,
    config: Arc<ProxyConfig>,
    callers: caller::CallerTable,
    in_flight: Arc<Semaphore>,
    /// The client's base URL, parsed once for the joined-path check.
    base: Option<Arc<path::Base>>,
}

// === impl ProxyState ===

impl ProxyState {
    /// Wraps `client` (whose telemetry also serves `/metrics`).
    pub fn new(client: Client, config: ProxyConfig) -> ProxyState {
        let in_flight = Arc::new(Semaphore::new(config.limits.max_in_flight.max(1)));
        ProxyState {
            base: path::Base::parse(client.base_url()).map(Arc::new),
            client,
            callers: caller::CallerTable::new(config.caller),
            config: Arc::new(config),
            in_flight,
        }
    }

    /// The client every request goes through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn config(&self) -> &ProxyConfig {
        &self.config
    }

    pub(crate) fn callers(&self) -> &caller::CallerTable {
        &self.callers
    }

    pub(crate) fn in_flight(&self) -> &Arc<Semaphore> {
        &self.in_flight
    }

    /// `path_and_query` joined to the upstream base stays under its `/v1/` (refused if the base never parsed).
    pub(crate) fn check_joined(&self, path_and_query: &str) -> Result<(), path::PathError> {
        self.base
            .as_ref()
            .ok_or(path::PathError::Escapes)?
            .check_joined(path_and_query)
    }

    /// The same state, with the listen address among the accepted `Host`s.
    fn listening_on(self, addr: std::net::SocketAddr) -> ProxyState {
        let mut config = (*self.config).clone();
        config.access.listen_addr = Some(addr);
        ProxyState {
            config: Arc::new(config),
            ..self
        }
    }
}

/// `GET /metrics` (the Prometheus exposition of `telemetry`) and `GET /healthz`: the proxy's, and on their own
/// for commands that serve only metrics (`retrybudget probe`).
pub fn observability<S>(telemetry: Telemetry) -> Router<S> {
    Router::new()
        .route("/metrics", get(handler::metrics))
        .route("/healthz", get(handler::healthz))
        .with_state(telemetry)
}

/// The proxy as one service: every route behind the access checks of [`Access`] (but `/healthz`), dispatched
/// by hand — no router, no middleware stack, no boxed future per layer — since the hop's cost is what a
/// sidecar is judged by. The listener calls [`Proxy::handle`] directly; tests can drive it as a
/// `tower::Service` (`app(state).oneshot(request)`).
pub fn app(state: ProxyState) -> Proxy {
    Proxy {
        state: Arc::new(state),
    }
}

/// See [`app`]. Cheap to clone (one shared state).
#[derive(Clone, Debug)]
pub struct Proxy {
    state: Arc<ProxyState>,
}

impl Proxy {
    /// Answers one request: the access, path and in-flight checks (see [`Access`]), then the route.
    pub async fn handle(&self, request: Request<Body>) -> Response<Body> {
        guard::guard(&self.state, request).await
    }
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move { Ok(proxy.handle(request).await) })
    }
}

/// Serves [`app`] on `listener` within [`ProxyConfig::limits`] until `shutdown` completes; then stops
/// accepting, lets in-flight requests finish, but waits at most [`ProxyConfig::shutdown_grace`] after the
/// signal before returning. The caller flushes telemetry afterwards.
///
/// Connections still open when the grace period ends are not waited for; they end when the runtime shuts
/// down.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ProxyState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = state.listening_on(listener.local_addr()?);
    let config = Arc::clone(&state.config);
    let telemetry = state.client().telemetry().clone();
    listener::serve(
        listener,
        app(state),
        config.limits.clone(),
        telemetry,
        config.shutdown_grace,
        shutdown,
    )
    .await
}
