"""Processes, ports and HTTP helpers for the whole-chain tests (no tests here).

Every process is started by the tests, bound to 127.0.0.1 on a free port, has its output in files under the
test's temporary directory and is stopped by its own pid (`Proc.stop`): nothing is killed by name.
Binaries come from the environment, set by tests/run.sh:
  RETRYBUDGET_BIN      the `retrybudget` binary (cargo build -p retrybudget)
  RETRYBUDGET_OTELCOL  collector-config/distribution/build.sh's output
  RETRYBUDGET_JAEGER   collector-config/jaeger/build.sh's output
A missing binary fails the test with the command that builds it; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import random
import signal as signals
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from procs import evidence_records  # noqa: E402  (tests/procs.py)

REPO = Path(__file__).resolve().parents[2]
COLLECTOR_DIR = REPO / "collector-config"

_BUILD_HINT = {
    "RETRYBUDGET_BIN": "cargo build -p retrybudget; export RETRYBUDGET_BIN=$PWD/target/debug/retrybudget",
    "RETRYBUDGET_OTELCOL": "export RETRYBUDGET_OTELCOL=$(collector-config/distribution/build.sh)",
    "RETRYBUDGET_JAEGER": "export RETRYBUDGET_JAEGER=$(collector-config/jaeger/build.sh)",
}


def binary(var: str) -> str:
    path = os.environ.get(var, "")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(f"{var} is not set to an executable; build it first: {_BUILD_HINT[var]} (make test does)")
    return path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """Free 127.0.0.1 ports BELOW the kernel's ephemeral range: the chain opens hundreds of outgoing connections,
    and a port picked from the ephemeral range (as port 0 does) can be taken by one of them before the server that
    was meant to get it binds it."""
    low = max(1024, _ephemeral_range()[0] - 12000)
    high = _ephemeral_range()[0]
    sockets, ports = [], []
    try:
        while len(ports) < count:
            port = random.randrange(low, high)
            if port in ports or port in _HANDED_OUT:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
            ports.append(port)
    finally:
        for s in sockets:
            s.close()
    _HANDED_OUT.update(ports)
    return ports


# Ports given out by this process: a port picked for a server that has not bound it yet is still free, so without
# this two servers of one stack could be given the same port.
_HANDED_OUT: set[int] = set()


class Proc:
    """A background process with its own pid; output in NAME.out / NAME.err under `workdir`."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict | None = None):
        self.name, self.args, self.workdir = name, args, Path(workdir)
        self.env = {**os.environ, **(env or {})}
        self.starts = 0
        self.p: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.starts += 1
        suffix = "" if self.starts == 1 else f".{self.starts}"
        with open(self.workdir / f"{self.name}{suffix}.out", "wb") as out, \
                open(self.workdir / f"{self.name}{suffix}.err", "wb") as err:
            self.p = subprocess.Popen(self.args, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                      cwd=self.workdir, env=self.env)

    @property
    def pid(self) -> int:
        return self.p.pid

    def running(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.p.pid, sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 15) -> None:
        if not self.running():
            return
        os.kill(self.p.pid, sig)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.p.pid, signals.SIGKILL)
            self.p.wait()

    def log_tail(self, lines: int = 30) -> str:
        suffix = "" if self.starts == 1 else f".{self.starts}"
        text = []
        for ext in ("out", "err"):
            path = self.workdir / f"{self.name}{suffix}.{ext}"
            if path.exists():
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} (pid {self.p.pid}, exit {self.p.poll()}):\n" + "\n".join(text)


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str, timeout: float = 10):
    status, body = http("GET", url, timeout=timeout)
    if status != 200:
        raise AssertionError(f"GET {url} -> {status}: {body[:300]!r}")
    return json.loads(body)


def wait_until(what: str, condition, timeout: float, procs: list[Proc] = (), interval: float = 0.25):
    """Polls `condition()` until it returns a truthy value; fails naming `what`, with the processes' logs."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        for p in procs:
            if not p.running():
                raise AssertionError(f"{p.name} exited while waiting for {what}\n{p.log_tail()}")
        try:
            value = condition()
            if value:
                return value
        except (OSError, ValueError, KeyError, AssertionError) as e:
            last_error = e
        time.sleep(interval)
    logs = "\n".join(p.log_tail() for p in procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})\n{logs}")


def wait_http_ok(url: str, timeout: float, procs: list[Proc] = ()) -> None:
    wait_until(f"{url} to answer 200", lambda: http("GET", url, timeout=2)[0] == 200, timeout, procs)


def chat(proxy: str, model: str = "fake-model", stream: bool = False, timeout: float = 60) -> tuple[int, bytes]:
    # Each call a distinct request: byte-identical requests in flight at once are a caller's re-sends to the
    # proxy (crates/proxy/src/caller.rs), which spend budget instead of being new traffic.
    body = {"model": model, "messages": [{"role": "user", "content": f"hello {random.getrandbits(64):x}"}]}
    if stream:
        body["stream"] = True
    return http("POST", f"{proxy}/v1/chat/completions", body,
                headers={"authorization": "Bearer sk-test-not-a-real-key"}, timeout=timeout)


def script(upstream: str, steps: list[dict]) -> None:
    status, body = http("POST", f"{upstream}/_control/script", steps)
    assert status == 200, body


def set_load(upstream: str, mode: dict) -> None:
    status, body = http("PUT", f"{upstream}/_control/load", mode)
    assert status == 200, body


def read_evidence(path: Path) -> list[dict]:
    """Every whole line of the evidence file and of its rotated siblings (PATH.1, PATH.2, …)."""
    return [record for f in sorted(path.parent.glob(path.name + "*")) for record in evidence_records(f)]


def metric_value(text: str, name: str, labels: dict | None = None) -> float:
    """Sum of the samples of `name` in a Prometheus exposition whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in rest for k, v in labels.items()):
            continue
        total += float(value)
    return total
