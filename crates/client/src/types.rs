//! Request and response types for `POST /v1/chat/completions`.
//!
//! They name the documented fields and carry every other field through untouched (`#[serde(flatten)]`), so a
//! provider's extensions survive a round trip — the proxy forwards whatever a provider accepts.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: String,
    /// Text content (or structured content, kept as JSON).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub content: Value,
    /// Any other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message with text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: Value::String(content.into()),
            extra: Map::new(),
        }
    }
}

/// A chat-completions request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model id.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Any other field (`stream_options`, `tools`, provider extensions, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// A request for `model` with one user message.
    pub fn user(model: impl Into<String>, content: impl Into<String>) -> Self {
        ChatRequest {
            model: model.into(),
            messages: vec![Message::new("user", content)],
            stream: false,
            max_tokens: None,
            temperature: None,
            extra: Map::new(),
        }
    }
}

/// Token counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Total.
    #[serde(default)]
    pub total_tokens: u64,
    /// Any other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Index.
    #[serde(default)]
    pub index: u32,
    /// The message (non-streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// Why generation stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Any other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A chat-completions response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Response id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Model that answered.
    #[serde(default)]
    pub model: String,
    /// Choices.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Usage, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Any other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatResponse {
    /// The first choice's text, if any: "a usable application-level result".
    pub fn text(&self) -> Option<&str> {
        self.choices.first()?.message.as_ref()?.content.as_str()
    }
}
