"""The alarm on a refused API key watches the metric the code emits, under its namespace and service."""

from __future__ import annotations

from pathlib import Path

from reditus_local.template import load_template
from reditus_refunds.app import AUTH_ERROR_METRIC

ROOT = Path(__file__).resolve().parents[1]


def test_auth_error_alarm_matches_the_metric() -> None:
    template = load_template(ROOT / "template.yaml")
    alarm = template["Resources"]["ReditusAuthErrorAlarm"]["Properties"]
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert alarm["MetricName"] == AUTH_ERROR_METRIC
    assert alarm["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["Dimensions"] == [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
