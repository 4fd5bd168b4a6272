//! The receiver playing a broken collector against the real exporter: down (`Unavailable`),
//! refusing (`Reject`), stuck (`Hang`), and not there at all (`refused_endpoint`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{CANARY, ExportSettings, LOGICAL, Target};
use opentelemetry_otlp::RetryPolicy;
use retrybudget_testkit::{
    Behavior, OtlpReceiver, Signal,
    proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
    },
    refused_endpoint,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Two quick retries, so the retry behaviour of the exporter is visible and cheap.
fn two_fast_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(2)
        .with_initial_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(20))
        .with_max_jitter(Duration::ZERO)
}

fn targets(r: &OtlpReceiver) -> [Target; 2] {
    [
        Target::Grpc(r.grpc_endpoint()),
        Target::Http(r.http_endpoint()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_fails_every_export_after_retries_and_keeps_raw_bytes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.set_behavior(Behavior::Unavailable);
    for target in targets(&receiver) {
        receiver.clear();
        let settings = ExportSettings {
            retry: two_fast_retries(),
            ..ExportSettings::default()
        };
        let p = common::pipelines(&target, &settings);
        common::emit_small(&p);
        let flushed = common::flush(&p).await;
        eprintln!("{target:?} unavailable: {flushed:?}");
        assert!(flushed.traces.is_err(), "{target:?}: {flushed:?}");
        assert!(flushed.metrics.is_err(), "{target:?}: {flushed:?}");
        assert!(flushed.logs.is_err(), "{target:?}: {flushed:?}");
        // UNAVAILABLE / 503 are retryable: 1 try + 2 retries per signal
        for signal in Signal::ALL {
            assert_eq!(receiver.request_count(signal), 3, "{target:?} {signal:?}");
        }
        assert!(receiver.raw_bytes_contain(LOGICAL.as_bytes()), "{target:?}");
        assert!(receiver.raw_bytes_contain(CANARY.as_bytes()), "{target:?}");
        assert!(receiver.spans().is_empty() && receiver.logs().is_empty());
        assert!(receiver.metrics().is_empty());
        common::shutdown(p).await;
    }
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_is_not_retried() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.set_behavior(Behavior::Reject);
    for target in targets(&receiver) {
        receiver.clear();
        let settings = ExportSettings {
            retry: two_fast_retries(),
            ..ExportSettings::default()
        };
        let p = common::pipelines(&target, &settings);
        common::emit_small(&p);
        let flushed = common::flush(&p).await;
        eprintln!("{target:?} reject: {flushed:?}");
        assert!(flushed.traces.is_err(), "{target:?}: {flushed:?}");
        assert!(flushed.metrics.is_err(), "{target:?}: {flushed:?}");
        assert!(flushed.logs.is_err(), "{target:?}: {flushed:?}");
        for signal in Signal::ALL {
            assert_eq!(receiver.request_count(signal), 1, "{target:?} {signal:?}");
        }
        assert!(receiver.raw_bytes_contain(CANARY.as_bytes()), "{target:?}");
        assert!(receiver.spans().is_empty());
        common::shutdown(p).await;
    }
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_signal_behavior() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.set_signal_behavior(Signal::Traces, Behavior::Unavailable);
    let p = common::pipelines(
        &Target::Grpc(receiver.grpc_endpoint()),
        &ExportSettings::default(),
    );
    common::emit_small(&p);
    let flushed = common::flush(&p).await;
    assert!(flushed.traces.is_err(), "{flushed:?}");
    assert!(
        flushed.metrics.is_ok() && flushed.logs.is_ok(),
        "{flushed:?}"
    );
    assert!(receiver.spans().is_empty());
    assert_eq!(receiver.logs().len(), 1);
    assert_eq!(receiver.counter_value("retrybudget.calls", &[]), 1.0);
    common::shutdown(p).await;
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_makes_exports_time_out_and_shutdown_stays_prompt() {
    for transport in 0..2 {
        let receiver = OtlpReceiver::start().await.unwrap();
        receiver.set_behavior(Behavior::Hang);
        let target = targets(&receiver)[transport].clone();
        let settings = ExportSettings {
            timeout: Duration::from_millis(300),
            retry: RetryPolicy::disabled(),
        };
        let p = common::pipelines(&target, &settings);
        common::emit_small(&p);
        let started = Instant::now();
        let flushed = common::flush(&p).await;
        let took = started.elapsed();
        eprintln!("{target:?} hang: {flushed:?} after {took:?}");
        assert!(flushed.traces.is_err(), "{target:?}: {flushed:?}");
        assert!(flushed.metrics.is_err(), "{target:?}: {flushed:?}");
        assert!(flushed.logs.is_err(), "{target:?}: {flushed:?}");
        // three flushes bounded by the 300 ms exporter timeout, well before the SDK's own
        // 5 s force-flush timeout
        assert!(took < Duration::from_secs(4), "{target:?}: {took:?}");
        for signal in Signal::ALL {
            assert!(receiver.request_count(signal) >= 1, "{target:?} {signal:?}");
        }
        assert!(receiver.raw_bytes_contain(CANARY.as_bytes()), "{target:?}");
        assert!(receiver.spans().is_empty());

        let started = Instant::now();
        receiver.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(2), "{target:?}");
        common::shutdown(p).await;
    }
}

fn trace_request() -> ExportTraceServiceRequest {
    use retrybudget_testkit::proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: format!("raw {CANARY}"),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_a_hung_grpc_request() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.set_behavior(Behavior::Hang);
    let mut client = TraceServiceClient::connect(receiver.grpc_endpoint())
        .await
        .unwrap();
    let call = tokio::spawn(async move { client.export(trace_request()).await });
    assert!(
        receiver
            .wait_until(Duration::from_secs(5), |r| r.request_count(Signal::Traces)
                == 1)
            .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!call.is_finished(), "the request must still be hanging");

    let started = Instant::now();
    receiver.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let status = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    eprintln!("released gRPC call: {status:?}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_a_hung_http_request() {
    use prost::Message as _;
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.set_behavior(Behavior::Hang);
    let body = trace_request().encode_to_vec();
    let mut stream = tokio::net::TcpStream::connect(receiver.http_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-protobuf\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    assert!(
        receiver
            .wait_until(Duration::from_secs(5), |r| r.request_count(Signal::Traces)
                == 1)
            .await
    );
    let mut first = [0_u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut first)).await;
    assert!(early.is_err(), "the request must still be hanging");

    let started = Instant::now();
    receiver.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_endpoint_is_refused() {
    let endpoint = refused_endpoint();
    let addr = endpoint.trim_start_matches("http://").to_owned();
    let err = std::net::TcpStream::connect(&addr).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    for target in [
        Target::Grpc(endpoint.clone()),
        Target::Http(endpoint.clone()),
    ] {
        let settings = ExportSettings {
            timeout: Duration::from_secs(2),
            retry: RetryPolicy::disabled(),
        };
        let p = common::pipelines(&target, &settings);
        common::emit_small(&p);
        let started = Instant::now();
        let flushed = common::flush(&p).await;
        eprintln!(
            "{target:?} refused: {flushed:?} after {:?}",
            started.elapsed()
        );
        assert!(flushed.traces.is_err(), "{target:?}: {flushed:?}");
        assert!(flushed.metrics.is_err(), "{target:?}: {flushed:?}");
        assert!(flushed.logs.is_err(), "{target:?}: {flushed:?}");
        common::shutdown(p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_refused_after_shutdown() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (grpc, http) = (receiver.grpc_addr(), receiver.http_addr());
    assert!(std::net::TcpStream::connect(grpc).is_ok());
    assert!(std::net::TcpStream::connect(http).is_ok());
    receiver.shutdown().await;
    for addr in [grpc, http] {
        let err = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}");
    }
}
