"""The calls both halves of the history make on DynamoDB, with every failure mapped.

`HistoryWriter` (what the Lambda and the producers write) and the operators' `HistoryReader`
each hold one of these; neither lets a botocore exception out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .aws_errors import ConditionFailed, StoreError, aws_error, is_condition_failure
from .layout import HASH_KEY, from_item, item_key

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any

BATCH_GET_LIMIT = 100  # BatchGetItem's keys per call
BATCH_GET_ROUNDS = 8  # unprocessed-key rounds before giving up
BATCH_WRITE_LIMIT = 25  # BatchWriteItem's requests per call
# Pauses before each retry of a batch write's unprocessed items (DynamoDB throttled them): short,
# and bounded, so a table that keeps throttling is a StoreError within about 1.5 s.
BATCH_WRITE_BACKOFF_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


class BatchWriteFailed(StoreError):
    """A batch write stopped part way. `unwritten`: the hash keys surely not written (the others
    may have been: a call that failed may have taken effect)."""

    def __init__(self, message: str, *, code: str = "", hint: str = "", unwritten: frozenset[str]):
        super().__init__(message, code=code, hint=hint)
        self.unwritten = unwritten


@dataclass
class ReadCounter:
    """Items read and calls made: the speed tests and the benchmark count reads with it."""

    items: int = 0
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, items: int) -> None:
        with self._lock:
            self.items += items
            self.calls += 1


def _hash_key(item: dict[str, Any]) -> str:
    return str(item[HASH_KEY]["S"])


class HistoryTable:
    def __init__(self, table_name: str, client: DynamoDBClient):
        self.table_name = table_name
        self.client = client
        self.reads = ReadCounter()

    def error(self, err: BaseException) -> StoreError:
        mapped = aws_error(
            err,
            StoreError,
            service="DynamoDB",
            resource=f"the table {self.table_name!r}",
            names_hint="HISTORY_TABLE_NAME or the stack name",
        )
        assert isinstance(mapped, StoreError)
        return mapped

    def get_item(self, refund_id: str, consistent: bool = True) -> dict[str, Any] | None:
        try:
            response = self.client.get_item(
                TableName=self.table_name, Key=item_key(refund_id), ConsistentRead=consistent
            )
        except (ClientError, BotoCoreError) as err:
            raise self.error(err) from None
        item = response.get("Item")
        self.reads.add(1 if item else 0)
        return from_item(item) if item else None

    def batch_get(
        self, keys: list[dict[str, Any]], consistent: bool = False, projection: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Items by their hash key, any number of keys (100 per call); `projection` limits the
        attributes read (a ProjectionExpression; it must include the hash key)."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            found.update(self._batch_get_chunk(keys[start : start + BATCH_GET_LIMIT], consistent, projection))
        return found

    def _batch_get_chunk(
        self, keys: list[dict[str, Any]], consistent: bool, projection: str | None
    ) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": consistent}}
        if projection is not None:
            request[self.table_name]["ProjectionExpression"] = projection
        for _ in range(BATCH_GET_ROUNDS):
            try:
                response = self.client.batch_get_item(RequestItems=request)
            except (ClientError, BotoCoreError) as err:
                raise self.error(err) from None
            items = response.get("Responses", {}).get(self.table_name, [])
            self.reads.add(len(items))
            for raw in items:
                item = from_item(raw)
                found[str(item[HASH_KEY])] = item
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return found
        raise StoreError("DynamoDB kept returning unprocessed keys; try again", code="UnprocessedKeys")

    def transact(self, actions: list[dict[str, Any]]) -> None:
        try:
            self.client.transact_write_items(TransactItems=actions)  # type: ignore[arg-type]
        except ClientError as err:
            if is_condition_failure(err):
                raise ConditionFailed(
                    str(err.response.get("Error", {}).get("Message", "condition failed")),
                    code="ConditionFailed",
                ) from None
            raise self.error(err) from None
        except BotoCoreError as err:
            raise self.error(err) from None

    # The client's methods are called by name here (not passed around): the template tests derive
    # each function's IAM actions from these calls (tests/iam_derivation.py).
    def update(self, kwargs: dict[str, Any]) -> None:
        self._write(lambda: self.client.update_item(**kwargs))

    def put(self, kwargs: dict[str, Any]) -> None:
        self._write(lambda: self.client.put_item(**kwargs))

    def delete(self, kwargs: dict[str, Any]) -> None:
        self._write(lambda: self.client.delete_item(**kwargs))

    def batch_put(self, items: Sequence[dict[str, Any]], writers: int = 1) -> None:
        """Unconditional Puts of `items` (DynamoDB's form), 25 per BatchWriteItem call, up to
        `writers` calls at once; unprocessed items are sent again after a short pause, a few times
        at most. Keys must be distinct. Raises BatchWriteFailed (the first failure) saying which
        items surely were not written, once every call has ended."""
        chunks = [
            items[start : start + BATCH_WRITE_LIMIT] for start in range(0, len(items), BATCH_WRITE_LIMIT)
        ]
        if writers > 1 and len(chunks) > 1:
            from concurrent.futures import ThreadPoolExecutor  # not on the Lambda's import path

            with ThreadPoolExecutor(max_workers=min(writers, len(chunks))) as pool:
                results = list(pool.map(self._batch_put_chunk, chunks))
        else:
            results = [self._batch_put_chunk(chunk) for chunk in chunks]
        failures = [failed for failed in results if failed]
        if failures:
            first = failures[0]
            raise BatchWriteFailed(
                str(first),
                code=first.code,
                hint=first.hint,
                unwritten=frozenset().union(*(failed.unwritten for failed in failures)),
            )

    def _batch_put_chunk(self, chunk: Sequence[dict[str, Any]]) -> BatchWriteFailed | None:
        """One BatchWriteItem of up to 25 Puts and its retries; the failure returned, not raised."""
        request: dict[str, Any] = {self.table_name: [{"PutRequest": {"Item": item}} for item in chunk]}
        for pause in (*BATCH_WRITE_BACKOFF_S, None):
            try:
                response = self.client.batch_write_item(RequestItems=request)
            except (ClientError, BotoCoreError) as err:
                # The call may have taken effect: none of its items is surely unwritten.
                mapped = self.error(err)
                return BatchWriteFailed(
                    str(mapped), code=mapped.code, hint=mapped.hint, unwritten=frozenset()
                )
            request = dict(response.get("UnprocessedItems") or {})
            unwritten = {_hash_key(r["PutRequest"]["Item"]) for r in request.get(self.table_name, [])}
            if not unwritten:
                return None
            if pause is None:
                return BatchWriteFailed(
                    "DynamoDB kept returning unprocessed items (throttled); try again",
                    code="UnprocessedItems",
                    unwritten=frozenset(unwritten),
                )
            time.sleep(pause)
        return None  # not reached: the last round returns

    def _write(self, call: Callable[[], Any]) -> None:
        """One single-item write; a failed condition is ConditionFailed, anything else StoreError."""
        try:
            call()
        except ClientError as err:
            if is_condition_failure(err):
                raise ConditionFailed("the item changed meanwhile", code="ConditionFailed") from None
            raise self.error(err) from None
        except BotoCoreError as err:
            raise self.error(err) from None

    def query(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            response: dict[str, Any] = dict(self.client.query(TableName=self.table_name, **kwargs))
        except (ClientError, BotoCoreError) as err:
            raise self.error(err) from None
        self.reads.add(int(response.get("ScannedCount", len(response.get("Items", [])))))
        return response
