"""Structural checks of the operations kit: collector configs, compose stack, Prometheus, Alertmanager,
Grafana provisioning and the dashboard. The stack itself cannot run here (no Docker engine), so these
tests check that its pieces agree with each other and with the agent's defaults.

Needs PyYAML, `promtool` (Debian `prometheus`) and `amtool` (Debian `prometheus-alertmanager`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

import promql
from promql import COLLECTOR_DIR, DASHBOARDS_DIR, DATASOURCES_FILE, KNOWN_LABELS, KNOWN_METRICS, REPO_ROOT

COMPOSE_FILE = COLLECTOR_DIR / "docker-compose.yml"
AGENT_CONFIG = COLLECTOR_DIR / "otelcol-agent.yaml"
GATEWAY_CONFIG = COLLECTOR_DIR / "otelcol-gateway.yaml"
PROMETHEUS_CONFIG = COLLECTOR_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = COLLECTOR_DIR / "alertmanager.yml"
DASHBOARD = DASHBOARDS_DIR / "retrybudget-overview.json"
DASHBOARD_PROVIDERS = DASHBOARDS_DIR / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARDS_README = DASHBOARDS_DIR / "README.md"

# The agent's defaults (telemetry-contract.md, the agent's CLI): /metrics on the API port, OTLP ports.
AGENT_PORT = 8787
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
GATEWAY_PROMETHEUS_PORT = 8889

OUTCOMES = ["success", "success_after_retry", "failed_without_retry", "failed_after_retry", "budget_exhausted",
            "deadline_exceeded", "stream_interrupted", "cancelled"]
FAILING_OUTCOMES = ["failed_without_retry", "failed_after_retry", "budget_exhausted", "deadline_exceeded",
                    "stream_interrupted"]
DS_REF = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# Component types of our collector distribution (collector-config/distribution/manifest.yaml, v0.161.0 names:
# `otlp_grpc` and `load_balancing`, the old `otlp` and `loadbalancing` are deprecated aliases there). A typo fails
# here; tests/chain runs the real collector on these files.
COMPONENT_TYPES = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch", "tail_sampling"},
    "exporters": {"otlp_grpc", "prometheus", "debug", "load_balancing"},
    "extensions": {"health_check"},
}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


def services() -> dict:
    return compose()["services"]


# `${env:NAME:-default}` in the collector configs: the default is what the compose stack runs.
_ENV_DEFAULT = re.compile(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")


def host_port(endpoint: str) -> tuple[str, int]:
    """'otel-gateway:4317', 'http://otel-agent:4317' or '0.0.0.0:4318' → (host, port); an endpoint written
    `${env:NAME:-default}` gives its default."""
    endpoint = _ENV_DEFAULT.sub(r"\1", endpoint)
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        return parts.hostname, parts.port
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def container_ports(service: dict) -> set[int]:
    """Ports a compose service offers to the others: `expose` plus the container side of `ports`."""
    ports = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    for mapping in service.get("ports", []):
        ports.add(int(str(mapping).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of each bind mount in short syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def service_mounting(path: Path) -> str:
    """Name of the compose service that mounts the given repository file."""
    for name, service in services().items():
        for source, _target in bind_mounts(service):
            if (COMPOSE_FILE.parent / source).resolve() == path.resolve():
                return name
    raise AssertionError(f"no compose service mounts {path.relative_to(REPO_ROOT)}")


def assert_reachable(endpoint: str, what: str) -> tuple[str, int]:
    host, port = host_port(endpoint)
    assert host in services(), f"{what}: host {host!r} is not a compose service"
    assert port in container_ports(services()[host]), f"{what}: {host} does not expose port {port}"
    return host, port


# === files parse ========================================================================================


YAML_FILES = sorted(
    list(COLLECTOR_DIR.rglob("*.yml")) + list(COLLECTOR_DIR.rglob("*.yaml"))
    + list((DASHBOARDS_DIR / "provisioning").rglob("*.yml"))
)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_yaml_parses(path):
    assert isinstance(load_yaml(path), dict)


def test_dashboard_json_parses():
    assert isinstance(json.loads(DASHBOARD.read_text()), dict)


# === collector configs ==================================================================================


@pytest.mark.parametrize("path", [AGENT_CONFIG, GATEWAY_CONFIG], ids=["agent", "gateway"])
def test_collector_pipelines_use_defined_components(path):
    config = load_yaml(path)
    service = config["service"]
    pipelines = service["pipelines"]
    assert {name.split("/")[0] for name in pipelines} >= {"traces", "metrics", "logs"}
    used = {kind: set() for kind in ("receivers", "processors", "exporters")}
    for name, pipeline in pipelines.items():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, f"unknown pipeline type {name}"
        assert pipeline.get("receivers") and pipeline.get("exporters"), f"{name}: needs receivers and exporters"
        for kind in used:
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{name}: {kind[:-1]} {component!r} is not defined"
                used[kind].add(component)
    for extension in service.get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"extension {extension!r} is not defined"
    # Every defined component has a known type (the part before an optional /name) and is used.
    for kind, allowed in COMPONENT_TYPES.items():
        for component in config.get(kind) or {}:
            assert component.split("/")[0] in allowed, f"{kind[:-1]} type of {component!r} unknown"
            in_use = used[kind] if kind != "extensions" else set(service.get("extensions", []))
            assert component in in_use, f"{kind[:-1]} {component!r} is defined but used by no pipeline"


@pytest.mark.parametrize("path", [AGENT_CONFIG, GATEWAY_CONFIG], ids=["agent", "gateway"])
def test_collector_pipelines_start_with_memory_limiter_and_batch(path):
    for name, pipeline in load_yaml(path)["service"]["pipelines"].items():
        assert pipeline["processors"][0] == "memory_limiter", name
        assert "batch" in pipeline["processors"], name


@pytest.mark.parametrize("path", [AGENT_CONFIG, GATEWAY_CONFIG], ids=["agent", "gateway"])
def test_collector_otlp_receiver_ports(path):
    protocols = load_yaml(path)["receivers"]["otlp"]["protocols"]
    assert host_port(protocols["grpc"]["endpoint"]) == ("0.0.0.0", OTLP_GRPC_PORT)
    assert host_port(protocols["http"]["endpoint"]) == ("0.0.0.0", OTLP_HTTP_PORT)


def test_agent_exports_to_the_gateway_it_runs_with():
    agent, gateway = load_yaml(AGENT_CONFIG), load_yaml(GATEWAY_CONFIG)
    gateway_service = service_mounting(GATEWAY_CONFIG)
    gateway_grpc = host_port(gateway["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])[1]
    exporters = {e for p in agent["service"]["pipelines"].values() for e in p["exporters"]}
    assert exporters == {"otlp_grpc/gateway"}
    host, port = assert_reachable(agent["exporters"]["otlp_grpc/gateway"]["endpoint"], "agent → gateway")
    assert (host, port) == (gateway_service, gateway_grpc)


def test_agent_config_documents_loadbalancing_by_trace_id():
    text = AGENT_CONFIG.read_text() + GATEWAY_CONFIG.read_text()
    assert "loadbalancing" in text and "routing_key: traceID" in text


def test_gateway_tail_sampling_keeps_incident_traces():
    gateway = load_yaml(GATEWAY_CONFIG)
    assert gateway["service"]["pipelines"]["traces"]["processors"] == ["memory_limiter", "tail_sampling", "batch"]
    policies = {p["type"]: p for p in gateway["processors"]["tail_sampling"]["policies"]}
    # Terminal failures and failed attempts.
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    # outcome != success, spelled as the list of all other outcomes (no invert_match, which would veto
    # the probabilistic sample of successes).
    string_policies = {
        p["string_attribute"]["key"]: p["string_attribute"]
        for p in gateway["processors"]["tail_sampling"]["policies"] if p["type"] == "string_attribute"
    }
    assert set(string_policies["retrybudget.outcome"]["values"]) == set(OUTCOMES) - {"success"}
    assert set(string_policies["retrybudget.decision"]["values"]) == {"retry", "stop_budget_exhausted"}
    assert not any(p.get("invert_match") for p in string_policies.values())
    assert policies["probabilistic"]["probabilistic"]["sampling_percentage"] == 10


def test_gateway_exports_traces_to_jaeger_and_metrics_to_prometheus():
    gateway = load_yaml(GATEWAY_CONFIG)
    pipelines = gateway["service"]["pipelines"]
    assert "otlp_grpc/jaeger" in pipelines["traces"]["exporters"]
    assert_reachable(gateway["exporters"]["otlp_grpc/jaeger"]["endpoint"], "gateway → jaeger")
    assert "prometheus" in pipelines["metrics"]["exporters"]
    assert host_port(gateway["exporters"]["prometheus"]["endpoint"]) == ("0.0.0.0", GATEWAY_PROMETHEUS_PORT)


# === docker compose =====================================================================================


def test_compose_has_the_whole_stack():
    assert {"retrybudget", "retrybudget-probe", "otel-agent", "otel-gateway", "jaeger", "prometheus",
            "alertmanager", "grafana"} <= set(services())


def test_compose_images_are_pinned():
    for name, service in services().items():
        image = service.get("image")
        assert image or service.get("build"), f"{name}: neither image nor build"
        if not image:
            continue
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"


def test_compose_mounts_and_build_files_exist():
    base = COMPOSE_FILE.parent
    for name, service in services().items():
        for source, _target in bind_mounts(service):
            assert (base / source).exists(), f"{name}: mounted {source} does not exist"
        build = service.get("build")
        if build:
            context = base / build["context"]
            assert context.is_dir(), f"{name}: build context {build['context']} missing"
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {build['dockerfile']} missing"
            assert (REPO_ROOT / "Cargo.toml").is_file() and context.resolve() == REPO_ROOT


def test_agent_dockerfile():
    text = (COLLECTOR_DIR / "Dockerfile.agent").read_text()
    assert re.search(r"^FROM rust:1\.95[-\w]* AS builder", text, re.M)
    assert "FROM debian:bookworm-slim" in text
    assert "cargo build --release" in text and "-p retrybudget" in text
    # The builder's Debian must not be newer than the runtime's (glibc).
    assert re.search(r"^FROM rust:[\d.]+-bookworm", text, re.M), "pin the builder to bookworm like the runtime"
    ignore = (COLLECTOR_DIR / "Dockerfile.agent.dockerignore").read_text().split()
    assert "target" in ignore


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_compose_agent_uses_the_agent_defaults():
    agent = services()["retrybudget"]
    listen = _flag(agent["command"], "--listen")
    assert host_port(listen) == ("0.0.0.0", AGENT_PORT)  # all interfaces inside a container
    assert AGENT_PORT in container_ports(agent)
    otlp = agent["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    host, port = assert_reachable(otlp, "agent OTLP endpoint")
    assert (host, port) == (service_mounting(AGENT_CONFIG), OTLP_GRPC_PORT)
    assert agent["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    collector = services()[host]
    assert {OTLP_GRPC_PORT, OTLP_HTTP_PORT} <= container_ports(collector)


def test_compose_probe_targets_the_agent():
    probe = services()["retrybudget-probe"]
    assert_reachable(_flag(probe["command"], "--base-url"), "probe base URL")
    assert host_port(_flag(probe["command"], "--listen"))[1] in container_ports(probe)


def test_compose_publishes_host_ports_on_loopback_only():
    for name, service in services().items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name}: {mapping} is published on all interfaces"


# === prometheus =========================================================================================


def test_prometheus_scrape_targets_are_compose_services():
    config = load_yaml(PROMETHEUS_CONFIG)
    targets = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                targets[target] = job["job_name"]
                assert_reachable(target, f"scrape job {job['job_name']}")
    assert f"retrybudget:{AGENT_PORT}" in targets
    assert f"otel-gateway:{GATEWAY_PROMETHEUS_PORT}" in targets
    assert service_mounting(GATEWAY_CONFIG) == "otel-gateway"


def test_prometheus_loads_the_rules_where_compose_mounts_them():
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["rules/*.rules.yml"]
    matched = sorted(p.name for p in COLLECTOR_DIR.glob(config["rule_files"][0]))
    assert matched == ["retrybudget.rules.yml"]  # not the promtool test file
    mounts = dict(bind_mounts(services()["prometheus"]))
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./rules"] == "/etc/prometheus/rules"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services()["prometheus"]["command"]


def test_prometheus_sends_alerts_to_compose_alertmanager():
    config = load_yaml(PROMETHEUS_CONFIG)
    targets = [t for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for t in s["targets"]]
    assert targets == ["alertmanager:9093"]
    assert_reachable(targets[0], "alertmanager")


# === alertmanager =======================================================================================


def amtool() -> str:
    path = shutil.which("amtool")
    if not path:
        pytest.fail("amtool not found: install it with `apt-get install -y --no-install-recommends "
                    "prometheus-alertmanager` (Debian ships it as /usr/bin/amtool)")
    return path


def test_amtool_check_config():
    result = subprocess.run([amtool(), "check-config", str(ALERTMANAGER_CONFIG)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alertmanager_routes_to_the_compose_webhook():
    config = load_yaml(ALERTMANAGER_CONFIG)
    assert {"alertname", "retrybudget_route"} <= set(config["route"]["group_by"])
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urls
    for url in urls:
        assert_reachable(url, "alertmanager webhook")
    assert (COLLECTOR_DIR / "alert_webhook.py").is_file()


def test_alertmanager_rejects_a_broken_config(tmp_path):
    """amtool is not a rubber stamp: a route to an undefined receiver fails."""
    config = load_yaml(ALERTMANAGER_CONFIG)
    config["route"]["receiver"] = "no-such-receiver"
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(yaml.safe_dump(config))
    result = subprocess.run([amtool(), "check-config", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


# === grafana provisioning ===============================================================================


def test_grafana_datasources():
    datasources = {d["uid"]: d for d in load_yaml(DATASOURCES_FILE)["datasources"]}
    assert datasources["prometheus"]["type"] == "prometheus"
    assert datasources["jaeger"]["type"] == "jaeger"
    assert assert_reachable(datasources["prometheus"]["url"], "grafana → prometheus")[0] == "prometheus"
    assert assert_reachable(datasources["jaeger"]["url"], "grafana → jaeger")[0] == "jaeger"
    links = datasources["jaeger"]["jsonData"]["tracesToMetrics"]
    assert links["datasourceUid"] == "prometheus"
    assert links["queries"]
    for query in links["queries"]:
        # Grafana expands $VAR from its environment in provisioning files; $$ keeps a literal $.
        assert "$__tags" not in query["query"].replace("$$__tags", ""), query["name"]


def test_grafana_loads_the_dashboards_directory():
    grafana = services()["grafana"]
    mounts = {(COMPOSE_FILE.parent / s).resolve(): t for s, t in bind_mounts(grafana)}
    provider = load_yaml(DASHBOARD_PROVIDERS)["providers"][0]
    assert provider["type"] == "file"
    assert mounts[DASHBOARDS_DIR.resolve()] == provider["options"]["path"]
    assert mounts[(DASHBOARDS_DIR / "provisioning" / "datasources").resolve()] == "/etc/grafana/provisioning/datasources"
    assert mounts[(DASHBOARDS_DIR / "provisioning" / "dashboards").resolve()] == "/etc/grafana/provisioning/dashboards"


# === dashboard ==========================================================================================


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return list(promql._iter_panels(dashboard()["panels"]))


def variables() -> dict[str, dict]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def test_dashboard_basics():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    ds = variables()["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"


def test_every_panel_has_description_and_a_query():
    assert len(panels()) >= 11
    for panel in panels():
        assert len(panel.get("description", "").strip()) > 40, f'{panel["title"]}: description missing or thin'
        assert any(t.get("expr", "").strip() for t in panel.get("targets", [])), f'{panel["title"]}: no expr'


def _datasource_refs(node, path="$"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield path, value
            yield from _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _datasource_refs(value, f"{path}[{i}]")


def test_every_datasource_reference_is_the_variable():
    refs = list(_datasource_refs(dashboard()))
    assert refs
    for path, ref in refs:
        assert ref == DS_REF, f"{path}: {ref}"


def test_route_provider_model_variables():
    expected = {"route": "retrybudget_route", "provider": "gen_ai_provider_name", "model": "gen_ai_request_model"}
    for name, label in expected.items():
        variable = variables()[name]
        assert variable["type"] == "query" and variable["includeAll"] and variable["multi"], name
        selector, var_label = promql.variable_query_parts(promql._variable_query_text(variable))
        assert var_label == label, name
        assert promql.metric_names(promql.grafana_to_promql(selector)) == {"retrybudget_calls_total"}, name


def _panel_exprs():
    for panel in panels():
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_panel_ranges_use_rate_interval():
    for title, expr in _panel_exprs():
        ranges = re.findall(r"\[([^\]]*)\]", expr)
        if re.search(r"\b(rate|increase)\(", expr):
            assert ranges, f"{title}: rate()/increase() without a range: {expr}"
        for window in ranges:
            assert window == "$__rate_interval", f"{title}: range [{window}] (use $__rate_interval)"


# Which dashboard variables each metric's selectors must honour (the labels the metric carries).
VARIABLE_FILTERS = {
    "retrybudget_calls_total": ["route", "provider", "model"],
    "retrybudget_attempts_total": ["route", "provider", "model"],
    "retrybudget_call_attempts_bucket": ["route"],
    "retrybudget_call_attempts_sum": ["route"],
    "retrybudget_call_attempts_count": ["route"],
    "retrybudget_backoff_duration_seconds_bucket": ["route"],
    "retrybudget_client_nested_retries_total": ["route"],
    "gen_ai_client_operation_duration_seconds_bucket": ["provider", "model"],
    "gen_ai_client_token_usage_sum": ["provider", "model"],
}
VARIABLE_LABELS = {"route": "retrybudget_route", "provider": "gen_ai_provider_name", "model": "gen_ai_request_model"}


def test_panel_selectors_honour_the_variables():
    for title, expr in _panel_exprs():
        for metric, matchers in re.findall(r"([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?", expr):
            for var in VARIABLE_FILTERS.get(metric, []):
                assert f'{VARIABLE_LABELS[var]}=~"${var}"' in matchers, f"{title}: {metric} ignores ${var}"


def test_dashboard_covers_every_instrument():
    used = set().union(*(promql.metric_names(e.expr) for e in promql.dashboard_expressions(DASHBOARD)))
    for needed in ["retrybudget_calls_total", "retrybudget_attempts_total", "retrybudget_call_attempts_bucket",
                   "retrybudget_budget_remaining", "retrybudget_budget_denied_total",
                   "retrybudget_backoff_duration_seconds_bucket", "http_client_request_duration_seconds_bucket",
                   "http_client_request_duration_seconds_count", "gen_ai_client_operation_duration_seconds_bucket",
                   "gen_ai_client_token_usage_sum", "retrybudget_client_nested_retries_total",
                   "retrybudget_telemetry_dropped_total", "retrybudget_probe_success"]:
        assert needed in used, needed


def _jaeger_link_tags(url: str) -> dict:
    assert url.startswith("${jaeger_url}/search?"), url
    query = parse_qs(urlsplit(url.replace("${jaeger_url}", "http://jaeger")).query)
    assert query["service"] == ["${jaeger_service}"]
    return json.loads(query["tags"][0])


def test_dashboard_links_to_jaeger_for_every_failing_outcome_and_retries():
    tags = [_jaeger_link_tags(link["url"]) for link in dashboard()["links"] if "jaeger" in link["url"]]
    outcomes = {t["retrybudget.outcome"] for t in tags if "retrybudget.outcome" in t}
    decisions = {t["retrybudget.decision"] for t in tags if "retrybudget.decision" in t}
    assert set(FAILING_OUTCOMES) <= outcomes
    assert "success" not in outcomes
    assert "retry" in decisions
    jaeger_url = variables()["jaeger_url"]
    assert jaeger_url["type"] == "textbox" and jaeger_url["query"] == "http://localhost:16686"
    assert "127.0.0.1:16686:16686" in services()["jaeger"]["ports"]  # the default URL works with compose
    assert variables()["jaeger_service"]["query"] == "retrybudget"  # the agent's default service name


def test_dashboard_readme_documents_every_panel():
    readme = " ".join(DASHBOARDS_README.read_text().split())
    for title, expr in _panel_exprs():
        assert title in readme, f"dashboards/README.md does not mention panel {title!r}"
        assert " ".join(expr.split()) in readme, f"dashboards/README.md lacks the query of {title!r}: {expr}"


# === names used in every expression =====================================================================


EXPRESSIONS = promql.extract_expressions()


def test_expressions_found_everywhere():
    kinds = {e.kind for e in EXPRESSIONS}
    assert {"panel", "variable", "datasource", "record", "alert", "alert_signal"} <= kinds


@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: e.origin)
def test_expression_uses_only_exported_names(expression):
    allowed = KNOWN_METRICS | promql.recorded_names()
    names = promql.metric_names(expression.expr)
    assert names, f"no metric found in {expression}"
    assert names <= allowed, f"unknown metric(s) {names - allowed} in {expression}"
    labels = promql.label_names(expression.expr)
    assert labels <= KNOWN_LABELS, f"unknown label(s) {labels - KNOWN_LABELS} in {expression}"


def test_every_expression_parses(tmp_path):
    """promtool has no bare-expression checker, so wrap each expression in a recording rule."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool not found: `apt-get install -y --no-install-recommends prometheus`")
    rules = [{"record": f"ops_check:expr_{i}", "expr": e.expr} for i, e in enumerate(EXPRESSIONS)]
    path = tmp_path / "all.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "every-expression", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # …and the wrapper is not a rubber stamp.
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"record": "ops_check:bad", "expr": "sum by (x) (rate(retrybudget_calls_total[5m])"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(path)], capture_output=True).returncode != 0


# === the name parser itself =============================================================================


def test_metric_name_parser():
    expr = ('histogram_quantile(0.95, sum by (le, retrybudget_delay_source) '
            '(rate(retrybudget_backoff_duration_seconds_bucket{retrybudget_route=~"a|b{2}", x!="sum(y)"}[5m] offset 1h)))'
            ' / ignoring (retrybudget_outcome) group_left route:retrybudget_calls:rate5m > bool 1e3'
            ' and on (job) max_over_time(up[5m:1m])')
    assert promql.metric_names(expr) == {"retrybudget_backoff_duration_seconds_bucket",
                                         "route:retrybudget_calls:rate5m", "up"}
    assert promql.label_names(expr) == {"le", "retrybudget_delay_source", "retrybudget_route", "x",
                                        "retrybudget_outcome", "job"}
    assert promql.metric_names("sum(rate(foo_total[1m])) without (a) / count(bar)") == {"foo_total", "bar"}


def test_grafana_substitution_and_threshold_split():
    assert promql.grafana_to_promql('rate(x{r=~"$route",m=~"${model}"}[$__rate_interval])') == 'rate(x{r=~".+",m=~".+"}[1m])'
    with pytest.raises(ValueError):
        promql.grafana_to_promql('x{a="$unknown"}')
    assert promql.split_threshold("min by (a) (x) == 0") == ("min by (a) (x)", "==", 0.0)
    assert promql.split_threshold("a:b:c > 1.1") == ("a:b:c", ">", 1.1)
    assert promql.split_threshold("rate(x[5m])") is None
