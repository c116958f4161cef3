"""Configurable access-log lines: JSON with chosen fields, or a template like nginx's ``log_format``; redaction.

- ``access_log_format: json`` (the default) with the default ``access_log_fields`` keeps the built-in line
  (``accesslog.AccessLog.write``, the fastest). Other ``access_log_fields`` choose the JSON object's keys from
  ``VARIABLES`` (and ``http_<name>`` for any request header).
- ``access_log_format: combined`` / ``common`` are nginx's formats; any other value is a template of literal text and
  ``$variable`` / ``${variable}`` references, e.g. ``'$remote_addr [$time_local] "$request" $status $request_time'``.
  Values are escaped as nginx does (``"``, ``\\`` and control bytes as ``\\xHH``); a missing value is ``-``.
- **Redaction** (``log_redact``): request headers named in ``headers`` (default: ``Authorization``,
  ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie`` and the usual API-key headers) are logged as ``[REDACTED]``, and
  query arguments named in ``query_args`` (API keys, tokens, passwords, signatures) keep their name with the value
  ``[REDACTED]`` in ``$args``, ``$request`` and ``$request_uri``. The built-in line logs neither headers nor the query.
  The error log never includes request fields (``errorlog``).

Formatters are compiled once per config (``compile_formatter``); a line costs one call per variable.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import orjson

DEFAULT_FIELDS = ("time", "request_id", "client_ip", "method", "host", "path", "route", "service", "upstream",
                  "status", "bytes_in", "bytes_out", "latency_ms", "upstream_latency_ms")
PRESETS = {
    "combined": '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" '
                '"$http_user_agent"',
    "common": '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent',
}
DEFAULT_REDACT_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "apikey",
                          "api-key", "x-auth-token", "x-access-token", "x-amz-security-token")
DEFAULT_REDACT_QUERY = ("apikey", "api_key", "api-key", "key", "token", "access_token", "refresh_token", "id_token",
                        "password", "passwd", "secret", "client_secret", "signature", "sig", "jwt", "auth")
REDACTED = "[REDACTED]"


# ---------------------------------------------------------------------------------------------------------------------
# the variables
# ---------------------------------------------------------------------------------------------------------------------
def _name(entity: Any) -> str | None:
    if entity is None:
        return None
    return entity.name or entity.id


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000.0, 3)


class Line:
    """One request as the variables read it, with what several of them share computed once."""

    __slots__ = ("ex", "now", "wall", "redact", "_query")

    def __init__(self, ex: Any, now: float, redact: Redactor) -> None:
        self.ex = ex
        self.now = now  # perf_counter when the line is written
        self.wall = time.time()
        self.redact = redact
        self._query: str | None = None

    def query(self) -> str:
        if self._query is None:
            q = self.ex.query
            raw = q.decode("latin-1") if isinstance(q, bytes) else str(q or "")
            self._query = self.redact.query(raw[1:] if raw.startswith("?") else raw)
        return self._query


def _time_iso(line: Line) -> str:
    t = line.wall
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def _time_local(line: Line) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(line.wall))


def _uri(line: Line) -> str:
    q = line.query()
    return line.ex.path + ("?" + q if q else "")


def _request(line: Line) -> str:
    ex = line.ex
    return f"{ex.method} {_uri(line)} HTTP/{ex.version}"


def _upstream_s(line: Line) -> float | None:
    ex = line.ex
    return round(max(0.0, ex.t_up_end - ex.t_up), 3) if ex.t_up else None


def _consumer(line: Line) -> str | None:
    ctx = line.ex.ctx
    c = ctx.consumer if ctx is not None else None
    if c is None:
        return None
    return c.username or c.custom_id or c.id


def _trace_id(line: Line) -> str | None:
    span = line.ex.span
    return f"{span.trace_id:032x}" if span is not None else None


def _span_id(line: Line) -> str | None:
    span = line.ex.span
    return f"{span.span_id:016x}" if span is not None else None


VARIABLES: dict[str, Callable[[Line], Any]] = {
    "time": _time_iso,
    "time_iso8601": _time_iso,
    "time_local": _time_local,
    "msec": lambda line: round(line.wall, 3),
    "request_id": lambda line: line.ex.request_id,
    "client_ip": lambda line: line.ex.client_ip,
    "remote_addr": lambda line: line.ex.client_ip,
    "remote_user": _consumer,
    "method": lambda line: line.ex.method,
    "request_method": lambda line: line.ex.method,
    "host": lambda line: line.ex.host,
    "path": lambda line: line.ex.path,
    "uri": lambda line: line.ex.path,
    "args": lambda line: line.query() or None,
    "query_string": lambda line: line.query() or None,
    "request_uri": _uri,
    "request": _request,
    "server_protocol": lambda line: f"HTTP/{line.ex.version}",
    "scheme": lambda line: "https" if line.ex.down.scheme_b == b"https" else "http",
    "route": lambda line: _name(line.ex.route),
    "service": lambda line: _name(line.ex.service),
    "consumer": _consumer,
    "upstream": lambda line: line.ex.target.label if line.ex.target is not None and line.ex.t_up else None,
    "upstream_addr": lambda line: line.ex.target.label if line.ex.target is not None and line.ex.t_up else None,
    "status": lambda line: line.ex.status,
    "bytes_in": lambda line: line.ex.bytes_in,
    "request_length": lambda line: line.ex.bytes_in,
    "bytes_out": lambda line: line.ex.bytes_out,
    "bytes_sent": lambda line: line.ex.bytes_out,
    "body_bytes_sent": lambda line: line.ex.bytes_out,
    "latency_ms": lambda line: _ms(line.now - line.ex.t0),
    "request_time": lambda line: round(max(0.0, line.now - line.ex.t0), 3),
    "upstream_latency_ms": lambda line: _ms(line.ex.t_up_end - line.ex.t_up) if line.ex.t_up else None,
    "upstream_response_time": _upstream_s,
    "error": lambda line: line.ex.error or None,
    "retries": lambda line: line.ex.tries or None,
    "trace_id": _trace_id,
    "span_id": _span_id,
    "user_agent": lambda line: line.redact.header(line.ex.headers, b"user-agent"),
}


def variable(name: str) -> Callable[[Line], Any]:
    """The getter of a variable: a name in ``VARIABLES`` or ``http_<header name>`` (``-`` or ``_`` between words).
    Raises ``ValueError`` for an unknown name."""
    getter = VARIABLES.get(name)
    if getter is not None:
        return getter
    if name.startswith("http_") and len(name) > 5 and re.fullmatch(r"[A-Za-z0-9_-]+", name[5:]):
        field = name[5:].replace("_", "-").lower().encode("latin-1")
        return lambda line: line.redact.header(line.ex.headers, field)
    raise ValueError(f"unknown log variable '{name}' (known: {', '.join(sorted(VARIABLES))}, http_<header>)")


# ---------------------------------------------------------------------------------------------------------------------
# redaction
# ---------------------------------------------------------------------------------------------------------------------
class Redactor:
    def __init__(self, headers: tuple[str, ...] = DEFAULT_REDACT_HEADERS,
                 query_args: tuple[str, ...] = DEFAULT_REDACT_QUERY) -> None:
        self.headers = frozenset(h.lower().encode("latin-1") for h in headers)
        self.query_args = frozenset(q.lower() for q in query_args)

    def header(self, fields: list[tuple[bytes, bytes]], name: bytes) -> str | None:
        """The request header ``name`` (lower case) as it may be logged: several values joined with ", "."""
        values = [v for n, v in fields if n.lower() == name]
        if not values:
            return None
        if name in self.headers:
            return REDACTED
        return ", ".join(v.decode("latin-1") for v in values)

    def query(self, query: str) -> str:
        """``query`` (without ``?``) with the values of sensitive arguments replaced."""
        if not query or not self.query_args:
            return query
        out = []
        changed = False
        for part in query.split("&"):
            name, eq, _ = part.partition("=")
            if eq and _unquote_lower(name) in self.query_args:
                out.append(name + "=" + REDACTED)
                changed = True
            else:
                out.append(part)
        return "&".join(out) if changed else query

    def headers_dict(self, fields: list[tuple[bytes, bytes]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for n, v in fields:
            key = n.decode("latin-1").lower()
            value = REDACTED if n.lower() in self.headers else v.decode("latin-1")
            out[key] = out[key] + ", " + value if key in out else value
        return out


def _unquote_lower(name: str) -> str:
    if "%" in name or "+" in name:
        from urllib.parse import unquote_plus

        name = unquote_plus(name)
    return name.lower()


def redactor_of(gw: Any) -> Redactor:
    r = getattr(gw, "log_redact", None) if gw is not None else None
    if r is None:
        return Redactor()
    return Redactor(tuple(r.headers), tuple(r.query_args))


# ---------------------------------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\$(?:\{([A-Za-z0-9_-]+)\}|([A-Za-z0-9_]+))")


def parse_template(template: str) -> list[tuple[str, str]]:
    """A template -> [(literal, variable name), ...] (the last variable may be ""). Raises ``ValueError``."""
    template = PRESETS.get(template, template)
    out = []
    pos = 0
    for m in _TOKEN.finditer(template):
        name = m.group(1) or m.group(2)
        variable(name)  # raises for an unknown one
        out.append((template[pos:m.start()], name))
        pos = m.end()
    out.append((template[pos:], ""))
    if not any(name for _, name in out):
        raise ValueError("an access_log_format template needs at least one $variable")
    return out


def check_format(value: str) -> str:
    """Validation for ``gateway.access_log_format``."""
    if value == "json":
        return value
    parse_template(value)
    return value


def check_fields(fields: list[str]) -> list[str]:
    if not fields:
        raise ValueError("access_log_fields must list at least one field")
    for name in fields:
        variable(name)
    if len(set(fields)) != len(fields):
        raise ValueError("access_log_fields lists a field twice")
    return fields


_ESCAPE = {i: f"\\x{i:02X}" for i in list(range(32)) + [34, 92, 127]}


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    s = str(value)
    return s.translate(_ESCAPE)


Formatter = Callable[[Any, float], bytes]


def compile_formatter(gw: Any) -> Formatter | None:
    """The line maker for ``gw``'s access-log settings; None for the built-in JSON line."""
    fmt = getattr(gw, "access_log_format", "json") if gw is not None else "json"
    fields = getattr(gw, "access_log_fields", None) if gw is not None else None
    redact = redactor_of(gw)
    if fmt == "json":
        if fields is None or tuple(fields) == DEFAULT_FIELDS:
            return None
        getters = [(name, variable(name)) for name in fields]

        def json_line(ex: Any, now: float) -> bytes:
            line = Line(ex, now, redact)
            record = {name: get(line) for name, get in getters}
            return orjson.dumps(record) + b"\n"

        return json_line
    parts = [(literal, variable(name) if name else None) for literal, name in parse_template(fmt)]

    def text_line(ex: Any, now: float) -> bytes:
        line = Line(ex, now, redact)
        out = []
        for literal, get in parts:
            out.append(literal)
            if get is not None:
                out.append(_text(get(line)))
        out.append("\n")
        return "".join(out).encode("utf-8", "replace")

    return text_line


class _Rejected:
    """A request the parser refused before it became an exchange, as the variables read it."""

    method = ""
    path = ""
    host = ""
    query = b""
    version = "1.1"
    route = service = target = ctx = span = None
    t_up = t_up_end = 0.0
    bytes_in = 0
    error = ""
    tries = 0

    def __init__(self, down: Any, status: int, request_id: str, size: int) -> None:
        from time import perf_counter

        self.down = down
        self.client_ip = down.client_ip
        self.status = status
        self.request_id = request_id
        self.bytes_out = size
        self.headers: list[tuple[bytes, bytes]] = []
        self.t0 = perf_counter()
        self.error = "request refused by the parser"


def rejected(down: Any, status: int, request_id: str, size: int) -> Any:
    return _Rejected(down, status, request_id, size)
