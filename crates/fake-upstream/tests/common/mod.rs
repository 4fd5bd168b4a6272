//! Helpers shared by the integration tests: a started fake, a proxy-free client and a raw socket.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;

use retrybudget_fake_upstream::FakeUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn start() -> FakeUpstream {
    FakeUpstream::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap()
}

/// A fresh client (a fresh connection pool), ignoring any proxy variables of the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"0123456789012345678901234567890123456789"}]}"#;
pub const CHAT_STREAM: &str = r#"{"model":"gpt-test","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello"}]}"#;

pub async fn post(
    client: &reqwest::Client,
    up: &FakeUpstream,
    path: &str,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}{path}", up.base_url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
}

pub async fn chat(client: &reqwest::Client, up: &FakeUpstream) -> reqwest::Response {
    post(client, up, "/v1/chat/completions", CHAT)
        .await
        .unwrap()
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Sends raw bytes and reads until EOF or error: (bytes read, the read error if any).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, Option<std::io::Error>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
        .collect()
}
