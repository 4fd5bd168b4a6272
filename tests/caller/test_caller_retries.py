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
