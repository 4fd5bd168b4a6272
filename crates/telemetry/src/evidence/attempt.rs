//! [`AttemptEvent`]: what one finished attempt leaves behind — its span's attributes and end, the attempt
//! metrics, the OTel log record and the JSONL evidence line, from one `emit`.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::logs::Severity;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use retrybudget_policy::{DecisionKind, DelaySource, ErrorType, Outcome};

use super::{CallLabels, operator_note};
use crate::names::*;
use crate::nested::CallerRetry;
use crate::otlp::{LogBody, LogFields, Scalar};
use crate::pipeline::Telemetry;
use crate::propagation::Hex;
use crate::record::EvidenceRecord;
use crate::timestamp::rfc3339;

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
        // Room for every attribute below: no regrowth.
        let mut attrs = Vec::with_capacity(8);
        attrs.extend([
            KeyValue::new(RB_ATTEMPT, i64::from(self.attempt)),
            KeyValue::new(RB_DECISION, decision),
            KeyValue::new(
                RB_BACKOFF_MS,
                self.backoff_before.map_or(0, |(d, _)| d.as_millis() as i64),
            ),
        ]);
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
        let mut http_attrs = l.http_attributes(2);
        if let Some(e) = &error_type {
            attempt_attrs.push(KeyValue::new(ERROR_TYPE, e.clone()));
            http_attrs.push(KeyValue::new(ERROR_TYPE, e.clone()));
        }
        if let Some(s) = self.status {
            http_attrs.push(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(s)));
        }
        i.attempts.record(1, &attempt_attrs);
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
        // One clock read for the record's time, in the log record and the JSONL line alike.
        let now = SystemTime::now();
        if let Some(records) = &inner.records {
            let fields = LogFields {
                timestamp: Some(now),
                observed: Some(now),
                severity: Some(if failed {
                    Severity::Warn
                } else {
                    Severity::Info
                }),
                severity_text: if failed { "WARN" } else { "INFO" },
                body: Some(LogBody::Str(note)),
                trace: Some((ctx.trace_id(), ctx.span_id(), Some(ctx.trace_flags()))),
                event_name: EVENT_ATTEMPT,
            };
            let backoff_ms = self.backoff_before.map_or(0, |(d, _)| d.as_millis() as i64);
            records.add(
                &inner.records_scope,
                &fields,
                &[
                    Some((RB_ROUTE, Scalar::Str(l.route.as_str()))),
                    Some((HTTP_REQUEST_METHOD, Scalar::Str(l.method.as_str()))),
                    Some((URL_TEMPLATE, Scalar::Str(l.url_template.as_str()))),
                    self.status
                        .map(|s| (HTTP_RESPONSE_STATUS_CODE, Scalar::Int(i64::from(s)))),
                    error_type.as_deref().map(|e| (ERROR_TYPE, Scalar::Str(e))),
                    Some((RB_ATTEMPT, Scalar::Int(i64::from(self.attempt)))),
                    Some((
                        RB_ALLOWANCE_REMAINING,
                        Scalar::Int(i64::from(self.allowance_remaining)),
                    )),
                    Some((RB_BUDGET_REMAINING, Scalar::Double(self.budget_balance))),
                    Some((RB_BACKOFF_MS, Scalar::Int(backoff_ms))),
                    Some((RB_ELAPSED_BUCKET, Scalar::Str(elapsed_bucket))),
                    Some((RB_DECISION, Scalar::Str(decision))),
                    self.terminal
                        .map(|o| (RB_CLIENT_RESULT, Scalar::Str(o.client_result()))),
                    self.terminal.map(|o| (RB_OUTCOME, Scalar::Str(o.as_str()))),
                ],
            );
        }
        if let Some(writer) = &inner.evidence {
            let (trace_id, span_id) = (
                Hex::<32>::new(&ctx.trace_id().to_bytes()),
                Hex::<16>::new(&ctx.span_id().to_bytes()),
            );
            let record = EvidenceRecord {
                timestamp: rfc3339(now).into(),
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
                trace_id: trace_id.as_str().into(),
                span_id: span_id.as_str().into(),
            };
            writer.write_with(|pending| record.write_json(pending));
        }
        span.end();
    }
}
