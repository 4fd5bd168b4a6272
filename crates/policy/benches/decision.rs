//! Criterion benchmarks: one retry decision, and budget withdrawals from two threads at once.
//!
//! Run: `cargo bench -p retrybudget-policy --bench decision`. Results go into `crates/policy/README.md`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use retrybudget_policy::{AttemptResult, Budget, BudgetConfig, Policy, PolicyConfig, ResponseHead};

fn decision(c: &mut Criterion) {
    let policy = Policy::new(PolicyConfig::default()).unwrap();
    let mut now = Duration::from_secs(1);
    let mut seed = 0u64;
    c.bench_function("start_call + 503 decision (retry)", |b| {
        b.iter(|| {
            now += Duration::from_micros(10);
            seed += 1;
            let mut call = policy.start_call("https://api.example|model", now, None, seed);
            black_box(call.on_result(
                now,
                black_box(&AttemptResult::Response(ResponseHead::status(503))),
            ))
        })
    });
    let mut head = ResponseHead::status(429);
    head.retry_after_ms = Some("1500");
    head.ratelimit_reset_requests = Some("6m0s");
    c.bench_function("start_call + 429 retry-after-ms decision", |b| {
        b.iter(|| {
            now += Duration::from_micros(10);
            let mut call = policy.start_call("https://api.example|model", now, None, 9);
            black_box(call.on_result(now, black_box(&AttemptResult::Response(head))))
        })
    });
}

fn budget_two_threads(c: &mut Criterion) {
    let budget = Arc::new(Budget::new("s", &BudgetConfig::default()));
    c.bench_function("budget deposit+withdraw, 2 threads contending", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            let other = {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    for i in 0..iters {
                        let now = Duration::from_nanos(i * 1000);
                        budget.deposit(now);
                        black_box(budget.try_withdraw(now));
                    }
                })
            };
            for i in 0..iters {
                let now = Duration::from_nanos(i * 1000);
                budget.deposit(now);
                black_box(budget.try_withdraw(now));
            }
            other.join().unwrap();
            // per pair of operations on this thread, while the other thread does the same
            start.elapsed()
        })
    });
}

criterion_group!(benches, decision, budget_two_threads);
criterion_main!(benches);
