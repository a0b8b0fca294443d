"""Every AWS failure as this project's own error, with one readable message per cause.

The store, the producer, the dead-letter queue, the console and the CLI all map botocore's
exceptions here, so none of them imports botocore to cope and an operator reads the same
sentence wherever a failure shows up.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from .errors import AwsError, ConditionFailed, QueueError, StoreError

CONDITION_CODES = ("ConditionalCheckFailedException", "TransactionCanceledException")
NOT_FOUND_CODES = (
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NonExistentQueue",
)
THROTTLE_CODES = (
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
)
CREDENTIAL_HINT = "Set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or use a role that may."
NETWORK_HINT = (
    "Check the network and AWS_REGION; for the local stack, check that `make run` is still running "
    "(and AWS_ENDPOINT_URL, if you set it)."
)
PERMISSION_HINT = "Check the AWS permissions of these credentials."


def is_condition_failure(err: ClientError) -> bool:
    return str(err.response.get("Error", {}).get("Code", "")) in CONDITION_CODES


def aws_error(
    err: BaseException,
    kind: type[AwsError],
    *,
    service: str,
    resource: str,
    names_hint: str,
) -> AwsError:
    """The readable form of a botocore failure.

    `service` names the AWS service for people ("DynamoDB", "SQS"), `resource` what was used
    ("the table 'x'", "the queue 'y'"), `names_hint` where that name comes from.
    """
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = str(error.get("Message", ""))[:200]
        if code in NOT_FOUND_CODES:
            return kind(f"{resource} does not exist", code=code, hint=f"Check {names_hint}.")
        if "Expired" in code:
            return kind(
                "the AWS credentials have expired", code=code, hint="Refresh them (or sign in again)."
            )
        if code in ("UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException"):
            return kind("the AWS credentials are not valid", code=code, hint=CREDENTIAL_HINT)
        if code in ("AccessDenied", "AccessDeniedException") or "AccessDenied" in code:
            return kind(
                f"access to {resource} is denied for these credentials", code=code, hint=PERMISSION_HINT
            )
        if code in THROTTLE_CODES:
            return kind(f"{service} is throttling requests", code=code, hint="Try again in a moment.")
        return kind(f"{service} answered {code}: {message}", code=code, hint=PERMISSION_HINT)
    if isinstance(err, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return kind("no usable AWS credentials were found", code="NoCredentials", hint=CREDENTIAL_HINT)
    if isinstance(err, SSOError | TokenRetrievalError):
        return kind(
            "the AWS sign-in has expired", code="SSO", hint="Sign in again (for example `aws sso login`)."
        )
    if isinstance(err, ProfileNotFound):
        return kind(str(err), code="ProfileNotFound", hint="Check AWS_PROFILE against ~/.aws/config.")
    if isinstance(err, NoRegionError):
        return kind("no AWS region is set", code="NoRegion", hint="Set AWS_REGION to the stack's region.")
    if isinstance(
        err, EndpointConnectionError | BotoConnectionError | ReadTimeoutError | ConnectionClosedError
    ):
        endpoint = getattr(err, "kwargs", {}).get("endpoint_url")
        where = f" at {endpoint}" if endpoint else ""
        return kind(
            f"cannot reach {service}{where} ({type(err).__name__})", code="Unreachable", hint=NETWORK_HINT
        )
    if isinstance(err, BotoCoreError):
        return kind(
            f"the AWS SDK failed ({type(err).__name__})", code=type(err).__name__, hint=PERMISSION_HINT
        )
    return kind(f"{type(err).__name__}: {err}", code=type(err).__name__)


__all__ = [
    "AwsError",
    "BotoCoreError",
    "ClientError",
    "ConditionFailed",
    "QueueError",
    "StoreError",
    "aws_error",
    "is_condition_failure",
]
