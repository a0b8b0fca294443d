"""template.yaml's webhook receiver (issue 13), checked against the receiver's code.

Same approach as tests/test_template.py (whose helpers this uses): the template as written, as
SAM translates it, and the IAM actions derived from the code the function runs
(tests/iam_derivation.py, shared with the submitter's checks).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reditus_refunds import layout
from reditus_webhooks import PROVIDERS, events
from reditus_webhooks.credentials import parse_secret, secret_variable
from reditus_webhooks.decide import (
    CHARGEBEE_PASSWORD,
    CHARGEBEE_USERNAME,
    POLICY_VARIABLE,
    SECRET_VARIABLES,
    IdMapping,
    PartialPolicy,
    ProviderSettings,
    SettingsError,
    derive_refund_id,
    mapping_variable,
)

from .iam_derivation import calls_on, dynamodb_actions, entered, functions, grants, parse
from .template_support import sam_translate
from .test_template import (
    FUNCTION,
    RECEIVER,
    RECEIVER_ROLE,
    ROOT,
    env_vars,
    function_props,
    number_default,
    parameter,
    resources_of,
    role_statements,
)

# Resource and parameter names per provider (the path segment is the provider's name).
CLASS = {
    "stripe": "Stripe",
    "paddle": "Paddle",
    "chargebee": "Chargebee",
    "lemonsqueezy": "LemonSqueezy",
    "polar": "Polar",
}


def secret_arn(provider: str) -> dict[str, Any]:
    cls = CLASS[provider]
    return {
        "Fn::If": [
            f"Create{cls}WebhookSecret",
            {"Ref": f"{cls}WebhookSecret"},
            {"Ref": f"Existing{cls}WebhookSecretArn"},
        ]
    }


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    from reditus_local.template import load_template

    return load_template(ROOT / "template.yaml")


def test_every_provider_is_covered() -> None:
    assert set(CLASS) == set(PROVIDERS)


# --- what the receiver calls on DynamoDB, read from its code -----------------------------------


def dynamodb_actions_the_receiver_calls() -> set[str]:
    """The IAM actions behind every DynamoDB call the receiver can make, from its source.

    The receiver (reditus_webhooks/app.py) uses its EventStore as `self.events.<m>(` and its
    RefundProducer as `self.producer.<m>(`; the producer uses its HistoryWriter as
    `self.store.<m>(`. Both stores reach the table's methods (`self.table.<m>(`), which call the
    client (`self.client.<op>(`); a transaction counts as the kinds of item the reached code builds.
    """
    app = parse("reditus_webhooks/app.py")
    store = functions(parse("reditus_webhooks/events.py"))
    producer = functions(parse("reditus_refunds/producer.py"))
    writer = functions(parse("reditus_refunds/history_writer.py"))

    in_store = entered(store, calls_on(app, "self.events"), "EventStore")
    in_producer = entered(producer, calls_on(app, "self.producer"), "RefundProducer")
    writer_entries = set().union(*(calls_on(producer[name], "self.store") for name in in_producer))
    in_writer = entered(writer, writer_entries, "HistoryWriter")
    return dynamodb_actions([(store, in_store), (writer, in_writer)])


def test_the_derived_dynamodb_actions_are_the_receivers_calls() -> None:
    derived = dynamodb_actions_the_receiver_calls()
    # Conditional puts (events, pending refunds), updates (decisions, reviews, counts), reads by key
    # (an event; a refund and its review together).
    assert derived == {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"}


# --- the function -----------------------------------------------------------------------------


def test_receiver_handler_imports_from_code_uri(template: dict[str, Any]) -> None:
    """The Handler resolves to a callable in CodeUri, imported as Lambda would (offline, moto)."""
    fn = function_props(template, RECEIVER)
    code_dir = (ROOT / fn["CodeUri"]).resolve()
    module_name, _, attribute = fn["Handler"].rpartition(".")
    assert module_name == "reditus_webhooks.handler"
    static_env = {k: v for k, v in env_vars(template, RECEIVER).items() if isinstance(v, str)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "REDITUS_", "POWERTOOLS_"))}
    env.update(static_env)
    env.update(
        {
            "PYTHONPATH": str(code_dir),
            "AWS_DEFAULT_REGION": "us-east-1",
            "HISTORY_TABLE_NAME": "reditus-refunds-history",
            "REFUND_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/reditus-refunds",
            # What the template's parameters give by default.
            **{mapping_variable(p): "default" for p in PROVIDERS},
            POLICY_VARIABLE: "review",
            **{
                secret_variable(p): f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{p}"
                for p in PROVIDERS
            },
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
    assert result["callable"]
    assert Path(result["file"]).resolve().is_relative_to(code_dir)


def test_receiver_runtime_limits_and_url(template: dict[str, Any]) -> None:
    fn = function_props(template, RECEIVER)
    submitter = function_props(template, FUNCTION)
    for key in ("Runtime", "Architectures", "Tracing", "KmsKeyArn", "CodeUri"):
        assert fn[key] == submitter[key], key
    assert template["Resources"][RECEIVER]["Metadata"]["BuildMethod"] == "makefile"
    # Providers wait a few seconds; the receiver answers within one.
    assert fn["Timeout"] == 5
    assert number_default(template, fn["MemorySize"]) == 256
    assert fn["ReservedConcurrentExecutions"] == {
        "Fn::If": [
            "HasWebhookReservedConcurrency",
            {"Ref": "WebhookReservedConcurrency"},
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert number_default(template, {"Ref": "WebhookReservedConcurrency"}) >= 1
    # Public by necessity: the providers' signatures are the authentication.
    assert fn["FunctionUrlConfig"] == {"AuthType": "NONE"}
    assert "Events" not in fn and "Policies" not in fn
    assert fn["Role"] == {"Fn::GetAtt": [RECEIVER_ROLE, "Arn"]}
    assert fn["LoggingConfig"] == {"LogGroup": {"Ref": "WebhookReceiverLogGroup"}}
    skips = {s["id"] for s in template["Resources"][RECEIVER]["Metadata"]["checkov"]["skip"]}
    assert "CKV_AWS_258" in skips


def test_receiver_environment_is_what_its_code_reads(template: dict[str, Any]) -> None:
    variables = env_vars(template, RECEIVER)
    expected = {
        "HISTORY_TABLE_NAME": {"Ref": "HistoryTable"},
        "REFUND_QUEUE_URL": {"Ref": "RefundQueue"},
        POLICY_VARIABLE: {"Ref": "WebhookPartialRefunds"},
        **{secret_variable(p): secret_arn(p) for p in PROVIDERS},
        **{mapping_variable(p): {"Ref": f"Webhook{CLASS[p]}PaymentId"} for p in PROVIDERS},
    }
    assert {k: v for k, v in variables.items() if not k.startswith("POWERTOOLS_")} == expected
    # In AWS the credentials live in Secrets Manager only, never in the environment.
    plain = {*SECRET_VARIABLES.values(), CHARGEBEE_USERNAME, CHARGEBEE_PASSWORD}
    text = (ROOT / "template.yaml").read_text(encoding="utf-8")
    assert not [name for name in plain if name in text]
    assert variables["POWERTOOLS_SERVICE_NAME"] == "reditus-webhooks"


@pytest.mark.parametrize(
    "value",
    [
        *("review", "reject", "threshold:50", "threshold:100", "threshold:0.5", "threshold:99.99"),
        *("threshold:1", "", "Review", "threshold:0", "threshold:101", "threshold:", "threshold:50%"),
        *("threshold:-1", "always", "threshold:100.5", "threshold:0.0", "reject "),
    ],
)
def test_partial_refunds_parameter_accepts_what_the_receiver_accepts(
    template: dict[str, Any], value: str
) -> None:
    param = parameter(template, {"Ref": "WebhookPartialRefunds"})
    assert str(PartialPolicy.parse(param["Default"])) == "review"
    allowed = re.fullmatch(param["AllowedPattern"], value) is not None
    try:
        PartialPolicy.parse(value)
        parses = value == value.strip().lower() and value != "" and not value.endswith("%")
    except SettingsError:
        parses = False
    # The template is stricter than the code about spelling (lower case, no %, not empty): it
    # never lets through what the receiver would refuse at start.
    assert allowed == parses, (value, allowed, parses)


@pytest.mark.parametrize(
    "value",
    [
        *("default", "id:payment_intent", "metadata:order_ref", "metadata:" + "k" * 100),
        *("", "metadata:", "id: x", "charge", "metadata:" + "k" * 101, "nope:x"),
    ],
)
def test_payment_id_parameters_accept_what_the_receiver_accepts(template: dict[str, Any], value: str) -> None:
    for provider in PROVIDERS:
        param = parameter(template, {"Ref": f"Webhook{CLASS[provider]}PaymentId"})
        assert str(IdMapping.parse(param["Default"])) == "default"
        allowed = re.fullmatch(param["AllowedPattern"], value) is not None
        try:
            parses = IdMapping.parse(value) is not None and value != "" and value == value.strip()
            parses = parses and " " not in value.partition(":")[2][:1]
        except SettingsError:
            parses = False
        assert allowed == parses, (provider, value)


# --- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_has_its_own_secret_created_empty(template: dict[str, Any], provider: str) -> None:
    cls = CLASS[provider]
    assert template["Conditions"][f"Create{cls}WebhookSecret"] == {
        "Fn::Equals": [{"Ref": f"Existing{cls}WebhookSecretArn"}, ""]
    }
    existing = parameter(template, {"Ref": f"Existing{cls}WebhookSecretArn"})
    reditus = parameter(template, {"Ref": "ExistingApiKeySecretArn"})
    assert (existing["Default"], existing["AllowedPattern"]) == ("", reditus["AllowedPattern"])
    secret = template["Resources"][f"{cls}WebhookSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Condition"] == f"Create{cls}WebhookSecret"
    p = secret["Properties"]
    assert p["KmsKeyId"] == {"Ref": "EncryptionKey"}
    assert "put-secret-value" in p["Description"]
    # Empty means "not configured": the receiver refuses the provider until a secret is put in.
    empty = json.loads(p["SecretString"])
    assert all(value == "" for value in empty.values())
    assert not parse_secret(provider, p["SecretString"], ProviderSettings(provider)).configured
    # Every use of the secret goes through the same Fn::If.
    text = json.dumps(template)
    assert text.count(json.dumps({"Ref": f"{cls}WebhookSecret"})) == text.count(
        json.dumps(secret_arn(provider))
    )
    assert template["Outputs"][f"{cls}WebhookSecretArn"]["Value"] == secret_arn(provider)


# --- the role -----------------------------------------------------------------------------------


def test_receiver_permissions_are_least_privilege(template: dict[str, Any]) -> None:
    by_service, resources = grants(role_statements(template, RECEIVER_ROLE))
    assert set(by_service) == {"sqs", "dynamodb", "secretsmanager", "kms", "logs", "xray"}
    assert by_service["sqs"] == {"SendMessage"}
    assert resources["sqs"] == [{"Fn::GetAtt": ["RefundQueue", "Arn"]}]
    assert {f"dynamodb:{a}" for a in by_service["dynamodb"]} == dynamodb_actions_the_receiver_calls()
    # Keys only: no index is ever read.
    assert resources["dynamodb"] == [{"Fn::GetAtt": ["HistoryTable", "Arn"]}]
    assert by_service["secretsmanager"] == {"GetSecretValue"}
    assert resources["secretsmanager"] == [secret_arn(p) for p in PROVIDERS]
    assert by_service["kms"] == {"Decrypt", "GenerateDataKey"}
    assert resources["kms"] == [{"Fn::GetAtt": ["EncryptionKey", "Arn"]}]
    assert by_service["logs"] == {"CreateLogStream", "PutLogEvents"}
    assert resources["logs"] == [{"Fn::GetAtt": ["WebhookReceiverLogGroup", "Arn"]}]


def test_receiver_writes_only_its_own_keys(template: dict[str, Any]) -> None:
    """The DynamoDB statement is limited to the key prefixes the receiver's code writes and reads."""
    (statement,) = [
        s for s in role_statements(template, RECEIVER_ROLE) if s["Sid"] == "HistoryTableOwnRecords"
    ]
    prefixes = statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
    refund_prefix = derive_refund_id("stripe", "ch_1").removesuffix("stripe:ch_1")
    assert derive_refund_id("polar", "x" * 300).startswith(refund_prefix)
    assert sorted(prefixes) == sorted(
        f"{prefix}*"
        for prefix in (
            events.EVENT_PREFIX,
            events.REVIEW_PREFIX,
            events.COUNT_PREFIX,
            events.SOURCE_PREFIX,
            refund_prefix,
        )
    )
    # Never the refunds' payment markers (the submitter's leases) nor anything unprefixed.
    assert not any(p.startswith(layout.PAYMENT_MARKER_PREFIX) for p in prefixes)


# --- outputs and translation --------------------------------------------------------------------


def test_receiver_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    url = {"Fn::GetAtt": ["WebhookReceiverFunctionUrl", "FunctionUrl"]}
    assert outputs["WebhookFunctionUrl"]["Value"] == url
    assert outputs["WebhookFunctionName"]["Value"] == {"Ref": RECEIVER}
    # REDITUS_WEBHOOK_URL: the Function URL without its trailing slash.
    assert outputs["WebhookUrl"]["Value"] == {
        "Fn::Join": ["", ["https://", {"Fn::Select": [2, {"Fn::Split": ["/", url]}]}]]
    }
    for provider in PROVIDERS:
        # A Function URL ends with "/": the provider's path follows it directly.
        assert outputs[f"{CLASS[provider]}WebhookUrl"]["Value"] == {
            "Fn::Sub": "${WebhookReceiverFunctionUrl.FunctionUrl}" + provider
        }


@pytest.fixture(scope="module")
def translated(template: dict[str, Any]) -> dict[str, Any]:
    return sam_translate(template)


def test_sam_gives_the_receiver_a_public_url_and_nothing_else(translated: dict[str, Any]) -> None:
    resources = translated["Resources"]
    assert resources[RECEIVER]["Type"] == "AWS::Lambda::Function"
    assert resources[RECEIVER]["Properties"]["Handler"] == "reditus_webhooks.handler.lambda_handler"
    (url,) = resources_of(translated, "AWS::Lambda::Url").values()
    assert url["Properties"] == {"AuthType": "NONE", "TargetFunctionArn": {"Ref": RECEIVER}}
    assert "WebhookReceiverFunctionUrl" in resources
    permissions = [p["Properties"] for p in resources_of(translated, "AWS::Lambda::Permission").values()]
    public = [p for p in permissions if p["Principal"] == "*"]
    assert public and all(p["FunctionName"] == {"Ref": RECEIVER} for p in public)
    # No other permission: the other functions are invoked by their event source mappings.
    assert [p for p in permissions if p["Principal"] != "*"] == []
    # The URL reaches the receiver only; the submitter stays invoked by its queue alone, and the
    # counter function by the table's stream.
    mappings = resources_of(translated, "AWS::Lambda::EventSourceMapping").values()
    by_function = {m["Properties"]["FunctionName"]["Ref"]: m["Properties"] for m in mappings}
    assert set(by_function) == {FUNCTION, "CounterStreamFunction"}
    assert "Fn::GetAtt" in by_function[FUNCTION]["EventSourceArn"]
    assert by_function["CounterStreamFunction"]["EventSourceArn"] == {
        "Fn::GetAtt": ["HistoryTable", "StreamArn"]
    }
