"""The small JSON-over-HTTP layer both memo demo services share: stdlib ``http.server`` only, HTTP/1.1 keep-alive."""

from __future__ import annotations

import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 64 * 1024


class HTTPError(Exception):
    """Answer ``status`` with ``{"message": message}`` (and close the connection when ``close``)."""

    def __init__(self, status: int, message: str, close: bool = False, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or {}


class JSONHandler(BaseHTTPRequestHandler):
    """Reads the whole request body before anything else (so keep-alive never desyncs on an early error) and answers
    JSON. Subclasses implement ``handle_json(body) -> (status, obj, headers)``; raising ``HTTPError`` answers it."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one response, one segment: no delayed-ACK stalls
    server_version = "memo-demo"
    service = "demo"

    def version_string(self) -> str:
        return self.server_version  # not the Python version

    def handle_json(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def _dispatch(self) -> None:
        try:
            status, obj, headers = self.handle_json(self._read_body())
        except HTTPError as exc:
            if exc.close:
                self.close_connection = True
            status, obj, headers = exc.status, {"message": exc.message}, exc.headers
        self.send_json(status, obj, headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HTTPError(411, "send a Content-Length body", close=True)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HTTPError(400, "bad Content-Length", close=True) from None
        if length < 0:
            raise HTTPError(400, "bad Content-Length", close=True)
        if length > MAX_BODY:
            raise HTTPError(413, f"body larger than {MAX_BODY} bytes", close=True)
        return self.rfile.read(length) if length else b""

    @staticmethod
    def parse_json(body: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "body must be JSON") from None
        if not isinstance(obj, dict):
            raise HTTPError(400, "body must be a JSON object")
        return obj

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        out = b"" if obj is None else json.dumps(obj).encode() + b"\n"
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        rid = self.headers.get("X-Request-ID", "-") if self.headers else "-"
        sys.stderr.write(f"{self.service}: {self.command} {self.path} {code} request_id={rid}\n")

    def log_message(self, format: str, *args: Any) -> None:  # errors from http.server itself
        sys.stderr.write(f"{self.service}: {format % args}\n")


def serve(handler: type[JSONHandler], host: str, port: int) -> None:
    """Serve until SIGTERM or Ctrl-C. Prints ``<service> listening on http://host:port`` (the real port when ``port``
    is 0) as the first line of stdout, so a supervisor or test knows it is ready."""
    server = ThreadingHTTPServer((host, port), handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    bound_host, bound_port = server.server_address[:2]
    print(f"{handler.service} listening on http://{bound_host}:{bound_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
