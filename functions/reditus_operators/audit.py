"""The audit log: who did what, when, to how many refunds; appended only, in the history table.

Layout (refund ids cannot contain '#', so none of these keys collides with a refund):
- `audit#<id>`: one record per action, written with a conditional put and nothing else (the
  writer has no update and no delete: an existing record cannot be changed). It carries the
  sparse index keys `audit_day`, `audit_who`, `audit_action` (+ `audit_at`), so listing by
  period, person or action is one Query each (by_audit_day / by_audit_who / by_audit_action,
  INCLUDE projections of what a list shows), never a Scan.
- `audit#<id>#<n>`: the rest of a large action's refund_ids, IDS_PER_ITEM per item (an item
  holds at most 400 KB; a 10,000-row upload needs ten of them).
- `audited#<refund_id>`: the ids of the audit records that touched a refund (a string set), so a
  refund's detail reads one item and then its records. A bulk upload's new refunds get theirs
  with batched puts (25 per call, no index to maintain): an extra 400 small writes for 10,000
  rows, against one per refund for the pending records already written.
"""

from __future__ import annotations

import builtins
import csv
import io
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from reditus_refunds.aws_errors import BotoCoreError, ClientError, ConditionFailed
from reditus_refunds.layout import HASH_KEY, to_item
from reditus_refunds.records import iso, utc_now
from reditus_refunds.table import HistoryTable

from .access import Action, Actor
from .paging import IndexQuery, page_days, page_key

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any

AUDIT_PREFIX = "audit#"
AUDITED_PREFIX = "audited#"
BY_AUDIT_DAY = "by_audit_day"
BY_AUDIT_WHO = "by_audit_who"
BY_AUDIT_ACTION = "by_audit_action"
AUDIT_INDEXES = {
    BY_AUDIT_DAY: ("audit_day", "audit_at"),
    BY_AUDIT_WHO: ("audit_who", "audit_at"),
    BY_AUDIT_ACTION: ("audit_action", "audit_at"),
}
# What the lists show, projected into each audit index (tests/test_template.py checks the template).
AUDIT_PROJECTED = (
    "audit_day",
    "audit_who",
    "audit_action",
    "who_name",
    "channel",
    "role",
    "count",
    "result",
    "reason",
    "details",
    "refund_ids",
    "parts",
)
IDS_PER_ITEM = 1000
DONE = "done"
REFUSED = "refused"
STOPPED = "stopped"  # stopped part way (an AWS failure, an interruption): what it did is recorded
MAX_PERIOD_DAYS = 366
CSV_COLUMNS = (
    "at",
    "who",
    "who_name",
    "channel",
    "role",
    "action",
    "result",
    "count",
    "refund_ids",
    "reason",
)


class AuditError(RuntimeError):
    """An audit record could not be written (the action it describes is not done either)."""


@dataclass(frozen=True)
class AuditEntry:
    audit_id: str
    at: str
    who: str
    action: str
    count: int
    refund_ids: list[str]
    result: str = DONE
    who_name: str | None = None
    channel: str | None = None
    role: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    parts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "who": self.who,
            "who_name": self.who_name,
            "channel": self.channel,
            "role": self.role,
            "action": self.action,
            "result": self.result,
            "count": self.count,
            "refund_ids": self.refund_ids,
            "reason": self.reason,
            "details": self.details,
            "audit_id": self.audit_id,
        }


def entry_from_item(data: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        audit_id=str(data[HASH_KEY])[len(AUDIT_PREFIX) :],
        at=str(data.get("audit_at", "")),
        who=str(data.get("audit_who", "")),
        action=str(data.get("audit_action", "")),
        count=int(data.get("count", 0)),
        refund_ids=[str(r) for r in data.get("refund_ids", [])],
        result=str(data.get("result", DONE)),
        who_name=data.get("who_name"),
        channel=data.get("channel"),
        role=data.get("role"),
        reason=data.get("reason"),
        details=dict(data.get("details") or {}),
        parts=int(data.get("parts", 0)),
    )


class AuditWriter:
    """Appends records. Its only write to a record is a put conditioned on the key being new."""

    def __init__(self, table_name: str, client: DynamoDBClient, clock: Callable[[], datetime] = utc_now):
        self.table = HistoryTable(table_name, client)
        self.clock = clock

    def record(
        self,
        actor: Actor,
        action: Action | str,
        *,
        refund_ids: Sequence[str] = (),
        count: int | None = None,
        result: str = DONE,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        new_refunds: bool = False,
    ) -> AuditEntry:
        """Append one record; `new_refunds`: the refund ids were created by this action (bulk)."""
        at = iso(self.clock())
        audit_id = f"{at[:19].replace('-', '').replace(':', '')}-{uuid.uuid4().hex[:16]}"
        ids = list(dict.fromkeys(refund_ids))
        chunks = [ids[i : i + IDS_PER_ITEM] for i in range(0, len(ids), IDS_PER_ITEM)] or [[]]
        entry = AuditEntry(
            audit_id=audit_id,
            at=at,
            who=actor.identity,
            action=str(action),
            count=len(ids) if count is None else count,
            refund_ids=chunks[0],
            result=result,
            who_name=actor.name,
            channel=actor.channel,
            role=actor.role.value,
            reason=reason,
            details=dict(details or {}),
            parts=len(chunks) - 1,
        )
        for n, chunk in enumerate(chunks[1:], start=1):
            self.append(to_item({HASH_KEY: f"{AUDIT_PREFIX}{audit_id}#{n}", "refund_ids": chunk}))
        self.append(
            to_item(
                {
                    HASH_KEY: AUDIT_PREFIX + audit_id,
                    "audit_at": at,
                    "audit_day": at[:10],
                    "audit_who": entry.who,
                    "audit_action": entry.action,
                    "who_name": entry.who_name,
                    "channel": entry.channel,
                    "role": entry.role,
                    "count": entry.count,
                    "result": result,
                    "reason": reason,
                    "details": entry.details or None,
                    "refund_ids": entry.refund_ids or None,
                    "parts": entry.parts or None,
                }
            )
        )
        self._link(ids, audit_id, new_refunds)
        return entry

    def append(self, item: dict[str, Any]) -> None:
        """A put that only creates: an existing audit item is never replaced."""
        try:
            self.table.client.put_item(
                TableName=self.table.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(#key)",
                ExpressionAttributeNames={"#key": HASH_KEY},
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise ConditionFailed(
                    f"{item[HASH_KEY]['S']} exists: the audit log is append-only", code="ConditionFailed"
                ) from None
            raise self.table.error(err) from None
        except BotoCoreError as err:
            raise self.table.error(err) from None

    def _link(self, refund_ids: Sequence[str], audit_id: str, new_refunds: bool) -> None:
        """The refunds' pointers to this record (the index of a refund's actions, not the record)."""
        client, table = self.table.client, self.table.table_name
        try:
            if new_refunds:
                for start in range(0, len(refund_ids), 25):
                    request: dict[str, Any] = {
                        table: [
                            {
                                "PutRequest": {
                                    "Item": to_item({HASH_KEY: AUDITED_PREFIX + r, "audit_ids": {audit_id}})
                                }
                            }
                            for r in refund_ids[start : start + 25]
                        ]
                    }
                    for _ in range(8):
                        request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
                        if not request:
                            break
                return
            for refund_id in refund_ids:
                client.update_item(
                    TableName=table,
                    Key={HASH_KEY: {"S": AUDITED_PREFIX + refund_id}},
                    UpdateExpression="ADD audit_ids :id",
                    ExpressionAttributeValues={":id": {"SS": [audit_id]}},
                )
        except (ClientError, BotoCoreError) as err:
            raise self.table.error(err) from None


@dataclass
class AuditPage:
    entries: list[AuditEntry]
    cursor: str | None


class AuditReader:
    def __init__(self, table_name: str, client: DynamoDBClient, clock: Callable[[], datetime] = utc_now):
        self.table = HistoryTable(table_name, client)
        self.clock = clock

    def list(
        self,
        *,
        who: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> AuditPage:
        """Newest first, one page: a Query on the person's or the action's index, else day by day."""
        until = until or self.clock()
        since = since or until - timedelta(days=30)
        if until < since:
            raise ValueError("the period ends before it starts")
        low, high = iso(since), iso(until)
        if not who and not action:
            if (until - since).days >= MAX_PERIOD_DAYS:
                raise ValueError(f"a period without --who or --action is at most {MAX_PERIOD_DAYS} days")
            key_name, time_name = AUDIT_INDEXES[BY_AUDIT_DAY]
            by_day = IndexQuery(self.table, BY_AUDIT_DAY, key_name, time_name, low, high)
            paged = page_days(by_day, entry_from_item, limit=limit, cursor=cursor)
            return AuditPage(paged.items, paged.cursor)
        index, key_value = (BY_AUDIT_WHO, who) if who else (BY_AUDIT_ACTION, action)
        assert key_value is not None
        key_name, time_name = AUDIT_INDEXES[index]
        # The person's index, narrowed to one action when both are asked.
        narrowed = bool(who and action)
        query = IndexQuery(
            self.table,
            index,
            key_name,
            time_name,
            low,
            high,
            filter_expression="audit_action = :action" if narrowed else None,
            filter_values={":action": action} if narrowed else {},
        )
        paged = page_key(query, key_value, entry_from_item, limit=limit, cursor=cursor)
        return AuditPage(paged.items, paged.cursor)

    def all_refund_ids(self, entry: AuditEntry) -> builtins.list[str]:
        """Every refund id of a record (the first IDS_PER_ITEM are on it, the rest in its parts)."""
        if not entry.parts:
            return entry.refund_ids
        keys = [{HASH_KEY: {"S": f"{AUDIT_PREFIX}{entry.audit_id}#{n}"}} for n in range(1, entry.parts + 1)]
        found = self.table.batch_get(keys, consistent=True)
        ids = list(entry.refund_ids)
        for n in range(1, entry.parts + 1):
            item = found.get(f"{AUDIT_PREFIX}{entry.audit_id}#{n}")
            ids += [str(r) for r in item.get("refund_ids", [])] if item else []
        return ids

    def for_refund(self, refund_id: str) -> builtins.list[AuditEntry]:
        """The actions that touched a refund, oldest first: one item, then its records."""
        pointer = self.table.get_item(AUDITED_PREFIX + refund_id, consistent=False)
        if not pointer:
            return []
        audit_ids = sorted(str(a) for a in pointer.get("audit_ids", set()))
        keys = [{HASH_KEY: {"S": AUDIT_PREFIX + a}} for a in audit_ids]
        found = self.table.batch_get(keys)
        entries = [entry_from_item(item) for item in found.values()]
        return sorted(entries, key=lambda e: e.at)


def audit_csv(entries: Iterable[AuditEntry]) -> bytes:
    """Spreadsheet-safe CSV of audit entries (refund ids joined with spaces)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for entry in entries:
        row = entry.to_json()
        row["refund_ids"] = " ".join(entry.refund_ids)
        writer.writerow({k: _safe(row.get(k)) for k in CSV_COLUMNS})
    return buffer.getvalue().encode("utf-8")


def _safe(value: object) -> object:
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value
