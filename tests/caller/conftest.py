"""Fixtures for tests/caller: a fresh fake-upstream (every answer 503) + proxy pair per test."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from stack import start_stack  # noqa: E402


@pytest.fixture
def stack_for(tmp_path):
    started = []

    def make(mode, **kwargs):
        stack = start_stack(mode, log_dir=str(tmp_path), **kwargs)
        started.append(stack)
        return stack

    yield make
    for stack in started:
        stack.stop()
