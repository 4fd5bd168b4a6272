//! How one attempt leaves the process: the seam that lets a middleware reuse the client's retry loop.
//!
//! The loop in [`Client::send_via`](crate::Client::send_via) owns everything that makes a call a retrybudget
//! call — the policy's decisions, the shared budget, the backoff sleeps, the spans, `traceparent`, the evidence.
//! A [`Transport`] only sends the one `reqwest::Request` it is handed and returns what came back. The client's
//! own connection pool is one transport; the rest of a `reqwest-middleware` chain is another
//! (`retrybudget-middleware`). There is no second retry loop anywhere.

use std::future::Future;

use retrybudget_policy::FailureKind;

/// Sends one attempt. Implementations must not retry, and must classify a failure that left no response as a
/// [`FailureKind`] (use [`failure_kind`](crate::failure_kind) for `reqwest` errors).
pub trait Transport: Send {
    /// Sends `request` once.
    fn send_attempt(
        &mut self,
        request: reqwest::Request,
    ) -> impl Future<Output = Result<reqwest::Response, FailureKind>> + Send;
}

/// The client's own connection pool.
pub(crate) struct Direct<'a>(pub(crate) &'a reqwest::Client);

impl Transport for Direct<'_> {
    async fn send_attempt(
        &mut self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, FailureKind> {
        self.0
            .execute(request)
            .await
            .map_err(|e| crate::failure_kind(&e))
    }
}
