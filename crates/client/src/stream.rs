//! A streaming call after its head: SSE bytes handed on as they arrive, never buffered whole.
//!
//! The call commits when its first chunk is handed to the caller; from then on a failure — an error from the
//! upstream, or a body that ends without `data: [DONE]` — ends the call as `stream_interrupted` and is never
//! retried. A stream that stalls longer than the per-attempt timeout between chunks, or runs past the call's
//! deadline, is cut the same way. Lines are scanned (not stored; see [`crate::sse`]) for `[DONE]`, ids, finish
//! reasons and usage; only the last finish reason of each choice is kept.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use retrybudget_policy::{AttemptResult, FailureKind, Outcome, ResponseHead};

use crate::ByteStream;
use crate::inflight::Inflight;
use crate::sse::{SseLine, SseLines, classify};

/// Why a stream ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The upstream failed after output had reached the caller; not retried.
    #[error(
        "the upstream stream was interrupted after output reached the caller (stream_interrupted); re-issue the request if partial output is unusable"
    )]
    Interrupted,
}

/// SSE bytes of a committed streaming call.
pub struct ChatStream {
    run: Option<Inflight>,
    first: Option<Bytes>,
    rest: ByteStream,
    version: Option<&'static str>,
    lines: SseLines,
    saw_done: bool,
    /// Whether the body is complete only with `data: [DONE]` (chat and legacy completion streams); other
    /// bodies passed through are complete when they end.
    require_done: bool,
    outcome: Option<Outcome>,
    /// When waiting for the next chunk must end: the per-attempt timeout (as an idle limit) bounded by the
    /// call's deadline, re-armed after every chunk. A stalled upstream can't hold the caller past either.
    stall: Pin<Box<tokio::time::Sleep>>,
    /// Resolves at shutdown ([`crate::Client::cancel_inflight`]): the stream then ends as `cancelled`.
    cancelled: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("saw_done", &self.saw_done)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl ChatStream {
    pub(crate) fn new(
        run: Inflight,
        first: Bytes,
        rest: ByteStream,
        version: Option<&'static str>,
        require_done: bool,
    ) -> Self {
        let stall = Box::pin(tokio::time::sleep(run.attempt_timeout()));
        let cancelled = Box::pin(run.client().cancelled());
        ChatStream {
            cancelled,
            stall,
            run: Some(run),
            first: Some(first),
            rest,
            version,
            lines: SseLines::default(),
            saw_done: false,
            require_done,
            outcome: None,
        }
    }

    /// How long the stream may still wait for its next chunk: the per-attempt timeout as an idle limit,
    /// bounded by the call's deadline (`None` once it has ended). A relay that cannot hand chunks on (its
    /// reader stopped reading) uses it to keep both limits without polling the stream.
    pub fn time_left(&self) -> Option<std::time::Duration> {
        self.run.as_ref().map(Inflight::attempt_timeout)
    }

    /// Ends the call now as a `timeout` after its commit point (`stream_interrupted`), dropping the upstream
    /// connection: for a relay whose reader stopped reading past [`ChatStream::time_left`].
    pub fn time_out(&mut self) {
        self.finish(&AttemptResult::Failure(FailureKind::Timeout));
    }

    /// The terminal outcome, once the stream has ended.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    fn scan(&mut self, chunk: &[u8]) {
        if !self.require_done {
            return;
        }
        let (saw_done, run) = (&mut self.saw_done, &mut self.run);
        self.lines.feed(chunk, |line| on_line(line, saw_done, run));
    }

    fn scan_end(&mut self) {
        let (saw_done, run) = (&mut self.saw_done, &mut self.run);
        self.lines.finish(|line| on_line(line, saw_done, run));
    }

    fn finish(&mut self, result: &AttemptResult<'_>) {
        if let Some(mut run) = self.run.take() {
            let d = run.end_attempt(result, Some(200), self.version);
            self.outcome = d.outcome;
        }
    }
}

fn on_line(line: &[u8], saw_done: &mut bool, run: &mut Option<Inflight>) {
    match classify(line) {
        SseLine::Done => *saw_done = true,
        SseLine::Data(data) => {
            if let (Some(run), Ok(f)) = (
                run.as_mut(),
                serde_json::from_slice::<crate::Facts<'_>>(data),
            ) {
                run.merge_facts(f);
            }
        }
        SseLine::Other => {}
    }
}

impl Stream for ChatStream {
    type Item = Result<Bytes, StreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.run.is_none() {
            return Poll::Ready(None);
        }
        if this.cancelled.as_mut().poll(cx).is_ready() {
            // Shutdown: dropping the run writes the `cancelled` evidence before the final flush.
            this.run = None;
            this.outcome = Some(Outcome::Cancelled);
            return Poll::Ready(Some(Err(StreamError::Interrupted)));
        }
        if let Some(first) = this.first.take() {
            if let Some(run) = this.run.as_mut() {
                run.commit();
            }
            this.scan(&first);
            return Poll::Ready(Some(Ok(first)));
        }
        match this.rest.poll_next_unpin(cx) {
            Poll::Pending => {
                if this.stall.as_mut().poll(cx).is_ready() {
                    this.finish(&AttemptResult::Failure(FailureKind::Timeout));
                    return Poll::Ready(Some(Err(StreamError::Interrupted)));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(chunk))) => {
                this.scan(&chunk);
                if let Some(run) = &this.run {
                    let next = tokio::time::Instant::now() + run.attempt_timeout();
                    this.stall.as_mut().reset(next);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(_))) => {
                this.finish(&AttemptResult::Failure(FailureKind::StreamInterrupted));
                Poll::Ready(Some(Err(StreamError::Interrupted)))
            }
            Poll::Ready(None) => {
                if this.require_done {
                    this.scan_end();
                }
                if this.saw_done || !this.require_done {
                    this.finish(&AttemptResult::Response(ResponseHead::status(200)));
                    Poll::Ready(None)
                } else {
                    this.finish(&AttemptResult::Failure(FailureKind::StreamInterrupted));
                    Poll::Ready(Some(Err(StreamError::Interrupted)))
                }
            }
        }
    }
}
