//! How one attempt leaves the process: the seam that lets a middleware reuse the client's retry loop.
//!
//! The loop in [`Client::send_via`](crate::Client::send_via) owns everything that makes a call a retrybudget
//! call — the policy's decisions, the shared budget, the backoff sleeps, the spans, `traceparent`, the evidence.
//! A [`Transport`] only sends the one `http::Request` it is handed and returns what came back, with every
//! failure already named as a [`FailureKind`]. The client's own connection pool ([`Pool`]) is one transport;
//! the rest of a `reqwest-middleware` chain is another (`retrybudget-middleware`). There is no second retry
//! loop anywhere.
//!
//! # Why hyper's own client, not reqwest
//! The pool is hyper-util's HTTP/1.1 + HTTP/2 client over rustls: the proxy's hop spent more time in reqwest's
//! layers (URL re-parsing, header conversion, its own retry and redirect services) than in its policy
//! (BENCHMARKS.md). Redirects are never followed (a 3xx is the upstream's answer, relayed as it came), and
//! certificates are checked against the platform's roots, as reqwest did.
//!
//! # Why one pool per thread
//! hyper's client drives each upstream connection as a task of its own and hands it requests over a channel.
//! A connection set up by one thread and checked out by a request on another makes every request cross
//! threads twice (request in, response out), each crossing a wake-up: on a small machine under load, those
//! wake-ups cost more than the request itself (BENCHMARKS.md). So each thread sending attempts has its own
//! idle connections — the proxy's connection threads each keep their own — and a request on a thread reuses
//! only connections that thread set up. The pools share the connector (TLS config, roots, timeouts); a
//! thread's pool goes away with the last clone of the [`Pool`] it belongs to.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use retrybudget_policy::FailureKind;

/// A response body as the retry loop reads it: bytes, or the [`FailureKind`] that broke it off.
pub type ResponseBody = UnsyncBoxBody<Bytes, FailureKind>;

/// Sends one attempt. Implementations must not retry, must not follow redirects, and must name every
/// failure — before the head arrived or while the body streams — as a [`FailureKind`].
pub trait Transport: Send {
    /// Sends `request` once.
    fn send_attempt(
        &mut self,
        request: http::Request<Bytes>,
    ) -> impl Future<Output = Result<http::Response<ResponseBody>, FailureKind>> + Send;
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Hyper = HyperClient<Connector, Full<Bytes>>;

/// The client's own connection pools, one per thread that sends (see the module docs): keep-alive HTTP/1.1
/// (HTTP/2 when the upstream offers it over TLS).
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    connector: Connector,
    /// Alive while any clone of this pool is: the threads' pools of a dropped client are dropped too (their
    /// idle connections closed) the next time those threads make a pool.
    alive: Arc<()>,
}

thread_local! {
    /// This thread's pools, one per live [`Pool`] it sent through.
    static POOLS: RefCell<Vec<(Weak<()>, Hyper)>> = const { RefCell::new(Vec::new()) };
}

impl Pool {
    /// Pools whose connections are set up within `connect_timeout` and closed after 60 s unused.
    pub(crate) fn new(connect_timeout: Duration) -> Result<Pool, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| format!("cannot load the platform's TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Pool {
            connector,
            alive: Arc::new(()),
        })
    }

    /// The calling thread's pool (made on first use, when the pools of dropped clients are let go).
    fn local(&self) -> Hyper {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            // A `Weak` keeps its allocation, so no other pool can have this address while the entry exists.
            let me = Arc::as_ptr(&self.alive);
            if let Some((_, hyper)) = pools.iter().find(|(owner, _)| owner.as_ptr() == me) {
                return hyper.clone();
            }
            pools.retain(|(owner, _)| owner.strong_count() > 0);
            let hyper = HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(self.connector.clone());
            pools.push((Arc::downgrade(&self.alive), hyper.clone()));
            hyper
        })
    }
}

impl Transport for Pool {
    async fn send_attempt(
        &mut self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<ResponseBody>, FailureKind> {
        let response = self
            .local()
            .request(request.map(Full::new))
            .await
            .map_err(|e| sending_failure(&e))?;
        Ok(response.map(|body| body.map_err(|e| body_failure(&e)).boxed_unsync()))
    }
}

/// What a failure to get a response head means to the policy (`connect_error`, `tls_error`, …), from the
/// error's kind and source chain — never from a message that could name the URL.
fn sending_failure(e: &hyper_util::client::legacy::Error) -> FailureKind {
    if is_tls(e) {
        FailureKind::Tls
    } else if e.is_connect() {
        FailureKind::Connect
    } else {
        match std::error::Error::source(e).and_then(|s| s.downcast_ref::<hyper::Error>()) {
            Some(h) => body_failure(h),
            None => FailureKind::Other,
        }
    }
}

/// A connection that broke while a request or response was under way.
fn body_failure(e: &hyper::Error) -> FailureKind {
    if e.is_timeout() {
        FailureKind::Timeout
    } else {
        FailureKind::ConnectionReset
    }
}

/// Whether `e` or an error in its source chain is a TLS failure (a certificate, an alert, a handshake, a peer
/// that does not speak TLS), for transports that classify their own errors. rustls's own error is recognised
/// by type, also inside the `io::Error` that TLS streams wrap it in (whose `source()` skips it); other stacks by
/// their message, so pass an error whose message cannot contain the URL (its host may well contain "tls"):
/// e.g. the *source* of a `reqwest::Error`.
pub fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(s) = next {
        if s.is::<rustls::Error>() {
            return true;
        }
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return true;
        }
        // An `io::Error`'s `source()` skips the error it wraps (tokio-rustls nests rustls's in two of them).
        next = match s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    false
}
