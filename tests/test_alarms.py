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


def test_bad_signature_alarm_matches_the_receivers_metric() -> None:
    """The burst alarm watches what the receiver emits: its metric, namespace and service."""
    from reditus_webhooks.app import BAD_SIGNATURE_METRIC

    template = load_template(ROOT / "template.yaml")
    resources = template["Resources"]
    alarm = resources["WebhookBadSignatureAlarm"]["Properties"]
    env = {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **resources["WebhookReceiverFunction"]["Properties"]["Environment"]["Variables"],
    }
    assert alarm["MetricName"] == BAD_SIGNATURE_METRIC
    assert alarm["Namespace"] == env["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["Dimensions"] == [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}]
    assert alarm["Statistic"] == "Sum"
    threshold = template["Parameters"][alarm["Threshold"]["Ref"]]
    assert threshold["Default"] >= 1 and alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_receiver_errors_and_throttles_alarms() -> None:
    template = load_template(ROOT / "template.yaml")
    resources = template["Resources"]
    watched = {
        alarm["Properties"]["MetricName"]
        for alarm in resources.values()
        if alarm["Type"] == "AWS::CloudWatch::Alarm"
        and alarm["Properties"].get("Dimensions")
        == [{"Name": "FunctionName", "Value": {"Ref": "WebhookReceiverFunction"}}]
    }
    assert watched == {"Errors", "Throttles"}
    for name in ("WebhookErrorsAlarm", "WebhookThrottlesAlarm"):
        alarm = resources[name]["Properties"]
        assert alarm["Namespace"] == "AWS/Lambda"
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
