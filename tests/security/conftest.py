"""Fixtures of the security suite (the harness itself is in sec_stack.py)."""
import pytest

from sec_stack import Capture, Stack, raise_open_files_limit


@pytest.fixture(scope="module")
def stack():
    raise_open_files_limit()
    s = Stack()
    s.start_proxy()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def fresh(stack):
    stack.control("POST", "/_control/reset")
    return stack


@pytest.fixture
def capture():
    c = Capture()
    try:
        yield c
    finally:
        c.shutdown()
        c.server_close()
