//! What the proxy takes from a caller's request: the body (bounded), the headers worth forwarding, the
//! route template, and the few facts of a chat request that telemetry records.
//!
//! Validation messages name the field and the JSON type found, never a value: a request's content must not
//! come back in an error, a log line or a span.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::Value;

/// The caller SDK's own retry count (openai-python, openai-node and other Stainless SDKs send it).
pub(crate) const STAINLESS_RETRY_COUNT: &str = "x-stainless-retry-count";
/// W3C trace context header, continued by the SERVER span (and re-injected per attempt by the client).
pub(crate) const TRACEPARENT: &str = "traceparent";

// === route templates (low-cardinality values of `http.route` / `url.template`) ===

const MODELS: &str = "/v1/models";
const MODEL: &str = "/v1/models/{model}";
const EMBEDDINGS: &str = "/v1/embeddings";
const COMPLETIONS: &str = "/v1/completions";
const RESPONSES: &str = "/v1/responses";
const OTHER: &str = "/v1/{other}";

/// The route template of a `/v1/*` path: never the raw path, which may carry ids or user data.
pub(crate) fn route_template(path: &str) -> &'static str {
    match path {
        retrybudget_client::CHAT_COMPLETIONS => retrybudget_client::CHAT_COMPLETIONS,
        MODELS => MODELS,
        EMBEDDINGS => EMBEDDINGS,
        COMPLETIONS => COMPLETIONS,
        RESPONSES => RESPONSES,
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() && !id.contains('/') => MODEL,
            _ => OTHER,
        },
    }
}

/// Whether a `"stream": true` request on this route may be relayed as a live stream. The client recognises
/// a complete stream by its `data: [DONE]` line, which chat and legacy completions send; other streaming APIs
/// (e.g. `/v1/responses`) end differently, so they are forwarded as one buffered answer instead of being cut
/// off with a false `stream_interrupted`.
pub(crate) fn streams_with_done(route: &str) -> bool {
    route == retrybudget_client::CHAT_COMPLETIONS || route == COMPLETIONS
}

// === headers ===

/// Whether a caller's header must not be forwarded: hop-by-hop headers (RFC 9110 §7.6.1) and those the
/// connection to the upstream sets itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            // An expectation applies to the connection it arrived on; ours already answered it.
            | "expect"
    ) || n.starts_with("proxy-")
}

/// The caller's headers to forward upstream: hop-by-hop ones removed, and those named by `Connection` too.
///
/// Also removed, on purpose:
/// - `traceparent`: the caller's trace is continued through span parenthood, and the client injects each
///   attempt's own `traceparent`, so the upstream sees the caller's trace id with our attempt span as parent;
/// - `accept-encoding`: the client must read the upstream's answer (error codes, `[DONE]`, usage) and relays it
///   without `content-encoding`, so a compressed answer would reach the caller undecodable.
pub(crate) fn forward_headers(headers: &HeaderMap) -> HeaderMap {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let drop = is_hop_by_hop(name)
            || name.as_str() == TRACEPARENT
            || name == header::ACCEPT_ENCODING
            || listed.iter().any(|l| l == name.as_str());
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The caller's own retry count: `x-stainless-retry-count`, else another agent's `x-retrybudget-attempt`.
pub(crate) fn client_retry_count(headers: &HeaderMap) -> Option<u32> {
    let parse = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u32>().ok();
    parse(STAINLESS_RETRY_COUNT).or_else(|| parse(retrybudget_client::ATTEMPT_HEADER))
}

// === body ===

/// Why the body could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Longer than `max_body`.
    TooLarge,
    /// The caller's stream failed (usually: it went away).
    Unreadable,
}

/// Reads the whole request body, refusing more than `max` bytes (early, when `content-length` says so).
pub(crate) async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Unreadable),
    }
}

// === chat validation ===

/// The facts of a valid chat request that go into `RawRequest` (and from there into telemetry).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChatFacts {
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) temperature: Option<f64>,
}

/// A request the upstream would reject: what is wrong, which parameter, and the model if one was readable
/// (for the evidence's labels).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invalid {
    pub(crate) message: String,
    pub(crate) param: Option<&'static str>,
    pub(crate) model: Option<String>,
}

/// Checks what can be checked without the upstream: a JSON object, `model` a string, `messages` a non-empty
/// array. Everything else (unknown fields included) is the upstream's business and passes unchanged.
pub(crate) fn validate_chat(body: &[u8]) -> Result<ChatFacts, Invalid> {
    let invalid = |message: String, param, model| {
        Err(Invalid {
            message,
            param,
            model,
        })
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return invalid(
            "the request body is empty; send a JSON object with `model` and `messages`".into(),
            None,
            None,
        );
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // serde_json's messages may quote the input; only the position is safe to show.
        Err(e) => {
            return invalid(
                format!(
                    "the request body is not valid JSON (error at line {} column {})",
                    e.line(),
                    e.column()
                ),
                None,
                None,
            );
        }
    };
    let Value::Object(map) = &value else {
        return invalid(
            format!(
                "the request body must be a JSON object, got {}",
                json_kind(&value)
            ),
            None,
            None,
        );
    };
    let model = match map.get("model") {
        Some(Value::String(m)) => m.clone(),
        None => {
            return invalid(
                "`model` is required and must be a string".into(),
                Some("model"),
                None,
            );
        }
        Some(other) => {
            return invalid(
                format!("`model` must be a string, got {}", json_kind(other)),
                Some("model"),
                None,
            );
        }
    };
    match map.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => {}
        Some(Value::Array(_)) => {
            return invalid(
                "`messages` must be a non-empty array, got an empty array".into(),
                Some("messages"),
                Some(model),
            );
        }
        None => {
            return invalid(
                "`messages` is required and must be a non-empty array".into(),
                Some("messages"),
                Some(model),
            );
        }
        Some(other) => {
            return invalid(
                format!(
                    "`messages` must be a non-empty array, got {}",
                    json_kind(other)
                ),
                Some("messages"),
                Some(model),
            );
        }
    }
    let facts = loose_facts(&value);
    Ok(ChatFacts {
        model,
        stream: facts.stream,
        max_tokens: facts.max_tokens,
        temperature: facts.temperature,
    })
}

/// The same facts read leniently from any JSON body (other `/v1/*` routes are not validated).
pub(crate) struct LooseFacts {
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) temperature: Option<f64>,
}

pub(crate) fn loose_facts(value: &Value) -> LooseFacts {
    LooseFacts {
        model: value
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned),
        stream: value
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_tokens: value
            .get("max_tokens")
            .or_else(|| value.get("max_completion_tokens"))
            .or_else(|| value.get("max_output_tokens"))
            .and_then(Value::as_u64),
        temperature: value.get("temperature").and_then(Value::as_f64),
    }
}

/// The JSON type of a value, for error messages that must not quote it.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::HeaderValue;

    #[test]
    fn templates_are_low_cardinality() {
        assert_eq!(
            route_template("/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(route_template("/v1/models"), "/v1/models");
        assert_eq!(
            route_template("/v1/models/gpt-4o-mini"),
            "/v1/models/{model}"
        );
        assert_eq!(route_template("/v1/models/"), "/v1/{other}");
        assert_eq!(route_template("/v1/models/a/b"), "/v1/{other}");
        assert_eq!(
            route_template("/v1/files/file-abc123/content"),
            "/v1/{other}"
        );
        assert_eq!(route_template("/v1/embeddings"), "/v1/embeddings");
        assert_eq!(route_template("/v1/responses"), "/v1/responses");
        assert_eq!(route_template("/v1/completions"), "/v1/completions");
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-drop-me"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic xyz"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "localhost"),
            ("content-length", "10"),
            ("x-drop-me", "1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("accept-encoding", "gzip"),
            ("authorization", "Bearer sk-test"),
            ("openai-organization", "org"),
            ("x-custom", "kept"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forward_headers(&h);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "openai-organization", "x-custom"]);
    }

    #[test]
    fn retry_count_prefers_stainless() {
        let mut h = HeaderMap::new();
        assert_eq!(client_retry_count(&h), None);
        h.insert(
            retrybudget_client::ATTEMPT_HEADER,
            HeaderValue::from_static("2"),
        );
        assert_eq!(client_retry_count(&h), Some(2));
        h.insert(STAINLESS_RETRY_COUNT, HeaderValue::from_static(" 1 "));
        assert_eq!(client_retry_count(&h), Some(1));
        h.insert(STAINLESS_RETRY_COUNT, HeaderValue::from_static("many"));
        assert_eq!(client_retry_count(&h), Some(2));
    }

    #[test]
    fn validation_names_the_field_never_the_value() {
        let secret = "sk-canary-123";
        let cases: [(String, &str); 9] = [
            (format!("{{\"model\": \"{secret}"), "not valid JSON"),
            (String::new(), "empty"),
            (
                format!("[\"{secret}\"]"),
                "must be a JSON object, got an array",
            ),
            (
                format!("{{\"messages\":[\"{secret}\"]}}"),
                "`model` is required",
            ),
            (
                format!("{{\"model\":7,\"messages\":[\"{secret}\"]}}"),
                "`model` must be a string, got a number",
            ),
            (
                "{\"model\":\"m\"}".to_owned(),
                "`messages` is required and must be a non-empty array",
            ),
            (
                "{\"model\":\"m\",\"messages\":[]}".to_owned(),
                "`messages` must be a non-empty array",
            ),
            (
                format!("{{\"model\":\"m\",\"messages\":\"{secret}\"}}"),
                "`messages` must be a non-empty array, got a string",
            ),
            (
                format!("{{\"model\":\"m\",\"messages\":{{\"a\":\"{secret}\"}}}}"),
                "got an object",
            ),
        ];
        for (body, expected) in cases {
            let err = validate_chat(body.as_bytes()).unwrap_err();
            assert!(
                err.message.contains(expected),
                "{:?} for {expected:?}",
                err.message
            );
            assert!(!err.message.contains(secret));
        }
    }

    #[test]
    fn valid_chat_facts() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":5,"temperature":0.5,"vendor_x":{"a":1}}"#;
        let f = validate_chat(body).unwrap();
        assert_eq!(
            f,
            ChatFacts {
                model: "m".into(),
                stream: true,
                max_tokens: Some(5),
                temperature: Some(0.5)
            }
        );
        let f =
            validate_chat(br#"{"model":"m","messages":[1],"max_completion_tokens":9}"#).unwrap();
        assert!(!f.stream);
        assert_eq!(f.max_tokens, Some(9));
    }
}
