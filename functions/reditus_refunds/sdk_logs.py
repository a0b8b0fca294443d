"""Keeps the AWS SDK's DEBUG lines, which hold secrets, out of every log.

botocore logs at DEBUG each request's parameters and each response's body: a Secrets Manager
answer is the Reditus API key or a webhook signing secret in clear. Its loggers write nothing of
their own level and inherit the root logger's, and Lambda sets the root logger to the function's
application log level when its log settings name one (an operator turning on DEBUG to chase a
problem). `pin_sdk_logs` sets them to INFO, so their DEBUG lines are never made, whatever the
root's level; warnings and errors still pass. Each handler module calls it at import.
"""

from __future__ import annotations

import logging

SDK_LOGGERS = ("botocore", "boto3")


def pin_sdk_logs() -> None:
    """Never below INFO for the SDK's loggers (a higher level someone set is kept)."""
    for name in SDK_LOGGERS:
        sdk = logging.getLogger(name)
        if sdk.level < logging.INFO:  # NOTSET (inherit) or DEBUG
            sdk.setLevel(logging.INFO)


__all__ = ["SDK_LOGGERS", "pin_sdk_logs"]
