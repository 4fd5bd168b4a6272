//! The OpenAI wire shapes the fake speaks: a lenient reader for chat-completion requests and the
//! writers for completions, SSE chunks, model lists and error bodies.
//!
//! The reader must tolerate anything (a test may send garbage on purpose) and must not copy the
//! prompt: it only counts characters of message content to size `usage.prompt_tokens`. It never
//! keeps, logs or echoes request content.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Model name used when the request names none.
pub(crate) const DEFAULT_MODEL: &str = "fake-model";

/// The fixed, sanitised reply, already split into the pieces streamed as SSE chunks.
pub(crate) const REPLY_PIECES: [&str; 4] = [
    "This is a ",
    "reply from the ",
    "retrybudget fake ",
    "upstream.",
];
const REPLY_TEXT: &str = "This is a reply from the retrybudget fake upstream.";
const COMPLETION_TOKENS: u64 = 12;

/// `GET /v1/models` answer (constant).
pub(crate) const MODELS_BODY: &[u8] =
    br#"{"object":"list","data":[{"id":"fake-model","object":"model","owned_by":"retrybudget"}]}"#;

/// What the fake needs to know about a chat-completion request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ChatRequest {
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// Characters of message content (text parts only), for `prompt_tokens`.
    pub(crate) content_chars: usize,
}

impl ChatRequest {
    /// Reads what it can; anything unparsable yields the defaults.
    pub(crate) fn parse(body: &[u8]) -> ChatRequest {
        serde_json::from_slice::<Loose<ChatRequest>>(body)
            .map(|l| l.0)
            .unwrap_or_default()
    }

    pub(crate) fn model(&self) -> &str {
        self.model.as_deref().unwrap_or(DEFAULT_MODEL)
    }

    pub(crate) fn usage(&self) -> Usage {
        let prompt_tokens = u64::try_from(self.content_chars / 4)
            .unwrap_or(u64::MAX)
            .max(1);
        Usage {
            prompt_tokens,
            completion_tokens: COMPLETION_TOKENS,
            total_tokens: prompt_tokens.saturating_add(COMPLETION_TOKENS),
        }
    }
}

// === lenient reading ===
//
// serde_json streams, so "try type T, else fall back" cannot rewind. Instead every value we care
// about is read by a visitor that accepts any JSON type and maps the unexpected ones to a default,
// draining them without allocating.

/// A JSON value read leniently: wrong types become the default.
struct Loose<T>(T);

trait Lenient: Default {
    fn from_str(_s: &str) -> Self {
        Self::default()
    }
    fn from_bool(_b: bool) -> Self {
        Self::default()
    }
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
}

struct LooseVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient> Visitor<'de> for LooseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        Ok(T::from_bool(v))
    }
    fn visit_i64<E: de::Error>(self, _v: i64) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_u64<E: de::Error>(self, _v: u64) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::from_str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::from_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_map(map)
    }
}

impl<'de, T: Lenient> Deserialize<'de> for Loose<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor(PhantomData)).map(Loose)
    }
}

/// The object keys we look at, matched without allocating.
#[derive(Default, PartialEq, Eq)]
enum Key {
    Model,
    Stream,
    StreamOptions,
    IncludeUsage,
    Messages,
    Content,
    Text,
    #[default]
    Other,
}

impl Lenient for Key {
    fn from_str(s: &str) -> Self {
        match s {
            "model" => Key::Model,
            "stream" => Key::Stream,
            "stream_options" => Key::StreamOptions,
            "include_usage" => Key::IncludeUsage,
            "messages" => Key::Messages,
            "content" => Key::Content,
            "text" => Key::Text,
            _ => Key::Other,
        }
    }
}

#[derive(Default)]
struct Name(Option<String>);
impl Lenient for Name {
    fn from_str(s: &str) -> Self {
        Name(Some(s.to_owned()))
    }
}

#[derive(Default)]
struct Flag(bool);
impl Lenient for Flag {
    fn from_bool(b: bool) -> Self {
        Flag(b)
    }
}

/// `stream_options.include_usage`.
#[derive(Default)]
struct IncludeUsage(bool);
impl Lenient for IncludeUsage {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut out = false;
        while let Some(Loose(key)) = map.next_key::<Loose<Key>>()? {
            if key == Key::IncludeUsage {
                out = map.next_value::<Loose<Flag>>()?.0.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(IncludeUsage(out))
    }
}

/// Character count of some text, or of the text parts of a content array, or of all messages.
#[derive(Default)]
struct Chars(usize);

impl Lenient for Chars {
    fn from_str(s: &str) -> Self {
        Chars(s.chars().count())
    }
    // An array: either `messages` or the parts of a `content`; both sum their elements.
    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut total = 0usize;
        while let Some(Loose(Chars(n))) = seq.next_element::<Loose<Chars>>()? {
            total = total.saturating_add(n);
        }
        Ok(Chars(total))
    }
    // An object: a message (`content`) or a content part (`text`).
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut total = 0usize;
        while let Some(Loose(key)) = map.next_key::<Loose<Key>>()? {
            if matches!(key, Key::Content | Key::Text) {
                let Loose(Chars(n)) = map.next_value::<Loose<Chars>>()?;
                total = total.saturating_add(n);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Chars(total))
    }
}

impl Lenient for ChatRequest {
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut req = ChatRequest::default();
        while let Some(Loose(key)) = map.next_key::<Loose<Key>>()? {
            match key {
                Key::Model => req.model = map.next_value::<Loose<Name>>()?.0.0,
                Key::Stream => req.stream = map.next_value::<Loose<Flag>>()?.0.0,
                Key::StreamOptions => {
                    req.include_usage = map.next_value::<Loose<IncludeUsage>>()?.0.0;
                }
                Key::Messages => req.content_chars = map.next_value::<Loose<Chars>>()?.0.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(req)
    }
}

// === writing ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) total_tokens: u64,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct CompletionChoice {
    index: u32,
    message: Message,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: &'static str,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct Echo<'a> {
    object: &'static str,
    path: &'a str,
}

/// Serialising these plain structs cannot fail; an empty body is the harmless fallback.
fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_default()
}

/// Identity of one answer, shared by its JSON body or all of its chunks.
pub(crate) struct AnswerMeta<'a> {
    pub(crate) id: &'a str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) usage: Usage,
}

/// A non-streaming `chat.completion`.
pub(crate) fn completion(meta: &AnswerMeta<'_>) -> Bytes {
    to_bytes(&Completion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        choices: [CompletionChoice {
            index: 0,
            message: Message {
                role: "assistant",
                content: REPLY_TEXT,
            },
            finish_reason: "stop",
        }],
        usage: meta.usage,
    })
}

/// All SSE events of a streaming answer (without the final `data: [DONE]`), written into one
/// buffer and returned as cheap slices of it.
pub(crate) fn sse_events(meta: &AnswerMeta<'_>, include_usage: bool) -> Vec<Bytes> {
    let mut buf = Vec::with_capacity(1536);
    let mut ends = Vec::with_capacity(REPLY_PIECES.len() + 2);
    let mut push = |buf: &mut Vec<u8>, choices: &[ChunkChoice], usage: Option<Usage>| {
        buf.extend_from_slice(b"data: ");
        let chunk = Chunk {
            id: meta.id,
            object: "chat.completion.chunk",
            created: meta.created,
            model: meta.model,
            choices,
            usage,
        };
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, &chunk);
        buf.extend_from_slice(b"\n\n");
        ends.push(buf.len());
    };
    for (i, piece) in REPLY_PIECES.iter().enumerate() {
        let choice = ChunkChoice {
            index: 0,
            delta: Delta {
                role: (i == 0).then_some("assistant"),
                content: Some(piece),
            },
            finish_reason: None,
        };
        push(&mut buf, &[choice], None);
    }
    let last = ChunkChoice {
        index: 0,
        delta: Delta {
            role: None,
            content: None,
        },
        finish_reason: Some("stop"),
    };
    push(&mut buf, &[last], None);
    if include_usage {
        push(&mut buf, &[], Some(meta.usage));
    }
    let all = Bytes::from(buf);
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let event = all.slice(start..end);
            start = end;
            event
        })
        .collect()
}

/// The SSE terminator.
pub(crate) const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// An OpenAI-style error body with a fixed, sanitised message.
pub(crate) fn error_body(status: u16, kind: &str, code: Option<&str>) -> Bytes {
    to_bytes(&ErrorEnvelope {
        error: ErrorBody {
            message: error_message(status),
            kind,
            param: None,
            code,
        },
    })
}

/// An error body with a specific message (for the fake's own 400/404 answers, never request data).
pub(crate) fn error_body_with_message(message: &str, kind: &str, code: Option<&str>) -> Bytes {
    to_bytes(&ErrorEnvelope {
        error: ErrorBody {
            message,
            kind,
            param: None,
            code,
        },
    })
}

fn error_message(status: u16) -> &'static str {
    match status {
        429 => "Rate limit reached (retrybudget fake upstream).",
        401 => "Incorrect API key provided (retrybudget fake upstream).",
        500..=599 => {
            "The server had an error while processing your request (retrybudget fake upstream)."
        }
        _ => "Invalid request (retrybudget fake upstream).",
    }
}

/// `{"object":"fake.echo","path":...}` for any other `/v1/*` path.
pub(crate) fn echo(path: &str) -> Bytes {
    to_bytes(&Echo {
        object: "fake.echo",
        path,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_typical_request() {
        let req = ChatRequest::parse(
            br#"{"model":"gpt-x","stream":true,"stream_options":{"include_usage":true},
                "messages":[{"role":"system","content":"12345678"},
                            {"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"x"}}]}],
                "temperature":0.2,"tools":[{"a":[1,2,{"b":null}]}]}"#,
        );
        assert_eq!(
            req,
            ChatRequest {
                model: Some("gpt-x".into()),
                stream: true,
                include_usage: true,
                content_chars: 12,
            }
        );
        assert_eq!(req.usage().prompt_tokens, 3);
    }

    #[test]
    fn tolerates_garbage_and_wrong_types() {
        assert_eq!(ChatRequest::parse(b"not json"), ChatRequest::default());
        assert_eq!(ChatRequest::parse(b""), ChatRequest::default());
        assert_eq!(ChatRequest::parse(b"[1,2]"), ChatRequest::default());
        let req = ChatRequest::parse(
            br#"{"model":7,"stream":"yes","stream_options":[true],"messages":{"content":"x"}}"#,
        );
        assert_eq!(req.model(), DEFAULT_MODEL);
        assert!(!req.stream);
        assert!(!req.include_usage);
        assert_eq!(req.usage().prompt_tokens, 1);
    }

    #[test]
    fn sse_events_are_valid_json() {
        let meta = AnswerMeta {
            id: "chatcmpl-fake-1",
            created: 1,
            model: "m",
            usage: ChatRequest::default().usage(),
        };
        let events = sse_events(&meta, true);
        assert_eq!(events.len(), REPLY_PIECES.len() + 2);
        let mut text = String::new();
        for e in &events {
            let s = std::str::from_utf8(e).unwrap();
            let json = s
                .strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(c);
            }
        }
        assert_eq!(text, REPLY_TEXT);
    }
}
