//! The stable lowercase names of decisions and terminal outcomes (retry-semantics.md §4).
//!
//! Telemetry records exactly these strings; dashboards and alert rules query them. Renaming one is a breaking
//! change for every operator, so they are spelled once, here, and tested against the contract.

/// What the policy decided after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Try again after the decision's delay.
    Retry,
    /// The attempt succeeded; the call is over.
    Done,
    /// The failure is not safe to retry (validation, auth, quota, unknown).
    StopNonRetryable,
    /// The per-call attempt allowance is used up.
    StopAttemptsExhausted,
    /// A retry was wanted but the shared budget could not pay for it.
    StopBudgetExhausted,
    /// The retry would end past the call's deadline.
    StopDeadline,
    /// The server asked for a wait longer than `max_retry_after` or than the time left.
    StopRetryAfterTooLong,
    /// A streaming call failed after its first byte reached the caller.
    StopCommitted,
    /// The caller went away.
    StopCancelled,
}

impl DecisionKind {
    /// Every decision, in contract order.
    pub const ALL: [DecisionKind; 9] = [
        DecisionKind::Retry,
        DecisionKind::Done,
        DecisionKind::StopNonRetryable,
        DecisionKind::StopAttemptsExhausted,
        DecisionKind::StopBudgetExhausted,
        DecisionKind::StopDeadline,
        DecisionKind::StopRetryAfterTooLong,
        DecisionKind::StopCommitted,
        DecisionKind::StopCancelled,
    ];

    /// The stable name recorded as `retrybudget.decision`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Retry => "retry",
            DecisionKind::Done => "done",
            DecisionKind::StopNonRetryable => "stop_non_retryable",
            DecisionKind::StopAttemptsExhausted => "stop_attempts_exhausted",
            DecisionKind::StopBudgetExhausted => "stop_budget_exhausted",
            DecisionKind::StopDeadline => "stop_deadline",
            DecisionKind::StopRetryAfterTooLong => "stop_retry_after_too_long",
            DecisionKind::StopCommitted => "stop_committed",
            DecisionKind::StopCancelled => "stop_cancelled",
        }
    }

    /// Why retrying stopped (`retrybudget.stop_reason`): the decision name without `stop_`, `None` for
    /// `retry` and `done`.
    pub fn stop_reason(self) -> Option<&'static str> {
        self.as_str().strip_prefix("stop_")
    }

    /// Whether this decision ends the call.
    pub const fn is_terminal(self) -> bool {
        !matches!(self, DecisionKind::Retry)
    }
}

/// How a logical call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The first attempt succeeded.
    Success,
    /// Succeeded after at least one retry.
    SuccessAfterRetry,
    /// A fatal failure; nothing was retried.
    FailedWithoutRetry,
    /// Retried, and then the allowance ran out or the final failure was fatal.
    FailedAfterRetry,
    /// A retry was wanted but the shared budget denied it.
    BudgetExhausted,
    /// The deadline (or a too-long server hint) stopped retrying.
    DeadlineExceeded,
    /// The stream failed after the commit point.
    StreamInterrupted,
    /// The caller went away; not an error.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in contract order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Success,
        Outcome::SuccessAfterRetry,
        Outcome::FailedWithoutRetry,
        Outcome::FailedAfterRetry,
        Outcome::BudgetExhausted,
        Outcome::DeadlineExceeded,
        Outcome::StreamInterrupted,
        Outcome::Cancelled,
    ];

    /// The stable name recorded as `retrybudget.outcome`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::SuccessAfterRetry => "success_after_retry",
            Outcome::FailedWithoutRetry => "failed_without_retry",
            Outcome::FailedAfterRetry => "failed_after_retry",
            Outcome::BudgetExhausted => "budget_exhausted",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::StreamInterrupted => "stream_interrupted",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The evidence record's `client_result`: `success`, `failure`, or `cancelled` (which is neither).
    pub const fn client_result(self) -> &'static str {
        match self {
            Outcome::Success | Outcome::SuccessAfterRetry => "success",
            Outcome::Cancelled => "cancelled",
            Outcome::FailedWithoutRetry
            | Outcome::FailedAfterRetry
            | Outcome::BudgetExhausted
            | Outcome::DeadlineExceeded
            | Outcome::StreamInterrupted => "failure",
        }
    }

    /// Whether the call ended in a failure an operator should count as one (not success, not cancel).
    pub const fn is_failure(self) -> bool {
        match self {
            Outcome::Success | Outcome::SuccessAfterRetry | Outcome::Cancelled => false,
            Outcome::FailedWithoutRetry
            | Outcome::FailedAfterRetry
            | Outcome::BudgetExhausted
            | Outcome::DeadlineExceeded
            | Outcome::StreamInterrupted => true,
        }
    }

    /// Parses a stable name back (used when reading evidence files).
    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == name)
    }
}

impl std::fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in retry-semantics.md §4, copied verbatim: code and contract must agree.
    #[test]
    fn names_match_the_contract() {
        let decisions: Vec<_> = DecisionKind::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            decisions,
            [
                "retry",
                "done",
                "stop_non_retryable",
                "stop_attempts_exhausted",
                "stop_budget_exhausted",
                "stop_deadline",
                "stop_retry_after_too_long",
                "stop_committed",
                "stop_cancelled"
            ]
        );
        let outcomes: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            outcomes,
            [
                "success",
                "success_after_retry",
                "failed_without_retry",
                "failed_after_retry",
                "budget_exhausted",
                "deadline_exceeded",
                "stream_interrupted",
                "cancelled"
            ]
        );
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.as_str()), Some(o));
        }
        assert_eq!(
            DecisionKind::StopBudgetExhausted.stop_reason(),
            Some("budget_exhausted")
        );
        assert_eq!(DecisionKind::Retry.stop_reason(), None);
        assert_eq!(Outcome::Cancelled.client_result(), "cancelled");
        assert_eq!(Outcome::DeadlineExceeded.client_result(), "failure");
    }
}
