//! What an attempt's result means (retry-semantics.md §1).
//!
//! Classification works on plain values — a status code, a few header values, the machine-readable error code
//! peeked from an error body, or the kind of transport failure — so it never learns about reqwest or hyper.
//! The rule is "retry only what is explicitly known to be safe": anything unrecognised is fatal.
//!
//! ## `x-should-retry` (issue 8; refines retry-semantics.md §1, which said the header "overrides the status rule")
//! The server's verdict can only make us *more* careful, or fill a gap the contract leaves open — never undo a
//! fatal class:
//! - `x-should-retry: false` turns any retry off (the attempt is then `fatal`, decision `stop_non_retryable`);
//! - `x-should-retry: true` turns a retry on only for a server error the contract does not name: a 5xx other
//!   than 501 and 505 (e.g. 507, 529). It never overrides the fatal classes — 400, 401, 403, 404, 413, 422 and
//!   every other 4xx, a 429 whose error code is `insufficient_quota`, 501, 505 — nor a non-error status (1xx,
//!   3xx, out of range), which stays "unknown, therefore fatal". TLS and validation failures carry no response
//!   and so no header at all.
//! - Any other value (`maybe`, empty) is ignored.
//!
//! A server (or anything on the path that can set a response header) must not be able to make us repeat a
//! request the contract calls unsafe to repeat: a 400 or a 401 retried is load without any chance of success,
//! and a 429 `insufficient_quota` retried is a bill.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use crate::hints::{self, DelaySource, Hint};

/// Header names the policy reads. Lowercase, as HTTP/2 and hyper spell them.
pub mod header {
    /// Seconds or an HTTP-date.
    pub const RETRY_AFTER: &str = "retry-after";
    /// Milliseconds (OpenAI, Azure OpenAI).
    pub const RETRY_AFTER_MS: &str = "retry-after-ms";
    /// OpenAI's request-window reset, a Go-style duration such as `1s` or `6m0s`.
    pub const RATELIMIT_RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
    /// OpenAI's token-window reset, a Go-style duration.
    pub const RATELIMIT_RESET_TOKENS: &str = "x-ratelimit-reset-tokens";
    /// `true` / `false`: the server's own verdict; it may turn a retry off, or on for an unnamed 5xx, never
    /// on for a fatal class (see the module docs).
    pub const SHOULD_RETRY: &str = "x-should-retry";
}

/// The class an attempt ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// 2xx.
    Success,
    /// A failure that is safe to retry with normal backoff.
    Transient,
    /// A transient failure that carried a server wait hint.
    RateLimited,
    /// Never retried.
    Fatal,
}

impl Class {
    /// Stable lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::Transient => "transient",
            Class::RateLimited => "rate_limited",
            Class::Fatal => "fatal",
        }
    }

    /// Whether this class may be retried.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Class::Transient | Class::RateLimited)
    }
}

/// Why an attempt produced no usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Connection refused or could not be established (DNS, connect).
    Connect,
    /// The connection was reset or closed before the response was complete and nothing reached the caller.
    ConnectionReset,
    /// The per-attempt timeout (or time-to-first-byte limit) fired.
    Timeout,
    /// TLS or certificate failure: retrying will not fix it.
    Tls,
    /// The upstream answered something that is not a valid response (malformed JSON on a 2xx, bad framing).
    InvalidResponse,
    /// A stream failed or ended without its terminator.
    StreamInterrupted,
    /// The request failed local validation and never left.
    Validation,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The low-cardinality `error.type` of this failure.
    pub const fn error_type(self) -> ErrorType {
        match self {
            FailureKind::Connect => ErrorType::ConnectError,
            FailureKind::ConnectionReset => ErrorType::ConnectionReset,
            FailureKind::Timeout => ErrorType::Timeout,
            FailureKind::Tls => ErrorType::TlsError,
            FailureKind::InvalidResponse => ErrorType::InvalidResponse,
            FailureKind::StreamInterrupted => ErrorType::StreamInterrupted,
            FailureKind::Validation => ErrorType::ValidationError,
            FailureKind::Other => ErrorType::Other,
        }
    }

    const fn class(self) -> Class {
        match self {
            FailureKind::Connect | FailureKind::ConnectionReset | FailureKind::Timeout => {
                Class::Transient
            }
            FailureKind::Tls
            | FailureKind::InvalidResponse
            | FailureKind::StreamInterrupted
            | FailureKind::Validation
            | FailureKind::Other => Class::Fatal,
        }
    }
}

/// The `error.type` recorded for a failed attempt: the status code when a response arrived, else a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// An HTTP status (recorded as its decimal string, e.g. `"503"`).
    Status(u16),
    /// `timeout`
    Timeout,
    /// `connect_error`
    ConnectError,
    /// `connection_reset`
    ConnectionReset,
    /// `tls_error`
    TlsError,
    /// `invalid_response`
    InvalidResponse,
    /// `stream_interrupted`
    StreamInterrupted,
    /// `validation_error`
    ValidationError,
    /// `_OTHER`, the semantic conventions' fallback.
    Other,
}

impl ErrorType {
    /// The recorded value.
    pub fn as_str(self) -> Cow<'static, str> {
        match self {
            ErrorType::Status(code) => Cow::Owned(code.to_string()),
            ErrorType::Timeout => Cow::Borrowed("timeout"),
            ErrorType::ConnectError => Cow::Borrowed("connect_error"),
            ErrorType::ConnectionReset => Cow::Borrowed("connection_reset"),
            ErrorType::TlsError => Cow::Borrowed("tls_error"),
            ErrorType::InvalidResponse => Cow::Borrowed("invalid_response"),
            ErrorType::StreamInterrupted => Cow::Borrowed("stream_interrupted"),
            ErrorType::ValidationError => Cow::Borrowed("validation_error"),
            ErrorType::Other => Cow::Borrowed("_OTHER"),
        }
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// The parts of a response head (and error body) that classification and timing read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseHead<'a> {
    /// HTTP status code.
    pub status: u16,
    /// `retry-after`
    pub retry_after: Option<&'a str>,
    /// `retry-after-ms`
    pub retry_after_ms: Option<&'a str>,
    /// `x-ratelimit-reset-requests`
    pub ratelimit_reset_requests: Option<&'a str>,
    /// `x-ratelimit-reset-tokens`
    pub ratelimit_reset_tokens: Option<&'a str>,
    /// `x-should-retry`
    pub should_retry: Option<&'a str>,
    /// `error.code` (or `error.type` when there is no code) from the error body, see [`peek_error_body`].
    pub error_code: Option<&'a str>,
}

impl<'a> ResponseHead<'a> {
    /// A head with only a status.
    pub const fn status(status: u16) -> Self {
        ResponseHead {
            status,
            retry_after: None,
            retry_after_ms: None,
            ratelimit_reset_requests: None,
            ratelimit_reset_tokens: None,
            should_retry: None,
            error_code: None,
        }
    }

    /// Builds a head from a header lookup (`name` is lowercase, see [`header`]).
    pub fn from_headers(status: u16, mut lookup: impl FnMut(&str) -> Option<&'a str>) -> Self {
        ResponseHead {
            status,
            retry_after: lookup(header::RETRY_AFTER),
            retry_after_ms: lookup(header::RETRY_AFTER_MS),
            ratelimit_reset_requests: lookup(header::RATELIMIT_RESET_REQUESTS),
            ratelimit_reset_tokens: lookup(header::RATELIMIT_RESET_TOKENS),
            should_retry: lookup(header::SHOULD_RETRY),
            error_code: None,
        }
    }

    /// Sets the error code peeked from the body.
    pub fn with_error_code(mut self, code: Option<&'a str>) -> Self {
        self.error_code = code;
        self
    }

    /// The server's wait hint, if any header carries a usable one; `wall_now` resolves HTTP-dates.
    ///
    /// The first usable of `retry-after-ms`, then `retry-after`, then (on 429 only, where OpenAI's reset headers
    /// describe the exhausted window) the earlier of the two reset headers. Unparsable values are skipped (the
    /// parsing is [`hints`]'s); a zero wait from the first usable header means "normal backoff" and is returned
    /// as such.
    pub fn hint(&self, wall_now: SystemTime) -> Option<Hint> {
        if let Some(wait) = self.retry_after_ms.and_then(hints::parse_millis) {
            return Some(Hint {
                wait,
                source: DelaySource::RetryAfterMs,
            });
        }
        if let Some(wait) = self
            .retry_after
            .and_then(|v| hints::parse_retry_after(v, wall_now))
        {
            return Some(Hint {
                wait,
                source: DelaySource::RetryAfter,
            });
        }
        if self.status == 429 {
            let requests = self
                .ratelimit_reset_requests
                .and_then(hints::parse_go_duration);
            let tokens = self
                .ratelimit_reset_tokens
                .and_then(hints::parse_go_duration);
            // The earliest window reset: OpenAI sends both on every 429, and the token window's time to a *full*
            // refill (`6m0s`) says little about when the next request may pass.
            let earliest = match (requests, tokens) {
                (Some(r), Some(t)) => Some(r.min(t)),
                (r, t) => r.or(t),
            };
            if let Some(wait) = earliest {
                return Some(Hint {
                    wait,
                    source: DelaySource::RatelimitReset,
                });
            }
        }
        None
    }
}

/// The result of one attempt, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult<'a> {
    /// A response head arrived (for errors, with the peeked error code).
    Response(ResponseHead<'a>),
    /// No usable response.
    Failure(FailureKind),
}

/// The classification of one attempt: its class, `error.type` and the server's hint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Classified {
    pub(crate) class: Class,
    pub(crate) error_type: Option<ErrorType>,
    pub(crate) status: Option<u16>,
    pub(crate) hint: Option<Hint>,
}

/// Classifies an attempt result (retry-semantics.md §1).
pub(crate) fn classify(result: &AttemptResult<'_>, wall_now: SystemTime) -> Classified {
    match *result {
        AttemptResult::Failure(kind) => Classified {
            class: kind.class(),
            error_type: Some(kind.error_type()),
            status: None,
            hint: None,
        },
        AttemptResult::Response(head) => {
            let status = head.status;
            if (200..300).contains(&status) {
                return Classified {
                    class: Class::Success,
                    error_type: None,
                    status: Some(status),
                    hint: None,
                };
            }
            let by_status = match status {
                408 | 409 | 500 | 502 | 503 | 504 => StatusRule::Retry,
                429 if head.error_code == Some("insufficient_quota") => StatusRule::Fatal,
                429 => StatusRule::Retry,
                501 | 505 => StatusRule::Fatal,
                500..=599 => StatusRule::Unnamed,
                _ => StatusRule::Fatal,
            };
            let retryable = match (by_status, should_retry(head.should_retry)) {
                (StatusRule::Fatal, _) | (_, Some(false)) => false,
                (StatusRule::Unnamed, verdict) => verdict == Some(true),
                (StatusRule::Retry, _) => true,
            };
            let hint = if retryable { head.hint(wall_now) } else { None };
            let class = match (retryable, hint) {
                (false, _) => Class::Fatal,
                (true, Some(h)) if h.wait > Duration::ZERO => Class::RateLimited,
                (true, _) => Class::Transient,
            };
            Classified {
                class,
                error_type: Some(ErrorType::Status(status)),
                status: Some(status),
                hint,
            }
        }
    }
}

/// What the status alone says, before `x-should-retry` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusRule {
    /// Transient by the contract's table.
    Retry,
    /// Fatal by the contract's table: no header can make it retryable.
    Fatal,
    /// A 5xx the contract does not name: fatal unless the server says `x-should-retry: true`.
    Unnamed,
}

/// The `x-should-retry` verdict: `Some(true)` / `Some(false)` (case-insensitive, trimmed), `None` otherwise.
fn should_retry(value: Option<&str>) -> Option<bool> {
    let v = value?.trim();
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The machine-readable part of an OpenAI-style error body: `error.code` and `error.type`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPeek {
    /// `error.code`, e.g. `insufficient_quota`, `rate_limit_exceeded`.
    pub code: Option<String>,
    /// `error.type`, e.g. `requests`, `server_error`.
    pub kind: Option<String>,
}

impl ErrorPeek {
    /// The code to classify on: `error.code`, or `error.type` when the body has no code.
    pub fn classify_code(&self) -> Option<&str> {
        self.code.as_deref().or(self.kind.as_deref())
    }
}

/// Largest body the peek will parse; error bodies are small and anything larger is not worth the CPU.
pub const PEEK_LIMIT: usize = 64 * 1024;

/// Reads `error.code` / `error.type` from an error body. Never fails: anything else yields an empty peek.
/// The upstream's error *message* is never read, so it cannot leak into telemetry. Values are kept only if
/// they look like identifiers (short, `[A-Za-z0-9_.-]`), which keeps them low-cardinality and content-free.
pub fn peek_error_body(body: &[u8]) -> ErrorPeek {
    if body.is_empty() || body.len() > PEEK_LIMIT {
        return ErrorPeek::default();
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ErrorPeek::default();
    };
    let error = value.get("error");
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(serde_json::Value::as_str)
            .filter(|s| is_identifier(s))
            .map(str::to_owned)
    };
    ErrorPeek {
        code: field("code"),
        kind: field("type"),
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn class_of(head: ResponseHead<'_>) -> Class {
        classify(&AttemptResult::Response(head), SystemTime::UNIX_EPOCH).class
    }

    #[test]
    fn status_table() {
        assert_eq!(class_of(ResponseHead::status(200)), Class::Success);
        assert_eq!(class_of(ResponseHead::status(204)), Class::Success);
        for s in [408, 409, 500, 502, 503, 504, 429] {
            assert_eq!(
                class_of(ResponseHead::status(s)),
                Class::Transient,
                "status {s}"
            );
        }
        for s in [
            400, 401, 403, 404, 413, 422, 418, 451, 501, 505, 507, 301, 100, 0, 999,
        ] {
            assert_eq!(
                class_of(ResponseHead::status(s)),
                Class::Fatal,
                "status {s}"
            );
        }
    }

    #[test]
    fn insufficient_quota_is_fatal_other_429_transient() {
        let quota = ResponseHead::status(429).with_error_code(Some("insufficient_quota"));
        assert_eq!(class_of(quota), Class::Fatal);
        let rate = ResponseHead::status(429).with_error_code(Some("rate_limit_exceeded"));
        assert_eq!(class_of(rate), Class::Transient);
    }

    fn with_verdict(status: u16, verdict: &'static str) -> ResponseHead<'static> {
        let mut h = ResponseHead::status(status);
        h.should_retry = Some(verdict);
        h
    }

    #[test]
    fn should_retry_never_overrides_a_fatal_class() {
        for s in [
            400, 401, 403, 404, 405, 413, 415, 418, 422, 451, 499, 501, 505,
        ] {
            for v in ["true", "TRUE", " True "] {
                assert_eq!(class_of(with_verdict(s, v)), Class::Fatal, "{s} {v:?}");
            }
        }
        let quota = with_verdict(429, "true").with_error_code(Some("insufficient_quota"));
        assert_eq!(class_of(quota), Class::Fatal, "429 insufficient_quota");
        for s in [100, 204, 301, 304, 0, 600, 999] {
            let want = if s == 204 {
                Class::Success
            } else {
                Class::Fatal
            };
            assert_eq!(class_of(with_verdict(s, "true")), want, "{s}");
        }
    }

    #[test]
    fn should_retry_true_turns_on_an_unnamed_server_error() {
        for s in [506, 507, 508, 510, 511, 520, 529, 599] {
            assert_eq!(class_of(ResponseHead::status(s)), Class::Fatal, "{s}");
            assert_eq!(class_of(with_verdict(s, "true")), Class::Transient, "{s}");
            assert_eq!(class_of(with_verdict(s, "false")), Class::Fatal, "{s}");
            assert_eq!(class_of(with_verdict(s, "maybe")), Class::Fatal, "{s}");
        }
        let mut h = with_verdict(529, "true");
        h.retry_after = Some("2");
        assert_eq!(class_of(h), Class::RateLimited, "its hint is honoured");
    }

    #[test]
    fn should_retry_false_turns_any_retry_off() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert_eq!(class_of(with_verdict(s, "FALSE")), Class::Fatal, "{s}");
            assert_eq!(class_of(with_verdict(s, " false")), Class::Fatal, "{s}");
            assert_eq!(class_of(with_verdict(s, "true")), Class::Transient, "{s}");
            assert_eq!(
                class_of(with_verdict(s, "maybe")),
                Class::Transient,
                "garbage is ignored: {s}"
            );
        }
        assert_eq!(
            class_of(with_verdict(200, "true")),
            Class::Success,
            "success is never retried"
        );
        assert_eq!(class_of(with_verdict(200, "false")), Class::Success);
    }

    #[test]
    fn hint_makes_rate_limited_and_zero_does_not() {
        let mut h = ResponseHead::status(429);
        h.retry_after = Some("2");
        assert_eq!(class_of(h), Class::RateLimited);
        h.retry_after = Some("0");
        assert_eq!(class_of(h), Class::Transient);
        let mut h = ResponseHead::status(503);
        h.retry_after_ms = Some("150");
        assert_eq!(class_of(h), Class::RateLimited);
        let mut h = ResponseHead::status(400);
        h.retry_after = Some("2");
        assert_eq!(
            class_of(h),
            Class::Fatal,
            "a hint does not make a fatal status retryable"
        );
    }

    #[test]
    fn transport_failures() {
        let c = |k| classify(&AttemptResult::Failure(k), SystemTime::UNIX_EPOCH);
        for (k, class, name) in [
            (FailureKind::Connect, Class::Transient, "connect_error"),
            (
                FailureKind::ConnectionReset,
                Class::Transient,
                "connection_reset",
            ),
            (FailureKind::Timeout, Class::Transient, "timeout"),
            (FailureKind::Tls, Class::Fatal, "tls_error"),
            (
                FailureKind::InvalidResponse,
                Class::Fatal,
                "invalid_response",
            ),
            (
                FailureKind::StreamInterrupted,
                Class::Fatal,
                "stream_interrupted",
            ),
            (FailureKind::Validation, Class::Fatal, "validation_error"),
            (FailureKind::Other, Class::Fatal, "_OTHER"),
        ] {
            let got = c(k);
            assert_eq!(got.class, class, "{k:?}");
            assert_eq!(got.error_type.unwrap().as_str(), name);
            assert_eq!(got.status, None);
        }
    }

    #[test]
    fn error_type_is_status_string() {
        let got = classify(
            &AttemptResult::Response(ResponseHead::status(503)),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(got.error_type.unwrap().as_str(), "503");
        let ok = classify(
            &AttemptResult::Response(ResponseHead::status(200)),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(ok.error_type, None);
    }

    #[test]
    fn peek_reads_code_and_type_only() {
        let body = br#"{"error":{"message":"secret prompt text","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let p = peek_error_body(body);
        assert_eq!(p.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(p.kind.as_deref(), Some("insufficient_quota"));
        let p = peek_error_body(br#"{"error":{"message":"x","type":"requests","code":null}}"#);
        assert_eq!(p.classify_code(), Some("requests"));
        for garbage in [
            &b""[..],
            b"not json",
            b"[1,2]",
            b"{\"error\":5}",
            br#"{"error":{"code":"has spaces in it"}}"#,
        ] {
            assert_eq!(peek_error_body(garbage), ErrorPeek::default());
        }
        let huge = vec![b' '; PEEK_LIMIT + 1];
        assert_eq!(peek_error_body(&huge), ErrorPeek::default());
        // exactly at the limit is still read
        let mut at_limit = br#"{"error":{"code":"c"}}"#.to_vec();
        at_limit.resize(PEEK_LIMIT, b' ');
        assert_eq!(peek_error_body(&at_limit).code.as_deref(), Some("c"));
        let mut over = br#"{"error":{"code":"c"}}"#.to_vec();
        over.resize(PEEK_LIMIT + 1, b' ');
        assert_eq!(peek_error_body(&over), ErrorPeek::default());
        // identifiers: up to 64 characters
        let id64 = "a".repeat(64);
        let body = format!(r#"{{"error":{{"code":"{id64}","type":"{id64}b"}}}}"#);
        let p = peek_error_body(body.as_bytes());
        assert_eq!((p.code.as_deref(), p.kind), (Some(id64.as_str()), None));
        let p = peek_error_body(br#"{"error":{"code":"","type":"a.b-c_1"}}"#);
        assert_eq!((p.code, p.kind.as_deref()), (None, Some("a.b-c_1")));
    }

    #[test]
    fn from_headers_reads_the_named_headers() {
        let h = ResponseHead::from_headers(429, |name| match name {
            header::RETRY_AFTER => Some("3"),
            header::RATELIMIT_RESET_TOKENS => Some("6m0s"),
            header::SHOULD_RETRY => Some("true"),
            _ => None,
        });
        assert_eq!(h.retry_after, Some("3"));
        assert_eq!(h.ratelimit_reset_tokens, Some("6m0s"));
        assert_eq!(h.should_retry, Some("true"));
        assert_eq!(h.retry_after_ms, None);
    }

    #[test]
    fn hint_precedence_and_429_only_reset() {
        let mut h = ResponseHead::status(429);
        h.retry_after = Some("3");
        h.retry_after_ms = Some("1500");
        h.ratelimit_reset_requests = Some("20s");
        assert_eq!(
            h.hint(SystemTime::UNIX_EPOCH),
            Some(Hint {
                wait: Duration::from_millis(1500),
                source: DelaySource::RetryAfterMs
            })
        );
        h.retry_after_ms = Some("garbage");
        assert_eq!(
            h.hint(SystemTime::UNIX_EPOCH),
            Some(Hint {
                wait: Duration::from_secs(3),
                source: DelaySource::RetryAfter
            })
        );
        h.retry_after = None;
        h.ratelimit_reset_tokens = Some("6m0s");
        let reset = |secs| {
            Some(Hint {
                wait: Duration::from_secs(secs),
                source: DelaySource::RatelimitReset,
            })
        };
        assert_eq!(
            h.hint(SystemTime::UNIX_EPOCH),
            reset(20),
            "the earlier window reset"
        );
        h.ratelimit_reset_requests = None;
        assert_eq!(h.hint(SystemTime::UNIX_EPOCH), reset(360));
        h.status = 503;
        assert_eq!(
            h.hint(SystemTime::UNIX_EPOCH),
            None,
            "reset headers describe rate-limit windows, read on 429 only"
        );
    }
}
