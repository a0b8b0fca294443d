"""Where the console and the CLI find the system: a deployed stack, explicit settings, or the local stack.

Resolution order: `--stack-name` (CloudFormation outputs) > environment variables >
the running local stack's state file (written by `reditus-refunds local up`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from reditus_refunds.aws_errors import AwsError, BotoCoreError, ClientError, aws_error

DEFAULT_DATA_DIR = Path(".local-data")
STATE_FILE_NAME = "stack.json"
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=20)

# CloudFormation outputs (template.yaml) the console and CLI need.
STACK_OUTPUTS = ("HistoryTableName", "RefundQueueUrl", "DeadLetterQueueUrl")
# The webhook receiver's base URL (each provider's path is appended): an output of stacks that
# deploy the receiver, the local stack's state, or REDITUS_WEBHOOK_URL (which wins).
WEBHOOK_URL_OUTPUT = "WebhookUrl"
WEBHOOK_URL_ENV = "REDITUS_WEBHOOK_URL"


class ConfigError(RuntimeError):
    """The system could not be located; the text says what to set."""


@dataclass(frozen=True)
class SystemConfig:
    table_name: str
    queue_url: str
    dlq_url: str
    region: str
    endpoint_url: str | None = None  # moto server for the local stack; None for AWS
    origin: str = "environment"  # "stack NAME", "environment" or "local stack"
    local: bool = False
    webhook_url: str | None = None  # the webhook receiver's base URL, when known

    def client(self, service: str) -> Any:
        if self.local:
            # moto takes any credentials; a newcomer's machine may have none at all.
            session = boto3.session.Session(
                region_name=self.region,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",  # noqa: S106
            )
        else:
            session = boto3.session.Session(region_name=self.region)
        return session.client(service, endpoint_url=self.endpoint_url, config=CLIENT_CONFIG)  # type: ignore[call-overload]

    def export_lines(self) -> list[str]:
        lines = [f"export AWS_REGION={self.region}", f"export AWS_DEFAULT_REGION={self.region}"]
        if self.endpoint_url:
            lines += [
                f"export AWS_ENDPOINT_URL={self.endpoint_url}",
                "export AWS_ACCESS_KEY_ID=testing",
                "export AWS_SECRET_ACCESS_KEY=testing",
            ]
        lines += [
            f"export HISTORY_TABLE_NAME={self.table_name}",
            f"export REFUND_QUEUE_URL={self.queue_url}",
            f"export DEAD_LETTER_QUEUE_URL={self.dlq_url}",
        ]
        return lines


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("REDITUS_LOCAL_DATA_DIR") or DEFAULT_DATA_DIR)


def write_local_state(config: SystemConfig, directory: Path, extra: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE_NAME
    # It holds the local webhook signing secrets: readable by its owner only, from the first byte
    # (created 0600 and written through that descriptor, never widened by the umask).
    text = json.dumps({**asdict(config), **(extra or {})}, indent=2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode on O_CREAT: narrow it too
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def read_local_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE_NAME
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return None
    return data


def from_local_state(state: Mapping[str, Any]) -> SystemConfig:
    """The system a running local stack recorded in its state file."""
    return SystemConfig(
        table_name=state["table_name"],
        queue_url=state["queue_url"],
        dlq_url=state["dlq_url"],
        region=state.get("region", "us-east-1"),
        endpoint_url=state.get("endpoint_url"),
        origin="local stack",
        local=True,
        webhook_url=state.get("webhook_url") or None,
    )


def pid_alive(pid: int) -> bool:
    """Whether a process runs (one of another user's counts: signalling it is what is refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def from_stack(stack_name: str, region: str | None = None, endpoint_url: str | None = None) -> SystemConfig:
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    try:
        session = boto3.session.Session(region_name=region)
        cfn = session.client("cloudformation", endpoint_url=endpoint_url, config=CLIENT_CONFIG)
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except (ClientError, BotoCoreError) as err:
        if isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") == "ValidationError":
            # CloudFormation's answer for a stack that does not exist (its message says so).
            message = str(err.response["Error"].get("Message", ""))[:200]
            raise ConfigError(f"stack {stack_name!r} not found in {region}: {message}") from None
        mapped = aws_error(
            err,
            AwsError,
            service="CloudFormation",
            resource=f"the stack {stack_name!r}",
            names_hint="the stack name and AWS_REGION",
        )
        raise ConfigError(
            f"stack {stack_name!r} could not be read in {region}: {mapped}. {mapped.hint}"
        ) from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    missing = [name for name in STACK_OUTPUTS if name not in outputs]
    if missing:
        raise ConfigError(
            f"stack {stack_name!r} lacks the outputs {', '.join(missing)}; is it a reditus-refunds stack?"
        )
    return SystemConfig(
        table_name=outputs["HistoryTableName"],
        queue_url=outputs["RefundQueueUrl"],
        dlq_url=outputs["DeadLetterQueueUrl"],
        region=region,
        endpoint_url=endpoint_url,
        origin=f"stack {stack_name}",
        webhook_url=outputs.get(WEBHOOK_URL_OUTPUT) or None,
    )


def resolve(stack_name: str | None = None, env: Mapping[str, str] | None = None) -> SystemConfig:
    env = os.environ if env is None else env
    endpoint = env.get("AWS_ENDPOINT_URL") or None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    if stack_name:
        return from_stack(stack_name, region, endpoint)
    table, queue = env.get("HISTORY_TABLE_NAME"), env.get("REFUND_QUEUE_URL")
    if table and queue:
        return SystemConfig(
            table_name=table,
            queue_url=queue,
            dlq_url=env.get("DEAD_LETTER_QUEUE_URL", ""),
            region=region,
            endpoint_url=endpoint,
            origin="environment",
            webhook_url=env.get(WEBHOOK_URL_ENV) or None,
        )
    state = read_local_state(data_dir(env))
    if state:
        return from_local_state(state)
    raise ConfigError(
        "no system to talk to: start the local stack with `make run`, pass --stack-name NAME for a deployed "
        "stack, or set HISTORY_TABLE_NAME and REFUND_QUEUE_URL"
    )


def webhook_url(config: SystemConfig | None, env: Mapping[str, str] | None = None) -> str | None:
    """The webhook receiver's base URL: REDITUS_WEBHOOK_URL, else what the system says, else None."""
    env = os.environ if env is None else env
    given = env.get(WEBHOOK_URL_ENV, "").strip()
    if given:
        return given.rstrip("/")
    return config.webhook_url.rstrip("/") if config and config.webhook_url else None


def local_webhook_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the running local stack exports for its receiver (URL, signing secrets), or {}.

    For the console and `webhooks send-sample` when the environment does not have them (the
    local stack's console is started with the system's variables only, never the secrets).
    """
    state = read_local_state(data_dir(env)) or {}
    found = state.get("webhook_env")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
