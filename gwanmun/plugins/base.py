"""What a plugin is, and what it sees of a request.

A plugin is a class with a ``name`` (kebab-case, as users write it in YAML), a ``priority`` (higher runs first on
the request side, as in Kong; Kong's own numbers for plugins that share Kong's names), a pydantic ``Config`` model
(validated when the config is loaded, errors naming the field path), and any of these phase methods:

``access(ctx) -> Reply | None | Awaitable[Reply | None]``
    After routing, before the request is forwarded, in priority order. ``None`` lets the request go on; a ``Reply``
    answers it and stops the chain (APISIX's rule: a plugin *returns* its answer). A plugin that must wait (a JWKS
    fetch, a password hash in a thread, Redis) returns an awaitable; the chain goes on when it is done. Plugins that
    never wait cost no task.
``request_body(ctx, body) -> bytes | Reply | None``
    Only for plugins that set ``buffers_request = True``: the whole request body (up to the route's buffer limit)
    before it is forwarded; return a new body, a Reply, or None to keep it.
``header_filter(ctx, resp) -> None``
    The upstream's response head (or a gateway error's), in reverse priority order: change ``resp.status`` and
    ``resp.headers``.
``response_body(ctx, resp, body) -> bytes``
    Only for plugins that set ``buffers_response = True`` (and accept this response, see ``wants_body``): the whole
    response body; return the new one.
``log(ctx) -> None``
    After the response, always; must not raise (an exception is logged and swallowed).

Build time: ``__init__(config, env)`` gets the validated config and a ``BuildEnv`` (the consumers, credentials and
the worker-wide services a plugin may need). Instances are built once per config version; a plugin that keeps state
(counters, caches) and wants it to survive a reload implements ``carry_over(old)``, called when the previous
config had the same plugin with an equal config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, ClassVar

from pydantic import BaseModel, ConfigDict


class PluginConfig(BaseModel):
    """Base for plugin configs: frozen, unknown fields refused (so a typo is an error, not a silent default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Reply:
    """A response a plugin gives instead of the upstream's. ``body`` is bytes, or a dict/list sent as JSON. A JSON
    error body gets the request id added (``{"message": ..., "request_id": ...}``) when ``error`` is true."""

    __slots__ = ("status", "headers", "body", "error")

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

    __slots__ = ("_fields", "lines", "_added", "changed", "edited", "identity", "_names")

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
        return [f for group in self._added.values() for f in group]

    def _index(self) -> set[bytes]:
        names = self._names
        if names is None:
            names = self._names = {n.lower() for n, _ in self.fields}
        return names

    def get(self, name: str, default: str | None = None) -> str | None:
        key = _KEYS.get(name) or _key(name)
        group = self._added.get(key)
        if group:
            return group[-1][1].decode("latin-1")
        if self.identity and key in IDENTITY_KEYS:
            for n, v in _lines(self.identity):
                if n.lower() == key:
                    return v.decode("latin-1")
        names = self._names
        if names is None or key in names:  # no index yet: one scan costs less than building it
            for n, v in self.fields:
                if n.lower() == key:
                    return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = _KEYS.get(name) or _key(name)
        names = self._names
        out = [v.decode("latin-1") for n, v in self.fields if n.lower() == key] \
            if names is None or key in names else []
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
            self.fields[:] = [(n, v) for n, v in self.fields if n.lower() != key]
            self.edited = True
            found = True
        if found:
            self.changed = True
        return found

    def remove_all(self, names: frozenset[bytes]) -> bool:
        """Remove every field whose lower-cased wire name is in ``names`` (precomputed by the caller), in one pass:
        cheaper than one ``remove`` per name when some are there."""
        found = False
        for key in names & self._added.keys():
            del self._added[key]
            found = True
        if self.identity and not names.isdisjoint(IDENTITY_KEYS):
            kept = b"".join(b"%b: %b\r\n" % (n, v) for n, v in _lines(self.identity) if n.lower() not in names)
            if kept != self.identity:
                self.identity = kept
                found = True
        index = self._index()
        if not names.isdisjoint(index):
            index -= names
            self.fields[:] = [(n, v) for n, v in self.fields if n.lower() not in names]
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
        wire = name.encode("latin-1")
        key = wire.lower()
        group = self._added.get(key)
        if group is None:
            self._added[key] = [(wire, value.encode("latin-1"))]
        else:
            group.append((wire, value.encode("latin-1")))
        self.changed = True

    def set_identity(self, lines: bytes) -> None:
        """Replace the identity block (and any identity field a plugin set one by one)."""
        added = self._added
        if added:
            for key in IDENTITY_KEYS:
                added.pop(key, None)
        self.identity = lines
        self.changed = True


IDENTITY_KEYS = frozenset({b"x-consumer-id", b"x-consumer-custom-id", b"x-consumer-username", b"x-credential-identifier",
                           b"x-consumer-groups", b"x-anonymous-consumer"})


def _lines(block: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in block.split(b"\r\n"):
        if line:
            n, _, v = line.partition(b": ")
            out.append((n, v))
    return out


_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an RFC 9110 token
_KEYS: dict[str, bytes] = {}  # header name as plugins spell it -> lower-cased wire form (plugins use few names)


def _key(name: str) -> bytes:
    key = name.lower().encode("latin-1")
    if len(_KEYS) < 4096:
        _KEYS[name] = key
    return key


_CHECKED = frozenset({"X-Consumer-ID", "X-Consumer-Custom-ID", "X-Consumer-Username", "X-Credential-Identifier",
                      "X-Consumer-Groups", "X-Anonymous-Consumer", "X-Passport"})  # known tokens: no regex needed


@dataclass(eq=False, slots=True)
class Consumer:
    """A compiled Kong consumer."""

    id: str
    username: str | None = None
    custom_id: str | None = None
    groups: tuple[str, ...] = ()  # consumer group names
    acl_groups: tuple[str, ...] = ()  # the acls entities' groups
    tags: tuple[str, ...] = ()
    lines: bytes = b""  # its identity header lines, made on first use (plugins.identity)


@dataclass(eq=False, slots=True)
class Credential:
    """Which credential authenticated the request (Kong's ``X-Credential-Identifier``)."""

    id: str
    identifier: str  # the key's id, the basic-auth username, the JWT key claim
    kind: str  # "key-auth", "basic-auth", "jwt"
    line: bytes = b""  # its X-Credential-Identifier line, made on first use (plugins.identity)


class Ctx:
    """One request as the plugins see it. Made only for routes that have plugins."""

    __slots__ = ("ex", "method", "path", "query", "headers", "client_ip", "route", "service", "consumer",
                 "credential", "claims", "authenticated", "shared", "upstream_path", "body", "response",
                 "request_id", "started")

    def __init__(self, ex: Any, method: str, path: str, query: bytes, headers: Headers, client_ip: str,
                 route: Any, service: Any, request_id: str, started: float) -> None:
        self.ex = ex  # the Exchange (private to the proxy: plugins use the fields below)
        self.method = method
        self.path = path  # normalised request path, as routed
        self.query = query  # raw query string, with its leading '?' (b"" when none); plugins may replace it
        self.headers = headers
        self.client_ip = client_ip  # behind trusted proxies: the real client's
        self.route = route  # routing.RouteEntry (name, id, ...)
        self.service = service  # runtime.Service (name, id, ...)
        self.consumer: Consumer | None = None
        self.credential: Credential | None = None
        self.claims: dict[str, Any] | None = None  # a verified JWT's claims
        self.authenticated = False  # an auth plugin accepted a credential (the anonymous consumer is not one)
        self.shared: dict[str, Any] = {}  # between plugins of one request
        self.upstream_path: str | None = None  # a plugin's replacement for the path sent upstream
        self.body: bytes | None = None  # the request body, for plugins that buffer it
        self.response: Response | None = None
        self.request_id = request_id
        self.started = started  # loop time the request's head was complete


class Response:
    """The response head as ``header_filter`` sees it: status and fields (without hop-by-hop ones)."""

    __slots__ = ("status", "headers", "from_gateway")

    def __init__(self, status: int, headers: Headers, from_gateway: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.from_gateway = from_gateway  # a gateway error or a plugin's Reply, not the upstream's answer


@dataclass(eq=False, slots=True)
class KeyCredential:
    """A ``keyauth_credentials`` entity. ``key`` is the key itself, or its hash (``sha256$<hex>``, see
    ``gwanmun.auth.secrets.hash_key``) when ``hashed``."""

    id: str
    key: str
    hashed: bool
    consumer: Consumer
    tags: tuple[str, ...] = ()


@dataclass(eq=False, slots=True)
class BasicCredential:
    """A ``basicauth_credentials`` entity; ``password`` is a bcrypt or argon2 hash, never the password."""

    id: str
    username: str
    password: str
    consumer: Consumer
    tags: tuple[str, ...] = ()


@dataclass(eq=False, slots=True)
class JwtSecret:
    """A ``jwt_secrets`` entity (Kong's fields): ``key`` is what the token's ``key_claim_name`` claim must equal;
    ``secret`` for HS*, ``rsa_public_key`` (a PEM public key) for the asymmetric algorithms."""

    id: str
    key: str
    algorithm: str
    secret: str | None
    rsa_public_key: str | None
    consumer: Consumer
    tags: tuple[str, ...] = ()


@dataclass
class BuildEnv:
    """What a plugin may look at when it is built: the compiled consumers and credentials of this config."""

    consumers: dict[str, Consumer] = field(default_factory=dict)  # by id
    consumers_by_name: dict[str, Consumer] = field(default_factory=dict)  # by username, and by custom_id
    keyauth: list[KeyCredential] = field(default_factory=list)
    basicauth: list[BasicCredential] = field(default_factory=list)
    jwt_secrets: list[JwtSecret] = field(default_factory=list)
    groups: dict[str, tuple[Consumer, ...]] = field(default_factory=dict)  # consumer group name -> members
    passport: Any = None  # the gateway's passport.PassportSigner, when passport keys are configured
    source: str = ""  # the config file, for messages

    def consumer(self, ref: str | None) -> Consumer | None:
        """A consumer by id, username or custom_id (Kong's anonymous field takes any of them)."""
        if not ref:
            return None
        return self.consumers.get(ref) or self.consumers_by_name.get(ref)


class Plugin:
    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    buffers_request: ClassVar[bool] = False
    buffers_response: ClassVar[bool] = False

    def __init__(self, config: Any, env: BuildEnv) -> None:
        self.config = config
        self.env = env

    def carry_over(self, old: Plugin) -> None:
        """Take state from the same plugin of the previous config (same name, equal config). Default: nothing."""

    def wants_body(self, ctx: Ctx, resp: Response) -> bool:
        """For ``buffers_response`` plugins: whether this response's body is to be buffered for ``response_body``."""
        return True

    async def aclose(self) -> None:
        """Its config was replaced: stop background work."""


PHASES = ("access", "request_body", "header_filter", "response_body", "log")


def implements(plugin: Plugin, phase: str) -> bool:
    """Whether ``plugin`` has ``phase`` (the base class has none, so the chain holds only real methods)."""
    return callable(getattr(plugin, phase, None))


MaybeAwaitable = Reply | None | Awaitable[Reply | None]
