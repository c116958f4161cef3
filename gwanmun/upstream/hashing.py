"""The hash key of a request for a consistent-hashing upstream: Kong's ``hash_on`` / ``hash_fallback``.

``hash_key(spec, ...)`` is pure (apart from the random value of a new sticky cookie, which can be injected): it reads
what the proxy passes and returns a ``HashKey``: the key for ``balancer.pick(key)`` (None: no key, the balancer then
spreads by weight) and, for ``cookie``, the ``Set-Cookie`` value the gateway must add to the response when the
client did not send the cookie (None otherwise).

The kinds, as Kong 3.x computes them (kong/runloop/balancer/init.lua ``get_value_to_hash``):

- ``none``: no key.
- ``consumer``: the authenticated consumer's id (else the credential's id): the caller passes it.
- ``ip``: the client address: the connection's peer (Kong: ``remote_addr``, which only nginx's real_ip module, not
  supported here, would replace with a forwarded address).
- ``header``: the header's value; several fields with that name are joined with ``", "`` (nginx ``$http_*``).
- ``cookie``: the cookie's value; when absent, a new random value (a UUID) that is used as the key and sent back as
  ``Set-Cookie: <hash_on_cookie>=<value>; Path=<hash_on_cookie_path>``, so the client sticks from its next request.
- ``path``: the normalized request path, without the query.
- ``query_arg``: the query argument's value (percent- and ``+``-decoded); several values are sorted and joined with
  ``","``; an argument without a value (``?a``) gives the empty string.
- ``uri_capture``: the named (or numbered) capture of the matched regex route path.

A missing value (no such header, cookie — for a fallback —, argument or capture; no consumer) moves to
``hash_fallback`` (with its own ``hash_fallback_header`` / ``hash_fallback_query_arg`` / ``hash_fallback_uri_capture``);
an empty value is a value. When the fallback is missing too, or is ``none``, there is no key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence
from urllib.parse import unquote_plus

__all__ = ["HashSpec", "HashKey", "hash_key", "parse_cookie"]


@dataclass(frozen=True, slots=True)
class HashSpec:
    """An upstream's hashing settings (compiled from its config by gwanmun/config/compile.py)."""

    on: str = "none"
    on_header: str = ""
    on_query_arg: str = ""
    on_uri_capture: str = ""
    fallback: str = "none"
    fallback_header: str = ""
    fallback_query_arg: str = ""
    fallback_uri_capture: str = ""
    cookie: str = ""  # hash_on_cookie: used by hash_on cookie and by hash_fallback cookie
    cookie_path: str = "/"


class HashKey(NamedTuple):
    key: bytes | None  # for balancer.pick(key)
    set_cookie: bytes | None  # a Set-Cookie value to add to the response, or None


def parse_cookie(header: bytes, name: str) -> bytes | None:
    """The value of the first cookie ``name`` in a ``Cookie`` header value (nginx ``$cookie_*``), else None."""
    want = name.encode("latin-1")
    for part in header.split(b";"):
        k, sep, v = part.partition(b"=")
        if sep and k.strip() == want:
            return v.strip()
    return None


def _header(headers: Sequence[tuple[bytes, bytes]], name: str) -> bytes | None:
    want = name.lower().encode("latin-1")
    values = [v for k, v in headers if k.lower() == want]
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


def _query_arg(query: bytes, name: str) -> bytes | None:
    values: list[str] = []
    for part in query.split(b"&"):
        if not part:
            continue
        k, _, v = part.partition(b"=")
        if unquote_plus(k.decode("latin-1"), encoding="utf-8", errors="replace") == name:
            values.append(unquote_plus(v.decode("latin-1"), encoding="utf-8", errors="replace"))
    if not values:
        return None
    if len(values) > 1:
        values.sort()
    return ",".join(values).encode("utf-8")


def _new_cookie_value() -> str:
    return str(uuid.uuid4())


def hash_key(
    spec: HashSpec,
    *,
    client_ip: str = "",
    headers: Sequence[tuple[bytes, bytes]] = (),
    path: bytes = b"",
    query: bytes = b"",
    cookie_header: bytes | None = None,
    consumer_id: str | None = None,
    captures: Mapping[str, str] | None = None,
    new_cookie_value: Callable[[], str] = _new_cookie_value,
) -> HashKey:
    """The key for this request (see the module docstring). ``headers`` are the request's fields as received (names
    in any case); ``cookie_header`` the ``Cookie`` value (several ``Cookie`` fields joined with ``"; "``), or None
    to read it from ``headers``; ``path`` the normalized path without the query; ``query`` the raw query string
    (without ``?``); ``captures`` the regex route's captures by name (and number, as strings)."""
    kind = spec.on
    header, arg, capture = spec.on_header, spec.on_query_arg, spec.on_uri_capture
    for _ in range(2):
        value: bytes | None = None
        if kind == "none":
            return HashKey(None, None)
        if kind == "consumer":
            value = consumer_id.encode("utf-8") if consumer_id else None
        elif kind == "ip":
            value = client_ip.encode("latin-1") if client_ip else None
        elif kind == "header":
            value = _header(headers, header)
        elif kind == "cookie":
            raw = cookie_header if cookie_header is not None else _header_cookies(headers)
            value = parse_cookie(raw, spec.cookie) if raw is not None else None
            if value is None:
                fresh = new_cookie_value()
                return HashKey(fresh.encode("latin-1"),
                               f"{spec.cookie}={fresh}; Path={spec.cookie_path}".encode("latin-1"))
        elif kind == "path":
            value = path
        elif kind == "query_arg":
            value = _query_arg(query, arg)
        elif kind == "uri_capture":
            got = captures.get(capture) if captures is not None else None
            value = got.encode("utf-8") if got is not None else None
        if value is not None:
            return HashKey(value, None)
        kind = spec.fallback
        header, arg, capture = spec.fallback_header, spec.fallback_query_arg, spec.fallback_uri_capture
    return HashKey(None, None)


def _header_cookies(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    values = [v for k, v in headers if k.lower() == b"cookie"]
    if not values:
        return None
    return values[0] if len(values) == 1 else b"; ".join(values)
