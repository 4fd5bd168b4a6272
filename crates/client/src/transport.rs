//! How one attempt leaves the process: the seam that lets a middleware reuse the client's retry loop.
//!
//! The loop in [`Client::send_via`](crate::Client::send_via) owns everything that makes a call a retrybudget
//! call — the policy's decisions, the shared budget, the backoff sleeps, the spans, `traceparent`, the evidence.
//! A [`Transport`] only sends the one `http::Request` it is handed and returns what came back, with every
//! failure already named as a [`FailureKind`]. The client's own connection pool ([`Pool`]) is one transport;
//! the rest of a `reqwest-middleware` chain is another (`retrybudget-middleware`). There is no second retry
//! loop anywhere.
//!
//! # Why hyper's own connections, not reqwest or hyper-util's pool
//! Attempts go out on hyper's HTTP/1.1 and HTTP/2 connections over rustls: the proxy's hop spent more time in
//! reqwest's layers (URL re-parsing, header conversion, its own retry and redirect services) than in its
//! policy, and then, on hyper-util's pooled client, about 8 % of its instructions in that pool: a SipHash of
//! the origin byte by byte on every checkout and return, the `Host` header formatted again per request, the
//! URI rewritten (BENCHMARKS.md). The pool here is what a sidecar with a few upstreams needs and no more:
//! per thread, per origin, a short list of idle connections. Redirects are never followed (a 3xx is the
//! upstream's answer, relayed as it came), and certificates are checked against the platform's roots.
//!
//! What it keeps from hyper-util's: an HTTP/1.1 connection is reused only once its answer was read to the
//! end (a body dropped early closes it) — it then joins the pool of the thread that read it, which in the
//! proxy is the thread that sent it; a kept-alive connection the upstream closed while idle is skipped, one
//! not ready for its next request within [`READY_GRACE`] is given up, and a request hyper could not write on
//! a kept-alive connection (it hands it back) goes out on a new one — none of these is an attempt, as nothing
//! was sent; HTTP/2 (when the upstream offers it over TLS) is one shared connection per origin and thread.
//! `Host` is built once per origin and thread and sent on HTTP/1.1 only (HTTP/2 has `:authority`).
//!
//! What differs: there is no idle timer. An idle connection is never reused after [`IDLE_TIMEOUT`], and the
//! expired ones are closed whenever the thread next sends to or returns a connection to that origin; on a
//! thread that sends nothing more they stay open until the upstream closes them (at most [`MAX_IDLE`] per
//! origin and thread, so sockets stay bounded).
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
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use retrybudget_policy::FailureKind;
use tokio::time::timeout;
use tower_service::Service as _;

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

/// How long an idle connection may wait for its next request before it is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections a thread keeps per origin; one more returned is closed (a burst must not pin sockets).
const MAX_IDLE: usize = 64;
/// How long a pooled HTTP/1.1 connection may take to be ready for the next request before another is used.
const READY_GRACE: Duration = Duration::from_secs(1);

/// The client's own connection pools, one per thread that sends (see the module docs): keep-alive HTTP/1.1
/// (HTTP/2 when the upstream offers it over TLS).
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    connector: Connector,
    /// Alive while any clone of this pool is: the threads' pools of a dropped client are dropped too (their
    /// idle connections closed) the next time those threads make a pool.
    alive: Arc<()>,
}

/// A connection's request handle: HTTP/1.1 carries one request at a time (the handle is taken out of the pool
/// while it does); HTTP/2 multiplexes (the handle stays in the pool and is cloned).
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        let closed = match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        };
        !closed && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

/// One thread's idle connections to one origin (scheme and authority), oldest first.
struct Origin {
    https: bool,
    authority: Authority,
    /// `Host` for HTTP/1.1 requests to the origin: its host, and its port unless the scheme's default.
    host: Option<HeaderValue>,
    idle: Vec<Idle>,
}

impl Origin {
    fn new(https: bool, authority: &Authority) -> Origin {
        let default_port = if https { 443 } else { 80 };
        let host = match authority.port() {
            Some(port) if port.as_u16() != default_port => {
                HeaderValue::try_from([authority.host(), ":", port.as_str()].concat()).ok()
            }
            _ => HeaderValue::from_str(authority.host()).ok(),
        };
        Origin {
            https,
            authority: authority.clone(),
            host,
            idle: Vec::new(),
        }
    }

    /// Closes the connections that idled too long or that the upstream closed (the oldest come first, so
    /// this is a look at one entry while there are none).
    fn sweep(&mut self, now: Instant) {
        if self.idle.first().is_some_and(|i| !i.usable(now)) {
            self.idle.retain(|i| i.usable(now));
        }
    }
}

thread_local! {
    /// This thread's pools, one per live [`Pool`] it sent through: the origins it connected to.
    static POOLS: RefCell<Vec<(Weak<()>, Vec<Origin>)>> = const { RefCell::new(Vec::new()) };
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

    /// Runs `f` on this thread's entry for the origin (made on first use, when the pools of dropped clients
    /// are let go); `None` while the thread is being torn down.
    fn origin<R>(
        owner: &Arc<()>,
        https: bool,
        authority: &Authority,
        f: impl FnOnce(&mut Origin) -> R,
    ) -> Option<R> {
        POOLS
            .try_with(|pools| {
                let mut pools = pools.borrow_mut();
                // A `Weak` keeps its allocation, so no other pool can have this address while the entry exists.
                let me = Arc::as_ptr(owner);
                let at = match pools.iter().position(|(o, _)| o.as_ptr() == me) {
                    Some(at) => at,
                    None => {
                        pools.retain(|(o, _)| o.strong_count() > 0);
                        pools.push((Arc::downgrade(owner), Vec::new()));
                        pools.len() - 1
                    }
                };
                let origins = &mut pools[at].1;
                let at = match origins
                    .iter()
                    .position(|o| o.https == https && o.authority == *authority)
                {
                    Some(at) => at,
                    None => {
                        origins.push(Origin::new(https, authority));
                        origins.len() - 1
                    }
                };
                f(&mut origins[at])
            })
            .ok()
    }

    /// The most recently used live connection to the origin, if this thread has one, and the origin's
    /// `Host`.
    fn checkout(
        &self,
        https: bool,
        authority: &Authority,
    ) -> (Option<Sender>, Option<HeaderValue>) {
        let now = Instant::now();
        Pool::origin(&self.alive, https, authority, |origin| {
            origin.sweep(now);
            let host = origin.host.clone();
            while let Some(entry) = origin.idle.pop() {
                if !entry.usable(now) {
                    continue;
                }
                let sender = match entry.sender {
                    Sender::H2(s) => {
                        let shared = s.clone();
                        origin.idle.push(Idle {
                            sender: Sender::H2(s),
                            since: now,
                        });
                        Sender::H2(shared)
                    }
                    h1 => h1,
                };
                return (Some(sender), host);
            }
            (None, host)
        })
        .unwrap_or_default()
    }

    /// A connection free for the origin's next request (dropped instead when the thread keeps enough, or
    /// when it is a second HTTP/2 connection: one is shared by every request).
    fn checkin(owner: &Arc<()>, https: bool, authority: &Authority, sender: Sender) {
        let now = Instant::now();
        Pool::origin(owner, https, authority, |origin| {
            origin.sweep(now);
            let shared_h2 = |i: &Idle| matches!(i.sender, Sender::H2(_)) && i.usable(now);
            if matches!(sender, Sender::H2(_)) && origin.idle.iter().any(shared_h2) {
                return;
            }
            if origin.idle.len() < MAX_IDLE {
                origin.idle.push(Idle { sender, since: now });
            }
        });
    }

    /// A new connection to `uri`'s origin: TCP (and TLS, offering HTTP/2 and HTTP/1.1), then the HTTP handshake;
    /// the connection itself runs as a task of the current runtime.
    async fn connect(&self, uri: &Uri) -> Result<Sender, FailureKind> {
        let mut connector = self.connector.clone();
        let connected = async {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
            connector.call(uri.clone()).await
        };
        let io = connected.await.map_err(|e| {
            if is_tls(&*e) {
                FailureKind::Tls
            } else {
                FailureKind::Connect
            }
        })?;
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| body_failure(&e))?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(|e| body_failure(&e))?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
    }
}

impl Transport for Pool {
    async fn send_attempt(
        &mut self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<ResponseBody>, FailureKind> {
        let (head, body) = request.into_parts();
        let uri = head.uri.clone();
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let authority = uri.authority().cloned().ok_or(FailureKind::Other)?;
        // HTTP/1.1 sends the path and query (origin form) and `Host`; HTTP/2 takes scheme and authority from
        // the URI (`:authority`), and gets no `Host` that could differ from it.
        let origin_form = Uri::from(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        let mut request = http::Request::from_parts(head, Full::new(body));
        loop {
            let (pooled, host) = self.checkout(https, &authority);
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(sender) => sender,
                // Boxed: the handshake futures hold the whole connection, and the call's future would
                // otherwise carry their size for its whole life (a stream's too), connecting or not.
                None => Box::pin(self.connect(&uri)).await?,
            };
            // HTTP/1.1: a pooled connection is ready once hyper has seen the end of its last answer, which is
            // a poll away; one not ready soon is given up. HTTP/2: ready while the connection is open. Either
            // way nothing was sent on a connection that is not, so a pooled one is simply replaced.
            let ready = match &mut sender {
                Sender::H1(s) => {
                    *request.uri_mut() = origin_form.clone();
                    match &host {
                        Some(host) => request.headers_mut().insert(header::HOST, host.clone()),
                        None => request.headers_mut().remove(header::HOST),
                    };
                    s.is_ready() || matches!(timeout(READY_GRACE, s.ready()).await, Ok(Ok(())))
                }
                Sender::H2(s) => {
                    *request.uri_mut() = uri.clone();
                    request.headers_mut().remove(header::HOST);
                    if !reused {
                        Pool::checkin(&self.alive, https, &authority, Sender::H2(s.clone()));
                    }
                    s.ready().await.is_ok()
                }
            };
            if !ready {
                if reused {
                    continue;
                }
                return Err(FailureKind::ConnectionReset);
            }
            let sent = match sender {
                Sender::H1(mut s) => s.try_send_request(request).await.map(|r| (r, Some(s))),
                Sender::H2(mut s) => s.try_send_request(request).await.map(|r| (r, None)),
            };
            return match sent {
                Ok((response, h1)) => {
                    let back = h1.map(|sender| Checkin {
                        owner: Arc::clone(&self.alive),
                        https,
                        authority,
                        sender,
                    });
                    Ok(response.map(|body| {
                        Returning { body, back }
                            .map_err(|e| body_failure(&e))
                            .boxed_unsync()
                    }))
                }
                // Not sent at all on a kept-alive connection the upstream had closed meanwhile: on a new one.
                Err(mut e) if reused && e.message().is_some() => {
                    request = e.take_message().ok_or(FailureKind::Other)?;
                    continue;
                }
                Err(e) => Err(body_failure(e.error())),
            };
        }
    }
}

/// An HTTP/1.1 connection waiting for its response body to be read to the end before it is reused.
struct Checkin {
    owner: Arc<()>,
    https: bool,
    authority: Authority,
    sender: http1::SendRequest<Full<Bytes>>,
}

/// A response body that puts its connection back in the pool once it has been read to the end (a body
/// dropped before its end, or broken off, takes its connection with it: hyper closes it).
struct Returning {
    body: Incoming,
    back: Option<Checkin>,
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        let finished = match &frame {
            None => true,
            Some(Ok(_)) => self.body.is_end_stream(),
            Some(Err(_)) => {
                self.back = None;
                false
            }
        };
        if finished && let Some(c) = self.back.take() {
            Pool::checkin(&c.owner, c.https, &c.authority, Sender::H1(c.sender));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
