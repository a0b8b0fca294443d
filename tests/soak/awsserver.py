"""The local stack's AWS server (reditus_refunds.local.awsserver) with moto's SQS clock made cheap.

    python -m tests.soak.awsserver --port 0 [awsserver options]

The product's server already takes two of moto's O(n) costs away (motoserver.py: item-level
rollback for TransactWriteItems, SendMessage without counting the queue). One remains that a soak,
with thousands of messages waiting, runs into: moto decides whether each message is visible or
delayed with a datetime round trip (``moto.core.utils.unix_time``) per message, and ReceiveMessage
builds the queue's attributes - counting every message that way - once per message it hands out
(``is_message_valid_based_on_retention_period`` reads MessageRetentionPeriod through
``get_queue_attributes``). With 2,000 messages waiting that is about 0.2 s per message received, and
the soak would measure moto. Here the clock is ``time.time()`` (what the round trip computes) and
each count is one pass with one reading of it. Behaviour is unchanged; everything else is the
product's own server.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import moto.sqs.models as sqs_models

_unix_time = sqs_models.unix_time
_unix_time_millis = sqs_models.unix_time_millis
_COUNTS = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_not_visible",
    "approximate_number_of_messages_delayed",
)
_counts = {name: getattr(sqs_models.Queue, name) for name in _COUNTS}


def unix_time(dt: Any = None) -> float:
    return time.time() if dt is None else float(_unix_time(dt))


def unix_time_millis(dt: Any = None) -> float:
    return time.time() * 1000.0 if dt is None else float(_unix_time_millis(dt))


def _visible(queue: Any) -> int:
    now = time.time() * 1000.0
    return sum(1 for m in queue._messages if now > m.visible_at and not now < m.delayed_until)


def _not_visible(queue: Any) -> int:
    now = time.time() * 1000.0
    return sum(1 for m in queue._messages if not now > m.visible_at)


def _delayed(queue: Any) -> int:
    now = time.time() * 1000.0
    return sum(1 for m in queue._messages if now < m.delayed_until)


def install() -> None:
    sqs_models.unix_time = unix_time
    sqs_models.unix_time_millis = unix_time_millis
    for name, count in zip(_COUNTS, (_visible, _not_visible, _delayed), strict=True):
        setattr(sqs_models.Queue, name, property(count))


def uninstall() -> None:
    sqs_models.unix_time = _unix_time
    sqs_models.unix_time_millis = _unix_time_millis
    for name, value in _counts.items():
        setattr(sqs_models.Queue, name, value)


def main(argv: Sequence[str] | None = None) -> int:
    install()
    from reditus_refunds.local.awsserver import main as server_main

    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
