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

from dataclasses import dataclass, field
from typing import Any, Awaitable, ClassVar

from pydantic import BaseModel, ConfigDict

# The request-path objects are compiled (gwanmun/plugins/context.py); plugins import them from here.
from .context import IDENTITY_KEYS, Ctx, Headers, Reply, Response, _lines  # noqa: F401


class PluginConfig(BaseModel):
    """Base for plugin configs: frozen, unknown fields refused (so a typo is an error, not a silent default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
