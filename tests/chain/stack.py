"""The whole evidence chain as processes, built from the SHIPPED configuration files (no tests here).

    retrybudget proxy ─OTLP gRPC─► retrybudget-otelcol (otelcol-agent.yaml) ─► retrybudget-otelcol
    (otelcol-gateway.yaml) ─┬─► jaeger (jaeger/jaeger.yaml)
                            └─► :prometheus exporter ◄─ prometheus (prometheus-gateway.yml + rules/)
                                                         └─► alertmanager (alertmanager.yml) ─► webhook (here)

What is substituted, and nothing else:
- addresses and ports: the collectors' and Jaeger's through the `${env:…}` variables their files declare;
  Prometheus' and Alertmanager's (which have no variables) by rewriting targets / the webhook URL in a copy;
- test overrides of timing only (TIMING_OVERRIDES below says which): scrape/evaluation intervals, the rules'
  `for:` and `[5m]` windows, Alertmanager's group_wait/group_interval.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from chainlib import COLLECTOR_DIR, Proc, binary, free_ports, get_json, wait_http_ok

AGENT_CONFIG = COLLECTOR_DIR / "otelcol-agent.yaml"
AGENT_SCALEOUT_CONFIG = COLLECTOR_DIR / "otelcol-agent-scaleout.yaml"
GATEWAY_CONFIG = COLLECTOR_DIR / "otelcol-gateway.yaml"
JAEGER_CONFIG = COLLECTOR_DIR / "jaeger" / "jaeger.yaml"
PROMETHEUS_CONFIG = COLLECTOR_DIR / "prometheus-gateway.yml"
ALERTMANAGER_CONFIG = COLLECTOR_DIR / "alertmanager.yml"
RULES_DIR = COLLECTOR_DIR / "rules"

# Test overrides (timing only). Production values are in the shipped files.
TIMING_OVERRIDES = {
    "prometheus scrape_interval / evaluation_interval": "15s -> 1s",
    "rules: every alert's for:": "(2m, 5m, 10m, 15m) -> 2s",
    "rules: every [5m] range": "[5m] -> [20s]",
    "alertmanager group_wait / group_interval": "30s / 5m -> 1s / 1s",
}

SERVICE = "retrybudget"
START_TIMEOUT = 60


class Webhook:
    """Alertmanager's receiver: records every notification body it is sent."""

    def __init__(self):
        self.notifications: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, name: str, status: str) -> list[dict]:
        return [a for n in self.notifications for a in n["alerts"]
                if a["labels"].get("alertname") == name and a["status"] == status]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def rules_copy(dest: Path) -> list[str]:
    """The shipped rule files with the timing overrides applied; returns their paths."""
    paths = []
    for path in sorted(RULES_DIR.glob("*.rules.yml")):
        text = path.read_text()
        text = re.sub(r"(?m)^(\s*for:\s*)\S+", r"\g<1>2s", text)
        text = text.replace("[5m]", "[20s]")
        out = dest / path.name
        out.write_text(text)
        paths.append(str(out))
    return paths


class Collector:
    """retrybudget-otelcol with a shipped config; ports through the file's own ${env:…} variables."""

    def __init__(self, name: str, configs: list[Path], workdir: Path, env: dict):
        self.otlp_grpc, self.otlp_http, self.health, self.telemetry = free_ports(4)
        self.env = {
            "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.otlp_grpc}",
            "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.otlp_http}",
            "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{self.health}",
            "OTELCOL_TELEMETRY_HOST": "127.0.0.1",
            "OTELCOL_TELEMETRY_PORT": str(self.telemetry),
            **env,
        }
        args = [binary("RETRYBUDGET_OTELCOL")]
        for c in configs:
            args += ["--config", str(c)]
        self.proc = Proc(name, args, workdir, self.env)

    def wait_ready(self):
        wait_http_ok(f"http://127.0.0.1:{self.health}/", START_TIMEOUT, [self.proc])

    def internal_metrics(self) -> str:
        from chainlib import http
        return http("GET", f"http://127.0.0.1:{self.telemetry}/metrics")[1].decode()


class Jaeger:
    def __init__(self, workdir: Path):
        self.otlp_grpc, self.otlp_http, self.query_http, self.query_grpc, self.health = free_ports(5)
        env = {
            "JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.otlp_grpc}",
            "JAEGER_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.otlp_http}",
            "JAEGER_QUERY_HTTP_ENDPOINT": f"127.0.0.1:{self.query_http}",
            "JAEGER_QUERY_GRPC_ENDPOINT": f"127.0.0.1:{self.query_grpc}",
            "JAEGER_HEALTH_ENDPOINT": f"127.0.0.1:{self.health}",
        }
        self.url = f"http://127.0.0.1:{self.query_http}"
        self.proc = Proc("jaeger", [binary("RETRYBUDGET_JAEGER"), "--config", str(JAEGER_CONFIG)], workdir, env)

    def wait_ready(self):
        wait_http_ok(f"{self.url}/api/services", START_TIMEOUT, [self.proc])

    def traces(self, tags: dict | None = None, limit: int = 100000) -> list[dict]:
        """Traces of our service, optionally filtered by span tags (Jaeger's query API, as the UI uses it)."""
        from urllib.parse import urlencode
        params = {"service": SERVICE, "limit": str(limit), "lookback": "2h"}
        if tags:
            params["tags"] = json.dumps(tags)
        return get_json(f"{self.url}/api/traces?{urlencode(params)}", timeout=30)["data"] or []

    def trace(self, trace_id: str) -> dict | None:
        from chainlib import http
        status, body = http("GET", f"{self.url}/api/traces/{trace_id}", timeout=30)
        if status == 404:
            return None
        data = json.loads(body).get("data") or []
        return data[0] if data else None


def tags(span: dict) -> dict:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


class Prometheus:
    def __init__(self, name: str, workdir: Path, targets: list[str], rules: list[str],
                 alertmanager: str | None = None, honor_labels: bool = True):
        self.port = free_ports(1)[0]
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["global"]["scrape_timeout"] = "1s"
        config["rule_files"] = rules
        if alertmanager:
            config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager]
        else:
            del config["alerting"]
        job = config["scrape_configs"][0]
        job["static_configs"][0]["targets"] = targets
        if not honor_labels:
            # The direct path: Prometheus scrapes the agent's own /metrics (as prometheus.yml's compose job does).
            job["job_name"] = "retrybudget"
            job.pop("honor_labels", None)
        path = workdir / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        storage = workdir / f"{name}-data"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(name, ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={storage}",
                                f"--web.listen-address=127.0.0.1:{self.port}", "--rules.alert.resend-delay=1s"],
                         workdir)

    def wait_ready(self):
        wait_http_ok(f"{self.url}/-/ready", START_TIMEOUT, [self.proc])

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        from urllib.parse import urlencode
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        answer = get_json(f"{self.url}/api/v1/query?{urlencode(params)}")
        assert answer["status"] == "success", answer
        return answer["data"]["result"]


class Alertmanager:
    def __init__(self, workdir: Path, webhook_url: str):
        self.port = free_ports(1)[0]
        config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = webhook_url
        config["route"]["group_wait"] = "1s"
        config["route"]["group_interval"] = "1s"
        path = workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        self.address = f"127.0.0.1:{self.port}"
        self.proc = Proc("alertmanager", ["prometheus-alertmanager", f"--config.file={path}",
                                          f"--storage.path={workdir / 'am-data'}",
                                          f"--web.listen-address={self.address}", "--cluster.listen-address="],
                         workdir)

    def wait_ready(self):
        wait_http_ok(f"http://{self.address}/-/ready", START_TIMEOUT, [self.proc])
