//! What the evidence costs per call, in process CPU time (user + system, all threads — the SDK's export
//! threads and the evidence writer included), side by side in one run:
//! 1. a plain reqwest POST: no policy, no telemetry (the baseline);
//! 2. our client with telemetry local only: spans, metrics and Prometheus instruments made, nothing exported;
//! 3. our client with full export: OTLP/gRPC to a collector in another process (rotel, blackhole exporter) plus
//!    the JSONL evidence file.
//!
//! Every variant calls the same in-process fake upstream, whose CPU is included in each. Criterion's "time"
//! below is CPU time per call, not wall time.
//!
//! Run: `cargo bench -p retrybudget-client --bench call` (needs rotel: `pip install --pre rotel`, or
//! `ROTEL_AGENT=/path/to/rotel-agent`). Results are written down in `crates/client/README.md`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cpu_time::ProcessTime;
use criterion::{Criterion, criterion_group, criterion_main};
use retrybudget_client::{ChatRequest, Client, ClientConfig};
use retrybudget_fake_upstream::FakeUpstream;
use retrybudget_telemetry::{OtlpConfig, OtlpProtocol, Telemetry, TelemetryConfig};
use tokio::runtime::Runtime;

/// Measures process CPU time over `iters` sequential calls.
fn cpu_per_call<F: Future>(rt: &Runtime, iters: u64, mut call: impl FnMut() -> F) -> Duration {
    rt.block_on(async {
        let start = ProcessTime::now();
        for _ in 0..iters {
            call().await;
        }
        start.elapsed()
    })
}

struct Rotel(Child);

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_rotel(port: u16) -> Rotel {
    let bin = std::env::var("ROTEL_AGENT").unwrap_or_else(|_| {
        let out = Command::new("python3")
            .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
            .output()
            .expect("python3");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    });
    let child = Command::new(bin)
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{port}"),
            "--otlp-http-endpoint",
            "127.0.0.1:0",
        ])
        .args(["--exporter", "blackhole"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rotel-agent (pip install --pre rotel)");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Rotel(child)
}

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upstream = rt
        .block_on(FakeUpstream::start("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _rotel = start_rotel(port);
    let req = ChatRequest::user("fake-model", "Say OK.");
    let body = serde_json::to_vec(&req).unwrap();
    let url = format!("{}/v1/chat/completions", upstream.base_url());

    let plain = reqwest::Client::new();
    let local = rt.block_on(async {
        Client::new(ClientConfig::new(upstream.base_url()), Telemetry::local()).unwrap()
    });
    let mut g = c.benchmark_group("cpu per call");
    g.bench_function("1 plain reqwest POST", |b| {
        b.iter_custom(|iters| {
            cpu_per_call(&rt, iters, || async {
                let r = plain
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                r.bytes().await.unwrap()
            })
        })
    });
    g.bench_function("2 client, telemetry local only", |b| {
        b.iter_custom(|iters| {
            cpu_per_call(&rt, iters, || async { local.chat(&req).await.unwrap() })
        })
    });
    // Built only now, so its export threads don't run during the other variants.
    let full = rt.block_on(async {
        let e = format!("http://127.0.0.1:{port}");
        let config = TelemetryConfig {
            otlp: Some(OtlpConfig {
                protocol: OtlpProtocol::Grpc,
                traces_endpoint: e.clone(),
                metrics_endpoint: e.clone(),
                logs_endpoint: e,
                timeout: Duration::from_secs(5),
            }),
            metric_interval: Duration::from_secs(1),
            evidence_file: Some(dir.path().join("evidence.jsonl")),
            ..TelemetryConfig::default()
        };
        Client::new(
            ClientConfig::new(upstream.base_url()),
            Telemetry::init(&config).unwrap(),
        )
        .unwrap()
    });

    g.bench_function("3 client, full export (OTLP gRPC to rotel + JSONL)", |b| {
        b.iter_custom(|iters| cpu_per_call(&rt, iters, || async { full.chat(&req).await.unwrap() }))
    });
    g.finish();
    let dropped = full
        .telemetry()
        .dropped(retrybudget_telemetry::export::TRACES);
    let t = full.telemetry().clone();
    rt.block_on(async move {
        tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(5)))
            .await
            .unwrap()
    });
    assert_eq!(
        dropped, 0,
        "the collector accepted every span during the benchmark"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = calls
}
criterion_main!(benches);
