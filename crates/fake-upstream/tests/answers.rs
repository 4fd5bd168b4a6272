//! Well-formed answers: completion JSON, SSE streams, models, echo, scripted order, headers, delays.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use retrybudget_fake_upstream::Step;

#[tokio::test]
async fn completion_json_has_openai_shape_and_usage() {
    let up = start().await;
    let resp = chat(&client(), &up).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().contains_key("x-request-id"));
    let v = json(&resp.bytes().await.unwrap());
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-fake-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("fake upstream"));
    assert!(
        !content.contains("0123456789"),
        "the prompt must never be echoed"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // 40 characters of content → 10 prompt tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 10);
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion > 0);
    assert_eq!(v["usage"]["total_tokens"], 10 + completion);
    up.shutdown().await;
}

#[tokio::test]
async fn unparsable_request_gets_defaults() {
    let up = start().await;
    let resp = post(&client(), &up, "/v1/chat/completions", "{not json")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = json(&resp.bytes().await.unwrap());
    assert_eq!(v["model"], "fake-model");
    assert_eq!(v["usage"]["prompt_tokens"], 1);
    up.shutdown().await;
}

#[tokio::test]
async fn sse_stream_has_chunks_usage_and_done() {
    let up = start().await;
    let resp = post(&client(), &up, "/v1/chat/completions", CHAT_STREAM)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    let events = sse_data(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 4);
    let id = chunks[0]["id"].as_str().unwrap();
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], "gpt-test");
        if let Some(s) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(s);
        }
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text, "This is a reply from the retrybudget fake upstream.");
    let usage_chunk = &chunks[chunks.len() - 1];
    assert_eq!(usage_chunk["choices"], serde_json::json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 1);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], serde_json::json!({}));
    for c in &chunks[..chunks.len() - 2] {
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
    up.shutdown().await;
}

#[tokio::test]
async fn sse_without_include_usage_has_no_usage_chunk() {
    let up = start().await;
    let resp = post(
        &client(),
        &up,
        "/v1/chat/completions",
        r#"{"stream":true,"messages":[]}"#,
    )
    .await
    .unwrap();
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        assert!(v.get("usage").is_none());
        assert_eq!(v["choices"].as_array().unwrap().len(), 1);
        assert_eq!(v["model"], "fake-model");
    }
    up.shutdown().await;
}

#[tokio::test]
async fn models_echo_and_unknown_paths() {
    let up = start().await;
    let c = client();
    let resp = c
        .get(format!("{}/v1/models", up.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = json(&resp.bytes().await.unwrap());
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "fake-model");
    assert_eq!(v["data"][0]["owned_by"], "retrybudget");

    let resp = post(&c, &up, "/v1/embeddings", "{}").await.unwrap();
    assert_eq!(resp.status(), 200);
    let v = json(&resp.bytes().await.unwrap());
    assert_eq!(v["object"], "fake.echo");
    assert_eq!(v["path"], "/v1/embeddings");

    let resp = c
        .get(format!("{}/elsewhere", up.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Two /v1 attempts counted; the 404 outside /v1 is not.
    assert_eq!(up.attempts(), 2);
    up.shutdown().await;
}

#[tokio::test]
async fn script_is_consumed_in_order_then_default_applies() {
    let up = start().await;
    up.push([
        Step::status(503),
        Step::status(429),
        Step::status(400).error_code("invalid_value"),
    ]);
    up.push([Step::status(401)]);
    let c = client();
    let mut got = Vec::new();
    for _ in 0..6 {
        let resp = chat(&c, &up).await;
        let status = resp.status().as_u16();
        let v = json(&resp.bytes().await.unwrap());
        got.push((
            status,
            v["error"]["type"].as_str().map(str::to_owned),
            v["error"]["code"].as_str().map(str::to_owned),
        ));
    }
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        got,
        vec![
            (503, s("server_error"), None),
            (429, s("requests"), s("rate_limit_exceeded")),
            (400, s("invalid_request_error"), s("invalid_value")),
            (401, s("invalid_request_error"), s("invalid_api_key")),
            (200, None, None),
            (200, None, None),
        ]
    );
    up.set_default(Step::status(502));
    assert_eq!(chat(&c, &up).await.status(), 502);
    up.push([Step::ok()]);
    assert_eq!(chat(&c, &up).await.status(), 200);
    assert_eq!(chat(&c, &up).await.status(), 502);
    assert_eq!(up.attempts(), 9);
    up.shutdown().await;
}

#[tokio::test]
async fn error_body_is_openai_shaped_and_sanitised() {
    let up = start().await;
    up.push([Step::status(429)
        .error_code("insufficient_quota")
        .header("x-should-retry", "false")]);
    let resp = chat(&client(), &up).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let v = json(&resp.bytes().await.unwrap());
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert!(v["error"]["param"].is_null());
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("fake upstream"));
    assert!(!message.contains("0123456789"));
    up.shutdown().await;
}

#[tokio::test]
async fn streaming_request_with_error_status_gets_json_error() {
    let up = start().await;
    up.push([Step::status(503)]);
    let resp = post(&client(), &up, "/v1/chat/completions", CHAT_STREAM)
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v = json(&resp.bytes().await.unwrap());
    assert_eq!(v["error"]["type"], "server_error");
    up.shutdown().await;
}

#[tokio::test]
async fn scripted_headers_are_sent() {
    let up = start().await;
    up.push([
        Step::status(429)
            .header("Retry-After", "2")
            .header("retry-after-ms", "1500")
            .header("x-ratelimit-reset-requests", "1s"),
        Step::ok().header("x-should-retry", "true"),
    ]);
    let c = client();
    let resp = chat(&c, &up).await;
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(resp.headers()["retry-after-ms"], "1500");
    assert_eq!(resp.headers()["x-ratelimit-reset-requests"], "1s");
    let resp = chat(&c, &up).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-should-retry"], "true");
    assert!(!resp.headers().contains_key("retry-after"));
    up.shutdown().await;
}

#[tokio::test]
async fn delay_before_head_is_honoured() {
    let up = start().await;
    up.push([Step::ok().delay(Duration::from_millis(150))]);
    let began = Instant::now();
    let resp = chat(&client(), &up).await;
    assert!(began.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.status(), 200);
    up.shutdown().await;
}

#[tokio::test]
async fn chunk_delay_spaces_sse_chunks() {
    let up = start().await;
    up.push([Step::ok().chunk_delay(Duration::from_millis(30))]);
    let began = Instant::now();
    let resp = post(&client(), &up, "/v1/chat/completions", CHAT_STREAM)
        .await
        .unwrap();
    let events = sse_data(&resp.text().await.unwrap());
    // n events + [DONE] → n pauses between them.
    let pauses = u32::try_from(events.len() - 1).unwrap();
    assert!(began.elapsed() >= Duration::from_millis(30) * pauses);
    assert_eq!(events.last().unwrap(), "[DONE]");
    up.shutdown().await;
}

#[tokio::test]
async fn keep_alive_connection_serves_many_requests() {
    let up = start().await;
    let c = client();
    for _ in 0..20 {
        let resp = chat(&c, &up).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!(up.attempts(), 20);
    let recs = up.requests();
    assert_eq!(recs.len(), 20);
    assert!(
        recs.windows(2)
            .all(|w| w[0].received_at <= w[1].received_at)
    );
    up.shutdown().await;
}
