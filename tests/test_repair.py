"""The scheduled counter repair (functions/reditus_refunds/repair.py) and its deployment.

Items are left the way a submitter environment that went away leaves them (outcome moved,
counted_outcome and the day counter not), then the handler is invoked as Lambda invokes it on a
schedule: an EventBridge event and a context, its configuration from the environment, moto behind.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from reditus_local.simulator import DEMO_INVALID, DEMO_REFUNDABLE, ReditusSimulator
from reditus_local.template import load_template
from reditus_local.worker import FakeLambdaContext, scheduled_event
from reditus_refunds import repair as repair_module
from reditus_refunds.aws_errors import StoreError
from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.layout import COUNTER_PREFIX, GSI_BY_DAY, HASH_KEY
from reditus_refunds.producer import RefundProducer
from reditus_refunds.records import Outcome, utc_now
from reditus_refunds.repair import (
    DAYS_ENV,
    DEFAULT_DAYS,
    MAX_DAYS,
    REPAIR_ENV_VARS,
    REPAIRED_METRIC,
    CounterRepair,
    RepairSettings,
    RepairSettingsError,
    days_back,
)

from .conftest import TABLE, AwsFixture
from .iam_derivation import as_list, calls_on, dynamodb_actions, entered, functions, grants, parse
from .lambda_rig import make_lambda
from .template_support import sam_translate
from .test_artifact import build, imported_by, module_name

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = ROOT / "template.yaml"
REPAIR = "CounterRepairFunction"
REPAIR_ROLE = "CounterRepairRole"
SUBMITTER = "RefundSubmitterFunction"
EVENT = scheduled_event("us-east-1")
FUNCTION_NAME = "reditus-refunds-CounterRepairFunction"


def context() -> FakeLambdaContext:
    return FakeLambdaContext(FUNCTION_NAME, 300)


# ---- the state a killed invocation leaves ---------------------------------------------------------


class SettlementRefused:
    """The moto client, except that DynamoDB refuses the counter settlements (the writes that set
    counted_outcome), as in an outage that starts as an invocation ends; everything else passes."""

    def __init__(self, client: Any):
        self._client = client
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        if any(_settles(action.get("Update", {})) for action in kwargs["TransactItems"]):
            self._refuse("TransactWriteItems")
        return self._client.transact_write_items(**kwargs)

    def update_item(self, **kwargs: Any) -> Any:
        if _settles(kwargs):
            self._refuse("UpdateItem")
        return self._client.update_item(**kwargs)

    def _refuse(self, operation: str) -> None:
        self.refused += 1
        error = {"Error": {"Code": "InternalServerError", "Message": "Internal server error"}}
        raise ClientError(error, operation)  # type: ignore[arg-type]


def frozen(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _settles(update: dict[str, Any]) -> bool:
    return "counted_outcome" in str(update.get("UpdateExpression", ""))


@pytest.fixture
def killed(
    aws: AwsFixture, simulator: ReditusSimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AwsFixture]:
    """Refunds queued today, yesterday and 4 days ago (pending records and counters, by the
    producer), then delivered to the real handler in one batch whose counter settlement DynamoDB
    refused; the environment then went away with its carry-over. The repair is configured from the
    environment, as in Lambda, and built afresh for each test."""
    refusing = SettlementRefused(aws.dynamodb)
    lam = make_lambda(replace(aws, dynamodb=refusing), simulator, monkeypatch)
    writer = HistoryWriter(TABLE, aws.dynamodb)
    now = utc_now()
    for refund_id, payment_id, queued in (
        ("today-ok", DEMO_REFUNDABLE[0], now),
        ("today-no", DEMO_INVALID[0], now),
        ("yesterday-ok", DEMO_REFUNDABLE[1], now - timedelta(days=1)),
        ("old-ok", DEMO_REFUNDABLE[2], now - timedelta(days=4)),
    ):
        producer = RefundProducer(aws.sqs, aws.queue_url, store=writer, clock=frozen(queued))
        assert producer.send_many([RefundRequest(payment_id=payment_id, refund_id=refund_id)]).failed == []
    _, failures = lam.run("not json")  # an invalid message: recorded, never counted yet
    assert failures == set() and refusing.refused
    monkeypatch.setattr(lam.service, "unsettled", [])  # the environment is gone, and its memory
    monkeypatch.setenv("HISTORY_TABLE_NAME", TABLE)
    monkeypatch.delenv(DAYS_ENV, raising=False)
    monkeypatch.setattr(repair_module, "_repair", None)
    yield aws


def table_items(aws: AwsFixture) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": aws.table}
    while True:  # a test's look at the whole table; the code under test never scans
        page = aws.dynamodb.scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def counters(aws: AwsFixture) -> dict[str, dict[str, int]]:
    """The day counters as the console reads them: day -> outcome -> count (zeros left out)."""
    found: dict[str, dict[str, int]] = {}
    outcomes = {o.value for o in Outcome}
    for item in table_items(aws):
        key = item[HASH_KEY]["S"]
        if key.startswith(COUNTER_PREFIX):
            counts = {k: int(v["N"]) for k, v in item.items() if k in outcomes and int(v["N"])}
            found[key.removeprefix(COUNTER_PREFIX)] = counts
    return found


def counted_from_items(aws: AwsFixture) -> dict[str, dict[str, int]]:
    """What the counters should say: the refund items per queued day and outcome."""
    tally: dict[str, Counter[str]] = defaultdict(Counter)
    for item in table_items(aws):
        if "queued_day" in item:
            tally[item["queued_day"]["S"]][item["outcome"]["S"]] += 1
    return {day: dict(counts) for day, counts in tally.items()}


def outcomes(aws: AwsFixture) -> dict[str, str]:
    return {i[HASH_KEY]["S"]: i["outcome"]["S"] for i in table_items(aws) if "queued_day" in i}


def lagging(aws: AwsFixture) -> set[str]:
    """Refund ids whose counted outcome lags their outcome."""
    return {
        item[HASH_KEY]["S"]
        for item in table_items(aws)
        if "queued_day" in item and item.get("counted_outcome", {}).get("S") != item["outcome"]["S"]
    }


def emitted_metric(out: str, name: str) -> list[float]:
    """The values of one metric in the Embedded Metric Format lines Powertools printed."""
    values = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            if name in blob:
                value = blob[name]
                values += [float(v) for v in (value if isinstance(value, list) else [value])]
    return values


# ---- the handler, as Lambda invokes it ----------------------------------------------------------


def test_the_repair_settles_what_a_killed_invocation_left_and_then_nothing(
    killed: AwsFixture, capsys: pytest.CaptureFixture[str], captured_logs: Any
) -> None:
    aws = killed
    today = utc_now().date()
    in_window = {today.isoformat(), (today - timedelta(days=1)).isoformat()}
    old_day = (today - timedelta(days=4)).isoformat()
    (invalid,) = lagging(aws) - {"today-ok", "today-no", "yesterday-ok", "old-ok"}
    assert outcomes(aws) == {
        "today-ok": "refunded",
        "today-no": "rejected",
        "yesterday-ok": "refunded",
        "old-ok": "refunded",
        invalid: "invalid",
    }
    assert counters(aws)[today.isoformat()] == {"pending": 2}  # the counters never moved
    capsys.readouterr()

    result = repair_module.lambda_handler(EVENT, context())

    assert result == {"settled": 4, "days": days_back(today, DEFAULT_DAYS)}
    assert emitted_metric(capsys.readouterr().out, REPAIRED_METRIC) == [4]
    line = json.loads(captured_logs.getvalue().strip().splitlines()[-1])
    assert line["message"] == "day counters repaired" and line["settled"] == 4
    assert line["function_name"] == FUNCTION_NAME  # Powertools' Lambda context keys
    # Every day of the window: the counters are what the items say.
    now_counted, expected = counters(aws), counted_from_items(aws)
    for day in in_window:
        assert now_counted[day] == expected[day]
    assert now_counted[today.isoformat()] == {"refunded": 1, "rejected": 1, "invalid": 1}
    # A day outside the window (COUNTER_REPAIR_DAYS, 3 by default) is left as it was.
    assert lagging(aws) == {"old-ok"}
    assert now_counted[old_day] == {"pending": 1}

    again = repair_module.lambda_handler(EVENT, context())
    assert again["settled"] == 0
    assert emitted_metric(capsys.readouterr().out, REPAIRED_METRIC) == [0]
    assert counters(aws) == now_counted


def test_the_window_follows_the_environment(killed: AwsFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DAYS_ENV, "5")
    result = repair_module.lambda_handler(EVENT, context())
    assert result["settled"] == 5 and len(result["days"]) == 5
    assert lagging(killed) == set()
    assert counters(killed) == counted_from_items(killed)


def test_a_store_failure_fails_the_invocation(
    killed: AwsFixture, monkeypatch: pytest.MonkeyPatch, captured_logs: Any
) -> None:
    client: Any = SettlementRefused(killed.dynamodb)
    monkeypatch.setattr(repair_module, "_repair", CounterRepair(HistoryWriter(TABLE, client), DEFAULT_DAYS))
    before = counters(killed)
    with pytest.raises(StoreError, match="run the repair again"):
        repair_module.lambda_handler(EVENT, context())
    assert client.refused
    assert counters(killed) == before and "today-ok" in lagging(killed)  # nothing half-done
    line = json.loads(captured_logs.getvalue().strip().splitlines()[-1])
    assert line["level"] == "ERROR" and "run the repair again" in line["error"]


def test_a_missing_table_fails_the_invocation_with_a_readable_error(
    killed: AwsFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTORY_TABLE_NAME", "no-such-table")
    with pytest.raises(StoreError, match="no-such-table"):
        repair_module.lambda_handler(EVENT, context())


def test_a_misconfigured_repair_says_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repair_module, "_repair", None)
    monkeypatch.delenv("HISTORY_TABLE_NAME", raising=False)
    with pytest.raises(RepairSettingsError, match="HISTORY_TABLE_NAME is not set"):
        repair_module.lambda_handler(EVENT, context())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("three", "whole number of days, got 'three'"),
        ("0", "between 1 and 31, got 0"),
        (str(MAX_DAYS + 1), f"between 1 and 31, got {MAX_DAYS + 1}"),
    ],
)
def test_settings_refuse_a_bad_window(raw: str, message: str) -> None:
    with pytest.raises(RepairSettingsError, match=re.escape(message)):
        RepairSettings.from_env({"HISTORY_TABLE_NAME": "t", DAYS_ENV: raw})


def test_settings_defaults() -> None:
    assert RepairSettings.from_env({"HISTORY_TABLE_NAME": " t "}) == RepairSettings("t", DEFAULT_DAYS)
    assert RepairSettings.from_env({"HISTORY_TABLE_NAME": "t", DAYS_ENV: " 7 "}).days == 7


def test_the_days_are_utc_days_ending_today() -> None:
    assert days_back(date(2026, 3, 1), 3) == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert days_back(date(2026, 3, 1), 1) == ["2026-03-01"]
    # The repair asks its clock, in UTC: just after midnight UTC is already the new day.
    seen: list[list[str]] = []

    class Writer:
        def settle_days(self, days: Iterable[date | str]) -> int:
            seen.append([str(d) for d in days])
            return 0

    late = datetime.fromisoformat("2026-11-30T00:00:01+00:00")
    CounterRepair(Writer(), 2, clock=lambda: late).run()
    assert seen == [["2026-11-29", "2026-11-30"]]


# ---- the artifact: same package, import-light -----------------------------------------------------

REPAIR_PROBE = """
import json, sys
import reditus_refunds.repair
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("reditus_refunds", "requests"))))
"""


def test_the_repair_runs_from_the_submitters_artifact_without_its_heavy_modules(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    artifact = build("package-code", tmp_path_factory.mktemp("repair-artifact"))
    imported = imported_by(artifact, REPAIR_PROBE, {"HISTORY_TABLE_NAME": "history"})
    shipped = {module_name(p, artifact) for p in (artifact / "reditus_refunds").rglob("*.py")}
    assert "reditus_refunds.repair" in imported
    assert imported - {"requests"} <= shipped
    # No Reditus client, no submitter, no composition root: the repair's cold start is its own.
    heavy = {"requests", "reditus_refunds.app", "reditus_refunds.handler", "reditus_refunds.reditus"}
    assert not imported & (heavy | {"reditus_refunds.submitter", "reditus_refunds.settings"})


# ---- the deployment ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(template["Resources"][name]["Properties"])


def dynamodb_actions_the_repair_calls() -> set[str]:
    """The IAM actions behind every DynamoDB call the repair can make, from the source: what
    repair.py calls on its writer (`self.writer.<m>(`) and what that reaches (tests/iam_derivation.py)."""
    writer = functions(parse("reditus_refunds/history_writer.py"))
    entries = calls_on(parse("reditus_refunds/repair.py"), "self.writer")
    assert entries == {"settle_days"}
    return dynamodb_actions([(writer, entered(writer, entries, "HistoryWriter"))])


def test_the_derivation_finds_the_repairs_calls() -> None:
    """Control for the scan below: the by_day walk, reads by key, and settlements (updates)."""
    assert dynamodb_actions_the_repair_calls() == {
        "dynamodb:Query",
        "dynamodb:BatchGetItem",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
    }


def test_the_repair_role_grants_exactly_what_the_repair_calls(template: dict[str, Any]) -> None:
    role = props(template, REPAIR_ROLE)
    assert not role.get("ManagedPolicyArns")
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    by_service, _ = grants(statements)  # allows only, one service each, scoped, no wildcard action
    assert {f"dynamodb:{a}" for a in by_service["dynamodb"]} == dynamodb_actions_the_repair_calls()
    on: dict[str, list[Any]] = defaultdict(list)  # action -> resources
    for statement in statements:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}  # no Condition to reason about
        for action in as_list(statement["Action"]):
            on[action] += as_list(statement["Resource"])
    # The walk reads the by_day index only; every other call is on the table's items.
    assert on.pop("dynamodb:Query") == [{"Fn::Sub": "${HistoryTable.Arn}/index/" + GSI_BY_DAY}]
    for action in {a for a in on if a.startswith("dynamodb:")}:
        assert on.pop(action) == [{"Fn::GetAtt": ["HistoryTable", "Arn"]}], action
    assert on == {
        "kms:Decrypt": [{"Fn::GetAtt": ["EncryptionKey", "Arn"]}],
        "logs:CreateLogStream": [{"Fn::GetAtt": ["CounterRepairLogGroup", "Arn"]}],
        "logs:PutLogEvents": [{"Fn::GetAtt": ["CounterRepairLogGroup", "Arn"]}],
        "xray:PutTraceSegments": ["*"],  # X-Ray has no resource-level permissions
        "xray:PutTelemetryRecords": ["*"],
    }


def test_the_repair_function_is_the_submitters_package_on_a_schedule(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    fn, submitter = resources[REPAIR], resources[SUBMITTER]
    assert fn["Metadata"]["BuildMethod"] == submitter["Metadata"]["BuildMethod"] == "makefile"
    p = fn["Properties"]
    for key in ("CodeUri", "Runtime", "Architectures", "KmsKeyArn"):
        assert p[key] == submitter["Properties"][key], key
    assert p["Handler"] == "reditus_refunds.repair.lambda_handler"
    module, _, attribute = p["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert p["Role"] == {"Fn::GetAtt": [REPAIR_ROLE, "Arn"]} and "Policies" not in p
    assert p["LoggingConfig"] == {"LogGroup": {"Ref": "CounterRepairLogGroup"}}
    assert p["ReservedConcurrentExecutions"] == {
        "Fn::If": ["HasReservedConcurrency", 1, {"Ref": "AWS::NoValue"}]
    }
    (event,) = p["Events"].values()
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == "rate(1 hour)"
    # It reads exactly these variables; the window the template sets is one the code accepts.
    variables = p["Environment"]["Variables"]
    assert set(variables) == set(REPAIR_ENV_VARS)
    assert variables["HISTORY_TABLE_NAME"] == {"Ref": "HistoryTable"}
    assert RepairSettings.from_env({"HISTORY_TABLE_NAME": "t", DAYS_ENV: variables[DAYS_ENV]}).days >= 1
    assert template["Outputs"]["CounterRepairFunctionName"]["Value"] == {"Ref": REPAIR}


def test_sam_build_has_a_target_for_the_repair() -> None:
    """sam build runs `make build-<LogicalId>` in CodeUri for a makefile build: the repair ships the
    submitter's package, so its target builds exactly that."""
    makefile = (ROOT / "functions" / "Makefile").read_text(encoding="utf-8")
    assert f"\nbuild-{REPAIR}:" in makefile
    target = makefile.split(f"\nbuild-{REPAIR}:", 1)[1].split("\n\n", 1)[0]
    assert "dependencies" in target and "package-code" in target and "receiver" not in target


def test_the_repair_errors_alarm(template: dict[str, Any]) -> None:
    alarms = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("Dimensions") == [{"Name": "FunctionName", "Value": {"Ref": REPAIR}}]
    ]
    (alarm,) = alarms
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    topic = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    assert alarm["AlarmActions"] == alarm["OKActions"] == topic


@pytest.fixture(scope="module")
def translated(template: dict[str, Any]) -> dict[str, Any]:
    return sam_translate(template)


def test_sam_schedules_the_repair_and_gives_it_no_role_of_its_own(translated: dict[str, Any]) -> None:
    resources = translated["Resources"]
    assert resources[REPAIR]["Properties"]["Role"] == {"Fn::GetAtt": [REPAIR_ROLE, "Arn"]}
    rules = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Events::Rule"]
    (rule,) = rules
    assert rule["ScheduleExpression"] == "rate(1 hour)"
    assert [t["Arn"] for t in rule["Targets"]] == [{"Fn::GetAtt": [REPAIR, "Arn"]}]
    roles = [n for n, r in resources.items() if r["Type"] == "AWS::IAM::Role"]
    assert REPAIR_ROLE in roles and not any(n.startswith(REPAIR) for n in roles)  # none generated


def test_the_translated_template_lints_clean(translated: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "translated.json"
    path.write_text(json.dumps(translated), encoding="utf-8")
    script = "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; main()"
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert (done.returncode, done.stdout.strip(), done.stderr.strip()) == (0, "", "")
