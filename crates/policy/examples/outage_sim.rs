//! Prints how much load retries add to an upstream in a full outage: 100 calls/s for 60 simulated seconds
//! against an upstream that answers every attempt with 503, with the default policy (shared budget on), and
//! the same without a budget (what SDK defaults do) for comparison. The last line is `amplification=<x.xx>`.
//!
//! Run: `cargo run -q -p retrybudget-policy --example outage_sim`

use retrybudget_policy::sim::{self, SimConfig, SimReport};
use retrybudget_policy::{BudgetConfig, Outcome, PolicyConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let budgeted = SimConfig::default();
    let unbudgeted = SimConfig {
        policy: PolicyConfig {
            budget: BudgetConfig {
                ratio: 1.0,
                min_retries_per_sec: 1_000_000.0,
                ..BudgetConfig::default()
            },
            ..PolicyConfig::default()
        },
        ..SimConfig::default()
    };
    let without = sim::run(&unbudgeted)?;
    let with = sim::run(&budgeted)?;
    println!(
        "full outage: {} calls/s for {:?}, every attempt 503, max_attempts 3",
        budgeted.calls_per_sec, budgeted.duration
    );
    println!(
        "without a budget: attempts={} calls={} amplification={:.2}",
        without.attempts,
        without.calls,
        without.amplification()
    );
    println!(
        "with the budget (ratio {}, ttl {:?}, floor {}/s): attempts={} calls={} budget_denied={} budget_exhausted_calls={} failed_after_retry_calls={}",
        budgeted.policy.budget.ratio,
        budgeted.policy.budget.ttl,
        budgeted.policy.budget.min_retries_per_sec,
        with.attempts,
        with.calls,
        with.budget_denied,
        with.outcome(Outcome::BudgetExhausted),
        with.outcome(Outcome::FailedAfterRetry),
    );
    println!(
        "bound: 1 + ratio + floor share = {:.4}",
        1.0 + budgeted.policy.budget.ratio + SimReport::floor_share(&budgeted)
    );
    let scoped = SimConfig {
        scopes: 1000,
        ..SimConfig::default()
    };
    let cycled = sim::run(&scoped)?;
    println!(
        "the same calls spread over {} scopes (a caller cycling model names; one floor for the process): attempts={} amplification={:.4}",
        scoped.scopes,
        cycled.attempts,
        cycled.amplification()
    );
    println!("amplification={:.2}", with.amplification());
    Ok(())
}
