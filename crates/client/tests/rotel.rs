//! A collector we did not write: rotel (a Rust OpenTelemetry collector, installed by the test command with
//! `pip install --pre rotel`) receives our export over gRPC and over HTTP, and its debug output shows our spans
//! with the contract's attributes.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::MODEL;
use retrybudget_client::{ChatRequest, Client, ClientConfig};
use retrybudget_fake_upstream::{FakeUpstream, Step};
use retrybudget_telemetry::{OtlpConfig, OtlpProtocol, Telemetry, TelemetryConfig};

struct Rotel {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    grpc: u16,
    http: u16,
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rotel_binary() -> String {
    if let Ok(p) = std::env::var("ROTEL_AGENT") {
        return p;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "rotel is not installed: run `make test`, which installs it (pip install --pre rotel)"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn start_rotel() -> Rotel {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rotel.log");
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(rotel_binary())
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc}"),
        ])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .args([
            "--exporter",
            "blackhole",
            "--debug-log",
            "traces",
            "--debug-log-verbosity",
            "detailed",
        ])
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("rotel.err")).unwrap(),
        ))
        .spawn()
        .expect("rotel-agent starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", http)).is_err()
    {
        assert!(Instant::now() < deadline, "rotel did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    Rotel {
        child,
        log,
        _dir: dir,
        grpc,
        http,
    }
}

async fn export_to_rotel(protocol: OtlpProtocol) {
    let rotel = start_rotel();
    let otlp = match protocol {
        OtlpProtocol::Grpc => {
            let e = format!("http://127.0.0.1:{}", rotel.grpc);
            OtlpConfig {
                protocol,
                traces_endpoint: e.clone(),
                metrics_endpoint: e.clone(),
                logs_endpoint: e,
                timeout: Duration::from_secs(5),
            }
        }
        OtlpProtocol::HttpProtobuf => {
            let e = format!("http://127.0.0.1:{}", rotel.http);
            OtlpConfig {
                protocol,
                traces_endpoint: format!("{e}/v1/traces"),
                metrics_endpoint: format!("{e}/v1/metrics"),
                logs_endpoint: format!("{e}/v1/logs"),
                timeout: Duration::from_secs(5),
            }
        }
    };
    let telemetry = Telemetry::init(&TelemetryConfig {
        otlp: Some(otlp),
        ..Default::default()
    })
    .unwrap();
    let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    upstream.push([Step::status(503), Step::ok()]);
    let mut cc = ClientConfig::new(upstream.base_url());
    cc.policy = common::test_policy();
    let client = Client::new(cc, telemetry.clone()).unwrap();
    client.chat(&ChatRequest::user(MODEL, "hi")).await.unwrap();
    let t = telemetry.clone();
    assert!(
        tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(10)))
            .await
            .unwrap()
    );
    assert_eq!(
        telemetry.dropped(retrybudget_telemetry::export::TRACES),
        0,
        "rotel accepted every span"
    );

    let wanted = [
        "http.request.method",
        "url.template",
        "http.response.status_code",
        "http.request.resend_count",
        "gen_ai.request.model",
        "retrybudget.outcome",
        "retrybudget.decision",
        "chat fake-model",
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&rotel.log).unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in wanted {
        assert!(
            text.contains(w),
            "rotel's debug output lacks {w:?} ({protocol:?}):\n{}",
            &text[..text.len().min(4000)]
        );
    }
    assert!(
        text.contains("success_after_retry"),
        "the logical span's outcome arrived"
    );
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_receives_our_spans_over_grpc() {
    export_to_rotel(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_receives_our_spans_over_http() {
    export_to_rotel(OtlpProtocol::HttpProtobuf).await;
}
