"""The stack's Prometheus (profile "monitoring"), asked what Grafana would ask it: each
panel's query of deploy/grafana/dashboards/pfp.json through the HTTP API.

Grafana itself is not started: it has no stand-in (Debian does not package it), and what
decides whether a panel shows anything is its query's answer from Prometheus.
"""

from __future__ import annotations

import math
import re

import httpx
import yaml

from tests.deploy import engine
from tests.test_deploy_files import dashboard_targets

PROMETHEUS_CONFIG = engine.ROOT / "deploy" / "prometheus" / "prometheus.yml"
DURATION = re.compile(r"(\d+)(s|m)")


def scrape_interval_seconds() -> int:
    text = str(yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"])
    match = DURATION.fullmatch(text)
    assert match, f"scrape_interval {text!r}: expected seconds or minutes"
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def rate_interval() -> str:
    """Grafana's `$__rate_interval` on this dashboard: four scrape intervals (its floor,
    which the 6-hour range's step does not exceed)."""
    return f"{4 * scrape_interval_seconds()}s"


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, as Grafana sends it."""
    return [
        (title, target["expr"].replace("$__rate_interval", rate_interval()))
        for title, target in dashboard_targets()
    ]


def query(base: str, expr: str) -> list[dict]:
    """The instant vector `expr` evaluates to now: [{"metric": {...}, "value": [t, "v"]}]."""
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=30)
    assert answer.status_code == 200, f"{expr}: {answer.status_code} {answer.text}"
    data = answer.json()["data"]
    assert data["resultType"] == "vector", f"{expr}: a {data['resultType']}, not a vector"
    return list(data["result"])


def with_values(series: list[dict]) -> list[dict]:
    """The series that hold a number (NaN is what an empty ratio or quantile gives)."""
    return [s for s in series if not math.isnan(float(s["value"][1]))]


def labels(series: list[dict], *names: str) -> set[tuple[str, ...]]:
    return {tuple(s["metric"].get(name, "") for name in names) for s in series}
