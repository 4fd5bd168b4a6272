//! The shared retry budget: why a per-call attempt limit is not enough.
//!
//! `max_attempts = 3` bounds one call, but during an outage *every* call retries, so the upstream sees 3× its
//! normal load exactly when it can least take it — a retry storm (Google SRE book, "Handling Overload"; tower's
//! `retry::budget`). A budget bounds retries across all calls of a *scope* (by default upstream base URL +
//! model): every first attempt deposits `ratio` tokens, every retry withdraws one, deposits expire after `ttl`.
//! A **floor** of `min_retries_per_sec` is always available so that low-traffic clients can still retry; it is
//! **one floor for the whole process** ([`Floor`], shared by every scope of a [`Budgets`]), so a caller that
//! cycles model names — each a new scope — cannot multiply it. Over any `ttl` window the process therefore
//! retries at most `ratio × first attempts (of the window and the one before) + min_retries_per_sec × ttl`,
//! and under a full outage its attempt rate is at most `(1 + ratio) × request rate + min_retries_per_sec`,
//! whatever the number of scopes.
//!
//! A retry is paid from its scope's live deposits first and the floor makes up the rest (fractions included),
//! so a scope with half a token of deposits and a floor with half a token left can pay one retry, as a single
//! bucket would.
//!
//! Implementation: each scope and the floor keep a ring of [`SLOTS`] time slots covering `ttl`, each slot holding
//! the net micro-tokens (deposits minus withdrawals) of its slice of time, so the arithmetic is exact integers.
//! Settings are converted to micro-tokens rounding *down*: the budget never grants more than `ratio` per first
//! attempt or more than `min_retries_per_sec × ttl` from the floor, by any fraction. Expired slots are zeroed
//! as time advances; a withdrawal recorded in a slot expires with it, which is how the floor refills. One short
//! uncontended mutex per ring keeps it correct across threads and well under a microsecond; a withdrawal takes
//! the scope's lock, then the floor's (always in that order, so they cannot deadlock). Deposits never touch the
//! floor.
//!
//! Must never: grant a retry that neither the scope's deposits nor the floor can pay; let one scope's deposits
//! pay another scope's retries; read a clock (time is passed in).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use crate::config::BudgetConfig;

/// Number of time slots the `ttl` window is divided into.
pub const SLOTS: usize = 10;
/// One token (one retry) in the rings' unit, micro-tokens.
const UNIT: i64 = 1_000_000;

/// How long one slot of a ring covers: `ttl / SLOTS`, at least 1 ns.
fn slot_nanos(config: &BudgetConfig) -> u128 {
    (config.ttl.as_nanos() / SLOTS as u128).max(1)
}

/// Tokens to micro-tokens, rounding down so that rounding can never grant more than the setting says.
fn micro_floor(tokens: f64) -> i64 {
    (tokens * UNIT as f64).floor() as i64
}

fn tokens(micro: i64) -> f64 {
    micro as f64 / UNIT as f64
}

// === impl Ring ===

/// Net micro-tokens per time slot over the last `ttl`.
#[derive(Debug)]
struct Ring {
    slots: [i64; SLOTS],
    /// Slot epoch (`now / slot length`) of the newest slot.
    epoch: u128,
    /// Sum of all slots, kept incrementally.
    sum: i64,
}

impl Ring {
    const fn new() -> Self {
        Ring {
            slots: [0; SLOTS],
            epoch: 0,
            sum: 0,
        }
    }

    /// Moves the ring to `epoch`, zeroing the slots that fell out of the window (all of them after a long
    /// pause). A clock that went backwards is treated as "still the newest slot".
    fn advance(&mut self, epoch: u128) {
        if epoch > self.epoch {
            let steps = (epoch - self.epoch).min(SLOTS as u128) as usize;
            for i in 1..=steps {
                let idx = ((self.epoch + i as u128) % SLOTS as u128) as usize;
                self.sum -= self.slots[idx];
                self.slots[idx] = 0;
            }
            self.epoch = epoch;
        }
    }

    /// Adds `micro` (negative for a withdrawal) to the newest slot.
    fn add(&mut self, micro: i64) {
        let cur = (self.epoch % SLOTS as u128) as usize;
        self.slots[cur] += micro;
        self.sum += micro;
    }

    /// The sum once the `k` oldest slots have expired (`k` ≤ [`SLOTS`]).
    fn sum_after_expiring(&self, k: usize) -> i64 {
        (1..=k).fold(self.sum, |sum, i| {
            sum - self.slots[((self.epoch + i as u128) % SLOTS as u128) as usize]
        })
    }
}

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Floor ===

/// The process-wide floor: `min_retries_per_sec × ttl` retries per `ttl` window, shared by every scope.
#[derive(Debug)]
pub struct Floor {
    reserve: i64,
    slot_nanos: u128,
    ring: Mutex<Ring>,
}

impl Floor {
    /// A full floor for `config` (which must be valid, [`BudgetConfig::validate`]).
    pub fn new(config: &BudgetConfig) -> Self {
        Floor {
            reserve: micro_floor(config.reserve()),
            slot_nanos: slot_nanos(config),
            ring: Mutex::new(Ring::new()),
        }
    }

    /// Retries the floor can still pay at `now` (never negative: the floor is only ever spent when it can pay).
    pub fn available(&self, now: Duration) -> f64 {
        let mut ring = lock(&self.ring);
        ring.advance(now.as_nanos() / self.slot_nanos);
        tokens(self.reserve + ring.sum)
    }
}

// === impl Budget ===

/// One scope's token bucket. Shared by all calls of the scope (`Arc<Budget>`); its floor is shared by all the
/// scopes of a [`Budgets`].
#[derive(Debug)]
pub struct Budget {
    scope: String,
    deposit: i64,
    slot_nanos: u128,
    ring: Mutex<Ring>,
    floor: Arc<Floor>,
    denied: AtomicU64,
}

/// A budget's balance at one instant, unclamped, split by who pays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    /// The scope's live deposits minus the retries they paid, in retries. Negative when retries paid by
    /// deposits that have since expired are still inside the window (a debt that expires with them); the floor
    /// does not pay it back.
    pub deposits: f64,
    /// What the process-wide floor can still pay, in retries (0 to `min_retries_per_sec × ttl`).
    pub floor: f64,
}

impl Balance {
    /// What a retry in this scope could spend now: the deposits (if positive) plus the floor.
    pub fn spendable(&self) -> f64 {
        self.deposits.max(0.0) + self.floor
    }
}

impl Budget {
    /// A budget for `scope` with a floor of its own (a process with a single scope). The config must be valid
    /// ([`BudgetConfig::validate`]). [`Budgets`] creates scopes that share one floor.
    pub fn new(scope: impl Into<String>, config: &BudgetConfig) -> Self {
        Budget::with_floor(scope, config, Arc::new(Floor::new(config)))
    }

    /// A budget for `scope` whose retries the shared `floor` helps pay.
    pub fn with_floor(scope: impl Into<String>, config: &BudgetConfig, floor: Arc<Floor>) -> Self {
        Budget {
            scope: scope.into(),
            deposit: micro_floor(config.ratio),
            slot_nanos: slot_nanos(config),
            ring: Mutex::new(Ring::new()),
            floor,
            denied: AtomicU64::new(0),
        }
    }

    /// The scope this budget belongs to.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// A first attempt is being made at `now`: deposit `ratio` tokens.
    pub fn deposit(&self, now: Duration) {
        let mut ring = lock(&self.ring);
        ring.advance(self.epoch(now));
        ring.add(self.deposit);
    }

    /// Pays for one retry at `now` if the balance allows it: from the scope's deposits first, the floor making
    /// up the rest. A refusal is counted ([`Budget::denied`]).
    pub fn try_withdraw(&self, now: Duration) -> bool {
        let epoch = self.epoch(now);
        let mut ring = lock(&self.ring);
        ring.advance(epoch);
        // The floor moves to the scope's newest slot, so a clock that went backwards for this scope charges
        // the floor in the same slot as the scope.
        let mut floor = lock(&self.floor.ring);
        floor.advance(ring.epoch);
        let own = ring.sum.clamp(0, UNIT);
        let rest = UNIT - own;
        let paid = self.floor.reserve + floor.sum >= rest;
        if paid {
            ring.add(-own);
            floor.add(-rest);
        } else {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        paid
    }

    /// The balance at `now`, in retries: what a retry could spend ([`Balance::spendable`]; never below zero).
    pub fn balance(&self, now: Duration) -> f64 {
        self.balance_detail(now).spendable()
    }

    /// The unclamped balance at `now`, split into the scope's deposits and the shared floor.
    pub fn balance_detail(&self, now: Duration) -> Balance {
        let epoch = self.epoch(now);
        let mut ring = lock(&self.ring);
        ring.advance(epoch);
        let mut floor = lock(&self.floor.ring);
        floor.advance(ring.epoch);
        Balance {
            deposits: tokens(ring.sum),
            floor: tokens(self.floor.reserve + floor.sum),
        }
    }

    /// How long from `now` until this scope can pay a retry again if no new traffic arrives (zero if it can
    /// now): the time until enough retries recorded in the window expire. `None` if expiry alone never gets
    /// there (no floor and no live deposits; only new first attempts can refill it). This is the value for a
    /// `retry-after` when a retry is refused; other scopes' retries may spend the floor first, so it is an
    /// estimate, not a reservation.
    pub fn refill_time(&self, now: Duration) -> Option<Duration> {
        let epoch = self.epoch(now);
        let mut ring = lock(&self.ring);
        ring.advance(epoch);
        let mut floor = lock(&self.floor.ring);
        floor.advance(ring.epoch);
        let can_pay = |k: usize| {
            let own = ring.sum_after_expiring(k).clamp(0, UNIT);
            self.floor.reserve + floor.sum_after_expiring(k) >= UNIT - own
        };
        let k = (0..=SLOTS).find(|&k| can_pay(k))?;
        if k == 0 {
            return Some(Duration::ZERO);
        }
        // The k-th oldest slot expires when the clock enters epoch `ring.epoch + k`.
        let at = (ring.epoch + k as u128) * self.slot_nanos;
        Some(nanos(at.saturating_sub(now.as_nanos())))
    }

    /// Retries this budget has denied since it was created.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    fn epoch(&self, now: Duration) -> u128 {
        now.as_nanos() / self.slot_nanos
    }
}

fn nanos(n: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(n / NANOS_PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (n % NANOS_PER_SEC) as u32)
}

// === impl Budgets ===

/// Scopes beyond this many share one overflow budget, so unbounded model names can't grow memory.
pub const MAX_SCOPES: usize = 1024;
/// The scope that absorbs scopes beyond [`MAX_SCOPES`].
pub const OVERFLOW_SCOPE: &str = "_other";

/// The process-wide set of budgets, one per scope, all sharing one [`Floor`].
#[derive(Debug)]
pub struct Budgets {
    config: BudgetConfig,
    floor: Arc<Floor>,
    map: Mutex<HashMap<String, Arc<Budget>>>,
}

impl Budgets {
    /// An empty set with a full floor; budgets are created on first use.
    pub fn new(config: BudgetConfig) -> Self {
        Budgets {
            config,
            floor: Arc::new(Floor::new(&config)),
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
        let (config, floor) = (&self.config, &self.floor);
        Arc::clone(
            map.entry(key.to_owned())
                .or_insert_with(|| Arc::new(Budget::with_floor(key, config, Arc::clone(floor)))),
        )
    }

    /// The floor every scope shares.
    pub fn floor(&self) -> &Arc<Floor> {
        &self.floor
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
    fn floor_never_grants_more_than_its_reserve() {
        // issue 8's minimal case: 1.2499… × 4 s = 4.9998 retries, which rounding once turned into 5
        let cfg = BudgetConfig {
            ratio: 0.0,
            ttl: Duration::from_secs(4),
            min_retries_per_sec: 1.249_95,
        };
        let b = Budget::new("s", &cfg);
        let granted = (0..10).filter(|_| b.try_withdraw(secs(1.0))).count();
        assert_eq!(granted, 4);
        assert!((b.balance(secs(1.0)) - 0.9998).abs() < 1e-9);
        // a deposit rounds down too: 0.0000009 of a token is nothing
        let cfg = BudgetConfig {
            ratio: 0.000_000_9,
            min_retries_per_sec: 0.0,
            ..BudgetConfig::default()
        };
        let b = Budget::new("s", &cfg);
        for _ in 0..1000 {
            b.deposit(secs(1.0));
        }
        assert_eq!(b.balance(secs(1.0)), 0.0);
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
        assert_eq!(
            b.balance_detail(secs(11.5)),
            Balance {
                deposits: 0.0,
                floor: 0.0
            }
        );
        assert!((b.balance(secs(12.5)) - 2.0).abs() < 1e-9);
        assert_eq!(b.balance(secs(100.0)), 0.0);
    }

    #[test]
    fn expired_deposits_leave_a_debt_the_floor_does_not_pay() {
        let b = Budget::new("s", &BudgetConfig::default());
        for _ in 0..10 {
            b.deposit(secs(0.0)); // 1 token
        }
        assert!(b.try_withdraw(secs(5.0)), "paid by the deposits");
        let d = b.balance_detail(secs(10.5));
        assert_eq!((d.deposits, d.floor), (-1.0, 10.0), "{d:?}");
        assert_eq!(b.balance(secs(10.5)), 10.0);
    }

    #[test]
    fn deposits_and_floor_pay_a_retry_together() {
        let cfg = BudgetConfig {
            ratio: 0.5,
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 0.15, // 1.5 retries per window
        };
        let b = Budget::new("s", &cfg);
        b.deposit(secs(0.0)); // 0.5
        assert!(b.try_withdraw(secs(0.0)), "0.5 deposits + 0.5 floor");
        assert!(b.try_withdraw(secs(0.0)), "1.0 floor");
        assert!(!b.try_withdraw(secs(0.0)), "0 deposits + 0 floor");
        assert_eq!(
            b.balance_detail(secs(0.0)),
            Balance {
                deposits: 0.0,
                floor: 0.0
            }
        );
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let b = Budget::new("s", &BudgetConfig::default());
        b.deposit(secs(50.0));
        assert!(b.try_withdraw(secs(10.0)));
        assert!((b.balance(secs(50.0)) - 9.1).abs() < 1e-9);
    }

    #[test]
    fn refill_time_is_when_the_oldest_retries_expire() {
        let b = Budget::new("s", &BudgetConfig::default()); // slots of 1 s
        assert_eq!(b.refill_time(secs(0.0)), Some(Duration::ZERO));
        for _ in 0..4 {
            assert!(b.try_withdraw(secs(2.5)));
        }
        for _ in 0..6 {
            assert!(b.try_withdraw(secs(7.2)));
        }
        assert!(!b.try_withdraw(secs(8.0)));
        // the four retries of slot 2 (2 s..3 s) expire when the clock reaches 12 s
        assert_eq!(b.refill_time(secs(8.0)), Some(Duration::from_secs(4)));
        assert_eq!(b.refill_time(secs(11.75)), Some(Duration::from_millis(250)));
        assert_eq!(b.refill_time(secs(12.0)), Some(Duration::ZERO));
        assert!(b.try_withdraw(secs(12.0)));

        let none = Budget::new(
            "s",
            &BudgetConfig {
                min_retries_per_sec: 0.0,
                ..BudgetConfig::default()
            },
        );
        assert_eq!(
            none.refill_time(secs(1.0)),
            None,
            "only new traffic refills it"
        );
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

    #[test]
    fn cycling_scopes_cannot_multiply_the_floor() {
        let budgets = Budgets::new(BudgetConfig::default()); // floor: 10 retries per 10 s
        let granted = (0..5000)
            .filter(|i| budgets.get(&format!("model-{i}")).try_withdraw(secs(1.0)))
            .count();
        assert_eq!(granted, 10);
        assert_eq!(budgets.floor().available(secs(1.0)), 0.0);
        // each scope's own deposits still pay for that scope alone
        let busy = budgets.get("busy");
        for _ in 0..10 {
            busy.deposit(secs(2.0));
        }
        assert!(!budgets.get("model-1").try_withdraw(secs(2.0)));
        assert!(busy.try_withdraw(secs(2.0)));
        assert!(!busy.try_withdraw(secs(2.0)));
        assert_eq!(budgets.floor().available(secs(11.0)), 10.0, "refilled");
    }
}
