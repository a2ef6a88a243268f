"""deploy/grafana/sse-relay.json: valid JSON, and every metric its queries use is one the API or a worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

import api.metrics
import worker.metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "sse-relay.json"
_METRIC = re.compile(r"\bsse_relay_[a-z0-9_]+")
# The series names a metric family exposes, by its type (prometheus-client strips `_total` from a counter's name).
_SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _exported() -> set[str]:
    assert api.metrics.SSE_CLIENTS and worker.metrics.TTFT  # both processes' metrics are registered
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SERIES.get(family.type, ("",)))
    return names


def _expressions(panels: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for panel in panels:
        found += [target["expr"] for target in panel.get("targets", [])]
        found += _expressions(panel.get("panels", []))
    return found


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = _expressions(dashboard["panels"])
    used = {name for expr in expressions for name in _METRIC.findall(expr)}
    assert used, "the dashboard queries no sse_relay metric"
    assert used <= _exported(), f"not exported by any process: {sorted(used - _exported())}"


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    text = DASHBOARD.read_text(encoding="utf-8")
    for needed in (
        "histogram_quantile(0.95, sum by (le) (rate(sse_relay_time_to_first_token_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(sse_relay_queue_wait_seconds_bucket",
        "rate(sse_relay_tokens_total",
        "sum by (status, code) (rate(sse_relay_generations_finished_total",
        "rate(sse_relay_resumes_total",
        "sum by (reason) (rate(sse_relay_resets_total",
        "sse_relay_sse_clients",
        "sse_relay_queue_depth",
    ):
        assert needed in text, needed


def test_panels_have_unique_ids_and_a_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"]
