//! One logical call in flight: the policy's `Call`, the spans, and the evidence still owed.
//!
//! Whatever ends the call — a terminal decision, a stream's last byte, or the caller dropping the future —
//! the evidence is written exactly once: `Drop` finishes a call that nobody finished as `cancelled`.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue, StringValue};
use retrybudget_policy::{
    AttemptResult, BudgetDenied, Call, Decision, DelaySource, ErrorType, Outcome,
};
use retrybudget_telemetry::labels::model_for_span;
use retrybudget_telemetry::names::*;
use retrybudget_telemetry::{AttemptEvent, CallEvent, CallLabels, CallerRetry, ResponseFacts};

use crate::facts::{Facts, FinishReasons};
use crate::{CHAT_COMPLETIONS, Client};

pub(crate) struct Inflight {
    client: Client,
    call: Call,
    labels: CallLabels,
    call_cx: Context,
    attempt: Option<(Context, Instant)>,
    started: Instant,
    url_full: Option<StringValue>,
    backoff_before: Option<(Duration, DelaySource)>,
    client_retry_count: Option<u32>,
    caller_retry: Option<CallerRetry>,
    /// A caller's re-send the shared budget refused: answered without any upstream attempt.
    unpaid: Option<Box<BudgetDenied>>,
    /// The refusal was recorded: the call made no upstream attempt.
    refused: bool,
    pub(crate) facts: ResponseFacts,
    finish: FinishReasons,
    pub(crate) last_status: Option<u16>,
    /// Refused before it could leave: evidence and metrics, but no CLIENT span (nothing went on the wire).
    local: bool,
    done: bool,
}

impl Inflight {
    /// Starts the evidence of one call; `local` is for a request refused before it could leave (no budget use).
    pub(crate) fn start(client: &Client, request: &crate::RawRequest, local: bool) -> Inflight {
        let inner = &client.inner;
        let policy = &inner.policy;
        // Metric label and budget scope: bounded (`_invalid`, `_other`); spans may show any valid id.
        let model = inner.models.label(request.model.as_deref());
        // The label's shared buffer when it says the same (a known model under the limit), else a copy.
        let span_model: StringValue = match model_for_span(request.model.as_deref()) {
            Cow::Borrowed(m) if m == model.as_str() => model.clone(),
            m => m.into_owned().into(),
        };
        let labels = CallLabels {
            route: inner.route.clone(),
            provider: inner.provider.clone(),
            // Scope = upstream + model; the base as redacted for telemetry, since the scope is a metric label.
            scope: [
                inner
                    .redacted_base
                    .as_deref()
                    .unwrap_or(inner.server_address.as_str()),
                "|",
                model.as_str(),
            ]
            .concat()
            .into(),
            operation: gen_ai_operation(&request.url_template),
            model,
            server_address: inner.server_address.clone(),
            server_port: inner.server_port,
            url_template: match &request.url_template {
                Cow::Borrowed(t) => StringValue::from(*t),
                Cow::Owned(t) => CallLabels::shared(t.as_str()),
            },
            method: http_method_label(request.method.as_str()).into(),
        };
        // Room for the request's optional attributes and those the call's end adds (`CallEvent`): the span's
        // attributes then grow in place.
        let mut attrs = Vec::with_capacity(24);
        attrs.extend([
            KeyValue::new(GEN_AI_OPERATION_NAME, labels.operation),
            KeyValue::new(GEN_AI_PROVIDER_NAME, labels.provider.clone()),
            KeyValue::new(GEN_AI_REQUEST_MODEL, span_model.clone()),
            KeyValue::new(SERVER_ADDRESS, labels.server_address.clone()),
            KeyValue::new(SERVER_PORT, i64::from(labels.server_port)),
            KeyValue::new(RB_ROUTE, labels.route.clone()),
        ]);
        if request.stream {
            attrs.push(KeyValue::new(GEN_AI_REQUEST_STREAM, true));
        }
        if let Some(m) = request.max_tokens {
            attrs.push(KeyValue::new(GEN_AI_REQUEST_MAX_TOKENS, m as i64));
        }
        if let Some(t) = request.temperature {
            attrs.push(KeyValue::new(GEN_AI_REQUEST_TEMPERATURE, t));
        }
        let name = if labels.operation == GEN_AI_OPERATION_OTHER {
            [labels.method.as_str(), " ", labels.url_template.as_str()].concat()
        } else {
            [labels.operation, " ", span_model.as_str()].concat()
        };
        // Without an explicit parent (the proxy passes the caller's `traceparent`), the call joins the current
        // context: inside a `tracing` span bridged by `tracing-opentelemetry`, that is the span's (the layer
        // activates it on enter), so an app's `#[instrument]`ed handler becomes the logical span's parent.
        let current;
        let parent = if request.parent.span().span_context().is_valid() {
            &request.parent
        } else {
            current = Context::current();
            &current
        };
        let call_cx = if local {
            // CLIENT spans are requests that went on the wire. The evidence of a refused request still needs a
            // trace and span id: those of the parent (the proxy's SERVER span), through a context whose span
            // does not record, so emitting never touches or ends the parent.
            let _ = (name, attrs);
            local_context(parent, client)
        } else {
            inner
                .telemetry
                .start_span(parent, name, SpanKind::Client, attrs)
        };
        let mut unpaid = None;
        let call = match request.caller_retry {
            _ if local => policy.start_local_call(client.now(), client.next_seed()),
            // A caller's re-send pays like a retry; refused, it is recorded on a call that touches no budget.
            Some(retry) if request.caller_retry_pays => {
                match policy.start_caller_retry(
                    labels.scope.as_str(),
                    client.now(),
                    request.deadline,
                    client.next_seed(),
                    retry.prior_attempts,
                ) {
                    Ok(call) => call,
                    Err(refusal) => {
                        unpaid = Some(refusal);
                        policy.start_local_call(client.now(), client.next_seed())
                    }
                }
            }
            _ => policy.start_call(
                labels.scope.as_str(),
                client.now(),
                request.deadline,
                client.next_seed(),
            ),
        };
        // A request that must not be repeated gets one attempt, under the same policy and budget.
        let call = if request.repeatable {
            call
        } else {
            call.single_attempt()
        };
        client.call_started();
        Inflight {
            client: client.clone(),
            call,
            // The redacted base + the route template: never the caller's own path or query, which can carry
            // anything (ids, keys in query strings, encoded tricks).
            url_full: if request.url_template == CHAT_COMPLETIONS {
                inner.chat_url_full.clone()
            } else {
                inner
                    .redacted_base
                    .as_ref()
                    .map(|b| CallLabels::shared([b.as_str(), &request.url_template].concat()))
            },
            labels,
            call_cx,
            attempt: None,
            started: Instant::now(),
            backoff_before: None,
            client_retry_count: request.client_retry_count,
            caller_retry: request.caller_retry,
            unpaid,
            refused: false,
            facts: ResponseFacts::default(),
            finish: FinishReasons::default(),
            last_status: None,
            local,
            done: false,
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// If the shared budget refused to pay for this caller's re-send: records the refusal (one attempt record
    /// with no status and no `error.type`, decision `stop_budget_exhausted`, outcome `budget_exhausted`) and
    /// returns the `retry-after` in seconds. Nothing may be sent upstream then.
    pub(crate) fn refuse_unpaid_resend(&mut self) -> Option<u64> {
        let refusal = self.unpaid.take()?;
        self.refused = true;
        self.begin_attempt();
        self.emit_attempt(&refusal.decision, None, None);
        self.emit_call(&refusal.decision);
        Some(refusal.retry_after_secs())
    }

    pub(crate) fn attempt_index(&self) -> u32 {
        self.call.attempt()
    }

    pub(crate) fn attempt_timeout(&self) -> Duration {
        self.call.attempt_timeout(self.client.now())
    }

    pub(crate) fn commit(&mut self) {
        self.call.commit();
    }

    /// Adds a response's (or stream chunk's) facts.
    pub(crate) fn merge_facts(&mut self, facts: Facts<'_>) {
        facts.merge_into(&mut self.facts, &mut self.finish);
    }

    /// Opens the attempt's span and returns its context (for `traceparent`).
    pub(crate) fn begin_attempt(&mut self) -> Context {
        if self.local {
            self.attempt = Some((self.call_cx.clone(), Instant::now()));
            return self.call_cx.clone();
        }
        let l = &self.labels;
        // Room for `url.full` and the attributes the attempt's end adds (`AttemptEvent`).
        let mut attrs = l.http_attributes(10);
        if let Some(u) = &self.url_full {
            attrs.push(KeyValue::new(URL_FULL, u.clone()));
        }
        let name = crate::http_span_name(l.method.as_str(), l.url_template.as_str());
        let cx =
            self.client
                .inner
                .telemetry
                .start_span(&self.call_cx, name, SpanKind::Client, attrs);
        self.attempt = Some((cx.clone(), Instant::now()));
        cx
    }

    /// Ends the current attempt with `result`: decision, evidence, and — if terminal — the call's evidence.
    pub(crate) fn end_attempt(
        &mut self,
        result: &AttemptResult<'_>,
        status: Option<u16>,
        protocol_version: Option<&'static str>,
    ) -> Decision {
        self.call.set_wall_clock(SystemTime::now());
        let decision = self.call.on_result(self.client.now(), result);
        if status.is_some() {
            self.last_status = status;
        }
        self.log_decision(&decision);
        self.emit_attempt(&decision, status, protocol_version);
        if decision.is_terminal() {
            self.emit_call(&decision);
        } else if let (Some(delay), Some(source)) = (decision.delay, decision.delay_source) {
            self.backoff_before = Some((delay, source));
        }
        decision
    }

    /// The operational log of a decision worth an operator's attention (a retry, a refusal, a failed call),
    /// emitted with the attempt's context current so the OTLP log bridge stamps it with the call's trace ids.
    /// These are `tracing` events, never evidence: they carry names and numbers only.
    fn log_decision(&self, d: &Decision) {
        use retrybudget_telemetry::names::{LOG_CALL_FAILED, LOG_REFUSED, LOG_RETRY};
        // A call that succeeded (or was cancelled) logs nothing: no context to make current, nothing to format.
        if d.outcome.is_some_and(|o| !o.is_failure())
            && d.error_type != Some(ErrorType::ValidationError)
        {
            return;
        }
        let cx = self.attempt.as_ref().map_or(&self.call_cx, |(cx, _)| cx);
        let _current = cx.clone().attach();
        let route = self.labels.route.as_str();
        let error_type = d.error_type.map(|e| e.as_str());
        let error_type = error_type.as_deref().unwrap_or("");
        match d.outcome {
            None => tracing::debug!(
                name: LOG_RETRY,
                route,
                attempt = d.attempt,
                error_type,
                decision = d.kind.as_str(),
                delay_ms = d.delay.map_or(0, |t| t.as_millis() as u64),
                "attempt failed; retrying after the delay"
            ),
            Some(_) if d.error_type == Some(ErrorType::ValidationError) => tracing::info!(
                name: LOG_REFUSED,
                route,
                error_type,
                "request refused by local validation; it was not sent upstream"
            ),
            Some(
                o @ (Outcome::FailedAfterRetry
                | Outcome::BudgetExhausted
                | Outcome::DeadlineExceeded
                | Outcome::StreamInterrupted),
            ) => tracing::warn!(
                name: LOG_CALL_FAILED,
                route,
                outcome = o.as_str(),
                attempts = d.attempt + 1,
                error_type,
                stop_reason = d.kind.stop_reason(),
                "call failed"
            ),
            Some(o) if o.is_failure() => tracing::info!(
                name: LOG_CALL_FAILED,
                route,
                outcome = o.as_str(),
                attempts = d.attempt + 1,
                error_type,
                stop_reason = d.kind.stop_reason(),
                "call failed without retry"
            ),
            Some(_) => {}
        }
    }

    fn emit_attempt(
        &mut self,
        d: &Decision,
        status: Option<u16>,
        protocol_version: Option<&'static str>,
    ) {
        let Some((cx, started)) = self.attempt.take() else {
            return;
        };
        AttemptEvent {
            labels: &self.labels,
            attempt: d.attempt,
            status,
            error_type: d.error_type,
            decision: d.kind,
            allowance_remaining: d.allowance_remaining,
            budget_balance: d.budget_balance,
            backoff_before: if d.attempt > 0 {
                self.backoff_before
            } else {
                None
            },
            retry_after: d.hint.map(|h| h.wait),
            duration: started.elapsed(),
            elapsed: d.elapsed,
            terminal: d.outcome,
            protocol_version,
            caller_retry: self.caller_retry,
        }
        .emit(&self.client.inner.telemetry, &cx);
    }

    fn emit_call(&mut self, d: &Decision) {
        self.done = true;
        let Some(outcome) = d.outcome else { return };
        let (_, backoff_total) = self.call.backoff();
        // The call ends here: its facts move into the evidence.
        let mut facts = std::mem::take(&mut self.facts);
        facts.finish_reasons = std::mem::take(&mut self.finish).into_sorted();
        let has_facts = facts.id.is_some() || facts.input_tokens.is_some();
        CallEvent {
            labels: &self.labels,
            outcome,
            decision: d.kind,
            attempts: if self.refused { 0 } else { d.attempt + 1 },
            max_attempts: self.call.max_attempts(),
            budget_balance: d.budget_balance,
            backoff_total,
            duration: self.started.elapsed(),
            error_type: if outcome.is_failure() {
                d.error_type
            } else {
                None
            },
            client_retry_count: self.client_retry_count,
            caller_retry: self.caller_retry,
            response: has_facts.then_some(facts),
        }
        .emit(&self.client.inner.telemetry, &self.call_cx);
    }
}

/// A context carrying `parent`'s span context (or fresh ids when there is none) in a span that records nothing.
fn local_context(parent: &Context, client: &Client) -> Context {
    let sc = parent.span().span_context().clone();
    if sc.is_valid() {
        return Context::new().with_remote_span_context(sc);
    }
    let trace = (u128::from(client.next_seed()) << 64) | u128::from(client.next_seed());
    let span = client.next_seed();
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(trace.max(1)),
        SpanId::from(span.max(1)),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ))
}

impl Drop for Inflight {
    fn drop(&mut self) {
        if !self.done {
            let decision = self.call.cancel(self.client.now());
            self.emit_attempt(&decision, None, None);
            self.emit_call(&decision);
        }
        self.client.call_ended();
    }
}
