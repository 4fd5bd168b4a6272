//! The JSONL evidence record: one line per attempt, the one schema its writer and its readers share.
//!
//! The evidence writer serialises an [`EvidenceRecord`] per attempt; `retrybudget report` and `retrybudget
//! smoke` deserialise the same type, so a field renamed or added here changes every side at once instead of
//! silently drifting from a field list repeated elsewhere. Field names and their order are the runbook's
//! sanitised log-record template (see `telemetry-contract.md`, "Evidence record"), plus `model`,
//! `delay_source`, `trace_id` and `span_id`.
//!
//! Strings are [`Cow`]s so the writer can fill a record from borrowed labels without copying them, and a reader
//! can own what it parsed. A record must never carry content: no key, prompt, completion or upstream message.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::timestamp::parse_rfc3339_ms;

/// One line of the JSONL evidence file, in the runbook's field order.
///
/// Readers ignore fields they do not know (a newer writer may add some); every field without
/// `skip_serializing_if` is required, so a JSON object that is not an evidence record is rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRecord<'a> {
    /// RFC 3339 UTC with milliseconds, at the attempt's end.
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    /// `deployment.environment.name`.
    #[serde(borrow)]
    pub environment: Cow<'a, str>,
    /// `retrybudget.route`, e.g. `cometapi_chat_completions`.
    #[serde(borrow)]
    pub provider_route: Cow<'a, str>,
    /// `gen_ai.request.model`.
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    /// `http.request.method`.
    #[serde(borrow)]
    pub http_method: Cow<'a, str>,
    /// `url.template`, e.g. `/v1/chat/completions`.
    #[serde(borrow)]
    pub http_route: Cow<'a, str>,
    /// HTTP status, absent if no response arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status_code: Option<u16>,
    /// `error.type`, absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<Cow<'a, str>>,
    /// 0-based attempt index; 0 is a call's first attempt.
    pub retry_attempt: u32,
    /// Retries this call may still make under its allowance.
    pub retry_budget_remaining: u32,
    /// The scope's shared budget balance after this attempt's decision (3 decimals).
    pub shared_budget_balance: f64,
    /// Delay slept before this attempt.
    pub backoff_applied_ms: u64,
    /// Where that delay came from (`retry_after` when the server's hint set it), absent without a delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_source: Option<Cow<'a, str>>,
    /// `<100ms`, `<1s`, `<10s`, `<60s` or `>=60s`: time since the call started.
    #[serde(borrow)]
    pub elapsed_bucket: Cow<'a, str>,
    /// The retry decision's stable name (`retry`, `done`, `stop_…`).
    #[serde(borrow)]
    pub decision: Cow<'a, str>,
    /// `success` / `failure` / `cancelled`, on a call's final attempt only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_result: Option<Cow<'a, str>>,
    /// The call's terminal outcome, on its final attempt only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_outcome: Option<Cow<'a, str>>,
    /// Set when the call was its caller's re-send (proxy mode): how it was recognised — `header`,
    /// `fingerprint` or `idempotency_key` (see `CallerRetrySource`). Absent for a caller's first send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_retry: Option<Cow<'a, str>>,
    /// With `caller_retry`: which re-send of the caller this call is (1 = its first re-send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_attempt: Option<u32>,
    /// Fixed, sanitised text; never request or response content.
    #[serde(borrow)]
    pub operator_note: Cow<'a, str>,
    /// W3C trace id (32 hex digits) of the attempt's trace.
    #[serde(borrow)]
    pub trace_id: Cow<'a, str>,
    /// The attempt span's id (16 hex digits).
    #[serde(borrow)]
    pub span_id: Cow<'a, str>,
}

/// The runbook's evidence columns in its order, plus `decision`: what a person reads in a table.
pub const RUNBOOK_COLUMNS: [&str; 16] = [
    "timestamp",
    "environment",
    "provider_route",
    "http_method",
    "http_route",
    "http_status_code",
    "error_type",
    "retry_attempt",
    "retry_budget_remaining",
    "shared_budget_balance",
    "backoff_applied_ms",
    "elapsed_bucket",
    "decision",
    "client_result",
    "terminal_outcome",
    "operator_note",
];

/// Why a line is not an evidence record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, not an object, or a required field missing or of the wrong type.
    #[error("not an evidence record ({0})")]
    Json(#[from] serde_json::Error),
    /// The timestamp is not RFC 3339 UTC (`2026-06-13T00:00:00.123Z`).
    #[error("timestamp {0:?} is not RFC 3339 UTC such as 2026-06-13T00:00:00.123Z")]
    Timestamp(String),
}

impl<'a> EvidenceRecord<'a> {
    /// Parses one line, borrowing from it where it can.
    pub fn parse(line: &'a str) -> Result<Self, RecordError> {
        Ok(serde_json::from_str(line)?)
    }

    /// Whether this is a call's first attempt.
    pub fn is_first_attempt(&self) -> bool {
        self.retry_attempt == 0
    }

    /// The timestamp as milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> Result<i64, RecordError> {
        parse_rfc3339_ms(&self.timestamp)
            .ok_or_else(|| RecordError::Timestamp(self.timestamp.to_string()))
    }

    /// Appends the record as one JSON object (no newline) to `out`: byte for byte what serde's derived
    /// `Serialize` writes (a test holds the two together), but without its per-character escaping state
    /// machine — a string that needs no escape (all of them, in practice: labels, enums, hex ids) is copied as
    /// it stands. This runs once per attempt on the request path.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Each field's `,"name":` is one literal, copied in one go.
        macro_rules! name {
            ($name:literal) => {
                concat!(",\"", $name, "\":").as_bytes()
            };
        }
        str_value(out, b"{\"timestamp\":", &self.timestamp);
        str_value(out, name!("environment"), &self.environment);
        str_value(out, name!("provider_route"), &self.provider_route);
        str_value(out, name!("model"), &self.model);
        str_value(out, name!("http_method"), &self.http_method);
        str_value(out, name!("http_route"), &self.http_route);
        if let Some(code) = self.http_status_code {
            uint_value(out, name!("http_status_code"), code.into());
        }
        if let Some(e) = &self.error_type {
            str_value(out, name!("error_type"), e);
        }
        uint_value(out, name!("retry_attempt"), self.retry_attempt.into());
        uint_value(
            out,
            name!("retry_budget_remaining"),
            self.retry_budget_remaining.into(),
        );
        out.extend_from_slice(name!("shared_budget_balance"));
        // Numbers as serde_json writes them (shortest round-trip form; `null` when not finite).
        let _ = serde_json::to_writer(&mut *out, &self.shared_budget_balance);
        uint_value(out, name!("backoff_applied_ms"), self.backoff_applied_ms);
        if let Some(d) = &self.delay_source {
            str_value(out, name!("delay_source"), d);
        }
        str_value(out, name!("elapsed_bucket"), &self.elapsed_bucket);
        str_value(out, name!("decision"), &self.decision);
        if let Some(r) = &self.client_result {
            str_value(out, name!("client_result"), r);
        }
        if let Some(o) = &self.terminal_outcome {
            str_value(out, name!("terminal_outcome"), o);
        }
        if let Some(r) = &self.caller_retry {
            str_value(out, name!("caller_retry"), r);
        }
        if let Some(a) = self.caller_attempt {
            uint_value(out, name!("caller_attempt"), a.into());
        }
        str_value(out, name!("operator_note"), &self.operator_note);
        str_value(out, name!("trace_id"), &self.trace_id);
        str_value(out, name!("span_id"), &self.span_id);
        out.push(b'}');
    }

    /// A copy that owns its strings.
    pub fn into_owned(self) -> EvidenceRecord<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        EvidenceRecord {
            timestamp: own(self.timestamp),
            environment: own(self.environment),
            provider_route: own(self.provider_route),
            model: own(self.model),
            http_method: own(self.http_method),
            http_route: own(self.http_route),
            http_status_code: self.http_status_code,
            error_type: self.error_type.map(own),
            retry_attempt: self.retry_attempt,
            retry_budget_remaining: self.retry_budget_remaining,
            shared_budget_balance: self.shared_budget_balance,
            backoff_applied_ms: self.backoff_applied_ms,
            delay_source: self.delay_source.map(own),
            elapsed_bucket: own(self.elapsed_bucket),
            decision: own(self.decision),
            client_result: self.client_result.map(own),
            terminal_outcome: self.terminal_outcome.map(own),
            caller_retry: self.caller_retry.map(own),
            caller_attempt: self.caller_attempt,
            operator_note: own(self.operator_note),
            trace_id: own(self.trace_id),
            span_id: own(self.span_id),
        }
    }
}

/// `prefix` (e.g. `,"model":`), then `value` as a JSON string.
fn str_value(out: &mut Vec<u8>, prefix: &[u8], value: &str) {
    // What JSON requires escaping (and all serde_json escapes): `"`, `\\` and control characters. Checked
    // without stopping early, which the compiler can do many bytes at a time.
    let escape = value
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    out.extend_from_slice(prefix);
    if escape {
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

/// `prefix`, then `value` in decimal.
fn uint_value(out: &mut Vec<u8>, prefix: &[u8], value: u64) {
    out.extend_from_slice(prefix);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A line exactly as the writer produced it before the schema moved here.
    const LINE: &str = r#"{"timestamp":"2026-06-13T00:00:00.123Z","environment":"staging","provider_route":"demo_chat_completions","model":"fake-model","http_method":"POST","http_route":"/v1/chat/completions","http_status_code":503,"error_type":"503","retry_attempt":1,"retry_budget_remaining":1,"shared_budget_balance":9.5,"backoff_applied_ms":120,"delay_source":"backoff","elapsed_bucket":"<1s","decision":"stop_budget_exhausted","client_result":"failure","terminal_outcome":"budget_exhausted","operator_note":"shared retry budget exhausted; retry denied","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331"}"#;

    #[test]
    fn round_trips_byte_for_byte_in_field_order() {
        let r = EvidenceRecord::parse(LINE).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), LINE);
        assert_eq!(r.clone().into_owned(), r);
        assert!(matches!(r.decision, Cow::Borrowed(_)), "parsing borrows");
    }

    #[test]
    fn the_line_writer_writes_what_serde_writes() {
        let full = EvidenceRecord::parse(LINE).unwrap();
        let mut sparse = full.clone();
        sparse.http_status_code = None;
        sparse.error_type = None;
        sparse.delay_source = None;
        sparse.client_result = None;
        sparse.terminal_outcome = None;
        let mut odd = full.clone();
        odd.model = "quote\" back\\slash \u{1} tab\t nl\n é 😀 \u{7f}".into();
        odd.operator_note = "".into();
        odd.caller_retry = Some("fingerprint".into());
        odd.caller_attempt = Some(u32::MAX);
        odd.retry_attempt = 0;
        odd.backoff_applied_ms = u64::MAX;
        odd.http_status_code = Some(u16::MAX);
        for balance in [
            0.0,
            -0.0,
            1e-7,
            123456.789,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
        ] {
            for r in [&full, &sparse, &odd] {
                let mut r = r.clone();
                r.shared_budget_balance = balance;
                let mut line = Vec::new();
                r.write_json(&mut line);
                assert_eq!(
                    String::from_utf8(line).unwrap(),
                    serde_json::to_string(&r).unwrap()
                );
            }
        }
    }

    #[test]
    fn runbook_columns_are_record_fields_in_order() {
        let written = serde_json::to_string(&EvidenceRecord::parse(LINE).unwrap()).unwrap();
        let mut at = 0;
        for col in RUNBOOK_COLUMNS {
            let i = written.find(&format!("\"{col}\":")).unwrap();
            assert!(i >= at, "{col} out of order");
            at = i;
        }
    }

    #[test]
    fn optional_fields_may_be_absent_required_ones_may_not() {
        let v: serde_json::Value = serde_json::from_str(LINE).unwrap();
        let mut o = v.as_object().unwrap().clone();
        for k in [
            "http_status_code",
            "error_type",
            "delay_source",
            "client_result",
            "terminal_outcome",
        ] {
            o.remove(k);
        }
        o.insert("added_later".into(), 1.into());
        let line = serde_json::Value::Object(o.clone()).to_string();
        let r = EvidenceRecord::parse(&line).unwrap();
        assert_eq!((r.http_status_code, r.terminal_outcome), (None, None));
        o.remove("decision");
        let line = serde_json::Value::Object(o).to_string();
        let e = EvidenceRecord::parse(&line).unwrap_err().to_string();
        assert!(e.contains("decision"), "{e}");
        assert!(EvidenceRecord::parse("[1]").is_err());
        assert!(EvidenceRecord::parse("{not json").is_err());
    }

    #[test]
    fn timestamp_in_milliseconds() {
        let r = EvidenceRecord::parse(LINE).unwrap();
        assert_eq!(r.timestamp_ms().unwrap(), 1_781_308_800_123);
    }
}
