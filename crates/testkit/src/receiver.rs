//! The receiver itself: two servers (gRPC via tonic, HTTP/protobuf via axum) sharing one store.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    query,
    received::{
        ReceivedLog, ReceivedMetric, ReceivedSpan, Transport, flatten_logs, flatten_metrics,
        flatten_spans,
    },
};

/// Largest request accepted on either transport. Far above what a test exports; the defaults
/// (4 MiB gRPC, 2 MiB axum) could cut a large batch and look like an exporter bug.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long [`OtlpReceiver::shutdown`] lets the servers drain before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// How often [`OtlpReceiver::wait_until`] re-checks its predicate.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// An OTLP signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Spans (`/v1/traces`, `TraceService/Export`).
    Traces,
    /// Metrics (`/v1/metrics`, `MetricsService/Export`).
    Metrics,
    /// Logs (`/v1/logs`, `LogsService/Export`).
    Logs,
}

impl Signal {
    /// All three signals.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    fn index(self) -> usize {
        match self {
            Signal::Traces => 0,
            Signal::Metrics => 1,
            Signal::Logs => 2,
        }
    }

    /// The OTLP/HTTP path of this signal, e.g. `/v1/traces`.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }
}

/// How the receiver answers exports. Whatever the behaviour, the request is counted and its
/// bytes are recorded; only [`Behavior::Accept`] stores the decoded items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Decode, store, answer success (gRPC OK / HTTP 200 with an empty protobuf response).
    #[default]
    Accept,
    /// A collector that is down or overloaded: gRPC `UNAVAILABLE` / HTTP 503, both retryable
    /// per the OTLP spec, answered immediately.
    Unavailable,
    /// A collector that refuses the data: gRPC `INVALID_ARGUMENT` / HTTP 400, not retryable.
    Reject,
    /// A stuck collector: the request is read, then never answered until
    /// [`OtlpReceiver::shutdown`] (then it gets `UNAVAILABLE` / 503). The wait is an async
    /// signal, no thread is blocked.
    Hang,
}

/// The mutable part of the receiver, behind one `std` mutex that is never held across `.await`.
#[derive(Debug, Default)]
struct Store {
    behavior: [Behavior; 3],
    requests: [usize; 3],
    raw: Vec<u8>,
    spans: Vec<ReceivedSpan>,
    logs: Vec<ReceivedLog>,
    metrics: Vec<ReceivedMetric>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    /// Flips to `true` once, at shutdown (or drop): releases hung requests and stops servers.
    shutdown: watch::Sender<bool>,
}

/// What a handler should do with a request once its bytes are recorded.
enum Verdict {
    Accept,
    Unavailable,
    Reject,
    ShuttingDown,
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking test thread must not hide what was received from the others.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the request, keeps its bytes, and decides (possibly after hanging) how to answer.
    async fn admit(&self, signal: Signal, body: &[u8]) -> Verdict {
        let behavior = {
            let mut store = self.lock();
            store.requests[signal.index()] += 1;
            store.raw.extend_from_slice(body);
            store.behavior[signal.index()]
        };
        match behavior {
            Behavior::Accept => Verdict::Accept,
            Behavior::Unavailable => Verdict::Unavailable,
            Behavior::Reject => Verdict::Reject,
            Behavior::Hang => {
                self.shut_down().await;
                Verdict::ShuttingDown
            }
        }
    }

    /// Resolves when shutdown has been signalled.
    fn shut_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            // Err means the sender is gone, i.e. the receiver is gone: also "shut down".
            let _ = rx.wait_for(|down| *down).await;
        }
    }

    fn store_spans(&self, req: ExportTraceServiceRequest, transport: Transport) {
        let items = flatten_spans(req, transport);
        self.lock().spans.extend(items);
    }

    fn store_logs(&self, req: ExportLogsServiceRequest, transport: Transport) {
        let items = flatten_logs(req, transport);
        self.lock().logs.extend(items);
    }

    fn store_metrics(&self, req: ExportMetricsServiceRequest, transport: Transport) {
        let items = flatten_metrics(req, transport);
        self.lock().metrics.extend(items);
    }
}

// === gRPC ===

#[derive(Debug, Clone)]
struct GrpcService {
    shared: Arc<Shared>,
}

impl GrpcService {
    async fn gate(&self, signal: Signal, message: &impl Message) -> Result<(), tonic::Status> {
        // tonic hands us the decoded message; re-encoding it gives the same protobuf bytes the
        // leak scans need (field order may differ from the wire, content does not).
        match self.shared.admit(signal, &message.encode_to_vec()).await {
            Verdict::Accept => Ok(()),
            Verdict::Unavailable => Err(tonic::Status::unavailable(
                "testkit receiver: Behavior::Unavailable",
            )),
            Verdict::Reject => Err(tonic::Status::invalid_argument(
                "testkit receiver: Behavior::Reject",
            )),
            Verdict::ShuttingDown => Err(tonic::Status::unavailable(
                "testkit receiver: shutting down",
            )),
        }
    }
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        self.gate(Signal::Traces, &req).await?;
        self.shared.store_spans(req, Transport::Grpc);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        self.gate(Signal::Metrics, &req).await?;
        self.shared.store_metrics(req, Transport::Grpc);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        self.gate(Signal::Logs, &req).await?;
        self.shared.store_logs(req, Transport::Grpc);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn spawn_grpc(shared: &Arc<Shared>, listener: TcpListener) -> JoinHandle<()> {
    let svc = GrpcService {
        shared: Arc::clone(shared),
    };
    let stop = shared.shut_down();
    let router = tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            MetricsServiceServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(LogsServiceServer::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        // A serve error (the socket died) can only surface as missing data, which the test
        // asserting on the receiver reports better than a panic in a detached task would.
        let _ = router.serve_with_incoming_shutdown(incoming, stop).await;
    })
}

// === HTTP/protobuf ===

fn http_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            Signal::Traces.http_path(),
            post(|State(s), headers, body| http_export(s, Signal::Traces, headers, body)),
        )
        .route(
            Signal::Metrics.http_path(),
            post(|State(s), headers, body| http_export(s, Signal::Metrics, headers, body)),
        )
        .route(
            Signal::Logs.http_path(),
            post(|State(s), headers, body| http_export(s, Signal::Logs, headers, body)),
        )
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
        .with_state(shared)
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

/// The problem with a request's headers, if any: only uncompressed protobuf is decoded.
fn unsupported_media(headers: &HeaderMap) -> Option<&'static str> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    if encoding.is_some_and(|e| !e.is_empty() && e != "identity") {
        return Some("testkit receiver: compressed bodies are not supported, disable compression");
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    if content_type.is_some_and(|ct| !ct.starts_with("application/x-protobuf")) {
        return Some("testkit receiver: only application/x-protobuf is supported");
    }
    None
}

async fn http_export(
    shared: Arc<Shared>,
    signal: Signal,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let unsupported = unsupported_media(&headers);
    let verdict = shared.admit(signal, &body).await;
    if let Some(reason) = unsupported {
        return plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason);
    }
    match verdict {
        Verdict::Accept => {}
        Verdict::Unavailable => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "testkit receiver: Behavior::Unavailable",
            );
        }
        Verdict::Reject => {
            return plain(
                StatusCode::BAD_REQUEST,
                "testkit receiver: Behavior::Reject",
            );
        }
        Verdict::ShuttingDown => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "testkit receiver: shutting down",
            );
        }
    }
    let response = match signal {
        Signal::Traces => ExportTraceServiceRequest::decode(body).map(|req| {
            shared.store_spans(req, Transport::Http);
            ExportTraceServiceResponse::default().encode_to_vec()
        }),
        Signal::Metrics => ExportMetricsServiceRequest::decode(body).map(|req| {
            shared.store_metrics(req, Transport::Http);
            ExportMetricsServiceResponse::default().encode_to_vec()
        }),
        Signal::Logs => ExportLogsServiceRequest::decode(body).map(|req| {
            shared.store_logs(req, Transport::Http);
            ExportLogsServiceResponse::default().encode_to_vec()
        }),
    };
    match response {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            bytes,
        )
            .into_response(),
        Err(_) => plain(
            StatusCode::BAD_REQUEST,
            "testkit receiver: body is not a valid OTLP protobuf request",
        ),
    }
}

fn spawn_http(shared: &Arc<Shared>, listener: TcpListener) -> JoinHandle<()> {
    let stop = shared.shut_down();
    let app = http_router(Arc::clone(shared));
    tokio::spawn(async move {
        // See spawn_grpc for why the error is dropped.
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
    })
}

// === OtlpReceiver ===

/// An in-process OTLP collector for tests: gRPC and HTTP/protobuf on two `127.0.0.1` ports.
///
/// Everything received is kept in memory until [`OtlpReceiver::clear`] or the end of the test.
/// Dropping the receiver aborts its servers; prefer [`OtlpReceiver::shutdown`], which first lets
/// in-flight requests finish.
#[derive(Debug)]
pub struct OtlpReceiver {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Binds two ephemeral ports on `127.0.0.1` (gRPC, HTTP) and serves them on the current
    /// Tokio runtime. Fails only if binding fails.
    ///
    /// Must be called inside a Tokio runtime (it spawns tasks). For tests that also run a gRPC
    /// exporter use a multi-thread runtime: the exporter's shutdown hangs on a current-thread
    /// one.
    pub async fn start() -> std::io::Result<OtlpReceiver> {
        let grpc_listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let http_listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            shutdown,
        });
        let tasks = vec![
            spawn_grpc(&shared, grpc_listener),
            spawn_http(&shared, http_listener),
        ];
        Ok(OtlpReceiver {
            shared,
            grpc_addr,
            http_addr,
            tasks,
        })
    }

    /// The gRPC endpoint, `http://127.0.0.1:PORT`, to pass to a tonic exporter's
    /// `with_endpoint`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The HTTP base endpoint, `http://127.0.0.1:PORT`. A programmatic OTLP/HTTP endpoint is
    /// used verbatim by the Rust exporter, so append the signal path (see
    /// [`OtlpReceiver::http_signal_endpoint`]); only `OTEL_EXPORTER_OTLP_ENDPOINT` gets it
    /// appended automatically.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The full OTLP/HTTP URL of one signal, e.g. `http://127.0.0.1:PORT/v1/traces`.
    pub fn http_signal_endpoint(&self, signal: Signal) -> String {
        format!("{}{}", self.http_endpoint(), signal.http_path())
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Sets how every signal is answered from now on (requests already hanging stay hung).
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.lock().behavior = [behavior; 3];
    }

    /// Sets how one signal is answered from now on, e.g. traces down while metrics work.
    pub fn set_signal_behavior(&self, signal: Signal, behavior: Behavior) {
        self.shared.lock().behavior[signal.index()] = behavior;
    }

    /// Every accepted span, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.lock().spans.clone()
    }

    /// Accepted spans with this name.
    pub fn spans_named(&self, name: &str) -> Vec<ReceivedSpan> {
        let store = self.shared.lock();
        store
            .spans
            .iter()
            .filter(|s| s.name() == name)
            .cloned()
            .collect()
    }

    /// The names of all accepted spans, in arrival order (for failure messages).
    pub fn span_names(&self) -> Vec<String> {
        let store = self.shared.lock();
        store.spans.iter().map(|s| s.span.name.clone()).collect()
    }

    /// Accepted spans whose parent is `parent`, in arrival order (spans end, and are exported,
    /// before their parents, so this is usually end order).
    pub fn children_of(&self, parent: &ReceivedSpan) -> Vec<ReceivedSpan> {
        let store = self.shared.lock();
        store
            .spans
            .iter()
            .filter(|s| s.is_child_of(parent))
            .cloned()
            .collect()
    }

    /// Every accepted log record, in arrival order.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.shared.lock().logs.clone()
    }

    /// Accepted log records whose event name is `name` (the `event_name` field, or the
    /// `event.name` attribute as a fallback; see [`ReceivedLog::event_name`]).
    pub fn logs_with_event_name(&self, name: &str) -> Vec<ReceivedLog> {
        let store = self.shared.lock();
        store
            .logs
            .iter()
            .filter(|l| l.event_name() == Some(name))
            .cloned()
            .collect()
    }

    /// Accepted log records emitted inside `span` (matching trace id and span id).
    pub fn logs_in_span(&self, span: &ReceivedSpan) -> Vec<ReceivedLog> {
        let store = self.shared.lock();
        store
            .logs
            .iter()
            .filter(|l| l.is_in_span(span))
            .cloned()
            .collect()
    }

    /// Every accepted metric of every export batch, in arrival order.
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.shared.lock().metrics.clone()
    }

    /// The distinct names of accepted metrics, sorted.
    pub fn metric_names(&self) -> Vec<String> {
        query::metric_names(&self.shared.lock().metrics)
    }

    /// See [`crate::counter_value`]: latest cumulative point per series, summed over the series
    /// matching `filter`.
    pub fn counter_value(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        query::counter_value(&self.shared.lock().metrics, name, filter)
    }

    /// See [`crate::histogram_count`].
    pub fn histogram_count(&self, name: &str, filter: &[(&str, &str)]) -> u64 {
        query::histogram_count(&self.shared.lock().metrics, name, filter)
    }

    /// See [`crate::histogram_sum`].
    pub fn histogram_sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        query::histogram_sum(&self.shared.lock().metrics, name, filter)
    }

    /// See [`crate::gauge_last`].
    pub fn gauge_last(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        query::gauge_last(&self.shared.lock().metrics, name, filter)
    }

    /// Every request body received on any signal, transport and behaviour, concatenated (gRPC
    /// bodies are the re-encoded messages). For leak scans: search it for canary strings.
    pub fn raw_bytes(&self) -> Vec<u8> {
        self.shared.lock().raw.clone()
    }

    /// True when `needle` occurs anywhere in [`OtlpReceiver::raw_bytes`] (an empty needle
    /// always does).
    pub fn raw_bytes_contain(&self, needle: &[u8]) -> bool {
        let store = self.shared.lock();
        needle.is_empty() || store.raw.windows(needle.len()).any(|w| w == needle)
    }

    /// How many export requests arrived for `signal` on both transports, whatever the answer.
    pub fn request_count(&self, signal: Signal) -> usize {
        self.shared.lock().requests[signal.index()]
    }

    /// Forgets everything received so far (behaviour is kept). Useful between test phases.
    pub fn clear(&self) {
        let mut store = self.shared.lock();
        let behavior = store.behavior;
        *store = Store {
            behavior,
            ..Store::default()
        };
    }

    /// Polls `pred` about every 20 ms until it returns true (→ `true`) or `timeout` has elapsed
    /// (→ the predicate's final answer). Never holds a lock while sleeping.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&OtlpReceiver) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops both servers: releases hung requests (they get `UNAVAILABLE` / 503), lets
    /// in-flight requests drain for up to 500 ms, then aborts whatever is left. Returns promptly
    /// even when clients keep connections open. Afterwards the ports refuse connections.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                // Resolves at once with a cancellation error once the task is aborted.
                let _ = task.await;
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// An endpoint nobody listens on, `http://127.0.0.1:PORT`: the port was bound and released, so
/// connecting is refused (unless another process grabs the port in between, which the OS makes
/// unlikely by not reusing an ephemeral port right away). Falls back to port 1 (privileged,
/// unused on test machines) if binding fails.
pub fn refused_endpoint() -> String {
    let port = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map_or(1, |addr| addr.port());
    format!("http://127.0.0.1:{port}")
}
