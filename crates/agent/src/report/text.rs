//! The plain-text view of a [`Summary`]: what `retrybudget report` prints by default. It formats; it never counts.

use std::fmt::Write as _;
use std::path::Path;

use super::View;
use super::summary::{CallRow, Counts, Summary};

/// The text report.
pub(crate) fn render(s: &Summary, source: &Path, view: &View) -> String {
    let mut out = format!("Evidence report: {}\n", source.display());
    if !s.filters.is_empty() {
        let _ = writeln!(
            out,
            "Filters: {} ({} of {} records)",
            filters_text(s),
            s.records,
            s.records_read
        );
    }
    if let (Some(f), Some(l)) = (s.first_ms, s.last_ms) {
        let _ = writeln!(out, "Span: {} .. {}", instant(f), instant(l));
    }
    let _ = writeln!(out, "\nCalls by terminal outcome ({} calls)", s.calls());
    push_counts(&mut out, &s.calls_by_outcome);
    let unfinished = s.calls_without_terminal_record();
    if unfinished > 0 {
        let _ = writeln!(
            out,
            "  (+{unfinished} call(s) without a terminal record: caller gone during a backoff, or cut off)"
        );
    }
    let _ = writeln!(out, "\nAttempts: {}", s.attempts);
    out.push_str("Attempts by decision\n");
    push_counts(&mut out, &s.attempts_by_decision);
    out.push_str("Attempts by error_type\n");
    push_counts(&mut out, &s.attempts_by_error_type);
    match s.amplification() {
        Some(a) => {
            let _ = writeln!(out, "\namplification={a:.2} (upstream attempts per call)");
        }
        None => out.push_str("\namplification=n/a (no completed calls)\n"),
    }
    match s.provider_amplification() {
        Some(a) => {
            let _ = write!(
                out,
                "provider_amplification={a:.2} (upstream attempts per distinct caller request: {} upstream attempts, {} distinct requests, {} caller re-sends",
                s.upstream_attempts,
                s.distinct_requests(),
                s.caller_retries.total()
            );
            for (source, n) in s.caller_retries.ranked() {
                let _ = write!(out, ", {source}={n}");
            }
            out.push_str(")\n");
        }
        None => out.push_str("provider_amplification=n/a (no calls)\n"),
    }
    match s.success_ratio() {
        Some(r) => {
            let _ = writeln!(
                out,
                "success_ratio={:.1}% (calls ending in success)",
                r * 100.0
            );
        }
        None => out.push_str("success_ratio=n/a (no completed calls)\n"),
    }
    match (&s.budget_first, &s.budget_last) {
        (Some((_, f)), Some((_, l))) => {
            let _ = writeln!(
                out,
                "Budget exhausted: {} denial(s), first {f}, last {l}",
                s.denials()
            );
        }
        _ => out.push_str("Budget exhausted: never\n"),
    }
    if let Some(st) = s.timeline.longest_denial_stretch {
        let _ = writeln!(
            out,
            "Longest budget_exhausted stretch: {} ({} .. {}, {} denial(s))",
            seconds(st.last_ms - st.first_ms),
            instant(st.first_ms),
            instant(st.last_ms),
            st.denials
        );
    }
    if s.server_hinted > 0 {
        let _ = writeln!(
            out,
            "Server hints: {} attempt(s) waited as retry-after asked",
            s.server_hinted
        );
    }
    out.push_str("\nTop stop reasons\n");
    let top = s.stop_reasons.ranked();
    if top.is_empty() {
        out.push_str("  (none)\n");
    }
    for (reason, n) in top {
        let _ = writeln!(out, "  {reason:<28} {n}");
    }
    let t = &s.timeline;
    if !t.buckets.is_empty() {
        let _ = writeln!(
            out,
            "\nTimeline ({} buckets of {})",
            t.buckets.len(),
            seconds(t.width_ms)
        );
        let _ = writeln!(
            out,
            "  {:<24} {:>7} {:>7} {:>6} {:>7} {:>7}",
            "bucket start (UTC)", "first", "retries", "calls", "denials", "errors"
        );
        for b in &t.buckets {
            let errors = b.attempts() - b.answers.get(super::summary::NO_ERROR);
            let _ = writeln!(
                out,
                "  {:<24} {:>7} {:>7} {:>6} {:>7} {:>7}",
                instant(b.start_ms),
                b.first_attempts,
                b.retries,
                b.outcomes.total(),
                b.denials,
                errors
            );
        }
    }
    let c = &s.calls_to_open;
    out.push_str("\nCalls to open");
    if view.trace_url.is_none() {
        out.push_str(" (trace ids; --trace-url makes links)");
    }
    out.push('\n');
    for (title, rows) in [
        ("most attempts", &c.most_attempts),
        ("longest elapsed", &c.longest),
        ("first budget-exhausted", &c.budget_exhausted),
        ("first stream-interrupted", &c.stream_interrupted),
    ] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {title}");
        for r in rows.iter().take(5) {
            let _ = writeln!(out, "    {}", call_line(r, view));
        }
    }
    if s.malformed_count > 0 {
        let lines: Vec<u64> = s.malformed.iter().map(|m| m.line).collect();
        let _ = writeln!(
            out,
            "\nSkipped {} malformed line(s): {lines:?}{}",
            s.malformed_count,
            if s.malformed_count > lines.len() as u64 {
                " …"
            } else {
                ""
            }
        );
    }
    out
}

fn call_line(r: &CallRow, view: &View) -> String {
    let span = r.span_ms.map_or_else(String::new, |ms| {
        format!(", first→last attempt {}", seconds(ms))
    });
    format!(
        "{}  {} attempt(s), {}, elapsed {}{span}, ended {}  {}",
        r.outcome,
        r.attempts,
        r.route,
        r.elapsed_bucket,
        r.ended,
        view.trace_link(&r.trace_id)
            .unwrap_or_else(|| r.trace_id.clone())
    )
}

pub(crate) fn filters_text(s: &Summary) -> String {
    let f = &s.filters;
    let mut parts = Vec::new();
    if let Some(t) = f.since_ms {
        parts.push(format!("since {}", instant(t)));
    }
    if let Some(t) = f.until_ms {
        parts.push(format!("until {}", instant(t)));
    }
    if let Some(r) = &f.route {
        parts.push(format!("route {r}"));
    }
    if let Some(m) = &f.model {
        parts.push(format!("model {m}"));
    }
    parts.join(", ")
}

/// An instant as RFC 3339 UTC with milliseconds.
pub(crate) fn instant(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    retrybudget_telemetry::timestamp::rfc3339(t)
}

/// A duration in ms as seconds, minutes or hours.
pub(crate) fn seconds(ms: i64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn push_counts(out: &mut String, counts: &Counts) {
    if counts.0.is_empty() {
        out.push_str("  (none)\n");
    }
    let width = counts.0.keys().map(String::len).max().unwrap_or(0).max(12);
    for (k, n) in &counts.0 {
        let _ = writeln!(out, "  {k:<width$}  {n}");
    }
}
