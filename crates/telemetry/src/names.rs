//! Every telemetry name retrybudget writes, defined once (`docs/telemetry-contract.md`).
//!
//! Stable HTTP names come from `opentelemetry-semantic-conventions`; the GenAI names are pinned here as released in
//! semconv v1.41.1 (the crate marks them deprecated since they moved to their own repository, and we must not
//! drift when it renames them); our own names live under the one product prefix `retrybudget.`.
//! Dashboards, alert rules and tests depend on these strings: never write a telemetry name inline elsewhere.

use opentelemetry_semantic_conventions::{attribute as semconv, metric as semconv_metric};
use retrybudget_policy::routes;

// === HTTP (stable semantic conventions) ===

/// `http.request.method`
pub const HTTP_REQUEST_METHOD: &str = semconv::HTTP_REQUEST_METHOD;
/// `http.response.status_code`
pub const HTTP_RESPONSE_STATUS_CODE: &str = semconv::HTTP_RESPONSE_STATUS_CODE;
/// `http.request.resend_count` (≥ 1, on resends only)
pub const HTTP_REQUEST_RESEND_COUNT: &str = semconv::HTTP_REQUEST_RESEND_COUNT;
/// `http.route` (server spans, proxy mode)
pub const HTTP_ROUTE: &str = semconv::HTTP_ROUTE;
/// `error.type`
pub const ERROR_TYPE: &str = semconv::ERROR_TYPE;
/// `server.address`
pub const SERVER_ADDRESS: &str = semconv::SERVER_ADDRESS;
/// `server.port`
pub const SERVER_PORT: &str = semconv::SERVER_PORT;
/// `url.full` (always redacted, see [`crate::redact`])
pub const URL_FULL: &str = semconv::URL_FULL;
/// `url.template`
pub const URL_TEMPLATE: &str = semconv::URL_TEMPLATE;
/// `network.protocol.version`
pub const NETWORK_PROTOCOL_VERSION: &str = semconv::NETWORK_PROTOCOL_VERSION;
/// `deployment.environment.name` (resource)
pub const DEPLOYMENT_ENVIRONMENT_NAME: &str = "deployment.environment.name";
/// `service.name` (resource)
pub const SERVICE_NAME: &str = semconv::SERVICE_NAME;

// === GenAI (pinned: semconv v1.41.1) ===

/// `gen_ai.operation.name`
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.provider.name`
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
/// `gen_ai.request.model`
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.request.stream`
pub const GEN_AI_REQUEST_STREAM: &str = "gen_ai.request.stream";
/// `gen_ai.request.max_tokens`
pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
/// `gen_ai.request.temperature`
pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
/// `gen_ai.response.id`
pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
/// `gen_ai.response.model`
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
/// `gen_ai.response.finish_reasons`
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// `gen_ai.usage.input_tokens`
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens`
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// `gen_ai.token.type` (`input` / `output`)
pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
/// `gen_ai.operation.name` of chat completions.
pub const GEN_AI_OPERATION_CHAT: &str = "chat";
/// `gen_ai.operation.name` of legacy completions.
pub const GEN_AI_OPERATION_TEXT_COMPLETION: &str = "text_completion";
/// `gen_ai.operation.name` of embeddings.
pub const GEN_AI_OPERATION_EMBEDDINGS: &str = "embeddings";
/// Requests that are no GenAI operation (e.g. listing models).
pub const GEN_AI_OPERATION_OTHER: &str = "_OTHER";

/// The GenAI operation of an OpenAI-compatible route template.
pub fn gen_ai_operation(url_template: &str) -> &'static str {
    match url_template {
        routes::CHAT_COMPLETIONS | routes::RESPONSES => GEN_AI_OPERATION_CHAT,
        routes::COMPLETIONS => GEN_AI_OPERATION_TEXT_COMPLETION,
        routes::EMBEDDINGS => GEN_AI_OPERATION_EMBEDDINGS,
        _ => GEN_AI_OPERATION_OTHER,
    }
}

/// `http.request.method` as semconv wants it: one of the standard methods, else `_OTHER` (a caller choosing
/// methods must not be able to grow the label set).
pub fn http_method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "_OTHER",
    }
}

// === retrybudget.* ===

/// Provider route name, e.g. `cometapi_chat_completions`.
pub const RB_ROUTE: &str = "retrybudget.route";
/// Attempts the logical call made.
pub const RB_ATTEMPTS: &str = "retrybudget.attempts";
/// The allowance the call had.
pub const RB_MAX_ATTEMPTS: &str = "retrybudget.max_attempts";
/// Terminal outcome (retry-semantics.md §4).
pub const RB_OUTCOME: &str = "retrybudget.outcome";
/// Why retrying stopped.
pub const RB_STOP_REASON: &str = "retrybudget.stop_reason";
/// Shared budget balance of the scope.
pub const RB_BUDGET_REMAINING: &str = "retrybudget.budget.remaining";
/// Total time slept between attempts.
pub const RB_BACKOFF_TOTAL_MS: &str = "retrybudget.backoff.total_ms";
/// The caller's own retry count (nested retries, proxy mode).
pub const RB_CLIENT_RETRY_COUNT: &str = "retrybudget.client_retry_count";
/// How a request was recognised as its caller's re-send (`header`, `fingerprint`, `idempotency_key`): logical
/// span attribute, label of [`M_NESTED_RETRIES`].
pub const RB_CALLER_RETRY_SOURCE: &str = "retrybudget.caller_retry.source";
/// Which re-send of its caller a request is (1 = the first re-send): logical span attribute.
pub const RB_CALLER_RETRY_ATTEMPT: &str = "retrybudget.caller_retry.attempt";
/// Caller retry source: the caller's retry header (`x-stainless-retry-count`, `x-retrybudget-attempt`) > 0.
pub const CALLER_RETRY_SOURCE_HEADER: &str = "header";
/// Caller retry source: same caller, same request, after a failure or while its twin was in flight.
pub const CALLER_RETRY_SOURCE_FINGERPRINT: &str = "fingerprint";
/// Caller retry source: an `Idempotency-Key` the caller already sent.
pub const CALLER_RETRY_SOURCE_IDEMPOTENCY_KEY: &str = "idempotency_key";
/// 0-based attempt index.
pub const RB_ATTEMPT: &str = "retrybudget.attempt";
/// The decision after the attempt.
pub const RB_DECISION: &str = "retrybudget.decision";
/// Delay slept before the attempt.
pub const RB_BACKOFF_MS: &str = "retrybudget.backoff_ms";
/// Where that delay came from.
pub const RB_DELAY_SOURCE: &str = "retrybudget.delay_source";
/// The server's wait hint on this attempt's response.
pub const RB_RETRY_AFTER_MS: &str = "retrybudget.retry_after_ms";
/// Retries the call may still make under its allowance.
pub const RB_ALLOWANCE_REMAINING: &str = "retrybudget.allowance.remaining";
/// `<100ms`, `<1s`, `<10s`, `<60s`, `>=60s`.
pub const RB_ELAPSED_BUCKET: &str = "retrybudget.elapsed_bucket";
/// `success` / `failure` / `cancelled`.
pub const RB_CLIENT_RESULT: &str = "retrybudget.client_result";
/// Budget scope (metric attribute).
pub const RB_SCOPE: &str = "retrybudget.scope";
/// Telemetry signal (metric attribute of the dropped counter).
pub const RB_SIGNAL: &str = "retrybudget.signal";
/// Probe check name.
pub const RB_CHECK: &str = "retrybudget.check";
/// The evidence record's event name.
pub const EVENT_ATTEMPT: &str = "retrybudget.attempt";
/// Instrumentation scope of everything we emit.
pub const SCOPE_NAME: &str = "retrybudget";

// === operational log events (a separate stream: never evidence) ===
// `tracing` event names, exported as the OTLP log records' event name by the log bridge (with its own, empty
// instrumentation scope). None of them is `retrybudget.attempt`, so no count of evidence can include them.

/// Prefix every operational log event name starts with.
pub const LOG_PREFIX: &str = "retrybudget.log.";
/// A process started (what listens where, whether OTLP is on).
pub const LOG_STARTED: &str = "retrybudget.log.started";
/// A process is stopping (signal received, draining).
pub const LOG_STOPPING: &str = "retrybudget.log.stopping";
/// A process stopped (and whether telemetry flushed in time).
pub const LOG_STOPPED: &str = "retrybudget.log.stopped";
/// The effective configuration (no secrets: only the names of variables holding them).
pub const LOG_CONFIG: &str = "retrybudget.log.config";
/// A telemetry export failed; its items were dropped and counted.
pub const LOG_EXPORT_FAILED: &str = "retrybudget.log.export_failed";
/// A request was refused before it left (local validation), inside its call's trace.
pub const LOG_REFUSED: &str = "retrybudget.log.refused";
/// An attempt failed and the call will retry after a delay, inside the attempt's trace.
pub const LOG_RETRY: &str = "retrybudget.log.retry";
/// A call ended in failure (budget exhausted, deadline, attempts exhausted, …), inside its trace.
pub const LOG_CALL_FAILED: &str = "retrybudget.log.call_failed";
/// Something the operator should know (a risky setting, a skipped input line).
pub const LOG_WARNING: &str = "retrybudget.log.warning";

// === metrics ===

/// Per-attempt HTTP duration (semconv).
pub const M_HTTP_CLIENT_REQUEST_DURATION: &str = semconv_metric::HTTP_CLIENT_REQUEST_DURATION;
/// Per-call GenAI duration.
pub const M_GEN_AI_OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
/// Token usage.
pub const M_GEN_AI_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
/// Logical calls by outcome.
pub const M_CALLS: &str = "retrybudget.calls";
/// Attempts by decision and error type.
pub const M_ATTEMPTS: &str = "retrybudget.attempts";
/// Attempts per call.
pub const M_CALL_ATTEMPTS: &str = "retrybudget.call.attempts";
/// Backoff slept, by delay source.
pub const M_BACKOFF_DURATION: &str = "retrybudget.backoff.duration";
/// Shared budget balance per scope.
pub const M_BUDGET_REMAINING: &str = "retrybudget.budget.remaining";
/// Retries the budget denied.
pub const M_BUDGET_DENIED: &str = "retrybudget.budget.denied";
/// Requests whose caller was itself retrying, by route and [`RB_CALLER_RETRY_SOURCE`].
pub const M_NESTED_RETRIES: &str = "retrybudget.client.nested_retries";
/// Telemetry items dropped.
pub const M_TELEMETRY_DROPPED: &str = "retrybudget.telemetry.dropped";
/// Requests the proxy refused before anything was sent upstream, by [`RB_REJECT_REASON`].
pub const M_PROXY_REJECTED: &str = "retrybudget.proxy.rejected";
/// Why the proxy refused a request: a fixed word such as `host` or `path` (never a value from the request).
pub const RB_REJECT_REASON: &str = "reason";
/// Probe result.
pub const M_PROBE_SUCCESS: &str = "retrybudget.probe.success";
/// Probe duration (seconds).
pub const M_PROBE_DURATION: &str = "retrybudget.probe.duration";

/// Semconv's advisory buckets for `http.client.request.duration` (seconds).
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// GenAI's advisory buckets for `gen_ai.client.operation.duration` (seconds).
pub const GEN_AI_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// GenAI's advisory buckets for `gen_ai.client.token.usage`.
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// The contract's buckets for attempts per call.
pub const CALL_ATTEMPTS_BUCKETS: [f64; 8] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0];
/// Buckets for backoff sleeps (seconds).
pub const BACKOFF_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0, 120.0,
];

// === bounded labels ===

/// Most attribute sets any one instrument keeps (set explicitly on every instrument; the SDK folds the rest
/// into one `otel.metric.overflow="true"` series).
pub const METRIC_CARDINALITY_LIMIT: usize = 2000;
/// Longest model id used as a metric label or budget scope; longer ones become [`MODEL_INVALID`].
pub const MODEL_MAX_LEN: usize = 128;
/// Distinct models per route kept as labels by default; past it new ones become [`MODEL_OTHER`].
pub const DEFAULT_MAX_MODELS_PER_ROUTE: usize = 200;
/// Label of a model id that is too long or has characters outside `[A-Za-z0-9._:/@-]`.
pub const MODEL_INVALID: &str = "_invalid";
/// Label of a valid model id seen after the per-route limit was reached.
pub const MODEL_OTHER: &str = "_other";
/// Label of a request that names no model.
pub const MODEL_UNKNOWN: &str = "_unknown";

/// The evidence record's `elapsed_bucket`.
pub fn elapsed_bucket(elapsed: std::time::Duration) -> &'static str {
    match elapsed.as_millis() {
        0..100 => "<100ms",
        100..1000 => "<1s",
        1000..10_000 => "<10s",
        10_000..60_000 => "<60s",
        _ => ">=60s",
    }
}
