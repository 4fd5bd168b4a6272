"""Fixtures: a real `retrybudget fake-upstream` and a real `retrybudget proxy` in front of it, as processes."""
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from procs import Proc, binary, free_port, wait_http  # noqa: E402  (tests/procs.py)


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
