//! Round trips with the real `opentelemetry-otlp` exporter: everything exported over gRPC and
//! over OTLP/HTTP (protobuf) arrives at the receiver and is decoded.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ExportSettings, Target};
use retrybudget_testkit::{OtlpReceiver, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exporter_round_trip() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let pipelines = common::pipelines(
        &Target::Grpc(receiver.grpc_endpoint()),
        &ExportSettings::default(),
    );
    common::emit_everything(&pipelines).await;
    let flushed = common::flush(&pipelines).await;
    assert!(
        flushed.traces.is_ok() && flushed.logs.is_ok(),
        "{flushed:?}"
    );
    common::assert_everything_arrived(&receiver, Transport::Grpc).await;
    common::shutdown(pipelines).await;
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_exporter_round_trip() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let pipelines = common::pipelines(
        &Target::Http(receiver.http_endpoint()),
        &ExportSettings::default(),
    );
    common::emit_everything(&pipelines).await;
    let flushed = common::flush(&pipelines).await;
    assert!(
        flushed.traces.is_ok() && flushed.logs.is_ok(),
        "{flushed:?}"
    );
    common::assert_everything_arrived(&receiver, Transport::Http).await;
    common::shutdown(pipelines).await;
    receiver.shutdown().await;
}
