//! The budget's promise, checked on a simulated clock: a full outage can't become a retry storm, and a
//! partially failing upstream still gets its calls through.

use std::time::Duration;

use retrybudget_policy::Outcome;
use retrybudget_policy::sim::{self, SimConfig, SimReport};

#[test]
fn full_outage_amplification_stays_within_ratio_plus_floor() {
    let config = SimConfig::default(); // 100 calls/s, 60 s, 100 % 503
    let report = sim::run(&config).expect("valid config");
    assert_eq!(report.calls, 6000);
    let bound = 1.0 + config.policy.budget.ratio + SimReport::floor_share(&config);
    let amp = report.amplification();
    assert!(amp <= bound, "amplification {amp:.4} > bound {bound:.4}");
    // The budget did the limiting (3x is what the allowance alone would allow).
    assert!(amp > 1.05, "retries were still made: {amp:.4}");
    assert!(
        report.budget_denied > 5000,
        "denials: {}",
        report.budget_denied
    );
    assert!(report.outcome(Outcome::BudgetExhausted) > 5000);
    assert_eq!(
        report.outcome(Outcome::Success) + report.outcome(Outcome::SuccessAfterRetry),
        0
    );
    let ended: u64 = report.outcomes.iter().sum();
    assert_eq!(
        ended, report.calls,
        "every call ends with exactly one outcome"
    );
}

#[test]
fn five_percent_failures_mostly_recover_with_little_extra_load() {
    let config = SimConfig {
        failure_rate: 0.05,
        seed: 7,
        ..SimConfig::default()
    };
    let report = sim::run(&config).expect("valid config");
    let ok = report.outcome(Outcome::Success) + report.outcome(Outcome::SuccessAfterRetry);
    assert!(
        report.outcome(Outcome::SuccessAfterRetry) > 200,
        "retries rescued calls: {report:?}"
    );
    assert!(
        ok as f64 >= 0.999 * report.calls as f64,
        "ok {ok} of {}",
        report.calls
    );
    assert!(
        report.amplification() < 1.1,
        "amplification {}",
        report.amplification()
    );
}

#[test]
fn without_a_budget_the_outage_triples_the_load() {
    // The control experiment: proves the first test measures the budget and not something else.
    let mut config = SimConfig::default();
    config.policy.budget.ratio = 1.0;
    config.policy.budget.min_retries_per_sec = 1_000_000.0;
    let report = sim::run(&config).expect("valid config");
    assert!(
        (report.amplification() - 3.0).abs() < 1e-9,
        "{}",
        report.amplification()
    );
}

#[test]
fn simulation_is_deterministic() {
    let config = SimConfig {
        failure_rate: 0.3,
        duration: Duration::from_secs(10),
        ..SimConfig::default()
    };
    assert_eq!(
        sim::run(&config).expect("valid"),
        sim::run(&config).expect("valid")
    );
}
