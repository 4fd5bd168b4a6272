//! A deterministic simulation of many calls against a failing upstream, on a simulated clock.
//!
//! It answers the question a budget exists for — *how much extra load do retries put on an upstream that is
//! failing?* — without sockets or sleeping, so tests can assert on it and `examples/outage_sim.rs` can print it.
//! Calls arrive at a steady rate; each attempt takes `attempt_latency` and fails with probability
//! `failure_rate` (status `failure_status`); every decision is the real [`Policy`]'s. Calls are spread
//! round-robin over `scopes` budget scopes (as a caller cycling model names would), which shows that the
//! process-wide floor is not multiplied by the number of scopes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::backoff::{Random, SplitMix64};
use crate::call::{Call, Policy};
use crate::classify::{AttemptResult, ResponseHead};
use crate::config::{ConfigError, PolicyConfig};
use crate::names::{DecisionKind, Outcome};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The policy under test.
    pub policy: PolicyConfig,
    /// Steady arrival rate of logical calls.
    pub calls_per_sec: f64,
    /// How long calls keep arriving.
    pub duration: Duration,
    /// Share of attempts that fail, 0.0 to 1.0.
    pub failure_rate: f64,
    /// Status of a failed attempt (e.g. 503).
    pub failure_status: u16,
    /// Simulated time each attempt takes.
    pub attempt_latency: Duration,
    /// Seed for the upstream's failures and the calls' jitter.
    pub seed: u64,
    /// Number of budget scopes the calls are spread over, round-robin (at least 1).
    pub scopes: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            policy: PolicyConfig::default(),
            calls_per_sec: 100.0,
            duration: Duration::from_secs(60),
            failure_rate: 1.0,
            failure_status: 503,
            attempt_latency: Duration::from_millis(50),
            seed: 1,
            scopes: 1,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimReport {
    /// Logical calls made.
    pub calls: u64,
    /// Upstream attempts made (first attempts plus retries).
    pub attempts: u64,
    /// Calls per terminal outcome, in [`Outcome::ALL`] order.
    pub outcomes: [u64; 8],
    /// Attempts per decision, in [`DecisionKind::ALL`] order.
    pub decisions: [u64; 9],
    /// Retries the budget denied.
    pub budget_denied: u64,
}

impl SimReport {
    /// Attempts per call.
    pub fn amplification(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.attempts as f64 / self.calls as f64
        }
    }

    /// Calls that ended in `outcome`.
    pub fn outcome(&self, outcome: Outcome) -> u64 {
        Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.outcomes[i])
    }

    /// The budget floor's share of the amplification: `(reserve + min_retries_per_sec × duration) / calls`.
    /// One floor for the process: the number of scopes does not enter it.
    pub fn floor_share(config: &SimConfig) -> f64 {
        let b = &config.policy.budget;
        let floor = b.reserve() + b.min_retries_per_sec * config.duration.as_secs_f64();
        floor / (config.calls_per_sec * config.duration.as_secs_f64()).max(1.0)
    }
}

/// Runs the simulation. Fails only if the policy config is invalid.
pub fn run(config: &SimConfig) -> Result<SimReport, ConfigError> {
    let policy = Policy::new(config.policy.clone())?;
    let mut upstream = SplitMix64::new(config.seed);
    let mut report = SimReport::default();
    let total = (config.calls_per_sec * config.duration.as_secs_f64()).floor() as u64;
    let interval = Duration::from_secs_f64(1.0 / config.calls_per_sec.max(1e-9));
    // Min-heap of (time of the attempt's end, sequence, call index).
    let mut queue: BinaryHeap<Reverse<(Duration, u64, usize)>> = BinaryHeap::new();
    let mut calls: Vec<Option<Call>> = Vec::with_capacity(total as usize);
    let mut seq = 0u64;
    let scopes: Vec<String> = (0..config.scopes.max(1))
        .map(|i| format!("sim-{i}"))
        .collect();
    for i in 0..total {
        let start = interval.saturating_mul(i as u32);
        calls.push(None);
        queue.push(Reverse((start, seq, i as usize)));
        seq += 1;
    }
    report.calls = total;
    while let Some(Reverse((at, _, idx))) = queue.pop() {
        let call = match &mut calls[idx] {
            Some(call) => call,
            slot @ None => {
                let scope = &scopes[idx % scopes.len()];
                slot.insert(policy.start_call(scope, at, None, config.seed ^ (idx as u64 + 1)))
            }
        };
        // The attempt starts at `at` and its result is known one latency later.
        report.attempts += 1;
        let end = at + config.attempt_latency;
        let failed = upstream.unit() < config.failure_rate;
        let status = if failed { config.failure_status } else { 200 };
        let d = call.on_result(end, &AttemptResult::Response(ResponseHead::status(status)));
        if let Some(i) = DecisionKind::ALL.iter().position(|k| *k == d.kind) {
            report.decisions[i] += 1;
        }
        match (d.kind, d.delay, d.outcome) {
            (DecisionKind::Retry, Some(delay), _) => {
                queue.push(Reverse((end + delay, seq, idx)));
                seq += 1;
            }
            (_, _, Some(outcome)) => {
                if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
                    report.outcomes[i] += 1;
                }
                calls[idx] = None;
            }
            _ => {}
        }
    }
    report.budget_denied = policy.budgets().all().iter().map(|b| b.denied()).sum();
    Ok(report)
}
