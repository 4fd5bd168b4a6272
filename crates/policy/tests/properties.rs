//! Property tests for every invariant in retry-semantics.md §6, on simulated clocks.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;
use retrybudget_policy::budget::SLOTS;
use retrybudget_policy::{
    AttemptResult, Budget, BudgetConfig, Class, Decision, DecisionKind, FailureKind, Outcome,
    Policy, PolicyConfig, ResponseHead,
};

/// One scripted attempt result; strings are `'static` so results can be built from strategies.
#[derive(Debug, Clone)]
enum Step {
    /// status, retry-after, retry-after-ms, error code, (x-should-retry, x-ratelimit-reset-requests, -tokens)
    Status(
        u16,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        (
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
        ),
    ),
    Failure(FailureKind),
}

impl Step {
    fn result(&self) -> AttemptResult<'static> {
        match *self {
            Step::Status(
                s,
                retry_after,
                retry_after_ms,
                code,
                (should_retry, reset_requests, reset_tokens),
            ) => {
                let mut h = ResponseHead::status(s).with_error_code(code);
                h.retry_after = retry_after;
                h.retry_after_ms = retry_after_ms;
                h.should_retry = should_retry;
                h.ratelimit_reset_requests = reset_requests;
                h.ratelimit_reset_tokens = reset_tokens;
                AttemptResult::Response(h)
            }
            Step::Failure(k) => AttemptResult::Failure(k),
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    let status = prop::sample::select(vec![
        200u16, 400, 401, 404, 408, 409, 429, 500, 501, 502, 503, 504,
    ]);
    let retry_after = prop::option::of(prop::sample::select(vec![
        "0", "1", "2", "30", "120", "junk", "0.2",
    ]));
    let retry_after_ms = prop::option::of(prop::sample::select(vec![
        "0", "5", "150", "2500", "90000", "-1",
    ]));
    let code = prop::option::of(prop::sample::select(vec![
        "insufficient_quota",
        "rate_limit_exceeded",
    ]));
    let should_retry = prop::option::of(prop::sample::select(vec!["true", "false", "maybe"]));
    let reset = prop::option::of(prop::sample::select(vec![
        "20ms", "1s", "6m0s", "2h", "bogus",
    ]));
    let failure = prop::sample::select(vec![
        FailureKind::Connect,
        FailureKind::ConnectionReset,
        FailureKind::Timeout,
        FailureKind::Tls,
        FailureKind::InvalidResponse,
        FailureKind::Other,
    ]);
    prop_oneof![
        4 => (status, retry_after, retry_after_ms, code, (should_retry, reset.clone(), reset))
            .prop_map(|(s, a, b, c, d)| Step::Status(s, a, b, c, d)),
        1 => failure.prop_map(Step::Failure),
    ]
}

fn config() -> impl Strategy<Value = PolicyConfig> {
    (
        1u32..=6,
        10u64..=1000,
        1u64..=20,
        1u64..=120,
        1u64..=600,
        0.0f64..=1.0,
        0.0f64..=5.0,
    )
        .prop_map(
            |(max_attempts, base_ms, cap_mult, max_ra_s, deadline_s, ratio, min)| PolicyConfig {
                max_attempts,
                base: Duration::from_millis(base_ms),
                cap: Duration::from_millis(base_ms * cap_mult),
                max_retry_after: Duration::from_secs(max_ra_s),
                deadline: Duration::from_secs(deadline_s),
                per_attempt_timeout: None,
                budget: BudgetConfig {
                    ratio,
                    ttl: Duration::from_secs(10),
                    min_retries_per_sec: min,
                },
            },
        )
}

/// Drives one call through `steps` (each attempt taking `latency`), returning (attempt start times, decisions).
fn drive(
    policy: &Policy,
    steps: &[Step],
    latency: Duration,
    seed: u64,
) -> (Vec<Duration>, Vec<Decision>) {
    let start = Duration::from_secs(1000);
    let mut call = policy.start_call("scope", start, None, seed);
    let mut now = start;
    let mut starts = Vec::new();
    let mut decisions = Vec::new();
    for step in steps.iter().cycle().take(200) {
        starts.push(now);
        now += latency;
        let d = call.on_result(now, &step.result());
        decisions.push(d.clone());
        match d.delay {
            Some(delay) if d.kind == DecisionKind::Retry => now += delay,
            _ => break,
        }
    }
    (starts, decisions)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// No two consecutive attempts closer than base/2; no delay above cap unless a hint asked for it, and then
    /// never above max_retry_after.
    #[test]
    fn spacing_and_caps(cfg in config(), steps in prop::collection::vec(step(), 1..8), seed: u64, lat_ms in 0u64..200) {
        let policy = Policy::new(cfg.clone()).unwrap();
        let latency = Duration::from_millis(lat_ms);
        let (starts, decisions) = drive(&policy, &steps, latency, seed);
        for w in starts.windows(2) {
            prop_assert!(w[1] - w[0] >= latency + cfg.base / 2, "attempts too close: {:?}", w);
        }
        for d in &decisions {
            if let Some(delay) = d.delay {
                prop_assert!(delay >= cfg.base / 2);
                if d.hint.is_some_and(|h| h.wait > Duration::ZERO) {
                    prop_assert!(delay <= cfg.max_retry_after.max(cfg.base / 2), "{d:?}");
                } else {
                    prop_assert!(delay <= cfg.cap, "{d:?}");
                }
            }
        }
    }

    /// Attempts per call ≤ max_attempts; no sleep ever ends past the deadline; every call ends exactly once.
    #[test]
    fn allowance_and_deadline(cfg in config(), steps in prop::collection::vec(step(), 1..8), seed: u64, lat_ms in 0u64..5000) {
        let policy = Policy::new(cfg.clone()).unwrap();
        let latency = Duration::from_millis(lat_ms);
        let (starts, decisions) = drive(&policy, &steps, latency, seed);
        prop_assert!(starts.len() as u32 <= cfg.max_attempts);
        let deadline = starts[0] + cfg.deadline;
        for (i, s) in starts.iter().enumerate().skip(1) {
            prop_assert!(*s < deadline, "attempt {i} starts after the deadline");
        }
        let last = decisions.last().unwrap();
        prop_assert!(last.kind.is_terminal() && last.outcome.is_some());
        prop_assert!(decisions[..decisions.len() - 1].iter().all(|d| d.kind == DecisionKind::Retry));
        for (i, d) in decisions.iter().enumerate() {
            prop_assert_eq!(d.attempt as usize, i);
            prop_assert_eq!(d.allowance_remaining, cfg.max_attempts - 1 - d.attempt);
        }
    }

    /// Fatal classes are never retried; success never triggers another attempt; outcomes follow the decision.
    #[test]
    fn fatal_and_success_end_the_call(cfg in config(), steps in prop::collection::vec(step(), 1..8), seed: u64) {
        let policy = Policy::new(cfg).unwrap();
        let (_, decisions) = drive(&policy, &steps, Duration::from_millis(10), seed);
        for d in &decisions {
            match d.class {
                Class::Fatal => prop_assert_eq!(d.kind, DecisionKind::StopNonRetryable),
                Class::Success => prop_assert_eq!(d.kind, DecisionKind::Done),
                Class::Transient | Class::RateLimited => prop_assert!(d.kind != DecisionKind::Done && d.kind != DecisionKind::StopNonRetryable),
            }
            let retried = d.attempt > 0;
            let expected = match d.kind {
                DecisionKind::Retry => None,
                DecisionKind::Done => Some(if retried { Outcome::SuccessAfterRetry } else { Outcome::Success }),
                DecisionKind::StopNonRetryable | DecisionKind::StopAttemptsExhausted => {
                    Some(if retried { Outcome::FailedAfterRetry } else { Outcome::FailedWithoutRetry })
                }
                DecisionKind::StopBudgetExhausted => Some(Outcome::BudgetExhausted),
                DecisionKind::StopDeadline | DecisionKind::StopRetryAfterTooLong => Some(Outcome::DeadlineExceeded),
                DecisionKind::StopCommitted => Some(Outcome::StreamInterrupted),
                DecisionKind::StopCancelled => Some(Outcome::Cancelled),
            };
            prop_assert_eq!(d.outcome, expected);
        }
    }

    /// A committed stream is never retried, whatever the failure.
    #[test]
    fn committed_is_never_retried(cfg in config(), s in step(), seed: u64) {
        let policy = Policy::new(cfg).unwrap();
        let mut call = policy.start_call("scope", Duration::from_secs(5), None, seed);
        call.commit();
        let d = call.on_result(Duration::from_secs(6), &s.result());
        prop_assert!(d.kind == DecisionKind::Done || d.kind == DecisionKind::StopCommitted, "{d:?}");
    }

    /// The same inputs always give the same decisions.
    #[test]
    fn deterministic(cfg in config(), steps in prop::collection::vec(step(), 1..8), seed: u64) {
        let a = drive(&Policy::new(cfg.clone()).unwrap(), &steps, Duration::from_millis(30), seed);
        let b = drive(&Policy::new(cfg).unwrap(), &steps, Duration::from_millis(30), seed);
        prop_assert_eq!(a, b);
    }

    /// Over the budget's live window, retries ≤ ratio × first attempts + the floor's reserve; over a whole run,
    /// retries ≤ ratio × first attempts + min_retries_per_sec × run length + reserve (the start-up).
    #[test]
    fn budget_bounds_retries(
        ratio in 0.0f64..=1.0,
        min in 0.0f64..=3.0,
        ttl_s in 1u64..=20,
        events in prop::collection::vec((0u64..500, any::<bool>()), 1..600),
    ) {
        let cfg = BudgetConfig { ratio, ttl: Duration::from_secs(ttl_s), min_retries_per_sec: min };
        let budget = Budget::new("s", &cfg);
        let slot = cfg.ttl.as_nanos() / SLOTS as u128;
        let mut now = Duration::ZERO;
        let mut log: Vec<(u128, bool)> = Vec::new(); // (slot epoch, is_withdrawal) of successful operations
        let (mut deposits, mut withdrawals) = (0u64, 0u64);
        for (gap_ms, is_retry) in events {
            now += Duration::from_millis(gap_ms);
            let epoch = now.as_nanos() / slot;
            if is_retry {
                if budget.try_withdraw(now) {
                    withdrawals += 1;
                    log.push((epoch, true));
                }
            } else {
                budget.deposit(now);
                deposits += 1;
                log.push((epoch, false));
            }
            // Retries in the live window were paid by deposits at most one ttl older than the window's start
            // (that is the start-up term), plus the floor. Deposits are kept in milli-tokens: allow the rounding.
            let live = |e: &u128, slots: u128| *e + slots > epoch;
            let live_w = log.iter().filter(|(e, w)| *w && live(e, SLOTS as u128)).count() as f64;
            let paying_d = log.iter().filter(|(e, w)| !*w && live(e, 2 * SLOTS as u128)).count() as f64;
            let bound = (ratio + 0.0005) * paying_d + cfg.reserve() + 1e-6;
            prop_assert!(live_w <= bound, "window: {live_w} > {bound}");
            prop_assert!(budget.balance(now) >= 0.0);
        }
        let bound = (ratio + 0.0005) * deposits as f64 + min * now.as_secs_f64() + cfg.reserve() + 1e-6;
        prop_assert!(withdrawals as f64 <= bound, "run: {withdrawals} > {bound}");
    }

    /// Any header value parses or is ignored; classification never panics.
    #[test]
    fn any_header_value_is_safe(status: u16, a in ".{0,40}", b in ".{0,40}", c in ".{0,40}", d in ".{0,40}", e in ".{0,40}", code in ".{0,20}", seed: u64) {
        let head = ResponseHead {
            status,
            retry_after: Some(&a),
            retry_after_ms: Some(&b),
            ratelimit_reset_requests: Some(&c),
            ratelimit_reset_tokens: Some(&d),
            should_retry: Some(&e),
            error_code: Some(&code),
        };
        let policy = Policy::new(PolicyConfig::default()).unwrap();
        let mut call = policy.start_call("s", Duration::from_secs(1), None, seed);
        call.set_wall_clock(std::time::SystemTime::now());
        let _ = call.on_result(Duration::from_secs(2), &AttemptResult::Response(head));
        let _ = retrybudget_policy::hints::parse_go_duration(&a);
        let _ = retrybudget_policy::hints::parse_millis(&b);
        let _ = retrybudget_policy::peek_error_body(a.as_bytes());
    }
}
