//! The state shared by the server and every control handle: the script queue, the default step,
//! the load mode and the record of attempts.
//!
//! One `std::sync::Mutex` guards it; it is held only for short, non-async sections (never across an
//! `.await`), so the happy path costs one uncontended lock per request. Recorded headers stay in
//! memory only; nothing here prints them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use http::{HeaderMap, Method};
use serde::Serialize;

use crate::step::{LoadMode, Step};

/// How many recorded requests are kept; older ones are dropped (the count keeps going).
pub const MAX_RECORDED: usize = 10_000;

/// One `/v1/*` attempt as the fake received it.
///
/// Headers are kept so tests can check what a client sent (e.g. `authorization`, `traceparent`,
/// `x-stainless-retry-count`); they live only in memory and are never printed by this crate.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path without the query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Request headers: lowercase names; repeated headers joined with `", "`; non-UTF-8 bytes
    /// replaced.
    pub headers: BTreeMap<String, String>,
    /// Length of the request body in bytes.
    pub body_len: usize,
    /// When it arrived, in milliseconds since the server started.
    pub at_ms: u64,
    /// When it arrived.
    #[serde(skip)]
    pub received_at: Instant,
}

/// Header names that carry credentials: their values never leave the process through `/_control/requests`.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "openai-api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
    "x-auth-token",
];

/// Whether a header may carry a credential: a listed name, or one that mentions a key, token, secret,
/// password, signature, session or auth.
pub fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_HEADERS.contains(&name.as_str())
        || [
            "key",
            "token",
            "secret",
            "password",
            "signature",
            "session",
            "auth",
        ]
        .iter()
        .any(|w| name.contains(w))
}

impl RecordedRequest {
    /// A copy whose credential headers (see [`is_credential_header`]) show only their length, e.g.
    /// `[redacted; 27 bytes]`: enough to prove a header arrived, nothing to reuse.
    pub fn redacted(&self) -> RecordedRequest {
        let mut copy = self.clone();
        for (name, value) in copy.headers.iter_mut() {
            if is_credential_header(name) {
                *value = format!("[redacted; {} bytes]", value.len());
            }
        }
        copy
    }

    /// The value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

// Headers may carry credentials: Debug shows only their names.
impl std::fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body_len)
            .field("at_ms", &self.at_ms)
            .finish()
    }
}

/// A compact record: path and headers copied into one buffer (two allocations per request, and no
/// reference into hyper's read buffers, which would pin them in memory).
#[derive(Clone)]
struct Record {
    method: Method,
    bytes: Box<[u8]>,
    path_len: usize,
    /// (name length, value length) of each header, in order, after the path.
    header_lens: Box<[(usize, usize)]>,
    body_len: usize,
    at: Instant,
}

impl Record {
    fn new(method: &Method, path: &str, headers: &HeaderMap, body_len: usize, at: Instant) -> Self {
        let size = path.len()
            + headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(path.as_bytes());
        let mut header_lens = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(value.as_bytes());
            header_lens.push((name.as_str().len(), value.len()));
        }
        Record {
            method: method.clone(),
            bytes: bytes.into_boxed_slice(),
            path_len: path.len(),
            header_lens: header_lens.into_boxed_slice(),
            body_len,
            at,
        }
    }

    fn to_public(&self, started: Instant) -> RecordedRequest {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        let mut pos = self.path_len;
        for &(name_len, value_len) in self.header_lens.iter() {
            let name = String::from_utf8_lossy(&self.bytes[pos..pos + name_len]).into_owned();
            pos += name_len;
            let value = String::from_utf8_lossy(&self.bytes[pos..pos + value_len]);
            pos += value_len;
            headers
                .entry(name)
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        RecordedRequest {
            method: self.method.as_str().to_owned(),
            path: String::from_utf8_lossy(&self.bytes[..self.path_len]).into_owned(),
            headers,
            body_len: self.body_len,
            at_ms: u64::try_from(self.at.saturating_duration_since(started).as_millis())
                .unwrap_or(u64::MAX),
            received_at: self.at,
        }
    }
}

/// A load mode and when it was set.
struct ActiveLoad {
    mode: LoadMode,
    since: Instant,
    /// Requests the mode has judged so far (the index into the pseudo-random sequence).
    seen: u64,
}

impl ActiveLoad {
    /// The failure status for this request, if the mode fails it.
    fn judge(&mut self, now: Instant) -> Option<u16> {
        match self.mode {
            LoadMode::None => None,
            LoadMode::FailPercent {
                percent,
                status,
                seed,
            } => {
                let k = self.seen;
                self.seen = self.seen.wrapping_add(1);
                // The k-th output of splitmix64 seeded with `seed`, mapped to [0, 100).
                let x = splitmix64(seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
                (unit * 100.0 < percent).then_some(status)
            }
            LoadMode::Outage {
                from_ms,
                until_ms,
                status,
            } => {
                let elapsed = now.saturating_duration_since(self.since).as_millis();
                (u128::from(from_ms) <= elapsed && elapsed < u128::from(until_ms)).then_some(status)
            }
        }
    }
}

/// splitmix64's output function (Steele, Lea & Flood 2014): a tiny, well-mixed, seedable PRNG.
fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct State {
    script: VecDeque<Step>,
    default: Arc<Step>,
    load: Option<ActiveLoad>,
    records: VecDeque<Record>,
    count: u64,
}

impl State {
    fn new() -> Self {
        State {
            script: VecDeque::new(),
            default: Arc::new(Step::ok()),
            load: None,
            records: VecDeque::new(),
            count: 0,
        }
    }
}

/// The step chosen for one request: popped from the script, made by the load mode, or the shared
/// default (an `Arc`, so the happy path does not clone header maps).
pub(crate) enum Chosen {
    Owned(Step),
    Shared(Arc<Step>),
}

impl std::ops::Deref for Chosen {
    type Target = Step;
    fn deref(&self) -> &Step {
        match self {
            Chosen::Owned(s) => s,
            Chosen::Shared(s) => s,
        }
    }
}

/// State shared between the server tasks and control handles.
pub(crate) struct Shared {
    started: Instant,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            started: Instant::now(),
            state: Mutex::new(State::new()),
        }
    }

    /// A panic elsewhere while holding the lock leaves plain data behind; keep serving with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts and records one attempt, then picks its step. Returns the attempt number (1-based).
    pub(crate) fn admit(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body_len: usize,
    ) -> (u64, Chosen) {
        let now = Instant::now();
        let record = Record::new(method, path, headers, body_len, now);
        let mut st = self.lock();
        let n = push_record(&mut st, record);
        let chosen = if let Some(step) = st.script.pop_front() {
            Chosen::Owned(step)
        } else if let Some(status) = st.load.as_mut().and_then(|l| l.judge(now)) {
            Chosen::Owned(Step::status(status))
        } else {
            Chosen::Shared(Arc::clone(&st.default))
        };
        (n, chosen)
    }

    /// Counts and records an attempt that is answered without consuming a step (e.g. oversize).
    pub(crate) fn record_only(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body_len: usize,
    ) {
        let record = Record::new(method, path, headers, body_len, Instant::now());
        push_record(&mut self.lock(), record);
    }

    pub(crate) fn push(&self, steps: impl IntoIterator<Item = Step>) -> usize {
        let mut st = self.lock();
        st.script.extend(steps);
        st.script.len()
    }

    pub(crate) fn set_default(&self, step: Step) {
        self.lock().default = Arc::new(step);
    }

    pub(crate) fn set_load(&self, mode: LoadMode) {
        let load = match mode {
            LoadMode::None => None,
            mode => Some(ActiveLoad {
                mode,
                since: Instant::now(),
                seen: 0,
            }),
        };
        self.lock().load = load;
    }

    pub(crate) fn reset(&self) {
        *self.lock() = State::new();
    }

    pub(crate) fn count(&self) -> u64 {
        self.lock().count
    }

    pub(crate) fn queued(&self) -> usize {
        self.lock().script.len()
    }

    pub(crate) fn requests(&self) -> (u64, Vec<RecordedRequest>) {
        // Copy the compact records out under the lock; build the strings after releasing it.
        let (count, snapshot): (u64, Vec<Record>) = {
            let st = self.lock();
            (st.count, st.records.iter().cloned().collect())
        };
        let requests = snapshot.iter().map(|r| r.to_public(self.started)).collect();
        (count, requests)
    }
}

fn push_record(st: &mut State, record: Record) -> u64 {
    st.count = st.count.wrapping_add(1);
    if st.records.len() >= MAX_RECORDED {
        st.records.pop_front();
    }
    st.records.push_back(record);
    st.count
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fail_percent_is_deterministic_and_near_the_share() {
        let judge_all = |seed| {
            let mut load = ActiveLoad {
                mode: LoadMode::fail_percent(10.0, 503, seed),
                since: Instant::now(),
                seen: 0,
            };
            let now = Instant::now();
            (0..1000)
                .map(|_| load.judge(now).is_some())
                .collect::<Vec<_>>()
        };
        let a = judge_all(7);
        assert_eq!(a, judge_all(7));
        assert_ne!(a, judge_all(8));
        let failures = a.iter().filter(|f| **f).count();
        assert!((70..=130).contains(&failures), "{failures}");
    }

    #[test]
    fn redacted_copies_hide_credentials() {
        let mut headers = HeaderMap::new();
        headers.append("authorization", "Bearer sk-x".parse().unwrap());
        headers.append("x-api-key", "k".parse().unwrap());
        headers.append("Cookie", "a=b".parse().unwrap());
        headers.append("x-custom-token", "t".parse().unwrap());
        headers.append("x-request-id", "r1".parse().unwrap());
        let shared = Shared::new();
        shared.admit(&Method::POST, "/v1/x", &headers, 5);
        let (_, reqs) = shared.requests();
        let r = reqs[0].redacted();
        assert_eq!(r.header("authorization"), Some("[redacted; 11 bytes]"));
        assert_eq!(r.header("x-api-key"), Some("[redacted; 1 bytes]"));
        assert_eq!(r.header("cookie"), Some("[redacted; 3 bytes]"));
        assert_eq!(r.header("x-custom-token"), Some("[redacted; 1 bytes]"));
        assert_eq!(r.header("x-request-id"), Some("r1"));
        assert_eq!(
            reqs[0].header("authorization"),
            Some("Bearer sk-x"),
            "in-process records keep values"
        );
    }

    #[test]
    fn records_keep_headers_and_join_repeats() {
        let mut headers = HeaderMap::new();
        headers.append("authorization", "Bearer x".parse().unwrap());
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        let shared = Shared::new();
        shared.admit(&Method::POST, "/v1/x", &headers, 5);
        let (count, reqs) = shared.requests();
        assert_eq!(count, 1);
        assert_eq!(reqs[0].path, "/v1/x");
        assert_eq!(reqs[0].header("Authorization"), Some("Bearer x"));
        assert_eq!(reqs[0].header("x-a"), Some("1, 2"));
        assert_eq!(reqs[0].body_len, 5);
        assert!(!format!("{:?}", reqs[0]).contains("Bearer"));
    }
}
