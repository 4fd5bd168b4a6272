//! `retrybudget report` agrees with the demo's own counting, and survives malformed lines.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cmd, run, text};
use serde_json::Value;

#[test]
fn report_matches_the_demo_table() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("demo.jsonl");
    let evidence = evidence.to_str().unwrap();
    let out = run(
        cmd(&[
            "demo",
            "--duration",
            "6s",
            "--rate",
            "10",
            "--listen",
            "127.0.0.1:0",
            "--evidence-file",
            evidence,
            "--json",
        ]),
        Duration::from_secs(120),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    assert!(
        stderr.contains("listening on http://127.0.0.1:"),
        "the bound address is printed:\n{stderr}"
    );
    let demo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(demo["calls"].as_u64().unwrap() > 0);
    assert_eq!(demo["transport_errors"], 0, "{demo}");

    let out = run(
        cmd(&["report", evidence, "--json"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["calls_by_outcome"], demo["calls_by_outcome"],
        "demo {demo}\nreport {report}"
    );
    assert_eq!(report["calls"], demo["calls"]);
    // The demo adds up x-retrybudget-attempts: upstream attempts (a refused caller re-send says 0).
    assert_eq!(report["upstream_attempts"], demo["attempts"]);
    assert_eq!(report["amplification"], demo["amplification"]);
    assert_eq!(
        report["provider_amplification"], demo["provider_amplification"],
        "demo {demo}\nreport {report}"
    );
    assert_eq!(
        report["caller_retries"]["fingerprint"],
        demo["caller_resends"]
    );
    assert_eq!(
        report["budget_exhausted"]["denials"],
        demo["budget_denials"]
    );
    assert_eq!(report["malformed_lines"].as_array().unwrap().len(), 0);
    // The mix has every kind of call: successes, retried successes and fatal 4xx.
    for outcome in ["success", "failed_without_retry"] {
        assert!(
            demo["calls_by_outcome"][outcome].as_u64().unwrap_or(0) > 0,
            "no {outcome}: {demo}"
        );
    }

    // The text form says the same.
    let out = run(cmd(&["report", evidence]), Duration::from_secs(30));
    let t = text(&out.stdout);
    assert!(
        t.contains(&format!(
            "amplification={:.2}",
            demo["amplification"].as_f64().unwrap()
        )),
        "{t}"
    );
}

/// A full evidence line: `(seconds after 2026-06-13T00:00:00Z, trace, attempt, decision, error_type, outcome)`.
fn record(
    at: f64,
    trace: u32,
    attempt: u32,
    decision: &str,
    error: Option<&str>,
    outcome: Option<&str>,
) -> String {
    let ms = (at * 1000.0).round() as u64;
    let mut v = serde_json::json!({
        "timestamp": format!("2026-06-13T00:{:02}:{:02}.{:03}Z", ms / 60_000, ms / 1000 % 60, ms % 1000),
        "environment": "test", "provider_route": "r", "model": "m", "http_method": "POST",
        "http_route": "/v1/chat/completions", "retry_attempt": attempt, "retry_budget_remaining": 2 - attempt.min(2),
        "shared_budget_balance": 5.0, "backoff_applied_ms": 0, "elapsed_bucket": "<1s", "decision": decision,
        "operator_note": "n", "trace_id": format!("{trace:032x}"), "span_id": format!("{attempt:016x}"),
    });
    if let Some(e) = error {
        v["error_type"] = e.into();
    }
    if let Some(o) = outcome {
        v["terminal_outcome"] = o.into();
        v["client_result"] = if o.starts_with("success") {
            "success"
        } else {
            "failure"
        }
        .into();
    }
    v.to_string()
}

fn report(path: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["report", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(cmd(&args), Duration::from_secs(60))
}

#[test]
fn malformed_lines_are_reported_by_number_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evidence.jsonl");
    let lines = [
        record(0.0, 1, 0, "retry", Some("503"), None),
        record(
            1.0,
            1,
            1,
            "stop_budget_exhausted",
            Some("503"),
            Some("budget_exhausted"),
        ),
        "{this is not json".to_owned(),
        record(2.0, 2, 0, "done", None, Some("success")),
        r#"{"timestamp":"2026-06-13T00:00:03.0"#.to_owned(),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = report(&path, &["--json"]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("line 5"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["calls"], 2);
    assert_eq!(report["attempts"], 3);
    assert_eq!(report["amplification"], 1.5);
    assert_eq!(report["calls_by_outcome"]["budget_exhausted"], 1);
    assert_eq!(
        report["budget_exhausted"]["first"],
        "2026-06-13T00:00:01.000Z"
    );
    assert_eq!(
        report["top_stop_reasons"][0]["reason"],
        "stop_budget_exhausted"
    );
    assert_eq!(report["malformed_lines"], serde_json::json!([3, 5]));
    assert_eq!(report["malformed_count"], 2);
}

#[test]
fn empty_file_is_nothing_to_report_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.jsonl");
    std::fs::write(&path, "").unwrap();
    let html = dir.path().join("out.html");
    let out = report(&path, &["--html", html.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("holds no evidence record"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    assert!(!html.exists(), "no page for nothing");
}

#[test]
fn one_call_makes_a_one_bucket_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.jsonl");
    std::fs::write(&path, record(0.25, 7, 0, "done", None, Some("success"))).unwrap();
    let html = dir.path().join("one.html");
    let out = report(
        &path,
        &[
            "--json",
            "--html",
            html.to_str().unwrap(),
            "--trace-url",
            "http://j/trace/{trace_id}",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["calls"].as_u64(), r["attempts"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(r["success_ratio"], 1.0);
    assert_eq!(r["timeline"]["buckets"].as_array().unwrap().len(), 1);
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("class=\"bucket\"").count(), 1);
    assert!(page.contains(&format!("href=\"http://j/trace/{:032x}\"", 7)));
    assert!(!page.contains("<script"));
}

#[test]
fn lines_out_of_time_order_give_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for call in 0..40u32 {
        let t = f64::from(call) * 0.7;
        if call % 3 == 0 {
            lines.push(record(t, call, 0, "retry", Some("503"), None));
            lines.push(record(
                t + 0.4,
                call,
                1,
                "stop_budget_exhausted",
                Some("503"),
                Some("budget_exhausted"),
            ));
        } else {
            lines.push(record(t, call, 0, "done", None, Some("success")));
        }
    }
    let sorted = dir.path().join("sorted.jsonl");
    std::fs::write(&sorted, lines.join("\n")).unwrap();
    // Reversed: every line out of order (a call's terminal record even precedes its first attempt).
    lines.reverse();
    let shuffled = dir.path().join("shuffled.jsonl");
    std::fs::write(&shuffled, lines.join("\n")).unwrap();
    let json = |p: &std::path::Path| -> Value {
        let out = report(p, &["--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (a, b) = (json(&sorted), json(&shuffled));
    for key in [
        "calls",
        "attempts",
        "calls_by_outcome",
        "budget_exhausted",
        "timeline",
        "first",
        "last",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert_eq!(a["calls_by_outcome"]["budget_exhausted"], 14);
}

#[test]
fn bad_flags_are_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, record(0.0, 1, 0, "done", None, Some("success"))).unwrap();
    let out = report(&path, &["--trace-url", "http://jaeger/trace/"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("{trace_id}"),
        "{}",
        text(&out.stderr)
    );
    let out = report(&path, &["--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn missing_evidence_file_is_a_runtime_error() {
    let out = run(
        cmd(&["report", "/nonexistent/evidence.jsonl"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/evidence.jsonl"));
}
