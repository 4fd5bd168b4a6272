//! `retrybudget report`: an incident summary from a JSONL evidence file.
//!
//! One evidence line is one attempt; a line with `terminal_outcome` is the last attempt of a logical call. From
//! these alone the report answers the incident questions: how many calls ended how, how many attempts they cost
//! (amplification), when the shared budget started and stopped denying retries, and why retrying stopped.
//! A malformed line is reported with its line number and skipped: a half-written last line after a crash must
//! not hide the rest of the evidence.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cli::ReportArgs;

/// What a report counts.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Summary {
    pub(crate) calls_by_outcome: BTreeMap<String, u64>,
    /// Calls started: lines with `retry_attempt` 0 (every call has exactly one).
    pub(crate) calls_started: u64,
    pub(crate) attempts: u64,
    pub(crate) attempts_by_decision: BTreeMap<String, u64>,
    pub(crate) attempts_by_error_type: BTreeMap<String, u64>,
    pub(crate) budget_exhausted_first: Option<String>,
    pub(crate) budget_exhausted_last: Option<String>,
    pub(crate) stop_reasons: BTreeMap<String, u64>,
    pub(crate) malformed_lines: Vec<usize>,
}

impl Summary {
    pub(crate) fn calls(&self) -> u64 {
        self.calls_by_outcome.values().sum()
    }

    /// Calls with a first attempt but no terminal record: their caller went away during a backoff sleep (or
    /// the process was cut off), so no attempt was left to carry the outcome.
    pub(crate) fn calls_without_terminal_record(&self) -> u64 {
        self.calls_started.saturating_sub(self.calls())
    }

    /// Attempts per call; `None` without calls.
    pub(crate) fn amplification(&self) -> Option<f64> {
        let calls = self.calls();
        (calls > 0).then(|| self.attempts as f64 / calls as f64)
    }

    /// Stop reasons, most frequent first (ties by name).
    pub(crate) fn top_stop_reasons(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .stop_reasons
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Adds one line; `Err` with the reason if it is not an evidence record.
    pub(crate) fn add_line(&mut self, line: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        let decision = obj
            .get("decision")
            .and_then(Value::as_str)
            .ok_or("no `decision` field: not an evidence record")?
            .to_owned();
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        self.attempts += 1;
        *self
            .attempts_by_decision
            .entry(decision.clone())
            .or_default() += 1;
        let error_type = match obj.get("error_type") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => "none".to_owned(),
        };
        *self.attempts_by_error_type.entry(error_type).or_default() += 1;
        if let Some(outcome) = text("terminal_outcome") {
            *self.calls_by_outcome.entry(outcome).or_default() += 1;
        }
        if obj.get("retry_attempt").and_then(Value::as_u64) == Some(0) {
            self.calls_started += 1;
        }
        if decision.starts_with("stop_") {
            *self.stop_reasons.entry(decision.clone()).or_default() += 1;
        }
        if decision == "stop_budget_exhausted"
            && let Some(ts) = text("timestamp")
        {
            // RFC 3339 UTC with a fixed width compares correctly as text; lines may be out of order.
            if self.budget_exhausted_first.as_ref().is_none_or(|f| ts < *f) {
                self.budget_exhausted_first = Some(ts.clone());
            }
            if self.budget_exhausted_last.as_ref().is_none_or(|l| ts > *l) {
                self.budget_exhausted_last = Some(ts);
            }
        }
        Ok(())
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "calls": self.calls(),
            "calls_by_outcome": self.calls_by_outcome,
            "calls_without_terminal_record": self.calls_without_terminal_record(),
            "attempts": self.attempts,
            "attempts_by_decision": self.attempts_by_decision,
            "attempts_by_error_type": self.attempts_by_error_type,
            "amplification": self.amplification().map(|a| (a * 100.0).round() / 100.0),
            "budget_exhausted": {
                "first": self.budget_exhausted_first,
                "last": self.budget_exhausted_last,
                "denials": self.attempts_by_decision.get("stop_budget_exhausted").copied().unwrap_or(0),
            },
            "top_stop_reasons": self.top_stop_reasons().into_iter().map(|(r, n)| json!({"reason": r, "count": n})).collect::<Vec<_>>(),
            "malformed_lines": self.malformed_lines,
        })
    }

    pub(crate) fn to_text(&self, source: &Path) -> String {
        let mut out = format!("Evidence report: {}\n\n", source.display());
        out.push_str(&format!(
            "Calls by terminal outcome ({} calls)\n",
            self.calls()
        ));
        push_counts(&mut out, &self.calls_by_outcome);
        let unfinished = self.calls_without_terminal_record();
        if unfinished > 0 {
            out.push_str(&format!(
                "  (+{unfinished} call(s) without a terminal record: caller gone during a backoff, or cut off)\n"
            ));
        }
        out.push_str(&format!("\nAttempts: {}\n", self.attempts));
        out.push_str("Attempts by decision\n");
        push_counts(&mut out, &self.attempts_by_decision);
        out.push_str("Attempts by error_type\n");
        push_counts(&mut out, &self.attempts_by_error_type);
        match self.amplification() {
            Some(a) => out.push_str(&format!("\namplification={a:.2} (attempts per call)\n")),
            None => out.push_str("\namplification=n/a (no completed calls)\n"),
        }
        match (&self.budget_exhausted_first, &self.budget_exhausted_last) {
            (Some(f), Some(l)) => out.push_str(&format!(
                "Budget exhausted: {} denial(s), first {f}, last {l}\n",
                self.attempts_by_decision
                    .get("stop_budget_exhausted")
                    .copied()
                    .unwrap_or(0)
            )),
            _ => out.push_str("Budget exhausted: never\n"),
        }
        out.push_str("\nTop stop reasons\n");
        let top = self.top_stop_reasons();
        if top.is_empty() {
            out.push_str("  (none)\n");
        }
        for (reason, n) in top {
            out.push_str(&format!("  {reason:<28} {n}\n"));
        }
        if !self.malformed_lines.is_empty() {
            out.push_str(&format!(
                "\nSkipped {} malformed line(s): {:?}\n",
                self.malformed_lines.len(),
                self.malformed_lines
            ));
        }
        out
    }
}

fn push_counts(out: &mut String, counts: &BTreeMap<String, u64>) {
    if counts.is_empty() {
        out.push_str("  (none)\n");
    }
    let width = counts.keys().map(String::len).max().unwrap_or(0).max(12);
    for (k, n) in counts {
        out.push_str(&format!("  {k:<width$}  {n}\n"));
    }
}

/// Reads `path`, reporting malformed lines to stderr.
pub(crate) fn summarise(path: &Path) -> anyhow::Result<Summary> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot open evidence file {}; check the path",
            path.display()
        )
    })?;
    let mut summary = Summary::default();
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let n = i + 1;
        let bytes = line.with_context(|| format!("cannot read {}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if let Err(reason) = summary.add_line(text) {
            tracing::warn!(
                name: retrybudget_telemetry::names::LOG_WARNING,
                "{}: line {n}: malformed evidence record, skipped: {reason}",
                path.display()
            );
            summary.malformed_lines.push(n);
        }
    }
    Ok(summary)
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportFile {
    json: Option<bool>,
}

/// `retrybudget report`.
pub(crate) fn run(
    args: &ReportArgs,
    config: Option<&Path>,
) -> anyhow::Result<std::process::ExitCode> {
    let file: ReportFile = crate::config::load_file(config)?;
    let summary = summarise(&args.evidence)?;
    if args.json || file.json.unwrap_or(false) {
        println!("{}", serde_json::to_string_pretty(&summary.to_json())?);
    } else {
        print!("{}", summary.to_text(&args.evidence));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn calls_without_a_terminal_record_are_reported() {
        let mut s = Summary::default();
        for l in [
            // a call that retried, then its caller went away during the backoff
            r#"{"retry_attempt":0,"decision":"retry","error_type":"503"}"#,
            // a call that finished
            r#"{"retry_attempt":0,"decision":"retry","error_type":"503"}"#,
            r#"{"retry_attempt":1,"decision":"done","terminal_outcome":"success_after_retry"}"#,
        ] {
            s.add_line(l).unwrap();
        }
        assert_eq!(
            (
                s.calls(),
                s.calls_started,
                s.calls_without_terminal_record()
            ),
            (1, 2, 1)
        );
        assert!(
            s.to_text(Path::new("x"))
                .contains("+1 call(s) without a terminal record")
        );
        assert_eq!(s.to_json()["calls_without_terminal_record"], 1);
    }

    #[test]
    fn counts_calls_attempts_and_budget_window() {
        let mut s = Summary::default();
        let lines = [
            r#"{"timestamp":"2026-01-01T00:00:01.000Z","decision":"retry","error_type":"503"}"#,
            r#"{"timestamp":"2026-01-01T00:00:02.000Z","decision":"stop_budget_exhausted","error_type":"503","terminal_outcome":"budget_exhausted"}"#,
            r#"{"timestamp":"2026-01-01T00:00:03.000Z","decision":"done","terminal_outcome":"success"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00.500Z","decision":"stop_budget_exhausted","error_type":"503","terminal_outcome":"budget_exhausted"}"#,
            r#"{"timestamp":"2026-01-01T00:00:04.000Z","decision":"stop_non_retryable","error_type":"400","terminal_outcome":"failed_without_retry"}"#,
        ];
        for l in lines {
            s.add_line(l).unwrap();
        }
        assert_eq!(s.calls(), 4);
        assert_eq!(s.attempts, 5);
        assert_eq!(s.calls_by_outcome["budget_exhausted"], 2);
        assert_eq!(s.attempts_by_error_type["none"], 1);
        assert_eq!(
            s.budget_exhausted_first.as_deref(),
            Some("2026-01-01T00:00:00.500Z")
        );
        assert_eq!(
            s.budget_exhausted_last.as_deref(),
            Some("2026-01-01T00:00:02.000Z")
        );
        assert_eq!(
            s.top_stop_reasons()[0],
            ("stop_budget_exhausted".to_owned(), 2)
        );
        assert_eq!(s.amplification(), Some(1.25));
        assert!(s.to_text(Path::new("x")).contains("amplification=1.25"));
    }

    #[test]
    fn malformed_lines_are_rejected_with_a_reason() {
        let mut s = Summary::default();
        assert!(s.add_line("{not json").is_err());
        assert!(s.add_line("[1]").is_err());
        assert!(
            s.add_line(r#"{"timestamp":"x"}"#)
                .unwrap_err()
                .contains("decision")
        );
        assert_eq!(s.attempts, 0);
        assert_eq!(s.amplification(), None);
    }
}
