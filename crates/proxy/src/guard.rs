//! The middleware in front of every route but `/healthz`: who sent the request ([`crate::access`]), whether
//! its path may be joined to the upstream ([`crate::path`]), and whether there is room for one more request.
//!
//! Everything here happens before a body byte is read and before anything is sent upstream. A refusal is
//! answered locally in the OpenAI error shape and counted in `retrybudget.proxy.rejected{reason}`; nothing of
//! the request (host, origin, path, token) is logged or echoed.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::ProxyState;
use crate::access::Refusal;
use crate::{handler, path, response};

/// How long a browser may cache a preflight answer for an allowed origin (seconds).
const PREFLIGHT_MAX_AGE: &str = "600";

/// The checks, then the route, then CORS headers for an allowed origin.
pub(crate) async fn guard(state: &ProxyState, request: Request) -> Response {
    if request.uri().path() == "/healthz" {
        return handler::route(state, request).await;
    }
    let refuse = |refusal: Refusal| {
        state
            .client()
            .telemetry()
            .record_proxy_rejected(refusal.reason());
        response::refused(refusal)
    };
    let (parts, body) = request.into_parts();
    let access = &state.config().access;
    let origin = match access.check_site(&parts) {
        Ok(origin) => origin,
        Err(refusal) => return refuse(refusal),
    };
    if let Some(origin) = &origin
        && parts.method == Method::OPTIONS
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return preflight(
            origin,
            parts.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS),
        );
    }
    if let Err(refusal) = access.check_caller(&parts) {
        return refuse(refusal);
    }
    let mut permit = None;
    if parts.uri.path().starts_with("/v1/") {
        let path_and_query = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
        let checked =
            path::check(parts.uri.path()).and_then(|()| state.check_joined(path_and_query));
        if let Err(error) = checked {
            state
                .client()
                .telemetry()
                .record_proxy_rejected(Refusal::Path.reason());
            return response::bad_path(error.message());
        }
        match state.in_flight().clone().try_acquire_owned() {
            Ok(p) => permit = Some(p),
            Err(_) => return refuse(Refusal::Overloaded),
        }
    }
    let response = handler::route(state, Request::from_parts(parts, body)).await;
    let mut response = match permit {
        // The request stays in flight until its response body (a stream, maybe) is finished or dropped.
        Some(permit) => response.map(|inner| {
            Body::new(Holding {
                inner,
                _permit: permit,
            })
        }),
        None => response,
    };
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// The answer to a CORS preflight from an allowed origin.
fn preflight(origin: &HeaderValue, requested: Option<&HeaderValue>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    if let Some(requested) = requested {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

/// A response body holding an in-flight permit until it is finished or dropped.
struct Holding {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
