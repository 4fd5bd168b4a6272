"""Fixtures: a real `retrybudget fake-upstream` and a real `retrybudget proxy` in front of it, as processes."""
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def binary() -> str:
    path = os.environ.get("RETRYBUDGET_BIN", "")
    if not path or not os.path.exists(path):
        raise RuntimeError("set RETRYBUDGET_BIN to the built `retrybudget` binary (make test does)")
    return path


class Proc:
    def __init__(self, args, log_dir, name, env=None):
        self.out = open(os.path.join(log_dir, f"{name}.out"), "wb")
        self.err = open(os.path.join(log_dir, f"{name}.err"), "wb")
        self.p = subprocess.Popen(args, stdout=self.out, stderr=self.err, stdin=subprocess.DEVNULL, env=env)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()
        self.err.close()


@pytest.fixture(scope="module")
def stack():
    bin_ = binary()
    tmp = tempfile.TemporaryDirectory()
    up_port, proxy_port = free_port(), free_port()
    upstream = Proc([bin_, "fake-upstream", "--listen", f"127.0.0.1:{up_port}"], tmp.name, "upstream")
    evidence = os.path.join(tmp.name, "evidence.jsonl")
    proxy = Proc(
        [bin_, "proxy", "--listen", f"127.0.0.1:{proxy_port}", "--upstream", f"http://127.0.0.1:{up_port}",
         "--provider-name", "fake", "--route-name", "fake_chat_completions", "--evidence-file", evidence],
        tmp.name, "proxy")
    try:
        wait_http(f"http://127.0.0.1:{up_port}/_control/count")
        wait_http(f"http://127.0.0.1:{proxy_port}/healthz")
        yield {
            "upstream": f"http://127.0.0.1:{up_port}",
            "proxy": f"http://127.0.0.1:{proxy_port}",
            "evidence": evidence,
            "logs": tmp.name,
        }
    finally:
        proxy.stop()
        upstream.stop()
        tmp.cleanup()
