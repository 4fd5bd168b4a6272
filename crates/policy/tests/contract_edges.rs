//! Contract details the other suites left unchecked, found by mutation testing (issue 13, `scripts/mutants.sh`):
//! the recorded names, the `error.type` of a failed attempt, the hint boundaries of retry-semantics.md §2, what a
//! [`Call`] reports while it runs, the seed → jitter mapping and the error-body peek on realistic bodies.
//!
//! Each test states the contract sentence it checks; none of them looks at how the code is written.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use retrybudget_policy::{
    AttemptResult, BudgetConfig, Call, Class, DecisionKind, DelaySource, ErrorType, FailureKind,
    Outcome, Policy, PolicyConfig, Random, ResponseHead, SplitMix64, peek_error_body,
};

const T0: Duration = Duration::from_secs(100);

fn status(s: u16) -> AttemptResult<'static> {
    AttemptResult::Response(ResponseHead::status(s))
}

fn retry_after(s: u16, value: &'static str) -> AttemptResult<'static> {
    let mut head = ResponseHead::status(s);
    head.retry_after = Some(value);
    AttemptResult::Response(head)
}

fn call(config: PolicyConfig, deadline: Option<Duration>) -> Call {
    Policy::new(config)
        .unwrap()
        .start_call("api|m", T0, deadline, 7)
}

/// The generator is the published SplitMix64 (Steele, Lea & Flood; Vigna's `splitmix64.c`): a seed recorded with
/// a decision replays to the same jitter in every build, and in any other SplitMix64 implementation. The expected
/// values are the reference implementation's outputs for seeds 1234567 and 0.
#[test]
fn the_jitter_generator_is_splitmix64() {
    let mut g = SplitMix64::new(1_234_567);
    let got: Vec<u64> = (0..5).map(|_| g.next_u64()).collect();
    assert_eq!(
        got,
        [
            6_457_827_717_110_365_317,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423,
            4_593_380_528_125_082_431,
            16_408_922_859_458_223_821,
        ]
    );
    let mut g = SplitMix64::new(0);
    assert_eq!(
        [g.next_u64(), g.next_u64()],
        [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4]
    );
}

/// §1 and §2: the class and delay-source names are recorded verbatim (`retrybudget.class`,
/// `retrybudget.delay_source`); the `Display` of every recorded enum is its stable name (telemetry formats
/// `error.type` with it).
#[test]
fn recorded_names_are_the_contracts() {
    let classes: Vec<_> = [
        Class::Success,
        Class::Transient,
        Class::RateLimited,
        Class::Fatal,
    ]
    .iter()
    .map(|c| c.as_str())
    .collect();
    assert_eq!(classes, ["success", "transient", "rate_limited", "fatal"]);
    let sources: Vec<_> = DelaySource::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        sources,
        [
            "backoff",
            "retry_after",
            "retry_after_ms",
            "ratelimit_reset"
        ]
    );
    for d in DecisionKind::ALL {
        assert_eq!(d.to_string(), d.as_str());
    }
    for o in Outcome::ALL {
        assert_eq!(o.to_string(), o.as_str());
    }
    assert_eq!(ErrorType::Status(503).to_string(), "503");
    assert_eq!(ErrorType::ConnectError.to_string(), "connect_error");
    assert_eq!(ErrorType::Other.to_string(), "_OTHER");
}

/// §1: only `transient` and `rate_limited` are retried.
#[test]
fn only_transient_classes_are_retryable() {
    assert!(Class::Transient.is_retryable());
    assert!(Class::RateLimited.is_retryable());
    assert!(!Class::Success.is_retryable());
    assert!(!Class::Fatal.is_retryable());
}

/// §4: `client_result` is `success` or `failure`, cancelled is neither; an operator counts as failures exactly
/// the outcomes that are neither a success nor a cancel.
#[test]
fn client_result_and_failure_follow_the_outcome_table() {
    for o in Outcome::ALL {
        let (result, failure) = match o {
            Outcome::Success | Outcome::SuccessAfterRetry => ("success", false),
            Outcome::Cancelled => ("cancelled", false),
            _ => ("failure", true),
        };
        assert_eq!(o.client_result(), result, "{o}");
        assert_eq!(o.is_failure(), failure, "{o}");
    }
}

/// §4: each attempt ends with one decision, and every decision but `retry` ends the call.
#[test]
fn every_decision_but_retry_ends_the_call() {
    for d in DecisionKind::ALL {
        assert_eq!(d.is_terminal(), d != DecisionKind::Retry, "{d}");
    }
    let mut c = call(PolicyConfig::default(), None);
    let first = c.on_result(T0, &status(503));
    assert_eq!(first.kind, DecisionKind::Retry);
    assert!(!first.is_terminal());
    let last = c.on_result(T0 + first.delay.unwrap(), &status(400));
    assert_eq!(last.kind, DecisionKind::StopNonRetryable);
    assert!(last.is_terminal());
}

/// §1: a failed attempt's `error.type` is its status code when a response arrived, else its failure kind;
/// `stream_interrupted` only once the call is committed (§3.4).
#[test]
fn a_failed_attempts_error_type_is_its_status_or_kind() {
    let mut c = call(PolicyConfig::default(), None);
    let d = c.on_result(T0, &status(503));
    assert_eq!(d.error_type, Some(ErrorType::Status(503)));
    assert_eq!(d.status, Some(503));
    let d = c.on_failure(T0 + d.delay.unwrap(), FailureKind::Connect);
    assert_eq!(d.error_type, Some(ErrorType::ConnectError));
    assert_eq!(d.status, None);

    let mut c = call(PolicyConfig::default(), None);
    let d = c.on_result(T0, &status(401));
    assert_eq!(
        (d.kind, d.error_type),
        (DecisionKind::StopNonRetryable, Some(ErrorType::Status(401)))
    );

    let mut c = call(PolicyConfig::default(), None);
    let d = c.on_failure(T0, FailureKind::Timeout);
    assert_eq!(
        (d.kind, d.error_type),
        (DecisionKind::Retry, Some(ErrorType::Timeout))
    );
}

/// §2: only a hint *longer* than `max_retry_after` stops retrying; one exactly that long is honoured (the delay
/// then stays at the cap: its upward jitter never passes `max_retry_after`).
#[test]
fn a_hint_exactly_max_retry_after_is_honoured() {
    let config = PolicyConfig {
        max_retry_after: Duration::from_secs(20),
        ..PolicyConfig::default()
    };
    let mut c = call(config.clone(), None);
    let d = c.on_result(T0, &retry_after(429, "20"));
    assert_eq!(d.kind, DecisionKind::Retry, "{d:?}");
    assert_eq!(d.delay, Some(Duration::from_secs(20)));
    assert_eq!(d.delay_source, Some(DelaySource::RetryAfter));

    let mut c = call(config, None);
    let d = c.on_result(T0, &retry_after(429, "20.001"));
    assert_eq!(
        (d.kind, d.outcome),
        (
            DecisionKind::StopRetryAfterTooLong,
            Some(Outcome::DeadlineExceeded)
        )
    );
}

/// §2 and §3.2: a hint exactly as long as the time left is not "too long" — but the retry would end at the
/// deadline, so it is not taken: `stop_deadline`. Only a longer hint is `stop_retry_after_too_long`.
#[test]
fn a_hint_exactly_the_time_left_stops_at_the_deadline() {
    let left = Some(Duration::from_secs(5));
    let mut c = call(PolicyConfig::default(), left);
    let d = c.on_result(T0, &retry_after(503, "5"));
    assert_eq!(
        (d.kind, d.outcome),
        (DecisionKind::StopDeadline, Some(Outcome::DeadlineExceeded))
    );
    let mut c = call(PolicyConfig::default(), left);
    let d = c.on_result(T0, &retry_after(503, "5.001"));
    assert_eq!(d.kind, DecisionKind::StopRetryAfterTooLong);
    let mut c = call(PolicyConfig::default(), left);
    let d = c.on_result(T0, &retry_after(503, "4"));
    assert_eq!(d.kind, DecisionKind::Retry);
    assert!(
        d.delay.unwrap() >= Duration::from_secs(4) && d.delay.unwrap() < Duration::from_secs(5)
    );
}

/// What a running call reports (its public accessors): the index of the next attempt, the delays slept, whether
/// it is committed, and its outcome only once it ended.
#[test]
fn a_call_reports_its_progress() {
    let mut c = call(PolicyConfig::default(), None);
    assert_eq!(c.attempt(), 0);
    assert!(!c.is_committed());
    assert_eq!(c.outcome(), None);
    let d0 = c.on_result(T0, &status(503));
    let delay0 = d0.delay.unwrap();
    assert_eq!(c.attempt(), 1);
    assert_eq!(c.backoff(), (delay0, delay0));
    assert_eq!(c.outcome(), None, "a retry does not end the call");
    let t1 = T0 + delay0;
    let d1 = c.on_result(t1, &status(502));
    let delay1 = d1.delay.unwrap();
    assert_eq!(c.attempt(), 2);
    assert_eq!(c.backoff(), (delay1, delay0 + delay1));
    c.commit();
    assert!(c.is_committed());
    let d2 = c.on_result(t1 + delay1, &status(200));
    assert_eq!(d2.attempt, 2);
    assert_eq!(c.outcome(), Some(Outcome::SuccessAfterRetry));
}

/// §1: a 429 `insufficient_quota` is fatal — retrying it is a bill. The code is read from realistic error bodies,
/// whose message can run to a few kilobytes (a long explanation, a URL, an echoed parameter), not only from tiny ones.
#[test]
fn insufficient_quota_is_read_from_a_long_error_body() {
    let message =
        "You exceeded your current quota, please check your plan and billing details. ".repeat(60);
    let body = format!(
        r#"{{"error":{{"message":"{message}","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}}}"#
    );
    assert!(body.len() > 4096, "{}", body.len());
    let peek = peek_error_body(body.as_bytes());
    assert_eq!(peek.classify_code(), Some("insufficient_quota"));
    let head = ResponseHead::status(429).with_error_code(peek.classify_code());
    let mut c = call(PolicyConfig::default(), None);
    let d = c.on_result(T0, &AttemptResult::Response(head));
    assert_eq!(
        (d.class, d.kind, d.outcome),
        (
            Class::Fatal,
            DecisionKind::StopNonRetryable,
            Some(Outcome::FailedWithoutRetry)
        )
    );
}

/// §5 (refined): a caller's re-send the budget cannot pay is answered with `retry-after` = the budget's `ttl`
/// rounded up when only new traffic can refill it (no floor, no live deposits) — the configured `ttl`, not the
/// default one.
#[test]
fn a_refused_resend_without_floor_waits_the_configured_ttl() {
    let config = PolicyConfig {
        budget: BudgetConfig {
            ttl: Duration::from_millis(3500),
            min_retries_per_sec: 0.0,
            ..BudgetConfig::default()
        },
        ..PolicyConfig::default()
    };
    let policy = Policy::new(config.clone()).unwrap();
    assert_eq!(policy.config(), &config);
    let denied = policy
        .start_caller_retry("api|m", T0, None, 1, 1)
        .unwrap_err();
    assert_eq!(denied.refill, None);
    assert_eq!(denied.ttl, Duration::from_millis(3500));
    assert_eq!(denied.retry_after_secs(), 4);
}

/// §2 (equal jitter spreads clients out): seeds drawn for different calls give delays spread over the whole
/// `[d/2, d]` range, not clumped — each tenth of the range gets a fair share of 10 000 first retries.
#[test]
fn equal_jitter_is_spread_over_the_range() {
    // every call's deposit pays its own retry, so the budget never refuses one
    let policy = Policy::new(PolicyConfig {
        budget: BudgetConfig {
            ratio: 1.0,
            ..BudgetConfig::default()
        },
        ..PolicyConfig::default()
    })
    .unwrap();
    let mut buckets = [0u32; 10];
    for seed in 0..10_000u64 {
        let mut c = policy.start_call("api|m", T0, None, seed);
        let d = c.on_result(T0, &status(503));
        let ms = d.delay.unwrap().as_secs_f64() * 1000.0;
        assert!((250.0..=500.0).contains(&ms), "{ms}");
        buckets[(((ms - 250.0) / 25.0) as usize).min(9)] += 1;
    }
    for (i, n) in buckets.iter().enumerate() {
        assert!(
            (800..=1200).contains(n),
            "tenth {i}: {n} of 10000 ({buckets:?})"
        );
    }
}

/// The simulation's report (`sim::SimReport`): every attempt is counted under exactly one decision, in
/// `DecisionKind::ALL` order, and the terminal decisions agree with the outcomes and the budget's refusals.
#[test]
fn the_simulation_counts_every_decision_under_its_name() {
    use retrybudget_policy::sim::{self, SimConfig};
    let config = SimConfig {
        duration: Duration::from_secs(20),
        ..SimConfig::default()
    };
    let r = sim::run(&config).unwrap();
    let by = |k: DecisionKind| r.decisions[DecisionKind::ALL.iter().position(|x| *x == k).unwrap()];
    assert_eq!(r.decisions.iter().sum::<u64>(), r.attempts, "{r:?}");
    assert_eq!(by(DecisionKind::Retry), r.attempts - r.calls, "{r:?}");
    assert_eq!(by(DecisionKind::Done), 0, "a full outage: {r:?}");
    let denied = by(DecisionKind::StopBudgetExhausted);
    assert!(denied > 0 && by(DecisionKind::Retry) > 0, "{r:?}");
    assert_eq!(denied, r.budget_denied);
    assert_eq!(denied, r.outcome(Outcome::BudgetExhausted));
    assert_eq!(
        by(DecisionKind::StopAttemptsExhausted),
        r.outcome(Outcome::FailedAfterRetry)
    );
    assert_eq!(r.outcomes.iter().sum::<u64>(), r.calls);
}
