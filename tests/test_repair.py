"""The operator's recount of the day counters (functions/reditus_refunds/repair.py) and its CLI
command, `reditus-refunds counters recount`.

The hourly repair is gone: the counters are kept from the table's stream (tests/test_counter_stream.py);
the recount is what an operator runs after the migration or after a stream outage longer than the
stream's 24 hours. Against moto resources made from template.yaml (the by_day index keys only).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from reditus_local.resources import TemplateModel, create_resources
from reditus_operators.cli import main
from reditus_refunds import repair as repair_module
from reditus_refunds.aws_errors import StoreError
from reditus_refunds.day_counts import PENDING_LIST_CAP, listed_pending, pending_listed
from reditus_refunds.layout import (
    COUNTER_PREFIX,
    GSI_BY_DAY,
    HASH_KEY,
    INDEX_PROJECTIONS,
    KEYS_ONLY,
    from_item,
    to_item,
)
from reditus_refunds.records import Outcome
from reditus_refunds.repair import MAX_DAYS, DayRecount, DayRecounter, recount_days

from .conftest import API_KEY

DAY = "2026-11-28"
NEXT = "2026-11-29"
OTHER = "2026-11-27"
SHARD_MARK = "applied#shardId-00000001700000000000-0123abcd"
OUTCOMES = {o.value for o in Outcome}


@dataclass
class Table:
    dynamodb: Any
    name: str

    def put(self, refund_id: str, day: str, outcome: str | None = None, **extra: Any) -> None:
        item = {HASH_KEY: refund_id, "queued_day": day, "queued_at": f"{day}T12:00:00.000Z", **extra}
        if outcome is not None:
            item["outcome"] = outcome
        self.dynamodb.put_item(TableName=self.name, Item=to_item(item))

    def counter(self, day: str) -> dict[str, Any]:
        found = self.dynamodb.get_item(TableName=self.name, Key={HASH_KEY: {"S": COUNTER_PREFIX + day}})
        return found.get("Item", {})

    def counts(self, day: str) -> dict[str, int]:
        return {k: int(v["N"]) for k, v in self.counter(day).items() if k in OUTCOMES and int(v["N"])}


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Table]:
    """The stack's table made from template.yaml in moto; the CLI finds it through the environment."""
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        local = create_resources(TemplateModel.load(), session.client, api_key=API_KEY)
        monkeypatch.setenv("HISTORY_TABLE_NAME", local.config.table_name)
        monkeypatch.setenv("REFUND_QUEUE_URL", local.config.queue_url)
        monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", local.config.dlq_url)
        monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "no-stack"))
        yield Table(session.client("dynamodb"), local.config.table_name)


def off_counters(table: Table) -> None:
    """Items of three days and counters that are off (as after the migration or a long outage),
    with the stream function's mark on one of them."""
    table.put("r1", DAY)  # pending: no outcome attribute
    table.put("r2", DAY, "pending")  # an older item's "pending"
    table.put("r3", DAY, "refunded")
    table.put("r4", DAY, "refunded")
    table.put("r5", DAY, "retrying")
    table.put("r6", NEXT, "not_found")
    table.put("r7", OTHER, "rejected")
    # Not refunds, though in the by_day index's key space: never counted.
    table.put("webhook#stripe#evt_1", DAY, "refunded")
    table.dynamodb.put_item(
        TableName=table.name,
        Item=to_item(
            {
                HASH_KEY: COUNTER_PREFIX + DAY,
                "counter_day": DAY,
                "pending": 7,
                "refunded": 1,
                "dead_lettered": 3,
                SHARD_MARK: "0" * 30 + "1234567890",
                # The list of pending refunds as a lost stream left it: one listed that has a
                # result by now, one pending not listed.
                "pending#r1": f"{DAY}T12:00:00.000Z",
                "pending#r5": f"{DAY}T12:00:00.000Z",
            }
        ),
    )
    table.dynamodb.put_item(
        TableName=table.name,
        Item=to_item({HASH_KEY: COUNTER_PREFIX + OTHER, "counter_day": OTHER, "failed": 9}),
    )


def test_the_by_day_index_holds_keys_only() -> None:
    """The recount reads the items by key: the index gives it their ids only (template.yaml agrees,
    tests/test_template.py)."""
    assert INDEX_PROJECTIONS[GSI_BY_DAY] == KEYS_ONLY


def test_the_recount_sets_each_days_counter_to_what_its_items_say(table: Table) -> None:
    off_counters(table)
    seen: list[DayRecount] = []
    done = recount_days(DayRecounter(table.name, table.dynamodb), [DAY, date(2026, 11, 29)], seen.append)
    assert done == seen and [r.day for r in done] == [DAY, NEXT]
    first, second = done
    assert first.counts == {"pending": 2, "refunded": 2, "retrying": 1}
    assert first.before == {"pending": 7, "refunded": 1, "dead_lettered": 3} and first.changed
    assert second.counts == {"not_found": 1} and second.before == {} and second.changed
    assert table.counts(DAY) == {"pending": 2, "refunded": 2, "retrying": 1}
    assert table.counts(NEXT) == {"not_found": 1}
    counter = table.counter(DAY)
    # Every outcome is set (0 where no item holds it); the stream function's mark is left alone.
    assert {k for k in counter if k in OUTCOMES} == OUTCOMES
    assert counter["dead_lettered"] == {"N": "0"}
    assert counter[SHARD_MARK] == {"S": "0" * 30 + "1234567890"} and counter["counter_day"] == {"S": DAY}
    # The list of pending refunds is rebuilt: all of them, so the Pending filter reads them by key.
    assert {k: v["S"] for k, v in counter.items() if k.startswith("pending#")} == {
        "pending#r1": f"{DAY}T12:00:00.000Z",
        "pending#r2": f"{DAY}T12:00:00.000Z",
    }
    assert first.pending == {"r1": f"{DAY}T12:00:00.000Z", "r2": f"{DAY}T12:00:00.000Z"}
    # A day not asked for is left as it was.
    assert table.counts(OTHER) == {"failed": 9}
    again = recount_days(DayRecounter(table.name, table.dynamodb), [DAY, NEXT])
    assert [r.changed for r in again] == [False, False]


def test_a_day_of_many_refunds_is_read_in_pages(table: Table) -> None:
    for n in range(230):  # more than two BatchGetItem calls of 100
        table.put(f"bulk-{n:03d}", DAY, "refunded" if n % 2 else None)
    recounter = DayRecounter(table.name, table.dynamodb)
    (result,) = recount_days(recounter, [DAY])
    assert result.counts == {"pending": 115, "refunded": 115}
    # More pending than a counter lists: it lists the newest PENDING_LIST_CAP, and says it is short.
    counter = from_item(table.counter(DAY))
    assert len(listed_pending(counter)) == PENDING_LIST_CAP and pending_listed(counter) is None
    assert recounter.table.reads.calls >= 4  # the query, three batch reads (and the counter)


def test_the_recount_is_bounded(table: Table) -> None:
    days = [date(2026, 1, 1) + timedelta(days=n) for n in range(MAX_DAYS + 1)]
    with pytest.raises(ValueError, match=f"at most {MAX_DAYS} days"):
        recount_days(DayRecounter(table.name, table.dynamodb), days)
    assert table.counts("2026-01-01") == {}


def test_a_missing_table_is_a_readable_store_error(table: Table) -> None:
    with pytest.raises(StoreError, match="no-such-table"):
        recount_days(DayRecounter("no-such-table", table.dynamodb), [DAY])


def test_the_module_has_no_lambda_handler_any_more() -> None:
    assert not hasattr(repair_module, "lambda_handler")


# ---- the CLI command --------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_counters_recount_sets_the_days_and_prints_what_it_set(
    table: Table, capsys: pytest.CaptureFixture[str]
) -> None:
    off_counters(table)
    code, out, err = run(capsys, "counters", "recount", "--since", OTHER, "--until", NEXT)
    assert code == 0, err
    assert out.splitlines() == [
        f"{OTHER}: rejected 1 (was: failed 9)",
        f"{DAY}: pending 2, refunded 2, retrying 1 (was: dead_lettered 3, pending 7, refunded 1)",
        f"{NEXT}: not_found 1 (was: nothing)",
    ]
    assert err == ["set the counters of 3 day(s); 3 had been off"]
    assert table.counts(OTHER) == {"rejected": 1}
    # One day by default; a day already right says so.
    code, out, err = run(capsys, "counters", "recount", "--since", DAY)
    assert (code, out, err) == (0, f"{DAY}: pending 2, refunded 2, retrying 1\n", [
        "set the counters of 1 day(s); 0 had been off"
    ])  # fmt: skip


def test_a_day_without_refunds_is_set_to_nothing(table: Table, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "counters", "recount", "--since", "2026-01-01")
    assert (code, out) == (0, "2026-01-01: no refunds\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "--since takes a UTC day as YYYY-MM-DD, got 'yesterday'"),
        (("--since", DAY, "--until", "2026-13-01"), "--until takes a UTC day as YYYY-MM-DD"),
        (("--since", NEXT, "--until", DAY), "--until is before --since"),
        (
            ("--since", "2026-01-01", "--until", "2026-02-01"),
            f"at most {MAX_DAYS} days at a time, asked for 32",
        ),
    ],
)
def test_bad_days_are_one_line_and_change_nothing(
    table: Table, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    off_counters(table)
    code, out, err = run(capsys, "counters", "recount", *args)
    assert (code, out) == (2, "")
    assert len(err) == 1 and err[0].startswith("reditus-refunds") and message in err[0], err
    assert table.counts(DAY) == {"pending": 7, "refunded": 1, "dead_lettered": 3}


def test_since_is_required(table: Table, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "counters", "recount")
    assert code == 2 and out == "" and len(err) == 1 and "--since" in err[0]


def test_a_missing_table_is_one_line(
    table: Table, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTORY_TABLE_NAME", "no-such-table")
    code, out, err = run(capsys, "counters", "recount", "--since", DAY)
    assert (code, out) == (1, "") and len(err) == 1
    assert re.search(r"the table 'no-such-table' does not exist", err[0]), err
