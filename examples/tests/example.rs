//! `tracing_service` (built by `cargo test` with the other examples) against the fake upstream, exporting to a
//! real OTLP receiver: the tree it exported is `ask` → `chat fake-model` → one span per attempt, one trace.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use retrybudget_fake_upstream::{FakeUpstream, Step};
use retrybudget_testkit::proto::tonic::trace::v1::span::SpanKind;
use retrybudget_testkit::{OtlpReceiver, ReceivedSpan};

fn example_bin() -> std::path::PathBuf {
    // target/debug/deps/example-HASH → target/debug/examples/tracing_service
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("tracing_service")
}

fn print_tree(
    spans: &[ReceivedSpan],
    parent: Option<&ReceivedSpan>,
    depth: usize,
    out: &mut String,
) {
    for s in spans {
        let is_child = match parent {
            None => s.is_root(),
            Some(p) => s.is_child_of(p),
        };
        if is_child {
            out.push_str(&format!(
                "{}{} [{:?}] trace={} span={} parent={}\n",
                "  ".repeat(depth),
                s.name(),
                s.kind(),
                &s.trace_id_hex()[..8],
                &s.span_id_hex()[..8],
                s.parent_span_id_hex()
                    .map(|p| p[..8].to_owned())
                    .unwrap_or_else(|| "-".into())
            ));
            print_tree(spans, Some(s), depth + 1, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_exports_one_trace_per_request() {
    let upstream = FakeUpstream::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // First question: the client's call meets a 503 and retries; everything else answers 200.
    upstream.push([Step::status(503), Step::ok()]);
    let receiver = OtlpReceiver::start().await.unwrap();
    let bin = example_bin();
    assert!(bin.exists(), "{} is built by `cargo test`", bin.display());
    let out = tokio::process::Command::new(&bin)
        .env("OPENAI_BASE_URL", upstream.base_url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env_remove("OPENAI_API_KEY")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("telemetry flushed: true"), "{stdout}");

    let spans = receiver.spans();
    let mut tree = String::new();
    print_tree(&spans, None, 0, &mut tree);
    println!("trace tree exported by tracing_service:\n{tree}");
    let asks = receiver.spans_named("ask");
    assert_eq!(asks.len(), 2, "{tree}");
    for ask in &asks {
        assert!(ask.is_root(), "{tree}");
        let calls = receiver.children_of(ask);
        assert_eq!(
            calls.len(),
            2,
            "client + middleware call under each ask:\n{tree}"
        );
        for call in &calls {
            assert_eq!(call.name(), "chat fake-model");
            assert_eq!(call.kind(), SpanKind::Client);
            let attempts = receiver.children_of(call);
            assert!(!attempts.is_empty(), "{tree}");
            for a in &attempts {
                assert_eq!(a.name(), "POST /v1/chat/completions");
                assert_eq!(a.trace_id_hex(), ask.trace_id_hex());
            }
        }
    }
    assert_eq!(upstream.attempts(), 5, "4 calls, one retried");
    assert_eq!(spans.len(), 2 + 4 + 5, "{tree}");
    receiver.shutdown().await;
    upstream.shutdown().await;
}
