//! A request that must not be repeated (a non-idempotent POST without an `Idempotency-Key`) gets one attempt —
//! but it is still a call of the same policy: its first attempt deposits into its scope's shared budget, as
//! every call's does. (It used to run under a second policy with its own, invisible budgets: its deposits
//! went nowhere, and the shared budget of a scope serving such requests looked poorer than it was.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use retrybudget_client::{Client, ClientConfig, RawRequest};
use retrybudget_fake_upstream::{FakeUpstream, Step};
use retrybudget_policy::{BudgetConfig, Outcome, PolicyConfig};
use retrybudget_telemetry::Telemetry;

const MODEL: &str = "fake-model";

fn request(repeatable: bool) -> RawRequest {
    let body = serde_json::json!({"model": MODEL, "purpose": "batch"}).to_string();
    let mut raw = RawRequest::chat(body.into());
    raw.model = Some(MODEL.into());
    if !repeatable {
        raw.path = "/v1/files".into();
        raw.url_template = "/v1/files".into();
        raw.repeatable = false;
    }
    raw
}

#[tokio::test]
async fn a_request_that_must_not_be_repeated_gets_one_attempt_and_still_pays_into_the_budget() {
    let upstream = FakeUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    // Each first attempt deposits half a retry; no floor: a retry needs two calls' deposits.
    let policy = PolicyConfig {
        max_attempts: 3,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(10),
        budget: BudgetConfig {
            ratio: 0.5,
            min_retries_per_sec: 0.0,
            ..BudgetConfig::default()
        },
        ..PolicyConfig::default()
    };
    let client = Client::new(
        ClientConfig {
            policy,
            ..ClientConfig::new(upstream.base_url())
        },
        Telemetry::local(),
    )
    .unwrap();

    // Not repeatable: a 503 is not retried, whatever the allowance.
    upstream.push([Step::status(503)]);
    let once = client.send(request(false)).await.unwrap();
    assert_eq!(once.status, 503);
    assert_eq!(once.attempts, 1);
    assert_eq!(upstream.attempts(), 1);

    // Its deposit plus this call's own pay for one retry of a repeatable request in the same scope.
    upstream.push([Step::status(503), Step::ok()]);
    let retried = client.send(request(true)).await.unwrap();
    assert_eq!(retried.status, 200);
    assert_eq!(retried.outcome, Outcome::SuccessAfterRetry);
    assert_eq!(retried.attempts, 2);
    assert_eq!(upstream.attempts(), 3);
    upstream.shutdown().await;
}
