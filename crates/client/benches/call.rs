//! One chat call against the in-process fake upstream, side by side in one run:
//! a plain reqwest POST (no policy, no telemetry), our client with local telemetry only (spans and metrics made
//! in-process, nothing exported), and our client with full export (OTLP gRPC to an in-process receiver plus the
//! JSONL evidence file). Ratios of these answer "what does the evidence cost per call?".
//!
//! Run: `cargo bench -p retrybudget-client --bench call`; results in `crates/client/README.md`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use retrybudget_client::{ChatRequest, Client, ClientConfig};
use retrybudget_fake_upstream::FakeUpstream;
use retrybudget_telemetry::{OtlpConfig, OtlpProtocol, Telemetry, TelemetryConfig};
use retrybudget_testkit::OtlpReceiver;

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream, receiver, dir) = rt.block_on(async {
        let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let receiver = OtlpReceiver::start().await.unwrap();
        (upstream, receiver, tempfile::tempdir().unwrap())
    });
    let req = ChatRequest::user("fake-model", "Say OK.");
    let body = serde_json::to_vec(&req).unwrap();
    let url = format!("{}/v1/chat/completions", upstream.base_url());

    let plain = reqwest::Client::new();
    c.bench_function("plain reqwest POST (no policy, no telemetry)", |b| {
        b.to_async(&rt).iter(|| async {
            let r = plain
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap()
        })
    });

    let local = rt.block_on(async {
        Client::new(ClientConfig::new(upstream.base_url()), Telemetry::local()).unwrap()
    });
    c.bench_function("client, telemetry local only", |b| {
        b.to_async(&rt)
            .iter(|| async { local.chat(&req).await.unwrap() })
    });

    let full = rt.block_on(async {
        let e = receiver.grpc_endpoint();
        let config = TelemetryConfig {
            otlp: Some(OtlpConfig {
                protocol: OtlpProtocol::Grpc,
                traces_endpoint: e.clone(),
                metrics_endpoint: e.clone(),
                logs_endpoint: e,
                timeout: Duration::from_secs(5),
            }),
            evidence_file: Some(dir.path().join("evidence.jsonl")),
            ..TelemetryConfig::default()
        };
        Client::new(
            ClientConfig::new(upstream.base_url()),
            Telemetry::init(&config).unwrap(),
        )
        .unwrap()
    });
    c.bench_function("client, full export (OTLP gRPC + JSONL)", |b| {
        b.to_async(&rt)
            .iter(|| async { full.chat(&req).await.unwrap() })
    });
    let t = full.telemetry().clone();
    rt.block_on(async move {
        tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(5)))
            .await
            .unwrap()
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = calls
}
criterion_main!(benches);
