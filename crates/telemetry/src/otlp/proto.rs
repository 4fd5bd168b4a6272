//! OTLP protobuf, written straight from the SDK's span and log data.
//!
//! The upstream exporter first converts every span into `opentelemetry-proto`'s message structs — a `String` for
//! every attribute key and value, a `Vec` for every id — then measures and encodes them, then frees them all.
//! Profiled under load that was most of the export threads' time. Here each span or log record is written once,
//! when it ends, into the buffer of its scope's group ([`Groups`]); a batch's request then only adds the
//! envelope around the groups, whose lengths are known. Inside an item, a nested message reserves one length
//! byte, and when its body grows past 127 bytes the body moves right by the extra length bytes (one `memmove`).
//!
//! The output must decode to exactly what `opentelemetry-proto`'s own conversion builds; the tests check that
//! field by field, so the two cannot drift apart unnoticed. Field numbers are those of
//! `opentelemetry/proto/{collector,common,resource,trace,logs}/v1/*.proto`.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, Severity};
use opentelemetry::trace::{SpanId, Status, TraceFlags, TraceId};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
#[cfg(test)]
use opentelemetry_sdk::logs::LogBatch;
use opentelemetry_sdk::logs::SdkLogRecord;
use opentelemetry_sdk::trace::SpanData;

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the span's `is_remote` bit is known, and set when the parent is remote.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// A protobuf writer over one growing buffer. Scalars equal to their default are omitted, as protobuf's own
/// encoders do; members of a `oneof` and present sub-messages are always written.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
    /// Where each open message's length byte is.
    open: Vec<usize>,
}

impl Writer {
    /// A writer whose buffer holds `bytes` before it must grow.
    pub(crate) fn with_capacity(bytes: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(bytes),
            open: Vec::with_capacity(8),
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> &[u8] {
        &self.buf
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, FIXED64);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn fixed32(&mut self, field: u32, v: u32) {
        if v != 0 {
            self.key(field, FIXED32);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn bytes_field(&mut self, field: u32, v: &[u8]) {
        if !v.is_empty() {
            self.key(field, LEN);
            self.varint(v.len() as u64);
            self.buf.extend_from_slice(v);
        }
    }

    fn str(&mut self, field: u32, v: &str) {
        self.bytes_field(field, v.as_bytes());
    }

    /// A sub-message already encoded (written even when empty, as present sub-messages are).
    fn bytes_message(&mut self, field: u32, body: &[u8]) {
        self.key(field, LEN);
        self.varint(body.len() as u64);
        self.buf.extend_from_slice(body);
    }

    /// Opens a sub-message; every `begin` is closed by one `end`.
    fn begin(&mut self, field: u32) {
        self.key(field, LEN);
        self.open.push(self.buf.len());
        self.buf.push(0);
    }

    fn end(&mut self) {
        let Some(at) = self.open.pop() else { return };
        let len = self.buf.len() - at - 1;
        if len < 0x80 {
            self.buf[at] = len as u8;
            return;
        }
        // The body moves right by the length's extra bytes (one `memmove`), and the length goes in front.
        let extra = varint_len(len as u64) - 1;
        let end = self.buf.len();
        self.buf.resize(end + extra, 0);
        self.buf.copy_within(at + 1..end, at + 1 + extra);
        let mut v = len as u64;
        for b in &mut self.buf[at..=at + extra] {
            *b = (v as u8 & 0x7f) | if v >= 0x80 { 0x80 } else { 0 };
            v >>= 7;
        }
    }

    // --- common.v1 ---

    /// A `KeyValue`; `value` writes the body of its `AnyValue`.
    fn key_value(&mut self, field: u32, key: &str, value: impl FnOnce(&mut Writer)) {
        self.begin(field);
        self.str(1, key);
        self.begin(2);
        value(self);
        self.end();
        self.end();
    }

    /// A `KeyValue` holding a scalar: both lengths are known up front, so it is written in one pass with one
    /// reservation (most attributes; this is the encoder's innermost loop).
    fn scalar_key_value(&mut self, field: u32, key: &str, value: Scalar<'_>) {
        let any = value.len();
        let body = len_field(key.len()) + len_field(any);
        self.buf.reserve(1 + 10 + body);
        if field < 16 && body < 0x80 {
            // Nearly every attribute: each key and length one byte, so the heads are two fixed-size copies.
            let tag = (field << 3 | LEN) as u8;
            self.buf
                .extend_from_slice(&[tag, body as u8, 1 << 3 | LEN as u8, key.len() as u8]);
            self.buf.extend_from_slice(key.as_bytes());
            self.buf.extend_from_slice(&[2 << 3 | LEN as u8, any as u8]);
        } else {
            self.key(field, LEN);
            self.varint(body as u64);
            self.bytes_message(1, key.as_bytes());
            self.key(2, LEN);
            self.varint(any as u64);
        }
        self.scalar(value);
    }

    fn attributes<'a>(&mut self, field: u32, attrs: impl IntoIterator<Item = &'a KeyValue>) {
        for kv in attrs {
            match Scalar::of_value(&kv.value) {
                Some(v) => self.scalar_key_value(field, kv.key.as_str(), v),
                None => self.key_value(field, kv.key.as_str(), |w| w.value(&kv.value)),
            }
        }
    }

    /// The body of an `AnyValue` holding a scalar.
    fn scalar(&mut self, value: Scalar<'_>) {
        match value {
            Scalar::Str(s) => self.oneof_string(s),
            Scalar::Bool(b) => self.oneof_varint(2, u64::from(b)),
            Scalar::Int(i) => self.oneof_varint(3, i as u64),
            Scalar::Double(f) => self.oneof_double(f),
        }
    }

    /// The body of an `AnyValue` holding an attribute value.
    fn value(&mut self, value: &Value) {
        match value {
            Value::Array(array) => {
                self.begin(5);
                match array {
                    Array::Bool(v) => v
                        .iter()
                        .for_each(|b| self.item(|w| w.oneof_varint(2, u64::from(*b)))),
                    Array::I64(v) => v
                        .iter()
                        .for_each(|i| self.item(|w| w.oneof_varint(3, *i as u64))),
                    Array::F64(v) => v.iter().for_each(|f| self.item(|w| w.oneof_double(*f))),
                    Array::String(v) => v
                        .iter()
                        .for_each(|s| self.item(|w| w.oneof_string(s.as_str()))),
                    // A kind of array added after this was written: an empty list rather than a panic.
                    _ => {}
                }
                self.end();
            }
            v => {
                // A kind of value added after this was written: an empty `AnyValue`.
                if let Some(v) = Scalar::of_value(v) {
                    self.scalar(v);
                }
            }
        }
    }

    /// One `AnyValue` of an `ArrayValue`.
    fn item(&mut self, body: impl FnOnce(&mut Writer)) {
        self.begin(1);
        body(self);
        self.end();
    }

    fn oneof_string(&mut self, s: &str) {
        if s.len() < 0x80 {
            self.buf
                .extend_from_slice(&[1 << 3 | LEN as u8, s.len() as u8]);
        } else {
            self.key(1, LEN);
            self.varint(s.len() as u64);
        }
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn oneof_varint(&mut self, field: u32, v: u64) {
        self.key(field, VARINT);
        self.varint(v);
    }

    fn oneof_double(&mut self, v: f64) {
        self.key(4, FIXED64);
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }

    /// The body of an `AnyValue` holding a log record's body or attribute.
    fn any_value(&mut self, value: &AnyValue) {
        match value {
            AnyValue::ListAny(items) => {
                self.begin(5);
                items.iter().for_each(|v| self.item(|w| w.any_value(v)));
                self.end();
            }
            AnyValue::Map(map) => {
                self.begin(6);
                for (k, v) in map.iter() {
                    self.key_value(1, k.as_str(), |w| w.any_value(v));
                }
                self.end();
            }
            AnyValue::Bytes(b) => {
                self.key(7, LEN);
                self.varint(b.len() as u64);
                self.buf.extend_from_slice(b);
            }
            v => {
                if let Some(v) = Scalar::of_any(v) {
                    self.scalar(v);
                }
            }
        }
    }

    /// An attribute of a log record (field 6).
    fn log_attribute(&mut self, key: &str, value: &AnyValue) {
        match Scalar::of_any(value) {
            Some(v) => self.scalar_key_value(6, key, v),
            None => self.key_value(6, key, |w| w.any_value(value)),
        }
    }

    /// An `InstrumentationScope` (named `name`: a log record's target replaces its scope's name).
    fn scope(&mut self, field: u32, name: &str, scope: &InstrumentationScope) {
        self.begin(field);
        self.str(1, name);
        self.str(2, scope.version().unwrap_or_default());
        self.attributes(3, scope.attributes());
        self.end();
    }
}

/// A scalar attribute or log value: the `AnyValue` members whose encoded length is known before writing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
}

impl Scalar<'_> {
    fn of_value(value: &Value) -> Option<Scalar<'_>> {
        Some(match value {
            Value::String(s) => Scalar::Str(s.as_str()),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::I64(i) => Scalar::Int(*i),
            Value::F64(f) => Scalar::Double(*f),
            _ => return None,
        })
    }

    fn of_any(value: &AnyValue) -> Option<Scalar<'_>> {
        Some(match value {
            AnyValue::String(s) => Scalar::Str(s.as_str()),
            AnyValue::Boolean(b) => Scalar::Bool(*b),
            AnyValue::Int(i) => Scalar::Int(*i),
            AnyValue::Double(f) => Scalar::Double(*f),
            _ => return None,
        })
    }

    /// Bytes of the `AnyValue` body holding it (one member of the `oneof`, always written).
    fn len(self) -> usize {
        match self {
            Scalar::Str(s) => len_field(s.len()),
            Scalar::Bool(_) => 2,
            Scalar::Int(i) => 1 + varint_len(i as u64),
            Scalar::Double(_) => 9,
        }
    }
}

/// Bytes of a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes of a length-delimited field holding `len` bytes (field numbers below 16: a one-byte key).
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Bytes of a string field, 0 when the string is empty (not written).
fn str_field(s: &str) -> usize {
    if s.is_empty() { 0 } else { len_field(s.len()) }
}

/// A resource encoded once (its attributes as `Resource` message fields) and copied into every request.
#[derive(Debug, Default, Clone)]
pub(crate) struct EncodedResource {
    attributes: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub(crate) fn new(resource: &Resource) -> EncodedResource {
        let mut w = Writer::default();
        for (k, v) in resource.iter() {
            w.key_value(1, k.as_str(), |w| w.value(v));
        }
        EncodedResource {
            attributes: w.buf,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// The items of one instrumentation scope, as the body of a `Scope{Spans,Logs}` message: the encoded scope
/// (field 1), then each item (field 2); the schema URL (field 3) is written with the request.
#[derive(Debug)]
struct Group {
    /// The scope's name as reported (a log record's target replaces it) and the scope: the group's key
    /// ([`Group::is`]).
    name: String,
    scope: InstrumentationScope,
    encoded_scope: Vec<u8>,
    items: Writer,
}

impl Group {
    fn len(&self) -> usize {
        self.encoded_scope.len() + self.items.buf.len() + str_field(self.schema_url())
    }

    fn schema_url(&self) -> &str {
        self.scope.schema_url().unwrap_or_default()
    }

    /// Same reported name, and the same scope apart from its own name (log records of one target share a
    /// group whatever logger emitted them, as in the upstream conversion).
    fn is(&self, name: &str, scope: &InstrumentationScope) -> bool {
        self.name == name
            && self.scope.version() == scope.version()
            && self.scope.schema_url() == scope.schema_url()
            && self.scope.attributes().eq(scope.attributes())
    }
}

/// Spans or log records encoded as they end, grouped by scope in order of first appearance, until they are
/// written out as one export request ([`Groups::request`]). Each item is encoded once, straight into its
/// group; the request then only adds the envelope, whose lengths are known.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    groups: Vec<Group>,
    /// Items added.
    pub(crate) count: usize,
    /// Bytes the first group's buffer starts with (a full batch's worth, from the previous batch).
    capacity: usize,
}

impl Groups {
    /// Empty groups whose first buffer holds `capacity` bytes before it must grow.
    pub(crate) fn with_capacity(capacity: usize) -> Groups {
        Groups {
            capacity,
            ..Groups::default()
        }
    }

    /// Encoded bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.groups.iter().map(Group::len).sum()
    }

    /// The writer of the group of scope `scope` reported as `name` (a new group if no item had it yet).
    fn group(&mut self, name: &str, scope: &InstrumentationScope) -> &mut Writer {
        self.count += 1;
        let found = self.groups.iter().position(|g| g.is(name, scope));
        let i = found.unwrap_or_else(|| {
            let mut encoded = Writer::default();
            encoded.scope(1, name, scope);
            self.groups.push(Group {
                name: name.to_owned(),
                scope: scope.clone(),
                encoded_scope: encoded.buf,
                items: Writer::with_capacity(std::mem::take(&mut self.capacity)),
            });
            self.groups.len() - 1
        });
        &mut self.groups[i].items
    }

    /// Adds a span (its `ScopeSpans` is that of its instrumentation scope).
    pub(crate) fn add_span(&mut self, span: &SpanData) {
        let scope = &span.instrumentation_scope;
        span_message(self.group(scope.name(), scope), span);
    }

    /// Adds a log record (its `ScopeLogs` is that of its scope, named by the record's target if it has one).
    pub(crate) fn add_log(&mut self, record: &SdkLogRecord, scope: &InstrumentationScope) {
        let fields = LogFields {
            timestamp: record.timestamp(),
            observed: record.observed_timestamp(),
            severity: record.severity_number(),
            severity_text: record.severity_text().unwrap_or_default(),
            body: record.body().map(LogBody::Any),
            trace: record
                .trace_context()
                .map(|cx| (cx.trace_id, cx.span_id, cx.trace_flags)),
            event_name: record.event_name().unwrap_or_default(),
        };
        let w = self.group(log_scope_name(record, scope), scope);
        log_message(w, &fields, |w| {
            for (k, v) in record.attributes_iter() {
                w.log_attribute(k.as_str(), v);
            }
        });
    }

    /// Adds a log record of `scope` made of `fields` and the scalar `attributes` present, as an SDK record
    /// with the same content would be written.
    pub(crate) fn add_record(
        &mut self,
        scope: &InstrumentationScope,
        fields: &LogFields<'_>,
        attributes: &[Option<(&str, Scalar<'_>)>],
    ) {
        log_message(self.group(scope.name(), scope), fields, |w| {
            for &(k, v) in attributes.iter().flatten() {
                w.scalar_key_value(6, k, v);
            }
        });
    }

    /// The `Export{Trace,Logs}ServiceRequest` holding every item: one `Resource{Spans,Logs}` with `resource`,
    /// one `Scope{Spans,Logs}` per group.
    pub(crate) fn request(&self, resource: &EncodedResource) -> Vec<u8> {
        let resource_len = len_field(resource.attributes.len())
            + self
                .groups
                .iter()
                .map(|g| len_field(g.len()))
                .sum::<usize>()
            + str_field(&resource.schema_url);
        let mut w = Writer::with_capacity(len_field(resource_len));
        w.key(1, LEN);
        w.varint(resource_len as u64);
        w.bytes_message(1, &resource.attributes);
        for g in &self.groups {
            w.key(2, LEN);
            w.varint(g.len() as u64);
            w.buf.extend_from_slice(&g.encoded_scope);
            w.buf.extend_from_slice(&g.items.buf);
            w.str(3, g.schema_url());
        }
        w.str(3, &resource.schema_url);
        w.buf
    }
}

/// An `ExportTraceServiceRequest` for `spans` (see [`Groups`]).
#[cfg(test)]
pub(crate) fn encode_spans(resource: &EncodedResource, spans: &[SpanData]) -> Vec<u8> {
    let mut groups = Groups::default();
    spans.iter().for_each(|s| groups.add_span(s));
    groups.request(resource)
}

/// An `ExportLogsServiceRequest` for `batch` (see [`Groups`]).
#[cfg(test)]
pub(crate) fn encode_logs(resource: &EncodedResource, batch: &LogBatch<'_>) -> Vec<u8> {
    let mut groups = Groups::default();
    batch.iter().for_each(|(r, s)| groups.add_log(r, s));
    groups.request(resource)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

fn span_message(w: &mut Writer, span: &SpanData) {
    let cx = &span.span_context;
    w.begin(2);
    w.bytes_field(1, &cx.trace_id().to_bytes());
    w.bytes_field(2, &cx.span_id().to_bytes());
    w.str(3, &cx.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        w.bytes_field(4, &span.parent_span_id.to_bytes());
    }
    w.str(5, &span.name);
    w.uint(6, span_kind(&span.span_kind));
    w.fixed64(7, nanos(span.start_time));
    w.fixed64(8, nanos(span.end_time));
    w.attributes(9, &span.attributes);
    w.uint(10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        w.begin(11);
        w.fixed64(1, nanos(event.timestamp));
        w.str(2, &event.name);
        w.attributes(3, &event.attributes);
        w.uint(4, u64::from(event.dropped_attributes_count));
        w.end();
    }
    w.uint(12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        let lcx = &link.span_context;
        w.begin(13);
        w.bytes_field(1, &lcx.trace_id().to_bytes());
        w.bytes_field(2, &lcx.span_id().to_bytes());
        w.str(3, &lcx.trace_state().header());
        w.attributes(4, &link.attributes);
        w.uint(5, u64::from(link.dropped_attributes_count));
        w.fixed32(6, flags(lcx.is_remote(), lcx.trace_flags().to_u8()));
        w.end();
    }
    w.uint(14, u64::from(span.links.dropped_count));
    w.begin(15);
    let (code, message) = match &span.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    };
    w.str(2, message);
    w.uint(3, code);
    w.end();
    w.fixed32(
        16,
        flags(span.parent_span_is_remote, cx.trace_flags().to_u8()),
    );
    w.end();
}

fn flags(remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

fn span_kind(kind: &opentelemetry::trace::SpanKind) -> u64 {
    use opentelemetry::trace::SpanKind;
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// A log record's scope as OTLP reports it: its target (the `tracing` target, for bridged logs) replaces the
/// scope's name.
fn log_scope_name<'a>(record: &'a SdkLogRecord, scope: &'a InstrumentationScope) -> &'a str {
    record.target().map_or(scope.name(), |t| t.as_ref())
}

/// A log record's fields, as [`log_message`] writes them: from the SDK's records, or set directly by an
/// evidence event ([`Groups::add_record`]), which then needs no SDK record at all.
pub(crate) struct LogFields<'a> {
    pub(crate) timestamp: Option<SystemTime>,
    pub(crate) observed: Option<SystemTime>,
    pub(crate) severity: Option<Severity>,
    pub(crate) severity_text: &'a str,
    pub(crate) body: Option<LogBody<'a>>,
    pub(crate) trace: Option<(TraceId, SpanId, Option<TraceFlags>)>,
    pub(crate) event_name: &'a str,
}

/// A log record's body.
pub(crate) enum LogBody<'a> {
    Any(&'a AnyValue),
    Str(&'a str),
}

/// One `LogRecord` (field 2 of `ScopeLogs`); `attributes` writes its attributes (field 6).
fn log_message(w: &mut Writer, f: &LogFields<'_>, attributes: impl FnOnce(&mut Writer)) {
    w.begin(2);
    w.fixed64(1, f.timestamp.map(nanos).unwrap_or_default());
    w.uint(2, f.severity.map_or(0, severity));
    w.str(3, f.severity_text);
    match f.body {
        Some(LogBody::Any(body)) => {
            w.begin(5);
            w.any_value(body);
            w.end();
        }
        Some(LogBody::Str(body)) => {
            w.begin(5);
            w.scalar(Scalar::Str(body));
            w.end();
        }
        None => {}
    }
    attributes(w);
    if let Some((trace_id, span_id, flags)) = f.trace {
        w.fixed32(8, flags.map_or(0, |f| u32::from(f.to_u8())));
        w.bytes_field(9, &trace_id.to_bytes());
        w.bytes_field(10, &span_id.to_bytes());
    }
    w.fixed64(11, f.observed.map(nanos).unwrap_or_default());
    w.str(12, f.event_name);
    w.end();
}

/// OTLP's `SeverityNumber` is the API's `Severity` (1 = TRACE … 24 = FATAL4).
fn severity(s: Severity) -> u64 {
    s as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::borrow::Cow;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
    use opentelemetry::trace::{
        Span as _, SpanContext, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        Tracer as _, TracerProvider as _,
    };
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::logs::{LogExporter, SdkLoggerProvider};
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
    use prost::Message as _;

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("svc")
            .with_attributes([
                KeyValue::new("deployment.environment.name", "test"),
                KeyValue::new("n", 7_i64),
            ])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.36.0")
            .build()
    }

    fn values() -> Vec<KeyValue> {
        vec![
            KeyValue::new("s", "text with ünïcode"),
            KeyValue::new("empty", ""),
            KeyValue::new("b", true),
            KeyValue::new("f", false),
            KeyValue::new("i", -42_i64),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("d", 0.25),
            KeyValue::new("d0", 0.0),
            KeyValue::new("long", "x".repeat(300)),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, -1, i64::MAX]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![1.5]))),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec!["a".into(), "b".into()])),
            ),
        ]
    }

    /// Encodes each exported batch both ways and keeps the two decoded requests.
    #[derive(Debug, Default, Clone)]
    struct Both {
        resource: Option<Resource>,
        traces: Arc<Mutex<Vec<(ExportTraceServiceRequest, ExportTraceServiceRequest)>>>,
        logs: Arc<Mutex<Vec<(ExportLogsServiceRequest, ExportLogsServiceRequest)>>>,
    }

    impl Both {
        fn resources(&self) -> (EncodedResource, ResourceAttributesWithSchema) {
            let r = self.resource.clone().unwrap();
            (EncodedResource::new(&r), (&r).into())
        }
    }

    impl SpanExporter for Both {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let (ours, theirs) = self.resources();
            let decoded =
                ExportTraceServiceRequest::decode(&encode_spans(&ours, &batch)[..]).unwrap();
            let expected = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(batch, &theirs),
            };
            self.traces.lock().unwrap().push((decoded, expected));
            Ok(())
        }
        fn set_resource(&mut self, resource: &Resource) {
            self.resource = Some(resource.clone());
        }
    }

    impl LogExporter for Both {
        async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
            let (ours, theirs) = self.resources();
            let decoded =
                ExportLogsServiceRequest::decode(&encode_logs(&ours, &batch)[..]).unwrap();
            let mut expected = ExportLogsServiceRequest {
                resource_logs: group_logs_by_resource_and_scope(&batch, &theirs),
            };
            // Upstream groups through a HashMap: put its scope groups in our order (first appearance).
            let order: Vec<String> = decoded.resource_logs[0]
                .scope_logs
                .iter()
                .map(|s| format!("{:?}", s.scope))
                .collect();
            expected.resource_logs[0].scope_logs.sort_by_key(|s| {
                let key = format!("{:?}", s.scope);
                order.iter().position(|o| *o == key)
            });
            self.logs.lock().unwrap().push((decoded, expected));
            Ok(())
        }
        fn set_resource(&mut self, resource: &Resource) {
            self.resource = Some(resource.clone());
        }
    }

    #[test]
    fn spans_decode_to_what_the_upstream_conversion_builds() {
        let both = Both::default();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource())
            .with_simple_exporter(both.clone())
            .build();
        let ours = provider.tracer("retrybudget");
        let other = provider.tracer_with_scope(
            InstrumentationScope::builder("other")
                .with_version("1.2.3")
                .with_schema_url("https://example.test/schema")
                .with_attributes([KeyValue::new("scope.attr", 1_i64)])
                .build(),
        );
        let remote = SpanContext::new(
            TraceId::from_bytes((0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10_u128).to_be_bytes()),
            SpanId::from_bytes((0x1112_1314_1516_1718_u64).to_be_bytes()),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "v1")]).unwrap(),
        );
        let parent = opentelemetry::Context::new().with_remote_span_context(remote.clone());
        // A batch of several spans, two scopes interleaved, every field kind used.
        let mut batch = Vec::new();
        for (i, kind) in [SpanKind::Server, SpanKind::Client, SpanKind::Internal]
            .into_iter()
            .enumerate()
        {
            let tracer = if i == 1 { &other } else { &ours };
            let mut span = tracer
                .span_builder(Cow::Owned(format!("POST /v1/chat/completions {i}")))
                .with_kind(kind)
                .with_attributes(values())
                .with_links(vec![opentelemetry::trace::Link::with_context(
                    remote.clone(),
                )])
                .start_with_context(tracer, &parent);
            span.add_event("retry", vec![KeyValue::new("attempt", 2_i64)]);
            span.add_event("bare", vec![]);
            match i {
                0 => span.set_status(Status::error("upstream 503")),
                1 => span.set_status(Status::Ok),
                _ => {}
            }
            batch.push(span);
        }
        let root = ours.start("root without parent");
        batch.into_iter().for_each(drop);
        drop(root);
        provider.force_flush().unwrap();
        let got = both.traces.lock().unwrap().clone();
        assert_eq!(
            got.len(),
            4,
            "one export per span with the simple processor"
        );
        for (decoded, expected) in got {
            assert_eq!(decoded, expected);
        }

        // And one batch holding every span at once, scopes interleaved.
        let spans: Vec<SpanData> = (0..5)
            .map(|i| SpanData {
                instrumentation_scope: if i % 2 == 0 {
                    InstrumentationScope::builder("a").build()
                } else {
                    InstrumentationScope::builder("b").with_version("2").build()
                },
                name: Cow::Owned(format!("span {i}")),
                attributes: values(),
                ..span_data()
            })
            .collect();
        let r = resource();
        let bytes = encode_spans(&EncodedResource::new(&r), &spans);
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let expected = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &(&r).into()),
        };
        assert_eq!(decoded, expected);
        assert_eq!(decoded.resource_spans[0].scope_spans.len(), 2);
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 3);
    }

    fn span_data() -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes((1_u128).to_be_bytes()),
                SpanId::from_bytes((2_u64).to_be_bytes()),
                TraceFlags::default(),
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Borrowed("s"),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_001_000_000_000),
            attributes: Vec::new(),
            dropped_attributes_count: 3,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("x").build(),
        }
    }

    #[test]
    fn log_records_decode_to_what_the_upstream_conversion_builds() {
        let both = Both::default();
        let provider = SdkLoggerProvider::builder()
            .with_resource(resource())
            .with_simple_exporter(both.clone())
            .build();
        let logger = provider.logger("retrybudget");
        let mut map = std::collections::HashMap::new();
        map.insert("k".into(), AnyValue::Int(1));
        let mut bodies = vec![
            None,
            Some(AnyValue::String("body".into())),
            Some(AnyValue::Int(0)),
            Some(AnyValue::Double(-1.5)),
            Some(AnyValue::Boolean(false)),
            Some(AnyValue::Bytes(Box::new(vec![0, 1, 2]))),
            Some(AnyValue::ListAny(Box::new(vec![
                AnyValue::Int(1),
                AnyValue::String("two".into()),
            ]))),
            Some(AnyValue::Map(Box::new(map))),
        ];
        for (i, body) in bodies.drain(..).enumerate() {
            let mut record = logger.create_log_record();
            record.set_event_name("retrybudget.attempt");
            if i % 2 == 0 {
                record.set_target("retrybudget_agent::proxy");
                record.set_timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
            }
            record.set_observed_timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_001));
            record.set_severity_number(Severity::Warn);
            record.set_severity_text("WARN");
            if let Some(body) = body {
                record.set_body(body);
            }
            record.add_attribute("s", "value");
            record.add_attribute("n", 5_i64);
            record.add_attribute("long", "y".repeat(200));
            if i == 3 {
                record.set_trace_context(
                    TraceId::from_bytes((9_u128).to_be_bytes()),
                    SpanId::from_bytes((8_u64).to_be_bytes()),
                    Some(TraceFlags::SAMPLED),
                );
            }
            logger.emit(record);
        }
        provider.force_flush().unwrap();
        let got = both.logs.lock().unwrap().clone();
        assert_eq!(got.len(), 8);
        for (decoded, expected) in got {
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn a_record_written_from_its_fields_is_the_sdk_record_with_those_fields() {
        let provider = SdkLoggerProvider::builder().build();
        let scope = InstrumentationScope::builder("retrybudget").build();
        let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let (trace, span) = (
            TraceId::from_bytes((9_u128).to_be_bytes()),
            SpanId::from_bytes((8_u64).to_be_bytes()),
        );
        let mut record = provider.logger("retrybudget").create_log_record();
        record.set_event_name("retrybudget.attempt");
        record.set_timestamp(at);
        record.set_observed_timestamp(at);
        record.set_severity_number(Severity::Warn);
        record.set_severity_text("WARN");
        record.set_body(AnyValue::from("a note"));
        record.set_trace_context(trace, span, Some(TraceFlags::SAMPLED));
        record.add_attribute("s", "value");
        record.add_attribute("n", -5_i64);
        record.add_attribute("d", 0.5);
        record.add_attribute("long", "y".repeat(200));
        let mut sdk = Groups::default();
        sdk.add_log(&record, &scope);

        let long = "y".repeat(200);
        let mut direct = Groups::default();
        direct.add_record(
            &scope,
            &LogFields {
                timestamp: Some(at),
                observed: Some(at),
                severity: Some(Severity::Warn),
                severity_text: "WARN",
                body: Some(LogBody::Str("a note")),
                trace: Some((trace, span, Some(TraceFlags::SAMPLED))),
                event_name: "retrybudget.attempt",
            },
            &[
                Some(("s", Scalar::Str("value"))),
                None,
                Some(("n", Scalar::Int(-5))),
                Some(("d", Scalar::Double(0.5))),
                Some(("long", Scalar::Str(&long))),
            ],
        );
        let r = EncodedResource::new(&resource());
        assert_eq!(direct.request(&r), sdk.request(&r));
    }

    #[test]
    fn long_messages_get_multi_byte_lengths() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue as ProtoValue, KeyValue as ProtoKv};
        for len in [0, 1, 120, 127, 128, 300, 16_383, 16_384, 70_000] {
            // A KeyValue whose value nests one level deeper, so both the outer and the inner length grow;
            // written both ways: nested messages closed after the fact, and lengths known up front.
            let value = Value::from("z".repeat(len));
            let mut nested = Writer::default();
            nested.key_value(1, "k", |w| w.value(&value));
            let mut known = Writer::default();
            known.attributes(1, &[KeyValue::new("k", value.clone())]);
            assert_eq!(nested.bytes(), known.bytes(), "{len}");
            let bytes = known.bytes();
            assert_eq!(bytes[0], 0x0a, "field 1, length-delimited");
            let mut rest = &bytes[1..];
            let outer = prost::encoding::decode_varint(&mut rest).unwrap();
            assert_eq!(
                outer as usize,
                rest.len(),
                "{len}: the outer length covers the body exactly"
            );
            let kv = ProtoKv::decode(rest).unwrap();
            assert_eq!(kv.key, "k");
            let Some(ProtoValue { value: Some(v) }) = kv.value else {
                panic!("{len}: no value")
            };
            assert_eq!(
                v,
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                    "z".repeat(len)
                )
            );
        }
    }
}
