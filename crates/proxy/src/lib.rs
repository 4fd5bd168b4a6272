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

mod caller;
mod handler;
mod request;
mod response;

use std::future::{Future, IntoFuture as _};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use retrybudget_client::{CHAT_COMPLETIONS, Client};
use retrybudget_telemetry::Telemetry;

pub use caller::{CallerConfig, CallerRetries};
pub use response::{
    ATTEMPTS_HEADER, OUTCOME_HEADER, RETRY_BUDGET_EXHAUSTED, STREAM_INTERRUPTED_EVENT,
};

/// How the proxy treats requests and shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Largest request body accepted, in bytes (default 8 MiB); a larger one gets 413 and never leaves.
    pub max_body: usize,
    /// Longest wait for in-flight requests after the shutdown signal (default 10 s).
    pub shutdown_grace: Duration,
    /// Recognising callers' own retries (`--caller-retries`, see [`CallerRetries`]).
    pub caller: CallerConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_body: 8 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            caller: CallerConfig::default(),
        }
    }
}

/// What every handler shares: the client (policy, budgets, telemetry) and the settings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProxyState {
    client: Client,
    config: Arc<ProxyConfig>,
    callers: caller::CallerTable,
}

// === impl ProxyState ===

impl ProxyState {
    /// Wraps `client` (whose telemetry also serves `/metrics`).
    pub fn new(client: Client, config: ProxyConfig) -> ProxyState {
        ProxyState {
            client,
            callers: caller::CallerTable::new(config.caller),
            config: Arc::new(config),
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
}

/// `GET /metrics` (the Prometheus exposition of `telemetry`) and `GET /healthz`: the proxy's, and on their own
/// for commands that serve only metrics (`retrybudget probe`).
pub fn observability<S>(telemetry: Telemetry) -> Router<S> {
    Router::new()
        .route("/metrics", get(handler::metrics))
        .route("/healthz", get(handler::healthz))
        .with_state(telemetry)
}

/// The proxy's routes, ready for `axum::serve` or for `tower::ServiceExt::oneshot` in tests.
pub fn app(state: ProxyState) -> Router {
    Router::new()
        .merge(observability(state.client().telemetry().clone()))
        // Other methods on the chat path (e.g. listing stored completions) are forwarded like any `/v1/*`.
        .route(
            CHAT_COMPLETIONS,
            post(handler::chat).fallback(handler::forward),
        )
        .route("/v1/{*rest}", any(handler::forward))
        .fallback(handler::not_found)
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes; then stops accepting and lets in-flight requests
/// finish, but waits at most [`ProxyConfig::shutdown_grace`] after the signal before returning. The caller
/// flushes telemetry afterwards.
///
/// Connections still open when the grace period ends are not waited for; they end when the runtime shuts
/// down.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ProxyState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.config().shutdown_grace;
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = signalled.send(());
    };
    let server = axum::serve(listener, app(state))
        .with_graceful_shutdown(signal)
        .into_future();
    let deadline = async move {
        match on_signal.await {
            Ok(()) => tokio::time::sleep(grace).await,
            // The server ended before any signal: nothing to time out.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        result = server => result,
        () = deadline => Ok(()),
    }
}
