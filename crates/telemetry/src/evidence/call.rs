//! [`CallEvent`]: what one finished logical call leaves behind — its span's attributes and end, and the call,
//! token and operation metrics, from one `emit`. The call writes no JSONL line of its own: its last attempt's
//! line carries the outcome.

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use retrybudget_policy::{DecisionKind, ErrorType, Outcome};

use super::CallLabels;
use crate::names::*;
use crate::nested::CallerRetry;
use crate::pipeline::Telemetry;

/// One finished logical call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent<'a> {
    /// The call's labels.
    pub labels: &'a CallLabels,
    /// How the call ended (a failure sets the span status Error).
    pub outcome: Outcome,
    /// The call's terminal decision: why retrying stopped, `done` on success.
    pub decision: DecisionKind,
    /// Attempts made.
    pub attempts: u32,
    /// The allowance.
    pub max_attempts: u32,
    /// Budget balance at the end.
    pub budget_balance: f64,
    /// Total backoff slept.
    pub backoff_total: Duration,
    /// Call duration.
    pub duration: Duration,
    /// `error.type` of the final attempt, on failure.
    pub error_type: Option<ErrorType>,
    /// The caller's own retry count (proxy mode), when it sent one.
    pub client_retry_count: Option<u32>,
    /// Set when the request was its caller's re-send (proxy mode): how it was recognised.
    pub caller_retry: Option<CallerRetry>,
    /// Response facts (ids, model, finish reasons, usage), when a response arrived: moved into the span's
    /// attributes, not copied.
    pub response: Option<ResponseFacts>,
}

/// What the evidence may say about a response: identifiers and counts, never content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseFacts {
    /// `gen_ai.response.id`
    pub id: Option<String>,
    /// `gen_ai.response.model`
    pub model: Option<String>,
    /// `gen_ai.response.finish_reasons`
    pub finish_reasons: Vec<String>,
    /// Prompt tokens.
    pub input_tokens: Option<u64>,
    /// Completion tokens.
    pub output_tokens: Option<u64>,
}

impl CallEvent<'_> {
    /// Writes the call's evidence and ends the logical span (the span held by `cx`).
    pub fn emit(self, telemetry: &Telemetry, cx: &Context) {
        let i = &telemetry.inner.instruments;
        let l = self.labels;
        let span = cx.span();
        let outcome = self.outcome.as_str();
        let failed = self.outcome.is_failure();
        let error_type = self.error_type.map(ErrorType::as_str);
        // Room for every attribute the call can add below: no regrowth.
        let mut attrs = Vec::with_capacity(16);
        attrs.extend([
            KeyValue::new(RB_ATTEMPTS, i64::from(self.attempts)),
            KeyValue::new(RB_MAX_ATTEMPTS, i64::from(self.max_attempts)),
            KeyValue::new(RB_OUTCOME, outcome),
            KeyValue::new(RB_BUDGET_REMAINING, self.budget_balance),
            KeyValue::new(RB_BACKOFF_TOTAL_MS, self.backoff_total.as_millis() as i64),
        ]);
        if let Some(r) = self.decision.stop_reason() {
            attrs.push(KeyValue::new(RB_STOP_REASON, r));
        }
        if let Some(n) = self.client_retry_count {
            attrs.push(KeyValue::new(RB_CLIENT_RETRY_COUNT, i64::from(n)));
        }
        if let Some(r) = self.caller_retry {
            attrs.push(KeyValue::new(RB_CALLER_RETRY_SOURCE, r.source.as_str()));
            attrs.push(KeyValue::new(RB_CALLER_RETRY_ATTEMPT, i64::from(r.attempt)));
        }
        if let Some(e) = &error_type {
            attrs.push(KeyValue::new(ERROR_TYPE, e.clone()));
        }
        let base = [
            KeyValue::new(GEN_AI_OPERATION_NAME, l.operation),
            KeyValue::new(GEN_AI_PROVIDER_NAME, l.provider.clone()),
            KeyValue::new(GEN_AI_REQUEST_MODEL, l.model.clone()),
        ];
        if let Some(r) = self.response {
            if let Some(id) = r.id {
                attrs.push(KeyValue::new(GEN_AI_RESPONSE_ID, id));
            }
            if let Some(m) = r.model {
                attrs.push(KeyValue::new(GEN_AI_RESPONSE_MODEL, m));
            }
            if !r.finish_reasons.is_empty() {
                let reasons: Vec<opentelemetry::StringValue> =
                    r.finish_reasons.into_iter().map(Into::into).collect();
                attrs.push(KeyValue::new(
                    GEN_AI_RESPONSE_FINISH_REASONS,
                    opentelemetry::Value::Array(reasons.into()),
                ));
            }
            for (tokens, kind, attr) in [
                (r.input_tokens, "input", GEN_AI_USAGE_INPUT_TOKENS),
                (r.output_tokens, "output", GEN_AI_USAGE_OUTPUT_TOKENS),
            ] {
                if let Some(n) = tokens {
                    attrs.push(KeyValue::new(attr, n as i64));
                    let [op, provider, model] = base.clone();
                    let a = [op, provider, model, KeyValue::new(GEN_AI_TOKEN_TYPE, kind)];
                    i.token_usage.record(n, &a);
                }
            }
        }
        span.set_attributes(attrs);
        if failed {
            span.set_status(Status::error(outcome));
        }
        let route = KeyValue::new(RB_ROUTE, l.route.clone());
        i.calls.record(
            1,
            &[
                route.clone(),
                KeyValue::new(GEN_AI_PROVIDER_NAME, l.provider.clone()),
                KeyValue::new(GEN_AI_REQUEST_MODEL, l.model.clone()),
                KeyValue::new(RB_OUTCOME, outcome),
            ],
        );
        i.call_attempts.record(
            u64::from(self.attempts),
            &[route.clone(), KeyValue::new(RB_OUTCOME, outcome)],
        );
        let seconds = self.duration.as_secs_f64();
        if failed {
            let [op, provider, model] = base;
            let error = KeyValue::new(ERROR_TYPE, error_type.unwrap_or(Cow::Borrowed(outcome)));
            i.operation_duration
                .record(seconds, &[op, provider, model, error]);
        } else {
            i.operation_duration.record(seconds, &base);
        }
        // One count per caller re-send, by how it was recognised (the route's 0 series exists from the start:
        // `Telemetry::announce_route`).
        if let Some(r) = self.caller_retry {
            i.nested_retries.add(
                1,
                &[
                    route,
                    KeyValue::new(RB_CALLER_RETRY_SOURCE, r.source.as_str()),
                ],
            );
        }
        span.end();
    }
}
