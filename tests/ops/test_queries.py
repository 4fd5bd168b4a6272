"""Live check: every query the operations kit ships, evaluated by a real Prometheus scraping a real agent.

    RETRYBUDGET_BIN=target/release/retrybudget python3 -m pytest -q -s tests/ops/test_queries.py

1. `prometheus` starts first (1-s scrapes, 1-s rule evaluation, the repository's rule file loaded), so it
   scrapes the demo from its first second on.
2. `$RETRYBUDGET_BIN demo --duration 20s --serve` runs the scripted mix (healthy traffic, transient 503s,
   429 + Retry-After, a full outage that exhausts the budget, fatal 4xx) and keeps serving /metrics.
3. `$RETRYBUDGET_BIN probe` runs against the demo, because `retrybudget_probe_success` exists only in probe
   mode (see PROBE below: the one block to adjust if the probe's flags or target change).
4. After the demo has finished, every expression from promql.extract_expressions() (dashboard panels and
   variables, Grafana datasource links, recording rules, alerts with `for` dropped and each alert's
   signal) is sent to /api/v1/query. Each must be valid and return at least one series, except the full
   alert conditions, which only need to be valid — they are empty whenever the alert is not firing — with
   two exceptions that must fire after the demo's outage: RetryBudgetExhausted and RetryAmplificationHigh.
5. Every metric name the queries use must appear in the agent's /metrics exposition.

Needs `prometheus` (Debian package `prometheus`) and the agent binary in RETRYBUDGET_BIN; both are required,
not optional: a missing one fails the test with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import promql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import stop_process  # noqa: E402  (tests/procs.py)

DEMO_DURATION_S = 20
MIN_SAMPLES = 15  # 1-s scrapes of the demo before queries are evaluated
# The demo's outage exhausts the budget, and its caller loop re-sends failed requests (nested retries).
ALERTS_THAT_MUST_FIRE = ("RetryBudgetExhausted", "RetryAmplificationHigh", "NestedClientRetries")
DEMO_JOB = "retrybudget-demo"
PROBE_JOB = "retrybudget-probe"

EXPRESSIONS = promql.extract_expressions()


# === PROBE: adjust here =================================================================================
# `retrybudget probe` runs its checks against an OpenAI-compatible base URL every --interval and serves
# retrybudget_probe_success{retrybudget_check} on /metrics at --listen. Here it probes the demo's own
# listener (its in-process proxy in front of the fake upstream).
PROBE_MODEL = "fake-model"
PROBE_READY_PATH = "/metrics"


def probe_command(binary: str, demo_port: int, probe_port: int) -> list[str]:
    return [binary, "probe",
            "--base-url", f"http://127.0.0.1:{demo_port}/v1",
            "--model", PROBE_MODEL,
            "--interval", "1s",
            "--listen", f"127.0.0.1:{probe_port}"]
# ========================================================================================================


def demo_command(binary: str, demo_port: int, evidence: Path) -> list[str]:
    return [binary, "demo", "--duration", f"{DEMO_DURATION_S}s", "--listen", f"127.0.0.1:{demo_port}",
            "--serve", "--evidence-file", str(evidence)]


def prometheus_config(demo_port: int, probe_port: int) -> dict:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in promql.rule_files()],
        "scrape_configs": [
            {"job_name": DEMO_JOB, "static_configs": [{"targets": [f"127.0.0.1:{demo_port}"]}]},
            {"job_name": PROBE_JOB, "static_configs": [{"targets": [f"127.0.0.1:{probe_port}"]}]},
        ],
    }


# === processes ==========================================================================================


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


@dataclass
class Process:
    """A background process with its own pid and its output in files (the `cmd &` of a shell script)."""

    name: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path

    @classmethod
    def start(cls, name: str, command: list[str], workdir: Path, env: dict | None = None) -> "Process":
        stdout, stderr = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            popen = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                     cwd=workdir, env=env)
        return cls(name, popen, stdout, stderr)

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self, lines: int = 30) -> str:
        def tail(path: Path) -> str:
            text = path.read_text(errors="replace") if path.exists() else ""
            return "\n".join(text.splitlines()[-lines:])
        return (f"--- {self.name} (pid {self.popen.pid}, exit {self.popen.poll()}) stdout:\n{tail(self.stdout)}\n"
                f"--- {self.name} stderr:\n{tail(self.stderr)}")

    def stop(self, timeout: float = 10) -> None:
        stop_process(self.popen, timeout)


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def wait_until(what: str, condition, timeout: float, processes: list[Process], interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if not process.running():
                pytest.fail(f"{process.name} exited while waiting for {what}\n{process.output()}")
        try:
            result = condition()
            if result:
                return result
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n" + "\n".join(p.output() for p in processes))


# === the live stack =====================================================================================


@dataclass
class Live:
    prometheus_url: str
    demo_url: str
    probe_url: str
    processes: list[Process]

    def query(self, expr: str) -> tuple[str, list, str]:
        """(status, result, error) of an instant query at the current time."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        _code, body = http_get(url, timeout=30)
        reply = json.loads(body)
        result = reply.get("data", {}).get("result", [])
        if reply.get("data", {}).get("resultType") == "scalar":
            result = [result]
        return reply.get("status"), result, reply.get("error", "")

    def value(self, expr: str) -> float | None:
        _status, result, _error = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def logs(self) -> str:
        return "\n".join(p.output(15) for p in self.processes)

    def demo_summary(self) -> str:
        """The demo's own amplification line(s) from its final table, for comparison."""
        demo = next(p for p in self.processes if p.name == "demo")
        text = demo.stdout.read_text(errors="replace") if demo.stdout.exists() else ""
        return "\n".join(line for line in text.splitlines() if "amplification" in line.lower())


def agent_binary() -> str:
    binary = os.environ.get("RETRYBUDGET_BIN")
    if not binary:
        pytest.fail("RETRYBUDGET_BIN is not set: build the agent (cargo build --release -p retrybudget) and "
                    "run with RETRYBUDGET_BIN=target/release/retrybudget")
    path = Path(binary)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"RETRYBUDGET_BIN={binary} is not an executable file")
    return str(path.resolve())


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if not binary:
        pytest.fail("prometheus not found: apt-get install -y --no-install-recommends prometheus")
    return binary


@pytest.fixture(scope="module")
def live():
    binary, prometheus = agent_binary(), prometheus_binary()
    workdir = Path(tempfile.mkdtemp(prefix="retrybudget-ops-"))
    processes: list[Process] = []
    # The agent runs with its embedded defaults (/metrics + evidence file), not a stray OTLP endpoint.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    try:
        demo_port, probe_port, prometheus_port = free_ports(3)
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(demo_port, probe_port), sort_keys=False))
        live = Live(f"http://127.0.0.1:{prometheus_port}", f"http://127.0.0.1:{demo_port}",
                    f"http://127.0.0.1:{probe_port}", processes)

        processes.append(Process.start("prometheus", [
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn",
        ], workdir))
        wait_until("Prometheus to be ready", lambda: http_get(f"{live.prometheus_url}/-/ready")[0] == 200,
                   30, processes)

        processes.append(Process.start("demo", demo_command(binary, demo_port, workdir / "evidence.jsonl"),
                                        workdir, env))
        demo = processes[-1]
        started = time.monotonic()
        wait_until("the demo's /healthz", lambda: http_get(f"{live.demo_url}/healthz")[0] == 200, 60, processes)

        processes.append(Process.start("probe", probe_command(binary, demo_port, probe_port), workdir, env))
        wait_until("the probe's /metrics", lambda: http_get(f"{live.probe_url}{PROBE_READY_PATH}")[0] == 200,
                   30, processes)

        # The demo prints its final evidence table (with an amplification figure) when the mix is done;
        # if that line never shows, fall back to the clock.
        deadline = started + DEMO_DURATION_S + 15
        while time.monotonic() < deadline and "amplification" not in demo.stdout.read_text(errors="replace").lower():
            if not demo.running():
                pytest.fail(f"the demo exited although --serve was given\n{demo.output()}")
            time.sleep(0.5)

        def scraped_enough():
            samples = live.value(f'min(count_over_time(up{{job=~"{DEMO_JOB}|{PROBE_JOB}"}}[5m]))')
            healthy = live.value(f'min(up{{job=~"{DEMO_JOB}|{PROBE_JOB}"}})')
            return samples is not None and samples >= MIN_SAMPLES and healthy == 1
        wait_until(f"{MIN_SAMPLES} successful scrapes of both targets", scraped_enough, 60, processes)
        time.sleep(3)  # a few rule evaluations (every 1 s) after the last scrape of the finished demo
        yield live
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# === tests ==============================================================================================


def test_rules_loaded_and_healthy(live):
    _code, body = http_get(f"{live.prometheus_url}/api/v1/rules")
    rules = [rule for group in json.loads(body)["data"]["groups"] for rule in group["rules"]]
    expected = {rule.get("record") or rule.get("alert")
                for path in promql.rule_files() for rule in promql.load_rules(path)}
    assert {rule["name"] for rule in rules} == expected
    broken = [f'{rule["name"]}: {rule.get("lastError")}' for rule in rules if rule.get("health") != "ok"]
    assert not broken, "rules failing to evaluate:\n" + "\n".join(broken)


def test_every_expression_is_valid_and_returns_data(live):
    problems = []
    print(f"\nEvaluating {len(EXPRESSIONS)} expressions against {live.prometheus_url}:")
    for expression in EXPRESSIONS:
        status, result, error = live.query(expression.expr)
        print(f"  {len(result):3d} series  [{expression.kind}] {expression.origin}")
        print(f"               {expression.expr}")
        if status != "success":
            problems.append(f"INVALID ({error}): {expression}")
        elif not result and expression.kind != "alert":  # a full alert condition is empty when not firing
            problems.append(f"NO DATA: {expression}")
    print(f"{len(EXPRESSIONS)} expressions evaluated, {len(problems)} problems")
    assert not problems, "\n".join(problems) + "\n\n" + live.logs()


@pytest.mark.parametrize("alert", ALERTS_THAT_MUST_FIRE)
def test_outage_alerts_fire_after_the_demo(live, alert):
    """The demo's full outage exhausts the budget: both conditions must be true over the last 5 minutes."""
    condition = next(e for e in EXPRESSIONS if e.kind == "alert" and e.name == alert)
    signal = next(e for e in EXPRESSIONS if e.kind == "alert_signal" and e.name == alert)
    status, result, error = live.query(condition.expr)
    assert status == "success", error
    _status, values, _error = live.query(signal.expr)
    shown = [f'{v["metric"]} = {v["value"][1]}' for v in values]
    print(f"\n{alert}: {condition.expr}\n  signal values: {shown}\n  demo says: {live.demo_summary()}")
    assert result, (f"{alert} did not fire after the demo's outage: {condition.expr}\nsignal: {shown}\n"
                    f"demo's own summary: {live.demo_summary()}")


EXPOSITION_NAME = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{|\s)")


def exported_names(text: str) -> set[str]:
    return {m.group(1) for line in text.splitlines() if (m := EXPOSITION_NAME.match(line))}


def test_every_metric_name_used_is_exported(live):
    demo_code, demo_metrics = http_get(f"{live.demo_url}/metrics")
    probe_code, probe_metrics = http_get(f"{live.probe_url}/metrics")
    assert demo_code == 200 and probe_code == 200
    exported = exported_names(demo_metrics) | exported_names(probe_metrics)
    used = set().union(*(promql.metric_names(e.expr) for e in EXPRESSIONS)) - promql.recorded_names()
    missing = sorted(used - exported)
    assert not missing, f"used by the dashboards/rules but not in the agent's /metrics: {missing}"
    # The demo itself exports everything but the probe's gauge.
    demo_missing = sorted(used - promql.PROBE_ONLY_METRICS - exported_names(demo_metrics))
    assert not demo_missing, f"not in the demo's /metrics: {demo_missing}"
