"""What a plugin sees of a request, on the request path: ``Ctx``, ``Headers``, ``Reply`` and ``Response``.

Compiled with mypyc with the proxy (see setup.py): these objects are made and read for every request of a route with
plugins, so they are native classes (no ``__dict__``: a plugin cannot add attributes, and the typed ones refuse a
value of another type). Plugins import them from ``gwanmun.plugins.base``.
"""

from __future__ import annotations

import re
from typing import Any, Final

class Reply:
    """A response a plugin gives instead of the upstream's. ``body`` is bytes, or a dict/list sent as JSON. A JSON
    error body gets the request id added (``{"message": ..., "request_id": ...}``) when ``error`` is true."""

    status: int
    body: Any
    headers: list[tuple[str, str]]
    error: bool

    def __init__(self, status: int, body: Any = b"", headers: list[tuple[str, str]] | None = None,
                 error: bool = False) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []
        self.error = error

    @classmethod
    def error_(cls, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Reply:
        """A gateway error: JSON ``{"message": ..., "request_id": ...}``, as every error the gateway gives."""
        return cls(status, {"message": message}, headers, error=True)


class Headers:
    """A case-insensitive, ordered view of header fields, with the changes plugins make.

    Over the request (``ctx.headers``): the client's fields plus those plugins added; ``set``/``add``/``remove``
    change what the upstream gets. Fields a plugin adds are forwarded as they are, even names the gateway otherwise
    drops from clients (``X-Consumer-ID`` and its kin, ``X-Passport``): that is how the gateway speaks to the
    upstream. Over a response (``resp.headers``): what the client gets. Names and values are str (latin-1, as on
    the wire).

    Speed: plugins set a handful of fields per request, often replacing what an earlier plugin set, so added fields
    are kept by lower-cased name (replacing or removing one is a dict operation), and looking up or removing a name
    that is not there costs one look-up (the received names are indexed on first use). The identity an
    authentication plugin establishes (``X-Consumer-*``, ``X-Credential-Identifier``, ``X-Anonymous-Consumer``) is
    one precomputed block of lines, ``identity`` (see ``plugins.identity``), read and removed like any field.
    """

    def __init__(self, fields: list[tuple[bytes, bytes]] | None = None, lines: list[bytes] | None = None) -> None:
        self._fields = fields  # the received fields, in wire form; remove() edits this list in place
        # or, for a response head, its finished "Name: value\r\n" lines, parsed only if a plugin reads them (a
        # plugin that only adds fields, the usual case, costs no parse)
        self.lines = lines
        self._added: dict[bytes, list[tuple[bytes, bytes]]] = {}  # lower-cased name -> fields plugins added
        self.identity = b""  # finished "Name: value\r\n" lines of the identity headers
        self.changed = False  # anything changed
        self.edited = False  # a received field was removed
        self._names: set[bytes] | None = None  # lower-cased names of ``fields``
        self.extra = b""  # finished lines appended by ``append_lines``, not yet parsed (see there)

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        fields = self._fields
        if fields is None:
            fields = self._fields = [(n, v[:-2]) for n, _, v in (line.partition(b": ") for line in self.lines or ())]
        return fields

    @property
    def parsed(self) -> bool:
        """Whether the received fields were read (else ``lines`` are still exactly what will be sent)."""
        return self._fields is not None

    @property
    def added(self) -> list[tuple[bytes, bytes]]:
        """The fields plugins added, in wire form."""
        if self.extra:
            self._fold()
        return [f for group in self._added.values() for f in group]

    def append_lines(self, block: bytes) -> None:
        """Add finished ``Name: value\r\n`` lines, which the caller guarantees are valid (names are tokens, values
        have no CR, LF or NUL: built from numbers and fixed names). They are sent as they are, after the other added
        fields, and parsed only if a plugin reads or changes the fields afterwards: the cheap way for a plugin that
        adds several fields to every response (rate-limiting)."""
        self.extra += block
        self.changed = True

    def finished(self) -> list[bytes]:
        """What plugins added, as finished lines, without parsing ``extra`` (the proxy's way to send them)."""
        out = [b"%b: %b\r\n" % f for group in self._added.values() for f in group] if self._added else []
        if self.extra:
            out.append(self.extra)
        return out

    def _fold(self) -> None:
        """``extra`` into the added fields, so that every method sees it."""
        block, self.extra = self.extra, b""
        for n, v in _lines(block):
            key = n.lower()
            group = self._added.get(key)
            if group is None:
                self._added[key] = [(n, v)]
            else:
                group.append((n, v))

    def _index(self) -> set[bytes]:
        names = self._names
        if names is None:
            names = self._names = {_low(n) for n, _ in self.fields}
        return names

    def get(self, name: str, default: str | None = None) -> str | None:
        if self.extra:
            self._fold()
        key = _KEYS.get(name) or _key(name)
        group = self._added.get(key)
        if group:
            return group[-1][1].decode("latin-1")
        if self.identity and key in IDENTITY_KEYS:
            for n, v in _lines(self.identity):
                if n.lower() == key:
                    return v.decode("latin-1")
        size = len(key)
        for n, v in self.fields:  # lower-cased only when the length matches: most names differ in length
            if len(n) == size and (n == key or _low(n) == key):
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        if self.extra:
            self._fold()
        key = _KEYS.get(name) or _key(name)
        size = len(key)
        out = [v.decode("latin-1") for n, v in self.fields if len(n) == size and (n == key or _low(n) == key)]
        if self.identity and key in IDENTITY_KEYS:
            out += [v.decode("latin-1") for n, v in _lines(self.identity) if n.lower() == key]
        group = self._added.get(key)
        if group:
            out += [v.decode("latin-1") for _, v in group]
        return out

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def wire(self) -> list[tuple[bytes, bytes]]:
        """Every field, in the order the upstream gets them: received, identity, added."""
        out = list(self.fields)
        if self.identity:
            out += _lines(self.identity)
        return out + self.added

    def items(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.wire()]

    def remove(self, name: str) -> bool:
        """Remove every field of this name; True if there was one."""
        if self.extra:
            self._fold()
        key = _KEYS.get(name) or _key(name)
        found = self._added.pop(key, None) is not None
        if self.identity and key in IDENTITY_KEYS:
            kept = [b"%b: %b\r\n" % (n, v) for n, v in _lines(self.identity) if n.lower() != key]
            joined = b"".join(kept)
            if joined != self.identity:
                self.identity = joined
                found = True
        names = self._index()
        if key in names:
            names.discard(key)
            self.fields[:] = [(n, v) for n, v in self.fields if _low(n) != key]
            self.edited = True
            found = True
        if found:
            self.changed = True
        return found

    def remove_all(self, names: frozenset[bytes], sizes: frozenset[int] | None = None) -> bool:
        """Remove every field whose lower-cased wire name is in ``names`` (precomputed by the caller), in one pass:
        cheaper than one ``remove`` per name when some are there."""
        if self.extra:
            self._fold()
        found = False
        added = self._added
        if added:
            for key in [k for k in added if k in names]:
                del added[key]
                found = True
        if self.identity and not names.isdisjoint(IDENTITY_KEYS):
            kept = b"".join(b"%b: %b\r\n" % (n, v) for n, v in _lines(self.identity) if n.lower() not in names)
            if kept != self.identity:
                self.identity = kept
                found = True
        fields = self.fields
        if sizes is None:  # the lengths of ``names`` (a caller that removes the same names each time passes them)
            sizes = frozenset([len(k) for k in names])
        left = [f for f in fields if len(f[0]) not in sizes or _low(f[0]) not in names]
        if len(left) != len(fields):
            fields[:] = left
            self._names = None  # the name index is made again when next needed
            self.edited = True
            found = True
        if found:
            self.changed = True
        return found

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def add(self, name: str, value: str) -> None:
        if name not in _CHECKED and not _NAME.match(name) or "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"invalid header field {name!r}")  # no header injection, no response splitting
        if self.extra:  # keeps the order of same-named fields
            self._fold()
        wire = name.encode("latin-1")
        key = wire.lower()
        group = self._added.get(key)
        if group is None:
            self._added[key] = [(wire, value.encode("latin-1"))]
        else:
            group.append((wire, value.encode("latin-1")))
        self.changed = True

    def add_made(self, key: bytes, name: bytes, value: bytes) -> None:
        """``add`` for a field the gateway made itself (``key`` its lower-cased name): no checks, kept as a finished
        line (``append_lines``) until a plugin reads the fields (plugins.fastpath)."""
        self.extra += b"%b: %b\r\n" % (name, value)
        self.changed = True

    def set_identity(self, lines: bytes) -> None:
        """Replace the identity block (and any identity field a plugin set one by one)."""
        if self.extra:
            self._fold()
        added = self._added
        if added:
            for key in IDENTITY_KEYS:
                added.pop(key, None)
        self.identity = lines
        self.changed = True


IDENTITY_KEYS: Final = frozenset({b"x-consumer-id", b"x-consumer-custom-id", b"x-consumer-username", b"x-credential-identifier",
                           b"x-consumer-groups", b"x-anonymous-consumer"})


def _lines(block: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in block.split(b"\r\n"):
        if line:
            n, _, v = line.partition(b": ")
            out.append((n, v))
    return out


_LOW: Final[dict[bytes, bytes]] = {}  # received field name -> lower-cased (bytes.lower is a method call)


def _low(name: bytes) -> bytes:
    low = _LOW.get(name)
    if low is None:
        low = name.lower()
        if len(_LOW) < 4096:  # clients choose names: bounded
            _LOW[name] = low
    return low


_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an RFC 9110 token
_KEYS: dict[str, bytes] = {}  # header name as plugins spell it -> lower-cased wire form (plugins use few names)


def _key(name: str) -> bytes:
    key = name.lower().encode("latin-1")
    if len(_KEYS) < 4096:
        _KEYS[name] = key
    return key


_CHECKED: Final = frozenset({"X-Consumer-ID", "X-Consumer-Custom-ID", "X-Consumer-Username", "X-Credential-Identifier",
                      "X-Consumer-Groups", "X-Anonymous-Consumer", "X-Passport"})  # known tokens: no regex needed


def wire_value(value: str) -> str:
    """Header values are str in latin-1 form (as on the wire): a consumer name outside latin-1 is sent as UTF-8."""
    return value if value.isascii() else value.encode("utf-8").decode("latin-1")


def _field(name: str, value: str | None) -> bytes:
    return b"%b: %b\r\n" % (name.encode("latin-1"), wire_value(value).encode("latin-1")) if value else b""


def consumer_lines(consumer: Any) -> bytes:
    """The consumer's identity lines (Kong's X-Consumer-* fields), made once per consumer (and config version)."""
    lines: bytes = consumer.lines
    if not lines:
        groups = consumer.groups
        lines = consumer.lines = b"".join((
            _field("X-Consumer-ID", consumer.id), _field("X-Consumer-Custom-ID", consumer.custom_id),
            _field("X-Consumer-Username", consumer.username),
            _field("X-Consumer-Groups", ", ".join(groups) if groups else None),
        ))
    return lines


def credential_line(credential: Any) -> bytes:
    """Its X-Credential-Identifier line, made once per credential."""
    line: bytes = credential.line
    if not line:
        line = credential.line = _field("X-Credential-Identifier", credential.identifier)
    return line


class Ctx:
    """One request as the plugins see it. Made only for routes that have plugins."""

    ex: Any
    consumer: Any  # Consumer | None
    credential: Any  # Credential | None
    claims: dict[str, Any] | None
    response: Response | None

    def __init__(self, ex: Any, method: str, path: str, query: bytes, headers: Headers | None, client_ip: str,
                 route: Any, service: Any, request_id: str, started: float,
                 fields: list[tuple[bytes, bytes]] | None = None) -> None:
        self.ex = ex  # the Exchange (private to the proxy: plugins use the fields below)
        self.method = method
        self.path = path  # normalised request path, as routed
        self.query = query  # raw query string, with its leading '?' (b"" when none); plugins may replace it
        # ``headers`` is made on first use from the received ``fields`` (a plugin that reads none costs none)
        self._headers = headers
        self._fields = fields
        self.client_ip = client_ip  # behind trusted proxies: the real client's
        self.route = route  # routing.RouteEntry (name, id, ...)
        self.service = service  # runtime.Service (name, id, ...)
        self.consumer = None  # a Consumer, once a plugin authenticated the request
        self.credential = None  # the Credential that did
        self.claims = None  # a verified JWT's claims
        self.authenticated = False  # an auth plugin accepted a credential (the anonymous consumer is not one)
        self._shared: dict[str, Any] | None = None  # ``shared``, made on first use
        self.upstream_path: str | None = None  # a plugin's replacement for the path sent upstream
        self.body: bytes | None = None  # the request body, for plugins that buffer it
        self.response = None
        self.request_id = request_id
        self.started = started  # perf_counter() when the request's head was complete
        self.response_lines = b""  # see add_response_lines

    @property
    def headers(self) -> Headers:
        """The request's fields, as the upstream will get them (``Headers``)."""
        h = self._headers
        if h is None:
            h = self._headers = Headers(self._fields if self._fields is not None else [])
        return h

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers = value

    @property
    def shared(self) -> dict[str, Any]:
        """A dict for the plugins of one request to pass things to each other (and to later phases)."""
        d = self._shared
        if d is None:
            d = self._shared = {}
        return d

    @shared.setter
    def shared(self, value: dict[str, Any]) -> None:
        self._shared = value

    def authenticate(self, consumer: Any, credential: Any) -> None:
        """A credential was accepted (``plugins.identity.authenticated``): the consumer (None only for a JWKS token
        that names no known consumer), the credential, and Kong's identity fields for the upstream."""
        self.consumer = consumer
        self.credential = credential
        self.authenticated = True
        ident = credential_line(credential)
        if consumer is not None:
            ident = consumer_lines(consumer) + ident
        self.headers.set_identity(ident)

    def add_response_lines(self, block: bytes) -> None:
        """From the access phase: fields for the response the client will get (the upstream's, a gateway error or a
        plugin's reply), as Kong's ``kong.response.set_header`` called in access. ``block`` is finished
        ``Name: value\r\n`` lines that the caller guarantees are valid (built from fixed names and numbers, as
        rate-limiting's); other plugins' ``header_filter`` see them in ``resp.headers``. Cheaper than a
        ``header_filter`` when the fields are known before the response: no response object is made for them."""
        self.response_lines += block

    def add_response_header(self, name: str, value: str) -> None:
        """``add_response_lines`` for one field, checked like ``Headers.add``."""
        if name not in _CHECKED and not _NAME.match(name) or "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"invalid header field {name!r}")
        self.response_lines += b"%b: %b\r\n" % (name.encode("latin-1"), value.encode("latin-1"))


class Response:
    """The response head as ``header_filter`` sees it: status and fields (without hop-by-hop ones)."""

    def __init__(self, status: int, headers: Headers, from_gateway: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.from_gateway = from_gateway  # a gateway error or a plugin's Reply, not the upstream's answer


