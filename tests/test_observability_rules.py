"""deploy/prometheus rules (promtool check + unit tests), the Grafana dashboard, and the docs that go with them.

promtool comes with Debian's `prometheus` package (.ci/run installs it). Without it the promtool tests
are skipped, unless HIDDENSTATE_REQUIRE_PROMETHEUS=1 (CI), which turns a missing binary into a failure.
The rule files are read with PyYAML (.ci/run installs it; same skip/fail rule when it is missing).
The check that every metric the dashboard and the rules use is exported by a running service is in
tests/test_observability_kafka.py (it scrapes one); the helpers it uses are here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumers.config import ServiceConfig
from consumers.service import ScoringService
from detector.config import DetectorConfig
from detector.model.store import untrained

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "hiddenstate-rules.yml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "hiddenstate.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# names Prometheus makes itself, not the service
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "inf", "nan", "atan2"}
# Grafana variables, replaced by something PromQL parses
_GRAFANA_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "job": "hiddenstate",
                 "instance": "127.0.0.1:9108"}


def _required(message: str) -> None:
    if os.environ.get("HIDDENSTATE_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(message + "; HIDDENSTATE_REQUIRE_PROMETHEUS=1 requires it")
    pytest.skip(message)


def _yaml():
    try:
        import yaml
    except ImportError:
        _required("PyYAML is not installed (pip install pyyaml), so the rule files cannot be read")
    return yaml


def prometheus_binary(name: str) -> str:
    """Path of `promtool`/`prometheus`; skips (or fails under HIDDENSTATE_REQUIRE_PROMETHEUS=1) if absent."""
    path = shutil.which(name)
    if path is None:
        _required(f"{name} is not installed (Debian: apt-get install --no-install-recommends prometheus)")
    return path


def grafana_to_promql(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: _GRAFANA_VARS.get(m.group(1), m.group(0)), expr)


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names a PromQL expression selects.

    Strings, label matchers, ranges and label lists (`by (...)`, `on (...)`) are removed first; what is
    left that looks like an identifier and is not called like a function or a keyword is a metric name.
    """
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^{}]*\}", " ", e)
    e = re.sub(r"\[[^\[\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_parser():
    expr = ('histogram_quantile(0.99, sum by (le, job) (rate(a_seconds_bucket{job=~"$job", x="b_total"}'
            '[$__rate_interval]))) / on (job) group_left(instance) job:b:rate5m offset 5m > bool 1e3 '
            'and time() - c_timestamp_seconds unless absent(d) or vector(0)')
    assert metric_names(grafana_to_promql(expr)) == {"a_seconds_bucket", "job:b:rate5m", "c_timestamp_seconds", "d"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the metric selectors of its variables."""
    exprs = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                exprs.append(target["expr"])
            walk(panel.get("panels", []))

    walk(dashboard()["panels"])
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            exprs.append(m.group(1) if m else query)
    return exprs


def rule_groups() -> list[dict]:
    return _yaml().safe_load(RULES.read_text())["groups"]


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in rule_groups() for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}


def alerts() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def referenced_metrics() -> set[str]:
    """Metrics the dashboard and the rules read from the service (recording rules and Prometheus' own excluded)."""
    names = set()
    for expr in dashboard_exprs() + rule_exprs():
        names |= metric_names(grafana_to_promql(expr))
    return names - recorded_names() - PROMETHEUS_OWN


def exported_sample_names(exposition: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(exposition) for s in family.samples}


# --- promtool --------------------------------------------------------------------------------


def test_promtool_check_rules():
    promtool = prometheus_binary("promtool")
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules():
    promtool = prometheus_binary("promtool")
    assert RULE_TESTS
    proc = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test():
    tested = set()
    for path in RULE_TESTS:
        for case in _yaml().safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    assert {a["alert"] for a in alerts()} <= tested


def test_dashboard_expressions_are_valid_promql(tmp_path):
    """promtool parses every dashboard expression (as the expression of a recording rule)."""
    promtool = prometheus_binary("promtool")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(dashboard_exprs())
    ]}]}
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(json.dumps(rules, indent=1))  # JSON is YAML
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- rules, dashboard and docs agree -------------------------------------------------------


def test_alerts_have_severity_summary_and_a_runbook_entry():
    doc = OPERATIONS_DOC.read_text()
    headings = {_anchor(h) for h in re.findall(r"^#+\s+(.+)$", doc, flags=re.M)}
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/operations.md has no section for {name}"
        section = doc.split(f"### {name}", 1)[1].split("\n### ", 1)[0]
        for part in ("What it means", "What to check", "What to do"):
            assert part in section, (name, part)


def test_dashboard_has_a_datasource_variable_and_uses_it_everywhere():
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    titles = set()

    def walk(panels):
        for panel in panels:
            if panel["type"] == "row":
                titles.add(panel["title"])
                walk(panel.get("panels", []))
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}"
                assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])

    walk(dash["panels"])
    assert {"Throughput", "Latency", "Kafka", "Alerts", "State pool"} <= titles
    text = DASHBOARD.read_text()
    for needle in ("hiddenstate_dead_letters_total", "hiddenstate_consumer_lag_messages",
                   "hiddenstate_processing_latency_seconds_bucket", "hiddenstate_state_pool_sensors"):
        assert needle in text


def _service_exposition(learning: str = "off") -> str:
    """The exposition of a service that never connected: every family is there, labelled ones partly."""
    cfg = ServiceConfig(metrics_port=0, detector=DetectorConfig(channels=1, learning=learning))
    return ScoringService(cfg, untrained(8, 1)).metrics.exposition().decode()


def test_every_exported_metric_is_documented_and_every_documented_one_exported():
    doc = METRICS_DOC.read_text()
    exported = {}
    families = [*text_string_to_metric_families(_service_exposition()),
                *text_string_to_metric_families(_service_exposition("online"))]  # + the online learning families
    for family in families:
        name = family.name
        if family.type == "counter":
            name += "_total"
        elif family.type == "info":
            name += "_info"
        exported[name] = family.type
    # families that appear only once there is something to report
    exported.update({"hiddenstate_consumer_lag_messages": "gauge", "hiddenstate_last_poll_timestamp_seconds": "gauge",
                     "hiddenstate_broker_last_contact_timestamp_seconds": "gauge",
                     "hiddenstate_weights_age_seconds": "gauge"})
    rows = re.findall(r"^\|\s*`((?:hiddenstate|process|python)_\w+)`\s*\|\s*(\w+)\s*\|", doc, flags=re.M)
    documented = dict(rows)
    ours = {n: t for n, t in exported.items() if n.startswith("hiddenstate_")}
    assert ours.keys() <= documented.keys(), f"undocumented: {sorted(ours.keys() - documented.keys())}"
    stale = {n for n in documented if n.startswith("hiddenstate_")} - ours.keys()
    assert not stale, f"documented but not exported: {sorted(stale)}"
    for name, kind in ours.items():
        assert documented[name] == ("gauge" if kind == "info" else kind), name


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
