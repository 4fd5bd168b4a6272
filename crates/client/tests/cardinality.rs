//! Callers choose the `model` string, so it must not choose how big the telemetry gets: 10 000 calls, each with a
//! distinct random model id (a third too long, a third with forbidden characters, a third plain), leave
//! `/metrics`, the number of budget scopes and the process's memory within fixed bounds.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use retrybudget_client::{ChatRequest, Client, ClientConfig};
use retrybudget_fake_upstream::FakeUpstream;
use retrybudget_telemetry::Telemetry;
use retrybudget_telemetry::names::{DEFAULT_MAX_MODELS_PER_ROUTE, MODEL_INVALID, MODEL_OTHER};

const CALLS: usize = 10_000;
/// `/metrics` with 200 models plus `_other` and `_invalid` on one route: each model label carries about 11 kB
/// (the GenAI duration and token histograms are per model); measured 2.2 MB. Unbounded, the same 10 000 calls
/// would need about 110 MB.
const METRICS_BOUND: usize = 3_000_000;
/// Resident memory the 10 000 calls may add (measured: about 11 MB in a debug build; 44 MB unbounded).
const RSS_GROWTH_BOUND_KB: u64 = 24 * 1024;

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A model id from a tiny xorshift generator: deterministic per `i`, distinct for every `i`.
fn model(i: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    match i % 3 {
        0 => format!("m-{i}-{x:016x}"),
        1 => format!("m-{i}-{}", "x".repeat(200)),
        _ => format!("m {i} {{{x:x}}}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_models_stay_bounded() {
    let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let telemetry = Telemetry::local();
    let mut config = ClientConfig::new(upstream.base_url());
    config.policy = common::test_policy();
    config.policy.per_attempt_timeout = Some(Duration::from_secs(10));
    let client = Client::new(config, telemetry.clone()).unwrap();
    // Warm up allocator, connection pool and instruments before the baseline.
    client
        .chat(&ChatRequest::user("warm-up", "hi"))
        .await
        .unwrap();
    let rss_before = rss_kb();

    let workers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (w..CALLS).step_by(8) {
                    client
                        .chat(&ChatRequest::user(model(i), "hi"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let text = telemetry.prometheus_text();
    let rss_after = rss_kb();
    let scopes = client.policy().budgets().all().len();
    println!(
        "{CALLS} distinct models: /metrics {} bytes, {scopes} budget scopes, {} model labels, RSS {rss_before} kB -> {rss_after} kB (+{} kB)",
        text.len(),
        client.model_labels(),
        rss_after.saturating_sub(rss_before)
    );
    assert_eq!(upstream.attempts(), CALLS + 1, "every call went through");
    assert_eq!(client.model_labels(), DEFAULT_MAX_MODELS_PER_ROUTE);
    // 200 kept ids (the warm-up among them), `_other` and `_invalid`.
    assert_eq!(scopes, DEFAULT_MAX_MODELS_PER_ROUTE + 2, "budget scopes");
    assert!(
        text.len() < METRICS_BOUND,
        "/metrics is {} bytes",
        text.len()
    );
    for label in [MODEL_OTHER, MODEL_INVALID] {
        assert!(
            text.contains(&format!("gen_ai_request_model=\"{label}\"")),
            "{label} is a label"
        );
    }
    assert!(
        !text.contains(&"x".repeat(129)) && !text.contains("m 2 {"),
        "no invalid id reached /metrics"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_BOUND_KB,
        "RSS grew by {} kB",
        rss_after.saturating_sub(rss_before)
    );
    upstream.shutdown().await;
}
