//! Recognising a caller's re-send: the retry loop *in front of* the proxy.
//!
//! # Why
//! Retries should have one owner. An application's own loop, tenacity around an SDK call or a gateway's
//! `num_retries` re-sends a request the proxy already retried, so the provider sees `(1 + N) ×` our attempts
//! while our per-call evidence still says ≈ 1.1. Worse, each re-send would *deposit* into the shared budget
//! as fresh traffic, so the caller's loop pays for our retries. Only OpenAI's SDKs say that they retry
//! (`x-stainless-retry-count`); gateways and hand-written loops don't. So the proxy remembers, briefly, which
//! requests just failed, and recognises the same caller sending the same request again.
//!
//! # How a request is recognised (first match wins)
//! 1. `header`: `x-stainless-retry-count > 0`, or another agent's `x-retrybudget-attempt > 0`.
//! 2. `idempotency_key`: an `Idempotency-Key` this caller (same credential, same route) already sent within
//!    the window — whatever came of it, since a client reuses a key only to retry.
//! 3. `fingerprint`: the same method, route template, body bytes and credential as a request that is still in
//!    flight, or that *failed* (non-2xx, or the caller went away) at most `window` ago. An identical request
//!    after a *success* is new traffic (a caller may well ask the same thing twice).
//!
//! # False positives, and how to turn it off
//! A caller that deliberately sends the byte-identical request again within the window after a failure is
//! counted as retrying — which, for the upstream, it is. Callers without any credential share one (empty)
//! credential, so two anonymous callers sending the same bytes are linked. `--caller-retries off` turns the
//! table off (nothing is hashed or remembered; only the SDK's retry header is still recorded);
//! `--caller-retries detect` counts them without spending budget on them.
//!
//! # Spending budget on them (`--caller-retries budget`, the default)
//! A recognised re-send starts with `Policy::start_caller_retry`: its first attempt *withdraws* one token from
//! the shared budget like one of our retries (instead of depositing like new traffic), and its attempt
//! allowance counts the upstream attempts the proxy already made for the earlier sends. When the budget cannot
//! pay, the proxy answers at once, without an upstream call: 429, `retry-after` = the budget's refill time,
//! and an OpenAI-shaped error `retry_budget_exhausted` (outcome `budget_exhausted`, decision
//! `stop_budget_exhausted`). Under a sustained outage the upstream therefore sees at most
//! `(1 + ratio) × distinct requests + the floor's min_retries_per_sec × time` attempts, however many times the
//! callers re-send. A false positive (see above) costs the caller a budget token, or a fast 429 during an
//! outage; `detect` keeps the counting without that cost.
//!
//! # What must never happen
//! - **Storing or exporting content or credentials**: the table holds 128-bit keyed hashes (SipHash with a
//!   random per-process key, so a hash cannot be recomputed from a guessed prompt or key elsewhere) and a few
//!   counters — never a body, a header value or an idempotency key in clear. Nothing here is exported.
//! - **Unbounded memory**: at most `capacity` entries, whatever callers send; a full table evicts the entry
//!   touched longest ago (expired entries first), so a flood of distinct requests costs recall, not memory.
//! - **Linking distinct callers**: the credential is part of every key.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, Method};
use retrybudget_telemetry::{CallerRetry, CallerRetrySource};

/// The header an HTTP client sends to make a request safe to retry (Stripe, OpenAI and IETF draft usage).
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Headers that carry a caller's credential, in the order they are read (OpenAI, Azure OpenAI, others).
const CREDENTIAL_HEADERS: [HeaderName; 3] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-api-key"),
];

/// What the proxy does about caller retries (`--caller-retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallerRetries {
    /// No table: nothing is hashed or remembered. The SDK's retry header is still recorded (source `header`).
    Off,
    /// Recognise and count caller retries; they still deposit into the budget like fresh traffic.
    Detect,
    /// Recognise, count, and spend budget on them: a caller retry's first attempt withdraws from the shared
    /// budget like a retry (answered at once with a 429 when it cannot pay), and its attempt allowance counts
    /// the caller's earlier attempts.
    #[default]
    Budget,
}

impl CallerRetries {
    /// The flag's values, as written on the command line.
    pub const NAMES: [&'static str; 3] = ["detect", "budget", "off"];

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallerRetries::Off => "off",
            CallerRetries::Detect => "detect",
            CallerRetries::Budget => "budget",
        }
    }

    /// Parses a flag value (`detect`, `budget`, `off`).
    pub fn parse(text: &str) -> Option<CallerRetries> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" => Some(CallerRetries::Off),
            "detect" => Some(CallerRetries::Detect),
            "budget" => Some(CallerRetries::Budget),
            _ => None,
        }
    }
}

/// Settings of the caller-retry table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerConfig {
    /// Whether and how caller retries are recognised and charged.
    pub mode: CallerRetries,
    /// Most requests remembered at once (default 10 000, ~1 MiB); the oldest is forgotten first.
    pub capacity: usize,
    /// How long after a failure a re-send still counts as a retry (default 60 s).
    pub window: Duration,
}

impl Default for CallerConfig {
    fn default() -> Self {
        CallerConfig {
            mode: CallerRetries::default(),
            capacity: 10_000,
            window: Duration::from_secs(60),
        }
    }
}

// === keys ===

/// A 128-bit keyed hash: two SipHash-1-3 outputs of one secret-keyed state (std's `RandomState`, seeded
/// randomly per process) — the request's hash, and the hash of the request followed by a marker byte — so one
/// pass over the body gives both halves, 100 000 live entries collide with probability ~1e-29, and no key can
/// be computed outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key(u128);

/// The keyed hasher: random per process, never exported.
#[derive(Debug)]
struct Keyer(std::collections::hash_map::RandomState);

impl Keyer {
    fn new() -> Keyer {
        Keyer(std::collections::hash_map::RandomState::new())
    }

    fn key(&self, value: impl Hash) -> Key {
        let mut h = self.0.build_hasher();
        value.hash(&mut h);
        let high = h.finish();
        // `finish` leaves the state as it was: the low half continues it past a marker.
        h.write_u8(0xff);
        Key(u128::from(high) << 64 | u128::from(h.finish()))
    }
}

/// The table's map hasher: a [`Key`] is already a keyed hash, uniform and unguessable from outside, so its
/// bits are the map's hash as they stand; hashing them again (SipHash) bought nothing but time.
#[derive(Debug, Default, Clone, Copy)]
struct KeyBits(u64);

impl Hasher for KeyBits {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached (a `Key` hashes as its one `u128`); folds the bytes in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
}

/// What identifies a request for the table: its fingerprint and, if it has one, its idempotency key — both
/// already hashed with the caller's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestKeys {
    fingerprint: Key,
    idempotency: Option<Key>,
}

// === the table ===

/// How the last finished send of an entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Nothing finished yet (the first send is in flight).
    Nothing,
    Failed,
    Succeeded,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Position in the eviction order (higher = touched more recently).
    seq: u64,
    touched: Duration,
    in_flight: u32,
    last: Last,
    /// Sends seen in the current chain (the first send included).
    sends: u32,
    /// Upstream attempts made for the finished sends of the chain.
    attempts: u32,
}

impl Entry {
    fn live(&self, now: Duration, window: Duration) -> bool {
        self.in_flight > 0 || now.saturating_sub(self.touched) <= window
    }
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Key, Entry, BuildHasherDefault<KeyBits>>,
    /// `(seq, key)`, oldest first: the eviction order. An entry touched again is pushed anew; its older
    /// position stays behind, stale (its `seq` is no longer the entry's), and is skipped when it comes up or
    /// compacted away once the queue holds twice the capacity. O(1) per touch, one contiguous buffer — where a
    /// `BTreeMap` cost a node walk (and the cache misses) per insert and removal, three times a request.
    order: VecDeque<(u64, Key)>,
    next_seq: u64,
}

impl Table {
    fn with_capacity(capacity: usize) -> Table {
        Table {
            entries: HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default()),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// The live entry for `key` (an expired one is removed and reported as absent).
    fn live(&mut self, key: Key, now: Duration, window: Duration) -> Option<Entry> {
        let entry = *self.entries.get(&key)?;
        if entry.live(now, window) {
            Some(entry)
        } else {
            self.remove(key);
            None
        }
    }

    fn remove(&mut self, key: Key) -> Option<Entry> {
        // Its place in `order` goes stale.
        self.entries.remove(&key)
    }

    /// Whether `order`'s `(seq, key)` is still that entry's place.
    fn current(&self, (seq, key): (u64, Key)) -> bool {
        self.entries.get(&key).is_some_and(|e| e.seq == seq)
    }

    /// Inserts or replaces `key`'s entry as the most recently touched, evicting to stay within `capacity`.
    fn put(&mut self, key: Key, mut entry: Entry, now: Duration, config: &CallerConfig) {
        if !self.entries.contains_key(&key) {
            // Forget expired entries first, then the oldest, until there is room for one more.
            while let Some(&(seq, oldest)) = self.order.front() {
                if self.current((seq, oldest)) {
                    let expired = self
                        .entries
                        .get(&oldest)
                        .is_none_or(|e| !e.live(now, config.window));
                    if !expired && self.entries.len() < config.capacity {
                        break;
                    }
                    self.entries.remove(&oldest);
                }
                self.order.pop_front();
            }
        }
        entry.seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((entry.seq, key));
        self.entries.insert(key, entry);
        if self.order.len() > 2 * config.capacity + 16 {
            let order = std::mem::take(&mut self.order);
            self.order = order.into_iter().filter(|&o| self.current(o)).collect();
        }
    }
}

/// The bounded, time-limited memory of recent requests, shared by all handlers. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct CallerTable {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: CallerConfig,
    keyer: Keyer,
    origin: Instant,
    table: Mutex<Table>,
}

/// What the table says about an arriving request, plus what it must be told when the request ends.
#[derive(Debug)]
pub(crate) struct Arrival {
    /// `Some` when the request is its caller's re-send.
    pub(crate) retry: Option<CallerRetry>,
    keys: Option<RequestKeys>,
}

impl CallerTable {
    pub(crate) fn new(config: CallerConfig) -> CallerTable {
        let capacity = if config.mode == CallerRetries::Off {
            0
        } else {
            config.capacity
        };
        CallerTable {
            inner: Arc::new(Shared {
                config,
                keyer: Keyer::new(),
                origin: Instant::now(),
                table: Mutex::new(Table::with_capacity(capacity)),
            }),
        }
    }

    pub(crate) fn config(&self) -> &CallerConfig {
        &self.inner.config
    }

    fn now(&self) -> Duration {
        self.inner.origin.elapsed()
    }

    /// The keys of a request: fingerprint of method, route template, body and credential; and the caller's
    /// idempotency key (hashed with the credential and route), if it sent one.
    pub(crate) fn keys(
        &self,
        method: &Method,
        route: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> RequestKeys {
        let keyer = &self.inner.keyer;
        let credential: [&[u8]; 3] = CREDENTIAL_HEADERS
            .each_ref()
            .map(|name| headers.get(name).map_or(&b""[..], |v| v.as_bytes()));
        RequestKeys {
            fingerprint: keyer.key(("fp", method.as_str(), route, &credential, body)),
            idempotency: headers
                .get(IDEMPOTENCY_KEY)
                .map(|v| keyer.key(("idem", route, &credential, v.as_bytes()))),
        }
    }

    /// A request is about to be forwarded: is it a caller's re-send? `header_count` is the caller's own retry
    /// count, if it sent one. Every `Arrival` must be passed to [`CallerTable::finish`] (a dropped
    /// [`Pending`] does it).
    pub(crate) fn arrive(&self, keys: RequestKeys, header_count: Option<u32>) -> Arrival {
        self.arrive_at(self.now(), keys, header_count)
    }

    /// The caller's retry header alone (used with `--caller-retries off`: no table).
    pub(crate) fn header_only(header_count: Option<u32>) -> Option<CallerRetry> {
        header_count.filter(|&n| n > 0).map(|n| CallerRetry {
            source: CallerRetrySource::Header,
            attempt: n,
            prior_attempts: 0,
        })
    }

    fn arrive_at(&self, now: Duration, keys: RequestKeys, header_count: Option<u32>) -> Arrival {
        let config = &self.inner.config;
        let mut table = self
            .inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen_key = keys
            .idempotency
            .and_then(|k| table.live(k, now, config.window));
        let seen = table.live(keys.fingerprint, now, config.window);
        // The fingerprint chain continues while its last send failed or a twin is in flight.
        let retrying = seen.filter(|e| e.in_flight > 0 || e.last == Last::Failed);
        let source = if header_count.is_some_and(|n| n > 0) {
            Some(CallerRetrySource::Header)
        } else if seen_key.is_some() {
            Some(CallerRetrySource::IdempotencyKey)
        } else if retrying.is_some() {
            Some(CallerRetrySource::Fingerprint)
        } else {
            None
        };
        let chain = retrying.or(seen_key);
        let retry = source.map(|source| CallerRetry {
            source,
            attempt: match source {
                CallerRetrySource::Header => header_count.unwrap_or(1),
                _ => chain.map_or(1, |e| e.sends.max(1)),
            },
            prior_attempts: chain.map_or(0, |e| e.attempts),
        });
        // A request that starts a new chain (first send, or after a success) starts its counters afresh.
        let base = match (retry, chain) {
            (Some(_), Some(e)) => e,
            _ => Entry {
                seq: 0,
                touched: now,
                in_flight: 0,
                last: Last::Nothing,
                sends: 0,
                attempts: 0,
            },
        };
        let entry = Entry {
            touched: now,
            in_flight: seen.map_or(0, |e| e.in_flight) + 1,
            sends: base.sends + 1,
            ..base
        };
        table.put(keys.fingerprint, entry, now, config);
        if let Some(k) = keys.idempotency {
            table.put(k, entry, now, config);
        }
        Arrival {
            retry,
            keys: Some(keys),
        }
    }

    /// A request ended: `success` when the caller got a 2xx, `attempts` upstream attempts made for it.
    pub(crate) fn finish(&self, arrival: &mut Arrival, success: bool, attempts: u32) {
        self.finish_at(self.now(), arrival, success, attempts);
    }

    fn finish_at(&self, now: Duration, arrival: &mut Arrival, success: bool, attempts: u32) {
        let Some(keys) = arrival.keys.take() else {
            return;
        };
        let config = &self.inner.config;
        let mut table = self
            .inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in std::iter::once(keys.fingerprint).chain(keys.idempotency) {
            // Evicted meanwhile (a full table): nothing to update.
            let Some(old) = table.entries.get(&key).copied() else {
                continue;
            };
            let entry = Entry {
                touched: now,
                in_flight: old.in_flight.saturating_sub(1),
                last: if success {
                    Last::Succeeded
                } else {
                    Last::Failed
                },
                attempts: old.attempts.saturating_add(attempts),
                ..old
            };
            table.put(key, entry, now, config);
        }
    }

    /// Entries held now (never more than the capacity).
    #[cfg(test)]
    fn len(&self) -> usize {
        let table = self
            .inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = table.order.iter().filter(|&&o| table.current(o)).count();
        assert_eq!(
            table.entries.len(),
            current,
            "each entry has one current place"
        );
        assert!(table.order.len() <= 2 * self.inner.config.capacity + 16);
        table.entries.len()
    }

    /// Slots allocated by the map (bounded by the capacity whatever was inserted).
    #[cfg(test)]
    fn allocated(&self) -> usize {
        let table = self
            .inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        table.entries.capacity()
    }
}

/// An [`Arrival`] that reports itself finished (as a failure: the caller went away without an answer) when
/// dropped before [`Pending::finish`] — e.g. the handler's future was dropped mid-request.
#[derive(Debug)]
pub(crate) struct Pending {
    table: CallerTable,
    arrival: Arrival,
}

impl Pending {
    pub(crate) fn new(table: CallerTable, arrival: Arrival) -> Pending {
        Pending { table, arrival }
    }

    pub(crate) fn retry(&self) -> Option<CallerRetry> {
        self.arrival.retry
    }

    pub(crate) fn finish(mut self, success: bool, attempts: u32) {
        self.table.finish(&mut self.arrival, success, attempts);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.table.finish(&mut self.arrival, false, 0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The caller's credential, to tell callers apart.
    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    const BODY: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    const ROUTE: &str = "/v1/chat/completions";

    fn table(capacity: usize, window_s: u64) -> CallerTable {
        CallerTable::new(CallerConfig {
            mode: CallerRetries::Detect,
            capacity,
            window: Duration::from_secs(window_s),
        })
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn keys(t: &CallerTable, caller: &str, body: &[u8]) -> RequestKeys {
        t.keys(&Method::POST, ROUTE, &bearer(caller), body)
    }

    /// One request: arrive at `at`, finish `took` later with `success` and `attempts`.
    fn send(
        t: &CallerTable,
        k: RequestKeys,
        at: f64,
        success: bool,
        attempts: u32,
    ) -> Option<CallerRetry> {
        let mut a = t.arrive_at(secs(at), k, None);
        let retry = a.retry;
        t.finish_at(secs(at + 0.1), &mut a, success, attempts);
        retry
    }

    #[test]
    fn a_resend_after_a_failure_is_a_fingerprint_retry() {
        let t = table(100, 60);
        let k = keys(&t, "sk-a", BODY);
        assert_eq!(send(&t, k, 0.0, false, 3), None);
        let r = send(&t, k, 1.0, false, 1).unwrap();
        assert_eq!(r.source, CallerRetrySource::Fingerprint);
        assert_eq!((r.attempt, r.prior_attempts), (1, 3));
        let r = send(&t, k, 2.0, false, 1).unwrap();
        assert_eq!((r.attempt, r.prior_attempts), (2, 4));
    }

    #[test]
    fn an_identical_request_after_a_success_is_not_a_retry() {
        let t = table(100, 60);
        let k = keys(&t, "sk-a", BODY);
        assert_eq!(send(&t, k, 0.0, true, 1), None);
        assert_eq!(send(&t, k, 1.0, true, 1), None);
        // ...and a failure after that success starts a new chain whose re-send is retry 1 again.
        assert_eq!(send(&t, k, 2.0, false, 3), None);
        let r = send(&t, k, 3.0, false, 1).unwrap();
        assert_eq!((r.attempt, r.prior_attempts), (1, 3));
    }

    #[test]
    fn a_twin_in_flight_makes_a_retry() {
        let t = table(100, 60);
        let k = keys(&t, "sk-a", BODY);
        let mut first = t.arrive_at(secs(0.0), k, None);
        assert_eq!(first.retry, None);
        // The caller timed out on its side and re-sent while the first is still being retried upstream,
        // even long after the window: in flight never expires.
        let mut second = t.arrive_at(secs(500.0), k, None);
        assert_eq!(
            second.retry.map(|r| r.source),
            Some(CallerRetrySource::Fingerprint)
        );
        t.finish_at(secs(501.0), &mut first, true, 1);
        t.finish_at(secs(501.0), &mut second, true, 1);
        assert_eq!(send(&t, k, 502.0, true, 1), None);
    }

    #[test]
    fn a_resend_after_the_window_is_new_traffic() {
        let t = table(100, 60);
        let k = keys(&t, "sk-a", BODY);
        assert_eq!(send(&t, k, 0.0, false, 3), None);
        assert_eq!(send(&t, k, 60.5, false, 3), None);
        assert!(send(&t, k, 100.0, false, 3).is_some());
    }

    #[test]
    fn distinct_callers_with_the_same_prompt_are_not_linked() {
        let t = table(100, 60);
        let a = keys(&t, "sk-a", BODY);
        let b = keys(&t, "sk-b", BODY);
        assert_ne!(a, b);
        assert_eq!(send(&t, a, 0.0, false, 3), None);
        assert_eq!(send(&t, b, 0.5, false, 3), None);
        // Azure-style `api-key` callers are told apart too.
        let mut h = HeaderMap::new();
        h.insert("api-key", http::HeaderValue::from_static("azure-a"));
        let c = t.keys(&Method::POST, ROUTE, &h, BODY);
        h.insert("api-key", http::HeaderValue::from_static("azure-b"));
        let d = t.keys(&Method::POST, ROUTE, &h, BODY);
        assert_ne!(c, d);
        assert_eq!(send(&t, c, 1.0, false, 3), None);
        assert_eq!(send(&t, d, 1.5, false, 3), None);
    }

    #[test]
    fn different_bodies_routes_and_methods_are_different_requests() {
        let t = table(100, 60);
        let k = keys(&t, "sk-a", BODY);
        assert_ne!(k, keys(&t, "sk-a", b"{}"));
        assert_ne!(
            k,
            t.keys(&Method::POST, "/v1/embeddings", &bearer("sk-a"), BODY)
        );
        assert_ne!(k, t.keys(&Method::PUT, ROUTE, &bearer("sk-a"), BODY));
        // Field boundaries are part of the hash: moving bytes between fields changes the key.
        assert_ne!(
            t.keys(&Method::POST, "/v1/ab", &HeaderMap::new(), b"c"),
            t.keys(&Method::POST, "/v1/a", &HeaderMap::new(), b"bc")
        );
    }

    #[test]
    fn keys_are_keyed_per_process() {
        // Two tables (two keys) give different hashes for the same request: nothing is a plain digest.
        let (t1, t2) = (table(10, 60), table(10, 60));
        assert_ne!(keys(&t1, "sk-a", BODY), keys(&t2, "sk-a", BODY));
        // The two halves are two outputs, not one repeated.
        let Key(k) = keys(&t1, "sk-a", BODY).fingerprint;
        assert_ne!(k >> 64, k & u128::from(u64::MAX));
    }

    #[test]
    fn header_and_idempotency_key_sources() {
        let t = table(100, 60);
        let k = keys(&t, "sk-a", BODY);
        let mut a = t.arrive_at(secs(0.0), k, Some(0));
        assert_eq!(a.retry, None, "count 0 is a first attempt");
        t.finish_at(secs(0.1), &mut a, false, 3);
        let mut a = t.arrive_at(secs(1.0), k, Some(2));
        let r = a.retry.unwrap();
        assert_eq!(r.source, CallerRetrySource::Header);
        assert_eq!((r.attempt, r.prior_attempts), (2, 3));
        t.finish_at(secs(1.1), &mut a, false, 1);

        // Same Idempotency-Key, different body (e.g. a new timestamp inside): still the same request.
        let mut h = bearer("sk-a");
        h.insert(IDEMPOTENCY_KEY, http::HeaderValue::from_static("req-1"));
        let first = t.keys(&Method::POST, ROUTE, &h, b"{\"n\":1}");
        let again = t.keys(&Method::POST, ROUTE, &h, b"{\"n\":2}");
        assert_eq!(send(&t, first, 2.0, true, 1), None);
        let r = send(&t, again, 3.0, true, 1).unwrap();
        assert_eq!(r.source, CallerRetrySource::IdempotencyKey);
        assert_eq!((r.attempt, r.prior_attempts), (1, 1));
        // Another caller's identical key is another request.
        let mut other = bearer("sk-b");
        other.insert(IDEMPOTENCY_KEY, http::HeaderValue::from_static("req-1"));
        let k = t.keys(&Method::POST, ROUTE, &other, b"{\"n\":1}");
        assert_eq!(send(&t, k, 4.0, true, 1), None);
    }

    #[test]
    fn a_dropped_pending_counts_as_a_failure() {
        let t = table(100, 60);
        let k = keys(&t, "sk-a", BODY);
        let pending = Pending::new(t.clone(), t.arrive(k, None));
        drop(pending);
        let r = t.arrive(k, None).retry.unwrap();
        assert_eq!(r.source, CallerRetrySource::Fingerprint);
    }

    #[test]
    fn table_stays_within_its_memory_bound_under_100_000_distinct_requests() {
        let capacity = 1_000;
        let t = table(capacity, 60);
        let allocated = t.allocated();
        let mut in_flight = Vec::new();
        for i in 0..100_000u32 {
            let body = format!("{{\"model\":\"m\",\"messages\":[\"{i}\"]}}");
            let k = keys(&t, &format!("sk-{}", i % 7), body.as_bytes());
            let at = f64::from(i) * 0.0001; // all within one window: nothing expires by time
            // Keep some requests in flight (never finished) to show they cannot pin memory either.
            if i % 10 == 0 {
                in_flight.push(t.arrive_at(secs(at), k, None));
            } else {
                send(&t, k, at, false, 3);
            }
            assert!(
                t.len() <= capacity,
                "{} entries after {i} requests",
                t.len()
            );
        }
        assert_eq!(t.len(), capacity);
        // The map's allocation stays within a small multiple of the capacity (hashbrown may grow once to
        // make room for tombstones, then rehashes in place).
        assert!(
            t.allocated() <= 4 * capacity,
            "{} slots allocated (started with {allocated})",
            t.allocated()
        );
        // Finishing requests whose entries were evicted is harmless.
        for mut a in in_flight {
            t.finish_at(secs(11.0), &mut a, false, 1);
        }
        assert!(t.len() <= capacity);
        // The most recent failure is still remembered; the oldest was forgotten.
        let last = format!("{{\"model\":\"m\",\"messages\":[\"{}\"]}}", 99_999);
        let k = keys(&t, &format!("sk-{}", 99_999 % 7), last.as_bytes());
        assert!(t.arrive_at(secs(12.0), k, None).retry.is_some());
        let first = keys(&t, "sk-1", b"{\"model\":\"m\",\"messages\":[\"1\"]}");
        assert!(t.arrive_at(secs(12.0), first, None).retry.is_none());
    }

    #[test]
    fn expired_entries_are_evicted_before_live_ones() {
        let t = table(3, 10);
        let old = keys(&t, "sk-a", b"old");
        let live1 = keys(&t, "sk-a", b"live1");
        let live2 = keys(&t, "sk-a", b"live2");
        send(&t, old, 0.0, false, 1);
        send(&t, live1, 15.0, false, 1);
        send(&t, live2, 16.0, false, 1);
        // Room is needed at 17 s: the expired `old` goes, both live failures stay.
        send(&t, keys(&t, "sk-a", b"new"), 17.0, false, 1);
        assert!(t.arrive_at(secs(18.0), live1, None).retry.is_some());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn an_entry_touched_again_and_again_is_the_last_evicted() {
        let t = table(4, 60);
        let k = |b: &str| keys(&t, "sk-a", b.as_bytes());
        for (i, b) in ["a", "b", "c", "d"].into_iter().enumerate() {
            send(&t, k(b), i as f64, false, 1);
        }
        // `a` retried 100 times: each send moves it to the back of the order (its older places go stale and
        // are compacted away: `len` checks the order's bound).
        for i in 0..100 {
            assert!(send(&t, k("a"), 5.0 + f64::from(i) * 0.01, false, 1).is_some());
            assert_eq!(t.len(), 4);
        }
        // Room for `e` evicts the least recently touched, `b`, not `a`.
        send(&t, k("e"), 7.0, false, 1);
        assert_eq!(t.len(), 4);
        assert!(t.arrive_at(secs(8.0), k("b"), None).retry.is_none());
        assert!(t.arrive_at(secs(8.0), k("a"), None).retry.is_some());
    }

    #[test]
    fn modes_parse() {
        for name in CallerRetries::NAMES {
            assert_eq!(CallerRetries::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(CallerRetries::parse("BUDGET"), Some(CallerRetries::Budget));
        assert_eq!(CallerRetries::parse("yes"), None);
        assert_eq!(CallerRetries::default(), CallerRetries::Budget);
        assert_eq!(
            CallerTable::header_only(Some(1)).map(|r| r.source),
            Some(CallerRetrySource::Header)
        );
        assert_eq!(CallerTable::header_only(Some(0)), None);
    }
}
