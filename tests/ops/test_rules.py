"""Prometheus rules: promtool accepts them, their unit tests pass, and those unit tests can fail.

Needs `promtool` (Debian package `prometheus`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from promql import COLLECTOR_DIR, REPO_ROOT, RULES_DIR, load_rules, split_threshold

RULES_FILE = RULES_DIR / "retrybudget.rules.yml"
RULES_TEST_FILE = RULES_DIR / "retrybudget.rules.test.yml"
README = COLLECTOR_DIR / "README.md"

REQUIRED_ALERTS = {
    "RetryBudgetExhausted",
    "RetryAmplificationHigh",
    "TerminalFailureRatioHigh",
    "NestedClientRetries",
    "ProbeFailing",
    "TelemetryDropping",
}
SEVERITIES = {"critical", "warning", "info"}


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found: install it with `apt-get install -y --no-install-recommends prometheus`")
    return path


def run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in load_rules(RULES_FILE) if "alert" in rule}


def unit_tests() -> list[dict]:
    return yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]


# === promtool ===========================================================================================


def test_promtool_check_rules():
    result = run("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_prometheus_config():
    # Also resolves rule_files (rules/*.rules.yml) relative to prometheus.yml and checks them.
    result = run("check", "config", str(COLLECTOR_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_unit_tests_pass():
    result = run("test", "rules", str(RULES_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _first_sample(tests: list[dict]) -> dict:
    for case in tests:
        for expr_test in case.get("promql_expr_test", []):
            for sample in expr_test.get("exp_samples", []):
                if sample.get("value", 0) != 0:
                    return sample
    raise AssertionError("the unit tests check no recording-rule value")


def _first_firing_alert(tests: list[dict]) -> dict:
    for case in tests:
        for alert_test in case.get("alert_rule_test", []):
            if alert_test.get("exp_alerts"):
                return alert_test["exp_alerts"][0]
    raise AssertionError("the unit tests expect no alert to fire")


def _break_value(tests):
    _first_sample(tests)["value"] += 0.5


def _break_label(tests):
    _first_firing_alert(tests)["exp_labels"]["severity"] = "not-the-severity"


def _break_annotation(tests):
    annotations = _first_firing_alert(tests)["exp_annotations"]
    annotations["summary"] = annotations["summary"] + " (changed)"


@pytest.mark.parametrize("mutate", [_break_value, _break_label, _break_annotation],
                         ids=["recording-value", "alert-label", "alert-annotation"])
def test_promtool_unit_tests_can_fail(tmp_path, mutate):
    """A copy of the unit tests with one expectation changed must make `promtool test rules` fail."""
    config = yaml.safe_load(RULES_TEST_FILE.read_text())
    config["rule_files"] = [str(RULES_FILE)]  # the real rules, from the temporary copy's directory
    mutate(config["tests"])
    broken = tmp_path / "broken.rules.test.yml"
    broken.write_text(yaml.safe_dump(config, sort_keys=False))

    # The unchanged copy passes from the same place, so the failure below is the mutation's doing.
    intact = yaml.safe_load(RULES_TEST_FILE.read_text())
    intact["rule_files"] = [str(RULES_FILE)]
    (tmp_path / "intact.rules.test.yml").write_text(yaml.safe_dump(intact, sort_keys=False))
    assert run("test", "rules", str(tmp_path / "intact.rules.test.yml")).returncode == 0

    result = run("test", "rules", str(broken))
    assert result.returncode != 0, "promtool accepted a deliberately wrong expectation:\n" + result.stdout
    assert "FAILED" in result.stdout + result.stderr


# === the rules' own shape ===============================================================================


def test_required_alerts_exist():
    assert REQUIRED_ALERTS <= set(alerts())


def test_every_alert_has_severity_and_annotations():
    for name, rule in alerts().items():
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{name}: annotation {key} missing"


def _github_anchor(heading: str) -> str:
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def test_runbook_urls_point_at_existing_readme_sections():
    anchors = {_github_anchor(line.lstrip("#")) for line in README.read_text().splitlines() if line.startswith("#")}
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[0].endswith("collector-config/README.md"), f"{name}: {url}"
        assert url.split("#", 1)[1] in anchors, f"{name}: no heading for #{url.split('#', 1)[1]} in {README}"


def test_every_alert_is_signal_against_threshold():
    """`signal OP number`: the live test evaluates the signal on its own (it has a value even when the
    alert does not fire), so every alert must have that shape."""
    for name, rule in alerts().items():
        assert split_threshold(" ".join(rule["expr"].split())), f"{name}: expr is not `signal OP number`"


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    firing, silent = set(), set()
    for case in unit_tests():
        for alert_test in case.get("alert_rule_test", []):
            (firing if alert_test.get("exp_alerts") else silent).add(alert_test["alertname"])
    assert set(alerts()) <= firing, f"no firing case for {set(alerts()) - firing}"
    assert set(alerts()) <= silent, f"no silent case for {set(alerts()) - silent}"


def test_firing_cases_pin_labels_and_annotations():
    for case in unit_tests():
        for alert_test in case.get("alert_rule_test", []):
            for expected in alert_test.get("exp_alerts", []):
                rule = alerts()[alert_test["alertname"]]
                assert expected["exp_labels"]["severity"] == rule["labels"]["severity"]
                assert set(expected["exp_annotations"]) == set(rule["annotations"]), alert_test["alertname"]


def test_a_recording_rule_value_is_tested():
    recorded = {rule["record"] for rule in load_rules(RULES_FILE) if "record" in rule}
    tested = {
        expr_test["expr"].split("{")[0]
        for case in unit_tests()
        for expr_test in case.get("promql_expr_test", [])
        if expr_test.get("exp_samples")
    }
    assert tested & recorded
    assert "route:retrybudget_amplification:ratio5m" in tested
