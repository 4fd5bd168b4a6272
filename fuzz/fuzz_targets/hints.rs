//! Server wait hints (`retry-after`, `retry-after-ms`, `x-ratelimit-reset-*`) and the error-body peek: any
//! bytes parse or are ignored — never a panic, an overflow or a hint above `MAX_HINT` — and a whole response
//! head carrying them classifies and decides without panicking.

#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use retrybudget_policy::hints::{self, MAX_HINT};
use retrybudget_policy::{AttemptResult, Policy, PolicyConfig, ResponseHead, peek_error_body};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = peek_error_body(data);
        return;
    };
    // a fixed wall clock (the fuzzer must be deterministic); the first byte picks it so dates both sides count
    let wall = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::from(data.first().copied().unwrap_or(0)) << 24);
    for parsed in [
        hints::parse_millis(text),
        hints::parse_retry_after(text, wall),
        hints::parse_go_duration(text),
    ]
    .into_iter()
    .flatten()
    {
        assert!(parsed <= MAX_HINT, "{text:?} -> {parsed:?}");
    }
    let peek = peek_error_body(data);
    for v in [&peek.code, &peek.kind].into_iter().flatten() {
        assert!(
            v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        );
    }
    // The same text in every header of a 429 and a 503, through a real decision.
    let Ok(policy) = Policy::new(PolicyConfig::default()) else {
        return;
    };
    for status in [429, 503, 400] {
        let head = ResponseHead {
            status,
            retry_after: Some(text),
            retry_after_ms: Some(text),
            ratelimit_reset_requests: Some(text),
            ratelimit_reset_tokens: Some(text),
            should_retry: Some(text),
            error_code: peek.classify_code(),
        };
        let now = Duration::from_secs(10);
        let mut call = policy.start_call("fuzz", now, None, 7);
        call.set_wall_clock(wall);
        let d = call.on_result(now, &AttemptResult::Response(head));
        if let Some(delay) = d.delay {
            assert!(
                delay
                    <= PolicyConfig::default()
                        .max_retry_after
                        .max(PolicyConfig::default().cap)
            );
        }
    }
});
