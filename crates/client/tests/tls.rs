//! The TLS side of the client's own pool (hyper-util over rustls): an `https` upstream that does not speak TLS
//! is a `tls_error` — named as such in the error and the evidence, never retried as a flaky connection.
//! (A real certificate chain needs a network and a CA; this is the failure path a misconfigured base URL hits.)

#![allow(clippy::unwrap_used)]

use retrybudget_client::{ChatError, ChatRequest, Client, ClientConfig};
use retrybudget_fake_upstream::FakeUpstream;
use retrybudget_policy::ErrorType;
use retrybudget_telemetry::Telemetry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_http_server_is_a_tls_error() {
    let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = upstream.base_url().replacen("http://", "https://", 1);
    let client = Client::new(ClientConfig::new(base), Telemetry::local()).unwrap();
    let error = match client.chat(&ChatRequest::user("fake-model", "hi")).await {
        Err(ChatError::Call(e)) => e,
        other => panic!("expected a failed call, got {other:?}"),
    };
    assert_eq!(error.error_type, Some(ErrorType::TlsError), "{error}");
    assert_eq!(error.attempts, 1, "a TLS failure is not retried: {error}");
    assert!(error.to_string().contains("certificate"), "{error}");
}
