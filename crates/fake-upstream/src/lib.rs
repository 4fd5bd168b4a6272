//! A scriptable, fault-injecting, OpenAI-compatible upstream: the test double of retrybudget.
//!
//! # Why it exists
//! Retry behaviour can only be proven against failures that happen on demand and repeatably: a
//! 429 with `retry-after`, a 503 burst, an outage window that exhausts the retry budget, a
//! connection that dies before the head or in the middle of an SSE stream. Real providers give none
//! of that on demand. This crate is a real HTTP/1.1 server (hyper + tokio, not a mocked trait), so
//! the client, the proxy, `retrybudget demo`, `retrybudget smoke --self-test`, the
//! `retrybudget fake-upstream` command and the benchmarks all exercise real sockets.
//!
//! # What it does
//! * `POST /v1/chat/completions` answers a fixed, sanitised completion, as JSON or as SSE chunks
//!   (with a usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`).
//! * `GET /v1/models` lists `fake-model`; any other `/v1/*` request gets
//!   `{"object":"fake.echo","path":...}`.
//! * Each `/v1/*` attempt takes the next scripted [`Step`] (FIFO); when the script is empty the
//!   [`LoadMode`] may fail it, otherwise the default step applies (initially a plain success).
//! * Every `/v1/*` attempt is counted and recorded ([`RecordedRequest`]): method, path, headers,
//!   body length, arrival time; the newest [`MAX_RECORDED`] are kept.
//! * The same state is driven from Rust ([`FakeUpstream`], [`Control`]) or over HTTP under
//!   `/_control/` (see [`FakeUpstream`] for the endpoints), so shell scripts and Python can use it.
//!
//! # What it must never do
//! * Never print or log request content or headers: they may carry prompts and API keys. Headers
//!   are kept in memory for assertions only, and [`RecordedRequest`]'s `Debug` shows only names.
//! * Never echo the prompt: replies and error messages are fixed text.
//! * Never panic on input: malformed HTTP gets hyper's 400, an oversize body a 400, a malformed
//!   control body a 400 that says what was wrong; the server keeps serving.
//! * Never claim anything about a real provider's prices, quotas or latency.
//!
//! # Example
//! ```no_run
//! use retrybudget_fake_upstream::{FakeUpstream, Fault, Step};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let upstream = FakeUpstream::start(([127, 0, 0, 1], 0).into()).await?;
//! upstream.push([
//!     Step::status(503),
//!     Step::rate_limited(1),
//!     Step::with_fault(Fault::CloseBeforeHead),
//! ]);
//! // ... point a client at format!("{}/v1", upstream.base_url()) ...
//! assert!(upstream.attempts() <= 4);
//! upstream.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod body;
mod control;
mod openai;
mod server;
mod state;
mod step;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use server::MAX_REQUEST_BODY;
pub use state::{CREDENTIAL_HEADERS, MAX_RECORDED, RecordedRequest, is_credential_header};
pub use step::{Fault, LoadMode, Step, StepError};

use state::Shared;

/// A running fake upstream. Dropping it stops the server too (without waiting); prefer
/// [`FakeUpstream::shutdown`], which waits until every connection is closed.
///
/// # HTTP control API
/// All bodies and answers are JSON; a malformed body gets `400 {"error":{"message":..,"type":"invalid_control_request"}}`.
///
/// | request | body | answer |
/// |---|---|---|
/// | `POST /_control/script` | `[Step, ...]` (or one `Step`), appended | `{"ok":true,"queued":N}` |
/// | `PUT /_control/default` | `Step` | `{"ok":true}` |
/// | `PUT /_control/load` | `{"mode":"none"}` / `{"mode":"fail_percent","percent":5,"status":503,"seed":1}` / `{"mode":"outage","from_ms":0,"until_ms":5000,"status":503}` | `{"ok":true}` |
/// | `POST /_control/reset` | none | `{"ok":true}` |
/// | `GET /_control/requests` | none | `{"count":N,"requests":[{"method","path","headers":{..},"body_len","at_ms"}]}` |
/// | `GET /_control/count` | none | `{"count":N}` |
/// | `GET /_control/health` | none | `{"ok":true}` |
///
/// A `Step` in JSON: `{"status":429,"error_type":"requests","error_code":"rate_limit_exceeded",
/// "headers":{"retry-after":"1"},"delay_ms":0,"chunk_delay_ms":0,"fault":"close_before_head"}`;
/// every field is optional; counted faults are written `{"cut_stream_after":2}`.
pub struct FakeUpstream {
    control: Control,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A cloneable handle on a fake upstream's script, load mode and records.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

// === impl FakeUpstream ===

impl FakeUpstream {
    /// Binds `addr` (tests pass `127.0.0.1:0`) and serves on the current Tokio runtime.
    pub async fn start(addr: SocketAddr) -> std::io::Result<FakeUpstream> {
        FakeUpstream::from_listener(TcpListener::bind(addr).await?)
    }

    /// Serves on an already bound listener, on the current Tokio runtime.
    ///
    /// Fails if called outside a Tokio runtime or if the listener has no local address.
    pub fn from_listener(listener: TcpListener) -> std::io::Result<FakeUpstream> {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: the fake upstream listens on {addr}, reachable from other hosts: it answers anyone and \
                 records request headers in memory; bind 127.0.0.1 unless that is what you want"
            );
        }
        let shared = Arc::new(Shared::new());
        let (stop, stopped) = oneshot::channel::<()>();
        // The loop ends when `stop` fires or is dropped (the handle went away).
        let task = runtime.spawn(server::serve(listener, Arc::clone(&shared), async move {
            let _ = stopped.await;
        }));
        Ok(FakeUpstream {
            control: Control { shared },
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` (without `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A cloneable handle on the same state.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Stops accepting, closes every open connection (even mid-answer) and waits for that.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Scripting and inspection go through the [`Control`] handle: `upstream.push(..)`, `upstream.attempts()`.
impl std::ops::Deref for FakeUpstream {
    type Target = Control;

    fn deref(&self) -> &Control {
        &self.control
    }
}

impl std::fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

// === impl Control ===

impl Control {
    /// Appends steps to the script; each `/v1/*` attempt takes the next one. Steps are not
    /// validated here: an out-of-range status is answered as 500 and invalid headers are skipped
    /// (use [`Step::validate`] to check first).
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.shared.push(steps);
    }

    /// Sets the step used when the script is empty and the load mode does not fail the attempt.
    pub fn set_default(&self, step: Step) {
        self.shared.set_default(step);
    }

    /// Sets the load mode; its clock (for outages) and sequence (for `fail_percent`) start now.
    pub fn set_load(&self, mode: LoadMode) {
        self.shared.set_load(mode);
    }

    /// Clears script, default, load mode, records and count.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// How many `/v1/*` attempts arrived since start or the last reset.
    pub fn attempts(&self) -> usize {
        usize::try_from(self.shared.count()).unwrap_or(usize::MAX)
    }

    /// How many scripted steps are still queued.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }

    /// The recorded attempts (the newest [`MAX_RECORDED`]), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests().1
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// Serves on `listen` until `shutdown` completes (e.g. Ctrl-C), then closes every connection.
/// For `retrybudget fake-upstream --listen ADDR`.
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let upstream = FakeUpstream::start(listen).await?;
    shutdown.await;
    upstream.shutdown().await;
    Ok(())
}

/// Like [`run`], on an already bound listener (so a caller can print the address first).
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let shared = Arc::new(Shared::new());
    server::serve(listener, shared, shutdown).await;
}
