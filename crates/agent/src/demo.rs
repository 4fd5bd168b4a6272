//! `retrybudget demo`: the embedded default — a fault-injecting upstream, the proxy in front of it, and a
//! scripted traffic mix driven through the proxy over real HTTP, with live progress and a final table.
//!
//! Phases over `--duration`: healthy traffic; transient 503s (20 % of requests); 429s with `retry-after: 1`;
//! a full outage (every request 503 for a quarter of the run) that exhausts the shared retry budget (default
//! ratio 0.1, floor 1/s, so denials must happen); and recovery with fatal 400/401 answers mixed in. During the
//! outage every fourth call comes from a hand-written caller loop that re-sends its failed request once: the
//! proxy recognises the re-send (nested retries, source `fingerprint`) and makes it pay from the budget, and
//! the table shows the provider-side amplification (upstream attempts per distinct request) beside the per-call
//! one.
//!
//! The demo counts only what the proxy *told the caller* (`x-retrybudget-outcome`, `x-retrybudget-attempts`),
//! never what it knows internally, so `retrybudget report` over the evidence file can be checked against it.
//! Prompts are fixed placeholders; nothing secret exists to print.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::ArgMatches;
use retrybudget_client::{Client, ClientConfig};
use retrybudget_fake_upstream::{FakeUpstream, LoadMode, Step};
use retrybudget_policy::PolicyConfig;
use retrybudget_proxy::{ATTEMPTS_HEADER, OUTCOME_HEADER, ProxyConfig, ProxyState};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::DemoArgs;
use crate::common::{init_telemetry, otlp_endpoint, shutdown_signal, shutdown_telemetry};
use crate::config::{
    Layers, check_range, check_writable_parent, file_addr, file_duration, load_file,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoFile {
    duration: Option<String>,
    listen: Option<String>,
    serve: Option<bool>,
    evidence_file: Option<PathBuf>,
    rate: Option<u32>,
    json: Option<bool>,
}

/// The default evidence file, truncated at every start.
pub(crate) const DEFAULT_EVIDENCE: &str = "./retrybudget-demo-evidence.jsonl";
/// Calls in flight at once; a call that would exceed it is not sent (and counted as such).
const MAX_IN_FLIGHT: usize = 512;
/// Longest wait for in-flight calls after the mix.
const DRAIN: Duration = Duration::from_secs(60);
/// The request body of the demo's `n`-th call: a fixed placeholder numbered per call (distinct requests, as
/// from distinct users), never user content.
fn body(n: u64) -> String {
    format!(
        r#"{{"model":"fake-model","messages":[{{"role":"user","content":"placeholder prompt {n} (retrybudget demo)"}}],"max_tokens":16}}"#
    )
}
/// During the outage, every this-many-th call comes from a hand-written caller loop that re-sends its request
/// once after a failure (no SDK header): the proxy recognises it by fingerprint (nested retries).
const RESEND_EVERY: u64 = 4;

/// The scripted phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Healthy,
    Transient5xx,
    RateLimited,
    Outage,
    Fatal4xx,
}

impl Phase {
    /// Phase boundaries as fractions of the run (outage: 25 %).
    const PLAN: [(f64, Phase); 5] = [
        (0.0, Phase::Healthy),
        (0.15, Phase::Transient5xx),
        (0.35, Phase::RateLimited),
        (0.50, Phase::Outage),
        (0.75, Phase::Fatal4xx),
    ];
    const OUTAGE_SHARE: f64 = 0.25;

    fn at(fraction: f64) -> Phase {
        Phase::PLAN
            .iter()
            .rev()
            .find(|(start, _)| fraction >= *start)
            .map_or(Phase::Healthy, |(_, p)| *p)
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Transient5xx => "transient_5xx",
            Phase::RateLimited => "rate_limited_429",
            Phase::Outage => "outage",
            Phase::Fatal4xx => "recovery_fatal_4xx",
        }
    }

    /// Sets the upstream's background behaviour when the phase starts.
    fn enter(self, upstream: &FakeUpstream, run: Duration) {
        match self {
            Phase::Transient5xx => upstream.set_load(LoadMode::FailPercent {
                percent: 20.0,
                status: 503,
                seed: 7,
            }),
            Phase::Outage => upstream.set_load(LoadMode::Outage {
                from_ms: 0,
                until_ms: (run.as_secs_f64() * Phase::OUTAGE_SHARE * 1000.0) as u64,
                status: 503,
            }),
            Phase::Healthy | Phase::RateLimited | Phase::Fatal4xx => {
                upstream.set_load(LoadMode::None)
            }
        }
    }

    /// Scripted answers injected with the `n`-th call of the phase.
    fn script(self, n: u64, upstream: &FakeUpstream) {
        match self {
            Phase::RateLimited if n.is_multiple_of(4) => upstream.push([Step::rate_limited(1)]),
            Phase::Fatal4xx if n.is_multiple_of(5) => upstream.push([Step::status(400)]),
            Phase::Fatal4xx if n % 5 == 2 => upstream.push([Step::status(401)]),
            Phase::Healthy if n % 10 == 9 => upstream.push([Step::status(400)]),
            _ => {}
        }
    }
}

/// What the proxy told the callers.
#[derive(Debug, Default, Clone)]
struct Tally {
    calls: u64,
    by_outcome: BTreeMap<String, u64>,
    attempts: u64,
    transport_errors: u64,
    not_sent: u64,
    /// Calls that were a caller loop's re-send of an earlier call (counted in `calls` too).
    resends: u64,
}

impl Tally {
    fn amplification(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.attempts as f64 / self.calls as f64)
    }

    /// What the provider saw: upstream attempts per distinct request (re-sends are not new requests).
    fn provider_amplification(&self) -> Option<f64> {
        let distinct = self.calls.saturating_sub(self.resends);
        (distinct > 0).then(|| self.attempts as f64 / distinct as f64)
    }

    fn denials(&self) -> u64 {
        self.by_outcome
            .get("budget_exhausted")
            .copied()
            .unwrap_or(0)
    }
}

/// Human output: stdout, or stderr when stdout carries the JSON document.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn line(self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    fn is_tty(self) -> bool {
        if self.json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        }
    }

    /// A progress line: rewritten in place on a terminal, one line each otherwise.
    fn progress(self, text: &str) {
        if self.is_tty() {
            let mut w: Box<dyn std::io::Write> = if self.json {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            };
            let _ = write!(w, "\r{text}\x1b[K");
            let _ = w.flush();
        } else {
            self.line(text);
        }
    }

    fn end_progress(self) {
        if self.is_tty() {
            self.line("");
        }
    }
}

/// `retrybudget demo`.
pub(crate) async fn run(
    args: &DemoArgs,
    matches: &ArgMatches,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let layers = Layers::new(matches, config);
    let file: DemoFile = load_file(config)?;
    let duration = layers.pick_or(
        "duration",
        args.duration,
        file_duration(config, "duration", file.duration)?,
        Duration::from_secs(20),
    );
    check_range(
        &layers,
        "duration",
        &duration,
        Duration::from_secs(2),
        Duration::from_secs(3600),
        "a duration from 2s to 1h",
    )?;
    let listen = layers.pick_or(
        "listen",
        args.listen,
        file_addr(config, "listen", file.listen)?,
        SocketAddr::from(([127, 0, 0, 1], 8787)),
    );
    let rate = layers.pick_or("rate", args.rate, file.rate, 20);
    check_range(
        &layers,
        "rate",
        &rate,
        1,
        1000,
        "an integer from 1 to 1000 calls per second",
    )?;
    let evidence = layers.pick_or(
        "evidence_file",
        args.evidence_file.clone(),
        file.evidence_file,
        PathBuf::from(DEFAULT_EVIDENCE),
    );
    check_writable_parent(&layers, "evidence_file", &evidence)?;
    let serve = args.serve || file.serve.unwrap_or(false);
    let out = Out {
        json: args.json || file.json.unwrap_or(false),
    };
    let (duration, rate, evidence) = (duration.value, rate.value, evidence.value);

    // Truncate: the file holds exactly this run, so `report` over it matches the final table.
    std::fs::File::create(&evidence)
        .with_context(|| format!("cannot create the evidence file {}", evidence.display()))?;
    let telemetry = init_telemetry(Some(evidence.clone()))?;
    let upstream = FakeUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the built-in fake upstream on 127.0.0.1")?;
    let mut client_config = ClientConfig::new(upstream.base_url());
    client_config.provider_name = "fake".to_owned();
    client_config.route_name = "demo_chat_completions".to_owned();
    client_config.policy = PolicyConfig::default();
    let client = Client::new(client_config, telemetry.clone())?;
    let listener = tokio::net::TcpListener::bind(listen.value)
        .await
        .with_context(|| format!("cannot listen on {}: is the port in use? (use --listen 127.0.0.1:0 for any free port)", listen.value))?;
    let addr = listener.local_addr()?;
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(retrybudget_proxy::serve(
        listener,
        ProxyState::new(client, ProxyConfig::default()),
        async {
            let _ = stop_rx.await;
        },
    ));
    out.line(&format!(
        "retrybudget demo: proxy listening on http://{addr} (metrics at http://{addr}/metrics) -> fake upstream {}",
        upstream.base_url()
    ));
    out.line(&format!(
        "driving {rate} calls/s for {} through the proxy: healthy, transient 503s, 429 + retry-after, outage (25 %), fatal 400/401; evidence file {}",
        humantime::format_duration(duration),
        evidence.display()
    ));

    let started = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let phase = Arc::new(Mutex::new(Phase::Healthy));
    let progress = tokio::spawn(progress_loop(
        out,
        started,
        duration,
        Arc::clone(&tally),
        Arc::clone(&phase),
    ));
    let interrupted = drive(&upstream, target, duration, rate, &tally, &phase).await?;
    progress.abort();
    let _ = progress.await;
    print_progress(out, started, duration, &tally, &phase);
    out.end_progress();
    let flushed = telemetry.flush_evidence();
    // The incident review of this run, next to its evidence file.
    let html = evidence.with_extension("html");
    let view = crate::report::View {
        trace_url: std::env::var("RETRYBUDGET_TRACE_URL")
            .ok()
            .filter(|t| t.contains(crate::report::TRACE_ID_PLACEHOLDER)),
    };
    let html_report = match crate::report::demo_html(&evidence, &html, &view) {
        Ok(_) => Some(html),
        Err(e) => {
            out.line(&format!("HTML report not written: {e:#}"));
            None
        }
    };

    let t = tally.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let metrics_url = format!("http://{target}/metrics");
    let otlp = otlp_endpoint();
    if out.json {
        let doc = json!({
            "calls": t.calls,
            "calls_by_outcome": t.by_outcome,
            "attempts": t.attempts,
            "amplification": t.amplification().map(|a| (a * 100.0).round() / 100.0),
            "provider_amplification": t.provider_amplification().map(|a| (a * 100.0).round() / 100.0),
            "caller_resends": t.resends,
            "budget_denials": t.denials(),
            "transport_errors": t.transport_errors,
            "not_sent": t.not_sent,
            "interrupted": interrupted,
            "listen": addr.to_string(),
            "metrics_url": metrics_url,
            "evidence_file": evidence.display().to_string(),
            "evidence_flushed": flushed,
            "html_report": html_report.as_ref().map(|p| p.display().to_string()),
            "otlp_endpoint": otlp,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!(
            "{}",
            final_table(
                &t,
                started.elapsed(),
                &metrics_url,
                &evidence,
                html_report.as_deref(),
                otlp.as_deref(),
                serve
            )
        );
    }

    if serve && !interrupted {
        out.line(&format!(
            "serving the proxy, http://{target}/metrics and /healthz until Ctrl-C"
        ));
        shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    proxy
        .await
        .context("the proxy task failed")?
        .context("the proxy server failed")?;
    shutdown_telemetry(&telemetry).await;
    upstream.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Starts `rate × duration` calls on schedule, switching phases as time passes; returns whether Ctrl-C cut it
/// short. Waits (bounded) for the calls in flight.
async fn drive(
    upstream: &FakeUpstream,
    target: SocketAddr,
    duration: Duration,
    rate: u32,
    tally: &Arc<Mutex<Tally>>,
    phase: &Arc<Mutex<Phase>>,
) -> anyhow::Result<bool> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .context("cannot build the demo's HTTP client")?;
    let url = format!("http://{target}/v1/chat/completions");
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut calls = JoinSet::new();
    let started = Instant::now();
    let mut current = Phase::Healthy;
    current.enter(upstream, duration);
    let mut in_phase = 0u64;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut interrupted = false;
    for n in 0..total {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut signal => { interrupted = true; break; }
        }
        let now = Phase::at(started.elapsed().as_secs_f64() / duration.as_secs_f64());
        if now != current {
            now.enter(upstream, duration);
            current = now;
            in_phase = 0;
            *phase.lock().unwrap_or_else(PoisonError::into_inner) = now;
        }
        current.script(in_phase, upstream);
        in_phase += 1;
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tally
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .not_sent += 1;
            continue;
        };
        let (http, url, tally) = (http.clone(), url.clone(), Arc::clone(tally));
        let resends = u32::from(current == Phase::Outage && in_phase % RESEND_EVERY == 1);
        calls.spawn(async move {
            let body = body(n);
            for send in 0..=resends {
                let result = call_once(&http, &url, &body).await;
                let again = {
                    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Some((outcome, attempts, ok)) => {
                            t.calls += 1;
                            t.attempts += attempts;
                            t.resends += u64::from(send > 0);
                            *t.by_outcome.entry(outcome).or_default() += 1;
                            !ok
                        }
                        None => {
                            t.transport_errors += 1;
                            false
                        }
                    }
                };
                if !again {
                    break;
                }
                // The caller's own loop: a short pause, then the same request again.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(permit);
        });
    }
    upstream.set_load(LoadMode::None);
    let drained =
        tokio::time::timeout(DRAIN, async { while calls.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        calls.abort_all();
    }
    Ok(interrupted)
}

/// One call through the proxy: the outcome and attempts it reported and whether it succeeded (2xx), or `None`
/// without a usable answer.
async fn call_once(http: &reqwest::Client, url: &str, body: &str) -> Option<(String, u64, bool)> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .ok()?;
    let ok = response.status().is_success();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let outcome = header(OUTCOME_HEADER).unwrap_or_else(|| "no_outcome_header".to_owned());
    let attempts = header(ATTEMPTS_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Read the body so the connection can be reused; its content is not looked at.
    let _ = response.bytes().await;
    Some((outcome, attempts, ok))
}

async fn progress_loop(
    out: Out,
    started: Instant,
    duration: Duration,
    tally: Arc<Mutex<Tally>>,
    phase: Arc<Mutex<Phase>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        print_progress(out, started, duration, &tally, &phase);
    }
}

fn print_progress(
    out: Out,
    started: Instant,
    duration: Duration,
    tally: &Mutex<Tally>,
    phase: &Mutex<Phase>,
) {
    let t = tally.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let p = *phase.lock().unwrap_or_else(PoisonError::into_inner);
    out.progress(&format!(
        "[{:>4}s/{}s] phase {:<18} calls {:>5}  attempts {:>5}  amp {}  budget denials {}",
        started.elapsed().as_secs(),
        duration.as_secs(),
        p.name(),
        t.calls,
        t.attempts,
        t.amplification()
            .map_or_else(|| "-".to_owned(), |a| format!("{a:.2}")),
        t.denials()
    ));
}

fn final_table(
    t: &Tally,
    took: Duration,
    metrics_url: &str,
    evidence: &Path,
    html: Option<&Path>,
    otlp: Option<&str>,
    serve: bool,
) -> String {
    let mut s = format!(
        "\nDemo finished in {:.1} s\n\nCalls by outcome (from x-retrybudget-outcome)\n",
        took.as_secs_f64()
    );
    for (outcome, n) in &t.by_outcome {
        s.push_str(&format!("  {outcome:<22} {n:>6}\n"));
    }
    s.push_str(&format!("  {:<22} {:>6}\n", "total calls", t.calls));
    s.push_str(&format!(
        "total attempts: {} (from x-retrybudget-attempts)\n",
        t.attempts
    ));
    match t.amplification() {
        Some(a) => s.push_str(&format!(
            "amplification={a:.2} (attempts per call; SDK defaults would allow 3.00)\n"
        )),
        None => s.push_str("amplification=n/a (no calls completed)\n"),
    }
    match t.provider_amplification() {
        Some(a) => s.push_str(&format!(
            "provider_amplification={a:.2} (upstream attempts per distinct request; {} of the calls were a caller loop re-sending a failed request, recognised as nested retries)\n",
            t.resends
        )),
        None => s.push_str("provider_amplification=n/a (no calls completed)\n"),
    }
    s.push_str(&format!(
        "budget denials: {} (retries the shared budget refused: outcome budget_exhausted)\n",
        t.denials()
    ));
    if t.transport_errors > 0 || t.not_sent > 0 {
        s.push_str(&format!(
            "not counted: {} call(s) without an answer from the proxy, {} not sent (in-flight limit {MAX_IN_FLIGHT})\n",
            t.transport_errors, t.not_sent
        ));
    }
    s.push_str("\nEvidence\n");
    s.push_str(&format!(
        "  metrics:       {metrics_url}{}\n",
        if serve {
            ""
        } else {
            " (stopped with the demo; run with --serve to keep it up)"
        }
    ));
    s.push_str(&format!(
        "  evidence file: {} (summarise: retrybudget report {})\n",
        evidence.display(),
        evidence.display()
    ));
    if let Some(html) = html {
        s.push_str(&format!(
            "  HTML report:   {} (timeline, headline figures, calls to open; open it in a browser)\n",
            html.display()
        ));
    }
    s.push_str(&format!(
        "  OTLP:          {}\n",
        otlp.map_or_else(
            || "off (set OTEL_EXPORTER_OTLP_ENDPOINT to export traces, metrics and logs)"
                .to_owned(),
            |e| format!("traces to {e}")
        )
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_cover_the_run_in_order() {
        assert_eq!(Phase::at(0.0), Phase::Healthy);
        assert_eq!(Phase::at(0.2), Phase::Transient5xx);
        assert_eq!(Phase::at(0.4), Phase::RateLimited);
        assert_eq!(Phase::at(0.6), Phase::Outage);
        assert_eq!(Phase::at(0.99), Phase::Fatal4xx);
        let outage = Phase::PLAN[4].0 - Phase::PLAN[3].0;
        assert!((outage - Phase::OUTAGE_SHARE).abs() < 1e-9);
    }

    #[test]
    fn final_table_has_amplification_line() {
        let mut t = Tally {
            calls: 4,
            attempts: 5,
            ..Tally::default()
        };
        t.by_outcome.insert("success".into(), 4);
        let s = final_table(
            &t,
            Duration::from_secs(1),
            "http://x/metrics",
            Path::new("e.jsonl"),
            Some(Path::new("e.html")),
            None,
            false,
        );
        assert!(s.contains("amplification=1.25"), "{s}");
        assert!(s.contains("HTML report:   e.html"), "{s}");
    }
}
