#!/usr/bin/env python3
"""Provider-side amplification when callers retry on top of `retrybudget proxy` (issue 11).

For each caller — a hand-written retry loop (plain HTTP, 3 re-sends), the official openai SDK
(max_retries=2) and LiteLLM's proxy (`num_retries: 2`) — and each `--caller-retries` mode (off, detect,
budget), it starts a fresh fake upstream that answers every request 503 (a sustained outage) and a fresh
proxy in front of it, sends DISTINCT distinct requests (10 at a time), and prints:

    upstream requests / distinct requests   (what the provider saw)
    nested retries counted by the proxy, by source

Usage (LiteLLM is optional: ~750 MB, so it is not part of the test command):
    cargo build --release -p retrybudget
    python3 -m venv /tmp/litellm && /tmp/litellm/bin/pip install 'litellm[proxy]' openai
    RETRYBUDGET_BIN=target/release/retrybudget LITELLM=/tmp/litellm/bin/litellm \\
        /tmp/litellm/bin/python bench/caller-amplification.py [--distinct 40] [--callers loop,sdk,litellm]

Budget settings (the same as tests/caller): ratio 0.1, floor 0.1 retries/s, ttl 10 s, max 3 attempts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "caller"))
from stack import MODEL, Budget, Proc, chat_body, free_port, hand_written_loop, start_stack, wait_http  # noqa: E402
import procs  # noqa: E402  (tests/procs.py, on the path through stack)

BUDGET = Budget(ratio=0.1, min_per_sec=0.1, ttl_s=10)
CONCURRENCY = 10


def run_loop(proxy: str, distinct: int) -> None:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda i: hand_written_loop(proxy, i, 3), range(distinct)))


def run_sdk(proxy: str, distinct: int) -> None:
    import openai
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="sk-bench-sdk", max_retries=2, timeout=120)

    def one(i):
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"sdk {i}"}])
        except openai.APIStatusError:
            pass

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(distinct)))


def run_litellm(proxy: str, distinct: int, log_dir: str) -> None:
    litellm = os.environ.get("LITELLM") or "litellm"
    port = free_port()
    config = os.path.join(log_dir, "litellm.yaml")
    with open(config, "w") as f:
        f.write(f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {proxy}/v1
      api_key: sk-bench-litellm-upstream
router_settings:
  num_retries: 2
litellm_settings:
  num_retries: 2
""")
    env = {**os.environ, "LITELLM_MASTER_KEY": "sk-bench-master", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = open(os.path.join(log_dir, "litellm.out"), "wb")
    p = subprocess.Popen([litellm, "--config", config, "--host", "127.0.0.1", "--port", str(port)],
                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=400)

        def one(i):
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions", data=chat_body(i), method="POST",
                headers={"content-type": "application/json", "authorization": "Bearer sk-bench-master"})
            try:
                with urllib.request.urlopen(req, timeout=300) as r:
                    r.read()
            except urllib.error.HTTPError as e:
                e.read()

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, range(distinct)))
    finally:
        procs.stop_process(p, timeout=20)
        out.close()


def measure(caller: str, mode: str, distinct: int) -> dict:
    log_dir = tempfile.mkdtemp(prefix=f"caller-bench-{caller}-{mode}-")
    stack = start_stack(mode, budget=BUDGET, log_dir=log_dir)
    try:
        started = time.monotonic()
        if caller == "loop":
            run_loop(stack.proxy, distinct)
        elif caller == "sdk":
            run_sdk(stack.proxy, distinct)
        else:
            run_litellm(stack.proxy, distinct, log_dir)
        elapsed = time.monotonic() - started
        calls = sum(float(line.rsplit(" ", 1)[1]) for line in stack.metrics().splitlines()
                    if line.startswith("retrybudget_calls_total{"))
        upstream = stack.upstream_count()
        return {"caller": caller, "mode": mode, "distinct": distinct, "proxy_calls": int(calls),
                "upstream": upstream, "amplification": round(upstream / distinct, 2),
                "nested": stack.nested(), "seconds": round(elapsed, 1),
                "bound_with_budget": round(BUDGET.amplification_bound(distinct, elapsed), 2)}
    finally:
        stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--distinct", type=int, default=40)
    ap.add_argument("--callers", default="loop,sdk,litellm")
    ap.add_argument("--modes", default="off,detect,budget")
    args = ap.parse_args()
    rows = []
    for caller in args.callers.split(","):
        for mode in args.modes.split(","):
            row = measure(caller, mode, args.distinct)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| caller | mode | distinct | calls into proxy | upstream requests | provider amplification | nested retries (by source) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        nested = ", ".join(f"{k}={int(v)}" for k, v in sorted(r["nested"].items())) or "0"
        print(f"| {r['caller']} | {r['mode']} | {r['distinct']} | {r['proxy_calls']} | {r['upstream']} | "
              f"{r['amplification']:.2f}x | {nested} |")


if __name__ == "__main__":
    main()
