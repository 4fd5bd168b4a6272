//! The retry loop: one logical call as a sequence of attempts, each sent through a [`Transport`], decided
//! by the policy and recorded by [`Inflight`] — the one place where the client waits, retries and gives up.
//!
//! Read it beside tower's `retry` and linkerd's `http/retry`: the policy (`retrybudget_policy::Call`) decides,
//! this loop only executes — send, classify what came back, sleep the decided delay, send again. A
//! successful stream returns as soon as its first chunk is in hand (after that it is committed and never
//! re-sent); a buffered answer is read whole (bounded by `max_response_body`) so its facts can be recorded.

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use retrybudget_policy::{AttemptResult, FailureKind, Outcome, ResponseHead, peek_error_body};

use crate::facts::Facts;
use crate::inflight::Inflight;
use crate::{
    ATTEMPT_HEADER, CHAT_COMPLETIONS, CallError, ChatStream, Client, Exchange, ExchangeBody,
    RawRequest, ResponseBody, Transport,
};

/// The response headers the policy reads its hints from, as parsed names.
static HINT_HEADERS: [http::HeaderName; 5] = {
    use retrybudget_policy::classify::header as h;
    [
        http::HeaderName::from_static(h::RETRY_AFTER),
        http::HeaderName::from_static(h::RETRY_AFTER_MS),
        http::HeaderName::from_static(h::RATELIMIT_RESET_REQUESTS),
        http::HeaderName::from_static(h::RATELIMIT_RESET_TOKENS),
        http::HeaderName::from_static(h::SHOULD_RETRY),
    ]
};

impl Client {
    /// Makes a logical call: attempts, decisions, backoff and evidence. Returns the final upstream response if
    /// one arrived (whatever its status), else the [`CallError`]. Ended as `cancelled` by
    /// [`Client::cancel_inflight`](crate::Client::cancel_inflight) unless its response was already handed over.
    pub async fn send(&self, request: RawRequest) -> Result<Exchange, CallError> {
        self.send_via(request, self.inner.http.clone()).await
    }

    /// [`Client::send`](crate::Client::send) with each attempt sent through `transport` — e.g. the rest of a `reqwest-middleware`
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
                        // By the parsed name when it is one of the hints (a `&str` is parsed per lookup).
                        match HINT_HEADERS.iter().find(|h| h.as_str() == name) {
                            Some(h) => headers.get(h),
                            None => headers.get(name),
                        }
                        .and_then(|v| v.to_str().ok())
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
                            error_type: d.error_type,
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
        headers.insert(ATTEMPT_HEADER, crate::count_value(attempt));
        if !headers.contains_key(header::AUTHORIZATION)
            && let Some(authorization) = &inner.authorization
        {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        let uri = match http::Uri::try_from([inner.base.as_str(), request.path.as_str()].concat()) {
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

fn protocol_version(v: http::Version) -> Option<&'static str> {
    match v {
        http::Version::HTTP_10 => Some("1.0"),
        http::Version::HTTP_11 => Some("1.1"),
        http::Version::HTTP_2 => Some("2"),
        http::Version::HTTP_3 => Some("3"),
        _ => None,
    }
}
