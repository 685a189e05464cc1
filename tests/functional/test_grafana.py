"""deploy/grafana/hardserve.json: valid JSON in the shape Grafana imports, every query valid
PromQL (promtool checks them as recording rules), and every metric a query names is one a real
server exposes (its scrape, after traffic)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.functional.test_admin import admin_server, get, scrape_until, value
from tests.helpers import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "hardserve.json"
METRIC_RE = re.compile(r"\bhardserve_[a-z_]+\b")
# What the panels must show (the issue's list), as metric names their queries use.
REQUIRED = {
    "throughput": "hardserve_requests_total",
    "latency quantiles": "hardserve_request_duration_seconds_bucket",
    "pool saturation": "hardserve_pool_threads_busy",
    "refusals by reason": "hardserve_refusals_total",
    "load shedding": "hardserve_load_shed_total",
    "worker exits by cause": "hardserve_worker_exits_total",
    "heartbeat age": "hardserve_worker_heartbeat_age_seconds",
}


@pytest.fixture(autouse=True)
def _clean_environment(clean_server_env: None) -> None:
    """No settings from the runner's environment (tests/conftest.py)."""


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expressions() -> list[str]:
    exprs = [target["expr"] for panel in panels() for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def test_the_dashboard_is_grafana_json() -> None:
    document = dashboard()
    assert document["uid"] == "hardserve" and document["title"]
    assert isinstance(document["schemaVersion"], int)
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels():
        assert panel["title"] and panel["targets"], panel.get("title")
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
    names = {variable["name"] for variable in document["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= names


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/system-deps.sh installs Debian's prometheus"
    rules = []
    for number, expr in enumerate(expressions()):
        if expr.startswith("label_values("):
            continue  # a Grafana function, not PromQL; its selector is checked below
        concrete = expr.replace("$__rate_interval", "5m").replace("$job", ".*")
        rules.append(
            {"record": f"dashboard:query{number}", "expr": concrete.replace("$instance", ".*")}
        )
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout, done.stdout


def test_the_issue_panels_are_there() -> None:
    used = {name for expr in expressions() for name in METRIC_RE.findall(expr)}
    for what, metric in REQUIRED.items():
        assert metric in used, f"no panel shows {what} ({metric})"


def test_every_metric_queried_is_exposed_by_a_real_server() -> None:
    with admin_server("--workers", "2") as admin:
        for number in range(3):
            assert get(admin.server, f"/{number}")[0] == 200
        with socket.create_connection((admin.server.host, admin.server.port), 10) as raw:
            raw.sendall(b"GET / HTTP/1.1\nHost: x\n\n")  # bare LF: a refusal
            raw.recv(4096)
        samples = scrape_until(
            admin,
            "3 requests and a refusal",
            lambda s: (
                value(s, "hardserve_requests_total") == 3
                and value(s, "hardserve_refusals_total", reason="bare_lf") == 1
            ),
        )
    exposed = {name for name, _ in samples}
    queried = {name for expr in expressions() for name in METRIC_RE.findall(expr)}
    assert queried, "no hardserve metric in the dashboard"
    assert queried <= exposed, f"queried but not exposed: {sorted(queried - exposed)}"
