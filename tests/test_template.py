"""template.yaml, the AWS SAM deployment: checked against the code on every test run.

Fast and offline: the template is read with reditus_local.template, translated with the
SAM translator (as CloudFormation does at deploy time) and linted with cfn-lint. checkov runs
from `make checks` (its own venv); here we only check that its skips carry a reason.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from reditus_local.template import TemplateError, load_template, loads_template
from reditus_operators.audit import AUDIT_INDEXES, AUDIT_PROJECTED
from reditus_refunds import layout
from reditus_refunds.settings import (
    DEFAULT_REDITUS_API_BASE_URL,
    LAMBDA_ENV_VARS,
    LOCAL_ONLY_ENV_VARS,
    Settings,
)
from reditus_webhooks import events

from .iam_derivation import calls_on, dynamodb_actions, entered, functions, grants, parse, receiver
from .template_support import sam_translate

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = ROOT / "template.yaml"
FUNCTION = "RefundSubmitterFunction"
ROLE = "RefundSubmitterRole"
# The webhook receiver (issue 13), checked in tests/test_template_webhooks.py.
RECEIVER = "WebhookReceiverFunction"
RECEIVER_ROLE = "WebhookReceiverRole"
# The day counters (the table's stream), checked in tests/test_counter_stream.py.
COUNTERS = "CounterStreamFunction"
COUNTERS_ROLE = "CounterStreamRole"
FUNCTIONS = (FUNCTION, RECEIVER, COUNTERS)

# What the deployed function must be given (the rest of LAMBDA_ENV_VARS are tuning knobs with
# defaults in settings.py).
REQUIRED_ENV = {
    "HISTORY_TABLE_NAME",
    "REFUND_QUEUE_URL",
    "REDITUS_API_KEY_SECRET",
    "REDITUS_API_BASE_URL",
    "NOT_FOUND_GRACE_SECONDS",
    "NOT_FOUND_RECHECK_DELAY_SECONDS",
    "MAX_RECEIVE_COUNT",
    "REDITUS_MAX_CONCURRENCY",
    "REDITUS_MAX_RPS",
}
# Environment variable -> (template parameter, Settings field whose default the parameter's
# default must equal).
PARAMETER_ENV = {
    "REDITUS_API_BASE_URL": ("ReditusApiBaseUrl", "reditus_api_base_url"),
    "NOT_FOUND_GRACE_SECONDS": ("NotFoundGraceSeconds", "not_found_grace_seconds"),
    "NOT_FOUND_RECHECK_DELAY_SECONDS": ("NotFoundRecheckDelaySeconds", "not_found_recheck_delay_seconds"),
    "MAX_RECEIVE_COUNT": ("MaxReceiveCount", "max_receive_count"),
    "REDITUS_MAX_CONCURRENCY": ("ReditusMaxConcurrency", "max_concurrency"),
    "REDITUS_MAX_RPS": ("ReditusMaxRps", "max_requests_per_second"),
}
REQUIRED_OUTPUTS = {
    "RefundQueueUrl",
    "RefundQueueArn",
    "DeadLetterQueueUrl",
    "DeadLetterQueueArn",
    "HistoryTableName",
    "ApiKeySecretArn",
    "FunctionName",
}
LAMBDA_PACKAGE = ROOT / "functions" / "reditus_refunds"
# The receiver's sparse indexes (functions/reditus_webhooks/events.py names them).
WEBHOOK_INDEXES = {
    events.EVENT_DAY_INDEX: (events.EVENT_DAY_ATTRIBUTE, events.EVENT_TIME_ATTRIBUTE),
    events.OPEN_REVIEW_INDEX: (events.REVIEW_OPEN_ATTRIBUTE, events.REVIEW_TIME_ATTRIBUTE),
}
# checkov checks the template may skip (with a reason next to the resource) and nothing else.
# CKV_AWS_258 (a Function URL without IAM auth): the receiver's, public by necessity.
ALLOWED_CHECKOV_SKIPS = {"CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_258"}
SECRET_ARN = {
    "Fn::If": ["CreateApiKeySecret", {"Ref": "ReditusApiKeySecret"}, {"Ref": "ExistingApiKeySecretArn"}]
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


def resources_of(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == type_}


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(template["Resources"][name].get("Properties", {}))


def function_props(template: dict[str, Any], name: str = FUNCTION) -> dict[str, Any]:
    """The function's properties with Globals.Function merged in (as SAM does)."""
    merged = dict(template.get("Globals", {}).get("Function", {}))
    for key, value in props(template, name).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _merge(base: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in local.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_vars(template: dict[str, Any], name: str = FUNCTION) -> dict[str, Any]:
    return dict(function_props(template, name)["Environment"]["Variables"])


def parameter(template: dict[str, Any], ref: Any) -> dict[str, Any]:
    assert isinstance(ref, dict) and set(ref) == {"Ref"}, f"expected a Ref to a parameter, got {ref!r}"
    name = ref["Ref"]
    assert name in template["Parameters"], f"{name} is not a parameter"
    return dict(template["Parameters"][name])


def number_default(template: dict[str, Any], ref: Any) -> float:
    param = parameter(template, ref)
    assert param["Type"] == "Number"
    return float(param["Default"])


def role_statements(template: dict[str, Any], name: str = ROLE) -> list[dict[str, Any]]:
    role = props(template, name)
    assert not role.get("ManagedPolicyArns"), "managed policies grant more than this function needs"
    statements: list[dict[str, Any]] = []
    for policy in role["Policies"]:
        statements.extend(policy["PolicyDocument"]["Statement"])
    return statements


# --- what the function calls on DynamoDB, read from its code -----------------------------------


def dynamodb_actions_the_function_calls() -> set[str]:
    """The IAM actions behind every DynamoDB call the Lambda's code can make, from its source.

    The submitter and the composition root use the store (HistoryWriter) through `self.store.<m>(`;
    from those methods, the writer's own calls lead to the table's (`self.table.<m>(`), whose methods
    call the client (`self.client.<op>(`, table.py). A transaction counts as the kinds of item
    (Put, Update...) the reached code builds.
    """
    writer = functions(parse("reditus_refunds/history_writer.py"))
    entries = set().union(
        *(calls_on(parse(f"reditus_refunds/{m}"), "self.store") for m in ("submitter.py", "app.py"))
    )
    return dynamodb_actions([(writer, entered(writer, entries, "HistoryWriter"))])


# --- the loader -----------------------------------------------------------------------------


def test_loader_turns_short_form_intrinsics_into_long_form() -> None:
    text = """
AWSTemplateFormatVersion: 2010-09-09
A: !Ref Thing
B: !GetAtt Queue.Arn
C: !GetAtt [Queue, QueueName]
D: !Sub "${AWS::StackName}-x"
E: !If [Cond, !Ref X, !Ref AWS::NoValue]
F: !Not [!Equals [!Ref P, ""]]
G: !Join [",", !Split ["|", !Select [0, [a, b]]]]
H: !Condition IsProd
I: !GetAtt Stack.Outputs.Name
"""
    data = loads_template(text)
    assert data["AWSTemplateFormatVersion"] == "2010-09-09"
    assert data["A"] == {"Ref": "Thing"}
    assert data["B"] == {"Fn::GetAtt": ["Queue", "Arn"]}
    assert data["C"] == {"Fn::GetAtt": ["Queue", "QueueName"]}
    assert data["D"] == {"Fn::Sub": "${AWS::StackName}-x"}
    assert data["E"] == {"Fn::If": ["Cond", {"Ref": "X"}, {"Ref": "AWS::NoValue"}]}
    assert data["F"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "P"}, ""]}]}
    assert data["G"] == {"Fn::Join": [",", {"Fn::Split": ["|", {"Fn::Select": [0, ["a", "b"]]}]}]}
    assert data["H"] == {"Condition": "IsProd"}
    assert data["I"] == {"Fn::GetAtt": ["Stack", "Outputs.Name"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("a: !Bogus x\n", "unknown tag !Bogus"),
        ("a: !GetAtt NoDot\n", "Resource.Attribute"),
        ("- a\n", "mapping"),
        ("a: [\n", "invalid template YAML"),
    ],
)
def test_loader_rejects_what_cloudformation_rejects(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        loads_template(text)


# --- the function -----------------------------------------------------------------------------


def test_handler_imports_from_code_uri(template: dict[str, Any]) -> None:
    """The Handler resolves to a callable in CodeUri, imported as Lambda would (offline, moto)."""
    fn = function_props(template)
    code_dir = (ROOT / fn["CodeUri"]).resolve()
    assert code_dir.is_dir()
    module_name, _, attribute = fn["Handler"].rpartition(".")
    assert module_name and attribute
    module_file = code_dir.joinpath(*module_name.split("."))
    assert module_file.with_suffix(".py").is_file() or (module_file / "__init__.py").is_file(), (
        f"{fn['Handler']}: no module {module_name} under {code_dir}"
    )

    static_env = {k: v for k, v in env_vars(template).items() if isinstance(v, str)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(static_env)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(code_dir), env.get("PYTHONPATH", "")]),
            "AWS_DEFAULT_REGION": "us-east-1",
            "HISTORY_TABLE_NAME": "reditus-refunds-history",
            "REFUND_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/reditus-refunds",
            "REDITUS_API_KEY": "test-key",
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_DISABLED": "1",
        }
    )
    script = f"""
import importlib, json
from moto import mock_aws
with mock_aws():
    module = importlib.import_module({module_name!r})
    handler = getattr(module, {attribute!r})
    print(json.dumps({{"file": module.__file__, "callable": callable(handler)}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["callable"], f"{fn['Handler']} is not callable"
    assert Path(result["file"]).resolve().is_relative_to(code_dir)


def test_function_runtime_and_tracing(template: dict[str, Any]) -> None:
    fn = function_props(template)
    match = re.fullmatch(r"python3\.(\d+)", fn["Runtime"])
    assert match and int(match.group(1)) >= 12, fn["Runtime"]
    assert fn["Architectures"] == ["arm64"]
    assert fn["Tracing"] == "Active"
    assert fn["Timeout"] == 60
    memory = fn["MemorySize"]
    assert (number_default(template, memory) if isinstance(memory, dict) else memory) == 256
    # SQS-triggered: a function-level DLQ would never receive anything.
    assert "DeadLetterQueue" not in fn
    assert fn["KmsKeyArn"] == {"Fn::GetAtt": ["EncryptionKey", "Arn"]}


def test_function_environment_sets_what_the_code_needs(template: dict[str, Any]) -> None:
    assert set(LAMBDA_ENV_VARS) >= REQUIRED_ENV
    assert not REQUIRED_ENV & set(LOCAL_ONLY_ENV_VARS)
    variables = env_vars(template)
    assert set(variables) >= REQUIRED_ENV
    assert variables["HISTORY_TABLE_NAME"] == {"Ref": "HistoryTable"}
    assert variables["REFUND_QUEUE_URL"] == {"Ref": "RefundQueue"}
    assert variables["REDITUS_API_KEY_SECRET"] == SECRET_ARN
    # The same parameter drives SQS's redrive and the function's "last delivery" decision.
    assert (
        variables["MAX_RECEIVE_COUNT"] == props(template, "RefundQueue")["RedrivePolicy"]["maxReceiveCount"]
    )


def test_function_environment_sets_nothing_the_code_does_not_read(template: dict[str, Any]) -> None:
    allowed = set(LAMBDA_ENV_VARS) - set(LOCAL_ONLY_ENV_VARS)
    for name in env_vars(template):
        assert name in allowed or name.startswith("POWERTOOLS_"), f"template sets {name}, nothing reads it"
    # The API key itself never appears in the template, only the secret's ARN.
    assert "REDITUS_API_KEY:" not in TEMPLATE_PATH.read_text(encoding="utf-8")


def test_powertools_settings(template: dict[str, Any]) -> None:
    variables = env_vars(template)
    assert variables["POWERTOOLS_SERVICE_NAME"] == "reditus-refunds"
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "ReditusRefunds"
    assert variables["POWERTOOLS_LOGGER_LOG_EVENT"] == "false"
    level = variables["POWERTOOLS_LOG_LEVEL"]
    assert (parameter(template, level)["Default"] if isinstance(level, dict) else level) == "INFO"


@pytest.mark.parametrize("env_name", sorted(PARAMETER_ENV))
def test_parameter_defaults_match_settings_defaults(template: dict[str, Any], env_name: str) -> None:
    param_name, field_name = PARAMETER_ENV[env_name]
    assert env_vars(template)[env_name] == {"Ref": param_name}
    param = template["Parameters"][param_name]
    default = {f.name: f.default for f in dataclasses.fields(Settings)}[field_name]
    if isinstance(default, str):
        assert param["Default"] == default
    else:
        assert float(param["Default"]) == float(default)


def test_parameter_bounds_match_settings_checks(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["ReditusApiBaseUrl"]["Default"] == DEFAULT_REDITUS_API_BASE_URL
    assert params["NotFoundRecheckDelaySeconds"]["MaxValue"] <= 900  # the SQS delay limit
    assert params["MaxReceiveCount"]["Default"] >= 5
    assert params["MaxReceiveCount"]["MinValue"] >= 5
    assert params["ReditusMaxConcurrency"]["MinValue"] >= 1
    assert params["ExistingApiKeySecretArn"]["Default"] == ""
    assert params["AlarmTopicArn"]["Default"] == ""
    assert set(params["Stage"]["AllowedValues"]) == {"dev", "staging", "prod"}


def test_sqs_event_source(template: dict[str, Any]) -> None:
    events = function_props(template)["Events"]
    assert len(events) == 1
    (event,) = events.values()
    assert event["Type"] == "SQS"
    source = event["Properties"]
    assert source["Queue"] == {"Fn::GetAtt": ["RefundQueue", "Arn"]}
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert number_default(template, source["BatchSize"]) == 10
    assert number_default(template, source["MaximumBatchingWindowInSeconds"]) == 1
    max_concurrency = parameter(template, source["ScalingConfig"]["MaximumConcurrency"])
    assert max_concurrency["Default"] == 5
    assert max_concurrency["MinValue"] >= 2  # the lowest SQS accepts


def test_reserved_concurrency_is_a_parameter(template: dict[str, Any]) -> None:
    reserved = function_props(template)["ReservedConcurrentExecutions"]
    assert reserved == {
        "Fn::If": ["HasReservedConcurrency", {"Ref": "ReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    params = template["Parameters"]
    assert params["ReservedConcurrency"]["Default"] >= params["MaximumConcurrency"]["Default"]


def test_function_uses_its_own_role(template: dict[str, Any]) -> None:
    fn = function_props(template)
    # A SAM-generated role would add AWSLambdaSQSQueueExecutionRole (every queue in the account).
    assert fn["Role"] == {"Fn::GetAtt": [ROLE, "Arn"]}
    assert "Policies" not in fn
    assert list(resources_of(template, "AWS::IAM::Role")) == [ROLE, RECEIVER_ROLE, COUNTERS_ROLE]
    for role in (ROLE, RECEIVER_ROLE, COUNTERS_ROLE):
        trust = props(template, role)["AssumeRolePolicyDocument"]["Statement"]
        assert trust == [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]


def test_function_permissions_are_least_privilege(template: dict[str, Any]) -> None:
    by_service, resources_by_service = grants(role_statements(template))
    assert set(by_service) == {"sqs", "dynamodb", "secretsmanager", "kms", "logs", "xray"}
    assert by_service["logs"] == {"CreateLogStream", "PutLogEvents"}
    assert by_service["xray"] == {"PutTraceSegments", "PutTelemetryRecords"}
    assert {f"dynamodb:{a}" for a in by_service["dynamodb"]} == dynamodb_actions_the_function_calls()
    assert by_service["secretsmanager"] == {"GetSecretValue"}
    assert by_service["kms"] == {"Decrypt", "GenerateDataKey"}
    assert by_service["sqs"] == {
        "ReceiveMessage",
        "DeleteMessage",
        "ChangeMessageVisibility",
        "GetQueueAttributes",
        "SendMessage",
    }
    assert all(r == {"Fn::GetAtt": ["RefundQueue", "Arn"]} for r in resources_by_service["sqs"])
    assert resources_by_service["dynamodb"] == [
        {"Fn::GetAtt": ["HistoryTable", "Arn"]},
        {"Fn::Sub": "${HistoryTable.Arn}/index/*"},
    ]
    assert resources_by_service["secretsmanager"] == [SECRET_ARN]
    assert resources_by_service["kms"] == [{"Fn::GetAtt": ["EncryptionKey", "Arn"]}]
    assert resources_by_service["logs"] == [{"Fn::GetAtt": ["RefundSubmitterLogGroup", "Arn"]}]
    assert function_props(template)["LoggingConfig"] == {"LogGroup": {"Ref": "RefundSubmitterLogGroup"}}


def test_the_derived_dynamodb_actions_are_the_functions_calls() -> None:
    """The scan behind the least-privilege check finds what the function does and nothing more."""
    derived = dynamodb_actions_the_function_calls()
    # Reads of claims and states, and every write an update or a transaction of updates.
    assert {"dynamodb:GetItem", "dynamodb:UpdateItem"} <= derived
    # Pages and day counts are the operators' (HistoryReader); pending records are the producers'.
    assert not derived & {"dynamodb:Query", "dynamodb:Scan", "dynamodb:PutItem"}
    # The function's producer (re-checks) writes no pending record: it is built without a store.
    app = parse("reditus_refunds/app.py")
    for call in ast.walk(app):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "RefundProducer"
        ):
            assert len(call.args) <= 2 and not any(k.arg == "store" for k in call.keywords)


# --- the history table --------------------------------------------------------------------------


def test_history_table_matches_records(template: dict[str, Any]) -> None:
    assert list(resources_of(template, "AWS::DynamoDB::Table")) == ["HistoryTable"]
    assert not resources_of(template, "AWS::Serverless::SimpleTable")
    table = template["Resources"]["HistoryTable"]
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    p = table["Properties"]
    assert p["KeySchema"] == [{"AttributeName": layout.HASH_KEY, "KeyType": "HASH"}]
    indexes = {
        gsi["IndexName"]: tuple(k["AttributeName"] for k in gsi["KeySchema"])
        for gsi in p["GlobalSecondaryIndexes"]
    }
    assert indexes == layout.INDEXES | WEBHOOK_INDEXES | AUDIT_INDEXES
    for gsi in p["GlobalSecondaryIndexes"]:
        assert [k["KeyType"] for k in gsi["KeySchema"]] == ["HASH", "RANGE"]
        if gsi["IndexName"] in layout.INDEXES:
            projected = layout.INDEX_PROJECTIONS[gsi["IndexName"]]
            if projected == layout.KEYS_ONLY:
                assert gsi["Projection"] == {"ProjectionType": "KEYS_ONLY"}
            else:
                assert gsi["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(projected)}
        if gsi["IndexName"] in AUDIT_INDEXES:  # the audit lists read what is projected, no more
            audit_projection = {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(AUDIT_PROJECTED)}
            assert gsi["Projection"] == audit_projection
    key_attributes = {layout.HASH_KEY} | {
        a for pair in (layout.INDEXES | WEBHOOK_INDEXES | AUDIT_INDEXES).values() for a in pair
    }
    attributes = {d["AttributeName"]: d["AttributeType"] for d in p["AttributeDefinitions"]}
    assert len(attributes) == len(p["AttributeDefinitions"])
    assert attributes == dict.fromkeys(key_attributes, "S")


def _item_reads(function: Any) -> set[str]:
    """The attributes a *_from_item function reads: item["x"] and item.get("x")."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    reads = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.value, ast.Name)
            and node.value.id == "item"
        ):
            reads.add(node.slice.value)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and receiver(node.func.value) == "item"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            reads.add(node.args[0].value)
    return reads


@pytest.mark.parametrize(
    ("index", "from_item"),
    [(events.EVENT_DAY_INDEX, events.event_from_item), (events.OPEN_REVIEW_INDEX, events.review_from_item)],
)
def test_webhook_indexes_project_what_their_lists_read(
    template: dict[str, Any], index: str, from_item: Any
) -> None:
    """Sparse and lean (issue 15): the receiver's lists read exactly what the index projects."""
    (gsi,) = [g for g in props(template, "HistoryTable")["GlobalSecondaryIndexes"] if g["IndexName"] == index]
    projection = gsi["Projection"]
    assert projection["ProjectionType"] == "INCLUDE"
    keys = {layout.HASH_KEY} | set(WEBHOOK_INDEXES[index])
    projected = set(projection["NonKeyAttributes"])
    assert len(projected) == len(projection["NonKeyAttributes"])
    assert not projected & keys, "key attributes are always projected"
    assert projected | keys == _item_reads(from_item) | keys


def test_refund_list_indexes_project_what_a_list_row_shows() -> None:
    """Issue 15: a list page is one Query on the INCLUDE indexes (every column of the console's
    table, its CSV export and the CLI's table is there), and nothing the claim or the counter
    settlement writes is in any index, so neither writes an index entry; a refund's detail (attempt
    log, message id) is read by key."""
    import ui.data
    import ui.view
    from reditus_refunds.records import HistoryRecord

    shown = set(ui.data.EXPORT_COLUMNS) | set(ui.view.history_frame([]).columns)
    shown -= {layout.HASH_KEY}
    assert set(layout.LIST_ATTRIBUTES) == shown
    reads = _item_reads(HistoryRecord.from_item) - {layout.HASH_KEY}
    assert shown <= reads
    claim_and_settlement = {
        "counted_outcome", "lease_token", "lease_until", "recheck_token", "message_id", "last_attempt_at",
    }  # fmt: skip
    for index, projected in layout.INDEX_PROJECTIONS.items():
        keys = set(layout.INDEXES[index])
        assert not claim_and_settlement & (set(projected) | keys), index
        if projected != layout.KEYS_ONLY:
            assert set(projected) | keys == shown | keys


def test_history_table_stays_within_dynamodb_projection_limit(template: dict[str, Any]) -> None:
    """DynamoDB refuses a table whose indexes project more than 100 non-key attributes in all
    (an attribute projected into two indexes counts twice)."""
    indexes = props(template, "HistoryTable")["GlobalSecondaryIndexes"]
    assert sum(len(g["Projection"].get("NonKeyAttributes", [])) for g in indexes) <= 100
    assert len(indexes) <= 20


def test_refund_records_never_enter_the_webhook_indexes() -> None:
    """No refund item carries a webhook index's key, so the indexes cost nothing per refund."""
    webhook_keys = {a for pair in WEBHOOK_INDEXES.values() for a in pair}
    assert not webhook_keys & {a for pair in layout.INDEXES.values() for a in pair}
    for module in ("records.py", "history_writer.py", "layout.py"):
        source = (LAMBDA_PACKAGE / module).read_text(encoding="utf-8")
        for attribute in (events.EVENT_DAY_ATTRIBUTE, events.REVIEW_OPEN_ATTRIBUTE):
            assert attribute not in source, f"{module} mentions {attribute}"


def test_history_table_is_protected(template: dict[str, Any]) -> None:
    p = props(template, "HistoryTable")
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert p["DeletionProtectionEnabled"] is True
    assert p["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": {"Ref": "EncryptionKey"},
    }


# --- queues, key, secret ------------------------------------------------------------------------


def test_queues(template: dict[str, Any]) -> None:
    assert set(resources_of(template, "AWS::SQS::Queue")) == {"RefundQueue", "DeadLetterQueue"}
    queue = props(template, "RefundQueue")
    dlq = props(template, "DeadLetterQueue")
    visibility = queue["VisibilityTimeout"]
    assert visibility == {
        "Fn::FindInMap": [
            "VisibilityTimeoutByBatchingWindow",
            {"Ref": "MaximumBatchingWindowInSeconds"},
            "Seconds",
        ]
    }
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert number_default(template, redrive["maxReceiveCount"]) >= 5
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert dlq["MessageRetentionPeriod"] >= queue.get("MessageRetentionPeriod", 4 * 24 * 3600)
    for p in (queue, dlq):
        assert p["KmsMasterKeyId"] == {"Ref": "EncryptionKey"}
        assert "SqsManagedSseEnabled" not in p


def test_visibility_timeout_covers_six_timeouts_and_the_batching_window(template: dict[str, Any]) -> None:
    """Lambda's guidance for SQS sources: visibility >= 6 x function timeout + batching window, for
    every window the template accepts (else a message reappears while its batch is still running)."""
    timeout = function_props(template)["Timeout"]
    (event,) = function_props(template)["Events"].values()
    window = parameter(template, event["Properties"]["MaximumBatchingWindowInSeconds"])
    allowed = window["AllowedValues"]
    assert "MaxValue" not in window and window["Default"] in allowed
    assert max(allowed) <= 300 and min(allowed) == 0  # what the event source mapping accepts
    table = template["Mappings"]["VisibilityTimeoutByBatchingWindow"]
    assert set(table) == {str(w) for w in allowed}
    for seconds in allowed:
        visibility = table[str(seconds)]["Seconds"]
        assert visibility >= 6 * timeout + seconds, f"window {seconds} s: visibility {visibility} s"
        assert visibility <= 43200  # the SQS limit


def test_queues_refuse_plain_http(template: dict[str, Any]) -> None:
    (policy,) = resources_of(template, "AWS::SQS::QueuePolicy").values()
    assert policy["Properties"]["Queues"] == [{"Ref": "RefundQueue"}, {"Ref": "DeadLetterQueue"}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_encryption_key(template: dict[str, Any]) -> None:
    key = template["Resources"]["EncryptionKey"]
    # Retained with the table: without its key a retained table could not be read.
    assert key["DeletionPolicy"] == "Retain"
    assert key["UpdateReplacePolicy"] == "Retain"
    assert key["Properties"]["EnableKeyRotation"] is True
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    principals = [s["Principal"] for s in statements]
    assert "*" not in principals and {"AWS": "*"} not in principals
    assert principals[0] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    assert {"Service": "sqs.amazonaws.com"} in principals


def test_api_key_secret(template: dict[str, Any]) -> None:
    assert template["Conditions"]["CreateApiKeySecret"] == {
        "Fn::Equals": [{"Ref": "ExistingApiKeySecretArn"}, ""]
    }
    secret = template["Resources"]["ReditusApiKeySecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Condition"] == "CreateApiKeySecret"
    p = secret["Properties"]
    assert "SecretString" not in p, "the template must never hold the API key"
    assert "GenerateSecretString" in p
    assert p["KmsKeyId"] == {"Ref": "EncryptionKey"}
    assert "put-secret-value" in p["Description"]
    # Every use of the secret goes through the same Fn::If.
    text = json.dumps(template)
    assert text.count('{"Ref": "ReditusApiKeySecret"}') == text.count(json.dumps(SECRET_ARN))


# --- alarms and outputs --------------------------------------------------------------------------


def test_alarms(template: dict[str, Any]) -> None:
    every = resources_of(template, "AWS::CloudWatch::Alarm")
    # The receiver's alarms are checked in tests/test_template_webhooks.py, the day counters' in
    # tests/test_counter_stream.py.
    alarms = {
        p["Properties"]["MetricName"]: p["Properties"]
        for name, p in every.items()
        if not name.startswith(("Webhook", "CounterStream"))
    }
    assert set(alarms) == {
        "ApproximateNumberOfMessagesVisible",
        "Errors",
        "ApproximateAgeOfOldestMessage",
        "ReditusAuthError",
    }
    dlq = alarms["ApproximateNumberOfMessagesVisible"]
    assert dlq["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}
    ]
    assert (dlq["Threshold"], dlq["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    errors = alarms["Errors"]
    assert errors["Namespace"] == "AWS/Lambda"
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": FUNCTION}}]
    assert (errors["Threshold"], errors["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    age = alarms["ApproximateAgeOfOldestMessage"]
    assert age["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["RefundQueue", "QueueName"]}}]
    assert number_default(template, age["Threshold"]) == 900
    topic = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for alarm in [p["Properties"] for p in every.values()]:
        assert alarm["AlarmActions"] == topic
        assert alarm["OKActions"] == topic
        assert alarm["AlarmDescription"]


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert set(outputs) >= REQUIRED_OUTPUTS
    assert outputs["RefundQueueUrl"]["Value"] == {"Ref": "RefundQueue"}
    assert outputs["RefundQueueArn"]["Value"] == {"Fn::GetAtt": ["RefundQueue", "Arn"]}
    assert outputs["DeadLetterQueueUrl"]["Value"] == {"Ref": "DeadLetterQueue"}
    assert outputs["DeadLetterQueueArn"]["Value"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert outputs["HistoryTableName"]["Value"] == {"Ref": "HistoryTable"}
    assert outputs["ApiKeySecretArn"]["Value"] == SECRET_ARN
    assert outputs["FunctionName"]["Value"] == {"Ref": FUNCTION}


# --- tools: checkov skips, SAM translator, cfn-lint ----------------------------------------------


def test_checkov_skips_have_reasons(template: dict[str, Any]) -> None:
    seen = set()
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert skip["id"] in ALLOWED_CHECKOV_SKIPS, f"{name}: new checkov skip {skip['id']}"
            assert len(skip.get("comment", "").split()) >= 5, f"{name}: skip {skip['id']} needs a reason"
            seen.add(skip["id"])
    assert seen == ALLOWED_CHECKOV_SKIPS
    requirements = (ROOT / "requirements" / "checkov.in").read_text(encoding="utf-8")
    pin = re.search(r"^checkov==\d+\.\d+\.\d+$", requirements, re.MULTILINE)
    assert pin, "pin checkov exactly"
    lock = (ROOT / "requirements" / "checkov.lock").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(pin.group())} \\$", lock, re.MULTILINE), (
        "make lock: checkov.lock is behind"
    )


@pytest.fixture(scope="module")
def translated(template: dict[str, Any]) -> dict[str, Any]:
    return sam_translate(template)


def test_sam_translates(translated: dict[str, Any]) -> None:
    resources = translated["Resources"]
    assert resources[FUNCTION]["Type"] == "AWS::Lambda::Function"
    lambda_props = resources[FUNCTION]["Properties"]
    assert lambda_props["Handler"] == "reditus_refunds.handler.lambda_handler"
    assert lambda_props["TracingConfig"] == {"Mode": "Active"}
    assert set(lambda_props["Environment"]["Variables"]) >= REQUIRED_ENV
    # The submitter's mapping (the day counters' one, on the table's stream: test_counter_stream.py).
    (mapping,) = [
        m
        for m in resources_of(translated, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": FUNCTION}
    ]
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["Properties"]["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "MaximumConcurrency"}}
    assert lambda_props["Role"] == {"Fn::GetAtt": [ROLE, "Arn"]}
    # SAM generated no role of its own (and so attached no broad managed policies).
    assert list(resources_of(translated, "AWS::IAM::Role")) == [ROLE, RECEIVER_ROLE, COUNTERS_ROLE]
    for role in (ROLE, RECEIVER_ROLE, COUNTERS_ROLE):
        assert not resources[role]["Properties"].get("ManagedPolicyArns")


def _cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    """cfn-lint as `make checks` runs it (its console script), in this interpreter."""
    script = "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; main()"
    return subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cfn_lint_is_clean() -> None:
    proc = _cfn_lint(TEMPLATE_PATH)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (0, "", "")


def test_cfn_lint_is_clean_after_translation(translated: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "translated.json"
    path.write_text(json.dumps(translated), encoding="utf-8")
    proc = _cfn_lint(path)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (0, "", "")


# --- packaging: requirements and samconfig -------------------------------------------------------


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_lambda_requirements_match_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    expected = {_normalise(dep) for dep in pyproject["project"]["dependencies"]}
    lines = (ROOT / "functions" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pinned = {_normalise(line) for line in lines if line.strip() and not line.lstrip().startswith("#")}
    assert pinned == expected


def test_samconfig_matches_template(template: dict[str, Any]) -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    assert config["default"]["global"]["parameters"]["stack_name"] == "reditus-refunds"
    for env in config.values():
        if not isinstance(env, dict) or "deploy" not in env:
            continue
        deploy = env["deploy"]["parameters"]
        # Roles get generated names, so CAPABILITY_IAM is enough.
        assert deploy["capabilities"] == "CAPABILITY_IAM"
        for override in re.findall(r"(\w+)=", deploy.get("parameter_overrides", "")):
            assert override in template["Parameters"], f"samconfig overrides unknown parameter {override}"
    named_roles = [
        name
        for name, res in resources_of(template, "AWS::IAM::Role").items()
        if "RoleName" in res["Properties"]
    ]
    assert not named_roles
