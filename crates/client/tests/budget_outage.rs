//! 500 calls against an upstream that answers every attempt 503: the shared budget keeps the extra load to the
//! ratio plus the floor, the denials are counted, and the balance gauge shows the bucket empty.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{Harness, MODEL};
use retrybudget_client::RawRequest;
use retrybudget_fake_upstream::Step;
use retrybudget_policy::Outcome;
use retrybudget_telemetry::OtlpProtocol;
use retrybudget_telemetry::names::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_bounded_by_the_budget() {
    let h = Arc::new(Harness::start(OtlpProtocol::Grpc).await);
    h.upstream.set_default(Step::status(503));
    let body = serde_json::to_vec(
        &serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .unwrap();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    // 10 waves of 50 concurrent calls
    for _ in 0..10 {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let h = Arc::clone(&h);
                let mut raw = RawRequest::chat(body.clone().into());
                raw.model = Some(MODEL.into());
                tokio::spawn(async move {
                    h.client
                        .send(raw)
                        .await
                        .map(|x| x.outcome)
                        .unwrap_or_else(|e| e.outcome)
                })
            })
            .collect();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let calls = 500.0;
    let attempts = h.upstream.attempts() as f64;
    let budget = &h.client.policy().config().budget;
    let bound =
        (1.0 + budget.ratio) * calls + budget.reserve() + budget.min_retries_per_sec * secs.ceil();
    assert!(
        attempts <= bound,
        "attempts {attempts} > bound {bound:.1} over {secs:.2}s"
    );
    assert!(
        attempts > calls,
        "some retries were still allowed: {attempts}"
    );
    let exhausted = outcomes
        .iter()
        .filter(|o| **o == Outcome::BudgetExhausted)
        .count();
    assert!(exhausted > 300, "budget_exhausted outcomes: {exhausted}");

    // the denial counter and the balance gauge reflect it, on /metrics and over OTLP
    let scope = format!("{}|{MODEL}", h.upstream.base_url());
    let denied = h.client.policy().budgets().get(&scope).denied();
    assert_eq!(
        denied as usize, exhausted,
        "every budget_exhausted call is one denial"
    );
    let text = h.telemetry.prometheus_text();
    let line = text
        .lines()
        .find(|l| l.starts_with("retrybudget_budget_denied_total{"))
        .expect("denied counter exported");
    assert!(line.ends_with(&format!(" {denied}")), "{line}");
    let balance = text
        .lines()
        .find(|l| l.starts_with("retrybudget_budget_remaining{"))
        .expect("balance gauge exported");
    let value: f64 = balance.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        value < 1.0,
        "the bucket is empty after the outage: {balance}"
    );
    assert!(h.flush().await);
    assert_eq!(
        h.receiver.counter_value(M_BUDGET_DENIED, &[]),
        denied as f64
    );
    assert!(
        h.receiver
            .gauge_last(M_BUDGET_REMAINING, &[])
            .is_some_and(|v| v < 1.0)
    );
    assert_eq!(
        h.receiver.counter_value(M_ATTEMPTS, &[]),
        attempts,
        "reconciliation under load"
    );
    assert_eq!(h.evidence_lines().len() as f64, attempts);
}
