//! The receiver's wire behaviour seen by hand-written clients: status codes, content types,
//! what is stored and what is only counted.
#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use prost::Message as _;
use retrybudget_testkit::{
    Behavior, OtlpReceiver, Signal, Transport,
    proto::tonic::{
        collector::{
            logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
            trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
        },
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
    },
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn trace_request(name: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "hand-made")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "hand".into(),
                    version: "1.2.3".into(),
                    ..Default::default()
                }),
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: name.into(),
                    kind: SpanKind::Server as i32,
                    start_time_unix_nano: 1_000,
                    end_time_unix_nano: 3_500,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, head, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");

#[tokio::test]
async fn http_accepts_protobuf_and_answers_an_empty_protobuf_response() {
    let r = OtlpReceiver::start().await.unwrap();
    let body = trace_request("hand span").encode_to_vec();
    let (status, head, response) =
        http(r.http_addr(), "POST", "/v1/traces", &[PROTOBUF], &body).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: application/x-protobuf"),
        "{head}"
    );
    assert!(
        response.is_empty(),
        "an empty Export*ServiceResponse encodes to nothing"
    );

    let spans = r.spans_named("hand span");
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.transport, Transport::Http);
    assert_eq!(span.scope_name, "hand");
    assert_eq!(span.scope_version, "1.2.3");
    assert_eq!(span.resource_attr_str("service.name"), Some("hand-made"));
    assert_eq!(span.kind(), SpanKind::Server);
    assert_eq!(span.duration(), Duration::from_nanos(2_500));
    assert_eq!(span.trace_id_hex(), "01".repeat(16));
    assert!(span.is_root());
    assert_eq!(r.request_count(Signal::Traces), 1);
    assert_eq!(r.raw_bytes(), body);
    r.shutdown().await;
}

#[tokio::test]
async fn http_rejects_what_it_cannot_decode_but_records_it() {
    let r = OtlpReceiver::start().await.unwrap();
    let body = trace_request("never stored").encode_to_vec();
    let addr = r.http_addr();

    let gzip = [PROTOBUF, ("content-encoding", "gzip")];
    let (status, head, _) = http(addr, "POST", "/v1/traces", &gzip, &body).await;
    assert_eq!(status, 415, "{head}");
    let json = [("content-type", "application/json")];
    let (status, _, _) = http(addr, "POST", "/v1/logs", &json, b"{}").await;
    assert_eq!(status, 415);
    let (status, _, _) = http(addr, "POST", "/v1/metrics", &[PROTOBUF], b"\xff\xff\xff").await;
    assert_eq!(status, 400);
    let (status, _, _) = http(addr, "GET", "/v1/traces", &[], b"").await;
    assert_eq!(status, 405);
    let (status, _, _) = http(addr, "POST", "/v1/profiles", &[PROTOBUF], b"").await;
    assert_eq!(status, 404);

    assert!(r.spans().is_empty() && r.logs().is_empty() && r.metrics().is_empty());
    assert_eq!(r.request_count(Signal::Traces), 1);
    assert_eq!(r.request_count(Signal::Logs), 1);
    assert_eq!(r.request_count(Signal::Metrics), 1);
    assert!(r.raw_bytes_contain(b"never stored"));
    r.shutdown().await;
}

#[tokio::test]
async fn http_behaviors_map_to_status_codes() {
    let r = OtlpReceiver::start().await.unwrap();
    let body = trace_request("x").encode_to_vec();
    r.set_behavior(Behavior::Unavailable);
    let (status, _, _) = http(r.http_addr(), "POST", "/v1/traces", &[PROTOBUF], &body).await;
    assert_eq!(status, 503);
    r.set_behavior(Behavior::Reject);
    let (status, _, _) = http(r.http_addr(), "POST", "/v1/traces", &[PROTOBUF], &body).await;
    assert_eq!(status, 400);
    r.set_behavior(Behavior::Accept);
    let (status, _, _) = http(r.http_addr(), "POST", "/v1/traces", &[PROTOBUF], &body).await;
    assert_eq!(status, 200);
    assert_eq!(r.request_count(Signal::Traces), 3);
    assert_eq!(r.spans().len(), 1, "only the accepted export is stored");
    assert_eq!(r.raw_bytes().len(), 3 * body.len());
    r.shutdown().await;
}

#[tokio::test]
async fn grpc_behaviors_map_to_status_codes_and_accepted_data_is_stored() {
    let r = OtlpReceiver::start().await.unwrap();
    let mut traces = TraceServiceClient::connect(r.grpc_endpoint())
        .await
        .unwrap();

    r.set_behavior(Behavior::Unavailable);
    let err = traces.export(trace_request("a")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    r.set_behavior(Behavior::Reject);
    let err = traces.export(trace_request("b")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    r.set_behavior(Behavior::Accept);
    traces.export(trace_request("c")).await.unwrap();

    assert_eq!(r.request_count(Signal::Traces), 3);
    assert_eq!(r.span_names(), vec!["c".to_owned()]);
    assert_eq!(r.spans()[0].transport, Transport::Grpc);
    assert!(r.raw_bytes_contain(b"hand-made"));

    // a log record whose event name travels as the legacy `event.name` attribute
    let mut logs = LogsServiceClient::connect(r.grpc_endpoint()).await.unwrap();
    let record = LogRecord {
        attributes: vec![kv("event.name", "legacy.event")],
        ..Default::default()
    };
    logs.export(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![record],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
    .await
    .unwrap();
    let found = r.logs_with_event_name("legacy.event");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].trace_id_hex(), None, "no trace context was sent");
    assert_eq!(r.request_count(Signal::Logs), 1);
    r.shutdown().await;
}

#[tokio::test]
async fn clear_and_wait_until() {
    let r = OtlpReceiver::start().await.unwrap();
    r.set_behavior(Behavior::Reject);
    let body = trace_request("x").encode_to_vec();
    http(r.http_addr(), "POST", "/v1/traces", &[PROTOBUF], &body).await;
    r.clear();
    assert_eq!(r.request_count(Signal::Traces), 0);
    assert!(r.raw_bytes().is_empty());
    // behaviour survives clear
    let (status, _, _) = http(r.http_addr(), "POST", "/v1/traces", &[PROTOBUF], &body).await;
    assert_eq!(status, 400);

    let started = tokio::time::Instant::now();
    let seen = r
        .wait_until(Duration::from_millis(150), |r| !r.spans().is_empty())
        .await;
    assert!(!seen);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(
        r.wait_until(Duration::ZERO, |r| r.request_count(Signal::Traces) == 1)
            .await
    );
    r.shutdown().await;
}
