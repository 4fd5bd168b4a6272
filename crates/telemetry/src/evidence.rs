//! Evidence events: what one attempt and one logical call leave behind.
//!
//! Each event is a type whose one `emit` writes the span attributes, the log record, the metric points and the
//! JSONL evidence line together (vector's `internal_events` pattern), so the evidence can never drift from the
//! metrics: the reconciliation tests count each of them per scenario and expect the same number.
//! Events hold only low-cardinality, content-free values: no key, prompt, completion or upstream message can be
//! put into one.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue, StringValue};
use retrybudget_policy::{DecisionKind, DelaySource, ErrorType, Outcome};

use crate::export::EVIDENCE;
use crate::names::*;
use crate::nested::CallerRetry;
use crate::pipeline::Telemetry;
use crate::record::EvidenceRecord;

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

    /// The low-cardinality HTTP attributes every attempt shares (span and `http.client.request.duration`).
    pub fn http_attributes(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new(HTTP_REQUEST_METHOD, self.method.clone()),
            KeyValue::new(SERVER_ADDRESS, self.server_address.clone()),
            KeyValue::new(SERVER_PORT, i64::from(self.server_port)),
            KeyValue::new(URL_TEMPLATE, self.url_template.clone()),
        ]
    }
}

/// One finished attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEvent<'a> {
    /// The call's labels.
    pub labels: &'a CallLabels,
    /// 0-based attempt index.
    pub attempt: u32,
    /// HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// `error.type`, absent on success.
    pub error_type: Option<ErrorType>,
    /// What the policy decided after this attempt.
    pub decision: DecisionKind,
    /// Retries the call may still make under its allowance.
    pub allowance_remaining: u32,
    /// The scope's shared budget balance after the decision.
    pub budget_balance: f64,
    /// Delay slept before this attempt, and where it came from.
    pub backoff_before: Option<(Duration, DelaySource)>,
    /// The server's wait hint on this attempt's response.
    pub retry_after: Option<Duration>,
    /// How long the attempt took.
    pub duration: Duration,
    /// Time since the call started.
    pub elapsed: Duration,
    /// The call's outcome, on its last attempt (the record's `terminal_outcome` and `client_result`).
    pub terminal: Option<Outcome>,
    /// `network.protocol.version`, when known.
    pub protocol_version: Option<&'static str>,
    /// Set when the call is its caller's re-send (proxy mode): written to the evidence record.
    pub caller_retry: Option<CallerRetry>,
}

impl AttemptEvent<'_> {
    /// Writes the attempt's evidence and ends its span (the span held by `cx`).
    pub fn emit(&self, telemetry: &Telemetry, cx: &Context) {
        let inner = &telemetry.inner;
        let l = self.labels;
        let span = cx.span();
        let ctx = span.span_context().clone();
        let decision = self.decision.as_str();
        let error_type = self.error_type.map(ErrorType::as_str);

        // --- span attributes
        let mut attrs = vec![
            KeyValue::new(RB_ATTEMPT, i64::from(self.attempt)),
            KeyValue::new(RB_DECISION, decision),
            KeyValue::new(
                RB_BACKOFF_MS,
                self.backoff_before.map_or(0, |(d, _)| d.as_millis() as i64),
            ),
        ];
        if self.attempt > 0 {
            attrs.push(KeyValue::new(
                HTTP_REQUEST_RESEND_COUNT,
                i64::from(self.attempt),
            ));
        }
        if let Some(s) = self.status {
            attrs.push(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(s)));
        }
        if let Some(e) = &error_type {
            attrs.push(KeyValue::new(ERROR_TYPE, e.clone()));
        }
        if let Some((_, source)) = self.backoff_before {
            attrs.push(KeyValue::new(RB_DELAY_SOURCE, source.as_str()));
        }
        if let Some(h) = self.retry_after {
            attrs.push(KeyValue::new(RB_RETRY_AFTER_MS, h.as_millis() as i64));
        }
        if let Some(v) = self.protocol_version {
            attrs.push(KeyValue::new(NETWORK_PROTOCOL_VERSION, v));
        }
        span.set_attributes(attrs);
        if let Some(e) = &error_type {
            span.set_status(Status::error(e.clone()));
        }

        // --- metrics
        let i = &inner.instruments;
        let mut attempt_attrs = vec![
            KeyValue::new(RB_ROUTE, l.route.clone()),
            KeyValue::new(GEN_AI_PROVIDER_NAME, l.provider.clone()),
            KeyValue::new(GEN_AI_REQUEST_MODEL, l.model.clone()),
            KeyValue::new(RB_DECISION, decision),
        ];
        let mut http_attrs = l.http_attributes();
        if let Some(e) = &error_type {
            attempt_attrs.push(KeyValue::new(ERROR_TYPE, e.clone()));
            http_attrs.push(KeyValue::new(ERROR_TYPE, e.clone()));
        }
        if let Some(s) = self.status {
            http_attrs.push(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(s)));
        }
        i.attempts.add(1, &attempt_attrs);
        // A request refused by local validation never left: it has evidence, but no HTTP duration. Neither did
        // a caller's re-send the budget refused to pay for: stopped for the budget without any response or
        // transport error (every other budget stop follows a failed attempt).
        let refused_resend = self.decision == DecisionKind::StopBudgetExhausted
            && self.status.is_none()
            && self.error_type.is_none();
        if self.error_type != Some(ErrorType::ValidationError) && !refused_resend {
            i.http_duration
                .record(self.duration.as_secs_f64(), &http_attrs);
        }
        if let Some((d, source)) = self.backoff_before {
            i.backoff.record(
                d.as_secs_f64(),
                &[
                    KeyValue::new(RB_ROUTE, l.route.clone()),
                    KeyValue::new(RB_DELAY_SOURCE, source.as_str()),
                ],
            );
        }
        if self.decision == DecisionKind::StopBudgetExhausted {
            i.budget_denied
                .add(1, &[KeyValue::new(RB_SCOPE, l.scope.clone())]);
        }

        // --- the evidence record: OTel log record and JSONL line
        let elapsed_bucket = elapsed_bucket(self.elapsed);
        let note = operator_note(self.decision);
        let failed = self.terminal.is_some_and(Outcome::is_failure);
        if let Some(logger) = &inner.logger {
            let mut rec = logger.create_log_record();
            rec.set_event_name(EVENT_ATTEMPT);
            rec.set_timestamp(SystemTime::now());
            rec.set_severity_number(if failed {
                Severity::Warn
            } else {
                Severity::Info
            });
            rec.set_severity_text(if failed { "WARN" } else { "INFO" });
            rec.set_body(AnyValue::from(note));
            rec.set_trace_context(ctx.trace_id(), ctx.span_id(), Some(ctx.trace_flags()));
            rec.add_attribute(RB_ROUTE, l.route.clone());
            rec.add_attribute(HTTP_REQUEST_METHOD, l.method.clone());
            rec.add_attribute(URL_TEMPLATE, l.url_template.clone());
            if let Some(s) = self.status {
                rec.add_attribute(HTTP_RESPONSE_STATUS_CODE, i64::from(s));
            }
            if let Some(e) = &error_type {
                rec.add_attribute(ERROR_TYPE, e.to_string());
            }
            rec.add_attribute(RB_ATTEMPT, i64::from(self.attempt));
            rec.add_attribute(RB_ALLOWANCE_REMAINING, i64::from(self.allowance_remaining));
            rec.add_attribute(RB_BUDGET_REMAINING, self.budget_balance);
            rec.add_attribute(
                RB_BACKOFF_MS,
                self.backoff_before.map_or(0, |(d, _)| d.as_millis() as i64),
            );
            rec.add_attribute(RB_ELAPSED_BUCKET, elapsed_bucket);
            rec.add_attribute(RB_DECISION, decision);
            if let Some(outcome) = self.terminal {
                rec.add_attribute(RB_CLIENT_RESULT, outcome.client_result());
                rec.add_attribute(RB_OUTCOME, outcome.as_str());
            }
            logger.emit(rec);
        }
        if let Some(writer) = &inner.evidence {
            let record = EvidenceRecord {
                timestamp: rfc3339(SystemTime::now()).into(),
                environment: inner.environment.as_str().into(),
                provider_route: l.route.as_str().into(),
                model: l.model.as_str().into(),
                http_method: Cow::Borrowed(l.method.as_str()),
                http_route: Cow::Borrowed(l.url_template.as_str()),
                http_status_code: self.status,
                error_type: error_type.as_deref().map(Cow::Borrowed),
                retry_attempt: self.attempt,
                retry_budget_remaining: self.allowance_remaining,
                shared_budget_balance: (self.budget_balance * 1000.0).round() / 1000.0,
                backoff_applied_ms: self.backoff_before.map_or(0, |(d, _)| d.as_millis() as u64),
                delay_source: self
                    .backoff_before
                    .map(|(_, source)| source.as_str().into()),
                elapsed_bucket: elapsed_bucket.into(),
                decision: decision.into(),
                client_result: self.terminal.map(|o| o.client_result().into()),
                terminal_outcome: self.terminal.map(|o| o.as_str().into()),
                caller_retry: self.caller_retry.map(|r| r.source.as_str().into()),
                caller_attempt: self.caller_retry.map(|r| r.attempt),
                operator_note: note.into(),
                trace_id: ctx.trace_id().to_string().into(),
                span_id: ctx.span_id().to_string().into(),
            };
            match serde_json::to_vec(&record) {
                Ok(line) => writer.write(&line),
                Err(_) => inner.dropped.add(EVIDENCE, 1),
            }
        }
        span.end();
    }
}

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
    /// Response facts (ids, model, finish reasons, usage), when a response arrived.
    pub response: Option<&'a ResponseFacts>,
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
    pub fn emit(&self, telemetry: &Telemetry, cx: &Context) {
        let i = &telemetry.inner.instruments;
        let l = self.labels;
        let span = cx.span();
        let outcome = self.outcome.as_str();
        let failed = self.outcome.is_failure();
        let error_type = self.error_type.map(ErrorType::as_str);
        let mut attrs = vec![
            KeyValue::new(RB_ATTEMPTS, i64::from(self.attempts)),
            KeyValue::new(RB_MAX_ATTEMPTS, i64::from(self.max_attempts)),
            KeyValue::new(RB_OUTCOME, outcome),
            KeyValue::new(RB_BUDGET_REMAINING, self.budget_balance),
            KeyValue::new(RB_BACKOFF_TOTAL_MS, self.backoff_total.as_millis() as i64),
        ];
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
            if let Some(id) = &r.id {
                attrs.push(KeyValue::new(GEN_AI_RESPONSE_ID, id.clone()));
            }
            if let Some(m) = &r.model {
                attrs.push(KeyValue::new(GEN_AI_RESPONSE_MODEL, m.clone()));
            }
            if !r.finish_reasons.is_empty() {
                let reasons: Vec<opentelemetry::StringValue> =
                    r.finish_reasons.iter().map(|s| s.clone().into()).collect();
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
                    let mut a = base.to_vec();
                    a.push(KeyValue::new(GEN_AI_TOKEN_TYPE, kind));
                    i.token_usage.record(n, &a);
                }
            }
        }
        span.set_attributes(attrs);
        if failed {
            span.set_status(Status::error(outcome));
        }
        let route = KeyValue::new(RB_ROUTE, l.route.clone());
        i.calls.add(
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
        let mut op_attrs = base.to_vec();
        if failed {
            op_attrs.push(KeyValue::new(
                ERROR_TYPE,
                error_type.unwrap_or(Cow::Borrowed(outcome)),
            ));
        }
        i.operation_duration
            .record(self.duration.as_secs_f64(), &op_attrs);
        // One count per caller re-send, by how it was recognised. Adding 0 to the route's series otherwise
        // still creates it, so dashboards and alerts see a 0, not "no data".
        match self.caller_retry {
            Some(r) => i.nested_retries.add(
                1,
                &[
                    route,
                    KeyValue::new(RB_CALLER_RETRY_SOURCE, r.source.as_str()),
                ],
            ),
            None => i.nested_retries.add(0, &[route]),
        }
        span.end();
    }
}

/// Fixed, sanitised operator notes: never request or response content. One per decision, so a new decision
/// does not compile until it has its note.
pub fn operator_note(decision: DecisionKind) -> &'static str {
    match decision {
        DecisionKind::Retry => "transient failure; retry scheduled after backoff",
        DecisionKind::Done => "documented success response received",
        DecisionKind::StopNonRetryable => "failure class is not safe to retry; stopped",
        DecisionKind::StopAttemptsExhausted => "attempt allowance used up; stopped",
        DecisionKind::StopBudgetExhausted => "shared retry budget exhausted; retry denied",
        DecisionKind::StopDeadline => "retry would end past the call deadline; stopped",
        DecisionKind::StopRetryAfterTooLong => "server asked for a wait beyond the limit; stopped",
        DecisionKind::StopCommitted => {
            "stream failed after first byte reached the caller; not retried"
        }
        DecisionKind::StopCancelled => "caller went away; attempt cancelled",
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

// The writer lives in `evidence_file`; these names stay reachable here.
pub(crate) use crate::evidence_file::EvidenceWriter;
pub use crate::evidence_file::{EVIDENCE_FLUSH_INTERVAL, EVIDENCE_PENDING_LIMIT};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_781_308_800_123);
        assert_eq!(rfc3339(t), "2026-06-13T00:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
