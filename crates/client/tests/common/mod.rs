//! Shared harness: a real fake upstream, a real OTLP receiver, the real telemetry pipeline and client (also the
//! middleware crate's tests' harness, through `#[path]`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use retrybudget_client::{Client, ClientConfig};
use retrybudget_fake_upstream::FakeUpstream;
use retrybudget_policy::{BudgetConfig, PolicyConfig};
use retrybudget_telemetry::{OtlpConfig, OtlpProtocol, Telemetry, TelemetryConfig};
use retrybudget_testkit::{OtlpReceiver, Signal};

pub const MODEL: &str = "fake-model";

pub struct Harness {
    pub upstream: FakeUpstream,
    pub receiver: OtlpReceiver,
    pub telemetry: Telemetry,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

pub fn otlp(receiver: &OtlpReceiver, protocol: OtlpProtocol, timeout: Duration) -> OtlpConfig {
    match protocol {
        OtlpProtocol::Grpc => OtlpConfig {
            protocol,
            traces_endpoint: receiver.grpc_endpoint(),
            metrics_endpoint: receiver.grpc_endpoint(),
            logs_endpoint: receiver.grpc_endpoint(),
            timeout,
        },
        OtlpProtocol::HttpProtobuf => OtlpConfig {
            protocol,
            traces_endpoint: receiver.http_signal_endpoint(Signal::Traces),
            metrics_endpoint: receiver.http_signal_endpoint(Signal::Metrics),
            logs_endpoint: receiver.http_signal_endpoint(Signal::Logs),
            timeout,
        },
    }
}

/// A quick policy for tests: short backoff, a per-attempt timeout, default allowance and budget.
pub fn test_policy() -> PolicyConfig {
    PolicyConfig {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        per_attempt_timeout: Some(Duration::from_secs(2)),
        budget: BudgetConfig::default(),
        ..PolicyConfig::default()
    }
}

impl Harness {
    pub async fn start(protocol: OtlpProtocol) -> Harness {
        Self::start_with(protocol, |_| {}).await
    }

    pub async fn start_with(
        protocol: OtlpProtocol,
        tweak: impl FnOnce(&mut ClientConfig),
    ) -> Harness {
        let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let receiver = OtlpReceiver::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = TelemetryConfig {
            otlp: Some(otlp(&receiver, protocol, Duration::from_secs(2))),
            metric_interval: Duration::from_millis(200),
            evidence_file: Some(dir.path().join("evidence.jsonl")),
            resource_attributes: vec![("deployment.environment.name".into(), "test".into())],
            ..TelemetryConfig::default()
        };
        let telemetry = Telemetry::init(&config).unwrap();
        let mut client_config = ClientConfig::new(upstream.base_url());
        client_config.provider_name = "fake".into();
        client_config.route_name = "fake_chat_completions".into();
        client_config.policy = test_policy();
        tweak(&mut client_config);
        let client = Client::new(client_config, telemetry.clone()).unwrap();
        Harness {
            upstream,
            receiver,
            telemetry,
            client,
            dir,
        }
    }

    pub fn evidence_path(&self) -> PathBuf {
        self.dir.path().join("evidence.jsonl")
    }

    pub fn evidence_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.evidence_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Flushes everything (bounded) from a blocking thread, as the exporters require.
    pub async fn flush(&self) -> bool {
        let t = self.telemetry.clone();
        tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(5)))
            .await
            .unwrap()
    }

    /// Stops the fake upstream and the receiver.
    pub async fn stop(self) {
        self.upstream.shutdown().await;
        self.receiver.shutdown().await;
    }
}
