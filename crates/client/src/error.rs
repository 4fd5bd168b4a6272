//! Errors that tell the caller the outcome, the attempts made, the last status, and what to do next.

use retrybudget_policy::{ErrorType, Outcome};

/// A logical call ended without a response to hand back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("chat call {outcome} after {attempts} attempt(s){}{}: {}",
    last_status.map(|s| format!(", last status {s}")).unwrap_or_default(),
    error_type.map(|e| format!(", error.type {e}")).unwrap_or_default(),
    advice(*outcome, *error_type))]
pub struct CallError {
    /// Terminal outcome.
    pub outcome: Outcome,
    /// Attempts made.
    pub attempts: u32,
    /// Status of the last response, if any arrived.
    pub last_status: Option<u16>,
    /// `error.type` of the last attempt (the policy's; a renamed or added type changes what callers match).
    pub error_type: Option<ErrorType>,
    /// When no attempt was made because the shared budget could not pay for a caller's re-send: seconds until
    /// it can pay again (the budget's refill time, at least 1), for a `retry-after`.
    pub retry_after_secs: Option<u64>,
}

fn advice(outcome: Outcome, error_type: Option<ErrorType>) -> &'static str {
    match (outcome, error_type) {
        (_, Some(ErrorType::ConnectError)) => {
            "the upstream is unreachable; check the base URL and that it is running"
        }
        (_, Some(ErrorType::TlsError)) => {
            "TLS failed; check the upstream's certificate and the URL's scheme"
        }
        (_, Some(ErrorType::Timeout)) => {
            "the upstream did not answer in time; raise the per-attempt timeout or check its health"
        }
        (Outcome::BudgetExhausted, _) => {
            "the shared retry budget is spent: the upstream is failing broadly; wait for it to recover"
        }
        (Outcome::DeadlineExceeded, _) => {
            "the call deadline (or a server wait hint) ran out; retry later or raise the deadline"
        }
        (Outcome::StreamInterrupted, _) => {
            "the stream broke after output reached you; re-issue the request if partial output is unusable"
        }
        (Outcome::Cancelled, _) => "the caller went away",
        _ => "see the evidence record for this call",
    }
}

/// Errors of the typed chat API.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// No response could be obtained.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The final response was an HTTP error.
    #[error("chat call {outcome} after {attempts} attempt(s): upstream answered {status}{}",
        code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        /// HTTP status.
        status: u16,
        /// `error.code` / `error.type` from the body.
        code: Option<String>,
        /// Attempts made.
        attempts: u32,
        /// Terminal outcome.
        outcome: Outcome,
    },
    /// The response was not a chat completion.
    #[error("the upstream's response is not a valid chat completion: {0}")]
    Decode(String),
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not a usable http(s) URL.
    #[error(
        "invalid upstream base URL {url:?}: {reason}; write it as http(s)://HOST[:PORT][/PREFIX]"
    )]
    BaseUrl {
        /// The rejected URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A retry setting is out of range.
    #[error(transparent)]
    Policy(#[from] retrybudget_policy::ConfigError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}
