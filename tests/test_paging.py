"""Proposed tests/test_paging.py (not added: not in this task's files). The day walk and its cursor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

os.environ.update({"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"})

import boto3
import pytest
from moto import mock_aws

from reditus_local.resources import create_table_as_declared
from reditus_operators.audit import AuditReader
from reditus_operators.history import HistoryReader
from reditus_operators.paging import encode_cursor
from reditus_operators.webhooks import WebhookReader
from reditus_refunds.layout import HASH_KEY, to_item
from reditus_refunds.records import iso

NOW = datetime(2025, 3, 20, 12, tzinfo=UTC)


@pytest.fixture
def client() -> Iterator[Any]:
    with mock_aws():
        c = boto3.client("dynamodb")
        create_table_as_declared(c, "h")
        yield c


def readers(client: Any) -> dict[str, Any]:
    return {
        "history": HistoryReader("h", client, clock=lambda: NOW).query,
        "webhooks": WebhookReader("h", client, clock=lambda: NOW).events,
        "audit": AuditReader("h", client, clock=lambda: NOW).list,
    }


@pytest.mark.parametrize("reader", ["history", "webhooks", "audit"])
@pytest.mark.parametrize(
    "state",
    [
        {"day": 5},
        {"day": "x"},
        {"day": "2025-3-1"},
        {"day": "9999-12-31", "lek": None},
        {"day": "2025-03-19", "lek": "x"},
        {"lek": {"refund_id": "x"}},
    ],
)
def test_a_forged_cursor_is_refused_with_a_clear_error(client: Any, reader: str, state: dict) -> None:
    with pytest.raises(ValueError, match="the page cursor is not valid"):
        readers(client)[reader](cursor=encode_cursor(state))


def test_pages_walk_days_backwards_and_count_what_they_read(client: Any) -> None:
    for n in range(12):
        at = NOW - timedelta(hours=9 * n)
        client.put_item(
            TableName="h",
            Item=to_item(
                {
                    HASH_KEY: f"r{n:02d}",
                    "queued_at": iso(at),
                    "queued_day": iso(at)[:10],
                    "outcome": "pending",
                }
            ),
        )
    reader = HistoryReader("h", client, clock=lambda: NOW)
    seen, cursor, pages = [], None, 0
    while True:
        page = reader.query(limit=5, cursor=cursor, since=NOW - timedelta(days=10))
        assert page.items_read >= len(page.records)
        seen += [r.refund_id for r in page.records]
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == [f"r{n:02d}" for n in range(12)]
    assert pages == 3
