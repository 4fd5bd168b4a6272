//! The budget's promise, checked on a simulated clock: a full outage can't become a retry storm, a partial
//! outage is capped at the budget's ratio where the allowance alone would not be, cycling scopes cannot multiply
//! the floor, and a mildly failing upstream gets its calls through at exactly the cost of its failures.
//!
//! Each bound is chosen to discriminate: every test states what a product without the behaviour would show.

use std::time::Duration;

use retrybudget_policy::Outcome;
use retrybudget_policy::sim::{self, SimConfig, SimReport};

fn bound(config: &SimConfig) -> f64 {
    1.0 + config.policy.budget.ratio + SimReport::floor_share(config)
}

/// The same scenario with the budget effectively off (what SDK defaults do).
fn unbudgeted(mut config: SimConfig) -> SimConfig {
    config.policy.budget.ratio = 1.0;
    config.policy.budget.min_retries_per_sec = 1_000_000.0;
    config
}

#[test]
fn full_outage_amplification_stays_within_ratio_plus_floor() {
    let config = SimConfig::default(); // 100 calls/s, 60 s, 100 % 503
    let report = sim::run(&config).expect("valid config");
    assert_eq!(report.calls, 6000);
    // floor share: (reserve 10 + 1/s × 60 s) / 6000 calls
    assert!((SimReport::floor_share(&config) - 70.0 / 6000.0).abs() < 1e-12);
    let bound = bound(&config); // 1.1117; without a budget: 3.0
    let amp = report.amplification();
    assert!(amp <= bound, "amplification {amp:.4} > bound {bound:.4}");
    // The budget did the limiting, and spent what it had (a budget that ignores deposits gives 1.012).
    assert!(amp > 1.1, "retries were still made: {amp:.4}");
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
fn partial_outage_is_capped_by_the_budget_not_the_allowance() {
    // 30 % failures: the allowance alone gives 1 + 0.3 + 0.09 = 1.39; the budget caps it at 1.1117.
    let config = SimConfig {
        failure_rate: 0.3,
        seed: 3,
        ..SimConfig::default()
    };
    let report = sim::run(&config).expect("valid config");
    let (amp, bound) = (report.amplification(), bound(&config));
    assert!(amp <= bound, "amplification {amp:.4} > bound {bound:.4}");
    assert!(amp > 1.1, "the budget's tokens were spent: {amp:.4}");
    assert!(report.budget_denied > 500, "{report:?}");
    let control = sim::run(&unbudgeted(config)).expect("valid config");
    let control_amp = control.amplification();
    assert!(
        (control_amp - 1.39).abs() < 0.02,
        "allowance only: {control_amp:.4}"
    );
    assert_eq!(control.budget_denied, 0);
}

#[test]
fn cycling_scopes_does_not_multiply_the_floor() {
    // 1000 scopes (say, model names) in a full outage: one floor for the process keeps the bound of a single
    // scope. With a floor per scope (10 retries per scope per 10 s) every call could retry: 3.0.
    let config = SimConfig {
        scopes: 1000,
        ..SimConfig::default()
    };
    let report = sim::run(&config).expect("valid config");
    let (amp, bound) = (report.amplification(), bound(&config));
    assert!(amp <= bound, "amplification {amp:.4} > bound {bound:.4}");
    // Each scope sees one call per 10 s, so its deposits (0.1 a call) pay only a tenth of a retry and the
    // shared floor (1/s, 0.0117 of the calls) the rest: the floor was used, and not multiplied.
    assert!(amp > 1.01, "the floor still pays for retries: {amp:.4}");
    assert!(report.budget_denied > 5000, "{report:?}");
}

#[test]
fn five_percent_failures_recover_at_exactly_the_cost_of_the_failures() {
    // With failure rate p and 3 attempts, a call makes 1 + p + p² attempts on average (1.0525): the budget
    // (0.1 per call) must not deny any of them, and nothing else may add attempts.
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
    assert_eq!(report.budget_denied, 0, "{report:?}");
    let amp = report.amplification();
    assert!((amp - 1.0525).abs() < 0.008, "amplification {amp:.4}");
    // the same as with no budget at all: at 5 % failures the budget is not what limits
    let control = sim::run(&unbudgeted(config)).expect("valid config");
    assert_eq!(control.attempts, report.attempts);
}

#[test]
fn without_a_budget_the_outage_triples_the_load() {
    // The control experiment: proves the first test measures the budget and not something else.
    let report = sim::run(&unbudgeted(SimConfig::default())).expect("valid config");
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
