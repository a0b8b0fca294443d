"""Serve a Function URL handler over HTTP on 127.0.0.1, as Lambda Function URLs call it.

For the local stack (and end-to-end tests): each HTTP request becomes a payload-format-2.0
event (lower-cased headers, ``rawPath``, the body as text, or base64 when it is not UTF-8,
as Lambda does for binary content) and the handler's answer becomes the HTTP response.
Not imported by the Lambda.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[[dict[str, Any], Any], Mapping[str, Any]]
# The Function URL request limit; a larger body is refused before it is read.
MAX_REQUEST_BYTES = 6 * 1000 * 1000


def to_event(method: str, path: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    return {
        "version": "2.0",
        "rawPath": path.split("?", 1)[0],
        "rawQueryString": path.split("?", 1)[1] if "?" in path else "",
        "headers": {k.lower(): v for k, v in headers.items()},
        "requestContext": {"http": {"method": method, "path": path.split("?", 1)[0]}},
        "body": text,
        "isBase64Encoded": encoded,
    }


class _LocalContext:
    function_name = "reditus-webhooks-local"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:reditus-webhooks-local"
    aws_request_id = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def serve(handler: Handler, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start serving ``handler`` in a daemon thread; ``server.server_address`` has the port.

    Stop it with ``server.shutdown(); server.server_close()``.
    """

    class Request(BaseHTTPRequestHandler):
        def _call(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_REQUEST_BYTES:
                self._reply(413, {"content-type": "application/json"}, b'{"status":"rejected"}')
                return
            body = self.rfile.read(length) if length else b""
            headers: dict[str, str] = {}
            for name, value in self.headers.items():
                key = name.lower()
                headers[key] = f"{headers[key]},{value}" if key in headers else value
            answer = handler(to_event(self.command, self.path, headers, body), _LocalContext())
            payload = answer.get("body") or ""
            data = (
                base64.b64decode(payload) if answer.get("isBase64Encoded") else str(payload).encode("utf-8")
            )
            self._reply(int(answer.get("statusCode", 200)), dict(answer.get("headers") or {}), data)

        def _reply(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _call

        def log_message(self, format: str, *args: Any) -> None:
            return None  # requests carry signatures; the handler logs what is safe

    server = ThreadingHTTPServer((host, port), Request)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True).start()
    return server


__all__ = ["serve", "to_event"]
