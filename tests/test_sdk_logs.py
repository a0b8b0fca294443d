"""botocore's DEBUG lines never reach a log (reditus_refunds.sdk_logs): they hold every request's
parameters and every response's body, a Secrets Manager answer being the Reditus key in clear.

The Lambda rig runs the real handler with the root logger at DEBUG (what Lambda sets when the
function's log settings ask for DEBUG) and every record of every logger captured. The control runs
the same with botocore's loggers left to inherit, and finds the key: the capture can see a leak.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from reditus_refunds.sdk_logs import SDK_LOGGERS, pin_sdk_logs

from .conftest import API_KEY
from .lambda_rig import Lambda


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


@pytest.fixture
def root_at_debug() -> Iterator[Capture]:
    root = logging.getLogger()
    capture = Capture()
    levels = {name: logging.getLogger(name).level for name in ("", *SDK_LOGGERS)}
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def refund_reading_the_key(lam: Lambda, refund_id: str) -> None:
    """One refund through the handler; each test's rig is new, so its first call reads the secret."""
    _, failures = lam.run({"payment_id": f"pay_{refund_id}", "refund_id": refund_id})
    assert not failures


def test_the_handler_keeps_botocore_above_debug(lam: Lambda, root_at_debug: Capture) -> None:
    assert all(logging.getLogger(name).level == logging.INFO for name in SDK_LOGGERS)  # set at import
    refund_reading_the_key(lam, "sdk-logs-1")
    assert root_at_debug.lines  # the capture saw the run
    assert not [line for line in root_at_debug.lines if API_KEY in line]


def test_the_capture_finds_the_key_when_botocore_inherits_debug(lam: Lambda, root_at_debug: Capture) -> None:
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    refund_reading_the_key(lam, "sdk-logs-2")
    assert [line for line in root_at_debug.lines if API_KEY in line and line.startswith("botocore")]
    pin_sdk_logs()
    assert all(logging.getLogger(name).level == logging.INFO for name in SDK_LOGGERS)


def test_a_level_someone_raised_is_kept() -> None:
    sdk = logging.getLogger("botocore")
    before = sdk.level
    try:
        sdk.setLevel(logging.ERROR)
        pin_sdk_logs()
        assert sdk.level == logging.ERROR
    finally:
        sdk.setLevel(before)


@pytest.mark.parametrize("module", ["reditus_refunds.counter_stream", "reditus_webhooks.handler"])
def test_the_other_functions_pin_the_sdk_logs_at_import(module: str) -> None:
    """In a fresh interpreter, as Lambda imports the handler (the receiver reads its signing
    secrets through botocore too)."""
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "HISTORY_TABLE_NAME": "t",
        "REFUND_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
    }
    code = f"import logging, {module}; print([logging.getLogger(n).level for n in {SDK_LOGGERS!r}])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([logging.INFO] * len(SDK_LOGGERS))
