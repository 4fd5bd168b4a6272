//! Recording and the HTTP control API, and the `run` entry point.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use retrybudget_fake_upstream::{FakeUpstream, Step};

#[tokio::test]
async fn records_method_path_headers_and_body_length() {
    let up = start().await;
    let c = client();
    let resp = c
        .post(format!("{}/v1/chat/completions", up.base_url()))
        .header("Authorization", "Bearer sk-test-not-a-secret")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-stainless-retry-count", "1")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    c.get(format!("{}/v1/models", up.base_url()))
        .send()
        .await
        .unwrap();

    let recs = up.requests();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].method, "POST");
    assert_eq!(recs[0].path, "/v1/chat/completions");
    assert_eq!(recs[0].body_len, CHAT.len());
    assert_eq!(
        recs[0].header("authorization"),
        Some("Bearer sk-test-not-a-secret")
    );
    assert_eq!(
        recs[0].headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(recs[0].header("X-Stainless-Retry-Count"), Some("1"));
    assert!(!format!("{:?}", recs[0]).contains("sk-test"));
    assert_eq!(recs[1].method, "GET");
    assert_eq!(recs[1].path, "/v1/models");
    assert_eq!(recs[1].body_len, 0);
    assert!(recs[0].received_at <= recs[1].received_at);

    // The same over HTTP.
    let v = json(
        &c.get(format!("{}/_control/requests", up.base_url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(v["count"], 2);
    let first = &v["requests"][0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/chat/completions");
    assert_eq!(first["body_len"], CHAT.len());
    // Any local process can read the control API: the credential is redacted to its length.
    assert_eq!(
        first["headers"]["authorization"],
        format!("[redacted; {} bytes]", "Bearer sk-test-not-a-secret".len())
    );
    assert!(!v.to_string().contains("sk-test"), "{v}");
    assert!(first["headers"]["traceparent"].is_string());
    assert!(first["at_ms"].is_u64());
    // Control requests are not attempts.
    assert_eq!(up.attempts(), 2);
    up.shutdown().await;
}

async fn control(
    c: &reqwest::Client,
    up: &FakeUpstream,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let resp = c
        .request(method, format!("{}{path}", up.base_url()))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (status, json(&resp.bytes().await.unwrap()))
}

#[tokio::test]
async fn control_api_drives_script_default_load_and_reset() {
    use reqwest::Method;
    let up = start().await;
    let c = client();

    let (status, v) = control(
        &c,
        &up,
        Method::POST,
        "/_control/script",
        r#"[{"status":503},{"status":429,"headers":{"retry-after":"1"}},{"fault":{"cut_stream_after":1}}]"#,
    )
    .await;
    assert_eq!((status, v["queued"].as_u64()), (200, Some(3)));
    let (_, v) = control(
        &c,
        &up,
        Method::POST,
        "/_control/script",
        r#"{"status":500}"#,
    )
    .await;
    assert_eq!(v["queued"], 4);

    let resp = chat(&c, &up).await;
    assert_eq!(resp.status(), 503);
    let resp = chat(&c, &up).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let resp = post(&c, &up, "/v1/chat/completions", CHAT_STREAM)
        .await
        .unwrap();
    assert_eq!(sse_data(&resp.text().await.unwrap()).len(), 1);
    assert_eq!(chat(&c, &up).await.status(), 500);

    let (status, _) = control(
        &c,
        &up,
        Method::PUT,
        "/_control/default",
        r#"{"status":502,"error_code":"bad_gateway"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let v = json(&chat(&c, &up).await.bytes().await.unwrap());
    assert_eq!(v["error"]["code"], "bad_gateway");

    let (status, _) = control(
        &c,
        &up,
        Method::PUT,
        "/_control/load",
        r#"{"mode":"fail_percent","percent":100,"status":504,"seed":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(chat(&c, &up).await.status(), 504);
    let (status, _) = control(
        &c,
        &up,
        Method::PUT,
        "/_control/load",
        r#"{"mode":"outage","from_ms":0,"until_ms":60000,"status":503}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(chat(&c, &up).await.status(), 503);
    let (status, _) = control(&c, &up, Method::PUT, "/_control/load", r#"{"mode":"none"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(chat(&c, &up).await.status(), 502);

    let (_, v) = control(&c, &up, Method::GET, "/_control/count", "").await;
    assert_eq!(v, serde_json::json!({"count": 8}));

    let (status, v) = control(&c, &up, Method::POST, "/_control/reset", "").await;
    assert_eq!((status, v["ok"].as_bool()), (200, Some(true)));
    let (_, v) = control(&c, &up, Method::GET, "/_control/count", "").await;
    assert_eq!(v["count"], 0);
    let (_, v) = control(&c, &up, Method::GET, "/_control/requests", "").await;
    assert_eq!(v, serde_json::json!({"count": 0, "requests": []}));
    // Reset also restored the default success.
    assert_eq!(chat(&c, &up).await.status(), 200);
    let (status, _) = control(&c, &up, Method::GET, "/_control/health", "").await;
    assert_eq!(status, 200);
    up.shutdown().await;
}

#[tokio::test]
async fn malformed_control_bodies_get_400_that_say_what_is_wrong() {
    use reqwest::Method;
    let up = start().await;
    let c = client();
    let cases = [
        (
            Method::POST,
            "/_control/script",
            "[{",
            "malformed control body",
        ),
        (
            Method::POST,
            "/_control/script",
            r#"[{"stauts":500}]"#,
            "stauts",
        ),
        (
            Method::POST,
            "/_control/script",
            r#"[{"status":"x"}]"#,
            "invalid type",
        ),
        (
            Method::POST,
            "/_control/script",
            r#"[{"status":700}]"#,
            "step 0",
        ),
        (
            Method::POST,
            "/_control/script",
            r#"[{}, {"headers":{"bad name":"x"}}]"#,
            "step 1",
        ),
        (
            Method::POST,
            "/_control/script",
            r#"[{"fault":"explode"}]"#,
            "explode",
        ),
        (Method::PUT, "/_control/default", "", "EOF"),
        (Method::PUT, "/_control/default", "[]", "one step object"),
        (
            Method::PUT,
            "/_control/load",
            r#"{"mode":"flaky"}"#,
            "flaky",
        ),
        (
            Method::PUT,
            "/_control/load",
            r#"{"mode":"fail_percent","percent":150}"#,
            "between 0 and 100",
        ),
        (
            Method::PUT,
            "/_control/load",
            r#"{"mode":"outage","from_ms":10,"until_ms":5}"#,
            "until_ms",
        ),
        (
            Method::PUT,
            "/_control/load",
            r#"{"mode":"none","percent":1}"#,
            "percent",
        ),
    ];
    for (method, path, body, expect) in cases {
        let (status, v) = control(&c, &up, method.clone(), path, body).await;
        assert_eq!(status, 400, "{method} {path} {body}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{body}: {message}");
        assert_eq!(v["error"]["type"], "invalid_control_request");
    }
    // Nothing was queued by the rejected requests.
    assert_eq!(up.control().queued(), 0);

    let (status, _) = control(&c, &up, Method::GET, "/_control/script", "").await;
    assert_eq!(status, 405);
    let (status, _) = control(&c, &up, Method::GET, "/_control/nope", "").await;
    assert_eq!(status, 404);
    assert_eq!(chat(&c, &up).await.status(), 200);
    up.shutdown().await;
}

#[tokio::test]
async fn control_handle_is_shared_and_reset_clears_everything() {
    let up = start().await;
    let handle = up.control();
    let handle2 = handle.clone();
    handle.push([Step::status(503), Step::status(503)]);
    assert_eq!(handle2.queued(), 2);
    let c = client();
    assert_eq!(chat(&c, &up).await.status(), 503);
    assert_eq!(handle2.attempts(), 1);
    handle2.reset();
    assert_eq!(handle.queued(), 0);
    assert_eq!(up.attempts(), 0);
    assert!(up.requests().is_empty());
    assert_eq!(chat(&c, &up).await.status(), 200);
    up.shutdown().await;
}

#[tokio::test]
async fn run_serves_until_shutdown_future_completes() {
    // Reserve a free port, release it, and let `run` bind it.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(retrybudget_fake_upstream::run(addr, async move {
        let _ = stopped.await;
    }));
    let c = client();
    let url = format!("http://{addr}/_control/health");
    let mut ready = false;
    for _ in 0..200 {
        if c.get(&url).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(c.get(&url).send().await.is_err());
}

#[tokio::test]
async fn serve_on_a_listener_and_drop_stops_the_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = FakeUpstream::from_listener(listener).unwrap();
    let addr = up.addr();
    assert_eq!(up.base_url(), format!("http://{addr}"));
    assert_eq!(chat(&client(), &up).await.status(), 200);
    drop(up);
    let mut closed = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed);
}
