//! A failed call's error tells the caller what happened (outcome, attempts, last status, `error.type`) and what to
//! do next for *that* cause (style.md rule 5) — found unchecked by mutation testing (issue 13): the advice for a
//! connect error or an exhausted deadline could be replaced by the generic one and every other test still passed.

use retrybudget_client::CallError;
use retrybudget_policy::{ErrorType, Outcome};

fn message(outcome: Outcome, last_status: Option<u16>, error_type: Option<ErrorType>) -> String {
    CallError {
        outcome,
        attempts: 3,
        last_status,
        error_type,
        retry_after_secs: None,
    }
    .to_string()
}

#[test]
fn each_cause_gets_its_own_next_step() {
    // A transport cause wins over the outcome: it says what to check.
    let cases = [
        (
            Outcome::FailedAfterRetry,
            None,
            Some(ErrorType::ConnectError),
            "check the base URL",
        ),
        (
            Outcome::DeadlineExceeded,
            None,
            Some(ErrorType::ConnectError),
            "check the base URL",
        ),
        (
            Outcome::FailedWithoutRetry,
            None,
            Some(ErrorType::TlsError),
            "certificate",
        ),
        (
            Outcome::FailedAfterRetry,
            None,
            Some(ErrorType::Timeout),
            "raise the per-attempt timeout",
        ),
        (
            Outcome::BudgetExhausted,
            Some(503),
            Some(ErrorType::Status(503)),
            "retry budget is spent",
        ),
        (
            Outcome::DeadlineExceeded,
            Some(503),
            Some(ErrorType::Status(503)),
            "raise the deadline",
        ),
        (
            Outcome::StreamInterrupted,
            Some(200),
            Some(ErrorType::StreamInterrupted),
            "re-issue the request",
        ),
        (Outcome::Cancelled, None, None, "the caller went away"),
        (
            Outcome::FailedAfterRetry,
            Some(503),
            Some(ErrorType::Status(503)),
            "see the evidence record",
        ),
    ];
    for (outcome, status, error_type, advice) in cases {
        let text = message(outcome, status, error_type);
        assert!(text.contains(advice), "{outcome} {error_type:?}: {text}");
        assert!(
            text.starts_with(&format!("chat call {outcome} after 3 attempt(s)")),
            "{text}"
        );
        if let Some(s) = status {
            assert!(text.contains(&format!("last status {s}")), "{text}");
        }
        if let Some(e) = error_type {
            assert!(text.contains(&format!("error.type {e}")), "{text}");
        }
    }
}
