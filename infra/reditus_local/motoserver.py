"""A moto server for the local stack: DynamoDB requests serialised, four costs of moto cut to linear.

moto's DynamoDB backend is not thread-safe (TransactWriteItems deep-copies tables while
other requests mutate them), and its threaded server runs requests concurrently. Real
DynamoDB has no such limit; here one lock around DynamoDB requests keeps moto correct,
while SQS long polls and everything else stay concurrent.
"""

from __future__ import annotations

import argparse
import copy
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from .motostrict import use_strict_index_keys

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SerialisedDynamoDB:
    """WSGI middleware: one DynamoDB request at a time."""

    def __init__(self, app: WsgiApp):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            with self.lock:
                # Materialise the body inside the lock: the backend work happens while iterating.
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


class _TableCopyShim:
    """Stands in for the `copy` module inside moto's DynamoDB models: a Table is not copied."""

    def __init__(self, table_type: type):
        self._table_type = table_type

    def deepcopy(self, value: Any, memo: dict[int, Any] | None = None) -> Any:
        if isinstance(value, self._table_type):
            return value
        return copy.deepcopy(value, memo)


_patched = False


def use_item_level_transaction_rollback() -> None:
    """Make moto's TransactWriteItems keep a copy of the touched items instead of every table.

    moto deep-copies the whole table once per action of a transaction so it can roll back,
    which makes each transaction cost O(table size): with a few thousand history items the
    local stack slowed to a few refunds per second. Here the touched items are saved and put
    back on failure. Safe because DynamoDB requests are serialised (SerialisedDynamoDB).
    """
    global _patched
    if _patched:
        return
    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    backend_type = models.DynamoDBBackend
    original = backend_type.transact_write_items
    models.copy = _TableCopyShim(Table)  # type: ignore[assignment]

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        for entry in transact_items[:100]:
            op: dict[str, Any] = next(iter(entry.values()), {})
            name = str(op.get("TableName"))
            if name not in self.tables:
                continue
            table = self.tables[name]
            key = op.get("Key")
            if key is None and "Item" in op:
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            if key is None:
                continue
            try:
                current = self.get_item(name, key)
            except Exception:  # noqa: S112 - a malformed key: moto itself reports it below
                continue
            saved.append((name, key, None if current is None else current.to_json()["Attributes"]))
        try:
            original(self, transact_items)
        except Exception:
            for name, key, attributes in reversed(saved):
                if attributes is None:
                    if self.get_item(name, key) is not None:
                        self.delete_item(name, key)
                else:
                    self.put_item(name, copy.deepcopy(attributes), overwrite=True)
            raise

    backend_type.transact_write_items = transact_write_items  # type: ignore[method-assign]
    _patched = True


_sending = threading.local()


def use_linear_standard_queue_sends() -> None:
    """Stop moto's SendMessage from counting every message of a standard queue.

    To read one FIFO-only setting, moto builds all of a queue's attributes on every send,
    counting its visible, delayed and in-flight messages one by one: queueing 1,000 messages
    took 12 s and 2,000 took 66 s. A standard queue has no such setting, so the answer is the same.
    """
    from moto.sqs.models import Queue, SQSBackend

    if getattr(SQSBackend, "_reditus_linear_send", False):
        return
    full = Queue.attributes

    def attributes(self: Any) -> dict[str, Any]:
        if getattr(_sending, "active", False) and not self.fifo_queue:
            return {}
        return full.fget(self)  # type: ignore[attr-defined]

    send = SQSBackend.send_message

    def send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
        _sending.active = True
        try:
            return send(self, *args, **kwargs)
        finally:
            _sending.active = False

    Queue.attributes = property(attributes)  # type: ignore[assignment,method-assign]
    SQSBackend.send_message = send_message  # type: ignore[method-assign]
    SQSBackend._reditus_linear_send = True  # type: ignore[attr-defined]


_SQS_COUNTS = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_not_visible",
    "approximate_number_of_messages_delayed",
)
_sqs_originals: dict[str, Any] = {}


def use_cheap_sqs_clock() -> None:
    """Stop moto's ReceiveMessage from costing O(queue size) per message it hands out.

    moto decides whether each message is visible or delayed with a datetime round trip
    (``unix_time()``: utcnow minus the epoch) per message, and builds the queue's attributes,
    counting every message that way, once per message received (the retention check reads
    MessageRetentionPeriod through them). With 2,000 messages waiting that is about 0.2 s per
    message received: a 10,000-row CSV drained for hours. Here the clock is ``time.time()`` (what
    the round trip computes) and each count is one pass with one reading of it; the answers are the
    same (tests/test_motoserver.py compares them).
    """
    import moto.sqs.models as sqs_models

    if _sqs_originals:
        return
    _sqs_originals.update(
        unix_time=sqs_models.unix_time,
        unix_time_millis=sqs_models.unix_time_millis,
        **{name: getattr(sqs_models.Queue, name) for name in _SQS_COUNTS},
    )
    moto_unix_time = _sqs_originals["unix_time"]

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else float(moto_unix_time(dt))

    def unix_time_millis(dt: Any = None) -> float:
        return unix_time(dt) * 1000.0

    def visible(queue: Any) -> int:
        now = time.time() * 1000.0
        return sum(1 for m in queue._messages if now > m.visible_at and not now < m.delayed_until)

    def not_visible(queue: Any) -> int:
        now = time.time() * 1000.0
        return sum(1 for m in queue._messages if not now > m.visible_at)

    def delayed(queue: Any) -> int:
        now = time.time() * 1000.0
        return sum(1 for m in queue._messages if now < m.delayed_until)

    sqs_models.unix_time = unix_time
    sqs_models.unix_time_millis = unix_time_millis
    for name, count in zip(_SQS_COUNTS, (visible, not_visible, delayed), strict=True):
        setattr(sqs_models.Queue, name, property(count))


def use_moto_sqs_clock() -> None:
    """Undo use_cheap_sqs_clock (tests compare the two)."""
    import moto.sqs.models as sqs_models

    if not _sqs_originals:
        return
    sqs_models.unix_time = _sqs_originals["unix_time"]
    sqs_models.unix_time_millis = _sqs_originals["unix_time_millis"]
    for name in _SQS_COUNTS:
        setattr(sqs_models.Queue, name, _sqs_originals[name])
    _sqs_originals.clear()


# moto's 400 KB item check (LimitedSizeDict.__setitem__) refuses an item above this many bytes.
MOTO_ITEM_SIZE_LIMIT = 405_000
_moto_item_init: list[Callable[..., None]] = []  # moto's own Item.__init__ while ours is installed


def use_linear_item_build() -> None:
    """Build a DynamoDB item in one pass over its attributes instead of one pass per attribute.

    moto's Item sets its attributes one at a time into a dict that, on every set, sums the sizes
    of all the attributes set so far to check the 400 KB limit: O(attributes²) per item written
    (for the bulk path's pending records, eight attributes each, the server's CPU per 4,900 records
    went from 1.11 to 1.03 s without it; more for larger items). Here an item's
    attributes are converted and summed once, and an item over moto's limit is refused with moto's
    own ItemSizeTooLarge. The sum only grows as attributes are added, so an item is refused exactly
    when moto refuses it (tests/test_motoserver.py compares the two at the limit). Later changes to
    an item (update expressions) keep moto's check.
    """
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
    from moto.dynamodb.models.utilities import bytesize

    if _moto_item_init:
        return
    _moto_item_init.append(Item.__init__)

    def build(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
        self.hash_key = hash_key
        self.range_key = range_key
        converted = {key: DynamoType(value) for key, value in attrs.items()}
        if sum(bytesize(key) + value.size() for key, value in converted.items()) > MOTO_ITEM_SIZE_LIMIT:
            raise ItemSizeTooLarge
        self.attrs = LimitedSizeDict(converted)  # its constructor does not check: the sum above did

    Item.__init__ = build  # type: ignore[method-assign]


def use_moto_item_build() -> None:
    """Undo use_linear_item_build (tests compare the two)."""
    from moto.dynamodb.models.dynamo_type import Item

    if _moto_item_init:
        Item.__init__ = _moto_item_init.pop()  # type: ignore[method-assign]


def build_server(host: str = "127.0.0.1", port: int = 0) -> BaseWSGIServer:
    use_strict_index_keys()  # as DynamoDB: no empty string in an index key, whichever call writes it
    use_item_level_transaction_rollback()
    use_linear_item_build()
    use_linear_standard_queue_sends()
    use_cheap_sqs_clock()
    app = SerialisedDynamoDB(DomainDispatcherApplication(create_backend_app))
    return make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)


class MotoServer:
    """In a thread of this process (tests) or, through main(), as its own process (make run)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._server = build_server(host, port)
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def start(self) -> MotoServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="moto server for the reditus-refunds local stack")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    # One log line per request, as the local stack's server (awsserver.py): a bulk upload makes
    # thousands, and writing them cost the server (and whoever reads them) more than some requests.
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        server = build_server(args.host, args.port)
    except OSError as err:
        print(f"moto server: cannot listen on {args.host}:{args.port}: {err.strerror}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"moto server ready: http://{server.host}:{server.port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
