//! A committed stream whose caller stops reading still ends at its idle limit: the proxy's relay reads the
//! stream on a task of its own, so the limit holds without the caller polling the body. Without that task the
//! call would stay open (and the upstream connection with it) for as long as the caller keeps the socket.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use retrybudget_client::{Client, ClientConfig};
use retrybudget_policy::PolicyConfig;
use retrybudget_proxy::{ProxyConfig, ProxyState, serve};
use retrybudget_telemetry::Telemetry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const IDLE: Duration = Duration::from_millis(300);

/// An upstream that answers any request with an endless, fast SSE stream of 16 KiB events; `closed` turns true
/// when a write fails (the proxy dropped the connection).
async fn endless_upstream(closed: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let _ = conn.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let event = format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(16 * 1024)
        );
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        if conn.write_all(head.as_bytes()).await.is_err() {
            closed.store(true, Ordering::SeqCst);
            return;
        }
        loop {
            if conn.write_all(chunk.as_bytes()).await.is_err() {
                closed.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_caller_stops_reading_ends_at_its_idle_limit() {
    let closed = Arc::new(AtomicBool::new(false));
    let upstream = endless_upstream(Arc::clone(&closed)).await;
    let client = Client::new(
        ClientConfig {
            policy: PolicyConfig {
                per_attempt_timeout: Some(IDLE),
                ..PolicyConfig::default()
            },
            ..ClientConfig::new(format!("http://{upstream}"))
        },
        Telemetry::local(),
    )
    .unwrap();
    let state = ProxyState::new(client, ProxyConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));

    // The caller sends a streaming request, reads the head, then stops reading with the socket open.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut caller = socket.connect(addr).await.unwrap();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    caller.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 1024];
    let n = caller.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    let stopped_reading = Instant::now();

    // The call ends as interrupted (a timeout after commit) and the upstream connection is dropped, within a
    // small factor of the idle limit, although the caller never reads again.
    let interrupted = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("retrybudget_calls_total{")
                && l.contains("=\"stream_interrupted\"")
                && !l.ends_with(" 0")
        })
    };
    let until = stopped_reading + IDLE * 10;
    while !(interrupted(&state.client().telemetry().prometheus_text())
        && closed.load(Ordering::SeqCst))
    {
        assert!(
            Instant::now() < until,
            "still open {:?} after the caller stopped reading (idle limit {IDLE:?}); upstream closed: {}",
            stopped_reading.elapsed(),
            closed.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stopped_reading.elapsed() >= IDLE,
        "not before the idle limit"
    );
    drop(caller);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
}
