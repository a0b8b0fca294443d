"""A faithful, standard-library simulator of the Reditus refunds API, with fault injection.

It serves ``POST {prefix}/v1/refunds`` as docs/reditus-refunds-openapi.yaml describes it:

* ``Authorization: Bearer <key>`` is required; a missing or wrong key gets 401
  ``{"errors": [{"title": "Unauthorized", "details": "..."}]}`` (the contract does not document
  the 401 body; this is our choice, shaped like the documented errors).
* 200 ``{"message": "ok"}`` for a known payment; the commission is rejected ("applied").
* 400 ``{"errors": [{"title": "Bad Request", "details": "Validation failed: payment_id can't be blank"}]}``
  for a missing/blank ``payment_id``, ``... payment_id is invalid`` for the configured invalid ids
  (and for a payment_id that is an object or array), ``Invalid JSON body`` for a body that is not JSON.
* 404 ``{"errors": [{"title": "Not Found", "details": "Payment not found"}]}`` for an unknown payment.
* Refunding a known payment again answers 200 again, and counts as applied again. The real API's
  behaviour is undocumented; answering 200 is the idempotent reading, and counting every 200 lets a
  test assert that our side never sends a payment twice (``applied_count(payment_id) == 1``).

Knobs (constructor, :meth:`ReditusSimulator.configure`, ``POST /_sim/config`` or the CLI):

* ``latency`` seconds added to every answer, plus ``uniform(0, jitter)``.
* ``fault_rate`` (0..1): the share of refund requests that get a transient fault, picked among the
  enabled ``faults``: ``"429"`` (with ``Retry-After: <retry_after>``), ``"500"``, ``"503"``,
  ``"slow"`` (the request is processed - a known payment IS refunded and recorded as applied - but
  the answer only comes after ``slow_seconds``, past the client's read timeout) and ``"drop"`` (the
  connection is closed without an HTTP answer; the refund is not applied unless ``drop_applies``).
  Faults are drawn from a ``random.Random(seed)``: the same seed, configuration and request order
  give the same faults.
* ``outage``: while on, every refund request gets 503 (``outage_mode="503"``) or a dropped
  connection (``outage_mode="drop"``), before authentication; togglable at run time.
* Late payments (:meth:`ReditusSimulator.add_late_payment`) answer 404 until ``after_seconds`` have
  passed on the simulator's clock (injectable, for tests), then 200: the 404 grace window.
* ``echo_key`` (off by default): a careless API that repeats the key it was sent in its error bodies.
  Every error answer's ``details`` then ends with ``(key received: ...)``, the presented Bearer key
  written in each enabled form of :data:`ECHO_FORMS` (upper-cased, JSON-escaped, URL-encoded,
  base64, cut, masked...; :func:`echo_forms` gives the texts, so a test can look for each). For
  testing the client's redaction only: with it on, the simulator's answers hold the key.

Every request to the API (not to the control API) is recorded: see :class:`RecordedRequest`.

Control API, on the same loopback server, no Bearer key (refused to non-loopback peers, and off by
default when the server binds a non-loopback address):

* ``GET  /_sim/health``   - ``{"status": "ok", "base_url": ..., "requests": n, ...}``
* ``GET  /_sim/requests`` - the recorded requests, a JSON list (``?since=N`` skips the first N,
  ``?payment_id=X`` filters)
* ``GET  /_sim/refunds``  - ``{"applied": {payment_id: count}, "successful": [payment_id, ...]}``
* ``GET  /_sim/config``   - the current knobs and payment sets (never the API key)
* ``POST /_sim/config``   - change knobs (``fault_rate``, ``faults``, ``latency``, ``jitter``,
  ``retry_after``, ``slow_seconds``, ``outage``, ``outage_mode``, ``drop_applies``, ``echo_key``,
  ``seed``) and add payments (``add_payments``, ``add_invalid``: lists of ids; ``add_late``:
  ``{id: seconds}``); ``remove_payments``: a list of ids to forget. Answers the new config; 400 on a
  bad value.
* ``POST /_sim/reset``    - back to the state the simulator was constructed with: log cleared,
  applied refunds forgotten, knobs and payments restored, random generators re-seeded, late
  payments counted again from now.

Run it as its own process (the key may come from ``REDITUS_API_KEY``; it is never printed)::

    python -m reditus_local.simulator --port 8100 --fault-rate 0.2 --late pay_x:30

It prints one line, ``Reditus simulator ready: <base_url>``, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

API_KEY_ENV = "REDITUS_API_KEY"
REFUNDS_PATH = "/v1/refunds"
CONTROL_PREFIX = "/_sim"

# Demo payments the simulator knows out of the box (the banner of `make run` lists them).
DEMO_REFUNDABLE: tuple[str, ...] = (
    "pay_demo_1001",
    "pay_demo_1002",
    "pay_demo_1003",
    "pay_demo_1004",
    "pay_demo_1005",
)
DEMO_INVALID: tuple[str, ...] = ("pay_demo_invalid",)
DEMO_UNKNOWN: tuple[str, ...] = ("pay_demo_unknown",)  # never known: always 404
# (payment_id, seconds after start) - 404 at first, 200 once the payment "arrives".
DEMO_LATE: tuple[tuple[str, float], ...] = (("pay_demo_late", 30.0),)

FAULT_429 = "429"
FAULT_500 = "500"
FAULT_503 = "503"
FAULT_SLOW = "slow"
FAULT_DROP = "drop"
FAULT_KINDS: tuple[str, ...] = (FAULT_429, FAULT_500, FAULT_503, FAULT_SLOW, FAULT_DROP)
FAULT_OUTAGE = "outage"  # recorded as the fault kind of requests answered by the outage switch
OUTAGE_MODES: tuple[str, ...] = ("503", "drop")

DETAIL_BLANK = "Validation failed: payment_id can't be blank"
DETAIL_INVALID = "Validation failed: payment_id is invalid"
DETAIL_BAD_JSON = "Invalid JSON body"
DETAIL_NOT_FOUND = "Payment not found"
DETAIL_UNAUTHORIZED = "Missing or invalid API key"

MAX_BODY_BYTES = 1024 * 1024

# How the echo_key knob writes the key it received: the forms a redaction must see through.
ECHO_FORMS: tuple[str, ...] = (
    "plain",  # as sent
    "upper",  # upper-cased
    "json",  # every character a JSON \uXXXX escape, as text
    "json_first",  # the first character escaped, the rest as is ("\u0073k_...")
    "slashes",  # JSON with escaped slashes ("\/")
    "url",  # every character percent-encoded
    "base64",  # standard base64 of the key
    "basic",  # base64 of "user:<key>", as in a Basic Authorization header
    "prefix",  # the first two thirds, cut
    "suffix",  # the last two thirds
    "masked",  # the first 10 and last 4 characters, asterisks between
)


def echo_forms(key: str) -> dict[str, str]:
    """The key as the echo_key knob writes it, by form."""
    third = max(len(key) * 2 // 3, 1)
    return {
        "plain": key,
        "upper": key.upper(),
        "json": "".join(f"\\u{ord(c):04x}" for c in key),
        "json_first": "".join(f"\\u{ord(c):04x}" for c in key[:1]) + key[1:],
        "slashes": key.replace("/", "\\/"),
        "url": "".join(f"%{byte:02X}" for byte in key.encode("utf-8")),
        "base64": base64.b64encode(key.encode("utf-8")).decode("ascii"),
        "basic": base64.b64encode(f"api:{key}".encode()).decode("ascii"),
        "prefix": key[:third] + "...",
        "suffix": "..." + key[-third:],
        "masked": key[:10] + "*" * max(len(key) - 14, 0) + key[-4:],
    }


class SimulatorError(RuntimeError):
    """The simulator cannot do what was asked (bad configuration, not started, ...)."""


class PortInUseError(OSError):
    """The port the simulator was asked to listen on is taken."""


def _errors(title: str, details: str) -> dict[str, Any]:
    return {"errors": [{"title": title, "details": details}]}


_FAULT_BODIES: dict[int, dict[str, Any]] = {
    429: _errors("Too Many Requests", "Rate limit exceeded, retry later"),
    500: _errors("Internal Server Error", "Something went wrong"),
    503: _errors("Service Unavailable", "The service is temporarily unavailable"),
}


def _iso_now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True)
class RecordedRequest:
    """One request the simulator received on its API (control requests are not recorded)."""

    seq: int  # 0, 1, 2, ... in order of decision
    at: float  # the simulator's clock when the request was decided
    received_at: str  # wall clock, ISO 8601 UTC
    method: str
    path: str
    payment_id: str | None  # None when absent, not a string/number, or the body was not JSON
    auth_ok: bool
    status: int | None  # the status answered (or about to be, for "slow"); None: no answer (dropped)
    fault: str | None  # one of FAULT_KINDS, "outage", or None
    applied: bool  # the refund was applied (the commission rejected) by this request

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Knobs:
    """The behaviour knobs; immutable, replaced as a whole under the simulator's lock."""

    latency: float = 0.0
    jitter: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    retry_after: int = 1
    slow_seconds: float = 12.0  # above the client's default 10 s read timeout
    outage: bool = False
    outage_mode: str = "503"
    drop_applies: bool = False
    echo_key: tuple[str, ...] = ()  # ECHO_FORMS written into error bodies; () = off

    def validated(self) -> Knobs:
        for name in ("latency", "jitter", "slow_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if (
            isinstance(self.fault_rate, bool)
            or not isinstance(self.fault_rate, int | float)
            or not 0 <= self.fault_rate <= 1
        ):
            raise ValueError(f"fault_rate must be a number between 0 and 1, got {self.fault_rate!r}")
        if (
            isinstance(self.retry_after, bool)
            or not isinstance(self.retry_after, int)
            or self.retry_after < 0
        ):
            raise ValueError(f"retry_after must be a whole number of seconds >= 0, got {self.retry_after!r}")
        unknown = [kind for kind in self.faults if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; use {', '.join(FAULT_KINDS)}")
        if self.outage_mode not in OUTAGE_MODES:
            raise ValueError(
                f"outage_mode must be one of {', '.join(OUTAGE_MODES)}, got {self.outage_mode!r}"
            )
        for name in ("outage", "drop_applies"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        unknown = [form for form in self.echo_key if form not in ECHO_FORMS]
        if unknown:
            raise ValueError(f"unknown echo_key form(s) {unknown}; use all or {', '.join(ECHO_FORMS)}")
        # Keep FAULT_KINDS order, without repeats: the fault draw must not depend on how they were listed.
        faults = tuple(kind for kind in FAULT_KINDS if kind in self.faults)
        return replace(
            self,
            latency=float(self.latency),
            jitter=float(self.jitter),
            fault_rate=float(self.fault_rate),
            slow_seconds=float(self.slow_seconds),
            faults=faults,
            echo_key=tuple(form for form in ECHO_FORMS if form in self.echo_key),
        )


def _parse_echo(value: Any) -> tuple[str, ...]:
    """``all``, a comma-separated string or a list of ECHO_FORMS; "", None or false: off."""
    if value is None or value is False or value == "":
        return ()
    if value is True or value == "all":
        return ECHO_FORMS
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(str(part) for part in value)
    raise ValueError(f"echo_key must be a list of forms, a comma-separated string or all, got {value!r}")


def _parse_faults(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(str(part) for part in value)
    raise ValueError(f"faults must be a list of fault kinds or a comma-separated string, got {value!r}")


@dataclass
class _State:
    knobs: Knobs
    payments: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    late_available_at: dict[str, float] = field(default_factory=dict)  # payment_id -> clock time
    applied: dict[str, int] = field(default_factory=dict)  # insertion order = first refund order
    records: list[RecordedRequest] = field(default_factory=list)


@dataclass(frozen=True)
class _Decision:
    status: int | None
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...]
    delay: float
    drop: bool


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 makes concurrent clients wait out SYN retries
    simulator: ReditusSimulator

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Hang up on kept-alive clients, so a stopped simulator does not go on answering them."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that gave up (read timeouts against "slow") leave broken pipes: not worth a traceback.
        logger.debug("simulator: error while handling a request from %s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _BadBody(Exception):
    def __init__(self, status: int, details: str):
        super().__init__(details)
        self.status = status
        self.details = details


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ReditusSimulator/1.0"
    sys_version = ""
    timeout = 30  # seconds an idle kept-alive connection is held open
    disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK stalls

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        cast(_Server, self.server).track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            cast(_Server, self.server).track(self.connection, False)

    @property
    def sim(self) -> ReditusSimulator:
        return cast(_Server, self.server).simulator

    def log_message(self, format: str, *args: Any) -> None:
        # The request line and status only; headers (and so the key) are never logged.
        logger.debug("simulator %s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- plumbing -------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            raise _BadBody(400, "Invalid Content-Length") from None
        if length < 0:
            self.close_connection = True
            raise _BadBody(400, "Invalid Content-Length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadBody(413, "Request body too large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                self.close_connection = True
                raise _BadBody(400, "Invalid chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise _BadBody(413, "Request body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send_json(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _drop(self) -> None:
        """Close the connection without an HTTP answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            self._control(path)
            return
        try:
            body = self._read_body()
        except _BadBody as err:
            title = "Payload Too Large" if err.status == 413 else "Bad Request"
            self._send_json(err.status, _errors(title, err.details))
            return
        if self.sim._stopping.is_set():
            self._drop()
            return
        decision = self.sim._decide(self.command, path, self.headers.get("Authorization"), body)
        if decision.delay > 0 and self.sim._stopping.wait(decision.delay):
            self._drop()  # stopping: do not answer from a server that is going away
            return
        if decision.drop or decision.status is None:
            self._drop()
            return
        try:
            self._send_json(decision.status, decision.body, decision.headers)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (typically a read timeout against a "slow" answer).
            self.close_connection = True

    # -- control API ----------------------------------------------------------------------------

    def _control(self, path: str) -> None:
        sim = self.sim
        try:
            body = self._read_body()
        except _BadBody as err:
            self._send_json(err.status, {"error": err.details})
            return
        if not sim.control_api:
            self._send_json(404, _errors("Not Found", "Route not found"))
            return
        if not _is_loopback(str(self.client_address[0])):
            self._send_json(403, {"error": "the control API only answers loopback clients"})
            return
        query = parse_qs(urlsplit(self.path).query)
        route = (self.command, path.rstrip("/"))
        try:
            if route == ("GET", "/_sim/health"):
                self._send_json(200, sim._health())
            elif route == ("GET", "/_sim/requests"):
                records = sim.records()
                since = int(query.get("since", ["0"])[0])
                records = records[max(since, 0) :]
                if "payment_id" in query:
                    wanted = query["payment_id"][0]
                    records = [r for r in records if r.payment_id == wanted]
                self._send_json(200, [r.to_dict() for r in records])
            elif route == ("GET", "/_sim/refunds"):
                self._send_json(
                    200, {"applied": sim.applied_counts(), "successful": sim.successful_refunds()}
                )
            elif route == ("GET", "/_sim/config"):
                self._send_json(200, sim.config())
            elif route == ("POST", "/_sim/config"):
                changes = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                self._send_json(200, sim.apply_control(changes))
            elif route == ("POST", "/_sim/reset"):
                sim.reset()
                self._send_json(200, sim.config())
            else:
                self._send_json(404, {"error": f"no control endpoint {self.command} {path}"})
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            self._send_json(400, {"error": str(err)})


class ReditusSimulator:
    """The Reditus refunds API on a loopback port, in a background thread.

    ``with ReditusSimulator("key") as sim: requests.post(sim.url, ...)``; ``sim.base_url`` is what
    the client is configured with (``REDITUS_API_BASE_URL``).
    """

    def __init__(
        self,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        path_prefix: str = "",
        payments: Iterable[str] | None = None,
        invalid: Iterable[str] | None = None,
        late: Mapping[str, float] | Iterable[tuple[str, float]] | None = None,
        latency: float = 0.0,
        jitter: float = 0.0,
        fault_rate: float = 0.0,
        faults: Iterable[str] = FAULT_KINDS,
        retry_after: int = 1,
        slow_seconds: float = 12.0,
        outage: bool = False,
        outage_mode: str = "503",
        drop_applies: bool = False,
        echo_key: Iterable[str] | str | bool = (),
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        control_api: bool | None = None,
    ) -> None:
        """Build a stopped simulator; :meth:`start` it.

        ``payments``/``invalid``/``late`` default to the DEMO_* sets; pass ``()`` for none.
        ``late`` maps payment ids to the seconds after :meth:`start` when they become known.
        ``clock`` is read for late payments and the records' ``at``; inject a fake one in tests.
        ``control_api`` defaults to on when ``host`` is a loopback address, off otherwise.
        ``echo_key``: forms of :data:`ECHO_FORMS` (or ``"all"``) in which error bodies repeat the key
        they were sent - a test of the client's redaction; off by default.
        """
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("the simulator needs a non-empty API key")
        self._api_key = api_key.encode("utf-8")
        self.host = host
        self._requested_port = port
        prefix = path_prefix.strip().rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        self.path_prefix = prefix
        self.control_api = _is_loopback(host) if control_api is None else control_api
        self._clock = clock
        self._seed = seed
        self._initial_knobs = Knobs(
            latency=latency,
            jitter=jitter,
            fault_rate=fault_rate,
            faults=_parse_faults(faults if isinstance(faults, str) else list(faults)),
            retry_after=retry_after,
            slow_seconds=slow_seconds,
            outage=outage,
            outage_mode=outage_mode,
            drop_applies=drop_applies,
            echo_key=_parse_echo(echo_key if isinstance(echo_key, str | bool) else list(echo_key)),
        ).validated()
        self._initial_payments = tuple(DEMO_REFUNDABLE if payments is None else payments)
        self._initial_invalid = tuple(DEMO_INVALID if invalid is None else invalid)
        late_items = DEMO_LATE if late is None else (late.items() if isinstance(late, Mapping) else late)
        self._initial_late = tuple((str(pid), float(after)) for pid, after in late_items)
        for _, after in self._initial_late:
            if after < 0:
                raise ValueError("late payments need after_seconds >= 0")
        self._lock = threading.Lock()
        self._recorded = threading.Condition(self._lock)
        self._state = _State(knobs=self._initial_knobs)
        self._fault_rng = random.Random(seed)
        self._jitter_rng = random.Random(seed + 1)
        self._started_at: float | None = None
        self._pending_late: dict[str, float] = {}
        self._server: _Server | None = None
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._load_initial()

    def __repr__(self) -> str:  # never shows the key
        where = (
            self.base_url
            if self._server
            else f"{self.host}:{self._bound_port or self._requested_port} (stopped)"
        )
        return f"<ReditusSimulator {where}>"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ReditusSimulator:
        """Bind and serve in a daemon thread; returns self. Raises PortInUseError if the port is taken."""
        if self._server is not None:
            raise SimulatorError("the simulator is already running")
        server_class: type[_Server] = _Server6 if ":" in self.host else _Server
        try:
            server = server_class((self.host, self._requested_port), _Handler)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    err.errno,
                    f"the Reditus simulator cannot listen on {self.host}:{self._requested_port}: "
                    f"port {self._requested_port} is already in use ({err.strerror})",
                ) from err
            raise SimulatorError(
                f"the Reditus simulator cannot listen on {self.host}:{self._requested_port}: {err}"
            ) from err
        server.simulator = self
        self._bound_port = int(server.server_address[1])
        self._stopping.clear()
        with self._lock:
            self._started_at = self._clock()
            for payment_id, after in self._pending_late.items():
                self._state.late_available_at[payment_id] = self._started_at + after
            self._pending_late.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="reditus-simulator", daemon=True
        )
        self._thread.start()
        logger.debug("Reditus simulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close the port; answers still sleeping are dropped. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> ReditusSimulator:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (still known after stop()); SimulatorError before the first start()."""
        if self._bound_port is None:
            raise SimulatorError("the simulator has not been started; call start() first")
        return self._bound_port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` - where the control API lives."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the client is configured with: root URL plus the path prefix."""
        return self.root_url + self.path_prefix

    @property
    def url(self) -> str:
        """The refunds endpoint: ``{base_url}/v1/refunds``."""
        return self.base_url + REFUNDS_PATH

    @property
    def control_url(self) -> str:
        return self.root_url + CONTROL_PREFIX

    # -- payments -------------------------------------------------------------------------------

    def add_payment(self, payment_id: str) -> None:
        """Make a payment known (refundable) from now on."""
        with self._lock:
            self._state.payments.add(payment_id)
            self._state.invalid.discard(payment_id)
            self._state.late_available_at.pop(payment_id, None)
            self._pending_late.pop(payment_id, None)

    def add_invalid(self, payment_id: str) -> None:
        """Answer 400 "payment_id is invalid" for this id."""
        with self._lock:
            self._state.invalid.add(payment_id)

    def add_late_payment(self, payment_id: str, after_seconds: float) -> None:
        """404 until ``after_seconds`` have passed on the clock - counted from start() if not yet started,
        else from now - then 200."""
        if after_seconds < 0:
            raise ValueError("after_seconds must be >= 0")
        with self._lock:
            self._state.payments.discard(payment_id)
            if self._started_at is None:
                self._pending_late[payment_id] = float(after_seconds)
            else:
                self._state.late_available_at[payment_id] = self._clock() + after_seconds

    def remove_payment(self, payment_id: str) -> None:
        """Forget a payment (known, invalid or late): it answers 404 from now on."""
        with self._lock:
            self._state.payments.discard(payment_id)
            self._state.invalid.discard(payment_id)
            self._state.late_available_at.pop(payment_id, None)
            self._pending_late.pop(payment_id, None)

    # -- knobs ----------------------------------------------------------------------------------

    def configure(self, **changes: Any) -> Knobs:
        """Change knobs at run time (names of :class:`Knobs`, plus ``seed`` to re-seed); returns them."""
        seed = changes.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError("seed must be an integer")
        if "faults" in changes:
            changes["faults"] = _parse_faults(changes["faults"])
        if "echo_key" in changes:
            changes["echo_key"] = _parse_echo(changes["echo_key"])
        unknown = sorted(set(changes) - set(Knobs.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}")
        with self._lock:
            knobs = replace(self._state.knobs, **changes).validated()
            self._state.knobs = knobs
            if seed is not None:
                self._fault_rng.seed(seed)
                self._jitter_rng.seed(seed + 1)
        return knobs

    def set_outage(self, on: bool, mode: str | None = None) -> None:
        """Switch the outage on or off (``mode``: "503" or "drop")."""
        self.configure(outage=on, **({} if mode is None else {"outage_mode": mode}))

    @property
    def knobs(self) -> Knobs:
        with self._lock:
            return self._state.knobs

    def apply_control(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """What ``POST /_sim/config`` does: knobs plus payment additions; returns :meth:`config`."""
        changes = dict(changes)
        add_payments = changes.pop("add_payments", [])
        add_invalid = changes.pop("add_invalid", [])
        add_late = changes.pop("add_late", {})
        remove = changes.pop("remove_payments", [])
        for name, value in (
            ("add_payments", add_payments),
            ("add_invalid", add_invalid),
            ("remove_payments", remove),
        ):
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name} must be a list of payment ids")
        if isinstance(add_late, list):
            try:
                add_late = {str(item["payment_id"]): item["after_seconds"] for item in add_late}
            except (KeyError, TypeError):
                raise ValueError(
                    "add_late must be {payment_id: seconds} or [{payment_id, after_seconds}]"
                ) from None
        if not isinstance(add_late, dict) or not all(
            isinstance(s, int | float) and not isinstance(s, bool) and s >= 0 for s in add_late.values()
        ):
            raise ValueError("add_late must map payment ids to seconds >= 0")
        if changes:
            self.configure(**changes)
        for payment_id in remove:
            self.remove_payment(payment_id)
        for payment_id in add_payments:
            self.add_payment(payment_id)
        for payment_id in add_invalid:
            self.add_invalid(payment_id)
        for payment_id, after in add_late.items():
            self.add_late_payment(payment_id, float(after))
        return self.config()

    def config(self) -> dict[str, Any]:
        """Knobs and payment sets as JSON-ready data (the API key is never included)."""
        with self._lock:
            now = self._clock()
            late: dict[str, dict[str, Any]] = {
                pid: {"available_in": max(at - now, 0.0), "known": now >= at}
                for pid, at in sorted(self._state.late_available_at.items())
            }
            late.update({pid: {"available_in": None, "known": False} for pid in self._pending_late})
            knobs = asdict(self._state.knobs)
            knobs["faults"] = list(knobs["faults"])
            knobs["echo_key"] = list(knobs["echo_key"])
            return {
                **knobs,
                "path_prefix": self.path_prefix,
                "payments": sorted(self._state.payments),
                "invalid": sorted(self._state.invalid),
                "late": late,
            }

    def reset(self) -> None:
        """Back to the constructed state: log and applied refunds cleared, knobs and payments restored."""
        with self._lock:
            self._state = _State(knobs=self._initial_knobs)
            self._fault_rng.seed(self._seed)
            self._jitter_rng.seed(self._seed + 1)
            self._pending_late.clear()
            self._load_initial_locked()

    def _load_initial(self) -> None:
        with self._lock:
            self._load_initial_locked()

    def _load_initial_locked(self) -> None:
        self._state.payments.update(self._initial_payments)
        self._state.invalid.update(self._initial_invalid)
        for payment_id, after in self._initial_late:
            if self._started_at is None:
                self._pending_late[payment_id] = after
            else:
                self._state.late_available_at[payment_id] = self._clock() + after

    # -- what it saw ----------------------------------------------------------------------------

    def records(self) -> list[RecordedRequest]:
        """A copy of every API request received so far, in order."""
        with self._lock:
            return list(self._state.records)

    def wait_for_records(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests are recorded; TimeoutError after ``timeout`` seconds."""
        with self._recorded:
            if not self._recorded.wait_for(lambda: len(self._state.records) >= count, timeout=timeout):
                raise TimeoutError(f"{len(self._state.records)} request(s) recorded, expected {count}")
            return list(self._state.records)

    def applied_count(self, payment_id: str) -> int:
        """How many requests applied a refund to this payment (every 200 counts, see module doc)."""
        with self._lock:
            return self._state.applied.get(payment_id, 0)

    def applied_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._state.applied)

    def successful_refunds(self) -> list[str]:
        """Payment ids refunded at least once, in the order of their first refund."""
        with self._lock:
            return list(self._state.applied)

    def _health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "status": "ok",
                "base_url": self.base_url,
                "refunds_url": self.url,
                "requests": len(self._state.records),
                "outage": self._state.knobs.outage,
            }

    # -- the API --------------------------------------------------------------------------------

    @staticmethod
    def _bearer(header: str | None) -> str | None:
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _auth_ok(self, header: str | None) -> bool:
        token = self._bearer(header)
        return token is not None and hmac.compare_digest(token.encode("utf-8"), self._api_key)

    def _decide(self, method: str, path: str, authorization: str | None, body: bytes) -> _Decision:
        """Decide the answer to one API request, apply the refund if it is due, and record it."""
        auth_ok = self._auth_ok(authorization)
        route_ok = method == "POST" and path == self.path_prefix + REFUNDS_PATH
        payment_id: str | None = None
        problem: tuple[int, dict[str, Any]] | None = None
        if not route_ok:
            problem = (404, _errors("Not Found", f"No route matches {method} {path}"))
        else:
            try:
                data = json.loads(body.decode("utf-8")) if body.strip() else {}
            except (ValueError, RecursionError):  # not UTF-8, not JSON, a 5,000-digit number, too deep
                data = None
                problem = (400, _errors("Bad Request", DETAIL_BAD_JSON))
            if problem is None:
                raw = data.get("payment_id") if isinstance(data, dict) else None
                if isinstance(raw, int | float) and not isinstance(raw, bool):
                    raw = str(raw)  # a Rails API reads params as strings
                if isinstance(raw, str):
                    payment_id = raw
                if raw is None or raw is False or (isinstance(raw, str) and not raw.strip()):
                    problem = (400, _errors("Bad Request", DETAIL_BLANK))
                elif not isinstance(raw, str):
                    problem = (400, _errors("Bad Request", DETAIL_INVALID))

        with self._recorded:
            knobs = self._state.knobs
            now = self._clock()
            fault: str | None = None
            if route_ok and knobs.outage:
                fault = FAULT_OUTAGE
            elif (
                route_ok
                and knobs.fault_rate > 0
                and knobs.faults
                and self._fault_rng.random() < knobs.fault_rate
            ):
                fault = knobs.faults[self._fault_rng.randrange(len(knobs.faults))]
            delay = knobs.latency + (self._jitter_rng.uniform(0, knobs.jitter) if knobs.jitter > 0 else 0.0)

            status: int | None
            payload: dict[str, Any] = {}
            headers: tuple[tuple[str, str], ...] = ()
            applied = False
            drop = False
            if fault == FAULT_OUTAGE:
                drop = knobs.outage_mode == "drop"
                status, payload = (None, {}) if drop else (503, _FAULT_BODIES[503])
            elif fault in (FAULT_429, FAULT_500, FAULT_503):
                status = int(fault)
                payload = _FAULT_BODIES[status]
                if status == 429:
                    headers = (("Retry-After", str(knobs.retry_after)),)
            else:
                if route_ok and not auth_ok:
                    status, payload = 401, _errors("Unauthorized", DETAIL_UNAUTHORIZED)
                    headers = (("WWW-Authenticate", 'Bearer realm="Reditus"'),)
                elif problem is not None:
                    status, payload = problem
                elif payment_id in self._state.invalid:
                    status, payload = 400, _errors("Bad Request", DETAIL_INVALID)
                elif self._known_locked(cast(str, payment_id), now):
                    status, payload = 200, {"message": "ok"}
                else:
                    status, payload = 404, _errors("Not Found", DETAIL_NOT_FOUND)
                applied = status == 200
                if fault == FAULT_SLOW:
                    delay += knobs.slow_seconds
                elif fault == FAULT_DROP:
                    drop = True
                    applied = applied and knobs.drop_applies
                    status, payload = None, {}
            token = self._bearer(authorization)
            if knobs.echo_key and token and isinstance(payload.get("errors"), list):
                forms = echo_forms(token)
                echo = ", ".join(forms[form] for form in knobs.echo_key)
                payload = {
                    "errors": [
                        {**error, "details": f"{error.get('details', '')} (key received: {echo})"}
                        for error in payload["errors"]
                    ]
                }
            if applied:
                pid = cast(str, payment_id)
                self._state.applied[pid] = self._state.applied.get(pid, 0) + 1
            self._state.records.append(
                RecordedRequest(
                    seq=len(self._state.records),
                    at=now,
                    received_at=_iso_now(),
                    method=method,
                    path=path,
                    payment_id=payment_id,
                    auth_ok=auth_ok,
                    status=status,
                    fault=fault,
                    applied=applied,
                )
            )
            self._recorded.notify_all()
        return _Decision(status=status, body=payload, headers=headers, delay=delay, drop=drop)

    def _known_locked(self, payment_id: str, now: float) -> bool:
        if payment_id in self._state.payments:
            return True
        available_at = self._state.late_available_at.get(payment_id)
        return available_at is not None and now >= available_at


# -- command line -------------------------------------------------------------------------------


def _late_arg(text: str) -> tuple[str, float]:
    payment_id, sep, seconds = text.rpartition(":")
    if not sep or not payment_id:
        raise argparse.ArgumentTypeError(f"expected PAYMENT_ID:SECONDS, got {text!r}")
    try:
        after = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PAYMENT_ID:SECONDS, got {text!r}") from None
    if after < 0:
        raise argparse.ArgumentTypeError("SECONDS must be >= 0")
    return payment_id, after


def _fault_list(text: str) -> tuple[str, ...]:
    kinds = _parse_faults(text)
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault kind(s) {unknown}; use {','.join(FAULT_KINDS)}")
    return kinds


def _echo_list(text: str) -> tuple[str, ...]:
    forms = _parse_echo(text)
    unknown = [form for form in forms if form not in ECHO_FORMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown form(s) {unknown}; use all or {','.join(ECHO_FORMS)}")
    return forms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reditus_local.simulator",
        description="Run the Reditus refunds API simulator (POST /v1/refunds, control API under /_sim).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8100, help="port to bind; 0 picks a free one (default 8100)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"the Bearer key clients must send (default: ${API_KEY_ENV}; prefer the variable, "
        "command lines are visible to other users)",
    )
    parser.add_argument(
        "--prefix", default="", help="path prefix before /v1/refunds, e.g. /api (default none)"
    )
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests given a fault, 0..1")
    parser.add_argument(
        "--faults",
        type=_fault_list,
        default=FAULT_KINDS,
        help=f"enabled fault kinds, comma-separated (default {','.join(FAULT_KINDS)})",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this many more seconds, at random")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds of a 429 (default 1)")
    parser.add_argument(
        "--slow-seconds", type=float, default=12.0, help="how late a 'slow' fault answers (default 12)"
    )
    parser.add_argument("--outage", action="store_true", help="start with the outage switch on")
    parser.add_argument("--outage-mode", choices=OUTAGE_MODES, default="503", help="how an outage answers")
    parser.add_argument(
        "--drop-applies",
        action="store_true",
        help="a dropped connection happens after the refund was applied",
    )
    parser.add_argument(
        "--echo-key",
        type=_echo_list,
        default=(),
        metavar="FORMS",
        help="error bodies repeat the Bearer key they were sent, in these forms (comma-separated, or all: "
        f"{','.join(ECHO_FORMS)}); to test a client's redaction, never for a demo",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault generator (default 0)")
    parser.add_argument("--payment", action="append", default=[], metavar="ID", help="a refundable payment")
    parser.add_argument(
        "--invalid", action="append", default=[], metavar="ID", help="a payment id answered 400"
    )
    parser.add_argument(
        "--late",
        action="append",
        type=_late_arg,
        default=[],
        metavar="ID:SECONDS",
        help="a payment that becomes known SECONDS after start",
    )
    parser.add_argument("--no-demo", action="store_true", help="do not seed the demo payments")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT; prints ``Reditus simulator ready: <base_url>``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV, "")
    if not api_key.strip():
        parser.error(f"an API key is required: --api-key or the {API_KEY_ENV} environment variable")
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    demo = not args.no_demo
    sim = ReditusSimulator(
        api_key.strip(),
        host=args.host,
        port=args.port,
        path_prefix=args.prefix,
        payments=[*(DEMO_REFUNDABLE if demo else ()), *args.payment],
        invalid=[*(DEMO_INVALID if demo else ()), *args.invalid],
        late=[*(DEMO_LATE if demo else ()), *args.late],
        latency=args.latency,
        jitter=args.jitter,
        fault_rate=args.fault_rate,
        faults=args.faults,
        retry_after=args.retry_after,
        slow_seconds=args.slow_seconds,
        outage=args.outage,
        outage_mode=args.outage_mode,
        drop_applies=args.drop_applies,
        echo_key=args.echo_key,
        seed=args.seed,
    )
    try:
        sim.start()
    except (PortInUseError, SimulatorError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        print(f"Reditus simulator ready: {sim.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
