"""HTTP/1.x wire constants shared by the downstream and upstream sides.

Everything here is precomputed bytes so the hot path only joins buffers.
"""

from __future__ import annotations

from http import HTTPStatus

# RFC 9110 §7.6.1: hop-by-hop fields a proxy must not forward, plus the legacy ones every proxy drops.
# Transfer-Encoding is listed because each hop sets its own framing.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

IDEMPOTENT: frozenset[str] = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


def _status_lines() -> dict[int, bytes]:
    lines = {}
    for code in range(100, 600):
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = ""
        lines[code] = f"HTTP/1.1 {code} {reason}\r\n".encode("latin-1")
    return lines


# Status lines are regenerated from the code (as Envoy does) rather than copied: reasons carry no meaning
# (RFC 9112 §4) and this saves a parser callback per response.
STATUS_LINE: dict[int, bytes] = _status_lines()


def status_line(code: int) -> bytes:
    line = STATUS_LINE.get(code)
    if line is None:
        line = f"HTTP/1.1 {code} \r\n".encode("latin-1")
    return line


def no_body_status(code: int) -> bool:
    """RFC 9112 §6.3: 1xx, 204 and 304 responses never have a body."""
    return code < 200 or code == 204 or code == 304


def connection_tokens(value: bytes) -> set[bytes]:
    """Lower-cased tokens of a ``Connection`` header value."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk in chunked transfer coding (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
