//! `retrybudget report`: an incident review from a JSONL evidence file alone — as text, as JSON, or as one
//! self-contained HTML page with a timeline.
//!
//! One evidence line is one attempt; a line with `terminal_outcome` is the last attempt of a logical call. From
//! these alone the report answers the incident questions: when retries started and how much extra load they put
//! on the provider (amplification), when the shared budget started and stopped denying retries, how calls
//! ended, and which calls to open in the trace viewer.
//!
//! - [`summary`]: the one place that counts (two streaming passes, constant memory in the number of lines);
//! - [`text`], [`json`], [`html`]: three renderers of that one summary; none of them counts anything.
//!
//! A malformed line is reported with its line number and skipped: a half-written last line after a crash must
//! not hide the rest of the evidence. Exit codes: 0 report written; 1 the file or the output cannot be read or
//! written; 2 a bad flag, variable or config key; 3 nothing to report (no evidence record in the file, or none
//! matching the filters).

mod html;
mod json;
mod summary;
mod text;

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use retrybudget_telemetry::EvidenceRecord;

use crate::cli::ReportArgs;
use crate::config::usage;
pub(crate) use summary::{Filters, Summary};

/// Lines longer than this are skipped as malformed without being held in memory (a record is ~600 bytes).
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Malformed lines described on stderr; the rest are only counted.
const MALFORMED_PRINTED: u64 = 10;
/// The placeholder a `--trace-url` template must contain.
pub(crate) const TRACE_ID_PLACEHOLDER: &str = "{trace_id}";

/// Nothing to report: the file holds no evidence record, or none matches the filters (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NothingToReport(pub(crate) String);

/// How a report is rendered, beyond what it counts.
#[derive(Debug, Default, Clone)]
pub(crate) struct View {
    /// A URL with `{trace_id}`, for links to the trace viewer.
    pub(crate) trace_url: Option<String>,
}

impl View {
    pub(crate) fn trace_link(&self, trace_id: &str) -> Option<String> {
        self.trace_url
            .as_ref()
            .map(|t| t.replace(TRACE_ID_PLACEHOLDER, trace_id))
    }
}

/// Calls `f` with each non-empty line (1-based number, text) or why it is not usable text. Holds at most
/// [`MAX_LINE`] bytes of a line at once.
fn for_each_line(path: &Path, mut f: impl FnMut(u64, Result<&str, String>)) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| {
        format!(
            "cannot open evidence file {}; check the path",
            path.display()
        )
    })?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(4096);
    let mut too_long = false;
    let mut n = 0u64;
    let mut emit = |n: u64, line: &mut Vec<u8>, too_long: &mut bool| {
        if *too_long {
            f(n, Err(format!("line longer than {} KiB", MAX_LINE / 1024)));
        } else {
            match std::str::from_utf8(line) {
                Ok(text) if text.trim().is_empty() => {}
                Ok(text) => f(n, Ok(text.trim())),
                Err(_) => f(n, Err("not UTF-8 text".to_owned())),
            }
        }
        line.clear();
        *too_long = false;
    };
    loop {
        let chunk = reader
            .fill_buf()
            .with_context(|| format!("cannot read evidence file {}", path.display()))?;
        if chunk.is_empty() {
            if !line.is_empty() || too_long {
                emit(n + 1, &mut line, &mut too_long);
            }
            return Ok(());
        }
        let (part, used, ends) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        if !too_long {
            if line.len() + part.len() > MAX_LINE {
                too_long = true;
                line.clear();
                line.shrink_to(4096);
            } else {
                line.extend_from_slice(part);
            }
        }
        reader.consume(used);
        if ends {
            n += 1;
            emit(n, &mut line, &mut too_long);
        }
    }
}

/// Parses a line into a record and its timestamp in ms.
fn parse(text: &str) -> Result<(EvidenceRecord<'_>, i64), String> {
    let r = EvidenceRecord::parse(text).map_err(|e| e.to_string())?;
    let ts = r.timestamp_ms().map_err(|e| e.to_string())?;
    Ok((r, ts))
}

/// Reads `path` twice (totals, then the timeline once its span is known), describing the first malformed
/// lines on stderr.
pub(crate) fn summarise(path: &Path, filters: Filters) -> anyhow::Result<Summary> {
    let mut first = summary::FirstPass::new(filters);
    for_each_line(path, |n, line| {
        match line.and_then(parse) {
            Ok((r, ts)) => first.add(&r, ts),
            Err(reason) => first.malformed(n, reason),
        };
    })?;
    let totals = first.finish();
    for m in totals.malformed.iter().take(MALFORMED_PRINTED as usize) {
        tracing::warn!(
            name: retrybudget_telemetry::names::LOG_WARNING,
            "{}: line {}: malformed evidence record, skipped: {}",
            path.display(),
            m.line,
            m.reason
        );
    }
    if totals.malformed_count > MALFORMED_PRINTED {
        tracing::warn!(
            name: retrybudget_telemetry::names::LOG_WARNING,
            "{}: {} more malformed line(s) skipped",
            path.display(),
            totals.malformed_count - MALFORMED_PRINTED
        );
    }
    if totals.records == 0 {
        return Ok(totals);
    }
    let mut second = summary::SecondPass::new(totals);
    for_each_line(path, |_, line| {
        if let Ok((r, ts)) = line.and_then(parse) {
            second.add(&r, ts);
        }
    })?;
    Ok(second.finish())
}

/// Writes the HTML report of `summary` to `out`.
pub(crate) fn write_html(
    summary: &Summary,
    source: &Path,
    view: &View,
    out: &Path,
) -> anyhow::Result<()> {
    let page = html::render(summary, source, view);
    let mut f = File::create(out).with_context(|| {
        format!(
            "cannot write the HTML report {}; check the directory exists and is writable",
            out.display()
        )
    })?;
    f.write_all(page.as_bytes())
        .with_context(|| format!("cannot write the HTML report {}", out.display()))?;
    Ok(())
}

/// The error for a summary with nothing in it, if so.
fn nothing_to_report(s: &Summary, path: &Path) -> Option<NothingToReport> {
    if s.records_read == 0 {
        Some(NothingToReport(format!(
            "{} holds no evidence record ({} malformed line(s)); nothing to report — is this the JSONL file the proxy, demo or smoke wrote (--evidence-file)?",
            path.display(),
            s.malformed_count
        )))
    } else if s.records == 0 {
        Some(NothingToReport(format!(
            "no evidence record in {} matches the filters ({} record(s) read); widen --since/--until or check --route/--model",
            path.display(),
            s.records_read
        )))
    } else {
        None
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportFile {
    json: Option<bool>,
    trace_url: Option<String>,
}

/// `retrybudget report`.
pub(crate) fn run(args: &ReportArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let file: ReportFile = crate::config::load_file(config)?;
    let trace_url = args.trace_url.clone().or(file.trace_url);
    if let Some(t) = &trace_url
        && !t.contains(TRACE_ID_PLACEHOLDER)
    {
        return Err(usage(format!(
            "--trace-url {t:?} has no {TRACE_ID_PLACEHOLDER} placeholder; write e.g. 'http://jaeger:16686/trace/{TRACE_ID_PLACEHOLDER}'"
        )));
    }
    if let (Some(s), Some(u)) = (args.since, args.until)
        && s >= u
    {
        return Err(usage("--since must be before --until"));
    }
    let filters = Filters {
        since_ms: args.since,
        until_ms: args.until,
        route: args.route.clone(),
        model: args.model.clone(),
    };
    let view = View { trace_url };
    let summary = summarise(&args.evidence, filters)?;
    if let Some(e) = nothing_to_report(&summary, &args.evidence) {
        return Err(e.into());
    }
    if let Some(out) = &args.html {
        write_html(&summary, &args.evidence, &view, out)?;
        eprintln!("HTML report: {}", out.display());
    }
    if args.json || file.json.unwrap_or(false) {
        println!(
            "{}",
            serde_json::to_string_pretty(&json::render(&summary, &view))?
        );
    } else {
        print!("{}", text::render(&summary, &args.evidence, &view));
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo's HTML report: the whole evidence file, written to `out`.
pub(crate) fn demo_html(evidence: &Path, out: &Path, view: &View) -> anyhow::Result<Summary> {
    let summary = summarise(evidence, Filters::default())?;
    if let Some(e) = nothing_to_report(&summary, evidence) {
        return Err(e.into());
    }
    write_html(&summary, evidence, view, out)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A full evidence line with the given fields replaced.
    pub(crate) fn line(overrides: serde_json::Value) -> String {
        let mut v = serde_json::json!({
            "timestamp": "2026-01-01T00:00:00.000Z", "environment": "test", "provider_route": "r",
            "model": "m", "http_method": "POST", "http_route": "/v1/chat/completions", "retry_attempt": 0,
            "retry_budget_remaining": 2, "shared_budget_balance": 10.0, "backoff_applied_ms": 0,
            "elapsed_bucket": "<1s", "decision": "done", "operator_note": "n",
            "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
        });
        for (k, val) in overrides.as_object().unwrap() {
            v[k] = val.clone();
        }
        v.to_string()
    }

    fn summary_of(lines: &[String]) -> Summary {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        std::fs::write(&p, lines.join("\n")).unwrap();
        summarise(&p, Filters::default()).unwrap()
    }

    #[test]
    fn calls_without_a_terminal_record_are_reported() {
        let s = summary_of(&[
            // a call that retried, then its caller went away during the backoff
            line(serde_json::json!({"decision": "retry", "error_type": "503", "trace_id": "a"})),
            // a call that finished
            line(serde_json::json!({"decision": "retry", "error_type": "503", "trace_id": "b"})),
            line(
                serde_json::json!({"retry_attempt": 1, "decision": "done", "terminal_outcome": "success_after_retry", "trace_id": "b", "timestamp": "2026-01-01T00:00:01.500Z"}),
            ),
        ]);
        assert_eq!(
            (
                s.calls(),
                s.calls_started,
                s.calls_without_terminal_record()
            ),
            (1, 2, 1)
        );
        assert!(
            text::render(&s, Path::new("x"), &View::default())
                .contains("+1 call(s) without a terminal record")
        );
        assert_eq!(
            json::render(&s, &View::default())["calls_without_terminal_record"],
            1
        );
        assert_eq!(s.calls_to_open.most_attempts[0].span_ms, Some(1500));
    }

    #[test]
    fn counts_calls_attempts_and_budget_window_out_of_order() {
        let s = summary_of(&[
            line(
                serde_json::json!({"timestamp": "2026-01-01T00:00:01.000Z", "decision": "retry", "error_type": "503"}),
            ),
            line(
                serde_json::json!({"timestamp": "2026-01-01T00:00:02.000Z", "retry_attempt": 1, "decision": "stop_budget_exhausted", "error_type": "503", "terminal_outcome": "budget_exhausted"}),
            ),
            line(
                serde_json::json!({"timestamp": "2026-01-01T00:00:03.000Z", "decision": "done", "terminal_outcome": "success"}),
            ),
            line(
                serde_json::json!({"timestamp": "2026-01-01T00:00:00.500Z", "decision": "stop_budget_exhausted", "error_type": "503", "terminal_outcome": "budget_exhausted"}),
            ),
            line(
                serde_json::json!({"timestamp": "2026-01-01T00:00:04.000Z", "decision": "stop_non_retryable", "error_type": "400", "terminal_outcome": "failed_without_retry"}),
            ),
        ]);
        assert_eq!(s.calls(), 4);
        assert_eq!(s.attempts, 5);
        assert_eq!(s.calls_by_outcome.get("budget_exhausted"), 2);
        assert_eq!(s.attempts_by_error_type.get("none"), 1);
        assert_eq!(
            s.budget_first.as_ref().unwrap().1,
            "2026-01-01T00:00:00.500Z"
        );
        assert_eq!(
            s.budget_last.as_ref().unwrap().1,
            "2026-01-01T00:00:02.000Z"
        );
        assert_eq!(s.stop_reasons.ranked()[0], ("stop_budget_exhausted", 2));
        assert_eq!(s.amplification(), Some(1.25));
        assert_eq!(s.success_ratio(), Some(0.25));
        // 3.5 s span → 100 ms buckets from 00:00:00.500 to 00:00:04.000, none missing.
        let t = &s.timeline;
        assert_eq!(t.width_ms, 100);
        assert_eq!(t.buckets.len(), 36);
        let sum: u64 = t.buckets.iter().map(summary::Bucket::attempts).sum();
        assert_eq!(sum, 5);
        assert!(text::render(&s, Path::new("x"), &View::default()).contains("amplification=1.25"));
    }

    #[test]
    fn provider_amplification_counts_upstream_attempts_per_distinct_caller_request() {
        // One request failing (2 attempts), its caller's re-send (1 attempt), a second re-send the budget
        // refused (no attempt, no status), and a locally invalid request (never left).
        let s = summary_of(&[
            line(serde_json::json!({"decision": "retry", "error_type": "503", "trace_id": "a"})),
            line(
                serde_json::json!({"retry_attempt": 1, "decision": "stop_budget_exhausted", "error_type": "503", "terminal_outcome": "budget_exhausted", "trace_id": "a"}),
            ),
            line(
                serde_json::json!({"decision": "stop_attempts_exhausted", "error_type": "503", "terminal_outcome": "failed_after_retry", "caller_retry": "fingerprint", "caller_attempt": 1, "trace_id": "b"}),
            ),
            line(
                serde_json::json!({"decision": "stop_budget_exhausted", "terminal_outcome": "budget_exhausted", "caller_retry": "fingerprint", "caller_attempt": 2, "trace_id": "c"}),
            ),
            line(
                serde_json::json!({"decision": "stop_non_retryable", "error_type": "validation_error", "terminal_outcome": "failed_without_retry", "trace_id": "d"}),
            ),
        ]);
        assert_eq!(s.calls(), 4);
        assert_eq!(s.upstream_attempts, 3);
        assert_eq!(s.distinct_requests(), 2);
        assert_eq!(s.caller_retries.get("fingerprint"), 2);
        assert_eq!(s.provider_amplification(), Some(1.5));
        let text = text::render(&s, Path::new("x"), &View::default());
        assert!(text.contains("provider_amplification=1.50"), "{text}");
        assert!(text.contains("fingerprint=2"), "{text}");
        let j = json::render(&s, &View::default());
        assert_eq!(j["provider_amplification"], 1.5);
        assert_eq!(j["caller_retries"]["fingerprint"], 2);
    }

    #[test]
    fn malformed_lines_are_rejected_with_a_reason_and_bounded() {
        let mut lines = vec![
            "{not json".to_owned(),
            "[1]".to_owned(),
            r#"{"timestamp":"x"}"#.to_owned(),
            line(serde_json::json!({"timestamp": "yesterday"})),
            "x".repeat(MAX_LINE + 10),
        ];
        for _ in 0..500 {
            lines.push("garbage".to_owned());
        }
        let s = summary_of(&lines);
        assert_eq!(s.records_read, 0);
        assert_eq!(s.malformed_count, 505);
        assert_eq!(s.malformed.len(), summary::MAX_MALFORMED_KEPT);
        assert!(
            s.malformed[2].reason.contains("missing field"),
            "{:?}",
            s.malformed[2]
        );
        assert!(
            s.malformed[3].reason.contains("RFC 3339"),
            "{:?}",
            s.malformed[3]
        );
        assert!(
            s.malformed[4].reason.contains("longer than"),
            "{:?}",
            s.malformed[4]
        );
        assert!(nothing_to_report(&s, Path::new("x")).is_some());
    }

    #[test]
    fn filters_apply_before_counting() {
        let lines = [
            line(
                serde_json::json!({"timestamp": "2026-01-01T00:00:01.000Z", "terminal_outcome": "success", "provider_route": "a"}),
            ),
            line(
                serde_json::json!({"timestamp": "2026-01-01T00:00:02.000Z", "terminal_outcome": "success", "provider_route": "b"}),
            ),
            line(
                serde_json::json!({"timestamp": "2026-01-01T00:00:03.000Z", "terminal_outcome": "success", "provider_route": "a", "model": "x"}),
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        std::fs::write(&p, lines.join("\n")).unwrap();
        let f = |filters| summarise(&p, filters).unwrap();
        assert_eq!(
            f(Filters {
                route: Some("a".into()),
                ..Filters::default()
            })
            .calls(),
            2
        );
        assert_eq!(
            f(Filters {
                model: Some("x".into()),
                ..Filters::default()
            })
            .calls(),
            1
        );
        let window = Filters {
            since_ms: Some(crate::cli::parse_instant("2026-01-01T00:00:02Z").unwrap()),
            until_ms: Some(crate::cli::parse_instant("2026-01-01T00:00:03Z").unwrap()),
            ..Filters::default()
        };
        let s = f(window);
        assert_eq!((s.records_read, s.records, s.calls()), (3, 1, 1));
        assert!(crate::cli::parse_instant("2pm").is_err());
    }
}
