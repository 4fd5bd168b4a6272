//! [`Batcher`]: the span and log processor of OTLP export, encoding each item on the thread that ends it.
//!
//! The SDK's batch processors move every finished span (a `SpanData` of ~300 bytes plus its attribute vector)
//! and every log record (cloned into a box) through a channel to their thread, which encodes and frees them
//! there: a copy per item, frees on another thread than the allocation, caches that have gone cold. Profiled
//! under load, that hand-over cost more than the encoding itself. Here an item is encoded into protobuf when
//! it ends, on its own thread, into one of a few shards (a thread keeps to one; a shard's mutex is only ever
//! contended by the export thread's tick), and freed where it was made. A full shard is handed to the export
//! thread as bytes; every `delay` (and on flush or shutdown) the export thread also takes what the shards hold.
//!
//! Bounded, and never blocking the emitting thread: a shard holds at most one batch; at most `queue / batch`
//! full batches wait for the export thread. A batch that does not fit, a failed export, and an item that
//! arrives after shutdown began are counted in `retrybudget.telemetry.dropped`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::OtlpExporter;
use super::proto::{EncodedResource, Groups, LogFields, Scalar};
use crate::export::{Dropped, export_failed};

/// Most shards: threads beyond share them.
const MAX_SHARDS: usize = 16;

/// Batches one signal's items for one [`OtlpExporter`] (see the module docs).
#[derive(Debug)]
pub(crate) struct Batcher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Index of the signal in [`crate::export::SIGNALS`].
    signal: usize,
    shards: Box<[Mutex<Groups>]>,
    /// Items per export request.
    batch: usize,
    /// Full batches that may wait for the export thread.
    max_ready: usize,
    /// Longest wait of an item in a shard.
    delay: Duration,
    state: Mutex<State>,
    wake: Condvar,
    /// Set when shutdown begins: items are then counted as dropped.
    closed: AtomicBool,
    resource: Mutex<Arc<EncodedResource>>,
    dropped: Arc<Dropped>,
    /// Encoded bytes per item of the last batch: a shard's next buffer starts that large.
    item_bytes: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Groups>,
    /// Callers of `force_flush`/`shutdown` waiting for the export thread.
    waiting: Vec<mpsc::Sender<()>>,
    stop: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    /// This thread's number: its shard is this modulo the shards.
    static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

impl Batcher {
    /// Starts the export thread of `signal` (an index into [`crate::export::SIGNALS`]) sending through `exporter`
    /// at most `batch` items per request (at most `queue`: the one place the batch is bounded by the queue): at
    /// most `queue` items wait in full batches; none waits in a shard longer than `delay`.
    pub(crate) fn start(
        signal: usize,
        exporter: OtlpExporter,
        queue: usize,
        batch: usize,
        delay: Duration,
        dropped: Arc<Dropped>,
    ) -> std::io::Result<Batcher> {
        let batch = batch.clamp(1, queue.max(1));
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS));
        let shared = Arc::new(Shared {
            signal,
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            batch,
            max_ready: (queue / batch).max(1),
            delay,
            state: Mutex::default(),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            resource: Mutex::default(),
            dropped,
            item_bytes: AtomicUsize::new(0),
        });
        let thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("retrybudget-otlp-{}", exporter.signal_name()))
            .spawn(move || thread.run(&exporter))?;
        Ok(Batcher { shared })
    }

    /// A handle that adds items without going through the SDK (see [`Records`]).
    pub(crate) fn records(&self) -> Records {
        Records(Arc::clone(&self.shared))
    }

    /// Asks the export thread to send everything pushed so far (and, with `stop`, to end), waiting at most
    /// `timeout` for it.
    fn drain(&self, stop: bool, timeout: Duration) -> OTelSdkResult {
        let s = &self.shared;
        let (tx, rx) = mpsc::channel();
        {
            let mut state = lock(&s.state);
            if state.stop {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            if stop {
                s.closed.store(true, Ordering::Release);
                state.stop = true;
            }
            state.waiting.push(tx);
        }
        s.wake.notify_one();
        match rx.recv_timeout(timeout) {
            Ok(()) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(OTelSdkError::AlreadyShutdown),
        }
    }
}

/// Adds log records to a [`Batcher`] directly, encoded from their fields: the evidence records, which need no
/// SDK record built, filled, boxed and dropped first. After shutdown they are counted as dropped, as any item.
#[derive(Debug, Clone)]
pub(crate) struct Records(Arc<Shared>);

impl Records {
    /// Adds one log record of `scope`.
    pub(crate) fn add(
        &self,
        scope: &InstrumentationScope,
        fields: &LogFields<'_>,
        attributes: &[Option<(&str, Scalar<'_>)>],
    ) {
        self.0
            .push(|groups| groups.add_record(scope, fields, attributes));
    }
}

/// How long `force_flush` (which the SDK gives no timeout) waits for the export thread.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

impl Shared {
    /// Encodes one item into this thread's shard; hands the shard to the export thread when it is full.
    fn push(&self, add: impl FnOnce(&mut Groups)) {
        let s = self;
        let shard = &s.shards[THREAD.try_with(|t| *t).unwrap_or(0) % s.shards.len()];
        let full = {
            let mut groups = lock(shard);
            // Checked under the shard's lock: shutdown takes every shard after setting it, so an item is
            // either in a shard it takes or counted here.
            if s.closed.load(Ordering::Acquire) {
                drop(groups);
                s.dropped.add(s.signal, 1);
                return;
            }
            add(&mut groups);
            (groups.count >= s.batch).then(|| s.take(&mut groups))
        };
        if let Some(batch) = full {
            let mut state = lock(&s.state);
            if state.stop || state.ready.len() >= s.max_ready {
                drop(state);
                s.dropped.add(s.signal, batch.count as u64);
                return;
            }
            state.ready.push_back(batch);
            drop(state);
            s.wake.notify_one();
        }
    }

    /// Takes a shard's items, leaving it empty with room for a full batch.
    fn take(&self, groups: &mut Groups) -> Groups {
        let room = self.batch * self.item_bytes.load(Ordering::Relaxed);
        std::mem::replace(groups, Groups::with_capacity(room))
    }

    /// The export thread: full batches as they come; every `delay`, on a flush and at shutdown, the shards too.
    fn run(&self, exporter: &OtlpExporter) {
        let mut tick = Instant::now() + self.delay;
        loop {
            let (ready, waiting, stop) = {
                let mut state = lock(&self.state);
                loop {
                    let now = Instant::now();
                    if !state.ready.is_empty()
                        || !state.waiting.is_empty()
                        || state.stop
                        || now >= tick
                    {
                        break;
                    }
                    state = self
                        .wake
                        .wait_timeout(state, tick - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                (
                    std::mem::take(&mut state.ready),
                    std::mem::take(&mut state.waiting),
                    state.stop,
                )
            };
            for batch in ready {
                self.export(exporter, batch);
            }
            if !waiting.is_empty() || stop || Instant::now() >= tick {
                for shard in self.shards.iter() {
                    let batch = {
                        let mut groups = lock(shard);
                        (groups.count > 0).then(|| self.take(&mut groups))
                    };
                    if let Some(batch) = batch {
                        self.export(exporter, batch);
                    }
                }
                tick = Instant::now() + self.delay;
            }
            if stop {
                exporter.shutdown();
            }
            for w in waiting {
                let _ = w.send(());
            }
            if stop {
                return;
            }
        }
    }

    /// Sends one batch; a failure counts its items as dropped.
    fn export(&self, exporter: &OtlpExporter, batch: Groups) {
        let n = batch.count;
        if n > 0 {
            self.item_bytes
                .store(batch.bytes().div_ceil(n) + 16, Ordering::Relaxed);
        }
        let resource = Arc::clone(&lock(&self.resource));
        let body = batch.request(&resource);
        drop(batch);
        if let Err(e) = futures_executor::block_on(exporter.send(body)) {
            export_failed(&self.dropped, self.signal, n, &e);
        }
    }
}

impl Drop for Batcher {
    /// Lets the export thread end if nobody shut it down (it sends what it holds first, without waiting here).
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if !state.stop {
            self.shared.closed.store(true, Ordering::Release);
            state.stop = true;
            drop(state);
            self.shared.wake.notify_one();
        }
    }
}

impl SpanProcessor for Batcher {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        self.shared.push(|groups| groups.add_span(&span));
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.drain(false, FLUSH_WAIT)
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.drain(true, timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        *lock(&self.shared.resource) = Arc::new(EncodedResource::new(resource));
    }
}

impl LogProcessor for Batcher {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.shared.push(|groups| groups.add_log(record, scope));
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.drain(false, FLUSH_WAIT)
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.drain(true, timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        *lock(&self.shared.resource) = Arc::new(EncodedResource::new(resource));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::OtlpProtocol;
    use crate::export::TRACES;
    use crate::otlp::Signal;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prost::Message as _;

    fn tracing_to(url: &str, queue: usize, timeout: Duration) -> (SdkTracerProvider, Arc<Dropped>) {
        let exporter = OtlpExporter::new(
            OtlpProtocol::HttpProtobuf,
            Signal::Traces,
            url,
            http::HeaderMap::new(),
            timeout,
        )
        .unwrap();
        let dropped = Arc::new(Dropped::default());
        // An hour: nothing here is sent by the timer.
        let delay = Duration::from_secs(3600);
        let batcher =
            Batcher::start(TRACES, exporter, queue, 512, delay, Arc::clone(&dropped)).unwrap();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batcher)
            .build();
        (provider, dropped)
    }

    fn spans(provider: &SdkTracerProvider, n: usize) {
        let tracer = provider.tracer("retrybudget");
        for i in 0..n {
            drop(tracer.start(format!("span {i}")));
        }
    }

    #[test]
    fn a_full_shard_is_one_request_and_a_flush_sends_the_rest() {
        let (url, seen) = super::super::tests::collector(vec![200, 200]);
        let (provider, dropped) = tracing_to(&url, 4, Duration::from_secs(5));
        spans(&provider, 6);
        provider.force_flush().unwrap();
        let names: Vec<Vec<String>> = seen
            .join()
            .unwrap()
            .iter()
            .map(|(_, body)| {
                let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
                let scope = &request.resource_spans[0].scope_spans[0];
                assert_eq!(scope.scope.as_ref().unwrap().name, "retrybudget");
                scope.spans.iter().map(|s| s.name.clone()).collect()
            })
            .collect();
        assert_eq!(
            names,
            [
                vec!["span 0", "span 1", "span 2", "span 3"],
                vec!["span 4", "span 5"]
            ],
            "a batch of 4 as soon as it was full, the last 2 on the flush"
        );
        assert_eq!(dropped.get(TRACES), 0);
    }

    #[test]
    fn what_a_hanging_collector_cannot_take_is_counted_once() {
        // Accepts connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
        });
        // One span per batch, one batch may wait: of 5 spans, one is being sent (and times out), one waits
        // (and times out after it), the others find the queue full.
        let (provider, dropped) = tracing_to(&url, 1, Duration::from_millis(300));
        spans(&provider, 5);
        assert!(
            dropped.get(TRACES) >= 3,
            "the full queue counts at once: {}",
            dropped.get(TRACES)
        );
        provider
            .shutdown_with_timeout(Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            dropped.get(TRACES),
            5,
            "every span lost, each counted once (full queue or failed export)"
        );
    }

    #[test]
    fn a_span_ended_after_shutdown_is_counted() {
        // Nothing is sent: no collector needed.
        let exporter = OtlpExporter::new(
            OtlpProtocol::HttpProtobuf,
            Signal::Traces,
            "http://127.0.0.1:1/v1/traces",
            http::HeaderMap::new(),
            Duration::from_secs(1),
        )
        .unwrap();
        let dropped = Arc::new(Dropped::default());
        let batcher = Batcher::start(
            TRACES,
            exporter,
            8,
            512,
            Duration::from_secs(3600),
            Arc::clone(&dropped),
        )
        .unwrap();
        SpanProcessor::shutdown_with_timeout(&batcher, Duration::from_secs(5)).unwrap();
        // (The SDK's tracer stops calling its processors after shutdown; a span still open then ends here.)
        let span = SpanData {
            span_context: opentelemetry::trace::SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Client,
            name: "late".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: opentelemetry::trace::Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("retrybudget").build(),
        };
        batcher.on_end(span);
        assert_eq!(dropped.get(TRACES), 1);
        assert!(matches!(
            SpanProcessor::force_flush(&batcher),
            Err(OTelSdkError::AlreadyShutdown)
        ));
    }
}
