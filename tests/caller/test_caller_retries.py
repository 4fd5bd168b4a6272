"""Callers that retry on top of `retrybudget proxy`: recognised, counted, and (with `budget`) paid for.

Every test runs a real fake-upstream that answers every request 503 (a sustained outage) and a real proxy in
front of it, and drives it the way applications do: a hand-written loop over plain HTTP (no SDK headers) and
the official `openai` SDK with its own `max_retries=2`. Provider-side amplification = requests the upstream
saw / distinct caller requests.
"""
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from stack import MODEL, Budget, chat_body, hand_written_loop, post

RESENDS = 3  # the hand-written loop re-sends a failing request 3 times (4 sends in all)


def run_loops(proxy, distinct, workers=10, **kwargs):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: hand_written_loop(proxy, i, RESENDS, **kwargs), range(distinct)))


def test_hand_written_loop_is_counted_by_fingerprint(stack_for):
    stack = stack_for("detect", budget=Budget(ratio=0.1, min_per_sec=1, ttl_s=10))
    distinct = 5
    results = run_loops(stack.proxy, distinct)
    assert all(len(s) == RESENDS + 1 and all(c == 503 for c in s) for s in results), results
    nested = stack.nested()
    assert nested == {"fingerprint": distinct * RESENDS}, nested
    # `detect` only counts: the re-sends still reach the upstream like fresh traffic.
    assert stack.upstream_count() >= distinct * (RESENDS + 1)


def test_an_identical_request_after_a_success_is_not_a_retry(stack_for):
    stack = stack_for("detect")
    stack.control("PUT", "/_control/default", {"status": 200})
    for _ in range(3):
        status, _ = post(stack.proxy, chat_body(1))
        assert status == 200
    assert stack.nested() == {}
    assert stack.upstream_count() == 3


def test_distinct_callers_with_the_same_prompt_are_not_linked(stack_for):
    stack = stack_for("detect", extra=["--max-attempts", "1"])
    body = chat_body(7)
    for key in ("sk-caller-a", "sk-caller-b", "sk-caller-c"):
        assert post(stack.proxy, body, key)[0] == 503
    assert stack.nested() == {}
    # The same caller again is its retry.
    assert post(stack.proxy, body, "sk-caller-b")[0] == 503
    assert stack.nested() == {"fingerprint": 1}


def test_off_remembers_nothing(stack_for):
    stack = stack_for("off", extra=["--max-attempts", "1"])
    hand_written_loop(stack.proxy, 1, RESENDS)
    assert stack.nested() == {}
    assert stack.upstream_count() == RESENDS + 1


# === with `--caller-retries budget`: the provider-side bound ============================================
# Settings of the bound tests: ratio 0.1, floor 0.1 retries/s, ttl 10 s. Every distinct request's first
# attempt deposits 0.1; every paid retry — ours, or a caller's re-send — withdraws 1 (Budget.max_paid_retries
# derives the most the budget can pay). So the upstream sees at most
#     distinct × (1 + ratio) + min_per_sec × ttl × (⌊elapsed / 9 s⌋ + 2)
# requests: with 60 distinct requests inside 20 s that is 60 × 1.1 + 1 × 4 = 70, i.e. ≤ 1.17× ≤ 1.2×.
BOUND_BUDGET = Budget(ratio=0.1, min_per_sec=0.1, ttl_s=10)
DISTINCT = 60
CEILING = 1.2


def assert_provider_bound(stack, distinct, elapsed):
    seen = stack.upstream_count()
    bound = BOUND_BUDGET.amplification_bound(distinct, elapsed)
    print(f"\nupstream saw {seen} requests for {distinct} distinct ones in {elapsed:.1f}s: "
          f"{seen / distinct:.3f}x (derived bound {bound:.3f}x, ceiling {CEILING}x)")
    assert bound <= CEILING, f"the test ran too long for its own bound: {elapsed:.1f}s"
    assert seen / distinct <= bound
    return seen


def test_budget_holds_under_a_hand_written_loop(stack_for):
    import time
    stack = stack_for("budget", budget=BOUND_BUDGET)
    started = time.monotonic()
    results = run_loops(stack.proxy, DISTINCT)
    elapsed = time.monotonic() - started
    assert all(len(s) == RESENDS + 1 for s in results), results
    assert_provider_bound(stack, DISTINCT, elapsed)
    # Every re-send was recognised, paid or refused...
    assert stack.nested() == {"fingerprint": DISTINCT * RESENDS}
    # ...and the refused ones got a fast 429 saying why, with a retry-after.
    refused = [s for s in results for c in s[1:] if c == 429]
    assert refused, results
    status, headers = post(stack.proxy, chat_body(0))
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert headers["x-retrybudget-attempts"] == "0"
    assert headers["x-retrybudget-outcome"] == "budget_exhausted"
    # The evidence says which calls were caller retries, and the refused ones made no upstream attempt.
    records = stack.evidence_lines(at_least=DISTINCT * (RESENDS + 1) + 1)
    resent = [r for r in records if r.get("caller_retry") == "fingerprint"]
    assert resent and all(r["caller_attempt"] >= 1 for r in resent)
    refusals = [r for r in resent if r["decision"] == "stop_budget_exhausted" and "http_status_code" not in r]
    assert refusals and all(r["terminal_outcome"] == "budget_exhausted" for r in refusals)
    assert not any("sk-loop-caller" in str(r) or "question" in str(r) for r in records)


def test_detect_and_off_do_not_hold_the_bound(stack_for):
    """The same loop without `budget`: every re-send deposits like new traffic and is retried again. This is
    what the bound above protects against (and shows the test can fail)."""
    import time
    stack = stack_for("detect", budget=BOUND_BUDGET)
    started = time.monotonic()
    run_loops(stack.proxy, 20)
    elapsed = time.monotonic() - started
    assert stack.upstream_count() / 20 > BOUND_BUDGET.amplification_bound(20, elapsed)


def sdk_calls(proxy, distinct, max_retries=2):
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="sk-sdk-caller", max_retries=max_retries, timeout=60)

    def one(i):
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"sdk {i}"}])
            return 200
        except openai.APIStatusError as e:
            return e.status_code

    with ThreadPoolExecutor(DISTINCT) as pool:
        return list(pool.map(one, range(distinct)))


def test_openai_sdk_retries_are_counted_by_header(stack_for):
    stack = stack_for("detect", extra=["--max-attempts", "1"])
    statuses = sdk_calls(stack.proxy, 3)
    assert statuses == [503, 503, 503]
    # Each call: the first send and two SDK retries; with one proxy attempt each, 9 upstream requests.
    assert stack.nested() == {"header": 6}
    assert stack.upstream_count() == 9


def test_budget_holds_under_the_openai_sdk(stack_for):
    import time
    stack = stack_for("budget", budget=BOUND_BUDGET)
    started = time.monotonic()
    statuses = sdk_calls(stack.proxy, DISTINCT)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {429, 503}, statuses
    assert_provider_bound(stack, DISTINCT, elapsed)
    assert stack.nested() == {"header": DISTINCT * 2}
