//! OTLP over gRPC: the bytes [`super::proto`] wrote, sent as they are on a tonic channel.
//!
//! gRPC needs no message type here: a unary call's message is its protobuf bytes behind a 5-byte frame, which
//! tonic adds. The [`Raw`] codec hands our bytes over and discards the (bounded) answer, so `opentelemetry-proto`'s
//! message structs are never built — the upstream tonic exporter even clones the whole batch before converting.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use http::HeaderMap;
use http::uri::PathAndQuery;
use opentelemetry_sdk::error::OTelSdkError;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{MAX_RESPONSE, Sent, Signal};
use crate::TelemetryError;

/// A gRPC client of one OTLP service on one collector.
#[derive(Debug)]
pub(super) struct Grpc {
    client: tonic::client::Grpc<Channel>,
    path: PathAndQuery,
    endpoint: String,
}

impl Grpc {
    /// A lazily connecting channel to `endpoint`; each call is bounded by `timeout`. Must run inside a Tokio
    /// runtime (the channel's connection task is spawned on it).
    pub(super) fn new(
        signal: Signal,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Grpc, TelemetryError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TelemetryError::Init(
                "OTLP over gRPC must be set up inside a Tokio runtime".into(),
            ));
        }
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| {
                TelemetryError::Config(format!(
                    "OTLP endpoint {endpoint:?} is not a valid URI: {e}"
                ))
            })?
            .timeout(timeout)
            .connect_timeout(timeout)
            .connect_lazy();
        let client = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE);
        let path = match signal {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        };
        Ok(Grpc {
            client,
            path: PathAndQuery::from_static(path),
            endpoint: endpoint.to_owned(),
        })
    }

    /// One unary `Export` call carrying `body`.
    pub(super) async fn send(&self, body: &Bytes, headers: &HeaderMap, left: Duration) -> Sent {
        let mut client = self.client.clone();
        let failed = |status: Status| {
            let failure = format!(
                "OTLP/gRPC export to {}: {:?} {}",
                self.endpoint,
                status.code(),
                status.message()
            );
            // The codes OTLP says to retry (ResourceExhausted only with a retry hint, which is not read here).
            match status.code() {
                Code::Unavailable
                | Code::Cancelled
                | Code::Aborted
                | Code::OutOfRange
                | Code::DataLoss => Sent::Retry(failure),
                _ => Sent::Failed(OTelSdkError::InternalFailure(failure)),
            }
        };
        if let Err(e) = client.ready().await {
            return failed(Status::unavailable(e.to_string()));
        }
        let mut request = tonic::Request::new(body.clone());
        *request.metadata_mut() = MetadataMap::from_headers(headers.clone());
        request.set_timeout(left);
        match client.unary(request, self.path.clone(), Raw).await {
            Ok(_) => Sent::Done,
            Err(status) => failed(status),
        }
    }
}

/// Our request bytes out, the answer read and dropped.
#[derive(Debug, Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
