//! Operational logs of the binary: `RUST_LOG=debug` with `--log-format json` and with text gives parseable
//! lines on stderr that contain no fragment of the API key or the prompt; with OTLP on, the logs arrive as
//! OTLP log records carrying the trace ids of the call they concern, and are never counted as evidence.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proc, cmd, fake_upstream, http};
use retrybudget_telemetry::names::*;
use retrybudget_testkit::OtlpReceiver;

const KEY: &str = "sk-canaryKEY-7f3a9c1e5b2d4f60";
const PROMPT: &str = "canaryPROMPT-quartz-lantern-4411";

/// Every 8-character fragment of `secret` that `text` contains.
fn fragments_in(secret: &str, text: &str) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(8)
        .map(|w| w.iter().collect::<String>())
        .filter(|f| text.contains(f.as_str()))
        .collect()
}

struct Run {
    stdout: String,
    stderr: String,
}

/// A proxy with the key injected, `RUST_LOG=debug`, OTLP/HTTP to `receiver`: one call retried (503, 200)
/// and one refused locally (invalid JSON), both carrying the prompt; then SIGTERM.
fn run_proxy(format: &str, receiver: &OtlpReceiver, evidence: &std::path::Path) -> Run {
    let (_upstream, up) = fake_upstream();
    let script = r#"[{"status":503},{"status":200}]"#;
    let r = http(
        up,
        "POST",
        "/_control/script",
        script,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let mut c = cmd(&[
        "--log-format",
        format,
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("http://{up}"),
        "--api-key-env",
        "CANARY_KEY",
        "--evidence-file",
        evidence.to_str().unwrap(),
        "--max-attempts",
        "3",
    ]);
    c.env("RUST_LOG", "debug")
        .env("CANARY_KEY", KEY)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let mut proxy = Proc::spawn(c);
    let addr = proxy.wait_for_addr(Duration::from_secs(20));
    let body =
        format!(r#"{{"model":"fake-model","messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#);
    let ok = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &body,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    let bad = format!(r#"{{"model":"fake-model","messages":"{PROMPT}""#);
    let refused = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &bad,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(refused.status, 400, "{refused:?}");
    proxy.terminate();
    let status = proxy
        .wait_timeout(Duration::from_secs(20))
        .expect("the proxy exits after SIGTERM");
    let out = proxy.output_after_exit(status);
    let run = Run {
        stdout: common::text(&out.stdout),
        stderr: common::text(&out.stderr),
    };
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        run.stderr
    );
    run
}

fn assert_no_leak(run: &Run, receiver: &OtlpReceiver) {
    for secret in [KEY, PROMPT] {
        for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            let found = fragments_in(secret, text);
            assert!(found.is_empty(), "{name} contains {found:?}:\n{text}");
        }
        let raw = String::from_utf8_lossy(&receiver.raw_bytes()).into_owned();
        let found = fragments_in(secret, &raw);
        assert!(found.is_empty(), "OTLP payloads contain {found:?}");
    }
}

/// What arrived over OTLP: our operational logs with the call's trace ids, evidence records apart.
fn assert_otlp_logs(receiver: &OtlpReceiver, evidence: &std::path::Path) {
    let lines = std::fs::read_to_string(evidence).unwrap();
    let evidence_records = receiver.logs_with_event_name(EVENT_ATTEMPT);
    // 503 + 200 + the refused request: the evidence still reconciles with the file.
    assert_eq!(evidence_records.len(), 3, "evidence records");
    assert_eq!(lines.lines().count(), 3, "JSONL lines");
    let operational: Vec<_> = receiver
        .logs()
        .into_iter()
        .filter(|l| l.event_name() != Some(EVENT_ATTEMPT))
        .collect();
    for l in &operational {
        let name = l.event_name().unwrap_or_default();
        assert!(
            name.starts_with(LOG_PREFIX),
            "only retrybudget.log.* events are bridged (never hyper/h2/tonic/reqwest): {name:?}"
        );
        assert_ne!(
            l.scope_name, SCOPE_NAME,
            "{name}: not in the evidence scope"
        );
    }
    let names: Vec<&str> = operational.iter().filter_map(|l| l.event_name()).collect();
    for expected in [
        LOG_CONFIG,
        LOG_STARTED,
        LOG_RETRY,
        LOG_REFUSED,
        LOG_STOPPING,
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let retry = operational
        .iter()
        .find(|l| l.event_name() == Some(LOG_RETRY))
        .unwrap();
    let call = receiver.spans_named("chat fake-model");
    let first_attempt = receiver
        .spans()
        .into_iter()
        .find(|s| {
            s.attr_i64(RETRYBUDGET_ATTEMPT) == Some(0)
                && s.attr_i64(HTTP_RESPONSE_STATUS_CODE) == Some(503)
        })
        .expect("the 503 attempt span");
    assert!(
        retry.is_in_span(&first_attempt),
        "the retry log is inside the attempt it concerns"
    );
    assert!(call.iter().any(|c| first_attempt.is_child_of(c)));
    let refused = operational
        .iter()
        .find(|l| l.event_name() == Some(LOG_REFUSED))
        .unwrap();
    let refused_span = evidence_records
        .iter()
        .find(|r| r.attr_str(ERROR_TYPE) == Some("validation_error"))
        .expect("the refused request's evidence");
    assert_eq!(
        refused.trace_id_hex(),
        refused_span.trace_id_hex(),
        "the refusal's trace"
    );
}

const RETRYBUDGET_ATTEMPT: &str = RB_ATTEMPT;

#[test]
fn debug_json_logs_parse_leak_nothing_and_reach_otlp_with_trace_ids() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = rt.block_on(OtlpReceiver::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("evidence.jsonl");
    let run = run_proxy("json", &receiver, &evidence);
    let mut levels = std::collections::BTreeSet::new();
    for line in run.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["target"].is_string(),
            "{line}"
        );
        levels.insert(v["level"].as_str().unwrap().to_owned());
    }
    assert!(
        levels.contains("DEBUG"),
        "RUST_LOG=debug took effect: {levels:?}"
    );
    assert!(
        run.stderr
            .contains(r#""message":"retrybudget proxy started""#),
        "{}",
        run.stderr
    );
    assert!(
        rt.block_on(receiver.wait_until(Duration::from_secs(10), |r| {
            !r.logs_with_event_name(LOG_STOPPING).is_empty()
        }))
    );
    assert_no_leak(&run, &receiver);
    assert_otlp_logs(&receiver, &evidence);
    rt.block_on(receiver.shutdown());
}

#[test]
fn debug_text_logs_are_lines_with_a_level_and_leak_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = rt.block_on(OtlpReceiver::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = run_proxy("text", &receiver, &dir.path().join("evidence.jsonl"));
    let mut debug = 0;
    for line in run.stderr.lines().filter(|l| !l.trim().is_empty()) {
        // `2026-11-30T11:18:32.727649Z  INFO target: message fields`
        let mut words = line.split_whitespace();
        let ts = words.next().unwrap_or_default();
        let level = words.next().unwrap_or_default();
        assert!(
            ts.ends_with('Z') && ts.contains('T'),
            "no timestamp: {line}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "no level: {line}"
        );
        debug += usize::from(level == "DEBUG");
    }
    assert!(debug > 0, "RUST_LOG=debug took effect");
    assert_no_leak(&run, &receiver);
    rt.block_on(receiver.shutdown());
}

#[test]
fn a_bad_log_level_is_a_usage_error() {
    let out = common::run(
        cmd(&["--log-level", "retrybudget=loud", "fake-upstream"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(common::text(&out.stderr).contains("--log-level"));
}
