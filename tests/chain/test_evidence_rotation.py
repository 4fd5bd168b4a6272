"""The evidence file in production: size-based rotation and a logrotate-style reopen under load.

`retrybudget proxy --evidence-max-size 4KiB --evidence-keep 1000` in front of `retrybudget fake-upstream`
(20 % of attempts answered 503, so calls retry; a call whose 4 attempts all fail returns 503), driven by 8 concurrent callers. Half-way through, the file is
renamed the way logrotate does and the proxy gets SIGHUP. Afterwards: every attempt the upstream saw has
exactly one whole JSON line across all files (none lost, none split, none doubled), every rotated file stays
within the limit, a new file was started after the SIGHUP, and no evidence line was counted as dropped.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path

from chainlib import (Proc, binary, chat, free_ports, get_json, http, metric_value, read_evidence, set_load,
                      wait_http_ok, wait_until)

MAX_SIZE = 4096
CALLERS = 8
CALLS_PER_CALLER = 40


def drive(proxy: str, calls: int, failures: list) -> None:
    for _ in range(calls):
        status, body = chat(proxy)
        if status not in (200, 503):  # 503: all 4 attempts failed (0.2 % of calls at 20 % per attempt)
            failures.append((status, body[:200]))


def test_rotation_and_reopen_under_load_keep_every_line_whole():
    bin_ = binary("RETRYBUDGET_BIN")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        logs = tmp / "logs"
        logs.mkdir()
        evidence_dir = tmp / "evidence"
        evidence_dir.mkdir()
        evidence = evidence_dir / "evidence.jsonl"
        up_port, proxy_port = free_ports(2)
        upstream = f"http://127.0.0.1:{up_port}"
        proxy = f"http://127.0.0.1:{proxy_port}"
        procs = [Proc("upstream", [bin_, "fake-upstream", "--listen", f"127.0.0.1:{up_port}"], logs)]
        try:
            wait_http_ok(f"{upstream}/_control/health", 30, procs)
            procs.append(Proc("proxy", [
                bin_, "proxy", "--listen", f"127.0.0.1:{proxy_port}", "--upstream", upstream,
                "--evidence-file", str(evidence), "--evidence-max-size", "4KiB", "--evidence-keep", "1000",
                "--max-attempts", "4", "--budget-ratio", "1.0", "--budget-min-per-sec", "1000",
            ], logs))
            wait_http_ok(f"{proxy}/healthz", 30, procs)
            set_load(upstream, {"mode": "fail_percent", "percent": 20, "status": 503, "seed": 7})

            failures: list = []
            def run_callers():
                threads = [threading.Thread(target=drive, args=(proxy, CALLS_PER_CALLER // 2, failures))
                           for _ in range(CALLERS)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            run_callers()
            # logrotate: rename the live file, then SIGHUP (its postrotate). Lines written in between land in
            # the renamed file; after the reopen they go to a new evidence.jsonl.
            rotated_by_logrotate = evidence_dir / "evidence.jsonl-logrotated"
            evidence.rename(rotated_by_logrotate)
            procs[1].signal(signal.SIGHUP)
            wait_until("a new evidence.jsonl after SIGHUP", lambda: evidence.exists(), 10, procs)
            run_callers()
            assert failures == [], f"calls failed: {failures[:5]}"

            metrics = http("GET", f"{proxy}/metrics")[1].decode()
            attempts = metric_value(metrics, "retrybudget_attempts_total")
            dropped = metric_value(metrics, "retrybudget_telemetry_dropped_total", {"retrybudget_signal": "evidence"})
            upstream_count = get_json(f"{upstream}/_control/count")["count"]
            procs[1].stop()  # SIGTERM: drains, then flushes the evidence file
            assert procs[1].p.returncode == 0, procs[1].log_tail()

            files = sorted(evidence_dir.iterdir())
            for f in files:
                text = f.read_bytes()
                assert text.endswith(b"\n"), f"{f.name} ends mid-line"
                assert len(text) <= MAX_SIZE, f"{f.name}: {len(text)} bytes > {MAX_SIZE}"
            lines = read_evidence(evidence)  # json.loads on every line: a split line would fail here
            keys = [(line["trace_id"], line["retry_attempt"]) for line in lines]
            assert len(set(keys)) == len(keys), "an attempt's line was written twice"
            calls = CALLERS * (CALLS_PER_CALLER // 2) * 2
            assert upstream_count > calls, "expected retries (20 % of attempts fail)"
            assert len(lines) == upstream_count == attempts, (len(lines), upstream_count, attempts)
            assert sum(1 for line in lines if line.get("terminal_outcome")) == calls
            assert dropped == 0
            assert len(files) > 5, f"expected several size rotations, got {[f.name for f in files]}"
            assert rotated_by_logrotate in files and evidence.stat().st_size > 0
        finally:
            for p in reversed(procs):
                p.stop()
