"""`retrybudget report --html`, checked in a real browser and on a 1 GB file.

- The demo's own HTML report, opened in headless Debian Chromium over the DevTools protocol: the page makes no
  network request and logs no console error; its headline figures equal the text report's and the demo's own
  table; the timeline has one bucket per interval, none missing, and its counts add up to the totals; trace links
  use the --trace-url template.
- A 1 GiB sparse file of garbage with a few records at the end: clear messages, no panic, exit 0, and a peak
  RSS far below the file's size (the constant-memory path: no line is held beyond 64 KiB).

Needs RETRYBUDGET_BIN (tests/run.sh builds it) and `chromium` (tests/run.sh installs it).
"""

import html.parser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import browser  # noqa: E402

BIN = os.environ.get("RETRYBUDGET_BIN", "target/debug/retrybudget")
TEMPLATE = "http://jaeger:16686/trace/{trace_id}"


def run(*args, env=None, timeout=180):
    return subprocess.run(
        [BIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class Dom(html.parser.HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self, text):
        super().__init__()
        self.elements = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def having(self, attr, tag=None):
        return [a for t, a in self.elements if attr in a and (tag is None or t == tag)]


def number(pattern, text):
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in:\n{text}"
    return m.group(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    evidence = d / "demo-evidence.jsonl"
    out = run(
        "demo", "--duration", "8s", "--rate", "20", "--listen", "127.0.0.1:0", "--evidence-file", str(evidence),
        env={"RETRYBUDGET_TRACE_URL": TEMPLATE},
    )
    assert out.returncode == 0, out.stderr
    return evidence, out.stdout


def test_demo_html_report_in_chromium(demo):
    evidence, table = demo
    # The demo prints where its HTML report is: next to the evidence file.
    html_path = Path(number(r"HTML report:\s+(\S+)", table))
    assert html_path == evidence.with_suffix(".html") and html_path.exists()

    text = run("report", str(evidence))
    assert text.returncode == 0, text.stderr
    report = json.loads(run("report", str(evidence), "--json").stdout)

    page = browser.open_page(html_path)
    assert page["requests"] == [page["url"]], f"the page fetched something: {page['requests']}"
    assert page["console"] == [] and page["exceptions"] == [], (page["console"], page["exceptions"])
    assert [e for e in page["log"] if e["level"] in ("error", "warning")] == [], page["log"]
    dom = Dom(page["dom"])
    assert not [t for t, _ in dom.elements if t in ("script", "img", "link", "iframe", "object")]

    # Headline figures = the text report's = the demo's own table.
    fig = {a["data-figure"]: a["data-value"] for a in dom.having("data-figure")}
    t = text.stdout
    assert fig["calls"] == number(r"Calls by terminal outcome \((\d+) calls\)", t) == number(r"total calls\s+(\d+)", table)
    assert fig["attempts"] == number(r"\nAttempts: (\d+)", t)
    # The demo adds up x-retrybudget-attempts: upstream attempts (a caller re-send the budget refused says 0).
    assert int(number(r"total attempts: (\d+)", table)) == report["upstream_attempts"]
    assert fig["amplification"] == number(r"amplification=([\d.]+) \(upstream attempts per call\)", t)
    assert fig["provider_amplification"] == number(r"provider_amplification=([\d.]+)", t)
    assert fig["provider_amplification"] == number(r"provider_amplification=([\d.]+)", table)
    assert fig["amplification"] == number(r"amplification=([\d.]+)", table)
    denials = number(r"budget denials: (\d+)", table)
    assert int(denials) > 0, "the demo's outage must exhaust the budget"
    assert fig["denials"] == denials == number(r"Budget exhausted: (\d+) denial", t)
    assert fig["budget_first"] == number(r"Budget exhausted: \d+ denial\(s\), first (\S+),", t)
    assert fig["budget_last"] == number(r"Budget exhausted: .*, last (\S+)", t)
    assert fig["success_ratio"] == f"{report['success_ratio']:.4f}"
    assert fig["calls_without_terminal"] == str(report["calls_without_terminal_record"])
    stretch = report["budget_exhausted"]["longest_stretch"]
    assert abs(float(fig["stretch_seconds"]) - stretch["seconds"]) < 0.001

    # The timeline: equal buckets from the first record to the last, none missing, adding up to the totals.
    section = dom.having("data-bucket-ms", "section")[0]
    width = int(section["data-bucket-ms"])
    buckets = dom.having("data-start-ms", "g")
    assert len(buckets) == int(section["data-buckets"]) == len(report["timeline"]["buckets"])
    starts = [int(b["data-start-ms"]) for b in buckets]
    assert all(b - a == width for a, b in zip(starts, starts[1:])), starts
    assert all(s % width == 0 for s in starts)
    first_ms = browser_ms(report["first"])
    last_ms = browser_ms(report["last"])
    assert starts[0] <= first_ms < starts[0] + width and starts[-1] <= last_ms < starts[-1] + width
    total = lambda key: sum(int(b[key]) for b in buckets)  # noqa: E731
    assert total("data-first") == report["calls_started"]
    assert total("data-first") + total("data-retries") == int(fig["attempts"])
    assert total("data-calls") == int(fig["calls"])
    assert total("data-denials") == int(fig["denials"])

    # Calls to open link through the template.
    links = dom.having("href", "a")
    rows = dom.having("data-trace-id", "tr")
    assert rows and len(links) == len(rows)
    for a, row in zip(links, rows):
        assert re.fullmatch(r"[0-9a-f]{32}", row["data-trace-id"])
        assert a["href"] == TEMPLATE.replace("{trace_id}", row["data-trace-id"])


def browser_ms(rfc3339):
    from datetime import datetime

    return round(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


def test_report_flags_apply_to_the_html_too(demo, tmp_path):
    evidence, _ = demo
    out_html = tmp_path / "filtered.html"
    full = json.loads(run("report", str(evidence), "--json").stdout)
    since = full["timeline"]["buckets"][len(full["timeline"]["buckets"]) // 2]["start"]
    r = run("report", str(evidence), "--json", "--since", since, "--html", str(out_html), "--trace-url", TEMPLATE)
    assert r.returncode == 0, r.stderr
    filtered = json.loads(r.stdout)
    assert 0 < filtered["attempts"] < full["attempts"]
    dom = Dom(out_html.read_text())
    fig = {a["data-figure"]: a["data-value"] for a in dom.having("data-figure")}
    assert fig["attempts"] == str(filtered["attempts"]) and fig["calls"] == str(filtered["calls"])
    assert all(int(b["data-start-ms"]) >= browser_ms(since) for b in dom.having("data-start-ms", "g"))
    # A route that does not exist leaves nothing to report: exit 3, and says what to do.
    r = run("report", str(evidence), "--route", "no_such_route", "--html", str(tmp_path / "none.html"))
    assert r.returncode == 3 and "matches the filters" in r.stderr, r.stderr
    assert not (tmp_path / "none.html").exists()


PEAK_RSS = """
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(p.stderr)
sys.stdout.write(p.stdout)
print()
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
sys.exit(p.returncode)
"""


def test_one_gigabyte_of_garbage_in_constant_memory(tmp_path):
    # Sparse: 1 GiB of NUL bytes with a short garbage line every 8 MiB and three real records at the end, so
    # the disk holds a few KiB. Every NUL run is one "line" far longer than the 64 KiB a line may take.
    path = tmp_path / "garbage.jsonl"
    size = 1 << 30
    records = [
        json.dumps({
            "timestamp": f"2026-06-13T00:00:0{i}.000Z", "environment": "t", "provider_route": "r", "model": "m",
            "http_method": "POST", "http_route": "/v1/chat/completions", "retry_attempt": 0,
            "retry_budget_remaining": 2, "shared_budget_balance": 10.0, "backoff_applied_ms": 0,
            "elapsed_bucket": "<1s", "decision": "done", "client_result": "success", "terminal_outcome": "success",
            "operator_note": "documented success response received", "trace_id": f"{i:032x}", "span_id": f"{i:016x}",
        })
        for i in range(3)
    ]
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in range(8 << 20, size - (1 << 20), 8 << 20):
            f.seek(offset)
            f.write(b"\n{garbage \xff\xfe not json}\n")
        f.seek(size)
        f.write(("\n" + "\n".join(records) + "\n").encode())
    try:
        # The report runs under a small Python parent whose only child it is, so ru_maxrss is its own peak.
        measured = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, BIN, "report", str(path), "--json"],
            capture_output=True, text=True, timeout=900,
        )
        peak_kib, r = json.loads(measured.stdout.splitlines()[-1])["peak_kib"], measured
        r.stdout = "\n".join(measured.stdout.splitlines()[:-1])
        assert r.returncode == 0, r.stderr
        assert "panicked" not in r.stderr
        assert "longer than 64 KiB" in r.stderr and "not UTF-8 text" in r.stderr, r.stderr[:2000]
        assert "more malformed line(s) skipped" in r.stderr
        report = json.loads(r.stdout)
        assert report["calls"] == 3 and report["attempts"] == 3
        assert report["malformed_count"] >= 2 * 127
        assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB for a 1 GiB file"
        print(f"1 GiB garbage: peak RSS {peak_kib // 1024} MiB, {report['malformed_count']} malformed lines")
    finally:
        path.unlink()


def test_only_garbage_is_nothing_to_report(tmp_path):
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(b"\x00\x01 not a record\n{\"a\":1}\n")
    r = run("report", str(path))
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "holds no evidence record" in r.stderr and "line 1" in r.stderr and "panicked" not in r.stderr
