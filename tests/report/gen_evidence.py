"""Write a large, realistic JSONL evidence file for measuring `retrybudget report` (BENCHMARKS.md).

    python3 tests/report/gen_evidence.py OUT.jsonl [--lines 1000000] [--rate 200]

Calls start at --rate per second over three routes; about 8 % retry once or twice, and for the middle fifth of
the file an outage makes every first attempt fail with 503 and the shared budget deny most retries. Lines are
written as a stream (no list in memory) in the field order of `crates/telemetry/src/record.rs`.
"""

import argparse
import json
import random

NOTES = {
    "done": "documented success response received",
    "retry": "transient failure; retry scheduled after backoff",
    "stop_budget_exhausted": "shared retry budget exhausted; retry denied",
    "stop_non_retryable": "failure class is not safe to retry; stopped",
    "stop_attempts_exhausted": "attempt allowance used up; stopped",
}
START_MS = 1_781_308_800_000  # 2026-06-13T00:00:00Z


def ts(ms):
    import datetime

    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def line(ms, route, trace, attempt, decision, status, error, outcome, balance, backoff, source):
    rec = {
        "timestamp": ts(ms),
        "environment": "bench",
        "provider_route": route,
        "model": "gpt-bench",
        "http_method": "POST",
        "http_route": "/v1/chat/completions",
    }
    if status is not None:
        rec["http_status_code"] = status
    if error is not None:
        rec["error_type"] = error
    rec.update({
        "retry_attempt": attempt,
        "retry_budget_remaining": max(0, 2 - attempt),
        "shared_budget_balance": round(balance, 3),
        "backoff_applied_ms": backoff,
    })
    if source:
        rec["delay_source"] = source
    rec.update({"elapsed_bucket": "<1s" if attempt == 0 else "<10s", "decision": decision})
    if outcome:
        rec["client_result"] = "success" if outcome.startswith("success") else "failure"
        rec["terminal_outcome"] = outcome
    rec.update({"operator_note": NOTES[decision], "trace_id": f"{trace:032x}", "span_id": f"{trace * 4 + attempt:016x}"})
    return json.dumps(rec, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=200)
    a = ap.parse_args()
    rnd = random.Random(7)
    routes = ["openai_chat_completions", "cometapi_chat_completions", "azure_chat_completions"]
    balance = {r: 10.0 for r in routes}
    written, trace = 0, 0
    with open(a.out, "w", buffering=1 << 20) as f:
        while written < a.lines:
            trace += 1
            ms = START_MS + trace * 1000 // a.rate
            route = routes[trace % 3]
            outage = 0.4 <= written / a.lines < 0.6
            balance[route] = min(10.0, balance[route] + 0.25)
            fails = 3 if outage else (1 if rnd.random() < 0.06 else (2 if rnd.random() < 0.02 else 0))
            out = []
            for attempt in range(3):
                t = ms + attempt * 300
                backoff = 0 if attempt == 0 else 250 * attempt
                source = None if attempt == 0 else ("retry_after" if rnd.random() < 0.2 else "backoff")
                if attempt >= fails:
                    outcome = "success" if attempt == 0 else "success_after_retry"
                    out.append(line(t, route, trace, attempt, "done", 200, None, outcome, balance[route], backoff, source))
                    break
                if attempt == 2:
                    out.append(line(t, route, trace, attempt, "stop_attempts_exhausted", 503, "503", "failed_after_retry", balance[route], backoff, source))
                    break
                if balance[route] < 1.0:
                    out.append(line(t, route, trace, attempt, "stop_budget_exhausted", 503, "503", "budget_exhausted", balance[route], backoff, source))
                    break
                balance[route] -= 1.0
                out.append(line(t, route, trace, attempt, "retry", 503, "503", None, balance[route], backoff, source))
            for l in out[: a.lines - written]:
                f.write(l + "\n")
            written += len(out)
    print(f"wrote {written} lines ({trace} calls) to {a.out}")


if __name__ == "__main__":
    main()
