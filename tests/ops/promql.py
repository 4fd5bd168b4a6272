"""Every PromQL expression the operations kit ships, and the metric names they use.

A helper for the tests in this folder (it holds no tests itself):

- `extract_expressions()` collects each expression from the Grafana dashboards (panel targets and variable
  queries), the Grafana datasource provisioning (Jaeger → metrics links) and the Prometheus rule files
  (recording rules; alerts with `for` dropped, plus the alert's signal without its threshold). Grafana
  variables are replaced by values a plain Prometheus accepts, so each expression can be sent as is to
  `/api/v1/query` or wrapped in a rule file for `promtool check rules`.
- `metric_names(expr)` / `label_names(expr)` pull the metric and label names out of one expression with
  regular expressions (strings, label matchers, ranges and grouping clauses are removed first, and
  function, aggregation and keyword tokens are skipped).
- `KNOWN_METRICS` / `KNOWN_LABELS` are the names the agent exports (telemetry-contract.md, translated to
  Prometheus: dots → underscores, `_total` on counters, `_seconds` for unit s).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTOR_DIR = REPO_ROOT / "collector-config"
RULES_DIR = COLLECTOR_DIR / "rules"
DASHBOARDS_DIR = REPO_ROOT / "dashboards"
DATASOURCES_FILE = DASHBOARDS_DIR / "provisioning" / "datasources" / "datasources.yml"


def rule_files() -> list[Path]:
    """The rule files Prometheus loads (`rules/*.rules.yml`; the promtool test file is not one)."""
    return sorted(RULES_DIR.glob("*.rules.yml"))


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


# === the agent's exported names ========================================================================

_COUNTERS = [
    "retrybudget_calls_total",
    "retrybudget_attempts_total",
    "retrybudget_budget_denied_total",
    "retrybudget_client_nested_retries_total",
    "retrybudget_telemetry_dropped_total",
]
_GAUGES = ["retrybudget_budget_remaining", "retrybudget_probe_success"]
_HISTOGRAMS = [
    "retrybudget_call_attempts",
    "retrybudget_backoff_duration_seconds",
    "http_client_request_duration_seconds",
    "gen_ai_client_operation_duration_seconds",
    "gen_ai_client_token_usage",
]
KNOWN_METRICS = frozenset(
    _COUNTERS + _GAUGES + [f"{h}_{suffix}" for h in _HISTOGRAMS for suffix in ("bucket", "sum", "count")]
)

KNOWN_LABELS = frozenset(
    {
        # retrybudget.* attributes
        "retrybudget_route", "retrybudget_outcome", "retrybudget_decision", "retrybudget_delay_source",
        "retrybudget_scope", "retrybudget_signal", "retrybudget_check",
        # semantic-convention attributes
        "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_operation_name", "gen_ai_token_type",
        "error_type", "http_request_method", "http_response_status_code", "server_address", "server_port",
        "url_template",
        # added by the exporter / Prometheus / histograms
        "le", "job", "instance", "otel_scope_name",
    }
)

# Only metrics the probe exports (the demo does not run the probe).
PROBE_ONLY_METRICS = frozenset({"retrybudget_probe_success"})


# === expressions ========================================================================================


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it came from."""

    kind: str  # panel | variable | datasource | record | alert | alert_signal
    origin: str  # file (relative to the repo) and the place in it
    name: str  # panel title, variable name, rule name or alert name
    expr: str  # ready to evaluate: Grafana variables substituted

    def __str__(self) -> str:
        return f"[{self.kind}] {self.origin}: {self.expr}"


# Grafana variables → values a plain Prometheus query accepts. Order matters ($__rate_interval before
# $__interval). `$$` is Grafana provisioning's escaped `$`.
def _variable(name: str) -> re.Pattern:
    """`$name`, `${name}` or `${name:format}`, optionally with provisioning's `$$` escape."""
    return re.compile(r"\$?\$(?:\{(?:%s)(?::\w+)?\}|(?:%s)\b)" % (name, name))


_GRAFANA_SUBSTITUTIONS = [
    (_variable("__rate_interval"), "1m"),
    (_variable("__interval"), "15s"),
    (_variable("__range"), "5m"),
    (_variable("__tags"), ""),  # tracesToMetrics: the label matchers built from span attributes
    # `.+` rather than `.*`: a filter on a label the metric does not carry then matches nothing, and the live
    # test catches it (`.*` would also match series without the label).
    (_variable("route|provider|model"), ".+"),
]


def grafana_to_promql(expr: str) -> str:
    """Replace the Grafana variables used in our dashboards; fail on any other variable."""
    for pattern, value in _GRAFANA_SUBSTITUTIONS:
        expr = pattern.sub(value, expr)
    if "$" in expr:
        raise ValueError(f"unhandled Grafana variable in expression: {expr}")
    return expr.strip()


# label_values(metric{...}, label) / query_result(expr): Grafana variable query functions.
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+),\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$", re.S)


def variable_query_parts(query: str) -> tuple[str | None, str | None]:
    """(PromQL selector or expression, label) of a Grafana Prometheus variable query."""
    match = _LABEL_VALUES.match(query)
    if match:
        return match.group("selector"), match.group("label")
    match = _QUERY_RESULT.match(query)
    if match:
        return match.group("expr"), None
    return None, None  # label_values(label) or metrics(): no expression to evaluate


def _variable_query_text(variable: dict) -> str | None:
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return query or variable.get("definition")


def _iter_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _iter_panels(panel.get("panels", []))  # panels nested in collapsed rows


def dashboard_expressions(path: Path) -> list[Expression]:
    rel = path.relative_to(REPO_ROOT)
    dashboard = json.loads(path.read_text())
    found = []
    for panel in _iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(Expression(
                    "panel", f'{rel}: panel {panel.get("id")} "{panel.get("title")}" target {target.get("refId")}',
                    panel.get("title", ""), grafana_to_promql(target["expr"])))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        selector, _label = variable_query_parts(_variable_query_text(variable) or "")
        if selector:
            found.append(Expression("variable", f'{rel}: variable "{variable["name"]}"', variable["name"],
                                    grafana_to_promql(selector)))
    return found


def datasource_expressions(path: Path = DATASOURCES_FILE) -> list[Expression]:
    rel = path.relative_to(REPO_ROOT)
    config = yaml.safe_load(path.read_text())
    found = []
    for datasource in config.get("datasources", []):
        links = (datasource.get("jsonData") or {}).get("tracesToMetrics") or {}
        for query in links.get("queries", []):
            found.append(Expression("datasource", f'{rel}: {datasource["name"]} tracesToMetrics "{query["name"]}"',
                                    query["name"], grafana_to_promql(query["query"])))
    return found


# `signal OP number` at the very end of an alert expression.
_THRESHOLD = re.compile(
    r"^(?P<signal>.*?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?:bool\s+)?(?P<threshold>[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$",
    re.S,
)


def split_threshold(expr: str) -> tuple[str, str, float] | None:
    """(signal, operator, threshold) of `signal OP number`, or None for any other shape."""
    match = _THRESHOLD.match(expr.strip())
    if not match:
        return None
    return match.group("signal").strip(), match.group("op"), float(match.group("threshold"))


def load_rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for path in rule_files() for rule in load_rules(path) if "record" in rule}


def rule_expressions(path: Path) -> list[Expression]:
    """Recording rules and alerts (their `for` does not apply to an instant query), plus each alert's
    signal: the part left of its threshold, which has a value whether or not the alert fires."""
    rel = path.relative_to(REPO_ROOT)
    found = []
    for rule in load_rules(path):
        expr = " ".join(rule["expr"].split())
        if "record" in rule:
            found.append(Expression("record", f"{rel}: record {rule['record']}", rule["record"], expr))
            continue
        found.append(Expression("alert", f"{rel}: alert {rule['alert']}", rule["alert"], expr))
        split = split_threshold(expr)
        if split:
            found.append(Expression("alert_signal", f"{rel}: alert {rule['alert']} (signal)", rule["alert"], split[0]))
    return found


def extract_expressions() -> list[Expression]:
    """Every PromQL expression of the dashboards, the datasource provisioning and the rule files."""
    found: list[Expression] = []
    for path in dashboard_files():
        found += dashboard_expressions(path)
    found += datasource_expressions()
    for path in rule_files():
        found += rule_expressions(path)
    return found


# === names inside one expression ========================================================================

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
     "atan2", "inf", "nan", "start", "end"}
)
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
     "quantile", "limitk", "limit_ratio"}
)


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric (and recorded series) names used in a PromQL expression."""
    text = _without_strings(expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        token = match.group(1)
        if re.match(r"\s*\(", text[match.end():]):
            continue  # a function or an aggregation call
        if token.lower() in _KEYWORDS or token in _AGGREGATIONS:
            continue
        names.add(token)
    return names


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring/group_* clauses."""
    text = _without_strings(expr)
    labels = set()
    for block in _MATCHERS.findall(text):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block))
    for _keyword, inner in _GROUPING.findall(text):
        labels.update(label.strip() for label in inner.split(",") if label.strip())
    labels.discard("__name__")
    return labels
