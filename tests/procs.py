"""Process helpers shared by the Python suites (tests/sdk, tests/security, tests/caller, tests/chain, bench/): a
free loopback port, a wait for an HTTP endpoint, the `retrybudget` binary under test, a child process whose
output goes to log files and that is stopped by its pid, the fake upstream's control API, a proxy's /metrics,
and the records of an evidence file that is still being written.

Nothing here sleeps for timing: waits poll for a condition with a generous bound.
"""
import json
import os
import socket
import subprocess
import time
import urllib.request


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
    """A child process with stdout/stderr in `log_dir/name.{out,err}`; `stop` terminates it (kill after 10 s)."""

    def __init__(self, args, log_dir, name, env=None):
        self.name = name
        self.out_path = os.path.join(log_dir, f"{name}.out")
        self.err_path = os.path.join(log_dir, f"{name}.err")
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        self.p = subprocess.Popen(args, stdout=self.out, stderr=self.err, stdin=subprocess.DEVNULL, env=env)

    def logs(self) -> str:
        self.out.flush()
        self.err.flush()
        return open(self.out_path, errors="replace").read() + open(self.err_path, errors="replace").read()

    def stop(self):
        stop_process(self.p)
        self.out.close()
        self.err.close()


def control(upstream: str, method: str, path: str, body=None):
    """A call to the fake upstream's `/_control` API (e.g. `POST /_control/script`); its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(upstream + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"{}")


def upstream_count(upstream: str) -> int:
    """Requests the fake upstream has received."""
    return control(upstream, "GET", "/_control/count")["count"]


def metrics(base: str) -> str:
    """A proxy's Prometheus exposition."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        return r.read().decode()


def stop_process(p: subprocess.Popen, timeout: float = 10) -> None:
    """Stops a child by its pid: SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def evidence_records(path) -> list[dict]:
    """The records of one evidence file, read while the proxy may still be writing it: a read can land while
    the writer's write(2) is copying a batch in, so the file may end part-way through a line. Only lines that
    end in a newline count; a line cut anywhere else still fails `json.loads`."""
    with open(path) as f:
        text = f.read()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
