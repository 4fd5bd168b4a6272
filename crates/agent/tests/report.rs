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
    assert_eq!(report["attempts"], demo["attempts"]);
    assert_eq!(report["amplification"], demo["amplification"]);
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

#[test]
fn malformed_lines_are_reported_by_number_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evidence.jsonl");
    let lines = [
        r#"{"timestamp":"2026-06-13T00:00:00.000Z","decision":"retry","error_type":"503","retry_attempt":0}"#,
        r#"{"timestamp":"2026-06-13T00:00:01.000Z","decision":"stop_budget_exhausted","error_type":"503","retry_attempt":1,"terminal_outcome":"budget_exhausted"}"#,
        "{this is not json",
        r#"{"timestamp":"2026-06-13T00:00:02.000Z","decision":"done","retry_attempt":0,"terminal_outcome":"success"}"#,
        r#"{"timestamp":"2026-06-13T00:00:03.0"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = run(
        cmd(&["report", path.to_str().unwrap(), "--json"]),
        Duration::from_secs(30),
    );
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
