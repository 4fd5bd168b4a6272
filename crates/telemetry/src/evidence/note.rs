//! The operator note of each decision: fixed, sanitised text written into the evidence record and the log
//! record's body. It must never carry request or response content.

use retrybudget_policy::DecisionKind;

/// Fixed, sanitised operator notes: never request or response content. One per decision, so a new decision
/// does not compile until it has its note.
pub fn operator_note(decision: DecisionKind) -> &'static str {
    match decision {
        DecisionKind::Retry => "transient failure; retry scheduled after backoff",
        DecisionKind::Done => "documented success response received",
        DecisionKind::StopNonRetryable => "failure class is not safe to retry; stopped",
        DecisionKind::StopAttemptsExhausted => "attempt allowance used up; stopped",
        DecisionKind::StopBudgetExhausted => "shared retry budget exhausted; retry denied",
        DecisionKind::StopDeadline => "retry would end past the call deadline; stopped",
        DecisionKind::StopRetryAfterTooLong => "server asked for a wait beyond the limit; stopped",
        DecisionKind::StopCommitted => {
            "stream failed after first byte reached the caller; not retried"
        }
        DecisionKind::StopCancelled => "caller went away; attempt cancelled",
    }
}
