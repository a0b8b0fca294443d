"""The project's own errors for AWS failures, free of botocore.

The domain catches these without loading the AWS SDK; `aws_errors.aws_error` turns botocore's
exceptions into them, with one readable message per cause.
"""

from __future__ import annotations


class AwsError(RuntimeError):
    """An AWS call failed. str() is one sentence for people; `hint` says what to check."""

    def __init__(self, message: str, *, code: str = "", hint: str = ""):
        super().__init__(message)
        self.code = code
        self.hint = hint


class StoreError(AwsError):
    """The history table could not be read or written."""


class ConditionFailed(StoreError):
    """A conditional write lost a race; re-read and decide again."""


class QueueError(AwsError):
    """A queue could not be reached or refused the messages."""
