//! What one request gets back: the scripted [`Step`], its optional [`Fault`], and the background
//! [`LoadMode`] that applies when the script is empty.
//!
//! These types are plain data so the same shapes work from Rust, from shell scripts (`curl` + JSON)
//! and from Python. They derive serde with `deny_unknown_fields` so a typo in a control request is
//! rejected with a 400 instead of being silently ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

/// How one `/v1/*` request is answered.
///
/// Every field is optional in JSON; the default is a plain `200` success. Build one in Rust with
/// [`Step::ok`] or [`Step::status`] and the builder methods:
///
/// ```
/// use std::time::Duration;
/// use retrybudget_fake_upstream::{Fault, Step};
///
/// let throttled = Step::status(429).header("retry-after", "1");
/// let quota = Step::status(429).error_code("insufficient_quota");
/// let slow_then_dropped = Step::ok().delay(Duration::from_millis(50)).fault(Fault::CloseBeforeHead);
/// # let _ = (throttled, quota, slow_then_dropped);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// `remote = "Self"` turns the derives into inherent functions wrapped by the trait impls below, so
// that a step must be a JSON object (serde would otherwise also accept `[]` as all-defaults).
#[serde(remote = "Self", deny_unknown_fields, default)]
pub struct Step {
    /// HTTP status of the answer (default 200). A non-2xx status gets an OpenAI-style error body.
    pub status: u16,
    /// `error.type` in the error body; defaults depend on the status (see [`Step::effective_error`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// `error.code` in the error body; defaults depend on the status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Extra response headers, e.g. `retry-after`, `retry-after-ms`, `x-ratelimit-reset-requests`,
    /// `x-should-retry`. Names are case-insensitive.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Wait this long before sending the response head (or before closing, for
    /// [`Fault::CloseBeforeHead`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
    /// Wait this long between server-sent-event chunks of a streaming answer (and before the abort
    /// of [`Fault::ResetMidBody`] on a JSON answer).
    #[serde(skip_serializing_if = "is_zero")]
    pub chunk_delay_ms: u64,
    /// A transport or framing fault to inject instead of a well-formed answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A fault injected into an answer.
///
/// In JSON, unit faults are strings (`"close_before_head"`) and counted faults are one-key objects
/// (`{"cut_stream_after": 2}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Drop the connection without writing any response bytes.
    CloseBeforeHead,
    /// Send the head and part of the body, then abort the connection (JSON and SSE alike).
    ResetMidBody,
    /// Streaming: send this many SSE events, then end the body cleanly without `data: [DONE]`.
    /// Non-streaming: end the JSON body cleanly after half of it (a truncated document).
    CutStreamAfter(u32),
    /// Streaming: send this many SSE events, then abort the connection.
    /// Non-streaming: behaves like [`Fault::ResetMidBody`].
    AbortStreamAfter(u32),
    /// Answer with the step's status, `content-type: application/json`, and a truncated JSON body.
    MalformedJson,
}

/// Background behaviour applied when the script queue is empty, before the default step.
///
/// JSON: `{"mode":"none"}`, `{"mode":"fail_percent","percent":5,"status":503,"seed":1}`,
/// `{"mode":"outage","from_ms":0,"until_ms":5000,"status":503}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "LoadModeRepr", into = "LoadModeRepr")]
pub enum LoadMode {
    /// No background failures.
    #[default]
    None,
    /// Fail a deterministic pseudo-random share of requests.
    FailPercent {
        /// Share of requests that fail, 0 to 100.
        percent: f64,
        /// Status of the failures (default 503 in JSON).
        status: u16,
        /// Seed of the pseudo-random sequence: the same seed and request order give the same
        /// failures (default 0 in JSON).
        seed: u64,
    },
    /// Fail every request that arrives in `[from_ms, until_ms)` after the mode was set.
    Outage {
        /// Start of the outage, in milliseconds after the mode was set (default 0 in JSON).
        from_ms: u64,
        /// End of the outage (exclusive), in milliseconds after the mode was set.
        until_ms: u64,
        /// Status of the failures (default 503 in JSON).
        status: u16,
    },
}

/// The JSON shape of [`LoadMode`]. `none` is written as a struct variant here so that
/// `deny_unknown_fields` also rejects `{"mode":"none","percent":5}` (serde does not check unit
/// variants), while the public enum keeps a plain `LoadMode::None`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum LoadModeRepr {
    None {},
    FailPercent {
        percent: f64,
        #[serde(default = "default_failure_status")]
        status: u16,
        #[serde(default)]
        seed: u64,
    },
    Outage {
        #[serde(default)]
        from_ms: u64,
        until_ms: u64,
        #[serde(default = "default_failure_status")]
        status: u16,
    },
}

impl From<LoadModeRepr> for LoadMode {
    fn from(repr: LoadModeRepr) -> Self {
        match repr {
            LoadModeRepr::None {} => LoadMode::None,
            LoadModeRepr::FailPercent {
                percent,
                status,
                seed,
            } => LoadMode::FailPercent {
                percent,
                status,
                seed,
            },
            LoadModeRepr::Outage {
                from_ms,
                until_ms,
                status,
            } => LoadMode::Outage {
                from_ms,
                until_ms,
                status,
            },
        }
    }
}

impl From<LoadMode> for LoadModeRepr {
    fn from(mode: LoadMode) -> Self {
        match mode {
            LoadMode::None => LoadModeRepr::None {},
            LoadMode::FailPercent {
                percent,
                status,
                seed,
            } => LoadModeRepr::FailPercent {
                percent,
                status,
                seed,
            },
            LoadMode::Outage {
                from_ms,
                until_ms,
                status,
            } => LoadModeRepr::Outage {
                from_ms,
                until_ms,
                status,
            },
        }
    }
}

fn default_failure_status() -> u16 {
    503
}

/// Why a [`Step`] or [`LoadMode`] was rejected by the control API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    /// The status is not a final HTTP status.
    #[error("status {0} is not usable: use a final HTTP status between 200 and 599")]
    Status(u16),
    /// A header name is not a valid HTTP header name.
    #[error("header name {0:?} is not a valid HTTP header name")]
    HeaderName(String),
    /// A header value contains bytes HTTP does not allow (e.g. control characters).
    #[error("value of header {0:?} is not a valid HTTP header value (no control characters)")]
    HeaderValue(String),
    /// The header controls message framing and would corrupt the answer.
    #[error("header {0:?} controls message framing and cannot be scripted")]
    FramingHeader(String),
    /// `fail_percent` outside 0..=100.
    #[error("fail_percent percent {0} must be a number between 0 and 100")]
    Percent(f64),
    /// An outage window that ends before it starts.
    #[error("outage until_ms ({until_ms}) must not be before from_ms ({from_ms})")]
    OutageWindow {
        /// Start of the window.
        from_ms: u64,
        /// End of the window.
        until_ms: u64,
    },
}

// === impl Step ===

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Step::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = Step;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a step object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Step, A::Error> {
                Step::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(ObjectOnly)
    }
}

impl Default for Step {
    fn default() -> Self {
        Step {
            status: 200,
            error_type: None,
            error_code: None,
            headers: BTreeMap::new(),
            delay_ms: 0,
            chunk_delay_ms: 0,
            fault: None,
        }
    }
}

impl Step {
    /// A plain `200` success.
    pub fn ok() -> Self {
        Step::default()
    }

    /// An answer with this status (non-2xx statuses get an OpenAI-style error body).
    pub fn status(status: u16) -> Self {
        Step {
            status,
            ..Step::default()
        }
    }

    /// A `429` with `retry-after: <secs>`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Step::status(429).header("retry-after", retry_after_secs.to_string())
    }

    /// A success whose answer is replaced by `fault`.
    pub fn with_fault(fault: Fault) -> Self {
        Step::ok().fault(fault)
    }

    /// Adds a response header (the name is lowercased).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.into().to_ascii_lowercase(), value.into());
        self
    }

    /// Sets `error.type` of the error body.
    pub fn error_type(mut self, error_type: impl Into<String>) -> Self {
        self.error_type = Some(error_type.into());
        self
    }

    /// Sets `error.code` of the error body.
    pub fn error_code(mut self, error_code: impl Into<String>) -> Self {
        self.error_code = Some(error_code.into());
        self
    }

    /// Waits this long before sending the head.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay_ms = duration_ms(delay);
        self
    }

    /// Waits this long between SSE chunks.
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay_ms = duration_ms(delay);
        self
    }

    /// Injects `fault`.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Whether the status is 2xx (a success body rather than an error body).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `(type, code)` of the error body this step produces, defaults filled in:
    /// 429 → `requests` / `rate_limit_exceeded` (`insufficient_quota` / `insufficient_quota` when that
    /// code is scripted), 5xx → `server_error` / none, 401 → `invalid_request_error` /
    /// `invalid_api_key`, other statuses → `invalid_request_error` / none.
    pub fn effective_error(&self) -> (&str, Option<&str>) {
        let code = self
            .error_code
            .as_deref()
            .or_else(|| default_error_code(self.status));
        let error_type = match (&self.error_type, code) {
            (Some(t), _) => t.as_str(),
            (None, Some("insufficient_quota")) => "insufficient_quota",
            (None, _) => default_error_type(self.status),
        };
        (error_type, code)
    }

    /// Checks what the server could not honour: the status and the headers.
    pub fn validate(&self) -> Result<(), StepError> {
        if !(200..=599).contains(&self.status) {
            return Err(StepError::Status(self.status));
        }
        for (name, value) in &self.headers {
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| StepError::HeaderName(name.clone()))?;
            if is_framing_header(&parsed) {
                return Err(StepError::FramingHeader(name.clone()));
            }
            HeaderValue::from_str(value).map_err(|_| StepError::HeaderValue(name.clone()))?;
        }
        Ok(())
    }

    /// The status to send: out-of-range statuses (only reachable through the Rust API, which does
    /// not validate) become 500 rather than a panic.
    pub(crate) fn status_code(&self) -> StatusCode {
        if (200..=599).contains(&self.status) {
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

pub(crate) fn is_framing_header(name: &HeaderName) -> bool {
    name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING
}

fn default_error_type(status: u16) -> &'static str {
    match status {
        429 => "requests",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

fn default_error_code(status: u16) -> Option<&'static str> {
    match status {
        429 => Some("rate_limit_exceeded"),
        401 => Some("invalid_api_key"),
        _ => None,
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === impl LoadMode ===

impl LoadMode {
    /// Fails `percent` % of requests with `status`, deterministically for `seed`.
    pub fn fail_percent(percent: f64, status: u16, seed: u64) -> Self {
        LoadMode::FailPercent {
            percent,
            status,
            seed,
        }
    }

    /// Fails every request arriving in `[from, until)` after the mode is set.
    pub fn outage(from: Duration, until: Duration, status: u16) -> Self {
        LoadMode::Outage {
            from_ms: duration_ms(from),
            until_ms: duration_ms(until),
            status,
        }
    }

    /// Checks the ranges the control API accepts.
    pub fn validate(&self) -> Result<(), StepError> {
        match *self {
            LoadMode::None => Ok(()),
            LoadMode::FailPercent {
                percent, status, ..
            } => {
                if !(0.0..=100.0).contains(&percent) {
                    return Err(StepError::Percent(percent));
                }
                Step::status(status).validate()
            }
            LoadMode::Outage {
                from_ms,
                until_ms,
                status,
            } => {
                if until_ms < from_ms {
                    return Err(StepError::OutageWindow { from_ms, until_ms });
                }
                Step::status(status).validate()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn step_json_defaults_and_round_trip() {
        let step: Step = serde_json::from_str("{}").unwrap();
        assert_eq!(step, Step::ok());
        let step: Step = serde_json::from_str(
            r#"{"status":429,"headers":{"Retry-After":"2"},"fault":{"cut_stream_after":3}}"#,
        )
        .unwrap();
        assert_eq!(step.status, 429);
        assert_eq!(step.fault, Some(Fault::CutStreamAfter(3)));
        let back: Step = serde_json::from_str(&serde_json::to_string(&step).unwrap()).unwrap();
        assert_eq!(back, step);
        let step: Step = serde_json::from_str(r#"{"fault":"close_before_head"}"#).unwrap();
        assert_eq!(step.fault, Some(Fault::CloseBeforeHead));
    }

    #[test]
    fn step_rejects_unknown_fields_and_non_objects() {
        assert!(serde_json::from_str::<Step>(r#"{"stauts":500}"#).is_err());
        assert!(serde_json::from_str::<Step>("[]").is_err());
        assert!(serde_json::from_str::<Vec<Step>>("[[]]").is_err());
    }

    #[test]
    fn load_mode_json() {
        let m: LoadMode =
            serde_json::from_str(r#"{"mode":"fail_percent","percent":5,"status":503,"seed":1}"#)
                .unwrap();
        assert_eq!(m, LoadMode::fail_percent(5.0, 503, 1));
        let m: LoadMode = serde_json::from_str(r#"{"mode":"outage","until_ms":100}"#).unwrap();
        assert_eq!(
            m,
            LoadMode::outage(Duration::ZERO, Duration::from_millis(100), 503)
        );
        assert!(serde_json::from_str::<LoadMode>(r#"{"mode":"none","x":1}"#).is_err());
        assert!(serde_json::from_str::<LoadMode>(r#"{"mode":"flaky"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<LoadMode>(r#"{"mode":"none"}"#).unwrap(),
            LoadMode::None
        );
        assert_eq!(
            serde_json::to_string(&LoadMode::None).unwrap(),
            r#"{"mode":"none"}"#
        );
        let m = LoadMode::fail_percent(2.5, 429, 9);
        let back: LoadMode = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(LoadMode::fail_percent(101.0, 503, 0).validate().is_err());
        assert!(LoadMode::fail_percent(f64::NAN, 503, 0).validate().is_err());
    }

    #[test]
    fn error_defaults() {
        assert_eq!(
            Step::status(429).effective_error(),
            ("requests", Some("rate_limit_exceeded"))
        );
        assert_eq!(
            Step::status(429)
                .error_code("insufficient_quota")
                .effective_error(),
            ("insufficient_quota", Some("insufficient_quota"))
        );
        assert_eq!(Step::status(503).effective_error(), ("server_error", None));
        assert_eq!(
            Step::status(400).effective_error(),
            ("invalid_request_error", None)
        );
    }

    #[test]
    fn validation() {
        assert!(Step::status(99).validate().is_err());
        assert!(Step::status(600).validate().is_err());
        assert!(Step::ok().header("bad name", "x").validate().is_err());
        assert!(Step::ok().header("x-a", "a\nb").validate().is_err());
        assert!(Step::ok().header("content-length", "1").validate().is_err());
        assert!(Step::ok().header("Retry-After", "1").validate().is_ok());
        assert_eq!(
            Step::status(42).status_code(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
