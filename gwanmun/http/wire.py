"""HTTP/1.x wire constants shared by the downstream and upstream sides.

Everything here is precomputed bytes so the hot path only joins buffers.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

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


# How the proxy treats a header field. A name's class is found with one dict lookup on the name as received: the
# tables hold every special name, and the commonest ordinary ones, in their usual spellings (lower-case,
# Title-Case, upper-case), so most fields are classified without lower-casing the name first (a method call that
# costs more than the lookup). A name not in the table is lower-cased and looked up again; absent means forward.
F_FORWARD: Final = 0
F_DROP: Final = 1
F_HOST: Final = 2
F_CONNECTION: Final = 3
F_TE: Final = 4
F_CL: Final = 5
F_XFF: Final = 6
F_XFPROTO: Final = 7
F_XFHOST: Final = 8
F_XFPORT: Final = 9
F_XFPATH: Final = 10
F_XFPREFIX: Final = 11
F_VIA: Final = 12
F_EXPECT: Final = 13
F_FORWARDED: Final = 14
F_REQUEST_ID: Final = 15
F_UPGRADE: Final = 16
F_IDENTITY: Final = 17  # identity the gateway asserts to upstreams (X-Consumer-*, X-Passport): never from a client

_REQUEST_SPECIAL: dict[bytes, int] = {
    b"host": F_HOST,
    b"connection": F_CONNECTION,
    b"keep-alive": F_DROP,
    b"proxy-connection": F_DROP,
    b"te": F_DROP,
    b"trailer": F_DROP,
    b"upgrade": F_UPGRADE,  # forwarded only for a protocol upgrade (WebSocket), see Exchange.start
    b"transfer-encoding": F_TE,
    b"content-length": F_CL,
    b"x-forwarded-for": F_XFF,
    b"x-forwarded-proto": F_XFPROTO,
    b"x-forwarded-host": F_XFHOST,
    b"x-forwarded-port": F_XFPORT,
    b"x-forwarded-path": F_XFPATH,
    b"x-forwarded-prefix": F_XFPREFIX,
    b"x-real-ip": F_DROP,
    b"forwarded": F_FORWARDED,  # RFC 7239; kept only from trusted proxies
    b"via": F_VIA,
    b"expect": F_EXPECT,
    # Kong's consumer headers and our passport: set by auth plugins only, so a client's copies are always dropped
    b"x-consumer-id": F_IDENTITY,
    b"x-consumer-custom-id": F_IDENTITY,
    b"x-consumer-username": F_IDENTITY,
    b"x-credential-identifier": F_IDENTITY,
    b"x-consumer-groups": F_IDENTITY,
    b"x-anonymous-consumer": F_IDENTITY,
    b"x-anonymous-groups": F_IDENTITY,
    b"x-authenticated-groups": F_IDENTITY,
    b"x-passport": F_IDENTITY,
}
_RESPONSE_SPECIAL: dict[bytes, int] = {name: F_DROP for name in HOP_BY_HOP}
_RESPONSE_SPECIAL.update(
    {b"transfer-encoding": F_TE, b"connection": F_CONNECTION, b"content-length": F_CL, b"upgrade": F_UPGRADE}
)

_COMMON_REQUEST = (
    b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"accept-charset", b"authorization",
    b"cookie", b"content-type", b"origin", b"referer", b"cache-control", b"pragma", b"if-none-match",
    b"if-modified-since", b"if-match", b"range", b"dnt", b"upgrade-insecure-requests", b"x-requested-with",
    b"sec-fetch-site", b"sec-fetch-mode", b"sec-fetch-dest", b"sec-fetch-user", b"sec-ch-ua", b"sec-ch-ua-mobile",
    b"sec-ch-ua-platform", b"priority", b"apikey", b"x-api-key",
)
_COMMON_RESPONSE = (
    b"server", b"date", b"content-type", b"content-encoding", b"content-language", b"content-disposition",
    b"content-range", b"last-modified", b"etag", b"accept-ranges", b"age", b"cache-control", b"expires", b"pragma",
    b"vary", b"location", b"set-cookie", b"allow", b"retry-after", b"www-authenticate", b"link",
    b"access-control-allow-origin", b"access-control-allow-credentials", b"access-control-allow-methods",
    b"access-control-allow-headers", b"access-control-expose-headers", b"access-control-max-age",
    b"strict-transport-security", b"x-content-type-options", b"x-frame-options", b"x-xss-protection",
    b"referrer-policy", b"content-security-policy", b"x-powered-by",
)
_ODD_SPELLINGS = {b"etag": b"ETag", b"www-authenticate": b"WWW-Authenticate", b"x-request-id": b"X-Request-ID",
                  b"dnt": b"DNT", b"te": b"TE", b"x-real-ip": b"X-Real-IP", b"x-xss-protection": b"X-XSS-Protection"}


def _spellings(name: bytes) -> tuple[bytes, ...]:
    return (name, name.title(), name.upper(), _ODD_SPELLINGS.get(name, name))


def field_table(special: dict[bytes, int], common: tuple[bytes, ...], request_id_lower: bytes) -> dict[bytes, int]:
    """Name (in its usual spellings) -> class, for ``special`` and ``common`` names and the request id field."""
    table: dict[bytes, int] = {}
    for name in common:
        for spelling in _spellings(name):
            table[spelling] = F_FORWARD
    for name, cls in (*special.items(), (request_id_lower, F_REQUEST_ID)):
        for spelling in _spellings(name):
            table[spelling] = cls
    return table


def request_fields(request_id_lower: bytes = b"x-request-id") -> dict[bytes, int]:
    return field_table(_REQUEST_SPECIAL, _COMMON_REQUEST, request_id_lower)


def response_fields(request_id_lower: bytes = b"x-request-id") -> dict[bytes, int]:
    """The upstream's own request id field is dropped: ours is the one that counts (and it is in the log)."""
    return field_table(_RESPONSE_SPECIAL, _COMMON_RESPONSE, request_id_lower)


CRLF: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk in chunked transfer coding (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
