"""Prometheus config and alert rules pass promtool (syntax and unit tests); the Grafana provisioning and
dashboard are well-formed and every panel query is valid PromQL. (That the metrics they use exist is
test_deploy_metrics.py's job, against the real server.)"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from deploy_support import DASHBOARD, GRAFANA, PROMETHEUS, run, tool


def test_promtool_check_config():
    done = run([tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rule files found" in done.stdout and "0 rule files found" not in done.stdout


def test_promtool_check_rules():
    rules = sorted((PROMETHEUS / "rules").glob("*.yml"))
    assert rules
    done = run([tool("promtool"), "check", "rules", *map(str, rules)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_unit_tests():
    done = run([tool("promtool"), "test", "rules", str(PROMETHEUS / "tests" / "rules_test.yml")])
    assert done.returncode == 0, done.stdout + done.stderr


def alert_names() -> set[str]:
    doc = yaml.safe_load((PROMETHEUS / "rules" / "rbn-serve.yml").read_text())
    return {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_the_alerts_the_issue_asks_for_exist_and_are_unit_tested():
    alerts = alert_names()
    for wanted in ("RbnServeHighErrorRate", "RbnServeHighLatencyP99", "RbnServeQueueFull", "RbnServeOodRateSurge",
                   "RbnServeAbDisagreementSurge"):
        assert wanted in alerts
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "tests" / "rules_test.yml").read_text()))
    assert alerts <= tested, f"alerts without a promtool unit test: {alerts - tested}"


# --- Grafana ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def test_datasource_is_provisioned_with_the_uid_panels_use(dashboard):
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus"
    uid = ds[0]["uid"]
    for p in panels(dashboard):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == uid, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid, p["title"]
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == uid


def test_dashboard_layout_is_sound(dashboard):
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert dashboard["uid"] == "rbn-serve"
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dashboard):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for p in panels(dashboard):
        for t in p.get("targets", []):
            for used in re.findall(r"\$(\w+)", t["expr"]):
                assert used.startswith("__") or used in variables, f"{p['title']}: ${used} is not a variable"


def test_dashboard_has_the_panels_the_issue_lists(dashboard):
    text = " ".join(f"{p['title']} {' '.join(t['expr'] for t in p.get('targets', []))}" for p in panels(dashboard))
    for wanted in ("rbn_serve_requests_total", "rbn_serve_request_duration_seconds_bucket",
                   "rbn_serve_queue_wait_seconds_bucket", "rbn_serve_batch_size", "rbn_serve_queue_depth",
                   "rbn_serve_ood_flagged_total", "rbn_serve_ood_score_bucket", "rbn_serve_ab_comparisons_total",
                   "rbn_serve_ab_correct_total", "rbn_serve_gpu_utilization_ratio", "rbn_serve_gpu_memory_used_bytes"):
        assert wanted in text, wanted
    quantiles = {q for p in panels(dashboard) for t in p.get("targets", [])
                 for q in re.findall(r"histogram_quantile\((0\.\d+), sum by \(le\) \(rate\(rbn_serve_request_duration", t["expr"])}
    assert quantiles == {"0.5", "0.95", "0.99"}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's macros and variables with values Prometheus accepts."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$__interval", "15s")
    return re.sub(r"\$\w+", ".*", expr)


def test_every_dashboard_query_is_valid_promql(dashboard, tmp_path):
    """promtool parses each query as a recording rule (the same parser Prometheus runs)."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    assert len(exprs) > 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = run([tool("promtool"), "check", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
