//! What the receiver stores: one entry per span, log record and metric, each carrying its
//! resource attributes and instrumentation scope, so a test never walks the OTLP nesting itself.

use std::time::Duration;

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, SeverityNumber},
    metrics::v1::{Metric, metric::Data},
    resource::v1::Resource,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};

use crate::attrs;

/// Which OTLP transport delivered an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// OTLP/gRPC (`opentelemetry.proto.collector.*.v1.*Service/Export`).
    Grpc,
    /// OTLP/HTTP with a protobuf body (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`).
    Http,
}

/// One received span with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// How it arrived.
    pub transport: Transport,
    /// Attributes of the resource that produced it (`service.name`, …).
    pub resource_attributes: Vec<KeyValue>,
    /// Instrumentation scope (tracer) name.
    pub scope_name: String,
    /// Instrumentation scope version (empty if unset).
    pub scope_version: String,
    /// The span exactly as decoded.
    pub span: Span,
}

/// One received log record with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedLog {
    /// How it arrived.
    pub transport: Transport,
    /// Attributes of the resource that produced it.
    pub resource_attributes: Vec<KeyValue>,
    /// Instrumentation scope (logger) name.
    pub scope_name: String,
    /// Instrumentation scope version (empty if unset).
    pub scope_version: String,
    /// The log record exactly as decoded.
    pub record: LogRecord,
}

/// One received metric (one instrument in one export batch) with its resource and scope.
///
/// Cumulative exporters send the same metric again in every batch; every batch is kept, in
/// arrival order. Use [`crate::counter_value`] and friends instead of reading points by hand.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMetric {
    /// How it arrived.
    pub transport: Transport,
    /// Attributes of the resource that produced it.
    pub resource_attributes: Vec<KeyValue>,
    /// Instrumentation scope (meter) name.
    pub scope_name: String,
    /// Instrumentation scope version (empty if unset).
    pub scope_version: String,
    /// The metric exactly as decoded.
    pub metric: Metric,
}

/// The shape of a metric's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Gauge (last value).
    Gauge,
    /// Sum: a counter when monotonic, an up-down counter otherwise.
    Sum,
    /// Explicit-bucket histogram.
    Histogram,
    /// Exponential histogram.
    ExponentialHistogram,
    /// Summary (not produced by the OpenTelemetry SDKs, only by bridges).
    Summary,
    /// No data at all.
    Empty,
}

// === impl ReceivedSpan ===

impl ReceivedSpan {
    /// The span name.
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The span kind (`Unspecified` for unknown values).
    pub fn kind(&self) -> SpanKind {
        self.span.kind()
    }

    /// The status code (`Unset` when the span has no status).
    pub fn status_code(&self) -> StatusCode {
        self.span
            .status
            .as_ref()
            .map_or(StatusCode::Unset, |status| status.code())
    }

    /// The status message (empty when unset).
    pub fn status_message(&self) -> &str {
        self.span
            .status
            .as_ref()
            .map_or("", |status| status.message.as_str())
    }

    /// The span's attributes.
    pub fn attributes(&self) -> &[KeyValue] {
        &self.span.attributes
    }

    /// A span attribute, see [`crate::attr`].
    pub fn attr(&self, key: &str) -> Option<&AnyValue> {
        attrs::attr(&self.span.attributes, key)
    }

    /// A string span attribute, see [`crate::attr_str`].
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        attrs::attr_str(&self.span.attributes, key)
    }

    /// An integer span attribute, see [`crate::attr_i64`].
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        attrs::attr_i64(&self.span.attributes, key)
    }

    /// A double span attribute, see [`crate::attr_f64`].
    pub fn attr_f64(&self, key: &str) -> Option<f64> {
        attrs::attr_f64(&self.span.attributes, key)
    }

    /// A boolean span attribute, see [`crate::attr_bool`].
    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        attrs::attr_bool(&self.span.attributes, key)
    }

    /// A string-array span attribute, see [`crate::attr_str_array`].
    pub fn attr_str_array(&self, key: &str) -> Option<Vec<&str>> {
        attrs::attr_str_array(&self.span.attributes, key)
    }

    /// A string resource attribute (for example `service.name`).
    pub fn resource_attr_str(&self, key: &str) -> Option<&str> {
        attrs::attr_str(&self.resource_attributes, key)
    }

    /// Span events with this name.
    pub fn events_named(
        &self,
        name: &str,
    ) -> Vec<&opentelemetry_proto::tonic::trace::v1::span::Event> {
        self.span.events.iter().filter(|e| e.name == name).collect()
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        attrs::hex(&self.span.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        attrs::hex(&self.span.span_id)
    }

    /// The parent span id as hex, `None` for a root span.
    pub fn parent_span_id_hex(&self) -> Option<String> {
        non_zero(&self.span.parent_span_id).map(attrs::hex)
    }

    /// True when the span has no parent (in this process or a remote one).
    pub fn is_root(&self) -> bool {
        non_zero(&self.span.parent_span_id).is_none()
    }

    /// True when `parent` is this span's direct parent (same trace, matching parent span id).
    pub fn is_child_of(&self, parent: &ReceivedSpan) -> bool {
        self.span.trace_id == parent.span.trace_id
            && !self.span.parent_span_id.is_empty()
            && self.span.parent_span_id == parent.span.span_id
    }

    /// End time minus start time (zero if the clock went backwards).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            self.span
                .end_time_unix_nano
                .saturating_sub(self.span.start_time_unix_nano),
        )
    }
}

// === impl ReceivedLog ===

impl ReceivedLog {
    /// The event name: the record's `event_name` field, or the `event.name` attribute when the
    /// field is empty (older emitters put it there). `None` when neither is set.
    pub fn event_name(&self) -> Option<&str> {
        if self.record.event_name.is_empty() {
            attrs::attr_str(&self.record.attributes, "event.name")
        } else {
            Some(self.record.event_name.as_str())
        }
    }

    /// The severity number (`Unspecified` for unknown values).
    pub fn severity(&self) -> SeverityNumber {
        self.record.severity_number()
    }

    /// The severity text (empty when unset).
    pub fn severity_text(&self) -> &str {
        &self.record.severity_text
    }

    /// The body if it is a string.
    pub fn body_str(&self) -> Option<&str> {
        match self.record.body.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The record's attributes.
    pub fn attributes(&self) -> &[KeyValue] {
        &self.record.attributes
    }

    /// A log attribute, see [`crate::attr`].
    pub fn attr(&self, key: &str) -> Option<&AnyValue> {
        attrs::attr(&self.record.attributes, key)
    }

    /// A string log attribute, see [`crate::attr_str`].
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        attrs::attr_str(&self.record.attributes, key)
    }

    /// An integer log attribute, see [`crate::attr_i64`].
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        attrs::attr_i64(&self.record.attributes, key)
    }

    /// A double log attribute, see [`crate::attr_f64`].
    pub fn attr_f64(&self, key: &str) -> Option<f64> {
        attrs::attr_f64(&self.record.attributes, key)
    }

    /// A boolean log attribute, see [`crate::attr_bool`].
    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        attrs::attr_bool(&self.record.attributes, key)
    }

    /// A string resource attribute (for example `deployment.environment.name`).
    pub fn resource_attr_str(&self, key: &str) -> Option<&str> {
        attrs::attr_str(&self.resource_attributes, key)
    }

    /// The correlated trace id as hex, `None` when the record carries no trace context.
    pub fn trace_id_hex(&self) -> Option<String> {
        non_zero(&self.record.trace_id).map(attrs::hex)
    }

    /// The correlated span id as hex, `None` when the record carries no trace context.
    pub fn span_id_hex(&self) -> Option<String> {
        non_zero(&self.record.span_id).map(attrs::hex)
    }

    /// True when the record was emitted inside `span` (same trace id and span id).
    pub fn is_in_span(&self, span: &ReceivedSpan) -> bool {
        non_zero(&self.record.trace_id).is_some()
            && self.record.trace_id == span.span.trace_id
            && self.record.span_id == span.span.span_id
    }
}

// === impl ReceivedMetric ===

impl ReceivedMetric {
    /// The instrument name.
    pub fn name(&self) -> &str {
        &self.metric.name
    }

    /// The unit (empty when unset).
    pub fn unit(&self) -> &str {
        &self.metric.unit
    }

    /// The shape of the data.
    pub fn kind(&self) -> MetricKind {
        match self.metric.data {
            Some(Data::Gauge(_)) => MetricKind::Gauge,
            Some(Data::Sum(_)) => MetricKind::Sum,
            Some(Data::Histogram(_)) => MetricKind::Histogram,
            Some(Data::ExponentialHistogram(_)) => MetricKind::ExponentialHistogram,
            Some(Data::Summary(_)) => MetricKind::Summary,
            None => MetricKind::Empty,
        }
    }

    /// A string resource attribute.
    pub fn resource_attr_str(&self, key: &str) -> Option<&str> {
        attrs::attr_str(&self.resource_attributes, key)
    }

    /// Data points in this metric (one per attribute set): the unit the sender's drop counter uses.
    pub fn data_points(&self) -> usize {
        match &self.metric.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        }
    }
}

// === flattening ===

fn resource_attrs(resource: Option<Resource>) -> Vec<KeyValue> {
    resource.map(|r| r.attributes).unwrap_or_default()
}

fn scope_parts(scope: Option<InstrumentationScope>) -> (String, String) {
    scope.map(|s| (s.name, s.version)).unwrap_or_default()
}

pub(crate) fn flatten_spans(
    req: ExportTraceServiceRequest,
    transport: Transport,
) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource_attributes = resource_attrs(rs.resource);
        for ss in rs.scope_spans {
            let (scope_name, scope_version) = scope_parts(ss.scope);
            for span in ss.spans {
                out.push(ReceivedSpan {
                    transport,
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    span,
                });
            }
        }
    }
    out
}

pub(crate) fn flatten_logs(
    req: ExportLogsServiceRequest,
    transport: Transport,
) -> Vec<ReceivedLog> {
    let mut out = Vec::new();
    for rl in req.resource_logs {
        let resource_attributes = resource_attrs(rl.resource);
        for sl in rl.scope_logs {
            let (scope_name, scope_version) = scope_parts(sl.scope);
            for record in sl.log_records {
                out.push(ReceivedLog {
                    transport,
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    record,
                });
            }
        }
    }
    out
}

pub(crate) fn flatten_metrics(
    req: ExportMetricsServiceRequest,
    transport: Transport,
) -> Vec<ReceivedMetric> {
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        let resource_attributes = resource_attrs(rm.resource);
        for sm in rm.scope_metrics {
            let (scope_name, scope_version) = scope_parts(sm.scope);
            for metric in sm.metrics {
                out.push(ReceivedMetric {
                    transport,
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    metric,
                });
            }
        }
    }
    out
}

// === ids ===

/// `None` for an absent id (empty or all zeros, both mean "no id" in OTLP).
fn non_zero(id: &[u8]) -> Option<&[u8]> {
    if id.iter().all(|b| *b == 0) {
        None
    } else {
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_absent_ids() {
        assert_eq!(attrs::hex(&[0x00, 0xab, 0x0f]), "00ab0f");
        assert!(non_zero(&[]).is_none());
        assert!(non_zero(&[0; 8]).is_none());
        assert!(non_zero(&[0, 1]).is_some());
    }
}
