//! A caller's re-sent request (issue 11): the budget holds even when the caller retries too.
//!
//! The worst retry storms are nested: an app's own loop (or a gateway's, or tenacity around an SDK) re-sends a
//! request that failed, in front of a component that also retries. If each re-send *deposited* into the budget
//! like new traffic, the caller's loop would pay for our retries and the provider would see `caller attempts ×
//! our attempts`. So a request recognised as a caller's retry (how it is recognised is the proxy's business:
//! a fingerprint, `x-stainless-retry-count`, an `Idempotency-Key` seen before) starts with
//! [`Policy::start_caller_retry`]:
//! - its **first attempt withdraws** one token from the scope's shared budget, like one of our own retries,
//!   instead of depositing `ratio`;
//! - when the budget **cannot pay**, no attempt is made: the call ends at once with the contract's
//!   `stop_budget_exhausted` / `budget_exhausted`, and the refusal carries the budget's **refill time** — how
//!   long until it can pay a retry again if no new traffic arrives — for a `retry-after`
//!   ([`BudgetDenied::retry_after_secs`]);
//! - its **allowance counts the caller's earlier attempts**: with `prior_attempts` already made for this request,
//!   the call may retry only while `prior_attempts + attempts of this call < max_attempts`. The first attempt is
//!   always made once the budget has paid for it (the budget is the gate for a re-send; the allowance bounds our
//!   own retries of it), so a caller past its allowance gets one budget-paid attempt and no retry from us.
//!
//! Decisions and outcomes of such a call are counted per call, as for any call (`attempt` 0 is this call's first
//! upstream attempt; `success` means that attempt succeeded); the caller's earlier attempts are visible in
//! [`Call::prior_attempts`] and in `allowance_remaining`.
//!
//! Failure modes to know (and document where this is switched on): identical requests from one caller after a
//! failure are taken for a re-send and pay like a retry; turning recognition off restores "every request
//! deposits". This module must never make an attempt the budget has not paid for, nor let a re-send deposit.

use std::time::Duration;

use crate::call::{Call, Decision, Policy};
use crate::classify::Class;
use crate::names::DecisionKind;

/// A caller's re-send the shared budget could not pay for: answer it at once, without an upstream attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetDenied {
    /// The scope whose budget refused.
    pub scope: String,
    /// The terminal decision to record: `stop_budget_exhausted`, outcome `budget_exhausted`, class `transient`
    /// (the caller is retrying a failure), no status, no `error.type`, no delay. No attempt was made: `attempt`
    /// is 0 and `elapsed` zero.
    pub decision: Decision,
    /// How long until the budget can pay a retry again if no new traffic arrives ([`Budget::refill_time`]);
    /// `None` when only new first attempts can refill it (no floor and no live deposits).
    ///
    /// [`Budget::refill_time`]: crate::budget::Budget::refill_time
    pub refill: Option<Duration>,
    /// The budget's `ttl`: the fallback wait when `refill` is `None` (by then the retries of the window expired).
    pub ttl: Duration,
    /// The caller's earlier attempts, as passed in.
    pub prior_attempts: u32,
}

impl BudgetDenied {
    /// The `retry-after` value in whole seconds: the refill time rounded up, at least 1 (a `retry-after: 0`
    /// invites a tight loop), or the budget's `ttl` rounded up when only new traffic can refill it.
    pub fn retry_after_secs(&self) -> u64 {
        let wait = self.refill.unwrap_or(self.ttl);
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        secs.max(1)
    }
}

impl Policy {
    /// Starts a caller's re-send of a request in `scope` at `now`: the first attempt withdraws one token from
    /// the scope's budget instead of depositing, and the allowance starts from `prior_attempts` (the attempts
    /// already made for this request, by earlier calls or by the caller). When the budget cannot pay, returns
    /// the refusal (boxed: it carries a whole [`Decision`]) with its refill time and makes no attempt. `caller_deadline` and `seed` as in
    /// [`Policy::start_call`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use retrybudget_policy::{BudgetConfig, DecisionKind, Outcome, Policy, PolicyConfig};
    ///
    /// let config = PolicyConfig {
    ///     budget: BudgetConfig { min_retries_per_sec: 0.1, ..BudgetConfig::default() }, // 1 retry per 10 s
    ///     ..PolicyConfig::default()
    /// };
    /// let policy = Policy::new(config).expect("valid");
    /// let t = Duration::from_secs(100);
    /// let call = policy.start_caller_retry("up|m", t, None, 1, 1).expect("the floor pays the first re-send");
    /// assert_eq!(call.prior_attempts(), 1);
    /// let denied = policy.start_caller_retry("up|m", t, None, 2, 2).expect_err("nothing left to pay with");
    /// assert_eq!(denied.decision.kind, DecisionKind::StopBudgetExhausted);
    /// assert_eq!(denied.decision.outcome, Some(Outcome::BudgetExhausted));
    /// assert_eq!(denied.retry_after_secs(), 10, "the retry paid at 100 s expires at 110 s");
    /// ```
    pub fn start_caller_retry(
        &self,
        scope: &str,
        now: Duration,
        caller_deadline: Option<Duration>,
        seed: u64,
        prior_attempts: u32,
    ) -> Result<Call, Box<BudgetDenied>> {
        let budget = self.budgets().get(scope);
        let paid = budget.try_withdraw(now);
        let refill = (!paid).then(|| budget.refill_time(now)).flatten();
        let mut call = self.call_with(budget, now, caller_deadline, seed, prior_attempts);
        if paid {
            return Ok(call);
        }
        Err(Box::new(BudgetDenied {
            scope: call.budget().scope().to_owned(),
            decision: call.end_before_attempt(
                now,
                Class::Transient,
                DecisionKind::StopBudgetExhausted,
            ),
            refill,
            ttl: self.config().budget.ttl,
            prior_attempts,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::budget::BudgetConfig;
    use crate::classify::{AttemptResult, ResponseHead};
    use crate::config::PolicyConfig;
    use crate::names::Outcome;

    const T0: Duration = Duration::from_secs(100);

    fn policy(min_retries_per_sec: f64, max_attempts: u32) -> Policy {
        Policy::new(PolicyConfig {
            max_attempts,
            budget: BudgetConfig {
                min_retries_per_sec,
                ..BudgetConfig::default()
            },
            ..PolicyConfig::default()
        })
        .unwrap()
    }

    fn status(s: u16) -> AttemptResult<'static> {
        AttemptResult::Response(ResponseHead::status(s))
    }

    #[test]
    fn a_resend_withdraws_instead_of_depositing() {
        let p = policy(0.0, 3);
        // 20 new calls deposit 2 tokens
        for i in 0..20 {
            p.start_call("s", T0, None, i);
        }
        let budget = p.budgets().get("s");
        assert!((budget.balance(T0) - 2.0).abs() < 1e-9);
        assert!(p.start_caller_retry("s", T0, None, 1, 1).is_ok());
        assert!((budget.balance(T0) - 1.0).abs() < 1e-9, "withdrew one");
        assert!(p.start_caller_retry("s", T0, None, 2, 1).is_ok());
        let denied = p.start_caller_retry("s", T0, None, 3, 1).unwrap_err();
        assert_eq!(budget.balance(T0), 0.0, "a refusal deposits nothing either");
        assert_eq!(budget.denied(), 1);
        assert_eq!(denied.scope, "s");
        // no floor: the deposits of the 20 calls expire with the two withdrawals, leaving nothing to wait for
        assert_eq!(denied.refill, None);
        assert_eq!(denied.retry_after_secs(), 10, "the ttl");
    }

    #[test]
    fn a_denial_is_a_terminal_decision_without_an_attempt() {
        let p = policy(0.0, 3);
        let denied = p
            .start_caller_retry("s", T0, Some(Duration::from_secs(5)), 1, 2)
            .unwrap_err();
        let d = &denied.decision;
        assert_eq!(d.kind, DecisionKind::StopBudgetExhausted);
        assert_eq!(d.outcome, Some(Outcome::BudgetExhausted));
        assert_eq!((d.attempt, d.status, d.error_type), (0, None, None));
        assert_eq!((d.delay, d.delay_source, d.hint), (None, None, None));
        assert_eq!(d.class, Class::Transient);
        assert_eq!(d.elapsed, Duration::ZERO);
        assert_eq!(d.allowance_remaining, 0, "3 attempts, 2 earlier, this one");
        assert_eq!(d.budget_balance, 0.0);
        assert_eq!(denied.prior_attempts, 2);
    }

    #[test]
    fn retry_after_is_the_refill_time_rounded_up() {
        let p = policy(0.2, 3); // 2 retries per 10 s, slots of 1 s
        assert!(p.start_caller_retry("s", T0, None, 1, 1).is_ok());
        let later = T0 + Duration::from_millis(3500);
        assert!(p.start_caller_retry("s", later, None, 2, 1).is_ok());
        let denied = p.start_caller_retry("s", later, None, 3, 1).unwrap_err();
        // the retry paid at 100 s (slot 100..101) expires when the clock reaches 110 s
        assert_eq!(denied.refill, Some(Duration::from_millis(6500)));
        assert_eq!(denied.retry_after_secs(), 7);
        let at = later + denied.refill.unwrap();
        assert!(p.start_caller_retry("s", at, None, 4, 1).is_ok());
    }

    #[test]
    fn the_allowance_counts_the_callers_earlier_attempts() {
        let p = policy(100.0, 3);
        // one earlier attempt: this call may make 2 (one retry)
        let mut call = p.start_caller_retry("s", T0, None, 1, 1).unwrap();
        let d = call.on_result(T0, &status(503));
        assert_eq!((d.kind, d.allowance_remaining), (DecisionKind::Retry, 1));
        let d = call.on_result(T0 + d.delay.unwrap(), &status(503));
        assert_eq!(d.kind, DecisionKind::StopAttemptsExhausted);
        assert_eq!(d.outcome, Some(Outcome::FailedAfterRetry));
        // at or past the allowance: one budget-paid attempt, no retry from us
        for prior in [2, 3, 40, u32::MAX] {
            let mut call = p.start_caller_retry("s", T0, None, 2, prior).unwrap();
            assert_eq!(call.prior_attempts(), prior);
            let d = call.on_result(T0, &status(503));
            assert_eq!(d.kind, DecisionKind::StopAttemptsExhausted, "prior {prior}");
            assert_eq!(d.allowance_remaining, 0);
            assert_eq!(d.outcome, Some(Outcome::FailedWithoutRetry));
        }
        // success on the re-send's first attempt is this call's success
        let mut call = p.start_caller_retry("s", T0, None, 3, 1).unwrap();
        assert_eq!(
            call.on_result(T0, &status(200)).outcome,
            Some(Outcome::Success)
        );
    }

    #[test]
    fn scopes_beyond_the_cap_and_the_shared_floor_apply() {
        let p = policy(0.1, 3); // one floor retry per 10 s for the whole process
        assert!(p.start_caller_retry("a", T0, None, 1, 1).is_ok());
        let denied = p.start_caller_retry("b", T0, None, 2, 1).unwrap_err();
        assert_eq!(
            denied.scope, "b",
            "another scope cannot use the floor again"
        );
    }
}
