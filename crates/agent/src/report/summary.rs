//! The one place that counts: an evidence file, streamed twice, becomes one [`Summary`] that the text, JSON and
//! HTML renderers only format.
//!
//! Memory is constant in the number of lines: the first pass keeps totals, bounded top-k lists of the calls
//! worth opening and a bounded table of calls in flight (to join a call's first attempt to its terminal record);
//! the second pass, once the time span is known, fills at most [`MAX_BUCKETS`] time buckets. Every map keyed by
//! a value from the file (outcome, decision, error type, route) is capped, so a file of garbage cannot grow
//! memory either. This module must never hold a line longer than it takes to count it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use retrybudget_policy::{DecisionKind, DelaySource, ErrorType, Outcome};
use retrybudget_telemetry::EvidenceRecord;

/// Most time buckets in a timeline; the bucket width is the smallest "round" width that fits the span in them.
pub(crate) const MAX_BUCKETS: usize = 60;
/// Calls kept per "calls to open" list.
pub(crate) const TOP_CALLS: usize = 8;
/// Calls whose first attempt is remembered while waiting for their terminal record; beyond it the oldest is
/// forgotten (its elapsed time is then unknown) and counted.
pub(crate) const MAX_IN_FLIGHT: usize = 100_000;
/// Distinct names kept per counted dimension; the rest are counted under [`OTHER`].
pub(crate) const MAX_NAMES: usize = 64;
/// Distinct names a timeline panel shows; the rest are drawn as [`OTHER`].
pub(crate) const MAX_SERIES: usize = 8;
/// Budget scopes (`route · model`) whose balance the timeline draws.
pub(crate) const MAX_SCOPES: usize = 6;
/// Malformed line numbers kept (all are counted).
pub(crate) const MAX_MALFORMED_KEPT: usize = 100;
/// The name under which values beyond a cap are counted.
pub(crate) const OTHER: &str = "_other";
/// `error_type` of an attempt that succeeded.
pub(crate) const NO_ERROR: &str = "none";

/// The round bucket widths a timeline may use, in milliseconds.
const WIDTHS_MS: [i64; 22] = [
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
    2_592_000_000,
];

/// Which records a report counts; every view (text, JSON, HTML) sees the same filtered records.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Filters {
    /// Only records at or after this instant (ms since the epoch).
    pub(crate) since_ms: Option<i64>,
    /// Only records before this instant (ms since the epoch).
    pub(crate) until_ms: Option<i64>,
    pub(crate) route: Option<String>,
    pub(crate) model: Option<String>,
}

impl Filters {
    fn keep(&self, r: &EvidenceRecord<'_>, ts: i64) -> bool {
        self.since_ms.is_none_or(|s| ts >= s)
            && self.until_ms.is_none_or(|u| ts < u)
            && self.route.as_deref().is_none_or(|x| x == r.provider_route)
            && self.model.as_deref().is_none_or(|x| x == r.model)
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Filters::default()
    }
}

/// Counts by name, with at most [`MAX_NAMES`] names (the rest under [`OTHER`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Counts(pub(crate) BTreeMap<String, u64>);

impl Counts {
    pub(crate) fn add(&mut self, name: &str, n: u64) {
        if let Some(c) = self.0.get_mut(name) {
            *c += n;
        } else if self.0.len() < MAX_NAMES {
            self.0.insert(name.to_owned(), n);
        } else {
            *self.0.entry(OTHER.to_owned()).or_default() += n;
        }
    }

    pub(crate) fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Names by count, most frequent first (ties by name).
    pub(crate) fn ranked(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.0.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }
}

/// One call worth opening in the trace viewer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallRow {
    pub(crate) trace_id: String,
    /// The terminal record's timestamp, as written.
    pub(crate) ended: String,
    pub(crate) ended_ms: i64,
    pub(crate) route: String,
    pub(crate) model: String,
    pub(crate) outcome: String,
    pub(crate) attempts: u32,
    /// The terminal record's `elapsed_bucket` (time since the call started).
    pub(crate) elapsed_bucket: String,
    /// From the first attempt's record to the terminal record, when both were seen.
    pub(crate) span_ms: Option<i64>,
    pub(crate) last_error: Option<String>,
}

impl CallRow {
    /// Elapsed-time rank: the bucket first (it covers the first attempt too), then the measured span.
    fn elapsed_key(&self) -> (u8, i64) {
        let rank = match self.elapsed_bucket.as_str() {
            "<100ms" => 0,
            "<1s" => 1,
            "<10s" => 2,
            "<60s" => 3,
            ">=60s" => 4,
            _ => 0,
        };
        (rank, self.span_ms.unwrap_or(0))
    }
}

/// The `k` best rows by a key, kept in at most `2k` memory.
#[derive(Debug, Clone)]
pub(crate) struct TopK<K: Ord + Copy> {
    k: usize,
    key: fn(&CallRow) -> K,
    rows: Vec<CallRow>,
}

impl<K: Ord + Copy> TopK<K> {
    fn new(k: usize, key: fn(&CallRow) -> K) -> Self {
        TopK {
            k,
            key,
            rows: Vec::with_capacity(2 * k + 1),
        }
    }

    fn push(&mut self, row: CallRow) {
        self.rows.push(row);
        if self.rows.len() > 2 * self.k {
            self.settle();
        }
    }

    fn settle(&mut self) {
        let key = self.key;
        // Largest key first; ties by earlier end, then trace id, so the order is deterministic.
        self.rows.sort_by(|a, b| {
            key(b)
                .cmp(&key(a))
                .then_with(|| a.ended_ms.cmp(&b.ended_ms))
                .then_with(|| a.trace_id.cmp(&b.trace_id))
        });
        self.rows.truncate(self.k);
    }

    /// The kept rows, best first.
    pub(crate) fn into_rows(mut self) -> Vec<CallRow> {
        self.settle();
        self.rows
    }
}

/// The calls to open, per reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CallsToOpen {
    pub(crate) most_attempts: Vec<CallRow>,
    pub(crate) longest: Vec<CallRow>,
    /// The earliest budget-exhausted calls: where the denials started.
    pub(crate) budget_exhausted: Vec<CallRow>,
    /// The earliest stream-interrupted calls.
    pub(crate) stream_interrupted: Vec<CallRow>,
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Malformed {
    pub(crate) line: u64,
    pub(crate) reason: String,
}

/// One time bucket of the timeline: `[start_ms, start_ms + width)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Bucket {
    pub(crate) start_ms: i64,
    /// Attempts with `retry_attempt` 0: the load the callers asked for.
    pub(crate) first_attempts: u64,
    /// Attempts with `retry_attempt` ≥ 1: the extra load retries put on the provider.
    pub(crate) retries: u64,
    /// Terminal records by outcome.
    pub(crate) outcomes: Counts,
    /// Retries the shared budget refused (`stop_budget_exhausted`).
    pub(crate) denials: u64,
    /// The first and last denial in the bucket, ms.
    pub(crate) denial_span: Option<(i64, i64)>,
    /// Attempts by `error_type` ([`NO_ERROR`] for a success).
    pub(crate) answers: Counts,
    /// Attempts whose delay the server's `retry-after` set.
    pub(crate) hinted: u64,
    /// The longest such delay, ms.
    pub(crate) hint_max_ms: u64,
    /// Per scope (`route · model`): the balance of the latest record in the bucket (its timestamp, the balance).
    pub(crate) balance: BTreeMap<String, (i64, f64)>,
}

impl Bucket {
    pub(crate) fn attempts(&self) -> u64 {
        self.first_attempts + self.retries
    }
}

/// A run of consecutive buckets that each hold a budget denial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stretch {
    /// First denial of the run, ms.
    pub(crate) first_ms: i64,
    /// Last denial of the run, ms.
    pub(crate) last_ms: i64,
    pub(crate) denials: u64,
}

/// The timeline: equal buckets from the first to the last record, none missing.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Timeline {
    pub(crate) width_ms: i64,
    pub(crate) buckets: Vec<Bucket>,
    /// The outcome, answer and route names the panels draw (the rest as [`OTHER`]), most frequent first.
    pub(crate) outcome_names: Vec<String>,
    pub(crate) answer_names: Vec<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) longest_denial_stretch: Option<Stretch>,
}

/// Everything a report says, computed once.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Summary {
    pub(crate) filters: Filters,
    /// Evidence records read (before filters) and counted (after).
    pub(crate) records_read: u64,
    pub(crate) records: u64,
    pub(crate) first_ms: Option<i64>,
    pub(crate) last_ms: Option<i64>,
    pub(crate) calls_by_outcome: Counts,
    /// Calls started: records with `retry_attempt` 0 (every call has exactly one).
    pub(crate) calls_started: u64,
    pub(crate) attempts: u64,
    pub(crate) attempts_by_decision: Counts,
    pub(crate) attempts_by_error_type: Counts,
    /// `stop_…` decisions.
    pub(crate) stop_reasons: Counts,
    /// Attempts whose delay came from the server's `retry-after`.
    pub(crate) server_hinted: u64,
    pub(crate) budget_first: Option<(i64, String)>,
    pub(crate) budget_last: Option<(i64, String)>,
    pub(crate) calls_to_open: CallsToOpen,
    /// Calls forgotten from the in-flight table before their terminal record (elapsed time unknown).
    pub(crate) in_flight_evicted: u64,
    pub(crate) malformed_count: u64,
    /// Attempts that reached the upstream: all but those refused locally (`validation_error`) and the caller
    /// re-sends the shared budget refused before any attempt (no status, no `error_type`).
    pub(crate) upstream_attempts: u64,
    /// Calls started that were their caller's re-send (proxy mode), by how they were recognised.
    pub(crate) caller_retries: Counts,
    /// The first [`MAX_MALFORMED_KEPT`] malformed lines.
    pub(crate) malformed: Vec<Malformed>,
    pub(crate) timeline: Timeline,
}

impl Summary {
    pub(crate) fn calls(&self) -> u64 {
        self.calls_by_outcome.total()
    }

    /// Calls with a first attempt but no terminal record: their caller went away during a backoff sleep (or
    /// the process was cut off), so no attempt was left to carry the outcome.
    pub(crate) fn calls_without_terminal_record(&self) -> u64 {
        self.calls_started.saturating_sub(self.calls())
    }

    /// Upstream attempts per call (an attempt that never left — refused locally, or a caller's re-send the
    /// budget refused — puts no load on the provider); `None` without calls.
    pub(crate) fn amplification(&self) -> Option<f64> {
        let calls = self.calls();
        (calls > 0).then(|| self.upstream_attempts as f64 / calls as f64)
    }

    /// Share of calls that ended in success (with or without retries); `None` without calls.
    pub(crate) fn success_ratio(&self) -> Option<f64> {
        let calls = self.calls();
        let ok = self.calls_by_outcome.get(Outcome::Success.as_str())
            + self
                .calls_by_outcome
                .get(Outcome::SuccessAfterRetry.as_str());
        (calls > 0).then(|| ok as f64 / calls as f64)
    }

    /// Requests the callers meant to make: calls started, less their re-sends.
    pub(crate) fn distinct_requests(&self) -> u64 {
        self.calls_started
            .saturating_sub(self.caller_retries.total())
    }

    /// What the provider really saw: upstream attempts per *distinct* caller request (the callers' own
    /// retries multiply it; [`Summary::amplification`] counts per call and cannot see them). `None` without
    /// calls.
    pub(crate) fn provider_amplification(&self) -> Option<f64> {
        let distinct = self.distinct_requests();
        (distinct > 0).then(|| self.upstream_attempts as f64 / distinct as f64)
    }

    pub(crate) fn denials(&self) -> u64 {
        self.attempts_by_decision
            .get(DecisionKind::StopBudgetExhausted.as_str())
    }
}

/// Whether an attempt record stands for a request the upstream received (or was sent while the caller left).
fn reached_upstream(r: &EvidenceRecord<'_>) -> bool {
    let refused_resend = r.decision == DecisionKind::StopBudgetExhausted.as_str()
        && r.http_status_code.is_none()
        && r.error_type.is_none();
    r.error_type.as_deref() != Some(&ErrorType::ValidationError.as_str()) && !refused_resend
}

// === the first pass: totals, calls to open ===

/// Remembers each call's first attempt until its terminal record arrives (bounded; oldest forgotten first).
#[derive(Default)]
struct InFlight {
    /// trace id → (first attempt's timestamp, the sequence number of its entry in `order`).
    starts: HashMap<String, (i64, u64)>,
    /// Entries in start order; one is stale once its call finished or restarted (its sequence number differs).
    order: VecDeque<(u64, String)>,
    seq: u64,
    evicted: u64,
}

impl InFlight {
    fn start(&mut self, trace_id: &str, ts: i64) {
        self.seq += 1;
        self.starts.insert(trace_id.to_owned(), (ts, self.seq));
        self.order.push_back((self.seq, trace_id.to_owned()));
        while self.starts.len() > MAX_IN_FLIGHT {
            let Some((seq, old)) = self.order.pop_front() else {
                break;
            };
            if self.starts.get(&old).is_some_and(|(_, s)| *s == seq) {
                self.starts.remove(&old);
                self.evicted += 1;
            }
        }
        // Finished calls leave stale entries in `order`; drop them once they outnumber the live ones (amortised
        // O(1)), so memory follows the calls actually in flight, not the lines read.
        if self.order.len() > 2 * self.starts.len() + 4096 {
            let starts = &self.starts;
            self.order
                .retain(|(seq, id)| starts.get(id).is_some_and(|(_, s)| s == seq));
        }
    }

    fn finish(&mut self, trace_id: &str) -> Option<i64> {
        self.starts.remove(trace_id).map(|(ts, _)| ts)
    }
}

/// Counts totals over the records the filters keep.
pub(crate) struct FirstPass {
    s: Summary,
    in_flight: InFlight,
    most_attempts: TopK<(u32, (u8, i64))>,
    longest: TopK<(u8, i64)>,
    budget_exhausted: TopK<i64>,
    stream_interrupted: TopK<i64>,
}

impl FirstPass {
    pub(crate) fn new(filters: Filters) -> Self {
        FirstPass {
            s: Summary {
                filters,
                ..Summary::default()
            },
            in_flight: InFlight::default(),
            most_attempts: TopK::new(TOP_CALLS, |r| (r.attempts, r.elapsed_key())),
            longest: TopK::new(TOP_CALLS, CallRow::elapsed_key),
            // Earliest first: the key is the negated end time.
            budget_exhausted: TopK::new(TOP_CALLS, |r| -r.ended_ms),
            stream_interrupted: TopK::new(TOP_CALLS, |r| -r.ended_ms),
        }
    }

    /// A line that is not an evidence record.
    pub(crate) fn malformed(&mut self, line: u64, reason: String) {
        self.s.malformed_count += 1;
        if self.s.malformed.len() < MAX_MALFORMED_KEPT {
            self.s.malformed.push(Malformed { line, reason });
        }
    }

    /// Counts one record (`ts`: its timestamp in ms).
    pub(crate) fn add(&mut self, r: &EvidenceRecord<'_>, ts: i64) {
        let s = &mut self.s;
        s.records_read += 1;
        if !s.filters.keep(r, ts) {
            return;
        }
        s.records += 1;
        s.first_ms = Some(s.first_ms.map_or(ts, |f| f.min(ts)));
        s.last_ms = Some(s.last_ms.map_or(ts, |l| l.max(ts)));
        s.attempts += 1;
        s.attempts_by_decision.add(&r.decision, 1);
        s.attempts_by_error_type
            .add(r.error_type.as_deref().unwrap_or(NO_ERROR), 1);
        if r.decision.starts_with("stop_") {
            s.stop_reasons.add(&r.decision, 1);
        }
        if is_server_hinted(r) {
            s.server_hinted += 1;
        }
        if r.decision == DecisionKind::StopBudgetExhausted.as_str() {
            if s.budget_first.as_ref().is_none_or(|(f, _)| ts < *f) {
                s.budget_first = Some((ts, r.timestamp.to_string()));
            }
            if s.budget_last.as_ref().is_none_or(|(l, _)| ts > *l) {
                s.budget_last = Some((ts, r.timestamp.to_string()));
            }
        }
        if r.is_first_attempt() {
            s.calls_started += 1;
            if let Some(source) = r.caller_retry.as_deref() {
                s.caller_retries.add(source, 1);
            }
        }
        if reached_upstream(r) {
            s.upstream_attempts += 1;
        }
        let Some(outcome) = r.terminal_outcome.as_deref() else {
            if r.is_first_attempt() {
                self.in_flight.start(&r.trace_id, ts);
            }
            return;
        };
        s.calls_by_outcome.add(outcome, 1);
        let start = if r.is_first_attempt() {
            Some(ts)
        } else {
            self.in_flight.finish(&r.trace_id)
        };
        let row = CallRow {
            trace_id: r.trace_id.to_string(),
            ended: r.timestamp.to_string(),
            ended_ms: ts,
            route: r.provider_route.to_string(),
            model: r.model.to_string(),
            outcome: outcome.to_owned(),
            attempts: r.retry_attempt.saturating_add(1),
            elapsed_bucket: r.elapsed_bucket.to_string(),
            span_ms: start.map(|st| ts - st),
            last_error: r.error_type.as_deref().map(str::to_owned),
        };
        if outcome == Outcome::BudgetExhausted.as_str() {
            self.budget_exhausted.push(row.clone());
        }
        if outcome == Outcome::StreamInterrupted.as_str() {
            self.stream_interrupted.push(row.clone());
        }
        if row.attempts > 1 {
            self.most_attempts.push(row.clone());
        }
        self.longest.push(row);
    }

    /// The totals, and an empty timeline sized for the span seen.
    pub(crate) fn finish(self) -> Summary {
        let mut s = self.s;
        s.calls_to_open = CallsToOpen {
            most_attempts: self.most_attempts.into_rows(),
            longest: self.longest.into_rows(),
            budget_exhausted: self.budget_exhausted.into_rows(),
            stream_interrupted: self.stream_interrupted.into_rows(),
        };
        s.in_flight_evicted = self.in_flight.evicted;
        if let (Some(first), Some(last)) = (s.first_ms, s.last_ms) {
            let width = bucket_width(last - first);
            let start = first.div_euclid(width) * width;
            let n = (last.div_euclid(width) * width - start) / width + 1;
            s.timeline.width_ms = width;
            s.timeline.buckets = (0..n)
                .map(|i| Bucket {
                    start_ms: start + i * width,
                    ..Bucket::default()
                })
                .collect();
        }
        s.timeline.outcome_names = top_names(&s.calls_by_outcome);
        s.timeline.answer_names = top_names(&s.attempts_by_error_type);
        s
    }
}

fn is_server_hinted(r: &EvidenceRecord<'_>) -> bool {
    r.delay_source.as_deref() == Some(DelaySource::RetryAfter.as_str())
}

fn top_names(c: &Counts) -> Vec<String> {
    c.ranked()
        .into_iter()
        .take(MAX_SERIES)
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// The smallest round width that fits `span_ms` in [`MAX_BUCKETS`] buckets.
pub(crate) fn bucket_width(span_ms: i64) -> i64 {
    let fits = |w: i64| span_ms / w < MAX_BUCKETS as i64;
    WIDTHS_MS.into_iter().find(|w| fits(*w)).unwrap_or_else(|| {
        // Longer than 60 × 30 days: whole days.
        let day = 86_400_000;
        (span_ms / (MAX_BUCKETS as i64 - 1) / day + 1) * day
    })
}

// === the second pass: the timeline ===

/// Fills the timeline's buckets.
pub(crate) struct SecondPass {
    s: Summary,
    scope_attempts: Counts,
}

impl SecondPass {
    pub(crate) fn new(s: Summary) -> Self {
        SecondPass {
            s,
            scope_attempts: Counts::default(),
        }
    }

    pub(crate) fn add(&mut self, r: &EvidenceRecord<'_>, ts: i64) {
        let s = &mut self.s;
        if !s.filters.keep(r, ts) {
            return;
        }
        let t = &mut s.timeline;
        let Some(start) = t.buckets.first().map(|b| b.start_ms) else {
            return;
        };
        let i = (ts - start).div_euclid(t.width_ms);
        let Some(b) = usize::try_from(i).ok().and_then(|i| t.buckets.get_mut(i)) else {
            return;
        };
        if r.is_first_attempt() {
            b.first_attempts += 1;
        } else {
            b.retries += 1;
        }
        if let Some(outcome) = r.terminal_outcome.as_deref() {
            b.outcomes.add(series(&t.outcome_names, outcome), 1);
        }
        if r.decision == DecisionKind::StopBudgetExhausted.as_str() {
            b.denials += 1;
            b.denial_span = Some(
                b.denial_span
                    .map_or((ts, ts), |(f, l)| (f.min(ts), l.max(ts))),
            );
        }
        let answer = r.error_type.as_deref().unwrap_or(NO_ERROR);
        b.answers.add(series(&t.answer_names, answer), 1);
        if is_server_hinted(r) {
            b.hinted += 1;
            b.hint_max_ms = b.hint_max_ms.max(r.backoff_applied_ms);
        }
        // A budget's scope is the upstream and the model; the record names them as route and model.
        let scope = format!("{} · {}", r.provider_route, r.model);
        self.scope_attempts.add(&scope, 1);
        // Only scopes already drawn or still room for: the balance map stays bounded per bucket.
        let known = b.balance.contains_key(&scope);
        if known || b.balance.len() < MAX_NAMES {
            let e = b.balance.entry(scope).or_insert((i64::MIN, 0.0));
            if ts >= e.0 {
                *e = (ts, r.shared_budget_balance);
            }
        }
    }

    pub(crate) fn finish(self) -> Summary {
        let mut s = self.s;
        let scopes: Vec<String> = self
            .scope_attempts
            .ranked()
            .into_iter()
            .filter(|(k, _)| *k != OTHER)
            .take(MAX_SCOPES)
            .map(|(k, _)| k.to_owned())
            .collect();
        for b in &mut s.timeline.buckets {
            b.balance.retain(|k, _| scopes.contains(k));
        }
        s.timeline.scopes = scopes;
        s.timeline.longest_denial_stretch = longest_stretch(&s.timeline.buckets);
        s
    }
}

/// A series name as drawn: itself if it is among the drawn names, [`OTHER`] otherwise.
fn series<'a>(names: &[String], name: &'a str) -> &'a str {
    if names.iter().any(|n| n == name) {
        name
    } else {
        OTHER
    }
}

/// The longest run of consecutive buckets that each hold a denial, measured from its first denial to its
/// last (more denials breaks ties).
fn longest_stretch(buckets: &[Bucket]) -> Option<Stretch> {
    let mut best: Option<Stretch> = None;
    let mut run: Option<Stretch> = None;
    for b in buckets {
        let Some((first, last)) = b.denial_span else {
            run = None;
            continue;
        };
        let r = run.get_or_insert(Stretch {
            first_ms: first,
            last_ms: last,
            denials: 0,
        });
        r.last_ms = last;
        r.denials += b.denials;
        let r = *r;
        let len = |s: &Stretch| s.last_ms - s.first_ms;
        if best.is_none_or(|b| len(&r) > len(&b) || (len(&r) == len(&b) && r.denials > b.denials)) {
            best = Some(r);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bucket_width_fits_the_span() {
        assert_eq!(bucket_width(0), 100);
        assert_eq!(bucket_width(5_000), 100);
        assert_eq!(bucket_width(20_000), 500);
        assert_eq!(bucket_width(60_000), 2_000);
        assert_eq!(bucket_width(3_600_000), 120_000);
        for span in [0, 999, 59_999, 86_400_000, 400 * 86_400_000] {
            let w = bucket_width(span);
            assert!(span / w < MAX_BUCKETS as i64, "{span} {w}");
        }
    }

    #[test]
    fn counts_are_capped() {
        let mut c = Counts::default();
        for i in 0..(MAX_NAMES + 10) {
            c.add(&format!("n{i}"), 1);
        }
        assert_eq!(c.0.len(), MAX_NAMES + 1);
        assert_eq!(c.get(OTHER), 10);
        assert_eq!(c.total(), (MAX_NAMES + 10) as u64);
    }

    #[test]
    fn top_k_keeps_the_best_in_bounded_memory() {
        let mut t = TopK::new(3, |r: &CallRow| r.attempts);
        for i in 0..100u32 {
            t.push(CallRow {
                trace_id: format!("{i:032x}"),
                ended: String::new(),
                ended_ms: i64::from(i),
                route: String::new(),
                model: String::new(),
                outcome: String::new(),
                attempts: i % 17,
                elapsed_bucket: String::new(),
                span_ms: None,
                last_error: None,
            });
            assert!(t.rows.len() <= 6);
        }
        let rows = t.into_rows();
        assert_eq!(
            rows.iter().map(|r| r.attempts).collect::<Vec<_>>(),
            [16, 16, 16]
        );
        assert_eq!(rows[0].ended_ms, 16, "ties: earliest first");
    }

    #[test]
    fn in_flight_table_is_bounded() {
        let mut f = InFlight::default();
        for i in 0..(MAX_IN_FLIGHT as i64 + 5) {
            f.start(&i.to_string(), i);
        }
        assert_eq!(f.starts.len(), MAX_IN_FLIGHT);
        assert_eq!(f.evicted, 5);
        assert_eq!(f.finish("0"), None, "the oldest was forgotten");
        assert_eq!(f.finish("7"), Some(7));
        for i in 0..(3 * MAX_IN_FLIGHT as i64) {
            f.start("again", i);
            f.finish("again");
        }
        assert!(f.order.len() <= 2 * MAX_IN_FLIGHT + 1);
        assert_eq!(f.starts.len(), MAX_IN_FLIGHT - 1);
    }

    #[test]
    fn stretch_is_the_longest_run_of_denial_buckets() {
        let b = |start_ms: i64, denials| Bucket {
            start_ms,
            denials,
            denial_span: (denials > 0).then_some((start_ms + 2, start_ms + 7)),
            ..Bucket::default()
        };
        let buckets = [b(0, 1), b(10, 0), b(20, 2), b(30, 5), b(40, 1), b(50, 0)];
        let s = longest_stretch(&buckets).unwrap();
        assert_eq!((s.first_ms, s.last_ms, s.denials), (22, 47, 8));
        assert_eq!(longest_stretch(&[b(0, 0)]), None);
    }
}
