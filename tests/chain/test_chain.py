"""The whole evidence chain, for real: proxy → collector agent → collector gateway → Jaeger / Prometheus →
rules → Alertmanager → webhook, every component a real process running the shipped configuration (see stack.py
for what is substituted: addresses, and the timing overrides listed in stack.TIMING_OVERRIDES).

One stack for the module; the tests run in file order on the traffic of the `chain` fixture:
  phase 1 (in the fixture): a 503,503,200 call with a known trace id, 20 calls that retry once (503,200), 10 calls
  that fail fatally (400) and PLAIN_SUCCESSES first-try successes (200 of them between the retried calls);
  the page: a full upstream outage until RetryBudgetExhausted reaches the webhook, then recovery until it resolves;
  the collector away: the agent collector is killed for 10 s under load and started again.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from chainlib import (Proc, binary, chat, free_ports, get_json, http, metric_value, read_evidence, script, set_load,
                      wait_http_ok, wait_until)
from stack import (AGENT_CONFIG, AGENT_SCALEOUT_CONFIG, GATEWAY_CONFIG, SERVICE, TIMING_OVERRIDES, Alertmanager,
                   Collector, Jaeger, Prometheus, Webhook, rules_copy, tags)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
import promql  # noqa: E402  (tests/ops/promql.py: every dashboard and rule expression)

PLAIN_SUCCESSES = 400
SAMPLED_SHARE = 0.10  # otelcol-gateway.yaml: sample-successes, sampling_percentage: 10
# tail_sampling decision_wait is 30 s (shipped value, not overridden): traces reach Jaeger ≥ 30 s after their
# first span. Allow for that plus batching and a loaded machine.
TRACE_TIMEOUT = 120


def traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def chat_traced(proxy: str, header: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": f"hello {secrets.token_hex(8)}"}]}
    status, _ = http("POST", f"{proxy}/v1/chat/completions", body,
                     headers={"authorization": "Bearer sk-test-not-a-real-key", "traceparent": header}, timeout=60)
    return status


def evidence_settled(stack) -> list[dict]:
    """Evidence lines once every attempt the upstream answered has its line (the writer flushes every 100 ms)."""
    count = get_json(f"{stack['upstream']}/_control/count")["count"]
    return wait_until("the evidence file to hold one line per attempt",
                      lambda: (lines := read_evidence(stack["evidence"])) and len(lines) == count and lines,
                      30, stack["procs"])


def interesting(lines: list[dict]) -> set[str]:
    """Trace ids the tail-sampling policies must keep: a retry, a budget denial, a failed attempt or call."""
    keep = set()
    for line in lines:
        if (line.get("decision") in ("retry", "stop_budget_exhausted")
                or (line.get("terminal_outcome") not in (None, "success"))
                or line.get("error_type") is not None
                or int(line.get("http_status_code") or 200) >= 400):
            keep.add(line["trace_id"])
    return keep


@pytest.fixture(scope="module")
def chain():
    bin_ = binary("RETRYBUDGET_BIN")
    tmp = tempfile.TemporaryDirectory(prefix="retrybudget-chain-")
    work = Path(tmp.name)
    procs: list[Proc] = []
    webhook = Webhook()
    try:
        jaeger = Jaeger(work)
        procs.append(jaeger.proc)
        gateway = Collector("gateway", [GATEWAY_CONFIG], work, {
            "OTELCOL_JAEGER_ENDPOINT": f"127.0.0.1:{jaeger.otlp_grpc}",
            "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_ports(1)[0]}",
        })
        procs.append(gateway.proc)
        gateway_metrics = gateway.env["OTELCOL_PROMETHEUS_ENDPOINT"]
        agent = Collector("agent", [AGENT_CONFIG], work,
                          {"OTELCOL_GATEWAY_ENDPOINT": f"127.0.0.1:{gateway.otlp_grpc}"})
        procs.append(agent.proc)
        up_port, proxy_port = free_ports(2)
        upstream, proxy = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{proxy_port}"
        procs.append(Proc("upstream", [bin_, "fake-upstream", "--listen", f"127.0.0.1:{up_port}"], work))
        evidence = work / "evidence" / "evidence.jsonl"
        evidence.parent.mkdir()
        procs.append(Proc("proxy", [bin_, "proxy", "--listen", f"127.0.0.1:{proxy_port}", "--upstream", upstream,
                                    "--provider-name", "fake", "--route-name", "fake_chat_completions",
                                    "--evidence-file", str(evidence)], work, {
            "OTEL_SERVICE_NAME": SERVICE,
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=chain-test",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{agent.otlp_grpc}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }))
        alertmanager = Alertmanager(work, webhook.url)
        procs.append(alertmanager.proc)
        rules = rules_copy(work)
        prom_gateway = Prometheus("prometheus-gateway", work, [gateway_metrics], rules, alertmanager.address)
        prom_direct = Prometheus("prometheus-direct", work, [f"127.0.0.1:{proxy_port}"], rules, honor_labels=False)
        procs += [prom_gateway.proc, prom_direct.proc]
        for ready in (jaeger, gateway, agent, alertmanager, prom_gateway, prom_direct):
            ready.wait_ready()
        wait_http_ok(f"{upstream}/_control/health", 30, procs)
        wait_http_ok(f"{proxy}/healthz", 30, procs)
        print("\nchain timing overrides (test only):", TIMING_OVERRIDES)

        stack = {"work": work, "procs": procs, "jaeger": jaeger, "gateway": gateway, "agent": agent,
                 "upstream": upstream, "proxy": proxy, "evidence": evidence, "webhook": webhook,
                 "prom_gateway": prom_gateway, "prom_direct": prom_direct}

        # Phase 1.
        story_id, header = traceparent()
        script(upstream, [{"status": 503}, {"status": 503}, {"status": 200}])
        assert chat_traced(proxy, header, "story-model") == 200
        # Retries spend the shared budget (default: 10 % of calls + 1/s): pace them with plain calls so none is
        # denied. (A denied one would still be an incident trace; the count below would not change.)
        for _ in range(20):
            for _ in range(10):
                assert chat(proxy)[0] == 200
            script(upstream, [{"status": 503}, {"status": 200}])
            assert chat(proxy)[0] in (200, 503)
        for _ in range(10):
            script(upstream, [{"status": 400}])
            assert chat(proxy)[0] == 400
        failures = []

        def plain(n):
            for _ in range(n):
                status, _ = chat(proxy)
                if status != 200:
                    failures.append(status)

        threads = [threading.Thread(target=plain, args=((PLAIN_SUCCESSES - 200) // 4,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        stack["story_id"] = story_id
        stack["phase1"] = evidence_settled(stack)
        stack["phase1_end"] = time.time()
        yield stack
    finally:
        for p in reversed(procs):
            p.stop()
        webhook.stop()
        if os.environ.get("RETRYBUDGET_CHAIN_KEEP"):
            print(f"chain logs kept in {tmp.name}")
        else:
            tmp.cleanup()


def test_shipped_collector_configs_pass_validate():
    otelcol = binary("RETRYBUDGET_OTELCOL")
    for configs in ([AGENT_CONFIG], [GATEWAY_CONFIG], [AGENT_CONFIG, AGENT_SCALEOUT_CONFIG]):
        args = [otelcol, "validate"] + [f"--config={c}" for c in configs]
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{' '.join(args)}:\n{out.stdout}\n{out.stderr}"


def test_jaeger_has_the_story(chain):
    jaeger = chain["jaeger"]
    story_id = chain["story_id"]
    found = wait_until(
        "the 503,503,200 trace in Jaeger, found by tag retrybudget.outcome=success_after_retry",
        lambda: [t for t in jaeger.traces({"retrybudget.outcome": "success_after_retry"})
                 if t["traceID"] == story_id and len(t["spans"]) >= 5],
        TRACE_TIMEOUT, chain["procs"], interval=2)
    spans = found[0]["spans"]
    by_id = {s["spanID"]: s for s in spans}
    server = [s for s in spans if tags(s).get("span.kind") == "server"]
    assert len(server) == 1, [s["operationName"] for s in spans]
    assert server[0]["operationName"] == "POST /v1/chat/completions"
    assert tags(server[0])["http.response.status_code"] == 200
    logical = [s for s in spans if s["operationName"] == "chat story-model"]
    assert len(logical) == 1
    logical_tags = tags(logical[0])
    assert logical_tags["retrybudget.outcome"] == "success_after_retry"
    assert logical_tags["gen_ai.request.model"] == "story-model"
    parent = {s["spanID"]: (s.get("references") or [{}])[0].get("spanID") for s in spans}
    assert parent[logical[0]["spanID"]] == server[0]["spanID"]
    attempts = sorted((s for s in spans if parent[s["spanID"]] == logical[0]["spanID"]),
                      key=lambda s: s["startTime"])
    assert [s["operationName"] for s in attempts] == ["POST /v1/chat/completions"] * 3
    assert [tags(s)["http.response.status_code"] for s in attempts] == [503, 503, 200]
    assert [tags(s).get("http.request.resend_count") for s in attempts] == [None, 1, 2]
    assert [tags(s).get("otel.status_code") for s in attempts] == ["ERROR", "ERROR", None]
    assert all(tags(s)["span.kind"] == "client" for s in attempts + logical)
    assert set(by_id) == {server[0]["spanID"], logical[0]["spanID"]} | {s["spanID"] for s in attempts}


def test_tail_sampling_does_what_the_config_says(chain):
    jaeger, lines = chain["jaeger"], chain["phase1"]
    keep = interesting(lines)
    by_trace: dict[str, list[dict]] = {}
    for line in lines:
        by_trace.setdefault(line["trace_id"], []).append(line)
    plain = {t for t, ls in by_trace.items() if t not in keep and len(ls) == 1
             and ls[0].get("terminal_outcome") == "success"}
    assert len(keep) == 31 and len(plain) == PLAIN_SUCCESSES, (len(keep), len(plain))

    def arrived():
        got = {t["traceID"] for t in jaeger.traces()}
        return got if keep <= got else None

    # Every kept trace arrives; then wait one more decision period so the sampled successes are all in too.
    wait_until(f"all {len(keep)} retried/denied/failed traces of phase 1 in Jaeger", arrived, TRACE_TIMEOUT,
               chain["procs"], interval=2)
    time.sleep(max(0.0, chain["phase1_end"] + 40 - time.time()))
    got = {t["traceID"] for t in jaeger.traces()}
    missing = keep - got
    assert not missing, f"{len(missing)} kept traces missing"
    share = len(plain & got) / len(plain)
    # Binomial: 4 standard deviations around the configured 10 % (n=400: ±6 points).
    tolerance = 4 * math.sqrt(SAMPLED_SHARE * (1 - SAMPLED_SHARE) / len(plain))
    print(f"\ntail sampling: {len(keep)}/{len(keep)} incident traces kept; plain successes kept "
          f"{len(plain & got)}/{len(plain)} = {share:.1%} (configured {SAMPLED_SHARE:.0%} ± {tolerance:.1%})")
    assert abs(share - SAMPLED_SHARE) <= tolerance, share


IGNORED_LABELS = {"job", "instance", "otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}


def series(result: list[dict]) -> dict:
    out = {}
    for r in result:
        key = tuple(sorted((k, v) for k, v in r["metric"].items() if k not in IGNORED_LABELS))
        out[key] = float(r["value"][1])
    return out


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    # Tolerance: 25 % relative or 0.02 absolute. Rates and quantiles see the same samples shifted by the
    # gateway path's lag (export interval 1 s + two batch timeouts of 1 s + scrape).
    return abs(a - b) <= max(0.25 * max(abs(a), abs(b)), 0.02)


STEADY_SECONDS = 75  # > the dashboards' 1m windows: every series is fed at a steady rate on both paths


def test_same_numbers_on_both_paths(chain):
    """Every dashboard, datasource and rule expression, evaluated by the Prometheus that scrapes the gateway and by
    the one that scrapes the proxy's /metrics, at the same instant, under steady traffic (bursts would make
    the gateway path's few seconds of lag show up in every rate): same series, values within tolerance."""
    gw, direct, proxy, upstream = chain["prom_gateway"], chain["prom_direct"], chain["proxy"], chain["upstream"]
    stop = threading.Event()

    def mixed():  # one caller owns the script: 10 plain calls, one 503,200, one 400, again and again
        while not stop.is_set():
            for _ in range(10):
                chat(proxy)
            script(upstream, [{"status": 503}, {"status": 200}])
            chat(proxy)
            script(upstream, [{"status": 400}])
            chat(proxy)
            time.sleep(0.2)

    driver = threading.Thread(target=mixed)
    driver.start()
    try:
        time.sleep(STEADY_SECONDS)
        at = time.time() - 1
        compared, problems = 0, []
        for e in promql.extract_expressions():
            if "probe" in e.expr:
                continue  # retrybudget_probe_success exists only in probe mode, which this chain does not run
            if e.kind == "alert":
                # A full alert condition (`signal > threshold`) can flip within the tolerance when the value sits
                # at the threshold; its signal (kind alert_signal, no threshold) is compared instead.
                continue
            a, b = series(gw.query(e.expr, at)), series(direct.query(e.expr, at))
            if set(a) != set(b):
                problems.append(f"{e}: series differ: gateway-only {set(a) - set(b)}, direct-only {set(b) - set(a)}")
                continue
            for key in a:
                if not close(a[key], b[key]):
                    problems.append(f"{e}: {dict(key)}: gateway {a[key]} vs direct {b[key]}")
            compared += 1
    finally:
        stop.set()
        driver.join()
    print(f"\nsame numbers: {compared} expressions compared on both paths")
    assert not problems, "\n".join(problems)
    assert compared > 10


def test_the_page_arrives_and_resolves(chain):
    upstream, proxy, webhook = chain["upstream"], chain["proxy"], chain["webhook"]
    set_load(upstream, {"mode": "outage", "from_ms": 0, "until_ms": 3_600_000, "status": 503})
    stop = threading.Event()

    def drive():
        while not stop.is_set():
            chat(proxy)

    driver = threading.Thread(target=drive)
    started = time.monotonic()
    driver.start()
    try:
        wait_until("RetryBudgetExhausted firing at the webhook",
                   lambda: webhook.alerts("RetryBudgetExhausted", "firing"), 120, chain["procs"], interval=1)
    finally:
        stop.set()
        driver.join()
    alert = webhook.alerts("RetryBudgetExhausted", "firing")[0]
    assert alert["annotations"]["summary"].startswith("Retry budget exhausted for scope")
    assert alert["annotations"]["runbook_url"].endswith("#retrybudgetexhausted")
    fired = time.monotonic() - started
    set_load(upstream, {"mode": "none"})
    stop.clear()
    driver = threading.Thread(target=drive)
    recovered = time.monotonic()
    driver.start()
    try:
        wait_until("RetryBudgetExhausted resolved at the webhook",
                   lambda: webhook.alerts("RetryBudgetExhausted", "resolved"), 120, chain["procs"], interval=1)
    finally:
        stop.set()
        driver.join()
    print(f"\nthe page: firing at the webhook {fired:.0f} s into the outage, resolved "
          f"{time.monotonic() - recovered:.0f} s after recovery")


def test_collector_goes_away_and_comes_back(chain):
    proxy, agent, jaeger = chain["proxy"], chain["agent"], chain["jaeger"]
    set_load(chain["upstream"], {"mode": "none"})

    def dropped() -> float:
        return metric_value(http("GET", f"{proxy}/metrics")[1].decode(), "retrybudget_telemetry_dropped_total")

    before = dropped()
    stop, statuses = threading.Event(), []

    def drive():
        while not stop.is_set():
            statuses.append(chat(proxy, timeout=30)[0])
            time.sleep(0.05)

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        time.sleep(2)
        agent.proc.stop(signal.SIGKILL)
        time.sleep(10)
        during = len(statuses)
        agent.proc.start()
        agent.wait_ready()
        time.sleep(3)
    finally:
        stop.set()
        driver.join()
    assert during > 20 and statuses and set(statuses) == {200}, f"calls failed: {sorted(set(statuses))}"
    grown = wait_until("retrybudget_telemetry_dropped_total to count what the dead collector could not take",
                       lambda: dropped() > before and dropped(), 30, chain["procs"])
    print(f"\ncollector away: {len(statuses)} calls, all 200; dropped items counted: {grown - before:.0f}")
    # Traces flow again: a retried call after the restart reaches Jaeger.
    after_id, header = traceparent()
    script(chain["upstream"], [{"status": 503}, {"status": 200}])
    assert chat_traced(proxy, header, "after-restart") == 200
    wait_until("a trace made after the collector came back, in Jaeger",
               lambda: (t := jaeger.trace(after_id)) and len(t["spans"]) >= 4, TRACE_TIMEOUT, chain["procs"],
               interval=2)
