//! Driving one logical call: start it, report each attempt's result, act on the [`Decision`].
//!
//! The checks after a retryable failure run in the contract's order and the first "no" ends the call:
//! attempt allowance, then the server hint's length, then the deadline, then the shared budget — the budget
//! last, so tokens are only spent on retries that will really be made.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backoff::{self, Random, SplitMix64};
use crate::budget::{Budget, Budgets};
use crate::classify::{self, AttemptResult, Class, ErrorType, FailureKind};
use crate::config::{ConfigError, PolicyConfig};
use crate::hints::{DelaySource, Hint};
use crate::names::{DecisionKind, Outcome};

/// A validated policy plus the process-wide budgets. Cheap to clone; clones share the budgets.
#[derive(Debug, Clone)]
pub struct Policy {
    config: Arc<PolicyConfig>,
    budgets: Arc<Budgets>,
}

impl Policy {
    /// Validates `config` and creates an empty set of budgets.
    pub fn new(config: PolicyConfig) -> Result<Policy, ConfigError> {
        config.validate()?;
        let budgets = Arc::new(Budgets::new(config.budget));
        Ok(Policy {
            config: Arc::new(config),
            budgets,
        })
    }

    /// The settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The budgets, one per scope.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Starts a call that will never reach the upstream (a request refused by local validation), so that its
    /// evidence is recorded like any other: it neither deposits into nor draws on a shared budget, and claims no
    /// scope. Its only attempt ends with [`FailureKind::Validation`].
    pub fn start_local_call(&self, now: Duration, seed: u64) -> Call {
        let budget = Arc::new(Budget::new("_local", &self.config.budget));
        self.call_with(budget, now, None, seed, 0)
    }

    /// Starts a logical call in `scope` at `now` (monotonic time since the caller's origin). The first attempt
    /// deposits into the scope's budget. `caller_deadline` (relative to `now`) wins if shorter than the
    /// configured one. `seed` determines every jitter draw of this call.
    pub fn start_call(
        &self,
        scope: &str,
        now: Duration,
        caller_deadline: Option<Duration>,
        seed: u64,
    ) -> Call {
        let budget = self.budgets.get(scope);
        budget.deposit(now);
        self.call_with(budget, now, caller_deadline, seed, 0)
    }

    /// A call whose allowance starts after `prior_attempts` (0 for a new request; see [`crate::resend`]).
    pub(crate) fn call_with(
        &self,
        budget: Arc<Budget>,
        now: Duration,
        caller_deadline: Option<Duration>,
        seed: u64,
        prior_attempts: u32,
    ) -> Call {
        let limit = caller_deadline.map_or(self.config.deadline, |d| d.min(self.config.deadline));
        Call {
            config: Arc::clone(&self.config),
            budget,
            started: now,
            deadline: now.saturating_add(limit),
            attempt: 0,
            prior_attempts,
            max_attempts: self.config.max_attempts,
            committed: false,
            backoff_total: Duration::ZERO,
            last_delay: Duration::ZERO,
            rng: SplitMix64::new(seed),
            wall_clock: None,
            end: None,
        }
    }
}

/// One logical call in progress.
#[derive(Debug)]
pub struct Call {
    config: Arc<PolicyConfig>,
    budget: Arc<Budget>,
    started: Duration,
    deadline: Duration,
    /// Index of the attempt whose result is expected next.
    attempt: u32,
    /// Attempts made for this request before this call (a caller's re-send), counted against the allowance.
    prior_attempts: u32,
    /// This call's attempt allowance: the policy's, or 1 for a request that must not be repeated.
    max_attempts: u32,
    committed: bool,
    backoff_total: Duration,
    last_delay: Duration,
    rng: SplitMix64,
    wall_clock: Option<SystemTime>,
    end: Option<(DecisionKind, Outcome)>,
}

/// What to do after one attempt, with every input that produced it (for evidence and replay).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// 0-based index of the attempt this decision is about.
    pub attempt: u32,
    /// The decision.
    pub kind: DecisionKind,
    /// The attempt's class.
    pub class: Class,
    /// `error.type` of the attempt (`None` on success).
    pub error_type: Option<ErrorType>,
    /// HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// The server's hint, if it gave one.
    pub hint: Option<Hint>,
    /// For `retry`: how long to wait before the next attempt.
    pub delay: Option<Duration>,
    /// For `retry`: where the delay came from.
    pub delay_source: Option<DelaySource>,
    /// For `retry`: the uniform draw in `[0, 1)` used for jitter.
    pub jitter: Option<f64>,
    /// The delay slept before *this* attempt.
    pub backoff_before: Duration,
    /// Retries this call may still make under its allowance: `max_attempts − 1 − prior_attempts − attempt`
    /// (never below 0; `prior_attempts` is 0 except for a caller's re-send).
    pub allowance_remaining: u32,
    /// The scope's shared budget balance after this decision.
    pub budget_balance: f64,
    /// Time since the call started, at the decision.
    pub elapsed: Duration,
    /// The terminal outcome, when this decision ends the call.
    pub outcome: Option<Outcome>,
}

impl Decision {
    /// Whether the call is over.
    pub fn is_terminal(&self) -> bool {
        self.kind.is_terminal()
    }
}

impl Call {
    /// Index of the next attempt to make (0 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts made for this request before this call started (0 unless it is a caller's re-send, see
    /// [`Policy::start_caller_retry`]).
    pub fn prior_attempts(&self) -> u32 {
        self.prior_attempts
    }

    /// Allows this call one attempt, whatever the policy allows: for a request that must not be repeated
    /// (`crate::repeatable`). It still deposits into and reports on its scope's shared budget like any call.
    #[must_use]
    pub fn single_attempt(mut self) -> Call {
        self.max_attempts = 1;
        self
    }

    /// Attempts this call may make, the first included (see [`Call::single_attempt`]).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The absolute deadline (same clock as `now`).
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The delay slept before the next attempt, and in total so far.
    pub fn backoff(&self) -> (Duration, Duration) {
        (self.last_delay, self.backoff_total)
    }

    /// The scope's budget.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The terminal outcome, once the call has ended.
    pub fn outcome(&self) -> Option<Outcome> {
        self.end.map(|(_, o)| o)
    }

    /// How long the next attempt may take: the per-attempt timeout, bounded by the time left.
    pub fn attempt_timeout(&self, now: Duration) -> Duration {
        let left = self.deadline.saturating_sub(now);
        self.config
            .per_attempt_timeout
            .map_or(left, |t| t.min(left))
    }

    /// Sets the wall clock used to resolve `retry-after` HTTP-dates (default: the UNIX epoch, so dates count as
    /// past and mean "normal backoff"). Pass `SystemTime::now()` in production; a fixed time in tests.
    pub fn set_wall_clock(&mut self, wall_now: SystemTime) {
        self.wall_clock = Some(wall_now);
    }

    /// Marks a streaming call as committed: its first byte reached the caller, so it is never retried again.
    pub fn commit(&mut self) {
        self.committed = true;
    }

    /// Whether the call is committed.
    pub fn is_committed(&self) -> bool {
        self.committed
    }

    /// The caller went away during the current attempt or backoff.
    pub fn cancel(&mut self, now: Duration) -> Decision {
        let mut d = self.base_decision(now, Class::Fatal, None, None, None);
        self.finish(&mut d, DecisionKind::StopCancelled);
        d
    }

    /// Reports the result of the current attempt at `now` and returns the decision. Calling it again after a
    /// terminal decision changes nothing and repeats the terminal decision for the extra attempt.
    pub fn on_result(&mut self, now: Duration, result: &AttemptResult<'_>) -> Decision {
        let wall = self.wall_clock.unwrap_or(SystemTime::UNIX_EPOCH);
        let c = classify::classify(result, wall);
        let error_type = if self.committed && c.class != Class::Success {
            Some(ErrorType::StreamInterrupted)
        } else {
            c.error_type
        };
        let mut d = self.base_decision(now, c.class, error_type, c.status, c.hint);
        if let Some((kind, outcome)) = self.end {
            d.kind = kind;
            d.outcome = Some(outcome);
            return d;
        }
        let kind = match c.class {
            Class::Success => DecisionKind::Done,
            _ if self.committed => DecisionKind::StopCommitted,
            Class::Fatal => DecisionKind::StopNonRetryable,
            Class::Transient | Class::RateLimited => self.plan_retry(now, c.hint, &mut d),
        };
        if kind == DecisionKind::Retry {
            self.attempt += 1;
            self.last_delay = d.delay.unwrap_or_default();
            self.backoff_total = self.backoff_total.saturating_add(self.last_delay);
        } else {
            self.finish(&mut d, kind);
        }
        d.budget_balance = self.budget.balance(now);
        d
    }

    /// Ends the call before its first attempt was made (a caller's re-send the budget refused).
    pub(crate) fn end_before_attempt(
        &mut self,
        now: Duration,
        class: Class,
        kind: DecisionKind,
    ) -> Decision {
        let mut d = self.base_decision(now, class, None, None, None);
        self.finish(&mut d, kind);
        d.budget_balance = self.budget.balance(now);
        d
    }

    /// Convenience for the common transport failures.
    pub fn on_failure(&mut self, now: Duration, kind: FailureKind) -> Decision {
        self.on_result(now, &AttemptResult::Failure(kind))
    }

    fn plan_retry(&mut self, now: Duration, hint: Option<Hint>, d: &mut Decision) -> DecisionKind {
        let cfg = &*self.config;
        if self.prior_attempts.saturating_add(self.attempt + 1) >= self.max_attempts {
            return DecisionKind::StopAttemptsExhausted;
        }
        let left = self.deadline.saturating_sub(now);
        let floor = cfg.base / 2;
        let u = self.rng.unit();
        let (delay, source) = match hint {
            Some(h) if h.wait > Duration::ZERO => {
                if h.wait > cfg.max_retry_after || h.wait > left {
                    return DecisionKind::StopRetryAfterTooLong;
                }
                // Honour the hint, never below the backoff floor, never past the hint cap or the deadline.
                let jittered = backoff::hint_jitter(h.wait, u)
                    .min(cfg.max_retry_after)
                    .min(left);
                (jittered.max(floor), h.source)
            }
            _ => {
                let nominal = backoff::nominal(cfg.base, cfg.cap, self.attempt + 1);
                (backoff::equal_jitter(nominal, u), DelaySource::Backoff)
            }
        };
        d.delay = Some(delay);
        d.delay_source = Some(source);
        d.jitter = Some(u);
        if now.saturating_add(delay) >= self.deadline {
            return DecisionKind::StopDeadline;
        }
        if !self.budget.try_withdraw(now) {
            return DecisionKind::StopBudgetExhausted;
        }
        DecisionKind::Retry
    }

    fn base_decision(
        &self,
        now: Duration,
        class: Class,
        error_type: Option<ErrorType>,
        status: Option<u16>,
        hint: Option<Hint>,
    ) -> Decision {
        Decision {
            attempt: self.attempt,
            kind: DecisionKind::Retry,
            class,
            error_type,
            status,
            hint,
            delay: None,
            delay_source: None,
            jitter: None,
            backoff_before: self.last_delay,
            allowance_remaining: self
                .max_attempts
                .saturating_sub(1)
                .saturating_sub(self.prior_attempts)
                .saturating_sub(self.attempt),
            budget_balance: 0.0,
            elapsed: now.saturating_sub(self.started),
            outcome: None,
        }
    }

    fn finish(&mut self, d: &mut Decision, kind: DecisionKind) {
        let retried = self.attempt > 0;
        let outcome = match kind {
            DecisionKind::Done if retried => Outcome::SuccessAfterRetry,
            DecisionKind::Done => Outcome::Success,
            DecisionKind::StopNonRetryable | DecisionKind::StopAttemptsExhausted if retried => {
                Outcome::FailedAfterRetry
            }
            DecisionKind::StopNonRetryable | DecisionKind::StopAttemptsExhausted => {
                Outcome::FailedWithoutRetry
            }
            DecisionKind::StopBudgetExhausted => Outcome::BudgetExhausted,
            DecisionKind::StopDeadline | DecisionKind::StopRetryAfterTooLong => {
                Outcome::DeadlineExceeded
            }
            DecisionKind::StopCommitted => Outcome::StreamInterrupted,
            DecisionKind::StopCancelled | DecisionKind::Retry => Outcome::Cancelled,
        };
        // A stop keeps no planned delay: nothing will be slept.
        if kind != DecisionKind::Retry {
            d.delay = None;
            d.delay_source = None;
        }
        d.kind = kind;
        d.outcome = Some(outcome);
        self.end = Some((kind, outcome));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::classify::ResponseHead;

    fn policy() -> Policy {
        Policy::new(PolicyConfig::default()).unwrap()
    }

    fn status(s: u16) -> AttemptResult<'static> {
        AttemptResult::Response(ResponseHead::status(s))
    }

    const T0: Duration = Duration::from_secs(100);

    #[test]
    fn success_first_time() {
        let mut call = policy().start_call("s", T0, None, 1);
        let d = call.on_result(T0, &status(200));
        assert_eq!(
            (d.kind, d.outcome),
            (DecisionKind::Done, Some(Outcome::Success))
        );
        assert_eq!(d.allowance_remaining, 2);
        assert_eq!(d.error_type, None);
    }

    #[test]
    fn a_single_attempt_call_stops_after_its_first_failure_but_deposits() {
        let p = policy();
        let before = p.budgets().get("s").balance(T0);
        let mut call = p.start_call("s", T0, None, 1).single_attempt();
        // The first attempt paid into the scope like any call's (the default ratio, 0.1).
        let after = p.budgets().get("s").balance(T0);
        assert!((after - before - 0.1).abs() < 1e-9, "{before} -> {after}");
        assert_eq!(call.max_attempts(), 1);
        let d = call.on_result(T0, &status(503));
        assert_eq!(
            (d.kind, d.outcome),
            (
                DecisionKind::StopAttemptsExhausted,
                Some(Outcome::FailedWithoutRetry)
            )
        );
        assert_eq!(d.allowance_remaining, 0);
        assert_eq!(p.start_call("s", T0, None, 2).max_attempts(), 3);
    }

    #[test]
    fn two_transients_then_success() {
        let mut call = policy().start_call("s", T0, None, 1);
        let d0 = call.on_result(T0, &status(503));
        assert_eq!(d0.kind, DecisionKind::Retry);
        assert_eq!(d0.delay_source, Some(DelaySource::Backoff));
        let delay0 = d0.delay.unwrap();
        assert!(delay0 >= Duration::from_millis(250) && delay0 <= Duration::from_millis(500));
        let t1 = T0 + delay0;
        let d1 = call.on_result(t1, &status(502));
        assert_eq!(d1.kind, DecisionKind::Retry);
        assert_eq!(d1.backoff_before, delay0);
        let delay1 = d1.delay.unwrap();
        assert!(delay1 >= Duration::from_millis(500) && delay1 <= Duration::from_millis(1000));
        let d2 = call.on_result(t1 + delay1, &status(200));
        assert_eq!(d2.outcome, Some(Outcome::SuccessAfterRetry));
        assert_eq!((d2.attempt, d2.allowance_remaining), (2, 0));
        assert_eq!(call.backoff().1, delay0 + delay1);
    }

    #[test]
    fn allowance_runs_out() {
        let mut call = policy().start_call("s", T0, None, 1);
        let mut now = T0;
        for _ in 0..2 {
            let d = call.on_result(now, &status(503));
            now += d.delay.unwrap();
        }
        let d = call.on_result(now, &status(503));
        assert_eq!(
            (d.kind, d.outcome),
            (
                DecisionKind::StopAttemptsExhausted,
                Some(Outcome::FailedAfterRetry)
            )
        );
        assert_eq!(d.delay, None);
        // reporting again changes nothing
        let again = call.on_result(now, &status(200));
        assert_eq!(again.kind, DecisionKind::StopAttemptsExhausted);
    }

    #[test]
    fn fatal_first_and_after_retry() {
        let mut call = policy().start_call("s", T0, None, 1);
        let d = call.on_result(T0, &status(400));
        assert_eq!(
            (d.kind, d.outcome),
            (
                DecisionKind::StopNonRetryable,
                Some(Outcome::FailedWithoutRetry)
            )
        );
        let mut call = policy().start_call("s", T0, None, 1);
        let d = call.on_result(T0, &status(503));
        let d = call.on_result(T0 + d.delay.unwrap(), &status(401));
        assert_eq!(d.outcome, Some(Outcome::FailedAfterRetry));
    }

    #[test]
    fn hints_are_honoured_and_capped() {
        let p = policy();
        let mut call = p.start_call("s", T0, None, 1);
        let mut head = ResponseHead::status(429);
        head.retry_after = Some("1");
        let d = call.on_result(T0, &AttemptResult::Response(head));
        assert_eq!(d.class, Class::RateLimited);
        assert_eq!(d.delay_source, Some(DelaySource::RetryAfter));
        let delay = d.delay.unwrap();
        assert!(
            delay >= Duration::from_secs(1) && delay <= Duration::from_millis(1100),
            "{delay:?}"
        );

        let mut call = p.start_call("s", T0, None, 1);
        head.retry_after = Some("61");
        let d = call.on_result(T0, &AttemptResult::Response(head));
        assert_eq!(
            (d.kind, d.outcome),
            (
                DecisionKind::StopRetryAfterTooLong,
                Some(Outcome::DeadlineExceeded)
            )
        );

        // a tiny hint never makes a tight loop
        let mut call = p.start_call("s", T0, None, 1);
        let mut head = ResponseHead::status(503);
        head.retry_after_ms = Some("5");
        let d = call.on_result(T0, &AttemptResult::Response(head));
        assert_eq!(d.delay, Some(Duration::from_millis(250)));
        assert_eq!(d.delay_source, Some(DelaySource::RetryAfterMs));
    }

    #[test]
    fn deadline_stops_and_caller_deadline_wins() {
        let p = policy();
        let mut call = p.start_call("s", T0, Some(Duration::from_millis(300)), 1);
        assert_eq!(call.deadline(), T0 + Duration::from_millis(300));
        assert_eq!(
            call.attempt_timeout(T0 + Duration::from_millis(100)),
            Duration::from_millis(200)
        );
        let d = call.on_result(T0 + Duration::from_millis(100), &status(503));
        assert_eq!(
            (d.kind, d.outcome),
            (DecisionKind::StopDeadline, Some(Outcome::DeadlineExceeded))
        );
        // a hint longer than the time left is "too long"
        let mut call = p.start_call("s", T0, Some(Duration::from_secs(2)), 1);
        let mut head = ResponseHead::status(429);
        head.retry_after = Some("5");
        let d = call.on_result(T0, &AttemptResult::Response(head));
        assert_eq!(d.kind, DecisionKind::StopRetryAfterTooLong);
    }

    #[test]
    fn budget_denies() {
        let cfg = PolicyConfig {
            budget: crate::BudgetConfig {
                ratio: 0.0,
                min_retries_per_sec: 0.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let p = Policy::new(cfg).unwrap();
        let mut call = p.start_call("s", T0, None, 1);
        let d = call.on_result(T0, &status(503));
        assert_eq!(
            (d.kind, d.outcome),
            (
                DecisionKind::StopBudgetExhausted,
                Some(Outcome::BudgetExhausted)
            )
        );
        assert_eq!(p.budgets().get("s").denied(), 1);
        assert_eq!(d.budget_balance, 0.0);
    }

    #[test]
    fn committed_stream_is_never_retried() {
        let mut call = policy().start_call("s", T0, None, 1);
        call.commit();
        let d = call.on_failure(T0, FailureKind::ConnectionReset);
        assert_eq!(
            (d.kind, d.outcome),
            (
                DecisionKind::StopCommitted,
                Some(Outcome::StreamInterrupted)
            )
        );
        assert_eq!(d.error_type, Some(ErrorType::StreamInterrupted));
    }

    #[test]
    fn cancel_is_not_a_failure() {
        let mut call = policy().start_call("s", T0, None, 1);
        let d = call.cancel(T0);
        assert_eq!(
            (d.kind, d.outcome),
            (DecisionKind::StopCancelled, Some(Outcome::Cancelled))
        );
        assert_eq!(Outcome::Cancelled.client_result(), "cancelled");
    }

    #[test]
    fn http_date_hint_uses_the_wall_clock() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let date = httpdate::fmt_http_date(wall + Duration::from_secs(2));
        let mut head = ResponseHead::status(503);
        head.retry_after = Some(&date);
        let mut call = policy().start_call("s", T0, None, 1);
        call.set_wall_clock(wall);
        let d = call.on_result(T0, &AttemptResult::Response(head));
        assert_eq!(d.delay_source, Some(DelaySource::RetryAfter));
        assert!(d.delay.unwrap() >= Duration::from_secs(2));
    }
}
