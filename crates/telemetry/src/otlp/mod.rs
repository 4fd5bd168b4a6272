//! OTLP/HTTP export of spans and log records: the hot path of full evidence.
//!
//! Every proxied call ends in two spans and a log record per attempt, so their export runs thousands of times
//! a second. [`proto`] writes each batch's request bytes straight from the SDK's data (no intermediate message
//! structs); one blocking HTTP client posts them from the SDK's batch thread. Metrics (one export a minute)
//! and gRPC stay on `opentelemetry-otlp`.
//!
//! Behaviour on failure is the upstream exporter's: an error status or a network error fails the batch
//! (the [`crate::export::Counted`] wrapper counts its items as dropped); 429, 502, 503, 504 and connection
//! errors are retried with doubling delays while the export timeout allows. Headers come from
//! `OTEL_EXPORTER_OTLP_{TRACES,LOGS}_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`, as upstream reads them.

mod proto;

use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::blocking::Client;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use proto::{EncodedResource, Writer};

/// First delay before re-sending a batch the collector could not take; doubled each time.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The most of a collector's response that is read (a partial-success message is a few bytes).
const MAX_RESPONSE: u64 = 64 * 1024;

/// Posts OTLP/HTTP protobuf requests for one signal (traces or logs) to one endpoint.
#[derive(Debug)]
pub(crate) struct HttpExporter {
    endpoint: String,
    headers: HeaderMap,
    timeout: Duration,
    resource: EncodedResource,
    /// Built on the first export, on the SDK's export thread (a blocking client must not be built or dropped
    /// on an async runtime's thread); taken at shutdown.
    client: Mutex<Option<Client>>,
    shut_down: AtomicBool,
}

impl HttpExporter {
    /// An exporter to `endpoint` (the full URL, `…/v1/traces` or `…/v1/logs`) sending `headers` (see
    /// [`headers_from_env`]).
    pub(crate) fn new(endpoint: &str, headers: HeaderMap, timeout: Duration) -> HttpExporter {
        HttpExporter {
            endpoint: endpoint.to_owned(),
            headers,
            timeout,
            resource: EncodedResource::default(),
            client: Mutex::new(None),
            shut_down: AtomicBool::new(false),
        }
    }

    fn client(&self) -> Result<Client, OTelSdkError> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| {
                OTelSdkError::InternalFailure(format!("OTLP/HTTP client could not start: {e}"))
            })?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Posts one request body, re-sending it on a retryable failure while the export timeout allows.
    fn post(&self, body: Vec<u8>) -> OTelSdkResult {
        let client = self.client()?;
        let body = bytes::Bytes::from(body);
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let sent = client
                .post(&self.endpoint)
                .headers(self.headers.clone())
                .header(CONTENT_TYPE, "application/x-protobuf")
                .timeout(left.max(Duration::from_millis(1)))
                .body(body.clone())
                .send();
            let failure = match sent {
                Ok(response) => {
                    let status = response.status();
                    // Read (a bounded part of) the answer, so the connection can be reused.
                    let _ = response.take(MAX_RESPONSE).read_to_end(&mut Vec::new());
                    if status.is_success() {
                        return Ok(());
                    }
                    let failure = format!("OTLP/HTTP export to {}: HTTP {status}", self.endpoint);
                    if !matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                        return Err(OTelSdkError::InternalFailure(failure));
                    }
                    failure
                }
                Err(e) if e.is_timeout() => {
                    return Err(OTelSdkError::Timeout(self.timeout));
                }
                Err(e) => format!("OTLP/HTTP export to {}: {}", self.endpoint, e.without_url()),
            };
            if Instant::now() + delay >= deadline {
                return Err(OTelSdkError::InternalFailure(failure));
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.shut_down.store(true, Ordering::Release);
        drop(
            self.client
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        Ok(())
    }
}

impl SpanExporter for HttpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut w = Writer::default();
        proto::encode_spans(&mut w, &self.resource, &batch);
        drop(batch);
        self.post(w.into_bytes())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.shutdown()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

impl LogExporter for HttpExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let mut w = Writer::default();
        proto::encode_logs(&mut w, &self.resource, &batch);
        self.post(w.into_bytes())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.shutdown()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

/// The exporter of spans or of log records: ours over HTTP, `opentelemetry-otlp`'s (`S`) over gRPC.
#[derive(Debug)]
pub(crate) enum Export<S> {
    Sdk(S),
    Http(Box<HttpExporter>),
}

impl<S: SpanExporter> SpanExporter for Export<S> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            Export::Sdk(e) => e.export(batch).await,
            Export::Http(e) => SpanExporter::export(&**e, batch).await,
        }
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Export::Sdk(e) => e.shutdown_with_timeout(timeout),
            Export::Http(e) => e.shutdown(),
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        match self {
            Export::Sdk(e) => e.force_flush(),
            Export::Http(_) => Ok(()),
        }
    }
    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Export::Sdk(e) => e.set_resource(resource),
            Export::Http(e) => SpanExporter::set_resource(&mut **e, resource),
        }
    }
}

impl<S: LogExporter> LogExporter for Export<S> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        match self {
            Export::Sdk(e) => e.export(batch).await,
            Export::Http(e) => LogExporter::export(&**e, batch).await,
        }
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Export::Sdk(e) => e.shutdown_with_timeout(timeout),
            Export::Http(e) => e.shutdown(),
        }
    }
    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Export::Sdk(e) => e.set_resource(resource),
            Export::Http(e) => LogExporter::set_resource(&mut **e, resource),
        }
    }
}

/// The headers of `signal`'s (`TRACES` or `LOGS`) requests, as `opentelemetry-otlp` reads them: `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS`,
/// else `OTEL_EXPORTER_OTLP_HEADERS`; `key=value` pairs separated by commas, values percent-decoded. A pair
/// that is not a valid header is skipped, as upstream does.
pub(crate) fn headers_from_env(signal: &str) -> HeaderMap {
    headers(|k| std::env::var(k).ok(), signal)
}

fn headers(lookup: impl Fn(&str) -> Option<String>, signal: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    let Some(spec) = lookup(&format!("OTEL_EXPORTER_OTLP_{signal}_HEADERS"))
        .or_else(|| lookup("OTEL_EXPORTER_OTLP_HEADERS"))
    else {
        return map;
    };
    for pair in spec.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), percent_decode(v.trim()));
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            map.insert(k, v);
        }
    }
    map
}

/// `%XX` escapes decoded; a malformed escape is kept as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_prefer_the_signal_variable_and_decode_values() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        static GENERAL: [(&str, &str); 1] = [(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Basic%20abc, x-tenant = t1,broken,bad header=x",
        )];
        let h = headers(env(&GENERAL), "TRACES");
        assert_eq!(h.get("authorization").unwrap(), "Basic abc");
        assert_eq!(h.get("x-tenant").unwrap(), "t1");
        assert_eq!(
            h.len(),
            2,
            "a pair without `=` or with an invalid name is skipped"
        );
        static BOTH: [(&str, &str); 2] = [
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "b=2"),
        ];
        let h = headers(env(&BOTH), "LOGS");
        assert!(h.get("a").is_none() && h.get("b").unwrap() == "2");
        assert!(headers(env(&[]), "TRACES").is_empty());
        assert_eq!(percent_decode("100%25 %zz%4"), "100% %zz%4");
    }

    /// A collector on 127.0.0.1 answering each request with the next status of `script`, then stopping;
    /// returns its URL and a handle yielding every request's head and body.
    /// Each request the test collector read: its head and its body.
    type Seen = Vec<(String, Vec<u8>)>;

    fn collector(script: Vec<u16>) -> (String, std::thread::JoinHandle<Seen>) {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut script = script.into_iter();
            'conn: while let Ok((stream, _)) = listener.accept() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            continue 'conn;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    seen.push((head, body));
                    let Some(status) = script.next() else {
                        break 'conn;
                    };
                    write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").unwrap();
                    if script.len() == 0 {
                        break 'conn;
                    }
                }
            }
            seen
        });
        (url, handle)
    }

    fn exporter(url: &str) -> HttpExporter {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("t1"));
        HttpExporter::new(url, h, Duration::from_secs(5))
    }

    #[test]
    fn an_unavailable_collector_gets_the_batch_again_and_a_bad_request_does_not() {
        // 503 then 200: the same bytes are sent twice, with the headers and the protobuf content type.
        let (url, seen) = collector(vec![503, 200]);
        let e = exporter(&url);
        assert!(e.post(b"batch".to_vec()).is_ok());
        let seen = seen.join().unwrap();
        assert_eq!(seen.len(), 2);
        for (head, body) in &seen {
            assert!(head.starts_with("POST /v1/traces HTTP/1.1"), "{head}");
            let head = head.to_ascii_lowercase();
            assert!(
                head.contains("content-type: application/x-protobuf"),
                "{head}"
            );
            assert!(head.contains("x-tenant: t1"), "{head}");
            assert_eq!(body, b"batch");
        }
        // 400: the collector will never take it; one request, and the batch fails (counted as dropped).
        let (url, seen) = collector(vec![400]);
        let err = exporter(&url).post(b"batch".to_vec()).unwrap_err();
        assert!(err.to_string().contains("HTTP 400"), "{err}");
        assert_eq!(seen.join().unwrap().len(), 1);
        // After shutdown nothing is sent.
        let e = exporter(&url);
        e.shutdown().unwrap();
        assert!(matches!(
            e.post(Vec::new()),
            Err(OTelSdkError::AlreadyShutdown)
        ));
    }
}
