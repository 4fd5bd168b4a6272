//! W3C `traceparent`: continued from callers, injected into every attempt, so a gateway's or provider's trace
//! joins ours.

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

/// The W3C trace context header (lowercase, as HTTP/2 and hyper spell it): read from callers, written on
/// every attempt.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` header value for the span in `cx`, if it has a valid one.
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
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
