//! W3C `traceparent`: continued from callers, injected into every attempt, so a gateway's or provider's trace
//! joins ours.

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

/// The W3C trace context header (lowercase, as HTTP/2 and hyper spell it): read from callers, written on
/// every attempt. A parsed name: a `HeaderMap` looked up by a `&str` parses the name again on every call.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The `traceparent` header value for the span in `cx`, if it has a valid one.
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        // Written digit by digit: this runs on every attempt, and `format!` costs several times as much.
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &sc.trace_id().to_bytes());
        out.push('-');
        push_hex(&mut out, &sc.span_id().to_bytes());
        out.push('-');
        push_hex(&mut out, &[sc.trace_flags().to_u8()]);
        out
    })
}

/// Appends `bytes` as lowercase hex, as W3C trace context and OTLP/JSON spell ids.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.extend(hex_digits(b).map(char::from));
    }
}

/// One byte's two lowercase hex digits.
fn hex_digits(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]
}

/// `N` bytes (a trace or span id) as lowercase hex, on the stack: the evidence line borrows it.
pub(crate) struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    /// Holds the hex of `bytes`; `N` must be twice their length.
    pub(crate) fn new(bytes: &[u8]) -> Self {
        debug_assert_eq!(N, bytes.len() * 2, "Hex::<N> holds N / 2 bytes");
        let mut out = [0u8; N];
        for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&hex_digits(b));
        }
        Self(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII hex digits were written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A context whose remote parent is the caller's `traceparent`; an absent or malformed value gives an empty
/// context (a new trace starts).
pub fn extract_traceparent(value: Option<&str>) -> Context {
    let Some(v) = value else {
        return Context::new();
    };
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [version, trace, span, flags] = parts[..] else {
        return Context::new();
    };
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return Context::new();
    }
    let (Ok(trace_id), Ok(span_id), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(span),
        u8::from_str_radix(flags, 16),
    ) else {
        return Context::new();
    };
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    if !sc.is_valid() {
        return Context::new();
    }
    Context::new().with_remote_span_context(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract_traceparent(Some(tp));
        assert_eq!(traceparent(&cx).as_deref(), Some(tp));
        let sc = cx.span().span_context().clone();
        assert_eq!(
            Hex::<32>::new(&sc.trace_id().to_bytes()).as_str(),
            sc.trace_id().to_string()
        );
        assert_eq!(
            Hex::<16>::new(&sc.span_id().to_bytes()).as_str(),
            sc.span_id().to_string()
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent(&extract_traceparent(Some(bad))), None, "{bad}");
        }
    }
}
