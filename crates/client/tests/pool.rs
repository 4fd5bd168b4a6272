//! The client's own upstream connections (transport.rs): kept alive and reused, put back only once an answer
//! has been read to its end, and a kept-alive connection the upstream closed between two requests costs the
//! caller nothing (the request goes out on a new connection, as one attempt).
//!
//! The upstream here is a bare HTTP/1.1 server over a TCP listener, so the test sees what the fake upstream
//! hides: how many connections were opened, and what arrived on each.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use retrybudget_client::{Client, ClientConfig, RawRequest};
use retrybudget_telemetry::Telemetry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"fake-model","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// What the server saw: connections accepted, and the `Host` header of every request.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    hosts: std::sync::Mutex<Vec<String>>,
}

/// Serves `POST`s with a fixed completion; each connection is closed after `per_connection` answers (the
/// close comes with no `connection: close` header, as an upstream's idle timeout would).
async fn upstream(per_connection: usize) -> (String, Arc<Seen>) {
    serve(per_connection, true).await
}

/// [`upstream`]; with `answer` false, each request is read whole and its connection closed unanswered.
async fn serve(per_connection: usize, answer: bool) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let server = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            server.connections.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&server);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..per_connection {
                    // One request: its head, then the body its content-length announces.
                    let (head_end, length) = loop {
                        let mut chunk = [0u8; 4096];
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let header = |name: &str| {
                                head.lines()
                                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                            };
                            seen.hosts
                                .lock()
                                .unwrap()
                                .push(header("host:").unwrap_or_default());
                            let length =
                                header("content-length:").map_or(0, |v| v.parse().unwrap());
                            break (end + 4, length);
                        }
                    };
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    buf.drain(..head_end + length);
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    if !answer {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                        ANSWER.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (base, seen)
}

fn chat() -> RawRequest {
    let mut raw = RawRequest::chat(r#"{"model":"fake-model","messages":[]}"#.into());
    raw.model = Some("fake-model".into());
    raw
}

#[tokio::test(flavor = "current_thread")]
async fn sequential_calls_share_one_kept_alive_connection_and_name_the_upstream_host() {
    let (base, seen) = upstream(usize::MAX).await;
    let client = Client::new(ClientConfig::new(base.clone()), Telemetry::local()).unwrap();
    for _ in 0..20 {
        let answer = client.send(chat()).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.attempts, 1);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 20);
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        1,
        "every call after the first must reuse the kept-alive connection"
    );
    let authority = base.trim_start_matches("http://").to_owned();
    assert!(seen.hosts.lock().unwrap().iter().all(|h| *h == authority));
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_the_upstream_closed_while_idle_is_replaced_without_an_attempt() {
    // Every connection answers once and then closes while it sits idle in the client's pool: each call after
    // the first finds its pooled connection closed and must get its answer on a new one, in one attempt.
    let (base, seen) = upstream(1).await;
    let client = Client::new(ClientConfig::new(base), Telemetry::local()).unwrap();
    for i in 0..10 {
        let answer = client.send(chat()).await.unwrap();
        assert_eq!(answer.status, 200, "call {i}");
        assert_eq!(
            answer.attempts, 1,
            "call {i}: a stale pooled connection is not an attempt"
        );
        // Let the close arrive while the connection sits idle in the pool.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 10);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_the_upstream_took_and_dropped_is_sent_once_per_attempt() {
    // The upstream reads each request whole, then hangs up without an answer: hyper cannot hand such a
    // request back, so the pool must not send it again — only the retry loop may, as a counted attempt.
    let (base, seen) = serve(usize::MAX, false).await;
    let client = Client::new(ClientConfig::new(base), Telemetry::local()).unwrap();
    let mut files = RawRequest::chat(r#"{"purpose":"batch"}"#.into());
    files.path = "/v1/files".into();
    files.url_template = "/v1/files".into();
    files.repeatable = false;
    let failed = client.send(files).await.unwrap_err();
    assert_eq!(
        failed.attempts, 1,
        "a request that must not be repeated gets one attempt"
    );
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        1,
        "and reaches the upstream once"
    );

    let failed = client.send(chat()).await.unwrap_err();
    assert!(failed.attempts > 1, "a chat completion is retried");
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        1 + failed.attempts as usize,
        "each attempt reaches the upstream exactly once"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_calls_open_one_connection_each_and_reuse_them_after() {
    let (base, seen) = upstream(usize::MAX).await;
    let client = Client::new(ClientConfig::new(base), Telemetry::local()).unwrap();
    for _ in 0..3 {
        let calls = (0..4).map(|_| client.send(chat()));
        for answer in futures_util::future::join_all(calls).await {
            assert_eq!(answer.unwrap().status, 200);
        }
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 12);
    // HTTP/1.1 carries one request at a time: four at once need four connections, and no more after that.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 4);
}
