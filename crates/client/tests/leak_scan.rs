//! A canary API key and a canary prompt must appear nowhere we write: raw OTLP bytes (both protocols), the JSONL
//! evidence file, the Prometheus exposition, and the process's stdout/stderr. The calls run in a child process
//! (this same test binary) so its output can be captured whole.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Harness, MODEL};
use futures_util::StreamExt as _;
use retrybudget_client::ChatRequest;
use retrybudget_fake_upstream::{Fault, Step};
use retrybudget_telemetry::OtlpProtocol;
use secrecy::SecretString;

const KEY: &str = "sk-canary-KEY-7f3a9c1e5d";
const PROMPT: &str = "canary-prompt-b41d2e8f do not leak";
const REPLY: &str = "reply from the retrybudget fake upstream";

async fn exercise(protocol: OtlpProtocol) {
    let h = Harness::start_with(protocol, |c| c.api_key = Some(SecretString::from(KEY))).await;
    h.upstream.push([
        Step::status(503),
        Step::ok(),
        Step::status(400),
        Step::status(429).error_code("insufficient_quota"),
        Step::ok(),
        Step::with_fault(Fault::CutStreamAfter(1)),
    ]);
    let req = ChatRequest::user(MODEL, PROMPT);
    let ok = h.client.chat(&req).await.unwrap();
    println!("call ok: {} choices", ok.choices.len());
    for _ in 0..2 {
        if let Err(e) = h.client.chat(&req).await {
            println!("call failed: {e}");
            eprintln!("debug: {e:?}");
        }
    }
    for _ in 0..2 {
        let mut s = h.client.chat_stream(&req).await.unwrap();
        while let Some(item) = s.next().await {
            if let Err(e) = item {
                println!("stream ended: {e}");
            }
        }
    }
    let exposition = h.telemetry.prometheus_text();
    println!("{exposition}");
    assert!(h.flush().await);
    // The key really was used, and the prompt really was sent: the canaries are live.
    let sent = h.upstream.requests();
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(sent.iter().all(|r| r.body_len > PROMPT.len()));
    assert!(
        !h.receiver.spans().is_empty()
            && !h.receiver.logs().is_empty()
            && !h.receiver.metrics().is_empty()
    );
    let raw = h.receiver.raw_bytes();
    let evidence = std::fs::read(h.evidence_path()).unwrap();
    assert!(!evidence.is_empty());
    for canary in [KEY, PROMPT, REPLY, "Bearer"] {
        let c = canary.as_bytes();
        assert!(
            !contains(&raw, c),
            "{canary} found in OTLP bytes ({protocol:?})"
        );
        assert!(
            !contains(&evidence, c),
            "{canary} found in the evidence file"
        );
        assert!(!exposition.contains(canary), "{canary} found in /metrics");
    }
    println!("exercise {protocol:?} done");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs in the child process only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by canaries_never_leak in a child process"]
async fn leak_child() {
    exercise(OtlpProtocol::Grpc).await;
    exercise(OtlpProtocol::HttpProtobuf).await;
}

#[test]
fn canaries_never_leak() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "leak_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("exercise Grpc done") && stdout.contains("exercise HttpProtobuf done"),
        "{stdout}"
    );
    assert!(
        stdout.contains("retrybudget_calls_total"),
        "the exposition was printed and scanned"
    );
    for canary in [KEY, PROMPT, REPLY] {
        assert!(
            !stdout.contains(canary) && !stderr.contains(canary),
            "{canary} printed"
        );
    }
}
