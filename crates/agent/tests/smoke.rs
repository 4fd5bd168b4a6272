//! `retrybudget smoke`: the self-test passes without a key or network and never prints the key; a broken
//! happy path fails the run.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proc, cmd, fake_upstream, http, run, text};

const CANARY: &str = "sk-canary-4f9c2d7e1b";

#[test]
fn self_test_passes_and_never_prints_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut c = cmd(&[
        "smoke",
        "--self-test",
        "--api-key-env",
        "RB_TEST_CANARY_KEY",
        "--report",
        report.to_str().unwrap(),
    ]);
    c.env("RB_TEST_CANARY_KEY", CANARY);
    let out = run(c, Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "smoke --self-test failed:\n{stdout}\n{stderr}"
    );
    let verdicts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .collect();
    assert_eq!(verdicts.len(), 3, "{stdout}");
    assert!(verdicts.iter().all(|l| l.starts_with("PASS ")), "{stdout}");
    for check in ["happy_path", "validation_path", "retry_path"] {
        assert!(
            verdicts.iter().any(|l| l.contains(check)),
            "{check} missing:\n{stdout}"
        );
    }
    assert!(!stdout.contains("  FAIL"), "{stdout}");
    assert!(
        stdout.contains(
            "Not asserted: price, quota, rate limits, latency objectives, uptime, billing"
        )
    );
    // The evidence table has the runbook's columns.
    for col in [
        "timestamp",
        "provider_route",
        "http_status_code",
        "retry_budget_remaining",
        "backoff_applied_ms",
        "terminal_outcome",
        "operator_note",
    ] {
        assert!(stdout.contains(col), "{col}");
    }
    let report_text = std::fs::read_to_string(&report).unwrap();
    for (name, s) in [
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("report", &report_text),
    ] {
        assert!(!s.contains(CANARY), "the API key leaked into {name}");
    }
    let doc: serde_json::Value = serde_json::from_str(&report_text).unwrap();
    assert_eq!(doc["passed"], true);
    let checks = doc["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3);
    let retry = checks.iter().find(|c| c["name"] == "retry_path").unwrap();
    let rows = retry["evidence"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "one row per attempt");
    assert_eq!(rows[2]["terminal_outcome"], "failed_after_retry");
    let validation = checks
        .iter()
        .find(|c| c["name"] == "validation_path")
        .unwrap();
    assert_eq!(validation["evidence"].as_array().unwrap().len(), 1);
    assert_eq!(validation["evidence"][0]["decision"], "stop_non_retryable");
}

#[test]
fn smoke_fails_when_the_happy_path_breaks() {
    let (upstream, addr): (Proc, _) = fake_upstream();
    let r = http(
        addr,
        "PUT",
        "/_control/default",
        r#"{"status":500}"#,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let base = format!("http://{addr}");
    let out = run(
        cmd(&["smoke", "--base-url", &base, "--model", "fake-model"]),
        Duration::from_secs(90),
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL happy_path")),
        "{stdout}"
    );
    // The retry path runs against its own built-in upstream and still passes.
    assert!(
        stdout.lines().any(|l| l.starts_with("PASS retry_path")),
        "{stdout}"
    );
    assert!(stdout.contains("result: FAIL"), "{stdout}");
    drop(upstream);
}

#[test]
fn smoke_without_base_url_is_a_usage_error() {
    let out = run(cmd(&["smoke", "--model", "m"]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--base-url"));
}
