//! Export must never hurt the caller. The same workload runs twice — once with a healthy collector (the
//! baseline), once with the collector refusing connections, answering 503 or hanging — and:
//! - every call has the same outcome as in the baseline;
//! - the workload takes no longer than a small factor of the baseline (an exporter that blocks the request
//!   path for one export timeout per span fails this);
//! - shutdown returns within its bound;
//! - exactly what the healthy collector received is counted as dropped, per signal: spans, log records and
//!   metric data points (each signal is waited for on its own before it is asserted).
//!
//! A second pair of tests keeps a hanging collector under load with the default export timeout and queue size
//! and shows that drops are counted while the load runs (queue full), long before the alert window ends.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::MODEL;
use retrybudget_client::{ChatRequest, Client, ClientConfig};
use retrybudget_fake_upstream::{FakeUpstream, Step};
use retrybudget_telemetry::export::{LOGS, METRICS, TRACES};
use retrybudget_telemetry::{OtlpConfig, OtlpProtocol, Telemetry, TelemetryConfig};
use retrybudget_testkit::{Behavior, OtlpReceiver};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Healthy,
    Refused,
    Unavailable,
    Hang,
}

/// Export timeout of these tests: long enough that an exporter blocking a call on it is unmistakable.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound for the whole shutdown (four exports that each may run into the timeout, plus margin).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

struct Run {
    outcomes: Vec<String>,
    elapsed: Duration,
    /// Items the collector received (healthy) or that were counted as dropped (broken), per signal.
    spans: u64,
    logs: u64,
    points: u64,
}

fn otlp_for(mode: Mode, receiver: &OtlpReceiver, protocol: OtlpProtocol) -> OtlpConfig {
    let mut otlp = common::otlp(receiver, protocol, EXPORT_TIMEOUT);
    match mode {
        Mode::Refused => {
            let refused = retrybudget_testkit::refused_endpoint();
            let path = |p: &str| match protocol {
                OtlpProtocol::Grpc => refused.clone(),
                OtlpProtocol::HttpProtobuf => format!("{refused}/v1/{p}"),
            };
            otlp = OtlpConfig {
                traces_endpoint: path("traces"),
                metrics_endpoint: path("metrics"),
                logs_endpoint: path("logs"),
                ..otlp
            };
        }
        Mode::Unavailable => receiver.set_behavior(Behavior::Unavailable),
        Mode::Hang => receiver.set_behavior(Behavior::Hang),
        Mode::Healthy => {}
    }
    otlp
}

/// A fixed workload: a retried call, clean calls, a non-retryable failure, an exhausted allowance.
async fn workload(mode: Mode, protocol: OtlpProtocol) -> Run {
    let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let receiver = OtlpReceiver::start().await.unwrap();
    let config = TelemetryConfig {
        otlp: Some(otlp_for(mode, &receiver, protocol)),
        // Only shutdown exports metrics: one flush and one final collection, in both runs.
        metric_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let telemetry = Telemetry::init(&config).unwrap();
    let mut cc = ClientConfig::new(upstream.base_url());
    cc.policy = common::test_policy();
    let client = Client::new(cc, telemetry.clone()).unwrap();
    upstream.push([
        Step::status(503),
        Step::ok(),
        Step::ok(),
        Step::ok(),
        Step::status(400),
        Step::status(503),
        Step::status(503),
        Step::status(503),
        Step::ok(),
        Step::ok(),
    ]);
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..7 {
        let r = client.chat(&ChatRequest::user(MODEL, "hi")).await;
        outcomes.push(match r {
            Ok(r) => format!("ok, {} choice(s)", r.choices.len()),
            Err(e) => e.to_string(),
        });
    }
    let elapsed = started.elapsed();
    assert_eq!(upstream.attempts(), 10, "{mode:?}: every step was used");
    assert!(
        telemetry
            .prometheus_text()
            .contains("retrybudget_telemetry_dropped_total{"),
        "the drop counter is scraped"
    );

    let t = telemetry.clone();
    let shutdown_started = Instant::now();
    let completed = tokio::task::spawn_blocking(move || t.shutdown(SHUTDOWN_BOUND))
        .await
        .unwrap();
    let shutdown_took = shutdown_started.elapsed();
    assert!(
        shutdown_took < SHUTDOWN_BOUND + Duration::from_millis(500),
        "{mode:?}: shutdown is bounded: {shutdown_took:?}"
    );
    let run = if mode == Mode::Healthy {
        assert!(completed, "a healthy collector is flushed in time");
        Run {
            outcomes,
            elapsed,
            spans: receiver.spans().len() as u64,
            logs: receiver.logs().len() as u64,
            points: receiver
                .metrics()
                .iter()
                .map(|m| m.data_points() as u64)
                .sum(),
        }
    } else {
        assert!(
            receiver.spans().is_empty() && receiver.logs().is_empty(),
            "{mode:?}: nothing was delivered"
        );
        Run {
            outcomes,
            elapsed,
            spans: telemetry.dropped(TRACES),
            logs: telemetry.dropped(LOGS),
            points: telemetry.dropped(METRICS),
        }
    };
    receiver.shutdown().await;
    upstream.shutdown().await;
    run
}

async fn run(mode: Mode, protocol: OtlpProtocol) {
    let base = workload(Mode::Healthy, protocol).await;
    assert!(
        base.spans == 17 && base.logs == 10 && base.points > 0,
        "baseline: {} spans, {} logs, {} points",
        base.spans,
        base.logs,
        base.points
    );
    let broken = workload(mode, protocol).await;
    assert_eq!(
        broken.outcomes, base.outcomes,
        "{mode:?}: the calls had the same outcomes"
    );
    let bound = base.elapsed * 2 + Duration::from_millis(300);
    assert!(
        broken.elapsed <= bound,
        "{mode:?} {protocol:?}: the workload took {:?}, the baseline {:?} (bound {bound:?}): export is on the request path",
        broken.elapsed,
        base.elapsed
    );
    assert_eq!(
        (broken.spans, broken.logs, broken.points),
        (base.spans, base.logs, base.points),
        "{mode:?} {protocol:?}: dropped (spans, logs, metric points) = what a healthy collector received"
    );
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

/// A hanging collector under load, with the product's default export timeout (10 s), small queues and a 1 s
/// metric interval: spans and log records are counted as dropped while the load runs (their queue is full, long
/// before any export times out), metric points as soon as the first export times out — all far inside the
/// alert's 5-minute window.
async fn hang_under_load(protocol: OtlpProtocol) {
    let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.set_behavior(Behavior::Hang);
    let timeout = TelemetryConfig::default_export_timeout();
    let config = TelemetryConfig {
        otlp: Some(common::otlp(&receiver, protocol, timeout)),
        metric_interval: Duration::from_secs(1),
        // The default (2048) fills after ~11 s of this debug-build load, about when the first export times
        // out; a smaller queue separates "queue full" from "export timed out".
        queue_size: 64,
        ..TelemetryConfig::default()
    };
    let telemetry = Telemetry::init(&config).unwrap();
    let client = Client::new(ClientConfig::new(upstream.base_url()), telemetry.clone()).unwrap();
    let started = Instant::now();
    let mut first = [None::<Duration>; 3];
    let limit = Duration::from_secs(40);
    let mut calls = 0u64;
    while first.iter().any(Option::is_none) && started.elapsed() < limit {
        let batch: Vec<_> = (0..16)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.chat(&ChatRequest::user(MODEL, "hi")).await })
            })
            .collect();
        for b in batch {
            b.await.unwrap().unwrap();
            calls += 1;
        }
        for (i, signal) in [TRACES, LOGS, METRICS].into_iter().enumerate() {
            if first[i].is_none() && telemetry.dropped(signal) > 0 {
                first[i] = Some(started.elapsed());
            }
        }
    }
    let [traces, logs, metrics] = [TRACES, LOGS, METRICS].map(|s| telemetry.dropped(s));
    println!(
        "{protocol:?} hang: {calls} calls in {:?}; first drop after traces {:?}, logs {:?}, metrics {:?}; dropped traces {traces}, logs {logs}, metric points {metrics}",
        started.elapsed(),
        first[0],
        first[1],
        first[2]
    );
    for (i, name) in ["traces", "logs", "metrics"].into_iter().enumerate() {
        let at =
            first[i].unwrap_or_else(|| panic!("{protocol:?}: no {name} drop within {limit:?}"));
        // Metric points wait for one export timeout; spans and logs only for their queue to fill.
        let bound = if name == "metrics" {
            timeout + Duration::from_secs(5)
        } else {
            timeout / 2
        };
        assert!(
            at < bound,
            "{protocol:?}: first {name} drop after {at:?} (bound {bound:?})"
        );
    }
    let text = telemetry.prometheus_text();
    for signal in ["traces", "logs", "metrics"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("retrybudget_telemetry_dropped_total{")
                    && l.contains(&format!("retrybudget_signal=\"{signal}\""))
            })
            .unwrap_or_else(|| panic!("no dropped series for {signal}:\n{text}"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value > 0.0, "/metrics shows the {signal} drops: {line}");
    }
    let t = telemetry.clone();
    tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    receiver.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_under_load_counts_drops_grpc() {
    hang_under_load(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_under_load_counts_drops_http() {
    hang_under_load(OtlpProtocol::HttpProtobuf).await;
}
