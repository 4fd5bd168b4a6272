//! The JSON view of a [`Summary`] (`retrybudget report --json`). It formats; it never counts. The keys of
//! earlier versions stay as they were; new figures are added beside them.

use serde_json::{Value, json};

use super::View;
use super::summary::{CallRow, Summary};
use super::text::instant;

/// The JSON report.
pub(crate) fn render(s: &Summary, view: &View) -> Value {
    // Rounded exactly as the text and HTML renderers print them (`{:.N}`), so a figure is the same number in all
    // three views; `(x * 100.0).round()` rounds ties differently from `format!` and the views disagreed.
    let fixed = |x: f64, digits: usize| format!("{x:.digits$}").parse::<f64>().unwrap_or(x);
    let f = &s.filters;
    let t = &s.timeline;
    let rows = |rows: &[CallRow]| -> Vec<Value> { rows.iter().map(|r| call(r, view)).collect() };
    json!({
        "calls": s.calls(),
        "calls_by_outcome": s.calls_by_outcome.0,
        "calls_started": s.calls_started,
        "calls_without_terminal_record": s.calls_without_terminal_record(),
        "attempts": s.attempts,
        "attempts_by_decision": s.attempts_by_decision.0,
        "attempts_by_error_type": s.attempts_by_error_type.0,
        "amplification": s.amplification().map(|a| fixed(a, 2)),
        "provider_amplification": s.provider_amplification().map(|a| fixed(a, 2)),
        "upstream_attempts": s.upstream_attempts,
        "distinct_requests": s.distinct_requests(),
        "caller_retries": s.caller_retries.0,
        "success_ratio": s.success_ratio().map(|r| fixed(r, 4)),
        "budget_exhausted": {
            "first": s.budget_first.as_ref().map(|(_, t)| t),
            "last": s.budget_last.as_ref().map(|(_, t)| t),
            "denials": s.denials(),
            "longest_stretch": t.longest_denial_stretch.map(|st| json!({
                "first": instant(st.first_ms),
                "last": instant(st.last_ms),
                "seconds": (st.last_ms - st.first_ms) as f64 / 1000.0,
                "denials": st.denials,
            })),
        },
        "server_hinted_attempts": s.server_hinted,
        "top_stop_reasons": s.stop_reasons.ranked().into_iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
        "records": s.records,
        "records_read": s.records_read,
        "first": s.first_ms.map(instant),
        "last": s.last_ms.map(instant),
        "filters": {
            "since": f.since_ms.map(instant),
            "until": f.until_ms.map(instant),
            "route": f.route,
            "model": f.model,
        },
        "timeline": {
            "bucket_ms": t.width_ms,
            "buckets": t.buckets.iter().map(|b| json!({
                "start": instant(b.start_ms),
                "first_attempts": b.first_attempts,
                "retries": b.retries,
                "outcomes": b.outcomes.0,
                "denials": b.denials,
                "error_types": b.answers.0,
                "server_hinted": b.hinted,
                "server_hint_max_ms": b.hint_max_ms,
                "budget_balance": b.balance.iter().map(|(k, (_, v))| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        },
        "calls_to_open": {
            "most_attempts": rows(&s.calls_to_open.most_attempts),
            "longest_elapsed": rows(&s.calls_to_open.longest),
            "budget_exhausted": rows(&s.calls_to_open.budget_exhausted),
            "stream_interrupted": rows(&s.calls_to_open.stream_interrupted),
        },
        "in_flight_evicted": s.in_flight_evicted,
        "malformed_count": s.malformed_count,
        "malformed_lines": s.malformed.iter().map(|m| m.line).collect::<Vec<_>>(),
    })
}

fn call(r: &CallRow, view: &View) -> Value {
    json!({
        "trace_id": r.trace_id,
        "trace_url": view.trace_link(&r.trace_id),
        "ended": r.ended,
        "route": r.route,
        "model": r.model,
        "outcome": r.outcome,
        "attempts": r.attempts,
        "elapsed_bucket": r.elapsed_bucket,
        "first_to_last_attempt_ms": r.span_ms,
        "last_error_type": r.last_error,
    })
}
