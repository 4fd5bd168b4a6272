"""The official openai Python SDK, retries off, as the client of a running `retrybudget proxy`."""
import json
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
    pause_s = 1.0
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
    sdk.chat.completions.create(model="fake-model", messages=MSG)
    seen = control(stack, "GET", "/_control/requests")["requests"][-1]["headers"]
    assert "x-stainless-retry-count" in seen  # the SDK's own header reached the upstream
    assert seen.get("authorization") == "Bearer sk-test-not-a-real-key"  # forwarded, never recorded
    with urllib.request.urlopen(stack["proxy"] + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert "retrybudget_calls_total" in metrics
    # The evidence writer flushes every 100 ms: wait for this call's line rather than racing it.
    deadline, evidence = time.time() + 5, ""
    while time.time() < deadline:
        with open(stack["evidence"]) as f:
            evidence = f.read()
        if evidence.count("\n") >= 1:
            break
        time.sleep(0.05)
    assert evidence, "the proxy wrote evidence lines"
    assert "sk-test-not-a-real-key" not in evidence and "Say OK." not in evidence
