//! OTLP export of spans and log records: the hot path of full evidence.
//!
//! Every proxied call ends in three spans and a log record per attempt, so their export runs thousands of
//! times a second. [`Batcher`] (the tracer's and logger's processor) has [`proto`] write each item's protobuf
//! straight from the SDK's data when it ends (no intermediate message structs, no copy to another thread);
//! [`OtlpExporter`] sends a batch's request from the batcher's export thread, over HTTP/protobuf (a blocking
//! HTTP client) or gRPC (a tonic channel carrying the bytes as they are). Metrics (one export per interval)
//! stay on `opentelemetry-otlp`.
//!
//! Behaviour on failure is the upstream exporters': a failed batch is an error (the batcher counts its items
//! as dropped); HTTP 429, 502, 503, 504, connection errors
//! and the retryable gRPC codes are retried with doubling delays while the export timeout allows. Headers (gRPC
//! metadata) come from `OTEL_EXPORTER_OTLP_{TRACES,LOGS}_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`.

mod batch;
mod grpc;
mod proto;

pub(crate) use batch::{Batcher, Records};
pub(crate) use proto::{LogBody, LogFields, Scalar};

use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use reqwest::blocking::Client;

use crate::TelemetryError;
use crate::config::OtlpProtocol;

/// First delay before re-sending a batch the collector could not take; doubled each time.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The most of a collector's response that is read (a partial-success message is a few bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// The two signals sent by [`OtlpExporter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Traces,
    Logs,
}

impl Signal {
    /// The word of its `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS` variable.
    fn env(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Logs => "LOGS",
        }
    }

    /// Its name in `retrybudget.telemetry.dropped{signal}` and in thread names.
    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }
}

/// One send of a request body, as the retry loop sees it.
enum Sent {
    Done,
    /// Worth sending again (the collector is busy or unreachable): what happened.
    Retry(String),
    /// Not worth sending again.
    Failed(OTelSdkError),
}

/// How the bytes travel.
#[derive(Debug)]
enum Transport {
    /// Built on the first export, on the batcher's export thread (a blocking client must not be built or dropped
    /// on an async runtime's thread); taken at shutdown.
    Http(Mutex<Option<Client>>),
    Grpc(grpc::Grpc),
}

/// Sends one signal's batches to one endpoint, encoded by [`proto`].
#[derive(Debug)]
pub(crate) struct OtlpExporter {
    endpoint: String,
    headers: HeaderMap,
    timeout: Duration,
    transport: Transport,
    signal: Signal,
    shut_down: AtomicBool,
}

impl OtlpExporter {
    /// An exporter of `signal` to `endpoint` (for HTTP the full URL, `…/v1/traces` or `…/v1/logs`) sending
    /// `headers` (see [`headers_from_env`]). With gRPC this must run inside a Tokio runtime: the channel's
    /// connection lives on it.
    pub(crate) fn new(
        protocol: OtlpProtocol,
        signal: Signal,
        endpoint: &str,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<OtlpExporter, TelemetryError> {
        let transport = match protocol {
            OtlpProtocol::HttpProtobuf => Transport::Http(Mutex::new(None)),
            OtlpProtocol::Grpc => Transport::Grpc(grpc::Grpc::new(signal, endpoint, timeout)?),
        };
        Ok(OtlpExporter {
            endpoint: endpoint.to_owned(),
            headers,
            timeout,
            transport,
            signal,
            shut_down: AtomicBool::new(false),
        })
    }

    /// `traces` or `logs`.
    fn signal_name(&self) -> &'static str {
        self.signal.name()
    }

    /// Sends one request body, again on a retryable failure while the export timeout allows.
    async fn send(&self, body: Vec<u8>) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = Bytes::from(body);
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let sent = match &self.transport {
                Transport::Http(client) => self.post(client, &body, left),
                Transport::Grpc(g) => g.send(&body, &self.headers, left).await,
            };
            let failure = match sent {
                Sent::Done => return Ok(()),
                Sent::Failed(e) => return Err(e),
                Sent::Retry(failure) => failure,
            };
            if Instant::now() + delay >= deadline {
                return Err(OTelSdkError::InternalFailure(failure));
            }
            // The export thread is ours alone: sleeping blocks no one.
            std::thread::sleep(delay);
            delay *= 2;
        }
    }

    fn post(&self, client: &Mutex<Option<Client>>, body: &Bytes, left: Duration) -> Sent {
        let client = {
            let mut slot = client.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                match Client::builder().timeout(self.timeout).build() {
                    Ok(c) => *slot = Some(c),
                    Err(e) => {
                        return Sent::Failed(OTelSdkError::InternalFailure(format!(
                            "OTLP/HTTP client could not start: {e}"
                        )));
                    }
                }
            }
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => return Sent::Failed(OTelSdkError::AlreadyShutdown),
            }
        };
        let sent = client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .timeout(left)
            .body(body.clone())
            .send();
        match sent {
            Ok(response) => {
                let status = response.status();
                // Read (a bounded part of) the answer, so the connection can be reused.
                let _ = response
                    .take(MAX_RESPONSE as u64)
                    .read_to_end(&mut Vec::new());
                let failure = format!("OTLP/HTTP export to {}: HTTP {status}", self.endpoint);
                match status.as_u16() {
                    200..=299 => Sent::Done,
                    429 | 502 | 503 | 504 => Sent::Retry(failure),
                    _ => Sent::Failed(OTelSdkError::InternalFailure(failure)),
                }
            }
            Err(e) if e.is_timeout() => Sent::Failed(OTelSdkError::Timeout(self.timeout)),
            Err(e) => Sent::Retry(format!(
                "OTLP/HTTP export to {}: {}",
                self.endpoint,
                e.without_url()
            )),
        }
    }

    /// Sends nothing more; drops the HTTP client (on the calling thread: the export thread).
    fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Release);
        if let Transport::Http(client) = &self.transport {
            drop(client.lock().unwrap_or_else(PoisonError::into_inner).take());
        }
    }
}

/// The headers of `signal`'s requests, from the environment (see [`headers`]).
pub(crate) fn headers_from_env(signal: Signal) -> HeaderMap {
    headers(|k| std::env::var(k).ok(), signal.env())
}

/// The headers of `signal`'s (`TRACES` or `LOGS`) requests, as `opentelemetry-otlp` reads them: `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS`,
/// else `OTEL_EXPORTER_OTLP_HEADERS`; `key=value` pairs separated by commas, values percent-decoded. A pair
/// that is not a valid header is skipped, as upstream does.
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
    pub(super) type Seen = Vec<(String, Vec<u8>)>;

    pub(super) fn collector(script: Vec<u16>) -> (String, std::thread::JoinHandle<Seen>) {
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

    fn exporter(url: &str) -> OtlpExporter {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("t1"));
        let timeout = Duration::from_secs(5);
        OtlpExporter::new(OtlpProtocol::HttpProtobuf, Signal::Traces, url, h, timeout).unwrap()
    }

    fn send(e: &OtlpExporter, body: &[u8]) -> OTelSdkResult {
        futures_executor::block_on(e.send(body.to_vec()))
    }

    #[test]
    fn an_unavailable_collector_gets_the_batch_again_and_a_bad_request_does_not() {
        // 503 then 200: the same bytes are sent twice, with the headers and the protobuf content type.
        let (url, seen) = collector(vec![503, 200]);
        let e = exporter(&url);
        assert!(send(&e, b"batch").is_ok());
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
        let err = send(&exporter(&url), b"batch").unwrap_err();
        assert!(err.to_string().contains("HTTP 400"), "{err}");
        assert_eq!(seen.join().unwrap().len(), 1);
        // After shutdown nothing is sent.
        let e = exporter(&url);
        e.shutdown();
        assert!(matches!(send(&e, b""), Err(OTelSdkError::AlreadyShutdown)));
    }
}
