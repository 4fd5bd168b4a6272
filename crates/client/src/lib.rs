//! An OpenAI-compatible chat-completions client that retries by the policy and leaves evidence of every attempt.
//!
//! Each logical call is driven through [`retrybudget_policy`]: one CLIENT span for the call (covering the
//! backoff sleeps), one child span per attempt carrying `traceparent` to the upstream, and for every attempt one
//! [`AttemptEvent`](retrybudget_telemetry::AttemptEvent) — span attributes, log record, metrics and evidence line
//! in one `emit`. A call that is dropped mid-flight (its caller went away) still ends its evidence, as
//! `cancelled`. Streaming calls are retried only until their first byte is handed to the caller.
//!
//! The client never records content: bodies pass through as bytes, the API key is a `SecretString` sent as a
//! sensitive header, and only status codes, error codes, ids and token counts reach telemetry.

mod attempt;
mod error;
mod exchange;
mod facts;
mod inflight;
pub mod sse;
mod stream;
mod transport;
mod types;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use opentelemetry::StringValue;
use retrybudget_policy::{
    AttemptResult, FailureKind, Outcome, Policy, PolicyConfig, peek_error_body,
};
use retrybudget_telemetry::{CallLabels, ModelLabels, Telemetry};
use secrecy::SecretString;

pub use error::{CallError, ChatError, ClientError};
pub use exchange::{Exchange, ExchangeBody, RawRequest};
pub use facts::MAX_CHOICES;
pub use stream::{ChatStream, StreamError};
pub use transport::{ResponseBody, Transport, is_tls};
pub use types::{ChatRequest, ChatResponse, Choice, Message, Usage};

use inflight::Inflight;
use transport::Pool;

pub use retrybudget_policy::routes::{CHAT_COMPLETIONS, http_span_name};
/// Header carrying our attempt index to the upstream (another agent reads it as a nested retry).
pub const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-retrybudget-attempt");

/// A count as a header value (attempt numbers and counts): the small ones every request sends are static
/// values, so setting them allocates nothing; larger ones are formatted.
pub fn count_value(n: u32) -> HeaderValue {
    const SMALL: [HeaderValue; 10] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
        HeaderValue::from_static("4"),
        HeaderValue::from_static("5"),
        HeaderValue::from_static("6"),
        HeaderValue::from_static("7"),
        HeaderValue::from_static("8"),
        HeaderValue::from_static("9"),
    ];
    match SMALL.get(n as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

/// How to reach the upstream and how to retry.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://api.openai.com` (a trailing `/v1` is accepted and ignored).
    pub base_url: String,
    /// `gen_ai.provider.name`, e.g. `openai`, `cometapi`.
    pub provider_name: String,
    /// `retrybudget.route`, e.g. `cometapi_chat_completions`.
    pub route_name: String,
    /// Retry policy.
    pub policy: PolicyConfig,
    /// Key sent as `Authorization: Bearer …` when the request carries none.
    pub api_key: Option<SecretString>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Distinct model ids kept as metric labels and budget scopes; later ones are labelled `_other`
    /// (see [`retrybudget_telemetry::labels`]).
    pub max_models_per_route: usize,
    /// Largest upstream body buffered whole (error answers and chat completions, which are read for their
    /// facts); a longer one fails the attempt as `invalid_response`. Bodies passed through as they arrive
    /// (streams, successful non-chat answers) are not buffered and not capped.
    pub max_response_body: usize,
}

impl ClientConfig {
    /// Defaults for `base_url`: provider `openai`, route `chat_completions`, the default policy, no key.
    pub fn new(base_url: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            provider_name: "openai".to_owned(),
            route_name: "chat_completions".to_owned(),
            policy: PolicyConfig::default(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            max_models_per_route: retrybudget_telemetry::names::DEFAULT_MAX_MODELS_PER_ROUTE,
            max_response_body: 32 << 20,
        }
    }
}

/// The client. Cheap to clone; clones share connections, budgets and telemetry.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: Pool,
    policy: Policy,
    telemetry: Telemetry,
    base: String,
    /// `base` as `url.full` may show it (see `redact_url`), without a trailing slash.
    redacted_base: Option<String>,
    /// `url.full` of a chat completion (`redacted_base` + its route), built once.
    chat_url_full: Option<StringValue>,
    /// Label values below are shared buffers (see `CallLabels`): built once per client, cloned per call for free.
    server_address: StringValue,
    server_port: u16,
    provider: StringValue,
    route: StringValue,
    /// `Authorization: Bearer <api key>`, built once and marked sensitive (never shown by `Debug`); `None`
    /// without a key, or with one that cannot be a header value.
    authorization: Option<HeaderValue>,
    max_response_body: usize,
    /// The route's bounded model labels (metric labels and budget scopes).
    models: ModelLabels,
    /// Flips to `true` once, at shutdown: every call still in flight ends as `cancelled`.
    cancel: tokio::sync::watch::Sender<bool>,
    /// Calls whose evidence is not written yet, and a wake-up for whoever waits for them to reach 0.
    live: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    origin: Instant,
    seeds: AtomicU64,
}

impl Client {
    /// Builds a client; registers the budget gauge with `telemetry`.
    pub fn new(config: ClientConfig, telemetry: Telemetry) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::BaseUrl {
            // Errors are printed: never with userinfo or a key in the query.
            url: retrybudget_telemetry::redact::redact_url(&config.base_url)
                .unwrap_or_else(|| "(unparsable URL, not shown)".to_owned()),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(&config.base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        let server_address = url
            .host_str()
            .ok_or_else(|| bad("it has no host"))?
            .to_owned();
        let server_port = url.port_or_known_default().unwrap_or(80);
        let mut base = config.base_url.trim_end_matches('/').to_owned();
        if base.ends_with("/v1") {
            base.truncate(base.len() - 3);
        }
        let policy = Policy::new(config.policy)?;
        let http = Pool::new(config.connect_timeout).map_err(ClientError::Http)?;
        let budgets = policy.clone();
        let origin = Instant::now();
        telemetry.observe_budgets(move || {
            let now = origin.elapsed();
            budgets
                .budgets()
                .all()
                .iter()
                .map(|b| (b.scope().to_owned(), b.balance(now)))
                .collect()
        });
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let route = CallLabels::shared(config.route_name);
        telemetry.announce_route(&route);
        let redacted_base = retrybudget_telemetry::redact::redact_url(&base)
            .map(|b| b.trim_end_matches('/').to_owned());
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                policy,
                telemetry,
                chat_url_full: redacted_base
                    .as_ref()
                    .map(|b| CallLabels::shared([b.as_str(), CHAT_COMPLETIONS].concat())),
                redacted_base,
                base,
                server_address: CallLabels::shared(server_address),
                server_port,
                provider: CallLabels::shared(config.provider_name),
                route,
                authorization: config.api_key.as_ref().and_then(bearer),
                max_response_body: config.max_response_body,
                models: ModelLabels::new(config.max_models_per_route),
                cancel: tokio::sync::watch::Sender::new(false),
                live: std::sync::atomic::AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                origin,
                seeds: AtomicU64::new(seed),
            }),
        })
    }

    /// The upstream base URL requests are joined to (without a trailing `/` or `/v1`).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The policy (and its budgets).
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Distinct model ids kept as labels so far (at most [`ClientConfig::max_models_per_route`]).
    pub fn model_labels(&self) -> usize {
        self.inner.models.len()
    }

    /// The telemetry pipeline.
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// A non-streaming chat call.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ChatError> {
        let mut request = request.clone();
        request.stream = false;
        let exchange = self.send(self.raw(&request)?).await?;
        let ExchangeBody::Full(body) = exchange.body else {
            return Err(ChatError::Decode(
                "expected a JSON body, got a stream".into(),
            ));
        };
        if !exchange.status.is_success() {
            return Err(ChatError::Status {
                status: exchange.status.as_u16(),
                code: peek_error_body(&body).classify_code().map(str::to_owned),
                attempts: exchange.attempts,
                outcome: exchange.outcome,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ChatError::Decode(decode_error(&e)))
    }

    /// A streaming chat call: returns once the first bytes arrived (retrying until then).
    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ChatError> {
        let mut request = request.clone();
        request.stream = true;
        let exchange = self.send(self.raw(&request)?).await?;
        match exchange.body {
            ExchangeBody::Stream(s) => Ok(*s),
            ExchangeBody::Full(body) => Err(ChatError::Status {
                status: exchange.status.as_u16(),
                code: peek_error_body(&body).classify_code().map(str::to_owned),
                attempts: exchange.attempts,
                outcome: exchange.outcome,
            }),
        }
    }

    fn raw(&self, request: &ChatRequest) -> Result<RawRequest, ChatError> {
        let body = serde_json::to_vec(request).map_err(|e| ChatError::Decode(e.to_string()))?;
        let mut raw = RawRequest::chat(Bytes::from(body));
        raw.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        raw.model = Some(request.model.clone());
        raw.stream = request.stream;
        raw.max_tokens = request.max_tokens;
        raw.temperature = request.temperature;
        Ok(raw)
    }

    /// Records a request that failed local validation and never left (proxy mode): one attempt with
    /// `error.type = validation_error`, outcome `failed_without_retry`.
    pub fn record_rejected(&self, request: &RawRequest) -> Outcome {
        let mut run = Inflight::start(self, request, true);
        run.begin_attempt();
        let d = run.end_attempt(&AttemptResult::Failure(FailureKind::Validation), None, None);
        d.outcome.unwrap_or(Outcome::FailedWithoutRetry)
    }

    /// Ends every call still in flight as `cancelled` (shutdown, once the grace period is over) and waits at most
    /// `wait` for their evidence to be written, so a final telemetry flush that follows includes it. Calls that
    /// start afterwards are cancelled at once. Returns how many calls were still unfinished when the wait ended
    /// (0 when all evidence was written).
    pub async fn cancel_inflight(&self, wait: Duration) -> usize {
        let inner = &self.inner;
        inner.cancel.send_replace(true);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let idle = inner.idle.notified();
            let live = inner.live.load(Ordering::Acquire);
            if live == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return inner.live.load(Ordering::Acquire);
            }
        }
    }

    /// Calls in flight (started, evidence not yet complete).
    pub fn inflight(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Resolves once [`Client::cancel_inflight`] was called.
    pub(crate) fn cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.cancel.subscribe();
        async move {
            // An error means the sender is gone with the client: nothing will cancel any more.
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub(crate) fn call_started(&self) {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn call_ended(&self) {
        if self.inner.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }

    fn now(&self) -> Duration {
        self.inner.origin.elapsed()
    }

    fn next_seed(&self) -> u64 {
        self.inner
            .seeds
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
    }
}

/// A serde error described without its message, which may quote the response's content.
fn decode_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "an I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON of an unexpected shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// The `Authorization` value for `key`, marked sensitive.
fn bearer(key: &SecretString) -> Option<HeaderValue> {
    use secrecy::ExposeSecret as _;
    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    #[test]
    fn count_values_read_as_the_number() {
        for n in [0, 1, 5, 9, 10, 11, 123, u32::MAX] {
            assert_eq!(super::count_value(n), http::HeaderValue::from(n), "{n}");
        }
    }
}
