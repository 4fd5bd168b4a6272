//! A caller's own retry (nested retries, proxy mode): how it was recognised and which send it is.
//!
//! Typed here, next to the events that record it, so the metric label, the span attribute and the evidence
//! field are written from one enum and a renamed source cannot drift between them. Only the *source* and a
//! small count are recorded: never the fingerprint, the idempotency key or anything else the caller sent.

use crate::names::{
    CALLER_RETRY_SOURCE_FINGERPRINT, CALLER_RETRY_SOURCE_HEADER,
    CALLER_RETRY_SOURCE_IDEMPOTENCY_KEY,
};

/// How a request was recognised as its caller's re-send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallerRetrySource {
    /// The caller said so: `x-stainless-retry-count > 0` (OpenAI SDKs) or `x-retrybudget-attempt > 0`
    /// (another retrybudget agent).
    Header,
    /// The same caller sent the same request again while its twin was in flight or shortly after it failed.
    Fingerprint,
    /// An `Idempotency-Key` this caller already sent.
    IdempotencyKey,
}

impl CallerRetrySource {
    /// Every source, for tests and exhaustive checks.
    pub const ALL: [CallerRetrySource; 3] = [
        CallerRetrySource::Header,
        CallerRetrySource::Fingerprint,
        CallerRetrySource::IdempotencyKey,
    ];

    /// The stable name: metric label value, span attribute value and evidence field value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallerRetrySource::Header => CALLER_RETRY_SOURCE_HEADER,
            CallerRetrySource::Fingerprint => CALLER_RETRY_SOURCE_FINGERPRINT,
            CallerRetrySource::IdempotencyKey => CALLER_RETRY_SOURCE_IDEMPOTENCY_KEY,
        }
    }
}

impl std::fmt::Display for CallerRetrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that is its caller's re-send of an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerRetry {
    /// How it was recognised.
    pub source: CallerRetrySource,
    /// Which re-send this is, as far as the proxy knows: 1 for the first re-send (the header's count when the
    /// caller sent one, else how many earlier sends of it the proxy saw).
    pub attempt: u32,
    /// Upstream attempts the proxy already made for the earlier sends (0 when unknown); with
    /// `--caller-retries budget` the call's attempt allowance counts them.
    pub prior_attempts: u32,
}
