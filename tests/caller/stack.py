"""A real `retrybudget fake-upstream` (every answer 503) and a real `retrybudget proxy` in front of it, as
processes, plus the callers that retry on top of it. Shared by tests/caller and bench/caller-amplification.py.

Nothing here sleeps for timing: waits poll for a condition with a generous bound.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import procs  # noqa: E402  (tests/procs.py)
from procs import Proc, binary, free_port, wait_http  # noqa: E402

MODEL = "fake-model"


@dataclass
class Budget:
    """The proxy's shared-budget flags (retry-semantics.md §3); the bounds below are derived from them."""

    ratio: float = 0.1
    min_per_sec: float = 0.1
    ttl_s: float = 10.0

    def flags(self) -> list[str]:
        return ["--budget-ratio", str(self.ratio), "--budget-min-per-sec", str(self.min_per_sec),
                "--budget-ttl", f"{int(self.ttl_s * 1000)}ms"]

    def max_paid_retries(self, distinct: int, elapsed_s: float) -> float:
        """Most retries (ours and, with `--caller-retries budget`, the callers' re-sends) the budget can pay for
        while `distinct` new requests arrive within `elapsed_s` seconds.

        Every first attempt of a distinct request deposits `ratio`; every paid retry withdraws 1. Inside any
        window of `ttl`, withdrawals ≤ deposits in it + the floor's reserve `min_per_sec × ttl`. Slots expire
        after between 0.9 × ttl and ttl (10 slots), so [0, elapsed] is covered by ⌈elapsed / (0.9 × ttl)⌉ + 1
        such windows, each able to spend the reserve once: paid ≤ ratio × distinct + reserve × windows.
        """
        windows = int(elapsed_s // (0.9 * self.ttl_s)) + 2
        return self.ratio * distinct + self.min_per_sec * self.ttl_s * windows

    def amplification_bound(self, distinct: int, elapsed_s: float) -> float:
        """Upstream attempts per distinct request: each distinct request's first attempt, plus what the
        budget can pay for."""
        return 1 + self.max_paid_retries(distinct, elapsed_s) / distinct


@dataclass
class Stack:
    upstream: str
    proxy: str
    evidence: str
    logs: str
    procs: list = field(default_factory=list)

    def control(self, method: str, path: str, body=None):
        return procs.control(self.upstream, method, path, body)

    def upstream_count(self) -> int:
        return procs.upstream_count(self.upstream)

    def metrics(self) -> str:
        return procs.metrics(self.proxy)

    def nested(self) -> dict[str, float]:
        """retrybudget_client_nested_retries_total by source (the series without a source counts 0)."""
        out: dict[str, float] = {}
        for line in self.metrics().splitlines():
            if not line.startswith("retrybudget_client_nested_retries_total{"):
                continue
            m = re.search(r'retrybudget_caller_retry_source="([^"]+)"', line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + float(line.rsplit(" ", 1)[1])
        return out

    def evidence_lines(self, at_least: int = 1, timeout: float = 30) -> list[dict]:
        """The evidence file's records, once it holds `at_least` (its writer flushes every 100 ms: wait for them)."""
        deadline, lines = time.time() + timeout, []
        while True:
            lines = procs.evidence_records(self.evidence)
            if len(lines) >= at_least:
                return lines
            assert time.time() < deadline, f"{len(lines)} evidence lines after {timeout} s, expected {at_least}"
            time.sleep(0.05)

    def stop(self):
        for p in reversed(self.procs):
            p.stop()


def start_stack(mode: str, budget: Budget | None = None, extra: list[str] | None = None,
                log_dir: str | None = None) -> Stack:
    """fake-upstream answering every request 503, and the proxy with `--caller-retries mode`."""
    bin_ = binary()
    logs = log_dir or tempfile.mkdtemp(prefix="retrybudget-caller-")
    up_port, proxy_port = free_port(), free_port()
    evidence = os.path.join(logs, f"evidence-{mode}.jsonl")
    upstream = Proc([bin_, "fake-upstream", "--listen", f"127.0.0.1:{up_port}"], logs, f"upstream-{mode}")
    stack = Stack(f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{proxy_port}", evidence, logs, [upstream])
    try:
        wait_http(f"{stack.upstream}/_control/count")
        proxy = Proc([bin_, "proxy", "--listen", f"127.0.0.1:{proxy_port}", "--upstream", stack.upstream,
                      "--provider-name", "fake", "--route-name", "fake_chat_completions",
                      "--evidence-file", evidence, "--caller-retries", mode,
                      *(budget or Budget()).flags(), *(extra or [])], logs, f"proxy-{mode}")
        stack.procs.append(proxy)
        wait_http(f"{stack.proxy}/healthz")
        stack.control("PUT", "/_control/default", {"status": 503})
    except BaseException:
        stack.stop()
        raise
    return stack


def chat_body(i: int) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}],
                       "max_tokens": 8}).encode()


def post(url: str, body: bytes, key: str = "sk-loop-caller", headers: dict | None = None) -> tuple[int, dict]:
    """One plain HTTP POST (urllib: no SDK, no retry header). Returns status and response headers."""
    h = {"content-type": "application/json", "authorization": f"Bearer {key}", **(headers or {})}
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, dict(e.headers)


def hand_written_loop(proxy: str, i: int, resends: int = 3, key: str = "sk-loop-caller") -> list[int]:
    """What an application's own retry loop does: send, and on a failure send the same request again, up to
    `resends` more times, with a short pause. Returns the statuses it got."""
    statuses = []
    body = chat_body(i)
    for attempt in range(resends + 1):
        status, _ = post(proxy, body, key)
        statuses.append(status)
        if 200 <= status < 300:
            break
        if attempt < resends:
            time.sleep(0.05)
    return statuses
