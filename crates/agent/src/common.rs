//! Small pieces every subcommand shares: the shutdown signal, telemetry start-up, the evidence table.

use std::path::PathBuf;

use retrybudget_telemetry::{EvidenceRotation, Telemetry, TelemetryConfig, TelemetryError};
use serde_json::Value;

use crate::config::usage;

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reopens the evidence file on every SIGHUP (what `logrotate`'s `postrotate` sends after renaming it). Runs
/// until the process ends; the reopen itself happens on the evidence writer thread, never on a request.
pub(crate) async fn reopen_evidence_on_sighup(telemetry: Telemetry) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            eprintln!(
                "warning: cannot listen for SIGHUP; the evidence file will not be reopened on logrotate"
            );
            return;
        };
        while hup.recv().await.is_some() {
            telemetry.reopen_evidence();
        }
    }
    #[cfg(not(unix))]
    let _ = telemetry;
}

/// Telemetry from the standard `OTEL_*` variables plus an optional evidence file. A bad `OTEL_*` value is a
/// usage error (exit 2); a pipeline that cannot start (e.g. an evidence file that cannot be opened) is a runtime
/// error (exit 1).
pub(crate) fn init_telemetry(evidence_file: Option<PathBuf>) -> anyhow::Result<Telemetry> {
    init_telemetry_rotating(evidence_file, EvidenceRotation::default())
}

/// [`init_telemetry`] with size-based rotation of the evidence file.
pub(crate) fn init_telemetry_rotating(
    evidence_file: Option<PathBuf>,
    rotation: EvidenceRotation,
) -> anyhow::Result<Telemetry> {
    let mut config = TelemetryConfig::from_env().map_err(|e| usage(e.to_string()))?;
    config.evidence_file = evidence_file;
    config.evidence_rotation = rotation;
    let telemetry = Telemetry::init(&config).map_err(|e| match e {
        TelemetryError::Config(_) => usage(e.to_string()),
        TelemetryError::Init(_) => anyhow::Error::new(e),
    })?;
    crate::logging::attach_otlp(&telemetry);
    tracing::info!(
        name: retrybudget_telemetry::names::LOG_CONFIG,
        service_name = %config.service_name,
        otlp = %otlp_summary(),
        evidence_file = ?config.evidence_file,
        "telemetry started"
    );
    Ok(telemetry)
}

/// Flushes and stops telemetry (bounded) off the async workers, so exporters that need the runtime can finish.
pub(crate) async fn shutdown_telemetry(telemetry: &Telemetry) -> bool {
    let t = telemetry.clone();
    let flushed = tokio::task::spawn_blocking(move || t.shutdown(TELEMETRY_FLUSH))
        .await
        .unwrap_or(false);
    crate::logging::detach_otlp();
    if !flushed {
        tracing::warn!(
            name: retrybudget_telemetry::names::LOG_WARNING,
            timeout_ms = TELEMETRY_FLUSH.as_millis() as u64,
            "telemetry flush timed out; items still queued are lost"
        );
    }
    flushed
}

/// How long telemetry may take to flush at exit.
pub(crate) const TELEMETRY_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Where OTLP goes, for start-up lines (endpoints carry no secrets; headers are never printed).
pub(crate) fn otlp_summary() -> String {
    match TelemetryConfig::from_env() {
        Ok(TelemetryConfig { otlp: Some(o), .. }) => format!(
            "OTLP on ({:?}, traces to {})",
            o.protocol,
            crate::config::printable_url(&o.traces_endpoint)
        ),
        _ => "OTLP off".to_owned(),
    }
}

/// The OTLP traces endpoint, if configured.
pub(crate) fn otlp_endpoint() -> Option<String> {
    TelemetryConfig::from_env()
        .ok()
        .and_then(|c| c.otlp)
        .map(|o| crate::config::printable_url(&o.traces_endpoint))
}

/// Renders rows of JSON objects as an aligned plain-text table (missing fields as `-`).
pub(crate) fn table(columns: &[&str], rows: &[Value]) -> String {
    let cell = |row: &Value, col: &str| -> String {
        match row.get(col) {
            None | Some(Value::Null) => "-".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(r, c)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, v) in values.iter().enumerate() {
            if i + 1 == values.len() {
                out.push_str(v);
            } else {
                out.push_str(v);
                out.push_str(&" ".repeat(widths[i] - v.chars().count() + 2));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(columns.to_vec());
    out.push('\n');
    for r in &cells {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_fills_gaps() {
        let rows = vec![
            serde_json::json!({"a": "x", "b": 1}),
            serde_json::json!({"a": "longer"}),
        ];
        let t = table(&["a", "b"], &rows);
        assert_eq!(t, "a       b\nx       1\nlonger  -\n");
    }
}
