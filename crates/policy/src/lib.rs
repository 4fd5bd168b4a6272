//! The retry policy of retrybudget: *what* may be retried, *when* to try again, and *whether we can afford it*.
//!
//! This crate is the contract of `docs/retry-semantics.md` in code. It is deliberately pure: no sockets, no sleeping,
//! no async runtime and no global clock. Time ([`Duration`](std::time::Duration) since an origin the caller
//! chooses) and randomness (a seed) are passed in, so every decision is reproducible in a test and every
//! [`Decision`] carries the inputs that produced it, ready to be written down as evidence.
//!
//! The three questions live in three modules, as in tower's `Policy` vs `Budget` and reqwest-retry's
//! `RetryableStrategy` vs `RetryPolicy`:
//! - [`classify`]: what an attempt's result means (success, transient, rate limited, fatal);
//! - [`backoff`] and [`hints`]: how long to wait (equal-jitter exponential backoff, or the server's hint);
//! - [`budget`] and [`call`]: the attempt allowance, the deadline and the shared retry budget (one floor for
//!   the whole process);
//! - [`resend`]: a caller's own re-send of a request pays the budget like a retry (issue 11).
//!
//! A caller drives one logical call like this:
//! ```
//! use std::time::Duration;
//! use retrybudget_policy::{AttemptResult, DecisionKind, Outcome, Policy, PolicyConfig, ResponseHead};
//!
//! let policy = Policy::new(PolicyConfig::default()).expect("defaults are valid");
//! let now = Duration::ZERO;
//! let mut call = policy.start_call("https://api.example/v1|gpt-x", now, None, 7);
//! let first = call.on_result(now, &AttemptResult::Response(ResponseHead::status(503)));
//! assert_eq!(first.kind, DecisionKind::Retry);
//! let later = now + first.delay.expect("a retry has a delay");
//! let second = call.on_result(later, &AttemptResult::Response(ResponseHead::status(200)));
//! assert_eq!(second.outcome, Some(Outcome::SuccessAfterRetry));
//! ```

pub mod backoff;
pub mod budget;
pub mod call;
pub mod classify;
pub mod config;
pub mod hints;
mod names;
pub mod repeatable;
pub mod resend;
pub mod routes;
pub mod sim;

pub use backoff::{Random, SplitMix64};
pub use budget::{Balance, Budget, Budgets, Floor};
pub use call::{Call, Decision, Policy};
pub use classify::{AttemptResult, Class, ErrorType, FailureKind, ResponseHead, peek_error_body};
pub use config::{BudgetConfig, ConfigError, PolicyConfig};
pub use hints::{DelaySource, Hint};
pub use names::{DecisionKind, Outcome};
pub use resend::BudgetDenied;
