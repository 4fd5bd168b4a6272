//! `retrybudget smoke`: the runbook's smoke-test workflow as one command with an exit code for CI.
//!
//! Three checks, each a list of assertions that pass or fail with a reason:
//! 1. **happy path** — one minimal documented chat completion against `--base-url`; passes only on a 2xx with a
//!    usable (non-empty) choice, recorded as evidence;
//! 2. **validation path** — a controlled invalid request (`messages: []`, rejected by every OpenAI-compatible
//!    API) must fail as a client error (4xx) after exactly one attempt, `stop_non_retryable` /
//!    `failed_without_retry`: validation failures are never retried;
//! 3. **retry path** — against a built-in fake upstream answering 503 always: exactly `max_attempts` attempts,
//!    consecutive attempts at least `base/2` apart (measured where the requests arrived), then a stop with
//!    `failed_after_retry` recorded.
//!
//! The evidence rows come from a per-run evidence file in a temporary directory (removed at exit). The smoke
//! test must never print or write the API key, a prompt or a response body, and it asserts nothing about
//! price, quota, rate limits, latency objectives, uptime or billing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use clap::ArgMatches;
use retrybudget_client::{ChatError, ChatRequest, Client, ClientConfig};
use retrybudget_fake_upstream::{FakeUpstream, Step};
use retrybudget_policy::{DecisionKind, Outcome, PolicyConfig};
use retrybudget_telemetry::{EvidenceRecord, Telemetry};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::SmokeArgs;
use crate::common::{init_telemetry, table};
use crate::config::{Layers, check_writable_parent, load_file, printable_url, usage};

/// The runbook's evidence fields, in its order (plus `decision`, which the assertions refer to).
pub(crate) use retrybudget_telemetry::record::RUNBOOK_COLUMNS as EVIDENCE_COLUMNS;

/// What the smoke test does not assert, by the runbook.
pub(crate) const NOT_ASSERTED: [&str; 6] = [
    "price",
    "quota",
    "rate limits",
    "latency objectives",
    "uptime",
    "billing",
];

/// The fixed, content-free prompt of the happy path.
const HAPPY_PROMPT: &str = "Reply with OK.";
/// Backoff base of the retry check: short, so the check takes about a second.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Attempts allowed in the retry check.
const RETRY_ATTEMPTS: u32 = 3;
const SELF_TEST_MODEL: &str = "fake-model";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmokeFile {
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    report: Option<PathBuf>,
    self_test: Option<bool>,
}

/// One assertion's result.
#[derive(Debug, Clone)]
struct Assertion {
    what: &'static str,
    passed: bool,
    detail: String,
}

fn assert(what: &'static str, passed: bool, detail: impl Into<String>) -> Assertion {
    Assertion {
        what,
        passed,
        detail: detail.into(),
    }
}

/// One evidence row, read through the record type (the one owner of the field list).
type Row = EvidenceRecord<'static>;

/// One check: its assertions and the evidence rows of its attempts.
#[derive(Debug)]
struct Check {
    name: &'static str,
    title: String,
    assertions: Vec<Assertion>,
    evidence: Vec<Row>,
}

impl Check {
    fn passed(&self) -> bool {
        !self.assertions.is_empty() && self.assertions.iter().all(|a| a.passed)
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "title": self.title,
            "passed": self.passed(),
            "assertions": self.assertions.iter().map(|a| json!({
                "assertion": a.what, "passed": a.passed, "detail": a.detail,
            })).collect::<Vec<_>>(),
            "evidence": self.evidence,
        })
    }

    fn print(&self) {
        println!("== {}: {}", self.name, self.title);
        if self.evidence.is_empty() {
            println!("(no evidence rows)");
        } else {
            let rows: Vec<Value> = self
                .evidence
                .iter()
                .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                .collect();
            print!("{}", table(&EVIDENCE_COLUMNS, &rows));
        }
        for a in &self.assertions {
            println!(
                "  {}  {}: {}",
                if a.passed { "PASS" } else { "FAIL" },
                a.what,
                a.detail
            );
        }
        let failed = self.assertions.iter().filter(|a| !a.passed).count();
        if self.passed() {
            println!("PASS {} ({} assertions)", self.name, self.assertions.len());
        } else {
            println!(
                "FAIL {} ({failed} of {} assertions failed)",
                self.name,
                self.assertions.len()
            );
        }
        println!();
    }
}

/// Reads the evidence lines written since the last read.
struct EvidenceTail {
    path: PathBuf,
    seen: usize,
}

impl EvidenceTail {
    /// A line that is not an evidence record is an error of the run: this process's own writer wrote it.
    fn take(&mut self, telemetry: &Telemetry) -> anyhow::Result<Vec<Row>> {
        telemetry.flush_evidence();
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let new = lines
            .iter()
            .enumerate()
            .skip(self.seen)
            .map(|(i, l)| {
                EvidenceRecord::parse(l)
                    .map(EvidenceRecord::into_owned)
                    .with_context(|| format!("evidence line {} of this run", i + 1))
            })
            .collect::<anyhow::Result<_>>()?;
        self.seen = lines.len();
        Ok(new)
    }
}

/// Everything the checks share.
struct Ctx {
    telemetry: Telemetry,
    tail: EvidenceTail,
    key: Option<SecretString>,
    model: String,
}

/// Which upstream a check talks to: only the operator's own gets the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The `--base-url` the operator named: the key (if any) is sent.
    Operator,
    /// A fake upstream started by this process: never sent a key, whatever was configured.
    BuiltInFake,
}

impl Ctx {
    fn client(
        &self,
        base_url: &str,
        route: &str,
        policy: PolicyConfig,
        target: Target,
    ) -> anyhow::Result<Client> {
        let mut config = ClientConfig::new(base_url);
        config.route_name = route.to_owned();
        config.policy = policy;
        config.api_key = match target {
            Target::Operator => self.key.clone(),
            Target::BuiltInFake => None,
        };
        Client::new(config, self.telemetry.clone()).map_err(|e| usage(format!("{e} (--base-url)")))
    }

    /// Assertions every check makes about its evidence: one row per attempt ending in a terminal record, and
    /// no credential anywhere in it.
    fn evidence_assertions(&self, rows: &[Row], attempts: Option<u32>) -> Vec<Assertion> {
        let mut out = Vec::new();
        let indexes: Vec<u32> = rows.iter().map(|r| r.retry_attempt).collect();
        let sequential =
            !rows.is_empty() && indexes.iter().enumerate().all(|(i, a)| *a as usize == i);
        let terminal_rows = rows.iter().filter(|r| r.terminal_outcome.is_some()).count();
        let last_terminal = rows.last().is_some_and(|r| r.terminal_outcome.is_some());
        let count_ok = attempts.is_none_or(|a| a as usize == rows.len());
        out.push(assert(
            "one evidence row per attempt",
            sequential && terminal_rows == 1 && last_terminal && count_ok,
            format!(
                "{} row(s), retry_attempt {:?}, {} terminal row(s){}",
                rows.len(),
                indexes,
                terminal_rows,
                attempts
                    .map(|a| format!(", {a} attempt(s) made"))
                    .unwrap_or_default()
            ),
        ));
        let low_cardinality = rows.iter().all(|r| {
            r.http_route.starts_with("/v1/")
                && !r.http_route.contains('?')
                && !r.http_method.is_empty()
        });
        out.push(assert(
            "low-cardinality HTTP evidence",
            low_cardinality && !rows.is_empty(),
            "http_method and a route template (no query, no ids) on every row",
        ));
        if let Some(key) = &self.key {
            let secret = key.expose_secret();
            let leaked = rows.iter().any(|r| {
                serde_json::to_string(r)
                    .unwrap_or_default()
                    .contains(secret)
            });
            out.push(assert(
                "no credential in the evidence",
                !leaked,
                if leaked {
                    "the API key appears in an evidence row"
                } else {
                    "the API key appears in no evidence row"
                },
            ));
        }
        out
    }
}

fn status_of(result: &Result<retrybudget_client::ChatResponse, ChatError>) -> Option<u16> {
    match result {
        Ok(_) => Some(200),
        Err(ChatError::Status { status, .. }) => Some(*status),
        Err(ChatError::Call(e)) => e.last_status,
        Err(ChatError::Decode(_)) => None,
    }
}

fn attempts_of(result: &Result<retrybudget_client::ChatResponse, ChatError>) -> Option<u32> {
    match result {
        Err(ChatError::Status { attempts, .. }) => Some(*attempts),
        Err(ChatError::Call(e)) => Some(e.attempts),
        _ => None,
    }
}

fn outcome_of(result: &Result<retrybudget_client::ChatResponse, ChatError>) -> Option<Outcome> {
    match result {
        Err(ChatError::Status { outcome, .. }) => Some(*outcome),
        Err(ChatError::Call(e)) => Some(e.outcome),
        _ => None,
    }
}

/// A field of a row for a detail message: `-` when the row or the field is absent.
fn shown<'a>(row: Option<&'a Row>, field: impl FnOnce(&'a Row) -> Option<&'a str>) -> &'a str {
    row.and_then(field).unwrap_or("-")
}

/// The row's terminal outcome, as the policy names it.
fn terminal_outcome(row: Option<&Row>) -> Option<Outcome> {
    Outcome::from_name(row?.terminal_outcome.as_deref()?)
}

/// The built-in fake must never have been handed a credential: it is not the operator's upstream.
fn no_credential_sent(recorded: &[retrybudget_fake_upstream::RecordedRequest]) -> Assertion {
    let with_credentials = recorded
        .iter()
        .filter(|r| {
            retrybudget_fake_upstream::CREDENTIAL_HEADERS
                .iter()
                .any(|h| r.header(h).is_some())
        })
        .count();
    assert(
        "no credential sent to the built-in fake upstream",
        !recorded.is_empty() && with_credentials == 0,
        format!(
            "{with_credentials} of {} request(s) carried a credential header",
            recorded.len()
        ),
    )
}

// === the checks ===

async fn happy_path(
    ctx: &mut Ctx,
    base_url: &str,
    route: &str,
    target: Target,
) -> anyhow::Result<Check> {
    let policy = PolicyConfig {
        deadline: Duration::from_secs(60),
        per_attempt_timeout: Some(Duration::from_secs(30)),
        ..PolicyConfig::default()
    };
    let client = ctx.client(base_url, route, policy, target)?;
    let request = ChatRequest::user(ctx.model.clone(), HAPPY_PROMPT);
    let result = client.chat(&request).await;
    let rows = ctx.tail.take(&ctx.telemetry)?;
    let last = rows.last();
    let mut assertions = Vec::new();
    let (ok, detail) = match &result {
        Ok(resp) => {
            let text_len = resp.text().map(str::trim).map_or(0, str::len);
            if text_len > 0 {
                (
                    true,
                    format!(
                        "HTTP 2xx with a usable choice ({text_len} characters of text; content not shown)"
                    ),
                )
            } else {
                (
                    false,
                    "HTTP 2xx but the first choice has no text".to_owned(),
                )
            }
        }
        Err(e) => (false, e.to_string()),
    };
    assertions.push(assert(
        "documented success with a usable result",
        ok,
        detail,
    ));
    let client_result = last.and_then(|r| r.client_result.as_deref());
    let outcome = terminal_outcome(last);
    assertions.push(assert(
        "terminal record says success",
        matches!(outcome, Some(Outcome::Success | Outcome::SuccessAfterRetry))
            && client_result == outcome.map(Outcome::client_result),
        format!(
            "terminal_outcome={}, client_result={}",
            shown(last, |r| r.terminal_outcome.as_deref()),
            client_result.unwrap_or("-")
        ),
    ));
    assertions.extend(ctx.evidence_assertions(&rows, attempts_of(&result)));
    Ok(Check {
        name: "happy_path",
        title: format!(
            "one minimal chat completion (model {}) against {}",
            ctx.model,
            printable_url(base_url)
        ),
        assertions,
        evidence: rows,
    })
}

/// An invalid request every OpenAI-compatible API rejects: no messages at all.
fn invalid_request(model: &str) -> ChatRequest {
    let mut request = ChatRequest::user(model, HAPPY_PROMPT);
    request.messages.clear();
    request
}

async fn validation_path(
    ctx: &mut Ctx,
    base_url: &str,
    route: &str,
    target: Target,
) -> anyhow::Result<Check> {
    let policy = PolicyConfig {
        deadline: Duration::from_secs(60),
        per_attempt_timeout: Some(Duration::from_secs(30)),
        ..PolicyConfig::default()
    };
    let client = ctx.client(base_url, route, policy, target)?;
    let result = client.chat(&invalid_request(&ctx.model)).await;
    let rows = ctx.tail.take(&ctx.telemetry)?;
    let last = rows.last();
    let status = status_of(&result);
    let mut assertions = Vec::new();
    let client_error = matches!(status, Some(400..=499)) && result.is_err();
    assertions.push(assert(
        "rejected as a client error (4xx)",
        client_error,
        match (&result, status) {
            (Ok(_), _) => "the upstream ACCEPTED a request with no messages (2xx)".to_owned(),
            (Err(_), Some(s)) => format!(
                "HTTP {s}, error_type={}",
                shown(last, |r| r.error_type.as_deref())
            ),
            (Err(e), None) => format!("no HTTP response: {e}"),
        },
    ));
    let attempts = attempts_of(&result);
    assertions.push(assert(
        "not retried (exactly one attempt)",
        attempts == Some(1) && rows.len() == 1,
        format!(
            "{} attempt(s), {} evidence row(s)",
            attempts.map_or("?".to_owned(), |a| a.to_string()),
            rows.len()
        ),
    ));
    let decision = shown(last, |r| Some(&r.decision));
    assertions.push(assert(
        "recorded as failed without retry",
        decision == DecisionKind::StopNonRetryable.as_str()
            && terminal_outcome(last) == Some(Outcome::FailedWithoutRetry)
            && outcome_of(&result) == Some(Outcome::FailedWithoutRetry),
        format!(
            "decision={decision}, terminal_outcome={}, client_result={}",
            shown(last, |r| r.terminal_outcome.as_deref()),
            shown(last, |r| r.client_result.as_deref())
        ),
    ));
    let error_type = shown(last, |r| r.error_type.as_deref());
    let distinguishable = error_type.len() == 3 && error_type.starts_with('4');
    assertions.push(assert(
        "distinguishable from transient failures",
        distinguishable,
        format!(
            "error_type={error_type} (a 4xx status, not 408/409/429/5xx/timeout/connect_error)"
        ),
    ));
    assertions.extend(ctx.evidence_assertions(&rows, attempts));
    Ok(Check {
        name: "validation_path",
        title: format!(
            "a controlled invalid request (messages: []) against {}",
            printable_url(base_url)
        ),
        assertions,
        evidence: rows,
    })
}

async fn retry_path(ctx: &mut Ctx) -> anyhow::Result<Check> {
    let upstream = FakeUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the built-in fake upstream on 127.0.0.1")?;
    upstream.set_default(Step::status(503));
    let policy = PolicyConfig {
        max_attempts: RETRY_ATTEMPTS,
        base: RETRY_BASE,
        deadline: Duration::from_secs(30),
        per_attempt_timeout: Some(Duration::from_secs(5)),
        ..PolicyConfig::default()
    };
    let client = ctx.client(
        &upstream.base_url(),
        "fake_upstream_chat_completions",
        policy,
        Target::BuiltInFake,
    )?;
    let request = ChatRequest::user(ctx.model.clone(), HAPPY_PROMPT);
    let result = client.chat(&request).await;
    let returned_at = Instant::now();
    // Nothing may arrive after the call gave up: wait longer than the next backoff could have been.
    tokio::time::sleep(RETRY_BASE * 2).await;
    let recorded = upstream.requests();
    let late = recorded
        .iter()
        .filter(|r| r.received_at > returned_at)
        .count();
    upstream.shutdown().await;
    let rows = ctx.tail.take(&ctx.telemetry)?;
    let last = rows.last();

    let mut assertions = Vec::new();
    let attempts = attempts_of(&result);
    assertions.push(assert(
        "bounded attempts (== max_attempts)",
        recorded.len() == RETRY_ATTEMPTS as usize && attempts == Some(RETRY_ATTEMPTS),
        format!(
            "the upstream received {} request(s), the client reports {} attempt(s), max_attempts={RETRY_ATTEMPTS}",
            recorded.len(),
            attempts.map_or("?".to_owned(), |a| a.to_string())
        ),
    ));
    let gaps: Vec<Duration> = recorded
        .windows(2)
        .map(|w| w[1].received_at.saturating_duration_since(w[0].received_at))
        .collect();
    let min_gap = RETRY_BASE / 2;
    assertions.push(assert(
        "backoff between attempts (no tight loop)",
        !gaps.is_empty() && gaps.iter().all(|g| *g >= min_gap),
        format!(
            "gaps {:?} ms measured at the upstream, each must be >= base/2 = {} ms",
            gaps.iter().map(Duration::as_millis).collect::<Vec<_>>(),
            min_gap.as_millis()
        ),
    ));
    assertions.push(no_credential_sent(&recorded));
    let decision = shown(last, |r| Some(&r.decision));
    assertions.push(assert(
        "stops after the allowance",
        late == 0 && decision == DecisionKind::StopAttemptsExhausted.as_str(),
        format!("final decision={decision}; {late} request(s) arrived after the call returned"),
    ));
    let client_result = last.and_then(|r| r.client_result.as_deref());
    assertions.push(assert(
        "terminal outcome recorded as failed_after_retry",
        terminal_outcome(last) == Some(Outcome::FailedAfterRetry)
            && outcome_of(&result) == Some(Outcome::FailedAfterRetry)
            && client_result == Some(Outcome::FailedAfterRetry.client_result()),
        format!(
            "terminal_outcome={}, client_result={}",
            shown(last, |r| r.terminal_outcome.as_deref()),
            client_result.unwrap_or("-")
        ),
    ));
    let allowance: Vec<u32> = rows.iter().map(|r| r.retry_budget_remaining).collect();
    let expected: Vec<u32> = (0..RETRY_ATTEMPTS).rev().collect();
    assertions.push(assert(
        "remaining allowance counts down",
        allowance == expected,
        format!("retry_budget_remaining {allowance:?}, expected {expected:?}"),
    ));
    assertions.extend(ctx.evidence_assertions(&rows, attempts));
    Ok(Check {
        name: "retry_path",
        title: format!(
            "built-in fake upstream answering 503 always (max_attempts {RETRY_ATTEMPTS}, backoff base {} ms)",
            RETRY_BASE.as_millis()
        ),
        assertions,
        evidence: rows,
    })
}

// === the command ===

/// `retrybudget smoke`.
pub(crate) async fn run(
    args: &SmokeArgs,
    matches: &ArgMatches,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let layers = Layers::new(matches, config);
    let file: SmokeFile = load_file(config)?;
    let self_test = args.self_test || file.self_test.unwrap_or(false);
    let base_url = layers.pick("base_url", args.base_url.clone(), file.base_url);
    let model = layers.pick("model", args.model.clone(), file.model);
    let report = layers.pick("report", args.report.clone(), file.report);
    if let Some(r) = &report {
        check_writable_parent(&layers, "report", r)?;
    }
    if !self_test && base_url.is_none() {
        return Err(usage(format!(
            "missing {}: the API to test; or run --self-test",
            layers.all_names("base_url")
        )));
    }
    if !self_test && model.is_none() {
        return Err(usage(format!(
            "missing {}: the model id to request",
            layers.all_names("model")
        )));
    }
    let key = crate::config::api_key(
        &layers,
        layers.pick("api_key_env", args.api_key_env.clone(), file.api_key_env),
    )?;
    let model = model.map_or_else(|| SELF_TEST_MODEL.to_owned(), |m| m.value);
    if let Some(url) = &base_url {
        // Fail on a malformed URL before anything runs, naming the flag.
        if url::Url::parse(&url.value).is_err() {
            return Err(usage(format!(
                "invalid value for {}: not a URL; write it as http(s)://HOST[:PORT]",
                layers.describe("base_url", url.src)
            )));
        }
    }

    let dir = tempfile::Builder::new()
        .prefix("retrybudget-smoke-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let evidence_path = dir.path().join("evidence.jsonl");
    let telemetry = init_telemetry(Some(evidence_path.clone()))?;
    let started = SystemTime::now();
    let mut ctx = Ctx {
        telemetry,
        tail: EvidenceTail {
            path: evidence_path,
            seen: 0,
        },
        key,
        model,
    };

    let target = if self_test {
        "built-in fake upstreams (self-test: no key, no network)".to_owned()
    } else {
        base_url
            .as_ref()
            .map(|u| printable_url(&u.value))
            .unwrap_or_default()
    };
    println!("retrybudget smoke: {target}; model {}", ctx.model);
    println!("evidence: one row per attempt, from a per-run evidence file (removed at exit)\n");

    let mut checks = Vec::new();
    if self_test {
        let upstream = FakeUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("cannot start the built-in fake upstream on 127.0.0.1")?;
        let url = upstream.base_url();
        let route = "fake_upstream_chat_completions";
        checks.push(happy_path(&mut ctx, &url, route, Target::BuiltInFake).await?);
        // The fake upstream does not validate bodies: script the rejection a real API would give.
        upstream.push([Step::status(400).error_code("invalid_request")]);
        checks.push(validation_path(&mut ctx, &url, route, Target::BuiltInFake).await?);
        let recorded = upstream.requests();
        upstream.shutdown().await;
        if let Some(check) = checks.last_mut() {
            check.assertions.push(no_credential_sent(&recorded));
        }
    } else if let Some(url) = &base_url {
        let route = "chat_completions";
        checks.push(happy_path(&mut ctx, &url.value, route, Target::Operator).await?);
        checks.push(validation_path(&mut ctx, &url.value, route, Target::Operator).await?);
    }
    checks.push(retry_path(&mut ctx).await?);

    for c in &checks {
        c.print();
    }
    println!("Not asserted: {}", NOT_ASSERTED.join(", "));
    println!(
        "  (this smoke test checks client behaviour and evidence only; verify those in the provider's current documentation)\n"
    );

    let passed = checks.iter().filter(|c| c.passed()).count();
    let all = passed == checks.len();
    if let Some(path) = &report {
        let doc = json!({
            "tool": "retrybudget smoke",
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": retrybudget_telemetry::timestamp::rfc3339(started),
            "target": target,
            "model": ctx.model,
            "self_test": self_test,
            "passed": all,
            "checks": checks.iter().map(Check::to_json).collect::<Vec<_>>(),
            "not_asserted": NOT_ASSERTED,
        });
        std::fs::write(&path.value, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write the report to {}", path.value.display()))?;
    }
    println!(
        "result: {} ({passed} of {} checks passed){}",
        if all { "PASS" } else { "FAIL" },
        checks.len(),
        report
            .as_ref()
            .map(|r| format!("; report written to {}", r.value.display()))
            .unwrap_or_default()
    );
    crate::common::shutdown_telemetry(&ctx.telemetry).await;
    drop(dir);
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
