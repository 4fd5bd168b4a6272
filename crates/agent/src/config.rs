//! Settings from three layers — flag or environment (clap), config file, default — and their validation.
//!
//! Every setting a user can get wrong is reported as a [`UsageError`] (exit code 2) that names where the
//! value came from (`--budget-ratio`, `RETRYBUDGET_BUDGET_RATIO` or config key `budget_ratio` in FILE) and the
//! accepted range. This module never prints a secret: an API key is read into a [`SecretString`] and only the
//! *name* of its variable ever appears in a message.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use retrybudget_policy::{BudgetConfig, ConfigError, PolicyConfig};
use secrecy::SecretString;
use serde::Deserialize;

use crate::cli::{RetryArgs, parse_duration, parse_size};

/// A mistake in the command line, the environment or the config file: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    Flag,
    Env,
    File,
    Default,
}

/// A resolved setting and its provenance.
#[derive(Debug, Clone)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) src: Src,
}

/// The layers of one subcommand: clap's matches (flag or env) and the config file's path.
pub(crate) struct Layers<'a> {
    matches: &'a ArgMatches,
    file: Option<&'a Path>,
}

impl<'a> Layers<'a> {
    pub(crate) fn new(matches: &'a ArgMatches, file: Option<&'a Path>) -> Self {
        Layers { matches, file }
    }

    /// Flag/env value if given, else the file's, else none.
    pub(crate) fn pick<T>(&self, id: &str, cli: Option<T>, file: Option<T>) -> Option<Setting<T>> {
        if let Some(value) = cli {
            let src = match self.matches.value_source(id) {
                Some(ValueSource::EnvVariable) => Src::Env,
                _ => Src::Flag,
            };
            return Some(Setting { value, src });
        }
        file.map(|value| Setting {
            value,
            src: Src::File,
        })
    }

    /// Like [`Layers::pick`], falling back to `default`.
    pub(crate) fn pick_or<T>(
        &self,
        id: &str,
        cli: Option<T>,
        file: Option<T>,
        default: T,
    ) -> Setting<T> {
        self.pick(id, cli, file).unwrap_or(Setting {
            value: default,
            src: Src::Default,
        })
    }

    /// Names the place a setting came from, e.g. `--budget-ratio` or config key `budget_ratio` in FILE.
    pub(crate) fn describe(&self, id: &str, src: Src) -> String {
        match src {
            Src::Flag => flag_name(id),
            Src::Env => format!("{} (environment)", env_name(id)),
            Src::File => format!(
                "config key `{id}` in {}",
                self.file
                    .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string())
            ),
            Src::Default => format!("{} (default)", flag_name(id)),
        }
    }

    /// All the names a setting can be given by, for "missing" messages.
    pub(crate) fn all_names(&self, id: &str) -> String {
        format!(
            "{} (or {}, or `{id}` in the config file)",
            flag_name(id),
            env_name(id)
        )
    }
}

pub(crate) fn flag_name(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

pub(crate) fn env_name(id: &str) -> String {
    format!("RETRYBUDGET_{}", id.to_ascii_uppercase())
}

// === config file ===

/// Reads the config file into the subcommand's file struct (`deny_unknown_fields`), or its default without one.
pub(crate) fn load_file<T: for<'de> Deserialize<'de> + Default>(
    path: Option<&Path>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read config file {} (--config): {e}",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        usage(format!(
            "invalid config file {}: {}\nkeys are the subcommand's flag names with `_`; see --help",
            path.display(),
            e.to_string().trim_end()
        ))
    })
}

/// A size in a config file: a number of bytes or a string with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum FileSize {
    Bytes(u64),
    Text(String),
}

/// Parses a duration given in the config file, naming the key on error.
pub(crate) fn file_duration(
    file: Option<&Path>,
    key: &str,
    value: Option<String>,
) -> anyhow::Result<Option<Duration>> {
    value
        .map(|v| {
            parse_duration(&v).map_err(|e| {
                usage(format!(
                    "invalid value {v:?} for {}: {e}",
                    file_key(file, key)
                ))
            })
        })
        .transpose()
}

/// Parses a socket address given in the config file, naming the key on error.
pub(crate) fn file_addr(
    file: Option<&Path>,
    key: &str,
    value: Option<String>,
) -> anyhow::Result<Option<SocketAddr>> {
    value
        .map(|v| {
            v.trim().parse::<SocketAddr>().map_err(|e| {
                usage(format!(
                    "invalid value {v:?} for {}: {e}; expected IP:PORT such as 127.0.0.1:8787",
                    file_key(file, key)
                ))
            })
        })
        .transpose()
}

/// Parses a size given in the config file, naming the key on error.
pub(crate) fn file_size(
    file: Option<&Path>,
    key: &str,
    value: Option<FileSize>,
) -> anyhow::Result<Option<u64>> {
    value
        .map(|v| match v {
            FileSize::Bytes(n) => Ok(n),
            FileSize::Text(t) => parse_size(&t)
                .map_err(|e| usage(format!("invalid value for {}: {e}", file_key(file, key)))),
        })
        .transpose()
}

fn file_key(file: Option<&Path>, key: &str) -> String {
    format!(
        "config key `{key}` in {}",
        file.map_or_else(|| "the config file".to_owned(), |p| p.display().to_string())
    )
}

/// Checks `lo <= value <= hi`, naming the setting's source and the range.
pub(crate) fn check_range<T: PartialOrd + fmt::Debug>(
    layers: &Layers<'_>,
    id: &str,
    s: &Setting<T>,
    lo: T,
    hi: T,
    expected: &str,
) -> anyhow::Result<()> {
    if s.value < lo || s.value > hi {
        return Err(usage(format!(
            "invalid value {:?} for {}: expected {expected}",
            s.value,
            layers.describe(id, s.src)
        )));
    }
    Ok(())
}

// === retry policy ===

/// The retry flags as they may appear in a config file.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RetryFile {
    pub(crate) max_attempts: Option<u32>,
    pub(crate) deadline: Option<String>,
    pub(crate) per_attempt_timeout: Option<String>,
    pub(crate) budget_ratio: Option<f64>,
    pub(crate) budget_min_per_sec: Option<f64>,
    pub(crate) budget_ttl: Option<String>,
}

/// Merges the retry layers into a validated [`PolicyConfig`]; a value out of range names its flag or key.
pub(crate) fn policy_config(
    layers: &Layers<'_>,
    cli: &RetryArgs,
    file: RetryFile,
    path: Option<&Path>,
) -> anyhow::Result<PolicyConfig> {
    let d = PolicyConfig::default();
    let max_attempts = layers.pick_or(
        "max_attempts",
        cli.max_attempts,
        file.max_attempts,
        d.max_attempts,
    );
    let deadline = layers.pick_or(
        "deadline",
        cli.deadline,
        file_duration(path, "deadline", file.deadline)?,
        d.deadline,
    );
    let per_attempt_timeout = layers.pick(
        "per_attempt_timeout",
        cli.per_attempt_timeout,
        file_duration(path, "per_attempt_timeout", file.per_attempt_timeout)?,
    );
    let ratio = layers.pick_or(
        "budget_ratio",
        cli.budget_ratio,
        file.budget_ratio,
        d.budget.ratio,
    );
    let min = layers.pick_or(
        "budget_min_per_sec",
        cli.budget_min_per_sec,
        file.budget_min_per_sec,
        d.budget.min_retries_per_sec,
    );
    let ttl = layers.pick_or(
        "budget_ttl",
        cli.budget_ttl,
        file_duration(path, "budget_ttl", file.budget_ttl)?,
        d.budget.ttl,
    );
    let config = PolicyConfig {
        max_attempts: max_attempts.value,
        deadline: deadline.value,
        per_attempt_timeout: per_attempt_timeout.as_ref().map(|s| s.value),
        budget: BudgetConfig {
            ratio: ratio.value,
            ttl: ttl.value,
            min_retries_per_sec: min.value,
        },
        ..d
    };
    config.validate().map_err(|e: ConfigError| {
        // The policy names its settings; map them to this binary's flags and say where the value came from.
        let (id, src) = match e.setting {
            "max_attempts" => ("max_attempts", max_attempts.src),
            "deadline" => ("deadline", deadline.src),
            "per_attempt_timeout" => (
                "per_attempt_timeout",
                per_attempt_timeout.as_ref().map_or(Src::Default, |s| s.src),
            ),
            "budget_ratio" => ("budget_ratio", ratio.src),
            "budget_ttl" => ("budget_ttl", ttl.src),
            "budget_min_retries_per_sec" => ("budget_min_per_sec", min.src),
            other => (other, Src::Default),
        };
        let place = match e.setting {
            "base" | "cap" | "max_retry_after" => format!("retry setting `{id}`"),
            _ => layers.describe(id, src),
        };
        usage(format!(
            "invalid value {} for {place}: expected {}",
            e.value, e.expected
        ))
    })?;
    Ok(config)
}

// === secrets ===

/// Reads the API key from the variable *named* by `--api-key-env`. The key is never printed; a missing variable
/// is a usage error that names the variable, not its value.
pub(crate) fn api_key(
    layers: &Layers<'_>,
    setting: Option<Setting<String>>,
) -> anyhow::Result<Option<SecretString>> {
    let Some(s) = setting else {
        return Ok(None);
    };
    let name = s.value.trim();
    let place = layers.describe("api_key_env", s.src);
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(usage(format!(
            "invalid value {:?} for {place}: expected the NAME of an environment variable",
            s.value
        )));
    }
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(SecretString::from(v.trim().to_owned()))),
        Ok(_) => Err(usage(format!(
            "{place} names {name}, which is empty: put the API key in {name}, or drop the setting"
        ))),
        Err(_) => Err(usage(format!(
            "{place} names {name}, which is not set: export {name} with the API key, or drop the setting"
        ))),
    }
}

/// Reads a secret (e.g. the caller token) from the variable *named* by setting `id`; like [`api_key`], only
/// the variable's name ever appears in a message.
pub(crate) fn secret_from_env(
    layers: &Layers<'_>,
    id: &str,
    setting: Option<Setting<String>>,
) -> anyhow::Result<Option<SecretString>> {
    let Some(s) = setting else {
        return Ok(None);
    };
    let name = s.value.trim();
    let place = layers.describe(id, s.src);
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(usage(format!(
            "invalid value {:?} for {place}: expected the NAME of an environment variable",
            s.value
        )));
    }
    match std::env::var(name) {
        Ok(v) if v.trim().len() >= 16 => Ok(Some(SecretString::from(v.trim().to_owned()))),
        Ok(_) => Err(usage(format!(
            "{place} names {name}, which holds fewer than 16 characters: put a long random token in {name} \
             (e.g. `openssl rand -hex 32`)"
        ))),
        Err(_) => Err(usage(format!(
            "{place} names {name}, which is not set: export {name} with the caller token, or drop the setting"
        ))),
    }
}

/// A URL safe to print: no userinfo, secret query values replaced (anything unparsable is not printed).
pub(crate) fn printable_url(raw: &str) -> String {
    retrybudget_telemetry::redact::redact_url(raw).unwrap_or_else(|| "<unparsable URL>".to_owned())
}

/// Creates the parent directory's absence check for files we write, so the error says what to do.
pub(crate) fn check_writable_parent(
    layers: &Layers<'_>,
    id: &str,
    s: &Setting<PathBuf>,
) -> anyhow::Result<()> {
    let parent = s.value.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent
        && !p.is_dir()
    {
        return Err(usage(format!(
            "invalid value {} for {}: directory {} does not exist",
            s.value.display(),
            layers.describe(id, s.src),
            p.display()
        )));
    }
    Ok(())
}

// === fuzzing hook ===

/// Not API: the fuzz target `config` (`fuzz/`) drives the config-file path through this. It parses `text` as
/// a config file the way every subcommand does (TOML into a typed struct, the error message built as for a
/// user), reads the shared keys with their leaf parsers (durations, sizes, addresses) and merges the retry keys
/// into a validated [`PolicyConfig`] exactly as `proxy` does with no flags given. It must never panic, whatever
/// the text; `Err` is a usage message.
#[doc(hidden)]
pub fn fuzz_config_text(text: &str) -> Result<(), String> {
    use clap::{Args as _, FromArgMatches as _};
    let path = Path::new("fuzz.toml");
    let table: toml::Table = toml::from_str(text)
        .map_err(|e| format!("invalid config file: {}", e.to_string().trim_end()))?;
    let string = |key: &str| table.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    for key in [
        "deadline",
        "per_attempt_timeout",
        "budget_ttl",
        "interval",
        "timeout",
    ] {
        let _ = file_duration(Some(path), key, string(key));
    }
    let _ = file_addr(Some(path), "listen", string("listen"));
    let size = table.get("max_body").and_then(|v| match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok().map(FileSize::Bytes),
        toml::Value::String(s) => Some(FileSize::Text(s.clone())),
        _ => None,
    });
    let _ = file_size(Some(path), "max_body", size);
    let retry: RetryFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let matches = RetryArgs::augment_args(clap::Command::new("fuzz"))
        .try_get_matches_from(["fuzz"])
        .map_err(|e| e.to_string())?;
    let cli = RetryArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let layers = Layers::new(&matches, Some(path));
    policy_config(&layers, &cli, retry, Some(path))
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod fuzz_hook_tests {
    #![allow(clippy::unwrap_used)]
    use super::fuzz_config_text;

    #[test]
    fn the_fuzz_hook_validates_like_the_proxy() {
        assert_eq!(
            fuzz_config_text("max_attempts = 4\nbudget_ttl = \"5s\"\nlisten = \"x\""),
            Ok(())
        );
        let err = fuzz_config_text("budget_ratio = 2.0").unwrap_err();
        assert!(
            err.contains("budget_ratio") && err.contains("fuzz.toml"),
            "{err}"
        );
        assert!(fuzz_config_text("budget_ttl = \"soon\"").is_err());
        assert!(fuzz_config_text("max_attempts = [").is_err());
    }
}
