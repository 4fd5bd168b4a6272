//! Server wait hints: `retry-after-ms`, `retry-after` (seconds or HTTP-date) and OpenAI's
//! `x-ratelimit-reset-requests` / `-tokens` (Go-style durations such as `1s`, `6m0s`, `20ms`).
//!
//! Header values come from the network, so every parser here takes any string and either yields a
//! duration or ignores the value. None of them may panic, overflow or loop; property tests feed them garbage.
//!
//! A leaf, as linkerd keeps its retry-after parsing: pure parsing, no classification. Which header wins is
//! decided by [`ResponseHead::hint`](crate::ResponseHead::hint).

use std::time::{Duration, SystemTime};

/// Longest wait a hint can express; anything longer is clamped here (and then stops retrying as too long).
pub const MAX_HINT: Duration = Duration::from_secs(1_000_000_000);

/// Where a retry's delay came from (`retrybudget.delay_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DelaySource {
    /// Computed equal-jitter exponential backoff.
    Backoff,
    /// The `retry-after` header.
    RetryAfter,
    /// The `retry-after-ms` header.
    RetryAfterMs,
    /// `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`.
    RatelimitReset,
}

impl DelaySource {
    /// Every source.
    pub const ALL: [DelaySource; 4] = [
        DelaySource::Backoff,
        DelaySource::RetryAfter,
        DelaySource::RetryAfterMs,
        DelaySource::RatelimitReset,
    ];

    /// Stable lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            DelaySource::Backoff => "backoff",
            DelaySource::RetryAfter => "retry_after",
            DelaySource::RetryAfterMs => "retry_after_ms",
            DelaySource::RatelimitReset => "ratelimit_reset",
        }
    }
}

/// A wait the server asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    /// How long the server asked us to wait. Zero means "retry with normal backoff".
    pub wait: Duration,
    /// Which header said so.
    pub source: DelaySource,
}

/// `retry-after-ms`: a non-negative number of milliseconds, fractions allowed.
pub fn parse_millis(value: &str) -> Option<Duration> {
    parse_number(value.trim()).map(|ms| from_secs_clamped(ms / 1000.0))
}

/// `retry-after`: non-negative delay-seconds, or an HTTP-date resolved against `wall_now` (a past date is zero).
pub fn parse_retry_after(value: &str, wall_now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(secs) = parse_number(value) {
        return Some(from_secs_clamped(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(wall_now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_HINT),
    )
}

/// A Go `time.Duration` string as OpenAI sends it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`, `300us`.
/// A bare number is taken as seconds, as some gateways send it.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let s = value.trim();
    if let Some(secs) = parse_number(s) {
        return Some(from_secs_clamped(secs));
    }
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let mut total = 0.0_f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number = parse_number(&rest[..num_len])?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(from_secs_clamped(total))
}

/// A plain non-negative decimal number (no sign, no exponent, no `inf`/`nan`).
fn parse_number(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().filter(|&b| b == b'.').count() <= 1;
    if !ok {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

fn from_secs_clamped(secs: f64) -> Duration {
    if !secs.is_finite() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs)
        .unwrap_or(MAX_HINT)
        .min(MAX_HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_780_000_000);

    fn wall() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    #[test]
    fn millis() {
        assert_eq!(parse_millis("150"), Some(Duration::from_millis(150)));
        assert_eq!(parse_millis(" 2.5 "), Some(Duration::from_micros(2500)));
        assert_eq!(parse_millis("0"), Some(Duration::ZERO));
        for bad in ["", "-5", "abc", "1e3", "inf", "NaN", "1.2.3", ".", "+5"] {
            assert_eq!(parse_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("1", wall()), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after("0.5", wall()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after("0", wall()), Some(Duration::ZERO));
        let future = httpdate::fmt_http_date(wall() + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&future, wall()),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(wall() - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, wall()), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", wall()),
            Some(Duration::ZERO)
        );
        for bad in ["", "soon", "-1", "Sun, 99 Nov 1994 08:49:37 GMT", "1 2"] {
            assert_eq!(parse_retry_after(bad, wall()), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after("99999999999999999999", wall()),
            Some(MAX_HINT)
        );
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("1s"), Some(ms(1000)));
        assert_eq!(parse_go_duration("6m0s"), Some(ms(360_000)));
        assert_eq!(parse_go_duration("20ms"), Some(ms(20)));
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(ms(3_723_500)));
        assert_eq!(parse_go_duration("300us"), Some(Duration::from_micros(300)));
        assert_eq!(parse_go_duration("0.5"), Some(ms(500)));
        for bad in ["", "s", "1x", "ms", "1..2s", "-1s", "1s2", "💥", "1 s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn length_limits_are_exact() {
        let n32 = "1".repeat(32);
        assert_eq!(parse_millis(&n32), Some(MAX_HINT), "32 characters are read");
        assert_eq!(parse_millis(&"1".repeat(33)), None, "33 are not");
        let go64 = "1s".repeat(32);
        assert_eq!(parse_go_duration(&go64), Some(Duration::from_secs(32)));
        let go65 = format!("{}10s", "1s".repeat(31));
        assert_eq!(parse_go_duration(&go65), None, "65 characters");
        // units of one duration add up
        assert_eq!(parse_go_duration("1m1s"), Some(Duration::from_secs(61)));
        assert_eq!(parse_go_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_go_duration("1500ns"),
            Some(Duration::from_nanos(1500))
        );
        assert_eq!(parse_go_duration("2µs"), Some(Duration::from_micros(2)));
    }
}
