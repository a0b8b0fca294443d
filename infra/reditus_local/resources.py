"""Create the local stack's AWS resources in a moto server from template.yaml's own definitions.

Nothing here lists queues, tables or their settings by hand: the queues (with their redrive
policy), the history table (keys and indexes), the API key secret, the function's environment and
its SQS event source (batch size, batching window) and timeout are all read from the template,
with ``!Ref`` to parameters resolved to their defaults (or to ``--parameter`` overrides).

What moto needs no copy of is left out: KMS keys and encryption settings, tags, point-in-time
recovery, deletion protection, IAM, logs and alarms. A secret is created through the Secrets
Manager API with the value the stack gives it (the webhook receiver's local signing secrets), else
the template's own SecretString, else the API key (the template's generated placeholder is for
AWS only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from reditus_operators.config import SystemConfig

from .template import load_template

LOCAL_STACK_NAME = "reditus-refunds-local"
LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account
# The repository root (the package is installed editable from functions/).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"

QUEUE = "AWS::SQS::Queue"
TABLE = "AWS::DynamoDB::Table"
SECRET = "AWS::SecretsManager::Secret"  # noqa: S105 - a resource type
SAM_FUNCTION = "AWS::Serverless::Function"

# CloudFormation queue properties that are SQS attributes moto honours (encryption is left out).
QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
)
INDEX_KEYS = ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput")
# The outputs the console and CLI read from a deployed stack (config.STACK_OUTPUTS) and their
# SystemConfig fields.
OUTPUT_FIELDS = {
    "HistoryTableName": "table_name",
    "RefundQueueUrl": "queue_url",
    "DeadLetterQueueUrl": "dlq_url",
}


def moto_session(region: str = LOCAL_REGION) -> boto3.session.Session:
    """moto accepts any credentials; fake ones keep boto3 from looking for (or using) real ones."""
    return boto3.session.Session(
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106
    )


class ResourceError(RuntimeError):
    """The template cannot be turned into local resources, or moto refused one (the text says which)."""


class Unresolvable(Exception):
    """A value refers to something the local stack does not (or not yet) have."""

    def __init__(self, what: str, pending: bool = False):
        super().__init__(what)
        self.what = what
        self.pending = pending  # a resource that will exist once it is created


_NO_VALUE = object()  # AWS::NoValue: the property or list entry disappears


def _text(value: Any) -> str:
    """CloudFormation's view of a scalar: numbers and booleans as their template spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class TemplateModel:
    """A parsed template with parameter values, conditions and the physical ids created so far."""

    template: dict[str, Any]
    parameters: dict[str, Any]
    stack_name: str = LOCAL_STACK_NAME
    region: str = LOCAL_REGION
    account_id: str = LOCAL_ACCOUNT_ID
    refs: dict[str, Any] = field(default_factory=dict)  # logical id -> what !Ref gives
    attributes: dict[tuple[str, str], Any] = field(default_factory=dict)  # (logical id, attr) -> value

    @classmethod
    def load(
        cls, path: str | Path = DEFAULT_TEMPLATE, overrides: Mapping[str, Any] | None = None
    ) -> TemplateModel:
        try:
            template = load_template(path)
        except OSError as err:
            raise ResourceError(f"cannot read the template {path}: {err.strerror}") from None
        declared = template.get("Parameters") or {}
        unknown = sorted(set(overrides or {}) - set(declared))
        if unknown:
            raise ResourceError(
                f"the template has no parameter {', '.join(unknown)}; it has {', '.join(sorted(declared))}"
            )
        parameters = {name: spec.get("Default") for name, spec in declared.items()}
        parameters.update(overrides or {})
        return cls(template, parameters)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        resources: dict[str, dict[str, Any]] = self.template.get("Resources") or {}
        return resources

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {
            name: spec
            for name, spec in self.resources.items()
            if spec.get("Type") == kind and self.condition_holds(spec.get("Condition"))
        }

    def physical_name(self, logical_id: str) -> str:
        return f"{self.stack_name}-{logical_id}"

    # ---- intrinsic functions ------------------------------------------------------------------
    def condition_holds(self, name: str | None) -> bool:
        if name is None:
            return True
        conditions = self.template.get("Conditions") or {}
        if name not in conditions:
            raise ResourceError(f"the template uses the undefined condition {name!r}")
        return self._truth(conditions[name])

    def _truth(self, expression: Any) -> bool:
        if isinstance(expression, bool):
            return expression
        if isinstance(expression, dict) and len(expression) == 1:
            ((fn, args),) = expression.items()
            if fn == "Condition":
                return self.condition_holds(args)
            if fn == "Fn::Equals":
                left, right = (self.resolve(a) for a in args)
                return _text(left) == _text(right)
            if fn == "Fn::Not":
                return not self._truth(args[0])
            if fn == "Fn::And":
                return all(self._truth(a) for a in args)
            if fn == "Fn::Or":
                return any(self._truth(a) for a in args)
        raise ResourceError(f"cannot evaluate the condition {expression!r}")

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::StackName": self.stack_name,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": (
                f"arn:aws:cloudformation:{self.region}:{self.account_id}:stack/{self.stack_name}/local"
            ),
            "AWS::NotificationARNs": [],
            "AWS::NoValue": _NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        spec = self.resources.get(name)
        if spec is None:
            raise ResourceError(f"the template refers to {name!r}, which it does not define")
        return self._missing(name, spec)

    def _missing(self, name: str, spec: dict[str, Any], attribute: str | None = None) -> Any:
        kind = spec.get("Type", "")
        pending = kind in (QUEUE, TABLE, SECRET) and self.condition_holds(spec.get("Condition"))
        what = f"{name}.{attribute}" if attribute else name
        raise Unresolvable(what, pending=pending)

    def _get_att(self, args: Any) -> Any:
        if isinstance(args, str):
            args = args.split(".", 1)
        name, attribute = args[0], self.resolve(args[1])
        if (name, attribute) in self.attributes:
            return self.attributes[(name, attribute)]
        spec = self.resources.get(name)
        if spec is None:
            raise ResourceError(f"the template refers to {name}.{attribute}, but defines no {name}")
        return self._missing(name, spec, attribute)

    def _sub(self, args: Any) -> str:
        text, variables = (args, {}) if isinstance(args, str) else (args[0], args[1])

        def replace(match: re.Match[str]) -> str:
            token = match.group(1)
            if token.startswith("!"):
                return "${" + token[1:] + "}"
            if token in variables:
                return _text(self.resolve(variables[token]))
            if "." in token and not token.startswith("AWS::"):
                return _text(self._get_att(token.split(".", 1)))
            return _text(self._ref(token))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def _find_in_map(self, args: list[Any]) -> Any:
        mapping, first, second = (_text(self.resolve(a)) for a in args)
        try:
            return self.resolve((self.template.get("Mappings") or {})[mapping][first][second])
        except (KeyError, TypeError):
            raise ResourceError(
                f"the template's mapping {mapping} has no value for {first!r}, {second!r}"
                " (a parameter outside its AllowedValues?)"
            ) from None

    def resolve(self, value: Any) -> Any:
        """The value with every intrinsic function evaluated; raises Unresolvable."""
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, args),) = value.items()
            handlers: dict[str, Callable[[Any], Any]] = {
                "Ref": self._ref,
                "Fn::GetAtt": self._get_att,
                "Fn::Sub": self._sub,
                "Fn::If": lambda a: self.resolve(a[1] if self.condition_holds(a[0]) else a[2]),
                "Fn::Join": lambda a: _text(a[0]).join(_text(v) for v in self.resolve(a[1])),
                "Fn::Select": lambda a: self.resolve(a[1])[int(self.resolve(a[0]))],
                "Fn::FindInMap": self._find_in_map,
                "Fn::Split": lambda a: _text(self.resolve(a[1])).split(a[0]),
                "Fn::ToJsonString": lambda a: json.dumps(self.resolve(a), separators=(",", ":")),
            }
            if key in handlers:
                return handlers[key](args)
            if key.startswith("Fn::"):
                raise Unresolvable(key)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}


# ---- the function and its event source -------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSettings:
    """The SQS-triggered function as the template defines it (what the local worker emulates)."""

    logical_id: str
    function_name: str
    handler: str  # module.attribute, e.g. reditus_refunds.handler.lambda_handler
    timeout_seconds: int
    memory_mb: int
    queue_logical_id: str
    batch_size: int
    batching_window_seconds: int
    report_batch_item_failures: bool
    environment: dict[str, str] = field(default_factory=dict)
    # Variables left out because they name something the local stack does not create.
    skipped_environment: tuple[str, ...] = ()


def _sqs_event(spec: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for event in (spec.get("Properties", {}).get("Events") or {}).values():
        if event.get("Type") == "SQS":
            queue = event.get("Properties", {}).get("Queue")
            if isinstance(queue, dict) and "Fn::GetAtt" in queue:
                target = queue["Fn::GetAtt"]
                logical = target.split(".", 1)[0] if isinstance(target, str) else target[0]
                return logical, event["Properties"]
    return None


@dataclass(frozen=True)
class UrlFunctionSettings:
    """A function behind a Function URL (the webhook receiver), as the template defines it."""

    logical_id: str
    function_name: str
    handler: str
    timeout_seconds: int
    memory_mb: int
    environment: dict[str, str] = field(default_factory=dict)
    skipped_environment: tuple[str, ...] = ()


def _environment(model: TemplateModel, spec: dict[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    """A function's variables (Globals merged in), with what does not resolve (yet) left out."""
    globals_ = (model.template.get("Globals") or {}).get("Function") or {}
    variables: dict[str, Any] = {
        **((globals_.get("Environment") or {}).get("Variables") or {}),
        **(((spec.get("Properties") or {}).get("Environment") or {}).get("Variables") or {}),
    }
    environment: dict[str, str] = {}
    skipped: list[str] = []
    for key, raw in variables.items():
        try:
            value = model.resolve(raw)
        except Unresolvable:
            skipped.append(key)
            continue
        if value is not _NO_VALUE:
            environment[key] = _text(value)
    return environment, tuple(skipped)


def url_function_settings(model: TemplateModel) -> UrlFunctionSettings | None:
    """The function with a FunctionUrlConfig, or None when the template has none."""
    found = [
        (name, spec)
        for name, spec in model.of_type(SAM_FUNCTION).items()
        if (spec.get("Properties") or {}).get("FunctionUrlConfig")
    ]
    if not found:
        return None
    if len(found) > 1:
        raise ResourceError(f"expected at most one function with a Function URL, found {len(found)}")
    name, spec = found[0]
    globals_ = (model.template.get("Globals") or {}).get("Function") or {}
    props = spec.get("Properties") or {}

    def prop(key: str, default: Any) -> Any:
        return model.resolve(props.get(key, globals_.get(key, default)))

    environment, skipped = _environment(model, spec)
    return UrlFunctionSettings(
        logical_id=name,
        function_name=model.physical_name(name),
        handler=str(prop("Handler", "")),
        timeout_seconds=int(prop("Timeout", 3)),
        memory_mb=int(prop("MemorySize", 128)),
        environment=environment,
        skipped_environment=skipped,
    )


def referenced_resource(model: TemplateModel, value: Any) -> str | None:
    """The logical id a value refers to with !Ref (through Fn::If), or None (a parameter, a literal)."""
    while isinstance(value, dict) and set(value) == {"Fn::If"}:
        condition, when_true, when_false = value["Fn::If"]
        value = when_true if model.condition_holds(condition) else when_false
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in model.resources:
        return str(value["Ref"])
    return None


def function_variable_resources(model: TemplateModel, logical_id: str) -> dict[str, str]:
    """A function's variables that name one of the template's resources: variable -> logical id."""
    spec = model.resources[logical_id]
    variables = ((spec.get("Properties") or {}).get("Environment") or {}).get("Variables") or {}
    found = {name: referenced_resource(model, raw) for name, raw in variables.items()}
    return {name: logical for name, logical in found.items() if logical is not None}


def function_settings(model: TemplateModel) -> FunctionSettings:
    """The function with an SQS event source; its environment resolves what exists so far."""
    found = [(name, spec) for name, spec in model.of_type(SAM_FUNCTION).items() if _sqs_event(spec)]
    if len(found) != 1:
        raise ResourceError(
            f"expected one {SAM_FUNCTION} with an SQS event in the template, found {len(found)}"
        )
    name, spec = found[0]
    queue_logical, event = _sqs_event(spec)  # type: ignore[misc]
    globals_ = (model.template.get("Globals") or {}).get("Function") or {}
    props = spec.get("Properties") or {}

    def prop(key: str, default: Any) -> Any:
        return model.resolve(props.get(key, globals_.get(key, default)))

    environment, skipped = _environment(model, spec)
    response_types = model.resolve(event.get("FunctionResponseTypes") or [])
    batch_size = int(model.resolve(event.get("BatchSize", 10)))
    return FunctionSettings(
        logical_id=name,
        function_name=model.physical_name(name),
        handler=str(prop("Handler", "")),
        # Lambda's defaults when the template sets none: 3 s, 128 MB, no batching window.
        timeout_seconds=int(prop("Timeout", 3)),
        memory_mb=int(prop("MemorySize", 128)),
        queue_logical_id=queue_logical,
        batch_size=batch_size,
        batching_window_seconds=int(model.resolve(event.get("MaximumBatchingWindowInSeconds", 0))),
        report_batch_item_failures="ReportBatchItemFailures" in response_types,
        environment=environment,
        skipped_environment=skipped,
    )


@dataclass(frozen=True)
class StreamFunctionSettings:
    """The function a DynamoDB stream triggers (the day counters), as the template defines it."""

    logical_id: str
    function_name: str
    handler: str
    timeout_seconds: int
    memory_mb: int
    table_logical_id: str
    batch_size: int
    batching_window_seconds: int
    tumbling_window_seconds: int
    starting_position: str
    environment: dict[str, str] = field(default_factory=dict)


def _stream_event(spec: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for event in (spec.get("Properties", {}).get("Events") or {}).values():
        if event.get("Type") == "DynamoDB":
            stream = event.get("Properties", {}).get("Stream")
            if isinstance(stream, dict) and "Fn::GetAtt" in stream:
                target = stream["Fn::GetAtt"]
                logical = target.split(".", 1)[0] if isinstance(target, str) else target[0]
                return logical, event["Properties"]
    return None


def stream_function_settings(model: TemplateModel) -> StreamFunctionSettings | None:
    """The function with a DynamoDB stream event source, or None when the template has none."""
    found = [(name, spec) for name, spec in model.of_type(SAM_FUNCTION).items() if _stream_event(spec)]
    if not found:
        return None
    if len(found) > 1:
        raise ResourceError(f"expected at most one function with a DynamoDB event, found {len(found)}")
    name, spec = found[0]
    table_logical, event = _stream_event(spec)  # type: ignore[misc]
    globals_ = (model.template.get("Globals") or {}).get("Function") or {}
    props = spec.get("Properties") or {}

    def prop(key: str, default: Any) -> Any:
        return model.resolve(props.get(key, globals_.get(key, default)))

    environment, _ = _environment(model, spec)
    return StreamFunctionSettings(
        logical_id=name,
        function_name=model.physical_name(name),
        handler=str(prop("Handler", "")),
        timeout_seconds=int(prop("Timeout", 3)),
        memory_mb=int(prop("MemorySize", 128)),
        table_logical_id=table_logical,
        # Lambda's defaults for a DynamoDB stream when the template sets none.
        batch_size=int(model.resolve(event.get("BatchSize", 100))),
        batching_window_seconds=int(model.resolve(event.get("MaximumBatchingWindowInSeconds", 0))),
        tumbling_window_seconds=int(model.resolve(event.get("TumblingWindowInSeconds", 0))),
        starting_position=str(model.resolve(event.get("StartingPosition", "TRIM_HORIZON"))),
        environment=environment,
    )


# ---- creating the resources ------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSystem:
    """What `local up` created: where it is, and how the worker must behave."""

    config: SystemConfig
    function: FunctionSettings
    visibility_timeout: int  # of the function's queue
    max_receive_count: int | None  # of the function's queue's redrive policy
    secret_arn: str | None  # the SQS function's (the Reditus API key)
    physical_ids: dict[str, str]  # logical id -> queue URL, table name or secret ARN
    receiver: UrlFunctionSettings | None = None  # the webhook receiver, when the template has one


def _queue_attributes(model: TemplateModel, props: dict[str, Any]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for key in QUEUE_ATTRIBUTES:
        if key not in props:
            continue
        value = model.resolve(props[key])
        if value is _NO_VALUE:
            continue
        if isinstance(value, dict):
            # SQS wants the policy as JSON text with the count as a number.
            if "maxReceiveCount" in value:
                value = {**value, "maxReceiveCount": int(value["maxReceiveCount"])}
            attributes[key] = json.dumps(value, separators=(",", ":"))
        else:
            attributes[key] = _text(value)
    return attributes


def _create_queue(sqs: Any, model: TemplateModel, logical: str, props: dict[str, Any]) -> None:
    attributes = _queue_attributes(model, props)
    name = _text(model.resolve(props.get("QueueName") or model.physical_name(logical)))
    if attributes.get("FifoQueue") == "true" and not name.endswith(".fifo"):
        name += ".fifo"
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as err:
        if "QueueAlreadyExists" not in err.response.get("Error", {}).get("Code", ""):
            raise
        # Left over in a moto that outlived a stack: bring its attributes in line.
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    model.refs[logical] = url
    model.attributes.update({(logical, "Arn"): arn, (logical, "QueueName"): name, (logical, "QueueUrl"): url})


def _create_table(dynamodb: Any, model: TemplateModel, logical: str, props: dict[str, Any]) -> None:
    name = _text(model.resolve(props.get("TableName") or model.physical_name(logical)))
    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": model.resolve(props["KeySchema"]),
        "AttributeDefinitions": model.resolve(props["AttributeDefinitions"]),
        "BillingMode": model.resolve(props.get("BillingMode", "PROVISIONED")),
    }
    if "ProvisionedThroughput" in props:
        request["ProvisionedThroughput"] = model.resolve(props["ProvisionedThroughput"])
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if key in props:
            request[key] = [
                {k: v for k, v in index.items() if k in INDEX_KEYS} for index in model.resolve(props[key])
            ]
    stream = model.resolve(props.get("StreamSpecification") or {})
    if stream.get("StreamViewType"):
        # CloudFormation's StreamSpecification names the view only; the API also wants it enabled.
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    try:
        description = dynamodb.create_table(**request)["TableDescription"]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
        description = dynamodb.describe_table(TableName=name)["Table"]
        if "StreamSpecification" in request and not description.get("LatestStreamArn"):
            # Left over in a moto that outlived a stack, from before the table had a stream.
            description = dynamodb.update_table(
                TableName=name, StreamSpecification=request["StreamSpecification"]
            )["TableDescription"]
    ttl = props.get("TimeToLiveSpecification")
    if ttl:
        dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=model.resolve(ttl))
    model.refs[logical] = name
    model.attributes[(logical, "Arn")] = description["TableArn"]
    if description.get("LatestStreamArn"):
        model.attributes[(logical, "StreamArn")] = description["LatestStreamArn"]


def create_table_as_declared(
    dynamodb: Any, name: str, logical: str = "HistoryTable", template: str | Path = DEFAULT_TEMPLATE
) -> None:
    """Create the template's table `logical` under another name (tests and benchmarks)."""
    model = TemplateModel.load(template)
    props = dict(model.of_type(TABLE)[logical]["Properties"])
    props["TableName"] = name
    _create_table(dynamodb, model, logical, props)


def _create_secret(
    secrets: Any, model: TemplateModel, logical: str, props: dict[str, Any], value: str | None
) -> None:
    if value is None:
        value = _text(model.resolve(props["SecretString"]))
    name = _text(model.resolve(props.get("Name") or model.physical_name(logical)))
    try:
        arn = secrets.create_secret(Name=name, SecretString=value)["ARN"]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "ResourceExistsException":
            raise
        arn = secrets.put_secret_value(SecretId=name, SecretString=value)["ARN"]
    model.refs[logical] = arn
    model.attributes[(logical, "Id")] = arn


def create_resources(
    model: TemplateModel,
    clients: Callable[[str], Any],
    *,
    api_key: str,
    visibility_timeout: int | None = None,
    secret_values: Mapping[str, str] | None = None,
) -> LocalSystem:
    """Create the template's queues, tables and secrets; `clients(service)` gives boto3 clients.

    A secret's value is `secret_values[logical id]` if given, else the template's SecretString
    (the webhook secrets' "not configured"), else `api_key`. `visibility_timeout` overrides the
    function queue's (tests only: the template's is minutes long).
    """
    function = function_settings(model)
    values = dict(secret_values or {})

    def secret_value(logical: str, props: dict[str, Any]) -> str | None:
        if logical in values:
            return values[logical]
        return None if "SecretString" in props else api_key

    creators: dict[str, Callable[[str, dict[str, Any]], None]] = {
        QUEUE: lambda logical, props: _create_queue(clients("sqs"), model, logical, props),
        TABLE: lambda logical, props: _create_table(clients("dynamodb"), model, logical, props),
        SECRET: lambda logical, props: _create_secret(
            clients("secretsmanager"), model, logical, props, secret_value(logical, props)
        ),
    }
    todo = {
        logical: spec
        for kind in creators
        for logical, spec in model.of_type(kind).items()
        if logical not in model.refs
    }
    # A queue's redrive policy names its dead-letter queue: create what resolves, then the rest.
    while todo:
        progress = False
        blocked: dict[str, str] = {}
        for logical, spec in list(todo.items()):
            props = dict(spec.get("Properties") or {})
            if logical == function.queue_logical_id and visibility_timeout is not None:
                props["VisibilityTimeout"] = visibility_timeout
            try:
                creators[spec["Type"]](logical, props)
            except Unresolvable as err:
                if not err.pending:
                    raise ResourceError(
                        f"{logical} needs {err.what}, which the local stack cannot create"
                    ) from None
                blocked[logical] = err.what
                continue
            except (ClientError, BotoCoreError) as err:
                raise ResourceError(f"moto refused to create {logical}: {err}") from None
            del todo[logical]
            progress = True
        if not progress:
            waits = ", ".join(f"{name} waits for {what}" for name, what in blocked.items())
            raise ResourceError(f"circular references in the template: {waits}")

    function = function_settings(model)  # again, now that its environment's references exist
    outputs: dict[str, str] = {}
    for key, spec in (model.template.get("Outputs") or {}).items():
        if key not in OUTPUT_FIELDS:
            continue
        try:
            outputs[OUTPUT_FIELDS[key]] = _text(model.resolve(spec["Value"]))
        except Unresolvable as err:
            raise ResourceError(f"the output {key} needs {err.what}") from None
    missing = sorted(set(OUTPUT_FIELDS.values()) - set(outputs))
    if missing:
        raise ResourceError(f"the template lacks the outputs for {', '.join(missing)}")

    queue_props = model.resources[function.queue_logical_id].get("Properties") or {}
    attributes = _queue_attributes(model, queue_props)
    redrive = json.loads(attributes["RedrivePolicy"]) if "RedrivePolicy" in attributes else None
    # The SQS function's secret (the API key): the one its environment names.
    named = set(function_variable_resources(model, function.logical_id).values())
    secrets = [model.refs[name] for name in model.of_type(SECRET) if name in model.refs and name in named]
    physical = {name: _text(model.refs[name]) for name in model.resources if name in model.refs}
    return LocalSystem(
        config=SystemConfig(
            table_name=outputs["table_name"],
            queue_url=outputs["queue_url"],
            dlq_url=outputs["dlq_url"],
            region=model.region,
            endpoint_url=None,  # filled in by the caller, which knows the server
            origin="local stack",
            local=True,
        ),
        function=function,
        visibility_timeout=(
            visibility_timeout
            if visibility_timeout is not None
            else int(attributes.get("VisibilityTimeout", 30))  # SQS's default
        ),
        max_receive_count=None if redrive is None else int(redrive["maxReceiveCount"]),
        secret_arn=secrets[0] if len(secrets) == 1 else None,
        physical_ids=physical,
        receiver=url_function_settings(model),
    )


def parse_parameter(text: str) -> tuple[str, str]:
    """`Name=Value`, as in `sam deploy --parameter-overrides`."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected Name=Value, got {text!r}")
    return name.strip(), value.strip()
