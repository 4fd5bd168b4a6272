//! Telemetry settings from the standard `OTEL_*` variables.
//!
//! The Rust OTLP exporter neither picks gRPC vs HTTP from `OTEL_EXPORTER_OTLP_PROTOCOL` nor honours
//! `OTEL_SDK_DISABLED`, so both are read here, together with the endpoints, and handed to the exporters
//! explicitly: what this module parses is exactly what runs. Variables are read through a lookup function so
//! tests never touch the process environment.

use std::path::PathBuf;
use std::time::Duration;

use crate::TelemetryError;

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (usually port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (usually port 4318).
    HttpProtobuf,
}

/// Where and how to export OTLP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Traces endpoint (for HTTP, the full URL including `/v1/traces`).
    pub traces_endpoint: String,
    /// Metrics endpoint.
    pub metrics_endpoint: String,
    /// Logs endpoint.
    pub logs_endpoint: String,
    /// Per-export timeout.
    pub timeout: Duration,
}

/// Everything the pipeline needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `service.name`.
    pub service_name: String,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// OTLP export; `None` keeps everything local (Prometheus `/metrics` and the evidence file).
    pub otlp: Option<OtlpConfig>,
    /// Metric export interval (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s).
    pub metric_interval: Duration,
    /// JSONL evidence file, one line per attempt.
    pub evidence_file: Option<PathBuf>,
    /// Size-based rotation of the evidence file (default: none).
    pub evidence_rotation: crate::EvidenceRotation,
    /// Spans (and, separately, log records) that may wait for export in full batches
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048), besides the batch each connection thread is filling (at most
    /// [`batch_size`](Self::batch_size) items each). Past it, new batches are dropped and their items counted in
    /// `retrybudget.telemetry.dropped`.
    pub queue_size: usize,
    /// Most spans (or log records) in one export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512); the
    /// batcher takes a value above [`queue_size`](Self::queue_size) as the queue size, as the specification says.
    pub batch_size: usize,
    /// Longest wait before a partial batch of spans or log records is exported (`OTEL_BSP_SCHEDULE_DELAY`,
    /// default 5 s).
    pub batch_delay: Duration,
}

/// Longest accepted `OTEL_EXPORTER_OTLP_TIMEOUT`: a hung export must fail — and its items be counted as
/// dropped — well inside the 5-minute window of the `TelemetryDropping` alert.
pub const MAX_EXPORT_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            service_name: "retrybudget".to_owned(),
            resource_attributes: Vec::new(),
            otlp: None,
            metric_interval: Duration::from_secs(60),
            evidence_file: None,
            evidence_rotation: crate::EvidenceRotation::default(),
            queue_size: 2048,
            batch_size: 512,
            batch_delay: Duration::from_secs(5),
        }
    }
}

impl TelemetryConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`:
    /// `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `_TRACES_` / `_METRICS_` / `_LOGS_` variants),
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` | `http/protobuf`, default `http/protobuf` as the spec says),
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (ms), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms), `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms; the three apply to log records too). With no endpoint set, nothing is
    /// exported over OTLP.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut config = TelemetryConfig::default();
        if let Some(name) = get("OTEL_SERVICE_NAME") {
            config.service_name = name;
        }
        if let Some(attrs) = get("OTEL_RESOURCE_ATTRIBUTES") {
            config.resource_attributes = parse_resource_attributes(&attrs)?;
        }
        if let Some(ms) = get("OTEL_METRIC_EXPORT_INTERVAL") {
            config.metric_interval = parse_ms("OTEL_METRIC_EXPORT_INTERVAL", &ms)?;
        }
        let items = |name: &str, default: usize| match get(name) {
            None => Ok(default),
            Some(n) => n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                TelemetryError::Config(format!("{name}={n:?}: expected a positive number of items"))
            }),
        };
        config.queue_size = items("OTEL_BSP_MAX_QUEUE_SIZE", config.queue_size)?;
        config.batch_size = items("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", config.batch_size)?;
        if let Some(ms) = get("OTEL_BSP_SCHEDULE_DELAY") {
            config.batch_delay = parse_ms("OTEL_BSP_SCHEDULE_DELAY", &ms)?;
        }
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let per_signal =
            ["TRACES", "METRICS", "LOGS"].map(|s| get(&format!("OTEL_EXPORTER_OTLP_{s}_ENDPOINT")));
        if disabled || (base.is_none() && per_signal.iter().all(Option::is_none)) {
            return Ok(config);
        }
        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => {
                return Err(TelemetryError::Config(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use `grpc` or `http/protobuf`"
                )));
            }
        };
        let timeout = match get("OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some(ms) => parse_ms("OTEL_EXPORTER_OTLP_TIMEOUT", &ms)?,
            None => Self::default_export_timeout(),
        };
        if timeout > MAX_EXPORT_TIMEOUT {
            return Err(TelemetryError::Config(format!(
                "OTEL_EXPORTER_OTLP_TIMEOUT={}ms is longer than {}ms: a hung collector would hold the export \
                 queue that long before its losses are counted; use at most {}",
                timeout.as_millis(),
                MAX_EXPORT_TIMEOUT.as_millis(),
                MAX_EXPORT_TIMEOUT.as_millis()
            )));
        }
        let [traces, metrics, logs] =
            [("traces", 0), ("metrics", 1), ("logs", 2)].map(|(path, i)| {
                per_signal[i].clone().or_else(|| {
                    base.as_ref().map(|b| match protocol {
                        OtlpProtocol::Grpc => b.clone(),
                        OtlpProtocol::HttpProtobuf => {
                            format!("{}/v1/{path}", b.trim_end_matches('/'))
                        }
                    })
                })
            });
        let check = |e: Option<String>| -> Result<String, TelemetryError> {
            let e = e.ok_or_else(|| {
                TelemetryError::Config(
                    "set OTEL_EXPORTER_OTLP_ENDPOINT, or an endpoint for every signal (traces, metrics, logs)".into(),
                )
            })?;
            if protocol == OtlpProtocol::Grpc && e.starts_with("https://") {
                Err(TelemetryError::Config(format!(
                    "OTLP endpoint {e:?}: gRPC over TLS is not built into retrybudget; use \
                     OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf for an https:// collector, or plain http:// to a \
                     collector agent on this host"
                )))
            } else if e.starts_with("http://") || e.starts_with("https://") {
                Ok(e)
            } else {
                Err(TelemetryError::Config(format!(
                    "OTLP endpoint {e:?} has no scheme: write it as http://HOST:PORT (or https://)"
                )))
            }
        };
        config.otlp = Some(OtlpConfig {
            protocol,
            traces_endpoint: check(traces)?,
            metrics_endpoint: check(metrics)?,
            logs_endpoint: check(logs)?,
            timeout,
        });
        Ok(config)
    }

    /// The export timeout when `OTEL_EXPORTER_OTLP_TIMEOUT` is unset (10 s, as the OTLP spec says).
    pub fn default_export_timeout() -> Duration {
        Duration::from_secs(10)
    }

    /// The `deployment.environment.name` resource attribute, if set.
    pub fn environment(&self) -> Option<&str> {
        self.resource_attributes
            .iter()
            .find(|(k, _)| k == crate::names::DEPLOYMENT_ENVIRONMENT_NAME)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_ms(name: &str, value: &str) -> Result<Duration, TelemetryError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            TelemetryError::Config(format!(
                "{name}={value:?}: expected a positive number of milliseconds"
            ))
        })
}

fn parse_resource_attributes(value: &str) -> Result<Vec<(String, String)>, TelemetryError> {
    value
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                TelemetryError::Config(format!(
                    "OTEL_RESOURCE_ATTRIBUTES entry {pair:?} is not key=value"
                ))
            })?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<TelemetryConfig, TelemetryError> {
        TelemetryConfig::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn no_endpoint_means_local_only() {
        let c = from(&[]).unwrap();
        assert_eq!(c.otlp, None);
        assert_eq!(c.service_name, "retrybudget");
    }

    #[test]
    fn http_appends_signal_paths_grpc_does_not() {
        let c = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]).unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.traces_endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(o.logs_endpoint, "http://127.0.0.1:4318/v1/logs");
        let c = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://other:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "250"),
        ])
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(
            (o.protocol, o.traces_endpoint.as_str()),
            (OtlpProtocol::Grpc, "http://127.0.0.1:4317")
        );
        assert_eq!(o.metrics_endpoint, "http://other:4317");
        assert_eq!(o.timeout, Duration::from_millis(250));
    }

    #[test]
    fn sdk_disabled_wins() {
        let c = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert_eq!(c.otlp, None);
    }

    #[test]
    fn bad_values_say_what_to_do() {
        let e = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://"), "{e}");
        let e = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("grpc"), "{e}");
        let e = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("http/protobuf"), "{e}");
        assert!(from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")]).is_ok());
        let e = from(&[("OTEL_METRIC_EXPORT_INTERVAL", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("milliseconds"), "{e}");
        let e = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "600000"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("at most 60000"), "{e}");
        let e = from(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("positive number"), "{e}");
    }

    #[test]
    fn queue_and_delay() {
        let c = from(&[]).unwrap();
        assert_eq!(
            (c.queue_size, c.batch_size, c.batch_delay),
            (2048, 512, Duration::from_secs(5))
        );
        let c = from(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ])
        .unwrap();
        assert_eq!(
            (c.queue_size, c.batch_size, c.batch_delay),
            (16, 512, Duration::from_millis(250))
        );
        let c = from(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2048")]).unwrap();
        assert_eq!((c.queue_size, c.batch_size), (2048, 2048));
        let e = from(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") && e.contains("positive"),
            "{e}"
        );
    }

    #[test]
    fn resource_attributes() {
        let c = from(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=staging, team=sre",
        )])
        .unwrap();
        assert_eq!(c.environment(), Some("staging"));
        assert_eq!(c.resource_attributes.len(), 2);
    }
}
