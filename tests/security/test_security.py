"""The security suite: each defence of the proxy that holds the provider key, tried against a running
`retrybudget proxy` process as an attacker (or a careless caller) would. Every test fails without its defence;
SECURITY.md maps threat -> defence -> test."""
import contextlib
import json
import socket
import subprocess
import threading
import time

import openai
import pytest

from sec_stack import CALLER_TOKEN, PROVIDER_KEY, binary, free_port

CHAT = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "Say OK."}]}).encode()
MSG = [{"role": "user", "content": "Say OK."}]


# === helpers ===


def raw(port, head: str, body: bytes = b"", timeout=10.0):
    """Sends `head` (request line + headers, CRLF-joined, without the blank line) and `body` on a fresh
    connection; returns (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode("latin-1") + b"\r\nconnection: close\r\n\r\n" + body)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def post_chat(port, host="127.0.0.1", extra=(), content_type="application/json", body=CHAT, path="/v1/chat/completions"):
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    if content_type is not None:
        lines.append(f"content-type: {content_type}")
    lines += list(extra)
    return raw(port, "\r\n".join(lines), body)


def rejected(stack, reason) -> float:
    total = 0.0
    for line in stack.metrics().splitlines():
        if line.startswith("retrybudget_proxy_rejected_total{") and f'reason="{reason}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def sdk(stack, api_key="sk-caller-placeholder", **kw):
    return openai.OpenAI(base_url=stack.base + "/v1", api_key=api_key, max_retries=0, timeout=30, **kw)


@contextlib.contextmanager
def proxy_with(stack, *flags, **kw):
    """Runs the stack's proxy with other flags for one test, then restores the default one."""
    stack.start_proxy(*flags, **kw)
    try:
        yield stack
    finally:
        stack.start_proxy()


# === 1. who may use the key ===


def test_dns_rebinding_request_is_refused_and_never_reaches_the_upstream(fresh):
    # What a web page does through DNS rebinding: its own name as Host and Origin, a text/plain body.
    status, headers, body = post_chat(
        fresh.port, host=f"attacker.example:{fresh.port}", content_type="text/plain",
        extra=[f"origin: http://attacker.example:{fresh.port}"])
    assert status == 403
    assert json.loads(body)["error"]["code"] == "host_not_allowed"
    assert headers["x-retrybudget-attempts"] == "0"
    assert fresh.upstream_count() == 0
    assert PROVIDER_KEY.encode() not in body
    assert rejected(fresh, "host") >= 1
    # Counted, never logged or labelled with the value.
    assert "attacker.example" not in fresh.metrics()
    assert "attacker.example" not in fresh.proxy.logs()


BAD_HOSTS = [
    "attacker.example", "attacker.example:8787", "localhost.attacker.example", "127.0.0.1.nip.io",
    "localhost@attacker.example", "10.0.0.1", "0.0.0.0", "[::ffff:7f00:1]", "", "localhost:80x", "[::1",
    "LOCALHOST.", "%6cocalhost",
]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_foreign_hosts_get_403(fresh, host):
    status, _, body = post_chat(fresh.port, host=host)
    assert status in (400, 403), (host, status)  # hyper itself answers 400 to a malformed Host
    assert fresh.upstream_count() == 0


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_loopback_hosts_are_served(fresh, host):
    status, _, _ = post_chat(fresh.port, host=f"{host}:{fresh.port}")
    assert status == 200
    assert fresh.upstream_count() == 1


def test_an_absolute_form_target_naming_another_host_is_refused(fresh):
    status, _, _ = raw(fresh.port, "\r\n".join([
        "GET http://attacker.example/v1/models HTTP/1.1", "host: 127.0.0.1"]))
    assert status == 403
    assert fresh.upstream_count() == 0


BAD_ORIGINS = ["http://attacker.example", f"http://localhost:3000", "null", "https://127.0.0.1", "file://"]


@pytest.mark.parametrize("origin", BAD_ORIGINS)
def test_browser_origins_are_refused_by_default(fresh, origin):
    status, headers, body = post_chat(fresh.port, extra=[f"origin: {origin}"])
    assert status == 403
    assert json.loads(body)["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in headers
    assert fresh.upstream_count() == 0


def test_an_allowed_origin_gets_cors_and_others_still_do_not(fresh):
    with proxy_with(fresh, "--allowed-origin", "https://app.example"):
        status, headers, _ = raw(fresh.port, "\r\n".join([
            "OPTIONS /v1/chat/completions HTTP/1.1", "host: localhost", "origin: https://app.example",
            "access-control-request-method: POST", "access-control-request-headers: authorization, content-type"]))
        assert status == 204
        assert headers["access-control-allow-origin"] == "https://app.example"
        status, headers, _ = post_chat(fresh.port, extra=["origin: https://app.example"])
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
        status, _, _ = post_chat(fresh.port, extra=["origin: https://app.example.attacker.example"])
        assert status == 403
        assert fresh.upstream_count() == 1


BAD_CONTENT_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                     "application/jsonp", "text/json", "application/json-seq"]


@pytest.mark.parametrize("content_type", BAD_CONTENT_TYPES)
def test_bodies_must_be_json(fresh, content_type):
    status, _, body = post_chat(fresh.port, content_type=content_type)
    assert status == 415, content_type
    assert json.loads(body)["error"]["code"] == "unsupported_media_type"
    assert fresh.upstream_count() == 0


def test_caller_token_is_required_checked_and_replaced_by_the_key(fresh, capture):
    with proxy_with(fresh, token=True, upstream=capture.url):
        for bad in [None, "Bearer wrong", f"Bearer {CALLER_TOKEN[:-1]}", f"Bearer {CALLER_TOKEN}x",
                    f"Basic {CALLER_TOKEN}", CALLER_TOKEN, f"Bearer {PROVIDER_KEY}"]:
            extra = [] if bad is None else [f"authorization: {bad}"]
            status, _, body = post_chat(fresh.port, extra=extra)
            assert status == 401, bad
            assert json.loads(body)["error"]["code"] == "invalid_api_key"
        assert capture.seen == []
        # The official SDK with the caller token as its api_key works, and the upstream sees the provider key.
        completion = sdk(fresh, api_key=CALLER_TOKEN).chat.completions.with_raw_response.create(
            model="fake-model", messages=MSG)
        assert completion.status_code == 200
        assert len(capture.seen) == 1
        assert capture.seen[0]["authorization"] == f"Bearer {PROVIDER_KEY}"
        assert CALLER_TOKEN not in json.dumps(capture.seen)
        logs = fresh.proxy.logs()
        assert CALLER_TOKEN not in logs and PROVIDER_KEY not in logs


def test_the_key_header_is_configurable_for_azure(fresh, capture):
    with proxy_with(fresh, "--api-key-header", "api-key", upstream=capture.url):
        status, _, _ = post_chat(fresh.port, extra=["authorization: Bearer sk-caller-own", "api-key: caller"])
        assert status == 200
        assert capture.seen[0]["api-key"] == PROVIDER_KEY
        assert "authorization" not in capture.seen[0]


def test_a_key_on_a_reachable_address_without_a_caller_token_does_not_start(fresh):
    out = subprocess.run(
        [binary(), "proxy", "--listen", f"0.0.0.0:{free_port()}", "--upstream", fresh.upstream_url,
         "--api-key-env", "SEC_PROVIDER_KEY"],
        env={"SEC_PROVIDER_KEY": PROVIDER_KEY, "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=30)
    assert out.returncode == 2
    assert b"refusing to start" in out.stderr and b"--caller-token-env" in out.stderr
    assert PROVIDER_KEY.encode() not in out.stderr + out.stdout


# === 2. paths ===

BAD_PATHS = [
    "/v1/../_control/requests", "/v1/%2e%2e/_control/requests", "/v1/%2E%2E/_control/requests",
    "/v1/%2e./_control/requests", "/v1/.%2e/_control/requests", "/v1/./models", "/v1/%2e/models",
    "/v1/..;/_control/requests", "/v1/%252e%252e/_control/requests", "/v1/%25252e%25252e/_control/requests",
    "/v1/..%2f_control/requests", "/v1/%2e%2e%2f_control/requests", "/v1/%2f_control/requests",
    "/v1/%2F_control/requests", "/v1/%5c_control/requests", "/v1/%5C..%5C_control/requests",
    "/v1/..\\_control/requests", "/v1/\\..\\_control/requests", "/v1//_control/requests",
    "/v1/%00/models", "/v1/models%0d%0aX-Injected:%201", "/v1/%c0%ae%c0%ae/_control/requests",
    "/v1/%ef%bc%8e%ef%bc%8e/_control/requests", "/v1/models/%", "/v1/models/%zz", "/v1/models/..",
    "/v1/chat/completions/../../_control/requests",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_paths_that_could_leave_v1_are_refused_before_anything_is_sent(fresh, path):
    status, _, body = raw(fresh.port, "\r\n".join([f"GET {path} HTTP/1.1", "host: localhost"]))
    assert status == 400, (path, status, body[:200])
    assert b"_control" not in body and PROVIDER_KEY.encode() not in body
    assert fresh.upstream_count() == 0
    assert fresh.control("GET", "/_control/requests")["count"] == 0


def test_path_refusals_are_counted(fresh):
    before = rejected(fresh, "path")
    raw(fresh.port, "GET /v1/%2e%2e/_control/requests HTTP/1.1\r\nhost: localhost")
    assert rejected(fresh, "path") == before + 1


# === 3. retry only what is safe to repeat ===


def test_a_post_that_may_create_something_is_sent_once(fresh):
    fresh.control("POST", "/_control/script", [{"status": 503}, {"status": 503}, {"status": 200}])
    status, headers, _ = post_chat(fresh.port, path="/v1/batches", body=b'{"input_file_id":"f"}')
    assert status == 503
    assert headers["x-retrybudget-attempts"] == "1"
    assert fresh.upstream_count() == 1


def test_an_idempotency_key_makes_it_repeatable_and_chat_is_retried(fresh):
    fresh.control("POST", "/_control/script", [{"status": 503}, {"status": 200}])
    status, headers, _ = post_chat(fresh.port, path="/v1/batches", body=b'{"input_file_id":"f"}',
                                   extra=["idempotency-key: batch-7"])
    assert (status, headers["x-retrybudget-attempts"]) == (200, "2")
    fresh.control("POST", "/_control/script", [{"status": 503}, {"status": 200}])
    raw_response = sdk(fresh).chat.completions.with_raw_response.create(model="fake-model", messages=MSG)
    assert raw_response.headers["x-retrybudget-attempts"] == "2"
    assert fresh.upstream_count() == 4


# === 4. bounded labels ===


def test_unknown_methods_are_recorded_as_other(fresh):
    status, _, _ = raw(fresh.port, "PURGEZZ /v1/models HTTP/1.1\r\nhost: localhost")
    assert status in (200, 404, 405)
    text = fresh.metrics()
    assert "PURGEZZ" not in text
    assert 'http_request_method="_OTHER"' in text


# === 5. listener limits ===


def test_a_thousand_dribbling_connections_do_not_starve_a_normal_caller(fresh):
    with proxy_with(fresh, "--header-read-timeout", "4s", "--idle-timeout", "4s"):
        socks = []
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", fresh.port), timeout=5)
            s.sendall(b"P")
            socks.append(s)
        stop = threading.Event()
        head = b"OST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"

        def dribble():
            i = 0
            while not stop.is_set() and i < len(head):
                for s in socks:
                    try:
                        s.send(head[i:i + 1])
                    except OSError:
                        pass
                i += 1
                stop.wait(1.0)

        t = threading.Thread(target=dribble, daemon=True)
        t.start()
        try:
            time.sleep(1.0)
            client = sdk(fresh)  # built outside the timed call (TLS context, certificates)
            started = time.monotonic()
            completion = client.chat.completions.create(model="fake-model", messages=MSG)
            elapsed = time.monotonic() - started
            assert completion.choices[0].message.content
            # A starved caller would wait for the dribblers' header-read timeout (4 s); a loaded machine may be slow.
            assert elapsed < 3.0, f"a normal call took {elapsed:.2f}s behind 1000 slow connections"
            # The dribblers are cut at the header-read timeout (4 s after their first byte; allow 2x).
            deadline = time.monotonic() + 8.0
            closed = 0
            for s in socks:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    if s.recv(1024) == b"":
                        closed += 1
                except ConnectionResetError:
                    closed += 1
                except OSError:
                    pass
            assert closed == len(socks), f"only {closed} of {len(socks)} dribbling connections were closed"
        finally:
            stop.set()
            t.join()
            for s in socks:
                s.close()


def test_a_body_sent_at_one_byte_a_second_is_cut_at_the_body_timeout(fresh):
    with proxy_with(fresh, "--body-read-timeout", "2s"):
        with socket.create_connection(("127.0.0.1", fresh.port), timeout=10) as s:
            s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                      f"content-length: {len(CHAT)}\r\n\r\n".encode())
            started = time.monotonic()
            answer = b""
            for b in CHAT:
                try:
                    s.sendall(bytes([b]))
                except OSError:
                    break
                s.settimeout(1.0)
                try:
                    answer += s.recv(4096)
                except socket.timeout:
                    continue
                if answer:
                    break
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert 1.5 <= elapsed <= 6.0, elapsed
        assert fresh.upstream_count() == 0


def proxy_side_connections(port) -> int:
    """Connections the proxy on `port` still holds open, from /proc/net/tcp: ESTABLISHED, or CLOSE_WAIT — one the
    client closed stays there until the proxy has read its end and dropped it, and with it its place."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if int(r[1].rsplit(":", 1)[1], 16) == port and r[3] in ("01", "08"))


def idle_connections(port, n):
    """`n` idle connections, opened once the proxy holds no other: the one that waited for /healthz keeps its
    place until the proxy has read its end, and would leave the cap one place short of full. The proxy accepts
    in order, so these take their places before any connection opened after them."""
    deadline = time.monotonic() + 10
    while proxy_side_connections(port):
        assert time.monotonic() < deadline, "the proxy kept a closed connection for 10 s"
        time.sleep(0.02)
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def test_connections_beyond_the_cap_get_a_fast_503(fresh):
    with proxy_with(fresh, "--max-connections", "4"):
        idle = idle_connections(fresh.port, 4)
        try:
            started = time.monotonic()
            status, headers, body = post_chat(fresh.port)
            assert status == 503 and headers["retry-after"] == "1"
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            assert time.monotonic() - started < 1.0
        finally:
            for s in idle:
                s.close()
        # The places come back once the proxy has read each closed connection's end.
        deadline = time.monotonic() + 10
        while post_chat(fresh.port)[0] != 200:
            assert time.monotonic() < deadline, "no place came back within 10 s of closing the idle connections"
            time.sleep(0.05)
        assert rejected(fresh, "connections") >= 1


def test_requests_beyond_the_in_flight_cap_get_a_fast_503(fresh):
    with proxy_with(fresh, "--max-in-flight", "1"):
        fresh.control("POST", "/_control/script", [{"delay_ms": 4000}])
        slow = threading.Thread(target=post_chat, args=(fresh.port,))
        slow.start()
        deadline = time.monotonic() + 10
        while fresh.upstream_count() == 0:
            assert time.monotonic() < deadline, "the slow request never reached the upstream"
            time.sleep(0.02)
        started = time.monotonic()
        status, headers, body = post_chat(fresh.port)
        assert (status, headers["retry-after"]) == (503, "1")
        assert json.loads(body)["error"]["code"] == "too_many_requests_in_flight"
        assert time.monotonic() - started < 1.0
        slow.join()
        assert fresh.upstream_count() == 1


def test_an_idle_keep_alive_connection_is_closed(fresh):
    with proxy_with(fresh, "--idle-timeout", "500ms"):
        with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as s:
            started = time.monotonic()  # before the request: the idle time starts after its answer
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            assert s.recv(4096) == b""  # closed by the proxy, not by us
            assert 0.5 <= time.monotonic() - started <= 4.0


# === 6. upstream bodies ===


def test_an_upstream_answer_above_the_buffer_cap_fails_as_invalid_response(fresh):
    with proxy_with(fresh, "--max-response-body", "4KiB"):
        # Error answers are buffered (their error code is read); this one is ~20 KB.
        fresh.control("POST", "/_control/script", [{"status": 400, "error_type": "x" * 20000}])
        status, headers, body = post_chat(fresh.port)
        error = json.loads(body)["error"]
        assert status == 502 and error["code"] == "invalid_response", body[:300]
        assert "--max-response-body" in error["message"]
        assert "xxxx" not in body.decode()
        assert headers["x-retrybudget-attempts"] == "1"
        # A normal answer under the cap still passes.
        assert post_chat(fresh.port)[0] == 200
