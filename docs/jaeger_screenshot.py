#!/usr/bin/env python3
"""Regenerates docs/jaeger-budget-exhausted.png: Jaeger's UI on the trace of a budget-exhausted call.

Run by hand after changing what a trace looks like (never by CI: the picture changes with every run's timing):

    python3 docs/jaeger_screenshot.py

Everything it needs it builds when missing, each cached: the retrybudget binary (`cargo build`, or
$RETRYBUDGET_BIN), the collector and Jaeger (collector-config/distribution/build.sh and jaeger/build.sh, or
$RETRYBUDGET_OTELCOL / $RETRYBUDGET_JAEGER) and Jaeger's UI (collector-config/jaeger/build-ui.sh, about 6 min the
first time, or $JAEGER_UI_ASSETS: Jaeger's Go module embeds only a placeholder page). Needs Debian `chromium` and
python3 with websocket-client and PyYAML (tests/run.sh installs all three).

It runs the same chain as tests/chain, on the shipped configs: retrybudget proxy → collector agent → collector
gateway (tail sampling) → Jaeger serving the UI. The fake upstream answers 200 for a while, then goes into a full
outage until calls end `budget_exhausted`; the one pictured is a call that got one retry before the budget said no
(503, 503, denied). Once its trace has passed tail sampling (found through Jaeger's query API by tag
`retrybudget.outcome=budget_exhausted`), headless Chromium opens /trace/<id>, waits until every span's row is
drawn, opens the logical `chat` span's tags and takes the picture. Every process is stopped by its pid.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "chain"))
sys.path.insert(0, str(REPO / "tests" / "report"))

OUT = REPO / "docs" / "jaeger-budget-exhausted.png"
WIDTH, HEIGHT = 1360, 860


def built(var: str, command: list[str]) -> str:
    """$var if set, else the path the build command prints (it caches, so this is instant after the first time)."""
    if os.environ.get(var):
        return os.environ[var]
    print(f"building: {' '.join(command)}", file=sys.stderr)
    path = subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    os.environ[var] = path
    return path


def prepare() -> None:
    if not os.environ.get("RETRYBUDGET_BIN"):
        subprocess.run(["cargo", "build", "-p", "retrybudget"], cwd=REPO, check=True)
        os.environ["RETRYBUDGET_BIN"] = str(REPO / "target" / "debug" / "retrybudget")
    built("RETRYBUDGET_OTELCOL", ["collector-config/distribution/build.sh"])
    built("RETRYBUDGET_JAEGER", ["collector-config/jaeger/build.sh"])
    assets = built("JAEGER_UI_ASSETS", ["collector-config/jaeger/build-ui.sh"])
    if not (Path(assets) / "index.html").exists():
        sys.exit(f"JAEGER_UI_ASSETS={assets} has no index.html: point it at a built jaeger-ui (build-ui.sh's output)")


def js(page, expression: str):
    return page.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def screenshot(url: str, spans: list[dict]) -> None:
    """Opens the trace page, checks that it drew every span, opens the chat span's tags, writes OUT."""
    from browser import Page

    page = Page(width=WIDTH, height=HEIGHT)
    try:
        page.call("Page.navigate", url=url)
        page.wait_for("Page.loadEventFired")
        deadline = time.monotonic() + 60
        while js(page, "document.querySelectorAll('.span-row').length") != len(spans):
            if time.monotonic() > deadline:
                text = js(page, "document.body.innerText.slice(0, 2000)")
                raise RuntimeError(f"the trace page did not draw {len(spans)} span rows within 60 s; it shows:\n{text}")
            page.drain(0.5)
        chat = next(s["operationName"] for s in spans if s["operationName"].startswith("chat "))
        # Open the logical span's detail (its tags carry retrybudget.outcome/stop_reason/attempts/budget.remaining).
        clicked = js(page, f"""(() => {{
            const row = [...document.querySelectorAll('.span-row')]
                .find(r => r.querySelector('.span-name') && r.querySelector('.span-name').innerText.includes({chat!r}));
            if (!row) return false;
            row.querySelector('.span-view').click();
            return true; }})()""")
        if not clicked:
            raise RuntimeError(f"no row for the {chat!r} span on the trace page")
        page.drain(1.0)
        # Expand the tags table of the opened detail so the values, not just the keys, are in the picture.
        js(page, """(() => { const h = document.querySelector('.AccordianKeyValues--header');
                             if (h && !document.querySelector('.AccordianKeyValues--table')) h.click(); })()""")
        page.drain(1.0)
        # The opened detail pushes the attempt rows down: make the window tall enough that the last row shows.
        bottom = js(page, "(() => { const r = [...document.querySelectorAll('.span-row')].pop();"
                          " return r ? Math.ceil(r.getBoundingClientRect().bottom) : 0; })()")
        if bottom + 12 > HEIGHT:
            page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=bottom + 12, deviceScaleFactor=1,
                      mobile=False)
            page.drain(1.0)
        if js(page, "document.querySelectorAll('.span-row').length") != len(spans):
            raise RuntimeError(f"with the chat span's detail open the page no longer draws all {len(spans)} span rows")
        body = js(page, "document.body.innerText")
        for needed in ("budget_exhausted", chat):
            if needed not in body:
                raise RuntimeError(f"the trace page does not show {needed!r}:\n{body[:2000]}")
        shot = page.call("Page.captureScreenshot", format="png")
        OUT.write_bytes(base64.b64decode(shot["data"]))
    finally:
        page.close()


def main() -> None:
    prepare()
    from chainlib import Proc, binary, chat, free_ports, http, read_evidence, set_load, wait_http_ok, wait_until
    from stack import AGENT_CONFIG, GATEWAY_CONFIG, SERVICE, Collector, Jaeger

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
            procs.append(gateway.proc)
            agent = Collector("agent", [AGENT_CONFIG], work,
                              {"OTELCOL_GATEWAY_ENDPOINT": f"127.0.0.1:{gateway.otlp_grpc}"})
            procs.append(agent.proc)
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
            status, index = http("GET", f"{jaeger.url}/")
            if status != 200 or b"not the Jaeger UI" in index:
                raise RuntimeError(f"Jaeger serves its placeholder page, not the UI from {os.environ['JAEGER_UI_ASSETS']}")

            for _ in range(20):  # traffic the budget earns its retries from
                chat(proxy, model="gpt-4o-mini")
            set_load(upstream, {"mode": "outage", "from_ms": 0, "until_ms": 3_600_000, "status": 503})

            # During the outage the budget runs dry, then every call's first attempt deposits `ratio` (0.1) again:
            # about every tenth call gets one retry before the budget says no. That call tells the whole story.
            def exhausted_after_a_retry() -> list[str]:
                chat(proxy, model="gpt-4o-mini")
                lines = read_evidence(evidence)
                done = {x["trace_id"] for x in lines if x.get("terminal_outcome") == "budget_exhausted"}
                return [t for t in done if sum(x["trace_id"] == t for x in lines) >= 2]

            trace_id = wait_until("a call that retried once, then was denied by the budget", exhausted_after_a_retry,
                                  120, procs)[0]
            attempts = sum(x["trace_id"] == trace_id for x in read_evidence(evidence))

            def found():
                hits = jaeger.traces({"retrybudget.outcome": "budget_exhausted"})
                return next((t for t in hits if t["traceID"] == trace_id), None)

            trace = wait_until("its trace in Jaeger by tag retrybudget.outcome=budget_exhausted (tail sampling "
                               "decides after 30 s)", found, 150, procs, interval=2)
            trace = wait_until("all its spans", lambda: (t := jaeger.trace(trace_id)) and
                               len(t["spans"]) >= 2 + attempts and t, 30, procs, interval=1)
            spans = trace["spans"]
            screenshot(f"{jaeger.url}/trace/{trace_id}", spans)
            kb = OUT.stat().st_size // 1024
            print(f"wrote {OUT.relative_to(REPO)} ({kb} KiB): trace {trace_id}, {len(spans)} spans: "
                  + ", ".join(sorted(s["operationName"] for s in spans)) + f"; {attempts} attempt(s)")
            for s in spans:
                for warning in s.get("warnings") or []:
                    print(f"Jaeger's warning on span {s['operationName']!r}: {warning}")
        finally:
            for p in reversed(procs):
                p.stop()


if __name__ == "__main__":
    main()
