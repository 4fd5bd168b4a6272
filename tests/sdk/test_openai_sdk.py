"""The official openai Python SDK, retries off, as the client of a running `retrybudget proxy`."""
import json
import os
import time
import urllib.request

import openai
import pytest


def control(stack, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(stack["upstream"] + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"{}")


@pytest.fixture
def sdk(stack):
    control(stack, "POST", "/_control/reset")
    return openai.OpenAI(base_url=stack["proxy"] + "/v1", api_key="sk-test-not-a-real-key", max_retries=0, timeout=30)


def upstream_count(stack):
    return control(stack, "GET", "/_control/count")["count"]


MSG = [{"role": "user", "content": "Say OK."}]


def test_non_streaming_success(sdk, stack):
    raw = sdk.chat.completions.with_raw_response.create(model="fake-model", messages=MSG)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-retrybudget-attempts"] == "1"
    assert raw.headers["x-retrybudget-outcome"] == "success"
    assert upstream_count(stack) == 1


def test_streaming_success(sdk, stack):
    stream = sdk.chat.completions.create(model="fake-model", messages=MSG, stream=True,
                                         stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text
    assert usage is not None and usage.completion_tokens > 0
    assert upstream_count(stack) == 1



def test_streaming_first_chunk_is_not_held_back(sdk, stack):
    """Time to first chunk through the SDK against a slow upstream: it sends its first event at once and then
    pauses before each of the others (six more and [DONE]). A proxy that collects the stream before relaying
    it hands the SDK its first chunk only after the last pause, seconds later."""
    pause_s = 2.0  # the first chunk's own round trip on a loaded CI machine must fit well inside it
    control(stack, "POST", "/_control/script", [{"status": 200, "chunk_delay_ms": int(pause_s * 1000)}])
    started = time.monotonic()
    stream = sdk.chat.completions.create(model="fake-model", messages=MSG, stream=True)
    first = next(iter(stream))
    took = time.monotonic() - started
    stream.close()
    assert first.object == "chat.completion.chunk"
    assert took < pause_s, f"first chunk after {took:.3f} s, not before the upstream's first {pause_s} s pause ended"
    assert upstream_count(stack) == 1

def test_503_503_200_succeeds_after_three_attempts(sdk, stack):
    control(stack, "POST", "/_control/script", [{"status": 503}, {"status": 503}, {"status": 200}])
    raw = sdk.chat.completions.with_raw_response.create(model="fake-model", messages=MSG)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-retrybudget-attempts"] == "3"
    assert raw.headers["x-retrybudget-outcome"] == "success_after_retry"
    assert upstream_count(stack) == 3


def test_upstream_400_is_a_bad_request_after_one_attempt(sdk, stack):
    control(stack, "POST", "/_control/script", [{"status": 400}])
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="fake-model", messages=MSG)
    assert err.value.response.headers["x-retrybudget-attempts"] == "1"
    assert err.value.response.headers["x-retrybudget-outcome"] == "failed_without_retry"
    assert upstream_count(stack) == 1


def test_locally_invalid_request_never_reaches_the_upstream(sdk, stack):
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="fake-model", messages=[])
    assert "messages" in str(err.value)
    assert upstream_count(stack) == 0


def test_sdk_retry_header_is_seen_and_evidence_has_no_key(sdk, stack):
    before = evidence_lines(stack)  # the file is the module's: wait for this call's own line below
    sdk.chat.completions.create(model="fake-model", messages=MSG)
    seen = control(stack, "GET", "/_control/requests")["requests"][-1]["headers"]
    assert "x-stainless-retry-count" in seen  # the SDK's own header reached the upstream
    # Forwarded (the fake shows its length only: /_control/requests never hands out credentials).
    assert seen.get("authorization") == "[redacted; %d bytes]" % len("Bearer sk-test-not-a-real-key")
    with urllib.request.urlopen(stack["proxy"] + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert "retrybudget_calls_total" in metrics
    # The evidence writer flushes every 100 ms: wait for this call's line rather than racing it.
    deadline = time.time() + 5
    while evidence_lines(stack) <= before:
        assert time.time() < deadline, "the proxy wrote no evidence line for this call within 5 s"
        time.sleep(0.05)
    with open(stack["evidence"]) as f:
        evidence = f.read()
    assert "sk-test-not-a-real-key" not in evidence and "Say OK." not in evidence


# --- leak scan: fragments of every canary, over every output the stack writes --------------------------------

CANARY_KEY = "sk-canary-5e2b9d4f7a1c3e8b"
CANARY_PROMPT = "canary-prompt-9c4e1a7d3b5f"
# The fake upstream's fixed reply, streamed in pieces ("This is a ", "reply from the ", ...). Its fragments are
# 14 characters: every streamed piece that long is caught, and " retrybudget" alone (a # HELP line) is not a leak.
REPLY = "This is a reply from the retrybudget fake upstream."


def fragments(canary, length):
    """Every substring of `length` characters: a truncated key or one streamed piece of a reply is caught."""
    return {canary[i:i + length] for i in range(len(canary) - length + 1)}


def leaks(text, canaries):
    return sorted({f for c, n in canaries for f in fragments(c, n) if f in text})


def test_fragments_are_found():
    # The scan itself: a truncated key and one streamed piece are found, clean text is not.
    secrets = [(CANARY_KEY, 10), (REPLY, 14)]
    assert leaks("auth=" + CANARY_KEY[:12], secrets)
    assert leaks("chunk: reply from the ", secrets)
    assert not leaks("retrybudget_calls_total{retrybudget_outcome=\"success\"} 3", secrets)


def evidence_lines(stack):
    with open(stack["evidence"]) as f:
        return f.read().count("\n")


def test_canaries_leak_nowhere(stack):
    control(stack, "POST", "/_control/reset")
    sdk = openai.OpenAI(base_url=stack["proxy"] + "/v1", api_key=CANARY_KEY, max_retries=0, timeout=30)
    msg = [{"role": "user", "content": CANARY_PROMPT}]
    before = evidence_lines(stack)
    received = []
    control(stack, "POST", "/_control/script", [{"status": 503}, {"status": 200}, {"status": 400}])
    raw = sdk.chat.completions.with_raw_response.create(model="fake-model", messages=msg)
    received.append(raw.http_response.text)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="fake-model", messages=msg)
    received.append(err.value.response.text)
    with pytest.raises(openai.BadRequestError) as err:  # refused locally: no messages
        sdk.chat.completions.create(model="fake-model", messages=[], extra_body={"note": CANARY_PROMPT})
    received.append(err.value.response.text)
    stream = sdk.chat.completions.create(model="fake-model", messages=msg, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == REPLY, "the reply canary is live"
    # The canaries are live: the key reached the upstream (its length shows), the prompt was sent.
    seen = control(stack, "GET", "/_control/requests")["requests"]
    assert seen[0]["headers"]["authorization"] == "[redacted; %d bytes]" % len("Bearer " + CANARY_KEY)
    assert all(r["body_len"] > len(CANARY_PROMPT) for r in seen)
    # Never scan before the evidence exists: 2 attempts + 1 + 1 local refusal + 1 stream = 5 new lines.
    deadline = time.time() + 10
    while evidence_lines(stack) < before + 5 and time.time() < deadline:
        time.sleep(0.05)
    assert evidence_lines(stack) >= before + 5, "the evidence lines of these calls were written"
    with urllib.request.urlopen(stack["proxy"] + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert "retrybudget_calls_total" in metrics
    outputs = {"/metrics": metrics}
    with open(stack["evidence"]) as f:
        outputs["evidence"] = f.read()
    for name in ("proxy.out", "proxy.err", "upstream.out", "upstream.err"):
        with open(os.path.join(stack["logs"], name), errors="replace") as f:
            outputs[name] = f.read()
    secrets = [(CANARY_KEY, 10), (CANARY_PROMPT, 10), (REPLY, 14)]
    for name, text in outputs.items():
        # The fake upstream's own banner names it ("retrybudget fake-upstream ..."): scan it for key and prompt.
        found = leaks(text, secrets if not name.startswith("upstream") else secrets[:2])
        assert not found, f"canary fragments {found} found in {name}"
    for i, body in enumerate(received):
        found = leaks(body, [(CANARY_KEY, 10), (CANARY_PROMPT, 10)])
        assert not found, f"canary fragments {found} in the SDK's received body #{i}"
