//! Evidence events: what one attempt and one logical call leave behind.
//!
//! Each event is a type whose one `emit` writes the span attributes, the log record, the metric points and the
//! JSONL evidence line together (vector's `internal_events` pattern), so the evidence can never drift from the
//! metrics: the reconciliation tests count each of them per scenario and expect the same number.
//! Events hold only low-cardinality, content-free values: no key, prompt, completion or upstream message can be
//! put into one. Their decisions, outcomes, error types and delay sources are the policy's enums, so a decision
//! renamed or added in the policy does not compile until every event, note and label knows it.
//!
//! - [`AttemptEvent`] (`attempt.rs`): one finished attempt; writes the JSONL line ([`crate::record`]).
//! - [`CallEvent`] (`call.rs`): one finished logical call.
//! - [`operator_note`] (`note.rs`): the fixed text each decision's record carries.

use opentelemetry::{KeyValue, StringValue};

use crate::names::*;

mod attempt;
mod call;
mod note;

pub use attempt::AttemptEvent;
pub use call::{CallEvent, ResponseFacts};
pub use note::operator_note;

// The writer lives in `evidence_file`; its limits stay reachable here.
pub use crate::evidence_file::{EVIDENCE_FLUSH_INTERVAL, EVIDENCE_PENDING_LIMIT};

/// The labels every event of one logical call shares.
///
/// The strings are [`StringValue`]s that share their buffer (`Arc<str>`, or a `&'static str`): one call copies
/// them into a dozen span, metric, log and JSONL attributes, and each copy is then a reference count, not an
/// allocation. Build them from an `Arc<str>` (see [`CallLabels::shared`]); a `String` converted directly would
/// be copied on every clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLabels {
    /// `retrybudget.route`, e.g. `cometapi_chat_completions`.
    pub route: StringValue,
    /// `gen_ai.provider.name`.
    pub provider: StringValue,
    /// `gen_ai.request.model`.
    pub model: StringValue,
    /// Budget scope.
    pub scope: StringValue,
    /// `server.address` of the upstream.
    pub server_address: StringValue,
    /// `server.port` of the upstream.
    pub server_port: u16,
    /// `url.template`, e.g. `/v1/chat/completions`.
    pub url_template: StringValue,
    /// `http.request.method`.
    pub method: StringValue,
    /// `gen_ai.operation.name` (see [`gen_ai_operation`]).
    pub operation: &'static str,
}

impl CallLabels {
    /// A label value whose clones share one buffer.
    pub fn shared(value: impl Into<std::sync::Arc<str>>) -> StringValue {
        StringValue::from(value.into())
    }

    /// The low-cardinality HTTP attributes every attempt shares (span and `http.client.request.duration`), in a
    /// vector with room for `more`: a span's attributes grow in place when the attempt ends, instead of being
    /// copied to a larger buffer.
    pub fn http_attributes(&self, more: usize) -> Vec<KeyValue> {
        let mut attrs = Vec::with_capacity(4 + more);
        attrs.extend([
            KeyValue::new(HTTP_REQUEST_METHOD, self.method.clone()),
            KeyValue::new(SERVER_ADDRESS, self.server_address.clone()),
            KeyValue::new(SERVER_PORT, i64::from(self.server_port)),
            KeyValue::new(URL_TEMPLATE, self.url_template.clone()),
        ]);
        attrs
    }
}
