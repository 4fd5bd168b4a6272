#!/usr/bin/env python3
"""Regenerates docs/jaeger-budget-exhausted.png: Jaeger's UI on the trace of a budget-exhausted call.

Not run by CI (it needs the Jaeger UI build, which is not part of Jaeger's Go module). Run it by hand:

    cargo build -p retrybudget && export RETRYBUDGET_BIN=$PWD/target/debug/retrybudget
    export RETRYBUDGET_OTELCOL=$(collector-config/distribution/build.sh) RETRYBUDGET_JAEGER=$(collector-config/jaeger/build.sh)
    # the UI of the same Jaeger release, built once:
    git clone --depth 1 --branch v1.76.0 https://github.com/jaegertracing/jaeger-ui && cd jaeger-ui &&
      npm ci --engine-strict=false && npm run build -w packages/jaeger-ui && cd ..
    export JAEGER_UI_ASSETS=$PWD/jaeger-ui/packages/jaeger-ui/build
    python3 docs/jaeger_screenshot.py          # needs Debian `chromium`

It runs the same chain as tests/chain (proxy → collector agent → gateway with tail sampling → Jaeger, shipped
configs), puts the fake upstream into a full outage until a call ends `budget_exhausted`, waits until that trace
has passed tail sampling, and has headless Chromium take the trace page.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "chain"))

from chainlib import Proc, binary, chat, free_ports, read_evidence, set_load, wait_http_ok, wait_until  # noqa: E402
from stack import AGENT_CONFIG, GATEWAY_CONFIG, SERVICE, Collector, Jaeger  # noqa: E402

OUT = REPO / "docs" / "jaeger-budget-exhausted.png"


def main() -> None:
    assets = os.environ.get("JAEGER_UI_ASSETS", "")
    if not (Path(assets) / "index.html").exists():
        sys.exit("set JAEGER_UI_ASSETS to a built jaeger-ui (packages/jaeger-ui/build); see this file's docstring")
    bin_ = binary("RETRYBUDGET_BIN")
    with tempfile.TemporaryDirectory(prefix="retrybudget-shot-") as tmp:
        work = Path(tmp)
        procs = []
        try:
            jaeger = Jaeger(work)
            procs.append(jaeger.proc)
            gateway = Collector("gateway", [GATEWAY_CONFIG], work, {
                "OTELCOL_JAEGER_ENDPOINT": f"127.0.0.1:{jaeger.otlp_grpc}",
                "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_ports(1)[0]}"})
            agent = Collector("agent", [AGENT_CONFIG], work,
                              {"OTELCOL_GATEWAY_ENDPOINT": f"127.0.0.1:{gateway.otlp_grpc}"})
            procs += [gateway.proc, agent.proc]
            up_port, proxy_port = free_ports(2)
            upstream, proxy = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{proxy_port}"
            evidence = work / "evidence.jsonl"
            procs.append(Proc("upstream", [bin_, "fake-upstream", "--listen", f"127.0.0.1:{up_port}"], work))
            procs.append(Proc("proxy", [bin_, "proxy", "--listen", f"127.0.0.1:{proxy_port}", "--upstream", upstream,
                                        "--provider-name", "openai", "--route-name", "openai_chat_completions",
                                        "--evidence-file", str(evidence)], work, {
                "OTEL_SERVICE_NAME": SERVICE, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{agent.otlp_grpc}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_BSP_SCHEDULE_DELAY": "500"}))
            for ready in (jaeger, gateway, agent):
                ready.wait_ready()
            wait_http_ok(f"{upstream}/_control/health", 30, procs)
            wait_http_ok(f"{proxy}/healthz", 30, procs)
            for _ in range(20):
                chat(proxy, model="gpt-4o-mini")
            set_load(upstream, {"mode": "outage", "from_ms": 0, "until_ms": 3_600_000, "status": 503})

            def exhausted():
                chat(proxy, model="gpt-4o-mini")
                return [line["trace_id"] for line in read_evidence(evidence)
                        if line.get("terminal_outcome") == "budget_exhausted"]

            trace_id = wait_until("a budget-exhausted call", exhausted, 120, procs)[0]
            wait_until("its trace in Jaeger (tail sampling waits 30 s)",
                       lambda: (t := jaeger.trace(trace_id)) and len(t["spans"]) >= 3, 120, procs, interval=2)
            profile = work / "chromium-profile"
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars",
                            "--window-size=1500,900", "--virtual-time-budget=15000", f"--screenshot={OUT}",
                            f"{jaeger.url}/trace/{trace_id}"],
                           check=True, timeout=120, capture_output=True)
            print(f"wrote {OUT.relative_to(REPO)} (trace {trace_id})")
        finally:
            for p in reversed(procs):
                p.stop()


if __name__ == "__main__":
    main()
