//! Property tests for every invariant in retry-semantics.md §6, on simulated clocks.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;
use retrybudget_policy::backoff;
use retrybudget_policy::budget::SLOTS;
use retrybudget_policy::{
    AttemptResult, BudgetConfig, Budgets, Class, Decision, DecisionKind, ErrorType, FailureKind,
    Outcome, Policy, PolicyConfig, ResponseHead,
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

/// 512 cases per property, or `PROPTEST_CASES` when set (e.g. `PROPTEST_CASES=200000` for a long run).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// No two consecutive attempts closer than base/2. A computed delay for retry n is equal jitter of the
    /// nominal `min(cap, base·2^(n-1))`: within `[nominal/2, nominal]`. A server hint is honoured
    /// contract-exactly: `hint ≤ delay ≤ hint × 1.1`, never above `max_retry_after` (a longer hint stops), never
    /// below the base/2 floor, and the delay's source is the hint's header.
    #[test]
    fn spacing_and_caps(cfg in config(), steps in prop::collection::vec(step(), 1..8), seed: u64, lat_ms in 0u64..200) {
        let policy = Policy::new(cfg.clone()).unwrap();
        let latency = Duration::from_millis(lat_ms);
        let (starts, decisions) = drive(&policy, &steps, latency, seed);
        for w in starts.windows(2) {
            prop_assert!(w[1] - w[0] >= latency + cfg.base / 2, "attempts too close: {:?}", w);
        }
        let floor = cfg.base / 2;
        for d in &decisions {
            let Some(delay) = d.delay else { continue };
            prop_assert_eq!(d.kind, DecisionKind::Retry);
            prop_assert!(delay >= floor);
            match d.hint {
                Some(h) if h.wait > Duration::ZERO => {
                    prop_assert_eq!(d.delay_source, Some(h.source));
                    prop_assert!(h.wait <= cfg.max_retry_after, "a longer hint must stop: {d:?}");
                    prop_assert!(delay >= h.wait, "slept less than the hint: {d:?}");
                    // 1 ns of slack: `mul_f64` rounds to whole nanoseconds
                    let most = (h.wait.mul_f64(1.1) + Duration::from_nanos(1)).min(cfg.max_retry_after);
                    prop_assert!(delay <= most.max(floor), "overslept the hint: {d:?}");
                }
                _ => {
                    let nominal = backoff::nominal(cfg.base, cfg.cap, d.attempt + 1);
                    prop_assert_eq!(d.delay_source, Some(retrybudget_policy::DelaySource::Backoff));
                    prop_assert!(delay >= nominal / 2 && delay <= nominal, "{d:?} nominal {nominal:?}");
                    prop_assert!(delay <= cfg.cap);
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

    /// A committed stream is never retried, whatever the failure: a failure after the commit point (after any
    /// number of earlier retries) ends as `stop_committed` / `stream_interrupted` with `error.type`
    /// `stream_interrupted`; only a success ends as `done`.
    #[test]
    fn committed_is_never_retried(cfg in config(), before in prop::collection::vec(step(), 0..4), s in step(), seed: u64) {
        let policy = Policy::new(cfg).unwrap();
        let mut now = Duration::from_secs(5);
        let mut call = policy.start_call("scope", now, None, seed);
        for b in &before {
            let d = call.on_result(now, &b.result());
            match d.delay {
                Some(delay) if d.kind == DecisionKind::Retry => now += delay,
                _ => return Ok(()), // the call ended before it could commit
            }
        }
        call.commit();
        prop_assert!(call.is_committed());
        let retried = call.attempt() > 0;
        let d = call.on_result(now + Duration::from_secs(1), &s.result());
        prop_assert!(d.delay.is_none(), "{d:?}");
        if d.class == Class::Success {
            prop_assert_eq!(d.kind, DecisionKind::Done);
            let want = if retried { Outcome::SuccessAfterRetry } else { Outcome::Success };
            prop_assert_eq!(d.outcome, Some(want));
        } else {
            prop_assert_eq!(d.kind, DecisionKind::StopCommitted, "{:?}", d);
            prop_assert_eq!(d.outcome, Some(Outcome::StreamInterrupted));
            prop_assert_eq!(d.error_type, Some(ErrorType::StreamInterrupted));
        }
        prop_assert_eq!(call.outcome(), d.outcome);
    }

    /// `x-should-retry: true` never overrides a fatal class (issue 8): every 4xx but 408, 409 and a 429 that is
    /// not `insufficient_quota`, 501, 505 and any non-error status stop without a retry, whatever the header
    /// says; `x-should-retry: false` stops even a transient one.
    #[test]
    fn should_retry_never_overrides_fatal(cfg in config(), status in 100u16..700, verdict in prop::sample::select(vec!["true", "TRUE", " true", "false", "False", "maybe", ""]), quota: bool, seed: u64) {
        let policy = Policy::new(cfg).unwrap();
        let mut call = policy.start_call("scope", Duration::from_secs(5), None, seed);
        let mut head = ResponseHead::status(status);
        head.should_retry = Some(verdict);
        if quota {
            head.error_code = Some("insufficient_quota");
        }
        let d = call.on_result(Duration::from_secs(6), &AttemptResult::Response(head));
        let transient = matches!(status, 408 | 409 | 500 | 502 | 503 | 504) || (status == 429 && !quota);
        let unnamed_5xx = (500..600).contains(&status) && !transient && status != 501 && status != 505;
        let v = verdict.trim().to_ascii_lowercase();
        let want = if (200..300).contains(&status) {
            Class::Success
        } else if v == "false" {
            Class::Fatal
        } else if transient || (unnamed_5xx && v == "true") {
            Class::Transient
        } else {
            Class::Fatal
        };
        prop_assert_eq!(d.class, want, "status {} verdict {:?} quota {}", status, verdict, quota);
        if want == Class::Fatal {
            prop_assert_eq!(d.kind, DecisionKind::StopNonRetryable);
        }
    }

    /// The same inputs always give the same decisions.
    #[test]
    fn deterministic(cfg in config(), steps in prop::collection::vec(step(), 1..8), seed: u64) {
        let a = drive(&Policy::new(cfg.clone()).unwrap(), &steps, Duration::from_millis(30), seed);
        let b = drive(&Policy::new(cfg).unwrap(), &steps, Duration::from_millis(30), seed);
        prop_assert_eq!(a, b);
    }

    /// Over the budget's live window, retries (in every scope together) ≤ ratio × first attempts + the floor's
    /// reserve `min_retries_per_sec × ttl` — one floor for the process, however many scopes; over a whole run,
    /// retries ≤ ratio × first attempts + min_retries_per_sec × run length + reserve (the start-up). Exact: the
    /// budget rounds its settings down, so no rounding allowance (issue 8 item 10: ratio 0, 1.2499…/s, ttl 4 s
    /// once allowed 5 retries where the floor permits 4.9998).
    #[test]
    fn budget_bounds_retries(
        ratio in 0.0f64..=1.0,
        min in 0.0f64..=3.0,
        ttl_s in 1u64..=20,
        scopes in 1usize..=6,
        events in prop::collection::vec((0u64..500, any::<bool>(), 0usize..6), 1..600),
    ) {
        let cfg = BudgetConfig { ratio, ttl: Duration::from_secs(ttl_s), min_retries_per_sec: min };
        let budgets = Budgets::new(cfg);
        let slot = cfg.ttl.as_nanos() / SLOTS as u128;
        let mut now = Duration::ZERO;
        let mut log: Vec<(u128, bool)> = Vec::new(); // (slot epoch, is_withdrawal) of successful operations
        let (mut deposits, mut withdrawals) = (0u64, 0u64);
        let tolerance = |bound: f64| 1e-9 * (1.0 + bound);
        for (gap_ms, is_retry, scope) in events {
            now += Duration::from_millis(gap_ms);
            let budget = budgets.get(&format!("scope-{}", scope % scopes));
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
            // (that is the start-up term), plus the floor.
            let live = |e: &u128, slots: u128| *e + slots > epoch;
            let live_w = log.iter().filter(|(e, w)| *w && live(e, SLOTS as u128)).count() as f64;
            let paying_d = log.iter().filter(|(e, w)| !*w && live(e, 2 * SLOTS as u128)).count() as f64;
            let bound = ratio * paying_d + cfg.reserve();
            prop_assert!(live_w <= bound + tolerance(bound), "window: {live_w} > {bound}");
            let floor = budgets.floor().available(now);
            prop_assert!((0.0..=cfg.reserve() + 1e-9).contains(&floor), "floor {floor}");
        }
        let bound = ratio * deposits as f64 + min * now.as_secs_f64() + cfg.reserve();
        prop_assert!(withdrawals as f64 <= bound + tolerance(bound), "run: {withdrawals} > {bound}");
    }

    /// The budget's unclamped arithmetic against a reference model kept as plain lists: the model says which
    /// retries can be paid (scope deposits first, the shared floor the rest, both rounded down to micro-tokens)
    /// and what each scope's deposits and the floor hold — negative deposits included (retries whose deposits
    /// expired) — and the budget must agree on every operation. After every paid retry the floor is ≥ 0, and so
    /// are the scope's deposits if they paid a part; the floor never exceeds its reserve. `refill_time` is checked against the model
    /// too: the budget cannot pay before it, and can once it has passed.
    #[test]
    fn budget_arithmetic_matches_model(
        ratio in 0.0f64..=1.0,
        min in 0.0f64..=2.0,
        ttl_ms in 100u64..=20_000,
        scopes in 1usize..=3,
        events in prop::collection::vec((0u64..700, 0u8..3, 0usize..3), 1..300),
    ) {
        const UNIT: i64 = 1_000_000;
        let cfg = BudgetConfig { ratio, ttl: Duration::from_millis(ttl_ms), min_retries_per_sec: min };
        let budgets = Budgets::new(cfg);
        let slot = cfg.ttl.as_nanos() / SLOTS as u128;
        let deposit = (ratio * UNIT as f64).floor() as i64;
        let reserve = (cfg.reserve() * UNIT as f64).floor() as i64;
        // (slot epoch, micro-tokens) per scope, and for the floor
        let mut scope_log: Vec<Vec<(u128, i64)>> = vec![Vec::new(); scopes];
        let mut floor_log: Vec<(u128, i64)> = Vec::new();
        let live_sum = |log: &[(u128, i64)], epoch: u128| -> i64 {
            log.iter().filter(|(e, _)| e + SLOTS as u128 > epoch).map(|(_, m)| m).sum()
        };
        let mut now = Duration::from_millis(1);
        for (gap, op, scope) in events {
            now += Duration::from_millis(gap);
            let scope = scope % scopes;
            let budget = budgets.get(&format!("s{scope}"));
            let epoch = now.as_nanos() / slot;
            match op {
                0 => {
                    budget.deposit(now);
                    scope_log[scope].push((epoch, deposit));
                }
                1 => {
                    let own = live_sum(&scope_log[scope], epoch).clamp(0, UNIT);
                    let can = reserve + live_sum(&floor_log, epoch) >= UNIT - own;
                    prop_assert_eq!(budget.try_withdraw(now), can, "withdrawal at {:?}", now);
                    if can {
                        scope_log[scope].push((epoch, -own));
                        floor_log.push((epoch, own - UNIT));
                        let after = budget.balance_detail(now);
                        // the floor pays no debt: deposits only have to be ≥ 0 if they paid a part
                        prop_assert!(after.floor >= 0.0 && (own == 0 || after.deposits >= 0.0), "{after:?}");
                    }
                }
                _ => {
                    // refill_time: not payable just before it, payable at it (if nothing else happens)
                    if let Some(wait) = budget.refill_time(now) {
                        let at = now + wait;
                        let e = at.as_nanos() / slot;
                        let own = live_sum(&scope_log[scope], e).clamp(0, UNIT);
                        prop_assert!(reserve + live_sum(&floor_log, e) >= UNIT - own, "not payable at the refill time");
                        if wait > Duration::ZERO {
                            let e = (at - Duration::from_nanos(1)).as_nanos() / slot;
                            let own = live_sum(&scope_log[scope], e).clamp(0, UNIT);
                            prop_assert!(reserve + live_sum(&floor_log, e) < UNIT - own, "payable before the refill time");
                        }
                    } else {
                        let far = epoch + 2 * SLOTS as u128;
                        prop_assert!(reserve < UNIT && live_sum(&scope_log[scope], far) == 0);
                    }
                }
            }
            for (i, log) in scope_log.iter().enumerate() {
                let got = budgets.get(&format!("s{i}")).balance_detail(now);
                let want_deposits = live_sum(log, epoch) as f64 / UNIT as f64;
                let want_floor = (reserve + live_sum(&floor_log, epoch)) as f64 / UNIT as f64;
                prop_assert!((got.deposits - want_deposits).abs() < 1e-9, "scope {i}: {got:?} vs {want_deposits}");
                prop_assert!((got.floor - want_floor).abs() < 1e-9, "floor: {got:?} vs {want_floor}");
                prop_assert!(got.floor >= 0.0 && got.floor <= cfg.reserve() + 1e-9, "{got:?}");
            }
        }
    }

    /// A caller's re-send (issue 11) pays like a retry: over the budget's live window, our retries plus the
    /// first attempts of re-sends ≤ ratio × *new* first attempts (this window and the one before) + the floor's
    /// reserve — re-sends deposit nothing. A re-send makes at most `max(1, max_attempts − prior_attempts)`
    /// attempts; a refused one changes no balance, ends as `stop_budget_exhausted` / `budget_exhausted`, and was
    /// refused only when the budget could not pay.
    #[test]
    fn caller_retries_pay_like_retries(
        cfg in config(),
        ttl_s in 1u64..=20,
        calls in prop::collection::vec((0u64..3000, prop::option::of(0u32..6), prop::sample::select(vec![200u16, 503, 503, 400])), 1..120),
        seed: u64,
    ) {
        let mut cfg = cfg;
        cfg.budget.ttl = Duration::from_secs(ttl_s);
        let policy = Policy::new(cfg.clone()).unwrap();
        let slot = cfg.budget.ttl.as_nanos() / SLOTS as u128;
        let mut now = Duration::from_secs(1);
        // (slot epoch, paid): paid = a retry or a re-send's first attempt; else a new first attempt
        let mut log: Vec<(u128, bool)> = Vec::new();
        let latency = Duration::from_millis(20);
        for (i, (gap, resend, status)) in calls.into_iter().enumerate() {
            now += Duration::from_millis(gap);
            let seed = seed ^ i as u64;
            let mut call = match resend {
                None => {
                    log.push((now.as_nanos() / slot, false));
                    policy.start_call("scope", now, None, seed)
                }
                Some(prior) => {
                    let budget = policy.budgets().get("scope");
                    let before = budget.balance_detail(now);
                    match policy.start_caller_retry("scope", now, None, seed, prior) {
                        Ok(call) => {
                            prop_assert_eq!(call.prior_attempts(), prior);
                            log.push((now.as_nanos() / slot, true));
                            call
                        }
                        Err(denied) => {
                            prop_assert!(before.spendable() < 1.0, "refused with {before:?}");
                            prop_assert_eq!(budget.balance_detail(now), before);
                            prop_assert_eq!(denied.decision.kind, DecisionKind::StopBudgetExhausted);
                            prop_assert_eq!(denied.decision.outcome, Some(Outcome::BudgetExhausted));
                            prop_assert!(denied.retry_after_secs() >= 1);
                            prop_assert!(denied.refill.is_none_or(|r| r <= cfg.budget.ttl));
                            continue;
                        }
                    }
                }
            };
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                now += latency;
                let d = call.on_result(now, &AttemptResult::Response(ResponseHead::status(status)));
                match (d.kind, d.delay) {
                    (DecisionKind::Retry, Some(delay)) => {
                        log.push((now.as_nanos() / slot, true));
                        now += delay;
                    }
                    _ => break,
                }
            }
            let allowed = cfg.max_attempts.saturating_sub(resend.unwrap_or(0)).max(1);
            prop_assert!(attempts <= allowed, "{attempts} attempts, {allowed} allowed");
            let epoch = now.as_nanos() / slot;
            let live = |e: &u128, slots: u128| *e + slots > epoch;
            let paid = log.iter().filter(|(e, p)| *p && live(e, SLOTS as u128)).count() as f64;
            let new = log.iter().filter(|(e, p)| !*p && live(e, 2 * SLOTS as u128)).count() as f64;
            let bound = cfg.budget.ratio * new + cfg.budget.reserve();
            prop_assert!(paid <= bound + 1e-9 * (1.0 + bound), "window: {paid} > {bound}");
        }
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
