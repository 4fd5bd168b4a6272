"""The harness of the security suite: a real `retrybudget proxy` process (holding a provider key) in front of a real
`retrybudget fake-upstream` process, started with whatever flags a test needs."""
import http.server
import json
import os
import resource
import sys
import tempfile
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import procs  # noqa: E402  (tests/procs.py)
from procs import Proc, binary, free_port, wait_http  # noqa: E402

PROVIDER_KEY = "sk-provider-canary-5b1e0c"
CALLER_TOKEN = "caller-token-canary-9d2f41aa"


def raise_open_files_limit() -> None:
    """1000 slow connections need ~2000 descriptors across this process and the proxy (which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Capture(http.server.ThreadingHTTPServer):
    """A bare upstream that records the headers it receives (to see which credential the proxy sent)."""

    daemon_threads = True

    def __init__(self):
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                outer.seen.append({k.lower(): v for k, v in self.headers.items()} | {":path": self.path})
                body = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": []}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Stack:
    """One fake upstream and one proxy; `start_proxy` may be called again with other flags."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.up_port = free_port()
        self.upstream_url = f"http://127.0.0.1:{self.up_port}"
        self.upstream = Proc([binary(), "fake-upstream", "--listen", f"127.0.0.1:{self.up_port}"], self.tmp.name,
                             "upstream")
        wait_http(f"{self.upstream_url}/_control/health")
        self.proxy = None
        self.port = None

    def start_proxy(self, *flags, upstream=None, key=True, token=False, wait=True, listen="127.0.0.1"):
        if self.proxy is not None:
            self.proxy.stop()
        env = dict(os.environ)
        env["SEC_PROVIDER_KEY"] = PROVIDER_KEY
        env["SEC_CALLER_TOKEN"] = CALLER_TOKEN
        args = [binary(), "proxy", "--listen", f"{listen}:{free_port()}", "--upstream",
                upstream or self.upstream_url, "--deadline", "20s"]
        if key:
            args += ["--api-key-env", "SEC_PROVIDER_KEY"]
        if token:
            args += ["--caller-token-env", "SEC_CALLER_TOKEN"]
        args += list(flags)
        self.port = int(args[3].rsplit(":", 1)[1])
        self.proxy = Proc(args, self.tmp.name, f"proxy-{time.monotonic_ns()}", env=env)
        if wait:
            wait_http(f"http://127.0.0.1:{self.port}/healthz")
        return self.proxy

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self, method, path, body=None):
        return procs.control(self.upstream_url, method, path, body)

    def upstream_count(self) -> int:
        return procs.upstream_count(self.upstream_url)

    def metrics(self) -> str:
        return procs.metrics(self.base)

    def close(self):
        if self.proxy is not None:
            self.proxy.stop()
        self.upstream.stop()
        self.tmp.cleanup()
