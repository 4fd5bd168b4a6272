//! A canary API key, a canary prompt and the upstream's reply must appear nowhere we write: raw OTLP bytes
//! (spans, logs and metrics, both protocols), the JSONL evidence file, the Prometheus exposition, and the
//! process's stdout/stderr (errors and `Debug` output included). Not even in part: every substring of 12 (key,
//! prompt) or 14 (reply) bytes is searched, so a truncated key or one streamed piece of a reply is caught.
//! The calls run in a child process (this same test binary) so its output can be captured whole.

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
/// The fake upstream's fixed reply (streamed as "This is a ", "reply from the ", "retrybudget fake ", …).
const REPLY: &str = "This is a reply from the retrybudget fake upstream.";
/// Length of the canary substrings searched for: short enough that a 12-byte prefix of the key is caught, and
/// for the reply every streamed piece of 14 bytes or more ("reply from the ", "retrybudget fake "); long enough
/// to occur nowhere by chance (" retrybudget" alone would match a `# HELP` line).
const KEY_FRAGMENT: usize = 12;
const REPLY_FRAGMENT: usize = 14;

/// Every substring of the fragment length of each canary.
fn fragments() -> Vec<&'static str> {
    let mut out = Vec::new();
    for (canary, n) in [
        (KEY, KEY_FRAGMENT),
        (PROMPT, KEY_FRAGMENT),
        (REPLY, REPLY_FRAGMENT),
    ] {
        for i in 0..=canary.len() - n {
            out.push(&canary[i..i + n]);
        }
    }
    out
}

/// The canary fragments found in `hay`.
fn leaked(hay: &[u8]) -> Vec<&'static str> {
    fragments()
        .into_iter()
        .filter(|f| contains(hay, f.as_bytes()))
        .collect()
}

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
    let mut streamed = Vec::new();
    for _ in 0..2 {
        let mut s = h.client.chat_stream(&req).await.unwrap();
        while let Some(item) = s.next().await {
            match item {
                Ok(bytes) => streamed.extend_from_slice(&bytes),
                Err(e) => println!("stream ended: {e}"),
            }
        }
        eprintln!("debug: {s:?}");
    }
    // `Debug` of a request and an exchange carrying the key and the prompt shows names and sizes only.
    let mut raw = retrybudget_client::RawRequest::chat(serde_json::to_vec(&req).unwrap().into());
    raw.headers
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    eprintln!("debug: {raw:?}");
    let exchange = h.client.send(raw).await.unwrap();
    eprintln!("debug: {exchange:?}");
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
        contains(&streamed, b"reply from the ") && contains(&streamed, b"upstream."),
        "the reply canary arrived (in pieces)"
    );
    // Never scan before the evidence that should exist exists: one line per attempt the upstream saw.
    let lines = std::fs::read_to_string(h.evidence_path()).unwrap();
    assert_eq!(
        lines.lines().count(),
        sent.len(),
        "one evidence line per attempt before scanning"
    );
    assert!(
        !h.receiver.spans().is_empty()
            && !h.receiver.logs().is_empty()
            && !h.receiver.metrics().is_empty()
    );
    let raw = h.receiver.raw_bytes();
    let evidence = std::fs::read(h.evidence_path()).unwrap();
    assert!(!evidence.is_empty());
    assert!(
        !contains(&raw, b"Bearer"),
        "an Authorization value in OTLP bytes"
    );
    for (what, bytes) in [
        ("OTLP bytes (spans, logs, metrics)", raw.as_slice()),
        ("the evidence file", evidence.as_slice()),
        ("/metrics", exposition.as_bytes()),
    ] {
        let found = leaked(bytes);
        assert!(
            found.is_empty(),
            "canary fragments {found:?} in {what} ({protocol:?})"
        );
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
    assert!(
        stderr.contains("debug: RawRequest"),
        "the Debug output was printed and scanned"
    );
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        let found = leaked(text.as_bytes());
        assert!(
            found.is_empty(),
            "canary fragments {found:?} printed on {what}"
        );
    }
}

#[test]
fn fragment_scan_catches_pieces() {
    // The scan itself: a truncated key and one streamed piece of the reply are caught, clean text is not.
    assert!(!leaked(format!("auth {}", &KEY[..12]).as_bytes()).is_empty());
    assert!(!leaked(b"data: reply from the \n").is_empty());
    assert!(leaked(b"retrybudget_calls_total{outcome=\"success\"} 1").is_empty());
}
