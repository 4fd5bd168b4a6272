//! Bodies in and out. Out: the response body, either one ready buffer (the fast path) or a short script of
//! data, pauses and an abort (SSE streams and mid-body faults). In: a request body read whole, under a limit.
//! Both the `/v1/*` answers (`server`) and the control API (`control`) use them.
//!
//! An abort is a body error; hyper reacts to it by tearing the connection down, which is exactly
//! what a client sees when an upstream dies mid-answer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

pub(crate) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Error a scripted body yields to make hyper abort the connection.
#[derive(Debug, thiserror::Error)]
#[error("retrybudget fake upstream: injected fault aborted the connection mid-body")]
pub(crate) struct InjectedAbort;

/// One step of a scripted body.
#[derive(Debug)]
pub(crate) enum Seg {
    Data(Bytes),
    Pause(Duration),
    Abort,
}

/// The body of every answer the fake sends.
#[derive(Debug)]
pub(crate) enum FakeBody {
    /// One buffer, sent at once (`None` once sent, or when empty).
    Full(Option<Bytes>),
    /// Data, pauses and an optional abort, in order.
    Scripted {
        segs: VecDeque<Seg>,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

impl FakeBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        FakeBody::Full((!bytes.is_empty()).then_some(bytes))
    }

    pub(crate) fn scripted(segs: VecDeque<Seg>) -> Self {
        FakeBody::Scripted { segs, sleep: None }
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = InjectedAbort;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InjectedAbort>>> {
        match self.get_mut() {
            FakeBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Scripted { segs, sleep } => loop {
                if let Some(pending) = sleep.as_mut() {
                    ready!(pending.as_mut().poll(cx));
                    *sleep = None;
                }
                match segs.pop_front() {
                    None => return Poll::Ready(None),
                    Some(Seg::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Some(Seg::Pause(d)) => {
                        if !d.is_zero() {
                            *sleep = Some(Box::pin(tokio::time::sleep(d)));
                        }
                    }
                    Some(Seg::Abort) => return Poll::Ready(Some(Err(InjectedAbort))),
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FakeBody::Full(bytes) => bytes.is_none(),
            FakeBody::Scripted { segs, sleep } => segs.is_empty() && sleep.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            FakeBody::Scripted { .. } => SizeHint::default(),
        }
    }
}

/// Why a request body could not be read.
pub(crate) enum ReadError {
    /// More than the limit (bytes seen so far, or the declared length).
    TooLarge(usize),
    /// The client went away or sent a broken body.
    Broken,
}

/// Reads a whole body, up to `limit` bytes, without copying when it arrives in one frame.
pub(crate) async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ReadError> {
    let declared = body.size_hint().lower();
    if declared > limit as u64 {
        return Err(ReadError::TooLarge(
            usize::try_from(declared).unwrap_or(usize::MAX),
        ));
    }
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Broken)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing we need
        };
        seen = seen.saturating_add(data.len());
        if seen > limit {
            return Err(ReadError::TooLarge(seen));
        }
        if let Some(buf) = joined.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(head) = first.take() {
            let mut buf = BytesMut::with_capacity(head.len() + data.len());
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&data);
            joined = Some(buf);
        } else {
            first = Some(data);
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response<FakeBody> {
    let mut resp = Response::new(FakeBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    resp
}
