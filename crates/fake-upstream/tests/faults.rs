//! Injected faults and load modes, seen from a real client and from a raw socket.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use retrybudget_fake_upstream::{Fault, LoadMode, Step};

const RAW_CHAT: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";

#[tokio::test]
async fn close_before_head_sends_nothing() {
    let up = start().await;
    up.push([Step::with_fault(Fault::CloseBeforeHead)]);
    let (bytes, _err) = raw(up.addr(), RAW_CHAT).await;
    assert!(bytes.is_empty(), "got {} bytes", bytes.len());

    up.push([Step::ok()
        .delay(Duration::from_millis(80))
        .fault(Fault::CloseBeforeHead)]);
    let began = Instant::now();
    let err = chat_result(&up, common::CHAT).await.unwrap_err();
    assert!(began.elapsed() >= Duration::from_millis(80));
    assert!(!err.is_status() && err.status().is_none(), "{err:?}");
    // Both attempts arrived and were counted; the server keeps serving.
    assert_eq!(up.attempts(), 2);
    assert_eq!(chat(&client(), &up).await.status(), 200);
    up.shutdown().await;
}

async fn chat_result(
    up: &retrybudget_fake_upstream::FakeUpstream,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    post(&client(), up, "/v1/chat/completions", body).await
}

#[tokio::test]
async fn reset_mid_body_on_json_fails_while_reading_the_body() {
    let up = start().await;
    up.push([Step::with_fault(Fault::ResetMidBody)]);
    let resp = chat(&client(), &up).await;
    assert_eq!(resp.status(), 200);
    let declared: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(declared > 0);
    assert!(resp.bytes().await.is_err());

    // On the wire: a head and part of the body, then the connection ends.
    up.push([Step::with_fault(Fault::ResetMidBody)]);
    let (bytes, _err) = raw(up.addr(), RAW_CHAT).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(!body.is_empty());
    assert!(serde_json::from_str::<serde_json::Value>(body).is_err());
    up.shutdown().await;
}

#[tokio::test]
async fn reset_mid_body_on_sse_fails_while_streaming() {
    let up = start().await;
    up.push([Step::with_fault(Fault::ResetMidBody)]);
    let mut resp = chat_result(&up, CHAT_STREAM).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (received, err) = read_chunks(&mut resp).await;
    assert!(err.is_some(), "the stream must end with an error");
    assert!(!received.contains("[DONE]"));
    up.shutdown().await;
}

/// Reads a streamed body: (text received, the error that ended it if any).
async fn read_chunks(resp: &mut reqwest::Response) -> (String, Option<reqwest::Error>) {
    let mut text = String::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(None) => return (text, None),
            Err(e) => return (text, Some(e)),
        }
    }
}

#[tokio::test]
async fn cut_stream_after_ends_cleanly_without_done() {
    let up = start().await;
    up.push([Step::with_fault(Fault::CutStreamAfter(2))]);
    let mut resp = chat_result(&up, CHAT_STREAM).await.unwrap();
    let (text, err) = read_chunks(&mut resp).await;
    assert!(err.is_none(), "{err:?}");
    let events = sse_data(&text);
    assert_eq!(events.len(), 2);
    assert!(!text.contains("[DONE]"));
    for e in &events {
        serde_json::from_str::<serde_json::Value>(e).unwrap();
    }
    up.shutdown().await;
}

#[tokio::test]
async fn abort_stream_after_sends_chunks_then_errors() {
    let up = start().await;
    up.push([Step::ok()
        .chunk_delay(Duration::from_millis(5))
        .fault(Fault::AbortStreamAfter(3))]);
    let mut resp = chat_result(&up, CHAT_STREAM).await.unwrap();
    let (text, err) = read_chunks(&mut resp).await;
    assert!(err.is_some());
    assert_eq!(sse_data(&text).len(), 3);
    assert!(!text.contains("[DONE]"));
    up.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_a_200_with_an_unparsable_body() {
    let up = start().await;
    up.push([
        Step::with_fault(Fault::MalformedJson),
        Step::with_fault(Fault::MalformedJson),
    ]);
    for body in [common::CHAT, CHAT_STREAM] {
        let resp = chat_result(&up, body).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let bytes = resp.bytes().await.unwrap();
        assert!(!bytes.is_empty());
        assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_err());
    }
    up.shutdown().await;
}

#[tokio::test]
async fn fail_percent_is_deterministic_for_a_seed() {
    let up = start().await;
    let c = client();
    let mut runs = Vec::new();
    for _ in 0..2 {
        up.reset();
        up.set_load(LoadMode::fail_percent(10.0, 503, 42));
        let mut pattern = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let resp = chat(&c, &up).await;
            let status = resp.status().as_u16();
            resp.bytes().await.unwrap();
            assert!(status == 200 || status == 503);
            pattern.push(status == 503);
        }
        runs.push(pattern);
    }
    let failures = runs[0].iter().filter(|f| **f).count();
    assert!((70..=130).contains(&failures), "{failures} failures");
    assert_eq!(runs[0], runs[1], "same seed, same failures");
    // A scripted step takes precedence over the load mode.
    up.set_load(LoadMode::fail_percent(100.0, 503, 1));
    up.push([Step::status(201)]);
    assert_eq!(chat(&c, &up).await.status(), 201);
    assert_eq!(chat(&c, &up).await.status(), 503);
    up.set_load(LoadMode::None);
    assert_eq!(chat(&c, &up).await.status(), 200);
    up.shutdown().await;
}

/// The fake judges a request by its arrival time relative to when the load mode was set. Instants taken just
/// before and just after `set_load` bracket that moment, so each request's expected status follows from the
/// fake's own record of its arrival — nothing is skipped on a slow machine, and a bound that a loaded machine
/// could miss fails loudly instead of passing vacuously.
#[tokio::test]
async fn outage_window_fails_then_recovers() {
    let up = start().await;
    let c = client();
    let window = Duration::from_secs(2);
    let before = Instant::now();
    up.set_load(LoadMode::outage(Duration::ZERO, window, 503));
    let after = Instant::now();
    let resp = chat(&c, &up).await;
    let arrived = up.requests().last().unwrap().received_at;
    assert!(
        arrived.saturating_duration_since(before) < window,
        "the first request must arrive inside the {window:?} window (took {:?})",
        arrived.saturating_duration_since(before)
    );
    assert_eq!(resp.status(), 503, "inside the outage window");
    tokio::time::sleep(window.saturating_sub(after.elapsed()) + Duration::from_millis(20)).await;
    let resp = chat(&c, &up).await;
    let arrived = up.requests().last().unwrap().received_at;
    assert!(arrived.saturating_duration_since(after) >= window);
    assert_eq!(resp.status(), 200, "after the outage window");

    // A window in the future: fine now, failing later.
    let starts = Duration::from_secs(1);
    let before = Instant::now();
    up.set_load(LoadMode::outage(starts, Duration::from_secs(60), 500));
    let after = Instant::now();
    let resp = chat(&c, &up).await;
    let arrived = up.requests().last().unwrap().received_at;
    assert!(
        arrived.saturating_duration_since(before) < starts,
        "the request must arrive before the window opens after {starts:?} (took {:?})",
        arrived.saturating_duration_since(before)
    );
    assert_eq!(resp.status(), 200, "before the window");
    tokio::time::sleep(starts.saturating_sub(after.elapsed()) + Duration::from_millis(20)).await;
    assert_eq!(chat(&c, &up).await.status(), 500, "inside the window");
    up.shutdown().await;
}

#[tokio::test]
async fn malformed_http_gets_400_and_the_server_keeps_serving() {
    let up = start().await;
    let (bytes, _) = raw(up.addr(), b"THIS IS NOT HTTP\r\n\r\n").await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(up.attempts(), 0);
    assert_eq!(chat(&client(), &up).await.status(), 200);
    up.shutdown().await;
}

#[tokio::test]
async fn oversize_body_gets_400_and_the_server_keeps_serving() {
    let up = start().await;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{{",
        retrybudget_fake_upstream::MAX_REQUEST_BODY + 1
    );
    let (bytes, _) = raw(up.addr(), request.as_bytes()).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("request_too_large"));
    assert_eq!(chat(&client(), &up).await.status(), 200);
    up.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_connections_in_flight() {
    let up = start().await;
    let addr = up.addr();
    up.push([Step::ok().delay(Duration::from_secs(600))]);
    let pending = tokio::spawn(async move { raw(addr, RAW_CHAT).await });
    while up.attempts() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    up.shutdown().await;
    let (bytes, _) = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("shutdown must close the delayed connection")
        .unwrap();
    assert!(bytes.is_empty());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
