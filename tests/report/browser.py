"""Open a local HTML file in headless Debian Chromium and report what the page did.

Drives Chromium over the DevTools protocol (the `websocket-client` package) rather than scraping its log output:
every network request the page made (Network.requestWillBeSent), every console message and uncaught exception
(Runtime.consoleAPICalled, Runtime.exceptionThrown) and every browser-side log entry such as a Content-Security-
Policy violation (Log.entryAdded) are collected as events, then the rendered DOM is read back. Optionally writes
a full-page PNG screenshot (used by docs/report-screenshot.sh, never by CI).

    python3 tests/report/browser.py PAGE.html [--screenshot OUT.png] [--width 1120] [--scale 1]

prints one JSON object: {"url", "requests", "console", "exceptions", "log", "dom"}.
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket  # websocket-client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from procs import stop_process  # noqa: E402  (tests/procs.py)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("chromium not found: install Debian's `chromium` (tests/run.sh does)")


class Page:
    """One Chromium process with one page, driven over the DevTools protocol."""

    def __init__(self, width=1120, height=900, scale=1):
        self.profile = tempfile.mkdtemp(prefix="rb-chromium-")
        self.proc = subprocess.Popen(
            [chromium_binary(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.events = []
        self.next_id = 0
        try:
            port = self._port()
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
            for domain in ("Network", "Runtime", "Log", "Page"):
                self.call(f"{domain}.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=scale,
                mobile=False,
            )
        except Exception:
            self.close()
            raise

    def _port(self):
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} before DevTools was up")
            if active.exists():
                text = active.read_text().split()
                if text:
                    return int(text[0])
            time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port within 60 s")

    def call(self, method, **params):
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        self.ws.settimeout(120)
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["method"] == event for e in self.events):
                return
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
        raise RuntimeError(f"no {event} within {timeout} s")

    def drain(self, quiet=1.0):
        """Collects events until none arrived for `quiet` seconds (late requests, late console messages)."""
        self.ws.settimeout(quiet)
        while True:
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                return
            if "method" in msg:
                self.events.append(msg)

    def close(self):
        try:
            if getattr(self, "ws", None):
                try:
                    self.call("Browser.close")
                except Exception:
                    pass
                self.ws.close()
        finally:
            stop_process(self.proc)
            shutil.rmtree(self.profile, ignore_errors=True)


def open_page(path, screenshot=None, width=1120, scale=1):
    """Loads `path` and returns what happened; writes a full-page PNG to `screenshot` if given."""
    url = Path(path).resolve().as_uri()
    page = Page(width=width)
    try:
        page.call("Page.navigate", url=url)
        page.wait_for("Page.loadEventFired")
        page.drain()
        dom = page.call(
            "Runtime.evaluate", expression="document.documentElement.outerHTML", returnByValue=True
        )["result"]["value"]
        if screenshot:
            size = page.call("Page.getLayoutMetrics")["cssContentSize"]
            height = int(size["height"]) + 1
            page.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=scale, mobile=False
            )
            page.drain(0.5)
            shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        events = page.events
    finally:
        page.close()
    by = lambda name: [e["params"] for e in events if e["method"] == name]  # noqa: E731
    return {
        "url": url,
        "requests": [p["request"]["url"] for p in by("Network.requestWillBeSent")],
        "console": [
            {"type": p["type"], "text": " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])}
            for p in by("Runtime.consoleAPICalled")
        ],
        "exceptions": [p["exceptionDetails"].get("text", "") for p in by("Runtime.exceptionThrown")],
        "log": [{"level": p["entry"]["level"], "text": p["entry"]["text"]} for p in by("Log.entryAdded")],
        "dom": dom,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page")
    ap.add_argument("--screenshot")
    ap.add_argument("--width", type=int, default=1120)
    ap.add_argument("--scale", type=float, default=1, help="device pixels per CSS pixel of the screenshot")
    a = ap.parse_args()
    result = open_page(a.page, a.screenshot, a.width, a.scale)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
