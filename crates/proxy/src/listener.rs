//! The accept loop: HTTP/1.1 connections served by hyper, each bounded in time, and bounded in number.
//!
//! # Why
//! The proxy holds a provider key and sits in front of the app that needs it; a few idle or slow sockets must
//! not be able to take it away from that app. So:
//! - at most [`Limits::max_connections`] connections are served at once; one more gets a fast local `503`
//!   with `retry-after` and is closed (it is never queued);
//! - a request head must arrive within [`Limits::header_read_timeout`] of its first byte (a caller dribbling
//!   headers is cut off), and a connection with no request for [`Limits::idle_timeout`] is closed (a new
//!   connection that never sends anything included);
//! - the body-read timeout (408) and the in-flight cap (503) live with the handlers ([`crate::handler`]),
//!   which know when a body is being read and when a response is finished.
//!
//! Both connection timers run on a watchdog per connection, independent of whether hyper is being polled
//! for progress: a peer that stops sending cannot hold its timer still.
//!
//! # Connection threads
//! With [`Limits::threads`] > 0, each accepted connection is handed to the least busy of that many threads,
//! each running a single-threaded runtime of its own, and lives there until it closes: its requests, its
//! upstream attempts (the client keeps a connection pool per thread) and its streams. Nothing of a request
//! crosses threads but its telemetry, so a request is not passed between workers by work stealing, which
//! woke a sleeping worker for nearly every request and cost more than the request's own work on a small
//! machine (BENCHMARKS.md). Connections are long-lived (keep-alive), so one hand-off per connection is cheap.
//!
//! # What must never happen
//! - The accept loop stopping because the process ran out of file descriptors (it waits and goes on).
//! - Shutdown waiting for more than the grace period, or accepting new connections after the signal.
//! - An over-cap connection costing more than a small, bounded amount of work.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use retrybudget_telemetry::Telemetry;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Limits of the listener and of request handling; every one is a flag of `retrybudget proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest time from the first byte of a request head to its end (default 10 s).
    pub header_read_timeout: Duration,
    /// Longest time to receive a whole request body once its head arrived (default 30 s); then 408.
    pub body_read_timeout: Duration,
    /// Longest time a connection may stay open without a request in progress (default 60 s).
    pub idle_timeout: Duration,
    /// Connections served at once (default 1024); one more gets a local 503 and is closed.
    pub max_connections: usize,
    /// Proxied requests in progress at once, streams included (default 256); one more gets a local 503.
    pub max_in_flight: usize,
    /// Threads that serve connections (see the module docs); 0 (the default) serves them as tasks of the
    /// runtime [`crate::serve`] runs on.
    pub threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_in_flight: 256,
            threads: 0,
        }
    }
}

/// Seconds a refused caller is told to wait (`retry-after`).
pub(crate) const RETRY_AFTER_SECS: u32 = 1;

/// The whole answer to a connection over the cap, written without reading its request.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nx-retrybudget-attempts: 0\r\nconnection: close\r\ncontent-length: 156\r\n\r\n{\"error\":{\"message\":\"the retrybudget proxy is at its connection limit; retry shortly\",\"type\":\"overloaded_error\",\"param\":null,\"code\":\"too_many_connections\"}}";

/// How many over-cap connections may be in the middle of being refused at once; past it they are dropped.
const MAX_REFUSING: usize = 64;

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, asks every connection to
/// finish its current request and close, and waits for them at most `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: crate::Proxy,
    limits: Limits,
    telemetry: Telemetry,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let max = limits.max_connections.max(1);
    let connections = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop, stopping) = watch::channel(false);
    let mut builder = http1::Builder::new();
    // hyper's own header timer starts when a connection waits for a head (idle included): a backstop behind
    // the watchdog's two timers, never shorter than both together.
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(
            limits
                .header_read_timeout
                .saturating_add(limits.idle_timeout),
        );
    let threads = Threads::start(limits.threads)?;
    let limits = Arc::new(limits);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                // Out of file descriptors (or similar): wait for connections to close rather than spin or stop.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            telemetry.record_proxy_rejected("connections");
            if let Ok(slot) = Arc::clone(&refusing).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            limits: Arc::clone(&limits),
            builder: builder.clone(),
            stopping: stopping.clone(),
        };
        threads.spawn(stream, move |stream| async move {
            conn.run(stream).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it ends: all of them back means all connections are closed.
    let all_closed = connections.acquire_many(max as u32);
    let _ = tokio::time::timeout(grace, all_closed).await;
    // Connections still open are dropped with their thread's runtime, before `serve` returns: a request cut
    // off there still writes its `cancelled` evidence before the caller flushes telemetry.
    threads.stop().await;
    Ok(())
}

/// One connection counted on its thread until dropped (however its task ends).
struct Load(Arc<AtomicUsize>);

impl Load {
    fn add(load: &Arc<AtomicUsize>) -> Load {
        load.fetch_add(1, Ordering::Relaxed);
        Load(Arc::clone(load))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection threads of [`Limits::threads`] (none: connections are tasks of the current runtime).
struct Threads(Vec<ConnectionThread>);

struct ConnectionThread {
    runtime: tokio::runtime::Handle,
    /// Connections it serves now.
    load: Arc<AtomicUsize>,
    /// Dropped to stop the thread; `stopped` completes once its runtime (and every connection) is dropped.
    stop: tokio::sync::oneshot::Sender<()>,
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl Threads {
    fn start(count: usize) -> io::Result<Threads> {
        (0..count)
            .map(|i| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name(format!("retrybudget-conn-{i}"))
                    .spawn(move || {
                        let _ = runtime.block_on(stop_rx);
                        drop(runtime);
                        let _ = stopped_tx.send(());
                    })?;
                Ok(ConnectionThread {
                    runtime: handle,
                    load: Arc::new(AtomicUsize::new(0)),
                    stop,
                    stopped,
                })
            })
            .collect::<io::Result<Vec<_>>>()
            .map(Threads)
    }

    /// Serves `stream` with `serve` on the least busy thread, or as a task of the current runtime.
    fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self.0.iter().min_by_key(|t| t.load.load(Ordering::Relaxed)) else {
            tokio::spawn(serve(stream));
            return;
        };
        // A socket belongs to the runtime that registered it: moved as a std socket, registered there.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let load = Load::add(&thread.load);
        thread.runtime.spawn(async move {
            if let Ok(stream) = TcpStream::from_std(stream) {
                serve(stream).await;
            }
            drop(load);
        });
    }

    /// Stops every thread, dropping the connections still open, and waits (at most a second) until they are.
    async fn stop(self) {
        // `join_all` collects first: every thread is told to stop before any is waited for.
        let all = futures_util::future::join_all(self.0.into_iter().map(|t| {
            drop(t.stop);
            t.stopped
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), all).await;
    }
}

/// Errors of one failed handshake, which say nothing about the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Writes the over-capacity answer, then gives the peer a moment to read it before closing.
async fn refuse(mut stream: TcpStream) {
    let quick = async {
        stream.write_all(OVER_CAPACITY).await?;
        stream.shutdown().await?;
        // Read (and discard) what the peer already sent, so closing does not reset the connection before
        // the answer is read.
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await?;
            if n == 0 || left <= n {
                return Ok::<_, io::Error>(());
            }
            left -= n;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), quick).await;
}

// === one connection ===

struct Connection {
    app: crate::Proxy,
    limits: Arc<Limits>,
    builder: http1::Builder,
    stopping: watch::Receiver<bool>,
}

/// What the watchdog knows of a connection, in milliseconds since it was accepted (0 = never / none).
#[derive(Debug, Default)]
struct Activity {
    epoch: Option<Instant>,
    /// Requests whose response is not finished yet.
    in_request: AtomicU32,
    /// When the first byte of the next request head arrived (+1, so that 0 means "none yet").
    head_started: AtomicU64,
    /// When the connection last became idle (accepted, or a response finished).
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Some(Instant::now()),
            ..Activity::default()
        }
    }

    fn now(&self) -> u64 {
        self.epoch.map_or(0, |e| {
            u64::try_from(e.elapsed().as_millis()).unwrap_or(u64::MAX)
        })
    }

    fn bytes_read(&self) {
        if self.in_request.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.now() + 1, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_request.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.idle_since.store(self.now(), Ordering::Relaxed);
        self.in_request.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a timer has run out: a head that took too long, or an idle spell that did.
    fn expired(&self, limits: &Limits) -> bool {
        if self.in_request.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let now = self.now();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match self.head_started.load(Ordering::Relaxed) {
            0 => {
                now.saturating_sub(self.idle_since.load(Ordering::Relaxed))
                    >= ms(limits.idle_timeout)
            }
            started => now.saturating_sub(started - 1) >= ms(limits.header_read_timeout),
        }
    }
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        let app = self.app;
        let in_service = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            in_service.request_started();
            let app = app.clone();
            let activity = Arc::clone(&in_service);
            async move {
                let response = app.handle(request.map(Body::new)).await;
                Ok::<_, Infallible>(response.map(|body| Finished {
                    inner: body,
                    activity: Some(activity),
                }))
            }
        });
        let conn = self.builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let limits = &*self.limits;
        let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut watchdog = tokio::time::interval(tick);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asked_to_stop = false;
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = watchdog.tick() => {
                    if activity.expired(limits) {
                        // Nothing is in progress on this connection: closing it loses no request.
                        return;
                    }
                }
                changed = self.stopping.changed(), if !asked_to_stop => {
                    if changed.is_err() || *self.stopping.borrow() {
                        asked_to_stop = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// The socket, noting when bytes arrive (the watchdog's view of a request head in progress).
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that tells the connection's watchdog when it is done (finished or dropped).
struct Finished {
    inner: Body,
    activity: Option<Arc<Activity>>,
}

impl Finished {
    fn finish(&mut self) {
        if let Some(a) = self.activity.take() {
            a.request_finished();
        }
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for Finished {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains(&format!("retry-after: {RETRY_AFTER_SECS}")));
        assert!(body.starts_with("{\"error\":"));
    }

    #[test]
    fn timers_of_an_idle_and_of_a_dribbling_connection() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(0),
            idle_timeout: Duration::from_secs(3600),
            ..Limits::default()
        };
        let a = Activity::new();
        assert!(!a.expired(&limits), "idle, within the idle timeout");
        a.bytes_read();
        assert!(
            a.expired(&limits),
            "a head in progress past the header timeout"
        );
        a.request_started();
        assert!(
            !a.expired(&limits),
            "a request in progress is never cut here"
        );
        a.request_finished();
        assert!(!a.expired(&limits), "idle again");
    }
}
