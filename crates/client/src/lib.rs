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

mod error;
mod inflight;
pub mod sse;
mod stream;
mod transport;
mod types;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use opentelemetry::StringValue;
use retrybudget_policy::{
    AttemptResult, FailureKind, Outcome, Policy, PolicyConfig, ResponseHead, peek_error_body,
};
use retrybudget_telemetry::{CallLabels, CallerRetry, ModelLabels, ResponseFacts, Telemetry};
use secrecy::{ExposeSecret as _, SecretString};

pub use error::{CallError, ChatError, ClientError};
pub use stream::{ChatStream, StreamError};
pub use transport::{ResponseBody, Transport, is_tls};
pub use types::{ChatRequest, ChatResponse, Choice, Message, Usage};

use inflight::Inflight;
use transport::Pool;

pub use retrybudget_policy::routes::CHAT_COMPLETIONS;
/// Header carrying our attempt index to the upstream (another agent reads it as a nested retry).
pub const ATTEMPT_HEADER: &str = "x-retrybudget-attempt";

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

/// A request as the proxy (or [`Client::chat`]) hands it over: bytes in, bytes out.
///
/// `Debug` shows header names and the body's length only: headers carry credentials, the body the prompt.
#[derive(Clone)]
pub struct RawRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query under the base URL, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Low-cardinality route template for telemetry.
    pub url_template: String,
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
    /// cannot pay, [`Client::send`] makes no attempt and returns a `budget_exhausted` [`CallError`] with a
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
            url_template: CHAT_COMPLETIONS.to_owned(),
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

/// The client. Cheap to clone; clones share connections, budgets and telemetry.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: Pool,
    policy: Policy,
    /// The same policy with an allowance of one attempt, for requests that are not repeatable.
    once: Policy,
    telemetry: Telemetry,
    base: String,
    /// `base` as `url.full` may show it (see `redact_url`), without a trailing slash.
    redacted_base: Option<String>,
    /// Label values below are shared buffers (see `CallLabels`): built once per client, cloned per call for free.
    server_address: StringValue,
    server_port: u16,
    provider: StringValue,
    route: StringValue,
    api_key: Option<SecretString>,
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
        let once = Policy::new(PolicyConfig {
            max_attempts: 1,
            ..config.policy.clone()
        })?;
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
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                policy,
                once,
                telemetry,
                redacted_base: retrybudget_telemetry::redact::redact_url(&base)
                    .map(|b| b.trim_end_matches('/').to_owned()),
                base,
                server_address: CallLabels::shared(server_address),
                server_port,
                provider: CallLabels::shared(config.provider_name),
                route: CallLabels::shared(config.route_name),
                api_key: config.api_key,
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

    /// Makes a logical call: attempts, decisions, backoff and evidence. Returns the final upstream response if
    /// one arrived (whatever its status), else the [`CallError`]. Ended as `cancelled` by
    /// [`Client::cancel_inflight`] unless its response was already handed over.
    pub async fn send(&self, request: RawRequest) -> Result<Exchange, CallError> {
        self.send_via(request, self.inner.http.clone()).await
    }

    /// [`Client::send`] with each attempt sent through `transport` — e.g. the rest of a `reqwest-middleware`
    /// chain — instead of this client's own connection pool: the same policy, budget, spans and evidence.
    pub async fn send_via<T: Transport>(
        &self,
        request: RawRequest,
        transport: T,
    ) -> Result<Exchange, CallError> {
        let cancel_error = CallError {
            outcome: Outcome::Cancelled,
            attempts: 0,
            last_status: None,
            error_type: None,
            retry_after_secs: None,
        };
        if *self.inner.cancel.borrow() {
            // Shut down already: nothing is sent; the call's `cancelled` record is still written (or, once the
            // evidence is closed, counted as dropped).
            let mut run = Inflight::start(self, &request, true);
            run.begin_attempt();
            drop(run);
            return Err(cancel_error);
        }
        let call = std::pin::pin!(self.send_attempts(request, transport));
        let cancelled = std::pin::pin!(self.cancelled());
        match futures_util::future::select(call, cancelled).await {
            futures_util::future::Either::Left((result, _)) => result,
            // Dropping the call wrote its `cancelled` evidence.
            futures_util::future::Either::Right(((), _)) => Err(cancel_error),
        }
    }

    async fn send_attempts<T: Transport>(
        &self,
        request: RawRequest,
        mut transport: T,
    ) -> Result<Exchange, CallError> {
        let mut run = Inflight::start(self, &request, false);
        if let Some(retry_after_secs) = run.refuse_unpaid_resend() {
            return Err(CallError {
                outcome: Outcome::BudgetExhausted,
                attempts: 0,
                last_status: None,
                error_type: None,
                retry_after_secs: Some(retry_after_secs),
            });
        }
        loop {
            let attempt_cx = run.begin_attempt();
            let timeout = run.attempt_timeout();
            let attempt =
                self.attempt_once(&request, &attempt_cx, run.attempt_index(), &mut transport);
            let output = tokio::time::timeout(timeout, attempt)
                .await
                .unwrap_or(Output::Failed(FailureKind::Timeout));
            let decision = match output {
                Output::Stream {
                    status,
                    headers,
                    first,
                    rest,
                    version,
                    require_done,
                } => {
                    let attempts = run.attempt_index() + 1;
                    let outcome = if attempts > 1 {
                        Outcome::SuccessAfterRetry
                    } else {
                        Outcome::Success
                    };
                    let stream = ChatStream::new(run, first, rest, version, require_done);
                    return Ok(Exchange {
                        status,
                        headers,
                        body: ExchangeBody::Stream(Box::new(stream)),
                        attempts,
                        outcome,
                    });
                }
                Output::Full {
                    status,
                    headers,
                    body,
                    version,
                } => {
                    let code = peek_error_body(if status.is_success() { &[] } else { &body });
                    let head = ResponseHead::from_headers(status.as_u16(), |name| {
                        headers.get(name).and_then(|v| v.to_str().ok())
                    })
                    .with_error_code(code.classify_code());
                    let mut result = AttemptResult::Response(head);
                    if status.is_success() && request.url_template == CHAT_COMPLETIONS {
                        match serde_json::from_slice::<Facts<'_>>(&body) {
                            Ok(f) => run.merge_facts(f),
                            // Valid JSON of an unusual shape (`"choices": null`, a numeric id) is still a
                            // response: only its facts are lost. Not JSON at all is `invalid_response`.
                            Err(_)
                                if serde_json::from_slice::<serde::de::IgnoredAny>(&body)
                                    .is_ok() => {}
                            Err(_) => result = AttemptResult::Failure(FailureKind::InvalidResponse),
                        }
                    }
                    let d = run.end_attempt(&result, Some(status.as_u16()), version);
                    if let Some(outcome) = d.outcome {
                        let attempts = d.attempt + 1;
                        return Ok(Exchange {
                            status,
                            headers,
                            body: ExchangeBody::Full(body),
                            attempts,
                            outcome,
                        });
                    }
                    d
                }
                Output::Failed(kind) => {
                    let d = run.end_attempt(&AttemptResult::Failure(kind), None, None);
                    if let Some(outcome) = d.outcome {
                        return Err(CallError {
                            outcome,
                            attempts: d.attempt + 1,
                            last_status: run.last_status,
                            error_type: d.error_type.map(|e| e.to_string()),
                            retry_after_secs: None,
                        });
                    }
                    d
                }
            };
            tokio::time::sleep(decision.delay.unwrap_or_default()).await;
        }
    }

    async fn attempt_once<T: Transport>(
        &self,
        request: &RawRequest,
        cx: &opentelemetry::Context,
        attempt: u32,
        transport: &mut T,
    ) -> Output {
        let inner = &self.inner;
        let mut headers = request.headers.clone();
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
        // The formatted string becomes the header value's buffer (no second copy).
        if let Some(tp) = retrybudget_telemetry::traceparent(cx)
            .and_then(|v| HeaderValue::from_maybe_shared(Bytes::from(v)).ok())
        {
            headers.insert(retrybudget_telemetry::TRACEPARENT, tp);
        }
        headers.insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
        if !headers.contains_key(header::AUTHORIZATION)
            && let Some(key) = &inner.api_key
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
        {
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
        let uri = match http::Uri::try_from(format!("{}{}", inner.base, request.path)) {
            Ok(uri) => uri,
            Err(_) => return Output::Failed(FailureKind::Other),
        };
        let mut outgoing = http::Request::new(request.body.clone());
        *outgoing.method_mut() = request.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers;
        let response = match transport.send_attempt(outgoing).await {
            Ok(r) => r,
            Err(kind) => return Output::Failed(kind),
        };
        let (head, body) = response.into_parts();
        let status = head.status;
        let version = protocol_version(head.version);
        let headers = head.headers;
        // An upstream that ignores `stream` and answers JSON takes the buffered path, not the SSE one.
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        // Passed through as it arrives: a stream the caller asked for, any other event stream, and any
        // successful answer that is not a chat completion (whose facts we read from the whole body).
        let pass_through = status.is_success()
            && (is_sse || (!request.stream && request.url_template != CHAT_COMPLETIONS));
        if pass_through {
            let mut rest = http_body_util::BodyDataStream::new(body);
            return match rest.next().await {
                Some(Ok(first)) => Output::Stream {
                    status,
                    headers,
                    first,
                    rest,
                    version,
                    // Only chat and legacy completions streams end with `data: [DONE]`.
                    require_done: request.stream && is_sse,
                },
                // An empty successful answer (e.g. 204) is complete as it is.
                None if !(request.stream && is_sse) => Output::Full {
                    status,
                    headers,
                    body: Bytes::new(),
                    version,
                },
                // Nothing reached the caller yet: safe to retry.
                Some(Err(_)) | None => Output::Failed(FailureKind::ConnectionReset),
            };
        }
        match read_limited(body, inner.max_response_body).await {
            Ok(body) => Output::Full {
                status,
                headers,
                body,
                version,
            },
            Err(kind) => Output::Failed(kind),
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

/// The rest of a passed-through response body, chunk by chunk as it arrives.
pub(crate) type ByteStream = http_body_util::BodyDataStream<ResponseBody>;

/// The whole body, or `invalid_response` as soon as it is (declared or found) larger than `max` bytes.
async fn read_limited(mut body: ResponseBody, max: usize) -> Result<Bytes, FailureKind> {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    if body.size_hint().lower() > max as u64 {
        return Err(FailureKind::InvalidResponse);
    }
    let mut first: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        let len = first.as_ref().map_or(0, Bytes::len) + buf.len() + data.len();
        if len > max {
            return Err(FailureKind::InvalidResponse);
        }
        // The usual answer arrives in one chunk: kept as it is, not copied.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

enum Output {
    Full {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        version: Option<&'static str>,
    },
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        first: Bytes,
        rest: ByteStream,
        version: Option<&'static str>,
        /// Whether the body is complete only with `data: [DONE]`.
        require_done: bool,
    },
    Failed(FailureKind),
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

fn protocol_version(v: http::Version) -> Option<&'static str> {
    match v {
        http::Version::HTTP_10 => Some("1.0"),
        http::Version::HTTP_11 => Some("1.1"),
        http::Version::HTTP_2 => Some("2"),
        http::Version::HTTP_3 => Some("3"),
        _ => None,
    }
}

/// The parts of a chat completion (or of one stream chunk) that evidence may record: identifiers and counts.
/// Deserialising into this skips every other field — message content included — without building a tree.
#[derive(serde::Deserialize)]
pub(crate) struct Facts<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    choices: Vec<ChoiceFacts<'a>>,
    #[serde(default)]
    usage: Option<UsageFacts>,
}

#[derive(serde::Deserialize)]
struct ChoiceFacts<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct UsageFacts {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Most choices whose finish reason a call keeps (`n` is small in practice; an upstream must not make it grow).
pub const MAX_CHOICES: usize = 16;
/// Longest response id, model or finish reason kept; longer or non-plain values are dropped.
const MAX_FACT_LEN: usize = 128;

/// A fact from the upstream, kept only if short and plain (it is exported, and the upstream is not trusted).
fn plain(s: std::borrow::Cow<'_, str>) -> Option<String> {
    (s.len() <= MAX_FACT_LEN
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\')))
    .then(|| s.into_owned())
}

/// The last finish reason of each choice, for at most [`MAX_CHOICES`] choices: bounded whatever a stream sends.
#[derive(Debug, Default)]
pub(crate) struct FinishReasons(Vec<(u32, String)>);

impl FinishReasons {
    fn set(&mut self, choice: u32, reason: String) {
        if let Some(slot) = self.0.iter_mut().find(|(i, _)| *i == choice) {
            slot.1 = reason;
        } else if self.0.len() < MAX_CHOICES {
            self.0.push((choice, reason));
        }
    }

    /// In choice order.
    pub(crate) fn to_vec(&self) -> Vec<String> {
        let mut v = self.0.clone();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, r)| r).collect()
    }
}

impl Facts<'_> {
    /// Adds these facts (ids and model from the first chunk that has them, usage and each choice's finish
    /// reason from the last).
    pub(crate) fn merge_into(self, facts: &mut ResponseFacts, finish: &mut FinishReasons) {
        if facts.id.is_none() {
            facts.id = self.id.and_then(plain);
        }
        if facts.model.is_none() {
            facts.model = self.model.and_then(plain);
        }
        for (position, c) in self.choices.into_iter().enumerate() {
            let choice = c
                .index
                .unwrap_or(u32::try_from(position).unwrap_or(u32::MAX));
            if let Some(reason) = c.finish_reason.and_then(plain) {
                finish.set(choice, reason);
            }
        }
        if let Some(u) = self.usage {
            facts.input_tokens = u.prompt_tokens;
            facts.output_tokens = u.completion_tokens;
        }
    }
}
