//! Export must never hurt the caller: with the collector refusing, answering 503 or hanging, every call
//! succeeds with the same outcome, shutdown returns within its bound, and what was lost is counted.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::MODEL;
use retrybudget_client::{ChatRequest, Client, ClientConfig};
use retrybudget_fake_upstream::{FakeUpstream, Step};
use retrybudget_telemetry::export::{LOGS, TRACES};
use retrybudget_telemetry::{OtlpConfig, OtlpProtocol, Telemetry, TelemetryConfig};
use retrybudget_testkit::{Behavior, OtlpReceiver};

enum Mode {
    Refused,
    Unavailable,
    Hang,
}

async fn run(mode: Mode, protocol: OtlpProtocol) {
    let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut otlp = common::otlp(&receiver, protocol, Duration::from_millis(300));
    match mode {
        Mode::Refused => {
            let refused = retrybudget_testkit::refused_endpoint();
            otlp = OtlpConfig {
                traces_endpoint: format!("{refused}/v1/traces"),
                metrics_endpoint: format!("{refused}/v1/metrics"),
                logs_endpoint: format!("{refused}/v1/logs"),
                ..otlp
            };
            if protocol == OtlpProtocol::Grpc {
                otlp.traces_endpoint = refused.clone();
                otlp.metrics_endpoint = refused.clone();
                otlp.logs_endpoint = refused;
            }
        }
        Mode::Unavailable => receiver.set_behavior(Behavior::Unavailable),
        Mode::Hang => receiver.set_behavior(Behavior::Hang),
    }
    let config = TelemetryConfig {
        otlp: Some(otlp),
        metric_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let telemetry = Telemetry::init(&config).unwrap();
    let mut cc = ClientConfig::new(upstream.base_url());
    cc.policy = common::test_policy();
    let client = Client::new(cc, telemetry.clone()).unwrap();
    upstream.push([Step::status(503), Step::ok()]);
    let first = client.chat(&ChatRequest::user(MODEL, "hi")).await.unwrap();
    assert!(first.text().is_some());
    for _ in 0..5 {
        client.chat(&ChatRequest::user(MODEL, "hi")).await.unwrap();
    }
    assert_eq!(
        upstream.attempts(),
        7,
        "the calls themselves were unaffected"
    );

    let text = telemetry.prometheus_text();
    assert!(
        text.contains("retrybudget_telemetry_dropped_total{"),
        "the drop counter is scraped"
    );
    let bound = Duration::from_secs(3);
    let t = telemetry.clone();
    let started = Instant::now();
    let _completed = tokio::task::spawn_blocking(move || t.shutdown(bound))
        .await
        .unwrap();
    assert!(
        started.elapsed() < bound + Duration::from_secs(1),
        "shutdown is bounded: {:?}",
        started.elapsed()
    );
    // Exports that failed count their items as dropped (give a hung export its timeout to fail).
    let deadline = Instant::now() + Duration::from_secs(5);
    while telemetry.dropped(TRACES) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(telemetry.dropped(TRACES) >= 1, "dropped spans counted");
    assert!(telemetry.dropped(LOGS) >= 1, "dropped log records counted");
    receiver.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_refusing_grpc() {
    run(Mode::Refused, OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_refusing_http() {
    run(Mode::Refused, OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_unavailable_grpc() {
    run(Mode::Unavailable, OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_unavailable_http() {
    run(Mode::Unavailable, OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_hanging_grpc() {
    run(Mode::Hang, OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_hanging_http() {
    run(Mode::Hang, OtlpProtocol::HttpProtobuf).await;
}
