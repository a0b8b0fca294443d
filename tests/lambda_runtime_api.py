"""A small, real Lambda Runtime API (version 2018-06-01) on 127.0.0.1, for running a function's built
package under AWS's runtime interface client (``python -m awslambdaric <handler>``).

The endpoints awslambdaric calls (its native client for the invocation loop, http.client for init
errors):

* ``GET  /2018-06-01/runtime/invocation/next`` blocks until an event is queued, then answers it with
  ``Lambda-Runtime-Aws-Request-Id``, ``Lambda-Runtime-Deadline-Ms`` (epoch milliseconds),
  ``Lambda-Runtime-Invoked-Function-Arn`` and ``Lambda-Runtime-Trace-Id``.
* ``POST /2018-06-01/runtime/invocation/{id}/response`` and ``.../{id}/error``: 202.
* ``POST /2018-06-01/runtime/init/error``: 202 (the handler could not be loaded; the runtime exits).

A test drives it with :meth:`RuntimeApi.invoke`, which queues an event and waits on a condition
for its response, its error, an init error or the runtime's exit (reported by the test through
:meth:`RuntimeApi.runtime_exited`): never a sleep.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, NamedTuple

API_PREFIX = "/2018-06-01/runtime"
NEXT_PATH = f"{API_PREFIX}/invocation/next"
INIT_ERROR_PATH = f"{API_PREFIX}/init/error"
_INVOCATION_POST = re.compile(rf"^{re.escape(API_PREFIX)}/invocation/(?P<id>[^/]+)/(?P<what>response|error)$")

ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
DEFAULT_FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:refund-submitter"

Kind = Literal["response", "error", "init_error", "exited"]


class InvocationResult(NamedTuple):
    """What became of an invocation: ``kind, payload = api.invoke(event)``.

    ``response``: the handler's return value (decoded JSON). ``error``: the error document the
    runtime posted (``errorMessage``, ``errorType``, ``stackTrace``, ...). ``init_error``: the runtime
    could not load the handler (the init error document). ``exited``: the runtime process ended
    without answering (``{"returncode": n}``).
    """

    kind: Kind
    payload: Any


@dataclass(frozen=True)
class InitError:
    error_type: str | None  # the Lambda-Runtime-Function-Error-Type header
    payload: Any


@dataclass(frozen=True)
class _Queued:
    request_id: str
    body: bytes
    deadline_ms: int
    trace_id: str


@dataclass
class _State:
    queue: deque[_Queued] = field(default_factory=deque)
    delivered: set[str] = field(default_factory=set)  # handed to the runtime, not yet answered
    results: dict[str, InvocationResult] = field(default_factory=dict)
    init_errors: list[InitError] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path), in arrival order
    polls: int = 0  # GET .../next calls received
    exit_code: int | None = None
    closing: bool = False


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body.decode("utf-8", "replace")


def new_trace_id() -> str:
    """An X-Ray trace header as Lambda sends it (sampled)."""
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=1"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: RuntimeApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A runtime stopped while it waited for an event leaves a closed socket behind: not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reports what matters
        pass

    def do_GET(self) -> None:
        self.server.api._record(self.command, self.path)
        if self.path != NEXT_PATH:
            self._answer(404, {"errorType": "NotFound", "errorMessage": f"no route for GET {self.path}"})
            return
        queued = self.server.api._next_event()
        if queued is None:  # shutting down: the runtime is being stopped anyway
            self._answer(503, {"errorType": "ServiceUnavailable", "errorMessage": "runtime API stopping"})
            return
        self._answer(
            200,
            queued.body,
            {
                "Lambda-Runtime-Aws-Request-Id": queued.request_id,
                "Lambda-Runtime-Deadline-Ms": str(queued.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": self.server.api.function_arn,
                "Lambda-Runtime-Trace-Id": queued.trace_id,
            },
        )

    def do_POST(self) -> None:
        self.server.api._record(self.command, self.path)
        body = self._read_body()
        api = self.server.api
        if self.path == INIT_ERROR_PATH:
            api._init_error(InitError(self.headers.get(ERROR_TYPE_HEADER), _decode(body)))
            self._answer(202, {"status": "OK"})
            return
        match = _INVOCATION_POST.match(self.path)
        if match is None:
            self._answer(404, {"errorType": "NotFound", "errorMessage": f"no route for POST {self.path}"})
            return
        kind: Kind = "response" if match["what"] == "response" else "error"
        if not api._complete(match["id"], InvocationResult(kind, _decode(body))):
            self._answer(
                400, {"errorType": "InvalidRequestID", "errorMessage": "unknown or answered request"}
            )
            return
        self._answer(202, {"status": "OK"})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, up to the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class RuntimeApi:
    """The Lambda Runtime API on 127.0.0.1, in a background thread.

    ``with RuntimeApi() as api:`` start the runtime with ``AWS_LAMBDA_RUNTIME_API=api.address``,
    then ``kind, payload = api.invoke(event)``.
    """

    def __init__(self, function_arn: str = DEFAULT_FUNCTION_ARN, host: str = "127.0.0.1", port: int = 0):
        self.function_arn = function_arn
        self._host = host
        self._port = port
        self._cond = threading.Condition()
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> RuntimeApi:
        server = _Server((self._host, self._port), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="lambda-runtime-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release every blocked ``next`` poll, stop serving, close the port. Idempotent."""
        with self._cond:
            self._state.closing = True
            self._cond.notify_all()
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> RuntimeApi:
        return self if self._server is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: the value of ``AWS_LAMBDA_RUNTIME_API``."""
        if self._server is None:
            raise RuntimeError("the runtime API is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    # -- the test's side ------------------------------------------------------------------------

    def invoke(self, event: Any, timeout: float = 60.0, *, grace: float = 10.0) -> InvocationResult:
        """Queue ``event`` and wait for what becomes of it.

        ``timeout`` is the function's timeout: the deadline the runtime is given. This waits up to
        ``timeout + grace`` seconds, then raises TimeoutError. An init error (even one posted before
        the call) or the runtime's exit ends the wait early.
        """
        request_id = str(uuid.uuid4())
        queued = _Queued(
            request_id=request_id,
            body=json.dumps(event).encode("utf-8"),
            deadline_ms=int((time.time() + timeout) * 1000),
            trace_id=new_trace_id(),
        )
        with self._cond:
            self._state.queue.append(queued)
            self._cond.notify_all()
            state = self._state
            self._cond.wait_for(
                lambda: request_id in state.results or bool(state.init_errors) or state.exit_code is not None,
                timeout=timeout + grace,
            )
            if request_id in state.results:
                return state.results.pop(request_id)
            if state.init_errors:
                return InvocationResult("init_error", state.init_errors[-1].payload)
            if state.exit_code is not None:
                return InvocationResult("exited", {"returncode": state.exit_code})
            delivered = request_id in state.delivered
        raise TimeoutError(
            f"no answer to invocation {request_id} within {timeout + grace:.0f} s "
            f"({'delivered to' if delivered else 'never polled by'} the runtime)"
        )

    def runtime_exited(self, returncode: int) -> None:
        """Tell the API the runtime process ended: pending and later invocations stop waiting."""
        with self._cond:
            self._state.exit_code = returncode
            self._cond.notify_all()

    def wait_for_polls(self, count: int, timeout: float) -> bool:
        """Wait until the runtime has polled ``next`` at least ``count`` times (it is ready for more).

        False after ``timeout`` seconds, or as soon as the runtime posts an init error or exits.
        """
        state = self._state
        with self._cond:
            self._cond.wait_for(
                lambda: state.polls >= count or bool(state.init_errors) or state.exit_code is not None,
                timeout=timeout,
            )
            return state.polls >= count

    @property
    def init_errors(self) -> list[InitError]:
        with self._cond:
            return list(self._state.init_errors)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received, as (method, path), in order."""
        with self._cond:
            return list(self._state.requests)

    # -- the server's side ----------------------------------------------------------------------

    def _record(self, method: str, path: str) -> None:
        with self._cond:
            self._state.requests.append((method, path))

    def _next_event(self) -> _Queued | None:
        state = self._state
        with self._cond:
            state.polls += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: bool(state.queue) or state.closing)
            if state.closing:
                return None
            queued = state.queue.popleft()
            state.delivered.add(queued.request_id)
            return queued

    def _complete(self, request_id: str, result: InvocationResult) -> bool:
        with self._cond:
            if request_id not in self._state.delivered:
                return False
            self._state.delivered.discard(request_id)
            self._state.results[request_id] = result
            self._cond.notify_all()
            return True

    def _init_error(self, error: InitError) -> None:
        with self._cond:
            self._state.init_errors.append(error)
            self._cond.notify_all()
