//! What the proxy takes from a caller's request: the body (bounded), the headers worth forwarding, the
//! route template, and the few facts of a chat request that telemetry records.
//!
//! Validation messages name the field and the JSON type found, never a value: a request's content must not
//! come back in an error, a log line or a span.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

/// The caller SDK's own retry count (openai-python, openai-node and other Stainless SDKs send it).
pub(crate) const STAINLESS_RETRY_COUNT: HeaderName =
    HeaderName::from_static("x-stainless-retry-count");
/// W3C trace context header, continued by the SERVER span (and re-injected per attempt by the client).
pub(crate) use retrybudget_telemetry::TRACEPARENT;

// === route templates (low-cardinality values of `http.route` / `url.template`) ===

use retrybudget_policy::routes::{
    CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, MODEL, MODELS, OTHER, RESPONSES,
};

/// The route template of a `/v1/*` path: never the raw path, which may carry ids or user data.
pub(crate) fn route_template(path: &str) -> &'static str {
    match path {
        CHAT_COMPLETIONS => CHAT_COMPLETIONS,
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
    route == CHAT_COMPLETIONS || route == COMPLETIONS
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
            || name == TRACEPARENT
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
    let parse = |name: HeaderName| headers.get(name)?.to_str().ok()?.trim().parse::<u32>().ok();
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
///
/// The body is read through [`View`]: the few fields we need are borrowed from the bytes, everything else
/// (the messages' content included) is skipped without being built into a tree.
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
    let mut view = match serde_json::from_slice::<Top<'_>>(body) {
        Ok(Top::Object(view)) => view,
        Ok(Top::Other(kind)) => {
            return invalid(
                format!("the request body must be a JSON object, got {kind}"),
                None,
                None,
            );
        }
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
    let model = match view.model.take() {
        Some(Seen::Str(m)) => m.into_owned(),
        None => {
            return invalid(
                "`model` is required and must be a string".into(),
                Some("model"),
                None,
            );
        }
        Some(other) => {
            return invalid(
                format!("`model` must be a string, got {}", other.kind()),
                Some("model"),
                None,
            );
        }
    };
    match &view.messages {
        Some(Seen::Array { empty: false }) => {}
        Some(Seen::Array { empty: true }) => {
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
                format!("`messages` must be a non-empty array, got {}", other.kind()),
                Some("messages"),
                Some(model),
            );
        }
    }
    Ok(ChatFacts {
        model,
        stream: matches!(view.stream, Some(Seen::Bool(true))),
        max_tokens: view.max_tokens(),
        temperature: view.temperature.as_ref().and_then(Seen::as_f64),
    })
}

/// The same facts read leniently from any JSON body (other `/v1/*` routes are not validated).
pub(crate) struct LooseFacts {
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) temperature: Option<f64>,
}

/// Reads [`LooseFacts`] from a body that may be anything (`None` if it is not a JSON object).
pub(crate) fn loose_facts(body: &[u8]) -> Option<LooseFacts> {
    let Ok(Top::Object(view)) = serde_json::from_slice::<Top<'_>>(body) else {
        return None;
    };
    Some(LooseFacts {
        max_tokens: view.max_tokens(),
        temperature: view.temperature.as_ref().and_then(Seen::as_f64),
        stream: matches!(view.stream, Some(Seen::Bool(true))),
        model: match view.model {
            Some(Seen::Str(m)) => Some(m.into_owned()),
            _ => None,
        },
    })
}

// === the borrowed view ===

/// A request body: an object (its few interesting fields) or the kind of whatever else it was.
enum Top<'a> {
    Object(View<'a>),
    Other(&'static str),
}

/// The fields of a request body that validation and telemetry read; a later duplicate key wins, as in most
/// JSON parsers upstream.
#[derive(Default)]
struct View<'a> {
    model: Option<Seen<'a>>,
    messages: Option<Seen<'a>>,
    stream: Option<Seen<'a>>,
    max_tokens: Option<Seen<'a>>,
    max_completion_tokens: Option<Seen<'a>>,
    max_output_tokens: Option<Seen<'a>>,
    temperature: Option<Seen<'a>>,
}

impl View<'_> {
    fn max_tokens(&self) -> Option<u64> {
        [
            &self.max_tokens,
            &self.max_completion_tokens,
            &self.max_output_tokens,
        ]
        .into_iter()
        .find_map(|f| f.as_ref())
        .and_then(Seen::as_u64)
    }
}

/// What one JSON value was, keeping only what we need: a string (borrowed when unescaped), a number, a
/// boolean, or the mere kind of anything else (arrays and objects are skipped, not built).
enum Seen<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(std::borrow::Cow<'a, str>),
    Array { empty: bool },
    Object,
}

impl Seen<'_> {
    /// The JSON type, for error messages that must not quote the value.
    fn kind(&self) -> &'static str {
        match self {
            Seen::Null => "null",
            Seen::Bool(_) => "a boolean",
            Seen::U64(_) | Seen::I64(_) | Seen::F64(_) => "a number",
            Seen::Str(_) => "a string",
            Seen::Array { .. } => "an array",
            Seen::Object => "an object",
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match *self {
            Seen::U64(n) => Some(n),
            Seen::I64(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match *self {
            Seen::U64(n) => Some(n as f64),
            Seen::I64(n) => Some(n as f64),
            Seen::F64(n) => Some(n),
            _ => None,
        }
    }
}

struct SeenVisitor;

impl<'de> serde::de::Visitor<'de> for SeenVisitor {
    type Value = Seen<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Seen<'de>, E> {
        Ok(Seen::Null)
    }
    fn visit_none<E>(self) -> Result<Seen<'de>, E> {
        Ok(Seen::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Seen<'de>, E> {
        Ok(Seen::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Seen<'de>, E> {
        Ok(Seen::U64(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Seen<'de>, E> {
        Ok(Seen::I64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Seen<'de>, E> {
        Ok(Seen::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Seen<'de>, E> {
        Ok(Seen::Str(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Seen<'de>, E> {
        Ok(Seen::Str(std::borrow::Cow::Owned(v.to_owned())))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Seen<'de>, A::Error> {
        let mut empty = true;
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            empty = false;
        }
        Ok(Seen::Array { empty })
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Seen<'de>, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Seen::Object)
    }
}

impl<'de> serde::Deserialize<'de> for Seen<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SeenVisitor)
    }
}

struct TopVisitor;

impl<'de> serde::de::Visitor<'de> for TopVisitor {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut view = View::default();
        while let Some(key) = map.next_key::<Seen<'de>>()? {
            let Seen::Str(key) = key else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            let slot = match key.as_ref() {
                "model" => &mut view.model,
                "messages" => &mut view.messages,
                "stream" => &mut view.stream,
                "max_tokens" => &mut view.max_tokens,
                "max_completion_tokens" => &mut view.max_completion_tokens,
                "max_output_tokens" => &mut view.max_output_tokens,
                "temperature" => &mut view.temperature,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<Seen<'de>>()?);
        }
        Ok(Top::Object(view))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
        SeenVisitor.visit_seq(seq).map(|s| Top::Other(s.kind()))
    }
    fn visit_unit<E>(self) -> Result<Top<'de>, E> {
        Ok(Top::Other("null"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Top<'de>, E> {
        Ok(Top::Other("a boolean"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Top<'de>, E> {
        Ok(Top::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Top<'de>, E> {
        Ok(Top::Other("a string"))
    }
}

impl<'de> serde::Deserialize<'de> for Top<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
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
    fn odd_shapes_are_named_not_quoted() {
        for (body, expected) in [
            ("\"sk-canary\"", "got a string"),
            ("7", "got a number"),
            ("null", "got null"),
            ("true", "got a boolean"),
            (
                "{\"model\":null,\"messages\":[1]}",
                "`model` must be a string, got null",
            ),
            ("{\"model\":\"m\",\"messages\":true}", "got a boolean"),
            (
                "{\"model\":\"m\",\"messages\":[[]]} trailing",
                "not valid JSON",
            ),
        ] {
            let err = validate_chat(body.as_bytes()).unwrap_err();
            assert!(err.message.contains(expected), "{body}: {}", err.message);
            assert!(!err.message.contains("sk-canary"));
        }
        // A later duplicate key wins; escaped strings are read correctly.
        let f = validate_chat(br#"{"model":"a","model":"b\u0041","messages":[{}],"stream":"yes"}"#)
            .unwrap();
        assert_eq!(f.model, "bA");
        assert!(!f.stream, "only a JSON true streams");
        // Deep nesting inside a skipped value neither overflows the stack nor yields a quoting message.
        let deep = format!(
            "{{\"model\":\"m\",\"messages\":[{}1{}]}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        if let Err(e) = validate_chat(deep.as_bytes()) {
            assert!(e.message.contains("not valid JSON"), "{}", e.message);
        }
    }

    #[test]
    fn loose_facts_of_any_body() {
        let f = loose_facts(br#"{"model":"text-embedding-3-small","input":["x"],"max_output_tokens":7,"temperature":1}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("text-embedding-3-small"));
        assert_eq!(f.max_tokens, Some(7));
        assert_eq!(f.temperature, Some(1.0));
        assert!(loose_facts(b"not json").is_none());
        assert!(loose_facts(b"[1]").is_none());
        assert!(loose_facts(b"").is_none());
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
