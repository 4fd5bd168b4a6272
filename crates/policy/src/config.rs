//! Policy settings, their defaults (retry-semantics.md) and their validation.
//!
//! A setting outside its range is rejected when the policy is built, with an error that names the setting,
//! the value and the accepted range, so a bad flag or config file fails at start-up, not during an incident.

use std::time::Duration;

/// Everything that shapes retry decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Attempts per logical call, the first included (default 3: one try plus two retries).
    pub max_attempts: u32,
    /// Backoff base (default 500 ms).
    pub base: Duration,
    /// Backoff cap (default 8 s).
    pub cap: Duration,
    /// Longest server hint honoured (default 60 s); a longer one stops retrying.
    pub max_retry_after: Duration,
    /// Overall deadline per logical call (default 300 s); a caller's shorter deadline wins.
    pub deadline: Duration,
    /// Per-attempt timeout (for streams: time to first byte). `None`: bounded by the deadline only.
    pub per_attempt_timeout: Option<Duration>,
    /// The shared retry budget.
    pub budget: BudgetConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            max_attempts: 3,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            deadline: Duration::from_secs(300),
            per_attempt_timeout: None,
            budget: BudgetConfig::default(),
        }
    }
}

/// Settings of the shared budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Tokens each first attempt deposits (default 0.1: retries may add 10 % to traffic).
    pub ratio: f64,
    /// How long a deposit stays spendable (default 10 s).
    pub ttl: Duration,
    /// Retries per second always available to the whole process, whatever the traffic and the number of
    /// scopes (default 1).
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

/// A setting outside its accepted range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid retry setting `{setting}` = {value}: expected {expected}")]
pub struct ConfigError {
    /// The setting's name, as in flags and config files.
    pub setting: &'static str,
    /// The rejected value.
    pub value: String,
    /// The accepted range, in words.
    pub expected: &'static str,
}

impl ConfigError {
    pub(crate) fn new(
        setting: &'static str,
        value: impl std::fmt::Debug,
        expected: &'static str,
    ) -> Self {
        ConfigError {
            setting,
            value: format!("{value:?}"),
            expected,
        }
    }
}

/// Largest allowance accepted; more than this is a retry storm by configuration.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
const DAY: Duration = Duration::from_secs(86_400);

impl PolicyConfig {
    /// Checks every setting; the first out of range is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, setting, value: &dyn std::fmt::Debug, expected| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::new(setting, value, expected))
            }
        };
        check(
            (1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts),
            "max_attempts",
            &self.max_attempts,
            "an integer from 1 (no retries) to 100",
        )?;
        check(
            self.base > Duration::ZERO && self.base <= DAY,
            "base",
            &self.base,
            "a duration above 0 and at most 24h",
        )?;
        check(
            self.cap >= self.base && self.cap <= DAY,
            "cap",
            &self.cap,
            "a duration at least `base` and at most 24h",
        )?;
        check(
            self.max_retry_after > Duration::ZERO && self.max_retry_after <= DAY,
            "max_retry_after",
            &self.max_retry_after,
            "a duration above 0 and at most 24h",
        )?;
        check(
            self.deadline > Duration::ZERO && self.deadline <= DAY,
            "deadline",
            &self.deadline,
            "a duration above 0 and at most 24h",
        )?;
        if let Some(t) = self.per_attempt_timeout {
            check(
                t > Duration::ZERO && t <= DAY,
                "per_attempt_timeout",
                &t,
                "a duration above 0 and at most 24h",
            )?;
        }
        self.budget.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract_and_validate() {
        let c = PolicyConfig::default();
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.base, Duration::from_millis(500));
        assert_eq!(c.cap, Duration::from_secs(8));
        assert_eq!(c.max_retry_after, Duration::from_secs(60));
        assert_eq!(c.deadline, Duration::from_secs(300));
        assert_eq!(c.budget.ratio, 0.1);
        assert_eq!(c.budget.ttl, Duration::from_secs(10));
        assert_eq!(c.budget.min_retries_per_sec, 1.0);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn every_bound_is_inclusive_and_one_step_past_it_is_refused() {
        let ns = Duration::from_nanos(1);
        let ok = |c: PolicyConfig| assert_eq!(c.validate(), Ok(()), "{c:?}");
        let bad = |c: PolicyConfig, setting: &str| {
            assert_eq!(c.validate().map_err(|e| e.setting), Err(setting), "{c:?}")
        };
        let d = PolicyConfig::default;
        for n in [1, MAX_ATTEMPTS_LIMIT] {
            ok(PolicyConfig {
                max_attempts: n,
                ..d()
            });
        }
        ok(PolicyConfig {
            base: ns,
            cap: ns,
            ..d()
        });
        ok(PolicyConfig {
            base: DAY,
            cap: DAY,
            ..d()
        });
        bad(
            PolicyConfig {
                base: DAY + ns,
                cap: DAY + ns,
                ..d()
            },
            "base",
        );
        ok(PolicyConfig {
            cap: d().base,
            ..d()
        });
        bad(
            PolicyConfig {
                cap: d().base - ns,
                ..d()
            },
            "cap",
        );
        bad(
            PolicyConfig {
                cap: DAY + ns,
                ..d()
            },
            "cap",
        );
        ok(PolicyConfig {
            max_retry_after: ns,
            ..d()
        });
        ok(PolicyConfig {
            max_retry_after: DAY,
            ..d()
        });
        bad(
            PolicyConfig {
                max_retry_after: DAY + ns,
                ..d()
            },
            "max_retry_after",
        );
        ok(PolicyConfig {
            deadline: ns,
            ..d()
        });
        ok(PolicyConfig {
            deadline: DAY,
            ..d()
        });
        bad(
            PolicyConfig {
                deadline: DAY + ns,
                ..d()
            },
            "deadline",
        );
        ok(PolicyConfig {
            per_attempt_timeout: Some(ns),
            ..d()
        });
        ok(PolicyConfig {
            per_attempt_timeout: Some(DAY),
            ..d()
        });
        bad(
            PolicyConfig {
                per_attempt_timeout: Some(DAY + ns),
                ..d()
            },
            "per_attempt_timeout",
        );
        let b = BudgetConfig::default;
        for budget in [
            BudgetConfig { ratio: 0.0, ..b() },
            BudgetConfig { ratio: 1.0, ..b() },
            BudgetConfig {
                ttl: Duration::from_millis(100),
                ..b()
            },
            BudgetConfig {
                ttl: Duration::from_secs(3600),
                ..b()
            },
            BudgetConfig {
                min_retries_per_sec: 0.0,
                ..b()
            },
            BudgetConfig {
                min_retries_per_sec: 1_000_000.0,
                ..b()
            },
        ] {
            ok(PolicyConfig { budget, ..d() });
        }
        for (budget, setting) in [
            (
                BudgetConfig {
                    ttl: Duration::from_millis(100) - ns,
                    ..b()
                },
                "budget_ttl",
            ),
            (
                BudgetConfig {
                    ttl: Duration::from_secs(3600) + ns,
                    ..b()
                },
                "budget_ttl",
            ),
            (
                BudgetConfig {
                    min_retries_per_sec: 1_000_000.1,
                    ..b()
                },
                "budget_min_retries_per_sec",
            ),
            (
                BudgetConfig {
                    ratio: 1.000_001,
                    ..b()
                },
                "budget_ratio",
            ),
        ] {
            bad(PolicyConfig { budget, ..d() }, setting);
        }
    }

    #[test]
    fn invalid_settings_name_the_setting_and_range() {
        let cases: Vec<(PolicyConfig, &str)> = vec![
            (
                PolicyConfig {
                    max_attempts: 0,
                    ..Default::default()
                },
                "max_attempts",
            ),
            (
                PolicyConfig {
                    max_attempts: 101,
                    ..Default::default()
                },
                "max_attempts",
            ),
            (
                PolicyConfig {
                    base: Duration::ZERO,
                    ..Default::default()
                },
                "base",
            ),
            (
                PolicyConfig {
                    cap: Duration::from_millis(100),
                    ..Default::default()
                },
                "cap",
            ),
            (
                PolicyConfig {
                    max_retry_after: Duration::ZERO,
                    ..Default::default()
                },
                "max_retry_after",
            ),
            (
                PolicyConfig {
                    deadline: Duration::ZERO,
                    ..Default::default()
                },
                "deadline",
            ),
            (
                PolicyConfig {
                    per_attempt_timeout: Some(Duration::ZERO),
                    ..Default::default()
                },
                "per_attempt_timeout",
            ),
            (
                PolicyConfig {
                    budget: BudgetConfig {
                        ratio: 1.5,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "budget_ratio",
            ),
            (
                PolicyConfig {
                    budget: BudgetConfig {
                        ratio: -0.1,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "budget_ratio",
            ),
            (
                PolicyConfig {
                    budget: BudgetConfig {
                        ratio: f64::NAN,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "budget_ratio",
            ),
            (
                PolicyConfig {
                    budget: BudgetConfig {
                        ttl: Duration::from_millis(10),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "budget_ttl",
            ),
            (
                PolicyConfig {
                    budget: BudgetConfig {
                        min_retries_per_sec: -1.0,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "budget_min_retries_per_sec",
            ),
        ];
        for (config, setting) in cases {
            let err = config.validate().expect_err(setting);
            assert_eq!(err.setting, setting);
            let text = err.to_string();
            assert!(
                text.contains(setting) && text.contains("expected"),
                "{text}"
            );
        }
    }
}
