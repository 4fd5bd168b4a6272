//! The shared retry budget: why a per-call attempt limit is not enough.
//!
//! `max_attempts = 3` bounds one call, but during an outage *every* call retries, so the upstream sees 3× its
//! normal load exactly when it can least take it — a retry storm (Google SRE book, "Handling Overload"; tower's
//! `retry::budget`). A budget bounds retries across all calls of a *scope* (by default upstream base URL +
//! model): every first attempt deposits `ratio` tokens, every retry withdraws one, deposits expire after `ttl`,
//! and a floor of `min_retries_per_sec` is always available so that low-traffic clients can still retry.
//! Under a full outage the attempt rate is therefore at most `(1 + ratio) × request rate + min_retries_per_sec`.
//!
//! Implementation: a ring of [`SLOTS`] time slots covering `ttl`, each holding the net tokens (deposits minus
//! withdrawals) of its slice of time, in milli-tokens so the arithmetic is exact. Expired slots are zeroed as time
//! advances; the balance is the floor's reserve (`min_retries_per_sec × ttl`) plus the live slots. A withdrawal
//! recorded in a slot expires with it, which is how the floor refills. One short uncontended mutex per operation
//! keeps it correct across threads and well under a microsecond.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::ConfigError;

/// Number of time slots the `ttl` window is divided into.
pub const SLOTS: usize = 10;
const MILLI: i64 = 1000;

/// Settings of the shared budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Tokens each first attempt deposits (default 0.1: retries may add 10 % to traffic).
    pub ratio: f64,
    /// How long a deposit stays spendable (default 10 s).
    pub ttl: Duration,
    /// Retries per second always available, whatever the traffic (default 1).
    pub min_retries_per_sec: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.1,
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 1.0,
        }
    }
}

impl BudgetConfig {
    /// Checks the settings; errors name the flag-style setting (`budget_ratio`, …).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(ConfigError::new(
                "budget_ratio",
                self.ratio,
                "a number from 0.0 to 1.0",
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&self.ttl) {
            return Err(ConfigError::new(
                "budget_ttl",
                self.ttl,
                "a duration from 100ms to 1h",
            ));
        }
        if !(0.0..=1_000_000.0).contains(&self.min_retries_per_sec) {
            return Err(ConfigError::new(
                "budget_min_retries_per_sec",
                self.min_retries_per_sec,
                "a number from 0 to 1000000",
            ));
        }
        Ok(())
    }

    /// The floor's reserve: `min_retries_per_sec × ttl`, in tokens.
    pub fn reserve(&self) -> f64 {
        self.min_retries_per_sec * self.ttl.as_secs_f64()
    }
}

/// One scope's token bucket. Shared by all calls of the scope (`Arc<Budget>`).
#[derive(Debug)]
pub struct Budget {
    scope: String,
    deposit: i64,
    reserve: i64,
    slot_nanos: u128,
    ring: Mutex<Ring>,
    denied: AtomicU64,
}

#[derive(Debug)]
struct Ring {
    slots: [i64; SLOTS],
    /// Slot epoch (`now / slot length`) of the newest slot.
    epoch: u128,
    /// Sum of all slots, kept incrementally.
    sum: i64,
}

impl Budget {
    /// A budget for `scope`. The config must be valid ([`BudgetConfig::validate`]).
    pub fn new(scope: impl Into<String>, config: &BudgetConfig) -> Self {
        Budget {
            scope: scope.into(),
            deposit: (config.ratio * MILLI as f64).round() as i64,
            reserve: (config.reserve() * MILLI as f64).round() as i64,
            slot_nanos: (config.ttl.as_nanos() / SLOTS as u128).max(1),
            ring: Mutex::new(Ring {
                slots: [0; SLOTS],
                epoch: 0,
                sum: 0,
            }),
            denied: AtomicU64::new(0),
        }
    }

    /// The scope this budget belongs to.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// A first attempt is being made at `now`: deposit `ratio` tokens.
    pub fn deposit(&self, now: Duration) {
        self.with_ring(now, |ring, cur| {
            ring.slots[cur] += self.deposit;
            ring.sum += self.deposit;
        });
    }

    /// Pays for one retry at `now` if the balance allows it. A refusal is counted ([`Budget::denied`]).
    pub fn try_withdraw(&self, now: Duration) -> bool {
        let paid = self.with_ring(now, |ring, cur| {
            if self.reserve + ring.sum >= MILLI {
                ring.slots[cur] -= MILLI;
                ring.sum -= MILLI;
                true
            } else {
                false
            }
        });
        if !paid {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        paid
    }

    /// The balance at `now`, in retries (may be fractional; never below zero).
    pub fn balance(&self, now: Duration) -> f64 {
        let milli = self.with_ring(now, |ring, _| self.reserve + ring.sum);
        milli.max(0) as f64 / MILLI as f64
    }

    /// Retries this budget has denied since it was created.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    fn with_ring<T>(&self, now: Duration, f: impl FnOnce(&mut Ring, usize) -> T) -> T {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let epoch = now.as_nanos() / self.slot_nanos;
        if epoch > ring.epoch {
            // Time moved on: zero the slots that fell out of the window (all of them after a long pause).
            let steps = (epoch - ring.epoch).min(SLOTS as u128) as usize;
            for i in 1..=steps {
                let idx = ((ring.epoch + i as u128) % SLOTS as u128) as usize;
                ring.sum -= ring.slots[idx];
                ring.slots[idx] = 0;
            }
            ring.epoch = epoch;
        }
        // A clock that went backwards is treated as "still the newest slot".
        let cur = (ring.epoch % SLOTS as u128) as usize;
        f(&mut ring, cur)
    }
}

/// Scopes beyond this many share one overflow budget, so unbounded model names can't grow memory.
pub const MAX_SCOPES: usize = 1024;
/// The scope that absorbs scopes beyond [`MAX_SCOPES`].
pub const OVERFLOW_SCOPE: &str = "_other";

/// The process-wide set of budgets, one per scope.
#[derive(Debug)]
pub struct Budgets {
    config: BudgetConfig,
    map: Mutex<HashMap<String, Arc<Budget>>>,
}

impl Budgets {
    /// An empty set; budgets are created on first use.
    pub fn new(config: BudgetConfig) -> Self {
        Budgets {
            config,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The budget for `scope`, created on first use.
    pub fn get(&self, scope: &str) -> Arc<Budget> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get(scope) {
            return Arc::clone(b);
        }
        let key = if map.len() >= MAX_SCOPES {
            OVERFLOW_SCOPE
        } else {
            scope
        };
        let config = &self.config;
        Arc::clone(
            map.entry(key.to_owned())
                .or_insert_with(|| Arc::new(Budget::new(key, config))),
        )
    }

    /// Every budget created so far (for gauges and reports).
    pub fn all(&self) -> Vec<Arc<Budget>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = map.values().cloned().collect();
        all.sort_by(|a, b| a.scope.cmp(&b.scope));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn floor_is_available_from_the_start_and_refills() {
        let b = Budget::new("s", &BudgetConfig::default());
        assert_eq!(b.balance(secs(0.0)), 10.0, "reserve = 1/s × 10 s");
        for _ in 0..10 {
            assert!(b.try_withdraw(secs(0.5)));
        }
        assert!(!b.try_withdraw(secs(0.5)));
        assert_eq!(b.denied(), 1);
        assert_eq!(b.balance(secs(5.0)), 0.0);
        // the withdrawals expire with their slot after ttl
        assert_eq!(b.balance(secs(10.5)), 10.0);
    }

    #[test]
    fn deposits_pay_for_retries_and_expire() {
        let cfg = BudgetConfig {
            min_retries_per_sec: 0.0,
            ..Default::default()
        };
        let b = Budget::new("s", &cfg);
        for _ in 0..20 {
            b.deposit(secs(1.0));
        }
        assert!((b.balance(secs(1.0)) - 2.0).abs() < 1e-9);
        assert!(b.try_withdraw(secs(2.0)));
        assert!(b.try_withdraw(secs(2.0)));
        assert!(!b.try_withdraw(secs(2.0)));
        for _ in 0..20 {
            b.deposit(secs(3.0));
        }
        assert!((b.balance(secs(3.0)) - 2.0).abs() < 1e-9);
        // at 11.5 s the deposits of second 1 are gone but the withdrawals of second 2 still count
        assert!((b.balance(secs(11.5)) - 0.0).abs() < 1e-9);
        assert!((b.balance(secs(12.5)) - 2.0).abs() < 1e-9);
        assert_eq!(b.balance(secs(100.0)), 0.0);
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let b = Budget::new("s", &BudgetConfig::default());
        b.deposit(secs(50.0));
        assert!(b.try_withdraw(secs(10.0)));
        assert!((b.balance(secs(50.0)) - 9.1).abs() < 1e-9);
    }

    #[test]
    fn scopes_are_shared_and_bounded() {
        let budgets = Budgets::new(BudgetConfig::default());
        let a = budgets.get("a");
        assert!(Arc::ptr_eq(&a, &budgets.get("a")));
        for i in 0..MAX_SCOPES + 10 {
            budgets.get(&format!("scope-{i}"));
        }
        assert_eq!(budgets.all().len(), MAX_SCOPES + 1);
        assert_eq!(budgets.get("yet-another").scope(), OVERFLOW_SCOPE);
    }
}
