//! The HTTP/1.1 server: the accept loop, request routing and the `/v1/*` answers with their faults.
//!
//! Built on hyper directly because hyper's reactions are the faults we need: a service that returns
//! `Err` makes hyper drop the connection without a response head (`close_before_head`), and a body
//! that yields an error makes it abort mid-body (`reset_mid_body`, `abort_stream_after`).
//! Connection and parse errors are expected here (they are half of the point) and are never logged.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::body::{APPLICATION_JSON, FakeBody, ReadError, Seg, json_response, read_body};
use crate::control;
use crate::openai::{self, AnswerMeta, ChatRequest};
use crate::state::Shared;
use crate::step::{Fault, Step, is_framing_header};

/// Largest `/v1/*` request body the fake reads; larger ones get a 400.
pub const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The service error that makes hyper drop the connection without writing a response.
#[derive(Debug, thiserror::Error)]
#[error("retrybudget fake upstream: connection closed on purpose")]
pub(crate) struct CloseConnection;

/// Accepts connections until `stop` completes, then aborts every open connection.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: impl Future) {
    let mut conns = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                // Transient accept errors (EMFILE, ECONNABORTED): back off briefly, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Dropping the listener stops accepting; aborting the tasks closes every connection, including
    // ones in the middle of a delayed or streaming answer.
    drop(listener);
    conns.shutdown().await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small answers and SSE chunks must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
    let mut builder = http1::Builder::new();
    // No header-read timeout: hyper's would also close idle keep-alive connections after 30 s, and a
    // client racing that close sees a transport error nobody scripted. Clients close idle
    // connections themselves, and shutdown aborts whatever is left.
    builder.header_read_timeout(None);
    // Errors here are client disconnects, parse errors (hyper has already answered 400) or our own
    // injected faults; none of them is worth reporting.
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Routes one request.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, CloseConnection> {
    let path = req.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        v1(&shared, req).await
    } else if path.starts_with("/_control/") {
        Ok(control::handle(&shared, req).await)
    } else {
        Ok(json_response(
            StatusCode::NOT_FOUND,
            openai::error_body_with_message(
                "Unknown path: the fake upstream serves /v1/* and /_control/*.",
                "invalid_request_error",
                Some("not_found"),
            ),
        ))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    ChatCompletions,
    Models,
    Echo,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        match (method, path) {
            (&Method::POST, "/v1/chat/completions") => Route::ChatCompletions,
            (&Method::GET, "/v1/models") => Route::Models,
            _ => Route::Echo,
        }
    }
}

/// Answers one `/v1/*` attempt: record it, take its step, wait, then answer or fail as scripted.
async fn v1(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, CloseConnection> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let body = match read_body(body, MAX_REQUEST_BODY).await {
        Ok(body) => body,
        Err(ReadError::TooLarge(seen)) => {
            shared.record_only(&parts.method, path, &parts.headers, seen);
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                openai::error_body_with_message(
                    "Request body too large for the retrybudget fake upstream (limit 16 MiB).",
                    "invalid_request_error",
                    Some("request_too_large"),
                ),
            ));
        }
        Err(ReadError::Broken) => return Err(CloseConnection),
    };
    let (n, step) = shared.admit(&parts.method, path, &parts.headers, body.len());
    if step.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(step.delay_ms)).await;
    }
    if step.fault == Some(Fault::CloseBeforeHead) {
        return Err(CloseConnection);
    }
    Ok(answer(
        n,
        &step,
        Route::of(&parts.method, path),
        &body,
        path,
    ))
}

enum Payload {
    Json(Bytes),
    Sse(Vec<Bytes>),
}

/// How a streamed answer ends.
enum StreamEnd {
    Done,
    Clean,
    Abort,
}

fn answer(n: u64, step: &Step, route: Route, body: &[u8], path: &str) -> Response<FakeBody> {
    let status = step.status_code();
    let payload = if !status.is_success() {
        let (kind, code) = step.effective_error();
        Payload::Json(openai::error_body(status.as_u16(), kind, code))
    } else {
        match route {
            Route::ChatCompletions => {
                let req = ChatRequest::parse(body);
                let id = format!("chatcmpl-fake-{n}");
                let meta = AnswerMeta {
                    id: &id,
                    created: unix_now(),
                    model: req.model(),
                    usage: req.usage(),
                };
                if req.stream && step.fault != Some(Fault::MalformedJson) {
                    Payload::Sse(openai::sse_events(&meta, req.include_usage))
                } else {
                    Payload::Json(openai::completion(&meta))
                }
            }
            Route::Models => Payload::Json(Bytes::from_static(openai::MODELS_BODY)),
            Route::Echo => Payload::Json(openai::echo(path)),
        }
    };

    let chunk_delay = Duration::from_millis(step.chunk_delay_ms);
    // Before an abort, give hyper one chance to flush what was sent, so the client really sees
    // a head and part of a body rather than a bare close.
    let before_abort = if chunk_delay.is_zero() {
        Seg::Pause(Duration::from_millis(1))
    } else {
        Seg::Pause(chunk_delay)
    };
    let mut content_length = None;
    let (content_type, body) = match payload {
        Payload::Json(json) => {
            let half = json.slice(..json.len() / 2);
            let body = match step.fault {
                Some(Fault::ResetMidBody | Fault::AbortStreamAfter(_)) => {
                    content_length = Some(json.len());
                    FakeBody::scripted(VecDeque::from([Seg::Data(half), before_abort, Seg::Abort]))
                }
                Some(Fault::MalformedJson | Fault::CutStreamAfter(_)) => FakeBody::full(half),
                _ => FakeBody::full(json),
            };
            (APPLICATION_JSON, body)
        }
        Payload::Sse(events) => {
            let total = events.len();
            let (send, end) = match step.fault {
                Some(Fault::ResetMidBody) => (total / 2, StreamEnd::Abort),
                Some(Fault::CutStreamAfter(k)) => (k as usize, StreamEnd::Clean),
                Some(Fault::AbortStreamAfter(k)) => (k as usize, StreamEnd::Abort),
                _ => (total, StreamEnd::Done),
            };
            let mut segs = VecDeque::with_capacity(2 * total + 3);
            for (i, event) in events.into_iter().take(send).enumerate() {
                if i > 0 && !chunk_delay.is_zero() {
                    segs.push_back(Seg::Pause(chunk_delay));
                }
                segs.push_back(Seg::Data(event));
            }
            match end {
                StreamEnd::Done => {
                    if !chunk_delay.is_zero() {
                        segs.push_back(Seg::Pause(chunk_delay));
                    }
                    segs.push_back(Seg::Data(Bytes::from_static(openai::SSE_DONE)));
                }
                StreamEnd::Clean => {}
                StreamEnd::Abort => {
                    segs.push_back(before_abort);
                    segs.push_back(Seg::Abort);
                }
            }
            (EVENT_STREAM, FakeBody::scripted(segs))
        }
    };

    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    if let Ok(id) = HeaderValue::from_str(&format!("req_fake_{n}")) {
        headers.insert(X_REQUEST_ID, id);
    }
    for (name, value) in &step.headers {
        // Invalid names or values can only come through the (unvalidated) Rust API: skip them.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if !is_framing_header(&name) {
            headers.insert(name, value);
        }
    }
    if let Some(len) = content_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    resp
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
